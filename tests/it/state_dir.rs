//! The state directory and the pid file: one daemon per state dir, a pid
//! file that is not in it and not taken for a reused pid, state files kept
//! at 0600, and a purge that keeps the key state.

use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;

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

// ---------------------------------------------------------------------------
// One daemon per state directory.

#[test]
fn a_second_daemon_on_the_same_state_dir_exits_1_naming_the_dir_and_the_holder() {
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("a.token", "raw")));
    let mut first = t.daemon();
    wait_file(&t.path("a.token"), WAIT, || first.log());

    // Another config (own outputs) with the same state dir.
    std::fs::write(
        t.path("other.toml"),
        config_text(&s.base_url(), &credential("other", &output("b.token", "raw"))),
    )
    .unwrap();
    let mut second = Daemon::spawn(t.command(&["run", "-c", t.path("other.toml").to_str().unwrap()]));
    let (status, _) = second.wait_exit(WAIT);
    let log = second.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("(pid {})", first.pid())),
        "names the holder's pid: {log}"
    );
    assert!(
        log.contains(&t.path("state").display().to_string()),
        "names the dir: {log}"
    );
    assert!(t.read("b.token").is_none(), "the second daemon wrote nothing");

    // `once` with only login tokens runs next to the daemon (tests/key_operations.rs: with keys it asks the daemon).
    let out = t.run(&["once", "-c", t.path("other.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    // Once the first has stopped, the lock is free again.
    stop(&mut first, Signal::SIGTERM);
    let mut third = Daemon::spawn(t.command(&["run", "-c", t.path("other.toml").to_str().unwrap()]));
    third.wait_log("voipbin-tokend started", 1, WAIT);
    stop(&mut third, Signal::SIGTERM);
}

// ---------------------------------------------------------------------------
// status does not trust a pid that now belongs to another process.

#[test]
fn status_does_not_take_a_reused_pid_for_the_daemon() {
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("a.token", "raw")));
    let mut d = t.daemon();
    wait_for(
        WAIT,
        "a fresh credential in status.json",
        || {
            t.read("state/status.json")
                .is_some_and(|x| x.contains("\"expires_at\": \""))
        },
        || d.log(),
    );
    let cfg = t.config_path();
    let status = |t: &TestDir| t.run(&["status", "-c", cfg.to_str().unwrap()]);
    let out = status(&t);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    // The daemon dies without a word; another process gets "its" pid
    // (simulated: the status file is pointed at a live, unrelated process).
    d.signal(Signal::SIGKILL);
    d.wait_exit(WAIT);
    let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let mut file: serde_json::Value = serde_json::from_str(&t.read("state/status.json").unwrap()).unwrap();
    file["pid"] = other.id().into();
    std::fs::write(t.path("state/status.json"), file.to_string()).unwrap();

    let out = status(&t);
    let _ = other.kill();
    let _ = other.wait();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("NOT RUNNING"), "{text}");
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
fn state_files_readable_by_others_are_brought_to_0600_with_a_warning() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (_, boot) = s.create_key("made on the admin page", 365 * 86_400);
    write_key_file(&t, &boot);
    let rest = key_cred("", &output("mcp.env", "env")) + &credential("main", &output("main.json", "json"));
    t.write_config(&s.base_url(), &rest);
    let mut d = daemon_with(&t, "voipbin_tokend=debug", &[]);
    wait_for(
        SLOW_WAIT,
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
    d.wait_log("its mode is now 0600", 2, SLOW_WAIT);
    assert_eq!(mode_of(&keys), 0o600);
    assert_eq!(mode_of(&tokens), 0o600);
    let log = d.log();
    assert!(log.contains("mcp.json") && log.contains("main.json"), "{log}");
    stop(&mut d, Signal::SIGTERM);
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

/// A login's record that cannot be written (here `tokens` is a file)
/// costs only the record: the token still reaches the output, the failure
/// is logged, and the next login goes the same way.
#[test]
fn a_login_record_that_cannot_be_written_is_logged_and_the_token_still_reaches_the_outputs() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    std::fs::create_dir_all(t.path("state")).unwrap();
    std::fs::write(t.path("state/tokens"), "not a directory").unwrap();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let mut d = t.daemon();
    let renewed = |logins: u64| {
        wait_for(
            SLOW_WAIT,
            &format!("login #{logins} and its token in main.token"),
            || s.logins_ok() >= logins && t.read("main.token").as_ref() == s.issued_tokens().last(),
            || d.log(),
        )
    };
    renewed(1);
    d.wait_log("cannot keep the record of this login", 1, SLOW_WAIT);
    d.signal(Signal::SIGUSR1);
    renewed(2);
    d.wait_log("cannot keep the record of this login", 2, SLOW_WAIT);
    assert!(t.path("state/tokens").is_file(), "{}", d.log());
    stop(&mut d, Signal::SIGTERM);
    assert_no_secrets(&d.log(), PASSWORD, &s.issued_tokens());
}
