//! Prometheus metrics (prometheus-client), collected always, served on
//! `/metrics` when `[health] listen` is set. Names are part of the
//! interface; see `shared/interface.md`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use time::OffsetDateTime;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabel {
    pub credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub credential: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabel {
    pub credential: String,
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub credential: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the daemon keeps.
pub struct Metrics {
    registry: Registry,
    token_expiry: Family<CredentialLabel, FloatGauge>,
    renewals: Family<ResultLabel, Counter>,
    last_renewal: Family<CredentialLabel, FloatGauge>,
    reloads: Family<ReloadLabel, Counter>,
    login_duration: Family<CredentialLabel, Histogram>,
    write_failures: Family<CredentialLabel, Counter>,
    hooks: Family<HookLabel, Counter>,
    keys_deleted: Family<ResultLabel, Counter>,
    deletions_overdue: Family<CredentialLabel, Gauge>,
    /// `exec` mode only (see [`Metrics::with_child`]).
    child_restarts: Family<ReasonLabel, Counter>,
    child_up: Gauge,
    proxy_requests: Family<CodeLabel, Counter>,
    proxy_duration: Family<CredentialLabel, Histogram>,
    proxy_refused: Family<CredentialLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn label(credential: &str) -> CredentialLabel {
    CredentialLabel {
        credential: credential.to_string(),
    }
}

fn unix(t: OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("voipbin_tokend");
        let token_expiry = Family::<CredentialLabel, FloatGauge>::default();
        let renewals = Family::<ResultLabel, Counter>::default();
        let last_renewal = Family::<CredentialLabel, FloatGauge>::default();
        let reloads = Family::<ReloadLabel, Counter>::default();
        let login_duration = Family::<CredentialLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        let write_failures = Family::<CredentialLabel, Counter>::default();
        let hooks = Family::<HookLabel, Counter>::default();
        let keys_deleted = Family::<ResultLabel, Counter>::default();
        registry.register(
            "token_expiry_timestamp_seconds",
            "Expiry of the token each credential holds (Unix time)",
            token_expiry.clone(),
        );
        registry.register(
            "renewals",
            "Renewal attempts (logins) by result: success or failure",
            renewals.clone(),
        );
        registry.register(
            "last_renewal_timestamp_seconds",
            "When each credential last obtained a token (Unix time)",
            last_renewal.clone(),
        );
        registry.register("config_reloads", "Config reloads by result", reloads.clone());
        registry.register(
            "login_duration_seconds",
            "Duration of login requests, whatever their outcome",
            login_duration.clone(),
        );
        registry.register(
            "output_write_failures",
            "Output files that could not be written",
            write_failures.clone(),
        );
        registry.register(
            "hook_runs",
            "on-change commands and signals by kind (command, signal) and result (success, failure)",
            hooks.clone(),
        );
        registry.register(
            "access_keys_deleted",
            "Replaced or orphaned access keys deleted, by result: success, already_gone, failure",
            keys_deleted.clone(),
        );
        let deletions_overdue = Family::<CredentialLabel, Gauge>::default();
        registry.register(
            "access_keys_deletion_overdue",
            "Replaced access keys whose deletion is overdue (it failed, or is late by more than 5 minutes)",
            deletions_overdue.clone(),
        );
        let proxy_requests = Family::<CodeLabel, Counter>::default();
        registry.register(
            "proxy_requests",
            "Requests the local API proxy answered, by credential and HTTP status",
            proxy_requests.clone(),
        );
        let proxy_duration = Family::<CredentialLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
        });
        registry.register(
            "proxy_request_duration_seconds",
            "Time from a proxied request to its answer's head",
            proxy_duration.clone(),
        );
        let proxy_refused = Family::<CredentialLabel, Counter>::default();
        registry.register(
            "proxy_connections_refused",
            "Client connections the local API proxy closed unserved: its connection limit was reached",
            proxy_refused.clone(),
        );
        // Series that alerts look for exist from the start, at 0.
        for result in ["success", "failure"] {
            let _ = reloads.get_or_create(&ReloadLabel { result });
        }
        Metrics {
            registry,
            token_expiry,
            renewals,
            last_renewal,
            reloads,
            login_duration,
            write_failures,
            hooks,
            keys_deleted,
            deletions_overdue,
            child_restarts: Family::default(),
            child_up: Gauge::default(),
            proxy_requests,
            proxy_duration,
            proxy_refused,
        }
    }

    /// [`Metrics::new`] plus the `exec` child's series.
    pub fn with_child() -> Metrics {
        let mut m = Metrics::new();
        m.registry.register(
            "child_restarts",
            "Restarts of the exec child, by reason (rotation: an exported secret changed)",
            m.child_restarts.clone(),
        );
        m.registry
            .register("child_up", "1 while the exec child runs", m.child_up.clone());
        let _ = m
            .child_restarts
            .get_or_create(&ReasonLabel { reason: "rotation" });
        m
    }

    pub fn proxy_request(&self, credential: &str, code: u16, seconds: f64) {
        self.proxy_requests
            .get_or_create(&CodeLabel {
                credential: credential.to_string(),
                code,
            })
            .inc();
        self.proxy_duration
            .get_or_create(&label(credential))
            .observe(seconds);
    }

    pub fn proxy_connection_refused(&self, credential: &str) {
        self.proxy_refused.get_or_create(&label(credential)).inc();
    }

    pub fn child_restart(&self, reason: &'static str) {
        self.child_restarts.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn child_up(&self, up: bool) {
        self.child_up.set(i64::from(up));
    }

    /// Creates a credential's counters at 0, so `rate()` and absence
    /// alerts work before the first failure.
    pub fn register(&self, credential: &str) {
        for result in ["success", "failure"] {
            let _ = self.renewals.get_or_create(&ResultLabel {
                credential: credential.to_string(),
                result,
            });
        }
        let _ = self.write_failures.get_or_create(&label(credential));
    }

    pub fn token(&self, credential: &str, expires_at: OffsetDateTime, obtained_at: OffsetDateTime) {
        self.token_expiry
            .get_or_create(&label(credential))
            .set(unix(expires_at));
        self.last_renewal
            .get_or_create(&label(credential))
            .set(unix(obtained_at));
    }

    pub fn renewal(&self, credential: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.renewals
            .get_or_create(&ResultLabel {
                credential: credential.to_string(),
                result,
            })
            .inc();
    }

    pub fn login_duration(&self, credential: &str, seconds: f64) {
        self.login_duration
            .get_or_create(&label(credential))
            .observe(seconds);
    }

    pub fn write_failure(&self, credential: &str) {
        self.write_failures.get_or_create(&label(credential)).inc();
    }

    /// A DELETE of an access key: `success`, `already_gone` (404/409) or `failure`.
    pub fn key_deleted(&self, credential: &str, result: &'static str) {
        self.keys_deleted
            .get_or_create(&ResultLabel {
                credential: credential.to_string(),
                result,
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabel { result }).inc();
    }

    pub fn hook(&self, credential: &str, kind: &'static str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.hooks
            .get_or_create(&HookLabel {
                credential: credential.to_string(),
                kind,
                result,
            })
            .inc();
    }

    /// Drops a removed credential's gauges (counters stay: they are totals).
    pub fn forget(&self, credential: &str) {
        self.token_expiry.remove(&label(credential));
        self.last_renewal.remove(&label(credential));
        self.deletions_overdue.remove(&label(credential));
    }

    /// How many of an access-key credential's deletions are overdue.
    pub fn key_deletions_overdue(&self, credential: &str, count: usize) {
        self.deletions_overdue
            .get_or_create(&label(credential))
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_interface() {
        let m = Metrics::new();
        let t = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        m.token("main", t, t);
        m.renewal("main", true);
        m.renewal("main", false);
        m.reload(false);
        let text = m.encode();
        for needle in [
            "voipbin_tokend_token_expiry_timestamp_seconds{credential=\"main\"} 1800000000",
            "voipbin_tokend_renewals_total{credential=\"main\",result=\"success\"} 1",
            "voipbin_tokend_renewals_total{credential=\"main\",result=\"failure\"} 1",
            "voipbin_tokend_last_renewal_timestamp_seconds{credential=\"main\"}",
            "voipbin_tokend_config_reloads_total{result=\"failure\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
    }
}
