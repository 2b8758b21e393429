//! Output files: what they hold ([`render`], in a [`Format`]) and how they
//! get to disk ([`write`](mod@write)). The two are separate so the formats are pure
//! functions and the writer knows nothing about tokens.

pub mod format;
pub mod render;
pub mod write;

pub use format::Format;

/// Removes the temp files a killed process left beside `paths` (outputs),
/// one listing per directory, and logs beside which path some were. Only
/// for the holder of the state directory's lock: another process's write
/// in progress (a `once` beside the daemon) would lose its temp file.
pub fn remove_temps_left_behind<'a>(paths: impl IntoIterator<Item = &'a std::path::Path>) {
    for (path, removed) in write::remove_stale_temps(paths) {
        tracing::info!(path = %path.display(), removed, "removed temp files left by an earlier run");
    }
}
