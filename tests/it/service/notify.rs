//! systemd notifications: `NOTIFY_SOCKET` (path and abstract), with the
//! watchdog.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::WAIT;
use crate::support::*;
use nix::sys::signal::Signal;

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
