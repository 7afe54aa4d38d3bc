//! The sidecar: `<dir>/.<name>.sessionlock/`, the directory of lock state next to a session file,
//! and the small records inside it (who holds the write lock).
//!
//! It is created on first use and never replaced while in use. A path occupied by anything but a
//! real directory is refused, and files inside are opened with `O_NOFOLLOW`, so a planted symlink
//! is never followed.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::exit::{self, Failure};
use crate::key::Key;

/// The write lock's target: never renamed or deleted.
pub const LOCK: &str = "lock";
/// The record of who holds the write lock (display only).
pub const HOLDER: &str = "holder";

/// The sidecar of one key.
#[derive(Debug, Clone)]
pub struct Sidecar {
    dir: PathBuf,
}

impl Sidecar {
    /// Where the sidecar of `key` lives; touches nothing.
    #[must_use]
    pub fn locate(key: &Key) -> Self {
        let mut name = OsString::from(".");
        name.push(key.name());
        name.push(".sessionlock");
        Self {
            dir: key.dir().join(name),
        }
    }

    /// Create the sidecar, or check that the existing one is a real directory.
    pub fn create(key: &Key) -> Result<Self, Failure> {
        let sidecar = Self::locate(key);
        match fs::create_dir(&sidecar.dir) {
            Ok(()) => Ok(sidecar),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                sidecar.check()?;
                Ok(sidecar)
            }
            Err(e) => {
                let mut failure = Failure::io("cannot create the sidecar", &e, &sidecar.dir);
                if failure.code == exit::IO {
                    failure.code = exit::CANT_CREATE;
                }
                Err(failure)
            }
        }
    }

    /// The existing sidecar of `key`, or `None` if there is none yet; never creates it.
    pub fn existing(key: &Key) -> Result<Option<Self>, Failure> {
        let sidecar = Self::locate(key);
        match fs::symlink_metadata(&sidecar.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Failure::io("cannot inspect the sidecar", &e, &sidecar.dir)),
            Ok(_) => sidecar.check().map(|()| Some(sidecar)),
        }
    }

    /// Refuse a sidecar path held by a symlink or a non-directory.
    fn check(&self) -> Result<(), Failure> {
        let meta = fs::symlink_metadata(&self.dir)
            .map_err(|e| Failure::io("cannot inspect the sidecar", &e, &self.dir))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(Failure::new(
                exit::CANT_CREATE,
                "the sidecar path is a symlink; refusing to follow it",
                &self.dir,
            ));
        }
        if !kind.is_dir() {
            return Err(Failure::new(
                exit::CANT_CREATE,
                "the sidecar path is occupied by a file that is not a directory",
                &self.dir,
            ));
        }
        Ok(())
    }

    /// The sidecar directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path inside the sidecar.
    #[must_use]
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Open (creating if needed) the write lock's target.
    pub fn open_lock_target(&self) -> Result<File, Failure> {
        let path = self.path(LOCK);
        open_nofollow(&path, Access::CreateRead)
            .map_err(|e| Failure::io("cannot open the write lock", &e, &path))
    }

    /// Publish who holds the write lock (written to a temporary name, then renamed into place).
    pub fn write_holder(&self, holder: &Holder) -> Result<(), Failure> {
        let json = serde_json::to_vec(holder).expect("a holder record always serializes");
        write_atomically(self, HOLDER, &json)
    }

    /// Remove the holder record; called while the lock is still held, just before release.
    pub fn clear_holder(&self) {
        let _ = fs::remove_file(self.path(HOLDER));
    }

    /// The recorded holder, if a readable record exists.
    #[must_use]
    pub fn read_holder(&self) -> Option<Holder> {
        let bytes = read_small(&self.path(HOLDER)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Who holds (or held) the write lock: for the waiting notice and `status`, never proof of life.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub mode: String,
    /// The holder's ticket, whose lock proves it is alive.
    #[serde(default)]
    pub ticket: Option<u64>,
    /// When it took the lock, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// The command's name (its first word).
    pub command: String,
}

impl Holder {
    /// "pid 123 (run) for 4s".
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "pid {} ({}) for {}",
            self.pid,
            self.mode,
            age(self.since_ms)
        )
    }
}

/// Milliseconds since the Unix epoch, now.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long ago `since_ms` was, rounded to whole seconds ("4s", "2m 5s").
#[must_use]
pub fn age(since_ms: u64) -> String {
    let secs = now_ms().saturating_sub(since_ms) / 1000;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// How a sidecar file is opened.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    /// Read; create empty if missing (lock targets: flock needs no write access).
    CreateRead,
    /// Read an existing file.
    Read,
}

/// Open a regular file inside the sidecar without following a symlink at its name, and without
/// blocking on a planted FIFO or device.
pub fn open_nofollow(path: &Path, access: Access) -> io::Result<File> {
    let flags = nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK;
    let mut options = OpenOptions::new();
    options.read(true).custom_flags(flags);
    if let Access::CreateRead = access {
        // O_CREAT without write access: std refuses `create` without `write`, so ask the OS.
        options.custom_flags(flags | nix::libc::O_CREAT).mode(0o666);
    }
    let file = options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(nix::libc::ELOOP) {
            io::Error::new(e.kind(), "it is a symlink; refusing to follow it")
        } else {
            e
        }
    })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(
            "it is not a regular file; refusing to use it",
        ));
    }
    Ok(file)
}

/// Read a small sidecar file whole, without following a symlink.
pub fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = open_nofollow(path, Access::Read)?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes)?;
    Ok(bytes)
}

/// Create (or truncate) a file for writing, without following a symlink at its name.
pub fn create_nofollow(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Create a directory inside the sidecar unless it is already there; a symlink or a file in its
/// place is refused, never followed.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    if fs::symlink_metadata(dir)?.is_dir() {
        Ok(())
    } else {
        Err(io::Error::other(
            "it is not a directory (a symlink or a file); refusing to use it",
        ))
    }
}

/// Replace `name` in the sidecar with `bytes`: write a per-process temporary file, then rename.
pub fn write_atomically(sidecar: &Sidecar, name: &str, bytes: &[u8]) -> Result<(), Failure> {
    let target = sidecar.path(name);
    let temp = sidecar.path(&format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = create_nofollow(&temp, 0o666)?;
        file.write_all(bytes)?;
        fs::rename(&temp, &target)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&temp);
        Failure::io(format!("cannot write {name}"), &e, &target)
    })
}
