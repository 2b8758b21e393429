//! `/healthz`, `/readyz` and `/metrics`.

use std::net::TcpListener;
use std::time::Duration;

use super::{
    WAIT, both, expiry_of, free_port, get, health_section, http_get, metric, wait_metric, wait_renewed,
};
use crate::support::*;
use nix::sys::signal::Signal;

/// Waits until `GET path` answers `code`; returns the body.
fn wait_http(port: u16, path: &str, code: u16, d: &Daemon) -> String {
    let last = std::cell::RefCell::new((0, String::new()));
    wait_for(
        WAIT,
        &format!("GET {path} -> {code}"),
        || {
            *last.borrow_mut() = http_get(port, path).unwrap_or_default();
            last.borrow().0 == code
        },
        || {
            format!(
                "last answer: {:?}\n--- daemon log ---\n{}",
                last.borrow(),
                d.log()
            )
        },
    );
    last.into_inner().1
}

#[test]
fn health_endpoints_readiness_and_metrics() {
    let s = standin(LONG);
    s.script([Fault::Delay(Duration::from_secs(2))]);
    let t = TestDir::new();
    let port = free_port();
    let good = health_section(port) + &credential("main", &output("main.token", "raw"));
    t.write_config(&s.base_url(), &good);
    let d = t.daemon();
    let mut bodies: Vec<String> = Vec::new();

    // Not ready while the first login is still under way.
    let mut first = None;
    wait_for(
        WAIT,
        "the health server to answer",
        || {
            first = http_get(port, "/readyz");
            first.is_some()
        },
        || d.log(),
    );
    let (code, body) = first.unwrap();
    assert!(
        t.read("main.token").is_none(),
        "the slow first login finished before the health server answered\n{}",
        d.log()
    );
    assert_eq!(code, 503, "/readyz before the first token: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/readyz body is JSON");
    assert_eq!(v["credentials"][0]["name"], "main", "{body}");
    assert_eq!(v["credentials"][0]["state"], "pending", "{body}");
    bodies.push(body);
    let (code, body) = get(port, "/healthz", &d);
    assert_eq!(code, 200, "/healthz while starting: {body}");
    bodies.push(body);

    // Ready once the token is on disk.
    let body = wait_http(port, "/readyz", 200, &d);
    let token_text = t.read("main.token").expect("/readyz 200 without the file");
    assert!(token_in(&token_text).is_some());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["credentials"][0]["state"], "fresh", "{}", body);
    bodies.push(body);

    let (code, body) = get(port, "/healthz", &d);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/healthz body is JSON");
    assert_eq!(v["credentials"][0]["name"], "main", "{body}");
    assert_eq!(v["credentials"][0]["state"], "fresh", "{body}");
    assert!(v["credentials"][0]["expires_at"].is_string(), "{body}");
    bodies.push(body);
    let (code, body) = get(port, "/nope", &d);
    assert_eq!(code, 404, "{body}");

    // Metrics after one (2 s) login.
    let (code, m) = get(port, "/metrics", &d);
    assert_eq!(code, 200);
    let expiry = metric(
        &m,
        "voipbin_tokend_token_expiry_timestamp_seconds{credential=\"main\"}",
    )
    .unwrap_or_else(|| panic!("no expiry gauge in\n{m}"));
    let want = expiry_of(&token_text).unix_timestamp() as f64;
    assert!(
        (expiry - want).abs() < 1.5,
        "expiry gauge {expiry}, token expires {want}"
    );
    assert_eq!(
        metric(
            &m,
            "voipbin_tokend_renewals_total{credential=\"main\",result=\"success\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        m.contains("voipbin_tokend_login_duration_seconds_count{credential=\"main\"} 1"),
        "{m}"
    );
    let last_renewal = metric(
        &m,
        "voipbin_tokend_last_renewal_timestamp_seconds{credential=\"main\"}",
    )
    .unwrap_or_else(|| panic!("no last renewal gauge in\n{m}"));
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(
        (now - 60.0..=now + 1.0).contains(&last_renewal),
        "last renewal {last_renewal}, now {now}"
    );
    bodies.push(m);

    // A broken config on SIGHUP: counted as a failed reload, still ready.
    std::fs::write(t.config_path(), "[api\nthis is not TOML").unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_log("config reload failed", 1, WAIT);
    let m = wait_metric(
        port,
        "voipbin_tokend_config_reloads_total{result=\"failure\"}",
        1.0,
        &d,
    );
    assert!(
        metric(&m, "voipbin_tokend_config_reloads_total{result=\"success\"}").is_none_or(|v| v == 0.0),
        "{m}"
    );
    bodies.push(m);
    assert_eq!(
        get(port, "/readyz", &d).0,
        200,
        "a failed reload made the daemon unready"
    );

    // A new output in a directory that does not exist: its write fails and
    // is counted, and the credential is no longer all on disk.
    let reloads = d.log().matches("config reloaded").count();
    let broken = health_section(port)
        + &credential(
            "main",
            &(output("main.token", "raw") + &output("missing/dir/extra.token", "raw")),
        );
    t.write_config(&s.base_url(), &broken);
    d.signal(Signal::SIGHUP);
    d.wait_log("config reloaded", reloads + 1, WAIT);
    let m = wait_metric(
        port,
        "voipbin_tokend_output_write_failures_total{credential=\"main\"}",
        1.0,
        &d,
    );
    assert!(
        metric(&m, "voipbin_tokend_config_reloads_total{result=\"success\"}").is_some_and(|v| v >= 1.0),
        "{m}"
    );
    let body = wait_http(port, "/readyz", 503, &d);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["credentials"][0]["state"], "unwritten", "{}", body);
    bodies.push(body);
    assert_eq!(s.logins_ok(), 1, "a reload logged in");
    eprintln!("/metrics scrape:\n{m}");
    bodies.push(m);
    bodies.push(get(port, "/healthz", &d).1);

    for tok in s.issued_tokens() {
        let signature = tok.rsplit('.').next().unwrap().to_string();
        for b in &bodies {
            assert!(!b.contains(&tok), "a health body holds the token:\n{b}");
            assert!(
                !b.contains(&signature),
                "a health body holds the token's signature:\n{b}"
            );
        }
    }
}

#[test]
fn metrics_time_every_login_whatever_its_outcome() {
    let s = standin(LONG);
    // A slow success, then a failure.
    s.script([Fault::Delay(Duration::from_secs(2))]);
    let t = TestDir::new();
    let port = free_port();
    t.write_config(
        &s.base_url(),
        &(health_section(port) + &credential("main", &output("main.token", "raw"))),
    );
    let d = t.daemon();
    wait_renewed(&s, &t, "main.token", 1, &d);
    s.script([Fault::status(500)]);
    d.signal(Signal::SIGUSR1);
    let m = wait_metric(
        port,
        "voipbin_tokend_renewals_total{credential=\"main\",result=\"failure\"}",
        1.0,
        &d,
    );
    let m = if metric(
        &m,
        "voipbin_tokend_login_duration_seconds_count{credential=\"main\"}",
    ) == Some(2.0)
    {
        m
    } else {
        wait_metric(
            port,
            "voipbin_tokend_login_duration_seconds_count{credential=\"main\"}",
            2.0,
            &d,
        )
    };
    let took = metric(
        &m,
        "voipbin_tokend_login_duration_seconds_sum{credential=\"main\"}",
    )
    .unwrap();
    assert!(
        took >= 1.9,
        "the first login took 2 s, the histogram says {took} s in all\n{m}"
    );
    assert!(took < 10.0, "{m}");
    assert!(
        m.contains("voipbin_tokend_login_duration_seconds_bucket{le=\"2.5\",credential=\"main\"}")
            || m.contains("voipbin_tokend_login_duration_seconds_bucket{credential=\"main\",le=\"2.5\"}"),
        "no histogram buckets:\n{m}"
    );
}

#[test]
fn readyz_stays_ready_while_retrying_and_turns_503_when_the_token_expires() {
    let s = standin(Duration::from_secs(6));
    let t = TestDir::new();
    let port = free_port();
    // Renewal due at half of the 6 s lifetime, and a failed one retried
    // only after a minute: the credential fails once, at 3 s, and then
    // publishes nothing more, so /readyz must notice the expiry at 6 s by
    // itself.
    let cred = format!(
        "[[credential]]\nname = \"main\"\nusername = \"{USER}\"\npassword-file = \"password\"\n\
         renew-at = 0.5\njitter = 0.0\nretry-min = \"60s\"\nretry-max = \"60s\"\n\n{}",
        output("main.token", "raw")
    );
    t.write_config(&s.base_url(), &(health_section(port) + &cred));
    let d = t.daemon();
    let text = wait_file(&t.path("main.token"), WAIT, || d.log());
    s.set_default(Some(Fault::status(500)));
    let expires = expiry_of(&text);
    let expires_unix = expires.unix_timestamp_nanos() as f64 / 1e9;
    wait_http(port, "/readyz", 200, &d);

    // Renewals fail; the token still holds: ready ("retrying") until it expires.
    let m = wait_metric(
        port,
        "voipbin_tokend_renewals_total{credential=\"main\",result=\"failure\"}",
        1.0,
        &d,
    );
    // The token held may be the first or a renewal that came before the 500s.
    let token_now = t.read("main.token").unwrap();
    let expires = expiry_of(&token_now).max(expires);
    let (code, body) = get(port, "/readyz", &d);
    if time::OffsetDateTime::now_utc() < expires - time::Duration::milliseconds(500) {
        assert_eq!(code, 200, "unready while the token is still valid: {body}\n{m}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["credentials"][0]["state"], "retrying", "{body}");
    }

    // Expired and not renewed: 503.
    let body = wait_http(port, "/readyz", 503, &d);
    assert!(
        time::OffsetDateTime::now_utc() >= expires,
        "503 before the token expired at {expires} (first expiry {expires_unix})"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "not ready");
    assert_eq!(v["credentials"][0]["state"], "expired", "{}", body);
    assert!(
        v["credentials"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{}",
        body
    );
    // Still alive, though.
    assert_eq!(get(port, "/healthz", &d).0, 200);
}

#[test]
fn health_listen_address_in_use_is_a_config_error() {
    let s = standin(LONG);
    let t = TestDir::new();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    t.write_config(
        &s.base_url(),
        &(health_section(addr.port()) + &credential("main", &output("main.token", "raw"))),
    );
    let out = t.run(&["run", "-c", t.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&addr.to_string()), "{}", both(&out));
    assert!(stderr.contains("health.listen"), "{}", both(&out));
    assert_eq!(s.login_requests(), 0, "logged in despite a config error");
    assert!(t.read("main.token").is_none());
    drop(held);
}
