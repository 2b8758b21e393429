//! Proxy benchmark: the daemon's local API proxy against nginx doing the
//! same job, side by side in one run, same upstream, same load generator.
//!
//! `cargo bench --bench proxy` starts an upstream (a minimal hyper server
//! answering a small JSON, as a child process: see `upstream`), then loads,
//! with `wrk` (same `-t -c -d` for every row, after a short warm-up):
//!
//! - (a) the upstream directly (wrk sends the credential itself);
//! - (b) nginx, `proxy_pass` with a fixed `Authorization` header and
//!   upstream keep-alive;
//! - (c) the daemon's proxy: A SLOT, `targets::daemon_proxy`, filled in
//!   once the proxy exists.
//!
//! and prints a markdown table: requests/s, p50, p99, errors, and the
//! peak resident memory of the process under test during the load (nginx:
//! master and workers together).
//!
//! Needs `wrk` and `nginx` (`apt-get install -y nginx-light wrk`, as root):
//! without wrk it prints why and exits 0; without nginx its row says so.
//! `PROXY_BENCH_LOAD` changes the load (default `-t2 -c64 -d10s`),
//! `PROXY_BENCH_NGINX_WORKERS` nginx's workers (default `auto`). Not part
//! of `.ci/run`: the figures depend on the machine.

mod targets;
mod upstream;
mod wrk;

use std::time::Duration;

use crate::targets::Target;

const MIB: f64 = 1024.0 * 1024.0;
const DEFAULT_LOAD: &str = "-t2 -c64 -d10s";

fn main() {
    if std::env::var_os(upstream::UPSTREAM_ENV).is_some() {
        upstream::serve_forever();
    }
    if let Err(e) = run() {
        eprintln!("proxy bench: error: {e}");
        std::process::exit(1);
    }
}

/// One row of the table.
struct Row {
    name: String,
    result: Result<(wrk::Measured, Option<u64>), String>,
}

fn run() -> Result<(), String> {
    if !wrk::available() {
        println!("proxy bench: SKIPPED: wrk is not installed (as root: apt-get install -y nginx-light wrk)");
        return Ok(());
    }
    wrk::self_check()?;
    let load_text = std::env::var("PROXY_BENCH_LOAD").unwrap_or_else(|_| DEFAULT_LOAD.into());
    let load: Vec<String> = load_text.split_whitespace().map(String::from).collect();
    let warmup: Vec<String> = load
        .iter()
        .map(|a| {
            if a.starts_with("-d") {
                "-d2s".to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let dir = tempfile::Builder::new()
        .prefix("proxy-bench-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let token = login_token()?;
    let upstream = upstream::start(&token)?;
    eprintln!("proxy bench: upstream on {}, load `{load_text}`", upstream.addr);
    // The upstream refuses a request without a credential: a row without
    // errors proves its proxy added one.
    match targets::status_of(upstream.addr, &[])? {
        401 => {}
        other => {
            return Err(format!(
                "the upstream answered {other} without a credential, not 401"
            ));
        }
    }

    let mut rows = vec![measure(
        "(a) direct",
        Ok(targets::direct(&upstream)),
        &load,
        &warmup,
    )];
    rows.push(measure(
        "(b) nginx proxy_pass",
        targets::nginx(&upstream, dir.path()),
        &load,
        &warmup,
    ));
    rows.push(match targets::daemon_proxy(&upstream, dir.path()) {
        Some(target) => measure("(c) voipbin-tokend proxy", target, &load, &warmup),
        None => Row {
            name: "(c) voipbin-tokend proxy".into(),
            result: Err("not measured".into()),
        },
    });
    print_table(&rows, &load_text);
    Ok(())
}

/// A real login token (a JWT with VoIPBIN's `expire` claim, valid a day)
/// for the upstream to hand out at `POST /auth/login`.
fn login_token() -> Result<String, String> {
    let standin =
        voipbin_tokend_standin::StandIn::start(Default::default()).map_err(|e| format!("stand-in: {e}"))?;
    let token = standin.mint_token("bench@example.com", Duration::from_secs(86_400));
    standin.shutdown();
    Ok(token)
}

/// Warm-up, then the measured run, sampling the target's memory meanwhile.
fn measure(row: &str, target: Result<Target, String>, load: &[String], warmup: &[String]) -> Row {
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            return Row {
                name: row.into(),
                result: Err(e),
            };
        }
    };
    eprintln!("proxy bench: {} ...", target.name);
    let result = (|| {
        match targets::status_of(target.addr, &target.headers)? {
            200 => {}
            other => return Err(format!("answered {other} to a plain request, not 200")),
        }
        wrk::run(warmup, &target.headers, &target.url)?;
        let pid = target.pid;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = None;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let now = targets::rss_with_children(pid);
                    peak = peak.max(now);
                    std::thread::sleep(Duration::from_millis(100));
                }
                peak
            })
        };
        let measured = wrk::run(load, &target.headers, &target.url);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.join().unwrap_or(None);
        Ok((measured?, peak))
    })();
    Row {
        name: target.name.clone(),
        result,
    }
}

fn print_table(rows: &[Row], load: &str) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Proxy benchmark: `wrk {load}` per row, {cores} cores, one upstream (a hyper server answering a small JSON)"
    );
    println!();
    println!("| target | requests/s | p50 | p99 | errors | RSS (peak under load) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        match &row.result {
            Ok((m, rss)) => println!(
                "| {} | {:.0} | {} | {} | {} | {} |",
                row.name,
                m.requests_per_sec,
                ms(m.p50),
                ms(m.p99),
                m.errors,
                rss.map_or("?".to_string(), |b| format!("{:.1} MiB", b as f64 / MIB))
            ),
            Err(e) => println!("| {} | - | - | - | - | {e} |", row.name),
        }
    }
    println!();
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
