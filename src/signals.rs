//! Signals become [`Event`]s for the daemon loop.
//!
//! One `signal-hook` iterator of SIGHUP, SIGUSR1, SIGTERM and SIGINT runs
//! on its own std thread, not on the runtime: so even when the runtime
//! thread is stuck (a filesystem call that hangs), a stop request is seen.
//! Nothing is done in a signal handler except through signal-hook's
//! async-signal-safe helpers:
//! - the first SIGTERM or SIGINT starts a [`HARD_STOP`] timer on another
//!   std thread that ends the process (exit 0) if the clean shutdown has
//!   not finished by then;
//! - a second SIGINT (Ctrl-C pressed twice) exits at once with 130, from
//!   the handler itself (`signal_hook::flag::register_conditional_shutdown`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

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
}

/// Installs the handlers and forwards signals as events from a std thread.
pub fn forward(events: mpsc::UnboundedSender<Event>) -> std::io::Result<()> {
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
                            start_hard_stop();
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

/// Ends the process [`HARD_STOP`] from now, whatever the runtime is doing.
fn start_hard_stop() {
    let spawned = std::thread::Builder::new().name("hard-stop".into()).spawn(|| {
        std::thread::sleep(HARD_STOP);
        warn!("shutdown did not finish within 5 s; exiting now");
        eprintln!("voipbin-tokend: shutdown did not finish within 5 s; exiting now");
        // _exit: no destructors, no atexit handlers that could hang too.
        signal_hook::low_level::exit(0);
    });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the hard-stop timer");
    }
}
