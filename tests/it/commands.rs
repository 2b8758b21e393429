//! The one-shot commands: `once`, `check`, `inspect`, and `demo`.

use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;

fn cfg_arg(t: &TestDir) -> String {
    t.config_path().to_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------
// once

#[test]
fn once_logs_in_when_the_token_is_missing_and_not_again_when_it_is_fresh() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let c = cfg_arg(&t);

    let out = t.run(&["once", "-c", &c]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(s.login_requests(), 1);
    let first = t.read("main.token").unwrap();
    assert_eq!(Some(&first), s.issued_tokens().last());
    let first_mtime = mtime(&t.path("main.token"));

    let out = t.run(&["once", "-c", &c]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(
        s.login_requests(),
        1,
        "a second once logged in although the token is not due"
    );
    assert_eq!(t.read("main.token").unwrap(), first);
    assert_eq!(
        mtime(&t.path("main.token")),
        first_mtime,
        "an unchanged file was rewritten"
    );
}

#[test]
fn once_force_logs_in_even_with_a_fresh_token_on_disk() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let c = cfg_arg(&t);
    let out = t.run(&["once", "-c", &c]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(s.login_requests(), 1);
    let first = t.read("main.token").unwrap();

    let out = t.run(&["once", "--force", "-c", &c]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(s.login_requests(), 2, "--force did not log in");
    let second = t.read("main.token").unwrap();
    assert_ne!(second, first);
    assert_eq!(Some(&second), s.issued_tokens().last());
}

#[test]
fn once_force_exits_1_when_the_login_fails_and_keeps_the_token_on_disk() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let c = cfg_arg(&t);
    let out = t.run(&["once", "-c", &c]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let first = t.read("main.token").unwrap();

    s.set_default(Some(Fault::status(503)));
    let out = t.run(&["once", "--force", "-c", &c]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed forced login is a failure: {}",
        both(&out)
    );
    assert_eq!(s.login_requests(), 2);
    assert_eq!(t.read("main.token").unwrap(), first, "the good token must stay");
}

#[test]
fn once_exits_1_when_a_password_is_rejected_but_writes_the_other_credential() {
    let s = standin(Duration::from_secs(3600));
    s.set_password(OTHER_USER, "the-server-wants-this");
    let t = TestDir::new();
    let rest = cred(
        "bad",
        OTHER_USER,
        "password",
        FAST_RETRY,
        &output("bad.token", "raw"),
    ) + &cred("good", USER, "password", FAST_RETRY, &output("good.token", "raw"));
    t.write_config(&s.base_url(), &rest);
    let out = t.run(&["once", "-c", &cfg_arg(&t)]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(both(&out).contains("credentials rejected"), "{}", both(&out));
    assert!(t.read("bad.token").is_none());
    assert_eq!(t.read("good.token"), s.issued_tokens().last().cloned());
    // One login attempt each.
    assert_eq!(s.login_requests(), 2);
}

#[test]
fn once_renews_a_token_on_disk_that_is_past_renew_at() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    // Valid one more minute, obtained (by mtime) ten minutes ago: due.
    let old = s.mint_token(USER, Duration::from_secs(60));
    std::fs::write(t.path("main.token"), &old).unwrap();
    age_file(&t.path("main.token"), Duration::from_secs(600));
    let out = t.run(&["once", "-c", &cfg_arg(&t)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(
        s.login_requests(),
        1,
        "a due token was not renewed\n{}",
        both(&out)
    );
    let now = t.read("main.token").unwrap();
    assert_ne!(now, old);
    assert_eq!(Some(&now), s.issued_tokens().last());
}

#[test]
fn once_replaces_an_expired_token_on_disk() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let expired = s.mint_token(USER, Duration::ZERO);
    std::fs::write(t.path("main.token"), &expired).unwrap();
    let out = t.run(&["once", "-c", &cfg_arg(&t)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(s.login_requests(), 1);
    let now = t.read("main.token").unwrap();
    assert_ne!(now, expired);
    assert_eq!(Some(&now), s.issued_tokens().last());
}

// ---------------------------------------------------------------------------
// check

#[test]
fn check_accepts_a_valid_config_prints_each_output_and_creates_nothing() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let outputs = output("main.token", "raw") + &output_with("main.json", "json", "mode = \"0640\"\n");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let before = t.entries();
    let out = t.run(&["check", "-c", &cfg_arg(&t)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for f in ["main.token", "main.json"] {
        assert!(
            stdout.contains(&t.path(f).display().to_string()),
            "{f} not in:\n{stdout}"
        );
    }
    assert_eq!(t.entries(), before, "check created or removed a file");
    assert_eq!(s.login_requests(), 0, "check logged in");
}

#[test]
fn check_rejects_invalid_configs_with_78_naming_the_file_and_the_key() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let good = credential("main", &output("main.token", "raw"));
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown key",
            config_text(
                &s.base_url(),
                &good.replace("retry-min", "colour = \"red\"\nretry-min"),
            ),
            vec!["colour"],
        ),
        (
            "http off loopback",
            config_text("http://api.voipbin.net", &good),
            vec!["api.base-url", "loopback"],
        ),
        (
            "two password sources",
            config_text(
                &s.base_url(),
                &good.replace("password-file", "password-env = \"SOME_VAR\"\npassword-file"),
            ),
            vec!["credential[main]", "exactly one"],
        ),
        (
            "duplicate credential name",
            config_text(
                &s.base_url(),
                &format!("{good}{}", credential("main", &output("other.token", "raw"))),
            ),
            vec!["credential[1].name", "unique"],
        ),
        (
            "bad mode",
            config_text(
                &s.base_url(),
                &credential("main", &output_with("main.token", "raw", "mode = \"0999\"\n")),
            ),
            vec!["credential[main].output[0].mode"],
        ),
    ];
    for (what, text, needles) in cases {
        std::fs::write(t.config_path(), &text).unwrap();
        let before = t.entries();
        let out = t.run(&["check", "-c", &cfg_arg(&t)]);
        let all = both(&out);
        assert_eq!(out.status.code(), Some(78), "{what}: {all}");
        assert!(
            all.contains(&t.config_path().display().to_string()),
            "{what}: file not named: {all}"
        );
        for n in needles {
            assert!(all.contains(n), "{what}: {n:?} not in: {all}");
        }
        assert_eq!(t.entries(), before, "{what}: check touched the dir");
    }
    assert_eq!(s.login_requests(), 0);
}

#[test]
fn check_warns_about_an_inline_password_without_showing_it() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let rest = credential("main", &output("main.token", "raw")).replace(
        "password-file = \"password\"",
        "password = \"inline-secret-83461\"",
    );
    t.write_config(&s.base_url(), &rest);
    let out = t.run(&["check", "-c", &cfg_arg(&t)]);
    let all = both(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("warning") && all.contains("inline"), "{all}");
    assert!(
        !all.contains("inline-secret-83461"),
        "check printed the password: {all}"
    );
}

// ---------------------------------------------------------------------------
// inspect

#[test]
fn inspect_shows_expiry_of_every_format_and_stdin_but_never_the_token() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let outputs = [
        output("t.raw", "raw"),
        output("t.env", "env"),
        output("t.sh", "shell"),
        output("t.json", "json"),
        output_with("t.tpl", "template", "template = \"X-Auth: {token}\\n\"\n"),
    ]
    .concat();
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let out = t.run(&["once", "-c", &cfg_arg(&t)]);
    assert!(out.status.success(), "{}", both(&out));
    let token = s.issued_tokens().pop().unwrap();
    let exp = rfc3339_secs(expire_of(&token));
    let parts: Vec<&str> = token.split('.').collect();
    let no_token = |what: &str, text: &str| {
        for (i, p) in parts.iter().enumerate() {
            assert!(!text.contains(p), "{what}: inspect printed part {i} of the token");
        }
    };

    for f in ["t.raw", "t.env", "t.sh", "t.json", "t.tpl"] {
        let path = t.path(f);
        let p = path.to_str().unwrap();
        let out = t.run(&["inspect", p]);
        let all = both(&out);
        no_token(f, &all);
        assert_eq!(out.status.code(), Some(0), "{f}: {all}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&exp), "{f}: expiry {exp} not in {stdout}");
        assert!(stdout.contains("remaining"), "{f}: {stdout}");

        let out = t.run(&["inspect", "--json", p]);
        let all = both(&out);
        no_token(f, &all);
        assert_eq!(out.status.code(), Some(0), "{f}: {all}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON");
        assert_eq!(v["expires_at"], exp.as_str(), "{f}: {v}");
        let left = v["remaining_seconds"].as_i64().expect("remaining_seconds");
        assert!((3000..=3600).contains(&left), "{f}: remaining {left}");
    }

    // stdin
    let env = t.read("t.env").unwrap();
    for args in [&["inspect", "-"][..], &["inspect", "--json", "-"][..]] {
        let out = run_with_stdin(&t, args, env.as_bytes());
        let all = both(&out);
        no_token("stdin", &all);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {all}");
        assert!(all.contains(&exp), "{args:?}: {all}");
    }
    let out = run_with_stdin(&t, &["inspect", "--json", "-"], token.as_bytes());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["remaining_seconds"].as_i64().is_some_and(|r| r > 3000), "{v}");
    no_token("stdin raw", &both(&out));
}

#[test]
fn inspect_exits_1_for_a_file_without_a_token_or_a_missing_file() {
    let t = TestDir::new();
    std::fs::write(t.path("notes.txt"), "VOIPBIN_TOKEN=\nnothing here\n").unwrap();
    for f in ["notes.txt", "missing.token"] {
        let out = t.run(&["inspect", t.path(f).to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{f}: {}", both(&out));
        let out = t.run(&["inspect", "--json", t.path(f).to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{f} --json: {}", both(&out));
    }
    let out = run_with_stdin(&t, &["inspect", "-"], b"not a token");
    assert_eq!(out.status.code(), Some(1), "stdin: {}", both(&out));
}

// ---------------------------------------------------------------------------
// demo

#[test]
fn demo_renews_a_token_and_rotates_an_access_key_side_by_side_and_exits_0_on_sigint() {
    let t = TestDir::new();
    let dir = t.path("demo");
    let mut cmd = t.command(&["demo", "--lifetime", "2s", "--dir", dir.to_str().unwrap()]);
    cmd.env("RUST_LOG", "info");
    let mut d = Daemon::spawn(cmd);
    let count = |what: &str| d.log().matches(what).count();
    // The first login (and the first key) log the same line too; three
    // lines each are two renewals each.
    wait_for(
        Duration::from_secs(30),
        "two renewals of the token and two rotations of the key",
        || count("token renewed") >= 3 && count("access key rotated") >= 3,
        || d.log(),
    );
    for f in ["main.token", "main.env", "main.json"] {
        let text = wait_file(&dir.join(f), WAIT, || d.log());
        assert!(token_in(&text).is_some(), "{f}");
    }
    let key_env = std::fs::read_to_string(dir.join("mcp.env")).unwrap();
    assert!(key_env.starts_with("VOIPBIN_API_KEY=vb_"), "{key_env}");
    d.wait_log("replaced key deleted", 1, Duration::from_secs(20));
    let took = stop(&mut d, Signal::SIGINT);
    eprintln!("demo: exit 0 {took:?} after SIGINT");
}

// ---------------------------------------------------------------------------
// standin (hidden; the packaging tests run the binary against it)

/// Reads the first stdout line of `child` within `timeout` (the base URL).
fn first_stdout_line(child: &mut std::process::Child, timeout: Duration) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(timeout).expect("standin printed no line in time")
}

#[test]
fn standin_serves_the_demo_account_on_loopback_and_exits_0_on_sigterm() {
    let t = TestDir::new();
    let mut child = t
        .command(&["standin", "--listen", "127.0.0.1:0", "--lifetime", "1h"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn standin");
    let base_url = first_stdout_line(&mut child, WAIT);
    let base_url = base_url.trim();
    assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url:?}");

    std::fs::write(t.path("password"), "demo-password\n").unwrap();
    let config = config_text(base_url, &credential("main", &output("main.token", "raw")))
        .replace(USER, "demo@example.com");
    std::fs::write(t.config_path(), config).unwrap();
    let out = t.run(&["once", "-c", &cfg_arg(&t)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let token = t.read("main.token").expect("token written");
    let left = expire_of(&token) - time::OffsetDateTime::now_utc();
    assert!(left > time::Duration::minutes(55), "lifetime not applied: {left}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < WAIT, "standin did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn standin_refuses_a_non_loopback_address() {
    let t = TestDir::new();
    let out = t.run(&["standin", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(both(&out).contains("not a loopback address"), "{}", both(&out));
}

// ---------------------------------------------------------------------------
// demo --dir does not overwrite a folder that holds something.

#[test]
fn demo_refuses_a_non_empty_dir_unless_forced() {
    let t = TestDir::new();
    let dir = t.path("mine");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), "# my real config\n").unwrap();
    let out = t.run(&["demo", "--lifetime", "2s", "--dir", dir.to_str().unwrap()]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("is not empty") && text.contains("--force"),
        "{text}"
    );
    assert!(text.contains(&dir.display().to_string()), "{text}");
    assert_eq!(
        std::fs::read_to_string(dir.join("config.toml")).unwrap(),
        "# my real config\n"
    );

    // --force: the demo runs there.
    let mut d = Daemon::spawn(t.command(&[
        "demo",
        "--lifetime",
        "2s",
        "--force",
        "--dir",
        dir.to_str().unwrap(),
    ]));
    wait_file(&dir.join("main.token"), WAIT, || d.log());
    stop(&mut d, Signal::SIGINT);
    assert_ne!(
        std::fs::read_to_string(dir.join("config.toml")).unwrap(),
        "# my real config\n"
    );
}
