//! The benchmark harness's measurements, shared by `cargo bench --bench harness` (which writes
//! BENCHMARKS.md) and a test that runs it in a tiny configuration so it cannot rot.
//!
//! Every comparison is made in one run, interleaved: round after round, each contender once,
//! so a busy neighbour on the machine slows all of them alike.

#![allow(dead_code, clippy::cast_precision_loss)]

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Which clock the stamp program writes (the driver reads the same one).
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    Monotonic,
    Realtime,
}

impl Clock {
    #[must_use]
    pub fn now_ns(self) -> u64 {
        let id = match self {
            Clock::Monotonic => nix::time::ClockId::CLOCK_MONOTONIC,
            Clock::Realtime => nix::time::ClockId::CLOCK_REALTIME,
        };
        let t = nix::time::clock_gettime(id).unwrap();
        u64::try_from(t.tv_sec()).unwrap() * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap()
    }
}

/// How big a run is.
#[derive(Debug, Clone)]
pub struct Config {
    pub sessionlock: PathBuf,
    /// A program that appends `<name> <now_ns>` to the file given as its first argument (the
    /// name is its second), on `clock`.
    pub stamp: Vec<OsString>,
    pub clock: Clock,
    pub overhead_rounds: usize,
    pub handoff_rounds: usize,
    pub waiters: usize,
    pub contenders: usize,
    pub turns_each: usize,
    pub scale: Vec<usize>,
    /// Another build of sessionlock to compare in the overhead table (the plain
    /// `cargo install` build, when the static one is measured).
    pub also: Option<PathBuf>,
}

/// One table row.
pub struct Row(pub String, pub String);

/// The whole result, as Markdown tables.
#[derive(Default)]
pub struct Report {
    pub sections: Vec<(String, Vec<Row>)>,
}

impl Report {
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for (title, rows) in &self.sections {
            let _ = writeln!(out, "### {title}\n\n| measure | value |\n| --- | --- |");
            for Row(k, v) in rows {
                let _ = writeln!(out, "| {k} | {v} |");
            }
            out.push('\n');
        }
        out
    }
}

fn run_quiet(cmd: &mut Command) -> std::process::ExitStatus {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
}

fn ms(d: f64) -> String {
    format!("{d:.2} ms")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// 1. Uncontended overhead: each command once a round, interleaved; the mean and median.
pub fn overhead(c: &Config, dir: &Path) -> Vec<Row> {
    let s = c.sessionlock.as_os_str();
    let mut cmds: Vec<(&str, Vec<OsString>)> = vec![
        ("true", vec!["true".into()]),
        (
            "flock FILE true",
            vec!["flock".into(), "f.lock".into(), "true".into()],
        ),
        (
            "sessionlock run -- true",
            vec![
                s.into(),
                "run".into(),
                "s.jsonl".into(),
                "--".into(),
                "true".into(),
            ],
        ),
        (
            "sessionlock prompt -- true",
            vec![
                s.into(),
                "prompt".into(),
                "p.jsonl".into(),
                "--".into(),
                "true".into(),
            ],
        ),
    ];
    if let Some(other) = &c.also {
        let o = other.as_os_str();
        cmds.push((
            "sessionlock run -- true (plain cargo install build)",
            vec![
                o.into(),
                "run".into(),
                "s2.jsonl".into(),
                "--".into(),
                "true".into(),
            ],
        ));
    }
    let mut times = vec![Vec::new(); cmds.len()];
    for round in 0..c.overhead_rounds + 5 {
        for (i, (_, argv)) in cmds.iter().enumerate() {
            let started = Instant::now();
            let status = run_quiet(Command::new(&argv[0]).args(&argv[1..]).current_dir(dir));
            assert!(status.success(), "{argv:?}");
            if round >= 5 {
                times[i].push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let flock = mean(&times[1]);
    cmds.iter()
        .zip(&times)
        .map(|((name, _), t)| {
            let mut sorted = t.clone();
            sorted.sort_by(f64::total_cmp);
            Row(
                (*name).to_owned(),
                format!(
                    "mean {}, median {} ({:.2}x flock)",
                    ms(mean(t)),
                    ms(percentile(&sorted, 0.5)),
                    mean(t) / flock
                ),
            )
        })
        .collect()
}

/// Read `<name> <ns>` lines.
fn stamps(path: &Path) -> Vec<(String, u64)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (n, t) = l.split_once(' ')?;
            Some((n.to_owned(), t.trim().parse().ok()?))
        })
        .collect()
}

/// Wait (bounded) until `check` holds.
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Handoff (2.): a holder and `waiters` queued behind it; from one command's end to the next
/// command's start, through sessionlock prompt turns and through a chain of flock(1).
#[allow(clippy::too_many_lines)]
pub fn handoff(c: &Config, dir: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    // sessionlock's own part, from its event log: a turn left, the next window opened.
    let mut mechanism = Vec::new();
    // The event log costs a few writes a step: the handoff figures are taken without it, and
    // sessionlock's own part in rounds of their own, with it.
    for tool in ["sessionlock prompt", "flock", "events"] {
        let mut gaps = Vec::new();
        for round in 0..c.handoff_rounds {
            let events = dir.join(format!("events-{round}"));
            let log = dir.join(format!("handoff-{}-{round}.log", tool.replace(' ', "-")));
            let go = dir.join("go");
            let held = dir.join("held");
            let _ = fs::remove_file(&go);
            let _ = fs::remove_file(&held);
            let wrap = |name: &str, hold: bool| -> Command {
                let mut inner: Vec<OsString> = Vec::new();
                if hold {
                    // The holder stamps its end after its gate opens.
                    inner.extend(["sh".into(), "-c".into()]);
                    inner.push(
                        format!(
                            ": > '{}'; while [ ! -e '{}' ] && [ -d '{}' ]; do sleep 0.005; done; \
                             exec \"$@\"",
                            held.display(),
                            go.display(),
                            dir.display()
                        )
                        .into(),
                    );
                    inner.push("sh".into());
                }
                inner.extend(c.stamp.iter().cloned());
                inner.push(log.clone().into());
                inner.push(name.into());
                let mut cmd = if tool == "flock" {
                    let mut cmd = Command::new("flock");
                    cmd.arg("chain.lock");
                    cmd
                } else {
                    let mut cmd = Command::new(&c.sessionlock);
                    cmd.args(["prompt", "-q"]);
                    if tool == "events" {
                        cmd.arg("--events-file").arg(&events);
                    }
                    cmd.args(["chain.jsonl", "--"]);
                    cmd
                };
                cmd.args(inner)
                    .current_dir(dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                cmd
            };
            let mut holder = wrap("h", true).spawn().unwrap();
            until("the holder", || held.exists());
            let mut procs = Vec::new();
            for i in 0..c.waiters {
                procs.push(wrap(&format!("w{i}"), false).spawn().unwrap());
                if tool == "flock" {
                    // flock(1) has no queue to ask: the waiter is asleep in the kernel's lock wait.
                    let pid = procs.last().map_or(0, std::process::Child::id);
                    until("a flock waiter", || {
                        fs::read_to_string(format!("/proc/{pid}/wchan"))
                            .is_ok_and(|w| w.contains("lock"))
                    });
                } else {
                    until(&format!("prompt waiter {i} of round {round}"), || {
                        queue_len(c, dir, "chain.jsonl") > i + 1
                    });
                }
            }
            fs::write(&go, "").unwrap();
            holder.wait().unwrap();
            for p in &mut procs {
                p.wait().unwrap();
            }
            let mut s = stamps(&log);
            s.sort_by_key(|(_, t)| *t);
            // Each command stamps once, at its start: the holder's stamp is its end.
            for w in s.windows(2) {
                gaps.push((w[1].1 - w[0].1) as f64 / 1e6);
            }
            if tool == "events" {
                mechanism.extend(left_to_window(&events));
            }
        }
        if tool == "events" {
            continue;
        }
        gaps.sort_by(f64::total_cmp);
        rows.push(Row(
            format!("{tool}: handoff with {} waiters", c.waiters),
            format!(
                "p50 {}, p99 {}, max {} ({} handoffs)",
                ms(percentile(&gaps, 0.5)),
                ms(percentile(&gaps, 0.99)),
                ms(*gaps.last().unwrap_or(&f64::NAN)),
                gaps.len()
            ),
        ));
    }
    mechanism.sort_by(f64::total_cmp);
    rows.push(Row(
        "sessionlock's own part: a turn left, the next window opened (event log)".into(),
        format!(
            "p50 {}, p99 {}, max {}",
            ms(percentile(&mechanism, 0.5)),
            ms(percentile(&mechanism, 0.99)),
            ms(*mechanism.last().unwrap_or(&f64::NAN)),
        ),
    ));
    rows
}

/// From an event log: for each `left`, the time until the next `window-opened`.
fn left_to_window(events: &Path) -> Vec<f64> {
    let mut marks: Vec<(f64, bool)> = fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let left = match v["event"].as_str()? {
                "left" => true,
                "window-opened" => false,
                _ => return None,
            };
            Some((v["ms"].as_f64()?, left))
        })
        .collect();
    marks.sort_by(|a, b| a.0.total_cmp(&b.0));
    marks
        .windows(2)
        .filter(|w| w[0].1 && !w[1].1)
        .map(|w| w[1].0 - w[0].0)
        .collect()
}

/// The length of the prompt queue of `session`, from `status --json`.
fn queue_len(c: &Config, dir: &Path, session: &str) -> usize {
    let out = Command::new(&c.sessionlock)
        .args(["status", "--json", session])
        .current_dir(dir)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["queue"].as_array().map_or(0, Vec::len)
}

/// Pairs of turns granted in the opposite order of their tickets (`EPOCH.TICKET`).
fn ticket_inversions(events: &Path) -> usize {
    let mut granted: Vec<((u64, u64), f64)> = fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if v["event"] != "turn-granted" {
                return None;
            }
            let (e, t) = v["ticket"].as_str()?.split_once('.')?;
            Some(((e.parse().ok()?, t.parse().ok()?), v["ms"].as_f64()?))
        })
        .collect();
    granted.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut inversions = 0;
    for (i, a) in granted.iter().enumerate() {
        inversions += granted[i + 1..].iter().filter(|b| b.0 < a.0).count();
    }
    inversions
}

/// Fairness (3.): `contenders` loops of `turns_each` turns at once. A FIFO violation is a
/// pair of turns served in the opposite order of their requests, when the requests were more
/// than 2 ms apart (closer ones may join in either order). Also the worst and the mean wait.
pub fn fairness(c: &Config, dir: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for tool in ["sessionlock prompt", "flock"] {
        let log = dir.join(format!("fair-{}.log", tool.replace(' ', "-")));
        let wants = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for k in 0..c.contenders {
                let (log, wants) = (&log, &wants);
                scope.spawn(move || {
                    for i in 0..c.turns_each {
                        let name = format!("c{k}t{i}");
                        let mut cmd = if tool == "flock" {
                            let mut cmd = Command::new("flock");
                            cmd.arg("fair.lock");
                            cmd
                        } else {
                            let mut cmd = Command::new(&c.sessionlock);
                            cmd.args(["prompt", "-q", "--events-file"])
                                .arg(dir.join("fair-events"))
                                .args(["fair.jsonl", "--"]);
                            cmd
                        };
                        cmd.args(&c.stamp).arg(log).arg(&name).current_dir(dir);
                        let want = c.clock.now_ns();
                        assert!(run_quiet(&mut cmd).success());
                        wants.lock().unwrap().push((name, want));
                    }
                });
            }
        });
        let got: std::collections::HashMap<String, u64> = stamps(&log).into_iter().collect();
        let mut turns: Vec<(u64, u64)> = wants
            .into_inner()
            .unwrap()
            .into_iter()
            .map(|(n, want)| (want, got[&n]))
            .collect();
        turns.sort_unstable();
        let mut violations = 0;
        for (i, a) in turns.iter().enumerate() {
            for b in &turns[i + 1..] {
                if b.0 > a.0 + 2_000_000 && b.1 < a.1 {
                    violations += 1;
                }
            }
        }
        let delays: Vec<f64> = turns.iter().map(|(w, g)| (g - w) as f64 / 1e6).collect();
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        let worst = delays.iter().copied().fold(0.0, f64::max);
        let queue = if tool == "flock" {
            "flock(1) has no queue to observe".to_owned()
        } else {
            format!(
                "{} FIFO violations in its own join order (event log)",
                ticket_inversions(&dir.join("fair-events"))
            )
        };
        rows.push(Row(
            format!(
                "{tool}: {} contenders x {} turns",
                c.contenders, c.turns_each
            ),
            format!(
                "{queue}; {violations} requests served out of order (as seen from outside, \
                 more than 2 ms apart); worst wait {}, mean {}, worst/mean {:.2}",
                ms(worst),
                ms(mean),
                worst / mean
            ),
        ));
    }
    rows
}

/// Scale (4.): N turns queued at once behind a holder; from its end to the last turn's end.
/// Small queues finish in milliseconds, where the machine's noise is as large as the figure:
/// they are repeated (up to 20 times) and the median taken.
pub fn scale(c: &Config, dir: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut per_turn = Vec::new();
    let largest = c.scale.iter().copied().max().unwrap_or(1);
    for &n in &c.scale {
        let reps = (largest / n).clamp(1, 20);
        let mut totals: Vec<f64> = (0..reps).map(|r| queue_once(c, dir, n, r)).collect();
        totals.sort_by(f64::total_cmp);
        let total = percentile(&totals, 0.5);
        per_turn.push(total / n as f64);
        rows.push(Row(
            format!("{n} turns queued at once (median of {reps})"),
            format!("{} in all, {} a turn", ms(total), ms(total / n as f64)),
        ));
    }
    if per_turn.len() > 1 {
        rows.push(Row(
            "cost a turn, largest queue / smallest".into(),
            format!("{:.2}x", per_turn.last().unwrap() / per_turn[0]),
        ));
    }
    rows
}

/// One queue of `n` turns behind a holder: milliseconds from the holder's end to the last end.
fn queue_once(c: &Config, dir: &Path, n: usize, rep: usize) -> f64 {
    let session = format!("scale-{n}-{rep}.jsonl");
    let go = dir.join(format!("go-{n}-{rep}"));
    let mut holder = Command::new(&c.sessionlock)
        .args(["prompt", "-q", &session, "--", "sh", "-c"])
        .arg(format!(
            "while [ ! -e '{}' ] && [ -d '{}' ]; do sleep 0.005; done",
            go.display(),
            dir.display()
        ))
        .current_dir(dir)
        .spawn()
        .unwrap();
    until("the holder", || queue_len(c, dir, &session) == 1);
    let mut procs: Vec<_> = (0..n)
        .map(|_| {
            Command::new(&c.sessionlock)
                .args(["prompt", "-q", &session, "--", "true"])
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    until("everyone queued", || queue_len(c, dir, &session) == n + 1);
    fs::write(&go, "").unwrap();
    holder.wait().unwrap();
    let started = Instant::now();
    for p in &mut procs {
        assert!(p.wait().unwrap().success());
    }
    started.elapsed().as_secs_f64() * 1e3
}

/// Footprint (5.): the peak resident memory of one wrapper, as it reports it
/// (`SESSIONLOCK_BENCH_RSS`: `VmHWM` of its own address space; the `wait4` figure would count
/// the memory of whoever started it too), and the binary's size.
pub fn footprint(c: &Config, dir: &Path) -> Vec<Row> {
    let report = dir.join("rss");
    let mut peaks = Vec::new();
    for (label, args) in [
        ("run -- true", &["run", "s.jsonl", "--", "true"][..]),
        (
            "prompt --append",
            &["prompt", "--append", "m.jsonl", "--", "echo", "{\"r\":1}"][..],
        ),
    ] {
        let _ = fs::remove_file(&report);
        let status = run_quiet(
            Command::new(&c.sessionlock)
                .args(args)
                .env("SESSIONLOCK_BENCH_RSS", &report)
                .current_dir(dir),
        );
        assert!(status.success());
        let text = fs::read_to_string(&report).unwrap_or_default();
        let kib: f64 = text
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        peaks.push(Row(
            format!("peak RSS of one wrapper ({label})"),
            format!("{:.2} MiB", kib / 1024.0),
        ));
    }
    let size = fs::metadata(&c.sessionlock).unwrap().len();
    peaks.push(Row(
        "binary size".into(),
        format!("{:.2} MiB", size as f64 / 1024.0 / 1024.0),
    ));
    peaks
}

/// Everything, in one run.
#[must_use]
pub fn run(c: &Config) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    Report {
        sections: vec![
            ("Uncontended overhead".into(), overhead(c, d)),
            ("Handoff".into(), handoff(c, d)),
            ("Fairness".into(), fairness(c, d)),
            ("Scale".into(), scale(c, d)),
            ("Footprint".into(), footprint(c, d)),
        ],
    }
}
