//! A held key the server refuses: deleted while the daemon was stopped, or
//! one call answered 401. The daemon does not spin, keeps answering
//! health, is not ready (/readyz 503, status "refused") until a working key
//! reaches the outputs, stops at once on SIGTERM, and never overwrites a
//! working output key with the refused one.

use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;

use super::{WAIT, assert_idle, assert_output_stays, http_code, status_state};

// ---------------------------------------------------------------------------
// Item 1: a refused held key during housekeeping.

#[test]
fn a_held_key_deleted_while_stopped_does_not_spin_answers_health_and_a_fresh_bootstrap_key_heals() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    let (port, cfg) = with_health(&key_cred("renew-at = 0.9", &output("mcp.env", "env")));
    // Days of key life: the next rotation is far away, as in the field.
    let cfg = cfg.replace("lifetime = \"1d\"", "lifetime = \"30d\"");
    t.write_config(&s.base_url(), &cfg);
    let mut d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);

    // Deleted on the admin page while the daemon was stopped.
    assert!(s.delete_key(&k1_id));
    let mut d = t.daemon();
    d.wait_log("HTTP 401", 1, WAIT);
    assert_idle(&d, 4);
    assert_eq!(http_code(port, "/healthz"), Some(200), "/healthz answers");
    assert_eq!(
        http_code(port, "/readyz"),
        Some(503),
        "a refused key is not ready"
    );
    wait_for(
        WAIT,
        "status says refused",
        || status_state(&t) == "refused",
        || format!("{}\n{}", t.read("state/status.json").unwrap_or_default(), d.log()),
    );
    assert_eq!(env_key(&t, "mcp.env").unwrap(), k1, "the output stays as it is");
    let log = d.log();
    assert!(
        log.contains("bootstrap-key-file"),
        "the error points at bootstrap-key-file:\n{log}"
    );

    // A fresh key in the bootstrap file heals (the retry reads it again).
    let (_, fresh) = s.create_key("made again on the admin page", 86_400 * 365);
    write_key_file(&t, &fresh);
    let k2 = wait_env_key(&t, "mcp.env", &[&k1, &fresh], &d);
    assert!(k2.starts_with("vb_"));
    wait_for(
        WAIT,
        "ready again",
        || http_code(port, "/readyz") == Some(200),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
    assert_no_keys(&d.log(), &s);
    assert_no_keys(&t.read("state/status.json").unwrap_or_default(), &s);
}

#[test]
fn one_delete_answered_401_does_not_spin_answers_health_and_sigterm_stops_at_once() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    // The bootstrap key's deletion (after the grace) is answered 401.
    s.script_key_deletions([Fault::status(401)]);
    let (port, cfg) = with_health(&key_cred("renew-at = 0.9", &output("mcp.env", "env")));
    let cfg = cfg.replace("lifetime = \"1d\"", "lifetime = \"30d\"");
    t.write_config(&s.base_url(), &cfg);
    let mut d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    d.wait_log("HTTP 401", 1, WAIT);
    assert_idle(&d, 4);
    assert_eq!(http_code(port, "/healthz"), Some(200), "/healthz answers");
    // The renewal path took over: the bootstrap file's key (still alive)
    // made a successor, and every replaced key is deleted after its grace.
    let k2 = wait_env_key(&t, "mcp.env", &[&boot, &k1], &d);
    let name = my_key_name(&t);
    wait_for(
        WAIT,
        "only the current key alive",
        || s.live_keys_named(&name) == 1 && key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || format!("{:#?}\n{}", s.keys(), d.log()),
    );
    assert_eq!(env_key(&t, "mcp.env").unwrap(), k2);
    wait_for(
        WAIT,
        "ready",
        || http_code(port, "/readyz") == Some(200),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
}

#[test]
fn sigterm_stops_a_daemon_holding_a_refused_key_at_once() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let mut d = t.daemon();
    wait_env_key(&t, "mcp.env", &[&boot], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
    assert!(s.delete_key(&k1_id));
    let mut d = t.daemon();
    d.wait_log("HTTP 401", 1, WAIT);
    std::thread::sleep(Duration::from_millis(1500));
    // SIGHUP and SIGUSR1 are heard, SIGTERM stops it within 5 s.
    d.signal(Signal::SIGUSR1);
    d.wait_log("renewal requested", 1, WAIT);
    stop(&mut d, Signal::SIGTERM);
}

// ---------------------------------------------------------------------------
// Item 6: readiness means not refused; the grace starts after publication.

#[test]
fn a_key_refused_while_running_makes_readyz_503_and_status_refused_until_a_working_key_is_held() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    let (port, cfg) = with_health(&key_cred("renew-at = 0.9", &output("mcp.env", "env")));
    t.write_config(
        &s.base_url(),
        &cfg.replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "the bootstrap key deleted and ready",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some() && http_code(port, "/readyz") == Some(200),
        || d.log(),
    );
    assert_eq!(status_state(&t), "fresh");

    assert!(s.delete_key(&k1_id));
    d.signal(Signal::SIGUSR1);
    d.wait_log("HTTP 401", 1, WAIT);
    wait_for(
        WAIT,
        "/readyz 503",
        || http_code(port, "/readyz") == Some(503),
        || d.log(),
    );
    wait_for(
        WAIT,
        "status says refused",
        || status_state(&t) == "refused",
        || t.read("state/status.json").unwrap_or_default(),
    );
    let status = t.run(&["status", "-c", "config.toml"]);
    assert_ne!(status.status.code(), Some(0), "{}", both(&status));
    assert!(both(&status).contains("refused"), "{}", both(&status));
    assert_eq!(env_key(&t, "mcp.env").unwrap(), k1, "the output stays as it is");

    let (_, fresh) = s.create_key("made again on the admin page", 86_400 * 365);
    write_key_file(&t, &fresh);
    d.signal(Signal::SIGUSR1);
    wait_env_key(&t, "mcp.env", &[&k1, &fresh], &d);
    wait_for(
        WAIT,
        "/readyz 200 again",
        || http_code(port, "/readyz") == Some(200),
        || d.log(),
    );
    wait_for(
        WAIT,
        "status fresh again",
        || status_state(&t) == "fresh",
        || t.read("state/status.json").unwrap_or_default(),
    );
}

#[test]
fn the_replaced_keys_grace_starts_only_once_every_output_holds_the_successor() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, _) = bootstrap(&s, &t, 365);
    // The output's directory does not exist: the new key is made and saved
    // but reaches no output.
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("out/mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let d = t.daemon();
    wait_for(
        WAIT,
        "a key saved in the state",
        || {
            t.read("state/keys/mcp.json")
                .is_some_and(|s| s.contains("\"origin\": \"created\""))
        },
        || d.log(),
    );
    d.wait_log("does not exist", 1, WAIT);
    // Well past the grace (1 s): the bootstrap key lives, its grace unset.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        key_named(&s.keys(), &boot_id).tm_delete.is_none(),
        "the replaced key was deleted before any output held its successor\n{}",
        d.log()
    );
    assert!(state_json(&t)["pending_deletions"][0]["delete_after"].is_null());

    std::fs::create_dir(t.path("out")).unwrap();
    wait_env_key(&t, "out/mcp.env", &[], &d);
    wait_for(
        WAIT,
        "the bootstrap key deleted after the grace",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    let deleted = key_named(&s.keys(), &boot_id).tm_delete.unwrap();
    let written = mtime(&t.path("out/mcp.env"));
    let after = deleted.duration_since(written).unwrap_or_default();
    assert!(
        after >= Duration::from_millis(900),
        "deleted {after:?} after the output held the successor (grace 1 s)"
    );
}

#[test]
fn a_refused_key_stays_not_ready_until_a_successor_reaches_the_outputs() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    let (port, cfg) = with_health(&key_cred("renew-at = 0.9", &output("mcp.env", "env")));
    t.write_config(
        &s.base_url(),
        &cfg.replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    assert!(s.delete_key(&k1_id));
    d.signal(Signal::SIGUSR1);
    d.wait_log("HTTP 401", 1, WAIT);
    // A fresh bootstrap key is adopted, but making its successor fails a
    // few times: the outputs still hold the refused key, so not ready.
    s.script_key_creations(std::iter::repeat_n(Fault::status(503), 6));
    let (_, fresh) = s.create_key("made again on the admin page", 86_400 * 365);
    write_key_file(&t, &fresh);
    d.signal(Signal::SIGUSR1);
    d.wait_log("HTTP 503", 1, WAIT);
    assert_eq!(env_key(&t, "mcp.env").unwrap(), k1);
    assert_eq!(http_code(port, "/readyz"), Some(503), "{}", d.log());
    wait_env_key(&t, "mcp.env", &[&k1, &fresh], &d);
    wait_for(
        WAIT,
        "/readyz 200 once the successor is written",
        || http_code(port, "/readyz") == Some(200),
        || d.log(),
    );
}

#[test]
fn a_refused_state_key_never_overwrites_a_working_key_in_the_outputs_nor_is_that_key_deleted() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let mut d = t.daemon();
    wait_env_key(&t, "mcp.env", &[&boot], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
    // While stopped: the state's key is deleted, and someone put a working
    // hand-made key into the output.
    assert!(s.delete_key(&k1_id));
    let (hand_id, hand) = s.create_key("my script's key", 86_400 * 365);
    std::fs::write(t.path("mcp.env"), format!("VOIPBIN_API_KEY={hand}\n")).unwrap();

    let d = t.daemon();
    assert_output_stays(&t, &hand, 4, &d);
    d.wait_log("HTTP 401", 1, WAIT);
    // A fresh bootstrap key: the next key replaces it in the output; the
    // hand-made key itself is left alone on the server.
    let (_, fresh) = s.create_key("made again on the admin page", 86_400 * 365);
    write_key_file(&t, &fresh);
    d.signal(Signal::SIGUSR1);
    wait_env_key(&t, "mcp.env", &[&hand, &fresh], &d);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        key_named(&s.keys(), &hand_id).tm_delete.is_none(),
        "the hand-made key was deleted\n{}",
        d.log()
    );
    assert_no_keys(&d.log(), &s);
}
