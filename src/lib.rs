//! voipbin-tokend keeps VoIPBIN API tokens fresh on disk.
//!
//! VoIPBIN hands out a login token (a JWT that lives 7 days) from
//! `POST /auth/login` and has no refresh call. This daemon logs in, reads the
//! expiry out of the token, logs in again well before it, and writes every
//! fresh token atomically to the files that other programs read.
//!
//! # Layout
//! From the top floor down; a module uses only those below it (no import
//! circles, no import that runs back up; ARCHITECTURE.md has the picture).
//! - [`cli`]: command-line definitions and dispatch; the commands (`run`,
//!   `once`, `check`, `inspect`, `status`, `demo`, `once` beside a running
//!   daemon) and the one tokio runtime builder ([`mod@cli::runtime`]).
//! - `daemon`: one task per credential, reload reconciliation, shutdown.
//! - `credential`: one credential's state machine (reuse, renew, write,
//!   retry), its task driver and its outputs.
//! - [`source`]: per kind, how the next secret is obtained ([`source::login`],
//!   [`source::key`]); `health`: `/healthz`, `/readyz`, `/metrics`.
//! - `board`: the status types the daemon, health, `status` and `once` share,
//!   and the status file (`board::file`).
//! - [`state`]: the state directory: its lock, [`state::keys`] (an access-key
//!   credential's current key, pending deletions, identity) and
//!   [`state::record`] (the last login: username, server, clock skew).
//! - [`api`]: the VoIPBIN client: one login, its outcome classified;
//!   [`api::keys`]: the access-key client; [`api::budget`]: the login budget
//!   all credentials share.
//! - [`schedule`]: pure policy: when renewal is due, how long to back off;
//!   `hooks`: on-change commands and signals after a new secret is written.
//! - [`config`]: TOML -> validated [`config::Config`]; every error names the file and key.
//! - `output`: what a file holds (`output::render`, `output::Format`) and how
//!   it is written (`output::write`).
//! - [`secret`]: password sources and the [`secret::Secret`] type that never
//!   prints itself; `watch`: the config-file watcher (directory watch, debounced).
//! - The ground: [`token`] (JWT claims -> expiry; no signature check: the key
//!   is the server's), `fsread` (reading files safely: never blocking,
//!   bounded, regular files only), [`signals`] (SIGHUP / SIGUSR1 / SIGTERM /
//!   SIGINT into one event stream), `notify` (systemd notifications),
//!   `metrics` (Prometheus), `logging` (tracing set-up), `rlimit` (the
//!   open-file limit), `malloc` (free pages back to the system after the
//!   start-up burst) and [`now`]. `unsafe` is allowed in two places only:
//!   `process` (`pre_exec`) and `malloc` (`malloc_trim`).
//!
//! The stand-in API used by `demo`, the tests and the benchmark is its own
//! crate (`crates/standin`); the tests' and the benchmark's shared support
//! is `crates/testkit`.

#![deny(unsafe_code)]

pub mod api;
pub(crate) mod board;
pub mod cli;
pub mod config;
pub(crate) mod credential;
pub(crate) mod daemon;
pub(crate) mod exec;
pub(crate) mod export;
pub(crate) mod fsread;
pub(crate) mod health;
pub(crate) mod hooks;
pub(crate) mod logging;
mod malloc;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod output;
mod process;
pub(crate) mod proxy;
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
