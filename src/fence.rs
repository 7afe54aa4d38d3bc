//! The fence: fingerprints of the session file, and the state that tells owned writes (made by a
//! sessionlock holder under the write lock) from changes made outside. Pure logic: where the
//! state is kept is the coordinator's business.
//!
//! The state is a chain of generations. Whoever holds the write lock first *observes* the file:
//! if it differs from the last trusted fingerprint, an outside change happened, and it gets a
//! generation of its own, marked as outside. A holder's own change then gets the next generation
//! as an owned write. A prompt window that opened at generation `g` is a takeover when an outside
//! generation newer than `g` exists, so an owned write after an outside change never launders it.
//! Generations compare as serial numbers (they may wrap); a state that had to be started afresh
//! gets a new `lineage`, and a window opened in another lineage cannot be vouched for.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What identifies one version of the session file. "Absent" is a state too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Fingerprint {
    pub exists: bool,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    /// For a file shared between hosts (the etcd backend): a checksum of its last 4 KiB, so a
    /// same-size rewrite is caught even where times are coarse; `dev` is 0 there (it differs
    /// between hosts). 0 for the files backend.
    #[serde(default)]
    pub tail: u64,
}

impl Fingerprint {
    /// The fingerprint of a file shared between hosts: no device number, a checksum of the tail.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub fn of_shared(path: &Path) -> io::Result<Self> {
        let mut fp = Self::of(path)?;
        fp.dev = 0;
        if fp.exists {
            use std::os::unix::fs::FileExt;
            let file = fs::File::open(path)?;
            let start = fp.size.saturating_sub(4096);
            let mut tail = vec![0u8; usize::try_from(fp.size - start).unwrap_or(0)];
            file.read_exact_at(&mut tail, start)?;
            fp.tail = crate::coord::files::layout::checksum(&tail);
        }
        Ok(fp)
    }

    /// The fingerprint of `path` now (following no further symlinks than the key already did).
    pub fn of(path: &Path) -> io::Result<Self> {
        match fs::metadata(path) {
            Ok(m) => Ok(Self {
                exists: true,
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
                tail: 0,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// What changed from `self` to `now`, in a few words.
    #[must_use]
    pub fn change_to(&self, now: &Self) -> Change {
        Change {
            before: *self,
            after: *now,
            reset: false,
        }
    }
}

/// A difference between two fingerprints, for the takeover line.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    before: Fingerprint,
    after: Fingerprint,
    /// The lock state was started afresh: what happened in between cannot be known.
    reset: bool,
}

impl Change {
    fn reset(mut self) -> Self {
        self.reset = true;
        self
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (b, a) = (&self.before, &self.after);
        if self.reset {
            return f.write_str(
                "the lock state was damaged or replaced and started afresh, so no change can be \
                 ruled out",
            );
        }
        match (b.exists, a.exists) {
            (false, false) => f.write_str("created and removed again"),
            (true, false) => f.write_str("removed"),
            (false, true) => write!(f, "created, {} bytes", a.size),
            (true, true) if (b.dev, b.ino) != (a.dev, a.ino) => {
                write!(
                    f,
                    "replaced by another file, {} -> {} bytes",
                    b.size, a.size
                )
            }
            (true, true) if b.size != a.size => write!(f, "size {} -> {} bytes", b.size, a.size),
            (true, true) => write!(f, "rewritten in place, {} bytes", a.size),
        }
    }
}

/// The record of trusted versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct State {
    /// Which history this is: a new one starts when the state had to be started afresh.
    pub lineage: u64,
    /// Bumped by every change anyone has seen, owned or not.
    pub generation: u64,
    /// The newest generation that was an outside change (equal to an older one: none since).
    pub outside_generation: u64,
    /// How many outside changes have been seen, in all.
    pub outside_changes: u64,
    /// The file as of `generation`.
    pub fingerprint: Fingerprint,
}

/// `a` is newer than `b`, as serial numbers: correct across a wrap of the counter.
#[must_use]
pub fn newer(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) > 0
}

impl State {
    /// A state started afresh for a file now at `now`: a new lineage, so no window opened before
    /// can pass, while windows opened from here on can.
    #[must_use]
    pub fn fresh(lineage: u64, now: Fingerprint) -> Self {
        Self {
            lineage,
            generation: 1,
            outside_generation: 0,
            outside_changes: 0,
            fingerprint: now,
        }
    }

    /// Bring the state up to date with the file at `now`, recording an outside change if it
    /// differs from the last trusted version. Returns whether the state changed.
    pub fn observe(&mut self, now: Fingerprint) -> bool {
        if self.fingerprint == now {
            return false;
        }
        self.generation = self.generation.wrapping_add(1);
        self.outside_generation = self.generation;
        self.outside_changes = self.outside_changes.wrapping_add(1);
        self.fingerprint = now;
        true
    }

    /// Record the file at `now` as an owned write. Returns whether the state changed.
    pub fn own(&mut self, now: Fingerprint) -> bool {
        if self.fingerprint == now {
            return false;
        }
        self.generation = self.generation.wrapping_add(1);
        self.fingerprint = now;
        true
    }

    /// The fence for a window opening now (after `observe`).
    #[must_use]
    pub fn fence(&self) -> Fence {
        Fence {
            lineage: self.lineage,
            generation: self.generation,
            fingerprint: self.fingerprint,
        }
    }

    /// A window's verdict, with the state observed after it closed.
    #[must_use]
    pub fn verdict(&self, fence: &Fence, strict: bool) -> Verdict {
        let changed = fence.fingerprint.change_to(&self.fingerprint);
        if fence.lineage != self.lineage {
            return Verdict::Takeover(changed.reset());
        }
        if newer(self.outside_generation, fence.generation)
            || (strict && newer(self.generation, fence.generation))
        {
            Verdict::Takeover(changed)
        } else {
            Verdict::Clean(self.fingerprint)
        }
    }
}

/// A prompt window's fence: the lineage, generation and file it opened on.
#[derive(Debug, Clone, Copy)]
pub struct Fence {
    pub lineage: u64,
    pub generation: u64,
    pub fingerprint: Fingerprint,
}

/// How a fence check came out.
#[derive(Debug, Clone, Copy)]
pub enum Verdict {
    /// Unchanged, or changed by owned writes only: the file as it is now, which a commit may
    /// go to (and no other).
    Clean(Fingerprint),
    /// Changed from outside (or, with `--strict`, changed at all).
    Takeover(Change),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(size: u64) -> Fingerprint {
        Fingerprint {
            exists: true,
            dev: 1,
            ino: 2,
            size,
            mtime_ns: i128::from(size),
            ctime_ns: i128::from(size),
            tail: 0,
        }
    }

    fn state_at(generation: u64) -> State {
        State {
            lineage: 9,
            generation,
            outside_generation: generation.wrapping_sub(5),
            outside_changes: 0,
            fingerprint: fp(0),
        }
    }

    #[test]
    fn an_untouched_file_passes_the_fence() {
        let s = state_at(3);
        assert!(matches!(s.verdict(&s.fence(), true), Verdict::Clean(_)));
    }

    #[test]
    fn an_owned_write_passes_and_an_outside_one_does_not() {
        let mut s = state_at(3);
        let fence = s.fence();
        assert!(s.own(fp(3)));
        assert!(matches!(s.verdict(&fence, false), Verdict::Clean(_)));
        assert!(matches!(s.verdict(&fence, true), Verdict::Takeover(_)));
        let fence = s.fence();
        assert!(s.observe(fp(6)));
        let Verdict::Takeover(change) = s.verdict(&fence, false) else {
            panic!("outside append not seen");
        };
        assert_eq!(change.to_string(), "size 3 -> 6 bytes");
    }

    #[test]
    fn an_owned_write_after_an_outside_one_does_not_launder_it() {
        let mut s = state_at(3);
        let fence = s.fence();
        s.observe(fp(8));
        s.own(fp(11));
        assert!(matches!(s.verdict(&fence, false), Verdict::Takeover(_)));
        let later = s.fence();
        s.own(fp(14));
        assert!(matches!(s.verdict(&later, false), Verdict::Clean(_)));
    }

    #[test]
    fn generations_at_the_end_of_the_counter_wrap_without_losing_an_outside_change() {
        for start in [u64::MAX - 1, u64::MAX, i64::MAX as u64, 0] {
            let mut s = state_at(start);
            let fence = s.fence();
            s.own(fp(1));
            s.own(fp(2));
            assert!(
                matches!(s.verdict(&fence, false), Verdict::Clean(_)),
                "{start}"
            );
            s.observe(fp(3));
            s.own(fp(4));
            assert!(
                matches!(s.verdict(&fence, false), Verdict::Takeover(_)),
                "an outside change at generation {start}+3 was laundered"
            );
        }
    }

    #[test]
    fn a_state_started_afresh_fails_every_window_opened_before() {
        let s = state_at(3);
        let fence = s.fence();
        let fresh = State::fresh(10, fp(0));
        let Verdict::Takeover(change) = fresh.verdict(&fence, false) else {
            panic!("a reset state vouched for an old window");
        };
        assert!(change.to_string().contains("lock state"), "{change}");
        assert!(matches!(
            fresh.verdict(&fresh.fence(), false),
            Verdict::Clean(_)
        ));
    }
}
