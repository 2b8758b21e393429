//! The state of one access-key credential, `{state dir}/keys/{name}.json`.
//!
//! A new key's secret is shown once, so the daemon must never lose it: the
//! state file is written (atomically, 0600, file and directory fsynced)
//! BEFORE any output changes, and read back at start. It holds:
//!
//! - `installation_id`: random, made when the file is first created and
//!   before any key is made; it is part of every key's name
//!   (`voipbin-tokend/{credential}/{installation id}`), so two
//!   installations with the same credential name never touch each other's
//!   keys;
//! - `current`: the key in use (id, the key, its times, where it came from);
//! - `pending_deletions`: replaced keys to delete once their grace is over;
//! - `left_to_expire`: replaced keys kept alive (`delete-replaced = false`),
//!   so the orphan sweep leaves them alone.
//!
//! `Debug` of every type here hides the key.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::output::write::{FileSpec, WriteError, write_atomic};
use crate::secret::Secret;

/// The state file is small; anything larger is not ours.
pub const MAX_STATE_BYTES: u64 = 256 * 1024;

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Read from `bootstrap-key-file` (made on the admin page).
    Bootstrap,
    /// Made by this installation.
    Created,
}

/// The key in use.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CurrentKey {
    pub id: String,
    pub key: Secret,
    #[serde(with = "time::serde::rfc3339")]
    pub tm_create: OffsetDateTime,
    /// In the server's clock, as answered.
    #[serde(with = "time::serde::rfc3339")]
    pub tm_expire: OffsetDateTime,
    /// The server's clock minus ours when the key was obtained, seconds.
    #[serde(default)]
    pub server_skew_seconds: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub obtained_at: OffsetDateTime,
    pub origin: Origin,
}

impl std::fmt::Debug for CurrentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentKey")
            .field("id", &self.id)
            .field("prefix", &crate::keyapi::prefix_of(self.key.expose()))
            .field("tm_expire", &crate::token::rfc3339(self.tm_expire))
            .field("origin", &self.origin)
            .finish()
    }
}

impl CurrentKey {
    /// The recorded skew, if believable: one beyond
    /// [`crate::token::MAX_SKEW`] (an edited or corrupt state file) is
    /// taken as zero.
    pub fn skew(&self) -> time::Duration {
        crate::token::believable_skew(time::Duration::seconds(self.server_skew_seconds))
            .unwrap_or(time::Duration::ZERO)
    }

    /// The expiry in our clock (saturating: the state file may say 9999).
    pub fn expires_at(&self) -> OffsetDateTime {
        self.tm_expire.saturating_sub(self.skew())
    }

    /// The creation time in our clock.
    pub fn created_at(&self) -> OffsetDateTime {
        self.tm_create.saturating_sub(self.skew())
    }
}

/// A replaced key and when it may be deleted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingDeletion {
    pub id: String,
    /// The public prefix, for logs and `status`.
    pub prefix: String,
    /// `grace` after every output held the successor; `None` until then
    /// (a consumer may still be reading the replaced key).
    #[serde(with = "time::serde::rfc3339::option")]
    pub delete_after: Option<OffsetDateTime>,
}

/// A replaced key left to expire on its own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeftToExpire {
    pub id: String,
    pub prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    pub tm_expire: OffsetDateTime,
}

/// Everything the daemon must not forget about one key credential.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyState {
    pub version: u32,
    pub credential: String,
    pub installation_id: String,
    #[serde(default)]
    pub current: Option<CurrentKey>,
    #[serde(default)]
    pub pending_deletions: Vec<PendingDeletion>,
    #[serde(default)]
    pub left_to_expire: Vec<LeftToExpire>,
}

/// Why the state could not be read or written. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a regular file of at most {MAX_STATE_BYTES} bytes", .0.display())]
    NotAFile(PathBuf),
    #[error("{} is not a valid key state file ({reason}); move it away to start over (its keys are then orphans and will be swept)", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot create the directory {}: {source}", path.display())]
    Mkdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl KeyState {
    /// A fresh state with a new installation id.
    pub fn new(credential: &str) -> KeyState {
        KeyState {
            version: 1,
            credential: credential.to_string(),
            installation_id: format!("{:016x}", fastrand::u64(..)),
            current: None,
            pending_deletions: Vec::new(),
            left_to_expire: Vec::new(),
        }
    }

    /// The name every key of this installation gets; the orphan sweep
    /// touches only keys named exactly so.
    pub fn key_name(&self) -> String {
        format!("voipbin-tokend/{}/{}", self.credential, self.installation_id)
    }

    /// Ids this state knows about (current, awaiting deletion, left to expire).
    pub fn known_ids(&self) -> impl Iterator<Item = &str> {
        self.current
            .iter()
            .map(|c| c.id.as_str())
            .chain(self.pending_deletions.iter().map(|p| p.id.as_str()))
            .chain(self.left_to_expire.iter().map(|l| l.id.as_str()))
    }
}

/// `{state dir}/keys/{credential}.json`.
pub fn path(state_dir: &Path, credential: &str) -> PathBuf {
    state_dir.join("keys").join(format!("{credential}.json"))
}

/// Reads the state, or `None` when there is no file yet. A file that is
/// not a regular file (a FIFO would block), too large or not valid is an
/// error: the daemon must not silently start over and lose track of keys.
pub fn load(path: &Path) -> Result<Option<KeyState>, StateError> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(StateError::NotAFile(path.into()));
        }
        Err(source) => {
            return Err(StateError::Read {
                path: path.into(),
                source,
            });
        }
    };
    let meta = file.metadata().map_err(|source| StateError::Read {
        path: path.into(),
        source,
    })?;
    if !meta.is_file() || meta.len() > MAX_STATE_BYTES {
        return Err(StateError::NotAFile(path.into()));
    }
    tighten_mode(&file, &meta, path);
    let mut text = zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|source| StateError::Read {
            path: path.into(),
            source,
        })?;
    let state: KeyState = serde_json::from_slice(&text).map_err(|e| StateError::Invalid {
        path: path.into(),
        // serde_json's message names the line and column, never the value.
        reason: format!("line {} column {}", e.line(), e.column()),
    })?;
    if state.version != 1 {
        return Err(StateError::Invalid {
            path: path.into(),
            reason: format!("version {} is not 1", state.version),
        });
    }
    if let Some(c) = &state.current
        && !crate::keyapi::is_key_shaped(c.key.expose())
    {
        return Err(StateError::Invalid {
            path: path.into(),
            reason: "current.key is not a key".into(),
        });
    }
    Ok(Some(state))
}

/// A state file holds secrets (keys) or what judges them: one that group or
/// others may read or write (restored from a backup, copied by hand) is
/// brought back to 0600, with a warning naming it. Through the open file,
/// so a swapped path is not touched.
pub fn tighten_mode(file: &std::fs::File, meta: &std::fs::Metadata, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    match file.set_permissions(std::fs::Permissions::from_mode(0o600)) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            mode = %format!("{mode:04o}"),
            "a state file was readable or writable by others; its mode is now 0600"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            mode = %format!("{mode:04o}"),
            error = %e,
            "a state file is readable or writable by others and its mode cannot be changed to 0600"
        ),
    }
}

/// Writes the state atomically (0600, fsynced, directory fsynced),
/// creating `keys/` (0700) if needed.
pub fn save(path: &Path, state: &KeyState) -> Result<(), StateError> {
    if let Some(dir) = path.parent()
        && !dir.is_dir()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::Mkdir {
                path: dir.into(),
                source,
            })?;
    }
    let text =
        zeroize::Zeroizing::new(serde_json::to_vec_pretty(state).map_err(|e| StateError::Invalid {
            path: path.into(),
            reason: e.to_string(),
        })?);
    write_atomic(
        &FileSpec {
            path,
            mode: 0o600,
            uid: None,
            gid: None,
        },
        &text,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use time::macros::datetime;

    const KEY: &str = "vb_0123456789abcdefABCDEF0123456789";

    fn sample() -> KeyState {
        let mut s = KeyState::new("mcp");
        s.current = Some(CurrentKey {
            id: "00000000-0000-4000-8000-000000000001".into(),
            key: Secret::new(KEY.into()),
            tm_create: datetime!(2026-11-01 00:00 UTC),
            tm_expire: datetime!(2026-12-01 00:00 UTC),
            server_skew_seconds: 3600,
            obtained_at: datetime!(2026-11-01 00:00 UTC),
            origin: Origin::Created,
        });
        s.pending_deletions.push(PendingDeletion {
            id: "00000000-0000-4000-8000-000000000002".into(),
            prefix: "vb_abcdefgh".into(),
            delete_after: Some(datetime!(2026-11-01 01:00 UTC)),
        });
        s
    }

    #[test]
    fn round_trip_mode_and_no_key_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "mcp");
        assert!(load(&p).unwrap().is_none());
        let s = sample();
        save(&p, &s).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(p.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(load(&p).unwrap().unwrap(), s);
        assert!(!format!("{s:?}").contains("0123456789abcdef"));
        assert_eq!(
            s.current.as_ref().unwrap().expires_at(),
            datetime!(2026-11-30 23:00 UTC)
        );
        assert!(s.key_name().starts_with("voipbin-tokend/mcp/"));
        assert_eq!(s.known_ids().count(), 2);
    }

    #[test]
    fn broken_fifo_or_huge_state_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "mcp");
        std::fs::create_dir(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "{not json").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("mcp.json") && e.contains("not a valid key state"),
            "{e}"
        );
        std::fs::remove_file(&p).unwrap();
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(load(&p), Err(StateError::NotAFile(_))));
        std::fs::remove_file(&p).unwrap();
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_STATE_BYTES + 1).unwrap();
        assert!(matches!(load(&p), Err(StateError::NotAFile(_))));
    }
}
