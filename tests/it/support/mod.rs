//! Test harness: spawns the real binary in a temp dir, captures its stderr,
//! waits with timeouts, and on failure prints what the daemon said.
mod fixtures;
mod keys;

pub use fixtures::*;
pub use keys::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use voipbin_tokend_standin::{ClaimStyle, Fault, StandIn, StandInOptions};

pub const BIN: &str = env!("CARGO_BIN_EXE_voipbin-tokend");
pub const USER: &str = "agent@example.com";
pub const PASSWORD: &str = "secret-password";

/// A stand-in with one user and the given token lifetime.
pub fn standin(lifetime: Duration) -> StandIn {
    StandIn::start(StandInOptions {
        lifetime,
        users: vec![(USER.to_string(), PASSWORD.to_string())],
        ..StandInOptions::default()
    })
    .expect("stand-in starts")
}

/// A temp dir holding a config, a password file and outputs.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("tokend-test-")
            .tempdir()
            .expect("tempdir");
        let t = TestDir { dir };
        t.write_password(PASSWORD);
        t
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("config.toml")
    }

    pub fn write_password(&self, password: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path("password");
        std::fs::write(&p, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// Writes config.toml: an [api] section for `base_url` (fast timeouts)
    /// followed by `rest` (credentials and outputs, relative paths allowed).
    pub fn write_config(&self, base_url: &str, rest: &str) {
        std::fs::write(self.config_path(), config_text(base_url, rest)).unwrap();
    }

    pub fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.path(name)).ok()
    }

    /// Names in the dir, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "voipbin_tokend=debug")
            .env_remove("VOIPBIN_TOKEND_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        c
    }

    /// Runs a command to completion (with a timeout).
    pub fn run(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        wait_output(child, Duration::from_secs(30), args)
    }

    /// Starts `run -c config.toml`.
    pub fn daemon(&self) -> Daemon {
        let cfg = self.config_path();
        Daemon::spawn(self.command(&["run", "-c", cfg.to_str().unwrap()]))
    }
}

/// The standard test config: loopback API, short timeouts, then `rest`.
pub fn config_text(base_url: &str, rest: &str) -> String {
    format!(
        "[api]\nbase-url = \"{base_url}\"\ntimeout = \"3s\"\nmax-logins-per-second = 0\n\n\
         [state]\ndir = \"state\"\n\n{rest}"
    )
}

/// One credential named `name` reading ./password, fast retries, with `outputs` appended.
pub fn credential(name: &str, outputs: &str) -> String {
    format!(
        "[[credential]]\nname = \"{name}\"\nusername = \"{USER}\"\npassword-file = \"password\"\n\
         retry-min = \"100ms\"\nretry-max = \"500ms\"\n\n{outputs}"
    )
}

/// An output section.
pub fn output(path: &str, format: &str) -> String {
    format!("[[credential.output]]\npath = \"{path}\"\nformat = \"{format}\"\n\n")
}

fn wait_output(mut child: Child, timeout: Duration, what: &[&str]) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what:?} did not finish in {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

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
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool, context: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n--- context ---\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `path` exists and holds a token; returns the file's text.
pub fn wait_file(path: &Path, timeout: Duration, context: impl Fn() -> String) -> String {
    let mut text = String::new();
    wait_for(
        timeout,
        &format!("a token in {}", path.display()),
        || {
            text = std::fs::read_to_string(path).unwrap_or_default();
            text.contains("eyJ")
        },
        context,
    );
    text
}

/// The token in a file of any format.
pub fn token_in(text: &str) -> Option<String> {
    voipbin_tokend::token::find_in(text).map(|(t, _)| t.to_string())
}
