//! Reading files the daemon did not just write, safely: never blocking,
//! never unbounded, never anything but a regular file.
//!
//! A FIFO without a writer blocks `open()` forever, `/dev/zero` never ends,
//! a 1 GB sparse file is read whole: so every such file is opened with
//! `O_NONBLOCK` (a FIFO then opens at once), checked with `fstat` to be a
//! regular file, and read up to a limit. Symlinks are followed (config and
//! password files are often links, e.g. a Kubernetes ConfigMap or Secret).
//!
//! This module also knows where a path really is ([`Location`]), so the
//! config can tell when two spellings name one file.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

mod location;
pub use location::{Location, Locator, Places};

/// A password is a line of text, not megabytes.
pub const MAX_PASSWORD: u64 = 4 * 1024;
/// An output holds a token (under 16 KiB) plus a format or template.
pub const MAX_OUTPUT: u64 = 64 * 1024;
/// A pid file holds a number.
pub const MAX_PID_FILE: u64 = 4 * 1024;
/// The config file, the status file, a CA bundle (every public root is ~250 KiB).
pub const MAX_CONFIG: u64 = 1024 * 1024;

/// Why a file could not be read. Names the file and what it is for;
/// never quotes its content.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {} is {kind}, not a regular file; refusing to read it", path.display())]
    NotRegular {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("{what} {} is larger than {limit} bytes; refusing to read it", path.display())]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        limit: u64,
    },
}

impl ReadError {
    /// True when the file does not exist (callers often treat that as "nothing there").
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads at most `limit` bytes of the regular file at `path` (symlinks
/// followed) without ever blocking in `open()`. `what` names the file's
/// role in errors ("password file", "output"). The bytes are zeroed on drop.
pub fn read_bounded(path: &Path, limit: u64, what: &'static str) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let (file, meta) = open_regular(path, what)?;
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            what,
            path: path.to_path_buf(),
            limit,
        });
    }
    read_sized(file, meta.len(), limit, what, path)
}

/// Reads at most `limit` bytes from any reader (standard input), refusing more.
pub fn read_capped(
    reader: impl Read,
    limit: u64,
    what: &'static str,
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    read_sized(reader, 0, limit, what, path)
}

/// [`read_capped`] into one buffer of `expected` bytes (a file's size;
/// more are still read up to `limit`) and one to see the end: two reads
/// for a file whose size was right, not a read for each doubling of the
/// buffer, and no grown-out-of buffer with a secret in it handed back to
/// the allocator unzeroed.
pub fn read_sized(
    reader: impl Read,
    expected: u64,
    limit: u64,
    what: &'static str,
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let capacity = usize::try_from(expected.min(limit)).map_or(0, |n| n.saturating_add(1));
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ReadError::Io {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            what,
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

/// Opens `path` for reading with `O_NONBLOCK` and checks it is a regular file.
pub fn open_regular(path: &Path, what: &'static str) -> Result<(File, std::fs::Metadata), ReadError> {
    let io = |source| ReadError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular {
            what,
            path: path.to_path_buf(),
            kind: kind_of(&meta.file_type()),
        });
    }
    Ok((file, meta))
}

/// What kind of file this is, in words.
pub fn kind_of(t: &std::fs::FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

/// The rule for a path the daemon writes by renaming a file over it: it
/// must not exist, be a regular file, or be a symlink (the link itself is
/// replaced). Anything else (device, FIFO, socket, directory) is refused,
/// so a device node never gets a file renamed over it. Looks at the path
/// itself, not through a final symlink; never opens it. Returns what is
/// there: its metadata, or `None` when nothing is (or it cannot be looked
/// at: no permission to the directory, reported by the write itself, with
/// its error).
pub fn replaceable(path: &Path) -> Result<Option<std::fs::Metadata>, String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() || m.file_type().is_symlink() => Ok(Some(m)),
        Ok(m) => Err(format!(
            "{} is {}; an output must be a regular file or not exist",
            path.display(),
            kind_of(&m.file_type())
        )),
        Err(_) => Ok(None),
    }
}

/// The longest file name Linux allows (NAME_MAX), in bytes.
pub const NAME_MAX: usize = 255;

/// Checks every component of `path` is at most [`NAME_MAX`] bytes.
pub fn check_name_lengths(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    match path
        .components()
        .find(|c| c.as_os_str().as_bytes().len() > NAME_MAX)
    {
        Some(c) => Err(format!(
            "a path component is {} bytes long; the limit is {NAME_MAX}",
            c.as_os_str().as_bytes().len()
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn fifo(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p
    }

    #[test]
    fn a_sized_read_takes_whatever_the_reader_holds_up_to_the_limit() {
        let p = Path::new("input");
        let read =
            |bytes: &[u8], expected, limit| read_sized(bytes, expected, limit, "test", p).map(|b| b.to_vec());
        // Exactly the size expected, less (the file shrank), more (it grew).
        assert_eq!(read(b"0123456789", 10, 64).unwrap(), b"0123456789");
        assert_eq!(read(b"0123", 10, 64).unwrap(), b"0123");
        assert_eq!(read(b"0123456789abcdef", 4, 64).unwrap(), b"0123456789abcdef");
        assert_eq!(read(b"", 0, 64).unwrap(), b"");
        // Past the limit it is refused, whatever size was expected.
        for expected in [0, 8, 9, 1000] {
            assert!(matches!(
                read(b"012345678", expected, 8),
                Err(ReadError::TooLarge { limit: 8, .. })
            ));
        }
    }

    #[test]
    fn a_fifo_is_refused_at_once_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = fifo(dir.path(), "pw");
        let started = Instant::now();
        let err = read_bounded(&p, MAX_PASSWORD, "password file").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        let msg = err.to_string();
        assert!(
            msg.contains("FIFO") && msg.contains("password file") && msg.contains("pw"),
            "{msg}"
        );
    }

    #[test]
    fn dev_zero_is_refused_and_large_files_are_not_read() {
        let err = read_bounded(Path::new("/dev/zero"), MAX_PASSWORD, "password file").unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        // A 1 GB sparse file: refused by its size, without reading it.
        File::create(&big).unwrap().set_len(1 << 30).unwrap();
        let started = Instant::now();
        let err = read_bounded(&big, MAX_OUTPUT, "output").unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        std::fs::write(&big, "x".repeat(4097)).unwrap();
        assert!(read_bounded(&big, MAX_PASSWORD, "password file").is_err());
        std::fs::write(&big, "x".repeat(4096)).unwrap();
        assert_eq!(
            read_bounded(&big, MAX_PASSWORD, "password file").unwrap().len(),
            4096
        );
    }

    #[test]
    fn replaceable_means_absent_regular_or_symlink() {
        let check_replaceable = |p: &Path| replaceable(p).map(|_| ());
        let dir = tempfile::tempdir().unwrap();
        check_replaceable(&dir.path().join("absent")).unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        check_replaceable(&f).unwrap();
        let l = dir.path().join("l");
        std::os::unix::fs::symlink("/dev/null", &l).unwrap();
        check_replaceable(&l).unwrap();
        assert!(
            check_replaceable(&fifo(dir.path(), "p"))
                .unwrap_err()
                .contains("FIFO")
        );
        assert!(
            check_replaceable(Path::new("/dev/null"))
                .unwrap_err()
                .contains("character device")
        );
        assert!(check_replaceable(dir.path()).unwrap_err().contains("directory"));
    }

    #[test]
    fn long_names_are_refused() {
        check_name_lengths(Path::new(&format!("/a/{}", "x".repeat(255)))).unwrap();
        assert!(check_name_lengths(Path::new(&format!("/a/{}/b", "x".repeat(256)))).is_err());
    }
}
