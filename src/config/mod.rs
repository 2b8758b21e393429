//! The config file: TOML in, a validated [`Config`] out.
//!
//! Parsing happens in two steps. serde reads the file into `Raw*` structs
//! that mirror the TOML exactly (kebab-case keys, unknown keys refused);
//! `validate` then turns them into the types the daemon uses, resolving
//! relative paths against the config file's directory, checking every value,
//! and naming the key of anything wrong. `check`, `run`, `once` and a reload
//! all go through [`Config::load`], so they agree on what is valid.
//!
//! - `model`: the validated types ([`Config`] and its parts, [`ConfigError`]);
//! - `raw`: the file as written;
//! - `validate`: raw -> model, one section at a time;
//! - `credential`: the checks of one `[[credential]]` (kind, login or
//!   bootstrap key, key times, renewal policy);
//! - `output`: the checks of one `[[credential.output]]` (format, mode,
//!   owner and group, hooks);
//! - `proxy`: the checks of each `[[proxy]]` (a loopback address or a unix
//!   socket, its credential, mode and group; the socket against the
//!   daemon's files);
//! - `paths`: the checks that look at the filesystem (outputs never on an
//!   input or in the state directory, one file per bootstrap key).

mod credential;
mod model;
mod names;
mod output;
mod paths;
mod proxy;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub use model::{
    AccessKeyConfig, ApiConfig, Config, ConfigError, CredentialConfig, DEFAULT_BASE_URL, DEFAULT_CONFIG_PATH,
    DEFAULT_SOCKET_MODE, HealthConfig, Kind, Listen, Login, MIN_KEY_LIFETIME, OutputConfig, Owner,
    ProxyConfig, RenewalPolicy,
};
pub use names::{is_env_name, reserved_for_a_secret};
pub use paths::{same_input, same_key_source};
pub use proxy::MAX_SOCKET_PATH;
pub use validate::{read_ca_file, read_ca_file_der};

use paths::{check_bootstrap_files, check_paths};
use proxy::check_proxy_paths;
use raw::RawConfig;

impl Config {
    /// Every credential's output paths.
    pub fn output_paths(&self) -> impl Iterator<Item = &Path> {
        self.credentials
            .iter()
            .flat_map(|c| c.outputs.iter().map(|o| o.path.as_path()))
    }

    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_for(path, Use::Daemon)
    }

    /// [`Config::load`] for `exec` or the others.
    pub fn load_for(path: &Path, use_: Use) -> Result<Config, ConfigError> {
        Config::from_file_text_for(&Config::read(path)?, path, use_)
    }

    /// The config file's text.
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        let io = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        // Never blocks on a FIFO, never reads a device or a huge file.
        let bytes = crate::fsread::read_bounded(path, crate::fsread::MAX_CONFIG, "config file")
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not valid UTF-8",
            ))
        })
    }

    /// Validates text just read from the file at `path`, with the warnings
    /// that depend on the file itself (its permissions).
    pub fn from_file_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::from_file_text_for(text, path, Use::Daemon)
    }

    /// [`Config::from_file_text`] for `exec` or the others.
    pub fn from_file_text_for(text: &str, path: &Path, use_: Use) -> Result<Config, ConfigError> {
        let mut config = Config::parse_for(text, path, use_)?;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o002 != 0
        {
            config.warnings.push(format!(
                "config file {} is writable by every user; anyone could point it elsewhere",
                path.display()
            ));
        }
        check_paths(&config)?;
        check_bootstrap_files(&config)?;
        check_proxy_paths(&config)?;
        Ok(config)
    }

    /// Validates config text as if it were read from `path` (which is used
    /// in messages and to resolve relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_for(text, path, Use::Daemon)
    }

    /// [`Config::parse`] for `exec` or the others.
    pub fn parse_for(text: &str, path: &Path, use_: Use) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        let config = validate::validate(raw, path)?;
        if use_ == Use::Daemon
            && let Some(c) = config
                .credentials
                .iter()
                .find(|c| c.outputs.is_empty() && !config.proxies.iter().any(|p| p.credential == c.name))
        {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: format!("credential[{}].output", c.name),
                message: "no [[credential.output]]; a credential needs at least one file to write \
                          (only `exec` or a [[proxy]] uses one without: its secret then lives in the child's environment or is added to proxied requests)"
                    .into(),
            });
        }
        Ok(config)
    }
}

/// What a config is loaded for: a credential with no output is only
/// useful to `exec`, whose child gets the secret in its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// `run`, `once`, `check`, `status`, `demo`.
    Daemon,
    Exec,
}

/// A TOML error without the offending line's text, which could hold an
/// inline password: only its position and the parser's message.
fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            (line, column)
        }
        None => (0, 0),
    };
    let mut message = e.message().trim_end().to_string();
    if message == "duplicate key"
        && let Some(key) = e.span().and_then(|span| text.get(span)).and_then(key_name)
    {
        message = format!("duplicate key `{key}`");
    }
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        message,
    }
}

/// The key a parser error points at, if the span is one plain key: a key
/// is never secret, but a span over anything else might be a value.
fn key_name(span_text: &str) -> Option<&str> {
    let key = span_text.trim().trim_matches(|c| c == '"' || c == '\'');
    let plain = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plain.then_some(key)
}
