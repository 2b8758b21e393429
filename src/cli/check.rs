//! `check`: validate the config and print what the daemon would do.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Kind;

use super::load::{EXIT_CONFIG, load_for, refuse_unreadable_inputs};

pub(super) fn check(path: &Path) -> ExitCode {
    // A credential without outputs is valid for `exec` only: said below.
    let config = match load_for(path, crate::config::Use::Exec) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let api = &config.api;
    // The very URL the client will use, not a guess at how it joins paths.
    let login_url = match crate::api::login_url(&api.base_url) {
        Ok(u) => u,
        Err(e) => {
            eprintln!(
                "voipbin-tokend: invalid config: {}: api.base-url: {e}",
                config.path.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The files the daemon reads its secrets from must be readable by the
    // user running this (the unit's `User=`), or the daemon never becomes
    // ready: test by opening them, as this user.
    if let Err(code) = refuse_unreadable_inputs(&config) {
        return code;
    }
    say!("{}: valid", config.path.display());
    say!(
        "api: POST {login_url}, timeout {}, {}",
        humantime::format_duration(api.timeout),
        match api.max_logins_per_second {
            0 => "no login rate limit".to_string(),
            n => format!("at most {n} logins/s"),
        }
    );
    if let Some(ca) = &api.ca_file {
        say!("     extra trust anchor {}", ca.display());
    }
    for cred in &config.credentials {
        let r = &cred.renewal;
        match (&cred.kind, &cred.login) {
            (Kind::LoginToken, _) => {
                say!("credential {} (login token of {}):", cred.name, cred.username())
            }
            (Kind::AccessKey(k), login) => {
                let auth = match (&k.bootstrap_key_file, login) {
                    (Some(f), _) => format!("self-rotating, first key from {}", f.display()),
                    (None, Some(l)) => format!("managed with the agent login of {}", l.username),
                    (None, None) => "no way to authenticate".to_string(),
                };
                say!("credential {} (access key, {auth}):", cred.name);
                say!(
                    "  each new key lives {}; {}; state in {}",
                    humantime::format_duration(k.lifetime),
                    if k.delete_replaced {
                        format!(
                            "a replaced key is deleted {} after its successor is on disk",
                            humantime::format_duration(k.grace)
                        )
                    } else {
                        "replaced keys are left to expire".to_string()
                    },
                    crate::state::keys::path(&config.state_dir, &cred.name).display()
                );
            }
        }
        if let Some(login) = &cred.login {
            let readable = match login.password.read() {
                Ok(_) => "readable now".to_string(),
                Err(e) => format!("NOT READABLE NOW: {e}"),
            };
            say!("  password from {} ({readable})", login.password);
        }
        say!(
            "  renew at {:.0}% +/- {:.0}% of the {}'s lifetime; retry after {} doubling up to {}",
            r.renew_at * 100.0,
            r.jitter * 100.0,
            if cred.key().is_some() { "key" } else { "token" },
            humantime::format_duration(r.retry_min),
            humantime::format_duration(r.retry_max)
        );
        if cred.outputs.is_empty() {
            say!(
                "  no output: its secret only reaches an `exec` child's environment (`run` refuses this credential)"
            );
        }
        for out in &cred.outputs {
            let mut line = format!(
                "  -> {} ({}, mode {:04o}",
                out.path.display(),
                out.format,
                out.mode
            );
            if let Some(o) = &out.owner {
                line.push_str(&format!(", owner {}", o.name));
            }
            if let Some(g) = &out.group {
                line.push_str(&format!(", group {}", g.name));
            }
            line.push(')');
            // A bare file name lives in the current directory.
            let parent = match out.path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if !parent.is_dir() {
                line.push_str(&format!(
                    " WARNING: directory {} does not exist",
                    parent.display()
                ));
            }
            say!("{line}");
        }
    }
    for w in &config.warnings {
        say!("warning: {w}");
    }
    ExitCode::SUCCESS
}
