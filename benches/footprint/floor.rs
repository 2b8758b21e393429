//! The file work of key rotations, and of a 1000-credential start, done
//! alone, with no daemon: what the file system charges for the steps that
//! keep a key from being lost and every output whole. Printed beside the
//! daemon's row for the same place, it splits that row into the
//! platform's floor and the daemon's own cost (HTTP, parsing, hand-offs,
//! wake-ups).
//!
//! One rotation here is what `strace` shows the daemon doing (see
//! docs/performance.md): the key state read; saved (a temp file written
//! and fsynced, renamed, `keys/` fsynced: the new key on disk before any
//! output); 3 outputs (each fsynced, renamed) and their directory fsynced;
//! the grace start saved (file fsynced); the key state read again; the
//! deletion saved (file fsynced); the status file (not fsynced). That is 8
//! fsyncs and 7 files made, as the daemon's.
//!
//! It is done twice more: without any fsync (to price them), and with the
//! key state in two fixed 4 KiB slots of one file rewritten in place, each
//! save a `pwrite` and an `fdatasync` (no file made, no rename, no
//! directory fsync): what the state-format change that docs/performance.md
//! discusses would save, measured before anyone builds it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};

use crate::Res;
use crate::measure::fs_of;
use crate::report::{Row, Stats};

/// Rotations per run and runs: about 2 s of file work on a slow disk.
const ROTATIONS: usize = 40;
const RUNS: usize = 3;
/// The pause between rotations: the file system's background writeback
/// runs in between, as it does between the daemon's rotations.
const PAUSE: Duration = Duration::from_millis(25);

/// The floor of one key rotation's CPU in `place`: the median (and
/// spread) of [`RUNS`] runs of [`ROTATIONS`] rotations' file work, this
/// thread's CPU clock; and the median without the fsyncs.
pub(crate) fn rotation_files(place: &Path) -> Res<Row> {
    let dir = place.join(format!("tokend-floor-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("keys"))?;
    fs::create_dir_all(dir.join("out"))?;
    let result = [Work::AsTheDaemon, Work::Unsynced, Work::TwoSlots]
        .into_iter()
        .map(|work| runs(&dir, work))
        .collect::<Res<Vec<_>>>();
    let _ = fs::remove_dir_all(&dir);
    let mut figures = result?;
    for figure in &mut figures {
        figure.sort_by(f64::total_cmp);
    }
    let median = |figure: &Vec<f64>| figure[figure.len() / 2];
    let (min, max) = (figures[0][0], figures[0][RUNS - 1]);
    let (as_daemon, without, slots) = (median(&figures[0]), median(&figures[1]), median(&figures[2]));
    Ok(Row::new(
        format!(
            "the same file work alone, no daemon (8 fsyncs, 7 files made, 2 reads a rotation), in {} ({})",
            place.display(),
            fs_of(place)
        ),
        "report",
    )
    .measured(format!(
        "{as_daemon:.2} ms CPU ({min:.2}–{max:.2}, {RUNS} runs of {ROTATIONS}), \
         {without:.2} ms without its fsyncs, {slots:.2} ms with the key state in two slots \
         rewritten in place: the platform's floor under the rotation row above"
    ))
    .report())
}

/// What a rotation's file work is made of.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    /// The daemon's: the key state saved as a new file each time.
    AsTheDaemon,
    /// The same without any fsync, to price them.
    Unsynced,
    /// The key state in two fixed slots of one file, rewritten in place.
    TwoSlots,
}

/// Per run: CPU ms per rotation of `work`.
fn runs(dir: &Path, work: Work) -> Res<Vec<f64>> {
    let sync = |wanted: Sync| {
        if work == Work::Unsynced {
            Sync::None
        } else {
            wanted
        }
    };
    let state = dir.join("keys/main.json");
    let content = vec![b'k'; 900];
    save(&state, &content, Sync::File)?;
    let slots_path = dir.join("keys/main.slots");
    let mut slots = Slots::new(&slots_path)?;
    let read_state = if work == Work::TwoSlots {
        slots_path.clone()
    } else {
        state.clone()
    };
    // One key-state save of this rotation, as `work` does it.
    let mut save_state = |sync: Sync| match work {
        Work::TwoSlots => slots.save(&content),
        _ => save(&state, &content, sync),
    };
    let outputs: Vec<PathBuf> = ["main.token", "main.env", "main.json"]
        .iter()
        .map(|name| dir.join("out").join(name))
        .collect();
    let secret = format!("VOIPBIN_API_KEY=vb_{}\n", "x".repeat(40));
    let mut figures = Vec::new();
    for _ in 0..RUNS {
        let mut cpu = Duration::ZERO;
        for _ in 0..ROTATIONS {
            std::thread::sleep(PAUSE);
            let before = thread_cpu()?;
            read(&read_state)?;
            save_state(sync(Sync::FileAndDir))?;
            for output in &outputs {
                save(output, secret.as_bytes(), sync(Sync::File))?;
            }
            if work != Work::Unsynced {
                File::open(dir.join("out"))?.sync_all()?;
            }
            save_state(sync(Sync::File))?;
            read(&read_state)?;
            save_state(sync(Sync::File))?;
            save(&dir.join("status.json"), &content, Sync::None)?;
            let after = thread_cpu()?;
            cpu += after - before;
        }
        figures.push(cpu.as_secs_f64() * 1000.0 / ROTATIONS as f64);
    }
    Ok(figures)
}

/// The files of a start with `credentials` login-token credentials with
/// one output each, made one after another in `place`, `runs` times: per
/// credential its login record (`tokens/`, not fsynced) and its output
/// (fsynced, renamed, the directory fsynced: the daemon's group commit
/// shares few of those fsyncs, about 860 of 1000 are its own). Wall time
/// and CPU; each run's files are removed after the last run, as the
/// daemon's are (deleting just before making costs more on ext4 without a
/// journal).
pub(crate) fn start_files(place: &Path, credentials: usize, runs: usize) -> Res<Row> {
    let dirs: Vec<PathBuf> = (0..runs)
        .map(|run| place.join(format!("tokend-floor-{}-{run}", std::process::id())))
        .collect();
    let result = dirs
        .iter()
        .map(|dir| one_start(dir, credentials))
        .collect::<Res<Vec<_>>>();
    for dir in &dirs {
        let _ = fs::remove_dir_all(dir);
    }
    let (wall, cpu): (Vec<Duration>, Vec<Duration>) = result?.into_iter().unzip();
    Ok(Row::new(
        format!(
            "the same start's files made alone, no daemon, one after another ({credentials} outputs \
             fsynced with their directory, {credentials} login records), in {} ({})",
            place.display(),
            fs_of(place)
        ),
        "report",
    )
    .measured(format!(
        "{} one after another (CPU {}): the file system's share of the daemon's CPU above; \
         the daemon overlaps the fsyncs' waits on its blocking threads, so its time can be shorter",
        Stats::of(wall).s(),
        Stats::of(cpu).s()
    ))
    .report())
}

fn one_start(dir: &Path, credentials: usize) -> Res<(Duration, Duration)> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("out"))?;
    fs::create_dir_all(dir.join("state/tokens"))?;
    let record = vec![b'r'; 120];
    let token = vec![b't'; 300];
    let (started, cpu) = (Instant::now(), thread_cpu()?);
    for i in 0..credentials {
        save(&dir.join(format!("state/tokens/c{i}.json")), &record, Sync::None)?;
        save(&dir.join(format!("out/c{i}.token")), &token, Sync::FileAndDir)?;
    }
    Ok((started.elapsed(), thread_cpu()? - cpu))
}

#[derive(PartialEq)]
enum Sync {
    None,
    File,
    FileAndDir,
}

/// A temp file beside `path` (0600, new), written, fsynced as told,
/// renamed over `path`.
fn save(path: &Path, content: &[u8], sync: Sync) -> Res<()> {
    let dir = path.parent().ok_or("no parent")?;
    let temp = dir.join(format!(
        ".{}.tmp",
        path.file_name().ok_or("no name")?.to_string_lossy()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(content)?;
    if sync != Sync::None {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(&temp, path)?;
    if sync == Sync::FileAndDir {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A key state kept in two fixed 4 KiB slots of one file, made once: a
/// save rewrites the older slot in place and `fdatasync`s it (a reader
/// would take the newer slot whose checksum holds).
struct Slots {
    file: File,
    next: u64,
    block: Vec<u8>,
}

impl Slots {
    fn new(path: &Path) -> Res<Slots> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.set_len(2 * 4096)?;
        file.sync_all()?;
        Ok(Slots {
            file,
            next: 0,
            block: vec![0; 4096],
        })
    }

    fn save(&mut self, content: &[u8]) -> Res<()> {
        self.block[..content.len()].copy_from_slice(content);
        self.file.write_all_at(&self.block, self.next * 4096)?;
        self.file.sync_data()?;
        self.next ^= 1;
        Ok(())
    }
}

fn read(path: &Path) -> Res<()> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    Ok(())
}

/// This thread's CPU time so far (its clock, in ns: `getrusage`'s user
/// and system split is estimated from clock ticks, too coarse for a
/// rotation's fraction of a millisecond).
fn thread_cpu() -> Res<Duration> {
    let clock = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)?;
    Ok(Duration::new(clock.tv_sec() as u64, clock.tv_nsec() as u32))
}
