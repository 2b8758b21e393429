//! The daemon's core behaviour against the stand-in API: how it logs in,
//! when it renews, what it does on start-up, what it never logs, and how
//! it stops.
//!
//! Failures and the login budget are in failures.rs; formats and atomic
//! writes in outputs.rs; once/check/inspect/demo in commands.rs.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;

// ---------------------------------------------------------------------------
// 1. Login as the server wants it.

#[test]
fn login_posts_json_to_auth_login_and_never_sends_the_cookie_back() {
    let s = standin(Duration::from_secs(60));
    let t = TestDir::new();
    raw_config(&s, &t, FAST_RETRY);
    let d = t.daemon();
    let first = wait_file(&t.path("main.token"), WAIT, || d.log());
    // A second login from the same process, whose HTTP client got a
    // Set-Cookie with the first answer.
    d.signal(Signal::SIGUSR1);
    wait_for(WAIT, "a second login", || s.logins_ok() >= 2, || d.log());
    wait_for(
        WAIT,
        "the second token on disk",
        || t.read("main.token").is_some_and(|x| x != first),
        || d.log(),
    );

    let all = s.requests();
    assert!(all.len() >= 2, "{all:?}");
    for r in &all {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/auth/login"),
            "{r:?}"
        );
        let ct = r.content_type.as_deref().unwrap_or("");
        assert!(ct.starts_with("application/json"), "content type {ct:?}");
        assert!(!r.had_cookie_header, "a login carried a Cookie header: {r:?}");
        assert_eq!(r.username.as_deref(), Some(USER));
        assert_eq!(r.status, 200);
    }
    assert_eq!(t.read("main.token"), s.issued_tokens().last().cloned());
}

// ---------------------------------------------------------------------------
// 2. Renewal.

#[test]
fn renews_at_renew_at_of_the_lifetime_and_only_writes_issued_tokens() {
    let s = standin(Duration::from_secs(2));
    let t = TestDir::new();
    raw_config(&s, &t, &format!("renew-at = 0.5\njitter = 0.0\n{FAST_RETRY}"));
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    // Watch the file while at least three more logins happen (~1 s apart).
    let mut seen: Vec<String> = Vec::new();
    wait_for(
        WAIT,
        "4 logins",
        || {
            if let Some(x) = t.read("main.token")
                && seen.last() != Some(&x)
            {
                seen.push(x);
            }
            s.logins_ok() >= 4
        },
        || d.log(),
    );
    wait_for(
        WAIT,
        "the 4th token on disk",
        || t.read("main.token") == s.issued_tokens().last().cloned(),
        || d.log(),
    );
    let issued: HashSet<String> = s.issued_tokens().into_iter().collect();
    for x in &seen {
        assert!(
            issued.contains(x),
            "the file held something the stand-in never issued"
        );
    }
    assert!(seen.len() >= 3, "file changed only {} times", seen.len());

    let l = logins(&s);
    let g = gaps(&l);
    eprintln!("renewal gaps (s): {g:.3?}");
    // renew-at 0.5 of a 2 s token: about 1 s apart.
    assert!(
        (0.3..1.8).contains(&g[0]),
        "second login {:.3} s after the first",
        g[0]
    );
    for x in &g {
        assert!((0.3..1.8).contains(x), "logins {x:.3} s apart: {g:?}");
    }
}

// ---------------------------------------------------------------------------
// 5. Start-up reuse.

#[test]
fn restart_reuses_a_token_not_yet_due_without_login_or_rewrite() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &credential(
            "main",
            &(output("main.token", "raw") + &output("main.env", "env")),
        ),
    );
    let out = t.run(&["once", "-c", t.config_path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(s.login_requests(), 1);
    let files = ["main.token", "main.env"];
    let before: Vec<_> = files
        .iter()
        .map(|f| (t.read(f).unwrap(), mtime(&t.path(f))))
        .collect();
    // Let a rewrite show in the mtime even on coarse-timestamp filesystems.
    std::thread::sleep(Duration::from_millis(20));

    let mut d = t.daemon();
    d.wait_log("reusing the token found on disk", 1, WAIT);
    // Outputs are checked (and a login, were one wrongly due, started) at
    // once after that line; give a loaded machine ample time for either.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.login_requests(), 1, "a restart logged in\n{}", d.log());
    let after: Vec<_> = files
        .iter()
        .map(|f| (t.read(f).unwrap(), mtime(&t.path(f))))
        .collect();
    assert_eq!(before, after, "a file was rewritten on restart");
    stop(&mut d, Signal::SIGTERM);
    assert_eq!(s.login_requests(), 1);
}

#[test]

fn restart_does_not_rewrite_the_json_output_when_another_output_has_an_older_mtime() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &credential(
            "main",
            &(output("main.token", "raw") + &output("main.json", "json")),
        ),
    );
    let c = t.config_path().to_str().unwrap().to_string();
    let out = t.run(&["once", "-c", &c]);
    assert!(out.status.success(), "{}", both(&out));
    // The raw file was copied or touched: its mtime no longer matches the login.
    age_file(&t.path("main.token"), Duration::from_secs(5));
    let before = (t.read("main.json").unwrap(), mtime(&t.path("main.json")));
    let out = t.run(&["once", "-c", &c]);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(s.login_requests(), 1);
    let after = (t.read("main.json").unwrap(), mtime(&t.path("main.json")));
    assert_eq!(
        before,
        after,
        "main.json rewritten for the same token\n{}",
        both(&out)
    );
}

/// A datagram socket standing in for systemd's `$NOTIFY_SOCKET`.
fn notify_socket(t: &TestDir) -> std::os::unix::net::UnixDatagram {
    let sock = std::os::unix::net::UnixDatagram::bind(t.path("notify.sock")).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    sock
}

/// Waits up to `timeout` for a notification containing `READY=1`.
fn wait_ready(sock: &std::os::unix::net::UnixDatagram, timeout: Duration) -> Result<(), Vec<String>> {
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < timeout {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == "READY=1") {
                return Ok(());
            }
            got.push(msg);
        }
    }
    Err(got)
}

#[test]

fn fresh_start_reports_ready_to_systemd_once_the_token_is_written() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    raw_config(&s, &t, FAST_RETRY);
    let sock = notify_socket(&t);
    let mut cmd = t.command(&["run", "-c", t.config_path().to_str().unwrap()]);
    cmd.env("NOTIFY_SOCKET", t.path("notify.sock"));
    let d = Daemon::spawn(cmd);
    if let Err(got) = wait_ready(&sock, WAIT) {
        panic!("no READY=1; got {got:?}\n{}", d.log());
    }
    assert!(
        t.read("main.token")
            .is_some_and(|x| s.issued_tokens().contains(&x))
    );
}

#[test]

fn restart_reusing_the_token_on_disk_still_reports_ready_to_systemd() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    raw_config(&s, &t, FAST_RETRY);
    let out = t.run(&["once", "-c", t.config_path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", both(&out));
    let sock = notify_socket(&t);
    let mut cmd = t.command(&["run", "-c", t.config_path().to_str().unwrap()]);
    cmd.env("NOTIFY_SOCKET", t.path("notify.sock"));
    let d = Daemon::spawn(cmd);
    d.wait_log("reusing the token found on disk", 1, WAIT);
    if let Err(got) = wait_ready(&sock, WAIT) {
        panic!(
            "no READY=1 after reusing the token on disk; got {got:?}\n{}",
            d.log()
        );
    }
    d.wait_log("every credential has a fresh token on disk", 1, WAIT);
    assert_eq!(s.login_requests(), 1);
}

#[test]
fn restart_renews_at_once_a_token_on_disk_past_renew_at() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    raw_config(&s, &t, FAST_RETRY);
    // Valid for one more minute, but obtained (by its file's time) ten
    // minutes ago: 0.8 of its 11-minute lifetime is long past.
    let old = s.mint_token(USER, Duration::from_secs(60));
    std::fs::write(t.path("main.token"), &old).unwrap();
    age_file(&t.path("main.token"), Duration::from_secs(600));

    let d = t.daemon();
    wait_for(
        WAIT,
        "a new token on disk",
        || {
            t.read("main.token")
                .is_some_and(|x| x != old && x.starts_with("eyJ"))
        },
        || d.log(),
    );
    assert_eq!(s.logins_ok(), 1);
    assert_eq!(t.read("main.token"), s.issued_tokens().last().cloned());
}

#[test]
fn an_idle_daemon_does_not_keep_rereading_its_config() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    raw_config(&s, &t, FAST_RETRY);
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    // Nothing touches config.toml from here on; watch for 2 s.
    std::thread::sleep(Duration::from_secs(2));
    let n = d.log().matches("config file touched").count();
    assert!(
        n <= 1,
        "{n} reload checks of an untouched config in 2 s\n{}",
        d.log()
    );
}

// ---------------------------------------------------------------------------
// 12. Secrets never logged.

fn secrets_stay_out_of_the_log(extra: &[&str]) -> String {
    let s = standin(Duration::from_secs(60));
    let t = TestDir::new();
    raw_config(&s, &t, FAST_RETRY);
    let mut d = daemon_with(&t, "trace", extra);
    wait_file(&t.path("main.token"), WAIT, || d.log());
    // A renewal.
    d.signal(Signal::SIGUSR1);
    wait_for(WAIT, "a renewal", || s.logins_ok() >= 2, || d.log());
    // A 400, a 500 and a token that is not a JWT, then success.
    s.script([Fault::status(400), Fault::status(500), Fault::NotJwt]);
    d.signal(Signal::SIGUSR1);
    wait_for(
        WAIT,
        "recovery after three failures",
        || s.logins_ok() >= 3,
        || d.log(),
    );
    wait_for(
        WAIT,
        "the last token on disk",
        || t.read("main.token") == s.issued_tokens().last().cloned(),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
    let log = d.log();
    assert_eq!(s.login_requests(), 6);
    assert!(log.contains("credentials rejected"), "{log}");
    assert!(log.contains("not a JWT"), "{log}");
    assert_no_secrets(&log, PASSWORD, &s.issued_tokens());
    log
}

#[test]
fn trace_log_never_holds_password_or_token_parts() {
    secrets_stay_out_of_the_log(&[]);
}

#[test]
fn json_trace_log_is_json_and_never_holds_secrets() {
    let log = secrets_stay_out_of_the_log(&["--log-format", "json"]);
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object(), "{line}");
    }
}

// ---------------------------------------------------------------------------
// 13. SIGTERM and SIGINT.

fn stops_cleanly(sig: Signal, in_flight: bool) {
    let s = standin(Duration::from_secs(60));
    let t = TestDir::new();
    let rest = cred(
        "main",
        USER,
        "password",
        FAST_RETRY,
        &(output("main.token", "raw") + &output("main.json", "json")),
    );
    // A long API timeout, so the delayed login is really still in flight.
    std::fs::write(t.config_path(), config_api(&s.base_url(), "30s", 0, &rest)).unwrap();
    if in_flight {
        s.script([Fault::Delay(Duration::from_secs(10))]);
    }
    let mut d = t.daemon();
    if in_flight {
        wait_for(
            WAIT,
            "the login to reach the server",
            || s.login_requests() >= 1,
            || d.log(),
        );
        std::thread::sleep(Duration::from_millis(100));
    } else {
        wait_file(&t.path("main.json"), WAIT, || d.log());
        wait_file(&t.path("main.token"), WAIT, || d.log());
    }
    let took = stop(&mut d, sig);
    eprintln!("{sig:?} (login in flight: {in_flight}): exit 0 after {took:?}");
    assert_eq!(dot_files(&t), Vec::<String>::new(), "temp files left");
    if in_flight {
        assert_eq!(s.logins_ok(), 0);
        assert!(t.read("main.token").is_none());
    }
}

#[test]
fn sigterm_exits_0_within_5s_without_temp_files() {
    stops_cleanly(Signal::SIGTERM, false);
}

#[test]
fn sigint_exits_0_within_5s_without_temp_files() {
    stops_cleanly(Signal::SIGINT, false);
}

#[test]
fn sigterm_during_a_slow_login_exits_0_within_5s() {
    stops_cleanly(Signal::SIGTERM, true);
}

#[test]
fn sigint_during_a_slow_login_exits_0_within_5s() {
    stops_cleanly(Signal::SIGINT, true);
}
