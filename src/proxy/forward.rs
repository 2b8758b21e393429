//! One request through the proxy: refuse what is not for the API, add the
//! current credential, stream the body up and the answer back, and on a
//! 401 renew (once for every request that saw the same secret refused)
//! and replay once, if the body was small enough to keep.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::sync::watch;
use tracing::debug;
use url::Url;

use super::rewrite::{self, Credential, Refused};
pub use super::upstream::{BoxError, ProxyBody};
use super::upstream::{Stalled, Timed, Upstream, UpstreamError};
use crate::export::Exported;
use crate::metrics::Metrics;
use crate::secret::Secret;

/// A request body up to this size is kept, for one replay after a 401.
pub const REPLAY_LIMIT: usize = 1024 * 1024;

/// How long a request that comes before the credential's first secret (the
/// daemon's start, a proxy added by a reload) waits for it before a 503.
pub const FIRST_SECRET_WAIT: Duration = Duration::from_secs(2);

/// How long a request that saw a 401 waits for the renewal it asked for.
const RENEWAL_WAIT: Duration = Duration::from_secs(30);

/// Where one proxy sends its requests, and with what.
pub struct Route {
    pub credential: String,
    /// An access key (added as the `accesskey` cookie) or a login token
    /// (added as `Authorization: Bearer`).
    pub is_key: bool,
    pub base_url: Url,
    /// `scheme://authority` of `base_url`, and its `Host` header.
    pub origin: (hyper::http::uri::Scheme, hyper::http::uri::Authority),
    /// The credential's current secret (see [`crate::export`]).
    pub secret: watch::Receiver<Option<Exported>>,
    /// Asks the credential to renew now (a 401 seen with its secret).
    pub renew: Arc<dyn Fn() + Send + Sync>,
    pub client: Arc<Upstream>,
    /// A client's request body that sends nothing for this long is cut
    /// (408): a stalled upload does not hold its connection's slot busy.
    pub client_idle: Duration,
    /// The secret a renewal was last asked for: one request per refused
    /// secret, however many requests saw it refused.
    pub renewal_asked_for: Arc<Mutex<Option<Secret>>>,
    /// Requests answered (for `status`).
    pub served: Arc<AtomicU64>,
    pub metrics: Arc<Metrics>,
}

/// `scheme` and `authority` of a base URL, for building request URIs
/// without parsing one each time.
pub fn origin_of(base: &Url) -> Result<(hyper::http::uri::Scheme, hyper::http::uri::Authority), String> {
    let scheme = base
        .scheme()
        .parse()
        .map_err(|e| format!("{base}: scheme: {e}"))?;
    let host = base.host_str().ok_or_else(|| format!("{base}: no host"))?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let authority = match base.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    let authority = authority.parse().map_err(|e| format!("{base}: authority: {e}"))?;
    Ok((scheme, authority))
}

/// Answers one request.
pub async fn handle(route: &Route, mut request: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    // A WebSocket (or other) upgrade: the client's side, once answered 101.
    let client_side = rewrite::is_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let path = match rewrite::upstream_path(&route.base_url, &parts.method, &parts.uri) {
        Ok(path) => path,
        Err(refused) => return refusal(&refused),
    };
    let Some(mut sent_with) = current_secret(route).await else {
        return not_yet();
    };
    let response = if let Some(client_side) = client_side {
        upgrade(route, &parts, &path, &sent_with.secret, client_side).await
    } else {
        let body = Timed::new(
            body,
            route.client_idle,
            "the client stopped sending its request body",
        );
        let (first, kept) = match read_body(body).await {
            Ok(body) => body,
            Err(e) => {
                let status = if e.is::<Stalled>() {
                    StatusCode::REQUEST_TIMEOUT
                } else {
                    StatusCode::BAD_REQUEST
                };
                return error(status, &format!("cannot read the request body: {e}"));
            }
        };
        let mut answer = send(route, &parts, &path, &sent_with.secret, first).await;
        if answer
            .as_ref()
            .is_ok_and(|r| r.status() == StatusCode::UNAUTHORIZED)
        {
            match kept.map(full) {
                // Kept: wait for a secret other than the refused one, replay.
                Some(replay) => match fresh_secret(route, &sent_with.secret).await {
                    Some(fresh) => {
                        debug!(credential = %route.credential, "401 from the API; replaying with the renewed credential");
                        sent_with = fresh;
                        answer = send(route, &parts, &path, &sent_with.secret, replay).await;
                    }
                    None => {
                        debug!(credential = %route.credential, "401 from the API and no renewed credential in time")
                    }
                },
                // Not kept (over the replay limit): the 401 goes back, but the
                // next request gets a renewed secret.
                None => ask_renewal(route, &sent_with.secret),
            }
        }
        match answer {
            Ok(r) => pass_back(r).await,
            Err(e) => error(StatusCode::BAD_GATEWAY, &upstream_error(&e)),
        }
    };
    route.served.fetch_add(1, Ordering::Relaxed);
    let elapsed = started.elapsed();
    route.metrics.proxy_request(
        &route.credential,
        response.status().as_u16(),
        elapsed.as_secs_f64(),
    );
    debug!(
        credential = %route.credential,
        method = %parts.method,
        path = %parts.uri.path(),
        status = response.status().as_u16(),
        elapsed_ms = elapsed.as_millis() as u64,
        "proxied"
    );
    response
}

/// The credential's secret; before the first one, what comes within
/// [`FIRST_SECRET_WAIT`] (a proxy added by a reload gets the held secret a
/// moment after it listens: its first request is served, not refused).
async fn current_secret(route: &Route) -> Option<Exported> {
    if let Some(held) = route.secret.borrow().as_ref() {
        return Some(held.clone());
    }
    let mut secret = route.secret.clone();
    let first = secret.wait_for(|s| s.is_some());
    match tokio::time::timeout(FIRST_SECRET_WAIT, first).await {
        Ok(Ok(held)) => held.clone(),
        _ => None,
    }
}

/// A secret other than `refused`: the current one if it was replaced
/// meanwhile (no renewal then), else after a renewal asked once per
/// refused secret. `None` if none comes within [`RENEWAL_WAIT`].
async fn fresh_secret(route: &Route, refused: &Secret) -> Option<Exported> {
    let mut secret = route.secret.clone();
    {
        let now = secret.borrow_and_update();
        if let Some(current) = now.as_ref()
            && &current.secret != refused
        {
            return Some(current.clone());
        }
    }
    ask_renewal(route, refused);
    let changed = secret.wait_for(|s| s.as_ref().is_some_and(|s| &s.secret != refused));
    match tokio::time::timeout(RENEWAL_WAIT, changed).await {
        Ok(Ok(current)) => current.clone(),
        _ => None,
    }
}

/// Asks the credential to renew, unless it was asked already for this
/// refused secret (or the secret has been replaced meanwhile).
fn ask_renewal(route: &Route, refused: &Secret) {
    if route
        .secret
        .borrow()
        .as_ref()
        .is_some_and(|current| &current.secret != refused)
    {
        return;
    }
    let ask = {
        let mut asked = route.renewal_asked_for.lock().unwrap_or_else(|p| p.into_inner());
        if asked.as_ref() == Some(refused) {
            false
        } else {
            *asked = Some(refused.clone());
            true
        }
    };
    if ask {
        (route.renew)();
    }
}

/// The request as it goes upstream: method, URI under the base URL,
/// headers rewritten with `secret` added, `body`.
fn upstream_request(
    route: &Route,
    parts: &hyper::http::request::Parts,
    path: &str,
    secret: &Secret,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, String> {
    let credential = if route.is_key {
        Credential::Key(secret)
    } else {
        Credential::Token(secret)
    };
    let uri = hyper::Uri::builder()
        .scheme(route.origin.0.clone())
        .authority(route.origin.1.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| format!("the request target: {e}"))?;
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = rewrite::request_headers(&parts.headers, &route.base_url, credential);
    Ok(request)
}

/// One request upstream.
async fn send(
    route: &Route,
    parts: &hyper::http::request::Parts,
    path: &str,
    secret: &Secret,
    body: ProxyBody,
) -> Result<Response<ProxyBody>, UpstreamError> {
    let request = upstream_request(route, parts, path, secret, body).map_err(UpstreamError::Request)?;
    route.client.send(request).await
}

/// An upgrade (a WebSocket): sent without a body; after a 101 from the
/// API both upgraded connections are joined; any other answer goes back.
async fn upgrade(
    route: &Route,
    parts: &hyper::http::request::Parts,
    path: &str,
    secret: &Secret,
    client_side: hyper::upgrade::OnUpgrade,
) -> Response<ProxyBody> {
    let request = match upstream_request(route, parts, path, secret, empty()) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let mut answer = match route.client.send_upgrade(request).await {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_GATEWAY, &upstream_error(&e)),
    };
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        return answer.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed());
    }
    let api_side = hyper::upgrade::on(&mut answer);
    let mut response = Response::new(empty());
    *response.status_mut() = answer.status();
    *response.headers_mut() = answer.headers().clone();
    tokio::spawn(async move {
        let (Ok(api_side), Ok(client_side)) = (api_side.await, client_side.await) else {
            debug!("an upgraded connection failed before it was joined");
            return;
        };
        let mut client_side = hyper_util::rt::TokioIo::new(client_side);
        let mut api_side = hyper_util::rt::TokioIo::new(api_side);
        let _ = tokio::io::copy_bidirectional(&mut client_side, &mut api_side).await;
    });
    response
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The request body to send, and the same bytes kept for a replay if it
/// ended within [`REPLAY_LIMIT`]; a larger one is what was read so far
/// followed by the rest as it arrives (never buffered whole, no replay).
async fn read_body(mut body: Timed) -> Result<(ProxyBody, Option<Bytes>), BoxError> {
    let mut head: VecDeque<Bytes> = VecDeque::new();
    let mut size = 0usize;
    while size <= REPLAY_LIMIT {
        match body.frame().await {
            None => {
                let mut whole = Vec::with_capacity(size);
                for chunk in head {
                    whole.extend_from_slice(&chunk);
                }
                let whole = Bytes::from(whole);
                return Ok((full(whole.clone()), Some(whole)));
            }
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    size = size.saturating_add(data.len());
                    head.push_back(data);
                }
            }
        }
    }
    Ok((Chain { head, rest: body }.boxed(), None))
}

/// Chunks already read, then a body: one body.
struct Chain<B> {
    head: VecDeque<Bytes>,
    rest: B,
}

impl<B> hyper::body::Body for Chain<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if let Some(chunk) = self.head.pop_front() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// The API's answer, streamed back with its hop-by-hop headers removed.
///
/// The first frame of the body is awaited before the head goes out, so a
/// small answer leaves in one write with its head (one system call, not
/// two); the rest streams, nothing is held whole.
async fn pass_back(answer: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, mut body) = answer.into_parts();
    parts.headers = rewrite::response_headers(&parts.headers);
    let first = if hyper::body::Body::is_end_stream(&body) {
        None
    } else {
        body.frame().await
    };
    let head: VecDeque<Bytes> = match first {
        Some(Ok(frame)) => frame.into_data().ok().into_iter().collect(),
        Some(Err(e)) => {
            debug!(error = %e, "the API's answer broke off");
            return error(StatusCode::BAD_GATEWAY, "the answer of the VoIPBIN API broke off");
        }
        None => VecDeque::new(),
    };
    Response::from_parts(parts, Chain { head, rest: body }.boxed())
}

fn refusal(refused: &Refused) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(refused.status()).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, refused.message())
}

/// 503 with `Retry-After` until the credential holds a secret.
fn not_yet() -> Response<ProxyBody> {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the credential has no secret yet; try again shortly",
    );
    r.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("5"),
    );
    r
}

/// An answer of the proxy's own, in the API's error shape.
fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body =
        serde_json::json!({"error": {"status": status.as_u16(), "reason": "PROXY", "message": message}})
            .to_string();
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The upstream failure, for the client (the API's address is enough).
fn upstream_error(e: &UpstreamError) -> String {
    let what = match e {
        UpstreamError::TimedOut => "timed out",
        UpstreamError::Failed(e) if e.is_connect() => "cannot connect",
        UpstreamError::Failed(_) => "failed",
        UpstreamError::Request(why) => {
            return format!("the request to the VoIPBIN API could not be made: {why}");
        }
    };
    format!("the request to the VoIPBIN API {what}")
}
