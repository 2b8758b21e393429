//! Environment variable names: which are names at all, and which may not
//! carry a secret (an output's `variable`, `exec --env`).

/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why a secret may not go under `name`, if it may not: the names the
/// system reads in every program, before or around the program itself.
/// The dynamic loader prints a value it cannot use to stderr
/// (`LD_PRELOAD=<the token>` writes the token to the program's log, the
/// journal under systemd); `PATH` is where programs are looked for; the
/// service manager's variables are its own.
pub fn reserved_for_a_secret(name: &str) -> Option<&'static str> {
    if name.starts_with("LD_") || name == "GLIBC_TUNABLES" {
        Some("is read by the dynamic loader, which prints a value it cannot use to the program's stderr")
    } else if name == "PATH" {
        Some("is where programs are looked for")
    } else if ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"].contains(&name) {
        Some("is the service manager's")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_the_names_no_secret_may_take() {
        assert!(is_env_name("VOIPBIN_API_KEY") && is_env_name("_x1"));
        assert!(!is_env_name("1A") && !is_env_name("A-B") && !is_env_name("") && !is_env_name("A B"));
        for reserved in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "GLIBC_TUNABLES",
            "PATH",
            "NOTIFY_SOCKET",
            "WATCHDOG_PID",
        ] {
            assert!(reserved_for_a_secret(reserved).is_some(), "{reserved}");
        }
        for free in ["OLD_PATH", "VN_LD_X", "VOIPBIN_TOKEN", "path"] {
            assert_eq!(reserved_for_a_secret(free), None, "{free}");
        }
    }
}
