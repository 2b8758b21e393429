//! The server proper: shared state, the accept loop, the login and `me` handlers.

use super::*;

use super::body::{Dribble, Huge, Payload};
use super::faults::fault_name;

/// The shared state of one server.
pub(super) struct Inner {
    pub(super) key: Vec<u8>,
    pub(super) customer_id: String,
    pub(super) nonce: u64,
    pub(super) next_request: AtomicU64,
    pub(super) login_requests: AtomicU64,
    pub(super) logins_ok: AtomicU64,
    pub(super) state: Mutex<State>,
    pub(super) keys: Mutex<super::keys::KeyStore>,
}

pub(super) struct State {
    pub(super) users: HashMap<String, User>,
    pub(super) lifetime: Duration,
    pub(super) claim_style: ClaimStyle,
    pub(super) rate_limit: Option<RateLimit>,
    pub(super) buckets: HashMap<IpAddr, Bucket>,
    pub(super) script: VecDeque<Fault>,
    pub(super) default_fault: Option<Fault>,
    pub(super) records: VecDeque<LoginRecord>,
    pub(super) issued: VecDeque<String>,
    /// Seconds added to real time in every answer's `Date` header that
    /// does not set its own (see [`StandIn::set_date_offset`]).
    pub(super) date_offset: Option<i64>,
}

pub(super) struct User {
    pub(super) password: String,
    pub(super) id: String,
    pub(super) name: String,
    /// Permission bits of the agent (see `keys`): customer admin by default.
    pub(super) permission: u64,
}

impl User {
    pub(super) fn new(username: &str, password: &str) -> User {
        User {
            password: password.to_owned(),
            id: uuid_like(),
            name: display_name(username),
            permission: super::keys::PERMISSION_CUSTOMER_ADMIN,
        }
    }
}

pub(super) fn display_name(username: &str) -> String {
    username.split('@').next().unwrap_or(username).to_owned()
}

pub(super) struct Bucket {
    pub(super) tokens: f64,
    pub(super) last: Instant,
}

/// The `agent` claim: a snapshot of the agent, as the real server writes it.
#[derive(Serialize)]
pub(super) struct AgentClaim {
    pub(super) id: String,
    pub(super) customer_id: String,
    pub(super) username: String,
    pub(super) name: String,
    pub(super) permission: u64,
}

#[derive(Serialize)]
pub(super) struct Claims {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) agent: AgentClaim,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) expire: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) iat: Option<i64>,
}

#[derive(Serialize)]
pub(super) struct LoginAnswer<'a> {
    username: &'a str,
    token: &'a str,
}

impl Inner {
    pub(super) fn new(opts: StandInOptions) -> Inner {
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
            keys: Mutex::new(super::keys::KeyStore::new()),
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
                date_offset: None,
            }),
        }
    }

    /// The state; a panic elsewhere while holding the lock does not make the
    /// server unusable.
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The access keys (a lock of their own).
    pub(super) fn keys(&self) -> MutexGuard<'_, super::keys::KeyStore> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn request_id(&self) -> String {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:08}", self.nonce)
    }

    /// Takes one token from the client's bucket; false when it is empty.
    pub(super) fn admit(&self, client: IpAddr) -> bool {
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

    pub(super) fn next_fault(&self) -> Option<Fault> {
        let mut state = self.state();
        match state.script.pop_front() {
            Some(fault) => Some(fault),
            None => state.default_fault.clone(),
        }
    }

    pub(super) fn record(&self, record: LoginRecord) {
        let mut state = self.state();
        if state.records.len() >= HISTORY_LIMIT {
            state.records.pop_front();
        }
        state.records.push_back(record);
    }

    pub(super) fn hand_out(&self, token: &str) {
        let mut state = self.state();
        if state.issued.len() >= HISTORY_LIMIT {
            state.issued.pop_front();
        }
        state.issued.push_back(token.to_owned());
    }

    /// The agent claim for `username`: the account's, or a made-up one for
    /// a username the server does not know (faults answer for any name).
    pub(super) fn agent(&self, username: &str) -> AgentClaim {
        let state = self.state();
        let (id, name, permission) = match state.users.get(username) {
            Some(user) => (user.id.clone(), user.name.clone(), user.permission),
            None => (
                uuid_like(),
                display_name(username),
                super::keys::PERMISSION_CUSTOMER_ADMIN,
            ),
        };
        AgentClaim {
            id,
            customer_id: self.customer_id.clone(),
            username: username.to_owned(),
            name,
            permission,
        }
    }

    pub(super) fn claims(
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

    pub(super) fn sign(&self, claims: &impl Serialize) -> Option<String> {
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
    pub(super) fn verify(&self, token: &str) -> Option<serde_json::Value> {
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
pub(super) struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped on purpose (Fault::Close)")
    }
}

impl std::error::Error for DropConnection {}

pub(super) type Answer = Result<Response<Payload>, DropConnection>;

/// Accepts connections until told to stop.
pub(super) async fn serve(listener: TcpListener, inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
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
pub(super) async fn handle(inner: Arc<Inner>, client: IpAddr, req: Request<Incoming>) -> Answer {
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
    let mut auth = super::keys::AuthVia::None;
    let answer = if path.starts_with(super::keys::ACCESSKEYS_PATH) {
        super::keys::route(&inner, req, &request_id, &mut auth).await
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

pub(super) async fn route(
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

pub(super) async fn login(inner: &Inner, req: Request<Incoming>, username: &mut Option<String>) -> Answer {
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

pub(super) fn style_and_lifetime(inner: &Inner) -> (ClaimStyle, Duration) {
    let state = inner.state();
    (state.claim_style, state.lifetime)
}

/// The normal login path, with the server's clock at `clock`.
pub(super) fn answer_login(
    inner: &Inner,
    username: Option<&str>,
    password: Option<&str>,
    clock: SystemTime,
) -> Response<Payload> {
    answer_login_with(inner, username, password, clock, None)
}

/// The normal login path, with `extra` merged into the claims ([`Fault::Claims`]).
pub(super) fn answer_login_with(
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
pub(super) fn merged(claims: &Claims, extra: &serde_json::Value) -> serde_json::Value {
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
pub(super) fn bad_token(inner: &Inner, username: &str, token: String) -> Response<Payload> {
    inner.hand_out(&token);
    token_answer(username, &token)
}

pub(super) fn login_body(username: &str, token: &str) -> Vec<u8> {
    serde_json::to_vec(&LoginAnswer { username, token }).unwrap_or_default()
}

pub(super) fn token_answer(username: &str, token: &str) -> Response<Payload> {
    let mut response = json(StatusCode::OK, login_body(username, token));
    set_cookie(&mut response, token);
    response
}

pub(super) fn set_cookie(response: &mut Response<Payload>, token: &str) {
    let cookie = format!("token={token}; Path=/; Max-Age={COOKIE_MAX_AGE_SECS}; Secure; HttpOnly");
    set(response, header::SET_COOKIE, &cookie);
}

pub(super) fn me(inner: &Inner, req: &Request<Incoming>) -> Response<Payload> {
    match request_token(req).and_then(|token| inner.verify(token)) {
        Some(agent) => json(StatusCode::OK, serde_json::to_vec(&agent).unwrap_or_default()),
        None => json(StatusCode::UNAUTHORIZED, UNAUTHENTICATED_BODY),
    }
}

/// The token of a request, where the real server looks: a `token` cookie
/// first, then `Authorization: Bearer ` (exactly), then `?token=`.
pub(super) fn request_token(req: &Request<Incoming>) -> Option<&str> {
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

pub(super) fn rate_limited() -> Response<Payload> {
    let mut response = json(StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED_BODY);
    set(&mut response, header::RETRY_AFTER, "1");
    response
}

pub(super) fn canned(status: u16, body: String, headers: &[(String, String)]) -> Response<Payload> {
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

pub(super) fn with_body(status: StatusCode, body: Payload) -> Response<Payload> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

pub(super) fn empty(status: StatusCode) -> Response<Payload> {
    with_body(status, Payload::Full(None))
}

pub(super) fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Payload> {
    let mut response = with_body(status, Payload::full(body));
    set(&mut response, header::CONTENT_TYPE, JSON);
    response
}

pub(super) fn text(status: StatusCode, body: &'static str) -> Response<Payload> {
    let mut response = with_body(status, Payload::full(body));
    set(&mut response, header::CONTENT_TYPE, "text/plain");
    response
}

pub(super) fn set(response: &mut Response<Payload>, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}
