//! Config and password files: an owner that cannot be set, missing or empty
//! and world-readable password files, a world-writable config, repeated
//! names and output paths.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{WAIT, both, cfg_arg, cred, warn_lines};
use crate::support::*;

const FAST: &str = "retry-min = \"100ms\"\nretry-max = \"500ms\"\n";

/// Runs `cmd` to completion; panics if it takes longer than `timeout`.
fn output_within(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{cmd:?} did not exit within {timeout:?}: {}", both(&out));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn owner_without_the_right_to_chown_exits_78_from_check_and_run() {
    let usable = Command::new("setpriv")
        .args(["--bounding-set=-chown", "--inh-caps=-chown", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable {
        eprintln!("SKIPPED: setpriv (util-linux) is missing or cannot drop CAP_CHOWN here");
        return;
    }
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    for (key, extra) in [
        ("owner", "owner = \"nobody\"\n"),
        ("group", "group = \"nogroup\"\n"),
    ] {
        let out = format!("[[credential.output]]\npath = \"main.token\"\nformat = \"raw\"\n{extra}\n");
        t.write_config(&s.base_url(), &credential("main", &out));
        // With CAP_CHOWN (root) it is valid.
        let ok = t.run(&["check", "-c", &cfg_arg(&t)]);
        assert_eq!(ok.status.code(), Some(0), "{}", both(&ok));
        for cmd in ["check", "run"] {
            let mut c = Command::new("setpriv");
            c.args([
                "--bounding-set=-chown",
                "--inh-caps=-chown",
                BIN,
                cmd,
                "-c",
                &cfg_arg(&t),
            ])
            .current_dir(t.dir.path())
            .env("RUST_LOG", "voipbin_tokend=debug")
            .env_remove("NOTIFY_SOCKET");
            let out = output_within(c, WAIT);
            let all = both(&out);
            assert_eq!(out.status.code(), Some(78), "{cmd} with {key}: {all}");
            assert!(
                all.contains(&format!("output[0].{key}")),
                "{cmd}: {key} not named: {all}"
            );
        }
        assert!(!t.path("main.token").exists());
    }
    assert_eq!(s.login_requests(), 0);
}

#[test]
fn a_missing_or_empty_password_file_fails_that_credential_by_name_and_the_others_run() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    std::fs::write(t.path("empty.password"), "").unwrap();
    std::fs::write(t.path("newline.password"), "\n").unwrap();
    let rest = cred(
        "missing",
        USER,
        "no-such.password",
        FAST,
        &output("missing.token", "raw"),
    ) + &cred(
        "empty",
        USER,
        "empty.password",
        FAST,
        &output("empty.token", "raw"),
    ) + &cred(
        "newline",
        USER,
        "newline.password",
        FAST,
        &output("newline.token", "raw"),
    ) + &cred("good", USER, "password", FAST, &output("good.token", "raw"));
    t.write_config(&s.base_url(), &rest);
    let d = t.daemon();
    wait_file(&t.path("good.token"), WAIT, || d.log());
    let missing = t.path("no-such.password").display().to_string();
    let empty = t.path("empty.password").display().to_string();
    let newline = t.path("newline.password").display().to_string();
    d.wait_log(&format!("cannot read password file {missing}"), 1, WAIT);
    d.wait_log(&format!("password from file {empty} is empty"), 1, WAIT);
    d.wait_log(&format!("password from file {newline} is empty"), 1, WAIT);
    assert_eq!(s.login_requests(), 1, "only the good credential logged in");
    for name in ["missing.token", "empty.token", "newline.token"] {
        assert!(!t.path(name).exists());
    }

    // Fixed: that credential heals on its own.
    std::fs::write(t.path("no-such.password"), format!("{PASSWORD}\n")).unwrap();
    wait_file(&t.path("missing.token"), WAIT, || d.log());
}

#[test]
fn a_world_readable_password_file_is_warned_about_by_name() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let pw = t.path("password");
    let needle = format!("password file {} is readable by every user", pw.display());

    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = t.run(&["check", "-c", &cfg_arg(&t)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!both(&out).contains("readable by every user"), "{}", both(&out));

    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = t.run(&["check", "-c", &cfg_arg(&t)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(both(&out).contains(&needle), "{}", both(&out));
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    d.wait_log(&needle, 1, WAIT);
    assert_eq!(warn_lines(&d.log(), &needle), 1, "{}", d.log());
}

#[test]
fn a_world_writable_config_file_is_warned_about_by_name() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let needle = format!("config file {} is writable by every user", cfg_arg(&t));
    std::fs::set_permissions(t.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = t.run(&["check", "-c", &cfg_arg(&t)]);
    assert!(!both(&out).contains("writable by every user"), "{}", both(&out));

    std::fs::set_permissions(t.config_path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = t.run(&["check", "-c", &cfg_arg(&t)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(both(&out).contains(&needle), "{}", both(&out));
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    d.wait_log(&needle, 1, WAIT);
    assert_eq!(warn_lines(&d.log(), &needle), 1, "{}", d.log());
}

#[test]
fn a_repeated_credential_name_or_output_path_exits_78_from_check_and_run() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let cases = [
        (
            "same name",
            credential("main", &output("a.token", "raw")) + &credential("main", &output("b.token", "raw")),
            "credential[1].name",
        ),
        (
            "same path, one credential",
            credential("main", &(output("a.token", "raw") + &output("a.token", "env"))),
            "credential[main].output[1].path",
        ),
        (
            "same path, two credentials",
            credential("one", &output("a.token", "raw")) + &credential("two", &output("a.token", "json")),
            "credential[two].output[0].path",
        ),
        (
            "same path spelled differently",
            credential("one", &output("a.token", "raw"))
                + &credential("two", &output(&t.path("a.token").display().to_string(), "raw")),
            "credential[two].output[0].path",
        ),
        (
            "same path through ./",
            credential("one", &output("a.token", "raw")) + &credential("two", &output("./a.token", "raw")),
            "credential[two].output[0].path",
        ),
    ];
    for (what, rest, key) in cases {
        t.write_config(&s.base_url(), &rest);
        for cmd in ["check", "run"] {
            let out = t.run(&[cmd, "-c", &cfg_arg(&t)]);
            let all = both(&out);
            assert_eq!(out.status.code(), Some(78), "{what}, {cmd}: {all}");
            assert!(all.contains(key), "{what}, {cmd}: {key} not named: {all}");
        }
    }
    assert_eq!(s.login_requests(), 0);
    assert!(!t.path("a.token").exists());
}
