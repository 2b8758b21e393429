//! Raw -> model: the [`Validator`] and its checks of `[api]`, `[health]`,
//! `[state]` and each `[[credential]]` (its outputs: [`super::output`]).
//! Every error names the key; none quotes a secret.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawApi, RawConfig, RawCredential, RawHealth, RawOutput, RawState};
use super::{
    AccessKeyConfig, ApiConfig, Config, ConfigError, CredentialConfig, DEFAULT_BASE_URL, DEFAULT_STATE_DIR,
    HealthConfig, Kind, Login, MIN_KEY_LIFETIME, OutputConfig, RenewalPolicy,
};
use crate::output::Format;
use crate::secret::{PasswordSource, Secret};

/// Builds the validated config, or the first error found.
pub(super) fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let v = Validator { path, base: &base };
    let mut warnings = Vec::new();

    let api = v.api(raw.api)?;
    let health = raw.health.map(|h| v.health(h)).transpose()?;
    let state_dir = v.state_dir(raw.state)?;
    let credentials = v.credentials(raw.credential, &mut warnings)?;
    v.key_state(&credentials, &state_dir, &mut warnings)?;
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

/// A credential's login fields as written, before [`Validator::login`].
struct RawLogin {
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    password_credential: Option<String>,
    password: Option<Secret>,
}

impl RawLogin {
    fn has_password(&self) -> bool {
        self.password_file.is_some()
            || self.password_env.is_some()
            || self.password_credential.is_some()
            || self.password.is_some()
    }
}

/// The name of a key inside one credential, like `credential[main].lifetime`.
type KeyOf<'k> = &'k dyn Fn(&str) -> String;

/// Checks values against the file at `path`; relative paths resolve
/// against `base` (the config file's directory).
pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    pub(super) base: &'a Path,
}

impl Validator<'_> {
    pub(super) fn err(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message,
        }
    }

    /// [`Self::resolve`], after checking no component is longer than the
    /// filesystem allows (such a path could never be opened).
    pub(super) fn path(&self, key: &str, p: &Path) -> Result<PathBuf, ConfigError> {
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

    fn health(&self, raw: RawHealth) -> Result<HealthConfig, ConfigError> {
        Ok(HealthConfig {
            listen: raw.listen.parse().map_err(|_| {
                self.err(
                    "health.listen",
                    format!("not an address:port like 127.0.0.1:9464: {:?}", raw.listen),
                )
            })?,
        })
    }

    fn state_dir(&self, raw: RawState) -> Result<PathBuf, ConfigError> {
        Ok(match raw.dir {
            Some(d) => self.path("state.dir", &d)?,
            None => std::env::var_os("STATE_DIRECTORY")
                .and_then(|s| {
                    // systemd joins several StateDirectory= entries with ':'.
                    s.to_str().and_then(|s| s.split(':').next().map(PathBuf::from))
                })
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        })
    }

    /// Every `[[credential]]`, with unique names and output files, and the
    /// warnings they earn (an inline password, a world-readable output).
    fn credentials(
        &self,
        raw: Vec<RawCredential>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<CredentialConfig>, ConfigError> {
        if raw.is_empty() {
            return Err(self.err("credential", "no [[credential]] defined; nothing to do".into()));
        }
        let mut names = HashSet::new();
        let mut paths = std::collections::HashMap::new();
        let mut credentials = Vec::new();
        for (i, rc) in raw.into_iter().enumerate() {
            let cred = self.credential(i, rc)?;
            if !names.insert(cred.name.clone()) {
                return Err(self.err(
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
                    return Err(self.err(
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
                        self.path.display(),
                        cred.name,
                        out.mode,
                        out.path.display()
                    ));
                }
            }
            credentials.push(cred);
        }
        Ok(credentials)
    }

    /// What access keys need: a writable state directory, and a warning
    /// for a bootstrap key file every user may read.
    fn key_state(
        &self,
        credentials: &[CredentialConfig],
        state_dir: &Path,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        if let Some(cred) = credentials.iter().find(|c| c.key().is_some()) {
            check_state_dir_writable(state_dir).map_err(|m| {
                self.err(
                    "state.dir",
                    format!(
                        "credential {} holds an access key, whose state lives here: {m}",
                        cred.name
                    ),
                )
            })?;
        }
        for cred in credentials {
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
        Ok(())
    }

    fn credential(&self, i: usize, raw: RawCredential) -> Result<CredentialConfig, ConfigError> {
        self.credential_name(i, &raw.name)?;
        let key = |k: &str| format!("credential[{}].{k}", raw.name);
        let is_key = self.is_access_key(&key, &raw)?;
        let bootstrap = raw
            .bootstrap_key_file
            .as_ref()
            .map(|p| self.path(&key("bootstrap-key-file"), p))
            .transpose()?;
        let login = self.credential_login(
            &key,
            is_key,
            bootstrap.is_some(),
            RawLogin {
                username: raw.username,
                password_file: raw.password_file,
                password_env: raw.password_env,
                password_credential: raw.password_credential,
                password: raw.password,
            },
        )?;
        let kind = if is_key {
            Kind::AccessKey(self.access_key(
                &key,
                bootstrap,
                raw.lifetime,
                raw.grace,
                raw.delete_replaced,
                raw.lookup_every,
            )?)
        } else {
            Kind::LoginToken
        };
        let renewal = self.renewal(&key, raw.renew_at, raw.jitter, raw.retry_min, raw.retry_max)?;
        let outputs = self.outputs(&key, is_key, raw.output)?;

        Ok(CredentialConfig {
            name: raw.name,
            kind,
            login,
            renewal,
            outputs,
        })
    }

    fn credential_name(&self, i: usize, name: &str) -> Result<(), ConfigError> {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(self.err(
                &format!("credential[{i}].name"),
                format!("{name:?} must be 1 to 64 of a-z, 0-9, '_' and '-'"),
            ));
        }
        Ok(())
    }

    /// `kind`: true for an access key; the access-key keys are refused on
    /// a login token.
    fn is_access_key(&self, key: KeyOf<'_>, raw: &RawCredential) -> Result<bool, ConfigError> {
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
        Ok(is_key)
    }

    /// The agent login, if the credential has one: an access key has a
    /// bootstrap key file or a login, never both; a login token always
    /// logs in.
    fn credential_login(
        &self,
        key: KeyOf<'_>,
        is_key: bool,
        has_bootstrap: bool,
        raw: RawLogin,
    ) -> Result<Option<Login>, ConfigError> {
        if is_key && has_bootstrap {
            if raw.username.is_some() || raw.has_password() {
                return Err(self.err(
                    &key("bootstrap-key-file"),
                    "give either bootstrap-key-file or an agent login (username and a password source), not both"
                        .into(),
                ));
            }
            Ok(None)
        } else if is_key && raw.username.is_none() && !raw.has_password() {
            Err(self.err(
                &key("bootstrap-key-file"),
                "an access key needs bootstrap-key-file (a key made on the admin page) or an agent login (username and a password source)"
                    .into(),
            ))
        } else {
            Some(self.login(key, raw)).transpose()
        }
    }

    /// The agent login: a username and exactly one password source.
    fn login(&self, key: KeyOf<'_>, raw: RawLogin) -> Result<Login, ConfigError> {
        let username = raw.username.unwrap_or_default();
        if username.trim().is_empty() {
            return Err(self.err(&key("username"), "must not be empty".into()));
        }
        let mut sources = Vec::new();
        if let Some(p) = raw.password_file {
            sources.push(PasswordSource::File(self.path(&key("password-file"), &p)?));
        }
        if let Some(v) = raw.password_env {
            if v.is_empty() {
                return Err(self.err(&key("password-env"), "must name a variable".into()));
            }
            sources.push(PasswordSource::Env(v));
        }
        if let Some(n) = raw.password_credential {
            if n.is_empty() || n.contains('/') {
                return Err(self.err(
                    &key("password-credential"),
                    "must be a plain credential name".into(),
                ));
            }
            sources.push(PasswordSource::Credential(n));
        }
        if let Some(s) = raw.password {
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

    /// An access key's lifetime, grace, bootstrap file and housekeeping.
    fn access_key(
        &self,
        key: KeyOf<'_>,
        bootstrap: Option<PathBuf>,
        lifetime: Option<String>,
        grace: Option<String>,
        delete_replaced: Option<bool>,
        lookup_every: Option<String>,
    ) -> Result<AccessKeyConfig, ConfigError> {
        let lifetime = self.duration(&key("lifetime"), lifetime, Duration::from_secs(30 * 86_400))?;
        if lifetime < MIN_KEY_LIFETIME {
            return Err(self.err(
                &key("lifetime"),
                "must be at least 1 day (the server refuses shorter keys)".into(),
            ));
        }
        let grace = self.duration(&key("grace"), grace, Duration::from_secs(3600))?;
        if grace > lifetime {
            return Err(self.err(&key("grace"), "must not be longer than lifetime".into()));
        }
        if let Some(p) = &bootstrap
            && p.file_name().is_none()
        {
            return Err(self.err(&key("bootstrap-key-file"), "must name a file".into()));
        }
        let lookup_every = self.duration(&key("lookup-every"), lookup_every, Duration::from_secs(300))?;
        Ok(AccessKeyConfig {
            bootstrap_key_file: bootstrap,
            lifetime,
            grace,
            delete_replaced: delete_replaced.unwrap_or(true),
            lookup_every,
        })
    }

    /// When to renew and how to back off: `renew-at`, `jitter`,
    /// `retry-min`, `retry-max`.
    fn renewal(
        &self,
        key: KeyOf<'_>,
        renew_at: Option<f64>,
        jitter: Option<f64>,
        retry_min: Option<String>,
        retry_max: Option<String>,
    ) -> Result<RenewalPolicy, ConfigError> {
        let defaults = RenewalPolicy::default();
        let renew_at = renew_at.unwrap_or(defaults.renew_at);
        if !(0.1..=0.95).contains(&renew_at) {
            return Err(self.err(&key("renew-at"), format!("{renew_at} is outside 0.1..0.95")));
        }
        let jitter = jitter.unwrap_or(defaults.jitter);
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
        let retry_min = self.duration(&key("retry-min"), retry_min, defaults.retry_min)?;
        let retry_max = self.duration(&key("retry-max"), retry_max, defaults.retry_max)?;
        if retry_max < retry_min {
            return Err(self.err(&key("retry-max"), "must not be shorter than retry-min".into()));
        }
        Ok(RenewalPolicy {
            renew_at,
            jitter,
            retry_min,
            retry_max,
        })
    }

    /// At least one output; `{id}` in a template only for an access key.
    fn outputs(
        &self,
        key: KeyOf<'_>,
        is_key: bool,
        raw: Vec<RawOutput>,
    ) -> Result<Vec<OutputConfig>, ConfigError> {
        if raw.is_empty() {
            return Err(self.err(
                &key("output"),
                "no [[credential.output]]; a credential needs at least one file to write".into(),
            ));
        }
        let default_variable = if is_key {
            "VOIPBIN_API_KEY"
        } else {
            "VOIPBIN_TOKEN"
        };
        let outputs = raw
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
        Ok(outputs)
    }
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
