//! The task that drives a credential in the daemon ([`run`]) and the
//! one-shot pass of the `once` command ([`once`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::CredentialConfig;
use crate::export::ExportSender;
use crate::metrics::Metrics;
use crate::schedule;

use super::{Api, Credential, Step};

/// Commands from the daemon to a credential's task.
#[derive(Debug)]
pub enum Command {
    /// Log in now, even if not due and even during backoff (SIGUSR1).
    RenewNow,
    /// A reloaded config for this credential.
    Reconfigure(Box<CredentialConfig>, Arc<Api>),
    /// A reader (a proxy added by a reload) wants the secret: publish it
    /// on this channel from now on.
    Export(Arc<ExportSender>),
}

/// The daemon's end of a credential task's commands ([`commands`]).
/// Dropping it closes the channel: the task stops.
pub struct CommandSender(Arc<Inbox>);

/// The task's end of its commands.
pub struct CommandReceiver(Arc<Inbox>);

/// A queue of commands for one task: what an unbounded `mpsc` channel
/// did here, in about 100 bytes instead of 1 KiB (tokio's channel
/// allocates a block of 32 slots and a cache-padded state up front; with
/// 1000 credentials that was 1 MB for channels that carry a command a week).
struct Inbox {
    queue: Mutex<VecDeque<Command>>,
    /// Woken on a send and on close (one receiver: `notify_one` keeps the
    /// wake-up for a receiver that is not waiting yet).
    notify: Notify,
    closed: AtomicBool,
}

/// A channel of commands to one credential task.
pub fn commands() -> (CommandSender, CommandReceiver) {
    let inbox = Arc::new(Inbox {
        queue: Mutex::new(VecDeque::new()),
        notify: Notify::new(),
        closed: AtomicBool::new(false),
    });
    (CommandSender(inbox.clone()), CommandReceiver(inbox))
}

impl Inbox {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Command>> {
        // A panic while holding it leaves a queue that is still whole.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CommandSender {
    /// Queues `command`; gives it back if the task has stopped.
    pub fn send(&self, command: Command) -> Result<(), Command> {
        if Arc::strong_count(&self.0) < 2 {
            return Err(command);
        }
        self.0.queue().push_back(command);
        self.0.notify.notify_one();
        Ok(())
    }
}

impl Drop for CommandSender {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.notify.notify_one();
    }
}

/// Why [`CommandReceiver::try_recv`] gave nothing.
#[derive(Debug, PartialEq, Eq)]
enum Empty {
    Empty,
    Disconnected,
}

impl CommandReceiver {
    /// The next command; `None` once the sender is gone and the queue is
    /// empty. Cancel-safe: a command stays queued until it is returned.
    pub async fn recv(&mut self) -> Option<Command> {
        loop {
            match self.try_recv() {
                Ok(command) => return Some(command),
                Err(Empty::Disconnected) => return None,
                Err(Empty::Empty) => self.0.notify.notified().await,
            }
        }
    }

    fn try_recv(&mut self) -> Result<Command, Empty> {
        if let Some(command) = self.0.queue().pop_front() {
            return Ok(command);
        }
        if self.0.closed.load(Ordering::Acquire) {
            Err(Empty::Disconnected)
        } else {
            Err(Empty::Empty)
        }
    }
}

/// The daemon's task for one credential: act when due, sleep at most
/// [`schedule::MAX_SLEEP`] at a time (so a wall-clock deadline passed
/// during a suspend is noticed), obey commands, stop on `cancel`.
///
/// A step's future (a login or a key rotation: 2.5 KiB of state) is boxed
/// while it runs: a task spends almost all its life asleep, and with 1000
/// credentials an unboxed step would cost every sleeping task its size.
pub async fn run(mut cred: Credential, mut commands: CommandReceiver, cancel: CancellationToken) {
    // Steps done in a row without a sleep: a step that neither makes
    // progress nor moves its time forward would otherwise spin (no
    // watchdog, no health answers); past the limit, a pause.
    let mut in_a_row = 0u32;
    // `exec` mode: a key a child let go may start its deletion grace.
    let mut in_use = cred.in_use.clone();
    loop {
        let now = crate::now();
        let (step, mut at) = cred.next_step(now);
        if at <= now {
            in_a_row = in_a_row.saturating_add(1);
            if in_a_row > MAX_STEPS_IN_A_ROW {
                // A pause that still obeys commands and cancellation.
                warn!(step = ?step, "steps keep falling due at once; pausing a second");
                at = schedule::after(now, STEP_PAUSE);
            }
        }
        if at <= now {
            if step == Step::Renew {
                let renewed = Box::pin(cred.renew(&cancel)).await;
                if cancel.is_cancelled() {
                    break;
                }
                let Some((requests, reloads, exports)) = take_queued(&mut commands) else {
                    break;
                };
                if renewed {
                    Box::pin(cred.write_outputs(true)).await;
                }
                for (cfg, api) in reloads {
                    cred.reconfigure(*cfg, api, crate::now());
                }
                for export in exports {
                    cred.export_to(export, crate::now());
                }
                if requests > 0 {
                    // Held until a second after this renewal, if it
                    // succeeded: see `ANSWERED_BY_LAST_RENEWAL`.
                    info!(
                        requests,
                        "renewal requested during a renewal; one more follows for them all"
                    );
                    cred.force_login();
                }
            } else {
                Box::pin(cred.act(step, &cancel)).await;
            }
            if cancel.is_cancelled() {
                break;
            }
            // Let the other tasks (health, signals) run between steps.
            tokio::task::yield_now().await;
            continue;
        }
        in_a_row = 0;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            command = commands.recv() => match command {
                Some(Command::RenewNow) if cred.just_renewed() => {
                    if cred.force_login {
                        debug!("renewal requested; one is already on its way");
                    } else {
                        info!("renewal requested within a second of a successful renewal; requests are coalesced into one renewal when that second is over");
                    }
                    cred.force_login();
                    cred.source.on_renew_request();
                }
                Some(Command::RenewNow) => {
                    info!("renewal requested");
                    cred.force_login();
                    cred.source.on_renew_request();
                }
                Some(Command::Reconfigure(cfg, api)) => cred.reconfigure(*cfg, api, crate::now()),
                Some(Command::Export(export)) => cred.export_to(export, crate::now()),
                None => break,
            },
            _ = in_use.changed() => Box::pin(cred.children_changed()).await,
            _ = tokio::time::sleep(schedule::sleep_for(now, at)) => {}
        }
    }
    debug!("credential task stopped");
}

/// Steps due at once in a row before [`run`] pauses (a start does about
/// five: write, housekeep, renew, write, housekeep).
const MAX_STEPS_IN_A_ROW: u32 = 20;
const STEP_PAUSE: Duration = Duration::from_secs(1);

/// A reload taken from the queue, to apply after the new secret is written.
type Reload = (Box<CredentialConfig>, Arc<Api>);

/// What [`take_queued`] found: renewal requests, reloads, new readers.
type Queued = (u64, Vec<Reload>, Vec<Arc<ExportSender>>);

/// Takes the commands that queued up while a renewal waited for its turn
/// or ran, up to its answer: how many renewal requests, and the reloads in
/// order (to apply once the new secret is written: it belongs to the config
/// it was obtained under). `None` when the daemon dropped the channel.
///
/// All those renewal requests together get ONE more renewal, after this
/// one: a storm of SIGUSR1 costs at most two. The renewal in flight cannot
/// serve them, as it was sent before they were made: the token carries a
/// snapshot of the account taken at login, and the password was read before
/// it, so whoever changed either and then asked for a renewal must get one
/// that started after the request.
fn take_queued(commands: &mut CommandReceiver) -> Option<Queued> {
    let mut requests = 0u64;
    let mut reloads = Vec::new();
    let mut exports = Vec::new();
    loop {
        match commands.try_recv() {
            Ok(Command::RenewNow) => requests += 1,
            Ok(Command::Reconfigure(cfg, api)) => reloads.push((cfg, api)),
            Ok(Command::Export(export)) => exports.push(export),
            Err(Empty::Empty) => break,
            Err(Empty::Disconnected) => return None,
        }
    }
    Some((requests, reloads, exports))
}

/// The `once` pass for one credential: reuse what is on disk if it is not
/// due (unless `force`), else log in once; write every output. True if the
/// credential ends fresh.
pub async fn once(cfg: CredentialConfig, api: Arc<Api>, state_dir: std::path::PathBuf, force: bool) -> bool {
    let mut cred = Credential::new(cfg, api, state_dir, None, Arc::new(Metrics::new()));
    cred.one_shot = true;
    let now = crate::now();
    cred.adopt_from_disk(now).await;
    if force {
        cred.force_login();
    }
    // A login, then (if it failed) the still-valid token to new outputs.
    for _ in 0..2 {
        let now = crate::now();
        let (step, at) = cred.next_step(now);
        if at > now {
            break;
        }
        cred.act(step, &CancellationToken::new()).await;
    }
    // Access keys: the deletions past their grace (and an orphan sweep).
    if cred.failures == 0
        && let Some(at) = cred.source.housekeeping_at(crate::now())
        && at <= crate::now()
    {
        cred.housekeep().await;
    }
    // A renewal that was needed (or forced) and failed is a failure even if
    // the old secret is still on disk.
    let fresh = cred.is_fresh(crate::now()) && cred.failures == 0;
    for hook in std::mem::take(&mut cred.hooks).into_iter().flatten() {
        hook.finish().await;
    }
    if !fresh {
        error!(
            error = cred.last_error.as_deref().unwrap_or("outputs not written"),
            "credential failed"
        );
    }
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_arrive_in_order_and_a_dropped_sender_ends_the_task_after_the_queue() {
        let (tx, mut rx) = commands();
        // Queued before the receiver waits: the wake-up is kept.
        tx.send(Command::RenewNow).unwrap();
        tx.send(Command::RenewNow).unwrap();
        assert!(matches!(rx.recv().await, Some(Command::RenewNow)));
        assert_eq!(
            take_queued(&mut rx).map(|(n, r, e)| (n, r.len(), e.len())),
            Some((1, 0, 0))
        );
        // Woken while waiting.
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await.is_some();
            (first, rx.recv().await.is_none(), rx)
        });
        tokio::task::yield_now().await;
        tx.send(Command::RenewNow).unwrap();
        drop(tx);
        let (first, closed, mut rx) = waiting.await.unwrap();
        assert!(first && closed);
        assert!(take_queued(&mut rx).is_none());
    }

    #[test]
    fn a_send_to_a_stopped_task_gives_the_command_back() {
        let (tx, rx) = commands();
        drop(rx);
        assert!(matches!(tx.send(Command::RenewNow), Err(Command::RenewNow)));
    }
}
