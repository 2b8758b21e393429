//! A local stand-in of the VoIPBIN login API.
//!
//! The `demo` command, the integration tests and the benchmarks need a server
//! that answers like `https://api.voipbin.net` does (see
//! `voipbin-api.md`), on `127.0.0.1` and without credentials. A stand-in that
//! only ever says yes tests nothing, so this one is honest: it says no in
//! every way the real server does, and it can be told to misbehave in the
//! ways a real network and a real server sometimes do.
//!
//! # What it models
//!
//! - `POST /auth/login` with `{"username", "password"}`. Success is a 200 with
//!   `{"username", "token"}` and a `Set-Cookie: token=...` header. Every
//!   failure (wrong password, unknown user, malformed JSON, a missing or empty
//!   field, a body over 64 KiB) is a 400 with an empty body, as the real server
//!   cannot tell them apart either. Any other method on that path is a 404
//!   (the real server's router has no "405" for it), and so is
//!   `/v1.0/auth/login`.
//! - A per-client-IP token bucket on `/auth/*` (10 requests/s, burst 20 by
//!   default, like the real one). Over the limit: 429 with `Retry-After: 1` and
//!   a `RESOURCE_EXHAUSTED` JSON body.
//! - The token: an HS256 JWT signed with a random per-server key whose claims
//!   are exactly the real login token's: `type`, `agent` and the `expire`
//!   STRING (microseconds, UTC), with no `exp`, `iat` or `nbf`. Other claim
//!   styles ([`ClaimStyle`]) cover older servers and the standard claims.
//! - `GET /v1.0/me`, which answers 200 with the agent when the token (from a
//!   `token` cookie, else `Authorization: Bearer `, else `?token=`, in the real
//!   server's order) verifies and has not expired, else 401.
//! - For testing a proxy: `ANY /v1.0/echo[/...]` answers what arrived
//!   (method, path, query, headers, body length and SHA-256, chunked or not)
//!   as JSON, and `GET /v1.0/bytes/{n}` streams `n` bytes of
//!   [`BYTES_PATTERN`]; both want a valid token or access key (401
//!   otherwise), as the real API does.
//! - An `X-Request-Id` header on every answer.
//!
//! # Faults on demand
//!
//! [`Fault`] describes one misbehaving answer to a login: a canned status,
//! a delay, a body dribbled out slowly, a huge body, a broken or expired
//! token, a skewed server clock, or a dropped connection. Faults are consumed
//! one per login from a FIFO script ([`StandIn::script`]); when the script is
//! empty the sticky default ([`StandIn::set_default`]) applies. A fault is
//! applied after the rate limiter (which sits in front of the real server's
//! handler) and before the password check: it models the server side, so a
//! fault answers whatever the credentials are.
//!
//! # Running it
//!
//! [`StandIn::start`] runs the server on its own OS thread with its own
//! single-threaded tokio runtime, so plain synchronous `#[test]` functions
//! and code on any runtime can use it. [`StandIn::start_in_runtime`] runs it
//! on the caller's runtime instead. Either way, dropping the [`StandIn`] (or
//! calling [`StandIn::shutdown`]) stops it.
//!
//! Passwords and tokens never appear in `Debug` output or in logs; the key
//! and the generated ids come from `fastrand`, which is fine for a local
//! stand-in and nothing else.
//!
//! # Layout
//!
//! - this file: the public face: [`StandIn`] and its controls;
//! - `model`: its options, records and claim styles, the constant answers, time and id helpers;
//! - `faults`: [`Fault`], the misbehaving answers a test can script;
//! - `state`: the shared state of one server and its access keys;
//! - `answer`: the answer helpers the handlers share;
//! - `server`: the accept loop, the login and `me` handlers;
//! - `keys`: the access-key API (`/v1.0/accesskeys`), with a time scale for short key lifetimes;
//! - `echo`: the echo and bytes endpoints a proxy is tested against;
//! - `body`: response bodies (whole, dribbled, huge, a streamed pattern).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

mod answer;
mod body;
mod echo;
mod faults;
mod hs256;
mod keys;
mod model;
mod server;
mod state;
#[cfg(test)]
mod tests;

pub use faults::Fault;
use model::add_or_now;
pub use model::{
    AuthVia, BYTES_PATH, BYTES_PATTERN, COOKIE_MAX_AGE_SECS, ClaimStyle, ECHO_PATH, LOGIN_PATH, LoginRecord,
    MAX_BODY_BYTES, ME_PATH, RateLimit, StandInOptions, format_expire, format_http_date,
};
use server::serve;
pub use state::{
    ACCESSKEYS_PATH, KeyInfo, ListPaging, MIN_KEY_EXPIRE_SECS, PERMISSION_CUSTOMER_ADMIN,
    PERMISSION_CUSTOMER_AGENT, PERMISSION_PROJECT_SUPER_ADMIN,
};
use state::{Inner, User};

/// A running stand-in server. Dropping it stops it.
pub struct StandIn {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StandIn {
    /// Starts on its own OS thread with its own tokio runtime, so plain sync
    /// tests and any runtime can use it. Returns once it is listening.
    pub fn start(opts: StandInOptions) -> io::Result<StandIn> {
        let bind = bind_addr(&opts);
        let inner = Arc::new(Inner::new(opts));
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
        let server = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("voipbin-standin".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match listen(bind).await {
                        Ok(listening) => listening,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(listener.1));
                    serve(listener.0, server, stop_rx).await;
                });
            })?;
        let addr = match ready_rx.recv() {
            Ok(result) => result?,
            Err(_) => {
                return Err(io::Error::other("the stand-in thread ended before listening"));
            }
        };
        debug!(%addr, "stand-in listening on its own thread");
        Ok(StandIn {
            inner,
            addr,
            stop,
            thread: Some(thread),
            task: None,
        })
    }

    /// Runs on the caller's tokio runtime (for the `demo` command).
    pub async fn start_in_runtime(opts: StandInOptions) -> io::Result<StandIn> {
        let bind = bind_addr(&opts);
        let inner = Arc::new(Inner::new(opts));
        let (stop, stop_rx) = watch::channel(false);
        let (listener, addr) = listen(bind).await?;
        let task = tokio::spawn(serve(listener, Arc::clone(&inner), stop_rx));
        debug!(%addr, "stand-in listening");
        Ok(StandIn {
            inner,
            addr,
            stop,
            thread: None,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, to use as the API base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every `POST /auth/login` that reached the server, including those
    /// rejected, faulted or rate limited.
    pub fn login_requests(&self) -> u64 {
        self.inner.login_requests.load(Ordering::SeqCst)
    }

    /// Valid tokens issued by logins (normal answers, and the
    /// [`Fault::Delay`], [`Fault::Dribble`] and [`Fault::ServerDateSkew`]
    /// answers, which carry a valid token).
    pub fn logins_ok(&self) -> u64 {
        self.inner.logins_ok.load(Ordering::SeqCst)
    }

    /// Appends faults to the script: each login consumes the first one left.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.state().script.extend(faults);
    }

    /// How many scripted faults are still waiting.
    pub fn pending_faults(&self) -> usize {
        self.inner.state().script.len()
    }

    /// The fault used when the script is empty; `None` answers normally.
    pub fn set_default(&self, fault: Option<Fault>) {
        self.inner.state().default_fault = fault;
    }

    /// Adds a user or changes its password.
    pub fn set_password(&self, username: &str, password: &str) {
        let mut state = self.inner.state();
        match state.users.get_mut(username) {
            Some(user) => user.password = password.to_owned(),
            None => {
                state
                    .users
                    .insert(username.to_owned(), User::new(username, password));
            }
        }
    }

    /// Removes a user: its logins are then rejected like unknown ones.
    pub fn remove_user(&self, username: &str) {
        self.inner.state().users.remove(username);
    }

    /// Lifetime of the tokens issued from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.inner.state().lifetime = lifetime;
    }

    /// Claim style of the tokens issued from now on.
    pub fn set_claim_style(&self, style: ClaimStyle) {
        self.inner.state().claim_style = style;
    }

    /// Changes the rate limit (`None` disables it); buckets start full.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        let mut state = self.inner.state();
        state.rate_limit = limit;
        state.buckets.clear();
    }

    /// The requests answered so far, oldest first (every path, not only
    /// logins; at most the last 100 000).
    pub fn requests(&self) -> Vec<LoginRecord> {
        self.inner.state().records.iter().cloned().collect()
    }

    /// Revokes every token handed out so far: each is answered 401 from
    /// now on, as a token the server revoked; tokens of later logins work.
    /// Returns how many were revoked.
    pub fn revoke_tokens(&self) -> usize {
        let mut state = self.inner.state();
        let issued: Vec<String> = state.issued.iter().cloned().collect();
        state.revoked.extend(issued);
        state.revoked.len()
    }

    /// Every token handed out so far (valid, expired or malformed), oldest
    /// first, so tests can check that none of them shows up in logs.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.state().issued.iter().cloned().collect()
    }

    /// Signs a token for `username` that expires `lifetime` from now, in the
    /// current claim style, without a login (for example to seed an output
    /// file). It is recorded in [`issued_tokens`](Self::issued_tokens) but not
    /// counted as a login.
    ///
    /// # Panics
    ///
    /// Only if HS256 signing of plain claims fails, which it cannot.
    pub fn mint_token(&self, username: &str, lifetime: Duration) -> String {
        let style = self.inner.state().claim_style;
        let now = SystemTime::now();
        let claims = self.inner.claims(username, style, now, add_or_now(now, lifetime));
        let token = self
            .inner
            .sign(&claims)
            .expect("HS256 signing of plain claims cannot fail");
        self.inner.hand_out(&token);
        token
    }

    /// Stops accepting connections, drops open ones and waits for the
    /// server thread (if any) to end. Dropping the `StandIn` does the same.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for StandIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<String> = self.inner.state().users.keys().cloned().collect();
        users.sort();
        f.debug_struct("StandIn")
            .field("addr", &self.addr)
            .field("users", &users)
            .field("login_requests", &self.login_requests())
            .field("logins_ok", &self.logins_ok())
            .finish_non_exhaustive()
    }
}

impl StandIn {
    /// Makes a key as the admin page would (`expire` seconds, scaled by the
    /// key time scale, no minimum), returning its id and the key itself.
    pub fn create_key(&self, name: &str, expire_secs: u64) -> (String, String) {
        let (info, secret) = self.inner.keys().create(name, "", expire_secs);
        (info.id, secret)
    }

    /// Every key ever made, deleted ones included, oldest first.
    pub fn keys(&self) -> Vec<KeyInfo> {
        self.inner.keys().keys.iter().map(|k| k.info.clone()).collect()
    }

    /// Every key secret ever made, oldest first, so tests can check that
    /// none of them shows up in a log.
    pub fn issued_keys(&self) -> Vec<String> {
        self.inner.keys().keys.iter().map(|k| k.secret.clone()).collect()
    }

    /// Deletes a key out of band (the admin page); false if unknown or gone.
    pub fn delete_key(&self, id: &str) -> bool {
        let mut keys = self.inner.keys();
        match keys.find(id) {
            Some(k) if k.info.tm_delete.is_none() => {
                k.info.tm_delete = Some(SystemTime::now());
                true
            }
            _ => false,
        }
    }

    /// Keys made from now on live `expire × scale` seconds (1.0: real time;
    /// 1e-4 makes a day about 8.6 s).
    pub fn set_key_time_scale(&self, scale: f64) {
        self.inner.keys().scale = scale;
    }

    /// Appends faults for key requests (see the module docs of `keys`).
    pub fn script_keys(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.keys().script.extend(faults);
    }

    /// Appends faults for key creations only (`POST`), e.g. a creation
    /// whose answer is lost.
    pub fn script_key_creations(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.keys().post_script.extend(faults);
    }

    /// Requests that reached `/v1.0/accesskeys`.
    pub fn key_requests(&self) -> u64 {
        self.inner.keys().requests
    }

    /// Sets an agent's permission bits (default: customer admin).
    pub fn set_permission(&self, username: &str, permission: u64) {
        if let Some(user) = self.inner.state().users.get_mut(username) {
            user.permission = permission;
        }
    }

    /// How the key list is paged from now on (see [`ListPaging`]).
    pub fn set_key_list_paging(&self, paging: ListPaging) {
        self.inner.keys().paging = paging;
    }

    /// Requests for the key list (`GET /v1.0/accesskeys`) answered so far.
    pub fn key_list_requests(&self) -> u64 {
        self.inner.keys().list_requests
    }

    /// Appends faults for key deletions only (`DELETE`), e.g. one 401
    /// (`Fault::status(401)`) for the next deletion.
    pub fn script_key_deletions(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.keys().delete_script.extend(faults);
    }

    /// Live keys (not deleted, not expired) named `name`.
    pub fn live_keys_named(&self, name: &str) -> usize {
        let now = SystemTime::now();
        self.inner
            .keys()
            .keys
            .iter()
            .filter(|k| k.info.name == name && k.info.tm_delete.is_none() && k.info.tm_expire > now)
            .count()
    }

    /// Every `DELETE /v1.0/accesskeys/{id}` from now on is answered with
    /// `status` (for example 500) and deletes nothing; `None`: normal again.
    pub fn set_fail_deletes(&self, status: Option<u16>) {
        self.inner.keys().fail_deletes = status;
    }

    /// From now on a key creation (`POST`) makes the key and then waits
    /// `delay` before answering: a client that dies meanwhile leaves a key
    /// it never saw (an orphan). `None`: answer at once again.
    pub fn set_create_answer_delay(&self, delay: Option<Duration>) {
        self.inner.keys().create_answer_delay = delay;
    }

    /// Every answer (logins and key calls) from now on carries a `Date`
    /// header this many seconds off real time (`None`: the real time). A
    /// fault that sets its own `Date` ([`Fault::ServerDateSkew`]) wins.
    /// Only the header lies: keys, tokens and their times are real.
    pub fn set_date_offset(&self, seconds: Option<i64>) {
        self.inner.state().date_offset = seconds;
    }
}

fn bind_addr(opts: &StandInOptions) -> SocketAddr {
    opts.bind
        .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
}

async fn listen(bind: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
