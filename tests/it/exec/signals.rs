//! Signals to the daemon: SIGUSR2 and SIGWINCH reach the child unchanged;
//! SIGHUP (reload) and SIGUSR1 (renew) are the daemon's own and never reach
//! it (SIGUSR1 renews the token, whose new value restarts the child).

use super::*;

#[test]
fn sigusr2_and_sigwinch_reach_the_child_and_sighup_and_sigusr1_do_not() {
    let s = standin(LONG);
    let e = ExecDir::new();
    let t = &e.t;
    t.write_config(
        &s.base_url(),
        &token_cred("main", "", &output("main.token", "raw")),
    );
    e.child(STANDARD);
    let mut d = e.daemon(&[]);
    let pid = e.wait_starts(1, &d)[0];

    // SIGHUP reloads (nothing changed) and is not passed on.
    d.signal(Signal::SIGHUP);
    d.wait_log("config reloaded", 1, WAIT);
    // Forwarded ones arrive; a HUP forwarded before them would have been
    // recorded first.
    d.signal(Signal::SIGUSR2);
    e.wait_record(&format!("sig {pid} USR2"), &d);
    d.signal(Signal::SIGWINCH);
    e.wait_record(&format!("sig {pid} WINCH"), &d);
    assert!(
        !e.has(&format!("sig {pid} HUP")),
        "SIGHUP reached the child:\n{}",
        e.context(&d)
    );
    assert_eq!(
        e.starts(),
        vec![pid],
        "no restart for a reload that changed nothing"
    );

    // SIGUSR1 renews: a new token, so the child is restarted with it, but
    // it never sees SIGUSR1 itself.
    let first = token_in(&t.read("main.token").unwrap()).unwrap();
    d.signal(Signal::SIGUSR1);
    let pids = e.wait_starts(2, &d);
    let token = token_in(&t.read("main.token").unwrap()).unwrap();
    assert!(token != first, "SIGUSR1 renewed the token");
    wait_for(
        WAIT,
        "the new child to hold the current token",
        || e.env_of(*e.starts().last().unwrap()).get("VOIPBIN_TOKEN") == Some(&token),
        || e.context(&d),
    );
    assert!(
        !e.records().contains("USR1"),
        "SIGUSR1 reached a child:\n{}",
        e.context(&d)
    );
    assert!(e.has(&format!("stop {}", pids[0])), "the old child was stopped");
    assert_one_at_a_time(&e.records());

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}
