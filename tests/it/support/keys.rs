//! Key-credential helpers shared by the hook, check, state-dir and SIGUSR1
//! tests: a bootstrap key file, a self-rotating credential, its first key.

use std::time::Duration;

use super::*;

/// How long the tests beside key credentials wait (a key call and a
/// rotation take longer than a login).
pub const SLOW_WAIT: Duration = Duration::from_secs(20);

pub fn write_key_file(t: &TestDir, key: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = t.path("boot.key");
    std::fs::write(&p, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A self-rotating key credential "mcp" (bootstrap key, real-time keys of
/// a day) with `extra` keys and `outputs`.
pub fn key_cred(extra: &str, outputs: &str) -> String {
    format!(
        "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\n\
         lifetime = \"1d\"\ngrace = \"1s\"\nretry-min = \"100ms\"\nretry-max = \"1s\"\n{extra}\n{outputs}"
    )
}

pub fn env_key(t: &TestDir, name: &str) -> Option<String> {
    t.read(name)?
        .lines()
        .find_map(|l| l.strip_prefix("VOIPBIN_API_KEY="))
        .map(str::to_owned)
}

pub fn posts(s: &StandIn) -> usize {
    s.requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1.0/accesskeys") && r.method == "POST")
        .count()
}

/// A key credential with a bootstrap key, running, its first key written.
pub fn key_daemon(t: &TestDir, s: &StandIn, outputs: &str) -> (Daemon, String) {
    let (_, boot) = s.create_key("made on the admin page", 365 * 86_400);
    write_key_file(t, &boot);
    t.write_config(&s.base_url(), &key_cred("", outputs));
    let d = daemon_with(t, "voipbin_tokend=debug", &[]);
    let mut key = String::new();
    wait_for(
        SLOW_WAIT,
        "the first key of this installation",
        || {
            key = env_key(t, "mcp.env").unwrap_or_default();
            key.starts_with("vb_") && key != boot
        },
        || d.log(),
    );
    (d, key)
}

pub fn chmod(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}
