//! Byte-range locks on the lock file: the only caller of `fcntl` locks (and of fs4, which the v1
//! upgrade uses to probe an older wrapper's flocks).
//!
//! On Linux these are open-file-description locks (`F_OFD_*`): owned by the one descriptor a
//! process opens, freed by the kernel when it dies, and conflicting between processes and between
//! descriptors. Elsewhere they are classic POSIX `fcntl` locks, owned by the process; a process
//! opens the lock file once, so the difference does not show. Every blocking call has a deadline
//! and ends on a signal (see `signal`); nothing here polls.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::libc;

use crate::signal::{Received, Signals};

#[cfg(any(target_os = "linux", target_os = "android"))]
mod cmd {
    pub const SET: nix::libc::c_int = nix::libc::F_OFD_SETLK;
    pub const SET_WAIT: nix::libc::c_int = nix::libc::F_OFD_SETLKW;
    pub const GET: nix::libc::c_int = nix::libc::F_OFD_GETLK;
}
#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod cmd {
    pub const SET: nix::libc::c_int = nix::libc::F_SETLK;
    pub const SET_WAIT: nix::libc::c_int = nix::libc::F_SETLKW;
    pub const GET: nix::libc::c_int = nix::libc::F_GETLK;
}

/// A lock's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

/// Bytes `start .. start + len` of the lock file; `len` 0 means "to the end, however far".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub len: u64,
}

impl Range {
    /// One byte.
    #[must_use]
    pub const fn byte(at: u64) -> Self {
        Self { start: at, len: 1 }
    }

    /// `start .. end` (exclusive).
    #[must_use]
    pub const fn span(start: u64, end: u64) -> Self {
        Self {
            start,
            len: end - start,
        }
    }

    /// The last byte it covers (`u64::MAX` for "to the end").
    #[must_use]
    pub fn last(self) -> u64 {
        if self.len == 0 {
            u64::MAX
        } else {
            self.start + self.len - 1
        }
    }
}

/// A conflicting lock as `F_GETLK` reports it: the oldest one in the range asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub range: Range,
    pub kind: Kind,
    /// The holder's pid for a classic POSIX lock (another program); `None` for an OFD lock,
    /// whose holder only our slot table can name.
    pub pid: Option<i32>,
}

fn flock(kind: Option<Kind>, range: Range) -> libc::flock {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value of it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match kind {
        Some(Kind::Read) => libc::F_RDLCK,
        Some(Kind::Write) => libc::F_WRLCK,
        None => libc::F_UNLCK,
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = range.start as libc::off_t;
    fl.l_len = range.len as libc::off_t;
    fl
}

fn fcntl(file: &File, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    crate::fault::check(if cmd == cmd::GET { "probe" } else { "lock" })?;
    // SAFETY: fcntl(2) with a lock command and a valid, live `flock`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, std::ptr::from_mut(fl)) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A lock call that never blocks (`SET`, `GET`): a signal that interrupts it is no reason to
/// give up, so it is simply made again.
fn fcntl_now(file: &File, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    loop {
        match fcntl(file, cmd, fl) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Take a lock if no one conflicts right now: `Ok(false)` when someone does.
pub fn try_lock(file: &File, kind: Kind, range: Range) -> io::Result<bool> {
    match fcntl_now(file, cmd::SET, &mut flock(Some(kind), range)) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Give up whatever this descriptor holds in `range`.
pub fn unlock(file: &File, range: Range) -> io::Result<()> {
    fcntl_now(file, cmd::SET, &mut flock(None, range))
}

/// The lock (held by someone else) that would conflict with taking `kind` on `range`, if any.
/// Probing with `Read` finds write locks only: exactly the live turns, never a waiter.
pub fn probe(file: &File, kind: Kind, range: Range) -> io::Result<Option<Conflict>> {
    let mut fl = flock(Some(kind), range);
    fcntl_now(file, cmd::GET, &mut fl)?;
    if i32::from(fl.l_type) == libc::F_UNLCK {
        return Ok(None);
    }
    Ok(Some(Conflict {
        range: Range {
            start: fl.l_start as u64,
            len: fl.l_len as u64,
        },
        kind: if i32::from(fl.l_type) == libc::F_RDLCK {
            Kind::Read
        } else {
            Kind::Write
        },
        pid: (fl.l_pid > 0).then_some(fl.l_pid),
    }))
}

/// The highest byte in `range` that is write-locked by someone else, found with `O(log n)`
/// probes. `F_GETLK` reports the oldest conflicting lock, not the nearest, and a lock it
/// reports may be a merged range or run to the end of the file.
pub fn highest_locked(file: &File, range: Range) -> io::Result<Option<u64>> {
    // An empty span (not "to the end": `fcntl`'s zero length would mean that).
    if range.len == 0 {
        return Ok(None);
    }
    let (mut lo, mut hi) = (range.start, range.start + range.len);
    let Some(first) = probe(file, Kind::Read, range)? else {
        return Ok(None);
    };
    // Everything up to the reported lock's last byte (within the range) is known to be reached.
    lo = lo.max(first.range.last().min(hi - 1));
    // Invariant (unless locks vanish meanwhile, which only costs the caller a look again): a
    // locked byte exists in `lo .. hi`, and `lo` is the best known one.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match probe(file, Kind::Read, Range::span(mid, hi))? {
            Some(found) => lo = mid.max(found.range.last().min(hi - 1)),
            None => hi = mid,
        }
    }
    Ok(Some(lo))
}

/// Every lock someone else holds in `range` that conflicts with `kind`, as `F_GETLK` reports them,
/// in order of position: `2k + 1` probes for `k` locks.
pub fn all_locked(file: &File, kind: Kind, range: Range) -> io::Result<Vec<Conflict>> {
    let mut out = Vec::new();
    let mut todo = vec![(range.start, range.start.saturating_add(range.len))];
    while let Some((lo, hi)) = todo.pop() {
        if lo >= hi {
            continue;
        }
        let Some(found) = probe(file, kind, Range::span(lo, hi))? else {
            continue;
        };
        let start = found.range.start.max(lo);
        let end = found.range.last().saturating_add(1).min(hi);
        out.push(found);
        todo.push((lo, start));
        todo.push((end, hi));
        if out.len() > 1 << 20 {
            break;
        }
    }
    out.sort_by_key(|c| c.range.start);
    Ok(out)
}

/// Something to say when a wait lasts longer than `after`: once, or (`live`, on a terminal) as
/// one line rewritten about once a second and erased when the wait ends.
pub struct Notice<'a> {
    pub after: Duration,
    pub text: &'a mut dyn FnMut() -> String,
    pub live: bool,
}

/// The live line on the terminal, erased when dropped.
struct LiveLine {
    shown: bool,
}

impl LiveLine {
    fn show(&mut self, text: &str) {
        use std::io::Write;
        // One row: a line wider than the terminal would wrap, and only its last row be erased.
        let width = terminal_width().saturating_sub("sessionlock: ".len() + 1);
        let clean: String = text
            .chars()
            .filter(|c| !c.is_control())
            .take(width.max(10))
            .collect();
        let _ = write!(io::stderr().lock(), "\r\x1b[2Ksessionlock: {clean}");
        self.shown = true;
    }
}

/// The terminal's width in columns (80 if it cannot be told).
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize; all-zero is a valid one to start from.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: ioctl(2) on stderr with a valid pointer.
    let ok = unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &raw mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

impl Drop for LiveLine {
    fn drop(&mut self) {
        if self.shown {
            use std::io::Write;
            let _ = write!(io::stderr().lock(), "\r\x1b[2K");
        }
    }
}

/// How a bounded wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    Held,
    /// The deadline passed (or a zero timeout found the lock busy).
    TimedOut,
    /// A terminating signal arrived first.
    Interrupted(Received),
}

/// Take `kind` on `range`, waiting until `deadline` (`None`: no limit) unless a terminating
/// signal comes first. The kernel wakes the waiter when the lock is free; the timer and the
/// signals end the blocking call early.
pub fn wait(
    file: &File,
    kind: Kind,
    range: Range,
    deadline: Option<Instant>,
    signals: &Signals,
    mut notice: Option<Notice<'_>>,
) -> io::Result<Waited> {
    if try_lock(file, kind, range)? {
        return Ok(Waited::Held);
    }
    let started = Instant::now();
    let waiting = signals.waiting();
    let mut live = LiveLine { shown: false };
    let mut notice_at = notice.as_ref().map(|n| started + n.after);
    loop {
        let now = Instant::now();
        if notice_at.is_some_and(|at| at <= now)
            && let Some(n) = notice.as_mut()
        {
            let text = (n.text)();
            if n.live {
                live.show(&text);
                notice_at = Some(now + Duration::from_secs(1));
            } else {
                crate::exit::say(&text);
                notice_at = None;
            }
            continue;
        }
        if deadline.is_some_and(|at| at <= now) {
            return Ok(Waited::TimedOut);
        }
        let wake = match (deadline, notice_at) {
            (Some(d), Some(n)) => Some(d.min(n)),
            (d, n) => d.or(n),
        };
        if let Some(&received) = waiting.prepare(wake)?.first() {
            return Ok(Waited::Interrupted(received));
        }
        match fcntl(file, cmd::SET_WAIT, &mut flock(Some(kind), range)) {
            Ok(()) => return Ok(Waited::Held),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Is a v1 wrapper's flock held on `file`? Takes and drops a shared flock for an instant.
pub fn flocked(file: &File) -> io::Result<bool> {
    match fs4::FileExt::try_lock(file) {
        Ok(()) => {
            fs4::FileExt::unlock(file)?;
            Ok(false)
        }
        Err(fs4::TryLockError::WouldBlock) => Ok(true),
        Err(fs4::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    /// Two descriptors of one file: on Linux, two lock owners, as two processes would be.
    fn two() -> (tempfile::TempDir, File, File) {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("lock");
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap()
        };
        let (a, b) = (open(), open());
        (t, a, b)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn the_highest_locked_byte_is_found_among_many() {
        let (_t, a, b) = two();
        for &at in &[3u64, 17, 18, 1000, 4096] {
            assert!(try_lock(&a, Kind::Write, Range::byte(at)).unwrap());
        }
        let find = |end| highest_locked(&b, Range::span(0, end)).unwrap();
        assert_eq!(find(5000), Some(4096));
        assert_eq!(find(4096), Some(1000));
        assert_eq!(find(1000), Some(18));
        assert_eq!(find(18), Some(17));
        assert_eq!(find(17), Some(3));
        assert_eq!(find(3), None);
        assert_eq!(find(0), None, "an empty span is not the whole file");
        let all: Vec<u64> = all_locked(&b, Kind::Read, Range::span(0, 1 << 40))
            .unwrap()
            .iter()
            .map(|c| c.range.start)
            .collect();
        // Adjacent bytes of one owner merge into one range.
        assert_eq!(all, vec![3, 17, 1000, 4096]);
        unlock(&a, Range::byte(1000)).unwrap();
        assert_eq!(find(5000), Some(4096));
        assert_eq!(find(4096), Some(18));
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_whole_file_lock_is_found_anywhere() {
        let (_t, a, b) = two();
        assert!(try_lock(&a, Kind::Read, Range { start: 0, len: 0 }).unwrap());
        let found = probe(&b, Kind::Write, Range::byte(1 << 40))
            .unwrap()
            .unwrap();
        assert_eq!(found.range.len, 0);
        assert_eq!(found.kind, Kind::Read);
        assert_eq!(found.pid, None);
        assert!(!try_lock(&b, Kind::Write, Range::byte(7)).unwrap());
        assert!(try_lock(&b, Kind::Read, Range::byte(7)).unwrap());
    }
}
