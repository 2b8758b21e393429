//! voipbin-tokend keeps VoIPBIN API tokens fresh on disk.
//!
//! VoIPBIN hands out a login token (a JWT that lives 7 days) from
//! `POST /auth/login` and has no refresh call. This daemon logs in, reads the
//! expiry out of the token, logs in again well before it, and writes every
//! fresh token atomically to the files that other programs read.
//!
//! # Layout
//! From the top down; a module uses only those below it.
//! - [`cli`]: command-line definitions and dispatch; the commands (`check`,
//!   `inspect`, `status`, `demo`, `once` beside a running daemon) and the one
//!   tokio runtime builder ([`mod@cli::runtime`]).
//! - `daemon`: one task per credential, reload reconciliation, shutdown.
//! - `watch`: the config-file watcher (directory watch, debounced).
//! - [`signals`]: SIGHUP / SIGUSR1 / SIGTERM / SIGINT into one event stream.
//! - `notify`: systemd notifications (a no-op without `NOTIFY_SOCKET`).
//! - `health`: `/healthz`, `/readyz`, `/metrics`.
//! - `credential`: one credential's state machine: reuse, renew, write, retry.
//! - `board`: the status types the daemon, health, `status` and `once` share.
//! - `hooks`: on-change commands and signals after a new token is written.
//! - [`source`]: per kind, how the next secret is obtained ([`source::key`]: access keys).
//! - [`api`]: the VoIPBIN client: one login, its outcome classified; [`api::keys`]:
//!   the access-key client; [`api::budget`]: the login budget all credentials share.
//! - [`state`]: the state directory: its lock, [`state::keys`] (an access-key
//!   credential's current key and pending deletions), [`state::record`] (the
//!   last login: username, server, clock skew), [`state::status`] (the status file).
//! - [`config`]: TOML -> validated [`config::Config`]; every error names the file and key.
//! - `output`: what a file holds (`output::render`) and how it is written (`output::write`).
//! - [`token`]: JWT claims -> expiry (no signature check: the key is the server's).
//! - [`schedule`]: pure policy: when renewal is due, how long to back off.
//! - [`secret`]: password sources and the [`secret::Secret`] type that never prints itself.
//! - `fsread`: reading files safely (never blocking, bounded, regular files only) and resolving paths.
//! - `metrics`: Prometheus metrics.
//! - `logging`: tracing set-up (text or JSON to stderr).
//! - `rlimit`: the open-file limit (raised for the daemon, given back to hooks); the one `unsafe` block.

#![deny(unsafe_code)]

pub mod api;
pub(crate) mod board;
pub mod cli;
pub mod config;
pub(crate) mod credential;
pub(crate) mod daemon;
pub(crate) mod fsread;
pub(crate) mod health;
pub(crate) mod hooks;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod output;
mod rlimit;
pub mod schedule;
pub mod secret;
pub mod signals;
pub mod source;
pub mod state;
pub mod token;
pub(crate) mod watch;

/// Wall-clock "now" in UTC. Token expiries are wall-clock instants, so all
/// scheduling decisions are made against this, never a monotonic clock.
pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
