//! Access keys (`kind = "access-key"`), end to end: the binary against the
//! stand-in's key API, with a key time scale so that a day of key lifetime
//! lasts seconds. Each test checks the files and the server's view: which
//! keys exist, which were deleted, how every call authenticated.

use std::time::{Duration, SystemTime};

use crate::support::*;
use nix::sys::signal::Signal;
use voipbin_tokend_standin::{AuthVia, KeyInfo, PERMISSION_CUSTOMER_AGENT};

/// The wait of `wait_env_key`.
const WAIT: Duration = SLOW_WAIT;

#[test]
fn self_rotation_from_a_bootstrap_key_writes_every_format_and_retires_every_replaced_key() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    let outputs = [
        output("mcp.key", "raw"),
        output("mcp.env", "env"),
        output("mcp.sh", "shell"),
        output("mcp.json", "json"),
        output_with("mcp.tpl", "template", "template = \"{id} {token} {expires_at}\""),
    ]
    .concat();
    t.write_config(&s.base_url(), &key_cred("renew-at = 0.5", &outputs));
    let d = daemon_with(&t, "voipbin_tokend=trace", &[]);

    // The bootstrap key is replaced at once by a key of this installation.
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    wait_for(WAIT, "every output", || t.read("mcp.tpl").is_some(), || d.log());
    assert_eq!(t.read("mcp.key").unwrap(), k1, "raw is the key exactly");
    let sh_text = t.read("mcp.sh").unwrap();
    assert!(sh_text.starts_with(&format!(
        "export VOIPBIN_API_KEY='{k1}'\nexport VOIPBIN_API_KEY_EXPIRES_AT='"
    )));
    let json: serde_json::Value = serde_json::from_str(&t.read("mcp.json").unwrap()).unwrap();
    assert_eq!(json["kind"], "access-key");
    assert_eq!(json["token"], k1.as_str());
    let k1_id = json["id"].as_str().unwrap().to_owned();
    let tpl = t.read("mcp.tpl").unwrap();
    assert!(tpl.starts_with(&format!("{k1_id} {k1} ")), "{tpl}");

    // The state file holds the same key, 0600, and the installation's name.
    let state = state_json(&t);
    assert_eq!(state["current"]["key"], k1.as_str());
    assert_eq!(mode_of(&t.path("state/keys/mcp.json")), 0o600);
    let name = format!(
        "voipbin-tokend/mcp/{}",
        state["installation_id"].as_str().unwrap()
    );
    assert_eq!(key_named(&s.keys(), &k1_id).name, name);

    // The bootstrap key is deleted after the grace (1 s).
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );

    // At half the key's lifetime (about 4 s) the next key replaces it, and
    // the replaced one is deleted after the grace too.
    let k2 = wait_env_key(&t, "mcp.env", &[&boot, &k1], &d);
    wait_for(
        WAIT,
        "the first own key deleted",
        || key_named(&s.keys(), &k1_id).tm_delete.is_some(),
        || d.log(),
    );
    assert_eq!(t.read("mcp.key").unwrap(), k2);
    let live: Vec<KeyInfo> = s.keys().into_iter().filter(|k| k.tm_delete.is_none()).collect();
    assert_eq!(live.len(), 1, "only the current key stays alive: {live:?}");

    // Every key call carried the key in the cookie, never in a URL.
    let calls = key_calls(&s);
    assert!(calls.len() >= 4);
    for c in &calls {
        assert_eq!(c.auth, AuthVia::KeyCookie, "{c:?}");
        assert!(!c.key_in_query && !c.had_cookie_header || c.auth == AuthVia::KeyCookie);
    }
    assert_eq!(logins(&s).len(), 0, "a self-rotating key never logs in");

    let mut d = d;
    stop(&mut d, Signal::SIGTERM);
    assert_no_keys(&d.log(), &s);
    assert!(d.log().contains("vb_"), "prefixes are logged (they are public)");
}

#[test]
fn a_kill_after_the_key_was_saved_but_before_any_output_publishes_that_key_on_restart_and_makes_none() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    // The output directory does not exist yet: the key is made and saved,
    // the output cannot be written.
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("out/mcp.env", "env")),
    );
    let mut d = t.daemon();
    wait_for(
        WAIT,
        "a key saved in the state",
        || {
            t.read("state/keys/mcp.json")
                .is_some_and(|s| s.contains("\"origin\": \"created\""))
        },
        || d.log(),
    );
    d.wait_log("does not exist", 1, WAIT);
    d.signal(Signal::SIGKILL);
    d.wait_exit(WAIT);
    let saved = state_json(&t)["current"]["key"].as_str().unwrap().to_owned();
    assert_ne!(saved, boot);
    let made = posts(&s);

    std::fs::create_dir(t.path("out")).unwrap();
    let d = t.daemon();
    let published = wait_env_key(&t, "out/mcp.env", &[], &d);
    assert_eq!(published, saved, "the saved key is published");
    d.wait_log("reusing the key in the key state", 1, WAIT);
    assert_eq!(posts(&s), made, "no key is made for a rotation already done");
}

/// A new key is written to the outputs without reading them first (none
/// can hold it yet); a key reused at a restart is not new, so outputs that
/// already hold it are compared and left alone (the same files, no hooks).
#[test]
fn a_restart_that_reuses_the_saved_key_leaves_the_outputs_that_hold_it_untouched() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    let outputs = output("mcp.env", "env") + &output("mcp.key", "raw");
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &outputs).replace("lifetime = \"1d\"", "lifetime = \"30d\""),
    );
    let mut d = t.daemon();
    let key = wait_env_key(&t, "mcp.env", &[&boot], &d);
    wait_for(
        WAIT,
        "the raw output",
        || t.read("mcp.key").as_deref() == Some(key.as_str()),
        || d.log(),
    );
    stop(&mut d, Signal::SIGTERM);
    let inodes = || {
        ["mcp.env", "mcp.key"]
            .map(|f| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(t.path(f)).unwrap()))
    };
    let before = inodes();
    let made = posts(&s);

    let mut d = t.daemon();
    d.wait_log("reusing the key in the key state", 1, WAIT);
    d.wait_log("every credential has a fresh token on disk", 1, WAIT);
    assert_eq!(
        inodes(),
        before,
        "an output that held the key was rewritten\n{}",
        d.log()
    );
    assert_eq!(t.read("mcp.key").unwrap(), key);
    assert_eq!(posts(&s), made, "no key is made for a key still fresh");
    stop(&mut d, Signal::SIGTERM);
}

#[test]
fn a_restart_during_the_grace_still_deletes_the_replaced_key_on_time() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env")).replace("grace = \"1s\"", "grace = \"3s\""),
    );
    let mut d = t.daemon();
    wait_env_key(&t, "mcp.env", &[&boot], &d);
    wait_for(
        WAIT,
        "the grace recorded",
        || state_json(&t)["pending_deletions"][0]["delete_after"].is_string(),
        || d.log(),
    );
    let started = SystemTime::now();
    d.signal(Signal::SIGKILL);
    d.wait_exit(WAIT);
    assert!(
        key_named(&s.keys(), &boot_id).tm_delete.is_none(),
        "not yet: the grace runs"
    );

    let d = t.daemon();
    wait_for(
        WAIT,
        "the bootstrap key deleted after the restart",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    let after = key_named(&s.keys(), &boot_id)
        .tm_delete
        .unwrap()
        .duration_since(started)
        .unwrap_or_default();
    assert!(
        after < Duration::from_secs(8),
        "deleted {after:?} after the kill (grace 3 s)"
    );
    wait_for(
        WAIT,
        "the deletion saved",
        || state_json(&t)["pending_deletions"].as_array().unwrap().is_empty(),
        || d.log(),
    );
}

#[test]
fn a_creation_whose_answer_was_lost_leaves_an_orphan_that_is_swept_and_no_other_key_is_touched() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    // Another installation with the same credential name, and a hand-made key.
    let (other_id, _) = s.create_key("voipbin-tokend/mcp/0123456789abcdef", 86_400 * 365);
    let (hand_id, _) = s.create_key("my script's key", 86_400 * 365);
    // The first creation makes a key and drops the connection.
    s.script_key_creations([Fault::Close]);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env"))
            .replace("lifetime = \"1d\"", "lifetime = \"4d\""),
    );
    let d = t.daemon();
    let current = wait_env_key(&t, "mcp.env", &[&boot], &d);
    let name = format!(
        "voipbin-tokend/mcp/{}",
        state_json(&t)["installation_id"].as_str().unwrap()
    );
    wait_for(
        WAIT,
        "the orphan deleted",
        || {
            let keys = s.keys();
            let mine: Vec<&KeyInfo> = keys.iter().filter(|k| k.name == name).collect();
            mine.len() == 2 && mine.iter().filter(|k| k.tm_delete.is_none()).count() == 1
        },
        || format!("{:#?}\n{}", s.keys(), d.log()),
    );
    let keys = s.keys();
    let live_mine: Vec<&KeyInfo> = keys
        .iter()
        .filter(|k| k.name == name && k.tm_delete.is_none())
        .collect();
    assert_eq!(
        live_mine[0].token_prefix,
        &current[..11],
        "the live key is the published one"
    );
    assert!(
        key_named(&keys, &other_id).tm_delete.is_none(),
        "another installation's key is left alone"
    );
    assert!(
        key_named(&keys, &hand_id).tm_delete.is_none(),
        "a hand-made key is left alone"
    );
}

#[test]
fn a_dead_key_is_named_with_bootstrap_key_file_the_output_stays_and_a_fresh_bootstrap_key_heals() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env")),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "the bootstrap key deleted after its grace",
        || {
            s.keys()
                .iter()
                .any(|k| k.name.contains("admin page") && k.tm_delete.is_some())
        },
        || d.log(),
    );
    // Deleted on the admin page: the daemon holds no working key now.
    assert!(s.delete_key(&k1_id));
    d.signal(Signal::SIGUSR1);
    d.wait_log("HTTP 401", 1, WAIT);
    let log = d.log();
    let line = log.lines().find(|l| l.contains("HTTP 401")).unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("mcp") && line.contains("bootstrap-key-file"),
        "{line}"
    );
    assert_eq!(env_key(&t, "mcp.env").unwrap(), k1, "the output stays as it is");

    // A fresh key in the bootstrap file heals, without a restart.
    let (_, fresh) = s.create_key("made again on the admin page", 86_400 * 365);
    write_key_file(&t, &fresh);
    d.signal(Signal::SIGUSR1);
    let k2 = wait_env_key(&t, "mcp.env", &[&k1, &fresh], &d);
    assert!(k2.starts_with("vb_"));
    d.wait_log("recovered", 1, WAIT);
}

#[test]
fn with_an_agent_login_key_calls_use_bearer_and_a_key_deleted_out_of_band_is_replaced() {
    let s = key_standin();
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &format!(
            "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nusername = \"{USER}\"\npassword-file = \"password\"\n\
             lifetime = \"30d\"\ngrace = \"1s\"\nlookup-every = \"1s\"\nretry-min = \"100ms\"\nretry-max = \"1s\"\n\n{}",
            output("mcp.env", "env")
        ),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[], &d);
    assert_eq!(logins(&s).len(), 1, "the agent logged in once");
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    assert!(s.delete_key(&k1_id));
    // Looked up every second here (lookup-every), so noticed within one.
    let k2 = wait_env_key(&t, "mcp.env", &[&k1], &d);
    assert!(k2.starts_with("vb_"));
    d.wait_log("deleted out of band", 1, WAIT);
    for c in key_calls(&s) {
        // Each new key is tested once with itself (GET by id, issue 14).
        if c.method == "GET" && c.path.len() > "/v1.0/accesskeys/".len() && c.auth == AuthVia::KeyCookie {
            continue;
        }
        assert_eq!(c.auth, AuthVia::Bearer, "{c:?}");
    }
}

#[test]
fn an_agent_without_customer_admin_is_told_so_and_not_retried_before_retry_max() {
    let s = key_standin();
    s.set_permission(USER, PERMISSION_CUSTOMER_AGENT);
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &format!(
            "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nusername = \"{USER}\"\npassword-file = \"password\"\n\
             retry-min = \"100ms\"\nretry-max = \"3s\"\n\n{}",
            output("mcp.env", "env")
        ),
    );
    let d = t.daemon();
    d.wait_log("CustomerAdmin", 1, WAIT);
    let first = posts(&s);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(posts(&s), first, "no second creation before retry-max (3 s)");
    assert!(t.read("mcp.env").is_none());
}

#[test]
fn once_rotates_when_due_and_status_check_and_inspect_show_the_key_without_the_secret() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred(
            "renew-at = 0.9",
            &[
                output("mcp.env", "env"),
                output("mcp.json", "json"),
                output("mcp.key", "raw"),
            ]
            .concat(),
        ),
    );
    let check = t.run(&["check", "-c", "config.toml"]);
    assert_eq!(check.status.code(), Some(0), "{}", both(&check));
    let text = both(&check);
    assert!(text.contains("access key, self-rotating"), "{text}");
    assert!(text.contains("keys/mcp.json"), "{text}");
    assert_eq!(posts(&s), 0, "check touches nothing");

    let once = t.run(&["once", "-c", "config.toml"]);
    assert_eq!(once.status.code(), Some(0), "{}", both(&once));
    let k1 = env_key(&t, "mcp.env").unwrap();
    assert_ne!(k1, boot);
    assert_eq!(posts(&s), 1);
    // Not due: a second `once` makes no key.
    let again = t.run(&["once", "-c", "config.toml"]);
    assert_eq!(again.status.code(), Some(0), "{}", both(&again));
    assert_eq!(posts(&s), 1);
    // The bootstrap key's grace (1 s) is over: `once` deletes it.
    std::thread::sleep(Duration::from_millis(1200));
    let third = t.run(&["once", "-c", "config.toml"]);
    assert_eq!(third.status.code(), Some(0), "{}", both(&third));
    assert!(key_named(&s.keys(), &boot_id).tm_delete.is_some());

    for file in ["mcp.env", "mcp.json"] {
        let out = t.run(&["inspect", file]);
        assert_eq!(out.status.code(), Some(0), "{}", both(&out));
        let text = both(&out);
        assert!(text.contains(&k1[..11]) && text.contains("expires at"), "{text}");
        assert!(!text.contains(&k1[11..]), "inspect never prints the key");
    }
    let raw = t.run(&["inspect", "mcp.key"]);
    assert_eq!(raw.status.code(), Some(1));
    assert!(both(&raw).contains("status"), "{}", both(&raw));

    // status of a running daemon: key id, no secret.
    let d = t.daemon();
    d.wait_log("every credential has a fresh token on disk", 1, WAIT);
    let k1_id = state_json(&t)["current"]["id"].as_str().unwrap().to_owned();
    wait_for(
        WAIT,
        "the key in the status file",
        || t.read("state/status.json").is_some_and(|s| s.contains(&k1_id)),
        || d.log(),
    );
    let status = t.run(&["status", "-c", "config.toml"]);
    let text = both(&status);
    assert!(
        text.contains(&k1_id),
        "{text}\n{}",
        t.read("state/status.json").unwrap()
    );
    assert_no_keys(&text, &s);
    let json = t.run(&["status", "-c", "config.toml", "--json"]);
    assert_no_keys(&both(&json), &s);
    assert_no_keys(&t.read("state/status.json").unwrap(), &s);
}

#[test]
fn bad_access_key_settings_exit_78_naming_the_key() {
    let s = key_standin();
    let t = TestDir::new();
    let cases = [
        ("kind = \"api-key\"\nbootstrap-key-file = \"boot.key\"", "kind"),
        ("kind = \"access-key\"", "bootstrap-key-file"),
        (
            "kind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\nusername = \"a@b.c\"\npassword-file = \"password\"",
            "bootstrap-key-file",
        ),
        (
            "kind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\nlifetime = \"23h\"",
            "lifetime",
        ),
        (
            "kind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\nlifetime = \"forever\"",
            "lifetime",
        ),
        (
            "kind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\nlifetime = \"1d\"\ngrace = \"2d\"",
            "grace",
        ),
        (
            "username = \"a@b.c\"\npassword-file = \"password\"\ngrace = \"1h\"",
            "grace",
        ),
    ];
    for (keys, key) in cases {
        let cfg = format!(
            "[api]\nbase-url = \"{}\"\n[state]\ndir = \"state\"\n[[credential]]\nname = \"mcp\"\n{keys}\n{}",
            s.base_url(),
            output("mcp.env", "env")
        );
        std::fs::write(t.config_path(), cfg).unwrap();
        let out = t.run(&["check", "-c", "config.toml"]);
        assert_eq!(out.status.code(), Some(78), "{keys}: {}", both(&out));
        let text = both(&out);
        assert!(text.contains(&format!("credential[mcp].{key}")), "{keys}: {text}");
        assert!(text.contains("config.toml"), "{text}");
    }
    // A state dir that cannot be made (a file in the way).
    std::fs::write(t.path("notadir"), "x").unwrap();
    let cfg = format!(
        "[api]\nbase-url = \"{}\"\n[state]\ndir = \"notadir/state\"\n{}",
        s.base_url(),
        key_cred("renew-at = 0.9", &output("mcp.env", "env"))
    );
    std::fs::write(t.config_path(), cfg).unwrap();
    for cmd in ["check", "run"] {
        let out = t.run(&[cmd, "-c", "config.toml"]);
        assert_eq!(out.status.code(), Some(78), "{cmd}: {}", both(&out));
        assert!(both(&out).contains("state.dir"), "{}", both(&out));
    }
}

#[test]
fn a_bootstrap_file_that_is_empty_not_a_key_a_fifo_or_huge_is_named_and_nothing_is_lost() {
    let s = key_standin();
    let t = TestDir::new();
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env")),
    );
    type Make = Box<dyn Fn(&std::path::Path)>;
    let cases: [(&str, Make); 4] = [
        ("is empty", Box::new(|p| std::fs::write(p, "\n").unwrap())),
        (
            "does not hold a key",
            Box::new(|p| std::fs::write(p, "hunter2\n").unwrap()),
        ),
        (
            "not a regular file",
            Box::new(|p| nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()),
        ),
        (
            "larger than",
            Box::new(|p| std::fs::File::create(p).unwrap().set_len(1 << 30).unwrap()),
        ),
    ];
    for (expect, make) in cases {
        let p = t.path("boot.key");
        let _ = std::fs::remove_file(&p);
        make(&p);
        let out = t.run(&["once", "-c", "config.toml"]);
        assert_eq!(out.status.code(), Some(1), "{expect}: {}", both(&out));
        let text = both(&out);
        assert!(
            text.contains("bootstrap-key-file") && text.contains("boot.key"),
            "{text}"
        );
        assert!(text.contains(expect), "{expect}: {text}");
        assert!(t.read("mcp.env").is_none());
    }
    // A key the server does not know: 401, named.
    write_key_file(&t, "vb_0123456789abcdefABCDEF0123456789");
    let out = t.run(&["once", "-c", "config.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(both(&out).contains("HTTP 401"), "{}", both(&out));
    // World-readable: warned.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(t.path("boot.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = t.run(&["check", "-c", "config.toml"]);
    assert!(both(&out).contains("readable by every user"), "{}", both(&out));
}

#[test]
fn a_key_credential_added_and_removed_by_reload_gets_a_key_and_deletes_nothing() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    let token_cred = credential("main", &output("main.token", "raw"));
    t.write_config(&s.base_url(), &token_cred);
    let d = t.daemon();
    wait_file(&t.path("main.token"), WAIT, || d.log());
    t.write_config(
        &s.base_url(),
        &format!(
            "{token_cred}\n{}",
            key_cred("renew-at = 0.9", &output("mcp.env", "env"))
        ),
    );
    d.signal(Signal::SIGHUP);
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || s.keys().iter().filter(|k| k.tm_delete.is_some()).count() == 1,
        || d.log(),
    );
    let deleted_before = s.keys().iter().filter(|k| k.tm_delete.is_some()).count();
    t.write_config(&s.base_url(), &token_cred);
    d.signal(Signal::SIGHUP);
    d.wait_log("credential removed from the config", 1, WAIT);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.keys().iter().filter(|k| k.tm_delete.is_some()).count(),
        deleted_before
    );
    assert_eq!(env_key(&t, "mcp.env").unwrap(), k1, "its file stays");
}

#[test]
fn metrics_count_deleted_keys() {
    let s = key_standin();
    let t = TestDir::new();
    let (boot_id, boot) = bootstrap(&s, &t, 365);
    let (port, config) = with_health(&key_cred("renew-at = 0.9", &output("mcp.env", "env")));
    t.write_config(&s.base_url(), &config);
    let d = t.daemon();
    wait_env_key(&t, "mcp.env", &[&boot], &d);
    wait_for(
        WAIT,
        "the bootstrap key deleted",
        || key_named(&s.keys(), &boot_id).tm_delete.is_some(),
        || d.log(),
    );
    let needle = "voipbin_tokend_access_keys_deleted_total{credential=\"mcp\",result=\"success\"} 1";
    wait_for(
        WAIT,
        "the deletion counted",
        || http_get_raw(port, "/metrics").contains(needle),
        || http_get_raw(port, "/metrics"),
    );
    let body = http_get_raw(port, "/metrics");
    let health = http_get_raw(port, "/readyz");
    assert_no_keys(&health, &s);
    assert_no_keys(&body, &s);
}

#[test]
fn key_calls_obey_retry_after_and_back_off_on_server_errors_keeping_the_key() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    s.script_key_creations([
        Fault::too_many_requests(Some("2")),
        Fault::status(503),
        Fault::Status {
            status: 500,
            body: format!("{{\"error\":{{\"reason\":\"BOOM\",\"message\":\"{boot}\"}}}}"),
            headers: Vec::new(),
        },
    ]);
    // retry-max above the Retry-After: with no key of its own yet, a wait is
    // capped at retry-max.
    t.write_config(
        &s.base_url(),
        &key_cred("renew-at = 0.9", &output("mcp.env", "env"))
            .replace("retry-max = \"1s\"", "retry-max = \"5s\""),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    assert!(k1.starts_with("vb_"));
    let creations: Vec<SystemTime> = key_calls(&s)
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.at)
        .collect();
    assert_eq!(creations.len(), 4, "429, 503, 500, then success");
    let after_429 = creations[1].duration_since(creations[0]).unwrap();
    assert!(
        after_429 >= Duration::from_secs(2),
        "Retry-After 2 obeyed: {after_429:?}"
    );
    let log = d.log();
    assert!(log.contains("HTTP 429") && log.contains("HTTP 503"), "{log}");
    assert!(!log.contains("BOOM"), "an error body is never logged");
    assert_no_keys(&log, &s);
}

#[test]
fn each_rotation_logs_when_the_key_it_replaced_is_deleted_not_an_earlier_ones() {
    let s = key_standin();
    let t = TestDir::new();
    let (_, boot) = bootstrap(&s, &t, 365);
    t.write_config(
        &s.base_url(),
        &key_cred("", &output("mcp.env", "env")).replace("grace = \"1s\"", "grace = \"6s\""),
    );
    let d = t.daemon();
    let k1 = wait_env_key(&t, "mcp.env", &[&boot], &d);
    // A second rotation while the bootstrap key's grace still runs.
    std::thread::sleep(Duration::from_millis(1500));
    d.signal(Signal::SIGUSR1);
    wait_env_key(&t, "mcp.env", &[&boot, &k1], &d);
    let graces = || -> Vec<String> {
        d.log()
            .lines()
            .filter(|l| l.contains("will be deleted after the grace"))
            .filter_map(|l| l.split("delete_at=").nth(1))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            .collect()
    };
    wait_for(WAIT, "two graces logged", || graces().len() == 2, || d.log());
    let (first, second) = (&graces()[0], &graces()[1]);
    // RFC 3339 in UTC, to the second: compared as text.
    assert!(
        second > first,
        "the second rotation's key goes at {second}, after the bootstrap key ({first})\n{}",
        d.log()
    );
}
