//! SIGHUP: a reload at once, even of an unchanged file or of a change the
//! watcher cannot see.

use std::time::{Duration, Instant};

use super::{Chain, WAIT, reloads, replace_config, wait_token, wait_token_is};
use crate::support::*;
use nix::sys::signal::Signal;

#[test]
fn sighup_reloads_at_once_even_when_the_file_is_unchanged() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    t.write_config(&base, &credential("main", &output("a.token", "raw")));
    let d = t.daemon();
    let tok = wait_token(&t, "a.token", &d);

    // Same text: the watcher would skip it ("touched but unchanged"); a
    // SIGHUP reloads anyway.
    d.signal(Signal::SIGHUP);
    d.wait_log("config reloaded", 1, WAIT);
    assert!(d.log().contains("added=0 changed=0 removed=0"), "{}", d.log());

    // An edit followed at once by SIGHUP is applied at once, and only once.
    let two = output("a.token", "raw") + &output("b.token", "raw");
    replace_config(&t, &config_text(&base, &credential("main", &two)));
    let sent = Instant::now();
    d.signal(Signal::SIGHUP);
    wait_token_is(&t, "b.token", &tok, &d);
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    d.wait_log("added=0 changed=1 removed=0", 1, WAIT);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        reloads(&d),
        2,
        "the watcher's event after it finds nothing new\n{}",
        d.log()
    );
    assert_eq!(s.login_requests(), 1);
}

#[test]

fn sighup_applies_a_change_the_watcher_cannot_see() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    let mut chain = Chain::new(
        &t,
        &config_text(&base, &credential("main", &output("a.token", "raw"))),
    );
    let d = t.daemon();
    let tok = wait_token(&t, "a.token", &d);
    std::thread::sleep(Duration::from_millis(700));

    // A change out of the watcher's sight (see Chain) ...
    let two = output("a.token", "raw") + &output("b.token", "raw");
    chain.switch(&config_text(&base, &credential("main", &two)));
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        !t.path("b.token").exists(),
        "applied without SIGHUP: something re-read the config unasked\n{}",
        d.log()
    );
    assert_eq!(reloads(&d), 0);
    // ... is applied by SIGHUP, promptly.
    let sent = Instant::now();
    d.signal(Signal::SIGHUP);
    wait_token_is(&t, "b.token", &tok, &d);
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    d.wait_log("config reloaded", 1, WAIT);
    assert_eq!(s.login_requests(), 1);
}
