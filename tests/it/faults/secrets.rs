//! Secrets under every fault: the trace log never holds a password or a
//! part of a token.

use std::time::Duration;

use super::{WAIT, assert_no_secrets, cfg_arg, token_secrets, wait_new_token};
use crate::support::*;
use nix::sys::signal::Signal;

#[test]
fn trace_log_across_many_faults_never_holds_a_password_or_token_part() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let outputs = output("main.token", "raw") + &output("main.json", "json");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let elsewhere = format!("{}/moved", s.base_url());
    s.script([
        Fault::status(400),
        Fault::status(500),
        Fault::Status {
            status: 200,
            body: "<html>maintenance</html>".into(),
            headers: vec![("Content-Type".into(), "text/html".into())],
        },
        Fault::NotJwt,
        Fault::BadBase64,
        Fault::NonJsonClaims,
        Fault::BadExpire,
        Fault::Expired,
        Fault::too_many_requests(Some("1")),
        Fault::redirect(302, &elsewhere),
        Fault::Huge {
            bytes: 1_000_000,
            chunked: true,
        },
        Fault::Close,
        Fault::ServerDateSkew(3600),
    ]);
    let mut cmd = t.command(&["run", "-c", &cfg_arg(&t)]);
    cmd.env("RUST_LOG", "trace");
    let d = Daemon::spawn(cmd);
    wait_for(WAIT, "every fault played", || s.pending_faults() == 0, || d.log());
    wait_for(WAIT, "a good login", || s.logins_ok() >= 1, || d.log());
    let first = wait_file(&t.path("main.token"), WAIT, || d.log());
    d.signal(Signal::SIGUSR1);
    wait_new_token(&s, &t, "main.token", &first, &d);

    let log = d.log();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "not a trace log");
    assert!(!log.contains(PASSWORD), "the password is in the log");
    let secrets = token_secrets(&s);
    assert!(secrets.len() > 20);
    assert_no_secrets(&log, &secrets, "trace log");
    // The shared JWT header is not secret, but no other part may show either.
    eprintln!(
        "trace log of {} lines holds none of {} secrets",
        log.lines().count(),
        secrets.len()
    );
}
