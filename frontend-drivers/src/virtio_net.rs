//! virtio-net behind the HPDI, on any `virtio-drivers` transport (PCI or MMIO).
//!
//! Receive and transmit buffers are the application's pool buffers. `Op::Recv` posts a
//! buffer on the receive queue (0) as the chain [virtio-net header, pool segment], both
//! device-writable, so the frame lands at offset 0 of the application's buffer; its
//! completion carries the frame length. `Op::Send` puts [zeroed header, the request's
//! segments], all device-readable, on the transmit queue (1); its completion carries the
//! bytes sent. The headers are per-slot DMA structures of the driver; payload is never
//! copied.
//!
//! Negotiated when offered: `VERSION_1` (12-byte header, else the legacy 10 bytes), `MAC`,
//! `STATUS`, indirect descriptors (each request takes one ring slot) and event-idx. No
//! offloads and no mergeable receive buffers, so every frame fits one posted buffer of at
//! least [`MAX_FRAME`] bytes.
//!
//! `unsafe` here is limited to the two `VirtQueue` calls that lend buffers to the device.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use bitflags::bitflags;
use hpdi::device::DeviceStats;
use hpdi::{BufferPool, Capabilities, Completion, Device, DeviceKind, Error, Op, OpSet, Request};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

bitflags! {
    /// virtio-net feature bits this driver negotiates when the device offers them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Features: u64 {
        const MAC = 1 << 5;
        const STATUS = 1 << 16;
        const RING_INDIRECT_DESC = 1 << 28;
        /// Understood but never negotiated: `virtio-drivers` 0.13 decides whether to notify
        /// with `avail_idx >= avail_event + 1`, which stops notifying once the 16-bit
        /// available index wraps (a stalled queue after 65536 requests). Without it the device's
        /// `NO_NOTIFY` flag is used, which has no such edge.
        const RING_EVENT_IDX = 1 << 29;
        const VERSION_1 = 1 << 32;
    }
}

pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
/// Largest Ethernet frame without offloads (1500-byte MTU + 14-byte header, no FCS): the
/// smallest receive buffer accepted and the largest frame sent.
pub const MAX_FRAME: usize = 1514;
/// Status the driver reports when a queue itself misbehaves (not a device status).
pub const STATUS_QUEUE_ERROR: u32 = 0x100;
/// MAC used when the device does not offer one (locally administered, unicast).
pub const DEFAULT_MAC: [u8; 6] = [0x02, 0x54, 0x41, 0x4e, 0x44, 0x00];

/// Config-space offsets (virtio 1.2, 5.1.4).
mod cfg {
    pub const MAC: usize = 0;
    pub const STATUS: usize = 6;
}
const LINK_UP: u16 = 1;

/// `struct virtio_net_hdr` with `num_buffers` (lent as 12 bytes with `VERSION_1`, else as
/// the legacy 10).
#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct NetHdr {
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
    num_buffers: u16,
}

/// What the device offered, for the inventory.
#[derive(Debug, Clone, Copy)]
pub struct NetInfo {
    pub mac: [u8; 6],
    /// Whether `mac` came from the device (else [`DEFAULT_MAC`]).
    pub mac_from_device: bool,
    /// Link state at initialisation (up when the device has no `STATUS`).
    pub link_up: bool,
    pub queue_size: u16,
    pub features: Features,
    /// Bytes of virtio-net header in front of every frame (12, or 10 for legacy devices).
    pub header_len: usize,
}

/// One virtqueue with its per-slot headers and requests.
struct Queue<H: Hal, const Q: usize> {
    vq: VirtQueue<H, Q>,
    index: u16,
    headers: Box<[NetHdr]>,
    slots: Box<[Option<Request>]>,
    free: Vec<u16>,
    by_token: Box<[u16]>,
    in_flight: usize,
    kick: bool,
}

impl<H: Hal, const Q: usize> Queue<H, Q> {
    fn new<T: Transport>(
        transport: &mut T,
        index: u16,
        indirect: bool,
        event_idx: bool,
    ) -> Result<Self, virtio_drivers::Error> {
        Ok(Self {
            vq: VirtQueue::new(transport, index, indirect, event_idx)?,
            index,
            headers: vec![NetHdr::default(); Q].into_boxed_slice(),
            slots: vec![None; Q].into_boxed_slice(),
            free: (0..Q as u16).rev().collect(),
            by_token: vec![0; Q].into_boxed_slice(),
            in_flight: 0,
            kick: false,
        })
    }

    /// Lends `slot`'s buffers to `f` in descriptor order: for a receive, the header and the
    /// payload segments, all device-writable; for a send, the header and the payload
    /// segments, all device-readable. `add` and `pop_used` must see the very same list.
    fn with_chain<R>(
        &mut self,
        pool: &mut BufferPool,
        header_len: usize,
        slot: usize,
        f: impl for<'a> FnOnce(&mut VirtQueue<H, Q>, &'a [&'a [u8]], &'a mut [&'a mut [u8]]) -> R,
    ) -> Result<R, Error> {
        let Some(req) = self.slots[slot] else {
            return Err(Error::Device {
                status: STATUS_QUEUE_ERROR,
            });
        };
        let segs = req.sg.as_slice();
        Ok(if req.op == Op::Recv {
            let data = pool.slices_mut(segs)?;
            let mut outs: Vec<&mut [u8]> = Vec::with_capacity(data.len() + 1);
            outs.push(&mut self.headers[slot].as_mut_bytes()[..header_len]);
            outs.extend(data);
            f(&mut self.vq, &[], &mut outs)
        } else {
            let mut ins: Vec<&[u8]> = Vec::with_capacity(segs.len() + 1);
            ins.push(&self.headers[slot].as_bytes()[..header_len]);
            for seg in segs {
                ins.push(pool.slice(seg)?);
            }
            f(&mut self.vq, &ins, &mut [])
        })
    }
}

pub struct VirtioNet<H: Hal, T: Transport, const Q: usize> {
    transport: T,
    rx: Queue<H, Q>,
    tx: Queue<H, Q>,
    info: NetInfo,
    caps: Capabilities,
    stats: DeviceStats,
}

impl<H: Hal, T: Transport, const Q: usize> VirtioNet<H, T, Q> {
    pub fn new(mut transport: T) -> Result<Self, virtio_drivers::Error> {
        let f = transport.begin_init(Features::all().difference(Features::RING_EVENT_IDX));
        // Config space is only 4-byte aligned: read the MAC and status a byte at a time.
        let mac = if f.contains(Features::MAC) {
            transport.read_consistent(|| {
                let mut mac = [0u8; 6];
                for (i, b) in mac.iter_mut().enumerate() {
                    *b = transport.read_config_space(cfg::MAC + i)?;
                }
                Ok(mac)
            })?
        } else {
            DEFAULT_MAC
        };
        let link_up = if f.contains(Features::STATUS) {
            let lo: u8 = transport.read_config_space(cfg::STATUS)?;
            let hi: u8 = transport.read_config_space(cfg::STATUS + 1)?;
            u16::from_le_bytes([lo, hi]) & LINK_UP != 0
        } else {
            true
        };
        let indirect = f.contains(Features::RING_INDIRECT_DESC);
        let event_idx = f.contains(Features::RING_EVENT_IDX);
        let rx = Queue::new(&mut transport, RX_QUEUE, indirect, event_idx)?;
        let tx = Queue::new(&mut transport, TX_QUEUE, indirect, event_idx)?;
        transport.finish_init();

        let header_len = if f.contains(Features::VERSION_1) {
            size_of::<NetHdr>()
        } else {
            size_of::<NetHdr>() - 2
        };
        // A request is the header plus its segments; without indirect descriptors each of
        // them takes a ring slot, so a queue holds Q/2 one-segment requests.
        let max_segments = (Q - 1).clamp(1, hpdi::request::MAX_SEGMENTS) as u16;
        let queue_depth = if indirect { Q } else { Q / 2 } as u16;
        let caps = Capabilities {
            kind: DeviceKind::Net,
            block_size: 1,
            capacity: 0,
            max_segments,
            queue_depth,
            ops: OpSet::of(&[Op::Send, Op::Recv]),
            read_only: false,
        };
        Ok(Self {
            transport,
            rx,
            tx,
            info: NetInfo {
                mac,
                mac_from_device: f.contains(Features::MAC),
                link_up,
                queue_size: Q as u16,
                features: f,
                header_len,
            },
            caps,
            stats: DeviceStats::default(),
        })
    }

    pub fn info(&self) -> NetInfo {
        self.info
    }

    pub fn mac(&self) -> [u8; 6] {
        self.info.mac
    }

    fn queue(&mut self, op: Op) -> &mut Queue<H, Q> {
        if op == Op::Recv {
            &mut self.rx
        } else {
            &mut self.tx
        }
    }

    /// Reaps finished chains of one queue.
    fn reap(
        &mut self,
        pool: &mut BufferPool,
        recv: bool,
        max: usize,
        done: &mut dyn FnMut(Completion),
    ) -> usize {
        let header_len = self.info.header_len;
        let q = if recv { &mut self.rx } else { &mut self.tx };
        let mut n = 0;
        while n < max {
            let Some(token) = q.vq.peek_used() else {
                break;
            };
            let slot = usize::from(q.by_token[usize::from(token)]);
            let Some(req) = q.slots[slot] else {
                // A token we never issued: the device is broken; stop reaping from it.
                log::error!("virtio-net: queue {} names unknown token {token}", q.index);
                break;
            };
            // SAFETY: the same buffers `start` lent for this slot, rebuilt from the same
            // request; `pop_used` only gives them back.
            let popped = q.with_chain(pool, header_len, slot, |vq, ins, outs| unsafe {
                vq.pop_used(token, ins, outs)
            });
            let total = req.sg.total().min(u64::from(u32::MAX)) as u32;
            let result = match popped {
                Ok(Ok(used)) if recv && used as usize >= header_len => {
                    let frame = (used - header_len as u32).min(total);
                    self.stats.bytes_moved += u64::from(frame);
                    Ok(frame)
                }
                Ok(Ok(_)) if !recv => Ok(total),
                _ => Err(Error::Device {
                    status: STATUS_QUEUE_ERROR,
                }),
            };
            q.slots[slot] = None;
            q.free.push(slot as u16);
            q.in_flight -= 1;
            self.stats.completed += 1;
            done(Completion {
                tag: req.tag,
                result,
            });
            n += 1;
        }
        n
    }
}

impl<H: Hal, T: Transport, const Q: usize> Device for VirtioNet<H, T, Q> {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn start(&mut self, pool: &mut BufferPool, req: &Request) -> Result<(), Error> {
        self.caps.validate(req)?;
        let total = req.sg.total();
        match req.op {
            Op::Recv if total < MAX_FRAME as u64 => return Err(Error::BadSegment),
            Op::Send if total > MAX_FRAME as u64 => {
                return Err(Error::OutOfRange {
                    offset: 0,
                    len: total,
                    capacity: MAX_FRAME as u64,
                })
            }
            _ => {}
        }
        let header_len = self.info.header_len;
        let q = self.queue(req.op);
        let Some(&slot) = q.free.last() else {
            return Err(Error::RingFull);
        };
        let slot = usize::from(slot);
        q.slots[slot] = Some(*req);
        q.headers[slot] = NetHdr::default();
        // SAFETY: the buffers lent to the device stay valid and untouched by the driver until
        // `pop_used` returns them in `complete`: the header is this slot's entry in a boxed
        // array that lives as long as the driver, and the slot is not reused before
        // completion; the payload lies in the pool's DMA region, which the guest never frees,
        // and the HPDI contract forbids the application to touch a buffer while its request is
        // in flight.
        let added = q
            .with_chain(pool, header_len, slot, |vq, ins, outs| unsafe {
                vq.add(ins, outs)
            })
            .and_then(|r| {
                r.map_err(|e| match e {
                    virtio_drivers::Error::QueueFull => Error::RingFull,
                    _ => Error::Device {
                        status: STATUS_QUEUE_ERROR,
                    },
                })
            });
        let token = match added {
            Ok(t) => t,
            Err(e) => {
                q.slots[slot] = None;
                return Err(e);
            }
        };
        q.by_token[usize::from(token)] = slot as u16;
        q.free.pop();
        q.in_flight += 1;
        q.kick = true;
        self.stats.submitted += 1;
        if req.op == Op::Send {
            self.stats.bytes_moved += total;
        }
        let in_flight = self.in_flight() as u32;
        self.stats.max_in_flight = self.stats.max_in_flight.max(in_flight);
        Ok(())
    }

    fn complete(
        &mut self,
        pool: &mut BufferPool,
        max: usize,
        done: &mut dyn FnMut(Completion),
    ) -> usize {
        // Transmit first: it frees the buffers a reply to the received frames needs.
        let n = self.reap(pool, false, max, done);
        let n = n + self.reap(pool, true, max - n, done);
        self.notify();
        n
    }

    fn notify(&mut self) {
        for q in [&mut self.rx, &mut self.tx] {
            if core::mem::take(&mut q.kick) && q.vq.should_notify() {
                self.transport.notify(q.index);
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.rx.in_flight + self.tx.in_flight
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }
}

/// Builds [`VirtioNet`] for a queue size chosen at run time.
struct Net<H>(core::marker::PhantomData<H>);

impl<H: Hal + 'static, T: Transport + 'static> crate::queue_size::Family<T> for Net<H> {
    type Info = NetInfo;
    fn build<const Q: usize>(t: T) -> Result<(Box<dyn Device>, NetInfo), virtio_drivers::Error> {
        let d = VirtioNet::<H, T, Q>::new(t)?;
        let info = d.info();
        Ok((Box::new(d), info))
    }
}

/// Opens a virtio-net device with the largest supported queues both of its queues offer
/// (QEMU offers 256).
pub fn open<H: Hal + 'static, T: Transport + 'static>(
    mut transport: T,
) -> Result<(Box<dyn Device>, NetInfo), virtio_drivers::Error> {
    let offered = transport
        .max_queue_size(RX_QUEUE)
        .min(transport.max_queue_size(TX_QUEUE));
    crate::queue_size::open_largest::<Net<H>, T>(offered, transport)
}

#[cfg(test)]
#[path = "virtio_net_fake.rs"]
mod fake;
