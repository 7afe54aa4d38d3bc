//! The modes' lifecycles, written once against `Coordinator`: `run` holds the write lock through
//! the child; `prompt` waits for its FIFO turn, releases the lock for the window and checks the
//! fence after it; `idle-wait` does the same without a turn.
//!
//! The ticket (and with it the queue entry) is dropped on every way out, so a failure anywhere,
//! a timeout or a signal leaves no trace; only SIGKILL leaves a dead entry, reaped by the next
//! process that looks.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::time::Instant;

use crate::child;
use crate::config::{Config, Mode};
use crate::coord::{Coordinator, Files, Phase, TurnWait};
use crate::exit::{self, Failure};
use crate::fence::Verdict;
use crate::sidecar::Sidecar;
use crate::signal::{self, Signals};

/// Run the configured mode.
pub fn execute(config: &Config) -> Result<u8, Failure> {
    let sidecar = Sidecar::create(&config.key)?;
    let signals = Signals::install().map_err(|e| {
        let mut f = Failure::io("cannot install signal handlers", &e, config.key.path());
        f.code = exit::SOFTWARE;
        f
    })?;
    let files = Files::new(config, sidecar, &signals);
    let code = match config.mode {
        Mode::Run => run(&files, config, &signals),
        Mode::Prompt => prompt(&files, config, &signals),
        Mode::IdleWait => idle_wait(&files, config, &signals),
    }?;
    config.detail(&format!("done with {}", config.key.path().display()));
    Ok(code)
}

/// `run`: hold the write lock for the whole child; publish its change as an owned write.
fn run<C: Coordinator>(c: &C, config: &Config, signals: &Signals) -> Result<u8, Failure> {
    let ticket = c.issue()?;
    let lock = c.write_lock(&ticket, Phase::Enter)?;
    let before = c.observe(&lock)?;
    let code = run_child(config, signals, C::ticket_id(&ticket));
    // Whatever the child did to the file, it did under the lock: it is owned.
    c.publish_owned(&lock, &before)?;
    drop(lock);
    c.leave(ticket)?;
    code
}

/// `prompt`: the ten steps of DESIGN.md.
fn prompt<C: Coordinator>(c: &C, config: &Config, signals: &Signals) -> Result<u8, Failure> {
    let session = config.key.path();
    let mut ticket = c.issue()?;
    // 1-2: take the write lock and join the queue under it.
    let mut lock = c.write_lock(&ticket, Phase::Enter)?;
    c.join(&lock, &mut ticket)?;
    // 3: while an earlier live turn exists, wait for it without the write lock.
    let turn_deadline = signal::deadline(config.turn_timeout);
    let started = Instant::now();
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
        lock = c.write_lock(&ticket, Phase::Turn)?;
    }
    config.detail(&format!(
        "prompt turn {} began after {}ms",
        C::ticket_id(&ticket),
        started.elapsed().as_millis()
    ));
    // 4-7: fence, window, reacquire, check.
    let code = window(c, config, signals, lock, &ticket)?;
    // 9-10: leave the queue, which wakes the next turn.
    c.leave(ticket)?;
    Ok(code)
}

/// `idle-wait`: a window with a fence, holding no turn.
fn idle_wait<C: Coordinator>(c: &C, config: &Config, signals: &Signals) -> Result<u8, Failure> {
    let ticket = c.issue()?;
    let lock = c.write_lock(&ticket, Phase::Enter)?;
    let code = window(c, config, signals, lock, &ticket)?;
    c.leave(ticket)?;
    Ok(code)
}

/// Take the fence, release the write lock, run the child, take the lock back, check the fence.
/// A failed child ends here with its own status: there is nothing to check or commit.
fn window<C: Coordinator>(
    c: &C,
    config: &Config,
    signals: &Signals,
    lock: C::WriteLock,
    ticket: &C::Ticket,
) -> Result<u8, Failure> {
    let fence = c.fence(&lock)?;
    drop(lock);
    let code = run_child(config, signals, C::ticket_id(ticket))?;
    if code != 0 {
        return Ok(code);
    }
    let lock = c.write_lock(ticket, Phase::AfterWindow)?;
    if let Verdict::Takeover(change) = c.check(&lock, &fence)? {
        let what = if config.strict {
            "the session file changed during the prompt window"
        } else {
            "the session file changed from outside during the prompt window"
        };
        return Err(Failure::new(
            exit::TAKEOVER,
            format!("takeover: {what} ({change}); nothing committed"),
            config.key.path(),
        ));
    }
    drop(lock);
    Ok(code)
}

/// Start the child, wait for it (forwarding signals), and return the code it maps to.
fn run_child(config: &Config, signals: &Signals, ticket: u64) -> Result<u8, Failure> {
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
            stdout: None,
        },
        config.key.path(),
    )?;
    let status = child::wait(&mut child, signals)
        .map_err(|e| Failure::io("cannot wait for the command", &e, config.key.path()))?;
    if status.signal() == Some(nix::libc::SIGINT) {
        exit::die_of_sigint();
    }
    Ok(child::exit_code(status))
}
