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
use tracing::{Instrument, error, info, info_span, warn};

use crate::api::budget::Apis;
use crate::board::StatusBoard;
use crate::config::{Config, CredentialConfig};
use crate::credential::Credential;
use crate::credential::task::{self, Command};
use crate::exec::plan::Plan;
use crate::exec::{self, Supervisor, ToChild};
use crate::export::{ExportSender, InUse};
use crate::metrics::Metrics;
use crate::notify::{self, Notifier};
use crate::process::{self, Exit};
use crate::proxy::{Proxies, Wiring};
use crate::signals::{self, Event};
use crate::state::{Locked, held_by_once, lock_state_dir, remove_state_temps, wait_for_once};

mod reload;
mod status;

use nix::sys::signal::Signal;
use reload::blocking;
use status::report_status;

/// How long shutdown waits for in-flight work (the interface promises exit within 5 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(4500);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("{0}")]
    Api(String),
    /// Another daemon holds `{state dir}/lock`.
    #[error(transparent)]
    Locked(#[from] Locked),
    /// A config-time error: a proxy cannot listen.
    #[error("{}: {message}", config.display())]
    Proxy {
        config: std::path::PathBuf,
        message: String,
    },
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
    commands: task::CommandSender,
    cancel: CancellationToken,
    /// Ends when the credential's task has stopped (a renamed credential's
    /// successor waits for it before taking its key state over).
    done: tokio::task::JoinHandle<()>,
}

struct Daemon {
    config: Config,
    /// `exec` mode: the child's supervisor and what credentials export.
    exec: Option<ExecSide>,
    /// Per credential: where its secret goes once every output holds it
    /// (the exec child and the proxies read it). Kept across a restart of
    /// the credential's task, so readers keep their channel.
    exports: BTreeMap<String, Arc<ExportSender>>,
    /// The local API proxies.
    proxies: Proxies,
    /// A proxy's request to renew a credential now (a 401 from the API).
    renew_requests: mpsc::UnboundedSender<String>,
    /// The config file's text when last loaded, to skip no-op file events.
    config_text: Option<String>,
    /// One API client per base URL, one login budget.
    apis: Apis,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
    notifier: Arc<Notifier>,
    tasks: BTreeMap<String, Task>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// The state directory's lock is held: a credential a reload adds
    /// removes the temp files left beside its outputs.
    locked: bool,
}

/// `exec` mode's side of the daemon: the supervisor's channel and the
/// channels credentials publish their secrets on.
struct ExecSide {
    plan: Plan,
    to_child: mpsc::UnboundedSender<ToChild>,
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
    // Temp files a killed process left: ours to remove only with the lock.
    if lock.is_some() {
        remove_state_temps(&config.state_dir);
        crate::output::remove_temps_left_behind(config.output_paths());
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
    run_with_events(config, rx, shutdown, exec, lock.is_some()).await
}

/// The daemon loop proper, fed by any event source; stops on
/// [`Event::Shutdown`], when `shutdown` resolves, or (`exec`) when the
/// child has exited. `locked`: the state directory's lock is held.
async fn run_with_events(
    config: Config,
    mut events: mpsc::UnboundedReceiver<Event>,
    shutdown: impl Future<Output = ()>,
    exec: Option<Plan>,
    locked: bool,
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
    let apis = Apis::new(&config).map_err(DaemonError::Api)?;
    let mut exports = BTreeMap::new();
    let (exec, mut supervisor) = match exec {
        Some(plan) => {
            let (side, task) = start_supervisor(plan, &config, &mut exports, &board, &metrics);
            (Some(side), Some(task))
        }
        None => (None, None),
    };
    let (renew_requests, mut renew_rx) = mpsc::unbounded_channel::<String>();
    let proxies = Proxies::new(metrics.clone(), board.clone(), cancel.clone());
    let mut daemon = Daemon {
        exec,
        exports,
        proxies,
        renew_requests,
        config_text,
        apis,
        board,
        metrics,
        notifier: Arc::new(Notifier::from_env()),
        tasks: BTreeMap::new(),
        tracker: TaskTracker::new(),
        cancel,
        config,
        locked,
    };
    info!(
        config = %daemon.config.path.display(),
        credentials = daemon.config.credentials.len(),
        "voipbin-tokend started"
    );
    for cred in daemon.config.credentials.clone() {
        // Their temp files were removed above, for all at once.
        daemon.spawn_after(cred, None, false);
    }
    if let Some(e) = daemon.start_proxies(false).await.into_iter().next() {
        return Err(DaemonError::Proxy {
            config: daemon.config.path.clone(),
            message: e,
        });
    }
    tokio::spawn(report_status(
        daemon.board.clone(),
        daemon.notifier.clone(),
        daemon.config.path.clone(),
        daemon.config.state_dir.clone(),
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
            Some(name) = renew_rx.recv() => {
                // A proxy saw the credential's secret refused (401).
                if let Some(task) = daemon.tasks.get(&name) {
                    info!(credential = %name, "the API refused the credential on a proxied request; renewing now");
                    let _ = task.commands.send(Command::RenewNow);
                }
                continue;
            }
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
    exports: &mut BTreeMap<String, Arc<ExportSender>>,
    board: &Arc<StatusBoard>,
    metrics: &Arc<Metrics>,
) -> (ExecSide, tokio::task::JoinHandle<Option<Exit>>) {
    let receivers = plan
        .exports
        .iter()
        .map(|e| exports.entry(e.credential.clone()).or_default().subscribe())
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
        in_use: InUse::new(in_use_rx),
    };
    (side, task)
}

impl Daemon {
    /// Starts a credential a reload added.
    fn spawn(&mut self, cfg: CredentialConfig) {
        self.spawn_after(cfg, None, self.locked);
    }

    /// Starts a credential; with `renamed_from`, first waits for that
    /// (cancelled) credential's task to stop and takes its key state over
    /// (`keys/{old}.json` becomes `keys/{new}.json`), so a rename keeps the
    /// current key and the deletions still owed. With `remove_temps`, first
    /// removes the temp files a killed process left beside its outputs.
    fn spawn_after(
        &mut self,
        cfg: CredentialConfig,
        renamed_from: Option<(String, tokio::task::JoinHandle<()>)>,
        remove_temps: bool,
    ) {
        let name = cfg.name.clone();
        let api = match self.apis.for_credential(&cfg) {
            Ok(api) => api,
            Err(e) => {
                error!(credential = %name, error = %e, "cannot start the credential: no API client");
                return;
            }
        };
        let (tx, rx) = task::commands();
        let cancel = self.cancel.child_token();
        let (board, metrics) = (self.board.clone(), self.metrics.clone());
        let state_dir = self.config.state_dir.clone();
        let task_cancel = cancel.clone();
        // Only a credential someone reads (the exec child, a proxy) gets a
        // channel (400 bytes: with 1000 credentials and no reader, 0.4 MB
        // for nothing); a proxy added later asks for one (`start_proxies`).
        let export = self.exports.get(&name).cloned();
        let in_use = self.exec.as_ref().map(|e| e.in_use.clone()).unwrap_or_default();
        self.board.register(&name);
        // The start (a renamed predecessor's end, its key state taken over,
        // the outputs against the state on disk) runs once: it is boxed, so
        // the task keeps only what `task::run` needs for its whole life
        // (its task is 2 KiB instead of 5.5: issue 18, 1000 credentials).
        let start = Box::pin(async move {
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
                    Ok(Err(e)) => {
                        warn!(error = %e, "cannot take the key state of the renamed credential over")
                    }
                    Err(e) => warn!(error = %e, "cannot take the key state of the renamed credential over"),
                }
            }
            if remove_temps {
                let paths: Vec<_> = cfg.outputs.iter().map(|o| o.path.clone()).collect();
                let removed = tokio::task::spawn_blocking(move || {
                    crate::output::remove_temps_left_behind(paths.iter().map(|p| p.as_path()))
                });
                let _ = removed.await;
            }
            let mut cred = Credential::new(cfg, api, state_dir, Some(board), metrics);
            cred = cred.exported(export, in_use);
            cred.adopt_from_disk(crate::now()).await;
            cred
        });
        let done = self.tracker.spawn(
            async move {
                let cred = start.await;
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

    /// Starts, keeps or stops the proxies to match the config; the errors.
    async fn start_proxies(&mut self, api_changed: bool) -> Vec<String> {
        // A proxied credential without a channel for its secret gets one.
        for proxy in &self.config.proxies {
            let name = &proxy.credential;
            if !self.exports.contains_key(name)
                && let Some(task) = self.tasks.get(name)
            {
                let export = Arc::new(ExportSender::default());
                if task.commands.send(Command::Export(export.clone())).is_ok() {
                    self.exports.insert(name.clone(), export);
                }
            }
        }
        let (exports, renew, config) = (&self.exports, &self.renew_requests, &self.config);
        let wiring = |name: &str| {
            let secret = exports.get(name)?.subscribe();
            let (renew, name) = (renew.clone(), name.to_string());
            Some(Wiring {
                secret,
                renew: Arc::new(move || {
                    let _ = renew.send(name.clone());
                }),
            })
        };
        self.proxies.reconcile(config, api_changed, wiring).await
    }

    /// `exec`: passes a request to the supervisor.
    fn to_child(&self, command: ToChild) {
        if let Some(exec) = &self.exec {
            let _ = exec.to_child.send(command);
        }
    }
}
