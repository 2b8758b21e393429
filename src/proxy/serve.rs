//! The proxy's listeners: a loopback TCP port or a unix socket, bounded
//! (connections, header size, idle time), each connection served by hyper
//! with [`super::forward::handle`].

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
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
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(Listener::Unix(listener, path.to_path_buf()))
}

/// Serves `listener` until `cancel`; then stops accepting and lets the
/// open connections finish (each bounded by [`IDLE`] between requests).
pub async fn serve(listener: Listener, route: Arc<Route>, cancel: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(max = MAX_CONNECTIONS, "proxy connection refused: too many open");
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
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

/// A client connection of either kind.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

async fn accept(listener: &Listener) -> std::io::Result<Box<dyn Stream>> {
    Ok(match listener {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        Listener::Unix(l, _) => Box::new(l.accept().await?.0),
    })
}
