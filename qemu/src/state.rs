//! The state directory of one `tandem run` (default `.tandem/run` under the current dir).
//!
//! | file | what |
//! |---|---|
//! | `disk0.raw` | the default data disk, created sparse when no `--disk` is given; kept across runs |
//! | `nvram.bin` | the guest's emulated NVRAM (an ivshmem region over this file), created sparse; kept across runs |
//! | `qmp.sock` | QEMU's QMP socket (`tandem qmp --state-dir DIR CMD`) |
//! | `qemu.pid` | QEMU's pid while it runs |
//! | `console.log` | everything the guest printed in the last run |
//! | `lock` | held while a `tandem run` uses the directory, with its pid inside |
//!
//! The lock makes a second `tandem run` on the same directory fail at once with a clear
//! message instead of fighting over the socket and the disk. The socket and pid file are
//! removed when the lock is released.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::size::ByteSize;

/// Default state directory, relative to the current directory.
pub const DEFAULT_STATE_DIR: &str = ".tandem/run";
/// Default size of the default data disk.
pub const DEFAULT_DISK_SIZE: ByteSize = ByteSize::gib(1);
/// Default size of the NVRAM region file.
pub const DEFAULT_NVRAM_SIZE: ByteSize = ByteSize::mib(64);
/// Longest unix socket path the kernel accepts (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// State directory errors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the lock.
    #[error(
        "state directory {} is in use by another `tandem run`{holder}; stop it or pass a \
         different --state-dir",
        .dir.display()
    )]
    Busy {
        /// The directory.
        dir: PathBuf,
        /// ` (pid N)` when known.
        holder: String,
    },
    /// The QMP socket path would be too long for a unix socket.
    #[error(
        "QMP socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --state-dir",
        .0.display()
    )]
    SocketPathTooLong(PathBuf),
    /// I/O on a state file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A state directory (not necessarily existing yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The default data disk.
    pub fn disk0(&self) -> PathBuf {
        self.root.join("disk0.raw")
    }

    /// The NVRAM region's backing file.
    pub fn nvram(&self) -> PathBuf {
        self.root.join("nvram.bin")
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.root.join("qmp.sock")
    }

    /// QEMU's pid file.
    pub fn pidfile(&self) -> PathBuf {
        self.root.join("qemu.pid")
    }

    /// The console log.
    pub fn console_log(&self) -> PathBuf {
        self.root.join("console.log")
    }

    /// The lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Create the directory and take its lock.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        std::fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let sock = self.qmp_socket();
        if sock.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(StateError::SocketPathTooLong(sock));
        }
        let path = self.lock_file();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(StateError::Busy {
                    dir: self.root.clone(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        file.set_len(0).map_err(io_err(&path))?;
        file.rewind().map_err(io_err(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err(&path))?;
        // A socket or pid file left by a run that was killed is stale now that we hold the lock.
        self.remove_runtime_files();
        Ok(StateLock {
            dir: self.clone(),
            _file: file,
        })
    }

    /// Create the default data disk (sparse, `size`) unless it exists. Returns its path and
    /// whether it was created now.
    pub fn ensure_default_disk(&self, size: ByteSize) -> Result<(PathBuf, bool), StateError> {
        std::fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let path = self.disk0();
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => {
                file.set_len(size.bytes()).map_err(io_err(&path))?;
                Ok((path, true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok((path, false)),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Create the NVRAM file (sparse, `size`) unless it exists. An existing file is kept as
    /// it is, whatever its size: it holds the guest's NVRAM contents. See [`ensure_nvram`].
    pub fn ensure_nvram(&self, size: ByteSize) -> Result<NvramFile, StateError> {
        std::fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        ensure_nvram(&self.nvram(), size)
    }

    fn remove_runtime_files(&self) {
        let _ = std::fs::remove_file(self.qmp_socket());
        let _ = std::fs::remove_file(self.pidfile());
    }
}

/// Create a sparse raw disk image of `size` at `path` (replacing any file there).
pub fn create_sparse_disk(path: &Path, size: ByteSize) -> Result<(), StateError> {
    let file = File::create(path).map_err(io_err(path))?;
    file.set_len(size.bytes()).map_err(io_err(path))
}

/// An NVRAM backing file and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvramFile {
    /// The file.
    pub path: PathBuf,
    /// Its length (the region's size).
    pub size: ByteSize,
    /// Created by this call (else it was there already).
    pub created: bool,
}

/// Create the NVRAM backing file at `path` with length `size` (sparse: `set_len`, nothing
/// written, so a fresh region reads as zeros) unless it exists; an existing file is kept, and
/// its own length is returned. Its contents are the guest's emulated NVRAM: they outlive the
/// guest and QEMU, so nothing here ever truncates or rewrites them.
pub fn ensure_nvram(path: &Path, size: ByteSize) -> Result<NvramFile, StateError> {
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(file) => {
            if let Err(e) = file.set_len(size.bytes()) {
                let _ = std::fs::remove_file(path);
                return Err(io_err(path)(e));
            }
            Ok(NvramFile {
                path: path.to_path_buf(),
                size,
                created: true,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let len = std::fs::metadata(path).map_err(io_err(path))?.len();
            Ok(NvramFile {
                path: path.to_path_buf(),
                size: ByteSize(len),
                created: false,
            })
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The held lock of a state directory. Dropping it removes the socket and pid file and
/// releases the lock.
#[derive(Debug)]
pub struct StateLock {
    dir: StateDir,
    _file: File,
}

impl StateLock {
    /// The locked directory.
    pub fn dir(&self) -> &StateDir {
        &self.dir
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        self.dir.remove_runtime_files();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_clearly_and_cleanup_runs() {
        let tmp = crate::scratch::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("st"));
        let lock = dir.lock().unwrap();
        std::fs::write(dir.qmp_socket(), "").unwrap();
        std::fs::write(dir.pidfile(), "1").unwrap();
        let err = dir.lock().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("in use by another `tandem run`"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(lock);
        assert!(!dir.qmp_socket().exists());
        assert!(!dir.pidfile().exists());
        let _again = dir.lock().unwrap();
    }

    #[test]
    fn default_disk_is_sparse_and_kept() {
        let tmp = crate::scratch::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let (path, created) = dir.ensure_default_disk(ByteSize::gib(1)).unwrap();
        assert!(created);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "not sparse: {} blocks",
            meta.blocks()
        );
        let (_, created) = dir.ensure_default_disk(ByteSize::mib(1)).unwrap();
        assert!(!created);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 30);
    }

    #[test]
    fn nvram_is_sparse_and_kept_with_its_contents() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let tmp = crate::scratch::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("st"));
        let nv = dir.ensure_nvram(ByteSize::mib(64)).unwrap();
        assert_eq!(nv.path, dir.nvram());
        assert!(nv.path.ends_with("nvram.bin"));
        assert_eq!((nv.size, nv.created), (ByteSize::mib(64), true));
        let meta = std::fs::metadata(&nv.path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "not sparse");
        // The guest wrote something; a second run with another size keeps file and size.
        let f = OpenOptions::new().write(true).open(&nv.path).unwrap();
        f.write_all_at(b"TANDEM-NVRAM boot=1", 0).unwrap();
        drop(f);
        let again = dir.ensure_nvram(ByteSize::mib(16)).unwrap();
        assert_eq!((again.size, again.created), (ByteSize::mib(64), false));
        let bytes = std::fs::read(&again.path).unwrap();
        assert_eq!(bytes.len(), 64 << 20);
        assert!(bytes.starts_with(b"TANDEM-NVRAM boot=1"));
    }

    #[test]
    fn long_socket_path_is_refused() {
        let tmp = crate::scratch::tempdir().unwrap();
        let deep = tmp.path().join("x".repeat(120));
        let err = StateDir::new(deep).lock().unwrap_err();
        assert!(matches!(err, StateError::SocketPathTooLong(_)), "{err}");
    }
}
