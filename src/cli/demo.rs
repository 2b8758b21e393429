//! `voipbin-tokend demo`: the real daemon against a local stand-in of the
//! VoIPBIN API, writing into a temporary folder, so a newcomer sees a login
//! token renewed and an access key rotated, side by side, within a minute.
//! (The stand-in's key time scale makes a day of key lifetime last as long
//! as a demo token.)
//!
//! Nothing is special-cased: the demo writes an ordinary config file and
//! password file into the folder and runs [`crate::daemon::run`] on it, so
//! editing that config reloads it, SIGUSR1 renews, Ctrl-C stops.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use voipbin_tokend_standin::{StandIn, StandInOptions};

const DEMO_USER: &str = "demo@example.com";
const DEMO_PASSWORD: &str = "demo-password";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Lifetime of the stand-in's tokens.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
    /// Folder to write into (kept afterwards). Default: a new temporary folder, removed on exit.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Use a --dir that is not empty, overwriting the demo's files in it.
    #[arg(long, requires = "dir")]
    pub force: bool,
}

/// Refuses a `--dir` that already holds something, unless `force`: the demo
/// writes config.toml, a password file and outputs, and would silently
/// overwrite a real config of the same name.
fn refuse_non_empty(dir: &std::path::Path, force: bool) -> Result<(), String> {
    let Ok(mut entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    if force || entries.next().is_none() {
        return Ok(());
    }
    Err(format!(
        "{} is not empty; the demo writes config.toml, demo.password and main.* there. \
         Give an empty or new folder, or add --force to overwrite",
        dir.display()
    ))
}

/// `voipbin-tokend standin` (hidden, for the packaging tests): the demo's
/// stand-in API alone, so a static binary or a container image built from
/// this tree can be run with `once`/`run` against it, the way a user would,
/// without a test harness. Not part of the interface users rely on.
#[derive(Debug, clap::Args)]
pub struct StandinArgs {
    /// Loopback address to listen on (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Lifetime of the stand-in's tokens.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
}

/// Serves the stand-in with the demo's account (`demo@example.com`,
/// password `demo-password`) until SIGTERM or SIGINT. Prints its base URL
/// as the only line on stdout (the reader may close the pipe after it);
/// refuses a non-loopback address, since the
/// stand-in hands tokens to anyone with a well-known password.
pub fn standin(args: StandinArgs) -> ExitCode {
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "voipbin-tokend: standin: --listen {} is not a loopback address",
            args.listen
        );
        return ExitCode::from(2);
    }
    let rt = match super::runtime::start() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voipbin-tokend: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let standin = StandIn::start_in_runtime(StandInOptions {
            lifetime: args.lifetime,
            users: vec![(DEMO_USER.to_string(), DEMO_PASSWORD.to_string())],
            bind: Some(args.listen),
            ..StandInOptions::default()
        })
        .await?;
        println!("{}", standin.base_url());
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok::<(), std::io::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voipbin-tokend: standin: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn main(args: DemoArgs) -> ExitCode {
    if let Some(d) = &args.dir
        && let Err(e) = refuse_non_empty(d, args.force)
    {
        eprintln!("voipbin-tokend: {e}");
        return ExitCode::FAILURE;
    }
    let (dir, _temp) = match &args.dir {
        Some(d) => match std::fs::create_dir_all(d) {
            Ok(()) => (d.clone(), None),
            Err(e) => {
                eprintln!("voipbin-tokend: cannot create {}: {e}", d.display());
                return ExitCode::FAILURE;
            }
        },
        None => match tempfile::Builder::new().prefix("voipbin-tokend-demo-").tempdir() {
            Ok(t) => (t.path().to_path_buf(), Some(t)),
            Err(e) => {
                eprintln!("voipbin-tokend: cannot create a temporary folder: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let rt = match super::runtime::start() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voipbin-tokend: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let standin = StandIn::start_in_runtime(StandInOptions {
            lifetime: args.lifetime,
            users: vec![(DEMO_USER.to_string(), DEMO_PASSWORD.to_string())],
            ..StandInOptions::default()
        })
        .await
        .map_err(|e| format!("cannot start the stand-in API: {e}"))?;
        // A day of key lifetime lasts as long as a token here.
        standin.set_key_time_scale(args.lifetime.as_secs_f64() / 86_400.0);
        let (_, bootstrap) = standin.create_key("made on the admin page (demo)", 365 * 86_400);
        let config_path = write_files(&dir, &standin.base_url(), &bootstrap)
            .map_err(|e| format!("cannot write into {}: {e}", dir.display()))?;
        let config = Config::load(&config_path).map_err(|e| e.to_string())?;
        println!("voipbin-tokend demo");
        println!(
            "  stand-in VoIPBIN API: {} (tokens live {})",
            standin.base_url(),
            humantime::format_duration(args.lifetime)
        );
        println!("  writing into:         {}", dir.display());
        println!(
            "  config:               {} (edit it: the daemon reloads)",
            config_path.display()
        );
        println!("  login token 'main':   main.token (raw), main.env (env), main.json (json)");
        println!(
            "  access key 'mcp':     mcp.env (env); first key from mcp.bootstrap.key, replaced at once;"
        );
        println!(
            "                        keys live a 'day' ({}) here; a replaced key is deleted 5s after",
            humantime::format_duration(args.lifetime)
        );
        println!("  try: voipbin-tokend inspect {}", dir.join("main.env").display());
        println!("       voipbin-tokend status -c {}", config_path.display());
        println!(
            "  a line is logged at each renewal (about every {}); Ctrl-C stops.",
            humantime::format_duration(Duration::from_secs(
                (args.lifetime.as_secs_f64() * 0.8).round() as u64
            ))
        );
        println!();
        crate::daemon::run(config, std::future::pending())
            .await
            .map_err(|e| e.to_string())?;
        println!("logins served by the stand-in: {}", standin.logins_ok());
        let keys = standin.keys();
        println!(
            "access keys made: {}, of which deleted: {}",
            keys.len(),
            keys.iter().filter(|k| k.tm_delete.is_some()).count()
        );
        Ok::<(), String>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voipbin-tokend: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the demo's password file and config; returns the config's path.
fn write_files(dir: &std::path::Path, base_url: &str, bootstrap_key: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    for (name, secret) in [
        ("demo.password", DEMO_PASSWORD),
        ("mcp.bootstrap.key", bootstrap_key),
    ] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(name))?;
        std::io::Write::write_all(&mut f, format!("{secret}\n").as_bytes())?;
    }
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"# Written by `voipbin-tokend demo`. Edit it while the demo runs: it reloads.
[api]
base-url = "{base_url}"
timeout = "5s"

[state]
dir = "state"   # status.json for `voipbin-tokend status -c this-file`

[[credential]]
name = "main"
username = "{DEMO_USER}"
password-file = "demo.password"
renew-at = 0.8
jitter = 0.05
retry-min = "1s"
retry-max = "5s"

[[credential.output]]
path = "main.token"
format = "raw"

[[credential.output]]
path = "main.env"
format = "env"

[[credential.output]]
path = "main.json"
format = "json"

# An access key: rotated by making its successor with the key itself.
[[credential]]
name = "mcp"
kind = "access-key"
bootstrap-key-file = "mcp.bootstrap.key"
lifetime = "1d"          # the shortest the server allows; a demo "day" is short
grace = "5s"
renew-at = 0.8
retry-min = "1s"
retry-max = "5s"

[[credential.output]]
path = "mcp.env"
format = "env"          # VOIPBIN_API_KEY=vb_... and VOIPBIN_API_KEY_EXPIRES_AT=...
"#
        ),
    )?;
    Ok(config)
}
