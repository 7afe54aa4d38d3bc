//! The resolved configuration: parsed options checked and turned into what a mode runs with.
//!
//! Everything a user can get wrong is refused here, before any file is touched.

use std::ffi::OsString;
use std::time::Duration;

use crate::child::MaxHold;
use crate::cli::{CommitOpts, FenceOpts, LockOpts, Target};
use crate::exit::{Failure, Kind};
use crate::key::{self, Key};

/// The lifecycle a wrapped command runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Run,
    Prompt,
    IdleWait,
}

impl Mode {
    /// The name used on the command line, in records and in `SESSIONLOCK_MODE`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Prompt => "prompt",
            Mode::IdleWait => "idle-wait",
        }
    }
}

/// How much the wrapper says on stderr besides failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// Everything a mode needs, resolved.
#[derive(Debug)]
pub struct Config {
    pub mode: Mode,
    pub key: Key,
    pub argv: Vec<OsString>,
    /// Bound on each write-lock acquisition; zero with `--nonblock`.
    pub lock_timeout: Duration,
    /// Bound on taking the write lock back after a window: `--timeout` even with
    /// `--nonblock`, since a computed reply is at stake.
    pub after_window_timeout: Duration,
    /// Exit status for busy / not in time.
    pub conflict_code: u8,
    pub verbosity: Verbosity,
    /// Bound on the wait for a prompt turn; zero with `--nonblock`.
    pub turn_timeout: Duration,
    /// It takes a prompt turn (`prompt`, `run --turn`).
    pub turn: bool,
    /// `--events-file` / `--events-fd`.
    pub events: Option<crate::events::Target>,
    /// `--coord etcd://...`: coordination through etcd.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub coord: Option<EtcdTarget>,
    /// Waits show one live line, rewritten each second (stderr is a terminal, no `-q`/`-v`).
    pub live: bool,
    /// Any change in the window is a takeover.
    pub strict: bool,
    /// `--max-hold`: stop the command when it runs too long.
    pub max_hold: Option<MaxHold>,
    /// `--append`: capture stdout and commit it; `None` without it.
    pub commit: Option<Commit>,
}

/// Where etcd is, and how this session is named there.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub struct EtcdTarget {
    pub endpoints: Vec<String>,
    /// The name of the session in etcd: the canonical path, or `SCOPE/NAME`.
    pub name: String,
    pub lease: Duration,
}

impl EtcdTarget {
    /// Parse `--coord` for `key`; `None` for the files backend.
    pub fn from_opts(opts: &crate::cli::CoordOpts, key: &Key) -> Result<Option<Self>, Failure> {
        let Some(url) = &opts.coord else {
            return Ok(None);
        };
        let usage = |what: &str| Failure::bare(Kind::Usage, format!("--coord {url}: {what}"));
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| usage("expected etcd://HOST:PORT[,HOST:PORT...]"))?;
        let endpoints: Vec<String> = rest
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| format!("http://{}", e.trim_end_matches('/')))
            .collect();
        if endpoints.is_empty() {
            return Err(usage("no endpoint"));
        }
        if !cfg!(feature = "etcd") {
            return Err(usage(
                "this build has no etcd support (build it with `--features etcd`)",
            ));
        }
        let name = match &opts.coord_scope {
            Some(scope) => format!("{scope}/{}", key.name().to_string_lossy()),
            None => key.path().to_string_lossy().into_owned(),
        };
        Ok(Some(Self {
            endpoints,
            name,
            lease: opts.lease,
        }))
    }
}

/// How to commit the child's output.
#[derive(Debug, Clone, Copy)]
pub struct Commit {
    /// Copy the output to stdout as it arrives (`--tee`).
    pub tee: bool,
    /// Move an incomplete last line of the session aside first (`--repair`).
    pub repair: bool,
}

impl Config {
    /// Check the options and resolve the session key. `turn_timeout` is given for the modes
    /// that take a prompt turn.
    pub fn new(
        mode: Mode,
        lock: &LockOpts,
        fence: Option<&FenceOpts>,
        turn_timeout: Option<Duration>,
        commit: &CommitOpts,
        target: Target,
    ) -> Result<Self, Failure> {
        if target.command.first().is_none_or(|p| p.is_empty()) {
            return Err(Failure::new(
                Kind::Usage,
                format!(
                    "no command to run: usage is `sessionlock {} <SESSION> -- <COMMAND> [ARGS...]`",
                    mode.name()
                ),
                &target.session,
            ));
        }
        let key = key::resolve(&target.session)?;
        let coord = EtcdTarget::from_opts(&lock.coord, &key)?;
        let verbosity = if lock.quiet {
            crate::exit::quiet_when_busy();
            Verbosity::Quiet
        } else if lock.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        };
        Ok(Self {
            mode,
            key,
            argv: target.command,
            lock_timeout: if lock.nonblock {
                Duration::ZERO
            } else {
                lock.timeout
            },
            after_window_timeout: lock.timeout,
            conflict_code: lock.conflict_exit_code,
            verbosity,
            turn_timeout: if lock.nonblock {
                Duration::ZERO
            } else {
                turn_timeout.unwrap_or(Duration::ZERO)
            },
            turn: turn_timeout.is_some(),
            coord,
            events: match (&lock.events_file, lock.events_fd) {
                (Some(path), _) => Some(crate::events::Target::File(path.clone())),
                (None, Some(fd)) => Some(crate::events::Target::Fd(fd)),
                (None, None) => None,
            },
            live: verbosity == Verbosity::Normal
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            strict: fence.is_some_and(|f| f.strict),
            max_hold: lock.max_hold.map(|after| MaxHold {
                after,
                grace: lock.grace,
            }),
            commit: commit.append.then_some(Commit {
                tee: commit.tee,
                repair: commit.repair,
            }),
        })
    }

    /// Say `message` on stderr unless `--quiet`.
    pub fn notice(&self, message: &str) {
        if self.verbosity > Verbosity::Quiet {
            crate::exit::say(message);
        }
    }

    /// Say `message` on stderr with `--verbose` only.
    pub fn detail(&self, message: &str) {
        if self.verbosity == Verbosity::Verbose {
            crate::exit::say(message);
        }
    }
}
