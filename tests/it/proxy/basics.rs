//! Stripping and adding credentials, refusals, 503 before the first
//! secret, unix sockets, reloads and status.

use std::time::Duration;

use super::*;
use crate::support::*;

#[test]
fn a_request_reaches_the_api_with_the_daemons_token_and_never_the_clients() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (d, addr) = token_proxy(&s, &t, "info,voipbin_tokend=debug");
    // The client's own (bad) credentials in every place the API reads one:
    // the API would answer 401 if any of them reached it.
    let (status, _, body) = get(
        addr,
        "/v1.0/accesskeys?token=bogus&accesskey=vb_bogus&page_size=1",
        "Authorization: Bearer bogus\r\nCookie: token=bogus; accesskey=vb_bogus\r\n",
    );
    assert_eq!(status, 200, "{body}\n{}", d.log());
    // A debug line per request, and no secret in the log at that level.
    d.wait_log("proxied", 1, Duration::from_secs(5));
    let tokens = s.issued_tokens();
    assert_no_secrets(&d.log(), PASSWORD, &tokens);
    assert!(
        !d.log().contains("page_size"),
        "no query string in the log\n{}",
        d.log()
    );
}

#[test]
fn before_the_first_secret_the_proxy_answers_503_with_retry_after() {
    let s = standin(Duration::from_secs(3600));
    s.set_default(Some(Fault::Status {
        status: 503,
        body: String::new(),
        headers: vec![],
    }));
    let t = TestDir::new();
    let addr = free_port();
    t.write_config(
        &s.base_url(),
        &format!(
            "{}{}",
            cred("main", USER, "password", FAST_RETRY, &output("main.token", "raw")),
            proxy(&addr.to_string(), "main", "")
        ),
    );
    let d = daemon_with(&t, "info", &[]);
    wait_listening(addr, &d);
    let (status, head, _) = get(addr, "/v1.0/accesskeys", "");
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    s.set_default(None);
    wait_for(
        Duration::from_secs(15),
        "a token",
        || t.read("main.token").is_some(),
        || d.log(),
    );
    let ok = voipbin_tokend_testkit::poll(Duration::from_secs(10), Duration::from_millis(100), || {
        get(addr, "/v1.0/accesskeys", "").0 == 200
    });
    assert!(ok.is_some(), "200 once the credential holds a token\n{}", d.log());
}

#[test]
fn connect_and_absolute_form_targets_naming_another_host_are_refused() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (_d, addr) = token_proxy(&s, &t, "info");
    let before = s.requests().len();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let (status, _, _) = exchange(
        &mut c,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    assert_eq!(status, 405);
    let (status, _, _) = get(addr, "http://example.com/v1.0/accesskeys", "");
    assert_eq!(status, 400);
    // The API's host on another port is another service, not the API.
    let api: std::net::SocketAddr = s.base_url().trim_start_matches("http://").parse().unwrap();
    let neighbour = format!("http://{}:{}/v1.0/accesskeys", api.ip(), api.port() ^ 1);
    let (status, _, _) = get(addr, &neighbour, "");
    assert_eq!(status, 400, "{neighbour}");
    assert_eq!(s.requests().len(), before, "nothing reached the API");
    let (status, _, _) = get(addr, &format!("{}/v1.0/accesskeys", s.base_url()), "");
    assert_eq!(status, 200, "the API's own absolute form is served");
}

#[test]
fn over_a_unix_socket_with_mode_0660_by_default() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let sock = t.path("api.sock");
    t.write_config(
        &s.base_url(),
        &format!(
            "{}{}",
            cred("main", USER, "password", "", &output("main.token", "raw")),
            proxy(&format!("unix:{}", sock.display()), "main", "")
        ),
    );
    let d = daemon_with(&t, "info", &[]);
    wait_for(
        Duration::from_secs(10),
        "the socket",
        || sock.exists(),
        || d.log(),
    );
    wait_file(&t.path("main.token"), WAIT, || d.log());
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (status, _, _) = exchange(
        &mut c,
        "GET /v1.0/accesskeys HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{}", d.log());
}

#[test]
fn a_reload_keeps_an_unchanged_listener_and_its_keep_alive_connection() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let addr = free_port();
    let config = |extra_output: &str| {
        format!(
            "{}{}",
            cred(
                "main",
                USER,
                "password",
                "",
                &format!("{}{extra_output}", output("main.token", "raw"))
            ),
            proxy(&addr.to_string(), "main", "")
        )
    };
    t.write_config(&s.base_url(), &config(""));
    let mut d = daemon_with(&t, "info", &[]);
    wait_listening(addr, &d);
    wait_file(&t.path("main.token"), WAIT, || d.log());
    wait_ready(addr, &d);
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("GET /v1.0/accesskeys HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert_eq!(exchange(&mut c, &request).0, 200);
    // A reload that changes another part of the config.
    t.write_config(&s.base_url(), &config(&output("second.token", "raw")));
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(
        Duration::from_secs(10),
        "the new output",
        || t.read("second.token").is_some(),
        || d.log(),
    );
    assert_eq!(
        exchange(&mut c, &request).0,
        200,
        "the same connection still served\n{}",
        d.log()
    );
    assert!(!d.log().contains("proxy stopped accepting"), "{}", d.log());
    stop(&mut d, nix::sys::signal::Signal::SIGTERM);
}

/// A token credential "main" with a proxy and a `[health]` port (for
/// `/metrics`), both on free loopback ports; returned once the proxy
/// serves: the daemon, the proxy's address and the health port's.
fn token_proxy_with_health(s: &StandIn, t: &TestDir) -> (Daemon, SocketAddr, SocketAddr) {
    let addr = free_port();
    let health = free_port();
    t.write_config(
        &s.base_url(),
        &format!(
            "[health]\nlisten = \"{health}\"\n\n{}{}",
            cred("main", USER, "password", "", &output("main.token", "raw")),
            proxy(&addr.to_string(), "main", "")
        ),
    );
    let d = daemon_with(t, "info", &[]);
    wait_listening(addr, &d);
    wait_file(&t.path("main.token"), WAIT, || d.log());
    wait_ready(addr, &d);
    (d, addr, health)
}

#[test]
fn status_shows_each_proxy_and_metrics_count_its_requests() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (_d, addr, health) = token_proxy_with_health(&s, &t);
    let served = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("voipbin_tokend_proxy_requests_total{credential=\"main\",code=\"200\"} ")
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = served(&get(health, "/metrics", "").2);
    for _ in 0..3 {
        assert_eq!(get(addr, "/v1.0/accesskeys", "").0, 200);
    }
    let (_, _, metrics) = get(health, "/metrics", "");
    assert_eq!(served(&metrics), before + 3, "{metrics}");
    assert!(
        metrics.contains("voipbin_tokend_proxy_request_duration_seconds"),
        "{metrics}"
    );
    let out = t.run(&["status", "--json", "-c", t.config_path().to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["proxies"][0]["listen"], addr.to_string(), "{v:#}");
    assert_eq!(v["proxies"][0]["credential"], "main");
}

#[test]
fn three_hundred_client_connections_are_served_at_once() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (d, addr) = token_proxy(&s, &t, "info");
    // Each connection stays open (keep-alive) while the next is made.
    let mut open = Vec::new();
    for i in 0..300 {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (status, _, _) = exchange(
            &mut c,
            &format!("GET /v1.0/accesskeys HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        );
        assert_eq!(status, 200, "connection {i}\n{}", d.log());
        open.push(c);
    }
    // And every one of them is still served.
    for c in open.iter_mut().step_by(50) {
        let (status, _, _) = exchange(
            c,
            &format!("GET /v1.0/accesskeys HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        );
        assert_eq!(status, 200);
    }
    assert!(!d.log().contains("too many open"), "{}", d.log());
}

/// The count in `voipbin_tokend_proxy_connections_refused_total` of the
/// proxy of credential `main`.
fn refused(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("voipbin_tokend_proxy_connections_refused_total{credential=\"main\"} "))
        .and_then(|v| v.trim().parse().ok())
}

/// `n` connections to `addr`, each answered once (so each surely holds its
/// slot: a connect alone may wait in the kernel's queue, unaccepted) and
/// then left open, idle.
fn idle_connections(addr: SocketAddr, n: usize, d: &Daemon) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let (status, _, _) = exchange(&mut c, &format!("GET * HTTP/1.1\r\nHost: {addr}\r\n\r\n"));
            assert_eq!(status, 400, "connection {i}\n{}", d.log());
            c
        })
        .collect()
}

/// Reads until the peer closes (true) or sends something (false).
fn closed_by_peer(c: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 64];
    matches!(c.read(&mut buf), Ok(0))
}

/// `n` connections to `addr`, each with an upload in progress whose body
/// (10 bytes) has not come: the proxy's "100 Continue" says it is reading
/// it.
fn busy_connections(addr: SocketAddr, n: usize, d: &Daemon) -> Vec<std::net::TcpStream> {
    use std::io::{Read, Write};
    (0..n)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let head = format!(
                "POST /v1.0/echo HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
            );
            c.write_all(head.as_bytes()).unwrap();
            let mut answer = Vec::new();
            let mut byte = [0u8; 1];
            while !answer.ends_with(b"\r\n\r\n") {
                let n = c.read(&mut byte).unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", d.log()));
                assert_eq!(n, 1, "connection {i} closed\n{}", d.log());
                answer.push(byte[0]);
            }
            assert!(answer.starts_with(b"HTTP/1.1 100"), "connection {i}: {}", String::from_utf8_lossy(&answer));
            c
        })
        .collect()
}

#[test]
fn at_the_limit_new_clients_take_the_place_of_connections_idle_30_s_and_else_are_refused() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (d, addr, health) = token_proxy_with_health(&s, &t);
    // The limit (512) reached: 256 connections idle (a client that leaks
    // keep-alive connections) and 256 with an upload in progress.
    let mut idle = idle_connections(addr, 256, &d);
    let mut busy = busy_connections(addr, 256, &d);
    // Idle connections are kept 30 s at least: each one more is closed unserved.
    let extra = 100;
    for i in 0..extra {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(
            closed_by_peer(&mut c),
            "connection {i} closed unserved\n{}",
            d.log()
        );
    }
    let (_, _, metrics) = get(health, "/metrics", "");
    assert_eq!(refused(&metrics), Some(extra), "{metrics}");
    // One warning for the burst (the next would come 10 s later), with its count.
    let log = d.log();
    assert_eq!(log.matches("proxy connections refused").count(), 1, "{log}");
    let ask = format!("GET * HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert_eq!(
        exchange(&mut idle[0], &ask).0,
        400,
        "the idle ones are kept\n{}",
        d.log()
    );
    // Past 30 s idle, a new client takes the place of the one idle the
    // longest; uploads in progress, however old, are never closed.
    std::thread::sleep(Duration::from_secs(31));
    for i in 0..20 {
        let (status, _, body) = get(addr, "/v1.0/accesskeys", "");
        assert_eq!(status, 200, "client {i}: {body}\n{}", d.log());
    }
    // (idle[0] answered a request above: idle[1] has been idle the longest.)
    assert!(
        closed_by_peer(&mut idle[1]),
        "the connection idle the longest was closed"
    );
    for (i, c) in busy.iter_mut().enumerate().take(5) {
        let (status, _, body) = exchange(c, "0123456789");
        assert_eq!(status, 200, "upload {i}: {body}\n{}", d.log());
    }
    let (_, _, metrics) = get(health, "/metrics", "");
    assert_eq!(refused(&metrics), Some(extra), "none refused since\n{metrics}");
}

#[test]
fn each_proxy_follows_its_credentials_base_url() {
    let (one, two) = (
        standin(Duration::from_secs(3600)),
        standin(Duration::from_secs(3600)),
    );
    let t = TestDir::new();
    let (a, b) = (free_port(), free_port());
    t.write_config(
        &one.base_url(),
        &format!(
            "{}{}{}{}",
            cred("first", USER, "password", "", &output("first.token", "raw")),
            cred(
                "second",
                USER,
                "password",
                &format!("base-url = \"{}\"", two.base_url()),
                &output("second.token", "raw")
            ),
            proxy(&a.to_string(), "first", ""),
            proxy(&b.to_string(), "second", "")
        ),
    );
    let d = daemon_with(&t, "info", &[]);
    wait_listening(a, &d);
    wait_listening(b, &d);
    wait_for(
        Duration::from_secs(10),
        "tokens",
        || t.read("first.token").is_some() && t.read("second.token").is_some(),
        || d.log(),
    );
    let echoes = |s: &StandIn| {
        s.requests()
            .iter()
            .filter(|r| r.path.starts_with("/v1.0/echo"))
            .count()
    };
    assert_eq!(get(a, "/v1.0/echo/one", "").0, 200, "{}", d.log());
    assert_eq!(get(b, "/v1.0/echo/two", "").0, 200, "{}", d.log());
    assert_eq!(get(b, "/v1.0/echo/two", "").0, 200, "{}", d.log());
    assert_eq!(
        (echoes(&one), echoes(&two)),
        (1, 2),
        "each proxy reached its own server"
    );
}

#[test]
fn nothing_of_a_request_reaches_the_log_even_at_trace_level() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (d, addr) = token_proxy(&s, &t, "trace");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = "BODYMARKER-7c1f";
    let (status, _, answer) = exchange(
        &mut c,
        &format!(
            "POST /v1.0/echo/x?QUERYMARKER=1&accesskey=vb_CLIENTKEYMARKER HTTP/1.1\r\nHost: {addr}\r\n\
             Cookie: session=COOKIEMARKER\r\nAuthorization: Bearer CLIENTTOKENMARKER\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{answer}");
    d.wait_log("proxied", 1, Duration::from_secs(5));
    let log = d.log();
    for marker in [
        "BODYMARKER",
        "QUERYMARKER",
        "CLIENTKEYMARKER",
        "COOKIEMARKER",
        "CLIENTTOKENMARKER",
    ] {
        assert!(!log.contains(marker), "{marker} in the log");
    }
    assert_no_secrets(&log, PASSWORD, &s.issued_tokens());
}

#[test]
fn an_oversized_request_head_is_refused_not_forwarded() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (_d, addr) = token_proxy(&s, &t, "info");
    let before = s.requests().len();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let huge = "x".repeat(200 * 1024);
    use std::io::{Read, Write};
    let _ =
        c.write_all(format!("GET /v1.0/echo HTTP/1.1\r\nHost: {addr}\r\nX-Huge: {huge}\r\n\r\n").as_bytes());
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert_eq!(s.requests().len(), before, "nothing reached the API");
    // The proxy still serves others.
    assert_eq!(get(addr, "/v1.0/echo", "").0, 200);
}

#[test]
fn a_proxy_removed_by_a_reload_stops_accepting_and_the_others_go_on() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let (a, b) = (free_port(), free_port());
    let base = cred("main", USER, "password", "", &output("main.token", "raw"));
    t.write_config(
        &s.base_url(),
        &format!(
            "{base}{}{}",
            proxy(&a.to_string(), "main", ""),
            proxy(&b.to_string(), "main", "")
        ),
    );
    let mut d = daemon_with(&t, "info", &[]);
    wait_listening(a, &d);
    wait_listening(b, &d);
    wait_file(&t.path("main.token"), WAIT, || d.log());
    t.write_config(
        &s.base_url(),
        &format!("{base}{}", proxy(&a.to_string(), "main", "")),
    );
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("proxy stopped accepting", 1, Duration::from_secs(10));
    assert!(std::net::TcpStream::connect_timeout(&b, Duration::from_secs(1)).is_err());
    assert_eq!(get(a, "/v1.0/echo", "").0, 200);
    stop(&mut d, nix::sys::signal::Signal::SIGTERM);
}

/// A credential without a proxy, its token on disk: the stand-in, the
/// test dir, the credential's config and the daemon.
fn a_token_without_a_proxy() -> (StandIn, TestDir, String, Daemon) {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let base = cred("main", USER, "password", "", &output("main.token", "raw"));
    t.write_config(&s.base_url(), &base);
    let d = daemon_with(&t, "info", &[]);
    wait_file(&t.path("main.token"), WAIT, || d.log());
    (s, t, base, d)
}

/// Adds a proxy for the credential by a reload; its address once it listens.
fn add_a_proxy(s: &StandIn, t: &TestDir, base: &str, d: &Daemon) -> SocketAddr {
    let addr = free_port();
    t.write_config(
        &s.base_url(),
        &format!("{base}{}", proxy(&addr.to_string(), "main", "")),
    );
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_listening(addr, d);
    addr
}

/// The proxy at `addr` answers 200, the API having seen the token on disk.
fn served_with_the_token_on_disk(addr: SocketAddr, t: &TestDir, d: &Daemon) {
    let (status, _, body) = get(addr, "/v1.0/echo", "");
    assert_eq!(status, 200, "{body}\n{}", d.log());
    let token = t.read("main.token").unwrap();
    assert!(
        body.contains(token.trim()),
        "the API saw the credential's token\n{body}"
    );
}

#[test]
fn a_proxy_added_by_a_reload_serves_the_credentials_current_token_at_once() {
    // The credential runs without any reader of its secret; a reload adds
    // a proxy for it: the proxy gets the token the credential holds (no
    // new login) and its first request is answered with it.
    let (s, t, base, mut d) = a_token_without_a_proxy();
    let addr = add_a_proxy(&s, &t, &base, &d);
    served_with_the_token_on_disk(addr, &t, &d);
    assert_eq!(s.logins_ok(), 1, "no new login for the proxy\n{}", d.log());
    stop(&mut d, nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn a_proxy_added_while_its_credential_renews_holds_the_first_request_for_the_secret() {
    // The credential is in a slow login (1.2 s) when a reload adds a proxy
    // for it: the proxy listens at once, but the credential hands it the
    // secret only when the login is over. The first request waits for it
    // (up to 2 s) instead of a 503.
    let (s, t, base, mut d) = a_token_without_a_proxy();
    // A renewal asked within a second of the last one waits for that second.
    std::thread::sleep(Duration::from_millis(1100));
    s.script([Fault::Delay(Duration::from_millis(1200))]);
    d.signal(nix::sys::signal::Signal::SIGUSR1);
    d.wait_log("renewal requested", 1, Duration::from_secs(10));
    let addr = add_a_proxy(&s, &t, &base, &d);
    served_with_the_token_on_disk(addr, &t, &d);
    assert_eq!(s.logins_ok(), 2, "{}", d.log());
    stop(&mut d, nix::sys::signal::Signal::SIGTERM);
}
