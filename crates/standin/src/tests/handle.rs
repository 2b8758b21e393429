//! The handle itself: its debug output, running on the caller's runtime or
//! on its own, plain synchronous use, and sharing across threads.

use std::time::Duration;

use crate::{Fault, LoginRecord, StandIn};

use super::{PASSWORD, USER, credentials, login, options, token_of};

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
