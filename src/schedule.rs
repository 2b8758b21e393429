//! Pure renewal policy: when a token is due, how long to wait after a
//! failure, how long to sleep. Nothing here reads a clock or a random
//! source; callers pass `now` and random samples in, so every rule is
//! unit-tested without sleeping.

use std::time::Duration;

use time::OffsetDateTime;

use crate::config::RenewalPolicy;
use crate::token::Validity;

/// The longest the daemon sleeps before looking at the wall clock again.
/// Timers run on the monotonic clock, which stops while a machine is
/// suspended; re-checking this often means a renewal that fell due during
/// a suspend happens within this long of waking.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// When a token should be renewed: `renew-at` plus `jitter * sample` of its
/// lifetime after it was issued. `sample` is uniform in [-1, 1].
pub fn due_at(validity: &Validity, policy: &RenewalPolicy, sample: f64) -> OffsetDateTime {
    let lifetime = validity.lifetime();
    if lifetime <= time::Duration::ZERO {
        return validity.issued_at;
    }
    let fraction = (policy.renew_at + policy.jitter * sample.clamp(-1.0, 1.0)).clamp(0.0, 0.99);
    validity.issued_at + lifetime * fraction
}

/// Why the last attempt failed, as far as retry timing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The server answered 400: the credentials were refused. Retrying
    /// fast cannot help and only loads the server.
    Rejected,
    /// 429; with the server's `Retry-After` when it gave one.
    RateLimited(Option<Duration>),
    /// Anything else: network, 5xx, a bad answer, a failed write.
    Transient,
}

/// How long to wait before the next try after `failures` consecutive
/// failures (1 for the first), the last of kind `kind`. `sample` is uniform
/// in [0, 1) and spreads retries of many credentials apart.
///
/// - transient: `retry-min * 2^(failures-1)`, +/-20%, within `retry-min..=retry-max`;
/// - rejected: at least `retry-max` (plus up to 10%);
/// - rate limited: never sooner than `Retry-After`, nor than the transient delay.
pub fn backoff(failures: u32, kind: FailureKind, policy: &RenewalPolicy, sample: f64) -> Duration {
    let sample = sample.clamp(0.0, 1.0);
    let exponent = failures.saturating_sub(1).min(32);
    let base = policy
        .retry_min
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(policy.retry_max);
    let transient = base
        .mul_f64(0.8 + 0.4 * sample)
        .clamp(policy.retry_min, policy.retry_max);
    match kind {
        FailureKind::Transient | FailureKind::RateLimited(None) => transient,
        FailureKind::Rejected => policy.retry_max.mul_f64(1.0 + 0.1 * sample),
        FailureKind::RateLimited(Some(after)) => after.mul_f64(1.0 + 0.1 * sample).max(transient),
    }
}

/// How long to sleep from `now` to reach `target`, at most [`MAX_SLEEP`].
pub fn sleep_for(now: OffsetDateTime, target: OffsetDateTime) -> Duration {
    let remaining = target - now;
    if remaining <= time::Duration::ZERO {
        return Duration::ZERO;
    }
    Duration::try_from(remaining).unwrap_or(MAX_SLEEP).min(MAX_SLEEP)
}

/// Adds a std duration to a wall-clock time.
pub fn after(t: OffsetDateTime, d: Duration) -> OffsetDateTime {
    t + time::Duration::try_from(d).unwrap_or(time::Duration::days(365))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Claims;
    use time::macros::datetime;

    fn policy() -> RenewalPolicy {
        RenewalPolicy::default()
    }

    fn week_token() -> Validity {
        let got = datetime!(2026-11-27 00:00 UTC);
        Validity::new(
            Claims {
                expires_at: Some(got + time::Duration::days(7)),
                issued_at: None,
            },
            got,
        )
    }

    #[test]
    fn due_at_fraction_of_lifetime() {
        let v = week_token();
        let start = v.issued_at;
        let p = policy();
        // 0.8 of 7 days = 5.6 days; jitter 0.05 of 7 days = 8.4 hours.
        assert_eq!(
            due_at(&v, &p, 0.0),
            start + time::Duration::hours(134) + time::Duration::minutes(24)
        );
        assert_eq!(
            due_at(&v, &p, 1.0),
            start + time::Duration::hours(142) + time::Duration::minutes(48)
        );
        assert_eq!(due_at(&v, &p, -1.0), start + time::Duration::hours(126));
        // Samples outside [-1, 1] are clamped.
        assert_eq!(due_at(&v, &p, 7.0), due_at(&v, &p, 1.0));
    }

    #[test]
    fn due_at_short_lifetimes() {
        let got = datetime!(2026-11-27 00:00 UTC);
        let v = Validity::new(
            Claims {
                expires_at: Some(got + time::Duration::seconds(1)),
                issued_at: None,
            },
            got,
        );
        let p = RenewalPolicy {
            jitter: 0.0,
            ..policy()
        };
        assert_eq!(due_at(&v, &p, 0.5), got + time::Duration::milliseconds(800));
    }

    #[test]
    fn due_at_uses_iat_when_present() {
        let iat = datetime!(2026-11-20 00:00 UTC);
        let v = Validity::new(
            Claims {
                expires_at: Some(iat + time::Duration::days(10)),
                issued_at: Some(iat),
            },
            datetime!(2026-11-27 00:00 UTC),
        );
        let p = RenewalPolicy {
            renew_at: 0.5,
            jitter: 0.0,
            ..policy()
        };
        assert_eq!(due_at(&v, &p, 0.0), iat + time::Duration::days(5));
    }

    #[test]
    fn transient_backoff_doubles_up_to_the_cap() {
        let p = policy(); // 1s .. 5m
        let mid = |n| backoff(n, FailureKind::Transient, &p, 0.5);
        assert_eq!(mid(1), Duration::from_secs(1));
        assert_eq!(mid(2), Duration::from_secs(2));
        assert_eq!(mid(5), Duration::from_secs(16));
        assert_eq!(mid(9), Duration::from_secs(256));
        assert_eq!(mid(10), Duration::from_secs(300));
        assert_eq!(mid(u32::MAX), Duration::from_secs(300));
        // Jitter spreads +/-20% but never below retry-min or above retry-max.
        assert_eq!(
            backoff(1, FailureKind::Transient, &p, 0.0),
            Duration::from_secs(1)
        );
        assert_eq!(
            backoff(3, FailureKind::Transient, &p, 0.0),
            Duration::from_millis(3200)
        );
        assert_eq!(
            backoff(3, FailureKind::Transient, &p, 0.999),
            Duration::from_secs(4).mul_f64(1.1996)
        );
        assert_eq!(
            backoff(20, FailureKind::Transient, &p, 0.999),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn rejected_waits_at_least_retry_max() {
        let p = policy();
        for n in [1, 2, 50] {
            for s in [0.0, 0.5, 0.99] {
                let d = backoff(n, FailureKind::Rejected, &p, s);
                assert!(d >= p.retry_max && d <= p.retry_max.mul_f64(1.1), "{d:?}");
            }
        }
    }

    #[test]
    fn retry_after_is_never_undercut() {
        let p = policy();
        let d = backoff(1, FailureKind::RateLimited(Some(Duration::from_secs(3))), &p, 0.0);
        assert_eq!(d, Duration::from_secs(3));
        // Exponential backoff still applies when it is longer.
        let d = backoff(6, FailureKind::RateLimited(Some(Duration::from_secs(3))), &p, 0.5);
        assert_eq!(d, Duration::from_secs(32));
        assert_eq!(
            backoff(2, FailureKind::RateLimited(None), &p, 0.5),
            backoff(2, FailureKind::Transient, &p, 0.5)
        );
    }

    #[test]
    fn sleeps_are_bounded_so_suspend_is_noticed() {
        let now = datetime!(2026-11-27 00:00 UTC);
        assert_eq!(sleep_for(now, now + time::Duration::days(5)), MAX_SLEEP);
        assert_eq!(
            sleep_for(now, now + time::Duration::seconds(3)),
            Duration::from_secs(3)
        );
        assert_eq!(sleep_for(now, now - time::Duration::seconds(3)), Duration::ZERO);
    }
}
