//! Housekeeping around keys: replaced keys deleted after their grace
//! ([`start_grace`], [`due_deletions`]), every DELETE checked first
//! ([`delete_checked`]), orphans of lost answers swept ([`orphans`],
//! [`sweep`]), the held key looked up (agent mode), and a state file
//! changed by another process re-read and merged ([`merge_reread`]).

use std::time::Duration;

use time::OffsetDateTime;
use tracing::{info, warn};

use crate::api::keys::{Deleted, KeyAuth, KeyClient, KeyError, KeyObject, prefix_of};
use crate::board::{DeletionFailure, overdue_deletions};
use crate::schedule::FailureKind;
use crate::source::held::{Ctx, Held, Housekept};
use crate::state::keys::{self as keystate, KeyState, PendingDeletion};

use super::KeySource;

/// Housekeeping that could do nothing is not tried again sooner than this
/// (nor sooner than `retry-min`).
const HOUSEKEEPING_FLOOR: Duration = Duration::from_secs(1);

/// The nonce a key's `detail` carries (`... nonce=HEX`), if any.
pub fn nonce_in(detail: &str) -> Option<&str> {
    detail
        .split([';', ' '])
        .find_map(|w| w.strip_prefix("nonce="))
        .filter(|n| !n.is_empty())
}

/// Starts the grace of every pending deletion that has none yet and that
/// no running child holds (`in_use`, `exec` mode): called once every
/// output holds the current key, and when a child lets a key go. True if
/// anything changed (the caller saves the state).
pub fn start_grace(
    state: &mut KeyState,
    grace: Duration,
    now: OffsetDateTime,
    in_use: impl Fn(&str) -> bool,
) -> bool {
    let at = crate::schedule::after(now, grace);
    let mut changed = false;
    for p in &mut state.pending_deletions {
        if p.delete_after.is_none() && !in_use(&p.id) {
            p.delete_after = Some(at);
            changed = true;
        }
    }
    changed
}

/// The pending deletions whose grace is over, but never one a running
/// child holds (`in_use`).
pub fn due_deletions(
    state: &KeyState,
    now: OffsetDateTime,
    in_use: impl Fn(&str) -> bool,
) -> Vec<PendingDeletion> {
    state
        .pending_deletions
        .iter()
        .filter(|p| p.delete_after.is_some_and(|at| at <= now) && !in_use(&p.id))
        .cloned()
        .collect()
}

/// When the next pending deletion falls due, if one has a time.
pub fn next_deletion(state: &KeyState) -> Option<OffsetDateTime> {
    state
        .pending_deletions
        .iter()
        .filter_map(|p| p.delete_after)
        .min()
}

/// What [`delete_checked`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Looked up, matched, deleted.
    Deleted,
    /// 404 or 409 (on the lookup or the DELETE): it was gone already.
    AlreadyGone,
    /// Looked up, and it is not the key recorded (another name or another
    /// prefix): nothing deleted, logged as an error. The caller drops the
    /// entry from the state.
    Refused,
}

impl DeleteOutcome {
    /// The `result` label of the deletion metric.
    pub fn metric_label(self) -> &'static str {
        match self {
            DeleteOutcome::Deleted => "success",
            DeleteOutcome::AlreadyGone => "already_gone",
            DeleteOutcome::Refused => "refused",
        }
    }
}

/// THE way a key is deleted (every DELETE goes through here). `p` is what
/// the state recorded: the id, the prefix, and whether it was the
/// bootstrap key. The key is looked up by id first (`GET`, with `auth`)
/// and deleted only if its name is this installation's key name (or `p`
/// is the recorded bootstrap key, whose name is whatever it was given by
/// hand) and its `token_prefix` is the one recorded. 404 and 409 count as
/// already gone. A mismatch is logged as an error naming the id and what
/// was expected and found (never a secret), and nothing is deleted.
pub async fn delete_checked(
    client: &KeyClient<'_>,
    auth: KeyAuth<'_>,
    state: &KeyState,
    p: &PendingDeletion,
) -> Result<DeleteOutcome, KeyError> {
    let expected_name = state.key_name();
    let found = match client.get(auth, &p.id).await {
        Ok(found) => found,
        Err(KeyError::NotFound { .. } | KeyError::Gone { .. }) => {
            info!(key_id = %p.id, prefix = %p.prefix, "the key to delete was already gone");
            return Ok(DeleteOutcome::AlreadyGone);
        }
        Err(e) => {
            warn!(key_id = %p.id, prefix = %p.prefix, error = %e, "cannot look up the key to delete; will retry");
            return Err(e);
        }
    };
    if found.tm_delete.is_some() {
        return Ok(DeleteOutcome::AlreadyGone);
    }
    let name_ok = p.bootstrap || found.name == expected_name;
    if !name_ok || found.token_prefix != p.prefix || found.id != p.id {
        tracing::error!(
            key_id = %p.id,
            expected_name = %if p.bootstrap { "(the bootstrap key: any)".to_string() } else { expected_name.clone() },
            found_name = %found.name.chars().take(120).collect::<String>(),
            expected_prefix = %prefix_of(&p.prefix),
            found_prefix = %prefix_of(&found.token_prefix),
            "refusing to delete a key that is not the one recorded; it is left alone and forgotten"
        );
        return Ok(DeleteOutcome::Refused);
    }
    // A pending deletion has its time; an orphan of the sweep has none.
    let what = if p.delete_after.is_some() {
        "replaced key"
    } else {
        "key"
    };
    match client.delete(auth, &p.id).await {
        Ok(Deleted::Now) => {
            info!(key_id = %p.id, prefix = %p.prefix, "{what} deleted");
            Ok(DeleteOutcome::Deleted)
        }
        Ok(Deleted::AlreadyGone) => {
            info!(key_id = %p.id, prefix = %p.prefix, "{what} was already gone");
            Ok(DeleteOutcome::AlreadyGone)
        }
        Err(e) => {
            warn!(key_id = %p.id, prefix = %p.prefix, error = %e, "cannot delete the {what}; will retry");
            Err(e)
        }
    }
}

/// Keys this installation made but does not know: named exactly as its
/// keys are, carrying in their `detail` a nonce it recorded, neither
/// current, awaiting deletion nor left to expire, not deleted, not expired
/// (expired keys are left alone: they can do no harm and the server keeps
/// them anyway), and not holding the prefix of the key in use.
pub fn orphans(state: &KeyState, listed: &[KeyObject], now: OffsetDateTime) -> Vec<KeyObject> {
    let name = state.key_name();
    let held_prefix = state
        .current
        .as_ref()
        .map(|c| prefix_of(c.key.expose()).to_string());
    listed
        .iter()
        .filter(|k| k.name == name)
        .filter(|k| nonce_in(&k.detail).is_some_and(|n| state.creations.iter().any(|c| c.nonce == n)))
        .filter(|k| k.tm_delete.is_none() && k.tm_expire > now)
        .filter(|k| !state.known_ids().any(|id| id == k.id))
        .filter(|k| held_prefix.as_deref() != Some(k.token_prefix.as_str()))
        .cloned()
        .collect()
}

/// Lists the keys and deletes this installation's orphans (each through
/// [`delete_checked`]). Returns how many were deleted; stops at the first
/// failure (the next sweep retries). Nonces whose key was swept, or is
/// known (current, pending), are forgotten from `state.creations` (the
/// caller saves when they changed). A list cut short deletes only what it
/// saw.
pub async fn sweep(
    client: &KeyClient<'_>,
    auth: KeyAuth<'_>,
    state: &mut KeyState,
    now: OffsetDateTime,
) -> Result<usize, KeyError> {
    let listed = client.listing(auth).await?;
    // Nonces of keys the state knows are settled.
    let settled: Vec<String> = listed
        .keys
        .iter()
        .filter(|k| state.known_ids().any(|id| id == k.id))
        .filter_map(|k| nonce_in(&k.detail).map(str::to_owned))
        .collect();
    state.creations.retain(|c| !settled.contains(&c.nonce));
    let mut deleted = 0;
    for orphan in orphans(state, &listed.keys, now) {
        let p = PendingDeletion {
            id: orphan.id.clone(),
            prefix: orphan.token_prefix.clone(),
            delete_after: None,
            bootstrap: false,
        };
        let outcome = delete_checked(client, auth, state, &p).await?;
        if outcome == DeleteOutcome::Deleted {
            info!(key_id = %orphan.id, prefix = %orphan.token_prefix, "deleted an orphaned key of this installation");
            deleted += 1;
        }
        if let Some(n) = nonce_in(&orphan.detail) {
            state.creations.retain(|c| c.nonce != n);
        }
    }
    Ok(deleted)
}

/// The key state as re-read from disk (`disk`) merged with the one in
/// memory, so that a state written by anything else is not overwritten
/// and nothing either knows is forgotten: the file's view wins (its
/// current key, its pending deletions and their times), and every key only
/// memory knows is kept: memory's current key, if the file names another
/// one and does not know it, becomes a pending deletion without a time
/// (its grace starts once the file's key is in every output). `None` when
/// the file belongs to another credential or installation: memory is kept.
pub fn merge_reread(memory: &KeyState, disk: KeyState) -> Option<KeyState> {
    if disk.installation_id != memory.installation_id || disk.credential != memory.credential {
        return None;
    }
    let mut merged = disk;
    let current_id = merged.current.as_ref().map(|c| c.id.clone());
    if let Some(mine) = &memory.current
        && current_id.as_deref() != Some(mine.id.as_str())
        && !merged.known_ids().any(|id| id == mine.id)
    {
        merged.retire(mine.clone(), true);
    }
    for p in &memory.pending_deletions {
        if !merged.known_ids().any(|id| id == p.id) {
            merged.pending_deletions.push(p.clone());
        }
    }
    for l in &memory.left_to_expire {
        if !merged.known_ids().any(|id| id == l.id) {
            merged.left_to_expire.push(l.clone());
        }
    }
    // Creations memory recorded (their keys may be orphans to sweep).
    for c in &memory.creations {
        if !merged.creations.iter().any(|d| d.nonce == c.nonce) {
            merged.creations.push(c.clone());
        }
    }
    Some(merged)
}

/// A grace start prepared by [`KeySource::grace_start`]: the state, the
/// replaced keys whose grace it starts (their ids) and where the state
/// lives. It holds the current key, so it is moved, not logged.
pub struct GraceStart {
    path: std::path::PathBuf,
    state: KeyState,
    grace: Duration,
    ids: Vec<String>,
}

/// What [`GraceStart::run`] did: when the grace started, and its save.
pub struct GraceStarted {
    at: OffsetDateTime,
    ids: Vec<String>,
    saved: Result<(), keystate::StateError>,
}

impl GraceStart {
    /// On a blocking thread, once every output holds the current key:
    /// starts the grace now and saves the state as
    /// [`keystate::save_redoable`] (its loss only makes the grace start
    /// again after a restart). The state in memory takes it in
    /// [`KeySource::published`].
    pub fn run(mut self) -> GraceStarted {
        let at = crate::now();
        let ids = self.ids;
        start_grace(&mut self.state, self.grace, at, |id| !ids.iter().any(|i| i == id));
        let saved = keystate::save_redoable(&self.path, &self.state);
        GraceStarted { at, ids, saved }
    }
}

impl KeySource {
    /// Re-reads the key state file before a rotation or a deletion (see
    /// [`merge_reread`]). True if the current key changed under us: the
    /// outputs may not hold it, so the caller renews.
    pub(super) async fn reread_state(&mut self, ctx: &Ctx<'_>) -> bool {
        let Some(memory) = self.state.clone() else {
            return false;
        };
        let path = Self::state_path(ctx);
        let loaded = tokio::task::spawn_blocking(move || keystate::load(&path)).await;
        if let Ok(Ok(Some(disk))) = &loaded
            && *disk == memory
        {
            return false;
        }
        // The file is not what memory holds: the next creation's nonce may
        // not be on disk any more.
        self.next_nonce = None;
        let disk = match loaded {
            Ok(Ok(Some(disk))) => disk,
            Ok(Ok(None)) => {
                warn!("the key state file is gone; writing it again from memory");
                if let Err(e) = self.save(ctx).await {
                    warn!(error = %e, "cannot save the key state");
                }
                return false;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "cannot re-read the key state file; keeping the state in memory");
                return false;
            }
            Err(_) => return false,
        };
        let Some(merged) = merge_reread(&memory, disk.clone()) else {
            warn!("the key state file now belongs to another installation; keeping the state in memory");
            return false;
        };
        let changed = merged.current.as_ref().map(|c| &c.id) != memory.current.as_ref().map(|c| &c.id);
        info!(
            current_changed = changed,
            "the key state file was changed by another process; took its view"
        );
        let save = merged != disk;
        self.state = Some(merged);
        if changed {
            self.dead = false;
        }
        if save && let Err(e) = self.save(ctx).await {
            warn!(error = %e, "cannot save the key state");
        }
        changed
    }

    /// Live keys of this installation for this credential, as far as known:
    /// the state's, the unused ones not yet deleted, and those lost answers
    /// may have made since the last sweep.
    pub(super) fn live_keys(&self, now: OffsetDateTime) -> usize {
        let Some(state) = self.state.as_ref() else {
            return 0;
        };
        let current: usize = state
            .current
            .as_ref()
            .filter(|c| c.expires_at() > now)
            .map_or(0, |_| 1);
        let left = state.left_to_expire.iter().filter(|l| l.tm_expire > now).count();
        current
            .saturating_add(state.pending_deletions.len())
            .saturating_add(left)
            .saturating_add(self.discard.len())
            .saturating_add(self.maybe_orphans)
    }

    /// Deletes the keys made but not used; true when none is left.
    pub(super) async fn delete_discarded(&mut self, ctx: &Ctx<'_>, auth: KeyAuth<'_>) -> bool {
        let client = KeyClient::new(&ctx.api.client);
        while let Some(u) = self.discard.first().cloned() {
            let p = PendingDeletion {
                id: u.id.clone(),
                prefix: u.prefix.clone(),
                delete_after: None,
                bootstrap: false,
            };
            let Some(state) = self.state.as_ref() else {
                return true;
            };
            match delete_checked(&client, auth, state, &p).await {
                Ok(outcome) => {
                    ctx.metrics.key_deleted(&ctx.cfg.name, outcome.metric_label());
                    if outcome == DeleteOutcome::Deleted {
                        info!(key_id = %u.id, prefix = %u.prefix, "deleted a key the server made that is not used");
                    }
                    self.discard.remove(0);
                }
                Err(_) => {
                    ctx.metrics.key_deleted(&ctx.cfg.name, "failure");
                    return false;
                }
            }
        }
        true
    }

    /// The grace [`Self::published`] would start, prepared for the blocking
    /// task that writes the outputs, to run there once every output is on
    /// disk: one hand-off to a blocking thread for both, not two. None when
    /// no replaced key waits for its grace (or a running child holds it).
    pub fn grace_start(&self, ctx: &Ctx<'_>) -> Option<GraceStart> {
        let state = self.state.as_ref()?;
        let ids: Vec<String> = (state.pending_deletions.iter())
            .filter(|p| p.delete_after.is_none() && !ctx.in_use.holds(&p.id))
            .map(|p| p.id.clone())
            .collect();
        if ids.is_empty() {
            return None;
        }
        Some(GraceStart {
            path: Self::state_path(ctx),
            state: state.clone(),
            grace: self.cfg.grace,
            ids,
        })
    }

    /// Every output holds the current key: the grace of replaced keys
    /// starts. `started`: what a [`GraceStart`] did beside the outputs (its
    /// time and save taken into memory here); any grace still unstarted
    /// starts now, with a save of its own.
    pub async fn published(&mut self, ctx: &Ctx<'_>, now: OffsetDateTime, started: Option<GraceStarted>) {
        let Some(state) = self.state.as_mut() else { return };
        // When the grace started here ends (not the next deletion: a key
        // replaced earlier may still wait for its own, earlier one).
        let mut ends = None;
        if let Some(started) = started {
            let ids = started.ids;
            start_grace(state, self.cfg.grace, started.at, |id| {
                !ids.iter().any(|i| i == id)
            });
            if let Err(e) = started.saved {
                warn!(error = %e, "cannot save the key state; the replaced key's deletion may be late");
            }
            ends = Some(crate::schedule::after(started.at, self.cfg.grace));
        }
        if start_grace(state, self.cfg.grace, now, |id| ctx.in_use.holds(id)) {
            if let Err(e) = self.save_redoable(ctx).await {
                warn!(error = %e, "cannot save the key state; the replaced key's deletion may be late");
            }
            ends = Some(crate::schedule::after(now, self.cfg.grace));
        }
        if let Some(at) = ends {
            info!(delete_at = %crate::token::rfc3339(at), "the replaced key will be deleted after the grace");
        }
    }

    /// When housekeeping is next due: a sweep, a deletion, a lookup. None
    /// with a dead held key (self-rotation): every call would be refused;
    /// the renewal path takes over.
    pub fn housekeeping_at(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let state = self.state.as_ref()?;
        state.current.as_ref()?;
        if self.bootstrap_mode() && self.dead {
            return None;
        }
        let candidates = [
            self.sweep_due.then_some(now),
            next_deletion(state),
            if self.bootstrap_mode() {
                None
            } else {
                Some(self.next_lookup.unwrap_or(now))
            },
        ];
        let at = candidates.into_iter().flatten().min()?;
        Some(match self.housekeeping_retry_at {
            Some(retry) => at.max(retry),
            None => at,
        })
    }

    /// Sweep, delete what is due, look the held key up (agent mode).
    pub async fn housekeep(&mut self, ctx: &Ctx<'_>, _held: Option<&Held>, now: OffsetDateTime) -> Housekept {
        let outcome = self.housekeep_once(ctx, now).await;
        let overdue = overdue_deletions(&self.status(), crate::now()).len();
        ctx.metrics.key_deletions_overdue(&ctx.cfg.name, overdue);
        match &outcome {
            Ok(_) => {
                self.housekeeping_failures = 0;
                self.housekeeping_retry_at = None;
                // A pass either did what was due or moves it forward: never
                // due again at once (a loop that never sleeps).
                let after = crate::now();
                if self.housekeeping_at(after).is_some_and(|at| at <= after) {
                    let floor = ctx.cfg.renewal.retry_min.max(HOUSEKEEPING_FLOOR);
                    warn!("key housekeeping is still due after a pass; trying again later");
                    self.housekeeping_retry_at = Some(crate::schedule::after(after, floor));
                }
            }
            Err(kind) => {
                self.housekeeping_failures = self.housekeeping_failures.saturating_add(1);
                let delay = crate::schedule::backoff(
                    self.housekeeping_failures,
                    *kind,
                    &ctx.cfg.renewal,
                    fastrand::f64(),
                );
                self.housekeeping_retry_at = Some(crate::schedule::after(crate::now(), delay));
            }
        }
        // The held key was refused: housekeeping cannot go on with it; the
        // renewal path (bootstrap-key-file, with its backoff) takes over.
        if self.bootstrap_mode() && self.dead {
            return Housekept::RenewNow;
        }
        outcome.unwrap_or(Housekept::Failed)
    }

    /// One pass: the state re-read, then the held key looked up (agent
    /// mode), orphans swept, due deletions made, expired keys forgotten.
    async fn housekeep_once(&mut self, ctx: &Ctx<'_>, now: OffsetDateTime) -> Result<Housekept, FailureKind> {
        // A state written by another process is neither overwritten nor
        // forgotten; a current key the outputs may not hold is renewed first.
        if self.reread_state(ctx).await {
            return Ok(Housekept::RenewNow);
        }
        let secret = if self.bootstrap_mode() {
            match self.state.as_ref().and_then(|s| s.current.as_ref()) {
                Some(c) if !self.dead => c.key.clone(),
                Some(_) => return Ok(Housekept::RenewNow),
                None => return Ok(Housekept::Done),
            }
        } else {
            match self.agent_token(ctx).await {
                Ok(t) => t,
                Err(f) => {
                    warn!(error = %f.message, "cannot log in for key housekeeping");
                    return Err(f.kind);
                }
            }
        };
        let auth = if self.bootstrap_mode() {
            KeyAuth::Key(&secret)
        } else {
            KeyAuth::Bearer(&secret)
        };
        let client = KeyClient::new(&ctx.api.client);
        if let Some(early) = self.look_up_held(&client, auth, now).await? {
            return Ok(early);
        }
        if let Some(early) = self.sweep_orphans(ctx, &client, auth, now).await? {
            return Ok(early);
        }
        let result = self.delete_due(ctx, &client, auth, now).await;
        self.forget_expired(ctx, now).await;
        result
    }

    /// A key call failed: a 401 means the held key is dead (bootstrap
    /// mode) or the agent's login token is stale (agent mode).
    fn key_call_failed(&mut self, e: &KeyError) -> FailureKind {
        if matches!(e, KeyError::Unauthorized { .. }) {
            if self.bootstrap_mode() {
                self.dead = true;
                self.held_refused = true;
            } else {
                self.agent = None;
            }
        }
        e.kind()
    }

    /// Agent mode, when due: looks the held key up (deleted out of band?).
    /// `Some(RenewNow)` when it is gone.
    async fn look_up_held(
        &mut self,
        client: &KeyClient<'_>,
        auth: KeyAuth<'_>,
        now: OffsetDateTime,
    ) -> Result<Option<Housekept>, FailureKind> {
        let due = !self.bootstrap_mode() && self.next_lookup.is_none_or(|t| t <= now);
        let id = self
            .state
            .as_ref()
            .and_then(|s| s.current.as_ref())
            .map(|c| c.id.clone());
        let Some(id) = id.filter(|_| due) else {
            return Ok(None);
        };
        match client.get(auth, &id).await {
            Ok(_) => {
                self.next_lookup = Some(crate::schedule::after(now, self.cfg.lookup_every));
                Ok(None)
            }
            Err(KeyError::NotFound { .. } | KeyError::Gone { .. }) => {
                warn!(key_id = %id, "the held key was deleted out of band; making a new one now");
                self.dead = true;
                self.held_refused = true;
                self.next_lookup = Some(crate::schedule::after(now, self.cfg.lookup_every));
                Ok(Some(Housekept::RenewNow))
            }
            Err(e) => {
                warn!(error = %e, "cannot look the held key up");
                Err(self.key_call_failed(&e))
            }
        }
    }

    /// When a sweep is due: deletes this installation's orphans and saves
    /// the nonces it settled. `Some(Done)` when there is no state.
    async fn sweep_orphans(
        &mut self,
        ctx: &Ctx<'_>,
        client: &KeyClient<'_>,
        auth: KeyAuth<'_>,
        now: OffsetDateTime,
    ) -> Result<Option<Housekept>, FailureKind> {
        if !self.sweep_due {
            return Ok(None);
        }
        let Some(state) = self.state.as_mut() else {
            return Ok(Some(Housekept::Done));
        };
        let before = state.creations.clone();
        let swept = sweep(client, auth, state, now).await;
        if state.creations != before
            && let Err(e) = self.save(ctx).await
        {
            warn!(error = %e, "cannot save the key state after a sweep");
        }
        match swept {
            Ok(n) => {
                for _ in 0..n {
                    ctx.metrics.key_deleted(&ctx.cfg.name, "success");
                }
                self.sweep_due = false;
                self.maybe_orphans = 0;
                Ok(None)
            }
            Err(e) => {
                warn!(error = %e, "cannot sweep for orphaned keys; will retry");
                Err(self.key_call_failed(&e))
            }
        }
    }

    /// Deletes the pending deletions whose grace is over, saving the state
    /// after each; stops at the first failure (retried with backoff).
    async fn delete_due(
        &mut self,
        ctx: &Ctx<'_>,
        client: &KeyClient<'_>,
        auth: KeyAuth<'_>,
        now: OffsetDateTime,
    ) -> Result<Housekept, FailureKind> {
        let due = due_deletions(self.state.as_ref().expect("loaded"), now, |id| {
            ctx.in_use.holds(id)
        });
        for p in due {
            let checked = match self.state.as_ref() {
                Some(state) => delete_checked(client, auth, state, &p).await,
                None => break,
            };
            match checked {
                Ok(outcome) => {
                    ctx.metrics.key_deleted(&ctx.cfg.name, outcome.metric_label());
                    self.deletion_failures.retain(|f| f.id != p.id);
                    let state = self.state.as_mut().expect("loaded");
                    state.pending_deletions.retain(|q| q.id != p.id);
                    if let Err(e) = self.save_redoable(ctx).await {
                        warn!(error = %e, "cannot save the key state after a deletion");
                    }
                }
                Err(e) => {
                    ctx.metrics.key_deleted(&ctx.cfg.name, "failure");
                    self.deletion_failed(&p.id, &e);
                    return Err(self.key_call_failed(&e));
                }
            }
        }
        Ok(Housekept::Done)
    }

    /// Keys left to expire are forgotten once expired.
    async fn forget_expired(&mut self, ctx: &Ctx<'_>, now: OffsetDateTime) {
        if let Some(state) = self.state.as_mut() {
            let before = state.left_to_expire.len();
            state.left_to_expire.retain(|l| l.tm_expire > now);
            if state.left_to_expire.len() != before
                && let Err(e) = self.save_redoable(ctx).await
            {
                warn!(error = %e, "cannot save the key state");
            }
        }
    }

    /// Records a failed deletion of `id` for `status` and the metric.
    fn deletion_failed(&mut self, id: &str, e: &KeyError) {
        let error = e.to_string();
        match self.deletion_failures.iter_mut().find(|f| f.id == id) {
            Some(f) => {
                f.failures = f.failures.saturating_add(1);
                f.error = error;
            }
            None => self.deletion_failures.push(DeletionFailure {
                id: id.to_string(),
                failures: 1,
                error,
            }),
        }
    }
}
