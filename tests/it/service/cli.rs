//! The CLI's help, completions and man page.

use super::both;
use crate::support::*;

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
