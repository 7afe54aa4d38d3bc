//! The modes' lifecycles, written once against `Coordinator`: `run` holds the write lock through
//! the child; `prompt` waits for its FIFO turn, releases the lock for the window and checks the
//! fence after it; `idle-wait` does the same without a turn. With `--append`, each ends in a
//! commit of the child's output under the write lock.
//!
//! The ticket (and with it the turn) is dropped on every way out, so a failure anywhere, a
//! timeout or a signal leaves no trace; after a SIGKILL the kernel drops the turn's lock, and
//! nothing else is left to reap. Output that is not committed is kept, and the error line says
//! where.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;

use crate::child;
use crate::commit::{self, Capture, KeepReason};
use crate::config::{Config, Mode};
use crate::coord::files::Files;
use crate::coord::{Activity, Coordinator, Phase, TurnWait};
use crate::events::Events;
use crate::exit::{self, Failure, Kind};
use crate::fence::Verdict;
use crate::sidecar::Sidecar;
use crate::signal::{self, Signals};
use serde_json::json;

/// What every lifecycle runs with.
struct Ctx<'a> {
    config: &'a Config,
    sidecar: &'a Sidecar,
    signals: &'a Signals,
    events: &'a Events,
}

/// Run the configured mode.
pub fn execute(config: &Config) -> Result<u8, Failure> {
    refuse_nesting(config)?;
    let events = Events::open(config)?;
    let outcome = execute_with(config, &events);
    match &outcome {
        Ok(code) => events.emit("exited", json!({ "code": code })),
        Err(failure) => events.emit(
            "failed",
            json!({ "code": failure.code(), "message": failure.to_string() }),
        ),
    }
    outcome
}

/// Refuse a call nested inside a wrapper of the same session that it would wait for: inside
/// `run` (it holds the write lock) or, for a turn, inside a `prompt` (it holds the turn).
fn refuse_nesting(config: &Config) -> Result<(), Failure> {
    let var = |name: &str| std::env::var_os(name);
    if var("SESSIONLOCK_SESSION").is_none_or(|s| std::path::Path::new(&s) != config.key.path()) {
        return Ok(());
    }
    let Some(pid) = var("SESSIONLOCK_PID")
        .and_then(|p| p.to_str()?.parse::<i32>().ok())
        .filter(|&p| p > 0 && is_ancestor(p))
    else {
        // The outer wrapper is gone (a stale environment), or is no wrapper of ours (a forged
        // one): nothing of it is held by this call's ancestry.
        return Ok(());
    };
    let outer = var("SESSIONLOCK_MODE").unwrap_or_default();
    let outer_turn = var("SESSIONLOCK_TICKET").is_some();
    let held = if outer == "run" {
        "the write lock"
    } else if outer_turn && config.turn {
        "the prompt turn"
    } else {
        return Ok(()); // a window: the lock is free, and this call takes no turn of its own
    };
    Err(Failure::new(
        Kind::Usage,
        format!(
            "this command runs inside `sessionlock {}` (pid {pid}) on the same session, which \
             holds {held}; a nested `sessionlock {}` would wait for itself",
            outer.to_string_lossy(),
            config.mode.name()
        ),
        config.key.path(),
    ))
}

/// Is `pid` this process's parent, or its parent's parent, ...? (Linux reads `/proc`, whatever
/// uid the ancestor runs as; elsewhere: is it alive, as far as kill(2) can tell.)
fn is_ancestor(pid: i32) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let mut at = nix::unistd::getppid().as_raw();
        for _ in 0..256 {
            if at == pid {
                return true;
            }
            if at <= 1 {
                return false;
            }
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{at}/stat")) else {
                return false;
            };
            let Some(parent) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
            else {
                return false;
            };
            at = parent;
        }
        false
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
    }
}

fn execute_with(config: &Config, events: &Events) -> Result<u8, Failure> {
    let signals = Signals::install().map_err(|e| {
        Failure::io("cannot install signal handlers", &e, config.key.path())
            .with_kind_if(Kind::Io, Kind::Software)
    })?;
    // The backend, chosen once: etcd when asked for, else the sidecar's lock file.
    #[cfg(feature = "etcd")]
    if let Some(target) = &config.coord {
        let etcd = crate::coord::etcd::Etcd::open(config, target, &signals)?;
        let ctx = Ctx {
            config,
            sidecar: etcd.sidecar(),
            signals: &signals,
            events,
        };
        return run_mode(&etcd, &ctx);
    }
    if let Some(fs) = crate::netfs::detect(config.key.dir()) {
        config.notice(&crate::netfs::warning(fs, config.key.dir()));
    }
    let files = Files::open(config, &signals)?;
    let ctx = Ctx {
        config,
        sidecar: files.sidecar(),
        signals: &signals,
        events,
    };
    let code = run_mode(&files, &ctx)?;
    config.detail(&format!("done with {}", config.key.path().display()));
    Ok(code)
}

fn run_mode<C: Coordinator>(c: &C, ctx: &Ctx<'_>) -> Result<u8, Failure> {
    match ctx.config.mode {
        Mode::Run => run(c, ctx),
        Mode::Prompt => prompt(c, ctx),
        Mode::IdleWait => idle_wait(c, ctx),
    }
}

/// `run`: hold the write lock for the whole child; publish its change as an owned write.
fn run<C: Coordinator>(c: &C, ctx: &Ctx<'_>) -> Result<u8, Failure> {
    let lock = write_lock(c, ctx, None, Phase::Enter)?;
    let mut ticket = c.issue(&lock)?;
    let lock = if ctx.config.turn {
        join(c, ctx, &lock, &mut ticket)?;
        take_turn(c, ctx, lock, &ticket)?
    } else {
        lock
    };
    c.observe(&lock)?;
    let label = C::label(&ticket);
    let (capture, stdout) = start_capture(ctx, &label)?;
    c.activity(&ticket, Activity::Running);
    let outcome = match run_child(ctx, &label, stdout) {
        Ok(ran) if ran.failed() => Ok(command_failed(ctx, capture, ran)),
        Ok(_) if let Err(failure) = c.verify(&lock) => {
            Err(keeping(failure, capture, KeepReason::NotCommitted))
        }
        Ok(_) => match capture {
            Some(capture) => commit_output(c, ctx, &lock, &label, capture, None).map(|()| 0),
            None => Ok(0),
        },
        Err(failure) => Err(failure),
    };
    // Whatever the child did to the file (and a rolled-back commit undid), it did under the
    // lock: it is owned.
    publish(c, &lock, outcome.is_ok());
    release(ctx, lock);
    leave(c, ctx, ticket);
    outcome
}

/// `prompt`: take the write lock, join the FIFO, wait (without the lock) for the turns ahead,
/// then the window; leave the queue on every way out.
fn prompt<C: Coordinator>(c: &C, ctx: &Ctx<'_>) -> Result<u8, Failure> {
    let lock = write_lock(c, ctx, None, Phase::Enter)?;
    let mut ticket = c.issue(&lock)?;
    join(c, ctx, &lock, &mut ticket)?;
    let lock = take_turn(c, ctx, lock, &ticket)?;
    // Fence, window, reacquire, check, commit, release.
    let code = window(c, ctx, lock, &ticket)?;
    // Leave the queue, which wakes the next turn.
    leave(c, ctx, ticket);
    Ok(code)
}

/// Join the turn queue under the write lock (turn order is lock order).
fn join<C: Coordinator>(
    c: &C,
    ctx: &Ctx<'_>,
    lock: &C::WriteLock,
    ticket: &mut C::Ticket,
) -> Result<(), Failure> {
    c.join(lock, ticket)?;
    if ctx.events.enabled() {
        ctx.events.emit(
            "queue-joined",
            json!({ "ticket": C::label(ticket), "ahead": c.count_ahead(ticket) }),
        );
    }
    Ok(())
}

/// While an earlier live turn exists, wait for it without the write lock; return holding the
/// write lock, at the head of the queue.
fn take_turn<C: Coordinator>(
    c: &C,
    ctx: &Ctx<'_>,
    lock: C::WriteLock,
    ticket: &C::Ticket,
) -> Result<C::WriteLock, Failure> {
    let config = ctx.config;
    let session = config.key.path();
    let started = std::time::Instant::now();
    let turn_deadline = signal::deadline(config.turn_timeout);
    let mut lock = Some(lock);
    while let Some(ahead) = c.ahead(ticket)? {
        if let Some(held) = lock.take() {
            release(ctx, held);
        }
        c.activity(ticket, Activity::Waiting);
        match c.wait_turn(ahead, turn_deadline)? {
            TurnWait::Ended => {}
            TurnWait::TimedOut => {
                let what = if config.turn_timeout.is_zero() {
                    "the prompt turn is busy".to_owned()
                } else {
                    format!(
                        "timed out after {} waiting for a prompt turn",
                        humantime::format_duration(config.turn_timeout)
                    )
                };
                return Err(Failure::busy(config.conflict_code, what, session));
            }
            TurnWait::Interrupted(received) => {
                return Err(Failure::interrupted(
                    received.signal,
                    "a prompt turn",
                    session,
                ));
            }
        }
    }
    let lock = match lock {
        Some(lock) => lock,
        None => write_lock(c, ctx, Some(ticket), Phase::Turn)?,
    };
    ctx.events.emit(
        "turn-granted",
        json!({
            "ticket": C::label(ticket),
            "waited_ms": started.elapsed().as_secs_f64() * 1e3,
        }),
    );
    config.detail(&format!("prompt turn {} began", C::label(ticket)));
    Ok(lock)
}

/// Take the write lock, and say so in the event log.
fn write_lock<C: Coordinator>(
    c: &C,
    ctx: &Ctx<'_>,
    ticket: Option<&C::Ticket>,
    phase: Phase,
) -> Result<C::WriteLock, Failure> {
    let lock = c.write_lock(ticket, phase)?;
    let phase = match phase {
        Phase::Enter => "enter",
        Phase::Turn => "turn",
        Phase::AfterWindow => "after-window",
    };
    ctx.events.emit("lock-acquired", json!({ "phase": phase }));
    Ok(lock)
}

/// Release the write lock, and say so in the event log.
fn release<L>(ctx: &Ctx<'_>, lock: L) {
    drop(lock);
    ctx.events.emit("released", json!({}));
}

/// `idle-wait`: a window with a fence, holding no turn.
fn idle_wait<C: Coordinator>(c: &C, ctx: &Ctx<'_>) -> Result<u8, Failure> {
    let lock = write_lock(c, ctx, None, Phase::Enter)?;
    let ticket = c.issue(&lock)?;
    let code = window(c, ctx, lock, &ticket)?;
    leave(c, ctx, ticket);
    Ok(code)
}

/// Take the fence, release the write lock, run the child, take the lock back, check the fence,
/// commit. A failed child ends here with its own status: there is nothing to check or commit.
fn window<C: Coordinator>(
    c: &C,
    ctx: &Ctx<'_>,
    lock: C::WriteLock,
    ticket: &C::Ticket,
) -> Result<u8, Failure> {
    let config = ctx.config;
    let label = C::label(ticket);
    let fence = c.fence(&lock)?;
    release(ctx, lock);
    c.activity(ticket, Activity::Window);
    ctx.events
        .emit("window-opened", json!({ "generation": fence.generation }));
    let (capture, stdout) = start_capture(ctx, &label)?;
    let ran = run_child(ctx, &label, stdout)?;
    if ran.failed() {
        return Ok(command_failed(ctx, capture, ran));
    }
    let lock = match write_lock(c, ctx, Some(ticket), Phase::AfterWindow) {
        Ok(lock) => lock,
        Err(failure) => {
            let reason = if matches!(failure.kind, Kind::Interrupted(_)) {
                KeepReason::Interrupted
            } else if failure.kind == Kind::Busy {
                KeepReason::LockTimeout
            } else {
                KeepReason::NotCommitted
            };
            // A computed reply is at stake: this is no busy round to skip quietly.
            return Err(keeping(failure, capture, reason).loud());
        }
    };
    let verdict = match c.check(&lock, &fence) {
        Ok(verdict) => verdict,
        Err(failure) => return Err(keeping(failure, capture, KeepReason::FenceUnreadable)),
    };
    if let Verdict::Takeover(change) = &verdict {
        ctx.events
            .emit("takeover", json!({ "change": change.to_string() }));
        let window = if config.mode == Mode::Prompt {
            "the prompt window"
        } else {
            "the idle-wait window"
        };
        let how = if config.strict { "" } else { " from outside" };
        let what = format!("the session file changed{how} during {window}");
        let failure = Failure::new(
            Kind::Takeover,
            format!("takeover: {what} ({change}); nothing committed"),
            config.key.path(),
        );
        return Err(keeping(failure, capture, KeepReason::Takeover));
    }
    ctx.events.emit("fence-ok", json!({}));
    if let (Some(capture), Verdict::Clean(vouched)) = (capture, verdict) {
        // The file the fence vouched for: the commit goes to it or nowhere.
        commit_output(c, ctx, &lock, &label, capture, Some(vouched))?;
    }
    release(ctx, lock);
    Ok(ran.code)
}

/// Leave the queue after the work is done. Failing here must not turn a committed reply into a
/// failure a caller would retry: the kernel frees the turn when the process exits anyway.
fn leave<C: Coordinator>(c: &C, ctx: &Ctx<'_>, ticket: C::Ticket) {
    if let Err(failure) = c.leave(ticket) {
        exit::say(&format!(
            "warning: could not leave the queue cleanly: {failure}"
        ));
    }
    ctx.events.emit("left", json!({}));
}

/// Record the change a `run` child made as an owned write. It has happened already, so failing
/// to record it is a warning, not a failure to retry: the next holder then counts the change as
/// an outside one, which only errs on the safe side. After a failure (`succeeded` false) the
/// one error line has been said already: no warning.
fn publish<C: Coordinator>(c: &C, lock: &C::WriteLock, succeeded: bool) {
    if let Err(failure) = c.publish_owned(lock)
        && succeeded
    {
        exit::say(&format!(
            "warning: the change was made but not recorded as an owned write; windows open \
             across it will count it as a takeover: {failure}"
        ));
    }
}

/// With `--append`: start capturing the child's stdout into the sidecar.
fn start_capture(
    ctx: &Ctx<'_>,
    label: &str,
) -> Result<(Option<Capture>, Option<std::os::fd::OwnedFd>), Failure> {
    let Some(commit) = ctx.config.commit else {
        return Ok((None, None));
    };
    let (capture, stdio) = Capture::start(ctx.sidecar, label, commit.tee)?;
    Ok((Some(capture), Some(stdio)))
}

/// Validate the captured output and append it under the write lock the caller holds: intent
/// first, then the append, then the owned write published. A failure after the append rolls it
/// back, so a failed turn leaves the file as it was.
fn commit_output<C: Coordinator>(
    c: &C,
    ctx: &Ctx<'_>,
    lock: &C::WriteLock,
    label: &str,
    mut capture: Capture,
    vouched: Option<crate::fence::Fingerprint>,
) -> Result<(), Failure> {
    let config = ctx.config;
    let session = config.key.path();
    let prepared = (|| {
        capture.finish()?;
        let output = capture.read()?;
        let bytes = commit::validate(output).map_err(|invalid| {
            Failure::new(
                Kind::Data,
                format!(
                    "the command's output is not valid JSONL (line {}: {}); nothing appended",
                    invalid.line, invalid.error
                ),
                session,
            )
        })?;
        capture.settle(&bytes)?;
        let repair = config.commit.is_some_and(|c| c.repair);
        commit::prepare(
            session,
            ctx.sidecar,
            label,
            capture.id(),
            bytes,
            repair,
            vouched,
        )
    })();
    let pending = match prepared {
        Ok(pending) => pending,
        Err(failure) => {
            let reason = match failure.kind {
                Kind::Data if failure.to_string().contains("not valid JSONL") => {
                    KeepReason::Invalid
                }
                Kind::Data => KeepReason::IncompleteSession,
                Kind::Takeover => KeepReason::Takeover,
                _ => KeepReason::WriteFailed,
            };
            return Err(keeping(failure, Some(capture), reason));
        }
    };
    if let Err(failure) = c.record_intent(lock, &pending.intent) {
        // Nothing was written; an intent that did get recorded names nothing to roll back.
        let _ = c.clear_intent(lock);
        return Err(keeping(failure, Some(capture), KeepReason::WriteFailed));
    }
    let written = match pending.write() {
        Ok(written) => written,
        Err(failure) => {
            let _ = c.clear_intent(lock);
            return Err(keeping(failure, Some(capture), KeepReason::WriteFailed));
        }
    };
    if let Err(failure) = c.publish_owned(lock) {
        let note = written.roll_back();
        let _ = c.clear_intent(lock);
        let failure = Failure::new(
            failure.kind,
            format!("the reply was appended but could not be recorded ({failure}); {note}"),
            written.session(),
        );
        return Err(keeping(failure, Some(capture), KeepReason::WriteFailed));
    }
    if let Some((tail, moved)) = &written.repaired {
        exit::say(&format!(
            "moved an incomplete last line ({tail} bytes) of {} into {}",
            session.display(),
            moved.display()
        ));
    }
    config.detail(&format!(
        "appended {} bytes to {}",
        written.bytes,
        session.display()
    ));
    ctx.events.emit(
        "committed",
        json!({ "lines": written.lines, "bytes": written.bytes }),
    );
    capture.discard();
    Ok(())
}

/// The command failed: nothing is appended; keep what it printed and say where.
fn command_failed(ctx: &Ctx<'_>, capture: Option<Capture>, ran: Ran) -> u8 {
    let session = ctx.config.key.path().display();
    let what = match (ran.stopped, ctx.config.max_hold) {
        (Some(signal), Some(max)) => format!(
            "the command ran longer than --max-hold {} and was stopped with {signal} (status {})",
            humantime::format_duration(max.after),
            ran.code
        ),
        _ => match ran
            .signal
            .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
        {
            Some(signal) => format!("the command died of {signal}"),
            None => format!("the command exited with {}", ran.code),
        },
    };
    let reason = if ran.stopped.is_some() {
        KeepReason::MaxHold
    } else {
        KeepReason::CommandFailed
    };
    match capture.map(|c| c.keep(reason)) {
        Some(Some(kept)) => exit::say(&format!(
            "{what}; nothing appended; its output was kept in {} ({session})",
            kept.display()
        )),
        Some(None) => exit::say(&format!("{what}; nothing appended ({session})")),
        None if ran.stopped.is_some() => exit::say(&format!("{what} ({session})")),
        None => {}
    }
    ran.code
}

/// Keep the capture (if any) and add where it went to the failure's line.
fn keeping(failure: Failure, capture: Option<Capture>, reason: KeepReason) -> Failure {
    match capture.map(|c| c.keep(reason)) {
        Some(Some(kept)) => failure.noting(format!("output kept in {}", kept.display())),
        Some(None) => failure.noting("the output was empty"),
        None => failure,
    }
}

/// How the child's run ended, as the wrapper reports it.
#[derive(Debug, Clone, Copy)]
struct Ran {
    /// The exit code to return: the child's, or `128 + N` for the signal it died of (or that
    /// `--max-hold` sent it, if it then exited 0).
    code: u8,
    /// The signal `--max-hold` had to send.
    stopped: Option<nix::sys::signal::Signal>,
    /// The signal the command died of, if it did.
    signal: Option<i32>,
}

impl Ran {
    /// Nothing may be committed after this run.
    fn failed(self) -> bool {
        self.code != 0 || self.stopped.is_some()
    }
}

/// Start the child, wait for it (forwarding signals), and return the code it maps to.
fn run_child(
    ctx: &Ctx<'_>,
    label: &str,
    stdout: Option<std::os::fd::OwnedFd>,
) -> Result<Ran, Failure> {
    let config = ctx.config;
    let mut env: Vec<(&'static str, OsString)> = vec![
        (
            "SESSIONLOCK_SESSION",
            config.key.path().as_os_str().to_owned(),
        ),
        ("SESSIONLOCK_MODE", config.mode.name().into()),
    ];
    env.push(("SESSIONLOCK_PID", std::process::id().to_string().into()));
    if config.turn {
        env.push(("SESSIONLOCK_TICKET", label.into()));
    }
    let inherited = if config.max_hold.is_some() {
        child::adopt_orphans();
        child::inherited()
    } else {
        Vec::new()
    };
    let mut child = child::spawn(
        child::Spec {
            argv: &config.argv,
            env,
            stdout,
            // `run`'s command works under the write lock: it must not outlive a killed wrapper.
            // In a window nothing is held, so the command may clean up.
            parent_death: if config.mode == Mode::Run {
                nix::sys::signal::Signal::SIGKILL
            } else {
                nix::sys::signal::Signal::SIGTERM
            },
        },
        config.key.path(),
    )?;
    let ended = child::wait(&mut child, ctx.signals, config.max_hold, &inherited)
        .map_err(|e| Failure::io("cannot wait for the command", &e, config.key.path()))?;
    if ended.status.signal() == Some(nix::libc::SIGINT) {
        exit::die_of_sigint();
    }
    if ended.lost {
        return Err(Failure::new(
            Kind::Unavailable,
            "the etcd lease was lost while the command ran (etcd unreachable for longer than \
             --lease): the locks are gone, so the command was stopped and nothing is committed",
            config.key.path(),
        ));
    }
    let mut code = child::exit_code(ended.status);
    ctx.events.emit(
        "child-exited",
        json!({
            "status": ended.status.code(),
            "signal": ended.status.signal(),
            "stopped_by_max_hold": ended.stopped.map(nix::sys::signal::Signal::as_str),
        }),
    );
    if let (Some(signal), 0) = (ended.stopped, code) {
        code = exit::signalled(signal as i32);
    }
    Ok(Ran {
        code,
        stopped: ended.stopped,
        signal: ended.status.signal(),
    })
}

#[cfg(test)]
mod tests {
    //! The lifecycles against an in-memory coordinator that fails at a chosen step: whatever
    //! fails, no turn and no lock is left behind.

    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::commit::Intent;
    use crate::config::{Commit, Verbosity};
    use crate::fence::{Fence, Fingerprint, State};

    /// The fake's bookkeeping, shared with the guards it hands out.
    #[derive(Default)]
    struct Book {
        /// How many calls so far; the call numbered `fail_at` fails.
        calls: Cell<usize>,
        fail_at: Cell<usize>,
        live_tickets: Cell<i32>,
        locks_held: Cell<i32>,
        waited: Cell<bool>,
        log: RefCell<Vec<&'static str>>,
    }

    struct Fake {
        book: Rc<Book>,
        session: std::path::PathBuf,
    }

    struct Guard(Rc<Book>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.locks_held.set(self.0.locks_held.get() - 1);
        }
    }

    struct Ticket(Rc<Book>);
    impl Drop for Ticket {
        fn drop(&mut self) {
            self.0.live_tickets.set(self.0.live_tickets.get() - 1);
        }
    }

    impl Fake {
        fn step(&self, name: &'static str) -> Result<(), Failure> {
            let n = self.book.calls.get() + 1;
            self.book.calls.set(n);
            self.book.log.borrow_mut().push(name);
            if n == self.book.fail_at.get() {
                Err(Failure::new(
                    Kind::Io,
                    format!("{name} failed"),
                    &self.session,
                ))
            } else {
                Ok(())
            }
        }
    }

    impl Coordinator for Fake {
        type Ticket = Ticket;
        type WriteLock = Guard;
        type Ahead = ();

        fn write_lock(&self, _: Option<&Ticket>, _: Phase) -> Result<Guard, Failure> {
            self.step("write_lock")?;
            assert_eq!(self.book.locks_held.get(), 0, "the write lock taken twice");
            self.book.locks_held.set(1);
            Ok(Guard(self.book.clone()))
        }
        fn issue(&self, _: &Guard) -> Result<Ticket, Failure> {
            self.step("issue")?;
            self.book.live_tickets.set(self.book.live_tickets.get() + 1);
            Ok(Ticket(self.book.clone()))
        }
        fn label(_: &Ticket) -> String {
            "1.0".into()
        }
        fn join(&self, _: &Guard, _: &mut Ticket) -> Result<(), Failure> {
            self.step("join")
        }
        fn ahead(&self, _: &Ticket) -> Result<Option<()>, Failure> {
            self.step("ahead")?;
            Ok((!self.book.waited.replace(true)).then_some(()))
        }
        fn count_ahead(&self, _: &Ticket) -> u64 {
            0
        }
        fn wait_turn(&self, (): (), _: Option<Instant>) -> Result<TurnWait, Failure> {
            self.step("wait_turn")?;
            assert_eq!(
                self.book.locks_held.get(),
                0,
                "waited for a turn holding the lock"
            );
            Ok(TurnWait::Ended)
        }
        fn activity(&self, _: &Ticket, _: Activity) {}
        fn observe(&self, _: &Guard) -> Result<State, Failure> {
            self.step("observe")?;
            Ok(State {
                fingerprint: Fingerprint::of(&self.session).unwrap(),
                ..State::default()
            })
        }
        fn fence(&self, _: &Guard) -> Result<Fence, Failure> {
            self.step("fence")?;
            Ok(State::default().fence())
        }
        fn check(&self, _: &Guard, _: &Fence) -> Result<Verdict, Failure> {
            self.step("check")?;
            Ok(Verdict::Clean(Fingerprint::of(&self.session).unwrap()))
        }
        fn verify(&self, _: &Guard) -> Result<(), Failure> {
            self.step("verify")
        }
        fn record_intent(&self, _: &Guard, _: &Intent) -> Result<(), Failure> {
            self.step("record_intent")
        }
        fn publish_owned(&self, _: &Guard) -> Result<State, Failure> {
            self.step("publish_owned")?;
            Ok(State::default())
        }
        fn clear_intent(&self, _: &Guard) -> Result<(), Failure> {
            self.step("clear_intent")
        }
        fn leave(&self, ticket: Ticket) -> Result<(), Failure> {
            drop(ticket);
            self.step("leave")
        }
    }

    fn config(dir: &std::path::Path, mode: Mode, append: bool) -> Config {
        Config {
            mode,
            key: crate::key::resolve(&dir.join("s.jsonl")).unwrap(),
            argv: vec!["sh".into(), "-c".into(), "echo '{\"r\":1}'".into()],
            lock_timeout: Duration::from_secs(5),
            after_window_timeout: Duration::from_secs(5),
            conflict_code: 75,
            verbosity: Verbosity::Quiet,
            turn_timeout: Duration::from_secs(5),
            turn: mode == Mode::Prompt,
            events: None,
            coord: None,
            live: false,
            strict: false,
            max_hold: None,
            commit: append.then_some(Commit {
                tee: false,
                repair: false,
            }),
        }
    }

    #[test]
    fn every_failure_at_every_step_leaves_no_turn_and_no_lock_behind() {
        let dir = tempfile::tempdir().unwrap();
        let signals = Signals::install().unwrap();
        for mode in [Mode::Run, Mode::Prompt, Mode::IdleWait] {
            for append in [false, true] {
                let config = config(dir.path(), mode, append);
                let sidecar = Sidecar::open(&config.key, true).unwrap().unwrap();
                let events = Events::none();
                let ctx = Ctx {
                    config: &config,
                    sidecar: &sidecar,
                    signals: &signals,
                    events: &events,
                };
                // A clean run first: how many steps there are.
                let _ = std::fs::remove_file(config.key.path());
                let fake = Fake {
                    book: Rc::default(),
                    session: config.key.path().to_owned(),
                };
                assert_eq!(run_mode(&fake, &ctx).unwrap(), 0, "{mode:?}");
                let steps = fake.book.calls.get();
                let last_publish = fake
                    .book
                    .log
                    .borrow()
                    .iter()
                    .rposition(|s| *s == "publish_owned")
                    .map_or(0, |i| i + 1);
                assert!(steps > 3, "{mode:?}: {:?}", fake.book.log.borrow());
                for fail_at in 1..=steps {
                    let fake = Fake {
                        book: Rc::default(),
                        session: config.key.path().to_owned(),
                    };
                    fake.book.fail_at.set(fail_at);
                    let _ = std::fs::remove_file(config.key.path());
                    let outcome = run_mode(&fake, &ctx);
                    let failed = fake.book.log.borrow()[fail_at - 1];
                    let what = format!("{mode:?} append={append} failing {failed}");
                    assert_eq!(
                        fake.book.live_tickets.get(),
                        0,
                        "{what}: a turn left behind"
                    );
                    assert_eq!(fake.book.locks_held.get(), 0, "{what}: the lock left held");
                    // Leaving, and recording a `run` command's own change (it is made and
                    // cannot be undone), are warnings; every other failure fails the run.
                    let warning = failed == "leave"
                        || (mode == Mode::Run
                            && failed == "publish_owned"
                            && fail_at == last_publish);
                    assert_eq!(outcome.is_err(), !warning, "{what}");
                }
                let _ = std::fs::remove_file(config.key.path());
            }
        }
    }
}
