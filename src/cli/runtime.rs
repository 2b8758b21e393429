//! The one place the tokio runtime is built, for every command that needs
//! one (`run`, `exec`, `once`, `demo`, the hidden `standin`).

/// The runtime: one thread is plenty for a handful of HTTP calls a week;
/// file writes go to a small blocking pool. (The local API proxy runs on
/// threads of its own: see `proxy::workers`.)
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        // File writes come in bursts (a renewal, a reload): a pool thread
        // that waited this long has nothing more to do.
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
}

/// [`runtime`], its error worded for the user: "cannot start the runtime: ...".
pub(crate) fn start() -> Result<tokio::runtime::Runtime, String> {
    runtime().map_err(|e| format!("cannot start the runtime: {e}"))
}
