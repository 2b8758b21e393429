//! Issue 9 (hardening) for the schedule: a reused token must belong to the
//! credential (username, server), renewal requests are coalesced, claims
//! that make no sense do not break the schedule, the server's clock skew
//! survives a restart, `Retry-After` never outlives the token, and the log
//! says only what happens. All against the real binary and the stand-in.
//!
//! Loopback only.

use std::time::{Duration, Instant, SystemTime};

use crate::support::*;
use nix::sys::signal::Signal;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn cfg_arg(t: &TestDir) -> String {
    t.config_path().to_str().unwrap().to_string()
}

/// The config: one credential `main` logging in as `username`, a raw and a
/// JSON output, and `extra` keys.
fn write_main(t: &TestDir, base_url: &str, username: &str, extra: &str) {
    let outputs = output("main.token", "raw") + &output("main.json", "json");
    t.write_config(
        base_url,
        &cred(
            "main",
            username,
            "password",
            &format!("{FAST_RETRY}{extra}"),
            &outputs,
        ),
    );
}

/// The `agent.username` claim of a token.
fn user_of(token: &str) -> String {
    claims(token)["agent"]["username"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn once(t: &TestDir) -> String {
    let out = t.run(&["once", "-c", &cfg_arg(t)]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    text
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn json_time(text: &str, key: &str) -> OffsetDateTime {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    OffsetDateTime::parse(v[key].as_str().unwrap(), &Rfc3339).unwrap()
}

// ---------------------------------------------------------------------------
// 5a. A reused token must match the credential.

#[test]
fn a_restart_with_another_username_logs_in_for_it_and_replaces_the_outputs() {
    let s = standin(Duration::from_secs(3600));
    s.set_password(OTHER_USER, PASSWORD);
    let t = TestDir::new();
    write_main(&t, &s.base_url(), USER, "");
    let mut d = t.daemon();
    let first = wait_file(&t.path("main.token"), WAIT, || d.log());
    wait_file(&t.path("main.json"), WAIT, || d.log());
    assert_eq!(user_of(&first), USER);
    stop(&mut d, Signal::SIGTERM);

    write_main(&t, &s.base_url(), OTHER_USER, "");
    let d = t.daemon();
    wait_for(
        WAIT,
        "a login for the new user",
        || s.logins_ok() >= 2,
        || d.log(),
    );
    wait_for(
        WAIT,
        "both outputs replaced",
        || {
            let raw = t.read("main.token").unwrap_or_default();
            let json = t.read("main.json").unwrap_or_default();
            raw != first && token_in(&json).as_deref() == Some(raw.as_str())
        },
        || d.log(),
    );
    let now = t.read("main.token").unwrap();
    assert_eq!(user_of(&now), OTHER_USER);
    assert_eq!(logins(&s).last().unwrap().username.as_deref(), Some(OTHER_USER));
    d.wait_log("it was issued to another username", 1, WAIT);
    assert!(
        !d.log().contains("reusing the token found on disk"),
        "{}",
        d.log()
    );
}

#[test]
fn once_with_another_username_logs_in_for_it() {
    let s = standin(Duration::from_secs(3600));
    s.set_password(OTHER_USER, PASSWORD);
    let t = TestDir::new();
    write_main(&t, &s.base_url(), USER, "");
    once(&t);
    let first = t.read("main.token").unwrap();
    // The same user again: reused, no login.
    once(&t);
    assert_eq!(s.login_requests(), 1);

    write_main(&t, &s.base_url(), OTHER_USER, "");
    let log = once(&t);
    assert_eq!(s.login_requests(), 2, "{log}");
    let now = t.read("main.token").unwrap();
    assert_ne!(now, first);
    assert_eq!(user_of(&now), OTHER_USER);
    assert_eq!(token_in(&t.read("main.json").unwrap()), Some(now));
    assert!(log.contains("token on disk not reused"), "{log}");
    assert_no_secrets(&log, PASSWORD, &s.issued_tokens());
}

#[test]
fn a_token_naming_no_user_is_judged_by_the_json_outputs_username() {
    let s = standin(Duration::from_secs(3600));
    s.set_password(OTHER_USER, PASSWORD);
    // Tokens without an `agent` claim (another token kind).
    s.set_default(Some(Fault::Claims(serde_json::json!({ "agent": null }))));
    let t = TestDir::new();
    write_main(&t, &s.base_url(), USER, "");
    once(&t);
    assert_eq!(
        claims(&t.read("main.token").unwrap())["agent"],
        serde_json::Value::Null
    );
    // Same user: the JSON output agrees, reused.
    once(&t);
    assert_eq!(s.login_requests(), 1);
    // Another user: the JSON output names the old one, not reused.
    write_main(&t, &s.base_url(), OTHER_USER, "");
    let log = once(&t);
    assert_eq!(s.login_requests(), 2, "{log}");
    assert!(log.contains("its file records another username"), "{log}");
}

#[test]
fn a_token_from_another_base_url_is_not_reused() {
    let a = standin(Duration::from_secs(3600));
    let b = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    write_main(&t, &a.base_url(), USER, "");
    once(&t);
    let first = t.read("main.token").unwrap();
    write_main(&t, &b.base_url(), USER, "");
    let log = once(&t);
    assert_eq!(b.login_requests(), 1, "{log}");
    assert!(log.contains("it was obtained from another base-url"), "{log}");
    assert_ne!(t.read("main.token").unwrap(), first);
    assert_eq!(t.read("main.token").as_ref(), b.issued_tokens().last());
}

// ---------------------------------------------------------------------------
// 6. Renew-now requests are coalesced.

#[test]
fn a_sigusr1_storm_costs_one_login_per_credential() {
    let s = standin(Duration::from_secs(3600));
    s.set_password(OTHER_USER, PASSWORD);
    let t = TestDir::new();
    let rest = cred("a", USER, "password", FAST_RETRY, &output("a.token", "raw"))
        + &cred("b", OTHER_USER, "password", FAST_RETRY, &output("b.token", "raw"));
    // max-logins-per-second = 0: nothing else limits the logins.
    t.write_config(&s.base_url(), &rest);
    let d = t.daemon();
    wait_file(&t.path("a.token"), WAIT, || d.log());
    wait_file(&t.path("b.token"), WAIT, || d.log());
    let before = s.login_requests();
    assert_eq!(before, 2);

    // Past the second after the start logins (requests within it wait for
    // its end and share one login).
    std::thread::sleep(Duration::from_millis(1200));
    // Every login now takes 1 s; 200 SIGUSR1 within about a quarter second.
    s.set_default(Some(Fault::Delay(Duration::from_secs(1))));
    let storm = Instant::now();
    for _ in 0..200 {
        d.signal(Signal::SIGUSR1);
        std::thread::sleep(Duration::from_millis(1));
    }
    let storm_took = storm.elapsed();
    // Time for five 1-s logins each, had every request cost one.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(storm_took));
    let per_user = |u: &str| {
        logins(&s)
            .iter()
            .skip(before as usize)
            .filter(|r| r.username.as_deref() == Some(u))
            .count()
    };
    let (a, b) = (per_user(USER), per_user(OTHER_USER));
    eprintln!("200 SIGUSR1 in {storm_took:?}: {a} + {b} logins in 6 s");
    // The one the first request started, and one for all that came during it.
    assert_eq!((a, b), (2, 2), "{}", d.log());
    d.wait_log(
        "renewal requested during a renewal; one more follows for them all",
        2,
        WAIT,
    );
}

// ---------------------------------------------------------------------------
// 7. Claims that make no sense.

/// A daemon against a stand-in serving 3-s tokens with `extra` claims,
/// renewing at 0.8 without jitter. Watches 6 s; returns the login times.
fn renewals_with_claims(extra: serde_json::Value) -> (Vec<LoginRecord>, String) {
    let s = standin(Duration::from_secs(3));
    s.set_default(Some(Fault::Claims(extra)));
    let t = TestDir::new();
    raw_config(
        &s,
        &t,
        "renew-at = 0.8\njitter = 0.0\nretry-min = \"100ms\"\nretry-max = \"500ms\"\n",
    );
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    std::thread::sleep(Duration::from_secs(6));
    (logins(&s), d.log())
}

/// Renewals are neither a loop nor late: 2 to 4 logins in about 6 s, each
/// more than a second and less than the 3-s lifetime after the last.
fn assert_renews_before_expiry(records: &[LoginRecord], log: &str) {
    let g = gaps(records);
    eprintln!("{} logins, gaps {g:.2?}", records.len());
    assert!(
        (2..=4).contains(&records.len()),
        "{} logins\n{log}",
        records.len()
    );
    for gap in g {
        assert!(
            gap > 1.5 && gap < 2.85,
            "renewal {gap:.2} s after the last\n{log}"
        );
    }
}

#[test]
fn iat_ten_years_ago_makes_no_login_loop() {
    let ten_years_ago = unix_now() - 10 * 365 * 86400;
    let (records, log) = renewals_with_claims(serde_json::json!({ "iat": ten_years_ago }));
    assert_renews_before_expiry(&records, &log);
    assert!(
        log.contains("its lifetime is counted from when it was obtained"),
        "{log}"
    );
}

#[test]
fn iat_after_exp_renews_before_the_expiry() {
    let in_an_hour = unix_now() + 3600;
    let (records, log) = renewals_with_claims(serde_json::json!({ "iat": in_an_hour }));
    assert_renews_before_expiry(&records, &log);
}

#[test]
fn an_expiry_in_year_9999_is_taken_as_seven_days() {
    let s = standin(Duration::from_secs(3600));
    s.set_default(Some(Fault::Claims(
        serde_json::json!({ "expire": "9999-12-31T23:59:59.000000Z" }),
    )));
    let t = TestDir::new();
    write_main(&t, &s.base_url(), USER, "");
    let log = once(&t);
    let json = t.read("main.json").unwrap();
    let life = json_time(&json, "expires_at") - json_time(&json, "obtained_at");
    assert!(
        (life - time::Duration::days(7)).abs() <= time::Duration::seconds(1),
        "{life}\n{json}"
    );
    assert!(log.contains("implausibly far ahead"), "{log}");
    // And `once` again reuses it (it is not due).
    once(&t);
    assert_eq!(s.login_requests(), 1);
}

// ---------------------------------------------------------------------------
// 7. The server's clock skew survives a restart.

#[test]
fn a_token_expired_in_the_servers_view_is_not_reused_after_a_restart() {
    // The server's clock is an hour ahead; its tokens live 3 s.
    let s = standin(Duration::from_secs(3));
    s.set_default(Some(Fault::ServerDateSkew(3600)));
    let t = TestDir::new();
    write_main(&t, &s.base_url(), USER, "");
    once(&t);
    // Expired in the server's view (and ours), though its claim is an hour ahead.
    std::thread::sleep(Duration::from_millis(3500));
    let log = once(&t);
    assert_eq!(s.login_requests(), 2, "an expired token was reused\n{log}");
    // The skew is kept under the state dir, with no secret.
    let record = std::fs::read_to_string(t.path("state/tokens/main.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&record).unwrap();
    let skew = v["server_skew_ms"].as_i64().unwrap();
    assert!((3_598_000..=3_602_000).contains(&skew), "{record}");
    assert_eq!(v["username"], USER);
    assert_no_secrets(&record, PASSWORD, &s.issued_tokens());
}

#[test]
fn a_token_fine_in_the_servers_view_is_reused_after_a_restart() {
    // The server's clock is an hour behind; its tokens live 30 minutes, so
    // every expiry it writes is in our past.
    let s = standin(Duration::from_secs(1800));
    s.set_default(Some(Fault::ServerDateSkew(-3600)));
    let t = TestDir::new();
    write_main(&t, &s.base_url(), USER, "");
    once(&t);
    let log = once(&t);
    assert_eq!(s.login_requests(), 1, "a good token was not reused\n{log}");
    assert!(log.contains("reusing the token found on disk"), "{log}");
}

// ---------------------------------------------------------------------------
// 10. Retry-After never outlives the token.

#[test]
fn a_retry_after_longer_than_the_token_is_cut_to_before_its_expiry() {
    let s = standin(Duration::from_secs(6));
    let t = TestDir::new();
    raw_config(
        &s,
        &t,
        "renew-at = 0.5\njitter = 0.0\nretry-min = \"200ms\"\nretry-max = \"500ms\"\n",
    );
    let d = t.daemon();
    let first = wait_file(&t.path("main.token"), WAIT, || d.log());
    let expiry = expire_of(&first);
    // The renewal at 3 s is told to come back in 11 days.
    s.script([Fault::too_many_requests(Some("999999"))]);
    wait_for(
        Duration::from_secs(10),
        "a new token",
        || t.read("main.token").is_some_and(|x| x != first),
        || d.log(),
    );
    let written = OffsetDateTime::now_utc();
    assert!(
        written < expiry,
        "new token at {written}, old one expired {expiry}\n{}",
        d.log()
    );
    assert!(
        d.log().contains("the held token would expire first"),
        "{}",
        d.log()
    );
    assert_eq!(s.login_requests(), 3, "{}", d.log());
}

#[test]
fn a_retry_after_with_no_token_is_capped_like_retry_max() {
    let s = standin(Duration::from_secs(3600));
    s.script([Fault::too_many_requests(Some("999999"))]);
    let t = TestDir::new();
    raw_config(&s, &t, FAST_RETRY);
    let d = t.daemon();
    let started = Instant::now();
    wait_file(&t.path("main.token"), Duration::from_secs(10), || d.log());
    eprintln!("token after {:?}", started.elapsed());
    assert!(
        d.log().contains("no usable token is held; capped like retry-max"),
        "{}",
        d.log()
    );
}

// ---------------------------------------------------------------------------
// 11. Log lines that mislead.

#[test]
fn once_announces_no_retry_and_no_empty_file_list() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    raw_config(&s, &t, FAST_RETRY);
    s.script([Fault::status(500)]);
    let out = t.run(&["once", "-c", &cfg_arg(&t)]);
    let log = both(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("renewal failed"), "{log}");
    assert!(
        !log.contains("retry_in"),
        "`once` announced a retry it does not make\n{log}"
    );
    assert_eq!(s.login_requests(), 1);

    // The login works but the only output cannot be written.
    t.write_config(
        &s.base_url(),
        &cred(
            "main",
            USER,
            "password",
            FAST_RETRY,
            &output("missing/main.token", "raw"),
        ),
    );
    let out = t.run(&["once", "-c", &cfg_arg(&t)]);
    let log = both(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    let renewed: Vec<&str> = log.lines().filter(|l| l.contains("token renewed")).collect();
    assert_eq!(renewed.len(), 1, "{log}");
    assert!(!renewed[0].contains("files="), "{log}");
    assert!(!log.contains("retry_in"), "{log}");
}
