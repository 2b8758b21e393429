//! A rejected login (400) and rate limits (429): `retry-max`, SIGUSR1,
//! `Retry-After` in seconds and as an HTTP date, and backoff without one.

use std::time::{Duration, Instant, SystemTime};

use super::{WAIT, cred, logins, secs, wait_new_token};
use crate::support::*;
use nix::sys::signal::Signal;
use voipbin_tokend_standin::format_http_date;

#[test]
fn rejected_login_waits_retry_max_and_heals_at_once_on_sigusr1() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &cred(
            "main",
            USER,
            "password",
            "retry-min = \"100ms\"\nretry-max = \"30s\"\n",
            &output("main.token", "raw"),
        ),
    );
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());

    // The account's password changes on the server: every login is a 400.
    s.set_password(USER, "changed-on-the-server");
    d.signal(Signal::SIGUSR1);
    d.wait_log("credentials rejected", 1, WAIT);
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("credentials rejected")),
        "{}",
        d.log()
    );
    // Not hammered: nothing more within 1.5 s (retry-max is 30 s).
    std::thread::sleep(Duration::from_millis(1500));
    let rejected = logins(&s).iter().filter(|r| r.status == 400).count();
    assert_eq!(rejected, 1, "retried a 400 before retry-max");
    assert_eq!(t.read("main.token").as_deref(), Some(good.as_str()));

    // Fixed on the server; SIGUSR1 ends the 30 s wait at once.
    s.set_password(USER, PASSWORD);
    let asked = Instant::now();
    d.signal(Signal::SIGUSR1);
    wait_new_token(&s, &t, "main.token", &good, &d);
    let took = asked.elapsed();
    eprintln!("healed {took:?} after SIGUSR1");
    assert!(
        took < Duration::from_secs(10),
        "SIGUSR1 did not cut the backoff: {took:?}"
    );
    d.wait_log("recovered", 1, WAIT);
}

#[test]
fn rate_limited_logins_obey_retry_after_in_seconds_and_as_an_http_date() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    // With no token held, Retry-After is capped at retry-max (README,
    // Renewal): 10 s leaves room for the 6 s asked.
    let retries = "retry-min = \"100ms\"\nretry-max = \"10s\"\n";
    t.write_config(
        &s.base_url(),
        &cred("main", USER, "password", retries, &output("main.token", "raw")),
    );
    let until = SystemTime::now() + Duration::from_secs(6);
    // An HTTP date has whole seconds: the date sent is `until` truncated.
    let date = format_http_date(until);
    let date_at = httpdate::parse_http_date(&date).unwrap();
    s.script([
        Fault::too_many_requests(Some("2")),
        Fault::too_many_requests(Some(&date)),
    ]);
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    let l = logins(&s);
    let statuses: Vec<u16> = l.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 200]);
    let first = secs(l[0].at, l[1].at);
    let second = secs(date_at, l[2].at);
    eprintln!(
        "retry {first:.3} s after Retry-After: 2; {second:+.3} s from the Retry-After date ({:.3} s after the 429)",
        secs(l[1].at, l[2].at)
    );
    // retry-min is 100 ms: only Retry-After explains these waits.
    assert!(first >= 1.95, "retried {first:.3} s after Retry-After: 2");
    assert!(first < 6.0, "retried only {first:.3} s after Retry-After: 2");
    assert!(
        second >= -0.05,
        "retried {:.3} s before the Retry-After date",
        -second
    );
    assert!(second < 4.0, "retried {second:.3} s after the Retry-After date");
    assert!(d.log().contains("rate limited (HTTP 429)"), "{}", d.log());
}

#[test]
fn rate_limited_logins_without_retry_after_back_off() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &cred(
            "main",
            USER,
            "password",
            "retry-min = \"200ms\"\nretry-max = \"5s\"\n",
            &output("main.token", "raw"),
        ),
    );
    s.set_default(Some(Fault::too_many_requests(None)));
    let d = t.daemon();
    wait_for(WAIT, "five 429s", || logins(&s).len() >= 5, || d.log());
    s.set_default(None);
    let l = logins(&s);
    let g: Vec<f64> = l.windows(2).map(|w| secs(w[0].at, w[1].at)).collect();
    eprintln!("gaps between 429s without Retry-After (s): {g:.3?}");
    // 200 ms doubling, +-20%: 0.16-0.24, 0.32-0.48, 0.64-0.96, 1.28-1.92.
    assert!(g[0] >= 0.15, "{g:?}");
    assert!(g[1] >= 0.3, "{g:?}");
    assert!(g[2] >= 0.6, "{g:?}");
    assert!(g[3] >= 1.2 && g[3] > g[0], "no backoff after 429s: {g:?}");
    wait_file(&t.path("main.token"), WAIT, || d.log());
}
