//! Shared test helpers: a sandbox directory, the binary under test, gate children that hold a
//! window open until told, wrappers in their own process group killed on drop, and waits on
//! states (files, stderr lines, exits) with a generous deadline, never on time alone.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long a state may take to appear on a loaded machine before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// The poll interval of `wait_for`; the only sleep the tests use.
const POLL: Duration = Duration::from_millis(5);

/// The gate: logs `enter NAME`, marks `in.NAME`, waits for `go.NAME`, logs `exit NAME`, exits
/// with `$2` (default 0). Stops when the sandbox disappears, so it never outlives a test.
const GATE: &str = r#"#!/bin/sh
d=$(dirname "$0")
echo "enter $1" >> "$d/log"
: > "$d/in.$1"
while [ ! -e "$d/go.$1" ]; do
  [ -d "$d" ] || exit 99
  sleep 0.01
done
echo "exit $1" >> "$d/log"
exit "${2:-0}"
"#;

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sessionlock"))
}

/// A temporary directory with the gate script in it; every command runs inside it.
pub struct Sandbox {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = fs::canonicalize(dir.path()).expect("canonical temp dir");
        let gate = root.join("gate.sh");
        fs::write(&gate, GATE).unwrap();
        Self { _dir: dir, root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// `sessionlock ARGS` in the sandbox, for `assert_cmd`.
    pub fn cmd<I, S>(&self, args: I) -> assert_cmd::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = assert_cmd::Command::new(bin());
        cmd.current_dir(&self.root).args(args);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SESSIONLOCK_") {
                cmd.env_remove(name);
            }
        }
        cmd
    }

    /// Any program in the sandbox, for `assert_cmd`, with no `SESSIONLOCK_*` of the caller's.
    pub fn program(&self, program: impl AsRef<OsStr>) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::new(program);
        cmd.current_dir(&self.root);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SESSIONLOCK_") {
                cmd.env_remove(name);
            }
        }
        cmd
    }

    /// `MODE -v [EXTRA] SESSION -- gate NAME`: a wrapper whose window stays open until
    /// `open(NAME)`; `-v` makes it say at once when it waits.
    pub fn gated(&self, mode: &str, session: &str, name: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec![mode.to_owned(), "-v".to_owned()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push(session.to_owned());
        args.push("--".to_owned());
        args.extend(self.gate(name));
        args
    }

    /// The argv of a gate child named `name`.
    pub fn gate(&self, name: &str) -> Vec<String> {
        vec![
            "sh".into(),
            self.path("gate.sh").display().to_string(),
            name.into(),
        ]
    }

    /// Start `sessionlock ARGS` in its own process group; stdout and stderr go to
    /// `out.NAME` and `err.NAME`.
    pub fn spawn<I, S>(&self, name: &str, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(bin());
        cmd.current_dir(&self.root).args(args);
        self.spawn_command(name, cmd)
    }

    /// Start any command in its own process group with stdout/stderr captured as in `spawn`.
    pub fn spawn_command(&self, name: &str, mut cmd: Command) -> Proc {
        // A user's environment must not change a test's outcome; a test sets what it needs
        // after this (on `cmd`), so keep what the caller set explicitly.
        let set: Vec<std::ffi::OsString> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SESSIONLOCK_") && !set.contains(&name) {
                cmd.env_remove(name);
            }
        }
        let out = fs::File::create(self.path(format!("out.{name}"))).unwrap();
        let err = fs::File::create(self.path(format!("err.{name}"))).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().expect("spawn sessionlock");
        Proc {
            child,
            name: name.into(),
            root: self.root.clone(),
            status: None,
        }
    }

    /// Open the gate of `name`: its window ends.
    pub fn open(&self, name: &str) {
        fs::write(self.path(format!("go.{name}")), "").unwrap();
    }

    /// Has the gate child `name` entered its window?
    pub fn entered(&self, name: &str) -> bool {
        self.path(format!("in.{name}")).exists()
    }

    /// Wait until the gate child `name` is inside its window.
    pub fn wait_entered(&self, name: &str) {
        wait_for(&format!("{name} to enter its window"), || {
            self.entered(name)
        });
    }

    /// The gate log: `enter A`, `exit A`, ... in the order they happened.
    pub fn log(&self) -> Vec<String> {
        fs::read_to_string(self.path("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn read(&self, rel: impl AsRef<Path>) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_default()
    }
}

/// A running wrapper in its own process group; the whole group is killed on drop.
pub struct Proc {
    child: Child,
    name: String,
    root: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.root.join(format!("err.{}", self.name))).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(self.root.join(format!("out.{}", self.name))).unwrap_or_default()
    }

    /// Wait until its stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str) {
        wait_for(&format!("{} to say {needle:?}", self.name), || {
            self.stderr().contains(needle)
        });
    }

    /// Send `signal` to the wrapper process only.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Wait for the wrapper to end (within the deadline) and return its status as a shell
    /// reports it: the exit code, or 128+N when it died of signal N.
    pub fn wait_code(&mut self) -> i32 {
        let status = self.wait_status();
        status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap()
    }

    /// Wait for the wrapper to end (within the deadline).
    pub fn wait_status(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(status);
                return status;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{} did not exit; stderr: {}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Wait for the wrapper to end, however it ended (a `SIGKILL`ed one has no code).
    pub fn wait_code_or_signal(&mut self) -> Option<i32> {
        wait_for(&format!("{} to end", self.name), || {
            self.child.try_wait().unwrap().is_some()
        });
        self.child.wait().unwrap().code()
    }

    /// Has it exited yet? (Does not wait.)
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

impl Drop for Proc {
    /// Kill the whole group, and wait until it is gone: a killed wrapper's command must not
    /// linger into what the test does next.
    fn drop(&mut self) {
        let group = Pid::from_raw(self.pid());
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
        let started = Instant::now();
        while group_alive(group.as_raw()) && started.elapsed() < DEADLINE {
            std::thread::sleep(POLL);
        }
    }
}

/// Does process group `pgid` have a member that is not a zombie? (A zombie holds nothing; who
/// reaps it, and when, is up to init.)
pub fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // After the parenthesised name: state, ppid, pgrp.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

/// Has process `pid` ended (gone, or a zombie nobody reaped yet)?
pub fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Poll `check` until it holds; fail with `what` after the deadline.
pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// Assert that the log shows windows that never overlap: `enter X` is always followed by `exit X`.
pub fn assert_no_overlap(log: &[String]) {
    assert!(log.len().is_multiple_of(2), "unfinished windows in {log:?}");
    for pair in log.chunks(2) {
        let enter = pair[0].strip_prefix("enter ");
        let exit = pair[1].strip_prefix("exit ");
        assert!(enter.is_some() && enter == exit, "windows overlap: {log:?}");
    }
}

/// The order in which gate children entered.
pub fn entry_order(log: &[String]) -> Vec<String> {
    log.iter()
        .filter_map(|l| l.strip_prefix("enter ").map(str::to_owned))
        .collect()
}

#[test]
fn assert_no_overlap_catches_an_overlap() {
    let overlapping: Vec<String> = ["enter A", "enter B", "exit A", "exit B"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert!(std::panic::catch_unwind(|| assert_no_overlap(&overlapping)).is_err());
    let serial: Vec<String> = ["enter A", "exit A", "enter B", "exit B"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_no_overlap(&serial);
}

impl Sandbox {
    /// `sessionlock status --json SESSION`, parsed.
    pub fn status(&self, session: &str) -> serde_json::Value {
        let out = Command::new(bin())
            .current_dir(&self.root)
            .args(["status", "--json", session])
            .output()
            .expect("run status");
        assert!(out.status.success(), "status failed: {out:?}");
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// The queue as (ticket, state, pid) in order.
    pub fn queue(&self, session: &str) -> Vec<(u64, String, u64)> {
        self.status(session)["queue"]
            .as_array()
            .expect("queue is an array")
            .iter()
            .map(|t| {
                (
                    t["ticket"].as_u64().unwrap(),
                    t["state"].as_str().unwrap().to_owned(),
                    t["pid"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Wait until the queue has `n` entries.
    pub fn wait_queue_len(&self, session: &str, n: usize) -> Vec<(u64, String, u64)> {
        let mut last = Vec::new();
        wait_for(&format!("{n} turns in the queue of {session}"), || {
            last = self.queue(session);
            last.len() == n
        });
        last
    }

    /// Assert nothing of any wrapper is left: empty queue, no tickets, lock free, no problems.
    pub fn assert_no_trace(&self, session: &str) {
        let status = self.status(session);
        assert_eq!(status["queue"], serde_json::json!([]), "{status:#}");
        assert_eq!(status["others"], serde_json::json!([]), "{status:#}");
        assert_eq!(status["lock"]["held"], false, "{status:#}");
        assert_eq!(status["problems"], serde_json::json!([]), "{status:#}");
    }
}

/// The sidecar's lock file of `session` in `sandbox`.
pub fn lock_file(sandbox: &Sandbox, session: &str) -> PathBuf {
    sandbox.path(format!(".{session}.sessionlock/lock"))
}

/// FNV-1a 64, the lock file's record checksum (as `layout::checksum`).
fn fnv(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Fields of the state record, as 64-bit words (see `coord/files/layout.rs`).
pub mod field {
    pub const EPOCH: usize = 1;
    pub const NEXT_TICKET: usize = 2;
    pub const GENERATION: usize = 4;
    pub const OUTSIDE_GENERATION: usize = 5;
}

/// Forge the lock state as a hostile or unlucky history would leave it: take the current
/// record, let `change` set words in it, and write it as the newer copy with a valid checksum.
pub fn forge_state(sandbox: &Sandbox, session: &str, change: impl FnOnce(&mut [u64; 31])) {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(lock_file(sandbox, session))
        .unwrap();
    let mut head = [0u8; 768];
    file.read_exact_at(&mut head, 0).unwrap();
    let copy = |i: usize| &head[256 * (i + 1)..256 * (i + 2)];
    let valid = |c: &[u8]| c[248..] == fnv(&c[..248]).to_le_bytes();
    let words = |c: &[u8]| -> [u64; 31] {
        std::array::from_fn(|i| u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap()))
    };
    let current = [0, 1]
        .into_iter()
        .filter(|&i| valid(copy(i)))
        .map(|i| words(copy(i)))
        .max_by_key(|w| w[0])
        .expect("a valid state record");
    let mut next = current;
    change(&mut next);
    next[0] = current[0] + 1;
    let mut bytes = [0u8; 256];
    for (i, w) in next.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    let sum = fnv(&bytes[..248]);
    bytes[248..].copy_from_slice(&sum.to_le_bytes());
    let at = 256 * (1 + (next[0] % 2));
    file.write_all_at(&bytes, at).unwrap();
}

/// A byte-range lock held by this test process on `path`, as another program would hold it:
/// an OFD lock (`ofd`, no pid to report) or a classic POSIX one (our pid). Dropped with the file.
pub fn hold_lock(path: &Path, write: bool, ofd: bool, start: i64, len: i64) -> fs::File {
    use nix::fcntl::{FcntlArg, fcntl};
    let file = fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .unwrap();
    // SAFETY: a plain C struct; all-zero is valid.
    let mut fl: nix::libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if write {
        nix::libc::F_WRLCK
    } else {
        nix::libc::F_RDLCK
    } as i16;
    fl.l_whence = nix::libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    let arg = if ofd {
        FcntlArg::F_OFD_SETLK(&fl)
    } else {
        FcntlArg::F_SETLK(&fl)
    };
    fcntl(&file, arg).expect("take the lock");
    file
}
