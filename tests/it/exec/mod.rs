//! Exec mode (`voipbin-tokend exec -- COMMAND`, issue 16): the daemon runs
//! a child with the secret in its environment. Every test spawns the real
//! binary with a small `/bin/sh` child written into the test's temp dir;
//! the child appends records to `child.log` (`start PID`, `stop PID`,
//! `sig PID NAME`, ...) and dumps its environment to `env.PID`. The env
//! dumps hold secrets: they are compared inside the tests, never printed.
//!
//! `cargo test --test it exec::` runs them all.

mod bad_input;
mod env;
mod exits;
mod keys;
mod reap;
mod reload;
mod rotation;
mod signals;
mod start;
mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Generous bound on every wait: the machine may be slow and busy.
pub const WAIT: Duration = Duration::from_secs(25);

/// The standard child: dumps its environment to `env.PID`, traps the
/// signals a test sends (each logged as `sig PID NAME`), then logs
/// `start PID` and idles. TERM logs `stop PID` and exits 0; INT logs
/// `stop PID` and exits 0 too.
pub const STANDARD: &str = r#"
trap 'echo "sig $$ HUP" >> "$D/child.log"' HUP
trap 'echo "sig $$ USR1" >> "$D/child.log"' USR1
trap 'echo "sig $$ USR2" >> "$D/child.log"' USR2
trap 'echo "sig $$ WINCH" >> "$D/child.log"' WINCH
trap 'echo "stop $$" >> "$D/child.log"; exit 0' TERM INT
echo "start $$" >> "$D/child.log"
while :; do sleep 0.2; done
"#;

/// A child slow to stop: on TERM it logs `stopping PID`, takes 4 s, then
/// logs `stop PID` and exits 0.
pub const SLOW_STOP: &str = r#"
trap 'echo "sig $$ HUP" >> "$D/child.log"' HUP
trap 'echo "stopping $$" >> "$D/child.log"; sleep 4; echo "stop $$ $(date +%s.%N)" >> "$D/child.log"; exit 0' TERM
echo "start $$" >> "$D/child.log"
while :; do sleep 0.2; done
"#;

/// A test dir for exec mode: the config, the child script and its records.
/// Dropped after the daemon (declare it first): kills every child it
/// recorded that is still alive (a stubborn one survives its daemon's
/// SIGKILL) and every pid written to a `*.pid` file.
pub struct ExecDir {
    pub t: TestDir,
}

impl ExecDir {
    pub fn new() -> ExecDir {
        ExecDir { t: TestDir::new() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.t.path(name)
    }

    pub fn cfg(&self) -> String {
        self.t.config_path().to_str().unwrap().to_owned()
    }

    /// Writes `child.sh` (0755): `D` set to the dir, the environment dumped
    /// to `env.PID` (written whole, then renamed), stdout and stderr to
    /// /dev/null, then `body`.
    pub fn child(&self, body: &str) -> String {
        self.script("child.sh", body)
    }

    /// Writes the script `name` (0755) as [`child`](Self::child) does. Its
    /// stdout and stderr go to /dev/null: a child that outlives its daemon
    /// (a bug) must not hold the daemon's stderr pipe open, or
    /// `Daemon::wait_exit` would wait for the child too.
    pub fn script(&self, name: &str, body: &str) -> String {
        self.script_with_stdio(name, &format!("exec > /dev/null 2>&1\n{body}"))
    }

    /// Writes the script `name` (0755) keeping the stdio it inherits.
    pub fn script_with_stdio(&self, name: &str, body: &str) -> String {
        let dir = self.t.dir.path().display();
        let text =
            format!("#!/bin/sh\nD='{dir}'\nenv > \"$D/.env.$$\"\nmv \"$D/.env.$$\" \"$D/env.$$\"\n{body}");
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        chmod(&p, 0o755);
        p.to_str().unwrap().to_owned()
    }

    /// The `exec` command line: `exec -c config.toml FLAGS -- COMMAND...`.
    pub fn command(&self, flags: &[&str], command: &[&str]) -> std::process::Command {
        let cfg = self.cfg();
        let mut args = vec!["exec", "-c", cfg.as_str()];
        args.extend_from_slice(flags);
        args.push("--");
        args.extend_from_slice(command);
        self.t.command(&args)
    }

    /// Starts `exec -c config.toml FLAGS -- ./child.sh`.
    pub fn daemon(&self, flags: &[&str]) -> Daemon {
        let child = self.path("child.sh");
        Daemon::spawn(self.command(flags, &[child.to_str().unwrap()]))
    }

    /// The child's records, one a line ("" before the first).
    pub fn records(&self) -> String {
        self.t.read("child.log").unwrap_or_default()
    }

    /// The pids of the `start` records, oldest first.
    pub fn starts(&self) -> Vec<i32> {
        self.records()
            .lines()
            .filter_map(|l| l.strip_prefix("start "))
            .filter_map(|p| p.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// Whether a record `line` (exactly, or followed by fields) exists.
    pub fn has(&self, line: &str) -> bool {
        self.records()
            .lines()
            .any(|l| l == line || l.starts_with(&format!("{line} ")))
    }

    /// Waits until `n` children have started; returns their pids.
    pub fn wait_starts(&self, n: usize, d: &Daemon) -> Vec<i32> {
        wait_for(
            WAIT,
            &format!("{n} child start(s)"),
            || self.starts().len() >= n,
            || self.context(d),
        );
        self.starts()
    }

    /// Waits for the record `line`.
    pub fn wait_record(&self, line: &str, d: &Daemon) {
        wait_for(
            WAIT,
            &format!("the child's record {line:?}"),
            || self.has(line),
            || self.context(d),
        );
    }

    /// The environment child `pid` started with (secrets: never print it).
    pub fn env_of(&self, pid: i32) -> BTreeMap<String, String> {
        let text = self
            .t
            .read(&format!("env.{pid}"))
            .unwrap_or_else(|| panic!("no env dump of child {pid}"));
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The child records and the daemon's log, for a failed wait.
    pub fn context(&self, d: &Daemon) -> String {
        format!(
            "--- child.log ---\n{}--- daemon log ---\n{}",
            self.records(),
            d.log()
        )
    }

    /// The value of `var` in the env output `name`.
    pub fn output_var(&self, name: &str, var: &str) -> Option<String> {
        self.t
            .read(name)?
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")).map(str::to_owned))
    }
}

impl Drop for ExecDir {
    fn drop(&mut self) {
        let mut pids = self.starts();
        for name in self.t.entries() {
            if name.ends_with(".pid")
                && let Some(p) = self.t.read(&name).and_then(|x| x.trim().parse().ok())
            {
                pids.push(p);
            }
        }
        let dir = self.t.dir.path().display().to_string();
        for pid in pids {
            // Only a process that is still ours: its command line names this dir
            // (the child script) or it is a `sleep` we started.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains(&dir) || cmdline.starts_with("sleep") {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    proc_state(pid).is_some_and(|s| s != 'Z')
}

/// The state letter of `/proc/PID/stat` (`None`: no such process).
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The parent pid of `pid`, from `/proc/PID/status`.
pub fn ppid_of(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: i32, sig: Signal) {
    nix::sys::signal::kill(Pid::from_raw(pid), sig).expect("send signal");
}

/// Parses an RFC 3339 time.
pub fn rfc3339(s: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| panic!("not RFC 3339: {s:?}"))
}

/// Asserts `a` and `b` (RFC 3339) are the same instant, give or take the
/// second an output rounds to.
pub fn assert_same_time(a: &str, b: &str, what: &str) {
    let d = (rfc3339(a) - rfc3339(b)).abs();
    assert!(d <= time::Duration::seconds(1), "{what}: {a} vs {b}");
}

/// A free port on 127.0.0.1 and a `[health]` section listening on it.
pub fn health() -> (u16, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    (port, format!("[health]\nlisten = \"127.0.0.1:{port}\"\n\n"))
}

/// The status code of `GET path` on the health port (0: no answer).
pub fn http_status(port: u16, path: &str) -> u16 {
    http_get_raw(port, path)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A token credential `name` (user USER, ./password, fast retries) with `extra` keys and `outputs`.
pub fn token_cred(name: &str, extra: &str, outputs: &str) -> String {
    cred(name, USER, "password", &format!("{FAST_RETRY}{extra}"), outputs)
}

/// Stops the daemon with `sig` and returns its exit code (bounded wait).
pub fn stop_with(d: &mut Daemon, sig: Signal) -> Option<i32> {
    d.signal(sig);
    let (status, _) = d.wait_exit(WAIT);
    status.code()
}

/// Checks that the daemon's log (which also holds the child's stderr: the
/// children here print nothing) holds no password, token or key.
pub fn assert_log_clean(d: &Daemon, s: &StandIn) {
    let log = d.log();
    assert_no_secrets(&log, PASSWORD, &s.issued_tokens());
    assert_no_keys(&log, s);
}

/// The start/stop records of `records` alternate: every child's `start`
/// comes after the previous child's `stop` (never two children at once),
/// and each pid starts once.
pub fn assert_one_at_a_time(records: &str) {
    let mut running: Option<String> = None;
    let mut seen = std::collections::HashSet::new();
    for l in records.lines() {
        let mut w = l.split_whitespace();
        match (w.next(), w.next()) {
            (Some("start"), Some(pid)) => {
                assert!(
                    running.is_none(),
                    "child {pid} started while {running:?} still ran:\n{records}"
                );
                assert!(seen.insert(pid.to_owned()), "pid {pid} started twice:\n{records}");
                running = Some(pid.to_owned());
            }
            (Some("stop"), Some(pid)) => {
                assert_eq!(
                    running.as_deref(),
                    Some(pid),
                    "a stop of a child not running:\n{records}"
                );
                running = None;
            }
            _ => {}
        }
    }
}
