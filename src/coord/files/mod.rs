//! The files backend: one lock file in the sidecar, opened once per process. The write lock, each
//! wrapper's slot and each prompt turn are byte-range locks in it, which the kernel frees when
//! their owner dies; the state record and the slot table are written in place. Nothing on the
//! prompt path creates, renames or unlinks a file.

pub mod layout;
pub mod lock;

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::child;
use crate::commit::{self, Intent, Recovery};
use crate::config::{Config, Verbosity};
use crate::coord::{Activity, Coordinator, Phase, TurnWait};
use crate::exit::{Failure, Kind};
use crate::fence::{Fence, Fingerprint, State, Verdict};
use crate::sidecar::{self, Sidecar};
use crate::signal::{self, Signals};
use layout::{Loaded, Record, Slot};
use lock::{Kind as LockKind, Notice, Range, Waited};

/// How long a wait lasts before it is worth a notice on stderr.
pub const NOTICE_AFTER: Duration = Duration::from_secs(1);

/// The whole ticket range.
const TURNS: Range = Range::span(layout::TICKETS, layout::TICKETS + layout::TICKET_CAP);

/// The files a v1 sidecar had besides `lock` (ticket files, a queue, records by rename).
const V1_NAMES: [&str; 5] = ["queue", "queue.lock", "tickets", "holder", "state"];

/// The lock file, open once, and our slot in it.
struct Shared {
    file: File,
    path: PathBuf,
    slot: RefCell<Option<(u32, Slot)>>,
    /// The file carries the magic (set once we have seen or written it).
    magic: Cell<bool>,
}

/// How the record was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Current,
    /// Never written: a new lock file (or one truncated to nothing).
    Fresh,
    /// The newer copy was torn or the whole state unreadable: counters may be behind.
    Behind,
}

impl Shared {
    fn io(&self, what: &str, e: &io::Error) -> Failure {
        Failure::io(what, e, &self.path)
    }

    fn read_head(&self) -> io::Result<Vec<u8>> {
        crate::fault::check("state-read")?;
        let mut head = vec![0u8; layout::STATE_AT[1] as usize + layout::STATE_SIZE];
        let mut got = 0;
        while got < head.len() {
            match self.file.read_at(&mut head[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        head.truncate(got);
        Ok(head)
    }

    /// The current record; a fresh or damaged state starts a new lineage at `now`.
    fn load(
        &self,
        now: impl FnOnce() -> Result<Fingerprint, Failure>,
    ) -> Result<(Record, Found), Failure> {
        let head = self
            .read_head()
            .map_err(|e| self.io("cannot read the lock state", &e))?;
        // Whoever truncated or overwrote the header, the next store writes it again.
        self.magic.set(head.starts_with(layout::MAGIC));
        let (record, found) = match layout::load(&head) {
            Loaded::Good { record, fell_back } => (
                record,
                if fell_back {
                    Found::Behind
                } else {
                    Found::Current
                },
            ),
            loaded => {
                let found = if loaded == Loaded::Fresh {
                    Found::Fresh
                } else {
                    Found::Behind
                };
                let record = Record {
                    seq: 0,
                    epoch: 1,
                    next_ticket: 0,
                    state: State::fresh(new_lineage(), now()?),
                    intent: None,
                };
                (record, found)
            }
        };
        Ok((record, found))
    }

    fn store(&self, record: &mut Record) -> Result<(), Failure> {
        let mut write = || -> io::Result<()> {
            crate::fault::check("state-write")?;
            if !self.magic.get() {
                self.file.write_all_at(layout::MAGIC, 0)?;
                self.magic.set(true);
            }
            record.seq = record.seq.wrapping_add(1);
            self.file
                .write_all_at(&record.encode(), layout::copy_for(record.seq))
        };
        write().map_err(|e| self.io("cannot write the lock state", &e))
    }

    fn update_slot(&self, change: impl FnOnce(&mut Slot)) {
        if let Some((index, slot)) = &mut *self.slot.borrow_mut() {
            change(slot);
            let at = layout::SLOTS_AT + u64::from(*index) * layout::SLOT_SIZE as u64;
            // Display only: a failed write costs `status` a name, never the run.
            let _ = self.file.write_all_at(&slot.encode(), at);
        }
    }
}

/// A lineage number no earlier state of this key is likely to have had.
fn new_lineage() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut seed = nanos.to_le_bytes().to_vec();
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    layout::checksum(&seed)
}

/// The live slots of the lock file (those whose lock byte someone holds), in slot order.
pub fn live_slots(file: &File) -> io::Result<Vec<(u32, Slot)>> {
    let span = Range::span(
        layout::SLOT_LOCKS,
        layout::SLOT_LOCKS + u64::from(layout::SLOTS),
    );
    let locked = lock::all_locked(file, LockKind::Read, span)?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    let mut table = vec![0u8; layout::SLOTS as usize * layout::SLOT_SIZE];
    let got = file.read_at(&mut table, layout::SLOTS_AT)?;
    table.truncate(got);
    let mut out = Vec::new();
    for conflict in locked {
        let first = conflict.range.start.max(span.start);
        let last = conflict.range.last().min(span.last());
        for byte in first..=last {
            let index = (byte - layout::SLOT_LOCKS) as u32;
            let at = index as usize * layout::SLOT_SIZE;
            if let Some(slot) = table.get(at..at + layout::SLOT_SIZE).and_then(Slot::decode) {
                out.push((index, slot));
            }
        }
    }
    Ok(out)
}

/// How many tickets lie between the active (lowest live) turn and turn `t`, that one included:
/// one probe (`F_GETLK` reports the oldest lock, and tickets are locked in order), so it counts
/// a gap left by a turn that ended out of order too.
fn distance_to_active(file: &File, t: u64) -> u64 {
    let below = Range::span(layout::TICKETS, layout::TICKETS + t);
    match lock::probe(file, LockKind::Read, below) {
        Ok(Some(c)) if c.range.len != 0 => {
            t.saturating_sub(c.range.start.saturating_sub(layout::TICKETS))
        }
        Ok(Some(_)) => t,
        _ => 0,
    }
}

/// Who holds a lock: the words after "held by".
#[must_use]
pub fn describe_holder(conflict: &lock::Conflict, slot: Option<&Slot>) -> String {
    let shared = if conflict.kind == LockKind::Read {
        "a shared lock of "
    } else {
        ""
    };
    match (conflict.pid, slot) {
        (Some(pid), _) => {
            format!("{shared}pid {pid} (not a sessionlock wrapper: a plain fcntl lock)")
        }
        (None, Some(s)) => format!(
            "{shared}pid {} ({}) for {}: {}",
            s.pid,
            s.mode.name(),
            sidecar::age(if s.write_since_ms != 0 {
                s.write_since_ms
            } else {
                s.phase_since_ms
            }),
            s.command,
        ),
        (None, None) => format!(
            "{shared}an unknown holder (a lock no sessionlock wrapper recorded: another \
             program, or a wrapper of another user)"
        ),
    }
}

/// What `gc` did with one sidecar.
#[derive(Debug, PartialEq, Eq)]
pub enum Collected {
    /// Removed whole.
    Removed,
    /// Someone holds a lock in it: left alone.
    InUse,
    /// The session file exists (again): left alone.
    SessionExists,
    /// Its lock state is removed; these kept outputs stay (the sidecar with them).
    KeptOutputs(usize),
    /// Something in it is not what it should be (a symlink for `out/`, say): left alone.
    Refused(String),
}

/// Remove the sidecar of a session file that is gone, if nobody uses it: its lock file is
/// unlinked only while holding the write lock and with no slot and no turn held (a wrapper that
/// opened it earlier re-checks, after locking, that the path still names its file). Kept
/// outputs are removed only with `kept`.
pub fn collect_unused(
    sidecar: &Sidecar,
    session: &std::path::Path,
    kept: bool,
) -> Result<Collected, Failure> {
    let lock_path = sidecar.path(sidecar::LOCK);
    let io = |e: io::Error| Failure::io("cannot collect the sidecar", &e, &lock_path);
    let file = sidecar.open_existing_lock()?;
    if let Some(file) = &file {
        let write = Range::byte(layout::WRITE_BYTE);
        if !lock::try_lock(file, LockKind::Write, write).map_err(io)? {
            return Ok(Collected::InUse);
        }
        let slots = Range::span(
            layout::SLOT_LOCKS,
            layout::SLOT_LOCKS + u64::from(layout::SLOTS),
        );
        if lock::probe(file, LockKind::Read, slots)
            .map_err(io)?
            .is_some()
            || lock::probe(file, LockKind::Read, TURNS)
                .map_err(io)?
                .is_some()
        {
            return Ok(Collected::InUse);
        }
    }
    if std::fs::symlink_metadata(session).is_ok() {
        return Ok(Collected::SessionExists);
    }
    // Never through a symlink: `out/` and `kept/` must be real directories of ours.
    for d in [commit::OUT, commit::KEPT] {
        match std::fs::symlink_metadata(sidecar.path(d)) {
            Ok(m) if !m.file_type().is_dir() => {
                return Ok(Collected::Refused(format!("{d}/ is not a directory")));
            }
            Ok(m)
                if !sidecar
                    .modes()
                    .trusts(std::os::unix::fs::MetadataExt::uid(&m)) =>
            {
                return Ok(Collected::Refused(format!("{d}/ is owned by a stranger")));
            }
            _ => {}
        }
    }
    let outputs: Vec<std::path::PathBuf> = [commit::OUT, commit::KEPT]
        .iter()
        .filter_map(|d| std::fs::read_dir(sidecar.path(d)).ok())
        .flat_map(|entries| entries.filter_map(Result::ok).map(|e| e.path()))
        .collect();
    let non_empty = outputs
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.len() > 0))
        .count();
    if file.is_some() {
        std::fs::remove_file(&lock_path).map_err(io)?;
    }
    if non_empty > 0 && !kept {
        return Ok(Collected::KeptOutputs(non_empty));
    }
    for path in &outputs {
        std::fs::remove_file(path).map_err(io)?;
    }
    for d in [commit::OUT, commit::KEPT] {
        let _ = std::fs::remove_dir(sidecar.path(d));
    }
    // Only if empty: a wrapper that created a new lock file meanwhile keeps it.
    match std::fs::remove_dir(sidecar.dir()) {
        Ok(()) => Ok(Collected::Removed),
        Err(_) => Ok(Collected::InUse),
    }
}

/// Coordination through the one lock file in the sidecar.
pub struct Files<'a> {
    config: &'a Config,
    sidecar: Sidecar,
    signals: &'a Signals,
    shared: RefCell<Rc<Shared>>,
    /// When this process started waiting for its turn, and whether it has said so.
    turn_wait_started: Cell<Option<Instant>>,
    turn_noticed: Cell<bool>,
}

/// The write lock, held; released (and our slot told so) when dropped.
pub struct WriteGuard {
    shared: Rc<Shared>,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.shared.update_slot(|s| s.write_since_ms = 0);
        let _ = lock::unlock(&self.shared.file, Range::byte(layout::WRITE_BYTE));
    }
}

/// This wrapper's slot and (once joined) its turn; both locks are dropped with it.
pub struct Ticket {
    shared: Rc<Shared>,
    turn: Option<(u64, u64)>,
    label: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // The turn first: that wakes the turn behind.
        if let Some((_, t)) = self.turn.take() {
            let _ = lock::unlock(&self.shared.file, Range::byte(layout::TICKETS + t));
        }
        if let Some((index, _)) = self.shared.slot.borrow_mut().take() {
            let _ = lock::unlock(
                &self.shared.file,
                Range::byte(layout::SLOT_LOCKS + u64::from(index)),
            );
        }
    }
}

/// The live turn ahead of ours.
pub struct Ahead {
    ticket: u64,
    /// Our own ticket.
    ours: u64,
}

impl<'a> Files<'a> {
    /// Open (creating on first use) the sidecar and its lock file.
    pub fn open(config: &'a Config, signals: &'a Signals) -> Result<Self, Failure> {
        let sidecar = Sidecar::open(&config.key, true)?.expect("created");
        let shared = Self::open_shared_again(&sidecar, config)?;
        Ok(Self {
            config,
            sidecar,
            signals,
            shared: RefCell::new(Rc::new(shared)),
            turn_wait_started: Cell::new(None),
            turn_noticed: Cell::new(false),
        })
    }

    /// The lock file; if a `gc` removed the whole sidecar just now, create it again (a few
    /// times: a `gc` only removes a sidecar nobody uses).
    fn open_shared_again(sidecar: &Sidecar, config: &Config) -> Result<Shared, Failure> {
        let mut tries = 0;
        loop {
            match Self::open_shared(sidecar) {
                Err(_) if tries < 3 && !sidecar.is_current() => {
                    tries += 1;
                    sidecar.reopen(&config.key)?;
                }
                other => return other,
            }
        }
    }

    fn open_shared(sidecar: &Sidecar) -> Result<Shared, Failure> {
        Ok(Shared {
            file: sidecar.open_lock(true)?,
            path: sidecar.path(sidecar::LOCK),
            slot: RefCell::new(None),
            magic: Cell::new(false),
        })
    }

    #[must_use]
    pub fn sidecar(&self) -> &Sidecar {
        &self.sidecar
    }

    fn shared(&self) -> Rc<Shared> {
        self.shared.borrow().clone()
    }

    fn session(&self) -> &std::path::Path {
        self.config.key.path()
    }

    fn fingerprint(&self) -> Result<Fingerprint, Failure> {
        Fingerprint::of(self.session()).map_err(|e| {
            Failure::io(
                "cannot read the session file's fingerprint",
                &e,
                self.session(),
            )
        })
    }

    fn load(&self, shared: &Shared) -> Result<(Record, Found), Failure> {
        shared.load(|| self.fingerprint())
    }

    /// How long before a wait's notice is due, or `None` for no notice.
    fn notice_after(&self) -> Option<Duration> {
        match self.config.verbosity {
            Verbosity::Quiet => None,
            Verbosity::Verbose => Some(Duration::ZERO),
            Verbosity::Normal => Some(NOTICE_AFTER),
        }
    }

    /// Wait for `kind` on `range` until `deadline`, saying `text` when it lasts (see `Notice`).
    fn wait_noticed(
        &self,
        shared: &Shared,
        kind: LockKind,
        range: Range,
        deadline: Option<Instant>,
        text: &mut dyn FnMut() -> String,
    ) -> io::Result<Waited> {
        let notice = self.notice_after().map(|after| Notice {
            after,
            text,
            live: self.config.live,
        });
        lock::wait(&shared.file, kind, range, deadline, self.signals, notice)
    }

    /// ", held by ..." for the lock on `range`, or nothing if it is free now.
    fn held_by(&self, range: Range, turn: Option<u64>) -> String {
        let shared = self.shared();
        let Ok(Some(conflict)) = lock::probe(&shared.file, LockKind::Write, range) else {
            return String::new();
        };
        let slots = live_slots(&shared.file).unwrap_or_default();
        let slot = slots.iter().map(|(_, s)| s).find(|s| match turn {
            Some(t) => s.turn.is_some_and(|(_, st)| st == t),
            None => s.write_since_ms != 0,
        });
        format!(", held by {}", describe_holder(&conflict, slot))
    }

    /// A v1 sidecar (ticket files, a queue file) found by the first v2 wrapper: upgraded in place
    /// when no older wrapper holds any of it, else refused.
    fn upgrade_v1(&self, shared: &Shared) -> Result<(), Failure> {
        if !V1_NAMES.iter().any(|n| self.sidecar.has(n)) {
            return Ok(());
        }
        let busy = || {
            Failure::busy(
                self.config.conflict_code,
                "an older sessionlock (v1) is using this session; let it finish (or stop it) \
                 before running this version",
                self.sidecar.dir(),
            )
        };
        let probe = |path: &std::path::Path| -> bool {
            File::open(path).is_ok_and(|f| lock::flocked(&f).unwrap_or(true))
        };
        if lock::flocked(&shared.file).unwrap_or(true) || probe(&self.sidecar.path("queue.lock")) {
            return Err(busy());
        }
        let tickets = self.sidecar.path("tickets");
        if let Ok(entries) = std::fs::read_dir(&tickets) {
            for entry in entries.filter_map(Result::ok) {
                if probe(&entry.path()) {
                    return Err(busy());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&tickets);
        for name in V1_NAMES {
            let _ = std::fs::remove_file(self.sidecar.path(name));
        }
        self.config.detail(&format!(
            "upgraded the v1 sidecar {}",
            self.sidecar.dir().display()
        ));
        Ok(())
    }

    /// Roll back a commit whose holder died mid-write (see `commit::recover`).
    fn recover(&self, shared: &Shared) -> Result<(), Failure> {
        let (mut record, found) = self.load(shared)?;
        if found == Found::Fresh {
            self.upgrade_v1(shared)?;
        }
        let Some(intent) = record.intent else {
            return Ok(());
        };
        let session = self.session();
        let recovery = commit::recover(session, &self.sidecar, &intent)
            .map_err(|e| Failure::io("cannot roll back an unfinished commit", &e, session))?;
        match recovery {
            Recovery::NothingWritten => self
                .config
                .detail("an unfinished commit had written nothing; cleared it"),
            Recovery::RolledBack { bytes, kept } => {
                let kept = kept
                    .map(|k| format!("; its output is kept in {}", k.display()))
                    .unwrap_or_default();
                self.config.notice(&format!(
                    "rolled back an unfinished commit of {bytes} bytes to {} (its wrapper died \
                     while appending){kept}",
                    session.display()
                ));
                record.state.own(self.fingerprint()?);
            }
            Recovery::LeftAlone(why) => self.config.notice(&format!(
                "an unfinished commit to {} was not rolled back: {why}; the file is left as \
                 it is",
                session.display()
            )),
        }
        record.intent = None;
        shared.store(&mut record)
    }

    /// At the ticket cap: wait (without the write lock) until no turn is live, then take the
    /// write lock again. The caller's guard stays valid: it unlocks the same byte.
    fn drain(&self, shared: &Shared, deadline: Option<Instant>) -> Result<(), Failure> {
        let config = self.config;
        lock::unlock(&shared.file, Range::byte(layout::WRITE_BYTE))
            .map_err(|e| shared.io("cannot release the write lock", &e))?;
        // A write lock over the range: granted only when no turn and no foreign lock is left.
        let mut text = || {
            format!(
                "waiting for the turn range of {} to drain (no ticket is free){}",
                self.session().display(),
                self.held_by(TURNS, None)
            )
        };
        let waited = self
            .wait_noticed(shared, LockKind::Write, TURNS, deadline, &mut text)
            .map_err(|e| shared.io("cannot wait for the queue to drain", &e))?;
        if waited == Waited::Held {
            let _ = lock::unlock(&shared.file, TURNS);
        }
        let back = lock::wait(
            &shared.file,
            LockKind::Write,
            Range::byte(layout::WRITE_BYTE),
            signal::deadline(config.lock_timeout),
            self.signals,
            None,
        )
        .map_err(|e| shared.io("cannot take the write lock", &e))?;
        match (waited, back) {
            (Waited::Held, Waited::Held) => Ok(()),
            (Waited::Interrupted(r), _) | (_, Waited::Interrupted(r)) => Err(Failure::interrupted(
                r.signal,
                "the ticket counter to restart",
                self.session(),
            )),
            _ => Err(Failure::busy(
                config.conflict_code,
                "the ticket counter is at its cap and the queue did not drain in time",
                self.session(),
            )),
        }
    }
}

impl Coordinator for Files<'_> {
    type Ticket = Ticket;
    type WriteLock = WriteGuard;
    type Ahead = Ahead;

    fn write_lock(&self, ticket: Option<&Ticket>, phase: Phase) -> Result<WriteGuard, Failure> {
        let config = self.config;
        let session = config.key.path();
        let timeout = if phase == Phase::AfterWindow {
            config.after_window_timeout
        } else {
            config.lock_timeout
        };
        let deadline = signal::deadline(timeout);
        let after = match (phase, config.mode) {
            (Phase::AfterWindow, crate::config::Mode::Prompt) => " after the prompt window",
            (Phase::AfterWindow, _) => " after the idle-wait window",
            _ => "",
        };
        let byte = Range::byte(layout::WRITE_BYTE);
        if let Some(t) = ticket {
            t.shared.update_slot(|s| s.phase = Activity::Waiting);
        }
        let started = Instant::now();
        loop {
            let shared = self.shared();
            let mut text = || {
                format!(
                    "waiting for the write lock on {}{}",
                    session.display(),
                    self.held_by(byte, None)
                )
            };
            let waited = self
                .wait_noticed(&shared, LockKind::Write, byte, deadline, &mut text)
                .map_err(|e| shared.io("cannot take the write lock", &e))?;
            match waited {
                Waited::Held => {}
                Waited::TimedOut => {
                    let held = self.held_by(byte, None);
                    let what = if timeout.is_zero() {
                        format!("the write lock is busy{after}{held}")
                    } else {
                        format!(
                            "timed out after {} waiting for the write lock{after}{held}",
                            humantime::format_duration(timeout),
                        )
                    };
                    return Err(Failure::busy(config.conflict_code, what, session));
                }
                Waited::Interrupted(received) => {
                    return Err(Failure::interrupted(
                        received.signal,
                        &format!("the write lock{after}"),
                        session,
                    ));
                }
            }
            let guard = WriteGuard {
                shared: shared.clone(),
            };
            // Only a `gc` unlinks the lock file, under the write lock, when nobody uses it: a
            // wrapper that opened it before then holds a lock on an orphan. Look again.
            match self.sidecar.still_names(&shared.file) {
                Ok(true) => {}
                Ok(false) if phase == Phase::Enter && ticket.is_none() => {
                    drop(guard);
                    *self.shared.borrow_mut() =
                        Rc::new(Self::open_shared_again(&self.sidecar, config)?);
                    continue;
                }
                Ok(false) => {
                    return Err(Failure::new(
                        Kind::Io,
                        "the lock file was removed or replaced while this wrapper used it; \
                         nothing can be vouched for",
                        &shared.path,
                    ));
                }
                Err(e) => return Err(shared.io("cannot check the lock file", &e)),
            }
            shared.update_slot(|s| {
                s.write_since_ms = sidecar::now_ms();
                s.phase = Activity::Locked;
            });
            self.recover(&shared)?;
            config.detail(&format!(
                "took the write lock on {} after {}ms",
                session.display(),
                started.elapsed().as_millis()
            ));
            return Ok(guard);
        }
    }

    fn issue(&self, _lock: &WriteGuard) -> Result<Ticket, Failure> {
        let shared = self.shared();
        let pid = std::process::id();
        let now = sidecar::now_ms();
        let first = (layout::checksum(&pid.to_le_bytes()) % u64::from(layout::SLOTS)) as u32;
        for k in 0..layout::SLOT_PROBES {
            let index = (first + k) % layout::SLOTS;
            let byte = Range::byte(layout::SLOT_LOCKS + u64::from(index));
            if lock::try_lock(&shared.file, LockKind::Write, byte)
                .map_err(|e| shared.io("cannot take a slot", &e))?
            {
                let slot = Slot {
                    pid,
                    start_ms: now,
                    mode: self.config.mode,
                    turn: None,
                    phase: Activity::Locked,
                    write_since_ms: now,
                    phase_since_ms: now,
                    command: child::command_name(&self.config.argv),
                };
                *shared.slot.borrow_mut() = Some((index, slot));
                shared.update_slot(|_| {});
                break;
            }
        }
        // Captures of wrappers that died in their window: kept (or removed, if empty).
        commit::sweep_abandoned(&self.sidecar);
        // No free slot near ours: run without one; `status` shows this wrapper's locks unnamed.
        Ok(Ticket {
            shared,
            turn: None,
            label: format!("{}.{pid}", self.config.mode.name()),
        })
    }

    fn label(ticket: &Ticket) -> String {
        ticket.label.clone()
    }

    fn join(&self, _lock: &WriteGuard, ticket: &mut Ticket) -> Result<(), Failure> {
        let shared = self.shared();
        let (mut record, found) = self.load(&shared)?;
        let mut behind = found != Found::Current;
        let deadline = signal::deadline(self.config.turn_timeout);
        // Whether the counter may restart: on the first look, and after a drain (never while
        // stepping past foreign locks, or it would step back onto them).
        let mut first_look = true;
        loop {
            let live = if first_look {
                lock::probe(&shared.file, LockKind::Read, TURNS)
                    .map_err(|e| shared.io("cannot look at the turns", &e))?
            } else {
                None
            };
            if first_look && live.is_none() {
                // Nobody queued: the counter restarts, in a new epoch.
                if record.next_ticket != 0 {
                    record.epoch = record.epoch.wrapping_add(1);
                    record.next_ticket = 0;
                }
            } else if behind {
                let highest = lock::highest_locked(&shared.file, TURNS)
                    .map_err(|e| shared.io("cannot look at the turns", &e))?;
                if let Some(h) = highest {
                    record.next_ticket = record.next_ticket.max(h - layout::TICKETS + 1);
                }
                behind = false;
            }
            first_look = false;
            let t = record.next_ticket;
            if t >= layout::TICKET_CAP {
                self.drain(&shared, deadline)?;
                record = self.load(&shared)?.0;
                first_look = true;
                continue;
            }
            let byte = Range::byte(layout::TICKETS + t);
            // The slot names the turn before its lock exists: `status` never sees it unnamed.
            shared.update_slot(|s| s.turn = Some((record.epoch, t)));
            if lock::try_lock(&shared.file, LockKind::Write, byte)
                .map_err(|e| shared.io("cannot take a turn", &e))?
            {
                record.next_ticket = t + 1;
                if let Err(failure) = shared.store(&mut record) {
                    let _ = lock::unlock(&shared.file, byte);
                    return Err(failure);
                }
                ticket.turn = Some((record.epoch, t));
                ticket.label = format!("{}.{t}", record.epoch);
                return Ok(());
            }
            // Someone holds the byte the counter points at. A turn (a one-byte write lock of
            // ours): the counter is behind. Anything else (a reader's shared lock, a foreign
            // lock over a range): step past it, never wait on it holding the write lock.
            let conflict = lock::probe(&shared.file, LockKind::Write, byte)
                .map_err(|e| shared.io("cannot look at the turns", &e))?;
            match conflict {
                Some(c) if c.kind == LockKind::Write && c.pid.is_none() && c.range.len == 1 => {
                    behind = true;
                }
                Some(c) => {
                    let past = c.range.last().saturating_add(1);
                    record.next_ticket = past.saturating_sub(layout::TICKETS).max(t + 1);
                }
                None => {}
            }
            if deadline.is_some_and(|at| at <= Instant::now()) {
                return Err(Failure::busy(
                    self.config.conflict_code,
                    format!(
                        "no ticket could be taken in time: the turn range is locked{}",
                        self.held_by(byte, None)
                    ),
                    self.session(),
                ));
            }
        }
    }

    fn ahead(&self, ticket: &Ticket) -> Result<Option<Ahead>, Failure> {
        let Some((_, t)) = ticket.turn else {
            return Ok(None);
        };
        if t == 0 {
            return Ok(None);
        }
        let shared = &ticket.shared;
        let fail = |e: io::Error| shared.io("cannot look at the turns ahead", &e);
        // Most often the turn just ahead is alive: one probe.
        if lock::probe(
            &shared.file,
            LockKind::Read,
            Range::byte(layout::TICKETS + t - 1),
        )
        .map_err(fail)?
        .is_some()
        {
            return Ok(Some(Ahead {
                ticket: t - 1,
                ours: t,
            }));
        }
        let below = Range::span(layout::TICKETS, layout::TICKETS + t - 1);
        Ok(lock::highest_locked(&shared.file, below)
            .map_err(fail)?
            .map(|at| Ahead {
                ticket: at - layout::TICKETS,
                ours: t,
            }))
    }

    fn count_ahead(&self, ticket: &Ticket) -> u64 {
        ticket
            .turn
            .map_or(0, |(_, t)| distance_to_active(&ticket.shared.file, t))
    }

    fn wait_turn(&self, ahead: Ahead, deadline: Option<Instant>) -> Result<TurnWait, Failure> {
        let config = self.config;
        let shared = self.shared();
        let now = Instant::now();
        let started = *self.turn_wait_started.get().get_or_insert(now);
        self.turn_wait_started.set(Some(started));
        let byte = Range::byte(layout::TICKETS + ahead.ticket);
        let ours = ahead.ours;
        let mut text = || {
            self.turn_noticed.set(true);
            format!(
                "waiting for a prompt turn on {}: {} ahead{}",
                config.key.path().display(),
                distance_to_active(&shared.file, ours),
                self.held_by(byte, Some(ahead.ticket))
                    .replacen(", held by", ", next is", 1)
            )
        };
        let notice = self
            .notice_after()
            .filter(|_| config.live || !self.turn_noticed.get())
            .map(|after| Notice {
                after: after.saturating_sub(now - started),
                text: &mut text,
                live: config.live,
            });
        let waited = lock::wait(
            &shared.file,
            LockKind::Read,
            byte,
            deadline,
            self.signals,
            notice,
        )
        .map_err(|e| shared.io("cannot wait for the turn ahead", &e))?;
        Ok(match waited {
            Waited::Held => {
                // We only wanted the wake-up: never hold a byte taken while waiting.
                lock::unlock(&shared.file, byte)
                    .map_err(|e| shared.io("cannot wait for the turn ahead", &e))?;
                TurnWait::Ended
            }
            Waited::TimedOut => TurnWait::TimedOut,
            Waited::Interrupted(received) => TurnWait::Interrupted(received),
        })
    }

    fn activity(&self, ticket: &Ticket, activity: Activity) {
        ticket.shared.update_slot(|s| {
            s.phase = activity;
            s.phase_since_ms = sidecar::now_ms();
        });
    }

    fn observe(&self, lock: &WriteGuard) -> Result<State, Failure> {
        let (mut record, found) = self.load(&lock.shared)?;
        if record.state.observe(self.fingerprint()?) || found != Found::Current {
            lock.shared.store(&mut record)?;
        }
        Ok(record.state)
    }

    fn fence(&self, lock: &WriteGuard) -> Result<Fence, Failure> {
        Ok(self.observe(lock)?.fence())
    }

    fn check(&self, lock: &WriteGuard, fence: &Fence) -> Result<Verdict, Failure> {
        Ok(self.observe(lock)?.verdict(fence, self.config.strict))
    }

    fn verify(&self, lock: &WriteGuard) -> Result<(), Failure> {
        match self.sidecar.still_names(&lock.shared.file) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::new(
                Kind::Io,
                "the lock file was removed or replaced while this wrapper held it: another \
                 wrapper may have locked a new one meanwhile",
                &lock.shared.path,
            )),
            Err(e) => Err(lock.shared.io("cannot check the lock file", &e)),
        }
    }

    fn record_intent(&self, lock: &WriteGuard, intent: &Intent) -> Result<(), Failure> {
        let shared = &lock.shared;
        let (mut record, _) = self.load(shared)?;
        record.intent = Some(*intent);
        shared.store(&mut record)?;
        // On disk before the append: after a power loss, too, the intent is there to act on.
        crate::fault::check("state-sync")
            .and_then(|()| shared.file.sync_data())
            .map_err(|e| shared.io("cannot write the lock state", &e))
    }

    fn publish_owned(&self, lock: &WriteGuard) -> Result<State, Failure> {
        let (mut record, found) = self.load(&lock.shared)?;
        let changed = record.state.own(self.fingerprint()?);
        if changed || record.intent.is_some() || found != Found::Current {
            record.intent = None;
            lock.shared.store(&mut record)?;
        }
        Ok(record.state)
    }

    fn clear_intent(&self, lock: &WriteGuard) -> Result<(), Failure> {
        let (mut record, _) = self.load(&lock.shared)?;
        if record.intent.take().is_some() {
            lock.shared.store(&mut record)?;
        }
        Ok(())
    }

    fn leave(&self, ticket: Ticket) -> Result<(), Failure> {
        drop(ticket);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn shared_in(dir: &std::path::Path) -> Shared {
        let path = dir.join("lock");
        Shared {
            file: OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap(),
            path,
            slot: RefCell::new(None),
            magic: Cell::new(false),
        }
    }

    #[test]
    fn a_record_stored_twice_is_read_back_and_a_torn_copy_falls_back() {
        let t = tempfile::tempdir().unwrap();
        let s = shared_in(t.path());
        let fp = || Ok(Fingerprint::default());
        let (mut r, found) = s.load(fp).unwrap();
        assert_eq!(found, Found::Fresh);
        r.next_ticket = 5;
        s.store(&mut r).unwrap();
        r.next_ticket = 6;
        s.store(&mut r).unwrap();
        let (back, found) = s.load(fp).unwrap();
        assert_eq!((back.next_ticket, found), (6, Found::Current));
        // Tear the newer copy: the older one is used, and the counters are known to be behind.
        s.file
            .write_all_at(b"torn", layout::copy_for(back.seq) + 40)
            .unwrap();
        let (old, found) = s.load(fp).unwrap();
        assert_eq!((old.next_ticket, found), (5, Found::Behind));
    }
}
