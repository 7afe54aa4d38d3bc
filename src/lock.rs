//! Exclusive `flock(2)` locks: the only caller of fs4. A held lock is a guard that unlocks on drop;
//! a wait is bounded by a deadline and ended early by a terminating signal, never by polling.
//!
//! The kernel frees a flock when its last descriptor closes, so a crashed holder never leaves a
//! lock stuck. Every descriptor here is close-on-exec (std opens files with `O_CLOEXEC`).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::signal::{Received, Signals};

/// An exclusive lock, released when dropped.
#[derive(Debug)]
pub struct Held {
    file: File,
}

impl Held {
    /// The locked file.
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Closing the descriptor would free it too; unlock first so the release does not wait
        // for a descriptor someone may have duplicated.
        let _ = fs4::FileExt::unlock(&self.file);
    }
}

/// How a bounded wait ended.
#[derive(Debug)]
pub enum Waited {
    Held(Held),
    /// The deadline passed (or `--nonblock` found the lock busy).
    TimedOut,
    /// A terminating signal arrived first.
    Interrupted(Received),
}

/// Take the lock if it is free right now; give the file back if it is not.
pub fn try_exclusive(file: File) -> io::Result<Result<Held, File>> {
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(Ok(Held { file })),
        Err(fs4::TryLockError::WouldBlock) => Ok(Err(file)),
        Err(fs4::TryLockError::Error(e)) => Err(e),
    }
}

/// Wait for the lock with no bound: only for locks everyone holds for microseconds.
pub fn block_exclusive(file: File) -> io::Result<Held> {
    fs4::FileExt::lock(&file)?;
    Ok(Held { file })
}

/// Something to say once when a wait lasts longer than `after`.
pub struct Notice<'a> {
    pub after: Duration,
    pub say: &'a mut dyn FnMut(),
}

/// Wait for an exclusive lock on `file` until `deadline` (`None`: no limit).
///
/// The blocking `flock` runs in a helper thread; this thread sleeps in `poll` on the signal pipe
/// and on the helper's hang-up. A helper abandoned at the deadline keeps blocking; if it gets the
/// lock later, nobody receives the file and dropping it frees the lock again at once.
pub fn wait_exclusive(
    file: File,
    deadline: Option<Instant>,
    signals: &Signals,
    mut notice: Option<Notice<'_>>,
) -> io::Result<Waited> {
    let file = match try_exclusive(file)? {
        Ok(held) => return Ok(Waited::Held(held)),
        Err(file) => file,
    };
    if deadline.is_some_and(|at| at <= Instant::now()) {
        return Ok(Waited::TimedOut);
    }
    let started = Instant::now();
    let (done_read, done_write) = nix::unistd::pipe()?;
    let (sender, receiver) = mpsc::channel();
    thread::Builder::new().name("flock".into()).spawn(move || {
        let result = fs4::FileExt::lock(&file).map(|()| file);
        let _ = sender.send(result);
        drop(done_write);
    })?;
    loop {
        let notice_at = notice.as_ref().map(|n| started + n.after);
        let wake_at = match (deadline, notice_at) {
            (Some(d), Some(n)) => Some(d.min(n)),
            (d, n) => d.or(n),
        };
        let woken = signals.wait(Some(done_read.as_fd()), wake_at)?;
        if let Some(&received) = woken.signals.first() {
            return Ok(Waited::Interrupted(received));
        }
        if woken.ready {
            let file = receiver
                .recv()
                .map_err(|_| io::Error::other("the lock thread ended without an answer"))??;
            return Ok(Waited::Held(Held { file }));
        }
        let now = Instant::now();
        if notice_at.is_some_and(|at| at <= now)
            && let Some(n) = notice.take()
        {
            (n.say)();
        }
        if deadline.is_some_and(|at| at <= now) {
            return Ok(Waited::TimedOut);
        }
    }
}

/// Is `file` locked by someone right now? Takes and drops the lock for an instant if it is free;
/// only for lock files nobody contends for as a writer (tickets), never for the write lock.
pub fn is_locked(file: &File) -> io::Result<bool> {
    match fs4::FileExt::try_lock(file) {
        Ok(()) => {
            fs4::FileExt::unlock(file)?;
            Ok(false)
        }
        Err(fs4::TryLockError::WouldBlock) => Ok(true),
        Err(fs4::TryLockError::Error(e)) => Err(e),
    }
}
