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

/// Command-line usage error (clap's code, kept for flock(1)-like scripts).
pub const USAGE: u8 = 2;
/// `--append`: the child's output is not valid JSONL, or the session ends in an incomplete line.
pub const DATA: u8 = 65;
/// The session path cannot be used: its directory is missing, or it is a directory.
pub const NO_INPUT: u8 = 66;
/// An internal error (a bug): please report it.
pub const SOFTWARE: u8 = 70;
/// The sidecar cannot be created or is occupied by something that is not our directory.
pub const CANT_CREATE: u8 = 73;
/// An I/O error on the session file or the sidecar.
pub const IO: u8 = 74;
/// The write lock or the prompt turn was not obtained in time, or `--nonblock` found it busy.
pub const BUSY: u8 = 75;
/// Takeover: the session file changed from outside during the prompt window.
pub const TAKEOVER: u8 = 76;
/// Permission denied on the session file, its directory or the sidecar.
pub const NO_PERM: u8 = 77;
/// The command was found but cannot be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;

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

/// Write one `sessionlock: ` line to stderr; a closed stderr is not worth dying for.
pub fn say(message: &str) {
    let _ = writeln!(io::stderr().lock(), "sessionlock: {message}");
}

/// The status a shell reports for a process that died of signal `signal`.
#[must_use]
pub fn signalled(signal: i32) -> u8 {
    128u8.saturating_add(u8::try_from(signal).unwrap_or(127))
}

/// A wrapper failure: what happened, to which file, and the exit code it maps to.
///
/// Its `Display` is the whole one-line message after the `sessionlock: ` prefix.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    what: String,
    file: Option<std::path::PathBuf>,
}

impl Failure {
    /// `<what> (<file>)`.
    pub fn new(code: u8, what: impl fmt::Display, file: &Path) -> Self {
        Self {
            code,
            what: what.to_string(),
            file: Some(file.to_owned()),
        }
    }

    /// Add `note` to what happened (before the file): "...; output kept in X".
    #[must_use]
    pub fn noting(mut self, note: impl fmt::Display) -> Self {
        self.what = format!("{}; {note}", self.what);
        self
    }

    /// A failure without a file (usage errors only).
    pub fn bare(code: u8, what: impl fmt::Display) -> Self {
        Self {
            code,
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
            signalled(signal as i32),
            format!("interrupted by {signal} while waiting for {what}"),
            file,
        )
    }

    /// `<what>: <error> (<file>)`, with the code the error's kind suggests.
    pub fn io(what: impl fmt::Display, err: &io::Error, file: &Path) -> Self {
        Self::new(code_for_io(err), format!("{what}: {}", describe(err)), file)
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

/// The exit code for an I/O error the wrapper could not get past.
#[must_use]
pub fn code_for_io(err: &io::Error) -> u8 {
    match err.kind() {
        io::ErrorKind::PermissionDenied => NO_PERM,
        _ => IO,
    }
}

/// An I/O error as a short lowercase phrase: "permission denied", not "Permission denied (os error 13)".
#[must_use]
pub fn describe(err: &io::Error) -> String {
    let text = match err.raw_os_error() {
        Some(raw) => nix::errno::Errno::from_raw(raw).desc().to_owned(),
        None => err.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_death_maps_to_128_plus_n() {
        assert_eq!(signalled(9), 137);
        assert_eq!(signalled(15), 143);
    }

    #[test]
    fn io_errors_read_as_one_lowercase_phrase() {
        let err = io::Error::from_raw_os_error(nix::libc::EACCES);
        assert_eq!(describe(&err), "permission denied");
        assert_eq!(code_for_io(&err), NO_PERM);
        let err = io::Error::from_raw_os_error(nix::libc::ENOSPC);
        assert_eq!(code_for_io(&err), IO);
    }

    #[test]
    fn failure_names_the_file_last() {
        let f = Failure::new(BUSY, "write lock is busy", Path::new("/tmp/s.jsonl"));
        assert_eq!(f.to_string(), "write lock is busy (/tmp/s.jsonl)");
        assert_eq!(f.code, BUSY);
    }

    #[test]
    fn wrapper_codes_are_distinct() {
        let mut codes = vec![
            USAGE,
            DATA,
            NO_INPUT,
            SOFTWARE,
            CANT_CREATE,
            IO,
            BUSY,
            TAKEOVER,
            NO_PERM,
            CANNOT_EXECUTE,
            NOT_FOUND,
        ];
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n);
    }
}
