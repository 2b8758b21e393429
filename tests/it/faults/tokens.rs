//! Unusable tokens, already expired tokens and a skewed server clock.

use std::collections::HashSet;
use std::time::Duration;

use super::{
    WAIT, Watcher, assert_no_secrets, cred, logins, secs, token_secrets, wait_new_token, warn_lines,
};
use crate::support::*;
use nix::sys::signal::Signal;

#[test]
fn malformed_tokens_are_refused_logged_without_the_token_and_the_old_one_stays() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let outputs = output("main.token", "raw") + &output("main.json", "json");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());

    s.script([
        Fault::NotJwt,
        Fault::BadBase64,
        Fault::NonJsonClaims,
        Fault::BadExpire,
        // The stand-in's BadBase64 token has `%` in it, refused as "not a
        // JWT" before any decoding; this one reaches the base64 decoder.
        Fault::Status {
            status: 200,
            body: r#"{"username":"x","token":"eyJhbGciOiJIUzI1NiJ9.A.c2lnbmF0dXJl"}"#.into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
        },
    ]);
    let watcher = Watcher::start(t.path("main.token"));
    let json_watcher = Watcher::start(t.path("main.json"));
    d.signal(Signal::SIGUSR1);
    let new = wait_new_token(&s, &t, "main.token", &good, &d);
    let seen = watcher.finish();
    let seen_json = json_watcher.finish();

    let issued = s.issued_tokens();
    assert_eq!(issued.len(), 6, "good, four bad, good");
    assert_eq!(issued[5], new);
    let allowed: HashSet<String> = [good.clone(), new.clone()].into();
    assert!(seen.is_subset(&allowed), "the raw file held a bad token");
    for bad in &issued[1..5] {
        assert!(
            seen_json.iter().all(|x| !x.contains(bad.as_str())),
            "the JSON file held a bad token"
        );
    }
    let log = d.log();
    for needle in [
        "not a JWT",
        "not valid base64url",
        "not a JSON object of claims",
        "`expire` claim",
    ] {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    assert!(
        log.matches("not a JWT").count() >= 2,
        "not-a-jwt and bad base64: {log}"
    );
    assert_eq!(log.matches("unusable token").count(), 5, "{log}");
    let mut secrets = token_secrets(&s);
    secrets.push("eyJhbGciOiJIUzI1NiJ9.A.c2lnbmF0dXJl".into());
    secrets.push("c2lnbmF0dXJl".into());
    assert_no_secrets(&log, &secrets, "malformed tokens");
    assert!(
        !log.contains("not-a-jwt") && !log.contains("yesterday-ish"),
        "{log}"
    );
}

#[test]
fn an_already_expired_token_from_the_server_is_refused_and_the_old_one_stays() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());

    // In the real `expire` form, and with standard `exp`/`iat` claims.
    s.script([Fault::Expired]);
    let watcher = Watcher::start(t.path("main.token"));
    d.signal(Signal::SIGUSR1);
    let second = wait_new_token(&s, &t, "main.token", &good, &d);
    s.set_claim_style(ClaimStyle::Exp);
    s.script([Fault::Expired]);
    d.signal(Signal::SIGUSR1);
    let third = wait_new_token(&s, &t, "main.token", &second, &d);
    let seen = watcher.finish();

    let issued = s.issued_tokens();
    assert_eq!(issued.len(), 5, "good, expired, good, expired (exp), good");
    let allowed: HashSet<String> = [good, second, third].into();
    assert!(seen.is_subset(&allowed), "the file held an expired token");
    let log = d.log();
    assert_eq!(log.matches("already expired").count(), 2, "{log}");
    assert_no_secrets(&log, &token_secrets(&s), "expired tokens");
}

/// 4 s tokens from a server whose clock is `skew` seconds off: expiry and
/// renewal follow the server's view, shifted into ours.
fn skewed_server(skew: i64) {
    let s = standin(Duration::from_secs(4));
    s.set_default(Some(Fault::ServerDateSkew(skew)));
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &cred(
            "main",
            USER,
            "password",
            "renew-at = 0.8\njitter = 0.0\nretry-min = \"100ms\"\nretry-max = \"500ms\"\n",
            &output("main.json", "json"),
        ),
    );
    let d = t.daemon();
    let text = wait_file(&t.path("main.json"), WAIT, || d.log());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let parse = |k: &str| {
        time::OffsetDateTime::parse(
            v[k].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let lifetime = (parse("expires_at") - parse("obtained_at")).as_seconds_f64();
    eprintln!("skew {skew:+} s: expires_at - obtained_at in the JSON output = {lifetime:.3} s");
    // The Date header has whole seconds, so up to a second more.
    assert!(
        (2.9..=5.2).contains(&lifetime),
        "expires_at is not in our clock: lifetime {lifetime:.3} s"
    );

    wait_for(WAIT, "three logins", || s.logins_ok() >= 3, || d.log());
    let l = logins(&s);
    let g: Vec<f64> = l.windows(2).map(|w| secs(w[0].at, w[1].at)).collect();
    eprintln!("skew {skew:+} s: gaps between renewals of 4 s tokens (s): {g:.3?}");
    for gap in &g[..2] {
        assert!(
            (2.5..=6.0).contains(gap),
            "renewed {gap:.3} s apart; 0.8 of a 4 s lifetime is 3.2 s: {g:?}"
        );
    }
    assert!(l.iter().all(|r| r.status == 200));
    let log = d.log();
    assert_eq!(
        warn_lines(&log, "clock differs"),
        1,
        "warned not exactly once:\n{log}"
    );
    assert!(!log.contains("unusable token"), "{log}");
}

#[test]
fn server_clock_ahead_by_an_hour_uses_the_servers_view_and_warns_once() {
    skewed_server(3600);
}

#[test]
fn server_clock_behind_by_an_hour_uses_the_servers_view_and_warns_once() {
    skewed_server(-3600);
}
