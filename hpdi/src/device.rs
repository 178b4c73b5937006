//! The device side of the HPDI: what a front-end driver implements and advertises.

use crate::error::Error;
use crate::pool::BufferPool;
use crate::request::{Completion, Op, Request};
use crate::ring::Ring;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Block,
    Net,
    Memory,
}

impl DeviceKind {
    /// Name prefix in the registry (`blk0`, `net0`, `nvram0`).
    pub fn prefix(self) -> &'static str {
        match self {
            DeviceKind::Block => "blk",
            DeviceKind::Net => "net",
            DeviceKind::Memory => "nvram",
        }
    }
}

/// A set of [`Op`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpSet(u16);

impl OpSet {
    pub fn of(ops: &[Op]) -> Self {
        Self(ops.iter().fold(0, |m, op| m | 1 << *op as u8))
    }

    pub fn contains(self, op: Op) -> bool {
        self.0 & (1 << op as u8) != 0
    }

    pub fn with(self, op: Op) -> Self {
        Self(self.0 | 1 << op as u8)
    }
}

/// What a device offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub kind: DeviceKind,
    /// Smallest addressable unit in bytes (512 for virtio-blk, 1 for memory regions).
    pub block_size: u32,
    /// Size in bytes (0 for network devices).
    pub capacity: u64,
    pub max_segments: u16,
    /// Requests the device can hold at once.
    pub queue_depth: u16,
    pub ops: OpSet,
    pub read_only: bool,
}

impl Capabilities {
    /// The checks every block or memory device applies before touching hardware: supported
    /// op, writable device, segment count, alignment and range. Segments are checked against
    /// the pool by the device when it resolves their addresses.
    pub fn validate(&self, req: &Request) -> Result<(), Error> {
        if !self.ops.contains(req.op) {
            return Err(Error::Unsupported(req.op));
        }
        if self.read_only
            && matches!(
                req.op,
                Op::Write | Op::Discard | Op::WriteZeroes | Op::Store
            )
        {
            return Err(Error::Unsupported(req.op));
        }
        if req.sg.len() > usize::from(self.max_segments) {
            return Err(Error::TooManySegments);
        }
        if req.op.has_data() && (req.sg.is_empty() || req.sg.as_slice().iter().any(|s| s.len == 0))
        {
            return Err(Error::BadSegment);
        }
        if matches!(req.op, Op::Flush | Op::Persist | Op::Send | Op::Recv) {
            return Ok(());
        }
        let len = req.byte_len();
        let block = u64::from(self.block_size.max(1));
        if !req.offset.is_multiple_of(block) || !len.is_multiple_of(block) {
            return Err(Error::Misaligned {
                offset: req.offset,
                len,
                block: self.block_size,
            });
        }
        if req
            .offset
            .checked_add(len)
            .is_none_or(|end| end > self.capacity)
        {
            return Err(Error::OutOfRange {
                offset: req.offset,
                len,
                capacity: self.capacity,
            });
        }
        Ok(())
    }
}

/// A front-end driver behind the HPDI.
///
/// Drivers implement [`Device::start`] and [`Device::complete`]; the ring plumbing in
/// [`Device::poll`] is shared by all of them. Applications use the rings (through
/// [`crate::QueuePair`]); benchmarks may call `start`/`complete` directly to measure what the
/// rings cost.
pub trait Device {
    fn capabilities(&self) -> Capabilities;

    /// Starts one request. `Err(Error::RingFull)`: the device has no room now and the request
    /// was not taken (retry after completions). Any other error rejects the request.
    fn start(&mut self, pool: &mut BufferPool, req: &Request) -> Result<(), Error>;

    /// Posts up to `max` finished requests to `done`; returns how many.
    fn complete(
        &mut self,
        pool: &mut BufferPool,
        max: usize,
        done: &mut dyn FnMut(Completion),
    ) -> usize;

    /// Tells the hardware about requests started since the last call (one doorbell per batch).
    fn notify(&mut self) {}

    /// Requests started and not yet completed.
    fn in_flight(&self) -> usize;

    /// Counters for benchmarks and tests.
    fn stats(&self) -> DeviceStats {
        DeviceStats::default()
    }

    /// The device a wrapper (a partition) wraps, handed back as the wrapper ends; `None`
    /// for a device that wraps none (it is dropped).
    fn into_inner(self: alloc::boxed::Box<Self>) -> Option<alloc::boxed::Box<dyn Device>> {
        None
    }

    /// Reaps completions into `cq`, then starts requests from `sq` while the device has room,
    /// never holding more requests than `cq` can take completions for. Returns the number of
    /// completions posted.
    fn poll(
        &mut self,
        pool: &mut BufferPool,
        sq: &mut Ring<Request>,
        cq: &mut Ring<Completion>,
    ) -> usize {
        let mut posted = self.complete(pool, cq.free(), &mut |c| {
            let _ = cq.push(c);
        });
        let mut started = 0;
        while let Some(req) = sq.peek() {
            // Room for every in-flight completion plus one more.
            if cq.free() <= self.in_flight() {
                break;
            }
            match self.start(pool, req) {
                Ok(()) => started += 1,
                Err(Error::RingFull) => break,
                Err(e) => {
                    let _ = cq.push(Completion {
                        tag: req.tag,
                        result: Err(e),
                    });
                    posted += 1;
                }
            }
            sq.pop();
        }
        if started > 0 {
            self.notify();
        }
        posted
    }
}

/// What a device counts about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    pub submitted: u64,
    pub completed: u64,
    /// Most requests in flight at once.
    pub max_in_flight: u32,
    /// Payload bytes the driver copied with the CPU, counted where it copies: the RAM disk
    /// and the memory region (they are memory, so moving data is a copy). DMA drivers
    /// (virtio-blk, virtio-net) have no copy path and leave it at 0; their zero copy is shown
    /// by the fake-device tests that check the addresses handed to the device, not by this
    /// counter.
    pub bytes_copied: u64,
    /// Payload bytes moved to or from the device.
    pub bytes_moved: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::BufId;
    use crate::request::{Segment, SgList};

    fn caps() -> Capabilities {
        Capabilities {
            kind: DeviceKind::Block,
            block_size: 512,
            capacity: 1 << 20,
            max_segments: 2,
            queue_depth: 8,
            ops: OpSet::of(&[Op::Read, Op::Write, Op::Flush]),
            read_only: false,
        }
    }

    #[test]
    fn validation_errors() {
        let c = caps();
        let sg = SgList::one(Segment::whole(BufId(0), 4096));
        assert_eq!(c.validate(&Request::write(0, sg, 0)), Ok(()));
        assert_eq!(c.validate(&Request::flush(0)), Ok(()));
        assert_eq!(
            c.validate(&Request::discard(0, 512, 0)),
            Err(Error::Unsupported(Op::Discard))
        );
        assert!(matches!(
            c.validate(&Request::read(1, sg, 0)),
            Err(Error::Misaligned { .. })
        ));
        assert!(matches!(
            c.validate(&Request::read((1 << 20) - 512, sg, 0)),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            c.validate(&Request::read(u64::MAX - 511, sg, 0)),
            Err(Error::OutOfRange { .. })
        ));
        let mut three = sg;
        three.push(Segment::whole(BufId(1), 512)).unwrap();
        three.push(Segment::whole(BufId(2), 512)).unwrap();
        assert_eq!(
            c.validate(&Request::write(0, three, 0)),
            Err(Error::TooManySegments)
        );
        let ro = Capabilities {
            read_only: true,
            ..c
        };
        assert_eq!(
            ro.validate(&Request::write(0, sg, 0)),
            Err(Error::Unsupported(Op::Write))
        );
        assert!(OpSet::default().with(Op::Send).contains(Op::Send));
    }
}
