//! `exec`: the daemon plus one child, COMMAND, with the secrets in its
//! environment (see [`crate::exec`]).

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::ConfigArg;
use super::load::{EXIT_CONFIG, fatal, refuse_unreadable_inputs};
use super::runtime;
use crate::config::{Config, Use};
use crate::exec::plan::{self, OnChange, Plan};

pub const AFTER_HELP: &str = "Examples:
  voipbin-tokend exec -c /etc/voipbin-tokend/mcp.toml -- voipbin-mcp
  voipbin-tokend exec --env VOIPBIN_API_KEY=mcp --env VN_ACCESS_KEY=mcp -- vn calls list
  voipbin-tokend exec --on-change signal:HUP -- myapp --config /etc/myapp.conf

It is `run` plus one child. The child starts once every exported credential holds
an unexpired secret (its outputs written first), with VOIPBIN_TOKEN (login tokens)
or VOIPBIN_API_KEY (access keys) and {VAR}_EXPIRES_AT in its environment, and
without the daemon's password-env variables or NOTIFY_SOCKET/WATCHDOG_*.
When an exported secret's value changes, the child is restarted (stop signal, up
to --stop-timeout, then SIGKILL; never two at once), signalled, or left alone.
An access key a running child was started with is never deleted under it.

Signals: SIGTERM, SIGINT and SIGQUIT are passed to the child and the daemon stops
with it; SIGUSR2 and SIGWINCH are passed on; SIGHUP reloads; SIGUSR1 renews now.
Exit status: the child's (128+N if a signal N killed it); 127 COMMAND not found,
126 not executable, 2 usage, 78 invalid config.";

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Export CREDENTIAL's secret as VAR (and VAR_EXPIRES_AT); repeatable. Without it,
    /// every credential is exported as VOIPBIN_TOKEN or VOIPBIN_API_KEY. VAR may not be
    /// PATH, LD_* or GLIBC_TUNABLES (the loader prints what it cannot load), or a systemd one.
    #[arg(long = "env", value_name = "VAR=CREDENTIAL")]
    pub env: Vec<String>,
    /// What a changed secret does to the child: restart it, send it a signal, or nothing.
    #[arg(long, value_name = "restart|signal:SIGNAME|none", default_value = "restart", value_parser = plan::parse_on_change)]
    pub on_change: OnChange,
    /// The signal that asks the child to stop (on a restart).
    #[arg(long, value_name = "SIGNAME", default_value = "SIGTERM", value_parser = plan::parse_signal)]
    pub stop_signal: Signal,
    /// How long the child may take to stop before it is killed (SIGKILL).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub stop_timeout: Duration,
    /// The program to run and its arguments (after `--`); no shell is involved.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

pub(super) fn exec(args: ExecArgs) -> ExitCode {
    let path = &args.config.config;
    let config = match Config::load_for(path, Use::Exec) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    if let Err(code) = refuse_unreadable_inputs(&config) {
        return code;
    }
    let exports = match plan::exports(&args.env, &config) {
        Ok(e) => e,
        Err(message) => return config_error(format!("{}: {message}", path.display())),
    };
    // Found before anything starts: no login, no key for a typo.
    let command = match plan::find_command(&args.command, std::env::var_os("PATH").as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("voipbin-tokend: cannot run the command: {}", e.message);
            return ExitCode::from(e.status);
        }
    };
    let plan = Plan {
        exports,
        on_change: args.on_change,
        stop_signal: args.stop_signal,
        stop_timeout: args.stop_timeout,
        command,
    };
    let rt = match runtime::start() {
        Ok(rt) => rt,
        Err(e) => return fatal(e),
    };
    match rt.block_on(crate::daemon::run_exec(config, plan)) {
        Ok(stopped) => match stopped.child {
            Some(exit) => ExitCode::from(exit.as_status()),
            None => ExitCode::SUCCESS,
        },
        Err(e @ (crate::daemon::DaemonError::Bind { .. } | crate::daemon::DaemonError::Proxy { .. })) => {
            config_error(e)
        }
        Err(e) => fatal(e),
    }
}

fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("voipbin-tokend: invalid config: {e}");
    ExitCode::from(EXIT_CONFIG)
}
