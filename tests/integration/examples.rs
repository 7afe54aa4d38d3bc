//! The recipes in `examples/`, run as they are (the README quotes them), with the binary under
//! test first on PATH.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::support::{Sandbox, assert_no_overlap, bin, entry_order};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// PATH with the binary under test first.
fn path() -> String {
    format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn the_cron_heartbeat_appends_and_skips_a_busy_turn_silently() {
    let sandbox = Sandbox::new();
    let beat = || {
        sandbox
            .program(example("cron-heartbeat.sh"))
            .arg("s.jsonl")
            .env("PATH", path())
            .output()
            .unwrap()
    };
    let out = beat();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{out:?}"
    );
    assert!(sandbox.read("s.jsonl").contains("\"heartbeat\""));
    let mut a = sandbox.spawn("A", sandbox.gated("prompt", "s.jsonl", "A", &[]));
    sandbox.wait_entered("A");
    let out = beat();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{out:?}"
    );
    assert_eq!(
        sandbox.read("s.jsonl").lines().count(),
        1,
        "it did not skip"
    );
    sandbox.open("A");
    assert_eq!(a.wait_code(), 0);
}

/// A one-request OpenAI-compatible server on 127.0.0.1: answers `reply` and hands back the
/// request it got.
fn serve_once(reply: &'static str) -> (u16, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers, then the body of Content-Length bytes.
        loop {
            let n = conn.read(&mut buf).unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if request.len() >= end + 4 + len {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
        conn.write_all(response.as_bytes()).unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    (port, handle)
}

#[test]
fn the_provider_call_posts_the_session_and_its_reply_is_appended() {
    let sandbox = Sandbox::new();
    fs::write(
        sandbox.path("s.jsonl"),
        "{\"role\":\"user\",\"content\":\"hello\"}\n",
    )
    .unwrap();
    let (port, server) = serve_once(
        r#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi } there"}}]}"#,
    );
    sandbox
        .cmd([
            "prompt",
            "--append",
            "s.jsonl",
            "--",
            example("provider-call.sh").to_str().unwrap(),
        ])
        .env("PATH", path())
        .env("OPENAI_BASE_URL", format!("http://127.0.0.1:{port}/v1"))
        .env("OPENAI_API_KEY", "sk-test-key")
        .assert()
        .success();
    let request = server.join().unwrap();
    assert!(
        request.starts_with("POST /v1/chat/completions"),
        "{request}"
    );
    assert!(request.contains("Bearer sk-test-key"), "{request}");
    assert!(
        request.contains(r#""messages":[{"role":"user","content":"hello"}]"#),
        "{request}"
    );
    assert_eq!(
        sandbox.read("s.jsonl"),
        "{\"role\":\"user\",\"content\":\"hello\"}\n{\"role\":\"assistant\",\"content\":\"hi } there\"}\n"
    );
}

#[test]
fn the_compaction_waits_for_the_turn_ahead_and_never_reorders_a_reply() {
    let sandbox = Sandbox::new();
    let mut lines = String::new();
    for i in 0..10 {
        lines += "{\"n\":";
        lines += &i.to_string();
        lines += "}\n";
    }
    fs::write(sandbox.path("s.jsonl"), &lines).unwrap();
    // A's provider call is in its window; its reply comes after it.
    let gate = sandbox.path("gate.sh").display().to_string();
    let reply = format!("sh {gate} A >&2; echo '{{\"reply\":\"A\"}}'");
    let mut a = sandbox.spawn(
        "A",
        ["prompt", "--append", "s.jsonl", "--", "sh", "-c", &reply],
    );
    sandbox.wait_entered("A");
    let mut compact = sandbox.spawn_command("C", {
        let mut c = std::process::Command::new(example("compact.sh"));
        c.current_dir(sandbox.root())
            .args(["s.jsonl", "3"])
            .env("PATH", path());
        c
    });
    sandbox.wait_queue_len("s.jsonl", 2);
    // B asks after the compaction was queued: it goes after it.
    let mut b = sandbox.spawn(
        "B",
        [
            "prompt",
            "--append",
            "s.jsonl",
            "--",
            "echo",
            "{\"reply\":\"B\"}",
        ],
    );
    sandbox.wait_queue_len("s.jsonl", 3);
    assert_eq!(
        sandbox.read("s.jsonl"),
        lines,
        "the compaction ran during A's window"
    );
    sandbox.open("A");
    assert_eq!(
        (a.wait_code(), compact.wait_code(), b.wait_code()),
        (0, 0, 0)
    );
    assert_eq!(
        sandbox.read("s.jsonl"),
        "{\"n\":8}\n{\"n\":9}\n{\"reply\":\"A\"}\n{\"reply\":\"B\"}\n"
    );
    assert_no_overlap(&sandbox.log());
    assert_eq!(entry_order(&sandbox.log()), ["A"]);
    sandbox.assert_no_trace("s.jsonl");
}
