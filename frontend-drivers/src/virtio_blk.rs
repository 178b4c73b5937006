//! virtio-blk behind the HPDI, on any `virtio-drivers` transport (PCI or MMIO).
//!
//! `virtio-drivers`' own `VirtIOBlk` keeps 16 requests in flight and copies nothing only for
//! the caller's own buffers; this driver keeps as many requests in flight as the queue holds
//! (the queue size is chosen from what the device offers, up to 256), uses indirect
//! descriptors so each request takes one ring slot, and hands the device the physical
//! addresses of the application's pool buffers (payload is never copied). It negotiates
//! flush, discard and write-zeroes when offered, and emulates FUA with a flush chained after
//! the write.
//!
//! `unsafe` here is limited to the two `VirtQueue` calls that lend buffers to the device.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
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
    /// virtio-blk feature bits this driver understands.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Features: u64 {
        const SEG_MAX = 1 << 2;
        const RO = 1 << 5;
        const BLK_SIZE = 1 << 6;
        const FLUSH = 1 << 9;
        const DISCARD = 1 << 13;
        const WRITE_ZEROES = 1 << 14;
        const RING_INDIRECT_DESC = 1 << 28;
        /// Understood but never negotiated: `virtio-drivers` 0.13 decides whether to notify
        /// with `avail_idx >= avail_event + 1`, which stops notifying once the 16-bit
        /// available index wraps (a stalled queue after 65536 requests). Without it the device's
        /// `NO_NOTIFY` flag is used, which has no such edge.
        const RING_EVENT_IDX = 1 << 29;
        const VERSION_1 = 1 << 32;
    }
}

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const SECTOR: u64 = 512;
const QUEUE: u16 = 0;
/// Status the driver reports when the queue itself misbehaves (not a device status byte).
pub const STATUS_QUEUE_ERROR: u32 = 0x100;

/// Test hook: the next completion of any virtio-blk device reports a queue failure, as a
/// broken device would (the guest's `debug.device_error_after_requests`).
pub static INJECT_QUEUE_ERROR: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Config-space offsets (virtio 1.2, 5.2.4).
mod cfg {
    pub const CAPACITY: usize = 0;
    pub const SEG_MAX: usize = 12;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
}

#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct DiscardWz {
    sector: u64,
    num_sectors: u32,
    flags: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Data,
    /// The write of a FUA request is done; its flush is in flight.
    FuaFlush,
}

#[derive(Clone, Copy)]
struct Slot {
    req: Request,
    phase: Phase,
}

/// What the device offered, for the inventory.
#[derive(Debug, Clone, Copy)]
pub struct BlkInfo {
    pub capacity_sectors: u64,
    pub queue_size: u16,
    pub features: Features,
    pub seg_max: u32,
}

pub struct VirtioBlk<H: Hal, T: Transport, const Q: usize> {
    transport: T,
    queue: VirtQueue<H, Q>,
    info: BlkInfo,
    caps: Capabilities,
    max_discard: u64,
    max_write_zeroes: u64,
    // Per-slot DMA structures (heap memory is identity-mapped in the guest).
    headers: Box<[Header]>,
    dwz: Box<[DiscardWz]>,
    status: Box<[u8]>,
    slots: Box<[Option<Slot>]>,
    free: Vec<u16>,
    by_token: Box<[u16]>,
    /// Completions decided without the device (flush on a cache-less device).
    ready: VecDeque<Completion>,
    in_flight: usize,
    stats: DeviceStats,
    kick: bool,
}

impl<H: Hal, T: Transport, const Q: usize> VirtioBlk<H, T, Q> {
    pub fn new(mut transport: T) -> Result<Self, virtio_drivers::Error> {
        let f = transport.begin_init(Features::all().difference(Features::RING_EVENT_IDX));
        // Config space is only 4-byte aligned: read the 64-bit capacity as two halves.
        let capacity_sectors = transport.read_consistent(|| {
            let lo: u32 = transport.read_config_space(cfg::CAPACITY)?;
            let hi: u32 = transport.read_config_space(cfg::CAPACITY + 4)?;
            Ok(u64::from(lo) | u64::from(hi) << 32)
        })?;
        let seg_max = if f.contains(Features::SEG_MAX) {
            transport.read_config_space::<u32>(cfg::SEG_MAX)?.max(1)
        } else {
            1
        };
        let sectors = |on: bool, off: usize| -> Result<u64, virtio_drivers::Error> {
            Ok(if on {
                u64::from(transport.read_config_space::<u32>(off)?) * SECTOR
            } else {
                0
            })
        };
        let max_discard = sectors(f.contains(Features::DISCARD), cfg::MAX_DISCARD_SECTORS)?;
        let max_write_zeroes = sectors(
            f.contains(Features::WRITE_ZEROES),
            cfg::MAX_WRITE_ZEROES_SECTORS,
        )?;
        let indirect = f.contains(Features::RING_INDIRECT_DESC);
        let queue = VirtQueue::new(
            &mut transport,
            QUEUE,
            indirect,
            f.contains(Features::RING_EVENT_IDX),
        )?;
        transport.finish_init();

        let mut ops = OpSet::of(&[Op::Read, Op::Write, Op::Flush]);
        if max_discard > 0 {
            ops = ops.with(Op::Discard);
        }
        if max_write_zeroes > 0 {
            ops = ops.with(Op::WriteZeroes);
        }
        // Without indirect descriptors a request takes header + segments + status slots.
        let seg_limit = if indirect { Q } else { Q.saturating_sub(2) };
        let max_segments =
            (seg_max as usize).clamp(1, seg_limit.clamp(1, hpdi::request::MAX_SEGMENTS)) as u16;
        let caps = Capabilities {
            kind: DeviceKind::Block,
            block_size: SECTOR as u32,
            capacity: capacity_sectors.saturating_mul(SECTOR),
            max_segments,
            queue_depth: Q as u16,
            ops,
            read_only: f.contains(Features::RO),
        };
        Ok(Self {
            transport,
            queue,
            info: BlkInfo {
                capacity_sectors,
                queue_size: Q as u16,
                features: f,
                seg_max,
            },
            caps,
            max_discard,
            max_write_zeroes,
            headers: vec![Header::default(); Q].into_boxed_slice(),
            dwz: vec![DiscardWz::default(); Q].into_boxed_slice(),
            status: vec![0xff; Q].into_boxed_slice(),
            slots: vec![None; Q].into_boxed_slice(),
            free: (0..Q as u16).rev().collect(),
            by_token: vec![0; Q].into_boxed_slice(),
            ready: VecDeque::new(),
            in_flight: 0,
            stats: DeviceStats::default(),
            kick: false,
        })
    }

    pub fn info(&self) -> BlkInfo {
        self.info
    }

    /// Lends the buffers of `slot`'s request to `f` in descriptor order: device-readable
    /// (header, payload of writes, discard range) then device-writable (payload of reads,
    /// status byte). `add` and `pop_used` must see the very same list.
    fn with_chain<R>(
        &mut self,
        pool: &mut BufferPool,
        slot: usize,
        kind: u32,
        f: impl for<'a> FnOnce(&mut VirtQueue<H, Q>, &'a [&'a [u8]], &'a mut [&'a mut [u8]]) -> R,
    ) -> Result<R, Error> {
        let Some(s) = self.slots[slot] else {
            return Err(Error::Device {
                status: STATUS_QUEUE_ERROR,
            });
        };
        let header = self.headers[slot].as_bytes();
        let status = &mut self.status[slot..=slot];
        Ok(match kind {
            T_IN => {
                let mut outs = pool.slices_mut(s.req.sg.as_slice())?;
                outs.push(status);
                f(&mut self.queue, &[header], &mut outs)
            }
            T_OUT => {
                let data = pool.slices_mut(s.req.sg.as_slice())?;
                let mut ins: Vec<&[u8]> = Vec::with_capacity(data.len() + 1);
                ins.push(header);
                ins.extend(data.into_iter().map(|d| &*d));
                f(&mut self.queue, &ins, &mut [status])
            }
            T_DISCARD | T_WRITE_ZEROES => f(
                &mut self.queue,
                &[header, self.dwz[slot].as_bytes()],
                &mut [status],
            ),
            _ => f(&mut self.queue, &[header], &mut [status]),
        })
    }

    /// Puts `slot`'s request (in its current phase) on the queue.
    fn submit(&mut self, pool: &mut BufferPool, slot: usize, kind: u32) -> Result<(), Error> {
        let req = self.slots[slot].map(|s| s.req).ok_or(Error::BadSegment)?;
        self.headers[slot] = Header {
            kind,
            reserved: 0,
            sector: req.offset / SECTOR,
        };
        self.status[slot] = 0xff;
        if matches!(kind, T_DISCARD | T_WRITE_ZEROES) {
            self.dwz[slot] = DiscardWz {
                sector: req.offset / SECTOR,
                num_sectors: (req.len / SECTOR) as u32,
                flags: 0,
            };
        }
        // SAFETY: the buffers lent to the device stay valid and untouched by the driver until
        // `pop_used` returns them in `complete`: the header, discard range and status byte are
        // this slot's entries in boxed arrays that live as long as the driver, and the slot is
        // not reused before completion; the payload lies in the pool's DMA region, which the
        // guest never frees, and the HPDI contract forbids the application to touch a buffer
        // while its request is in flight.
        let token = self
            .with_chain(pool, slot, kind, |q, ins, outs| unsafe { q.add(ins, outs) })?
            .map_err(|e| match e {
                virtio_drivers::Error::QueueFull => Error::RingFull,
                _ => Error::Device {
                    status: STATUS_QUEUE_ERROR,
                },
            })?;
        self.by_token[usize::from(token)] = slot as u16;
        self.kick = true;
        Ok(())
    }

    fn kind_of(op: Op) -> Option<u32> {
        Some(match op {
            Op::Read => T_IN,
            Op::Write => T_OUT,
            Op::Flush => T_FLUSH,
            Op::Discard => T_DISCARD,
            Op::WriteZeroes => T_WRITE_ZEROES,
            _ => return None,
        })
    }

    fn finish(
        &mut self,
        slot: usize,
        result: Result<u32, Error>,
        done: &mut dyn FnMut(Completion),
    ) {
        if let Some(s) = self.slots[slot].take() {
            self.free.push(slot as u16);
            self.in_flight -= 1;
            self.stats.completed += 1;
            done(Completion {
                tag: s.req.tag,
                result,
            });
        }
    }
}

impl<H: Hal, T: Transport, const Q: usize> Device for VirtioBlk<H, T, Q> {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn start(&mut self, pool: &mut BufferPool, req: &Request) -> Result<(), Error> {
        self.caps.validate(req)?;
        let kind = Self::kind_of(req.op).ok_or(Error::Unsupported(req.op))?;
        let limit = match req.op {
            Op::Discard => self.max_discard,
            Op::WriteZeroes => self.max_write_zeroes,
            _ => u64::MAX,
        };
        if req.len > limit {
            return Err(Error::OutOfRange {
                offset: req.offset,
                len: req.len,
                capacity: limit,
            });
        }
        if req.op == Op::Flush && !self.info.features.contains(Features::FLUSH) {
            // No volatile cache: every completed write is already durable.
            self.ready.push_back(Completion {
                tag: req.tag,
                result: Ok(0),
            });
            return Ok(());
        }
        let Some(&slot) = self.free.last() else {
            return Err(Error::RingFull);
        };
        let slot = usize::from(slot);
        self.slots[slot] = Some(Slot {
            req: *req,
            phase: Phase::Data,
        });
        if let Err(e) = self.submit(pool, slot, kind) {
            self.slots[slot] = None;
            return Err(e);
        }
        self.free.pop();
        self.in_flight += 1;
        self.stats.submitted += 1;
        self.stats.bytes_moved += req.sg.total();
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.in_flight as u32);
        Ok(())
    }

    fn complete(
        &mut self,
        pool: &mut BufferPool,
        max: usize,
        done: &mut dyn FnMut(Completion),
    ) -> usize {
        let mut n = 0;
        while n < max {
            if let Some(c) = self.ready.pop_front() {
                done(c);
                n += 1;
                continue;
            }
            let Some(token) = self.queue.peek_used() else {
                break;
            };
            let slot = usize::from(self.by_token[usize::from(token)]);
            let Some(s) = self.slots[slot] else {
                // A token we never issued: the device is broken; stop reaping from it.
                log::error!("virtio-blk: used ring names unknown token {token}");
                break;
            };
            let kind = match s.phase {
                Phase::FuaFlush => T_FLUSH,
                Phase::Data => Self::kind_of(s.req.op).unwrap_or(T_FLUSH),
            };
            // SAFETY: the same buffers `submit` lent for this slot and phase, rebuilt from the
            // same request; `pop_used` only gives them back.
            let popped = self.with_chain(pool, slot, kind, |q, ins, outs| unsafe {
                q.pop_used(token, ins, outs)
            });
            let status = self.status[slot];
            let injected = INJECT_QUEUE_ERROR.swap(false, core::sync::atomic::Ordering::SeqCst);
            let result = match popped {
                _ if injected => Err(Error::Device {
                    status: STATUS_QUEUE_ERROR,
                }),
                Ok(Ok(_)) if status == 0 => Ok(s.req.byte_len().min(u64::from(u32::MAX)) as u32),
                Ok(Ok(_)) => Err(Error::Device {
                    status: u32::from(status),
                }),
                _ => Err(Error::Device {
                    status: STATUS_QUEUE_ERROR,
                }),
            };
            let wants_flush = s.phase == Phase::Data
                && s.req.fua
                && matches!(s.req.op, Op::Write | Op::WriteZeroes | Op::Discard)
                && result.is_ok()
                && self.info.features.contains(Features::FLUSH);
            if wants_flush {
                self.slots[slot] = Some(Slot {
                    phase: Phase::FuaFlush,
                    ..s
                });
                if self.submit(pool, slot, T_FLUSH).is_ok() {
                    continue;
                }
                self.finish(
                    slot,
                    Err(Error::Device {
                        status: STATUS_QUEUE_ERROR,
                    }),
                    done,
                );
            } else {
                self.finish(slot, result, done);
            }
            n += 1;
        }
        self.notify();
        n
    }

    fn notify(&mut self) {
        if core::mem::take(&mut self.kick) && self.queue.should_notify() {
            self.transport.notify(QUEUE);
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight + self.ready.len()
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }
}

/// Builds [`VirtioBlk`] for a queue size chosen at run time.
struct Blk<H>(core::marker::PhantomData<H>);

impl<H: Hal + 'static, T: Transport + 'static> crate::queue_size::Family<T> for Blk<H> {
    type Info = BlkInfo;
    fn build<const Q: usize>(t: T) -> Result<(Box<dyn Device>, BlkInfo), virtio_drivers::Error> {
        let d = VirtioBlk::<H, T, Q>::new(t)?;
        let info = d.info();
        Ok((Box::new(d), info))
    }
}

/// Opens a virtio-blk device with the largest supported queue the device offers.
pub fn open<H: Hal + 'static, T: Transport + 'static>(
    mut transport: T,
) -> Result<(Box<dyn Device>, BlkInfo), virtio_drivers::Error> {
    let offered = transport.max_queue_size(QUEUE);
    crate::queue_size::open_largest::<Blk<H>, T>(offered, transport)
}

#[cfg(test)]
#[path = "virtio_blk_fake.rs"]
mod fake;
