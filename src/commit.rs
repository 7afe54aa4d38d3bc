//! The commit path (`--append`): the child's stdout captured into the sidecar, checked to be
//! JSONL, and appended to the session file under the write lock, all or nothing.
//!
//! Output that is not committed (a failed child, a takeover, invalid output, a failed write) is
//! kept in `kept/<ticket>-<reason>.jsonl`, so nothing is lost.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread::{self, JoinHandle};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::exit::{self, Failure};
use crate::sidecar::{self, Sidecar};

/// Captured output while the child runs.
pub const OUT: &str = "out";
/// Output (and repaired tails) kept because they were not committed.
pub const KEPT: &str = "kept";

/// The child's stdout, being captured into the sidecar (and copied to our stdout with `--tee`).
pub struct Capture {
    path: PathBuf,
    kept_dir: PathBuf,
    ticket: u64,
    tee: Option<Tee>,
    resolved: bool,
}

/// The thread copying the child's stdout to the capture file and to our stdout.
struct Tee {
    thread: JoinHandle<io::Result<()>>,
    stop: OwnedFd,
}

impl Capture {
    /// Create `out/<ticket>.jsonl`; return it with the `Stdio` to give the child as stdout.
    pub fn start(sidecar: &Sidecar, ticket: u64, tee: bool) -> Result<(Self, Stdio), Failure> {
        let dir = sidecar.path(OUT);
        make_dir(&dir)?;
        let path = dir.join(format!("{ticket}.jsonl"));
        let file = sidecar::create_nofollow(&path, 0o600)
            .map_err(|e| Failure::io("cannot create the output capture", &e, &path))?;
        let (tee, stdio) = if tee {
            let (tee, stdio) =
                Tee::start(file).map_err(|e| Failure::io("cannot start --tee", &e, &path))?;
            (Some(tee), stdio)
        } else {
            (None, Stdio::from(file))
        };
        Ok((
            Self {
                path,
                kept_dir: sidecar.path(KEPT),
                ticket,
                tee,
                resolved: false,
            },
            stdio,
        ))
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

    /// The captured bytes.
    pub fn read(&self) -> Result<Vec<u8>, Failure> {
        fs::read(&self.path)
            .map_err(|e| Failure::io("cannot read the captured output", &e, &self.path))
    }

    /// The output was committed: remove the capture.
    pub fn discard(mut self) {
        self.resolved = true;
        let _ = fs::remove_file(&self.path);
    }

    /// The output was not committed: keep it as `kept/<ticket>-<reason>.jsonl` and return that
    /// path; empty output is simply removed (`None`: nothing was lost).
    pub fn keep(mut self, reason: &str) -> Option<PathBuf> {
        self.keep_inner(reason)
    }

    fn keep_inner(&mut self, reason: &str) -> Option<PathBuf> {
        if self.resolved {
            return None;
        }
        self.resolved = true;
        let _ = self.finish();
        keep_file(
            &self.path,
            &self.kept_dir,
            &format!("{}-{reason}", self.ticket),
        )
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Any way out that did not commit keeps the output.
        let _ = self.keep_inner("not-committed");
    }
}

impl Tee {
    fn start(mut file: File) -> io::Result<(Self, Stdio)> {
        let (read, write) = nix::unistd::pipe()?;
        let (stop_read, stop) = nix::unistd::pipe()?;
        for fd in [&read, &write, &stop_read, &stop] {
            fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
        }
        let thread = thread::Builder::new().name("tee".into()).spawn(move || {
            let mut stdout = Some(io::stdout());
            let mut buf = vec![0u8; 64 * 1024];
            let mut copy = |n: usize, buf: &[u8]| -> io::Result<()> {
                file.write_all(&buf[..n])?;
                if let Some(out) = stdout.as_mut() {
                    // A closed stdout ends the copy to it, not the capture.
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        stdout = None;
                    }
                }
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
        })?;
        Ok((Self { thread, stop }, Stdio::from(write)))
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

/// What a commit did.
pub struct Committed {
    pub bytes: usize,
    /// Where an incomplete last line of the session was moved by `--repair`.
    pub repaired: Option<(u64, PathBuf)>,
}

/// Append `bytes` to `session`: refuse (or, with `repair`, move aside) an incomplete last line,
/// then one write and fsync; on any error, truncate back to the old length.
pub fn append(
    session: &Path,
    sidecar: &Sidecar,
    ticket: u64,
    bytes: &[u8],
    repair: bool,
) -> Result<Committed, Failure> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .open(session)
        .map_err(|e| Failure::io("cannot open the session file to append", &e, session))?;
    let len = file
        .metadata()
        .map_err(|e| Failure::io("cannot read the session file", &e, session))?
        .len();
    if bytes.is_empty() {
        return Ok(Committed {
            bytes: 0,
            repaired: None,
        });
    }
    let mut repaired = None;
    if let Some(keep) = incomplete_tail(&file, len)
        .map_err(|e| Failure::io("cannot read the session file", &e, session))?
    {
        let tail = len - keep;
        if !repair {
            return Err(Failure::new(
                exit::DATA,
                format!(
                    "the session file ends with an incomplete line ({tail} bytes after the last \
                     newline); nothing appended; --repair moves it into the sidecar"
                ),
                session,
            ));
        }
        let moved = move_tail(&file, keep, len, sidecar, ticket)
            .map_err(|e| Failure::io("cannot move the incomplete last line aside", &e, session))?;
        repaired = Some((tail, moved));
    }
    let start = file
        .metadata()
        .map_err(|e| Failure::io("cannot read the session file", &e, session))?
        .len();
    // A file size limit must fail the write (EFBIG) rather than kill us before the rollback.
    // SAFETY: setting a disposition; the child has already exited.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGXFSZ,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    let written = file.write_all(bytes).and_then(|()| file.sync_data());
    if let Err(e) = written {
        let rolled = file.set_len(start).and_then(|()| file.sync_data());
        let what = match rolled {
            Ok(()) => format!(
                "cannot append to the session file: {}; rolled back to {start} bytes",
                exit::describe(&e)
            ),
            Err(r) => format!(
                "cannot append to the session file: {}; the rollback to {start} bytes failed too: {}",
                exit::describe(&e),
                exit::describe(&r)
            ),
        };
        return Err(Failure::new(exit::IO, what, session));
    }
    Ok(Committed {
        bytes: bytes.len(),
        repaired,
    })
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

/// Copy bytes `keep..len` of `file` to `kept/<ticket>-session-tail.bin`, then truncate to `keep`.
fn move_tail(
    file: &File,
    keep: u64,
    len: u64,
    sidecar: &Sidecar,
    ticket: u64,
) -> io::Result<PathBuf> {
    let dir = sidecar.path(KEPT);
    sidecar::ensure_dir(&dir)?;
    let mut tail = vec![0u8; (len - keep) as usize];
    file.read_exact_at(&mut tail, keep)?;
    let scratch = dir.join(format!(".{ticket}-session-tail.{}.tmp", std::process::id()));
    let mut out = sidecar::create_nofollow(&scratch, 0o600)?;
    out.write_all(&tail)?;
    out.sync_all()?;
    let path = keep_unclobbered(&scratch, &dir, &format!("{ticket}-session-tail"), "bin")?;
    file.set_len(keep)?;
    file.sync_data()?;
    Ok(path)
}

/// The captures in `out/`, with the ticket each belongs to.
#[must_use]
pub fn captures(sidecar: &Sidecar) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(sidecar.path(OUT)) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let id = name.to_str()?.strip_suffix(".jsonl")?.parse().ok()?;
            Some((id, e.path()))
        })
        .collect()
}

/// The capture of ticket `id`, whose wrapper died: keep it as `kept/<id>-abandoned.jsonl`, or
/// remove it if it is empty (nothing was lost).
pub fn adopt_abandoned(sidecar: &Sidecar, id: u64, path: &Path) {
    let _ = keep_file(path, &sidecar.path(KEPT), &format!("{id}-abandoned"));
}

/// Keep output file `path` as `<kept_dir>/<stem>.jsonl` (never over another), or remove it if
/// it is empty: `None` then, nothing was lost. If it cannot be moved, it stays where it is and
/// that path is returned.
fn keep_file(path: &Path, kept_dir: &Path, stem: &str) -> Option<PathBuf> {
    if fs::symlink_metadata(path).map_or(true, |m| m.len() == 0) {
        let _ = fs::remove_file(path);
        return None;
    }
    let kept = make_dir(kept_dir)
        .ok()
        .and_then(|()| keep_unclobbered(path, kept_dir, stem, "jsonl").ok());
    Some(kept.unwrap_or_else(|| path.to_owned()))
}

/// Move `from` into `dir` as `<stem>.<ext>`, or `<stem>.2.<ext>`, ... : never over a file that
/// is already kept (a hard link fails rather than replace).
fn keep_unclobbered(from: &Path, dir: &Path, stem: &str, ext: &str) -> io::Result<PathBuf> {
    for n in 1u32.. {
        let name = if n == 1 {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}.{n}.{ext}")
        };
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

fn make_dir(dir: &Path) -> Result<(), Failure> {
    sidecar::ensure_dir(dir).map_err(|e| Failure::io("cannot create a sidecar directory", &e, dir))
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
