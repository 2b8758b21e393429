//! On-change hooks: a command (`on-change`, no shell) and/or a signal to
//! the pid in `pid-file`, run after a new token is written to an output.
//!
//! Each output with a hook has its own small task fed through a `watch`
//! channel: runs for one output never overlap, a burst of writes while a
//! hook runs collapses into one more run with the latest token, and a slow
//! hook never holds up renewal of anything.
//!
//! Hooks are not trusted with secrets: a command gets a clean environment
//! ([`hook_env`]: no password from `password-env`, nothing the daemon was
//! started with unless the output lists it in `hook-env`), and every line it
//! prints is scrubbed of the current and previous token ([`Scrubber`])
//! before it reaches the log.

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
use crate::secret::Secret;
use crate::token::rfc3339;

/// A command gets this long before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// The hooks of one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSpec {
    pub on_change: Option<Vec<String>>,
    /// Variables passed through from the daemon's environment (`hook-env`).
    pub env: Vec<String>,
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
            env: out.hook_env.clone(),
            signal,
        })
    }
}

/// The handle a credential keeps per output with hooks; dropping it ends
/// the task after any run in progress.
#[derive(Debug)]
pub struct Hook {
    pub spec: HookSpec,
    trigger: watch::Sender<Option<Run>>,
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

    /// Asks for a run for `token`, expiring at `expires_at`. The token is
    /// only used to scrub the command's output.
    pub fn fire(&self, expires_at: OffsetDateTime, token: &Secret) {
        self.trigger.send_replace(Some(Run {
            expires_at,
            token: token.clone(),
        }));
    }
}

/// One requested run: the token just written.
#[derive(Debug, Clone)]
struct Run {
    expires_at: OffsetDateTime,
    token: Secret,
}

async fn run(
    spec: HookSpec,
    credential: String,
    path: PathBuf,
    mut rx: watch::Receiver<Option<Run>>,
    metrics: Arc<Metrics>,
) {
    // The token of the run before: a hook may print the old file's content.
    let mut previous: Option<Secret> = None;
    while rx.changed().await.is_ok() {
        let Some(run) = rx.borrow_and_update().clone() else {
            continue;
        };
        let scrubber = Arc::new(Scrubber::new(
            [Some(&run.token), previous.as_ref()].into_iter().flatten(),
        ));
        if previous.as_ref() != Some(&run.token) {
            previous = Some(run.token.clone());
        }
        if let Some(argv) = &spec.on_change {
            let env = hook_env(&spec.env, &credential, &path, run.expires_at);
            let ok = run_command(argv, env, scrubber).await;
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

/// Used when the daemon itself has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The whole environment of a hook command: `PATH`, `LANG` and `LC_ALL`
/// (when the daemon has them), the `VOIPBIN_TOKEND_*` facts of the token,
/// and the variables named in `hook-env`, taken from the daemon's
/// environment. Nothing else: the daemon's environment may hold a
/// `password-env` password, and a hook is not trusted with it.
pub fn hook_env(
    pass_through: &[String],
    credential: &str,
    path: &std::path::Path,
    expires_at: OffsetDateTime,
) -> Vec<(String, std::ffi::OsString)> {
    hook_env_from(
        |name| std::env::var_os(name),
        pass_through,
        credential,
        path,
        expires_at,
    )
}

/// [`hook_env`] with the daemon's environment read through `lookup`.
fn hook_env_from(
    lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    pass_through: &[String],
    credential: &str,
    path: &std::path::Path,
    expires_at: OffsetDateTime,
) -> Vec<(String, std::ffi::OsString)> {
    let mut env: Vec<(String, std::ffi::OsString)> = Vec::new();
    env.push((
        "PATH".into(),
        lookup("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
    ));
    for name in ["LANG", "LC_ALL"]
        .iter()
        .map(|n| n.to_string())
        .chain(pass_through.iter().cloned())
    {
        if let Some(value) = lookup(&name)
            && !env.iter().any(|(n, _)| *n == name)
        {
            env.push((name, value));
        }
    }
    env.push(("VOIPBIN_TOKEND_CREDENTIAL".into(), credential.into()));
    env.push(("VOIPBIN_TOKEND_OUTPUT".into(), path.as_os_str().to_owned()));
    env.push(("VOIPBIN_TOKEND_EXPIRES_AT".into(), rfc3339(expires_at).into()));
    env
}

/// Removes tokens from text a hook printed before it is logged: each
/// whole token and each of its dot-separated parts (payload, signature)
/// of 8 or more characters, so a hook printing only a part leaks nothing.
#[derive(Default)]
pub struct Scrubber {
    needles: Vec<Secret>,
}

/// What a scrubbed secret is replaced with in the log.
pub const REDACTED: &str = "[redacted]";

impl Scrubber {
    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a Secret>) -> Scrubber {
        let mut needles: Vec<Secret> = Vec::new();
        for token in tokens {
            let text = token.expose();
            let parts = text.split('.').filter(|p| p.len() >= 8);
            for part in std::iter::once(text).chain(parts) {
                if !part.is_empty() && !needles.iter().any(|n| n.expose() == part) {
                    needles.push(Secret::new(part.to_string()));
                }
            }
        }
        // Longest first: a whole token goes as one, not part by part.
        needles.sort_by_key(|n| std::cmp::Reverse(n.expose().len()));
        Scrubber { needles }
    }

    /// `line` with every secret replaced by [`REDACTED`].
    pub fn scrub(&self, line: &str) -> String {
        let mut text = line.to_string();
        for needle in &self.needles {
            if text.contains(needle.expose()) {
                text = text.replace(needle.expose(), REDACTED);
            }
        }
        text
    }
}

/// Runs `argv` with exactly `env` as its environment; logs its output line
/// by line, scrubbed; kills it after [`HOOK_TIMEOUT`]. True if it exited 0.
async fn run_command(
    argv: &[String],
    env: Vec<(String, std::ffi::OsString)>,
    scrubber: Arc<Scrubber>,
) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match crate::process::spawn(&mut command, crate::process::Options::default()) {
        Ok(c) => c,
        Err(e) => {
            error!(command = %program, error = %e, "on-change command could not start");
            return false;
        }
    };
    let stdout = pipe(child.child.stdout.take())
        .map(|s| tokio::spawn(log_lines(s, "stdout", scrubber.clone()).in_current_span()));
    let stderr = pipe(child.child.stderr.take())
        .map(|s| tokio::spawn(log_lines(s, "stderr", scrubber.clone()).in_current_span()));
    let status = match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
        Ok(status) => Some(status),
        Err(_) => {
            child.signal(Signal::SIGKILL);
            let _ = child.wait().await;
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

/// A child's pipe as a stream the runtime can read.
fn pipe(end: Option<impl Into<std::os::fd::OwnedFd>>) -> Option<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(end?.into()).ok()
}

/// Logs each line, scrubbed first and only then cut to 1000 characters
/// (cutting first could leave a piece of a token the scrubber misses).
async fn log_lines(stream: impl tokio::io::AsyncRead + Unpin, name: &'static str, scrubber: Arc<Scrubber>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = zeroize::Zeroizing::new(line);
        info!(
            stream = name,
            "hook: {}",
            scrubber.scrub(&line).chars().take(1000).collect::<String>()
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
    // Never ourselves: a pid file holding our pid (our lock file, a stale
    // file) would make each new secret ask for the next one, at full speed.
    if u32::try_from(pid).is_ok_and(|p| p == std::process::id()) {
        error!(pid, pid_file = %pid_file.display(), "pid file holds this daemon's own pid; not signalling ourselves");
        return false;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubber_hides_whole_tokens_and_their_parts_of_8_or_more() {
        let current = Secret::new("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLWN1cg".into());
        let previous = Secret::new("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvbGQifQ.c2lnbmF0dXJlLW9sZA".into());
        let s = Scrubber::new([&current, &previous]);
        let line = format!(
            "now {} was {} payload eyJzdWIiOiJhZ2VudCJ9 sig c2lnbmF0dXJlLW9sZA short eyJ",
            current.expose(),
            previous.expose()
        );
        let out = s.scrub(&line);
        assert_eq!(
            out,
            "now [redacted] was [redacted] payload [redacted] sig [redacted] short eyJ"
        );
        // Nothing to scrub: the line is unchanged.
        assert_eq!(Scrubber::new([]).scrub("plain text"), "plain text");
    }

    #[test]
    fn hook_env_holds_only_path_lang_the_facts_and_listed_variables() {
        let daemon_env = |name: &str| {
            [
                "PATH",
                "LANG",
                "HOOKS_UNIT_LISTED",
                "HOOKS_UNIT_UNLISTED",
                "VOIPBIN_PASSWORD",
            ]
            .contains(&name)
            .then(|| std::ffi::OsString::from("x"))
        };
        let env = hook_env_from(
            daemon_env,
            &["HOOKS_UNIT_LISTED".into(), "HOOKS_UNIT_MISSING".into()],
            "main",
            std::path::Path::new("/run/x.token"),
            OffsetDateTime::UNIX_EPOCH,
        );
        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
        for present in [
            "PATH",
            "LANG",
            "HOOKS_UNIT_LISTED",
            "VOIPBIN_TOKEND_CREDENTIAL",
            "VOIPBIN_TOKEND_OUTPUT",
            "VOIPBIN_TOKEND_EXPIRES_AT",
        ] {
            assert!(names.contains(&present), "{present} missing: {names:?}");
        }
        for absent in [
            "LC_ALL",
            "HOOKS_UNIT_UNLISTED",
            "HOOKS_UNIT_MISSING",
            "VOIPBIN_PASSWORD",
        ] {
            assert!(!names.contains(&absent), "{absent} present: {names:?}");
        }
    }
}
