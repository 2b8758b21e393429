//! Slow and huge answers and redirects: the timeout, the body cap, no
//! redirect followed, and an `http://` base URL off loopback.

use std::time::Duration;

use super::{WAIT, both, cfg_arg, config_with, log_time, logins, secs, wait_new_token};
use crate::support::*;
use nix::sys::signal::Signal;

/// A value from /proc/PID/status, in KiB (VmRSS, VmHWM).
fn proc_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A daemon with a 1 s API timeout holding a good token, then `fault` on the
/// next login (forced with SIGUSR1). Returns how long the slow attempt took.
fn slow_server(fault: Fault) -> (StandIn, TestDir, Daemon, f64) {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    std::fs::write(
        t.config_path(),
        config_with(
            &s.base_url(),
            "1s",
            0,
            &credential("main", &output("main.token", "raw")),
        ),
    )
    .unwrap();
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());
    s.script([fault]);
    d.signal(Signal::SIGUSR1);
    d.wait_log("no answer within 1s", 1, WAIT);
    assert_eq!(
        t.read("main.token").as_deref(),
        Some(good.as_str()),
        "the old token did not stay"
    );
    wait_new_token(&s, &t, "main.token", &good, &d);
    // From the log: the slow attempt started at its "logging in" line and
    // was given up at its "no answer within" line.
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    let failed = lines
        .iter()
        .position(|l| l.contains("no answer within 1s"))
        .unwrap();
    let started = lines[..failed]
        .iter()
        .rposition(|l| l.contains("logging in"))
        .unwrap();
    let gap = secs(log_time(lines[started]), log_time(lines[failed]));
    (s, t, d, gap)
}

#[test]
fn slow_headers_fail_the_attempt_at_the_timeout_and_keep_the_token() {
    let (_s, _t, _d, gap) = slow_server(Fault::Delay(Duration::from_secs(30)));
    eprintln!("a login whose answer never came was given up after {gap:.3} s (timeout 1s)");
    assert!(gap >= 0.95, "gave up after {gap:.3} s, before the timeout");
    assert!(gap < 2.5, "gave up only after {gap:.3} s");
}

#[test]
fn a_dribbled_body_fails_the_attempt_at_the_timeout_and_keeps_the_token() {
    let (_s, _t, _d, gap) = slow_server(Fault::Dribble {
        total: 4000,
        chunk: 8,
        every: Duration::from_millis(50),
    });
    eprintln!("a login whose body dribbled was given up after {gap:.3} s (timeout 1s)");
    assert!(gap >= 0.95, "gave up after {gap:.3} s, before the timeout");
    assert!(gap < 2.5, "gave up only after {gap:.3} s");
}

#[test]
fn a_huge_body_is_refused_quickly_with_or_without_length_and_memory_stays_small() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());
    let rss_before = proc_kib(d.pid(), "VmRSS");

    s.script([
        Fault::Huge {
            bytes: 50_000_000,
            chunked: true,
        },
        Fault::Huge {
            bytes: 50_000_000,
            chunked: false,
        },
    ]);
    d.signal(Signal::SIGUSR1);
    let new = wait_new_token(&s, &t, "main.token", &good, &d);
    assert_ne!(new, good);
    let l = logins(&s);
    assert_eq!(l.len(), 4, "good, huge chunked, huge sized, good");
    let chunked = secs(l[1].at, l[2].at);
    let sized = secs(l[2].at, l[3].at);
    let rss = proc_kib(d.pid(), "VmRSS");
    let hwm = proc_kib(d.pid(), "VmHWM");
    eprintln!(
        "huge bodies: next try {chunked:.3} s after the chunked one, {sized:.3} s after the sized one; \
         VmRSS {rss_before} KiB before, {rss} KiB after, peak VmHWM {hwm} KiB"
    );
    // Refused, then a 100-500 ms backoff: reading 50 MB would take longer on this machine.
    assert!(chunked < 3.0, "the chunked refusal took {chunked:.3} s");
    assert!(sized < 3.0, "the sized refusal took {sized:.3} s");
    assert!(hwm > 0 && hwm < 30 * 1024, "peak RSS {hwm} KiB");
    assert!(rss > 0 && rss < 30 * 1024, "RSS {rss} KiB");
    assert_eq!(d.log().matches("larger than").count(), 2, "{}", d.log());
}

#[test]
fn redirects_are_not_followed_and_the_error_names_the_status() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let elsewhere = format!("{}/moved/auth/login", s.base_url());
    s.script([301, 302, 307, 308].map(|code| Fault::redirect(code, &elsewhere)));
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    let all = s.requests();
    assert!(
        all.iter().all(|r| !r.path.starts_with("/moved")),
        "a redirect was followed: {all:?}"
    );
    let statuses: Vec<u16> = all.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [301, 302, 307, 308, 200]);
    let log = d.log();
    for code in [301, 302, 307, 308] {
        assert!(
            log.contains(&format!("redirect (HTTP {code}) not followed")),
            "{code} not named:\n{log}"
        );
    }
}

#[test]
fn http_base_url_off_loopback_is_refused_by_check_with_78_naming_base_url() {
    // `check` only: it contacts nothing, so these hosts are never reached.
    let t = TestDir::new();
    for base in [
        "http://api.voipbin.net",
        "http://192.0.2.10:8080",
        "http://localhost.example.com",
        "http://[2001:db8::1]",
    ] {
        t.write_config(base, &credential("main", &output("main.token", "raw")));
        let out = t.run(&["check", "-c", &cfg_arg(&t)]);
        let all = both(&out);
        assert_eq!(out.status.code(), Some(78), "{base}: {all}");
        assert!(all.contains("api.base-url"), "{base}: {all}");
        assert!(all.contains(&cfg_arg(&t)), "{base}: file not named: {all}");
    }
    // Loopback in every spelling is fine.
    for base in [
        "http://127.0.0.1:9",
        "http://127.8.9.10:9",
        "http://localhost:9",
        "http://[::1]:9",
    ] {
        t.write_config(base, &credential("main", &output("main.token", "raw")));
        let out = t.run(&["check", "-c", &cfg_arg(&t)]);
        assert_eq!(out.status.code(), Some(0), "{base}: {}", both(&out));
    }
}
