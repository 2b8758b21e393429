//! Figures: the measured reload latencies
//! (`cargo test --test it reload::latency::reload_latency_figures -- --nocapture`).

use std::time::{Duration, Instant};

use super::{Chain, WAIT, reloads, replace_config, wait_token};
use crate::support::*;
use nix::sys::signal::Signal;

/// Polls every millisecond (for measurements); the time until `cond` held.
fn time_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn reload_latency_figures() {
    const RUNS: usize = 5;
    let s = standin(LONG);

    // SIGHUP -> a new output's file on disk (the change is hidden from the
    // watcher, so only the signal can have caused it).
    let t = TestDir::new();
    let base = s.base_url();
    let outs = |prefix: &str, n: usize| -> String {
        let mut o = output("a.token", "raw");
        for i in 0..n {
            o += &output(&format!("{prefix}{i}.token"), "raw");
        }
        o
    };
    let mut chain = Chain::new(&t, &config_text(&base, &credential("main", &outs("hup", 0))));
    let d = t.daemon();
    let tok = wait_token(&t, "a.token", &d);
    let mut hup = Vec::new();
    for i in 0..RUNS {
        chain.switch(&config_text(&base, &credential("main", &outs("hup", i + 1))));
        let path = t.path(&format!("hup{i}.token"));
        let sent = Instant::now();
        d.signal(Signal::SIGHUP);
        time_until(
            WAIT,
            "the new output",
            || std::fs::read_to_string(&path).is_ok_and(|x| x == tok),
            || d.log(),
        );
        hup.push(sent.elapsed());
    }
    drop(d);

    // Edit by rename -> "config reloaded" in the log -> the new output's file.
    let t = TestDir::new();
    t.write_config(&base, &credential("main", &outs("edit", 0)));
    let d = t.daemon();
    let tok2 = wait_token(&t, "a.token", &d);
    let (mut to_log, mut to_file) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let path = t.path(&format!("edit{i}.token"));
        let text = config_text(&base, &credential("main", &outs("edit", i + 1)));
        let edited = Instant::now();
        replace_config(&t, &text);
        to_log.push(time_until(
            WAIT,
            "config reloaded",
            || reloads(&d) > i,
            || d.log(),
        ));
        time_until(
            WAIT,
            "the new output",
            || std::fs::read_to_string(&path).is_ok_and(|x| x == tok2),
            || d.log(),
        );
        to_file.push(edited.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    let logins = s.login_requests();

    eprintln!("reload latency over {RUNS} runs (median; samples):");
    eprintln!(
        "  SIGHUP -> new output on disk:             {:?}; {hup:?}",
        median(hup.clone())
    );
    eprintln!(
        "  edit (rename) -> \"config reloaded\" log:   {:?}; {to_log:?}",
        median(to_log.clone())
    );
    eprintln!(
        "  edit (rename) -> new output on disk:      {:?}; {to_file:?}",
        median(to_file.clone())
    );
    assert_eq!(logins, 2, "one login per daemon, none per reload");
    assert!(median(hup) < Duration::from_secs(2));
    assert!(median(to_file) < Duration::from_secs(3));
}
