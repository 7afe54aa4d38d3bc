//! Network file systems: a session on NFS, CIFS/SMB and the like is detected by its `statfs`
//! magic and gets one warning saying what is and is not guaranteed there (cargo skips locking
//! there silently; we must not).

use std::path::Path;

/// The network file system `dir` is on, if it is one (Linux; elsewhere: never detected).
#[must_use]
pub fn detect(dir: &Path) -> Option<&'static str> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // The cast is for the C libraries whose `f_type` is not `i64`.
        #[allow(clippy::unnecessary_cast)]
        let magic = test_override().or_else(|| {
            nix::sys::statfs::statfs(dir)
                .ok()
                .map(|s| s.filesystem_type().0 as i64)
        })?;
        name(magic)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = dir;
        None
    }
}

/// Tests inject a file system type (debug builds): no network file system can be mounted here.
fn test_override() -> Option<i64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let text = std::env::var("SESSIONLOCK_TEST_FSTYPE").ok()?;
    i64::from_str_radix(text.trim_start_matches("0x"), 16).ok()
}

/// The name of a network file system's `statfs` magic.
fn name(magic: i64) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x0102_1997 => "9p",
        0x00C3_6400 => "CephFS",
        0x5346_414F => "AFS",
        0x0BD0_0BD0 => "Lustre",
        0x4750_4653 => "GPFS",
        0x6573_5546 => "FUSE (a network file system, perhaps)",
        _ => return None,
    })
}

/// The warning for a session on `fs`.
#[must_use]
pub fn warning(fs: &str, dir: &Path) -> String {
    format!(
        "warning: {} is on {fs}: the locks there are only as good as the server's lock manager \
         (every host must mount it with locking on; a client that loses its lease loses its \
         locks without notice, so two holders may overlap); the fence still catches outside \
         changes by fingerprint. Across hosts, coordinate through etcd instead",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn network_file_systems_are_named_and_local_ones_are_not() {
        assert_eq!(super::name(0x6969), Some("NFS"));
        assert_eq!(super::name(0xFF53_4D42), Some("CIFS"));
        assert_eq!(super::name(0xEF53), None, "ext4");
        assert_eq!(super::name(0x0102_1994), None, "tmpfs");
    }
}
