//! The proxy's client to the API: hyper's pooled HTTP/1.1 client over
//! rustls (the ring provider, the system's roots plus `ca-file`), the
//! stack reqwest itself runs on, without its per-request URL re-parsing,
//! middleware layers and body wrappers.
//!
//! `[api] timeout` bounds connecting, the wait for the answer's head, and
//! each wait for a piece of its body, never a whole streamed transfer.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::ApiConfig;

/// What the proxy answers with, and sends upstream.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A body's error, whatever its source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connections kept open to the API, per host.
const IDLE_PER_HOST: usize = 64;

/// The pooled client and its timeout.
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    timeout: Duration,
}

/// Why a request to the API failed.
#[derive(Debug)]
pub enum UpstreamError {
    TimedOut,
    Failed(hyper_util::client::legacy::Error),
    /// The request could not be built (a target hyper refuses).
    Request(String),
}

impl Upstream {
    /// A client with the daemon's TLS rules: the system's roots, plus
    /// those of `ca-file`.
    pub fn new(cfg: &ApiConfig) -> Result<Upstream, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native);
        if let Some(path) = &cfg.ca_file {
            for cert in crate::config::read_ca_file_der(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: a certificate rustls cannot use: {e}", path.display()))?;
            }
        } else if added == 0 {
            tracing::debug!("no system root certificates found; only http:// on loopback can work");
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS settings: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.timeout.min(Duration::from_secs(10))));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Upstream {
            client,
            timeout: cfg.timeout,
        })
    }

    /// Sends `request`; the answer's body is bounded per wait too.
    pub async fn send(&self, request: Request<ProxyBody>) -> Result<Response<ProxyBody>, UpstreamError> {
        // The wait for the answer's head is bounded from the last piece of
        // the request body the API took: an upload of any length that keeps
        // moving is never cut, one the API stops taking is.
        let progress = Arc::new(AtomicU64::new(0));
        let started = tokio::time::Instant::now();
        let request = request.map(|body| {
            http_body_util::BodyExt::boxed(Progress {
                inner: body,
                started,
                last: progress.clone(),
            })
        });
        let answer = self.client.request(request);
        tokio::pin!(answer);
        let mut deadline = started + self.timeout;
        let answer = loop {
            tokio::select! {
                answer = &mut answer => break answer.map_err(UpstreamError::Failed)?,
                _ = tokio::time::sleep_until(deadline) => {
                    let last = started + Duration::from_millis(progress.load(Ordering::Relaxed));
                    if last + self.timeout <= tokio::time::Instant::now() {
                        return Err(UpstreamError::TimedOut);
                    }
                    deadline = last + self.timeout;
                }
            }
        };
        let timeout = self.timeout;
        Ok(answer.map(|body| {
            http_body_util::BodyExt::boxed(Timed::new(
                body,
                timeout,
                "the VoIPBIN API stopped sending its answer",
            ))
        }))
    }

    /// Sends an upgrade request and keeps the answer whole (its upgrade
    /// is taken from it after a 101).
    pub async fn send_upgrade(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| UpstreamError::TimedOut)?
            .map_err(UpstreamError::Failed)
    }
}

/// The system's root certificates (the same source as reqwest's).
fn rustls_native_certs() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::debug!(
            errors = found.errors.len(),
            "some system root certificates could not be read"
        );
    }
    found.certs
}

/// A request body that records (milliseconds after `started`) when the
/// client to the API last asked it for more, i.e. last took a piece.
struct Progress {
    inner: ProxyBody,
    started: tokio::time::Instant,
    last: Arc<AtomicU64>,
}

impl Body for Progress {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Asked for more: the API took what came before (a wait on the
        // client's own upload counts as progress: not the API's fault).
        let ms = self.started.elapsed().as_millis();
        self.last
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose every wait for a frame is bounded by `timeout`, then fails
/// with [`Stalled`]. The timer is only armed when a frame is not ready at
/// once (most small bodies never arm it).
pub struct Timed {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// What [`Stalled`] says: who stopped sending what.
    stopped: &'static str,
}

impl Timed {
    pub fn new(inner: Incoming, timeout: Duration, stopped: &'static str) -> Timed {
        Timed {
            inner,
            timeout,
            sleep: None,
            stopped,
        }
    }
}

/// A [`Timed`] body's error: nothing came for its timeout.
#[derive(Debug)]
pub struct Stalled(&'static str);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Stalled {}

impl Body for Timed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.sleep = None;
                Poll::Ready(frame.map(|f| f.map_err(|e| Box::new(e) as BoxError)))
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(self.stopped))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;
