//! The atomic file writer.
//!
//! A reader of the target path sees, at every instant, either the whole old
//! content or the whole new content, with the configured mode and owner:
//!
//! 1. create a temp file in the target's directory, exclusively (`O_EXCL`,
//!    so a planted file or symlink is never followed or reused), with the
//!    final mode; then fix the mode against the umask and chown it, all
//!    before a single byte is written;
//! 2. write, fsync;
//! 3. rename over the target (if the target is a symlink, the link itself
//!    is replaced by the file, not the file it points to);
//! 4. fsync the directory, so the rename survives a crash.
//!
//! Any failure removes the temp file and leaves the target untouched.
//!
//! [`write_atomic_many`] writes several files the same way with one
//! directory fsync per directory (a credential's outputs usually share
//! one), after the last rename. [`write_unsynced`] skips both fsyncs: for
//! a file whose loss, or emptiness after a power loss, only repeats work
//! (the status file, rewritten at every start; the record of a login);
//! its readers still never see a partial file.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, LazyLock, Mutex, PoisonError};

/// How the file must look on disk.
#[derive(Debug, Clone, Copy)]
pub struct FileSpec<'a> {
    pub path: &'a Path,
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// The file already held this content with this mode and owner.
    Unchanged,
}

/// A failed write; the target is as it was. Names the path.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("directory {} does not exist (create it; it is not created for you)", .0.display())]
    NoDirectory(PathBuf),
    /// The path is a device, FIFO, socket or directory: never replaced.
    #[error("refusing to write: {0}")]
    NotReplaceable(String),
    #[error("cannot {step} {}: {source}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether [`write_atomic_many`] first reads what a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// A file that already holds its content, with its mode and owner, is
    /// left alone ([`WriteOutcome::Unchanged`]).
    WithFile,
    /// The content holds a secret the server has just issued, which no
    /// file can hold yet: every file is written, unread (a read per file
    /// saved on every renewal and rotation).
    NewSecret,
}

/// Writes each file atomically, unless it already holds its content (see
/// [`Compare`]; a failure leaves the others to be written), then one fsync
/// of each directory a file was renamed into: when this returns, every
/// file written is on disk. One outcome per file, in order.
pub fn write_atomic_many(
    files: &[(FileSpec<'_>, &[u8])],
    compare: Compare,
) -> Vec<Result<WriteOutcome, WriteError>> {
    let mut dirs: Vec<&Path> = Vec::new();
    let outcomes = files
        .iter()
        .map(|(spec, content)| {
            let (dir, now) = target_dir(spec)?;
            if compare == Compare::WithFile && is_current(spec, now, content) {
                return Ok(WriteOutcome::Unchanged);
            }
            replace(spec, dir, Fsync::File, |_| Ok(*content))?;
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
            Ok(WriteOutcome::Written)
        })
        .collect();
    for dir in dirs {
        sync_dir(dir);
    }
    outcomes
}

/// Replaces `spec.path` with `content` as [`write_atomic_many`] does (always:
/// no comparison with what is there) but without any fsync: readers see the
/// old or the new content, never part of one, yet a power loss may lose the
/// write or leave the file empty. Only for a file whose reader takes an
/// empty, old or missing one for none, at the cost of work redone.
pub fn write_unsynced(spec: &FileSpec<'_>, content: &[u8]) -> Result<(), WriteError> {
    let (dir, _) = target_dir(spec)?;
    replace(spec, dir, Fsync::None, |_| Ok(content))
}

/// Writes `value` as pretty JSON (and a newline) to `path` in the state
/// directory with [`write_unsynced`], making its directory (0700) on the
/// first write that finds it missing: for the daemon's own reports
/// (`status.json`, a login's record), which hold no secret and whose loss
/// only costs work redone.
pub fn write_report(path: &Path, mode: u32, value: &impl serde::Serialize) -> Result<(), String> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    text.push('\n');
    let spec = FileSpec {
        path,
        mode,
        uid: None,
        gid: None,
    };
    making_private_dir(|| write_unsynced(&spec, text.as_bytes())).map_err(|e| e.to_string())
}

/// Runs `write`; if it finds its directory missing, makes that directory
/// (mode 0700, with any missing parents) and runs it once more. For the
/// state directory's own subdirectories (`keys/`, `tokens/`), made by
/// their first write rather than looked for before every one.
pub fn making_private_dir<T>(write: impl Fn() -> Result<T, WriteError>) -> Result<T, WriteError> {
    match write() {
        Err(WriteError::NoDirectory(dir)) => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io("create the directory", &dir))?;
            write()
        }
        written => written,
    }
}

/// The directory `spec.path` goes in, once it exists and the path may be
/// replaced, and what is at the path now (see [`crate::fsread::replaceable`]).
/// Checked before every write, not only at load: a device node, FIFO or
/// socket put there since must never get a file renamed over it.
fn target_dir<'a>(spec: &FileSpec<'a>) -> Result<(&'a Path, Option<std::fs::Metadata>), WriteError> {
    let dir = match spec.path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let now = crate::fsread::replaceable(spec.path).map_err(WriteError::NotReplaceable)?;
    // Something there: its directory exists.
    if now.is_none() && !dir.is_dir() {
        return Err(WriteError::NoDirectory(dir.to_path_buf()));
    }
    Ok((dir, now))
}

/// Whether [`replace`] fsyncs the temp file before the rename.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fsync {
    File,
    None,
}

/// The one way a file is replaced: a temp file beside it, created
/// exclusively with its mode, filled with what `content` makes of it (mode
/// and owner, bytes, fsync), renamed over the target. The caller fsyncs the
/// directory ([`sync_dir`]) for the rename to survive a crash. A failure
/// removes the temp file and leaves the target as it was.
fn replace<C: AsRef<[u8]>>(
    spec: &FileSpec<'_>,
    dir: &Path,
    fsync: Fsync,
    content: impl FnOnce(&File) -> Result<C, WriteError>,
) -> Result<(), WriteError> {
    let path = spec.path;
    let tmp = dir.join(temp_name(path));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(spec.mode)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io("create a temp file beside", path))?;
    let result = content(&file)
        .and_then(|c| fill(&mut file, spec, c.as_ref(), fsync))
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, path).map_err(io("rename a temp file onto", path))
        });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Returns once a fsync of `dir` that began after this call is done, so
/// the renames into it made before survive a crash. The renames are done;
/// a failure only weakens crash safety, so it is logged, not returned.
///
/// Threads share the fsyncs of one directory (a group commit): a caller
/// waits for the next fsync of its directory if one is running, and runs
/// it itself if none is. With many credentials writing into one directory
/// at once (a start with 1000), one fsync serves every rename made before
/// it began, instead of one each.
fn sync_dir(dir: &Path) {
    let shared = &*DIR_SYNCS;
    let mut dirs = shared.dirs.lock().unwrap_or_else(PoisonError::into_inner);
    let entry = dirs.entry(dir.to_path_buf()).or_default();
    // The first fsync to begin from now on covers this caller's renames.
    let needed = entry.begun + 1;
    entry.callers += 1;
    loop {
        let Some(syncs) = dirs.get_mut(dir) else {
            return;
        };
        if syncs.finished >= needed {
            break;
        }
        if syncs.running {
            dirs = shared.done.wait(dirs).unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        syncs.running = true;
        syncs.begun += 1;
        let this = syncs.begun;
        drop(dirs);
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync directory");
        }
        dirs = shared.dirs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(syncs) = dirs.get_mut(dir) {
            syncs.running = false;
            syncs.finished = this;
        }
        shared.done.notify_all();
    }
    if let Some(syncs) = dirs.get_mut(dir) {
        syncs.callers -= 1;
        if syncs.callers == 0 {
            dirs.remove(dir);
        }
    }
}

/// The directory fsyncs under way, by directory (see [`sync_dir`]).
struct DirSyncs {
    dirs: Mutex<HashMap<PathBuf, Syncs>>,
    done: Condvar,
}

static DIR_SYNCS: LazyLock<DirSyncs> = LazyLock::new(|| DirSyncs {
    dirs: Mutex::new(HashMap::new()),
    done: Condvar::new(),
});

/// One directory's fsyncs: how many began and the last one finished
/// (numbered from 1), whether one is running, how many callers wait.
#[derive(Default)]
struct Syncs {
    begun: u64,
    finished: u64,
    running: bool,
    callers: usize,
}

/// Mode and owner first, then the bytes, then (unless told not to) fsync.
fn fill(file: &mut File, spec: &FileSpec<'_>, content: &[u8], fsync: Fsync) -> Result<(), WriteError> {
    let path = spec.path;
    // The umask may have narrowed the mode at creation; set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(spec.mode))
        .map_err(io("set the mode of the temp file for", path))?;
    if spec.uid.is_some() || spec.gid.is_some() {
        std::os::unix::fs::fchown(&*file, spec.uid, spec.gid)
            .map_err(io("change the owner of the temp file for", path))?;
    }
    file.write_all(content)
        .map_err(io("write the temp file for", path))?;
    if fsync == Fsync::File {
        file.sync_all().map_err(io("fsync the temp file for", path))?;
    }
    Ok(())
}

/// True if the target, whose metadata (not through a final symlink) is
/// `now`, is a regular file (not a symlink) that already has this content,
/// mode and owner.
fn is_current(spec: &FileSpec<'_>, now: Option<std::fs::Metadata>, content: &[u8]) -> bool {
    let Some(meta) = now else {
        return false;
    };
    if !meta.file_type().is_file()
        || meta.mode() & 0o7777 != spec.mode
        || meta.len() != content.len() as u64
        || spec.uid.is_some_and(|u| u != meta.uid())
        || spec.gid.is_some_and(|g| g != meta.gid())
    {
        return false;
    }
    // Bounded and non-blocking, like every read of a file we did not just write.
    match crate::fsread::read_bounded(spec.path, content.len() as u64, "output") {
        Ok(old) => old.as_slice() == content,
        Err(_) => false,
    }
}

fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    format!(".{name}.tmp-")
}

/// `.{name}.tmp-{pid}-{random}`: the pid says which process left it.
fn temp_name(path: &Path) -> String {
    // The pid is read once (a system call each time otherwise); the
    // daemon never forks a process that writes files.
    static PID: LazyLock<u32> = LazyLock::new(std::process::id);
    format!("{}{}-{:016x}", temp_prefix(path), *PID, fastrand::u64(..))
}

/// Removes the temp files an earlier, killed process left beside any of
/// `paths`, listing each directory once (with 1000 outputs in one
/// directory, a listing per output cost a second of a start). Returns
/// each path beside which some were removed, and how many.
///
/// Only the holder of the state directory's lock may call this: another
/// process's write in progress would lose its temp file.
pub fn remove_stale_temps<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<(PathBuf, usize)> {
    let mut by_dir: BTreeMap<&Path, BTreeMap<&str, &Path>> = BTreeMap::new();
    for path in paths {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            by_dir.entry(dir).or_default().insert(name, path);
        }
    }
    let mut removed: BTreeMap<&Path, usize> = BTreeMap::new();
    for (dir, names) in by_dir {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(path) = name.to_str().and_then(|n| temp_target(n, &names)) else {
                continue;
            };
            // A symlink is removed, never followed; a directory stays.
            if std::fs::remove_file(entry.path()).is_ok() {
                *removed.entry(path).or_default() += 1;
            }
        }
    }
    removed.into_iter().map(|(p, n)| (p.to_path_buf(), n)).collect()
}

/// The name among `names` whose temp file `name` is: `name` starts with
/// `.{target}.tmp-` (what [`temp_name`] makes, or a file planted to look
/// like one).
fn temp_target<'n, T>(name: &str, names: &'n BTreeMap<&str, T>) -> Option<&'n T> {
    let rest = name.strip_prefix('.')?;
    rest.match_indices(".tmp-")
        .find_map(|(at, _)| names.get(&rest[..at]))
}

/// Whether the rename of a replacement must be on disk when the write
/// returns (the file's bytes always are, before the rename).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rename {
    /// The directory is fsynced after the rename.
    Durable,
    /// It is not: a crash may bring the old file back, whole. Only for a
    /// write whose loss repeats or delays work, never loses any.
    MayBeLost,
}

/// Like [`write_atomic_many`] for one file, but the content is made once the temp file
/// exists, from its inode number (always written: the content differs on
/// every write). The file then carries the identity it has on disk, so a
/// copy (a new inode) can be told from the file this process wrote: the
/// key state uses it to notice a cloned state directory.
pub fn write_atomic_stamped(
    spec: &FileSpec<'_>,
    rename: Rename,
    make: impl FnOnce(u64) -> Result<zeroize::Zeroizing<Vec<u8>>, String>,
) -> Result<WriteOutcome, WriteError> {
    let (dir, _) = target_dir(spec)?;
    replace(spec, dir, Fsync::File, |file| {
        let meta = file.metadata().map_err(io("stat the temp file for", spec.path))?;
        make(meta.ino()).map_err(|e| WriteError::Io {
            step: "make the content of",
            path: spec.path.to_path_buf(),
            source: std::io::Error::other(e),
        })
    })?;
    if rename == Rename::Durable {
        sync_dir(dir);
    }
    Ok(WriteOutcome::Written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_atomic(spec: &FileSpec<'_>, content: &[u8]) -> Result<WriteOutcome, WriteError> {
        write_atomic_many(&[(*spec, content)], Compare::WithFile)
            .pop()
            .unwrap()
    }
    use std::os::unix::fs::FileTypeExt;

    fn spec(path: &Path, mode: u32) -> FileSpec<'_> {
        FileSpec {
            path,
            mode,
            uid: None,
            gid: None,
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_with_mode_then_skips_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        assert_eq!(
            write_atomic(&spec(&p, 0o640), b"one").unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(
            write_atomic(&spec(&p, 0o640), b"one").unwrap(),
            WriteOutcome::Unchanged
        );
        // A mode change alone rewrites.
        assert_eq!(
            write_atomic(&spec(&p, 0o600), b"one").unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(
            write_atomic(&spec(&p, 0o600), b"two").unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(entries(dir.path()), ["t"]);
    }

    #[test]
    fn missing_directory_is_named_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope/t");
        let err = write_atomic(&spec(&p, 0o600), b"x").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(!dir.path().join("nope").exists());
    }

    #[test]
    fn special_files_are_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = write_atomic(&spec(&fifo, 0o600), b"x").unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(write_atomic(&spec(&sock, 0o600), b"x").is_err());
        assert!(std::fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
        assert_eq!(entries(dir.path()), ["fifo", "sock"]);
    }

    #[test]
    fn symlink_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let p = dir.path().join("t");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write_atomic(&spec(&p, 0o600), b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_file());
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn failed_rename_leaves_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: rename onto it fails.
        let p = dir.path().join("t");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), "x").unwrap();
        assert!(write_atomic(&spec(&p, 0o600), b"new").is_err());
        assert_eq!(entries(dir.path()), ["t"]);
    }

    #[test]
    fn a_new_secret_is_written_without_reading_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "same").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ino = || std::fs::metadata(&p).unwrap().ino();
        let before = ino();
        let files = [(spec(&p, 0o600), &b"same"[..])];
        let compared = write_atomic_many(&files, Compare::WithFile);
        assert_eq!(compared[0].as_ref().unwrap(), &WriteOutcome::Unchanged);
        assert_eq!(ino(), before);
        // Not read: replaced (a new inode) even though it held the content.
        let unread = write_atomic_many(&files, Compare::NewSecret);
        assert_eq!(unread[0].as_ref().unwrap(), &WriteOutcome::Written);
        assert_ne!(ino(), before);
        assert_eq!(std::fs::read(&p).unwrap(), b"same");
        assert_eq!(entries(dir.path()), ["t"]);
    }

    /// Writing unread skips only the comparison: a FIFO (or any file that
    /// is not a regular one) where an output should be is still refused,
    /// not opened (which would block) nor replaced.
    #[test]
    fn a_new_secret_still_refuses_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let outcomes = write_atomic_many(&[(spec(&fifo, 0o600), &b"x"[..])], Compare::NewSecret);
        assert!(outcomes[0].as_ref().unwrap_err().to_string().contains("FIFO"));
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(entries(dir.path()), ["fifo"]);
    }

    #[test]
    fn many_files_each_written_or_refused_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (a, fifo, b) = (
            dir.path().join("a"),
            dir.path().join("fifo"),
            dir.path().join("b"),
        );
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::write(&b, "same").unwrap();
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o600)).unwrap();
        let files = [
            (spec(&a, 0o640), &b"one"[..]),
            (spec(&fifo, 0o600), &b"x"[..]),
            (spec(&b, 0o600), &b"same"[..]),
        ];
        let outcomes = write_atomic_many(&files, Compare::WithFile);
        assert_eq!(outcomes.len(), 3);
        assert_eq!(outcomes[0].as_ref().unwrap(), &WriteOutcome::Written);
        assert!(outcomes[1].as_ref().unwrap_err().to_string().contains("FIFO"));
        assert_eq!(outcomes[2].as_ref().unwrap(), &WriteOutcome::Unchanged);
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::metadata(&a).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(entries(dir.path()), ["a", "b", "fifo"]);
    }

    #[test]
    fn a_report_replaces_whole_without_temps_left() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("status.json");
        write_unsynced(&spec(&p, 0o644), b"{}").unwrap();
        write_unsynced(&spec(&p, 0o644), b"{\"a\":1}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}");
        assert_eq!(entries(dir.path()), ["status.json"]);
        assert!(write_unsynced(&spec(&dir.path().join("nope/s"), 0o644), b"{}").is_err());
    }

    #[test]
    fn concurrent_directory_fsyncs_all_return_and_leave_nothing_behind() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::thread::scope(|scope| {
            for i in 0..16 {
                let dir = if i % 2 == 0 { a.path() } else { b.path() };
                scope.spawn(move || {
                    for _ in 0..20 {
                        sync_dir(dir);
                    }
                });
            }
        });
        let dirs = DIR_SYNCS.dirs.lock().unwrap();
        assert!(!dirs.contains_key(a.path()) && !dirs.contains_key(b.path()));
    }

    #[test]
    fn stale_temps_are_removed() {
        let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (t, u, v) = (
            dir.path().join("t"),
            dir.path().join("u.tmp-1"),
            other.path().join("v"),
        );
        for name in [
            ".t.tmp-1-00000000000000ab",
            ".t.tmp-evil",
            ".u.tmp-1.tmp-2-0123456789abcdef",
            ".other.tmp-1-00000000000000ab",
            ".t.tm-1",
            "t.tmp-1-00000000000000ab",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        std::fs::write(other.path().join("target"), "x").unwrap();
        std::os::unix::fs::symlink(other.path().join("target"), other.path().join(".v.tmp-9")).unwrap();
        // A directory of a temp's name is not ours to remove.
        std::fs::create_dir(other.path().join(".v.tmp-8-00000000000000ab")).unwrap();
        let mut removed = remove_stale_temps([t.as_path(), u.as_path(), v.as_path()]);
        let mut expected = vec![(t, 2), (u, 1), (v, 1)];
        removed.sort();
        expected.sort();
        assert_eq!(removed, expected);
        assert_eq!(
            entries(dir.path()),
            [
                ".other.tmp-1-00000000000000ab",
                ".t.tm-1",
                "t.tmp-1-00000000000000ab"
            ]
        );
        // The link went, not what it pointed to.
        assert_eq!(entries(other.path()), [".v.tmp-8-00000000000000ab", "target"]);
    }
}
