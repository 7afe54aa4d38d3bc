//! Hostile input, one test each: a damaged or replaced lock file, a session no one may write,
//! huge argument lists, children that misbehave with their stdout, secrets in argv and env.
//! Each gets a clear error or a correct run; none hangs, panics or loses a line.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::{Sandbox, hold_lock, lock_file, wait_for};

const SEED: &str = "{\"seed\":1}\n";

/// A used session whose lock file exists.
fn used() -> Sandbox {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), SEED).unwrap();
    sandbox
        .cmd(["prompt", "--append", "s.jsonl", "--", "echo", "{\"r\":0}"])
        .assert()
        .success();
    sandbox
}

fn assert_one_line(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("sessionlock: "), "{text}");
    text
}

#[test]
fn a_lock_file_truncated_during_a_window_ends_that_window_in_a_takeover_and_heals() {
    let sandbox = used();
    let gate = sandbox.path("gate.sh").display().to_string();
    let script = format!("sh {gate} A >&2; echo '{{\"r\":1}}'");
    let mut a = sandbox.spawn(
        "A",
        ["prompt", "--append", "s.jsonl", "--", "sh", "-c", &script],
    );
    sandbox.wait_entered("A");
    fs::write(lock_file(&sandbox, "s.jsonl"), "").unwrap();
    sandbox.open("A");
    assert_eq!(a.wait_code(), 76, "{}", a.stderr());
    assert!(
        a.stderr().contains("lock state was damaged"),
        "{}",
        a.stderr()
    );
    // The next turns pass: the state started afresh.
    sandbox
        .cmd(["prompt", "--append", "s.jsonl", "--", "echo", "{\"r\":2}"])
        .assert()
        .success();
    assert_eq!(
        sandbox.read("s.jsonl"),
        format!("{SEED}{{\"r\":0}}\n{{\"r\":2}}\n")
    );
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn a_lock_file_filled_with_garbage_is_started_afresh_and_status_says_so() {
    let sandbox = used();
    fs::write(lock_file(&sandbox, "s.jsonl"), vec![0xa5u8; 9000]).unwrap();
    let status = sandbox.status("s.jsonl");
    assert!(
        status["problems"].to_string().contains("damaged"),
        "{status:#}"
    );
    sandbox
        .cmd(["prompt", "--append", "s.jsonl", "--", "echo", "{\"r\":1}"])
        .assert()
        .success();
    assert_eq!(
        sandbox.read("s.jsonl"),
        format!("{SEED}{{\"r\":0}}\n{{\"r\":1}}\n")
    );
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn a_lock_file_replaced_by_a_directory_or_a_fifo_is_refused_at_once() {
    for plant in ["dir", "fifo"] {
        let sandbox = used();
        let lock = lock_file(&sandbox, "s.jsonl");
        fs::remove_file(&lock).unwrap();
        if plant == "dir" {
            fs::create_dir(&lock).unwrap();
        } else {
            nix::unistd::mkfifo(&lock, nix::sys::stat::Mode::S_IRWXU).unwrap();
        }
        let out = sandbox
            .cmd(["run", "s.jsonl", "--", "touch", "ran"])
            .timeout(std::time::Duration::from_secs(20))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(74), "{plant}");
        assert!(assert_one_line(&out).contains("lock file"), "{plant}");
        assert!(!sandbox.path("ran").exists());
    }
}

#[test]
fn a_session_in_a_directory_the_user_cannot_write_is_a_clear_error() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to run as a second uid");
        return;
    }
    let sandbox = Sandbox::new();
    let dir = sandbox.path("ro");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("s.jsonl"), SEED).unwrap();
    fs::set_permissions(sandbox.root(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dir.join("s.jsonl"), fs::Permissions::from_mode(0o644)).unwrap();
    // As nobody: root would ignore the modes.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(crate::support::bin())
        .args(["run", "ro/s.jsonl", "--", "true"])
        .current_dir(sandbox.root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    assert!(assert_one_line(&out).contains("permission denied"));
    assert!(!dir.join(".s.jsonl.sessionlock").exists());
    assert_eq!(sandbox.read("ro/s.jsonl"), SEED);
}

#[test]
fn a_huge_argument_list_reaches_the_command_whole() {
    let sandbox = Sandbox::new();
    let many: Vec<String> = (0..20_000).map(|i| format!("arg-{i}")).collect();
    let mut args = vec!["run", "s.jsonl", "--", "sh", "-c", "echo $# > count", "sh"];
    args.extend(many.iter().map(String::as_str));
    sandbox.cmd(&args).assert().success();
    assert_eq!(sandbox.read("count").trim(), "20000");
}

#[test]
fn secrets_in_argv_and_the_environment_never_reach_the_sidecar() {
    let sandbox = Sandbox::new();
    let gate = sandbox.path("gate.sh").display().to_string();
    let script = format!("sh {gate} A >&2; echo '{{\"r\":1}}' # sk-ARGV-SECRET");
    let mut a = sandbox.spawn_command("A", {
        let mut c = Command::new(crate::support::bin());
        c.current_dir(sandbox.root())
            .env("API_KEY", "sk-ENV-SECRET")
            .args(["prompt", "--append", "s.jsonl", "--", "sh", "-c", &script]);
        c
    });
    sandbox.wait_entered("A");
    let status = sandbox.status("s.jsonl");
    assert_eq!(status["queue"][0]["command"], "sh", "{status:#}");
    sandbox.open("A");
    assert_eq!(a.wait_code(), 0);
    let mut stack = vec![sandbox.path(".s.jsonl.sessionlock")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = fs::read(&path).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains("SECRET"),
                    "{} holds a secret",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn a_child_that_closes_stdout_early_still_commits_what_it_wrote() {
    let sandbox = Sandbox::new();
    let script = "echo '{\"r\":1}'; exec >&-; sleep 0.1; true";
    for extra in [&[][..], &["--tee"][..]] {
        fs::write(sandbox.path("s.jsonl"), "").unwrap();
        let mut args = vec!["prompt", "--append"];
        args.extend_from_slice(extra);
        args.extend(["s.jsonl", "--", "sh", "-c", script]);
        sandbox.cmd(&args).assert().success();
        assert_eq!(sandbox.read("s.jsonl"), "{\"r\":1}\n", "{extra:?}");
    }
}

#[test]
fn a_child_that_leaves_a_daemon_behind_does_not_hang_the_wrapper() {
    let sandbox = Sandbox::new();
    // The daemon keeps stdout and stderr open and outlives the command by far.
    let script = "echo '{\"r\":1}'; (setsid sh -c 'while [ -d \"$0\" ]; do sleep 0.1; done' \"$PWD\" &); true";
    for mode in ["prompt", "run"] {
        fs::write(sandbox.path("s.jsonl"), "").unwrap();
        let mut w = sandbox.spawn(
            mode,
            [
                mode, "--append", "--tee", "s.jsonl", "--", "sh", "-c", script,
            ],
        );
        assert_eq!(w.wait_code(), 0, "{mode}: {}", w.stderr());
        assert_eq!(sandbox.read("s.jsonl"), "{\"r\":1}\n", "{mode}");
        sandbox.assert_no_trace("s.jsonl");
    }
}

#[test]
fn a_foreign_read_lock_in_the_turn_range_is_stepped_past_or_waited_on_with_a_deadline() {
    let sandbox = used();
    let lock = lock_file(&sandbox, "s.jsonl");
    // One turn byte: the next turn simply takes another.
    let one = hold_lock(&lock, false, true, 1 << 32, 1);
    sandbox
        .cmd([
            "prompt",
            "-t",
            "1",
            "--turn-timeout",
            "1",
            "s.jsonl",
            "--",
            "true",
        ])
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .success();
    drop(one);
    // The whole range: no ticket can be had; the turn timeout ends the wait, a signal too.
    let _all = hold_lock(&lock, false, true, 1 << 32, 0);
    let out = sandbox
        .cmd([
            "prompt",
            "--turn-timeout",
            "0.3",
            "s.jsonl",
            "--",
            "touch",
            "ran",
        ])
        .timeout(std::time::Duration::from_secs(20))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert_one_line(&out);
    let mut w = sandbox.spawn("W", ["prompt", "-v", "s.jsonl", "--", "touch", "ran"]);
    w.wait_stderr("waiting for the turn range");
    assert!(w.stderr().contains("unknown holder"), "{}", w.stderr());
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.wait_code(), 128 + 15, "{}", w.stderr());
    assert!(!sandbox.path("ran").exists());
}

#[test]
fn an_append_never_follows_a_symlink_planted_over_the_session() {
    let sandbox = used();
    fs::write(sandbox.path("victim"), "VICTIM\n").unwrap();
    // The swap happens while the wrapper holds the lock, as a co-tenant could do it.
    let script = "ln -s victim e && mv -f e s.jsonl; echo '{\"inj\":1}'";
    let out = sandbox
        .cmd(["run", "--append", "s.jsonl", "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(76), "{out:?}");
    assert!(assert_one_line(&out).contains("symlink"));
    assert_eq!(sandbox.read("victim"), "VICTIM\n");
}

#[test]
fn tee_to_a_reader_that_stops_reading_does_not_keep_the_lock() {
    let sandbox = Sandbox::new();
    let (reader, writer) = nix::unistd::pipe().unwrap();
    let big = "for i in $(seq 400); do echo '{\"line\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}'; done";
    let mut w = Command::new(crate::support::bin())
        .current_dir(sandbox.root())
        .args([
            "prompt", "--append", "--tee", "s.jsonl", "--", "sh", "-c", big,
        ])
        .stdout(std::process::Stdio::from(std::fs::File::from(writer)))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Nobody reads `reader`: stdout is stuck, but the reply is committed and the lock is free.
    wait_for("the reply to be committed", || {
        sandbox.read("s.jsonl").lines().count() == 400
    });
    wait_for("the lock and the turn to be free", || {
        let s = sandbox.status("s.jsonl");
        s["lock"]["held"] == false && s["queue"] == serde_json::json!([])
    });
    assert!(
        w.try_wait().unwrap().is_none(),
        "the wrapper did not wait for stdout"
    );
    // A signal ends the wait for stdout, as it would end any program's.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = w.wait().unwrap();
    assert!(!status.success());
    drop(reader);
}

#[test]
fn a_small_file_size_limit_is_a_clean_error_never_a_silent_death() {
    let sandbox = Sandbox::new();
    let script = format!(
        "ulimit -f 64; for i in 1 2 3 4 5 6; do {} run s.jsonl -- true; echo $?; done",
        crate::support::bin().display()
    );
    let out = Command::new("sh")
        .current_dir(sandbox.root())
        .args(["-c", &script])
        .output()
        .unwrap();
    let codes = String::from_utf8_lossy(&out.stdout);
    assert!(codes.lines().all(|c| c == "0" || c == "74"), "{codes}");
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        assert!(line.starts_with("sessionlock: "), "{line}");
    }
}

#[test]
fn a_lock_file_removed_under_a_run_fails_that_run_instead_of_committing() {
    let sandbox = used();
    let script = "rm .s.jsonl.sessionlock/lock; echo '{\"A\":1}'";
    let out = sandbox
        .cmd(["run", "--append", "s.jsonl", "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(74), "{out:?}");
    assert!(assert_one_line(&out).contains("removed or replaced"));
    assert_eq!(sandbox.read("s.jsonl"), format!("{SEED}{{\"r\":0}}\n"));
}

#[test]
fn a_header_wiped_mid_run_does_not_hide_the_commit_intent() {
    let sandbox = used();
    fs::write(
        sandbox.path("reply"),
        format!("{{\"big\":\"{}\"}}\n", "z".repeat(100_000)),
    )
    .unwrap();
    let mut w = sandbox.spawn_command("W", {
        let mut c = Command::new(crate::support::bin());
        c.current_dir(sandbox.root())
            .env("SESSIONLOCK_TEST_HOOK", "die-mid-append")
            .args(["run", "--append", "s.jsonl", "--", "sh", "-c"])
            .arg("truncate -s 0 .s.jsonl.sessionlock/lock; cat reply");
        c
    });
    assert_eq!(w.wait_code(), 128 + 9);
    sandbox
        .cmd(["prompt", "--append", "s.jsonl", "--", "echo", "{\"r\":2}"])
        .assert()
        .success();
    assert_eq!(
        sandbox.read("s.jsonl"),
        format!("{SEED}{{\"r\":0}}\n{{\"r\":2}}\n")
    );
}

#[test]
fn a_second_user_committing_leaves_the_sidecar_usable_by_the_session_owner() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to act as two users");
        return;
    }
    let sandbox = Sandbox::new();
    fs::set_permissions(sandbox.root(), fs::Permissions::from_mode(0o777)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(crate::support::bin())
            .args(args)
            .current_dir(sandbox.root())
            .output()
            .unwrap()
    };
    let out = as_nobody(&["run", "n.jsonl", "--", "sh", "-c", "echo '{}' > n.jsonl"]);
    assert!(out.status.success(), "{out:?}");
    // Root (a system cron job) commits to nobody's session...
    sandbox
        .cmd([
            "prompt",
            "--append",
            "n.jsonl",
            "--",
            "echo",
            "{\"root\":1}",
        ])
        .assert()
        .success();
    // ...and nobody can go on using it.
    let out = as_nobody(&[
        "prompt",
        "--append",
        "n.jsonl",
        "--",
        "echo",
        "{\"nobody\":1}",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        sandbox.read("n.jsonl"),
        "{}\n{\"root\":1}\n{\"nobody\":1}\n"
    );
}

#[test]
fn a_newline_in_the_session_name_keeps_the_error_on_one_line() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .cmd(["run", "x\ny.jsonl", "--", "no-such-command-x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(assert_one_line(&out).contains("x\\ny.jsonl"));
}

#[test]
fn a_hard_linked_lock_file_is_refused() {
    let sandbox = used();
    fs::hard_link(lock_file(&sandbox, "s.jsonl"), sandbox.path("other")).unwrap();
    let out = sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(74));
    assert!(assert_one_line(&out).contains("hard links"));
}
