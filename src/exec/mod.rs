//! `exec` mode: the supervisor of the one child, COMMAND.
//!
//! A task beside the credential tasks. It waits until every exported
//! credential has published a secret (see [`crate::export`]), starts the
//! child with them in its environment, and when a secret's VALUE changes
//! (changes within [`DEBOUNCE`] of each other count once) restarts it,
//! signals it or leaves it alone (`--on-change`). It tells the key
//! housekeeping which keys a running child holds ([`InUseSender`]): the
//! key a child was started with is recorded before the child starts and
//! let go only once that child is gone (or was signalled to re-read).
//!
//! Never two children at once: a new one starts only after the old one's
//! exit was reaped. Signals reach it through [`ToChild`]; when it exits,
//! [`supervise`] returns its status and the daemon stops with it. The
//! policy is in [`plan`], the process handling in [`crate::process`].

pub mod plan;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::board::{ChildStatus, StatusBoard};
use crate::export::Exported;
use crate::metrics::Metrics;
use crate::process::{self, Exit, Running};
use plan::{OnChange, Plan};

/// Changes of exported secrets within this long of each other cost one
/// restart (a rotation of two credentials at once, a renewal and a reload).
pub const DEBOUNCE: Duration = Duration::from_secs(1);
const MAX_DEBOUNCE: Duration = Duration::from_secs(5);

/// Where the supervisor records the keys running children hold.
pub type InUseSender = watch::Sender<BTreeSet<String>>;

/// What the daemon asks of the supervisor.
#[derive(Debug)]
pub enum ToChild {
    /// Pass this signal on (SIGUSR2, SIGWINCH).
    Forward(Signal),
    /// Stop: pass this signal on (SIGTERM, SIGINT, SIGQUIT), wait up to the
    /// stop timeout, then SIGKILL; the daemon stops with the child's status.
    Stop(Signal),
    /// A reloaded config: its `password-env` variables are hidden too.
    Hide(BTreeSet<String>),
}

/// Each exported credential's channel, in the order of `plan.exports`.
pub type Exports = Vec<watch::Receiver<Option<Exported>>>;

/// What the supervisor works with.
pub struct Supervisor {
    pub plan: Plan,
    pub exports: Exports,
    pub in_use: InUseSender,
    pub board: Arc<StatusBoard>,
    pub metrics: Arc<Metrics>,
    /// Variables never passed on (every `password-env` seen).
    pub hidden: BTreeSet<String>,
}

/// Runs the child until it exits (its status) or a stop was asked before
/// it ever started (`None`).
pub async fn supervise(mut s: Supervisor, mut commands: mpsc::UnboundedReceiver<ToChild>) -> Option<Exit> {
    // Watched before the first look, so no change falls between the two.
    let (mut changes, _watchers) = watch_changes(&s.exports);
    // Wait for every exported secret; nothing runs before.
    let mut started: Vec<Exported> = loop {
        if let Some(all) = current(&s.exports) {
            break all;
        }
        tokio::select! {
            Some(()) = changes.recv() => {}
            command = commands.recv() => match command {
                Some(ToChild::Stop(_)) | None => {
                    info!("stopping before the child was started");
                    return None;
                }
                Some(ToChild::Forward(sig)) => info!(signal = sig.as_str(), "no child running yet; signal not passed on"),
                Some(ToChild::Hide(names)) => s.hidden.extend(names),
            },
        }
    };
    let mut restarts: u64 = 0;
    let mut child = match start(&s, &started, restarts) {
        Ok(c) => c,
        Err(exit) => return Some(exit),
    };
    // When a change seen is acted on: DEBOUNCE after the last one.
    let mut act_at: Option<tokio::time::Instant> = None;
    let mut first_change: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            exit = child.wait() => {
                info!(pid = child.pid(), status = %exit, "child exited");
                child_gone(&s);
                return Some(exit);
            }
            Some(()) = changes.recv() => {
                // A second after the last change, but no later than
                // MAX_DEBOUNCE after the first (changes that never stop).
                let now = tokio::time::Instant::now();
                let first = *first_change.get_or_insert(now);
                act_at = Some((now + DEBOUNCE).min(first + MAX_DEBOUNCE));
            }
            _ = async { tokio::time::sleep_until(act_at.expect("guarded")).await }, if act_at.is_some() => {
                act_at = None;
                first_change = None;
                let Some(now) = current(&s.exports) else { continue };
                let changed = plan::changed(&s.plan.exports, &started, &now);
                if changed.is_empty() {
                    continue;
                }
                let credential = changed.join(",");
                match s.plan.on_change {
                    OnChange::None => {
                        info!(credential = %credential, "an exported secret changed; the child is left alone (--on-change none) and keeps the keys it holds");
                    }
                    OnChange::Signal(sig) => {
                        info!(credential = %credential, signal = sig.as_str(), "an exported secret changed; signalling the child");
                        child.signal(sig);
                        // It re-reads its file: the old key is let go.
                        s.in_use.send_replace(plan::keys_held(&pairs(&s.plan, &now)));
                        started = now;
                    }
                    OnChange::Restart => {
                        info!(credential = %credential, pid = child.pid(), "restarting the child: an exported secret changed");
                        let (exit, stop) = stop(&mut child, s.plan.stop_signal, s.plan.stop_timeout, &mut commands, &mut s.hidden).await;
                        info!(pid = child.pid(), status = %exit, "child exited");
                        if stop {
                            child_gone(&s);
                            return Some(exit);
                        }
                        restarts += 1;
                        s.metrics.child_restart("rotation");
                        // The secrets as they are now, not as they were when the stop began.
                        started = current(&s.exports).unwrap_or(now);
                        child = match start(&s, &started, restarts) {
                            Ok(c) => c,
                            Err(exit) => return Some(exit),
                        };
                    }
                }
            }
            command = commands.recv() => match command {
                Some(ToChild::Forward(sig)) => {
                    info!(signal = sig.as_str(), pid = child.pid(), "passing the signal on to the child");
                    child.signal(sig);
                }
                Some(ToChild::Stop(sig)) => {
                    info!(signal = sig.as_str(), pid = child.pid(), "stopping the child");
                    let (exit, _) = stop(&mut child, sig, s.plan.stop_timeout, &mut commands, &mut s.hidden).await;
                    info!(pid = child.pid(), status = %exit, "child exited");
                    child_gone(&s);
                    return Some(exit);
                }
                Some(ToChild::Hide(names)) => s.hidden.extend(names),
                None => {
                    let (exit, _) = stop(&mut child, s.plan.stop_signal, s.plan.stop_timeout, &mut commands, &mut s.hidden).await;
                    child_gone(&s);
                    return Some(exit);
                }
            },
        }
    }
}

/// Every exported secret, if each credential has one.
fn current(exports: &Exports) -> Option<Vec<Exported>> {
    exports.iter().map(|rx| rx.borrow().clone()).collect()
}

/// One message on the returned channel each time an exported credential
/// publishes a value (the tasks end with the returned set).
fn watch_changes(exports: &Exports) -> (mpsc::UnboundedReceiver<()>, tokio::task::JoinSet<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut set = tokio::task::JoinSet::new();
    for export in exports {
        let (mut export, tx) = (export.clone(), tx.clone());
        set.spawn(async move {
            while export.changed().await.is_ok() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
    }
    (rx, set)
}

fn pairs<'a>(plan: &'a Plan, values: &'a [Exported]) -> Vec<(&'a plan::Export, &'a Exported)> {
    plan.exports.iter().zip(values).collect()
}

/// Starts the child with `values`; records the keys it holds first. An
/// error is the status the daemon exits with (127 or 126, as a shell).
fn start(s: &Supervisor, values: &[Exported], restarts: u64) -> Result<Running, Exit> {
    let pairs = pairs(&s.plan, values);
    s.in_use.send_replace(plan::keys_held(&pairs));
    let env = plan::child_env(std::env::vars_os(), &s.hidden, &pairs);
    let command = &s.plan.command;
    let mut cmd = std::process::Command::new(&command.program);
    if let Some(arg0) = command.argv.first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
    }
    cmd.args(command.argv.iter().skip(1)).env_clear().envs(env);
    // Spawned here, on the runtime's thread, which lives as long as the
    // daemon: the parent-death signal follows the thread that forked.
    match process::spawn(
        &mut cmd,
        process::Options {
            die_with_parent: true,
        },
    ) {
        Ok(child) => {
            info!(pid = child.pid(), restarts, command = %command.name(), "child started");
            s.board.set_child(Some(ChildStatus {
                pid: child.pid(),
                started_at: crate::now(),
                restarts,
                command: command.name(),
            }));
            s.metrics.child_up(true);
            Ok(child)
        }
        Err(e) => {
            let status = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            error!(command = %command.name(), error = %e, "cannot start the child");
            child_gone(s);
            Err(Exit::Code(status))
        }
    }
}

/// The child is gone: nothing is held, nothing runs.
fn child_gone(s: &Supervisor) {
    s.in_use.send_replace(BTreeSet::new());
    s.metrics.child_up(false);
}

/// Stops the child: `signal`, up to `timeout`, then SIGKILL. Signals that
/// arrive meanwhile are passed on; a stop asked meanwhile (SIGTERM to the
/// daemon during a restart) is reported, so no new child is started.
async fn stop(
    child: &mut Running,
    signal: Signal,
    timeout: Duration,
    commands: &mut mpsc::UnboundedReceiver<ToChild>,
    hidden: &mut BTreeSet<String>,
) -> (Exit, bool) {
    child.signal(signal);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut stop_asked = false;
    let mut commands_open = true;
    loop {
        tokio::select! {
            exit = child.wait() => return (exit, stop_asked),
            _ = &mut deadline => break,
            command = commands.recv(), if commands_open => match command {
                Some(ToChild::Stop(sig)) => {
                    stop_asked = true;
                    child.signal(sig);
                }
                Some(ToChild::Forward(sig)) => {
                    child.signal(sig);
                }
                Some(ToChild::Hide(names)) => hidden.extend(names),
                None => {
                    commands_open = false;
                    stop_asked = true;
                }
            },
        }
    }
    warn!(
        pid = child.pid(),
        timeout = %humantime::format_duration(timeout),
        "the child did not stop in time; killing it (SIGKILL)"
    );
    child.signal(Signal::SIGKILL);
    (child.wait().await, stop_asked)
}
