//! Reconciliation of credentials: added, removed, changed (username,
//! password source, `[api]`, renewal settings) and unchanged.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{WAIT, cred, replace_config, wait_login_requests, wait_token};
use crate::support::*;
use nix::sys::signal::Signal;

/// A second account on the stand-in, to tell credentials' logins apart.
const USER2: &str = "second@example.com";

const PASSWORD2: &str = "second-password";

/// The second account, set up on the stand-in and in ./password2.
fn add_user2(s: &StandIn, t: &TestDir) {
    s.set_password(USER2, PASSWORD2);
    std::fs::write(t.path("password2"), format!("{PASSWORD2}\n")).unwrap();
}

fn logins_by(s: &StandIn, username: &str) -> usize {
    s.requests()
        .iter()
        .filter(|r| r.path == "/auth/login" && r.username.as_deref() == Some(username))
        .count()
}

fn mtime_of(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn added_credential_logs_in_and_the_others_do_not() {
    let s = standin(LONG);
    let t = TestDir::new();
    add_user2(&s, &t);
    let base = s.base_url();
    let main = credential("main", &output("a.token", "raw"));
    t.write_config(&base, &main);
    let d = t.daemon();
    let a = wait_token(&t, "a.token", &d);
    let a_mtime = mtime_of(&t.path("a.token"));

    let other = cred("other", USER2, "password2", "", &output("b.token", "raw"));
    replace_config(&t, &config_text(&base, &format!("{main}{other}")));
    let b = wait_token(&t, "b.token", &d);
    d.wait_log("added=1 changed=0 removed=0", 1, WAIT);
    assert_ne!(a, b);
    assert_eq!(s.issued_tokens().last(), Some(&b));
    assert_eq!(logins_by(&s, USER2), 1);
    assert_eq!(logins_by(&s, USER), 1);
    assert_eq!(s.login_requests(), 2);
    assert_eq!(t.read("a.token"), Some(a));
    assert_eq!(mtime_of(&t.path("a.token")), a_mtime);
}

#[test]
fn removed_credential_stops_renewing_and_leaves_its_file() {
    // 2 s tokens: both credentials renew about every 1.6 s while configured.
    let s = standin(Duration::from_secs(2));
    let t = TestDir::new();
    add_user2(&s, &t);
    let base = s.base_url();
    let main = credential("main", &output("a.token", "raw"));
    let other = cred("other", USER2, "password2", "", &output("b.token", "raw"));
    t.write_config(&base, &format!("{main}{other}"));
    let d = t.daemon();
    wait_token(&t, "a.token", &d);
    wait_token(&t, "b.token", &d);

    replace_config(&t, &config_text(&base, &main));
    d.wait_log("added=0 changed=0 removed=1", 1, WAIT);
    assert!(
        d.log()
            .contains("credential removed from the config; its files are left in place"),
        "{}",
        d.log()
    );
    let b_after = t.read("b.token").unwrap();
    let other_logins = logins_by(&s, USER2);
    let main_logins = logins_by(&s, USER);
    // main renews twice more; other does not log in at all.
    wait_for(
        WAIT,
        "two more renewals of main",
        || logins_by(&s, USER) >= main_logins + 2,
        || d.log(),
    );
    assert_eq!(logins_by(&s, USER2), other_logins, "{}", d.log());
    assert_eq!(t.read("b.token"), Some(b_after), "b.token is left as it was");
}

#[test]
fn changed_username_logs_in_anew() {
    let s = standin(LONG);
    let t = TestDir::new();
    s.set_password(USER2, PASSWORD);
    let base = s.base_url();
    t.write_config(&base, &credential("main", &output("a.token", "raw")));
    let d = t.daemon();
    let first = wait_token(&t, "a.token", &d);

    let renamed = credential("main", &output("a.token", "raw")).replace(USER, USER2);
    replace_config(&t, &config_text(&base, &renamed));
    wait_for(
        WAIT,
        "a new token",
        || t.read("a.token").is_some_and(|x| x != first),
        || d.log(),
    );
    assert_eq!(s.login_requests(), 2);
    assert_eq!(logins_by(&s, USER2), 1);
    assert_eq!(t.read("a.token").as_ref(), s.issued_tokens().last());
    assert!(d.log().contains("logging in anew"), "{}", d.log());
}

#[test]
fn changed_password_source_logs_in_anew() {
    let s = standin(LONG);
    let t = TestDir::new();
    std::fs::write(t.path("password.alt"), format!("{PASSWORD}\n")).unwrap();
    let base = s.base_url();
    t.write_config(&base, &credential("main", &output("a.token", "raw")));
    let d = t.daemon();
    let first = wait_token(&t, "a.token", &d);

    let moved = credential("main", &output("a.token", "raw"))
        .replace("password-file = \"password\"", "password-file = \"password.alt\"");
    replace_config(&t, &config_text(&base, &moved));
    wait_for(
        WAIT,
        "a new token",
        || t.read("a.token").is_some_and(|x| x != first),
        || d.log(),
    );
    assert_eq!(s.login_requests(), 2);
    assert_eq!(s.logins_ok(), 2);
    assert_eq!(t.read("a.token").as_ref(), s.issued_tokens().last());
}

#[test]
fn changed_api_section_logs_every_credential_in_anew() {
    let s = standin(LONG);
    let t = TestDir::new();
    add_user2(&s, &t);
    let base = s.base_url();
    let creds = credential("main", &output("a.token", "raw"))
        + &cred("other", USER2, "password2", "", &output("b.token", "raw"));
    t.write_config(&base, &creds);
    let d = t.daemon();
    let a = wait_token(&t, "a.token", &d);
    let b = wait_token(&t, "b.token", &d);
    assert_eq!(s.login_requests(), 2);

    let text = config_text(&base, &creds).replace("timeout = \"3s\"", "timeout = \"4s\"");
    replace_config(&t, &text);
    d.wait_log("added=0 changed=2 removed=0", 1, WAIT);
    wait_for(
        WAIT,
        "both credentials to log in anew",
        || t.read("a.token").is_some_and(|x| x != a) && t.read("b.token").is_some_and(|x| x != b),
        || d.log(),
    );
    assert_eq!(s.login_requests(), 4);
    assert_eq!(logins_by(&s, USER), 2);
    assert_eq!(logins_by(&s, USER2), 2);
}

#[test]
fn unchanged_credential_keeps_its_token_and_file_across_reloads() {
    let s = standin(LONG);
    let t = TestDir::new();
    add_user2(&s, &t);
    let base = s.base_url();
    let main = credential("main", &output("a.token", "raw"));
    t.write_config(&base, &main);
    let d = t.daemon();
    let a = wait_token(&t, "a.token", &d);
    let a_mtime = mtime_of(&t.path("a.token"));

    // Reload 1: another credential is added; main is untouched.
    let other = cred("other", USER2, "password2", "", &output("b.token", "raw"));
    replace_config(&t, &config_text(&base, &format!("{main}{other}")));
    d.wait_log("config reloaded", 1, WAIT);
    wait_token(&t, "b.token", &d);
    // Reload 2: a forced reload of the same text.
    d.signal(Signal::SIGHUP);
    d.wait_log("config reloaded", 2, WAIT);
    // Reload 3: the same credential written differently (reordered keys,
    // comments) is the same credential.
    let reordered = format!(
        "# reordered\n[[credential]]\nusername = \"{USER}\"\nname = \"main\"\n\
         retry-max = \"500ms\"\nretry-min = \"100ms\"\npassword-file = \"password\"\n\n{}{other}",
        output("a.token", "raw")
    );
    replace_config(&t, &config_text(&base, &reordered));
    d.wait_log("config reloaded", 3, WAIT);
    assert_eq!(
        d.log().matches("added=0 changed=0 removed=0").count(),
        2,
        "{}",
        d.log()
    );

    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(logins_by(&s, USER), 1, "{}", d.log());
    assert_eq!(t.read("a.token"), Some(a));
    assert_eq!(mtime_of(&t.path("a.token")), a_mtime, "not rewritten");
}

#[test]
fn changed_renewal_settings_reschedule_from_the_current_token() {
    // 20 s tokens, renew-at 0.9 (due 18 s after issue). 3 s in, renew-at
    // becomes 0.3: due 6 s after issue. Logging in at once (3 s) or counting
    // from the reload (9 s) or keeping the old schedule (18 s) all miss.
    let s = standin(Duration::from_secs(20));
    let t = TestDir::new();
    let base = s.base_url();
    let with = |renew_at: &str| {
        cred(
            "main",
            USER,
            "password",
            &format!("renew-at = {renew_at}\njitter = 0.0"),
            &output("a.token", "raw"),
        )
    };
    t.write_config(&base, &with("0.9"));
    let d = t.daemon();
    let first = wait_token(&t, "a.token", &d);
    let issued = Instant::now();

    std::thread::sleep(Duration::from_millis(3000));
    t.write_config(&base, &with("0.3"));
    d.signal(Signal::SIGHUP);
    d.wait_log("renewal settings changed; rescheduled", 1, WAIT);
    let rescheduled_at = issued.elapsed();
    assert_eq!(s.login_requests(), 1, "a reschedule is not a login\n{}", d.log());
    assert!(!d.log().contains("logging in anew"), "{}", d.log());

    wait_login_requests(&s, 2, &d);
    let renewed_after = issued.elapsed();
    wait_for(
        WAIT,
        "the renewed token on disk",
        || t.read("a.token").is_some_and(|x| x != first),
        || d.log(),
    );
    assert!(
        renewed_after >= Duration::from_millis(5000) && renewed_after < Duration::from_millis(8500),
        "renewed {renewed_after:?} after the token was issued (rescheduled at {rescheduled_at:?}); expected about 6 s\n{}",
        d.log()
    );
    assert_eq!(s.login_requests(), 2);
}
