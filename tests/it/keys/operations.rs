//! Operating access keys next to a running daemon and after accidents:
//! `once` beside a daemon, a key state changed by another process, temp
//! files a `kill -9` left in the state directory, deletions that keep
//! failing. The binary against the stand-in's key API (a key time scale
//! makes a day last seconds).

use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Item 3: `once` beside a running daemon.

#[test]
fn once_beside_a_running_daemon_asks_it_to_rotate_and_never_deletes_the_key_it_holds() {
    let s = key_standin_scaled(120.0);
    let t = TestDir::new();
    bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env")),
    );
    let d = t.daemon();
    let boot = std::fs::read_to_string(t.path("boot.key")).unwrap();
    let k1 = wait_env_key_within(WAIT, &t, "mcp.env", &[boot.trim()], &d);
    wait_for(
        WAIT,
        "the status file with the key",
        || {
            t.read("state/status.json")
                .is_some_and(|s| s.contains("\"fresh\": true"))
        },
        || d.log(),
    );

    // Not due: `once` leaves it to the daemon and makes nothing.
    let made = posts(&s);
    let out = t.run(&["once", "-c", "config.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(posts(&s), made, "nothing was due: no key made");
    assert_eq!(env_key(&t, "mcp.env").unwrap(), k1);

    // --force: the daemon rotates (asked by SIGUSR1); `once` waits for it.
    let out = t.run(&["once", "-c", "config.toml", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let text = both(&out);
    assert!(text.contains("SIGUSR1"), "says it asked the daemon: {text}");
    let k2 = env_key(&t, "mcp.env").unwrap();
    assert_ne!(k2, k1, "the rotation is done when `once` returns");
    assert_eq!(state_json(&t)["current"]["key"], k2.as_str());
    d.wait_log("renewal requested", 1, WAIT);

    // A plain `once` after the grace: it must not delete what the daemon
    // holds; the daemon's own next rotation still works with its key.
    std::thread::sleep(Duration::from_millis(1500));
    let out = t.run(&["once", "-c", "config.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(live(&s, &k2), "the key the daemon holds is live");
    d.signal(Signal::SIGUSR1);
    let k3 = wait_env_key_within(WAIT, &t, "mcp.env", &[&k1, &k2], &d);
    assert!(live(&s, &k3));
    assert!(
        !d.log().contains("refused"),
        "no call of the daemon was refused:\n{}",
        d.log()
    );
    let mut d = d;
    stop(&mut d, Signal::SIGTERM);
}

#[test]
fn once_beside_a_daemon_running_another_config_refuses_naming_the_dir_and_pid() {
    let s = key_standin_scaled(120.0);
    let t = TestDir::new();
    bootstrap(&s, &t, 365);
    // The daemon runs a login-token credential; `once` a key credential,
    // with the same state directory.
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    wait_for(
        WAIT,
        "the status file",
        || t.read("state/status.json").is_some(),
        || d.log(),
    );
    std::fs::write(
        t.path("keys.toml"),
        config_text(&s.base_url(), &key_cred("", &output("mcp.env", "env"))),
    )
    .unwrap();
    let made = posts(&s);
    let out = t.run(&["once", "-c", "keys.toml"]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("pid {}", d.pid())), "{text}");
    assert!(text.contains("state directory state "), "{text}");
    assert_eq!(posts(&s), made, "no key made behind the daemon");
    assert!(t.read("mcp.env").is_none());
    assert!(t.read("state/keys/mcp.json").is_none());
}

#[test]
fn once_with_only_login_tokens_still_works_beside_a_daemon() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    let first = wait_file(&t.path("main.token"), WAIT, || d.log());
    let out = t.run(&["once", "-c", "config.toml", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let second = std::fs::read_to_string(t.path("main.token")).unwrap();
    assert_ne!(first, second, "--force logged in beside the daemon");
}

#[test]
fn once_beside_a_daemon_leaves_the_daemons_temp_files_alone() {
    // A temp file beside an output may be the running daemon's write in
    // progress: only the holder of the state directory's lock removes them.
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    let in_flight = format!(".main.token.tmp-{}-00000000deadbeef", d.pid());
    std::fs::write(t.path(&in_flight), "IN FLIGHT").unwrap();
    let out = t.run(&["once", "-c", "config.toml", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(t.read(&in_flight).as_deref(), Some("IN FLIGHT"), "{}", both(&out));
}

#[test]
fn a_daemon_started_while_once_holds_the_lock_waits_for_it_and_runs() {
    let s = key_standin_scaled(120.0);
    let t = TestDir::new();
    bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env")),
    );
    // A slow server keeps `once` (and its lock) busy while the daemon starts.
    s.script_keys([Fault::Delay(Duration::from_millis(1500))]);
    let mut once = t
        .command(&["once", "-c", "config.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        WAIT,
        "once holding the lock",
        || t.read("state/lock").is_some_and(|l| l.contains("once")),
        String::new,
    );
    let d = t.daemon();
    let status = once.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    d.wait_log("voipbin-tokend started", 1, WAIT);
    assert!(d.log().contains("waiting for it to end"), "{}", d.log());
    let mut d = d;
    stop(&mut d, Signal::SIGTERM);
}

#[test]
fn two_once_passes_started_together_take_turns_and_make_one_key() {
    let s = key_standin_scaled(120.0);
    let t = TestDir::new();
    bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env")),
    );
    s.script_keys([Fault::Delay(Duration::from_millis(1000))]);
    let spawn = || {
        t.command(&["once", "-c", "config.toml"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn();
    wait_for(
        WAIT,
        "the first once holding the lock",
        || t.read("state/lock").is_some_and(|l| l.contains("once")),
        String::new,
    );
    let second = spawn();
    let (a, b) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    assert_eq!(a.status.code(), Some(0), "{}", both(&a));
    assert_eq!(b.status.code(), Some(0), "{}", both(&b));
    assert_eq!(
        posts(&s),
        1,
        "the second pass found the first's key: {}",
        both(&b)
    );
    let k = env_key(&t, "mcp.env").unwrap();
    assert_eq!(state_json(&t)["current"]["key"], k.as_str());
}

#[test]
fn a_key_state_written_by_another_process_is_taken_before_a_rotation_not_overwritten() {
    let s = key_standin_scaled(120.0);
    let t = TestDir::new();
    bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env")),
    );
    let d = t.daemon();
    let boot = std::fs::read_to_string(t.path("boot.key")).unwrap();
    let k1 = wait_env_key_within(WAIT, &t, "mcp.env", &[boot.trim()], &d);
    wait_for(
        WAIT,
        "the bootstrap key's deletion done",
        || {
            state_json(&t)["pending_deletions"]
                .as_array()
                .is_some_and(|p| p.is_empty())
        },
        || d.log(),
    );

    // Another process made a key of this installation and recorded it as
    // current, with the daemon's key pending deletion (an older `once`
    // that took no lock did exactly this).
    let mut state = state_json(&t);
    let name = format!(
        "voipbin-tokend/mcp/{}",
        state["installation_id"].as_str().unwrap()
    );
    let (other_id, other_key) = s.create_key(&name, 86_400);
    let mine = state["current"].clone();
    state["current"]["id"] = other_id.clone().into();
    state["current"]["key"] = other_key.clone().into();
    state["pending_deletions"] = serde_json::json!([{
        "id": mine["id"], "prefix": &k1[..11], "delete_after": null
    }]);
    std::fs::write(
        t.path("state/keys/mcp.json"),
        serde_json::to_string_pretty(&state).unwrap(),
    )
    .unwrap();

    // The next rotation reads it: neither key is forgotten. Both end
    // deleted after the grace once the new key is out.
    d.signal(Signal::SIGUSR1);
    let k3 = wait_env_key_within(WAIT, &t, "mcp.env", &[&k1, &other_key], &d);
    wait_for(
        WAIT,
        "both replaced keys deleted",
        || !live(&s, &other_key) && !live(&s, &k1),
        || format!("{}\n{:#?}", d.log(), state_json(&t)),
    );
    assert!(live(&s, &k3));
    let after = state_json(&t);
    assert_eq!(after["current"]["key"], k3.as_str());
    let mut d = d;
    stop(&mut d, Signal::SIGTERM);
}

// ---------------------------------------------------------------------------
// Item 14: temp files a kill left in the state directory.

#[test]
fn temp_files_left_in_the_state_dir_by_a_kill_are_removed_at_start_and_their_key_is_swept() {
    let s = key_standin_scaled(120.0);
    let t = TestDir::new();
    bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &[
            key_cred("renew-at = 0.9", &output("mcp.env", "env")),
            credential("main", &output("main.token", "raw")),
        ]
        .concat(),
    );
    let mut d = t.daemon();
    let boot = std::fs::read_to_string(t.path("boot.key")).unwrap();
    let k1 = wait_env_key_within(WAIT, &t, "mcp.env", &[boot.trim()], &d);
    wait_file(&t.path("main.token"), WAIT, || d.log());
    // What a kill between a key's POST and its state's rename leaves: a
    // key of this installation (its nonce recorded before the POST) that
    // no state names, in a temp file. The answer is held back, the kill
    // comes once the server has made the key.
    d.wait_log("every credential has a fresh token on disk", 1, WAIT);
    s.set_create_answer_delay(Some(Duration::from_secs(60)));
    let made = s.keys().len();
    d.signal(Signal::SIGUSR1);
    wait_for(
        WAIT,
        "the next key made at the server",
        || s.keys().len() > made,
        || d.log(),
    );
    d.signal(Signal::SIGKILL);
    d.wait_exit(WAIT);
    s.set_create_answer_delay(None);
    let lost = s.issued_keys().last().unwrap().clone();
    assert_ne!(lost, k1);

    let state = state_json(&t);
    let mut planted = state.clone();
    planted["current"]["key"] = lost.clone().into();
    let temps = [
        "state/keys/.mcp.json.tmp-4242-00000000deadbeef",
        "state/.status.json.tmp-4242-00000000deadbeef",
        "state/tokens/.main.json.tmp-4242-00000000deadbeef",
    ];
    std::fs::create_dir_all(t.path("state/tokens")).unwrap();
    std::fs::write(t.path(temps[0]), planted.to_string()).unwrap();
    std::fs::write(t.path(temps[1]), "{").unwrap();
    std::fs::write(t.path(temps[2]), "{").unwrap();
    // Not ours: a file without the temp pattern stays.
    std::fs::write(t.path("state/keys/notes.txt"), "mine").unwrap();

    let d = t.daemon();
    d.wait_log("removed temp files left in the state directory", 1, WAIT);
    for p in temps {
        assert!(!t.path(p).exists(), "{p} removed");
    }
    assert!(t.path("state/keys/notes.txt").exists());
    // The lost key is an orphan: the sweep deletes it; the output key stays.
    wait_for(WAIT, "the lost key swept", || !live(&s, &lost), || d.log());
    assert_eq!(env_key(&t, "mcp.env").unwrap(), k1);
    assert!(live(&s, &k1));
    let mut d = d;
    stop(&mut d, Signal::SIGTERM);

    // `once` (holding the lock) cleans them too.
    std::fs::write(t.path(temps[1]), "{").unwrap();
    let out = t.run(&["once", "-c", "config.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(!t.path(temps[1]).exists());
}

// ---------------------------------------------------------------------------
// Item 15: failing deletions are visible.

#[test]
fn a_failing_deletion_shows_as_overdue_in_status_and_the_metric_and_clears_once_done() {
    let s = key_standin_scaled(120.0);
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    let (port, config) = with_health(&key_cred("renew-at = 0.9", &output("mcp.env", "env")));
    t.write_config(&s.base_url(), &config);
    // Every deletion fails: the bootstrap key, replaced at once, stays.
    s.set_fail_deletes(Some(500));
    let d = t.daemon();
    wait_env_key_within(WAIT, &t, "mcp.env", &[boot.trim()], &d);
    let gauge = "voipbin_tokend_access_keys_deletion_overdue{credential=\"mcp\"} 1";
    wait_for(
        WAIT,
        "the overdue deletion in the metric",
        || http_get_raw(port, "/metrics").contains(gauge),
        || format!("{}\n{}", http_get_raw(port, "/metrics"), d.log()),
    );
    wait_for(
        WAIT,
        "the failure in the status file",
        || {
            t.read("state/status.json")
                .is_some_and(|s| s.contains("deletion_failures"))
        },
        || d.log(),
    );

    // Text: exit 0 (the credential is fresh), with a warning line naming
    // the key, how late it is and why.
    let out = t.run(&["status", "-c", "config.toml"]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("WARNING") && l.contains("overdue"))
        .unwrap_or_else(|| panic!("a warning line in:\n{text}"));
    assert!(line.contains(&boot_id), "{line}");
    assert!(line.contains("500"), "names the last error: {line}");
    assert!(line.contains("failed attempt"), "{line}");

    // JSON: the same, per credential.
    let out = t.run(&["status", "-c", "config.toml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let overdue = &v["credentials"][0]["overdue_deletions"];
    assert_eq!(overdue[0]["id"], boot_id.as_str(), "{v:#}");
    assert!(overdue[0]["overdue_seconds"].as_i64().unwrap() >= 0);
    assert!(overdue[0]["failures"].as_u64().unwrap() >= 1);
    assert!(overdue[0]["last_error"].as_str().unwrap().contains("500"));
    for text in [both(&out), http_get_raw(port, "/metrics")] {
        for key in s.issued_keys() {
            assert!(!text.contains(&key[11..]), "no key in:\n{text}");
        }
    }

    // The server deletes again: the deletion is done, nothing is overdue.
    s.set_fail_deletes(None);
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || s.keys().iter().any(|k| k.id == boot_id && k.tm_delete.is_some()),
        || d.log(),
    );
    let gauge0 = "voipbin_tokend_access_keys_deletion_overdue{credential=\"mcp\"} 0";
    wait_for(
        WAIT,
        "the metric back at 0",
        || http_get_raw(port, "/metrics").contains(gauge0),
        || http_get_raw(port, "/metrics"),
    );
    wait_for(
        WAIT,
        "no overdue deletion in status",
        || {
            let out = t.run(&["status", "-c", "config.toml"]);
            out.status.code() == Some(0) && !both(&out).contains("WARNING")
        },
        || d.log(),
    );
}
