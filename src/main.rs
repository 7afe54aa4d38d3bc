//! `sessionlock`: serialize everything that touches one JSONL session file, across processes.

mod child;
mod cli;
mod commit;
mod config;
mod coord;
mod docs;
mod events;
mod exit;
mod fastpath;
mod fault;
mod fence;
mod gc;
mod key;
mod lifecycle;
mod netfs;
mod sidecar;
mod signal;
mod status;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use crate::cli::{Cli, Command};
use crate::config::{Config, Mode};
use crate::exit::Failure;

fn main() -> ExitCode {
    // The docs generator is no subcommand: completions must not offer it.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == "generate-docs" {
        return match docs::generate(std::path::Path::new(&args[2])) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                exit::say(&format!("{err:#}"));
                ExitCode::from(exit::Kind::Software.code())
            }
        };
    }
    let cli = match fastpath::parse(&args) {
        Some(cli) => cli,
        None => match Cli::try_parse_from(&args) {
            Ok(cli) => cli,
            Err(err) => return usage_error(&err),
        },
    };
    let outcome = run(cli);
    commit::flush_tee();
    report_peak_memory();
    match outcome {
        Ok(code) => exit::finish(code),
        Err(err) => {
            if let Some(failure) = err.downcast_ref::<Failure>() {
                exit::report(failure);
                exit::finish(failure.code())
            } else {
                exit::say(&format!("{err:#}"));
                exit::finish(exit::Kind::Software.code())
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => {
            let config = Config::new(
                Mode::Run,
                &args.lock,
                None,
                args.turn.then_some(args.turn_timeout),
                &args.commit,
                args.target,
            )?;
            Ok(lifecycle::execute(&config)?)
        }
        Command::Prompt(args) => {
            let config = Config::new(
                Mode::Prompt,
                &args.lock,
                Some(&args.fence),
                Some(args.turn_timeout),
                &args.commit,
                args.target,
            )?;
            Ok(lifecycle::execute(&config)?)
        }
        Command::IdleWait(args) => {
            let config = Config::new(
                Mode::IdleWait,
                &args.lock,
                Some(&args.fence),
                None,
                &args.commit,
                args.target,
            )?;
            Ok(lifecycle::execute(&config)?)
        }
        Command::Status(args) => Ok(status::show(&args.session, args.json, &args.coord)?),
        Command::Gc(args) => Ok(gc::collect(&args.dir, args.kept)?),
    }
}

/// For the benchmark harness: with `SESSIONLOCK_BENCH_RSS=FILE`, append this process's peak
/// resident memory (`VmHWM`, of its own address space: `wait4`'s figure also counts the memory
/// of whoever started it) to FILE.
fn report_peak_memory() {
    let Some(path) = std::env::var_os("SESSIONLOCK_BENCH_RSS") else {
        return;
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
    }
}

/// Help and version print as clap renders them; a usage error becomes one `sessionlock:` line.
fn usage_error(err: &clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::from(err.exit_code() as u8)
        }
        _ => {
            // clap's message spans lines (the missing argument is on the next one): join them.
            let rendered = err.render().to_string();
            let what: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            let what = what.join(" ");
            let what = what.strip_prefix("error: ").unwrap_or(&what);
            exit::say(&format!("{what} (see `sessionlock --help`)"));
            ExitCode::from(exit::USAGE)
        }
    }
}
