//! The modes' lifecycles, written once: take the write lock, run the child, release.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use crate::child;
use crate::config::{Config, Verbosity};
use crate::exit::{self, Failure};
use crate::lock::{self, Notice, Waited};
use crate::sidecar::{self, Holder, Sidecar};
use crate::signal::{self, Signals};

/// How long a wait lasts before it is worth a notice on stderr.
const NOTICE_AFTER: Duration = Duration::from_secs(1);

/// `run`: hold the write lock for the whole child.
pub fn run(config: &Config) -> Result<u8, Failure> {
    let sidecar = Sidecar::create(&config.key)?;
    let signals = install_signals(config)?;
    let guard = WriteGuard::acquire(config, &sidecar, &signals)?;
    let mut child = child::spawn(
        child::Spec {
            argv: &config.argv,
            env: child_env(config),
            stdout: None,
        },
        config.key.path(),
    )?;
    let status = child::wait(&mut child, &signals)
        .map_err(|e| Failure::io("cannot wait for the command", &e, config.key.path()))?;
    drop(guard);
    config.detail(&format!(
        "released the write lock on {}",
        config.key.path().display()
    ));
    Ok(child::exit_code(status))
}

fn install_signals(config: &Config) -> Result<Signals, Failure> {
    Signals::install().map_err(|e| {
        let mut f = Failure::io("cannot install signal handlers", &e, config.key.path());
        f.code = exit::SOFTWARE;
        f
    })
}

/// The environment the child gets on top of the wrapper's.
fn child_env(config: &Config) -> Vec<(&'static str, OsString)> {
    vec![
        (
            "SESSIONLOCK_SESSION",
            config.key.path().as_os_str().to_owned(),
        ),
        ("SESSIONLOCK_MODE", config.mode.name().into()),
    ]
}

/// The write lock, held; its holder record is removed just before the lock is released.
pub struct WriteGuard<'a> {
    sidecar: &'a Sidecar,
    _held: lock::Held,
}

impl<'a> WriteGuard<'a> {
    /// Take the write lock within `--timeout`, saying so once if the wait is long.
    pub fn acquire(
        config: &Config,
        sidecar: &'a Sidecar,
        signals: &Signals,
    ) -> Result<Self, Failure> {
        let file = sidecar.open_lock_target()?;
        let session = config.key.path();
        let mut say = || {
            config.notice(&format!(
                "waiting for the write lock on {}{}",
                session.display(),
                held_by(sidecar)
            ));
        };
        let notice = (config.verbosity > Verbosity::Quiet).then(|| Notice {
            after: if config.verbosity == Verbosity::Verbose {
                Duration::ZERO
            } else {
                NOTICE_AFTER
            },
            say: &mut say,
        });
        let started = Instant::now();
        let deadline = signal::deadline(config.lock_timeout);
        let held = match lock::wait_exclusive(file, deadline, signals, notice) {
            Ok(Waited::Held(held)) => held,
            Ok(Waited::TimedOut) => {
                let what = if config.lock_timeout.is_zero() {
                    format!("the write lock is busy{}", held_by(sidecar))
                } else {
                    format!(
                        "timed out after {} waiting for the write lock{}",
                        humantime::format_duration(config.lock_timeout),
                        held_by(sidecar)
                    )
                };
                return Err(Failure::new(config.conflict_code, what, session));
            }
            Ok(Waited::Interrupted(received)) => {
                return Err(Failure::new(
                    exit::signalled(received.signal as i32),
                    format!(
                        "interrupted by {} while waiting for the write lock",
                        received.signal
                    ),
                    session,
                ));
            }
            Err(e) => {
                return Err(Failure::io(
                    "cannot take the write lock",
                    &e,
                    &sidecar.path(sidecar::LOCK),
                ));
            }
        };
        let guard = Self {
            sidecar,
            _held: held,
        };
        sidecar.write_holder(&Holder {
            pid: std::process::id(),
            mode: config.mode.name().to_owned(),
            ticket: None,
            since_ms: sidecar::now_ms(),
            command: child::command_name(&config.argv),
        })?;
        config.detail(&format!(
            "took the write lock on {} after {}ms",
            session.display(),
            started.elapsed().as_millis()
        ));
        Ok(guard)
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.sidecar.clear_holder();
    }
}

/// ", held by pid 123 (run) for 4s", or nothing when no holder is recorded.
fn held_by(sidecar: &Sidecar) -> String {
    sidecar
        .read_holder()
        .map(|h| format!(", held by {}", h.describe()))
        .unwrap_or_default()
}
