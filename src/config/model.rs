//! The validated configuration: the types the daemon uses, and the error
//! a config that fails to load is reported with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::output::Format;
use crate::secret::PasswordSource;

/// Where the config is read from when `-c` and `$VOIPBIN_TOKEND_CONFIG` are absent.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/voipbin-tokend/config.toml";
pub const DEFAULT_BASE_URL: &str = "https://api.voipbin.net";
/// Where access-key state lives when `[state] dir` and `$STATE_DIRECTORY` are absent.
pub(super) const DEFAULT_STATE_DIR: &str = "/var/lib/voipbin-tokend";

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
    /// `[[proxy]]`: local listeners that forward to the API with a
    /// credential's secret added.
    pub proxies: Vec<ProxyConfig>,
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

impl ApiConfig {
    /// The API settings of one credential: these, with its own `base-url`
    /// if it has one.
    pub fn for_credential(&self, cred: &CredentialConfig) -> ApiConfig {
        let mut api = self.clone();
        if let Some(url) = &cred.base_url {
            api.base_url = url.clone();
        }
        api
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CredentialConfig {
    pub name: String,
    pub kind: Kind,
    /// `base-url` of this credential: its logins and key calls go there
    /// instead of `[api] base-url` (see [`ApiConfig::for_credential`]).
    pub base_url: Option<reqwest::Url>,
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

/// One `[[proxy]]`: where it listens and whose secret it adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub listen: Listen,
    /// The name of the credential whose secret is added to each request.
    pub credential: String,
    /// A unix socket's permission bits (default 0660); `None` for TCP.
    pub mode: Option<u32>,
    /// A unix socket's group; never set for TCP.
    pub group: Option<Owner>,
}

/// The default mode of a proxy's unix socket.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// Where a proxy listens: a unix socket or a loopback address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Listen {
    /// `unix:/abs/path`.
    Unix(PathBuf),
    /// A loopback IP and a port (`127.0.0.1:8787`, `[::1]:8787`).
    Tcp(SocketAddr),
}

impl std::fmt::Display for Listen {
    /// As written in the config: `unix:/path` or `ip:port`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// A user or group, as written in the config and as resolved to an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub id: u32,
}
