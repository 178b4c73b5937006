//! One virtqueue: pop descriptor chains, parse them, submit host I/O, complete.
//!
//! Each queue is served by its own worker thread (vhost-user-backend's epoll loop), which
//! calls [`Queue::kick`] when the guest kicks and [`Queue::complete`] when the queue's engine
//! signals completions; the engine and the table of requests in flight live behind one mutex
//! that only that worker takes on the data path (the control thread takes it to wait for the
//! queue to drain).
//!
//! Ordering guarantees:
//!
//! - a request is put on the used ring only after every host operation it needed has
//!   completed: a write's data is in the image file (page cache, or the disk with
//!   `O_DIRECT`), a flush's `fdatasync` has returned;
//! - a request in flight keeps the guest-memory mapping it points into alive (an `Arc` of
//!   the mapping), so a front end that disconnects or replaces its memory table cannot make
//!   the kernel write into unmapped memory;
//! - a request still in flight when its connection ended is finished without touching the
//!   next connection's rings (each request records its connection's generation).
//!
//! Notification suppression: while a burst is being popped the device asks the driver not
//! to kick (`VRING_USED_F_NO_NOTIFY`, or the avail event index with event-idx), then
//! re-enables and re-checks the ring; after completions the guest is interrupted only when
//! [`VringT::needs_notification`] says so (event-idx: only when the driver asked).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};

use crate::disk::{AlignedBuf, Disk};
use crate::engine::{Completion, Engine, Io};
use crate::request::{self, Limits, Op, Range, Rejected, Request, Seg, Status, IOV_MAX};

/// Guest memory as mapped from the front end's memory table (no dirty-page bitmap).
pub type Mem = GuestMemoryMmap<()>;
/// The swappable guest memory shared with vhost-user-backend.
pub type Gm = GuestMemoryAtomic<Mem>;
/// A vring as vhost-user-backend hands it to the worker.
pub type Vring = VringRwLock<Gm>;

/// Bytes per write of the zero-fill fallback of write-zeroes.
pub const ZERO_CHUNK: usize = 1 << 20;

/// What every queue of a device shares.
#[derive(Debug)]
pub struct Device {
    /// The image.
    pub disk: Arc<Disk>,
    /// Request bounds.
    pub limits: Limits,
    /// The get-id answer.
    pub id: Vec<u8>,
    /// Zeros for write-zeroes where `fallocate` cannot.
    pub zero: AlignedBuf,
}

/// The per-call view of the connection a queue serves.
pub struct Ctx<'a> {
    /// The device.
    pub dev: &'a Device,
    /// Guest memory now.
    pub mem: &'a Arc<Mem>,
    /// This queue's vring.
    pub vring: &'a Vring,
    /// Connection generation.
    pub conn: u64,
    /// The daemon is stopping: take no new requests.
    pub stopping: bool,
}

/// Counters, for the summary printed when a connection ends (and to see where time goes).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Requests completed with OK.
    pub ok: u64,
    /// Requests completed with an error status.
    pub failed: u64,
    /// Of those, refused by the parser.
    pub rejected: u64,
    /// Reads / writes / flushes / discards+write-zeroes completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Discard and write-zeroes requests completed.
    pub ranges: u64,
    /// Bytes read / written for the guest.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Kick events handled and requests popped in them.
    pub kicks: u64,
    /// Requests popped.
    pub popped: u64,
    /// Completion events handled and requests finished in them.
    pub completion_events: u64,
    /// Requests finished from completion events.
    pub completed: u64,
    /// Interrupts sent to the guest.
    pub notifies: u64,
    /// Most requests in flight at once.
    pub max_in_flight: u64,
    /// Requests that went through a bounce buffer (`O_DIRECT`, unaligned guest buffer).
    pub bounced: u64,
    /// Sum over requests of pop → used-ring time, in nanoseconds.
    pub sum_request_ns: u64,
    /// The part of it from `io_uring_enter` (or the hand-off to the pool) to the completion
    /// being reaped: the host kernel and disk, plus the wait for this worker to run.
    pub sum_host_ns: u64,
    /// CPU time of the queue's worker thread (user + system; the system part includes
    /// `io_uring_enter` issuing the I/O), from the kernel's schedstat.
    pub worker_cpu_ns: u64,
    /// Time the worker thread was runnable but waiting for a CPU (schedstat).
    pub worker_wait_ns: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.rejected += o.rejected;
        self.reads += o.reads;
        self.writes += o.writes;
        self.flushes += o.flushes;
        self.ranges += o.ranges;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.kicks += o.kicks;
        self.popped += o.popped;
        self.completion_events += o.completion_events;
        self.completed += o.completed;
        self.notifies += o.notifies;
        self.max_in_flight = self.max_in_flight.max(o.max_in_flight);
        self.bounced += o.bounced;
        self.sum_request_ns += o.sum_request_ns;
        self.sum_host_ns += o.sum_host_ns;
        self.worker_cpu_ns += o.worker_cpu_ns;
        self.worker_wait_ns += o.worker_wait_ns;
    }

    /// Sum of several queues' counters.
    pub fn total<'a>(all: impl IntoIterator<Item = &'a Stats>) -> Stats {
        let mut t = Stats::default();
        for s in all {
            t.add(s);
        }
        t
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let n = (self.ok + self.failed).max(1);
        let per = |x: u64, d: u64| x as f64 / d.max(1) as f64;
        format!(
            "{} requests ({} failed, {} malformed): {} reads {} MB, {} writes {} MB, {} flushes, \
             {} discard/write-zeroes; {} kicks ({:.1} req/kick), {} completion events \
             ({:.1} req/event), {} interrupts; max in flight {}; mean per request: {:.1} us \
             pop->used, of which {:.1} us host I/O, {:.2} us worker CPU; worker waited {} ms \
             for a CPU; {} bounced",
            self.ok + self.failed,
            self.failed,
            self.rejected,
            self.reads,
            self.bytes_read / 1_000_000,
            self.writes,
            self.bytes_written / 1_000_000,
            self.flushes,
            self.ranges,
            self.kicks,
            per(self.popped, self.kicks),
            self.completion_events,
            per(self.completed, self.completion_events),
            self.notifies,
            self.max_in_flight,
            per(self.sum_request_ns, n) / 1e3,
            per(self.sum_host_ns, n) / 1e3,
            per(self.worker_cpu_ns, n) / 1e3,
            self.worker_wait_ns / 1_000_000,
            self.bounced,
        )
    }
}

/// Token of an operation: the request's slot and the operation's index within it.
fn token(slot: usize, sub: u32) -> u64 {
    ((slot as u64) << 32) | u64::from(sub)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    GetId,
    Range { zeroes: bool },
}

struct Rw {
    write: bool,
    offset: u64,
    left: u64,
    iov: Vec<libc::iovec>,
    /// `O_DIRECT` with an unaligned guest buffer: the data goes through this buffer; for a
    /// read it is copied to `segs` at the end.
    bounce: Option<(AlignedBuf, Vec<Seg>)>,
}

struct ZeroFill {
    next: u64,
    end: u64,
    iov: Box<libc::iovec>,
}

struct InFlight {
    head: u16,
    conn: u64,
    status_at: GuestAddress,
    used_ok: u32,
    kind: Kind,
    pending: u32,
    status: Status,
    rw: Option<Rw>,
    ranges: Vec<Range>,
    fills: Vec<Option<ZeroFill>>,
    /// Keeps the mapping the iovecs point into alive until the request is finished.
    mem: Arc<Mem>,
    started: Instant,
    submitted: Instant,
}

// SAFETY: the raw pointers in an InFlight (iovecs) point into memory the InFlight itself
// keeps alive (its guest-memory Arc, its bounce buffer, the device's zero buffer which
// outlives every queue); moving the struct to another thread does not invalidate them.
unsafe impl Send for InFlight {}

struct State {
    engine: Box<dyn Engine>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    in_flight: usize,
    cap: usize,
    throttled: bool,
    scratch: Vec<Completion>,
    /// Slots started since the last submit (their `submitted` time is set at the submit).
    batch: Vec<usize>,
    stats: Stats,
    /// Malformed requests logged on this connection (the log is capped).
    logged: u32,
}

/// One virtqueue's request table and engine.
pub struct Queue {
    /// Queue index.
    pub index: usize,
    state: Mutex<State>,
    idle: Condvar,
    event_fd: i32,
    /// The worker thread serving the queue now (0: none seen yet).
    worker_tid: std::sync::atomic::AtomicI32,
    /// Its schedstat when the counters were last taken.
    worker_base: Mutex<(i32, u64, u64)>,
}

/// Malformed requests logged per connection and queue before the log goes quiet.
const LOG_CAP: u32 = 16;

impl Queue {
    /// Queue `index` using `engine`, holding at most `cap` requests in flight.
    pub fn new(index: usize, engine: Box<dyn Engine>, cap: usize) -> Queue {
        let event_fd = engine.event_fd();
        Queue {
            index,
            state: Mutex::new(State {
                engine,
                slots: Vec::new(),
                free: Vec::new(),
                in_flight: 0,
                cap: cap.max(1),
                throttled: false,
                scratch: Vec::new(),
                batch: Vec::new(),
                stats: Stats::default(),
                logged: 0,
            }),
            idle: Condvar::new(),
            event_fd,
            worker_tid: std::sync::atomic::AtomicI32::new(0),
            worker_base: Mutex::new((0, 0, 0)),
        }
    }

    /// The engine's completion eventfd (registered in this queue's worker epoll).
    pub fn event_fd(&self) -> i32 {
        self.event_fd
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.lock().engine.name()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Take the counters (and start counting afresh). Call it while the worker thread is
    /// alive to include its CPU time.
    pub fn take_stats(&self) -> Stats {
        let mut s = {
            let mut st = self.lock();
            st.logged = 0;
            std::mem::take(&mut st.stats)
        };
        let tid = self.worker_tid.load(std::sync::atomic::Ordering::Relaxed);
        if let Some((cpu, wait)) = (tid != 0).then(|| schedstat(tid)).flatten() {
            let mut base = self.worker_base.lock().unwrap_or_else(|e| e.into_inner());
            let (b_cpu, b_wait) = if base.0 == tid {
                (base.1, base.2)
            } else {
                (0, 0)
            };
            s.worker_cpu_ns = cpu.saturating_sub(b_cpu);
            s.worker_wait_ns = wait.saturating_sub(b_wait);
            *base = (tid, cpu, wait);
        }
        s
    }

    /// Wait until nothing is in flight, at most `timeout`; true when drained. The worker
    /// thread keeps completing meanwhile (it does not need this lock for long).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let st = self.lock();
        let (st, _) = self
            .idle
            .wait_timeout_while(st, timeout, |s| s.in_flight > 0)
            .unwrap_or_else(|e| e.into_inner());
        st.in_flight == 0
    }

    /// The guest kicked (or the queue was just enabled): take every available request.
    pub fn kick(&self, ctx: &Ctx) {
        self.note_worker();
        let mut st = self.lock();
        st.stats.kicks += 1;
        self.pop_all(&mut st, ctx);
    }

    /// Remember which thread serves this queue (for its schedstat).
    fn note_worker(&self) {
        thread_local! {
            // SAFETY: gettid has no preconditions.
            static TID: i32 = unsafe { libc::gettid() };
        }
        self.worker_tid
            .store(TID.with(|t| *t), std::sync::atomic::Ordering::Relaxed);
    }

    fn pop_all(&self, st: &mut State, ctx: &Ctx) {
        st.throttled = false;
        let mut answered = false;
        loop {
            let _ = ctx.vring.disable_notification();
            loop {
                if ctx.stopping {
                    break;
                }
                if st.in_flight >= st.cap {
                    st.throttled = true;
                    break;
                }
                let chain = {
                    let mut g = ctx.vring.get_mut();
                    g.get_queue_mut().pop_descriptor_chain(&**ctx.mem)
                };
                let Some(chain) = chain else { break };
                st.stats.popped += 1;
                let head = chain.head_index();
                let parsed = request::collect_chain(chain, ctx.dev.limits.max_descriptors)
                    .map_err(|why| Rejected {
                        status_at: None,
                        status: Status::IoErr,
                        why,
                    })
                    .and_then(|d| request::parse(&d, &**ctx.mem, &ctx.dev.limits));
                answered |= match parsed {
                    Ok(req) => self.start(st, ctx, head, req),
                    Err(rej) => self.reject(st, ctx, head, rej),
                };
            }
            if ctx.stopping || st.throttled {
                break;
            }
            match ctx.vring.enable_notification() {
                Ok(true) => continue,
                _ => break,
            }
        }
        if let Err(e) = st.engine.submit() {
            log::warn!(
                "queue {}: submitting I/O: {e} (retried on the next event)",
                self.index
            );
        }
        if answered {
            self.notify(st, ctx);
        }
    }

    fn notify(&self, st: &mut State, ctx: &Ctx) {
        if ctx.vring.needs_notification().unwrap_or(true) {
            st.stats.notifies += 1;
            if let Err(e) = ctx.vring.signal_used_queue() {
                log::debug!("queue {}: signalling the guest: {e}", self.index);
            }
        }
    }

    /// Answer a malformed chain at once; true (something was put on the used ring).
    fn reject(&self, st: &mut State, ctx: &Ctx, head: u16, rej: Rejected) -> bool {
        if st.logged < LOG_CAP {
            st.logged += 1;
            log::warn!(
                "queue {}: request {head} refused ({:?}): {}{}",
                self.index,
                rej.status,
                rej.why,
                if st.logged == LOG_CAP {
                    " (further malformed requests on this connection are not logged)"
                } else {
                    ""
                }
            );
        }
        if let Some(at) = rej.status_at {
            let _ = ctx.mem.write_obj(rej.status as u8, at);
        }
        let _ = ctx.vring.add_used(head, rej.used_len());
        st.stats.failed += 1;
        st.stats.rejected += 1;
        true
    }

    fn alloc_slot(st: &mut State) -> usize {
        match st.free.pop() {
            Some(i) => i,
            None => {
                st.slots.push(None);
                st.slots.len() - 1
            }
        }
    }

    /// Start a parsed request; true when it was answered at once.
    fn start(&self, st: &mut State, ctx: &Ctx, head: u16, req: Request) -> bool {
        let now = Instant::now();
        let mut f = InFlight {
            head,
            conn: ctx.conn,
            status_at: req.status,
            used_ok: req.used_len_ok(),
            kind: Kind::Flush,
            pending: 0,
            status: Status::Ok,
            rw: None,
            ranges: Vec::new(),
            fills: Vec::new(),
            mem: Arc::clone(ctx.mem),
            started: now,
            submitted: now,
        };
        match req.op {
            Op::Read { offset, len, segs } => {
                f.kind = Kind::Read;
                self.prepare_rw(st, ctx, &mut f, &segs, false, offset, len);
            }
            Op::Write { offset, len, segs } => {
                f.kind = Kind::Write;
                self.prepare_rw(st, ctx, &mut f, &segs, true, offset, len);
            }
            Op::Flush => f.kind = Kind::Flush,
            Op::GetId { segs } => {
                f.kind = Kind::GetId;
                f.status = write_id(ctx, &segs);
                return self.answer_now(st, ctx, f);
            }
            Op::Discard(ranges) => {
                f.kind = Kind::Range { zeroes: false };
                f.fills = ranges.iter().map(|_| None).collect();
                f.ranges = ranges;
            }
            Op::WriteZeroes(ranges) => {
                f.kind = Kind::Range { zeroes: true };
                f.fills = ranges.iter().map(|_| None).collect();
                f.ranges = ranges;
            }
        }
        if f.status != Status::Ok {
            return self.answer_now(st, ctx, f);
        }
        let slot = Self::alloc_slot(st);
        let ops = first_ops(&f);
        // Into the table first: the pointers the engine gets are then owned by the slot.
        st.slots[slot] = Some(f);
        self.push_ops(st, ctx, head, slot, ops)
    }

    /// Hand the operations of a new request (`head`, in `slot`) to the engine; true when it
    /// was answered at once (nothing could be queued).
    fn push_ops(
        &self,
        st: &mut State,
        ctx: &Ctx,
        head: u16,
        slot: usize,
        ops: Vec<(u32, Io)>,
    ) -> bool {
        let mut pushed = 0u32;
        let mut failed = false;
        for (sub, io) in ops {
            // SAFETY: every pointer in `io` refers to memory owned by the request now in
            // `st.slots[slot]` (its iovec Vec, bounce buffer, or guest memory kept mapped by
            // its `mem` Arc); the slot is only freed in `finish`, after the engine has
            // returned the completion of every operation pushed for it (`pending`).
            match unsafe { st.engine.push(token(slot, sub), io) } {
                Ok(()) => pushed += 1,
                Err(e) => {
                    log::warn!("queue {}: request {head}: queueing I/O: {e}", self.index);
                    failed = true;
                    break;
                }
            }
        }
        let in_flight = st.in_flight + 1;
        if let Some(f) = st.slots[slot].as_mut() {
            f.pending = pushed;
            if failed {
                f.status = Status::IoErr;
            }
        }
        st.in_flight = in_flight;
        st.stats.max_in_flight = st.stats.max_in_flight.max(in_flight as u64);
        if pushed == 0 {
            return self.finish(st, ctx, slot);
        }
        st.batch.push(slot);
        false
    }

    /// Host iovecs for a read or write (a bounce buffer where `O_DIRECT` needs alignment
    /// the guest's buffers lack); sets `f.status` on failure.
    #[allow(clippy::too_many_arguments)]
    fn prepare_rw(
        &self,
        st: &mut State,
        ctx: &Ctx,
        f: &mut InFlight,
        segs: &[Seg],
        write: bool,
        offset: u64,
        len: u64,
    ) {
        let disk = &ctx.dev.disk;
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(segs.len());
        let mut aligned = true;
        for s in segs {
            let Ok(slices) = ctx.mem.get_slices(
                GuestAddress(s.addr),
                s.len as usize,
                vm_memory::Permissions::ReadWrite,
            ) else {
                f.status = Status::IoErr;
                return;
            };
            for sl in slices {
                let Ok(sl) = sl else {
                    f.status = Status::IoErr;
                    return;
                };
                let ptr = sl.ptr_guard_mut().as_ptr();
                aligned &= disk.aligned(ptr as usize, sl.len());
                iov.push(libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: sl.len(),
                });
            }
        }
        let bounce = if !aligned || iov.len() > IOV_MAX {
            // One aligned buffer for the whole request (also when the segments, split at
            // memory-region boundaries, exceed what one preadv takes).
            let Some(mut buf) = AlignedBuf::zeroed(len as usize, disk.mem_align.max(512)) else {
                f.status = Status::IoErr;
                return;
            };
            if write {
                let mut at = 0usize;
                for s in segs {
                    let end = at + s.len as usize;
                    if ctx
                        .mem
                        .read_slice(&mut buf.as_mut_slice()[at..end], GuestAddress(s.addr))
                        .is_err()
                    {
                        f.status = Status::IoErr;
                        return;
                    }
                    at = end;
                }
            }
            iov = vec![libc::iovec {
                iov_base: buf.ptr().cast(),
                iov_len: len as usize,
            }];
            st.stats.bounced += 1;
            Some((buf, segs.to_vec()))
        } else {
            None
        };
        f.rw = Some(Rw {
            write,
            offset,
            left: len,
            iov,
            bounce,
        });
    }

    /// Finish a request that needed no host I/O (or could not get any); true.
    fn answer_now(&self, st: &mut State, ctx: &Ctx, f: InFlight) -> bool {
        let slot = Self::alloc_slot(st);
        st.slots[slot] = Some(f);
        st.in_flight += 1;
        self.finish(st, ctx, slot)
    }

    /// Put a finished request on the used ring (unless its connection is gone); true when
    /// something was added.
    fn finish(&self, st: &mut State, ctx: &Ctx, slot: usize) -> bool {
        let Some(mut f) = st.slots.get_mut(slot).and_then(Option::take) else {
            return false;
        };
        st.free.push(slot);
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 {
            self.idle.notify_all();
        }
        let now = Instant::now();
        if f.status == Status::Ok
            && let Some((buf, segs)) = f.rw.as_ref().and_then(|rw| rw.bounce.as_ref())
            && f.kind == Kind::Read
        {
            let mut at = 0usize;
            for s in segs {
                let end = at + s.len as usize;
                if f.mem
                    .write_slice(&buf.as_slice()[at..end], GuestAddress(s.addr))
                    .is_err()
                {
                    f.status = Status::IoErr;
                    break;
                }
                at = end;
            }
        }
        let ok = f.status == Status::Ok;
        let s = &mut st.stats;
        if ok {
            s.ok += 1;
            match f.kind {
                Kind::Read => {
                    s.reads += 1;
                    s.bytes_read += u64::from(f.used_ok.saturating_sub(1));
                }
                Kind::Write => {
                    s.writes += 1;
                    s.bytes_written += f.rw.as_ref().map_or(0, |rw| {
                        rw.bounce.as_ref().map_or_else(
                            || rw.iov.iter().map(|v| v.iov_len as u64).sum(),
                            |b| b.1.iter().map(|s| u64::from(s.len)).sum(),
                        )
                    });
                }
                Kind::Flush => s.flushes += 1,
                Kind::GetId => {}
                Kind::Range { .. } => s.ranges += 1,
            }
        } else {
            s.failed += 1;
        }
        s.sum_request_ns += now.duration_since(f.started).as_nanos() as u64;
        s.sum_host_ns += now.duration_since(f.submitted).as_nanos() as u64;
        if f.conn != ctx.conn {
            // Its connection is gone; the next one's rings are not its to touch.
            return false;
        }
        let _ = f.mem.write_obj(f.status as u8, f.status_at);
        let len = if ok { f.used_ok } else { 1 };
        if let Err(e) = ctx.vring.add_used(f.head, len) {
            log::debug!("queue {}: used ring: {e}", self.index);
            return false;
        }
        true
    }

    /// The engine signalled: finish what completed; pop more if the table was full.
    pub fn complete(&self, ctx: &Ctx) {
        self.note_worker();
        let mut st = self.lock();
        st.stats.completion_events += 1;
        let mut comps = std::mem::take(&mut st.scratch);
        st.engine.reap(&mut comps);
        let mut answered = false;
        for c in comps.drain(..) {
            let slot = (c.token >> 32) as usize;
            let sub = c.token as u32;
            if self.step(&mut st, slot, sub, c.result, ctx.dev.zero.ptr().cast()) {
                st.stats.completed += 1;
                answered |= self.finish(&mut st, ctx, slot);
            }
        }
        st.scratch = comps;
        if let Err(e) = st.engine.submit() {
            log::warn!("queue {}: submitting I/O: {e}", self.index);
        }
        if answered {
            self.notify(&mut st, ctx);
        }
        if st.throttled && !ctx.stopping {
            self.pop_all(&mut st, ctx);
        }
    }

    /// Account one operation's result; true when its request has nothing left in flight.
    fn step(
        &self,
        st: &mut State,
        slot: usize,
        sub: u32,
        result: i64,
        zero: *mut libc::c_void,
    ) -> bool {
        let index = self.index;
        let State { slots, engine, .. } = st;
        let Some(f) = slots.get_mut(slot).and_then(Option::as_mut) else {
            log::warn!("queue {index}: completion for unknown token {slot}:{sub}");
            return false;
        };
        let op = OpResult {
            index,
            slot,
            sub,
            result,
        };
        let progress = match f.kind {
            Kind::Read | Kind::Write => op.step_rw(&mut **engine, f),
            Kind::Flush | Kind::GetId => {
                if result < 0 {
                    op.fail(f, "fdatasync");
                }
                Progress::Done
            }
            Kind::Range { zeroes } => op.step_range(&mut **engine, f, zeroes, zero),
        };
        match progress {
            Progress::Done => f.pending = f.pending.saturating_sub(1),
            Progress::Resent => {}
            Progress::Finished => return true,
        }
        f.pending == 0
    }
}

/// One completed operation: which request (`slot`) and which of its operations (`sub`) on
/// queue `index`, and the result (bytes, or a negative errno).
struct OpResult {
    index: usize,
    slot: usize,
    sub: u32,
    result: i64,
}

/// What a completion leaves of its operation.
enum Progress {
    /// The operation is over.
    Done,
    /// It was sent again for what is left (the rest of a short transfer, the next chunk of
    /// zeros).
    Resent,
    /// The request has nothing more to do, whatever else is pending.
    Finished,
}

impl OpResult {
    /// Fail the request, logging the first error.
    fn fail(&self, f: &mut InFlight, what: &str) {
        if f.status == Status::Ok {
            log::warn!(
                "queue {}: request {}: {what}: {}",
                self.index,
                f.head,
                std::io::Error::from_raw_os_error((-self.result).clamp(0, 4095) as i32)
            );
        }
        f.status = Status::IoErr;
    }

    /// Send `io` again under this operation's token.
    fn resend(&self, engine: &mut dyn Engine, f: &mut InFlight, io: Io) -> Progress {
        // SAFETY: as in `Queue::push_ops`: the iovecs and buffers `io` points to belong to
        // this request (its iovec Vec or bounce buffer, guest memory kept mapped by its `mem`
        // Arc, or its boxed zero-fill iovec into the device's zero buffer, which outlives
        // every queue), and it stays in its slot until its last completion.
        match unsafe { engine.push(token(self.slot, self.sub), io) } {
            Ok(()) => Progress::Resent,
            Err(_) => {
                f.status = Status::IoErr;
                Progress::Done
            }
        }
    }

    /// A read or write completed (in full, in part, or failed).
    fn step_rw(&self, engine: &mut dyn Engine, f: &mut InFlight) -> Progress {
        let Some(rw) = f.rw.as_mut() else {
            return Progress::Finished;
        };
        let what = if rw.write { "write" } else { "read" };
        if self.result < 0 {
            self.fail(f, what);
        } else if (self.result as u64) < rw.left {
            let n = self.result as u64;
            if n == 0 {
                // End of file: the image shrank under us.
                log::warn!("queue {}: request {}: short {what}", self.index, f.head);
                f.status = Status::IoErr;
            } else {
                // A short transfer: send the rest.
                advance(&mut rw.iov, n as usize);
                rw.offset += n;
                rw.left -= n;
                let io = rw_io(rw);
                return self.resend(engine, f, io);
            }
        }
        Progress::Done
    }

    /// A discard or write-zeroes range completed, or one chunk of its zero-fill.
    fn step_range(
        &self,
        engine: &mut dyn Engine,
        f: &mut InFlight,
        zeroes: bool,
        zero: *mut libc::c_void,
    ) -> Progress {
        let i = self.sub as usize;
        let Some(range) = f.ranges.get(i).copied() else {
            // Not a token this request issued; count it and move on.
            return Progress::Done;
        };
        if let Some(fill) = f.fills.get_mut(i).and_then(Option::as_mut) {
            // A zero-fill write finished.
            let chunk = fill.iov.iov_len as i64;
            if self.result != chunk {
                self.fail(f, "writing zeros");
            } else {
                fill.next += chunk as u64;
                if fill.next < fill.end {
                    let io = zero_chunk(fill);
                    return self.resend(engine, f, io);
                }
            }
        } else if self.result < 0 {
            let e = -self.result as i32;
            let unsupported = e == libc::EOPNOTSUPP || e == libc::EINVAL;
            if !zeroes && unsupported {
                // Discard is advisory: a file system that cannot punch holes
                // simply keeps the blocks.
            } else if zeroes && unsupported {
                // No ZERO_RANGE here: write zeros, one chunk at a time.
                let mut fill = ZeroFill {
                    next: range.offset,
                    end: range.offset + range.len,
                    iov: Box::new(libc::iovec {
                        iov_base: zero,
                        iov_len: 0,
                    }),
                };
                let io = zero_chunk(&mut fill);
                f.fills[i] = Some(fill);
                return self.resend(engine, f, io);
            } else {
                self.fail(f, if zeroes { "write-zeroes" } else { "discard" });
            }
        }
        Progress::Done
    }
}

/// `(cpu ns, run-queue wait ns)` of thread `tid` of this process, from
/// `/proc/self/task/TID/schedstat`.
fn schedstat(tid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut f = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// Answer a get-id from memory: the id, zero-padded to the guest's buffers.
fn write_id(ctx: &Ctx, segs: &[Seg]) -> Status {
    let mut status = Status::Ok;
    let mut at = 0usize;
    for s in segs {
        let bytes: Vec<u8> = (at..at + s.len as usize)
            .map(|i| ctx.dev.id.get(i).copied().unwrap_or(0))
            .collect();
        if ctx.mem.write_slice(&bytes, GuestAddress(s.addr)).is_err() {
            status = Status::IoErr;
        }
        at += s.len as usize;
    }
    status
}

/// The operations a new request sends first, each with its index within the request.
fn first_ops(f: &InFlight) -> Vec<(u32, Io)> {
    match f.kind {
        Kind::Read | Kind::Write => {
            f.rw.as_ref()
                .map(|rw| vec![(0, rw_io(rw))])
                .unwrap_or_default()
        }
        Kind::Flush => vec![(0, Io::Sync)],
        Kind::GetId => Vec::new(),
        Kind::Range { zeroes } => f
            .ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mode = if !zeroes || r.unmap {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                };
                (
                    i as u32,
                    Io::Fallocate {
                        mode,
                        offset: r.offset,
                        len: r.len,
                    },
                )
            })
            .collect(),
    }
}

/// The operation that sends what is left of a read or write.
fn rw_io(rw: &Rw) -> Io {
    Io::Rw {
        write: rw.write,
        offset: rw.offset,
        iov: rw.iov.as_ptr(),
        iovcnt: rw.iov.len() as u32,
    }
}

/// Drop the first `n` bytes from an iovec list (after a short transfer).
fn advance(iov: &mut Vec<libc::iovec>, mut n: usize) {
    let mut drop = 0;
    for v in iov.iter_mut() {
        if n >= v.iov_len {
            n -= v.iov_len;
            drop += 1;
        } else {
            // SAFETY: n < iov_len, so the new base stays inside the same buffer.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            break;
        }
    }
    iov.drain(..drop);
}

/// The next write of a zero fill (at most [`ZERO_CHUNK`] bytes from the zero buffer).
fn zero_chunk(fill: &mut ZeroFill) -> Io {
    fill.iov.iov_len = (fill.end - fill.next).min(ZERO_CHUNK as u64) as usize;
    Io::Rw {
        write: true,
        offset: fill.next,
        iov: &*fill.iov,
        iovcnt: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_iovecs() {
        let mut a = [0u8; 100];
        let base = a.as_mut_ptr();
        let mut iov = vec![
            libc::iovec {
                iov_base: base.cast(),
                iov_len: 10,
            },
            libc::iovec {
                iov_base: base.wrapping_add(10).cast(),
                iov_len: 30,
            },
            libc::iovec {
                iov_base: base.wrapping_add(40).cast(),
                iov_len: 60,
            },
        ];
        advance(&mut iov, 15);
        assert_eq!(iov.len(), 2);
        assert_eq!(iov[0].iov_base as usize, base as usize + 15);
        assert_eq!(iov[0].iov_len, 25);
        advance(&mut iov, 25);
        assert_eq!(iov.len(), 1);
        assert_eq!(iov[0].iov_len, 60);
        advance(&mut iov, 60);
        assert!(iov.is_empty());
    }

    /// The whole queue path without QEMU: chains built in guest memory by virtio-queue's
    /// mock, a vring set up as the vhost-user handler would, event-idx on. A write, a read,
    /// a flush, a get-id and an unsupported request are answered with the right status, used
    /// length and data; the device publishes its avail event; the guest is interrupted when
    /// its used event asks for it and not otherwise.
    #[test]
    fn queue_end_to_end_with_event_idx() {
        run_queue(crate::engine::EngineKind::Threads);
        if crate::engine::probe_io_uring().is_ok() {
            run_queue(crate::engine::EngineKind::IoUring);
        }
    }

    fn run_queue(kind: crate::engine::EngineKind) {
        use std::os::fd::{AsRawFd, FromRawFd};
        use virtio_bindings::virtio_blk::*;
        use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        use virtio_queue::desc::{split::Descriptor as D, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;
        use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

        let dir =
            std::env::temp_dir().join(format!("tb-queue-{}-{}", kind.name(), std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        let mut img = vec![0u8; 1 << 20];
        img[4096..8192].fill(0xab);
        std::fs::write(&path, &img).unwrap();
        let disk = Arc::new(Disk::open(&path, false, false).unwrap());
        let dev = Device {
            disk: Arc::clone(&disk),
            limits: Limits::new(disk.capacity_sectors, false),
            id: request::id_bytes("serial-1"),
            zero: AlignedBuf::zeroed(ZERO_CHUNK, 4096).unwrap(),
        };
        let engine = crate::engine::new_engine(kind, disk.fd(), 64, 4, Duration::ZERO).unwrap();
        let q = Queue::new(0, engine, 32);

        let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let vring = <Vring as VringT<Gm>>::new(GuestMemoryAtomic::new(mem.clone()), 16).unwrap();
        vring.set_queue_size(16);
        vring
            .set_queue_info(
                mock.desc_table_addr().0,
                mock.avail_addr().0,
                mock.used_addr().0,
            )
            .unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        vring.set_queue_event_idx(true);
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        // SAFETY: dup returns a new descriptor that the File then owns.
        let call_file = unsafe { std::fs::File::from_raw_fd(libc::dup(call.as_raw_fd())) };
        vring.set_call(Some(call_file));

        let header = |at: u64, kind: u32, sector: u64| {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&h, GuestAddress(at)).unwrap();
        };
        header(0x2000, VIRTIO_BLK_T_OUT, 2);
        mem.write_slice(&[0x5a; 1024], GuestAddress(0x3000))
            .unwrap();
        header(0x2200, VIRTIO_BLK_T_IN, 8);
        header(0x2400, VIRTIO_BLK_T_FLUSH, 0);
        header(0x2600, VIRTIO_BLK_T_GET_ID, 0);
        header(0x2800, 99, 0);
        let (n, w) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
        let d = |a: u64, l: u32, f: u16, next: u16| RawDescriptor::from(D::new(a, l, f, next));
        let descs = [
            d(0x2000, 16, n, 1),
            d(0x3000, 1024, n, 2),
            d(0x2100, 1, w, 0), // write: head 0
            d(0x2200, 16, n, 4),
            d(0x4000, 4096, n | w, 5),
            d(0x2300, 1, w, 0), // read: head 3
            d(0x2400, 16, n, 7),
            d(0x2500, 1, w, 0), // flush: head 6
            d(0x2600, 16, n, 9),
            d(0x5000, 32, n | w, 10),
            d(0x2700, 1, w, 0), // get-id: head 8
            d(0x2800, 16, n, 12),
            d(0x2900, 1, w, 0), // unsupported: head 11
        ];
        mock.add_desc_chains(&descs, 0).unwrap();
        // The driver's used event: interrupt after the first used entry.
        let used_event = mock.avail_addr().0 + 4 + 2 * 16;
        mem.write_obj(0u16, GuestAddress(used_event)).unwrap();

        let memarc = Arc::new(mem.clone());
        let ctx = Ctx {
            dev: &dev,
            mem: &memarc,
            vring: &vring,
            conn: 1,
            stopping: false,
        };
        let used_idx = || {
            mem.read_obj::<u16>(GuestAddress(mock.used_addr().0 + 2))
                .unwrap()
        };
        let drive = |want: u16| {
            q.kick(&ctx);
            let deadline = Instant::now() + Duration::from_secs(10);
            while used_idx() < want {
                let mut pfd = libc::pollfd {
                    fd: q.event_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 100) };
                q.complete(&ctx);
                assert!(Instant::now() < deadline, "used {}", used_idx());
            }
        };
        drive(5);

        let mut used = std::collections::BTreeMap::new();
        for i in 0..5u64 {
            let at = mock.used_addr().0 + 4 + 8 * i;
            let id = mem.read_obj::<u32>(GuestAddress(at)).unwrap();
            let len = mem.read_obj::<u32>(GuestAddress(at + 4)).unwrap();
            used.insert(id, len);
        }
        assert_eq!(
            used.into_iter().collect::<Vec<_>>(),
            [(0, 1), (3, 4097), (6, 1), (8, 21), (11, 1)]
        );
        let status = |at: u64| mem.read_obj::<u8>(GuestAddress(at)).unwrap();
        assert_eq!(
            [0x2100, 0x2300, 0x2500, 0x2700, 0x2900].map(status),
            [0, 0, 0, 0, Status::Unsupp as u8]
        );
        let mut buf = vec![0u8; 4096];
        mem.read_slice(&mut buf, GuestAddress(0x4000)).unwrap();
        assert!(buf.iter().all(|&b| b == 0xab));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(0x5000)).unwrap();
        assert_eq!(&id[..8], b"serial-1");
        assert!(id[8..].iter().all(|&b| b == 0));
        let file = std::fs::read(&path).unwrap();
        assert!(file[1024..2048].iter().all(|&b| b == 0x5a));
        assert!(file[2048..4096].iter().all(|&b| b == 0));
        // The device asks to be kicked at the next new request (its avail event).
        let avail_event = mock.used_addr().0 + 4 + 8 * 16;
        assert_eq!(mem.read_obj::<u16>(GuestAddress(avail_event)).unwrap(), 5);
        assert!(call.read().is_ok(), "interrupted: the driver asked for it");

        // The driver now wants an interrupt only far ahead: none for one more flush.
        mem.write_obj(100u16, GuestAddress(used_event)).unwrap();
        let more = [d(0x2400, 16, n, 14), d(0x2500, 1, w, 0)];
        mock.add_desc_chains(&more, 13).unwrap();
        drive(6);
        assert!(call.read().is_err(), "no interrupt: used event not reached");
        let stats = q.take_stats();
        assert_eq!((stats.ok, stats.failed, stats.rejected), (5, 1, 1));
        assert_eq!((stats.writes, stats.reads, stats.flushes), (1, 1, 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_round_trip() {
        let t = token(77, 5);
        assert_eq!((t >> 32) as usize, 77);
        assert_eq!(t as u32, 5);
    }
}
