//! One request through the proxy: refuse what is not for the API, add the
//! current credential, stream the body up and the answer back, and on a
//! 401 renew (once for every request that saw the same secret refused)
//! and replay once, if the body was small enough to keep.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::sync::watch;
use tracing::debug;
use url::Url;

use super::rewrite::{self, Credential, Refused};
use crate::config::ApiConfig;
use crate::export::Exported;
use crate::metrics::Metrics;
use crate::secret::Secret;

/// A request body up to this size is kept, for one replay after a 401.
pub const REPLAY_LIMIT: usize = 1024 * 1024;

/// How long a request that saw a 401 waits for the renewal it asked for.
const RENEWAL_WAIT: Duration = Duration::from_secs(30);

/// What the proxy answers with.
pub type ProxyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Where one proxy sends its requests, and with what.
pub struct Route {
    pub credential: String,
    /// An access key (added as the `accesskey` cookie) or a login token
    /// (added as `Authorization: Bearer`).
    pub is_key: bool,
    pub base_url: Url,
    /// The credential's current secret (see [`crate::export`]).
    pub secret: watch::Receiver<Option<Exported>>,
    /// Asks the credential to renew now (a 401 seen with its secret).
    pub renew: Arc<dyn Fn() + Send + Sync>,
    pub client: reqwest::Client,
    /// The secret a renewal was last asked for: one request per refused
    /// secret, however many requests saw it refused.
    pub renewal_asked_for: Mutex<Option<Secret>>,
    /// Requests answered (for `status`).
    pub served: Arc<AtomicU64>,
    pub metrics: Arc<Metrics>,
}

/// The client the proxy forwards with: the daemon's TLS rules and
/// `ca-file`; `timeout` bounds connecting and each wait for the API, not a
/// whole streamed transfer; redirects are passed back, never followed.
pub fn client(cfg: &ApiConfig) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
        .read_timeout(cfg.timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .http1_only();
    if let Some(path) = &cfg.ca_file {
        for cert in crate::config::read_ca_file(path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the proxy's HTTP client: {e}"))
}

/// Answers one request.
pub async fn handle(route: &Route, mut request: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    // A WebSocket (or other) upgrade: the client's side, once answered 101.
    let client_side = rewrite::is_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let url = match rewrite::upstream_url(&route.base_url, &parts.method, &parts.uri) {
        Ok(url) => url,
        Err(refused) => return refusal(&refused),
    };
    let Some(mut sent_with) = route.secret.borrow().clone() else {
        return not_yet();
    };
    let (first, kept) = match read_body(body).await {
        Ok(body) => body,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
            );
        }
    };
    let mut answer = send(route, &parts, &url, &sent_with.secret, first).await;
    if answer
        .as_ref()
        .is_ok_and(|r| r.status() == StatusCode::UNAUTHORIZED)
    {
        match kept.map(reqwest::Body::from) {
            // Kept: wait for a secret other than the refused one, replay.
            Some(replay) => match fresh_secret(route, &sent_with.secret).await {
                Some(fresh) => {
                    debug!(credential = %route.credential, "401 from the API; replaying with the renewed credential");
                    sent_with = fresh;
                    answer = send(route, &parts, &url, &sent_with.secret, replay).await;
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
    let response = match (answer, client_side) {
        (Ok(r), Some(client_side)) if r.status() == StatusCode::SWITCHING_PROTOCOLS => splice(r, client_side),
        (Ok(r), _) => pass_back(r),
        (Err(e), _) => error(StatusCode::BAD_GATEWAY, &upstream_error(&e)),
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

/// One request upstream.
async fn send(
    route: &Route,
    parts: &hyper::http::request::Parts,
    url: &Url,
    secret: &Secret,
    body: reqwest::Body,
) -> Result<reqwest::Response, reqwest::Error> {
    let credential = if route.is_key {
        Credential::Key(secret)
    } else {
        Credential::Token(secret)
    };
    let headers = rewrite::request_headers(&parts.headers, &route.base_url, credential);
    route
        .client
        .request(parts.method.clone(), url.clone())
        .headers(headers)
        .body(body)
        .send()
        .await
}

/// The request body to send, and the same bytes kept for a replay if it
/// ended within [`REPLAY_LIMIT`]; a larger one is what was read so far
/// followed by the rest as it arrives (never buffered whole, no replay).
async fn read_body(mut body: Incoming) -> Result<(reqwest::Body, Option<Bytes>), hyper::Error> {
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
                return Ok((reqwest::Body::from(whole.clone()), Some(whole)));
            }
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    size = size.saturating_add(data.len());
                    head.push_back(data);
                }
            }
        }
    }
    Ok((reqwest::Body::wrap(Chain { head, rest: body }), None))
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

/// A 101 from the API: the answer goes back as it is (its `Upgrade` and
/// `Connection` too), then both upgraded connections are joined.
fn splice(answer: reqwest::Response, client_side: hyper::upgrade::OnUpgrade) -> Response<ProxyBody> {
    let mut response = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = answer.status();
    *response.headers_mut() = answer.headers().clone();
    tokio::spawn(async move {
        let (Ok(api_side), Ok(client_side)) = (answer.upgrade().await, client_side.await) else {
            debug!("an upgraded connection failed before it was joined");
            return;
        };
        let mut client_side = hyper_util::rt::TokioIo::new(client_side);
        let mut api_side = api_side;
        let _ = tokio::io::copy_bidirectional(&mut client_side, &mut api_side).await;
    });
    response
}

/// The API's answer, streamed back with its hop-by-hop headers removed.
fn pass_back(answer: reqwest::Response) -> Response<ProxyBody> {
    let answer: hyper::http::Response<reqwest::Body> = answer.into();
    let (mut parts, body) = answer.into_parts();
    parts.headers = rewrite::response_headers(&parts.headers);
    let body = body
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        .boxed();
    Response::from_parts(parts, body)
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

/// The upstream failure without its URL (which holds no secret, but the
/// message is for the client: the API's address is enough).
fn upstream_error(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    format!("the request to the VoIPBIN API {what}")
}
