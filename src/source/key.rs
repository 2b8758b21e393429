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

/// The skew to apply, from a `Date`-header estimate: small ones are noise.
pub fn skew_seconds(server_skew: Option<time::Duration>) -> i64 {
    server_skew
        .filter(|s| s.abs() > SKEW_IGNORED)
        .map_or(0, |s| s.whole_seconds())
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
    let expires_here = created.object.tm_expire - time::Duration::seconds(skew);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiClient;
    use crate::config::ApiConfig;
    use crate::standin::{Fault, StandIn, StandInOptions};

    fn api_for(server: &StandIn) -> ApiClient {
        ApiClient::new(&ApiConfig {
            base_url: server.base_url().parse().unwrap(),
            timeout: Duration::from_secs(5),
            ca_file: None,
            max_logins_per_second: 0,
        })
        .unwrap()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[tokio::test]
    async fn bootstrap_then_rotate_persists_before_returning_and_queues_the_old_key() {
        let server = StandIn::start(StandInOptions::default()).unwrap();
        let api = api_for(&server);
        let client = KeyClient::new(&api);
        let dir = tempfile::tempdir().unwrap();
        let path = keystate::path(dir.path(), "mcp");
        let (boot_id, boot) = server.create_key("admin page", 86_400);

        let mut state = KeyState::new("mcp");
        state.current = Some(
            adopt_bootstrap(&client, Secret::new(boot.clone()), crate::now())
                .await
                .unwrap(),
        );
        assert_eq!(state.current.as_ref().unwrap().id, boot_id);

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
        assert_eq!(on_disk.pending_deletions[0].id, boot_id);
        assert_eq!(
            on_disk.pending_deletions[0].delete_after, None,
            "grace starts once published"
        );
        let names: Vec<String> = server.keys().into_iter().map(|k| k.name).collect();
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
            server
                .keys()
                .iter()
                .any(|k| k.id == boot_id && k.tm_delete.is_some())
        );
    }

    #[tokio::test]
    async fn a_lost_answer_leaves_an_orphan_that_the_sweep_deletes_and_nothing_else() {
        let server = StandIn::start(StandInOptions::default()).unwrap();
        let api = api_for(&server);
        let client = KeyClient::new(&api);
        let dir = tempfile::tempdir().unwrap();
        let path = keystate::path(dir.path(), "mcp");
        let (_, boot) = server.create_key("admin page", 86_400);
        let mut state = KeyState::new("mcp");
        state.current = Some(
            adopt_bootstrap(&client, Secret::new(boot), crate::now())
                .await
                .unwrap(),
        );
        let key = state.current.as_ref().unwrap().key.clone();
        // Another installation's key with the same credential name, and a
        // key someone made by hand: neither may be touched.
        let other = KeyState::new("mcp");
        server.create_key(&other.key_name(), 86_400);
        server.create_key("hand made", 86_400);

        server.script_keys([Fault::Close]);
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
        let keys = server.keys();
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
        let server = StandIn::start(StandInOptions::default()).unwrap();
        let api = api_for(&server);
        let client = KeyClient::new(&api);
        let dir = tempfile::tempdir().unwrap();
        let path = keystate::path(dir.path(), "mcp");
        let (_, boot) = server.create_key("admin page", 86_400);
        let boot = Secret::new(boot);
        let mut state = KeyState::new("mcp");
        server.script_keys([Fault::Expired]);
        let e = rotate(
            &client,
            KeyAuth::Key(&boot),
            &mut state,
            &path,
            DAY,
            true,
            crate::now,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RotateError::Expired(_)), "{e}");
        assert!(state.current.is_none());
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
