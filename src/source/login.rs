//! The login-token source: `POST /auth/login` for the next token; at start,
//! the token already in an output, so that a restart does not log in.

use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::held::{Ctx, Failure, Held, jitter_sample};
use crate::api::budget::Api;
use crate::config::{Login, OutputConfig};
use crate::output::Format;
use crate::schedule;
use crate::secret::Secret;
use crate::state::record::{self as record, TokenRecord};
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
    /// Looks for a usable token in the outputs, of this credential's own
    /// login (see [`Identity`]), judged with the server clock skew recorded
    /// when it was obtained. Takes the one that expires last; an expired
    /// one is ignored.
    pub async fn adopt(&mut self, ctx: &Ctx<'_>, now: OffsetDateTime) -> Option<Held> {
        let outputs = ctx.cfg.outputs.clone();
        let (state_dir, name) = (ctx.state_dir.to_path_buf(), ctx.cfg.name.clone());
        let (found, record) = tokio::task::spawn_blocking(move || {
            let found: Vec<_> = outputs
                .iter()
                .filter_map(|out| {
                    let (tok, claims, obtained_at, from_json, json_user) = read_token_file(out)?;
                    Some((out.path.clone(), tok, claims, obtained_at, from_json, json_user))
                })
                .collect();
            (found, record::read(&state_dir, &name))
        })
        .await
        .ok()?;
        let base_url = ctx.api.config.base_url.to_string();
        // The server's clock skew as last measured, if it is the same server.
        // A recorded skew beyond [`token::MAX_SKEW`] (an edited or corrupt
        // record) is ignored: it would move the token's times by as much.
        let recorded = record
            .as_ref()
            .filter(|r| r.base_url == base_url)
            .map_or(time::Duration::ZERO, TokenRecord::server_skew);
        let skew = token::believable_skew(recorded).unwrap_or_else(|| {
            warn!(
                path = %record::path(ctx.state_dir, &ctx.cfg.name).display(),
                "the server clock skew recorded for this credential is implausible (over a day); ignoring it"
            );
            time::Duration::ZERO
        });
        let mut candidates = Vec::new();
        for (path, tok, claims, obtained_at, from_json, json_user) in found {
            let this_token = record
                .as_ref()
                .filter(|r| r.claimed_expiry.is_some() && r.claimed_expiry == claims.expires_at);
            let claimed = token::username(tok.expose());
            let identity = Identity {
                claimed: claimed.as_deref(),
                in_json: json_user.as_deref(),
                record: this_token,
            };
            if let Some(reason) = identity.mismatch(ctx.cfg.username(), &base_url) {
                info!(path = %path.display(), reason, "token on disk not reused: {reason}");
                continue;
            }
            // A file cannot have been written in the future: an mtime or a
            // JSON `obtained_at` ahead of now is taken as now.
            let obtained_at = obtained_at.min(now);
            let validity = Validity::new(server_to_ours(claims, skew), obtained_at);
            if !validity.is_expired(now) {
                candidates.push((tok, validity, from_json));
            }
        }
        // The token that expires last; for when it was obtained, a JSON
        // output's own record beats a file's mtime (so that output is not
        // rewritten just because another file is older or newer).
        let (tok, validity, _) = candidates
            .into_iter()
            .max_by_key(|(_, v, from_json)| (v.expires_at, *from_json))?;
        let due_at = schedule::due_at(&validity, &ctx.cfg.renewal, jitter_sample());
        info!(
            expires_at = %token::rfc3339(validity.expires_at),
            next_renewal = %token::rfc3339(due_at),
            "reusing the token found on disk"
        );
        Some(Held {
            token: tok,
            validity,
            obtained_at: validity.obtained_at,
            due_at,
            key_id: None,
            minted: false,
        })
    }

    /// Reads the password, waits for the login budget, logs in, checks the token.
    pub async fn login(&mut self, ctx: &Ctx<'_>) -> Result<Held, Failure> {
        let login = ctx
            .cfg
            .login
            .as_ref()
            .ok_or_else(|| Failure::transient("no login configured".into()))?;
        let (held, rec) = self.login_as(ctx.api, login, ctx).await?;
        // The record of this login, so a restart judges the token as this
        // process did. A failure costs only that (and is logged).
        let (dir, name) = (ctx.state_dir.to_path_buf(), ctx.cfg.name.clone());
        let saved = tokio::task::spawn_blocking(move || record::write(&dir, &name, &rec)).await;
        if let Err(e) = saved.unwrap_or_else(|e| Err(e.to_string())) {
            warn!(error = %e, "cannot keep the record of this login; a restart will judge the token by our clock alone");
        }
        let due_at = schedule::due_at(&held.validity, &ctx.cfg.renewal, jitter_sample());
        Ok(Held { due_at, ..held })
    }

    /// One login as `login`, the token checked (a JWT, not expired by the
    /// server's clock). `due_at` is left at the expiry: the caller
    /// schedules. Also used by access keys managed with an agent login.
    pub async fn login_as(
        &mut self,
        api: &Api,
        login: &Login,
        ctx: &Ctx<'_>,
    ) -> Result<(Held, TokenRecord), Failure> {
        let source = login.password.clone();
        let password = tokio::task::spawn_blocking(move || source.read())
            .await
            .map_err(|e| Failure::transient(format!("password: {e}")))?
            .map_err(|e| Failure::transient(format!("password: {e}")))?;
        let _slot = api.limiter.acquire().await;
        debug!(url = %api.client.login_url(), "logging in");
        let started = std::time::Instant::now();
        // Boxed: the request's future (about 2 KiB) exists only while a
        // login runs, not in every credential waiting for its slot (1000
        // of them at a start with 1000 credentials).
        let answer = Box::pin(api.client.login(&login.username, &password)).await;
        ctx.metrics
            .login_duration(&ctx.cfg.name, started.elapsed().as_secs_f64());
        let answer = answer.map_err(|e| Failure {
            kind: e.kind(),
            message: e.to_string(),
        })?;
        drop(password);

        let measured = answer
            .server_skew
            .filter(|s| s.abs() > SKEW_IGNORED)
            .unwrap_or(time::Duration::ZERO);
        let skew = match token::believable_skew(measured) {
            Some(skew) => skew,
            None => {
                warn!(
                    skew_seconds = measured.whole_seconds(),
                    "the server's Date header is implausibly far from our clock (over a day); ignoring it and judging the token by our clock"
                );
                time::Duration::ZERO
            }
        };
        if skew.abs() > SKEW_WARN && !self.skew_warned {
            warn!(
                skew_seconds = skew.whole_seconds(),
                "the server's clock differs from ours; using the server's view for the token's lifetime"
            );
            self.skew_warned = true;
        }
        let validity = Validity::new(server_to_ours(answer.claims, skew), answer.received_at);
        log_ignored_claims(&validity);
        if validity.is_expired(crate::now()) {
            return Err(Failure::transient(format!(
                "server sent an unusable token: {}",
                TokenError::Expired
            )));
        }
        let rec = TokenRecord {
            username: login.username.clone(),
            base_url: api.config.base_url.to_string(),
            server_skew_ms: i64::try_from(skew.whole_milliseconds()).unwrap_or(0),
            claimed_expiry: answer.claims.expires_at,
            obtained_at: answer.received_at,
        };
        let held = Held {
            token: answer.token,
            validity,
            obtained_at: answer.received_at,
            due_at: validity.expires_at,
            key_id: None,
            minted: true,
        };
        Ok((held, rec))
    }
}

/// What an output file says: its token and claims, when it was obtained
/// (the JSON format's `obtained_at`, flagged `true`, else the file's
/// mtime), and the `username` a JSON output recorded beside the token.
type FoundToken = (Secret, token::Claims, OffsetDateTime, bool, Option<String>);

/// Reads the token in an output file, with what the file says about it.
/// Bounded ([`crate::fsread::MAX_OUTPUT`]) and never blocking: an output
/// that is too large, or not a regular file, holds no token we reuse.
fn read_token_file(out: &OutputConfig) -> Option<FoundToken> {
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
    let mut obtained_at = token::from_system_time(mtime);
    let mut from_json = false;
    let mut json_user = None;
    if out.format == Format::Json
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(text)
    {
        json_user = v.get("username").and_then(|u| u.as_str()).map(str::to_owned);
        if let Some(t) = v.get("obtained_at").and_then(|t| t.as_str())
            && let Ok(t) = OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        {
            obtained_at = t;
            from_json = true;
        }
    }
    Some((
        Secret::new(tok.to_string()),
        claims,
        obtained_at,
        from_json,
        json_user,
    ))
}

/// What can be told about whose token a file holds.
struct Identity<'a> {
    /// The token's own `agent.username` claim.
    claimed: Option<&'a str>,
    /// The `username` a JSON output recorded next to the token.
    in_json: Option<&'a str>,
    /// The record of the login that produced this very token.
    record: Option<&'a TokenRecord>,
}

impl Identity<'_> {
    /// Why a token must not be reused for `username` at `base_url`, if it
    /// must not. The token's claim is authoritative; a JSON output's
    /// `username` stands in for a token that names no account. A token
    /// that nobody names (another token kind, no record) is reused.
    fn mismatch(&self, username: &str, base_url: &str) -> Option<&'static str> {
        match (self.claimed, self.in_json) {
            (Some(u), _) if u != username => return Some("it was issued to another username"),
            (None, Some(u)) if u != username => return Some("its file records another username"),
            _ => {}
        }
        let record = self.record?;
        if record.username != username {
            Some("it was obtained for another username")
        } else if record.base_url != base_url {
            Some("it was obtained from another base-url")
        } else {
            None
        }
    }
}

/// Moves the claims' times from the server's clock into ours.
fn server_to_ours(mut claims: token::Claims, skew: time::Duration) -> token::Claims {
    // Saturating: a claim in year 9999 (or 1) must not panic; such a time
    // is then judged implausible by [`Validity::new`].
    claims.expires_at = claims.expires_at.map(|t| t.saturating_sub(skew));
    claims.issued_at = claims.issued_at.map(|t| t.saturating_sub(skew));
    claims
}

/// Says which claims of a fresh token were not believed (see [`Validity::new`]).
fn log_ignored_claims(v: &Validity) {
    if v.expiry_ignored {
        warn!(
            assumed_expiry = %token::rfc3339(v.expires_at),
            "the token's expiry is implausibly far ahead; assuming the default 7-day lifetime"
        );
    }
    if v.iat_ignored {
        warn!(
            "the token's `iat` is after its expiry, in the future or far in the past; its lifetime is counted from when it was obtained"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_reused_only_for_its_own_login() {
        let t0 = time::macros::datetime!(2026-11-27 00:00 UTC);
        let me = "agent@example.com";
        let url = "http://127.0.0.1:9/";
        let rec = |username: &str, base_url: &str| TokenRecord {
            username: username.into(),
            base_url: base_url.into(),
            server_skew_ms: 0,
            claimed_expiry: None,
            obtained_at: t0,
        };
        let check = |claimed, in_json, record: Option<&TokenRecord>| {
            Identity {
                claimed,
                in_json,
                record,
            }
            .mismatch(me, url)
        };
        // Nothing names anyone (another token kind, no record): reused.
        assert_eq!(check(None, None, None), None);
        assert_eq!(check(Some(me), Some(me), Some(&rec(me, url))), None);
        // The token's claim is authoritative over the JSON output's record.
        assert!(check(Some("other"), Some(me), None).is_some());
        assert_eq!(check(Some(me), Some("other"), None), None);
        assert!(check(None, Some("other"), None).is_some());
        // The record of the login that produced it: another user or server.
        assert!(check(Some(me), None, Some(&rec("other", url))).is_some());
        assert!(check(Some(me), None, Some(&rec(me, "https://elsewhere.example/"))).is_some());
    }
}
