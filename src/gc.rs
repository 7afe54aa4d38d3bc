//! `gc DIR`: remove the sidecars whose session file no longer exists and which nobody uses.
//! Kept outputs (replies never committed) are never deleted silently: they stay, and are
//! listed, unless `--kept` says otherwise.

use std::path::Path;

use crate::coord::files::{Collected, collect_unused};
use crate::exit::Failure;
use crate::key;
use crate::sidecar::Sidecar;

/// The sessions named by the sidecars in `dir`: `(session path, sidecar path)`.
pub fn sidecars_in(dir: &Path) -> Result<Vec<(std::path::PathBuf, std::path::PathBuf)>, Failure> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Failure::io("cannot list the directory", &e, dir))?;
    let mut found: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let session = name.strip_prefix('.')?.strip_suffix(".sessionlock")?;
            (!session.is_empty()).then(|| (dir.join(session), e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Collect the sidecars in `dir`; print what was done to each, one line a sidecar.
pub fn collect(dir: &Path, kept: bool) -> Result<u8, Failure> {
    let mut removed = 0;
    for (session, path) in sidecars_in(dir)? {
        // One bad entry (a stranger's sidecar, a planted file) is reported; the rest go on.
        let what = match collect_one(&session, kept) {
            Ok(Some(what)) => what,
            Ok(None) => continue,
            Err(failure) => format!("left: {failure}"),
        };
        if what == "removed" {
            removed += 1;
        }
        println!("{}: {what}", path.display());
    }
    println!("{removed} sidecar(s) removed");
    Ok(0)
}

/// What became of the sidecar of `session` (`None`: its session exists, nothing to do).
fn collect_one(session: &Path, kept: bool) -> Result<Option<String>, Failure> {
    let key = key::resolve(session)?;
    if key.path().exists() {
        return Ok(None);
    }
    let Some(sidecar) = Sidecar::open(&key, false)? else {
        return Ok(None);
    };
    Ok(Some(match collect_unused(&sidecar, key.path(), kept)? {
        Collected::Removed => "removed".to_owned(),
        Collected::InUse => "left: in use".to_owned(),
        Collected::SessionExists => return Ok(None),
        Collected::Refused(why) => format!("left: {why}; refusing to touch it"),
        Collected::KeptOutputs(n) => format!(
            "left: {n} kept output(s) of a session that is gone; `sessionlock gc --kept` \
             removes them"
        ),
    }))
}
