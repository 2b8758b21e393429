//! The status types the daemon's parts share: what each credential looks
//! like from outside ([`CredentialStatus`], with [`KeyStatus`] for access
//! keys) and the board the credential tasks publish it to
//! ([`StatusBoard`]), read by health, the status file and `once` beside a
//! daemon, and written to `{state dir}/status.json` by [`file`]. No token,
//! no key: only what may be shown.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::state::keys::PendingDeletion;

pub mod file;

/// What a credential looks like from outside: for logs, `status`,
/// readiness. Never holds the token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CredentialStatus {
    pub name: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub obtained_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_renewal: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    pub failures: u32,
    /// Holds an unexpired token and every output has it on disk.
    pub fresh: bool,
    pub renewals_ok: u64,
    pub renewals_failed: u64,
    /// An access key's id, prefix and pending deletions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyStatus>,
    /// The held secret was refused by the server (an access key answered
    /// 401, or found deleted) and nothing working replaced it yet: not
    /// fresh, not ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
}

impl CredentialStatus {
    /// A credential not heard from yet.
    pub fn pending(name: &str) -> CredentialStatus {
        CredentialStatus {
            name: name.to_string(),
            expires_at: None,
            obtained_at: None,
            next_renewal: None,
            last_error: None,
            failures: 0,
            fresh: false,
            renewals_ok: 0,
            renewals_failed: 0,
            key: None,
            refused: false,
        }
    }

    /// Fresh as of `now`: the token may have expired since it was published.
    pub fn is_fresh_at(&self, now: OffsetDateTime) -> bool {
        self.fresh && self.expires_at.is_some_and(|e| e > now)
    }

    /// One word for tables and health bodies.
    pub fn state(&self, now: OffsetDateTime) -> &'static str {
        match self.expires_at {
            None if self.failures > 0 => "failing",
            None => "pending",
            Some(e) if e <= now => "expired",
            Some(_) if self.refused => "refused",
            Some(_) if !self.fresh => "unwritten",
            Some(_) if self.failures > 0 => "retrying",
            Some(_) => "fresh",
        }
    }
}

/// The daemon's view of every credential, updated by their tasks.
#[derive(Debug, Default)]
pub struct StatusBoard {
    inner: Mutex<std::collections::BTreeMap<String, CredentialStatus>>,
    /// `exec` mode: the child, once started.
    child: Mutex<Option<ChildStatus>>,
    changed: tokio::sync::Notify,
}

/// What `status` shows of the `exec` child. Its arguments are not shown
/// (they may be private), only the command's name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChildStatus {
    pub pid: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub restarts: u64,
    pub command: String,
}

impl StatusBoard {
    pub fn publish(&self, status: CredentialStatus) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&status.name) != Some(&status) {
            map.insert(status.name.clone(), status);
            self.changed.notify_waiters();
        }
    }

    /// Adds a credential as pending (so readiness waits for it).
    pub fn register(&self, name: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| CredentialStatus::pending(name));
        self.changed.notify_waiters();
    }

    pub fn remove(&self, name: &str) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.changed.notify_waiters();
    }

    pub fn snapshot(&self) -> Vec<CredentialStatus> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn set_child(&self, child: Option<ChildStatus>) {
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = child;
        self.changed.notify_waiters();
    }

    pub fn child(&self) -> Option<ChildStatus> {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Resolves on the next change after this call (not after its first
    /// poll: take it before looking at the board, so no change is missed).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// What `status` shows of an access-key credential. No secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyStatus {
    pub key_id: Option<String>,
    pub key_prefix: Option<String>,
    pub pending_deletions: Vec<PendingDeletion>,
    pub left_to_expire: usize,
    /// Pending deletions whose last attempt failed, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletion_failures: Vec<DeletionFailure>,
}

/// A replaced key whose deletion failed (and is retried). No secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeletionFailure {
    pub id: String,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// The last error (status, reason, request id; never a key).
    pub error: String,
}

/// A deletion this late without having failed is overdue all the same.
pub const OVERDUE_MARGIN: time::Duration = time::Duration::minutes(5);

/// A pending deletion that is overdue: past its time, and failing or late
/// by more than [`OVERDUE_MARGIN`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OverdueDeletion {
    pub id: String,
    pub prefix: String,
    pub overdue_seconds: i64,
    pub failures: u32,
    pub last_error: Option<String>,
}

/// The overdue deletions of `status` as of `now`.
pub fn overdue_deletions(status: &KeyStatus, now: OffsetDateTime) -> Vec<OverdueDeletion> {
    status
        .pending_deletions
        .iter()
        .filter_map(|p| {
            let at = p.delete_after.filter(|at| *at < now)?;
            let late = now - at;
            let failed = status.deletion_failures.iter().find(|f| f.id == p.id);
            if failed.is_none() && late <= OVERDUE_MARGIN {
                return None;
            }
            Some(OverdueDeletion {
                id: p.id.clone(),
                prefix: p.prefix.clone(),
                overdue_seconds: late.whole_seconds(),
                failures: failed.map_or(0, |f| f.failures),
                last_error: failed.map(|f| f.error.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deletion_is_overdue_once_it_failed_or_is_late_by_the_margin() {
        let now = crate::now();
        let pending = |id: &str, ago: i64| PendingDeletion {
            id: id.into(),
            prefix: "vb_12345678".into(),
            delete_after: Some(now - time::Duration::seconds(ago)),
            bootstrap: false,
        };
        let status = KeyStatus {
            key_id: None,
            key_prefix: None,
            pending_deletions: vec![
                pending("failed", 3),
                pending("late", 301),
                pending("due", 3),
                pending("future", -60),
                PendingDeletion {
                    delete_after: None,
                    ..pending("unpublished", 0)
                },
            ],
            left_to_expire: 0,
            deletion_failures: vec![DeletionFailure {
                id: "failed".into(),
                failures: 2,
                error: "HTTP 500".into(),
            }],
        };
        let overdue = overdue_deletions(&status, now);
        let ids: Vec<&str> = overdue.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["failed", "late"]);
        assert_eq!(overdue[0].failures, 2);
        assert_eq!(overdue[0].last_error.as_deref(), Some("HTTP 500"));
        assert_eq!(overdue[1].overdue_seconds, 301);
    }
}
