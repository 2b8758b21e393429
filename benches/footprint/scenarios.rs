//! The measured scenarios, one section each: start to first token, idle,
//! reload, renewals (tokens and access keys), many credentials.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;

use crate::fixtures::{BenchDir, credential, standin, user};
use crate::measure::{Bench, Memory, Switches, appeared, clock_ticks, count_outputs, fs_of, raw_login};
use crate::report::{Row, Stats};
use crate::{IDLE_SETTLE, Mode, Res, WEEK};

/// Start to first token on disk, against the server's own answer time.
pub(crate) fn start(mode: &Mode, bin: &Path) -> Res<Vec<Row>> {
    let week = standin(WEEK, 1)?;
    let answer = Stats::of(
        (0..(mode.runs * 3))
            .map(|_| raw_login(week.addr(), &user(0).0))
            .collect::<Res<Vec<_>>>()?,
    );
    eprintln!("footprint: start to first token ({} runs)", mode.runs);
    let mut to_token = Vec::new();
    let mut to_request = Vec::new();
    let mut request_to_token = Vec::new();
    for _ in 0..mode.runs {
        let dir = BenchDir::new(
            &week.base_url(),
            &[credential(0, &[("main.token", "raw")], 0.8, 0.05)],
        )?;
        let before = week.requests().len();
        let wall = SystemTime::now();
        let daemon = Bench::spawn(bin, &dir)?;
        let appeared = appeared(&dir.path("out/main.token"), Duration::from_secs(10))?;
        let elapsed = appeared - daemon.started;
        to_token.push(elapsed);
        if let Some(record) = week.requests().get(before) {
            let arrived = record.at.duration_since(wall).unwrap_or_default();
            to_request.push(arrived);
            request_to_token.push(elapsed.saturating_sub(arrived));
        }
        daemon.stop()?;
    }
    let to_token = Stats::of(to_token);
    let to_request = Stats::of(to_request);
    let request_to_token = Stats::of(request_to_token);
    let overhead = to_token.median.saturating_sub(answer.median);
    Ok(vec![
        Row::new("start to first token on disk", "< 20 ms + server answer")
            .measured(format!(
                "{} (server answer {}; spawn to login request {}, login request to file on disk {})",
                to_token.ms(),
                answer.ms(),
                to_request.ms(),
                request_to_token.ms()
            ))
            .pass(overhead < Duration::from_millis(20)),
    ])
}

/// Resident memory, threads, CPU and wake-ups of an idle daemon (1
/// credential, token fresh).
pub(crate) fn idle(mode: &Mode, bin: &Path) -> Res<Vec<Row>> {
    let week = standin(WEEK, 1)?;
    eprintln!(
        "footprint: idle for {:?} (after {:?} to settle)",
        mode.idle, IDLE_SETTLE
    );
    let dir = BenchDir::new(
        &week.base_url(),
        &[credential(0, &[("main.token", "raw")], 0.8, 0.05)],
    )?;
    let daemon = Bench::spawn(bin, &dir)?;
    appeared(&dir.path("out/main.token"), Duration::from_secs(10))?;
    let threads_start = daemon.status_value("Threads:")?;
    std::thread::sleep(IDLE_SETTLE);
    let logins_before = week.logins_ok();
    let mut switches = Switches::default();
    switches.sample(&daemon)?;
    let switches0 = switches.total();
    let (cpu0, ticks0) = (daemon.cpu_ns()?, daemon.ticks()?);
    let idle_end = Instant::now() + mode.idle;
    while Instant::now() < idle_end {
        std::thread::sleep(Duration::from_secs(1).min(idle_end.saturating_duration_since(Instant::now())));
        switches.sample(&daemon)?;
    }
    let (cpu1, ticks1) = (daemon.cpu_ns()?, daemon.ticks()?);
    if week.logins_ok() != logins_before {
        return Err("the daemon logged in while its token was fresh".into());
    }
    let per_minute = 60.0 / mode.idle.as_secs_f64();
    let idle_cpu_ms = (cpu1 - cpu0) as f64 / 1e6 * per_minute;
    let idle_ticks_ms = (ticks1 - ticks0) as f64 * 1000.0 / clock_ticks() as f64 * per_minute;
    let idle_wakeups = (switches.total() - switches0) as f64 * per_minute;
    let memory = daemon.memory()?;
    let threads = daemon.status_value("Threads:")?;
    daemon.stop()?;
    let proxy_row = idle_with_a_proxy(bin, &week.base_url())?;
    Ok(vec![
        Row::new("resident memory, 1 credential, idle", "< 6 MiB")
            .measured(format!(
                "{} ({threads} threads idle, {threads_start} just after start)",
                memory.show()
            ))
            .pass(memory.rss < 6.0),
        proxy_row,
        Row::new("CPU while idle (token fresh)", "< 0.5 ms/min; no busy polling")
            .measured(format!(
                "{idle_cpu_ms:.3} ms/min ({idle_ticks_ms:.0} ms/min in clock ticks); \
                 {idle_wakeups:.1} context switches/min; over {} s",
                mode.idle.as_secs()
            ))
            .pass(idle_cpu_ms < 0.5 && idle_wakeups < 60.0),
    ])
}

/// Resident memory of an idle daemon with one credential and one
/// `[[proxy]]` listener (its worker threads started, no request yet).
fn idle_with_a_proxy(bin: &Path, base_url: &str) -> Res<Row> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = BenchDir::new(
        base_url,
        &[
            credential(0, &[("main.token", "raw")], 0.8, 0.05),
            format!("[[proxy]]\nlisten = \"127.0.0.1:{port}\"\ncredential = \"main\"\n"),
        ],
    )?;
    let daemon = Bench::spawn(bin, &dir)?;
    appeared(&dir.path("out/main.token"), Duration::from_secs(10))?;
    std::thread::sleep(IDLE_SETTLE);
    let memory = daemon.memory()?;
    let threads = daemon.status_value("Threads:")?;
    daemon.stop()?;
    Ok(Row::new(
        "resident memory, 1 credential and one [[proxy]] listener, idle",
        "< 6.5 MiB",
    )
    .measured(format!("{} ({threads} threads)", memory.show()))
    .pass(memory.rss < 6.5))
}

/// SIGHUP to a new output on disk, and a config edit to the same.
pub(crate) fn reload(mode: &Mode, bin: &Path) -> Res<Vec<Row>> {
    let week = standin(WEEK, 1)?;
    let dir = BenchDir::new(
        &week.base_url(),
        &[credential(0, &[("main.token", "raw")], 0.8, 0.05)],
    )?;
    let daemon = Bench::spawn(bin, &dir)?;
    appeared(&dir.path("out/main.token"), Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));

    eprintln!("footprint: SIGHUP to new output ({} runs)", mode.runs);
    let mut hup = Vec::new();
    for i in 0..mode.runs {
        let name = format!("hup-{i}.token");
        dir.write_config(&[credential(0, &[("main.token", "raw"), (&name, "raw")], 0.8, 0.05)])?;
        let t0 = Instant::now();
        daemon.signal(Signal::SIGHUP)?;
        hup.push(appeared(&dir.path(&format!("out/{name}")), Duration::from_secs(5))? - t0);
        // Let the watcher's (debounced, by then no-op) event for this write pass.
        std::thread::sleep(Duration::from_millis(600));
    }
    let hup = Stats::of(hup);

    eprintln!("footprint: config edit to reload ({} runs)", mode.runs);
    let mut edit = Vec::new();
    for i in 0..mode.runs {
        let name = format!("edit-{i}.token");
        let t0 = Instant::now();
        dir.write_config(&[credential(0, &[("main.token", "raw"), (&name, "raw")], 0.8, 0.05)])?;
        edit.push(appeared(&dir.path(&format!("out/{name}")), Duration::from_secs(5))? - t0);
        std::thread::sleep(Duration::from_millis(200));
    }
    let edit = Stats::of(edit);
    daemon.stop()?;
    Ok(vec![
        Row::new("SIGHUP to a new output on disk", "< 50 ms")
            .measured(hup.ms())
            .pass(hup.median < Duration::from_millis(50)),
        Row::new("config edit to reload (debounce 300 ms included)", "< 600 ms")
            .measured(edit.ms())
            .pass(edit.median < Duration::from_millis(600)),
    ])
}

/// The temp dir, and `/dev/shm` too when the temp dir is on a disk and
/// that is tmpfs: a figure that writes files is measured in both, which
/// shows the daemon's own cost apart from the disk's (see [`fs_of`]).
pub(crate) fn places() -> Vec<PathBuf> {
    let temp = std::env::temp_dir();
    let shm = Path::new("/dev/shm");
    let mut places = vec![temp.clone()];
    if !fs_of(&temp).starts_with("tmpfs") && fs_of(shm).starts_with("tmpfs") {
        places.push(shm.to_path_buf());
    }
    places
}

/// CPU and time per renewal: 1 s tokens renewed at half-life, 3 outputs;
/// then the same for an access key whose "day" lasts 1 s at the stand-in,
/// in each of [`places`].
pub(crate) fn renewal(mode: &Mode, bin: &Path) -> Res<Vec<Row>> {
    let mut rows = vec![renewals_of(mode, bin, false, &std::env::temp_dir())?];
    rows.extend(rotations(mode, bin)?);
    Ok(rows)
}

/// Key rotations in each of [`places`], each followed by the same file
/// work done alone there (the platform's floor under it).
pub(crate) fn rotations(mode: &Mode, bin: &Path) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    for place in places() {
        rows.push(renewals_of(mode, bin, true, &place)?);
        rows.push(crate::floor::rotation_files(&place)?);
    }
    Ok(rows)
}

/// One credential renewed (or rotated) over and over for `mode.renew`, its
/// files under `place`: CPU per renewal from the process clock, and the
/// time from the request reaching the server to the new secret in the env
/// output (the output is polled every millisecond from here).
pub(crate) fn renewals_of(mode: &Mode, bin: &Path, key: bool, place: &Path) -> Res<Row> {
    let what = if key { "key rotations" } else { "renewals" };
    eprintln!("footprint: {what} for {:?} in {}", mode.renew, place.display());
    let fast = standin(Duration::from_secs(1), 1)?;
    let outputs = [("main.token", "raw"), ("main.env", "env"), ("main.json", "json")];
    let cred = if key {
        // A day lasts a second: keys of "2d" live 2 s and are rotated after
        // 1 s, still valid, as in service. (Keys of 1 s were rotated at
        // their expiry, so every rotation also adopted the bootstrap key.)
        fast.set_key_time_scale(1.0 / 86_400.0);
        let (_, bootstrap) = fast.create_key("bootstrap", 365 * 86_400);
        let mut c = String::from(
            "[[credential]]\nname = \"main\"\nkind = \"access-key\"\nbootstrap-key-file = \"boot.key\"\n\
             lifetime = \"2d\"\ngrace = \"1s\"\nrenew-at = 0.5\njitter = 0.0\n",
        );
        for (path, format) in outputs {
            c.push_str(&format!(
                "\n[[credential.output]]\npath = \"out/{path}\"\nformat = \"{format}\"\n"
            ));
        }
        (c, Some(bootstrap))
    } else {
        (credential(0, &outputs, 0.5, 0.0), None)
    };
    let dir = BenchDir::new_in(place, &fast.base_url(), &[cred.0])?;
    if let Some(bootstrap) = cred.1 {
        fs::write(dir.path("boot.key"), format!("{bootstrap}\n"))?;
        fs::set_permissions(
            dir.path("boot.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
    }
    let daemon = Bench::spawn(bin, &dir)?;
    let env = dir.path("out/main.env");
    appeared(&dir.path("out/main.json"), Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(1200));
    let request_path = if key { "/v1.0/accesskeys" } else { "/auth/login" };
    let count = || {
        fast.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == request_path && r.status == 200)
            .count()
    };
    let (cpu0, ticks0, n0) = (daemon.cpu_ns()?, daemon.user_system_ticks()?, count());
    let switches0 = daemon.context_switches()?;
    let changes = watch_changes(&env, mode.renew);
    let (cpu1, ticks1, n1) = (daemon.cpu_ns()?, daemon.user_system_ticks()?, count());
    let switches1 = daemon.context_switches()?;
    let memory = daemon.memory()?;
    if let Ok(dir) = std::env::var("FOOTPRINT_LOG_DIR") {
        let name = if key { "key-rotations" } else { "renewals" };
        fs::write(Path::new(&dir).join(format!("{name}.log")), daemon.log())?;
    }
    daemon.stop()?;
    let renewals = n1 - n0;
    if renewals == 0 {
        return Err(format!("no {what} happened with 1 s lifetimes").into());
    }
    // Each change of the output, against the last request before it.
    let requests: Vec<SystemTime> = fast
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == request_path)
        .map(|r| r.at)
        .collect();
    let latencies: Vec<Duration> = changes
        .iter()
        .filter_map(|c| {
            let at = requests.iter().filter(|r| *r <= c).max()?;
            c.duration_since(*at).ok()
        })
        .collect();
    let latency = Stats::of(latencies);
    let per_renewal_ms = (cpu1 - cpu0) as f64 / 1e6 / renewals as f64;
    let tick_ms = |t: u64| t as f64 * 1000.0 / clock_ticks() as f64 / renewals as f64;
    let (user_ms, system_ms) = (tick_ms(ticks1.0 - ticks0.0), tick_ms(ticks1.1 - ticks0.1));
    // Threads that exited in the window take their switches with them:
    // a floor, not a count.
    let switches = switches1.saturating_sub(switches0) as f64 / renewals as f64;
    let figure = if key {
        "CPU and time per key rotation (create + save state + 3 outputs; deletions included)"
    } else {
        "CPU and time per renewal (login + decode + 3 outputs written and fsynced)"
    };
    let figure = format!("{figure}, in {} ({})", place.display(), fs_of(place));
    let row = if key {
        Row::new(figure, "< 2 ms CPU")
    } else {
        Row::new(figure, "report")
    };
    let row = row.measured(format!(
        "{per_renewal_ms:.2} ms CPU (clock ticks: user {user_ms:.1} ms + system {system_ms:.1} ms; \
             {switches:.1} context switches each); \
             request to output {}; {renewals} {what} in {} s; resident {:.1} MiB",
        latency.ms(),
        mode.renew.as_secs(),
        memory.rss
    ));
    Ok(if key {
        row.pass(per_renewal_ms < 2.0)
    } else {
        row.report()
    })
}

/// When `path`'s content changed during `window` (polled every 1 ms).
pub(crate) fn watch_changes(path: &Path, window: Duration) -> Vec<SystemTime> {
    let end = Instant::now() + window;
    let mut last = fs::read(path).unwrap_or_default();
    let mut changes = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
        let now = fs::read(path).unwrap_or_default();
        if now != last && !now.is_empty() {
            changes.push(SystemTime::now());
            last = now;
        }
    }
    changes
}

/// 1000 credentials, one output each, no login rate limit: in the temp
/// dir's file system, and (when that is a disk) on tmpfs too, which shows
/// the daemon's own cost apart from the disk's (see [`fs_of`]).
pub(crate) fn many(mode: &Mode, bin: &Path) -> Res<Vec<Row>> {
    const MANY: usize = 1000;
    eprintln!("footprint: {MANY} credentials ({} runs)", mode.big_runs);
    let server = standin(WEEK, MANY)?;
    let creds: Vec<String> = (0..MANY)
        .map(|i| credential(i, &[(&format!("c{i}.token"), "raw")], 0.8, 0.05))
        .collect();
    let mut rows = Vec::new();
    for place in places() {
        let mut all_on_disk = Vec::new();
        let mut cpu = Vec::new();
        let (mut reload, mut reload_cpu) = (Vec::new(), Vec::new());
        let mut memory = Memory::default();
        let mut threads = 0;
        // Each run's files are removed after the last run, not before the
        // next: on ext4 without a journal, making files just after
        // deleting thousands costs up to 1.5 ms each (see `fs_of`), which
        // no daemon start on a server pays.
        let mut done = Vec::new();
        for _ in 0..mode.big_runs {
            let dir = BenchDir::new_in(&place, &server.base_url(), &creds)?;
            let daemon = Bench::spawn(bin, &dir)?;
            let out = dir.path("out");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if count_outputs(&out)? >= MANY {
                    all_on_disk.push(daemon.started.elapsed());
                    cpu.push(Duration::from_nanos(daemon.cpu_ns()?));
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{MANY} outputs did not appear within 60 s").into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(500));
            memory = memory.max(daemon.memory()?);
            threads = threads.max(daemon.status_value("Threads:")?);
            // A reload of the whole config that adds one output.
            let mut edited = creds.clone();
            edited[0] = credential(0, &[("c0.token", "raw"), ("reload.token", "raw")], 0.8, 0.05);
            dir.write_config(&edited)?;
            let (t0, cpu0) = (Instant::now(), daemon.cpu_ns()?);
            daemon.signal(Signal::SIGHUP)?;
            reload.push(appeared(&dir.path("out/reload.token"), Duration::from_secs(10))? - t0);
            // The watcher's event for the same write, debounced, follows.
            std::thread::sleep(Duration::from_millis(800));
            reload_cpu.push(Duration::from_nanos(daemon.cpu_ns()? - cpu0));
            daemon.stop()?;
            done.push(dir);
        }
        // Before the runs' files go: deleting thousands just before making
        // thousands is dearer on ext4 without a journal (see above).
        let floor = crate::floor::start_files(&place, MANY, mode.big_runs)?;
        drop(done);
        let all_on_disk = Stats::of(all_on_disk);
        let cpu = Stats::of(cpu);
        let (reload, reload_cpu) = (Stats::of(reload), Stats::of(reload_cpu));
        rows.push(
            Row::new(
                format!(
                    "1000 credentials, 1 output each, `max-logins-per-second = 0`, in {} ({})",
                    place.display(),
                    fs_of(&place)
                ),
                "all on disk < 0.5 s; resident < 16 MiB",
            )
            .measured(format!(
                "{} (daemon CPU {}); resident {} ({threads} threads)",
                all_on_disk.s(),
                cpu.s(),
                memory.show()
            ))
            .pass(all_on_disk.median < Duration::from_millis(500) && memory.rss < 16.0),
        );
        rows.push(floor);
        rows.push(
            Row::new(
                format!(
                    "SIGHUP reload of those 1000 credentials adding one output, in {}",
                    place.display()
                ),
                "report",
            )
            .measured(format!(
                "{} to the new output; daemon CPU {} (both reloads: the signal's and the watcher's)",
                reload.s(),
                reload_cpu.s()
            ))
            .report(),
        );
    }
    Ok(rows)
}
