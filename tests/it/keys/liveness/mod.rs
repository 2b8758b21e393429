//! Access keys that stop working, and keys that pile up: a held key refused
//! (deleted while the daemon was stopped, or one call answered 401), a
//! state file restored from a backup, keys the server made that are not
//! used (answered already expired, or not savable on a full disk), and the
//! cap on live keys per installation. Each test spawns the binary against
//! the stand-in's key API (a day of key lifetime lasts seconds).
//!
//! The tests are in `refused` (a refused key and readiness), `restored` (a
//! state file from a backup) and `pile_up` (unused keys and the cap); the
//! helpers only they use are here, the key-test helpers every key test
//! shares are in `crate::support::keys`.

use std::time::{Duration, Instant};

use crate::support::*;

mod pile_up;
mod refused;
mod restored;

/// The wait of `wait_env_key`.
const WAIT: Duration = SLOW_WAIT;

/// The status code of a health endpoint, if it answered at all.
fn http_code(port: u16, path: &str) -> Option<u16> {
    http_get_raw(port, path)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

/// CPU time (user + system) the process used so far, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name may hold spaces: the fields follow the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime); fields[0] is field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Asserts the daemon burns little CPU over `secs` seconds (a spinning
/// task burns a whole core: about `secs` seconds).
fn assert_idle(d: &Daemon, secs: u64) {
    let before = cpu_seconds(d.pid());
    std::thread::sleep(Duration::from_secs(secs));
    let used = cpu_seconds(d.pid()) - before;
    assert!(
        used < 0.5,
        "the daemon used {used:.2} s of CPU in {secs} s (a spinning loop?)\n{}",
        d.log()
    );
}

/// `status --json` of the running daemon: the state word of "mcp".
fn status_state(t: &TestDir) -> String {
    let out = t.run(&["status", "-c", "config.toml", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["credentials"][0]["state"].as_str().unwrap_or("").to_owned()
}

/// Watches the output for `secs` seconds: it must hold `key` all along.
fn assert_output_stays(t: &TestDir, key: &str, secs: u64, d: &Daemon) {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        assert_eq!(
            env_key(t, "mcp.env").as_deref(),
            Some(key),
            "the output's working key was replaced\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
