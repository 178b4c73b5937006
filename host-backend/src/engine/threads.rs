//! The thread-pool engine: worker threads doing blocking syscalls, completions handed back
//! through a mutex-protected list and an eventfd.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{run_sync, Completion, Engine, Io};

struct Job {
    token: u64,
    io: Io,
}

// SAFETY: a Job carries raw pointers into memory that the submitter keeps valid until the
// job's completion is reaped (the contract of Engine::push); the pool thread only hands them
// to the kernel.
unsafe impl Send for Job {}

struct Shared {
    done: Mutex<Vec<Completion>>,
    efd: EventFd,
}

/// A pool of threads owned by one queue.
pub struct Threads {
    tx: Option<Sender<Job>>,
    shared: Arc<Shared>,
    pool: Vec<JoinHandle<()>>,
}

impl Threads {
    /// `threads` workers on `fd`; each operation waits `delay` first (a test aid that keeps
    /// requests in flight long enough to stop the daemon in the middle of them).
    pub fn new(fd: RawFd, threads: usize, delay: Duration) -> io::Result<Threads> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            done: Mutex::new(Vec::new()),
            efd: EventFd::new(EFD_NONBLOCK)?,
        });
        let mut pool = Vec::new();
        for i in 0..threads.max(1) {
            let rx: Arc<Mutex<Receiver<Job>>> = Arc::clone(&rx);
            let shared = Arc::clone(&shared);
            pool.push(
                std::thread::Builder::new()
                    .name(format!("blk-io-{i}"))
                    .spawn(move || loop {
                        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        if !delay.is_zero() {
                            std::thread::sleep(delay);
                        }
                        // SAFETY: see `unsafe impl Send for Job`.
                        let result = unsafe { run_sync(fd, job.io) };
                        shared
                            .done
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Completion {
                                token: job.token,
                                result,
                            });
                        let _ = shared.efd.write(1);
                    })?,
            );
        }
        Ok(Threads {
            tx: Some(tx),
            shared,
            pool,
        })
    }
}

impl Engine for Threads {
    fn name(&self) -> &'static str {
        "threads"
    }

    unsafe fn push(&mut self, token: u64, io: Io) -> io::Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("pool stopped"))?;
        tx.send(Job { token, io })
            .map_err(|_| io::Error::other("pool stopped"))
    }

    fn submit(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let _ = self.shared.efd.read();
        out.append(&mut self.shared.done.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn event_fd(&self) -> RawFd {
        self.shared.efd.as_raw_fd()
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.pool.drain(..) {
            let _ = t.join();
        }
    }
}
