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

pub mod held;
pub mod key;
pub mod login;

pub use held::{Ctx, Failure, Held, Housekept, jitter_sample};

use time::OffsetDateTime;

use crate::config::{CredentialConfig, Kind};

/// One credential's source of secrets.
///
/// An access key's futures (API calls, state files) are boxed where they
/// are awaited: a login token's are a fraction of their size, and every
/// credential's task is as large as the largest future it may await
/// (issue 18: 1000 credentials).
pub enum Source {
    Login(login::LoginSource),
    Key(Box<key::KeySource>),
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
            Source::Key(s) => Box::pin(s.adopt(ctx, now)).await,
        }
    }

    /// Obtains the next secret.
    pub async fn renew(&mut self, ctx: &Ctx<'_>, held: Option<&Held>) -> Result<Held, Failure> {
        match self {
            Source::Login(s) => s.login(ctx).await,
            Source::Key(s) => Box::pin(s.rotate(ctx, held)).await,
        }
    }

    /// Work to do in the blocking task that writes the outputs, once every
    /// one is on disk (keys: a replaced key's grace starts and is saved).
    pub fn grace_start(&self, ctx: &Ctx<'_>) -> Option<key::GraceStart> {
        match self {
            Source::Login(_) => None,
            Source::Key(s) => s.grace_start(ctx),
        }
    }

    /// Called once every output holds the held secret, with what the
    /// [`key::GraceStart`] written beside them did, if one ran.
    pub async fn published(
        &mut self,
        ctx: &Ctx<'_>,
        now: OffsetDateTime,
        started: Option<key::GraceStarted>,
    ) {
        if let Source::Key(s) = self {
            Box::pin(s.published(ctx, now, started)).await;
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
            Source::Key(s) => Box::pin(s.housekeep(ctx, held, now)).await,
        }
    }

    /// A reloaded config of the same kind (the daemon restarts a credential
    /// whose kind changed).
    /// `server_changed`: its API settings changed (another base URL): an
    /// agent's token from the old server is not used on the new one.
    pub fn reconfigure(&mut self, old: &CredentialConfig, new: &CredentialConfig, server_changed: bool) {
        if let (Source::Key(s), Kind::AccessKey(k)) = (self, &new.kind) {
            s.reconfigure(k.clone(), old.login != new.login || server_changed);
        }
    }

    /// A forced renewal (SIGUSR1) also looks the held key up at once.
    pub fn on_renew_request(&mut self) {
        if let Source::Key(s) = self {
            s.on_renew_request();
        }
    }

    /// What `status` shows of the source (keys: id and pending deletions).
    pub fn key_status(&self) -> Option<crate::board::KeyStatus> {
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
