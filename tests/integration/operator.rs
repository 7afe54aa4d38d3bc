//! What makes the tool pleasant where it lives: the event log, `run --turn`, nested calls, the
//! flock(1)-style options, and every option in the environment.

use std::fs;

use crate::support::{Sandbox, assert_no_overlap, bin, entry_order};

/// The events in a log file, as (event, object).
fn events(sandbox: &Sandbox, file: &str) -> Vec<(String, serde_json::Value)> {
    sandbox
        .read(file)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object a line");
            (v["event"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

#[test]
fn a_prompt_turn_logs_every_step_in_order_with_its_fields() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), "{\"seed\":1}\n").unwrap();
    sandbox
        .cmd([
            "prompt",
            "--events-file",
            "ev",
            "--append",
            "s.jsonl",
            "--",
            "echo",
            "{\"r\":1}",
        ])
        .assert()
        .success()
        .stdout("");
    let log = events(&sandbox, "ev");
    let names: Vec<&str> = log.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "lock-acquired",
            "queue-joined",
            "turn-granted",
            "released",
            "window-opened",
            "child-exited",
            "lock-acquired",
            "fence-ok",
            "committed",
            "released",
            "left",
            "exited"
        ]
    );
    let key = sandbox.path("s.jsonl").display().to_string();
    let mut last = 0.0;
    for (name, v) in &log {
        assert_eq!(v["key"], key.as_str(), "{name}");
        assert_eq!(v["mode"], "prompt", "{name}");
        let ms = v["ms"].as_f64().unwrap();
        assert!(ms >= last, "{name}: time went back");
        last = ms;
    }
    assert_eq!(log[0].1["phase"], "enter");
    assert_eq!(log[1].1["ahead"], 0);
    assert!(log[1].1["ticket"].as_str().unwrap().contains('.'));
    assert_eq!(log[6].1["phase"], "after-window");
    assert_eq!(log[5].1["status"], 0);
    assert_eq!(
        (log[8].1["lines"].clone(), log[8].1["bytes"].clone()),
        (1.into(), 8.into())
    );
    assert_eq!(log[11].1["code"], 0);
}

#[test]
fn a_takeover_is_an_event_that_says_what_changed_and_the_fd_form_works_too() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), "{\"seed\":1}\n").unwrap();
    // The events go to descriptor 7, which the shell opened on a file.
    let script = format!(
        "exec 7>>ev; exec {} prompt --events-fd 7 --append s.jsonl -- sh -c \"echo '{{}}' >> s.jsonl; echo '{{}}'\"",
        bin().display()
    );
    let status = std::process::Command::new("sh")
        .current_dir(sandbox.root())
        .args(["-c", &script])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(76));
    let log = events(&sandbox, "ev");
    let takeover = log
        .iter()
        .find(|(n, _)| n == "takeover")
        .expect("a takeover event");
    assert!(
        takeover.1["change"].as_str().unwrap().contains("size"),
        "{takeover:?}"
    );
    let (last, v) = log.last().unwrap();
    assert_eq!(last, "failed");
    assert_eq!(v["code"], 76);
    assert!(!log.iter().any(|(n, _)| n == "committed"));
}

#[test]
fn run_turn_waits_its_turn_and_holds_the_lock_through_its_command() {
    let sandbox = Sandbox::new();
    let mut a = sandbox.spawn("A", sandbox.gated("prompt", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let mut r = sandbox.spawn("R", sandbox.gated("run", "s.jsonl", "R", &["--turn"]));
    sandbox.wait_queue_len("s.jsonl", 2);
    let mut b = sandbox.spawn("B", sandbox.gated("prompt", "s.jsonl", "B", &[]));
    let queue = sandbox.wait_queue_len("s.jsonl", 3);
    assert_eq!(queue[1].2, r.pid() as u64, "{queue:?}");
    // A plain run is not held up by the turns: the write lock is free during A's window.
    sandbox
        .cmd(["run", "-n", "s.jsonl", "--", "true"])
        .assert()
        .success();
    sandbox.open("A");
    sandbox.wait_entered("R");
    // R holds the write lock through its command: even a plain run must wait now.
    sandbox
        .cmd(["run", "-n", "-q", "s.jsonl", "--", "true"])
        .assert()
        .code(75);
    assert!(!sandbox.entered("B"));
    sandbox.open("R");
    sandbox.open("B");
    assert_eq!((a.wait_code(), r.wait_code(), b.wait_code()), (0, 0, 0));
    assert_eq!(entry_order(&sandbox.log()), ["A", "R", "B"]);
    assert_no_overlap(&sandbox.log());
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn a_nested_call_that_would_wait_for_its_own_wrapper_fails_at_once() {
    let sandbox = Sandbox::new();
    let inner = |mode: &str| format!("{} {mode} s.jsonl -- true", bin().display());
    // Inside `run` (the write lock is held) and inside a prompt's turn: refused, exit 2.
    for (outer, nested) in [("run", "run"), ("run", "prompt"), ("prompt", "prompt")] {
        let out = sandbox
            .cmd([outer, "s.jsonl", "--", "sh", "-c", &inner(nested)])
            .timeout(std::time::Duration::from_secs(20))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{outer} > {nested}: {stderr}");
        assert!(stderr.contains("would wait for itself"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    // Inside a prompt's window the lock is free: a nested run (an owned write) goes ahead.
    sandbox
        .cmd(["prompt", "s.jsonl", "--", "sh", "-c", &inner("run")])
        .assert()
        .success();
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn every_option_has_an_environment_variable_listed_in_help_and_the_man_page() {
    let sandbox = Sandbox::new();
    let help = |sub: &str| {
        let out = sandbox.cmd([sub, "--help"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help("run").replace('\n', " ");
    let man = fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man/sessionlock.1"),
    )
    .unwrap();
    for sub in ["run", "prompt", "idle-wait", "status"] {
        let text = help(sub);
        for line in text.lines().filter(|l| l.trim_start().starts_with('-')) {
            let flag = line
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches(',');
            if flag == "-h" || flag == "-V" {
                continue;
            }
            let block = text.split(line).nth(1).unwrap_or_default();
            let next_flag = block.find("\n  -").unwrap_or(block.len());
            assert!(
                line.contains("[env: ") || block[..next_flag].contains("[env: "),
                "{sub} {flag} has no environment variable"
            );
        }
        for var in text
            .split("[env: ")
            .skip(1)
            .map(|t| t.split(['=', ']']).next().unwrap())
        {
            assert!(
                man.contains(var),
                "{var} is not in the man page's ENVIRONMENT"
            );
            assert!(top.contains(var) || sub != "run", "{var} is not in --help");
        }
    }
}

#[test]
fn kill_after_is_the_name_timeout1_users_know_for_grace() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .cmd([
            "run",
            "--max-hold",
            "0.2",
            "--kill-after",
            "0.2",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            "trap '' TERM; sleep 5",
        ])
        .timeout(std::time::Duration::from_secs(20))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(128 + 9), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("SIGKILL"));
}

#[test]
fn max_hold_stops_orphaned_grandchildren_and_setsid_daemons_too() {
    let sandbox = Sandbox::new();
    // Both escape the command's tree before the deadline: an orphan and a `setsid` daemon.
    let script = "(exec sh -c 'echo $$ > orphan.pid; exec sleep 100' &); \
                  (setsid sh -c 'echo $$ > daemon.pid; exec sleep 100' &); sleep 100";
    let mut w = sandbox.spawn(
        "W",
        [
            "run",
            "--max-hold",
            "2",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    crate::support::wait_for("both to start", || {
        !sandbox.read("orphan.pid").is_empty() && !sandbox.read("daemon.pid").is_empty()
    });
    assert_eq!(w.wait_code(), 143, "{}", w.stderr());
    for file in ["orphan.pid", "daemon.pid"] {
        let pid: i32 = sandbox.read(file).trim().parse().unwrap();
        crate::support::wait_for(&format!("{file} to be stopped"), || {
            crate::support::process_gone(pid)
        });
    }
}

#[test]
fn a_command_that_leaves_a_daemon_behind_under_max_hold_ends_when_it_does() {
    let sandbox = Sandbox::new();
    let script = "(setsid sh -c 'while [ -d \"$0\" ]; do sleep 0.1; done' \"$PWD\" &); true";
    // (Spawned with its output in files: the daemon keeps them open.)
    let mut w = sandbox.spawn(
        "W",
        [
            "run",
            "--max-hold",
            "60s",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    assert_eq!(w.wait_code(), 0, "{}", w.stderr());
}

#[test]
fn on_a_terminal_a_wait_shows_one_live_line_rewritten_and_erased() {
    use std::io::Read;
    let sandbox = Sandbox::new();
    let holder = sandbox.spawn("A", sandbox.gated("run", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    // A wide terminal: the live line is cut to one row of it.
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 250,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let mut w = std::process::Command::new(bin())
        .current_dir(sandbox.root())
        .args(["run", "s.jsonl", "--", "true"])
        .stderr(std::process::Stdio::from(std::fs::File::from(pty.slave)))
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let reader = {
        let seen = seen.clone();
        let mut master = std::fs::File::from(pty.master);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    // Rewritten in place: the same line twice, each after a carriage return and an erase.
    crate::support::wait_for("the live line to be rewritten", || {
        text()
            .matches("\r\x1b[2Ksessionlock: waiting for the write lock")
            .count()
            >= 2
    });
    assert!(
        !text().contains('\n'),
        "the live line scrolled: {:?}",
        text()
    );
    assert!(text().contains(&format!("held by pid {} (run)", holder.pid())));
    drop(holder);
    assert!(w.wait().unwrap().success());
    crate::support::wait_for("the line to be erased", || text().ends_with("\r\x1b[2K"));
    drop(reader);
}

#[test]
fn status_of_a_directory_lists_every_session_with_its_holder_and_queue() {
    let sandbox = Sandbox::new();
    for s in ["a.jsonl", "b.jsonl"] {
        sandbox.cmd(["run", s, "--", "true"]).assert().success();
    }
    let held = sandbox.spawn("A", sandbox.gated("prompt", "a.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let out = sandbox.cmd(["status", "--json", "."]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{v:#}");
    assert!(
        sessions[0]["session"]
            .as_str()
            .unwrap()
            .ends_with("a.jsonl")
    );
    assert_eq!(sessions[0]["queue"], 1);
    assert!(sessions[0]["oldest_age_ms"].is_u64());
    assert_eq!(sessions[1]["queue"], 0);
    assert!(sessions[1]["holder"].is_null());
    sandbox
        .cmd(["status", "."])
        .assert()
        .success()
        .stdout(predicates::str::contains("2 session(s)"))
        .stdout(predicates::str::contains("1 turn(s)"));
    drop(held);
}

#[test]
fn gc_removes_unused_sidecars_of_gone_sessions_and_never_one_in_use() {
    let sandbox = Sandbox::new();
    // gone: its file was removed; kept: gone too, with a kept output; used: file gone, but a
    // prompt is in its window right now; alive: its file exists.
    for s in ["gone.jsonl", "kept.jsonl", "alive.jsonl"] {
        sandbox
            .cmd(["run", s, "--", "sh", "-c", &format!("echo '{{}}' > {s}")])
            .assert()
            .success();
    }
    sandbox
        .cmd([
            "prompt",
            "--append",
            "kept.jsonl",
            "--",
            "sh",
            "-c",
            "echo '{}'; exit 3",
        ])
        .assert()
        .code(3);
    let used = sandbox.spawn("U", sandbox.gated("prompt", "used.jsonl", "U", &[]));
    sandbox.wait_entered("U");
    fs::remove_file(sandbox.path("gone.jsonl")).unwrap();
    fs::remove_file(sandbox.path("kept.jsonl")).unwrap();
    let out = sandbox.cmd(["gc", "."]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(!sandbox.path(".gone.jsonl.sessionlock").exists(), "{text}");
    assert!(
        sandbox.path(".alive.jsonl.sessionlock/lock").exists(),
        "{text}"
    );
    assert!(
        sandbox.path(".used.jsonl.sessionlock/lock").exists(),
        "{text}"
    );
    assert!(
        text.contains(".used.jsonl.sessionlock: left: in use"),
        "{text}"
    );
    assert!(text.contains("kept output"), "{text}");
    assert_eq!(
        fs::read_dir(sandbox.path(".kept.jsonl.sessionlock/kept"))
            .unwrap()
            .count(),
        1
    );
    // The prompt in use goes on and leaves no trace; --kept removes the kept outputs too.
    sandbox.open("U");
    let mut used = used;
    assert_eq!(used.wait_code(), 0);
    sandbox.cmd(["gc", "--kept", "."]).assert().success();
    for s in ["kept", "used"] {
        assert!(
            !sandbox.path(format!(".{s}.jsonl.sessionlock")).exists(),
            "{s}"
        );
    }
    // A wrapper on a collected session simply makes a new sidecar.
    sandbox
        .cmd(["run", "gone.jsonl", "--", "true"])
        .assert()
        .success();
    sandbox.assert_no_trace("gone.jsonl");
}

#[test]
fn a_session_on_a_network_file_system_gets_one_warning_and_quiet_silences_it() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .env("SESSIONLOCK_TEST_FSTYPE", "0x6969")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is on NFS"), "{stderr}");
    sandbox
        .cmd(["run", "-q", "s.jsonl", "--", "true"])
        .env("SESSIONLOCK_TEST_FSTYPE", "0x6969")
        .assert()
        .success()
        .stderr("");
    // A local file system says nothing.
    sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .assert()
        .success()
        .stderr("");
}
