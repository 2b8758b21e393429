//! Reading the daemon from outside: the child and its `/proc/<pid>`
//! (memory, threads, context switches), its CPU clock and ticks, file
//! appearance, and the server's own login answer time.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;
use voipbin_tokend_testkit::{Daemon, poll};

use crate::fixtures::BenchDir;
use crate::{PASSWORD, Res};

/// The daemon (the tests' [`Daemon`], log captured) and when it was spawned.
pub(crate) struct Bench {
    daemon: Daemon,
    pid: Pid,
    pub(crate) started: Instant,
}

impl Bench {
    /// `voipbin-tokend run -c config.toml` in `dir`.
    pub(crate) fn spawn(bin: &Path, dir: &BenchDir) -> Res<Bench> {
        Bench::spawn_command(bin, dir, "run", &[])
    }

    /// `voipbin-tokend exec -c config.toml ARGS...` in `dir` (ARGS: the
    /// options, `--`, the child and its arguments).
    pub(crate) fn spawn_exec(bin: &Path, dir: &BenchDir, args: &[&OsStr]) -> Res<Bench> {
        Bench::spawn_command(bin, dir, "exec", args)
    }

    fn spawn_command(bin: &Path, dir: &BenchDir, command: &str, args: &[&OsStr]) -> Res<Bench> {
        let mut cmd = Command::new(bin);
        cmd.arg(command)
            .arg("-c")
            .arg(dir.path("config.toml"))
            .args(args)
            .current_dir(dir.dir.path())
            .env(
                "RUST_LOG",
                std::env::var("FOOTPRINT_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
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

    /// The daemon's log so far (stderr).
    pub(crate) fn log(&self) -> String {
        self.daemon.log()
    }

    pub(crate) fn proc(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{name}", self.pid))
    }

    /// A number from `/proc/<pid>/status` (kB for memory lines).
    pub(crate) fn status_value(&self, key: &str) -> Res<u64> {
        let text = fs::read_to_string(self.proc("status"))?;
        status_field(&text, key).ok_or_else(|| format!("no {key} in /proc/{}/status", self.pid).into())
    }

    pub(crate) fn memory(&self) -> Res<Memory> {
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
    pub(crate) fn cpu_ns(&self) -> Res<u64> {
        let clock = ClockId::pid_cpu_clock_id(self.pid)?;
        let t = clock_gettime(clock)?;
        Ok(u64::try_from(t.tv_sec())? * 1_000_000_000 + u64::try_from(t.tv_nsec())?)
    }

    /// utime + stime from `/proc/<pid>/stat`, in clock ticks.
    pub(crate) fn ticks(&self) -> Res<u64> {
        let (user, system) = self.user_system_ticks()?;
        Ok(user + system)
    }

    /// utime and stime from `/proc/<pid>/stat`, in clock ticks.
    pub(crate) fn user_system_ticks(&self) -> Res<(u64, u64)> {
        let text = fs::read_to_string(self.proc("stat"))?;
        let rest = text.rsplit_once(')').ok_or("bad stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the comm: state is field 3, utime 14, stime 15 (1-based).
        let utime: u64 = fields.get(11).ok_or("bad stat")?.parse()?;
        let stime: u64 = fields.get(12).ok_or("bad stat")?.parse()?;
        Ok((utime, stime))
    }

    /// Context switches (voluntary + involuntary) of the threads alive
    /// now, from `/proc/<pid>/task/*/status`: each is a thread that slept
    /// and was woken, the kernel's main cost in a rotation. A thread that
    /// has exited is not counted, so compare two readings only while the
    /// same threads live (tokio's blocking threads outlive 2 s without work).
    pub(crate) fn context_switches(&self) -> Res<u64> {
        let mut total = 0;
        for task in fs::read_dir(self.proc("task"))? {
            let Ok(text) = fs::read_to_string(task?.path().join("status")) else {
                continue; // exited meanwhile
            };
            for key in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
                total += status_field(&text, key).unwrap_or(0);
            }
        }
        Ok(total)
    }

    pub(crate) fn signal(&self, sig: Signal) -> Res<()> {
        signal::kill(self.pid, sig)?;
        Ok(())
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub(crate) fn stop(mut self) -> Res<()> {
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
pub(crate) struct Memory {
    pub(crate) rss: f64,
    hwm: f64,
    anon: f64,
    file: f64,
}

impl Memory {
    pub(crate) fn max(self, other: Memory) -> Memory {
        if other.rss > self.rss { other } else { self }
    }

    pub(crate) fn show(&self) -> String {
        format!(
            "{:.1} MiB (anonymous {:.1}, file-backed {:.1}; peak {:.1})",
            self.rss, self.anon, self.file, self.hwm
        )
    }
}

/// Context switches (voluntary + involuntary) per thread, kept across
/// samples so that a thread that exits still counts up to its last sample.
#[derive(Default)]
pub(crate) struct Switches(HashMap<u64, u64>);

impl Switches {
    pub(crate) fn sample(&mut self, daemon: &Bench) -> Res<()> {
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

    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

pub(crate) fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub(crate) fn clock_ticks() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

/// Polls (1 ms) until `path` exists; the instant it was seen.
pub(crate) fn appeared(path: &Path, timeout: Duration) -> Res<Instant> {
    poll(timeout, Duration::from_millis(1), || path.exists())
        .ok_or_else(|| format!("{} did not appear within {timeout:?}", path.display()).into())
}

/// Output files in `dir`, not counting temp files (`.NAME.tmp-…`).
pub(crate) fn count_outputs(dir: &Path) -> Res<usize> {
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
pub(crate) fn raw_login(addr: SocketAddr, username: &str) -> Res<Duration> {
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

/// The file system `path` is on, from `/proc/self/mounts` (the longest
/// mount point above it): its type, and for ext4 whether it has a journal.
/// Without one, ext4 skips every inode freed in the last 5 s (5 min while
/// the inode table's block is dirty) when it makes a file, so a run soon
/// after many deletions (an earlier run's temp dirs, a test suite) pays
/// for them at every file the daemon creates.
pub(crate) fn fs_of(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let Some((device, fstype)) = mounts
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 2 && path.starts_with(f[1])).then(|| (f[1].len(), f[0], f[2]))
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, device, fstype)| (device, fstype))
    else {
        return "file system unknown".into();
    };
    if fstype != "ext4" {
        return fstype.to_owned();
    }
    let name = device.rsplit('/').next().unwrap_or(device);
    match fs::read_to_string(format!("/sys/fs/ext4/{name}/journal_task")) {
        Ok(task) if task.trim() == "<none>" => "ext4 without a journal".into(),
        Ok(_) => "ext4 with a journal".into(),
        Err(_) => "ext4".into(),
    }
}
