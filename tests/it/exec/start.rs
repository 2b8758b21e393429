//! The child starts only once the secret is on hand: while logins fail no
//! child runs and `/readyz` is 503; a SIGTERM meanwhile ends the daemon
//! with 0 and starts nothing.

use voipbin_tokend_standin::Fault;

use super::*;

#[test]
fn the_child_starts_once_and_only_after_the_first_token() {
    let s = standin(LONG);
    s.set_default(Some(Fault::status(503)));
    let e = ExecDir::new();
    let (port, health) = health();
    e.t.write_config(
        &s.base_url(),
        &format!("{health}{}", token_cred("main", "", &output("main.token", "raw"))),
    );
    e.child(STANDARD);
    let mut d = e.daemon(&[]);

    // Failing logins: retried, no child, not ready.
    wait_for(
        WAIT,
        "three failed logins",
        || s.login_requests() >= 3,
        || e.context(&d),
    );
    wait_for(
        WAIT,
        "/readyz to answer",
        || http_status(port, "/readyz") != 0,
        || e.context(&d),
    );
    assert_eq!(http_status(port, "/readyz"), 503, "{}", e.context(&d));
    assert_eq!(s.logins_ok(), 0);
    assert!(
        e.records().is_empty(),
        "a child ran before the first token:\n{}",
        e.context(&d)
    );

    // Logins work again: the child starts, once, with the token on disk.
    s.set_default(None);
    let pid = e.wait_starts(1, &d)[0];
    wait_for(
        WAIT,
        "/readyz 200",
        || http_status(port, "/readyz") == 200,
        || e.context(&d),
    );
    let token = token_in(&t_read(&e, "main.token")).unwrap();
    assert!(
        e.env_of(pid).get("VOIPBIN_TOKEN") == Some(&token),
        "the child got the token that is on disk"
    );
    // A while later it is still the one child.
    let logins = s.login_requests();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(e.starts(), vec![pid], "{}", e.context(&d));
    assert_eq!(s.login_requests(), logins, "no login after the first token");
    assert!(alive(pid));

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}

#[test]
fn sigterm_before_the_first_secret_exits_0_and_starts_no_child() {
    let s = standin(LONG);
    s.set_default(Some(Fault::status(500)));
    let e = ExecDir::new();
    e.t.write_config(
        &s.base_url(),
        &token_cred("main", "", &output("main.token", "raw")),
    );
    e.child(STANDARD);
    let mut d = e.daemon(&[]);

    wait_for(
        WAIT,
        "two failed logins",
        || s.login_requests() >= 2,
        || e.context(&d),
    );
    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert!(e.records().is_empty(), "a child ran:\n{}", e.context(&d));
    assert!(!e.path("main.token").exists());
    assert_log_clean(&d, &s);
}

fn t_read(e: &ExecDir, name: &str) -> String {
    e.t.read(name)
        .unwrap_or_else(|| panic!("{name} is written before the child starts"))
}
