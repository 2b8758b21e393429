//! Signals become [`Event`]s for the daemon loop. Nothing is done in a
//! signal handler: tokio's signal streams (signal-hook underneath) only
//! wake the forwarding task.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::info;

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

/// Installs the handlers and forwards signals as events. A second SIGINT
/// (Ctrl-C pressed twice) exits at once with 130.
pub fn forward(events: mpsc::UnboundedSender<Event>) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let mut interrupts = 0u32;
        loop {
            let event = tokio::select! {
                Some(()) = hup.recv() => {
                    info!(signal = "SIGHUP", "reloading the config");
                    Event::Reload { forced: true }
                }
                Some(()) = usr1.recv() => {
                    info!(signal = "SIGUSR1", "renewing every credential now");
                    Event::RenewAll
                }
                Some(()) = term.recv() => {
                    info!(signal = "SIGTERM", "shutting down");
                    Event::Shutdown
                }
                Some(()) = int.recv() => {
                    interrupts += 1;
                    if interrupts > 1 {
                        eprintln!("second interrupt: exiting now");
                        std::process::exit(130);
                    }
                    info!(signal = "SIGINT", "shutting down (interrupt again to exit at once)");
                    Event::Shutdown
                }
                else => break,
            };
            if events.send(event).is_err() {
                // The daemon loop is gone; keep the handlers installed so a
                // second Ctrl-C still works, but there is nobody to tell.
                if event == Event::Shutdown && interrupts == 0 {
                    break;
                }
            }
        }
    });
    Ok(())
}
