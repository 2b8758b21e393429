//! The health port under load: a crowded `/healthz` port cannot starve
//! renewals, at a low soft open-file limit or at the usual 1024.

use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;

// ---------------------------------------------------------------------------
// A crowded health port does not starve renewals of file descriptors.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status code of `GET path`, or None if there was no answer in 2 s.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    text.split(' ').nth(1)?.parse().ok()
}

/// Runs the daemon with open-file limits `soft`/`hard`, holds `crowd` idle
/// connections to its health port, and asks for a renewal: it must succeed
/// promptly; once the crowd leaves, /healthz answers.
fn renewal_survives_a_crowded_health_port(soft: u64, hard: u64, crowd: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use std::os::unix::process::CommandExt;
    // This test process needs room for the crowd.
    let (_, own_hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        own_hard >= crowd as u64 + 200,
        "hard open-file limit {own_hard} too low for the test"
    );
    setrlimit(Resource::RLIMIT_NOFILE, own_hard, own_hard).unwrap();

    let s = standin(LONG);
    let t = TestDir::new();
    let port = free_port();
    t.write_config(
        &s.base_url(),
        &format!(
            "[health]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
            credential("main", &output("main.token", "raw"))
        ),
    );
    let cfg = t.config_path();
    let mut cmd = t.command(&["run", "-c", cfg.to_str().unwrap()]);
    // SAFETY: only setrlimit, a plain system call, between fork and exec.
    unsafe {
        cmd.pre_exec(move || setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(std::io::Error::from));
    }
    let mut d = Daemon::spawn(cmd);
    let first = wait_file(&t.path("main.token"), WAIT, || d.log());
    wait_for(
        WAIT,
        "/healthz 200",
        || http_status(port, "/healthz") == Some(200),
        || d.log(),
    );
    assert_eq!(
        open_file_limits(d.pid()),
        (hard, hard),
        "the daemon raises its soft open-file limit to the hard one"
    );

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut crowd_conns = Vec::new();
    for _ in 0..crowd {
        if let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            crowd_conns.push(c);
        }
    }
    assert!(
        crowd_conns.len() * 10 >= crowd * 9,
        "only {} connections opened",
        crowd_conns.len()
    );
    // Let the daemon accept what it will.
    std::thread::sleep(Duration::from_millis(500));

    d.signal(Signal::SIGUSR1);
    // Well inside the 5 s the health server gives an idle connection: the
    // renewal does not wait for the crowd to time out.
    wait_for(
        Duration::from_secs(4),
        "the renewal despite the crowd",
        || {
            s.logins_ok() >= 2
                && t.read("main.token")
                    .is_some_and(|x| x.contains("eyJ") && x != first)
        },
        || d.log(),
    );
    assert!(!d.log().contains("Too many open files"), "{}", d.log());

    drop(crowd_conns);
    wait_for(
        Duration::from_secs(5),
        "/healthz once the crowd has gone",
        || http_status(port, "/healthz") == Some(200),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
}

#[test]
fn a_crowded_health_port_does_not_starve_renewal_with_a_low_soft_limit() {
    // Soft 256 would be exhausted by the crowd; the daemon raises it to 4096.
    renewal_survives_a_crowded_health_port(256, 4096, 1100);
}

#[test]
fn a_crowded_health_port_does_not_starve_renewal_at_the_usual_1024_limit() {
    // No room to raise: the connection cap alone protects the renewal.
    renewal_survives_a_crowded_health_port(1024, 1024, 1100);
}
