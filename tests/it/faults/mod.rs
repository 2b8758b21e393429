//! Faults and hostile input: the real binary against the stand-in API
//! misbehaving in every way it can, against broken output directories and
//! against hostile files. One test per row of the fault matrix (see the
//! names); TLS is in tls.rs.
//!
//! Loopback only: nothing here resolves a name or contacts another host.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::support::*;
use nix::sys::signal::Signal;
use voipbin_tokend_standin::{LoginRecord, RateLimit, format_http_date};

/// A generous bound for anything that should take a second or two.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Helpers.

/// A config: `[api]` with this timeout and login budget, `[state]`, then `rest`.
fn config_with(base_url: &str, timeout: &str, max_logins_per_second: u32, rest: &str) -> String {
    format!(
        "[api]\nbase-url = \"{base_url}\"\ntimeout = \"{timeout}\"\nmax-logins-per-second = {max_logins_per_second}\n\n\
         [state]\ndir = \"state\"\n\n{rest}"
    )
}

/// A credential with `extra` keys (retries, renew-at...) and `outputs`.
fn cred(name: &str, username: &str, password_file: &str, extra: &str, outputs: &str) -> String {
    format!(
        "[[credential]]\nname = \"{name}\"\nusername = \"{username}\"\npassword-file = \"{password_file}\"\n{extra}\n{outputs}"
    )
}

const FAST: &str = "retry-min = \"100ms\"\nretry-max = \"500ms\"\n";

/// Every `POST /auth/login` the stand-in saw, oldest first.
fn logins(s: &StandIn) -> Vec<LoginRecord> {
    s.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/auth/login")
        .collect()
}

/// Seconds from `a` to `b` (negative if `b` is earlier).
fn secs(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Log lines at WARN level that contain `needle`.
fn warn_lines(log: &str, needle: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(" WARN ") && l.contains(needle))
        .count()
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn cfg_arg(t: &TestDir) -> String {
    t.config_path().display().to_string()
}

/// Waits until `name` holds the last token the stand-in issued, and that is
/// not `old`; returns it.
fn wait_new_token(s: &StandIn, t: &TestDir, name: &str, old: &str, d: &Daemon) -> String {
    let mut now = String::new();
    wait_for(
        WAIT,
        &format!("a new token in {name}"),
        || {
            now = t.read(name).and_then(|x| token_in(&x)).unwrap_or_default();
            !now.is_empty() && now != old && s.issued_tokens().contains(&now)
        },
        || d.log(),
    );
    now
}

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

/// Names in `dir` that start with a dot (temp files).
fn dot_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// Watches a file in a thread and collects every content seen.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<HashSet<String>>,
}

impl Watcher {
    fn start(path: PathBuf) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = HashSet::new();
            while !flag.load(Ordering::SeqCst) {
                match std::fs::read_to_string(&path) {
                    Ok(x) => seen.insert(x),
                    Err(_) => seen.insert("<missing>".to_string()),
                };
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        });
        Watcher { stop, thread }
    }

    fn finish(self) -> HashSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Runs `cmd` to completion; panics if it takes longer than `timeout`.
fn output_within(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{cmd:?} did not exit within {timeout:?}: {}", both(&out));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

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

/// Every part of every issued token, and the token itself, that must never
/// show up in a log.
fn token_secrets(s: &StandIn) -> Vec<String> {
    let mut v = Vec::new();
    for tok in s.issued_tokens() {
        for part in tok.split('.') {
            if part.len() >= 8 {
                v.push(part.to_string());
            }
        }
        v.push(tok);
    }
    v
}

fn assert_no_secrets(log: &str, secrets: &[String], what: &str) {
    for secret in secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{what}: the log holds a secret ({}...)",
            &secret[..secret.len().min(12)]
        );
    }
}

// ---------------------------------------------------------------------------
// API unreachable; 5xx; unusable bodies.

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

// ---------------------------------------------------------------------------
// 400, 429.

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

// ---------------------------------------------------------------------------
// Slow and huge answers; redirects.

/// The timestamp at the start of a text log line.
fn log_time(line: &str) -> SystemTime {
    let ts = line.split_whitespace().next().unwrap_or_default();
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .unwrap_or_else(|_| panic!("no timestamp in {line:?}"))
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

// ---------------------------------------------------------------------------
// Unusable tokens, expired tokens, a skewed server clock.

#[test]
fn malformed_tokens_are_refused_logged_without_the_token_and_the_old_one_stays() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let outputs = output("main.token", "raw") + &output("main.json", "json");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());

    s.script([
        Fault::NotJwt,
        Fault::BadBase64,
        Fault::NonJsonClaims,
        Fault::BadExpire,
        // The stand-in's BadBase64 token has `%` in it, refused as "not a
        // JWT" before any decoding; this one reaches the base64 decoder.
        Fault::Status {
            status: 200,
            body: r#"{"username":"x","token":"eyJhbGciOiJIUzI1NiJ9.A.c2lnbmF0dXJl"}"#.into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
        },
    ]);
    let watcher = Watcher::start(t.path("main.token"));
    let json_watcher = Watcher::start(t.path("main.json"));
    d.signal(Signal::SIGUSR1);
    let new = wait_new_token(&s, &t, "main.token", &good, &d);
    let seen = watcher.finish();
    let seen_json = json_watcher.finish();

    let issued = s.issued_tokens();
    assert_eq!(issued.len(), 6, "good, four bad, good");
    assert_eq!(issued[5], new);
    let allowed: HashSet<String> = [good.clone(), new.clone()].into();
    assert!(seen.is_subset(&allowed), "the raw file held a bad token");
    for bad in &issued[1..5] {
        assert!(
            seen_json.iter().all(|x| !x.contains(bad.as_str())),
            "the JSON file held a bad token"
        );
    }
    let log = d.log();
    for needle in [
        "not a JWT",
        "not valid base64url",
        "not a JSON object of claims",
        "`expire` claim",
    ] {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    assert!(
        log.matches("not a JWT").count() >= 2,
        "not-a-jwt and bad base64: {log}"
    );
    assert_eq!(log.matches("unusable token").count(), 5, "{log}");
    let mut secrets = token_secrets(&s);
    secrets.push("eyJhbGciOiJIUzI1NiJ9.A.c2lnbmF0dXJl".into());
    secrets.push("c2lnbmF0dXJl".into());
    assert_no_secrets(&log, &secrets, "malformed tokens");
    assert!(
        !log.contains("not-a-jwt") && !log.contains("yesterday-ish"),
        "{log}"
    );
}

#[test]
fn an_already_expired_token_from_the_server_is_refused_and_the_old_one_stays() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());

    // In the real `expire` form, and with standard `exp`/`iat` claims.
    s.script([Fault::Expired]);
    let watcher = Watcher::start(t.path("main.token"));
    d.signal(Signal::SIGUSR1);
    let second = wait_new_token(&s, &t, "main.token", &good, &d);
    s.set_claim_style(ClaimStyle::Exp);
    s.script([Fault::Expired]);
    d.signal(Signal::SIGUSR1);
    let third = wait_new_token(&s, &t, "main.token", &second, &d);
    let seen = watcher.finish();

    let issued = s.issued_tokens();
    assert_eq!(issued.len(), 5, "good, expired, good, expired (exp), good");
    let allowed: HashSet<String> = [good, second, third].into();
    assert!(seen.is_subset(&allowed), "the file held an expired token");
    let log = d.log();
    assert_eq!(log.matches("already expired").count(), 2, "{log}");
    assert_no_secrets(&log, &token_secrets(&s), "expired tokens");
}

/// 4 s tokens from a server whose clock is `skew` seconds off: expiry and
/// renewal follow the server's view, shifted into ours.
fn skewed_server(skew: i64) {
    let s = standin(Duration::from_secs(4));
    s.set_default(Some(Fault::ServerDateSkew(skew)));
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &cred(
            "main",
            USER,
            "password",
            "renew-at = 0.8\njitter = 0.0\nretry-min = \"100ms\"\nretry-max = \"500ms\"\n",
            &output("main.json", "json"),
        ),
    );
    let d = t.daemon();
    let text = wait_file(&t.path("main.json"), WAIT, || d.log());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let parse = |k: &str| {
        time::OffsetDateTime::parse(
            v[k].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let lifetime = (parse("expires_at") - parse("obtained_at")).as_seconds_f64();
    eprintln!("skew {skew:+} s: expires_at - obtained_at in the JSON output = {lifetime:.3} s");
    // The Date header has whole seconds, so up to a second more.
    assert!(
        (2.9..=5.2).contains(&lifetime),
        "expires_at is not in our clock: lifetime {lifetime:.3} s"
    );

    wait_for(WAIT, "three logins", || s.logins_ok() >= 3, || d.log());
    let l = logins(&s);
    let g: Vec<f64> = l.windows(2).map(|w| secs(w[0].at, w[1].at)).collect();
    eprintln!("skew {skew:+} s: gaps between renewals of 4 s tokens (s): {g:.3?}");
    for gap in &g[..2] {
        assert!(
            (2.5..=6.0).contains(gap),
            "renewed {gap:.3} s apart; 0.8 of a 4 s lifetime is 3.2 s: {g:?}"
        );
    }
    assert!(l.iter().all(|r| r.status == 200));
    let log = d.log();
    assert_eq!(
        warn_lines(&log, "clock differs"),
        1,
        "warned not exactly once:\n{log}"
    );
    assert!(!log.contains("unusable token"), "{log}");
}

#[test]
fn server_clock_ahead_by_an_hour_uses_the_servers_view_and_warns_once() {
    skewed_server(3600);
}

#[test]
fn server_clock_behind_by_an_hour_uses_the_servers_view_and_warns_once() {
    skewed_server(-3600);
}

// ---------------------------------------------------------------------------
// Broken output directories.

/// A tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", both(&out).trim()));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Fills the filesystem of `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![b'x'; 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    p
}

#[test]
fn a_full_disk_keeps_the_old_file_whole_leaves_no_temp_and_other_outputs_are_written() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let full = t.path("full");
    let _mounted = match Tmpfs::mount(&full, "16k") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: a full disk needs a small tmpfs and this sandbox refuses it: {e}");
            return;
        }
    };
    let outputs = output("full/main.json", "json") + &output("main.token", "raw");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());
    let old_json = wait_file(&full.join("main.json"), WAIT, || d.log());
    let filler = fill(&full);

    d.signal(Signal::SIGUSR1);
    let new = wait_new_token(&s, &t, "main.token", &good, &d);
    d.wait_log("No space left on device", 1, WAIT);
    // Retried with backoff, without logging in again.
    wait_for(
        WAIT,
        "three failed writes",
        || d.log().matches("No space left on device").count() >= 3,
        || d.log(),
    );
    let log = d.log();
    assert_eq!(s.logins_ok(), 2, "a failed write made it log in again");
    let line = log
        .lines()
        .find(|l| l.contains("No space left on device"))
        .unwrap();
    eprintln!("disk full: {line}");
    assert!(
        line.contains(&full.display().to_string()) && line.contains("main.json"),
        "the error does not name the output: {line}"
    );
    assert_eq!(
        std::fs::read_to_string(full.join("main.json")).unwrap(),
        old_json,
        "the old file did not stay whole"
    );
    assert!(
        dot_files(&full).is_empty(),
        "temp files left: {:?}",
        dot_files(&full)
    );
    assert_eq!(t.read("main.token").as_deref(), Some(new.as_str()));

    // Space again: the retry writes the new token.
    std::fs::remove_file(filler).unwrap();
    wait_for(
        WAIT,
        "the new token in the JSON output",
        || {
            token_in(&std::fs::read_to_string(full.join("main.json")).unwrap_or_default()).as_deref()
                == Some(new.as_str())
        },
        || d.log(),
    );
    assert!(dot_files(&full).is_empty());
    assert_eq!(s.logins_ok(), 2);
}

/// `chattr +i` on a directory, undone on drop.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Result<Immutable, String> {
        let out = Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run chattr: {e}"))?;
        if !out.status.success() {
            return Err(format!("chattr +i failed: {}", both(&out).trim()));
        }
        Ok(Immutable(dir.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).output();
    }
}

#[test]
fn an_unwritable_output_directory_fails_that_output_by_name_and_heals_when_writable() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let locked = t.path("locked");
    std::fs::create_dir(&locked).unwrap();
    let outputs = output("locked/main.token", "raw") + &output("main.env", "env");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let d = t.daemon();
    let good = wait_file(&locked.join("main.token"), WAIT, || d.log());
    wait_file(&t.path("main.env"), WAIT, || d.log());

    let guard = match Immutable::set(&locked) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("SKIPPED: an unwritable directory as root needs chattr +i, refused here: {e}");
            return;
        }
    };
    d.signal(Signal::SIGUSR1);
    wait_for(
        WAIT,
        "the new token in main.env",
        || {
            t.read("main.env")
                .and_then(|x| token_in(&x))
                .is_some_and(|x| x != good)
        },
        || d.log(),
    );
    d.wait_log("cannot create a temp file beside", 2, WAIT);
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("cannot create a temp file beside"))
        .unwrap();
    eprintln!("unwritable directory: {line}");
    assert!(
        line.contains(&locked.display().to_string()),
        "the error does not name the directory: {line}"
    );
    assert_eq!(std::fs::read_to_string(locked.join("main.token")).unwrap(), good);
    assert_eq!(s.logins_ok(), 2, "a failed write made it log in again");

    drop(guard);
    let new = token_in(&t.read("main.env").unwrap()).unwrap();
    wait_for(
        WAIT,
        "the new token in the unlocked output",
        || std::fs::read_to_string(locked.join("main.token")).ok().as_deref() == Some(new.as_str()),
        || d.log(),
    );
    assert!(dot_files(&locked).is_empty());
}

#[test]
fn an_output_directory_created_later_is_written_by_the_retries() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let outputs = output("later/main.token", "raw") + &output("main.token", "raw");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let d = t.daemon();
    let tok = wait_file(&t.path("main.token"), WAIT, || d.log());
    d.wait_log("does not exist", 2, WAIT);
    std::fs::create_dir(t.path("later")).unwrap();
    wait_for(
        WAIT,
        "the token in later/main.token",
        || t.read("later/main.token").as_deref() == Some(tok.as_str()),
        || d.log(),
    );
    assert_eq!(s.login_requests(), 1, "a failed write made it log in again");
}

// ---------------------------------------------------------------------------
// Hostile files: symlinks, planted temp files.

#[test]
fn a_symlinked_output_is_replaced_by_a_file_and_the_link_target_is_untouched() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    std::fs::write(t.path("victim"), "VICTIM").unwrap();
    std::os::unix::fs::symlink(t.path("victim"), t.path("main.token")).unwrap();
    std::os::unix::fs::symlink(t.path("nowhere"), t.path("dangling.token")).unwrap();
    let outputs = output("main.token", "raw") + &output("dangling.token", "raw");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let d = t.daemon();
    let tok = wait_file(&t.path("main.token"), WAIT, || d.log());
    wait_file(&t.path("dangling.token"), WAIT, || d.log());
    for name in ["main.token", "dangling.token"] {
        let meta = std::fs::symlink_metadata(t.path(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is still a link");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(t.read(name).as_deref(), Some(tok.as_str()));
    }
    assert_eq!(t.read("victim").as_deref(), Some("VICTIM"));
    assert!(
        !t.path("nowhere").exists(),
        "the dangling link's target was created"
    );
}

#[test]
fn planted_temp_files_are_removed_at_start_and_never_reused() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    std::fs::write(t.path("victim"), "VICTIM").unwrap();
    std::fs::write(t.path(".main.token.tmp-1-0000000000000000"), "PLANTED").unwrap();
    std::os::unix::fs::symlink(t.path("victim"), t.path(".main.token.tmp-evil")).unwrap();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());
    d.wait_log("removed temp files left by an earlier run", 1, WAIT);
    assert!(d.log().contains("removed=2"), "{}", d.log());
    assert!(dot_files(t.dir.path()).is_empty(), "{:?}", t.entries());
    assert_eq!(t.read("victim").as_deref(), Some("VICTIM"));

    // Planted while it runs, under names a writer might pick: not reused.
    let pid = d.pid();
    let planted = [
        format!(".main.token.tmp-{pid}-0000000000000000"),
        format!(".main.token.tmp-{pid}-ffffffffffffffff"),
    ];
    for p in &planted {
        std::fs::write(t.path(p), "PLANTED").unwrap();
    }
    d.signal(Signal::SIGUSR1);
    wait_new_token(&s, &t, "main.token", &good, &d);
    for p in &planted {
        assert_eq!(t.read(p).as_deref(), Some("PLANTED"), "{p} was reused");
    }
    assert_eq!(t.read("victim").as_deref(), Some("VICTIM"));
}

// ---------------------------------------------------------------------------
// Config and password files.

#[test]
fn owner_without_the_right_to_chown_exits_78_from_check_and_run() {
    let usable = Command::new("setpriv")
        .args(["--bounding-set=-chown", "--inh-caps=-chown", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable {
        eprintln!("SKIPPED: setpriv (util-linux) is missing or cannot drop CAP_CHOWN here");
        return;
    }
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    for (key, extra) in [
        ("owner", "owner = \"nobody\"\n"),
        ("group", "group = \"nogroup\"\n"),
    ] {
        let out = format!("[[credential.output]]\npath = \"main.token\"\nformat = \"raw\"\n{extra}\n");
        t.write_config(&s.base_url(), &credential("main", &out));
        // With CAP_CHOWN (root) it is valid.
        let ok = t.run(&["check", "-c", &cfg_arg(&t)]);
        assert_eq!(ok.status.code(), Some(0), "{}", both(&ok));
        for cmd in ["check", "run"] {
            let mut c = Command::new("setpriv");
            c.args([
                "--bounding-set=-chown",
                "--inh-caps=-chown",
                BIN,
                cmd,
                "-c",
                &cfg_arg(&t),
            ])
            .current_dir(t.dir.path())
            .env("RUST_LOG", "voipbin_tokend=debug")
            .env_remove("NOTIFY_SOCKET");
            let out = output_within(c, WAIT);
            let all = both(&out);
            assert_eq!(out.status.code(), Some(78), "{cmd} with {key}: {all}");
            assert!(
                all.contains(&format!("output[0].{key}")),
                "{cmd}: {key} not named: {all}"
            );
        }
        assert!(!t.path("main.token").exists());
    }
    assert_eq!(s.login_requests(), 0);
}

#[test]
fn a_missing_or_empty_password_file_fails_that_credential_by_name_and_the_others_run() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    std::fs::write(t.path("empty.password"), "").unwrap();
    std::fs::write(t.path("newline.password"), "\n").unwrap();
    let rest = cred(
        "missing",
        USER,
        "no-such.password",
        FAST,
        &output("missing.token", "raw"),
    ) + &cred(
        "empty",
        USER,
        "empty.password",
        FAST,
        &output("empty.token", "raw"),
    ) + &cred(
        "newline",
        USER,
        "newline.password",
        FAST,
        &output("newline.token", "raw"),
    ) + &cred("good", USER, "password", FAST, &output("good.token", "raw"));
    t.write_config(&s.base_url(), &rest);
    let d = t.daemon();
    wait_file(&t.path("good.token"), WAIT, || d.log());
    let missing = t.path("no-such.password").display().to_string();
    let empty = t.path("empty.password").display().to_string();
    let newline = t.path("newline.password").display().to_string();
    d.wait_log(&format!("cannot read password file {missing}"), 1, WAIT);
    d.wait_log(&format!("password from file {empty} is empty"), 1, WAIT);
    d.wait_log(&format!("password from file {newline} is empty"), 1, WAIT);
    assert_eq!(s.login_requests(), 1, "only the good credential logged in");
    for name in ["missing.token", "empty.token", "newline.token"] {
        assert!(!t.path(name).exists());
    }

    // Fixed: that credential heals on its own.
    std::fs::write(t.path("no-such.password"), format!("{PASSWORD}\n")).unwrap();
    wait_file(&t.path("missing.token"), WAIT, || d.log());
}

#[test]
fn a_world_readable_password_file_is_warned_about_by_name() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let pw = t.path("password");
    let needle = format!("password file {} is readable by every user", pw.display());

    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = t.run(&["check", "-c", &cfg_arg(&t)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!both(&out).contains("readable by every user"), "{}", both(&out));

    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = t.run(&["check", "-c", &cfg_arg(&t)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(both(&out).contains(&needle), "{}", both(&out));
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    d.wait_log(&needle, 1, WAIT);
    assert_eq!(warn_lines(&d.log(), &needle), 1, "{}", d.log());
}

#[test]
fn a_world_writable_config_file_is_warned_about_by_name() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let needle = format!("config file {} is writable by every user", cfg_arg(&t));
    std::fs::set_permissions(t.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = t.run(&["check", "-c", &cfg_arg(&t)]);
    assert!(!both(&out).contains("writable by every user"), "{}", both(&out));

    std::fs::set_permissions(t.config_path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = t.run(&["check", "-c", &cfg_arg(&t)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(both(&out).contains(&needle), "{}", both(&out));
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    d.wait_log(&needle, 1, WAIT);
    assert_eq!(warn_lines(&d.log(), &needle), 1, "{}", d.log());
}

#[test]
fn a_repeated_credential_name_or_output_path_exits_78_from_check_and_run() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let cases = [
        (
            "same name",
            credential("main", &output("a.token", "raw")) + &credential("main", &output("b.token", "raw")),
            "credential[1].name",
        ),
        (
            "same path, one credential",
            credential("main", &(output("a.token", "raw") + &output("a.token", "env"))),
            "credential[main].output[1].path",
        ),
        (
            "same path, two credentials",
            credential("one", &output("a.token", "raw")) + &credential("two", &output("a.token", "json")),
            "credential[two].output[0].path",
        ),
        (
            "same path spelled differently",
            credential("one", &output("a.token", "raw"))
                + &credential("two", &output(&t.path("a.token").display().to_string(), "raw")),
            "credential[two].output[0].path",
        ),
        (
            "same path through ./",
            credential("one", &output("a.token", "raw")) + &credential("two", &output("./a.token", "raw")),
            "credential[two].output[0].path",
        ),
    ];
    for (what, rest, key) in cases {
        t.write_config(&s.base_url(), &rest);
        for cmd in ["check", "run"] {
            let out = t.run(&[cmd, "-c", &cfg_arg(&t)]);
            let all = both(&out);
            assert_eq!(out.status.code(), Some(78), "{what}, {cmd}: {all}");
            assert!(all.contains(key), "{what}, {cmd}: {key} not named: {all}");
        }
    }
    assert_eq!(s.login_requests(), 0);
    assert!(!t.path("a.token").exists());
}

// ---------------------------------------------------------------------------
// Many credentials.

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

// ---------------------------------------------------------------------------
// Secrets under every fault.

#[test]
fn trace_log_across_many_faults_never_holds_a_password_or_token_part() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let outputs = output("main.token", "raw") + &output("main.json", "json");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let elsewhere = format!("{}/moved", s.base_url());
    s.script([
        Fault::status(400),
        Fault::status(500),
        Fault::Status {
            status: 200,
            body: "<html>maintenance</html>".into(),
            headers: vec![("Content-Type".into(), "text/html".into())],
        },
        Fault::NotJwt,
        Fault::BadBase64,
        Fault::NonJsonClaims,
        Fault::BadExpire,
        Fault::Expired,
        Fault::too_many_requests(Some("1")),
        Fault::redirect(302, &elsewhere),
        Fault::Huge {
            bytes: 1_000_000,
            chunked: true,
        },
        Fault::Close,
        Fault::ServerDateSkew(3600),
    ]);
    let mut cmd = t.command(&["run", "-c", &cfg_arg(&t)]);
    cmd.env("RUST_LOG", "trace");
    let d = Daemon::spawn(cmd);
    wait_for(WAIT, "every fault played", || s.pending_faults() == 0, || d.log());
    wait_for(WAIT, "a good login", || s.logins_ok() >= 1, || d.log());
    let first = wait_file(&t.path("main.token"), WAIT, || d.log());
    d.signal(Signal::SIGUSR1);
    wait_new_token(&s, &t, "main.token", &first, &d);

    let log = d.log();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "not a trace log");
    assert!(!log.contains(PASSWORD), "the password is in the log");
    let secrets = token_secrets(&s);
    assert!(secrets.len() > 20);
    assert_no_secrets(&log, &secrets, "trace log");
    // The shared JWT header is not secret, but no other part may show either.
    eprintln!(
        "trace log of {} lines holds none of {} secrets",
        log.lines().count(),
        secrets.len()
    );
}
