//! Faults on demand: one misbehaving answer to a login.

use std::time::Duration;

use crate::model::{JSON, RATE_LIMITED_BODY};

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
    /// For a key `POST` only (a login answers normally): the key is made as
    /// asked, but the answer carries this id instead of the new key's (a
    /// lying server: the id of a hand-made key, or of the key in use).
    KeyAnswerId(String),
    /// For a key `POST` only: the key is made as asked, but the answer
    /// names it this instead of the name asked for.
    KeyAnswerName(String),
    /// For a key `POST` only: the key is made as asked, but the answer's
    /// `token` is another secret with the same prefix, one the server does
    /// not accept (a key that does not work).
    KeyAnswerWrongToken,
    /// Key creations only: make the key as asked (it lives), but answer
    /// with a `tm_expire` an hour in the past (a server that lies in its
    /// answer, not in its database).
    ExpiredAnswer,
    /// Key calls only (`POST /v1.0/accesskeys`): create the key normally,
    /// but answer with these `tm_create` and `tm_expire` strings instead of
    /// the real ones (a server that lies about a key's times; the stored
    /// key keeps its real times). Ignored by logins.
    KeyTimes {
        /// The `tm_create` to answer, e.g. `9999-12-31T23:59:59.000000Z`.
        tm_create: String,
        /// The `tm_expire` to answer.
        tm_expire: String,
    },
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

pub(crate) fn fault_name(fault: &Fault) -> &'static str {
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
        Fault::KeyAnswerId(_) => "key-answer-id",
        Fault::KeyAnswerName(_) => "key-answer-name",
        Fault::KeyAnswerWrongToken => "key-answer-wrong-token",
        Fault::ExpiredAnswer => "expired-answer",
        Fault::KeyTimes { .. } => "key-times",
    }
}
