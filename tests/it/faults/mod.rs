//! Faults and hostile input: the real binary against the stand-in API
//! misbehaving in every way it can, against broken output directories and
//! against hostile files. One test per row of the fault matrix (see the
//! names); TLS is in the `tls` module.
//!
//! Loopback only: nothing here resolves a name or contacts another host.

mod config_files;
mod many_credentials;
mod outputs;
mod rate_limits;
mod secrets;
mod server_errors;
mod slow_answers;
mod tokens;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::support::*;
use voipbin_tokend_standin::LoginRecord;

/// A generous bound for anything that should take a second or two.
const WAIT: Duration = Duration::from_secs(20);

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

/// The timestamp at the start of a text log line.
fn log_time(line: &str) -> SystemTime {
    let ts = line.split_whitespace().next().unwrap_or_default();
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .unwrap_or_else(|_| panic!("no timestamp in {line:?}"))
}
