//! The upstream every target forwards to: a minimal hyper server, run as a
//! child process (this very benchmark binary with [`UPSTREAM_ENV`] set) so
//! that its memory is its own and row (a) measures it alone.
//!
//! It answers every request with a small JSON (the shape of a VoIPBIN list
//! answer), but only with a credential: `Authorization: Bearer ...` or an
//! `accesskey` cookie, else 401, so a proxy that forgets to add one shows.
//! `POST /auth/login` answers `{"username","token"}` with the token in
//! [`TOKEN_ENV`] (minted by the stand-in: a real JWT with an `expire`
//! claim), so the daemon's proxy (row c) can log in here too.
//!
//! Two threads, each a current-thread tokio runtime, accept on one socket:
//! the product's tokio features (no multi-thread runtime) suffice.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Set (to anything) in the environment of the child that serves.
pub const UPSTREAM_ENV: &str = "PROXY_BENCH_UPSTREAM";
/// The token a login at the upstream answers.
pub const TOKEN_ENV: &str = "PROXY_BENCH_TOKEN";
/// The answer to everything but a login.
const SMALL_JSON: &[u8] = br#"{"result":[{"id":"5f0c8a4e-0000-4000-8000-000000000001","name":"bench","status":"active"}],"next_page_token":""}"#;
/// Threads that accept and answer.
const THREADS: usize = 2;

/// The child's main: binds 127.0.0.1:0, prints `listening ADDR` on stdout,
/// serves until killed.
pub fn serve_forever() -> ! {
    let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("upstream: cannot bind: {e}");
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().expect("a bound socket has an address");
    listener.set_nonblocking(true).expect("non-blocking");
    let token = std::env::var(TOKEN_ENV).unwrap_or_default();
    let mut threads = Vec::new();
    for _ in 0..THREADS {
        let listener = listener.try_clone().expect("clone the listening socket");
        let token = token.clone();
        threads.push(std::thread::spawn(move || serve_on(listener, token)));
    }
    println!("listening {addr}");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(1)
}

fn serve_on(listener: std::net::TcpListener, token: String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let login = Bytes::from(
            serde_json::json!({"username": "bench@example.com", "token": token})
                .to_string()
                .into_bytes(),
        );
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let login = login.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(req, login.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn answer(req: Request<Incoming>, login: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    let is_login = req.method() == Method::POST && req.uri().path().ends_with("/auth/login");
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"Bearer "))
        || req
            .headers()
            .get_all(hyper::header::COOKIE)
            .iter()
            .any(|v| v.as_bytes().windows(10).any(|w| w == b"accesskey="));
    // Read the request body whole (small in this benchmark) before answering.
    let _ = req.into_body().collect().await;
    let (status, body) = if is_login {
        (StatusCode::OK, login)
    } else if authorized {
        (StatusCode::OK, Bytes::from_static(SMALL_JSON))
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Bytes::from_static(br#"{"error":{"status":"UNAUTHENTICATED","reason":"INVALID_CREDENTIALS"}}"#),
        )
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Ok(response)
}

/// The upstream child and its address.
pub struct Upstream {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts this binary again as the upstream; waits (bounded) for its address.
pub fn start(token: &str) -> Result<Upstream, String> {
    use std::io::BufRead as _;
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut child = std::process::Command::new(exe)
        .env(UPSTREAM_ENV, "1")
        .env(TOKEN_ENV, token)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("start the upstream: {e}"))?;
    let stdout = child.stdout.take().ok_or("the upstream's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(std::time::Duration::from_secs(10));
    let mut upstream = Upstream {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let line = line.map_err(|_| "the upstream did not say where it listens within 10 s".to_string())?;
    upstream.addr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("the upstream said {line:?}"))?;
    Ok(upstream)
}
