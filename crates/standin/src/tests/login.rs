//! Logging in, and the token it gives: the answer's shape, every failure
//! an empty 400, other paths 404, the rate limit, `/me`, the claim styles,
//! users and lifetime changed at run time, and the expiry formats.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::model::{JSON, parse_expire};
use crate::{
    ClaimStyle, Fault, LOGIN_PATH, MAX_BODY_BYTES, ME_PATH, PERMISSION_CUSTOMER_ADMIN, RateLimit, StandIn,
    StandInOptions, format_expire, format_http_date,
};

use super::{
    PASSWORD, USER, claims, client, credentials, header_str, is_expire_format, login, me, options, post,
    segment, token_of,
};

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
