//! The command line: clap definitions and dispatch; each command lives in
//! the module named after it (`run` and `once` in `run`).

/// `println!` for a command's output: a closed pipe (`status | head -1`)
/// ends the command quietly with 141, as SIGPIPE would, not with a panic.
macro_rules! say {
    () => {
        say!("")
    };
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(141);
        }
    }};
}

mod beside;
mod check;
mod demo;
mod exec;
mod inspect;
mod load;
mod run;
pub mod runtime;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;
use crate::logging::{self, LogFormat};

const ABOUT: &str = "Keeps VoIPBIN API tokens fresh on disk.

Logs in to the VoIPBIN API, reads the token's expiry, logs in again well \
before it, and writes each fresh token atomically to files (raw, env, shell, \
JSON or a template) that other programs read.";

const EXAMPLES: &str = "Examples:
  voipbin-tokend demo                          see it work against a local stand-in API
  voipbin-tokend check -c /etc/voipbin-tokend/config.toml
  voipbin-tokend run                           the daemon (systemd, sidecar)
  voipbin-tokend exec -- voipbin-mcp           the daemon plus a program that reads its key from the environment
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
    /// Run COMMAND as a child with the secrets in its environment; restart it when they change.
    #[command(after_help = exec::AFTER_HELP)]
    Exec(exec::ExecArgs),
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
    Demo(demo::DemoArgs),
    /// For packaging tests only (hidden): serve the stand-in API until SIGTERM/SIGINT.
    #[command(hide = true)]
    Standin(demo::StandinArgs),
}

/// Parses the command line, runs the command, maps the result to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::Run(c) => run::run(&c.config),
        Command::Exec(args) => exec::exec(args),
        Command::Once { config, force } => run::once(&config.config, force),
        Command::Check(c) => check::check(&c.config),
        Command::Inspect { json, file } => inspect::inspect(&file, json),
        Command::Status { config, json } => match load::load_for(&config.config, crate::config::Use::Exec) {
            Ok(c) => status::command(&c.state_dir, json),
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
                Err(e) => load::fatal(e),
            }
        }
        Command::Demo(args) => demo::main(args),
        Command::Standin(args) => demo::standin(args),
    }
}
