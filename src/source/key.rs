//! The access-key source: how an access-key credential gets its next key,
//! and the housekeeping around keys (deleting replaced keys after their
//! grace, sweeping orphans).
//!
//! Every step that makes or forgets a key persists the [`KeyState`] before
//! anything else sees the change, so a kill at any moment loses no key:
//!
//! 1. `POST` a key named `voipbin-tokend/{credential}/{installation id}`;
//! 2. validate it (shape, prefix, not already expired by the server's clock);
//! 3. make it current in the state, the replaced key pending deletion (or
//!    left to expire), and save the state; only then may outputs change.
//!
//! A key the server made but whose answer was lost (or could not be saved)
//! is an orphan: it carries this installation's name but is neither current
//! nor pending. [`orphans`] finds those; nothing else is ever deleted.

use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;
use tracing::{info, warn};

use crate::keyapi::{Created, Deleted, KeyAuth, KeyClient, KeyError, KeyObject, prefix_of};
use crate::keystate::{self, CurrentKey, KeyState, LeftToExpire, Origin, PendingDeletion, StateError};
use crate::secret::Secret;

/// Server clock offsets below this are Date-header noise and ignored.
const SKEW_IGNORED: time::Duration = time::Duration::seconds(5);

/// What `rotate` may fail with.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Api(#[from] KeyError),
    #[error("the server answered with a key that is already expired (tm_expire {0})")]
    Expired(String),
    #[error("the new key could not be saved, so it was not used: {0}")]
    Persist(#[source] StateError),
}

/// Why a bootstrap key could not be adopted.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Api(#[from] KeyError),
    #[error("no key with the bootstrap key's prefix {0} is listed by the server")]
    NotListed(String),
    #[error("the bootstrap key (prefix {0}) is expired")]
    Expired(String),
}

/// How far from the moment its answer arrived (in the server's clock) a
/// new key's `tm_create` may lie: the request's duration and the `Date`
/// header's one-second resolution. Beyond, it is not believed.
const CREATE_SLACK: time::Duration = time::Duration::minutes(5);

/// The skew to apply, from a `Date`-header estimate: small ones are noise;
/// one beyond [`crate::token::MAX_SKEW`] is not believed (taken as zero;
/// see [`implausible_skew`]).
pub fn skew_seconds(server_skew: Option<time::Duration>) -> i64 {
    server_skew
        .filter(|s| s.abs() > SKEW_IGNORED)
        .and_then(crate::token::believable_skew)
        .map_or(0, |s| s.whole_seconds())
}

/// True when the `Date`-header estimate is beyond belief (and ignored).
pub fn implausible_skew(server_skew: Option<time::Duration>) -> bool {
    server_skew.is_some_and(|s| crate::token::believable_skew(s).is_none())
}

/// Makes a new key's stated times believable, in the server's clock:
/// a `tm_create` further than [`CREATE_SLACK`] from when the answer
/// arrived is taken as that moment, and a life longer than `asked` (plus a
/// minute) is cut to `asked`. Saturating throughout (a server may say
/// 9999). Returns which of the two were not believed.
pub fn plausible_key_times(
    object: &mut KeyObject,
    received_at: OffsetDateTime,
    skew_seconds: i64,
    asked: time::Duration,
) -> (bool, bool) {
    let received = received_at.saturating_add(time::Duration::seconds(skew_seconds));
    let create_ignored = object.tm_create > received.saturating_add(CREATE_SLACK)
        || object.tm_create < received.saturating_sub(CREATE_SLACK);
    if create_ignored {
        object.tm_create = received;
    }
    let expiry_cut = object.tm_expire - object.tm_create > asked + time::Duration::minutes(1);
    if expiry_cut {
        object.tm_expire = object.tm_create.saturating_add(asked);
    }
    (create_ignored, expiry_cut)
}

/// Looks up the bootstrap key by its prefix (the server keeps only a hash,
/// so the list is the only way to learn its id and expiry), authenticating
/// with the key itself: a 401 means it is dead.
pub async fn adopt_bootstrap(
    client: &KeyClient<'_>,
    key: Secret,
    now: OffsetDateTime,
) -> Result<CurrentKey, BootstrapError> {
    let listed = client.list(KeyAuth::Key(&key)).await?;
    let prefix = prefix_of(key.expose()).to_string();
    // Newest first; the prefix has 8 random characters, so a clash is
    // unlikely, and then the newest live one is taken.
    let object = listed
        .into_iter()
        .find(|k| k.token_prefix == prefix && k.tm_delete.is_none())
        .ok_or_else(|| BootstrapError::NotListed(prefix.clone()))?;
    // The list succeeded with this key, so the server's clock says it is
    // live; its tm_expire is in the server's clock, and a list carries no
    // skew estimate, so it is used as is.
    if object.tm_expire <= now {
        return Err(BootstrapError::Expired(prefix));
    }
    Ok(CurrentKey {
        id: object.id,
        key,
        tm_create: object.tm_create,
        tm_expire: object.tm_expire,
        server_skew_seconds: 0,
        obtained_at: now,
        origin: Origin::Bootstrap,
    })
}

/// Makes the next key and persists it as current. The replaced key (if
/// any) becomes a pending deletion without a time yet (`delete_after` is
/// set by [`start_grace`] once every output holds the successor), or, with
/// `delete_replaced = false`, a key left to expire.
///
/// On success the state on disk already holds the new key: the caller may
/// publish it. On failure the state is unchanged (a key the server made
/// but that could not be saved is an orphan for the next sweep).
#[allow(clippy::too_many_arguments)]
pub async fn rotate(
    client: &KeyClient<'_>,
    auth: KeyAuth<'_>,
    state: &mut KeyState,
    state_path: &Path,
    lifetime: Duration,
    delete_replaced: bool,
    now: impl Fn() -> OffsetDateTime,
) -> Result<Created, RotateError> {
    let detail = "managed by voipbin-tokend; rotated automatically";
    let created = client
        .create(auth, &state.key_name(), detail, lifetime.as_secs())
        .await?;
    let skew = skew_seconds(created.server_skew);
    if implausible_skew(created.server_skew) {
        warn!(
            key_id = %created.object.id,
            skew_seconds = created.server_skew.map_or(0, |s| s.whole_seconds()),
            "the server's Date header is implausibly far from our clock (over a day); ignoring it and judging the key by our clock"
        );
    }
    let mut created = created;
    // A server that claims a creation time far from now, or a longer life
    // than was asked for, is not believed: the key is treated as made now
    // and living what was asked.
    let asked = time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(3650));
    let stated = (created.object.tm_create, created.object.tm_expire);
    let (create_ignored, expiry_cut) =
        plausible_key_times(&mut created.object, created.received_at, skew, asked);
    if create_ignored {
        warn!(
            key_id = %created.object.id,
            tm_create = %crate::token::rfc3339(stated.0),
            "the server answered a key creation time far from now; counting the key's life from when it was received"
        );
    }
    if expiry_cut {
        warn!(
            key_id = %created.object.id,
            tm_expire = %crate::token::rfc3339(stated.1),
            "the server answered a longer key life than was asked for; using the lifetime asked"
        );
    }
    let expires_here = created
        .object
        .tm_expire
        .saturating_sub(time::Duration::seconds(skew));
    if expires_here <= now() {
        return Err(RotateError::Expired(crate::token::rfc3339(
            created.object.tm_expire,
        )));
    }
    let mut next = state.clone();
    let replaced = next.current.replace(CurrentKey {
        id: created.object.id.clone(),
        key: created.key.clone(),
        tm_create: created.object.tm_create,
        tm_expire: created.object.tm_expire,
        server_skew_seconds: skew,
        obtained_at: created.received_at,
        origin: Origin::Created,
    });
    if let Some(old) = replaced {
        let prefix = prefix_of(old.key.expose()).to_string();
        if delete_replaced {
            next.pending_deletions.push(PendingDeletion {
                id: old.id,
                prefix,
                delete_after: None,
            });
        } else {
            next.left_to_expire.push(LeftToExpire {
                id: old.id,
                prefix,
                tm_expire: old.tm_expire,
            });
        }
    }
    let saved = {
        let (path, next) = (state_path.to_path_buf(), next.clone());
        tokio::task::spawn_blocking(move || keystate::save(&path, &next))
            .await
            .unwrap_or_else(|e| {
                Err(StateError::Invalid {
                    path: state_path.to_path_buf(),
                    reason: format!("the save task failed: {e}"),
                })
            })
    };
    if let Err(e) = saved {
        return Err(RotateError::Persist(e));
    }
    *state = next;
    Ok(created)
}

/// Starts the grace of every pending deletion that has none yet: called
/// once every output holds the current key. True if anything changed
/// (the caller saves the state).
pub fn start_grace(state: &mut KeyState, grace: Duration, now: OffsetDateTime) -> bool {
    let at = crate::schedule::after(now, grace);
    let mut changed = false;
    for p in &mut state.pending_deletions {
        if p.delete_after.is_none() {
            p.delete_after = Some(at);
            changed = true;
        }
    }
    changed
}

/// The pending deletions whose grace is over.
pub fn due_deletions(state: &KeyState, now: OffsetDateTime) -> Vec<PendingDeletion> {
    state
        .pending_deletions
        .iter()
        .filter(|p| p.delete_after.is_some_and(|at| at <= now))
        .cloned()
        .collect()
}

/// When the next pending deletion falls due, if one has a time.
pub fn next_deletion(state: &KeyState) -> Option<OffsetDateTime> {
    state
        .pending_deletions
        .iter()
        .filter_map(|p| p.delete_after)
        .min()
}

/// Deletes one replaced key; 404 and 409 count as done. On success the
/// caller removes it from the state and saves.
pub async fn delete(
    client: &KeyClient<'_>,
    auth: KeyAuth<'_>,
    p: &PendingDeletion,
) -> Result<Deleted, KeyError> {
    let result = client.delete(auth, &p.id).await;
    match &result {
        Ok(Deleted::Now) => info!(key_id = %p.id, prefix = %p.prefix, "replaced key deleted"),
        Ok(Deleted::AlreadyGone) => {
            info!(key_id = %p.id, prefix = %p.prefix, "replaced key was already gone")
        }
        Err(e) => {
            warn!(key_id = %p.id, prefix = %p.prefix, error = %e, "cannot delete the replaced key; will retry")
        }
    }
    result
}

/// Keys named exactly as this installation names its keys that the state
/// does not know, not deleted and not expired (expired keys are left alone:
/// they can do no harm and the server keeps them anyway).
pub fn orphans(state: &KeyState, listed: &[KeyObject], now: OffsetDateTime) -> Vec<KeyObject> {
    let name = state.key_name();
    listed
        .iter()
        .filter(|k| k.name == name)
        .filter(|k| k.tm_delete.is_none() && k.tm_expire > now)
        .filter(|k| !state.known_ids().any(|id| id == k.id))
        .cloned()
        .collect()
}

/// Lists the keys and deletes this installation's orphans. Returns how many
/// were deleted; stops at the first failure (the next sweep retries).
pub async fn sweep(
    client: &KeyClient<'_>,
    auth: KeyAuth<'_>,
    state: &KeyState,
    now: OffsetDateTime,
) -> Result<usize, KeyError> {
    let listed = client.list(auth).await?;
    let mut deleted = 0;
    for orphan in orphans(state, &listed, now) {
        client.delete(auth, &orphan.id).await?;
        info!(key_id = %orphan.id, prefix = %orphan.token_prefix, "deleted an orphaned key of this installation");
        deleted += 1;
    }
    Ok(deleted)
}

// ---------------------------------------------------------------------------
// The source a credential drives.

/// A bootstrap key file is a key and a newline; anything larger is refused.
pub const MAX_BOOTSTRAP_BYTES: u64 = 4096;

/// What `status` shows of an access-key credential. No secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyStatus {
    pub key_id: Option<String>,
    pub key_prefix: Option<String>,
    pub pending_deletions: Vec<PendingDeletion>,
    pub left_to_expire: usize,
}

/// An access-key credential's source: the key state, the agent's login
/// token (agent mode), and what the housekeeping still has to do.
pub struct KeySource {
    cfg: crate::config::AccessKeyConfig,
    state: Option<KeyState>,
    /// The agent login (agent mode), held in memory only.
    login: super::login::LoginSource,
    agent: Option<super::Held>,
    /// Bootstrap keys the server refused (401): not tried again.
    rejected: Vec<Secret>,
    /// The held key was refused (401): it was deleted or expired.
    dead: bool,
    sweep_due: bool,
    next_lookup: Option<OffsetDateTime>,
    housekeeping_failures: u32,
    housekeeping_retry_at: Option<OffsetDateTime>,
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
        }
    }

    fn bootstrap_mode(&self) -> bool {
        self.cfg.bootstrap_key_file.is_some()
    }

    /// Loads the state file, or makes (and saves) a fresh one with a new
    /// installation id before any key is made.
    async fn ensure_state(&mut self, ctx: &super::Ctx<'_>) -> Result<(), super::Failure> {
        if self.state.is_some() {
            return Ok(());
        }
        let path = keystate::path(ctx.state_dir, &ctx.cfg.name);
        let name = ctx.cfg.name.clone();
        let loaded = tokio::task::spawn_blocking(move || match keystate::load(&path)? {
            Some(state) => Ok(state),
            None => {
                let state = KeyState::new(&name);
                keystate::save(&path, &state)?;
                Ok(state)
            }
        })
        .await
        .map_err(|e| super::Failure::transient(format!("key state: {e}")))?
        .map_err(|e: StateError| super::Failure::transient(format!("key state: {e}")))?;
        self.state = Some(loaded);
        Ok(())
    }

    fn state_path(ctx: &super::Ctx<'_>) -> std::path::PathBuf {
        keystate::path(ctx.state_dir, &ctx.cfg.name)
    }

    async fn save(&self, ctx: &super::Ctx<'_>) -> Result<(), StateError> {
        let Some(state) = self.state.clone() else {
            return Ok(());
        };
        let path = Self::state_path(ctx);
        tokio::task::spawn_blocking(move || keystate::save(&path, &state))
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
    ) -> super::Held {
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
            Origin::Created => crate::schedule::due_at(&validity, policy, super::jitter_sample()),
        };
        super::Held {
            token: current.key.clone(),
            validity,
            obtained_at,
            due_at,
            key_id: Some(current.id.clone()),
        }
    }

    /// At start: the current key of the state, if it is still live.
    pub async fn adopt(
        &mut self,
        ctx: &super::Ctx<'_>,
        now: OffsetDateTime,
    ) -> Result<Option<super::Held>, super::Failure> {
        self.ensure_state(ctx).await?;
        let state = self.state.as_ref().expect("loaded above");
        match &state.current {
            Some(current) if current.expires_at() > now => {
                let held = Self::held_of(current, &ctx.cfg.renewal, now);
                info!(
                    key_id = %current.id,
                    prefix = %prefix_of(current.key.expose()),
                    expires_at = %crate::token::rfc3339(held.validity.expires_at),
                    next_rotation = %crate::token::rfc3339(held.due_at),
                    "reusing the key in the key state"
                );
                Ok(Some(held))
            }
            Some(current) => {
                warn!(key_id = %current.id, "the key in the key state has expired; a new one is needed");
                self.dead = true;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// The agent's login token for key calls, logging in when there is
    /// none or it is about to expire.
    async fn agent_token(&mut self, ctx: &super::Ctx<'_>) -> Result<Secret, super::Failure> {
        let fresh = self
            .agent
            .as_ref()
            .is_some_and(|h| h.validity.expires_at - crate::now() > time::Duration::minutes(1));
        if !fresh {
            let login = ctx
                .cfg
                .login
                .as_ref()
                .ok_or_else(|| super::Failure::transient("no agent login configured".into()))?;
            self.agent = Some(self.login.login_as(ctx.api, login, ctx).await?.0);
        }
        Ok(self.agent.as_ref().expect("set above").token.clone())
    }

    /// Reads `bootstrap-key-file` (without blocking on a FIFO, at most
    /// [`MAX_BOOTSTRAP_BYTES`]) and looks the key up; a key refused before
    /// is not tried again. The adopted key becomes current (saved).
    async fn adopt_bootstrap_file(&mut self, ctx: &super::Ctx<'_>) -> Result<Secret, super::Failure> {
        let path = self.cfg.bootstrap_key_file.clone().expect("bootstrap mode");
        let shown = path.display().to_string();
        let key = tokio::task::spawn_blocking(move || read_key_file(&path))
            .await
            .map_err(|e| super::Failure::transient(format!("bootstrap-key-file {shown}: {e}")))?
            .map_err(super::Failure::transient)?;
        if self.rejected.contains(&key) {
            return Err(super::Failure::rejected(format!(
                "the key in bootstrap-key-file {shown} (prefix {}) was refused by the server; write a fresh key made on the admin page into it",
                prefix_of(key.expose())
            )));
        }
        let client = KeyClient::new(&ctx.api.client);
        match adopt_bootstrap(&client, key.clone(), crate::now()).await {
            Ok(current) => {
                info!(key_id = %current.id, prefix = %prefix_of(current.key.expose()), "adopted the key in bootstrap-key-file");
                let state = self.state.as_mut().expect("loaded");
                // A key written back into the file while it waited for
                // deletion is current again, not deleted.
                state.pending_deletions.retain(|p| p.id != current.id);
                if let Some(old) = state.current.replace(current)
                    && self.cfg.delete_replaced
                {
                    // A dead key: deleting it confirms it is gone (404/409).
                    state.pending_deletions.push(PendingDeletion {
                        prefix: prefix_of(old.key.expose()).to_string(),
                        id: old.id,
                        delete_after: Some(crate::now()),
                    });
                }
                self.save(ctx)
                    .await
                    .map_err(|e| super::Failure::transient(format!("key state: {e}")))?;
                self.dead = false;
                Ok(key)
            }
            Err(BootstrapError::Api(KeyError::Unauthorized { request_id })) => {
                self.rejected.push(key.clone());
                Err(super::Failure::rejected(format!(
                    "the key in bootstrap-key-file {shown} (prefix {}) was refused (HTTP 401: deleted or expired); write a fresh key made on the admin page into it{}",
                    prefix_of(key.expose()),
                    crate::api::rid(&request_id)
                )))
            }
            Err(BootstrapError::Api(e)) => Err(super::Failure {
                kind: e.kind(),
                message: format!("looking up the bootstrap key: {e}"),
            }),
            Err(e) => Err(super::Failure::transient(format!(
                "bootstrap-key-file {shown}: {e}"
            ))),
        }
    }

    /// Creates the next key (see [`rotate`]); the state on disk holds it
    /// when this returns Ok.
    pub async fn rotate(
        &mut self,
        ctx: &super::Ctx<'_>,
        _held: Option<&super::Held>,
    ) -> Result<super::Held, super::Failure> {
        self.ensure_state(ctx).await?;
        let now = crate::now();
        let auth_secret = if self.bootstrap_mode() {
            let usable = self
                .state
                .as_ref()
                .and_then(|s| s.current.as_ref())
                .filter(|c| !self.dead && c.expires_at() > now)
                .map(|c| c.key.clone());
            match usable {
                Some(k) => k,
                None => self.adopt_bootstrap_file(ctx).await?,
            }
        } else {
            self.agent_token(ctx).await?
        };
        let bootstrap = self.bootstrap_mode();
        match self.create_with(ctx, &auth_secret).await {
            Err(RotateError::Api(KeyError::Unauthorized { .. })) if !bootstrap => {
                // A stale login token: log in again, once, at once.
                self.agent = None;
                let token = self.agent_token(ctx).await?;
                let result = self.create_with(ctx, &token).await;
                self.outcome(ctx, result)
            }
            result => self.outcome(ctx, result),
        }
    }

    /// One creation, authenticated with `secret` (a key, or the agent's token).
    async fn create_with(&mut self, ctx: &super::Ctx<'_>, secret: &Secret) -> Result<Created, RotateError> {
        let auth = if self.bootstrap_mode() {
            KeyAuth::Key(secret)
        } else {
            KeyAuth::Bearer(secret)
        };
        let client = KeyClient::new(&ctx.api.client);
        let path = Self::state_path(ctx);
        let state = self.state.as_mut().expect("loaded");
        rotate(
            &client,
            auth,
            state,
            &path,
            self.cfg.lifetime,
            self.cfg.delete_replaced,
            crate::now,
        )
        .await
    }

    /// A creation's result as the credential sees it.
    fn outcome(
        &mut self,
        ctx: &super::Ctx<'_>,
        result: Result<Created, RotateError>,
    ) -> Result<super::Held, super::Failure> {
        match result {
            Ok(created) => {
                let current = self
                    .state
                    .as_ref()
                    .and_then(|s| s.current.as_ref())
                    .expect("rotate sets it");
                info!(
                    key_id = %created.object.id,
                    prefix = %prefix_of(created.key.expose()),
                    expires_at = %crate::token::rfc3339(current.expires_at()),
                    "new access key created and saved"
                );
                Ok(Self::held_of(current, &ctx.cfg.renewal, crate::now()))
            }
            Err(RotateError::Api(KeyError::Unauthorized { request_id })) => {
                if self.bootstrap_mode() {
                    self.dead = true;
                    Err(super::Failure::rejected(format!(
                        "the held key was refused (HTTP 401: deleted or expired); write a fresh key made on the admin page into bootstrap-key-file {}{}",
                        self.cfg
                            .bootstrap_key_file
                            .as_ref()
                            .expect("bootstrap mode")
                            .display(),
                        crate::api::rid(&request_id)
                    )))
                } else {
                    self.agent = None;
                    Err(super::Failure::transient(format!(
                        "the agent's login token was refused (HTTP 401){}",
                        crate::api::rid(&request_id)
                    )))
                }
            }
            Err(RotateError::Api(e)) => {
                // The request may have reached the server and made a key
                // whose answer we never saw: sweep for orphans.
                if !matches!(e, KeyError::BadRequest { .. } | KeyError::Forbidden { .. }) {
                    self.sweep_due = true;
                }
                Err(super::Failure {
                    kind: e.kind(),
                    message: format!("creating the next key: {e}"),
                })
            }
            Err(e) => {
                self.sweep_due = true;
                Err(super::Failure::transient(format!("creating the next key: {e}")))
            }
        }
    }

    /// Every output holds the current key: the grace of replaced keys starts.
    pub async fn published(&mut self, ctx: &super::Ctx<'_>, now: OffsetDateTime) {
        let Some(state) = self.state.as_mut() else { return };
        if start_grace(state, self.cfg.grace, now) {
            if let Err(e) = self.save(ctx).await {
                warn!(error = %e, "cannot save the key state; the replaced key's deletion may be late");
            }
            if let Some(at) = self.state.as_ref().and_then(next_deletion) {
                info!(delete_at = %crate::token::rfc3339(at), "the replaced key will be deleted after the grace");
            }
        }
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

    /// When housekeeping is next due: a sweep, a deletion, a lookup.
    pub fn housekeeping_at(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let state = self.state.as_ref()?;
        state.current.as_ref()?;
        let candidates = [
            self.sweep_due.then_some(now),
            next_deletion(state),
            if self.bootstrap_mode() {
                None
            } else {
                Some(self.next_lookup.unwrap_or(now))
            },
        ];
        let at = candidates.into_iter().flatten().min()?;
        Some(match self.housekeeping_retry_at {
            Some(retry) => at.max(retry),
            None => at,
        })
    }

    /// Sweep, delete what is due, look the held key up (agent mode).
    pub async fn housekeep(
        &mut self,
        ctx: &super::Ctx<'_>,
        _held: Option<&super::Held>,
        now: OffsetDateTime,
    ) -> super::Housekept {
        let outcome = self.housekeep_once(ctx, now).await;
        match &outcome {
            Ok(_) => {
                self.housekeeping_failures = 0;
                self.housekeeping_retry_at = None;
            }
            Err(kind) => {
                self.housekeeping_failures = self.housekeeping_failures.saturating_add(1);
                let delay = crate::schedule::backoff(
                    self.housekeeping_failures,
                    *kind,
                    &ctx.cfg.renewal,
                    fastrand::f64(),
                );
                self.housekeeping_retry_at = Some(crate::schedule::after(crate::now(), delay));
            }
        }
        outcome.unwrap_or(super::Housekept::Failed)
    }

    async fn housekeep_once(
        &mut self,
        ctx: &super::Ctx<'_>,
        now: OffsetDateTime,
    ) -> Result<super::Housekept, crate::schedule::FailureKind> {
        let secret = if self.bootstrap_mode() {
            match self.state.as_ref().and_then(|s| s.current.as_ref()) {
                Some(c) if !self.dead => c.key.clone(),
                _ => return Ok(super::Housekept::Done),
            }
        } else {
            match self.agent_token(ctx).await {
                Ok(t) => t,
                Err(f) => {
                    warn!(error = %f.message, "cannot log in for key housekeeping");
                    return Err(f.kind);
                }
            }
        };
        let auth = if self.bootstrap_mode() {
            KeyAuth::Key(&secret)
        } else {
            KeyAuth::Bearer(&secret)
        };
        let client = KeyClient::new(&ctx.api.client);
        let fail = |this: &mut KeySource, e: &KeyError| {
            if matches!(e, KeyError::Unauthorized { .. }) {
                if this.bootstrap_mode() {
                    this.dead = true;
                } else {
                    this.agent = None;
                }
            }
            e.kind()
        };

        // Look the held key up (agent mode): deleted out of band?
        if !self.bootstrap_mode() && self.next_lookup.is_none_or(|t| t <= now) {
            let id = self
                .state
                .as_ref()
                .and_then(|s| s.current.as_ref())
                .map(|c| c.id.clone());
            if let Some(id) = id {
                match client.get(auth, &id).await {
                    Ok(_) => self.next_lookup = Some(crate::schedule::after(now, self.cfg.lookup_every)),
                    Err(KeyError::NotFound { .. } | KeyError::Gone { .. }) => {
                        warn!(key_id = %id, "the held key was deleted out of band; making a new one now");
                        self.next_lookup = Some(crate::schedule::after(now, self.cfg.lookup_every));
                        return Ok(super::Housekept::RenewNow);
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot look the held key up");
                        return Err(fail(self, &e));
                    }
                }
            }
        }

        if self.sweep_due {
            let state = self.state.as_ref().expect("loaded");
            match sweep(&client, auth, state, now).await {
                Ok(n) => {
                    for _ in 0..n {
                        ctx.metrics.key_deleted(&ctx.cfg.name, "success");
                    }
                    self.sweep_due = false;
                }
                Err(e) => {
                    warn!(error = %e, "cannot sweep for orphaned keys; will retry");
                    return Err(fail(self, &e));
                }
            }
        }

        let due = due_deletions(self.state.as_ref().expect("loaded"), now);
        let mut result = Ok(super::Housekept::Done);
        for p in due {
            match delete(&client, auth, &p).await {
                Ok(outcome) => {
                    let label = if outcome == Deleted::Now {
                        "success"
                    } else {
                        "already_gone"
                    };
                    ctx.metrics.key_deleted(&ctx.cfg.name, label);
                    let state = self.state.as_mut().expect("loaded");
                    state.pending_deletions.retain(|q| q.id != p.id);
                    if let Err(e) = self.save(ctx).await {
                        warn!(error = %e, "cannot save the key state after a deletion");
                    }
                }
                Err(e) => {
                    ctx.metrics.key_deleted(&ctx.cfg.name, "failure");
                    result = Err(fail(self, &e));
                    break;
                }
            }
        }
        // Keys left to expire are forgotten once expired.
        if let Some(state) = self.state.as_mut() {
            let before = state.left_to_expire.len();
            state.left_to_expire.retain(|l| l.tm_expire > now);
            if state.left_to_expire.len() != before
                && let Err(e) = self.save(ctx).await
            {
                warn!(error = %e, "cannot save the key state");
            }
        }
        result
    }

    pub fn status(&self) -> KeyStatus {
        let state = self.state.as_ref();
        let current = state.and_then(|s| s.current.as_ref());
        KeyStatus {
            key_id: current.map(|c| c.id.clone()),
            key_prefix: current.map(|c| prefix_of(c.key.expose()).to_string()),
            pending_deletions: state.map(|s| s.pending_deletions.clone()).unwrap_or_default(),
            left_to_expire: state.map_or(0, |s| s.left_to_expire.len()),
        }
    }
}

/// Reads a key file: no blocking on a FIFO, a regular file of at most
/// [`MAX_BOOTSTRAP_BYTES`], one key with surrounding whitespace. Errors
/// name the file as `bootstrap-key-file`.
fn read_key_file(path: &Path) -> Result<Secret, String> {
    let bytes = crate::fsread::read_bounded(path, MAX_BOOTSTRAP_BYTES, "bootstrap-key-file")
        .map_err(|e| e.to_string())?;
    let named = |m: &str| format!("bootstrap-key-file {} {m}", path.display());
    let text = std::str::from_utf8(&bytes).map_err(|_| named("is not text"))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(named("is empty"));
    }
    if !crate::keyapi::is_key_shaped(key) {
        return Err(named("does not hold a key (vb_ and 32 letters or digits)"));
    }
    Ok(Secret::new(key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiClient;
    use crate::standin::{Fault, StandIn, StandInOptions};

    /// A stand-in with a bootstrap key (1 day), a client for it, and where
    /// the key state goes.
    struct Fixture {
        server: StandIn,
        api: ApiClient,
        dir: tempfile::TempDir,
        boot_id: String,
        boot: Secret,
    }

    impl Fixture {
        fn new() -> Fixture {
            let server = StandIn::start(StandInOptions::default()).unwrap();
            let api = crate::api::for_standin(&server);
            let (boot_id, boot) = server.create_key("admin page", 86_400);
            Fixture {
                server,
                api,
                dir: tempfile::tempdir().unwrap(),
                boot_id,
                boot: Secret::new(boot),
            }
        }

        fn client(&self) -> KeyClient<'_> {
            KeyClient::new(&self.api)
        }

        fn path(&self) -> std::path::PathBuf {
            keystate::path(self.dir.path(), "mcp")
        }

        /// A fresh state whose current key is the bootstrap key.
        async fn bootstrapped(&self) -> KeyState {
            let mut state = KeyState::new("mcp");
            let current = adopt_bootstrap(&self.client(), self.boot.clone(), crate::now()).await;
            state.current = Some(current.unwrap());
            state
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[tokio::test]
    async fn bootstrap_then_rotate_persists_before_returning_and_queues_the_old_key() {
        let f = Fixture::new();
        let (client, path) = (f.client(), f.path());
        let mut state = f.bootstrapped().await;
        assert_eq!(state.current.as_ref().unwrap().id, f.boot_id);

        let auth_key = state.current.as_ref().unwrap().key.clone();
        let created = rotate(
            &client,
            KeyAuth::Key(&auth_key),
            &mut state,
            &path,
            DAY,
            true,
            crate::now,
        )
        .await
        .unwrap();
        let on_disk = keystate::load(&path).unwrap().unwrap();
        assert_eq!(on_disk, state);
        assert_eq!(on_disk.current.as_ref().unwrap().key, created.key);
        assert_eq!(on_disk.pending_deletions.len(), 1);
        assert_eq!(on_disk.pending_deletions[0].id, f.boot_id);
        assert_eq!(
            on_disk.pending_deletions[0].delete_after, None,
            "grace starts once published"
        );
        let names: Vec<String> = f.server.keys().into_iter().map(|k| k.name).collect();
        assert!(names.contains(&state.key_name()));

        // Grace, then the deletion falls due and is done.
        let now = crate::now();
        assert!(start_grace(&mut state, Duration::from_secs(60), now));
        assert!(due_deletions(&state, now).is_empty());
        let due = due_deletions(&state, now + time::Duration::minutes(2));
        assert_eq!(due.len(), 1);
        let current = state.current.as_ref().unwrap().key.clone();
        assert_eq!(
            delete(&client, KeyAuth::Key(&current), &due[0]).await.unwrap(),
            Deleted::Now
        );
        assert_eq!(
            delete(&client, KeyAuth::Key(&current), &due[0]).await.unwrap(),
            Deleted::AlreadyGone
        );
        assert!(
            f.server
                .keys()
                .iter()
                .any(|k| k.id == f.boot_id && k.tm_delete.is_some())
        );
    }

    #[tokio::test]
    async fn a_lost_answer_leaves_an_orphan_that_the_sweep_deletes_and_nothing_else() {
        let f = Fixture::new();
        let (client, path) = (f.client(), f.path());
        let mut state = f.bootstrapped().await;
        let key = state.current.as_ref().unwrap().key.clone();
        // Another installation's key with the same credential name, and a
        // key someone made by hand: neither may be touched.
        let other = KeyState::new("mcp");
        f.server.create_key(&other.key_name(), 86_400);
        f.server.create_key("hand made", 86_400);

        f.server.script_keys([Fault::Close]);
        let before = state.clone();
        assert!(
            rotate(
                &client,
                KeyAuth::Key(&key),
                &mut state,
                &path,
                DAY,
                true,
                crate::now
            )
            .await
            .is_err()
        );
        assert_eq!(state, before, "a failed rotation changes nothing");
        assert!(keystate::load(&path).unwrap().is_none());

        let deleted = sweep(&client, KeyAuth::Key(&key), &state, crate::now())
            .await
            .unwrap();
        assert_eq!(deleted, 1);
        let keys = f.server.keys();
        let live: Vec<&str> = keys
            .iter()
            .filter(|k| k.tm_delete.is_none())
            .map(|k| k.name.as_str())
            .collect();
        assert_eq!(live.len(), 3, "{live:?}");
        assert!(live.contains(&other.key_name().as_str()) && live.contains(&"hand made"));
        assert!(!live.contains(&state.key_name().as_str()));
    }

    #[tokio::test]
    async fn a_server_that_answers_an_expired_key_is_not_believed() {
        let f = Fixture::new();
        let mut state = KeyState::new("mcp");
        f.server.script_keys([Fault::Expired]);
        let e = rotate(
            &f.client(),
            KeyAuth::Key(&f.boot),
            &mut state,
            &f.path(),
            DAY,
            true,
            crate::now,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RotateError::Expired(_)), "{e}");
        assert!(state.current.is_none());
    }

    #[tokio::test]
    async fn a_key_life_longer_than_asked_is_cut_to_what_was_asked() {
        let f = Fixture::new();
        let mut state = KeyState::new("mcp");
        f.server.set_key_time_scale(1000.0);
        rotate(
            &f.client(),
            KeyAuth::Key(&f.boot),
            &mut state,
            &f.path(),
            DAY,
            true,
            crate::now,
        )
        .await
        .unwrap();
        let current = state.current.unwrap();
        assert_eq!(current.tm_expire - current.tm_create, time::Duration::days(1));
    }

    #[test]
    fn orphans_skip_known_expired_deleted_and_foreign_keys() {
        let state = KeyState::new("mcp");
        let now = crate::now();
        let obj = |id: &str, name: &str, expire_in: i64, deleted: bool| KeyObject {
            id: id.into(),
            name: name.into(),
            token_prefix: "vb_12345678".into(),
            tm_create: now,
            tm_expire: now + time::Duration::seconds(expire_in),
            tm_delete: deleted.then_some(now),
        };
        let mine = state.key_name();
        let listed = [
            obj("a", &mine, 100, false),
            obj("b", &mine, -1, false),
            obj("c", &mine, 100, true),
            obj("d", "voipbin-tokend/mcp/someoneelse", 100, false),
            obj("e", &format!("{mine}x"), 100, false),
        ];
        let found: Vec<String> = orphans(&state, &listed, now).into_iter().map(|k| k.id).collect();
        assert_eq!(found, ["a"]);
    }
}
