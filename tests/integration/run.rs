//! `run`: mutual exclusion through every spelling, busy and timeout codes, the child's status,
//! signals, descriptors, and bad input that touches nothing.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::ExitStatusExt;

use nix::sys::signal::Signal;
use predicates::prelude::*;

use crate::support::{Sandbox, assert_no_overlap, process_gone, wait_for};

/// The stderr of a finished command, checked to be one `sessionlock:` line.
fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    assert_eq!(
        text.lines().count(),
        1,
        "expected one stderr line, got {text:?}"
    );
    assert!(text.starts_with("sessionlock: "), "{text:?}");
    text
}

#[test]
fn run_serializes_every_spelling_of_one_file() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.path("d")).unwrap();
    fs::write(sandbox.path("d/s.jsonl"), "").unwrap();
    symlink(sandbox.path("d"), sandbox.path("dirlink")).unwrap();
    symlink("d/s.jsonl", sandbox.path("filelink")).unwrap();
    let absolute = sandbox.path("d/s.jsonl").display().to_string();
    let spellings = [
        ("A", absolute.as_str()),
        ("B", "d/s.jsonl"),
        ("C", "dirlink/s.jsonl"),
        ("D", "filelink"),
        ("E", "d/../d/./s.jsonl"),
    ];
    let mut first = sandbox.spawn("A", sandbox.gated("run", spellings[0].1, "A", &[]));
    sandbox.wait_entered("A");
    let mut waiters: Vec<_> = spellings[1..]
        .iter()
        .map(|(name, path)| {
            (
                *name,
                sandbox.spawn(name, sandbox.gated("run", path, name, &[])),
            )
        })
        .collect();
    for (name, proc) in &waiters {
        proc.wait_stderr("waiting for the write lock");
        assert!(
            !sandbox.entered(name),
            "{name} entered while A held the lock"
        );
    }
    sandbox.open("A");
    assert_eq!(first.wait_code(), 0);
    // Each hand-off admits exactly one waiter; the others stay out until it leaves.
    let mut left: Vec<&str> = spellings[1..].iter().map(|(n, _)| *n).collect();
    while !left.is_empty() {
        let mut inside = None;
        wait_for("the next waiter to enter", || {
            inside = left.iter().position(|n| sandbox.entered(n));
            inside.is_some()
        });
        let name = left.remove(inside.unwrap());
        for other in &left {
            assert!(
                !sandbox.entered(other),
                "{other} entered while {name} held the lock"
            );
        }
        sandbox.open(name);
    }
    for (name, proc) in &mut waiters {
        assert_eq!(proc.wait_code(), 0, "{name}: {}", proc.stderr());
        assert_eq!(proc.stdout(), "", "{name} wrote to stdout");
    }
    let log = sandbox.log();
    assert_eq!(log.len(), 10, "{log:?}");
    assert_no_overlap(&log);
}

#[test]
fn different_files_do_not_block_each_other() {
    let sandbox = Sandbox::new();
    let _a = sandbox.spawn("A", sandbox.gated("run", "a.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    sandbox
        .cmd(["run", "--nonblock", "b.jsonl", "--", "touch", "b-ran"])
        .assert()
        .success()
        .stdout("")
        .stderr("");
    assert!(sandbox.path("b-ran").exists());
    assert!(!sandbox.path("go.A").exists() && sandbox.entered("A"));
}

#[test]
fn nonblock_on_a_held_lock_exits_75_naming_file_and_holder() {
    let sandbox = Sandbox::new();
    let holder = sandbox.spawn("A", sandbox.gated("run", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let out = sandbox
        .cmd(["run", "--nonblock", "s.jsonl", "--", "touch", "ran"])
        .assert()
        .code(75)
        .stdout("")
        .get_output()
        .clone();
    let line = one_line(&out.stderr);
    assert!(line.contains("busy"), "{line}");
    assert!(
        line.contains(&format!("held by pid {} (run)", holder.pid())),
        "{line}"
    );
    assert!(
        line.contains(&sandbox.path("s.jsonl").display().to_string()),
        "{line}"
    );
    assert!(
        !sandbox.path("ran").exists(),
        "the command ran without the lock"
    );
}

#[test]
fn timeout_on_a_held_lock_exits_75_and_conflict_exit_code_overrides_it() {
    let sandbox = Sandbox::new();
    let _holder = sandbox.spawn("A", sandbox.gated("run", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let out = sandbox
        .cmd(["run", "--timeout", "200ms", "s.jsonl", "--", "touch", "ran"])
        .assert()
        .code(75)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("timed out after 200ms"));
    sandbox
        .cmd([
            "run",
            "-n",
            "--conflict-exit-code",
            "9",
            "s.jsonl",
            "--",
            "touch",
            "ran",
        ])
        .assert()
        .code(9);
    sandbox
        .cmd(["run", "s.jsonl", "--", "touch", "ran"])
        .env("SESSIONLOCK_TIMEOUT", "100ms")
        .assert()
        .code(75)
        .stderr(predicate::str::contains("timed out after 100ms"));
    assert!(
        !sandbox.path("ran").exists(),
        "a command ran without the lock"
    );
}

#[test]
fn a_wait_longer_than_a_second_says_so_once_naming_the_holder() {
    let sandbox = Sandbox::new();
    let holder = sandbox.spawn("A", sandbox.gated("run", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let mut waiter = sandbox.spawn("B", ["run", "s.jsonl", "--", "true"]);
    let expected = format!(
        "sessionlock: waiting for the write lock on {}, held by pid {} (run) for",
        sandbox.path("s.jsonl").display(),
        holder.pid()
    );
    waiter.wait_stderr(&expected);
    sandbox.open("A");
    assert_eq!(waiter.wait_code(), 0);
    assert_eq!(waiter.stderr().lines().count(), 1, "{}", waiter.stderr());
    assert_eq!(waiter.stdout(), "");
}

#[test]
fn the_childs_exit_status_passes_through() {
    let sandbox = Sandbox::new();
    for (script, code) in [
        ("exit 0", 0),
        ("exit 7", 7),
        ("kill -9 $$", 137),
        ("kill -TERM $$", 143),
    ] {
        sandbox
            .cmd(["run", "s.jsonl", "--", "sh", "-c", script])
            .assert()
            .code(code)
            .stderr("");
    }
}

#[test]
fn a_missing_command_is_127_and_a_non_executable_one_is_126() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .cmd(["run", "s.jsonl", "--", "no-such-command-here"])
        .assert()
        .code(127)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("command not found: no-such-command-here"));
    fs::write(sandbox.path("plain.txt"), "not a program").unwrap();
    let out = sandbox
        .cmd(["run", "s.jsonl", "--", "./plain.txt"])
        .assert()
        .code(126)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("cannot execute"));
    // The lock was released after the failed spawn.
    sandbox
        .cmd(["run", "-n", "s.jsonl", "--", "true"])
        .assert()
        .success();
}

#[test]
fn the_child_gets_the_key_and_mode_in_its_environment() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.path("d")).unwrap();
    symlink("d", sandbox.path("alias")).unwrap();
    sandbox
        .cmd([
            "run",
            "alias/s.jsonl",
            "--",
            "sh",
            "-c",
            "printf '%s %s' \"$SESSIONLOCK_SESSION\" \"$SESSIONLOCK_MODE\"",
        ])
        .assert()
        .success()
        .stdout(format!("{} run", sandbox.path("d/s.jsonl").display()));
}

#[test]
fn the_child_never_inherits_a_lock_descriptor() {
    for mode in [&["run"][..], &["prompt", "--append", "--tee"][..]] {
        child_descriptors_are_only_the_inherited_ones(mode);
    }
}

/// A wrapper in `mode` that waited first (the helper-thread path) starts a command that lists
/// its descriptors; the list must match what the test harness itself passes down.
fn child_descriptors_are_only_the_inherited_ones(mode: &[&str]) {
    let sandbox = Sandbox::new();
    let _holder = sandbox.spawn("A", sandbox.gated("run", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let mut args: Vec<&str> = mode.to_vec();
    args.extend([
        "-v",
        "s.jsonl",
        "--",
        "sh",
        "-c",
        "for f in /proc/self/fd/*; do readlink \"$f\"; done > fds; exit 0",
    ]);
    let mut waiter = sandbox.spawn("B", args);
    waiter.wait_stderr("waiting for the write lock");
    sandbox.open("A");
    assert_eq!(waiter.wait_code(), 0, "{mode:?}: {}", waiter.stderr());
    // The same listing without the wrapper: whatever the test harness itself passes down.
    let mut baseline = std::process::Command::new("sh");
    baseline.current_dir(sandbox.root()).args([
        "-c",
        "for f in /proc/self/fd/*; do readlink \"$f\"; done > fds.base; exit 0",
    ]);
    let mut base = sandbox.spawn_command("base", baseline);
    assert_eq!(base.wait_code(), 0);
    let inherited: Vec<String> = sandbox
        .read("fds.base")
        .lines()
        .map(str::to_owned)
        .collect();
    let fds = sandbox.read("fds");
    assert!(fds.contains("/fds"), "the listing did not run: {fds}");
    let extra: Vec<&str> = fds
        .lines()
        .filter(|l| {
            !inherited.iter().any(|i| i == l)
                && !l.ends_with("/err.B")
                && !l.ends_with("/err.base")
                && !l.ends_with("/fds")
        })
        .collect();
    assert!(
        extra.is_empty(),
        "descriptors leaked into the child: {extra:?}"
    );
}

#[test]
fn sigkill_of_the_holder_hands_the_lock_on_and_takes_its_command_down() {
    let sandbox = Sandbox::new();
    // A's command records its pid, then waits at its gate (exec keeps the pid).
    let gate = sandbox.path("gate.sh").display().to_string();
    let script = format!("echo $$ > pid.A; exec sh {gate} A");
    let holder = sandbox.spawn("A", ["run", "s.jsonl", "--", "sh", "-c", &script]);
    sandbox.wait_entered("A");
    let child: i32 = sandbox.read("pid.A").trim().parse().unwrap();
    let mut waiter = sandbox.spawn("B", sandbox.gated("run", "s.jsonl", "B", &[]));
    waiter.wait_stderr("waiting for the write lock");
    assert!(!sandbox.entered("B"));
    holder.signal(Signal::SIGKILL);
    sandbox.wait_entered("B");
    // A's command worked under the lock: it must not run on after its wrapper (Linux).
    wait_for("A's command to die with its wrapper", || {
        process_gone(child)
    });
    assert!(!sandbox.log().contains(&"exit A".to_owned()));
    sandbox.open("B");
    assert_eq!(waiter.wait_code(), 0);
}

#[test]
fn quiet_says_nothing_for_a_busy_lock_but_still_reports_other_failures() {
    let sandbox = Sandbox::new();
    let _holder = sandbox.spawn("A", sandbox.gated("run", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    // A cron job that skips a busy turn stays silent: the status says it.
    for args in [
        &["run", "-q", "-t", "1500ms", "s.jsonl", "--", "true"][..],
        &["run", "-q", "-n", "s.jsonl", "--", "true"][..],
        &["prompt", "-q", "-w", "0.2", "s.jsonl", "--", "true"][..],
    ] {
        sandbox.cmd(args).assert().code(75).stderr("").stdout("");
    }
    // Without -q the same wait says so (and a bare number is seconds, as in flock -w).
    let out = sandbox
        .cmd(["run", "-w", "0.5", "s.jsonl", "--", "true"])
        .assert()
        .code(75)
        .get_output()
        .clone();
    let line = one_line(&out.stderr);
    assert!(line.contains("timed out after 500ms"), "{line}");
    // Other failures are still reported under -q.
    let out = sandbox
        .cmd(["run", "-q", "t.jsonl", "--", "no-such-command-x"])
        .assert()
        .code(127)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("command not found"));
}

#[test]
fn signals_sent_to_the_wrapper_reach_the_child() {
    let sandbox = Sandbox::new();
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        let name = signal.as_str();
        let script = format!(
            "trap 'echo {name} > got.{name}; exit 3' {}; : > in.{name}; \
             while :; do sleep 0.01; done",
            &name[3..]
        );
        let mut wrapper = sandbox.spawn(name, ["run", "s.jsonl", "--", "sh", "-c", &script]);
        sandbox.wait_entered(name);
        wrapper.signal(signal);
        assert_eq!(wrapper.wait_code(), 3, "{name}: {}", wrapper.stderr());
        assert_eq!(sandbox.read(format!("got.{name}")).trim(), name);
    }
    // A child that does not catch it dies of it, and the wrapper reports 128 + N.
    let mut wrapper = sandbox.spawn(
        "plain",
        [
            "run",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            ": > in.plain; while :; do sleep 0.01; done",
        ],
    );
    sandbox.wait_entered("plain");
    wrapper.signal(Signal::SIGTERM);
    assert_eq!(wrapper.wait_code(), 143);
}

#[test]
fn a_signal_while_waiting_for_the_lock_exits_128_plus_n_without_running_the_command() {
    let sandbox = Sandbox::new();
    let _holder = sandbox.spawn("A", sandbox.gated("run", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let mut waiter = sandbox.spawn("B", sandbox.gated("run", "s.jsonl", "B", &[]));
    waiter.wait_stderr("waiting for the write lock");
    waiter.signal(Signal::SIGTERM);
    assert_eq!(waiter.wait_code(), 143);
    assert!(
        waiter
            .stderr()
            .contains("interrupted by SIGTERM while waiting for the write lock")
    );
    assert!(!sandbox.entered("B"));
}

#[test]
fn a_missing_session_directory_is_66_and_creates_nothing() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .cmd(["run", "nodir/s.jsonl", "--", "touch", "ran"])
        .assert()
        .code(66)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("nodir/s.jsonl"));
    assert!(!sandbox.path("nodir").exists() && !sandbox.path("ran").exists());
}

#[test]
fn a_directory_as_session_is_66() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.path("d")).unwrap();
    let out = sandbox
        .cmd(["run", "d", "--", "touch", "ran"])
        .assert()
        .code(66)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("is a directory"));
    assert!(!sandbox.path(".d.sessionlock").exists() && !sandbox.path("ran").exists());
}

#[test]
fn an_empty_command_or_a_bad_duration_is_a_usage_error_that_touches_nothing() {
    let sandbox = Sandbox::new();
    for args in [
        &["run", "s.jsonl", "--"][..],
        &["run", "s.jsonl"][..],
        &["run", "s.jsonl", "--", ""][..],
        &["run", "--timeout", "5 parsecs", "s.jsonl", "--", "true"][..],
        &["run", "--timeout", "-1", "s.jsonl", "--", "true"][..],
    ] {
        let out = sandbox
            .cmd(args)
            .assert()
            .code(2)
            .stdout("")
            .get_output()
            .clone();
        one_line(&out.stderr);
    }
    let out = sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .env("SESSIONLOCK_TIMEOUT", "soon")
        .assert()
        .code(2)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("soon"));
    assert!(!sandbox.path(".s.jsonl.sessionlock").exists());
}

#[test]
fn a_sidecar_path_held_by_a_file_or_symlink_is_refused_with_73() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path(".a.jsonl.sessionlock"), "mine").unwrap();
    let out = sandbox
        .cmd(["run", "a.jsonl", "--", "touch", "ran"])
        .assert()
        .code(73)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains(".a.jsonl.sessionlock"));
    assert_eq!(sandbox.read(".a.jsonl.sessionlock"), "mine");

    fs::create_dir(sandbox.path("elsewhere")).unwrap();
    symlink("elsewhere", sandbox.path(".b.jsonl.sessionlock")).unwrap();
    let out = sandbox
        .cmd(["run", "b.jsonl", "--", "touch", "ran"])
        .assert()
        .code(73)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("symlink"));
    assert_eq!(fs::read_dir(sandbox.path("elsewhere")).unwrap().count(), 0);
    assert!(!sandbox.path("ran").exists());
}

#[test]
fn a_planted_symlink_inside_the_sidecar_is_not_followed() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.path(".s.jsonl.sessionlock")).unwrap();
    symlink("../victim", sandbox.path(".s.jsonl.sessionlock/lock")).unwrap();
    sandbox
        .cmd(["run", "s.jsonl", "--", "touch", "ran"])
        .assert()
        .code(74)
        .stderr(predicate::str::contains("cannot open the lock file"));
    assert!(!sandbox.path("victim").exists() && !sandbox.path("ran").exists());
}

#[test]
fn a_non_utf8_session_path_works() {
    let sandbox = Sandbox::new();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.jsonl");
    let mut cmd = sandbox.cmd(["run"]);
    cmd.arg(name)
        .args(["--", "sh", "-c", "printf x >> \"$SESSIONLOCK_SESSION\""]);
    cmd.assert().success();
    assert_eq!(fs::read(sandbox.path(name)).unwrap(), b"x");
    let sidecar = std::ffi::OsStr::from_bytes(b".caf\xe9.jsonl.sessionlock");
    assert!(sandbox.path(sidecar).is_dir());
}

#[test]
fn no_permission_on_the_session_directory_is_77() {
    let sandbox = Sandbox::new();
    let ro = sandbox.path("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(sandbox.root(), fs::Permissions::from_mode(0o755)).unwrap();
    // Root ignores directory permissions: run the binary as `nobody` then.
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = assert_cmd::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(crate::support::bin());
        c
    } else {
        assert_cmd::Command::new(crate::support::bin())
    };
    cmd.current_dir(sandbox.root())
        .args(["run", "ro/s.jsonl", "--", "true"]);
    let out = cmd.assert().code(77).get_output().clone();
    let line = one_line(&out.stderr);
    assert!(line.contains("permission denied"), "{line}");
    assert_eq!(fs::read_dir(&ro).unwrap().count(), 0);
}

#[test]
fn the_wrapper_dies_of_sigint_when_its_command_does_so_a_shell_loop_stops() {
    let sandbox = Sandbox::new();
    let mut wrapper = sandbox.spawn(
        "W",
        [
            "run",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            ": > in.W; while :; do sleep 0.01; done",
        ],
    );
    sandbox.wait_entered("W");
    wrapper.signal(Signal::SIGINT);
    let status = wrapper.wait_status();
    assert_eq!(status.signal(), Some(Signal::SIGINT as i32), "{status:?}");
    // The lock is free again.
    sandbox
        .cmd(["run", "-n", "s.jsonl", "--", "true"])
        .assert()
        .success();
}

#[test]
fn a_signal_the_caller_ignored_stays_ignored_like_under_nohup() {
    let sandbox = Sandbox::new();
    let script = format!(
        "trap '' HUP; exec {} run s.jsonl -- sh -c 'kill -HUP $$; echo survived'",
        crate::support::bin().display()
    );
    std::process::Command::new("sh")
        .current_dir(sandbox.root())
        .args(["-c", &script])
        .output()
        .map(|out| {
            assert!(out.status.success(), "{out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "survived\n");
        })
        .unwrap();
}

#[test]
fn a_fifo_planted_in_the_sidecar_is_refused_instead_of_hanging() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.path(".s.jsonl.sessionlock")).unwrap();
    nix::unistd::mkfifo(
        &sandbox.path(".s.jsonl.sessionlock/lock"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let out = sandbox
        .cmd(["run", "-t", "1s", "s.jsonl", "--", "touch", "ran"])
        .assert()
        .code(74)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("not a regular file"));
    assert!(!sandbox.path("ran").exists());
}

#[test]
fn a_closed_stderr_does_not_crash_the_wrapper() {
    let sandbox = Sandbox::new();
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let status = std::process::Command::new(crate::support::bin())
        .current_dir(sandbox.root())
        .args(["run", "-v", "s.jsonl", "--", "touch", "ran"])
        .stderr(std::process::Stdio::from(write))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(sandbox.path("ran").exists());
}

#[test]
fn a_trailing_slash_or_a_symlink_loop_in_the_path_is_66() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("exists.jsonl"), "").unwrap();
    symlink("loop", sandbox.path("loop")).unwrap();
    for path in ["new.jsonl/", "exists.jsonl/", "loop/s.jsonl"] {
        let out = sandbox
            .cmd(["run", path, "--", "touch", "ran"])
            .assert()
            .code(66)
            .get_output()
            .clone();
        one_line(&out.stderr);
    }
    assert!(!sandbox.path(".new.jsonl.sessionlock").exists() && !sandbox.path("ran").exists());
}

#[test]
fn a_usage_error_names_what_is_missing_on_one_line() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .cmd(["run", "-q"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let line = one_line(&out.stderr);
    assert!(line.contains("<SESSION>"), "{line}");
}

#[test]
fn max_hold_stops_the_commands_whole_process_tree() {
    let sandbox = Sandbox::new();
    // 2s: the helpers must be running before the deadline, even on a loaded machine.
    let mut wrapper = sandbox.spawn(
        "W",
        [
            "run",
            "--max-hold",
            "2s",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            "sleep 100 & echo $! > bg.pid; sh -c 'echo $$ > nested.pid; sleep 100'",
        ],
    );
    wait_for("both helpers to start", || {
        !sandbox.read("bg.pid").is_empty() && !sandbox.read("nested.pid").is_empty()
    });
    assert_eq!(wrapper.wait_code(), 143, "{}", wrapper.stderr());
    for file in ["bg.pid", "nested.pid"] {
        let pid: i32 = sandbox.read(file).trim().parse().unwrap();
        wait_for(&format!("{file} to be stopped"), || process_gone(pid));
    }
}
