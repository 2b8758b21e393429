//! The one place the tokio runtime is built, for every command that needs
//! one (`run`, `exec`, `once`, `demo`, the hidden `standin`).

/// The runtime: one thread is plenty for a handful of HTTP calls a week;
/// file writes go to a small blocking pool.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
}

/// The runtime for a daemon that serves `proxies` local API proxies: with
/// none, [`runtime`]; with some, one worker per core (at most
/// [`MAX_PROXY_WORKERS`]), so proxied traffic uses the machine as nginx
/// would, and renewals never wait behind it.
pub fn runtime_for(proxies: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if proxies == 0 {
        return runtime();
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(cores.clamp(1, MAX_PROXY_WORKERS))
        .max_blocking_threads(4)
        .build()
}

/// Workers of a runtime serving proxies, however many cores there are.
pub const MAX_PROXY_WORKERS: usize = 4;

/// [`runtime`], its error worded for the user: "cannot start the runtime: ...".
pub(crate) fn start() -> Result<tokio::runtime::Runtime, String> {
    runtime().map_err(|e| format!("cannot start the runtime: {e}"))
}

/// [`runtime_for`], its error worded for the user.
pub(crate) fn start_for(proxies: usize) -> Result<tokio::runtime::Runtime, String> {
    runtime_for(proxies).map_err(|e| format!("cannot start the runtime: {e}"))
}
