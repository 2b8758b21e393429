//! The `status` command.

use super::{WAIT, both, expiry_of, stop};
use crate::support::*;

fn status(t: &TestDir, json: bool) -> std::process::Output {
    let cfg = t.config_path();
    let mut args = vec!["status", "-c", cfg.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    t.run(&args)
}

/// Waits until the daemon's status file contains `needle`.
fn wait_status_file(t: &TestDir, needle: &str, d: &Daemon) {
    wait_for(
        WAIT,
        &format!("{needle:?} in state/status.json"),
        || t.read("state/status.json").is_some_and(|x| x.contains(needle)),
        || format!("{:?}\n{}", t.read("state/status.json"), d.log()),
    );
}

#[test]
fn status_command_reports_a_running_daemon_and_one_that_stopped() {
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));

    // Never ran: no status file.
    let out = status(&t, false);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the daemon running"),
        "{}",
        both(&out)
    );

    let mut d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    wait_status_file(&t, "\"fresh\": true", &d);

    let out = status(&t, false);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains(&format!("running (pid {})", d.pid())), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("main "))
        .unwrap_or_else(|| panic!("no row for main:\n{table}"));
    assert!(row.split_whitespace().nth(1) == Some("fresh"), "{table}");

    let out = status(&t, true);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(v["daemon_running"], true, "{v:#}");
    assert_eq!(v["healthy"], true, "{v:#}");
    let c = &v["credentials"][0];
    assert_eq!(c["name"], "main", "{v:#}");
    assert_eq!(c["state"], "fresh", "{v:#}");
    assert_eq!(c["failures"], 0, "{v:#}");
    let expires = c["expires_at"].as_str().expect("expires_at");
    let next = c["next_renewal"].as_str().expect("next_renewal");
    let parse =
        |x: &str| time::OffsetDateTime::parse(x, &time::format_description::well_known::Rfc3339).unwrap();
    let token_expiry = expiry_of(&t.read("main.token").unwrap());
    assert!(
        (parse(expires) - token_expiry).abs() < time::Duration::seconds(2),
        "{v:#}"
    );
    assert!(parse(next) < parse(expires), "{v:#}");
    assert!(parse(next) > time::OffsetDateTime::now_utc(), "{v:#}");
    for tok in s.issued_tokens() {
        assert!(!String::from_utf8_lossy(&out.stdout).contains(&tok));
        assert!(!table.contains(&tok));
    }

    stop(&mut d);
    let out = status(&t, false);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NOT RUNNING"),
        "{}",
        both(&out)
    );
    let out = status(&t, true);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["daemon_running"], false, "{v:#}");
    assert_eq!(v["healthy"], false, "{v:#}");
}

#[test]
fn status_command_fails_and_shows_the_error_of_a_rejected_credential() {
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_password("wrong-password");
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    d.wait_log("credentials rejected", 1, WAIT);
    wait_status_file(&t, "credentials rejected", &d);

    let out = status(&t, false);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("running (pid"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("main "))
        .unwrap_or_else(|| panic!("no row for main:\n{table}"));
    assert!(row.contains("failing"), "{table}");
    assert!(row.contains("credentials rejected"), "{table}");

    let out = status(&t, true);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["daemon_running"], true, "{v:#}");
    assert_eq!(v["healthy"], false, "{v:#}");
    let c = &v["credentials"][0];
    assert!(c["failures"].as_u64().is_some_and(|n| n >= 1), "{v:#}");
    assert!(
        c["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("credentials rejected")),
        "{v:#}"
    );
    assert!(c["expires_at"].is_null(), "{v:#}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("wrong-password"));
}
