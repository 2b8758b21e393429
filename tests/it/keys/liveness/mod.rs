//! Access keys that stop working, and keys that pile up: a held key refused
//! (deleted while the daemon was stopped, or one call answered 401), a
//! state file restored from a backup, keys the server made that are not
//! used (answered already expired, or not savable on a full disk), and the
//! cap on live keys per installation. Each test spawns the binary against
//! the stand-in's key API (a day of key lifetime lasts seconds).
//!
//! The tests are in `refused` (a refused key and readiness), `restored` (a
//! state file from a backup) and `pile_up` (unused keys and the cap); the
//! helpers they share are here.

use std::time::{Duration, Instant};

use crate::support::*;
use voipbin_tokend_standin::KeyInfo;

mod pile_up;
mod refused;
mod restored;

/// A day of key lifetime lasts this many seconds at the stand-in.
const DAY_SECS: f64 = 8.0;
const WAIT: Duration = Duration::from_secs(20);

fn key_standin() -> StandIn {
    let s = standin(Duration::from_secs(3600));
    s.set_key_time_scale(DAY_SECS / 86_400.0);
    s
}

/// A bootstrap key as made on the admin page, written to ./boot.key (0600).
fn bootstrap(s: &StandIn, t: &TestDir, days: u64) -> (String, String) {
    let (id, key) = s.create_key("made on the admin page", days * 86_400);
    write_key_file(t, &key);
    (id, key)
}

fn write_key_file(t: &TestDir, key: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = t.path("boot.key");
    std::fs::write(&p, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A self-rotating key credential "mcp" with `extra` keys and `outputs`.
fn key_cred(extra: &str, outputs: &str) -> String {
    format!(
        "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\n\
         lifetime = \"1d\"\ngrace = \"1s\"\nretry-min = \"100ms\"\nretry-max = \"1s\"\n{extra}\n{outputs}"
    )
}

/// `key_cred` behind a health listener on a free port.
fn with_health(rest: &str) -> (u16, String) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    (port, format!("[health]\nlisten = \"127.0.0.1:{port}\"\n\n{rest}"))
}

/// The key in an env output (`VOIPBIN_API_KEY=vb_...`), if there is one.
fn env_key(t: &TestDir, name: &str) -> Option<String> {
    t.read(name)?
        .lines()
        .find_map(|l| l.strip_prefix("VOIPBIN_API_KEY="))
        .map(str::to_owned)
}

fn wait_env_key(t: &TestDir, name: &str, not: &[&str], d: &Daemon) -> String {
    let mut key = String::new();
    wait_for(
        WAIT,
        &format!("a new key in {name}"),
        || {
            key = env_key(t, name).unwrap_or_default();
            key.starts_with("vb_") && !not.contains(&key.as_str())
        },
        || d.log(),
    );
    key
}

fn key_named<'a>(keys: &'a [KeyInfo], id: &str) -> &'a KeyInfo {
    keys.iter().find(|k| k.id == id).expect("key on the server")
}

fn posts(s: &StandIn) -> usize {
    s.requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1.0/accesskeys") && r.method == "POST")
        .count()
}

fn state_json(t: &TestDir) -> serde_json::Value {
    serde_json::from_str(&t.read("state/keys/mcp.json").expect("key state file")).unwrap()
}

/// This installation's key name for "mcp" (from the state file).
fn my_key_name(t: &TestDir) -> String {
    format!(
        "voipbin-tokend/mcp/{}",
        state_json(t)["installation_id"].as_str().unwrap()
    )
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s
}

/// The status code of a health endpoint, if it answered at all.
fn http_code(port: u16, path: &str) -> Option<u16> {
    http_get(port, path)
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

/// No key made by the server appears in `text` past its public prefix.
fn assert_no_keys(text: &str, s: &StandIn) {
    for key in s.issued_keys() {
        assert!(
            !text.contains(&key[11..]),
            "a key (beyond its prefix) appears in:\n{text}"
        );
    }
}
