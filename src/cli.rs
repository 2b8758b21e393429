//! The command line: clap definitions, dispatch, exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use time::OffsetDateTime;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, Kind};
use crate::credential::{self, Api};
use crate::logging::{self, LogFormat};
use crate::token::{self, Validity};

/// Exit code for an invalid config (EX_CONFIG from sysexits.h); systemd
/// units use it with RestartPreventExitStatus=.
pub const EXIT_CONFIG: u8 = 78;

const ABOUT: &str = "Keeps VoIPBIN API tokens fresh on disk.

Logs in to the VoIPBIN API, reads the token's expiry, logs in again well \
before it, and writes each fresh token atomically to files (raw, env, shell, \
JSON or a template) that other programs read.";

const EXAMPLES: &str = "Examples:
  voipbin-tokend demo                          see it work against a local stand-in API
  voipbin-tokend check -c /etc/voipbin-tokend/config.toml
  voipbin-tokend run                           the daemon (systemd, sidecar)
  voipbin-tokend once                          one pass for cron or ExecStartPre
  voipbin-tokend inspect /run/voipbin/main.token

Signals to `run`: SIGHUP reloads the config, SIGUSR1 renews every token now,
SIGTERM/SIGINT stop cleanly.";

#[derive(Debug, Parser)]
#[command(name = "voipbin-tokend", version, about = ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// Log line format on stderr. RUST_LOG sets the level (default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The config file.
    #[arg(short, long, env = "VOIPBIN_TOKEND_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground: keep every output fresh until SIGTERM or SIGINT.
    #[command(
        after_help = "Example:\n  voipbin-tokend run -c /etc/voipbin-tokend/config.toml\n\n\
        A token already on disk that is not yet due is reused: a restart does not log in.\n\
        SIGHUP or an edit of the config reloads it; a config that fails to load is logged\n\
        and ignored. SIGUSR1 renews every credential now."
    )]
    Run(ConfigArg),
    /// Make every output hold a token that is not due for renewal, then exit (0 all fresh, 1 any failed).
    #[command(
        after_help = "Example (cron, ExecStartPre=, an init container):\n  voipbin-tokend once -c /etc/voipbin-tokend/config.toml\n\n\
        Logs in only for credentials whose outputs lack a token that is not yet due; --force always logs in.\n\
        Each credential gets one login attempt. Beside a running daemon with the same state directory,\n\
        a config with access keys makes no key itself: it asks the daemon (SIGUSR1) and waits for it."
    )]
    Once {
        #[command(flatten)]
        config: ConfigArg,
        /// Log in for every credential, even if its token is not due.
        #[arg(long)]
        force: bool,
    },
    /// Validate the config and print what the daemon would do; touches nothing (0 valid, 78 invalid).
    #[command(after_help = "Example:\n  voipbin-tokend check -c ./config.toml")]
    Check(ConfigArg),
    /// Show a token file's expiry and time left (raw, env, shell, json or template output; `-` for stdin). Never prints the token.
    #[command(
        after_help = "Examples:\n  voipbin-tokend inspect /run/voipbin/main.token\n  voipbin-tokend inspect --json /run/voipbin/main.env | jq .remaining_seconds"
    )]
    Inspect {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The file to read, or `-` for standard input.
        file: PathBuf,
    },
    /// Show each credential's expiry, last and next renewal and last error, from the running daemon's status file.
    #[command(
        after_help = "Example:\n  voipbin-tokend status -c /etc/voipbin-tokend/config.toml\n\n\
        Reads {state dir}/status.json, which the daemon keeps current. Exits 0 only if the daemon\n\
        is running and every credential holds an unexpired token on disk."
    )]
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    #[command(
        after_help = "Example:\n  voipbin-tokend completions bash > /etc/bash_completion.d/voipbin-tokend"
    )]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) generated from this command line definition.
    #[command(after_help = "Example:\n  voipbin-tokend man > /usr/local/share/man/man1/voipbin-tokend.1")]
    Man,
    /// Run the daemon against a built-in local stand-in of the VoIPBIN API, writing into a temporary folder.
    #[command(after_help = "Example:\n  cargo run --release -- demo\n\n\
        Tokens live 20 seconds, so renewals show within a minute. Ctrl-C stops it.")]
    Demo(crate::demo::DemoArgs),
    /// For packaging tests only (hidden): serve the stand-in API until SIGTERM/SIGINT.
    #[command(hide = true)]
    Standin(crate::demo::StandinArgs),
}

/// Parses the command line, runs the command, maps the result to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::Run(c) => run(&c.config),
        Command::Once { config, force } => once(&config.config, force),
        Command::Check(c) => check(&c.config),
        Command::Inspect { json, file } => inspect(&file, json),
        Command::Status { config, json } => match load(&config.config) {
            Ok(c) => crate::status::command(&c.state_dir, json),
            Err(code) => code,
        },
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "voipbin-tokend", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fatal(e),
            }
        }
        Command::Demo(args) => crate::demo::main(args),
        Command::Standin(args) => crate::demo::standin(args),
    }
}

/// The runtime: one thread is plenty for a handful of HTTP calls a week;
/// file writes go to a small blocking pool.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        report_config_error(&e);
        ExitCode::from(EXIT_CONFIG)
    })
}

fn report_config_error(e: &ConfigError) {
    eprintln!("voipbin-tokend: invalid config: {e}");
}

fn fatal(message: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{message}");
    eprintln!("voipbin-tokend: {message}");
    ExitCode::FAILURE
}

fn run(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // As `check` does: a secret file this user may not read would leave a
    // daemon that never becomes ready.
    if let Err(code) = refuse_unreadable_inputs(&config) {
        return code;
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fatal(format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(crate::daemon::run(config, std::future::pending())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e @ crate::daemon::DaemonError::Bind { .. }) => {
            eprintln!("voipbin-tokend: invalid config: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => fatal(e),
    }
}

fn once(path: &Path, force: bool) -> ExitCode {
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
    let locked = match crate::daemon::lock_state_dir_as(&config.state_dir, crate::daemon::ONCE_ROLE) {
        // Another `once` pass: this one waits for it to end.
        Err(crate::daemon::DaemonError::Locked { .. }) if crate::daemon::held_by_once(&config.state_dir) => {
            crate::daemon::wait_for_once(&config.state_dir, crate::daemon::ONCE_ROLE)
        }
        other => other,
    };
    let lock = match locked {
        Ok(lock) => lock,
        Err(crate::daemon::DaemonError::Locked { holder, .. }) => {
            if config.credentials.iter().any(|c| c.key().is_some()) {
                return crate::beside::once_via_daemon(&config, holder, force);
            }
            tracing::info!(
                pid = holder,
                "a running daemon holds the state directory; login tokens are renewed beside it"
            );
            None
        }
        Err(e) => return fatal(e),
    };
    if lock.is_some() {
        crate::daemon::remove_state_temps(&config.state_dir);
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fatal(format!("cannot start the runtime: {e}")),
    };
    rt.block_on(async {
        let api = match Api::new(&config.api) {
            Ok(api) => api,
            Err(e) => return fatal(e),
        };
        let mut set = tokio::task::JoinSet::new();
        let state_dir = config.state_dir.clone();
        for cred in config.credentials {
            let api: Arc<Api> = api.clone();
            let span = tracing::info_span!("credential", name = %cred.name);
            set.spawn(tracing::Instrument::instrument(
                credential::once(cred, api, state_dir.clone(), force),
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

/// [`readable_inputs`], reported as a config error (78).
fn refuse_unreadable_inputs(config: &crate::config::Config) -> Result<(), ExitCode> {
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
/// needs it, as it may appear later).
fn readable_inputs(config: &crate::config::Config) -> Result<(), String> {
    use crate::secret::PasswordSource;
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

fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
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
    println!("{}: valid", config.path.display());
    println!(
        "api: POST {login_url}, timeout {}, {}",
        humantime::format_duration(api.timeout),
        match api.max_logins_per_second {
            0 => "no login rate limit".to_string(),
            n => format!("at most {n} logins/s"),
        }
    );
    if let Some(ca) = &api.ca_file {
        println!("     extra trust anchor {}", ca.display());
    }
    for cred in &config.credentials {
        let r = &cred.renewal;
        match (&cred.kind, &cred.login) {
            (Kind::LoginToken, _) => {
                println!("credential {} (login token of {}):", cred.name, cred.username())
            }
            (Kind::AccessKey(k), login) => {
                let auth = match (&k.bootstrap_key_file, login) {
                    (Some(f), _) => format!("self-rotating, first key from {}", f.display()),
                    (None, Some(l)) => format!("managed with the agent login of {}", l.username),
                    (None, None) => "no way to authenticate".to_string(),
                };
                println!("credential {} (access key, {auth}):", cred.name);
                println!(
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
                    crate::keystate::path(&config.state_dir, &cred.name).display()
                );
            }
        }
        if let Some(login) = &cred.login {
            let readable = match login.password.read() {
                Ok(_) => "readable now".to_string(),
                Err(e) => format!("NOT READABLE NOW: {e}"),
            };
            println!("  password from {} ({readable})", login.password);
        }
        println!(
            "  renew at {:.0}% +/- {:.0}% of the {}'s lifetime; retry after {} doubling up to {}",
            r.renew_at * 100.0,
            r.jitter * 100.0,
            if cred.key().is_some() { "key" } else { "token" },
            humantime::format_duration(r.retry_min),
            humantime::format_duration(r.retry_max)
        );
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
            println!("{line}");
        }
    }
    for w in &config.warnings {
        println!("warning: {w}");
    }
    ExitCode::SUCCESS
}

/// `inspect` of an access-key output: a key carries no expiry of its own,
/// so it is read from the file (env, shell: `*_EXPIRES_AT`; json:
/// `expires_at`). Prints the key's public prefix, never the key.
fn inspect_key(file: &Path, text: &str, json: bool) -> ExitCode {
    let Some(start) = text.find("vb_") else {
        eprintln!(
            "voipbin-tokend: no token or access key found in {}",
            file.display()
        );
        return ExitCode::FAILURE;
    };
    let key: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !crate::keyapi::is_key_shaped(&key) {
        eprintln!(
            "voipbin-tokend: no token or access key found in {}",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    let prefix = crate::keyapi::prefix_of(&key).to_string();
    let as_json = serde_json::from_str::<serde_json::Value>(text).ok();
    let from_json = |field: &str| {
        as_json
            .as_ref()
            .and_then(|v| v.get(field)?.as_str().map(str::to_owned))
    };
    let from_lines = || {
        text.lines().find_map(|line| {
            let line = line.trim().trim_start_matches("export ");
            let (name, value) = line.split_once('=')?;
            name.ends_with("_EXPIRES_AT")
                .then(|| value.trim_matches('\'').to_string())
        })
    };
    let expires_at = from_json("expires_at")
        .or_else(from_lines)
        .and_then(|t| OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok());
    let Some(expires_at) = expires_at else {
        eprintln!(
            "voipbin-tokend: {} holds an access key ({prefix}...) but no expiry: a raw key carries none; see `voipbin-tokend status`",
            file.display()
        );
        return ExitCode::FAILURE;
    };
    let remaining = (expires_at - crate::now()).whole_seconds();
    if json {
        let value = serde_json::json!({
            "file": file.display().to_string(),
            "kind": "access-key",
            "key_prefix": prefix,
            "id": from_json("id"),
            "expires_at": token::rfc3339(expires_at),
            "remaining_seconds": remaining,
            "expired": remaining <= 0,
        });
        println!("{value}");
    } else {
        println!("file:       {}", file.display());
        println!("access key: {prefix}...");
        if let Some(id) = from_json("id") {
            println!("key id:     {id}");
        }
        println!("expires at: {}", token::rfc3339(expires_at));
        let d = std::time::Duration::from_secs(remaining.unsigned_abs());
        if remaining > 0 {
            println!("remaining:  {}", humantime::format_duration(d));
        } else {
            println!("remaining:  none, EXPIRED {} ago", humantime::format_duration(d));
        }
    }
    ExitCode::SUCCESS
}

fn inspect(file: &Path, json: bool) -> ExitCode {
    use crate::fsread::{MAX_OUTPUT, read_bounded, read_capped};
    // Bounded like every read of an output: a token file is well under 64 KiB.
    let (bytes, mtime) = if file == Path::new("-") {
        match read_capped(
            std::io::stdin(),
            MAX_OUTPUT,
            "token file",
            Path::new("standard input"),
        ) {
            Ok(b) => (b, None),
            Err(e) => {
                eprintln!("voipbin-tokend: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        match read_bounded(file, MAX_OUTPUT, "token file") {
            Ok(b) => (b, std::fs::metadata(file).and_then(|m| m.modified()).ok()),
            Err(e) => {
                eprintln!("voipbin-tokend: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let text = std::str::from_utf8(&bytes).ok();
    let Some((_, claims)) = text.and_then(token::find_in) else {
        return inspect_key(file, text.unwrap_or_default(), json);
    };
    let now = crate::now();
    // A token without expiry lives 7 days from when it was obtained; for a
    // file that is its modification time, for stdin it is unknown.
    let expires_at = claims
        .expires_at
        .or_else(|| mtime.map(|m| Validity::new(claims, token::from_system_time(m)).expires_at));
    let remaining = expires_at.map(|e| (e - now).whole_seconds());
    if json {
        let value = serde_json::json!({
            "file": file.display().to_string(),
            "expires_at": expires_at.map(token::rfc3339),
            "issued_at": claims.issued_at.map(token::rfc3339),
            "expiry_from_claims": claims.expires_at.is_some(),
            "remaining_seconds": remaining,
            "expired": remaining.map(|r| r <= 0),
        });
        println!("{value}");
    } else {
        println!("file:       {}", file.display());
        match (expires_at, remaining) {
            (Some(e), Some(r)) => {
                let how = if claims.expires_at.is_some() {
                    ""
                } else {
                    " (no expiry claim: 7 days from the file's time)"
                };
                println!("expires at: {}{how}", token::rfc3339(e));
                if r > 0 {
                    println!(
                        "remaining:  {}",
                        humantime::format_duration(std::time::Duration::from_secs(r as u64))
                    );
                } else {
                    println!(
                        "remaining:  none, EXPIRED {} ago",
                        humantime::format_duration(std::time::Duration::from_secs((-r) as u64))
                    );
                }
            }
            _ => println!("expires at: unknown (no expiry claim; VoIPBIN tokens live 7 days from login)"),
        }
        if let Some(iat) = claims.issued_at {
            println!("issued at:  {}", token::rfc3339(iat));
        }
    }
    ExitCode::SUCCESS
}
