//! The access-key API, `/v1.0/accesskeys`, as the real server answers it
//! (`voipbin-api.md`, "Access keys").
//!
//! - A request authenticates with a token if it carries one (cookie
//!   `token`, `?token=`, `Authorization: Bearer`): a bad token is a 401 even
//!   if a key is there too. Otherwise with a key: cookie `accesskey`, then
//!   `?accesskey=`. An unknown, expired or deleted key is a 401.
//! - A key acts with the CustomerAdmin permission; an agent needs it
//!   (or project super-admin), else 403 `PERMISSION_DENIED`.
//! - `POST {"name", "detail", "expire"}`: `expire` in seconds, at least
//!   86400, else 400 `INVALID_ARGUMENT`; 200 with the key object plus
//!   `token`, shown this once.
//! - `GET` lists the keys not deleted (expired ones included), newest first,
//!   `page_size` (1..=100, else 100) and `page_token` (the `tm_create` of
//!   the last item of the previous page).
//! - `GET /{id}`, `DELETE /{id}` (soft), `PUT /{id}` (rename): 404 unknown,
//!   409 `STATE_INVALID` when deleted, 400 for an id that is no UUID.
//!
//! Short lifetimes: tests and the demo cannot wait a day, so the stand-in
//! has a time scale ([`StandIn::set_key_time_scale`](crate::StandIn::set_key_time_scale)): a key created with
//! `expire = 86400` lives `86400 × scale` seconds. The 86400 minimum is
//! checked on the number the client sent, as the real server does.
//!
//! Faults: [`StandIn::script_keys`](crate::StandIn::script_keys) queues [`Fault`]s consumed one per key
//! request ([`StandIn::script_key_creations`](crate::StandIn::script_key_creations): one per `POST`). `Status` answers canned without acting; `Delay` waits, then
//! acts; `Close` acts and then drops the connection (a `POST` whose answer
//! was lost: the key exists, the client never saw it); `Expired` on a
//! `POST` creates a key whose `tm_expire` is already past (a server that
//! lies); `ExpiredAnswer` on a `POST` makes a live key but answers it
//! already expired (a server that lies in its answer only);
//! [`StandIn::script_key_deletions`](crate::StandIn::script_key_deletions) queues faults for `DELETE`s only (e.g.
//! one 401); any other fault is ignored for key calls.

use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};

use crate::answer::{Answer, DropConnection, canned, json, text};
use crate::body::Payload;
use crate::faults::Fault;
use crate::model::{AuthVia, MAX_BODY_BYTES, NOT_FOUND_BODY, format_expire, parse_expire};
use crate::state::{
    ACCESSKEYS_PATH, Inner, KEY_PREFIX_LEN, KeyInfo, KeyStore, ListPaging, MIN_KEY_EXPIRE_SECS,
    PERMISSION_CUSTOMER_ADMIN, PERMISSION_PROJECT_SUPER_ADMIN, StoredKey, new_secret,
};

/// The key object as the server writes it (`token` only on creation;
/// `name` and `detail` left out when empty, as Go's `omitempty` does).
fn key_json(
    info: &KeyInfo,
    tm_update: SystemTime,
    customer_id: &str,
    token: Option<&str>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": info.id,
        "customer_id": customer_id,
        "token_prefix": info.token_prefix,
        "tm_expire": format_expire(info.tm_expire, false),
        "tm_create": format_expire(info.tm_create, false),
        "tm_update": format_expire(tm_update, false),
        "tm_delete": info.tm_delete.map(|t| format_expire(t, false)),
    });
    if !info.name.is_empty() {
        v["name"] = info.name.clone().into();
    }
    if !info.detail.is_empty() {
        v["detail"] = info.detail.clone().into();
    }
    if let Some(token) = token {
        v["token"] = token.into();
    }
    v
}

/// The error envelope: `{"error": {"status", "reason", "message", "request_id"}}`.
fn error(status: StatusCode, code: &str, reason: &str, message: &str, request_id: &str) -> Response<Payload> {
    let body = serde_json::json!({"error": {
        "status": code, "reason": reason, "message": message, "request_id": request_id,
    }});
    json(status, serde_json::to_vec(&body).unwrap_or_default())
}

pub(crate) fn unauthenticated(request_id: &str) -> Response<Payload> {
    error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "INVALID_CREDENTIALS",
        "invalid or expired credentials",
        request_id,
    )
}

/// Who is asking, once authenticated.
enum Caller {
    Key,
    Agent { permission: u64 },
}

/// True when the request carries a valid token or, failing any token, a
/// live access key (the API's other endpoints, the echo and bytes ones
/// included, accept either).
pub(crate) fn authenticated(inner: &Inner, req: &Request<Incoming>, via: &mut AuthVia) -> bool {
    authenticate(inner, req, via).is_some()
}

/// Authenticates as the real server does: a token wins over a key.
fn authenticate(inner: &Inner, req: &Request<Incoming>, via: &mut AuthVia) -> Option<Caller> {
    let cookies = || {
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .map(str::trim)
    };
    let query = || req.uri().query().into_iter().flat_map(|q| q.split('&'));
    let cookie = |name: &str| {
        cookies()
            .find_map(|c| c.strip_prefix(name))
            .filter(|v| !v.is_empty())
    };
    let param = |name: &str| {
        query()
            .find_map(|c| c.strip_prefix(name))
            .filter(|v| !v.is_empty())
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|v| !v.is_empty());

    let token = if let Some(t) = cookie("token=") {
        *via = AuthVia::TokenCookie;
        Some(t)
    } else if let Some(t) = param("token=") {
        *via = AuthVia::TokenQuery;
        Some(t)
    } else if let Some(t) = bearer {
        *via = AuthVia::Bearer;
        Some(t)
    } else {
        None
    };
    if let Some(token) = token {
        let agent = inner.verify(token)?;
        let permission = agent.get("permission").and_then(|p| p.as_u64()).unwrap_or(0);
        return Some(Caller::Agent { permission });
    }
    let key = if let Some(k) = cookie("accesskey=") {
        *via = AuthVia::KeyCookie;
        k
    } else if let Some(k) = param("accesskey=") {
        *via = AuthVia::KeyQuery;
        k
    } else {
        return None;
    };
    inner
        .keys()
        .by_secret(key, SystemTime::now())
        .map(|_| Caller::Key)
}

/// Answers a request under `/v1.0/accesskeys`.
pub(crate) async fn route(
    inner: &Inner,
    req: Request<Incoming>,
    request_id: &str,
    via: &mut AuthVia,
) -> Answer {
    let fault = {
        let mut keys = inner.keys();
        keys.requests += 1;
        match keys.post_script.pop_front() {
            Some(f) if req.method() == Method::POST => Some(f),
            Some(f) => {
                keys.post_script.push_front(f);
                keys.script.pop_front()
            }
            None => keys.script.pop_front(),
        }
    };
    // Faults for deletions only take precedence for a DELETE.
    let fault = match (req.method() == Method::DELETE)
        .then(|| inner.keys().delete_script.pop_front())
        .flatten()
    {
        Some(f) => Some(f),
        None => fault,
    };
    let mut drop_after = false;
    let mut create_expired = false;
    let mut lie = AnswerLie::default();
    let mut times = None;
    match fault {
        Some(Fault::Status {
            status,
            body,
            headers,
        }) => return Ok(canned(status, body, &headers)),
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Close) => drop_after = true,
        Some(Fault::Expired) => create_expired = true,
        Some(Fault::KeyAnswerId(id)) => lie.id = Some(id),
        Some(Fault::KeyAnswerName(name)) => lie.name = Some(name),
        Some(Fault::KeyAnswerWrongToken) => lie.wrong_token = true,
        Some(Fault::ExpiredAnswer) => lie.expired = true,
        Some(Fault::KeyTimes { tm_create, tm_expire }) => times = Some((tm_create, tm_expire)),
        _ => {}
    }

    let caller = authenticate(inner, &req, via);
    let Some(caller) = caller else {
        return Ok(unauthenticated(request_id));
    };
    if let Caller::Agent { permission } = caller
        && permission & (PERMISSION_CUSTOMER_ADMIN | PERMISSION_PROJECT_SUPER_ADMIN) == 0
    {
        return Ok(error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "PERMISSION_DENIED",
            "the agent lacks the permission",
            request_id,
        ));
    }

    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix(ACCESSKEYS_PATH).unwrap_or("");
    let method = req.method().clone();
    let failing = inner.keys().fail_deletes;
    if method == Method::DELETE
        && let Some(status) = failing
    {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(error(
            status,
            "INTERNAL",
            "DELETE_FAILED",
            "the access key could not be deleted",
            request_id,
        ));
    }
    let answer = match (method, rest) {
        (Method::GET, "" | "/") => list(inner, &req, request_id),
        (Method::POST, "" | "/") => {
            let mut answer = create(inner, req, request_id, create_expired, lie).await;
            if let Some((tm_create, tm_expire)) = times {
                answer = with_times(answer, &tm_create, &tm_expire);
            }
            let delay = inner.keys().create_answer_delay;
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            answer
        }
        (m, id) if id.starts_with('/') && !id[1..].contains('/') => {
            one(inner, m, &id[1..], req, request_id).await
        }
        _ => text(StatusCode::NOT_FOUND, NOT_FOUND_BODY),
    };
    if drop_after {
        return Err(DropConnection);
    }
    Ok(answer)
}

async fn read_json(req: Request<Incoming>) -> Option<serde_json::Value> {
    let bytes = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .ok()?
        .to_bytes();
    serde_json::from_slice(&bytes).ok()
}

/// What a lying creation answer says instead of the truth.
#[derive(Default)]
struct AnswerLie {
    id: Option<String>,
    name: Option<String>,
    wrong_token: bool,
    /// `tm_expire` an hour in the past (the stored key lives).
    expired: bool,
}

async fn create(
    inner: &Inner,
    req: Request<Incoming>,
    request_id: &str,
    expired: bool,
    lie: AnswerLie,
) -> Response<Payload> {
    let Some(body) = read_json(req).await.filter(|v| v.is_object()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "INVALID_JSON_BODY",
            "The request body is not valid JSON.",
            request_id,
        );
    };
    let field = |name: &str| body.get(name).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let expire = body.get("expire").and_then(|v| v.as_u64()).unwrap_or(0);
    if expire < MIN_KEY_EXPIRE_SECS {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "INVALID_EXPIRE",
            "expire must be at least 86400 seconds",
            request_id,
        );
    }
    let mut keys = inner.keys();
    let (mut info, secret) = keys.create(&field("name"), &field("detail"), expire);
    if expired {
        let past = SystemTime::now() - Duration::from_secs(3600);
        if let Some(k) = keys.find(&info.id) {
            k.info.tm_expire = past;
        }
        info.tm_expire = past;
    }
    // A lie changes the answer only, never the stored key.
    if let Some(id) = lie.id {
        info.id = id;
    }
    if let Some(name) = lie.name {
        info.name = name;
    }
    let secret = if lie.wrong_token {
        format!("{}{}", &secret[..KEY_PREFIX_LEN], &new_secret()[KEY_PREFIX_LEN..])
    } else {
        secret
    };
    if lie.expired {
        info.tm_expire = SystemTime::now() - Duration::from_secs(3600);
    }
    let v = key_json(&info, info.tm_create, &inner.customer_id, Some(&secret));
    json(StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default())
}

/// A 200 creation answer with its `tm_create`/`tm_expire` replaced
/// ([`Fault::KeyTimes`]); any other answer as it is.
fn with_times(answer: Response<Payload>, tm_create: &str, tm_expire: &str) -> Response<Payload> {
    if answer.status() != StatusCode::OK {
        return answer;
    }
    let Payload::Full(Some(bytes)) = answer.into_body() else {
        return json(StatusCode::INTERNAL_SERVER_ERROR, Vec::new());
    };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return json(StatusCode::INTERNAL_SERVER_ERROR, Vec::new());
    };
    v["tm_create"] = tm_create.into();
    v["tm_expire"] = tm_expire.into();
    json(StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default())
}

fn list(inner: &Inner, req: &Request<Incoming>, request_id: &str) -> Response<Payload> {
    let params: Vec<(&str, &str)> = req
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|p| p.split_once('='))
        .collect();
    let get = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let size = get("page_size")
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|s| (1..=100).contains(s))
        .unwrap_or(100);
    {
        let mut keys = inner.keys();
        keys.list_requests += 1;
        match keys.paging {
            ListPaging::Honest => {}
            ListPaging::AlternatingTokens => {
                let next = if get("page_token") == Some("A") { "B" } else { "A" };
                return broken_page(&keys, inner, size, 0, next);
            }
            ListPaging::EndlessOneKeyPerPage => {
                let n = keys.list_requests;
                return broken_page(&keys, inner, 1, n, &format!("p{n}"));
            }
        }
    }
    let before = match get("page_token").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => match parse_expire(&t.replace("%3A", ":")) {
            Some(t) => Some(t),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "INVALID_PAGE_TOKEN",
                    "page_token is not a time",
                    request_id,
                );
            }
        },
    };
    let keys = inner.keys();
    let mut live: Vec<&StoredKey> = keys
        .keys
        .iter()
        .filter(|k| k.info.tm_delete.is_none())
        .filter(|k| before.is_none_or(|b| k.info.tm_create < b))
        .collect();
    live.sort_by_key(|k| std::cmp::Reverse(k.info.tm_create));
    live.truncate(size);
    let next = live
        .last()
        .map(|k| format_expire(k.info.tm_create, false))
        .unwrap_or_default();
    let result: Vec<serde_json::Value> = live
        .iter()
        .map(|k| key_json(&k.info, k.tm_update, &inner.customer_id, None))
        .collect();
    let body = serde_json::json!({"result": result, "next_page_token": next});
    json(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default())
}

/// A page of a broken list: `size` live keys from the `skip`-th (newest
/// first, cycling), with this `next_page_token`.
fn broken_page(keys: &KeyStore, inner: &Inner, size: usize, skip: u64, next: &str) -> Response<Payload> {
    let mut live: Vec<&StoredKey> = keys.keys.iter().filter(|k| k.info.tm_delete.is_none()).collect();
    live.sort_by_key(|k| std::cmp::Reverse(k.info.tm_create));
    let result: Vec<serde_json::Value> = if live.is_empty() {
        Vec::new()
    } else {
        let start = (skip % live.len() as u64) as usize;
        live.iter()
            .cycle()
            .skip(start)
            .take(size.min(live.len()))
            .map(|k| key_json(&k.info, k.tm_update, &inner.customer_id, None))
            .collect()
    };
    let body = serde_json::json!({"result": result, "next_page_token": next});
    json(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default())
}

async fn one(
    inner: &Inner,
    method: Method,
    id: &str,
    req: Request<Incoming>,
    request_id: &str,
) -> Response<Payload> {
    if !is_uuid(id) {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "INVALID_ID",
            "The provided id is not a valid UUID.",
            request_id,
        );
    }
    let rename = if method == Method::PUT {
        read_json(req).await
    } else {
        None
    };
    let mut keys = inner.keys();
    let Some(key) = keys.find(id) else {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "NOT_FOUND",
            "no such access key",
            request_id,
        );
    };
    if key.info.tm_delete.is_some() {
        return error(
            StatusCode::CONFLICT,
            "STATE_INVALID",
            "STATE_INVALID",
            "the access key is deleted",
            request_id,
        );
    }
    match method {
        Method::GET => {}
        Method::DELETE => {
            let now = SystemTime::now();
            key.info.tm_delete = Some(now);
            key.tm_update = now;
        }
        Method::PUT => {
            let Some(body) = rename else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "INVALID_JSON_BODY",
                    "The request body is not valid JSON.",
                    request_id,
                );
            };
            if let Some(n) = body.get("name").and_then(|v| v.as_str()) {
                key.info.name = n.to_owned();
            }
            if let Some(d) = body.get("detail").and_then(|v| v.as_str()) {
                key.info.detail = d.to_owned();
            }
            key.tm_update = SystemTime::now();
        }
        _ => return text(StatusCode::NOT_FOUND, NOT_FOUND_BODY),
    }
    let v = key_json(&key.info, key.tm_update, &inner.customer_id, None);
    json(StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default())
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}
