//! The credential state machine, without a server.
use super::*;
use crate::config::Config;
use crate::secret::Secret;
use crate::token::{Claims, Validity};
use time::macros::datetime;

const CONFIG: &str = r#"
[api]
base-url = "http://127.0.0.1:9"
[[credential]]
name = "main"
username = "agent@example.com"
password = "hunter2-password"
[[credential.output]]
path = "/nonexistent/main.token"
"#;

fn credential() -> (Config, Credential) {
    let config = Config::parse(CONFIG, std::path::Path::new("/etc/t/config.toml")).unwrap();
    let api = Api::new(&config.api).unwrap();
    let cred = Credential::new(
        config.credentials[0].clone(),
        api,
        config.state_dir.clone(),
        None,
        Arc::new(Metrics::new()),
    );
    (config, cred)
}

const T0: OffsetDateTime = datetime!(2026-11-27 00:00 UTC);

/// Gives the credential a 7-day token obtained at T0, written everywhere.
fn hold_week_token(cred: &mut Credential) -> OffsetDateTime {
    let validity = Validity::new(
        Claims {
            expires_at: Some(T0 + time::Duration::days(7)),
            issued_at: None,
        },
        T0,
    );
    let due_at = schedule::due_at(&validity, &cred.cfg.renewal, 0.0);
    cred.held = Some(Held {
        token: Secret::new("eyJhbGciOiJIUzI1NiJ9.eyJzZWNyZXQiOiJwYXlsb2FkIn0.c2lnbmF0dXJl".into()),
        validity,
        obtained_at: T0,
        due_at,
        key_id: None,
        minted: false,
    });
    cred.stale = vec![false; cred.cfg.outputs.len()];
    due_at
}

#[test]
fn nothing_to_do_until_due() {
    let (_, mut cred) = credential();
    let due = hold_week_token(&mut cred);
    assert_eq!(cred.next_step(T0 + time::Duration::hours(1)), (Step::Renew, due));
    assert!(cred.is_fresh(T0 + time::Duration::hours(1)));
}

#[test]
fn no_token_means_log_in_now() {
    let (_, cred) = credential();
    assert_eq!(cred.next_step(T0), (Step::Renew, T0));
}

#[test]
fn clock_jump_forward_past_the_deadline_logs_in_at_once() {
    // Suspend/resume: the wall clock is suddenly past the due time
    // (and even past expiry). The next look at the clock acts.
    let (_, mut cred) = credential();
    hold_week_token(&mut cred);
    for jump in [time::Duration::days(6), time::Duration::days(30)] {
        let now = T0 + jump;
        let (step, at) = cred.next_step(now);
        assert_eq!(step, Step::Renew);
        assert!(at <= now);
    }
    // And the task never sleeps longer than MAX_SLEEP before looking.
    assert_eq!(
        schedule::sleep_for(T0, T0 + time::Duration::days(5)),
        schedule::MAX_SLEEP
    );
}

#[test]
fn clock_jump_backward_does_not_log_in() {
    let (_, mut cred) = credential();
    let due = hold_week_token(&mut cred);
    let now = T0 - time::Duration::days(3);
    assert_eq!(cred.next_step(now), (Step::Renew, due));
    assert!(due > now);
}

#[test]
fn a_stale_output_is_written_without_a_login() {
    let (_, mut cred) = credential();
    hold_week_token(&mut cred);
    cred.stale[0] = true;
    let now = T0 + time::Duration::hours(1);
    assert_eq!(cred.next_step(now), (Step::WriteOutputs, now));
}

#[test]
fn backoff_holds_the_next_attempt_but_sigusr1_clears_it() {
    let (_, mut cred) = credential();
    cred.fail(
        Step::Renew,
        FailureKind::Rejected,
        "credentials rejected (HTTP 400)".into(),
    );
    let (step, at) = cred.next_step(crate::now());
    assert_eq!(step, Step::Renew);
    assert!(at >= crate::now() + time::Duration::seconds(299), "{at}");
    cred.force_login();
    let now = crate::now();
    assert!(cred.next_step(now).1 <= now);
}

#[test]
fn renewal_change_reschedules_from_the_current_token() {
    let (config, mut cred) = credential();
    hold_week_token(&mut cred);
    let mut new = config.credentials[0].clone();
    new.renewal.renew_at = 0.5;
    new.renewal.jitter = 0.0;
    let api = cred.api.clone();
    cred.reconfigure(new, api, T0);
    assert_eq!(cred.held.as_ref().unwrap().due_at, T0 + time::Duration::hours(84));
    assert!(!cred.force_login, "same login: no new login");
}

#[test]
fn changed_username_forces_a_login() {
    let (config, mut cred) = credential();
    hold_week_token(&mut cred);
    let mut new = config.credentials[0].clone();
    new.login.as_mut().unwrap().username = "other@example.com".into();
    let api = cred.api.clone();
    cred.reconfigure(new, api, T0);
    assert_eq!(cred.next_step(T0).0, Step::Renew);
    assert!(cred.next_step(T0).1 <= T0);
}

#[test]
fn a_token_with_under_a_second_left_is_not_renewed_in_a_loop() {
    let (_, mut cred) = credential();
    let validity = Validity::new(
        Claims {
            expires_at: Some(T0 + time::Duration::milliseconds(300)),
            issued_at: None,
        },
        T0,
    );
    let due_at = schedule::due_at(&validity, &cred.cfg.renewal, 0.0);
    cred.held = Some(Held {
        token: Secret::new("eyJhbGciOiJIUzI1NiJ9.eyJ9.c2ln".into()),
        validity,
        obtained_at: T0,
        due_at,
        key_id: None,
        minted: false,
    });
    cred.stale = vec![false];
    // Expired at 300 ms, but the next login is a second after the last.
    let later = T0 + time::Duration::milliseconds(500);
    assert_eq!(
        cred.next_step(later),
        (Step::Renew, T0 + schedule::MIN_RENEW_DELAY)
    );
}

#[test]
fn debug_of_config_and_state_never_shows_secrets() {
    let (config, mut cred) = credential();
    hold_week_token(&mut cred);
    let held = cred.held.clone().unwrap();
    let texts = [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{held:?}"),
        format!("{:?}", cred.status(T0)),
        format!("{:?}", cred.api),
        format!(
            "{:?}",
            task::Command::Reconfigure(Box::new(config.credentials[0].clone()), cred.api.clone())
        ),
    ];
    let secrets = [
        "hunter2-password",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJzZWNyZXQiOiJwYXlsb2FkIn0",
        "c2lnbmF0dXJl",
    ];
    for text in &texts {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
