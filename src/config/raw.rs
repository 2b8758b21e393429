//! The config file as written: serde structs that mirror the TOML exactly
//! (kebab-case keys, unknown keys refused). [`super::validate`] turns them
//! into the [`super::Config`] the daemon uses.

use std::path::PathBuf;

use serde::Deserialize;

use crate::secret::Secret;

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) api: RawApi,
    pub(super) health: Option<RawHealth>,
    #[serde(default)]
    pub(super) state: RawState,
    #[serde(default)]
    pub(super) credential: Vec<RawCredential>,
    #[serde(default)]
    pub(super) proxy: Vec<RawProxy>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) base_url: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) max_logins_per_second: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) listen: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawCredential {
    pub(super) name: String,
    pub(super) kind: Option<String>,
    pub(super) base_url: Option<String>,
    pub(super) username: Option<String>,
    pub(super) bootstrap_key_file: Option<PathBuf>,
    pub(super) lifetime: Option<String>,
    pub(super) grace: Option<String>,
    pub(super) delete_replaced: Option<bool>,
    pub(super) lookup_every: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) password_env: Option<String>,
    pub(super) password_credential: Option<String>,
    pub(super) password: Option<Secret>,
    pub(super) renew_at: Option<f64>,
    pub(super) jitter: Option<f64>,
    pub(super) retry_min: Option<String>,
    pub(super) retry_max: Option<String>,
    #[serde(default)]
    pub(super) output: Vec<RawOutput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawOutput {
    pub(super) path: PathBuf,
    pub(super) format: Option<String>,
    pub(super) mode: Option<String>,
    pub(super) owner: Option<String>,
    pub(super) group: Option<String>,
    pub(super) variable: Option<String>,
    pub(super) template: Option<String>,
    pub(super) on_change: Option<Vec<String>>,
    pub(super) hook_env: Option<Vec<String>>,
    pub(super) signal: Option<String>,
    pub(super) pid_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawProxy {
    pub(super) listen: String,
    pub(super) credential: String,
    pub(super) mode: Option<String>,
    pub(super) group: Option<String>,
}
