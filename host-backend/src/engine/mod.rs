//! Host I/O engines: how a queue's requests reach the image file.
//!
//! Both engines take operations tagged with a token, run many at once, and report
//! completions through an eventfd that the queue's worker thread watches in the same epoll
//! loop as the queue's kick, so one thread per queue both submits and completes, with no
//! locks on the data path:
//!
//! - [`uring::Uring`]: one `io_uring` per queue. A burst of requests from one kick is pushed
//!   to the submission ring and sent with one `io_uring_enter`; the kernel posts completions
//!   to the completion ring and signals the registered eventfd. The image is a registered
//!   file (no per-request fd lookup). Chosen by default when [`probe_io_uring`] succeeds.
//! - [`threads::Threads`]: a pool of threads per queue doing blocking `preadv`/`pwritev`/
//!   `fdatasync`/`fallocate` (QEMU's `aio=threads` model), for kernels or sandboxes without
//!   io_uring (`io_uring_disabled`, seccomp, Linux < 5.6).
//!
//! Operations carry raw pointers to iovecs and guest memory; [`Engine::push`] is `unsafe`
//! and its caller ([`crate::queue`]) keeps both alive until the token's completion has been
//! reaped (it holds the guest-memory mapping's `Arc` and the iovec `Vec` in the request).

use std::io;
use std::os::fd::RawFd;

pub mod threads;
pub mod uring;

/// One host operation.
#[derive(Debug, Clone, Copy)]
pub enum Io {
    /// `preadv` (`write == false`) or `pwritev` at `offset`.
    Rw {
        /// Write instead of read.
        write: bool,
        /// Byte offset in the image.
        offset: u64,
        /// The iovec array.
        iov: *const libc::iovec,
        /// Its length (at most 1024).
        iovcnt: u32,
    },
    /// `fdatasync`.
    Sync,
    /// `fallocate(mode, offset, len)`.
    Fallocate {
        /// `FALLOC_FL_*`.
        mode: i32,
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// A finished operation: its token and the syscall's result (bytes, or `-errno`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The token given to [`Engine::push`].
    pub token: u64,
    /// `>= 0`: bytes transferred (0 for sync and fallocate); `< 0`: `-errno`.
    pub result: i64,
}

/// A host I/O engine owned by one queue.
pub trait Engine: Send {
    /// `io-uring` or `threads`.
    fn name(&self) -> &'static str;

    /// Queue `io` under `token` (it may not reach the kernel before [`Engine::submit`]).
    ///
    /// # Safety
    ///
    /// The iovec array and every buffer it points to must stay valid (allocated, mapped, not
    /// otherwise written for a write) until [`Engine::reap`] has returned this token's
    /// completion.
    unsafe fn push(&mut self, token: u64, io: Io) -> io::Result<()>;

    /// Send everything pushed so far to the kernel.
    fn submit(&mut self) -> io::Result<()>;

    /// Move finished operations into `out`; clears the eventfd first so that a completion
    /// arriving during the call signals it again.
    fn reap(&mut self, out: &mut Vec<Completion>);

    /// Readable when completions are waiting.
    fn event_fd(&self) -> RawFd;
}

/// Which engine to use (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring.
    IoUring,
    /// A thread pool.
    Threads,
}

impl EngineKind {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::IoUring => "io-uring",
            EngineKind::Threads => "threads",
        }
    }
}

/// Whether io_uring can run here with the opcodes we use; the reason when not.
pub fn probe_io_uring() -> Result<(), String> {
    uring::probe()
}

/// A new engine of `kind` on `fd`, sized for `depth` operations in flight (`pool_threads`
/// and `delay`: see [`threads::Threads::new`]).
pub fn new_engine(
    kind: EngineKind,
    fd: RawFd,
    depth: u32,
    pool_threads: usize,
    delay: std::time::Duration,
) -> io::Result<Box<dyn Engine>> {
    Ok(match kind {
        EngineKind::IoUring => Box::new(uring::Uring::new(fd, depth)?),
        EngineKind::Threads => Box::new(threads::Threads::new(fd, pool_threads, delay)?),
    })
}

/// Run `io` synchronously (the thread pool's body), retrying on `EINTR`.
///
/// # Safety
///
/// As [`Engine::push`]: the iovecs and buffers are valid for the call.
pub unsafe fn run_sync(fd: RawFd, io: Io) -> i64 {
    loop {
        // SAFETY: the caller guarantees the iovecs and buffers; fd is an open descriptor.
        let r: i64 = unsafe {
            match io {
                Io::Rw {
                    write: false,
                    offset,
                    iov,
                    iovcnt,
                } => libc::preadv64(fd, iov, iovcnt as i32, offset as i64) as i64,
                Io::Rw {
                    write: true,
                    offset,
                    iov,
                    iovcnt,
                } => libc::pwritev64(fd, iov, iovcnt as i32, offset as i64) as i64,
                Io::Sync => i64::from(libc::fdatasync(fd)),
                Io::Fallocate { mode, offset, len } => {
                    i64::from(libc::fallocate64(fd, mode, offset as i64, len as i64))
                }
            }
        };
        if r >= 0 {
            return r;
        }
        let e = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if e != libc::EINTR {
            return -i64::from(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Both engines: write, read back, sync, fallocate, an error, many in flight.
    fn exercise(kind: EngineKind) {
        let dir =
            std::env::temp_dir().join(format!("tb-engine-{}-{}", kind.name(), std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut e = new_engine(kind, file.as_raw_fd(), 64, 4, Default::default()).unwrap();
        let mut bufs: Vec<Vec<u8>> = (0..32).map(|i| vec![i as u8 + 1; 4096]).collect();
        let iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        for (i, iov) in iovs.iter().enumerate() {
            // SAFETY: bufs and iovs outlive the reaps below.
            unsafe {
                e.push(
                    i as u64,
                    Io::Rw {
                        write: true,
                        offset: i as u64 * 4096,
                        iov,
                        iovcnt: 1,
                    },
                )
                .unwrap()
            };
        }
        e.submit().unwrap();
        let done = wait_all(&mut *e, 32);
        assert!(done.iter().all(|c| c.result == 4096), "{done:?}");
        // SAFETY: no buffers.
        unsafe { e.push(100, Io::Sync).unwrap() };
        // SAFETY: as above.
        unsafe {
            e.push(
                101,
                Io::Fallocate {
                    mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset: 0,
                    len: 4096,
                },
            )
            .unwrap()
        };
        e.submit().unwrap();
        let done = wait_all(&mut *e, 2);
        assert!(done.iter().all(|c| c.result == 0), "{done:?}");
        let back = std::fs::read(&path).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert!(back[4096..8192].iter().all(|&b| b == 2));
        assert!(back[31 * 4096..32 * 4096].iter().all(|&b| b == 32));
        // A read into a bad address fails with -EFAULT, not a crash.
        let bad = libc::iovec {
            iov_base: 8 as *mut libc::c_void,
            iov_len: 4096,
        };
        // SAFETY: the kernel checks the user address and fails the call.
        unsafe {
            e.push(
                7,
                Io::Rw {
                    write: false,
                    offset: 0,
                    iov: &bad,
                    iovcnt: 1,
                },
            )
            .unwrap()
        };
        e.submit().unwrap();
        let done = wait_all(&mut *e, 1);
        assert_eq!(done[0].result, -i64::from(libc::EFAULT));
        drop(e);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn wait_all(e: &mut dyn Engine, n: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while out.len() < n {
            let mut pfd = libc::pollfd {
                fd: e.event_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            e.reap(&mut out);
            assert!(std::time::Instant::now() < deadline, "{out:?}");
        }
        out
    }

    /// io_uring is a property of the kernel (built without it, `kernel.io_uring_disabled`,
    /// a seccomp filter), not something to install: where it is missing the test fails
    /// saying why, unless `TANDEM_NO_IO_URING=1` says the machine is known to lack it, in
    /// which case the probe must report that (the daemon then runs the thread pool).
    #[test]
    fn io_uring_engine() {
        let known_missing = std::env::var_os("TANDEM_NO_IO_URING").is_some_and(|v| v == "1");
        match probe_io_uring() {
            Ok(()) => {
                assert!(
                    !known_missing,
                    "TANDEM_NO_IO_URING=1 but io_uring works here"
                );
                exercise(EngineKind::IoUring);
            }
            Err(why) => assert!(
                known_missing,
                "io_uring unavailable on this machine ({why}): the io_uring engine is not \
                 tested (set TANDEM_NO_IO_URING=1 to accept a kernel without it)"
            ),
        }
    }

    #[test]
    fn thread_pool_engine() {
        exercise(EngineKind::Threads);
    }
}
