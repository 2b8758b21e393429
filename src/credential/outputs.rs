//! A credential's outputs: the held secret written to every stale file,
//! the hooks of each file written, and the log line that tells what was
//! written. The state machine ([`super::Credential`]) decides when; this
//! module knows nothing of it.

use std::sync::Arc;

use tracing::info;

use crate::config::CredentialConfig;
use crate::hooks::{Hook, HookSpec};
use crate::metrics::Metrics;
use crate::output::render::{TokenFacts, render};
use crate::output::write::{Compare, FileSpec, WriteOutcome, write_atomic_many};
use crate::source::Held;
use crate::source::key::{GraceStart, GraceStarted};
use crate::token;

/// What [`write_stale`] did: the files written (those that already held
/// the secret are not among them), the errors of those that failed, and
/// the grace start run once all were on disk.
pub(super) struct Written {
    pub files: Vec<String>,
    pub errors: Vec<String>,
    pub grace: Option<GraceStarted>,
}

/// Writes `held` to every output of `cfg` marked in `stale` (all in one
/// blocking task, one directory fsync per directory), and fires the hook
/// (`hooks`, in output order) of each file that changed once every file is
/// on disk. A failed output stays stale (to be retried with backoff); the
/// others are written anyway. `renewed`: the first write of a secret just
/// obtained (a secret the server issued then is written without reading
/// what the files hold: none can hold it yet). `grace` runs in the same
/// blocking task once every output is on disk (one hand-off, not two).
pub(super) async fn write_stale(
    cfg: &CredentialConfig,
    held: &Held,
    renewed: bool,
    grace: Option<GraceStart>,
    stale: &mut [bool],
    hooks: &[Option<Hook>],
    metrics: &Metrics,
) -> Written {
    let facts = TokenFacts {
        credential: &cfg.name,
        username: cfg.username(),
        token: &held.token,
        expires_at: held.validity.expires_at,
        obtained_at: held.obtained_at,
        key_id: held.key_id.as_deref(),
    };
    // (index, path, mode, owner, group, content) of each stale output.
    let jobs: Vec<_> = (cfg.outputs.iter().enumerate())
        .filter(|(i, _)| stale[*i])
        .map(|(i, out)| {
            (
                i,
                out.path.clone(),
                out.mode,
                out.owner.as_ref().map(|o| o.id),
                out.group.as_ref().map(|g| g.id),
                render(&out.format, &facts),
            )
        })
        .collect();
    let indices: Vec<usize> = jobs.iter().map(|j| j.0).collect();
    let compare = if renewed && held.minted {
        Compare::NewSecret
    } else {
        Compare::WithFile
    };
    let (outcomes, grace) = tokio::task::spawn_blocking(move || {
        let files: Vec<_> = jobs
            .iter()
            .map(|(_, path, mode, uid, gid, content)| {
                let spec = FileSpec {
                    path,
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                };
                (spec, content.as_slice())
            })
            .collect();
        let outcomes: Vec<_> = write_atomic_many(&files, compare)
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect();
        // Every output is on disk (directories fsynced): the grace starts.
        let grace = grace
            .filter(|_| outcomes.iter().all(Result::is_ok))
            .map(GraceStart::run);
        (outcomes, grace)
    })
    .await
    .unwrap_or_else(|e| {
        let failed = format!("the write task failed: {e}");
        (indices.iter().map(|_| Err(failed.clone())).collect(), None)
    });
    let mut written = Vec::new();
    let mut errors = Vec::new();
    for (i, outcome) in indices.into_iter().zip(outcomes) {
        let out = &cfg.outputs[i];
        match outcome {
            Ok(outcome) => {
                stale[i] = false;
                if outcome == WriteOutcome::Written {
                    written.push(out.path.display().to_string());
                    if let Some(hook) = &hooks[i] {
                        hook.fire(held.validity.expires_at, &held.token);
                    }
                }
            }
            Err(e) => {
                metrics.write_failure(&cfg.name);
                errors.push(e);
            }
        }
    }
    Written {
        files: written,
        errors,
        grace,
    }
}

/// The log line of a write: the renewal (or rotation) it follows, if any,
/// and the files written.
pub(super) fn log_written(held: &Held, renewed: bool, written: &[String]) {
    if renewed && written.is_empty() {
        // Every write failed (reported by the caller) or no file needed
        // the secret: no empty `files=`.
        info!(
            expires_at = %token::rfc3339(held.validity.expires_at),
            next_renewal = %token::rfc3339(held.due_at),
            "{}; no file written",
            if held.key_id.is_some() { "access key rotated" } else { "token renewed" }
        );
    } else if renewed && held.key_id.is_some() {
        info!(
            expires_at = %token::rfc3339(held.validity.expires_at),
            next_rotation = %token::rfc3339(held.due_at),
            files = %written.join(", "),
            "access key rotated"
        );
    } else if renewed {
        info!(
            expires_at = %token::rfc3339(held.validity.expires_at),
            next_renewal = %token::rfc3339(held.due_at),
            files = %written.join(", "),
            "token renewed"
        );
    } else if !written.is_empty() {
        info!(files = %written.join(", "), "outputs updated");
    }
}

/// Hook tasks for `cfg`'s outputs, reusing a running one whose output
/// path and hooks are unchanged.
pub(super) fn start_hooks(
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
