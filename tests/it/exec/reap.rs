//! The daemon is a child subreaper: descendants orphaned by the child are
//! reparented to it and reaped (no zombies), and its own hooks still get
//! their exit status.

use super::*;

/// Starts three grandchildren (`sleep 4`) through a shell that exits at
/// once, so they are orphaned; their pids go to g1.pid .. g3.pid.
const ORPHANS: &str = r#"
for i in 1 2 3; do
  sh -c 'sleep 4 > /dev/null 2>&1 & echo $! > "$1.tmp"; mv "$1.tmp" "$1"' sh "$D/g$i.pid"
done
trap 'echo "stop $$" >> "$D/child.log"; exit 0' TERM INT
echo "start $$" >> "$D/child.log"
while :; do sleep 0.2; done
"#;

#[test]
fn grandchildren_orphaned_by_the_child_are_reparented_to_the_daemon_and_reaped() {
    let s = standin(LONG);
    let e = ExecDir::new();
    e.t.write_config(
        &s.base_url(),
        &token_cred("main", "", &output("main.token", "raw")),
    );
    e.child(ORPHANS);
    let mut d = e.daemon(&[]);
    let pid = e.wait_starts(1, &d)[0];

    let gpids: Vec<i32> = (1..=3)
        .map(|i| {
            e.t.read(&format!("g{i}.pid"))
                .expect("the child wrote the grandchild's pid before its start record")
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    // While they sleep, their parent is the daemon (not init, not the child).
    for g in &gpids {
        wait_for(
            WAIT,
            &format!("grandchild {g} under the daemon {}", d.pid()),
            || ppid_of(*g) == Some(d.pid()) && alive(*g),
            || {
                format!(
                    "parent {:?} state {:?} (child {pid})\n{}",
                    ppid_of(*g),
                    proc_state(*g),
                    e.context(&d)
                )
            },
        );
    }
    // Once they end they are reaped: gone, not zombies.
    for g in &gpids {
        wait_for(
            WAIT,
            &format!("grandchild {g} reaped"),
            || proc_state(*g).is_none(),
            || format!("state {:?}\n{}", proc_state(*g), e.context(&d)),
        );
    }
    assert!(alive(pid), "the child runs on");
    assert_eq!(e.starts(), vec![pid]);

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}

#[test]
fn hooks_still_get_their_exit_status_beside_the_subreaper() {
    let s = standin(LONG);
    let e = ExecDir::new();
    let out = output_with(
        "main.token",
        "raw",
        "on-change = [\"/bin/sh\", \"-c\", \"sleep 0.2; exit 0\"]",
    );
    e.t.write_config(&s.base_url(), &token_cred("main", "", &out));
    e.child(STANDARD);
    let mut d = e.daemon(&[]);
    e.wait_starts(1, &d);
    d.wait_log("on-change command succeeded", 1, WAIT);
    d.signal(Signal::SIGUSR1);
    e.wait_starts(2, &d);
    d.wait_log("on-change command succeeded", 2, WAIT);
    let log = d.log();
    assert!(!log.contains("wait failed"), "{log}");
    assert!(!log.contains("on-change command failed"), "{log}");

    assert_eq!(stop_with(&mut d, Signal::SIGTERM), Some(0), "{}", e.context(&d));
    assert_log_clean(&d, &s);
}
