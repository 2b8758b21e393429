//! Bootstrap mode: the key written by hand into `bootstrap-key-file` is
//! read ([`read_key_file`]), looked up by its prefix ([`adopt_bootstrap`])
//! and made current, to be replaced by a key of this installation at once.

use std::path::Path;

use time::OffsetDateTime;
use tracing::info;

use crate::api::keys::{KeyAuth, KeyClient, KeyError, prefix_of};
use crate::secret::Secret;
use crate::source::held::{Ctx, Failure};
use crate::state::keys::{CurrentKey, Origin};

use super::KeySource;

/// A bootstrap key file is a key and a newline; anything larger is refused.
pub const MAX_BOOTSTRAP_BYTES: u64 = 4096;

/// Why a bootstrap key could not be adopted.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Api(#[from] KeyError),
    #[error("no key with the bootstrap key's prefix {0} is listed by the server")]
    NotListed(String),
    #[error("the bootstrap key (prefix {0}) is expired")]
    Expired(String),
    #[error(
        "no key with the bootstrap key's prefix {0} was found in the part of the key list the server gave (the list was cut short: it repeated a page token or did not end)"
    )]
    ListCutShort(String),
}

/// Looks up the bootstrap key by its prefix (the server keeps only a hash,
/// so the list is the only way to learn its id and expiry), authenticating
/// with the key itself: a 401 means it is dead.
pub async fn adopt_bootstrap(
    client: &KeyClient<'_>,
    key: Secret,
    now: OffsetDateTime,
) -> Result<CurrentKey, BootstrapError> {
    let listed = client.listing(KeyAuth::Key(&key)).await?;
    let prefix = prefix_of(key.expose()).to_string();
    let complete = listed.complete;
    // Newest first; the prefix has 8 random characters, so a clash is
    // unlikely, and then the newest live one is taken.
    let object = listed
        .keys
        .into_iter()
        .find(|k| k.token_prefix == prefix && k.tm_delete.is_none())
        .ok_or_else(|| {
            if complete {
                BootstrapError::NotListed(prefix.clone())
            } else {
                BootstrapError::ListCutShort(prefix.clone())
            }
        })?;
    // The list succeeded with this key, so the server's clock says it is
    // live; its tm_expire is in the server's clock, and a list carries no
    // skew estimate, so it is used as is.
    if object.tm_expire <= now {
        return Err(BootstrapError::Expired(prefix));
    }
    Ok(CurrentKey {
        id: object.id,
        key,
        tm_create: object.tm_create,
        tm_expire: object.tm_expire,
        server_skew_seconds: 0,
        obtained_at: now,
        origin: Origin::Bootstrap,
        inherited: false,
    })
}

impl KeySource {
    /// Reads `bootstrap-key-file` (without blocking on a FIFO, at most
    /// [`MAX_BOOTSTRAP_BYTES`]) and looks the key up; a key refused before
    /// is not tried again. The adopted key becomes current (saved).
    pub(super) async fn adopt_bootstrap_file(&mut self, ctx: &Ctx<'_>) -> Result<Secret, Failure> {
        let path = self.cfg.bootstrap_key_file.clone().expect("bootstrap mode");
        let shown = path.display().to_string();
        let key = tokio::task::spawn_blocking(move || read_key_file(&path))
            .await
            .map_err(|e| Failure::transient(format!("bootstrap-key-file {shown}: {e}")))?
            .map_err(Failure::transient)?;
        if self.rejected.contains(&key) {
            return Err(Failure::rejected(format!(
                "the key in bootstrap-key-file {shown} (prefix {}) was refused by the server; write a fresh key made on the admin page into it",
                prefix_of(key.expose())
            )));
        }
        let client = KeyClient::new(&ctx.api.client);
        match adopt_bootstrap(&client, key.clone(), crate::now()).await {
            Ok(current) => {
                info!(key_id = %current.id, prefix = %prefix_of(current.key.expose()), "adopted the key in bootstrap-key-file");
                let state = self.state.as_mut().expect("loaded");
                // A key written back into the file while it waited for
                // deletion is current again, not deleted.
                state.pending_deletions.retain(|p| p.id != current.id);
                if let Some(old) = state.current.replace(current) {
                    // Deleting it confirms it is gone (404/409); its grace
                    // starts once the outputs hold the successor, as a
                    // refusal may have been a lie.
                    state.retire(old, self.cfg.delete_replaced);
                }
                self.save(ctx)
                    .await
                    .map_err(|e| Failure::transient(format!("key state: {e}")))?;
                self.dead = false;
                Ok(key)
            }
            Err(BootstrapError::Api(KeyError::Unauthorized { request_id })) => {
                self.rejected.push(key.clone());
                Err(Failure::rejected(format!(
                    "the key in bootstrap-key-file {shown} (prefix {}) was refused (HTTP 401: deleted or expired); write a fresh key made on the admin page into it{}",
                    prefix_of(key.expose()),
                    crate::api::rid(&request_id)
                )))
            }
            Err(BootstrapError::Api(e)) => Err(Failure {
                kind: e.kind(),
                message: format!("looking up the bootstrap key: {e}"),
            }),
            Err(e) => Err(Failure::transient(format!("bootstrap-key-file {shown}: {e}"))),
        }
    }
}

/// Reads a key file: no blocking on a FIFO, a regular file of at most
/// [`MAX_BOOTSTRAP_BYTES`], one key with surrounding whitespace. Errors
/// name the file as `bootstrap-key-file`.
fn read_key_file(path: &Path) -> Result<Secret, String> {
    let bytes = crate::fsread::read_bounded(path, MAX_BOOTSTRAP_BYTES, "bootstrap-key-file")
        .map_err(|e| e.to_string())?;
    let named = |m: &str| format!("bootstrap-key-file {} {m}", path.display());
    let text = std::str::from_utf8(&bytes).map_err(|_| named("is not text"))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(named("is empty"));
    }
    if !crate::api::keys::is_key_shaped(key) {
        return Err(named("does not hold a key (vb_ and 32 letters or digits)"));
    }
    Ok(Secret::new(key.to_string()))
}
