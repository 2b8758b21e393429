//! The environment the child gets: the exported secrets (what the outputs
//! and the key state hold), the daemon's own variables, and not the
//! password variable or systemd's notify variables; `--env` exports
//! exactly what it lists.

use std::os::unix::net::UnixDatagram;

use super::*;

#[test]
fn the_child_gets_the_token_and_the_key_with_their_expiry_and_not_the_password_or_the_notify_variables() {
    let s = key_standin_scaled(3600.0);
    let e = ExecDir::new();
    let t = &e.t;
    let (_, boot) = bootstrap(&s, t, 365);
    let main = format!(
        "[[credential]]\nname = \"main\"\nusername = \"{USER}\"\npassword-env = \"EXEC_TEST_PW\"\n{FAST_RETRY}\n{}",
        output("main.env", "env")
    );
    t.write_config(
        &s.base_url(),
        &format!("{main}{}", key_cred("", &output("mcp.env", "env"))),
    );
    e.child(&format!("pwd -P > \"$D/cwd.$$\"\n{STANDARD}"));
    let notify = t.path("notify.sock");
    let _sock = UnixDatagram::bind(&notify).unwrap();
    let mut cmd = e.command(&[], &[&e.path("child.sh").display().to_string()]);
    cmd.env("EXEC_TEST_PW", PASSWORD)
        .env("EXEC_TEST_KEEP", "kept-for-the-child")
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "60000000")
        .env("WATCHDOG_PID", "1")
        .env("VOIPBIN_TOKEN", "inherited-stale-value")
        .env("VOIPBIN_API_KEY_EXPIRES_AT", "inherited-stale-value");
    let mut d = Daemon::spawn(cmd);

    let key = wait_env_key(t, "mcp.env", &[&boot], &d);
    let token = token_in(&wait_file(&t.path("main.env"), WAIT, || d.log())).unwrap();
    // The child that holds the current key and token (one started with the
    // bootstrap key, if any, was restarted).
    let mut pid = 0;
    wait_for(
        WAIT,
        "a child started with the current key and token",
        || {
            let Some(&last) = e.starts().last() else {
                return false;
            };
            let env = e.env_of(last);
            pid = last;
            env.get("VOIPBIN_API_KEY") == Some(&key) && env.get("VOIPBIN_TOKEN") == Some(&token)
        },
        || e.context(&d),
    );
    let env = e.env_of(pid);
    assert!(
        state_json(t)["current"]["key"].as_str() == Some(key.as_str()),
        "the child's key is the key state's current key"
    );
    assert_same_time(
        &env["VOIPBIN_API_KEY_EXPIRES_AT"],
        &e.output_var("mcp.env", "VOIPBIN_API_KEY_EXPIRES_AT").unwrap(),
        "VOIPBIN_API_KEY_EXPIRES_AT is the key's expiry",
    );
    assert_same_time(
        &env["VOIPBIN_TOKEN_EXPIRES_AT"],
        &e.output_var("main.env", "VOIPBIN_TOKEN_EXPIRES_AT").unwrap(),
        "VOIPBIN_TOKEN_EXPIRES_AT is the token's expiry",
    );
    assert_same_time(
        &env["VOIPBIN_TOKEN_EXPIRES_AT"],
        &rfc3339_secs(expire_of(&token)),
        "VOIPBIN_TOKEN_EXPIRES_AT is the token's expire claim",
    );
    let names: Vec<&String> = env.keys().collect();
    for gone in ["EXEC_TEST_PW", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(!env.contains_key(gone), "{gone} reached the child: {names:?}");
    }
    assert!(
        !env.values().any(|v| v.contains(PASSWORD)),
        "the password reached the child under some name: {names:?}"
    );
    assert_eq!(
        env.get("EXEC_TEST_KEEP").map(String::as_str),
        Some("kept-for-the-child"),
        "the daemon's own variables reach the child: {names:?}"
    );
    assert!(env.contains_key("PATH"), "{names:?}");
    // The exported variables replace inherited ones of the same name (the
    // comparisons above hold the real values), and the working directory
    // is the daemon's.
    assert!(!env.values().any(|v| v == "inherited-stale-value"), "{names:?}");
    let cwd = t.read(&format!("cwd.{pid}")).unwrap_or_default();
    assert_eq!(
        cwd.trim(),
        t.dir.path().canonicalize().unwrap().to_str().unwrap(),
        "the child runs in the daemon's working directory"
    );

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}

#[test]
fn env_flags_export_one_credential_under_two_names_and_nothing_else() {
    let s = standin(LONG);
    let e = ExecDir::new();
    let t = &e.t;
    t.write_config(
        &s.base_url(),
        &format!(
            "{}{}",
            token_cred("main", "", &output("main.env", "env")),
            cred(
                "second",
                USER,
                "unused",
                &format!("{FAST_RETRY}password-env = \"EXEC_SECOND_PW\""),
                &output("second.env", "env")
            )
            .replace("password-file = \"unused\"\n", "")
        ),
    );
    e.child(STANDARD);
    // "second" is not exported; its password variable is removed all the same.
    let mut cmd = e.command(
        &["--env", "APP_TOKEN=main", "--env", "VN_ACCESS_KEY=main"],
        &[&e.path("child.sh").display().to_string()],
    );
    cmd.env("EXEC_SECOND_PW", PASSWORD);
    let mut d = Daemon::spawn(cmd);

    let pid = e.wait_starts(1, &d)[0];
    let env = e.env_of(pid);
    let main = token_in(
        &t.read("main.env")
            .expect("main.env is written before the child starts"),
    )
    .unwrap();
    assert!(env.get("APP_TOKEN") == Some(&main), "APP_TOKEN is main's token");
    assert!(
        env.get("VN_ACCESS_KEY") == Some(&main),
        "VN_ACCESS_KEY is main's token too"
    );
    for var in ["APP_TOKEN_EXPIRES_AT", "VN_ACCESS_KEY_EXPIRES_AT"] {
        let at = env.get(var).unwrap_or_else(|| panic!("{var} missing"));
        assert_same_time(at, &rfc3339_secs(expire_of(&main)), var);
    }
    let names: Vec<&String> = env.keys().collect();
    for not in [
        "VOIPBIN_TOKEN",
        "VOIPBIN_TOKEN_EXPIRES_AT",
        "VOIPBIN_API_KEY",
        "VOIPBIN_API_KEY_EXPIRES_AT",
    ] {
        assert!(!env.contains_key(not), "{not} exported beside --env: {names:?}");
    }
    assert!(
        !env.contains_key("EXEC_SECOND_PW"),
        "the password variable of a credential not exported reached the child: {names:?}"
    );
    // Nothing else holds a token: not main's under a third name, not second's.
    let holding: Vec<&String> = env
        .iter()
        .filter(|(_, v)| s.issued_tokens().iter().any(|tok| v.contains(tok.as_str())))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        holding,
        ["APP_TOKEN", "VN_ACCESS_KEY"],
        "variables holding a token"
    );

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}

#[test]
fn a_credential_without_an_output_is_exported_to_the_child() {
    let s = standin(LONG);
    let e = ExecDir::new();
    e.t.write_config(&s.base_url(), &token_cred("main", "", ""));
    e.child(STANDARD);
    let mut d = e.daemon(&[]);

    let pid = e.wait_starts(1, &d)[0];
    let env = e.env_of(pid);
    let issued = s.issued_tokens();
    assert_eq!(issued.len(), 1, "one login");
    assert!(
        env.get("VOIPBIN_TOKEN") == Some(&issued[0]),
        "the child holds the token the stand-in issued"
    );
    assert_same_time(
        &env["VOIPBIN_TOKEN_EXPIRES_AT"],
        &rfc3339_secs(expire_of(&issued[0])),
        "VOIPBIN_TOKEN_EXPIRES_AT",
    );
    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}
