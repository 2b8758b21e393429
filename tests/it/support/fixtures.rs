//! Fixtures on top of the harness: config snippets, stand-in set-ups,
//! token and file helpers, log assertions.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
pub use voipbin_tokend_standin::LoginRecord;

use super::*;

/// A generous bound for anything that should take a second or two.
pub const WAIT: Duration = Duration::from_secs(15);

/// Retry settings that keep failure tests quick.
pub const FAST_RETRY: &str = "retry-min = \"100ms\"\nretry-max = \"500ms\"\n";

/// A second account the tests can break without touching the first.
pub const OTHER_USER: &str = "other@example.com";

/// An `[api]` section with the given timeout and login budget, then `rest`.
/// A `[state]` in the test dir is added unless `rest` has its own: a test
/// must never touch the machine's /var/lib/voipbin-tokend (nor take its lock).
pub fn config_api(base_url: &str, timeout: &str, max_logins_per_second: u32, rest: &str) -> String {
    let state = if rest.contains("[state]") {
        ""
    } else {
        "[state]\ndir = \"state\"\n\n"
    };
    format!(
        "[api]\nbase-url = \"{base_url}\"\ntimeout = \"{timeout}\"\nmax-logins-per-second = {max_logins_per_second}\n\n{state}{rest}"
    )
}

/// A credential section: `extra` holds further keys (renew-at, retries...).
pub fn cred(name: &str, username: &str, password_file: &str, extra: &str, outputs: &str) -> String {
    format!(
        "[[credential]]\nname = \"{name}\"\nusername = \"{username}\"\npassword-file = \"{password_file}\"\n{extra}\n{outputs}"
    )
}

/// An output section with extra keys (mode, variable, template...).
pub fn output_with(path: &str, format: &str, extra: &str) -> String {
    format!("[[credential.output]]\npath = \"{path}\"\nformat = \"{format}\"\n{extra}\n")
}

/// One credential "main" (password file ./password) with a raw output
/// main.token and `extra` keys.
pub fn raw_config(s: &StandIn, t: &TestDir, extra: &str) {
    t.write_config(
        &s.base_url(),
        &cred("main", USER, "password", extra, &output("main.token", "raw")),
    );
}

/// Every `POST /auth/login` the stand-in saw, oldest first.
pub fn logins(s: &StandIn) -> Vec<LoginRecord> {
    s.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/auth/login")
        .collect()
}

/// Seconds from `a` to `b` (negative if `b` is earlier).
pub fn secs(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The gaps, in seconds, between consecutive records.
pub fn gaps(records: &[LoginRecord]) -> Vec<f64> {
    records.windows(2).map(|w| secs(w[0].at, w[1].at)).collect()
}

/// The JSON claims of a token, decoded here (not with the daemon's code).
pub fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("payload is base64url");
    serde_json::from_slice(&bytes).expect("payload is JSON")
}

/// The `expire` claim of a stand-in token.
pub fn expire_of(token: &str) -> OffsetDateTime {
    let c = claims(token);
    let s = c["expire"].as_str().expect("an expire claim");
    OffsetDateTime::parse(s, &Rfc3339).expect("expire is RFC 3339")
}

/// A stand-in whose tokens state their expiry in `style`.
pub fn standin_styled(lifetime: Duration, style: ClaimStyle) -> StandIn {
    StandIn::start(StandInOptions {
        lifetime,
        users: vec![(USER.to_string(), PASSWORD.to_string())],
        claim_style: style,
        ..StandInOptions::default()
    })
    .expect("stand-in starts")
}

/// A token's expiry from whichever claim states it: `expire` (RFC 3339 or
/// the legacy `2006-01-02 15:04:05.000000`, UTC), else numeric `exp`.
pub fn expiry_of(token: &str) -> Option<OffsetDateTime> {
    let c = claims(token);
    if let Some(s) = c["expire"].as_str() {
        if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
            return Some(t);
        }
        let legacy =
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]");
        return Some(
            time::PrimitiveDateTime::parse(s, legacy)
                .expect("legacy expire")
                .assume_utc(),
        );
    }
    c["exp"]
        .as_i64()
        .map(|n| OffsetDateTime::from_unix_timestamp(n).unwrap())
}

/// RFC 3339 UTC to the whole second, as the outputs write it.
pub fn rfc3339_secs(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0).unwrap().format(&Rfc3339).unwrap()
}

/// Names in the dir starting with '.': temp files.
pub fn dot_files(t: &TestDir) -> Vec<String> {
    t.entries().into_iter().filter(|n| n.starts_with('.')).collect()
}

pub fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

pub fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// Sets a file's modification time `ago` in the past.
pub fn age_file(path: &Path, ago: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

/// `run -c config.toml` with `RUST_LOG` set to `rust_log` and `extra` global args.
pub fn daemon_with(t: &TestDir, rust_log: &str, extra: &[&str]) -> Daemon {
    let cfg = t.config_path();
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["run", "-c", cfg.to_str().unwrap()]);
    let mut cmd = t.command(&args);
    cmd.env("RUST_LOG", rust_log);
    Daemon::spawn(cmd)
}

/// Sends `sig`, waits for the exit, asserts exit 0 within 5 s; returns how long it took.
pub fn stop(d: &mut Daemon, sig: nix::sys::signal::Signal) -> Duration {
    let start = Instant::now();
    d.signal(sig);
    let (status, _) = d.wait_exit(Duration::from_secs(15));
    let took = start.elapsed();
    assert_eq!(status.code(), Some(0), "exit status after {sig:?}\n{}", d.log());
    assert!(
        took < Duration::from_secs(5),
        "exit after {sig:?} took {took:?} (promised < 5 s)\n{}",
        d.log()
    );
    took
}

/// Runs the binary with `stdin` fed to it.
pub fn run_with_stdin(t: &TestDir, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = t
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("output")
}

/// stdout + stderr as one string.
pub fn both(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Panics if `text` holds the password, any issued token, or the payload or
/// signature segment of one (the header segment is the same for every
/// HS256 token and is not secret).
pub fn assert_no_secrets(text: &str, password: &str, tokens: &[String]) {
    assert!(!text.contains(password), "the password appears in the log");
    for (i, tok) in tokens.iter().enumerate() {
        assert!(
            !text.contains(tok.as_str()),
            "issued token #{i} appears in the log"
        );
        let parts: Vec<&str> = tok.split('.').collect();
        for (j, part) in parts
            .iter()
            .enumerate()
            .skip(if parts.len() == 3 { 1 } else { 0 })
        {
            if part.len() >= 8 {
                assert!(
                    !text.contains(part),
                    "segment {j} of issued token #{i} appears in the log"
                );
            }
        }
    }
}

/// A `sh` command run in the test dir; returns stdout.
pub fn sh(t: &TestDir, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(t.dir.path())
        .output()
        .expect("sh runs");
    assert!(out.status.success(), "sh -c {script:?}: {}", both(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// A token lifetime no test outlives: no renewal happens unless asked for.
pub const LONG: Duration = Duration::from_secs(3600);

/// The soft and hard "Max open files" of a process, from /proc.
pub fn open_file_limits(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let n: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (n[0], n[1])
}
