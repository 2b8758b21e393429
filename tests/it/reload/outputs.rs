//! Reconciliation of outputs: added, removed, and changed format, mode,
//! variable or template, all without a login.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::{WAIT, hidden, replace_config, wait_token, wait_token_is};
use crate::support::*;
use nix::sys::signal::Signal;

/// Waits until the file `name` satisfies `cond`; returns its text.
fn wait_text(t: &TestDir, name: &str, d: &Daemon, cond: impl Fn(&str) -> bool) -> String {
    wait_for(
        WAIT,
        &format!("{name} to be rewritten"),
        || t.read(name).is_some_and(|x| cond(&x)),
        || format!("{name}: {:?}\n{}", t.read(name), d.log()),
    );
    t.read(name).unwrap()
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn added_output_gets_the_current_token_at_once_without_a_login() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    t.write_config(&base, &credential("main", &output("a.token", "raw")));
    let d = t.daemon();
    let tok = wait_token(&t, "a.token", &d);
    let requests = s.login_requests();
    assert_eq!(requests, 1);

    let two = output("a.token", "raw") + &output("b.json", "json");
    replace_config(&t, &config_text(&base, &credential("main", &two)));
    let b = wait_file(&t.path("b.json"), WAIT, || d.log());
    let v: serde_json::Value = serde_json::from_str(&b).expect("whole JSON");
    assert_eq!(v["token"].as_str(), Some(tok.as_str()));
    assert_eq!(v["credential"].as_str(), Some("main"));
    assert_eq!(mode_of(&t.path("b.json")), 0o600);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.login_requests(), requests, "no login for a new output");
    assert_eq!(d.log().matches("token renewed").count(), 1, "{}", d.log());
}

#[test]
fn removed_output_file_is_left_in_place_and_no_longer_written() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    let two = output("a.token", "raw") + &output("b.token", "raw");
    t.write_config(&base, &credential("main", &two));
    let d = t.daemon();
    let first = wait_token(&t, "a.token", &d);
    wait_token_is(&t, "b.token", &first, &d);

    replace_config(
        &t,
        &config_text(&base, &credential("main", &output("a.token", "raw"))),
    );
    d.wait_log(
        "output removed from the config; its file is left in place",
        1,
        WAIT,
    );
    d.wait_log("config reloaded", 1, WAIT);
    assert_eq!(t.read("b.token").as_deref(), Some(first.as_str()));
    assert_eq!(s.login_requests(), 1);

    // A renewal now writes a.token only.
    d.signal(Signal::SIGUSR1);
    wait_for(
        WAIT,
        "a renewal",
        || t.read("a.token").is_some_and(|x| x != first),
        || d.log(),
    );
    assert_eq!(s.login_requests(), 2);
    assert_eq!(t.read("a.token").as_ref(), s.issued_tokens().last());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(t.read("b.token").as_deref(), Some(first.as_str()));
}

#[test]
fn changed_output_format_mode_variable_template_are_rewritten_without_a_login() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    let before = "[[credential.output]]\npath = \"a.token\"\nformat = \"raw\"\n\n\
                  [[credential.output]]\npath = \"b.env\"\nformat = \"env\"\n\n\
                  [[credential.output]]\npath = \"c.txt\"\nformat = \"template\"\ntemplate = \"Bearer {token}\\n\"\n\n";
    t.write_config(&base, &credential("main", before));
    let d = t.daemon();
    let tok = wait_token(&t, "a.token", &d);
    wait_token_is(&t, "b.env", &tok, &d);
    wait_token_is(&t, "c.txt", &tok, &d);
    assert_eq!(mode_of(&t.path("a.token")), 0o600);

    let after = "[[credential.output]]\npath = \"a.token\"\nformat = \"shell\"\nmode = \"0640\"\n\n\
                 [[credential.output]]\npath = \"b.env\"\nformat = \"env\"\nvariable = \"MY_TOKEN\"\n\n\
                 [[credential.output]]\npath = \"c.txt\"\nformat = \"template\"\ntemplate = \"Authorization: Bearer {token}\\n\"\n\n";
    replace_config(&t, &config_text(&base, &credential("main", after)));
    let a = wait_text(&t, "a.token", &d, |x| x.starts_with("export VOIPBIN_TOKEN='"));
    let b = wait_text(&t, "b.env", &d, |x| x.starts_with("MY_TOKEN="));
    let c = wait_text(&t, "c.txt", &d, |x| x.starts_with("Authorization: "));
    assert_eq!(token_in(&a).as_deref(), Some(tok.as_str()));
    assert!(b.contains("MY_TOKEN_EXPIRES_AT="), "{b}");
    assert_eq!(token_in(&b).as_deref(), Some(tok.as_str()));
    assert_eq!(c, format!("Authorization: Bearer {tok}\n"));
    wait_for(
        WAIT,
        "mode 0640",
        || mode_of(&t.path("a.token")) == 0o640,
        || d.log(),
    );
    assert_eq!(s.login_requests(), 1);
    assert!(hidden(t.dir.path()).is_empty(), "{:?}", hidden(t.dir.path()));

    // A mode-only change is applied too.
    let mode_only = after.replace("mode = \"0640\"", "mode = \"0604\"");
    replace_config(&t, &config_text(&base, &credential("main", &mode_only)));
    wait_for(
        WAIT,
        "mode 0604",
        || mode_of(&t.path("a.token")) == 0o604,
        || d.log(),
    );
    assert_eq!(s.login_requests(), 1);
}
