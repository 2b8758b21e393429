//! The proxy against the stand-in on loopback, without the daemon around
//! it: credentials added and stripped, 401 → one renewal → replay.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use voipbin_tokend_standin::{StandIn, StandInOptions};

use super::forward::{self, Route};
use super::serve::{self, Listener};
use crate::export::Exported;
use crate::secret::Secret;

fn exported(secret: &str) -> Option<Exported> {
    Some(Exported {
        secret: Secret::new(secret.into()),
        expires_at: crate::now() + time::Duration::days(1),
        key_id: None,
    })
}

/// A route to `base_url` with the secrets of `secret` (and `renew`), and
/// a client body idle limit of `client_idle`.
fn route(
    base_url: &str,
    is_key: bool,
    secret: watch::Receiver<Option<Exported>>,
    renew: Arc<dyn Fn() + Send + Sync>,
    client_idle: Duration,
) -> Arc<Route> {
    let cfg = crate::config::Config::parse(
        &format!("[api]\nbase-url = \"{base_url}\"\n[[credential]]\nname = \"k\"\nusername = \"u@example.com\"\npassword = \"p\"\n[[credential.output]]\npath = \"/nonexistent/x\"\n"),
        std::path::Path::new("/etc/t/config.toml"),
    )
    .unwrap();
    Arc::new(Route {
        credential: "k".into(),
        is_key,
        base_url: base_url.parse().unwrap(),
        origin: forward::origin_of(&base_url.parse().unwrap()).unwrap(),
        secret,
        renew,
        client: Arc::new(super::upstream::Upstream::new(&cfg.api).unwrap()),
        client_idle,
        renewal_asked_for: Arc::new(Mutex::new(None)),
        served: Default::default(),
        metrics: Arc::new(crate::metrics::Metrics::new()),
    })
}

/// Serves `route` on a loopback port until `cancel`.
fn listen(route: Arc<Route>, cancel: &CancellationToken) -> std::net::SocketAddr {
    let tcp = Listener::bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let Listener::Tcp(std) = &tcp else { unreachable!() };
    let addr = std.local_addr().unwrap();
    let slots = Arc::new(serve::Slots::new(8));
    tokio::spawn(serve::serve(tcp, route, slots, cancel.clone()));
    addr
}

#[test]
fn a_refused_key_is_renewed_once_and_the_request_replayed() {
    let standin = StandIn::start(StandInOptions::default()).unwrap();
    let (_, good) = standin.create_key("k", 86_400);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, rx) = watch::channel(exported("vb_notavalidkeyatallxxxxxxxxxxxxxxxx"));
        let tx = Arc::new(tx);
        let asked = Arc::new(AtomicUsize::new(0));
        let renew = {
            let (tx, asked, good) = (tx.clone(), asked.clone(), good.clone());
            Arc::new(move || {
                asked.fetch_add(1, Ordering::SeqCst);
                tx.send_replace(exported(&good));
            })
        };
        let route = route(&standin.base_url(), true, rx, renew, serve::IDLE);
        let cancel = CancellationToken::new();
        let addr = listen(route, &cancel);
        let client = reqwest::Client::new();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let r = client
                .get(format!(
                    "http://{addr}/v1.0/accesskeys?accesskey=vb_clientsownkey&page_size=5"
                ))
                .header("authorization", "Bearer client")
                .timeout(Duration::from_secs(10))
                .send();
            answers.push(r);
        }
        for r in answers {
            assert_eq!(r.await.unwrap().status(), 200);
        }
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "one renewal for every request that saw the key refused"
        );
        cancel.cancel();
    });
}

/// An upstream that answers an upgrade with 101 when the daemon's token is
/// on it, then echoes bytes.
async fn upgrading_upstream() -> std::net::SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|mut req: hyper::Request<hyper::body::Incoming>| async move {
                    let authorized = req
                        .headers()
                        .get("authorization")
                        .is_some_and(|v| v == "Bearer ey.daemon.token");
                    let mut answer = hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                    if !authorized || !super::rewrite::is_upgrade(req.headers()) {
                        *answer.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                        return Ok::<_, std::convert::Infallible>(answer);
                    }
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on.await {
                            let mut io = hyper_util::rt::TokioIo::new(up);
                            let (mut r, mut w) = tokio::io::split(&mut io);
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    });
                    *answer.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                    answer
                        .headers_mut()
                        .insert("upgrade", "websocket".parse().unwrap());
                    answer
                        .headers_mut()
                        .insert("connection", "upgrade".parse().unwrap());
                    Ok(answer)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[test]
fn a_websocket_upgrade_passes_through_with_the_daemons_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let upstream = upgrading_upstream().await;
        let (_tx, rx) = watch::channel(exported("ey.daemon.token"));
        let route = route(&format!("http://{upstream}"), false, rx, Arc::new(|| {}), serve::IDLE);
        let cancel = CancellationToken::new();
        let addr = listen(route, &cancel);
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1.0/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nAuthorization: Bearer client\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut byte)).await.unwrap().unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo)).await.unwrap().unwrap();
        assert_eq!(&echo, b"ping");
        cancel.cancel();
    });
}

#[test]
fn an_upload_that_stops_is_cut_with_408_and_the_connection_freed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Nothing listens at the API: the body is read before it is sent.
        let (_tx, rx) = watch::channel(exported("ey.daemon.token"));
        let route = route(
            "http://127.0.0.1:9",
            false,
            rx,
            Arc::new(|| {}),
            Duration::from_millis(300),
        );
        let cancel = CancellationToken::new();
        let addr = listen(route, &cancel);
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /v1.0/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nsome")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
            .await
            .expect("the proxy answers and closes")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer).to_string();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.contains("the client stopped sending its request body"),
            "{answer}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "cut after its idle time, not before"
        );
        cancel.cancel();
    });
}
