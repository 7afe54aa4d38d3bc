//! Fault injection for tests: in debug builds, `SESSIONLOCK_FAULT=OP:N` makes the `N`th fallible
//! operation named `OP` (or any operation, for `*`) fail with `EIO`, as `SQLite`'s tests fail its
//! I/O. Release builds compile every check away. Operations: `lock` (taking or dropping a
//! byte-range lock), `probe` (asking who holds one), `state-read`, `state-write`, `state-sync`,
//! `session-open`, `session-write`, `session-sync`, `session-truncate`, `sidecar` (opens and
//! creates).

use std::io;

/// Fail here if the fault switch says so.
#[cfg(debug_assertions)]
pub fn check(op: &str) -> io::Result<()> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let plan = PLAN.get_or_init(|| {
        let text = std::env::var("SESSIONLOCK_FAULT").ok()?;
        let (name, n) = text.rsplit_once(':')?;
        Some((name.to_owned(), n.parse().ok()?))
    });
    let Some((name, n)) = plan else {
        return Ok(());
    };
    if name != "*" && name != op {
        return Ok(());
    }
    if SEEN.fetch_add(1, Ordering::Relaxed) + 1 == *n {
        return Err(io::Error::from_raw_os_error(nix::libc::EIO));
    }
    Ok(())
}

/// Release builds: never fails.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn check(_op: &str) -> io::Result<()> {
    Ok(())
}

/// A test hook in debug builds: is `SESSIONLOCK_TEST_HOOK` set to `name`?
#[must_use]
pub fn hook(name: &str) -> bool {
    cfg!(debug_assertions) && std::env::var_os("SESSIONLOCK_TEST_HOOK").is_some_and(|v| v == name)
}
