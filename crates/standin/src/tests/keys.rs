//! The access-key API: create, list, delete; refusals; agents and the time
//! scale; paging; a POST whose answer is lost.

use std::time::Duration;

use crate::model::parse_expire;
use crate::{ACCESSKEYS_PATH, AuthVia, Fault, PERMISSION_CUSTOMER_AGENT, StandIn};

use super::{USER, client, login, options, token_of};

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
