//! Arbitrary bytes into the token reader: as a token, as an output file that
//! may hold one, as an `expire` claim, and as the claims JSON of a
//! JWT-shaped string (so the claims path is reached, not only the shape
//! check). Whatever decodes must also schedule without panicking.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use voipbin_tokend::config::RenewalPolicy;
use voipbin_tokend::schedule;
use voipbin_tokend::token::{self, Claims, Validity};

/// `{"alg":"HS256","typ":"JWT"}`
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

fn use_claims(claims: Claims) {
    let obtained = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let v = Validity::new(claims, obtained);
    let _ = v.lifetime();
    let _ = v.is_expired(obtained);
    let policy = RenewalPolicy::default();
    for sample in [-1.0, 0.0, 1.0] {
        let _ = schedule::due_at(&v, &policy, sample);
    }
    let _ = token::rfc3339(v.expires_at);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(claims) = token::decode(text) {
            use_claims(claims);
        }
        if let Some((found, claims)) = token::find_in(text) {
            assert!(text.contains(found));
            assert_eq!(token::decode(found), Ok(claims));
            use_claims(claims);
        }
        let _ = token::parse_expire(text);
    }
    let jwt = format!("{HEADER}.{}.c2lnbmF0dXJl", URL_SAFE_NO_PAD.encode(data));
    match token::decode(&jwt) {
        Ok(claims) => {
            use_claims(claims);
            // The same token inside an env file is found again.
            let file = format!("VOIPBIN_TOKEN={jwt}\nVOIPBIN_TOKEN_EXPIRES_AT=x\n");
            let (found, again) = token::find_in(&file).expect("a decodable token is found in a file");
            assert_eq!(found, jwt);
            assert_eq!(again, claims);
        }
        Err(e) => {
            // Errors never quote the token.
            let payload = jwt.split('.').nth(1).unwrap_or_default();
            assert!(payload.len() < 24 || !e.to_string().contains(payload));
        }
    }
});
