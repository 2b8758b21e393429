//! What every command that reads the config shares: loading it, refusing
//! secret files this user may not read, and the exit codes of failures.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, ConfigError, Kind, Use};

/// Exit code for an invalid config (EX_CONFIG from sysexits.h); systemd
/// units use it with RestartPreventExitStatus=.
pub(crate) const EXIT_CONFIG: u8 = 78;

pub(super) fn load(path: &Path) -> Result<Config, ExitCode> {
    load_for(path, Use::Daemon)
}

/// [`load`] for `exec`, or for a command that reads any config
/// (`check`, `status`: a credential with no output is `exec`'s).
pub(super) fn load_for(path: &Path, use_: Use) -> Result<Config, ExitCode> {
    Config::load_for(path, use_).map_err(|e| {
        report_config_error(&e);
        ExitCode::from(EXIT_CONFIG)
    })
}

fn report_config_error(e: &ConfigError) {
    eprintln!("voipbin-tokend: invalid config: {e}");
}

pub(super) fn fatal(message: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{message}");
    eprintln!("voipbin-tokend: {message}");
    ExitCode::FAILURE
}

/// [`readable_inputs`], reported as a config error (78).
pub(super) fn refuse_unreadable_inputs(config: &crate::config::Config) -> Result<(), ExitCode> {
    readable_inputs(config).map_err(|message| {
        eprintln!(
            "voipbin-tokend: invalid config: {}: {message}",
            config.path.display()
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Opens every `bootstrap-key-file` and `password-file` for reading, as
/// the user running this; a file that exists but may not be read is an
/// error naming its key (a missing one is reported by the daemon when it
/// needs it, as it may appear later). Each file once, however many
/// credentials name it.
fn readable_inputs(config: &crate::config::Config) -> Result<(), String> {
    use crate::secret::PasswordSource;
    let mut opened_before = std::collections::HashSet::new();
    for cred in &config.credentials {
        let mut files = Vec::new();
        if let Kind::AccessKey(k) = &cred.kind
            && let Some(f) = &k.bootstrap_key_file
        {
            files.push(("bootstrap-key-file", f));
        }
        if let Some(PasswordSource::File(f)) = cred.login.as_ref().map(|l| &l.password) {
            files.push(("password-file", f));
        }
        for (key, file) in files {
            use std::os::unix::fs::OpenOptionsExt;
            if !opened_before.insert(file) {
                continue;
            }
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(file);
            if let Err(e) = opened
                && e.kind() == std::io::ErrorKind::PermissionDenied
            {
                return Err(format!(
                    "credential[{}].{key}: {} is not readable by this user (uid {}): {e}; give it to the user the daemon runs as (chown), mode 0600",
                    cred.name,
                    file.display(),
                    nix::unistd::geteuid()
                ));
            }
        }
    }
    Ok(())
}
