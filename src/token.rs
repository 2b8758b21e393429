//! What a token says about itself: its expiry, read without checking the
//! signature (the signing key is the server's, not ours).
//!
//! VoIPBIN login tokens carry no standard `exp`: the expiry is a string claim
//! `expire`, `2006-01-02T15:04:05.000000Z` (older servers wrote
//! `2006-01-02 15:04:05.000000`, UTC). Other token kinds use `exp`/`iat`.
//! A token with neither is taken to live [`DEFAULT_LIFETIME`] from when it
//! was obtained.
//!
//! Errors never include the token or any part of its payload: the payload
//! carries account details and is as secret as the token.

use serde::Deserialize;
use time::{
    OffsetDateTime, PrimitiveDateTime, format_description::well_known::Rfc3339, macros::format_description,
};

/// The lifetime assumed when a token states no expiry: VoIPBIN's login tokens live 7 days.
pub const DEFAULT_LIFETIME: time::Duration = time::Duration::days(7);

/// An expiry further than this after the token was obtained is not
/// believed (a clock or server bug, or a token that claims to live forever):
/// the token is taken to live [`DEFAULT_LIFETIME`], as if it stated none.
/// The same bound limits how far in the past a believable `iat` lies.
pub const IMPLAUSIBLE_LIFETIME: time::Duration = time::Duration::days(70);

/// How far after the moment we obtained a token its `iat` may lie (clock
/// noise left over after the server's skew was taken out).
pub const IAT_SKEW_ALLOWANCE: time::Duration = time::Duration::seconds(60);

/// A server clock offset (from its `Date` header, or recorded in a state
/// file) larger than this is not believed: a server whose clock is off by
/// more than a day, or a `Date` of 1970, is a bug, and trusting it would
/// move every time it states by as much. Such a skew is ignored (taken as
/// zero) with a warning.
pub const MAX_SKEW: time::Duration = time::Duration::days(1);

/// `skew` if it is believable (see [`MAX_SKEW`]), else `None`.
pub fn believable_skew(skew: time::Duration) -> Option<time::Duration> {
    (skew.abs() <= MAX_SKEW).then_some(skew)
}

/// A token larger than this is refused (a real one is well under 16 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What the claims say about time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// From `expire`, else `exp`; `None` when the token states neither.
    pub expires_at: Option<OffsetDateTime>,
    /// From `iat`, when present.
    pub issued_at: Option<OffsetDateTime>,
}

/// Why a string is not a usable token. Never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is empty")]
    Empty,
    #[error("token is larger than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    #[error("token is not a JWT (expected three base64url parts separated by dots)")]
    NotJwt,
    #[error("token header or payload is not valid base64url")]
    BadBase64,
    #[error("token payload is not a JSON object of claims")]
    BadClaims,
    #[error("token's `expire` claim is not a UTC time like 2006-01-02T15:04:05.000000Z")]
    BadExpire,
    #[error("token's `exp` or `iat` claim is not a number of seconds")]
    BadNumericDate,
    #[error("token is already expired")]
    Expired,
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    agent: Option<serde_json::Value>,
    #[serde(default)]
    expire: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    iat: Option<serde_json::Value>,
}

/// Reads the time claims of `token`. Checks the shape strictly, since a
/// token is later written unquoted into env files: only base64url
/// characters and exactly two dots are accepted.
pub fn decode(token: &str) -> Result<Claims, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge);
    }
    let well_formed = token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && token.split('.').take(2).all(|part| !part.is_empty());
    if !well_formed {
        return Err(TokenError::NotJwt);
    }
    let data = jsonwebtoken::dangerous::insecure_decode::<RawClaims>(token).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::Base64(_) | ErrorKind::Utf8(_) => TokenError::BadBase64,
            ErrorKind::InvalidToken => TokenError::NotJwt,
            _ => TokenError::BadClaims,
        }
    })?;
    let raw = data.claims;
    let expires_at = match raw.expire {
        Some(serde_json::Value::String(s)) => Some(parse_expire(&s).ok_or(TokenError::BadExpire)?),
        Some(serde_json::Value::Null) | None => None,
        Some(_) => return Err(TokenError::BadExpire),
    };
    let exp = numeric_date(raw.exp)?;
    let iat = numeric_date(raw.iat)?;
    Ok(Claims {
        expires_at: expires_at.or(exp),
        issued_at: iat,
    })
}

fn numeric_date(v: Option<serde_json::Value>) -> Result<Option<OffsetDateTime>, TokenError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            let secs = n.as_f64().ok_or(TokenError::BadNumericDate)?;
            if !secs.is_finite() || secs.abs() > 1e11 {
                return Err(TokenError::BadNumericDate);
            }
            let nanos = (secs * 1e9) as i128;
            OffsetDateTime::from_unix_timestamp_nanos(nanos)
                .map(Some)
                .map_err(|_| TokenError::BadNumericDate)
        }
        Some(_) => Err(TokenError::BadNumericDate),
    }
}

/// Parses VoIPBIN's `expire`: RFC 3339 (the current `...000000Z` form is
/// one), or the older `2006-01-02 15:04:05.000000` with no zone, meaning UTC.
///
/// The result is in UTC; a time whose UTC equivalent lies beyond the
/// representable range (`9999-12-31T23:59:59-05:00`) saturates at its end
/// (and is then judged implausible), never panics.
pub fn parse_expire(s: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(utc(t));
    }
    let with_fraction = format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]");
    let without = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    PrimitiveDateTime::parse(s, with_fraction)
        .or_else(|_| PrimitiveDateTime::parse(s, without))
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// A token's place in time: when it was obtained, when it expires, and
/// hence its lifetime, from which renewal is scheduled.
///
/// Claims that make no sense are not believed (see [`Validity::new`]); the
/// `*_ignored` fields say which, so the caller can log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of the lifetime: a sane `iat`, else when it was obtained.
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// When we got it: the login's answer, or for a token found on disk
    /// the time its file records.
    pub obtained_at: OffsetDateTime,
    /// The token had an `iat` that was not believed.
    pub iat_ignored: bool,
    /// The token had an expiry that was not believed.
    pub expiry_ignored: bool,
}

impl Validity {
    /// Combines the claims with when we obtained the token. `obtained_at`
    /// is the login's time, or for a token found on disk its file's mtime.
    ///
    /// Sanity rules (a token with odd claims must not make the daemon log
    /// in in a loop, nor renew after the token expired):
    /// - an expiry more than [`IMPLAUSIBLE_LIFETIME`] after `obtained_at`
    ///   is treated like a missing one: [`DEFAULT_LIFETIME`] from `obtained_at`;
    /// - `iat` counts only if it lies before the expiry, not more than
    ///   [`IAT_SKEW_ALLOWANCE`] after `obtained_at` and not more than
    ///   [`IMPLAUSIBLE_LIFETIME`] before it; otherwise the lifetime starts
    ///   at `obtained_at`.
    pub fn new(claims: Claims, obtained_at: OffsetDateTime) -> Validity {
        // Saturating: `obtained_at` may come from a file (year 9999), and
        // nothing from outside may panic the daemon.
        let default_expiry = obtained_at.saturating_add(DEFAULT_LIFETIME);
        let (expires_at, expiry_ignored) = match claims.expires_at {
            Some(e) if e - obtained_at > IMPLAUSIBLE_LIFETIME => (default_expiry, true),
            Some(e) => (e, false),
            None => (default_expiry, false),
        };
        let (issued_at, iat_ignored) = match claims.issued_at {
            Some(iat)
                if iat < expires_at
                    && iat <= obtained_at.saturating_add(IAT_SKEW_ALLOWANCE)
                    && obtained_at - iat <= IMPLAUSIBLE_LIFETIME =>
            {
                (iat, false)
            }
            Some(_) => (obtained_at, true),
            None => (obtained_at, false),
        };
        Validity {
            issued_at,
            expires_at,
            obtained_at,
            iat_ignored,
            expiry_ignored,
        }
    }

    pub fn lifetime(&self) -> time::Duration {
        self.expires_at - self.issued_at
    }

    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now >= self.expires_at
    }
}

/// The account a token was issued to: VoIPBIN login tokens carry it as
/// `agent.username`. `None` for a token that names no account (other token
/// kinds) or is not a JWT. Like [`decode`], never quotes the token.
pub fn username(token: &str) -> Option<String> {
    decode(token).ok()?;
    let data = jsonwebtoken::dangerous::insecure_decode::<RawClaims>(token).ok()?;
    data.claims.agent?.get("username")?.as_str().map(str::to_owned)
}

/// Finds a JWT inside a file of any output format (raw, env, shell, json,
/// template): a run of base64url characters and dots that, from an `eyJ`
/// (base64 of `{"`) to the run's end, decodes.
///
/// Linear in the text: each maximal run of token characters is scanned
/// once, and only starts that could make a token are tried: after the
/// run's third-last dot and before its second-last (a JWT has exactly two
/// dots and a non-empty header), at most [`MAX_TOKEN_LEN`] from the run's
/// end, and at most [`MAX_TRIES_PER_RUN`] of them. (Trying every `eyJ` with
/// a scan to the run's end made a 240 KB file of `eyJ` take 19 s.)
pub fn find_in(text: &str) -> Option<(&str, Claims)> {
    let is_jwt_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !is_jwt_byte(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_jwt_byte(bytes[i]) {
            i += 1;
        }
        if let Some(found) = token_in_run(&text[start..i]) {
            return Some(found);
        }
    }
    None
}

/// Decode attempts in one run of token characters; real files have one
/// `eyJ` per token, so this only bounds what a hostile file can cost.
pub const MAX_TRIES_PER_RUN: usize = 8;

/// The token at the end of one maximal run of token characters, if any.
fn token_in_run(run: &str) -> Option<(&str, Claims)> {
    let dots: Vec<usize> = run.match_indices('.').map(|(i, _)| i).collect();
    if dots.len() < 2 {
        return None;
    }
    // A start must leave exactly two dots after it, the first not at once.
    let earliest = dots
        .len()
        .checked_sub(3)
        .map_or(0, |k| dots[k] + 1)
        .max(run.len().saturating_sub(MAX_TOKEN_LEN));
    let latest = dots[dots.len() - 2];
    if earliest >= latest {
        return None;
    }
    run[earliest..latest]
        .match_indices("eyJ")
        .take(MAX_TRIES_PER_RUN)
        .find_map(|(at, _)| {
            let token = &run[earliest + at..];
            decode(token).ok().map(|claims| (token, claims))
        })
}

/// The earliest and latest times representable, in UTC.
pub const MIN_UTC: OffsetDateTime = PrimitiveDateTime::MIN.assume_utc();
pub const MAX_UTC: OffsetDateTime = PrimitiveDateTime::MAX.assume_utc();

/// `t` in UTC, saturating at the representable range (`to_offset` panics
/// for `9999-12-31T23:59:59-05:00`).
pub fn utc(t: OffsetDateTime) -> OffsetDateTime {
    t.checked_to_offset(time::UtcOffset::UTC)
        .unwrap_or(if t.year() > 0 { MAX_UTC } else { MIN_UTC })
}

/// A `SystemTime` (a file's mtime: tmpfs takes year 33658) as a time,
/// saturating at the representable range instead of panicking.
pub fn from_system_time(t: std::time::SystemTime) -> OffsetDateTime {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => time::Duration::try_from(d)
            .ok()
            .and_then(|d| OffsetDateTime::UNIX_EPOCH.checked_add(d))
            .unwrap_or(MAX_UTC),
        Err(e) => time::Duration::try_from(e.duration())
            .ok()
            .and_then(|d| OffsetDateTime::UNIX_EPOCH.checked_sub(d))
            .unwrap_or(MIN_UTC),
    }
}

/// Formats a time as RFC 3339 UTC, whole seconds (`2026-12-04T09:15:02Z`).
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = utc(t);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine;
    use time::macros::datetime;

    /// Builds an unsigned-looking JWT with the given claims JSON (tests only).
    pub(crate) fn jwt(claims: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64.encode(claims),
            b64.encode("signature-bytes")
        )
    }

    #[test]
    fn voipbin_expire_claim() {
        let t = jwt(r#"{"type":"agent","agent":{"id":"x"},"expire":"2026-12-04T09:15:02.123456Z"}"#);
        let c = decode(&t).unwrap();
        assert_eq!(c.expires_at, Some(datetime!(2026-12-04 09:15:02.123456 UTC)));
        assert_eq!(c.issued_at, None);
    }

    #[test]
    fn legacy_expire_layout_is_utc() {
        let t = jwt(r#"{"expire":"2026-12-04 09:15:02.123456"}"#);
        assert_eq!(
            decode(&t).unwrap().expires_at,
            Some(datetime!(2026-12-04 09:15:02.123456 UTC))
        );
        let t = jwt(r#"{"expire":"2026-12-04 09:15:02"}"#);
        assert_eq!(
            decode(&t).unwrap().expires_at,
            Some(datetime!(2026-12-04 09:15:02 UTC))
        );
    }

    #[test]
    fn standard_exp_and_iat() {
        let t = jwt(r#"{"exp":1796400000,"iat":1795795200}"#);
        let c = decode(&t).unwrap();
        assert_eq!(c.expires_at.unwrap().unix_timestamp(), 1796400000);
        assert_eq!(c.issued_at.unwrap().unix_timestamp(), 1795795200);
    }

    #[test]
    fn expire_wins_over_exp() {
        let t = jwt(r#"{"expire":"2026-12-04T09:15:02.000000Z","exp":1}"#);
        assert_eq!(
            decode(&t).unwrap().expires_at,
            Some(datetime!(2026-12-04 09:15:02 UTC))
        );
    }

    #[test]
    fn no_expiry_means_seven_days_from_obtained() {
        let t = jwt(r#"{"type":"agent"}"#);
        let c = decode(&t).unwrap();
        assert_eq!(c.expires_at, None);
        let got = datetime!(2026-11-27 10:00 UTC);
        let v = Validity::new(c, got);
        assert_eq!(v.expires_at, datetime!(2026-12-04 10:00 UTC));
        assert_eq!(v.lifetime(), time::Duration::days(7));
    }

    #[test]
    fn garbage_is_refused_without_quoting_it() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let cases = [
            ("", TokenError::Empty),
            ("not-a-jwt", TokenError::NotJwt),
            ("a.b", TokenError::NotJwt),
            ("a.b.c.d", TokenError::NotJwt),
            ("eyJ.with space.x", TokenError::NotJwt),
            ("eyJ!!!.eyJ.sig", TokenError::NotJwt),
        ];
        for (input, want) in cases {
            assert_eq!(decode(input).unwrap_err(), want, "{input:?}");
        }
        let header = b64.encode(r#"{"alg":"HS256"}"#);
        let not_json = format!("{header}.{}.sig", b64.encode("secret-payload-text"));
        assert_eq!(decode(&not_json).unwrap_err(), TokenError::BadClaims);
        let bad_b64 = format!("{header}.@@@@.sig").replace('@', "A"); // decodes to junk bytes
        assert!(decode(&bad_b64).is_err());
        let bad_expire = jwt(r#"{"expire":"yesterday-ish"}"#);
        assert_eq!(decode(&bad_expire).unwrap_err(), TokenError::BadExpire);
        let num_expire = jwt(r#"{"expire":12}"#);
        assert_eq!(decode(&num_expire).unwrap_err(), TokenError::BadExpire);
        let bad_exp = jwt(r#"{"exp":"soon"}"#);
        assert_eq!(decode(&bad_exp).unwrap_err(), TokenError::BadNumericDate);
        for e in [TokenError::BadClaims, TokenError::BadExpire] {
            assert!(!e.to_string().contains("yesterday"));
        }
    }

    #[test]
    fn finds_the_token_in_every_format() {
        let t = jwt(r#"{"expire":"2026-12-04T09:15:02.000000Z"}"#);
        let files = [
            t.clone(),
            format!("VOIPBIN_TOKEN={t}\nVOIPBIN_TOKEN_EXPIRES_AT=2026-12-04T09:15:02Z\n"),
            format!("export VOIPBIN_TOKEN='{t}'\n"),
            format!("{{\"credential\":\"main\",\"token\":\"{t}\"}}\n"),
            format!("Authorization: Bearer {t}\n"),
        ];
        for f in files {
            let (found, claims) = find_in(&f).expect("found");
            assert_eq!(found, t);
            assert!(claims.expires_at.is_some());
        }
        assert!(find_in("eyJnothing here").is_none());
        // Garbage glued before the token, and a near-token before it.
        let glued = format!("eyJx.y Bearer_{t}\n");
        assert_eq!(find_in(&glued).unwrap().0, t);
    }

    #[test]
    fn scanning_hostile_text_is_linear() {
        let t = jwt(r#"{"expire":"2026-12-04T09:15:02.000000Z"}"#);
        for junk in ["eyJ", "eyJ.", "eyJ..", "a.eyJ", "eyJ eyJ."] {
            let text = junk.repeat(240_000 / junk.len());
            let started = std::time::Instant::now();
            assert!(find_in(&text).is_none());
            let with_token = format!("{text} {t}");
            assert_eq!(find_in(&with_token).unwrap().0, t);
            let took = started.elapsed();
            println!("{junk:?} x 240 KB: {took:?}");
            assert!(took < std::time::Duration::from_secs(2), "{junk:?}: {took:?}");
        }
    }

    #[test]
    fn rfc3339_is_whole_seconds_utc() {
        assert_eq!(
            rfc3339(datetime!(2026-12-04 09:15:02.9 UTC)),
            "2026-12-04T09:15:02Z"
        );
    }
}
