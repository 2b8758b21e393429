//! `check`'s config and command rules: modes, owners, templates, duplicate
//! keys, the login URL it prints, and secret files its user cannot read.

use std::time::Duration;

use crate::support::*;

// ---------------------------------------------------------------------------
// Config rules.

/// `check` on config.toml: (exit code, stdout + stderr).
fn check(t: &TestDir) -> (Option<i32>, String) {
    let out = t.run(&["check", "-c", t.config_path().to_str().unwrap()]);
    (out.status.code(), both(&out))
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
    let (status, _) = d.wait_exit(SLOW_WAIT);
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

#[test]
fn check_refuses_writable_modes_unchanged_owner_ids_templates_without_token_and_names_duplicate_keys() {
    let s = standin(LONG);
    let t = TestDir::new();
    let cases = [
        ("mode = \"0666\"\n", "output[0].mode"),
        ("mode = \"0620\"\n", "output[0].mode"),
        ("mode = \"0602\"\n", "output[0].mode"),
        ("owner = \"4294967295\"\n", "output[0].owner"),
        ("group = \"4294967295\"\n", "output[0].group"),
        ("mode = \"0600\"\nmode = \"0640\"\n", "duplicate key `mode`"),
    ];
    for (extra, needle) in cases {
        t.write_config(
            &s.base_url(),
            &credential("main", &output_with("a.token", "raw", extra)),
        );
        let (code, text) = check(&t);
        assert_eq!(code, Some(78), "{extra}: {text}");
        assert!(
            text.contains(needle) && text.contains("config.toml"),
            "{extra}: {text}"
        );
    }
    t.write_config(
        &s.base_url(),
        &credential(
            "main",
            &output_with("a.txt", "template", "template = \"expires {expires_at}\\n\"\n"),
        ),
    );
    let (code, text) = check(&t);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("output[0].template") && text.contains("{token}"),
        "{text}"
    );

    // World-readable is allowed, with a warning.
    t.write_config(
        &s.base_url(),
        &credential("main", &output_with("a.token", "raw", "mode = \"0644\"\n")),
    );
    let (code, text) = check(&t);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning:") && text.contains("every user on this machine read"),
        "{text}"
    );
}

#[test]
fn check_prints_the_login_url_the_client_uses_and_a_404_names_it() {
    let s = standin(LONG);
    let t = TestDir::new();
    // A base-url with a path and no trailing slash.
    let base = format!("{}/api", s.base_url().trim_end_matches('/'));
    t.write_config(&base, &credential("main", &output("a.token", "raw")));
    let (code, text) = check(&t);
    assert_eq!(code, Some(0), "{text}");
    let url = format!("{base}/auth/login");
    assert!(
        text.contains(&format!("POST {url},")),
        "check prints {url}:\n{text}"
    );

    // The stand-in serves /auth/login only: the client really used {base}/auth/login,
    // and the error says where it went.
    let out = t.run(&["once", "-c", t.config_path().to_str().unwrap()]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("HTTP 404 from POST {url}")), "{text}");
    assert!(
        s.requests().iter().any(|r| r.path == "/api/auth/login"),
        "the login went to /api/auth/login"
    );
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
