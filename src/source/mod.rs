//! Where a credential's next secret comes from, per kind: a login token
//! from `POST /auth/login` ([`login`]), or an access key made with the key
//! it replaces or an agent's login ([`key`]).
//!
//! This is the seam between the kinds. Everything else a credential does,
//! scheduling, backoff, outputs, hooks, status and metrics, is shared (see
//! [`crate::credential`]); a source only:
//! - finds the secret already held at start ([`Source::adopt`]),
//! - obtains the next one and says how long it is valid ([`Source::renew`]),
//! - and, for keys, does the housekeeping around them ([`Source::housekeep`]).

pub mod key;
pub mod login;

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use crate::api::ApiClient;
use crate::config::{ApiConfig, CredentialConfig, Kind};
use crate::metrics::Metrics;
use crate::schedule::FailureKind;
use crate::secret::Secret;
use crate::token::{self, Validity};

/// Logins allowed in flight at once, whatever the per-second budget.
const MAX_CONCURRENT_LOGINS: usize = 16;

/// The API client and the login budget it shares among all credentials.
#[derive(Debug)]
pub struct Api {
    pub config: ApiConfig,
    pub client: ApiClient,
    limiter: LoginLimiter,
}

impl Api {
    pub fn new(config: &ApiConfig) -> Result<Arc<Api>, String> {
        Ok(Arc::new(Api {
            client: ApiClient::new(config)?,
            limiter: LoginLimiter::new(config.max_logins_per_second),
            config: config.clone(),
        }))
    }
}

/// At most `per_second` logins in any one-second window (0: no limit),
/// and at most [`MAX_CONCURRENT_LOGINS`] in flight.
///
/// A login holds its slot from before its request is sent until one second
/// after its answer came. Whenever the server saw the request, that was
/// inside this span, so the server never sees more than `per_second`
/// requests in any one-second window, however slow the network.
#[derive(Debug)]
struct LoginLimiter {
    per_second: Option<Arc<Semaphore>>,
    in_flight: Semaphore,
}

/// A login's place in the budget; returned when dropped.
struct LoginSlot<'a> {
    _in_flight: SemaphorePermit<'a>,
    window: Option<OwnedSemaphorePermit>,
}

impl Drop for LoginSlot<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.window.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(permit);
            });
        }
    }
}

impl LoginLimiter {
    fn new(per_second: u32) -> Self {
        LoginLimiter {
            per_second: (per_second > 0).then(|| Arc::new(Semaphore::new(per_second as usize))),
            in_flight: Semaphore::new(MAX_CONCURRENT_LOGINS),
        }
    }

    /// Waits for a slot (first come, first served: tokio's semaphore is fair).
    async fn acquire(&self) -> LoginSlot<'_> {
        let window = match &self.per_second {
            Some(s) => Some(
                s.clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed"),
            ),
            None => None,
        };
        let in_flight = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        LoginSlot {
            _in_flight: in_flight,
            window,
        }
    }
}

/// The secret a credential holds, and when it is due for renewal.
#[derive(Clone)]
pub struct Held {
    /// The login token or the access key.
    pub token: Secret,
    /// In our clock (adjusted for the server's skew when it was obtained).
    pub validity: Validity,
    pub obtained_at: OffsetDateTime,
    pub due_at: OffsetDateTime,
    /// An access key's id (public).
    pub key_id: Option<String>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("token", &self.token)
            .field("key_id", &self.key_id)
            .field("expires_at", &token::rfc3339(self.validity.expires_at))
            .field("due_at", &token::rfc3339(self.due_at))
            .finish()
    }
}

/// A failed attempt, ready for logging and backoff.
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn transient(message: String) -> Failure {
        Failure {
            kind: FailureKind::Transient,
            message,
        }
    }

    /// Refused in a way retrying soon cannot heal (a dead key): retried no
    /// sooner than `retry-max`, logged as an error.
    pub fn rejected(message: String) -> Failure {
        Failure {
            kind: FailureKind::Rejected,
            message,
        }
    }
}

/// What a source may use of its credential.
pub struct Ctx<'a> {
    pub cfg: &'a CredentialConfig,
    pub api: &'a Api,
    pub metrics: &'a Metrics,
    pub state_dir: &'a std::path::Path,
}

/// A uniform sample in [-1, 1] for renewal jitter.
pub fn jitter_sample() -> f64 {
    fastrand::f64() * 2.0 - 1.0
}

/// One credential's source of secrets.
pub enum Source {
    Login(login::LoginSource),
    Key(Box<key::KeySource>),
}

/// What housekeeping found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Housekept {
    /// Nothing more to do now.
    Done,
    /// The held secret is gone (deleted out of band): renew at once.
    RenewNow,
    /// A call failed; try again after a backoff.
    Failed,
}

impl Source {
    pub fn for_config(cfg: &CredentialConfig) -> Source {
        match &cfg.kind {
            Kind::LoginToken => Source::Login(login::LoginSource::default()),
            Kind::AccessKey(k) => Source::Key(Box::new(key::KeySource::new(k.clone()))),
        }
    }

    /// The secret already held at start, if any is still good: a login
    /// token found in the outputs, or the current key of the key state.
    pub async fn adopt(&mut self, ctx: &Ctx<'_>, now: OffsetDateTime) -> Result<Option<Held>, Failure> {
        match self {
            Source::Login(s) => Ok(s.adopt(ctx, now).await),
            Source::Key(s) => s.adopt(ctx, now).await,
        }
    }

    /// Obtains the next secret.
    pub async fn renew(&mut self, ctx: &Ctx<'_>, held: Option<&Held>) -> Result<Held, Failure> {
        match self {
            Source::Login(s) => s.login(ctx).await,
            Source::Key(s) => s.rotate(ctx, held).await,
        }
    }

    /// Called once every output holds the held secret.
    pub async fn published(&mut self, ctx: &Ctx<'_>, now: OffsetDateTime) {
        if let Source::Key(s) = self {
            s.published(ctx, now).await;
        }
    }

    /// When housekeeping is next due (keys only).
    pub fn housekeeping_at(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        match self {
            Source::Login(_) => None,
            Source::Key(s) => s.housekeeping_at(now),
        }
    }

    /// Deletions past their grace, orphan sweeps, lookups of the held key.
    pub async fn housekeep(&mut self, ctx: &Ctx<'_>, held: Option<&Held>, now: OffsetDateTime) -> Housekept {
        match self {
            Source::Login(_) => Housekept::Done,
            Source::Key(s) => s.housekeep(ctx, held, now).await,
        }
    }

    /// A reloaded config of the same kind (the daemon restarts a credential
    /// whose kind changed).
    pub fn reconfigure(&mut self, old: &CredentialConfig, new: &CredentialConfig) {
        if let (Source::Key(s), Kind::AccessKey(k)) = (self, &new.kind) {
            s.reconfigure(k.clone(), old.login != new.login);
        }
    }

    /// A forced renewal (SIGUSR1) also looks the held key up at once.
    pub fn on_renew_request(&mut self) {
        if let Source::Key(s) = self {
            s.on_renew_request();
        }
    }

    /// What `status` shows of the source (keys: id and pending deletions).
    pub fn key_status(&self) -> Option<key::KeyStatus> {
        match self {
            Source::Login(_) => None,
            Source::Key(s) => Some(s.status()),
        }
    }

    /// The held secret was refused by the server and not replaced yet.
    pub fn refused(&self) -> bool {
        match self {
            Source::Login(_) => false,
            Source::Key(s) => s.refused(),
        }
    }
}
