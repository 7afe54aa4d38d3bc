//! The fence: fingerprints of the session file, and the sidecar's `state` file that tells owned
//! writes (made by a sessionlock holder under the write lock) from changes made outside.
//!
//! The state is a chain of generations. Whoever holds the write lock first *observes* the file:
//! if it differs from the last trusted fingerprint, an outside change happened, and it gets a
//! generation of its own, marked as outside. A holder's own change then gets the next generation
//! as an owned write. A prompt window that opened at generation `g` is a takeover when an outside
//! generation newer than `g` exists, so an owned write after an outside change never launders it.
//! All of it happens under the write lock.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::exit::Failure;
use crate::sidecar::{self, Sidecar};

/// The state file in the sidecar.
pub const STATE: &str = "state";

/// What identifies one version of the session file. "Absent" is a state too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Fingerprint {
    pub exists: bool,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Fingerprint {
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
        }
    }
}

/// A difference between two fingerprints, for the takeover line.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    before: Fingerprint,
    after: Fingerprint,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (b, a) = (&self.before, &self.after);
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

/// The sidecar's record of trusted versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct State {
    /// Bumped by every change anyone has seen, owned or not.
    pub generation: u64,
    /// The newest generation that was an outside change (0: none seen).
    pub outside_generation: u64,
    /// How many outside changes have been seen, in all.
    pub outside_changes: u64,
    /// The file as of `generation`.
    pub fingerprint: Fingerprint,
}

/// A prompt window's fence: the generation and file it opened on.
#[derive(Debug, Clone, Copy)]
pub struct Fence {
    pub generation: u64,
    pub fingerprint: Fingerprint,
}

/// How a fence check came out.
#[derive(Debug, Clone, Copy)]
pub enum Verdict {
    /// Unchanged, or changed by owned writes only.
    Clean,
    /// Changed from outside (or, with `--strict`, changed at all).
    Takeover(Change),
}

/// The state of one session, read and written under the write lock.
pub struct Tracker<'a> {
    sidecar: &'a Sidecar,
    session: &'a Path,
}

impl<'a> Tracker<'a> {
    #[must_use]
    pub fn new(sidecar: &'a Sidecar, session: &'a Path) -> Self {
        Self { sidecar, session }
    }

    /// The recorded state, if a readable one exists.
    #[must_use]
    pub fn load(&self) -> Option<State> {
        let bytes = sidecar::read_small(&self.sidecar.path(STATE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn save(&self, state: &State) -> Result<(), Failure> {
        let json = serde_json::to_vec(state).expect("a state always serializes");
        sidecar::write_atomically(self.sidecar, STATE, &json)
    }

    fn fingerprint(&self) -> Result<Fingerprint, Failure> {
        Fingerprint::of(self.session).map_err(|e| {
            Failure::io(
                "cannot read the session file's fingerprint",
                &e,
                self.session,
            )
        })
    }

    /// Bring the state up to date with the file, recording an outside change if there was one.
    pub fn observe(&self) -> Result<State, Failure> {
        let now = self.fingerprint()?;
        let (mut state, mut dirty) = match sidecar::read_small(&self.sidecar.path(STATE)) {
            Ok(bytes) => match serde_json::from_slice::<State>(&bytes) {
                Ok(state) => (state, false),
                Err(_) => (Self::after_damage(), true),
            },
            // Missing: the first use, or deleted under open windows. Start above any earlier
            // generation (the clock in milliseconds) with a mark that fails every window open
            // across it; at first use no window is open, so the mark costs nothing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let generation = sidecar::now_ms();
                let state = State {
                    generation,
                    outside_generation: generation,
                    outside_changes: 0,
                    fingerprint: now,
                };
                (state, true)
            }
            Err(_) => (Self::after_damage(), true),
        };
        if state.fingerprint != now {
            state.generation += 1;
            state.outside_generation = state.generation;
            state.outside_changes += 1;
            state.fingerprint = now;
            dirty = true;
        }
        if dirty {
            self.save(&state)?;
        }
        Ok(state)
    }

    /// A damaged state cannot vouch for anything: start a generation above any earlier one
    /// (the clock in milliseconds) and mark it outside, so every window open across it fails.
    fn after_damage() -> State {
        let generation = sidecar::now_ms();
        State {
            generation,
            outside_generation: generation,
            outside_changes: 1,
            fingerprint: Fingerprint {
                size: u64::MAX,
                ..Fingerprint::default()
            },
        }
    }

    /// The fence for a window opening now.
    pub fn fence(&self) -> Result<Fence, Failure> {
        let state = self.observe()?;
        Ok(Fence {
            generation: state.generation,
            fingerprint: state.fingerprint,
        })
    }

    /// Check a window's fence after it closed.
    pub fn check(&self, fence: &Fence, strict: bool) -> Result<Verdict, Failure> {
        let state = self.observe()?;
        let changed = fence.fingerprint.change_to(&state.fingerprint);
        if state.outside_generation > fence.generation
            || (strict && state.generation > fence.generation)
        {
            Ok(Verdict::Takeover(changed))
        } else {
            Ok(Verdict::Clean)
        }
    }

    /// Record the file's current version as an owned write (if it changed) after `before`.
    pub fn publish_owned(&self, before: &State) -> Result<State, Failure> {
        let now = self.fingerprint()?;
        if now == before.fingerprint {
            return Ok(*before);
        }
        let state = State {
            generation: before.generation + 1,
            fingerprint: now,
            ..*before
        };
        self.save(&state)?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key;
    use std::io::Write;

    fn setup() -> (tempfile::TempDir, Sidecar, std::path::PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let session = t.path().join("s.jsonl");
        let key = key::resolve(&session).unwrap();
        let sc = Sidecar::create(&key).unwrap();
        (t, sc, key.path().to_owned())
    }

    fn append(path: &Path, text: &str) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn an_untouched_file_passes_the_fence() {
        let (_t, sc, s) = setup();
        let tr = Tracker::new(&sc, &s);
        let fence = tr.fence().unwrap();
        assert!(matches!(tr.check(&fence, true).unwrap(), Verdict::Clean));
    }

    #[test]
    fn an_owned_write_passes_and_an_outside_one_does_not() {
        let (_t, sc, s) = setup();
        let tr = Tracker::new(&sc, &s);
        let fence = tr.fence().unwrap();
        let before = tr.observe().unwrap();
        append(&s, "{}\n");
        tr.publish_owned(&before).unwrap();
        assert!(matches!(tr.check(&fence, false).unwrap(), Verdict::Clean));
        assert!(matches!(
            tr.check(&fence, true).unwrap(),
            Verdict::Takeover(_)
        ));

        let fence = tr.fence().unwrap();
        append(&s, "{}\n");
        let Verdict::Takeover(change) = tr.check(&fence, false).unwrap() else {
            panic!("outside append not seen");
        };
        assert_eq!(change.to_string(), "size 3 -> 6 bytes");
    }

    #[test]
    fn an_owned_write_after_an_outside_one_does_not_launder_it() {
        let (_t, sc, s) = setup();
        let tr = Tracker::new(&sc, &s);
        let fence = tr.fence().unwrap();
        append(&s, "outside\n");
        let seen = tr.observe().unwrap(); // the next holder notices the outside change
        append(&s, "{}\n");
        tr.publish_owned(&seen).unwrap();
        assert!(matches!(
            tr.check(&fence, false).unwrap(),
            Verdict::Takeover(_)
        ));
        // A window opened after the outside change is not affected by it.
        let later = tr.fence().unwrap();
        let before = tr.observe().unwrap();
        append(&s, "{}\n");
        tr.publish_owned(&before).unwrap();
        assert!(matches!(tr.check(&later, false).unwrap(), Verdict::Clean));
    }

    #[test]
    fn a_damaged_state_file_fails_every_open_window() {
        let (_t, sc, s) = setup();
        let tr = Tracker::new(&sc, &s);
        let fence = tr.fence().unwrap();
        fs::write(sc.path(STATE), "garbage").unwrap();
        assert!(matches!(
            tr.check(&fence, false).unwrap(),
            Verdict::Takeover(_)
        ));
        // The repaired state is kept: windows opened after the repair pass again.
        let later = tr.fence().unwrap();
        assert!(matches!(tr.check(&later, false).unwrap(), Verdict::Clean));
    }
}
