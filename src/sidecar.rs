//! The sidecar: `<dir>/.<name>.sessionlock/`, the directory next to a session file that holds its
//! one lock file and the outputs kept from turns that did not commit.
//!
//! It is created on first use with modes that follow the session file's (owner read+write, plus
//! each class that may write the session file, with the session file's group), whatever the
//! umask. It is never followed through a symlink, and a sidecar, lock file or output directory
//! owned by anyone but us or the session file's owner is refused: a co-tenant of a shared
//! directory cannot plant one to read or inject our lines.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

use crate::exit::{Failure, Kind};
use crate::key::Key;

/// The lock file: never renamed or deleted while in use.
pub const LOCK: &str = "lock";

/// Who may own the sidecar's files, and the modes new ones get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    /// For regular files: 0600, plus rw for group and others where they may write the session.
    pub file: u32,
    /// For directories: the same classes with rwx.
    pub dir: u32,
    /// The session file's group, given to new files when the group may write the session.
    pub gid: Option<u32>,
    /// The session file's owner (besides us) may own the sidecar's files.
    pub session_owner: Option<u32>,
    /// The session file's group.
    pub session_group: Option<u32>,
}

impl Modes {
    /// The modes for a session file with `meta` (or none yet: private to us).
    #[must_use]
    pub fn for_session(meta: Option<&fs::Metadata>) -> Self {
        let Some(meta) = meta else {
            return Self {
                file: 0o600,
                dir: 0o700,
                gid: None,
                session_owner: None,
                session_group: None,
            };
        };
        let perm = meta.mode();
        let group = perm & 0o020 != 0;
        let other = perm & 0o002 != 0;
        Self {
            file: 0o600 | if group { 0o060 } else { 0 } | if other { 0o006 } else { 0 },
            dir: 0o700 | if group { 0o070 } else { 0 } | if other { 0o007 } else { 0 },
            gid: group.then_some(meta.gid()),
            session_owner: Some(meta.uid()),
            session_group: Some(meta.gid()),
        }
    }

    /// May a file owned by `uid` be trusted?
    #[must_use]
    pub fn trusts(&self, uid: u32) -> bool {
        uid == Uid::effective().as_raw() || Some(uid) == self.session_owner
    }

    /// Give a file we just created its mode and group, whatever the umask. Root (a system
    /// cron job, say) gives it to the session file's owner, who must go on using it.
    fn apply(&self, fd: impl AsFd, mode: u32) -> io::Result<()> {
        nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))?;
        if Uid::effective().is_root()
            && let Some(owner) = self.session_owner.filter(|&o| o != 0)
        {
            nix::unistd::fchown(
                fd.as_fd(),
                Some(Uid::from_raw(owner)),
                self.session_group.map(Gid::from_raw),
            )?;
        } else if let Some(gid) = self.gid {
            // Only to a group we belong to; if we cannot, the group stays ours.
            let _ = nix::unistd::fchown(fd.as_fd(), None, Some(Gid::from_raw(gid)));
        }
        Ok(())
    }
}

/// The sidecar of one key, open.
#[derive(Debug)]
pub struct Sidecar {
    dir: PathBuf,
    /// The directory, open; replaced by `reopen` if a `gc` removed it.
    fd: std::cell::RefCell<OwnedFd>,
    modes: Modes,
}

/// Where the sidecar of `key` lives; touches nothing.
#[must_use]
pub fn locate(key: &Key) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(key.name());
    name.push(".sessionlock");
    key.dir().join(name)
}

fn io_failure(what: &str, err: &io::Error, file: &Path) -> Failure {
    Failure::io(what, err, file)
}

impl Sidecar {
    /// Open the sidecar of `key`, creating it (if `create`) on first use. `None`: it does not
    /// exist and was not to be created.
    pub fn open(key: &Key, create: bool) -> Result<Option<Self>, Failure> {
        let dir = locate(key);
        let session_meta = match fs::metadata(key.path()) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_failure("cannot read the session file", &e, key.path())),
        };
        let modes = Modes::for_session(session_meta.as_ref());
        let mut created = false;
        if create {
            crate::fault::check("sidecar").map_err(|e| {
                Failure::io("cannot create the sidecar", &e, &dir)
                    .with_kind_if(Kind::Io, Kind::CantCreate)
            })?;
            match nix::unistd::mkdir(&dir, Mode::from_bits_truncate(0o700)) {
                Ok(()) => created = true,
                Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => {
                    return Err(Failure::io("cannot create the sidecar", &e.into(), &dir)
                        .with_kind_if(Kind::Io, Kind::CantCreate));
                }
            }
        }
        let fd = match nix::fcntl::open(
            &dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) if !create => return Ok(None),
            Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR)
                if fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                return Err(Failure::new(
                    Kind::CantCreate,
                    "the sidecar path is a symlink; refusing to follow it",
                    &dir,
                ));
            }
            Err(nix::errno::Errno::ENOTDIR) => {
                return Err(Failure::new(
                    Kind::CantCreate,
                    "the sidecar path is occupied by a file that is not a directory",
                    &dir,
                ));
            }
            Err(e) => return Err(io_failure("cannot open the sidecar", &e.into(), &dir)),
        };
        let stat = nix::sys::stat::fstat(&fd)
            .map_err(|e| io_failure("cannot inspect the sidecar", &e.into(), &dir))?;
        if created {
            modes
                .apply(&fd, modes.dir)
                .map_err(|e| io_failure("cannot set the sidecar's mode", &e, &dir))?;
        } else if !modes.trusts(stat.st_uid) {
            return Err(untrusted("the sidecar", stat.st_uid, &dir));
        }
        Ok(Some(Self {
            dir,
            fd: std::cell::RefCell::new(fd),
            modes,
        }))
    }

    /// Is the open directory still the one at the sidecar's path? (A `gc` may have removed it.)
    #[must_use]
    pub fn is_current(&self) -> bool {
        let Ok(open) = nix::sys::stat::fstat(&*self.fd.borrow()) else {
            return false;
        };
        // The casts are for the platforms whose `stat` fields are not `u64`.
        #[allow(clippy::unnecessary_cast)]
        fs::symlink_metadata(&self.dir).is_ok_and(|m| {
            m.is_dir() && m.ino() == open.st_ino as u64 && m.dev() == open.st_dev as u64
        })
    }

    /// Open the sidecar of `key` again, creating it if a `gc` removed it meanwhile.
    pub fn reopen(&self, key: &Key) -> Result<(), Failure> {
        let fresh = Self::open(key, true)?.expect("created");
        *self.fd.borrow_mut() = fresh.fd.into_inner();
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

    #[must_use]
    pub fn modes(&self) -> Modes {
        self.modes
    }

    /// Open the lock file: read+write (creating it, if `write`) or read-only for `status`.
    /// Never through a symlink, never a FIFO or device, never one a stranger owns.
    pub fn open_lock(&self, write: bool) -> Result<File, Failure> {
        let path = self.path(LOCK);
        crate::fault::check("sidecar")
            .map_err(|e| io_failure("cannot open the lock file", &e, &path))?;
        let base = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let mut created = false;
        let fd = if write {
            match nix::fcntl::openat(
                &*self.fd.borrow(),
                LOCK,
                base | OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => {
                    created = true;
                    Ok(fd)
                }
                Err(nix::errno::Errno::EEXIST) => nix::fcntl::openat(
                    &*self.fd.borrow(),
                    LOCK,
                    base | OFlag::O_RDWR,
                    Mode::empty(),
                ),
                Err(e) => Err(e),
            }
        } else {
            nix::fcntl::openat(
                &*self.fd.borrow(),
                LOCK,
                base | OFlag::O_RDONLY,
                Mode::empty(),
            )
        };
        let fd = fd.map_err(|e| {
            let err = io::Error::from(e);
            if e == nix::errno::Errno::ELOOP {
                io_failure(
                    "cannot open the lock file",
                    &io::Error::new(err.kind(), "it is a symlink; refusing to follow it"),
                    &path,
                )
            } else {
                io_failure("cannot open the lock file", &err, &path)
            }
        })?;
        let stat = nix::sys::stat::fstat(&fd)
            .map_err(|e| io_failure("cannot inspect the lock file", &e.into(), &path))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(Failure::new(
                Kind::Io,
                "cannot open the lock file: it is not a regular file; refusing to use it",
                &path,
            ));
        }
        if stat.st_nlink > 1 {
            return Err(Failure::new(
                Kind::Io,
                "cannot use the lock file: it has other hard links (another file would get its \
                 state written into it); refusing to use it",
                &path,
            ));
        }
        if created {
            self.modes
                .apply(&fd, self.modes.file)
                .map_err(|e| io_failure("cannot set the lock file's mode", &e, &path))?;
        } else if !self.modes.trusts(stat.st_uid) {
            return Err(untrusted("the lock file", stat.st_uid, &path));
        }
        // Blocking I/O from here on (O_NONBLOCK was only against a planted FIFO).
        let file = File::from(fd);
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
            .map_err(|e| io_failure("cannot open the lock file", &e.into(), &path))?;
        Ok(file)
    }

    /// The lock file, read+write, if it exists (never created): for `gc`.
    pub fn open_existing_lock(&self) -> Result<Option<File>, Failure> {
        if !self.has(LOCK) {
            return Ok(None);
        }
        self.open_lock(true).map(Some)
    }

    /// Does the lock file's path still name the file open as `file`?
    pub fn still_names(&self, file: &File) -> io::Result<bool> {
        let open = file.metadata()?;
        // The casts are for the platforms whose `stat` fields are not `u64`.
        #[allow(clippy::unnecessary_cast)]
        match nix::sys::stat::fstatat(
            &*self.fd.borrow(),
            LOCK,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(st.st_dev as u64 == open.dev() && st.st_ino as u64 == open.ino()),
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Does an entry `name` exist in the sidecar (not following a symlink)?
    #[must_use]
    pub fn has(&self, name: &str) -> bool {
        nix::sys::stat::fstatat(
            &*self.fd.borrow(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok()
    }

    /// A subdirectory (`out`, `kept`), created with the sidecar's modes if missing; a symlink,
    /// a file, or a directory a stranger owns in its place is refused.
    pub fn subdir(&self, name: &str) -> Result<PathBuf, Failure> {
        let path = self.path(name);
        ensure_dir(&path, self.modes)?;
        Ok(path)
    }

    /// Create a new file at `path` (never over an existing one, never through a symlink) with
    /// the sidecar's file mode.
    pub fn create_file(&self, path: &Path) -> io::Result<File> {
        crate::fault::check("sidecar")?;
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        self.modes.apply(&fd, self.modes.file)?;
        Ok(File::from(fd))
    }
}

/// A directory at `path`, created with `modes` if missing; a symlink, a file, or a directory a
/// stranger owns in its place is refused.
pub fn ensure_dir(path: &Path, modes: Modes) -> Result<(), Failure> {
    let made = nix::unistd::mkdir(path, Mode::from_bits_truncate(0o700));
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        let err = io::Error::from(e);
        let err = if matches!(e, nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) {
            io::Error::new(
                err.kind(),
                "it is not a directory (a symlink or a file); refusing to use it",
            )
        } else {
            err
        };
        io_failure("cannot use a sidecar directory", &err, path)
    })?;
    if made.is_ok() {
        modes
            .apply(&fd, modes.dir)
            .map_err(|e| io_failure("cannot set a directory's mode", &e, path))?;
    } else {
        let st = nix::sys::stat::fstat(&fd)
            .map_err(|e| io_failure("cannot inspect a sidecar directory", &e.into(), path))?;
        if !modes.trusts(st.st_uid) {
            return Err(untrusted("a sidecar directory", st.st_uid, path));
        }
    }
    Ok(())
}

fn untrusted(what: &str, uid: u32, path: &Path) -> Failure {
    Failure::new(
        Kind::CantCreate,
        format!(
            "{what} is owned by uid {uid}, neither you nor the session file's owner; refusing \
             to use it (another user may have planted it)"
        ),
        path,
    )
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
