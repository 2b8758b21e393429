//! What the daemon remembers about the token a credential last obtained:
//! for which username, from which server, and how far the server's clock
//! was from ours at that moment. Kept at `{state dir}/tokens/{name}.json`
//! (mode 0600, written atomically; holds no secret).
//!
//! Why: at start the daemon reuses a token found in its outputs. The token
//! alone cannot say which server issued it, and its expiry is in the
//! server's clock; this record lets the daemon judge it as it did when it
//! got it (same skew), and refuse a token of another login.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::output::write::write_report;

/// A record is a few hundred bytes; anything larger is not ours.
const MAX_RECORD_LEN: u64 = 64 * 1024;

/// The record of one credential's last login. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub username: String,
    pub base_url: String,
    /// The server's clock minus ours, in milliseconds (0 when within noise).
    pub server_skew_ms: i64,
    /// The token's expiry as its claims state it (the server's clock): it
    /// identifies which token the record is about.
    #[serde(with = "time::serde::rfc3339::option")]
    pub claimed_expiry: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub obtained_at: OffsetDateTime,
}

impl TokenRecord {
    /// The recorded skew as is (any i64 of milliseconds is a valid
    /// duration); callers bound it with [`crate::token::believable_skew`].
    pub fn server_skew(&self) -> time::Duration {
        time::Duration::milliseconds(self.server_skew_ms)
    }
}

/// `{state dir}/tokens/{credential}.json`.
pub fn path(state_dir: &Path, credential: &str) -> PathBuf {
    state_dir.join("tokens").join(format!("{credential}.json"))
}

/// Reads the record; `None` when there is none or it is not a small
/// regular file of the right shape (a bad record only costs a login).
/// Opened non-blocking, so a FIFO planted there cannot hang the daemon.
pub fn read(state_dir: &Path, credential: &str) -> Option<TokenRecord> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
        .open(path(state_dir, credential))
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    super::keys::tighten_mode(&file, &meta, &path(state_dir, credential));
    let mut text = String::new();
    file.take(MAX_RECORD_LEN).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the record atomically, creating `{state dir}/tokens` (mode 0700)
/// the first time.
pub fn write(state_dir: &Path, credential: &str, record: &TokenRecord) -> Result<(), String> {
    // Whole, old or new, but not fsynced: a power loss may bring the old
    // record back or leave it empty. An empty one reads as none, an old one
    // does not match the token in the outputs: either only makes the next
    // start judge that token without it (as after a failed write, which is
    // logged, not fatal). One fsync fewer per login (1000 at a start with
    // 1000 credentials).
    write_report(&path(state_dir, credential), 0o600, record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let rec = TokenRecord {
            username: "agent@example.com".into(),
            base_url: "http://127.0.0.1:9/".into(),
            server_skew_ms: -3_600_000,
            claimed_expiry: Some(datetime!(2026-12-04 09:15:02.123456 UTC)),
            obtained_at: datetime!(2026-11-27 09:15:02 UTC),
        };
        assert_eq!(read(dir.path(), "main"), None);
        write(dir.path(), "main", &rec).unwrap();
        assert_eq!(read(dir.path(), "main"), Some(rec.clone()));
        assert_eq!(rec.server_skew(), time::Duration::hours(-1));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(dir.path(), "main"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Garbage and a FIFO are no record (and do not block).
        std::fs::write(path(dir.path(), "main"), "not json").unwrap();
        assert_eq!(read(dir.path(), "main"), None);
        // Empty: what a power loss may leave of an unsynced record.
        std::fs::write(path(dir.path(), "main"), "").unwrap();
        assert_eq!(read(dir.path(), "main"), None);
        nix::unistd::mkfifo(&path(dir.path(), "fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(read(dir.path(), "fifo"), None);
    }
}
