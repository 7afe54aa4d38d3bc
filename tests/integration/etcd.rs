//! `--coord etcd://...` against a real 3-member etcd cluster on 127.0.0.1 (no mock): wrappers
//! that share only etcd (the backend takes no kernel lock) never overlap, keep FIFO, commit
//! once; and the faults: a killed holder, a killed follower, a killed leader, no etcd at all.

#![cfg(feature = "etcd")]

use std::fs;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::{Sandbox, assert_no_overlap, entry_order, wait_for};

/// A 3-member etcd cluster, killed (by pid) when dropped.
struct Cluster {
    members: Vec<Option<Child>>,
    clients: Vec<u16>,
    _data: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Start it, or `None` (with the reason printed) where etcd is not installed, except under
    /// CI, where that is a failure.
    fn start() -> Option<Self> {
        if Command::new("etcd").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "etcd is missing under CI: .ci/run installs etcd-server"
            );
            eprintln!("skipped: etcd is not installed");
            return None;
        }
        let data = tempfile::tempdir().unwrap();
        let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let token = format!("t{}", std::process::id() ^ u32::from(peers[0]));
        let mut members = Vec::new();
        for i in 0..3 {
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(data.path().join(format!("m{i}")))
                .args([
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{}", peers[i]),
                ])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{}", peers[i]),
                ])
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{}", clients[i]),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{}", clients[i]),
                ])
                .args(["--initial-cluster", &initial.join(",")])
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &token,
                ])
                .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            members.push(Some(child));
            // A few milliseconds apart, not all at once, and not each waiting for health.
            std::thread::sleep(Duration::from_millis(5));
        }
        let cluster = Self {
            members,
            clients,
            _data: data,
        };
        let sandbox = Sandbox::new();
        wait_for("the etcd cluster to serve", || {
            sandbox
                .cmd([
                    "run",
                    "-q",
                    "--coord",
                    &cluster.url(),
                    "ready.jsonl",
                    "--",
                    "true",
                ])
                .timeout(Duration::from_secs(10))
                .output()
                .is_ok_and(|o| o.status.success())
        });
        Some(cluster)
    }

    fn url(&self) -> String {
        let endpoints: Vec<String> = self
            .clients
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("etcd://{}", endpoints.join(","))
    }

    /// The index of the member that leads now.
    fn leader(&self) -> usize {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for (i, port) in self.clients.iter().enumerate() {
                if self.members[i].is_none() {
                    continue;
                }
                let Ok(mut c) =
                    etcd_client::Client::connect([format!("http://127.0.0.1:{port}")], None).await
                else {
                    continue;
                };
                if let Ok(status) = c.status().await {
                    let me = status
                        .header()
                        .map_or(0, etcd_client::ResponseHeader::member_id);
                    if status.leader() == me {
                        return i;
                    }
                }
            }
            panic!("no leader");
        })
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// `MODE --coord URL [EXTRA] s.jsonl -- gate NAME`.
fn gated(sandbox: &Sandbox, url: &str, mode: &str, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        mode.to_owned(),
        "-v".into(),
        "--coord".into(),
        url.to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push("s.jsonl".into());
    args.push("--".into());
    args.extend(sandbox.gate(name));
    args
}

/// The queue of `s.jsonl` in etcd.
fn queue_len(sandbox: &Sandbox, url: &str) -> usize {
    let out = sandbox
        .cmd(["status", "--coord", url, "s.jsonl"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["queue"].as_array().map_or(0, Vec::len)
}

#[test]
fn wrappers_sharing_only_etcd_keep_fifo_never_overlap_and_commit_once() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.url();
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), "{\"seed\":1}\n").unwrap();
    let mut a = sandbox.spawn("A", gated(&sandbox, &url, "prompt", "A", &[]));
    sandbox.wait_entered("A");
    let gate = sandbox.path("gate.sh").display().to_string();
    let mut procs = Vec::new();
    for (i, name) in ["B", "C", "D"].iter().enumerate() {
        let script = format!("sh {gate} {name} >&2; echo '{{\"reply\":\"{name}\"}}'");
        procs.push(sandbox.spawn(
            name,
            [
                "prompt", "--coord", &url, "--append", "s.jsonl", "--", "sh", "-c", &script,
            ],
        ));
        wait_for(&format!("{name} to queue"), || {
            queue_len(&sandbox, &url) == i + 2
        });
    }
    // A `run` takes the write lock during A's window (owned), an idle-wait has a window too.
    sandbox
        .cmd([
            "run",
            "--coord",
            &url,
            "--append",
            "s.jsonl",
            "--",
            "echo",
            "{\"run\":1}",
        ])
        .assert()
        .success();
    for name in ["A", "B", "C", "D"] {
        sandbox.open(name);
    }
    assert_eq!(a.wait_code(), 0, "{}", a.stderr());
    for p in &mut procs {
        assert_eq!(p.wait_code(), 0, "{}", p.stderr());
    }
    assert_no_overlap(&sandbox.log());
    assert_eq!(entry_order(&sandbox.log()), ["A", "B", "C", "D"]);
    assert_eq!(
        sandbox.read("s.jsonl"),
        "{\"seed\":1}\n{\"run\":1}\n{\"reply\":\"B\"}\n{\"reply\":\"C\"}\n{\"reply\":\"D\"}\n"
    );
    // No kernel lock was used: the sidecar holds no lock file.
    assert!(!sandbox.path(".s.jsonl.sessionlock/lock").exists());
    // An outside edit during a window is a takeover; idle-wait has a fence too.
    for mode in ["prompt", "idle-wait"] {
        sandbox
            .cmd([
                mode, "--coord", &url, "--append", "s.jsonl", "--", "sh", "-c",
            ])
            .arg("echo '{\"outside\":1}' >> s.jsonl; echo '{\"late\":1}'")
            .assert()
            .code(76);
    }
    assert!(!sandbox.read("s.jsonl").contains("late"));
}

#[test]
fn a_killed_holder_hands_the_turn_on_within_its_lease() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.url();
    let sandbox = Sandbox::new();
    let a = sandbox.spawn(
        "A",
        gated(&sandbox, &url, "prompt", "A", &["--lease", "2s"]),
    );
    sandbox.wait_entered("A");
    let mut b = sandbox.spawn(
        "B",
        gated(&sandbox, &url, "prompt", "B", &["--lease", "2s"]),
    );
    wait_for("B to queue", || queue_len(&sandbox, &url) == 2);
    let killed = Instant::now();
    a.signal(Signal::SIGKILL);
    drop(a);
    sandbox.wait_entered("B");
    let recovery = killed.elapsed();
    eprintln!("etcd: a SIGKILLed holder's turn passed on after {recovery:?} (lease 2s)");
    assert!(
        recovery < Duration::from_secs(3),
        "{recovery:?}: more than TTL + 1 s"
    );
    sandbox.open("B");
    assert_eq!(b.wait_code(), 0, "{}", b.stderr());
}

#[test]
fn a_killed_follower_goes_unnoticed() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.url();
    let sandbox = Sandbox::new();
    let leader = cluster.leader();
    let mut a = sandbox.spawn("A", gated(&sandbox, &url, "prompt", "A", &["--append"]));
    sandbox.wait_entered("A");
    cluster.kill((leader + 1) % 3);
    sandbox.open("A");
    assert_eq!(a.wait_code(), 0, "{}", a.stderr());
    sandbox
        .cmd([
            "prompt",
            "--coord",
            &url,
            "--append",
            "s.jsonl",
            "--",
            "echo",
            "{\"r\":1}",
        ])
        .assert()
        .success()
        .stderr("");
    assert_eq!(sandbox.read("s.jsonl"), "{\"r\":1}\n");
}

#[test]
fn a_killed_leader_only_pauses_the_runs() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.url();
    let sandbox = Sandbox::new();
    // The leader dies in the middle of a window, with a turn waiting behind it: the runs go on
    // after the election, in order, without overlap or a duplicate commit.
    let gate = sandbox.path("gate.sh").display().to_string();
    let script = format!("sh {gate} A >&2; echo '{{\"reply\":\"A\"}}'");
    let mut a = sandbox.spawn(
        "A",
        [
            "prompt", "--coord", &url, "--append", "s.jsonl", "--", "sh", "-c", &script,
        ],
    );
    sandbox.wait_entered("A");
    let mut b = sandbox.spawn("B", gated(&sandbox, &url, "prompt", "B", &[]));
    wait_for("B to queue", || queue_len(&sandbox, &url) == 2);
    let killed = Instant::now();
    cluster.kill(cluster.leader());
    sandbox.open("A");
    assert_eq!(a.wait_code(), 0, "{}", a.stderr());
    eprintln!(
        "etcd: a window across a leader kill committed {:?} after it",
        killed.elapsed()
    );
    sandbox.open("B");
    assert_eq!(b.wait_code(), 0, "{}", b.stderr());
    assert_no_overlap(&sandbox.log());
    assert_eq!(entry_order(&sandbox.log()), ["A", "B"]);
    assert_eq!(sandbox.read("s.jsonl"), "{\"reply\":\"A\"}\n");
}

#[test]
fn with_every_member_down_the_wrapper_says_so_and_exits_69() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.url();
    for i in 0..3 {
        cluster.kill(i);
    }
    let sandbox = Sandbox::new();
    let out = sandbox
        .cmd([
            "prompt", "-t", "2", "--coord", &url, "--append", "s.jsonl", "--", "echo", "{}",
        ])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("etcd is unavailable at"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}", cluster.clients[0])),
        "{stderr}"
    );
    assert!(!sandbox.path("s.jsonl").exists());
}

#[test]
fn a_lost_lease_stops_the_command_and_commits_nothing() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.url();
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("s.jsonl"), "{\"seed\":1}\n").unwrap();
    // The window's command would reply after its gate opens; etcd loses quorum meanwhile, so
    // the wrapper cannot renew its 2 s lease.
    let gate = sandbox.path("gate.sh").display().to_string();
    let script = format!("sh {gate} A >&2; echo '{{\"reply\":1}}'");
    let mut a = sandbox.spawn(
        "A",
        [
            "prompt", "--coord", &url, "--lease", "2s", "--append", "s.jsonl", "--", "sh", "-c",
            &script,
        ],
    );
    sandbox.wait_entered("A");
    let killed = Instant::now();
    for i in 0..3 {
        cluster.kill(i);
    }
    assert_eq!(a.wait_code(), 69, "{}", a.stderr());
    let stopped = killed.elapsed();
    eprintln!(
        "etcd: a lost lease stopped the command {stopped:?} after quorum was lost (lease 2s)"
    );
    assert!(a.stderr().contains("lease was lost"), "{}", a.stderr());
    assert!(stopped < Duration::from_secs(10), "{stopped:?}");
    assert_eq!(
        sandbox.read("s.jsonl"),
        "{\"seed\":1}\n",
        "committed after losing the lock"
    );
}
