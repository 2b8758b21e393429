//! The endpoints a proxy is tested against: `ANY /v1.0/echo[/...]` answers
//! what arrived, and `GET /v1.0/bytes/{n}` answers `n` bytes, streamed.
//! Both want a valid token or access key, as every API endpoint does (401
//! otherwise, with the real server's envelope).
//!
//! The echo is JSON:
//! `{"method", "path", "query" (raw, or null), "headers": [[name, value], ...]
//! (as received, in order, `Authorization` and `Cookie` included), "auth"
//! (how it authenticated: "Bearer", "TokenCookie", "KeyCookie", ...),
//! "content_length" (the header, or null), "chunked" (the body came with
//! `Transfer-Encoding: chunked`), "body_length", "body_sha256" (hex)}`.
//! The body is hashed as it arrives and never kept, so an upload of any
//! size costs no memory. `?status=NNN` answers with that status instead of
//! 200 (a 3xx with `Location: /v1.0/echo/redirected`), for tests of what a
//! proxy passes back.
//!
//! `/v1.0/bytes/{n}` sends `Content-Length: n` (or, with `?chunked=1`, no
//! length: chunked), the body [`crate::BYTES_PATTERN`] repeated: byte `i` is
//! `BYTES_PATTERN[i % 16]`. A bad `n` is a 400; any method but GET a 404.

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::answer::{Answer, json, set, text, with_body};
use crate::body::{Pattern, Payload};
use crate::keys::{authenticated, unauthenticated};
use crate::model::{AuthVia, BYTES_PATH, NOT_FOUND_BODY};
use crate::state::Inner;

/// Answers a request under [`crate::ECHO_PATH`] or [`BYTES_PATH`].
pub(crate) async fn route(
    inner: &Inner,
    req: Request<Incoming>,
    request_id: &str,
    via: &mut AuthVia,
) -> Answer {
    if !authenticated(inner, &req, via) {
        // The whole body is read first, as a server that answers after its
        // request is parsed does: the client then always gets the 401, not
        // a connection closed under its upload.
        let mut body = req.into_body();
        while let Some(Ok(_)) = body.frame().await {}
        return Ok(unauthenticated(request_id));
    }
    match req.uri().path().strip_prefix(BYTES_PATH) {
        Some(n) if req.method() == Method::GET => Ok(bytes(n, query_has(&req, "chunked=1"))),
        Some(_) => Ok(text(StatusCode::NOT_FOUND, NOT_FOUND_BODY)),
        None => Ok(echo(req, *via).await),
    }
}

fn query_has(req: &Request<Incoming>, pair: &str) -> bool {
    req.uri().query().is_some_and(|q| q.split('&').any(|p| p == pair))
}

fn bytes(n: &str, chunked: bool) -> hyper::Response<Payload> {
    let Ok(total) = n.parse::<u64>() else {
        return text(StatusCode::BAD_REQUEST, "bytes: not a number of bytes");
    };
    let mut response = with_body(
        StatusCode::OK,
        Payload::Pattern(Pattern {
            total,
            pos: 0,
            chunked,
        }),
    );
    set(&mut response, header::CONTENT_TYPE, "application/octet-stream");
    response
}

async fn echo(req: Request<Incoming>, via: AuthVia) -> hyper::Response<Payload> {
    let (parts, mut body) = req.into_parts();
    let chunked = parts
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    let lossy = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), lossy(value.as_bytes())))
        .collect();
    let (mut length, mut hash) = (0u64, Sha256::new());
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    length += data.len() as u64;
                    hash.update(data);
                }
            }
            Err(_) => return text(StatusCode::BAD_REQUEST, "echo: the request body broke off"),
        }
    }
    let sha256: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let answer = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "auth": format!("{via:?}"),
        "content_length": parts.headers.get(header::CONTENT_LENGTH).map(|v| lossy(v.as_bytes())),
        "chunked": chunked,
        "body_length": length,
        "body_sha256": sha256,
    });
    let status = parts
        .uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|p| p.strip_prefix("status="))
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (200..600).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = json(status, serde_json::to_vec(&answer).unwrap_or_default());
    if status.is_redirection() {
        set(&mut response, header::LOCATION, "/v1.0/echo/redirected");
    }
    response
}
