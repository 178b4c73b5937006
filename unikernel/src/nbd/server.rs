//! The NBD server: connections, pipelined requests, and the block I/O they turn into.
//!
//! Socket-agnostic and host-testable: each client is a [`Stream`] (a smoltcp socket in the
//! guest, in-memory pipes in tests) and each export is backed by an HPDI block device. Payload
//! moves in [`CHUNK`]-sized pool buffers; a request larger than that becomes several device
//! requests issued as buffers allow, so memory stays bounded by the pool whatever lengths
//! clients send (a 32 MiB write uses at most [`CONN_BUFFERS`] buffers at a time, and a client
//! that sends faster than the disk writes simply stops being read: TCP backpressure).
//!
//! Durability here is the `disk` setting: a write is acknowledged when the device has
//! completed it; FUA writes carry FUA down; FLUSH flushes the device. A write is sent to the
//! disk only once its whole payload has arrived (up to the connection's buffer budget, 2 MiB;
//! larger writes stream), so a client that vanishes mid-payload changes nothing.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use hpdi::{BufId, BufferPool, Completion, Device, Error, QueuePair, Request, Segment, SgList};

use super::handshake::{greeting, Handshake, Negotiated, Step, MAX_OPTION_DATA};
use super::tls::{Session, TlsSettings};
use super::transmission::{self as tx, Checked, Command, Parsed, RequestHeader, REQUEST_LEN};
use super::wire::errno;
use super::ExportInfo;

mod limits;
mod log_path;
mod mirror_gate;
mod tls_conn;
pub use limits::{Limits, MAX_QUEUED};
pub use log_path::{Durability, LogStats};
pub use mirror_gate::MirrorStatus;

/// The device status drivers report when a device's queue itself failed
/// (`frontend_drivers::virtio_blk::STATUS_QUEUE_ERROR`).
pub const FATAL_DEVICE_STATUS: u32 = 0x100;

/// Bytes per pool buffer and per device request.
pub const CHUNK: usize = 64 * 1024;
/// Pool buffers one connection may hold at once.
pub const CONN_BUFFERS: usize = 32;
/// Requests one connection may have in progress (more stay unread in the socket).
pub const MAX_OPS: usize = 16;
/// Largest TRIM / WRITE_ZEROES piece sent to a device.
const ZERO_PIECE: u64 = 256 << 20;

/// One client's byte stream.
pub trait Stream {
    /// Reads what has arrived into `buf`; 0 when nothing is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> usize;
    /// Queues bytes for sending; returns how many were taken.
    fn send(&mut self, data: &[u8]) -> usize;
}

/// An export's block device and the queue pair the server drives it through.
pub struct Disk {
    pub dev: Box<dyn Device>,
    pub queue: QueuePair,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub connections: u64,
    pub requests: u64,
    pub errors_sent: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub closed_bad: u64,
    /// Completions reporting that a device's queue itself failed (a fatal device error).
    pub device_failures: u64,
    /// Connections closed by a deadline (handshake, stall, idle) or evicted for a new client.
    pub closed_timeout: u64,
    pub evicted: u64,
}

/// A device request on behalf of a connection's operation.
#[derive(Clone, Copy)]
struct Sub {
    conn: usize,
    generation: u32,
    op: usize,
    /// Index of the chunk within the operation (reads) .
    chunk: u32,
    buf: Option<BufId>,
    /// Write-log generation when a read was issued (see `log_path`).
    read_gen: Option<u64>,
    /// A consistency-point request (not a connection's).
    cp: bool,
}

enum Phase {
    Handshake(Handshake),
    Transmission,
    /// Finish what is in flight, send what is queued, then close.
    Closing,
}

struct Op {
    seq: u64,
    cookie: u64,
    cmd: Checked,
    offset: u64,
    length: u64,
    error: Option<u32>,
    /// Device requests not yet completed.
    pending: u32,
    /// Writes: payload bytes still to arrive. Reads: bytes not yet issued.
    to_issue: u64,
    /// Reads: completed chunks waiting to be sent, by chunk index.
    ready: VecDeque<Option<(BufId, u32)>>,
    /// Reads: index of the first chunk in `ready`.
    ready_base: u32,
    /// Finished only once the write log has these records on disk (FLUSH and FUA under
    /// `disk` durability).
    wait: Option<log_path::Wait>,
    /// The last log record of a write, zeroing or trim (0: none yet): its reply waits for
    /// the mirror gate.
    record: u64,
}

/// A write whose payload is arriving. Full chunks are held back until the whole payload is
/// in, so a client that vanishes mid-payload leaves the disk untouched; only a write larger
/// than the connection's buffer budget is streamed to the disk as it arrives.
struct Inbound {
    op: usize,
    /// Received straight into write-log pages (else into pool buffers).
    logged: Option<log_path::Logged>,
    /// Buffer being filled and its fill level.
    buf: Option<BufId>,
    filled: usize,
    /// Full chunks not yet submitted: (buffer, device offset, length).
    held_back: Vec<(BufId, u64, usize)>,
}

/// A read reply being sent.
struct Streaming {
    op: usize,
    /// Bytes of the current chunk already sent.
    sent: usize,
}

struct Conn {
    generation: u32,
    phase: Phase,
    /// What the handshake settled (valid in transmission and closing).
    neg: Negotiated,
    /// Bytes received but not consumed yet (read ahead by the handshake).
    stash: Vec<u8>,
    export: usize,
    /// Bytes going out now.
    out: VecDeque<u8>,
    /// Complete replies waiting for the read being streamed (if any) to finish: nothing may
    /// be sent in the middle of a read's data.
    replies: VecDeque<u8>,
    hdr: [u8; REQUEST_LEN],
    hdr_len: usize,
    /// The write whose payload is arriving.
    inbound: Option<Inbound>,
    /// Payload bytes of a refused write still to drop.
    skip: u64,
    ops: Vec<Option<Op>>,
    seq: u64,
    streaming: Option<Streaming>,
    held: usize,
    /// When the client connected, and when a byte last moved either way (µs).
    since_us: u64,
    last_io_us: u64,
    /// The client has sent at least one byte.
    heard: bool,
    /// The TLS session, once STARTTLS was acknowledged: every byte goes through it.
    tls: Option<Box<Session>>,
}

pub struct Server {
    exports: Vec<ExportInfo>,
    disks: Vec<Disk>,
    pool: BufferPool,
    conns: Vec<Option<Conn>>,
    subs: Vec<Option<Sub>>,
    free_subs: Vec<usize>,
    next_gen: u32,
    wlog: Option<log_path::WriteLog>,
    /// The time (µs) as the caller last told it (`set_time`): deadlines, retries of failing
    /// disks.
    now_us: u64,
    limits: Limits,
    tls: TlsSettings,
    pub stats: ServerStats,
}

/// Whether a connection slot is still wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Open,
    /// The server is done with it: close the socket.
    Close,
}

impl Server {
    /// `exports[i]` is served from `disks[i]`; `pool` buffers must be [`CHUNK`] bytes.
    pub fn new(
        exports: Vec<ExportInfo>,
        disks: Vec<Disk>,
        pool: BufferPool,
        max_conns: usize,
    ) -> Self {
        debug_assert_eq!(pool.buf_size(), CHUNK);
        Self {
            exports,
            disks,
            pool,
            conns: (0..max_conns).map(|_| None).collect(),
            subs: Vec::new(),
            free_subs: Vec::new(),
            next_gen: 1,
            wlog: None,
            now_us: 0,
            limits: Limits::default(),
            tls: TlsSettings::default(),
            stats: ServerStats::default(),
        }
    }

    pub fn exports(&self) -> &[ExportInfo] {
        &self.exports
    }

    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// The pool, to change what a test's simulated host writes into shared memory.
    #[cfg(test)]
    pub(crate) fn pool_mut(&mut self) -> &mut BufferPool {
        &mut self.pool
    }

    pub fn max_conns(&self) -> usize {
        self.conns.len()
    }

    pub fn is_active(&self, slot: usize) -> bool {
        self.conns.get(slot).is_some_and(|c| c.is_some())
    }

    /// A client whose address is unknown connected on `slot`: start its handshake (it sees
    /// only the exports open to every client).
    pub fn accept(&mut self, slot: usize) {
        self.accept_from(slot, None);
    }

    /// A client at `peer` (IPv4; `None`: unknown) connected on `slot`: start its handshake,
    /// which offers only the exports whose allow-lists admit `peer`.
    pub fn accept_from(&mut self, slot: usize, peer: Option<[u8; 4]>) {
        let mut out = Vec::new();
        greeting(&mut out);
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        self.stats.connections += 1;
        self.conns[slot] = Some(Conn {
            generation: self.next_gen,
            phase: Phase::Handshake(Handshake::for_peer(peer).with_tls(self.tls.mode())),
            neg: Negotiated {
                export: 0,
                structured: false,
                base_allocation: false,
            },
            stash: Vec::new(),
            export: 0,
            out: out.into(),
            replies: VecDeque::new(),
            hdr: [0; REQUEST_LEN],
            hdr_len: 0,
            inbound: None,
            skip: 0,
            ops: (0..MAX_OPS).map(|_| None).collect(),
            seq: 0,
            streaming: None,
            held: 0,
            since_us: self.now_us,
            last_io_us: self.now_us,
            heard: false,
            tls: None,
        });
    }

    /// Closes the connection on `slot` to make room for a new client.
    pub fn evict(&mut self, slot: usize) {
        if self.is_active(slot) {
            self.stats.evicted += 1;
            self.drop_conn(slot);
        }
    }

    /// The client on `slot` went away: drop its state. Device requests still in flight keep
    /// their buffers until they complete.
    pub fn drop_conn(&mut self, slot: usize) {
        let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if let Some(inb) = c.inbound.take() {
            if let (Some(l), Some(w)) = (inb.logged.as_ref(), self.wlog.as_mut())
                && let Some(r) = l.res
            {
                w.log.abandon(r);
            }
            for b in inb
                .buf
                .into_iter()
                .chain(inb.held_back.into_iter().map(|h| h.0))
            {
                let _ = self.pool.free(b);
            }
        }
        for op in c.ops.iter_mut().filter_map(Option::take) {
            for (b, _) in op.ready.into_iter().flatten() {
                let _ = self.pool.free(b);
            }
        }
    }

    /// Moves bytes between the client and its connection state, and starts device requests.
    pub fn service(&mut self, slot: usize, s: &mut dyn Stream) -> ConnState {
        let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return ConnState::Close;
        };
        if let Some(why) = self.expired(&c) {
            log::info!("nbd: closing connection {slot}: {why}");
            self.stats.closed_timeout += 1;
            self.conns[slot] = Some(c);
            self.drop_conn(slot);
            return ConnState::Close;
        }
        let mut counted = limits::Counting {
            inner: s,
            moved: false,
            blocked: false,
            heard: false,
        };
        let state = self.service_any(slot, &mut c, &mut counted);
        if counted.kept_up() {
            c.last_io_us = self.now_us;
        }
        c.heard |= counted.heard;
        self.conns[slot] = Some(c);
        if state == ConnState::Close {
            self.drop_conn(slot);
        }
        state
    }

    /// Tells the server the time (µs, monotonic): it paces retries of a failing disk.
    pub fn set_time(&mut self, now_us: u64) {
        self.now_us = now_us;
    }

    /// Ends the server, handing its disks and its buffer pool (with the log's region) back.
    pub fn into_parts(self) -> (Vec<Box<dyn hpdi::Device>>, BufferPool) {
        (self.disks.into_iter().map(|d| d.dev).collect(), self.pool)
    }

    /// Ends the server, handing its disks back in export order.
    pub fn into_disks(self) -> Vec<Box<dyn hpdi::Device>> {
        self.disks.into_iter().map(|d| d.dev).collect()
    }

    /// Device requests submitted and not yet completed, over every disk.
    pub fn device_requests(&self) -> usize {
        self.disks
            .iter()
            .map(|d| d.queue.outstanding(d.dev.as_ref()))
            .sum()
    }

    /// Polls every disk and hands completions to their connections.
    pub fn poll_disks(&mut self) -> usize {
        let mut done: Vec<Completion> = Vec::new();
        for d in &mut self.disks {
            d.queue.poll(d.dev.as_mut(), &mut self.pool);
            d.queue.reap(&mut done, usize::MAX);
        }
        let n = done.len();
        for c in done {
            self.completed(c);
        }
        self.cp_step();
        n
    }

    fn completed(&mut self, c: Completion) {
        let id = c.tag as usize;
        let Some(sub) = self.subs.get_mut(id).and_then(Option::take) else {
            return;
        };
        self.free_subs.push(id);
        if sub.cp {
            self.cp_completed(sub.op, c.result);
            return;
        }
        if let Some(g) = sub.read_gen {
            if let (Ok(_), Some(b)) = (c.result, sub.buf) {
                self.patch_from_log(sub.conn, sub.generation, sub.op, sub.chunk, b);
            }
            self.read_done(g);
        }
        let conn = self.conns[sub.conn]
            .as_mut()
            .filter(|conn| conn.generation == sub.generation);
        let Some(conn) = conn else {
            // The connection is gone: just reclaim the buffer.
            if let Some(b) = sub.buf {
                let _ = self.pool.free(b);
            }
            return;
        };
        let Some(op) = conn.ops[sub.op].as_mut() else {
            if let Some(b) = sub.buf {
                conn.held -= 1;
                let _ = self.pool.free(b);
            }
            return;
        };
        op.pending -= 1;
        if let Err(e) = c.result {
            op.error.get_or_insert(errno_of(e));
        }
        if c.result
            == Err(Error::Device {
                status: FATAL_DEVICE_STATUS,
            })
        {
            self.stats.device_failures += 1;
        }
        match (op.cmd.cmd, sub.buf) {
            (Command::Read, Some(b)) => {
                let i = (sub.chunk - op.ready_base) as usize;
                // Length 0 marks a failed chunk.
                let len = c.result.unwrap_or(0);
                if let Some(slot) = op.ready.get_mut(i) {
                    *slot = Some((b, len));
                }
            }
            (_, Some(b)) => {
                conn.held -= 1;
                let _ = self.pool.free(b);
            }
            _ => {}
        }
    }

    fn new_sub(&mut self, sub: Sub) -> u64 {
        match self.free_subs.pop() {
            Some(i) => {
                self.subs[i] = Some(sub);
                i as u64
            }
            None => {
                self.subs.push(Some(sub));
                (self.subs.len() - 1) as u64
            }
        }
    }

    fn service_conn(&mut self, slot: usize, c: &mut Conn, s: &mut dyn Stream) -> ConnState {
        // Bounded work per call so one busy client cannot starve the others.
        for _ in 0..64 {
            if c.tls.is_some() {
                // STARTTLS was just acknowledged: later bytes are TLS, read by the caller.
                return ConnState::Open;
            }
            let before = (c.out.len(), c.hdr_len, c.skip, c.held, c.seq);
            self.flush_out(c, s);
            if matches!(c.phase, Phase::Closing) {
                if c.ops.iter().all(Option::is_none) && c.out.is_empty() && c.replies.is_empty() {
                    return ConnState::Close;
                }
                self.progress(slot, c, s);
            } else if let Err(why) = self.input(slot, c, s) {
                log::info!("nbd: closing connection {slot}: {why}");
                self.stats.closed_bad += 1;
                c.phase = Phase::Closing;
            } else {
                self.progress(slot, c, s);
            }
            self.flush_out(c, s);
            if (c.out.len(), c.hdr_len, c.skip, c.held, c.seq) == before {
                break;
            }
        }
        ConnState::Open
    }

    fn flush_out(&mut self, c: &mut Conn, s: &mut dyn Stream) {
        while !c.out.is_empty() {
            let (a, _) = c.out.as_slices();
            let n = s.send(a);
            if n == 0 {
                return;
            }
            c.out.drain(..n);
        }
    }

    /// Reads and parses input; Err closes the connection.
    fn input(&mut self, slot: usize, c: &mut Conn, s: &mut dyn Stream) -> Result<(), &'static str> {
        let backlogged = Self::backlogged(c);
        if let Phase::Handshake(hs) = &mut c.phase {
            let mut tmp = [0u8; 1024];
            // Option replies the client does not read stop its options being read.
            let room = if backlogged {
                0
            } else {
                (MAX_OPTION_DATA + 16)
                    .saturating_sub(c.stash.len())
                    .min(tmp.len())
            };
            let n = s.recv(&mut tmp[..room]);
            c.stash.extend_from_slice(&tmp[..n]);
            let mut out = Vec::new();
            loop {
                let (used, step) = hs.feed(&c.stash, &self.exports, &mut out);
                c.stash.drain(..used);
                match step {
                    Step::Continue => continue,
                    Step::NeedMore => break,
                    Step::Close(why) => {
                        c.out.extend(out);
                        return Err(why);
                    }
                    Step::StartTls => return self.start_tls(c, out),
                    Step::Transmission(_) if self.serving() >= self.limits.max_serving => {
                        c.out.extend(out);
                        return Err("too many clients being served");
                    }
                    Step::Transmission(neg) => {
                        c.export = neg.export;
                        c.neg = neg;
                        c.phase = Phase::Transmission;
                        break;
                    }
                }
            }
            c.out.extend(out);
            if !matches!(c.phase, Phase::Transmission) {
                return Ok(());
            }
        }
        self.requests(slot, c, s)
    }

    /// Transmission phase input: payload of the current write, then request headers.
    fn requests(
        &mut self,
        slot: usize,
        c: &mut Conn,
        s: &mut dyn Stream,
    ) -> Result<(), &'static str> {
        loop {
            if c.skip > 0 {
                let mut tmp = [0u8; 4096];
                let want = c.skip.min(tmp.len() as u64) as usize;
                let n = recv(&mut c.stash, s, &mut tmp[..want]);
                if n == 0 {
                    return Ok(());
                }
                c.skip -= n as u64;
                continue;
            }
            if c.inbound.is_some() {
                if !self.payload(slot, c, s) {
                    return Ok(());
                }
                continue;
            }
            if c.ops.iter().all(Option::is_some) || Self::backlogged(c) {
                // Too many requests in progress, or replies unread: leave the rest unread.
                return Ok(());
            }
            let at = c.hdr_len;
            let n = recv(&mut c.stash, s, &mut c.hdr[at..]);
            c.hdr_len += n;
            if c.hdr_len < REQUEST_LEN {
                return Ok(());
            }
            c.hdr_len = 0;
            let h = match tx::parse_header(&c.hdr) {
                Parsed::Header(h) => h,
                Parsed::BadMagic(_) => return Err("bad request magic"),
                Parsed::Incomplete => return Ok(()),
            };
            self.stats.requests += 1;
            let neg = c.neg;
            self.request(c, &neg, h);
            if matches!(c.phase, Phase::Closing) {
                return Ok(());
            }
        }
    }

    fn request(&mut self, c: &mut Conn, neg: &Negotiated, h: RequestHeader) {
        let export = &self.exports[c.export];
        let checked = match h.check(export, neg) {
            Ok(k) => k,
            Err(e) => {
                c.skip = h.payload_len();
                self.reply_now(c, neg, h.cookie, e);
                return;
            }
        };
        if checked.cmd == Command::Disconnect {
            c.phase = Phase::Closing;
            return;
        }
        let Some(i) = c.ops.iter().position(Option::is_none) else {
            return; // unreachable: the caller checked for a free slot
        };
        c.seq += 1;
        let length = u64::from(h.length);
        let to_issue = match checked.cmd {
            Command::Flush => 1,
            // CACHE is a hint and BLOCK_STATUS needs no I/O.
            Command::Cache | Command::BlockStatus => 0,
            _ => length,
        };
        c.ops[i] = Some(Op {
            seq: c.seq,
            cookie: h.cookie,
            cmd: checked,
            offset: h.offset,
            length,
            error: None,
            pending: 0,
            to_issue,
            ready: VecDeque::new(),
            ready_base: 0,
            wait: None,
            record: 0,
        });
        if checked.cmd == Command::Write {
            // With a log, every write is logged (see `log_path`: one order for all changes).
            let logged = self.has_log().then(log_path::Logged::default);
            c.inbound = Some(Inbound {
                op: i,
                logged,
                buf: None,
                filled: 0,
                held_back: Vec::new(),
            });
        }
        if checked.cmd == Command::Flush {
            self.flush_via_log(c, i);
        }
    }

    /// Queues a device request for op `i`; a full device ring is an error for the op only if
    /// the request could never be queued (it is retried by the caller otherwise).
    fn issue(
        &mut self,
        slot: usize,
        c: &mut Conn,
        i: usize,
        mut r: Request,
        buf: Option<BufId>,
        chunk: u32,
    ) -> bool {
        let read_gen = (r.op == hpdi::Op::Read).then(|| self.read_started());
        let id = self.new_sub(Sub {
            conn: slot,
            generation: c.generation,
            op: i,
            chunk,
            buf,
            read_gen,
            cp: false,
        });
        r.tag = id;
        let disk = &mut self.disks[c.export];
        match disk.queue.submit(r) {
            Ok(()) => {
                if let Some(op) = c.ops[i].as_mut() {
                    op.pending += 1;
                }
                true
            }
            Err(_) => {
                if let Some(g) = self.subs[id as usize].take().and_then(|s| s.read_gen) {
                    self.read_done(g);
                }
                self.free_subs.push(id as usize);
                false
            }
        }
    }

    /// Receives write payload into buffers and submits them; false when stalled.
    fn payload(&mut self, slot: usize, c: &mut Conn, s: &mut dyn Stream) -> bool {
        let Some(mut inb) = c.inbound.take() else {
            return false;
        };
        let progressed = self.payload_step(slot, c, s, &mut inb);
        let receiving = c.ops[inb.op].as_ref().is_some_and(|o| o.to_issue > 0);
        let uncommitted = inb.logged.as_ref().is_some_and(|l| l.res.is_some());
        if receiving || uncommitted || inb.buf.is_some() || !inb.held_back.is_empty() {
            c.inbound = Some(inb);
        }
        progressed
    }

    fn payload_step(
        &mut self,
        slot: usize,
        c: &mut Conn,
        s: &mut dyn Stream,
        inb: &mut Inbound,
    ) -> bool {
        if inb.logged.is_some() {
            return self.payload_logged(c, s, inb);
        }
        let i = inb.op;
        let Some(op) = c.ops[i].as_ref() else {
            for b in inb
                .buf
                .take()
                .into_iter()
                .chain(inb.held_back.drain(..).map(|h| h.0))
            {
                c.held -= 1;
                let _ = self.pool.free(b);
            }
            return true;
        };
        let (offset, length, fua, left) = (op.offset, op.length, op.cmd.fua, op.to_issue);
        // Submit held-back chunks once the payload is complete, or when the budget is spent
        // and the rest of a large write cannot be received otherwise.
        let complete = left == 0;
        let starved = c.held >= self.conn_budget() && inb.buf.is_none();
        if (complete || starved) && !inb.held_back.is_empty() {
            while let Some(&(b, at, len)) = inb.held_back.first() {
                let mut r = Request::write(at, SgList::one(Segment::whole(b, len)), 0);
                r.fua = fua;
                if !self.issue(slot, c, i, r, Some(b), 0) {
                    return false; // device ring full: retried on the next poll
                }
                inb.held_back.remove(0);
                self.stats.bytes_written += len as u64;
            }
            return true;
        }
        if complete {
            return false;
        }
        let buf = match inb.buf {
            Some(b) => b,
            None => {
                if c.held >= self.conn_budget() {
                    return false;
                }
                let Ok(b) = self.pool.alloc() else {
                    return false;
                };
                c.held += 1;
                inb.buf = Some(b);
                inb.filled = 0;
                b
            }
        };
        let want = (CHUNK - inb.filled).min(left as usize);
        let Ok(dst) = self.pool.buf_mut(buf) else {
            return false;
        };
        let n = recv(&mut c.stash, s, &mut dst[inb.filled..inb.filled + want]);
        inb.filled += n;
        let op = c.ops[i].as_mut().expect("op exists");
        op.to_issue -= n as u64;
        if inb.filled == CHUNK || op.to_issue == 0 {
            let at = offset + (length - op.to_issue) - inb.filled as u64;
            inb.held_back.push((buf, at, inb.filled));
            inb.buf = None;
            inb.filled = 0;
        }
        n > 0
    }

    /// Issues device requests, finishes completed operations, streams read data.
    fn progress(&mut self, slot: usize, c: &mut Conn, s: &mut dyn Stream) {
        if matches!(c.phase, Phase::Handshake(_)) {
            return;
        }
        let neg = c.neg;
        let mut order: Vec<usize> = (0..MAX_OPS).filter(|&i| c.ops[i].is_some()).collect();
        order.sort_by_key(|&i| c.ops[i].as_ref().map_or(0, |o| o.seq));
        for &i in &order {
            while self.issue_next(slot, c, i) {}
        }
        // Replies of finished non-read operations.
        for &i in &order {
            let Some(op) = c.ops[i].as_ref() else {
                continue;
            };
            let receiving = c.inbound.as_ref().is_some_and(|inb| inb.op == i);
            if op.cmd.cmd == Command::Read || op.pending > 0 || op.to_issue > 0 || receiving {
                continue;
            }
            let waited = match op.wait {
                Some(w) => self.wait_outcome(c.export, w),
                None => Some(0),
            };
            let Some(wait_error) = waited else {
                continue;
            };
            if op.record > 0 && op.error.is_none() && !self.mirror_allows(c.export, op.record) {
                continue;
            }
            let mut op = c.ops[i].take().expect("op exists");
            if wait_error != 0 {
                op.error.get_or_insert(wait_error);
            }
            match (op.cmd.cmd, op.error) {
                (Command::BlockStatus, None) => {
                    // Everything reads as allocated data (no allocation map is kept).
                    let mut out = Vec::new();
                    let len = op.length.min(u64::from(u32::MAX) & !511) as u32;
                    tx::block_status(&mut out, op.cookie, &[(len, 0)]);
                    c.replies.extend(out);
                }
                (_, e) => self.reply_now(c, &neg, op.cookie, e.unwrap_or(0)),
            }
        }
        self.stream_reads(c, &neg, s, &order);
    }

    /// Issues the next device request of op `i` (read chunk, zeroing piece, flush); false
    /// when there is nothing to issue or no room (retried on the next poll).
    fn issue_next(&mut self, slot: usize, c: &mut Conn, i: usize) -> bool {
        let Some(op) = c.ops[i].as_ref() else {
            return false;
        };
        if op.to_issue == 0 || op.error.is_some() {
            return false;
        }
        let done = op.length.saturating_sub(op.to_issue); // flush: length 0, one to issue
        let at = op.offset + done;
        match op.cmd.cmd {
            Command::Read => {
                if c.held >= self.conn_budget() {
                    return false;
                }
                let Ok(b) = self.pool.alloc() else {
                    return false;
                };
                let n = op.to_issue.min(CHUNK as u64);
                let chunk = (done / CHUNK as u64) as u32;
                let r = Request::read(at, SgList::one(Segment::whole(b, n as usize)), 0);
                if !self.issue(slot, c, i, r, Some(b), chunk) {
                    let _ = self.pool.free(b);
                    return false;
                }
                c.held += 1;
                let op = c.ops[i].as_mut().expect("op exists");
                op.to_issue -= n;
                op.ready.push_back(None);
                self.stats.bytes_read += n;
                true
            }
            Command::Trim | Command::WriteZeroes if self.has_log() => self.log_range(c, i),
            Command::Trim | Command::WriteZeroes => {
                let n = op.to_issue.min(ZERO_PIECE);
                let mut r = if op.cmd.cmd == Command::Trim {
                    Request::discard(at, n, 0)
                } else {
                    Request::write_zeroes(at, n, 0)
                };
                r.fua = op.cmd.fua;
                if !self.issue(slot, c, i, r, None, 0) {
                    return false;
                }
                c.ops[i].as_mut().expect("op exists").to_issue -= n;
                true
            }
            Command::Flush => {
                if !self.issue(slot, c, i, Request::flush(0), None, 0) {
                    return false;
                }
                c.ops[i].as_mut().expect("op exists").to_issue = 0;
                true
            }
            _ => false,
        }
    }

    fn stream_reads(
        &mut self,
        c: &mut Conn,
        neg: &Negotiated,
        s: &mut dyn Stream,
        order: &[usize],
    ) {
        loop {
            if c.streaming.is_none() {
                // Between read replies: release the other replies first.
                c.out.extend(c.replies.drain(..));
                // The oldest read whose first chunk is ready (or that failed) starts next.
                let next = order.iter().copied().find(|&i| {
                    c.ops[i].as_ref().is_some_and(|o| {
                        o.cmd.cmd == Command::Read
                            && match o.error {
                                // Failed before any data went out: wait for its other chunks,
                                // then send the error instead of data.
                                Some(_) => o.pending == 0,
                                None => o.ready.front().is_some_and(Option::is_some),
                            }
                    })
                });
                let Some(i) = next else { return };
                let op = c.ops[i].as_ref().expect("op exists");
                if let Some(e) = op.error {
                    let op = c.ops[i].take().expect("op exists");
                    for (b, _) in op.ready.into_iter().flatten() {
                        c.held -= 1;
                        let _ = self.pool.free(b);
                    }
                    self.reply_now(c, neg, op.cookie, e);
                    continue;
                }
                let mut hdr = Vec::new();
                if neg.structured {
                    tx::offset_data(&mut hdr, op.cookie, op.offset, op.length as u32, false);
                } else {
                    tx::simple_reply(&mut hdr, op.cookie, 0);
                }
                c.out.extend(hdr);
                c.streaming = Some(Streaming { op: i, sent: 0 });
            }
            self.flush_out(c, s);
            if !c.out.is_empty() {
                return;
            }
            let (si, sent) = match &c.streaming {
                Some(st) => (st.op, st.sent),
                None => continue,
            };
            let Some(op) = c.ops[si].as_mut() else {
                c.streaming = None;
                continue;
            };
            if let Some(Some((_, 0))) = op.ready.front() {
                // A chunk failed after the reply started: the reply cannot be finished
                // correctly, so the connection is closed (the protocol's rule for this case).
                log::warn!("nbd: read failed mid-reply; closing the connection");
                c.streaming = None;
                c.phase = Phase::Closing;
                return;
            }
            let Some(Some((b, len))) = op.ready.front().copied() else {
                if op.ready.is_empty() && op.to_issue == 0 && op.pending == 0 {
                    // All data sent.
                    let cookie = op.cookie;
                    c.ops[si] = None;
                    c.streaming = None;
                    if neg.structured {
                        // Right after the data: each reply's chunks stay together.
                        let mut out = Vec::new();
                        tx::structured_done(&mut out, cookie);
                        c.out.extend(out);
                    }
                    continue;
                }
                return; // next chunk not ready yet
            };
            let n = match self.pool.buf(b) {
                Ok(d) => s.send(&d[sent..len as usize]),
                Err(_) => 0,
            };
            let sent = sent + n;
            if sent < len as usize {
                if let Some(st) = c.streaming.as_mut() {
                    st.sent = sent;
                }
                return;
            }
            if let Some(st) = c.streaming.as_mut() {
                st.sent = 0;
            }
            op.ready.pop_front();
            op.ready_base += 1;
            c.held -= 1;
            let _ = self.pool.free(b);
        }
    }

    fn reply_now(&mut self, c: &mut Conn, neg: &Negotiated, cookie: u64, error: u32) {
        let mut out = Vec::new();
        if error != 0 {
            self.stats.errors_sent += 1;
        }
        match (neg.structured, error) {
            (true, 0) => tx::structured_done(&mut out, cookie),
            (true, e) => tx::structured_error(&mut out, cookie, e, "request failed"),
            (false, e) => tx::simple_reply(&mut out, cookie, e),
        }
        c.replies.extend(out);
    }
}

fn errno_of(e: Error) -> u32 {
    match e {
        Error::OutOfRange { .. } => errno::EINVAL,
        Error::Unsupported(_) => errno::ENOTSUP,
        Error::PoolExhausted | Error::RingFull => errno::ENOMEM,
        _ => errno::EIO,
    }
}

/// Reads into `buf`, taking bytes stashed by the handshake first.
fn recv(stash: &mut Vec<u8>, s: &mut dyn Stream, buf: &mut [u8]) -> usize {
    if stash.is_empty() {
        return s.recv(buf);
    }
    let n = buf.len().min(stash.len());
    buf[..n].copy_from_slice(&stash[..n]);
    stash.drain(..n);
    n
}
