//! Footprint benchmark: measures the real release binary from outside.
//!
//! `cargo bench --bench footprint` builds `target/release/voipbin-tokend`
//! (if missing or stale), starts the stand-in API in this process on
//! loopback, runs the daemon as a child process against it in temp dirs,
//! and reads everything from outside: `/proc/<pid>/status` for memory and
//! threads, the process CPU clock (`clock_getcpuclockid`, nanoseconds, dead
//! threads included) and `/proc/<pid>/stat` ticks for CPU, file appearance
//! for latencies, and the stand-in's request log for when logins arrived.
//!
//! It prints one table (figure, target, measured, pass/miss) and exits 0
//! whatever the figures are; only an error (the daemon does not start, a
//! file never appears within its timeout, ...) exits non-zero.
//!
//! `FOOTPRINT=full` (or the argument `--full`) runs longer windows (idle
//! 5 min, renewals 1 min) and more repetitions; the default quick mode takes
//! about three minutes. The quick idle window is a whole minute, not less: the
//! daemon re-checks its wall-clock deadlines once a minute, so a shorter
//! window extrapolated to a minute either misses that wake-up or multiplies it.
//!
//! `FOOTPRINT_ONLY=idle,start,reload,many,renewal,exec,size` runs some
//! sections only (`rotation`: the key rotations of `renewal` alone);
//! `FOOTPRINT_BIN=PATH` measures another build of the binary (no
//! `cargo build` then); `FOOTPRINT_BIG_RUNS=N` repeats the 1000-credential
//! start N times and `FOOTPRINT_RENEW_SECS=N` sets the window of renewals
//! and rotations (to compare two builds on a noisy machine, alternate them).
//! The key rotations and the 1000-credential start are measured in the
//! temp dir and, when that is a disk, on tmpfs (`/dev/shm`) too: the
//! daemon's own cost apart from the disk's. The daemon inherits the
//! environment, so for example `SSL_CERT_FILE` reaches it.
//!
//! Here: the knobs, the run and the binary's build. `scenarios` holds the
//! sections (`exec` the exec-mode one), `measure` reads the daemon from outside, `fixtures` sets up
//! the stand-in and the config, `report` prints the table, `floor` does a
//! rotation's file work alone (the platform's cost under the daemon's).

mod exec;
mod fixtures;
mod floor;
mod measure;
mod report;
mod scenarios;

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::report::{Row, Table};
use crate::scenarios::{idle, many, reload, renewal, start};

type Res<T> = Result<T, Box<dyn Error>>;

const BIN: &str = env!("CARGO_BIN_EXE_voipbin-tokend");
const PASSWORD: &str = "bench-password";
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
const MIB: f64 = 1024.0 * 1024.0;
/// Wait after the first token before measuring idle: tokio's blocking
/// threads (used for file writes) exit after 10 s without work.
const IDLE_SETTLE: Duration = Duration::from_secs(11);

/// Durations and repetitions of one run.
struct Mode {
    name: &'static str,
    /// Repetitions of each latency.
    runs: usize,
    /// Repetitions of the 1000-credential start.
    big_runs: usize,
    /// Idle CPU window.
    idle: Duration,
    /// Window of fast renewals for CPU per renewal, and of rotations for
    /// the exec section.
    renew: Duration,
}

impl Mode {
    fn from_env() -> Mode {
        let full =
            std::env::var("FOOTPRINT").is_ok_and(|v| v == "full") || std::env::args().any(|a| a == "--full");
        if full {
            Mode {
                name: "full",
                runs: 15,
                big_runs: 5,
                idle: Duration::from_secs(300),
                renew: Duration::from_secs(60),
            }
        } else {
            Mode {
                name: "quick",
                runs: 9,
                big_runs: 3,
                idle: Duration::from_secs(60),
                renew: Duration::from_secs(20),
            }
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("footprint: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let mut mode = Mode::from_env();
    if let Some(n) = std::env::var("FOOTPRINT_BIG_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        mode.big_runs = n;
    }
    if let Some(secs) = std::env::var("FOOTPRINT_RENEW_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        mode.renew = Duration::from_secs(secs);
    }
    let bin = match std::env::var_os("FOOTPRINT_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            build_release()?;
            PathBuf::from(BIN)
        }
    };
    let only = std::env::var("FOOTPRINT_ONLY").ok();
    let wanted = |section: &str| only.as_deref().is_none_or(|o| o.split(',').any(|s| s == section));
    let started = Instant::now();
    eprintln!("footprint: {} mode, binary {}", mode.name, bin.display());
    let mut rows = Vec::new();
    if wanted("idle") {
        rows.extend(idle(&mode, &bin)?);
    }
    if wanted("start") {
        rows.extend(start(&mode, &bin)?);
    }
    if wanted("reload") {
        rows.extend(reload(&mode, &bin)?);
    }
    if wanted("renewal") {
        rows.extend(renewal(&mode, &bin)?);
    } else if wanted("rotation") {
        rows.extend(scenarios::rotations(&mode, &bin)?);
    }
    if wanted("exec") {
        rows.extend(exec::exec(&mode, &bin)?);
    }
    // Last: it makes and deletes thousands of files, which on ext4
    // without a journal makes every file the next sections make dearer.
    if wanted("many") {
        rows.extend(many(&mode, &bin)?);
    }
    if wanted("size") {
        let size = fs::metadata(&bin)?.len() as f64 / MIB;
        rows.push(
            Row::new("release binary size (stripped)", "< 10 MiB")
                .measured(format!("{size:.2} MiB"))
                .pass(size < 10.0),
        );
    }
    Table { rows }.print(&mode, started.elapsed());
    Ok(())
}

/// `cargo build --release` of the binary, so the figures are those of the
/// shipped profile (a no-op when it is fresh).
fn build_release() -> Res<()> {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--bin", "voipbin-tokend"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()?;
    if !status.success() {
        return Err(format!("cargo build --release failed: {status}").into());
    }
    if !Path::new(BIN).is_file() {
        return Err(format!("{BIN} is missing after the build").into());
    }
    Ok(())
}
