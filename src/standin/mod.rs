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
//!
//! # Layout
//!
//! - this file: the public face: [`StandIn`], its options and records;
//! - `faults`: [`Fault`], the misbehaving answers a test can script;
//! - `server`: the shared state, the accept loop and the request handlers;
//! - `keys`: the access-key API (`/v1.0/accesskeys`), with a time scale for short key lifetimes;
//! - `body`: response bodies (whole, dribbled, huge).

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

mod body;
mod faults;
mod keys;
mod server;
#[cfg(test)]
mod tests;

pub use faults::Fault;
pub use keys::{
    ACCESSKEYS_PATH, AuthVia, KeyInfo, ListPaging, MIN_KEY_EXPIRE_SECS, PERMISSION_CUSTOMER_ADMIN,
    PERMISSION_CUSTOMER_AGENT, PERMISSION_PROJECT_SUPER_ADMIN,
};
use server::{Inner, User, serve};

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
    /// How it authenticated (key API calls; `None` for the others).
    pub auth: AuthVia,
    /// Whether the query string carried `accesskey=` (a key in a URL ends
    /// up in proxy logs: a client must never do it).
    pub key_in_query: bool,
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
