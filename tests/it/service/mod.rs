//! Running as a service: systemd notifications (`NOTIFY_SOCKET`, path and
//! abstract, with the watchdog), `/healthz` `/readyz` `/metrics`, on-change
//! hooks (commands and signals), the `status` command and the CLI's help,
//! completions and man page, all against the real binary and the stand-in.
//!
//! `cargo test --test it service:: -- --nocapture` prints a STATUS= line and a
//! `/metrics` scrape as received.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use nix::sys::signal::Signal;

/// Generous bound on every wait: the machine may be slow and busy.
const WAIT: Duration = Duration::from_secs(20);
// ---------------------------------------------------------------------------
// Helpers.

/// One datagram received on the notify socket.
struct Note {
    at: Instant,
    text: String,
    /// Whether the watched output held a token when the datagram arrived.
    token_on_disk: bool,
}

impl Note {
    fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
}

/// Collects the datagrams sent to a socket standing in for systemd's.
struct Notifications {
    notes: Arc<Mutex<Vec<Note>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Notifications {
    /// Reads `sock` on a thread until dropped; `watched` is the output
    /// file checked for a token at each datagram's arrival.
    fn listen(sock: UnixDatagram, watched: PathBuf) -> Notifications {
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (notes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stopped.load(Ordering::SeqCst) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let at = Instant::now();
                let token_on_disk = std::fs::read_to_string(&watched).is_ok_and(|x| x.contains("eyJ"));
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(Note {
                    at,
                    text,
                    token_on_disk,
                });
            }
        });
        Notifications {
            notes,
            stop,
            thread: Some(thread),
        }
    }

    fn len(&self) -> usize {
        self.notes.lock().unwrap().len()
    }

    fn texts(&self) -> Vec<String> {
        self.notes
            .lock()
            .unwrap()
            .iter()
            .map(|n| n.text.clone())
            .collect()
    }

    /// Index of the first datagram at or after `from` holding the line `line`.
    fn find(&self, from: usize, line: &str) -> Option<usize> {
        let notes = self.notes.lock().unwrap();
        (from..notes.len()).find(|&i| notes[i].has(line))
    }

    /// Waits for a datagram at or after `from` holding the line `line`; its index.
    fn wait(&self, from: usize, line: &str, d: &Daemon) -> usize {
        let mut found = None;
        wait_for(
            WAIT,
            &format!("{line:?} on the notify socket (from datagram {from})"),
            || {
                found = self.find(from, line);
                found.is_some()
            },
            || format!("datagrams: {:?}\n--- daemon log ---\n{}", self.texts(), d.log()),
        );
        found.unwrap()
    }

    /// Arrival times of the datagrams holding `line`.
    fn times(&self, line: &str) -> Vec<Instant> {
        self.notes
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.has(line))
            .map(|n| n.at)
            .collect()
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The most of `times` (sorted) that fall within any one `window`.
fn most_within(times: &[Instant], window: Duration) -> usize {
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| t.duration_since(times[i]) <= window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

/// `run -c config.toml` started through `sh`, which exports its own pid as
/// `WATCHDOG_PID` and then execs the daemon (so the pid is the daemon's),
/// as systemd does.
fn run_with_watchdog_pid(t: &TestDir) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("export WATCHDOG_PID=$$; exec \"$0\" run -c \"$1\"")
        .arg(BIN)
        .arg(t.config_path())
        .current_dir(t.dir.path())
        .env("RUST_LOG", "voipbin_tokend=debug")
        .env_remove("VOIPBIN_TOKEND_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    c
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn health_section(port: u16) -> String {
    format!("[health]\nlisten = \"127.0.0.1:{port}\"\n\n")
}

/// A plain HTTP/1.0 GET on loopback: `(status, body)`, or `None` if nothing answered.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Like [`http_get`], but the server must answer.
fn get(port: u16, path: &str, d: &Daemon) -> (u16, String) {
    http_get(port, path).unwrap_or_else(|| panic!("no answer to GET {path}\n{}", d.log()))
}

/// The value of one series (name with labels, exactly as exposed).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Waits until `/metrics` has `series` at `min` or more; returns the scrape.
fn wait_metric(port: u16, series: &str, min: f64, d: &Daemon) -> String {
    let text = std::cell::RefCell::new(String::new());
    wait_for(
        WAIT,
        &format!("{series} >= {min}"),
        || {
            *text.borrow_mut() = http_get(port, "/metrics").map(|x| x.1).unwrap_or_default();
            metric(&text.borrow(), series).is_some_and(|v| v >= min)
        },
        || format!("last scrape:\n{}\n--- daemon log ---\n{}", text.borrow(), d.log()),
    );
    text.into_inner()
}

/// Waits until `GET path` answers `code`; returns the body.
fn wait_http(port: u16, path: &str, code: u16, d: &Daemon) -> String {
    let last = std::cell::RefCell::new((0, String::new()));
    wait_for(
        WAIT,
        &format!("GET {path} -> {code}"),
        || {
            *last.borrow_mut() = http_get(port, path).unwrap_or_default();
            last.borrow().0 == code
        },
        || {
            format!(
                "last answer: {:?}\n--- daemon log ---\n{}",
                last.borrow(),
                d.log()
            )
        },
    );
    last.into_inner().1
}

/// The expiry (Unix seconds) of the token in `text`.
fn expiry_of(text: &str) -> time::OffsetDateTime {
    voipbin_tokend::token::find_in(text)
        .and_then(|(_, c)| c.expires_at)
        .expect("a token with an expiry")
}

fn lines(t: &TestDir, name: &str) -> Vec<String> {
    t.read(name)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until the current output holds the stand-in's latest token and
/// `logins` logins have succeeded.
fn wait_renewed(s: &StandIn, t: &TestDir, name: &str, logins: u64, d: &Daemon) -> String {
    wait_for(
        WAIT,
        &format!("login #{logins} and its token in {name}"),
        || {
            s.logins_ok() >= logins
                && t.read(name)
                    .is_some_and(|x| token_in(&x) == s.issued_tokens().last().cloned())
        },
        || d.log(),
    );
    token_in(&t.read(name).unwrap()).unwrap()
}

fn stop(d: &mut Daemon) {
    d.signal(Signal::SIGTERM);
    let (status, took) = d.wait_exit(WAIT);
    assert!(status.success(), "exit {status:?}\n{}", d.log());
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} to stop\n{}",
        d.log()
    );
}

fn both(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

// ---------------------------------------------------------------------------
// 1. systemd notifications.

#[test]
fn notify_socket_gets_ready_after_the_token_status_reloading_watchdog_and_stopping() {
    let s = standin(LONG);
    // The first login is slow, so the daemon talks to systemd well before
    // it has a token.
    s.script([Fault::Delay(Duration::from_millis(1500))]);
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let sock_path = t.path("notify.sock");
    let notes = Notifications::listen(UnixDatagram::bind(&sock_path).unwrap(), t.path("main.token"));

    let mut cmd = run_with_watchdog_pid(&t);
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000");
    let mut d = Daemon::spawn(cmd);

    // READY=1, and only once the token is on disk.
    let ready = notes.wait(0, "READY=1", &d);
    {
        let all = notes.notes.lock().unwrap();
        assert!(
            all[ready].token_on_disk,
            "READY=1 arrived before the output held a token: {:?}",
            notes_texts(&all)
        );
        assert!(
            all[..ready]
                .iter()
                .any(|n| n.text.starts_with("STATUS=0/1 fresh")),
            "no STATUS=0/1 fresh before READY=1: {:?}",
            notes_texts(&all)
        );
        assert!(
            all[..ready]
                .iter()
                .any(|n| n.text.starts_with("STATUS=1/1 fresh")),
            "no STATUS=1/1 fresh before READY=1: {:?}",
            notes_texts(&all)
        );
        assert_eq!(
            all.iter().filter(|n| n.has("READY=1")).count(),
            1,
            "READY=1 more than once without a reload: {:?}",
            notes_texts(&all)
        );
    }
    let token = token_in(&t.read("main.token").unwrap()).unwrap();
    assert_eq!(Some(token), s.issued_tokens().last().cloned());
    let status_line = notes
        .texts()
        .into_iter()
        .find(|x| x.starts_with("STATUS=1/1 fresh"))
        .unwrap();
    eprintln!("STATUS line received: {status_line:?}");
    assert!(status_line.contains("next renewal main in"), "{status_line}");

    // WATCHDOG=1 every 100 ms (half of 200 ms): at least 3 within 1.5 s,
    // and still coming.
    let before = notes.times("WATCHDOG=1").len();
    wait_for(
        WAIT,
        "3 more WATCHDOG=1",
        || notes.times("WATCHDOG=1").len() >= before + 3,
        || format!("{:?}\n{}", notes.texts(), d.log()),
    );
    let w = notes.times("WATCHDOG=1");
    assert!(
        most_within(&w, Duration::from_millis(1500)) >= 3,
        "WATCHDOG=1 too sparse: {:?}",
        w.windows(2).map(|p| p[1] - p[0]).collect::<Vec<_>>()
    );

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC= in the same datagram, then READY=1.
    let from = notes.len();
    let t0 = monotonic_usec();
    d.signal(Signal::SIGHUP);
    let reloading = notes.wait(from, "RELOADING=1", &d);
    let t1 = monotonic_usec();
    let text = notes.texts()[reloading].clone();
    let usec: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC= with RELOADING=1: {text:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("MONOTONIC_USEC= not a number ({e}): {text:?}"));
    assert!(
        (t0..=t1).contains(&usec),
        "MONOTONIC_USEC={usec} not between {t0} and {t1} (CLOCK_MONOTONIC around the SIGHUP)"
    );
    notes.wait(reloading + 1, "READY=1", &d);
    d.wait_log("config reloaded", 1, WAIT);

    // SIGTERM: STOPPING=1, then a clean exit.
    let from = notes.len();
    d.signal(Signal::SIGTERM);
    notes.wait(from, "STOPPING=1", &d);
    let (status, _) = d.wait_exit(WAIT);
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert_eq!(
        s.logins_ok(),
        1,
        "a forced reload of an unchanged config logged in"
    );
}

fn notes_texts(all: &[Note]) -> Vec<&str> {
    all.iter().map(|n| n.text.as_str()).collect()
}

#[test]
fn abstract_notify_socket_works_and_a_watchdog_for_another_pid_is_not_fed() {
    use std::os::linux::net::SocketAddrExt;
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let name = format!(
        "voipbin-tokend-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let notes = Notifications::listen(UnixDatagram::bind_addr(&addr).unwrap(), t.path("main.token"));

    let mut cmd = t.command(&["run", "-c", t.config_path().to_str().unwrap()]);
    // The watchdog is meant for pid 1, not this daemon: it must not feed it.
    cmd.env("NOTIFY_SOCKET", format!("@{name}"))
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1");
    let mut d = Daemon::spawn(cmd);
    let ready = notes.wait(0, "READY=1", &d);
    assert!(notes.notes.lock().unwrap()[ready].token_on_disk);
    // Showing that something does not happen: 1 s is 10 watchdog periods.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        notes.times("WATCHDOG=1").is_empty(),
        "WATCHDOG=1 sent although WATCHDOG_PID names another process: {:?}",
        notes.texts()
    );
    let from = notes.len();
    d.signal(Signal::SIGTERM);
    notes.wait(from, "STOPPING=1", &d);
    let (status, _) = d.wait_exit(WAIT);
    assert!(status.success(), "{status:?}\n{}", d.log());
}

// ---------------------------------------------------------------------------
// 2. /healthz, /readyz, /metrics.

#[test]
fn health_endpoints_readiness_and_metrics() {
    let s = standin(LONG);
    s.script([Fault::Delay(Duration::from_secs(2))]);
    let t = TestDir::new();
    let port = free_port();
    let good = health_section(port) + &credential("main", &output("main.token", "raw"));
    t.write_config(&s.base_url(), &good);
    let d = t.daemon();
    let mut bodies: Vec<String> = Vec::new();

    // Not ready while the first login is still under way.
    let mut first = None;
    wait_for(
        WAIT,
        "the health server to answer",
        || {
            first = http_get(port, "/readyz");
            first.is_some()
        },
        || d.log(),
    );
    let (code, body) = first.unwrap();
    assert!(
        t.read("main.token").is_none(),
        "the slow first login finished before the health server answered\n{}",
        d.log()
    );
    assert_eq!(code, 503, "/readyz before the first token: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/readyz body is JSON");
    assert_eq!(v["credentials"][0]["name"], "main", "{body}");
    assert_eq!(v["credentials"][0]["state"], "pending", "{body}");
    bodies.push(body);
    let (code, body) = get(port, "/healthz", &d);
    assert_eq!(code, 200, "/healthz while starting: {body}");
    bodies.push(body);

    // Ready once the token is on disk.
    let body = wait_http(port, "/readyz", 200, &d);
    let token_text = t.read("main.token").expect("/readyz 200 without the file");
    assert!(token_in(&token_text).is_some());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["credentials"][0]["state"], "fresh", "{}", body);
    bodies.push(body);

    let (code, body) = get(port, "/healthz", &d);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/healthz body is JSON");
    assert_eq!(v["credentials"][0]["name"], "main", "{body}");
    assert_eq!(v["credentials"][0]["state"], "fresh", "{body}");
    assert!(v["credentials"][0]["expires_at"].is_string(), "{body}");
    bodies.push(body);
    let (code, body) = get(port, "/nope", &d);
    assert_eq!(code, 404, "{body}");

    // Metrics after one (2 s) login.
    let (code, m) = get(port, "/metrics", &d);
    assert_eq!(code, 200);
    let expiry = metric(
        &m,
        "voipbin_tokend_token_expiry_timestamp_seconds{credential=\"main\"}",
    )
    .unwrap_or_else(|| panic!("no expiry gauge in\n{m}"));
    let want = expiry_of(&token_text).unix_timestamp() as f64;
    assert!(
        (expiry - want).abs() < 1.5,
        "expiry gauge {expiry}, token expires {want}"
    );
    assert_eq!(
        metric(
            &m,
            "voipbin_tokend_renewals_total{credential=\"main\",result=\"success\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        m.contains("voipbin_tokend_login_duration_seconds_count{credential=\"main\"} 1"),
        "{m}"
    );
    let last_renewal = metric(
        &m,
        "voipbin_tokend_last_renewal_timestamp_seconds{credential=\"main\"}",
    )
    .unwrap_or_else(|| panic!("no last renewal gauge in\n{m}"));
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(
        (now - 60.0..=now + 1.0).contains(&last_renewal),
        "last renewal {last_renewal}, now {now}"
    );
    bodies.push(m);

    // A broken config on SIGHUP: counted as a failed reload, still ready.
    std::fs::write(t.config_path(), "[api\nthis is not TOML").unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_log("config reload failed", 1, WAIT);
    let m = wait_metric(
        port,
        "voipbin_tokend_config_reloads_total{result=\"failure\"}",
        1.0,
        &d,
    );
    assert!(
        metric(&m, "voipbin_tokend_config_reloads_total{result=\"success\"}").is_none_or(|v| v == 0.0),
        "{m}"
    );
    bodies.push(m);
    assert_eq!(
        get(port, "/readyz", &d).0,
        200,
        "a failed reload made the daemon unready"
    );

    // A new output in a directory that does not exist: its write fails and
    // is counted, and the credential is no longer all on disk.
    let reloads = d.log().matches("config reloaded").count();
    let broken = health_section(port)
        + &credential(
            "main",
            &(output("main.token", "raw") + &output("missing/dir/extra.token", "raw")),
        );
    t.write_config(&s.base_url(), &broken);
    d.signal(Signal::SIGHUP);
    d.wait_log("config reloaded", reloads + 1, WAIT);
    let m = wait_metric(
        port,
        "voipbin_tokend_output_write_failures_total{credential=\"main\"}",
        1.0,
        &d,
    );
    assert!(
        metric(&m, "voipbin_tokend_config_reloads_total{result=\"success\"}").is_some_and(|v| v >= 1.0),
        "{m}"
    );
    let body = wait_http(port, "/readyz", 503, &d);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["credentials"][0]["state"], "unwritten", "{}", body);
    bodies.push(body);
    assert_eq!(s.logins_ok(), 1, "a reload logged in");
    eprintln!("/metrics scrape:\n{m}");
    bodies.push(m);
    bodies.push(get(port, "/healthz", &d).1);

    for tok in s.issued_tokens() {
        let signature = tok.rsplit('.').next().unwrap().to_string();
        for b in &bodies {
            assert!(!b.contains(&tok), "a health body holds the token:\n{b}");
            assert!(
                !b.contains(&signature),
                "a health body holds the token's signature:\n{b}"
            );
        }
    }
}

#[test]
fn metrics_time_every_login_whatever_its_outcome() {
    let s = standin(LONG);
    // A slow success, then a failure.
    s.script([Fault::Delay(Duration::from_secs(2))]);
    let t = TestDir::new();
    let port = free_port();
    t.write_config(
        &s.base_url(),
        &(health_section(port) + &credential("main", &output("main.token", "raw"))),
    );
    let d = t.daemon();
    wait_renewed(&s, &t, "main.token", 1, &d);
    s.script([Fault::status(500)]);
    d.signal(Signal::SIGUSR1);
    let m = wait_metric(
        port,
        "voipbin_tokend_renewals_total{credential=\"main\",result=\"failure\"}",
        1.0,
        &d,
    );
    let m = if metric(
        &m,
        "voipbin_tokend_login_duration_seconds_count{credential=\"main\"}",
    ) == Some(2.0)
    {
        m
    } else {
        wait_metric(
            port,
            "voipbin_tokend_login_duration_seconds_count{credential=\"main\"}",
            2.0,
            &d,
        )
    };
    let took = metric(
        &m,
        "voipbin_tokend_login_duration_seconds_sum{credential=\"main\"}",
    )
    .unwrap();
    assert!(
        took >= 1.9,
        "the first login took 2 s, the histogram says {took} s in all\n{m}"
    );
    assert!(took < 10.0, "{m}");
    assert!(
        m.contains("voipbin_tokend_login_duration_seconds_bucket{le=\"2.5\",credential=\"main\"}")
            || m.contains("voipbin_tokend_login_duration_seconds_bucket{credential=\"main\",le=\"2.5\"}"),
        "no histogram buckets:\n{m}"
    );
}

#[test]
fn readyz_stays_ready_while_retrying_and_turns_503_when_the_token_expires() {
    let s = standin(Duration::from_secs(6));
    let t = TestDir::new();
    let port = free_port();
    // Renewal due at half of the 6 s lifetime, and a failed one retried
    // only after a minute: the credential fails once, at 3 s, and then
    // publishes nothing more, so /readyz must notice the expiry at 6 s by
    // itself.
    let cred = format!(
        "[[credential]]\nname = \"main\"\nusername = \"{USER}\"\npassword-file = \"password\"\n\
         renew-at = 0.5\njitter = 0.0\nretry-min = \"60s\"\nretry-max = \"60s\"\n\n{}",
        output("main.token", "raw")
    );
    t.write_config(&s.base_url(), &(health_section(port) + &cred));
    let d = t.daemon();
    let text = wait_file(&t.path("main.token"), WAIT, || d.log());
    s.set_default(Some(Fault::status(500)));
    let expires = expiry_of(&text);
    let expires_unix = expires.unix_timestamp_nanos() as f64 / 1e9;
    wait_http(port, "/readyz", 200, &d);

    // Renewals fail; the token still holds: ready ("retrying") until it expires.
    let m = wait_metric(
        port,
        "voipbin_tokend_renewals_total{credential=\"main\",result=\"failure\"}",
        1.0,
        &d,
    );
    // The token held may be the first or a renewal that came before the 500s.
    let token_now = t.read("main.token").unwrap();
    let expires = expiry_of(&token_now).max(expires);
    let (code, body) = get(port, "/readyz", &d);
    if time::OffsetDateTime::now_utc() < expires - time::Duration::milliseconds(500) {
        assert_eq!(code, 200, "unready while the token is still valid: {body}\n{m}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["credentials"][0]["state"], "retrying", "{body}");
    }

    // Expired and not renewed: 503.
    let body = wait_http(port, "/readyz", 503, &d);
    assert!(
        time::OffsetDateTime::now_utc() >= expires,
        "503 before the token expired at {expires} (first expiry {expires_unix})"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "not ready");
    assert_eq!(v["credentials"][0]["state"], "expired", "{}", body);
    assert!(
        v["credentials"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{}",
        body
    );
    // Still alive, though.
    assert_eq!(get(port, "/healthz", &d).0, 200);
}

#[test]
fn health_listen_address_in_use_is_a_config_error() {
    let s = standin(LONG);
    let t = TestDir::new();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    t.write_config(
        &s.base_url(),
        &(health_section(addr.port()) + &credential("main", &output("main.token", "raw"))),
    );
    let out = t.run(&["run", "-c", t.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&addr.to_string()), "{}", both(&out));
    assert!(stderr.contains("health.listen"), "{}", both(&out));
    assert_eq!(s.login_requests(), 0, "logged in despite a config error");
    assert!(t.read("main.token").is_none());
    drop(held);
}

// ---------------------------------------------------------------------------
// 3. Hooks.

/// The on-change hook used below: one line per run in ./hook.log, and a
/// line on stdout for the daemon's log.
const HOOK: &str = r#"on-change = ["sh", "-c", "echo \"$VOIPBIN_TOKEND_CREDENTIAL $VOIPBIN_TOKEND_OUTPUT $VOIPBIN_TOKEND_EXPIRES_AT\" >> hook.log; echo hook-stdout-for-$VOIPBIN_TOKEND_CREDENTIAL"]"#;

fn hook_lines(t: &TestDir, output: &str) -> Vec<String> {
    lines(t, "hook.log")
        .into_iter()
        .filter(|l| {
            l.split(' ')
                .nth(1)
                .is_some_and(|p| p.ends_with(&format!("/{output}")))
        })
        .collect()
}

#[test]
fn on_change_runs_once_per_new_token_per_output_and_not_for_an_unchanged_rewrite() {
    let s = standin(LONG);
    let t = TestDir::new();
    let outputs = output("a.token", "raw") + HOOK + "\n\n" + &output("b.env", "env") + HOOK + "\n\n";
    let cfg1 = credential("main", &outputs);
    t.write_config(&s.base_url(), &cfg1);
    let d = t.daemon();

    let wait_hooks = |n: usize| {
        wait_for(
            WAIT,
            &format!("{n} hook runs per output"),
            || hook_lines(&t, "a.token").len() >= n && hook_lines(&t, "b.env").len() >= n,
            || {
                format!(
                    "hook.log:\n{}\n{}",
                    t.read("hook.log").unwrap_or_default(),
                    d.log()
                )
            },
        )
    };
    wait_renewed(&s, &t, "a.token", 1, &d);
    wait_hooks(1);
    for n in 2..=3 {
        d.signal(Signal::SIGUSR1);
        wait_renewed(&s, &t, "a.token", n, &d);
        wait_for(
            WAIT,
            "the env file renewed",
            || {
                t.read("b.env")
                    .is_some_and(|x| token_in(&x) == s.issued_tokens().last().cloned())
            },
            || d.log(),
        );
        wait_hooks(n as usize);
    }
    d.wait_log("hook: hook-stdout-for-main", 6, WAIT);
    d.wait_log("on-change command succeeded", 6, WAIT);

    // A reload that changes the credential (a new output without a hook)
    // rewrites nothing in a.token and b.env: no hook runs.
    let reloads = d.log().matches("config reloaded").count();
    let cfg2 = credential("main", &(outputs + &output("c.token", "raw")));
    t.write_config(&s.base_url(), &cfg2);
    d.signal(Signal::SIGHUP);
    d.wait_log("config reloaded", reloads + 1, WAIT);
    let c = wait_file(&t.path("c.token"), WAIT, || d.log());
    assert_eq!(token_in(&c), s.issued_tokens().last().cloned());
    // Showing that something does not happen: give a stray hook run time.
    std::thread::sleep(Duration::from_millis(1500));

    assert_eq!(s.logins_ok(), 3, "{}", d.log());
    let expires = voipbin_tokend::token::rfc3339(expiry_of(&t.read("a.token").unwrap()));
    for out in ["a.token", "b.env"] {
        let l = hook_lines(&t, out);
        assert_eq!(
            l.len(),
            3,
            "{out}: {} hook runs for 3 tokens:\n{}",
            l.len(),
            t.read("hook.log").unwrap_or_default()
        );
        let fields: Vec<&str> = l[2].split(' ').collect();
        assert_eq!(fields[0], "main", "{l:?}");
        assert_eq!(
            Path::new(fields[1]),
            t.dir.path().join(out),
            "VOIPBIN_TOKEND_OUTPUT is not the output's path: {l:?}"
        );
        assert_eq!(
            fields[2], expires,
            "VOIPBIN_TOKEND_EXPIRES_AT of the last run: {l:?}"
        );
    }
    assert_eq!(lines(&t, "hook.log").len(), 6, "{}", t.read("hook.log").unwrap());
}

#[test]
fn a_failing_hook_is_logged_and_counted_and_renewal_goes_on() {
    let s = standin(Duration::from_secs(2));
    let t = TestDir::new();
    let port = free_port();
    let outputs = output("main.token", "raw")
        + r#"on-change = ["sh", "-c", "echo failing-hook-says-hi >&2; exit 3"]"#
        + "\n\n";
    t.write_config(
        &s.base_url(),
        &(health_section(port) + &credential("main", &outputs)),
    );
    let d = t.daemon();
    wait_renewed(&s, &t, "main.token", 3, &d);
    d.wait_log("on-change command failed", 2, WAIT);
    let log = d.log();
    assert!(
        log.contains("hook: failing-hook-says-hi"),
        "hook stderr not logged\n{log}"
    );
    assert!(log.contains("exit status: 3"), "exit status not logged\n{log}");
    let m = wait_metric(
        port,
        "voipbin_tokend_hook_runs_total{credential=\"main\",kind=\"command\",result=\"failure\"}",
        2.0,
        &d,
    );
    assert!(
        metric(
            &m,
            "voipbin_tokend_renewals_total{credential=\"main\",result=\"success\"}"
        )
        .is_some_and(|v| v >= 3.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "voipbin_tokend_renewals_total{credential=\"main\",result=\"failure\"}"
        )
        .is_none_or(|v| v == 0.0),
        "a failing hook counted as a failed renewal\n{m}"
    );
    assert_eq!(
        get(port, "/readyz", &d).0,
        200,
        "a failing hook made the daemon unready"
    );
}

/// Kills the processes whose pids a test's hook wrote to a file, if they
/// are still the hook's `sleep 600`: the machine's pids wrap around (pid_max
/// is often 32768), and a pid whose hook is gone may by now be another
/// test's process (a SIGKILL to the app of the signal-hook test below made
/// it wait in vain for its SIGHUP).
struct KillPids(PathBuf);

/// True if `pid` runs `sleep 600` (the hanging hook below, after its exec).
fn is_sleeper(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x00600\x00")
}

impl Drop for KillPids {
    fn drop(&mut self) {
        for pid in std::fs::read_to_string(&self.0).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse::<i32>()
                && alive(pid)
                && is_sleeper(pid)
            {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

#[test]
fn a_hook_that_never_ends_does_not_hold_up_renewals() {
    let s = standin(Duration::from_secs(2));
    let t = TestDir::new();
    let _cleanup = KillPids(t.path("sleeper.pids"));
    let outputs = output("main.token", "raw")
        + r#"on-change = ["sh", "-c", "echo $$ >> sleeper.pids; exec sleep 600"]"#
        + "\n\n";
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let mut d = t.daemon();
    wait_for(
        WAIT,
        "the hook to start",
        || !lines(&t, "sleeper.pids").is_empty(),
        || d.log(),
    );
    let sleeper: i32 = lines(&t, "sleeper.pids")[0].trim().parse().unwrap();
    let logins = s.logins_ok();
    // Two more renewals while the hook sleeps.
    wait_renewed(&s, &t, "main.token", logins + 2, &d);
    assert!(alive(sleeper), "the hook is not running any more");
    assert_eq!(
        lines(&t, "sleeper.pids").len(),
        1,
        "hook runs overlapped: {:?}",
        lines(&t, "sleeper.pids")
    );
    // Stopping is not held up by it either, and it does not outlive the daemon.
    stop(&mut d);
    wait_for(
        WAIT,
        "the hanging hook to be killed",
        || !alive(sleeper),
        || d.log(),
    );
}

/// A program that appends a line to `log` for each SIGHUP and keeps its
/// pid in ./app.pid (written atomically, after the trap is set). Killed,
/// with its process group, on drop.
///
/// It waits in the `wait` builtin, which a trapped signal interrupts at
/// once, rather than in a foreground `sleep` loop: there the trap waits for
/// the command to end, and the shell forks 20 times a second, hastening
/// pid reuse on a busy machine.
struct App {
    child: Child,
}

impl App {
    fn start(t: &TestDir, log: &str) -> App {
        use std::os::unix::process::CommandExt;
        let script = format!(
            "trap 'echo x >> {log}' HUP; echo $$ > app.pid.tmp; mv app.pid.tmp app.pid; \
             while :; do sleep 5 & wait $!; done"
        );
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .current_dir(t.dir.path())
            .stdin(Stdio::null())
            .process_group(0);
        // A signal ignored when a shell starts cannot be trapped (POSIX):
        // under `nohup`, or any runner that ignores SIGHUP, the trap above
        // would silently do nothing and the app would swallow every SIGHUP.
        // SAFETY: only signal(2), async-signal-safe, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::signal::signal(Signal::SIGHUP, nix::sys::signal::SigHandler::SigDfl)
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().unwrap();
        let app = App { child };
        let pid = app.pid().to_string();
        wait_for(
            WAIT,
            "the app's pid file",
            || t.read("app.pid").is_some_and(|p| p.trim() == pid),
            String::new,
        );
        app
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The app's process state (for failure messages): "S", "Z" (it died)...
    fn state(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim().chars().take(1).collect())
            })
            .unwrap_or_else(|| "gone".into())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // The group: the shell and its sleep.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[test]
fn signal_hook_reads_the_pid_file_each_time_and_survives_a_missing_one() {
    let s = standin(LONG);
    let t = TestDir::new();
    let outputs = output("main.token", "raw") + "signal = \"SIGHUP\"\npid-file = \"app.pid\"\n\n";
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let d = t.daemon();

    // No pid file: a logged error; the token is written and renewal goes on.
    wait_renewed(&s, &t, "main.token", 1, &d);
    d.wait_log("cannot read pid file", 1, WAIT);
    d.signal(Signal::SIGUSR1);
    wait_renewed(&s, &t, "main.token", 2, &d);
    d.wait_log("cannot read pid file", 2, WAIT);

    // One signal per new token.
    let a = App::start(&t, "sig_a.log");
    for n in 1..=2 {
        d.signal(Signal::SIGUSR1);
        wait_renewed(&s, &t, "main.token", 2 + n, &d);
        wait_for(
            WAIT,
            &format!("{n} SIGHUPs to the app"),
            || lines(&t, "sig_a.log").len() >= n as usize,
            || format!("app pid {} state {}\n{}", a.pid(), a.state(), d.log()),
        );
    }
    // The daemon logs "signalled" after kill() returns, so the app may see
    // the signal before the line reaches the log: wait for it.
    d.wait_log(&format!("pid={}", a.pid()), 1, WAIT);

    // The app restarts with another pid: the pid file is read anew.
    drop(a);
    let b = App::start(&t, "sig_b.log");
    d.signal(Signal::SIGUSR1);
    wait_renewed(&s, &t, "main.token", 5, &d);
    wait_for(
        WAIT,
        "a SIGHUP to the restarted app",
        || !lines(&t, "sig_b.log").is_empty(),
        || format!("app pid {} state {}\n{}", b.pid(), b.state(), d.log()),
    );
    d.wait_log(&format!("pid={}", b.pid()), 1, WAIT);
    // Showing that nothing more happens: no stray signals.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(lines(&t, "sig_a.log").len(), 2, "SIGHUPs to the first app");
    assert_eq!(lines(&t, "sig_b.log").len(), 1, "SIGHUPs to the restarted app");
    assert_eq!(s.logins_ok(), 5);
}

// ---------------------------------------------------------------------------
// 4. The status command.

fn status(t: &TestDir, json: bool) -> std::process::Output {
    let cfg = t.config_path();
    let mut args = vec!["status", "-c", cfg.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    t.run(&args)
}

/// Waits until the daemon's status file contains `needle`.
fn wait_status_file(t: &TestDir, needle: &str, d: &Daemon) {
    wait_for(
        WAIT,
        &format!("{needle:?} in state/status.json"),
        || t.read("state/status.json").is_some_and(|x| x.contains(needle)),
        || format!("{:?}\n{}", t.read("state/status.json"), d.log()),
    );
}

#[test]
fn status_command_reports_a_running_daemon_and_one_that_stopped() {
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));

    // Never ran: no status file.
    let out = status(&t, false);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the daemon running"),
        "{}",
        both(&out)
    );

    let mut d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    wait_status_file(&t, "\"fresh\": true", &d);

    let out = status(&t, false);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains(&format!("running (pid {})", d.pid())), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("main "))
        .unwrap_or_else(|| panic!("no row for main:\n{table}"));
    assert!(row.split_whitespace().nth(1) == Some("fresh"), "{table}");

    let out = status(&t, true);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(v["daemon_running"], true, "{v:#}");
    assert_eq!(v["healthy"], true, "{v:#}");
    let c = &v["credentials"][0];
    assert_eq!(c["name"], "main", "{v:#}");
    assert_eq!(c["state"], "fresh", "{v:#}");
    assert_eq!(c["failures"], 0, "{v:#}");
    let expires = c["expires_at"].as_str().expect("expires_at");
    let next = c["next_renewal"].as_str().expect("next_renewal");
    let parse =
        |x: &str| time::OffsetDateTime::parse(x, &time::format_description::well_known::Rfc3339).unwrap();
    let token_expiry = expiry_of(&t.read("main.token").unwrap());
    assert!(
        (parse(expires) - token_expiry).abs() < time::Duration::seconds(2),
        "{v:#}"
    );
    assert!(parse(next) < parse(expires), "{v:#}");
    assert!(parse(next) > time::OffsetDateTime::now_utc(), "{v:#}");
    for tok in s.issued_tokens() {
        assert!(!String::from_utf8_lossy(&out.stdout).contains(&tok));
        assert!(!table.contains(&tok));
    }

    stop(&mut d);
    let out = status(&t, false);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NOT RUNNING"),
        "{}",
        both(&out)
    );
    let out = status(&t, true);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["daemon_running"], false, "{v:#}");
    assert_eq!(v["healthy"], false, "{v:#}");
}

#[test]
fn status_command_fails_and_shows_the_error_of_a_rejected_credential() {
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_password("wrong-password");
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    d.wait_log("credentials rejected", 1, WAIT);
    wait_status_file(&t, "credentials rejected", &d);

    let out = status(&t, false);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("running (pid"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("main "))
        .unwrap_or_else(|| panic!("no row for main:\n{table}"));
    assert!(row.contains("failing"), "{table}");
    assert!(row.contains("credentials rejected"), "{table}");

    let out = status(&t, true);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["daemon_running"], true, "{v:#}");
    assert_eq!(v["healthy"], false, "{v:#}");
    let c = &v["credentials"][0];
    assert!(c["failures"].as_u64().is_some_and(|n| n >= 1), "{v:#}");
    assert!(
        c["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("credentials rejected")),
        "{v:#}"
    );
    assert!(c["expires_at"].is_null(), "{v:#}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("wrong-password"));
}

// ---------------------------------------------------------------------------
// 5. CLI help, completions, man page.

#[test]
fn help_completions_and_man_page() {
    let t = TestDir::new();
    let out = t.run(&["--help"]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Example"),
        "{}",
        both(&out)
    );
    for sub in [
        "run",
        "once",
        "check",
        "inspect",
        "status",
        "completions",
        "man",
        "demo",
    ] {
        let out = t.run(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help: {}", both(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Example"),
            "{sub} --help has no example: {}",
            both(&out)
        );
    }

    let out = t.run(&["completions", "bash"]);
    assert!(out.status.success(), "{}", both(&out));
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("voipbin-tokend"), "{script}");
    assert!(
        script.contains("complete "),
        "not a bash completion script:\n{script}"
    );
    assert!(script.contains("status"), "subcommands missing:\n{script}");

    let out = t.run(&["man"]);
    assert!(out.status.success(), "{}", both(&out));
    let roff = String::from_utf8_lossy(&out.stdout);
    assert!(
        roff.starts_with(".ie") || roff.starts_with(".TH"),
        "not roff:\n{roff}"
    );
    assert!(roff.contains(".TH voipbin-tokend"), "{roff}");
}
