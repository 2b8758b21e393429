//! The local API proxy (`[[proxy]]`): a client calls the daemon on a unix
//! socket or a loopback port, and the daemon forwards each request to the
//! API with the current credential added, so the client holds no secret.
//!
//! [`Proxies`] starts and stops listeners as the config says (an
//! unchanged one keeps its socket and its connections across a reload);
//! [`serve`] accepts and bounds connections; [`forward`] answers one
//! request; [`rewrite`] holds the pure rules (what is stripped and added,
//! where a request goes, what is refused).

pub mod forward;
pub mod rewrite;
pub mod serve;
#[cfg(test)]
mod tests;
pub mod upstream;
pub mod workers;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span};

use crate::board::{ProxyStatus, StatusBoard};
use crate::config::{Config, Listen, ProxyConfig};
use crate::export::Exported;
use crate::metrics::Metrics;

use forward::Route;
use serve::Listener;

/// What a proxy needs of the daemon, per credential.
pub struct Wiring {
    /// The credential's current secret.
    pub secret: watch::Receiver<Option<Exported>>,
    /// Asks the credential to renew now.
    pub renew: Arc<dyn Fn() + Send + Sync>,
}

/// The running proxies, by listen address.
pub struct Proxies {
    running: HashMap<Listen, Running>,
    /// The proxy's threads, started with the first proxy.
    workers: Option<workers::Workers>,
    /// Per worker: its own pool of connections to the API.
    clients: Vec<Arc<upstream::Upstream>>,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    cancel: CancellationToken,
}

struct Running {
    config: ProxyConfig,
    base_url: url::Url,
    /// An access key (a cookie) or a login token (a header) is added.
    is_key: bool,
    stop: CancellationToken,
    /// One accept loop per worker.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    served: Arc<AtomicU64>,
}

impl Proxies {
    /// No proxy yet; each stops with `cancel`.
    pub fn new(metrics: Arc<Metrics>, board: Arc<StatusBoard>, cancel: CancellationToken) -> Proxies {
        Proxies {
            running: HashMap::new(),
            workers: None,
            clients: Vec::new(),
            metrics,
            board,
            cancel,
        }
    }

    /// Makes the running proxies those of `config`: an unchanged one is
    /// left alone (its socket, its connections), a changed or removed one
    /// stops accepting (its open connections finish), a new one binds.
    /// `api_changed` rebuilds the HTTP client (TLS settings, timeouts).
    /// Errors name the proxy (`proxy[N].listen`) and what failed; the
    /// other proxies are started anyway.
    pub async fn reconcile(
        &mut self,
        config: &Config,
        api_changed: bool,
        wiring: impl Fn(&str) -> Option<Wiring>,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        if config.proxies.is_empty() && self.running.is_empty() {
            return errors;
        }
        if self.workers.is_none() {
            match workers::Workers::start() {
                Ok(w) => self.workers = Some(w),
                Err(e) => {
                    errors.push(format!("cannot start the proxy's threads: {e}"));
                    return errors;
                }
            }
        }
        let workers = self.workers.as_ref().map_or(0, |w| w.handles().len());
        if api_changed || self.clients.len() != workers {
            let built: Result<Vec<_>, String> = (0..workers)
                .map(|_| upstream::Upstream::new(&config.api).map(Arc::new))
                .collect();
            match built {
                Ok(c) => self.clients = c,
                Err(e) => {
                    errors.push(e);
                    return errors;
                }
            }
        }
        let wanted: HashMap<&Listen, (&ProxyConfig, url::Url, bool)> = config
            .proxies
            .iter()
            .map(|p| {
                (
                    &p.listen,
                    (
                        p,
                        base_url_of(config, &p.credential),
                        is_key(config, &p.credential),
                    ),
                )
            })
            .collect();
        let stale: Vec<Listen> = self
            .running
            .iter()
            .filter(|(listen, r)| {
                wanted.get(listen).is_none_or(|(p, base, key)| {
                    **p != r.config || *base != r.base_url || *key != r.is_key || api_changed
                })
            })
            .map(|(listen, _)| listen.clone())
            .collect();
        for listen in stale {
            if let Some(r) = self.running.remove(&listen) {
                r.stop.cancel();
                // The listener is closed when every accept loop has ended.
                for task in r.tasks {
                    let _ = task.await;
                }
                info!(listen = %listen, "proxy stopped accepting; its open connections finish");
            }
        }
        for (i, p) in config.proxies.iter().enumerate() {
            if self.running.contains_key(&p.listen) {
                continue;
            }
            let Some(w) = wiring(&p.credential) else {
                errors.push(format!("proxy[{i}].credential: no credential {:?}", p.credential));
                continue;
            };
            let listener = match bind(p) {
                Ok(l) => l,
                Err(e) => {
                    errors.push(format!("proxy[{i}].listen: cannot listen on {}: {e}", p.listen));
                    continue;
                }
            };
            let base_url = base_url_of(config, &p.credential);
            let is_key = is_key(config, &p.credential);
            let served = Arc::new(AtomicU64::new(0));
            let origin = match forward::origin_of(&base_url) {
                Ok(o) => o,
                Err(e) => {
                    errors.push(format!("proxy[{i}]: {e}"));
                    continue;
                }
            };
            let stop = self.cancel.child_token();
            let slots = Arc::new(serve::Slots::new(serve::MAX_CONNECTIONS));
            let asked = Arc::new(Mutex::new(None));
            let mut tasks = Vec::new();
            let handles = self
                .workers
                .as_ref()
                .map(|w| w.handles().to_vec())
                .unwrap_or_default();
            for (handle, client) in handles.iter().zip(&self.clients) {
                let copy = match listener.try_clone() {
                    Ok(l) => l,
                    Err(e) => {
                        errors.push(format!("proxy[{i}].listen: {}: {e}", p.listen));
                        break;
                    }
                };
                let route = Arc::new(Route {
                    origin: origin.clone(),
                    credential: p.credential.clone(),
                    is_key,
                    base_url: base_url.clone(),
                    secret: w.secret.clone(),
                    renew: w.renew.clone(),
                    client: client.clone(),
                    client_idle: serve::IDLE,
                    renewal_asked_for: asked.clone(),
                    served: served.clone(),
                    metrics: self.metrics.clone(),
                });
                tasks.push(
                    handle.spawn(
                        serve::serve(copy, route, slots.clone(), stop.clone())
                            .instrument(info_span!("proxy", listen = %p.listen)),
                    ),
                );
            }
            drop(listener);
            info!(listen = %p.listen, credential = %p.credential, "proxy listening");
            self.running.insert(
                p.listen.clone(),
                Running {
                    config: p.clone(),
                    base_url,
                    is_key,
                    stop,
                    tasks,
                    served,
                },
            );
        }
        for e in &errors {
            error!(config = %config.path.display(), error = %e, "proxy not started");
        }
        self.publish();
        errors
    }

    /// What `status` shows of each proxy.
    fn publish(&self) {
        let mut all: Vec<ProxyStatus> = self
            .running
            .values()
            .map(|r| {
                ProxyStatus::new(
                    r.config.listen.to_string(),
                    r.config.credential.clone(),
                    r.served.clone(),
                )
            })
            .collect();
        all.sort_by(|a, b| a.listen.cmp(&b.listen));
        self.board.set_proxies(all);
    }
}

/// The credential's base URL: its own `base-url`, else `[api] base-url`.
fn base_url_of(config: &Config, credential: &str) -> url::Url {
    config
        .credentials
        .iter()
        .find(|c| c.name == credential)
        .and_then(|c| c.base_url.clone())
        .unwrap_or_else(|| config.api.base_url.clone())
}

/// Does `credential` hold an access key (else a login token)?
fn is_key(config: &Config, credential: &str) -> bool {
    config
        .credentials
        .iter()
        .any(|c| c.name == credential && c.key().is_some())
}

fn bind(p: &ProxyConfig) -> std::io::Result<Listener> {
    match &p.listen {
        Listen::Tcp(addr) => Listener::bind_tcp(*addr),
        Listen::Unix(path) => serve::bind_unix(
            path,
            p.mode.unwrap_or(crate::config::DEFAULT_SOCKET_MODE),
            p.group.as_ref().map(|g| g.id),
        ),
    }
}
