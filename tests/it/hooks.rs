//! On-change hooks as the daemon runs them: a clean, scrubbed environment,
//! the open-file limit the daemon started with, and never a signal to the
//! daemon itself.

use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;

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

#[test]
fn hooks_run_with_the_open_file_limit_the_daemon_started_with() {
    use nix::sys::resource::{Resource, setrlimit};
    use std::os::unix::process::CommandExt;
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &credential(
            "main",
            &output_with(
                "a.token",
                "raw",
                "on-change = [\"sh\", \"-c\", \"ulimit -n > hook.limit\"]\n",
            ),
        ),
    );
    let cfg = t.config_path();
    let mut cmd = t.command(&["run", "-c", cfg.to_str().unwrap()]);
    // SAFETY: only setrlimit, a plain system call, between fork and exec.
    unsafe {
        cmd.pre_exec(|| setrlimit(Resource::RLIMIT_NOFILE, 256, 4096).map_err(std::io::Error::from));
    }
    let mut d = Daemon::spawn(cmd);
    wait_for(
        WAIT,
        "the hook's limit in hook.limit",
        || t.read("hook.limit").is_some_and(|x| x.ends_with('\n')),
        || d.log(),
    );
    assert_eq!(
        open_file_limits(d.pid()),
        (4096, 4096),
        "the daemon raised its own"
    );
    assert_eq!(
        t.read("hook.limit").unwrap().trim(),
        "256",
        "the hook gets the original soft limit"
    );
    stop(&mut d, Signal::SIGTERM);
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
    d.wait_log("not signalling ourselves", 1, SLOW_WAIT);
    std::thread::sleep(Duration::from_secs(4));
    let made = posts(&s) - before;
    assert_eq!(made, 1, "one forced rotation, no loop\n{}", d.log());
    assert_ne!(env_key(&t, "mcp.env").unwrap(), k1);
}
