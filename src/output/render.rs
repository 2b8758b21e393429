//! What each output format holds. Pure: token facts in, bytes out.
//!
//! The token is checked at decode time to contain only base64url characters
//! and dots, so it is safe unquoted in env files and inside single quotes in
//! shell files.

use serde::Serialize;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::format::Format;
use crate::secret::Secret;
use crate::token::rfc3339;

/// Everything a format may show.
#[derive(Debug, Clone, Copy)]
pub struct TokenFacts<'a> {
    pub credential: &'a str,
    pub username: &'a str,
    pub token: &'a Secret,
    pub expires_at: OffsetDateTime,
    pub obtained_at: OffsetDateTime,
    /// An access key's id; `None` for a login token.
    pub key_id: Option<&'a str>,
}

/// The placeholders a template may use.
/// (`{id}` is an access key's id, and only for access keys.)
pub const PLACEHOLDERS: [&str; 6] = [
    "token",
    "expires_at",
    "expires_at_unix",
    "username",
    "credential",
    "id",
];

/// The bytes of an output file. Zeroed when dropped: they hold the token.
pub fn render(format: &Format, facts: &TokenFacts<'_>) -> Zeroizing<Vec<u8>> {
    let token = facts.token.expose();
    let expires = rfc3339(facts.expires_at);
    let text = match format {
        Format::Raw => token.to_string(),
        Format::Env { variable } => format!("{variable}={token}\n{variable}_EXPIRES_AT={expires}\n"),
        Format::Shell { variable } => {
            format!("export {variable}='{token}'\nexport {variable}_EXPIRES_AT='{expires}'\n")
        }
        Format::Json if facts.key_id.is_some() => {
            #[derive(Serialize)]
            struct KeyJson<'a> {
                credential: &'a str,
                kind: &'a str,
                id: &'a str,
                token: &'a str,
                expires_at: &'a str,
                obtained_at: &'a str,
            }
            let mut text = serde_json::to_string(&KeyJson {
                credential: facts.credential,
                kind: "access-key",
                id: facts.key_id.unwrap_or_default(),
                token,
                expires_at: &expires,
                obtained_at: &rfc3339(facts.obtained_at),
            })
            .unwrap_or_default();
            text.push('\n');
            text
        }
        Format::Json => {
            #[derive(Serialize)]
            struct Json<'a> {
                credential: &'a str,
                username: &'a str,
                token: &'a str,
                expires_at: &'a str,
                obtained_at: &'a str,
            }
            let mut text = serde_json::to_string(&Json {
                credential: facts.credential,
                username: facts.username,
                token,
                expires_at: &expires,
                obtained_at: &rfc3339(facts.obtained_at),
            })
            .unwrap_or_default();
            text.push('\n');
            text
        }
        Format::Template { template } => expand(template, facts),
    };
    Zeroizing::new(text.into_bytes())
}

/// Checks a template: every `{name}` is a known placeholder; `{{` and `}}`
/// stand for literal braces.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut unknown = None;
    let mut has_token = false;
    walk(template, |piece| {
        if let Piece::Placeholder(name) = piece {
            has_token |= name == "token";
            if !PLACEHOLDERS.contains(&name) && unknown.is_none() {
                unknown = Some(name.to_string());
            }
        }
    })?;
    match unknown {
        Some(name) => Err(format!(
            "unknown placeholder {{{name}}}; use {}",
            PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
        )),
        // Without the token the file is useless, and no token can be found
        // in it at start, so every start would log in.
        None if !has_token => Err("has no {token} placeholder; an output must hold the token".into()),
        None => Ok(()),
    }
}

/// True if the template uses `{name}`.
pub fn uses(template: &str, name: &str) -> bool {
    let mut found = false;
    let _ = walk(template, |piece| {
        if let Piece::Placeholder(p) = piece {
            found |= p == name;
        }
    });
    found
}

fn expand(template: &str, facts: &TokenFacts<'_>) -> String {
    let mut out = String::with_capacity(template.len() + facts.token.expose().len());
    // The template was checked at config load, so the walk cannot fail.
    let _ = walk(template, |piece| match piece {
        Piece::Text(t) => out.push_str(t),
        Piece::Placeholder("token") => out.push_str(facts.token.expose()),
        Piece::Placeholder("expires_at") => out.push_str(&rfc3339(facts.expires_at)),
        Piece::Placeholder("expires_at_unix") => out.push_str(&facts.expires_at.unix_timestamp().to_string()),
        Piece::Placeholder("username") => out.push_str(facts.username),
        Piece::Placeholder("credential") => out.push_str(facts.credential),
        Piece::Placeholder("id") => out.push_str(facts.key_id.unwrap_or_default()),
        Piece::Placeholder(_) => {}
    });
    out
}

enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

fn walk<'a>(template: &'a str, mut each: impl FnMut(Piece<'a>)) -> Result<(), String> {
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        each(Piece::Text(&rest[..i]));
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            each(Piece::Text("{"));
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            each(Piece::Text("}"));
            rest = after;
        } else if tail.starts_with('}') {
            return Err("a lone '}' (write '}}' for a literal brace)".into());
        } else {
            let end = tail
                .find('}')
                .ok_or("a '{' without its '}' (write '{{' for a literal brace)")?;
            each(Piece::Placeholder(&tail[1..end]));
            rest = &tail[end + 1..];
        }
    }
    each(Piece::Text(rest));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn facts(token: &Secret) -> TokenFacts<'_> {
        TokenFacts {
            credential: "main",
            username: "agent@example.com",
            token,
            expires_at: datetime!(2026-12-04 09:15:02.123456 UTC),
            obtained_at: datetime!(2026-11-27 09:15:02 UTC),
            key_id: None,
        }
    }

    fn text(format: Format) -> String {
        let t = Secret::new("eyJh.eyJi.c2ln".into());
        String::from_utf8(render(&format, &facts(&t)).to_vec()).unwrap()
    }

    #[test]
    fn raw_is_the_token_exactly() {
        assert_eq!(text(Format::Raw), "eyJh.eyJi.c2ln");
    }

    #[test]
    fn env_and_shell() {
        assert_eq!(
            text(Format::Env {
                variable: "VOIPBIN_TOKEN".into()
            }),
            "VOIPBIN_TOKEN=eyJh.eyJi.c2ln\nVOIPBIN_TOKEN_EXPIRES_AT=2026-12-04T09:15:02Z\n"
        );
        assert_eq!(
            text(Format::Shell {
                variable: "API".into()
            }),
            "export API='eyJh.eyJi.c2ln'\nexport API_EXPIRES_AT='2026-12-04T09:15:02Z'\n"
        );
    }

    #[test]
    fn json_fields_in_order() {
        assert_eq!(
            text(Format::Json),
            concat!(
                r#"{"credential":"main","username":"agent@example.com","token":"eyJh.eyJi.c2ln","#,
                r#""expires_at":"2026-12-04T09:15:02Z","obtained_at":"2026-11-27T09:15:02Z"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn template_placeholders_and_escapes() {
        let t = "{{\"h\": \"Bearer {token}\"}} {expires_at} {expires_at_unix} {username} {credential}\n";
        check_template(t).unwrap();
        assert_eq!(
            text(Format::Template { template: t.into() }),
            "{\"h\": \"Bearer eyJh.eyJi.c2ln\"} 2026-12-04T09:15:02Z 1796375702 agent@example.com main\n"
        );
    }

    #[test]
    fn template_errors() {
        assert!(check_template("{tokn}").unwrap_err().contains("{tokn}"));
        assert!(check_template("{token").is_err());
        assert!(check_template("x } y").is_err());
        // A template without the token is refused: no token could be found
        // in its file at start, so every start would log in.
        assert!(
            check_template("no placeholders at all")
                .unwrap_err()
                .contains("{token}")
        );
        assert!(check_template("{{token}} is escaped").is_err());
        check_template("Bearer {token}").unwrap();
    }

    #[test]
    fn access_keys_json_and_id() {
        let key = Secret::new("vb_0123456789abcdefABCDEF0123456789".into());
        let facts = TokenFacts {
            key_id: Some("0b1c"),
            username: "",
            ..facts(&key)
        };
        let json = String::from_utf8(render(&Format::Json, &facts).to_vec()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"credential":"main","kind":"access-key","id":"0b1c","token":"vb_0123456789abcdefABCDEF0123456789","#,
                r#""expires_at":"2026-12-04T09:15:02Z","obtained_at":"2026-11-27T09:15:02Z"}"#,
                "\n"
            )
        );
        let t = Format::Template {
            template: "{id} {token}".into(),
        };
        assert_eq!(
            String::from_utf8(render(&t, &facts).to_vec()).unwrap(),
            "0b1c vb_0123456789abcdefABCDEF0123456789"
        );
        assert!(uses("a {id} b", "id") && !uses("a {{id}} b", "id"));
    }
}
