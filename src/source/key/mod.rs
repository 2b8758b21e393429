//! The access-key source: how an access-key credential gets its next key,
//! and the housekeeping around keys (deleting replaced keys after their
//! grace, sweeping orphans).
//!
//! Every step that makes or forgets a key persists the [`KeyState`] before
//! anything else sees the change, so a kill at any moment loses no key:
//!
//! 1. record a random nonce in the state (saved, fsynced);
//! 2. `POST` a key named `voipbin-tokend/{credential}/{installation id}`
//!    with the nonce in its `detail`;
//! 3. believe the answer only if it is new and matches: the name asked
//!    for, an id this state does not know, not already expired by the
//!    server's clock; then test it: one `GET /v1.0/accesskeys/{id}`
//!    authenticated WITH THE NEW KEY must answer the name asked for and
//!    the prefix of the secret received;
//! 4. make it current in the state, the replaced key pending deletion (or
//!    left to expire), forget the nonce, and save; only then may outputs
//!    change.
//!
//! The test comes before the save, so nothing untested reaches the state
//! (which is published as is at the next start). A kill between the answer
//! and the save loses the secret, but the key is then an orphan: it
//! carries this installation's name and a recorded nonce but is neither
//! current nor pending. [`orphans`] finds those.
//!
//! Every DELETE goes through [`delete_checked`]: it looks the key up first
//! and deletes it only if it is this installation's (its name) or the
//! recorded bootstrap key, and its prefix is the one recorded. Nothing
//! else is ever deleted.

use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::keyapi::{Created, Deleted, KeyAuth, KeyClient, KeyError, KeyObject, prefix_of};
use crate::keystate::{self, CurrentKey, KeyState, LeftToExpire, Origin, PendingDeletion, StateError};
use crate::secret::Secret;

/// Server clock offsets below this are Date-header noise and ignored.
const SKEW_IGNORED: time::Duration = time::Duration::seconds(5);

/// No key is created while this installation already has this many live
/// keys of a credential (current, awaiting deletion, left to expire, made
/// but not used, possibly made by a lost answer): a loop that rotates too
/// often stops here instead of filling the account.
pub const MAX_LIVE_KEYS: usize = 5;

/// Housekeeping that could do nothing is not tried again sooner than this
/// (nor sooner than `retry-min`).
const HOUSEKEEPING_FLOOR: Duration = Duration::from_secs(1);

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

/// A key the server made that will not be used (id and public prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusedKey {
    pub id: String,
    pub prefix: String,
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
    #[error(
        "no key with the bootstrap key's prefix {0} was found in the part of the key list the server gave (the list was cut short: it repeated a page token or did not end)"
    )]
    ListCutShort(String),
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
    let listed = client.listing(KeyAuth::Key(&key)).await?;
    let prefix = prefix_of(key.expose()).to_string();
    let complete = listed.complete;
    // Newest first; the prefix has 8 random characters, so a clash is
    // unlikely, and then the newest live one is taken.
    let object = listed
        .keys
        .into_iter()
        .find(|k| k.token_prefix == prefix && k.tm_delete.is_none())
        .ok_or_else(|| {
            if complete {
                BootstrapError::NotListed(prefix.clone())
            } else {
                BootstrapError::ListCutShort(prefix.clone())
            }
        })?;
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
        inherited: false,
    })
}

/// Nonces remembered at most: older ones are forgotten first.
pub const MAX_CREATIONS: usize = 32;

/// Creations whose key would have expired by now (made `lifetime` ago, and
/// a day for clock skew) are forgotten, and at most [`MAX_CREATIONS`] kept.
pub fn prune_creations(state: &mut KeyState, lifetime: Duration, now: OffsetDateTime) {
    let life = time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(3650));
    let cutoff = now
        .checked_sub(life)
        .and_then(|t| t.checked_sub(time::Duration::days(1)));
    if let Some(cutoff) = cutoff {
        state.creations.retain(|c| c.at > cutoff);
    }
    let excess = state.creations.len().saturating_sub(MAX_CREATIONS);
    state.creations.drain(..excess);
}

/// The nonce a key's `detail` carries (`... nonce=HEX`), if any.
pub fn nonce_in(detail: &str) -> Option<&str> {
    detail
        .split([';', ' '])
        .find_map(|w| w.strip_prefix("nonce="))
        .filter(|n| !n.is_empty())
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
/// set by [`start_grace`] once every output holds the successor), or, with
/// `delete_replaced = false` or when it was inherited from another
/// installation, a key left to expire.
///
/// On success the state on disk already holds the new key, tested with one
/// call: the caller may publish it. On failure the state holds nothing new
/// but the creation's nonce (a key the server made but that could not be
/// believed or saved is an orphan for the next sweep).
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
    // The nonce is on disk before the POST: whatever happens to the answer,
    // the sweep can tell this key from every other.
    let nonce = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    {
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
    }
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
        let prefix = prefix_of(old.key.expose()).to_string();
        if delete_replaced && !old.inherited {
            next.pending_deletions.push(PendingDeletion {
                id: old.id,
                prefix,
                delete_after: None,
                bootstrap: old.origin == Origin::Bootstrap,
            });
        } else {
            if old.inherited {
                info!(key_id = %old.id, prefix = %prefix, "the replaced key came with the state from another installation; it is left to expire, not deleted");
            }
            next.left_to_expire.push(LeftToExpire {
                id: old.id,
                prefix,
                tm_expire: old.tm_expire,
            });
        }
    }
    save_blocking(state_path, &next)
        .await
        .map_err(|e| unusable(RotateError::Persist(e)))?;
    *state = next;
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

/// What [`delete_checked`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Looked up, matched, deleted.
    Deleted,
    /// 404 or 409 (on the lookup or the DELETE): it was gone already.
    AlreadyGone,
    /// Looked up, and it is not the key recorded (another name or another
    /// prefix): nothing deleted, logged as an error. The caller drops the
    /// entry from the state.
    Refused,
}

/// THE way a key is deleted (every DELETE goes through here). `p` is what
/// the state recorded: the id, the prefix, and whether it was the
/// bootstrap key. The key is looked up by id first (`GET`, with `auth`)
/// and deleted only if its name is this installation's key name (or `p`
/// is the recorded bootstrap key, whose name is whatever it was given by
/// hand) and its `token_prefix` is the one recorded. 404 and 409 count as
/// already gone. A mismatch is logged as an error naming the id and what
/// was expected and found (never a secret), and nothing is deleted.
pub async fn delete_checked(
    client: &KeyClient<'_>,
    auth: KeyAuth<'_>,
    state: &KeyState,
    p: &PendingDeletion,
) -> Result<DeleteOutcome, KeyError> {
    let expected_name = state.key_name();
    let found = match client.get(auth, &p.id).await {
        Ok(found) => found,
        Err(KeyError::NotFound { .. } | KeyError::Gone { .. }) => {
            info!(key_id = %p.id, prefix = %p.prefix, "the key to delete was already gone");
            return Ok(DeleteOutcome::AlreadyGone);
        }
        Err(e) => {
            warn!(key_id = %p.id, prefix = %p.prefix, error = %e, "cannot look up the key to delete; will retry");
            return Err(e);
        }
    };
    if found.tm_delete.is_some() {
        return Ok(DeleteOutcome::AlreadyGone);
    }
    let name_ok = p.bootstrap || found.name == expected_name;
    if !name_ok || found.token_prefix != p.prefix || found.id != p.id {
        tracing::error!(
            key_id = %p.id,
            expected_name = %if p.bootstrap { "(the bootstrap key: any)".to_string() } else { expected_name.clone() },
            found_name = %found.name.chars().take(120).collect::<String>(),
            expected_prefix = %prefix_of(&p.prefix),
            found_prefix = %prefix_of(&found.token_prefix),
            "refusing to delete a key that is not the one recorded; it is left alone and forgotten"
        );
        return Ok(DeleteOutcome::Refused);
    }
    // A pending deletion has its time; an orphan of the sweep has none.
    let what = if p.delete_after.is_some() {
        "replaced key"
    } else {
        "key"
    };
    match client.delete(auth, &p.id).await {
        Ok(Deleted::Now) => {
            info!(key_id = %p.id, prefix = %p.prefix, "{what} deleted");
            Ok(DeleteOutcome::Deleted)
        }
        Ok(Deleted::AlreadyGone) => {
            info!(key_id = %p.id, prefix = %p.prefix, "{what} was already gone");
            Ok(DeleteOutcome::AlreadyGone)
        }
        Err(e) => {
            warn!(key_id = %p.id, prefix = %p.prefix, error = %e, "cannot delete the {what}; will retry");
            Err(e)
        }
    }
}

/// Keys this installation made but does not know: named exactly as its
/// keys are, carrying in their `detail` a nonce it recorded, neither
/// current, awaiting deletion nor left to expire, not deleted, not expired
/// (expired keys are left alone: they can do no harm and the server keeps
/// them anyway), and not holding the prefix of the key in use.
pub fn orphans(state: &KeyState, listed: &[KeyObject], now: OffsetDateTime) -> Vec<KeyObject> {
    let name = state.key_name();
    let held_prefix = state
        .current
        .as_ref()
        .map(|c| prefix_of(c.key.expose()).to_string());
    listed
        .iter()
        .filter(|k| k.name == name)
        .filter(|k| nonce_in(&k.detail).is_some_and(|n| state.creations.iter().any(|c| c.nonce == n)))
        .filter(|k| k.tm_delete.is_none() && k.tm_expire > now)
        .filter(|k| !state.known_ids().any(|id| id == k.id))
        .filter(|k| held_prefix.as_deref() != Some(k.token_prefix.as_str()))
        .cloned()
        .collect()
}

/// Lists the keys and deletes this installation's orphans (each through
/// [`delete_checked`]). Returns how many were deleted; stops at the first
/// failure (the next sweep retries). Nonces whose key was swept, or is
/// known (current, pending), are forgotten from `state.creations` (the
/// caller saves when they changed). A list cut short deletes only what it
/// saw.
pub async fn sweep(
    client: &KeyClient<'_>,
    auth: KeyAuth<'_>,
    state: &mut KeyState,
    now: OffsetDateTime,
) -> Result<usize, KeyError> {
    let listed = client.listing(auth).await?;
    // Nonces of keys the state knows are settled.
    let settled: Vec<String> = listed
        .keys
        .iter()
        .filter(|k| state.known_ids().any(|id| id == k.id))
        .filter_map(|k| nonce_in(&k.detail).map(str::to_owned))
        .collect();
    state.creations.retain(|c| !settled.contains(&c.nonce));
    let mut deleted = 0;
    for orphan in orphans(state, &listed.keys, now) {
        let p = PendingDeletion {
            id: orphan.id.clone(),
            prefix: orphan.token_prefix.clone(),
            delete_after: None,
            bootstrap: false,
        };
        let outcome = delete_checked(client, auth, state, &p).await?;
        if outcome == DeleteOutcome::Deleted {
            info!(key_id = %orphan.id, prefix = %orphan.token_prefix, "deleted an orphaned key of this installation");
            deleted += 1;
        }
        if let Some(n) = nonce_in(&orphan.detail) {
            state.creations.retain(|c| c.nonce != n);
        }
    }
    Ok(deleted)
}

/// The key state as re-read from disk (`disk`) merged with the one in
/// memory, so that a state written by anything else is not overwritten
/// and nothing either knows is forgotten: the file's view wins (its
/// current key, its pending deletions and their times), and every key only
/// memory knows is kept: memory's current key, if the file names another
/// one and does not know it, becomes a pending deletion without a time
/// (its grace starts once the file's key is in every output). `None` when
/// the file belongs to another credential or installation: memory is kept.
pub fn merge_reread(memory: &KeyState, disk: KeyState) -> Option<KeyState> {
    if disk.installation_id != memory.installation_id || disk.credential != memory.credential {
        return None;
    }
    let mut merged = disk;
    let current_id = merged.current.as_ref().map(|c| c.id.clone());
    if let Some(mine) = &memory.current
        && current_id.as_deref() != Some(mine.id.as_str())
        && !merged.known_ids().any(|id| id == mine.id)
    {
        let prefix = prefix_of(mine.key.expose()).to_string();
        if mine.inherited {
            // Never deleted by this installation: left to expire.
            merged.left_to_expire.push(LeftToExpire {
                id: mine.id.clone(),
                prefix,
                tm_expire: mine.tm_expire,
            });
        } else {
            merged.pending_deletions.push(PendingDeletion {
                id: mine.id.clone(),
                prefix,
                delete_after: None,
                bootstrap: mine.origin == Origin::Bootstrap,
            });
        }
    }
    for p in &memory.pending_deletions {
        if !merged.known_ids().any(|id| id == p.id) {
            merged.pending_deletions.push(p.clone());
        }
    }
    for l in &memory.left_to_expire {
        if !merged.known_ids().any(|id| id == l.id) {
            merged.left_to_expire.push(l.clone());
        }
    }
    // Creations memory recorded (their keys may be orphans to sweep).
    for c in &memory.creations {
        if !merged.creations.iter().any(|d| d.nonce == c.nonce) {
            merged.creations.push(c.clone());
        }
    }
    Some(merged)
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
        let loaded = tokio::task::spawn_blocking(move || load_where_it_lives(&path, &name))
            .await
            .map_err(|e| super::Failure::transient(format!("key state: {e}")))?
            .map_err(|e: StateError| super::Failure::transient(format!("key state: {e}")))?;
        self.state = Some(loaded);
        Ok(())
    }

    fn state_path(ctx: &super::Ctx<'_>) -> std::path::PathBuf {
        keystate::path(ctx.state_dir, &ctx.cfg.name)
    }

    /// Re-reads the key state file before a rotation or a deletion (see
    /// [`merge_reread`]). True if the current key changed under us: the
    /// outputs may not hold it, so the caller renews.
    async fn reread_state(&mut self, ctx: &super::Ctx<'_>) -> bool {
        let Some(memory) = self.state.clone() else {
            return false;
        };
        let path = Self::state_path(ctx);
        let loaded = tokio::task::spawn_blocking(move || keystate::load(&path)).await;
        let disk = match loaded {
            Ok(Ok(Some(disk))) if disk == memory => return false,
            Ok(Ok(Some(disk))) => disk,
            Ok(Ok(None)) => {
                warn!("the key state file is gone; writing it again from memory");
                if let Err(e) = self.save(ctx).await {
                    warn!(error = %e, "cannot save the key state");
                }
                return false;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "cannot re-read the key state file; keeping the state in memory");
                return false;
            }
            Err(_) => return false,
        };
        let Some(merged) = merge_reread(&memory, disk.clone()) else {
            warn!("the key state file now belongs to another installation; keeping the state in memory");
            return false;
        };
        let changed = merged.current.as_ref().map(|c| &c.id) != memory.current.as_ref().map(|c| &c.id);
        info!(
            current_changed = changed,
            "the key state file was changed by another process; took its view"
        );
        let save = merged != disk;
        self.state = Some(merged);
        if changed {
            self.dead = false;
        }
        if save && let Err(e) = self.save(ctx).await {
            warn!(error = %e, "cannot save the key state");
        }
        changed
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
        // The outputs hold another key than the state (a state restored
        // from a backup, a kill between saving and writing): one call says
        // which of them to hold.
        let state_key = self
            .state
            .as_ref()
            .and_then(|s| s.current.clone())
            .filter(|c| c.expires_at() > now);
        if let Some(current) = state_key {
            let outputs = ctx.cfg.outputs.clone();
            let on_disk = tokio::task::spawn_blocking(move || keys_in_outputs(&outputs))
                .await
                .unwrap_or_default();
            if let Some(other) = on_disk.into_iter().find(|k| *k != current.key) {
                match self.check_against_outputs(ctx, &current, other, now).await {
                    Restart::State => {}
                    Restart::Output(adopted) => return self.adopt_output_key(ctx, current, adopted).await,
                    Restart::Neither => {
                        self.dead = self.bootstrap_mode();
                        return Ok(None);
                    }
                }
            }
        }
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

    /// At start, the outputs hold `out_key`, not the state's key: one call
    /// (a list, authenticated with the state's key, or the agent's token)
    /// tells whether the state's key is alive and what the output's key is.
    ///
    /// - The output's key is live, this installation's, and newer than the
    ///   state's key, or the state's key is dead: the output's key is kept
    ///   (a restored older state must not replace it).
    /// - Else the state's key is alive: it is published (a kill between
    ///   saving a new key and writing it).
    /// - The state's key is refused (or gone) and the output's key is not a
    ///   live key of this installation: nothing is published, nothing is
    ///   made current (so the output's key is never deleted); the renewal
    ///   path (bootstrap-key-file, or the agent) makes the next key, which
    ///   then replaces it in the outputs.
    ///
    /// A call that fails otherwise (network, 5xx) decides nothing: the
    /// state is trusted, as before.
    async fn check_against_outputs(
        &mut self,
        ctx: &super::Ctx<'_>,
        current: &CurrentKey,
        out_key: Secret,
        now: OffsetDateTime,
    ) -> Restart {
        let client = KeyClient::new(&ctx.api.client);
        let name = self.state.as_ref().map(|s| s.key_name()).unwrap_or_default();
        // A key named by an earlier installation of this credential (the
        // state was restored, so this is a new installation): kept in use,
        // but inherited, so it is left to expire once replaced, never deleted.
        let family = format!("voipbin-tokend/{}/", ctx.cfg.name);
        let inherited_name = |o: &KeyObject| o.name != name && o.name.starts_with(&family);
        let bootstrap = self.bootstrap_mode();
        let out_prefix = prefix_of(out_key.expose()).to_string();
        info!(
            key_id = %current.id,
            prefix = %prefix_of(current.key.expose()),
            output_prefix = %out_prefix,
            "the outputs hold another key than the key state; checking which one works"
        );
        let listed = if bootstrap {
            client.list(KeyAuth::Key(&current.key)).await
        } else {
            match self.agent_token(ctx).await {
                Ok(token) => client.list(KeyAuth::Bearer(&token)).await,
                Err(f) => {
                    warn!(error = %f.message, "cannot log in to check the key in the key state; using it");
                    return Restart::State;
                }
            }
        };
        let live = |k: &KeyObject| k.tm_delete.is_none() && k.tm_expire > now;
        let found = |listed: &[KeyObject]| {
            listed
                .iter()
                .find(|k| k.token_prefix == out_prefix && live(k))
                .cloned()
        };
        let as_current = |o: KeyObject, origin: Origin| CurrentKey {
            inherited: inherited_name(&o),
            id: o.id,
            key: out_key.clone(),
            tm_create: o.tm_create,
            tm_expire: o.tm_expire,
            server_skew_seconds: 0,
            obtained_at: now,
            origin,
        };
        match listed {
            Ok(listed) => {
                // Listed with the state's key: it works. With the agent's
                // token: it works if listed live.
                let state_live = bootstrap || listed.iter().any(|k| k.id == current.id && live(k));
                match found(&listed) {
                    Some(o)
                        if (o.name == name || inherited_name(&o))
                            && (!state_live || o.tm_create > current.tm_create) =>
                    {
                        Restart::Output(as_current(o, Origin::Created))
                    }
                    _ if state_live => Restart::State,
                    // Only an agent gets here: the state's key is gone, and
                    // the outputs' key is not this installation's (never
                    // made current, so never deleted).
                    _ => Restart::Neither,
                }
            }
            Err(KeyError::Unauthorized { .. }) if bootstrap => {
                warn!(key_id = %current.id, "the key in the key state was refused (HTTP 401); it is not published");
                match client.list(KeyAuth::Key(&out_key)).await {
                    Ok(listed) => match found(&listed) {
                        Some(o) if o.name == name || inherited_name(&o) => {
                            Restart::Output(as_current(o, Origin::Created))
                        }
                        // Not this installation's: not made current (it
                        // would be deleted once replaced); left in place
                        // until the next key is made.
                        _ => Restart::Neither,
                    },
                    Err(e) => {
                        warn!(output_prefix = %out_prefix, error = %e, "the key in the outputs does not work either; the outputs are left as they are");
                        Restart::Neither
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot check the key in the key state; using it");
                Restart::State
            }
        }
    }

    /// Makes the outputs' key current (saved); the state's key becomes a
    /// deletion whose grace starts once the outputs hold the kept key.
    async fn adopt_output_key(
        &mut self,
        ctx: &super::Ctx<'_>,
        replaced: CurrentKey,
        adopted: CurrentKey,
    ) -> Result<Option<super::Held>, super::Failure> {
        warn!(
            key_id = %adopted.id,
            prefix = %prefix_of(adopted.key.expose()),
            replaced_key_id = %replaced.id,
            "keeping the working key the outputs hold, not the key state's (a state restored from a backup?)"
        );
        let delete_replaced = self.cfg.delete_replaced;
        let state = self.state.as_mut().expect("loaded");
        state.pending_deletions.retain(|p| p.id != adopted.id);
        state.left_to_expire.retain(|l| l.id != adopted.id);
        let prefix = prefix_of(replaced.key.expose()).to_string();
        // An inherited key is never deleted by this installation.
        if delete_replaced && !replaced.inherited {
            state.pending_deletions.push(PendingDeletion {
                id: replaced.id,
                prefix,
                delete_after: None,
                bootstrap: replaced.origin == Origin::Bootstrap,
            });
        } else {
            state.left_to_expire.push(LeftToExpire {
                id: replaced.id,
                prefix,
                tm_expire: replaced.tm_expire,
            });
        }
        state.current = Some(adopted.clone());
        self.save(ctx)
            .await
            .map_err(|e| super::Failure::transient(format!("key state: {e}")))?;
        self.dead = false;
        self.held_refused = false;
        Ok(Some(Self::held_of(&adopted, &ctx.cfg.renewal, crate::now())))
    }

    /// Live keys of this installation for this credential, as far as known:
    /// the state's, the unused ones not yet deleted, and those lost answers
    /// may have made since the last sweep.
    fn live_keys(&self, now: OffsetDateTime) -> usize {
        let Some(state) = self.state.as_ref() else {
            return 0;
        };
        let current: usize = state
            .current
            .as_ref()
            .filter(|c| c.expires_at() > now)
            .map_or(0, |_| 1);
        let left = state.left_to_expire.iter().filter(|l| l.tm_expire > now).count();
        current
            .saturating_add(state.pending_deletions.len())
            .saturating_add(left)
            .saturating_add(self.discard.len())
            .saturating_add(self.maybe_orphans)
    }

    /// Deletes the keys made but not used; true when none is left.
    async fn delete_discarded(&mut self, ctx: &super::Ctx<'_>, auth: KeyAuth<'_>) -> bool {
        let client = KeyClient::new(&ctx.api.client);
        while let Some(u) = self.discard.first().cloned() {
            let p = PendingDeletion {
                id: u.id.clone(),
                prefix: u.prefix.clone(),
                delete_after: None,
                bootstrap: false,
            };
            let Some(state) = self.state.as_ref() else {
                return true;
            };
            match delete_checked(&client, auth, state, &p).await {
                Ok(outcome) => {
                    let label = match outcome {
                        DeleteOutcome::Deleted => "success",
                        DeleteOutcome::AlreadyGone => "already_gone",
                        DeleteOutcome::Refused => "refused",
                    };
                    ctx.metrics.key_deleted(&ctx.cfg.name, label);
                    if outcome == DeleteOutcome::Deleted {
                        info!(key_id = %u.id, prefix = %u.prefix, "deleted a key the server made that is not used");
                    }
                    self.discard.remove(0);
                }
                Err(_) => {
                    ctx.metrics.key_deleted(&ctx.cfg.name, "failure");
                    return false;
                }
            }
        }
        true
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
                    && !old.inherited
                {
                    // Deleting it confirms it is gone (404/409); its grace
                    // starts once the outputs hold the successor, as a
                    // refusal may have been a lie.
                    state.pending_deletions.push(PendingDeletion {
                        prefix: prefix_of(old.key.expose()).to_string(),
                        id: old.id,
                        delete_after: None,
                        bootstrap: old.origin == Origin::Bootstrap,
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
            return Err(super::Failure::transient(format!(
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
                    return Err(super::Failure {
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
            return Err(super::Failure::rejected(message));
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
                Ok(Self::held_of(current, &ctx.cfg.renewal, crate::now()))
            }
            Err(RotateError::Api(KeyError::Unauthorized { request_id })) => {
                if self.bootstrap_mode() {
                    self.dead = true;
                    self.held_refused = true;
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
                    self.maybe_orphans = self.maybe_orphans.saturating_add(1);
                }
                Err(super::Failure {
                    kind: e.kind(),
                    message: format!("creating the next key: {e}"),
                })
            }
            Err(e @ RotateError::CannotRecord(_)) => {
                Err(super::Failure::transient(format!("creating the next key: {e}")))
            }
            Err(RotateError::Unusable { key, reason }) => {
                // Deleted at once (see `rotate`); known, so no sweep needed.
                self.discard.push(key);
                Err(super::Failure::transient(format!(
                    "creating the next key: {reason}"
                )))
            }
            Err(e) => {
                self.sweep_due = true;
                self.maybe_orphans = self.maybe_orphans.saturating_add(1);
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

    /// When housekeeping is next due: a sweep, a deletion, a lookup. None
    /// with a dead held key (self-rotation): every call would be refused;
    /// the renewal path takes over.
    pub fn housekeeping_at(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let state = self.state.as_ref()?;
        state.current.as_ref()?;
        if self.bootstrap_mode() && self.dead {
            return None;
        }
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
        let overdue = overdue_deletions(&self.status(), crate::now()).len();
        ctx.metrics.key_deletions_overdue(&ctx.cfg.name, overdue);
        match &outcome {
            Ok(_) => {
                self.housekeeping_failures = 0;
                self.housekeeping_retry_at = None;
                // A pass either did what was due or moves it forward: never
                // due again at once (a loop that never sleeps).
                let after = crate::now();
                if self.housekeeping_at(after).is_some_and(|at| at <= after) {
                    let floor = ctx.cfg.renewal.retry_min.max(HOUSEKEEPING_FLOOR);
                    warn!("key housekeeping is still due after a pass; trying again later");
                    self.housekeeping_retry_at = Some(crate::schedule::after(after, floor));
                }
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
        // The held key was refused: housekeeping cannot go on with it; the
        // renewal path (bootstrap-key-file, with its backoff) takes over.
        if self.bootstrap_mode() && self.dead {
            return super::Housekept::RenewNow;
        }
        outcome.unwrap_or(super::Housekept::Failed)
    }

    async fn housekeep_once(
        &mut self,
        ctx: &super::Ctx<'_>,
        now: OffsetDateTime,
    ) -> Result<super::Housekept, crate::schedule::FailureKind> {
        // A state written by another process is neither overwritten nor
        // forgotten; a current key the outputs may not hold is renewed first.
        if self.reread_state(ctx).await {
            return Ok(super::Housekept::RenewNow);
        }
        let secret = if self.bootstrap_mode() {
            match self.state.as_ref().and_then(|s| s.current.as_ref()) {
                Some(c) if !self.dead => c.key.clone(),
                Some(_) => return Ok(super::Housekept::RenewNow),
                None => return Ok(super::Housekept::Done),
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
                    this.held_refused = true;
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
                        self.dead = true;
                        self.held_refused = true;
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
            let Some(state) = self.state.as_mut() else {
                return Ok(super::Housekept::Done);
            };
            let before = state.creations.clone();
            let swept = sweep(&client, auth, state, now).await;
            if state.creations != before
                && let Err(e) = self.save(ctx).await
            {
                warn!(error = %e, "cannot save the key state after a sweep");
            }
            match swept {
                Ok(n) => {
                    for _ in 0..n {
                        ctx.metrics.key_deleted(&ctx.cfg.name, "success");
                    }
                    self.sweep_due = false;
                    self.maybe_orphans = 0;
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
            let checked = match self.state.as_ref() {
                Some(state) => delete_checked(&client, auth, state, &p).await,
                None => break,
            };
            match checked {
                Ok(outcome) => {
                    let label = match outcome {
                        DeleteOutcome::Deleted => "success",
                        DeleteOutcome::AlreadyGone => "already_gone",
                        DeleteOutcome::Refused => "refused",
                    };
                    ctx.metrics.key_deleted(&ctx.cfg.name, label);
                    self.deletion_failures.retain(|f| f.id != p.id);
                    let state = self.state.as_mut().expect("loaded");
                    state.pending_deletions.retain(|q| q.id != p.id);
                    if let Err(e) = self.save(ctx).await {
                        warn!(error = %e, "cannot save the key state after a deletion");
                    }
                }
                Err(e) => {
                    ctx.metrics.key_deleted(&ctx.cfg.name, "failure");
                    self.deletion_failed(&p.id, &e);
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

    /// The held key was refused (401) or found deleted, and no working
    /// key has replaced it yet: not ready.
    pub fn refused(&self) -> bool {
        self.held_refused
    }

    pub fn status(&self) -> KeyStatus {
        let state = self.state.as_ref();
        let current = state.and_then(|s| s.current.as_ref());
        KeyStatus {
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

    /// Records a failed deletion of `id` for `status` and the metric.
    fn deletion_failed(&mut self, id: &str, e: &KeyError) {
        let error = e.to_string();
        match self.deletion_failures.iter_mut().find(|f| f.id == id) {
            Some(f) => {
                f.failures = f.failures.saturating_add(1);
                f.error = error;
            }
            None => self.deletion_failures.push(DeletionFailure {
                id: id.to_string(),
                failures: 1,
                error,
            }),
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

/// Which key to hold at start when the outputs hold another than the state.
enum Restart {
    /// The state's key (as before).
    State,
    /// The outputs' key, looked up (made current).
    Output(CurrentKey),
    /// Neither is known to work: publish nothing, make the next key.
    Neither,
}

/// The keys the outputs hold (distinct, in output order): the first
/// key-shaped word of each readable output.
fn keys_in_outputs(outputs: &[crate::config::OutputConfig]) -> Vec<Secret> {
    let mut found: Vec<Secret> = Vec::new();
    for out in outputs {
        let Ok(bytes) = crate::fsread::read_bounded(&out.path, crate::fsread::MAX_OUTPUT, "output") else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Some(key) = find_key(text) {
            let key = Secret::new(key.to_string());
            if !found.contains(&key) {
                found.push(key);
            }
        }
    }
    found
}

/// The first `vb_` and 32 letters or digits standing alone in `text`.
fn find_key(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text.get(from..)?.find("vb_") {
        let start = from + at;
        let end = start + 35;
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after_ok = bytes.get(end).is_none_or(|b| !b.is_ascii_alphanumeric());
        if let Some(candidate) = text.get(start..end)
            && before_ok
            && after_ok
            && crate::keyapi::is_key_shaped(candidate)
        {
            return Some(candidate);
        }
        from = start + 3;
    }
    None
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
        assert!(due[0].bootstrap, "the replaced key was the bootstrap key");
        assert_eq!(
            delete_checked(&client, KeyAuth::Key(&current), &state, &due[0])
                .await
                .unwrap(),
            DeleteOutcome::Deleted
        );
        assert_eq!(
            delete_checked(&client, KeyAuth::Key(&current), &state, &due[0])
                .await
                .unwrap(),
            DeleteOutcome::AlreadyGone
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
        // A failed rotation changes nothing but the recorded nonce, which
        // was saved before the POST.
        assert_eq!(state.current, before.current);
        assert_eq!(state.pending_deletions, before.pending_deletions);
        assert_eq!(state.creations.len(), 1);
        assert_eq!(keystate::load(&path).unwrap().unwrap(), state);
        // A key of this installation's name without a recorded nonce (made
        // by hand with that name, or by a clone of this state) is no orphan.
        f.server.create_key(&state.key_name(), 86_400);

        let deleted = sweep(&client, KeyAuth::Key(&key), &mut state, crate::now())
            .await
            .unwrap();
        assert_eq!(deleted, 1);
        let keys = f.server.keys();
        let live: Vec<&str> = keys
            .iter()
            .filter(|k| k.tm_delete.is_none())
            .map(|k| k.name.as_str())
            .collect();
        assert_eq!(live.len(), 4, "{live:?}");
        assert!(live.contains(&other.key_name().as_str()) && live.contains(&"hand made"));
        assert_eq!(
            live.iter().filter(|n| **n == state.key_name()).count(),
            1,
            "only the one without a nonce is left"
        );
        assert!(state.creations.is_empty(), "a swept key's nonce is forgotten");
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
        // Believable (this installation's name, a new id): deleted at once
        // by the caller, so it carries the id.
        match &e {
            RotateError::Unusable { key, reason } => {
                assert!(matches!(**reason, RotateError::Expired(_)), "{e}");
                assert!(f.server.keys().iter().any(|k| k.id == key.id));
            }
            other => panic!("not unusable: {other}"),
        }
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

    fn current(id: &str) -> CurrentKey {
        CurrentKey {
            id: id.into(),
            key: Secret::new(format!("vb_{id:0<32}")),
            tm_create: crate::now(),
            tm_expire: crate::now() + time::Duration::days(1),
            server_skew_seconds: 0,
            obtained_at: crate::now(),
            origin: Origin::Created,
            inherited: false,
        }
    }

    #[test]
    fn a_reread_state_wins_but_forgets_nothing_memory_knows() {
        let mut memory = KeyState::new("mcp");
        memory.current = Some(current("a"));
        memory.pending_deletions.push(PendingDeletion {
            id: "p".into(),
            prefix: "vb_pppppppp".into(),
            delete_after: Some(crate::now()),
            bootstrap: false,
        });
        // Another process rotated: b is current, a pending with a time.
        let mut disk = memory.clone();
        disk.current = Some(current("b"));
        disk.pending_deletions = vec![PendingDeletion {
            id: "a".into(),
            prefix: "vb_aaaaaaaa".into(),
            delete_after: Some(crate::now()),
            bootstrap: false,
        }];
        let merged = merge_reread(&memory, disk.clone()).unwrap();
        assert_eq!(merged.current.as_ref().unwrap().id, "b");
        let ids: Vec<&str> = merged.pending_deletions.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["a", "p"], "the file's entries first, then memory's");

        // The file does not know memory's current key: it is kept, pending
        // deletion without a time (its grace starts once b is published).
        disk.pending_deletions.clear();
        let merged = merge_reread(&memory, disk.clone()).unwrap();
        let a = merged.pending_deletions.iter().find(|p| p.id == "a").unwrap();
        assert_eq!(a.delete_after, None);

        // Another installation's file: memory is kept.
        let other = KeyState::new("mcp");
        assert!(merge_reread(&memory, other).is_none());
    }

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

    #[test]
    fn a_key_is_found_in_every_output_format_and_only_standing_alone() {
        let k = "vb_0123456789abcdefABCDEF0123456789";
        for text in [
            k.to_string(),
            format!("VOIPBIN_API_KEY={k}\nVOIPBIN_API_KEY_EXPIRES_AT=x\n"),
            format!("export VOIPBIN_API_KEY='{k}'\n"),
            format!("{{\"token\":\"{k}\"}}"),
            format!("xvb_1 vb_short {k}"),
        ] {
            assert_eq!(find_key(&text), Some(k), "{text}");
        }
        assert_eq!(find_key(&format!("{k}0")), None);
        assert_eq!(find_key(&format!("a{k}")), None);
        assert_eq!(find_key("vb_"), None);
        assert_eq!(find_key("é vb_ü"), None);
    }

    #[test]
    fn orphans_skip_known_expired_deleted_and_foreign_keys() {
        let mut state = KeyState::new("mcp");
        let now = crate::now();
        state.creations.push(keystate::Creation {
            nonce: "n1".into(),
            at: now,
        });
        let obj = |id: &str, name: &str, expire_in: i64, deleted: bool| KeyObject {
            id: id.into(),
            name: name.into(),
            token_prefix: "vb_12345678".into(),
            tm_create: now,
            tm_expire: now + time::Duration::seconds(expire_in),
            tm_delete: deleted.then_some(now),
            detail: "managed by voipbin-tokend; nonce=n1".into(),
        };
        let mine = state.key_name();
        let mut no_nonce = obj("f", &mine, 100, false);
        no_nonce.detail = "managed by voipbin-tokend".into();
        let mut other_nonce = obj("g", &mine, 100, false);
        other_nonce.detail = "nonce=n2".into();
        let listed = [
            no_nonce,
            other_nonce,
            obj("a", &mine, 100, false),
            obj("b", &mine, -1, false),
            obj("c", &mine, 100, true),
            obj("d", "voipbin-tokend/mcp/someoneelse", 100, false),
            obj("e", &format!("{mine}x"), 100, false),
        ];
        let found: Vec<String> = orphans(&state, &listed, now).into_iter().map(|k| k.id).collect();
        assert_eq!(found, ["a"]);
    }

    async fn rotate_once(f: &Fixture, state: &mut KeyState) -> Result<Created, RotateError> {
        let auth = state.current.as_ref().unwrap().key.clone();
        rotate(
            &f.client(),
            KeyAuth::Key(&auth),
            state,
            &f.path(),
            DAY,
            true,
            crate::now,
        )
        .await
    }

    #[tokio::test]
    async fn a_creation_answer_with_a_known_or_foreign_id_or_another_name_is_not_believed() {
        let f = Fixture::new();
        let mut state = f.bootstrapped().await;
        let (hand_id, _) = f.server.create_key("hand made", 86_400);
        for lie in [
            Fault::KeyAnswerId(f.boot_id.clone()),
            Fault::KeyAnswerId(hand_id.clone()),
            Fault::KeyAnswerName("hand made".into()),
        ] {
            f.server.script_key_creations([lie.clone()]);
            let before = state.current.clone();
            let e = rotate_once(&f, &mut state).await.unwrap_err();
            assert!(matches!(e, RotateError::NotBelieved(_)), "{lie:?}: {e}");
            assert_eq!(state.current, before, "{lie:?}");
            assert!(state.pending_deletions.is_empty());
        }
        // Nothing was deleted, and the three keys really made (with this
        // installation's name and a recorded nonce) are the orphans.
        assert!(f.server.keys().iter().all(|k| k.tm_delete.is_none()));
        assert_eq!(state.creations.len(), 3);
        let key = state.current.as_ref().unwrap().key.clone();
        let n = sweep(&f.client(), KeyAuth::Key(&key), &mut state, crate::now())
            .await
            .unwrap();
        assert_eq!(n, 3);
        let live: Vec<String> = f
            .server
            .keys()
            .into_iter()
            .filter(|k| k.tm_delete.is_none())
            .map(|k| k.id)
            .collect();
        assert_eq!(live, [f.boot_id.clone(), hand_id]);
    }

    #[tokio::test]
    async fn a_new_key_that_is_refused_when_tested_is_unusable_and_not_saved() {
        let f = Fixture::new();
        let mut state = f.bootstrapped().await;
        f.server.script_key_creations([Fault::KeyAnswerWrongToken]);
        let e = rotate_once(&f, &mut state).await.unwrap_err();
        match &e {
            RotateError::Unusable { reason, .. } => {
                assert!(matches!(**reason, RotateError::Refused(_)), "{e}")
            }
            other => panic!("not unusable: {other}"),
        }
        assert_eq!(state.current.as_ref().unwrap().id, f.boot_id);
        let on_disk = keystate::load(&f.path()).unwrap().unwrap();
        assert_eq!(on_disk.current.as_ref().unwrap().id, f.boot_id);
        // The tested call used the new key.
        let last = f.server.requests().into_iter().last().unwrap();
        assert_eq!(
            (last.method.as_str(), last.auth),
            ("GET", crate::standin::AuthVia::KeyCookie)
        );
    }

    #[tokio::test]
    async fn delete_checked_refuses_a_key_that_is_not_the_one_recorded() {
        let f = Fixture::new();
        let state = f.bootstrapped().await;
        let key = state.current.as_ref().unwrap().key.clone();
        let (hand_id, hand) = f.server.create_key("hand made", 86_400);
        let (mine_id, mine) = f.server.create_key(&state.key_name(), 86_400);
        let entry = |id: &str, secret: &str, bootstrap: bool| PendingDeletion {
            id: id.into(),
            prefix: prefix_of(secret).into(),
            delete_after: None,
            bootstrap,
        };
        let client = f.client();
        let auth = KeyAuth::Key(&key);
        // Another name, right prefix: refused.
        assert_eq!(
            delete_checked(&client, auth, &state, &entry(&hand_id, &hand, false))
                .await
                .unwrap(),
            DeleteOutcome::Refused
        );
        // This installation's name, wrong prefix: refused.
        assert_eq!(
            delete_checked(&client, auth, &state, &entry(&mine_id, &hand, false))
                .await
                .unwrap(),
            DeleteOutcome::Refused
        );
        // The recorded bootstrap key with a wrong prefix: refused.
        assert_eq!(
            delete_checked(&client, auth, &state, &entry(&hand_id, &mine, true))
                .await
                .unwrap(),
            DeleteOutcome::Refused
        );
        assert!(f.server.keys().iter().all(|k| k.tm_delete.is_none()));
        // Name and prefix match: deleted; then already gone.
        assert_eq!(
            delete_checked(&client, auth, &state, &entry(&mine_id, &mine, false))
                .await
                .unwrap(),
            DeleteOutcome::Deleted
        );
        assert_eq!(
            delete_checked(&client, auth, &state, &entry(&mine_id, &mine, false))
                .await
                .unwrap(),
            DeleteOutcome::AlreadyGone
        );
        // A bootstrap key by hand-made name with its prefix: deleted.
        assert_eq!(
            delete_checked(&client, auth, &state, &entry(&hand_id, &hand, true))
                .await
                .unwrap(),
            DeleteOutcome::Deleted
        );
    }

    #[tokio::test]
    async fn a_bootstrap_key_missing_from_a_list_cut_short_is_not_called_unlisted() {
        let f = Fixture::new();
        // The bootstrap key is the oldest of 150: on the second page, which
        // a server alternating its page tokens never gives.
        for i in 0..149 {
            f.server.create_key(&format!("k{i}"), 86_400);
        }
        f.server
            .set_key_list_paging(crate::standin::ListPaging::AlternatingTokens);
        let e = adopt_bootstrap(&f.client(), f.boot.clone(), crate::now())
            .await
            .unwrap_err();
        assert!(matches!(e, BootstrapError::ListCutShort(_)), "{e}");
        assert!(f.server.key_list_requests() <= 3);
    }

    #[tokio::test]
    async fn a_creation_answer_with_an_id_that_is_no_uuid_is_not_believed() {
        let f = Fixture::new();
        let mut state = f.bootstrapped().await;
        f.server
            .script_key_creations([Fault::KeyAnswerId("not-a-uuid".into())]);
        let e = rotate_once(&f, &mut state).await.unwrap_err();
        assert!(matches!(e, RotateError::NotBelieved(_)), "{e}");
    }
}
