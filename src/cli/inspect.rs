//! `inspect`: a token file's expiry and time left; never prints the token.

use std::path::Path;
use std::process::ExitCode;

use time::OffsetDateTime;

use crate::token::{self, Validity};

/// `inspect` of an access-key output: a key carries no expiry of its own,
/// so it is read from the file (env, shell: `*_EXPIRES_AT`; json:
/// `expires_at`). Prints the key's public prefix, never the key.
fn inspect_key(file: &Path, text: &str, json: bool) -> ExitCode {
    let Some(start) = text.find("vb_") else {
        eprintln!(
            "voipbin-tokend: no token or access key found in {}",
            file.display()
        );
        return ExitCode::FAILURE;
    };
    let key: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !crate::api::keys::is_key_shaped(&key) {
        eprintln!(
            "voipbin-tokend: no token or access key found in {}",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    let prefix = crate::api::keys::prefix_of(&key).to_string();
    let as_json = serde_json::from_str::<serde_json::Value>(text).ok();
    let from_json = |field: &str| {
        as_json
            .as_ref()
            .and_then(|v| v.get(field)?.as_str().map(str::to_owned))
    };
    let from_lines = || {
        text.lines().find_map(|line| {
            let line = line.trim().trim_start_matches("export ");
            let (name, value) = line.split_once('=')?;
            name.ends_with("_EXPIRES_AT")
                .then(|| value.trim_matches('\'').to_string())
        })
    };
    let expires_at = from_json("expires_at")
        .or_else(from_lines)
        .and_then(|t| OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok());
    let Some(expires_at) = expires_at else {
        eprintln!(
            "voipbin-tokend: {} holds an access key ({prefix}...) but no expiry: a raw key carries none; see `voipbin-tokend status`",
            file.display()
        );
        return ExitCode::FAILURE;
    };
    let remaining = (expires_at - crate::now()).whole_seconds();
    if json {
        let value = serde_json::json!({
            "file": file.display().to_string(),
            "kind": "access-key",
            "key_prefix": prefix,
            "id": from_json("id"),
            "expires_at": token::rfc3339(expires_at),
            "remaining_seconds": remaining,
            "expired": remaining <= 0,
        });
        say!("{value}");
    } else {
        say!("file:       {}", file.display());
        say!("access key: {prefix}...");
        if let Some(id) = from_json("id") {
            say!("key id:     {id}");
        }
        say!("expires at: {}", token::rfc3339(expires_at));
        let d = std::time::Duration::from_secs(remaining.unsigned_abs());
        if remaining > 0 {
            say!("remaining:  {}", humantime::format_duration(d));
        } else {
            say!("remaining:  none, EXPIRED {} ago", humantime::format_duration(d));
        }
    }
    ExitCode::SUCCESS
}

pub(super) fn inspect(file: &Path, json: bool) -> ExitCode {
    use crate::fsread::{MAX_OUTPUT, read_bounded, read_capped};
    // Bounded like every read of an output: a token file is well under 64 KiB.
    let (bytes, mtime) = if file == Path::new("-") {
        match read_capped(
            std::io::stdin(),
            MAX_OUTPUT,
            "token file",
            Path::new("standard input"),
        ) {
            Ok(b) => (b, None),
            Err(e) => {
                eprintln!("voipbin-tokend: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        match read_bounded(file, MAX_OUTPUT, "token file") {
            Ok(b) => (b, std::fs::metadata(file).and_then(|m| m.modified()).ok()),
            Err(e) => {
                eprintln!("voipbin-tokend: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let text = std::str::from_utf8(&bytes).ok();
    let Some((_, claims)) = text.and_then(token::find_in) else {
        return inspect_key(file, text.unwrap_or_default(), json);
    };
    let now = crate::now();
    // A token without expiry lives 7 days from when it was obtained; for a
    // file that is its modification time, for stdin it is unknown.
    let expires_at = claims
        .expires_at
        .or_else(|| mtime.map(|m| Validity::new(claims, token::from_system_time(m)).expires_at));
    let remaining = expires_at.map(|e| (e - now).whole_seconds());
    if json {
        let value = serde_json::json!({
            "file": file.display().to_string(),
            "expires_at": expires_at.map(token::rfc3339),
            "issued_at": claims.issued_at.map(token::rfc3339),
            "expiry_from_claims": claims.expires_at.is_some(),
            "remaining_seconds": remaining,
            "expired": remaining.map(|r| r <= 0),
        });
        say!("{value}");
    } else {
        say!("file:       {}", file.display());
        match (expires_at, remaining) {
            (Some(e), Some(r)) => {
                let how = if claims.expires_at.is_some() {
                    ""
                } else {
                    " (no expiry claim: 7 days from the file's time)"
                };
                say!("expires at: {}{how}", token::rfc3339(e));
                if r > 0 {
                    say!(
                        "remaining:  {}",
                        humantime::format_duration(std::time::Duration::from_secs(r as u64))
                    );
                } else {
                    say!(
                        "remaining:  none, EXPIRED {} ago",
                        humantime::format_duration(std::time::Duration::from_secs((-r) as u64))
                    );
                }
            }
            _ => say!("expires at: unknown (no expiry claim; VoIPBIN tokens live 7 days from login)"),
        }
        if let Some(iat) = claims.issued_at {
            say!("issued at:  {}", token::rfc3339(iat));
        }
    }
    ExitCode::SUCCESS
}
