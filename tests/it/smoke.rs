use crate::support::*;
use std::time::Duration;

#[test]
fn run_writes_a_token_and_stops_on_sigterm() {
    let s = standin(Duration::from_secs(30));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let mut d = t.daemon();
    let text = wait_file(&t.path("main.token"), Duration::from_secs(10), || d.log());
    assert_eq!(Some(text.clone()), s.issued_tokens().last().cloned());
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, _) = d.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert_eq!(s.logins_ok(), 1);
}
