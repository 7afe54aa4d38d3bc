//! Hostile input, one test each: a damaged or replaced lock file, a session no one may write,
//! huge argument lists, children that misbehave with their stdout, secrets in argv and env.
//! Each gets a clear error or a correct run; none hangs, panics or loses a line.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::{Sandbox, lock_file};

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
