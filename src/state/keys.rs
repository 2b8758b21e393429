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
//!   so the orphan sweep leaves them alone;
//! - where the installation lives: the machine id and the state file's
//!   own inode (stamped into the content by [`save`]); a state file that
//!   finds itself on another machine or in another file (a cloned VM, a
//!   backup restored on a second host, a copied volume) starts a new
//!   installation, see [`identity_mismatch`];
//! - `creations`: a random nonce for every key creation, saved before the
//!   `POST` and sent in the key's `detail`: the orphan sweep deletes only
//!   keys carrying one of these.
//!
//! `Debug` of every type here hides the key.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::output::write::{FileSpec, Rename, WriteError, making_private_dir, write_atomic_stamped};
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
    /// Made by another installation (the state was cloned, see
    /// [`identity_mismatch`]): used until replaced, then left to expire,
    /// never deleted by this one (the original host may still publish it).
    #[serde(default)]
    pub inherited: bool,
}

impl std::fmt::Debug for CurrentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentKey")
            .field("id", &self.id)
            .field("prefix", &crate::api::keys::prefix_of(self.key.expose()))
            .field("tm_expire", &crate::token::rfc3339(self.tm_expire))
            .field("origin", &self.origin)
            .field("inherited", &self.inherited)
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
    /// The key came from `bootstrap-key-file` (made by hand, so its name is
    /// not this installation's): deleted if its prefix still matches.
    #[serde(default)]
    pub bootstrap: bool,
}

/// One key creation this installation started: `nonce` went into the
/// key's `detail`. Kept until the key is known (current, pending) or
/// swept, or until a key made then would have expired.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Creation {
    pub nonce: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The inode number the state file was written with (see [`save`]). It
/// always compares equal: it says where the state lives, not what it is.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FileStamp(pub Option<u64>);

impl PartialEq for FileStamp {
    fn eq(&self, _: &FileStamp) -> bool {
        true
    }
}

impl Eq for FileStamp {}

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
    /// The machine id where the installation lives (`/etc/machine-id`,
    /// else `/var/lib/dbus/machine-id`); `None` where there is none.
    #[serde(default)]
    pub machine_id: Option<String>,
    /// The inode of the file this content was written to (set by [`save`]).
    #[serde(default)]
    pub file_id: FileStamp,
    /// Key creations started and not yet settled (see [`Creation`]).
    #[serde(default)]
    pub creations: Vec<Creation>,
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
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl KeyState {
    /// Puts a replaced current key where it belongs: awaiting deletion
    /// (its grace starts once the outputs hold the successor), or left to
    /// expire, with `delete-replaced = false` or when it was inherited from
    /// another installation (never deleted by this one).
    pub fn retire(&mut self, old: CurrentKey, delete_replaced: bool) {
        let prefix = crate::api::keys::prefix_of(old.key.expose()).to_string();
        if delete_replaced && !old.inherited {
            self.pending_deletions.push(PendingDeletion {
                id: old.id,
                prefix,
                delete_after: None,
                bootstrap: old.origin == Origin::Bootstrap,
            });
        } else {
            self.left_to_expire.push(LeftToExpire {
                id: old.id,
                prefix,
                tm_expire: old.tm_expire,
            });
        }
    }

    /// A fresh state with a new installation id.
    pub fn new(credential: &str) -> KeyState {
        KeyState {
            version: 1,
            credential: credential.to_string(),
            installation_id: format!("{:016x}", fastrand::u64(..)),
            current: None,
            pending_deletions: Vec::new(),
            left_to_expire: Vec::new(),
            machine_id: machine_id(),
            file_id: FileStamp(None),
            creations: Vec::new(),
        }
    }

    /// Starts a new installation in place of this one, whose state was
    /// found where it was not made: a new installation id (so a new key
    /// name); the current key is kept for use but marked inherited (left to
    /// expire once replaced, never deleted); pending deletions and recorded
    /// creations are dropped (the original host may still publish those
    /// keys or be about to learn of them). Keys left to expire stay.
    pub fn start_over_as_new_installation(&mut self) {
        self.installation_id = KeyState::new(&self.credential).installation_id;
        if let Some(c) = self.current.as_mut() {
            c.inherited = true;
        }
        self.pending_deletions.clear();
        self.creations.clear();
        self.machine_id = machine_id();
        self.file_id = FileStamp(None);
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

/// Where the machine id is read from, in order.
pub const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// This machine's id: the first of [`MACHINE_ID_FILES`] that holds one.
pub fn machine_id() -> Option<String> {
    machine_id_from(&MACHINE_ID_FILES.map(Path::new))
}

/// The first non-empty id (a short line of letters and digits) in `files`.
pub fn machine_id_from(files: &[&Path]) -> Option<String> {
    files.iter().find_map(|p| {
        let bytes = crate::fsread::read_bounded(p, 256, "machine-id").ok()?;
        let id = std::str::from_utf8(&bytes).ok()?.trim();
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| id.to_owned())
    })
}

/// Why a loaded state does not belong to this place, if it does not: it
/// records another machine id than this machine's, or another inode than
/// the file it was read from (it was copied). A state that records
/// neither (written before these were kept) belongs where it is.
pub fn identity_mismatch(state: &KeyState, machine: Option<&str>, file_inode: u64) -> Option<String> {
    if let Some(recorded) = state.machine_id.as_deref()
        && Some(recorded) != machine
    {
        return Some(match machine {
            Some(_) => {
                "it was written on another machine (its machine id differs from /etc/machine-id)".into()
            }
            None => "it was written on a machine with a machine id, and this one has none".into(),
        });
    }
    if let Some(recorded) = state.file_id.0
        && recorded != file_inode
    {
        return Some(format!(
            "it is a copy (it was written as inode {recorded}, this file is inode {file_inode})"
        ));
    }
    None
}

/// `{state dir}/keys/{credential}.json`.
pub fn path(state_dir: &Path, credential: &str) -> PathBuf {
    state_dir.join("keys").join(format!("{credential}.json"))
}

/// Takes the state of a renamed credential over: `keys/{old}.json` is
/// renamed to `keys/{new}.json` (atomic; the directory is fsynced; the
/// inode, and so the file's identity, is kept). True if it was moved;
/// false when there is no old state or the new name has one already
/// (then the old file is left alone, and a warning says so).
pub fn migrate(state_dir: &Path, old: &str, new: &str) -> Result<bool, StateError> {
    let (from, to) = (path(state_dir, old), path(state_dir, new));
    if std::fs::symlink_metadata(&from).is_err() {
        return Ok(false);
    }
    if std::fs::symlink_metadata(&to).is_ok() {
        tracing::warn!(
            old = %from.display(),
            new = %to.display(),
            "the renamed credential already has a key state; the old one is left in place and its keys are not looked after"
        );
        return Ok(false);
    }
    std::fs::rename(&from, &to).map_err(|source| StateError::Read {
        path: from.clone(),
        source,
    })?;
    if let Some(dir) = to.parent()
        && let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all())
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync directory");
    }
    Ok(true)
}

/// Reads the state, or `None` when there is no file yet. A file that is
/// not a regular file (a FIFO would block), too large or not valid is an
/// error: the daemon must not silently start over and lose track of keys.
pub fn load(path: &Path) -> Result<Option<KeyState>, StateError> {
    Ok(load_with_inode(path)?.map(|(state, _)| state))
}

/// [`load`], with the inode of the file read (for [`identity_mismatch`]).
pub fn load_with_inode(path: &Path) -> Result<Option<(KeyState, u64)>, StateError> {
    use std::os::unix::fs::MetadataExt;
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
    let text = crate::fsread::read_sized(file, meta.len(), MAX_STATE_BYTES, "key state", path).map_err(
        |e| match e {
            crate::fsread::ReadError::Io { source, .. } => StateError::Read {
                path: path.into(),
                source,
            },
            _ => StateError::NotAFile(path.into()),
        },
    )?;
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
        && !crate::api::keys::is_key_shaped(c.key.expose())
    {
        return Err(StateError::Invalid {
            path: path.into(),
            reason: "current.key is not a key".into(),
        });
    }
    Ok(Some((state, meta.ino())))
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
    save_as(path, state, Rename::Durable)
}

/// [`save`] without the directory fsync, for a change whose loss in a
/// crash only repeats or delays work (a grace started, a deletion done:
/// the old state makes the daemon start the grace again, or look the
/// deleted key up and find it gone). The file is still whole, old or new.
pub fn save_redoable(path: &Path, state: &KeyState) -> Result<(), StateError> {
    save_as(path, state, Rename::MayBeLost)
}

fn save_as(path: &Path, state: &KeyState, rename: Rename) -> Result<(), StateError> {
    let spec = FileSpec {
        path,
        mode: 0o600,
        uid: None,
        gid: None,
    };
    // The temp file's inode is stamped into the content before the
    // rename, so the file on disk names its own inode: a copy does not.
    let write = || {
        let mut stamped = state.clone();
        write_atomic_stamped(&spec, rename, move |inode| {
            stamped.file_id = FileStamp(Some(inode));
            serde_json::to_vec_pretty(&stamped)
                .map(zeroize::Zeroizing::new)
                .map_err(|e| e.to_string())
        })
    };
    // The first save makes `{state dir}/keys` (and the state dir).
    making_private_dir(write)?;
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
            inherited: false,
        });
        s.pending_deletions.push(PendingDeletion {
            id: "00000000-0000-4000-8000-000000000002".into(),
            prefix: "vb_abcdefgh".into(),
            delete_after: Some(datetime!(2026-11-01 01:00 UTC)),
            bootstrap: false,
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

    #[test]
    fn a_state_file_copied_or_moved_to_another_machine_is_not_where_it_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "mcp");
        let mut s = sample();
        s.machine_id = Some("aaaa".into());
        save(&p, &s).unwrap();
        let (loaded, inode) = load_with_inode(&p).unwrap().unwrap();
        assert_eq!(loaded.file_id.0, Some(inode), "the content names its own inode");
        assert_eq!(identity_mismatch(&loaded, Some("aaaa"), inode), None);
        // Saved again: a new inode, recorded again.
        save(&p, &loaded).unwrap();
        let (again, inode2) = load_with_inode(&p).unwrap().unwrap();
        assert_eq!(identity_mismatch(&again, Some("aaaa"), inode2), None);

        // A copy (cp, a restored backup, a copied volume): another inode.
        let q = dir.path().join("copy.json");
        std::fs::copy(&p, &q).unwrap();
        let (copied, inode3) = load_with_inode(&q).unwrap().unwrap();
        let why = identity_mismatch(&copied, Some("aaaa"), inode3).unwrap();
        assert!(why.contains("copy"), "{why}");
        // Another machine (a cloned VM image keeps the inode).
        let why = identity_mismatch(&again, Some("bbbb"), inode2).unwrap();
        assert!(why.contains("machine id"), "{why}");
        assert!(identity_mismatch(&again, None, inode2).is_some());

        // An older state that records neither belongs where it is.
        let mut old = sample();
        old.machine_id = None;
        old.file_id = FileStamp(None);
        assert_eq!(identity_mismatch(&old, Some("cccc"), 42), None);

        // A new installation keeps the current key for use, marked
        // inherited, and forgets what the other one was to delete.
        let mut s = again.clone();
        s.creations.push(Creation {
            nonce: "n".into(),
            at: datetime!(2026-11-01 00:00 UTC),
        });
        let old_name = s.key_name();
        s.start_over_as_new_installation();
        assert_ne!(s.key_name(), old_name);
        assert!(s.current.as_ref().unwrap().inherited);
        assert!(s.pending_deletions.is_empty() && s.creations.is_empty());
    }

    #[test]
    fn the_machine_id_is_the_first_file_that_holds_one() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        assert_eq!(machine_id_from(&[&a, &b]), None);
        std::fs::write(&b, "0123abcd\n").unwrap();
        assert_eq!(machine_id_from(&[&a, &b]).as_deref(), Some("0123abcd"));
        std::fs::write(&a, "\n").unwrap();
        assert_eq!(
            machine_id_from(&[&a, &b]).as_deref(),
            Some("0123abcd"),
            "an empty file is none"
        );
        std::fs::write(&a, "ffff0000\n").unwrap();
        assert_eq!(machine_id_from(&[&a, &b]).as_deref(), Some("ffff0000"));
    }
}
