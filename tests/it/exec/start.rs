//! The child starts only once the secret is on hand: while logins fail no
//! child runs and `/readyz` is 503; a SIGTERM meanwhile ends the daemon
//! with 0 and starts nothing.

use std::os::unix::net::UnixDatagram;

use voipbin_tokend_standin::Fault;

use super::*;

/// Every datagram waiting on `sock` (non-blocking), as text.
fn drain(sock: &UnixDatagram, into: &mut String) {
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = sock.recv(&mut buf) {
        into.push_str(&String::from_utf8_lossy(&buf[..n]));
        into.push('\n');
    }
}

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
    let notify = e.path("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut notes = String::new();
    let mut cmd = e.command(&[], &[&e.path("child.sh").display().to_string()]);
    cmd.env("NOTIFY_SOCKET", &notify);
    let mut d = Daemon::spawn(cmd);

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
    drain(&sock, &mut notes);
    assert!(
        !notes.lines().any(|l| l == "READY=1"),
        "READY=1 before the first token: {notes}"
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
    wait_for(
        WAIT,
        "READY=1",
        || {
            drain(&sock, &mut notes);
            notes.lines().any(|l| l == "READY=1")
        },
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

#[test]
fn a_command_without_a_slash_is_found_on_path_and_its_arguments_pass_verbatim() {
    let s = standin(LONG);
    let e = ExecDir::new();
    e.t.write_config(
        &s.base_url(),
        &token_cred("main", "", &output("main.token", "raw")),
    );
    let script = e.child(
        "printf '%s|%s|%s\\n' \"$#\" \"$1\" \"$2\" > \"$D/args\"\n\
         echo \"start $$\" >> \"$D/child.log\"\nexit 0\n",
    );
    // `sh` from PATH, no shell between: no word splitting, no expansion.
    let mut d = Daemon::spawn(e.command(&[], &["sh", &script, "two words", "$HOME *"]));
    let (status, _) = d.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{}", e.context(&d));
    assert_eq!(e.t.read("args").as_deref(), Some("2|two words|$HOME *\n"));
    assert_log_clean(&d, &s);
}
