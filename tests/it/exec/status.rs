//! `status` (text and `--json`) and `/metrics` show the child: its pid,
//! start time, restart count; `voipbin_tokend_child_up` and the restarts
//! by reason.

use std::cell::RefCell;

use super::*;

fn status(e: &ExecDir, json: bool) -> std::process::Output {
    let cfg = e.cfg();
    let mut args = vec!["status", "-c", cfg.as_str()];
    if json {
        args.push("--json");
    }
    e.t.run(&args)
}

/// The value of one series (name with labels, exactly as exposed).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The body of `GET /metrics`.
fn metrics(port: u16) -> String {
    let raw = http_get_raw(port, "/metrics");
    raw.split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default()
}

/// Waits until `status --json` shows a child with `pid` and `restarts`;
/// returns its `child` object.
fn wait_child(e: &ExecDir, pid: i32, restarts: u64, d: &Daemon) -> serde_json::Value {
    let last = RefCell::new(serde_json::Value::Null);
    wait_for(
        WAIT,
        &format!("status --json: child pid {pid}, {restarts} restarts"),
        || {
            let out = status(e, true);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let ok = v["child"]["pid"] == pid && v["child"]["restarts"] == restarts;
            *last.borrow_mut() = v;
            ok
        },
        || format!("last: {:#}\n{}", last.borrow(), e.context(d)),
    );
    last.into_inner()["child"].clone()
}

#[test]
fn status_and_metrics_show_the_child_and_its_restarts() {
    let s = standin(LONG);
    let e = ExecDir::new();
    let (port, health) = health();
    e.t.write_config(
        &s.base_url(),
        &format!("{health}{}", token_cred("main", "", &output("main.token", "raw"))),
    );
    let script = e.child(STANDARD);
    let mut d = Daemon::spawn(e.command(&[], &[&script, "--an-argument-kept-private"]));
    let pid = e.wait_starts(1, &d)[0];

    let child = wait_child(&e, pid, 0, &d);
    assert!(
        child["command"].as_str().is_some_and(|c| c.contains("child.sh")),
        "{child:#}"
    );
    let started = rfc3339(child["started_at"].as_str().expect("started_at"));
    let now = time::OffsetDateTime::now_utc();
    assert!(
        started <= now && now - started < time::Duration::minutes(2),
        "{child:#}"
    );
    let out = status(&e, false);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with(&format!("child: pid {pid}"))),
        "status shows the child:\n{text}"
    );
    let json = String::from_utf8_lossy(&status(&e, true).stdout).into_owned();
    for shown in [&text, &json, &e.t.read("state/status.json").unwrap_or_default()] {
        assert!(
            !shown.contains("an-argument-kept-private"),
            "the command's arguments are not shown: {shown}"
        );
    }
    let scrape = RefCell::new(String::new());
    wait_for(
        WAIT,
        "voipbin_tokend_child_up 1",
        || {
            *scrape.borrow_mut() = metrics(port);
            metric(&scrape.borrow(), "voipbin_tokend_child_up") == Some(1.0)
        },
        || format!("{}\n{}", scrape.borrow(), e.context(&d)),
    );

    // A rotation: a new child, one restart, counted by reason.
    d.signal(Signal::SIGUSR1);
    let second = e.wait_starts(2, &d)[1];
    wait_child(&e, second, 1, &d);
    wait_for(
        WAIT,
        "one rotation restart in /metrics",
        || {
            *scrape.borrow_mut() = metrics(port);
            metric(
                &scrape.borrow(),
                "voipbin_tokend_child_restarts_total{reason=\"rotation\"}",
            ) == Some(1.0)
                && metric(&scrape.borrow(), "voipbin_tokend_child_up") == Some(1.0)
        },
        || format!("{}\n{}", scrape.borrow(), e.context(&d)),
    );
    let json = String::from_utf8_lossy(&status(&e, true).stdout).into_owned();
    assert_no_secrets(&json, PASSWORD, &s.issued_tokens());

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}
