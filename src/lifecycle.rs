//! The modes' lifecycles, written once against `Coordinator`: `run` holds the write lock through
//! the child; `prompt` waits for its FIFO turn, releases the lock for the window and checks the
//! fence after it; `idle-wait` does the same without a turn. With `--append`, each ends in a
//! commit of the child's output under the write lock.
//!
//! The ticket (and with it the queue entry) is dropped on every way out, so a failure anywhere,
//! a timeout or a signal leaves no trace; only SIGKILL leaves a dead entry, reaped by the next
//! process that looks. Output that is not committed is kept, and the error line says where.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use crate::child;
use crate::commit::{self, Capture};
use crate::config::{Config, Mode};
use crate::coord::{Coordinator, Files, Phase, TurnWait};
use crate::exit::{self, Failure};
use crate::fence::{State, Verdict};
use crate::sidecar::Sidecar;
use crate::signal::{self, Signals};

/// What every lifecycle runs with.
struct Ctx<'a> {
    config: &'a Config,
    sidecar: &'a Sidecar,
    signals: &'a Signals,
}

/// Run the configured mode.
pub fn execute(config: &Config) -> Result<u8, Failure> {
    let sidecar = Sidecar::create(&config.key)?;
    let signals = Signals::install().map_err(|e| {
        let mut f = Failure::io("cannot install signal handlers", &e, config.key.path());
        f.code = exit::SOFTWARE;
        f
    })?;
    let files = Files::new(config, sidecar.clone(), &signals);
    let ctx = Ctx {
        config,
        sidecar: &sidecar,
        signals: &signals,
    };
    let code = match config.mode {
        Mode::Run => run(&files, &ctx),
        Mode::Prompt => prompt(&files, &ctx),
        Mode::IdleWait => idle_wait(&files, &ctx),
    }?;
    config.detail(&format!("done with {}", config.key.path().display()));
    Ok(code)
}

/// `run`: hold the write lock for the whole child; publish its change as an owned write.
fn run<C: Coordinator>(c: &C, ctx: &Ctx<'_>) -> Result<u8, Failure> {
    let lock = c.write_lock(None, Phase::Enter)?;
    let ticket = c.issue(&lock)?;
    let before = c.observe(&lock)?;
    let (capture, stdout) = start_capture(ctx, C::ticket_id(&ticket))?;
    let outcome = match run_child(ctx, C::ticket_id(&ticket), stdout) {
        Ok(ran) if ran.failed() => Ok(command_failed(ctx, capture, ran)),
        Ok(_) => match capture {
            Some(capture) => commit_output(ctx, C::ticket_id(&ticket), capture).map(|()| 0),
            None => Ok(0),
        },
        Err(failure) => Err(failure),
    };
    // Whatever the child (and the commit) did to the file, it did under the lock: it is owned.
    publish(c, &lock, &before, outcome.is_ok());
    drop(lock);
    leave(c, ticket);
    outcome
}

/// `prompt`: the ten steps of DESIGN.md.
fn prompt<C: Coordinator>(c: &C, ctx: &Ctx<'_>) -> Result<u8, Failure> {
    let config = ctx.config;
    let session = config.key.path();
    // 1-2: take the write lock and join the queue under it.
    let mut lock = c.write_lock(None, Phase::Enter)?;
    let mut ticket = c.issue(&lock)?;
    c.join(&lock, &mut ticket)?;
    // 3: while an earlier live turn exists, wait for it without the write lock.
    let turn_deadline = signal::deadline(config.turn_timeout);
    while let Some(ahead) = c.ahead(&ticket)? {
        drop(lock);
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
                return Err(Failure::new(config.conflict_code, what, session));
            }
            TurnWait::Interrupted(received) => {
                return Err(Failure::interrupted(
                    received.signal,
                    "a prompt turn",
                    session,
                ));
            }
        }
        lock = c.write_lock(Some(&ticket), Phase::Turn)?;
    }
    config.detail(&format!("prompt turn {} began", C::ticket_id(&ticket)));
    // 4-9: fence, window, reacquire, check, commit, release.
    let code = window(c, ctx, lock, &ticket)?;
    // 10: leave the queue, which wakes the next turn.
    leave(c, ticket);
    Ok(code)
}

/// `idle-wait`: a window with a fence, holding no turn.
fn idle_wait<C: Coordinator>(c: &C, ctx: &Ctx<'_>) -> Result<u8, Failure> {
    let lock = c.write_lock(None, Phase::Enter)?;
    let ticket = c.issue(&lock)?;
    let code = window(c, ctx, lock, &ticket)?;
    leave(c, ticket);
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
    let id = C::ticket_id(ticket);
    let fence = c.fence(&lock)?;
    drop(lock);
    let (capture, stdout) = start_capture(ctx, id)?;
    let ran = run_child(ctx, id, stdout)?;
    if ran.failed() {
        return Ok(command_failed(ctx, capture, ran));
    }
    let lock = match c.write_lock(Some(ticket), Phase::AfterWindow) {
        Ok(lock) => lock,
        Err(failure) => {
            let reason = if failure.code >= 128 {
                "interrupted"
            } else {
                "lock-timeout"
            };
            return Err(keeping(failure, capture, reason));
        }
    };
    let verdict = match c.check(&lock, &fence) {
        Ok(verdict) => verdict,
        Err(failure) => return Err(keeping(failure, capture, "fence-unreadable")),
    };
    if let Verdict::Takeover(change) = verdict {
        let window = if config.mode == Mode::Prompt {
            "the prompt window"
        } else {
            "the idle-wait window"
        };
        let how = if config.strict { "" } else { " from outside" };
        let what = format!("the session file changed{how} during {window}");
        let failure = Failure::new(
            exit::TAKEOVER,
            format!("takeover: {what} ({change}); nothing committed"),
            config.key.path(),
        );
        return Err(keeping(failure, capture, "takeover"));
    }
    if let Some(capture) = capture {
        let before = c.observe(&lock)?;
        let committed = commit_output(ctx, id, capture);
        publish(c, &lock, &before, committed.is_ok());
        committed?;
    }
    drop(lock);
    Ok(ran.code)
}

/// Leave the queue after the work is done. The ticket lock is freed either way, so the turn
/// behind wakes; if the entry could not be removed, it is dead and the next prompt reaps it.
/// Failing here must not turn a committed reply into a failure a caller would retry.
fn leave<C: Coordinator>(c: &C, ticket: C::Ticket) {
    if let Err(failure) = c.leave(ticket) {
        exit::say(&format!(
            "warning: could not remove the queue entry (the next prompt reaps it): {failure}"
        ));
    }
}

/// Record the file's change since `before` as an owned write. It has happened already (the
/// reply is in the file), so failing to record it is a warning, not a failure to retry: the
/// next holder then counts the change as an outside one, which only errs on the safe side.
/// After a failure (`succeeded` false) the one error line has been said already: no warning.
fn publish<C: Coordinator>(c: &C, lock: &C::WriteLock, before: &State, succeeded: bool) {
    if let Err(failure) = c.publish_owned(lock, before)
        && succeeded
    {
        exit::say(&format!(
            "warning: the change was made but not recorded as an owned write; windows open \
             across it will count it as a takeover: {failure}"
        ));
    }
}

/// With `--append`: start capturing the child's stdout into the sidecar.
fn start_capture(ctx: &Ctx<'_>, ticket: u64) -> Result<(Option<Capture>, Option<Stdio>), Failure> {
    let Some(commit) = ctx.config.commit else {
        return Ok((None, None));
    };
    let (capture, stdio) = Capture::start(ctx.sidecar, ticket, commit.tee)?;
    Ok((Some(capture), Some(stdio)))
}

/// Validate the captured output and append it, under the write lock the caller holds.
fn commit_output(ctx: &Ctx<'_>, ticket: u64, mut capture: Capture) -> Result<(), Failure> {
    let config = ctx.config;
    let session = config.key.path();
    capture.finish()?;
    let output = capture.read()?;
    let bytes = match commit::validate(output) {
        Ok(bytes) => bytes,
        Err(invalid) => {
            let failure = Failure::new(
                exit::DATA,
                format!(
                    "the command's output is not valid JSONL (line {}: {}); nothing appended",
                    invalid.line, invalid.error
                ),
                session,
            );
            return Err(keeping(failure, Some(capture), "invalid"));
        }
    };
    let repair = config.commit.is_some_and(|c| c.repair);
    match commit::append(session, ctx.sidecar, ticket, &bytes, repair) {
        Ok(done) => {
            if let Some((tail, moved)) = done.repaired {
                exit::say(&format!(
                    "moved an incomplete last line ({tail} bytes) of {} into {}",
                    session.display(),
                    moved.display()
                ));
            }
            config.detail(&format!(
                "appended {} bytes to {}",
                done.bytes,
                session.display()
            ));
            capture.discard();
            Ok(())
        }
        Err(failure) => {
            let reason = if failure.code == exit::DATA {
                "incomplete-session"
            } else {
                "write-failed"
            };
            Err(keeping(failure, Some(capture), reason))
        }
    }
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
        "max-hold"
    } else {
        "command-failed"
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
fn keeping(failure: Failure, capture: Option<Capture>, reason: &str) -> Failure {
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
fn run_child(ctx: &Ctx<'_>, ticket: u64, stdout: Option<Stdio>) -> Result<Ran, Failure> {
    let config = ctx.config;
    let mut env: Vec<(&'static str, OsString)> = vec![
        (
            "SESSIONLOCK_SESSION",
            config.key.path().as_os_str().to_owned(),
        ),
        ("SESSIONLOCK_MODE", config.mode.name().into()),
    ];
    if config.mode == Mode::Prompt {
        env.push(("SESSIONLOCK_TICKET", ticket.to_string().into()));
    }
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
    let ended = child::wait(&mut child, ctx.signals, config.max_hold)
        .map_err(|e| Failure::io("cannot wait for the command", &e, config.key.path()))?;
    if ended.status.signal() == Some(nix::libc::SIGINT) {
        exit::die_of_sigint();
    }
    let mut code = child::exit_code(ended.status);
    if let (Some(signal), 0) = (ended.stopped, code) {
        code = exit::signalled(signal as i32);
    }
    Ok(Ran {
        code,
        stopped: ended.stopped,
        signal: ended.status.signal(),
    })
}
