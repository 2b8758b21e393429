//! The proxy's own threads: one single-threaded runtime per core (at
//! most [`MAX_WORKERS`]), each accepting on every listener and owning its
//! own pool of connections to the API, as nginx's workers do. A request
//! never hops between threads (no cross-thread wake-ups), and the daemon's
//! own runtime, renewals included, never waits behind proxied traffic.

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;

/// Threads, however many cores there are.
pub const MAX_WORKERS: usize = 4;

/// The running workers; they stop when this is dropped.
pub struct Workers {
    handles: Vec<Handle>,
    stop: watch::Sender<bool>,
}

impl Workers {
    /// One worker per core, at most [`MAX_WORKERS`].
    pub fn start() -> std::io::Result<Workers> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (stop, stopped) = watch::channel(false);
        let mut handles = Vec::new();
        for n in 0..cores.clamp(1, MAX_WORKERS) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{n}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                    // Open connections get a moment, then the runtime goes.
                    runtime.shutdown_timeout(Duration::from_secs(1));
                })?;
        }
        Ok(Workers { handles, stop })
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
