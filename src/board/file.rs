//! `{state dir}/status.json`, which the daemon keeps current and the
//! `status` command reads.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::CredentialStatus;
use crate::output::write::write_report;

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
    /// `exec` mode: the child (absent before it first started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<super::ChildStatus>,
    /// The local API proxies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<super::ProxyStatus>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

/// Writes the status file atomically, creating the state directory
/// (mode 0700) if needed: unlike output directories, it is ours.
pub fn write(state_dir: &Path, status: &StatusFile) -> Result<(), String> {
    // A report of this process, rewritten at every change and every
    // start: atomic for its readers, but not worth an fsync.
    write_report(&path(state_dir), 0o644, status)
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

/// A duration in its two largest units: "5days 14h", not "5days 14h 3m 2s".
pub fn short_duration(d: std::time::Duration) -> String {
    let text = humantime::format_duration(d).to_string();
    text.split(' ').take(2).collect::<Vec<_>>().join(" ")
}
