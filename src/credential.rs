//! One credential: the token it holds, its outputs, its retry state.
//!
//! [`Credential`] is the state machine; [`run`] is the task that drives it
//! in the daemon and [`once`] the one-shot pass of the `once` command. The
//! decisions (when to act, how long to back off) come from
//! [`crate::schedule`]; this module does the I/O around them.
//!
//! Invariants:
//! - a token replaces the held one only after it decoded as a JWT and is
//!   not expired (by the server's clock);
//! - the held token stays in place through any failure;
//! - every output is "stale" until it holds the held token; stale outputs
//!   are (re)written without a login.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::api::{ApiClient, LoginError};
use crate::config::{ApiConfig, CredentialConfig, Format, OutputConfig};
use crate::hooks::{Hook, HookSpec};
use crate::metrics::Metrics;
use crate::output::render::{TokenFacts, render};
use crate::output::write::{FileSpec, WriteOutcome, remove_stale_temps, write_atomic};
use crate::schedule::{self, FailureKind};
use crate::secret::Secret;
use crate::token::{self, TokenError, Validity};

/// Logins allowed in flight at once, whatever the per-second budget.
const MAX_CONCURRENT_LOGINS: usize = 16;

/// Server clock offsets below this are Date-header noise and ignored.
const SKEW_IGNORED: time::Duration = time::Duration::seconds(5);
/// Server clock offsets above this are worth a warning.
const SKEW_WARN: time::Duration = time::Duration::seconds(60);

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

/// The token a credential holds, and when it is due for renewal.
#[derive(Clone)]
pub struct Held {
    pub token: Secret,
    /// In our clock (adjusted for the server's skew when it was obtained).
    pub validity: Validity,
    pub obtained_at: OffsetDateTime,
    pub due_at: OffsetDateTime,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("token", &self.token)
            .field("expires_at", &token::rfc3339(self.validity.expires_at))
            .field("due_at", &token::rfc3339(self.due_at))
            .finish()
    }
}

/// What a credential looks like from outside: for logs, `status`,
/// readiness. Never holds the token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CredentialStatus {
    pub name: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub obtained_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_renewal: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    pub failures: u32,
    /// Holds an unexpired token and every output has it on disk.
    pub fresh: bool,
    pub renewals_ok: u64,
    pub renewals_failed: u64,
}

impl CredentialStatus {
    /// A credential not heard from yet.
    pub fn pending(name: &str) -> CredentialStatus {
        CredentialStatus {
            name: name.to_string(),
            expires_at: None,
            obtained_at: None,
            next_renewal: None,
            last_error: None,
            failures: 0,
            fresh: false,
            renewals_ok: 0,
            renewals_failed: 0,
        }
    }

    /// Fresh as of `now`: the token may have expired since it was published.
    pub fn is_fresh_at(&self, now: OffsetDateTime) -> bool {
        self.fresh && self.expires_at.is_some_and(|e| e > now)
    }

    /// One word for tables and health bodies.
    pub fn state(&self, now: OffsetDateTime) -> &'static str {
        match self.expires_at {
            None if self.failures > 0 => "failing",
            None => "pending",
            Some(e) if e <= now => "expired",
            Some(_) if !self.fresh => "unwritten",
            Some(_) if self.failures > 0 => "retrying",
            Some(_) => "fresh",
        }
    }
}

/// The daemon's view of every credential, updated by their tasks.
#[derive(Debug, Default)]
pub struct StatusBoard {
    inner: Mutex<std::collections::BTreeMap<String, CredentialStatus>>,
    changed: tokio::sync::Notify,
}

impl StatusBoard {
    pub fn publish(&self, status: CredentialStatus) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&status.name) != Some(&status) {
            map.insert(status.name.clone(), status);
            self.changed.notify_waiters();
        }
    }

    /// Adds a credential as pending (so readiness waits for it).
    pub fn register(&self, name: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| CredentialStatus::pending(name));
        self.changed.notify_waiters();
    }

    pub fn remove(&self, name: &str) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.changed.notify_waiters();
    }

    pub fn snapshot(&self) -> Vec<CredentialStatus> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Resolves on the next change after this call (not after its first
    /// poll: take it before looking at the board, so no change is missed).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// What a credential should do next, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Login,
    WriteOutputs,
}

/// One credential's state.
pub struct Credential {
    cfg: CredentialConfig,
    api: Arc<Api>,
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
    skew_warned: bool,
    renewals_ok: u64,
    renewals_failed: u64,
    board: Option<Arc<StatusBoard>>,
    metrics: Arc<Metrics>,
    /// Per output: its hook task, if it has hooks.
    hooks: Vec<Option<Hook>>,
}

impl Credential {
    /// A credential with no token yet. Must be called within the runtime
    /// (hook tasks are started here).
    pub fn new(
        cfg: CredentialConfig,
        api: Arc<Api>,
        board: Option<Arc<StatusBoard>>,
        metrics: Arc<Metrics>,
    ) -> Credential {
        metrics.register(&cfg.name);
        let hooks = start_hooks(&cfg, Vec::new(), &metrics);
        Credential {
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
            skew_warned: false,
            renewals_ok: 0,
            renewals_failed: 0,
            board,
        }
    }

    pub fn force_login(&mut self) {
        self.force_login = true;
        self.retry_at = None;
    }

    /// Looks for a usable token in the outputs (a restart must not log in
    /// when it need not). Takes the one that expires last; an expired one
    /// is ignored. Also removes temp files a killed process left behind.
    pub fn adopt_from_disk(&mut self, now: OffsetDateTime) {
        for out in &self.cfg.outputs {
            let removed = remove_stale_temps(&out.path);
            if removed > 0 {
                info!(path = %out.path.display(), removed, "removed temp files left by an earlier run");
            }
        }
        let found: Vec<_> = self.cfg.outputs.iter().filter_map(read_token_file).collect();
        // The token that expires last; for when it was obtained, a JSON
        // output's own record beats a file's mtime (so that output is not
        // rewritten just because another file is older or newer).
        let best = found
            .iter()
            .map(|(tok, claims, obtained_at, _)| (tok, Validity::new(*claims, *obtained_at)))
            .filter(|(_, v)| !v.is_expired(now))
            .max_by_key(|(_, v)| v.expires_at)
            .map(|(tok, _)| {
                let (_, claims, obtained_at, _) = found
                    .iter()
                    .filter(|f| &f.0 == tok)
                    .max_by_key(|f| f.3)
                    .expect("the token came from this list");
                (tok.clone(), Validity::new(*claims, *obtained_at), *obtained_at)
            });
        if let Some((tok, validity, obtained_at)) = best {
            let due_at = schedule::due_at(&validity, &self.cfg.renewal, jitter_sample());
            info!(
                expires_at = %token::rfc3339(validity.expires_at),
                next_renewal = %token::rfc3339(due_at),
                "reusing the token found on disk"
            );
            self.metrics
                .token(&self.cfg.name, validity.expires_at, obtained_at);
            self.held = Some(Held {
                token: tok,
                validity,
                obtained_at,
                due_at,
            });
            self.stale = vec![true; self.cfg.outputs.len()];
        }
        self.publish(now);
    }

    /// The next step and when it is due (possibly in the past: act now).
    pub fn next_step(&self, now: OffsetDateTime) -> (Step, OffsetDateTime) {
        let needs_login = match &self.held {
            None => true,
            Some(h) => self.force_login || now >= h.due_at || h.validity.is_expired(now),
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
            Step::Login
        } else {
            Step::WriteOutputs
        };
        if let Some(at) = self.retry_at {
            return (step, at);
        }
        match (&self.held, needs_login, has_stale) {
            (_, true, _) | (None, _, _) => (Step::Login, now),
            (Some(_), false, true) => (Step::WriteOutputs, now),
            (Some(h), false, false) => (Step::Login, h.due_at),
        }
    }

    /// Holds an unexpired token and every output has it.
    pub fn is_fresh(&self, now: OffsetDateTime) -> bool {
        self.held.as_ref().is_some_and(|h| !h.validity.is_expired(now)) && !self.stale.iter().any(|s| *s)
    }

    /// Takes a new config for this credential. The held token is kept
    /// (outputs are brought up to date without a login) unless the login
    /// itself changed, in which case a login is forced.
    pub fn reconfigure(&mut self, cfg: CredentialConfig, api: Arc<Api>, now: OffsetDateTime) {
        let login_changed = !self.cfg.same_login(&cfg) || self.api.config != api.config;
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

    /// Does one step. Logging in can be abandoned through `cancel` (the
    /// token would simply not be used); writes, once started, finish.
    pub async fn act(&mut self, step: Step, cancel: &CancellationToken) {
        if step == Step::Login {
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                r = self.login() => r,
            };
            self.metrics.renewal(&self.cfg.name, result.is_ok());
            match result {
                Ok(held) => {
                    self.metrics
                        .token(&self.cfg.name, held.validity.expires_at, held.obtained_at);
                    self.held = Some(held);
                    self.force_login = false;
                    self.stale = vec![true; self.cfg.outputs.len()];
                    self.renewals_ok += 1;
                    self.clear_failure();
                }
                Err(failure) => {
                    self.renewals_failed += 1;
                    self.fail(Step::Login, failure.kind, failure.message);
                    return;
                }
            }
        }
        self.write_outputs(step == Step::Login).await;
    }

    /// Reads the password, waits for the login budget, logs in, checks the token.
    async fn login(&mut self) -> Result<Held, Failure> {
        let password = self
            .cfg
            .password
            .read()
            .map_err(|e| Failure::transient(format!("password: {e}")))?;
        let _slot = self.api.limiter.acquire().await;
        debug!(url = %self.api.client.login_url(), "logging in");
        let started = std::time::Instant::now();
        let login = self.api.client.login(&self.cfg.username, &password).await;
        self.metrics
            .login_duration(&self.cfg.name, started.elapsed().as_secs_f64());
        let login = login.map_err(Failure::from)?;
        drop(password);

        let mut claims = login.claims;
        if let Some(skew) = login.server_skew.filter(|s| s.abs() > SKEW_IGNORED) {
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
        let validity = Validity::new(claims, login.received_at);
        if validity.is_expired(crate::now()) {
            return Err(Failure::transient(format!(
                "server sent an unusable token: {}",
                TokenError::Expired
            )));
        }
        let due_at = schedule::due_at(&validity, &self.cfg.renewal, jitter_sample());
        Ok(Held {
            token: login.token,
            validity,
            obtained_at: login.received_at,
            due_at,
        })
    }

    /// Writes the held token to every stale output. A failed output stays
    /// stale and is retried with backoff; the others are written anyway.
    async fn write_outputs(&mut self, renewed: bool) {
        self.write_now = false;
        let Some(held) = self.held.clone() else { return };
        let mut written = Vec::new();
        let mut errors = Vec::new();
        for (i, out) in self.cfg.outputs.iter().enumerate() {
            if !self.stale[i] {
                continue;
            }
            let content = render(
                &out.format,
                &TokenFacts {
                    credential: &self.cfg.name,
                    username: &self.cfg.username,
                    token: &held.token,
                    expires_at: held.validity.expires_at,
                    obtained_at: held.obtained_at,
                },
            );
            let path = out.path.clone();
            let (mode, uid, gid) = (
                out.mode,
                out.owner.as_ref().map(|o| o.id),
                out.group.as_ref().map(|g| g.id),
            );
            let result = tokio::task::spawn_blocking(move || {
                write_atomic(
                    &FileSpec {
                        path: &path,
                        mode,
                        uid,
                        gid,
                    },
                    &content,
                )
            })
            .await;
            match result {
                Ok(Ok(outcome)) => {
                    self.stale[i] = false;
                    if outcome == WriteOutcome::Written {
                        written.push(out.path.display().to_string());
                        if let Some(hook) = &self.hooks[i] {
                            hook.fire(held.validity.expires_at, &held.token);
                        }
                    }
                }
                Ok(Err(e)) => {
                    self.metrics.write_failure(&self.cfg.name);
                    errors.push(e.to_string());
                }
                Err(e) => {
                    self.metrics.write_failure(&self.cfg.name);
                    errors.push(format!("write of {} failed: {e}", out.path.display()));
                }
            }
        }
        let now = crate::now();
        if renewed {
            info!(
                expires_at = %token::rfc3339(held.validity.expires_at),
                next_renewal = %token::rfc3339(held.due_at),
                files = %written.join(", "),
                "token renewed"
            );
        } else if !written.is_empty() {
            info!(files = %written.join(", "), "outputs updated");
        }
        if errors.is_empty() {
            if self.failed_step == Some(Step::WriteOutputs) {
                self.clear_failure();
            }
            self.publish(now);
        } else {
            self.fail(Step::WriteOutputs, FailureKind::Transient, errors.join("; "));
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
        let delay = schedule::backoff(self.failures, kind, &self.cfg.renewal, fastrand::f64());
        let now = crate::now();
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
        if self.last_error.as_deref().map(kind_of) != Some(kind_of(&message)) {
            if kind == FailureKind::Rejected {
                error!(error = %message, failures = self.failures, retry_in = %retry_in, "credentials rejected by the server; check username and password");
            } else {
                warn!(error = %message, failures = self.failures, retry_in = %retry_in, "renewal failed; keeping the current token");
            }
        } else {
            debug!(error = %message, failures = self.failures, retry_in = %retry_in, "renewal failed again");
        }
        self.last_error = Some(message);
        self.publish(now);
    }

    pub fn status(&self, now: OffsetDateTime) -> CredentialStatus {
        let (step, at) = self.next_step(now);
        CredentialStatus {
            name: self.cfg.name.clone(),
            expires_at: self.held.as_ref().map(|h| h.validity.expires_at),
            obtained_at: self.held.as_ref().map(|h| h.obtained_at),
            next_renewal: if step == Step::Login {
                Some(at)
            } else {
                self.held.as_ref().map(|h| h.due_at)
            },
            last_error: self.last_error.clone(),
            failures: self.failures,
            fresh: self.is_fresh(now),
            renewals_ok: self.renewals_ok,
            renewals_failed: self.renewals_failed,
        }
    }

    fn publish(&self, now: OffsetDateTime) {
        if let Some(board) = &self.board {
            board.publish(self.status(now));
        }
    }
}

/// Hook tasks for `cfg`'s outputs, reusing a running one whose output
/// path and hooks are unchanged.
fn start_hooks(
    cfg: &CredentialConfig,
    mut old: Vec<(std::path::PathBuf, Hook)>,
    metrics: &Arc<Metrics>,
) -> Vec<Option<Hook>> {
    cfg.outputs
        .iter()
        .map(|out| {
            let spec = HookSpec::of(out)?;
            if let Some(i) = old.iter().position(|(p, h)| p == &out.path && h.spec == spec) {
                return Some(old.swap_remove(i).1);
            }
            Some(Hook::start(
                spec,
                cfg.name.clone(),
                out.path.clone(),
                metrics.clone(),
            ))
        })
        .collect()
}

/// A failed login attempt, ready for logging and backoff.
struct Failure {
    kind: FailureKind,
    message: String,
}

impl Failure {
    fn transient(message: String) -> Failure {
        Failure {
            kind: FailureKind::Transient,
            message,
        }
    }
}

impl From<LoginError> for Failure {
    fn from(e: LoginError) -> Failure {
        Failure {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// A uniform sample in [-1, 1] for renewal jitter.
fn jitter_sample() -> f64 {
    fastrand::f64() * 2.0 - 1.0
}

/// Reads the token in an output file, with when it was obtained: the JSON
/// format's `obtained_at` (`true` in the result), else the file's mtime.
fn read_token_file(out: &OutputConfig) -> Option<(Secret, token::Claims, OffsetDateTime, bool)> {
    let bytes = zeroize::Zeroizing::new(std::fs::read(&out.path).ok()?);
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

/// Commands from the daemon to a credential's task.
#[derive(Debug)]
pub enum Command {
    /// Log in now, even if not due and even during backoff (SIGUSR1).
    RenewNow,
    /// A reloaded config for this credential.
    Reconfigure(Box<CredentialConfig>, Arc<Api>),
}

/// The daemon's task for one credential: act when due, sleep at most
/// [`schedule::MAX_SLEEP`] at a time (so a wall-clock deadline passed
/// during a suspend is noticed), obey commands, stop on `cancel`.
pub async fn run(
    mut cred: Credential,
    mut commands: mpsc::UnboundedReceiver<Command>,
    cancel: CancellationToken,
) {
    loop {
        let now = crate::now();
        let (step, at) = cred.next_step(now);
        if at <= now {
            cred.act(step, &cancel).await;
            if cancel.is_cancelled() {
                break;
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            command = commands.recv() => match command {
                Some(Command::RenewNow) => {
                    info!("renewal requested");
                    cred.force_login();
                }
                Some(Command::Reconfigure(cfg, api)) => cred.reconfigure(*cfg, api, crate::now()),
                None => break,
            },
            _ = tokio::time::sleep(schedule::sleep_for(now, at)) => {}
        }
    }
    debug!("credential task stopped");
}

/// The `once` pass for one credential: reuse what is on disk if it is not
/// due (unless `force`), else log in once; write every output. True if the
/// credential ends fresh.
pub async fn once(cfg: CredentialConfig, api: Arc<Api>, force: bool) -> bool {
    let mut cred = Credential::new(cfg, api, None, Arc::new(Metrics::new()));
    let now = crate::now();
    cred.adopt_from_disk(now);
    if force {
        cred.force_login();
    }
    // A login, then (if it failed) the still-valid token to new outputs.
    for _ in 0..2 {
        let now = crate::now();
        let (step, at) = cred.next_step(now);
        if at > now {
            break;
        }
        cred.act(step, &CancellationToken::new()).await;
    }
    // A login that was needed (or forced) and failed is a failure even if
    // the old token is still on disk.
    let fresh = cred.is_fresh(crate::now()) && cred.failures == 0;
    for hook in std::mem::take(&mut cred.hooks).into_iter().flatten() {
        hook.finish().await;
    }
    if !fresh {
        error!(
            error = cred.last_error.as_deref().unwrap_or("outputs not written"),
            "credential failed"
        );
    }
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::token::Claims;
    use time::macros::datetime;

    const CONFIG: &str = r#"
[api]
base-url = "http://127.0.0.1:9"
[[credential]]
name = "main"
username = "agent@example.com"
password = "hunter2-password"
[[credential.output]]
path = "/nonexistent/main.token"
"#;

    fn credential() -> (Config, Credential) {
        let config = Config::parse(CONFIG, std::path::Path::new("/etc/t/config.toml")).unwrap();
        let api = Api::new(&config.api).unwrap();
        let cred = Credential::new(config.credentials[0].clone(), api, None, Arc::new(Metrics::new()));
        (config, cred)
    }

    const T0: OffsetDateTime = datetime!(2026-11-27 00:00 UTC);

    /// Gives the credential a 7-day token obtained at T0, written everywhere.
    fn hold_week_token(cred: &mut Credential) -> OffsetDateTime {
        let validity = Validity::new(
            Claims {
                expires_at: Some(T0 + time::Duration::days(7)),
                issued_at: None,
            },
            T0,
        );
        let due_at = schedule::due_at(&validity, &cred.cfg.renewal, 0.0);
        cred.held = Some(Held {
            token: Secret::new("eyJhbGciOiJIUzI1NiJ9.eyJzZWNyZXQiOiJwYXlsb2FkIn0.c2lnbmF0dXJl".into()),
            validity,
            obtained_at: T0,
            due_at,
        });
        cred.stale = vec![false; cred.cfg.outputs.len()];
        due_at
    }

    #[test]
    fn nothing_to_do_until_due() {
        let (_, mut cred) = credential();
        let due = hold_week_token(&mut cred);
        assert_eq!(cred.next_step(T0 + time::Duration::hours(1)), (Step::Login, due));
        assert!(cred.is_fresh(T0 + time::Duration::hours(1)));
    }

    #[test]
    fn no_token_means_log_in_now() {
        let (_, cred) = credential();
        assert_eq!(cred.next_step(T0), (Step::Login, T0));
    }

    #[test]
    fn clock_jump_forward_past_the_deadline_logs_in_at_once() {
        // Suspend/resume: the wall clock is suddenly past the due time
        // (and even past expiry). The next look at the clock acts.
        let (_, mut cred) = credential();
        hold_week_token(&mut cred);
        for jump in [time::Duration::days(6), time::Duration::days(30)] {
            let now = T0 + jump;
            let (step, at) = cred.next_step(now);
            assert_eq!(step, Step::Login);
            assert!(at <= now);
        }
        // And the task never sleeps longer than MAX_SLEEP before looking.
        assert_eq!(
            schedule::sleep_for(T0, T0 + time::Duration::days(5)),
            schedule::MAX_SLEEP
        );
    }

    #[test]
    fn clock_jump_backward_does_not_log_in() {
        let (_, mut cred) = credential();
        let due = hold_week_token(&mut cred);
        let now = T0 - time::Duration::days(3);
        assert_eq!(cred.next_step(now), (Step::Login, due));
        assert!(due > now);
    }

    #[test]
    fn a_stale_output_is_written_without_a_login() {
        let (_, mut cred) = credential();
        hold_week_token(&mut cred);
        cred.stale[0] = true;
        let now = T0 + time::Duration::hours(1);
        assert_eq!(cred.next_step(now), (Step::WriteOutputs, now));
    }

    #[test]
    fn backoff_holds_the_next_attempt_but_sigusr1_clears_it() {
        let (_, mut cred) = credential();
        cred.fail(
            Step::Login,
            FailureKind::Rejected,
            "credentials rejected (HTTP 400)".into(),
        );
        let (step, at) = cred.next_step(crate::now());
        assert_eq!(step, Step::Login);
        assert!(at >= crate::now() + time::Duration::seconds(299), "{at}");
        cred.force_login();
        let now = crate::now();
        assert!(cred.next_step(now).1 <= now);
    }

    #[test]
    fn renewal_change_reschedules_from_the_current_token() {
        let (config, mut cred) = credential();
        hold_week_token(&mut cred);
        let mut new = config.credentials[0].clone();
        new.renewal.renew_at = 0.5;
        new.renewal.jitter = 0.0;
        let api = cred.api.clone();
        cred.reconfigure(new, api, T0);
        assert_eq!(cred.held.as_ref().unwrap().due_at, T0 + time::Duration::hours(84));
        assert!(!cred.force_login, "same login: no new login");
    }

    #[test]
    fn changed_username_forces_a_login() {
        let (config, mut cred) = credential();
        hold_week_token(&mut cred);
        let mut new = config.credentials[0].clone();
        new.username = "other@example.com".into();
        let api = cred.api.clone();
        cred.reconfigure(new, api, T0);
        assert_eq!(cred.next_step(T0).0, Step::Login);
        assert!(cred.next_step(T0).1 <= T0);
    }

    #[test]
    fn debug_of_config_and_state_never_shows_secrets() {
        let (config, mut cred) = credential();
        hold_week_token(&mut cred);
        let held = cred.held.clone().unwrap();
        let texts = [
            format!("{config:?}"),
            format!("{config:#?}"),
            format!("{held:?}"),
            format!("{:?}", cred.status(T0)),
            format!("{:?}", cred.api),
            format!(
                "{:?}",
                Command::Reconfigure(Box::new(config.credentials[0].clone()), cred.api.clone())
            ),
        ];
        let secrets = [
            "hunter2-password",
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJzZWNyZXQiOiJwYXlsb2FkIn0",
            "c2lnbmF0dXJl",
        ];
        for text in &texts {
            for secret in secrets {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
    }
}
