//! What the daemon tells the outside about its state: `READY=1` and
//! `STATUS=` for systemd, and the status file `status` reads.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::board::file::{self as status, StatusFile};
use crate::board::{CredentialStatus, StatusBoard};
use crate::notify::Notifier;

/// How often the status file is rewritten while proxies run (their
/// request counts).
const STATUS_REFRESH: Duration = Duration::from_secs(30);

/// Changes to the status board within this window are reported together.
const STATUS_COALESCE: Duration = Duration::from_millis(50);

/// After each change of any credential's state: `READY=1` the first time
/// every credential is fresh, a `STATUS=` line, and the status file.
pub(super) async fn report_status(
    board: Arc<StatusBoard>,
    notifier: Arc<Notifier>,
    config_path: std::path::PathBuf,
    state_dir: std::path::PathBuf,
    cancel: CancellationToken,
) {
    let mut ready = false;
    let mut just_ready = false;
    let mut last_summary = String::new();
    let mut status_file_ok = true;
    let process = status::ProcessId::of_self();
    loop {
        let changed = board.changed();
        let all = board.snapshot();
        let now = crate::now();
        let summary = summarize(&all, now);
        if summary != last_summary {
            notifier.notify(&format!("STATUS={summary}"));
            last_summary = summary;
        }
        if !ready && !all.is_empty() && all.iter().all(|s| s.is_fresh_at(now)) {
            ready = true;
            info!(
                credentials = all.len(),
                "every credential has a fresh token on disk"
            );
            notifier.notify("READY=1");
            just_ready = true;
        }
        let file = StatusFile {
            pid: std::process::id(),
            process: process.clone(),
            written_at: now,
            config: config_path.clone(),
            credentials: all,
            child: board.child(),
            proxies: board.proxies(),
        };
        let dir = state_dir.clone();
        match tokio::task::spawn_blocking(move || status::write(&dir, &file)).await {
            Ok(Ok(())) => status_file_ok = true,
            Ok(Err(e)) => {
                if status_file_ok {
                    warn!(error = %e, "cannot write the status file; `status` will not see this daemon");
                }
                status_file_ok = false;
            }
            Err(_) => {}
        }
        if std::mem::take(&mut just_ready) {
            // The start-up burst is over (and its status file written):
            // its freed pages go back to the system.
            crate::malloc::release_free_memory();
        }
        // Proxies count requests without a board change: their figures
        // are refreshed every STATUS_REFRESH while any runs.
        let refresh = !board.proxies().is_empty();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed => {}
            _ = tokio::time::sleep(STATUS_REFRESH), if refresh => {}
        }
        // Let a burst of changes (many credentials starting) settle.
        tokio::time::sleep(STATUS_COALESCE).await;
    }
}

/// One line for systemd's STATUS=: "2/2 fresh; next renewal main in 5days 14h".
pub fn summarize(all: &[CredentialStatus], now: time::OffsetDateTime) -> String {
    let fresh = all.iter().filter(|s| s.is_fresh_at(now)).count();
    let mut line = format!("{fresh}/{} fresh", all.len());
    let failing: Vec<&str> = all
        .iter()
        .filter(|s| s.failures > 0)
        .map(|s| s.name.as_str())
        .collect();
    if !failing.is_empty() {
        line.push_str(&format!("; failing: {}", failing.join(", ")));
    }
    if let Some(next) = all
        .iter()
        .filter(|s| s.next_renewal.is_some())
        .min_by_key(|s| s.next_renewal)
    {
        let at = next.next_renewal.unwrap_or(now);
        let secs = (at - now).whole_seconds().max(0).unsigned_abs();
        let short = status::short_duration(Duration::from_secs(secs));
        line.push_str(&format!("; next renewal {} in {short}", next.name));
    }
    line
}
