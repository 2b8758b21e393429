//! Signals become [`Event`]s for the daemon loop.
//!
//! One `signal-hook` iterator of SIGHUP, SIGUSR1, SIGTERM and SIGINT (and,
//! in `exec` mode, SIGQUIT, SIGUSR2 and SIGWINCH, for the child) runs on
//! its own std thread, not on the runtime: so even when the runtime thread
//! is stuck (a filesystem call that hangs), a stop request is seen.
//! Nothing is done in a signal handler except through signal-hook's
//! async-signal-safe helpers:
//! - the first SIGTERM or SIGINT starts a [`HARD_STOP`] timer on another
//!   std thread that ends the process (exit 0) if the clean shutdown has
//!   not finished by then;
//! - a second SIGINT (Ctrl-C pressed twice) exits at once with 130, from
//!   the handler itself (`signal_hook::flag::register_conditional_shutdown`).
//!
//! In `exec` mode a stop signal is the child's to answer: SIGTERM, SIGINT
//! and SIGQUIT become [`Event::StopChild`] (passed on; the daemon waits for
//! the child up to its stop timeout), every time, with no exit on a second
//! SIGINT, and the hard stop comes after the stop timeout.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use nix::sys::signal::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// The longest a stop may take, whatever is stuck: then the process exits.
pub const HARD_STOP: Duration = Duration::from_secs(5);

/// What the daemon loop reacts to, whatever its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Reload the config. `forced` (SIGHUP) reloads even if the file's text
    /// did not change; a file-change event skips identical text.
    Reload { forced: bool },
    /// Renew every credential now (SIGUSR1).
    RenewAll,
    /// Stop: finish writes in progress, exit 0.
    Shutdown,
    /// `exec`: pass this stop signal to the child, wait for it, stop.
    StopChild(Signal),
    /// `exec`: pass this signal to the child (SIGUSR2, SIGWINCH).
    ForwardToChild(Signal),
}

/// `exec` mode's signal handling: how long the child may take to stop.
#[derive(Debug, Clone, Copy)]
pub struct ExecSignals {
    pub stop_timeout: Duration,
}

/// Installs the handlers and forwards signals as events from a std thread.
pub fn forward(events: mpsc::UnboundedSender<Event>, exec: Option<ExecSignals>) -> std::io::Result<()> {
    if let Some(exec) = exec {
        return forward_for_exec(events, exec);
    }
    // Second SIGINT: exit 130 from the handler. The conditional exit is
    // registered first, so the first SIGINT finds the flag still false and
    // only then sets it.
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register_conditional_shutdown(SIGINT, 130, interrupted.clone())?;
    signal_hook::flag::register(SIGINT, interrupted)?;
    let mut signals = Signals::new([SIGHUP, SIGUSR1, SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                let event = match signal {
                    SIGHUP => {
                        info!(signal = "SIGHUP", "reloading the config");
                        Event::Reload { forced: true }
                    }
                    SIGUSR1 => {
                        info!(signal = "SIGUSR1", "renewing every credential now");
                        Event::RenewAll
                    }
                    _ => {
                        let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                        if !stopping {
                            stopping = true;
                            info!(signal = name, "shutting down (interrupt again to exit at once)");
                            start_hard_stop(HARD_STOP, 0);
                        }
                        Event::Shutdown
                    }
                };
                // The daemon loop may be gone already; the hard stop still holds.
                let _ = events.send(event);
            }
        })?;
    Ok(())
}

/// [`forward`] in `exec` mode.
fn forward_for_exec(events: mpsc::UnboundedSender<Event>, exec: ExecSignals) -> std::io::Result<()> {
    use signal_hook::consts::{SIGQUIT, SIGUSR2, SIGWINCH};
    let mut signals = Signals::new([SIGHUP, SIGUSR1, SIGTERM, SIGINT, SIGQUIT, SIGUSR2, SIGWINCH])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for number in signals.forever() {
                let Ok(signal) = Signal::try_from(number) else {
                    continue;
                };
                let event = match signal {
                    Signal::SIGHUP => {
                        info!(signal = "SIGHUP", "reloading the config");
                        Event::Reload { forced: true }
                    }
                    Signal::SIGUSR1 => {
                        info!(signal = "SIGUSR1", "renewing every credential now");
                        Event::RenewAll
                    }
                    Signal::SIGUSR2 | Signal::SIGWINCH => Event::ForwardToChild(signal),
                    _ => {
                        if !stopping {
                            stopping = true;
                            info!(
                                signal = signal.as_str(),
                                "stopping: passing the signal on to the child"
                            );
                            // The child's stop timeout, then the daemon's own stop.
                            start_hard_stop(
                                exec.stop_timeout
                                    .saturating_add(HARD_STOP)
                                    .saturating_add(HARD_STOP),
                                1,
                            );
                        }
                        Event::StopChild(signal)
                    }
                };
                let _ = events.send(event);
            }
        })?;
    Ok(())
}

/// Ends the process `after` from now with `status`, whatever the runtime
/// is doing.
fn start_hard_stop(after: Duration, status: i32) {
    let spawned = std::thread::Builder::new()
        .name("hard-stop".into())
        .spawn(move || {
            std::thread::sleep(after);
            let after = humantime::format_duration(after);
            warn!("shutdown did not finish within {after}; exiting now");
            eprintln!("voipbin-tokend: shutdown did not finish within {after}; exiting now");
            // _exit: no destructors, no atexit handlers that could hang too.
            signal_hook::low_level::exit(status);
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the hard-stop timer");
    }
}
