//! A shared or persistent memory region (the ivshmem BAR 2 that stands in for NVRAM) as an
//! HPDI device of kind [`DeviceKind::Memory`].
//!
//! `Store` copies a request's buffers into the region at `offset`, `Load` copies out, and
//! `Persist` orders everything stored before it ahead of everything after (a full fence):
//! the region is file-backed shared memory, so a store is in the backing file's page cache
//! as soon as it is made, and survives a crash of the guest or of QEMU. Code that lives in
//! the region (the write log) can also borrow it directly through [`MemRegion::region_mut`]
//! to avoid the bounce through a pool buffer.

use alloc::boxed::Box;

use hpdi::device::DeviceStats;
use hpdi::{
    BufferPool, Capabilities, Completion, Device, DeviceKind, DmaMemory, Error, Op, OpSet, Request,
};

use crate::immediate::Immediate;

pub struct MemRegion {
    mem: Box<dyn DmaMemory>,
    imm: Immediate,
}

impl MemRegion {
    pub fn new(mem: Box<dyn DmaMemory>, depth: usize) -> Self {
        Self {
            mem,
            imm: Immediate::new(depth),
        }
    }

    pub fn len(&self) -> usize {
        self.mem.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn phys_base(&self) -> u64 {
        self.mem.phys_base()
    }

    pub fn region(&self) -> &[u8] {
        self.mem.bytes()
    }

    /// Direct access for code that keeps its structures in the region.
    pub fn region_mut(&mut self) -> &mut [u8] {
        self.mem.bytes_mut()
    }
}

fn execute(
    mem: &mut dyn DmaMemory,
    pool: &mut BufferPool,
    req: &Request,
    stats: &mut DeviceStats,
) -> Result<u32, Error> {
    let mut at = req.offset as usize;
    match req.op {
        Op::Store | Op::Load => {
            for seg in req.sg.as_slice() {
                let n = seg.len as usize;
                if req.op == Op::Store {
                    mem.bytes_mut()[at..at + n].copy_from_slice(pool.slice(seg)?);
                } else {
                    pool.slice_mut(seg)?
                        .copy_from_slice(&mem.bytes()[at..at + n]);
                }
                at += n;
            }
            stats.bytes_moved += req.sg.total();
            stats.bytes_copied += req.sg.total();
        }
        _ => core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst),
    }
    Ok(req.sg.total().min(u64::from(u32::MAX)) as u32)
}

impl Device for MemRegion {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: DeviceKind::Memory,
            block_size: 1,
            capacity: self.len() as u64,
            max_segments: hpdi::request::MAX_SEGMENTS as u16,
            queue_depth: self.imm.depth() as u16,
            ops: OpSet::of(&[Op::Load, Op::Store, Op::Persist]),
            read_only: false,
        }
    }

    fn start(&mut self, pool: &mut BufferPool, req: &Request) -> Result<(), Error> {
        let caps = self.capabilities();
        let mem = self.mem.as_mut();
        self.imm.start(&caps, pool, req, |pool, stats| {
            execute(mem, pool, req, stats)
        })
    }

    fn complete(
        &mut self,
        _pool: &mut BufferPool,
        max: usize,
        done: &mut dyn FnMut(Completion),
    ) -> usize {
        self.imm.complete(max, done)
    }

    fn in_flight(&self) -> usize {
        self.imm.in_flight()
    }

    fn stats(&self) -> DeviceStats {
        self.imm.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpdi::{HostMemory, QueuePair, Segment, SgList};

    #[test]
    fn store_persist_load() {
        let mut r = MemRegion::new(Box::new(HostMemory::new(8192)), 4);
        let mut pool = BufferPool::host(4, 4096).unwrap();
        let (a, b) = (pool.alloc().unwrap(), pool.alloc().unwrap());
        pool.buf_mut(a).unwrap()[..5].copy_from_slice(b"hello");
        let mut q = QueuePair::new(4).unwrap();
        let store = Request {
            op: Op::Store,
            ..Request::write(
                100,
                SgList::one(Segment {
                    buf: a,
                    offset: 0,
                    len: 5,
                }),
                1,
            )
        };
        let persist = Request {
            op: Op::Persist,
            ..Request::flush(2)
        };
        let load = Request {
            op: Op::Load,
            ..Request::read(
                100,
                SgList::one(Segment {
                    buf: b,
                    offset: 10,
                    len: 5,
                }),
                3,
            )
        };
        for req in [store, persist, load] {
            q.submit(req).unwrap();
        }
        let mut done = Vec::new();
        for _ in 0..3 {
            q.poll(&mut r, &mut pool);
            q.reap(&mut done, 8);
        }
        assert_eq!(
            done.iter().map(|c| c.result).collect::<Vec<_>>(),
            [Ok(5), Ok(0), Ok(5)]
        );
        assert_eq!(&r.region()[100..105], b"hello");
        assert_eq!(&pool.buf(b).unwrap()[10..15], b"hello");
        // Byte granularity, but never past the end.
        let past = Request {
            op: Op::Store,
            ..Request::write(
                8190,
                SgList::one(Segment {
                    buf: a,
                    offset: 0,
                    len: 5,
                }),
                4,
            )
        };
        assert!(matches!(
            r.start(&mut pool, &past),
            Err(Error::OutOfRange { .. })
        ));
        assert_eq!(
            r.start(&mut pool, &Request::read(0, SgList::new(), 5)),
            Err(Error::Unsupported(Op::Read))
        );
    }
}
