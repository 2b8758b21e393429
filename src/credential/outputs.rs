//! A credential's outputs: writing the held secret to every stale file,
//! and the hook tasks that follow a write.

use std::sync::Arc;

use tracing::info;

use crate::config::CredentialConfig;
use crate::hooks::{Hook, HookSpec};
use crate::metrics::Metrics;
use crate::output::render::{TokenFacts, render};
use crate::output::write::{FileSpec, WriteOutcome, write_atomic};
use crate::schedule::FailureKind;
use crate::source::Ctx;
use crate::token;

use super::{Credential, Step};

impl Credential {
    /// Writes the held token to every stale output. A failed output stays
    /// stale and is retried with backoff; the others are written anyway.
    pub(super) async fn write_outputs(&mut self, renewed: bool) {
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
                    username: self.cfg.username(),
                    token: &held.token,
                    expires_at: held.validity.expires_at,
                    obtained_at: held.obtained_at,
                    key_id: held.key_id.as_deref(),
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
        if renewed && written.is_empty() {
            // Every write failed (reported below) or no file needed the
            // secret: no empty `files=`.
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
        if errors.is_empty() {
            if self.failed_step == Some(Step::WriteOutputs) {
                self.clear_failure();
            }
            // Every output holds the held secret: a replaced key's grace starts.
            self.source.published(&ctx!(self), now).await;
            self.publish(now);
        } else {
            self.fail(Step::WriteOutputs, FailureKind::Transient, errors.join("; "));
        }
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
