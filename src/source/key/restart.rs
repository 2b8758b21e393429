//! At start, the outputs may hold another key than the key state (a state
//! restored from a backup, a kill between saving a key and writing it):
//! one call tells which to hold ([`Restart`]).

use time::OffsetDateTime;
use tracing::{info, warn};

use crate::api::keys::{KeyAuth, KeyClient, KeyError, KeyObject, prefix_of};
use crate::secret::Secret;
use crate::source::held::{Ctx, Failure, Held};
use crate::state::keys::{CurrentKey, Origin};

use super::KeySource;

impl KeySource {
    /// At start: the current key of the state, if it is still live.
    pub async fn adopt(&mut self, ctx: &Ctx<'_>, now: OffsetDateTime) -> Result<Option<Held>, Failure> {
        self.ensure_state(ctx).await?;
        // The outputs hold another key than the state (a state restored
        // from a backup, a kill between saving and writing): one call says
        // which of them to hold.
        let state_key = self
            .state
            .as_ref()
            .and_then(|s| s.current.clone())
            .filter(|c| c.expires_at() > now);
        if let Some(current) = state_key {
            let outputs = ctx.cfg.outputs.clone();
            let on_disk = tokio::task::spawn_blocking(move || keys_in_outputs(&outputs))
                .await
                .unwrap_or_default();
            if let Some(other) = on_disk.into_iter().find(|k| *k != current.key) {
                match self.check_against_outputs(ctx, &current, other, now).await {
                    Restart::State => {}
                    Restart::Output(adopted) => return self.adopt_output_key(ctx, current, adopted).await,
                    Restart::Neither => {
                        self.dead = self.bootstrap_mode();
                        return Ok(None);
                    }
                }
            }
        }
        let state = self.state.as_ref().expect("loaded above");
        match &state.current {
            Some(current) if current.expires_at() > now => {
                let held = Self::held_of(current, &ctx.cfg.renewal, now);
                info!(
                    key_id = %current.id,
                    prefix = %prefix_of(current.key.expose()),
                    expires_at = %crate::token::rfc3339(held.validity.expires_at),
                    next_rotation = %crate::token::rfc3339(held.due_at),
                    "reusing the key in the key state"
                );
                Ok(Some(held))
            }
            Some(current) => {
                warn!(key_id = %current.id, "the key in the key state has expired; a new one is needed");
                self.dead = true;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// At start, the outputs hold `out_key`, not the state's key: one call
    /// (a list, authenticated with the state's key, or the agent's token)
    /// tells whether the state's key is alive and what the output's key is.
    ///
    /// - The output's key is live, this installation's, and newer than the
    ///   state's key, or the state's key is dead: the output's key is kept
    ///   (a restored older state must not replace it).
    /// - Else the state's key is alive: it is published (a kill between
    ///   saving a new key and writing it).
    /// - The state's key is refused (or gone) and the output's key is not a
    ///   live key of this installation: nothing is published, nothing is
    ///   made current (so the output's key is never deleted); the renewal
    ///   path (bootstrap-key-file, or the agent) makes the next key, which
    ///   then replaces it in the outputs.
    ///
    /// A call that fails otherwise (network, 5xx) decides nothing: the
    /// state is trusted, as before.
    pub(super) async fn check_against_outputs(
        &mut self,
        ctx: &Ctx<'_>,
        current: &CurrentKey,
        out_key: Secret,
        now: OffsetDateTime,
    ) -> Restart {
        let client = KeyClient::new(&ctx.api.client);
        let name = self.state.as_ref().map(|s| s.key_name()).unwrap_or_default();
        // A key named by an earlier installation of this credential (the
        // state was restored, so this is a new installation): kept in use,
        // but inherited, so it is left to expire once replaced, never deleted.
        let family = format!("voipbin-tokend/{}/", ctx.cfg.name);
        let inherited_name = |o: &KeyObject| o.name != name && o.name.starts_with(&family);
        let bootstrap = self.bootstrap_mode();
        let out_prefix = prefix_of(out_key.expose()).to_string();
        info!(
            key_id = %current.id,
            prefix = %prefix_of(current.key.expose()),
            output_prefix = %out_prefix,
            "the outputs hold another key than the key state; checking which one works"
        );
        let listed = if bootstrap {
            client.list(KeyAuth::Key(&current.key)).await
        } else {
            match self.agent_token(ctx).await {
                Ok(token) => client.list(KeyAuth::Bearer(&token)).await,
                Err(f) => {
                    warn!(error = %f.message, "cannot log in to check the key in the key state; using it");
                    return Restart::State;
                }
            }
        };
        let live = |k: &KeyObject| k.tm_delete.is_none() && k.tm_expire > now;
        let found = |listed: &[KeyObject]| {
            listed
                .iter()
                .find(|k| k.token_prefix == out_prefix && live(k))
                .cloned()
        };
        let as_current = |o: KeyObject, origin: Origin| CurrentKey {
            inherited: inherited_name(&o),
            id: o.id,
            key: out_key.clone(),
            tm_create: o.tm_create,
            tm_expire: o.tm_expire,
            server_skew_seconds: 0,
            obtained_at: now,
            origin,
        };
        match listed {
            Ok(listed) => {
                // Listed with the state's key: it works. With the agent's
                // token: it works if listed live.
                let state_live = bootstrap || listed.iter().any(|k| k.id == current.id && live(k));
                match found(&listed) {
                    Some(o)
                        if (o.name == name || inherited_name(&o))
                            && (!state_live || o.tm_create > current.tm_create) =>
                    {
                        Restart::Output(as_current(o, Origin::Created))
                    }
                    _ if state_live => Restart::State,
                    // Only an agent gets here: the state's key is gone, and
                    // the outputs' key is not this installation's (never
                    // made current, so never deleted).
                    _ => Restart::Neither,
                }
            }
            Err(KeyError::Unauthorized { .. }) if bootstrap => {
                warn!(key_id = %current.id, "the key in the key state was refused (HTTP 401); it is not published");
                match client.list(KeyAuth::Key(&out_key)).await {
                    Ok(listed) => match found(&listed) {
                        Some(o) if o.name == name || inherited_name(&o) => {
                            Restart::Output(as_current(o, Origin::Created))
                        }
                        // Not this installation's: not made current (it
                        // would be deleted once replaced); left in place
                        // until the next key is made.
                        _ => Restart::Neither,
                    },
                    Err(e) => {
                        warn!(output_prefix = %out_prefix, error = %e, "the key in the outputs does not work either; the outputs are left as they are");
                        Restart::Neither
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot check the key in the key state; using it");
                Restart::State
            }
        }
    }

    /// Makes the outputs' key current (saved); the state's key becomes a
    /// deletion whose grace starts once the outputs hold the kept key.
    pub(super) async fn adopt_output_key(
        &mut self,
        ctx: &Ctx<'_>,
        replaced: CurrentKey,
        adopted: CurrentKey,
    ) -> Result<Option<Held>, Failure> {
        warn!(
            key_id = %adopted.id,
            prefix = %prefix_of(adopted.key.expose()),
            replaced_key_id = %replaced.id,
            "keeping the working key the outputs hold, not the key state's (a state restored from a backup?)"
        );
        let delete_replaced = self.cfg.delete_replaced;
        let state = self.state.as_mut().expect("loaded");
        state.pending_deletions.retain(|p| p.id != adopted.id);
        state.left_to_expire.retain(|l| l.id != adopted.id);
        state.retire(replaced, delete_replaced);
        state.current = Some(adopted.clone());
        self.save(ctx)
            .await
            .map_err(|e| Failure::transient(format!("key state: {e}")))?;
        self.dead = false;
        self.held_refused = false;
        Ok(Some(Self::held_of(&adopted, &ctx.cfg.renewal, crate::now())))
    }
}

/// Which key to hold at start when the outputs hold another than the state.
pub(super) enum Restart {
    /// The state's key (as before).
    State,
    /// The outputs' key, looked up (made current).
    Output(CurrentKey),
    /// Neither is known to work: publish nothing, make the next key.
    Neither,
}

/// The keys the outputs hold (distinct, in output order): the first
/// key-shaped word of each readable output.
pub(super) fn keys_in_outputs(outputs: &[crate::config::OutputConfig]) -> Vec<Secret> {
    let mut found: Vec<Secret> = Vec::new();
    for out in outputs {
        let Ok(bytes) = crate::fsread::read_bounded(&out.path, crate::fsread::MAX_OUTPUT, "output") else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Some(key) = find_key(text) {
            let key = Secret::new(key.to_string());
            if !found.contains(&key) {
                found.push(key);
            }
        }
    }
    found
}

/// The first `vb_` and 32 letters or digits standing alone in `text`.
pub(super) fn find_key(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text.get(from..)?.find("vb_") {
        let start = from + at;
        let end = start + 35;
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after_ok = bytes.get(end).is_none_or(|b| !b.is_ascii_alphanumeric());
        if let Some(candidate) = text.get(start..end)
            && before_ok
            && after_ok
            && crate::api::keys::is_key_shaped(candidate)
        {
            return Some(candidate);
        }
        from = start + 3;
    }
    None
}
