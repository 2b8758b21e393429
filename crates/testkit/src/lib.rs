//! What voipbin-tokend's integration tests (`tests/it`) and its benchmark
//! (`benches/footprint/`) share: the daemon as a child process with its
//! log captured, waiting with a timeout, and temp dirs. The binary's path is
//! the caller's (`env!("CARGO_BIN_EXE_voipbin-tokend")` exists only there).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running daemon. Killed on drop; its stderr is printed if the test failed.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    pub exited: Option<ExitStatus>,
}

impl Daemon {
    pub fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the daemon");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Daemon {
            child,
            log,
            reader: Some(reader),
            exited: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("send signal");
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) {
        wait_for(
            timeout,
            &format!("{count}x {needle:?} in the log"),
            || self.log().matches(needle).count() >= count,
            || self.log(),
        );
    }

    /// Waits for the process to exit; returns its status and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return (status, start.elapsed());
            }
            if start.elapsed() > timeout {
                panic!(
                    "daemon did not exit within {timeout:?}\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}--- end ---", self.log());
        }
    }
}

/// Polls `cond` every 10 ms; panics after `timeout` with `context()`.
pub fn wait_for(timeout: Duration, what: &str, cond: impl FnMut() -> bool, context: impl Fn() -> String) {
    if poll(timeout, Duration::from_millis(10), cond).is_none() {
        panic!(
            "timed out after {timeout:?} waiting for {what}\n--- context ---\n{}",
            context()
        );
    }
}

/// Polls `cond` every `every` until it holds (the instant it was seen to
/// hold) or `timeout` has passed (`None`). The benchmark polls every
/// millisecond to time how fast a file appears; the tests every 10 ms.
pub fn poll(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> Option<Instant> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(Instant::now());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// A fresh temp dir named `PREFIXxxxxxx`, removed when dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}
