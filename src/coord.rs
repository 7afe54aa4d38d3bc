//! The seam between the lifecycles and where coordination lives: the write lock, the turn queue
//! and the fence state behind one small trait, and `Files`, its implementation in the sidecar.
//!
//! A second backend (say etcd: lease-bound keys ordered by revision in place of tickets and
//! flocks) implements `Coordinator` and leaves `lifecycle` untouched.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::child;
use crate::config::{Config, Verbosity};
use crate::exit::Failure;
use crate::fence::{Fence, State, Tracker, Verdict};
use crate::lock::{self, Notice, Waited};
use crate::queue::{Ahead, Queue, Ticket};
use crate::sidecar::{self, Holder, Sidecar};
use crate::signal::{self, Received, Signals};

/// How long a wait lasts before it is worth a notice on stderr.
pub const NOTICE_AFTER: Duration = Duration::from_secs(1);

/// Which write-lock acquisition this is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The first one of a run.
    Enter,
    /// Back after waiting for the turn ahead.
    Turn,
    /// Back after the prompt window, to check the fence.
    AfterWindow,
}

/// How a wait for the turn ahead ended.
#[derive(Debug)]
pub enum TurnWait {
    /// That turn ended (or its owner died): look again.
    Ended,
    TimedOut,
    Interrupted(Received),
}

/// The coordination primitives a lifecycle is written against.
pub trait Coordinator {
    /// This process's proof of life; leaves the queue when dropped.
    type Ticket;
    /// The write lock, held; released when dropped.
    type WriteLock;
    /// The live turn just ahead of ours.
    type Ahead;

    /// Issue this process's ticket, under the write lock (so ticket order is lock order).
    fn issue(&self, lock: &Self::WriteLock) -> Result<Self::Ticket, Failure>;
    fn ticket_id(ticket: &Self::Ticket) -> u64;
    /// Take the write lock; `ticket` is `None` only for the first acquisition, before `issue`.
    fn write_lock(
        &self,
        ticket: Option<&Self::Ticket>,
        phase: Phase,
    ) -> Result<Self::WriteLock, Failure>;
    /// Take a place at the end of the turn queue (the write lock makes turn order lock order).
    fn join(&self, lock: &Self::WriteLock, ticket: &mut Self::Ticket) -> Result<(), Failure>;
    /// The nearest live turn ahead of ours (dead ones are reaped); `None` when it is our turn.
    fn ahead(&self, ticket: &Self::Ticket) -> Result<Option<Self::Ahead>, Failure>;
    /// Wait, without the write lock, until that turn ends.
    fn wait_turn(&self, ahead: Self::Ahead, deadline: Option<Instant>)
    -> Result<TurnWait, Failure>;
    /// The file's state now, recording an outside change if there was one.
    fn observe(&self, lock: &Self::WriteLock) -> Result<State, Failure>;
    fn fence(&self, lock: &Self::WriteLock) -> Result<Fence, Failure>;
    fn check(&self, lock: &Self::WriteLock, fence: &Fence) -> Result<Verdict, Failure>;
    /// Record the file's change since `before` as an owned write.
    fn publish_owned(&self, lock: &Self::WriteLock, before: &State) -> Result<State, Failure>;
    /// Leave the queue and give up the ticket.
    fn leave(&self, ticket: Self::Ticket) -> Result<(), Failure>;
}

/// Coordination through files and flocks in the sidecar.
pub struct Files<'a> {
    config: &'a Config,
    sidecar: Sidecar,
    signals: &'a Signals,
    queue: Queue,
    /// When this process started waiting for its turn, and whether it has said so.
    turn_wait_started: Cell<Option<Instant>>,
    turn_noticed: Cell<bool>,
}

impl<'a> Files<'a> {
    #[must_use]
    pub fn new(config: &'a Config, sidecar: Sidecar, signals: &'a Signals) -> Self {
        let queue = Queue::new(&sidecar);
        Self {
            config,
            sidecar,
            signals,
            queue,
            turn_wait_started: Cell::new(None),
            turn_noticed: Cell::new(false),
        }
    }

    fn tracker(&self) -> Tracker<'_> {
        Tracker::new(&self.sidecar, self.config.key.path())
    }

    /// How long before a wait's notice is due, or `None` for no notice.
    fn notice_after(&self) -> Option<Duration> {
        match self.config.verbosity {
            Verbosity::Quiet => None,
            Verbosity::Verbose => Some(Duration::ZERO),
            Verbosity::Normal => Some(NOTICE_AFTER),
        }
    }

    /// ", held by pid 123 (run) for 4s", or nothing when no holder is recorded.
    fn held_by(&self) -> String {
        self.sidecar
            .read_holder()
            .map(|h| format!(", held by {}", h.describe()))
            .unwrap_or_default()
    }
}

impl Files<'_> {
    /// Publish that we hold the write lock, under `ticket`. The record is for display only:
    /// failing to write it is no reason to fail the run.
    fn record_holder(&self, ticket: &Ticket) {
        let config = self.config;
        if let Err(failure) = self.sidecar.write_holder(&Holder {
            pid: std::process::id(),
            mode: config.mode.name().to_owned(),
            ticket: Some(ticket.id()),
            since_ms: sidecar::now_ms(),
            command: child::command_name(&config.argv),
        }) {
            config.detail(&failure.to_string());
        }
    }
}

/// The write lock, held; its holder record is removed just before the lock is released.
pub struct WriteGuard {
    sidecar: Sidecar,
    _held: lock::Held,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.sidecar.clear_holder();
    }
}

impl Coordinator for Files<'_> {
    type Ticket = Ticket;
    type WriteLock = WriteGuard;
    type Ahead = Ahead;

    fn issue(&self, _lock: &WriteGuard) -> Result<Ticket, Failure> {
        let ticket = self.queue.issue(
            self.config.mode.name(),
            &child::command_name(&self.config.argv),
        )?;
        self.record_holder(&ticket);
        Ok(ticket)
    }

    fn ticket_id(ticket: &Ticket) -> u64 {
        ticket.id()
    }

    fn write_lock(&self, ticket: Option<&Ticket>, phase: Phase) -> Result<WriteGuard, Failure> {
        let config = self.config;
        let file = self.sidecar.open_lock_target()?;
        let session = config.key.path();
        let mut say = || {
            config.notice(&format!(
                "waiting for the write lock on {}{}",
                session.display(),
                self.held_by()
            ));
        };
        let notice = self.notice_after().map(|after| Notice {
            after,
            say: &mut say,
        });
        let started = Instant::now();
        let deadline = signal::deadline(config.lock_timeout);
        let after = if phase == Phase::AfterWindow {
            " after the prompt window"
        } else {
            ""
        };
        let held = match lock::wait_exclusive(file, deadline, self.signals, notice) {
            Ok(Waited::Held(held)) => held,
            Ok(Waited::TimedOut) => {
                let what = if config.lock_timeout.is_zero() {
                    format!("the write lock is busy{after}{}", self.held_by())
                } else {
                    format!(
                        "timed out after {} waiting for the write lock{after}{}",
                        humantime::format_duration(config.lock_timeout),
                        self.held_by()
                    )
                };
                return Err(Failure::new(config.conflict_code, what, session));
            }
            Ok(Waited::Interrupted(received)) => {
                return Err(Failure::interrupted(
                    received.signal,
                    &format!("the write lock{after}"),
                    session,
                ));
            }
            Err(e) => {
                return Err(Failure::io(
                    "cannot take the write lock",
                    &e,
                    &self.sidecar.path(sidecar::LOCK),
                ));
            }
        };
        let guard = WriteGuard {
            sidecar: self.sidecar.clone(),
            _held: held,
        };
        if let Some(ticket) = ticket {
            self.record_holder(ticket);
        }
        config.detail(&format!(
            "took the write lock on {} after {}ms",
            session.display(),
            started.elapsed().as_millis()
        ));
        Ok(guard)
    }

    fn join(&self, _lock: &WriteGuard, ticket: &mut Ticket) -> Result<(), Failure> {
        let findings = self.queue.join(ticket)?;
        for finding in findings.describe() {
            self.config
                .detail(&format!("repaired the queue: {finding}"));
        }
        Ok(())
    }

    fn ahead(&self, ticket: &Ticket) -> Result<Option<Ahead>, Failure> {
        let (ahead, findings) = self.queue.ahead(ticket)?;
        for finding in findings.describe() {
            self.config
                .detail(&format!("repaired the queue: {finding}"));
        }
        Ok(ahead)
    }

    fn wait_turn(&self, ahead: Ahead, deadline: Option<Instant>) -> Result<TurnWait, Failure> {
        let config = self.config;
        let now = Instant::now();
        let started = *self.turn_wait_started.get().get_or_insert(now);
        self.turn_wait_started.set(Some(started));
        let count = ahead.count;
        let next = ahead.record.clone();
        let mut say = || {
            let next = next
                .as_ref()
                .map(|r| {
                    format!(
                        ", next is pid {} ({}) for {}",
                        r.pid,
                        r.command,
                        sidecar::age(r.joined_ms)
                    )
                })
                .unwrap_or_default();
            config.notice(&format!(
                "waiting for a prompt turn on {}: {count} ahead{next}",
                config.key.path().display()
            ));
            self.turn_noticed.set(true);
        };
        let notice = self
            .notice_after()
            .filter(|_| !self.turn_noticed.get())
            .map(|after| Notice {
                after: after.saturating_sub(now - started),
                say: &mut say,
            });
        match lock::wait_exclusive(ahead.file, deadline, self.signals, notice) {
            // We only wanted the wake-up: the guard drops here and frees their ticket again.
            Ok(Waited::Held(_)) => Ok(TurnWait::Ended),
            Ok(Waited::TimedOut) => Ok(TurnWait::TimedOut),
            Ok(Waited::Interrupted(received)) => Ok(TurnWait::Interrupted(received)),
            Err(e) => Err(Failure::io(
                "cannot wait for the turn ahead",
                &e,
                config.key.path(),
            )),
        }
    }

    fn observe(&self, _lock: &WriteGuard) -> Result<State, Failure> {
        self.tracker().observe()
    }

    fn fence(&self, _lock: &WriteGuard) -> Result<Fence, Failure> {
        self.tracker().fence()
    }

    fn check(&self, _lock: &WriteGuard, fence: &Fence) -> Result<Verdict, Failure> {
        self.tracker().check(fence, self.config.strict)
    }

    fn publish_owned(&self, _lock: &WriteGuard, before: &State) -> Result<State, Failure> {
        self.tracker().publish_owned(before)
    }

    fn leave(&self, ticket: Ticket) -> Result<(), Failure> {
        ticket.leave()
    }
}
