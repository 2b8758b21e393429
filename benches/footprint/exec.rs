//! The `exec` section: `voipbin-tokend exec` running a child script, its
//! login token renewed every few seconds; from each rotation (the new token
//! in the env output) to the new child running, less the old child's own
//! stop time (SIGTERM received to exit), with and without the 1 s debounce
//! the daemon applies by design.
//!
//! The child writes its own timestamps (wall clock, `date +%s.%N`): when it
//! runs, when SIGTERM reaches it, and just before it exits. The bench polls
//! the output every millisecond for the rotations, as in `renewal`.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use voipbin_tokend_testkit::poll;

use crate::fixtures::{BenchDir, credential, standin};
use crate::measure::Bench;
use crate::report::{Row, Stats};
use crate::scenarios::watch_changes;
use crate::{Mode, Res};

/// The stand-in's token lifetime: renewed at half of it, so rotations come
/// 3 s apart, well clear of the debounce and the restart after it.
const LIFETIME: Duration = Duration::from_secs(6);
/// The daemon coalesces changes within this into one restart (by design).
const DEBOUNCE: Duration = Duration::from_secs(1);
/// What the daemon may add to the debounce, stop and start aside.
const TARGET: Duration = Duration::from_millis(100);

/// The child: a line when it runs, one when SIGTERM arrives, one just
/// before it exits. Its sleep is killed on the way out, so nothing is left
/// behind (the daemon, a subreaper, would reap it anyway).
const CHILD: &str = r#"#!/bin/sh
log=$1
echo "start $$ $(date +%s.%N)" >> "$log"
trap 'echo "term $$ $(date +%s.%N)" >> "$log"; kill "$sleeper" 2>/dev/null; echo "exit $$ $(date +%s.%N)" >> "$log"; exit 0' TERM
while :; do
  sleep 60 &
  sleeper=$!
  wait "$sleeper"
done
"#;

/// One child's life, from its log lines.
struct Life {
    pid: u32,
    start: SystemTime,
    term: Option<SystemTime>,
    exit: Option<SystemTime>,
}

pub(crate) fn exec(mode: &Mode, bin: &Path) -> Res<Vec<Row>> {
    eprintln!(
        "footprint: exec, a child restarted on each token rotation for {:?}",
        mode.renew
    );
    let server = standin(LIFETIME, 1)?;
    let dir = BenchDir::new(
        &server.base_url(),
        &[credential(0, &[("main.env", "env")], 0.5, 0.0)],
    )?;
    let script = dir.path("child.sh");
    fs::write(&script, CHILD)?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    let log = dir.path("child.log");
    let daemon = Bench::spawn_exec(
        bin,
        &dir,
        &[OsStr::new("--"), script.as_os_str(), log.as_os_str()],
    )?;
    let started = || fs::read_to_string(&log).is_ok_and(|l| l.starts_with("start "));
    if poll(Duration::from_secs(10), Duration::from_millis(5), started).is_none() {
        return Err(format!(
            "the first child did not start within 10 s; the daemon's log:\n{}",
            daemon.log()
        )
        .into());
    }
    // Watched up to the stop: every restart's rotation is seen.
    let changes = watch_changes(&dir.path("out/main.env"), mode.renew);
    let daemon_log = daemon.log();
    daemon.stop()?;
    let lives = parse(&fs::read_to_string(&log)?)?;
    let logins: Vec<SystemTime> = server
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/auth/login" && r.status == 200)
        .map(|r| r.at)
        .collect();

    let mut total = Vec::new();
    let mut spawn = Vec::new();
    let mut stops = Vec::new();
    let mut login_to_output = Vec::new();
    let (mut overlaps, mut unexplained) = (0, 0);
    for pair in lives.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        let (Some(term), Some(exit)) = (old.term, old.exit) else {
            // The old child was never asked to stop, or never said it exited.
            overlaps += 1;
            continue;
        };
        if new.start < exit {
            overlaps += 1;
            continue;
        }
        // The rotation: the last change of the output before the stop signal,
        // made while the old child ran.
        let Some(change) = changes.iter().filter(|c| **c <= term).max() else {
            unexplained += 1;
            continue;
        };
        if *change < old.start {
            unexplained += 1;
            continue;
        }
        let stop = since(exit, term);
        stops.push(stop);
        total.push(since(new.start, *change).saturating_sub(stop));
        spawn.push(since(new.start, exit));
        if let Some(login) = logins.iter().filter(|l| *l <= change).max() {
            login_to_output.push(since(*change, *login));
        }
    }
    if total.is_empty() {
        return Err(format!(
            "no restart on rotation in {:?} ({} rotations, {} children); the daemon's log:\n{daemon_log}",
            mode.renew,
            changes.len(),
            lives.len()
        )
        .into());
    }
    let restarts = total.len();
    let without: Vec<Duration> = total.iter().map(|t| t.saturating_sub(DEBOUNCE)).collect();
    let (total, without) = (Stats::of(total), Stats::of(without));
    let (spawn, stops, login_to_output) = (Stats::of(spawn), Stats::of(stops), Stats::of(login_to_output));
    let one_at_a_time = overlaps == 0 && unexplained == 0;
    let children = if one_at_a_time {
        "one child at a time".to_owned()
    } else {
        format!("{overlaps} overlapping, {unexplained} without a rotation")
    };
    Ok(vec![
        Row::new(
            "exec: rotation (new token in the output) to the new child running, less the old child's stop time",
            "< 1 s debounce + 100 ms",
        )
        .measured(format!(
            "{}; {restarts} restarts for {} rotations in {} s, {children}; \
             the old child's own stop (SIGTERM to exit) {}; login request to output {}",
            total.ms(),
            changes.len(),
            mode.renew.as_secs(),
            stops.ms(),
            login_to_output.ms()
        ))
        .pass(total.median < DEBOUNCE + TARGET && one_at_a_time),
        Row::new(
            "exec: the same without the 1 s debounce",
            "< 100 ms",
        )
        .measured(format!(
            "{}; of which old child gone to new child running {}",
            without.ms(),
            spawn.ms()
        ))
        .pass(without.median < TARGET && one_at_a_time),
    ])
}

/// `since(later, earlier)`, zero if the clock says otherwise.
fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

/// The child's log: `start|term|exit PID SECONDS.NANOS` lines, in order.
fn parse(text: &str) -> Res<Vec<Life>> {
    let mut lives: Vec<Life> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(what), Some(pid), Some(at)) = (f.next(), f.next(), f.next()) else {
            return Err(format!("a bad line in the child's log: {line:?}").into());
        };
        let pid: u32 = pid.parse()?;
        let at = stamp(at).ok_or_else(|| format!("a bad time in the child's log: {line:?}"))?;
        match what {
            "start" => lives.push(Life {
                pid,
                start: at,
                term: None,
                exit: None,
            }),
            "term" | "exit" => {
                let life = lives
                    .iter_mut()
                    .rev()
                    .find(|l| l.pid == pid)
                    .ok_or_else(|| format!("{what} of a child never started: {line:?}"))?;
                if what == "term" {
                    life.term.get_or_insert(at);
                } else {
                    life.exit = Some(at);
                }
            }
            _ => return Err(format!("a bad line in the child's log: {line:?}").into()),
        }
    }
    Ok(lives)
}

/// `date +%s.%N` as a time.
fn stamp(s: &str) -> Option<SystemTime> {
    let (secs, nanos) = s.split_once('.')?;
    let nanos = format!("{nanos:0<9}");
    Some(UNIX_EPOCH + Duration::new(secs.parse().ok()?, nanos.get(..9)?.parse().ok()?))
}
