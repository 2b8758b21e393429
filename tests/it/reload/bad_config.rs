//! A broken config on reload: logged once, with its key, and ignored until
//! fixed.

use std::time::Duration;

use super::{WAIT, reloads, replace_config, wait_token};
use crate::support::*;
use nix::sys::signal::Signal;

#[test]

fn broken_config_error_is_logged_once_not_over_and_over() {
    let s = standin(LONG);
    let t = TestDir::new();
    let base = s.base_url();
    t.write_config(&base, &credential("main", &output("a.token", "raw")));
    let d = t.daemon();
    wait_token(&t, "a.token", &d);
    let broken =
        credential("main", &output("a.token", "raw")).replace("retry-min", "renew-at = 0.99\nretry-min");
    replace_config(&t, &config_text(&base, &broken));
    d.wait_log("config reload failed", 1, WAIT);
    std::thread::sleep(Duration::from_millis(1500));
    let errors = d.log().matches("config reload failed").count();
    assert_eq!(errors, 1, "{errors} errors for one bad edit\n{}", d.log());
}

#[test]
fn broken_config_is_logged_with_its_key_and_ignored_until_fixed() {
    // Short tokens, so the old config visibly keeps renewing and writing.
    let s = standin(Duration::from_secs(3));
    let t = TestDir::new();
    let base = s.base_url();
    t.write_config(&base, &credential("main", &output("a.token", "raw")));
    let mut d = t.daemon();
    let first = wait_token(&t, "a.token", &d);

    // renew-at 0.99 is out of range; the same edit also adds an output.
    let broken = credential("main", &(output("a.token", "raw") + &output("b.token", "raw")))
        .replace("retry-min", "renew-at = 0.99\nretry-min");
    replace_config(&t, &config_text(&base, &broken));
    d.wait_log("config reload failed; keeping the last good config", 1, WAIT);
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("config reload failed"))
        .unwrap()
        .to_string();
    assert!(line.contains("credential[main].renew-at"), "{line}");
    assert!(line.contains("config.toml"), "names the file: {line}");
    assert!(line.contains("ERROR"), "{line}");

    // Still running on the old config: renews and writes a.token, not b.token.
    let logins = s.logins_ok();
    wait_for(
        WAIT,
        "a renewal written under the old config",
        || {
            t.read("a.token")
                .and_then(|x| token_in(&x))
                .is_some_and(|x| x != first)
                && s.logins_ok() > logins
        },
        || d.log(),
    );
    assert!(!t.path("b.token").exists());
    assert_eq!(reloads(&d), 0);
    assert!(d.exited.is_none());

    // The fix applies.
    let fixed = credential("main", &(output("a.token", "raw") + &output("b.token", "raw")))
        .replace("retry-min", "renew-at = 0.7\nretry-min");
    replace_config(&t, &config_text(&base, &fixed));
    d.wait_log("config reloaded", 1, WAIT);
    let b = wait_file(&t.path("b.token"), WAIT, || d.log());
    assert!(token_in(&b).is_some());
    d.signal(Signal::SIGTERM);
    let (status, _) = d.wait_exit(WAIT);
    assert!(status.success(), "{status:?}");
}
