//! The daemon: one task per credential, reloads reconciled task by task,
//! a clean shutdown.
//!
//! All events (signals, config-file changes, the caller's shutdown future)
//! arrive on one channel and are handled one at a time by [`run_with_events`].
//! A reload loads and validates the whole new config first; if that fails
//! the daemon logs it and carries on with the last good config, untouched.

use std::collections::BTreeMap;
use std::future::Future;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::{Config, CredentialConfig};
use crate::credential::{self, Api, Command, Credential, StatusBoard};
use crate::signals::{self, Event};

/// How long shutdown waits for in-flight work (the interface promises exit within 5 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(4500);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("{0}")]
    Api(String),
}

struct Task {
    commands: mpsc::UnboundedSender<Command>,
    cancel: CancellationToken,
}

struct Daemon {
    config: Config,
    /// The config file's text when last loaded, to skip no-op file events.
    config_text: Option<String>,
    api: Arc<Api>,
    board: Arc<StatusBoard>,
    tasks: BTreeMap<String, Task>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// Runs the daemon until SIGTERM/SIGINT or `shutdown` resolves: signals
/// and the config watcher are installed here.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Arc<StatusBoard>, DaemonError> {
    let (tx, rx) = mpsc::unbounded_channel();
    signals::forward(tx.clone()).map_err(DaemonError::Signals)?;
    let _watch = match crate::watch::watch(&config.path, tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(path = %config.path.display(), error = %e, "cannot watch the config; reload with SIGHUP");
            None
        }
    };
    run_with_events(config, rx, shutdown).await
}

/// The daemon loop proper, fed by any event source (tests drive it
/// directly); stops on [`Event::Shutdown`] or when `shutdown` resolves.
pub async fn run_with_events(
    config: Config,
    mut events: mpsc::UnboundedReceiver<Event>,
    shutdown: impl Future<Output = ()>,
) -> Result<Arc<StatusBoard>, DaemonError> {
    for w in &config.warnings {
        warn!("{w}");
    }
    let api = Api::new(&config.api).map_err(DaemonError::Api)?;
    let config_text = std::fs::read_to_string(&config.path).ok();
    let mut daemon = Daemon {
        config_text,
        api,
        board: Arc::new(StatusBoard::default()),
        tasks: BTreeMap::new(),
        tracker: TaskTracker::new(),
        cancel: CancellationToken::new(),
        config,
    };
    info!(
        config = %daemon.config.path.display(),
        credentials = daemon.config.credentials.len(),
        "voipbin-tokend started"
    );
    for cred in daemon.config.credentials.clone() {
        daemon.spawn(cred);
    }
    tokio::spawn(announce_readiness(daemon.board.clone(), daemon.cancel.clone()));

    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => break,
            event = events.recv() => event.unwrap_or(Event::Shutdown),
        };
        match event {
            Event::Reload { forced } => daemon.reload(forced),
            Event::RenewAll => {
                for task in daemon.tasks.values() {
                    let _ = task.commands.send(Command::RenewNow);
                }
            }
            Event::Shutdown => break,
        }
    }

    daemon.cancel.cancel();
    daemon.tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, daemon.tracker.wait())
        .await
        .is_err()
    {
        warn!("some work did not finish in time; exiting anyway");
    }
    info!("stopped");
    Ok(daemon.board)
}

impl Daemon {
    fn spawn(&mut self, cfg: CredentialConfig) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = self.cancel.child_token();
        let name = cfg.name.clone();
        let api = self.api.clone();
        let board = self.board.clone();
        let task_cancel = cancel.clone();
        self.tracker.spawn(
            async move {
                let mut cred = Credential::new(cfg, api, Some(board));
                cred.adopt_from_disk(crate::now());
                credential::run(cred, rx, task_cancel).await;
            }
            .instrument(info_span!("credential", name = %name)),
        );
        self.tasks.insert(name, Task { commands: tx, cancel });
    }

    /// Loads the config again and reconciles. `forced` (SIGHUP) reloads
    /// even when the file's text is unchanged.
    fn reload(&mut self, forced: bool) {
        let path = self.config.path.clone();
        let text = std::fs::read_to_string(&path).ok();
        if !forced && text.is_some() && text == self.config_text {
            debug!("config file touched but unchanged");
            return;
        }
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "config reload failed; keeping the last good config");
                return;
            }
        };
        let api_changed = new.api != self.config.api;
        if api_changed {
            match Api::new(&new.api) {
                Ok(api) => self.api = api,
                Err(e) => {
                    error!(config = %path.display(), error = %e, "config reload failed; keeping the last good config");
                    return;
                }
            }
        }
        for w in &new.warnings {
            warn!("{w}");
        }
        self.config_text = text;
        self.reconcile(new, api_changed);
    }

    fn reconcile(&mut self, new: Config, api_changed: bool) {
        let (mut added, mut changed, mut removed) = (0, 0, 0);
        let old: BTreeMap<String, CredentialConfig> = self
            .config
            .credentials
            .iter()
            .map(|c| (c.name.clone(), c.clone()))
            .collect();
        for name in old.keys() {
            if !new.credentials.iter().any(|c| &c.name == name)
                && let Some(task) = self.tasks.remove(name)
            {
                task.cancel.cancel();
                self.board.remove(name);
                info!(credential = %name, "credential removed from the config; its files are left in place");
                removed += 1;
            }
        }
        for cfg in &new.credentials {
            match (old.get(&cfg.name), self.tasks.get(&cfg.name)) {
                (Some(before), Some(task)) => {
                    if before != cfg || api_changed {
                        let _ = task
                            .commands
                            .send(Command::Reconfigure(Box::new(cfg.clone()), self.api.clone()));
                        changed += 1;
                    }
                }
                _ => {
                    self.spawn(cfg.clone());
                    added += 1;
                }
            }
        }
        if new.health != self.config.health || new.state_dir != self.config.state_dir {
            warn!("[health] and [state] changes take effect at the next restart");
        }
        info!(added, changed, removed, "config reloaded");
        self.config = new;
    }
}

/// Logs once when every credential first holds a token on disk.
async fn announce_readiness(board: Arc<StatusBoard>, cancel: CancellationToken) {
    loop {
        let changed = board.changed();
        let all = board.snapshot();
        if !all.is_empty() && all.iter().all(|s| s.fresh) {
            info!(
                credentials = all.len(),
                "every credential has a fresh token on disk"
            );
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed => {}
        }
    }
}
