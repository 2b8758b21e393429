//! Secrets and where passwords come from.
//!
//! A [`Secret`] holds a password or a token. It zeroes its memory on drop,
//! prints as `Secret(***)` in `Debug`, and has no `Display`: the only way to
//! the bytes is [`Secret::expose`], which makes every use easy to audit.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::fsread::{MAX_PASSWORD, ReadError, read_bounded};

/// A password or token. Never printed, zeroed on drop (of its last
/// clone: clones share one copy, so the secret a credential holds, the one
/// it exports and the proxies' are one allocation, not one each).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<Zeroizing<String>>);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(Arc::new(Zeroizing::new(value)))
    }

    /// The secret's text. Call only where the secret is sent or written.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Serialized only where a secret must be stored: the key state file.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// Where a credential's password is read from. Read fresh before every
/// login, so fixing a password file heals a rejected login without restart.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// `password-file`: the file's content, one trailing newline removed.
    File(PathBuf),
    /// `password-env`: an environment variable of the daemon.
    Env(String),
    /// `password-credential`: a file in systemd's `$CREDENTIALS_DIRECTORY`.
    Credential(String),
    /// `password`: inline in the config (warned about at load).
    Inline(Secret),
}

impl fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::File(p) => write!(f, "File({})", p.display()),
            PasswordSource::Env(v) => write!(f, "Env({v})"),
            PasswordSource::Credential(n) => write!(f, "Credential({n})"),
            PasswordSource::Inline(_) => f.write_str("Inline(***)"),
        }
    }
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::File(p) => write!(f, "file {}", p.display()),
            PasswordSource::Env(v) => write!(f, "environment variable {v}"),
            PasswordSource::Credential(n) => write!(f, "systemd credential {n}"),
            PasswordSource::Inline(_) => f.write_str("inline password in the config"),
        }
    }
}

/// Why a password could not be read. Names the source, never the content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Missing, unreadable, not a regular file, or over [`MAX_PASSWORD`] bytes.
    #[error(transparent)]
    File(#[from] ReadError),
    #[error("environment variable {0} is not set or not valid UTF-8")]
    Env(String),
    #[error("password-credential {0} needs $CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=)")]
    NoCredentialsDirectory(String),
    #[error("password from {0} is empty")]
    Empty(String),
    #[error("password file {} is not valid UTF-8", .0.display())]
    NotUtf8(PathBuf),
}

impl PasswordSource {
    /// Reads the password now.
    pub fn read(&self) -> Result<Secret, SecretError> {
        let secret = match self {
            PasswordSource::File(path) => read_password_file(path)?,
            PasswordSource::Env(var) => {
                Secret::new(std::env::var(var).map_err(|_| SecretError::Env(var.clone()))?)
            }
            PasswordSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| SecretError::NoCredentialsDirectory(name.clone()))?;
                read_password_file(&Path::new(&dir).join(name))?
            }
            PasswordSource::Inline(s) => s.clone(),
        };
        if secret.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(secret)
    }

    /// A warning about how the password is kept, if any (inline password,
    /// password file readable by others).
    pub fn warning(&self) -> Option<String> {
        match self {
            PasswordSource::Inline(_) => Some(
                "password is inline in the config; prefer password-file, password-env or password-credential"
                    .to_string(),
            ),
            PasswordSource::File(path) => match std::fs::metadata(path) {
                Ok(m) if m.permissions().mode() & 0o004 != 0 => Some(format!(
                    "password file {} is readable by every user (mode {:04o}); chmod 0600 it",
                    path.display(),
                    m.permissions().mode() & 0o7777
                )),
                _ => None,
            },
            _ => None,
        }
    }
}

fn read_password_file(path: &Path) -> Result<Secret, SecretError> {
    // Never blocks (a FIFO is refused at once) and never reads more than a
    // password can be (`/dev/zero` is refused, a huge file is not sent).
    let bytes = read_bounded(path, MAX_PASSWORD, "password file")?;
    let mut text = std::str::from_utf8(&bytes).map_err(|_| SecretError::NotUtf8(path.to_path_buf()))?;
    // One trailing newline (as `echo` or an editor leaves it) is not part of the password.
    text = text.strip_suffix('\n').unwrap_or(text);
    text = text.strip_suffix('\r').unwrap_or(text);
    Ok(Secret::new(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let src = PasswordSource::Inline(s);
        assert!(!format!("{src:?}").contains("hunter2"));
        assert!(!format!("{src}").contains("hunter2"));
    }

    #[test]
    fn password_file_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "pa ss\n\n").unwrap();
        let s = PasswordSource::File(p.clone()).read().unwrap();
        assert_eq!(s.expose(), "pa ss\n");
        std::fs::write(&p, "pass\r\n").unwrap();
        assert_eq!(PasswordSource::File(p.clone()).read().unwrap().expose(), "pass");
        std::fs::write(&p, "\n").unwrap();
        let err = PasswordSource::File(p).read().unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = PasswordSource::File("/nonexistent/pw".into()).read().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pw"), "{err}");
    }
}
