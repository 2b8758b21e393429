//! Bodies through the proxy against the stand-in's echo (what arrived) and
//! bytes (n bytes, streamed) endpoints: every method intact, chunked
//! uploads, a body over the replay limit, bounded memory both ways,
//! redirects passed back, a real client's request shape.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::*;
use crate::support::*;

fn sha(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends `method path` with `body` (chunked in `chunk`-byte pieces if
/// `chunk` is set, else with a Content-Length); the answer as
/// (status, head, body).
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
    chunk: Option<usize>,
) -> (u16, String, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let framing = match chunk {
        Some(_) => "Transfer-Encoding: chunked\r\n".to_string(),
        None => format!("Content-Length: {}\r\n", body.len()),
    };
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}{framing}Connection: close\r\n\r\n");
    c.write_all(head.as_bytes()).unwrap();
    match chunk {
        Some(n) => {
            for piece in body.chunks(n) {
                c.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).unwrap();
                c.write_all(piece).unwrap();
                c.write_all(b"\r\n").unwrap();
            }
            c.write_all(b"0\r\n\r\n").unwrap();
        }
        None => c.write_all(body).unwrap(),
    }
    exchange(&mut c, "")
}

fn echo_of(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an echo ({e}): {body}"))
}

fn header_values(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .map(|h| h[1].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn every_method_arrives_with_its_body_intact_and_only_the_daemons_credential() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (d, addr) = token_proxy(&s, &t, "info");
    let token = t.read("main.token").unwrap().trim().to_string();
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    for method in ["POST", "PUT", "PATCH", "DELETE", "GET", "OPTIONS"] {
        let (status, _, answer) = send(
            addr,
            method,
            "/v1.0/echo/calls?page_size=3&token=client&accesskey=vb_client",
            "Authorization: Bearer client\r\nCookie: lang=en; token=client\r\nX-Custom: kept\r\n",
            &body,
            None,
        );
        assert_eq!(status, 200, "{method}: {answer}\n{}", d.log());
        let echo = echo_of(&answer);
        assert_eq!(echo["method"], method);
        assert_eq!(echo["path"], "/v1.0/echo/calls");
        assert_eq!(echo["query"], "page_size=3");
        assert_eq!(echo["body_length"], body.len());
        assert_eq!(echo["body_sha256"], sha(&body));
        assert_eq!(echo["auth"], "Bearer");
        assert_eq!(header_values(&echo, "authorization"), [format!("Bearer {token}")]);
        assert_eq!(header_values(&echo, "cookie"), ["lang=en"]);
        assert_eq!(header_values(&echo, "x-custom"), ["kept"]);
        assert_eq!(
            header_values(&echo, "host"),
            [s.base_url().trim_start_matches("http://").to_string()]
        );
    }
}

#[test]
fn chunked_uploads_small_and_over_the_replay_limit_arrive_intact() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (d, addr) = token_proxy(&s, &t, "info");
    for size in [64 * 1024, 3 * 1024 * 1024 + 17] {
        let body: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let (status, _, answer) = send(addr, "POST", "/v1.0/echo/upload", "", &body, Some(16 * 1024));
        assert_eq!(status, 200, "{answer}\n{}", d.log());
        let echo = echo_of(&answer);
        assert_eq!(echo["body_length"], size);
        assert_eq!(echo["body_sha256"], sha(&body));
    }
}

#[test]
fn a_revoked_token_is_renewed_once_and_requests_replayed_but_not_one_over_the_replay_limit() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (d, addr) = token_proxy(&s, &t, "info");
    assert_eq!(send(addr, "GET", "/v1.0/echo", "", b"", None).0, 200);
    let logins = s.logins_ok();
    s.revoke_tokens();
    let small = vec![7u8; 1000];
    let answers: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| send(addr, "POST", "/v1.0/echo", "", &small, None).0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers, [200; 4], "{}", d.log());
    assert_eq!(
        s.logins_ok(),
        logins + 1,
        "one login for every request that saw the 401"
    );
    // Over 1 MiB: not kept, so its 401 goes back; the renewal still happens.
    s.revoke_tokens();
    let big = vec![9u8; 2 * 1024 * 1024];
    let (status, _, _) = send(addr, "POST", "/v1.0/echo", "", &big, None);
    assert_eq!(status, 401, "{}", d.log());
    let ok = voipbin_tokend_testkit::poll(Duration::from_secs(15), Duration::from_millis(200), || {
        send(addr, "POST", "/v1.0/echo", "", &big, None).0 == 200
    });
    assert!(
        ok.is_some(),
        "the next request has the renewed token\n{}",
        d.log()
    );
}

/// The daemon's peak resident memory so far (VmHWM), in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn large_downloads_and_uploads_stream_in_bounded_memory() {
    const SIZE: usize = 128 * 1024 * 1024;
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (d, addr) = token_proxy(&s, &t, "info");
    let before = peak_rss_kib(d.pid());
    // Download: read and count, never keep.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.write_all(
        format!("GET /v1.0/bytes/{SIZE} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = c.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(got > SIZE, "head and {SIZE} bytes, got {got}");
    // Upload, chunked, of the same size.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.write_all(
        format!("POST /v1.0/echo HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let piece = vec![1u8; 256 * 1024];
    for _ in 0..SIZE / piece.len() {
        c.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).unwrap();
        c.write_all(&piece).unwrap();
        c.write_all(b"\r\n").unwrap();
    }
    c.write_all(b"0\r\n\r\n").unwrap();
    let (status, _, answer) = exchange(&mut c, "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(echo_of(&answer)["body_length"], SIZE);
    let after = peak_rss_kib(d.pid());
    assert!(
        after < before + 32 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB moving 2 x 128 MiB"
    );
}

#[test]
fn a_redirect_is_passed_back_not_followed() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (_d, addr) = token_proxy(&s, &t, "info");
    let (status, head, _) = send(addr, "GET", "/v1.0/echo?status=302", "", b"", None);
    assert_eq!(status, 302, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: /v1.0/echo/redirected"),
        "{head}"
    );
}

#[test]
fn a_key_clients_request_shape_with_the_key_in_the_url_reaches_the_api_without_it() {
    // How voipbin-go / voipbin-mcp / vn call the API: the key in the query.
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let addr = free_port();
    t.write_config(
        &s.base_url(),
        &format!(
            "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nusername = \"{USER}\"\npassword-file = \"password\"\n\
             lifetime = \"1d\"\n{}",
            proxy(&addr.to_string(), "mcp", "")
        ),
    );
    let d = daemon_with(&t, "info", &[]);
    wait_listening(addr, &d);
    let ok = voipbin_tokend_testkit::poll(Duration::from_secs(10), Duration::from_millis(100), || {
        send(addr, "GET", "/v1.0/echo", "", b"", None).0 == 200
    });
    assert!(ok.is_some(), "{}", d.log());
    let (status, _, answer) = send(
        addr,
        "POST",
        "/v1.0/echo/calls?accesskey=vb_placeholderplaceholderplacehold",
        "Content-Type: application/json\r\nUser-Agent: voipbin-go/1.0\r\nAccept: application/json\r\n",
        br#"{"source":{"type":"tel","target":"+15551234567"}}"#,
        None,
    );
    assert_eq!(status, 200, "{answer}\n{}", d.log());
    let echo = echo_of(&answer);
    assert_eq!(echo["auth"], "KeyCookie");
    assert_eq!(echo["query"], serde_json::Value::Null);
    assert_eq!(header_values(&echo, "user-agent"), ["voipbin-go/1.0"]);
    let cookie = header_values(&echo, "cookie");
    assert!(
        cookie.len() == 1 && cookie[0].starts_with("accesskey=vb_"),
        "{cookie:?}"
    );
    assert!(!cookie[0].contains("placeholder"));
    assert_no_keys(&d.log(), &s);
}

#[test]
fn an_upload_longer_than_the_timeout_is_not_cut_while_it_moves() {
    // [api] timeout = 1s bounds each wait for the API, not a transfer.
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let addr = free_port();
    std::fs::write(
        t.config_path(),
        config_api(
            &s.base_url(),
            "1s",
            0,
            &format!(
                "{}{}",
                cred("main", USER, "password", "", &output("main.token", "raw")),
                proxy(&addr.to_string(), "main", "")
            ),
        ),
    )
    .unwrap();
    let d = daemon_with(&t, "info", &[]);
    wait_listening(addr, &d);
    wait_ready(addr, &d);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(
        format!("POST /v1.0/echo HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    // 2.5 MiB over 4 s: past the 1 MiB kept for a replay it streams to
    // the API for 2.4 s, well past the 1 s timeout.
    let piece = vec![3u8; 64 * 1024];
    for _ in 0..40 {
        c.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).unwrap();
        c.write_all(&piece).unwrap();
        c.write_all(b"\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    c.write_all(b"0\r\n\r\n").unwrap();
    let (status, _, answer) = exchange(&mut c, "");
    assert_eq!(status, 200, "{answer}\n{}", d.log());
    assert_eq!(echo_of(&answer)["body_length"], 40 * 64 * 1024);
}
