//! The config watcher: an edit by rename or in place, a ConfigMap `..data`
//! swap, a burst of edits debounced, an idle daemon that does not reread, and
//! a replaced config directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{WAIT, cred, reloads, replace_config, wait_token};
use crate::support::*;

/// A Kubernetes ConfigMap volume: `cm/config.toml -> ..data/config.toml`,
/// `cm/..data -> ..<timestamp>`, updated by the kubelet's atomic writer.
struct ConfigMap {
    dir: PathBuf,
    current: String,
    version: usize,
}

impl ConfigMap {
    fn new(dir: PathBuf, text: &str) -> ConfigMap {
        std::fs::create_dir(&dir).unwrap();
        let mut cm = ConfigMap {
            dir,
            current: String::new(),
            version: 0,
        };
        let ts = cm.write_version(text);
        std::os::unix::fs::symlink(&ts, cm.dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/config.toml", cm.dir.join("config.toml")).unwrap();
        cm.current = ts;
        cm
    }

    fn write_version(&mut self, text: &str) -> String {
        self.version += 1;
        let ts = format!(
            "..2026_11_27_10_{:02}_00.{:09}",
            self.version,
            123_456_789 + self.version
        );
        std::fs::create_dir(self.dir.join(&ts)).unwrap();
        std::fs::write(self.dir.join(&ts).join("config.toml"), text).unwrap();
        ts
    }

    /// What the kubelet does: new timestamped dir, `..data_tmp` symlink to
    /// it, rename `..data_tmp` over `..data`, remove the old dir.
    fn update(&mut self, text: &str) {
        let ts = self.write_version(text);
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        std::fs::remove_dir_all(self.dir.join(&self.current)).unwrap();
        self.current = ts;
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
}

fn abs(t: &TestDir, name: &str) -> String {
    t.path(name).display().to_string()
}

#[test]
fn edit_by_rename_is_picked_up_without_a_login() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    t.write_config(&base, &credential("main", &output("a.token", "raw")));
    let d = t.daemon();
    let tok = wait_token(&t, "a.token", &d);

    let two = output("a.token", "raw") + &output("b.token", "env");
    replace_config(&t, &config_text(&base, &credential("main", &two)));
    d.wait_log("config reloaded", 1, WAIT);
    let b = wait_file(&t.path("b.token"), WAIT, || d.log());
    assert!(b.starts_with("VOIPBIN_TOKEN="), "{b}");
    assert_eq!(token_in(&b), Some(tok.clone()));
    assert_eq!(t.read("a.token").as_deref(), Some(tok.as_str()));
    assert_eq!(s.login_requests(), 1);
    // The write-then-rename burst is one reload.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(reloads(&d), 1, "{}", d.log());
    assert!(d.log().contains("added=0 changed=1 removed=0"), "{}", d.log());
}

#[test]
fn edit_in_place_is_picked_up_without_a_login() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    t.write_config(&base, &credential("main", &output("a.token", "raw")));
    let d = t.daemon();
    let tok = wait_token(&t, "a.token", &d);

    // std::fs::write truncates and writes the same file (same inode).
    let two = output("a.token", "raw") + &output("b.token", "json");
    t.write_config(&base, &credential("main", &two));
    d.wait_log("config reloaded", 1, WAIT);
    let b = wait_file(&t.path("b.token"), WAIT, || d.log());
    assert_eq!(token_in(&b), Some(tok));
    assert_eq!(s.login_requests(), 1);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(reloads(&d), 1, "{}", d.log());
}

#[test]
fn configmap_data_symlink_swap_is_picked_up_every_time() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    let rest = |outs: &[(&str, &str)]| {
        let outputs: String = outs.iter().map(|(p, f)| output(&abs(&t, p), f)).collect();
        config_text(&base, &cred("main", USER, &abs(&t, "password"), "", &outputs))
    };
    let mut cm = ConfigMap::new(t.path("cm"), &rest(&[("a.token", "raw")]));
    let cfg = cm.config_path();
    let d = Daemon::spawn(t.command(&["run", "-c", cfg.to_str().unwrap()]));
    let tok = wait_token(&t, "a.token", &d);

    // First swap.
    cm.update(&rest(&[("a.token", "raw"), ("b.token", "env")]));
    let b = wait_file(&t.path("b.token"), WAIT, || d.log());
    assert_eq!(token_in(&b), Some(tok.clone()));
    d.wait_log("config reloaded", 1, WAIT);

    // A second swap still works: the watch did not die with the first
    // timestamped dir (which the kubelet removed).
    cm.update(&rest(&[
        ("a.token", "raw"),
        ("b.token", "env"),
        ("c.token", "shell"),
    ]));
    let c = wait_file(&t.path("c.token"), WAIT, || d.log());
    assert!(c.starts_with("export VOIPBIN_TOKEN='"), "{c}");
    assert_eq!(token_in(&c), Some(tok.clone()));
    d.wait_log("config reloaded", 2, WAIT);

    assert_eq!(s.login_requests(), 1);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(reloads(&d), 2, "one reload per swap\n{}", d.log());
    assert_eq!(t.read("a.token").as_deref(), Some(tok.as_str()));
}

#[test]
fn burst_of_edits_is_debounced_into_one_reload_of_the_last_version() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    t.write_config(&base, &credential("main", &output("a.token", "raw")));
    let d = t.daemon();
    let tok = wait_token(&t, "a.token", &d);

    let mut last_write = Instant::now();
    for i in 0..6 {
        let outs = output("a.token", "raw") + &output(&format!("burst{i}.token"), "raw");
        if i % 2 == 0 {
            t.write_config(&base, &credential("main", &outs));
        } else {
            replace_config(&t, &config_text(&base, &credential("main", &outs)));
        }
        last_write = Instant::now();
        std::thread::sleep(Duration::from_millis(40));
    }
    wait_file(&t.path("burst5.token"), WAIT, || d.log());
    let after_last = last_write.elapsed();
    eprintln!("debounced burst: last edit -> new output on disk in {after_last:?}");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(reloads(&d), 1, "{}", d.log());
    for i in 0..5 {
        assert!(
            !t.path(&format!("burst{i}.token")).exists(),
            "burst{i}: an intermediate version was applied\n{}",
            d.log()
        );
    }
    assert_eq!(t.read("burst5.token"), Some(tok));
    assert_eq!(s.login_requests(), 1);
    // Debounce is about 300 ms; allow for a busy machine.
    assert!(after_last < Duration::from_secs(5), "{after_last:?}");
}

#[test]

fn idle_daemon_does_not_keep_rereading_its_config() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    t.write_config(&base, &credential("main", &output("a.token", "raw")));
    let d = t.daemon();
    wait_token(&t, "a.token", &d);
    // One edit, one reload; then quiet.
    replace_config(
        &t,
        &config_text(&base, &credential("main", &output("b.token", "raw"))),
    );
    d.wait_log("config reloaded", 1, WAIT);
    std::thread::sleep(Duration::from_millis(700));
    let before = d.log().matches("touched but unchanged").count();
    std::thread::sleep(Duration::from_millis(1500));
    let during = d.log().matches("touched but unchanged").count() - before;
    assert_eq!(
        during,
        0,
        "re-read {during} times in 1.5 s with nothing changed\n{}",
        d.log()
    );
}

/// A config for the credential `main` with every path absolute (the
/// config itself lives in a subdirectory): its state dir and password in
/// `t`, one raw output per name in `outputs`.
fn absolute_config(s: &StandIn, t: &TestDir, outputs: &[&str]) -> String {
    let outs: String = outputs.iter().map(|o| output(&abs(t, o), "raw")).collect();
    config_api(
        &s.base_url(),
        "3s",
        0,
        &format!(
            "[state]\ndir = \"{}\"\n\n{}",
            abs(t, "state"),
            cred("main", USER, &abs(t, "password"), FAST_RETRY, &outs)
        ),
    )
}

#[test]
fn edits_in_a_replaced_config_directory_are_seen() {
    let s = standin(LONG);
    let t = TestDir::new();
    let text = |outputs: &[&str]| absolute_config(&s, &t, outputs);
    let conf = t.path("conf");
    std::fs::create_dir(&conf).unwrap();
    let cfg = conf.join("config.toml");
    std::fs::write(&cfg, text(&["a.token"])).unwrap();
    let d = Daemon::spawn(t.command(&["run", "-c", cfg.to_str().unwrap()]));
    wait_file(&t.path("a.token"), crate::support::WAIT, || d.log());

    // What a config-management tool may do: move the directory away, make
    // a new one, write the config into it.
    std::fs::rename(&conf, t.path("conf.old")).unwrap();
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(&cfg, text(&["a.token", "b.token"])).unwrap();
    wait_file(&t.path("b.token"), crate::support::WAIT, || d.log());

    // And the new directory stays watched: a later edit is seen too.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&cfg, text(&["a.token", "b.token", "c.token"])).unwrap();
    wait_file(&t.path("c.token"), crate::support::WAIT, || d.log());
    assert_eq!(
        s.logins_ok(),
        1,
        "new outputs get the current token without a login"
    );
}

/// How many times the config watcher's thread has been scheduled
/// (`/proc/PID/task/TID/schedstat`, third field): it runs once for each
/// batch of file-system events it is woken for.
fn watcher_runs(pid: i32) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("notify-rs") {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap();
            return stat.split_whitespace().nth(2).unwrap().parse().unwrap();
        }
    }
    panic!("no config watcher thread in /proc/{pid}/task");
}

#[test]
fn files_opened_and_written_beside_the_config_directory_do_not_wake_the_daemon() {
    // The config in conf/; the busy directory is its parent (for
    // /etc/voipbin-tokend, /etc: every program opens files there).
    let s = standin(LONG);
    let t = TestDir::new();
    let conf = t.path("conf");
    std::fs::create_dir(&conf).unwrap();
    let cfg = conf.join("config.toml");
    let text = absolute_config(&s, &t, &["a.token"]);
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::spawn(t.command(&["run", "-c", cfg.to_str().unwrap()]));
    wait_file(&t.path("a.token"), crate::support::WAIT, || d.log());
    std::thread::sleep(Duration::from_millis(300));

    let before = watcher_runs(d.pid());
    for i in 0..200 {
        let p = t.path(&format!("busy-{}", i % 5));
        std::fs::write(&p, format!("{i}")).unwrap();
        let _ = std::fs::read(&p).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(300));
    let woken = watcher_runs(d.pid()) - before;
    assert!(
        woken < 10,
        "the config watcher ran {woken} times for 200 writes and reads beside the config directory\n{}",
        d.log()
    );
    assert_eq!(reloads(&d), 0, "{}", d.log());
}

#[test]
fn configmap_updates_log_one_config_reloaded_and_no_watcher_noise() {
    let s = standin(LONG);
    let t = TestDir::new();
    let text = |o: &str| absolute_config(&s, &t, &[o]);
    // A ConfigMap volume as the kubelet lays it out and updates it.
    let cm = t.path("cm");
    std::fs::create_dir(&cm).unwrap();
    let version = |v: usize, body: String| {
        let ts = format!("..2026_11_29_06_{v:02}_00.000000001");
        std::fs::create_dir(cm.join(&ts)).unwrap();
        std::fs::write(cm.join(&ts).join("config.toml"), body).unwrap();
        ts
    };
    let mut current = version(1, text("a.token"));
    std::os::unix::fs::symlink(&current, cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.toml", cm.join("config.toml")).unwrap();
    let mut cmd = t.command(&["run", "-c", cm.join("config.toml").to_str().unwrap()]);
    cmd.env("RUST_LOG", "info");
    let d = Daemon::spawn(cmd);
    wait_file(&t.path("a.token"), crate::support::WAIT, || d.log());

    for (v, out) in [(2, "a.token"), (3, "b.token"), (4, "b.token")] {
        let ts = version(v, text(out));
        std::os::unix::fs::symlink(&ts, cm.join("..data_tmp")).unwrap();
        std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
        std::fs::remove_dir_all(cm.join(&current)).unwrap();
        current = ts;
        if v == 3 {
            wait_file(&t.path("b.token"), crate::support::WAIT, || d.log());
        }
        // Showing that nothing more is logged: give the watcher time.
        std::thread::sleep(Duration::from_millis(1000));
    }
    let log = d.log();
    assert_eq!(log.matches("config reloaded").count(), 1, "{log}");
    assert!(!log.contains(" WARN "), "{log}");
    assert!(!log.contains("watch"), "{log}");
}
