//! Unit tests of the stand-in: it must say no the way the real server does.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::body::{HUGE_PREFIX, HUGE_SUFFIX};
use crate::model::{JSON, parse_expire, unix_seconds};
use crate::{
    ACCESSKEYS_PATH, AuthVia, ClaimStyle, Fault, LOGIN_PATH, LoginRecord, MAX_BODY_BYTES, ME_PATH,
    PERMISSION_CUSTOMER_ADMIN, PERMISSION_CUSTOMER_AGENT, RateLimit, StandIn, StandInOptions, format_expire,
    format_http_date,
};

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
    assert_eq!(
        agent["permission"], PERMISSION_CUSTOMER_ADMIN,
        "an admin agent by default"
    );
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
    let agent: serde_json::Value = serde_json::from_slice(&ok.bytes().await.expect("body")).expect("json");
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

mod keys {
    use super::*;

    async fn call(
        server: &StandIn,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = client().request(method, format!("{}{ACCESSKEYS_PATH}{path}", server.base_url()));
        if let Some(key) = key {
            req = req.header("cookie", format!("accesskey={key}"));
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = req.send().await.expect("key request");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn create_body(name: &str, expire: u64) -> Option<serde_json::Value> {
        Some(serde_json::json!({"name": name, "detail": "d", "expire": expire}))
    }

    #[tokio::test]
    async fn a_key_creates_lists_and_deletes_keys_and_dies_when_deleted() {
        let server = StandIn::start(options()).unwrap();
        let (boot_id, boot) = server.create_key("admin page", 86_400);
        assert!(boot.starts_with("vb_") && boot.len() == 35, "{boot}");

        let (status, made) = call(
            &server,
            reqwest::Method::POST,
            "",
            Some(&boot),
            create_body("n1", 86_400),
        )
        .await;
        assert_eq!(status, 200, "{made}");
        let new_key = made["token"].as_str().unwrap().to_owned();
        assert_eq!(made["token_prefix"].as_str().unwrap(), &new_key[..11]);
        assert_eq!(made["name"], "n1");
        assert!(made["tm_delete"].is_null());
        let created = parse_expire(made["tm_create"].as_str().unwrap()).unwrap();
        let expire = parse_expire(made["tm_expire"].as_str().unwrap()).unwrap();
        assert_eq!(
            expire.duration_since(created).unwrap(),
            Duration::from_secs(86_400)
        );

        // The list never shows the key itself, newest first.
        let (status, list) = call(&server, reqwest::Method::GET, "", Some(&new_key), None).await;
        assert_eq!(status, 200);
        let result = list["result"].as_array().unwrap();
        assert_eq!(result.len(), 2);
        assert_eq!(result[0]["name"], "n1");
        assert!(result.iter().all(|k| k.get("token").is_none()));

        // The new key deletes the old one, which then stops working at once.
        let (status, _) = call(
            &server,
            reqwest::Method::DELETE,
            &format!("/{boot_id}"),
            Some(&new_key),
            None,
        )
        .await;
        assert_eq!(status, 200);
        let (status, body) = call(&server, reqwest::Method::GET, "", Some(&boot), None).await;
        assert_eq!(
            (status, body["error"]["status"].as_str()),
            (401, Some("UNAUTHENTICATED"))
        );
        let (status, _) = call(
            &server,
            reqwest::Method::DELETE,
            &format!("/{boot_id}"),
            Some(&new_key),
            None,
        )
        .await;
        assert_eq!(status, 409, "deleting twice");
        let (status, _) = call(
            &server,
            reqwest::Method::GET,
            &format!("/{boot_id}"),
            Some(&new_key),
            None,
        )
        .await;
        assert_eq!(status, 409);
        let unknown = "00000000-0000-4000-8000-000000000000";
        let (status, _) = call(
            &server,
            reqwest::Method::DELETE,
            &format!("/{unknown}"),
            Some(&new_key),
            None,
        )
        .await;
        assert_eq!(status, 404);
        let (status, _) = call(&server, reqwest::Method::GET, "/not-a-uuid", Some(&new_key), None).await;
        assert_eq!(status, 400);
        let records = server.requests();
        assert!(
            records
                .iter()
                .all(|r| r.auth == AuthVia::KeyCookie && !r.key_in_query)
        );
    }

    #[tokio::test]
    async fn expire_under_a_day_no_credentials_and_bad_keys_are_refused() {
        let server = StandIn::start(options()).unwrap();
        let (_, key) = server.create_key("k", 86_400);
        let (status, body) = call(
            &server,
            reqwest::Method::POST,
            "",
            Some(&key),
            create_body("n", 86_399),
        )
        .await;
        assert_eq!(
            (status, body["error"]["status"].as_str()),
            (400, Some("INVALID_ARGUMENT"))
        );
        assert!(body["error"]["request_id"].is_string());
        let (status, _) = call(&server, reqwest::Method::GET, "", None, None).await;
        assert_eq!(status, 401);
        let (status, _) = call(&server, reqwest::Method::GET, "", Some("vb_doesnotexist"), None).await;
        assert_eq!(status, 401);
        // A token wins over a key: a bad token fails even with a good key.
        let response = client()
            .get(format!("{}{ACCESSKEYS_PATH}", server.base_url()))
            .header("cookie", format!("accesskey={key}"))
            .header("authorization", "Bearer not.a.token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        // A key in the query works (the server allows it) and is recorded.
        let response = client()
            .get(format!("{}{ACCESSKEYS_PATH}?accesskey={key}", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let last = server.requests().pop().unwrap();
        assert!(last.key_in_query && last.auth == AuthVia::KeyQuery);
    }

    #[tokio::test]
    async fn an_agent_needs_customer_admin_and_keys_expire_by_the_time_scale() {
        let server = StandIn::start(options()).unwrap();
        let token = token_of(login(&server).await).await;
        let response = client()
            .post(format!("{}{ACCESSKEYS_PATH}", server.base_url()))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(serde_json::json!({"expire": 86_400}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(server.requests().pop().unwrap().auth, AuthVia::Bearer);

        server.set_permission(USER, PERMISSION_CUSTOMER_AGENT);
        let token = token_of(login(&server).await).await;
        let response = client()
            .get(format!("{}{ACCESSKEYS_PATH}", server.base_url()))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403);

        // 86400 s at scale 1e-5 is under a second.
        server.set_key_time_scale(1e-5);
        let (_, key) = server.create_key("short", 86_400);
        let (status, _) = call(&server, reqwest::Method::GET, "", Some(&key), None).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (status, _) = call(&server, reqwest::Method::GET, "", Some(&key), None).await;
        assert_eq!(status, 401, "an expired key is refused");
        // Expired keys are still listed (they are not deleted).
        assert!(
            server
                .keys()
                .iter()
                .any(|k| k.name == "short" && k.tm_delete.is_none())
        );
    }

    #[tokio::test]
    async fn paging_walks_every_key_once_newest_first() {
        let server = StandIn::start(options()).unwrap();
        let (_, key) = server.create_key("k0", 86_400);
        for i in 1..250 {
            server.create_key(&format!("k{i}"), 86_400);
        }
        let mut seen = Vec::new();
        let mut token = String::new();
        for _ in 0..10 {
            let path = format!("?page_size=100&page_token={token}");
            let (status, page) = call(&server, reqwest::Method::GET, &path, Some(&key), None).await;
            assert_eq!(status, 200);
            let result = page["result"].as_array().unwrap();
            if result.is_empty() {
                break;
            }
            seen.extend(result.iter().map(|k| k["name"].as_str().unwrap().to_owned()));
            token = page["next_page_token"].as_str().unwrap().to_owned();
        }
        let expected: Vec<String> = (0..250).rev().map(|i| format!("k{i}")).collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn a_post_whose_answer_is_lost_still_makes_the_key() {
        let server = StandIn::start(options()).unwrap();
        let (_, key) = server.create_key("boot", 86_400);
        server.script_keys([Fault::Close]);
        let sent = client()
            .post(format!("{}{ACCESSKEYS_PATH}", server.base_url()))
            .header("cookie", format!("accesskey={key}"))
            .header("content-type", "application/json")
            .body(serde_json::json!({"name": "lost", "expire": 86_400}).to_string())
            .send()
            .await;
        assert!(sent.is_err(), "the connection was dropped");
        assert!(server.keys().iter().any(|k| k.name == "lost"));
        assert_eq!(server.key_requests(), 1);
    }
}
