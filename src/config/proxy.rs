//! The checks of each `[[proxy]]`: a listen address on loopback or a unix
//! socket, a credential that exists, a socket's mode and group, one proxy
//! per address; and (at every load, as they look at the filesystem) a
//! socket path that is none of the daemon's files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::model::{Config, ConfigError, CredentialConfig, DEFAULT_SOCKET_MODE, Listen, Owner, ProxyConfig};
use super::output::{cannot_chown, may_chown_to_group, resolve_group};
use super::raw::RawProxy;
use super::validate::Validator;

/// The longest path a unix socket can be bound to (`sun_path` is 108
/// bytes, one of them the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

impl Validator<'_> {
    /// Every `[[proxy]]`, against the credentials and `[health] listen`.
    pub(super) fn proxies(
        &self,
        raw: Vec<RawProxy>,
        credentials: &[CredentialConfig],
        health: Option<SocketAddr>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<ProxyConfig>, ConfigError> {
        let mut proxies: Vec<ProxyConfig> = Vec::new();
        for (i, rp) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("proxy[{i}].{k}");
            let proxy = self.proxy(&key, rp, credentials)?;
            if let Some(j) = proxies.iter().position(|p| p.listen == proxy.listen) {
                return Err(self.err(
                    &key("listen"),
                    format!(
                        "{} is already the address of proxy[{j}]; every proxy needs its own",
                        proxy.listen
                    ),
                ));
            }
            if let (Listen::Tcp(addr), Some(h)) = (&proxy.listen, health)
                && addr.port() == h.port()
                && (addr.ip() == h.ip() || h.ip().is_unspecified())
            {
                return Err(self.err(&key("listen"), format!("{addr} is taken by health.listen ({h})")));
            }
            if let Some(mode) = proxy.mode
                && mode & 0o007 != 0
            {
                warnings.push(format!(
                    "{}: proxy[{i}].mode: {mode:04o} lets every user on this machine call the API as credential {}",
                    self.path.display(),
                    proxy.credential
                ));
            }
            proxies.push(proxy);
        }
        Ok(proxies)
    }

    /// A socket's group: a name or gid, that this process may give files to.
    fn group(&self, key: &str, name: &str) -> Result<Owner, ConfigError> {
        let group = resolve_group(name).map_err(|m| self.err(key, m))?;
        if !may_chown_to_group(group.id) {
            return Err(self.err(key, cannot_chown("group", &group.name)));
        }
        Ok(group)
    }

    fn proxy(
        &self,
        key: &dyn Fn(&str) -> String,
        raw: RawProxy,
        credentials: &[CredentialConfig],
    ) -> Result<ProxyConfig, ConfigError> {
        let listen = parse_listen(&raw.listen).map_err(|m| self.err(&key("listen"), m))?;
        if let Listen::Unix(p) = &listen {
            crate::fsread::check_name_lengths(p).map_err(|m| self.err(&key("listen"), m))?;
        }
        if !credentials.iter().any(|c| c.name == raw.credential) {
            return Err(self.err(
                &key("credential"),
                format!(
                    "no [[credential]] is named {:?} (known: {})",
                    raw.credential,
                    credentials
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let unix = matches!(listen, Listen::Unix(_));
        let only_unix = |k: &str| {
            self.err(
                &key(k),
                "only for a unix socket (listen = \"unix:/path\"); a TCP port has no file mode or group"
                    .into(),
            )
        };
        let mode = match (raw.mode, unix) {
            (Some(_), false) => return Err(only_unix("mode")),
            (None, false) => None,
            (None, true) => Some(DEFAULT_SOCKET_MODE),
            (Some(text), true) => Some(
                u32::from_str_radix(text.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777 && !text.is_empty())
                    .ok_or_else(|| {
                        self.err(
                            &key("mode"),
                            format!("{text:?} is not an octal mode like \"0660\""),
                        )
                    })?,
            ),
        };
        let group = match (raw.group, unix) {
            (Some(_), false) => return Err(only_unix("group")),
            (None, _) => None,
            (Some(g), true) => Some(self.group(&key("group"), &g)?),
        };
        Ok(ProxyConfig {
            listen,
            credential: raw.credential,
            mode,
            group,
        })
    }
}

/// `unix:/absolute/path`, or a loopback IP and a port.
pub(super) fn parse_listen(text: &str) -> Result<Listen, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err(format!(
                "{text:?}: a unix socket needs an absolute path, like \"unix:/run/voipbin-tokend/api.sock\""
            ));
        }
        if path.file_name().is_none() || text.ends_with('/') {
            return Err(format!("{text:?} does not name a socket file"));
        }
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "the socket path is {len} bytes long; a unix socket path may have at most {MAX_SOCKET_PATH}"
            ));
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    let addr: SocketAddr = text.parse().map_err(|_| {
        format!(
            "{text:?} is neither \"unix:/absolute/path\" nor a loopback address:port like \"127.0.0.1:8787\" or \"[::1]:8787\""
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the proxy adds a credential to every request, so it listens only on loopback (127.0.0.0/8, ::1) or a unix socket"
        ));
    }
    if addr.port() == 0 {
        return Err(format!(
            "{addr}: port 0 would be a different port each start; clients need a fixed one"
        ));
    }
    Ok(Listen::Tcp(addr))
}

/// The filesystem rules of proxy sockets, checked at every load (as the
/// output rules are): a socket path is not one of the daemon's inputs, not
/// an output, not inside the state directory, not another proxy's socket
/// under another spelling, and not an existing file that is not a socket
/// (binding replaces a stale socket only).
pub(super) fn check_proxy_paths(config: &Config) -> Result<(), ConfigError> {
    let invalid = |i: usize, message: String| ConfigError::Invalid {
        path: config.path.clone(),
        key: format!("proxy[{i}].listen"),
        message,
    };
    if !config.proxies.iter().any(|p| matches!(p.listen, Listen::Unix(_))) {
        // Nothing on the filesystem to check (and the outputs and inputs
        // of a big config are not located for nothing).
        return Ok(());
    }
    let mut locator = crate::fsread::Locator::default();
    let (input_names, inputs) = super::paths::input_places(config, &mut locator);
    let mut output_keys = Vec::new();
    let mut outputs = crate::fsread::Places::default();
    for c in &config.credentials {
        for (j, o) in c.outputs.iter().enumerate() {
            outputs.add(output_keys.len(), &locator.output(&o.path));
            output_keys.push(format!("credential[{}].output[{j}].path", c.name));
        }
    }
    let mut socket_numbers = Vec::new();
    let mut sockets = crate::fsread::Places::default();
    for (i, proxy) in config.proxies.iter().enumerate() {
        let Listen::Unix(path) = &proxy.listen else {
            continue;
        };
        let shown = path.display();
        let here = locator.output(path);
        if let Some(what) = inputs.first_shared(&here).map(|n| &input_names[n]) {
            return Err(invalid(i, format!("{shown} is the daemon's own {what}")));
        }
        if let Some(what) = outputs.first_shared(&here).map(|n| &output_keys[n]) {
            return Err(invalid(i, format!("{shown} is the output {what}")));
        }
        if locator.is_under(&here, &config.state_dir) {
            return Err(invalid(
                i,
                format!(
                    "{shown} is inside the state directory {}, which is the daemon's own",
                    config.state_dir.display()
                ),
            ));
        }
        if let Some(j) = sockets.first_shared(&here).map(|n| socket_numbers[n]) {
            return Err(invalid(
                i,
                format!("{shown} is the socket of proxy[{j}]; every proxy needs its own"),
            ));
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(invalid(
                    i,
                    format!(
                        "{shown} exists and is not a socket; the proxy replaces only a stale socket there"
                    ),
                ));
            }
        }
        sockets.add(socket_numbers.len(), &here);
        socket_numbers.push(i);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CRED: &str = r#"
[state]
dir = "/var/lib/t-state"
[[credential]]
name = "main"
username = "agent@example.com"
password-env = "PW"
[[credential.output]]
path = "/run/voipbin/main.token"
"#;

    fn parse(proxies: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{CRED}{proxies}"), Path::new("/etc/t/config.toml"))
    }

    fn proxy(listen: &str, extra: &str) -> String {
        format!("[[proxy]]\nlisten = \"{listen}\"\ncredential = \"main\"\n{extra}\n")
    }

    /// (key, message) of the error `proxies` gives.
    fn invalid(proxies: &str) -> (String, String) {
        match parse(proxies) {
            Err(ConfigError::Invalid { key, message, .. }) => (key, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn unix_and_loopback_addresses_are_accepted_with_defaults() {
        let c = parse(&format!(
            "{}{}{}{}",
            proxy("unix:/run/voipbin-tokend/api.sock", ""),
            proxy("127.0.0.1:8787", ""),
            proxy("127.0.0.2:8787", ""),
            proxy("[::1]:8787", ""),
        ))
        .unwrap();
        assert_eq!(c.proxies.len(), 4);
        assert_eq!(
            c.proxies[0].listen,
            Listen::Unix("/run/voipbin-tokend/api.sock".into())
        );
        assert_eq!(c.proxies[0].mode, Some(0o660));
        assert_eq!(c.proxies[0].credential, "main");
        assert_eq!(
            c.proxies[1].listen,
            Listen::Tcp("127.0.0.1:8787".parse().unwrap())
        );
        assert_eq!(c.proxies[1].mode, None);
        assert_eq!(c.proxies[3].listen.to_string(), "[::1]:8787");
        assert_eq!(
            c.proxies[0].listen.to_string(),
            "unix:/run/voipbin-tokend/api.sock"
        );
        assert!(parse("").unwrap().proxies.is_empty());
    }

    #[test]
    fn anything_but_loopback_or_an_absolute_socket_path_is_refused() {
        for listen in [
            "0.0.0.0:8787",
            "192.168.1.5:8787",
            "[::]:8787",
            "[::ffff:127.0.0.1]:8787",
            "localhost:8787",
            "127.0.0.1",
            "127.0.0.1:0",
            "unix:relative.sock",
            "unix:",
            "unix:/run/dir/",
            "tcp://127.0.0.1:8787",
        ] {
            let (key, message) = invalid(&proxy(listen, ""));
            assert_eq!(key, "proxy[0].listen", "{listen}: {message}");
        }
        let long = format!("unix:/{}/api.sock", "d".repeat(110));
        let (key, message) = invalid(&proxy(&long, ""));
        assert_eq!(key, "proxy[0].listen");
        assert!(message.contains("at most 107"), "{message}");
        let (_, message) = invalid(&proxy("0.0.0.0:8787", ""));
        assert!(message.contains("not a loopback"), "{message}");
    }

    #[test]
    fn the_credential_must_exist() {
        let text = "[[proxy]]\nlisten = \"127.0.0.1:8787\"\ncredential = \"nope\"\n";
        let (key, message) = invalid(text);
        assert_eq!(key, "proxy[0].credential");
        assert!(
            message.contains("\"nope\"") && message.contains("main"),
            "{message}"
        );
    }

    #[test]
    fn mode_and_group_are_for_unix_sockets_only_and_checked() {
        assert_eq!(
            invalid(&proxy("127.0.0.1:8787", "mode = \"0660\"")).0,
            "proxy[0].mode"
        );
        assert_eq!(
            invalid(&proxy("127.0.0.1:8787", "group = \"0\"")).0,
            "proxy[0].group"
        );
        for bad in ["0999", "rw", "", "01777"] {
            let (key, _) = invalid(&proxy("unix:/run/a.sock", &format!("mode = \"{bad}\"")));
            assert_eq!(key, "proxy[0].mode", "{bad}");
        }
        let c = parse(&proxy("unix:/run/a.sock", "mode = \"0600\"")).unwrap();
        assert_eq!(c.proxies[0].mode, Some(0o600));
        let (key, message) = invalid(&proxy("unix:/run/a.sock", "group = \"no-such-group-here\""));
        assert_eq!(key, "proxy[0].group");
        assert!(message.contains("no group named"), "{message}");
        let own = nix::unistd::getegid().as_raw().to_string();
        let c = parse(&proxy("unix:/run/a.sock", &format!("group = \"{own}\""))).unwrap();
        assert_eq!(c.proxies[0].group.as_ref().map(|g| g.id.to_string()), Some(own));
        // World-accessible: allowed, with a warning.
        let c = parse(&proxy("unix:/run/a.sock", "mode = \"0666\"")).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("proxy[0].mode")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn two_proxies_on_one_address_or_on_the_health_port_are_refused() {
        let (key, message) = invalid(&format!(
            "{}{}",
            proxy("127.0.0.1:8787", ""),
            proxy("127.0.0.1:8787", "")
        ));
        assert_eq!(key, "proxy[1].listen");
        assert!(message.contains("proxy[0]"), "{message}");
        let (key, _) = invalid(&format!(
            "{}{}",
            proxy("unix:/run/a.sock", ""),
            proxy("unix:/run/a.sock", "")
        ));
        assert_eq!(key, "proxy[1].listen");
        let (key, message) = invalid(&format!(
            "[health]\nlisten = \"0.0.0.0:8787\"\n{}",
            proxy("127.0.0.1:8787", "")
        ));
        assert_eq!(key, "proxy[0].listen");
        assert!(message.contains("health.listen"), "{message}");
    }

    #[test]
    fn unknown_keys_in_a_proxy_are_refused() {
        let err = parse(&proxy("127.0.0.1:8787", "lisen = \"x\"")).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    fn load(dir: &Path, proxies: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[state]\ndir = \"{}/state\"\n[[credential]]\nname = \"main\"\nusername = \"a@b.c\"\npassword-file = \"{}/pw\"\n[[credential.output]]\npath = \"{}/main.token\"\n{proxies}",
            dir.display(),
            dir.display(),
            dir.display()
        );
        let path = dir.join("config.toml");
        std::fs::write(&path, &text).unwrap();
        Config::from_file_text(&text, &path)
    }

    #[test]
    fn a_socket_path_is_none_of_the_daemons_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("pw"), "x").unwrap();
        std::fs::write(d.join("plain"), "x").unwrap();
        let cases = [
            (format!("unix:{}/main.token", d.display()), "output"),
            (format!("unix:{}/pw", d.display()), "password-file"),
            (format!("unix:{}/config.toml", d.display()), "config file"),
            (format!("unix:{}/state/api.sock", d.display()), "state directory"),
            (format!("unix:{}/plain", d.display()), "not a socket"),
        ];
        for (listen, needle) in cases {
            match load(d, &proxy(&listen, "")) {
                Err(ConfigError::Invalid { key, message, .. }) => {
                    assert_eq!(key, "proxy[0].listen", "{listen}: {message}");
                    assert!(message.contains(needle), "{listen}: {message}");
                }
                other => panic!("{listen}: expected Invalid, got {other:?}"),
            }
        }
        // Another spelling of one socket.
        std::fs::create_dir(d.join("run")).unwrap();
        let two = format!(
            "{}{}",
            proxy(&format!("unix:{}/run/a.sock", d.display()), ""),
            proxy(&format!("unix:{}/run/../run/a.sock", d.display()), "")
        );
        match load(d, &two) {
            Err(ConfigError::Invalid { key, message, .. }) => {
                assert_eq!(key, "proxy[1].listen", "{message}");
                assert!(message.contains("proxy[0]"), "{message}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        // A stale socket is fine; so is a path that does not exist yet.
        let stale = d.join("run/stale.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&stale).unwrap();
        load(d, &proxy(&format!("unix:{}", stale.display()), "")).unwrap();
        load(d, &proxy(&format!("unix:{}/run/new.sock", d.display()), "")).unwrap();
    }
}
