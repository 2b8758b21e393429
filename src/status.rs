//! `{state dir}/status.json`, which the daemon keeps current, and the
//! `status` command that reads it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::board::CredentialStatus;
use crate::output::write::{FileSpec, write_atomic};
use crate::token::rfc3339;

/// What the daemon writes. Holds no secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusFile {
    pub pid: u32,
    /// Which process `pid` was: its start time and the boot it started in
    /// (see [`ProcessId`]). A pid is reused once its process is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessId>,
    #[serde(with = "time::serde::rfc3339")]
    pub written_at: OffsetDateTime,
    pub config: PathBuf,
    pub credentials: Vec<CredentialStatus>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

/// Writes the status file atomically, creating the state directory
/// (mode 0700) if needed: unlike output directories, it is ours.
pub fn write(state_dir: &Path, status: &StatusFile) -> Result<(), String> {
    if !state_dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| format!("cannot create state directory {}: {e}", state_dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(status).map_err(|e| e.to_string())?;
    text.push('\n');
    let p = path(state_dir);
    write_atomic(
        &FileSpec {
            path: &p,
            mode: 0o644,
            uid: None,
            gid: None,
        },
        text.as_bytes(),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Reads and parses `{state dir}/status.json` (bounded, non-blocking).
pub fn read(state_dir: &Path) -> Result<StatusFile, String> {
    let p = path(state_dir);
    let text = crate::fsread::read_bounded(&p, crate::fsread::MAX_CONFIG, "status file")
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is not a status file: {e}", p.display()))
}

/// What tells one process from a later one with the same pid: the boot it
/// started in and its start time (clock ticks after boot, field 22 of
/// `/proc/<pid>/stat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub boot_id: String,
    pub start_ticks: u64,
}

impl ProcessId {
    /// This process's identity, or None where /proc cannot tell.
    pub fn of_self() -> Option<ProcessId> {
        ProcessId::of(std::process::id())
    }

    pub fn of(pid: u32) -> Option<ProcessId> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The name (field 2) is in parentheses and may hold spaces or ')'.
        let after_name = &stat[stat.rfind(')')? + 1..];
        let start_ticks = after_name.split_whitespace().nth(19)?.parse().ok()?;
        Some(ProcessId {
            boot_id: boot_id.trim().to_string(),
            start_ticks,
        })
    }
}

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

/// A duration in its two largest units: "5days 14h", not "5days 14h 3m 2s".
pub fn short_duration(d: std::time::Duration) -> String {
    let text = humantime::format_duration(d).to_string();
    text.split(' ').take(2).collect::<Vec<_>>().join(" ")
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
        (Some(id), Some(prefix)) => println!("  key {id} ({prefix}...)"),
        _ => println!("  no key yet"),
    }
    for p in &k.pending_deletions {
        let when = match p.delete_after {
            Some(t) => format!("deleted {}", ago_or_in(t, now)),
            None => "deleted once its successor is in every output (plus the grace)".into(),
        };
        println!("  replaced key {} ({}...): {when}", p.id, p.prefix);
    }
    if k.left_to_expire > 0 {
        println!(
            "  {} replaced key(s) left to expire on their own",
            k.left_to_expire
        );
    }
    for o in crate::board::overdue_deletions(k, now) {
        let why = match &o.last_error {
            Some(e) => format!("{} failed attempt(s), last: {e}", o.failures),
            None => "not attempted yet".into(),
        };
        println!(
            "  WARNING: the deletion of replaced key {} ({}...) is overdue by {} ({why})",
            o.id,
            o.prefix,
            short_duration(std::time::Duration::from_secs(o.overdue_seconds.unsigned_abs()))
        );
    }
}

/// The `status` command: 0 if the daemon runs and every credential is fresh.
pub fn command(state_dir: &Path, json: bool) -> ExitCode {
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
        let v = serde_json::json!({
            "daemon_running": running,
            "pid": status.pid,
            "written_at": rfc3339(status.written_at),
            "config": status.config,
            "healthy": running && all_fresh,
            "credentials": creds,
        });
        println!("{v:#}");
    } else {
        if running {
            println!(
                "daemon: running (pid {}), config {}, status as of {}",
                status.pid,
                status.config.display(),
                ago_or_in(status.written_at, now)
            );
        } else {
            println!(
                "daemon: NOT RUNNING (pid {} is gone or now another process); figures below are from {}",
                status.pid,
                rfc3339(status.written_at)
            );
        }
        println!(
            "{:<20} {:<10} {:<36} {:<14} {:<16} LAST ERROR",
            "CREDENTIAL", "STATE", "EXPIRES", "LAST RENEWAL", "NEXT RENEWAL"
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
            println!(
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
