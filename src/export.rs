//! What a credential hands to `exec` mode, and what it gets back.
//!
//! Each exported credential publishes its secret on a `watch` channel
//! ([`Exported`]) once every output holds it; the supervisor starts and
//! restarts the child from those. Back from the supervisor comes
//! [`InUse`]: the access keys that running children were started with.
//! Such a key is never deleted, and its deletion grace does not start,
//! while a child holds it.

use std::collections::BTreeSet;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::secret::Secret;

/// A credential's current secret, as a child gets it.
#[derive(Clone, PartialEq, Eq)]
pub struct Exported {
    pub secret: Secret,
    pub expires_at: OffsetDateTime,
    /// An access key's id (public): what a child holding it keeps alive.
    pub key_id: Option<String>,
}

impl std::fmt::Debug for Exported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exported")
            .field("secret", &self.secret)
            .field("expires_at", &crate::token::rfc3339(self.expires_at))
            .field("key_id", &self.key_id)
            .finish()
    }
}

/// Where a credential publishes its secret (`None` until it has one).
pub type ExportSender = watch::Sender<Option<Exported>>;

/// The ids of the access keys running children hold; empty outside `exec`.
#[derive(Clone, Default)]
pub struct InUse(Option<watch::Receiver<BTreeSet<String>>>);

impl InUse {
    pub fn new(ids: watch::Receiver<BTreeSet<String>>) -> InUse {
        InUse(Some(ids))
    }

    /// Does a running child hold the key `id`? Read at the moment of the
    /// question, not from a copy: the supervisor records a key before it
    /// starts a child with it.
    pub fn holds(&self, id: &str) -> bool {
        self.0.as_ref().is_some_and(|ids| ids.borrow().contains(id))
    }

    /// Resolves when the set changes (never outside `exec`).
    pub async fn changed(&mut self) {
        match &mut self.0 {
            Some(ids) => {
                if ids.changed().await.is_err() {
                    // The supervisor is gone: nothing is held any more.
                    self.0 = None;
                }
            }
            None => std::future::pending().await,
        }
    }
}
