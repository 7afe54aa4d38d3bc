//! What the second hostile pass found in the spawn, the fast parser, the event log, gc and the
//! examples: one test each.

use std::fs;
use std::process::{Command, Stdio};

use crate::support::{Sandbox, bin};

#[test]
fn the_command_gets_sigpipe_at_its_default_so_a_pipeline_ends() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .cmd([
            "run",
            "s.jsonl",
            "--",
            "grep",
            "SigIgn",
            "/proc/self/status",
        ])
        .output()
        .unwrap();
    let mask = String::from_utf8_lossy(&out.stdout);
    let bits = u64::from_str_radix(mask.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(
        bits & (1 << 12),
        0,
        "SIGPIPE is ignored in the command: {mask}"
    );
}

#[test]
fn max_hold_never_touches_a_process_the_wrapper_inherited() {
    let sandbox = Sandbox::new();
    let script = format!(
        "sleep 30 & echo $! > u.pid; exec {} run --max-hold 0.5 --grace 0.5 s.jsonl -- sleep 5",
        bin().display()
    );
    let status = Command::new("sh")
        .current_dir(sandbox.root())
        .args(["-c", &script])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(143));
    let pid: i32 = sandbox.read("u.pid").trim().parse().unwrap();
    assert!(
        !crate::support::process_gone(pid),
        "an unrelated process was killed"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn gc_never_follows_a_symlink_planted_for_out_or_kept() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.path("precious")).unwrap();
    fs::write(sandbox.path("precious/keep.me"), "").unwrap();
    sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .assert()
        .success();
    std::os::unix::fs::symlink(
        sandbox.path("precious"),
        sandbox.path(".s.jsonl.sessionlock/out"),
    )
    .unwrap();
    let out = sandbox.cmd(["gc", "--kept", "."]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("refusing to touch it"));
    assert!(sandbox.path("precious/keep.me").exists());
}

#[test]
fn a_stalled_events_reader_never_holds_the_lock() {
    let sandbox = Sandbox::new();
    let (reader, writer) = nix::unistd::pipe().unwrap();
    // Fill the pipe: nobody reads it.
    nix::fcntl::fcntl(
        &writer,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    while nix::unistd::write(&writer, &[b'x'; 4096]).is_ok() {}
    nix::fcntl::fcntl(
        &writer,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&writer);
    let status = Command::new(bin())
        .current_dir(sandbox.root())
        .args([
            "run",
            "--events-fd",
            &fd.to_string(),
            "s.jsonl",
            "--",
            "true",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    drop((reader, writer));
}

#[test]
fn events_are_never_written_to_stdout_a_negative_fd_or_the_session_itself() {
    let sandbox = Sandbox::new();
    for fd in ["1", "-1"] {
        sandbox
            .cmd(["run", "--events-fd", fd, "s.jsonl", "--", "true"])
            .assert()
            .code(2)
            .stdout("");
    }
    fs::write(sandbox.path("s.jsonl"), "").unwrap();
    sandbox
        .cmd(["run", "--events-file", "s.jsonl", "s.jsonl", "--", "true"])
        .assert()
        .code(2);
    assert_eq!(sandbox.read("s.jsonl"), "");
}

#[test]
fn boolean_variables_take_1_and_a_turn_timeout_in_the_environment_spoils_no_run() {
    let sandbox = Sandbox::new();
    let a = sandbox.spawn("A", sandbox.gated("run", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .env("SESSIONLOCK_NONBLOCK", "1")
        .env("SESSIONLOCK_QUIET", "yes")
        .assert()
        .code(75)
        .stderr("");
    drop(a);
    sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .env("SESSIONLOCK_TURN_TIMEOUT", "5s")
        .env("SESSIONLOCK_NONBLOCK", "0")
        .assert()
        .success();
}

#[test]
fn a_forged_or_stale_nesting_environment_is_not_believed() {
    let sandbox = Sandbox::new();
    let mut other = Command::new("sleep").arg("30").spawn().unwrap();
    let session = sandbox.path("s.jsonl").display().to_string();
    sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .env("SESSIONLOCK_PID", other.id().to_string())
        .env("SESSIONLOCK_MODE", "run")
        .env("SESSIONLOCK_SESSION", &session)
        .assert()
        .success();
    let _ = other.kill();
    let _ = other.wait();
}

#[test]
fn a_missing_interpreter_is_126_however_the_command_was_found() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("bi"), "#!/nonexistent/sh\n").unwrap();
    fs::set_permissions(sandbox.path("bi"), fs::Permissions::from_mode(0o755)).unwrap();
    for (cmd, path) in [
        ("./bi", None),
        ("bi", Some(sandbox.root().display().to_string())),
    ] {
        let mut c = sandbox.cmd(["run", "s.jsonl", "--", cmd]);
        if let Some(p) = path {
            c.env("PATH", format!("{p}:/usr/bin:/bin"));
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(126), "{cmd}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("interpreter"));
    }
}

#[test]
fn quiet_still_says_so_when_a_computed_reply_is_kept_for_a_busy_lock() {
    let sandbox = Sandbox::new();
    let gate = sandbox.path("gate.sh").display().to_string();
    let script = format!("echo '{{\"r\":1}}'; sh {gate} P >&2");
    let mut p = sandbox.spawn(
        "P",
        [
            "prompt", "-q", "-t", "0.3", "--append", "s.jsonl", "--", "sh", "-c", &script,
        ],
    );
    sandbox.wait_entered("P");
    let r = sandbox.spawn("R", sandbox.gated("run", "s.jsonl", "R", &[]));
    sandbox.wait_entered("R");
    sandbox.open("P");
    assert_eq!(p.wait_code(), 75);
    assert!(p.stderr().contains("output kept in"), "{}", p.stderr());
    drop(r);
}

#[test]
fn status_escapes_control_characters_in_command_names() {
    let sandbox = Sandbox::new();
    std::os::unix::fs::symlink(sandbox.path("gate.sh"), sandbox.path("evil\u{1b}[2J")).unwrap();
    let mut args = vec!["run".to_owned(), "s.jsonl".into(), "--".into(), "sh".into()];
    args.push(sandbox.path("evil\u{1b}[2J").display().to_string());
    args.push("E".into());
    let mut cmd = Command::new(bin());
    cmd.current_dir(sandbox.root()).args(&args);
    let e = sandbox.spawn_command("E", cmd);
    sandbox.wait_entered("E");
    let out = sandbox.cmd(["status", "s.jsonl"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains('\u{1b}'));
    drop(e);
}
