//! Access keys that stop working, and keys that pile up: a held key refused
//! (deleted while the daemon was stopped, or one call answered 401), a
//! state file restored from a backup, keys the server made that are not
//! used (answered already expired, or not savable on a full disk), and the
//! cap on live keys per installation. Each test spawns the binary against
//! the stand-in's key API (a day of key lifetime lasts seconds).

use std::time::{Duration, Instant};

use crate::support::*;
use nix::sys::signal::Signal;
use voipbin_tokend_standin::KeyInfo;

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

// ---------------------------------------------------------------------------
// Item 1: a refused held key during housekeeping.

#[test]
fn a_held_key_deleted_while_stopped_does_not_spin_answers_health_and_a_fresh_bootstrap_key_heals() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    let (port, cfg) = with_health(&key_cred("renew-at = 0.9", &output("mcp.env", "env")));
    // Days of key life: the next rotation is far away, as in the field.
    let cfg = cfg.replace("lifetime = \"1d\"", "lifetime = \"30d\"");
    t.write_config(&s.base_url(), &cfg);
    let mut d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);

    // Deleted on the admin page while the daemon was stopped.
    assert!(s.delete_key(&k1_id));
    let mut d = t.daemon();
    d.wait_log("HTTP 401", 1, WAIT);
    assert_idle(&d, 4);
    assert_eq!(http_code(port, "/healthz"), Some(200), "/healthz answers");
    assert_eq!(
        http_code(port, "/readyz"),
        Some(503),
        "a refused key is not ready"
    );
    wait_for(
        WAIT,
        "status says refused",
        || status_state(&t) == "refused",
        || format!("{}\n{}", t.read("state/status.json").unwrap_or_default(), d.log()),
    );
    assert_eq!(env_key(&t, "mcp.env").unwrap(), k1, "the output stays as it is");
    let log = d.log();
    assert!(
        log.contains("bootstrap-key-file"),
        "the error points at bootstrap-key-file:\n{log}"
    );

    // A fresh key in the bootstrap file heals (the retry reads it again).
    let (_, fresh) = s.create_key("made again on the admin page", 86_400 * 365);
    write_key_file(&t, &fresh);
    let k2 = wait_env_key(&t, "mcp.env", &[&k1, &fresh], &d);
    assert!(k2.starts_with("vb_"));
    wait_for(
        WAIT,
        "ready again",
        || http_code(port, "/readyz") == Some(200),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
    assert_no_keys(&d.log(), &s);
    assert_no_keys(&t.read("state/status.json").unwrap_or_default(), &s);
}

#[test]
fn one_delete_answered_401_does_not_spin_answers_health_and_sigterm_stops_at_once() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    // The bootstrap key's deletion (after the grace) is answered 401.
    s.script_key_deletions([Fault::status(401)]);
    let (port, cfg) = with_health(&key_cred("renew-at = 0.9", &output("mcp.env", "env")));
    let cfg = cfg.replace("lifetime = \"1d\"", "lifetime = \"30d\"");
    t.write_config(&s.base_url(), &cfg);
    let mut d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    d.wait_log("HTTP 401", 1, WAIT);
    assert_idle(&d, 4);
    assert_eq!(http_code(port, "/healthz"), Some(200), "/healthz answers");
    // The renewal path took over: the bootstrap file's key (still alive)
    // made a successor, and every replaced key is deleted after its grace.
    let k2 = wait_env_key(&t, "mcp.env", &[&boot, &k1], &d);
    let name = my_key_name(&t);
    wait_for(
        WAIT,
        "only the current key alive",
        || s.live_keys_named(&name) == 1 && key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || format!("{:#?}\n{}", s.keys(), d.log()),
    );
    assert_eq!(env_key(&t, "mcp.env").unwrap(), k2);
    wait_for(
        WAIT,
        "ready",
        || http_code(port, "/readyz") == Some(200),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
}

#[test]
fn sigterm_stops_a_daemon_holding_a_refused_key_at_once() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let mut d = t.daemon();
    wait_env_key(&t, "mcp.env", &[&boot], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
    assert!(s.delete_key(&k1_id));
    let mut d = t.daemon();
    d.wait_log("HTTP 401", 1, WAIT);
    std::thread::sleep(Duration::from_millis(1500));
    // SIGHUP and SIGUSR1 are heard, SIGTERM stops it within 5 s.
    d.signal(Signal::SIGUSR1);
    d.wait_log("renewal requested", 1, WAIT);
    stop(&mut d, Signal::SIGTERM);
}

// ---------------------------------------------------------------------------
// Item 6: readiness means not refused; the grace starts after publication.

#[test]
fn a_key_refused_while_running_makes_readyz_503_and_status_refused_until_a_working_key_is_held() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    let (port, cfg) = with_health(&key_cred("renew-at = 0.9", &output("mcp.env", "env")));
    t.write_config(
        &s.base_url(),
        &cfg.replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "the bootstrap key deleted and ready",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some() && http_code(port, "/readyz") == Some(200),
        || d.log(),
    );
    assert_eq!(status_state(&t), "fresh");

    assert!(s.delete_key(&k1_id));
    d.signal(Signal::SIGUSR1);
    d.wait_log("HTTP 401", 1, WAIT);
    wait_for(
        WAIT,
        "/readyz 503",
        || http_code(port, "/readyz") == Some(503),
        || d.log(),
    );
    wait_for(
        WAIT,
        "status says refused",
        || status_state(&t) == "refused",
        || t.read("state/status.json").unwrap_or_default(),
    );
    let status = t.run(&["status", "-c", "config.toml"]);
    assert_ne!(status.status.code(), Some(0), "{}", both(&status));
    assert!(both(&status).contains("refused"), "{}", both(&status));
    assert_eq!(env_key(&t, "mcp.env").unwrap(), k1, "the output stays as it is");

    let (_, fresh) = s.create_key("made again on the admin page", 86_400 * 365);
    write_key_file(&t, &fresh);
    d.signal(Signal::SIGUSR1);
    wait_env_key(&t, "mcp.env", &[&k1, &fresh], &d);
    wait_for(
        WAIT,
        "/readyz 200 again",
        || http_code(port, "/readyz") == Some(200),
        || d.log(),
    );
    wait_for(
        WAIT,
        "status fresh again",
        || status_state(&t) == "fresh",
        || t.read("state/status.json").unwrap_or_default(),
    );
}

#[test]
fn the_replaced_keys_grace_starts_only_once_every_output_holds_the_successor() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, _) = bootstrap(&s, &t, 365);
    // The output's directory does not exist: the new key is made and saved
    // but reaches no output.
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("out/mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let d = t.daemon();
    wait_for(
        WAIT,
        "a key saved in the state",
        || {
            t.read("state/keys/mcp.json")
                .is_some_and(|s| s.contains("\"origin\": \"created\""))
        },
        || d.log(),
    );
    d.wait_log("does not exist", 1, WAIT);
    // Well past the grace (1 s): the bootstrap key lives, its grace unset.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        key_named(&s.keys(), &boot_id).tm_delete.is_none(),
        "the replaced key was deleted before any output held its successor\n{}",
        d.log()
    );
    assert!(state_json(&t)["pending_deletions"][0]["delete_after"].is_null());

    std::fs::create_dir(t.path("out")).unwrap();
    wait_env_key(&t, "out/mcp.env", &[], &d);
    wait_for(
        WAIT,
        "the bootstrap key deleted after the grace",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    let deleted = key_named(&s.keys(), &boot_id).tm_delete.unwrap();
    let written = mtime(&t.path("out/mcp.env"));
    let after = deleted.duration_since(written).unwrap_or_default();
    assert!(
        after >= Duration::from_millis(900),
        "deleted {after:?} after the output held the successor (grace 1 s)"
    );
}

// ---------------------------------------------------------------------------
// Item 4: a restored state file.

/// Runs a daemon until k1 replaced the bootstrap key, saves the state file,
/// rotates to k2 and stops. Returns (k1, k1 id, k2, the saved older state).
fn rotate_twice_keeping_the_first_state(
    s: &StandIn,
    t: &TestDir,
    grace: &str,
) -> (String, String, String, String) {
    let (boot_id, boot) = bootstrap(s, t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"30d\"")
            .replace("grace = \"1s\"", &format!("grace = \"{grace}\"")),
    );
    let mut d = t.daemon();
    let k1 = wait_env_key(t, "mcp.env", &[&boot], &d);
    wait_for(
        WAIT,
        "the bootstrap key's deletion done",
        || {
            key_named(&s.keys(), &boot_id).tm_delete.is_some()
                || grace != "1s" && state_json(t)["pending_deletions"][0]["delete_after"].is_string()
        },
        || d.log(),
    );
    if grace == "1s" {
        wait_for(
            WAIT,
            "the deletion saved",
            || state_json(t)["pending_deletions"].as_array().unwrap().is_empty(),
            || d.log(),
        );
    }
    let k1_id = state_json(t)["current"]["id"].as_str().unwrap().to_owned();
    let older = t.read("state/keys/mcp.json").unwrap();
    d.signal(Signal::SIGUSR1);
    let k2 = wait_env_key(t, "mcp.env", &[&boot, &k1], &d);
    if grace == "1s" {
        wait_for(
            WAIT,
            "k1 deleted after its grace",
            || key_named(&s.keys(), &k1_id).tm_delete.is_some(),
            || d.log(),
        );
    }
    stop(&mut d, Signal::SIGTERM);
    (k1, k1_id, k2, older)
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

#[test]
fn a_restored_older_state_does_not_publish_its_dead_key_over_the_working_output_key() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, _, k2, older) = rotate_twice_keeping_the_first_state(&s, &t, "1s");
    let k2_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    // The backup of the older state is restored over the newer one.
    std::fs::write(t.path("state/keys/mcp.json"), older).unwrap();
    let made = posts(&s);

    let d = t.daemon();
    assert_output_stays(&t, &k2, 4, &d);
    d.wait_log("keeping the working key", 1, WAIT);
    assert_eq!(
        state_json(&t)["current"]["id"],
        k2_id.as_str(),
        "the kept key is current"
    );
    assert_eq!(posts(&s), made, "no key made: the output's key works");
    assert!(key_named(&s.keys(), &k2_id).tm_delete.is_none());
    d.wait_log("every credential has a fresh token on disk", 1, WAIT);
    assert_no_keys(&d.log(), &s);
}

#[test]
fn a_restored_older_state_whose_key_still_lives_keeps_the_newer_output_key_and_deletes_neither_at_once() {
    let s = key_standin();
    let t = TestDir::new();
    // A long grace: k1 still lives when the older state comes back.
    let (_, k1_id, k2, older) = rotate_twice_keeping_the_first_state(&s, &t, "1h");
    let k2_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    std::fs::write(t.path("state/keys/mcp.json"), older).unwrap();

    let d = t.daemon();
    assert_output_stays(&t, &k2, 4, &d);
    d.wait_log("keeping the working key", 1, WAIT);
    let state = state_json(&t);
    assert_eq!(state["current"]["id"], k2_id.as_str());
    assert!(
        state["left_to_expire"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == k1_id.as_str()),
        "the older key is left to expire (a restored state is a new installation, which never deletes an inherited key): {state}"
    );
    let keys = s.keys();
    assert!(
        key_named(&keys, &k2_id).tm_delete.is_none(),
        "the newer key is not swept as an orphan"
    );
    assert!(key_named(&keys, &k1_id).tm_delete.is_none(), "the grace runs");
}

// ---------------------------------------------------------------------------
// Item 10 and the cap: keys made but not used do not pile up.

/// Samples the live keys named `name` for `secs` seconds; returns the most seen.
fn most_live(s: &StandIn, name: &str, secs: u64) -> usize {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut most = 0;
    while Instant::now() < until {
        most = most.max(s.live_keys_named(name));
        std::thread::sleep(Duration::from_millis(50));
    }
    most
}

#[test]
fn keys_answered_already_expired_are_deleted_at_once_and_do_not_pile_up() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    // Every creation for a while: a live key, answered as expired.
    s.script_key_creations(std::iter::repeat_n(Fault::ExpiredAnswer, 1000));
    let d = t.daemon();
    d.wait_log("already expired", 1, WAIT);
    let name = my_key_name(&t);
    let most = most_live(&s, &name, 8);
    let made = posts(&s);
    assert!(made >= 4, "retried: {made} creations\n{}", d.log());
    assert!(
        most <= 1,
        "{most} live unused keys at once ({made} made)\n{:#?}\n{}",
        s.keys(),
        d.log()
    );
    wait_for(
        WAIT,
        "every unused key deleted",
        || s.live_keys_named(&name) == 0,
        || d.log(),
    );
    assert!(d.log().contains("not used"), "{}", d.log());
    assert!(env_key(&t, "mcp.env").is_none_or(|k| k == boot));
}

/// A tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
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
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .output();
    }
}

/// Fills the filesystem of `dir` with one file.
fn fill(dir: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![b'x'; 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_state_that_cannot_be_saved_makes_no_keys_and_none_pile_up() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    let _mounted = match Tmpfs::mount(&t.path("state"), "64k") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: a full disk needs a small tmpfs and this sandbox refuses it: {e}");
            return;
        }
    };
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    let name = my_key_name(&t);
    wait_for(
        WAIT,
        "the bootstrap key's deletion done",
        || state_json(&t)["pending_deletions"].as_array().unwrap().is_empty(),
        || d.log(),
    );
    fill(&t.path("state"));
    let made = posts(&s);
    d.signal(Signal::SIGUSR1);
    // The nonce is saved before each creation: with the state unwritable,
    // nothing is asked of the server at all.
    d.wait_log("the key state cannot be saved, so no key was made", 3, WAIT);
    let most = most_live(&s, &name, 8);
    let tried = posts(&s) - made;
    assert_eq!(
        tried,
        0,
        "{tried} creations with an unwritable state\n{}",
        d.log()
    );
    assert!(
        most <= 2,
        "{most} live keys at once ({tried} made)\n{:#?}\n{}",
        s.keys(),
        d.log()
    );
    assert_eq!(
        env_key(&t, "mcp.env").unwrap(),
        k1,
        "the saved key stays published"
    );
    wait_for(
        WAIT,
        "only the published key alive",
        || s.live_keys_named(&name) == 1,
        || d.log(),
    );
}

#[test]
fn forced_rotations_stop_at_the_cap_on_live_keys() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    // Replaced keys are left to expire (30 days): each rotation adds one.
    t.write_config(
        &s.base_url(),
        &key_cred(
            "renew-at = 0.9\ndelete-replaced = false",
            &output("mcp.env", "env"),
        )
        .replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let d = t.daemon();
    let mut seen = vec![boot.clone()];
    seen.push(wait_env_key(&t, "mcp.env", &[&boot], &d));
    for _ in 0..8 {
        let before = posts(&s);
        let refusals = d.log().matches("live keys").count();
        d.signal(Signal::SIGUSR1);
        wait_for(
            WAIT,
            "a rotation or a refusal",
            || posts(&s) > before || d.log().matches("live keys").count() > refusals,
            || d.log(),
        );
        if posts(&s) > before {
            let not: Vec<&str> = seen.iter().map(String::as_str).collect();
            seen.push(wait_env_key(&t, "mcp.env", &not, &d));
        }
    }
    let name = my_key_name(&t);
    let live = s.live_keys_named(&name);
    assert!(
        live <= 5,
        "{live} live keys of this installation (the cap is 5, the bootstrap key counts)\n{}",
        d.log()
    );
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("live keys"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(line.contains("ERROR") && line.contains("mcp"), "{line}");
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

#[test]
fn with_an_agent_login_a_restored_older_state_keeps_the_working_output_key() {
    let s = key_standin();
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &format!(
            "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nusername = \"{USER}\"\npassword-file = \"password\"\n\
             lifetime = \"30d\"\ngrace = \"1s\"\nretry-min = \"100ms\"\nretry-max = \"1s\"\n\n{}",
            output("mcp.env", "env")
        ),
    );
    let mut d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    let older = t.read("state/keys/mcp.json").unwrap();
    d.signal(Signal::SIGUSR1);
    let k2 = wait_env_key(&t, "mcp.env", &[&k1], &d);
    let k2_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "k1 deleted after its grace",
        || key_named(&s.keys(), &k1_id).tm_delete.is_some(),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
    std::fs::write(t.path("state/keys/mcp.json"), older).unwrap();
    let made = posts(&s);

    let mut d = t.daemon();
    assert_output_stays(&t, &k2, 4, &d);
    d.wait_log("keeping the working key", 1, WAIT);
    assert_eq!(state_json(&t)["current"]["id"], k2_id.as_str());
    assert_eq!(posts(&s), made, "no key made: the output's key works");
    assert!(key_named(&s.keys(), &k2_id).tm_delete.is_none());
    stop(&mut d, Signal::SIGTERM);
    assert_no_keys(&d.log(), &s);
}

#[test]
fn a_refused_key_stays_not_ready_until_a_successor_reaches_the_outputs() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    let (port, cfg) = with_health(&key_cred("renew-at = 0.9", &output("mcp.env", "env")));
    t.write_config(
        &s.base_url(),
        &cfg.replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    assert!(s.delete_key(&k1_id));
    d.signal(Signal::SIGUSR1);
    d.wait_log("HTTP 401", 1, WAIT);
    // A fresh bootstrap key is adopted, but making its successor fails a
    // few times: the outputs still hold the refused key, so not ready.
    s.script_key_creations(std::iter::repeat_n(Fault::status(503), 6));
    let (_, fresh) = s.create_key("made again on the admin page", 86_400 * 365);
    write_key_file(&t, &fresh);
    d.signal(Signal::SIGUSR1);
    d.wait_log("HTTP 503", 1, WAIT);
    assert_eq!(env_key(&t, "mcp.env").unwrap(), k1);
    assert_eq!(http_code(port, "/readyz"), Some(503), "{}", d.log());
    wait_env_key(&t, "mcp.env", &[&k1, &fresh], &d);
    wait_for(
        WAIT,
        "/readyz 200 once the successor is written",
        || http_code(port, "/readyz") == Some(200),
        || d.log(),
    );
}

#[test]
fn a_refused_state_key_never_overwrites_a_working_key_in_the_outputs_nor_is_that_key_deleted() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let mut d = t.daemon();
    wait_env_key(&t, "mcp.env", &[&boot], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
    // While stopped: the state's key is deleted, and someone put a working
    // hand-made key into the output.
    assert!(s.delete_key(&k1_id));
    let (hand_id, hand) = s.create_key("my script's key", 86_400 * 365);
    std::fs::write(t.path("mcp.env"), format!("VOIPBIN_API_KEY={hand}\n")).unwrap();

    let d = t.daemon();
    assert_output_stays(&t, &hand, 4, &d);
    d.wait_log("HTTP 401", 1, WAIT);
    // A fresh bootstrap key: the next key replaces it in the output; the
    // hand-made key itself is left alone on the server.
    let (_, fresh) = s.create_key("made again on the admin page", 86_400 * 365);
    write_key_file(&t, &fresh);
    d.signal(Signal::SIGUSR1);
    wait_env_key(&t, "mcp.env", &[&hand, &fresh], &d);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        key_named(&s.keys(), &hand_id).tm_delete.is_none(),
        "the hand-made key was deleted\n{}",
        d.log()
    );
    assert_no_keys(&d.log(), &s);
}
