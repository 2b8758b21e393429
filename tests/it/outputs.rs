//! What the output files hold, their modes, atomic replacement, and a
//! missing output directory.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const TEMPLATE: &str = "Authorization: Bearer {token}\\nexpires={expires_at} unix={expires_at_unix} user={username} credential={credential} {{literal}}\\n";

#[test]
fn every_format_holds_exactly_what_the_interface_says_with_its_mode() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let outputs = [
        output("t.raw", "raw"),
        output("t.env", "env"),
        output("t.sh", "shell"),
        output_with("t.json", "json", "mode = \"0640\"\n"),
        output_with("t.tpl", "template", &format!("template = \"{TEMPLATE}\"\n")),
        output_with("v.env", "env", "variable = \"API_TOKEN\"\n"),
        output_with("v.sh", "shell", "variable = \"API_TOKEN\"\nmode = \"0644\"\n"),
    ]
    .concat();
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let started = OffsetDateTime::now_utc();
    let out = t.run(&["once", "-c", t.config_path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(s.logins_ok(), 1);
    let token = s.issued_tokens().pop().unwrap();
    let expire = expire_of(&token);
    let exp = rfc3339_secs(expire);

    // raw: the token, exactly, no newline.
    assert_eq!(t.read("t.raw").unwrap(), token);

    // env: two lines.
    assert_eq!(
        t.read("t.env").unwrap(),
        format!("VOIPBIN_TOKEN={token}\nVOIPBIN_TOKEN_EXPIRES_AT={exp}\n")
    );
    assert_eq!(sh(&t, "set -a; . ./t.env; printf %s \"$VOIPBIN_TOKEN\""), token);

    // shell: export lines a shell reads back.
    assert_eq!(
        t.read("t.sh").unwrap(),
        format!("export VOIPBIN_TOKEN='{token}'\nexport VOIPBIN_TOKEN_EXPIRES_AT='{exp}'\n")
    );
    assert_eq!(sh(&t, ". ./t.sh; printf %s \"$VOIPBIN_TOKEN\""), token);
    assert_eq!(sh(&t, ". ./t.sh; printf %s \"$VOIPBIN_TOKEN_EXPIRES_AT\""), exp);

    // json: the five fields.
    let j: serde_json::Value = serde_json::from_str(&t.read("t.json").unwrap()).unwrap();
    assert_eq!(j["credential"], "main");
    assert_eq!(j["username"], USER);
    assert_eq!(j["token"], token.as_str());
    assert_eq!(j["expires_at"], exp.as_str());
    let obtained = OffsetDateTime::parse(j["obtained_at"].as_str().unwrap(), &Rfc3339).unwrap();
    let now = OffsetDateTime::now_utc();
    assert!(
        obtained >= started - time::Duration::seconds(1) && obtained <= now,
        "obtained_at {obtained} not between {started} and {now}"
    );

    // template: every placeholder, and {{ }} for literal braces.
    assert_eq!(
        t.read("t.tpl").unwrap(),
        format!(
            "Authorization: Bearer {token}\nexpires={exp} unix={} user={USER} credential=main {{literal}}\n",
            expire.unix_timestamp()
        )
    );

    // variable renames the variable and its _EXPIRES_AT companion.
    assert_eq!(
        t.read("v.env").unwrap(),
        format!("API_TOKEN={token}\nAPI_TOKEN_EXPIRES_AT={exp}\n")
    );
    assert_eq!(
        t.read("v.sh").unwrap(),
        format!("export API_TOKEN='{token}'\nexport API_TOKEN_EXPIRES_AT='{exp}'\n")
    );
    assert_eq!(sh(&t, ". ./v.sh; printf %s \"$API_TOKEN\""), token);

    // Modes: 0600 unless configured.
    for f in ["t.raw", "t.env", "t.sh", "t.tpl", "v.env"] {
        assert_eq!(mode_of(&t.path(f)), 0o600, "{f}");
    }
    assert_eq!(mode_of(&t.path("t.json")), 0o640);
    assert_eq!(mode_of(&t.path("v.sh")), 0o644);
    assert!(dot_files(&t).is_empty(), "{:?}", t.entries());
}

#[test]
fn the_configured_mode_is_applied_on_every_write() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &credential("main", &output_with("main.token", "raw", "mode = \"0640\"\n")),
    );
    // A file already there with a wider mode.
    std::fs::write(t.path("main.token"), "old").unwrap();
    std::fs::set_permissions(
        t.path("main.token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let out = t.run(&["once", "-c", t.config_path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(mode_of(&t.path("main.token")), 0o640);
    assert_eq!(t.read("main.token"), s.issued_tokens().pop());
}

#[test]
fn the_expiry_written_comes_from_the_token_in_every_claim_style() {
    for style in [
        ClaimStyle::Expire,
        ClaimStyle::ExpireLegacy,
        ClaimStyle::Exp,
        ClaimStyle::NoExpiry,
    ] {
        // 50 minutes: unlike the 7-day default of a token without expiry.
        let s = standin_styled(Duration::from_secs(3000), style);
        let t = TestDir::new();
        t.write_config(&s.base_url(), &credential("main", &output("main.env", "env")));
        let out = t.run(&["once", "-c", t.config_path().to_str().unwrap()]);
        assert!(out.status.success(), "{style:?}: {}", both(&out));
        let token = s.issued_tokens().pop().unwrap();
        let env = t.read("main.env").unwrap();
        let written = env
            .lines()
            .find_map(|l| l.strip_prefix("VOIPBIN_TOKEN_EXPIRES_AT="))
            .expect("an expiry line");
        let written = OffsetDateTime::parse(written, &Rfc3339).unwrap();
        match expiry_of(&token) {
            Some(e) => assert_eq!(rfc3339_secs(written), rfc3339_secs(e), "{style:?}"),
            None => {
                // No claim: 7 days from when it was obtained.
                let week = OffsetDateTime::now_utc() + time::Duration::days(7);
                assert!(
                    (week - written).abs() < time::Duration::seconds(30),
                    "{style:?}: {written}"
                );
            }
        }
    }
}

/// Reads `path` in a tight loop until told to stop. Returns every
/// distinct content seen (in order of first sight) and the number of
/// reads; a missing or empty file is recorded as a problem.
fn tight_reader(
    path: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
) -> std::thread::JoinHandle<(Vec<String>, Vec<String>)> {
    std::thread::spawn(move || {
        let mut seen: Vec<String> = Vec::new();
        let mut set = HashSet::new();
        let mut problems = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match std::fs::read_to_string(&path) {
                Ok(text) if text.is_empty() => problems.push("empty file".to_string()),
                Ok(text) => {
                    if set.insert(text.clone()) {
                        seen.push(text);
                    }
                }
                Err(e) => problems.push(format!("read failed: {e}")),
            }
            reads.fetch_add(1, Ordering::Relaxed);
        }
        (seen, problems)
    })
}

#[test]
fn readers_never_see_a_missing_empty_or_partial_file_across_many_rotations() {
    let s = standin(Duration::from_secs(1));
    let t = TestDir::new();
    let outputs = output("main.token", "raw") + &output("main.json", "json");
    t.write_config(
        &s.base_url(),
        &cred(
            "main",
            USER,
            "password",
            &format!("renew-at = 0.5\njitter = 0.0\n{FAST_RETRY}"),
            &outputs,
        ),
    );
    let mut d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    wait_file(&t.path("main.json"), WAIT, || d.log());

    let stop_flag = Arc::new(AtomicBool::new(false));
    let (raw_reads, json_reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let raw = tight_reader(t.path("main.token"), stop_flag.clone(), raw_reads.clone());
    let json = tight_reader(t.path("main.json"), stop_flag.clone(), json_reads.clone());
    let logins_before = s.logins_ok();
    // ~6 s of 1 s tokens renewed at half-life: about 12 rotations. Wait
    // for at least 10 rather than a fixed time, with a generous cap.
    let start = std::time::Instant::now();
    wait_for(
        Duration::from_secs(30),
        "10 rotations",
        || s.logins_ok() >= logins_before + 10 && start.elapsed() >= Duration::from_secs(6),
        || d.log(),
    );
    stop_flag.store(true, Ordering::SeqCst);
    let (raw_seen, raw_problems) = raw.join().unwrap();
    let (json_seen, json_problems) = json.join().unwrap();
    let rotations = s.logins_ok() - logins_before;
    let (rr, jr) = (
        raw_reads.load(Ordering::SeqCst),
        json_reads.load(Ordering::SeqCst),
    );
    eprintln!(
        "atomicity: {rotations} rotations in {:.1} s; raw: {rr} reads, {} distinct tokens; json: {jr} reads, {} distinct contents; problems: raw {}, json {}",
        start.elapsed().as_secs_f64(),
        raw_seen.len(),
        json_seen.len(),
        raw_problems.len(),
        json_problems.len()
    );
    assert!(
        raw_problems.is_empty(),
        "raw reader: {:?}",
        &raw_problems[..raw_problems.len().min(5)]
    );
    assert!(
        json_problems.is_empty(),
        "json reader: {:?}",
        &json_problems[..json_problems.len().min(5)]
    );

    let issued: HashSet<String> = s.issued_tokens().into_iter().collect();
    for x in &raw_seen {
        assert!(
            issued.contains(x),
            "raw reader saw a partial or foreign file ({} bytes)",
            x.len()
        );
    }
    for x in &json_seen {
        let v: serde_json::Value =
            serde_json::from_str(x).unwrap_or_else(|e| panic!("json reader saw invalid JSON: {e}"));
        let tok = v["token"].as_str().unwrap_or_default();
        assert!(issued.contains(tok), "json reader saw a token never issued");
    }
    assert!(rotations >= 8, "only {rotations} rotations");
    assert!(
        raw_seen.len() >= 8,
        "raw reader saw only {} tokens",
        raw_seen.len()
    );
    assert!(
        json_seen.len() >= 8,
        "json reader saw only {} contents",
        json_seen.len()
    );

    stop(&mut d, Signal::SIGTERM);
    assert_eq!(dot_files(&t), Vec::<String>::new(), "temp files left");
}

#[test]
fn a_missing_output_directory_is_named_and_not_created_and_other_outputs_are_written() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let outputs = output("nodir/main.token", "raw") + &output("main.env", "env");
    t.write_config(&s.base_url(), &credential("main", &outputs));
    let missing = t.path("nodir");

    // once: exit 1, names the directory, writes the other output.
    let out = t.run(&["once", "-c", t.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        both(&out).contains(&missing.display().to_string()),
        "{}",
        both(&out)
    );
    assert!(
        t.read("main.env")
            .is_some_and(|x| x.contains("VOIPBIN_TOKEN=eyJ"))
    );
    assert!(!missing.exists(), "the directory was created");

    // run: the same, and it keeps going.
    std::fs::remove_file(t.path("main.env")).unwrap();
    let mut d = t.daemon();
    wait_file(&t.path("main.env"), WAIT, || d.log());
    let needle = format!("directory {} does not exist", missing.display());
    d.wait_log(&needle, 1, WAIT);
    assert!(!missing.exists(), "the directory was created");
    stop(&mut d, Signal::SIGTERM);
    assert!(dot_files(&t).is_empty(), "{:?}", t.entries());
}
