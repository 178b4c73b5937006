//! `NetPhy`: the `smoltcp::phy::Device` adapter over any HPDI network device.
//!
//! smoltcp reads received frames and writes outgoing frames directly in the HPDI pool
//! buffers that the device (virtio-net) receives into and sends from, so no payload byte is
//! copied between the device and the TCP/IP stack:
//!
//! - `NetPhy` keeps `rx_buffers` pool buffers posted as `Op::Recv`. A completed receive's
//!   buffer is lent to smoltcp as `&[u8]` of the frame (`RxToken`) and posted again on the
//!   next call into the adapter.
//! - `TxToken::consume(len, f)` lends `f` a `&mut [u8]` window of a free transmit buffer and
//!   submits that buffer as `Op::Send`. There are `tx_buffers` of them; `transmit` returns
//!   `None` while all are in flight (after reaping completions).
//!
//! smoltcp consumes the `TxToken` returned by `receive` *inside* the `RxToken`'s closure
//! (to answer the frame it is reading). Both buffers are therefore split off the pool
//! together (`BufferPool::slices_mut`), and that reply is handed to the device on the next
//! call into the adapter — which `Interface::poll` always makes, because it calls `receive`
//! until it returns `None`. Frames from `transmit` go to the device at once. The bookkeeping
//! the tokens share lives in a `RefCell`.
//!
//! This module has no `unsafe`.
#![forbid(unsafe_code)]

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use hpdi::device::DeviceStats;
use hpdi::{
    BufId, BufferPool, Capabilities, Completion, Device, DeviceKind, Error, Op, QueuePair, Request,
    Segment, SgList,
};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Largest Ethernet frame without offloads: 1500-byte IP MTU plus the 14-byte header.
pub const MAX_FRAME: usize = 1514;
const TX_TAG: u64 = 1 << 32;

/// How many pool buffers the adapter keeps for each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetPhyConfig {
    /// Receive buffers kept posted on the device.
    pub rx_buffers: usize,
    /// Transmit buffers (frames in flight to the device at most).
    pub tx_buffers: usize,
}

impl Default for NetPhyConfig {
    /// 64 + 64 buffers: 256 KiB of 2 KiB pool buffers, well within a 256-entry virtio queue.
    fn default() -> Self {
        Self {
            rx_buffers: 64,
            tx_buffers: 64,
        }
    }
}

impl NetPhyConfig {
    pub fn buffers(&self) -> usize {
        self.rx_buffers + self.tx_buffers
    }

    /// This configuration with each direction cut to what `caps`' device queues at once.
    pub fn fit(self, caps: &Capabilities) -> Self {
        let depth = usize::from(caps.queue_depth).max(1);
        Self {
            rx_buffers: self.rx_buffers.clamp(1, depth),
            tx_buffers: self.tx_buffers.clamp(1, depth),
        }
    }
}

/// What the adapter counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetPhyStats {
    /// Frames (and their bytes) handed to smoltcp.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames (and their bytes) smoltcp wrote and the adapter submitted.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Receives and sends the device failed.
    pub rx_errors: u64,
    pub tx_errors: u64,
    /// Times smoltcp found no free transmit buffer.
    pub tx_exhausted: u64,
    /// Frames smoltcp asked for that did not fit a pool buffer (dropped).
    pub tx_dropped: u64,
    /// TCP payload bytes of the IPv4 frames handed to smoltcp. The adapter copies nothing,
    /// but smoltcp copies a segment's payload from the frame into the socket's receive
    /// buffer: this counts that copy (an upper bound: a duplicate or out-of-window segment
    /// smoltcp drops is counted too).
    pub tcp_rx_payload: u64,
    /// TCP payload bytes of the IPv4 frames smoltcp wrote: smoltcp copies them from the
    /// socket's send buffer into the frame (retransmissions included).
    pub tcp_tx_payload: u64,
}

/// The TCP payload length of an Ethernet frame carrying IPv4/TCP (0 for anything else, or
/// for headers that do not hold together). Reads the headers only.
pub fn tcp_payload_len(frame: &[u8]) -> usize {
    const ETH: usize = 14;
    if frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] {
        return 0;
    }
    let ip = &frame[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    // Version 4, TCP, not a later fragment (its bytes carry no TCP header).
    let later_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
    if ip[0] >> 4 != 4 || ip[9] != 6 || later_fragment || ihl < 20 || total > ip.len() {
        return 0;
    }
    let Some(tcp) = ip.get(ihl..total) else {
        return 0;
    };
    let Some(&off) = tcp.get(12) else {
        return 0;
    };
    tcp.len().saturating_sub(usize::from(off >> 4) * 4)
}

/// The part of the adapter the tokens share.
struct Ctl {
    dev: Box<dyn Device>,
    q: QueuePair,
    buf_size: usize,
    /// Received frames (buffer, length) not yet handed to smoltcp.
    rx_ready: VecDeque<(BufId, usize)>,
    /// Receives submitted and not completed.
    rx_posted: usize,
    tx_free: Vec<BufId>,
    /// The receive buffer lent to smoltcp by the last `receive`.
    lent_rx: Option<BufId>,
    /// The transmit buffer lent with it, and the frame length once smoltcp wrote one.
    lent_tx: Option<(BufId, Option<usize>)>,
    buffers: Vec<BufId>,
    done: Vec<Completion>,
    stats: NetPhyStats,
}

impl Ctl {
    fn submit(&mut self, op: Op, buf: BufId, len: usize) {
        let tag = u64::from(buf.0) | if op == Op::Send { TX_TAG } else { 0 };
        let req = Request {
            op,
            fua: false,
            offset: 0,
            len: 0,
            sg: SgList::one(Segment::whole(buf, len)),
            tag,
        };
        // Every buffer has at most one request outstanding, and the rings hold more entries
        // than there are buffers, so the submission ring always has room.
        if self.q.submit(req).is_err() {
            log::error!("net-phy: submission ring full");
        }
        match op {
            Op::Send => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += len as u64;
            }
            _ => self.rx_posted += 1,
        }
    }

    /// Takes back what the last `receive` lent: the receive buffer is posted again and the
    /// transmit buffer is sent (if smoltcp wrote a frame into it) or freed.
    fn settle(&mut self) {
        if let Some(buf) = self.lent_rx.take() {
            self.submit(Op::Recv, buf, self.buf_size);
        }
        match self.lent_tx.take() {
            Some((buf, Some(len))) => self.submit(Op::Send, buf, len),
            Some((buf, None)) => self.tx_free.push(buf),
            None => {}
        }
    }

    /// Settles, starts what is queued and reaps completions.
    fn pump(&mut self, pool: &mut BufferPool) {
        self.settle();
        for _ in 0..2 {
            self.q.poll(self.dev.as_mut(), pool);
            self.done.clear();
            self.q.reap(&mut self.done, usize::MAX);
            let done = core::mem::take(&mut self.done);
            for c in &done {
                self.finish(c, pool);
            }
            self.done = done;
            if self.q.sq.is_empty() {
                break;
            }
        }
    }

    fn finish(&mut self, c: &Completion, pool: &mut BufferPool) {
        let buf = BufId(c.tag as u32);
        if c.tag & TX_TAG != 0 {
            if c.result.is_err() {
                self.stats.tx_errors += 1;
            }
            self.tx_free.push(buf);
            return;
        }
        self.rx_posted -= 1;
        match c.result {
            Ok(len) => self
                .rx_ready
                .push_back((buf, (len as usize).min(self.buf_size))),
            Err(e @ Error::Device { .. }) => {
                self.stats.rx_errors += 1;
                log::warn!("net-phy: receive failed: {e}");
                self.submit(Op::Recv, buf, self.buf_size);
            }
            Err(e) => {
                // The device refuses the request itself: posting it again would not help.
                self.stats.rx_errors += 1;
                log::error!("net-phy: receive buffer {} refused: {e}", buf.0);
                self.buffers.retain(|&b| b != buf);
                let _ = pool.free(buf);
            }
        }
    }
}

/// A `smoltcp::phy::Device` over an HPDI network device and a pool of DMA buffers.
pub struct NetPhy {
    pool: BufferPool,
    ctl: RefCell<Ctl>,
    config: NetPhyConfig,
    mtu: usize,
}

impl NetPhy {
    /// Takes `config.buffers()` buffers from `pool` (its buffers must hold a full frame:
    /// [`MAX_FRAME`] bytes, so 2048 in practice) and posts the receive buffers on `dev`.
    ///
    /// Errors: `Unsupported` for a device that is not a network device with send and
    /// receive; `BadSegment` for pool buffers smaller than a frame; `BadCapacity` for more
    /// buffers in one direction than the device queues at once, or none; `PoolExhausted`.
    pub fn new(
        dev: Box<dyn Device>,
        mut pool: BufferPool,
        config: NetPhyConfig,
    ) -> Result<Self, Error> {
        let caps = dev.capabilities();
        for op in [Op::Recv, Op::Send] {
            if caps.kind != DeviceKind::Net || !caps.ops.contains(op) {
                return Err(Error::Unsupported(op));
            }
        }
        if pool.buf_size() < MAX_FRAME {
            return Err(Error::BadSegment);
        }
        for n in [config.rx_buffers, config.tx_buffers] {
            if n == 0 || n > usize::from(caps.queue_depth) {
                return Err(Error::BadCapacity(n));
            }
        }
        // Room in both rings for every buffer's request plus one (`Device::poll` keeps the
        // completion ring able to take a completion for everything in flight).
        let q = QueuePair::new((config.buffers() + 1).next_power_of_two())?;
        let mut buffers = Vec::with_capacity(config.buffers());
        for _ in 0..config.buffers() {
            buffers.push(pool.alloc()?);
        }
        let buf_size = pool.buf_size();
        let mut ctl = Ctl {
            dev,
            q,
            buf_size,
            rx_ready: VecDeque::new(),
            rx_posted: 0,
            tx_free: buffers[config.rx_buffers..].to_vec(),
            lent_rx: None,
            lent_tx: None,
            buffers,
            done: Vec::new(),
            stats: NetPhyStats::default(),
        };
        for i in 0..config.rx_buffers {
            let buf = ctl.buffers[i];
            ctl.submit(Op::Recv, buf, buf_size);
        }
        ctl.pump(&mut pool);
        Ok(Self {
            pool,
            ctl: RefCell::new(ctl),
            config,
            mtu: buf_size.min(MAX_FRAME),
        })
    }

    /// Lets the device make progress without smoltcp: posts lent buffers again, starts
    /// queued sends, reaps completions. `Interface::poll` does this through `receive` and
    /// `transmit`; call it after `Interface::poll_ingress_single`, or while idle.
    pub fn poll(&mut self) {
        self.ctl.get_mut().pump(&mut self.pool);
    }

    pub fn stats(&self) -> NetPhyStats {
        self.ctl.borrow().stats
    }

    /// The device's own counters.
    pub fn device_stats(&self) -> DeviceStats {
        self.ctl.borrow().dev.stats()
    }

    pub fn config(&self) -> NetPhyConfig {
        self.config
    }

    /// Receive buffers the device holds now.
    pub fn rx_posted(&self) -> usize {
        self.ctl.borrow().rx_posted
    }

    /// Transmit buffers free now.
    pub fn tx_free(&self) -> usize {
        self.ctl.borrow().tx_free.len()
    }

    /// The pool the adapter's buffers come from.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// The pool buffers the adapter owns (receive buffers first).
    pub fn buffers(&self) -> Vec<BufId> {
        self.ctl.borrow().buffers.clone()
    }
}

impl phy::Device for NetPhy {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let ctl = self.ctl.get_mut();
        ctl.pump(&mut self.pool);
        let &(rx, len) = ctl.rx_ready.front()?;
        let Some(&tx) = ctl.tx_free.last() else {
            ctl.stats.tx_exhausted += 1;
            return None;
        };
        let segs = [
            Segment {
                buf: rx,
                offset: 0,
                len: len as u32,
            },
            Segment::whole(tx, ctl.buf_size),
        ];
        let mut lent = self.pool.slices_mut(&segs).ok()?.into_iter();
        let (frame, window) = (lent.next()?, lent.next()?);
        ctl.rx_ready.pop_front();
        ctl.tx_free.pop();
        ctl.lent_rx = Some(rx);
        ctl.lent_tx = Some((tx, None));
        let ctl = &self.ctl;
        Some((RxToken { frame, ctl }, TxToken(Tx::Lent { window, ctl })))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        let ctl = self.ctl.get_mut();
        ctl.pump(&mut self.pool);
        let Some(buf) = ctl.tx_free.pop() else {
            ctl.stats.tx_exhausted += 1;
            return None;
        };
        Some(TxToken(Tx::Own {
            buf,
            pool: &mut self.pool,
            ctl,
        }))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// A received frame, in the pool buffer the device wrote it to.
pub struct RxToken<'a> {
    frame: &'a mut [u8],
    ctl: &'a RefCell<Ctl>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let len = self.frame.len();
        let payload = tcp_payload_len(self.frame);
        let r = f(self.frame);
        let mut ctl = self.ctl.borrow_mut();
        ctl.stats.rx_frames += 1;
        ctl.stats.rx_bytes += len as u64;
        ctl.stats.tcp_rx_payload += payload as u64;
        r
    }
}

/// A free transmit buffer for smoltcp to write one frame into.
pub struct TxToken<'a>(Tx<'a>);

enum Tx<'a> {
    /// Lent with a received frame (smoltcp answers it from inside the `RxToken`): the frame
    /// goes to the device on the next call into the adapter.
    Lent {
        window: &'a mut [u8],
        ctl: &'a RefCell<Ctl>,
    },
    /// From `transmit`: the frame goes to the device at once.
    Own {
        buf: BufId,
        pool: &'a mut BufferPool,
        ctl: &'a mut Ctl,
    },
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self.0 {
            Tx::Lent { window, ctl } => match window.get_mut(..len) {
                Some(w) => {
                    let r = f(w);
                    let mut ctl = ctl.borrow_mut();
                    ctl.stats.tcp_tx_payload += tcp_payload_len(w) as u64;
                    if let Some((_, filled)) = &mut ctl.lent_tx {
                        *filled = Some(len);
                    }
                    r
                }
                None => too_long(len, f, &mut ctl.borrow_mut()),
            },
            Tx::Own { buf, pool, ctl } => {
                let Some(w) = pool.buf_mut(buf).ok().and_then(|b| b.get_mut(..len)) else {
                    ctl.tx_free.push(buf);
                    return too_long(len, f, ctl);
                };
                let r = f(w);
                ctl.stats.tcp_tx_payload += tcp_payload_len(w) as u64;
                ctl.submit(Op::Send, buf, len);
                ctl.pump(pool);
                r
            }
        }
    }
}

/// smoltcp never asks for more than the MTU it was given; should it, the frame is written to
/// scratch memory and dropped rather than sent truncated.
fn too_long<R, F: FnOnce(&mut [u8]) -> R>(len: usize, f: F, ctl: &mut Ctl) -> R {
    ctl.stats.tx_dropped += 1;
    log::warn!("net-phy: dropped a {len}-byte frame larger than a buffer");
    f(&mut vec![0; len])
}

#[cfg(test)]
#[path = "net_phy_tests.rs"]
mod tests;
