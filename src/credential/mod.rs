//! One credential: the secret it holds, its outputs, its retry state.
//!
//! [`Credential`] is the state machine; [`task::run`] is the task that
//! drives it in the daemon and [`task::once`] the one-shot pass of the
//! `once` command; `outputs` writes the files and starts their hooks. The
//! decisions (when to act, how long to back off) come from
//! [`crate::schedule`]; how the next secret is obtained comes from the
//! credential's [`Source`] (a login, or a new access key); this module does
//! the rest, the same for both kinds: outputs, hooks, retries, status.
//!
//! Invariants:
//! - a secret replaces the held one only after its source validated it (a
//!   JWT that is not expired by the server's clock; a key saved to the key
//!   state before anything else sees it);
//! - the held secret stays in place through any failure;
//! - every output is "stale" until it holds the held secret; stale outputs
//!   are (re)written without a renewal.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::board;
use crate::config::CredentialConfig;
use crate::export::{ExportSender, Exported, InUse};
use crate::hooks::Hook;
use crate::metrics::Metrics;
use crate::schedule::{self, FailureKind};
use crate::source::{Ctx, Housekept, Source, jitter_sample};
use crate::token;

use crate::api::budget::Api;
pub use crate::source::Held;

/// What a source may use of a credential: built from the fields it names,
/// so that `self.source` can be borrowed mutably beside it.
macro_rules! ctx {
    ($cred:expr) => {
        Ctx {
            cfg: &$cred.cfg,
            api: &$cred.api,
            metrics: &$cred.metrics,
            state_dir: &$cred.state_dir,
            in_use: &$cred.in_use,
        }
    };
}

mod outputs;
pub mod task;

use outputs::{log_written, start_hooks, write_stale};

/// What a credential should do next, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Obtain the next secret (log in, or create the next key).
    Renew,
    WriteOutputs,
    /// Access keys: delete replaced keys past their grace, sweep orphans,
    /// look the held key up.
    Housekeep,
}

/// One credential's state.
pub struct Credential {
    cfg: CredentialConfig,
    api: Arc<Api>,
    source: Source,
    /// `{state dir}`: access keys keep their state under it.
    state_dir: std::path::PathBuf,
    held: Option<Held>,
    /// Per output (same order as `cfg.outputs`): does its file still need the held token?
    stale: Vec<bool>,
    /// Log in at the next step even if the token is not due (SIGUSR1, changed login).
    force_login: bool,
    /// Write stale outputs at the next step, even during backoff: set when
    /// outputs appear or change (start, reload), not after a failed write.
    write_now: bool,
    failures: u32,
    /// Which step the current failures are of: a successful write must not
    /// end the backoff of a failing login.
    failed_step: Option<Step>,
    retry_at: Option<OffsetDateTime>,
    last_error: Option<String>,
    renewals_ok: u64,
    renewals_failed: u64,
    board: Option<Arc<board::StatusBoard>>,
    metrics: Arc<Metrics>,
    /// Per output: its hook task, if it has hooks.
    hooks: Vec<Option<Hook>>,
    /// The `once` command: a failure is not retried, so no retry is announced.
    one_shot: bool,
    /// When the last renewal succeeded (monotonic): renew-now requests
    /// within [`ANSWERED_BY_LAST_RENEWAL`] of it share one renewal, held
    /// until that second is over.
    last_renewed: Option<std::time::Instant>,
    /// Access keys: a forced rotation (SIGUSR1) waits until then; set when
    /// one starts, cleared by a due rotation (so the first forced one after
    /// a start or a due rotation is not delayed).
    forced_not_before: Option<OffsetDateTime>,
    /// `exec` mode: where the secret goes once every output holds it.
    export: Option<Arc<ExportSender>>,
    /// `exec` mode: the keys running children hold (never deleted).
    in_use: InUse,
}

/// Renew-now requests (SIGUSR1) are coalesced over this long after a
/// successful renewal: a forced renewal starts no sooner than this after
/// the last success, and every request made meanwhile shares it. A storm of
/// requests spread over time thus costs at most one renewal a second (plus
/// the one the first request starts), and each request still gets a
/// renewal that started after it was made.
pub const ANSWERED_BY_LAST_RENEWAL: Duration = Duration::from_secs(1);

/// Access keys: the least time between two forced rotations (SIGUSR1).
pub const MIN_FORCED_ROTATION_INTERVAL: Duration = Duration::from_secs(3);

impl Credential {
    /// A credential with no token yet. Must be called within the runtime
    /// (hook tasks are started here).
    pub fn new(
        cfg: CredentialConfig,
        api: Arc<Api>,
        state_dir: std::path::PathBuf,
        board: Option<Arc<board::StatusBoard>>,
        metrics: Arc<Metrics>,
    ) -> Credential {
        metrics.register(&cfg.name);
        let hooks = start_hooks(&cfg, Vec::new(), &metrics);
        Credential {
            source: Source::for_config(&cfg),
            state_dir,
            stale: vec![true; cfg.outputs.len()],
            hooks,
            metrics,
            cfg,
            api,
            held: None,
            force_login: false,
            write_now: true,
            failures: 0,
            failed_step: None,
            retry_at: None,
            last_error: None,
            renewals_ok: 0,
            renewals_failed: 0,
            board,
            one_shot: false,
            last_renewed: None,
            forced_not_before: None,
            export: None,
            in_use: InUse::default(),
        }
    }

    /// `exec` mode: publish the secret on `export` once every output holds
    /// it, and keep the keys in `in_use` alive.
    pub fn exported(mut self, export: Option<Arc<ExportSender>>, in_use: InUse) -> Credential {
        self.export = export;
        self.in_use = in_use;
        self
    }

    /// A reader came (a proxy added by a reload): the secret goes to
    /// `export` from now on, the one held at once (if fresh).
    pub fn export_to(&mut self, export: Arc<ExportSender>, now: OffsetDateTime) {
        self.export = Some(export);
        self.export(now);
    }

    /// The keys running children hold changed: a key let go starts its
    /// deletion grace (if every output holds its successor).
    pub async fn children_changed(&mut self) {
        if !self.stale.iter().any(|s| *s) {
            self.source.published(&ctx!(self), crate::now(), None).await;
            self.publish(crate::now());
        }
    }

    /// True within [`ANSWERED_BY_LAST_RENEWAL`] of a successful renewal.
    pub fn just_renewed(&self) -> bool {
        self.last_renewed
            .is_some_and(|t| t.elapsed() < ANSWERED_BY_LAST_RENEWAL)
    }

    /// When a forced (not yet due) renewal may start, if not now: a second
    /// after the last success ([`ANSWERED_BY_LAST_RENEWAL`]) and, for an
    /// access key, [`MIN_FORCED_ROTATION_INTERVAL`] after the last forced
    /// rotation began (bounded, should the wall clock jump back).
    fn forced_not_before(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let window = self
            .last_renewed
            .and_then(|t| ANSWERED_BY_LAST_RENEWAL.checked_sub(t.elapsed()))
            .filter(|left| !left.is_zero())
            .map(|left| schedule::after(now, left));
        let interval = self
            .forced_not_before
            .filter(|at| *at > now)
            .map(|at| at.min(schedule::after(now, MIN_FORCED_ROTATION_INTERVAL)));
        window.max(interval)
    }

    fn is_access_key(&self) -> bool {
        matches!(self.cfg.kind, crate::config::Kind::AccessKey(_))
    }

    pub fn force_login(&mut self) {
        self.force_login = true;
        self.retry_at = None;
    }

    /// What a source may use of this credential.
    /// Takes the secret already held, if it is still good (a restart must
    /// not log in or make a key when it need not): a login token found in
    /// the outputs, an access key from the key state.
    pub async fn adopt_from_disk(&mut self, now: OffsetDateTime) {
        let adopted = self.source.adopt(&ctx!(self), now).await;
        match adopted {
            Ok(Some(held)) => {
                self.metrics
                    .token(&self.cfg.name, held.validity.expires_at, held.obtained_at);
                self.held = Some(held);
                self.stale = vec![true; self.cfg.outputs.len()];
            }
            Ok(None) => {}
            Err(failure) => {
                self.fail(Step::Renew, failure.kind, failure.message);
                return;
            }
        }
        self.publish(now);
    }

    /// The next step and when it is due (possibly in the past: act now).
    pub fn next_step(&self, now: OffsetDateTime) -> (Step, OffsetDateTime) {
        // `due_at` is before the expiry, except for a token that came with
        // under a second of life (see `schedule::due_at`): that one is not
        // renewed at its expiry but a second after it was obtained, so a
        // server handing out such tokens is not asked in a loop.
        let needs_login = match &self.held {
            None => true,
            Some(h) => self.force_login || now >= h.due_at,
        };
        let has_stale = self.stale.iter().any(|s| *s);
        let usable = self.held.as_ref().is_some_and(|h| !h.validity.is_expired(now));
        // New or changed outputs get the held token at once, even while a
        // login is backing off (when a login is possible now, it writes them).
        let backing_off = self.retry_at.is_some_and(|at| at > now);
        if self.write_now && usable && has_stale && (backing_off || !needs_login) {
            return (Step::WriteOutputs, now);
        }
        let step = if needs_login {
            Step::Renew
        } else {
            Step::WriteOutputs
        };
        if let Some(at) = self.retry_at {
            return (step, at);
        }
        // A forced renewal waits out the second after the last success and,
        // for an access key, the least interval between forced rotations.
        if let Some(h) = &self.held
            && self.force_login
            && now < h.due_at
            && let Some(at) = self.forced_not_before(now)
        {
            return if has_stale && usable {
                (Step::WriteOutputs, now)
            } else {
                (Step::Renew, at)
            };
        }
        match (&self.held, needs_login, has_stale) {
            (_, true, _) | (None, _, _) => (Step::Renew, now),
            (Some(_), false, true) => (Step::WriteOutputs, now),
            (Some(h), false, false) => match self.source.housekeeping_at(now) {
                Some(at) if at < h.due_at => (Step::Housekeep, at),
                _ => (Step::Renew, h.due_at),
            },
        }
    }

    /// Holds an unexpired token the server did not refuse, and every
    /// output has it.
    pub fn is_fresh(&self, now: OffsetDateTime) -> bool {
        self.held.as_ref().is_some_and(|h| !h.validity.is_expired(now))
            && !self.stale.iter().any(|s| *s)
            && !self.source.refused()
    }

    /// Takes a new config for this credential. The held token is kept
    /// (outputs are brought up to date without a login) unless the login
    /// itself changed, in which case a login is forced.
    pub fn reconfigure(&mut self, cfg: CredentialConfig, api: Arc<Api>, now: OffsetDateTime) {
        // Another base URL (the credential's or [api]'s) is another server:
        // a token or agent login of the old one is not used there.
        let server_changed = self.api.config != api.config;
        let login_changed = !self.cfg.same_login(&cfg) || server_changed;
        let renewal_changed = self.cfg.renewal != cfg.renewal;
        for out in &self.cfg.outputs {
            if !cfg.outputs.iter().any(|o| o.path == out.path) {
                info!(path = %out.path.display(), "output removed from the config; its file is left in place");
            }
        }
        let old_hooks = std::mem::take(&mut self.hooks)
            .into_iter()
            .zip(self.cfg.outputs.iter().map(|o| o.path.clone()))
            .filter_map(|(h, p)| h.map(|h| (p, h)))
            .collect();
        self.hooks = start_hooks(&cfg, old_hooks, &self.metrics);
        self.source.reconfigure(&self.cfg, &cfg, server_changed);
        self.cfg = cfg;
        self.api = api;
        // Unchanged files are detected by content and not rewritten.
        self.stale = vec![true; self.cfg.outputs.len()];
        // A token of the old login is not written anywhere new: the login
        // that follows writes every output.
        self.write_now = !login_changed;
        if renewal_changed && let Some(h) = &mut self.held {
            h.due_at = schedule::due_at(&h.validity, &self.cfg.renewal, jitter_sample());
            info!(next_renewal = %token::rfc3339(h.due_at), "renewal settings changed; rescheduled");
        }
        if login_changed {
            info!("username, password source or API changed; logging in anew");
            self.force_login();
        }
        self.publish(now);
    }

    /// Does one step. Renewing can be abandoned through `cancel` (the
    /// secret would simply not be used; a key is saved before it is
    /// returned); writes, once started, finish.
    pub async fn act(&mut self, step: Step, cancel: &CancellationToken) {
        match step {
            Step::Renew => {
                if self.renew(cancel).await {
                    self.write_outputs(true).await;
                }
            }
            Step::WriteOutputs => self.write_outputs(false).await,
            Step::Housekeep => self.housekeep().await,
        }
    }

    /// The renewal half of [`Credential::act`]: obtains the next secret
    /// and takes it, or records the failure. True when there is a new
    /// secret to write.
    async fn renew(&mut self, cancel: &CancellationToken) -> bool {
        if self.is_access_key() {
            let now = crate::now();
            let forced = self.held.as_ref().is_some_and(|h| now < h.due_at) && self.force_login;
            self.forced_not_before = forced.then(|| schedule::after(now, MIN_FORCED_ROTATION_INTERVAL));
        }
        let ctx = ctx!(self);
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            r = self.source.renew(&ctx, self.held.as_ref()) => Some(r),
        };
        let Some(result) = result else { return false };
        self.metrics.renewal(&self.cfg.name, result.is_ok());
        match result {
            Ok(held) => {
                self.metrics
                    .token(&self.cfg.name, held.validity.expires_at, held.obtained_at);
                self.held = Some(held);
                self.force_login = false;
                self.stale = vec![true; self.cfg.outputs.len()];
                self.renewals_ok += 1;
                self.last_renewed = Some(std::time::Instant::now());
                self.clear_failure();
                true
            }
            Err(failure) => {
                self.renewals_failed += 1;
                self.fail(Step::Renew, failure.kind, failure.message);
                false
            }
        }
    }

    /// Key housekeeping (deletions, sweeps, lookups). A held key found
    /// deleted out of band is renewed at once.
    async fn housekeep(&mut self) {
        let outcome = self
            .source
            .housekeep(&ctx!(self), self.held.as_ref(), crate::now())
            .await;
        if outcome == Housekept::RenewNow {
            self.force_login();
        }
        self.publish(crate::now());
    }

    /// Writes the held token to every stale output. A failed output stays
    /// stale and is retried with backoff; the others are written anyway.
    async fn write_outputs(&mut self, renewed: bool) {
        self.write_now = false;
        let Some(held) = self.held.clone() else { return };
        let grace = self.source.grace_start(&ctx!(self));
        let written = write_stale(
            &self.cfg,
            &held,
            renewed,
            grace,
            &mut self.stale,
            &self.hooks,
            &self.metrics,
        )
        .await;
        let now = crate::now();
        log_written(&held, renewed, &written.files);
        if written.errors.is_empty() {
            if self.failed_step == Some(Step::WriteOutputs) {
                self.clear_failure();
            }
            // Every output holds the held secret: a replaced key's grace
            // starts (started beside the outputs, if the source asked).
            self.source.published(&ctx!(self), now, written.grace).await;
            self.publish(now);
        } else {
            self.fail(
                Step::WriteOutputs,
                FailureKind::Transient,
                written.errors.join("; "),
            );
        }
    }
    fn clear_failure(&mut self) {
        if self.failures > 0 {
            info!(after_failures = self.failures, "recovered");
        }
        self.failures = 0;
        self.failed_step = None;
        self.retry_at = None;
        self.last_error = None;
    }

    /// Records a failure and schedules the retry. Logs at warn when the
    /// error differs from the last one, else at debug: an outage of hours
    /// gives a handful of lines, not one per try.
    fn fail(&mut self, step: Step, kind: FailureKind, message: String) {
        self.failures = self.failures.saturating_add(1);
        self.failed_step = Some(step);
        let wanted = schedule::backoff(self.failures, kind, &self.cfg.renewal, fastrand::f64());
        let now = crate::now();
        let expires_at = self.held.as_ref().map(|h| h.validity.expires_at);
        let (delay, capped) = schedule::cap_retry(wanted, now, expires_at, &self.cfg.renewal);
        if capped && !self.one_shot {
            let wanted = humantime::format_duration(Duration::from_secs(wanted.as_secs()));
            let instead = humantime::format_duration(Duration::from_millis(delay.as_millis() as u64));
            let server_asked = matches!(kind, FailureKind::RateLimited(Some(_)));
            match expires_at.filter(|e| *e > now) {
                Some(e) if server_asked => warn!(
                    wanted = %wanted, retry_in = %instead, expires_at = %token::rfc3339(e),
                    "not waiting as long as the server asked: the held token would expire first"
                ),
                Some(e) => info!(
                    wanted = %wanted, retry_in = %instead, expires_at = %token::rfc3339(e),
                    "retrying sooner than the backoff: the held token would expire first"
                ),
                None => warn!(
                    wanted = %wanted, retry_in = %instead,
                    "not waiting as long as the server asked: no usable token is held; capped like retry-max"
                ),
            }
        }
        self.retry_at = Some(schedule::after(now, delay));
        let retry_in = humantime::format_duration(Duration::from_millis(delay.as_millis() as u64));
        // The same failure again (another request id, another Retry-After)
        // is not news: only a change of state is logged above debug.
        let kind_of = |m: &str| {
            m.split(" [request id")
                .next()
                .unwrap_or("")
                .split(", retry after")
                .next()
                .unwrap_or("")
                .to_string()
        };
        if self.one_shot {
            // `once` makes no retry: announcing one would mislead.
            if kind == FailureKind::Rejected {
                error!(error = %message, "refused by the server");
            } else {
                warn!(error = %message, "renewal failed; what is on disk (if anything) is left as it is");
            }
        } else if self.last_error.as_deref().map(kind_of) != Some(kind_of(&message)) {
            if kind == FailureKind::Rejected {
                error!(error = %message, failures = self.failures, retry_in = %retry_in, "refused by the server; not retried before retry-max (SIGUSR1 retries at once)");
            } else {
                warn!(error = %message, failures = self.failures, retry_in = %retry_in, "renewal failed; keeping the current token");
            }
        } else {
            debug!(error = %message, failures = self.failures, retry_in = %retry_in, "renewal failed again");
        }
        self.last_error = Some(message);
        self.publish(now);
    }

    pub fn status(&self, now: OffsetDateTime) -> board::CredentialStatus {
        let (step, at) = self.next_step(now);
        board::CredentialStatus {
            name: self.cfg.name.clone(),
            expires_at: self.held.as_ref().map(|h| h.validity.expires_at),
            obtained_at: self.held.as_ref().map(|h| h.obtained_at),
            next_renewal: if step == Step::Renew {
                Some(at)
            } else {
                self.held.as_ref().map(|h| h.due_at)
            },
            last_error: self.last_error.clone(),
            failures: self.failures,
            fresh: self.is_fresh(now),
            renewals_ok: self.renewals_ok,
            renewals_failed: self.renewals_failed,
            key: self.source.key_status(),
            refused: self.held.is_some() && self.source.refused(),
        }
    }

    fn publish(&self, now: OffsetDateTime) {
        if let Some(board) = &self.board {
            board.publish(self.status(now));
        }
        self.export(now);
    }

    /// `exec` mode: a fresh secret (every output holds it, the server has
    /// not refused it) goes to the supervisor. Watchers are woken only
    /// when the value changed: a rewrite of the same secret restarts nothing.
    fn export(&self, now: OffsetDateTime) {
        let (Some(tx), Some(held)) = (&self.export, &self.held) else {
            return;
        };
        if !self.is_fresh(now) {
            return;
        }
        // The first secret, already due (a bootstrap key, a token found on
        // disk late in its life): the renewal under way decides, so a
        // child does not start only to be restarted a moment later. If it
        // fails, the secret held is exported after all.
        if tx.borrow().is_none() && now >= held.due_at && self.failures == 0 {
            return;
        }
        let next = Exported {
            secret: held.token.clone(),
            expires_at: held.validity.expires_at,
            key_id: held.key_id.clone(),
        };
        tx.send_if_modified(|current| {
            let changed = current.as_ref().is_none_or(|c| c.secret != next.secret);
            if current.as_ref() != Some(&next) {
                *current = Some(next);
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests;
