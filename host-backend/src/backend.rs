//! The `VhostUserBackend` implementation: features, configuration space, one worker thread
//! per queue, and the queue's kick and completion events routed to [`crate::queue`].
//!
//! The backend outlives connections: [`crate::server`] builds a fresh `VhostUserDaemon`
//! (rings, worker threads, guest memory) for each front end that connects, around the same
//! [`BlkBackend`] with its engines and request tables, after draining what the previous
//! connection left in flight.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::VhostUserBackend;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::config::DeviceConfig;
use crate::queue::{Ctx, Device, Gm, Queue, Stats, Vring};

/// How long `GET_VRING_BASE` (the front end stopping a queue) waits for the queue's requests
/// in flight to complete.
pub const STOP_VRING_TIMEOUT: Duration = Duration::from_secs(30);

/// The device: shared by the queues' worker threads and the control thread.
pub struct BlkBackend {
    /// Features and configuration space.
    pub config: DeviceConfig,
    /// Image, limits, id, zero buffer.
    pub device: Device,
    /// One per virtqueue.
    pub queues: Vec<Queue>,
    mem: RwLock<Option<Gm>>,
    event_idx: AtomicBool,
    stopping: AtomicBool,
    conn: AtomicU64,
    /// Exit eventfds handed to vhost-user-backend's worker loops: the library registers them
    /// in its epoll with `into_raw_fd()` and never closes them, so they are closed here once
    /// the connection's daemon (and every epoll handler) has been dropped.
    exit_fds: Mutex<Vec<RawFd>>,
}

impl BlkBackend {
    /// A backend for `device` with `queues`.
    pub fn new(config: DeviceConfig, device: Device, queues: Vec<Queue>) -> BlkBackend {
        BlkBackend {
            config,
            device,
            queues,
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            conn: AtomicU64::new(0),
            exit_fds: Mutex::new(Vec::new()),
        }
    }

    /// The epoll id of a queue's completion eventfd in its worker's loop (ids up to
    /// `num_queues` are the library's).
    pub fn completion_event_id(&self) -> u64 {
        self.queues.len() as u64 + 1
    }

    /// A new connection starts: forget the previous one's memory and negotiated state.
    pub fn new_connection(&self) -> u64 {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.event_idx.store(false, Ordering::SeqCst);
        self.conn.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The connection's daemon has been dropped (its worker threads joined): release the
    /// guest memory (requests still in flight keep their own reference) and the exit
    /// eventfds the library leaves open.
    pub fn end_connection(&self) {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = None;
        let fds = std::mem::take(&mut *self.exit_fds.lock().unwrap_or_else(|e| e.into_inner()));
        for fd in fds {
            // SAFETY: `fd` is the consumer end created in `exit_event`; vhost-user-backend
            // 0.24 took it with `into_raw_fd()`, added it to a worker's epoll and never closes
            // it. That epoll and its handler are gone (the daemon was dropped and its worker
            // threads joined), so nothing refers to the descriptor any more.
            unsafe { libc::close(fd) };
        }
    }

    /// Take no more requests from the rings (SIGTERM).
    pub fn stop_taking_requests(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether [`BlkBackend::stop_taking_requests`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Wait until no queue has a request in flight, at most `timeout` in all; true when
    /// drained.
    pub fn quiesce(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        self.queues
            .iter()
            .all(|q| q.wait_idle(deadline.saturating_duration_since(std::time::Instant::now())))
    }

    /// Requests in flight on all queues.
    pub fn in_flight(&self) -> usize {
        self.queues.iter().map(Queue::in_flight).sum()
    }

    /// The counters since the last call, summed over queues.
    pub fn take_stats(&self) -> Stats {
        let all: Vec<Stats> = self.queues.iter().map(Queue::take_stats).collect();
        Stats::total(&all)
    }

    fn memory(&self) -> Option<Arc<crate::queue::Mem>> {
        self.mem
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.memory().into_inner())
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.queues.len()
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.config.max_queue_size)
    }

    fn features(&self) -> u64 {
        self.config.features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::SeqCst);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config.window(offset, size)
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        // Nothing in virtio-blk's configuration is writable here (no CONFIG_WCE).
        Ok(())
    }

    fn update_memory(&self, mem: Gm) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    /// One worker thread per queue.
    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.queues.len()).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let pair =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        self.exit_fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pair.0.as_raw_fd());
        Some(pair)
    }

    /// `GET_VRING_BASE`: the front end stops the queue and wants its last used index; every
    /// request the queue accepted must be on the used ring first.
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let Some(q) = self.queues.get(queue_index as usize) else {
            return Ok(());
        };
        if !q.wait_idle(STOP_VRING_TIMEOUT) {
            log::warn!(
                "queue {queue_index}: {} requests still in flight after {STOP_VRING_TIMEOUT:?}",
                q.in_flight()
            );
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // Errors are logged, never returned: an error would end this queue's worker thread.
        let (Some(q), Some(vring)) = (self.queues.get(thread_id), vrings.first()) else {
            return Ok(());
        };
        let Some(mem) = self.memory() else {
            return Ok(());
        };
        let ctx = Ctx {
            dev: &self.device,
            mem: &mem,
            vring,
            conn: self.conn.load(Ordering::SeqCst),
            stopping: self.stopping(),
        };
        if u64::from(device_event) == self.completion_event_id() {
            q.complete(&ctx);
        } else if device_event == 0 {
            q.kick(&ctx);
        }
        Ok(())
    }
}
