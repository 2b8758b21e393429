//! The VoIPBIN access-key client: create, list, look up and delete keys
//! under `/v1.0/accesskeys` (see `shared/voipbin-api.md`, "Access keys").
//!
//! Authentication is either a key, sent ONLY in the `accesskey` cookie
//! (never in a URL: URLs end up in proxy and access logs; and never
//! together with a token, which the server would prefer), or an agent's
//! login token as `Authorization: Bearer`. Like the login client, it keeps
//! no cookie store, follows no redirects, caps every answer's size and
//! bounds every call by `api.timeout`.
//!
//! Errors carry the server's request id and, from its error envelope, the
//! short `reason` code; never a body, a key or a token.

use std::time::Duration;

use reqwest::Method;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::{ApiClient, BodyError, MAX_BODY, answer_meta, chain, read_capped, retry_after, rid};
use crate::schedule::FailureKind;
use crate::secret::Secret;

/// Pages of the key list walked at most: a server whose list never ends
/// is not walked forever (the list is then cut short, see [`Listing`]).
pub const MAX_LIST_PAGES: usize = 50;

/// Keys asked for per page of the key list (the server's maximum).
pub const LIST_PAGE_SIZE: usize = 100;

/// Length of a key's public prefix (`vb_` and 8 more), the part that may
/// be shown.
pub const KEY_PREFIX_LEN: usize = 11;

/// How a key call authenticates.
#[derive(Clone, Copy)]
pub enum KeyAuth<'a> {
    /// An access key, in the `accesskey` cookie.
    Key(&'a Secret),
    /// An agent's login token, as `Authorization: Bearer`.
    Bearer(&'a Secret),
}

/// A key as the server describes it. Holds no secret: `token_prefix` is
/// public by design.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyObject {
    pub id: String,
    pub name: String,
    pub token_prefix: String,
    pub tm_create: OffsetDateTime,
    pub tm_expire: OffsetDateTime,
    pub tm_delete: Option<OffsetDateTime>,
    /// The free text given at creation; this daemon puts the creation's
    /// nonce there (see `source::key`). Empty when the server sent none.
    pub detail: String,
}

/// The key list as walked: `complete` is false when the walk was cut
/// short (a repeated page token, too many pages), so a key not in `keys`
/// may still exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub keys: Vec<KeyObject>,
    pub complete: bool,
}

/// A key just made: the only moment its secret is ever shown.
#[derive(Debug)]
pub struct Created {
    pub object: KeyObject,
    pub key: Secret,
    /// When the answer arrived, by our clock.
    pub received_at: OffsetDateTime,
    /// The server's clock minus ours, from its `Date` header.
    pub server_skew: Option<time::Duration>,
}

/// What a DELETE achieved: both mean the key no longer works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Now,
    /// 404 or 409: it was gone already.
    AlreadyGone,
}

/// Why a key call failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the credential was refused (HTTP 401){}", rid(.request_id))]
    Unauthorized { request_id: Option<String> },
    #[error("permission denied (HTTP 403): the agent needs the CustomerAdmin permission{}", rid(.request_id))]
    Forbidden { request_id: Option<String> },
    #[error("request refused (HTTP 400, {reason}){}", rid(.request_id))]
    BadRequest {
        reason: String,
        request_id: Option<String>,
    },
    #[error("no such access key (HTTP 404){}", rid(.request_id))]
    NotFound { request_id: Option<String> },
    #[error("the access key is deleted (HTTP 409){}", rid(.request_id))]
    Gone { request_id: Option<String> },
    #[error("rate limited (HTTP 429){}{}", .retry_after.map(|d| format!(", retry after {}", humantime::format_duration(d))).unwrap_or_default(), rid(.request_id))]
    RateLimited {
        retry_after: Option<Duration>,
        request_id: Option<String>,
    },
    #[error("unexpected answer HTTP {status} from {url}{}", rid(.request_id))]
    Status {
        status: u16,
        url: String,
        request_id: Option<String>,
    },
    #[error("request failed: {0}")]
    Transport(String),
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("response body larger than {MAX_BODY} bytes")]
    TooLarge { request_id: Option<String> },
    #[error("unusable answer: {what}{}", rid(.request_id))]
    BadBody {
        what: &'static str,
        request_id: Option<String>,
    },
}

impl KeyError {
    /// How this failure affects the retry delay. 400 and 403 are not healed
    /// by retrying soon; 401 is handled by the caller (a dead key or a
    /// stale login), then retried like a transient failure.
    pub fn kind(&self) -> FailureKind {
        match self {
            KeyError::Forbidden { .. } | KeyError::BadRequest { .. } => FailureKind::Rejected,
            KeyError::RateLimited { retry_after, .. } => FailureKind::RateLimited(*retry_after),
            _ => FailureKind::Transient,
        }
    }
}

#[derive(serde::Deserialize)]
struct RawKey {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    token_prefix: String,
    tm_create: Option<String>,
    tm_expire: Option<String>,
    tm_delete: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawCreated {
    #[serde(flatten)]
    object: RawKey,
    token: Secret,
}

#[derive(serde::Deserialize)]
struct RawPage {
    #[serde(default)]
    result: Vec<RawKey>,
    #[serde(default)]
    next_page_token: String,
}

fn time_of(s: Option<&str>) -> Option<OffsetDateTime> {
    crate::token::parse_expire(s?)
}

impl RawKey {
    fn into_object(self) -> Option<KeyObject> {
        Some(KeyObject {
            tm_create: time_of(self.tm_create.as_deref())?,
            tm_expire: time_of(self.tm_expire.as_deref())?,
            tm_delete: match self.tm_delete.as_deref() {
                None => None,
                Some(t) => Some(time_of(Some(t))?),
            },
            id: self.id,
            name: self.name,
            token_prefix: self.token_prefix,
            detail: self.detail.unwrap_or_default(),
        })
    }
}

/// True for `vb_` and 32 ASCII letters or digits: the only shape written
/// to an output (it goes unquoted into env files).
pub fn is_key_shaped(key: &str) -> bool {
    key.len() == 35 && key.starts_with("vb_") && key[3..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The public prefix of a key, the only part that may be logged or shown.
pub fn prefix_of(key: &str) -> &str {
    key.get(..KEY_PREFIX_LEN).unwrap_or("vb_")
}

/// One answer, read whole (capped), with what the headers said.
struct Answer {
    status: u16,
    request_id: Option<String>,
    retry_after: Option<Duration>,
    received_at: OffsetDateTime,
    server_skew: Option<time::Duration>,
    body: Zeroizing<Vec<u8>>,
}

/// Calls on one [`ApiClient`]'s HTTP client and base URL.
pub struct KeyClient<'a> {
    api: &'a ApiClient,
}

impl<'a> KeyClient<'a> {
    pub fn new(api: &'a ApiClient) -> KeyClient<'a> {
        KeyClient { api }
    }

    fn url(&self, id: Option<&str>) -> reqwest::Url {
        let mut segments = vec!["v1.0", "accesskeys"];
        if let Some(id) = id {
            segments.push(id);
        }
        self.api.endpoint(&segments)
    }

    /// Creates a key named `name` that expires `expire_secs` after now.
    pub async fn create(
        &self,
        auth: KeyAuth<'_>,
        name: &str,
        detail: &str,
        expire_secs: u64,
    ) -> Result<Created, KeyError> {
        let body = serde_json::json!({"name": name, "detail": detail, "expire": expire_secs});
        let answer = self
            .call(Method::POST, self.url(None), auth, Some(body.to_string()))
            .await?;
        let request_id = answer.request_id.clone();
        let bad = |what| KeyError::BadBody {
            what,
            request_id: request_id.clone(),
        };
        let raw: RawCreated =
            serde_json::from_slice(&answer.body).map_err(|_| bad("not a key object with `token`"))?;
        if !is_key_shaped(raw.token.expose()) {
            return Err(bad("`token` is not a key (vb_ and 32 letters or digits)"));
        }
        let object = raw
            .object
            .into_object()
            .ok_or_else(|| bad("key object without valid tm_create/tm_expire"))?;
        if prefix_of(raw.token.expose()) != object.token_prefix {
            return Err(bad("`token_prefix` does not match the key"));
        }
        Ok(Created {
            object,
            key: raw.token,
            received_at: answer.received_at,
            server_skew: answer.server_skew,
        })
    }

    /// Looks a key up by id.
    pub async fn get(&self, auth: KeyAuth<'_>, id: &str) -> Result<KeyObject, KeyError> {
        let answer = self.call(Method::GET, self.url(Some(id)), auth, None).await?;
        object_of(&answer)
    }

    /// Deletes a key; 404 and 409 mean it was gone already.
    pub async fn delete(&self, auth: KeyAuth<'_>, id: &str) -> Result<Deleted, KeyError> {
        match self.call(Method::DELETE, self.url(Some(id)), auth, None).await {
            Ok(_) => Ok(Deleted::Now),
            Err(KeyError::NotFound { .. } | KeyError::Gone { .. }) => Ok(Deleted::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// Every key of the customer that is not deleted (expired ones too),
    /// walking the pages (newest first); see [`KeyClient::listing`]. A list
    /// cut short is returned as far as it got.
    pub async fn list(&self, auth: KeyAuth<'_>) -> Result<Vec<KeyObject>, KeyError> {
        Ok(self.listing(auth).await?.keys)
    }

    /// Walks the pages of the key list, newest first, and says whether the
    /// walk saw the whole list. It stops on an empty page, a page shorter
    /// than asked for, or an empty next token (the list is complete), and
    /// on a page token seen before, or after [`MAX_LIST_PAGES`] pages (a
    /// server that never ends: the list is cut short, `complete` false).
    /// Ids are deduplicated (the first occurrence is kept).
    pub async fn listing(&self, auth: KeyAuth<'_>) -> Result<Listing, KeyError> {
        let mut keys: Vec<KeyObject> = Vec::new();
        let mut ids = std::collections::HashSet::new();
        let mut seen_tokens = std::collections::HashSet::new();
        let mut page_token = String::new();
        seen_tokens.insert(page_token.clone());
        for _ in 0..MAX_LIST_PAGES {
            let mut url = self.url(None);
            url.query_pairs_mut()
                .append_pair("page_size", &LIST_PAGE_SIZE.to_string());
            if !page_token.is_empty() {
                url.query_pairs_mut().append_pair("page_token", &page_token);
            }
            let answer = self.call(Method::GET, url, auth, None).await?;
            let bad = |what| KeyError::BadBody {
                what,
                request_id: answer.request_id.clone(),
            };
            let page: RawPage =
                serde_json::from_slice(&answer.body).map_err(|_| bad("not a page of keys"))?;
            let short = page.result.len() < LIST_PAGE_SIZE;
            for raw in page.result {
                let object = raw.into_object().ok_or_else(|| bad("key without valid times"))?;
                if ids.insert(object.id.clone()) {
                    keys.push(object);
                }
            }
            if short || page.next_page_token.is_empty() {
                return Ok(Listing { keys, complete: true });
            }
            // A server that sends a token again would walk us in a circle.
            if !seen_tokens.insert(page.next_page_token.clone()) {
                tracing::warn!(
                    pages = seen_tokens.len(),
                    "the key list repeats a page token; the list is cut short"
                );
                return Ok(Listing {
                    keys,
                    complete: false,
                });
            }
            page_token = page.next_page_token;
        }
        tracing::warn!(
            pages = MAX_LIST_PAGES,
            "the key list has more pages than are walked; the list is cut short"
        );
        Ok(Listing {
            keys,
            complete: false,
        })
    }

    async fn call(
        &self,
        method: Method,
        url: reqwest::Url,
        auth: KeyAuth<'_>,
        body: Option<String>,
    ) -> Result<Answer, KeyError> {
        let timeout = self.api.timeout();
        match tokio::time::timeout(
            timeout + Duration::from_millis(250),
            self.exchange(method, url, auth, body),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(KeyError::Timeout(timeout)),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        url: reqwest::Url,
        auth: KeyAuth<'_>,
        body: Option<String>,
    ) -> Result<Answer, KeyError> {
        let shown_url = url.to_string();
        let mut request = self
            .api
            .http()
            .request(method, url)
            .header(reqwest::header::ACCEPT, "application/json");
        request = match auth {
            KeyAuth::Key(key) => request.header(
                reqwest::header::COOKIE,
                Zeroizing::new(format!("accesskey={}", key.expose())).as_str(),
            ),
            KeyAuth::Bearer(token) => request.header(
                reqwest::header::AUTHORIZATION,
                Zeroizing::new(format!("Bearer {}", token.expose())).as_str(),
            ),
        };
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let received_at = crate::now();
        let headers = response.headers();
        let (request_id, server_skew) = answer_meta(headers, received_at);
        let retry = retry_after(headers, received_at);
        let status = response.status().as_u16();

        let body = match read_capped(response).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => return Err(KeyError::TooLarge { request_id }),
            Err(BodyError::Transport(e)) => return Err(self.transport(e)),
        };
        let answer = Answer {
            status,
            request_id,
            retry_after: retry,
            received_at,
            server_skew,
            body,
        };
        classify(answer, shown_url)
    }

    fn transport(&self, e: reqwest::Error) -> KeyError {
        if e.is_timeout() {
            KeyError::Timeout(self.api.timeout())
        } else {
            KeyError::Transport(chain(&e))
        }
    }
}

fn object_of(answer: &Answer) -> Result<KeyObject, KeyError> {
    let bad = || KeyError::BadBody {
        what: "not a key object",
        request_id: answer.request_id.clone(),
    };
    let raw: RawKey = serde_json::from_slice(&answer.body).map_err(|_| bad())?;
    raw.into_object().ok_or_else(bad)
}

/// The `reason` of the server's error envelope, cut to a short token of
/// safe characters (it is logged).
fn reason_of(body: &[u8]) -> String {
    let reason = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.get("reason")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    let clean: String = reason
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    if clean.is_empty() {
        "no reason given".into()
    } else {
        clean
    }
}

fn classify(answer: Answer, url: String) -> Result<Answer, KeyError> {
    let request_id = answer.request_id.clone();
    match answer.status {
        200..=299 => Ok(answer),
        400 => Err(KeyError::BadRequest {
            reason: reason_of(&answer.body),
            request_id,
        }),
        401 => Err(KeyError::Unauthorized { request_id }),
        403 => Err(KeyError::Forbidden { request_id }),
        404 => Err(KeyError::NotFound { request_id }),
        409 => Err(KeyError::Gone { request_id }),
        429 => Err(KeyError::RateLimited {
            retry_after: answer.retry_after,
            request_id,
        }),
        status => Err(KeyError::Status {
            status,
            url,
            request_id,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voipbin_tokend_standin::{AuthVia, StandIn, StandInOptions};

    #[tokio::test]
    async fn rotate_by_key_in_the_cookie_never_the_url() {
        let server = StandIn::start(StandInOptions::default()).unwrap();
        let api = crate::api::for_standin(&server);
        let keys = KeyClient::new(&api);
        let (boot_id, boot) = server.create_key("boot", 86_400);
        let boot = Secret::new(boot);
        let made = keys
            .create(KeyAuth::Key(&boot), "voipbin-tokend/main/abc", "d", 86_400)
            .await
            .unwrap();
        assert!(is_key_shaped(made.key.expose()));
        assert_eq!(made.object.name, "voipbin-tokend/main/abc");
        assert_eq!(
            made.object.tm_expire - made.object.tm_create,
            time::Duration::days(1)
        );
        let all = keys.list(KeyAuth::Key(&made.key)).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            keys.delete(KeyAuth::Key(&made.key), &boot_id).await.unwrap(),
            Deleted::Now
        );
        assert_eq!(
            keys.delete(KeyAuth::Key(&made.key), &boot_id).await.unwrap(),
            Deleted::AlreadyGone
        );
        let e = keys.list(KeyAuth::Key(&boot)).await.unwrap_err();
        assert!(matches!(e, KeyError::Unauthorized { .. }), "{e}");
        assert!(matches!(
            keys.get(KeyAuth::Key(&made.key), &boot_id).await.unwrap_err(),
            KeyError::Gone { .. }
        ));
        for r in server.requests() {
            assert_eq!(r.auth, AuthVia::KeyCookie, "{r:?}");
            assert!(!r.key_in_query);
        }
        // Neither the key nor the error shows the secret.
        assert!(!format!("{made:?}").contains(made.key.expose()));
        assert!(!e.to_string().contains(boot.expose()));
    }

    #[tokio::test]
    async fn errors_are_classified_with_reason_but_no_body() {
        let server = StandIn::start(StandInOptions::default()).unwrap();
        let api = crate::api::for_standin(&server);
        let keys = KeyClient::new(&api);
        let (_, boot) = server.create_key("boot", 86_400);
        let boot = Secret::new(boot);
        let e = keys.create(KeyAuth::Key(&boot), "n", "", 3600).await.unwrap_err();
        assert_eq!(
            e.to_string().split(" [").next().unwrap(),
            "request refused (HTTP 400, INVALID_EXPIRE)"
        );
        assert_eq!(e.kind(), FailureKind::Rejected);
        server.script_keys([
            voipbin_tokend_standin::Fault::too_many_requests(Some("7")),
            voipbin_tokend_standin::Fault::status(503),
        ]);
        let e = keys.list(KeyAuth::Key(&boot)).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::RateLimited(Some(Duration::from_secs(7))));
        let e = keys.list(KeyAuth::Key(&boot)).await.unwrap_err();
        assert!(e.to_string().contains("HTTP 503 from http://"), "{e}");
        assert_eq!(e.kind(), FailureKind::Transient);
    }

    #[tokio::test]
    async fn a_list_that_never_ends_is_cut_short_and_says_so() {
        use voipbin_tokend_standin::ListPaging;
        let server = StandIn::start(StandInOptions::default()).unwrap();
        let api = crate::api::for_standin(&server);
        let keys = KeyClient::new(&api);
        // 150 keys: full pages of 100, so only the token rule and the page
        // cap can stop a broken walk.
        let (_, boot) = server.create_key("boot", 86_400);
        for i in 0..149 {
            server.create_key(&format!("k{i}"), 86_400);
        }
        let boot = Secret::new(boot);

        // Honest: two pages (the second is short), complete.
        let all = keys.listing(KeyAuth::Key(&boot)).await.unwrap();
        assert!(all.complete);
        assert_eq!(all.keys.len(), 150);
        assert_eq!(server.key_list_requests(), 2);

        // Alternating tokens: "", A, B, then A again: stop, cut short.
        server.set_key_list_paging(ListPaging::AlternatingTokens);
        let before = server.key_list_requests();
        let alt = keys.listing(KeyAuth::Key(&boot)).await.unwrap();
        assert!(!alt.complete);
        assert_eq!(alt.keys.len(), 100, "ids deduplicated");
        assert_eq!(server.key_list_requests() - before, 3);

        // One key a page: the first (short) page ends the walk.
        server.set_key_list_paging(ListPaging::EndlessOneKeyPerPage);
        let before = server.key_list_requests();
        let one = keys.listing(KeyAuth::Key(&boot)).await.unwrap();
        assert_eq!(one.keys.len(), 1);
        assert_eq!(server.key_list_requests() - before, 1);
    }

    #[test]
    fn key_shape() {
        assert!(is_key_shaped("vb_0123456789abcdefABCDEF0123456789"));
        assert!(!is_key_shaped("vb_0123456789abcdefABCDEF012345678"));
        assert!(!is_key_shaped("vb_0123456789abcdefABCDEF01234567 9"));
        assert!(!is_key_shaped("xx_0123456789abcdefABCDEF0123456789"));
        assert_eq!(prefix_of("vb_0123456789abcdef"), "vb_01234567");
    }
}
