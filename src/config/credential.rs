//! The checks of one `[[credential]]`: its name and kind, its login or
//! bootstrap key, an access key's times, the renewal policy and the list of
//! its outputs (each checked in [`super::output`]).

use std::path::PathBuf;
use std::time::Duration;

use super::model::{
    AccessKeyConfig, ConfigError, CredentialConfig, Kind, Login, MIN_KEY_LIFETIME, OutputConfig,
    RenewalPolicy,
};
use super::raw::{RawCredential, RawOutput};
use super::validate::Validator;
use crate::output::Format;
use crate::secret::{PasswordSource, Secret};

/// The name of a key inside one credential, like `credential[main].lifetime`.
type KeyOf<'k> = &'k dyn Fn(&str) -> String;

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

impl Validator<'_> {
    pub(super) fn credential(&self, i: usize, raw: RawCredential) -> Result<CredentialConfig, ConfigError> {
        self.credential_name(i, &raw.name)?;
        let key = |k: &str| format!("credential[{}].{k}", raw.name);
        let is_key = self.is_access_key(&key, &raw)?;
        let base_url = raw
            .base_url
            .as_deref()
            .map(|u| self.base_url(&key("base-url"), u))
            .transpose()?;
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
            base_url,
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

    /// The outputs; `{id}` in a template only for an access key. (None at
    /// all is refused by [`crate::config::Config::parse`] except for `exec`.)
    fn outputs(
        &self,
        key: KeyOf<'_>,
        is_key: bool,
        raw: Vec<RawOutput>,
    ) -> Result<Vec<OutputConfig>, ConfigError> {
        let default_variable = if is_key {
            "VOIPBIN_API_KEY"
        } else {
            "VOIPBIN_TOKEN"
        };
        let mut outputs = raw
            .into_iter()
            .enumerate()
            .map(|(j, o)| self.output(&key(&format!("output[{j}]")), o, default_variable))
            .collect::<Result<Vec<_>, _>>()?;
        // Collected in place, the Vec keeps the raw outputs' buffer (room
        // for five outputs where one is the rule): 800 bytes a credential
        // held for the daemon's life.
        outputs.shrink_to_fit();
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
