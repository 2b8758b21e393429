//! Raw -> model: the [`Validator`] and its checks of `[api]`, `[health]`,
//! `[state]` and each `[[credential]]` (each one: [`super::credential`]).
//! Every error names the key; none quotes a secret.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::{
    ApiConfig, Config, ConfigError, CredentialConfig, DEFAULT_BASE_URL, DEFAULT_STATE_DIR, HealthConfig,
};
use super::raw::{RawApi, RawConfig, RawCredential, RawHealth, RawState};
use crate::secret::PasswordSource;

/// Builds the validated config, or the first error found.
pub(super) fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let v = Validator { path, base: &base };
    let mut warnings = Vec::new();

    let api = v.api(raw.api)?;
    let health = raw.health.map(|h| v.health(h)).transpose()?;
    let state_dir = v.state_dir(raw.state)?;
    let credentials = v.credentials(raw.credential, &mut warnings)?;
    let proxies = v.proxies(
        raw.proxy,
        &credentials,
        health.as_ref().map(|h| h.listen),
        &mut warnings,
    )?;
    v.key_state(&credentials, &state_dir, &mut warnings)?;
    refuse_passwords_in_hook_env(&v, &credentials)?;

    Ok(Config {
        path: path.to_path_buf(),
        api,
        health,
        state_dir,
        credentials,
        proxies,
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

    pub(super) fn duration(
        &self,
        key: &str,
        value: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
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
        let base_url = self.base_url("api.base-url", &text)?;
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

    /// A base URL of the API (`api.base-url`, a credential's `base-url`):
    /// https, or http on loopback only; no user, password, query or fragment.
    pub(super) fn base_url(&self, key: &str, text: &str) -> Result<reqwest::Url, ConfigError> {
        let base_url =
            reqwest::Url::parse(text).map_err(|e| self.err(key, format!("{text:?} is not a URL: {e}")))?;
        match base_url.scheme() {
            "https" => {}
            "http" if is_loopback(&base_url) => {}
            "http" => {
                return Err(self.err(
                    key,
                    "http:// is allowed only for loopback addresses (tests, demo); use https://".into(),
                ));
            }
            other => return Err(self.err(key, format!("scheme {other:?} is not http(s)"))),
        }
        if !base_url.username().is_empty() || base_url.password().is_some() {
            return Err(self.err(key, "must not carry a user or password".into()));
        }
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(self.err(key, "must not have a query or fragment".into()));
        }
        Ok(base_url)
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

/// [`read_ca_file`] as DER certificates, for the proxy's own TLS client.
pub fn read_ca_file_der(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let pem =
        crate::fsread::read_bounded(path, crate::fsread::MAX_CONFIG, "ca-file").map_err(|e| e.to_string())?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
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
