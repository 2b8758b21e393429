//! Issue 9 hardening, spawning the binary: hooks get a clean, scrubbed
//! world; a crowded health port cannot starve renewals; config and command
//! rules (modes, owners, templates, the state-dir lock, demo --dir, status).

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// A token lifetime no test outlives: no renewal happens unless asked for.
const LONG: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------
// Hooks: a clean environment, scrubbed output.

/// A credential reading its password from `$HOOKTEST_PW`, one raw output
/// whose hook prints the previous token (a copy it keeps), the current
/// output file, and its whole environment.
fn leaky_hook_config(hook_env: &str) -> String {
    format!(
        "[[credential]]\nname = \"main\"\nusername = \"{USER}\"\npassword-env = \"HOOKTEST_PW\"\n\
         {FAST_RETRY}\n[[credential.output]]\npath = \"main.token\"\nformat = \"raw\"\n\
         on-change = [\"sh\", \"-c\", \"cat prev.copy 2>/dev/null; echo; cat \\\"$VOIPBIN_TOKEND_OUTPUT\\\"; echo; \
         cp \\\"$VOIPBIN_TOKEND_OUTPUT\\\" prev.copy; env; echo hook-done\"]\n{hook_env}\n"
    )
}

#[test]
fn hooks_get_a_clean_environment_and_their_output_is_scrubbed_of_tokens() {
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &leaky_hook_config("hook-env = [\"HOOKTEST_PASSED\"]"),
    );
    let cfg = t.config_path();
    let mut cmd = t.command(&["run", "-c", cfg.to_str().unwrap()]);
    cmd.env("HOOKTEST_PW", PASSWORD)
        .env("HOOKTEST_PASSED", "listed-variable-reaches-the-hook")
        .env("HOOKTEST_NOT_LISTED", "unlisted-variable-value");
    let mut d = Daemon::spawn(cmd);

    wait_file(&t.path("main.token"), WAIT, || d.log());
    d.wait_log("hook-done", 1, WAIT);
    // A second token: the hook now prints the previous one too.
    d.signal(Signal::SIGUSR1);
    wait_for(WAIT, "a second login", || s.logins_ok() >= 2, || d.log());
    d.wait_log("hook-done", 2, WAIT);
    stop(&mut d, Signal::SIGTERM);

    let log = d.log();
    let tokens = s.issued_tokens();
    assert_eq!(tokens.len(), 2, "{log}");
    assert_no_secrets(&log, PASSWORD, &tokens);
    assert!(
        log.contains("[redacted]"),
        "the hook printed tokens; they show as [redacted]\n{log}"
    );
    assert!(
        log.contains("HOOKTEST_PASSED=listed-variable-reaches-the-hook"),
        "a variable listed in hook-env reaches the hook\n{log}"
    );
    assert!(log.contains("VOIPBIN_TOKEND_OUTPUT="), "{log}");
    assert!(log.contains("PATH="), "{log}");
    assert!(
        !log.contains("HOOKTEST_NOT_LISTED") && !log.contains("unlisted-variable-value"),
        "a variable not listed reached the hook\n{log}"
    );
    assert!(
        !log.contains("HOOKTEST_PW"),
        "the password variable reached the hook\n{log}"
    );
}

#[test]
fn hook_env_may_not_pass_the_password_variable() {
    let s = standin(LONG);
    let t = TestDir::new();
    for bad in ["hook-env = [\"HOOKTEST_PW\"]", "hook-env = [\"NOT A NAME\"]"] {
        t.write_config(&s.base_url(), &leaky_hook_config(bad));
        let out = t.run(&["check", "-c", t.config_path().to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(78), "{bad}: {}", both(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("credential[main].output[0].hook-env"),
            "{bad}: {err}"
        );
        assert!(err.contains("config.toml"), "{err}");
    }
    // hook-env without on-change is a mistake too.
    t.write_config(
        &s.base_url(),
        &credential("main", &(output("a.token", "raw") + "hook-env = [\"HOME\"]\n")),
    );
    let out = t.run(&["check", "-c", t.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
}

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

/// The soft and hard "Max open files" of a process, from /proc.
fn open_file_limits(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let n: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (n[0], n[1])
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

// ---------------------------------------------------------------------------
// Config rules.

/// `check` on config.toml: (exit code, stdout + stderr).
fn check(t: &TestDir) -> (Option<i32>, String) {
    let out = t.run(&["check", "-c", t.config_path().to_str().unwrap()]);
    (out.status.code(), both(&out))
}

#[test]
fn check_refuses_writable_modes_unchanged_owner_ids_templates_without_token_and_names_duplicate_keys() {
    let s = standin(LONG);
    let t = TestDir::new();
    let cases = [
        ("mode = \"0666\"\n", "output[0].mode"),
        ("mode = \"0620\"\n", "output[0].mode"),
        ("mode = \"0602\"\n", "output[0].mode"),
        ("owner = \"4294967295\"\n", "output[0].owner"),
        ("group = \"4294967295\"\n", "output[0].group"),
        ("mode = \"0600\"\nmode = \"0640\"\n", "duplicate key `mode`"),
    ];
    for (extra, needle) in cases {
        t.write_config(
            &s.base_url(),
            &credential("main", &output_with("a.token", "raw", extra)),
        );
        let (code, text) = check(&t);
        assert_eq!(code, Some(78), "{extra}: {text}");
        assert!(
            text.contains(needle) && text.contains("config.toml"),
            "{extra}: {text}"
        );
    }
    t.write_config(
        &s.base_url(),
        &credential(
            "main",
            &output_with("a.txt", "template", "template = \"expires {expires_at}\\n\"\n"),
        ),
    );
    let (code, text) = check(&t);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("output[0].template") && text.contains("{token}"),
        "{text}"
    );

    // World-readable is allowed, with a warning.
    t.write_config(
        &s.base_url(),
        &credential("main", &output_with("a.token", "raw", "mode = \"0644\"\n")),
    );
    let (code, text) = check(&t);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning:") && text.contains("every user on this machine read"),
        "{text}"
    );
}

#[test]
fn check_prints_the_login_url_the_client_uses_and_a_404_names_it() {
    let s = standin(LONG);
    let t = TestDir::new();
    // A base-url with a path and no trailing slash.
    let base = format!("{}/api", s.base_url().trim_end_matches('/'));
    t.write_config(&base, &credential("main", &output("a.token", "raw")));
    let (code, text) = check(&t);
    assert_eq!(code, Some(0), "{text}");
    let url = format!("{base}/auth/login");
    assert!(
        text.contains(&format!("POST {url},")),
        "check prints {url}:\n{text}"
    );

    // The stand-in serves /auth/login only: the client really used {base}/auth/login,
    // and the error says where it went.
    let out = t.run(&["once", "-c", t.config_path().to_str().unwrap()]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("HTTP 404 from POST {url}")), "{text}");
    assert!(
        s.requests().iter().any(|r| r.path == "/api/auth/login"),
        "the login went to /api/auth/login"
    );
}

// ---------------------------------------------------------------------------
// One daemon per state directory.

#[test]
fn a_second_daemon_on_the_same_state_dir_exits_1_naming_the_dir_and_the_holder() {
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("a.token", "raw")));
    let mut first = t.daemon();
    wait_file(&t.path("a.token"), WAIT, || first.log());

    // Another config (own outputs) with the same state dir.
    std::fs::write(
        t.path("other.toml"),
        config_text(&s.base_url(), &credential("other", &output("b.token", "raw"))),
    )
    .unwrap();
    let mut second = Daemon::spawn(t.command(&["run", "-c", t.path("other.toml").to_str().unwrap()]));
    let (status, _) = second.wait_exit(WAIT);
    let log = second.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("(pid {})", first.pid())),
        "names the holder's pid: {log}"
    );
    assert!(
        log.contains(&t.path("state").display().to_string()),
        "names the dir: {log}"
    );
    assert!(t.read("b.token").is_none(), "the second daemon wrote nothing");

    // `once` with only login tokens runs next to the daemon (tests/key_operations.rs: with keys it asks the daemon).
    let out = t.run(&["once", "-c", t.path("other.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    // Once the first has stopped, the lock is free again.
    stop(&mut first, Signal::SIGTERM);
    let mut third = Daemon::spawn(t.command(&["run", "-c", t.path("other.toml").to_str().unwrap()]));
    third.wait_log("voipbin-tokend started", 1, WAIT);
    stop(&mut third, Signal::SIGTERM);
}

// ---------------------------------------------------------------------------
// demo --dir does not overwrite a folder that holds something.

#[test]
fn demo_refuses_a_non_empty_dir_unless_forced() {
    let t = TestDir::new();
    let dir = t.path("mine");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), "# my real config\n").unwrap();
    let out = t.run(&["demo", "--lifetime", "2s", "--dir", dir.to_str().unwrap()]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("is not empty") && text.contains("--force"),
        "{text}"
    );
    assert!(text.contains(&dir.display().to_string()), "{text}");
    assert_eq!(
        std::fs::read_to_string(dir.join("config.toml")).unwrap(),
        "# my real config\n"
    );

    // --force: the demo runs there.
    let mut d = Daemon::spawn(t.command(&[
        "demo",
        "--lifetime",
        "2s",
        "--force",
        "--dir",
        dir.to_str().unwrap(),
    ]));
    wait_file(&dir.join("main.token"), WAIT, || d.log());
    stop(&mut d, Signal::SIGINT);
    assert_ne!(
        std::fs::read_to_string(dir.join("config.toml")).unwrap(),
        "# my real config\n"
    );
}

// ---------------------------------------------------------------------------
// status does not trust a pid that now belongs to another process.

#[test]
fn status_does_not_take_a_reused_pid_for_the_daemon() {
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("a.token", "raw")));
    let mut d = t.daemon();
    wait_for(
        WAIT,
        "a fresh credential in status.json",
        || {
            t.read("state/status.json")
                .is_some_and(|x| x.contains("\"expires_at\": \""))
        },
        || d.log(),
    );
    let cfg = t.config_path();
    let status = |t: &TestDir| t.run(&["status", "-c", cfg.to_str().unwrap()]);
    let out = status(&t);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    // The daemon dies without a word; another process gets "its" pid
    // (simulated: the status file is pointed at a live, unrelated process).
    d.signal(Signal::SIGKILL);
    d.wait_exit(WAIT);
    let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let mut file: serde_json::Value = serde_json::from_str(&t.read("state/status.json").unwrap()).unwrap();
    file["pid"] = other.id().into();
    std::fs::write(t.path("state/status.json"), file.to_string()).unwrap();

    let out = status(&t);
    let _ = other.kill();
    let _ = other.wait();
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("NOT RUNNING"), "{text}");
}

// ---------------------------------------------------------------------------
// The config watcher follows a replaced config directory.

#[test]
fn edits_in_a_replaced_config_directory_are_seen() {
    let s = standin(LONG);
    let t = TestDir::new();
    let abs = |n: &str| t.path(n).display().to_string();
    let text = |outputs: &[&str]| {
        let outs: String = outputs.iter().map(|o| output(&abs(o), "raw")).collect();
        config_api(
            &s.base_url(),
            "3s",
            0,
            &format!(
                "[state]\ndir = \"{}\"\n\n{}",
                abs("state"),
                cred("main", USER, &abs("password"), FAST_RETRY, &outs)
            ),
        )
    };
    let conf = t.path("conf");
    std::fs::create_dir(&conf).unwrap();
    let cfg = conf.join("config.toml");
    std::fs::write(&cfg, text(&["a.token"])).unwrap();
    let d = Daemon::spawn(t.command(&["run", "-c", cfg.to_str().unwrap()]));
    wait_file(&t.path("a.token"), WAIT, || d.log());

    // What a config-management tool may do: move the directory away, make
    // a new one, write the config into it.
    std::fs::rename(&conf, t.path("conf.old")).unwrap();
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(&cfg, text(&["a.token", "b.token"])).unwrap();
    wait_file(&t.path("b.token"), WAIT, || d.log());

    // And the new directory stays watched: a later edit is seen too.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&cfg, text(&["a.token", "b.token", "c.token"])).unwrap();
    wait_file(&t.path("c.token"), WAIT, || d.log());
    assert_eq!(
        s.logins_ok(),
        1,
        "new outputs get the current token without a login"
    );
}

#[test]
fn configmap_updates_log_one_config_reloaded_and_no_watcher_noise() {
    let s = standin(LONG);
    let t = TestDir::new();
    let abs = |n: &str| t.path(n).display().to_string();
    let text = |o: &str| {
        config_api(
            &s.base_url(),
            "3s",
            0,
            &format!(
                "[state]\ndir = \"{}\"\n\n{}",
                abs("state"),
                cred(
                    "main",
                    USER,
                    &abs("password"),
                    FAST_RETRY,
                    &output(&abs(o), "raw")
                )
            ),
        )
    };
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
    wait_file(&t.path("a.token"), WAIT, || d.log());

    for (v, out) in [(2, "a.token"), (3, "b.token"), (4, "b.token")] {
        let ts = version(v, text(out));
        std::os::unix::fs::symlink(&ts, cm.join("..data_tmp")).unwrap();
        std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
        std::fs::remove_dir_all(cm.join(&current)).unwrap();
        current = ts;
        if v == 3 {
            wait_file(&t.path("b.token"), WAIT, || d.log());
        }
        // Showing that nothing more is logged: give the watcher time.
        std::thread::sleep(Duration::from_millis(1000));
    }
    let log = d.log();
    assert_eq!(log.matches("config reloaded").count(), 1, "{log}");
    assert!(!log.contains(" WARN "), "{log}");
    assert!(!log.contains("watch"), "{log}");
}

#[test]
fn hooks_run_with_the_open_file_limit_the_daemon_started_with() {
    use nix::sys::resource::{Resource, setrlimit};
    use std::os::unix::process::CommandExt;
    let s = standin(LONG);
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &credential(
            "main",
            &output_with(
                "a.token",
                "raw",
                "on-change = [\"sh\", \"-c\", \"ulimit -n > hook.limit\"]\n",
            ),
        ),
    );
    let cfg = t.config_path();
    let mut cmd = t.command(&["run", "-c", cfg.to_str().unwrap()]);
    // SAFETY: only setrlimit, a plain system call, between fork and exec.
    unsafe {
        cmd.pre_exec(|| setrlimit(Resource::RLIMIT_NOFILE, 256, 4096).map_err(std::io::Error::from));
    }
    let mut d = Daemon::spawn(cmd);
    wait_for(
        WAIT,
        "the hook's limit in hook.limit",
        || t.read("hook.limit").is_some_and(|x| x.ends_with('\n')),
        || d.log(),
    );
    assert_eq!(
        open_file_limits(d.pid()),
        (4096, 4096),
        "the daemon raised its own"
    );
    assert_eq!(
        t.read("hook.limit").unwrap().trim(),
        "256",
        "the hook gets the original soft limit"
    );
    stop(&mut d, Signal::SIGTERM);
}
