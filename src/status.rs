//! `status`: who holds the write lock, the prompt turns in order, other live wrappers, the fence
//! state and anything found wrong; as text or as one JSON object with stable field names.
//!
//! It only reads, and takes no lock: liveness comes from probing the lock file's byte-range
//! locks, names from the slot table.

use std::path::Path;

use serde::Serialize;

use crate::commit::{self, KeepReason};
use crate::coord::Activity;
use crate::coord::files::layout::{self, Loaded, Slot};
use crate::coord::files::lock::{self, Kind as LockKind, Range};
use crate::coord::files::{describe_holder, live_slots};
use crate::exit::Failure;
use crate::fence::Fingerprint;
use crate::key;
use crate::sidecar::{self, Sidecar};

/// The whole report (`status --json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct Report {
    pub session: String,
    pub sidecar: String,
    pub sidecar_exists: bool,
    /// `v2` (this version's one lock file), `v1` (an older sidecar, upgraded by the next
    /// wrapper) or `null` (no lock file yet).
    pub layout: Option<&'static str>,
    pub file: FileView,
    pub lock: LockView,
    /// Prompt turns, first come first served.
    pub queue: Vec<TurnView>,
    /// Live wrappers holding no turn (`run`, `idle-wait`).
    pub others: Vec<OtherView>,
    pub fence: Option<FenceView>,
    /// Output not committed (and tails moved by `--repair`), oldest first.
    pub kept: Vec<KeptView>,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct KeptView {
    pub path: String,
    /// The turn it came from: `EPOCH.TICKET`, `MODE.PID`, or a capture's id.
    pub label: Option<String>,
    pub reason: Option<&'static str>,
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
    /// `null` when the holder is unknown (a lock no wrapper recorded).
    pub pid: Option<u32>,
    /// `false` for a lock of another program (or of a wrapper of another user).
    pub sessionlock: bool,
    pub mode: Option<&'static str>,
    pub ticket: Option<String>,
    pub since_ms: Option<u64>,
    pub held_ms: Option<u64>,
    pub command: Option<String>,
    /// Only a shared (read) lock, as a reader holding the lock file would take.
    pub shared: bool,
}

/// A turn's place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnState {
    /// The first live turn: its window is open, or it is about to take or give back the lock.
    Active,
    /// Behind the active one.
    Waiting,
}

#[derive(Debug, Serialize)]
pub struct TurnView {
    pub ticket: u64,
    pub epoch: u64,
    /// `EPOCH.TICKET`, as the command sees it in `SESSIONLOCK_TICKET`.
    pub label: String,
    pub pid: Option<u32>,
    pub mode: Option<&'static str>,
    pub state: TurnState,
    /// What it does now: `waiting`, `locked`, `window`, `running`.
    pub activity: Option<Activity>,
    pub joined_ms: Option<u64>,
    pub age_ms: Option<u64>,
    pub command: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct OtherView {
    pub pid: u32,
    pub mode: &'static str,
    pub activity: Activity,
    pub since_ms: u64,
    pub age_ms: u64,
    pub command: String,
}

#[derive(Debug, Serialize)]
pub struct FenceView {
    pub generation: u64,
    pub outside_generation: u64,
    pub outside_changes: u64,
    /// The file is still as last recorded (no outside change since anyone looked).
    pub in_sync: bool,
    /// An append whose holder died before finishing it: the next holder rolls it back.
    pub unfinished_commit: Option<IntentView>,
}

#[derive(Debug, Serialize)]
pub struct IntentView {
    pub old_len: u64,
    pub new_len: u64,
}

/// One session of `status DIR`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub session: String,
    pub exists: bool,
    /// The write lock's holder (pid, when known), or null when it is free.
    pub holder: Option<HolderView>,
    pub queue: usize,
    pub others: usize,
    /// The age of the oldest live turn or wrapper, in milliseconds.
    pub oldest_age_ms: Option<u64>,
    pub kept: usize,
    pub problems: Vec<String>,
}

/// `status DIR`: every session with a sidecar in `dir`.
fn show_dir(dir: &Path, json: bool) -> Result<u8, Failure> {
    use std::fmt::Write;
    let mut sessions = Vec::new();
    for (session, _) in crate::gc::sidecars_in(dir)? {
        // One bad entry (a stranger's sidecar) is a problem of that entry; the rest go on.
        let r = match collect(&session) {
            Ok(r) => r,
            Err(failure) => {
                sessions.push(Summary {
                    session: session.to_string_lossy().into_owned(),
                    exists: session.exists(),
                    holder: None,
                    queue: 0,
                    others: 0,
                    oldest_age_ms: None,
                    kept: 0,
                    problems: vec![failure.to_string()],
                });
                continue;
            }
        };
        let oldest = r
            .queue
            .iter()
            .filter_map(|t| t.age_ms)
            .chain(r.others.iter().map(|o| o.age_ms))
            .max();
        sessions.push(Summary {
            session: r.session,
            exists: r.file.exists,
            holder: r.lock.holder,
            queue: r.queue.len(),
            others: r.others.len(),
            oldest_age_ms: oldest,
            kept: r.kept.len(),
            problems: r.problems,
        });
    }
    if json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "dir": dir.to_string_lossy(),
            "sessions": sessions,
        }))
        .expect("a summary always serializes");
        println!("{text}");
        return Ok(0);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} session(s) with a sidecar in {}",
        sessions.len(),
        dir.display()
    );
    for s in &sessions {
        let holder = match &s.holder {
            Some(h) => h.pid.map_or_else(
                || "held (unknown holder)".into(),
                |p| format!("held by pid {p}"),
            ),
            None => "free".to_owned(),
        };
        let oldest = s.oldest_age_ms.map(seconds).unwrap_or_default();
        let gone = if s.exists { "" } else { " (file gone)" };
        let _ = writeln!(
            out,
            "  {}{gone}: lock {holder}; {} turn(s), {} other(s){}{}{}",
            s.session,
            s.queue,
            s.others,
            if oldest.is_empty() {
                String::new()
            } else {
                format!(", oldest {oldest}")
            },
            if s.kept > 0 {
                format!(", {} kept", s.kept)
            } else {
                String::new()
            },
            if s.problems.is_empty() {
                String::new()
            } else {
                format!(", {} problem(s)", s.problems.len())
            },
        );
    }
    print!("{out}");
    Ok(0)
}

/// Print the status of `input` to stdout; exit 0 also when there is no sidecar yet. A
/// directory lists every session with a sidecar in it.
pub fn show(input: &Path, json: bool, coord: &crate::cli::CoordOpts) -> Result<u8, Failure> {
    if input.is_dir() {
        return show_dir(input, json);
    }
    let key = key::resolve(input)?;
    #[cfg(feature = "etcd")]
    if let Some(target) = crate::config::EtcdTarget::from_opts(coord, &key)? {
        let report = crate::coord::etcd::status(&target, key.path())?;
        let text = serde_json::to_string_pretty(&report).expect("a report always serializes");
        println!("{text}");
        return Ok(0);
    }
    crate::config::EtcdTarget::from_opts(coord, &key)?;
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
    let mut report = Report {
        session: session.to_string_lossy().into_owned(),
        sidecar: sidecar::locate(&key).to_string_lossy().into_owned(),
        sidecar_exists: false,
        layout: None,
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
    let Some(sidecar) = Sidecar::open(&key, false)? else {
        return Ok(report);
    };
    report.sidecar_exists = true;
    add_kept(&mut report, &sidecar);
    let file = match sidecar.open_lock(false) {
        Ok(file) => file,
        Err(failure) if !sidecar.has(sidecar::LOCK) => {
            drop(failure);
            return Ok(report);
        }
        Err(failure) => return Err(failure),
    };
    let lock_path = sidecar.path(sidecar::LOCK);
    let io = |e: std::io::Error| Failure::io("cannot read the lock file", &e, &lock_path);
    // Locks first, names second: a wrapper names its turn in its slot before it locks it, so
    // every lock seen here has its name in the table read after.
    let turns = Range::span(layout::TICKETS, layout::TICKETS + layout::TICKET_CAP);
    let turn_locks = lock::all_locked(&file, LockKind::Read, turns).map_err(io)?;
    let write_lock =
        lock::probe(&file, LockKind::Write, Range::byte(layout::WRITE_BYTE)).map_err(io)?;
    let slots = live_slots(&file).map_err(io)?;
    add_lock(&mut report, write_lock, &slots);
    let mut head = vec![0u8; 768];
    let got = std::os::unix::fs::FileExt::read_at(&file, &mut head, 0).map_err(io)?;
    head.truncate(got);
    let epoch = match layout::load(&head) {
        Loaded::Fresh => {
            let v1 = ["queue", "tickets", "holder", "state"]
                .iter()
                .any(|n| sidecar.has(n));
            report.layout = Some(if v1 { "v1" } else { "v2" });
            if v1 {
                report.problems.push(
                    "an older sessionlock (v1) left this sidecar; the next wrapper upgrades it \
                     when no older wrapper uses it"
                        .into(),
                );
            }
            None
        }
        Loaded::Damaged => {
            report.layout = Some("v2");
            report.problems.push(
                "the lock state is damaged; the next wrapper starts it afresh (windows open \
                 now will end in a takeover)"
                    .into(),
            );
            None
        }
        Loaded::Good { record, fell_back } => {
            report.layout = Some("v2");
            if fell_back {
                report.problems.push(
                    "the newer copy of the lock state is torn; the older one is in use".into(),
                );
            }
            let state = record.state;
            report.fence = Some(FenceView {
                generation: state.generation,
                outside_generation: state.outside_generation,
                outside_changes: state.outside_changes,
                in_sync: state.fingerprint == fingerprint,
                unfinished_commit: record.intent.map(|i| IntentView {
                    old_len: i.old_len,
                    new_len: i.new_len,
                }),
            });
            Some(record.epoch)
        }
    };
    add_turns(&mut report, turn_locks, &slots, epoch);
    Ok(report)
}

/// The write lock's holder: named by its slot, or unknown.
fn add_lock(report: &mut Report, write_lock: Option<lock::Conflict>, slots: &[(u32, Slot)]) {
    let Some(conflict) = write_lock else {
        return;
    };
    let slot = slots
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.write_since_ms != 0 && conflict.pid.is_none());
    let now = sidecar::now_ms();
    let holder = HolderView {
        pid: conflict
            .pid
            .map(|p| p as u32)
            .or_else(|| slot.map(|s| s.pid)),
        sessionlock: slot.is_some(),
        mode: slot.map(|s| s.mode.name()),
        ticket: slot.and_then(|s| s.turn).map(|(e, t)| format!("{e}.{t}")),
        since_ms: slot.map(|s| s.write_since_ms),
        held_ms: slot.map(|s| now.saturating_sub(s.write_since_ms)),
        command: slot.map(|s| s.command.clone()),
        shared: conflict.kind == LockKind::Read,
    };
    if slot.is_none() {
        report.problems.push(format!(
            "the write lock is held by {}",
            describe_holder(&conflict, None)
        ));
    }
    report.lock = LockView {
        held: true,
        holder: Some(holder),
    };
}

/// The queue in order (every live turn byte), and the live wrappers holding no turn.
fn add_turns(
    report: &mut Report,
    turn_locks: Vec<lock::Conflict>,
    slots: &[(u32, Slot)],
    epoch: Option<u64>,
) {
    let now = sidecar::now_ms();
    for conflict in turn_locks {
        if conflict.pid.is_some() || conflict.range.len != 1 {
            report.problems.push(format!(
                "the turn range is locked by {}",
                describe_holder(&conflict, None)
            ));
            continue;
        }
        let ticket = conflict.range.start - layout::TICKETS;
        let slot = slots
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.turn.is_some_and(|(_, t)| t == ticket));
        let state = if report.queue.is_empty() {
            TurnState::Active
        } else {
            TurnState::Waiting
        };
        let epoch = slot
            .and_then(|s| s.turn)
            .map(|(e, _)| e)
            .or(epoch)
            .unwrap_or(0);
        report.queue.push(TurnView {
            ticket,
            epoch,
            label: format!("{epoch}.{ticket}"),
            pid: slot.map(|s| s.pid),
            mode: slot.map(|s| s.mode.name()),
            state,
            activity: slot.map(|s| s.phase),
            joined_ms: slot.map(|s| s.start_ms),
            age_ms: slot.map(|s| now.saturating_sub(s.start_ms)),
            command: slot.map(|s| s.command.clone()),
        });
    }
    for (_, slot) in slots.iter().filter(|(_, s)| s.turn.is_none()) {
        report.others.push(OtherView {
            pid: slot.pid,
            mode: slot.mode.name(),
            activity: slot.phase,
            since_ms: slot.start_ms,
            age_ms: now.saturating_sub(slot.start_ms),
            command: slot.command.clone(),
        });
    }
}

/// Output kept in `kept/`, and captures in `out/` whose wrapper died.
fn add_kept(report: &mut Report, sidecar: &Sidecar) {
    let modified = |m: &std::fs::Metadata| {
        m.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    };
    if let Ok(entries) = std::fs::read_dir(sidecar.path(commit::KEPT)) {
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = KeepReason::parse_name(&name);
            report.kept.push(KeptView {
                path: entry.path().to_string_lossy().into_owned(),
                label: parsed.as_ref().map(|(l, _)| l.clone()),
                reason: parsed.map(|(_, r)| r.as_str()),
                size: meta.len(),
                modified_ms: modified(&meta),
            });
        }
    }
    for path in commit::abandoned(sidecar) {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        // An empty one is simply removed by the next commit: nothing to report.
        if meta.len() > 0 {
            report.kept.push(KeptView {
                label: path.file_stem().map(|s| s.to_string_lossy().into_owned()),
                path: path.to_string_lossy().into_owned(),
                reason: Some(KeepReason::Abandoned.as_str()),
                size: meta.len(),
                modified_ms: modified(&meta),
            });
        }
    }
    report.kept.sort_by_key(|k| k.modified_ms);
}

/// A name from the slot table, safe to print: control characters escaped.
fn clean(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
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
        Some(h) if h.sessionlock => {
            let ticket = h
                .ticket
                .as_ref()
                .map(|t| format!(", turn {t}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "write lock: held by pid {} ({}{ticket}) for {}: {}",
                h.pid.unwrap_or(0),
                h.mode.unwrap_or("?"),
                seconds(h.held_ms.unwrap_or(0)),
                clean(h.command.as_deref().unwrap_or("?"))
            );
        }
        Some(h) => {
            let who = h
                .pid
                .map_or_else(|| "an unknown holder".to_owned(), |p| format!("pid {p}"));
            let _ = writeln!(out, "write lock: held by {who} (not a sessionlock wrapper)");
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
            let _ = writeln!(
                out,
                "  - pid {:<8} {:<10} {:<8} {:>6}  {}",
                t.pid,
                t.mode,
                activity_name(Some(t.activity)),
                seconds(t.age_ms),
                clean(&t.command)
            );
        }
    }
    render_fence_and_kept(r, &mut out);
    if r.problems.is_empty() {
        let _ = writeln!(out, "problems:   none");
    } else {
        for p in &r.problems {
            let _ = writeln!(out, "problem:    {p}");
        }
    }
    out
}

/// The fence and kept-output lines of the text form.
fn render_fence_and_kept(r: &Report, out: &mut String) {
    use std::fmt::Write;
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
            if let Some(i) = &f.unfinished_commit {
                let _ = writeln!(
                    out,
                    "commit:     unfinished ({} -> {} bytes); the next holder rolls it back",
                    i.old_len, i.new_len
                );
            }
        }
        None => {
            let _ = writeln!(out, "fence:      no state recorded yet");
        }
    }
    if !r.kept.is_empty() {
        let _ = writeln!(out, "kept:       {} output(s) not committed", r.kept.len());
        for k in &r.kept {
            let _ = writeln!(
                out,
                "  - {} ({}, {} bytes)",
                k.path,
                k.reason.unwrap_or("?"),
                k.size
            );
        }
    }
}

fn turn_line(t: &TurnView) -> String {
    format!(
        "turn {:<8} pid {:<8} {:<8} {:<8} {:>6}  {}",
        t.label,
        t.pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
        match t.state {
            TurnState::Active => "active",
            TurnState::Waiting => "waiting",
        },
        activity_name(t.activity),
        t.age_ms.map_or_else(|| "?".to_owned(), seconds),
        clean(t.command.as_deref().unwrap_or("(unknown holder)"))
    )
}

fn activity_name(a: Option<Activity>) -> &'static str {
    match a {
        Some(Activity::Waiting) => "waiting",
        Some(Activity::Locked) => "locked",
        Some(Activity::Window) => "window",
        Some(Activity::Running) => "running",
        None => "?",
    }
}

fn seconds(ms: u64) -> String {
    format!("{}s", ms / 1000)
}
