//! The child: spawning the wrapped command, forwarding signals to it, and mapping its status.
//!
//! The child inherits stdin and stderr (stdout too, unless it is captured), runs in the wrapper's
//! process group (so a terminal's Ctrl-C reaches it directly) and receives no lock descriptor.
//! Signals sent to the wrapper with kill(2) are forwarded to it once; the wrapper then waits for it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::exit::{self, Failure, Kind};
use crate::signal::{self, Signals};

/// What the child is started with.
pub struct Spec<'a> {
    /// Program and arguments; never empty (checked when the config is built).
    pub argv: &'a [OsString],
    /// Extra environment (`SESSIONLOCK_SESSION`, `SESSIONLOCK_MODE`, ...).
    pub env: Vec<(&'static str, OsString)>,
    /// Where its stdout goes; `None` inherits the wrapper's.
    pub stdout: Option<Stdio>,
    /// What it gets if the wrapper dies first (Linux: `PR_SET_PDEATHSIG`), so that no command
    /// runs on after its wrapper, on a lock nobody holds any more.
    pub parent_death: Signal,
}

/// Start the child. `session` names the file in the error line.
pub fn spawn(spec: Spec<'_>, session: &Path) -> Result<Child, Failure> {
    let (program, args) = spec
        .argv
        .split_first()
        .expect("a command was checked to exist");
    let mut command = Command::new(program);
    command.args(args).envs(spec.env);
    if let Some(stdout) = spec.stdout {
        command.stdout(stdout);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::process::CommandExt;
        let signal = spec.parent_death;
        let parent = nix::unistd::getpid();
        let test_orphan = crate::fault::hook("orphan-at-spawn");
        // SAFETY: between fork and exec this calls only sigaction(2), prctl(2), getppid(2),
        // kill(2) and _exit(2), which are async-signal-safe, and allocates nothing: every
        // failure ends the child with _exit, never with an `io::Error` (which would allocate,
        // and which std would report to a parent that may be gone, printing an unprefixed
        // "fatal runtime error" line).
        unsafe {
            command.pre_exec(move || {
                // Until exec the wrapper's handlers are still installed here: a signal would
                // only write to the wrapper's self-pipe and be lost. Back to the defaults first,
                // keeping what the caller ignored ignored.
                if signal::restore_defaults().is_err()
                    || nix::sys::prctl::set_pdeathsig(signal).is_err()
                {
                    nix::libc::_exit(exit::Kind::CannotExecute.code().into());
                }
                if test_orphan {
                    // Tests: the wrapper dies right here, as a SIGKILL at this instant would.
                    let _ = nix::sys::signal::kill(parent, nix::sys::signal::Signal::SIGKILL);
                    while nix::unistd::getppid() == parent {
                        std::hint::spin_loop();
                    }
                }
                // The wrapper died before the prctl took effect: the signal will never come,
                // and nobody waits for this command. End quietly.
                if nix::unistd::getppid() != parent {
                    nix::libc::_exit(exit::signalled(signal as i32).into());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = spec.parent_death;
    command
        .spawn()
        .map_err(|e| spawn_failure(program, &e, session))
}

fn spawn_failure(program: &OsStr, err: &io::Error, session: &Path) -> Failure {
    let name = program.to_string_lossy();
    let is_path = program.as_encoded_bytes().contains(&b'/');
    match err.kind() {
        // The program is there, so what is missing is the interpreter its #! line names.
        io::ErrorKind::NotFound if is_path && Path::new(program).exists() => Failure::new(
            Kind::CannotExecute,
            format!("cannot execute {name}: the interpreter on its #! line was not found"),
            session,
        ),
        io::ErrorKind::NotFound => Failure::new(
            Kind::NotFound,
            format!("command not found: {name}"),
            session,
        ),
        _ => Failure::new(
            Kind::CannotExecute,
            format!("cannot execute {name}: {}", exit::describe(err)),
            session,
        ),
    }
}

/// A bound on the child's run time (`--max-hold`): SIGTERM after `after`, SIGKILL `grace` later.
#[derive(Debug, Clone, Copy)]
pub struct MaxHold {
    pub after: Duration,
    pub grace: Duration,
}

/// How the child ended.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub status: ExitStatus,
    /// The last signal the wrapper sent because of `--max-hold`, if it had to.
    pub stopped: Option<Signal>,
}

/// Wait for the child, forwarding terminating signals the wrapper receives to it, and stopping
/// it when it runs past `max_hold`.
pub fn wait(child: &mut Child, signals: &Signals, max_hold: Option<MaxHold>) -> io::Result<Ended> {
    let pid = Pid::from_raw(child.id() as i32);
    let mut next = max_hold.and_then(|m| signal::deadline(m.after));
    let mut stopped = None;
    let mut tree: Vec<(Pid, u64)> = Vec::new();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Ended { status, stopped });
        }
        let woken = signals.wait(None, next)?;
        if woken.child {
            reap_orphans(pid);
        }
        for received in woken.signals {
            if !received.from_kernel {
                // The child may have just exited; ESRCH is not an error here.
                let _ = kill(pid, received.signal);
            }
        }
        if next.is_some_and(|at| at <= Instant::now()) {
            // It may have exited just now: a zombie must not be reported as stopped.
            if let Some(status) = child.try_wait()? {
                return Ok(Ended { status, stopped });
            }
            let (sent, then) = match stopped {
                None => (
                    Signal::SIGTERM,
                    max_hold.and_then(|m| signal::deadline(m.grace)),
                ),
                Some(_) => (Signal::SIGKILL, None),
            };
            // The whole tree: a shell's pipeline must not write on after the lock is gone.
            // Those told to stop at SIGTERM get the SIGKILL too, even if orphaned meanwhile;
            // orphans of the command (a `setsid` daemon too) are ours, as their subreaper.
            tree.extend(descendants(pid));
            tree.extend(
                descendants(nix::unistd::getpid())
                    .into_iter()
                    .filter(|&(p, _)| p != nix::unistd::getpid()),
            );
            for &(member, started) in &tree {
                if same_process(member, started) {
                    let _ = kill(member, sent);
                }
            }
            stopped = Some(sent);
            next = then;
        }
    }
}

/// With `--max-hold`, become the subreaper of the command's tree (Linux): its orphans, a
/// `setsid` daemon too, are reparented to the wrapper instead of init, so a tree walk from the
/// wrapper still finds them.
pub fn adopt_orphans() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: prctl(2) with an integer argument.
        unsafe { nix::libc::prctl(nix::libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
}

/// Reap the command's orphans that ended (reparented to us as their subreaper), never the
/// command itself (std waits for it) and never one still running.
fn reap_orphans(command: Pid) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
        loop {
            let peek = waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            );
            let Ok(status) = peek else { return };
            let Some(pid) = status.pid() else { return };
            if pid == command || matches!(status, WaitStatus::StillAlive) {
                return;
            }
            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = command;
}

/// `root` and every process below it, each with its start time (to tell a reused pid apart).
/// Linux reads `/proc`; elsewhere only `root` itself is known.
fn descendants(root: Pid) -> Vec<(Pid, u64)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let all: Vec<(i32, i32, u64)> = std::fs::read_dir("/proc")
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                    .filter_map(|pid| {
                        let (ppid, started) = stat(pid)?;
                        Some((pid, ppid, started))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut found = vec![(root, stat(root.as_raw()).map_or(0, |(_, s)| s))];
        let mut next = 0;
        while next < found.len() {
            let parent = found[next].0.as_raw();
            next += 1;
            for &(pid, ppid, started) in &all {
                if ppid == parent && !found.iter().any(|(p, _)| p.as_raw() == pid) {
                    found.push((Pid::from_raw(pid), started));
                }
            }
        }
        found
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        vec![(root, 0)]
    }
}

/// Is `pid` still the process that started at `started`? (Always yes where it cannot be told.)
fn same_process(pid: Pid, started: u64) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        stat(pid.as_raw()).is_some_and(|(_, now)| now == started)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (pid, started);
        true
    }
}

/// The parent pid and start time (in clock ticks since boot) from `/proc/<pid>/stat`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn stat(pid: i32) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: read from after the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state, ppid (field 4), ..., starttime (field 22).
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// The exit code the wrapper returns for the child's status: its code, or `128 + N` for signal `N`.
#[must_use]
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => exit::signalled(signal),
        (None, None) => Kind::Software.code(),
    }
}

/// The command's name for records and messages: the file name of its first word.
#[must_use]
pub fn command_name(argv: &[OsString]) -> String {
    argv.first()
        .map(|p| {
            Path::new(p)
                .file_name()
                .unwrap_or(p.as_os_str())
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_like_a_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn command_name_is_the_program_file_name() {
        let argv = vec![OsString::from("/usr/bin/env"), OsString::from("x")];
        assert_eq!(command_name(&argv), "env");
    }
}
