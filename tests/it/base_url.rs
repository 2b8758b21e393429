//! Per-credential `base-url`: one daemon, several VoIPBIN installations.
//! Each credential logs in (and makes its keys) at its own server, read
//! from the stand-ins' request logs; a reload that moves a credential to
//! another server logs it in there.

use std::time::Duration;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

/// A token-credential section with its own `base-url`.
fn cred_at(name: &str, base_url: &str, out: &str) -> String {
    cred(
        name,
        USER,
        "password",
        &format!("base-url = \"{base_url}\"\n{FAST_RETRY}"),
        &output(out, "raw"),
    )
}

/// Waits until `name` holds a token that `s` issued.
fn wait_token_from(t: &TestDir, name: &str, s: &StandIn, d: &Daemon) -> String {
    let mut token = String::new();
    wait_for(
        WAIT,
        &format!("{name} to hold a token of its server"),
        || {
            token = t.read(name).unwrap_or_default();
            !token.is_empty() && s.issued_tokens().contains(&token)
        },
        || format!("{name}: {:?}\n{}", t.read(name), d.log()),
    );
    token
}

#[test]
fn once_logs_each_credential_in_at_its_own_server() {
    let (a, b) = (standin(LONG), standin(LONG));
    let t = TestDir::new();
    t.write_config(
        &a.base_url(),
        &format!(
            "{}{}",
            credential("first", &output("first.token", "raw")),
            cred_at("second", &b.base_url(), "second.token")
        ),
    );
    let check = t.run(&["check", "-c", t.config_path().to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(0), "{}", both(&check));
    let own = format!("its own server {}", b.base_url());
    assert!(both(&check).contains(&own), "{}", both(&check));

    let out = t.run(&["once", "-c", t.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let (first, second) = (t.read("first.token").unwrap(), t.read("second.token").unwrap());
    assert_eq!(a.issued_tokens(), vec![first], "[api] base-url served the first");
    assert_eq!(
        b.issued_tokens(),
        vec![second],
        "its own base-url served the second"
    );
    assert_eq!((logins(&a).len(), logins(&b).len()), (1, 1));
    // Each login record names its own server: a restart reuses both tokens.
    let out = t.run(&["once", "-c", t.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!((logins(&a).len(), logins(&b).len()), (1, 1), "{}", both(&out));
}

#[test]
fn the_daemon_keeps_tokens_and_keys_at_their_own_servers() {
    let a = standin(LONG);
    let b = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&b, &t, 365);
    t.write_config(
        &a.base_url(),
        &format!(
            "{}{}",
            credential("first", &output("first.token", "raw")),
            key_cred(
                &format!("base-url = \"{}\"", b.base_url()),
                &output("mcp.env", "env")
            )
        ),
    );
    let d = t.daemon();
    wait_token_from(&t, "first.token", &a, &d);
    let mut key = String::new();
    wait_for(
        WAIT,
        "the first key of this installation, made at its own server",
        || {
            key = env_key(&t, "mcp.env").unwrap_or_default();
            key.starts_with("vb_") && key != boot
        },
        || d.log(),
    );
    assert!(
        b.issued_keys().contains(&key),
        "the key was made at {}",
        b.base_url()
    );
    assert!(posts(&b) >= 1);
    assert!(
        key_calls(&a).is_empty(),
        "no key call went to [api] base-url: {:?}",
        key_calls(&a)
    );
    assert!(
        logins(&b).is_empty(),
        "the token credential never logged in at the key's server"
    );
    assert_eq!(logins(&a).len(), 1);
}

#[test]
fn a_reload_that_moves_a_credential_to_another_server_logs_it_in_there() {
    let (a, b) = (standin(LONG), standin(LONG));
    let t = TestDir::new();
    let stay = credential("stay", &output("stay.token", "raw"));
    t.write_config(
        &a.base_url(),
        &format!("{stay}{}", cred_at("moving", &a.base_url(), "moving.token")),
    );
    let d = t.daemon();
    let before = wait_token_from(&t, "moving.token", &a, &d);
    let stay_token = wait_token_from(&t, "stay.token", &a, &d);
    assert_eq!(logins(&a).len(), 2);

    let moved = format!("{stay}{}", cred_at("moving", &b.base_url(), "moving.token"));
    let tmp = t.path("config.toml.new");
    std::fs::write(&tmp, config_text(&a.base_url(), &moved)).unwrap();
    std::fs::rename(&tmp, t.config_path()).unwrap();
    let after = wait_token_from(&t, "moving.token", &b, &d);
    assert_ne!(before, after);
    d.wait_log("added=0 changed=1 removed=0", 1, WAIT);
    assert_eq!(logins(&b).len(), 1, "{}", d.log());
    assert_eq!(logins(&a).len(), 2, "the other credential did not log in again");
    assert_eq!(t.read("stay.token"), Some(stay_token));
}

#[test]
fn the_login_budget_is_shared_by_every_server() {
    // max-logins-per-second = 1: four credentials, two on each server,
    // log in one second apart at least, whichever server they go to.
    let (a, b) = (standin(LONG), standin(LONG));
    let t = TestDir::new();
    let rest: String = (0..4)
        .map(|i| {
            let server = if i % 2 == 0 { a.base_url() } else { b.base_url() };
            cred_at(&format!("c{i}"), &server, &format!("c{i}.token"))
        })
        .collect();
    std::fs::write(t.config_path(), config_api(&a.base_url(), "5s", 1, &rest)).unwrap();
    let out = t.run(&["once", "-c", t.config_path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", both(&out));
    let mut at: Vec<_> = logins(&a).iter().chain(logins(&b).iter()).map(|r| r.at).collect();
    assert_eq!((logins(&a).len(), logins(&b).len()), (2, 2));
    at.sort();
    // 100 ms of slack for the way from the limiter to the server.
    let closest = at.windows(2).map(|w| secs(w[0], w[1])).fold(f64::MAX, f64::min);
    assert!(closest >= 0.9, "two logins {closest:.2} s apart across servers");
}
