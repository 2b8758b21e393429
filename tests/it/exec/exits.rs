//! Exit statuses: the daemon exits with the child's status (128+N when a
//! signal N killed it), after a forwarded SIGTERM/SIGINT/SIGQUIT too, and a
//! stubborn child is killed after `--stop-timeout`.

use std::time::Instant;

use super::*;

/// One login credential with a raw output and the standard child.
fn setup(s: &StandIn, body: &str) -> ExecDir {
    let e = ExecDir::new();
    e.t.write_config(
        &s.base_url(),
        &token_cred("main", "", &output("main.token", "raw")),
    );
    e.child(body);
    e
}

#[test]
fn a_child_that_exits_3_makes_the_daemon_exit_3() {
    let s = standin(LONG);
    let e = setup(&s, "echo \"start $$\" >> \"$D/child.log\"\nsleep 0.3\nexit 3\n");
    let mut d = e.daemon(&[]);
    let (status, _) = d.wait_exit(WAIT);
    assert_eq!(status.code(), Some(3), "{}", e.context(&d));
    assert_eq!(
        e.starts().len(),
        1,
        "a child that exits is not restarted\n{}",
        e.context(&d)
    );
    assert_log_clean(&d, &s);
}

#[test]
fn a_child_killed_from_outside_by_sigkill_makes_the_daemon_exit_137() {
    let s = standin(LONG);
    let e = setup(&s, STANDARD);
    let mut d = e.daemon(&[]);
    let pid = e.wait_starts(1, &d)[0];
    kill(pid, Signal::SIGKILL);
    let (status, _) = d.wait_exit(WAIT);
    assert_eq!(status.code(), Some(137), "{}", e.context(&d));
    assert_eq!(e.starts().len(), 1, "{}", e.context(&d));
    assert_log_clean(&d, &s);
}

#[test]
fn sigterm_to_the_daemon_reaches_the_child_which_exits_0_and_so_does_the_daemon() {
    let s = standin(LONG);
    let e = setup(&s, STANDARD);
    let mut d = e.daemon(&[]);
    let pid = e.wait_starts(1, &d)[0];
    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert!(
        e.has(&format!("stop {pid}")),
        "the child got SIGTERM:\n{}",
        e.context(&d)
    );
    assert!(!alive(pid), "the child is gone");
    assert_log_clean(&d, &s);
}

#[test]
fn sigint_and_sigquit_are_forwarded_and_the_daemon_exits_with_the_childs_status() {
    let s = standin(LONG);
    // SIGINT: the child logs and exits 0.
    let e = setup(&s, STANDARD);
    let mut d = e.daemon(&[]);
    let pid = e.wait_starts(1, &d)[0];
    assert_eq!(stop_with(&mut d, Signal::SIGINT), Some(0), "{}", e.context(&d));
    assert!(
        e.has(&format!("stop {pid}")),
        "the child got SIGINT:\n{}",
        e.context(&d)
    );

    // SIGQUIT: a child that does not trap it dies of it: 128 + 3.
    let e = setup(
        &s,
        "ulimit -c 0\necho \"start $$\" >> \"$D/child.log\"\nwhile :; do sleep 0.2; done\n",
    );
    let mut d = e.daemon(&[]);
    let pid = e.wait_starts(1, &d)[0];
    assert_eq!(stop_with(&mut d, Signal::SIGQUIT), Some(131), "{}", e.context(&d));
    assert!(!alive(pid));
    assert_log_clean(&d, &s);
}

#[test]
fn a_stubborn_child_is_killed_after_the_stop_timeout_and_the_daemon_exits_137() {
    let s = standin(LONG);
    let e = setup(
        &s,
        "trap 'echo \"ignored $$ TERM\" >> \"$D/child.log\"' TERM\n\
         echo \"start $$\" >> \"$D/child.log\"\nwhile :; do sleep 0.2; done\n",
    );
    let mut d = e.daemon(&["--stop-timeout", "1s"]);
    let pid = e.wait_starts(1, &d)[0];
    let start = Instant::now();
    d.signal(Signal::SIGTERM);
    let (status, _) = d.wait_exit(WAIT);
    let took = start.elapsed();
    assert_eq!(status.code(), Some(137), "{}", e.context(&d));
    assert!(
        e.has(&format!("ignored {pid} TERM")),
        "the child got SIGTERM first:\n{}",
        e.context(&d)
    );
    assert!(!alive(pid), "the stubborn child was killed");
    // 1 s, not the default 10 s (a bound generous enough for a busy machine).
    assert!(took < Duration::from_secs(8), "took {took:?}\n{}", e.context(&d));
    assert_log_clean(&d, &s);
}

#[test]
fn a_child_whose_daemon_is_killed_gets_sigterm() {
    let s = standin(LONG);
    let e = setup(&s, STANDARD);
    let mut d = e.daemon(&[]);
    let pid = e.wait_starts(1, &d)[0];
    d.signal(Signal::SIGKILL);
    d.wait_exit(WAIT);
    // PR_SET_PDEATHSIG: the orphan is told, and goes.
    e.wait_record(&format!("stop {pid}"), &d);
    wait_for(WAIT, "the child gone", || !alive(pid), || e.context(&d));
}

#[test]
fn the_childs_stderr_is_the_daemons() {
    let s = standin(LONG);
    let e = ExecDir::new();
    e.t.write_config(
        &s.base_url(),
        &token_cred("main", "", &output("main.token", "raw")),
    );
    e.script_with_stdio(
        "child.sh",
        "echo \"a line from child $$ on stderr\" >&2\nexit 0\n",
    );
    let mut d = e.daemon(&[]);
    let (status, _) = d.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(d.log().contains("a line from child "), "{}", d.log());
    assert_log_clean(&d, &s);
}

#[test]
fn a_child_killed_by_the_forwarded_sigterm_makes_the_daemon_exit_143() {
    let s = standin(LONG);
    let e = setup(
        &s,
        "echo \"start $$\" >> \"$D/child.log\"\nwhile :; do sleep 0.2; done\n",
    );
    let mut d = e.daemon(&[]);
    let pid = e.wait_starts(1, &d)[0];
    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(143), "{}", e.context(&d));
    assert!(!alive(pid));
    assert_log_clean(&d, &s);
}

#[test]
fn a_second_sigint_is_passed_on_too_and_the_daemon_waits_for_the_child() {
    let s = standin(LONG);
    // Stops only at the second SIGINT (a program's "press Ctrl-C again").
    let e = setup(
        &s,
        "n=0\ntrap 'n=$((n+1)); echo \"int $$ $n\" >> \"$D/child.log\"; \
         if [ $n -ge 2 ]; then echo \"stop $$\" >> \"$D/child.log\"; exit 0; fi' INT\n\
         echo \"start $$\" >> \"$D/child.log\"\nwhile :; do sleep 0.2; done\n",
    );
    let mut d = e.daemon(&[]);
    let pid = e.wait_starts(1, &d)[0];
    d.signal(Signal::SIGINT);
    e.wait_record(&format!("int {pid} 1"), &d);
    assert!(
        alive(d.pid()),
        "the daemon waits for the child after the first SIGINT"
    );
    d.signal(Signal::SIGINT);
    let (status, _) = d.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{}", e.context(&d));
    assert!(e.has(&format!("stop {pid}")), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}
