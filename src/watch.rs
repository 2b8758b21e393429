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
//! mkdir conf` it would report on conf.old. So when a watched directory is
//! moved away or removed, its name is looked at once a second until a
//! directory is back under it; that one is then watched and the config
//! reloaded. (The parent is not watched for this: for /etc/voipbin-tokend
//! it would be /etc, and inotify would wake the daemon for every program
//! on the machine that opens a file there.)

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
/// How often the name of a watched directory that was moved away or
/// removed is looked at (only while one is gone).
const GONE_POLL: Duration = Duration::from_secs(1);

/// Keeps the watch alive; drop it to stop watching.
pub struct ConfigWatch {
    _watcher: std::sync::Arc<std::sync::Mutex<notify::RecommendedWatcher>>,
}

/// What one file-system event means for the config.
enum Seen {
    /// Something that may have changed the config's text.
    Change,
    /// A watched directory was moved away or removed: a new one under its
    /// name must be watched once it is there.
    Gone(PathBuf),
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
            use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
            if matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write)) {
                return;
            }
            for p in &event.paths {
                // Events on a watched directory itself (not on an entry in
                // it): IN_MOVE_SELF or IN_DELETE_SELF.
                let gone = matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) && watched.iter().any(|d| d == p);
                if gone {
                    let _ = raw_tx.send(Seen::Gone(p.clone()));
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
    // Watched directories moved away or removed, not back yet.
    let mut gone: Vec<PathBuf> = Vec::new();
    while next_change(&mut raw, &mut gone, &watcher).await {
        let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
        loop {
            let quiet = tokio::time::sleep(DEBOUNCE);
            tokio::select! {
                more = raw.recv() => {
                    match more {
                        None => return,
                        Some(Seen::Gone(dir)) => note_gone(&mut gone, dir),
                        Some(Seen::Change) => {}
                    }
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

/// Waits for the next sign that the config may have changed: an event, or
/// a directory in `gone` back under its name (then watched again). While
/// one is gone its name is looked at every [`GONE_POLL`]; otherwise this
/// never wakes by itself. False once the watcher is gone.
async fn next_change(
    raw: &mut mpsc::UnboundedReceiver<Seen>,
    gone: &mut Vec<PathBuf>,
    watcher: &std::sync::Mutex<notify::RecommendedWatcher>,
) -> bool {
    loop {
        let poll = tokio::time::sleep(GONE_POLL);
        tokio::select! {
            seen = raw.recv() => match seen {
                None => return false,
                Some(Seen::Change) => return true,
                Some(Seen::Gone(dir)) => note_gone(gone, dir),
            },
            _ = poll, if !gone.is_empty() => {
                let back: Vec<PathBuf> = gone.extract_if(.., |dir| dir.is_dir()).collect();
                for dir in &back {
                    rewatch(watcher, dir);
                }
                if !back.is_empty() {
                    return true;
                }
            }
        }
    }
}

fn note_gone(gone: &mut Vec<PathBuf>, dir: PathBuf) {
    if !gone.contains(&dir) {
        debug!(dir = %dir.display(), "config directory moved away or removed; waiting for one under its name");
        gone.push(dir);
    }
}
