//! Unit tests of the access-key source against the stand-in.

use std::time::Duration;

use super::bootstrap::{BootstrapError, adopt_bootstrap};
use super::housekeep::{
    DeleteOutcome, delete_checked, due_deletions, merge_reread, orphans, start_grace, sweep,
};
use super::restart::find_key;
use super::rotate::{RotateError, rotate};
use super::*;
use crate::api::ApiClient;
use crate::api::keys::{Created, KeyAuth, KeyClient, KeyObject};
use crate::state::keys::{CurrentKey, KeyState, Origin, PendingDeletion};
use voipbin_tokend_standin::{Fault, StandIn, StandInOptions};

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
        &mut None,
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
    assert!(start_grace(&mut state, Duration::from_secs(60), now, |_| false));
    assert!(due_deletions(&state, now, |_| false).is_empty());
    let due = due_deletions(&state, now + time::Duration::minutes(2), |_| false);
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
            &mut None,
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
async fn the_next_creation_uses_the_nonce_the_last_save_recorded_and_its_lost_answer_is_swept() {
    use std::os::unix::fs::MetadataExt;
    let f = Fixture::new();
    let (client, path) = (f.client(), f.path());
    let mut state = f.bootstrapped().await;
    let mut reserved = None;
    rotate_reserving(&f, &mut state, &mut reserved, crate::now)
        .await
        .unwrap();
    let nonce = reserved
        .clone()
        .expect("the save recorded the next creation's nonce");
    let saved = keystate::load(&path).unwrap().unwrap();
    assert_eq!(saved, state);
    assert_eq!(
        saved
            .creations
            .iter()
            .map(|c| c.nonce.as_str())
            .collect::<Vec<_>>(),
        [nonce.as_str()],
        "the used nonce is forgotten, the next one recorded"
    );
    let inode = std::fs::metadata(&path).unwrap().ino();

    // The next creation writes nothing before its POST; its answer is lost.
    let key = state.current.as_ref().unwrap().key.clone();
    f.server.script_keys([Fault::Close]);
    assert!(
        rotate_reserving(&f, &mut state, &mut reserved, crate::now)
            .await
            .is_err()
    );
    assert_eq!(reserved, None, "a reserved nonce is used once");
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        inode,
        "no save before the POST"
    );
    assert_eq!(keystate::load(&path).unwrap().unwrap(), saved);
    let made = f
        .server
        .keys()
        .into_iter()
        .find(|k| k.detail.contains(&nonce))
        .expect("the lost answer's key carries the recorded nonce");

    // So the sweep knows it for this installation's and deletes it.
    assert_eq!(
        sweep(&client, KeyAuth::Key(&key), &mut state, crate::now())
            .await
            .unwrap(),
        1
    );
    assert!(
        f.server
            .keys()
            .iter()
            .any(|k| k.id == made.id && k.tm_delete.is_some())
    );

    // Without a reservation (a new process), the nonce is saved first.
    f.server.script_keys([Fault::Close]);
    assert!(
        rotate_reserving(&f, &mut state, &mut reserved, crate::now)
            .await
            .is_err()
    );
    let on_disk = keystate::load(&path).unwrap().unwrap();
    assert_eq!(on_disk, state);
    assert_eq!(on_disk.creations.len(), 1);
}

#[tokio::test]
async fn a_nonce_reserved_more_than_a_lifetime_ago_is_not_used_but_kept() {
    let f = Fixture::new();
    let path = f.path();
    let mut state = f.bootstrapped().await;
    let mut reserved = None;
    rotate_reserving(&f, &mut state, &mut reserved, crate::now)
        .await
        .unwrap();
    let old = reserved.clone().unwrap();
    f.server.script_keys([Fault::Close]);
    let later = || crate::now() + time::Duration::days(1) + time::Duration::minutes(1);
    assert!(
        rotate_reserving(&f, &mut state, &mut reserved, later)
            .await
            .is_err()
    );
    let on_disk = keystate::load(&path).unwrap().unwrap();
    assert_eq!(on_disk, state);
    let nonces: Vec<&str> = on_disk.creations.iter().map(|c| c.nonce.as_str()).collect();
    assert_eq!(nonces.len(), 2, "{nonces:?}");
    assert_eq!(
        nonces[0], old,
        "kept: a key made with it may live a lifetime more"
    );
    assert!(
        f.server.keys().iter().any(|k| k.detail.contains(nonces[1])),
        "the creation carried a nonce saved just before it"
    );
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
        &mut None,
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
        &mut None,
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
    rotate_reserving(f, state, &mut None, crate::now).await
}

/// One rotation of a day-long key with the held key, carrying `reserved`
/// from the last one, at the time `now` tells.
async fn rotate_reserving(
    f: &Fixture,
    state: &mut KeyState,
    reserved: &mut Option<String>,
    now: impl Fn() -> time::OffsetDateTime,
) -> Result<Created, RotateError> {
    let auth = state.current.as_ref().unwrap().key.clone();
    rotate(
        &f.client(),
        KeyAuth::Key(&auth),
        state,
        &f.path(),
        DAY,
        true,
        reserved,
        now,
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
        ("GET", voipbin_tokend_standin::AuthVia::KeyCookie)
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
        .set_key_list_paging(voipbin_tokend_standin::ListPaging::AlternatingTokens);
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

#[test]
fn a_key_a_running_child_holds_starts_no_grace_and_is_never_due() {
    let mut state = KeyState::new("mcp");
    state.current = Some(current("c"));
    for id in ["held", "free"] {
        state.pending_deletions.push(PendingDeletion {
            id: id.into(),
            prefix: "vb_pppppppp".into(),
            delete_after: None,
            bootstrap: false,
        });
    }
    let now = crate::now();
    let in_use = |id: &str| id == "held";
    assert!(start_grace(&mut state, Duration::from_secs(60), now, in_use));
    let graced: Vec<&str> = state
        .pending_deletions
        .iter()
        .filter(|p| p.delete_after.is_some())
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(graced, ["free"]);
    // Even with a time (set before the child took it), a held key is not due.
    for p in &mut state.pending_deletions {
        p.delete_after = Some(now);
    }
    let due: Vec<String> = due_deletions(&state, now, in_use)
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(due, ["free"]);
    // Let go: its grace starts now.
    state.pending_deletions[0].delete_after = None;
    assert!(start_grace(&mut state, Duration::from_secs(60), now, |_| false));
    assert!(state.pending_deletions.iter().all(|p| p.delete_after.is_some()));
}
