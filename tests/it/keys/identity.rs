//! Whose key is it? (issue 14, items 5, 7, 8, 12): the binary against a
//! stand-in that lies, checking which keys the daemon believes, publishes
//! and deletes.
//!
//! - a cloned state dir starts a new installation and never deletes the
//!   other host's keys;
//! - every DELETE is looked up first and refused for a key that is not the
//!   one recorded; a creation answer is believed only if new and matching,
//!   and a new key is tested with itself before it is saved or published;
//! - a key list that never ends costs a bounded number of requests;
//! - one bootstrap key file per credential; a renamed credential keeps its
//!   key state.

use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;
use voipbin_tokend_standin::{KeyInfo, ListPaging};

/// The wait of `wait_env_key`.
const WAIT: Duration = SLOW_WAIT;

/// A self-rotating key credential "mcp" living 30 (scaled) days, so no
/// rotation falls due by itself during a test, with `extra` and `outputs`.
fn key_cred_30d(extra: &str, outputs: &str) -> String {
    format!(
        "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\n\
         lifetime = \"30d\"\nretry-min = \"100ms\"\nretry-max = \"1s\"\nrenew-at = 0.9\n{extra}\n{outputs}"
    )
}

fn deleted(s: &StandIn) -> Vec<KeyInfo> {
    s.keys().into_iter().filter(|k| k.tm_delete.is_some()).collect()
}

// ---------------------------------------------------------------------------
// Item 5: a cloned state dir.

#[test]
fn a_cloned_state_dir_starts_a_new_installation_and_never_deletes_the_other_hosts_keys() {
    let s = key_standin();
    // Host A: a long grace, so the key it replaces stays alive.
    let a = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &a, 365);
    a.write_config(
        &s.base_url(),
        &key_cred_30d("grace = \"1h\"", &output("mcp.env", "env")),
    );
    let da = a.daemon();
    let k1 = wait_env_key(&a, "mcp.env", &[&boot], &da);
    let k1_id = info_of(&s, &k1).id;
    let a_name = my_key_name(&a);

    // The state dir is copied to host B (a restored backup, a copied volume).
    let b = TestDir::new();
    std::fs::create_dir_all(b.path("state/keys")).unwrap();
    std::fs::copy(a.path("state/keys/mcp.json"), b.path("state/keys/mcp.json")).unwrap();
    write_key_file(&b, &boot);
    b.write_config(
        &s.base_url(),
        &key_cred_30d("grace = \"1s\"", &output("mcp.env", "env")),
    );

    // A rotates: K2 is A's published key, unknown to the copy.
    da.signal(Signal::SIGUSR1);
    let k2 = wait_env_key(&a, "mcp.env", &[&boot, &k1], &da);
    let k2_id = info_of(&s, &k2).id;

    // B starts from the copy: a new installation, with a warning naming the file.
    let db = b.daemon();
    db.wait_log("this is a new installation", 1, WAIT);
    assert_eq!(
        wait_env_key(&b, "mcp.env", &[], &db),
        k1,
        "the inherited key is used"
    );
    let log = db.log();
    assert!(
        log.contains("state/keys/mcp.json") && log.contains("copy"),
        "{log}"
    );
    let b_state = state_json(&b);
    assert_ne!(
        my_key_name(&b),
        a_name,
        "a new installation id\n{b_state}\n{}",
        db.log()
    );
    assert_eq!(
        b_state["current"]["id"],
        k1_id.as_str(),
        "the inherited key is used"
    );
    assert_eq!(b_state["current"]["inherited"], true);
    assert!(
        b_state["pending_deletions"].as_array().unwrap().is_empty(),
        "the deletions A owes are not B's: {b_state}"
    );

    // B replaces the inherited key: it is left to expire, not deleted.
    db.signal(Signal::SIGUSR1);
    let k3 = wait_env_key(&b, "mcp.env", &[&k1], &db);
    db.wait_log("left to expire, not deleted", 1, WAIT);
    let b_state = state_json(&b);
    assert_eq!(b_state["left_to_expire"][0]["id"], k1_id.as_str(), "{b_state}");
    // Past B's grace (1 s) and its sweeps: nothing of A's is touched.
    std::thread::sleep(Duration::from_secs(3));
    let keys = s.keys();
    for (what, id) in [
        ("A's current key", &k2_id),
        ("the inherited key", &k1_id),
        ("the bootstrap key", &boot_id),
    ] {
        assert!(
            key_named(&keys, id).tm_delete.is_none(),
            "{what} was deleted\nB:\n{}\nA:\n{}",
            db.log(),
            da.log()
        );
    }
    assert_eq!(env_key(&a, "mcp.env").as_deref(), Some(k2.as_str()));
    assert_eq!(info_of(&s, &k3).name, my_key_name(&b));
    assert_no_keys(&db.log(), &s);
}

#[test]
fn a_key_with_this_installations_name_but_no_recorded_nonce_is_never_swept() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred_30d("grace = \"1s\"", &output("mcp.env", "env")),
    );
    let mut d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    stop(&mut d, Signal::SIGTERM);
    // A key of the same name this installation never made (a clone that
    // kept machine id and inode, e.g. a VM snapshot started twice; or by
    // hand), and one whose creation was recorded by the clone, not here.
    let name = my_key_name(&t);
    let (twin_id, _) = s.create_key(&name, 86_400 * 365);
    // The start-up sweep runs and leaves it alone.
    let d = daemon_with(&t, "voipbin_tokend=debug", &[]);
    d.wait_log("reusing the key in the key state", 1, WAIT);
    s.script_key_creations([Fault::Close]);
    d.signal(Signal::SIGUSR1);
    // A lost answer: the orphan with the recorded nonce is swept, the twin not.
    let k2 = wait_env_key(&t, "mcp.env", &[&boot, &k1], &d);
    wait_for(
        WAIT,
        "the orphan deleted",
        || {
            s.keys()
                .iter()
                .any(|k| k.name == name && k.tm_delete.is_some() && k.token_prefix != k1[..11])
        },
        || format!("{:#?}\n{}", s.keys(), d.log()),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        key_named(&s.keys(), &twin_id).tm_delete.is_none(),
        "a key without this installation's nonce is not its orphan\n{}",
        d.log()
    );
    assert!(info_of(&s, &k2).tm_delete.is_none());
}

// ---------------------------------------------------------------------------
// Item 7: whose id is it?

#[test]
fn a_creation_answer_with_a_hand_made_keys_id_or_another_name_is_not_believed_and_deletes_nothing() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    let (hand_id, _) = s.create_key("my script's key", 86_400 * 365);
    s.script_key_creations([
        Fault::KeyAnswerId(hand_id.clone()),
        Fault::KeyAnswerName("my script's key".into()),
    ]);
    t.write_config(
        &s.base_url(),
        &key_cred_30d("grace = \"1s\"", &output("mcp.env", "env")),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    d.wait_log("is not believed", 2, WAIT);
    assert_eq!(posts(&s), 3, "two answers not believed, then a good one");
    // The two keys really made for the lying answers carry this
    // installation's name and a recorded nonce: the sweep deletes them; the
    // bootstrap key goes after its grace. Nothing else.
    let name = my_key_name(&t);
    wait_for(
        WAIT,
        "the bootstrap key and the two orphans deleted",
        || deleted(&s).len() == 3,
        || format!("{:#?}\n{}", s.keys(), d.log()),
    );
    std::thread::sleep(Duration::from_millis(500));
    let gone = deleted(&s);
    assert_eq!(gone.len(), 3, "{gone:#?}");
    assert!(gone.iter().any(|k| k.id == boot_id));
    assert_eq!(gone.iter().filter(|k| k.name == name).count(), 2, "{gone:#?}");
    let keys = s.keys();
    assert!(
        key_named(&keys, &hand_id).tm_delete.is_none(),
        "the hand-made key lives"
    );
    assert!(info_of(&s, &k1).tm_delete.is_none());
    assert_no_keys(&d.log(), &s);
}

#[test]
fn a_creation_answer_with_the_current_keys_id_deletes_nothing_but_the_orphan() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred_30d(
            "grace = \"1s\"\ndelete-replaced = false",
            &output("mcp.env", "env"),
        ),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    let k1_id = info_of(&s, &k1).id;
    s.script_key_creations([Fault::KeyAnswerId(k1_id.clone())]);
    d.signal(Signal::SIGUSR1);
    let k2 = wait_env_key(&t, "mcp.env", &[&boot, &k1], &d);
    d.wait_log("already holds", 1, WAIT);
    // Only the key made for the lying answer (not the current key, whose
    // id it carried) is deleted, by the sweep.
    wait_for(
        WAIT,
        "the orphan deleted",
        || deleted(&s).len() == 1,
        || format!("{:#?}\n{}", s.keys(), d.log()),
    );
    std::thread::sleep(Duration::from_millis(500));
    let gone = deleted(&s);
    assert_eq!(gone.len(), 1, "{gone:#?}");
    assert_ne!(gone[0].id, k1_id);
    assert_eq!(gone[0].name, my_key_name(&t));
    assert_ne!(gone[0].token_prefix, k2[..11]);
}

#[test]
fn an_edited_pending_deletion_naming_a_hand_made_key_deletes_nothing_and_is_dropped() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    let (hand_id, hand) = s.create_key("my script's key", 86_400 * 365);
    let (hand2_id, _) = s.create_key("another script's key", 86_400 * 365);
    t.write_config(
        &s.base_url(),
        &key_cred_30d(
            "grace = \"1s\"\ndelete-replaced = false",
            &output("mcp.env", "env"),
        ),
    );
    let mut d = t.daemon();
    wait_env_key(&t, "mcp.env", &[&boot], &d);
    stop(&mut d, Signal::SIGTERM);

    // Someone edits the state (in place): a pending deletion with the
    // hand-made key's id and prefix, and one claiming to be the bootstrap
    // key with a prefix that is not that key's.
    let mut state = state_json(&t);
    state["pending_deletions"] = serde_json::json!([
        {"id": hand_id, "prefix": &hand[..11], "delete_after": "2020-01-01T00:00:00Z"},
        {"id": hand2_id, "prefix": "vb_XXXXXXXX", "delete_after": "2020-01-01T00:00:00Z", "bootstrap": true},
    ]);
    std::fs::write(
        t.path("state/keys/mcp.json"),
        serde_json::to_string_pretty(&state).unwrap(),
    )
    .unwrap();

    let d = t.daemon();
    d.wait_log("refusing to delete a key that is not the one recorded", 2, WAIT);
    wait_for(
        WAIT,
        "the refused entries dropped from the state",
        || {
            state_json(&t)["pending_deletions"]
                .as_array()
                .is_some_and(|p| p.is_empty())
        },
        || d.log(),
    );
    let log = d.log();
    assert!(log.contains(&hand_id) && log.contains("my script's key"), "{log}");
    assert!(deleted(&s).is_empty(), "{:#?}", s.keys());
    assert_no_keys(&log, &s);
}

#[test]
fn a_new_key_that_fails_its_test_call_is_never_saved_or_published() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    // The first creation answers a secret the server does not accept.
    s.script_key_creations([Fault::KeyAnswerWrongToken]);
    t.write_config(
        &s.base_url(),
        &key_cred_30d("grace = \"1s\"", &output("mcp.env", "env")),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    d.wait_log("does not work", 1, WAIT);
    assert!(
        s.issued_keys().contains(&k1),
        "the published key is one the server issued"
    );
    assert_eq!(state_json(&t)["current"]["key"], k1.as_str());
    // The unusable key is an orphan of this installation: swept.
    let name = my_key_name(&t);
    let first = s
        .keys()
        .into_iter()
        .find(|k| k.name == name)
        .expect("the first key made");
    assert_ne!(first.token_prefix, k1[..11], "the published key is the second");
    wait_for(
        WAIT,
        "the unusable key deleted",
        || key_named(&s.keys(), &first.id).tm_delete.is_some(),
        || d.log(),
    );
}

// ---------------------------------------------------------------------------
// Item 8: a key list that never ends.

#[test]
fn a_key_list_that_never_ends_costs_a_bounded_number_of_requests() {
    for paging in [ListPaging::AlternatingTokens, ListPaging::EndlessOneKeyPerPage] {
        let s = key_standin();
        let t = TestDir::new();
        // The bootstrap key is the only key: it is on every page.
        let (_, boot) = bootstrap(&s, &t, 365);
        s.set_key_list_paging(paging);
        t.write_config(
            &s.base_url(),
            &key_cred_30d("grace = \"1s\"", &output("mcp.env", "env")),
        );
        let d = t.daemon();
        // Adopting the bootstrap key lists; the start-up sweep lists.
        let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
        // A creation whose answer is lost asks for another sweep.
        s.script_key_creations([Fault::Close]);
        d.signal(Signal::SIGUSR1);
        wait_env_key(&t, "mcp.env", &[&boot, &k1], &d);
        std::thread::sleep(Duration::from_secs(2));
        let lists = s.key_list_requests();
        // A handful of walks of at most a few pages each; without the
        // bounds, one walk alone is thousands of requests.
        assert!(lists <= 30, "{paging:?}: {lists} list requests\n{}", d.log());
    }
}

// ---------------------------------------------------------------------------
// Item 12: shared bootstrap file, renamed credential.

#[test]
fn two_credentials_sharing_one_bootstrap_key_file_under_any_spelling_are_a_config_error_78() {
    let s = key_standin();
    let t = TestDir::new();
    bootstrap(&s, &t, 365);
    std::os::unix::fs::symlink(t.path("boot.key"), t.path("link.key")).unwrap();
    std::fs::hard_link(t.path("boot.key"), t.path("hard.key")).unwrap();
    std::fs::create_dir(t.path("sub")).unwrap();
    let absolute = t.path("boot.key").display().to_string();
    for second in [
        "boot.key",
        "./boot.key",
        "sub/../boot.key",
        "link.key",
        "hard.key",
        absolute.as_str(),
    ] {
        let cred = |name: &str, file: &str, out: &str| {
            format!(
                "[[credential]]\nname = \"{name}\"\nkind = \"access-key\"\nbootstrap-key-file = \"{file}\"\n\n{}",
                output(out, "env")
            )
        };
        t.write_config(
            &s.base_url(),
            &format!(
                "{}{}",
                cred("mcp", "boot.key", "a.env"),
                cred("other", second, "b.env")
            ),
        );
        for cmd in ["check", "run"] {
            let out = t.run(&[cmd, "-c", "config.toml"]);
            let text = both(&out);
            assert_eq!(out.status.code(), Some(78), "{cmd} {second}: {text}");
            assert!(
                text.contains("credential[other].bootstrap-key-file")
                    && text.contains("credential[mcp].bootstrap-key-file")
                    && text.contains("same file"),
                "{cmd} {second}: {text}"
            );
        }
    }
    // Two files: fine.
    write_key_file_as(&t, "second.key", &s.create_key("another", 86_400 * 365).1);
    let cred2 =
        "[[credential]]\nname = \"other\"\nkind = \"access-key\"\nbootstrap-key-file = \"second.key\"\n\n";
    t.write_config(
        &s.base_url(),
        &format!(
            "{}{cred2}{}",
            key_cred_30d("", &output("a.env", "env")),
            output("b.env", "env")
        ),
    );
    let out = t.run(&["check", "-c", "config.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
}

#[test]
fn renaming_a_key_credential_on_reload_keeps_its_key_and_the_deletions_it_owes() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred_30d("grace = \"4s\"", &output("mcp.env", "env")),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    wait_for(
        WAIT,
        "the grace recorded",
        || state_json(&t)["pending_deletions"][0]["delete_after"].is_string(),
        || d.log(),
    );
    let made = posts(&s);
    // Renamed (bootstrap-key-file spelt differently), in one reload.
    t.write_config(
        &s.base_url(),
        &key_cred_30d("grace = \"4s\"", &output("mcp.env", "env"))
            .replace("name = \"mcp\"", "name = \"mcp-renamed\"")
            .replace("\"boot.key\"", "\"./boot.key\""),
    );
    d.signal(Signal::SIGHUP);
    d.wait_log(
        "its key state (the current key and the deletions still owed) is kept",
        1,
        WAIT,
    );
    assert!(t.read("state/keys/mcp.json").is_none(), "moved, not copied");
    let state = key_state_json(&t, "mcp-renamed");
    assert_eq!(state["current"]["key"], k1.as_str());
    if key_named(&s.keys(), &boot_id).tm_delete.is_none() {
        assert_eq!(state["pending_deletions"][0]["id"], boot_id.as_str(), "{state}");
    }
    // The owed deletion is carried out by the renamed credential, and the
    // key is neither made anew nor taken from the (deleted) bootstrap key.
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    wait_for(
        WAIT,
        "the deletion saved",
        || {
            key_state_json(&t, "mcp-renamed")["pending_deletions"]
                .as_array()
                .is_some_and(|p| p.is_empty())
        },
        || d.log(),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(posts(&s), made, "no new key");
    assert_eq!(env_key(&t, "mcp.env").as_deref(), Some(k1.as_str()));
    let log = d.log();
    assert_eq!(
        log.matches("adopted the key in bootstrap-key-file").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("was refused"), "{log}");
}
