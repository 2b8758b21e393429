//! What the sources and the credential exchange: the secret held
//! ([`Held`]), a failed attempt ([`Failure`]), what a source may use
//! ([`Ctx`]) and what housekeeping found ([`Housekept`]). The sources
//! import these from here; [`super`] dispatches to them.

use time::OffsetDateTime;

use crate::api::budget::Api;
use crate::config::CredentialConfig;
use crate::metrics::Metrics;
use crate::schedule::FailureKind;
use crate::secret::Secret;
use crate::token::{self, Validity};

/// The secret a credential holds, and when it is due for renewal.
#[derive(Clone)]
pub struct Held {
    /// The login token or the access key.
    pub token: Secret,
    /// In our clock (adjusted for the server's skew when it was obtained).
    pub validity: Validity,
    pub obtained_at: OffsetDateTime,
    pub due_at: OffsetDateTime,
    /// An access key's id (public).
    pub key_id: Option<String>,
    /// Issued by the server in the call that returned it (a login, a key
    /// creation), not found on disk: no file can hold it yet, so its first
    /// write does not read what the outputs hold first.
    pub minted: bool,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("token", &self.token)
            .field("key_id", &self.key_id)
            .field("expires_at", &token::rfc3339(self.validity.expires_at))
            .field("due_at", &token::rfc3339(self.due_at))
            .field("minted", &self.minted)
            .finish()
    }
}

/// A failed attempt, ready for logging and backoff.
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn transient(message: String) -> Failure {
        Failure {
            kind: FailureKind::Transient,
            message,
        }
    }

    /// Refused in a way retrying soon cannot heal (a dead key): retried no
    /// sooner than `retry-max`, logged as an error.
    pub fn rejected(message: String) -> Failure {
        Failure {
            kind: FailureKind::Rejected,
            message,
        }
    }
}

/// What a source may use of its credential.
pub struct Ctx<'a> {
    pub cfg: &'a CredentialConfig,
    pub api: &'a Api,
    pub metrics: &'a Metrics,
    pub state_dir: &'a std::path::Path,
    /// `exec` mode: the keys running children hold.
    pub in_use: &'a crate::export::InUse,
}

/// A uniform sample in [-1, 1] for renewal jitter.
pub fn jitter_sample() -> f64 {
    fastrand::f64() * 2.0 - 1.0
}

/// What housekeeping found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Housekept {
    /// Nothing more to do now.
    Done,
    /// The held secret is gone (deleted out of band): renew at once.
    RenewNow,
    /// A call failed; try again after a backoff.
    Failed,
}
