//! The access-key source: how an access-key credential gets its next key,
//! and the housekeeping around keys (deleting replaced keys after their
//! grace, sweeping orphans).
//!
//! Every step that makes or forgets a key persists the [`KeyState`] before
//! anything else sees the change, so a kill at any moment loses no key:
//!
//! 1. record a random nonce in the state (saved, fsynced), unless the save
//!    that made the current key recorded one for this creation already
//!    (same process, state unchanged since: see `rotate.rs`);
//! 2. `POST` a key named `voipbin-tokend/{credential}/{installation id}`
//!    with the nonce in its `detail`;
//! 3. believe the answer only if it is new and matches: the name asked
//!    for, an id this state does not know, not already expired by the
//!    server's clock; then test it: one `GET /v1.0/accesskeys/{id}`
//!    authenticated WITH THE NEW KEY must answer the name asked for and
//!    the prefix of the secret received;
//! 4. make it current in the state, the replaced key pending deletion (or
//!    left to expire), forget the nonce, record the next creation's, and
//!    save; only then may outputs change.
//!
//! The test comes before the save, so nothing untested reaches the state
//! (which is published as is at the next start). A kill between the answer
//! and the save loses the secret, but the key is then an orphan: it
//! carries this installation's name and a recorded nonce but is neither
//! current nor pending. The sweep (`housekeep.rs`) finds those.
//!
//! Every DELETE goes through `delete_checked` (`housekeep.rs`): it looks
//! the key up first and deletes it only if it is this installation's (its
//! name) or the recorded bootstrap key, and its prefix is the one recorded.
//! Nothing else is ever deleted.
//!
//! Here: [`KeySource`], its fields and the glue the rest shares (loading
//! and saving the state, the held key as a [`crate::source::held::Held`], the
//! agent's login). Beside it, each adding its part of `KeySource`:
//! `restart.rs` (what to hold at start when the outputs hold another key
//! than the state), `rotate.rs` (making the next key; `plausible.rs`:
//! what of the server's answer is believed), `bootstrap.rs` (the key
//! written by hand into `bootstrap-key-file`), `housekeep.rs` (deletions
//! after the grace, the orphan sweep, the held key's lookup, a state file
//! changed by another process).

use std::path::Path;

use time::OffsetDateTime;
use tracing::warn;

use crate::api::keys::prefix_of;
use crate::board::{self, DeletionFailure};
use crate::secret::Secret;
use crate::state::keys::{self as keystate, CurrentKey, KeyState, Origin, StateError};

mod bootstrap;
mod housekeep;
mod plausible;
mod restart;
mod rotate;
#[cfg(test)]
mod tests;

pub use housekeep::{GraceStart, GraceStarted};
pub use plausible::{implausible_skew, plausible_key_times, skew_seconds};

/// No key is created while this installation already has this many live
/// keys of a credential (current, awaiting deletion, left to expire, made
/// but not used, possibly made by a lost answer): a loop that rotates too
/// often stops here instead of filling the account.
pub const MAX_LIVE_KEYS: usize = 5;

/// A key the server made that will not be used (id and public prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusedKey {
    pub id: String,
    pub prefix: String,
}

/// An access-key credential's source: the key state, the agent's login
/// token (agent mode), and what the housekeeping still has to do.
pub struct KeySource {
    cfg: crate::config::AccessKeyConfig,
    state: Option<KeyState>,
    /// The agent login (agent mode), held in memory only.
    login: super::login::LoginSource,
    agent: Option<super::held::Held>,
    /// Bootstrap keys the server refused (401): not tried again.
    rejected: Vec<Secret>,
    /// The held key was refused (401): it was deleted or expired.
    dead: bool,
    sweep_due: bool,
    next_lookup: Option<OffsetDateTime>,
    housekeeping_failures: u32,
    housekeeping_retry_at: Option<OffsetDateTime>,
    /// Keys the server made that will not be used, not yet deleted: nothing
    /// is created until they are.
    discard: Vec<UnusedKey>,
    /// The key the credential holds (and the outputs have) was refused or
    /// found deleted; cleared once a new key is made or a working one kept.
    /// Unlike `dead`, adopting the bootstrap file's key does not clear it:
    /// the outputs still hold the refused key until the next is made.
    held_refused: bool,
    /// Creations whose answer may have been lost since the last successful
    /// sweep: each may have made a live key (counted against the cap).
    maybe_orphans: usize,
    /// Deletions that failed, by key id (shown by `status`, counted in the
    /// overdue metric); forgotten when the key is deleted.
    deletion_failures: Vec<DeletionFailure>,
    /// The nonce of the next creation, recorded on disk by the last one
    /// (see [`rotate::rotate`]); none after a start or when the state was
    /// taken from the file.
    next_nonce: Option<String>,
}

impl KeySource {
    pub fn new(cfg: crate::config::AccessKeyConfig) -> KeySource {
        KeySource {
            cfg,
            state: None,
            login: super::login::LoginSource::default(),
            agent: None,
            rejected: Vec::new(),
            dead: false,
            sweep_due: true,
            next_lookup: None,
            housekeeping_failures: 0,
            housekeeping_retry_at: None,
            discard: Vec::new(),
            maybe_orphans: 0,
            held_refused: false,
            deletion_failures: Vec::new(),
            next_nonce: None,
        }
    }

    fn bootstrap_mode(&self) -> bool {
        self.cfg.bootstrap_key_file.is_some()
    }

    /// Loads the state file, or makes (and saves) a fresh one with a new
    /// installation id before any key is made.
    async fn ensure_state(&mut self, ctx: &super::held::Ctx<'_>) -> Result<(), super::held::Failure> {
        if self.state.is_some() {
            return Ok(());
        }
        let path = keystate::path(ctx.state_dir, &ctx.cfg.name);
        let name = ctx.cfg.name.clone();
        let loaded = tokio::task::spawn_blocking(move || load_where_it_lives(&path, &name))
            .await
            .map_err(|e| super::held::Failure::transient(format!("key state: {e}")))?
            .map_err(|e: StateError| super::held::Failure::transient(format!("key state: {e}")))?;
        self.state = Some(loaded);
        Ok(())
    }

    fn state_path(ctx: &super::held::Ctx<'_>) -> std::path::PathBuf {
        keystate::path(ctx.state_dir, &ctx.cfg.name)
    }

    async fn save(&self, ctx: &super::held::Ctx<'_>) -> Result<(), StateError> {
        self.save_with(ctx, keystate::save).await
    }

    /// [`keystate::save_redoable`]: for a grace started or a deletion done.
    async fn save_redoable(&self, ctx: &super::held::Ctx<'_>) -> Result<(), StateError> {
        self.save_with(ctx, keystate::save_redoable).await
    }

    async fn save_with(
        &self,
        ctx: &super::held::Ctx<'_>,
        save: fn(&Path, &KeyState) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let Some(state) = self.state.clone() else {
            return Ok(());
        };
        let path = Self::state_path(ctx);
        tokio::task::spawn_blocking(move || save(&path, &state))
            .await
            .unwrap_or_else(|e| {
                Err(StateError::Invalid {
                    path: Self::state_path(ctx),
                    reason: format!("the save task failed: {e}"),
                })
            })
    }

    /// The current key of the state as a held secret. A bootstrap key is
    /// due at once: it was made by hand, may live long and lies in a file,
    /// so it is replaced by a key of this installation right away.
    ///
    /// The token plausibility rules apply (see [`Validity::new`]): the
    /// state file may have been edited or restored, so `obtained_at` ahead
    /// of `now` is taken as `now`, and a creation time after `obtained_at`
    /// (beyond clock noise) or after the expiry is not believed: the life
    /// is counted from `obtained_at`. (A skew beyond a day is ignored by
    /// [`CurrentKey::skew`].)
    ///
    /// [`Validity::new`]: crate::token::Validity::new
    fn held_of(
        current: &CurrentKey,
        policy: &crate::config::RenewalPolicy,
        now: OffsetDateTime,
    ) -> super::held::Held {
        if current.server_skew_seconds != 0 && current.skew() == time::Duration::ZERO {
            warn!(
                key_id = %current.id,
                skew_seconds = current.server_skew_seconds,
                "the server clock skew recorded with the key is implausible (over a day); ignoring it"
            );
        }
        let obtained_at = current.obtained_at.min(now);
        let expires_at = current.expires_at();
        let created = current.created_at();
        let iat_ignored =
            created > obtained_at.saturating_add(crate::token::IAT_SKEW_ALLOWANCE) || created >= expires_at;
        // A key's life is what the server said it is: tm_create..tm_expire.
        let validity = crate::token::Validity {
            issued_at: if iat_ignored { obtained_at } else { created },
            expires_at,
            obtained_at,
            iat_ignored,
            expiry_ignored: false,
        };
        if iat_ignored {
            warn!(
                key_id = %current.id,
                tm_create = %crate::token::rfc3339(current.tm_create),
                "the key's creation time is after it was obtained or after its expiry; its life is counted from when it was obtained"
            );
        }
        let due_at = match current.origin {
            Origin::Bootstrap => obtained_at,
            Origin::Created => crate::schedule::due_at(&validity, policy, super::held::jitter_sample()),
        };
        super::held::Held {
            token: current.key.clone(),
            validity,
            obtained_at,
            due_at,
            key_id: Some(current.id.clone()),
            minted: false,
        }
    }

    /// The agent's login token for key calls, logging in when there is
    /// none or it is about to expire.
    async fn agent_token(&mut self, ctx: &super::held::Ctx<'_>) -> Result<Secret, super::held::Failure> {
        let fresh = self
            .agent
            .as_ref()
            .is_some_and(|h| h.validity.expires_at - crate::now() > time::Duration::minutes(1));
        if !fresh {
            let login = ctx
                .cfg
                .login
                .as_ref()
                .ok_or_else(|| super::held::Failure::transient("no agent login configured".into()))?;
            self.agent = Some(self.login.login_as(ctx.api, login, ctx).await?.0);
        }
        Ok(self.agent.as_ref().expect("set above").token.clone())
    }

    /// New settings; a changed agent login logs in anew.
    pub fn reconfigure(&mut self, cfg: crate::config::AccessKeyConfig, login_changed: bool) {
        if cfg.bootstrap_key_file != self.cfg.bootstrap_key_file {
            self.rejected.clear();
        }
        self.cfg = cfg;
        if login_changed {
            self.agent = None;
        }
    }

    pub fn on_renew_request(&mut self) {
        if !self.bootstrap_mode() {
            self.next_lookup = Some(crate::now());
        }
        self.housekeeping_retry_at = None;
    }

    /// The held key was refused (401) or found deleted, and no working
    /// key has replaced it yet: not ready.
    pub fn refused(&self) -> bool {
        self.held_refused
    }

    pub fn status(&self) -> board::KeyStatus {
        let state = self.state.as_ref();
        let current = state.and_then(|s| s.current.as_ref());
        board::KeyStatus {
            key_id: current.map(|c| c.id.clone()),
            key_prefix: current.map(|c| prefix_of(c.key.expose()).to_string()),
            pending_deletions: state.map(|s| s.pending_deletions.clone()).unwrap_or_default(),
            left_to_expire: state.map_or(0, |s| s.left_to_expire.len()),
            deletion_failures: self
                .deletion_failures
                .iter()
                .filter(|f| state.is_some_and(|s| s.pending_deletions.iter().any(|p| p.id == f.id)))
                .cloned()
                .collect(),
        }
    }
}

/// Loads the key state at `path`, or makes (and saves) a fresh one with a
/// new installation id. A state found where it was not written (another
/// machine id, another inode: a cloned VM, a backup restored on a second
/// host, a copied volume) starts a new installation (see
/// [`KeyState::start_over_as_new_installation`]), with a warning naming
/// the file and why; the keys it inherited are never deleted by this one.
/// A state that does not record where it lives yet (an older version
/// wrote it) is stamped with where it is now.
pub fn load_where_it_lives(path: &Path, credential: &str) -> Result<KeyState, StateError> {
    match keystate::load_with_inode(path)? {
        Some((mut state, inode)) => {
            let machine = keystate::machine_id();
            if let Some(why) = keystate::identity_mismatch(&state, machine.as_deref(), inode) {
                let old_id = state.installation_id.clone();
                let dropped = state.pending_deletions.len();
                state.start_over_as_new_installation();
                keystate::save(path, &state)?;
                warn!(
                    state_file = %path.display(),
                    reason = %why,
                    old_installation = %old_id,
                    new_installation = %state.installation_id,
                    dropped_pending_deletions = dropped,
                    "the key state was not written here, so this is a new installation: keys of the old one (the current key included, once replaced) are never deleted by this one but left to expire, since the original host may still use them"
                );
            } else if (state.machine_id.is_none() && machine.is_some()) || state.file_id.0.is_none() {
                state.machine_id = state.machine_id.or(machine);
                keystate::save(path, &state)?;
            }
            Ok(state)
        }
        None => {
            let state = KeyState::new(credential);
            keystate::save(path, &state)?;
            Ok(state)
        }
    }
}
