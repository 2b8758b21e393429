//! Access keys and the child: a key a running child holds is never deleted
//! under it. Restart: its grace starts once the (slow) child is gone;
//! `signal:`: once the child was signalled; `none`: never while it runs.

use std::time::{SystemTime, UNIX_EPOCH};

use super::*;

/// A self-rotating key credential "mcp" without outputs, rotating every
/// `renew_at` of a day that lasts `day_secs` (no jitter), grace 1 s.
fn key_setup(day_secs: f64, renew_at: &str) -> (StandIn, ExecDir) {
    let s = key_standin_scaled(day_secs);
    let e = ExecDir::new();
    bootstrap(&s, &e.t, 365);
    e.t.write_config(
        &s.base_url(),
        &key_cred(&format!("renew-at = {renew_at}\njitter = 0"), ""),
    );
    (s, e)
}

fn current_key(e: &ExecDir) -> Option<String> {
    let text = e.t.read("state/keys/mcp.json")?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["current"]["key"].as_str().map(str::to_owned)
}

fn held_key(e: &ExecDir, pid: i32) -> String {
    let key = e.env_of(pid).get("VOIPBIN_API_KEY").cloned().unwrap_or_default();
    assert!(key.starts_with("vb_"), "child {pid} holds no key");
    key
}

fn deleted(s: &StandIn, key: &str) -> Option<SystemTime> {
    info_of(s, key).tm_delete
}

#[test]
fn a_slow_stopping_child_keeps_its_key_until_it_is_gone_and_the_grace_has_passed() {
    // Keys of 60 s rotated at 20%: a rotation ~12 s after each key.
    let (s, e) = key_setup(60.0, "0.2");
    e.child(SLOW_STOP);
    let mut d = e.daemon(&["--stop-timeout", "30s"]);
    let first = e.wait_starts(1, &d)[0];
    let held = held_key(&e, first);

    // The rotation asks the child to stop; it takes 4 s. All that time the
    // key it holds stays on the server, though a successor exists.
    e.wait_record(&format!("stopping {first}"), &d);
    let mut checks = 0;
    while !e.has(&format!("stop {first}")) {
        assert!(
            deleted(&s, &held).is_none(),
            "the key of a running child was deleted:\n{}",
            e.context(&d)
        );
        assert!(
            e.starts().len() == 1,
            "a second child started while the first still ran:\n{}",
            e.context(&d)
        );
        checks += 1;
        assert!(checks < 3000, "the child never stopped:\n{}", e.context(&d));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        current_key(&e).is_some_and(|k| k != held),
        "a successor key was made before the child was stopped"
    );
    let stopped_at: f64 = e
        .records()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("stop {first} ")))
        .and_then(|x| x.trim().parse().ok())
        .expect("the stop record holds the time");

    // Gone, then the grace (1 s), then deleted.
    wait_for(
        WAIT,
        "the old key deleted",
        || deleted(&s, &held).is_some(),
        || e.context(&d),
    );
    let at = deleted(&s, &held)
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        at - stopped_at >= 0.9,
        "deleted {:.2} s after the child stopped, before the 1 s grace",
        at - stopped_at
    );
    // The next child holds the successor, started after the first stopped.
    let second = e.wait_starts(2, &d)[1];
    assert!(held_key(&e, second) != held, "the new child holds the new key");
    assert_one_at_a_time(&e.records());

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}

#[test]
fn on_change_none_leaves_the_child_alone_and_its_key_alive() {
    // Keys of 20 s rotated at 25%: a rotation ~5 s after each key.
    let (s, e) = key_setup(20.0, "0.25");
    e.child(STANDARD);
    let mut d = e.daemon(&["--on-change", "none"]);
    let pid = e.wait_starts(1, &d)[0];
    let held = held_key(&e, pid);
    let held_id = info_of(&s, &held).id;

    wait_for(
        WAIT,
        "a rotation",
        || current_key(&e).is_some_and(|k| k != held),
        || e.context(&d),
    );
    // Four graces later: the replaced key lives, the child was left alone.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        deleted(&s, &held).is_none(),
        "the key of the running child was deleted:\n{}",
        e.context(&d)
    );
    assert_eq!(e.starts(), vec![pid], "no restart:\n{}", e.context(&d));
    assert!(!e.records().contains("sig "), "no signal:\n{}", e.context(&d));
    assert!(alive(pid));

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    // Nothing lost: the key is deleted or its deletion is still owed.
    let owed = state_json(&e.t)["pending_deletions"]
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["id"] == held_id.as_str()));
    assert!(
        deleted(&s, &held).is_some() || owed,
        "the replaced key was forgotten: {:#}",
        state_json(&e.t)["pending_deletions"]
    );
    assert_log_clean(&d, &s);
}

#[test]
fn on_change_signal_hup_signals_the_same_child_and_then_retires_its_key() {
    let (s, e) = key_setup(20.0, "0.25");
    e.child(STANDARD);
    let mut d = e.daemon(&["--on-change", "signal:HUP"]);
    let pid = e.wait_starts(1, &d)[0];
    let held = held_key(&e, pid);

    // The rotation: SIGHUP to the child, no restart.
    e.wait_record(&format!("sig {pid} HUP"), &d);
    assert!(current_key(&e).is_some_and(|k| k != held), "a new key");
    // The child was told: the grace runs and the old key goes.
    wait_for(
        WAIT,
        "the signalled child's old key deleted",
        || deleted(&s, &held).is_some(),
        || e.context(&d),
    );
    assert_eq!(e.starts(), vec![pid], "no restart:\n{}", e.context(&d));
    assert!(!e.has(&format!("stop {pid}")), "{}", e.context(&d));
    assert!(alive(pid));

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}
