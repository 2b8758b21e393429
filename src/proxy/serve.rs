//! The proxy's listeners: a loopback TCP port or a unix socket, bounded
//! (connections, header size, idle time), each connection served by hyper
//! with [`super::forward::handle`]. When every connection slot is taken, a
//! new connection takes the slot of the one idle the longest, if that one
//! was idle for [`KEPT_IDLE`] (it is closed gracefully); else it is
//! refused.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::forward::{self, BoxError, ProxyBody, Route};

/// Client connections at once, per listener (at least 256 promised).
pub const MAX_CONNECTIONS: usize = 512;
/// The largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// A connection that sends no complete request head for this long is
/// closed: an idle keep-alive connection, or a slow client.
pub const IDLE: Duration = Duration::from_secs(60);

/// A bound listener, not yet tied to a runtime: each worker takes a copy
/// ([`Listener::try_clone`]) and accepts on it.
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

impl Listener {
    /// Binds a loopback TCP address.
    pub fn bind_tcp(addr: std::net::SocketAddr) -> std::io::Result<Listener> {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(Listener::Tcp(l))
    }

    /// Another handle on the same socket.
    pub fn try_clone(&self) -> std::io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l, p) => Listener::Unix(l.try_clone()?, p.clone()),
        })
    }
}

/// The listener in the runtime that accepts on it.
enum Accepting {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Binds a unix socket at `path` with `mode` (and `gid`). A socket left by
/// an earlier run is replaced; any other file there is an error.
pub fn bind_unix(path: &Path, mode: u32, gid: Option<u32>) -> std::io::Result<Listener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; not replacing it",
            ));
        }
        Err(_) => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(Listener::Unix(listener, path.to_path_buf()))
}

/// Serves `listener` until `cancel`; then stops accepting and lets the
/// open connections finish (each bounded by [`IDLE`] between requests).
/// Runs in the runtime that accepts (a worker's). `slots` bound the
/// connections of every worker on this listener together.
pub async fn serve(listener: Listener, route: Arc<Route>, slots: Arc<Slots>, cancel: CancellationToken) {
    let (listener, path) = match listener {
        Listener::Tcp(l) => (TcpListener::from_std(l).map(Accepting::Tcp), None),
        Listener::Unix(l, p) => (UnixListener::from_std(l).map(Accepting::Unix), Some(p)),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "proxy worker cannot take its listener");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = accept(&listener) => accepted,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: a pause, not a spin.
                debug!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (route, slots) = (route.clone(), slots.clone());
        match slots.free.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(connection(stream, route, slots, slot));
            }
            // Full: the connection idle the longest is asked to close, and
            // this one takes its slot (waiting off the accept loop).
            Err(_) if slots.make_room() => {
                tokio::spawn(async move {
                    match tokio::time::timeout(ROOM_WAIT, slots.free.clone().acquire_owned()).await {
                        Ok(Ok(slot)) => connection(stream, route, slots, slot).await,
                        _ => slots.refused(&route),
                    }
                });
            }
            Err(_) => slots.refused(&route),
        }
    }
    drop(listener);
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

/// Serves one client connection in its `slot` until it closes, or, asked
/// to make room, until its answer in progress (if any) is sent.
async fn connection(
    stream: Box<dyn Stream>,
    route: Arc<Route>,
    slots: Arc<Slots>,
    slot: OwnedSemaphorePermit,
) {
    let activity = slots.opened();
    let credential = route.clone();
    let service = {
        let activity = activity.clone();
        service_fn(move |request| {
            let route = route.clone();
            let busy = Busy::begin(&activity);
            async move {
                let response = forward::handle(&route, request).await;
                Ok::<_, Infallible>(response.map(|inner| Answer { inner, _busy: busy }.boxed()))
            }
        })
    };
    let serving = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(IDLE)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(serving);
    tokio::select! {
        _ = serving.as_mut() => {}
        () = activity.close.notified() => {
            debug!(credential = %credential.credential, "proxy connection closed to make room for a new one");
            serving.as_mut().graceful_shutdown();
            let _ = serving.await;
        }
    }
    slots.closed(&activity);
    drop(slot);
}

/// How often, at most, a listener logs that it refuses connections: a
/// client that leaks connections (or floods the port) costs one line per
/// period, with the count, not one per connection.
const REFUSED_LOG_PERIOD: Duration = Duration::from_secs(10);

/// How long a connection accepted while every slot is taken waits for the
/// slot of the idle connection asked to close for it.
const ROOM_WAIT: Duration = Duration::from_secs(2);

/// An idle keep-alive connection is kept at least this long, even when its
/// slot is wanted (the interface's promise to HTTP clients' pools).
pub const KEPT_IDLE: Duration = Duration::from_secs(30);

/// One listener's connection slots, shared by the workers that accept on
/// it: the open connections (to close the idlest when all are taken) and
/// the refusals since the last warning about them.
pub struct Slots {
    free: Arc<Semaphore>,
    max: usize,
    open: Mutex<Vec<Arc<Activity>>>,
    /// What each connection's `last` counts from.
    since: Instant,
    refusals: Mutex<Refusals>,
}

#[derive(Default)]
struct Refusals {
    last_warning: Option<Instant>,
    unlogged: u64,
}

/// What one open connection is doing.
struct Activity {
    /// Requests whose answer is not yet sent whole.
    busy: AtomicUsize,
    /// When a request last came or an answer was last sent whole
    /// (nanoseconds after `since`).
    last: AtomicU64,
    /// The listener's [`Slots::since`].
    since: Instant,
    /// Close once idle: the slot is wanted.
    close: Notify,
}

impl Activity {
    fn stamp(&self) {
        let at = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(at, Ordering::Relaxed);
    }
}

/// A request of a connection in progress, until its answer is sent whole
/// (or dropped with the connection).
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: &Arc<Activity>) -> Busy {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        activity.stamp();
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.stamp();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body, keeping its connection [`Busy`] until it is sent
/// whole (or dropped). Its size is the inner body's, so an answer keeps
/// its `Content-Length` (`map_frame` would not).
struct Answer {
    inner: ProxyBody,
    _busy: Busy,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            free: Arc::new(Semaphore::new(max)),
            max,
            open: Mutex::default(),
            since: Instant::now(),
            refusals: Mutex::default(),
        }
    }

    fn opened(&self) -> Arc<Activity> {
        let activity = Arc::new(Activity {
            busy: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            since: self.since,
            close: Notify::new(),
        });
        activity.stamp();
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(activity.clone());
        activity
    }

    fn closed(&self, activity: &Arc<Activity>) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = open.iter().position(|a| Arc::ptr_eq(a, activity)) {
            open.swap_remove(at);
        }
    }

    /// Asks the connection idle the longest (no request in progress, idle
    /// for [`KEPT_IDLE`] at least) to close; false when there is none.
    fn make_room(&self) -> bool {
        let kept_since = self.since.elapsed().saturating_sub(KEPT_IDLE);
        let kept_since = u64::try_from(kept_since.as_nanos()).unwrap_or(u64::MAX);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let idlest = open
            .iter()
            .enumerate()
            .filter(|(_, a)| a.busy.load(Ordering::Relaxed) == 0)
            .map(|(at, a)| (at, a.last.load(Ordering::Relaxed)))
            .filter(|&(_, last)| last <= kept_since)
            .min_by_key(|&(_, last)| last)
            .map(|(at, _)| at);
        match idlest {
            Some(at) => {
                open.swap_remove(at).close.notify_one();
                true
            }
            None => false,
        }
    }

    /// Counts one refused connection; warns at the first one and then at
    /// most once per [`REFUSED_LOG_PERIOD`], with how many were refused.
    fn refused(&self, route: &Route) {
        route.metrics.proxy_connection_refused(&route.credential);
        let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        r.unlogged += 1;
        let now = Instant::now();
        if r.last_warning.is_some_and(|at| now < at + REFUSED_LOG_PERIOD) {
            return;
        }
        warn!(
            max = self.max,
            refused = r.unlogged,
            "proxy connections refused: too many open, none idle for 30 s"
        );
        r.last_warning = Some(now);
        r.unlogged = 0;
    }
}

/// A client connection of either kind.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

async fn accept(listener: &Accepting) -> std::io::Result<Box<dyn Stream>> {
    Ok(match listener {
        Accepting::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        Accepting::Unix(l) => Box::new(l.accept().await?.0),
    })
}
