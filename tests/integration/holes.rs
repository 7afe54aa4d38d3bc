//! The holes a hostile tester found in the v1 sidecar, one test each, and the v2 layout's own
//! guarantees: liveness only from kernel locks, deadlines whoever holds what, strangers'
//! sidecars refused, torn commits rolled back, counters at their limits.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use nix::sys::signal::Signal;
use predicates::prelude::*;

use crate::support::{
    Sandbox, assert_no_overlap, entry_order, field, forge_state, hold_lock, lock_file, wait_for,
};

const SEED: &str = "{\"seed\":1}\n";

/// The one `sessionlock:` line a failed wrapper printed.
fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {text}");
    assert!(lines[0].starts_with("sessionlock: "), "{text}");
    lines[0].to_owned()
}

/// Names in the sidecar of `session` (a path relative to the sandbox) besides `lock`, `kept`
/// and an empty `out`.
fn sidecar_leftovers(sandbox: &Sandbox, session: &str) -> Vec<String> {
    let session = std::path::Path::new(session);
    let name = session.file_name().unwrap().to_string_lossy();
    let dir = sandbox
        .path(session)
        .with_file_name(format!(".{name}.sessionlock"));
    let mut left = Vec::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        match name.as_str() {
            "lock" | "kept" => {}
            "out" => {
                for e in fs::read_dir(dir.join("out")).unwrap() {
                    left.push(format!("out/{}", e.unwrap().file_name().to_string_lossy()));
                }
            }
            _ => left.push(name),
        }
    }
    left
}

/// A `prompt --append` of a reply of `size` bytes of `fill` that writes half of it and dies,
/// as a SIGKILL in the middle of the write would leave it. Returns the reply.
fn die_mid_append(sandbox: &Sandbox, fill: char, size: usize) -> String {
    let reply = format!("{{\"big\":\"{}\"}}", fill.to_string().repeat(size));
    fs::write(sandbox.path("reply"), format!("{reply}\n")).unwrap();
    let mut killed = sandbox.spawn_command("K", {
        let mut c = Command::new(crate::support::bin());
        c.current_dir(sandbox.root())
            .env("SESSIONLOCK_TEST_HOOK", "die-mid-append")
            .args(["prompt", "--append", "s.jsonl", "--", "cat", "reply"]);
        c
    });
    assert_eq!(killed.wait_code(), 128 + 9);
    reply
}

#[test]
fn hole_1_a_live_turn_is_alive_whatever_its_slot_says() {
    let sandbox = Sandbox::new();
    let mut a = sandbox.spawn("A", sandbox.gated("prompt", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    // The slot table is display data only: garbage in it cannot make A's turn look dead.
    let lock = lock_file(&sandbox, "s.jsonl");
    let mut bytes = fs::read(&lock).unwrap();
    for b in &mut bytes[4096..] {
        *b = 0x5a;
    }
    fs::write(&lock, &bytes).unwrap();
    let mut b = sandbox.spawn("B", sandbox.gated("prompt", "s.jsonl", "B", &[]));
    sandbox.wait_queue_len("s.jsonl", 2);
    assert!(!sandbox.entered("B"), "B ran during A's window");
    sandbox.open("A");
    sandbox.open("B");
    assert_eq!((a.wait_code(), b.wait_code()), (0, 0));
    assert_no_overlap(&sandbox.log());
    assert_eq!(entry_order(&sandbox.log()), ["A", "B"]);
}

#[test]
fn hole_1_a_turn_that_cannot_be_probed_stops_the_run_instead_of_overlapping() {
    let sandbox = Sandbox::new();
    let mut a = sandbox.spawn("A", sandbox.gated("prompt", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    // B's second probe is its look at the turn ahead: it fails as EIO would.
    let out = sandbox
        .cmd(["prompt", "s.jsonl", "--", "touch", "ran"])
        .env("SESSIONLOCK_FAULT", "probe:2")
        .assert()
        .code(74)
        .get_output()
        .clone();
    let line = one_line(&out.stderr);
    assert!(line.contains("cannot look at the turns ahead"), "{line}");
    assert!(!sandbox.path("ran").exists(), "B overlapped A's window");
    assert_eq!(sandbox.queue("s.jsonl").len(), 1, "B left a turn behind");
    sandbox.open("A");
    assert_eq!(a.wait_code(), 0);
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn hole_2_a_commit_killed_mid_write_is_rolled_back_by_the_next_holder_even_a_run() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), SEED).unwrap();
    // A 200 KiB reply; the wrapper writes half of it and dies as a SIGKILL would leave it.
    let reply = die_mid_append(&sandbox, 'x', 200 * 1024);
    let torn = fs::read(sandbox.path("s.jsonl")).unwrap();
    assert!(
        torn.len() > SEED.len() && !torn.ends_with(b"\n"),
        "no torn tail to test"
    );
    assert_eq!(
        sandbox.status("s.jsonl")["fence"]["unfinished_commit"]["old_len"],
        SEED.len()
    );
    // A `run` appending a user message, as the README recommends: it must not glue its line
    // onto the fragment.
    let out = sandbox
        .cmd([
            "run",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            "echo '{\"user\":1}' >> \"$SESSIONLOCK_SESSION\"",
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rolled back an unfinished commit"),
        "{stderr}"
    );
    assert_eq!(sandbox.read("s.jsonl"), format!("{SEED}{{\"user\":1}}\n"));
    // The reply is not lost: it is kept.
    let status = sandbox.status("s.jsonl");
    let kept = status["kept"].as_array().unwrap();
    assert_eq!(kept.len(), 1, "{status:#}");
    assert_eq!(kept[0]["reason"], "rolled-back");
    assert_eq!(
        fs::read_to_string(kept[0]["path"].as_str().unwrap()).unwrap(),
        format!("{reply}\n")
    );
    assert!(status["fence"]["unfinished_commit"].is_null());
    // And the next windows pass: the rollback was an owned write.
    sandbox
        .cmd(["prompt", "--append", "s.jsonl", "--", "echo", "{\"r\":2}"])
        .assert()
        .success();
    sandbox.assert_no_trace("s.jsonl");
    assert!(sidecar_leftovers(&sandbox, "s.jsonl").is_empty());
}

#[test]
fn hole_2_a_torn_tail_that_is_not_our_write_is_never_truncated() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), SEED).unwrap();
    die_mid_append(&sandbox, 'y', 100 * 1024);
    // Someone else's bytes land after the fragment: it is no longer a prefix of our write.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(sandbox.path("s.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"OUTSIDE").unwrap();
    let before = fs::read(sandbox.path("s.jsonl")).unwrap();
    let out = sandbox
        .cmd(["prompt", "--append", "s.jsonl", "--", "echo", "{\"r\":1}"])
        .assert()
        .code(65)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not rolled back"), "{stderr}");
    assert!(stderr.contains("--repair"), "{stderr}");
    assert_eq!(fs::read(sandbox.path("s.jsonl")).unwrap(), before);
}

#[test]
fn hole_3_a_foreign_flock_on_the_lock_file_blocks_nobody() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .assert()
        .success();
    let lock = fs::File::open(lock_file(&sandbox, "s.jsonl")).unwrap();
    fs4::FileExt::lock_shared(&lock).unwrap();
    sandbox
        .cmd(["prompt", "-n", "s.jsonl", "--", "true"])
        .assert()
        .success();
    sandbox
        .cmd(["run", "-n", "s.jsonl", "--", "true"])
        .assert()
        .success();
}

#[test]
fn hole_3_a_reader_holding_a_shared_lock_never_hangs_a_wrapper() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .assert()
        .success();
    // A whole-file read lock, as a careless reader would take it.
    let _held = hold_lock(&lock_file(&sandbox, "s.jsonl"), false, true, 0, 0);
    for mode in ["run", "prompt", "idle-wait"] {
        let out = sandbox
            .cmd([mode, "-n", "s.jsonl", "--", "touch", "ran"])
            .assert()
            .code(75)
            .get_output()
            .clone();
        let line = one_line(&out.stderr);
        assert!(
            line.contains("busy") && line.contains("unknown holder"),
            "{line}"
        );
        sandbox
            .cmd([
                mode, "-t", "200ms", "-E", "9", "s.jsonl", "--", "touch", "ran",
            ])
            .assert()
            .code(9)
            .stderr(predicate::str::contains("timed out after 200ms"));
    }
    // With no timeout at all, a signal still ends the wait.
    let mut w = sandbox.spawn(
        "W",
        ["run", "-v", "-t", "1h", "s.jsonl", "--", "touch", "ran"],
    );
    w.wait_stderr("waiting for the write lock");
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait_code(), 128 + 15);
    assert!(
        w.stderr().contains("interrupted by SIGTERM"),
        "{}",
        w.stderr()
    );
    assert!(!sandbox.path("ran").exists());
}

#[test]
fn hole_4_a_sidecar_planted_by_another_user_is_refused() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to give files to another uid");
        return;
    }
    let sandbox = Sandbox::new();
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    // The sidecar itself, and then only the lock file in ours.
    let dir = sandbox.path(".s.jsonl.sessionlock");
    fs::create_dir(&dir).unwrap();
    nix::unistd::chown(&dir, nobody, None).unwrap();
    let out = sandbox
        .cmd(["run", "s.jsonl", "--", "touch", "ran"])
        .assert()
        .code(73)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("owned by uid 65534"));
    nix::unistd::chown(&dir, Some(nix::unistd::Uid::effective()), None).unwrap();
    fs::write(dir.join("lock"), "").unwrap();
    nix::unistd::chown(&dir.join("lock"), nobody, None).unwrap();
    let out = sandbox
        .cmd(["prompt", "--append", "s.jsonl", "--", "echo", "{}"])
        .assert()
        .code(73)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("lock file is owned by uid 65534"));
    assert!(!sandbox.path("ran").exists() && !sandbox.path("s.jsonl").exists());
    // A file of the session's own owner is trusted: a group-shared session.
    fs::write(sandbox.path("t.jsonl"), "").unwrap();
    nix::unistd::chown(&sandbox.path("t.jsonl"), nobody, None).unwrap();
    let dir = sandbox.path(".t.jsonl.sessionlock");
    fs::create_dir(&dir).unwrap();
    nix::unistd::chown(&dir, nobody, None).unwrap();
    sandbox
        .cmd(["run", "t.jsonl", "--", "true"])
        .assert()
        .success();
}

#[test]
fn hole_5_a_fifo_or_a_device_as_session_is_refused_before_any_sidecar_exists() {
    let sandbox = Sandbox::new();
    nix::unistd::mkfifo(&sandbox.path("f.jsonl"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let out = sandbox
        .cmd(["prompt", "--append", "f.jsonl", "--", "echo", "{}"])
        .assert()
        .code(66)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("a FIFO"));
    assert!(!sandbox.path(".f.jsonl.sessionlock").exists());
    let out = sandbox
        .cmd(["run", "/dev/null", "--", "true"])
        .assert()
        .code(66)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("character device"));
    assert!(!std::path::Path::new("/dev/.null.sessionlock").exists());
}

#[test]
fn hole_6_a_foreign_lock_is_named_in_the_wait_and_in_status() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .assert()
        .success();
    // A classic POSIX lock names its pid; an OFD lock has none to name.
    let held = hold_lock(&lock_file(&sandbox, "s.jsonl"), true, false, 0, 1);
    let out = sandbox
        .cmd(["run", "-n", "s.jsonl", "--", "true"])
        .assert()
        .code(75)
        .get_output()
        .clone();
    let me = std::process::id();
    assert!(
        one_line(&out.stderr).contains(&format!("pid {me} (not a sessionlock wrapper")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = sandbox.status("s.jsonl");
    assert_eq!(status["lock"]["holder"]["pid"], me, "{status:#}");
    assert_eq!(status["lock"]["holder"]["sessionlock"], false);
    drop(held);
    let _held = hold_lock(&lock_file(&sandbox, "s.jsonl"), true, true, 0, 0);
    let status = sandbox.status("s.jsonl");
    assert!(status["lock"]["holder"]["pid"].is_null(), "{status:#}");
    assert!(
        status["problems"].to_string().contains("unknown holder"),
        "{status:#}"
    );
}

#[test]
fn hole_7_an_outside_change_is_seen_with_the_generation_at_the_end_of_its_range() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), SEED).unwrap();
    sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .assert()
        .success();
    forge_state(&sandbox, "s.jsonl", |w| {
        w[field::GENERATION] = u64::MAX;
        w[field::OUTSIDE_GENERATION] = u64::MAX - 7;
    });
    let script = "echo '{\"outside\":1}' >> s.jsonl; echo '{\"r\":1}'";
    sandbox
        .cmd(["prompt", "--append", "s.jsonl", "--", "sh", "-c", script])
        .assert()
        .code(76);
    assert_eq!(
        sandbox.read("s.jsonl"),
        format!("{SEED}{{\"outside\":1}}\n")
    );
    // Owned writes across the wrap still pass.
    sandbox
        .cmd(["prompt", "--append", "s.jsonl", "--", "echo", "{\"r\":2}"])
        .assert()
        .success();
}

#[test]
fn hole_8_the_ticket_counter_at_its_cap_waits_for_the_queue_to_drain_then_restarts() {
    let sandbox = Sandbox::new();
    let mut a = sandbox.spawn("A", sandbox.gated("prompt", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    forge_state(&sandbox, "s.jsonl", |w| {
        w[field::NEXT_TICKET] = (1 << 62) - 1;
    });
    let mut b = sandbox.spawn("B", sandbox.gated("prompt", "s.jsonl", "B", &[]));
    let queue = sandbox.wait_queue_len("s.jsonl", 2);
    assert_eq!(queue[1].0, (1 << 62) - 1, "{queue:?}");
    // The counter is at its cap: -n gives up, a patient one waits for the drain.
    let out = sandbox
        .cmd(["prompt", "-n", "s.jsonl", "--", "true"])
        .assert()
        .code(75)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("cap"));
    let mut c = sandbox.spawn("C", sandbox.gated("prompt", "s.jsonl", "C", &[]));
    sandbox.open("A");
    sandbox.open("B");
    sandbox.open("C");
    assert_eq!((a.wait_code(), b.wait_code(), c.wait_code()), (0, 0, 0));
    assert_eq!(entry_order(&sandbox.log()), ["A", "B", "C"]);
    assert_no_overlap(&sandbox.log());
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn hole_9_a_wrapper_killed_while_starting_its_command_prints_no_stray_line() {
    let sandbox = Sandbox::new();
    let mut w = sandbox.spawn_command("W", {
        let mut c = Command::new(crate::support::bin());
        c.current_dir(sandbox.root())
            .env("SESSIONLOCK_TEST_HOOK", "orphan-at-spawn")
            .args(["run", "s.jsonl", "--", "touch", "ran"]);
        c
    });
    assert_eq!(w.wait_code(), 128 + 9);
    // The orphaned child shares the wrapper's stderr (and process group): wait until it is
    // gone too.
    let group = w.pid();
    wait_for("the orphaned child to end", || {
        !crate::support::group_alive(group)
    });
    for line in w.stderr().lines() {
        assert!(line.starts_with("sessionlock: "), "a stray line: {line}");
    }
    assert!(
        !sandbox.path("ran").exists(),
        "the command ran without a wrapper"
    );
}

#[test]
fn hole_10_an_io_error_on_the_lock_state_after_the_window_is_74_not_a_takeover() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), SEED).unwrap();
    // State reads of a prompt: entering (1), joining (2), the fence (3); after the window the
    // reacquire (4) and the check (5).
    for n in [4, 5] {
        let out = sandbox
            .cmd(["prompt", "--append", "s.jsonl", "--", "echo", "{\"r\":1}"])
            .env("SESSIONLOCK_FAULT", format!("state-read:{n}"))
            .assert()
            .code(74)
            .get_output()
            .clone();
        let line = one_line(&out.stderr);
        assert!(line.contains("cannot read the lock state"), "{line}");
        assert!(line.contains("output kept in"), "{line}");
        assert_eq!(sandbox.read("s.jsonl"), SEED);
        sandbox.assert_no_trace("s.jsonl");
    }
}

#[test]
fn hole_11_messages_name_the_real_cause_and_the_lock_waited_for() {
    let sandbox = Sandbox::new();
    let a = sandbox.spawn("A", sandbox.gated("prompt", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let out = sandbox
        .cmd(["prompt", "--turn-timeout", "200ms", "s.jsonl", "--", "true"])
        .assert()
        .code(75)
        .get_output()
        .clone();
    let line = one_line(&out.stderr);
    assert!(line.contains("waiting for a prompt turn"), "{line}");
    drop(a);
    // An incomplete last line nobody of ours wrote: the hint names the option and where it goes.
    fs::write(sandbox.path("t.jsonl"), "{\"a\":1}\n{\"cut").unwrap();
    let out = sandbox
        .cmd(["prompt", "--append", "t.jsonl", "--", "echo", "{}"])
        .assert()
        .code(65)
        .get_output()
        .clone();
    let line = one_line(&out.stderr);
    assert!(
        line.contains("--repair") && line.contains(".t.jsonl.sessionlock/kept"),
        "{line}"
    );
}

#[test]
fn hole_12_a_chaos_round_leaves_only_the_lock_file_and_kept_outputs() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.path("d")).unwrap();
    std::os::unix::fs::symlink("d", sandbox.path("link")).unwrap();
    fs::write(sandbox.path("d/s.jsonl"), SEED).unwrap();
    let spellings = ["d/s.jsonl", "link/s.jsonl", "./d/../d/s.jsonl"];
    // The child logs its window, then replies; a third of the wrappers are killed mid-flight.
    let script = "echo \"enter $SESSIONLOCK_TICKET\" >> log; echo \"{\\\"t\\\":\\\"$SESSIONLOCK_TICKET\\\"}\"; \
                  echo \"exit $SESSIONLOCK_TICKET\" >> log";
    let mut procs = Vec::new();
    for i in 0..60 {
        let spelling = spellings[i % spellings.len()];
        let p = sandbox.spawn(
            &format!("W{i}"),
            [
                "prompt", "-q", "--append", spelling, "--", "sh", "-c", script,
            ],
        );
        procs.push(p);
    }
    let mut seed: u32 = 12345;
    let mut killed = 0;
    for p in procs.iter_mut().step_by(3) {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        if seed.is_multiple_of(2) {
            p.signal(Signal::SIGKILL);
            killed += 1;
        }
    }
    assert!(killed > 0);
    let mut ok = Vec::new();
    for p in &mut procs {
        if p.wait_code_or_signal() == Some(0) {
            ok.push(p.pid());
        }
    }
    // Windows never overlapped. A killed wrapper's window has no exit line: it ended when the
    // wrapper died, before the next turn could begin.
    let log: Vec<String> = sandbox.read("log").lines().map(str::to_owned).collect();
    let exits: std::collections::HashSet<&str> =
        log.iter().filter_map(|l| l.strip_prefix("exit ")).collect();
    let mut open: Option<&str> = None;
    for line in &log {
        let (what, who) = line.split_once(' ').unwrap();
        if what == "enter" {
            if let Some(other) = open {
                assert!(!exits.contains(other), "{other} overlapped {who}: {log:?}");
            }
            open = Some(who);
        } else {
            assert_eq!(open, Some(who), "{log:?}");
            open = None;
        }
    }
    // Every committed reply is a complete line, once, in turn order.
    let session = sandbox.read("d/s.jsonl");
    assert!(session.ends_with('\n'), "torn last line");
    let mut tickets = Vec::new();
    for line in session.lines().skip(1) {
        let v: serde_json::Value = serde_json::from_str(line).expect("a torn line");
        tickets.push(v["t"].as_str().unwrap().to_owned());
    }
    let order: Vec<(u64, u64)> = tickets
        .iter()
        .map(|t| {
            let (e, n) = t.split_once('.').unwrap();
            (e.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{tickets:?}");
    assert!(
        tickets.len() >= ok.len(),
        "a reply of a successful turn is missing"
    );
    sandbox.assert_no_trace("d/s.jsonl");
    assert_eq!(
        sidecar_leftovers(&sandbox, "d/s.jsonl"),
        Vec::<String>::new()
    );
}

#[test]
fn modes_follow_the_session_file_whatever_the_umask() {
    let sandbox = Sandbox::new();
    for (name, mode, dir_mode, file_mode) in [
        ("private.jsonl", 0o644, 0o700, 0o600),
        ("group.jsonl", 0o664, 0o770, 0o660),
    ] {
        fs::write(sandbox.path(name), SEED).unwrap();
        fs::set_permissions(sandbox.path(name), fs::Permissions::from_mode(mode)).unwrap();
        let script = format!(
            "umask 000; exec {} prompt --append {name} -- sh -c 'echo not-json'",
            crate::support::bin().display()
        );
        let status = Command::new("sh")
            .current_dir(sandbox.root())
            .args(["-c", &script])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(65));
        let sidecar = sandbox.path(format!(".{name}.sessionlock"));
        let perm = |p: &std::path::Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(perm(&sidecar), dir_mode, "{name}");
        assert_eq!(perm(&sidecar.join("lock")), file_mode, "{name}");
        assert_eq!(perm(&sidecar.join("kept")), dir_mode, "{name}");
        let kept = fs::read_dir(sidecar.join("kept"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(perm(&kept.path()), file_mode, "{name}");
    }
}

#[test]
fn a_v1_sidecar_is_upgraded_in_place_or_refused_while_an_old_wrapper_holds_it() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path(".s.jsonl.sessionlock");
    fs::create_dir_all(dir.join("tickets")).unwrap();
    fs::create_dir_all(dir.join("kept")).unwrap();
    for name in ["lock", "queue.lock", "holder", "state", "tickets/7"] {
        fs::write(dir.join(name), "").unwrap();
    }
    fs::write(dir.join("queue"), r#"{"next":8,"turns":[7]}"#).unwrap();
    fs::write(dir.join("kept/3-takeover.jsonl"), "{}\n").unwrap();
    assert_eq!(sandbox.status("s.jsonl")["layout"], "v1");
    // A v1 turn is alive (its ticket is flocked): refused, nothing touched.
    let ticket = fs::File::open(dir.join("tickets/7")).unwrap();
    fs4::FileExt::lock(&ticket).unwrap();
    let out = sandbox
        .cmd(["prompt", "s.jsonl", "--", "touch", "ran"])
        .assert()
        .code(75)
        .get_output()
        .clone();
    assert!(one_line(&out.stderr).contains("older sessionlock (v1)"));
    assert!(dir.join("queue").exists() && !sandbox.path("ran").exists());
    // It ended: the next wrapper upgrades in place, keeping the kept outputs.
    drop(ticket);
    sandbox
        .cmd(["prompt", "s.jsonl", "--", "touch", "ran"])
        .assert()
        .success();
    for gone in ["queue", "queue.lock", "holder", "state", "tickets"] {
        assert!(!dir.join(gone).exists(), "{gone} left behind");
    }
    assert!(dir.join("kept/3-takeover.jsonl").exists());
    let status = sandbox.status("s.jsonl");
    assert_eq!(status["layout"], "v2");
    assert_eq!(status["kept"].as_array().unwrap().len(), 1);
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn a_reacquire_timeout_with_a_custom_conflict_code_keeps_the_output_as_a_lock_timeout() {
    let sandbox = Sandbox::new();
    let gate = sandbox.path("gate.sh").display().to_string();
    let script = format!("echo '{{\"r\":1}}'; sh {gate} P >&2");
    let mut p = sandbox.spawn(
        "P",
        [
            "prompt", "-E", "200", "-t", "300ms", "--append", "s.jsonl", "--", "sh", "-c", &script,
        ],
    );
    sandbox.wait_entered("P");
    let mut r = sandbox.spawn("R", sandbox.gated("run", "s.jsonl", "R", &[]));
    sandbox.wait_entered("R");
    sandbox.open("P");
    assert_eq!(p.wait_code(), 200, "{}", p.stderr());
    let status = sandbox.status("s.jsonl");
    assert_eq!(status["kept"][0]["reason"], "lock-timeout", "{status:#}");
    sandbox.open("R");
    assert_eq!(r.wait_code(), 0);
}
