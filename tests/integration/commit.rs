//! `--append`: the child's JSONL output committed under the lock, all or nothing; kept otherwise.

use std::fs;
use std::os::unix::fs::symlink;

use predicates::prelude::*;

use crate::support::{Sandbox, bin, entry_order};

/// The one file in the sidecar's `kept/` directory whose name contains `reason`.
fn kept(sandbox: &Sandbox, session: &str, reason: &str) -> Vec<u8> {
    let dir = sandbox.path(format!(".{session}.sessionlock/kept"));
    let matches: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(reason))
        .collect();
    assert_eq!(matches.len(), 1, "kept files for {reason}: {matches:?}");
    fs::read(matches[0].path()).unwrap()
}

fn no_kept(sandbox: &Sandbox, session: &str) {
    let status = sandbox.status(session);
    assert_eq!(status["sidecar_exists"], true, "{status:#}");
    assert_eq!(status["kept"], serde_json::json!([]), "something was kept");
}

const SEED: &str = "{\"seed\":1}\n";

#[test]
fn appended_replies_land_exactly_once_in_turn_order_through_every_spelling() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.path("d")).unwrap();
    fs::write(sandbox.path("d/s.jsonl"), SEED).unwrap();
    symlink("d", sandbox.path("alias")).unwrap();
    symlink("d/s.jsonl", sandbox.path("link")).unwrap();
    let absolute = sandbox.path("d/s.jsonl").display().to_string();
    let spellings = [
        "d/s.jsonl",
        "alias/s.jsonl",
        "link",
        absolute.as_str(),
        "d/./s.jsonl",
    ];
    // A's window stays open until its gate opens; the others queue behind it, in order.
    let gate = sandbox.path("gate.sh").display().to_string();
    let first_script = format!("sh {gate} A >&2; echo '{{\"reply\":0}}'");
    let mut first = sandbox.spawn(
        "A",
        [
            "prompt",
            "--append",
            "d/s.jsonl",
            "--",
            "sh",
            "-c",
            &first_script,
        ],
    );
    sandbox.wait_entered("A");
    let mut waiters = Vec::new();
    for i in 1..=6 {
        let script = format!("echo '{{\"reply\":{i},\"text\":\"line {i}\"}}'");
        let session = spellings[i % spellings.len()];
        let name = format!("P{i}");
        waiters.push(sandbox.spawn(
            &name,
            ["prompt", "--append", session, "--", "sh", "-c", &script],
        ));
        sandbox.wait_queue_len("d/s.jsonl", i + 1);
    }
    sandbox.open("A");
    assert_eq!(first.wait_code(), 0, "{}", first.stderr());
    for w in &mut waiters {
        assert_eq!(w.wait_code(), 0, "{}", w.stderr());
    }
    let content = sandbox.read("d/s.jsonl");
    let lines: Vec<serde_json::Value> = content
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid JSONL"))
        .collect();
    let replies: Vec<i64> = lines[1..]
        .iter()
        .map(|v| v["reply"].as_i64().unwrap())
        .collect();
    assert_eq!(replies, [0, 1, 2, 3, 4, 5, 6], "{content}");
    assert_eq!(lines[0]["seed"], 1);
    assert!(content.ends_with('\n'));
    assert_eq!(entry_order(&sandbox.log()), ["A"]);
    no_kept(&sandbox, "d/s.jsonl");
    sandbox.assert_no_trace("d/s.jsonl");
}

#[test]
fn each_mode_appends_and_a_missing_final_newline_is_added() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), SEED).unwrap();
    for (mode, n) in [("run", 1), ("prompt", 2), ("idle-wait", 3)] {
        sandbox
            .cmd([
                mode,
                "--append",
                "s.jsonl",
                "--",
                "printf",
                &format!("{{\"n\":{n}}}"),
            ])
            .assert()
            .success()
            .stdout("")
            .stderr("");
    }
    assert_eq!(
        sandbox.read("s.jsonl"),
        format!("{SEED}{{\"n\":1}}\n{{\"n\":2}}\n{{\"n\":3}}\n")
    );
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn empty_output_appends_nothing_and_is_not_an_error() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), SEED).unwrap();
    sandbox
        .cmd(["prompt", "--append", "s.jsonl", "--", "true"])
        .assert()
        .success()
        .stderr("");
    assert_eq!(sandbox.read("s.jsonl"), SEED);
    no_kept(&sandbox, "s.jsonl");
}

#[test]
fn invalid_output_appends_nothing_exits_65_and_is_kept() {
    let sandbox = Sandbox::new();
    for (i, output) in [
        "{\"ok\":1}\nnot json\n",
        "{\"ok\":1}\n{\"broken\":\n{\"ok\":2}\n",
        "{\"ok\":1}\n\n{\"ok\":2}\n",
    ]
    .into_iter()
    .enumerate()
    {
        let session = format!("s{i}.jsonl");
        fs::write(sandbox.path(&session), SEED).unwrap();
        let out = sandbox
            .cmd(["prompt", "--append", &session, "--", "printf", "%s", output])
            .assert()
            .code(65)
            .stdout("")
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("not valid JSONL (line 2"), "{stderr}");
        assert!(stderr.contains("kept/"), "{stderr}");
        assert_eq!(sandbox.read(&session), SEED, "something was appended");
        assert_eq!(kept(&sandbox, &session, "invalid"), output.as_bytes());
        sandbox.assert_no_trace(&session);
    }
}

#[test]
fn a_failing_command_appends_nothing_and_its_output_is_kept() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), SEED).unwrap();
    let out = sandbox
        .cmd([
            "prompt",
            "--append",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            "echo '{\"partial\":1}'; exit 3",
        ])
        .assert()
        .code(3)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exited with 3") && stderr.contains("kept/"),
        "{stderr}"
    );
    assert_eq!(sandbox.read("s.jsonl"), SEED);
    assert_eq!(
        kept(&sandbox, "s.jsonl", "command-failed"),
        b"{\"partial\":1}\n"
    );
}

#[test]
fn a_takeover_appends_nothing_and_the_output_is_kept() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), SEED).unwrap();
    let gate = sandbox.path("gate.sh").display().to_string();
    let script = format!("echo '{{\"reply\":1}}'; sh {gate} W >&2");
    let mut w = sandbox.spawn(
        "W",
        ["prompt", "--append", "s.jsonl", "--", "sh", "-c", &script],
    );
    sandbox.wait_entered("W");
    fs::write(
        sandbox.path("s.jsonl"),
        format!("{SEED}{{\"outside\":1}}\n"),
    )
    .unwrap();
    sandbox.open("W");
    assert_eq!(w.wait_code(), 76, "{}", w.stderr());
    assert!(
        w.stderr().contains("nothing committed; output kept in"),
        "{}",
        w.stderr()
    );
    assert_eq!(
        sandbox.read("s.jsonl"),
        format!("{SEED}{{\"outside\":1}}\n")
    );
    assert_eq!(kept(&sandbox, "s.jsonl", "takeover"), b"{\"reply\":1}\n");
    let status = sandbox.status("s.jsonl");
    assert_eq!(status["kept"][0]["reason"], "takeover", "{status:#}");
}

#[test]
fn a_short_write_is_rolled_back_and_the_output_kept() {
    let sandbox = Sandbox::new();
    // 2000 bytes of valid JSONL, then a file size limit of 2048 bytes: the append of 600
    // bytes is cut short by the kernel after 48 and fails (EFBIG).
    let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(89)); // 100 bytes
    let seed = line.repeat(20);
    assert_eq!(seed.len(), 2000);
    fs::write(sandbox.path("s.jsonl"), &seed).unwrap();
    let reply = format!("{{\"reply\":\"{}\"}}", "y".repeat(587)); // 600 bytes with newline
    fs::write(sandbox.path("reply.jsonl"), format!("{reply}\n")).unwrap();
    // The wrapper's temporary state file is blocked too (the shell execs into the wrapper, so
    // $$ is its pid): recording the rollback fails as well, and must not add a second line.
    sandbox
        .cmd(["run", "s.jsonl", "--", "true"])
        .assert()
        .success();
    let script = format!(
        "mkdir .s.jsonl.sessionlock/.state.$$.tmp; trap '' XFSZ; ulimit -f 4; \
         exec {} run --append s.jsonl -- cat reply.jsonl",
        bin().display()
    );
    let out = std::process::Command::new("sh")
        .current_dir(sandbox.root())
        .args(["-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{stderr}");
    assert!(stderr.contains("rolled back to 2000 bytes"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line per failure: {stderr}");
    assert_eq!(
        sandbox.read("s.jsonl"),
        seed,
        "the partial write was not rolled back"
    );
    assert_eq!(
        kept(&sandbox, "s.jsonl", "write-failed"),
        format!("{reply}\n").as_bytes()
    );
}

#[test]
fn an_incomplete_last_line_is_refused_unless_repair_moves_it_aside() {
    let sandbox = Sandbox::new();
    let torn = format!("{SEED}{{\"torn\":");
    fs::write(sandbox.path("s.jsonl"), &torn).unwrap();
    sandbox
        .cmd([
            "prompt",
            "--append",
            "s.jsonl",
            "--",
            "echo",
            "{\"reply\":1}",
        ])
        .assert()
        .code(65)
        .stderr(predicate::str::contains(
            "ends with an incomplete line (8 bytes",
        ))
        .stderr(predicate::str::contains("--repair"));
    assert_eq!(sandbox.read("s.jsonl"), torn);
    assert_eq!(
        kept(&sandbox, "s.jsonl", "incomplete-session"),
        b"{\"reply\":1}\n"
    );

    sandbox
        .cmd([
            "prompt",
            "--append",
            "--repair",
            "s.jsonl",
            "--",
            "echo",
            "{\"reply\":2}",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "moved an incomplete last line (8 bytes)",
        ));
    assert_eq!(sandbox.read("s.jsonl"), format!("{SEED}{{\"reply\":2}}\n"));
    assert_eq!(kept(&sandbox, "s.jsonl", "session-tail"), b"{\"torn\":");
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn tee_copies_the_output_to_stdout_as_well() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd([
            "prompt",
            "--append",
            "--tee",
            "s.jsonl",
            "--",
            "echo",
            "{\"reply\":1}",
        ])
        .assert()
        .success()
        .stdout("{\"reply\":1}\n");
    assert_eq!(sandbox.read("s.jsonl"), "{\"reply\":1}\n");
    // Teed even when it is not committed.
    sandbox
        .cmd([
            "prompt", "--append", "--tee", "s.jsonl", "--", "echo", "nope",
        ])
        .assert()
        .code(65)
        .stdout("nope\n");
    assert_eq!(sandbox.read("s.jsonl"), "{\"reply\":1}\n");
}

#[test]
fn tee_does_not_wait_for_a_grandchild_that_keeps_stdout_open() {
    let sandbox = Sandbox::new();
    // The background sleep inherits stdout; the wrapper must not wait for it to close.
    let mut w = sandbox.spawn(
        "W",
        [
            "prompt",
            "--append",
            "--tee",
            "s.jsonl",
            "--",
            "sh",
            "-c",
            "echo '{\"reply\":1}'; (while [ ! -e go.bg ]; do sleep 0.01; done) &",
        ],
    );
    assert_eq!(w.wait_code(), 0, "{}", w.stderr());
    sandbox.open("bg");
    assert_eq!(sandbox.read("s.jsonl"), "{\"reply\":1}\n");
}

#[test]
fn a_hundred_waiters_queued_at_once_commit_every_reply_once_in_turn_order() {
    let sandbox = Sandbox::new();
    // A holds the turn while a hundred prompts join behind it, all at once.
    let mut first = sandbox.spawn("A", sandbox.gated("prompt", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let mut procs: Vec<_> = (0..100)
        .map(|i| {
            sandbox.spawn(
                &format!("P{i}"),
                [
                    "prompt",
                    "-q",
                    "--append",
                    "s.jsonl",
                    "--",
                    "sh",
                    "-c",
                    "echo \"{\\\"ticket\\\":\\\"$SESSIONLOCK_TICKET\\\"}\"",
                ],
            )
        })
        .collect();
    let queue = sandbox.wait_queue_len("s.jsonl", 101);
    assert!(queue[1..].iter().all(|q| q.1 == "waiting"), "{queue:?}");
    assert!(
        !sandbox.path("s.jsonl").exists(),
        "a reply landed during A's turn"
    );
    sandbox.open("A");
    assert_eq!(first.wait_code(), 0);
    for p in &mut procs {
        assert_eq!(p.wait_code(), 0, "{}", p.stderr());
    }
    // Tickets are issued under the write lock, so ticket order is turn order.
    let tickets: Vec<u64> = sandbox
        .read("s.jsonl")
        .lines()
        .map(|l| {
            // `EPOCH.TICKET`: one epoch here, so the ticket orders them.
            let label = serde_json::from_str::<serde_json::Value>(l).unwrap()["ticket"]
                .as_str()
                .unwrap()
                .to_owned();
            label.split_once('.').unwrap().1.parse().unwrap()
        })
        .collect();
    let queued: Vec<u64> = queue[1..].iter().map(|q| q.0).collect();
    assert_eq!(tickets, queued, "replies not in queue order");
    sandbox.assert_no_trace("s.jsonl");
}

#[test]
fn a_commit_whose_publication_fails_is_rolled_back_and_its_output_kept() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), SEED).unwrap();
    // State writes of a `prompt --append` on a fresh sidecar: the join (1), the commit intent
    // (2), the publication (3). Failing the third fails after the append: it must be undone.
    for (n, what) in [(2, "cannot write the lock state"), (3, "rolled back")] {
        let out = sandbox
            .cmd(["prompt", "--append", "s.jsonl", "--", "echo", "{\"r\":1}"])
            .env("SESSIONLOCK_FAULT", format!("state-write:{n}"))
            .assert()
            .code(74)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(what), "{stderr}");
        assert_eq!(
            sandbox.read("s.jsonl"),
            SEED,
            "the failed turn left its reply"
        );
        assert!(stderr.contains("output kept in"), "{stderr}");
        sandbox.assert_no_trace("s.jsonl");
        fs::remove_dir_all(sandbox.path(".s.jsonl.sessionlock")).unwrap();
    }
}

#[test]
fn kept_output_is_never_overwritten_even_when_ticket_numbers_restart() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), SEED).unwrap();
    let sidecar = sandbox.path(".s.jsonl.sessionlock");
    for reply in ["first", "second"] {
        sandbox
            .cmd([
                "prompt",
                "--append",
                "s.jsonl",
                "--",
                "sh",
                "-c",
                &format!("echo '\"{reply}\"'; exit 3"),
            ])
            .assert()
            .code(3);
        fs::write(sidecar.join("queue"), "garbage").unwrap();
        let _ = fs::remove_dir_all(sidecar.join("tickets"));
    }
    let mut kept: Vec<String> = fs::read_dir(sidecar.join("kept"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, ["\"first\"\n", "\"second\"\n"]);
}

#[test]
fn empty_output_succeeds_even_after_an_incomplete_last_line() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), "{\"torn\":").unwrap();
    sandbox
        .cmd(["prompt", "--append", "s.jsonl", "--", "true"])
        .assert()
        .success();
    assert_eq!(sandbox.read("s.jsonl"), "{\"torn\":");
}

#[test]
fn output_with_invalid_utf8_in_a_string_is_refused() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd([
            "prompt",
            "--append",
            "s.jsonl",
            "--",
            "printf",
            "{\"s\":\"\\377\\376\"}\\n",
        ])
        .assert()
        .code(65)
        .stderr(predicate::str::contains("invalid UTF-8"));
    assert!(!sandbox.path("s.jsonl").exists() || sandbox.read("s.jsonl").is_empty());
}
