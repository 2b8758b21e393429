//! Bad input: a clear error with the right exit status, and nothing
//! started: the stand-in saw no request and no child ran.

use std::process::Output;

use super::*;

/// A dir with a valid one-credential config and the standard child.
fn setup(s: &StandIn) -> ExecDir {
    let e = ExecDir::new();
    e.t.write_config(
        &s.base_url(),
        &token_cred("main", "", &output("main.token", "raw")),
    );
    e.child(STANDARD);
    e
}

/// Runs `exec -c config.toml ARGS` to completion.
fn run(e: &ExecDir, args: &[&str]) -> Output {
    let cfg = e.cfg();
    let mut all = vec!["exec", "-c", cfg.as_str()];
    all.extend_from_slice(args);
    e.t.run(&all)
}

/// Asserts the exit code, that stderr names each of `names`, that the
/// stand-in got no request and that no child ran.
fn refused(s: &StandIn, e: &ExecDir, args: &[&str], codes: &[i32], names: &[&str]) {
    let out = run(e, args);
    let text = both(&out);
    assert!(
        out.status.code().is_some_and(|c| codes.contains(&c)),
        "exec {args:?}: exit {:?}, expected one of {codes:?}\n{text}",
        out.status.code()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for n in names {
        assert!(
            stderr.contains(n),
            "exec {args:?}: the message does not name {n:?}\n{text}"
        );
    }
    assert!(
        s.requests().is_empty(),
        "exec {args:?}: the stand-in got {} request(s)",
        s.requests().len()
    );
    assert!(e.records().is_empty(), "exec {args:?}: a child ran\n{text}");
    assert!(
        !e.path("main.token").exists(),
        "exec {args:?}: an output was written"
    );
}

#[test]
fn no_command_is_a_usage_error_2() {
    let s = standin(LONG);
    let e = setup(&s);
    refused(&s, &e, &[], &[2], &[]);
    refused(&s, &e, &["--"], &[2], &[]);
}

#[test]
fn a_command_not_found_is_127_and_one_not_executable_or_a_directory_is_126() {
    let s = standin(LONG);
    let e = setup(&s);
    refused(
        &s,
        &e,
        &["--", "/nonexistent/dir/prog"],
        &[127],
        &["/nonexistent/dir/prog"],
    );
    refused(
        &s,
        &e,
        &["--", "voipbin-tokend-no-such-program", "arg"],
        &[127],
        &["voipbin-tokend-no-such-program"],
    );

    let plain = e.script("plain.sh", STANDARD);
    chmod(std::path::Path::new(&plain), 0o644);
    refused(&s, &e, &["--", &plain], &[126], &["plain.sh"]);

    let dir = e.path("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let dir = dir.to_str().unwrap().to_owned();
    refused(&s, &e, &["--", &dir], &[126], &["a-directory"]);
}

#[test]
fn bad_env_flags_are_config_errors_78_naming_env() {
    let s = standin(LONG);
    let e = setup(&s);
    let child = e.path("child.sh").display().to_string();
    for bad in ["1BAD=main", "BAD-NAME=main", "=main", "A B=main"] {
        refused(&s, &e, &["--env", bad, "--", &child], &[78], &["--env"]);
    }
    refused(
        &s,
        &e,
        &["--env", "APP_TOKEN=nope", "--", &child],
        &[78],
        &["--env", "nope"],
    );
    // Names the dynamic loader or systemd read: the loader would print a
    // secret it cannot load to the child's stderr (the journal).
    for reserved in [
        "LD_PRELOAD=main",
        "LD_LIBRARY_PATH=main",
        "PATH=main",
        "NOTIFY_SOCKET=main",
    ] {
        let name = reserved.split('=').next().unwrap();
        refused(
            &s,
            &e,
            &["--env", reserved, "--", &child],
            &[78],
            &["--env", name, "choose another name"],
        );
    }
    // No '=' at all: a usage error or a config error, naming --env either way.
    refused(
        &s,
        &e,
        &["--env", "APP_TOKEN", "--", &child],
        &[2, 78],
        &["--env"],
    );
    // Config comes first: a bad --env with a missing command is still 78.
    refused(
        &s,
        &e,
        &["--env", "APP_TOKEN=nope", "--", "/nonexistent/dir/prog"],
        &[78],
        &["--env"],
    );
}

#[test]
fn two_token_credentials_without_env_flags_are_78_asking_for_env() {
    let s = standin(LONG);
    let e = setup(&s);
    e.t.write_config(
        &s.base_url(),
        &format!(
            "{}{}",
            token_cred("main", "", &output("main.token", "raw")),
            token_cred("second", "", &output("second.token", "raw"))
        ),
    );
    let child = e.path("child.sh").display().to_string();
    refused(&s, &e, &["--", &child], &[78], &["--env"]);
    assert!(!e.path("second.token").exists());
}

#[test]
fn bad_on_change_stop_signal_and_stop_timeout_are_usage_errors_2_naming_the_flag() {
    let s = standin(LONG);
    let e = setup(&s);
    let child = e.path("child.sh").display().to_string();
    for (flag, bads) in [
        (
            "--on-change",
            &["sometimes", "signal:NOPE", "signal:", "signal", "restart:now"][..],
        ),
        ("--stop-signal", &["SIGNOPE", "", "99999"][..]),
        ("--stop-timeout", &["soon", "-1s", "10 parsecs"][..]),
    ] {
        for bad in bads {
            let arg = format!("{flag}={bad}");
            refused(&s, &e, &[&arg, "--", &child], &[2], &[flag]);
        }
    }
}
