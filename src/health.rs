//! `/healthz`, `/readyz` and `/metrics` over a small HTTP/1 server.
//! Bodies name each credential's state, never a token.
//!
//! The port is open to whoever can reach it, and every connection costs a
//! file descriptor that a renewal may need (its HTTPS socket, its temp
//! file). So at most [`MAX_CONNECTIONS`] are served at once (one more is
//! accepted and closed at once), a connection must send its request headers
//! within [`HEADER_TIMEOUT`], and none lives longer than [`CONNECTION_MAX`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::board::StatusBoard;
use crate::metrics::Metrics;

/// Connections served at once; far below the usual 1,024 descriptors.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a connection gets to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest any one connection (keep-alive included) is kept open.
pub const CONNECTION_MAX: Duration = Duration::from_secs(60);

/// Binds the listener (at start, so a bad address is a config error).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `cancel`.
pub fn serve(
    listener: TcpListener,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        debug!(error = %e, "health accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Over the cap: closed at once, so it holds no descriptor.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!(max = MAX_CONNECTIONS, "health connection refused: too many open");
                drop(stream);
                continue;
            };
            let (board, metrics) = (board.clone(), metrics.clone());
            let service = service_fn(move |req| {
                let answer = answer(&req, &board, &metrics);
                async move { Ok::<_, Infallible>(answer) }
            });
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                // hyper's header timeout starts only with a request; this
                // bound also ends a connection that never sends a byte.
                let _ = tokio::time::timeout(CONNECTION_MAX, conn).await;
                drop(slot);
            });
        }
    });
}

fn answer(req: &Request<Incoming>, board: &StatusBoard, metrics: &Metrics) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    let now = crate::now();
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "application/json", state_json("ok", board, now)),
        "/readyz" => {
            let all = board.snapshot();
            let ready = !all.is_empty() && all.iter().all(|s| s.is_fresh_at(now));
            let (code, word) = if ready {
                (StatusCode::OK, "ready")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "not ready")
            };
            respond(code, "application/json", state_json(word, board, now))
        }
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

fn state_json(status: &str, board: &StatusBoard, now: time::OffsetDateTime) -> String {
    let credentials: Vec<_> = board
        .snapshot()
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "state": s.state(now),
                "expires_at": s.expires_at.map(crate::token::rfc3339),
                "next_renewal": s.next_renewal.map(crate::token::rfc3339),
                "last_error": s.last_error,
            })
        })
        .collect();
    let mut text = serde_json::json!({ "status": status, "credentials": credentials }).to_string();
    text.push('\n');
    text
}

fn respond(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}
