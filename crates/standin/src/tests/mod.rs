//! Unit tests of the stand-in: it must say no the way the real server does.
//!
//! By subject: `login` (the login and its token, the rate limit, `/me`),
//! `faults` (scripted faults), `keys` (the access-key API), `echo` (the
//! echo and bytes endpoints) and `handle`
//! (the handle's debug output, runtimes and threads); the helpers they
//! share are here.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{LOGIN_PATH, ME_PATH, StandIn, StandInOptions};

mod echo;
mod faults;
mod handle;
mod keys;
mod login;

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
