use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::output::Format;

const MINIMAL: &str = r#"
[[credential]]
name = "main"
username = "agent@example.com"
password-env = "PW"
[[credential.output]]
path = "/run/voipbin/main.token"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/t/config.toml"))
}

fn invalid_key(text: &str) -> String {
    match parse(text) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.api.base_url.as_str(), "https://api.voipbin.net/");
    assert_eq!(c.api.timeout, Duration::from_secs(30));
    assert_eq!(c.api.max_logins_per_second, 5);
    let cred = &c.credentials[0];
    assert_eq!(cred.renewal, RenewalPolicy::default());
    assert_eq!(cred.outputs[0].mode, 0o600);
    assert_eq!(cred.outputs[0].format, Format::Raw);
}

#[test]
fn relative_paths_resolve_against_the_config_dir() {
    let text = MINIMAL.replace("/run/voipbin/main.token", "out/main.token");
    let c = parse(&text).unwrap();
    assert_eq!(
        c.credentials[0].outputs[0].path,
        PathBuf::from("/etc/t/out/main.token")
    );
}

#[test]
fn unknown_key_is_refused_with_its_position_but_not_its_line() {
    let text = MINIMAL.replace("password-env = \"PW\"", "pasword = \"hunter2\"");
    let err = parse(&text).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("pasword"), "{msg}");
    assert!(msg.contains("/etc/t/config.toml"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[test]
fn http_only_on_loopback() {
    let ok = format!("[api]\nbase-url = \"http://127.0.0.1:8080\"\n{MINIMAL}");
    parse(&ok).unwrap();
    let ok = format!("[api]\nbase-url = \"http://localhost:8080\"\n{MINIMAL}");
    parse(&ok).unwrap();
    let bad = format!("[api]\nbase-url = \"http://api.voipbin.net\"\n{MINIMAL}");
    assert_eq!(invalid_key(&bad), "api.base-url");
}

#[test]
fn a_credential_base_url_overrides_the_api_one_under_the_same_rules() {
    let own = MINIMAL.replace(
        "name = \"main\"",
        "name = \"main\"\nbase-url = \"https://voipbin.example.org/api\"",
    );
    let c = parse(&own).unwrap();
    let cred = &c.credentials[0];
    assert_eq!(
        cred.base_url.as_ref().map(|u| u.as_str()),
        Some("https://voipbin.example.org/api")
    );
    let api = c.api.for_credential(cred);
    assert_eq!(api.base_url.as_str(), "https://voipbin.example.org/api");
    assert_eq!(api.timeout, c.api.timeout);
    // Without its own, the [api] one.
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.credentials[0].base_url, None);
    assert_eq!(c.api.for_credential(&c.credentials[0]), c.api);
    for bad in [
        "http://voipbin.example.org",
        "ftp://127.0.0.1/",
        "not a url",
        "https://u:p@voipbin.example.org",
        "https://voipbin.example.org/?a=1",
    ] {
        let text = MINIMAL.replace(
            "name = \"main\"",
            &format!("name = \"main\"\nbase-url = \"{bad}\""),
        );
        assert_eq!(invalid_key(&text), "credential[main].base-url", "{bad}");
    }
    let loopback = MINIMAL.replace(
        "name = \"main\"",
        "name = \"main\"\nbase-url = \"http://127.0.0.1:8080\"",
    );
    parse(&loopback).unwrap();
}

#[test]
fn exactly_one_password_source() {
    let two = MINIMAL.replace(
        "password-env = \"PW\"",
        "password-env = \"PW\"\npassword-file = \"pw\"",
    );
    assert_eq!(invalid_key(&two), "credential[main].password-file");
    let none = MINIMAL.replace("password-env = \"PW\"", "");
    assert_eq!(invalid_key(&none), "credential[main].password-file");
}

#[test]
fn inline_password_is_warned_and_hidden() {
    let text = MINIMAL.replace("password-env = \"PW\"", "password = \"hunter2\"");
    let c = parse(&text).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn ranges_are_checked() {
    let k = |extra: &str| {
        invalid_key(&MINIMAL.replace(
            "password-env = \"PW\"",
            &format!("password-env = \"PW\"\n{extra}"),
        ))
    };
    assert_eq!(k("renew-at = 0.99"), "credential[main].renew-at");
    assert_eq!(k("jitter = 0.5"), "credential[main].jitter");
    assert_eq!(k("renew-at = 0.9\njitter = 0.1"), "credential[main].jitter");
    assert_eq!(k("retry-min = \"5 parsecs\""), "credential[main].retry-min");
    assert_eq!(
        k("retry-min = \"10m\"\nretry-max = \"1m\""),
        "credential[main].retry-max"
    );
}

#[test]
fn names_and_paths_are_unique() {
    let twice = format!("{MINIMAL}{MINIMAL}");
    assert_eq!(invalid_key(&twice), "credential[1].name");
    let other = MINIMAL.replace("\"main\"", "\"other\"");
    assert_eq!(
        invalid_key(&format!("{MINIMAL}{other}")),
        "credential[other].output[0].path"
    );
    let bad = MINIMAL.replace("\"main\"", "\"Main!\"");
    assert_eq!(invalid_key(&bad), "credential[0].name");
}

#[test]
fn hook_env_may_not_name_any_credentials_password_variable() {
    let hooked = |name: &str, pw: &str, hook_env: &str| {
        format!(
            "[[credential]]\nname = \"{name}\"\nusername = \"u\"\npassword-env = \"{pw}\"\n\
                 [[credential.output]]\npath = \"/run/{name}\"\non-change = [\"true\"]\nhook-env = [{hook_env}]\n"
        )
    };
    let own = hooked("a", "PW_A", "\"HOME\", \"PW_A\"");
    assert_eq!(invalid_key(&own), "credential[a].output[0].hook-env");
    let other = format!("{}{}", hooked("a", "PW_A", "\"PW_B\""), hooked("b", "PW_B", ""));
    assert_eq!(invalid_key(&other), "credential[a].output[0].hook-env");
    parse(&format!(
        "{}{}",
        hooked("a", "PW_A", "\"HOME\""),
        hooked("b", "PW_B", "")
    ))
    .unwrap();
}

#[test]
fn a_duplicate_key_is_named() {
    for (text, key) in [
        (format!("{MINIMAL}format = \"raw\"\nformat = \"env\"\n"), "format"),
        (format!("[api]\ntimeout = \"1s\"\n[api]\n{MINIMAL}"), "api"),
        (
            MINIMAL.replace(
                "password-env = \"PW\"",
                "password = \"hunter2\"\npassword = \"hunter3\"",
            ),
            "password",
        ),
    ] {
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains(&format!("duplicate key `{key}`")), "{msg}");
        assert!(!msg.contains("hunter"), "{msg}");
    }
}

#[test]
fn writable_modes_unchanged_ids_and_templates_without_token_are_refused() {
    let k = |extra: &str| invalid_key(&format!("{MINIMAL}{extra}\n"));
    for mode in ["0666", "0620", "0602", "0660", "0622", "0700"] {
        let want = if mode == "0700" {
            None
        } else {
            Some("credential[main].output[0].mode")
        };
        let got = parse(&format!("{MINIMAL}mode = \"{mode}\"\n"))
            .err()
            .map(|e| match e {
                ConfigError::Invalid { key, .. } => key,
                other => panic!("{other:?}"),
            });
        assert_eq!(got.as_deref(), want, "mode {mode}");
    }
    assert_eq!(k("owner = \"4294967295\""), "credential[main].output[0].owner");
    assert_eq!(k("group = \"4294967295\""), "credential[main].output[0].group");
    assert_eq!(
        k("format = \"template\"\ntemplate = \"expires {expires_at}\""),
        "credential[main].output[0].template"
    );
    assert_eq!(
        k("format = \"template\"\ntemplate = \"{{token}}\""),
        "credential[main].output[0].template"
    );
    let c = parse(&format!("{MINIMAL}mode = \"0644\"\n")).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("every user on this machine read")),
        "{:?}",
        c.warnings
    );
    assert!(
        parse(&format!("{MINIMAL}mode = \"0640\"\n"))
            .unwrap()
            .warnings
            .is_empty()
    );
}

#[test]
fn output_options_are_checked() {
    let k = |extra: &str| invalid_key(&format!("{MINIMAL}{extra}\n"));
    assert_eq!(k("mode = \"0999\""), "credential[main].output[0].mode");
    assert_eq!(k("mode = \"0200\""), "credential[main].output[0].mode");
    assert_eq!(k("format = \"yaml\""), "credential[main].output[0].format");
    assert_eq!(k("variable = \"X\""), "credential[main].output[0].variable");
    assert_eq!(
        k("format = \"env\"\nvariable = \"1X\""),
        "credential[main].output[0].variable"
    );
    for reserved in ["LD_PRELOAD", "PATH"] {
        assert_eq!(
            k(&format!("format = \"shell\"\nvariable = \"{reserved}\"")),
            "credential[main].output[0].variable"
        );
    }
    assert_eq!(k("format = \"template\""), "credential[main].output[0].template");
    assert_eq!(
        k("format = \"template\"\ntemplate = \"{nope}\""),
        "credential[main].output[0].template"
    );
    assert_eq!(
        k("owner = \"no-such-user-here\""),
        "credential[main].output[0].owner"
    );
    assert_eq!(k("signal = \"SIGHUP\""), "credential[main].output[0].signal");
    assert_eq!(
        k("signal = \"SIGNOPE\"\npid-file = \"/x\""),
        "credential[main].output[0].signal"
    );
    assert_eq!(k("on-change = []"), "credential[main].output[0].on-change");
    let c = parse(&format!("{MINIMAL}format = \"env\"\nvariable = \"API_TOKEN\"\nmode = \"0640\"\nsignal = \"hup\"\npid-file = \"/run/app.pid\"\n")).unwrap();
    let o = &c.credentials[0].outputs[0];
    assert_eq!(
        o.format,
        Format::Env {
            variable: "API_TOKEN".into()
        }
    );
    assert_eq!(o.mode, 0o640);
    assert_eq!(o.signal, Some(nix::sys::signal::Signal::SIGHUP));
}
