//! A state file restored from a backup (older than the keys in the
//! outputs): its dead key is not published over the working output key,
//! and a key it still names is not deleted at once.

use crate::support::*;
use nix::sys::signal::Signal;

use super::{WAIT, assert_output_stays};

// ---------------------------------------------------------------------------
// Item 4: a restored state file.

/// Runs a daemon until k1 replaced the bootstrap key, saves the state file,
/// rotates to k2 and stops. Returns (k1, k1 id, k2, the saved older state).
fn rotate_twice_keeping_the_first_state(
    s: &StandIn,
    t: &TestDir,
    grace: &str,
) -> (String, String, String, String) {
    let (boot_id, boot) = bootstrap(s, t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"30d\"")
            .replace("grace = \"1s\"", &format!("grace = \"{grace}\"")),
    );
    let mut d = t.daemon();
    let k1 = wait_env_key(t, "mcp.env", &[&boot], &d);
    wait_for(
        WAIT,
        "the bootstrap key's deletion done",
        || {
            key_named(&s.keys(), &boot_id).tm_delete.is_some()
                || grace != "1s" && state_json(t)["pending_deletions"][0]["delete_after"].is_string()
        },
        || d.log(),
    );
    if grace == "1s" {
        wait_for(
            WAIT,
            "the deletion saved",
            || state_json(t)["pending_deletions"].as_array().unwrap().is_empty(),
            || d.log(),
        );
    }
    let k1_id = state_json(t)["current"]["id"].as_str().unwrap().to_owned();
    let older = t.read("state/keys/mcp.json").unwrap();
    d.signal(Signal::SIGUSR1);
    let k2 = wait_env_key(t, "mcp.env", &[&boot, &k1], &d);
    if grace == "1s" {
        wait_for(
            WAIT,
            "k1 deleted after its grace",
            || key_named(&s.keys(), &k1_id).tm_delete.is_some(),
            || d.log(),
        );
    }
    stop(&mut d, Signal::SIGTERM);
    (k1, k1_id, k2, older)
}

#[test]
fn a_restored_older_state_does_not_publish_its_dead_key_over_the_working_output_key() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, _, k2, older) = rotate_twice_keeping_the_first_state(&s, &t, "1s");
    let k2_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    // The backup of the older state is restored over the newer one.
    std::fs::write(t.path("state/keys/mcp.json"), older).unwrap();
    let made = posts(&s);

    let d = t.daemon();
    assert_output_stays(&t, &k2, 4, &d);
    d.wait_log("keeping the working key", 1, WAIT);
    assert_eq!(
        state_json(&t)["current"]["id"],
        k2_id.as_str(),
        "the kept key is current"
    );
    assert_eq!(posts(&s), made, "no key made: the output's key works");
    assert!(key_named(&s.keys(), &k2_id).tm_delete.is_none());
    d.wait_log("every credential has a fresh token on disk", 1, WAIT);
    assert_no_keys(&d.log(), &s);
}

#[test]
fn a_restored_older_state_whose_key_still_lives_keeps_the_newer_output_key_and_deletes_neither_at_once() {
    let s = key_standin();
    let t = TestDir::new();
    // A long grace: k1 still lives when the older state comes back.
    let (_, k1_id, k2, older) = rotate_twice_keeping_the_first_state(&s, &t, "1h");
    let k2_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    std::fs::write(t.path("state/keys/mcp.json"), older).unwrap();

    let d = t.daemon();
    assert_output_stays(&t, &k2, 4, &d);
    d.wait_log("keeping the working key", 1, WAIT);
    let state = state_json(&t);
    assert_eq!(state["current"]["id"], k2_id.as_str());
    assert!(
        state["left_to_expire"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == k1_id.as_str()),
        "the older key is left to expire (a restored state is a new installation, which never deletes an inherited key): {state}"
    );
    let keys = s.keys();
    assert!(
        key_named(&keys, &k2_id).tm_delete.is_none(),
        "the newer key is not swept as an orphan"
    );
    assert!(key_named(&keys, &k1_id).tm_delete.is_none(), "the grace runs");
}

#[test]
fn with_an_agent_login_a_restored_older_state_keeps_the_working_output_key() {
    let s = key_standin();
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &format!(
            "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nusername = \"{USER}\"\npassword-file = \"password\"\n\
             lifetime = \"30d\"\ngrace = \"1s\"\nretry-min = \"100ms\"\nretry-max = \"1s\"\n\n{}",
            output("mcp.env", "env")
        ),
    );
    let mut d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    let older = t.read("state/keys/mcp.json").unwrap();
    d.signal(Signal::SIGUSR1);
    let k2 = wait_env_key(&t, "mcp.env", &[&k1], &d);
    let k2_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "k1 deleted after its grace",
        || key_named(&s.keys(), &k1_id).tm_delete.is_some(),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
    std::fs::write(t.path("state/keys/mcp.json"), older).unwrap();
    let made = posts(&s);

    let mut d = t.daemon();
    assert_output_stays(&t, &k2, 4, &d);
    d.wait_log("keeping the working key", 1, WAIT);
    assert_eq!(state_json(&t)["current"]["id"], k2_id.as_str());
    assert_eq!(posts(&s), made, "no key made: the output's key works");
    assert!(key_named(&s.keys(), &k2_id).tm_delete.is_none());
    stop(&mut d, Signal::SIGTERM);
    assert_no_keys(&d.log(), &s);
}
