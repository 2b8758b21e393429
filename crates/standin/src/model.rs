//! The stand-in's vocabulary: options, records, claim styles, the constant
//! answers, and time and id helpers.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// The login path (no `/v1.0` prefix, like the real server).
pub const LOGIN_PATH: &str = "/auth/login";
/// The "who am I" path, a cheap check that a token works.
pub const ME_PATH: &str = "/v1.0/me";
/// Largest login body read; anything larger is answered with a 400.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// `ANY /v1.0/echo[/...]` answers what arrived, as JSON (see `echo`).
pub const ECHO_PATH: &str = "/v1.0/echo";
/// `GET /v1.0/bytes/{n}` answers `n` bytes of [`BYTES_PATTERN`], streamed.
pub const BYTES_PATH: &str = "/v1.0/bytes/";
/// The body of `/v1.0/bytes/{n}`: byte `i` is `BYTES_PATTERN[i % 16]`.
pub const BYTES_PATTERN: &[u8; 16] = b"0123456789abcdef";
/// `Max-Age` of the login cookie: the real server's 7 days.
pub const COOKIE_MAX_AGE_SECS: u64 = 7 * 24 * 60 * 60;

/// At most this many request records and issued tokens are kept (oldest
/// dropped first), so a long benchmark does not grow without bound.
pub(crate) const HISTORY_LIMIT: usize = 100_000;

/// How far in the past the `expire` of a [`Fault::Expired`](crate::Fault::Expired) token lies.
pub(crate) const EXPIRED_AGO: Duration = Duration::from_secs(3600);

pub(crate) const RATE_LIMITED_BODY: &str = r#"{"error":{"status":"RESOURCE_EXHAUSTED","reason":"RATE_LIMIT_EXCEEDED","message":"too many requests"}}"#;
pub(crate) const UNAUTHENTICATED_BODY: &str = r#"{"error":{"status":"UNAUTHENTICATED","reason":"INVALID_CREDENTIALS","message":"invalid or expired token"}}"#;
pub(crate) const NOT_FOUND_BODY: &str = "404 page not found";
pub(crate) const JSON: &str = "application/json; charset=utf-8";

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

/// How to start a [`StandIn`](crate::StandIn).
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
    /// ([`Fault::Close`](crate::Fault::Close)).
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
pub(crate) fn parse_expire(s: &str) -> Option<SystemTime> {
    let iso = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]Z");
    let legacy = format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]");
    let parsed = PrimitiveDateTime::parse(s, iso)
        .or_else(|_| PrimitiveDateTime::parse(s, legacy))
        .ok()?;
    Some(parsed.assume_utc().into())
}

pub(crate) fn add_or_now(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d).unwrap_or(t)
}

pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn uuid_like() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        0x8000 | fastrand::u16(..0x4000),
        fastrand::u64(..1 << 48)
    )
}

/// How a request authenticated (or tried to), for the tests' view of the
/// server. Holds no secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthVia {
    #[default]
    None,
    TokenCookie,
    TokenQuery,
    Bearer,
    KeyCookie,
    KeyQuery,
}
