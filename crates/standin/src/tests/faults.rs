//! Scripted faults: canned statuses in order, delays, dribbled and huge
//! bodies, broken tokens, a skewed server date, dropped connections.

use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::body::{HUGE_PREFIX, HUGE_SUFFIX};
use crate::model::{JSON, parse_expire, unix_seconds};
use crate::{ClaimStyle, Fault, LOGIN_PATH, StandIn};

use super::{
    PASSWORD, USER, claims, client, credentials, header_str, is_expire_format, login, me, options, post,
    segment, token_of,
};

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
