//! Many credentials: a thousand get tokens; five hundred at 100 logins a
//! second stay under the server's limit.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use super::{cfg_arg, config_with, cred, log_time, logins, secs};
use crate::support::*;
use voipbin_tokend_standin::RateLimit;

/// `n` credentials, each its own user with an output in out/.
fn many(n: usize, s_users: &mut Vec<(String, String)>) -> String {
    let mut rest = String::new();
    for i in 0..n {
        let user = format!("user{i}@example.com");
        s_users.push((user.clone(), PASSWORD.to_string()));
        rest.push_str(&cred(
            &format!("c{i}"),
            &user,
            "password",
            "retry-min = \"200ms\"\nretry-max = \"2s\"\n",
            &output(&format!("out/c{i}.token"), "raw"),
        ));
    }
    rest
}

/// The most of these times that fall within any one second.
fn busiest_second(mut at: Vec<SystemTime>) -> usize {
    at.sort();
    (0..at.len())
        .map(|i| at[i..].iter().take_while(|x| secs(at[i], **x) < 1.0).count())
        .max()
        .unwrap_or(0)
}

/// Waits until `n` tokens are in out/; returns how long from `start`.
fn wait_all(t: &TestDir, n: usize, start: Instant, d: &Daemon) -> Duration {
    let out = t.path("out");
    wait_for(
        Duration::from_secs(60),
        &format!("{n} tokens in out/"),
        || {
            std::fs::read_dir(&out)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".token"))
                        .count()
                })
                .unwrap_or(0)
                >= n
        },
        || d.log().lines().rev().take(40).collect::<Vec<_>>().join("\n"),
    );
    let took = start.elapsed();
    for i in 0..n {
        let text = std::fs::read_to_string(out.join(format!("c{i}.token"))).unwrap();
        assert!(text.starts_with("eyJ"), "c{i}.token holds no token");
    }
    took
}

#[test]
fn a_thousand_credentials_all_get_tokens() {
    const N: usize = 1000;
    let mut users = Vec::new();
    let t = TestDir::new();
    std::fs::create_dir(t.path("out")).unwrap();
    let rest = many(N, &mut users);
    let s = StandIn::start(StandInOptions {
        lifetime: Duration::from_secs(3600),
        users,
        rate_limit: None,
        ..StandInOptions::default()
    })
    .unwrap();
    std::fs::write(t.config_path(), config_with(&s.base_url(), "10s", 0, &rest)).unwrap();
    let start = Instant::now();
    let mut cmd = t.command(&["run", "-c", &cfg_arg(&t)]);
    cmd.env("RUST_LOG", "warn");
    let d = Daemon::spawn(cmd);
    let took = wait_all(&t, N, start, &d);
    eprintln!("{N} credentials, no login budget: all on disk {took:.2?} after start");
    assert_eq!(s.login_requests(), N as u64, "{}", d.log());
    assert_eq!(s.logins_ok(), N as u64);
    let users: HashSet<String> = logins(&s).into_iter().filter_map(|r| r.username).collect();
    assert_eq!(users.len(), N);
    assert!(took < Duration::from_secs(40), "took {took:?}");
}

/// 500 credentials at `max-logins-per-second = 100` against a stand-in
/// limiting at 120/s (burst 120). Returns the busiest second as the server
/// saw it and as the daemon sent them.
fn five_hundred_at_100_per_second() -> (usize, usize) {
    const N: usize = 500;
    let mut users = Vec::new();
    let t = TestDir::new();
    std::fs::create_dir(t.path("out")).unwrap();
    let rest = many(N, &mut users);
    let s = StandIn::start(StandInOptions {
        lifetime: Duration::from_secs(3600),
        users,
        rate_limit: Some(RateLimit {
            per_second: 120.0,
            burst: 120,
        }),
        ..StandInOptions::default()
    })
    .unwrap();
    std::fs::write(t.config_path(), config_with(&s.base_url(), "10s", 100, &rest)).unwrap();
    let start = Instant::now();
    let mut cmd = t.command(&["run", "-c", &cfg_arg(&t)]);
    cmd.env("RUST_LOG", "voipbin_tokend=debug");
    let d = Daemon::spawn(cmd);
    let took = wait_all(&t, N, start, &d);
    let l = logins(&s);
    let busiest = busiest_second(l.iter().map(|r| r.at).collect());
    // When the daemon sent them: its "logging in" lines, logged once the
    // login budget allowed the login.
    let sent: Vec<SystemTime> = d
        .log()
        .lines()
        .filter(|l| l.contains("logging in"))
        .map(log_time)
        .collect();
    assert_eq!(sent.len(), N, "one \"logging in\" line per login");
    let busiest_sent = busiest_second(sent);
    let spread = {
        let mut v: Vec<f64> = l.iter().map(|r| secs(l[0].at, r.at)).collect();
        v.sort_by(f64::total_cmp);
        v.chunks(50).map(|c| c[0]).collect::<Vec<_>>()
    };
    eprintln!(
        "{N} credentials at max-logins-per-second = 100: all on disk {took:.2?} after start; \
         busiest 1 s window held {busiest} logins at the server, {busiest_sent} as sent by the daemon; \
         every 50th arrival at (s): {spread:.3?}"
    );
    assert!(
        l.iter().all(|r| r.status != 429),
        "the server rate-limited a login"
    );
    assert_eq!(l.len(), N);
    assert!(
        took >= Duration::from_secs(3),
        "{N} logins in {took:?} break 100/s"
    );
    (busiest, busiest_sent)
}

#[test]
fn five_hundred_credentials_at_100_logins_per_second_all_get_tokens_without_a_429() {
    // The "logging in" lines are stamped a little after the budget allowed
    // each login, so they only show the pacing roughly.
    let (_, sent) = five_hundred_at_100_per_second();
    assert!(sent <= 110, "the daemon sent {sent} logins within one second");
}

#[test]
fn five_hundred_credentials_at_100_logins_per_second_never_exceed_100_in_any_second_at_the_server() {
    let (at_server, _) = five_hundred_at_100_per_second();
    assert!(
        at_server <= 100,
        "the server saw {at_server} logins within one second"
    );
}
