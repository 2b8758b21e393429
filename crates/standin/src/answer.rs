//! Answers: canned, JSON, text, empty; the dropped connection.

use std::fmt;

use bytes::Bytes;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use tracing::debug;

use crate::body::Payload;
use crate::model::JSON;

/// The error that makes hyper drop a connection without answering.
#[derive(Debug)]
pub(crate) struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped on purpose (Fault::Close)")
    }
}

impl std::error::Error for DropConnection {}

pub(crate) type Answer = Result<Response<Payload>, DropConnection>;

pub(crate) fn canned(status: u16, body: String, headers: &[(String, String)]) -> Response<Payload> {
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

pub(crate) fn with_body(status: StatusCode, body: Payload) -> Response<Payload> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

pub(crate) fn empty(status: StatusCode) -> Response<Payload> {
    with_body(status, Payload::Full(None))
}

pub(crate) fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Payload> {
    let mut response = with_body(status, Payload::full(body));
    set(&mut response, header::CONTENT_TYPE, JSON);
    response
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Payload> {
    let mut response = with_body(status, Payload::full(body));
    set(&mut response, header::CONTENT_TYPE, "text/plain");
    response
}

pub(crate) fn set(response: &mut Response<Payload>, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}
