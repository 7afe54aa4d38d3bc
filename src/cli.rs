//! The command line as clap types: what a user can type, with help text. Resolving it into a
//! runnable configuration is `config`'s job.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueHint};

/// Exit status and files, shown by `--help` and in the man page.
const AFTER_LONG_HELP: &str = "\
EXIT STATUS
  The command's own exit status passes through; 128+N when it died of signal N.
  The wrapper's own outcomes:
     2  usage error (bad option, invalid duration, no command)
    65  --append: output is not valid JSONL, or the session ends in an incomplete line
    66  session path unusable: its directory is missing, or it is a directory
    70  internal error
    73  cannot create the sidecar, or its path is occupied by a file or symlink
    74  I/O error on the session file or the sidecar
    75  write lock or prompt turn not obtained in time, or busy with --nonblock
        (override with --conflict-exit-code)
    76  takeover: the session file changed from outside during the prompt window
    77  permission denied
   126  command found but not executable
   127  command not found
  Every failure prints exactly one line `sessionlock: <what happened> (<file>)` on stderr.
  The wrapper never writes to stdout.

FILES
  <dir>/.<name>.sessionlock/         the sidecar of <dir>/<name>, created on first use
  <dir>/.<name>.sessionlock/lock     the write lock's target (flock); never renamed or deleted
  <dir>/.<name>.sessionlock/holder   who holds the write lock (pid, mode, since, command)

ENVIRONMENT
  The command gets SESSIONLOCK_SESSION (the canonical session path) and SESSIONLOCK_MODE.
  SESSIONLOCK_TIMEOUT sets the default of --timeout.";

/// Serialize everything that touches one JSONL session file, across processes.
///
/// Wrap any command in a mode: `run` holds the write lock for the whole command. Every spelling of
/// one file (relative, absolute, through symlinks) takes the same lock.
#[derive(Parser, Debug)]
#[command(
    name = "sessionlock",
    version,
    after_long_help = AFTER_LONG_HELP,
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
    /// Write the shell completions and man pages into a directory (for packagers and the docs check)
    #[command(hide = true, name = "generate-docs")]
    GenerateDocs {
        /// Directory that gets `completions/` and `man/`
        dir: PathBuf,
    },
}

/// Options of every mode that takes the write lock.
#[derive(Args, Debug, Clone)]
pub struct LockOpts {
    /// Give up on the write lock after this long (e.g. 500ms, 30s, 5m)
    #[arg(
        short = 't',
        long,
        value_name = "DURATION",
        default_value = "60s",
        env = "SESSIONLOCK_TIMEOUT",
        value_parser = parse_duration
    )]
    pub timeout: Duration,

    /// Give up at once if the write lock is busy
    #[arg(short = 'n', long)]
    pub nonblock: bool,

    /// Exit status when the lock (or turn) is busy or not obtained in time
    #[arg(short = 'E', long, value_name = "N", default_value_t = crate::exit::BUSY)]
    pub conflict_exit_code: u8,

    /// Say nothing while waiting (errors are still reported)
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Say at once when waiting, and when the lock is taken and released
    #[arg(short, long)]
    pub verbose: bool,
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
    #[command(flatten)]
    pub target: Target,
}

/// A humantime duration: `500ms`, `30s`, `5m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (expected a duration like 500ms, 30s or 5m)"))
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
        assert!(parse_duration("5").is_err());
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
