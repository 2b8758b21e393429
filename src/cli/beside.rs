//! `once` beside a running daemon.
//!
//! `once` takes the state directory's lock, as `run` does. When a daemon
//! holds it, `once` must not make access keys on its own: the daemon holds
//! the current key in memory, and a key rotated behind its back gets that
//! key deleted (its next call is refused) or orphans keys. So, when the
//! config has access-key credentials, `once` asks the lock holder instead:
//! it sends it SIGUSR1 (with `--force`, or when a credential is due or not
//! fresh) and waits, at most [`WAIT`], for the daemon's status file to show
//! every credential of the config fresh, with a renewal made after the
//! request. Login tokens alone cannot be hurt by a second login: for a
//! config without access keys `once` runs beside the daemon as before.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::board::CredentialStatus;
use crate::config::Config;

// How long `once` waits for the running daemon to answer its request.
use crate::state::ONCE_WAIT as WAIT;

/// How long `once` waits for a daemon that holds the lock to write its
/// status file (it writes one right after it starts).
const STATUS_WAIT: Duration = Duration::from_secs(10);

fn fail(message: String) -> ExitCode {
    error!("{message}");
    eprintln!("voipbin-tokend: {message}");
    ExitCode::FAILURE
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Ok(()) | Err(nix::errno::Errno::EPERM)
    )
}

/// The config's credentials as the daemon's status file shows them, if
/// the file was written by `pid` and names them all.
fn statuses(dir: &Path, pid: u32, names: &[String]) -> Option<Result<Vec<CredentialStatus>, String>> {
    let file = crate::board::file::read(dir).ok().filter(|f| f.pid == pid)?;
    let mut found = Vec::new();
    for name in names {
        match file.credentials.iter().find(|c| &c.name == name) {
            Some(c) => found.push(c.clone()),
            None => {
                return Some(Err(format!(
                    "the voipbin-tokend running with state directory {} (pid {pid}) does not run credential {name:?} (it runs config {}); give this config its own [state] dir",
                    dir.display(),
                    file.config.display()
                )));
            }
        }
    }
    Some(Ok(found))
}

/// `once` for a config with access keys while the daemon `holder` holds
/// the state directory's lock: ask it (SIGUSR1) and wait for its status.
pub fn once_via_daemon(config: &Config, holder: Option<u32>, force: bool) -> ExitCode {
    let dir = &config.state_dir;
    let Some(pid) = holder else {
        return fail(format!(
            "another voipbin-tokend holds the lock on state directory {} and its pid cannot be read; `once` does not make access keys beside a running daemon: send SIGUSR1 to the daemon instead",
            dir.display()
        ));
    };
    let names: Vec<String> = config.credentials.iter().map(|c| c.name.clone()).collect();
    let start = Instant::now();
    let before = loop {
        match statuses(dir, pid, &names) {
            Some(Ok(s)) => break s,
            Some(Err(e)) => return fail(e),
            None if start.elapsed() < STATUS_WAIT && alive(pid) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            None => {
                return fail(format!(
                    "a voipbin-tokend (pid {pid}) holds the lock on state directory {} but its status file cannot be read; `once` does not make access keys beside a running daemon: send SIGUSR1 to pid {pid} instead",
                    dir.display()
                ));
            }
        }
    };
    let now = crate::now();
    let due = |c: &CredentialStatus| !c.is_fresh_at(now) || c.next_renewal.is_some_and(|t| t <= now);
    if !force && !before.iter().any(due) {
        info!(
            pid,
            "a running daemon holds the state directory and keeps every credential fresh; nothing to do"
        );
        return ExitCode::SUCCESS;
    }
    let failed_before: BTreeMap<String, u64> = before
        .iter()
        .map(|c| (c.name.clone(), c.renewals_failed))
        .collect();
    let asked = crate::now();
    let signalled = i32::try_from(pid)
        .map_err(|_| nix::errno::Errno::ESRCH)
        .and_then(|p| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGUSR1)
        });
    if let Err(e) = signalled {
        return fail(format!(
            "a voipbin-tokend (pid {pid}) holds the lock on state directory {} and cannot be sent SIGUSR1 ({e}); `once` does not make access keys beside a running daemon",
            dir.display()
        ));
    }
    info!(
        pid,
        "a running daemon holds the state directory: asked it to renew (SIGUSR1) instead of renewing here; waiting for it"
    );
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if !alive(pid) {
            return fail(format!(
                "the voipbin-tokend (pid {pid}) asked to renew stopped before it did; run `once` again"
            ));
        }
        match statuses(dir, pid, &names) {
            Some(Ok(now_status)) => {
                let now = crate::now();
                let renewed = |c: &CredentialStatus| {
                    c.is_fresh_at(now) && // The daemon never drops a request: one that follows a
                    // renewal closely is answered by one more, after it.
                    c.obtained_at.is_some_and(|t| t > asked)
                };
                if now_status.iter().all(renewed) {
                    info!(pid, "the running daemon renewed every credential");
                    return ExitCode::SUCCESS;
                }
                if let Some(c) = now_status.iter().find(|c| {
                    !renewed(c)
                        && c.failures > 0
                        && c.renewals_failed > failed_before.get(&c.name).copied().unwrap_or(0)
                }) {
                    return fail(format!(
                        "the running voipbin-tokend (pid {pid}) failed to renew credential {}: {}",
                        c.name,
                        c.last_error.as_deref().unwrap_or("unknown error")
                    ));
                }
            }
            Some(Err(e)) => return fail(e),
            None => {}
        }
        if start.elapsed() > WAIT {
            return fail(format!(
                "asked the running voipbin-tokend (pid {pid}, state directory {}) to renew, but its status file showed no renewal of every credential within {}s; see its log or `status`",
                dir.display(),
                WAIT.as_secs()
            ));
        }
    }
}
