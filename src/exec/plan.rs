//! The policy of `exec` mode, pure and unit-tested: what is exported under
//! which name, the child's environment, where COMMAND is, whether a reload
//! keeps what the child needs, and whether a change of secrets calls for
//! a restart. The process handling lives in [`super`] and [`crate::process`].

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::config::{Config, CredentialConfig, is_env_name, reserved_for_a_secret};
use crate::export::Exported;
use crate::secret::PasswordSource;

/// `--on-change`: what a change of an exported secret does to the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Stop it (stop signal, wait, SIGKILL) and start it anew.
    Restart,
    /// Send it this signal (it re-reads an output file).
    Signal(Signal),
    /// Leave it alone.
    None,
}

/// The variables the child never inherits from the daemon: systemd's
/// notify socket and watchdog belong to the daemon.
pub const NEVER_INHERITED: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Variable names for a credential's kind when `--env` is not given.
pub const TOKEN_VARIABLE: &str = "VOIPBIN_TOKEN";
pub const KEY_VARIABLE: &str = "VOIPBIN_API_KEY";

/// Everything `exec` was asked to do, checked against the config.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What the child gets: variable name and credential, in order.
    pub exports: Vec<Export>,
    pub on_change: OnChange,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub command: Command,
}

/// One exported variable (plus `{variable}_EXPIRES_AT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub variable: String,
    pub credential: String,
}

/// COMMAND, found: the file to run and the words it was given.
#[derive(Debug, Clone)]
pub struct Command {
    pub program: PathBuf,
    /// COMMAND as typed (the child's argv[0]).
    pub argv: Vec<OsString>,
}

impl Command {
    /// COMMAND's name for logs and `status` (its arguments may be private).
    pub fn name(&self) -> String {
        self.argv
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Parses `--on-change`: `restart`, `signal:NAME` or `none`.
pub fn parse_on_change(text: &str) -> Result<OnChange, String> {
    match text {
        "restart" => Ok(OnChange::Restart),
        "none" => Ok(OnChange::None),
        _ => match text.strip_prefix("signal:") {
            Some(name) => parse_signal(name).map(OnChange::Signal),
            None => Err(format!("{text:?} is not restart, signal:SIGNAME or none")),
        },
    }
}

/// Parses a signal name: `SIGHUP`, `HUP` or `hup`.
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    match name.parse::<Signal>() {
        Ok(Signal::SIGKILL | Signal::SIGSTOP) => {
            Err(format!("{text}: cannot be caught, so cannot ask anything"))
        }
        Ok(s) => Ok(s),
        Err(_) => Err(format!("{text:?} is not a signal name (e.g. SIGTERM, HUP)")),
    }
}

/// The default variable of a credential's kind.
fn default_variable(cfg: &CredentialConfig) -> &'static str {
    if cfg.key().is_some() {
        KEY_VARIABLE
    } else {
        TOKEN_VARIABLE
    }
}

/// What is exported: each `--env VAR=CREDENTIAL` as given, or without any,
/// every credential under its kind's default variable. Errors name `--env`.
pub fn exports(env_flags: &[String], config: &Config) -> Result<Vec<Export>, String> {
    if env_flags.is_empty() {
        let mut exports: Vec<Export> = Vec::new();
        for cfg in &config.credentials {
            let variable = default_variable(cfg);
            if let Some(other) = exports.iter().find(|e| e.variable == variable) {
                return Err(format!(
                    "--env: credentials {:?} and {:?} would both be exported as {variable}; \
                     name what each is exported as, e.g. --env {variable}={} --env OTHER_NAME={}",
                    other.credential, cfg.name, other.credential, cfg.name
                ));
            }
            exports.push(Export {
                variable: variable.to_string(),
                credential: cfg.name.clone(),
            });
        }
        return Ok(exports);
    }
    let mut exports: Vec<Export> = Vec::new();
    for flag in env_flags {
        let Some((variable, credential)) = flag.split_once('=') else {
            return Err(format!("--env {flag:?}: expected VAR=CREDENTIAL"));
        };
        if !is_env_name(variable) {
            return Err(format!(
                "--env {flag:?}: {variable:?} is not a variable name (letters, digits and _, not starting with a digit)"
            ));
        }
        if let Some(why) = reserved_for_a_secret(variable) {
            return Err(format!("--env {flag:?}: {variable} {why}; choose another name"));
        }
        if !config.credentials.iter().any(|c| c.name == credential) {
            let known: Vec<&str> = config.credentials.iter().map(|c| c.name.as_str()).collect();
            return Err(format!(
                "--env {flag:?}: no credential named {credential:?} in the config (it has: {})",
                known.join(", ")
            ));
        }
        let expires = format!("{variable}_EXPIRES_AT");
        if exports.iter().any(|e| {
            e.variable == variable
                || format!("{}_EXPIRES_AT", e.variable) == variable
                || e.variable == expires
        }) {
            return Err(format!("--env {flag:?}: {variable} is exported twice"));
        }
        exports.push(Export {
            variable: variable.to_string(),
            credential: credential.to_string(),
        });
    }
    Ok(exports)
}

/// A reloaded config must still have every exported credential, of the
/// same kind (its variable and its secret's meaning would change).
pub fn check_reload(exports: &[Export], old: &Config, new: &Config) -> Result<(), String> {
    for e in exports {
        let kind = |c: &Config| {
            c.credentials
                .iter()
                .find(|x| x.name == e.credential)
                .map(|x| x.key().is_some())
        };
        match (kind(old), kind(new)) {
            (_, None) => {
                return Err(format!(
                    "credential {:?} is exported to the child as {} and cannot be removed or renamed while it runs",
                    e.credential, e.variable
                ));
            }
            (Some(before), Some(after)) if before != after => {
                return Err(format!(
                    "credential {:?} is exported to the child as {} and cannot change its kind while it runs",
                    e.credential, e.variable
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The `password-env` variables of a config: never passed to the child.
pub fn password_variables(config: &Config) -> BTreeSet<String> {
    config
        .credentials
        .iter()
        .filter_map(|c| c.login.as_ref())
        .filter_map(|l| match &l.password {
            PasswordSource::Env(name) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// The child's environment, built anew for each start: the daemon's
/// (`inherited`) minus `hidden` and [`NEVER_INHERITED`], plus each export
/// and its `_EXPIRES_AT`.
pub fn child_env(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    hidden: &BTreeSet<String>,
    values: &[(&Export, &Exported)],
) -> Vec<(OsString, OsString)> {
    let exported: BTreeSet<String> = values
        .iter()
        .flat_map(|(e, _)| [e.variable.clone(), format!("{}_EXPIRES_AT", e.variable)])
        .collect();
    let mut env: Vec<(OsString, OsString)> = inherited
        .into_iter()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !hidden.contains(k.as_ref())
                && !NEVER_INHERITED.contains(&k.as_ref())
                && !exported.contains(k.as_ref())
        })
        .collect();
    for (e, v) in values {
        env.push((e.variable.clone().into(), v.secret.expose().into()));
        env.push((
            format!("{}_EXPIRES_AT", e.variable).into(),
            crate::token::rfc3339(v.expires_at).into(),
        ));
    }
    env
}

/// The access keys a child started with `values` holds.
pub fn keys_held(values: &[(&Export, &Exported)]) -> BTreeSet<String> {
    values.iter().filter_map(|(_, v)| v.key_id.clone()).collect()
}

/// Which exported credentials changed their secret since the child got
/// `started` (empty: nothing to do, whatever was rewritten or reloaded).
pub fn changed<'a>(exports: &'a [Export], started: &[Exported], now: &[Exported]) -> Vec<&'a str> {
    exports
        .iter()
        .zip(started.iter().zip(now))
        .filter(|(_, (a, b))| a.secret != b.secret)
        .map(|(e, _)| e.credential.as_str())
        .collect()
}

/// Why COMMAND cannot run, with the exit status the shell would give.
#[derive(Debug, PartialEq, Eq)]
pub struct NotRunnable {
    pub status: u8,
    pub message: String,
}

/// Finds COMMAND as `execvp` would: a name with a `/` as is, else the
/// first executable file of that name on `path` (the daemon's `PATH`).
/// Not found: 127; found but not an executable file (a directory, no
/// execute permission): 126.
pub fn find_command(argv: &[OsString], path: Option<&OsStr>) -> Result<Command, NotRunnable> {
    let Some(name) = argv.first() else {
        return Err(NotRunnable {
            status: 2,
            message: "no command given after --".into(),
        });
    };
    let shown = name.to_string_lossy();
    let not_found = |message: String| NotRunnable { status: 127, message };
    if name.is_empty() {
        return Err(not_found("the command is an empty string".into()));
    }
    let found = |program: PathBuf| Command {
        program,
        argv: argv.to_vec(),
    };
    if name.as_bytes().contains(&b'/') {
        let path = PathBuf::from(name);
        return match runnable(&path) {
            Runnable::Yes => Ok(found(path)),
            Runnable::Missing => Err(not_found(format!("{shown}: no such file"))),
            Runnable::No(why) => Err(NotRunnable {
                status: 126,
                message: format!("{shown}: {why}"),
            }),
        };
    }
    let mut refused = None;
    let dirs = path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(dirs) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(name);
        match runnable(&candidate) {
            Runnable::Yes => return Ok(found(candidate)),
            Runnable::No(why) => {
                refused.get_or_insert(format!("{}: {why}", candidate.display()));
            }
            Runnable::Missing => {}
        }
    }
    match refused {
        Some(message) => Err(NotRunnable { status: 126, message }),
        None => Err(not_found(format!("{shown}: command not found in PATH"))),
    }
}

enum Runnable {
    Yes,
    Missing,
    No(&'static str),
}

fn runnable(path: &Path) -> Runnable {
    use nix::unistd::{AccessFlags, access};
    match std::fs::metadata(path) {
        Err(_) => Runnable::Missing,
        Ok(m) if m.is_dir() => Runnable::No("is a directory"),
        Ok(m) if !m.is_file() => Runnable::No("is not a regular file"),
        Ok(_) if access(path, AccessFlags::X_OK).is_err() => {
            Runnable::No("permission denied (not executable)")
        }
        Ok(_) => Runnable::Yes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use time::macros::datetime;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/t/config.toml")).unwrap()
    }

    const TWO_TOKENS: &str = r#"
[[credential]]
name = "a"
username = "a@example.com"
password-env = "A_PASSWORD"
[[credential.output]]
path = "/run/t/a"
[[credential]]
name = "b"
username = "b@example.com"
password-file = "/etc/t/b"
[[credential.output]]
path = "/run/t/b"
"#;

    fn exported(secret: &str, key_id: Option<&str>) -> Exported {
        Exported {
            secret: Secret::new(secret.into()),
            expires_at: datetime!(2026-12-09 10:00 UTC),
            key_id: key_id.map(str::to_string),
        }
    }

    #[test]
    fn two_credentials_of_one_kind_need_env_and_the_error_names_it() {
        let c = config(TWO_TOKENS);
        let err = exports(&[], &c).unwrap_err();
        assert!(err.starts_with("--env"), "{err}");
        assert!(err.contains("VOIPBIN_TOKEN"), "{err}");
        let e = exports(&["A=a".into(), "B=a".into()], &c).unwrap();
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|e| e.credential == "a"));
    }

    #[test]
    fn bad_env_flags_are_refused_naming_the_flag() {
        let c = config(TWO_TOKENS);
        for bad in ["1A=a", "A-B=a", "=a", "A", "A=nope", "A=a,A=b"] {
            let flags: Vec<String> = bad.split(',').map(str::to_string).collect();
            let err = exports(&flags, &c).unwrap_err();
            assert!(err.starts_with("--env"), "{bad}: {err}");
        }
        // Names the loader, the command lookup or systemd read: a secret
        // there would be printed or lost.
        for reserved in [
            "LD_PRELOAD=a",
            "LD_LIBRARY_PATH=a",
            "GLIBC_TUNABLES=a",
            "PATH=a",
            "NOTIFY_SOCKET=a",
        ] {
            let err = exports(&[reserved.to_string()], &c).unwrap_err();
            assert!(err.contains("choose another name"), "{reserved}: {err}");
        }
        assert!(exports(&["OLD_PATH=a".into(), "VN_LD_X=b".into()], &c).is_ok());
        // A name and another's _EXPIRES_AT would collide.
        assert!(exports(&["A=a".into(), "A_EXPIRES_AT=b".into()], &c).is_err());
    }

    #[test]
    fn signals_and_on_change_parse_in_every_spelling() {
        assert_eq!(parse_signal("SIGHUP"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("hup"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("Term"), Ok(Signal::SIGTERM));
        assert!(parse_signal("SIGKILL").is_err());
        assert!(parse_signal("NOPE").is_err());
        assert_eq!(
            parse_on_change("signal:USR2"),
            Ok(OnChange::Signal(Signal::SIGUSR2))
        );
        assert_eq!(parse_on_change("none"), Ok(OnChange::None));
        assert!(parse_on_change("restart-please").is_err());
        assert!(parse_on_change("signal:").is_err());
    }

    #[test]
    fn the_child_env_drops_passwords_and_notify_variables_and_adds_exports() {
        let e = Export {
            variable: "VOIPBIN_API_KEY".into(),
            credential: "mcp".into(),
        };
        let v = exported("vb_secretvalue", Some("k1"));
        let inherited = [
            ("PATH", "/bin"),
            ("A_PASSWORD", "hunter2"),
            ("NOTIFY_SOCKET", "/run/n"),
            ("WATCHDOG_USEC", "1"),
            ("WATCHDOG_PID", "2"),
            ("VOIPBIN_API_KEY", "stale"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let hidden: BTreeSet<String> = ["A_PASSWORD".to_string()].into();
        let env = child_env(inherited, &hidden, &[(&e, &v)]);
        let get = |k: &str| {
            env.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("PATH"), ["/bin"]);
        assert!(get("A_PASSWORD").is_empty());
        assert!(
            get("NOTIFY_SOCKET").is_empty()
                && get("WATCHDOG_USEC").is_empty()
                && get("WATCHDOG_PID").is_empty()
        );
        assert_eq!(get("VOIPBIN_API_KEY"), ["vb_secretvalue"]);
        assert_eq!(get("VOIPBIN_API_KEY_EXPIRES_AT"), ["2026-12-09T10:00:00Z"]);
        assert_eq!(keys_held(&[(&e, &v)]), ["k1".to_string()].into());
    }

    #[test]
    fn only_a_changed_value_is_a_change() {
        let exports = [
            Export {
                variable: "A".into(),
                credential: "a".into(),
            },
            Export {
                variable: "B".into(),
                credential: "b".into(),
            },
        ];
        let started = [exported("one", None), exported("two", None)];
        let mut later = started.clone();
        later[1].expires_at = datetime!(2027-01-01 0:00 UTC);
        assert!(changed(&exports, &started, &later).is_empty());
        later[1].secret = Secret::new("three".into());
        assert_eq!(changed(&exports, &started, &later), ["b"]);
    }

    #[test]
    fn a_reload_must_keep_every_exported_credential_and_its_kind() {
        let old = config(TWO_TOKENS);
        let e = exports(&["A=a".into()], &old).unwrap();
        assert!(check_reload(&e, &old, &old).is_ok());
        let without_a = config(&TWO_TOKENS.replace("name = \"a\"", "name = \"c\""));
        assert!(check_reload(&e, &old, &without_a).unwrap_err().contains("\"a\""));
        // b is not exported: removing it is fine.
        let without_b = config(&TWO_TOKENS.replace("name = \"b\"", "name = \"d\""));
        assert!(check_reload(&e, &old, &without_b).is_ok());
        assert_eq!(password_variables(&old), ["A_PASSWORD".to_string()].into());
    }

    #[test]
    fn commands_are_found_like_a_shell_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("prog");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = Some(dir.path().as_os_str());
        let argv = |s: &str| vec![OsString::from(s)];
        assert_eq!(find_command(&argv("prog"), path).unwrap().program, exe);
        assert_eq!(find_command(&argv("nope"), path).unwrap_err().status, 127);
        assert_eq!(find_command(&argv("plain"), path).unwrap_err().status, 126);
        let dir_arg = dir.path().to_str().unwrap().to_string();
        assert_eq!(find_command(&argv(&dir_arg), path).unwrap_err().status, 126);
        assert_eq!(
            find_command(&argv("/nonexistent/x"), path).unwrap_err().status,
            127
        );
        assert_eq!(find_command(&[], path).unwrap_err().status, 2);
    }
}
