//! The shared state of one server: users, rate buckets, scripted faults, records and the access keys.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::debug;

use crate::faults::Fault;
use crate::model::{
    ClaimStyle, HISTORY_LIMIT, LoginRecord, RateLimit, StandInOptions, add_or_now, format_expire,
    parse_expire, unix_seconds, uuid_like,
};

/// The shared state of one server.
pub(crate) struct Inner {
    pub(crate) key: Vec<u8>,
    pub(crate) customer_id: String,
    pub(crate) nonce: u64,
    pub(crate) next_request: AtomicU64,
    pub(crate) login_requests: AtomicU64,
    pub(crate) logins_ok: AtomicU64,
    pub(crate) state: Mutex<State>,
    pub(crate) keys: Mutex<KeyStore>,
}

pub(crate) struct State {
    pub(crate) users: HashMap<String, User>,
    pub(crate) lifetime: Duration,
    pub(crate) claim_style: ClaimStyle,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) buckets: HashMap<IpAddr, Bucket>,
    pub(crate) script: VecDeque<Fault>,
    pub(crate) default_fault: Option<Fault>,
    pub(crate) records: VecDeque<LoginRecord>,
    pub(crate) issued: VecDeque<String>,
    /// Seconds added to real time in every answer's `Date` header that
    /// does not set its own (see [`StandIn::set_date_offset`](crate::StandIn::set_date_offset)).
    pub(crate) date_offset: Option<i64>,
    /// Tokens refused from now on although they verify (see
    /// [`StandIn::revoke_tokens`](crate::StandIn::revoke_tokens)).
    pub(crate) revoked: std::collections::HashSet<String>,
}

pub(crate) struct User {
    pub(crate) password: String,
    pub(crate) id: String,
    pub(crate) name: String,
    /// Permission bits of the agent (see `keys`): customer admin by default.
    pub(crate) permission: u64,
}

impl User {
    pub(crate) fn new(username: &str, password: &str) -> User {
        User {
            password: password.to_owned(),
            id: uuid_like(),
            name: display_name(username),
            permission: PERMISSION_CUSTOMER_ADMIN,
        }
    }
}

pub(crate) fn display_name(username: &str) -> String {
    username.split('@').next().unwrap_or(username).to_owned()
}

pub(crate) struct Bucket {
    pub(crate) tokens: f64,
    pub(crate) last: Instant,
}

/// The `agent` claim: a snapshot of the agent, as the real server writes it.
#[derive(Serialize)]
pub(crate) struct AgentClaim {
    pub(crate) id: String,
    pub(crate) customer_id: String,
    pub(crate) username: String,
    pub(crate) name: String,
    pub(crate) permission: u64,
}

#[derive(Serialize)]
pub(crate) struct Claims {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) agent: AgentClaim,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expire: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) iat: Option<i64>,
}

impl Inner {
    pub(crate) fn new(opts: StandInOptions) -> Inner {
        let users = opts
            .users
            .iter()
            .map(|(name, password)| (name.clone(), User::new(name, password)))
            .collect();
        let key = std::iter::repeat_with(|| fastrand::u8(..)).take(32).collect();
        Inner {
            key,
            customer_id: uuid_like(),
            nonce: fastrand::u64(..),
            next_request: AtomicU64::new(1),
            login_requests: AtomicU64::new(0),
            logins_ok: AtomicU64::new(0),
            keys: Mutex::new(KeyStore::new()),
            state: Mutex::new(State {
                users,
                lifetime: opts.lifetime,
                claim_style: opts.claim_style,
                rate_limit: opts.rate_limit,
                buckets: HashMap::new(),
                script: VecDeque::new(),
                default_fault: None,
                records: VecDeque::new(),
                issued: VecDeque::new(),
                date_offset: None,
                revoked: Default::default(),
            }),
        }
    }

    /// The state; a panic elsewhere while holding the lock does not make the
    /// server unusable.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The access keys (a lock of their own).
    pub(crate) fn keys(&self) -> MutexGuard<'_, KeyStore> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn request_id(&self) -> String {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:08}", self.nonce)
    }

    /// Takes one token from the client's bucket; false when it is empty.
    pub(crate) fn admit(&self, client: IpAddr) -> bool {
        let mut state = self.state();
        let Some(limit) = state.rate_limit else {
            return true;
        };
        let burst = f64::from(limit.burst);
        let now = Instant::now();
        let bucket = state.buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * limit.per_second.max(0.0);
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub(crate) fn next_fault(&self) -> Option<Fault> {
        let mut state = self.state();
        match state.script.pop_front() {
            Some(fault) => Some(fault),
            None => state.default_fault.clone(),
        }
    }

    pub(crate) fn record(&self, record: LoginRecord) {
        let mut state = self.state();
        if state.records.len() >= HISTORY_LIMIT {
            state.records.pop_front();
        }
        state.records.push_back(record);
    }

    pub(crate) fn hand_out(&self, token: &str) {
        let mut state = self.state();
        if state.issued.len() >= HISTORY_LIMIT {
            state.issued.pop_front();
        }
        state.issued.push_back(token.to_owned());
    }

    /// The agent claim for `username`: the account's, or a made-up one for
    /// a username the server does not know (faults answer for any name).
    pub(crate) fn agent(&self, username: &str) -> AgentClaim {
        let state = self.state();
        let (id, name, permission) = match state.users.get(username) {
            Some(user) => (user.id.clone(), user.name.clone(), user.permission),
            None => (uuid_like(), display_name(username), PERMISSION_CUSTOMER_ADMIN),
        };
        AgentClaim {
            id,
            customer_id: self.customer_id.clone(),
            username: username.to_owned(),
            name,
            permission,
        }
    }

    pub(crate) fn claims(
        &self,
        username: &str,
        style: ClaimStyle,
        issued_at: SystemTime,
        expires_at: SystemTime,
    ) -> Claims {
        let mut claims = Claims {
            kind: "agent",
            agent: self.agent(username),
            expire: None,
            exp: None,
            iat: None,
        };
        match style {
            ClaimStyle::Expire => claims.expire = Some(format_expire(expires_at, false)),
            ClaimStyle::ExpireLegacy => claims.expire = Some(format_expire(expires_at, true)),
            ClaimStyle::Exp => {
                claims.exp = Some(unix_seconds(expires_at));
                claims.iat = Some(unix_seconds(issued_at));
            }
            ClaimStyle::NoExpiry => {}
        }
        claims
    }

    pub(crate) fn sign(&self, claims: &impl Serialize) -> Option<String> {
        match serde_json::to_vec(claims) {
            Ok(json) => Some(crate::hs256::sign(&json, &self.key)),
            Err(e) => {
                debug!(error = %e, "signing a token failed");
                None
            }
        }
    }

    /// The agent of a token that verifies and has not expired.
    pub(crate) fn verify(&self, token: &str) -> Option<serde_json::Value> {
        let claims = crate::hs256::verify(token, &self.key)?;
        if claims.get("type")?.as_str()? != "agent" {
            return None;
        }
        let now = SystemTime::now();
        let expired = if let Some(expire) = claims.get("expire") {
            parse_expire(expire.as_str()?)? <= now
        } else if let Some(exp) = claims.get("exp") {
            exp.as_f64()? <= unix_seconds(now) as f64
        } else {
            // No expiry claim: good for as long as the key is.
            false
        };
        if expired || self.state().revoked.contains(token) {
            return None;
        }
        claims.get("agent").cloned()
    }
}

/// The key API's path.
pub const ACCESSKEYS_PATH: &str = "/v1.0/accesskeys";
/// The real server's least `expire` of a new key, in seconds.
pub const MIN_KEY_EXPIRE_SECS: u64 = 86_400;
/// Agent permission bits (bin-agent-manager): project super admin, customer admin.
pub const PERMISSION_PROJECT_SUPER_ADMIN: u64 = 0x0001;
pub const PERMISSION_CUSTOMER_ADMIN: u64 = 0x0020;
pub const PERMISSION_CUSTOMER_AGENT: u64 = 0x0010;

pub(crate) const KEY_PREFIX_LEN: usize = 11;

/// A key as the server's database has it: what the admin page would show.
/// Never holds the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub detail: String,
    pub token_prefix: String,
    pub tm_create: SystemTime,
    pub tm_expire: SystemTime,
    pub tm_delete: Option<SystemTime>,
}

/// One key, with its secret (the real server keeps a hash; the stand-in
/// compares the secret directly).
pub(crate) struct StoredKey {
    pub(crate) info: KeyInfo,
    pub(crate) secret: String,
    pub(crate) tm_update: SystemTime,
}

/// Every key of the stand-in's one customer.
#[derive(Default)]
pub(crate) struct KeyStore {
    pub(crate) keys: Vec<StoredKey>,
    pub(crate) scale: f64,
    pub(crate) script: VecDeque<Fault>,
    pub(crate) post_script: VecDeque<Fault>,
    pub(crate) requests: u64,
    pub(crate) last_create: Option<SystemTime>,
    pub(crate) paging: ListPaging,
    pub(crate) list_requests: u64,
    pub(crate) delete_script: VecDeque<Fault>,
    /// [`StandIn::set_fail_deletes`](crate::StandIn::set_fail_deletes): every `DELETE` answered with this
    /// status, the key left alive.
    pub(crate) fail_deletes: Option<u16>,
    /// [`StandIn::set_create_answer_delay`](crate::StandIn::set_create_answer_delay): a `POST` makes the key, then
    /// waits this long before answering.
    pub(crate) create_answer_delay: Option<Duration>,
}

/// How the stand-in pages its key list ([`StandIn::set_key_list_paging`](crate::StandIn::set_key_list_paging)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListPaging {
    /// As the real server: pages by `tm_create`, an empty page at the end.
    #[default]
    Honest,
    /// A broken server: every answer is the first page (`page_size`
    /// honoured) and its `next_page_token` alternates between `A` and `B`,
    /// so a client that only compares with the last token walks forever.
    AlternatingTokens,
    /// A broken server: one key a page (cycling through the live keys),
    /// always with a new `next_page_token`: the list never ends.
    EndlessOneKeyPerPage,
}

impl KeyStore {
    pub(crate) fn new() -> KeyStore {
        KeyStore {
            scale: 1.0,
            ..KeyStore::default()
        }
    }

    /// Makes a key expiring `expire_secs × scale` from now. `tm_create`
    /// strictly increases, so paging by it never skips or repeats a key.
    pub(crate) fn create(&mut self, name: &str, detail: &str, expire_secs: u64) -> (KeyInfo, String) {
        let mut now = SystemTime::now();
        if let Some(last) = self.last_create
            && now <= last
        {
            now = last + Duration::from_micros(1);
        }
        // Whole microseconds, as the server's timestamps have.
        let micros = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
        now = UNIX_EPOCH + Duration::from_micros(micros as u64);
        self.last_create = Some(now);
        let lifetime = Duration::from_secs_f64((expire_secs as f64 * self.scale).max(0.0));
        let secret = new_secret();
        let info = KeyInfo {
            id: uuid_like(),
            name: name.to_owned(),
            detail: detail.to_owned(),
            token_prefix: secret[..KEY_PREFIX_LEN].to_owned(),
            tm_create: now,
            tm_expire: add_or_now(now, lifetime),
            tm_delete: None,
        };
        self.keys.push(StoredKey {
            info: info.clone(),
            secret: secret.clone(),
            tm_update: now,
        });
        (info, secret)
    }

    pub(crate) fn find(&mut self, id: &str) -> Option<&mut StoredKey> {
        self.keys.iter_mut().find(|k| k.info.id == id)
    }

    /// The live key whose secret this is.
    pub(crate) fn by_secret(&self, secret: &str, now: SystemTime) -> Option<&StoredKey> {
        self.keys
            .iter()
            .find(|k| k.secret == secret && k.info.tm_delete.is_none() && k.info.tm_expire > now)
    }
}

/// `vb_` and 32 letters and digits.
pub(crate) fn new_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::from("vb_");
    for _ in 0..32 {
        s.push(ALPHABET[fastrand::usize(..ALPHABET.len())] as char);
    }
    s
}
