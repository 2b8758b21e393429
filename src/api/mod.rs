//! The VoIPBIN client: one login, its outcome classified.
//!
//! The real server (see `shared/voipbin-api.md`) answers a login with 200
//! and `{"username","token"}`; every failure with 400 and an empty body;
//! rate limiting with 429 and `Retry-After`. The client keeps no cookies
//! (the server would prefer a stale `token` cookie over the header), follows
//! no redirects, caps the response body, and bounds the whole request by
//! `api.timeout`.
//!
//! - [`keys`]: the access-key client: create, list, look up, delete keys.
//! - [`budget`]: [`budget::Api`], the client with the login budget all credentials share.

pub mod budget;
pub mod keys;

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::config::ApiConfig;
use crate::schedule::FailureKind;
use crate::secret::Secret;
use crate::token::{self, Claims, TokenError};

/// The largest login response read; a token is under 16 KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// A client for one API configuration.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base_url: reqwest::Url,
    login_url: reqwest::Url,
    timeout: Duration,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("login_url", &self.login_url.as_str())
            .finish()
    }
}

/// A successful login.
#[derive(Debug)]
pub struct Login {
    pub token: Secret,
    pub claims: Claims,
    /// When the answer arrived, by our clock.
    pub received_at: OffsetDateTime,
    /// The server's clock minus ours, from its `Date` header (1 s resolution).
    pub server_skew: Option<time::Duration>,
}

/// Why a login failed. Carries the server's `X-Request-Id` where there was
/// an answer. Never holds the password, the token or the response body.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("credentials rejected (HTTP 400){}", rid(.request_id))]
    Rejected { request_id: Option<String> },
    #[error("rate limited (HTTP 429){}{}", .retry_after.map(|d| format!(", retry after {}", humantime::format_duration(d))).unwrap_or_default(), rid(.request_id))]
    RateLimited {
        retry_after: Option<Duration>,
        request_id: Option<String>,
    },
    #[error("redirect (HTTP {status}) not followed; check api.base-url{}", rid(.request_id))]
    Redirect { status: u16, request_id: Option<String> },
    /// `url` is the login URL: it holds no secret (`api.base-url` may not
    /// carry a user, password or query), and a 404 is mostly a wrong path.
    #[error("unexpected answer HTTP {status} from POST {url}{}", rid(.request_id))]
    Status {
        status: u16,
        url: String,
        request_id: Option<String>,
    },
    #[error("request failed: {0}")]
    Transport(String),
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("response body larger than {MAX_BODY} bytes")]
    TooLarge { request_id: Option<String> },
    #[error("response is not JSON with a string `token`{}", rid(.request_id))]
    BadBody { request_id: Option<String> },
    #[error("server sent an unusable token: {source}{}", rid(.request_id))]
    BadToken {
        #[source]
        source: TokenError,
        request_id: Option<String>,
    },
}

pub(crate) fn rid(request_id: &Option<String>) -> String {
    match request_id {
        Some(id) => format!(" [request id {id}]"),
        None => String::new(),
    }
}

impl LoginError {
    /// How this failure affects the retry delay.
    pub fn kind(&self) -> FailureKind {
        match self {
            LoginError::Rejected { .. } => FailureKind::Rejected,
            LoginError::RateLimited { retry_after, .. } => FailureKind::RateLimited(*retry_after),
            _ => FailureKind::Transient,
        }
    }
}

#[derive(serde::Serialize)]
struct LoginBody<'a> {
    username: &'a str,
    password: &'a str,
}

#[derive(serde::Deserialize)]
struct LoginAnswer {
    token: String,
}

/// How long a connection to the API stays open unused.
const POOL_IDLE: Duration = Duration::from_secs(5);

impl ApiClient {
    pub fn new(cfg: &ApiConfig) -> Result<ApiClient, String> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("voipbin-tokend/", env!("CARGO_PKG_VERSION")))
            // The requests of one step (a key rotation's create, test call,
            // list, deletes) follow each other within milliseconds; the
            // next step is hours or days away. A connection idle for
            // POOL_IDLE is closed: the pool's reaper stops once it is empty,
            // so an idle daemon holds no connection (nor the server one)
            // and is not woken by it (issue 18; it was 30 s: the reaper woke
            // it twice after every renewal, three timer wakes each).
            .pool_idle_timeout(POOL_IDLE)
            // As many as logins may run at once: a start with many
            // credentials reuses them (no TCP and TLS handshake per login).
            .pool_max_idle_per_host(budget::MAX_CONCURRENT_LOGINS);
        if let Some(path) = &cfg.ca_file {
            for cert in crate::config::read_ca_file(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", chain(&e)))?;
        let login_url = login_url(&cfg.base_url)?;
        Ok(ApiClient {
            http,
            base_url: cfg.base_url.clone(),
            login_url,
            timeout: cfg.timeout,
        })
    }

    pub fn login_url(&self) -> &reqwest::Url {
        &self.login_url
    }

    /// `base-url` with these path segments appended (for the key API).
    pub fn endpoint(&self, segments: &[&str]) -> reqwest::Url {
        join(&self.base_url, segments)
    }

    /// The HTTP client (no cookie store, no redirects, rustls).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The whole-request bound, `api.timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Logs in once. The token in a successful answer has been decoded
    /// and is a JWT; whether it is already expired is for the caller to
    /// judge (it knows about clock skew).
    pub async fn login(&self, username: &str, password: &Secret) -> Result<Login, LoginError> {
        // reqwest's timeout covers the body too; this outer one is a
        // belt-and-braces bound on the whole exchange.
        match tokio::time::timeout(
            self.timeout + Duration::from_millis(250),
            self.exchange(username, password),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(LoginError::Timeout(self.timeout)),
        }
    }

    async fn exchange(&self, username: &str, password: &Secret) -> Result<Login, LoginError> {
        let body = Zeroizing::new(
            serde_json::to_vec(&LoginBody {
                username,
                password: password.expose(),
            })
            .map_err(|_| LoginError::Transport("cannot encode the request".into()))?,
        );
        let response = self
            .http
            .post(self.login_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let received_at = crate::now();
        let status = response.status();
        let headers = response.headers();
        let (request_id, server_skew) = answer_meta(headers, received_at);

        match status.as_u16() {
            200 => {}
            400 => return Err(LoginError::Rejected { request_id }),
            429 => {
                return Err(LoginError::RateLimited {
                    retry_after: retry_after(headers, received_at),
                    request_id,
                });
            }
            s @ 300..=399 => {
                return Err(LoginError::Redirect {
                    status: s,
                    request_id,
                });
            }
            s => {
                return Err(LoginError::Status {
                    status: s,
                    url: self.login_url.to_string(),
                    request_id,
                });
            }
        }

        let bytes = read_capped(response).await.map_err(|e| match e {
            BodyError::TooLarge => LoginError::TooLarge {
                request_id: request_id.clone(),
            },
            BodyError::Transport(e) => self.transport(e),
        })?;
        let answer: LoginAnswer = serde_json::from_slice(&bytes).map_err(|_| LoginError::BadBody {
            request_id: request_id.clone(),
        })?;
        let token = Secret::new(answer.token);
        let claims =
            token::decode(token.expose()).map_err(|source| LoginError::BadToken { source, request_id })?;
        Ok(Login {
            token,
            claims,
            received_at,
            server_skew,
        })
    }

    fn transport(&self, e: reqwest::Error) -> LoginError {
        if e.is_timeout() {
            LoginError::Timeout(self.timeout)
        } else {
            LoginError::Transport(chain(&e))
        }
    }
}

/// What every answer's headers say: the server's `X-Request-Id` (cut to
/// 128 characters: it is logged) and its clock minus ours, from `Date`.
pub(crate) fn answer_meta(
    headers: &HeaderMap,
    received_at: OffsetDateTime,
) -> (Option<String>, Option<time::Duration>) {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(128).collect::<String>());
    let server_skew = headers
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s).ok())
        .map(|t| OffsetDateTime::from(t) - received_at);
    (request_id, server_skew)
}

/// A client for a stand-in on loopback (tests).
#[cfg(test)]
pub(crate) fn for_standin(server: &voipbin_tokend_standin::StandIn) -> ApiClient {
    ApiClient::new(&ApiConfig {
        base_url: server.base_url().parse().expect("a URL"),
        timeout: Duration::from_secs(5),
        ca_file: None,
        max_logins_per_second: 0,
    })
    .expect("a client")
}

/// `base` with `segments` appended to its path (a trailing slash on the
/// base is not doubled; a base that cannot be one is left as it is).
fn join(base: &reqwest::Url, segments: &[&str]) -> reqwest::Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// The login URL for `base`: its path plus `auth/login`, with or without
/// a trailing slash (`http://h/api` and `http://h/api/` both give
/// `http://h/api/auth/login`). `check` prints exactly this.
pub fn login_url(base: &reqwest::Url) -> Result<reqwest::Url, String> {
    if base.cannot_be_a_base() {
        return Err("api.base-url cannot be a base".to_string());
    }
    Ok(join(base, &["auth", "login"]))
}

/// Why an answer's body could not be read whole.
pub(crate) enum BodyError {
    /// Over [`MAX_BODY`] (by `Content-Length`, or counted while reading).
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads the body, refusing it as soon as it passes [`MAX_BODY`]. The
/// buffer is zeroed when dropped: it may hold a token or a key.
pub(crate) async fn read_capped(mut response: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    if response.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if buf.len() + chunk.len() > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// `Retry-After` as seconds or an HTTP date, capped at a day.
pub(crate) fn retry_after(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = OffsetDateTime::from(httpdate::parse_http_date(value).ok()?);
        Duration::try_from(at - now).unwrap_or(Duration::ZERO)
    };
    Some(d.min(Duration::from_secs(86_400)))
}

/// An error and its sources, joined with ": ".
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_url_is_base_plus_auth_login() {
        let mk = |base: &str| {
            let cfg = ApiConfig {
                base_url: base.parse().unwrap(),
                timeout: Duration::from_secs(1),
                ca_file: None,
                max_logins_per_second: 0,
            };
            ApiClient::new(&cfg).unwrap().login_url().to_string()
        };
        assert_eq!(
            mk("https://api.voipbin.net"),
            "https://api.voipbin.net/auth/login"
        );
        assert_eq!(
            mk("https://api.voipbin.net/"),
            "https://api.voipbin.net/auth/login"
        );
        assert_eq!(
            mk("http://127.0.0.1:9/prefix/"),
            "http://127.0.0.1:9/prefix/auth/login"
        );
        assert_eq!(mk("http://127.0.0.1:9/api"), "http://127.0.0.1:9/api/auth/login");
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date((now + time::Duration::seconds(90)).into());
        h.insert(RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(90)));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn error_kinds() {
        assert_eq!(
            LoginError::Rejected { request_id: None }.kind(),
            FailureKind::Rejected
        );
        let e = LoginError::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
            request_id: Some("abc".into()),
        };
        assert_eq!(e.kind(), FailureKind::RateLimited(Some(Duration::from_secs(2))));
        assert_eq!(
            e.to_string(),
            "rate limited (HTTP 429), retry after 2s [request id abc]"
        );
    }
}
