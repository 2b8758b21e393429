//! The checks of one `[[credential.output]]`: its path, format, mode,
//! owner and group (and whether this process may chown to them), and its
//! hooks.

use std::path::PathBuf;

use super::model::{ConfigError, OutputConfig, Owner};
use super::names::{is_env_name, reserved_for_a_secret};
use super::raw::RawOutput;
use super::validate::Validator;
use crate::output::Format;

/// The name of a key inside one output, like `credential[main].output[0].mode`.
type KeyOf<'k> = &'k dyn Fn(&str) -> String;

impl Validator<'_> {
    pub(super) fn output(
        &self,
        prefix: &str,
        raw: RawOutput,
        default_variable: &str,
    ) -> Result<OutputConfig, ConfigError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let path = self.output_path(&key, &raw.path)?;
        let format = self.format(
            &key,
            raw.format.as_deref(),
            raw.variable,
            raw.template,
            default_variable,
        )?;
        let mode = self.mode(&key, raw.mode.as_deref())?;
        let (owner, group) = self.owners(&key, raw.owner, raw.group)?;
        let hook_env = self.hook_env(&key, raw.on_change.as_deref(), raw.hook_env)?;
        let signal = self.signal(&key, raw.signal.as_deref(), raw.pid_file.is_some())?;

        Ok(OutputConfig {
            path,
            format,
            mode,
            owner,
            group,
            on_change: raw.on_change,
            hook_env,
            signal,
            pid_file: raw
                .pid_file
                .map(|p| self.path(&key("pid-file"), &p))
                .transpose()?,
        })
    }

    fn output_path(&self, key: KeyOf<'_>, raw: &std::path::Path) -> Result<PathBuf, ConfigError> {
        use std::os::unix::ffi::OsStrExt;
        if raw.as_os_str().is_empty()
            || raw.file_name().is_none()
            || raw.as_os_str().as_bytes().ends_with(b"/")
        {
            return Err(self.err(&key("path"), "must name a file".into()));
        }
        self.path(&key("path"), raw)
    }

    /// `format`, with the `variable` or `template` it takes.
    fn format(
        &self,
        key: KeyOf<'_>,
        format: Option<&str>,
        variable: Option<String>,
        template: Option<String>,
        default_variable: &str,
    ) -> Result<Format, ConfigError> {
        let format_name = format.unwrap_or("raw");
        let variable = match variable {
            Some(v) if !is_env_name(&v) => {
                return Err(self.err(
                    &key("variable"),
                    format!("{v:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
            Some(v) if let Some(why) = reserved_for_a_secret(&v) => {
                return Err(self.err(
                    &key("variable"),
                    format!("{v} {why}: no secret may go under it; choose another name"),
                ));
            }
            v => v,
        };
        if variable.is_some() && !matches!(format_name, "env" | "shell") {
            return Err(self.err(
                &key("variable"),
                format!("only for format env or shell, not {format_name:?}"),
            ));
        }
        if template.is_some() && format_name != "template" {
            return Err(self.err(
                &key("template"),
                format!("only for format template, not {format_name:?}"),
            ));
        }
        let variable = variable.unwrap_or_else(|| default_variable.to_string());
        Ok(match format_name {
            "raw" => Format::Raw,
            "env" => Format::Env { variable },
            "shell" => Format::Shell { variable },
            "json" => Format::Json,
            "template" => {
                let template = template.ok_or_else(|| {
                    self.err(&key("template"), "format template needs a template string".into())
                })?;
                crate::output::render::check_template(&template)
                    .map_err(|m| self.err(&key("template"), m))?;
                Format::Template { template }
            }
            other => {
                return Err(self.err(
                    &key("format"),
                    format!("{other:?} is not one of raw, env, shell, json, template"),
                ));
            }
        })
    }

    /// `mode`: octal, readable by the owner, writable by nobody else.
    fn mode(&self, key: KeyOf<'_>, mode: Option<&str>) -> Result<u32, ConfigError> {
        let mode_text = mode.unwrap_or("0600");
        let mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                self.err(
                    &key("mode"),
                    format!("{mode_text:?} is not an octal mode like \"0640\""),
                )
            })?;
        if mode & 0o400 == 0 {
            return Err(self.err(
                &key("mode"),
                format!("{mode_text:?} does not let the owner read the file"),
            ));
        }
        // Anyone who may write the file could plant a token that the daemon
        // adopts at start and that consumers trust.
        if mode & 0o022 != 0 {
            return Err(self.err(
                &key("mode"),
                format!(
                    "{mode_text:?} lets {} write the file; others could plant a token (use e.g. \"0600\" or \"0640\")",
                    if mode & 0o002 != 0 { "every user" } else { "the group" }
                ),
            ));
        }
        Ok(mode)
    }

    /// `owner` and `group`, resolved, and only if this process may give
    /// files to them.
    fn owners(
        &self,
        key: KeyOf<'_>,
        owner: Option<String>,
        group: Option<String>,
    ) -> Result<(Option<Owner>, Option<Owner>), ConfigError> {
        let owner = owner
            .map(|o| resolve_user(&o).map_err(|m| self.err(&key("owner"), m)))
            .transpose()?;
        let group = group
            .map(|g| resolve_group(&g).map_err(|m| self.err(&key("group"), m)))
            .transpose()?;
        // Found now rather than at the first write: a file silently left
        // owned by the daemon's user is worse than a refusal to start.
        if let Some(o) = &owner
            && !may_chown_to_user(o.id)
        {
            return Err(self.err(&key("owner"), cannot_chown("user", &o.name)));
        }
        if let Some(g) = &group
            && !may_chown_to_group(g.id)
        {
            return Err(self.err(&key("group"), cannot_chown("group", &g.name)));
        }
        Ok((owner, group))
    }

    /// `on-change` is a non-empty command; `hook-env` names variables, and
    /// only beside `on-change`.
    fn hook_env(
        &self,
        key: KeyOf<'_>,
        on_change: Option<&[String]>,
        hook_env: Option<Vec<String>>,
    ) -> Result<Vec<String>, ConfigError> {
        if let Some(argv) = on_change
            && argv.first().is_none_or(|p| p.is_empty())
        {
            return Err(self.err(
                &key("on-change"),
                "must be a non-empty command, like [\"systemctl\", \"reload\", \"app\"]".into(),
            ));
        }
        let hook_env = hook_env.unwrap_or_default();
        if let Some(bad) = hook_env.iter().find(|v| !is_env_name(v)) {
            return Err(self.err(
                &key("hook-env"),
                format!("{bad:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
        if !hook_env.is_empty() && on_change.is_none() {
            return Err(self.err(&key("hook-env"), "only with on-change".into()));
        }
        Ok(hook_env)
    }

    /// `signal`, a name with or without `SIG`, and always with `pid-file`.
    fn signal(
        &self,
        key: KeyOf<'_>,
        signal: Option<&str>,
        has_pid_file: bool,
    ) -> Result<Option<nix::sys::signal::Signal>, ConfigError> {
        let signal = match signal {
            Some(s) => {
                let name = s.to_ascii_uppercase();
                let name = if name.starts_with("SIG") {
                    name
                } else {
                    format!("SIG{name}")
                };
                Some(name.parse::<nix::sys::signal::Signal>().map_err(|_| {
                    self.err(
                        &key("signal"),
                        format!("{s:?} is not a signal name like \"SIGHUP\""),
                    )
                })?)
            }
            None => None,
        };
        if signal.is_some() != has_pid_file {
            return Err(self.err(&key("signal"), "signal and pid-file go together".into()));
        }
        Ok(signal)
    }
}

/// True if this process holds CAP_CHOWN (Linux: bit 0 of CapEff).
fn has_cap_chown() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match status.lines().find_map(|l| l.strip_prefix("CapEff:")) {
        Some(hex) => u64::from_str_radix(hex.trim(), 16).is_ok_and(|caps| caps & 1 != 0),
        None => nix::unistd::geteuid().is_root(),
    }
}

fn may_chown_to_user(uid: u32) -> bool {
    uid == nix::unistd::geteuid().as_raw() || has_cap_chown()
}

pub(super) fn may_chown_to_group(gid: u32) -> bool {
    let ours = gid == nix::unistd::getegid().as_raw()
        || nix::unistd::getgroups().is_ok_and(|gs| gs.iter().any(|g| g.as_raw() == gid));
    ours || has_cap_chown()
}

pub(super) fn cannot_chown(what: &str, name: &str) -> String {
    format!(
        "this process (uid {}) may not give files to {what} {name:?}: that needs CAP_CHOWN \
         (run as root, or grant CAP_CHOWN with the unit's CapabilityBoundingSet= and AmbientCapabilities=)",
        nix::unistd::geteuid()
    )
}

/// uid/gid 4294967295 is -1 to chown(2): "leave unchanged", never an owner.
const UNCHANGED_ID: u32 = u32::MAX;

fn refuse_unchanged_id(id: u32, what: &str) -> Result<(), String> {
    if id == UNCHANGED_ID {
        return Err(format!(
            "{id} is not a {what}: to chown it means \"leave unchanged\"; leave the key out instead"
        ));
    }
    Ok(())
}

fn resolve_user(name: &str) -> Result<Owner, String> {
    if let Ok(id) = name.parse::<u32>() {
        refuse_unchanged_id(id, "user id")?;
        return Ok(Owner {
            name: name.into(),
            id,
        });
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(Owner {
            name: name.into(),
            id: u.uid.as_raw(),
        }),
        Ok(None) => Err(format!("no user named {name:?} on this system")),
        Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
    }
}

pub(super) fn resolve_group(name: &str) -> Result<Owner, String> {
    if let Ok(id) = name.parse::<u32>() {
        refuse_unchanged_id(id, "group id")?;
        return Ok(Owner {
            name: name.into(),
            id,
        });
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(Owner {
            name: name.into(),
            id: g.gid.as_raw(),
        }),
        Ok(None) => Err(format!("no group named {name:?} on this system")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}
