//! The API client and the login budget all credentials share.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use super::ApiClient;
use crate::config::ApiConfig;

/// Logins allowed in flight at once, whatever the per-second budget.
const MAX_CONCURRENT_LOGINS: usize = 16;

/// The API client and the login budget it shares among all credentials.
#[derive(Debug)]
pub struct Api {
    pub config: ApiConfig,
    pub client: ApiClient,
    pub(crate) limiter: LoginLimiter,
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
