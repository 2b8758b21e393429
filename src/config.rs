//! The config file: TOML in, a validated [`Config`] out.
//!
//! Parsing happens in two steps. serde reads the file into `Raw*` structs
//! that mirror the TOML exactly (kebab-case keys, unknown keys refused);
//! [`validate`] then turns them into the types the daemon uses, resolving
//! relative paths against the config file's directory, checking every value,
//! and naming the key of anything wrong. `check`, `run`, `once` and a reload
//! all go through [`Config::load`], so they agree on what is valid.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::{PasswordSource, Secret};

/// Where the config is read from when `-c` and `$VOIPBIN_TOKEND_CONFIG` are absent.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/voipbin-tokend/config.toml";
pub const DEFAULT_BASE_URL: &str = "https://api.voipbin.net";
const DEFAULT_STATE_DIR: &str = "/var/lib/voipbin-tokend";

/// A config that failed to load. Every variant names the file; `Invalid`
/// also names the key. None of them quotes a value from the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: line {line}, column {column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was loaded from.
    pub path: PathBuf,
    pub api: ApiConfig,
    pub health: Option<HealthConfig>,
    pub state_dir: PathBuf,
    pub credentials: Vec<CredentialConfig>,
    /// Things worth a warning that do not make the config invalid.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub base_url: reqwest::Url,
    /// Whole-request timeout of a login.
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    /// Logins allowed in any one-second window, all credentials together; 0 = no limit.
    pub max_logins_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CredentialConfig {
    pub name: String,
    pub kind: Kind,
    /// The agent login: the whole point of a login-token credential; for an
    /// access key, how key calls authenticate when it has no
    /// `bootstrap-key-file`.
    pub login: Option<Login>,
    pub renewal: RenewalPolicy,
    pub outputs: Vec<OutputConfig>,
}

/// An agent's username and where its password comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Login {
    pub username: String,
    pub password: PasswordSource,
}

/// What a credential holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A login token from `POST /auth/login` (the default).
    LoginToken,
    /// A VoIPBIN access key, rotated by creating its successor.
    AccessKey(AccessKeyConfig),
}

/// How an access key is rotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeyConfig {
    /// A key made on the admin page, used until the daemon holds its own;
    /// `None` with an agent login.
    pub bootstrap_key_file: Option<PathBuf>,
    /// `expire` of each new key (at least a day).
    pub lifetime: Duration,
    /// How long a replaced key stays alive after its successor is on disk.
    pub grace: Duration,
    /// False: replaced keys are left to expire on their own.
    pub delete_replaced: bool,
    /// With an agent login: how often the held key is looked up (it is
    /// never used, so a deletion out of band is noticed only this way).
    pub lookup_every: Duration,
}

/// The least key lifetime the server accepts.
pub const MIN_KEY_LIFETIME: Duration = Duration::from_secs(86_400);

impl CredentialConfig {
    /// True when a secret obtained under `self` is still right for `other`:
    /// same kind, same account, same password source, same bootstrap key
    /// file. (The API settings are compared by the caller, as they are
    /// shared by all credentials.)
    pub fn same_login(&self, other: &CredentialConfig) -> bool {
        let key_source = |c: &CredentialConfig| match &c.kind {
            Kind::LoginToken => None,
            Kind::AccessKey(k) => Some(k.bootstrap_key_file.clone()),
        };
        self.login == other.login && key_source(self) == key_source(other)
    }

    /// The agent's username, or "" for a self-rotating access key.
    pub fn username(&self) -> &str {
        self.login.as_ref().map_or("", |l| l.username.as_str())
    }

    /// The access-key settings, for an access-key credential.
    pub fn key(&self) -> Option<&AccessKeyConfig> {
        match &self.kind {
            Kind::AccessKey(k) => Some(k),
            Kind::LoginToken => None,
        }
    }
}

/// When to renew and how to back off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewalPolicy {
    /// Fraction of the lifetime after which renewal is due.
    pub renew_at: f64,
    /// Plus or minus this fraction of the lifetime, drawn anew each time.
    pub jitter: f64,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        RenewalPolicy {
            renew_at: 0.8,
            jitter: 0.05,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputConfig {
    pub path: PathBuf,
    pub format: Format,
    /// Permission bits, applied on every write.
    pub mode: u32,
    pub owner: Option<Owner>,
    pub group: Option<Owner>,
    pub on_change: Option<Vec<String>>,
    /// Variables of the daemon's environment passed through to `on-change`.
    pub hook_env: Vec<String>,
    pub signal: Option<nix::sys::signal::Signal>,
    pub pid_file: Option<PathBuf>,
}

/// A user or group, as written in the config and as resolved to an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub id: u32,
}

/// What an output file holds; see [`crate::output::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Raw,
    Env { variable: String },
    Shell { variable: String },
    Json,
    Template { template: String },
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Raw => f.write_str("raw"),
            Format::Env { variable } => write!(f, "env ({variable})"),
            Format::Shell { variable } => write!(f, "shell ({variable})"),
            Format::Json => f.write_str("json"),
            Format::Template { .. } => f.write_str("template"),
        }
    }
}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    api: RawApi,
    health: Option<RawHealth>,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    credential: Vec<RawCredential>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawApi {
    base_url: Option<String>,
    timeout: Option<String>,
    ca_file: Option<PathBuf>,
    max_logins_per_second: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawHealth {
    listen: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawCredential {
    name: String,
    kind: Option<String>,
    username: Option<String>,
    bootstrap_key_file: Option<PathBuf>,
    lifetime: Option<String>,
    grace: Option<String>,
    delete_replaced: Option<bool>,
    lookup_every: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    password_credential: Option<String>,
    password: Option<Secret>,
    renew_at: Option<f64>,
    jitter: Option<f64>,
    retry_min: Option<String>,
    retry_max: Option<String>,
    #[serde(default)]
    output: Vec<RawOutput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawOutput {
    path: PathBuf,
    format: Option<String>,
    mode: Option<String>,
    owner: Option<String>,
    group: Option<String>,
    variable: Option<String>,
    template: Option<String>,
    on_change: Option<Vec<String>>,
    hook_env: Option<Vec<String>>,
    signal: Option<String>,
    pid_file: Option<PathBuf>,
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_file_text(&Config::read(path)?, path)
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
        let mut config = Config::parse(text, path)?;
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
        Ok(config)
    }

    /// Validates config text as if it were read from `path` (which is used
    /// in messages and to resolve relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        validate(raw, path)
    }
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

/// Builds the validated config, or the first error found.
fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let v = Validator { path, base: &base };
    let mut warnings = Vec::new();

    let api = v.api(raw.api)?;
    let health = match raw.health {
        Some(h) => Some(HealthConfig {
            listen: h.listen.parse().map_err(|_| {
                v.err(
                    "health.listen",
                    format!("not an address:port like 127.0.0.1:9464: {:?}", h.listen),
                )
            })?,
        }),
        None => None,
    };
    let state_dir = match raw.state.dir {
        Some(d) => v.path("state.dir", &d)?,
        None => std::env::var_os("STATE_DIRECTORY")
            .and_then(|s| {
                // systemd joins several StateDirectory= entries with ':'.
                s.to_str().and_then(|s| s.split(':').next().map(PathBuf::from))
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
    };

    if raw.credential.is_empty() {
        return Err(v.err("credential", "no [[credential]] defined; nothing to do".into()));
    }
    let mut names = HashSet::new();
    let mut paths = std::collections::HashMap::new();
    let mut credentials = Vec::new();
    for (i, rc) in raw.credential.into_iter().enumerate() {
        let cred = v.credential(i, rc)?;
        if !names.insert(cred.name.clone()) {
            return Err(v.err(
                &format!("credential[{i}].name"),
                format!(
                    "{:?} is used by an earlier credential; names must be unique",
                    cred.name
                ),
            ));
        }
        for (j, out) in cred.outputs.iter().enumerate() {
            let key = format!("credential[{}].output[{j}].path", cred.name);
            if let Some(first) = paths.insert(out.path.clone(), key.clone()) {
                return Err(v.err(
                    &key,
                    format!(
                        "{} is the same file as {first}; every output needs its own file",
                        out.path.display()
                    ),
                ));
            }
        }
        if let Some(w) = cred.login.as_ref().and_then(|l| l.password.warning()) {
            warnings.push(format!("credential {}: {w}", cred.name));
        }
        for (j, out) in cred.outputs.iter().enumerate() {
            if out.mode & 0o004 != 0 {
                warnings.push(format!(
                    "{}: credential[{}].output[{j}].mode: {:04o} lets every user on this machine read the token in {}",
                    path.display(),
                    cred.name,
                    out.mode,
                    out.path.display()
                ));
            }
        }
        credentials.push(cred);
    }

    if let Some(cred) = credentials.iter().find(|c| c.key().is_some()) {
        check_state_dir_writable(&state_dir).map_err(|m| {
            v.err(
                "state.dir",
                format!(
                    "credential {} holds an access key, whose state lives here: {m}",
                    cred.name
                ),
            )
        })?;
    }
    for cred in &credentials {
        if let Some(k) = cred.key()
            && let Some(file) = &k.bootstrap_key_file
            && let Ok(meta) = std::fs::metadata(file)
            && meta.permissions().mode() & 0o004 != 0
        {
            warnings.push(format!(
                "credential {}: bootstrap-key-file {} is readable by every user",
                cred.name,
                file.display()
            ));
        }
    }
    refuse_passwords_in_hook_env(&v, &credentials)?;

    Ok(Config {
        path: path.to_path_buf(),
        api,
        health,
        state_dir,
        credentials,
        warnings,
    })
}

/// The state dir, or its nearest existing parent (it is created when
/// needed), must be a directory this process can write.
fn check_state_dir_writable(dir: &Path) -> Result<(), String> {
    let mut probe = dir;
    loop {
        match std::fs::metadata(probe) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => return Err(format!("{} is not a directory", probe.display())),
            Err(_) => match probe.parent() {
                Some(parent) if parent.as_os_str().is_empty() => probe = Path::new("."),
                Some(parent) => probe = parent,
                None => return Err(format!("no part of {} exists", dir.display())),
            },
        }
    }
    nix::unistd::access(
        probe,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| format!("{} is not writable by this process: {e}", probe.display()))
}

/// A hook is not trusted with a password (the point of its clean
/// environment): `hook-env` may not name the `password-env` variable of
/// any credential, its own or another's.
fn refuse_passwords_in_hook_env(
    v: &Validator<'_>,
    credentials: &[CredentialConfig],
) -> Result<(), ConfigError> {
    let password_vars: Vec<(&str, &str)> = credentials
        .iter()
        .filter_map(|c| match c.login.as_ref().map(|l| &l.password) {
            Some(PasswordSource::Env(var)) => Some((var.as_str(), c.name.as_str())),
            _ => None,
        })
        .collect();
    for cred in credentials {
        for (j, out) in cred.outputs.iter().enumerate() {
            if let Some((var, owner)) = password_vars
                .iter()
                .find(|(var, _)| out.hook_env.iter().any(|h| h == var))
            {
                return Err(v.err(
                    &format!("credential[{}].output[{j}].hook-env", cred.name),
                    format!("{var:?} holds the password of credential {owner:?} (password-env); hooks may not see it"),
                ));
            }
        }
    }
    Ok(())
}

struct Validator<'a> {
    path: &'a Path,
    base: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message,
        }
    }

    /// [`Self::resolve`], after checking no component is longer than the
    /// filesystem allows (such a path could never be opened).
    fn path(&self, key: &str, p: &Path) -> Result<PathBuf, ConfigError> {
        crate::fsread::check_name_lengths(p).map_err(|m| self.err(key, m))?;
        Ok(self.resolve(p))
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn duration(&self, key: &str, value: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
        let Some(text) = value else { return Ok(default) };
        let d = humantime::parse_duration(&text).map_err(|e| {
            self.err(
                key,
                format!("{text:?} is not a duration like \"30s\" or \"5m\": {e}"),
            )
        })?;
        if d.is_zero() {
            return Err(self.err(key, "must be longer than zero".into()));
        }
        Ok(d)
    }

    fn api(&self, raw: RawApi) -> Result<ApiConfig, ConfigError> {
        let text = raw.base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        let base_url = reqwest::Url::parse(&text)
            .map_err(|e| self.err("api.base-url", format!("{text:?} is not a URL: {e}")))?;
        match base_url.scheme() {
            "https" => {}
            "http" if is_loopback(&base_url) => {}
            "http" => {
                return Err(self.err(
                    "api.base-url",
                    "http:// is allowed only for loopback addresses (tests, demo); use https://".into(),
                ));
            }
            other => return Err(self.err("api.base-url", format!("scheme {other:?} is not http(s)"))),
        }
        if !base_url.username().is_empty() || base_url.password().is_some() {
            return Err(self.err("api.base-url", "must not carry a user or password".into()));
        }
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(self.err("api.base-url", "must not have a query or fragment".into()));
        }
        let timeout = self.duration("api.timeout", raw.timeout, Duration::from_secs(30))?;
        let ca_file = match raw.ca_file {
            Some(p) => {
                let p = self.path("api.ca-file", &p)?;
                read_ca_file(&p).map_err(|m| self.err("api.ca-file", m))?;
                Some(p)
            }
            None => None,
        };
        Ok(ApiConfig {
            base_url,
            timeout,
            ca_file,
            max_logins_per_second: raw.max_logins_per_second.unwrap_or(5),
        })
    }

    fn credential(&self, i: usize, raw: RawCredential) -> Result<CredentialConfig, ConfigError> {
        let name_ok = !raw.name.is_empty()
            && raw.name.len() <= 64
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(self.err(
                &format!("credential[{i}].name"),
                format!("{:?} must be 1 to 64 of a-z, 0-9, '_' and '-'", raw.name),
            ));
        }
        let key = |k: &str| format!("credential[{}].{k}", raw.name);
        let is_key = match raw.kind.as_deref().unwrap_or("login-token") {
            "login-token" => false,
            "access-key" => true,
            other => {
                return Err(self.err(
                    &key("kind"),
                    format!("{other:?} is not one of login-token, access-key"),
                ));
            }
        };
        if !is_key {
            for (set, k) in [
                (raw.bootstrap_key_file.is_some(), "bootstrap-key-file"),
                (raw.lifetime.is_some(), "lifetime"),
                (raw.grace.is_some(), "grace"),
                (raw.delete_replaced.is_some(), "delete-replaced"),
                (raw.lookup_every.is_some(), "lookup-every"),
            ] {
                if set {
                    return Err(self.err(&key(k), "only for kind = \"access-key\"".into()));
                }
            }
        }
        let has_password = raw.password_file.is_some()
            || raw.password_env.is_some()
            || raw.password_credential.is_some()
            || raw.password.is_some();
        let bootstrap = raw
            .bootstrap_key_file
            .as_ref()
            .map(|p| self.path(&key("bootstrap-key-file"), p))
            .transpose()?;
        let login = if is_key && bootstrap.is_some() {
            if raw.username.is_some() || has_password {
                return Err(self.err(
                    &key("bootstrap-key-file"),
                    "give either bootstrap-key-file or an agent login (username and a password source), not both"
                        .into(),
                ));
            }
            None
        } else if is_key && raw.username.is_none() && !has_password {
            return Err(self.err(
                &key("bootstrap-key-file"),
                "an access key needs bootstrap-key-file (a key made on the admin page) or an agent login (username and a password source)"
                    .into(),
            ));
        } else {
            Some(self.login(
                &key,
                raw.username,
                raw.password_file,
                raw.password_env,
                raw.password_credential,
                raw.password,
            )?)
        };
        let kind = if is_key {
            let lifetime = self.duration(&key("lifetime"), raw.lifetime, Duration::from_secs(30 * 86_400))?;
            if lifetime < MIN_KEY_LIFETIME {
                return Err(self.err(
                    &key("lifetime"),
                    "must be at least 1 day (the server refuses shorter keys)".into(),
                ));
            }
            let grace = self.duration(&key("grace"), raw.grace, Duration::from_secs(3600))?;
            if grace > lifetime {
                return Err(self.err(&key("grace"), "must not be longer than lifetime".into()));
            }
            if let Some(p) = &bootstrap
                && p.file_name().is_none()
            {
                return Err(self.err(&key("bootstrap-key-file"), "must name a file".into()));
            }
            let lookup_every =
                self.duration(&key("lookup-every"), raw.lookup_every, Duration::from_secs(300))?;
            Kind::AccessKey(AccessKeyConfig {
                bootstrap_key_file: bootstrap,
                lifetime,
                grace,
                delete_replaced: raw.delete_replaced.unwrap_or(true),
                lookup_every,
            })
        } else {
            Kind::LoginToken
        };
        let default_variable = if is_key {
            "VOIPBIN_API_KEY"
        } else {
            "VOIPBIN_TOKEN"
        };

        let defaults = RenewalPolicy::default();
        let renew_at = raw.renew_at.unwrap_or(defaults.renew_at);
        if !(0.1..=0.95).contains(&renew_at) {
            return Err(self.err(&key("renew-at"), format!("{renew_at} is outside 0.1..0.95")));
        }
        let jitter = raw.jitter.unwrap_or(defaults.jitter);
        if !(0.0..=0.2).contains(&jitter) {
            return Err(self.err(&key("jitter"), format!("{jitter} is outside 0..0.2")));
        }
        if renew_at + jitter >= 1.0 {
            return Err(self.err(
                &key("jitter"),
                format!(
                    "renew-at {renew_at} plus jitter {jitter} reaches the expiry; keep their sum under 1"
                ),
            ));
        }
        let retry_min = self.duration(&key("retry-min"), raw.retry_min, defaults.retry_min)?;
        let retry_max = self.duration(&key("retry-max"), raw.retry_max, defaults.retry_max)?;
        if retry_max < retry_min {
            return Err(self.err(&key("retry-max"), "must not be shorter than retry-min".into()));
        }

        if raw.output.is_empty() {
            return Err(self.err(
                &key("output"),
                "no [[credential.output]]; a credential needs at least one file to write".into(),
            ));
        }
        let outputs = raw
            .output
            .into_iter()
            .enumerate()
            .map(|(j, o)| self.output(&key(&format!("output[{j}]")), o, default_variable))
            .collect::<Result<Vec<_>, _>>()?;
        if !is_key
            && let Some((j, _)) = outputs.iter().enumerate().find(|(_, o)| {
                matches!(&o.format, Format::Template { template } if crate::output::render::uses(template, "id"))
            })
        {
            return Err(self.err(
                &key(&format!("output[{j}].template")),
                "{id} is an access key's id; this credential holds a login token".into(),
            ));
        }

        Ok(CredentialConfig {
            name: raw.name,
            kind,
            login,
            renewal: RenewalPolicy {
                renew_at,
                jitter,
                retry_min,
                retry_max,
            },
            outputs,
        })
    }

    /// The agent login: a username and exactly one password source.
    #[allow(clippy::too_many_arguments)]
    fn login(
        &self,
        key: &dyn Fn(&str) -> String,
        username: Option<String>,
        password_file: Option<PathBuf>,
        password_env: Option<String>,
        password_credential: Option<String>,
        password_inline: Option<Secret>,
    ) -> Result<Login, ConfigError> {
        let username = username.unwrap_or_default();
        if username.trim().is_empty() {
            return Err(self.err(&key("username"), "must not be empty".into()));
        }
        let mut sources = Vec::new();
        if let Some(p) = password_file {
            sources.push(PasswordSource::File(self.path(&key("password-file"), &p)?));
        }
        if let Some(v) = password_env {
            if v.is_empty() {
                return Err(self.err(&key("password-env"), "must name a variable".into()));
            }
            sources.push(PasswordSource::Env(v));
        }
        if let Some(n) = password_credential {
            if n.is_empty() || n.contains('/') {
                return Err(self.err(
                    &key("password-credential"),
                    "must be a plain credential name".into(),
                ));
            }
            sources.push(PasswordSource::Credential(n));
        }
        if let Some(s) = password_inline {
            sources.push(PasswordSource::Inline(s));
        }
        if sources.len() != 1 {
            return Err(self.err(
                &key("password-file"),
                format!(
                    "give exactly one of password-file, password-env, password-credential, password (found {})",
                    sources.len()
                ),
            ));
        }
        let password = sources.remove(0);
        Ok(Login { username, password })
    }

    fn output(
        &self,
        prefix: &str,
        raw: RawOutput,
        default_variable: &str,
    ) -> Result<OutputConfig, ConfigError> {
        let key = |k: &str| format!("{prefix}.{k}");
        use std::os::unix::ffi::OsStrExt;
        if raw.path.as_os_str().is_empty()
            || raw.path.file_name().is_none()
            || raw.path.as_os_str().as_bytes().ends_with(b"/")
        {
            return Err(self.err(&key("path"), "must name a file".into()));
        }
        let path = self.path(&key("path"), &raw.path)?;

        let format_name = raw.format.as_deref().unwrap_or("raw");
        let variable = match &raw.variable {
            Some(v) if !is_env_name(v) => {
                return Err(self.err(
                    &key("variable"),
                    format!("{v:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
            Some(v) => Some(v.clone()),
            None => None,
        };
        if variable.is_some() && !matches!(format_name, "env" | "shell") {
            return Err(self.err(
                &key("variable"),
                format!("only for format env or shell, not {format_name:?}"),
            ));
        }
        if raw.template.is_some() && format_name != "template" {
            return Err(self.err(
                &key("template"),
                format!("only for format template, not {format_name:?}"),
            ));
        }
        let variable = variable.unwrap_or_else(|| default_variable.to_string());
        let format = match format_name {
            "raw" => Format::Raw,
            "env" => Format::Env { variable },
            "shell" => Format::Shell { variable },
            "json" => Format::Json,
            "template" => {
                let template = raw.template.ok_or_else(|| {
                    self.err(&key("template"), "format template needs a template string".into())
                })?;
                crate::output::render::check_template(&template)
                    .map_err(|m| self.err(&key("template"), m))?;
                Format::Template { template }
            }
            other => {
                return Err(self.err(
                    &key("format"),
                    format!("{other:?} is not one of raw, env, shell, json, template"),
                ));
            }
        };

        let mode_text = raw.mode.as_deref().unwrap_or("0600");
        let mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                self.err(
                    &key("mode"),
                    format!("{mode_text:?} is not an octal mode like \"0640\""),
                )
            })?;
        if mode & 0o400 == 0 {
            return Err(self.err(
                &key("mode"),
                format!("{mode_text:?} does not let the owner read the file"),
            ));
        }
        // Anyone who may write the file could plant a token that the daemon
        // adopts at start and that consumers trust.
        if mode & 0o022 != 0 {
            return Err(self.err(
                &key("mode"),
                format!(
                    "{mode_text:?} lets {} write the file; others could plant a token (use e.g. \"0600\" or \"0640\")",
                    if mode & 0o002 != 0 { "every user" } else { "the group" }
                ),
            ));
        }

        let owner = raw
            .owner
            .map(|o| resolve_user(&o).map_err(|m| self.err(&key("owner"), m)))
            .transpose()?;
        let group = raw
            .group
            .map(|g| resolve_group(&g).map_err(|m| self.err(&key("group"), m)))
            .transpose()?;
        // Found now rather than at the first write: a file silently left
        // owned by the daemon's user is worse than a refusal to start.
        if let Some(o) = &owner
            && !may_chown_to_user(o.id)
        {
            return Err(self.err(&key("owner"), cannot_chown("user", &o.name)));
        }
        if let Some(g) = &group
            && !may_chown_to_group(g.id)
        {
            return Err(self.err(&key("group"), cannot_chown("group", &g.name)));
        }

        if let Some(argv) = &raw.on_change
            && argv.first().is_none_or(|p| p.is_empty())
        {
            return Err(self.err(
                &key("on-change"),
                "must be a non-empty command, like [\"systemctl\", \"reload\", \"app\"]".into(),
            ));
        }
        let hook_env = raw.hook_env.unwrap_or_default();
        if let Some(bad) = hook_env.iter().find(|v| !is_env_name(v)) {
            return Err(self.err(
                &key("hook-env"),
                format!("{bad:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
        if !hook_env.is_empty() && raw.on_change.is_none() {
            return Err(self.err(&key("hook-env"), "only with on-change".into()));
        }
        let signal = match &raw.signal {
            Some(s) => {
                let name = s.to_ascii_uppercase();
                let name = if name.starts_with("SIG") {
                    name
                } else {
                    format!("SIG{name}")
                };
                Some(name.parse::<nix::sys::signal::Signal>().map_err(|_| {
                    self.err(
                        &key("signal"),
                        format!("{s:?} is not a signal name like \"SIGHUP\""),
                    )
                })?)
            }
            None => None,
        };
        if signal.is_some() != raw.pid_file.is_some() {
            return Err(self.err(&key("signal"), "signal and pid-file go together".into()));
        }

        Ok(OutputConfig {
            path,
            format,
            mode,
            owner,
            group,
            on_change: raw.on_change,
            hook_env,
            signal,
            pid_file: raw
                .pid_file
                .map(|p| self.path(&key("pid-file"), &p))
                .transpose()?,
        })
    }
}

/// The filesystem rules for outputs, checked at every load (`check`, start,
/// reload) because they depend on what is on disk now:
/// - an output path is a regular file, a symlink (replaced by the write) or
///   absent: never a device, FIFO, socket or directory;
/// - no output is, or resolves to, one of the daemon's inputs (see
///   [`daemon_inputs`]) or anything under the state directory;
/// - no two outputs are one file under different spellings.
///
/// Paths are compared resolved (`./`, `..`, symlinked directories,
/// absolute vs relative) and by (device, inode) where they exist (hard links).
fn check_paths(config: &Config) -> Result<(), ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid {
        path: config.path.clone(),
        key,
        message,
    };
    let inputs: Vec<(String, crate::fsread::Location)> = daemon_inputs(config)
        .into_iter()
        .map(|(what, p)| (what, crate::fsread::Location::of_input(&p)))
        .collect();
    let mut seen: Vec<(String, crate::fsread::Location)> = Vec::new();
    for cred in &config.credentials {
        for (j, out) in cred.outputs.iter().enumerate() {
            let key = format!("credential[{}].output[{j}].path", cred.name);
            let shown = out.path.display();
            crate::fsread::check_replaceable(&out.path).map_err(|m| invalid(key.clone(), m))?;
            let here = crate::fsread::Location::of_output(&out.path);
            if let Some((what, _)) = inputs.iter().find(|(_, input)| here.collides_with(input)) {
                return Err(invalid(
                    key,
                    format!("{shown} is the daemon's own {what}; writing a token there would destroy it"),
                ));
            }
            if here.is_under(&config.state_dir) {
                return Err(invalid(
                    key,
                    format!(
                        "{shown} is inside the state directory {}, which is the daemon's own",
                        config.state_dir.display()
                    ),
                ));
            }
            // Spelled inside it, or a symlink into it.
            let in_state_dir = |p: &Path| {
                crate::fsread::Location::of_input(p).is_under(&config.state_dir)
                    || std::fs::canonicalize(p).is_ok_and(|real| {
                        std::fs::canonicalize(&config.state_dir).is_ok_and(|dir| real.starts_with(dir))
                    })
            };
            if let Some(pid) = &out.pid_file
                && in_state_dir(pid)
            {
                return Err(invalid(
                    format!("credential[{}].output[{j}].pid-file", cred.name),
                    format!(
                        "{} is inside the state directory {}, which is the daemon's own (its lock file holds the daemon's pid: it would signal itself)",
                        pid.display(),
                        config.state_dir.display()
                    ),
                ));
            }
            if let Some((other, _)) = seen
                .iter()
                .find(|(_, loc)| here.collides_with(loc) || loc.collides_with(&here))
            {
                return Err(invalid(
                    key,
                    format!("{shown} is the same file as {other}; every output needs its own file"),
                ));
            }
            seen.push((key, here));
        }
    }
    Ok(())
}

/// One bootstrap key file per credential: two access-key credentials whose
/// `bootstrap-key-file` is one file under any spelling (a symlink, a hard
/// link, `./`, relative or absolute) would each take the key as theirs,
/// and one would delete it under the other. Compared resolved and by
/// (device, inode), as outputs are.
fn check_bootstrap_files(config: &Config) -> Result<(), ConfigError> {
    let mut seen: Vec<(&str, &Path, crate::fsread::Location)> = Vec::new();
    for cred in &config.credentials {
        let Some(file) = cred.key().and_then(|k| k.bootstrap_key_file.as_deref()) else {
            continue;
        };
        let here = crate::fsread::Location::of_input(file);
        if let Some((other, other_file, _)) = seen.iter().find(|(_, _, loc)| same_input(loc, &here)) {
            return Err(ConfigError::Invalid {
                path: config.path.clone(),
                key: format!("credential[{}].bootstrap-key-file", cred.name),
                message: format!(
                    "{} is the same file as credential[{other}].bootstrap-key-file ({}): credentials {other} and {} would share one bootstrap key, and one would delete it under the other; give each credential its own key file",
                    file.display(),
                    other_file.display(),
                    cred.name
                ),
            });
        }
        seen.push((&cred.name, file, here));
    }
    Ok(())
}

/// True when two files the daemon reads are one file: the same resolved
/// place (or symlink target), or the same (device, inode).
pub fn same_input(a: &crate::fsread::Location, b: &crate::fsread::Location) -> bool {
    let places = |l: &crate::fsread::Location| {
        let mut v = vec![l.place.clone()];
        if let Some((p, _)) = &l.target {
            v.push(p.clone());
        }
        v
    };
    let nodes = |l: &crate::fsread::Location| {
        let mut v = vec![l.node];
        if let Some((_, n)) = &l.target {
            v.push(*n);
        }
        v.into_iter().flatten().collect::<Vec<_>>()
    };
    let (pb, nb) = (places(b), nodes(b));
    places(a).iter().any(|p| pb.contains(p)) || nodes(a).iter().any(|n| nb.contains(n))
}

/// True when `new` is `old` renamed, as far as its access key goes: both
/// hold access keys, and they name the same `bootstrap-key-file` (any
/// spelling) or log in as the same agent. Such a rename keeps the key
/// state (see `daemon`).
pub fn same_key_source(old: &CredentialConfig, new: &CredentialConfig) -> bool {
    let (Some(a), Some(b)) = (old.key(), new.key()) else {
        return false;
    };
    match (&a.bootstrap_key_file, &b.bootstrap_key_file) {
        (Some(fa), Some(fb)) => same_input(
            &crate::fsread::Location::of_input(fa),
            &crate::fsread::Location::of_input(fb),
        ),
        (None, None) => old
            .login
            .as_ref()
            .zip(new.login.as_ref())
            .is_some_and(|(la, lb)| la.username == lb.username),
        _ => false,
    }
}

/// Every file the daemon reads, with the config key that names it: an
/// output must never be one of these. (A new input is added here.)
fn daemon_inputs(config: &Config) -> Vec<(String, PathBuf)> {
    let mut inputs = vec![("config file".to_string(), config.path.clone())];
    if let Some(ca) = &config.api.ca_file {
        inputs.push(("api.ca-file".into(), ca.clone()));
    }
    for cred in &config.credentials {
        if let Kind::AccessKey(k) = &cred.kind
            && let Some(p) = &k.bootstrap_key_file
        {
            inputs.push((format!("credential[{}].bootstrap-key-file", cred.name), p.clone()));
        }
        match cred.login.as_ref().map(|l| &l.password) {
            Some(PasswordSource::File(p)) => {
                inputs.push((format!("credential[{}].password-file", cred.name), p.clone()))
            }
            Some(PasswordSource::Credential(n)) => {
                if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
                    inputs.push((
                        format!("credential[{}].password-credential", cred.name),
                        Path::new(&dir).join(n),
                    ));
                }
            }
            Some(PasswordSource::Env(_) | PasswordSource::Inline(_)) | None => {}
        }
        for (j, out) in cred.outputs.iter().enumerate() {
            if let Some(pid) = &out.pid_file {
                inputs.push((
                    format!("credential[{}].output[{j}].pid-file", cred.name),
                    pid.clone(),
                ));
            }
        }
    }
    inputs
}

/// Reads a PEM bundle of trust anchors: a regular file, at most 1 MiB, with
/// at least one certificate.
pub fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem =
        crate::fsread::read_bounded(path, crate::fsread::MAX_CONFIG, "ca-file").map_err(|e| e.to_string())?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// True if this process holds CAP_CHOWN (Linux: bit 0 of CapEff).
fn has_cap_chown() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match status.lines().find_map(|l| l.strip_prefix("CapEff:")) {
        Some(hex) => u64::from_str_radix(hex.trim(), 16).is_ok_and(|caps| caps & 1 != 0),
        None => nix::unistd::geteuid().is_root(),
    }
}

fn may_chown_to_user(uid: u32) -> bool {
    uid == nix::unistd::geteuid().as_raw() || has_cap_chown()
}

fn may_chown_to_group(gid: u32) -> bool {
    let ours = gid == nix::unistd::getegid().as_raw()
        || nix::unistd::getgroups().is_ok_and(|gs| gs.iter().any(|g| g.as_raw() == gid));
    ours || has_cap_chown()
}

fn cannot_chown(what: &str, name: &str) -> String {
    format!(
        "this process (uid {}) may not give files to {what} {name:?}: that needs CAP_CHOWN \
         (run as root, or grant CAP_CHOWN with the unit's CapabilityBoundingSet= and AmbientCapabilities=)",
        nix::unistd::geteuid()
    )
}

/// uid/gid 4294967295 is -1 to chown(2): "leave unchanged", never an owner.
const UNCHANGED_ID: u32 = u32::MAX;

fn refuse_unchanged_id(id: u32, what: &str) -> Result<(), String> {
    if id == UNCHANGED_ID {
        return Err(format!(
            "{id} is not a {what}: to chown it means \"leave unchanged\"; leave the key out instead"
        ));
    }
    Ok(())
}

fn resolve_user(name: &str) -> Result<Owner, String> {
    if let Ok(id) = name.parse::<u32>() {
        refuse_unchanged_id(id, "user id")?;
        return Ok(Owner {
            name: name.into(),
            id,
        });
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(Owner {
            name: name.into(),
            id: u.uid.as_raw(),
        }),
        Ok(None) => Err(format!("no user named {name:?} on this system")),
        Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
    }
}

fn resolve_group(name: &str) -> Result<Owner, String> {
    if let Ok(id) = name.parse::<u32>() {
        refuse_unchanged_id(id, "group id")?;
        return Ok(Owner {
            name: name.into(),
            id,
        });
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(Owner {
            name: name.into(),
            id: g.gid.as_raw(),
        }),
        Ok(None) => Err(format!("no group named {name:?} on this system")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[credential]]
name = "main"
username = "agent@example.com"
password-env = "PW"
[[credential.output]]
path = "/run/voipbin/main.token"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/t/config.toml"))
    }

    fn invalid_key(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.api.base_url.as_str(), "https://api.voipbin.net/");
        assert_eq!(c.api.timeout, Duration::from_secs(30));
        assert_eq!(c.api.max_logins_per_second, 5);
        let cred = &c.credentials[0];
        assert_eq!(cred.renewal, RenewalPolicy::default());
        assert_eq!(cred.outputs[0].mode, 0o600);
        assert_eq!(cred.outputs[0].format, Format::Raw);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let text = MINIMAL.replace("/run/voipbin/main.token", "out/main.token");
        let c = parse(&text).unwrap();
        assert_eq!(
            c.credentials[0].outputs[0].path,
            PathBuf::from("/etc/t/out/main.token")
        );
    }

    #[test]
    fn unknown_key_is_refused_with_its_position_but_not_its_line() {
        let text = MINIMAL.replace("password-env = \"PW\"", "pasword = \"hunter2\"");
        let err = parse(&text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pasword"), "{msg}");
        assert!(msg.contains("/etc/t/config.toml"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn http_only_on_loopback() {
        let ok = format!("[api]\nbase-url = \"http://127.0.0.1:8080\"\n{MINIMAL}");
        parse(&ok).unwrap();
        let ok = format!("[api]\nbase-url = \"http://localhost:8080\"\n{MINIMAL}");
        parse(&ok).unwrap();
        let bad = format!("[api]\nbase-url = \"http://api.voipbin.net\"\n{MINIMAL}");
        assert_eq!(invalid_key(&bad), "api.base-url");
    }

    #[test]
    fn exactly_one_password_source() {
        let two = MINIMAL.replace(
            "password-env = \"PW\"",
            "password-env = \"PW\"\npassword-file = \"pw\"",
        );
        assert_eq!(invalid_key(&two), "credential[main].password-file");
        let none = MINIMAL.replace("password-env = \"PW\"", "");
        assert_eq!(invalid_key(&none), "credential[main].password-file");
    }

    #[test]
    fn inline_password_is_warned_and_hidden() {
        let text = MINIMAL.replace("password-env = \"PW\"", "password = \"hunter2\"");
        let c = parse(&text).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn ranges_are_checked() {
        let k = |extra: &str| {
            invalid_key(&MINIMAL.replace(
                "password-env = \"PW\"",
                &format!("password-env = \"PW\"\n{extra}"),
            ))
        };
        assert_eq!(k("renew-at = 0.99"), "credential[main].renew-at");
        assert_eq!(k("jitter = 0.5"), "credential[main].jitter");
        assert_eq!(k("renew-at = 0.9\njitter = 0.1"), "credential[main].jitter");
        assert_eq!(k("retry-min = \"5 parsecs\""), "credential[main].retry-min");
        assert_eq!(
            k("retry-min = \"10m\"\nretry-max = \"1m\""),
            "credential[main].retry-max"
        );
    }

    #[test]
    fn names_and_paths_are_unique() {
        let twice = format!("{MINIMAL}{MINIMAL}");
        assert_eq!(invalid_key(&twice), "credential[1].name");
        let other = MINIMAL.replace("\"main\"", "\"other\"");
        assert_eq!(
            invalid_key(&format!("{MINIMAL}{other}")),
            "credential[other].output[0].path"
        );
        let bad = MINIMAL.replace("\"main\"", "\"Main!\"");
        assert_eq!(invalid_key(&bad), "credential[0].name");
    }

    #[test]
    fn hook_env_may_not_name_any_credentials_password_variable() {
        let hooked = |name: &str, pw: &str, hook_env: &str| {
            format!(
                "[[credential]]\nname = \"{name}\"\nusername = \"u\"\npassword-env = \"{pw}\"\n\
                 [[credential.output]]\npath = \"/run/{name}\"\non-change = [\"true\"]\nhook-env = [{hook_env}]\n"
            )
        };
        let own = hooked("a", "PW_A", "\"HOME\", \"PW_A\"");
        assert_eq!(invalid_key(&own), "credential[a].output[0].hook-env");
        let other = format!("{}{}", hooked("a", "PW_A", "\"PW_B\""), hooked("b", "PW_B", ""));
        assert_eq!(invalid_key(&other), "credential[a].output[0].hook-env");
        parse(&format!(
            "{}{}",
            hooked("a", "PW_A", "\"HOME\""),
            hooked("b", "PW_B", "")
        ))
        .unwrap();
    }

    #[test]
    fn a_duplicate_key_is_named() {
        for (text, key) in [
            (format!("{MINIMAL}format = \"raw\"\nformat = \"env\"\n"), "format"),
            (format!("[api]\ntimeout = \"1s\"\n[api]\n{MINIMAL}"), "api"),
            (
                MINIMAL.replace(
                    "password-env = \"PW\"",
                    "password = \"hunter2\"\npassword = \"hunter3\"",
                ),
                "password",
            ),
        ] {
            let msg = parse(&text).unwrap_err().to_string();
            assert!(msg.contains(&format!("duplicate key `{key}`")), "{msg}");
            assert!(!msg.contains("hunter"), "{msg}");
        }
    }

    #[test]
    fn writable_modes_unchanged_ids_and_templates_without_token_are_refused() {
        let k = |extra: &str| invalid_key(&format!("{MINIMAL}{extra}\n"));
        for mode in ["0666", "0620", "0602", "0660", "0622", "0700"] {
            let want = if mode == "0700" {
                None
            } else {
                Some("credential[main].output[0].mode")
            };
            let got = parse(&format!("{MINIMAL}mode = \"{mode}\"\n"))
                .err()
                .map(|e| match e {
                    ConfigError::Invalid { key, .. } => key,
                    other => panic!("{other:?}"),
                });
            assert_eq!(got.as_deref(), want, "mode {mode}");
        }
        assert_eq!(k("owner = \"4294967295\""), "credential[main].output[0].owner");
        assert_eq!(k("group = \"4294967295\""), "credential[main].output[0].group");
        assert_eq!(
            k("format = \"template\"\ntemplate = \"expires {expires_at}\""),
            "credential[main].output[0].template"
        );
        assert_eq!(
            k("format = \"template\"\ntemplate = \"{{token}}\""),
            "credential[main].output[0].template"
        );
        let c = parse(&format!("{MINIMAL}mode = \"0644\"\n")).unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("every user on this machine read")),
            "{:?}",
            c.warnings
        );
        assert!(
            parse(&format!("{MINIMAL}mode = \"0640\"\n"))
                .unwrap()
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn output_options_are_checked() {
        let k = |extra: &str| invalid_key(&format!("{MINIMAL}{extra}\n"));
        assert_eq!(k("mode = \"0999\""), "credential[main].output[0].mode");
        assert_eq!(k("mode = \"0200\""), "credential[main].output[0].mode");
        assert_eq!(k("format = \"yaml\""), "credential[main].output[0].format");
        assert_eq!(k("variable = \"X\""), "credential[main].output[0].variable");
        assert_eq!(
            k("format = \"env\"\nvariable = \"1X\""),
            "credential[main].output[0].variable"
        );
        assert_eq!(k("format = \"template\""), "credential[main].output[0].template");
        assert_eq!(
            k("format = \"template\"\ntemplate = \"{nope}\""),
            "credential[main].output[0].template"
        );
        assert_eq!(
            k("owner = \"no-such-user-here\""),
            "credential[main].output[0].owner"
        );
        assert_eq!(k("signal = \"SIGHUP\""), "credential[main].output[0].signal");
        assert_eq!(
            k("signal = \"SIGNOPE\"\npid-file = \"/x\""),
            "credential[main].output[0].signal"
        );
        assert_eq!(k("on-change = []"), "credential[main].output[0].on-change");
        let c = parse(&format!("{MINIMAL}format = \"env\"\nvariable = \"API_TOKEN\"\nmode = \"0640\"\nsignal = \"hup\"\npid-file = \"/run/app.pid\"\n")).unwrap();
        let o = &c.credentials[0].outputs[0];
        assert_eq!(
            o.format,
            Format::Env {
                variable: "API_TOKEN".into()
            }
        );
        assert_eq!(o.mode, 0o640);
        assert_eq!(o.signal, Some(nix::sys::signal::Signal::SIGHUP));
    }
}
