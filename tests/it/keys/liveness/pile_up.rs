//! Keys the server made that are not used do not pile up: keys answered
//! already expired, keys not savable on a full disk, and the cap on live
//! keys per installation.

use std::time::{Duration, Instant};

use crate::support::*;
use nix::sys::signal::Signal;

use super::WAIT;

// ---------------------------------------------------------------------------
// Item 10 and the cap: keys made but not used do not pile up.

/// Samples the live keys named `name` for `secs` seconds; returns the most seen.
fn most_live(s: &StandIn, name: &str, secs: u64) -> usize {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut most = 0;
    while Instant::now() < until {
        most = most.max(s.live_keys_named(name));
        std::thread::sleep(Duration::from_millis(50));
    }
    most
}

#[test]
fn keys_answered_already_expired_are_deleted_at_once_and_do_not_pile_up() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    // Every creation for a while: a live key, answered as expired.
    s.script_key_creations(std::iter::repeat_n(Fault::ExpiredAnswer, 1000));
    let d = t.daemon();
    d.wait_log("already expired", 1, WAIT);
    let name = my_key_name(&t);
    let most = most_live(&s, &name, 8);
    let made = posts(&s);
    assert!(made >= 4, "retried: {made} creations\n{}", d.log());
    assert!(
        most <= 1,
        "{most} live unused keys at once ({made} made)\n{:#?}\n{}",
        s.keys(),
        d.log()
    );
    wait_for(
        WAIT,
        "every unused key deleted",
        || s.live_keys_named(&name) == 0,
        || d.log(),
    );
    assert!(d.log().contains("not used"), "{}", d.log());
    assert!(env_key(&t, "mcp.env").is_none_or(|k| k == boot));
}

/// A tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", both(&out).trim()));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .output();
    }
}

/// Fills the filesystem of `dir` with one file.
fn fill(dir: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![b'x'; 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_state_that_cannot_be_saved_makes_no_keys_and_none_pile_up() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    let _mounted = match Tmpfs::mount(&t.path("state"), "64k") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: a full disk needs a small tmpfs and this sandbox refuses it: {e}");
            return;
        }
    };
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    let name = my_key_name(&t);
    wait_for(
        WAIT,
        "the bootstrap key's deletion done",
        || state_json(&t)["pending_deletions"].as_array().unwrap().is_empty(),
        || d.log(),
    );
    fill(&t.path("state"));
    let made = posts(&s);
    d.signal(Signal::SIGUSR1);
    // A creation's nonce is on disk before its POST. The first one's was
    // recorded by the last save that worked, so that one creation is
    // made; its key cannot be saved and is deleted at once. Every later
    // creation must save its nonce first: with the state unwritable,
    // nothing more is asked of the server.
    d.wait_log("the key state cannot be saved, so no key was made", 3, WAIT);
    let most = most_live(&s, &name, 8);
    let tried = posts(&s) - made;
    assert!(
        tried <= 1,
        "{tried} creations with an unwritable state\n{}",
        d.log()
    );
    assert!(
        most <= 2,
        "{most} live keys at once ({tried} made)\n{:#?}\n{}",
        s.keys(),
        d.log()
    );
    assert_eq!(
        env_key(&t, "mcp.env").unwrap(),
        k1,
        "the saved key stays published"
    );
    wait_for(
        WAIT,
        "only the published key alive",
        || s.live_keys_named(&name) == 1,
        || d.log(),
    );
}

#[test]
fn forced_rotations_stop_at_the_cap_on_live_keys() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    // Replaced keys are left to expire (30 days): each rotation adds one.
    t.write_config(
        &s.base_url(),
        &key_cred(
            "renew-at = 0.9\ndelete-replaced = false",
            &output("mcp.env", "env"),
        )
        .replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let d = t.daemon();
    let mut seen = vec![boot.clone()];
    seen.push(wait_env_key(&t, "mcp.env", &[&boot], &d));
    for _ in 0..8 {
        let before = posts(&s);
        let refusals = d.log().matches("live keys").count();
        d.signal(Signal::SIGUSR1);
        wait_for(
            WAIT,
            "a rotation or a refusal",
            || posts(&s) > before || d.log().matches("live keys").count() > refusals,
            || d.log(),
        );
        if posts(&s) > before {
            let not: Vec<&str> = seen.iter().map(String::as_str).collect();
            seen.push(wait_env_key(&t, "mcp.env", &not, &d));
        }
    }
    let name = my_key_name(&t);
    let live = s.live_keys_named(&name);
    assert!(
        live <= 5,
        "{live} live keys of this installation (the cap is 5, the bootstrap key counts)\n{}",
        d.log()
    );
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("live keys"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(line.contains("ERROR") && line.contains("mcp"), "{line}");
}
