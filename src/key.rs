//! The key: the canonical path of a session file, so that every alias of one file gets one lock.
//!
//! Symlinks (the file's own too), `.`/`..` and relative paths are resolved. A file that does not
//! exist yet is keyed by its canonical parent directory plus its name. Nothing is created here.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::exit::{Failure, Kind};

/// How many symlinks a session path may pass through before we call it a loop (as Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// The canonical path of one session file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    path: PathBuf,
}

impl Key {
    /// The canonical path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory the session file lives in (canonical).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    /// The session file's name.
    #[must_use]
    pub fn name(&self) -> &OsStr {
        self.path.file_name().unwrap_or_default()
    }
}

/// Resolve `input` to its key. Errors are user-facing failures naming `input`.
pub fn resolve(input: &Path) -> Result<Key, Failure> {
    if input.as_os_str().is_empty() {
        return Err(Failure::bare(Kind::Usage, "the session path is empty"));
    }
    if input.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(Failure::new(
            Kind::NoInput,
            "the session path ends with a slash: name a file, not a directory",
            input,
        ));
    }
    let mut path = input.to_path_buf();
    for _ in 0..MAX_SYMLINKS {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&path)
                    .map_err(|e| Failure::io("cannot read the session symlink", &e, &path))?;
                path = match path.parent() {
                    Some(parent) if target.is_relative() => parent.join(target),
                    _ => target,
                };
            }
            Ok(meta) if meta.is_dir() => {
                return Err(Failure::new(
                    Kind::NoInput,
                    "the session path is a directory, not a file",
                    input,
                ));
            }
            Ok(meta) if !meta.is_file() => {
                // A FIFO would hang an append, a device is no session: refused before any
                // sidecar is touched.
                return Err(Failure::new(
                    Kind::NoInput,
                    format!(
                        "the session path is not a regular file (it is {}); refusing to use it",
                        file_kind(&meta)
                    ),
                    input,
                ));
            }
            Ok(_) => {
                let canonical = fs::canonicalize(&path)
                    .map_err(|e| path_failure("cannot resolve the session path", &e, input))?;
                return refuse_sidecar_contents(Key { path: canonical }, input);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return not_yet_existing(&path, input),
            Err(e) => return Err(path_failure("cannot resolve the session path", &e, input)),
        }
    }
    Err(Failure::new(
        Kind::NoInput,
        "too many levels of symbolic links in the session path",
        input,
    ))
}

/// Refuse a path inside a sidecar: its lock file is no session (a commit to it would destroy
/// another session's state).
fn refuse_sidecar_contents(key: Key, input: &Path) -> Result<Key, Failure> {
    let in_sidecar = key.path().ancestors().skip(1).any(|dir| {
        dir.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.') && n.ends_with(".sessionlock"))
    });
    if in_sidecar {
        return Err(Failure::new(
            Kind::NoInput,
            "the session path is inside a sessionlock sidecar; name the session file itself",
            input,
        ));
    }
    Ok(key)
}

/// What kind of non-regular file `meta` is, in a few words.
fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Key a file that does not exist (yet): canonical parent directory plus the file name.
fn not_yet_existing(path: &Path, input: &Path) -> Result<Key, Failure> {
    let Some(name) = path.file_name() else {
        return Err(Failure::new(
            Kind::NoInput,
            "the session path does not name a file",
            input,
        ));
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = fs::canonicalize(parent)
        .map_err(|e| path_failure("the session directory cannot be used", &e, input))?;
    if !dir.is_dir() {
        return Err(Failure::new(
            Kind::NoInput,
            "the session directory is not a directory",
            input,
        ));
    }
    refuse_sidecar_contents(
        Key {
            path: dir.join(name),
        },
        input,
    )
}

/// A failure resolving the path: a missing directory is `NO_INPUT`, permission `NO_PERM`.
fn path_failure(what: &str, err: &io::Error, input: &Path) -> Failure {
    let bad_path = matches!(
        err.raw_os_error(),
        Some(nix::libc::ELOOP | nix::libc::ENAMETOOLONG)
    );
    let kind = match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Kind::NoInput,
        _ if bad_path => Kind::NoInput,
        _ => crate::exit::kind_for_io(err),
    };
    let mut failure = Failure::io(what, err, input);
    failure.kind = kind;
    failure
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn every_spelling_of_an_existing_file_gets_one_key() {
        let t = tmp();
        let root = fs::canonicalize(t.path()).unwrap();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/s.jsonl"), "").unwrap();
        symlink(root.join("d"), root.join("dirlink")).unwrap();
        symlink("d/s.jsonl", root.join("filelink")).unwrap();
        let want = resolve(&root.join("d/s.jsonl")).unwrap();
        for alias in ["d/../d/./s.jsonl", "dirlink/s.jsonl", "filelink"] {
            assert_eq!(resolve(&root.join(alias)).unwrap(), want, "{alias}");
        }
        assert_eq!(want.path(), root.join("d/s.jsonl"));
    }

    #[test]
    fn a_missing_file_is_keyed_by_its_canonical_directory() {
        let t = tmp();
        let root = fs::canonicalize(t.path()).unwrap();
        fs::create_dir(root.join("d")).unwrap();
        symlink(root.join("d"), root.join("dirlink")).unwrap();
        let key = resolve(&root.join("dirlink/new.jsonl")).unwrap();
        assert_eq!(key.path(), root.join("d/new.jsonl"));
        assert_eq!(key.dir(), root.join("d"));
        assert_eq!(key.name(), "new.jsonl");
    }

    #[test]
    fn a_dangling_symlink_keys_its_target() {
        let t = tmp();
        let root = fs::canonicalize(t.path()).unwrap();
        symlink("later.jsonl", root.join("link")).unwrap();
        assert_eq!(
            resolve(&root.join("link")).unwrap().path(),
            root.join("later.jsonl")
        );
    }

    #[test]
    fn different_files_get_different_keys() {
        let t = tmp();
        let a = resolve(&t.path().join("a.jsonl")).unwrap();
        let b = resolve(&t.path().join("b.jsonl")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn bad_paths_are_refused_with_their_codes() {
        let t = tmp();
        assert_eq!(resolve(t.path()).unwrap_err().kind, Kind::NoInput);
        let missing = t.path().join("nope/s.jsonl");
        assert_eq!(resolve(&missing).unwrap_err().kind, Kind::NoInput);
        assert_eq!(resolve(Path::new("")).unwrap_err().kind, Kind::Usage);
        symlink("loop", t.path().join("loop")).unwrap();
        assert_eq!(
            resolve(&t.path().join("loop")).unwrap_err().kind,
            Kind::NoInput
        );
        fs::write(t.path().join("plain"), "").unwrap();
        let under_file = t.path().join("plain/s.jsonl");
        assert_eq!(resolve(&under_file).unwrap_err().kind, Kind::NoInput);
        fs::create_dir(t.path().join(".s.jsonl.sessionlock")).unwrap();
        fs::write(t.path().join(".s.jsonl.sessionlock/lock"), "").unwrap();
        for inside in [".s.jsonl.sessionlock/lock", ".s.jsonl.sessionlock/new"] {
            let err = resolve(&t.path().join(inside)).unwrap_err();
            assert_eq!(err.kind, Kind::NoInput, "{inside}");
        }
        let null = resolve(Path::new("/dev/null")).unwrap_err();
        assert_eq!(null.kind, Kind::NoInput);
        assert!(null.to_string().contains("character device"), "{null}");
    }
}
