//! Reloads and the child: a reload that changes no exported value (SIGHUP,
//! an edit of a renewal setting and a new output) restarts nothing; a
//! reload that removes the exported credential is refused and the child
//! runs on.

use super::*;

/// Replaces config.toml as editors do: write a temp file, rename it over.
fn replace_config(e: &ExecDir, text: &str) {
    let tmp = e.path("config.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, e.t.config_path()).unwrap();
}

/// Waits past the debounce second (and more), then asserts the one child
/// `pid` still runs, never stopped.
fn assert_untouched(e: &ExecDir, pid: i32, d: &Daemon, after: &str) {
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        e.starts(),
        vec![pid],
        "restarted after {after}:\n{}",
        e.context(d)
    );
    assert!(
        !e.has(&format!("stop {pid}")) && !e.records().contains("sig "),
        "the child was signalled after {after}:\n{}",
        e.context(d)
    );
    assert!(alive(pid), "the child died after {after}");
}

#[test]
fn reloads_that_change_no_exported_value_do_not_restart_the_child() {
    let s = standin(LONG);
    let e = ExecDir::new();
    let base = s.base_url();
    e.t.write_config(&base, &token_cred("main", "", &output("main.token", "raw")));
    e.child(STANDARD);
    let mut d = e.daemon(&[]);
    let pid = e.wait_starts(1, &d)[0];

    d.signal(Signal::SIGHUP);
    d.wait_log("config reloaded", 1, WAIT);
    assert_untouched(&e, pid, &d, "SIGHUP");

    // A renewal setting changed and an output added: applied (the new
    // output appears), the token is the same, the child is left alone.
    let edited = config_text(
        &base,
        &token_cred(
            "main",
            "renew-at = 0.7",
            &format!("{}{}", output("main.token", "raw"), output("main.env", "env")),
        ),
    );
    replace_config(&e, &edited);
    wait_file(&e.path("main.env"), WAIT, || e.context(&d));
    d.wait_log("config reloaded", 2, WAIT);
    assert_untouched(&e, pid, &d, "an edit that changed no secret");
    assert_eq!(s.logins_ok(), 1, "the reload kept the token");

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}

#[test]
fn a_reload_that_removes_the_exported_credential_is_refused_and_the_child_runs_on() {
    let s = standin(LONG);
    let e = ExecDir::new();
    let base = s.base_url();
    e.t.write_config(&base, &token_cred("main", "", &output("main.token", "raw")));
    e.child(STANDARD);
    let mut d = e.daemon(&[]);
    let pid = e.wait_starts(1, &d)[0];

    // "main" renamed to "other": the exported credential is gone.
    replace_config(
        &e,
        &config_text(&base, &token_cred("other", "", &output("other.token", "raw"))),
    );
    d.wait_log("config reload failed", 1, WAIT);
    let log = d.log();
    let line = log.lines().find(|l| l.contains("config reload failed")).unwrap();
    assert!(line.contains("keeping the last good config"), "{line}");
    assert!(line.contains("main"), "the refusal names the credential: {line}");
    assert_untouched(&e, pid, &d, "a refused reload");
    assert!(
        !e.path("other.token").exists(),
        "the refused config was not applied"
    );
    assert_eq!(s.logins_ok(), 1);

    // The last good config still works: SIGUSR1 renews "main" and restarts.
    d.signal(Signal::SIGUSR1);
    let pids = e.wait_starts(2, &d);
    assert_eq!(pids[0], pid);
    assert_one_at_a_time(&e.records());

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}

#[test]
fn a_reload_that_changes_the_kind_of_the_exported_credential_is_refused() {
    let s = standin(LONG);
    let e = ExecDir::new();
    let base = s.base_url();
    bootstrap(&s, &e.t, 365);
    e.t.write_config(&base, &token_cred("main", "", &output("main.token", "raw")));
    e.child(STANDARD);
    let mut d = e.daemon(&[]);
    let pid = e.wait_starts(1, &d)[0];

    // Same name, now an access key: VOIPBIN_TOKEN would become VOIPBIN_API_KEY.
    replace_config(
        &e,
        &config_text(
            &base,
            "[[credential]]\nname = \"main\"\nkind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\n\
             lifetime = \"1d\"\ngrace = \"1s\"\n\n",
        ),
    );
    d.wait_log("config reload failed", 1, WAIT);
    let log = d.log();
    let line = log.lines().find(|l| l.contains("config reload failed")).unwrap();
    assert!(line.contains("main"), "the refusal names the credential: {line}");
    assert_untouched(&e, pid, &d, "a refused change of kind");
    assert_eq!(s.key_requests(), 0, "the refused key credential made no key call");

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}
