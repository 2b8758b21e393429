//! The local API proxy (`[[proxy]]`) against the stand-in: what a client
//! sends is stripped and the daemon's credential added, refusals (not an
//! open proxy), 401 → one renewal → replay, unix sockets, reloads, status.

mod basics;
mod bodies;
mod renewal;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::support::*;

/// A free loopback port (bound, then released: the daemon binds it next).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A `[[proxy]]` section.
pub fn proxy(listen: &str, credential: &str, extra: &str) -> String {
    format!("[[proxy]]\nlisten = \"{listen}\"\ncredential = \"{credential}\"\n{extra}\n")
}

/// A daemon with one token credential "main" and a proxy for it on a free
/// loopback port, logging at `rust_log`; returned once the proxy holds the
/// token.
pub fn token_proxy(s: &StandIn, t: &TestDir, rust_log: &str) -> (Daemon, SocketAddr) {
    let addr = free_port();
    t.write_config(
        &s.base_url(),
        &format!(
            "{}{}",
            cred("main", USER, "password", FAST_RETRY, &output("main.token", "raw")),
            proxy(&addr.to_string(), "main", "")
        ),
    );
    let d = daemon_with(t, rust_log, &[]);
    wait_listening(addr, &d);
    wait_for(
        Duration::from_secs(10),
        "a token",
        || t.read("main.token").is_some(),
        || d.log(),
    );
    wait_ready(addr, &d);
    (d, addr)
}

/// One HTTP/1.1 exchange over `stream` (a request written as is), the
/// answer's status, head and body (by Content-Length, or to the end).
pub fn exchange(stream: &mut (impl Read + Write), request: &str) -> (u16, String, String) {
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 65536, "an answer head this large");
        if stream.read(&mut byte).unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8_lossy(&body).to_string())
}

/// A GET of `path` over a new TCP connection to `addr`, with `headers`.
pub fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    exchange(
        &mut s,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"),
    )
}

/// Waits until the proxy at `addr` has its credential's secret (no more
/// 503): the outputs are written a moment before the secret reaches it.
pub fn wait_ready(addr: SocketAddr, d: &Daemon) {
    let ready = voipbin_tokend_testkit::poll(Duration::from_secs(15), Duration::from_millis(50), || {
        get(addr, "/v1.0/echo", "").0 != 503
    });
    assert!(ready.is_some(), "the proxy never got its secret\n{}", d.log());
}

/// Waits until the proxy at `addr` accepts connections.
pub fn wait_listening(addr: SocketAddr, d: &Daemon) {
    wait_for(
        Duration::from_secs(10),
        "the proxy to listen",
        || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        || d.log(),
    );
}
