//! A local stand-in of the VoIPBIN login API.
//!
//! The `demo` command, the integration tests and the benchmarks need a server
//! that answers like `https://api.voipbin.net` does (see
//! `voipbin-api.md`), on `127.0.0.1` and without credentials. A stand-in that
//! only ever says yes tests nothing, so this one is honest: it says no in
//! every way the real server does, and it can be told to misbehave in the
//! ways a real network and a real server sometimes do.
//!
//! # What it models
//!
//! - `POST /auth/login` with `{"username", "password"}`. Success is a 200 with
//!   `{"username", "token"}` and a `Set-Cookie: token=...` header. Every
//!   failure (wrong password, unknown user, malformed JSON, a missing or empty
//!   field, a body over 64 KiB) is a 400 with an empty body, as the real server
//!   cannot tell them apart either. Any other method on that path is a 404
//!   (the real server's router has no "405" for it), and so is
//!   `/v1.0/auth/login`.
//! - A per-client-IP token bucket on `/auth/*` (10 requests/s, burst 20 by
//!   default, like the real one). Over the limit: 429 with `Retry-After: 1` and
//!   a `RESOURCE_EXHAUSTED` JSON body.
//! - The token: an HS256 JWT signed with a random per-server key whose claims
//!   are exactly the real login token's: `type`, `agent` and the `expire`
//!   STRING (microseconds, UTC), with no `exp`, `iat` or `nbf`. Other claim
//!   styles ([`ClaimStyle`]) cover older servers and the standard claims.
//! - `GET /v1.0/me`, which answers 200 with the agent when the token (from a
//!   `token` cookie, else `Authorization: Bearer `, else `?token=`, in the real
//!   server's order) verifies and has not expired, else 401.
//! - An `X-Request-Id` header on every answer.
//!
//! # Faults on demand
//!
//! [`Fault`] describes one misbehaving answer to a login: a canned status,
//! a delay, a body dribbled out slowly, a huge body, a broken or expired
//! token, a skewed server clock, or a dropped connection. Faults are consumed
//! one per login from a FIFO script ([`StandIn::script`]); when the script is
//! empty the sticky default ([`StandIn::set_default`]) applies. A fault is
//! applied after the rate limiter (which sits in front of the real server's
//! handler) and before the password check: it models the server side, so a
//! fault answers whatever the credentials are.
//!
//! # Running it
//!
//! [`StandIn::start`] runs the server on its own OS thread with its own
//! single-threaded tokio runtime, so plain synchronous `#[test]` functions
//! and code on any runtime can use it. [`StandIn::start_in_runtime`] runs it
//! on the caller's runtime instead. Either way, dropping the [`StandIn`] (or
//! calling [`StandIn::shutdown`]) stops it.
//!
//! Passwords and tokens never appear in `Debug` output or in logs; the key
//! and the generated ids come from `fastrand`, which is fine for a local
//! stand-in and nothing else.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

/// The login path (no `/v1.0` prefix, like the real server).
pub const LOGIN_PATH: &str = "/auth/login";
/// The "who am I" path, a cheap check that a token works.
pub const ME_PATH: &str = "/v1.0/me";
/// Largest login body read; anything larger is answered with a 400.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// `Max-Age` of the login cookie: the real server's 7 days.
pub const COOKIE_MAX_AGE_SECS: u64 = 7 * 24 * 60 * 60;

/// At most this many request records and issued tokens are kept (oldest
/// dropped first), so a long benchmark does not grow without bound.
const HISTORY_LIMIT: usize = 100_000;

/// How far in the past the `expire` of a [`Fault::Expired`] token lies.
const EXPIRED_AGO: Duration = Duration::from_secs(3600);

const RATE_LIMITED_BODY: &str = r#"{"error":{"status":"RESOURCE_EXHAUSTED","reason":"RATE_LIMIT_EXCEEDED","message":"too many requests"}}"#;
const UNAUTHENTICATED_BODY: &str = r#"{"error":{"status":"UNAUTHENTICATED","reason":"INVALID_CREDENTIALS","message":"invalid or expired token"}}"#;
const NOT_FOUND_BODY: &str = "404 page not found";
const JSON: &str = "application/json; charset=utf-8";

/// How the token states its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClaimStyle {
    /// `"expire": "2026-12-04T09:15:02.123456Z"`: today's real server.
    #[default]
    Expire,
    /// `"expire": "2026-12-04 09:15:02.123456"` (space, no zone, UTC): older
    /// servers.
    ExpireLegacy,
    /// Standard numeric `exp` and `iat` (whole seconds, truncated, as Go's JWT
    /// library writes them) instead of `expire`.
    Exp,
    /// No expiry claim at all.
    NoExpiry,
}

/// A per-client-IP token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size: how many requests may come at once.
    pub burst: u32,
}

impl Default for RateLimit {
    /// The real server's limit on `/auth/*`: 10 requests/s, burst 20.
    fn default() -> Self {
        RateLimit {
            per_second: 10.0,
            burst: 20,
        }
    }
}

/// How to start a [`StandIn`].
#[derive(Clone)]
pub struct StandInOptions {
    /// Lifetime of the tokens issued (the real server's is 7 days).
    pub lifetime: Duration,
    /// Accounts as `(username, password)`.
    pub users: Vec<(String, String)>,
    /// How tokens state their expiry.
    pub claim_style: ClaimStyle,
    /// Rate limit on `/auth/*`; `None` disables it.
    pub rate_limit: Option<RateLimit>,
    /// Where to listen; `None` is `127.0.0.1:0` (a free port).
    pub bind: Option<SocketAddr>,
}

impl Default for StandInOptions {
    fn default() -> Self {
        StandInOptions {
            lifetime: Duration::from_secs(20),
            users: vec![("agent@example.com".to_owned(), "secret-password".to_owned())],
            claim_style: ClaimStyle::Expire,
            rate_limit: Some(RateLimit::default()),
            bind: None,
        }
    }
}

impl fmt::Debug for StandInOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<(&str, &str)> = self
            .users
            .iter()
            .map(|(name, _)| (name.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("StandInOptions")
            .field("lifetime", &self.lifetime)
            .field("users", &users)
            .field("claim_style", &self.claim_style)
            .field("rate_limit", &self.rate_limit)
            .field("bind", &self.bind)
            .finish()
    }
}

/// One misbehaving answer to a login, instead of the normal path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A canned answer: any status, body and headers (for example 500, 503,
    /// 400 with an empty body, a redirect with `Location`, 200 with HTML or
    /// with JSON lacking `token`, 429 with or without `Retry-After`). A status
    /// outside 100..=999 becomes 500; an invalid header is left out.
    Status {
        /// The status code.
        status: u16,
        /// The body, sent as is (empty: no body).
        body: String,
        /// Extra headers, `(name, value)`; `X-Request-Id` is always added.
        headers: Vec<(String, String)>,
    },
    /// Wait this long, then answer normally (a slow server: no headers until
    /// then).
    Delay(Duration),
    /// A 200 with a real token for the requested username, whose body
    /// (padded with JSON whitespace to `total` bytes if shorter) is sent
    /// `chunk` bytes at a time, one chunk every `every`, the first one
    /// `every` after the headers. Has a `Content-Length`.
    Dribble {
        /// Least body size in bytes (the login answer plus padding).
        total: usize,
        /// Bytes per chunk (at least 1).
        chunk: usize,
        /// Pause before each chunk.
        every: Duration,
    },
    /// A 200 whose JSON-ish body (`{"username":"huge","padding":"xxx…"}`,
    /// without a token) is exactly `bytes` long; with `chunked` there is no
    /// `Content-Length`, so a client cannot refuse it up front.
    Huge {
        /// Exact body size.
        bytes: usize,
        /// Send without `Content-Length` (chunked transfer encoding).
        chunked: bool,
    },
    /// A 200 with `"token": "not-a-jwt"`.
    NotJwt,
    /// A 200 whose token has three segments but invalid base64 in the
    /// payload.
    BadBase64,
    /// A 200 whose token's payload is valid base64 of something not JSON.
    NonJsonClaims,
    /// A 200 with a signed token whose claim is `"expire": "yesterday-ish"`.
    BadExpire,
    /// A 200 with a properly signed token that expired an hour ago (in the
    /// configured claim style; `NoExpiry` uses `expire`).
    Expired,
    /// Answer normally, but from a clock this many seconds off real time:
    /// the `Date` header and the token's expiry both come from it.
    ServerDateSkew(i64),
    /// Drop the connection without answering.
    Close,
    /// Answer normally (the credentials are checked), but merge this JSON
    /// object into the token's claims before signing; a `null` value
    /// removes that claim. For odd claims: `iat` ten years ago, `iat` after
    /// the expiry, an expiry in year 9999, another `agent`.
    Claims(serde_json::Value),
}

impl Fault {
    /// A canned answer with this status, an empty body and no extra headers.
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            body: String::new(),
            headers: Vec::new(),
        }
    }

    /// A redirect (301, 302, 307, 308, ...) to `location`.
    pub fn redirect(status: u16, location: &str) -> Fault {
        Fault::Status {
            status,
            body: String::new(),
            headers: vec![("Location".to_owned(), location.to_owned())],
        }
    }

    /// A 429 with the real server's JSON body and the given `Retry-After`
    /// (seconds or an HTTP-date, see [`format_http_date`]), or none.
    pub fn too_many_requests(retry_after: Option<&str>) -> Fault {
        let mut headers = vec![("Content-Type".to_owned(), JSON.to_owned())];
        if let Some(value) = retry_after {
            headers.push(("Retry-After".to_owned(), value.to_owned()));
        }
        Fault::Status {
            status: 429,
            body: RATE_LIMITED_BODY.to_owned(),
            headers,
        }
    }
}

/// One request the stand-in answered (or dropped). Holds no secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRecord {
    /// `POST`, `GET`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The request's `Content-Type`, if any.
    pub content_type: Option<String>,
    /// Whether the request carried a `Cookie` header (a client must not keep
    /// the login cookie).
    pub had_cookie_header: bool,
    /// For a login: the `username` field of the body, when it was a string.
    pub username: Option<String>,
    /// The status answered; 0 when the connection was dropped
    /// ([`Fault::Close`]).
    pub status: u16,
    /// The `X-Request-Id` answered.
    pub request_id: String,
    /// When the request arrived.
    pub at: SystemTime,
}

/// A running stand-in server. Dropping it stops it.
pub struct StandIn {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StandIn {
    /// Starts on its own OS thread with its own tokio runtime, so plain sync
    /// tests and any runtime can use it. Returns once it is listening.
    pub fn start(opts: StandInOptions) -> io::Result<StandIn> {
        let bind = bind_addr(&opts);
        let inner = Arc::new(Inner::new(opts));
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
        let server = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("voipbin-standin".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match listen(bind).await {
                        Ok(listening) => listening,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(listener.1));
                    serve(listener.0, server, stop_rx).await;
                });
            })?;
        let addr = match ready_rx.recv() {
            Ok(result) => result?,
            Err(_) => {
                return Err(io::Error::other("the stand-in thread ended before listening"));
            }
        };
        debug!(%addr, "stand-in listening on its own thread");
        Ok(StandIn {
            inner,
            addr,
            stop,
            thread: Some(thread),
            task: None,
        })
    }

    /// Runs on the caller's tokio runtime (for the `demo` command).
    pub async fn start_in_runtime(opts: StandInOptions) -> io::Result<StandIn> {
        let bind = bind_addr(&opts);
        let inner = Arc::new(Inner::new(opts));
        let (stop, stop_rx) = watch::channel(false);
        let (listener, addr) = listen(bind).await?;
        let task = tokio::spawn(serve(listener, Arc::clone(&inner), stop_rx));
        debug!(%addr, "stand-in listening");
        Ok(StandIn {
            inner,
            addr,
            stop,
            thread: None,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, to use as the API base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every `POST /auth/login` that reached the server, including those
    /// rejected, faulted or rate limited.
    pub fn login_requests(&self) -> u64 {
        self.inner.login_requests.load(Ordering::SeqCst)
    }

    /// Valid tokens issued by logins (normal answers, and the
    /// [`Fault::Delay`], [`Fault::Dribble`] and [`Fault::ServerDateSkew`]
    /// answers, which carry a valid token).
    pub fn logins_ok(&self) -> u64 {
        self.inner.logins_ok.load(Ordering::SeqCst)
    }

    /// Appends faults to the script: each login consumes the first one left.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.state().script.extend(faults);
    }

    /// How many scripted faults are still waiting.
    pub fn pending_faults(&self) -> usize {
        self.inner.state().script.len()
    }

    /// The fault used when the script is empty; `None` answers normally.
    pub fn set_default(&self, fault: Option<Fault>) {
        self.inner.state().default_fault = fault;
    }

    /// Adds a user or changes its password.
    pub fn set_password(&self, username: &str, password: &str) {
        let mut state = self.inner.state();
        match state.users.get_mut(username) {
            Some(user) => user.password = password.to_owned(),
            None => {
                state
                    .users
                    .insert(username.to_owned(), User::new(username, password));
            }
        }
    }

    /// Removes a user: its logins are then rejected like unknown ones.
    pub fn remove_user(&self, username: &str) {
        self.inner.state().users.remove(username);
    }

    /// Lifetime of the tokens issued from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.inner.state().lifetime = lifetime;
    }

    /// Claim style of the tokens issued from now on.
    pub fn set_claim_style(&self, style: ClaimStyle) {
        self.inner.state().claim_style = style;
    }

    /// Changes the rate limit (`None` disables it); buckets start full.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        let mut state = self.inner.state();
        state.rate_limit = limit;
        state.buckets.clear();
    }

    /// The requests answered so far, oldest first (every path, not only
    /// logins; at most the last 100 000).
    pub fn requests(&self) -> Vec<LoginRecord> {
        self.inner.state().records.iter().cloned().collect()
    }

    /// Every token handed out so far (valid, expired or malformed), oldest
    /// first, so tests can check that none of them shows up in logs.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.state().issued.iter().cloned().collect()
    }

    /// Signs a token for `username` that expires `lifetime` from now, in the
    /// current claim style, without a login (for example to seed an output
    /// file). It is recorded in [`issued_tokens`](Self::issued_tokens) but not
    /// counted as a login.
    ///
    /// # Panics
    ///
    /// Only if HS256 signing of plain claims fails, which it cannot.
    pub fn mint_token(&self, username: &str, lifetime: Duration) -> String {
        let style = self.inner.state().claim_style;
        let now = SystemTime::now();
        let claims = self.inner.claims(username, style, now, add_or_now(now, lifetime));
        let token = self
            .inner
            .sign(&claims)
            .expect("HS256 signing of plain claims cannot fail");
        self.inner.hand_out(&token);
        token
    }

    /// Stops accepting connections, drops open ones and waits for the
    /// server thread (if any) to end. Dropping the `StandIn` does the same.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for StandIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<String> = self.inner.state().users.keys().cloned().collect();
        users.sort();
        f.debug_struct("StandIn")
            .field("addr", &self.addr)
            .field("users", &users)
            .field("login_requests", &self.login_requests())
            .field("logins_ok", &self.logins_ok())
            .finish_non_exhaustive()
    }
}

/// Formats a time as an HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`), for
/// `Date` and `Retry-After` headers.
pub fn format_http_date(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        ))
        .unwrap_or_default()
}

/// Formats an expiry the way the real server writes the `expire` claim:
/// UTC, microseconds, `T` and `Z` (or, `legacy`, a space and no zone).
pub fn format_expire(t: SystemTime, legacy: bool) -> String {
    let t = OffsetDateTime::from(t);
    let formatted = if legacy {
        t.format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]"
        ))
    } else {
        t.format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
    };
    formatted.unwrap_or_default()
}

/// Parses an `expire` claim in either of the real server's forms.
fn parse_expire(s: &str) -> Option<SystemTime> {
    let iso = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]Z");
    let legacy = format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]");
    let parsed = PrimitiveDateTime::parse(s, iso)
        .or_else(|_| PrimitiveDateTime::parse(s, legacy))
        .ok()?;
    Some(parsed.assume_utc().into())
}

fn bind_addr(opts: &StandInOptions) -> SocketAddr {
    opts.bind
        .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
}

async fn listen(bind: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

fn add_or_now(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d).unwrap_or(t)
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn uuid_like() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        0x8000 | fastrand::u16(..0x4000),
        fastrand::u64(..1 << 48)
    )
}

/// The shared state of one server.
struct Inner {
    key: Vec<u8>,
    customer_id: String,
    nonce: u64,
    next_request: AtomicU64,
    login_requests: AtomicU64,
    logins_ok: AtomicU64,
    state: Mutex<State>,
}

struct State {
    users: HashMap<String, User>,
    lifetime: Duration,
    claim_style: ClaimStyle,
    rate_limit: Option<RateLimit>,
    buckets: HashMap<IpAddr, Bucket>,
    script: VecDeque<Fault>,
    default_fault: Option<Fault>,
    records: VecDeque<LoginRecord>,
    issued: VecDeque<String>,
}

struct User {
    password: String,
    id: String,
    name: String,
}

impl User {
    fn new(username: &str, password: &str) -> User {
        User {
            password: password.to_owned(),
            id: uuid_like(),
            name: display_name(username),
        }
    }
}

fn display_name(username: &str) -> String {
    username.split('@').next().unwrap_or(username).to_owned()
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The `agent` claim: a snapshot of the agent, as the real server writes it.
#[derive(Serialize)]
struct AgentClaim {
    id: String,
    customer_id: String,
    username: String,
    name: String,
    permission: u64,
}

#[derive(Serialize)]
struct Claims {
    #[serde(rename = "type")]
    kind: &'static str,
    agent: AgentClaim,
    #[serde(skip_serializing_if = "Option::is_none")]
    expire: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
}

#[derive(Serialize)]
struct LoginAnswer<'a> {
    username: &'a str,
    token: &'a str,
}

impl Inner {
    fn new(opts: StandInOptions) -> Inner {
        let users = opts
            .users
            .iter()
            .map(|(name, password)| (name.clone(), User::new(name, password)))
            .collect();
        let key = std::iter::repeat_with(|| fastrand::u8(..)).take(32).collect();
        Inner {
            key,
            customer_id: uuid_like(),
            nonce: fastrand::u64(..),
            next_request: AtomicU64::new(1),
            login_requests: AtomicU64::new(0),
            logins_ok: AtomicU64::new(0),
            state: Mutex::new(State {
                users,
                lifetime: opts.lifetime,
                claim_style: opts.claim_style,
                rate_limit: opts.rate_limit,
                buckets: HashMap::new(),
                script: VecDeque::new(),
                default_fault: None,
                records: VecDeque::new(),
                issued: VecDeque::new(),
            }),
        }
    }

    /// The state; a panic elsewhere while holding the lock does not make the
    /// server unusable.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn request_id(&self) -> String {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:08}", self.nonce)
    }

    /// Takes one token from the client's bucket; false when it is empty.
    fn admit(&self, client: IpAddr) -> bool {
        let mut state = self.state();
        let Some(limit) = state.rate_limit else {
            return true;
        };
        let burst = f64::from(limit.burst);
        let now = Instant::now();
        let bucket = state.buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * limit.per_second.max(0.0);
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn next_fault(&self) -> Option<Fault> {
        let mut state = self.state();
        match state.script.pop_front() {
            Some(fault) => Some(fault),
            None => state.default_fault.clone(),
        }
    }

    fn record(&self, record: LoginRecord) {
        let mut state = self.state();
        if state.records.len() >= HISTORY_LIMIT {
            state.records.pop_front();
        }
        state.records.push_back(record);
    }

    fn hand_out(&self, token: &str) {
        let mut state = self.state();
        if state.issued.len() >= HISTORY_LIMIT {
            state.issued.pop_front();
        }
        state.issued.push_back(token.to_owned());
    }

    /// The agent claim for `username`: the account's, or a made-up one for
    /// a username the server does not know (faults answer for any name).
    fn agent(&self, username: &str) -> AgentClaim {
        let state = self.state();
        let (id, name) = match state.users.get(username) {
            Some(user) => (user.id.clone(), user.name.clone()),
            None => (uuid_like(), display_name(username)),
        };
        AgentClaim {
            id,
            customer_id: self.customer_id.clone(),
            username: username.to_owned(),
            name,
            permission: 1,
        }
    }

    fn claims(
        &self,
        username: &str,
        style: ClaimStyle,
        issued_at: SystemTime,
        expires_at: SystemTime,
    ) -> Claims {
        let mut claims = Claims {
            kind: "agent",
            agent: self.agent(username),
            expire: None,
            exp: None,
            iat: None,
        };
        match style {
            ClaimStyle::Expire => claims.expire = Some(format_expire(expires_at, false)),
            ClaimStyle::ExpireLegacy => claims.expire = Some(format_expire(expires_at, true)),
            ClaimStyle::Exp => {
                claims.exp = Some(unix_seconds(expires_at));
                claims.iat = Some(unix_seconds(issued_at));
            }
            ClaimStyle::NoExpiry => {}
        }
        claims
    }

    fn sign(&self, claims: &impl Serialize) -> Option<String> {
        let key = EncodingKey::from_secret(&self.key);
        match jsonwebtoken::encode(&Header::default(), claims, &key) {
            Ok(token) => Some(token),
            Err(e) => {
                debug!(error = %e, "signing a token failed");
                None
            }
        }
    }

    /// The agent of a token that verifies and has not expired.
    fn verify(&self, token: &str) -> Option<serde_json::Value> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        let key = DecodingKey::from_secret(&self.key);
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .ok()?
            .claims;
        if claims.get("type")?.as_str()? != "agent" {
            return None;
        }
        let now = SystemTime::now();
        let expired = if let Some(expire) = claims.get("expire") {
            parse_expire(expire.as_str()?)? <= now
        } else if let Some(exp) = claims.get("exp") {
            exp.as_f64()? <= unix_seconds(now) as f64
        } else {
            // No expiry claim: good for as long as the key is.
            false
        };
        if expired {
            return None;
        }
        claims.get("agent").cloned()
    }
}

/// The error that makes hyper drop a connection without answering.
#[derive(Debug)]
struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped on purpose (Fault::Close)")
    }
}

impl std::error::Error for DropConnection {}

type Answer = Result<Response<Payload>, DropConnection>;

/// Accepts connections until told to stop.
async fn serve(listener: TcpListener, inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|&stopped| stopped) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather
                // than spin.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let inner = Arc::clone(&inner);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&inner), peer.ip(), req));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        debug!(error = %e, %peer, "connection ended with an error");
                    }
                }
                _ = stop.wait_for(|&stopped| stopped) => {}
            }
        });
    }
    debug!("stand-in stopped");
}

/// Answers one request, records it and stamps the `X-Request-Id`.
async fn handle(inner: Arc<Inner>, client: IpAddr, req: Request<Incoming>) -> Answer {
    let at = SystemTime::now();
    let request_id = inner.request_id();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let had_cookie_header = req.headers().contains_key(header::COOKIE);

    let mut username = None;
    let answer = route(&inner, client, req, &mut username).await;
    let status = match &answer {
        Ok(response) => response.status().as_u16(),
        Err(DropConnection) => 0,
    };
    debug!(request_id, %method, path, status, "stand-in answered");
    inner.record(LoginRecord {
        method: method.to_string(),
        path,
        content_type,
        had_cookie_header,
        username,
        status,
        request_id: request_id.clone(),
        at,
    });
    answer.map(|mut response| {
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("x-request-id"), value);
        }
        response
    })
}

async fn route(
    inner: &Inner,
    client: IpAddr,
    req: Request<Incoming>,
    username: &mut Option<String>,
) -> Answer {
    let is_login = req.method() == Method::POST && req.uri().path() == LOGIN_PATH;
    if is_login {
        inner.login_requests.fetch_add(1, Ordering::SeqCst);
    }
    if req.uri().path().starts_with("/auth/") && !inner.admit(client) {
        return Ok(rate_limited());
    }
    if is_login {
        return login(inner, req, username).await;
    }
    if req.method() == Method::GET && req.uri().path() == ME_PATH {
        return Ok(me(inner, &req));
    }
    Ok(text(StatusCode::NOT_FOUND, NOT_FOUND_BODY))
}

async fn login(inner: &Inner, req: Request<Incoming>, username: &mut Option<String>) -> Answer {
    // An unreadable or oversized body is a 400 like any other failure, but
    // only once the rate limiter and any scripted fault had their say.
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .ok()
        .map(|collected| collected.to_bytes());
    let fields: Option<serde_json::Value> = body.and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let field = |name: &str| {
        fields
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    *username = field("username");
    let password = field("password");
    let name = username.as_deref();

    let Some(fault) = inner.next_fault() else {
        return Ok(answer_login(inner, name, password.as_deref(), SystemTime::now()));
    };
    debug!(fault = fault_name(&fault), "stand-in answering with a fault");
    let now = SystemTime::now();
    let who = name.unwrap_or("agent");
    let response = match fault {
        Fault::Status {
            status,
            body,
            headers,
        } => canned(status, body, &headers),
        Fault::Delay(delay) => {
            tokio::time::sleep(delay).await;
            answer_login(inner, name, password.as_deref(), SystemTime::now())
        }
        Fault::Dribble { total, chunk, every } => {
            let (style, lifetime) = style_and_lifetime(inner);
            let claims = inner.claims(who, style, now, add_or_now(now, lifetime));
            let Some(token) = inner.sign(&claims) else {
                return Ok(empty(StatusCode::INTERNAL_SERVER_ERROR));
            };
            inner.hand_out(&token);
            inner.logins_ok.fetch_add(1, Ordering::SeqCst);
            let mut data = login_body(who, &token);
            if data.len() < total {
                data.resize(total, b' ');
            }
            let mut response = with_body(
                StatusCode::OK,
                Payload::Dribble(Dribble {
                    data: Bytes::from(data),
                    chunk: chunk.max(1),
                    every,
                    sleep: Box::pin(tokio::time::sleep(every)),
                }),
            );
            set(&mut response, header::CONTENT_TYPE, JSON);
            set_cookie(&mut response, &token);
            response
        }
        Fault::Huge { bytes, chunked } => {
            let mut response = with_body(
                StatusCode::OK,
                Payload::Huge(Huge {
                    total: bytes,
                    pos: 0,
                    chunked,
                }),
            );
            set(&mut response, header::CONTENT_TYPE, JSON);
            response
        }
        Fault::NotJwt => bad_token(inner, who, "not-a-jwt".to_owned()),
        Fault::BadBase64 => {
            let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
            let tail = URL_SAFE_NO_PAD.encode(fastrand::u64(..).to_be_bytes());
            bad_token(inner, who, format!("{head}.%%not*base64!!.{tail}"))
        }
        Fault::NonJsonClaims => {
            let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
            let payload = URL_SAFE_NO_PAD.encode(b"this payload is not JSON");
            let tail = URL_SAFE_NO_PAD.encode(fastrand::u64(..).to_be_bytes());
            bad_token(inner, who, format!("{head}.{payload}.{tail}"))
        }
        Fault::BadExpire => {
            let mut claims = inner.claims(who, ClaimStyle::NoExpiry, now, now);
            claims.expire = Some("yesterday-ish".to_owned());
            match inner.sign(&claims) {
                Some(token) => bad_token(inner, who, token),
                None => empty(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
        Fault::Expired => {
            let (style, lifetime) = style_and_lifetime(inner);
            let style = match style {
                ClaimStyle::NoExpiry => ClaimStyle::Expire,
                other => other,
            };
            let expired = now.checked_sub(EXPIRED_AGO).unwrap_or(UNIX_EPOCH);
            let issued = expired.checked_sub(lifetime).unwrap_or(UNIX_EPOCH);
            match inner.sign(&inner.claims(who, style, issued, expired)) {
                Some(token) => bad_token(inner, who, token),
                None => empty(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
        Fault::ServerDateSkew(seconds) => {
            let offset = Duration::from_secs(seconds.unsigned_abs());
            let clock = if seconds >= 0 {
                now.checked_add(offset)
            } else {
                now.checked_sub(offset)
            }
            .unwrap_or(now);
            let mut response = answer_login(inner, name, password.as_deref(), clock);
            set(&mut response, header::DATE, &format_http_date(clock));
            response
        }
        Fault::Close => return Err(DropConnection),
        Fault::Claims(extra) => answer_login_with(inner, name, password.as_deref(), now, Some(&extra)),
    };
    Ok(response)
}

fn style_and_lifetime(inner: &Inner) -> (ClaimStyle, Duration) {
    let state = inner.state();
    (state.claim_style, state.lifetime)
}

/// The normal login path, with the server's clock at `clock`.
fn answer_login(
    inner: &Inner,
    username: Option<&str>,
    password: Option<&str>,
    clock: SystemTime,
) -> Response<Payload> {
    answer_login_with(inner, username, password, clock, None)
}

/// The normal login path, with `extra` merged into the claims ([`Fault::Claims`]).
fn answer_login_with(
    inner: &Inner,
    username: Option<&str>,
    password: Option<&str>,
    clock: SystemTime,
    extra: Option<&serde_json::Value>,
) -> Response<Payload> {
    let (Some(username), Some(password)) = (username, password) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    if username.is_empty() || password.is_empty() {
        return empty(StatusCode::BAD_REQUEST);
    }
    let (known, style, lifetime) = {
        let state = inner.state();
        let known = state
            .users
            .get(username)
            .is_some_and(|user| user.password == password);
        (known, state.claim_style, state.lifetime)
    };
    if !known {
        return empty(StatusCode::BAD_REQUEST);
    }
    let claims = inner.claims(username, style, clock, add_or_now(clock, lifetime));
    let token = match extra {
        None => inner.sign(&claims),
        Some(extra) => inner.sign(&merged(&claims, extra)),
    };
    let Some(token) = token else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    inner.hand_out(&token);
    inner.logins_ok.fetch_add(1, Ordering::SeqCst);
    token_answer(username, &token)
}

/// `claims` with the keys of the object `extra` set (or removed, for `null`).
fn merged(claims: &Claims, extra: &serde_json::Value) -> serde_json::Value {
    let mut value = serde_json::to_value(claims).unwrap_or_default();
    if let (Some(map), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        for (key, v) in extra {
            if v.is_null() {
                map.remove(key);
            } else {
                map.insert(key.clone(), v.clone());
            }
        }
    }
    value
}

/// A 200 carrying a token that is not valid: handed out, not counted.
fn bad_token(inner: &Inner, username: &str, token: String) -> Response<Payload> {
    inner.hand_out(&token);
    token_answer(username, &token)
}

fn login_body(username: &str, token: &str) -> Vec<u8> {
    serde_json::to_vec(&LoginAnswer { username, token }).unwrap_or_default()
}

fn token_answer(username: &str, token: &str) -> Response<Payload> {
    let mut response = json(StatusCode::OK, login_body(username, token));
    set_cookie(&mut response, token);
    response
}

fn set_cookie(response: &mut Response<Payload>, token: &str) {
    let cookie = format!("token={token}; Path=/; Max-Age={COOKIE_MAX_AGE_SECS}; Secure; HttpOnly");
    set(response, header::SET_COOKIE, &cookie);
}

fn me(inner: &Inner, req: &Request<Incoming>) -> Response<Payload> {
    match request_token(req).and_then(|token| inner.verify(token)) {
        Some(agent) => json(StatusCode::OK, serde_json::to_vec(&agent).unwrap_or_default()),
        None => json(StatusCode::UNAUTHORIZED, UNAUTHENTICATED_BODY),
    }
}

/// The token of a request, where the real server looks: a `token` cookie
/// first, then `Authorization: Bearer ` (exactly), then `?token=`.
fn request_token(req: &Request<Incoming>) -> Option<&str> {
    let from_cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("token="));
    let from_header = || {
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    };
    let from_query = || {
        req.uri()
            .query()?
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
    };
    from_cookie
        .or_else(from_header)
        .or_else(from_query)
        .filter(|token| !token.is_empty())
}

fn rate_limited() -> Response<Payload> {
    let mut response = json(StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED_BODY);
    set(&mut response, header::RETRY_AFTER, "1");
    response
}

fn canned(status: u16, body: String, headers: &[(String, String)]) -> Response<Payload> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = with_body(status, Payload::full(body));
    for (name, value) in headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => debug!(header = %name, "left out an invalid scripted header"),
        }
    }
    response
}

fn with_body(status: StatusCode, body: Payload) -> Response<Payload> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

fn empty(status: StatusCode) -> Response<Payload> {
    with_body(status, Payload::Full(None))
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Payload> {
    let mut response = with_body(status, Payload::full(body));
    set(&mut response, header::CONTENT_TYPE, JSON);
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Payload> {
    let mut response = with_body(status, Payload::full(body));
    set(&mut response, header::CONTENT_TYPE, "text/plain");
    response
}

fn set(response: &mut Response<Payload>, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn fault_name(fault: &Fault) -> &'static str {
    match fault {
        Fault::Status { .. } => "status",
        Fault::Delay(_) => "delay",
        Fault::Dribble { .. } => "dribble",
        Fault::Huge { .. } => "huge",
        Fault::NotJwt => "not-jwt",
        Fault::BadBase64 => "bad-base64",
        Fault::NonJsonClaims => "non-json-claims",
        Fault::BadExpire => "bad-expire",
        Fault::Expired => "expired",
        Fault::ServerDateSkew(_) => "server-date-skew",
        Fault::Close => "close",
        Fault::Claims(_) => "claims",
    }
}

/// Response bodies: whole, dribbled, or generated on the fly.
enum Payload {
    Full(Option<Bytes>),
    Dribble(Dribble),
    Huge(Huge),
}

impl Payload {
    fn full(body: impl Into<Bytes>) -> Payload {
        let body = body.into();
        Payload::Full((!body.is_empty()).then_some(body))
    }
}

/// The rest of a body, sent `chunk` bytes every `every`. If the client goes
/// away, hyper drops it and the timer with it.
struct Dribble {
    data: Bytes,
    chunk: usize,
    every: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

/// A body of `total` bytes made up as it is sent, so a huge one costs no
/// memory.
struct Huge {
    total: usize,
    pos: usize,
    chunked: bool,
}

const HUGE_PREFIX: &[u8] = br#"{"username":"huge","padding":""#;
const HUGE_SUFFIX: &[u8] = br#""}"#;
static HUGE_FILL: [u8; 16 * 1024] = [b'x'; 16 * 1024];

impl Huge {
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.pos >= self.total {
            return None;
        }
        let framed = self.total >= HUGE_PREFIX.len() + HUGE_SUFFIX.len();
        let (prefix, suffix) = if framed {
            (HUGE_PREFIX.len(), HUGE_SUFFIX.len())
        } else {
            (0, 0)
        };
        let fill_end = self.total - suffix;
        let chunk = if self.pos < prefix {
            Bytes::from_static(&HUGE_PREFIX[self.pos..])
        } else if self.pos < fill_end {
            let n = (fill_end - self.pos).min(HUGE_FILL.len());
            Bytes::from_static(&HUGE_FILL[..n])
        } else {
            Bytes::from_static(&HUGE_SUFFIX[self.pos - fill_end..])
        };
        self.pos += chunk.len();
        Some(chunk)
    }
}

impl Body for Payload {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Payload::Full(data) => Poll::Ready(data.take().map(|b| Ok(Frame::data(b)))),
            Payload::Dribble(d) => {
                if d.data.is_empty() {
                    return Poll::Ready(None);
                }
                ready!(d.sleep.as_mut().poll(cx));
                let piece = d.data.split_to(d.chunk.min(d.data.len()));
                let next = tokio::time::Instant::now() + d.every;
                d.sleep.as_mut().reset(next);
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            Payload::Huge(h) => Poll::Ready(h.next_chunk().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Payload::Full(data) => data.is_none(),
            Payload::Dribble(d) => d.data.is_empty(),
            Payload::Huge(h) => h.pos >= h.total,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Payload::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64)),
            Payload::Dribble(d) => SizeHint::with_exact(d.data.len() as u64),
            Payload::Huge(h) if h.chunked => SizeHint::default(),
            Payload::Huge(h) => SizeHint::with_exact((h.total - h.pos.min(h.total)) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "agent@example.com";
    const PASSWORD: &str = "secret-password";

    fn options() -> StandInOptions {
        StandInOptions {
            rate_limit: None,
            ..StandInOptions::default()
        }
    }

    thread_local! {
        // One per test thread (each #[tokio::test] has its own thread and
        // runtime): building a client loads the system roots, which is slow.
        static CLIENT: reqwest::Client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
    }

    fn client() -> reqwest::Client {
        CLIENT.with(Clone::clone)
    }

    fn credentials(username: &str, password: &str) -> String {
        serde_json::json!({ "username": username, "password": password }).to_string()
    }

    async fn post(server: &StandIn, body: impl Into<reqwest::Body>) -> reqwest::Response {
        client()
            .post(format!("{}{LOGIN_PATH}", server.base_url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("login request")
    }

    async fn login(server: &StandIn) -> reqwest::Response {
        post(server, credentials(USER, PASSWORD)).await
    }

    async fn token_of(response: reqwest::Response) -> String {
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.expect("body")).expect("json body");
        body["token"].as_str().expect("token").to_owned()
    }

    fn segment(token: &str, n: usize) -> Vec<u8> {
        let part = token.split('.').nth(n).expect("segment");
        URL_SAFE_NO_PAD.decode(part).expect("base64url")
    }

    fn claims(token: &str) -> serde_json::Value {
        serde_json::from_slice(&segment(token, 1)).expect("json claims")
    }

    fn header_str(response: &reqwest::Response, name: &str) -> Option<String> {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_owned())
    }

    async fn me(server: &StandIn, authorization: &str) -> reqwest::Response {
        client()
            .get(format!("{}{ME_PATH}", server.base_url()))
            .header("authorization", authorization)
            .send()
            .await
            .expect("me request")
    }

    fn is_expire_format(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 27
            && b[10] == b'T'
            && b[19] == b'.'
            && b[26] == b'Z'
            && b[20..26].iter().all(u8::is_ascii_digit)
    }

    #[tokio::test]
    async fn login_answers_like_the_real_server() {
        let server = StandIn::start(options()).expect("start");
        let before = SystemTime::now();
        let response = login(&server).await;
        let after = SystemTime::now();
        assert_eq!(response.status(), 200);
        assert_eq!(header_str(&response, "content-type").as_deref(), Some(JSON));
        assert!(header_str(&response, "x-request-id").is_some());
        let cookie = header_str(&response, "set-cookie").expect("cookie");
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
        assert_eq!(body["username"], USER);
        let token = body["token"].as_str().expect("token").to_owned();
        assert_eq!(
            cookie,
            format!("token={token}; Path=/; Max-Age=604800; Secure; HttpOnly")
        );

        let head: serde_json::Value = serde_json::from_slice(&segment(&token, 0)).expect("head");
        assert_eq!(head["alg"], "HS256");
        let claims = claims(&token);
        assert_eq!(claims["type"], "agent");
        let agent = &claims["agent"];
        assert_eq!(agent["username"], USER);
        assert_eq!(agent["name"], "agent");
        assert_eq!(agent["permission"], 1);
        assert_eq!(agent["id"].as_str().map(str::len), Some(36));
        assert_eq!(agent["customer_id"].as_str().map(str::len), Some(36));
        assert_eq!(agent.as_object().map(|o| o.len()), Some(5));
        for absent in ["exp", "iat", "nbf"] {
            assert!(claims.get(absent).is_none(), "{absent} present");
        }
        assert_eq!(claims.as_object().map(|o| o.len()), Some(3));
        let expire = claims["expire"].as_str().expect("expire string");
        assert!(is_expire_format(expire), "{expire}");
        let expiry = parse_expire(expire).expect("parse");
        assert!(expiry >= before + Duration::from_millis(19_999));
        assert!(expiry <= after + Duration::from_secs(20));

        assert_eq!(server.login_requests(), 1);
        assert_eq!(server.logins_ok(), 1);
        assert_eq!(server.issued_tokens(), vec![token.clone()]);
        let records = server.requests();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].method, "POST");
        assert_eq!(records[0].path, LOGIN_PATH);
        assert_eq!(records[0].content_type.as_deref(), Some("application/json"));
        assert!(!records[0].had_cookie_header);
        assert_eq!(records[0].username.as_deref(), Some(USER));
        assert_eq!(records[0].status, 200);

        // The same agent each time; a different token.
        let second = token_of(login(&server).await).await;
        assert_ne!(second, token);
        assert_eq!(claims["agent"], self::claims(&second)["agent"]);
    }

    #[tokio::test]
    async fn every_login_failure_is_an_empty_400() {
        let server = StandIn::start(options()).expect("start");
        let oversized = format!(
            r#"{{"username":"{USER}","password":"{PASSWORD}","pad":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        let bodies = [
            credentials(USER, "wrong"),
            credentials("nobody@example.com", PASSWORD),
            credentials("", PASSWORD),
            credentials(USER, ""),
            format!(r#"{{"username":"{USER}"}}"#),
            format!(r#"{{"password":"{PASSWORD}"}}"#),
            format!(r#"{{"username":"{USER}","password":42}}"#),
            "{not json".to_owned(),
            String::new(),
            "[]".to_owned(),
            oversized,
        ];
        let mut ids = Vec::new();
        for body in bodies {
            let response = post(&server, body).await;
            assert_eq!(response.status(), 400);
            ids.push(header_str(&response, "x-request-id").expect("request id"));
            assert!(response.bytes().await.expect("body").is_empty());
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 11, "request ids are unique");
        assert_eq!(server.login_requests(), 11);
        assert_eq!(server.logins_ok(), 0);
        assert!(server.issued_tokens().is_empty());
        assert!(server.requests().iter().all(|r| r.status == 400));
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_404() {
        let server = StandIn::start(options()).expect("start");
        let base = server.base_url();
        let c = client();
        let get = c.get(format!("{base}{LOGIN_PATH}")).send().await.expect("get");
        assert_eq!(get.status(), 404);
        assert!(header_str(&get, "x-request-id").is_some());
        let prefixed = c
            .post(format!("{base}/v1.0/auth/login"))
            .body(credentials(USER, PASSWORD))
            .send()
            .await
            .expect("post");
        assert_eq!(prefixed.status(), 404);
        assert_eq!(server.login_requests(), 0);
        assert_eq!(server.requests().len(), 2);
    }

    #[tokio::test]
    async fn rate_limit_answers_429_after_the_burst_and_refills() {
        // The real server's limit: the first 20 pass, then about 10/s.
        let server = StandIn::start(StandInOptions::default()).expect("start");
        let started = Instant::now();
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(login(&server).await.status().as_u16());
        }
        let elapsed = started.elapsed().as_secs_f64();
        assert!(statuses[..20].iter().all(|&s| s == 200), "{statuses:?}");
        let passed = statuses.iter().filter(|&&s| s == 200).count();
        assert!(passed as f64 <= 21.0 + elapsed * 10.0, "{passed} in {elapsed}s");
        assert!(statuses.contains(&429), "{statuses:?}");
        assert_eq!(server.login_requests(), 40);
        assert_eq!(server.logins_ok(), passed as u64);

        // A slower bucket, to look at one answer closely.
        server.set_rate_limit(Some(RateLimit {
            per_second: 0.5,
            burst: 3,
        }));
        for _ in 0..3 {
            assert_eq!(login(&server).await.status(), 200);
        }
        let limited = login(&server).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(header_str(&limited, "retry-after").as_deref(), Some("1"));
        assert!(header_str(&limited, "x-request-id").is_some());
        let body: serde_json::Value =
            serde_json::from_slice(&limited.bytes().await.expect("body")).expect("json");
        assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(body["error"]["reason"], "RATE_LIMIT_EXCEEDED");
        let last = server.requests().pop().expect("record");
        assert_eq!(last.status, 429);
        assert_eq!(last.username, None, "rejected before the body is read");

        // A scripted fault is not consumed by a rate-limited request.
        server.script([Fault::status(503)]);
        assert_eq!(login(&server).await.status(), 429);
        assert_eq!(server.pending_faults(), 1);

        // 0.5/s: one more token after two seconds.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(login(&server).await.status(), 503);
        assert_eq!(server.pending_faults(), 0);

        server.set_rate_limit(None);
        for _ in 0..30 {
            assert_eq!(login(&server).await.status(), 200);
        }
    }

    #[tokio::test]
    async fn me_accepts_only_valid_unexpired_tokens() {
        let server = StandIn::start(StandInOptions {
            lifetime: Duration::from_secs(2),
            ..options()
        })
        .expect("start");
        let token = token_of(login(&server).await).await;
        let expiry = parse_expire(claims(&token)["expire"].as_str().expect("expire")).expect("parse");
        let ok = me(&server, &format!("Bearer {token}")).await;
        assert_eq!(ok.status(), 200);
        let agent: serde_json::Value =
            serde_json::from_slice(&ok.bytes().await.expect("body")).expect("json");
        assert_eq!(agent["username"], USER);

        // The query form and the cookie work too.
        let query = client()
            .get(format!("{}{ME_PATH}?token={token}", server.base_url()))
            .send()
            .await
            .expect("me");
        assert_eq!(query.status(), 200);
        let cookie = client()
            .get(format!("{}{ME_PATH}", server.base_url()))
            .header("cookie", format!("lang=en; token={token}"))
            .send()
            .await
            .expect("me");
        assert_eq!(cookie.status(), 200);

        for bad in [
            format!("bearer {token}"),
            format!("Bearer  {token}"),
            token.clone(),
            format!("Bearer {token}x"),
            "Bearer not-a-jwt".to_owned(),
        ] {
            let response = me(&server, &bad).await;
            assert_eq!(response.status(), 401);
            let body: serde_json::Value =
                serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
            assert_eq!(body["error"]["reason"], "INVALID_CREDENTIALS");
        }

        // A token signed by another server does not verify.
        let other = StandIn::start(options()).expect("start");
        let foreign = other.mint_token(USER, Duration::from_secs(60));
        assert_eq!(me(&server, &format!("Bearer {foreign}")).await.status(), 401);

        // Once expired, no more.
        if let Ok(left) = expiry.duration_since(SystemTime::now()) {
            tokio::time::sleep(left + Duration::from_millis(50)).await;
        }
        assert_eq!(me(&server, &format!("Bearer {token}")).await.status(), 401);
    }

    #[tokio::test]
    async fn claim_styles() {
        let server = StandIn::start(options()).expect("start");

        server.set_claim_style(ClaimStyle::ExpireLegacy);
        let legacy = claims(&token_of(login(&server).await).await);
        let expire = legacy["expire"].as_str().expect("expire");
        assert_eq!(expire.len(), 26);
        assert_eq!(&expire[10..11], " ");
        assert!(!expire.ends_with('Z'));
        assert!(parse_expire(expire).is_some());

        server.set_claim_style(ClaimStyle::Exp);
        let token = token_of(login(&server).await).await;
        let standard = claims(&token);
        assert!(standard.get("expire").is_none());
        let exp = standard["exp"].as_i64().expect("exp");
        let iat = standard["iat"].as_i64().expect("iat");
        assert!((19..=21).contains(&(exp - iat)), "{exp} - {iat}");
        assert_eq!(me(&server, &format!("Bearer {token}")).await.status(), 200);

        server.set_claim_style(ClaimStyle::NoExpiry);
        let token = token_of(login(&server).await).await;
        let none = claims(&token);
        for absent in ["expire", "exp", "iat", "nbf"] {
            assert!(none.get(absent).is_none(), "{absent} present");
        }
        assert_eq!(me(&server, &format!("Bearer {token}")).await.status(), 200);
    }

    #[tokio::test]
    async fn canned_status_faults_and_script_order() {
        let server = StandIn::start(options()).expect("start");
        server.script([
            Fault::Status {
                status: 500,
                body: "oops".to_owned(),
                headers: vec![],
            },
            Fault::redirect(302, "https://example.com/login"),
            Fault::Status {
                status: 200,
                body: "<html><body>maintenance</body></html>".to_owned(),
                headers: vec![("Content-Type".to_owned(), "text/html".to_owned())],
            },
            Fault::Status {
                status: 200,
                body: r#"{"username":"agent@example.com"}"#.to_owned(),
                headers: vec![("Content-Type".to_owned(), JSON.to_owned())],
            },
            Fault::too_many_requests(Some("3")),
            Fault::too_many_requests(None),
            Fault::status(400),
        ]);
        assert_eq!(server.pending_faults(), 7);

        let r = login(&server).await;
        assert_eq!(r.status(), 500);
        assert_eq!(r.text().await.expect("body"), "oops");

        let r = login(&server).await;
        assert_eq!(r.status(), 302);
        assert_eq!(
            header_str(&r, "location").as_deref(),
            Some("https://example.com/login")
        );

        let r = login(&server).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header_str(&r, "content-type").as_deref(), Some("text/html"));
        assert!(r.text().await.expect("body").starts_with("<html>"));

        let r = login(&server).await;
        assert_eq!(r.status(), 200);
        assert!(!r.text().await.expect("body").contains("token"));

        let r = login(&server).await;
        assert_eq!(r.status(), 429);
        assert_eq!(header_str(&r, "retry-after").as_deref(), Some("3"));

        let r = login(&server).await;
        assert_eq!(r.status(), 429);
        assert_eq!(header_str(&r, "retry-after"), None);

        let r = login(&server).await;
        assert_eq!(r.status(), 400);
        assert!(header_str(&r, "x-request-id").is_some());
        assert!(r.bytes().await.expect("body").is_empty());

        // Script empty: normal again, then the sticky default.
        assert_eq!(login(&server).await.status(), 200);
        server.set_default(Some(Fault::status(503)));
        server.script([Fault::status(502)]);
        assert_eq!(login(&server).await.status(), 502);
        assert_eq!(login(&server).await.status(), 503);
        assert_eq!(login(&server).await.status(), 503);
        server.set_default(None);
        assert_eq!(login(&server).await.status(), 200);

        // Faults answer before the password is checked.
        server.script([Fault::status(503)]);
        assert_eq!(post(&server, credentials(USER, "wrong")).await.status(), 503);

        assert_eq!(server.login_requests(), 13);
        assert_eq!(server.logins_ok(), 2);
        let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [500, 302, 200, 200, 429, 429, 400, 200, 502, 503, 503, 200, 503]
        );
    }

    #[tokio::test]
    async fn delay_then_normal_answer() {
        let server = StandIn::start(options()).expect("start");
        server.script([Fault::Delay(Duration::from_millis(300))]);
        let started = Instant::now();
        let response = login(&server).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(response.status(), 200);
        assert!(is_expire_format(
            claims(&token_of(response).await)["expire"]
                .as_str()
                .expect("expire")
        ));
        // The delayed answer still checks the password.
        server.script([Fault::Delay(Duration::from_millis(10))]);
        assert_eq!(post(&server, credentials(USER, "wrong")).await.status(), 400);
        assert_eq!(server.logins_ok(), 1);
    }

    #[tokio::test]
    async fn dribble_sends_the_body_slowly() {
        let server = StandIn::start(options()).expect("start");
        server.script([Fault::Dribble {
            total: 1000,
            chunk: 250,
            every: Duration::from_millis(100),
        }]);
        let started = Instant::now();
        let mut response = login(&server).await;
        assert_eq!(response.status(), 200);
        let headers_at = started.elapsed();
        assert_eq!(response.content_length(), Some(1000));
        let mut body = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = response.chunk().await.expect("chunk") {
            chunks += 1;
            body.extend_from_slice(&chunk);
        }
        let body_at = started.elapsed();
        assert!(body_at >= Duration::from_millis(400), "{body_at:?}");
        assert!(
            body_at >= headers_at + Duration::from_millis(250),
            "headers come at once, the body slowly: {headers_at:?}, {body_at:?}"
        );
        assert!(chunks >= 4);
        assert_eq!(body.len(), 1000);
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("padded JSON");
        let token = parsed["token"].as_str().expect("token");
        assert_eq!(me(&server, &format!("Bearer {token}")).await.status(), 200);
        assert_eq!(server.logins_ok(), 1);
    }

    #[tokio::test]
    async fn a_client_leaving_mid_dribble_does_not_hurt_the_server() {
        let server = StandIn::start(options()).expect("start");
        server.script([Fault::Dribble {
            total: 10_000,
            chunk: 10,
            every: Duration::from_millis(20),
        }]);
        let mut response = login(&server).await;
        assert_eq!(response.status(), 200);
        let first = response.chunk().await.expect("chunk");
        assert!(first.is_some());
        drop(response);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(login(&server).await.status(), 200);
        let records = server.requests();
        assert_eq!(records.len(), 2);
    }

    #[tokio::test]
    async fn huge_bodies_with_and_without_length() {
        let server = StandIn::start(options()).expect("start");
        let size = 3 * 1024 * 1024 + 7;
        server.script([
            Fault::Huge {
                bytes: size,
                chunked: false,
            },
            Fault::Huge {
                bytes: size,
                chunked: true,
            },
            Fault::Huge {
                bytes: 5,
                chunked: false,
            },
        ]);
        let sized = login(&server).await;
        assert_eq!(sized.content_length(), Some(size as u64));
        let body = sized.bytes().await.expect("body");
        assert_eq!(body.len(), size);
        assert!(body.starts_with(HUGE_PREFIX) && body.ends_with(HUGE_SUFFIX));
        serde_json::from_slice::<serde_json::Value>(&body).expect("JSON-ish is JSON");

        let chunked = login(&server).await;
        assert_eq!(header_str(&chunked, "content-length"), None);
        assert_eq!(
            header_str(&chunked, "transfer-encoding").as_deref(),
            Some("chunked")
        );
        assert_eq!(chunked.bytes().await.expect("body").len(), size);

        assert_eq!(login(&server).await.bytes().await.expect("body").len(), 5);
        assert_eq!(server.logins_ok(), 0);
    }

    #[tokio::test]
    async fn broken_token_faults() {
        let server = StandIn::start(options()).expect("start");
        server.script([
            Fault::NotJwt,
            Fault::BadBase64,
            Fault::NonJsonClaims,
            Fault::BadExpire,
            Fault::Expired,
        ]);

        let not_jwt = token_of(login(&server).await).await;
        assert_eq!(not_jwt, "not-a-jwt");

        let bad_base64 = token_of(login(&server).await).await;
        assert_eq!(bad_base64.split('.').count(), 3);
        let payload = bad_base64.split('.').nth(1).expect("payload");
        assert!(URL_SAFE_NO_PAD.decode(payload).is_err());

        let non_json = token_of(login(&server).await).await;
        assert_eq!(non_json.split('.').count(), 3);
        assert!(serde_json::from_slice::<serde_json::Value>(&segment(&non_json, 1)).is_err());

        let bad_expire = token_of(login(&server).await).await;
        assert_eq!(claims(&bad_expire)["expire"], "yesterday-ish");
        assert_eq!(claims(&bad_expire)["type"], "agent");

        let expired = token_of(login(&server).await).await;
        let expire = claims(&expired)["expire"].as_str().expect("expire").to_owned();
        assert!(is_expire_format(&expire));
        assert!(parse_expire(&expire).expect("parse") < SystemTime::now());
        assert_eq!(me(&server, &format!("Bearer {expired}")).await.status(), 401);

        // Expired follows the claim style.
        server.set_claim_style(ClaimStyle::Exp);
        server.script([Fault::Expired]);
        let standard = claims(&token_of(login(&server).await).await);
        assert!(standard["exp"].as_i64().expect("exp") < unix_seconds(SystemTime::now()));

        assert_eq!(server.logins_ok(), 0);
        let issued = server.issued_tokens();
        assert_eq!(issued.len(), 6);
        assert_eq!(issued[0], not_jwt);
        assert_eq!(issued[4], expired);
    }

    #[tokio::test]
    async fn server_date_skew_moves_date_and_expiry() {
        let server = StandIn::start(options()).expect("start");
        server.script([Fault::ServerDateSkew(-3600)]);
        let now = SystemTime::now();
        let response = login(&server).await;
        assert_eq!(response.status(), 200);
        let date = header_str(&response, "date").expect("date");
        assert_eq!(
            response.headers().get_all("date").iter().count(),
            1,
            "one Date header"
        );
        let parsed = PrimitiveDateTime::parse(
            &date,
            format_description!(
                "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
            ),
        )
        .expect("HTTP-date")
        .assume_utc();
        let skew = OffsetDateTime::from(now) - parsed;
        assert!(
            (skew.whole_seconds() - 3600).abs() <= 2,
            "{date} is not an hour behind"
        );
        let expire = claims(&token_of(response).await)["expire"]
            .as_str()
            .expect("expire")
            .to_owned();
        let expiry = parse_expire(&expire).expect("parse");
        // 20 s lifetime from a clock an hour behind: already in the past.
        assert!(expiry < now);
        assert!(now.duration_since(expiry).expect("past") < Duration::from_secs(3600));
        assert_eq!(server.logins_ok(), 1);
    }

    #[tokio::test]
    async fn close_drops_the_connection() {
        let server = StandIn::start(options()).expect("start");
        server.script([Fault::Close]);
        let result = client()
            .post(format!("{}{LOGIN_PATH}", server.base_url()))
            .body(credentials(USER, PASSWORD))
            .send()
            .await;
        assert!(result.is_err(), "{result:?}");
        assert_eq!(login(&server).await.status(), 200);
        let records = server.requests();
        assert_eq!(records[0].status, 0);
        assert_eq!(records[1].status, 200);
        assert_eq!(server.login_requests(), 2);
    }

    #[tokio::test]
    async fn users_and_lifetime_can_change() {
        let server = StandIn::start(options()).expect("start");
        server.set_password(USER, "new-password");
        assert_eq!(login(&server).await.status(), 400);
        assert_eq!(
            post(&server, credentials(USER, "new-password")).await.status(),
            200
        );
        server.set_password("second@example.com", "pw2");
        let token = token_of(post(&server, credentials("second@example.com", "pw2")).await).await;
        assert_eq!(claims(&token)["agent"]["username"], "second@example.com");
        server.remove_user("second@example.com");
        assert_eq!(
            post(&server, credentials("second@example.com", "pw2"))
                .await
                .status(),
            400
        );

        server.set_lifetime(Duration::from_millis(1500));
        let before = SystemTime::now();
        let token = token_of(post(&server, credentials(USER, "new-password")).await).await;
        let after = SystemTime::now();
        let expiry = parse_expire(claims(&token)["expire"].as_str().expect("expire")).expect("parse");
        // Sub-second lifetimes survive: the expiry is issue time + 1.5 s, to
        // the microsecond.
        assert!(expiry >= before + Duration::from_millis(1499), "{expiry:?}");
        assert!(expiry <= after + Duration::from_millis(1500), "{expiry:?}");
    }

    #[tokio::test]
    async fn debug_output_holds_no_secrets() {
        let opts = options();
        assert!(!format!("{opts:?}").contains(PASSWORD));
        let server = StandIn::start(opts).expect("start");
        let token = token_of(login(&server).await).await;
        let shown = format!("{server:?}");
        assert!(shown.contains(USER));
        assert!(!shown.contains(PASSWORD));
        assert!(!shown.contains(&token));
        let records = format!("{:?}", server.requests());
        assert!(!records.contains(PASSWORD));
        assert!(!records.contains(&token));
    }

    #[tokio::test]
    async fn runs_on_the_callers_runtime_and_stops() {
        let server = StandIn::start_in_runtime(options()).await.expect("start");
        let addr = server.addr();
        assert_eq!(server.base_url(), format!("http://{addr}"));
        assert_eq!(login(&server).await.status(), 200);
        server.shutdown();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn plain_sync_use_and_shutdown() {
        use std::io::{Read as _, Write as _};

        let server = StandIn::start(options()).expect("start");
        let addr = server.addr();
        let body = credentials(USER, PASSWORD);
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            stream,
            "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nCookie: token=stale\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("\r\nx-request-id: "));
        assert!(server.requests()[0].had_cookie_header);
        assert_eq!(server.logins_ok(), 1);
        server.shutdown();
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    #[test]
    fn handles_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<StandIn>();
        assert_send_sync::<Fault>();
        assert_send_sync::<LoginRecord>();
    }

    #[test]
    fn date_and_expire_formats() {
        let t = UNIX_EPOCH + Duration::from_micros(1_796_375_702_123_456);
        assert_eq!(format_expire(t, false), "2026-12-04T09:15:02.123456Z");
        assert_eq!(format_expire(t, true), "2026-12-04 09:15:02.123456");
        assert_eq!(format_http_date(t), "Fri, 04 Dec 2026 09:15:02 GMT");
        assert_eq!(parse_expire("2026-12-04T09:15:02.123456Z"), Some(t));
        assert_eq!(parse_expire("2026-12-04 09:15:02.123456"), Some(t));
        assert_eq!(parse_expire("yesterday-ish"), None);
    }
}
