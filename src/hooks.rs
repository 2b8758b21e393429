//! On-change hooks: a command (`on-change`, no shell) and/or a signal to
//! the pid in `pid-file`, run after a new token is written to an output.
//!
//! Each output with a hook has its own small task fed through a `watch`
//! channel: runs for one output never overlap, a burst of writes while a
//! hook runs collapses into one more run with the latest token, and a slow
//! hook never holds up renewal of anything.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tracing::{Instrument, error, info, warn};

use crate::config::OutputConfig;
use crate::metrics::Metrics;
use crate::token::rfc3339;

/// A command gets this long before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// The hooks of one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSpec {
    pub on_change: Option<Vec<String>>,
    pub signal: Option<(Signal, PathBuf)>,
}

impl HookSpec {
    pub fn of(out: &OutputConfig) -> Option<HookSpec> {
        let signal = match (out.signal, &out.pid_file) {
            (Some(s), Some(p)) => Some((s, p.clone())),
            _ => None,
        };
        (out.on_change.is_some() || signal.is_some()).then(|| HookSpec {
            on_change: out.on_change.clone(),
            signal,
        })
    }
}

/// The handle a credential keeps per output with hooks; dropping it ends
/// the task after any run in progress.
#[derive(Debug)]
pub struct Hook {
    pub spec: HookSpec,
    trigger: watch::Sender<Option<OffsetDateTime>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hook {
    /// Starts the hook task for the output at `path`, in the current span.
    pub fn start(spec: HookSpec, credential: String, path: PathBuf, metrics: Arc<Metrics>) -> Hook {
        let (trigger, rx) = watch::channel(None);
        let task_spec = spec.clone();
        let task =
            tokio::spawn(run(task_spec, credential, path, rx, metrics).instrument(tracing::Span::current()));
        Hook { spec, trigger, task }
    }

    /// Lets a requested run finish, then ends the task (for `once`).
    pub async fn finish(self) {
        drop(self.trigger);
        let _ = self.task.await;
    }

    /// Asks for a run for a token expiring at `expires_at`.
    pub fn fire(&self, expires_at: OffsetDateTime) {
        self.trigger.send_replace(Some(expires_at));
    }
}

async fn run(
    spec: HookSpec,
    credential: String,
    path: PathBuf,
    mut rx: watch::Receiver<Option<OffsetDateTime>>,
    metrics: Arc<Metrics>,
) {
    while rx.changed().await.is_ok() {
        let Some(expires_at) = *rx.borrow_and_update() else {
            continue;
        };
        if let Some(argv) = &spec.on_change {
            let ok = run_command(argv, &credential, &path, expires_at).await;
            metrics.hook(&credential, "command", ok);
        }
        if let Some((signal, pid_file)) = &spec.signal {
            // The pid file is read on the blocking pool, never on the runtime thread.
            let (signal, pid_file) = (*signal, pid_file.clone());
            let ok = tokio::task::spawn_blocking(move || send_signal(signal, &pid_file))
                .await
                .unwrap_or(false);
            metrics.hook(&credential, "signal", ok);
        }
    }
}

/// Runs `argv` with the token's facts in its environment; logs its output
/// line by line; kills it after [`HOOK_TIMEOUT`]. True if it exited 0.
async fn run_command(
    argv: &[String],
    credential: &str,
    path: &std::path::Path,
    expires_at: OffsetDateTime,
) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env("VOIPBIN_TOKEND_CREDENTIAL", credential)
        .env("VOIPBIN_TOKEND_OUTPUT", path)
        .env("VOIPBIN_TOKEND_EXPIRES_AT", rfc3339(expires_at))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            error!(command = %program, error = %e, "on-change command could not start");
            return false;
        }
    };
    let stdout = child
        .stdout
        .take()
        .map(|s| tokio::spawn(log_lines(s, "stdout").in_current_span()));
    let stderr = child
        .stderr
        .take()
        .map(|s| tokio::spawn(log_lines(s, "stderr").in_current_span()));
    let status = match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => {
            error!(command = %program, error = %e, "on-change command: wait failed");
            None
        }
        Err(_) => {
            let _ = child.kill().await;
            error!(command = %program, timeout = ?HOOK_TIMEOUT, "on-change command timed out; killed");
            None
        }
    };
    for reader in [stdout, stderr].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
    }
    match status {
        Some(s) if s.success() => {
            info!(command = %program, "on-change command succeeded");
            true
        }
        Some(s) => {
            error!(command = %program, status = %s, "on-change command failed");
            false
        }
        None => false,
    }
}

async fn log_lines(stream: impl tokio::io::AsyncRead + Unpin, name: &'static str) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        info!(
            stream = name,
            "hook: {}",
            line.chars().take(1000).collect::<String>()
        );
    }
}

/// Sends `signal` to the pid in `pid_file`, read now (the program may have
/// restarted since the last time).
fn send_signal(signal: Signal, pid_file: &std::path::Path) -> bool {
    // Bounded, non-blocking, regular files only (a FIFO is refused at once).
    let text = crate::fsread::read_bounded(pid_file, crate::fsread::MAX_PID_FILE, "pid file");
    let pid = match text {
        Ok(text) => match std::str::from_utf8(&text).unwrap_or("").trim().parse::<i32>() {
            Ok(pid) if pid > 1 => pid,
            _ => {
                error!(pid_file = %pid_file.display(), "pid file does not hold a process id");
                return false;
            }
        },
        Err(e) => {
            error!(error = %e, "cannot read pid file");
            return false;
        }
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) => {
            info!(pid, signal = %signal, "signalled");
            true
        }
        Err(e) => {
            warn!(pid, signal = %signal, pid_file = %pid_file.display(), error = %e, "cannot signal the process (stale pid file?)");
            false
        }
    }
}
