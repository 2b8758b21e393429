//! The state directory (`[state] dir`): what lives there and who may
//! write it.
//!
//! - [`keys`]: an access-key credential's state file (current key, pending deletions).
//! - [`record`]: per-credential record of the last login (username, server, clock skew).
//! - `status.json`, the status file the daemon keeps current for `status`,
//!   is written by `crate::board::file` (it holds the status board).
//! - here: the directory's lock (one daemon, or one `once` pass, at a time)
//!   and the removal of temp files a killed process left.

pub mod keys;
pub mod record;

use std::time::Duration;

use tracing::{info, warn};

/// How long `once` beside a running daemon waits for it to answer its
/// request; a daemon waiting for a `once` pass to end waits a little longer.
pub const ONCE_WAIT: Duration = Duration::from_secs(60);

/// Another process holds `{state dir}/lock`.
#[derive(Debug, thiserror::Error)]
#[error("another voipbin-tokend{} already runs with state directory {} ({}/lock is locked); stop it or give this one its own [state] dir", .holder.map(|p| format!(" (pid {p})")).unwrap_or_default(), dir.display(), dir.display())]
pub struct Locked {
    pub dir: std::path::PathBuf,
    pub holder: Option<u32>,
}

/// Takes `{state dir}/lock` (flock, non-blocking) for as long as the
/// returned file lives, and writes this process's pid into it: two daemons
/// on one state directory would fight over its files. A state directory
/// that cannot be created or written is not fatal here (it only holds the
/// status file): the daemon runs, unlocked, with a warning.
pub fn lock_state_dir(dir: &std::path::Path) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, Locked> {
    lock_state_dir_as(dir, "")
}

/// What a `once` pass writes after its pid in the lock file, so that a
/// `run` started meanwhile waits for it instead of exiting.
pub const ONCE_ROLE: &str = "once";

/// [`lock_state_dir`], writing `role` after the pid (`once` for a `once`
/// pass, empty for the daemon).
pub fn lock_state_dir_as(
    dir: &std::path::Path,
    role: &str,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, Locked> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = dir.join("lock");
    let opened = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
                .open(&path)
        });
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot open the state directory's lock; running without it");
            return Ok(None);
        }
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            let _ = locked.set_len(0);
            let _ = locked.rewind();
            let _ = if role.is_empty() {
                writeln!(locked, "{}", std::process::id())
            } else {
                writeln!(locked, "{} {role}", std::process::id())
            };
            Ok(Some(locked))
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = (&mut file).take(32).read_to_string(&mut text);
            Err(Locked {
                dir: dir.to_path_buf(),
                holder: text.split_whitespace().next().and_then(|p| p.parse().ok()),
            })
        }
        Err((_, e)) => {
            warn!(path = %path.display(), error = %e, "cannot lock the state directory; running without the lock");
            Ok(None)
        }
    }
}

/// True if the lock file names a `once` pass as its holder.
pub fn held_by_once(dir: &std::path::Path) -> bool {
    crate::fsread::read_bounded(&dir.join("lock"), 64, "lock file")
        .is_ok_and(|t| String::from_utf8_lossy(&t).split_whitespace().nth(1) == Some(ONCE_ROLE))
}

/// A `once` pass holds the state directory: the daemon waits for it to end
/// (bounded: a `once` beside a daemon waits at most a minute itself), so
/// that `once` then `run` started together both work. Takes the lock as
/// `role` (see [`lock_state_dir_as`]).
pub fn wait_for_once(
    dir: &std::path::Path,
    role: &str,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, Locked> {
    info!(dir = %dir.display(), "a `once` pass holds the state directory; waiting for it to end");
    let start = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        match lock_state_dir_as(dir, role) {
            Err(Locked { .. })
                if held_by_once(dir) && start.elapsed() < ONCE_WAIT + Duration::from_secs(30) => {}
            other => return other,
        }
    }
}

/// Removes the temp files a killed process left in the state directory:
/// every atomic writer there (`status.json`, `keys/{name}.json`,
/// `tokens/{name}.json`) writes `.{file}.tmp-{pid}-{random}` beside its
/// file first. A key state temp file may hold a key that was never made
/// current (a kill between its `POST` and the rename): it is removed, and
/// the key, named as this installation's, is an orphan for the sweep.
/// Only the holder of the state directory's lock may call this: another
/// process's write in progress would lose its temp file. Returns how many
/// were removed.
pub fn remove_state_temps(dir: &std::path::Path) -> usize {
    let mut removed = 0;
    for sub in [dir.to_path_buf(), dir.join("keys"), dir.join("tokens")] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let temp = name.starts_with('.') && name.contains(".tmp-");
            // Never follow or remove anything but a plain file.
            let plain = entry.file_type().is_ok_and(|t| t.is_file());
            if temp && plain && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        info!(dir = %dir.display(), removed, "removed temp files left in the state directory by an earlier run");
    }
    removed
}
