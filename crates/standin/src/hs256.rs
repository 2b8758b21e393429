//! HS256 JSON Web Tokens, as the real server signs them: the stand-in's
//! own few lines (HMAC-SHA256 over `header.payload`, base64url without
//! padding), so the product's `jsonwebtoken` needs no signing backend
//! (it only ever decodes claims; the stand-in is linked into it for
//! `demo`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header every token carries: `{"alg":"HS256","typ":"JWT"}`.
const HEADER: &str = r#"{"typ":"JWT","alg":"HS256"}"#;

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

/// `claims` signed with `key`.
pub(crate) fn sign(claims: &[u8], key: &[u8]) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(HEADER);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let mut m = mac(key);
    m.update(token.as_bytes());
    let signature = m.finalize().into_bytes();
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

/// The claims of `token` if it is an HS256 token signed with `key`.
pub(crate) fn verify(token: &str, key: &[u8]) -> Option<serde_json::Value> {
    let (signed, signature) = token.rsplit_once('.')?;
    let (header, payload) = signed.split_once('.')?;
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header.get("alg")?.as_str()? != "HS256" {
        return None;
    }
    let mut m = mac(key);
    m.update(signed.as_bytes());
    m.verify_slice(&URL_SAFE_NO_PAD.decode(signature).ok()?).ok()?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_token_verifies_with_its_key_only_and_not_once_altered() {
        let token = super::sign(br#"{"type":"agent"}"#, b"key");
        assert_eq!(super::verify(&token, b"key").unwrap()["type"], "agent");
        assert!(super::verify(&token, b"other").is_none());
        let mut altered = token.clone();
        altered.insert(token.find('.').unwrap() + 2, 'A');
        assert!(super::verify(&altered, b"key").is_none());
        assert!(super::verify("a.b", b"key").is_none());
    }
}
