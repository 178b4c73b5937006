//! Scratch directories removed on drop (tests, benches).
//!
//! Written here instead of using the `tempfile` crate on purpose: `tempfile` pulls `rustix`,
//! which turns on `bitflags/std`; cargo unifies that feature into the `no_std` guest kernel
//! (which shares `bitflags` through `virtio-drivers`) whenever the workspace is built with
//! all targets, and the kernel then fails to link with two panic handlers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory that is deleted, with its contents, when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Creates a fresh, uniquely named directory under the system temporary directory.
pub fn tempdir() -> std::io::Result<TempDir> {
    tempdir_in(&std::env::temp_dir())
}

/// Creates a fresh, uniquely named directory under `base` (which must exist).
pub fn tempdir_in(base: &Path) -> std::io::Result<TempDir> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "tandem-{}-{}-{nanos:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = base.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(TempDir { path }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn created_unique_and_removed() {
        let a = super::tempdir().unwrap();
        let b = super::tempdir().unwrap();
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path().join("f"), b"x").unwrap();
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
        let c = super::tempdir_in(b.path()).unwrap();
        assert!(c.path().starts_with(b.path()) && c.path().is_dir());
    }
}
