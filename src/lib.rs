//! voipbin-tokend keeps VoIPBIN API tokens fresh on disk.
//!
//! VoIPBIN hands out a login token (a JWT that lives 7 days) from
//! `POST /auth/login` and has no refresh call. This daemon logs in, reads the
//! expiry out of the token, logs in again well before it, and writes every
//! fresh token atomically to the files that other programs read.
//!
//! # Layout
//! - [`beside`]: `once` beside a running daemon: asks it (SIGUSR1) and waits.
//! - [`cli`]: command-line definitions and dispatch to the commands.
//! - [`config`]: TOML -> validated [`config::Config`]; every error names the file and key.
//! - [`fsread`]: reading files safely (never blocking, bounded, regular files only) and resolving paths.
//! - [`secret`]: password sources and the [`secret::Secret`] type that never prints itself.
//! - [`api`]: the VoIPBIN client: one login, its outcome classified.
//! - [`keyapi`]: the access-key client: create, list, look up, delete keys.
//! - [`keystate`]: an access-key credential's state file (current key, pending deletions).
//! - [`token`]: JWT claims -> expiry (no signature check: the key is the server's).
//! - [`schedule`]: pure policy: when renewal is due, how long to back off.
//! - [`output`]: what a file holds ([`output::render`]) and how it is written ([`output::write`]).
//! - [`credential`]: one credential's state machine: reuse, renew, write, retry.
//! - [`hooks`]: on-change commands and signals after a new token is written.
//! - [`metrics`]: Prometheus metrics.
//! - [`daemon`]: one task per credential, reload reconciliation, shutdown.
//! - [`watch`]: the config-file watcher (directory watch, debounced).
//! - [`source`]: per kind, how the next secret is obtained ([`source::key`]: access keys).
//! - [`signals`]: SIGHUP / SIGUSR1 / SIGTERM / SIGINT into one event stream.
//! - [`notify`]: systemd notifications (a no-op without `NOTIFY_SOCKET`).
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`status`]: the status file and the `status` command.
//! - [`record`]: per-credential record of the last login (username, server, clock skew).
//! - [`standin`]: a local stand-in of the VoIPBIN API for `demo`, tests and benchmarks.
//! - [`demo`]: the `demo` command.
//! - [`logging`]: tracing set-up (text or JSON to stderr).

pub mod api;
pub mod beside;
pub mod cli;
pub mod config;
pub mod credential;
pub mod daemon;
pub mod demo;
pub mod fsread;
pub mod health;
pub mod hooks;
pub mod keyapi;
pub mod keystate;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod record;
pub mod schedule;
pub mod secret;
pub mod signals;
pub mod source;
pub use voipbin_tokend_standin as standin; // TEMP(merge)
pub mod status;
pub mod token;
pub mod watch;

/// Wall-clock "now" in UTC. Token expiries are wall-clock instants, so all
/// scheduling decisions are made against this, never a monotonic clock.
pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
