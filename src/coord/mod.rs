//! The seam between the lifecycles and where coordination lives: the write lock, the turn queue,
//! the fence state and the commit intent behind one trait, and the backend chosen in `main`.
//!
//! Nothing below this module knows about modes; nothing above it knows about files or locks.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod files;

use std::time::Instant;

use crate::commit::Intent;
use crate::exit::Failure;
use crate::fence::{Fence, State, Verdict};
use crate::signal::Received;

pub use files::layout::Phase as Activity;

/// Which write-lock acquisition this is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The first one of a run.
    Enter,
    /// Back after waiting for the turn ahead.
    Turn,
    /// Back after the window, to check the fence.
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
    /// This process's registration (and, once joined, its prompt turn); dropping it leaves.
    type Ticket;
    /// The write lock, held; released when dropped.
    type WriteLock;
    /// The live turn ahead of ours.
    type Ahead;

    /// Take the write lock; `ticket` is `None` only for the first acquisition, before `issue`.
    /// Whoever takes it first rolls back a commit its holder did not finish.
    fn write_lock(
        &self,
        ticket: Option<&Self::Ticket>,
        phase: Phase,
    ) -> Result<Self::WriteLock, Failure>;
    /// Register this process, under the write lock.
    fn issue(&self, lock: &Self::WriteLock) -> Result<Self::Ticket, Failure>;
    /// What names this wrapper's turn in kept outputs and `SESSIONLOCK_TICKET`.
    fn label(ticket: &Self::Ticket) -> String;
    /// Take a place at the end of the turn queue (under the write lock: turn order is lock order).
    fn join(&self, lock: &Self::WriteLock, ticket: &mut Self::Ticket) -> Result<(), Failure>;
    /// The nearest live turn ahead of ours; `None` when it is our turn.
    fn ahead(&self, ticket: &Self::Ticket) -> Result<Option<Self::Ahead>, Failure>;
    /// How many live turns are ahead of ours (for the event log; may cost a probe per turn).
    fn count_ahead(&self, ticket: &Self::Ticket) -> u64;
    /// Wait, without the write lock, until that turn ends.
    fn wait_turn(&self, ahead: Self::Ahead, deadline: Option<Instant>)
    -> Result<TurnWait, Failure>;
    /// Say what this wrapper is doing now (for `status`; never fails a run).
    fn activity(&self, ticket: &Self::Ticket, activity: Activity);
    /// The file's state now, recording an outside change if there was one.
    fn observe(&self, lock: &Self::WriteLock) -> Result<State, Failure>;
    fn fence(&self, lock: &Self::WriteLock) -> Result<Fence, Failure>;
    fn check(&self, lock: &Self::WriteLock, fence: &Fence) -> Result<Verdict, Failure>;
    /// Is the write lock still what it was when taken? (A lock file removed under a `run`
    /// means someone else may have locked a new one meanwhile.)
    fn verify(&self, lock: &Self::WriteLock) -> Result<(), Failure>;
    /// Record that an append is about to happen (see `commit`).
    fn record_intent(&self, lock: &Self::WriteLock, intent: &Intent) -> Result<(), Failure>;
    /// Record the file's change under this hold as an owned write, and finish any intent.
    fn publish_owned(&self, lock: &Self::WriteLock) -> Result<State, Failure>;
    /// Forget an intent whose append was rolled back.
    fn clear_intent(&self, lock: &Self::WriteLock) -> Result<(), Failure>;
    /// Leave the queue and give up the registration.
    fn leave(&self, ticket: Self::Ticket) -> Result<(), Failure>;
}
