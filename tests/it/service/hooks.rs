//! On-change hooks: commands and signals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{WAIT, expiry_of, free_port, get, health_section, metric, stop, wait_metric, wait_renewed};
use crate::support::*;
use nix::sys::signal::Signal;

fn lines(t: &TestDir, name: &str) -> Vec<String> {
    t.read(name)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

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
    // The error itself says "cannot read pid file ..." too: count the
    // message (followed by its fields), once a line, or the second wait
    // would pass on the first line and the second hook could still read
    // the pid file the app below writes (an extra SIGHUP).
    let missing = "cannot read pid file error=";
    wait_renewed(&s, &t, "main.token", 1, &d);
    d.wait_log(missing, 1, WAIT);
    d.signal(Signal::SIGUSR1);
    wait_renewed(&s, &t, "main.token", 2, &d);
    d.wait_log(missing, 2, WAIT);

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
