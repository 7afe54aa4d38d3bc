//! `prompt` and `idle-wait`: FIFO turns across processes, windows without the write lock, the
//! takeover fence, and cleanup on every way out.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;

use nix::sys::signal::Signal;

use crate::support::{Sandbox, assert_no_overlap, entry_order, wait_for};

/// Append a line to the session file from this process: an outside writer.
fn append_outside(sandbox: &Sandbox, session: &str, line: &str) {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(sandbox.path(session))
        .unwrap();
    writeln!(file, "{line}").unwrap();
}

/// Append a line under the write lock with `sessionlock run`: an owned write.
fn append_owned(sandbox: &Sandbox, session: &str, line: &str) {
    sandbox
        .cmd([
            "run",
            session,
            "--",
            "sh",
            "-c",
            &format!("echo '{line}' >> \"$SESSIONLOCK_SESSION\""),
        ])
        .assert()
        .success();
}

#[test]
fn a_second_prompt_through_another_spelling_waits_for_the_first_turn_to_end() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.path("d")).unwrap();
    symlink("d", sandbox.path("alias")).unwrap();
    let absolute = sandbox.path("d/s.jsonl").display().to_string();
    let mut a = sandbox.spawn("A", sandbox.gated("prompt", &absolute, "A", &[]));
    sandbox.wait_entered("A");
    let mut b = sandbox.spawn("B", sandbox.gated("prompt", "alias/s.jsonl", "B", &[]));
    let queue = sandbox.wait_queue_len("d/s.jsonl", 2);
    assert_eq!(queue[0].1, "active");
    assert_eq!(queue[1].1, "waiting");
    assert_eq!(queue[1].2, b.pid() as u64);
    assert!(!sandbox.entered("B"), "B's window opened during A's turn");
    // A's window holds no write lock: a `run` gets through while A's turn is on.
    append_owned(&sandbox, "d/s.jsonl", "{}");
    sandbox.open("A");
    assert_eq!(a.wait_code(), 0);
    sandbox.wait_entered("B");
    sandbox.open("B");
    assert_eq!(b.wait_code(), 0, "{}", b.stderr());
    assert_no_overlap(&sandbox.log());
    assert_eq!(entry_order(&sandbox.log()), ["A", "B"]);
    sandbox.assert_no_trace("d/s.jsonl");
}

#[test]
fn prompts_on_different_files_run_at_the_same_time() {
    let sandbox = Sandbox::new();
    let mut a = sandbox.spawn("A", sandbox.gated("prompt", "a.jsonl", "A", &[]));
    let mut b = sandbox.spawn("B", sandbox.gated("prompt", "b.jsonl", "B", &[]));
    sandbox.wait_entered("A");
    sandbox.wait_entered("B");
    sandbox.open("A");
    sandbox.open("B");
    assert_eq!((a.wait_code(), b.wait_code()), (0, 0));
}

#[test]
fn windows_open_in_join_order() {
    let sandbox = Sandbox::new();
    let mut first = sandbox.spawn("A", sandbox.gated("prompt", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let names: Vec<String> = (1..=8).map(|i| format!("P{i}")).collect();
    let mut waiters = Vec::new();
    for (i, name) in names.iter().enumerate() {
        waiters.push(sandbox.spawn(name, sandbox.gated("prompt", "s.jsonl", name, &[])));
        // Each joins only after the previous one is in the queue.
        let queue = sandbox.wait_queue_len("s.jsonl", i + 2);
        assert_eq!(queue[i + 1].2, waiters[i].pid() as u64, "{queue:?}");
    }
    let queue = sandbox.queue("s.jsonl");
    let states: Vec<&str> = queue.iter().map(|q| q.1.as_str()).collect();
    assert_eq!(states[0], "active");
    assert!(states[1..].iter().all(|s| *s == "waiting"), "{states:?}");
    assert!(
        queue.windows(2).all(|w| w[0].0 < w[1].0),
        "tickets not in order: {queue:?}"
    );
    assert!(names.iter().all(|n| !sandbox.entered(n)));
    // Every gate open at once: only the queue decides who goes next.
    for name in &names {
        sandbox.open(name);
    }
    sandbox.open("A");
    assert_eq!(first.wait_code(), 0);
    for (name, proc) in names.iter().zip(&mut waiters) {
        assert_eq!(proc.wait_code(), 0, "{name}: {}", proc.stderr());
    }
    let log = sandbox.log();
    assert_no_overlap(&log);
    let mut expected = vec!["A".to_owned()];
    expected.extend(names);
    assert_eq!(entry_order(&log), expected);
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn idle_wait_holds_no_turn_and_succeeds_after_a_prompt_ran_during_it() {
    let sandbox = Sandbox::new();
    let mut idle = sandbox.spawn("I", sandbox.gated("idle-wait", "s.jsonl", "I", &[]));
    sandbox.wait_entered("I");
    let status = sandbox.status("s.jsonl");
    assert_eq!(status["others"][0]["mode"], "idle-wait", "{status:#}");
    sandbox
        .cmd([
            "prompt",
            "-n",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            "echo prompt-ran > ran",
        ])
        .assert()
        .success();
    append_owned(&sandbox, "s.jsonl", "{}");
    assert_eq!(sandbox.read("ran").trim(), "prompt-ran");
    assert!(
        !idle.exited(),
        "the idle-wait child should still be running"
    );
    sandbox.open("I");
    assert_eq!(idle.wait_code(), 0, "{}", idle.stderr());
    sandbox.assert_no_trace("s.jsonl");
}

/// Run MODE with a gate, apply `change` during its window, open the gate, return its exit code.
fn window_with(
    mode: &str,
    extra: &[&str],
    change: impl FnOnce(&Sandbox),
) -> (Sandbox, i32, String) {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), "{\"first\":1}\n").unwrap();
    let mut proc = sandbox.spawn("W", sandbox.gated(mode, "s.jsonl", "W", extra));
    sandbox.wait_entered("W");
    change(&sandbox);
    sandbox.open("W");
    let code = proc.wait_code();
    let stderr = proc.stderr();
    (sandbox, code, stderr)
}

#[test]
fn an_outside_append_during_a_window_is_a_takeover() {
    for mode in ["prompt", "idle-wait"] {
        let (sandbox, code, stderr) = window_with(mode, &[], |s| {
            append_outside(s, "s.jsonl", "{\"outside\":1}");
        });
        assert_eq!(code, 76, "{mode}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("takeover")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains("changed from outside") && errors[0].contains("s.jsonl"));
        assert!(errors[0].contains("size 12 -> 26 bytes"), "{}", errors[0]);
        sandbox.assert_no_trace("s.jsonl");
    }
}

#[test]
fn an_owned_append_during_a_window_is_not_a_takeover() {
    for mode in ["prompt", "idle-wait"] {
        let (sandbox, code, stderr) =
            window_with(mode, &[], |s| append_owned(s, "s.jsonl", "{\"owned\":1}"));
        assert_eq!(code, 0, "{mode}: {stderr}");
        assert!(sandbox.read("s.jsonl").ends_with("{\"owned\":1}\n"));
        sandbox.assert_no_trace("s.jsonl");
    }
}

#[test]
fn an_outside_append_followed_by_an_owned_one_is_still_a_takeover() {
    for mode in ["prompt", "idle-wait"] {
        let (sandbox, code, stderr) = window_with(mode, &[], |s| {
            append_outside(s, "s.jsonl", "{\"outside\":1}");
            append_owned(s, "s.jsonl", "{\"owned\":1}");
        });
        assert_eq!(code, 76, "{mode}: {stderr}");
        sandbox.assert_no_trace("s.jsonl");
    }
}

#[test]
fn strict_treats_an_owned_append_as_a_takeover() {
    let (_sandbox, code, stderr) = window_with("prompt", &["--strict"], |s| {
        append_owned(s, "s.jsonl", "{\"owned\":1}");
    });
    assert_eq!(code, 76, "{stderr}");
    assert!(stderr.contains("takeover: the session file changed during the prompt window"));
}

#[test]
fn a_compaction_that_renames_over_the_file_is_a_takeover_unless_owned() {
    let (_s, code, stderr) = window_with("idle-wait", &[], |s| {
        fs::write(s.path("new.jsonl"), "{}\n").unwrap();
        fs::rename(s.path("new.jsonl"), s.path("s.jsonl")).unwrap();
    });
    assert_eq!(code, 76, "{stderr}");
    assert!(stderr.contains("replaced by another file"), "{stderr}");
    let (_s, code, stderr) = window_with("idle-wait", &[], |s| {
        s.cmd([
            "run",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            "echo '{}' > new.jsonl && mv new.jsonl s.jsonl",
        ])
        .assert()
        .success();
    });
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_waiter_whose_turn_timeout_expires_leaves_and_a_later_waiter_still_gets_its_turn() {
    let sandbox = Sandbox::new();
    let mut a = sandbox.spawn("A", sandbox.gated("prompt", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let mut b = sandbox.spawn(
        "B",
        sandbox.gated("prompt", "s.jsonl", "B", &["--turn-timeout", "3s"]),
    );
    sandbox.wait_queue_len("s.jsonl", 2);
    // C queues behind B, so C's wait hangs on B's ticket when B gives up.
    let mut c = sandbox.spawn("C", sandbox.gated("prompt", "s.jsonl", "C", &[]));
    sandbox.wait_queue_len("s.jsonl", 3);
    assert_eq!(b.wait_code(), 75, "{}", b.stderr());
    assert!(
        b.stderr()
            .contains("timed out after 3s waiting for a prompt turn")
    );
    let queue = sandbox.wait_queue_len("s.jsonl", 2);
    assert_eq!(queue[1].2, c.pid() as u64);
    sandbox.open("A");
    sandbox.open("C");
    assert_eq!(a.wait_code(), 0);
    assert_eq!(c.wait_code(), 0, "{}", c.stderr());
    assert!(!sandbox.entered("B"));
    assert_eq!(entry_order(&sandbox.log()), ["A", "C"]);
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn nonblock_gives_up_at_once_when_a_turn_is_ahead() {
    let sandbox = Sandbox::new();
    let _a = sandbox.spawn("A", sandbox.gated("prompt", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    sandbox
        .cmd(["prompt", "-n", "-E", "9", "s.jsonl", "--", "touch", "ran"])
        .assert()
        .code(9)
        .stderr(predicates::str::contains("the prompt turn is busy"));
    assert!(!sandbox.path("ran").exists());
    assert_eq!(sandbox.queue("s.jsonl").len(), 1);
}

#[test]
fn a_failing_or_killed_child_leaves_no_trace() {
    let sandbox = Sandbox::new();
    for (script, code) in [("exit 3", 3), ("kill -9 $$", 137)] {
        for mode in ["prompt", "idle-wait"] {
            sandbox
                .cmd([mode, "s.jsonl", "--", "sh", "-c", script])
                .assert()
                .code(code);
            sandbox.assert_no_trace("s.jsonl");
        }
    }
}

#[test]
fn a_signal_while_waiting_for_a_turn_leaves_the_queue() {
    let sandbox = Sandbox::new();
    let mut a = sandbox.spawn("A", sandbox.gated("prompt", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    for (i, signal) in [Signal::SIGTERM, Signal::SIGINT].into_iter().enumerate() {
        let name = format!("B{i}");
        let mut b = sandbox.spawn(&name, sandbox.gated("prompt", "s.jsonl", &name, &[]));
        sandbox.wait_queue_len("s.jsonl", 2);
        b.signal(signal);
        assert_eq!(b.wait_code(), 128 + signal as i32);
        assert!(
            b.stderr().contains("while waiting for a prompt turn"),
            "{}",
            b.stderr()
        );
        sandbox.wait_queue_len("s.jsonl", 1);
    }
    // The next waiter is not held up by the ones that left.
    let mut c = sandbox.spawn("C", sandbox.gated("prompt", "s.jsonl", "C", &[]));
    sandbox.wait_queue_len("s.jsonl", 2);
    sandbox.open("A");
    sandbox.open("C");
    assert_eq!((a.wait_code(), c.wait_code()), (0, 0));
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn a_signal_during_the_window_reaches_the_child_and_leaves_no_trace() {
    let sandbox = Sandbox::new();
    for (signal, mode) in [
        (Signal::SIGTERM, "prompt"),
        (Signal::SIGINT, "prompt"),
        (Signal::SIGTERM, "idle-wait"),
        (Signal::SIGINT, "idle-wait"),
    ] {
        let name = format!("{mode}-{}", signal.as_str());
        let mut w = sandbox.spawn(&name, sandbox.gated(mode, "s.jsonl", &name, &[]));
        sandbox.wait_entered(&name);
        w.signal(signal);
        assert_eq!(w.wait_code(), 128 + signal as i32, "{}", w.stderr());
        sandbox.assert_no_trace("s.jsonl");
    }
}

#[test]
fn a_reacquire_that_times_out_exits_75_and_leaves_the_queue() {
    let sandbox = Sandbox::new();
    let mut p = sandbox.spawn(
        "P",
        sandbox.gated("prompt", "s.jsonl", "P", &["--timeout", "300ms"]),
    );
    sandbox.wait_entered("P");
    // A long `run` takes the write lock during P's window.
    let mut r = sandbox.spawn("R", sandbox.gated("run", "s.jsonl", "R", &[]));
    sandbox.wait_entered("R");
    sandbox.open("P");
    assert_eq!(p.wait_code(), 75, "{}", p.stderr());
    assert!(
        p.stderr()
            .contains("waiting for the write lock after the prompt window"),
        "{}",
        p.stderr()
    );
    // P left the queue even though the write lock is still held by R.
    assert_eq!(sandbox.queue("s.jsonl"), vec![]);
    sandbox.open("R");
    assert_eq!(r.wait_code(), 0);
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn an_unreadable_fingerprint_after_the_window_fails_with_74_and_leaves_no_trace() {
    for mode in ["prompt", "idle-wait"] {
        let (sandbox, code, stderr) = window_with(mode, &[], |s| {
            fs::remove_file(s.path("s.jsonl")).unwrap();
            symlink("s.jsonl", s.path("s.jsonl")).unwrap(); // a loop: stat fails with ELOOP
        });
        assert_eq!(code, 74, "{mode}: {stderr}");
        assert!(
            stderr.contains("cannot read the session file's fingerprint"),
            "{stderr}"
        );
        fs::remove_file(sandbox.path("s.jsonl")).unwrap();
        sandbox.assert_no_trace("s.jsonl");
    }
}

#[test]
fn sigkill_of_the_active_turn_hands_the_turn_on_and_the_dead_entry_is_reaped() {
    let sandbox = Sandbox::new();
    let a = sandbox.spawn("A", sandbox.gated("prompt", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let mut b = sandbox.spawn("B", sandbox.gated("prompt", "s.jsonl", "B", &[]));
    sandbox.wait_queue_len("s.jsonl", 2);
    let mut c = sandbox.spawn("C", sandbox.gated("prompt", "s.jsonl", "C", &[]));
    sandbox.wait_queue_len("s.jsonl", 3);
    // Kill the waiting B first: C's wait hangs on B's ticket, and must move on to A's.
    b.signal(Signal::SIGKILL);
    let _ = b.wait_code_or_signal();
    // Proof that C moved on and is blocked on A now: B's entry is reaped, C still waits.
    let queue = sandbox.wait_queue_len("s.jsonl", 2);
    assert_eq!(queue[1].2, c.pid() as u64, "{queue:?}");
    assert!(!sandbox.entered("C"), "C's window opened during A's turn");
    a.signal(Signal::SIGKILL);
    sandbox.wait_entered("C");
    let status = sandbox.status("s.jsonl");
    let queue = status["queue"].as_array().unwrap();
    assert_eq!(queue.len(), 1, "dead entries not reaped: {status:#}");
    assert_eq!(queue[0]["pid"], c.pid());
    sandbox.open("C");
    assert_eq!(c.wait_code(), 0);
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn the_child_gets_its_ticket_in_prompt_mode() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd([
            "prompt",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            "printf '%s %s' \"$SESSIONLOCK_MODE\" \"$SESSIONLOCK_TICKET\"",
        ])
        .assert()
        .success()
        .stdout(predicates::str::is_match(r"^prompt [0-9]+\.[0-9]+$").unwrap());
}

#[test]
fn status_without_a_sidecar_says_so_and_exits_0() {
    let sandbox = Sandbox::new();
    let status = sandbox.status("s.jsonl");
    assert_eq!(status["sidecar_exists"], false);
    assert_eq!(status["file"]["exists"], false);
    sandbox
        .cmd(["status", "s.jsonl"])
        .assert()
        .success()
        .stdout(predicates::str::contains("none yet"));
    assert!(!sandbox.path(".s.jsonl.sessionlock").exists());
    sandbox.cmd(["status", "nodir/s.jsonl"]).assert().code(66);
}

#[test]
fn status_names_the_write_lock_holder() {
    let sandbox = Sandbox::new();
    let r = sandbox.spawn("R", sandbox.gated("run", "s.jsonl", "R", &[]));
    sandbox.wait_entered("R");
    let status = sandbox.status("s.jsonl");
    assert_eq!(status["lock"]["held"], true, "{status:#}");
    assert_eq!(status["lock"]["holder"]["pid"], r.pid());
    assert_eq!(status["lock"]["holder"]["mode"], "run");
    assert_eq!(status["lock"]["holder"]["command"], "sh");
    sandbox
        .cmd(["status", "s.jsonl"])
        .assert()
        .success()
        .stdout(predicates::str::contains(format!(
            "held by pid {} (run",
            r.pid()
        )));
    drop(r);
    wait_for("the killed holder's ticket to die", || {
        sandbox.status("s.jsonl")["lock"]["held"] == false
    });
}

#[test]
fn a_symlinked_directory_planted_in_the_sidecar_is_refused() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.path(".s.jsonl.sessionlock")).unwrap();
    fs::create_dir(sandbox.path("elsewhere")).unwrap();
    symlink("../elsewhere", sandbox.path(".s.jsonl.sessionlock/out")).unwrap();
    sandbox
        .cmd(["prompt", "--append", "s.jsonl", "--", "touch", "ran"])
        .assert()
        .code(74)
        .stderr(predicates::str::contains("not a directory"));
    assert_eq!(fs::read_dir(sandbox.path("elsewhere")).unwrap().count(), 0);
    assert!(!sandbox.path("ran").exists());
}

#[test]
fn max_hold_stops_a_command_that_runs_too_long_and_hands_the_turn_on() {
    let sandbox = Sandbox::new();
    // A's window never opens its gate: only --max-hold ends it. Its deadline runs from A's
    // start: 2s leaves B ample time to join first, even on a loaded machine.
    let mut a = sandbox.spawn(
        "A",
        sandbox.gated("prompt", "s.jsonl", "A", &["--max-hold", "2s", "--append"]),
    );
    sandbox.wait_entered("A");
    let mut b = sandbox.spawn("B", sandbox.gated("prompt", "s.jsonl", "B", &[]));
    sandbox.wait_queue_len("s.jsonl", 2);
    assert_eq!(a.wait_code(), 143, "{}", a.stderr());
    let line = a
        .stderr()
        .lines()
        .find(|l| l.contains("--max-hold"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        line.contains("ran longer than --max-hold 2s and was stopped with SIGTERM"),
        "{line}"
    );
    sandbox.wait_entered("B");
    sandbox.open("B");
    assert_eq!(b.wait_code(), 0);
    assert!(
        !sandbox.path("s.jsonl").exists(),
        "nothing may be committed"
    );
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn max_hold_kills_after_the_grace_a_command_that_ignores_sigterm() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd([
            "run",
            "--max-hold",
            "1s",
            "--grace",
            "200ms",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            "trap '' TERM; while :; do sleep 0.01; done",
        ])
        .assert()
        .code(137)
        .stderr(predicates::str::contains("stopped with SIGKILL"));
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn a_window_command_gets_sigterm_when_its_wrapper_is_killed() {
    let sandbox = Sandbox::new();
    let gate = sandbox.path("gate.sh").display().to_string();
    let script = format!("echo $$ > pid.W; exec sh {gate} W");
    let w = sandbox.spawn("W", ["prompt", "s.jsonl", "--", "sh", "-c", &script]);
    sandbox.wait_entered("W");
    let child: i32 = sandbox.read("pid.W").trim().parse().unwrap();
    w.signal(Signal::SIGKILL);
    wait_for("the window command to end with its wrapper", || {
        crate::support::process_gone(child)
    });
    assert!(!sandbox.log().contains(&"exit W".to_owned()));
}

#[test]
fn a_zero_max_hold_is_a_usage_error() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd(["run", "--max-hold", "0s", "s.jsonl", "--", "true"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("must be more than zero"));
}

#[test]
fn an_abandoned_capture_is_kept_by_the_next_wrapper_and_an_empty_one_removed() {
    let sandbox = Sandbox::new();
    let gate = sandbox.path("gate.sh").display().to_string();
    for (name, output) in [("full", "echo '{\"partial\":1}'; "), ("empty", "")] {
        let script = format!("{output}sh {gate} {name} >&2");
        let w = sandbox.spawn(
            name,
            ["prompt", "--append", "s.jsonl", "--", "sh", "-c", &script],
        );
        sandbox.wait_entered(name);
        w.signal(Signal::SIGKILL);
        drop(w);
        sandbox
            .cmd(["prompt", "s.jsonl", "--", "true"])
            .assert()
            .success();
    }
    let status = sandbox.status("s.jsonl");
    let kept = status["kept"].as_array().unwrap();
    assert_eq!(kept.len(), 1, "{status:#}");
    assert_eq!(kept[0]["reason"], "abandoned");
    let path = kept[0]["path"].as_str().unwrap();
    assert_eq!(fs::read_to_string(path).unwrap(), "{\"partial\":1}\n");
    let out = sandbox.path(".s.jsonl.sessionlock/out");
    assert_eq!(
        fs::read_dir(out).unwrap().count(),
        0,
        "captures left in out/"
    );
}
