//! Prompt turns: tickets kept alive by their owners' flocks, the FIFO queue file, and reaping.
//!
//! Every wrapper holds an exclusive flock on its own ticket file (`tickets/<id>`) for as long as it
//! runs; a ticket whose lock can be taken belongs to a dead process. Prompt turns are ticket ids
//! in the `queue` file, in join order. The queue file and the ticket directory change only under
//! `queue.lock`, held for microseconds; lock order is write lock, then queue lock, never the
//! reverse. A garbage or truncated queue file is rebuilt from the live tickets.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::exit::Failure;
use crate::lock::{self, Held};
use crate::sidecar::{self, Access, Sidecar};

/// The queue file: ticket ids in turn order.
pub const QUEUE: &str = "queue";
/// Guards `queue` and `tickets/`.
pub const QUEUE_LOCK: &str = "queue.lock";
/// One file per live wrapper.
pub const TICKETS: &str = "tickets";

/// What a ticket file records about its owner (display only; the lock is the proof of life).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub ticket: u64,
    pub pid: u32,
    pub mode: String,
    /// When it was issued, in milliseconds since the Unix epoch.
    pub joined_ms: u64,
    pub command: String,
}

/// The queue file's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueFile {
    /// The next ticket id to issue.
    pub next: u64,
    /// Prompt turns, first come first served.
    pub turns: Vec<u64>,
}

/// What reading the queue found wrong (and, under the lock, repaired).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Findings {
    /// The queue file could not be parsed and was rebuilt from the live tickets.
    pub unreadable_queue: bool,
    /// The ticket directory was missing.
    pub missing_ticket_dir: bool,
    /// Dead turns removed from the queue (their owners died).
    pub reaped: Vec<u64>,
}

impl Findings {
    /// One phrase per finding, for notices and `status`.
    #[must_use]
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.unreadable_queue {
            out.push("the queue file was unreadable and is rebuilt from the live tickets".into());
        }
        if self.missing_ticket_dir {
            out.push("the ticket directory was missing".into());
        }
        if !self.reaped.is_empty() {
            out.push(format!("dead turns {:?} (their owners died)", self.reaped));
        }
        out
    }
}

/// The queue of one sidecar.
#[derive(Clone)]
pub struct Queue {
    sidecar: Sidecar,
}

/// The queue lock, held.
struct Guard {
    _held: Held,
}

/// Our own ticket: its lock is held for as long as this lives. Dropping it leaves the queue.
pub struct Ticket {
    queue: Queue,
    id: u64,
    path: PathBuf,
    held: Option<Held>,
}

/// The live turn just ahead of ours: its ticket file, open, to wait on.
pub struct Ahead {
    pub record: Option<Record>,
    pub file: File,
    /// Live or not-yet-probed turns ahead of ours, including this one.
    pub count: usize,
}

impl Queue {
    #[must_use]
    pub fn new(sidecar: &Sidecar) -> Self {
        Self {
            sidecar: sidecar.clone(),
        }
    }

    fn tickets_dir(&self) -> PathBuf {
        self.sidecar.path(TICKETS)
    }

    fn ticket_path(&self, id: u64) -> PathBuf {
        self.tickets_dir().join(id.to_string())
    }

    /// Take the queue lock (held for microseconds by anyone, so a plain blocking wait).
    fn lock(&self) -> Result<Guard, Failure> {
        let path = self.sidecar.path(QUEUE_LOCK);
        let file = sidecar::open_nofollow(&path, Access::CreateRead)
            .map_err(|e| Failure::io("cannot open the queue lock", &e, &path))?;
        let held = lock::block_exclusive(file)
            .map_err(|e| Failure::io("cannot take the queue lock", &e, &path))?;
        Ok(Guard { _held: held })
    }

    /// Issue a locked ticket for this process: its proof of life for `status` and the queue.
    pub fn issue(&self, mode: &str, command: &str) -> Result<Ticket, Failure> {
        let _guard = self.lock()?;
        let (mut queue, _) = self.read_locked();
        let dir = self.tickets_dir();
        sidecar::ensure_dir(&dir)
            .map_err(|e| Failure::io("cannot create the ticket directory", &e, &dir))?;
        let highest = self.sweep_orphans(&queue);
        let id = queue.next.max(highest.saturating_add(1)).max(1);
        let path = self.ticket_path(id);
        let record = Record {
            ticket: id,
            pid: std::process::id(),
            mode: mode.to_owned(),
            joined_ms: sidecar::now_ms(),
            command: command.to_owned(),
        };
        let held = create_ticket(&path, &record)
            .map_err(|e| Failure::io("cannot create a ticket", &e, &path))?;
        queue.next = id.saturating_add(1);
        if let Err(failure) = self.write_locked(&queue) {
            let _ = fs::remove_file(&path);
            return Err(failure);
        }
        Ok(Ticket {
            queue: self.clone(),
            id,
            path,
            held: Some(held),
        })
    }

    /// Delete dead tickets that are not in the queue (a `run` or `idle-wait` killed by SIGKILL, or a
    /// prompt killed before it joined). Under the queue lock, where tickets are created: any
    /// unlocked ticket seen here is dead. Returns the highest ticket id still there, so that
    /// `issue` does not list the directory again.
    fn sweep_orphans(&self, queue: &QueueFile) -> u64 {
        let mut highest = 0;
        for id in self.ticket_ids() {
            if !queue.turns.contains(&id) && !self.is_alive(id) {
                let _ = fs::remove_file(self.ticket_path(id));
            } else {
                highest = id;
            }
        }
        // Captures of wrappers that died: kept if they hold output, removed if empty.
        for (id, path) in crate::commit::captures(&self.sidecar) {
            if !self.is_alive(id) {
                crate::commit::adopt_abandoned(&self.sidecar, id, &path);
            }
        }
        highest
    }

    /// Put `ticket` at the end of the queue. Call it holding the write lock: turn order is lock order.
    pub fn join(&self, ticket: &mut Ticket) -> Result<Findings, Failure> {
        let _guard = self.lock()?;
        let (mut queue, findings) = self.read_locked();
        if !queue.turns.contains(&ticket.id) {
            queue.turns.push(ticket.id);
        }
        self.write_locked(&queue)?;
        Ok(findings)
    }

    /// The nearest live turn ahead of `ticket`, reaping dead ones on the way; `None`: our turn.
    pub fn ahead(&self, ticket: &Ticket) -> Result<(Option<Ahead>, Findings), Failure> {
        let _guard = self.lock()?;
        let (mut queue, mut findings) = self.read_locked();
        let position = if let Some(p) = queue.turns.iter().position(|&t| t == ticket.id) {
            p
        } else {
            // Our entry vanished (the file was damaged or edited): take our place again.
            queue.turns.push(ticket.id);
            queue.turns.len() - 1
        };
        let mut found = None;
        let mut index = position;
        while index > 0 {
            index -= 1;
            let id = queue.turns[index];
            if let Some(file) = self.open_if_alive(id) {
                found = Some((id, file, index + 1));
                break;
            }
            queue.turns.remove(index);
            findings.reaped.push(id);
            let _ = fs::remove_file(self.ticket_path(id));
        }
        if !findings.reaped.is_empty() || findings.unreadable_queue {
            self.write_locked(&queue)?;
        }
        let ahead = found.map(|(id, file, count)| Ahead {
            record: self.read_record(id),
            file,
            count,
        });
        Ok((ahead, findings))
    }

    /// The ticket file of `id`, open, if its owner is alive.
    fn open_if_alive(&self, id: u64) -> Option<File> {
        let file = sidecar::open_nofollow(&self.ticket_path(id), Access::Read).ok()?;
        lock::is_locked(&file).ok()?.then_some(file)
    }

    /// The record in ticket `id`, if readable.
    #[must_use]
    pub fn read_record(&self, id: u64) -> Option<Record> {
        let bytes = sidecar::read_small(&self.ticket_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Is ticket `id` held by a live process? (Probes its lock for an instant.)
    #[must_use]
    pub fn is_alive(&self, id: u64) -> bool {
        self.open_if_alive(id).is_some()
    }

    /// Read the queue under the queue lock, rebuilding it from live tickets if it is garbage.
    fn read_locked(&self) -> (QueueFile, Findings) {
        let mut findings = Findings::default();
        let path = self.sidecar.path(QUEUE);
        let queue = match sidecar::read_small(&path) {
            // Missing while tickets exist (deleted under live turns): rebuild, never start empty.
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.ticket_ids().is_empty() => {
                QueueFile {
                    next: self.highest_used_id().saturating_add(1),
                    turns: Vec::new(),
                }
            }
            read => {
                let parsed = read
                    .ok()
                    .and_then(|b| serde_json::from_slice::<QueueFile>(&b).ok());
                parsed.unwrap_or_else(|| {
                    findings.unreadable_queue = true;
                    self.rebuild()
                })
            }
        };
        if !self.tickets_dir().is_dir() && !queue.turns.is_empty() {
            findings.missing_ticket_dir = true;
        }
        (queue, findings)
    }

    /// A queue made of the live prompt tickets, in the order they were issued.
    fn rebuild(&self) -> QueueFile {
        let mut live: Vec<Record> = self
            .ticket_ids()
            .into_iter()
            .filter(|&id| self.is_alive(id))
            .filter_map(|id| self.read_record(id))
            .filter(|r| r.mode == "prompt")
            .collect();
        // Tickets are issued under the write lock: their order is turn order (the clock is not).
        live.sort_by_key(|r| r.ticket);
        QueueFile {
            next: self.highest_used_id().saturating_add(1),
            turns: live.iter().map(|r| r.ticket).collect(),
        }
    }

    /// The highest ticket id any file in the sidecar still names (tickets, captures, kept
    /// outputs), so that a rebuilt queue never issues an id again.
    fn highest_used_id(&self) -> u64 {
        let named = [crate::commit::OUT, crate::commit::KEPT]
            .into_iter()
            .filter_map(|dir| fs::read_dir(self.sidecar.path(dir)).ok())
            .flat_map(|entries| entries.filter_map(Result::ok))
            .filter_map(|e| {
                let name = e.file_name();
                let digits: String = name
                    .to_string_lossy()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse::<u64>().ok()
            })
            .max()
            .unwrap_or(0);
        named.max(self.highest_ticket())
    }

    /// Every ticket id with a file in the ticket directory.
    #[must_use]
    pub fn ticket_ids(&self) -> Vec<u64> {
        let Ok(entries) = fs::read_dir(self.tickets_dir()) else {
            return Vec::new();
        };
        let mut ids: Vec<u64> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        ids.sort_unstable();
        ids
    }

    fn highest_ticket(&self) -> u64 {
        self.ticket_ids().last().copied().unwrap_or(0)
    }

    fn write_locked(&self, queue: &QueueFile) -> Result<(), Failure> {
        let json = serde_json::to_vec(queue).expect("a queue always serializes");
        sidecar::write_atomically(&self.sidecar, QUEUE, &json)
    }

    /// Look at the queue without repairing it, holding the queue lock (when it can be taken)
    /// for all of `look`, so that no probe of a ticket races with its creation or reaping.
    pub fn inspect<R>(&self, look: impl FnOnce(&QueueFile, &Findings) -> R) -> R {
        let _guard = self.lock().ok();
        let (queue, findings) = self.read_locked();
        look(&queue, &findings)
    }

    /// Remove `id` from the queue and delete its ticket file (its owner is leaving); reap dead
    /// turns anywhere in the queue on the way, so none lingers behind the active one.
    fn remove(&self, id: u64, path: &Path) -> Result<(), Failure> {
        let _guard = self.lock()?;
        let (mut queue, findings) = self.read_locked();
        let before = queue.turns.len();
        let _ = fs::remove_file(path);
        queue.turns.retain(|&t| {
            let keep = t != id && self.is_alive(t);
            if !keep && t != id {
                let _ = fs::remove_file(self.ticket_path(t));
            }
            keep
        });
        if queue.turns.len() != before || findings.unreadable_queue {
            self.write_locked(&queue)?;
        }
        Ok(())
    }
}

/// Create a ticket file, lock it, write its record. A fresh file nobody else can have locked.
fn create_ticket(path: &Path, record: &Record) -> io::Result<Held> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    // Lock first: a ticket is never seen unlocked with its record written.
    let Ok(held) = lock::try_exclusive(file)? else {
        let _ = fs::remove_file(path);
        return Err(io::Error::other("a new ticket was locked by someone else"));
    };
    let json = serde_json::to_vec(record).expect("a record always serializes");
    if let Err(e) = held.file().write_all(&json) {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(held)
}

impl Ticket {
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Leave the queue now: remove our entry and ticket file, then free the ticket lock, which
    /// wakes the turn behind us.
    pub fn leave(mut self) -> Result<(), Failure> {
        self.leave_inner()
    }

    fn leave_inner(&mut self) -> Result<(), Failure> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        // Under the queue lock, joined or not: the lock guards the ticket directory too.
        let result = self.queue.remove(self.id, &self.path);
        drop(held);
        result
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Every way out leaves the queue; if even the queue lock fails, the ticket lock is still
        // freed here, the entry is dead, and the next process that looks reaps it.
        let _ = self.leave_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key;

    fn sidecar(dir: &Path) -> Sidecar {
        let key = key::resolve(&dir.join("s.jsonl")).unwrap();
        Sidecar::create(&key).unwrap()
    }

    #[test]
    fn turns_are_issued_in_order_and_leave_cleanly() {
        let t = tempfile::tempdir().unwrap();
        let sc = sidecar(t.path());
        let q = Queue::new(&sc);
        let mut a = q.issue("prompt", "a").unwrap();
        q.join(&mut a).unwrap();
        let mut b = q.issue("prompt", "b").unwrap();
        q.join(&mut b).unwrap();
        let run = q.issue("run", "c").unwrap();
        assert!(a.id() < b.id() && b.id() < run.id());
        let (ahead, _) = q.ahead(&a).unwrap();
        assert!(ahead.is_none(), "the first turn has nobody ahead");
        let (ahead, _) = q.ahead(&b).unwrap();
        let ahead = ahead.expect("a is ahead of b");
        assert_eq!(ahead.record.unwrap().ticket, a.id());
        assert_eq!(ahead.count, 1);
        a.leave().unwrap();
        assert!(q.ahead(&b).unwrap().0.is_none());
        drop(b);
        drop(run);
        let turns = q.inspect(|queue, _| queue.turns.clone());
        assert!(turns.is_empty());
        assert!(q.ticket_ids().is_empty());
    }

    #[test]
    fn a_garbage_queue_file_is_rebuilt_from_live_tickets() {
        let t = tempfile::tempdir().unwrap();
        let sc = sidecar(t.path());
        let q = Queue::new(&sc);
        let mut a = q.issue("prompt", "a").unwrap();
        q.join(&mut a).unwrap();
        let mut b = q.issue("prompt", "b").unwrap();
        fs::write(sc.path(QUEUE), b"\x00garbage{").unwrap();
        let findings = q.join(&mut b).unwrap();
        assert!(findings.unreadable_queue);
        let (ahead, findings) = q.ahead(&b).unwrap();
        assert_eq!(ahead.unwrap().record.unwrap().ticket, a.id());
        assert!(!findings.unreadable_queue, "already repaired by join");
        let turns = q.inspect(|queue, _| queue.turns.clone());
        assert_eq!(turns, vec![a.id(), b.id()]);
    }

    #[test]
    fn a_stale_ticket_left_by_a_dead_process_is_reaped_by_the_next_turn() {
        let t = tempfile::tempdir().unwrap();
        let sc = sidecar(t.path());
        let q = Queue::new(&sc);
        // A ticket nobody holds a lock on, queued: what a SIGKILLed wrapper leaves.
        fs::create_dir(sc.path(TICKETS)).unwrap();
        let record = Record {
            ticket: 7,
            pid: 1,
            mode: "prompt".into(),
            joined_ms: 0,
            command: "dead".into(),
        };
        fs::write(
            sc.path(TICKETS).join("7"),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        fs::write(sc.path(QUEUE), br#"{"next":8,"turns":[7]}"#).unwrap();
        let mut b = q.issue("prompt", "b").unwrap();
        q.join(&mut b).unwrap();
        assert_eq!(b.id(), 8);
        let (ahead, findings) = q.ahead(&b).unwrap();
        assert!(ahead.is_none());
        assert_eq!(findings.reaped, vec![7]);
        assert!(!sc.path(TICKETS).join("7").exists());
        assert_eq!(q.inspect(|queue, _| queue.turns.clone()), vec![8]);
    }
}
