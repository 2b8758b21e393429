//! The things measured: (a) the upstream itself, (b) nginx doing the
//! proxy's job, (c) the daemon's proxy (a slot for now). Each is a
//! [`Target`]: where `wrk` sends its load and which processes' memory
//! counts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::upstream::Upstream;

/// The header the upstream wants, as nginx and wrk's direct run send it.
pub const FIXED_AUTHORIZATION: &str = "Bearer bench-fixed-token";

/// One row of the table: what is loaded and whose memory counts.
pub struct Target {
    pub name: String,
    /// `http://127.0.0.1:PORT/v1.0/...`, the URL wrk loads.
    pub url: String,
    /// Where it listens (for [`status_of`]).
    pub addr: SocketAddr,
    /// Extra wrk headers (the direct run sends the credential itself).
    pub headers: Vec<String>,
    /// The process under test; its children (nginx's workers) count too.
    pub pid: u32,
    /// Keeps a child running for as long as the row is measured.
    pub _guard: Option<ChildGuard>,
}

/// Stops and reaps a child when dropped: SIGTERM first (nginx's master
/// then stops its workers, which SIGKILL would leave running), SIGKILL
/// after 5 s.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The path every row requests (a VoIPBIN-shaped list call).
pub const PATH: &str = "/v1.0/calls?page_size=10";

/// (a) The upstream, directly, with the credential sent by wrk.
pub fn direct(upstream: &Upstream) -> Target {
    Target {
        name: "(a) direct to the upstream".into(),
        url: format!("http://{}{PATH}", upstream.addr),
        addr: upstream.addr,
        headers: vec![format!("Authorization: {FIXED_AUTHORIZATION}")],
        pid: upstream.child.id(),
        _guard: None,
    }
}

/// (b) nginx: `proxy_pass` to the upstream with a fixed `Authorization`
/// header and upstream keep-alive, in `dir`. Its workers: `auto` (one per
/// core) unless `PROXY_BENCH_NGINX_WORKERS` says otherwise.
pub fn nginx(upstream: &Upstream, dir: &Path) -> Result<Target, String> {
    let Some(bin) = find_nginx() else {
        return Err("nginx not found (apt-get install -y nginx-light)".into());
    };
    let port = free_port()?;
    let workers = std::env::var("PROXY_BENCH_NGINX_WORKERS").unwrap_or_else(|_| "auto".into());
    let d = dir.display();
    let conf = format!(
        r#"worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream api {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 100000;
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "{FIXED_AUTHORIZATION}";
        }}
    }}
}}
"#,
        upstream = upstream.addr
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("write nginx.conf: {e}"))?;
    let child = Command::new(&bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    let guard = ChildGuard(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr, Duration::from_secs(10))
        .map_err(|e| format!("nginx: {e}; see {}", dir.join("nginx-error.log").display()))?;
    Ok(Target {
        name: format!("(b) nginx proxy_pass, keep-alive, {workers} workers"),
        url: format!("http://{addr}{PATH}"),
        addr,
        headers: Vec::new(),
        pid: guard.0.id(),
        _guard: Some(guard),
    })
}

/// (c) The daemon's proxy: `voipbin-tokend run` (the release build, or
/// `PROXY_BENCH_BIN`) with one login-token credential whose `[api]
/// base-url` is the upstream (it answers `POST /auth/login` with a real
/// token) and one `[[proxy]]` on a free loopback port. `None` when the
/// release binary cannot be built.
pub fn daemon_proxy(upstream: &Upstream, dir: &Path) -> Option<Result<Target, String>> {
    Some(start_daemon_proxy(upstream, dir))
}

fn start_daemon_proxy(upstream: &Upstream, dir: &Path) -> Result<Target, String> {
    let bin = daemon_binary()?;
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    std::fs::write(dir.join("password"), "bench-password\n").map_err(|e| format!("write password: {e}"))?;
    let config = format!(
        "[api]\nbase-url = \"http://{}\"\n\n[state]\ndir = \"{}\"\n\n\
         [[credential]]\nname = \"bench\"\nusername = \"bench@example.com\"\npassword-file = \"{}\"\n\n\
         [[proxy]]\nlisten = \"{addr}\"\ncredential = \"bench\"\n",
        upstream.addr,
        dir.join("state").display(),
        dir.join("password").display(),
    );
    let config_path = dir.join("tokend.toml");
    std::fs::write(&config_path, config).map_err(|e| format!("write config: {e}"))?;
    let child = Command::new(&bin)
        .args(["run", "-c"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    let guard = ChildGuard(child);
    wait_listening(addr, Duration::from_secs(10)).map_err(|e| format!("voipbin-tokend: {e}"))?;
    // Listening comes before the first token: wait for a 200.
    let start = Instant::now();
    while status_of(addr, &[])? != 200 {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("the daemon's proxy answered no 200 within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Target {
        name: "(c) voipbin-tokend proxy".into(),
        url: format!("http://{addr}{PATH}"),
        addr,
        headers: Vec::new(),
        pid: guard.0.id(),
        _guard: Some(guard),
    })
}

/// The daemon to measure: `PROXY_BENCH_BIN`, else the release build
/// (built now if needed: the figures are those of the shipped profile).
fn daemon_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("PROXY_BENCH_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--bin", "voipbin-tokend"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("cargo build --release: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --release failed: {status}"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    Ok(target.join("release").join("voipbin-tokend"))
}

/// The status of one `GET {PATH}` to `addr` with `headers` (bounded: 5 s).
pub fn status_of(addr: SocketAddr, headers: &[String]) -> Result<u16, String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut request = format!("GET {PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .map_err(|e| format!("answer from {addr}: {e}"))?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr} answered no HTTP status"))
}

/// A port free on 127.0.0.1 right now (bound and released: a small race,
/// fine on a benchmark machine).
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Waits until `addr` accepts a connection, at most `within`.
pub fn wait_listening(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < within {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listens on {addr} after {within:?}"))
}

fn find_nginx() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain(["/usr/sbin/nginx".into(), "/usr/local/sbin/nginx".into()])
        .find(|p| p.is_file())
}

/// Resident memory of `pid` and its children (nginx's workers), in bytes.
pub fn rss_with_children(pid: u32) -> Option<u64> {
    let own = rss(pid)?;
    let children: u64 = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent_of(*p) == Some(pid))
        .filter_map(rss)
        .sum();
    Some(own + children)
}

fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}
