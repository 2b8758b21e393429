//! Issue 9 hardening, spawning the binary: hooks get a clean, scrubbed
//! world; a crowded health port cannot starve renewals; config and command
//! rules (modes, owners, templates, the state-dir lock, demo --dir, status).

mod common;
mod coresupport;

use std::time::Duration;

use common::*;
use coresupport::*;
use nix::sys::signal::Signal;

/// A token lifetime no test outlives: no renewal happens unless asked for.
const LONG: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------
// Hooks: a clean environment, scrubbed output.

/// A credential reading its password from `$HOOKTEST_PW`, one raw output
/// whose hook prints the previous token (a copy it keeps), the current
/// output file, and its whole environment.
fn leaky_hook_config(hook_env: &str) -> String {
    format!(
        "[[credential]]\nname = \"main\"\nusername = \"{USER}\"\npassword-env = \"HOOKTEST_PW\"\n\
         {FAST_RETRY}\n[[credential.output]]\npath = \"main.token\"\nformat = \"raw\"\n\
         on-change = [\"sh\", \"-c\", \"cat prev.copy 2>/dev/null; echo; cat \\\"$VOIPBIN_TOKEND_OUTPUT\\\"; echo; \
         cp \\\"$VOIPBIN_TOKEND_OUTPUT\\\" prev.copy; env; echo hook-done\"]\n{hook_env}\n"
    )
}

#[test]
fn hooks_get_a_clean_environment_and_their_output_is_scrubbed_of_tokens() {
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &leaky_hook_config("hook-env = [\"HOOKTEST_PASSED\"]"),
    );
    let cfg = t.config_path();
    let mut cmd = t.command(&["run", "-c", cfg.to_str().unwrap()]);
    cmd.env("HOOKTEST_PW", PASSWORD)
        .env("HOOKTEST_PASSED", "listed-variable-reaches-the-hook")
        .env("HOOKTEST_NOT_LISTED", "unlisted-variable-value");
    let mut d = Daemon::spawn(cmd);

    wait_file(&t.path("main.token"), WAIT, || d.log());
    d.wait_log("hook-done", 1, WAIT);
    // A second token: the hook now prints the previous one too.
    d.signal(Signal::SIGUSR1);
    wait_for(WAIT, "a second login", || s.logins_ok() >= 2, || d.log());
    d.wait_log("hook-done", 2, WAIT);
    stop(&mut d, Signal::SIGTERM);

    let log = d.log();
    let tokens = s.issued_tokens();
    assert_eq!(tokens.len(), 2, "{log}");
    assert_no_secrets(&log, PASSWORD, &tokens);
    assert!(
        log.contains("[redacted]"),
        "the hook printed tokens; they show as [redacted]\n{log}"
    );
    assert!(
        log.contains("HOOKTEST_PASSED=listed-variable-reaches-the-hook"),
        "a variable listed in hook-env reaches the hook\n{log}"
    );
    assert!(log.contains("VOIPBIN_TOKEND_OUTPUT="), "{log}");
    assert!(log.contains("PATH="), "{log}");
    assert!(
        !log.contains("HOOKTEST_NOT_LISTED") && !log.contains("unlisted-variable-value"),
        "a variable not listed reached the hook\n{log}"
    );
    assert!(
        !log.contains("HOOKTEST_PW"),
        "the password variable reached the hook\n{log}"
    );
}

#[test]
fn hook_env_may_not_pass_the_password_variable() {
    let s = standin(LONG);
    let t = TestDir::new();
    for bad in ["hook-env = [\"HOOKTEST_PW\"]", "hook-env = [\"NOT A NAME\"]"] {
        t.write_config(&s.base_url(), &leaky_hook_config(bad));
        let out = t.run(&["check", "-c", t.config_path().to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(78), "{bad}: {}", both(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("credential[main].output[0].hook-env"),
            "{bad}: {err}"
        );
        assert!(err.contains("config.toml"), "{err}");
    }
    // hook-env without on-change is a mistake too.
    t.write_config(
        &s.base_url(),
        &credential("main", &(output("a.token", "raw") + "hook-env = [\"HOME\"]\n")),
    );
    let out = t.run(&["check", "-c", t.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
}
