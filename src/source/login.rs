//! The login-token source: `POST /auth/login` for the next token; at start,
//! the token already in an output, so that a restart does not log in.

use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::{Api, Ctx, Failure, Held, jitter_sample};
use crate::config::{Format, Login, OutputConfig};
use crate::schedule;
use crate::secret::Secret;
use crate::token::{self, TokenError, Validity};

/// Server clock offsets below this are Date-header noise and ignored.
const SKEW_IGNORED: time::Duration = time::Duration::seconds(5);
/// Server clock offsets above this are worth a warning.
const SKEW_WARN: time::Duration = time::Duration::seconds(60);

#[derive(Debug, Default)]
pub struct LoginSource {
    skew_warned: bool,
}

impl LoginSource {
    /// Looks for a usable token in the outputs. Takes the one that expires
    /// last; an expired one is ignored.
    pub async fn adopt(&mut self, ctx: &Ctx<'_>, now: OffsetDateTime) -> Option<Held> {
        let outputs = ctx.cfg.outputs.clone();
        let found = tokio::task::spawn_blocking(move || {
            outputs.iter().filter_map(read_token_file).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        // The token that expires last; for when it was obtained, a JSON
        // output's own record beats a file's mtime (so that output is not
        // rewritten just because another file is older or newer).
        let best = found
            .iter()
            .filter(|(_, claims, obtained_at, _)| !Validity::new(*claims, *obtained_at).is_expired(now))
            .max_by_key(|(_, claims, obtained_at, _)| Validity::new(*claims, *obtained_at).expires_at)
            .map(|f| f.0.clone())?;
        let (tok, claims, obtained_at, _) = found.iter().filter(|f| f.0 == best).max_by_key(|f| f.3)?.clone();
        let validity = Validity::new(claims, obtained_at);
        let due_at = schedule::due_at(&validity, &ctx.cfg.renewal, jitter_sample());
        info!(
            expires_at = %token::rfc3339(validity.expires_at),
            next_renewal = %token::rfc3339(due_at),
            "reusing the token found on disk"
        );
        Some(Held {
            token: tok,
            validity,
            obtained_at,
            due_at,
            key_id: None,
        })
    }

    /// Reads the password, waits for the login budget, logs in, checks the token.
    pub async fn login(&mut self, ctx: &Ctx<'_>) -> Result<Held, Failure> {
        let login = ctx
            .cfg
            .login
            .as_ref()
            .ok_or_else(|| Failure::transient("no login configured".into()))?;
        let held = self.login_as(ctx.api, login, ctx).await?;
        let due_at = schedule::due_at(&held.validity, &ctx.cfg.renewal, jitter_sample());
        Ok(Held { due_at, ..held })
    }

    /// One login as `login`, the token checked (a JWT, not expired by the
    /// server's clock). `due_at` is left at the expiry: the caller
    /// schedules. Also used by access keys managed with an agent login.
    pub async fn login_as(&mut self, api: &Api, login: &Login, ctx: &Ctx<'_>) -> Result<Held, Failure> {
        let source = login.password.clone();
        let password = tokio::task::spawn_blocking(move || source.read())
            .await
            .map_err(|e| Failure::transient(format!("password: {e}")))?
            .map_err(|e| Failure::transient(format!("password: {e}")))?;
        let _slot = api.limiter.acquire().await;
        debug!(url = %api.client.login_url(), "logging in");
        let started = std::time::Instant::now();
        let answer = api.client.login(&login.username, &password).await;
        ctx.metrics
            .login_duration(&ctx.cfg.name, started.elapsed().as_secs_f64());
        let answer = answer.map_err(|e| Failure {
            kind: e.kind(),
            message: e.to_string(),
        })?;
        drop(password);

        let mut claims = answer.claims;
        if let Some(skew) = answer.server_skew.filter(|s| s.abs() > SKEW_IGNORED) {
            if skew.abs() > SKEW_WARN && !self.skew_warned {
                warn!(
                    skew_seconds = skew.whole_seconds(),
                    "the server's clock differs from ours; using the server's view for the token's lifetime"
                );
                self.skew_warned = true;
            }
            claims.expires_at = claims.expires_at.map(|t| t - skew);
            claims.issued_at = claims.issued_at.map(|t| t - skew);
        }
        let validity = Validity::new(claims, answer.received_at);
        if validity.is_expired(crate::now()) {
            return Err(Failure::transient(format!(
                "server sent an unusable token: {}",
                TokenError::Expired
            )));
        }
        Ok(Held {
            token: answer.token,
            validity,
            obtained_at: answer.received_at,
            due_at: validity.expires_at,
            key_id: None,
        })
    }
}

/// Reads the token in an output file, with when it was obtained: the JSON
/// format's `obtained_at` (`true` in the result), else the file's mtime.
/// Bounded ([`crate::fsread::MAX_OUTPUT`]) and never blocking: an output
/// that is too large, or not a regular file, holds no token we reuse.
fn read_token_file(out: &OutputConfig) -> Option<(Secret, token::Claims, OffsetDateTime, bool)> {
    let bytes = match crate::fsread::read_bounded(&out.path, crate::fsread::MAX_OUTPUT, "output") {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return None,
        Err(e) => {
            tracing::warn!(error = %e, "not reusing a token from this output");
            return None;
        }
    };
    let text = std::str::from_utf8(&bytes).ok()?;
    let (tok, claims) = token::find_in(text)?;
    let mtime = std::fs::metadata(&out.path).ok()?.modified().ok()?;
    let mut obtained_at = OffsetDateTime::from(mtime);
    let mut from_json = false;
    if out.format == Format::Json
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(text)
        && let Some(t) = v.get("obtained_at").and_then(|t| t.as_str())
        && let Ok(t) = OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
    {
        obtained_at = t;
        from_json = true;
    }
    Some((Secret::new(tok.to_string()), claims, obtained_at, from_json))
}
