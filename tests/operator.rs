//! What operators do every week, done carelessly (issue 14, items 9, 13,
//! 16, 17): a pid file that names the daemon itself, SIGUSR1 storms,
//! files the daemon's user cannot read, loose modes on state files, and
//! purging the package.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(20);

fn write_key_file(t: &TestDir, key: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = t.path("boot.key");
    std::fs::write(&p, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A self-rotating key credential "mcp" (bootstrap key, real-time keys of
/// a day) with `extra` keys and `outputs`.
fn key_cred(extra: &str, outputs: &str) -> String {
    format!(
        "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\n\
         lifetime = \"1d\"\ngrace = \"1s\"\nretry-min = \"100ms\"\nretry-max = \"1s\"\n{extra}\n{outputs}"
    )
}

fn env_key(t: &TestDir, name: &str) -> Option<String> {
    t.read(name)?
        .lines()
        .find_map(|l| l.strip_prefix("VOIPBIN_API_KEY="))
        .map(str::to_owned)
}

fn posts(s: &StandIn) -> usize {
    s.requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1.0/accesskeys") && r.method == "POST")
        .count()
}

/// A key credential with a bootstrap key, running, its first key written.
fn key_daemon(t: &TestDir, s: &StandIn, outputs: &str) -> (Daemon, String) {
    let (_, boot) = s.create_key("made on the admin page", 365 * 86_400);
    write_key_file(t, &boot);
    t.write_config(&s.base_url(), &key_cred("", outputs));
    let d = daemon_with(t, "voipbin_tokend=debug", &[]);
    let mut key = String::new();
    wait_for(
        WAIT,
        "the first key of this installation",
        || {
            key = env_key(t, "mcp.env").unwrap_or_default();
            key.starts_with("vb_") && key != boot
        },
        || d.log(),
    );
    (d, key)
}

// ---------------------------------------------------------------------------
// 9. A self-signal loop.

#[test]
fn a_pid_file_inside_the_state_dir_is_a_config_error_naming_it() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (_, boot) = s.create_key("made on the admin page", 365 * 86_400);
    write_key_file(&t, &boot);
    // The daemon's lock file holds its own pid.
    let out = format!(
        "{}signal = \"SIGUSR1\"\npid-file = \"state/lock\"\n\n",
        output("mcp.env", "env")
    );
    t.write_config(&s.base_url(), &key_cred("", &out));
    std::fs::create_dir_all(t.path("state")).unwrap();
    let o = t.run(&["check", "-c", "config.toml"]);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    let text = both(&o);
    assert!(
        text.contains("credential[mcp].output[0].pid-file") && text.contains("state directory"),
        "{text}"
    );
    // A symlink into the state dir is the same thing.
    std::os::unix::fs::symlink(t.path("state/lock"), t.path("app.pid")).unwrap();
    std::fs::write(t.path("state/lock"), "1234\n").unwrap();
    let out = format!(
        "{}signal = \"SIGUSR1\"\npid-file = \"app.pid\"\n\n",
        output("mcp.env", "env")
    );
    t.write_config(&s.base_url(), &key_cred("", &out));
    let o = t.run(&["check", "-c", "config.toml"]);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        both(&o).contains("credential[mcp].output[0].pid-file"),
        "{}",
        both(&o)
    );
}

#[test]
fn a_hook_never_signals_the_daemon_itself() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let out = format!(
        "{}signal = \"SIGUSR1\"\npid-file = \"app.pid\"\n\n",
        output("mcp.env", "env")
    );
    let (d, k1) = key_daemon(&t, &s, &out);
    // The pid file now names the daemon itself (a stale or mistaken file).
    std::fs::write(t.path("app.pid"), format!("{}\n", d.pid())).unwrap();
    // Past the coalescing window of the first key, one forced rotation.
    std::thread::sleep(Duration::from_millis(1200));
    let before = posts(&s);
    d.signal(Signal::SIGUSR1);
    d.wait_log("not signalling ourselves", 1, WAIT);
    std::thread::sleep(Duration::from_secs(4));
    let made = posts(&s) - before;
    assert_eq!(made, 1, "one forced rotation, no loop\n{}", d.log());
    assert_ne!(env_key(&t, "mcp.env").unwrap(), k1);
}

#[test]
fn forced_rotations_have_a_minimum_interval_and_the_first_is_not_delayed() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (d, k1) = key_daemon(&t, &s, &output("mcp.env", "env"));
    std::thread::sleep(Duration::from_millis(1200));
    let before = posts(&s);
    // The first forced rotation after a start is not delayed.
    let sent = Instant::now();
    d.signal(Signal::SIGUSR1);
    wait_for(WAIT, "the forced rotation", || posts(&s) > before, || d.log());
    let took = sent.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "first forced rotation took {took:?}"
    );
    wait_for(
        WAIT,
        "the new key",
        || env_key(&t, "mcp.env").is_some_and(|k| k != k1),
        || d.log(),
    );
    // Then one SIGUSR1 every 1.2 s for 7 s (each past the one-second
    // coalescing): at most one rotation per 3 s, not one per signal.
    let start = posts(&s);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(1200));
        d.signal(Signal::SIGUSR1);
    }
    let made = posts(&s) - start;
    assert!(
        (1..=4).contains(&made),
        "{made} rotations for 6 signals\n{}",
        d.log()
    );
    // Every request is answered in the end: a rotation after the last one.
    let last = posts(&s);
    wait_for(
        WAIT,
        "the rotation owed",
        || posts(&s) > last || made >= 3,
        || d.log(),
    );
}

// ---------------------------------------------------------------------------
// 13. SIGUSR1 requests spread over time.

#[test]
fn sigusr1_requests_spread_over_half_a_second_cost_at_most_two_logins() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    assert_eq!(s.login_requests(), 1);
    // Past the start login's second.
    std::thread::sleep(Duration::from_millis(1200));
    for _ in 0..100 {
        d.signal(Signal::SIGUSR1);
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_secs(3));
    // The first request's login, and one a second later for all the rest.
    let logins = s.login_requests() - 1;
    assert!(
        (1..=2).contains(&logins),
        "{logins} logins for 100 requests\n{}",
        d.log()
    );
}

#[test]
fn sigusr1_requests_within_a_second_of_a_renewal_share_one_renewal_after_it() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    let first = wait_file(&t.path("main.token"), WAIT, || d.log());
    // 20 requests at once after the start login: not one login each, but
    // one for them all once the start login's second is over.
    for _ in 0..20 {
        d.signal(Signal::SIGUSR1);
        std::thread::sleep(Duration::from_millis(10));
    }
    d.wait_log("requests are coalesced into one renewal", 1, WAIT);
    wait_for(
        WAIT,
        "the renewal they share",
        || t.read("main.token").is_some_and(|x| x != first),
        || d.log(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.login_requests(), 2, "{}", d.log());
}

// ---------------------------------------------------------------------------
// 16. Files the daemon's user cannot read; state files with loose modes.

/// Runs `cmd -c config.toml` as nobody (uid 65534), if setpriv can drop
/// to it here; bounded.
fn as_nobody(t: &TestDir, cmd: &str) -> Option<std::process::ExitStatus> {
    let usable = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable || !nix::unistd::geteuid().is_root() {
        return None;
    }
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN, cmd, "-c"])
        .arg(t.config_path())
        .current_dir(t.dir.path())
        .env("RUST_LOG", "voipbin_tokend=debug")
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null());
    let mut d = Daemon::spawn(c);
    let (status, _) = d.wait_exit(WAIT);
    assert!(
        d.log().contains("not readable by this user"),
        "{cmd}: {}",
        d.log()
    );
    Some(status)
}

/// Runs `check` as nobody (uid 65534), if setpriv can drop to it here.
fn check_as_nobody(t: &TestDir) -> Option<std::process::Output> {
    let usable = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable || !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: not root, or setpriv cannot drop to uid 65534 here");
        return None;
    }
    let mut c = std::process::Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
        "check",
        "-c",
    ])
    .arg(t.config_path())
    .current_dir(t.dir.path())
    .env_remove("NOTIFY_SOCKET");
    Some(c.output().expect("setpriv runs"))
}

fn chmod(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn check_refuses_a_bootstrap_key_file_or_password_file_its_user_cannot_read() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    // nobody may traverse the dir, read the config and write the state dir;
    // the secrets stay root's own (0600), as the README's advice leaves them.
    chmod(t.dir.path(), 0o755);
    std::fs::create_dir(t.path("state")).unwrap();
    chmod(&t.path("state"), 0o777);
    let (_, boot) = s.create_key("made on the admin page", 365 * 86_400);
    write_key_file(&t, &boot);
    t.write_config(&s.base_url(), &key_cred("", &output("mcp.env", "env")));
    chmod(&t.config_path(), 0o644);
    let Some(o) = check_as_nobody(&t) else { return };
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    let text = both(&o);
    assert!(
        text.contains("credential[mcp].bootstrap-key-file") && text.contains("not readable by this user"),
        "{text}"
    );
    // `run` and `once` refuse to start the same way.
    for cmd in ["run", "once"] {
        assert_eq!(as_nobody(&t, cmd).unwrap().code(), Some(78), "{cmd}");
    }
    // Readable by that user: valid.
    chmod(&t.path("boot.key"), 0o644);
    let o = check_as_nobody(&t).unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));

    // The same for a password file.
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    chmod(&t.config_path(), 0o644);
    let o = check_as_nobody(&t).unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        both(&o).contains("credential[main].password-file"),
        "{}",
        both(&o)
    );
    // As root it is readable: valid.
    let o = t.run(&["check", "-c", "config.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
}

#[test]
fn state_files_readable_by_others_are_brought_to_0600_with_a_warning() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (_, boot) = s.create_key("made on the admin page", 365 * 86_400);
    write_key_file(&t, &boot);
    let rest = key_cred("", &output("mcp.env", "env")) + &credential("main", &output("main.json", "json"));
    t.write_config(&s.base_url(), &rest);
    let mut d = daemon_with(&t, "voipbin_tokend=debug", &[]);
    wait_for(
        WAIT,
        "both state files",
        || {
            t.read("state/keys/mcp.json")
                .is_some_and(|s| s.contains("\"created\""))
                && t.read("state/tokens/main.json").is_some()
                && t.read("mcp.env").is_some()
        },
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
    let keys = t.path("state/keys/mcp.json");
    let tokens = t.path("state/tokens/main.json");
    chmod(&keys, 0o644);
    chmod(&tokens, 0o666);

    let mut d = daemon_with(&t, "voipbin_tokend=debug", &[]);
    d.wait_log("its mode is now 0600", 2, WAIT);
    assert_eq!(mode_of(&keys), 0o600);
    assert_eq!(mode_of(&tokens), 0o600);
    let log = d.log();
    assert!(log.contains("mcp.json") && log.contains("main.json"), "{log}");
    stop(&mut d, Signal::SIGTERM);
}

// ---------------------------------------------------------------------------
// 17. Purging the package.

/// Runs packaging/debian/postrm with `arg` under `DPKG_ROOT=root` (dpkg's
/// `--root`), as dpkg would (sh, with the debhelper marker left as the
/// comment it is).
fn postrm(root: &std::path::Path, arg: &str) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/debian/postrm");
    std::process::Command::new("sh")
        .arg(script)
        .arg(arg)
        .env("DPKG_ROOT", root)
        .output()
        .expect("sh runs")
}

#[test]
fn purge_keeps_the_key_state_and_lists_the_live_keys_without_a_secret() {
    use voipbin_tokend::secret::Secret;
    use voipbin_tokend::state::keys::{self as keystate, CurrentKey, KeyState, Origin, PendingDeletion};
    let root = tempfile::tempdir().unwrap();
    let lib = root.path().join("var/lib/voipbin-tokend");
    let etc = root.path().join("etc/voipbin-tokend");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("config.toml"), "# config\n").unwrap();
    std::fs::create_dir_all(lib.join("tokens")).unwrap();
    std::fs::write(lib.join("status.json"), "{}").unwrap();
    std::fs::write(lib.join("lock"), "1\n").unwrap();

    // A key state as the daemon writes it: a held key and a replaced one.
    let key = "vb_AbCdEfGh0123456789abcdefghijklmn";
    let mut state = KeyState::new("mcp");
    let now = time::OffsetDateTime::now_utc();
    state.current = Some(CurrentKey {
        id: "11111111-1111-4111-8111-111111111111".into(),
        key: Secret::new(key.into()),
        tm_create: now,
        tm_expire: now + time::Duration::days(30),
        server_skew_seconds: 0,
        obtained_at: now,
        origin: Origin::Created,
        inherited: false,
    });
    state.pending_deletions.push(PendingDeletion {
        id: "22222222-2222-4222-8222-222222222222".into(),
        prefix: "vb_ZyXwVuTs".into(),
        delete_after: Some(now),
        bootstrap: false,
    });
    keystate::save(&keystate::path(&lib, "mcp"), &state).unwrap();

    let o = postrm(root.path(), "purge");
    assert!(o.status.success(), "{}", both(&o));
    let said = String::from_utf8_lossy(&o.stderr).into_owned();
    // The key state is kept; everything else is gone.
    assert!(keystate::path(&lib, "mcp").is_file(), "{said}");
    assert!(!etc.exists());
    assert!(!lib.join("tokens").exists() && !lib.join("status.json").exists() && !lib.join("lock").exists());
    // It says so, naming the keys by id and prefix, never the key.
    for needle in [
        "KEPT",
        "mcp",
        "11111111-1111-4111-8111-111111111111",
        "vb_AbCdEfGh",
        "22222222-2222-4222-8222-222222222222",
        "vb_ZyXwVuTs",
        "admin page",
    ] {
        assert!(said.contains(needle), "{needle:?} missing from:\n{said}");
    }
    assert!(!said.contains(&key[11..]), "the key itself was printed:\n{said}");

    // With no key state, purge removes everything, silently.
    let root = tempfile::tempdir().unwrap();
    let lib = root.path().join("var/lib/voipbin-tokend");
    std::fs::create_dir_all(lib.join("tokens")).unwrap();
    std::fs::create_dir_all(root.path().join("etc/voipbin-tokend")).unwrap();
    let o = postrm(root.path(), "purge");
    assert!(o.status.success() && o.stderr.is_empty(), "{}", both(&o));
    assert!(!lib.exists() && !root.path().join("etc/voipbin-tokend").exists());
    // Remove (not purge) touches nothing.
    let root = tempfile::tempdir().unwrap();
    let lib = root.path().join("var/lib/voipbin-tokend/keys");
    std::fs::create_dir_all(&lib).unwrap();
    assert!(postrm(root.path(), "remove").status.success());
    assert!(lib.exists());
}
