//! Hostile and careless files (issue 9, items 1 to 5b and 11): FIFOs,
//! devices and sockets where the daemon reads or writes, outputs that are
//! the daemon's own inputs or each other under another spelling, huge and
//! quadratic-to-scan files, and the 5 s hard stop when something is stuck.
//!
//! Every test spawns the real binary against the stand-in, with a timeout
//! on every wait. Loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use nix::sys::signal::Signal;

/// A generous bound for anything that should take a second or two.
const WAIT: Duration = Duration::from_secs(20);
/// What "never hangs" means for a command here.
const QUICK: Duration = Duration::from_secs(10);

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

/// A character device node like /dev/null (1,3), made in the test dir (we are root).
fn mknod_null(path: &Path) {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .expect("mknod (needs root)");
}

fn is_fifo(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Runs a command that must finish within [`QUICK`]: never hang.
fn quick(t: &TestDir, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = t
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return (child.wait_with_output().expect("output"), started.elapsed());
        }
        if started.elapsed() > QUICK {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("{args:?} hung for {QUICK:?}\n{}", both(&out));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn check(t: &TestDir) -> Output {
    let cfg = t.config_path();
    quick(t, &["check", "-c", cfg.to_str().unwrap()]).0
}

fn once(t: &TestDir) -> Output {
    let cfg = t.config_path();
    quick(t, &["once", "-c", cfg.to_str().unwrap()]).0
}

/// Asserts `check` says invalid (78) and its message names `key` and `what`.
fn assert_invalid(t: &TestDir, key: &str, what: &str) {
    let out = check(t);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(78), "check should refuse\n{text}");
    assert!(text.contains(key), "message names {key:?}\n{text}");
    assert!(text.contains(what), "message says {what:?}\n{text}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_code(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// Item 1: special files never freeze anything.

#[test]
fn fifo_password_file_freezes_nothing_in_check_once_or_run() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    mkfifo(&t.path("stuck.password"));
    let port = free_port();
    let rest = format!(
        "[health]\nlisten = \"127.0.0.1:{port}\"\n\n{}{}",
        cred(
            "stuck",
            USER,
            "stuck.password",
            "retry-min = \"100ms\"\nretry-max = \"500ms\"",
            &output("stuck.token", "raw")
        ),
        credential("good", &output("good.token", "raw")),
    );
    t.write_config(&s.base_url(), &rest);

    let out = check(&t);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        both(&out).contains("FIFO"),
        "check says why the password is not readable\n{}",
        both(&out)
    );

    let out = once(&t);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(both(&out).contains("stuck.password"), "{}", both(&out));
    assert!(token_in(&t.read("good.token").unwrap_or_default()).is_some());
    std::fs::remove_file(t.path("good.token")).unwrap();

    let mut d = t.daemon();
    wait_file(&t.path("good.token"), WAIT, || d.log());
    wait_for(
        WAIT,
        "/healthz answers",
        || http_code(port, "/healthz") == Some(200),
        || d.log(),
    );
    d.wait_log("not a regular file", 2, WAIT);
    assert!(is_fifo(&t.path("stuck.password")));
    let took = stop(&mut d, Signal::SIGTERM);
    println!("SIGTERM to exit with a FIFO password file: {took:?}");
}

#[test]
fn fifo_as_output_pid_file_status_file_or_ca_file_never_hangs() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();

    // Output: a config error, the FIFO left alone.
    mkfifo(&t.path("out.fifo"));
    t.write_config(&s.base_url(), &credential("main", &output("out.fifo", "raw")));
    assert_invalid(&t, "credential[main].output[0].path", "FIFO");
    let out = once(&t);
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
    assert!(is_fifo(&t.path("out.fifo")));

    // ca-file: a config error at once, not a hang.
    mkfifo(&t.path("ca.fifo"));
    let rest = credential("main", &output("main.token", "raw"));
    std::fs::write(
        t.config_path(),
        format!(
            "[api]\nbase-url = \"{}\"\nca-file = \"ca.fifo\"\n\n{rest}",
            s.base_url()
        ),
    )
    .unwrap();
    assert_invalid(&t, "api.ca-file", "FIFO");

    // Pid file and status file: the daemon runs on, refusing them.
    mkfifo(&t.path("app.pid"));
    std::fs::create_dir(t.path("state")).unwrap();
    mkfifo(&t.path("state/status.json"));
    let out_with_signal = format!(
        "{}signal = \"SIGHUP\"\npid-file = \"app.pid\"\n\n",
        output("main.token", "raw")
    );
    t.write_config(&s.base_url(), &credential("main", &out_with_signal));
    let out = check(&t);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let out = once(&t);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(both(&out).contains("pid file"), "{}", both(&out));
    std::fs::remove_file(t.path("main.token")).unwrap();

    // `status` reads the status file: refused, not waited on.
    let (out, _) = quick(&t, &["status", "-c", "config.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(both(&out).contains("FIFO"), "{}", both(&out));
    // `inspect` and the config file itself.
    let (out, _) = quick(&t, &["inspect", "app.pid"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(both(&out).contains("FIFO"), "{}", both(&out));
    mkfifo(&t.path("config.fifo"));
    let (out, _) = quick(&t, &["check", "-c", "config.fifo"]);
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
    assert!(
        both(&out).contains("config.fifo") && both(&out).contains("FIFO"),
        "{}",
        both(&out)
    );

    let mut d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    d.wait_log("cannot read pid file", 1, WAIT);
    d.wait_log("FIFO", 2, WAIT);
    assert!(is_fifo(&t.path("app.pid")) && is_fifo(&t.path("state/status.json")));
    stop(&mut d, Signal::SIGTERM);
}

/// Runs this test binary's own [`hard_stop_child`] as a child process
/// whose runtime thread is stuck for a minute, and returns it once its
/// signal handlers are in place.
fn stuck_child() -> std::process::Child {
    // Its name as the test binary knows it: the module path without the crate.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let name = format!("{module}::hard_stop_child");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &name, "--ignored", "--nocapture", "--test-threads=1"])
        .env("TOKEND_HARD_STOP_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("HANDLERS-READY") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(WAIT).expect("the child installs its handlers");
    child
}

fn wait_child(child: &mut std::process::Child, timeout: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), started.elapsed());
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!("the child did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Not a test on its own (hence ignored): the child process of
/// [`sigterm_ends_a_stuck_process_within_5_s_and_a_second_sigint_at_once`].
#[test]
#[ignore = "run only as the child of sigterm_ends_a_stuck_process_within_5_s_and_a_second_sigint_at_once"]
fn hard_stop_child() {
    if std::env::var_os("TOKEND_HARD_STOP_CHILD").is_none() {
        return;
    }
    let rt = voipbin_tokend::cli::runtime::runtime().unwrap();
    rt.block_on(async {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        voipbin_tokend::signals::forward(tx, None).unwrap();
        println!("HANDLERS-READY");
        // The runtime thread is stuck, as in a hung filesystem call: no
        // task (signal stream, shutdown) can run on it.
        std::thread::sleep(Duration::from_secs(60));
    });
    std::process::exit(3);
}

#[test]
fn sigterm_ends_a_stuck_process_within_5_s_and_a_second_sigint_at_once() {
    let mut child = stuck_child();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let (code, took) = wait_child(&mut child, WAIT);
    println!("stuck process: SIGTERM to exit took {took:?}");
    assert_eq!(code, Some(0));
    assert!(
        took >= Duration::from_millis(4500),
        "the hard stop waits for a clean stop first: {took:?}"
    );
    assert!(took < Duration::from_secs(7), "hard stop at 5 s: {took:?}");

    let mut child = stuck_child();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(pid, Signal::SIGINT).unwrap();
    let (code, took) = wait_child(&mut child, WAIT);
    println!("stuck process: second SIGINT to exit took {took:?}");
    assert_eq!(code, Some(130));
    assert!(
        took < Duration::from_secs(2),
        "a second SIGINT exits at once: {took:?}"
    );
}

// ---------------------------------------------------------------------------
// Item 2: device nodes, sockets and FIFOs are never replaced.

#[test]
fn device_socket_or_directory_as_output_is_a_config_error_and_untouched() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    mknod_null(&t.path("null"));
    let _sock = std::os::unix::net::UnixListener::bind(t.path("sock")).unwrap();
    std::fs::create_dir(t.path("adir")).unwrap();
    for (name, kind) in [
        ("null", "character device"),
        ("sock", "socket"),
        ("adir", "directory"),
    ] {
        t.write_config(&s.base_url(), &credential("main", &output(name, "raw")));
        assert_invalid(&t, "credential[main].output[0].path", kind);
        let mut d = t.daemon();
        let (status, _) = d.wait_exit(QUICK);
        assert_eq!(status.code(), Some(78), "run refuses {name}\n{}", d.log());
    }
    let m = std::fs::symlink_metadata(t.path("null")).unwrap();
    assert!(
        m.file_type().is_char_device(),
        "the device node is still a device node"
    );
    assert!(
        std::fs::symlink_metadata(t.path("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(s.login_requests(), 0);
}

#[test]
fn an_output_that_becomes_a_fifo_while_running_is_never_replaced() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let mut d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    std::fs::remove_file(t.path("main.token")).unwrap();
    mkfifo(&t.path("main.token"));
    d.signal(Signal::SIGUSR1);
    d.wait_log("refusing to write", 1, WAIT);
    assert!(
        is_fifo(&t.path("main.token")),
        "the FIFO is still there\n{}",
        d.log()
    );
    // A reload is held to the same rules as a start.
    t.write_config(&s.base_url(), &credential("main", &output("./password", "raw")));
    d.signal(Signal::SIGHUP);
    d.wait_log("config reload failed", 1, WAIT);
    assert!(d.log().contains("credential[main].password-file"), "{}", d.log());
    assert_eq!(t.read("password").unwrap(), format!("{PASSWORD}\n"));
    stop(&mut d, Signal::SIGTERM);
}

// ---------------------------------------------------------------------------
// Item 3: an output may not be one of the daemon's inputs.

#[test]
fn an_output_that_is_an_input_under_any_spelling_is_refused() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let dir = t.dir.path().to_str().unwrap().to_string();
    std::os::unix::fs::symlink(t.dir.path(), t.path("here")).unwrap();
    std::fs::hard_link(t.path("password"), t.path("pw-hardlink")).unwrap();
    let key = "credential[main].output[0].path";
    for (path, collides) in [
        ("config.toml", "config file"),
        ("./config.toml", "config file"),
        (&format!("{dir}/config.toml") as &str, "config file"),
        ("here/config.toml", "config file"),
        ("password", "credential[main].password-file"),
        ("sub/../password", "credential[main].password-file"),
        ("here/./password", "credential[main].password-file"),
        ("pw-hardlink", "credential[main].password-file"),
        ("state/status.json", "state directory"),
        ("here/state/x", "state directory"),
    ] {
        std::fs::create_dir_all(t.path("sub")).unwrap();
        t.write_config(&s.base_url(), &credential("main", &output(path, "raw")));
        assert_invalid(&t, key, collides);
    }
    // The config file reached through a symlink (a Kubernetes ConfigMap):
    // neither the link nor its target may be an output.
    std::fs::create_dir(t.path("..data")).unwrap();
    let text = config_text(&s.base_url(), &credential("main", &output("real.toml", "raw")));
    std::fs::write(t.path("..data/config.toml"), &text).unwrap();
    std::fs::remove_file(t.config_path()).unwrap();
    std::os::unix::fs::symlink("..data/config.toml", t.config_path()).unwrap();
    std::fs::write(
        t.path("..data/config.toml"),
        config_text(
            &s.base_url(),
            &credential("main", &output("..data/config.toml", "raw")),
        ),
    )
    .unwrap();
    assert_invalid(&t, key, "config file");
    std::fs::remove_file(t.config_path()).unwrap();

    // ca-file and pid-file.
    std::fs::write(t.path("app.pid"), "1\n").unwrap();
    let out = format!(
        "{}signal = \"SIGHUP\"\npid-file = \"app.pid\"\n\n",
        output("./app.pid", "raw")
    );
    t.write_config(&s.base_url(), &credential("main", &out));
    assert_invalid(&t, key, "credential[main].output[0].pid-file");
    // Another output's pid file.
    let two = format!(
        "{}{}",
        credential(
            "a",
            &format!(
                "{}signal = \"SIGHUP\"\npid-file = \"app.pid\"\n\n",
                output("a.token", "raw")
            )
        ),
        credential("b", &output("here/app.pid", "raw"))
    );
    t.write_config(&s.base_url(), &two);
    assert_invalid(
        &t,
        "credential[b].output[0].path",
        "credential[a].output[0].pid-file",
    );

    let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(t.path("ca.pem"), ca.cert.pem()).unwrap();
    let rest = credential("main", &output("here/ca.pem", "raw"));
    std::fs::write(
        t.config_path(),
        format!(
            "[api]\nbase-url = \"{}\"\nca-file = \"ca.pem\"\n\n[state]\ndir = \"state\"\n\n{rest}",
            s.base_url()
        ),
    )
    .unwrap();
    assert_invalid(&t, key, "api.ca-file");
    // An access key's bootstrap-key-file.
    std::fs::write(t.path("boot.key"), format!("vb_{}\n", "a".repeat(32))).unwrap();
    let key_cred = format!(
        "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\n\n{}",
        output("here/boot.key", "raw")
    );
    t.write_config(&s.base_url(), &key_cred);
    assert_invalid(
        &t,
        "credential[mcp].output[0].path",
        "credential[mcp].bootstrap-key-file",
    );

    assert_eq!(s.login_requests(), 0);
    assert!(
        std::fs::read_to_string(t.path("password"))
            .unwrap()
            .contains(PASSWORD)
    );
}

// ---------------------------------------------------------------------------
// Item 5b: duplicates on resolved paths.

#[test]
fn two_outputs_that_are_one_file_under_other_spellings_are_refused() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let dir = t.dir.path().to_str().unwrap().to_string();
    std::fs::create_dir(t.path("out")).unwrap();
    std::os::unix::fs::symlink(t.path("out"), t.path("outlink")).unwrap();
    std::fs::write(t.path("out/a"), "x").unwrap();
    std::fs::hard_link(t.path("out/a"), t.path("out/a-hard")).unwrap();
    for other in [
        "./out/a",
        "out/../out/a",
        "out/./a",
        "outlink/a",
        &format!("{dir}/out/a") as &str,
        "out/a-hard",
    ] {
        let rest = format!(
            "{}{}",
            credential("one", &output("out/a", "raw")),
            credential("two", &output(other, "env"))
        );
        t.write_config(&s.base_url(), &rest);
        let out = check(&t);
        let text = both(&out);
        assert_eq!(out.status.code(), Some(78), "{other}: {text}");
        assert!(
            text.contains("credential[two].output[0].path")
                && text.contains("credential[one].output[0].path"),
            "{other}: names both\n{text}"
        );
    }
    // Not existing yet: still found by the resolved directory.
    std::fs::remove_file(t.path("out/a")).unwrap();
    std::fs::remove_file(t.path("out/a-hard")).unwrap();
    let rest = format!(
        "{}{}",
        credential("one", &output("out/a", "raw")),
        credential("two", &output("outlink/a", "raw"))
    );
    t.write_config(&s.base_url(), &rest);
    assert_invalid(
        &t,
        "credential[two].output[0].path",
        "credential[one].output[0].path",
    );
}

// ---------------------------------------------------------------------------
// Item 11: check's wording for paths.

#[test]
fn check_refuses_overlong_names_and_says_nothing_false_about_directories() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let long = "x".repeat(256);
    t.write_config(
        &s.base_url(),
        &credential("main", &output(&format!("out/{long}"), "raw")),
    );
    assert_invalid(&t, "credential[main].output[0].path", "255");

    t.write_config(&s.base_url(), &credential("main", &output("token", "raw")));
    // A bare file name with a bare config name: relative to the current directory.
    let out = quick(&t, &["check", "-c", "config.toml"]).0;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(!both(&out).contains("does not exist"), "{}", both(&out));
    t.write_config(
        &s.base_url(),
        &credential("main", &output("missing/token", "raw")),
    );
    let out = check(&t);
    assert!(both(&out).contains("missing does not exist"), "{}", both(&out));
}

// ---------------------------------------------------------------------------
// Item 4: bounded, linear reads.

#[test]
fn an_eyj_flood_as_old_output_or_inspect_input_is_scanned_fast() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let flood = "eyJ".repeat(80_000); // 240 KB
    std::fs::write(t.path("flood.token"), &flood).unwrap();
    let small = "eyJ".repeat(20_000); // 60 KB: under the read limit, so really scanned
    std::fs::write(t.path("small.token"), &small).unwrap();
    t.write_config(
        &s.base_url(),
        &credential(
            "main",
            &format!("{}{}", output("flood.token", "raw"), output("small.token", "raw")),
        ),
    );
    let (out, took) = quick(&t, &["once", "-c", "config.toml"]);
    println!("once with a 240 KB and a 60 KB eyJ output: {took:?}");
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(token_in(&t.read("flood.token").unwrap()).is_some());

    for (name, content) in [("in-flood", &flood), ("in-small", &small)] {
        std::fs::write(t.path(name), content).unwrap();
        let (out, took) = quick(&t, &["inspect", name]);
        println!("inspect {} KB of eyJ: {took:?}", content.len() / 1000);
        assert_eq!(out.status.code(), Some(1), "{}", both(&out));
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    let started = Instant::now();
    let out = run_with_stdin(&t, &["inspect", "-"], small.as_bytes());
    println!("inspect - with 60 KB of eyJ: {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn huge_sparse_and_device_files_are_refused_not_read() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    // A 1 GB sparse output from an earlier life: not read (it would take
    // seconds and a gigabyte), not reused, replaced by a fresh token.
    std::fs::File::create(t.path("big.token"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    std::fs::File::create(t.path("big.inspect"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    t.write_config(&s.base_url(), &credential("main", &output("big.token", "raw")));
    let (out, took) = quick(&t, &["once", "-c", "config.toml"]);
    println!("once with a 1 GB sparse output: {took:?}");
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(both(&out).contains("larger than 65536 bytes"), "{}", both(&out));
    assert!(took < Duration::from_secs(5));
    assert!(std::fs::metadata(t.path("big.token")).unwrap().len() < 65536);
    let (out, took) = quick(&t, &["inspect", "big.inspect"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(both(&out).contains("larger than"), "{}", both(&out));
    assert!(took < Duration::from_secs(5));

    // Password files that are not a password: /dev/zero, 100 MB, a FIFO.
    // None is sent to the server.
    std::fs::File::create(t.path("huge.password"))
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    for (pw, says) in [
        ("/dev/zero", "character device"),
        ("huge.password", "larger than 4096 bytes"),
    ] {
        let rest = cred("main", USER, pw, "", &output("main.token", "raw"));
        t.write_config(&s.base_url(), &rest);
        let before = s.login_requests();
        let out = check(&t);
        assert!(both(&out).contains(says), "{}", both(&out));
        std::fs::remove_file(t.path("main.token")).ok();
        let out = once(&t);
        assert_eq!(out.status.code(), Some(1), "{}", both(&out));
        assert!(
            both(&out).contains(says) && both(&out).contains(pw),
            "{}",
            both(&out)
        );
        assert_eq!(s.login_requests(), before, "the password was never sent");
    }
}
