//! The API clients and the login budget all credentials share.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use super::ApiClient;
use crate::config::{ApiConfig, Config, CredentialConfig};

/// Logins allowed in flight at once, whatever the per-second budget.
pub(crate) const MAX_CONCURRENT_LOGINS: usize = 16;

/// The API client of one base URL and the login budget it shares with
/// every other (all credentials, all servers: the budget is this host's).
#[derive(Debug)]
pub struct Api {
    pub config: ApiConfig,
    pub client: ApiClient,
    pub(crate) limiter: Arc<LoginLimiter>,
}

impl Api {
    /// A client with a login budget of its own (one server, one budget).
    pub fn new(config: &ApiConfig) -> Result<Arc<Api>, String> {
        Api::sharing(config, Arc::new(LoginLimiter::new(config.max_logins_per_second)))
    }

    /// A client that counts its logins in `limiter`.
    fn sharing(config: &ApiConfig, limiter: Arc<LoginLimiter>) -> Result<Arc<Api>, String> {
        Ok(Arc::new(Api {
            client: ApiClient::new(config)?,
            limiter,
            config: config.clone(),
        }))
    }
}

/// One [`Api`] per distinct base URL of a config (`[api] base-url` and each
/// credential's `base-url`), all sharing one [`LoginLimiter`].
#[derive(Debug, Clone)]
pub struct Apis {
    api: ApiConfig,
    limiter: Arc<LoginLimiter>,
    by_url: BTreeMap<String, Arc<Api>>,
}

impl Apis {
    /// The clients `config` needs. Reads `ca-file`; builds HTTP clients,
    /// so it runs inside the runtime.
    pub fn new(config: &Config) -> Result<Apis, String> {
        let limiter = Arc::new(LoginLimiter::new(config.api.max_logins_per_second));
        Apis::build(config, limiter, &BTreeMap::new())
    }

    /// The clients of a reloaded `config`. With `[api]` unchanged, the
    /// clients (and their pools) of base URLs still in use are kept, and
    /// the login budget with them; otherwise everything is built anew.
    pub fn rebuilt(&self, config: &Config) -> Result<Apis, String> {
        if config.api != self.api {
            return Apis::new(config);
        }
        Apis::build(config, self.limiter.clone(), &self.by_url)
    }

    fn build(
        config: &Config,
        limiter: Arc<LoginLimiter>,
        keep: &BTreeMap<String, Arc<Api>>,
    ) -> Result<Apis, String> {
        let mut by_url = BTreeMap::new();
        let wanted = std::iter::once(config.api.clone())
            .chain(config.credentials.iter().map(|c| config.api.for_credential(c)));
        for api in wanted {
            let url = api.base_url.to_string();
            if by_url.contains_key(&url) {
                continue;
            }
            let client = match keep.get(&url) {
                Some(kept) => kept.clone(),
                None => Api::sharing(&api, limiter.clone())?,
            };
            by_url.insert(url, client);
        }
        Ok(Apis {
            api: config.api.clone(),
            limiter,
            by_url,
        })
    }

    /// The client of `cred`'s base URL: one built for its config, or (a
    /// credential of another config) a new one sharing the budget, which
    /// fails only if `ca-file` cannot be read now.
    pub fn for_credential(&self, cred: &CredentialConfig) -> Result<Arc<Api>, String> {
        let api = self.api.for_credential(cred);
        match self.by_url.get(api.base_url.as_str()) {
            Some(client) => Ok(client.clone()),
            None => Api::sharing(&api, self.limiter.clone()),
        }
    }

    /// How many distinct servers these clients reach.
    pub fn servers(&self) -> usize {
        self.by_url.len()
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
pub(crate) struct LoginLimiter {
    per_second: Option<Arc<Semaphore>>,
    in_flight: Semaphore,
}

/// A login's place in the budget; returned when dropped.
pub(crate) struct LoginSlot<'a> {
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
    pub(crate) async fn acquire(&self) -> LoginSlot<'_> {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        let creds = |name: &str, base: &str| {
            format!(
                "[[credential]]\nname = \"{name}\"\n{base}username = \"a@b.c\"\npassword-env = \"PW\"\n\
                 [[credential.output]]\npath = \"/run/t/{name}.token\"\n"
            )
        };
        let text = format!(
            "{text}{}{}{}",
            creds("a", ""),
            creds("b", "base-url = \"http://127.0.0.1:9001/x\"\n"),
            creds("c", "base-url = \"http://127.0.0.1:9001/x\"\n"),
        );
        Config::parse(&text, Path::new("/etc/t/config.toml")).unwrap()
    }

    #[tokio::test]
    async fn one_client_per_base_url_all_sharing_one_login_budget() {
        let c = config("[api]\nbase-url = \"http://127.0.0.1:9000\"\n");
        let apis = Apis::new(&c).unwrap();
        assert_eq!(apis.servers(), 2);
        let [a, b, cc] = [0, 1, 2].map(|i| apis.for_credential(&c.credentials[i]).unwrap());
        assert_eq!(a.config.base_url.as_str(), "http://127.0.0.1:9000/");
        assert_eq!(b.config.base_url.as_str(), "http://127.0.0.1:9001/x");
        assert_eq!(
            b.client.login_url().as_str(),
            "http://127.0.0.1:9001/x/auth/login"
        );
        assert!(Arc::ptr_eq(&b, &cc), "one client per base URL");
        assert!(Arc::ptr_eq(&a.limiter, &b.limiter), "one login budget for all");
        // The other [api] settings hold for every server.
        assert_eq!(b.config.timeout, c.api.timeout);
    }

    #[tokio::test]
    async fn a_reload_keeps_clients_and_budget_unless_api_changed() {
        let c = config("[api]\nbase-url = \"http://127.0.0.1:9000\"\n");
        let apis = Apis::new(&c).unwrap();
        let again = apis.rebuilt(&c).unwrap();
        let (a0, a1) = (
            apis.for_credential(&c.credentials[0]).unwrap(),
            again.for_credential(&c.credentials[0]).unwrap(),
        );
        assert!(Arc::ptr_eq(&a0, &a1));
        let changed = config("[api]\nbase-url = \"http://127.0.0.1:9000\"\ntimeout = \"5s\"\n");
        let fresh = apis.rebuilt(&changed).unwrap();
        let a2 = fresh.for_credential(&changed.credentials[0]).unwrap();
        assert!(!Arc::ptr_eq(&a0, &a2));
        assert!(!Arc::ptr_eq(&a0.limiter, &a2.limiter));
        assert_eq!(a2.config.timeout, std::time::Duration::from_secs(5));
    }
}
