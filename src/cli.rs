//! The command line as clap types: what a user can type, with help text. Resolving it into a
//! runnable configuration is `config`'s job.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueHint};

/// What the wrapper says where, after the exit codes.
pub const OUTPUT_RULES: &str = "Every failure prints exactly one line `sessionlock: <what \
happened> (<file>)` on stderr (usage errors name no file). The wrapper writes nothing to stdout: \
only the command's output goes there (copied by --tee), and status prints its report there.";

/// The sidecar's files, for `--help` and the man page's FILES (S is the sidecar).
pub const FILES: &[(&str, &str)] = &[
    (
        "S",
        "<dir>/.<name>.sessionlock/, the sidecar of the session file <dir>/<name>, created on \
         first use with modes that follow the session file's; refused if someone other than \
         you or the session file's owner owns it",
    ),
    (
        "S/lock",
        "the one lock file: byte-range locks for the write lock, each wrapper's slot and each \
         prompt turn (freed by the kernel when their owner dies), the state record and the slot \
         table written in place; never renamed or deleted while in use",
    ),
    (
        "S/out/ID.jsonl",
        "--append: a command's output while it is captured",
    ),
    (
        "S/kept/",
        "output not committed (LABEL-REASON.jsonl) and tails moved by --repair",
    ),
];

/// The environment, for `--help` and the man page's ENVIRONMENT.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    ("SESSIONLOCK_TIMEOUT", "the default of --timeout (-t, -w)"),
    ("SESSIONLOCK_NONBLOCK", "--nonblock when set to 1 or true"),
    (
        "SESSIONLOCK_CONFLICT_EXIT_CODE",
        "the default of --conflict-exit-code (-E)",
    ),
    ("SESSIONLOCK_TURN_TIMEOUT", "the default of --turn-timeout"),
    ("SESSIONLOCK_TURN", "run --turn when set to 1 or true"),
    ("SESSIONLOCK_MAX_HOLD", "the default of --max-hold"),
    ("SESSIONLOCK_GRACE", "the default of --grace (--kill-after)"),
    ("SESSIONLOCK_QUIET", "--quiet when set to 1 or true"),
    ("SESSIONLOCK_VERBOSE", "--verbose when set to 1 or true"),
    ("SESSIONLOCK_EVENTS_FILE", "the default of --events-file"),
    ("SESSIONLOCK_EVENTS_FD", "the default of --events-fd"),
    ("SESSIONLOCK_APPEND", "--append when set to 1 or true"),
    ("SESSIONLOCK_TEE", "--tee when set to 1 or true"),
    ("SESSIONLOCK_REPAIR", "--repair when set to 1 or true"),
    ("SESSIONLOCK_STRICT", "--strict when set to 1 or true"),
    ("SESSIONLOCK_JSON", "status --json when set to 1 or true"),
    ("SESSIONLOCK_GC_KEPT", "gc --kept when set to 1 or true"),
    (
        "SESSIONLOCK_COORD",
        "the default of --coord (etcd://HOST:PORT,...)",
    ),
    ("SESSIONLOCK_COORD_SCOPE", "the default of --coord-scope"),
    ("SESSIONLOCK_LEASE", "the default of --lease"),
    (
        "SESSIONLOCK_SESSION",
        "given to the command: the canonical session path",
    ),
    (
        "SESSIONLOCK_MODE",
        "given to the command: run, prompt or idle-wait",
    ),
    (
        "SESSIONLOCK_PID",
        "given to the command: the wrapper's pid (a nested call on the same session that \
         would wait for this wrapper fails at once)",
    ),
    (
        "SESSIONLOCK_TICKET",
        "given to the command when it holds a turn (prompt, run --turn): its turn as \
         EPOCH.TICKET, unique while the lock file lives, and ordered like the turns",
    ),
];

/// The text after `--help`: the three tables.
#[must_use]
pub fn after_long_help() -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut table = |title: &str, rows: &[(&str, &str)]| {
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let _ = writeln!(out, "{title}");
        for (key, text) in rows {
            let _ = writeln!(out, "  {key:<width$}  {text}");
        }
        out.push('\n');
    };
    let codes: Vec<(&str, &str)> = crate::exit::TABLE
        .iter()
        .map(|r| (r.code, r.meaning))
        .collect();
    table("EXIT STATUS", &codes);
    table("FILES (S is the sidecar)", FILES);
    table("ENVIRONMENT", ENVIRONMENT);
    out.push_str(OUTPUT_RULES);
    out
}

/// Serialize everything that touches one JSONL session file, across processes.
///
/// Wrap any command in a mode: `run` holds the write lock for the whole command; `prompt` queues
/// for a first-come-first-served turn and releases the lock while the command (a provider call)
/// runs, then checks that nobody changed the file from outside; `idle-wait` waits with a fence
/// and no turn. Every spelling of one file (relative, absolute, through symlinks) is one lock.
#[derive(Parser, Debug)]
#[command(
    name = "sessionlock",
    version,
    after_long_help = after_long_help(),
    propagate_version = true,
    disable_help_subcommand = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Hold the write lock for the whole command (appending a message, rewriting in a compaction)
    Run(RunArgs),
    /// Take a first-come-first-served prompt turn, release the write lock while the command runs
    /// (the provider call), then take it back and check nobody changed the file from outside
    Prompt(PromptArgs),
    /// Like prompt but holding no turn: wait for something (a compaction, a timer) with a fence
    IdleWait(IdleWaitArgs),
    /// Show who holds the write lock, the queue of prompt turns and the fence state
    Status(StatusArgs),
    /// Remove the sidecars in a directory whose session file is gone and which nobody uses
    /// (kept outputs stay unless --kept)
    Gc(GcArgs),
}

/// Options of every mode that takes the write lock.
#[derive(Args, Debug, Clone)]
pub struct LockOpts {
    /// Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds,
    /// as in flock -w)
    #[arg(
        short = 't',
        long,
        visible_short_alias = 'w',
        visible_alias = "wait",
        value_name = "DURATION",
        default_value = "60s",
        env = "SESSIONLOCK_TIMEOUT",
        value_parser = parse_duration
    )]
    pub timeout: Duration,

    /// Give up at once if the write lock (or, for prompt, the turn) is busy
    #[arg(short = 'n', long, env = "SESSIONLOCK_NONBLOCK", value_parser = clap::builder::BoolishValueParser::new())]
    pub nonblock: bool,

    /// Exit status when the lock (or turn) is busy or not obtained in time
    #[arg(
        short = 'E',
        long,
        value_name = "N",
        default_value_t = crate::exit::BUSY,
        env = "SESSIONLOCK_CONFLICT_EXIT_CODE"
    )]
    pub conflict_exit_code: u8,

    /// Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL
    /// after --grace
    #[arg(
        long,
        value_name = "DURATION",
        env = "SESSIONLOCK_MAX_HOLD",
        value_parser = parse_positive_duration
    )]
    pub max_hold: Option<Duration>,

    /// With --max-hold: how long after SIGTERM to send SIGKILL
    #[arg(
        long,
        visible_alias = "kill-after",
        value_name = "DURATION",
        default_value = "10s",
        env = "SESSIONLOCK_GRACE",
        value_parser = parse_duration
    )]
    pub grace: Duration,

    /// Say nothing but errors: no waiting notice, and no line when the lock or turn is busy
    /// (the exit status says so)
    #[arg(short, long, conflicts_with = "verbose", env = "SESSIONLOCK_QUIET", value_parser = clap::builder::BoolishValueParser::new())]
    pub quiet: bool,

    /// Say at once when waiting, and when the lock is taken and released
    #[arg(short, long, env = "SESSIONLOCK_VERBOSE", value_parser = clap::builder::BoolishValueParser::new())]
    pub verbose: bool,

    /// Write one JSON object per lifecycle step to this file (appended)
    #[arg(
        long,
        value_name = "PATH",
        env = "SESSIONLOCK_EVENTS_FILE",
        value_hint = ValueHint::FilePath,
        conflicts_with = "events_fd"
    )]
    pub events_file: Option<PathBuf>,

    /// Write one JSON object per lifecycle step to this open descriptor
    #[arg(long, value_name = "N", env = "SESSIONLOCK_EVENTS_FD")]
    pub events_fd: Option<i32>,

    #[command(flatten)]
    pub coord: CoordOpts,
}

/// Where coordination lives.
#[derive(Args, Debug, Clone, Default)]
pub struct CoordOpts {
    /// Coordinate through etcd instead of the sidecar's lock file: etcd://HOST:PORT[,HOST:PORT...]
    /// (builds with the `etcd` feature), for hosts that share the session storage
    #[arg(long, value_name = "URL", env = "SESSIONLOCK_COORD")]
    pub coord: Option<String>,

    /// With --coord: name the session by this scope plus its file name instead of its path, for
    /// hosts that mount the storage at different paths
    #[arg(
        long,
        value_name = "SCOPE",
        env = "SESSIONLOCK_COORD_SCOPE",
        requires = "coord"
    )]
    pub coord_scope: Option<String>,

    /// With --coord: the etcd lease's time to live; a wrapper that cannot renew it for this
    /// long loses its locks (its command is stopped, nothing committed)
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        env = "SESSIONLOCK_LEASE",
        value_parser = parse_positive_duration
    )]
    pub lease: Duration,
}

/// The session file and the command to wrap.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The session file (it need not exist yet)
    #[arg(value_name = "SESSION", value_hint = ValueHint::FilePath)]
    pub session: PathBuf,

    /// The command and its arguments (after `--`)
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_hint = ValueHint::CommandWithArguments
    )]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub lock: LockOpts,
    /// Wait for a first-come-first-served prompt turn first, then hold the write lock through
    /// the command: a compaction neither lands in a provider call's window nor reorders a reply
    #[arg(long, env = "SESSIONLOCK_TURN", value_parser = clap::builder::BoolishValueParser::new())]
    pub turn: bool,
    /// With --turn: give up waiting for the turn after this long (ignored without --turn)
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10m",
        env = "SESSIONLOCK_TURN_TIMEOUT",
        value_parser = parse_duration
    )]
    pub turn_timeout: Duration,
    #[command(flatten)]
    pub commit: CommitOpts,
    #[command(flatten)]
    pub target: Target,
}

/// Options of the commit path.
#[derive(Args, Debug, Clone)]
pub struct CommitOpts {
    /// Capture the command's stdout and append it to the session file (complete JSON lines,
    /// all or nothing) when the command succeeds and the fence holds
    #[arg(long, env = "SESSIONLOCK_APPEND", value_parser = clap::builder::BoolishValueParser::new())]
    pub append: bool,
    /// With --append: also copy the output to stdout as it arrives
    #[arg(long, requires = "append", env = "SESSIONLOCK_TEE", value_parser = clap::builder::BoolishValueParser::new())]
    pub tee: bool,
    /// With --append: move an incomplete last line of the session file into the sidecar
    /// instead of refusing to append after it
    #[arg(long, requires = "append", env = "SESSIONLOCK_REPAIR", value_parser = clap::builder::BoolishValueParser::new())]
    pub repair: bool,
}

#[derive(Args, Debug)]
pub struct PromptArgs {
    #[command(flatten)]
    pub lock: LockOpts,
    /// Give up waiting for the prompt turn after this long
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10m",
        env = "SESSIONLOCK_TURN_TIMEOUT",
        value_parser = parse_duration
    )]
    pub turn_timeout: Duration,
    #[command(flatten)]
    pub fence: FenceOpts,
    #[command(flatten)]
    pub commit: CommitOpts,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct IdleWaitArgs {
    #[command(flatten)]
    pub lock: LockOpts,
    #[command(flatten)]
    pub fence: FenceOpts,
    #[command(flatten)]
    pub commit: CommitOpts,
    #[command(flatten)]
    pub target: Target,
}

/// Options of the modes with a window and a fence.
#[derive(Args, Debug, Clone)]
pub struct FenceOpts {
    /// Treat any change during the window as a takeover, even one made under the write lock
    #[arg(long, env = "SESSIONLOCK_STRICT", value_parser = clap::builder::BoolishValueParser::new())]
    pub strict: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print one JSON object (stable field names, see the README) instead of text
    #[arg(long, env = "SESSIONLOCK_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
    /// The session file, or a directory: every session with a sidecar in it
    #[arg(value_name = "SESSION|DIR", value_hint = ValueHint::AnyPath)]
    pub session: PathBuf,
    #[command(flatten)]
    pub coord: CoordOpts,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Remove kept outputs (replies that were never committed) too
    #[arg(long, env = "SESSIONLOCK_GC_KEPT", value_parser = clap::builder::BoolishValueParser::new())]
    pub kept: bool,
    /// The directory whose sidecars to collect
    #[arg(value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub dir: PathBuf,
}

/// A humantime duration (`500ms`, `30s`, `5m`, `1h 30m`), or a bare number of seconds (`5`,
/// `0.5`) as flock(1) takes it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{text} is not a number of seconds a wait can last"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected a duration like 500ms, 30s, 5m or 5 for seconds)"))
}

/// A duration that is more than zero (a zero `--max-hold` would stop every command).
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("nan").is_err());
    }

    #[test]
    fn command_may_follow_a_double_dash_or_not() {
        for argv in [
            &["sessionlock", "run", "s.jsonl", "--", "ls", "-l"][..],
            &["sessionlock", "run", "s.jsonl", "ls", "-l"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Run(args) = cli.command else {
                panic!("not run")
            };
            assert_eq!(args.target.command, ["ls", "-l"]);
        }
    }
}
