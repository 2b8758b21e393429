//! Guards of the cheapest footprint regressions (not timing tests): the
//! release profile the figures are measured with, and how many threads
//! an idle daemon keeps.

use std::time::Duration;

use crate::support::*;

/// The `[profile.release]` of Cargo.toml, which the .deb, the static
/// binary and the image ship.
#[test]
fn the_release_profile_keeps_its_size_settings() {
    let manifest: toml::Value = toml::from_str(include_str!("../../Cargo.toml")).unwrap();
    let release = &manifest["profile"]["release"];
    assert_eq!(release["opt-level"].as_str(), Some("z"), "optimized for size");
    assert_eq!(release["strip"].as_bool(), Some(true), "symbols stripped");
    assert_eq!(release["panic"].as_str(), Some("abort"), "no unwinding tables");
    assert_eq!(release["lto"].as_str(), Some("fat"), "whole-program LTO");
    assert_eq!(release["codegen-units"].as_integer(), Some(1));
    // The proxy's request path stays fast.
    for hot in ["hyper", "tokio", "http", "bytes"] {
        assert_eq!(
            release["package"][hot]["opt-level"].as_integer(),
            Some(3),
            "{hot} at opt-level 3"
        );
    }
}

fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

#[test]
fn an_idle_daemon_keeps_three_threads_and_a_proxy_adds_one_per_core() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    raw_config(&s, &t, "");
    let d = daemon_with(&t, "info", &[]);
    wait_file(&t.path("main.token"), WAIT, || d.log());
    // The runtime's thread, the signal thread and the config watcher's;
    // the blocking pool's threads (file writes) end once idle.
    let idle = voipbin_tokend_testkit::poll(Duration::from_secs(20), Duration::from_millis(200), || {
        threads(d.pid()) <= 3
    });
    assert!(idle.is_some(), "{} threads when idle", threads(d.pid()));
    drop(d);

    let t = TestDir::new();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    t.write_config(
        &s.base_url(),
        &format!(
            "{}[[proxy]]\nlisten = \"{addr}\"\ncredential = \"main\"\n",
            cred("main", USER, "password", "", &output("main.token", "raw"))
        ),
    );
    let d = daemon_with(&t, "info", &[]);
    wait_file(&t.path("main.token"), WAIT, || d.log());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    let idle = voipbin_tokend_testkit::poll(Duration::from_secs(20), Duration::from_millis(200), || {
        threads(d.pid()) <= 3 + cores
    });
    assert!(
        idle.is_some(),
        "{} threads when idle with a proxy ({cores} workers)",
        threads(d.pid())
    );
}

/// The daemon's TCP connections to `port` (ESTABLISHED), from its socket
/// fds and `/proc/net/tcp`.
fn connections_to(pid: i32, port: u16) -> usize {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // remote address, state (01 established), inode
            f.len() > 9
                && f[2]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
                && f[3] == "01"
                && inodes.iter().any(|i| i == f[9])
        })
        .count()
}

#[test]
fn an_idle_daemon_keeps_no_connection_to_the_api_open() {
    // The next request is hours or days away: the connection of a login
    // is closed within seconds (5 s unused), not held for the pool's old
    // 30 s (its reaper woke the daemon twice after every renewal).
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    raw_config(&s, &t, "");
    let d = daemon_with(&t, "info", &[]);
    wait_file(&t.path("main.token"), WAIT, || d.log());
    let port = s.addr().port();
    assert_eq!(
        connections_to(d.pid(), port),
        1,
        "the login's connection is kept a moment"
    );
    let closed = voipbin_tokend_testkit::poll(Duration::from_secs(25), Duration::from_millis(200), || {
        connections_to(d.pid(), port) == 0
    });
    assert!(
        closed.is_some(),
        "a connection to the API still open 25 s after the login\n{}",
        d.log()
    );
}
