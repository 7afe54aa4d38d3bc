//! The exit-status table: every code the wrapper itself returns, and `Failure`, the error that carries one.
//!
//! The child's own status passes through unchanged (`128 + N` when it died of signal `N`); the
//! wrapper's outcomes use the sysexits range so a script can tell them apart from a child's.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigHandler, Signal, raise, signal};

/// What went wrong, as far as a caller can branch on it: the exit code comes from the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A bad option, an invalid duration, no command.
    Usage,
    /// `--append`: the output is not valid JSONL, or the session file ends in an incomplete line.
    Data,
    /// The session path cannot be used.
    NoInput,
    /// An internal error (a bug).
    Software,
    /// The sidecar cannot be created, or is not ours to use.
    CantCreate,
    /// An I/O error on the session file or the sidecar.
    Io,
    /// The coordination service (etcd) cannot be reached, or its lease was lost.
    Unavailable,
    /// The write lock or the prompt turn was not obtained in time (`-E` overrides the code).
    Busy,
    /// The session file changed from outside during the window.
    Takeover,
    /// Permission denied.
    NoPerm,
    /// The command cannot be executed.
    CannotExecute,
    /// The command was not found.
    NotFound,
    /// A terminating signal ended a wait.
    Interrupted(Signal),
}

/// One row of the exit-status table: the code as documented, and what it means.
pub struct Row {
    pub code: &'static str,
    pub meaning: &'static str,
}

/// The exit-status table: `--help`, the man page and the README render it; nothing copies it.
pub const TABLE: &[Row] = &[
    Row {
        code: "N",
        meaning: "the command's own exit status passes through",
    },
    Row {
        code: "128+N",
        meaning: "the command died of signal N, or the wrapper was interrupted by signal N \
                  while waiting for the lock or a turn",
    },
    Row {
        code: "2",
        meaning: "usage error: a bad option, an invalid duration, no command",
    },
    Row {
        code: "65",
        meaning: "--append: the output is not valid JSONL, or the session file ends in an \
                  incomplete line that sessionlock did not write; nothing appended, output kept",
    },
    Row {
        code: "66",
        meaning: "the session path cannot be used: its directory is missing, it is a directory \
                  or another non-regular file (a FIFO, a device), it ends in /, it loops \
                  through symlinks, or a name is too long",
    },
    Row {
        code: "69",
        meaning: "--coord etcd: etcd cannot be reached in time (the line names the endpoints), \
                  or the wrapper's lease was lost (its command is stopped, nothing committed)",
    },
    Row {
        code: "70",
        meaning: "internal error (a bug)",
    },
    Row {
        code: "73",
        meaning: "the sidecar cannot be created, its path is occupied by a file or a symlink, or \
                  it (or a file in it) is owned by someone other than you or the session \
                  file's owner",
    },
    Row {
        code: "74",
        meaning: "I/O error on the session file or the sidecar: a symlink or FIFO planted in the \
                  sidecar, an unreadable fingerprint or lock state, an --append write that \
                  failed (rolled back, output kept)",
    },
    Row {
        code: "75",
        meaning: "the write lock or the prompt turn was not obtained in time, or --nonblock \
                  found it busy (see --conflict-exit-code)",
    },
    Row {
        code: "76",
        meaning: "takeover: the session file changed from outside during the window; nothing \
                  committed",
    },
    Row {
        code: "77",
        meaning: "permission denied",
    },
    Row {
        code: "126",
        meaning: "the command was found but cannot be executed",
    },
    Row {
        code: "127",
        meaning: "the command was not found",
    },
];

impl Kind {
    /// The exit code of this kind (for `Busy`, unless `-E` says otherwise).
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Kind::Usage => 2,
            Kind::Data => 65,
            Kind::NoInput => 66,
            Kind::Unavailable => 69,
            Kind::Software => 70,
            Kind::CantCreate => 73,
            Kind::Io => 74,
            Kind::Busy => 75,
            Kind::Takeover => 76,
            Kind::NoPerm => 77,
            Kind::CannotExecute => 126,
            Kind::NotFound => 127,
            Kind::Interrupted(signal) => signalled(signal as i32),
        }
    }
}

/// Command-line usage error (clap's code, kept for flock(1)-like scripts).
pub const USAGE: u8 = 2;
/// The default code for a busy lock or turn.
pub const BUSY: u8 = 75;

/// `-q`: a busy or timed-out wait says nothing (the exit status says it).
static QUIET_WHEN_BUSY: AtomicBool = AtomicBool::new(false);

/// Say nothing for a busy lock or turn (`-q`): a cron job that skips a busy turn stays silent.
pub fn quiet_when_busy() {
    QUIET_WHEN_BUSY.store(true, Ordering::Relaxed);
}

/// Report `failure` as its one line, unless `-q` silences it.
pub fn report(failure: &Failure) {
    if failure.kind == Kind::Busy && !failure.loud && QUIET_WHEN_BUSY.load(Ordering::Relaxed) {
        return;
    }
    say(&failure.to_string());
}

/// Set when the wrapper should end by SIGINT itself (see `finish`).
static DIE_OF_SIGINT: AtomicBool = AtomicBool::new(false);

/// End by SIGINT instead of exiting 130, once all cleanup is done: a calling shell stops its loop
/// on Ctrl-C only when its command *died* of SIGINT (bash's wait-and-cooperative-exit).
pub fn die_of_sigint() {
    DIE_OF_SIGINT.store(true, Ordering::Relaxed);
}

/// The process's exit: `code`, or death by SIGINT when `die_of_sigint` was called.
#[must_use]
pub fn finish(code: u8) -> ExitCode {
    if DIE_OF_SIGINT.load(Ordering::Relaxed) {
        // SAFETY: restoring the default disposition; no handler runs after this.
        let _ = unsafe { signal(Signal::SIGINT, SigHandler::SigDfl) };
        let _ = raise(Signal::SIGINT);
    }
    ExitCode::from(code)
}

/// Write one `sessionlock: ` line to stderr; a closed stderr is not worth dying for. Control
/// characters (a newline in a file name, say) are escaped: it stays one line.
pub fn say(message: &str) {
    let mut line = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    let _ = writeln!(io::stderr().lock(), "sessionlock: {line}");
}

/// The status a shell reports for a process that died of signal `signal`.
#[must_use]
pub fn signalled(signal: i32) -> u8 {
    128u8.saturating_add(u8::try_from(signal).unwrap_or(127))
}

/// A wrapper failure: what happened, to which file, and the kind its exit code comes from.
///
/// Its `Display` is the whole one-line message after the `sessionlock: ` prefix.
#[derive(Debug)]
pub struct Failure {
    pub kind: Kind,
    /// Said even under `-q` (a busy lock after the window: a computed reply was kept).
    loud: bool,
    /// `-E N` for a busy failure.
    code_override: Option<u8>,
    what: String,
    file: Option<std::path::PathBuf>,
}

impl Failure {
    /// `<what> (<file>)`.
    pub fn new(kind: Kind, what: impl fmt::Display, file: &Path) -> Self {
        Self {
            kind,
            loud: false,
            code_override: None,
            what: what.to_string(),
            file: Some(file.to_owned()),
        }
    }

    /// Say it even under `-q`.
    #[must_use]
    pub fn loud(mut self) -> Self {
        self.loud = true;
        self
    }

    /// A busy or timed-out wait, exiting with `code` (`-E`).
    pub fn busy(code: u8, what: impl fmt::Display, file: &Path) -> Self {
        let mut f = Self::new(Kind::Busy, what, file);
        f.code_override = Some(code);
        f
    }

    /// The exit code.
    #[must_use]
    pub fn code(&self) -> u8 {
        self.code_override.unwrap_or_else(|| self.kind.code())
    }

    /// Add `note` to what happened (before the file): "...; output kept in X".
    #[must_use]
    pub fn noting(mut self, note: impl fmt::Display) -> Self {
        self.what = format!("{}; {note}", self.what);
        self
    }

    /// Change the kind from `from` to `to` (an I/O error that means "cannot create", say).
    #[must_use]
    pub fn with_kind_if(mut self, from: Kind, to: Kind) -> Self {
        if self.kind == from {
            self.kind = to;
        }
        self
    }

    /// A failure without a file (usage errors only).
    pub fn bare(kind: Kind, what: impl fmt::Display) -> Self {
        Self {
            kind,
            loud: false,
            code_override: None,
            what: what.to_string(),
            file: None,
        }
    }

    /// The wrapper was interrupted by `signal` while waiting for `what`; ends like the signal would.
    pub fn interrupted(signal: Signal, what: &str, file: &Path) -> Self {
        if signal == Signal::SIGINT {
            die_of_sigint();
        }
        Self::new(
            Kind::Interrupted(signal),
            format!("interrupted by {signal} while waiting for {what}"),
            file,
        )
    }

    /// `<what>: <error> (<file>)`, with the kind the error suggests.
    pub fn io(what: impl fmt::Display, err: &io::Error, file: &Path) -> Self {
        Self::new(kind_for_io(err), format!("{what}: {}", describe(err)), file)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{} ({})", self.what, file.display()),
            None => f.write_str(&self.what),
        }
    }
}

impl std::error::Error for Failure {}

/// The kind of an I/O error the wrapper could not get past.
#[must_use]
pub fn kind_for_io(err: &io::Error) -> Kind {
    match err.kind() {
        io::ErrorKind::PermissionDenied => Kind::NoPerm,
        _ => Kind::Io,
    }
}

/// An I/O error as a short lowercase phrase: "permission denied", not "Permission denied (os error 13)".
#[must_use]
pub fn describe(err: &io::Error) -> String {
    let text = match err.raw_os_error() {
        Some(raw) => nix::errno::Errno::from_raw(raw).desc().to_owned(),
        None => err.to_string(),
    };
    // "Permission denied" reads "permission denied"; "I/O error" stays as it is.
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if second.is_lowercase() => {
            first.to_lowercase().chain([second]).chain(chars).collect()
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_death_maps_to_128_plus_n() {
        assert_eq!(signalled(9), 137);
        assert_eq!(signalled(15), 143);
        assert_eq!(Kind::Interrupted(Signal::SIGTERM).code(), 143);
    }

    #[test]
    fn io_errors_read_as_one_lowercase_phrase() {
        let err = io::Error::from_raw_os_error(nix::libc::EACCES);
        assert_eq!(describe(&err), "permission denied");
        assert_eq!(kind_for_io(&err), Kind::NoPerm);
        let err = io::Error::from_raw_os_error(nix::libc::ENOSPC);
        assert_eq!(kind_for_io(&err), Kind::Io);
        let err = io::Error::from_raw_os_error(nix::libc::EIO);
        assert_eq!(describe(&err), "I/O error");
    }

    #[test]
    fn failure_names_the_file_last() {
        let f = Failure::new(Kind::Busy, "write lock is busy", Path::new("/tmp/s.jsonl"));
        assert_eq!(f.to_string(), "write lock is busy (/tmp/s.jsonl)");
        assert_eq!(f.code(), 75);
        let f = Failure::busy(200, "busy", Path::new("/tmp/s.jsonl"));
        assert_eq!((f.kind, f.code()), (Kind::Busy, 200));
    }

    #[test]
    fn every_kind_has_its_own_code_and_a_row_in_the_table() {
        let kinds = [
            Kind::Usage,
            Kind::Data,
            Kind::NoInput,
            Kind::Software,
            Kind::CantCreate,
            Kind::Io,
            Kind::Unavailable,
            Kind::Busy,
            Kind::Takeover,
            Kind::NoPerm,
            Kind::CannotExecute,
            Kind::NotFound,
        ];
        let mut codes: Vec<u8> = kinds.iter().map(|k| k.code()).collect();
        for code in &codes {
            assert!(
                TABLE.iter().any(|r| r.code == code.to_string()),
                "code {code} is not documented"
            );
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
        assert_eq!(TABLE.len(), kinds.len() + 2, "a row documents no kind");
    }
}
