//! Reloads: the new config loaded and validated off the runtime thread,
//! then reconciled credential by credential (and proxy by proxy); a config
//! that fails to load changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, error, info, warn};

use super::{Daemon, ToChild};
use crate::config::{Config, ConfigError, CredentialConfig, Use};
use crate::credential::task::Command;
use crate::exec;
use crate::notify;

impl Daemon {
    /// Loads the config again and reconciles. `forced` (SIGHUP) reloads
    /// even when the file's text is unchanged.
    /// The file work runs on the blocking pool, never on the runtime thread.
    pub(super) async fn reload(&mut self, forced: bool) {
        let path = self.config.path.clone();
        let text = blocking(&self.config.path, move || Config::read(&path)).await;
        if !forced && text.as_ref().ok() == self.config_text.as_ref() {
            debug!("config file touched but unchanged");
            return;
        }
        self.notifier.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            notify::monotonic_usec()
        ));
        let ok = self.try_reload(text).await;
        self.metrics.reload(ok);
        self.notifier.notify("READY=1");
    }

    async fn try_reload(&mut self, text: Result<String, ConfigError>) -> bool {
        let path = self.config.path.clone();
        let validate_path = path.clone();
        // Validation looks at the filesystem (output paths, ca-file): blocking pool.
        let before = self.config.clone();
        let use_ = if self.exec.is_some() {
            Use::Exec
        } else {
            Use::Daemon
        };
        let validated = blocking(&path, move || {
            text.and_then(|t| Config::from_file_text_for(&t, &validate_path, use_).map(|c| (c, t)))
                .map(|(c, t)| {
                    let renames = renames(&before, &c);
                    (c, t, renames)
                })
        })
        .await;
        let (new, text, renames) = match validated {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(error = %e, "config reload failed; keeping the last good config");
                return false;
            }
        };
        if let Some(exec) = &self.exec {
            if let Err(e) = exec::plan::check_reload(&exec.plan.exports, &self.config, &new) {
                error!(config = %path.display(), error = %e, "config reload failed; keeping the last good config");
                return false;
            }
            self.to_child(ToChild::Hide(exec::plan::password_variables(&new)));
        }
        let api_changed = new.api != self.config.api;
        // Clients of base URLs still in use are kept unless [api] changed.
        // Building reads the ca-file; it builds HTTP clients inside the runtime.
        let (apis, for_new, handle) = (self.apis.clone(), new.clone(), tokio::runtime::Handle::current());
        let built = tokio::task::spawn_blocking(move || {
            let _runtime = handle.enter();
            apis.rebuilt(&for_new)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match built {
            Ok(apis) => self.apis = apis,
            Err(e) => {
                error!(config = %path.display(), error = %e, "config reload failed; keeping the last good config");
                return false;
            }
        }
        for w in &new.warnings {
            warn!("{w}");
        }
        self.config_text = Some(text);
        self.reconcile(new, api_changed, renames);
        self.start_proxies(api_changed).await;
        true
    }

    fn reconcile(&mut self, new: Config, api_changed: bool, renames: Vec<(String, String)>) {
        let mut renamed: BTreeMap<String, (String, tokio::task::JoinHandle<()>)> = BTreeMap::new();
        let (mut added, mut changed, mut removed) = (0, 0, 0);
        let old: BTreeMap<String, CredentialConfig> = self
            .config
            .credentials
            .iter()
            .map(|c| (c.name.clone(), c.clone()))
            .collect();
        let kept: BTreeSet<&str> = new.credentials.iter().map(|c| c.name.as_str()).collect();
        for name in old.keys() {
            if !kept.contains(name.as_str())
                && let Some(task) = self.tasks.remove(name)
            {
                task.cancel.cancel();
                if !renames.iter().any(|(old, _)| old == name) {
                    self.exports.remove(name);
                }
                self.board.remove(name);
                self.metrics.forget(name);
                if let Some((_, new_name)) = renames.iter().find(|(old, _)| old == name) {
                    info!(credential = %name, renamed_to = %new_name, "credential renamed in the config");
                    renamed.insert(new_name.clone(), (name.clone(), task.done));
                } else {
                    info!(credential = %name, "credential removed from the config; its files are left in place");
                }
                removed += 1;
            }
        }
        for cfg in &new.credentials {
            match (old.get(&cfg.name), self.tasks.get(&cfg.name)) {
                (Some(before), Some(_))
                    if std::mem::discriminant(&before.kind) != std::mem::discriminant(&cfg.kind) =>
                {
                    // Another kind of secret: start this credential afresh.
                    if let Some(task) = self.tasks.remove(&cfg.name) {
                        task.cancel.cancel();
                    }
                    info!(credential = %cfg.name, "credential kind changed; starting it anew");
                    self.spawn(cfg.clone());
                    changed += 1;
                }
                (Some(before), Some(task)) if before != cfg || api_changed => {
                    // A changed base-url (its own or [api]'s) gives another client:
                    // the credential logs in anew there.
                    match self.apis.for_credential(cfg) {
                        Ok(api) => {
                            let _ = task
                                .commands
                                .send(Command::Reconfigure(Box::new(cfg.clone()), api));
                            changed += 1;
                        }
                        Err(e) => {
                            error!(credential = %cfg.name, error = %e, "credential not reconfigured: no API client")
                        }
                    }
                }
                (Some(_), Some(_)) => {}
                _ => {
                    self.spawn_after(cfg.clone(), renamed.remove(&cfg.name), self.locked);
                    added += 1;
                }
            }
        }
        if new.health != self.config.health || new.state_dir != self.config.state_dir {
            warn!("[health] and [state] changes take effect at the next restart");
        }
        info!(added, changed, removed, "config reloaded");
        self.config = new;
    }
}

/// Access-key credentials renamed from `old` to `new` (old name, new name):
/// one that is gone and one that is new, with the same bootstrap key file
/// (any spelling) or the same agent login. Each pairs at most once.
fn renames(old: &Config, new: &Config) -> Vec<(String, String)> {
    let names = |c: &Config| -> BTreeSet<String> { c.credentials.iter().map(|c| c.name.clone()).collect() };
    let (old_names, new_names) = (names(old), names(new));
    let gone: Vec<&CredentialConfig> = old
        .credentials
        .iter()
        .filter(|c| c.key().is_some() && !new_names.contains(&c.name))
        .collect();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for added in new
        .credentials
        .iter()
        .filter(|c| c.key().is_some() && !old_names.contains(&c.name))
    {
        if let Some(before) = gone
            .iter()
            .find(|g| !pairs.iter().any(|(o, _)| *o == g.name) && crate::config::same_key_source(g, added))
        {
            pairs.push((before.name.clone(), added.name.clone()));
        }
    }
    pairs
}

/// Runs blocking filesystem work on the blocking pool, so the runtime
/// thread (signals, health, every credential) never waits on a disk. A
/// panic in `f` becomes a config read error.
pub(super) async fn blocking<T: Send + 'static>(
    path: &std::path::Path,
    f: impl FnOnce() -> Result<T, ConfigError> + Send + 'static,
) -> Result<T, ConfigError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ConfigError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}
