//! Restart on rotation: each new token restarts the child, one child at a
//! time, the new one holding the new token; `--stop-signal` is what stops
//! it; changes within a second cost one restart.

use super::*;

#[test]
fn each_rotation_restarts_the_child_with_the_new_token_one_child_at_a_time() {
    // Tokens of 5 s, renewed at 80%: a rotation every ~4 s.
    let s = standin(Duration::from_secs(5));
    let e = ExecDir::new();
    let t = &e.t;
    t.write_config(
        &s.base_url(),
        &token_cred("main", "", &output("main.token", "raw")),
    );
    e.child(STANDARD);
    let mut d = e.daemon(&[]);

    let pids = e.wait_starts(4, &d);
    assert_one_at_a_time(&e.records());
    // Every child but the last was stopped with SIGTERM (its `stop` record).
    for p in &pids[..pids.len() - 1] {
        assert!(
            e.has(&format!("stop {p}")),
            "child {p} was stopped:\n{}",
            e.context(&d)
        );
    }
    // Each child held a token the stand-in issued, each a newer one.
    let issued = s.issued_tokens();
    let held: Vec<usize> = pids
        .iter()
        .map(|p| {
            let tok = e.env_of(*p).get("VOIPBIN_TOKEN").cloned().unwrap_or_default();
            issued
                .iter()
                .position(|i| *i == tok)
                .unwrap_or_else(|| panic!("child {p} holds no issued token"))
        })
        .collect();
    assert!(
        held.windows(2).all(|w| w[0] < w[1]),
        "each child holds a newer token than the one before (indexes {held:?})"
    );
    // The newest child holds what the output holds (once both settle).
    wait_for(
        WAIT,
        "the newest child to hold the token on disk",
        || {
            let last = *e.starts().last().unwrap();
            let disk = t.read("main.token").and_then(|x| token_in(&x));
            disk.is_some() && e.env_of(last).get("VOIPBIN_TOKEN") == disk.as_ref()
        },
        || e.context(&d),
    );
    let log = d.log();
    let restart = log
        .lines()
        .find(|l| l.contains("restarting the child"))
        .unwrap_or_else(|| panic!("no restart logged:\n{log}"));
    assert!(
        restart.contains("main"),
        "the restart names the credential: {restart}"
    );

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_one_at_a_time(&e.records());
    assert_log_clean(&d, &s);
}

#[test]
fn the_stop_signal_stops_the_child_for_a_restart_and_sigterm_is_still_forwarded_as_sigterm() {
    let s = standin(LONG);
    let e = ExecDir::new();
    let t = &e.t;
    t.write_config(
        &s.base_url(),
        &token_cred("main", "", &output("main.token", "raw")),
    );
    e.child(
        "trap 'echo \"stop $$\" >> \"$D/child.log\"; exit 0' INT\n\
         trap 'echo \"term $$\" >> \"$D/child.log\"; exit 0' TERM\n\
         echo \"start $$\" >> \"$D/child.log\"\nwhile :; do sleep 0.2; done\n",
    );
    let mut d = e.daemon(&["--stop-signal", "int"]);
    let first = e.wait_starts(1, &d)[0];
    d.signal(Signal::SIGUSR1);
    let second = e.wait_starts(2, &d)[1];
    assert!(
        e.has(&format!("stop {first}")),
        "SIGINT stopped it:\n{}",
        e.context(&d)
    );
    assert!(!e.records().contains("term"), "{}", e.context(&d));
    assert_one_at_a_time(&e.records());

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert!(
        e.has(&format!("term {second}")),
        "a SIGTERM to the daemon reaches the child as SIGTERM:\n{}",
        e.context(&d)
    );
    assert_log_clean(&d, &s);
}

#[test]
fn two_exported_values_changing_together_cost_one_restart() {
    let s = standin(LONG);
    let e = ExecDir::new();
    let t = &e.t;
    t.write_config(
        &s.base_url(),
        &format!(
            "{}{}",
            token_cred("main", "", &output("main.token", "raw")),
            token_cred("second", "", &output("second.token", "raw"))
        ),
    );
    e.child(STANDARD);
    let mut d = e.daemon(&["--env", "A_TOKEN=main", "--env", "B_TOKEN=second"]);
    e.wait_starts(1, &d);
    let before = s.logins_ok();
    assert_eq!(before, 2);

    // SIGUSR1 renews both at once: two values change within milliseconds.
    d.signal(Signal::SIGUSR1);
    wait_for(WAIT, "both renewed", || s.logins_ok() >= 4, || e.context(&d));
    let read = |n: &str| t.read(n).and_then(|x| token_in(&x));
    wait_for(
        WAIT,
        "a child holding both new tokens",
        || {
            let env = e.env_of(*e.starts().last().unwrap());
            let (a, b) = (read("main.token"), read("second.token"));
            a.is_some() && b.is_some() && env.get("A_TOKEN") == a.as_ref() && env.get("B_TOKEN") == b.as_ref()
        },
        || e.context(&d),
    );
    // Past the debounce second, and then some: still one restart.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        e.starts().len(),
        2,
        "one restart for two changes:\n{}",
        e.context(&d)
    );
    assert_one_at_a_time(&e.records());

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}

/// A child that ignores SIGTERM (logs it) and, at start, logs `overlap`
/// if the child before it still exists (even as a zombie).
const STUBBORN: &str = r#"
if [ -f "$D/previous" ] && kill -0 "$(cat "$D/previous")" 2>/dev/null; then
  echo "overlap $$ $(cat "$D/previous")" >> "$D/child.log"
fi
echo $$ > "$D/previous"
trap 'echo "ignored $$ TERM" >> "$D/child.log"' TERM
echo "start $$" >> "$D/child.log"
while :; do sleep 0.2; done
"#;

#[test]
fn a_stubborn_child_is_killed_after_the_stop_timeout_before_the_new_one_starts() {
    let s = standin(LONG);
    let e = ExecDir::new();
    e.t.write_config(
        &s.base_url(),
        &token_cred("main", "", &output("main.token", "raw")),
    );
    e.child(STUBBORN);
    let mut d = e.daemon(&["--stop-timeout", "1s"]);
    let first = e.wait_starts(1, &d)[0];
    d.signal(Signal::SIGUSR1);
    let second = e.wait_starts(2, &d)[1];
    assert!(
        e.has(&format!("ignored {first} TERM")),
        "the stop signal came first:\n{}",
        e.context(&d)
    );
    assert!(!alive(first), "the stubborn child was killed");
    assert!(
        !e.records().contains("overlap"),
        "the new child started while the old one existed:\n{}",
        e.context(&d)
    );
    assert_eq!(e.starts(), vec![first, second]);

    // At the end too: killed after the timeout, 137.
    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(137), "{}", e.context(&d));
    assert!(!alive(second));
    assert_log_clean(&d, &s);
}

#[test]
fn sigterm_during_a_restart_starts_no_new_child_and_exits_with_the_old_ones_status() {
    let s = standin(LONG);
    let e = ExecDir::new();
    e.t.write_config(
        &s.base_url(),
        &token_cred("main", "", &output("main.token", "raw")),
    );
    e.child(SLOW_STOP);
    let mut d = e.daemon(&["--stop-timeout", "30s"]);
    let first = e.wait_starts(1, &d)[0];
    d.signal(Signal::SIGUSR1);
    // The restart began: the child takes 4 s to stop. Now stop the daemon.
    e.wait_record(&format!("stopping {first}"), &d);
    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert!(e.has(&format!("stop {first}")), "{}", e.context(&d));
    assert_eq!(
        e.starts(),
        vec![first],
        "no child after the stop:\n{}",
        e.context(&d)
    );
    assert_log_clean(&d, &s);
}
