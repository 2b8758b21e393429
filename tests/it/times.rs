//! Times from outside (the server's answers and `Date` header, the state
//! files) cannot abort the daemon, and implausible ones are not believed
//! (issue 14, items 2 and 11).
//!
//! First a property-style test of the pure time functions over extreme
//! inputs (a hand-rolled grid plus random draws: years 1 and 9999, the
//! type's limits, skews of +-1e15 ms, NaN and infinite samples); then the
//! binary against a stand-in that lies about times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;
use nix::sys::signal::Signal;
use time::OffsetDateTime;
use time::macros::datetime;
use voipbin_tokend::api::keys::KeyObject;
use voipbin_tokend::config::RenewalPolicy;
use voipbin_tokend::schedule::{self, FailureKind};
use voipbin_tokend::secret::Secret;
use voipbin_tokend::source::key::{plausible_key_times, skew_seconds};
use voipbin_tokend::state::keys::{CurrentKey, Origin};
use voipbin_tokend::state::record::TokenRecord;
use voipbin_tokend::token::{self, Claims, Validity};

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Pure functions over extreme times.

/// Times worth trying: the limits, year 1 and 9999, the epoch, now, and
/// a few random ones anywhere in the representable range.
fn extreme_times() -> Vec<OffsetDateTime> {
    let now = OffsetDateTime::now_utc();
    let mut v = vec![
        OffsetDateTime::new_utc(time::Date::MIN, time::Time::MIDNIGHT),
        datetime!(0001-01-01 00:00 UTC),
        datetime!(1970-01-01 00:00 UTC),
        now,
        now + time::Duration::seconds(1),
        now - time::Duration::days(365 * 5),
        now + time::Duration::days(365),
        datetime!(9999-12-31 00:00 UTC),
        datetime!(9999-12-31 23:59:59.999999999 UTC),
        OffsetDateTime::new_utc(time::Date::MAX, time::Time::MAX),
    ];
    let (lo, hi) = (v[0].unix_timestamp(), v[v.len() - 1].unix_timestamp());
    for _ in 0..6 {
        let secs = fastrand::i64(lo..=hi);
        v.push(OffsetDateTime::from_unix_timestamp(secs).unwrap());
    }
    v
}

fn extreme_durations() -> Vec<time::Duration> {
    vec![
        time::Duration::MIN,
        time::Duration::milliseconds(-1_000_000_000_000_000), // -1e15 ms
        time::Duration::days(-365 * 5),
        time::Duration::days(-2),
        time::Duration::seconds(-1),
        time::Duration::ZERO,
        time::Duration::seconds(30),
        time::Duration::days(2),
        time::Duration::milliseconds(1_000_000_000_000_000), // 1e15 ms
        time::Duration::MAX,
    ]
}

const SAMPLES: [f64; 9] = [
    f64::NAN,
    f64::NEG_INFINITY,
    -1e308,
    -1.0,
    0.0,
    0.5,
    1.0,
    1e308,
    f64::INFINITY,
];

/// A time is "ordinary" when a day either side of it is representable.
fn ordinary(t: OffsetDateTime) -> bool {
    (datetime!(0002-01-01 00:00 UTC)..datetime!(9999-01-01 00:00 UTC)).contains(&t)
}

#[test]
fn no_extreme_time_skew_or_sample_panics_the_time_functions() {
    let times = extreme_times();
    let opt_times: Vec<Option<OffsetDateTime>> = std::iter::once(None)
        .chain(times.iter().copied().map(Some))
        .collect();
    let policy = RenewalPolicy::default();
    let now = OffsetDateTime::now_utc();
    let mut checked = 0u64;
    for &obtained in &times {
        for &expires_at in &opt_times {
            for &issued_at in &opt_times {
                let v = Validity::new(
                    Claims {
                        expires_at,
                        issued_at,
                    },
                    obtained,
                );
                let _ = v.lifetime();
                let _ = v.is_expired(now);
                for sample in SAMPLES {
                    let due = schedule::due_at(&v, &policy, sample);
                    // The rules hold wherever there is room for them.
                    if ordinary(obtained) && ordinary(v.expires_at) {
                        assert!(
                            due >= obtained + schedule::MIN_RENEW_DELAY,
                            "{v:?} {sample}: {due}"
                        );
                        if v.expires_at > obtained + time::Duration::seconds(2) {
                            assert!(due < v.expires_at, "{v:?} {sample}: {due}");
                        }
                    }
                    checked += 1;
                }
                let _ = token::rfc3339(v.expires_at);
            }
        }
        for &target in &times {
            let _ = schedule::sleep_for(obtained, target);
            let _ = schedule::cap_retry(Duration::MAX, obtained, Some(target), &policy);
            let _ = schedule::cap_retry(Duration::ZERO, obtained, Some(target), &policy);
        }
        for d in [Duration::ZERO, Duration::from_secs(u64::MAX), Duration::MAX] {
            let _ = schedule::after(obtained, d);
        }
    }
    for sample in SAMPLES {
        for failures in [0, 1, 31, 32, u32::MAX] {
            for kind in [
                FailureKind::Transient,
                FailureKind::Rejected,
                FailureKind::RateLimited(None),
                FailureKind::RateLimited(Some(Duration::from_secs(86_400))),
            ] {
                let _ = schedule::backoff(failures, kind, &policy, sample);
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}

#[test]
fn skews_beyond_a_day_are_ignored_and_extreme_key_times_do_not_panic() {
    let times = extreme_times();
    let now = OffsetDateTime::now_utc();
    for skew in extreme_durations() {
        let believed = token::believable_skew(skew);
        assert_eq!(
            believed.is_some(),
            skew.abs() <= time::Duration::days(1),
            "{skew}"
        );
        let secs = skew_seconds(Some(skew));
        assert!(secs.abs() <= 86_400, "{skew}: {secs}");
        // A record or a key state with this skew.
        let rec = TokenRecord {
            username: "u".into(),
            base_url: "http://127.0.0.1:9/".into(),
            server_skew_ms: i64::try_from(skew.whole_milliseconds()).unwrap_or(i64::MAX),
            claimed_expiry: None,
            obtained_at: now,
        };
        let _ = token::believable_skew(rec.server_skew());
        for &tm_create in &times {
            for &tm_expire in &times {
                for skew_secs in [
                    i64::MIN,
                    -1_000_000_000_000,
                    -86_401,
                    0,
                    86_401,
                    i64::MAX,
                    skew.whole_seconds(),
                ] {
                    let key = CurrentKey {
                        id: "00000000-0000-4000-8000-000000000001".into(),
                        key: Secret::new("vb_0123456789abcdefABCDEF0123456789".into()),
                        tm_create,
                        tm_expire,
                        server_skew_seconds: skew_secs,
                        obtained_at: now,
                        origin: Origin::Created,
                        inherited: false,
                    };
                    let expires = key.expires_at();
                    let _ = key.created_at();
                    // A skew beyond a day moves nothing.
                    if skew_secs.unsigned_abs() > 86_400 {
                        assert_eq!(expires, tm_expire);
                    }
                    let mut object = KeyObject {
                        id: key.id.clone(),
                        name: "n".into(),
                        token_prefix: "vb_01234567".into(),
                        tm_create,
                        tm_expire,
                        tm_delete: None,
                        detail: String::new(),
                    };
                    let received = now;
                    let asked = time::Duration::days(1);
                    let secs = skew_seconds(Some(time::Duration::seconds(skew_secs)));
                    plausible_key_times(&mut object, received, secs, asked);
                    // After the checks a new key was made about now and
                    // lives at most what was asked.
                    let here = received + time::Duration::seconds(secs);
                    assert!(
                        (object.tm_create - here).abs() <= time::Duration::minutes(5),
                        "{tm_create} -> {}",
                        object.tm_create
                    );
                    assert!(
                        object.tm_expire - object.tm_create <= asked + time::Duration::minutes(1),
                        "{tm_create}..{tm_expire} -> {}..{}",
                        object.tm_create,
                        object.tm_expire
                    );
                }
            }
        }
    }
}

#[test]
fn times_past_the_end_once_in_utc_and_wild_mtimes_saturate() {
    // 9999-12-31 23:59:59 at -05:00 is year 10000 in UTC.
    for s in [
        "9999-12-31T23:59:59-05:00",
        "9999-12-31T23:59:59.999999-23:59",
        "0000-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59.999999Z",
    ] {
        let t = token::parse_expire(s).expect(s);
        assert_eq!(t.offset(), time::UtcOffset::UTC, "{s}");
        let _ = token::rfc3339(t);
        let v = Validity::new(
            Claims {
                expires_at: Some(t),
                issued_at: Some(t),
            },
            OffsetDateTime::now_utc(),
        );
        let _ = schedule::due_at(&v, &RenewalPolicy::default(), 0.5);
    }
    let west = time::UtcOffset::from_hms(-23, 59, 59).unwrap();
    let east = time::UtcOffset::from_hms(23, 59, 59).unwrap();
    for t in [
        OffsetDateTime::new_in_offset(time::Date::MAX, time::Time::MAX, west),
        OffsetDateTime::new_in_offset(time::Date::MIN, time::Time::MIDNIGHT, east),
    ] {
        let _ = token::rfc3339(t);
        let _ = token::utc(t);
        for d in extreme_durations() {
            let _ = t.saturating_add(d);
            let _ = schedule::after(t, Duration::MAX);
        }
    }
    // A file's mtime can be anything the filesystem stores (tmpfs: year 33658).
    for secs in [0u64, 1, 999_999_999_999, u64::MAX / 2, u64::MAX] {
        let Some(st) = UNIX_EPOCH.checked_add(Duration::from_secs(secs)) else {
            continue;
        };
        let t = token::from_system_time(st);
        assert!(t >= datetime!(1970-01-01 00:00 UTC));
    }
    if let Some(st) = UNIX_EPOCH.checked_sub(Duration::from_secs(999_999_999_999)) {
        assert_eq!(token::from_system_time(st), token::MIN_UTC);
    }
}

#[test]
fn tokens_whose_claims_name_year_1_or_9999_decode_and_are_judged_without_panic() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwt = |claims: &str| {
        format!(
            "{}.{}.{}",
            b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64.encode(claims),
            b64.encode("sig")
        )
    };
    let now = OffsetDateTime::now_utc();
    let claims = [
        r#"{"expire":"9999-12-31T23:59:59.999999Z"}"#,
        r#"{"expire":"0001-01-01T00:00:00.000000Z"}"#,
        r#"{"expire":"9999-12-31 23:59:59.999999"}"#,
        r#"{"exp":99999999999,"iat":-99999999999}"#,
        r#"{"exp":1e300}"#,
        r#"{"exp":-1e300,"iat":1e300}"#,
        r#"{"exp":18446744073709551615,"iat":-9223372036854775808}"#,
    ];
    for c in claims {
        let Ok(decoded) = token::decode(&jwt(c)) else {
            continue;
        };
        for obtained in extreme_times() {
            let v = Validity::new(decoded, obtained);
            let _ = schedule::due_at(&v, &RenewalPolicy::default(), 0.0);
            if decoded.expires_at.is_some_and(|e| e.year() == 9999) && ordinary(obtained) {
                assert!(v.expiry_ignored, "{c}: {v:?}");
            }
        }
        let _ = Validity::new(decoded, now);
    }
}

// ---------------------------------------------------------------------------
// The binary against a stand-in that lies about times.

/// Seconds from now back to 1970: a `Date` offset that says 1970.
fn back_to_1970() -> i64 {
    -(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64) + 3600
}

fn status_of(t: &TestDir, name: &str) -> serde_json::Value {
    let text = t.read("state/status.json").unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["credentials"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name).cloned())
        .unwrap_or_default()
}

fn time_of(v: &serde_json::Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

/// Waits for `name`'s status to show an expiry, and returns it.
fn wait_expiry(t: &TestDir, name: &str, d: &Daemon) -> OffsetDateTime {
    let mut at = None;
    wait_for(
        WAIT,
        &format!("an expiry in {name}'s status"),
        || {
            at = time_of(&status_of(t, name)["expires_at"]);
            at.is_some()
        },
        || format!("{}\n{}", t.read("state/status.json").unwrap_or_default(), d.log()),
    );
    at.unwrap()
}

fn assert_no_panic(d: &Daemon) {
    let log = d.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_login_token_expiring_in_9999_with_a_1970_date_is_judged_by_our_clock() {
    let s = standin(Duration::from_secs(3600));
    s.set_date_offset(Some(back_to_1970()));
    s.set_default(Some(Fault::Claims(
        serde_json::json!({"expire": "9999-12-31T23:59:59.999999Z"}),
    )));
    let t = TestDir::new();
    t.write_config(&s.base_url(), &credential("main", &output("main.env", "env")));
    let mut d = daemon_with(&t, "voipbin_tokend=debug", &[]);
    wait_file(&t.path("main.env"), WAIT, || d.log());
    let expires = wait_expiry(&t, "main", &d);
    let now = OffsetDateTime::now_utc();
    // Neither year 9999 nor the server's 1970: the default 7 days.
    assert!(
        expires > now + time::Duration::days(6) && expires < now + time::Duration::days(8),
        "{expires}"
    );
    d.wait_log("implausibly far from our clock", 1, WAIT);
    d.wait_log("implausibly far ahead", 1, WAIT);
    // Still running and answering: one login, then a clean stop.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.logins_ok(), 1, "{}", d.log());
    assert_no_panic(&d);
    stop(&mut d, Signal::SIGTERM);
}

/// A bootstrap-key credential "mcp" with the key file ./boot.key.
fn key_config(s: &StandIn, t: &TestDir, extra: &str) {
    use std::os::unix::fs::PermissionsExt;
    let (_, key) = s.create_key("made on the admin page", 365 * 86_400);
    let p = t.path("boot.key");
    std::fs::write(&p, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    t.write_config(
        &s.base_url(),
        &format!(
            "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\n\
             lifetime = \"1d\"\ngrace = \"1s\"\nretry-min = \"100ms\"\nretry-max = \"1s\"\n{extra}\n{}",
            output("mcp.env", "env")
        ),
    );
}

fn created_keys(s: &StandIn) -> usize {
    s.requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1.0/accesskeys") && r.method == "POST" && r.status == 200)
        .count()
}

#[test]
fn a_key_answered_with_times_in_9999_and_a_1970_date_lives_what_was_asked() {
    // The second spelling is past the end of time once taken to UTC.
    for far in ["9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59-05:00"] {
        key_answered_with(far);
    }
}

fn key_answered_with(far: &str) {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    key_config(&s, &t, "");
    s.set_date_offset(Some(back_to_1970()));
    s.script_key_creations([Fault::KeyTimes {
        tm_create: far.to_string(),
        tm_expire: far.to_string(),
    }]);
    let mut d = daemon_with(&t, "voipbin_tokend=debug", &[]);
    wait_for(
        WAIT,
        "a created key in the output",
        || {
            created_keys(&s) == 1
                && status_of(&t, "mcp")["key"]["key_id"].is_string()
                && t.read("mcp.env").is_some()
        },
        || d.log(),
    );
    wait_for(
        WAIT,
        "the created key in the status",
        || {
            let id = status_of(&t, "mcp")["key"]["key_id"].as_str().map(str::to_owned);
            id.is_some_and(|id| {
                s.keys()
                    .iter()
                    .any(|k| k.id == id && k.name.starts_with("voipbin-tokend/"))
            })
        },
        || d.log(),
    );
    let now = OffsetDateTime::now_utc();
    let expires = wait_expiry(&t, "mcp", &d);
    assert!(
        expires > now + time::Duration::hours(23) && expires < now + time::Duration::hours(25),
        "{far}: {expires}"
    );
    let next = time_of(&status_of(&t, "mcp")["next_renewal"]).unwrap();
    assert!(next > now && next < expires, "{next} {expires}");
    let state: serde_json::Value = serde_json::from_str(&t.read("state/keys/mcp.json").unwrap()).unwrap();
    assert_eq!(state["current"]["server_skew_seconds"], 0, "{state}");
    assert!(
        !state["current"]["tm_expire"]
            .as_str()
            .unwrap()
            .starts_with("9999"),
        "{state}"
    );
    d.wait_log("implausibly far from our clock", 1, WAIT);
    d.wait_log("creation time far from now", 1, WAIT);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(created_keys(&s), 1, "no rotation loop\n{}", d.log());
    assert_no_panic(&d);
    stop(&mut d, Signal::SIGTERM);
}

#[test]
fn a_key_created_a_year_ahead_is_rotated_by_what_was_asked_not_at_its_claimed_expiry() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    key_config(&s, &t, "renew-at = 0.5\njitter = 0");
    let fmt = |t: OffsetDateTime| voipbin_tokend_standin::format_expire(t.into(), false);
    let ahead = OffsetDateTime::now_utc() + time::Duration::days(365);
    s.script_key_creations([Fault::KeyTimes {
        tm_create: fmt(ahead),
        tm_expire: fmt(ahead + time::Duration::days(1)),
    }]);
    let mut d = daemon_with(&t, "voipbin_tokend=debug", &[]);
    wait_for(
        WAIT,
        "the created key in the status",
        || {
            let id = status_of(&t, "mcp")["key"]["key_id"].as_str().map(str::to_owned);
            id.is_some_and(|id| {
                s.keys()
                    .iter()
                    .any(|k| k.id == id && k.name.starts_with("voipbin-tokend/"))
            })
        },
        || d.log(),
    );
    let now = OffsetDateTime::now_utc();
    let st = status_of(&t, "mcp");
    let expires = time_of(&st["expires_at"]).unwrap();
    let next = time_of(&st["next_renewal"]).unwrap();
    // Counted from when it was received: expires in a day, rotates at half.
    assert!(expires < now + time::Duration::hours(25), "{st}");
    assert!(
        next > now + time::Duration::hours(11) && next < now + time::Duration::hours(13),
        "{st}"
    );
    d.wait_log("creation time far from now", 1, WAIT);
    assert_no_panic(&d);
    stop(&mut d, Signal::SIGTERM);
}

#[test]
fn a_date_five_years_behind_does_not_show_a_dead_key_as_fresh() {
    let s = standin(Duration::from_secs(3600));
    // A day of key life lasts 8 s: the key is dead long before 5 years.
    s.set_key_time_scale(8.0 / 86_400.0);
    let t = TestDir::new();
    key_config(&s, &t, "");
    s.set_date_offset(Some(-5 * 365 * 86_400));
    let mut d = daemon_with(&t, "voipbin_tokend=debug", &[]);
    wait_for(
        WAIT,
        "a created key in the status",
        || {
            let id = status_of(&t, "mcp")["key"]["key_id"].as_str().map(str::to_owned);
            id.is_some_and(|id| {
                s.keys()
                    .iter()
                    .any(|k| k.id == id && k.name.starts_with("voipbin-tokend/"))
            })
        },
        || d.log(),
    );
    let st = status_of(&t, "mcp");
    let id = st["key"]["key_id"].as_str().unwrap().to_owned();
    let real = s.keys().into_iter().find(|k| k.id == id).unwrap().tm_expire;
    let expires = time_of(&st["expires_at"]).unwrap();
    // The status shows the key's real expiry (8 s from creation), not 5 years on.
    let real = OffsetDateTime::from(real);
    assert!(
        (expires - real).abs() <= time::Duration::seconds(2),
        "{st} vs {real}"
    );
    let state: serde_json::Value = serde_json::from_str(&t.read("state/keys/mcp.json").unwrap()).unwrap();
    assert_eq!(state["current"]["server_skew_seconds"], 0, "{state}");
    d.wait_log("implausibly far from our clock", 1, WAIT);
    assert_no_panic(&d);
    stop(&mut d, Signal::SIGTERM);
}

#[test]
fn a_token_record_with_a_skew_of_1e15_ms_is_ignored_not_a_crash_loop() {
    for skew in ["1000000000000000", "-1000000000000000", "9223372036854775807"] {
        let s = standin(Duration::from_secs(3600));
        let t = TestDir::new();
        t.write_config(&s.base_url(), &credential("main", &output("main.json", "json")));
        let mut d = daemon_with(&t, "voipbin_tokend=debug", &[]);
        wait_file(&t.path("main.json"), WAIT, || d.log());
        wait_for(
            WAIT,
            "the login record",
            || t.read("state/tokens/main.json").is_some(),
            || d.log(),
        );
        stop(&mut d, Signal::SIGTERM);
        assert_eq!(s.logins_ok(), 1);

        // Someone (or a bit flip) sets the recorded skew to 1e15 ms.
        let rec = t.read("state/tokens/main.json").unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&rec).unwrap();
        v["server_skew_ms"] = serde_json::Value::Number(skew.parse().unwrap());
        std::fs::write(t.path("state/tokens/main.json"), v.to_string()).unwrap();

        let mut d = daemon_with(&t, "voipbin_tokend=debug", &[]);
        d.wait_log("implausible (over a day)", 1, WAIT);
        d.wait_log("reusing the token found on disk", 1, WAIT);
        wait_expiry(&t, "main", &d);
        std::thread::sleep(Duration::from_millis(300));
        // The token on disk is reused as it is: no new login, no crash.
        assert_eq!(s.logins_ok(), 1, "{skew}\n{}", d.log());
        assert_no_panic(&d);
        stop(&mut d, Signal::SIGTERM);
    }
}

#[test]
fn a_token_output_with_an_mtime_in_year_33658_is_reused_not_a_crash() {
    // tmpfs (as /run is) stores such an mtime; ext4 stops at 2446.
    let Ok(shm) = tempfile::Builder::new()
        .prefix("tokend-test-")
        .tempdir_in("/dev/shm")
    else {
        eprintln!("SKIPPED: no /dev/shm here");
        return;
    };
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let out = shm.path().join("main.token");
    std::fs::write(&out, s.mint_token(USER, Duration::from_secs(3600))).unwrap();
    let far = nix::sys::time::TimeVal::new(999_999_999_999, 0);
    nix::sys::stat::utimes(&out, &far, &far).unwrap();
    if std::fs::metadata(&out).unwrap().modified().unwrap()
        < UNIX_EPOCH + Duration::from_secs(999_999_999_000)
    {
        eprintln!("SKIPPED: this filesystem does not store such an mtime");
        return;
    }
    t.write_config(
        &s.base_url(),
        &credential("main", &output(out.to_str().unwrap(), "raw")),
    );
    let mut d = daemon_with(&t, "voipbin_tokend=debug", &[]);
    d.wait_log("reusing the token found on disk", 1, WAIT);
    let expires = wait_expiry(&t, "main", &d);
    assert!(
        expires < OffsetDateTime::now_utc() + time::Duration::hours(2),
        "{expires}"
    );
    assert_eq!(s.login_requests(), 0, "{}", d.log());
    assert_no_panic(&d);
    stop(&mut d, Signal::SIGTERM);
}
