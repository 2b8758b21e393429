//! The proxy against the stand-in on loopback, without the daemon around
//! it: credentials added and stripped, 401 → one renewal → replay.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use voipbin_tokend_standin::{StandIn, StandInOptions};

use super::forward::{self, Route};
use super::serve::{self, Listener};
use crate::export::Exported;
use crate::secret::Secret;

fn exported(secret: &str) -> Option<Exported> {
    Some(Exported {
        secret: Secret::new(secret.into()),
        expires_at: crate::now() + time::Duration::days(1),
        key_id: None,
    })
}

#[test]
fn a_refused_key_is_renewed_once_and_the_request_replayed() {
    let standin = StandIn::start(StandInOptions::default()).unwrap();
    let (_, good) = standin.create_key("k", 86_400);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (tx, rx) = watch::channel(exported("vb_notavalidkeyatallxxxxxxxxxxxxxxxx"));
        let tx = Arc::new(tx);
        let asked = Arc::new(AtomicUsize::new(0));
        let renew = {
            let (tx, asked, good) = (tx.clone(), asked.clone(), good.clone());
            Arc::new(move || {
                asked.fetch_add(1, Ordering::SeqCst);
                tx.send_replace(exported(&good));
            })
        };
        let cfg = crate::config::Config::parse(
            &format!("[api]\nbase-url = \"{}\"\n[[credential]]\nname = \"k\"\nusername = \"u@example.com\"\npassword = \"p\"\n[[credential.output]]\npath = \"/nonexistent/x\"\n", standin.base_url()),
            std::path::Path::new("/etc/t/config.toml"),
        )
        .unwrap();
        let route = Arc::new(Route {
            credential: "k".into(),
            is_key: true,
            base_url: standin.base_url().parse().unwrap(),
            secret: rx,
            renew,
            client: forward::client(&cfg.api).unwrap(),
            renewal_asked_for: Mutex::new(None),
            served: Default::default(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        });
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(serve::serve(Listener::Tcp(tcp), route, cancel.clone()));
        let client = reqwest::Client::new();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let r = client
                .get(format!("http://{addr}/v1.0/accesskeys?accesskey=vb_clientsownkey&page_size=5"))
                .header("authorization", "Bearer client")
                .timeout(Duration::from_secs(10))
                .send();
            answers.push(r);
        }
        for r in answers {
            assert_eq!(r.await.unwrap().status(), 200);
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1, "one renewal for every request that saw the key refused");
        cancel.cancel();
    });
}
