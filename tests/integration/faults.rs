//! The fault walk: every fallible operation of a lifecycle fails in turn (`SESSIONLOCK_FAULT`,
//! debug builds), and after each the run ends cleanly: one `sessionlock:` line and a documented
//! code, no turn left behind, the session file untouched, or fully committed for an exit 0.

use std::fs;

use crate::support::Sandbox;

const SEED: &str = "{\"seed\":1}\n";
const REPLY: &str = "{\"reply\":1}\n";
/// The wrapper's own codes (the command here always exits 0).
const DOCUMENTED: [i32; 9] = [65, 66, 70, 73, 74, 75, 76, 77, 126];

/// Walk `N` over every operation of `args`; returns how many were walked.
fn walk(args: &[&str], commits: bool) -> usize {
    let sandbox = Sandbox::new();
    let mut clean_in_a_row = 0;
    let mut n = 0;
    while clean_in_a_row < 5 {
        n += 1;
        assert!(n < 300, "the walk does not end");
        fs::write(sandbox.path("s.jsonl"), SEED).unwrap();
        let out = sandbox
            .cmd(args)
            .env("SESSIONLOCK_FAULT", format!("*:{n}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!("{args:?} failing operation {n}: {stderr}");
        assert!(out.stdout.is_empty(), "{what}: the wrapper wrote to stdout");
        for line in stderr.lines() {
            assert!(line.starts_with("sessionlock: "), "{what}");
        }
        let session = sandbox.read("s.jsonl");
        match out.status.code() {
            Some(0) => {
                let want = if commits {
                    format!("{SEED}{REPLY}")
                } else {
                    SEED.to_owned()
                };
                assert_eq!(session, want, "{what}");
                clean_in_a_row += usize::from(stderr.is_empty());
            }
            Some(code) => {
                clean_in_a_row = 0;
                assert!(
                    DOCUMENTED.contains(&code),
                    "{what}: undocumented code {code}"
                );
                assert_eq!(stderr.lines().count(), 1, "{what}");
                assert_eq!(session, SEED, "{what}: a failed run changed the session");
            }
            None => panic!("{what}: died of a signal"),
        }
        sandbox.assert_no_trace("s.jsonl");
        let _ = fs::remove_dir_all(sandbox.path(".s.jsonl.sessionlock/kept"));
    }
    n - 5
}

#[test]
fn every_operation_of_each_mode_can_fail_and_the_run_still_ends_cleanly() {
    let reply = REPLY.trim_end();
    let walked = [
        walk(
            &["prompt", "--append", "s.jsonl", "--", "echo", reply],
            true,
        ),
        walk(&["run", "--append", "s.jsonl", "--", "echo", reply], true),
        walk(&["idle-wait", "s.jsonl", "--", "true"], false),
    ];
    eprintln!(
        "fault walk: {} operations of prompt --append, {} of run --append, {} of idle-wait",
        walked[0], walked[1], walked[2]
    );
    assert!(walked.iter().all(|&n| n > 5), "{walked:?}");
}
