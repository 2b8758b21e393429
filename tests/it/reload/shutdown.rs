//! Shutdown: SIGTERM during a slow login, a slow renewal and a long write
//! phase; a second SIGINT.

use std::time::{Duration, Instant};

use super::{WAIT, hidden, wait_login_requests, wait_token, wait_token_is};
use crate::support::*;
use nix::sys::signal::Signal;

#[test]
fn sigterm_during_a_slow_first_login_exits_0_quickly_without_temp_files() {
    let s = standin(LONG);
    s.script([Fault::Delay(Duration::from_secs(10))]);
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("a.token", "raw")));
    let mut d = t.daemon();
    wait_login_requests(&s, 1, &d);
    std::thread::sleep(Duration::from_millis(200));

    let sent = Instant::now();
    d.signal(Signal::SIGTERM);
    let (status, _) = d.wait_exit(WAIT);
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(hidden(t.dir.path()).is_empty(), "{:?}", hidden(t.dir.path()));
    assert!(!t.path("a.token").exists(), "no token was obtained, no file");
    assert_eq!(s.logins_ok(), 0);
    assert!(d.log().contains("stopped"), "{}", d.log());
}

#[test]
fn sigterm_during_a_slow_renewal_exits_0_and_leaves_the_old_token_whole() {
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &credential("main", &(output("a.token", "raw") + &output("a.env", "env"))),
    );
    let mut d = t.daemon();
    let first = wait_token(&t, "a.token", &d);
    wait_token_is(&t, "a.env", &first, &d);
    let env_before = t.read("a.env").unwrap();

    s.script([Fault::Delay(Duration::from_secs(10))]);
    d.signal(Signal::SIGUSR1);
    wait_login_requests(&s, 2, &d);
    std::thread::sleep(Duration::from_millis(200));

    let sent = Instant::now();
    d.signal(Signal::SIGTERM);
    let (status, _) = d.wait_exit(WAIT);
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(t.read("a.token").as_deref(), Some(first.as_str()));
    assert_eq!(t.read("a.env"), Some(env_before));
    assert!(hidden(t.dir.path()).is_empty(), "{:?}", hidden(t.dir.path()));
}

/// Outputs in the slow-write tests: enough that writing them all (temp
/// file, fsync, rename, directory fsync each) takes a second or more.
const MANY: usize = 800;

/// A daemon whose one credential has [`MANY`] outputs, all written, and a
/// renewal (SIGUSR1) whose write phase has just begun. Returns the first
/// token too.
fn daemon_in_a_long_write_phase() -> (StandIn, TestDir, Daemon, String) {
    let s = standin(LONG);
    let t = TestDir::new();
    let outs: String = (0..MANY).map(|i| output(&format!("o{i}.token"), "raw")).collect();
    t.write_config(&s.base_url(), &credential("main", &outs));
    let d = t.daemon();
    let first = wait_token(&t, "o0.token", &d);
    wait_token_is(&t, &format!("o{}.token", MANY - 1), &first, &d);
    d.signal(Signal::SIGUSR1);
    wait_for(
        WAIT,
        "the renewal's writes to begin",
        || t.read("o0.token").is_some_and(|x| x != first),
        || d.log(),
    );
    (s, t, d, first)
}

/// Every output holds a whole token, the old or the new one; no temp files.
fn assert_outputs_whole(t: &TestDir, tokens: &[String]) -> usize {
    let mut new = 0;
    for i in 0..MANY {
        let text = t.read(&format!("o{i}.token")).unwrap_or_default();
        assert!(tokens.contains(&text), "o{i}.token holds neither token: {text:?}");
        if text == tokens[tokens.len() - 1] {
            new += 1;
        }
    }
    new
}

#[test]
fn sigterm_during_a_long_write_phase_exits_0_within_5s_with_whole_files() {
    let (s, t, mut d, first) = daemon_in_a_long_write_phase();
    let last = format!("o{}.token", MANY - 1);
    let in_progress = t.read(&last).as_deref() == Some(first.as_str());

    let sent = Instant::now();
    d.signal(Signal::SIGTERM);
    let (status, _) = d.wait_exit(WAIT);
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}\n{}", d.log());
    // The interface says 5 s; a little slack for a busy machine.
    assert!(took < Duration::from_millis(5500), "{took:?}");
    assert!(hidden(t.dir.path()).is_empty(), "{:?}", hidden(t.dir.path()));
    let new = s.issued_tokens().last().cloned().unwrap();
    let written = assert_outputs_whole(&t, &[first, new]);
    eprintln!(
        "SIGTERM during writes (in progress: {in_progress}): exit after {took:?}, {written}/{MANY} outputs renewed"
    );
    assert_eq!(s.login_requests(), 2);
}

#[test]
fn second_sigint_during_a_slow_shutdown_exits_at_once() {
    let (s, t, mut d, first) = daemon_in_a_long_write_phase();
    let last = format!("o{}.token", MANY - 1);
    assert_eq!(
        t.read(&last).as_deref(),
        Some(first.as_str()),
        "the writes finished too fast to stage a slow shutdown"
    );

    let started = Instant::now();
    d.signal(Signal::SIGINT);
    d.wait_log("interrupt again to exit at once", 1, WAIT);
    let first_handled = started.elapsed();
    let sent = Instant::now();
    d.signal(Signal::SIGINT);
    let (status, _) = d.wait_exit(WAIT);
    let took = sent.elapsed();
    eprintln!("second SIGINT: exit {status:?} {took:?} after it (first handled after {first_handled:?})");
    assert!(took < Duration::from_millis(1000), "{took:?}\n{}", d.log());
    let new = s.issued_tokens().last().cloned().unwrap();
    let written = assert_outputs_whole(&t, &[first, new]);
    assert!(
        written < MANY && !status.success(),
        "the shutdown was not cut short ({written}/{MANY} written, {status:?})\n{}",
        d.log()
    );
}

#[test]
fn double_sigint_during_a_slow_login_exits_promptly() {
    let s = standin(LONG);
    s.script([Fault::Delay(Duration::from_secs(10))]);
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("a.token", "raw")));
    let mut d = t.daemon();
    wait_login_requests(&s, 1, &d);
    std::thread::sleep(Duration::from_millis(200));

    let sent = Instant::now();
    d.signal(Signal::SIGINT);
    // The second may find the daemon already gone: that is "at once" too.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid()), Signal::SIGINT);
    let (status, _) = d.wait_exit(WAIT);
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?} {status:?}\n{}", d.log());
    assert!(!t.path("a.token").exists());
    assert!(hidden(t.dir.path()).is_empty(), "{:?}", hidden(t.dir.path()));
}
