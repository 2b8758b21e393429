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
//! about two minutes. The quick idle window is a whole minute, not less: the
//! daemon re-checks its wall-clock deadlines once a minute, so a shorter
//! window extrapolated to a minute either misses that wake-up or multiplies it.
//!
//! `FOOTPRINT_ONLY=idle,start,reload,many,renewal,size` runs some sections
//! only; `FOOTPRINT_BIN=PATH` measures another build of the binary (no
//! `cargo build` then). The daemon inherits the environment, so for example
//! `SSL_CERT_FILE` reaches it.

use std::collections::HashMap;
use std::error::Error;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{self, Signal};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;
use voipbin_tokend_standin::{StandIn, StandInOptions};
use voipbin_tokend_testkit::{Daemon, poll, temp_dir};

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
    /// Window of fast renewals for CPU per renewal.
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
    let mode = Mode::from_env();
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
    if wanted("many") {
        rows.extend(many(&mode, &bin)?);
    }
    if wanted("renewal") {
        rows.extend(renewal(&mode, &bin)?);
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

/// A stand-in without rate limit, issuing tokens of `lifetime`, with
/// `users` accounts.
fn standin(lifetime: Duration, users: usize) -> Res<StandIn> {
    Ok(StandIn::start(StandInOptions {
        rate_limit: None,
        lifetime,
        users: (0..users).map(user).collect(),
        ..StandInOptions::default()
    })?)
}

/// Start to first token on disk, against the server's own answer time.
fn start(mode: &Mode, bin: &Path) -> Res<Vec<Row>> {
    let week = standin(WEEK, 1)?;
    let answer = Stats::of(
        (0..(mode.runs * 3))
            .map(|_| raw_login(week.addr(), &user(0).0))
            .collect::<Res<Vec<_>>>()?,
    );
    eprintln!("footprint: start to first token ({} runs)", mode.runs);
    let mut to_token = Vec::new();
    let mut to_request = Vec::new();
    let mut request_to_token = Vec::new();
    for _ in 0..mode.runs {
        let dir = BenchDir::new(
            &week.base_url(),
            &[credential(0, &[("main.token", "raw")], 0.8, 0.05)],
        )?;
        let before = week.requests().len();
        let wall = SystemTime::now();
        let daemon = Bench::spawn(bin, &dir)?;
        let appeared = appeared(&dir.path("out/main.token"), Duration::from_secs(10))?;
        let elapsed = appeared - daemon.started;
        to_token.push(elapsed);
        if let Some(record) = week.requests().get(before) {
            let arrived = record.at.duration_since(wall).unwrap_or_default();
            to_request.push(arrived);
            request_to_token.push(elapsed.saturating_sub(arrived));
        }
        daemon.stop()?;
    }
    let to_token = Stats::of(to_token);
    let to_request = Stats::of(to_request);
    let request_to_token = Stats::of(request_to_token);
    let overhead = to_token.median.saturating_sub(answer.median);
    Ok(vec![
        Row::new("start to first token on disk", "< 20 ms + server answer")
            .measured(format!(
                "{} (server answer {}; spawn to login request {}, login request to file on disk {})",
                to_token.ms(),
                answer.ms(),
                to_request.ms(),
                request_to_token.ms()
            ))
            .pass(overhead < Duration::from_millis(20)),
    ])
}

/// Resident memory, threads, CPU and wake-ups of an idle daemon (1
/// credential, token fresh).
fn idle(mode: &Mode, bin: &Path) -> Res<Vec<Row>> {
    let week = standin(WEEK, 1)?;
    eprintln!(
        "footprint: idle for {:?} (after {:?} to settle)",
        mode.idle, IDLE_SETTLE
    );
    let dir = BenchDir::new(
        &week.base_url(),
        &[credential(0, &[("main.token", "raw")], 0.8, 0.05)],
    )?;
    let daemon = Bench::spawn(bin, &dir)?;
    appeared(&dir.path("out/main.token"), Duration::from_secs(10))?;
    let threads_start = daemon.status_value("Threads:")?;
    std::thread::sleep(IDLE_SETTLE);
    let logins_before = week.logins_ok();
    let mut switches = Switches::default();
    switches.sample(&daemon)?;
    let switches0 = switches.total();
    let (cpu0, ticks0) = (daemon.cpu_ns()?, daemon.ticks()?);
    let idle_end = Instant::now() + mode.idle;
    while Instant::now() < idle_end {
        std::thread::sleep(Duration::from_secs(1).min(idle_end.saturating_duration_since(Instant::now())));
        switches.sample(&daemon)?;
    }
    let (cpu1, ticks1) = (daemon.cpu_ns()?, daemon.ticks()?);
    if week.logins_ok() != logins_before {
        return Err("the daemon logged in while its token was fresh".into());
    }
    let per_minute = 60.0 / mode.idle.as_secs_f64();
    let idle_cpu_ms = (cpu1 - cpu0) as f64 / 1e6 * per_minute;
    let idle_ticks_ms = (ticks1 - ticks0) as f64 * 1000.0 / clock_ticks() as f64 * per_minute;
    let idle_wakeups = (switches.total() - switches0) as f64 * per_minute;
    let memory = daemon.memory()?;
    let threads = daemon.status_value("Threads:")?;
    daemon.stop()?;
    Ok(vec![
        Row::new("resident memory, 1 credential, idle", "< 8 MiB")
            .measured(format!(
                "{} ({threads} threads idle, {threads_start} just after start)",
                memory.show()
            ))
            .pass(memory.rss < 8.0),
        Row::new("CPU while idle (token fresh)", "< 1 ms/min; no busy polling")
            .measured(format!(
                "{idle_cpu_ms:.3} ms/min ({idle_ticks_ms:.0} ms/min in clock ticks); \
                 {idle_wakeups:.1} context switches/min; over {} s",
                mode.idle.as_secs()
            ))
            .pass(idle_cpu_ms < 1.0 && idle_wakeups < 60.0),
    ])
}

/// SIGHUP to a new output on disk, and a config edit to the same.
fn reload(mode: &Mode, bin: &Path) -> Res<Vec<Row>> {
    let week = standin(WEEK, 1)?;
    let dir = BenchDir::new(
        &week.base_url(),
        &[credential(0, &[("main.token", "raw")], 0.8, 0.05)],
    )?;
    let daemon = Bench::spawn(bin, &dir)?;
    appeared(&dir.path("out/main.token"), Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));

    eprintln!("footprint: SIGHUP to new output ({} runs)", mode.runs);
    let mut hup = Vec::new();
    for i in 0..mode.runs {
        let name = format!("hup-{i}.token");
        dir.write_config(&[credential(0, &[("main.token", "raw"), (&name, "raw")], 0.8, 0.05)])?;
        let t0 = Instant::now();
        daemon.signal(Signal::SIGHUP)?;
        hup.push(appeared(&dir.path(&format!("out/{name}")), Duration::from_secs(5))? - t0);
        // Let the watcher's (debounced, by then no-op) event for this write pass.
        std::thread::sleep(Duration::from_millis(600));
    }
    let hup = Stats::of(hup);

    eprintln!("footprint: config edit to reload ({} runs)", mode.runs);
    let mut edit = Vec::new();
    for i in 0..mode.runs {
        let name = format!("edit-{i}.token");
        let t0 = Instant::now();
        dir.write_config(&[credential(0, &[("main.token", "raw"), (&name, "raw")], 0.8, 0.05)])?;
        edit.push(appeared(&dir.path(&format!("out/{name}")), Duration::from_secs(5))? - t0);
        std::thread::sleep(Duration::from_millis(200));
    }
    let edit = Stats::of(edit);
    daemon.stop()?;
    Ok(vec![
        Row::new("SIGHUP to a new output on disk", "< 50 ms")
            .measured(hup.ms())
            .pass(hup.median < Duration::from_millis(50)),
        Row::new("config edit to reload (debounce 300 ms included)", "< 600 ms")
            .measured(edit.ms())
            .pass(edit.median < Duration::from_millis(600)),
    ])
}

/// CPU and time per renewal: 1 s tokens renewed at half-life, 3 outputs;
/// then the same for an access key whose "day" lasts 1 s at the stand-in.
fn renewal(mode: &Mode, bin: &Path) -> Res<Vec<Row>> {
    Ok(vec![
        renewals_of(mode, bin, false)?,
        renewals_of(mode, bin, true)?,
    ])
}

/// One credential renewed (or rotated) over and over for `mode.renew`:
/// CPU per renewal from the process clock, and the time from the request
/// reaching the server to the new secret in the env output (the output is
/// polled every millisecond from here).
fn renewals_of(mode: &Mode, bin: &Path, key: bool) -> Res<Row> {
    let what = if key { "key rotations" } else { "renewals" };
    eprintln!("footprint: {what} for {:?}", mode.renew);
    let fast = standin(Duration::from_secs(1), 1)?;
    let outputs = [("main.token", "raw"), ("main.env", "env"), ("main.json", "json")];
    let cred = if key {
        fast.set_key_time_scale(1.0 / 86_400.0);
        let (_, bootstrap) = fast.create_key("bootstrap", 365 * 86_400);
        let mut c = String::from(
            "[[credential]]\nname = \"main\"\nkind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\n\
             lifetime = \"1d\"\ngrace = \"1s\"\nrenew-at = 0.5\njitter = 0.0\n",
        );
        for (path, format) in outputs {
            c.push_str(&format!(
                "\n[[credential.output]]\npath = \"out/{path}\"\nformat = \"{format}\"\n"
            ));
        }
        (c, Some(bootstrap))
    } else {
        (credential(0, &outputs, 0.5, 0.0), None)
    };
    let dir = BenchDir::new(&fast.base_url(), &[cred.0])?;
    if let Some(bootstrap) = cred.1 {
        fs::write(dir.path("boot.key"), format!("{bootstrap}\n"))?;
        fs::set_permissions(
            dir.path("boot.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
    }
    let daemon = Bench::spawn(bin, &dir)?;
    let env = dir.path("out/main.env");
    appeared(&dir.path("out/main.json"), Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(1200));
    let request_path = if key { "/v1.0/accesskeys" } else { "/auth/login" };
    let count = || {
        fast.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == request_path && r.status == 200)
            .count()
    };
    let (cpu0, ticks0, n0) = (daemon.cpu_ns()?, daemon.user_system_ticks()?, count());
    let changes = watch_changes(&env, mode.renew);
    let (cpu1, ticks1, n1) = (daemon.cpu_ns()?, daemon.user_system_ticks()?, count());
    let memory = daemon.memory()?;
    daemon.stop()?;
    let renewals = n1 - n0;
    if renewals == 0 {
        return Err(format!("no {what} happened with 1 s lifetimes").into());
    }
    // Each change of the output, against the last request before it.
    let requests: Vec<SystemTime> = fast
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == request_path)
        .map(|r| r.at)
        .collect();
    let latencies: Vec<Duration> = changes
        .iter()
        .filter_map(|c| {
            let at = requests.iter().filter(|r| *r <= c).max()?;
            c.duration_since(*at).ok()
        })
        .collect();
    let latency = Stats::of(latencies);
    let per_renewal_ms = (cpu1 - cpu0) as f64 / 1e6 / renewals as f64;
    let tick_ms = |t: u64| t as f64 * 1000.0 / clock_ticks() as f64 / renewals as f64;
    let (user_ms, system_ms) = (tick_ms(ticks1.0 - ticks0.0), tick_ms(ticks1.1 - ticks0.1));
    let figure = if key {
        "CPU and time per key rotation (create + save state + 3 outputs; deletions included)"
    } else {
        "CPU and time per renewal (login + decode + 3 outputs written and fsynced)"
    };
    Ok(Row::new(figure, "report")
        .measured(format!(
            "{per_renewal_ms:.2} ms CPU (clock ticks: user {user_ms:.1} ms + system {system_ms:.1} ms); \
             request to output {}; {renewals} {what} in {} s; resident {:.1} MiB",
            latency.ms(),
            mode.renew.as_secs(),
            memory.rss
        ))
        .report())
}

/// When `path`'s content changed during `window` (polled every 1 ms).
fn watch_changes(path: &Path, window: Duration) -> Vec<SystemTime> {
    let end = Instant::now() + window;
    let mut last = fs::read(path).unwrap_or_default();
    let mut changes = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
        let now = fs::read(path).unwrap_or_default();
        if now != last && !now.is_empty() {
            changes.push(SystemTime::now());
            last = now;
        }
    }
    changes
}

/// 1000 credentials, one output each, no login rate limit.
fn many(mode: &Mode, bin: &Path) -> Res<Vec<Row>> {
    const MANY: usize = 1000;
    eprintln!("footprint: {MANY} credentials ({} runs)", mode.big_runs);
    let server = standin(WEEK, MANY)?;
    let creds: Vec<String> = (0..MANY)
        .map(|i| credential(i, &[(&format!("c{i}.token"), "raw")], 0.8, 0.05))
        .collect();
    let mut all_on_disk = Vec::new();
    let mut memory = Memory::default();
    let mut threads = 0;
    for _ in 0..mode.big_runs {
        let dir = BenchDir::new(&server.base_url(), &creds)?;
        let daemon = Bench::spawn(bin, &dir)?;
        let out = dir.path("out");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if count_outputs(&out)? >= MANY {
                all_on_disk.push(daemon.started.elapsed());
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{MANY} outputs did not appear within 60 s").into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(500));
        memory = memory.max(daemon.memory()?);
        threads = threads.max(daemon.status_value("Threads:")?);
        daemon.stop()?;
    }
    let all_on_disk = Stats::of(all_on_disk);
    Ok(vec![
        Row::new(
            "1000 credentials, 1 output each, `max-logins-per-second = 0`",
            "all on disk < 5 s; resident < 40 MiB",
        )
        .measured(format!(
            "{}; resident {} ({threads} threads)",
            all_on_disk.s(),
            memory.show()
        ))
        .pass(all_on_disk.median < Duration::from_secs(5) && memory.rss < 40.0),
    ])
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

fn user(i: usize) -> (String, String) {
    (format!("agent{i}@example.com"), PASSWORD.to_owned())
}

/// One `[[credential]]` block with its outputs under `out/`.
fn credential(i: usize, outputs: &[(&str, &str)], renew_at: f64, jitter: f64) -> String {
    let name = if i == 0 {
        "main".to_owned()
    } else {
        format!("c{i}")
    };
    let mut s = format!(
        "[[credential]]\nname = \"{name}\"\nusername = \"{}\"\npassword-file = \"password\"\n\
         renew-at = {renew_at}\njitter = {jitter}\n",
        user(i).0
    );
    for (path, format) in outputs {
        s.push_str(&format!(
            "\n[[credential.output]]\npath = \"out/{path}\"\nformat = \"{format}\"\n"
        ));
    }
    s.push('\n');
    s
}

/// A temp dir with `config.toml`, `password`, `out/` and `state/`.
struct BenchDir {
    dir: tempfile::TempDir,
    base_url: String,
}

impl BenchDir {
    fn new(base_url: &str, credentials: &[String]) -> Res<BenchDir> {
        let dir = temp_dir("tokend-footprint-");
        fs::create_dir(dir.path().join("out"))?;
        fs::create_dir(dir.path().join("state"))?;
        let password = dir.path().join("password");
        fs::write(&password, format!("{PASSWORD}\n"))?;
        fs::set_permissions(&password, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let d = BenchDir {
            dir,
            base_url: base_url.to_owned(),
        };
        d.write_config(credentials)?;
        Ok(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces config.toml atomically, like an editor does.
    fn write_config(&self, credentials: &[String]) -> Res<()> {
        let mut text = format!(
            "[api]\nbase-url = \"{}\"\ntimeout = \"10s\"\nmax-logins-per-second = 0\n\n\
             [state]\ndir = \"state\"\n\n",
            self.base_url
        );
        for c in credentials {
            text.push_str(c);
        }
        let tmp = self.path("next-config.tmp");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.path("config.toml"))?;
        Ok(())
    }
}

/// The daemon (the tests' [`Daemon`], log captured) and when it was spawned.
struct Bench {
    daemon: Daemon,
    pid: Pid,
    started: Instant,
}

impl Bench {
    fn spawn(bin: &Path, dir: &BenchDir) -> Res<Bench> {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("-c")
            .arg(dir.path("config.toml"))
            .current_dir(dir.dir.path())
            .env("RUST_LOG", "info")
            .env_remove("VOIPBIN_TOKEND_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("STATE_DIRECTORY")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null());
        let started = Instant::now();
        let daemon = Daemon::spawn(cmd);
        let pid = Pid::from_raw(daemon.pid());
        Ok(Bench { daemon, pid, started })
    }

    fn proc(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{name}", self.pid))
    }

    /// A number from `/proc/<pid>/status` (kB for memory lines).
    fn status_value(&self, key: &str) -> Res<u64> {
        let text = fs::read_to_string(self.proc("status"))?;
        status_field(&text, key).ok_or_else(|| format!("no {key} in /proc/{}/status", self.pid).into())
    }

    fn memory(&self) -> Res<Memory> {
        let text = fs::read_to_string(self.proc("status"))?;
        let mib = |key: &str| {
            status_field(&text, key)
                .map(|kb| kb as f64 / 1024.0)
                .ok_or_else(|| format!("no {key} in /proc/{}/status", self.pid))
        };
        Ok(Memory {
            rss: mib("VmRSS:")?,
            hwm: mib("VmHWM:")?,
            anon: mib("RssAnon:")?,
            file: mib("RssFile:")?,
        })
    }

    /// Process CPU time (user + system, all threads, dead ones included), ns.
    fn cpu_ns(&self) -> Res<u64> {
        let clock = ClockId::pid_cpu_clock_id(self.pid)?;
        let t = clock_gettime(clock)?;
        Ok(u64::try_from(t.tv_sec())? * 1_000_000_000 + u64::try_from(t.tv_nsec())?)
    }

    /// utime + stime from `/proc/<pid>/stat`, in clock ticks.
    fn ticks(&self) -> Res<u64> {
        let (user, system) = self.user_system_ticks()?;
        Ok(user + system)
    }

    /// utime and stime from `/proc/<pid>/stat`, in clock ticks.
    fn user_system_ticks(&self) -> Res<(u64, u64)> {
        let text = fs::read_to_string(self.proc("stat"))?;
        let rest = text.rsplit_once(')').ok_or("bad stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the comm: state is field 3, utime 14, stime 15 (1-based).
        let utime: u64 = fields.get(11).ok_or("bad stat")?.parse()?;
        let stime: u64 = fields.get(12).ok_or("bad stat")?.parse()?;
        Ok((utime, stime))
    }

    fn signal(&self, sig: Signal) -> Res<()> {
        signal::kill(self.pid, sig)?;
        Ok(())
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    fn stop(mut self) -> Res<()> {
        self.signal(Signal::SIGTERM)?;
        let (status, _) = self.daemon.wait_exit(Duration::from_secs(10));
        if !status.success() {
            return Err(format!("the daemon exited with {status}").into());
        }
        Ok(())
    }
}

/// Resident memory from `/proc/<pid>/status`, MiB.
#[derive(Default, Clone, Copy)]
struct Memory {
    rss: f64,
    hwm: f64,
    anon: f64,
    file: f64,
}

impl Memory {
    fn max(self, other: Memory) -> Memory {
        if other.rss > self.rss { other } else { self }
    }

    fn show(&self) -> String {
        format!(
            "{:.1} MiB (anonymous {:.1}, file-backed {:.1}; peak {:.1})",
            self.rss, self.anon, self.file, self.hwm
        )
    }
}

/// Context switches (voluntary + involuntary) per thread, kept across
/// samples so that a thread that exits still counts up to its last sample.
#[derive(Default)]
struct Switches(HashMap<u64, u64>);

impl Switches {
    fn sample(&mut self, daemon: &Bench) -> Res<()> {
        for task in fs::read_dir(daemon.proc("task"))? {
            let task = task?;
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let Ok(text) = fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            let n = status_field(&text, "voluntary_ctxt_switches:").unwrap_or(0)
                + status_field(&text, "nonvoluntary_ctxt_switches:").unwrap_or(0);
            self.0.insert(tid, n);
        }
        Ok(())
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn clock_ticks() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

/// Polls (1 ms) until `path` exists; the instant it was seen.
fn appeared(path: &Path, timeout: Duration) -> Res<Instant> {
    poll(timeout, Duration::from_millis(1), || path.exists())
        .ok_or_else(|| format!("{} did not appear within {timeout:?}", path.display()).into())
}

/// Output files in `dir`, not counting temp files (`.NAME.tmp-…`).
fn count_outputs(dir: &Path) -> Res<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        if !entry?.file_name().to_string_lossy().starts_with('.') {
            n += 1;
        }
    }
    Ok(n)
}

/// One login over a fresh loopback connection, as the daemon's first one
/// is: the server's answer time.
fn raw_login(addr: SocketAddr, username: &str) -> Res<Duration> {
    let body = format!(r#"{{"username":"{username}","password":"{PASSWORD}"}}"#);
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "POST /auth/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let elapsed = started.elapsed();
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err("the stand-in did not answer 200 to a login".into());
    }
    Ok(elapsed)
}

/// Median and spread of repeated timings.
struct Stats {
    median: Duration,
    min: Duration,
    max: Duration,
    n: usize,
}

impl Stats {
    fn of(mut v: Vec<Duration>) -> Stats {
        v.sort();
        let n = v.len();
        if n == 0 {
            return Stats {
                median: Duration::ZERO,
                min: Duration::ZERO,
                max: Duration::ZERO,
                n,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        };
        Stats {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }

    fn ms(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "{:.1} ms ({:.1}–{:.1}, n={})",
            ms(self.median),
            ms(self.min),
            ms(self.max),
            self.n
        )
    }

    fn s(&self) -> String {
        format!(
            "{:.2} s ({:.2}–{:.2}, n={})",
            self.median.as_secs_f64(),
            self.min.as_secs_f64(),
            self.max.as_secs_f64(),
            self.n
        )
    }
}

struct Row {
    figure: &'static str,
    target: &'static str,
    measured: String,
    result: &'static str,
}

impl Row {
    fn new(figure: &'static str, target: &'static str) -> Row {
        Row {
            figure,
            target,
            measured: String::new(),
            result: "",
        }
    }

    fn measured(mut self, m: String) -> Row {
        self.measured = m;
        self
    }

    fn pass(mut self, ok: bool) -> Row {
        self.result = if ok { "pass" } else { "MISS" };
        self
    }

    fn report(mut self) -> Row {
        self.result = "(report)";
        self
    }
}

struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn print(&self, mode: &Mode, took: Duration) {
        let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!();
        println!(
            "voipbin-tokend footprint ({} mode, {:.0} s; {} CPUs, load {}; loopback stand-in)",
            mode.name,
            took.as_secs_f64(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load.join(" ")
        );
        println!();
        println!("| figure | target | measured (median (min–max)) | result |");
        println!("| --- | --- | --- | --- |");
        for r in &self.rows {
            println!("| {} | {} | {} | {} |", r.figure, r.target, r.measured, r.result);
        }
        let missed: Vec<&str> = self
            .rows
            .iter()
            .filter(|r| r.result == "MISS")
            .map(|r| r.figure)
            .collect();
        println!();
        if missed.is_empty() {
            println!("all targets met");
        } else {
            println!("missed: {}", missed.join("; "));
        }
    }
}
