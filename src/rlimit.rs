//! The open-file limit: raised for the daemon, given back to hooks.
//!
//! Children get the starting limit back in [`crate::process`] (whose
//! `pre_exec` closure is one of the crate's two `unsafe` blocks).

use tracing::{debug, warn};

/// The soft `RLIMIT_NOFILE` the process was started with, before
/// [`raise_fd_limit`]; hooks get it back (see [`fd_limit_for_children`]).
static STARTING_FD_LIMIT: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Raises the soft limit on open files to the hard limit. The default soft
/// limit (1,024) is low enough for a crowd on the health port, or many
/// outputs and hooks at once, to make a renewal fail with EMFILE; the hard
/// limit is what the administrator actually allows.
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let _ = STARTING_FD_LIMIT.set((soft, hard));
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        }
    }
}

/// The open-file limits a hook should run with: those the daemon started
/// with (programs that use `select()` break above 1,024), or None if they
/// were never changed.
pub(crate) fn fd_limit_for_children() -> Option<(u64, u64)> {
    STARTING_FD_LIMIT
        .get()
        .copied()
        .filter(|(soft, hard)| soft < hard)
}
