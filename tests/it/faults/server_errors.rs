//! An unreachable API, server errors (5xx) and unusable bodies: the token
//! is kept, the attempt backs off, the warning is logged once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{WAIT, Watcher, logins, wait_new_token, warn_lines};
use crate::support::*;
use nix::sys::signal::Signal;

/// Every file under `dir` (recursively) with its bytes.
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            out.extend(all_files(&p));
        } else if meta.is_file() {
            out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
        }
    }
    out
}

#[test]
fn unreachable_api_keeps_the_token_backs_off_warns_once_and_recovers_by_itself() {
    let s = standin(Duration::from_secs(3600));
    let addr = s.addr();
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());

    // Connection refused from now on.
    drop(s);
    d.signal(Signal::SIGUSR1);
    d.wait_log("renewal failed again", 5, WAIT);
    let log = d.log();
    assert!(
        log.contains("Connection refused") || log.contains("connect"),
        "the error does not say why: {log}"
    );
    assert_eq!(
        warn_lines(&log, "renewal failed"),
        1,
        "one WARN for an outage, then debug lines"
    );
    assert_eq!(t.read("main.token").as_deref(), Some(good.as_str()));

    // Backed off: at retry-max 500 ms (+-20%, capped), 1.5 s hold at most 4 tries.
    let tries = |log: &str| log.matches("renewal failed").count();
    let before = tries(&d.log());
    std::thread::sleep(Duration::from_millis(1500));
    let during = tries(&d.log()) - before;
    eprintln!("tries in 1.5 s of outage at retry-max 500ms: {during}");
    assert!(during <= 5, "{during} tries in 1.5 s: no backoff");
    assert_eq!(t.read("main.token").as_deref(), Some(good.as_str()));

    // The API comes back on the same address: recovers without a signal.
    let s2 = StandIn::start(StandInOptions {
        lifetime: Duration::from_secs(3600),
        users: vec![(USER.to_string(), PASSWORD.to_string())],
        bind: Some(addr),
        ..StandInOptions::default()
    })
    .expect("the stand-in restarts on the same port");
    let new = wait_new_token(&s2, &t, "main.token", &good, &d);
    assert_ne!(new, good);
    d.wait_log("recovered", 1, WAIT);
    assert_eq!(warn_lines(&d.log(), "renewal failed"), 1);
}

#[test]
fn repeated_identical_server_errors_warn_once_not_once_per_try() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());

    s.set_default(Some(Fault::status(503)));
    d.signal(Signal::SIGUSR1);
    wait_for(
        WAIT,
        "six 503 answers",
        || logins(&s).iter().filter(|r| r.status == 503).count() >= 6,
        || d.log(),
    );
    // Let the sixth failure be logged.
    d.wait_log("HTTP 503", 6, WAIT);
    let log = d.log();
    let warns = warn_lines(&log, "HTTP 503");
    assert_eq!(
        warns, 1,
        "six identical 503s gave {warns} WARN lines (one per try):\n{log}"
    );
    assert_eq!(t.read("main.token").as_deref(), Some(good.as_str()));
    s.set_default(None);
    wait_new_token(&s, &t, "main.token", &good, &d);
}

#[test]
fn server_errors_and_unusable_bodies_keep_the_token_and_never_show_the_body() {
    const MARKER: &str = "BODY-MARKER-q7Zx31";
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let outputs = output("main.token", "raw") + &output("main.json", "json") + &output("main.env", "env");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());
    wait_file(&t.path("main.json"), WAIT, || d.log());
    wait_file(&t.path("main.env"), WAIT, || d.log());

    let h = |name: &str, value: &str| vec![(name.to_string(), value.to_string())];
    s.script([
        Fault::Status {
            status: 500,
            body: format!("<html><body>{MARKER} internal error</body></html>"),
            headers: h("Content-Type", "text/html"),
        },
        Fault::Status {
            status: 503,
            body: format!("{{\"error\":\"{MARKER}\"}}"),
            headers: h("Content-Type", "application/json"),
        },
        Fault::Status {
            status: 200,
            body: format!("<!doctype html><html><body>{MARKER}</body></html>"),
            headers: h("Content-Type", "text/html"),
        },
        Fault::Status {
            status: 200,
            body: format!("plain text {MARKER}"),
            headers: h("Content-Type", "text/plain"),
        },
        Fault::Status {
            status: 200,
            body: format!("{{\"username\":\"{MARKER}\",\"note\":\"{MARKER}\"}}"),
            headers: h("Content-Type", "application/json"),
        },
        Fault::Status {
            status: 200,
            body: format!("{{\"username\":\"x\",\"token\":12345,\"note\":\"{MARKER}\"}}"),
            headers: h("Content-Type", "application/json"),
        },
        Fault::Close,
    ]);
    let watcher = Watcher::start(t.path("main.token"));
    d.signal(Signal::SIGUSR1);
    let new = wait_new_token(&s, &t, "main.token", &good, &d);
    let seen = watcher.finish();
    let allowed: HashSet<String> = [good.clone(), new.clone()].into();
    assert!(seen.is_subset(&allowed), "the file held something else: {seen:?}");
    assert_eq!(s.pending_faults(), 0);
    assert_eq!(logins(&s).len(), 9, "good, 7 faults, good");

    let log = d.log();
    for needle in [
        "HTTP 500",
        "HTTP 503",
        "not JSON with a string `token`",
        "request failed",
    ] {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    assert!(!log.contains(MARKER), "a response body reached the log:\n{log}");
    for (path, bytes) in all_files(t.dir.path()) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(MARKER),
            "a response body reached {}",
            path.display()
        );
    }
    d.wait_log("recovered", 1, WAIT);
}
