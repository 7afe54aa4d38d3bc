//! The lock file's layout: where each lock lives, and the fixed-size records written in place.
//!
//! ```text
//! bytes 0..16          magic "sessionlock/v2\n\0"
//! bytes 256.., 512..   the state record, two alternating copies (256 bytes each, checksummed)
//! bytes 4096..         the slot table: SLOTS records of 128 bytes (display data only)
//! lock byte 0          the write lock
//! lock SLOT_LOCKS+i    held by the owner of slot i for its whole life
//! lock TICKETS+t       held by prompt turn t for its whole life
//! ```
//!
//! Locks and data are independent (byte-range locks are advisory): the lock bytes need no data.

use crate::commit::Intent;
use crate::fence::{Fingerprint, State};

pub const MAGIC: &[u8; 16] = b"sessionlock/v2\n\0";
/// The write lock's byte.
pub const WRITE_BYTE: u64 = 0;
/// Where the two copies of the state record are.
pub const STATE_AT: [u64; 2] = [256, 512];
pub const STATE_SIZE: usize = 256;
/// The slot table.
pub const SLOTS_AT: u64 = 4096;
pub const SLOT_SIZE: usize = 128;
pub const SLOTS: u32 = 1024;
/// Slot `i`'s liveness lock is byte `SLOT_LOCKS + i`.
pub const SLOT_LOCKS: u64 = 1 << 20;
/// Turn `t`'s lock is byte `TICKETS + t`.
pub const TICKETS: u64 = 1 << 32;
/// Tickets stay below this (offsets are signed 64-bit): at the cap, new turns wait for the
/// queue to drain, when the counter restarts.
pub const TICKET_CAP: u64 = 1 << 62;
/// How many slots a wrapper tries before it runs without one (display only).
pub const SLOT_PROBES: u32 = 32;

/// FNV-1a, 64 bits: the records' checksum (and the commit intent's).
#[must_use]
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Little-endian fields at fixed offsets.
struct Fields<'a> {
    bytes: &'a mut [u8],
    at: usize,
}

impl Fields<'_> {
    fn put(&mut self, v: u64) {
        self.bytes[self.at..self.at + 8].copy_from_slice(&v.to_le_bytes());
        self.at += 8;
    }
    fn put_i128(&mut self, v: i128) {
        self.put(v as u64);
        self.put((v >> 64) as u64);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn get(&mut self) -> u64 {
        let v = u64::from_le_bytes(self.bytes[self.at..self.at + 8].try_into().unwrap());
        self.at += 8;
        v
    }
    fn get_i128(&mut self) -> i128 {
        let lo = self.get();
        let hi = self.get();
        (i128::from(hi as i64) << 64) | i128::from(lo)
    }
}

/// Seal a record: the checksum of everything before its last 8 bytes goes there.
fn seal(bytes: &mut [u8]) {
    let end = bytes.len() - 8;
    let sum = checksum(&bytes[..end]);
    bytes[end..].copy_from_slice(&sum.to_le_bytes());
}

fn sealed(bytes: &[u8]) -> bool {
    let end = bytes.len() - 8;
    bytes[end..] == checksum(&bytes[..end]).to_le_bytes()
}

/// The state record: the queue's counters, the fence state and an unfinished commit's intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Record {
    /// Bumped by every write; the copy with the newer one (as a serial number) is current.
    pub seq: u64,
    /// Ticket numbers restart (in a new epoch) when the queue is empty.
    pub epoch: u64,
    pub next_ticket: u64,
    pub state: State,
    pub intent: Option<Intent>,
}

impl Record {
    #[must_use]
    pub fn encode(&self) -> [u8; STATE_SIZE] {
        let mut bytes = [0u8; STATE_SIZE];
        let mut f = Fields {
            bytes: &mut bytes,
            at: 0,
        };
        f.put(self.seq);
        f.put(self.epoch);
        f.put(self.next_ticket);
        let s = &self.state;
        f.put(s.lineage);
        f.put(s.generation);
        f.put(s.outside_generation);
        f.put(s.outside_changes);
        let p = &s.fingerprint;
        f.put(u64::from(p.exists));
        f.put(p.dev);
        f.put(p.ino);
        f.put(p.size);
        f.put_i128(p.mtime_ns);
        f.put_i128(p.ctime_ns);
        let i = self.intent.unwrap_or_default();
        f.put(u64::from(self.intent.is_some()));
        f.put(i.old_len);
        f.put(i.new_len);
        f.put(i.sum);
        f.put(i.dev);
        f.put(i.ino);
        f.put(i.capture);
        f.put(p.tail);
        seal(&mut bytes);
        bytes
    }

    /// The record in `bytes`, if its checksum holds.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != STATE_SIZE || !sealed(bytes) {
            return None;
        }
        let mut r = Reader { bytes, at: 0 };
        let seq = r.get();
        let epoch = r.get();
        let next_ticket = r.get();
        let lineage = r.get();
        let generation = r.get();
        let outside_generation = r.get();
        let outside_changes = r.get();
        let fingerprint = Fingerprint {
            exists: r.get() != 0,
            dev: r.get(),
            ino: r.get(),
            size: r.get(),
            mtime_ns: r.get_i128(),
            ctime_ns: r.get_i128(),
            tail: 0,
        };
        let active = r.get() != 0;
        let intent = Intent {
            old_len: r.get(),
            new_len: r.get(),
            sum: r.get(),
            dev: r.get(),
            ino: r.get(),
            capture: r.get(),
        };
        let tail = r.get();
        Some(Self {
            seq,
            epoch,
            next_ticket,
            state: State {
                lineage,
                generation,
                outside_generation,
                outside_changes,
                fingerprint: Fingerprint {
                    tail,
                    ..fingerprint
                },
            },
            intent: active.then_some(intent),
        })
    }
}

/// What reading the two copies found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// Nothing written yet (a new lock file).
    Fresh,
    /// The current record; `fell_back` when the newer copy was torn, so counters may be behind.
    Good { record: Record, fell_back: bool },
    /// No copy is readable, or the magic is wrong: the state must start afresh.
    Damaged,
}

/// Pick the current record from the head of the lock file (`0 .. 768`, shorter if the file is).
#[must_use]
pub fn load(head: &[u8]) -> Loaded {
    if head.iter().all(|&b| b == 0) {
        return Loaded::Fresh;
    }
    if head.len() < MAGIC.len() || &head[..MAGIC.len()] != MAGIC {
        return Loaded::Damaged;
    }
    let copy = |i: usize| {
        let at = STATE_AT[i] as usize;
        head.get(at..at + STATE_SIZE)
    };
    let decoded = [0, 1].map(|i| copy(i).and_then(Record::decode));
    let written = [0, 1].map(|i| copy(i).is_some_and(|b| b.iter().any(|&x| x != 0)));
    match decoded {
        [Some(a), Some(b)] => Loaded::Good {
            record: if crate::fence::newer(b.seq, a.seq) {
                b
            } else {
                a
            },
            fell_back: false,
        },
        [Some(one), None] | [None, Some(one)] => Loaded::Good {
            record: one,
            fell_back: written[0] && written[1],
        },
        [None, None] if !written[0] && !written[1] => Loaded::Fresh,
        [None, None] => Loaded::Damaged,
    }
}

/// Where the next write of a record with sequence `seq` goes.
#[must_use]
pub fn copy_for(seq: u64) -> u64 {
    STATE_AT[(seq % 2) as usize]
}

/// What a wrapper is doing, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting for the write lock or for its turn.
    Waiting,
    /// Holding the write lock.
    Locked,
    /// Its command runs without the write lock (a prompt or idle-wait window).
    Window,
    /// Its command runs under the write lock (`run`).
    Running,
}

impl Phase {
    fn code(self) -> u64 {
        match self {
            Phase::Waiting => 1,
            Phase::Locked => 2,
            Phase::Window => 3,
            Phase::Running => 4,
        }
    }
    fn from_code(c: u64) -> Option<Self> {
        Some(match c {
            1 => Phase::Waiting,
            2 => Phase::Locked,
            3 => Phase::Window,
            4 => Phase::Running,
            _ => return None,
        })
    }
}

/// One slot of the table: who a live lock belongs to (display only, never proof of life).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub pid: u32,
    /// When the wrapper started, in milliseconds since the Unix epoch.
    pub start_ms: u64,
    pub mode: crate::config::Mode,
    /// The prompt turn it holds: (epoch, ticket).
    pub turn: Option<(u64, u64)>,
    pub phase: Phase,
    /// Since when it holds the write lock (0: it does not).
    pub write_since_ms: u64,
    /// Since when it is in its current phase.
    pub phase_since_ms: u64,
    /// The command's name (its first word's file name), truncated to fit.
    pub command: String,
}

const NAME_AT: usize = 64;
const NAME_MAX: usize = SLOT_SIZE - 8 - NAME_AT;

impl Slot {
    #[must_use]
    pub fn encode(&self) -> [u8; SLOT_SIZE] {
        use crate::config::Mode;
        let mut bytes = [0u8; SLOT_SIZE];
        let mut f = Fields {
            bytes: &mut bytes,
            at: 0,
        };
        f.put(u64::from(self.pid));
        f.put(self.start_ms);
        f.put(match self.mode {
            Mode::Run => 1,
            Mode::Prompt => 2,
            Mode::IdleWait => 3,
        });
        // The ticket is stored plus one: zero means no turn.
        let (epoch, ticket) = self.turn.map_or((0, 0), |(e, t)| (e, t + 1));
        f.put(epoch);
        f.put(ticket);
        f.put(self.phase.code());
        f.put(self.write_since_ms);
        f.put(self.phase_since_ms);
        let name = self.command.as_bytes();
        let mut n = name.len().min(NAME_MAX - 1);
        while !self.command.is_char_boundary(n) {
            n -= 1;
        }
        bytes[NAME_AT] = n as u8;
        bytes[NAME_AT + 1..NAME_AT + 1 + n].copy_from_slice(&name[..n]);
        seal(&mut bytes);
        bytes
    }

    /// The slot in `bytes`, if it was written whole.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        use crate::config::Mode;
        if bytes.len() != SLOT_SIZE || !sealed(bytes) {
            return None;
        }
        let mut r = Reader { bytes, at: 0 };
        let pid = u32::try_from(r.get()).ok()?;
        let start_ms = r.get();
        let mode = match r.get() {
            1 => Mode::Run,
            2 => Mode::Prompt,
            3 => Mode::IdleWait,
            _ => return None,
        };
        let epoch = r.get();
        let ticket = r.get();
        let phase = Phase::from_code(r.get())?;
        let write_since_ms = r.get();
        let phase_since_ms = r.get();
        let n = usize::from(bytes[NAME_AT]).min(NAME_MAX - 1);
        let command = String::from_utf8_lossy(&bytes[NAME_AT + 1..NAME_AT + 1 + n]).into_owned();
        Some(Self {
            pid,
            start_ms,
            mode,
            turn: ticket.checked_sub(1).map(|t| (epoch, t)),
            phase,
            write_since_ms,
            phase_since_ms,
            command,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    fn record(seq: u64) -> Record {
        Record {
            seq,
            epoch: 3,
            next_ticket: 17,
            state: State::fresh(
                42,
                Fingerprint {
                    exists: true,
                    dev: 1,
                    ino: 2,
                    size: 3,
                    mtime_ns: -4,
                    ctime_ns: 1 << 90,
                    tail: 7,
                },
            ),
            intent: Some(Intent {
                old_len: 1,
                new_len: 2,
                sum: 3,
                dev: 4,
                ino: 5,
                capture: 6,
            }),
        }
    }

    fn head(a: Option<&Record>, b: Option<&Record>) -> Vec<u8> {
        let mut h = vec![0u8; 768];
        h[..16].copy_from_slice(MAGIC);
        if let Some(a) = a {
            h[256..512].copy_from_slice(&a.encode());
        }
        if let Some(b) = b {
            h[512..768].copy_from_slice(&b.encode());
        }
        h
    }

    #[test]
    fn a_record_survives_a_round_trip() {
        let r = record(7);
        assert_eq!(Record::decode(&r.encode()), Some(r));
        let mut torn = r.encode();
        torn[100] ^= 1;
        assert_eq!(Record::decode(&torn), None);
    }

    #[test]
    fn the_newer_copy_wins_and_a_torn_one_falls_back_to_the_other() {
        let (a, b) = (record(u64::MAX), record(0));
        let Loaded::Good { record, fell_back } = load(&head(Some(&a), Some(&b))) else {
            panic!()
        };
        assert_eq!((record.seq, fell_back), (0, false), "0 follows u64::MAX");
        let mut h = head(Some(&a), Some(&b));
        h[600] ^= 0xff;
        let Loaded::Good { record, fell_back } = load(&h) else {
            panic!()
        };
        assert_eq!((record.seq, fell_back), (u64::MAX, true));
        assert_eq!(
            load(&head(Some(&a), None)),
            Loaded::Good {
                record: a,
                fell_back: false
            }
        );
        assert_eq!(load(&[0u8; 768]), Loaded::Fresh);
        assert_eq!(load(&[]), Loaded::Fresh);
        assert_eq!(load(b"garbage garbage garbage"), Loaded::Damaged);
        let mut h = head(Some(&a), Some(&b));
        h[300] ^= 1;
        h[600] ^= 1;
        assert_eq!(load(&h), Loaded::Damaged);
    }

    #[test]
    fn a_slot_survives_a_round_trip_and_long_names_are_cut_on_a_char_boundary() {
        let slot = Slot {
            pid: 4242,
            start_ms: 1_700_000_000_000,
            mode: Mode::Prompt,
            turn: Some((2, 9)),
            phase: Phase::Window,
            write_since_ms: 0,
            phase_since_ms: 1_700_000_000_500,
            command: "é".repeat(40),
        };
        let back = Slot::decode(&slot.encode()).unwrap();
        assert_eq!(back.command, "é".repeat(27));
        assert_eq!(
            Slot {
                command: slot.command.clone(),
                ..back
            },
            slot
        );
    }
}
