//! SIGUSR1 and backoff: a renewal at once while backing off, and an output
//! added during backoff.

use std::time::{Duration, Instant};

use super::{WAIT, cred, replace_config, wait_login_requests, wait_token};
use crate::support::*;
use nix::sys::signal::Signal;

/// A credential whose backoff is 30 s: a retry inside a test means SIGUSR1.
fn slow_retry_credential(outputs: &str) -> String {
    cred(
        "main",
        USER,
        "password",
        "retry-min = \"30s\"\nretry-max = \"30s\"",
        outputs,
    )
}

#[test]
fn sigusr1_renews_at_once_even_while_backing_off() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    t.write_config(&base, &slow_retry_credential(&output("a.token", "raw")));
    let d = t.daemon();
    let first = wait_token(&t, "a.token", &d);

    // The server fails: two forced renewals fail, the token stays.
    s.set_default(Some(Fault::status(500)));
    d.signal(Signal::SIGUSR1);
    wait_login_requests(&s, 2, &d);
    d.wait_log("renewal failed; keeping the current token", 1, WAIT);
    d.signal(Signal::SIGUSR1);
    wait_login_requests(&s, 3, &d);
    assert_eq!(t.read("a.token").as_deref(), Some(first.as_str()));

    // The server heals; the daemon backs off for 30 s and does not retry...
    s.set_default(None);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(s.login_requests(), 3, "backing off\n{}", d.log());
    // ... until SIGUSR1.
    let sent = Instant::now();
    d.signal(Signal::SIGUSR1);
    wait_for(
        WAIT,
        "the new token on disk",
        || t.read("a.token").is_some_and(|x| x != first),
        || d.log(),
    );
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(s.login_requests(), 4);
    assert_eq!(s.logins_ok(), 2);
    assert_eq!(t.read("a.token").as_ref(), s.issued_tokens().last());
    d.wait_log("recovered", 1, WAIT);
}

#[test]

fn added_output_during_backoff_gets_the_current_token_at_once() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    t.write_config(&base, &slow_retry_credential(&output("a.token", "raw")));
    let d = t.daemon();
    let first = wait_token(&t, "a.token", &d);

    s.set_default(Some(Fault::status(500)));
    d.signal(Signal::SIGUSR1);
    wait_login_requests(&s, 2, &d);
    d.wait_log("renewal failed; keeping the current token", 1, WAIT);

    // The server is down, the daemon backs off 30 s; the token it holds is
    // still good and a new output must get it now, without a login.
    let two = output("a.token", "raw") + &output("b.token", "raw");
    replace_config(&t, &config_text(&base, &slow_retry_credential(&two)));
    d.wait_log("config reloaded", 1, WAIT);
    wait_for(
        Duration::from_secs(10),
        "b.token to get the held token",
        || t.read("b.token").as_deref() == Some(first.as_str()),
        || format!("b.token: {:?}\n{}", t.read("b.token"), d.log()),
    );
    assert_eq!(s.login_requests(), 2);
}
