//! Broken output directories (a full disk, unwritable, created later) and
//! hostile files in them (symlinks, planted temp files).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{WAIT, both, wait_new_token};
use crate::support::*;
use nix::sys::signal::Signal;

/// Names in `dir` that start with a dot (temp files).
fn dot_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// A tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
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
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Fills the filesystem of `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![b'x'; 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    p
}

#[test]
fn a_full_disk_keeps_the_old_file_whole_leaves_no_temp_and_other_outputs_are_written() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let full = t.path("full");
    let _mounted = match Tmpfs::mount(&full, "16k") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: a full disk needs a small tmpfs and this sandbox refuses it: {e}");
            return;
        }
    };
    let outputs = output("full/main.json", "json") + &output("main.token", "raw");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());
    let old_json = wait_file(&full.join("main.json"), WAIT, || d.log());
    let filler = fill(&full);

    d.signal(Signal::SIGUSR1);
    let new = wait_new_token(&s, &t, "main.token", &good, &d);
    d.wait_log("No space left on device", 1, WAIT);
    // Retried with backoff, without logging in again.
    wait_for(
        WAIT,
        "three failed writes",
        || d.log().matches("No space left on device").count() >= 3,
        || d.log(),
    );
    let log = d.log();
    assert_eq!(s.logins_ok(), 2, "a failed write made it log in again");
    let line = log
        .lines()
        .find(|l| l.contains("No space left on device"))
        .unwrap();
    eprintln!("disk full: {line}");
    assert!(
        line.contains(&full.display().to_string()) && line.contains("main.json"),
        "the error does not name the output: {line}"
    );
    assert_eq!(
        std::fs::read_to_string(full.join("main.json")).unwrap(),
        old_json,
        "the old file did not stay whole"
    );
    assert!(
        dot_files(&full).is_empty(),
        "temp files left: {:?}",
        dot_files(&full)
    );
    assert_eq!(t.read("main.token").as_deref(), Some(new.as_str()));

    // Space again: the retry writes the new token.
    std::fs::remove_file(filler).unwrap();
    wait_for(
        WAIT,
        "the new token in the JSON output",
        || {
            token_in(&std::fs::read_to_string(full.join("main.json")).unwrap_or_default()).as_deref()
                == Some(new.as_str())
        },
        || d.log(),
    );
    assert!(dot_files(&full).is_empty());
    assert_eq!(s.logins_ok(), 2);
}

/// `chattr +i` on a directory, undone on drop.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Result<Immutable, String> {
        let out = Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run chattr: {e}"))?;
        if !out.status.success() {
            return Err(format!("chattr +i failed: {}", both(&out).trim()));
        }
        Ok(Immutable(dir.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).output();
    }
}

#[test]
fn an_unwritable_output_directory_fails_that_output_by_name_and_heals_when_writable() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let locked = t.path("locked");
    std::fs::create_dir(&locked).unwrap();
    let outputs = output("locked/main.token", "raw") + &output("main.env", "env");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let d = t.daemon();
    let good = wait_file(&locked.join("main.token"), WAIT, || d.log());
    wait_file(&t.path("main.env"), WAIT, || d.log());

    let guard = match Immutable::set(&locked) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("SKIPPED: an unwritable directory as root needs chattr +i, refused here: {e}");
            return;
        }
    };
    d.signal(Signal::SIGUSR1);
    wait_for(
        WAIT,
        "the new token in main.env",
        || {
            t.read("main.env")
                .and_then(|x| token_in(&x))
                .is_some_and(|x| x != good)
        },
        || d.log(),
    );
    d.wait_log("cannot create a temp file beside", 2, WAIT);
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("cannot create a temp file beside"))
        .unwrap();
    eprintln!("unwritable directory: {line}");
    assert!(
        line.contains(&locked.display().to_string()),
        "the error does not name the directory: {line}"
    );
    assert_eq!(std::fs::read_to_string(locked.join("main.token")).unwrap(), good);
    assert_eq!(s.logins_ok(), 2, "a failed write made it log in again");

    drop(guard);
    let new = token_in(&t.read("main.env").unwrap()).unwrap();
    wait_for(
        WAIT,
        "the new token in the unlocked output",
        || std::fs::read_to_string(locked.join("main.token")).ok().as_deref() == Some(new.as_str()),
        || d.log(),
    );
    assert!(dot_files(&locked).is_empty());
}

#[test]
fn an_output_directory_created_later_is_written_by_the_retries() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let outputs = output("later/main.token", "raw") + &output("main.token", "raw");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let d = t.daemon();
    let tok = wait_file(&t.path("main.token"), WAIT, || d.log());
    d.wait_log("does not exist", 2, WAIT);
    std::fs::create_dir(t.path("later")).unwrap();
    wait_for(
        WAIT,
        "the token in later/main.token",
        || t.read("later/main.token").as_deref() == Some(tok.as_str()),
        || d.log(),
    );
    assert_eq!(s.login_requests(), 1, "a failed write made it log in again");
}

#[test]
fn a_symlinked_output_is_replaced_by_a_file_and_the_link_target_is_untouched() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    std::fs::write(t.path("victim"), "VICTIM").unwrap();
    std::os::unix::fs::symlink(t.path("victim"), t.path("main.token")).unwrap();
    std::os::unix::fs::symlink(t.path("nowhere"), t.path("dangling.token")).unwrap();
    let outputs = output("main.token", "raw") + &output("dangling.token", "raw");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let d = t.daemon();
    let tok = wait_file(&t.path("main.token"), WAIT, || d.log());
    wait_file(&t.path("dangling.token"), WAIT, || d.log());
    for name in ["main.token", "dangling.token"] {
        let meta = std::fs::symlink_metadata(t.path(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is still a link");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(t.read(name).as_deref(), Some(tok.as_str()));
    }
    assert_eq!(t.read("victim").as_deref(), Some("VICTIM"));
    assert!(
        !t.path("nowhere").exists(),
        "the dangling link's target was created"
    );
}

#[test]
fn planted_temp_files_are_removed_at_start_and_never_reused() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    std::fs::write(t.path("victim"), "VICTIM").unwrap();
    std::fs::write(t.path(".main.token.tmp-1-0000000000000000"), "PLANTED").unwrap();
    std::os::unix::fs::symlink(t.path("victim"), t.path(".main.token.tmp-evil")).unwrap();
    t.write_config(&s.base_url(), &credential("main", &output("main.token", "raw")));
    let d = t.daemon();
    let good = wait_file(&t.path("main.token"), WAIT, || d.log());
    d.wait_log("removed temp files left by an earlier run", 1, WAIT);
    assert!(d.log().contains("removed=2"), "{}", d.log());
    assert!(dot_files(t.dir.path()).is_empty(), "{:?}", t.entries());
    assert_eq!(t.read("victim").as_deref(), Some("VICTIM"));

    // Planted while it runs, under names a writer might pick: not reused.
    let pid = d.pid();
    let planted = [
        format!(".main.token.tmp-{pid}-0000000000000000"),
        format!(".main.token.tmp-{pid}-ffffffffffffffff"),
    ];
    for p in &planted {
        std::fs::write(t.path(p), "PLANTED").unwrap();
    }
    d.signal(Signal::SIGUSR1);
    wait_new_token(&s, &t, "main.token", &good, &d);
    for p in &planted {
        assert_eq!(t.read(p).as_deref(), Some("PLANTED"), "{p} was reused");
    }
    assert_eq!(t.read("victim").as_deref(), Some("VICTIM"));
}
