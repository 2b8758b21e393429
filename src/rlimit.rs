//! The open-file limit: raised for the daemon, given back to hooks.
//!
//! This module holds the crate's one `unsafe` block (a `pre_exec` closure
//! that only calls `setrlimit`); everything else is `#![deny(unsafe_code)]`.

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
fn fd_limit_for_children() -> Option<(u64, u64)> {
    STARTING_FD_LIMIT
        .get()
        .copied()
        .filter(|(soft, hard)| soft < hard)
}

/// Makes `command` start with the open-file limits the daemon started with
/// ([`fd_limit_for_children`]); does nothing if they were never changed.
pub(crate) fn restore_for_child(command: &mut tokio::process::Command) {
    if let Some((soft, hard)) = fd_limit_for_children() {
        // SAFETY: between fork and exec only setrlimit runs, a plain
        // system call that is async-signal-safe; nothing allocates or locks.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                // A hook with the daemon's higher limit still runs.
                let _ =
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard);
                Ok(())
            });
        }
    }
}
