//! Renewals asked for with SIGUSR1: requests close together are coalesced,
//! and forced key rotations keep a minimum interval (the first is not
//! delayed).

use std::time::{Duration, Instant};

use crate::support::*;
use nix::sys::signal::Signal;

#[test]
fn forced_rotations_have_a_minimum_interval_and_the_first_is_not_delayed() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (d, k1) = key_daemon(&t, &s, &output("mcp.env", "env"));
    std::thread::sleep(Duration::from_millis(1200));
    let before = posts(&s);
    // The first forced rotation after a start is not delayed.
    let sent = Instant::now();
    d.signal(Signal::SIGUSR1);
    wait_for(
        SLOW_WAIT,
        "the forced rotation",
        || posts(&s) > before,
        || d.log(),
    );
    let took = sent.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "first forced rotation took {took:?}"
    );
    wait_for(
        SLOW_WAIT,
        "the new key",
        || env_key(&t, "mcp.env").is_some_and(|k| k != k1),
        || d.log(),
    );
    // Then one SIGUSR1 every 1.2 s for 7 s (each past the one-second
    // coalescing): at most one rotation per 3 s, not one per signal.
    let start = posts(&s);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(1200));
        d.signal(Signal::SIGUSR1);
    }
    let made = posts(&s) - start;
    assert!(
        (1..=4).contains(&made),
        "{made} rotations for 6 signals\n{}",
        d.log()
    );
    // Every request is answered in the end: a rotation after the last one.
    let last = posts(&s);
    wait_for(
        SLOW_WAIT,
        "the rotation owed",
        || posts(&s) > last || made >= 3,
        || d.log(),
    );
}

// ---------------------------------------------------------------------------
// 13. SIGUSR1 requests spread over time.

#[test]
fn sigusr1_requests_spread_over_half_a_second_cost_at_most_two_logins() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    wait_file(&t.path("main.token"), SLOW_WAIT, || d.log());
    assert_eq!(s.login_requests(), 1);
    // Past the start login's second.
    std::thread::sleep(Duration::from_millis(1200));
    for _ in 0..100 {
        d.signal(Signal::SIGUSR1);
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_secs(3));
    // The first request's login, and one a second later for all the rest.
    let logins = s.login_requests() - 1;
    assert!(
        (1..=2).contains(&logins),
        "{logins} logins for 100 requests\n{}",
        d.log()
    );
}

#[test]
fn sigusr1_requests_within_a_second_of_a_renewal_share_one_renewal_after_it() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    let first = wait_file(&t.path("main.token"), SLOW_WAIT, || d.log());
    // 20 requests at once after the start login: not one login each, but
    // one for them all once the start login's second is over.
    for _ in 0..20 {
        d.signal(Signal::SIGUSR1);
        std::thread::sleep(Duration::from_millis(10));
    }
    d.wait_log("requests are coalesced into one renewal", 1, SLOW_WAIT);
    wait_for(
        SLOW_WAIT,
        "the renewal they share",
        || t.read("main.token").is_some_and(|x| x != first),
        || d.log(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.login_requests(), 2, "{}", d.log());
}
