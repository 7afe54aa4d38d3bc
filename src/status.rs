//! `status`: who holds the write lock, the prompt turns in order, other live wrappers, the fence
//! state and anything found wrong; as text or as one JSON object with stable field names.
//!
//! It only reads: dead entries are reported, and reaped by the next wrapper that meets them.

use std::path::Path;

use serde::Serialize;

use crate::commit;
use crate::exit::Failure;
use crate::fence::{Fingerprint, Tracker};
use crate::key;
use crate::queue::{Queue, Record};
use crate::sidecar::{self, Sidecar};

/// The whole report (`status --json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct Report {
    pub session: String,
    pub sidecar: String,
    pub sidecar_exists: bool,
    pub file: FileView,
    pub lock: LockView,
    /// Prompt turns, first come first served.
    pub queue: Vec<TurnView>,
    /// Live wrappers holding no turn (`run`, `idle-wait`).
    pub others: Vec<TurnView>,
    pub fence: Option<FenceView>,
    /// Output not committed (and tails moved by `--repair`), oldest first.
    pub kept: Vec<KeptView>,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct KeptView {
    pub path: String,
    pub ticket: Option<u64>,
    /// `invalid`, `command-failed`, `takeover`, `write-failed`, `incomplete-session`,
    /// `lock-timeout`, `fence-unreadable`, `not-committed`, `session-tail` (moved by `--repair`)
    /// or `abandoned` (captured by a wrapper that died).
    pub reason: String,
    pub size: u64,
    pub modified_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct FileView {
    pub exists: bool,
    pub size: u64,
}

#[derive(Debug, Serialize)]
pub struct LockView {
    pub held: bool,
    pub holder: Option<HolderView>,
}

#[derive(Debug, Serialize)]
pub struct HolderView {
    pub pid: u32,
    pub mode: String,
    pub ticket: Option<u64>,
    pub since_ms: u64,
    pub held_ms: u64,
    pub command: String,
}

#[derive(Debug, Serialize)]
pub struct TurnView {
    pub ticket: u64,
    pub pid: Option<u32>,
    pub mode: Option<String>,
    /// `active` (its turn now), `waiting`, or `dead` (its owner died; to be reaped).
    pub state: &'static str,
    pub joined_ms: Option<u64>,
    pub age_ms: Option<u64>,
    pub command: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FenceView {
    pub generation: u64,
    pub outside_generation: u64,
    pub outside_changes: u64,
    /// The file is still as last recorded (no outside change since anyone looked).
    pub in_sync: bool,
}

/// Print the status of `input` to stdout; exit 0 also when there is no sidecar yet.
pub fn show(input: &Path, json: bool) -> Result<u8, Failure> {
    let report = collect(input)?;
    if json {
        let text = serde_json::to_string_pretty(&report).expect("a report always serializes");
        println!("{text}");
    } else {
        print!("{}", render(&report));
    }
    Ok(0)
}

/// Gather the report without changing anything.
pub fn collect(input: &Path) -> Result<Report, Failure> {
    let key = key::resolve(input)?;
    let session = key.path();
    let fingerprint = Fingerprint::of(session)
        .map_err(|e| Failure::io("cannot read the session file", &e, session))?;
    let located = Sidecar::locate(&key);
    let mut report = Report {
        session: session.to_string_lossy().into_owned(),
        sidecar: located.dir().to_string_lossy().into_owned(),
        sidecar_exists: false,
        file: FileView {
            exists: fingerprint.exists,
            size: fingerprint.size,
        },
        lock: LockView {
            held: false,
            holder: None,
        },
        queue: Vec::new(),
        others: Vec::new(),
        fence: None,
        kept: Vec::new(),
        problems: Vec::new(),
    };
    let Some(sidecar) = Sidecar::existing(&key)? else {
        return Ok(report);
    };
    report.sidecar_exists = true;
    let queue = Queue::new(&sidecar);
    // Every ticket probe under the queue lock: none races with a ticket's creation or reaping.
    queue.inspect(|turns, findings| {
        if findings.unreadable_queue {
            report.problems.push(
                "the queue file is missing or unreadable; the next prompt rebuilds it from the \
                 live tickets"
                    .into(),
            );
        }
        if findings.missing_ticket_dir {
            report
                .problems
                .push("the ticket directory is missing".into());
        }
        add_tickets(&mut report, &queue, &turns.turns);
        add_holder(&mut report, &sidecar, &queue);
        add_kept(&mut report, &sidecar, &queue);
    });
    check_layout(&mut report, &sidecar);
    if let Some(state) = Tracker::new(&sidecar, session).load() {
        report.fence = Some(FenceView {
            generation: state.generation,
            outside_generation: state.outside_generation,
            outside_changes: state.outside_changes,
            in_sync: state.fingerprint == fingerprint,
        });
    }
    Ok(report)
}

/// The queue in order, and the live wrappers holding no turn; dead ones become problems.
fn add_tickets(report: &mut Report, queue: &Queue, turns: &[u64]) {
    let view = |id: u64, record: Option<Record>, state: &'static str| TurnView {
        ticket: id,
        pid: record.as_ref().map(|r| r.pid),
        mode: record.as_ref().map(|r| r.mode.clone()),
        state,
        joined_ms: record.as_ref().map(|r| r.joined_ms),
        age_ms: record
            .as_ref()
            .map(|r| sidecar::now_ms().saturating_sub(r.joined_ms)),
        command: record.map(|r| r.command),
    };
    let mut active_seen = false;
    for &id in turns {
        let state = if !queue.is_alive(id) {
            "dead"
        } else if active_seen {
            "waiting"
        } else {
            active_seen = true;
            "active"
        };
        if state == "dead" {
            report.problems.push(format!(
                "turn {id} is dead (its owner died); the next prompt reaps it"
            ));
        }
        report.queue.push(view(id, queue.read_record(id), state));
    }
    for id in queue.ticket_ids() {
        if turns.contains(&id) {
            continue;
        }
        let record = queue.read_record(id);
        if queue.is_alive(id) {
            // A prompt that has a ticket but has not joined yet is about to: not "other".
            if record.as_ref().is_some_and(|r| r.mode != "prompt") {
                report.others.push(view(id, record, "active"));
            }
        } else {
            report
                .problems
                .push(format!("ticket {id} is stale (its owner died)"));
        }
    }
}

/// The write lock's holder, if its ticket proves it alive.
fn add_holder(report: &mut Report, sidecar: &Sidecar, queue: &Queue) {
    if let Some(holder) = sidecar.read_holder() {
        let alive = holder.ticket.is_some_and(|t| queue.is_alive(t));
        if alive {
            report.lock = LockView {
                held: true,
                holder: Some(HolderView {
                    held_ms: sidecar::now_ms().saturating_sub(holder.since_ms),
                    pid: holder.pid,
                    mode: holder.mode,
                    ticket: holder.ticket,
                    since_ms: holder.since_ms,
                    command: holder.command,
                }),
            };
        } else {
            report.problems.push(format!(
                "a stale holder record names pid {} ({}), which is gone",
                holder.pid, holder.mode
            ));
        }
    }
}

/// Anything in the sidecar that is not of the kind it should be (and will be refused).
fn check_layout(report: &mut Report, sidecar: &Sidecar) {
    let dirs = [crate::queue::TICKETS, commit::OUT, commit::KEPT];
    let files = [
        crate::sidecar::LOCK,
        crate::sidecar::HOLDER,
        crate::queue::QUEUE,
        crate::queue::QUEUE_LOCK,
        crate::fence::STATE,
    ];
    for (names, want_dir) in [(&dirs[..], true), (&files[..], false)] {
        for name in names {
            let Ok(meta) = std::fs::symlink_metadata(sidecar.path(name)) else {
                continue;
            };
            let right = if want_dir {
                meta.is_dir()
            } else {
                meta.is_file()
            };
            if !right {
                let want = if want_dir {
                    "a directory"
                } else {
                    "a regular file"
                };
                report.problems.push(format!(
                    "{name} in the sidecar is not {want}; wrappers refuse to use it"
                ));
            }
        }
    }
}

/// Output kept in `kept/`, and captures in `out/` whose wrapper died.
fn add_kept(report: &mut Report, sidecar: &Sidecar, queue: &Queue) {
    let list = |dir: &str| -> Vec<(String, std::fs::Metadata, std::path::PathBuf)> {
        std::fs::read_dir(sidecar.path(dir))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let meta = e.metadata().ok()?;
                        let name = e.file_name().to_string_lossy().into_owned();
                        meta.is_file().then(|| (name, meta, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let modified = |m: &std::fs::Metadata| {
        m.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    };
    for (name, meta, path) in list(commit::KEPT) {
        let stem = name.split('.').next().unwrap_or_default();
        let (ticket, reason) = stem.split_once('-').unwrap_or((stem, ""));
        report.kept.push(KeptView {
            path: path.to_string_lossy().into_owned(),
            ticket: ticket.parse().ok(),
            reason: reason.to_owned(),
            size: meta.len(),
            modified_ms: modified(&meta),
        });
    }
    for (ticket, path) in commit::captures(sidecar) {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        // An empty one is simply removed by the next wrapper: nothing to report.
        if meta.is_file() && meta.len() > 0 && !queue.is_alive(ticket) {
            report.kept.push(KeptView {
                path: path.to_string_lossy().into_owned(),
                ticket: Some(ticket),
                reason: "abandoned".into(),
                size: meta.len(),
                modified_ms: modified(&meta),
            });
        }
    }
    report.kept.sort_by_key(|k| k.modified_ms);
}

/// The text form of a report.
fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let size = if r.file.exists {
        format!("{} bytes", r.file.size)
    } else {
        "does not exist yet".into()
    };
    let _ = writeln!(out, "session:    {} ({size})", r.session);
    if !r.sidecar_exists {
        let _ = writeln!(
            out,
            "sidecar:    {} (none yet: nothing has locked this session)",
            r.sidecar
        );
        return out;
    }
    let _ = writeln!(out, "sidecar:    {}", r.sidecar);
    match &r.lock.holder {
        Some(h) => {
            let ticket = h
                .ticket
                .map(|t| format!(", ticket {t}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "write lock: held by pid {} ({}{ticket}) for {}: {}",
                h.pid,
                h.mode,
                seconds(h.held_ms),
                h.command
            );
        }
        None => {
            let _ = writeln!(out, "write lock: free");
        }
    }
    let _ = writeln!(out, "queue:      {} turn(s)", r.queue.len());
    for (i, t) in r.queue.iter().enumerate() {
        let _ = writeln!(out, "  {}. {}", i + 1, turn_line(t));
    }
    if !r.others.is_empty() {
        let _ = writeln!(out, "others:     {} running without a turn", r.others.len());
        for t in &r.others {
            let _ = writeln!(out, "  - {}", turn_line(t));
        }
    }
    match &r.fence {
        Some(f) => {
            let outside = if f.outside_changes == 0 {
                "no outside change seen".to_owned()
            } else {
                format!(
                    "last outside change at generation {} ({} in all)",
                    f.outside_generation, f.outside_changes
                )
            };
            let sync = if f.in_sync {
                "file as recorded"
            } else {
                "file changed since recorded"
            };
            let _ = writeln!(
                out,
                "fence:      generation {}; {outside}; {sync}",
                f.generation
            );
        }
        None => {
            let _ = writeln!(out, "fence:      no state recorded yet");
        }
    }
    if !r.kept.is_empty() {
        let _ = writeln!(out, "kept:       {} output(s) not committed", r.kept.len());
        for k in &r.kept {
            let _ = writeln!(out, "  - {} ({}, {} bytes)", k.path, k.reason, k.size);
        }
    }
    if r.problems.is_empty() {
        let _ = writeln!(out, "problems:   none");
    } else {
        for p in &r.problems {
            let _ = writeln!(out, "problem:    {p}");
        }
    }
    out
}

fn turn_line(t: &TurnView) -> String {
    format!(
        "ticket {:<5} pid {:<8} {:<10} {:<8} {:>6}  {}",
        t.ticket,
        t.pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
        t.mode.as_deref().unwrap_or("?"),
        t.state,
        t.age_ms.map_or_else(|| "?".to_owned(), seconds),
        t.command.as_deref().unwrap_or("?")
    )
}

fn seconds(ms: u64) -> String {
    format!("{}s", ms / 1000)
}
