//! The checks that look at the filesystem as it is now (run at every load,
//! after validation): outputs never on one of the daemon's inputs or in
//! the state directory, one file per output and per bootstrap key.

use std::path::{Path, PathBuf};

use super::model::{Config, ConfigError, CredentialConfig, Kind};
use crate::fsread::{Locator, Places};
use crate::secret::PasswordSource;

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
pub(super) fn check_paths(config: &Config) -> Result<(), ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid {
        path: config.path.clone(),
        key,
        message,
    };
    let mut locator = Locator::default();
    let (input_names, inputs) = input_places(config, &mut locator);
    let mut seen_keys: Vec<String> = Vec::new();
    let mut seen = Places::default();
    for cred in &config.credentials {
        for (j, out) in cred.outputs.iter().enumerate() {
            let key = format!("credential[{}].output[{j}].path", cred.name);
            let shown = out.path.display();
            let now = crate::fsread::replaceable(&out.path).map_err(|m| invalid(key.clone(), m))?;
            let here = locator.output_now(&out.path, now.as_ref());
            if let Some(what) = inputs.first_shared(&here).map(|i| &input_names[i]) {
                return Err(invalid(
                    key,
                    format!("{shown} is the daemon's own {what}; writing a token there would destroy it"),
                ));
            }
            if locator.is_under(&here, &config.state_dir) {
                return Err(invalid(
                    key,
                    format!(
                        "{shown} is inside the state directory {}, which is the daemon's own",
                        config.state_dir.display()
                    ),
                ));
            }
            // Spelled inside it, or a symlink into it.
            let mut in_state_dir = |p: &Path| {
                let loc = locator.input(p);
                locator.is_under(&loc, &config.state_dir)
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
            if let Some(other) = seen.first_shared(&here).map(|i| &seen_keys[i]) {
                return Err(invalid(
                    key,
                    format!("{shown} is the same file as {other}; every output needs its own file"),
                ));
            }
            seen.add(seen_keys.len(), &here);
            seen_keys.push(key);
        }
    }
    Ok(())
}

/// [`daemon_inputs`] located: each input's config key, by number, and
/// their places.
pub(super) fn input_places(config: &Config, locator: &mut Locator) -> (Vec<String>, Places) {
    let mut names = Vec::new();
    let mut places = Places::default();
    for (what, path) in daemon_inputs(config) {
        places.add(names.len(), &locator.input(&path));
        names.push(what);
    }
    (names, places)
}

/// One bootstrap key file per credential: two access-key credentials whose
/// `bootstrap-key-file` is one file under any spelling (a symlink, a hard
/// link, `./`, relative or absolute) would each take the key as theirs,
/// and one would delete it under the other. Compared resolved and by
/// (device, inode), as outputs are.
pub(super) fn check_bootstrap_files(config: &Config) -> Result<(), ConfigError> {
    let mut locator = Locator::default();
    let mut seen: Vec<(&str, &Path)> = Vec::new();
    let mut places = Places::default();
    for cred in &config.credentials {
        let Some(file) = cred.key().and_then(|k| k.bootstrap_key_file.as_deref()) else {
            continue;
        };
        let here = locator.input(file);
        if let Some((other, other_file)) = places.first_shared(&here).map(|i| seen[i]) {
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
        places.add(seen.len(), &here);
        seen.push((&cred.name, file));
    }
    Ok(())
}

/// True when two files the daemon reads are one file: the same resolved
/// place (or symlink target), or the same (device, inode).
pub fn same_input(a: &crate::fsread::Location, b: &crate::fsread::Location) -> bool {
    let mut places = Places::default();
    places.add(0, b);
    places.first_shared(a).is_some()
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
pub(super) fn daemon_inputs(config: &Config) -> Vec<(String, PathBuf)> {
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
