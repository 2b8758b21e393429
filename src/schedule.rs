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

/// The least time between obtaining a token and renewing it. A token with
/// less life than this left when obtained is renewed this long after it was
/// obtained (at or after its expiry: the only alternative is a login loop).
pub const MIN_RENEW_DELAY: time::Duration = time::Duration::seconds(1);

/// How long before the expiry a renewal is due at the latest ("strictly
/// before": a renewal at the expiry leaves the outputs expired).
const BEFORE_EXPIRY: time::Duration = time::Duration::milliseconds(1);

/// When a token should be renewed: `renew-at` plus `jitter * sample` of its
/// lifetime after it was issued. `sample` is uniform in [-1, 1].
///
/// Clamped so odd claims cannot make a loop or a late renewal:
/// - a renewal point that had already passed when the token was obtained
///   is taken from the time it was obtained instead (the same fraction of
///   the life it had left);
/// - never later than just before the expiry;
/// - never sooner than [`MIN_RENEW_DELAY`] after it was obtained (this
///   wins over the previous rule for a token with under a second of life).
pub fn due_at(validity: &Validity, policy: &RenewalPolicy, sample: f64) -> OffsetDateTime {
    // Every step saturates: the times may come from a server or a file
    // (year 1 or 9999), and nothing from outside may panic the daemon.
    let sample = if sample.is_finite() {
        sample.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let fraction = (policy.renew_at + policy.jitter * sample).clamp(0.0, 0.99);
    let fraction = if fraction.is_finite() { fraction } else { 0.8 };
    let part = |d: time::Duration| {
        time::Duration::checked_seconds_f64(d.max(time::Duration::ZERO).as_seconds_f64() * fraction)
            .unwrap_or(time::Duration::MAX)
    };
    let obtained = validity.obtained_at;
    let expires = validity.expires_at;
    let mut due = validity.issued_at.saturating_add(part(validity.lifetime()));
    if due <= obtained {
        due = obtained.saturating_add(part(expires - obtained));
    }
    due.min(expires.saturating_sub(BEFORE_EXPIRY))
        .max(obtained.saturating_add(MIN_RENEW_DELAY))
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
    let sample = if sample.is_finite() {
        sample.clamp(0.0, 1.0)
    } else {
        0.5
    };
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

/// Caps a retry delay so that it never outlives the held token: a server's
/// `Retry-After` (or a long backoff) is obeyed, but the next try comes no
/// later than `retry-min` before the held token expires, and no sooner than
/// `retry-min` from now. With no usable token (`expires_at` is `None` or
/// past), a delay is capped at `retry-max` plus 10%, as backoff is. Returns the delay
/// and whether it was cut.
pub fn cap_retry(
    delay: Duration,
    now: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
    policy: &RenewalPolicy,
) -> (Duration, bool) {
    let limit = match expires_at.filter(|e| *e > now) {
        Some(e) => Duration::try_from(e - now)
            .unwrap_or(Duration::MAX)
            .saturating_sub(policy.retry_min)
            .max(policy.retry_min),
        None => policy.retry_max.mul_f64(1.1),
    };
    if delay > limit {
        (limit, true)
    } else {
        (delay, false)
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
    t.saturating_add(time::Duration::try_from(d).unwrap_or(time::Duration::days(365)))
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

    fn lasting(got: OffsetDateTime, life: time::Duration, iat: Option<OffsetDateTime>) -> Validity {
        Validity::new(
            Claims {
                expires_at: Some(got + life),
                issued_at: iat,
            },
            got,
        )
    }

    #[test]
    fn due_at_short_lifetimes() {
        let got = datetime!(2026-11-27 00:00 UTC);
        let p = RenewalPolicy {
            jitter: 0.0,
            ..policy()
        };
        let v = lasting(got, time::Duration::seconds(2), None);
        assert_eq!(due_at(&v, &p, 0.5), got + time::Duration::milliseconds(1600));
        // Under a second of life: the floor wins, else it is a login loop.
        let v = lasting(got, time::Duration::milliseconds(500), None);
        assert_eq!(due_at(&v, &p, 0.5), got + MIN_RENEW_DELAY);
        // renew-at 0.99 of 1.2 s would be 1.188 s: still before expiry.
        let p99 = RenewalPolicy { renew_at: 0.99, ..p };
        let v = lasting(got, time::Duration::milliseconds(1200), None);
        assert!(due_at(&v, &p99, 0.0) < v.expires_at);
    }

    #[test]
    fn due_is_never_at_or_after_expiry_and_never_a_loop() {
        let p = RenewalPolicy {
            renew_at: 0.99,
            jitter: 0.2,
            ..policy()
        };
        let got = datetime!(2026-11-27 00:00 UTC);
        let day = time::Duration::days(1);
        let iats = [
            None,
            Some(got),
            Some(got - day),
            Some(got - time::Duration::days(3650)), // ten years ago
            Some(got + day),                        // after obtained
            Some(got + time::Duration::days(30)),   // after exp
        ];
        for life in [time::Duration::seconds(2), time::Duration::minutes(10), day * 7] {
            for iat in iats {
                for sample in [-1.0, 0.0, 1.0] {
                    let v = lasting(got, life, iat);
                    let due = due_at(&v, &p, sample);
                    assert!(due < v.expires_at, "{life} {iat:?} {sample}: {due}");
                    assert!(due >= got + MIN_RENEW_DELAY, "{life} {iat:?} {sample}: {due}");
                }
            }
        }
    }

    #[test]
    fn iat_ten_years_ago_is_ignored() {
        let got = datetime!(2026-11-27 00:00 UTC);
        let p = RenewalPolicy {
            jitter: 0.0,
            ..policy()
        };
        let v = lasting(
            got,
            time::Duration::seconds(20),
            Some(got - time::Duration::days(3650)),
        );
        assert!(v.iat_ignored);
        assert_eq!(v.issued_at, got);
        assert_eq!(due_at(&v, &p, 0.0), got + time::Duration::seconds(16));
    }

    #[test]
    fn iat_after_exp_or_in_the_future_is_ignored() {
        let got = datetime!(2026-11-27 00:00 UTC);
        let p = RenewalPolicy {
            jitter: 0.0,
            ..policy()
        };
        let life = time::Duration::seconds(20);
        let v = lasting(got, life, Some(got + time::Duration::hours(1)));
        assert!(v.iat_ignored);
        assert_eq!(due_at(&v, &p, 0.0), got + time::Duration::seconds(16));
        // A few seconds of clock noise after obtained is allowed.
        let v = lasting(got, life, Some(got + time::Duration::seconds(2)));
        assert!(!v.iat_ignored);
        assert_eq!(v.issued_at, got + time::Duration::seconds(2));
        // Beyond the allowance it is not.
        let v = lasting(
            got,
            time::Duration::days(1),
            Some(got + time::Duration::minutes(5)),
        );
        assert!(v.iat_ignored);
    }

    #[test]
    fn a_renewal_point_passed_before_obtaining_counts_from_obtained() {
        // iat 60 days ago is plausible, but 0.8 of its lifetime was long
        // gone when the token (20 s left) was obtained.
        let got = datetime!(2026-11-27 00:00 UTC);
        let p = RenewalPolicy {
            jitter: 0.0,
            ..policy()
        };
        let v = lasting(
            got,
            time::Duration::seconds(20),
            Some(got - time::Duration::days(60)),
        );
        assert!(!v.iat_ignored);
        assert_eq!(due_at(&v, &p, 0.0), got + time::Duration::seconds(16));
    }

    #[test]
    fn expiry_in_year_9999_is_like_none() {
        let got = datetime!(2026-11-27 00:00 UTC);
        let far = Validity::new(
            Claims {
                expires_at: Some(datetime!(9999-12-31 23:59:59 UTC)),
                issued_at: None,
            },
            got,
        );
        assert!(far.expiry_ignored);
        assert_eq!(far.expires_at, got + crate::token::DEFAULT_LIFETIME);
        // 70 days is the bound: just inside is believed.
        let v = lasting(got, crate::token::IMPLAUSIBLE_LIFETIME, None);
        assert!(!v.expiry_ignored);
        let v = lasting(
            got,
            crate::token::IMPLAUSIBLE_LIFETIME + time::Duration::seconds(1),
            None,
        );
        assert!(v.expiry_ignored);
    }

    #[test]
    fn retry_after_never_outlives_the_held_token() {
        let p = policy(); // retry 1s .. 5m
        let now = datetime!(2026-11-27 00:00 UTC);
        let huge = Duration::from_secs(999_999);
        // A token with an hour left: retry a retry-min before it expires.
        let exp = now + time::Duration::hours(1);
        assert_eq!(
            cap_retry(huge, now, Some(exp), &p),
            (Duration::from_secs(3599), true)
        );
        // Shorter waits are obeyed as they are.
        assert_eq!(
            cap_retry(Duration::from_secs(30), now, Some(exp), &p),
            (Duration::from_secs(30), false)
        );
        // A token about to expire: no sooner than retry-min.
        let soon = now + time::Duration::milliseconds(500);
        assert_eq!(cap_retry(huge, now, Some(soon), &p), (p.retry_min, true));
        // No token, or an expired one: capped like retry-max caps backoff.
        let cap = p.retry_max.mul_f64(1.1);
        assert_eq!(cap_retry(huge, now, None, &p), (cap, true));
        assert_eq!(
            cap_retry(huge, now, Some(now - time::Duration::hours(1)), &p),
            (cap, true)
        );
        // Every backoff with no token stays within the cap.
        for s in [0.0, 0.5, 0.999] {
            let d = backoff(3, FailureKind::Rejected, &p, s);
            assert_eq!(cap_retry(d, now, None, &p), (d, false));
        }
    }

    #[test]
    fn due_at_uses_iat_when_present() {
        let iat = datetime!(2026-11-20 00:00 UTC);
        let v = Validity::new(
            Claims {
                expires_at: Some(iat + time::Duration::days(10)),
                issued_at: Some(iat),
            },
            datetime!(2026-11-20 00:10 UTC),
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
