//! The hot path's parser: the common command lines of `run`, `prompt` and `idle-wait` read
//! without building clap's command tree (a third of the wrapper's start-up, see BENCHMARKS.md).
//! Anything else (help, an error, an option it does not know, an option set in the
//! environment) goes to clap, which stays the reference: a test parses the same lines both ways.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{
    Cli, Command, CommitOpts, CoordOpts, FenceOpts, IdleWaitArgs, LockOpts, PromptArgs, RunArgs,
    Target, parse_duration,
};

/// The environment variables that set options: any of them set sends the line to clap.
const OPTION_VARS: &[&str] = &[
    "SESSIONLOCK_TIMEOUT",
    "SESSIONLOCK_NONBLOCK",
    "SESSIONLOCK_CONFLICT_EXIT_CODE",
    "SESSIONLOCK_TURN_TIMEOUT",
    "SESSIONLOCK_TURN",
    "SESSIONLOCK_MAX_HOLD",
    "SESSIONLOCK_GRACE",
    "SESSIONLOCK_QUIET",
    "SESSIONLOCK_VERBOSE",
    "SESSIONLOCK_EVENTS_FILE",
    "SESSIONLOCK_EVENTS_FD",
    "SESSIONLOCK_APPEND",
    "SESSIONLOCK_TEE",
    "SESSIONLOCK_REPAIR",
    "SESSIONLOCK_STRICT",
    "SESSIONLOCK_COORD",
    "SESSIONLOCK_COORD_SCOPE",
    "SESSIONLOCK_LEASE",
];

/// The parsed line, or `None`: ask clap.
#[must_use]
pub fn parse(args: &[OsString]) -> Option<Cli> {
    if OPTION_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
        return None;
    }
    parse_args(args)
}

#[allow(clippy::too_many_lines)]
fn parse_args(args: &[OsString]) -> Option<Cli> {
    let mode = args.get(1)?.to_str()?;
    if !matches!(mode, "run" | "prompt" | "idle-wait") {
        return None;
    }
    let mut lock = LockOpts {
        timeout: Duration::from_secs(60),
        nonblock: false,
        conflict_exit_code: crate::exit::BUSY,
        max_hold: None,
        grace: Duration::from_secs(10),
        quiet: false,
        verbose: false,
        events_file: None,
        events_fd: None,
        coord: CoordOpts {
            coord: None,
            coord_scope: None,
            lease: Duration::from_secs(10),
        },
    };
    let mut commit = CommitOpts {
        append: false,
        tee: false,
        repair: false,
    };
    let (mut strict, mut turn) = (false, false);
    let mut turn_timeout = None;
    let mut rest = args[2..].iter();
    // clap refuses an option given twice: so does this (by asking clap).
    let mut seen: Vec<&str> = Vec::new();
    let session = loop {
        let arg = rest.next()?;
        let text = arg.to_str()?;
        if !text.starts_with('-') || text == "-" {
            if text.is_empty() {
                return None;
            }
            break PathBuf::from(arg);
        }
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (text, None),
        };
        let canonical = canonical_name(name)?;
        if seen.contains(&canonical) {
            return None;
        }
        seen.push(canonical);
        // A value that is empty or looks like an option: clap says what is wrong with it.
        let mut value = || -> Option<&str> {
            let v = match inline {
                Some(v) => v,
                None => rest.next()?.to_str()?,
            };
            (!v.is_empty() && !v.starts_with('-')).then_some(v)
        };
        match (name, mode) {
            ("-n" | "--nonblock", _) if inline.is_none() => lock.nonblock = true,
            ("-q" | "--quiet", _) if inline.is_none() => lock.quiet = true,
            ("-v" | "--verbose", _) if inline.is_none() => lock.verbose = true,
            ("--append", _) if inline.is_none() => commit.append = true,
            ("--tee", _) if inline.is_none() => commit.tee = true,
            ("--repair", _) if inline.is_none() => commit.repair = true,
            ("--strict", "prompt" | "idle-wait") if inline.is_none() => strict = true,
            ("--turn", "run") if inline.is_none() => turn = true,
            ("-t" | "-w" | "--timeout" | "--wait", _) => {
                lock.timeout = parse_duration(value()?).ok()?;
            }
            ("--turn-timeout", "run" | "prompt") => {
                turn_timeout = Some(parse_duration(value()?).ok()?);
            }
            ("-E" | "--conflict-exit-code", _) => {
                lock.conflict_exit_code = value()?.parse().ok()?;
            }
            ("--max-hold", _) => {
                lock.max_hold = Some(parse_duration(value()?).ok().filter(|d| !d.is_zero())?);
            }
            ("--grace" | "--kill-after", _) => lock.grace = parse_duration(value()?).ok()?,
            ("--events-file", _) => lock.events_file = Some(PathBuf::from(value()?)),
            ("--events-fd", _) => lock.events_fd = Some(value()?.parse().ok()?),
            _ => return None,
        }
    };
    // What clap would refuse goes to clap, which says why.
    let conflicts = (lock.quiet && lock.verbose)
        || ((commit.tee || commit.repair) && !commit.append)
        || (lock.events_file.is_some() && lock.events_fd.is_some());
    if conflicts {
        return None;
    }
    let mut command: Vec<OsString> = rest.cloned().collect();
    if command.first().map(OsString::as_os_str) == Some(OsStr::new("--")) {
        command.remove(0);
    } else if command.first()?.to_str().is_none_or(|c| c.starts_with('-')) {
        return None;
    }
    command.first()?;
    let target = Target { session, command };
    Some(assemble(
        mode,
        lock,
        commit,
        strict,
        turn,
        turn_timeout,
        target,
    ))
}

/// One name for each option, whatever its spelling.
fn canonical_name(name: &str) -> Option<&'static str> {
    Some(match name {
        "-n" | "--nonblock" => "nonblock",
        "-q" | "--quiet" => "quiet",
        "-v" | "--verbose" => "verbose",
        "--append" => "append",
        "--tee" => "tee",
        "--repair" => "repair",
        "--strict" => "strict",
        "--turn" => "turn",
        "-t" | "-w" | "--timeout" | "--wait" => "timeout",
        "--turn-timeout" => "turn-timeout",
        "-E" | "--conflict-exit-code" => "conflict-exit-code",
        "--max-hold" => "max-hold",
        "--grace" | "--kill-after" => "grace",
        "--events-file" => "events-file",
        "--events-fd" => "events-fd",
        _ => return None,
    })
}

/// The `Cli` clap would have made of these parts.
fn assemble(
    mode: &str,
    lock: LockOpts,
    commit: CommitOpts,
    strict: bool,
    turn: bool,
    turn_timeout: Option<Duration>,
    target: Target,
) -> Cli {
    let turn_timeout = turn_timeout.unwrap_or(Duration::from_secs(600));
    let fence = FenceOpts { strict };
    let command = match mode {
        "run" => Command::Run(RunArgs {
            lock,
            turn,
            turn_timeout,
            commit,
            target,
        }),
        "prompt" => Command::Prompt(PromptArgs {
            lock,
            turn_timeout,
            fence,
            commit,
            target,
        }),
        _ => Command::IdleWait(IdleWaitArgs {
            lock,
            fence,
            commit,
            target,
        }),
    };
    Cli { command }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn line(text: &str) -> Vec<OsString> {
        std::iter::once("sessionlock")
            .chain(text.split(' '))
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn the_fast_path_reads_every_line_as_clap_does() {
        let lines = [
            "run s.jsonl -- true",
            "run s.jsonl true -x",
            "run -n -q --append --tee --repair s.jsonl -- sh -c x",
            "run --turn --turn-timeout 5 s.jsonl -- true",
            "run -t 0.5 -E 9 --max-hold 2s --grace 1 s.jsonl -- true",
            "run -w 5 --kill-after=3s --events-fd 7 s.jsonl -- true -- x",
            "prompt --strict --append --timeout=1m d/s.jsonl -- a b c",
            "prompt -v --turn-timeout 10m --events-file ev s.jsonl -- true",
            "idle-wait --strict --wait 2 ../s.jsonl -- sleep 1",
            "prompt --nonblock --quiet --conflict-exit-code 200 s.jsonl -- true",
        ];
        for text in lines {
            let args = line(text);
            let fast = parse_args(&args).unwrap_or_else(|| panic!("not read: {text}"));
            let slow = Cli::try_parse_from(&args).unwrap();
            assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{text}");
        }
    }

    #[test]
    fn anything_unusual_goes_to_clap() {
        for text in [
            "run --help",
            "run -q -v s.jsonl -- true",
            "run --tee s.jsonl -- true",
            "run --strict s.jsonl -- true",
            "prompt --turn s.jsonl -- true",
            "run --max-hold 0 s.jsonl -- true",
            "run -t nonsense s.jsonl -- true",
            "run s.jsonl",
            "run s.jsonl --",
            "run s.jsonl -n true",
            "run -nq s.jsonl -- true",
            "status s.jsonl",
            "run --events-file a --events-fd 3 s.jsonl -- true",
            "run -n -n s.jsonl -- true",
            "run -t 1 -w 2 s.jsonl -- true",
            "run --grace 1 --kill-after 2 s.jsonl -- true",
            "run --events-file --append s.jsonl -- true",
            "run --events-file= s.jsonl -- true",
            "run -E -1 s.jsonl -- true",
        ] {
            assert!(parse_args(&line(text)).is_none(), "{text}");
        }
    }
}
