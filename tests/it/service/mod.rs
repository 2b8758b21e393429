//! Running as a service: systemd notifications (`NOTIFY_SOCKET`, path and
//! abstract, with the watchdog), `/healthz` `/readyz` `/metrics`, on-change
//! hooks (commands and signals), the `status` command and the CLI's help,
//! completions and man page, all against the real binary and the stand-in.
//!
//! `cargo test --test it service:: -- --nocapture` prints a STATUS= line
//! (`service::notify`) and a `/metrics` scrape (`service::health`) as received.

mod cli;
mod health;
mod hooks;
mod notify;
mod status;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;

/// Generous bound on every wait: the machine may be slow and busy.
const WAIT: Duration = Duration::from_secs(20);

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn health_section(port: u16) -> String {
    format!("[health]\nlisten = \"127.0.0.1:{port}\"\n\n")
}

/// A plain HTTP/1.0 GET on loopback: `(status, body)`, or `None` if nothing answered.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Like [`http_get`], but the server must answer.
fn get(port: u16, path: &str, d: &Daemon) -> (u16, String) {
    http_get(port, path).unwrap_or_else(|| panic!("no answer to GET {path}\n{}", d.log()))
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

/// Waits until `/metrics` has `series` at `min` or more; returns the scrape.
fn wait_metric(port: u16, series: &str, min: f64, d: &Daemon) -> String {
    let text = std::cell::RefCell::new(String::new());
    wait_for(
        WAIT,
        &format!("{series} >= {min}"),
        || {
            *text.borrow_mut() = http_get(port, "/metrics").map(|x| x.1).unwrap_or_default();
            metric(&text.borrow(), series).is_some_and(|v| v >= min)
        },
        || format!("last scrape:\n{}\n--- daemon log ---\n{}", text.borrow(), d.log()),
    );
    text.into_inner()
}

/// The expiry (Unix seconds) of the token in `text`.
fn expiry_of(text: &str) -> time::OffsetDateTime {
    voipbin_tokend::token::find_in(text)
        .and_then(|(_, c)| c.expires_at)
        .expect("a token with an expiry")
}

/// Waits until the current output holds the stand-in's latest token and
/// `logins` logins have succeeded.
fn wait_renewed(s: &StandIn, t: &TestDir, name: &str, logins: u64, d: &Daemon) -> String {
    wait_for(
        WAIT,
        &format!("login #{logins} and its token in {name}"),
        || {
            s.logins_ok() >= logins
                && t.read(name)
                    .is_some_and(|x| token_in(&x) == s.issued_tokens().last().cloned())
        },
        || d.log(),
    );
    token_in(&t.read(name).unwrap()).unwrap()
}

fn stop(d: &mut Daemon) {
    d.signal(Signal::SIGTERM);
    let (status, took) = d.wait_exit(WAIT);
    assert!(status.success(), "exit {status:?}\n{}", d.log());
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} to stop\n{}",
        d.log()
    );
}

fn both(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
