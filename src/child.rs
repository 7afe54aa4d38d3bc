//! The child: spawning the wrapped command, forwarding signals to it, and mapping its status.
//!
//! The child inherits stdin and stderr (stdout too, unless it is captured), runs in the wrapper's
//! process group (so a terminal's Ctrl-C reaches it directly) and receives no lock descriptor.
//! Signals sent to the wrapper with kill(2) are forwarded to it once; the wrapper then waits for it.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::libc;
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
    pub stdout: Option<OwnedFd>,
    /// What it gets if the wrapper dies first (Linux: `PR_SET_PDEATHSIG`), so that no command
    /// runs on after its wrapper, on a lock nobody holds any more.
    pub parent_death: Signal,
}

/// The command, running.
pub struct Running {
    pid: Pid,
}

impl Running {
    #[must_use]
    pub fn id(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Its status, if it has ended (and is reaped now).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let mut status = 0;
        loop {
            // SAFETY: waitpid(2) with a valid pointer.
            let rc = unsafe { libc::waitpid(self.pid.as_raw(), &raw mut status, libc::WNOHANG) };
            match rc {
                0 => return Ok(None),
                -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                -1 => return Err(io::Error::last_os_error()),
                _ => return Ok(Some(ExitStatus::from_raw(status))),
            }
        }
    }
}

/// Start the child. `session` names the file in the error line.
pub fn spawn(spec: Spec<'_>, session: &Path) -> Result<Running, Failure> {
    let program = spec.argv.first().expect("a command was checked to exist");
    let fail = |e: &io::Error| spawn_failure(program, e, session);
    let path = resolve(program).map_err(|e| fail(&e))?;
    let argv = spec
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| fail(&e))?;
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !spec.env.iter().any(|(extra, _)| k == extra))
        .collect();
    env.extend(spec.env.into_iter().map(|(k, v)| (OsString::from(k), v)));
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring(&kv)
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| fail(&e))?;
    let pid = start(&path, &argv, &envp, spec.stdout.as_ref(), spec.parent_death).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            // The program was found: what is missing is the interpreter its #! line names.
            Failure::new(
                Kind::CannotExecute,
                format!(
                    "cannot execute {}: the interpreter on its #! line was not found",
                    program.to_string_lossy()
                ),
                session,
            )
        } else {
            fail(&e)
        }
    })?;
    Ok(Running { pid })
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
}

/// The program's path as execvp(3) would find it: as given if it has a slash, else the first
/// executable file of that name in PATH. Found in the parent: the child only calls execve.
fn resolve(program: &OsStr) -> io::Result<CString> {
    if program.as_bytes().contains(&b'/') {
        return cstring(program.as_bytes());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/bin:/usr/bin".into());
    let mut denied = false;
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() {
            std::path::PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(program);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let c = cstring(candidate.as_os_str().as_bytes())?;
        // SAFETY: access(2) with a valid C string.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(c);
        }
        denied = true;
    }
    Err(io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

/// What the child needs between clone and exec, all prepared by the parent: the child shares
/// the parent's memory (`CLONE_VM`) and only reads this, and writes `errno` on failure.
#[cfg(any(target_os = "linux", target_os = "android"))]
struct Launch {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdout: libc::c_int,
    parent_death: libc::c_int,
    parent: libc::pid_t,
    test_orphan: bool,
    mask: libc::sigset_t,
    errno: libc::c_int,
}

/// Start the command the way `posix_spawn(3)` does (`clone` with `CLONE_VM | CLONE_VFORK`: no copy
/// of the wrapper's page tables, no copy-on-write faults, the parent waits until the exec), but
/// with the parent-death signal that `posix_spawn` cannot set.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn start(
    path: &CString,
    argv: &[CString],
    envp: &[CString],
    stdout: Option<&OwnedFd>,
    parent_death: Signal,
) -> io::Result<Pid> {
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs: Vec<*const libc::c_char> = envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: an all-zero sigset_t is a valid (empty) value; it is filled in below.
    let mut launch = Launch {
        path: path.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        stdout: stdout.map_or(-1, AsRawFd::as_raw_fd),
        parent_death: parent_death as libc::c_int,
        parent: nix::unistd::getpid().as_raw(),
        test_orphan: crate::fault::hook("orphan-at-spawn"),
        mask: unsafe { std::mem::zeroed() },
        errno: 0,
    };
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: within the allocation; the stack grows down from its 16-byte aligned top.
    let top = unsafe { stack.as_mut_ptr().add(stack.len()) };
    let top = (top as usize & !15) as *mut libc::c_void;
    // Every signal blocked from before the clone until the child has reset its handlers: none
    // can run a wrapper handler in the child (which shares the wrapper's memory).
    // SAFETY: sigfillset and pthread_sigmask with valid pointers.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&raw mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const all, &raw mut launch.mask);
        let pid = libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut launch).cast(),
        );
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(
            libc::SIG_SETMASK,
            &raw const launch.mask,
            std::ptr::null_mut(),
        );
        if pid == -1 {
            return Err(err);
        }
        pid
    };
    drop(stack);
    // SAFETY: the child has exec'd or exited (CLONE_VFORK): it no longer writes `launch`.
    let errno = unsafe { std::ptr::read_volatile(&raw const launch.errno) };
    if errno != 0 {
        let mut status = 0;
        // SAFETY: reaping the child that failed to exec.
        unsafe { libc::waitpid(pid, &raw mut status, 0) };
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(Pid::from_raw(pid))
}

/// The child, between clone and exec: only async-signal-safe system calls, no allocation, no
/// lock (the wrapper's memory is shared, and another thread may hold the allocator's lock).
/// Every failure ends it with `_exit`, quietly.
#[cfg(any(target_os = "linux", target_os = "android"))]
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Launch`, alive until this child execs or exits.
    let launch = unsafe { &mut *arg.cast::<Launch>() };
    let fail = |launch: &mut Launch| -> ! {
        // SAFETY: errno is this thread's; _exit(2) ends the child without running anything.
        unsafe {
            launch.errno = *libc::__errno_location();
            libc::_exit(127)
        }
    };
    // The wrapper's handlers would only write to its self-pipe: back to the defaults, keeping
    // what the caller ignored ignored.
    if signal::restore_defaults().is_err() {
        fail(launch);
    }
    // SAFETY: plain system calls with integer arguments and valid pointers.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, launch.parent_death, 0, 0, 0) == -1 {
            fail(launch);
        }
        if launch.test_orphan {
            // Tests: the wrapper dies right here, as a SIGKILL at this instant would.
            libc::kill(launch.parent, libc::SIGKILL);
            while libc::getppid() == launch.parent {
                std::hint::spin_loop();
            }
        }
        // The wrapper died before the prctl took effect: the signal will never come, and
        // nobody waits for this command. End quietly.
        if libc::getppid() != launch.parent {
            libc::_exit(i32::from(exit::signalled(launch.parent_death)));
        }
        if launch.stdout >= 0 {
            let moved = if launch.stdout == 1 {
                libc::fcntl(1, libc::F_SETFD, 0)
            } else {
                libc::dup2(launch.stdout, 1)
            };
            if moved == -1 {
                fail(launch);
            }
        }
        libc::pthread_sigmask(
            libc::SIG_SETMASK,
            &raw const launch.mask,
            std::ptr::null_mut(),
        );
        libc::execve(launch.path, launch.argv, launch.envp);
    }
    fail(launch)
}

/// Elsewhere (macOS): fork and exec through std, resetting the handlers before exec.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn start(
    path: &CString,
    argv: &[CString],
    envp: &[CString],
    stdout: Option<&OwnedFd>,
    parent_death: Signal,
) -> io::Result<Pid> {
    use std::os::unix::process::CommandExt;
    let _ = parent_death;
    let os = |c: &CString| OsStr::from_bytes(c.as_bytes()).to_owned();
    let mut command = std::process::Command::new(os(path));
    command
        .arg0(os(&argv[0]))
        .args(argv[1..].iter().map(os))
        .env_clear();
    for kv in envp {
        if let Some((k, v)) = kv.as_bytes().split_once(|&b| b == b'=') {
            command.env(OsStr::from_bytes(k), OsStr::from_bytes(v));
        }
    }
    if let Some(fd) = stdout {
        command.stdout(std::process::Stdio::from(fd.try_clone()?));
    }
    // SAFETY: only sigaction(2) between fork and exec.
    unsafe {
        command.pre_exec(|| signal::restore_defaults().map_err(io::Error::from));
    }
    let child = command.spawn()?;
    Ok(Pid::from_raw(child.id() as i32))
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
    /// The last signal the wrapper sent because of `--max-hold` (or a lost lease), if it had to.
    pub stopped: Option<Signal>,
    /// The coordination lease was lost while it ran: it was stopped.
    pub lost: bool,
}

/// Wait for the child, forwarding terminating signals the wrapper receives to it, and stopping
/// it when it runs past `max_hold`.
pub fn wait(
    child: &mut Running,
    signals: &Signals,
    max_hold: Option<MaxHold>,
    inherited: &[(Pid, u64)],
) -> io::Result<Ended> {
    let pid = Pid::from_raw(child.id() as i32);
    let mut next = max_hold.and_then(|m| signal::deadline(m.after));
    let mut stopped = None;
    let mut lost = false;
    let mut tree: Vec<(Pid, u64)> = Vec::new();
    let me = nix::unistd::getpid();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Ended {
                status,
                stopped,
                lost,
            });
        }
        if signal::lease_lost() && !lost {
            // The locks are gone: stop the command as --max-hold would, at once.
            lost = true;
            next = Some(Instant::now());
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
                return Ok(Ended {
                    status,
                    stopped,
                    lost,
                });
            }
            let grace = max_hold.map_or(Duration::from_secs(10), |m| m.grace);
            let (sent, then) = match stopped {
                None => (Signal::SIGTERM, signal::deadline(grace)),
                Some(_) => (Signal::SIGKILL, None),
            };
            // The whole tree: a shell's pipeline must not write on after the lock is gone.
            // Those told to stop at SIGTERM get the SIGKILL too, even if orphaned meanwhile;
            // orphans of the command (a `setsid` daemon too) are ours, as their subreaper.
            tree.extend(descendants(pid));
            // Orphans reparented to us, not what we inherited.
            tree.extend(
                descendants(me)
                    .into_iter()
                    .filter(|m| m.0 != me && !inherited.contains(m)),
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

/// The processes below the wrapper before it starts the command (children it inherited from
/// whatever exec'd it): never the business of `--max-hold`. Take it before the spawn.
#[must_use]
pub fn inherited() -> Vec<(Pid, u64)> {
    let me = nix::unistd::getpid();
    descendants(me).into_iter().filter(|m| m.0 != me).collect()
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
