//! The commit path (`--append`): the child's stdout captured into the sidecar, checked to be
//! JSONL, and appended to the session file under the write lock, all or nothing.
//!
//! The append is guarded by an intent the coordinator records first (old length, new length,
//! checksum, the capture it comes from): a holder killed mid-write leaves the intent behind, and
//! the next holder rolls the write back, but only when the bytes after the old length are a
//! prefix of exactly that write. Output that is not committed (a failed child, a takeover,
//! invalid output, a failed write) is kept in `kept/<label>-<reason>.jsonl`, so nothing is lost.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::coord::files::layout::checksum;
use crate::coord::files::lock::{self, Kind as LockKind, Range};
use crate::exit::{self, Failure, Kind};
use crate::sidecar::{Modes, Sidecar};

/// Captured output while the child runs.
pub const OUT: &str = "out";
/// Output (and repaired tails) kept because they were not committed.
pub const KEPT: &str = "kept";

/// Why output was kept instead of committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    /// Not valid JSONL.
    Invalid,
    /// The command failed or died.
    CommandFailed,
    /// `--max-hold` stopped the command.
    MaxHold,
    /// The fence failed.
    Takeover,
    /// The append failed (rolled back).
    WriteFailed,
    /// The session file ends in a line sessionlock did not write.
    IncompleteSession,
    /// The write lock was not obtained again after the window.
    LockTimeout,
    /// A signal ended the wait for the write lock after the window.
    Interrupted,
    /// The lock state could not be read after the window.
    FenceUnreadable,
    /// Any other way out before the commit.
    NotCommitted,
    /// A wrapper died while its command was writing; found by the next one.
    Abandoned,
    /// A wrapper died in the middle of its append, which the next holder rolled back.
    RolledBack,
    /// An incomplete last line of the session file, moved aside by `--repair`.
    SessionTail,
}

impl KeepReason {
    pub const ALL: [KeepReason; 13] = [
        KeepReason::Invalid,
        KeepReason::CommandFailed,
        KeepReason::MaxHold,
        KeepReason::Takeover,
        KeepReason::WriteFailed,
        KeepReason::IncompleteSession,
        KeepReason::LockTimeout,
        KeepReason::Interrupted,
        KeepReason::FenceUnreadable,
        KeepReason::NotCommitted,
        KeepReason::Abandoned,
        KeepReason::RolledBack,
        KeepReason::SessionTail,
    ];

    /// The name in kept files' names and in `status`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::Invalid => "invalid",
            KeepReason::CommandFailed => "command-failed",
            KeepReason::MaxHold => "max-hold",
            KeepReason::Takeover => "takeover",
            KeepReason::WriteFailed => "write-failed",
            KeepReason::IncompleteSession => "incomplete-session",
            KeepReason::LockTimeout => "lock-timeout",
            KeepReason::Interrupted => "interrupted",
            KeepReason::FenceUnreadable => "fence-unreadable",
            KeepReason::NotCommitted => "not-committed",
            KeepReason::Abandoned => "abandoned",
            KeepReason::RolledBack => "rolled-back",
            KeepReason::SessionTail => "session-tail",
        }
    }

    /// Split a kept file's name into its label and reason.
    #[must_use]
    pub fn parse_name(name: &str) -> Option<(String, KeepReason)> {
        let stem = name
            .strip_suffix(".jsonl")
            .or_else(|| name.strip_suffix(".bin"))?;
        // A second file of one label and reason is `<label>-<reason>.<n>`.
        let stem = match stem.rsplit_once('.') {
            Some((head, n)) if n.bytes().all(|b| b.is_ascii_digit()) && !head.ends_with('-') => {
                if Self::ALL.iter().any(|r| head.ends_with(r.as_str())) {
                    head
                } else {
                    stem
                }
            }
            _ => stem,
        };
        Self::ALL.iter().find_map(|&r| {
            let label = stem.strip_suffix(r.as_str())?.strip_suffix('-')?;
            Some((label.to_owned(), r))
        })
    }
}

/// What the coordinator records before an append, so a holder that dies mid-write can be rolled
/// back by the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Intent {
    pub old_len: u64,
    pub new_len: u64,
    /// Checksum of the bytes being appended.
    pub sum: u64,
    /// The session file it is appended to.
    pub dev: u64,
    pub ino: u64,
    /// The capture holding the bytes (`out/<capture as 16 hex digits>.jsonl`).
    pub capture: u64,
}

/// The child's stdout, being captured into the sidecar (and copied to our stdout with `--tee`).
pub struct Capture {
    id: u64,
    path: PathBuf,
    /// Our own descriptor: the output is read back through it, never by path, so a file renamed
    /// over the capture cannot inject lines.
    file: File,
    kept_dir: PathBuf,
    modes: Modes,
    label: String,
    tee: Option<Tee>,
    resolved: bool,
}

/// The thread copying the child's stdout to the capture file and to our stdout.
struct Tee {
    thread: JoinHandle<io::Result<()>>,
    stop: std::os::fd::OwnedFd,
}

/// The path of capture `id`.
#[must_use]
pub fn capture_path(sidecar_dir: &Path, id: u64) -> PathBuf {
    sidecar_dir.join(OUT).join(format!("{id:016x}.jsonl"))
}

impl Capture {
    /// Create a new capture; return it with the descriptor to give the child as stdout. `label`
    /// names the turn in kept files.
    pub fn start(sidecar: &Sidecar, label: &str, tee: bool) -> Result<(Self, OwnedFd), Failure> {
        sidecar.subdir(OUT)?;
        let (id, path, file) = loop {
            let id = unique_id();
            let path = capture_path(sidecar.dir(), id);
            match sidecar.create_file(&path) {
                Ok(file) => break (id, path, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Failure::io("cannot create the output capture", &e, &path)),
            }
        };
        // Its lock says "someone still writes here": the child shares this descriptor.
        lock::try_lock(&file, LockKind::Write, Range::byte(0))
            .map_err(|e| Failure::io("cannot lock the output capture", &e, &path))?;
        let child_end = file
            .try_clone()
            .map_err(|e| Failure::io("cannot create the output capture", &e, &path))?;
        let (tee, stdio) = if tee {
            let (tee, stdio) =
                Tee::start(child_end).map_err(|e| Failure::io("cannot start --tee", &e, &path))?;
            (Some(tee), stdio)
        } else {
            (None, OwnedFd::from(child_end))
        };
        Ok((
            Self {
                id,
                path,
                file,
                kept_dir: sidecar.path(KEPT),
                modes: sidecar.modes(),
                label: label.to_owned(),
                tee,
                resolved: false,
            },
            stdio,
        ))
    }

    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The child has exited: copy what is left in the pipe and stop copying.
    pub fn finish(&mut self) -> Result<(), Failure> {
        if let Some(tee) = self.tee.take() {
            let _ = nix::unistd::write(&tee.stop, b"x");
            let copied = tee
                .thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the --tee thread panicked")));
            copied.map_err(|e| Failure::io("cannot capture the output", &e, &self.path))?;
        }
        Ok(())
    }

    /// The captured bytes, read through our own descriptor.
    pub fn read(&self) -> Result<Vec<u8>, Failure> {
        let fail = |e: io::Error| Failure::io("cannot read the captured output", &e, &self.path);
        let len = self.file.metadata().map_err(fail)?.len();
        let mut bytes = vec![
            0u8;
            usize::try_from(len)
                .map_err(io::Error::other)
                .map_err(fail)?
        ];
        self.file.read_exact_at(&mut bytes, 0).map_err(fail)?;
        Ok(bytes)
    }

    /// The exact bytes validation produced are what the capture must hold for a rollback to
    /// prove a prefix: add the final newline validation added.
    pub fn settle(&self, bytes: &[u8]) -> Result<(), Failure> {
        let len = self
            .file
            .metadata()
            .map_err(|e| Failure::io("cannot read the captured output", &e, &self.path))?
            .len();
        if (bytes.len() as u64) > len {
            self.file
                .write_all_at(&bytes[len as usize..], len)
                .map_err(|e| Failure::io("cannot write the captured output", &e, &self.path))?;
        }
        Ok(())
    }

    /// The output was committed: remove the capture.
    pub fn discard(mut self) {
        self.resolved = true;
        let _ = fs::remove_file(&self.path);
    }

    /// The output was not committed: keep it as `kept/<label>-<reason>.jsonl` and return that
    /// path; empty output is simply removed (`None`: nothing was lost).
    pub fn keep(mut self, reason: KeepReason) -> Option<PathBuf> {
        self.keep_inner(reason)
    }

    fn keep_inner(&mut self, reason: KeepReason) -> Option<PathBuf> {
        if self.resolved {
            return None;
        }
        self.resolved = true;
        let _ = self.finish();
        let empty = self.file.metadata().map_or(true, |m| m.len() == 0);
        keep_file(
            &self.path,
            empty,
            &self.kept_dir,
            self.modes,
            &self.label,
            reason,
        )
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Any way out that did not commit keeps the output.
        let _ = self.keep_inner(KeepReason::NotCommitted);
    }
}

/// A number no other capture of this sidecar is likely to have (checked by `O_EXCL` anyway).
fn unique_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut seed = Vec::with_capacity(32);
    seed.extend_from_slice(&nanos.to_le_bytes());
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    seed.extend_from_slice(&COUNT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    checksum(&seed)
}

impl Tee {
    fn start(mut file: File) -> io::Result<(Self, OwnedFd)> {
        let (read, write) = nix::unistd::pipe()?;
        let (stop_read, stop) = nix::unistd::pipe()?;
        for fd in [&read, &write, &stop_read, &stop] {
            fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
        }
        // The thread starts with every signal blocked, so the wrapper's signals (and the timer
        // that ends its lock waits) always reach the main thread.
        let mut old = nix::sys::signal::SigSet::empty();
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::all()),
            Some(&mut old),
        )?;
        // Two threads: one copies the child's output into the capture and never blocks on our
        // stdout; the other copies it to stdout. A reader that stops reading (a paused terminal,
        // a stopped pager) then cannot stall the commit under the write lock: only the wrapper's
        // exit waits for stdout, with every lock already given up (see `flush_tee`).
        let (to_stdout, chunks) = std::sync::mpsc::channel::<Vec<u8>>();
        let writer = thread::Builder::new()
            .name("tee-out".into())
            .spawn(move || {
                let mut out = io::stdout();
                for chunk in chunks {
                    // A closed stdout ends the copy to it, not the capture.
                    if out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
                        return;
                    }
                }
            });
        if let Ok(writer) = writer {
            TEE_OUT
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(writer);
        }
        let spawned = thread::Builder::new().name("tee".into()).spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut copy = |n: usize, buf: &[u8]| -> io::Result<()> {
                file.write_all(&buf[..n])?;
                let _ = to_stdout.send(buf[..n].to_vec());
                Ok(())
            };
            loop {
                let mut fds = [
                    PollFd::new(read.as_fd(), PollFlags::POLLIN),
                    PollFd::new(stop_read.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
                let data = fds[0].any().unwrap_or(false);
                let stopped = fds[1].any().unwrap_or(false);
                if data {
                    match nix::unistd::read(&read, &mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => copy(n, &buf)?,
                        Err(Errno::EINTR | Errno::EAGAIN) => {}
                        Err(e) => return Err(e.into()),
                    }
                } else if stopped {
                    // The child is gone; a grandchild may still hold the pipe open, so take what
                    // is there now and stop.
                    fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
                    loop {
                        match nix::unistd::read(&read, &mut buf) {
                            Ok(0) | Err(Errno::EAGAIN) => return Ok(()),
                            Ok(n) => copy(n, &buf)?,
                            Err(Errno::EINTR) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
        });
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&old),
            None,
        )?;
        let thread = spawned?;
        Ok((Self { thread, stop }, write))
    }
}

/// The threads still copying `--tee` output to stdout.
static TEE_OUT: std::sync::Mutex<Vec<JoinHandle<()>>> = std::sync::Mutex::new(Vec::new());

/// Before the wrapper exits (every lock given up): let `--tee` finish writing to stdout.
pub fn flush_tee() {
    let writers = std::mem::take(
        &mut *TEE_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if writers.is_empty() {
        return;
    }
    // Nothing is held any more: a signal may end the wrapper as it would any program.
    let _ = crate::signal::restore_defaults();
    for writer in writers {
        let _ = writer.join();
    }
}

/// Why output is not valid JSONL.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    pub line: usize,
    pub error: String,
}

/// Check that `output` is complete JSONL lines, each one JSON value in valid UTF-8, and return
/// it ready to append (a missing final newline is added). Empty output is valid.
pub fn validate(mut output: Vec<u8>) -> Result<Vec<u8>, Invalid> {
    if output.is_empty() {
        return Ok(output);
    }
    let body = output.strip_suffix(b"\n").unwrap_or(&output);
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let invalid = |error: String| Invalid {
            line: index + 1,
            error,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            return Err(invalid("an empty line".into()));
        }
        let text = std::str::from_utf8(line).map_err(|e| invalid(format!("invalid UTF-8: {e}")))?;
        // Into a Value, not IgnoredAny: that also checks escapes (lone surrogates) and numbers.
        serde_json::from_str::<serde_json::Value>(text).map_err(|e| invalid(e.to_string()))?;
    }
    if !output.ends_with(b"\n") {
        output.push(b'\n');
    }
    Ok(output)
}

/// An append about to happen: the session file open, its old length, the bytes.
pub struct Pending {
    file: File,
    session: PathBuf,
    pub intent: Intent,
    bytes: Vec<u8>,
    /// Where an incomplete last line of the session was moved by `--repair`.
    pub repaired: Option<(u64, PathBuf)>,
}

/// Open `session` for the append of `bytes` (captured as `capture`): refuse (or, with `repair`,
/// move aside into `kept/`) an incomplete last line, and work out the intent to record.
/// Never through a symlink; with `expected` (the file the fence vouched for), never to
/// another file than that one.
pub fn prepare(
    session: &Path,
    sidecar: &Sidecar,
    label: &str,
    capture: u64,
    bytes: Vec<u8>,
    repair: bool,
    expected: Option<crate::fence::Fingerprint>,
) -> Result<Pending, Failure> {
    crate::fault::check("session-open")
        .map_err(|e| Failure::io("cannot open the session file to append", &e, session))?;
    let replaced = |how: &str| {
        Failure::new(
            Kind::Takeover,
            format!(
                "takeover: the session file was {how} just before the commit; nothing appended"
            ),
            session,
        )
    };
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
        .open(session)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                replaced("replaced by a symlink")
            } else {
                Failure::io("cannot open the session file to append", &e, session)
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| Failure::io("cannot read the session file", &e, session))?;
    if !meta.is_file() {
        return Err(Failure::new(
            Kind::NoInput,
            "the session file is not a regular file; refusing to append to it",
            session,
        ));
    }
    if let Some(fp) = expected {
        // (A fingerprint of a file shared between hosts has no device number: 0.)
        let same = fp.exists && fp.ino == meta.ino() && (fp.dev == 0 || fp.dev == meta.dev());
        let created_now = !fp.exists && meta.len() == 0;
        if !same && !created_now {
            return Err(replaced("replaced by another file"));
        }
    }
    let _ = fcntl(file.as_fd(), FcntlArg::F_SETFL(OFlag::O_APPEND));
    let len = meta.len();
    let mut repaired = None;
    if !bytes.is_empty()
        && let Some(keep) = incomplete_tail(&file, len)
            .map_err(|e| Failure::io("cannot read the session file", &e, session))?
    {
        let tail = len - keep;
        if !repair {
            return Err(Failure::new(
                Kind::Data,
                format!(
                    "the session file ends with an incomplete line ({tail} bytes after the last \
                     newline) that sessionlock did not write; nothing appended; rerun with \
                     --repair to move it into {}",
                    sidecar.path(KEPT).display()
                ),
                session,
            ));
        }
        let moved = move_tail(&file, keep, len, sidecar, label)
            .map_err(|e| Failure::io("cannot move the incomplete last line aside", &e, session))?;
        repaired = Some((tail, moved));
    }
    let old_len = if repaired.is_some() {
        file.metadata()
            .map_err(|e| Failure::io("cannot read the session file", &e, session))?
            .len()
    } else {
        len
    };
    Ok(Pending {
        intent: Intent {
            old_len,
            new_len: old_len + bytes.len() as u64,
            sum: checksum(&bytes),
            dev: meta.dev(),
            ino: meta.ino(),
            capture,
        },
        file,
        session: session.to_owned(),
        bytes,
        repaired,
    })
}

/// An append that was made and may still be rolled back (if publishing it fails).
pub struct Written {
    file: File,
    session: PathBuf,
    old_len: u64,
    pub bytes: usize,
    /// How many lines were appended.
    pub lines: usize,
    pub repaired: Option<(u64, PathBuf)>,
}

impl Pending {
    /// One write and fsync; on any error, truncate back to the old length.
    pub fn write(mut self) -> Result<Written, Failure> {
        if self.bytes.is_empty() {
            return Ok(self.written());
        }
        // A file size limit fails the write (EFBIG): `Signals::install` ignores SIGXFSZ.
        if crate::fault::hook("die-mid-append") {
            // Half the reply, then die as SIGKILL would leave it.
            let half = self.bytes.len() / 2;
            let _ = self.file.write_all(&self.bytes[..half]);
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        let written = crate::fault::check("session-write")
            .and_then(|()| self.file.write_all(&self.bytes))
            .and_then(|()| crate::fault::check("session-sync"))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let start = self.intent.old_len;
            let what = match rollback(&self.file, start) {
                Ok(()) => format!(
                    "cannot append to the session file: {}; rolled back to {start} bytes",
                    exit::describe(&e)
                ),
                Err(r) => format!(
                    "cannot append to the session file: {}; the rollback to {start} bytes \
                     failed too: {} (the next holder rolls it back)",
                    exit::describe(&e),
                    exit::describe(&r)
                ),
            };
            return Err(Failure::new(Kind::Io, what, &self.session));
        }
        Ok(self.written())
    }

    fn written(&mut self) -> Written {
        Written {
            file: self.file.try_clone().expect("dup of an open file"),
            session: self.session.clone(),
            old_len: self.intent.old_len,
            bytes: self.bytes.len(),
            lines: self.bytes.split_inclusive(|&b| b == b'\n').count(),
            repaired: self.repaired.take(),
        }
    }
}

impl Written {
    /// Undo the append (publishing it failed): back to the old length. A failure says so in
    /// the returned note; the intent left behind makes the next holder finish the job.
    #[must_use]
    pub fn roll_back(&self) -> String {
        match rollback(&self.file, self.old_len) {
            Ok(()) => format!("the append was rolled back to {} bytes", self.old_len),
            Err(e) => format!(
                "the rollback to {} bytes failed: {} (the next holder rolls it back)",
                self.old_len,
                exit::describe(&e)
            ),
        }
    }

    #[must_use]
    pub fn session(&self) -> &Path {
        &self.session
    }
}

fn rollback(file: &File, len: u64) -> io::Result<()> {
    crate::fault::check("session-truncate")?;
    file.set_len(len)?;
    file.sync_data()
}

/// What the next holder did about an unfinished commit.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing of it reached the file.
    NothingWritten,
    /// Its bytes were a prefix of the intended write and were truncated away; its output is
    /// kept at the path, if it could be.
    RolledBack { bytes: u64, kept: Option<PathBuf> },
    /// The file cannot be proven to hold only our partial write: left as it is.
    LeftAlone(&'static str),
}

/// Roll back the unfinished commit `intent` of a holder that died, if the file provably holds
/// a prefix of exactly that write after the old length. Call it under the write lock.
pub fn recover(session: &Path, sidecar: &Sidecar, intent: &Intent) -> io::Result<Recovery> {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
        .open(session)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Recovery::LeftAlone("the session file is gone"));
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || (meta.dev(), meta.ino()) != (intent.dev, intent.ino) {
        return Ok(Recovery::LeftAlone("the session file was replaced"));
    }
    let len = meta.len();
    let capture = capture_path(sidecar.dir(), intent.capture);
    if len <= intent.old_len {
        adopt(sidecar, &capture, KeepReason::Abandoned);
        return Ok(if len == intent.old_len {
            Recovery::NothingWritten
        } else {
            Recovery::LeftAlone("the session file was truncated since")
        });
    }
    if len > intent.new_len {
        return Ok(Recovery::LeftAlone(
            "the session file has grown past the intended write",
        ));
    }
    let Ok(mut expected) = read_trusted(sidecar, &capture) else {
        return Ok(Recovery::LeftAlone(
            "the capture of the interrupted write is missing",
        ));
    };
    if !expected.is_empty() && !expected.ends_with(b"\n") {
        expected.push(b'\n');
    }
    if checksum(&expected) != intent.sum || expected.len() as u64 != intent.new_len - intent.old_len
    {
        return Ok(Recovery::LeftAlone(
            "the capture does not match the interrupted write",
        ));
    }
    let written = (len - intent.old_len) as usize;
    let mut found = vec![0u8; written];
    file.read_exact_at(&mut found, intent.old_len)?;
    if found != expected[..written] {
        return Ok(Recovery::LeftAlone(
            "the bytes after the old length are not the interrupted write",
        ));
    }
    rollback(&file, intent.old_len)?;
    let kept = adopt(sidecar, &capture, KeepReason::RolledBack);
    Ok(Recovery::RolledBack {
        bytes: written as u64,
        kept,
    })
}

/// Read a capture we (or the session's owner) wrote, without following a symlink.
fn read_trusted(sidecar: &Sidecar, path: &Path) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || !sidecar.modes().trusts(meta.uid()) {
        return Err(io::Error::other("not a capture of ours"));
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut &file, &mut bytes)?;
    Ok(bytes)
}

/// Keep the capture at `path` of a wrapper that is gone under `reason` (or remove it if empty).
fn adopt(sidecar: &Sidecar, path: &Path, reason: KeepReason) -> Option<PathBuf> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let stem = path.file_stem()?.to_string_lossy().into_owned();
    keep_file(
        path,
        meta.len() == 0,
        &sidecar.path(KEPT),
        sidecar.modes(),
        &stem,
        reason,
    )
}

/// Captures in `out/` whose wrapper (and command) are gone: nobody holds their lock.
#[must_use]
pub fn abandoned(sidecar: &Sidecar) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(sidecar.path(OUT)) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|path| {
            let Ok(file) = OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                .open(path)
            else {
                return false;
            };
            file.metadata().is_ok_and(|m| m.is_file())
                && lock::probe(&file, LockKind::Read, Range::byte(0)).is_ok_and(|c| c.is_none())
        })
        .collect()
}

/// Keep every abandoned capture (non-empty ones in `kept/`, empty ones removed). Under the
/// write lock, so no rollback needs one of them at the same time.
pub fn sweep_abandoned(sidecar: &Sidecar) {
    if !sidecar.has(OUT) {
        return;
    }
    for path in abandoned(sidecar) {
        adopt(sidecar, &path, KeepReason::Abandoned);
    }
}

/// If `file` (of `len` bytes) does not end with a newline, the length to keep (up to and
/// including the last newline, 0 if none).
fn incomplete_tail(file: &File, len: u64) -> io::Result<Option<u64>> {
    if len == 0 {
        return Ok(None);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(None);
    }
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.read_exact_at(part, start)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64 + 1));
        }
        end = start;
    }
    Ok(Some(0))
}

/// Copy bytes `keep..len` of `file` to `kept/<label>-session-tail.bin`, then truncate to `keep`.
fn move_tail(
    file: &File,
    keep: u64,
    len: u64,
    sidecar: &Sidecar,
    label: &str,
) -> Result<PathBuf, io::Error> {
    let dir = sidecar
        .subdir(KEPT)
        .map_err(|f| io::Error::other(f.to_string()))?;
    let mut tail = vec![0u8; (len - keep) as usize];
    file.read_exact_at(&mut tail, keep)?;
    let stem = format!("{label}-{}", KeepReason::SessionTail.as_str());
    let (path, mut out) = create_unclobbered(sidecar, &dir, &stem, "bin")?;
    out.write_all(&tail)?;
    out.sync_all()?;
    file.set_len(keep)?;
    file.sync_data()?;
    Ok(path)
}

/// Keep output file `path` as `<kept_dir>/<label>-<reason>.jsonl` (never over another), or
/// remove it if `empty`: `None` then, nothing was lost. If it cannot be moved, it stays where
/// it is and that path is returned.
fn keep_file(
    path: &Path,
    empty: bool,
    kept_dir: &Path,
    modes: Modes,
    label: &str,
    reason: KeepReason,
) -> Option<PathBuf> {
    if empty {
        let _ = fs::remove_file(path);
        return None;
    }
    let stem = format!("{label}-{}", reason.as_str());
    let kept = crate::sidecar::ensure_dir(kept_dir, modes)
        .ok()
        .and_then(|()| link_unclobbered(path, kept_dir, &stem, "jsonl").ok());
    Some(kept.unwrap_or_else(|| path.to_owned()))
}

/// The names a kept file may get: `<stem>.<ext>`, `<stem>.2.<ext>`, ...
fn names(stem: &str, ext: &str) -> impl Iterator<Item = String> {
    (1u32..).map(move |n| {
        if n == 1 {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}.{n}.{ext}")
        }
    })
}

/// Move `from` into `dir` under the first free name: a hard link fails rather than replace.
fn link_unclobbered(from: &Path, dir: &Path, stem: &str, ext: &str) -> io::Result<PathBuf> {
    for name in names(stem, ext).take(10_000) {
        let to = dir.join(name);
        match fs::hard_link(from, &to) {
            Ok(()) => {
                fs::remove_file(from)?;
                return Ok(to);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free name to keep the output under"))
}

/// Create a new file in `dir` under the first free name.
fn create_unclobbered(
    sidecar: &Sidecar,
    dir: &Path,
    stem: &str,
    ext: &str,
) -> io::Result<(PathBuf, File)> {
    for name in names(stem, ext).take(10_000) {
        let to = dir.join(name);
        match sidecar.create_file(&to) {
            Ok(file) => return Ok((to, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free name to keep the output under"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_jsonl_passes_and_gets_its_final_newline() {
        let ok = |b: &[u8]| validate(b.to_vec()).unwrap();
        assert_eq!(ok(b""), b"");
        assert_eq!(ok(b"{\"a\":1}\n[2]\n"), b"{\"a\":1}\n[2]\n");
        assert_eq!(ok(b"{\"a\":1}\n\"s\""), b"{\"a\":1}\n\"s\"\n");
    }

    #[test]
    fn invalid_lines_are_named() {
        let bad = |b: &[u8]| validate(b.to_vec()).unwrap_err().line;
        assert_eq!(bad(b"{\"a\":1}\nnot json\n"), 2);
        assert_eq!(bad(b"{}\n\n{}\n"), 2);
        assert_eq!(bad(b"{\"a\":\n1}\n"), 1);
        assert_eq!(bad(b"{} {}\n"), 1);
        assert_eq!(bad(b"\n"), 1);
        assert_eq!(bad(b"{}\n{\"s\":\"\xff\xfe\"}\n"), 2);
        assert_eq!(bad(b"{\"s\":\"\\ud800\"}\n"), 1);
        assert_eq!(bad(b"1e999\n"), 1);
    }

    #[test]
    fn kept_names_split_into_label_and_reason() {
        let parse = |n: &str| KeepReason::parse_name(n);
        assert_eq!(
            parse("3.7-command-failed.jsonl"),
            Some(("3.7".into(), KeepReason::CommandFailed))
        );
        assert_eq!(
            parse("3.7-takeover.2.jsonl"),
            Some(("3.7".into(), KeepReason::Takeover))
        );
        assert_eq!(
            parse("run.42-session-tail.bin"),
            Some(("run.42".into(), KeepReason::SessionTail))
        );
        assert_eq!(parse("notes.txt"), None);
        for r in KeepReason::ALL {
            assert_eq!(
                parse(&format!("x-{}.jsonl", r.as_str())),
                Some(("x".into(), r))
            );
        }
    }

    #[test]
    fn an_incomplete_tail_is_found_across_chunks() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("s");
        let mut content = b"{}\n".to_vec();
        content.extend(std::iter::repeat_n(b'x', 200_000));
        fs::write(&path, &content).unwrap();
        let f = File::open(&path).unwrap();
        assert_eq!(incomplete_tail(&f, content.len() as u64).unwrap(), Some(3));
        fs::write(&path, b"{}\n").unwrap();
        assert_eq!(
            incomplete_tail(&File::open(&path).unwrap(), 3).unwrap(),
            None
        );
        fs::write(&path, b"abc").unwrap();
        assert_eq!(
            incomplete_tail(&File::open(&path).unwrap(), 3).unwrap(),
            Some(0)
        );
    }
}
