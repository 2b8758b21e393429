//! Watches the config file for changes and turns bursts of file-system
//! events into one [`Event::Reload`].
//!
//! The directory is watched, not the file: editors replace a file by
//! renaming a new one over it, and Kubernetes ConfigMaps swap a `..data`
//! symlink inside the mounted directory (config.toml -> ..data/config.toml,
//! ..data -> ..2026_11_27_...). A watch on the file itself would lose track
//! after the first swap. When the config is a symlink to a file elsewhere,
//! that file's directory is watched too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::signals::Event;

/// Quiet time after the last event before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// A steady stream of events still reloads after this long.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);

/// Keeps the watch alive; drop it to stop watching.
pub struct ConfigWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Starts watching `config_path`; reload events go to `events`.
pub fn watch(config_path: &Path, events: mpsc::UnboundedSender<Event>) -> notify::Result<ConfigWatch> {
    let mut names: Vec<OsString> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut add = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Some(name) = p.file_name() {
            names.push(name.to_os_string());
        }
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    };
    add(config_path);
    if let Ok(real) = std::fs::canonicalize(config_path) {
        add(&real);
    }

    let (raw_tx, raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(event) => {
            // Opening and reading the file (the daemon's own reload does)
            // is not a change; a close after writing is.
            use notify::event::{AccessKind, AccessMode, EventKind};
            if matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write)) {
                return;
            }
            let relevant = event.paths.iter().any(|p| {
                p.file_name().is_some_and(|n| {
                    names.iter().any(|name| name == n) || n.to_string_lossy().starts_with("..")
                })
            });
            if relevant {
                let _ = raw_tx.send(());
            }
        }
        Err(e) => warn!(error = %e, "config watch error"),
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        debug!(dir = %dir.display(), "watching for config changes");
    }
    tokio::spawn(debounce(raw_rx, events));
    Ok(ConfigWatch { _watcher: watcher })
}

async fn debounce(mut raw: mpsc::UnboundedReceiver<()>, events: mpsc::UnboundedSender<Event>) {
    while raw.recv().await.is_some() {
        let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
        loop {
            let quiet = tokio::time::sleep(DEBOUNCE);
            tokio::select! {
                more = raw.recv() => {
                    if more.is_none() { return; }
                    if tokio::time::Instant::now() >= deadline { break; }
                }
                _ = quiet => break,
            }
        }
        if events.send(Event::Reload { forced: false }).is_err() {
            return;
        }
    }
}
