//! Child processes: the one place they are started, signalled and reaped.
//!
//! Hooks and the `exec` child are started with [`spawn`]; nothing else in
//! the daemon starts a process. One reaper thread collects every exit with
//! `waitpid(-1)`: so when the daemon is a child subreaper ([`become_subreaper`],
//! `exec` mode), descendants orphaned by the child are reaped too, and no
//! other wait races it for a status (std's or tokio's own child handling
//! would lose theirs to a `waitpid(-1)`).
//!
//! One lock covers starting a process and reaping one: the reaper cannot
//! collect a process before it is registered (std's spawn itself waits for
//! a child whose exec failed, and must find it), and [`Running::signal`]
//! never signals a pid that was reaped (and may have been reused).
//!
//! This module holds one of the crate's two `unsafe` blocks (the other is
//! `malloc_trim`, in `malloc`): the `pre_exec` closure (async-signal-safe
//! system calls only, between fork and exec).

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, OnceLock};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal (this number) killed it.
    Signal(i32),
}

impl Exit {
    /// As a shell reports it, and as the daemon exits with it: the code,
    /// or 128 + the signal number.
    pub fn as_status(self) -> u8 {
        match self {
            Exit::Code(c) => (c & 0xff) as u8,
            Exit::Signal(s) => 128u8.saturating_add((s & 0x7f) as u8),
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status: {c}"),
            Exit::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {}", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// How a process is started beyond its `Command`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The process gets SIGTERM when the daemon dies (`PR_SET_PDEATHSIG`),
    /// even by SIGKILL: an `exec` child never outlives its supervisor.
    /// The death signal follows the thread that forked: spawn from a
    /// thread that lives as long as the daemon (the runtime's).
    pub die_with_parent: bool,
}

/// A started process; its exit comes from the reaper.
#[derive(Debug)]
pub struct Running {
    pid: i32,
    /// The std handle, for its pipes only: never waited on.
    pub child: Child,
    exited: oneshot::Receiver<Exit>,
    exit: Option<Exit>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Waits for the process to end. Cancel-safe; may be called again.
    pub async fn wait(&mut self) -> Exit {
        if let Some(exit) = self.exit {
            return exit;
        }
        // The reaper never drops a registered sender without sending.
        let exit = (&mut self.exited).await.unwrap_or(Exit::Signal(9));
        self.exit = Some(exit);
        exit
    }

    /// The exit, if the process has ended.
    pub fn try_exit(&mut self) -> Option<Exit> {
        if self.exit.is_none() {
            self.exit = self.exited.try_recv().ok();
        }
        self.exit
    }

    /// Sends `signal` unless the process was already reaped (its pid may
    /// belong to another process by now). True if sent.
    pub fn signal(&self, signal: Signal) -> bool {
        let registry = registry();
        if !registry.contains_key(&self.pid) {
            return false;
        }
        nix::sys::signal::kill(Pid::from_raw(self.pid), signal).is_ok()
    }
}

impl Drop for Running {
    /// A process nobody waits for any more (a hook whose task ended, a
    /// child at shutdown) is killed: its exit is still reaped.
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            self.signal(Signal::SIGKILL);
        }
    }
}

/// Starts `command`. Its exit is collected by the reaper (started here
/// the first time).
pub fn spawn(command: &mut Command, options: Options) -> std::io::Result<Running> {
    start_reaper()?;
    prepare(command, options);
    let (tx, rx) = oneshot::channel();
    let mut registry = registry();
    let child = command.spawn()?;
    let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
    registry.insert(pid, tx);
    drop(registry);
    Ok(Running {
        pid,
        child,
        exited: rx,
        exit: None,
    })
}

/// Makes this process a child subreaper: descendants orphaned by its
/// children are reparented to it (and reaped by the reaper) instead of to
/// PID 1, which in a container may be this process anyway.
pub fn become_subreaper() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
    start_reaper()
}

/// Processes started and not yet reaped: pid → where their exit goes.
fn registry() -> MutexGuard<'static, HashMap<i32, oneshot::Sender<Exit>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<i32, oneshot::Sender<Exit>>>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the reaper thread once: it wakes on SIGCHLD and reaps every
/// child that has ended.
fn start_reaper() -> std::io::Result<()> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        // The handler is in place before the thread runs, and before any
        // child this module starts: no exit goes unnoticed.
        let mut signals =
            signal_hook::iterator::Signals::new([signal_hook::consts::SIGCHLD]).map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(REAPER_STACK)
            .spawn(move || {
                reap_all();
                for _ in signals.forever() {
                    reap_all();
                }
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    started
        .clone()
        .map_err(|e| std::io::Error::other(format!("cannot start the process reaper: {e}")))
}

/// Enough for `waitpid` and a log line.
const REAPER_STACK: usize = 128 * 1024;

/// Reaps every child that has ended (one SIGCHLD may stand for many).
fn reap_all() {
    loop {
        let mut registry = registry();
        let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, Exit::Signal(signal as i32)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            // Stops and continues are not asked for; an interrupted call is retried.
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                warn!(error = %e, "waitpid failed; children may stay unreaped");
                return;
            }
        };
        match registry.remove(&pid.as_raw()) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => debug!(pid = pid.as_raw(), status = %exit, "reaped an orphaned process"),
        }
    }
}

/// What runs in the child between fork and exec: the open-file limit the
/// daemon started with (see [`crate::rlimit`]), and the parent-death signal.
fn prepare(command: &mut Command, options: Options) {
    use std::os::unix::process::CommandExt;
    let fd_limit = crate::rlimit::fd_limit_for_children();
    let parent = nix::unistd::getpid();
    if fd_limit.is_none() && !options.die_with_parent {
        return;
    }
    // SAFETY: between fork and exec only plain system calls run
    // (setrlimit, prctl, getppid), all async-signal-safe; nothing
    // allocates or takes a lock.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            if let Some((soft, hard)) = fd_limit {
                // A program with the daemon's higher limit still runs.
                let _ =
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard);
            }
            if options.die_with_parent {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                // The parent died before the call: the signal will never come.
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other(
                        "the daemon exited while starting the child",
                    ));
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_map_as_a_shell_reports_them() {
        assert_eq!(Exit::Code(0).as_status(), 0);
        assert_eq!(Exit::Code(3).as_status(), 3);
        assert_eq!(Exit::Code(256 + 7).as_status(), 7);
        assert_eq!(Exit::Signal(9).as_status(), 137);
        assert_eq!(Exit::Signal(15).as_status(), 143);
        assert_eq!(Exit::Signal(9).to_string(), "killed by SIGKILL");
    }

    #[test]
    fn a_spawned_process_is_reaped_and_its_status_delivered() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut ok = spawn(Command::new("/bin/sh").args(["-c", "exit 3"]), Options::default()).unwrap();
            assert_eq!(ok.wait().await, Exit::Code(3));
            let mut slow = spawn(
                Command::new("/bin/sh").args(["-c", "sleep 30"]),
                Options::default(),
            )
            .unwrap();
            assert!(slow.signal(Signal::SIGTERM));
            assert_eq!(slow.wait().await, Exit::Signal(15));
            // Reaped: no more signals to that pid.
            assert!(!slow.signal(Signal::SIGTERM));
        });
    }

    #[test]
    fn a_command_that_cannot_run_is_an_error_not_a_hang() {
        let err = spawn(&mut Command::new("/nonexistent/program"), Options::default()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
