//! systemd notifications (`sd_notify`): a datagram to `$NOTIFY_SOCKET`.
//! Without that variable every call is a no-op, so the daemon runs the
//! same outside systemd.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tracing::debug;

/// Where notifications go, if anywhere.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, Target)>,
}

#[derive(Debug)]
enum Target {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|s| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(s.as_os_str()).to_vec();
            let target = match bytes.first() {
                Some(b'@') => Target::Abstract(bytes[1..].to_vec()),
                Some(b'/') => Target::Path(s.into()),
                _ => return None,
            };
            UnixDatagram::unbound().ok().map(|sock| (sock, target))
        });
        Notifier { target }
    }

    /// Sends `state` (newline-separated `KEY=value` lines). Errors are
    /// logged at debug: a notification is never worth failing over.
    pub fn notify(&self, state: &str) {
        let Some((sock, target)) = &self.target else {
            return;
        };
        let result = match target {
            Target::Path(p) => sock.send_to(state.as_bytes(), p),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "sd_notify failed");
        }
    }
}

/// Half of `$WATCHDOG_USEC`, when the watchdog is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| half_of(usec))
}

/// Half the watchdog period, but no less than [`MIN_WATCHDOG_FEED`]: a
/// period of a microsecond would make a zero interval (a panic in the
/// timer) or a busy loop.
fn half_of(usec: u64) -> Duration {
    Duration::from_micros(usec / 2).max(MIN_WATCHDOG_FEED)
}

/// The least time between two `WATCHDOG=1`.
const MIN_WATCHDOG_FEED: Duration = Duration::from_millis(50);

/// `CLOCK_MONOTONIC` in microseconds, for `RELOADING=1`'s `MONOTONIC_USEC=`.
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tiny_watchdog_period_is_fed_every_50_ms_not_in_a_loop() {
        use std::time::Duration;
        assert_eq!(super::half_of(1), Duration::from_millis(50));
        assert_eq!(super::half_of(10_000_000), Duration::from_secs(5));
    }
}
