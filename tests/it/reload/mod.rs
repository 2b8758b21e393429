//! Live reconfiguration: the config watcher (rename, in place, ConfigMap
//! `..data` swap, debounce), SIGHUP, reconciliation of a reloaded config,
//! SIGUSR1 and shutdown, all against the real binary and the stand-in.
//!
//! Every test asserts on the files on disk and on the stand-in's login count.
//! `latency::reload_latency_figures` prints the measured reload latencies
//! (`cargo test --test it reload::latency::reload_latency_figures -- --nocapture`).

mod bad_config;
mod credentials;
mod latency;
mod outputs;
mod shutdown;
mod sighup;
mod sigusr1;
mod watcher;

use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// Generous bound on every wait: the machine may be slow and busy.
const WAIT: Duration = Duration::from_secs(20);

/// A credential with its own username, password file and extra keys.
fn cred(name: &str, username: &str, password_file: &str, extra: &str, outputs: &str) -> String {
    format!(
        "[[credential]]\nname = \"{name}\"\nusername = \"{username}\"\npassword-file = \"{password_file}\"\n{extra}\n\n{outputs}"
    )
}

/// Replaces config.toml as editors do: write config.toml.new, rename it over.
fn replace_config(t: &TestDir, text: &str) {
    let tmp = t.path("config.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, t.config_path()).unwrap();
}

fn reloads(d: &Daemon) -> usize {
    d.log().matches("config reloaded").count()
}

/// Waits for a token in `name`; returns it.
fn wait_token(t: &TestDir, name: &str, d: &Daemon) -> String {
    token_in(&wait_file(&t.path(name), WAIT, || d.log())).expect("a token")
}

/// Waits until `name` holds `expected` as its token.
fn wait_token_is(t: &TestDir, name: &str, expected: &str, d: &Daemon) {
    wait_for(
        WAIT,
        &format!("{name} to hold the expected token"),
        || t.read(name).and_then(|x| token_in(&x)).as_deref() == Some(expected),
        || format!("{name}: {:?}\n{}", t.read(name), d.log()),
    );
}

fn wait_login_requests(s: &StandIn, n: u64, d: &Daemon) {
    wait_for(
        WAIT,
        &format!("{n} login requests"),
        || s.login_requests() >= n,
        || format!("login requests: {}\n{}", s.login_requests(), d.log()),
    );
}

/// Names in the dir that start with '.' (temp files).
fn hidden(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// A config reached through a symlink chain, `config.toml -> hidden/link.toml
/// -> vN/config.toml`. The watcher watches the dir of config.toml and that of
/// the file it resolved to at start (v0); re-pointing hidden/link.toml at a
/// new vN touches neither, so only SIGHUP can notice the change.
struct Chain<'a> {
    t: &'a TestDir,
    version: usize,
}

impl<'a> Chain<'a> {
    fn new(t: &'a TestDir, text: &str) -> Chain<'a> {
        std::fs::create_dir(t.path("hidden")).unwrap();
        std::fs::create_dir(t.path("v0")).unwrap();
        std::fs::write(t.path("v0/config.toml"), text).unwrap();
        std::os::unix::fs::symlink("../v0/config.toml", t.path("hidden/link.toml")).unwrap();
        std::os::unix::fs::symlink("hidden/link.toml", t.config_path()).unwrap();
        Chain { t, version: 0 }
    }

    /// Points the chain at new text, out of the watcher's sight.
    fn switch(&mut self, text: &str) {
        self.version += 1;
        let v = format!("v{}", self.version);
        std::fs::create_dir(self.t.path(&v)).unwrap();
        std::fs::write(self.t.path(&format!("{v}/config.toml")), text).unwrap();
        let tmp = self.t.path("hidden/link.new");
        std::os::unix::fs::symlink(format!("../{v}/config.toml"), &tmp).unwrap();
        std::fs::rename(&tmp, self.t.path("hidden/link.toml")).unwrap();
    }
}
