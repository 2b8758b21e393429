//! The proxy's listeners: a loopback TCP port or a unix socket, bounded
//! (connections, header size, idle time), each connection served by hyper
//! with [`super::forward::handle`].

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::forward::{self, Route};

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
        let Ok(slot) = slots.free.clone().try_acquire_owned() else {
            route.metrics.proxy_connection_refused(&route.credential);
            slots.refused();
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let route = route.clone();
                async move { Ok::<_, Infallible>(forward::handle(&route, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(IDLE)
                .max_buf_size(MAX_HEAD)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            drop(slot);
        });
    }
    drop(listener);
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

/// How often, at most, a listener logs that it refuses connections: a
/// client that leaks connections (or floods the port) costs one line per
/// period, with the count, not one per connection.
const REFUSED_LOG_PERIOD: Duration = Duration::from_secs(10);

/// One listener's connection slots, shared by the workers that accept on
/// it, and its refusals since it last warned about them.
pub struct Slots {
    free: Arc<tokio::sync::Semaphore>,
    max: usize,
    refusals: Mutex<Refusals>,
}

#[derive(Default)]
struct Refusals {
    last_warning: Option<Instant>,
    unlogged: u64,
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            free: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            refusals: Mutex::default(),
        }
    }

    /// Counts one refused connection; warns at the first one and then at
    /// most once per [`REFUSED_LOG_PERIOD`], with how many were refused.
    fn refused(&self) {
        let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        r.unlogged += 1;
        let now = Instant::now();
        if r.last_warning.is_some_and(|at| now < at + REFUSED_LOG_PERIOD) {
            return;
        }
        warn!(
            max = self.max,
            refused = r.unlogged,
            "proxy connections refused: too many open"
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
