//! `[[proxy]]` in the config: `check` prints each proxy, and every wrong
//! one exits 78 with a message naming the file and `proxy[N].<key>`.

use crate::support::*;

/// `check -c config.toml`: (exit code, stdout + stderr).
fn check(t: &TestDir) -> (Option<i32>, String) {
    let out = t.run(&["check", "-c", t.config_path().to_str().unwrap()]);
    (out.status.code(), both(&out))
}

fn proxy(listen: &str, credential: &str, extra: &str) -> String {
    format!("[[proxy]]\nlisten = \"{listen}\"\ncredential = \"{credential}\"\n{extra}\n")
}

/// The test config: credential "main" (output main.token) and `proxies`.
fn write(t: &TestDir, s: &StandIn, proxies: &str) {
    t.write_config(
        &s.base_url(),
        &format!("{}{proxies}", credential("main", &output("main.token", "raw"))),
    );
}

/// The stand-in's base URL as a parsed URL prints it (with its `/`).
fn url(s: &StandIn) -> String {
    format!("{}/", s.base_url().trim_end_matches('/'))
}

#[test]
fn check_prints_each_proxy_with_its_server_credential_mode_and_group() {
    let (s, other) = (standin(LONG), standin(LONG));
    let t = TestDir::new();
    let sock = t.path("api.sock");
    let gid = nix::unistd::getegid().as_raw();
    let elsewhere = cred(
        "elsewhere",
        USER,
        "password",
        &format!("base-url = \"{}\"", other.base_url()),
        &output("elsewhere.token", "raw"),
    );
    write(
        &t,
        &s,
        &format!(
            "{elsewhere}{}{}",
            proxy(
                &format!("unix:{}", sock.display()),
                "main",
                &format!("group = \"{gid}\"")
            ),
            proxy("127.0.0.1:18787", "elsewhere", "")
        ),
    );
    let (code, text) = check(&t);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "proxy[0] unix:{} -> {} with credential main (its login token as Authorization: Bearer), socket mode 0660, group {gid}",
            sock.display(),
            url(&s)
        )),
        "{text}"
    );
    // A proxy follows its credential's base-url.
    assert!(
        text.contains(&format!(
            "proxy[1] 127.0.0.1:18787 -> {} with credential elsewhere",
            url(&other)
        )),
        "{text}"
    );
}

#[test]
fn check_refuses_each_wrong_proxy_with_78_naming_the_file_and_key() {
    let s = standin(LONG);
    let t = TestDir::new();
    std::fs::create_dir(t.path("state")).unwrap();
    let in_dir = |name: &str| format!("unix:{}", t.path(name).display());
    let cases: Vec<(String, &str, &str)> = vec![
        (
            proxy("0.0.0.0:18787", "main", ""),
            "proxy[0].listen",
            "not a loopback",
        ),
        (
            proxy("192.0.2.1:18787", "main", ""),
            "proxy[0].listen",
            "not a loopback",
        ),
        (
            proxy("localhost:18787", "main", ""),
            "proxy[0].listen",
            "loopback address:port",
        ),
        (
            proxy("unix:api.sock", "main", ""),
            "proxy[0].listen",
            "absolute path",
        ),
        (
            proxy("127.0.0.1:18787", "nope", ""),
            "proxy[0].credential",
            "\"nope\"",
        ),
        (
            proxy("127.0.0.1:18787", "main", "mode = \"0660\""),
            "proxy[0].mode",
            "only for a unix socket",
        ),
        (
            proxy("127.0.0.1:18787", "main", "group = \"root\""),
            "proxy[0].group",
            "only for a unix socket",
        ),
        (
            proxy(&in_dir("a.sock"), "main", "mode = \"rw\""),
            "proxy[0].mode",
            "not an octal mode",
        ),
        (
            proxy(&in_dir("a.sock"), "main", "group = \"no-such-group-here\""),
            "proxy[0].group",
            "no group named",
        ),
        (
            format!(
                "{}{}",
                proxy("127.0.0.1:18787", "main", ""),
                proxy("127.0.0.1:18787", "main", "")
            ),
            "proxy[1].listen",
            "proxy[0]",
        ),
        (
            proxy(&in_dir("main.token"), "main", ""),
            "proxy[0].listen",
            "output",
        ),
        (
            proxy(&in_dir("password"), "main", ""),
            "proxy[0].listen",
            "password-file",
        ),
        (
            proxy(&in_dir("state/api.sock"), "main", ""),
            "proxy[0].listen",
            "state directory",
        ),
        (
            proxy(&in_dir("config.toml"), "main", ""),
            "proxy[0].listen",
            "config file",
        ),
        (
            proxy("127.0.0.1:18787", "main", "lisen = \"x\""),
            "lisen",
            "unknown field",
        ),
    ];
    for (proxies, key, needle) in cases {
        write(&t, &s, &proxies);
        let (code, text) = check(&t);
        assert_eq!(code, Some(78), "{proxies}: {text}");
        assert!(
            text.contains(key) && text.contains(needle) && text.contains("config.toml"),
            "{proxies}: wanted {key} and {needle:?}: {text}"
        );
    }
    // `run` refuses the same way, before doing anything.
    write(&t, &s, &proxy("0.0.0.0:18787", "main", ""));
    let out = t.run(&["run", "-c", t.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
    assert!(both(&out).contains("proxy[0].listen"), "{}", both(&out));
    assert!(s.requests().is_empty(), "nothing was asked of the API");
}
