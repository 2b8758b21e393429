//! Runs `wrk --latency` and reads what it prints: requests/s, p50, p99,
//! errors.

use std::process::Command;
use std::time::Duration;

/// What one wrk run measured.
pub struct Measured {
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Non-2xx/3xx answers plus socket errors: a proxy must have none.
    pub errors: u64,
}

/// True when `wrk` can be run.
pub fn available() -> bool {
    Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok_and(|o| !o.stdout.is_empty() || !o.stderr.is_empty())
}

/// `wrk {load} --latency [-H header]... url`, bounded by the `-d` it is given.
pub fn run(load: &[String], headers: &[String], url: &str) -> Result<Measured, String> {
    let mut cmd = Command::new("wrk");
    cmd.args(load).arg("--latency");
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    cmd.arg(url);
    let out = cmd.output().map_err(|e| format!("run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))
}

/// Reads wrk's `--latency` report.
pub fn parse(text: &str) -> Option<Measured> {
    let mut requests_per_sec = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = duration(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = duration(v.trim());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some(Measured {
        requests_per_sec: requests_per_sec?,
        p50: p50?,
        p99: p99?,
        errors,
    })
}

/// `250.00us`, `1.37ms`, `2.01s`, `1.50m`.
fn duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.trim().parse().ok()?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Checks the parser against a real report (run at every start: a wrk
/// that prints otherwise fails loudly rather than filling the table with
/// wrong numbers).
pub fn self_check() -> Result<(), String> {
    let sample = "Running 10s test @ http://127.0.0.1:8080/\n  2 threads and 64 connections\n  \
                  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   635.91us    0.89ms  12.92ms   93.69%\n    \
                  Req/Sec    56.20k     8.07k   62.00k    86.54%\n  Latency Distribution\n     50%  250.00us\n     \
                  75%  491.00us\n     90%    1.37ms\n     99%    4.29ms\n  1119620 requests in 10.00s, 1.61GB read\n  \
                  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\n\
                  Requests/sec: 111962.12\nTransfer/sec:    164.49MB\n";
    let m = parse(sample).ok_or("the sample report does not parse")?;
    let ok = (m.requests_per_sec - 111_962.12).abs() < 0.01
        && m.p50 == Duration::from_micros(250)
        && m.p99 == Duration::from_micros(4290)
        && m.errors == 7;
    if ok {
        Ok(())
    } else {
        Err("the wrk report parser reads the sample wrong".into())
    }
}
