//! A RAM disk behind the HPDI. It completes every request as soon as it is started, which
//! makes code above the HPDI (the storage service, the benchmark) testable on the host.
//! Unlike a real device it copies payload (it *is* the device), and counts those bytes.

use alloc::vec;
use alloc::vec::Vec;

use hpdi::device::DeviceStats;
use hpdi::{BufferPool, Capabilities, Completion, Device, DeviceKind, Error, Op, OpSet, Request};

use crate::immediate::Immediate;

pub struct RamDisk {
    data: Vec<u8>,
    imm: Immediate,
    /// Fail every request with this device status (fault injection for tests).
    pub fail_with: Option<u32>,
}

impl RamDisk {
    pub const BLOCK: u32 = 512;

    /// A zero-filled disk of `bytes` (rounded down to blocks) taking `depth` requests at once.
    pub fn new(bytes: usize, depth: usize) -> Self {
        Self {
            data: vec![0; bytes / Self::BLOCK as usize * Self::BLOCK as usize],
            imm: Immediate::new(depth),
            fail_with: None,
        }
    }

    pub fn contents(&self) -> &[u8] {
        &self.data
    }
}

fn execute(
    data: &mut [u8],
    pool: &mut BufferPool,
    req: &Request,
    stats: &mut DeviceStats,
) -> Result<u32, Error> {
    let mut at = req.offset as usize;
    match req.op {
        Op::Read | Op::Write => {
            for seg in req.sg.as_slice() {
                let n = seg.len as usize;
                if req.op == Op::Read {
                    pool.slice_mut(seg)?.copy_from_slice(&data[at..at + n]);
                } else {
                    data[at..at + n].copy_from_slice(pool.slice(seg)?);
                }
                at += n;
            }
            stats.bytes_copied += req.sg.total();
            stats.bytes_moved += req.sg.total();
        }
        Op::Discard | Op::WriteZeroes => data[at..at + req.len as usize].fill(0),
        _ => {}
    }
    Ok(req.byte_len().min(u64::from(u32::MAX)) as u32)
}

impl Device for RamDisk {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: DeviceKind::Block,
            block_size: Self::BLOCK,
            capacity: self.data.len() as u64,
            max_segments: hpdi::request::MAX_SEGMENTS as u16,
            queue_depth: self.imm.depth() as u16,
            ops: OpSet::of(&[Op::Read, Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes]),
            read_only: false,
        }
    }

    fn start(&mut self, pool: &mut BufferPool, req: &Request) -> Result<(), Error> {
        let caps = self.capabilities();
        let (data, fail) = (&mut self.data, self.fail_with);
        self.imm.start(&caps, pool, req, |pool, stats| match fail {
            Some(status) => Err(Error::Device { status }),
            None => execute(data, pool, req, stats),
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
    use hpdi::{QueuePair, Registry, Segment, SgList};

    #[test]
    fn write_then_read_through_the_rings() {
        let mut reg = Registry::new();
        assert_eq!(
            reg.add(alloc::boxed::Box::new(RamDisk::new(1 << 20, 4))),
            "blk0"
        );
        let dev = reg.open("blk0").unwrap();
        let mut pool = BufferPool::host(16, 4096).unwrap();
        let mut q = QueuePair::new(8).unwrap();

        // 8 writes, each a distinct pattern, more than the device takes at once.
        let mut bufs = Vec::new();
        for i in 0..8u64 {
            let b = pool.alloc().unwrap();
            pool.buf_mut(b).unwrap().fill(i as u8 + 1);
            q.submit(Request::write(
                i * 4096,
                SgList::one(Segment::whole(b, 4096)),
                i,
            ))
            .unwrap();
            bufs.push(b);
        }
        assert_eq!(q.submit(Request::flush(99)), Err(Error::RingFull));
        let mut done = Vec::new();
        while done.len() < 8 {
            q.poll(dev, &mut pool);
            q.reap(&mut done, 64);
        }
        assert!(done.iter().all(|c| c.result == Ok(4096)));
        assert_eq!(
            dev.stats().max_in_flight,
            4,
            "the device depth bounds what is in flight"
        );

        // Read back into other buffers.
        done.clear();
        let rb: Vec<_> = (0..8).map(|_| pool.alloc().unwrap()).collect();
        for (i, b) in rb.iter().enumerate() {
            q.submit(Request::read(
                i as u64 * 4096,
                SgList::one(Segment::whole(*b, 4096)),
                100 + i as u64,
            ))
            .unwrap();
        }
        while done.len() < 8 {
            q.poll(dev, &mut pool);
            q.reap(&mut done, 64);
        }
        for (i, b) in rb.iter().enumerate() {
            assert!(pool.buf(*b).unwrap().iter().all(|&x| x == i as u8 + 1));
        }
    }

    #[test]
    fn errors_complete_with_reasons_and_the_queue_goes_on() {
        let mut disk = RamDisk::new(1 << 16, 8);
        let mut pool = BufferPool::host(4, 4096).unwrap();
        let mut q = QueuePair::new(8).unwrap();
        let b = pool.alloc().unwrap();
        let sg = SgList::one(Segment::whole(b, 4096));
        q.submit(Request::write(1 << 16, sg, 1)).unwrap(); // past the end
        q.submit(Request::read(3, sg, 2)).unwrap(); // misaligned
        q.submit(Request::read(
            0,
            SgList::one(Segment::whole(hpdi::BufId(3), 512)),
            3,
        ))
        .unwrap(); // buffer not allocated
        q.submit(Request::write(0, sg, 4)).unwrap(); // fine
        let mut done = Vec::new();
        for _ in 0..4 {
            q.poll(&mut disk, &mut pool);
            q.reap(&mut done, 8);
        }
        assert_eq!(done.len(), 4);
        let results: Vec<_> = done.iter().map(|c| (c.tag, c.result)).collect();
        assert!(matches!(results[0], (1, Err(Error::OutOfRange { .. }))));
        assert!(matches!(results[1], (2, Err(Error::Misaligned { .. }))));
        assert_eq!(results[2], (3, Err(Error::BadSegment)));
        assert_eq!(results[3], (4, Ok(4096)));
        disk.fail_with = Some(1);
        q.submit(Request::flush(5)).unwrap();
        for _ in 0..2 {
            q.poll(&mut disk, &mut pool);
            q.reap(&mut done, 8);
        }
        assert_eq!(done[4].result, Err(Error::Device { status: 1 }));
    }
}
