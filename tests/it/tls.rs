//! TLS: a loopback TLS front (a test CA and a server certificate for
//! 127.0.0.1 and localhost, made here with rcgen) that terminates TLS and
//! passes the bytes on to the plain stand-in. Loopback only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const WAIT: Duration = Duration::from_secs(20);

/// A CA (PEM) and a server certificate and key it signed for 127.0.0.1 and localhost.
fn test_pki() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "voipbin-tokend test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer).unwrap();
    (
        ca_cert.pem(),
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// Terminates TLS on 127.0.0.1:PORT and relays to `upstream`. Stops on drop.
struct TlsFront {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    fn start(upstream: SocketAddr, cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> TlsFront {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (ok, bad) = (accepted.clone(), refused.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let (acceptor, ok, bad) = (acceptor.clone(), ok.clone(), bad.clone());
                    tokio::spawn(async move {
                        let mut tls = match acceptor.accept(tcp).await {
                            Ok(tls) => tls,
                            Err(_) => {
                                bad.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        };
                        ok.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                    });
                }
            });
        });
        TlsFront {
            addr,
            accepted,
            refused,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The standard test config with `ca_file` (if any) in [api].
fn tls_config(t: &TestDir, base_url: &str, ca_file: Option<&str>) {
    let mut text = config_text(base_url, &credential("main", &output("main.token", "raw")));
    if let Some(ca) = ca_file {
        text = text.replacen("[api]\n", &format!("[api]\nca-file = \"{ca}\"\n"), 1);
    }
    std::fs::write(t.config_path(), text).unwrap();
}

fn both(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn logins_over_https_work_with_the_test_ca_in_ca_file() {
    let s = standin(Duration::from_secs(3600));
    let (ca_pem, cert, key) = test_pki();
    let front = TlsFront::start(s.addr(), cert, key);
    let t = TestDir::new();
    std::fs::write(t.path("ca.pem"), &ca_pem).unwrap();
    tls_config(&t, &front.base_url(), Some("ca.pem"));

    let out = t.run(&["check", "-c", t.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let d = t.daemon();
    let tok = wait_file(&t.path("main.token"), WAIT, || d.log());
    assert_eq!(s.issued_tokens(), std::slice::from_ref(&tok));
    assert!(front.accepted.load(Ordering::SeqCst) >= 1);
    assert_eq!(front.refused.load(Ordering::SeqCst), 0);

    // And renewals go the same way.
    d.signal(Signal::SIGUSR1);
    wait_for(
        WAIT,
        "a second token over TLS",
        || s.logins_ok() >= 2 && t.read("main.token").as_deref() != Some(tok.as_str()),
        || d.log(),
    );
}

#[test]
fn without_ca_file_logins_fail_with_a_tls_error_and_the_old_token_stays() {
    let s = standin(Duration::from_secs(3600));
    let (ca_pem, cert, key) = test_pki();
    let front = TlsFront::start(s.addr(), cert, key);
    let t = TestDir::new();
    std::fs::write(t.path("ca.pem"), &ca_pem).unwrap();
    // A token already on disk, not yet due: reused at start.
    let old = s.mint_token(USER, Duration::from_secs(3600));
    std::fs::write(t.path("main.token"), &old).unwrap();
    std::fs::set_permissions(
        t.path("main.token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    tls_config(&t, &front.base_url(), None);
    let d = t.daemon();
    d.wait_log("reusing the token found on disk", 1, WAIT);

    d.signal(Signal::SIGUSR1);
    d.wait_log("renewal failed again", 4, WAIT);
    let log = d.log();
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("renewal failed"))
        .collect();
    assert_eq!(warns.len(), 1, "one WARN for repeated TLS failures:\n{log}");
    assert!(
        warns[0].contains("certificate") || warns[0].contains("UnknownIssuer"),
        "not a TLS error: {}",
        warns[0]
    );
    // The front counts a refused handshake once its side of it ends, which
    // may be just after the daemon logged the failure.
    wait_for(
        WAIT,
        "5 handshakes refused by the front",
        || front.refused.load(Ordering::SeqCst) >= 5,
        || d.log(),
    );
    assert_eq!(s.login_requests(), 0, "a login got through without TLS trust");
    assert_eq!(t.read("main.token").as_deref(), Some(old.as_str()));

    // The CA is added to the config: the reload heals it.
    tls_config(&t, &front.base_url(), Some("ca.pem"));
    d.signal(Signal::SIGHUP);
    wait_for(
        WAIT,
        "a token over TLS after the reload",
        || {
            s.logins_ok() >= 1
                && t.read("main.token")
                    .is_some_and(|x| x != old && x.starts_with("eyJ"))
        },
        || d.log(),
    );
}

#[test]
fn a_ca_file_that_is_not_pem_exits_78_naming_ca_file() {
    let t = TestDir::new();
    let (ca_pem, _, key) = test_pki();
    let key_pem = match &key {
        PrivateKeyDer::Pkcs8(k) => {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(k.secret_pkcs8_der());
            format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
        }
        _ => unreachable!(),
    };
    let der = {
        use base64::Engine;
        let body: String = ca_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("text", b"this is not a certificate\n".to_vec()),
        ("DER, not PEM", der),
        ("a key, no certificate", key_pem.into_bytes()),
        (
            "a broken PEM block",
            b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n".to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        std::fs::write(t.path("ca.pem"), &bytes).unwrap();
        tls_config(&t, "https://127.0.0.1:9", Some("ca.pem"));
        for cmd in ["check", "run"] {
            let out = t.run(&[cmd, "-c", t.config_path().to_str().unwrap()]);
            let all = both(&out);
            assert_eq!(out.status.code(), Some(78), "{what}, {cmd}: {all}");
            assert!(all.contains("api.ca-file"), "{what}, {cmd}: {all}");
            assert!(all.contains("ca.pem"), "{what}, {cmd}: file not named: {all}");
        }
    }
    // A missing one too.
    tls_config(&t, "https://127.0.0.1:9", Some("no-such-ca.pem"));
    let out = t.run(&["check", "-c", t.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
    assert!(both(&out).contains("api.ca-file"));
}
