//! The `status` command: the running daemon's status file as a table or JSON.

use std::path::Path;
use std::process::ExitCode;

use time::OffsetDateTime;

use crate::board::file::{ProcessId, StatusFile, path, short_duration};
use crate::token::rfc3339;

/// True if the daemon that wrote `status` still runs: its pid exists and,
/// where the file records it, is still the same process (not a later one
/// that was given the pid after the daemon died).
fn alive(status: &StatusFile) -> bool {
    let Ok(pid) = i32::try_from(status.pid) else {
        return false;
    };
    let exists = matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Ok(()) | Err(nix::errno::Errno::EPERM)
    );
    match &status.process {
        Some(recorded) => exists && ProcessId::of(status.pid).as_ref() == Some(recorded),
        None => exists,
    }
}

fn ago_or_in(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (t - now).whole_seconds();
    let short = short_duration(std::time::Duration::from_secs(secs.unsigned_abs()));
    if secs >= 0 {
        format!("in {short}")
    } else {
        format!("{short} ago")
    }
}

/// The lines under an access-key credential: its key and what waits for deletion.
fn print_key(k: &crate::board::KeyStatus, now: OffsetDateTime) {
    match (&k.key_id, &k.key_prefix) {
        (Some(id), Some(prefix)) => say!("  key {id} ({prefix}...)"),
        _ => say!("  no key yet"),
    }
    for p in &k.pending_deletions {
        let when = match p.delete_after {
            Some(t) => format!("deleted {}", ago_or_in(t, now)),
            None => {
                "deleted once its successor is in every output and no running child holds it (plus the grace)"
                    .into()
            }
        };
        say!("  replaced key {} ({}...): {when}", p.id, p.prefix);
    }
    if k.left_to_expire > 0 {
        say!(
            "  {} replaced key(s) left to expire on their own",
            k.left_to_expire
        );
    }
    for o in crate::board::overdue_deletions(k, now) {
        let why = match &o.last_error {
            Some(e) => format!("{} failed attempt(s), last: {e}", o.failures),
            None => "not attempted yet".into(),
        };
        say!(
            "  WARNING: the deletion of replaced key {} ({}...) is overdue by {} ({why})",
            o.id,
            o.prefix,
            short_duration(std::time::Duration::from_secs(o.overdue_seconds.unsigned_abs()))
        );
    }
}

/// The `status` command: 0 if the daemon runs and every credential is fresh.
pub(super) fn command(state_dir: &Path, json: bool) -> ExitCode {
    let p = path(state_dir);
    // Bounded and non-blocking: the state directory may hold anything.
    let text = match crate::fsread::read_bounded(&p, crate::fsread::MAX_CONFIG, "status file") {
        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
        Err(e) => {
            eprintln!("voipbin-tokend: {e} (is the daemon running with this config?)");
            return ExitCode::FAILURE;
        }
    };
    let status: StatusFile = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("voipbin-tokend: {} is not a status file: {e}", p.display());
            return ExitCode::FAILURE;
        }
    };
    let now = crate::now();
    let running = alive(&status);
    let all_fresh = !status.credentials.is_empty() && status.credentials.iter().all(|c| c.is_fresh_at(now));
    if json {
        let creds: Vec<_> = status
            .credentials
            .iter()
            .map(|c| {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                v["state"] = c.state(now).into();
                if let Some(k) = &c.key {
                    v["overdue_deletions"] =
                        serde_json::to_value(crate::board::overdue_deletions(k, now)).unwrap_or_default();
                }
                v
            })
            .collect();
        let mut v = serde_json::json!({
            "daemon_running": running,
            "pid": status.pid,
            "written_at": rfc3339(status.written_at),
            "config": status.config,
            "healthy": running && all_fresh,
            "credentials": creds,
        });
        if let Some(child) = &status.child {
            v["child"] = serde_json::to_value(child).unwrap_or_default();
        }
        say!("{v:#}");
    } else {
        if running {
            say!(
                "daemon: running (pid {}), config {}, status as of {}",
                status.pid,
                status.config.display(),
                ago_or_in(status.written_at, now)
            );
        } else {
            say!(
                "daemon: NOT RUNNING (pid {} is gone or now another process); figures below are from {}",
                status.pid,
                rfc3339(status.written_at)
            );
        }
        if let Some(child) = &status.child {
            say!(
                "child: pid {} ({}), started {}, restarted {} time(s)",
                child.pid,
                child.command,
                ago_or_in(child.started_at, now),
                child.restarts
            );
        }
        say!(
            "{:<20} {:<10} {:<36} {:<14} {:<16} LAST ERROR",
            "CREDENTIAL",
            "STATE",
            "EXPIRES",
            "LAST RENEWAL",
            "NEXT RENEWAL"
        );
        for c in &status.credentials {
            let relative =
                |t: Option<OffsetDateTime>| t.map(|t| ago_or_in(t, now)).unwrap_or_else(|| "-".into());
            let expires = c
                .expires_at
                .map(|t| format!("{} ({})", rfc3339(t), ago_or_in(t, now)))
                .unwrap_or_else(|| "-".into());
            let error = match (&c.last_error, c.failures) {
                (Some(e), n) => format!("{e} ({n} failures)"),
                (None, _) => "-".into(),
            };
            say!(
                "{:<20} {:<10} {:<36} {:<14} {:<16} {}",
                c.name,
                c.state(now),
                expires,
                relative(c.obtained_at),
                relative(c.next_renewal),
                error
            );
            if let Some(k) = &c.key {
                print_key(k, now);
            }
        }
    }
    if running && all_fresh {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
