//! Key-credential helpers: the one set shared by the access-key tests
//! (tests/it/keys/) and by the hook, check, state-dir and SIGUSR1 tests: a
//! stand-in with a key time scale, a bootstrap key file, a self-rotating
//! credential, its keys in the outputs, in the state file and on the server.

use std::time::Duration;

use super::*;
use voipbin_tokend_standin::KeyInfo;

/// How long the tests beside key credentials wait (a key call and a
/// rotation take longer than a login); `wait_env_key` waits this long.
pub const SLOW_WAIT: Duration = Duration::from_secs(20);

/// A day of key lifetime lasts this many seconds at `key_standin()`.
pub const KEY_DAY_SECS: f64 = 8.0;

/// A stand-in whose key "day" lasts `KEY_DAY_SECS` seconds.
pub fn key_standin() -> StandIn {
    key_standin_scaled(KEY_DAY_SECS)
}

/// A stand-in whose key "day" lasts `day_secs` seconds.
pub fn key_standin_scaled(day_secs: f64) -> StandIn {
    let s = standin(Duration::from_secs(3600));
    s.set_key_time_scale(day_secs / 86_400.0);
    s
}

/// A bootstrap key as made on the admin page, written to ./boot.key (0600).
pub fn bootstrap(s: &StandIn, t: &TestDir, days: u64) -> (String, String) {
    let (id, key) = s.create_key("made on the admin page", days * 86_400);
    write_key_file(t, &key);
    (id, key)
}

/// Writes `key` to ./boot.key (0600).
pub fn write_key_file(t: &TestDir, key: &str) {
    write_key_file_as(t, "boot.key", key);
}

/// Writes `key` to ./`name` (0600).
pub fn write_key_file_as(t: &TestDir, name: &str, key: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = t.path(name);
    std::fs::write(&p, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A self-rotating key credential "mcp" (bootstrap key, keys of a day)
/// with `extra` keys and `outputs`.
pub fn key_cred(extra: &str, outputs: &str) -> String {
    format!(
        "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\n\
         lifetime = \"1d\"\ngrace = \"1s\"\nretry-min = \"100ms\"\nretry-max = \"1s\"\n{extra}\n{outputs}"
    )
}

/// The key in an env output (`VOIPBIN_API_KEY=vb_...`), if there is one.
pub fn env_key(t: &TestDir, name: &str) -> Option<String> {
    t.read(name)?
        .lines()
        .find_map(|l| l.strip_prefix("VOIPBIN_API_KEY="))
        .map(str::to_owned)
}

/// Waits `SLOW_WAIT` for a key in the env output `name` that is none of `not`.
pub fn wait_env_key(t: &TestDir, name: &str, not: &[&str], d: &Daemon) -> String {
    wait_env_key_within(SLOW_WAIT, t, name, not, d)
}

/// Waits `wait` for a key in the env output `name` that is none of `not`.
pub fn wait_env_key_within(wait: Duration, t: &TestDir, name: &str, not: &[&str], d: &Daemon) -> String {
    let mut key = String::new();
    wait_for(
        wait,
        &format!("a new key in {name}"),
        || {
            key = env_key(t, name).unwrap_or_default();
            key.starts_with("vb_") && !not.contains(&key.as_str())
        },
        || d.log(),
    );
    key
}

/// The server's record of the key with id `id`.
pub fn key_named<'a>(keys: &'a [KeyInfo], id: &str) -> &'a KeyInfo {
    keys.iter().find(|k| k.id == id).expect("key on the server")
}

/// The server's record of the key whose secret is `key` (by its prefix).
pub fn info_of(s: &StandIn, key: &str) -> KeyInfo {
    s.keys()
        .into_iter()
        .find(|k| k.token_prefix == key[..11])
        .expect("key on the server")
}

/// The key whose secret is `key` is on the server, not deleted and not
/// expired (panics if the server never made it).
pub fn live(s: &StandIn, key: &str) -> bool {
    let k = info_of(s, key);
    k.tm_delete.is_none() && k.tm_expire > std::time::SystemTime::now()
}

/// Every call to the key API.
pub fn key_calls(s: &StandIn) -> Vec<LoginRecord> {
    s.requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1.0/accesskeys"))
        .collect()
}

/// Key creations (POSTs to the key API).
pub fn posts(s: &StandIn) -> usize {
    key_calls(s).iter().filter(|r| r.method == "POST").count()
}

/// No key made by the server appears in `text` past its public prefix.
pub fn assert_no_keys(text: &str, s: &StandIn) {
    for key in s.issued_keys() {
        assert!(
            !text.contains(&key[11..]),
            "a key (beyond its prefix) appears in:\n{text}"
        );
    }
}

/// The key state file of "mcp".
pub fn state_json(t: &TestDir) -> serde_json::Value {
    key_state_json(t, "mcp")
}

/// The key state file of `credential`.
pub fn key_state_json(t: &TestDir, credential: &str) -> serde_json::Value {
    serde_json::from_str(
        &t.read(&format!("state/keys/{credential}.json"))
            .expect("key state file"),
    )
    .unwrap()
}

/// This installation's key name for "mcp" (from the state file).
pub fn my_key_name(t: &TestDir) -> String {
    format!(
        "voipbin-tokend/mcp/{}",
        state_json(t)["installation_id"].as_str().unwrap()
    )
}

/// `rest` (a key credential) behind a health listener on a free port.
pub fn with_health(rest: &str) -> (u16, String) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    (port, format!("[health]\nlisten = \"127.0.0.1:{port}\"\n\n{rest}"))
}

/// The raw answer (status line, headers, body) of `GET path` on a loopback
/// port ("" if none; `service` has its own parsed `http_get`).
pub fn http_get_raw(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s
}

/// A key credential with a bootstrap key, running, its first key written.
pub fn key_daemon(t: &TestDir, s: &StandIn, outputs: &str) -> (Daemon, String) {
    let (_, boot) = bootstrap(s, t, 365);
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
