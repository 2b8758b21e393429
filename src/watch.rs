//! Watches the config file for changes and turns bursts of file-system
//! events into one [`Event::Reload`].
//!
//! The directory is watched, not the file: editors replace a file by
//! renaming a new one over it, and Kubernetes ConfigMaps swap a `..data`
//! symlink inside the mounted directory (config.toml -> ..data/config.toml,
//! ..data -> ..2026_11_27_...). A watch on the file itself would lose track
//! after the first swap. When the config is a symlink to a file elsewhere,
//! that file's directory is watched too.
//!
//! A watch follows the directory, not its name: after `mv conf conf.old;
//! mkdir conf` it would report on conf.old. So each watched directory's
//! parent is watched as well, and when an entry of that name appears
//! there, the new directory is watched and the config reloaded.

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
    _watcher: std::sync::Arc<std::sync::Mutex<notify::RecommendedWatcher>>,
}

/// What one file-system event means for the config.
enum Seen {
    /// Something that may have changed the config's text.
    Change,
    /// A watched directory's name was (re)created in its parent: the
    /// directory was replaced, and the new one must be watched.
    Replaced(PathBuf),
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
    if let Ok(real) = std::fs::canonicalize(config_path)
        && !in_configmap_version(&real)
    {
        add(&real);
    }

    let (raw_tx, raw_rx) = mpsc::unbounded_channel::<Seen>();
    let watched = dirs.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(event) => {
            // Opening and reading the file (the daemon's own reload does)
            // is not a change; a close after writing is.
            use notify::event::{AccessKind, AccessMode, EventKind};
            if matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write)) {
                return;
            }
            for p in &event.paths {
                let replaced = matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_))
                    && watched.iter().any(|d| d == p);
                if replaced {
                    let _ = raw_tx.send(Seen::Replaced(p.clone()));
                } else if let Some(n) = p.file_name() {
                    if names.iter().any(|name| name == n) {
                        let _ = raw_tx.send(Seen::Change);
                    } else if n.to_string_lossy().starts_with("..") {
                        debug!(path = %p.display(), "ConfigMap update (..data swap)");
                        let _ = raw_tx.send(Seen::Change);
                    }
                }
            }
        }
        Err(e) => warn!(error = %e, "config watch error"),
    })?;
    let watcher = std::sync::Arc::new(std::sync::Mutex::new(watcher));
    {
        let mut w = watcher.lock().unwrap_or_else(|p| p.into_inner());
        for dir in &dirs {
            w.watch(dir, RecursiveMode::NonRecursive)?;
            debug!(dir = %dir.display(), "watching for config changes");
            // The parent, to notice the directory being replaced; not
            // fatal if it cannot be watched (e.g. no permission on it).
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
                && let Err(e) = w.watch(parent, RecursiveMode::NonRecursive)
            {
                debug!(dir = %parent.display(), error = %e, "cannot watch; a replaced config directory will need SIGHUP");
            }
        }
    }
    tokio::spawn(debounce(raw_rx, events, watcher.clone()));
    Ok(ConfigWatch { _watcher: watcher })
}

/// True for a file inside a ConfigMap's timestamped directory
/// (`cm/..2026_11_27_10_00_00.123/config.toml`). That directory is deleted
/// at the next update (a watch on it would only bring warnings), and the
/// update is seen anyway as the `..data` swap in the parent.
fn in_configmap_version(real: &Path) -> bool {
    real.parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n.to_string_lossy().starts_with(".."))
}

/// Re-adds the watch on a directory that was replaced by a new one.
fn rewatch(watcher: &std::sync::Mutex<notify::RecommendedWatcher>, dir: &Path) {
    let mut w = watcher.lock().unwrap_or_else(|p| p.into_inner());
    let _ = w.unwatch(dir);
    match w.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => debug!(dir = %dir.display(), "config directory replaced; watching the new one"),
        Err(e) => {
            debug!(dir = %dir.display(), error = %e, "cannot watch the replaced config directory (yet)")
        }
    }
}

async fn debounce(
    mut raw: mpsc::UnboundedReceiver<Seen>,
    events: mpsc::UnboundedSender<Event>,
    watcher: std::sync::Arc<std::sync::Mutex<notify::RecommendedWatcher>>,
) {
    let seen = |s: Option<Seen>| match s {
        Some(Seen::Replaced(dir)) => {
            rewatch(&watcher, &dir);
            true
        }
        Some(Seen::Change) => true,
        None => false,
    };
    while seen(raw.recv().await) {
        let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
        loop {
            let quiet = tokio::time::sleep(DEBOUNCE);
            tokio::select! {
                more = raw.recv() => {
                    if !seen(more) { return; }
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
