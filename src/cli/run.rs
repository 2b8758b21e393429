//! `run` (the daemon) and `once` (one pass, or a request to a running daemon).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::load::{EXIT_CONFIG, fatal, load, refuse_unreadable_inputs};
use super::{beside, runtime};
use crate::api::budget::{Api, Apis};
use crate::credential;
use crate::state;

pub(super) fn run(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // As `check` does: a secret file this user may not read would leave a
    // daemon that never becomes ready.
    if let Err(code) = refuse_unreadable_inputs(&config) {
        return code;
    }
    let rt = match runtime::start() {
        Ok(rt) => rt,
        Err(e) => return fatal(e),
    };
    match rt.block_on(crate::daemon::run(config, std::future::pending())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e @ (crate::daemon::DaemonError::Bind { .. } | crate::daemon::DaemonError::Proxy { .. })) => {
            eprintln!("voipbin-tokend: invalid config: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => fatal(e),
    }
}

pub(super) fn once(path: &Path, force: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = refuse_unreadable_inputs(&config) {
        return code;
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // The state directory's lock: a `once` never works on access keys
    // behind a running daemon's back (see `beside`).
    let locked = match state::lock_state_dir_as(&config.state_dir, state::ONCE_ROLE) {
        // Another `once` pass: this one waits for it to end.
        Err(state::Locked { .. }) if state::held_by_once(&config.state_dir) => {
            state::wait_for_once(&config.state_dir, state::ONCE_ROLE)
        }
        other => other,
    };
    let lock = match locked {
        Ok(lock) => lock,
        Err(state::Locked { holder, .. }) => {
            if config.credentials.iter().any(|c| c.key().is_some()) {
                return beside::once_via_daemon(&config, holder, force);
            }
            tracing::info!(
                pid = holder,
                "a running daemon holds the state directory; login tokens are renewed beside it"
            );
            None
        }
    };
    // Temp files a killed process left: ours to remove only with the lock
    // (beside a running daemon, they may be its writes in progress).
    if lock.is_some() {
        state::remove_state_temps(&config.state_dir);
        crate::output::remove_temps_left_behind(config.output_paths());
    }
    let rt = match runtime::start() {
        Ok(rt) => rt,
        Err(e) => return fatal(e),
    };
    rt.block_on(async {
        let apis = match Apis::new(&config) {
            Ok(apis) => apis,
            Err(e) => return fatal(e),
        };
        let mut set = tokio::task::JoinSet::new();
        let state_dir = config.state_dir.clone();
        for cred in config.credentials {
            let api: Arc<Api> = match apis.for_credential(&cred) {
                Ok(api) => api,
                Err(e) => return fatal(e),
            };
            let span = tracing::info_span!("credential", name = %cred.name);
            set.spawn(tracing::Instrument::instrument(
                credential::task::once(cred, api, state_dir.clone(), force),
                span,
            ));
        }
        let mut all_ok = true;
        while let Some(result) = set.join_next().await {
            all_ok &= result.unwrap_or(false);
        }
        if all_ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}
