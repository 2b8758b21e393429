//! The server proper: shared state, the accept loop, the login and `me` handlers.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::answer::{Answer, DropConnection, canned, empty, json, set, text, with_body};
use crate::body::{Dribble, Huge, Payload};
use crate::echo;
use crate::faults::{Fault, fault_name};
use crate::keys;
use crate::model::{
    AuthVia, BYTES_PATH, COOKIE_MAX_AGE_SECS, ClaimStyle, ECHO_PATH, EXPIRED_AGO, JSON, LOGIN_PATH,
    LoginRecord, MAX_BODY_BYTES, ME_PATH, NOT_FOUND_BODY, RATE_LIMITED_BODY, UNAUTHENTICATED_BODY,
    add_or_now, format_http_date,
};
use crate::state::{ACCESSKEYS_PATH, Claims, Inner};

/// Accepts connections until told to stop.
pub(crate) async fn serve(listener: TcpListener, inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
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
pub(crate) async fn handle(inner: Arc<Inner>, client: IpAddr, req: Request<Incoming>) -> Answer {
    let at = SystemTime::now();
    let request_id = inner.request_id();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let had_cookie_header = req.headers().contains_key(header::COOKIE);
    let key_in_query = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("accesskey=")));

    let mut username = None;
    let mut auth = AuthVia::None;
    let answer = if path.starts_with(ACCESSKEYS_PATH) {
        keys::route(&inner, req, &request_id, &mut auth).await
    } else if is_echo_path(&path) || path.starts_with(BYTES_PATH) {
        echo::route(&inner, req, &request_id, &mut auth).await
    } else {
        route(&inner, client, req, &mut username).await
    };
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
        auth,
        key_in_query,
    });
    let date_offset = inner.state().date_offset;
    answer.map(|mut response| {
        if let Some(seconds) = date_offset
            && !response.headers().contains_key(header::DATE)
        {
            let now = SystemTime::now();
            let offset = Duration::from_secs(seconds.unsigned_abs());
            let clock = if seconds >= 0 {
                now.checked_add(offset)
            } else {
                now.checked_sub(offset)
            }
            .unwrap_or(now);
            set(&mut response, header::DATE, &format_http_date(clock));
        }
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("x-request-id"), value);
        }
        response
    })
}

/// `/v1.0/echo` and everything under `/v1.0/echo/`.
fn is_echo_path(path: &str) -> bool {
    path.strip_prefix(ECHO_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub(crate) async fn route(
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

pub(crate) async fn login(inner: &Inner, req: Request<Incoming>, username: &mut Option<String>) -> Answer {
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
        // Key-call faults: a login answers normally.
        Fault::KeyAnswerId(_)
        | Fault::KeyAnswerName(_)
        | Fault::KeyAnswerWrongToken
        | Fault::ExpiredAnswer
        | Fault::KeyTimes { .. } => answer_login(inner, name, password.as_deref(), now),
    };
    Ok(response)
}

pub(crate) fn style_and_lifetime(inner: &Inner) -> (ClaimStyle, Duration) {
    let state = inner.state();
    (state.claim_style, state.lifetime)
}

/// The normal login path, with the server's clock at `clock`.
pub(crate) fn answer_login(
    inner: &Inner,
    username: Option<&str>,
    password: Option<&str>,
    clock: SystemTime,
) -> Response<Payload> {
    answer_login_with(inner, username, password, clock, None)
}

/// The normal login path, with `extra` merged into the claims ([`Fault::Claims`]).
pub(crate) fn answer_login_with(
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
pub(crate) fn merged(claims: &Claims, extra: &serde_json::Value) -> serde_json::Value {
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
pub(crate) fn bad_token(inner: &Inner, username: &str, token: String) -> Response<Payload> {
    inner.hand_out(&token);
    token_answer(username, &token)
}

pub(crate) fn login_body(username: &str, token: &str) -> Vec<u8> {
    serde_json::to_vec(&LoginAnswer { username, token }).unwrap_or_default()
}

pub(crate) fn token_answer(username: &str, token: &str) -> Response<Payload> {
    let mut response = json(StatusCode::OK, login_body(username, token));
    set_cookie(&mut response, token);
    response
}

pub(crate) fn set_cookie(response: &mut Response<Payload>, token: &str) {
    let cookie = format!("token={token}; Path=/; Max-Age={COOKIE_MAX_AGE_SECS}; Secure; HttpOnly");
    set(response, header::SET_COOKIE, &cookie);
}

pub(crate) fn me(inner: &Inner, req: &Request<Incoming>) -> Response<Payload> {
    match request_token(req).and_then(|token| inner.verify(token)) {
        Some(agent) => json(StatusCode::OK, serde_json::to_vec(&agent).unwrap_or_default()),
        None => json(StatusCode::UNAUTHORIZED, UNAUTHENTICATED_BODY),
    }
}

/// The token of a request, where the real server looks: a `token` cookie
/// first, then `Authorization: Bearer ` (exactly), then `?token=`.
pub(crate) fn request_token(req: &Request<Incoming>) -> Option<&str> {
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

pub(crate) fn rate_limited() -> Response<Payload> {
    let mut response = json(StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED_BODY);
    set(&mut response, header::RETRY_AFTER, "1");
    response
}

#[derive(Serialize)]
struct LoginAnswer<'a> {
    username: &'a str,
    token: &'a str,
}
