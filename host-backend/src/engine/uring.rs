//! The io_uring engine: one ring per queue, the image registered as fixed file 0, an eventfd
//! registered for completions.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring, Probe};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Completion, Engine, Io};

/// Check that a ring can be set up and supports every opcode used here.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(4).map_err(|e| format!("io_uring_setup: {e}"))?;
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("io_uring probe: {e}"))?;
    for (code, name) in [
        (opcode::Readv::CODE, "READV"),
        (opcode::Writev::CODE, "WRITEV"),
        (opcode::Fsync::CODE, "FSYNC"),
        (opcode::Fallocate::CODE, "FALLOCATE"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("io_uring without IORING_OP_{name}"));
        }
    }
    Ok(())
}

/// An io_uring owned by one queue.
pub struct Uring {
    ring: IoUring,
    efd: EventFd,
    fd: RawFd,
    fixed: bool,
    /// Completions taken off the ring while making room to submit.
    spill: Vec<Completion>,
}

impl Uring {
    /// A ring for `depth` operations in flight on `fd`.
    pub fn new(fd: RawFd, depth: u32) -> io::Result<Uring> {
        let entries = depth.clamp(8, 4096).next_power_of_two();
        let ring = IoUring::builder()
            .setup_cqsize(entries * 4)
            .build(entries)?;
        let efd = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        let fixed = ring.submitter().register_files(&[fd]).is_ok();
        Ok(Uring {
            ring,
            efd,
            fd,
            fixed,
            spill: Vec::new(),
        })
    }

    fn entry(&self, io: Io) -> squeue::Entry {
        macro_rules! on_fd {
            ($build:expr) => {
                if self.fixed {
                    $build(types::Fixed(0))
                } else {
                    $build(types::Fd(self.fd))
                }
            };
        }
        match io {
            Io::Rw {
                write: false,
                offset,
                iov,
                iovcnt,
            } => on_fd!(|f| opcode::Readv::new(f, iov, iovcnt).offset(offset).build()),
            Io::Rw {
                write: true,
                offset,
                iov,
                iovcnt,
            } => on_fd!(|f| opcode::Writev::new(f, iov, iovcnt).offset(offset).build()),
            Io::Sync => on_fd!(|f| opcode::Fsync::new(f)
                .flags(types::FsyncFlags::DATASYNC)
                .build()),
            Io::Fallocate { mode, offset, len } => on_fd!(|f| opcode::Fallocate::new(f, len)
                .offset(offset)
                .mode(mode)
                .build()),
        }
    }

    fn drain(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.spill);
        for cqe in self.ring.completion() {
            out.push(Completion {
                token: cqe.user_data(),
                result: i64::from(cqe.result()),
            });
        }
    }

    /// `io_uring_enter` for what is queued; on `EBUSY` (completions backed up) the ring's
    /// completions are moved aside first (they are returned by the next reap, and the
    /// eventfd is signalled so that the next reap happens).
    fn enter(&mut self) -> io::Result<()> {
        let mut tries = 0;
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EBUSY) | Some(libc::EAGAIN) if tries < 100 => {
                        tries += 1;
                        let mut spill = std::mem::take(&mut self.spill);
                        self.drain(&mut spill);
                        self.spill = spill;
                        let _ = self.efd.write(1);
                        if tries > 1 {
                            std::thread::yield_now();
                        }
                    }
                    _ => return Err(e),
                },
            }
        }
    }
}

impl Engine for Uring {
    fn name(&self) -> &'static str {
        "io-uring"
    }

    unsafe fn push(&mut self, token: u64, io: Io) -> io::Result<()> {
        let entry = self.entry(io).user_data(token);
        loop {
            // SAFETY: the caller guarantees that the iovecs and buffers `entry` points to
            // stay valid until this token's completion is reaped.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            // The submission ring is full: hand it to the kernel and retry.
            self.enter()?;
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.enter()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let _ = self.efd.read();
        self.drain(out);
        // Completions the kernel kept aside because the ring was full come back with an
        // enter (the crate adds GETEVENTS when the overflow flag is set).
        while self.ring.submission().cq_overflow() {
            if self.ring.submit().is_err() {
                break;
            }
            let before = out.len();
            self.drain(out);
            if out.len() == before {
                break;
            }
        }
    }

    fn event_fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }
}
