//! Making the next key: [`rotate`] records a nonce, asks for the key,
//! believes the answer only if it is new and plausible, tests it
//! ([`verify_created`]) and saves it as current before anything else sees
//! it; [`KeySource::rotate`] is the source's side of it (the cap on live
//! keys, keys made but not used, a stale agent login).

use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::api::keys::{Created, KeyAuth, KeyClient, KeyError, prefix_of};
use crate::secret::Secret;
use crate::source::held::{Ctx, Failure, Held};
use crate::state::keys::{self as keystate, CurrentKey, KeyState, Origin, StateError};

use super::housekeep::sweep;
use super::plausible::{implausible_skew, plausible_key_times, skew_seconds};
use super::{KeySource, MAX_LIVE_KEYS, UnusedKey};

/// What `rotate` may fail with.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Api(#[from] KeyError),
    #[error("the server answered with a key that is already expired (tm_expire {0})")]
    Expired(String),
    #[error("the new key could not be saved, so it was not used: {0}")]
    Persist(#[source] StateError),
    /// The nonce could not be saved before the creation: nothing was asked
    /// of the server (so a state that cannot be saved makes no keys).
    #[error("the key state cannot be saved, so no key was made: {0}")]
    CannotRecord(#[source] StateError),
    /// The creation answer does not describe a new key of this
    /// installation (another name, an id already known, a lookup that
    /// disagrees): nothing is deleted by its id.
    #[error("the server's answer to the key creation is not believed: {0}")]
    NotBelieved(String),
    /// The answer is believable, but the new key does not work (401 when
    /// tested): the key exists and is deleted at once (as [`Self::Unusable`]).
    #[error("the new key does not work: {0}")]
    Refused(String),
    /// The server made a key (a believable answer: this installation's
    /// name, an id not known before, the prefix of the key received) that
    /// will not be used: it is deleted at once by its id.
    #[error("{reason}")]
    Unusable {
        key: UnusedKey,
        reason: Box<RotateError>,
    },
}

/// Nonces remembered at most: older ones are forgotten first.
pub const MAX_CREATIONS: usize = 32;

/// Creations whose key would have expired by now are forgotten, and at
/// most [`MAX_CREATIONS`] kept. A nonce is recorded at most one `lifetime`
/// before its key is asked for (one reserved for the next creation is not
/// used later than that, see [`rotate`]), so a key made with it is gone
/// two lifetimes after the record, and a day for clock skew.
pub fn prune_creations(state: &mut KeyState, lifetime: Duration, now: OffsetDateTime) {
    let life = life_of(lifetime);
    let cutoff = now
        .checked_sub(life)
        .and_then(|t| t.checked_sub(life))
        .and_then(|t| t.checked_sub(time::Duration::days(1)));
    if let Some(cutoff) = cutoff {
        state.creations.retain(|c| c.at > cutoff);
    }
    let excess = state.creations.len().saturating_sub(MAX_CREATIONS);
    state.creations.drain(..excess);
}

/// A key's lifetime as a time span (ten years if it does not fit).
fn life_of(lifetime: Duration) -> time::Duration {
    time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(3650))
}

/// A creation's nonce: 128 random bits, in hex.
fn new_nonce() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Saves the state off the async threads.
async fn save_blocking(path: &Path, state: &KeyState) -> Result<(), StateError> {
    let (p, st) = (path.to_path_buf(), state.clone());
    tokio::task::spawn_blocking(move || keystate::save(&p, &st))
        .await
        .unwrap_or_else(|e| {
            Err(StateError::Invalid {
                path: path.to_path_buf(),
                reason: format!("the save task failed: {e}"),
            })
        })
}

/// Makes the next key and persists it as current. The replaced key (if
/// any) becomes a pending deletion without a time yet (`delete_after` is
/// set by [`start_grace`](super::housekeep::start_grace) once every output holds the successor), or, with
/// `delete_replaced = false` or when it was inherited from another
/// installation, a key left to expire.
///
/// On success the state on disk already holds the new key, tested with one
/// call: the caller may publish it. On failure the state holds nothing new
/// but the creation's nonce (a key the server made but that could not be
/// believed or saved is an orphan for the next sweep).
///
/// `reserved` carries a nonce from one creation to the next: the save that
/// makes a key current also records the nonce of the creation after it,
/// so that creation needs no save of its own before its `POST` (one
/// durable write per rotation fewer). It is taken here, used at most once,
/// and believed only while the state in memory still records it; the
/// caller clears it whenever the state is replaced by what another
/// process wrote. A process that starts anew has none, so a nonce
/// recorded by one that was killed after its `POST` is never used twice.
#[allow(clippy::too_many_arguments)]
pub async fn rotate(
    client: &KeyClient<'_>,
    auth: KeyAuth<'_>,
    state: &mut KeyState,
    state_path: &Path,
    lifetime: Duration,
    delete_replaced: bool,
    reserved: &mut Option<String>,
    now: impl Fn() -> OffsetDateTime,
) -> Result<Created, RotateError> {
    // The nonce is on disk before the POST: whatever happens to the answer,
    // the sweep can tell this key from every other. One the last
    // creation's save recorded needs no save of its own; it is used once,
    // whatever happens next, and not after a lifetime (its record must
    // outlive the key: see `prune_creations`).
    let fresh_since = now().checked_sub(life_of(lifetime));
    let nonce = match reserved.take() {
        Some(n)
            if state
                .creations
                .iter()
                .any(|c| c.nonce == n && fresh_since.is_some_and(|t| c.at > t)) =>
        {
            n
        }
        _ => {
            let nonce = new_nonce();
            let mut next = state.clone();
            prune_creations(&mut next, lifetime, now());
            next.creations.push(keystate::Creation {
                nonce: nonce.clone(),
                at: now(),
            });
            save_blocking(state_path, &next)
                .await
                .map_err(RotateError::CannotRecord)?;
            *state = next;
            nonce
        }
    };
    let name = state.key_name();
    let detail = format!("managed by voipbin-tokend; rotated automatically; nonce={nonce}");
    let created = client.create(auth, &name, &detail, lifetime.as_secs()).await?;
    let id = created.object.id.clone();
    if created.object.name != name {
        return Err(RotateError::NotBelieved(format!(
            "it names the key {:?}, not {name:?} as asked (id {id})",
            created.object.name.chars().take(120).collect::<String>()
        )));
    }
    if state.known_ids().any(|known| known == id) {
        return Err(RotateError::NotBelieved(format!(
            "it answers the id {id}, which is a key this installation already holds, deletes or leaves to expire"
        )));
    }
    let skew = skew_seconds(created.server_skew);
    // From here the answer is believable (ours by name, a new id; keyapi
    // checked that the prefix is the key's): a key that is not used is
    // deleted by its id.
    let unused = UnusedKey {
        id: created.object.id.clone(),
        prefix: prefix_of(created.key.expose()).to_string(),
    };
    let unusable = |reason: RotateError| RotateError::Unusable {
        key: unused.clone(),
        reason: Box::new(reason),
    };
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
    let asked = life_of(lifetime);
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
        return Err(unusable(RotateError::Expired(crate::token::rfc3339(
            created.object.tm_expire,
        ))));
    }
    verify_created(client, &created, &name)
        .await
        .map_err(|e| match e {
            RotateError::Refused(_) => unusable(e),
            e => e,
        })?;

    let mut next = state.clone();
    next.creations.retain(|c| c.nonce != nonce);
    // The next creation's nonce rides along in this save (see `reserved`).
    prune_creations(&mut next, lifetime, now());
    let upcoming = new_nonce();
    next.creations.push(keystate::Creation {
        nonce: upcoming.clone(),
        at: now(),
    });
    let replaced = next.current.replace(CurrentKey {
        id: created.object.id.clone(),
        key: created.key.clone(),
        tm_create: created.object.tm_create,
        tm_expire: created.object.tm_expire,
        server_skew_seconds: skew,
        obtained_at: created.received_at,
        origin: Origin::Created,
        inherited: false,
    });
    if let Some(old) = replaced {
        if old.inherited {
            info!(key_id = %old.id, prefix = %prefix_of(old.key.expose()), "the replaced key came with the state from another installation; it is left to expire, not deleted");
        }
        next.retire(old, delete_replaced);
    }
    save_blocking(state_path, &next)
        .await
        .map_err(|e| unusable(RotateError::Persist(e)))?;
    *state = next;
    *reserved = Some(upcoming);
    Ok(created)
}

/// The test of a new key before it is saved or published: one lookup of
/// its id, authenticated with the new key itself. It proves the key works
/// and that the id is the key received (the name asked for, the prefix of
/// the secret received). A 401 means the key does not work
/// ([`RotateError::Refused`]); an unknown id or a mismatch means the
/// answer is not believed ([`RotateError::NotBelieved`]); any other failure
/// is returned as is (the key is then an orphan for the sweep).
pub async fn verify_created(
    client: &KeyClient<'_>,
    created: &Created,
    name: &str,
) -> Result<(), RotateError> {
    let id = &created.object.id;
    let prefix = prefix_of(created.key.expose());
    match client.get(KeyAuth::Key(&created.key), id).await {
        Ok(found) => {
            if found.name != name || found.token_prefix != prefix || found.tm_delete.is_some() {
                Err(RotateError::NotBelieved(format!(
                    "looking the new key up by its id {id} gives the name {:?} and prefix {}{} (expected {name:?}, {prefix})",
                    found.name.chars().take(120).collect::<String>(),
                    prefix_of(&found.token_prefix),
                    if found.tm_delete.is_some() {
                        ", deleted"
                    } else {
                        ""
                    },
                )))
            } else {
                Ok(())
            }
        }
        Err(KeyError::Unauthorized { request_id }) => Err(RotateError::Refused(format!(
            "the new key (id {id}, prefix {prefix}) was refused (HTTP 401) when tested{}",
            crate::api::rid(&request_id)
        ))),
        Err(e @ (KeyError::NotFound { .. } | KeyError::Gone { .. } | KeyError::BadRequest { .. })) => Err(
            RotateError::NotBelieved(format!("looking the new key up by its id {id} answers: {e}")),
        ),
        Err(e) => Err(RotateError::Api(e)),
    }
}

impl KeySource {
    /// Creates the next key (see [`rotate`]); the state on disk holds it
    /// when this returns Ok.
    pub async fn rotate(&mut self, ctx: &Ctx<'_>, _held: Option<&Held>) -> Result<Held, Failure> {
        self.ensure_state(ctx).await?;
        // A state written by another process is neither overwritten nor forgotten.
        self.reread_state(ctx).await;
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
        let auth = if bootstrap {
            KeyAuth::Key(&auth_secret)
        } else {
            KeyAuth::Bearer(&auth_secret)
        };
        // A key made but not used is deleted before anything new is made.
        if !self.discard.is_empty() && !self.delete_discarded(ctx, auth).await {
            let u = self.discard.first().cloned().expect("not empty");
            return Err(Failure::transient(format!(
                "a key the server made that is not used (id {}, prefix {}) is not deleted yet; no key is made before it is",
                u.id, u.prefix
            )));
        }
        // The cap: a lost answer may have made a key; a sweep tells.
        if self.live_keys(now) >= MAX_LIVE_KEYS && self.maybe_orphans > 0 {
            let client = KeyClient::new(&ctx.api.client);
            let state = self.state.as_mut().expect("loaded");
            match sweep(&client, auth, state, now).await {
                Ok(n) => {
                    for _ in 0..n {
                        ctx.metrics.key_deleted(&ctx.cfg.name, "success");
                    }
                    self.maybe_orphans = 0;
                    self.sweep_due = false;
                }
                Err(e) => {
                    return Err(Failure {
                        kind: e.kind(),
                        message: format!("sweeping for orphaned keys before making another: {e}"),
                    });
                }
            }
        }
        let live = self.live_keys(now);
        if live >= MAX_LIVE_KEYS {
            let message = format!(
                "credential {} already has {live} live keys (the most is {MAX_LIVE_KEYS}); no key is made until replaced keys are deleted or expire",
                ctx.cfg.name
            );
            error!(credential = %ctx.cfg.name, live, "{message}");
            return Err(Failure::rejected(message));
        }
        let (result, used) = match self.create_with(ctx, &auth_secret).await {
            Err(RotateError::Api(KeyError::Unauthorized { .. })) if !bootstrap => {
                // A stale login token: log in again, once, at once.
                self.agent = None;
                let token = self.agent_token(ctx).await?;
                (self.create_with(ctx, &token).await, token)
            }
            result => (result, auth_secret.clone()),
        };
        let outcome = self.outcome(ctx, result);
        // A key made that will not be used is deleted at once.
        if !self.discard.is_empty() {
            let auth = if bootstrap {
                KeyAuth::Key(&used)
            } else {
                KeyAuth::Bearer(&used)
            };
            self.delete_discarded(ctx, auth).await;
        }
        outcome
    }

    /// One creation, authenticated with `secret` (a key, or the agent's token).
    async fn create_with(&mut self, ctx: &Ctx<'_>, secret: &Secret) -> Result<Created, RotateError> {
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
            &mut self.next_nonce,
            crate::now,
        )
        .await
    }

    /// A creation's result as the credential sees it.
    fn outcome(&mut self, ctx: &Ctx<'_>, result: Result<Created, RotateError>) -> Result<Held, Failure> {
        match result {
            Ok(created) => {
                self.dead = false;
                self.held_refused = false;
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
                Ok(Held {
                    minted: true,
                    ..Self::held_of(current, &ctx.cfg.renewal, crate::now())
                })
            }
            Err(RotateError::Api(KeyError::Unauthorized { request_id })) => {
                if self.bootstrap_mode() {
                    self.dead = true;
                    self.held_refused = true;
                    Err(Failure::rejected(format!(
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
                    Err(Failure::transient(format!(
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
                    self.maybe_orphans = self.maybe_orphans.saturating_add(1);
                }
                Err(Failure {
                    kind: e.kind(),
                    message: format!("creating the next key: {e}"),
                })
            }
            Err(e @ RotateError::CannotRecord(_)) => {
                Err(Failure::transient(format!("creating the next key: {e}")))
            }
            Err(RotateError::Unusable { key, reason }) => {
                // Deleted at once (see `rotate`); known, so no sweep needed.
                self.discard.push(key);
                Err(Failure::transient(format!("creating the next key: {reason}")))
            }
            Err(e) => {
                self.sweep_due = true;
                self.maybe_orphans = self.maybe_orphans.saturating_add(1);
                Err(Failure::transient(format!("creating the next key: {e}")))
            }
        }
    }
}
