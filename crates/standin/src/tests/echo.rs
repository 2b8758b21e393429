//! The endpoints a proxy is tested against: `/v1.0/echo` answers what
//! arrived (headers, body hash, chunked or not) and `/v1.0/bytes/{n}`
//! streams `n` bytes; both want a token or a key like the real API.

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{AuthVia, BYTES_PATTERN, StandIn};

use super::{client, login, options, token_of};

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

async fn echo_json(response: reqwest::Response) -> serde_json::Value {
    assert_eq!(response.status(), 200);
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("json echo")
}

/// The value of the first header `name` in an echo.
fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    echo["headers"]
        .as_array()?
        .iter()
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].as_str())
}

#[tokio::test]
async fn echo_and_bytes_want_a_valid_token_or_key() {
    let server = StandIn::start(options()).expect("start");
    let base = server.base_url();
    for path in ["/v1.0/echo", "/v1.0/echo/a/b", "/v1.0/bytes/10"] {
        let url = format!("{base}{path}");
        let none = client().get(&url).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path}");
        let body: serde_json::Value = serde_json::from_slice(&none.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
        let bad = client()
            .get(&url)
            .header("authorization", "Bearer not-a-token")
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 401, "{path}");
        let unknown = client()
            .get(&url)
            .header("cookie", "accesskey=vb_unknownunknownunknownunknown12")
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 401, "{path}");
    }
    // A path that only starts like the echo is not it.
    let token = token_of(login(&server).await).await;
    let other = client()
        .get(format!("{base}/v1.0/echoes"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test]
async fn echo_answers_every_method_with_its_path_query_headers_and_body_hash() {
    let server = StandIn::start(options()).expect("start");
    let token = token_of(login(&server).await).await;
    let body = vec![7u8; 100_000];
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let echo = echo_json(
            client()
                .request(
                    method.clone(),
                    format!("{}/v1.0/echo/calls/1?page_size=2&x=%20y", server.base_url()),
                )
                .header("authorization", format!("Bearer {token}"))
                .header("x-custom", "one")
                .body(body.clone())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(echo["method"], method.as_str());
        assert_eq!(echo["path"], "/v1.0/echo/calls/1");
        assert_eq!(echo["query"], "page_size=2&x=%20y");
        assert_eq!(echo["auth"], "Bearer");
        assert_eq!(
            header(&echo, "authorization"),
            Some(format!("Bearer {token}").as_str())
        );
        assert_eq!(header(&echo, "x-custom"), Some("one"));
        assert_eq!(echo["body_length"], 100_000);
        assert_eq!(echo["body_sha256"], hex_sha256(&body));
        assert_eq!(echo["content_length"], "100000");
        assert_eq!(echo["chunked"], false);
    }
    // No body, no query.
    let echo = echo_json(
        client()
            .get(format!("{}/v1.0/echo", server.base_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo["query"], serde_json::Value::Null);
    assert_eq!(echo["body_length"], 0);
    assert_eq!(echo["body_sha256"], hex_sha256(b""));
    let seen = server.requests();
    assert!(
        seen.iter()
            .all(|r| r.path.starts_with("/auth/") || r.auth == AuthVia::Bearer)
    );
}

#[tokio::test]
async fn echo_shows_cookies_and_which_credential_won() {
    let server = StandIn::start(options()).expect("start");
    let token = token_of(login(&server).await).await;
    let (_, key) = server.create_key("echo", 86_400);
    let url = format!("{}/v1.0/echo/x", server.base_url());
    let echo = echo_json(
        client()
            .get(&url)
            .header("cookie", format!("other=1; accesskey={key}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo["auth"], "KeyCookie");
    assert_eq!(
        header(&echo, "cookie"),
        Some(format!("other=1; accesskey={key}").as_str())
    );
    let echo = echo_json(
        client()
            .get(format!("{url}?accesskey={key}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo["auth"], "KeyQuery");
    assert!(server.requests().last().unwrap().key_in_query);
    let echo = echo_json(client().get(format!("{url}?token={token}")).send().await.unwrap()).await;
    assert_eq!(echo["auth"], "TokenQuery");
    // A token wins over a key, as on the real server: a bad one is a 401.
    let both = client()
        .get(&url)
        .header("authorization", "Bearer broken")
        .header("cookie", format!("accesskey={key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 401);
    // A deleted key no longer works.
    let id = server.keys()[0].id.clone();
    assert!(server.delete_key(&id));
    let gone = client()
        .get(&url)
        .header("cookie", format!("accesskey={key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 401);
}

#[tokio::test]
async fn echo_tells_a_chunked_upload_and_hashes_all_of_it() {
    let server = StandIn::start(options()).expect("start");
    let token = token_of(login(&server).await).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST /v1.0/echo/upload HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        server.addr()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut sent = Vec::new();
    for (i, size) in [5usize, 70_000, 1, 3].into_iter().enumerate() {
        let chunk = vec![b'a' + i as u8; size];
        stream
            .write_all(format!("{size:x}\r\n").as_bytes())
            .await
            .unwrap();
        stream.write_all(&chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
        sent.extend_from_slice(&chunk);
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("an answer in time")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let echo: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(echo["chunked"], true);
    assert_eq!(echo["content_length"], serde_json::Value::Null);
    assert_eq!(echo["body_length"], sent.len());
    assert_eq!(echo["body_sha256"], hex_sha256(&sent));
}

#[tokio::test]
async fn echo_answers_a_chosen_status_and_a_redirect_names_where() {
    let server = StandIn::start(options()).expect("start");
    let token = token_of(login(&server).await).await;
    for (status, location) in [(302, Some("/v1.0/echo/redirected")), (503, None), (201, None)] {
        let response = client()
            .get(format!("{}/v1.0/echo?status={status}", server.base_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        let got = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(got.as_deref(), location);
    }
}

#[tokio::test]
async fn bytes_streams_n_bytes_of_the_pattern_with_or_without_a_length() {
    let server = StandIn::start(options()).expect("start");
    let (_, key) = server.create_key("bytes", 86_400);
    let n = 3 * 16 * 1024 + 5;
    let expected: Vec<u8> = (0..n).map(|i| BYTES_PATTERN[i % 16]).collect();
    for (query, length) in [("", Some(n.to_string())), ("?chunked=1", None)] {
        let response = client()
            .get(format!("{}/v1.0/bytes/{n}{query}", server.base_url()))
            .header("cookie", format!("accesskey={key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let got = response
            .headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(got, length, "{query}");
        let chunked = response.headers().get("transfer-encoding").is_some();
        assert_eq!(chunked, length.is_none(), "{query}");
        let body = response.bytes().await.unwrap();
        assert_eq!(body.len(), n);
        assert!(body[..] == expected[..], "{query}: the pattern");
    }
    // Big, streamed: 64 MiB counted as it arrives.
    let mut response = client()
        .get(format!("{}/v1.0/bytes/{}", server.base_url(), 64u64 << 20))
        .header("cookie", format!("accesskey={key}"))
        .send()
        .await
        .unwrap();
    let mut total = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        total += chunk.len() as u64;
    }
    assert_eq!(total, 64 << 20);
    for (method, path, status) in [
        (reqwest::Method::GET, "/v1.0/bytes/0", 200),
        (reqwest::Method::GET, "/v1.0/bytes/-1", 400),
        (reqwest::Method::GET, "/v1.0/bytes/ten", 400),
        (reqwest::Method::POST, "/v1.0/bytes/10", 404),
    ] {
        let response = client()
            .request(method, format!("{}{path}", server.base_url()))
            .header("cookie", format!("accesskey={key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_a_new_login_works() {
    let server = StandIn::start(options()).expect("start");
    let old = token_of(login(&server).await).await;
    let url = format!("{}/v1.0/echo/x", server.base_url());
    let status = |token: String| {
        let url = url.clone();
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(old.clone()).await, 200);
    assert_eq!(server.revoke_tokens(), 1);
    assert_eq!(status(old.clone()).await, 401);
    let me = client()
        .get(format!("{}{}", server.base_url(), crate::ME_PATH))
        .bearer_auth(&old)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401);
    let new = token_of(login(&server).await).await;
    assert_eq!(status(new).await, 200);
}
