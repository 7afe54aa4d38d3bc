//! The event log (`--events-file`, `--events-fd`): one JSON object per lifecycle step, each with
//! the step, a monotonic time in milliseconds (comparable between processes on one host), the
//! key, the wrapper's pid and mode, and the step's own fields. Never on stdout; best effort:
//! a failed write never fails a run.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{BorrowedFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::exit::{Failure, Kind};

/// Where the events go, as configured.
#[derive(Debug, Clone)]
pub enum Target {
    File(PathBuf),
    Fd(i32),
}

/// The open event log (or none).
pub struct Events {
    out: Option<File>,
    key: String,
    mode: &'static str,
}

/// Milliseconds on the monotonic clock.
#[must_use]
pub fn monotonic_ms() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0.0, |t| {
        let d = std::time::Duration::new(
            u64::try_from(t.tv_sec()).unwrap_or(0),
            u32::try_from(t.tv_nsec()).unwrap_or(0),
        );
        d.as_secs_f64() * 1e3
    })
}

impl Events {
    /// Open the configured log; a path is appended to (created 0600 if missing).
    pub fn open(config: &Config) -> Result<Self, Failure> {
        let out = match &config.events {
            None => None,
            Some(Target::File(path)) => {
                // Non-blocking: a FIFO with no reader is an error, not a hang.
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NONBLOCK)
                    .open(path)
                    .map_err(|e| Failure::io("cannot open the events file", &e, path))?;
                let meta = file
                    .metadata()
                    .map_err(|e| Failure::io("cannot open the events file", &e, path))?;
                let session = std::fs::metadata(config.key.path()).ok();
                if session.is_some_and(|s| {
                    use std::os::unix::fs::MetadataExt;
                    (s.dev(), s.ino()) == (meta.dev(), meta.ino())
                }) {
                    return Err(Failure::new(
                        Kind::Usage,
                        "--events-file is the session file itself",
                        path,
                    ));
                }
                Some(file)
            }
            Some(Target::Fd(fd)) if *fd < 0 || *fd == 1 => {
                return Err(Failure::new(
                    Kind::Usage,
                    format!(
                        "--events-fd {fd}: not a descriptor for events (1 is stdout, which \
                         belongs to the command)"
                    ),
                    config.key.path(),
                ));
            }
            Some(Target::Fd(fd)) => {
                // A descriptor of the caller's: used through a close-on-exec duplicate, so the
                // command inherits only what it would have inherited anyway.
                // SAFETY: checked to be open by F_DUPFD_CLOEXEC before use.
                let borrowed = unsafe { BorrowedFd::borrow_raw(*fd) };
                let dup = nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
                    .map_err(|e| {
                        Failure::new(
                            Kind::Usage,
                            format!("--events-fd {fd}: {}", crate::exit::describe(&e.into())),
                            config.key.path(),
                        )
                    })?;
                // SAFETY: a fresh descriptor we own.
                Some(unsafe { File::from_raw_fd(dup) })
            }
        };
        Ok(Self {
            out,
            key: config.key.path().to_string_lossy().into_owned(),
            mode: config.mode.name(),
        })
    }

    /// No log.
    #[cfg(test)]
    #[must_use]
    pub fn none() -> Self {
        Self {
            out: None,
            key: String::new(),
            mode: "",
        }
    }

    /// Is there a log to write to?
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.out.is_some()
    }

    /// Record `event` with `fields` (an object). Never waits: a reader that stops reading
    /// loses events, it cannot hold a lock through the log.
    pub fn emit(&self, event: &str, fields: Value) {
        let Some(mut out) = self.out.as_ref() else {
            return;
        };
        if !writable_now(out) {
            return;
        }
        let mut line = Map::new();
        line.insert("event".into(), json!(event));
        line.insert(
            "ms".into(),
            json!((monotonic_ms() * 1000.0).round() / 1000.0),
        );
        line.insert("key".into(), json!(self.key));
        line.insert("pid".into(), json!(std::process::id()));
        line.insert("mode".into(), json!(self.mode));
        if let Value::Object(extra) = fields {
            line.extend(extra);
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        // One write: appended whole to a file; to a pipe, whole when it fits its atomic size.
        let _ = out.write(text.as_bytes());
    }
}

/// Can `file` take a write without blocking right now? (A regular file always can.)
fn writable_now(file: &File) -> bool {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(
        file.as_fd(),
        nix::poll::PollFlags::POLLOUT,
    )];
    matches!(
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
        Ok(1)
    ) && fds[0]
        .revents()
        .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLOUT))
}
