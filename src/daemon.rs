//! The daemon: one task per credential, reloads reconciled task by task,
//! systemd notifications, the status file, a clean shutdown.
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

use crate::api::budget::Api;
use crate::board::file::{self as status, StatusFile};
use crate::board::{CredentialStatus, StatusBoard};
use crate::config::{Config, ConfigError, CredentialConfig, Use};
use crate::credential::Credential;
use crate::credential::task::{self, Command};
use crate::exec::plan::Plan;
use crate::exec::{self, Supervisor, ToChild};
use crate::export::{ExportSender, InUse};
use crate::metrics::Metrics;
use crate::notify::{self, Notifier};
use crate::process::{self, Exit};
use crate::signals::{self, Event};
use crate::state::{Locked, held_by_once, lock_state_dir, remove_state_temps, wait_for_once};
use nix::sys::signal::Signal;

/// How long shutdown waits for in-flight work (the interface promises exit within 5 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(4500);

/// Changes to the status board within this window are reported together.
const STATUS_COALESCE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("{0}")]
    Api(String),
    /// Another daemon holds `{state dir}/lock`.
    #[error(transparent)]
    Locked(#[from] Locked),
    /// A config-time error: the `[health] listen` address cannot be bound.
    #[error("{}: health.listen: cannot listen on {addr}: {source}", config.display())]
    Bind {
        config: std::path::PathBuf,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct Task {
    commands: mpsc::UnboundedSender<Command>,
    cancel: CancellationToken,
    /// Ends when the credential's task has stopped (a renamed credential's
    /// successor waits for it before taking its key state over).
    done: tokio::task::JoinHandle<()>,
}

struct Daemon {
    config: Config,
    /// `exec` mode: the child's supervisor and what credentials export.
    exec: Option<ExecSide>,
    /// The config file's text when last loaded, to skip no-op file events.
    config_text: Option<String>,
    api: Arc<Api>,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
    notifier: Arc<Notifier>,
    tasks: BTreeMap<String, Task>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// `exec` mode's side of the daemon: the supervisor's channel and the
/// channels credentials publish their secrets on.
struct ExecSide {
    plan: Plan,
    to_child: mpsc::UnboundedSender<ToChild>,
    /// Per exported credential: where its secret goes.
    exports: BTreeMap<String, Arc<ExportSender>>,
    in_use: InUse,
}

/// How the daemon ended.
pub struct Stopped {
    pub board: Arc<StatusBoard>,
    /// `exec` mode: how the child ended (`None`: it never started).
    pub child: Option<Exit>,
}

/// Runs the daemon until SIGTERM/SIGINT or `shutdown` resolves: signals
/// and the config watcher are installed here.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Arc<StatusBoard>, DaemonError> {
    Ok(run_as(config, shutdown, None).await?.board)
}

/// `exec`: the daemon plus the child of `plan`, until the child exits
/// (or a stop signal, passed on to it, ends it).
pub async fn run_exec(config: Config, plan: Plan) -> Result<Stopped, DaemonError> {
    run_as(config, std::future::pending(), Some(plan)).await
}

async fn run_as(
    config: Config,
    shutdown: impl Future<Output = ()>,
    exec: Option<Plan>,
) -> Result<Stopped, DaemonError> {
    crate::rlimit::raise_fd_limit();
    let lock = match lock_state_dir(&config.state_dir) {
        Err(Locked { .. }) if held_by_once(&config.state_dir) => wait_for_once(&config.state_dir, "")?,
        locked => locked?,
    };
    if lock.is_some() {
        remove_state_temps(&config.state_dir);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let exec_signals = exec.as_ref().map(|p| signals::ExecSignals {
        stop_timeout: p.stop_timeout,
    });
    signals::forward(tx.clone(), exec_signals).map_err(DaemonError::Signals)?;
    if exec.is_some() {
        // Descendants the child leaves behind are reparented here and reaped.
        process::become_subreaper().map_err(DaemonError::Signals)?;
    }
    let _watch = match crate::watch::watch(&config.path, tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(path = %config.path.display(), error = %e, "cannot watch the config; reload with SIGHUP");
            None
        }
    };
    run_with_events(config, rx, shutdown, exec).await
}

/// The daemon loop proper, fed by any event source; stops on
/// [`Event::Shutdown`], when `shutdown` resolves, or (`exec`) when the
/// child has exited.
async fn run_with_events(
    config: Config,
    mut events: mpsc::UnboundedReceiver<Event>,
    shutdown: impl Future<Output = ()>,
    exec: Option<Plan>,
) -> Result<Stopped, DaemonError> {
    for w in &config.warnings {
        warn!("{w}");
    }
    // Read before the health server starts, so it never answers without
    // the credentials (they are registered right after this).
    let config_text = {
        let path = config.path.clone();
        blocking(&config.path, move || Config::read(&path)).await.ok()
    };
    let metrics = Arc::new(if exec.is_some() {
        Metrics::with_child()
    } else {
        Metrics::new()
    });
    let board = Arc::new(StatusBoard::default());
    let cancel = CancellationToken::new();
    if let Some(health) = &config.health {
        let listener = crate::health::bind(health.listen)
            .await
            .map_err(|source| DaemonError::Bind {
                config: config.path.clone(),
                addr: health.listen,
                source,
            })?;
        info!(listen = %health.listen, "serving /healthz, /readyz, /metrics");
        crate::health::serve(listener, board.clone(), metrics.clone(), cancel.clone());
    }
    let api = Api::new(&config.api).map_err(DaemonError::Api)?;
    let (exec, mut supervisor) = match exec {
        Some(plan) => {
            let (side, task) = start_supervisor(plan, &config, &board, &metrics);
            (Some(side), Some(task))
        }
        None => (None, None),
    };
    let mut daemon = Daemon {
        exec,
        config_text,
        api,
        board,
        metrics,
        notifier: Arc::new(Notifier::from_env()),
        tasks: BTreeMap::new(),
        tracker: TaskTracker::new(),
        cancel,
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
    tokio::spawn(report_status(
        daemon.board.clone(),
        daemon.notifier.clone(),
        daemon.config.clone(),
        daemon.cancel.clone(),
    ));

    // The watchdog is fed from this loop, so a loop that hangs stops feeding it.
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    tokio::pin!(shutdown);
    let mut child = None;
    let mut events_open = true;
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => break,
            exit = async { supervisor.as_mut().expect("guarded").await }, if supervisor.is_some() => {
                // A supervisor that failed (a bug) is a failure: EX_SOFTWARE.
                child = exit.unwrap_or(Some(Exit::Code(70)));
                break;
            }
            event = events.recv(), if events_open => event.unwrap_or_else(|| {
                // No more events: stop (with a child, once it has stopped).
                events_open = false;
                Event::Shutdown
            }),
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => {
                daemon.notifier.notify("WATCHDOG=1");
                continue;
            }
        };
        match event {
            Event::Reload { forced } => daemon.reload(forced).await,
            Event::RenewAll => {
                for task in daemon.tasks.values() {
                    let _ = task.commands.send(Command::RenewNow);
                }
            }
            Event::Shutdown if daemon.exec.is_some() => {
                let stop = daemon.exec.as_ref().map(|e| e.plan.stop_signal);
                daemon.to_child(ToChild::Stop(stop.unwrap_or(Signal::SIGTERM)));
            }
            Event::Shutdown => break,
            Event::StopChild(signal) => daemon.to_child(ToChild::Stop(signal)),
            Event::ForwardToChild(signal) => daemon.to_child(ToChild::Forward(signal)),
        }
    }

    daemon.notifier.notify("STOPPING=1");
    daemon.cancel.cancel();
    daemon.tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, daemon.tracker.wait())
        .await
        .is_err()
    {
        warn!("some work did not finish in time; exiting anyway");
    }
    info!("stopped");
    Ok(Stopped {
        board: daemon.board,
        child,
    })
}

/// `exec`: a channel per exported credential, the keys-in-use channel,
/// and the supervisor's task (it ends with the child's exit).
fn start_supervisor(
    plan: Plan,
    config: &Config,
    board: &Arc<StatusBoard>,
    metrics: &Arc<Metrics>,
) -> (ExecSide, tokio::task::JoinHandle<Option<Exit>>) {
    let exports: BTreeMap<String, Arc<ExportSender>> = plan
        .exports
        .iter()
        .map(|e| (e.credential.clone(), Arc::new(ExportSender::new(None))))
        .collect();
    let receivers = plan
        .exports
        .iter()
        .map(|e| exports[&e.credential].subscribe())
        .collect();
    let (in_use_tx, in_use_rx) = tokio::sync::watch::channel(Default::default());
    let (to_child, commands) = mpsc::unbounded_channel();
    let supervisor = Supervisor {
        plan: plan.clone(),
        exports: receivers,
        in_use: in_use_tx,
        board: board.clone(),
        metrics: metrics.clone(),
        hidden: exec::plan::password_variables(config),
    };
    let task = tokio::spawn(exec::supervise(supervisor, commands).instrument(info_span!("child")));
    let side = ExecSide {
        plan,
        to_child,
        exports,
        in_use: InUse::new(in_use_rx),
    };
    (side, task)
}

impl Daemon {
    fn spawn(&mut self, cfg: CredentialConfig) {
        self.spawn_after(cfg, None);
    }

    /// Starts a credential; with `renamed_from`, first waits for that
    /// (cancelled) credential's task to stop and takes its key state over
    /// (`keys/{old}.json` becomes `keys/{new}.json`), so a rename keeps the
    /// current key and the deletions still owed.
    fn spawn_after(
        &mut self,
        cfg: CredentialConfig,
        renamed_from: Option<(String, tokio::task::JoinHandle<()>)>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = self.cancel.child_token();
        let name = cfg.name.clone();
        let (api, board, metrics) = (self.api.clone(), self.board.clone(), self.metrics.clone());
        let state_dir = self.config.state_dir.clone();
        let task_cancel = cancel.clone();
        let exported = self.exec.as_ref().map(|e| {
            let export = e.exports.get(&name).cloned().unwrap_or_default();
            (export, e.in_use.clone())
        });
        self.board.register(&name);
        let done = self.tracker.spawn(
            async move {
                if let Some((old, done)) = renamed_from {
                    let _ = done.await;
                    let (dir, new) = (state_dir.clone(), cfg.name.clone());
                    let moved = tokio::task::spawn_blocking(move || {
                        crate::state::keys::migrate(&dir, &old, &new).map(|m| (m, old))
                    })
                    .await;
                    match moved {
                        Ok(Ok((true, old))) => {
                            info!(renamed_from = %old, "credential renamed: its key state (the current key and the deletions still owed) is kept")
                        }
                        Ok(Ok((false, _))) => {}
                        Ok(Err(e)) => warn!(error = %e, "cannot take the key state of the renamed credential over"),
                        Err(e) => warn!(error = %e, "cannot take the key state of the renamed credential over"),
                    }
                }
                let mut cred = Credential::new(cfg, api, state_dir, Some(board), metrics);
                if let Some((export, in_use)) = exported {
                    cred = cred.exported(export, in_use);
                }
                cred.adopt_from_disk(crate::now()).await;
                task::run(cred, rx, task_cancel).await;
            }
            .instrument(info_span!("credential", name = %name)),
        );
        self.tasks.insert(
            name,
            Task {
                commands: tx,
                cancel,
                done,
            },
        );
    }

    /// `exec`: passes a request to the supervisor.
    fn to_child(&self, command: ToChild) {
        if let Some(exec) = &self.exec {
            let _ = exec.to_child.send(command);
        }
    }

    /// Loads the config again and reconciles. `forced` (SIGHUP) reloads
    /// even when the file's text is unchanged.
    /// The file work runs on the blocking pool, never on the runtime thread.
    async fn reload(&mut self, forced: bool) {
        let path = self.config.path.clone();
        let text = blocking(&self.config.path, move || Config::read(&path)).await;
        if !forced && text.as_ref().ok() == self.config_text.as_ref() {
            debug!("config file touched but unchanged");
            return;
        }
        self.notifier.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            notify::monotonic_usec()
        ));
        let ok = self.try_reload(text).await;
        self.metrics.reload(ok);
        self.notifier.notify("READY=1");
    }

    async fn try_reload(&mut self, text: Result<String, ConfigError>) -> bool {
        let path = self.config.path.clone();
        let validate_path = path.clone();
        // Validation looks at the filesystem (output paths, ca-file): blocking pool.
        let before = self.config.clone();
        let use_ = if self.exec.is_some() {
            Use::Exec
        } else {
            Use::Daemon
        };
        let validated = blocking(&path, move || {
            text.and_then(|t| Config::from_file_text_for(&t, &validate_path, use_).map(|c| (c, t)))
                .map(|(c, t)| {
                    let renames = renames(&before, &c);
                    (c, t, renames)
                })
        })
        .await;
        let (new, text, renames) = match validated {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(error = %e, "config reload failed; keeping the last good config");
                return false;
            }
        };
        if let Some(exec) = &self.exec {
            if let Err(e) = exec::plan::check_reload(&exec.plan.exports, &self.config, &new) {
                error!(config = %path.display(), error = %e, "config reload failed; keeping the last good config");
                return false;
            }
            self.to_child(ToChild::Hide(exec::plan::password_variables(&new)));
        }
        let api_changed = new.api != self.config.api;
        if api_changed {
            let (api_config, handle) = (new.api.clone(), tokio::runtime::Handle::current());
            // Api::new reads the ca-file; it builds the HTTP client inside the runtime.
            let built = tokio::task::spawn_blocking(move || {
                let _runtime = handle.enter();
                Api::new(&api_config)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match built {
                Ok(api) => self.api = api,
                Err(e) => {
                    error!(config = %path.display(), error = %e, "config reload failed; keeping the last good config");
                    return false;
                }
            }
        }
        for w in &new.warnings {
            warn!("{w}");
        }
        self.config_text = Some(text);
        self.reconcile(new, api_changed, renames);
        true
    }

    fn reconcile(&mut self, new: Config, api_changed: bool, renames: Vec<(String, String)>) {
        let mut renamed: BTreeMap<String, (String, tokio::task::JoinHandle<()>)> = BTreeMap::new();
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
                self.metrics.forget(name);
                if let Some((_, new_name)) = renames.iter().find(|(old, _)| old == name) {
                    info!(credential = %name, renamed_to = %new_name, "credential renamed in the config");
                    renamed.insert(new_name.clone(), (name.clone(), task.done));
                } else {
                    info!(credential = %name, "credential removed from the config; its files are left in place");
                }
                removed += 1;
            }
        }
        for cfg in &new.credentials {
            match (old.get(&cfg.name), self.tasks.get(&cfg.name)) {
                (Some(before), Some(_))
                    if std::mem::discriminant(&before.kind) != std::mem::discriminant(&cfg.kind) =>
                {
                    // Another kind of secret: start this credential afresh.
                    if let Some(task) = self.tasks.remove(&cfg.name) {
                        task.cancel.cancel();
                    }
                    info!(credential = %cfg.name, "credential kind changed; starting it anew");
                    self.spawn(cfg.clone());
                    changed += 1;
                }
                (Some(before), Some(task)) => {
                    if before != cfg || api_changed {
                        let _ = task
                            .commands
                            .send(Command::Reconfigure(Box::new(cfg.clone()), self.api.clone()));
                        changed += 1;
                    }
                }
                _ => {
                    self.spawn_after(cfg.clone(), renamed.remove(&cfg.name));
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

/// Access-key credentials renamed from `old` to `new` (old name, new name):
/// one that is gone and one that is new, with the same bootstrap key file
/// (any spelling) or the same agent login. Each pairs at most once.
fn renames(old: &Config, new: &Config) -> Vec<(String, String)> {
    let gone: Vec<&CredentialConfig> = old
        .credentials
        .iter()
        .filter(|c| c.key().is_some() && !new.credentials.iter().any(|n| n.name == c.name))
        .collect();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for added in new
        .credentials
        .iter()
        .filter(|c| c.key().is_some() && !old.credentials.iter().any(|o| o.name == c.name))
    {
        if let Some(before) = gone
            .iter()
            .find(|g| !pairs.iter().any(|(o, _)| *o == g.name) && crate::config::same_key_source(g, added))
        {
            pairs.push((before.name.clone(), added.name.clone()));
        }
    }
    pairs
}

/// Runs blocking filesystem work on the blocking pool, so the runtime
/// thread (signals, health, every credential) never waits on a disk. A
/// panic in `f` becomes a config read error.
async fn blocking<T: Send + 'static>(
    path: &std::path::Path,
    f: impl FnOnce() -> Result<T, ConfigError> + Send + 'static,
) -> Result<T, ConfigError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ConfigError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

/// After each change of any credential's state: `READY=1` the first time
/// every credential is fresh, a `STATUS=` line, and the status file.
async fn report_status(
    board: Arc<StatusBoard>,
    notifier: Arc<Notifier>,
    config: Config,
    cancel: CancellationToken,
) {
    let mut ready = false;
    let mut last_summary = String::new();
    let mut status_file_ok = true;
    let process = status::ProcessId::of_self();
    loop {
        let changed = board.changed();
        let all = board.snapshot();
        let now = crate::now();
        let summary = summarize(&all, now);
        if summary != last_summary {
            notifier.notify(&format!("STATUS={summary}"));
            last_summary = summary;
        }
        if !ready && !all.is_empty() && all.iter().all(|s| s.is_fresh_at(now)) {
            ready = true;
            info!(
                credentials = all.len(),
                "every credential has a fresh token on disk"
            );
            notifier.notify("READY=1");
        }
        let file = StatusFile {
            pid: std::process::id(),
            process: process.clone(),
            written_at: now,
            config: config.path.clone(),
            credentials: all,
            child: board.child(),
        };
        let state_dir = config.state_dir.clone();
        match tokio::task::spawn_blocking(move || status::write(&state_dir, &file)).await {
            Ok(Ok(())) => status_file_ok = true,
            Ok(Err(e)) => {
                if status_file_ok {
                    warn!(error = %e, "cannot write the status file; `status` will not see this daemon");
                }
                status_file_ok = false;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed => {}
        }
        // Let a burst of changes (many credentials starting) settle.
        tokio::time::sleep(STATUS_COALESCE).await;
    }
}

/// One line for systemd's STATUS=: "2/2 fresh; next renewal main in 5days 14h".
pub fn summarize(all: &[CredentialStatus], now: time::OffsetDateTime) -> String {
    let fresh = all.iter().filter(|s| s.is_fresh_at(now)).count();
    let mut line = format!("{fresh}/{} fresh", all.len());
    let failing: Vec<&str> = all
        .iter()
        .filter(|s| s.failures > 0)
        .map(|s| s.name.as_str())
        .collect();
    if !failing.is_empty() {
        line.push_str(&format!("; failing: {}", failing.join(", ")));
    }
    if let Some(next) = all
        .iter()
        .filter(|s| s.next_renewal.is_some())
        .min_by_key(|s| s.next_renewal)
    {
        let at = next.next_renewal.unwrap_or(now);
        let secs = (at - now).whole_seconds().max(0).unsigned_abs();
        let short = status::short_duration(Duration::from_secs(secs));
        line.push_str(&format!("; next renewal {} in {short}", next.name));
    }
    line
}
