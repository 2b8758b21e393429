//! Test harness: spawns the real binary in a temp dir, captures its stderr,
//! waits with timeouts, and on failure prints what the daemon said. The
//! daemon child, waiting and temp dirs come from `voipbin-tokend-testkit`
//! (crates/testkit), which the footprint benchmark uses too.

mod fixtures;
mod keys;

pub use fixtures::*;
pub use keys::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use voipbin_tokend_standin::{ClaimStyle, Fault, StandIn, StandInOptions};
pub use voipbin_tokend_testkit::{Daemon, temp_dir, wait_for};

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
        let dir = temp_dir("tokend-test-");
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
