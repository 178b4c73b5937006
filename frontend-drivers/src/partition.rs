//! A window of another block device: requests are shifted by `offset` and bounded by `size`.
//! The storage service serves each disk's data area (past the 1 MiB reserved for the label
//! and checkpoints) through one of these, so a client can never touch the reserved area.

use alloc::boxed::Box;

use hpdi::device::DeviceStats;
use hpdi::{BufferPool, Capabilities, Completion, Device, Error, Request};

pub struct Partition {
    inner: Box<dyn Device>,
    offset: u64,
    size: u64,
}

impl Partition {
    /// `[offset, offset + size)` of `inner`; `None` if that is not inside it or not aligned.
    pub fn new(inner: Box<dyn Device>, offset: u64, size: u64) -> Option<Self> {
        let caps = inner.capabilities();
        let block = u64::from(caps.block_size.max(1));
        let fits = offset
            .checked_add(size)
            .is_some_and(|end| end <= caps.capacity);
        (fits && offset.is_multiple_of(block) && size.is_multiple_of(block)).then_some(Self {
            inner,
            offset,
            size,
        })
    }

    pub fn into_inner(self) -> Box<dyn Device> {
        self.inner
    }
}

impl Device for Partition {
    fn into_inner(self: Box<Self>) -> Option<Box<dyn Device>> {
        Some(self.inner)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            capacity: self.size,
            ..self.inner.capabilities()
        }
    }

    fn start(&mut self, pool: &mut BufferPool, req: &Request) -> Result<(), Error> {
        // Checked against the window first, so the shifted request cannot leave it.
        self.capabilities().validate(req)?;
        let mut shifted = *req;
        shifted.offset += self.offset;
        self.inner.start(pool, &shifted)
    }

    fn complete(
        &mut self,
        pool: &mut BufferPool,
        max: usize,
        done: &mut dyn FnMut(Completion),
    ) -> usize {
        self.inner.complete(pool, max, done)
    }

    fn notify(&mut self) {
        self.inner.notify();
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn stats(&self) -> DeviceStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ramdisk::RamDisk;
    use hpdi::{QueuePair, Segment, SgList};

    #[test]
    fn shifts_and_bounds() {
        let mut p = Partition::new(Box::new(RamDisk::new(4 << 20, 8)), 1 << 20, 3 << 20).unwrap();
        assert_eq!(p.capabilities().capacity, 3 << 20);
        let mut pool = BufferPool::host(2, 4096).unwrap();
        let b = pool.alloc().unwrap();
        pool.buf_mut(b).unwrap().fill(9);
        let mut q = QueuePair::new(4).unwrap();
        q.submit(Request::write(0, SgList::one(Segment::whole(b, 4096)), 1))
            .unwrap();
        q.submit(Request::write(
            3 << 20,
            SgList::one(Segment::whole(b, 4096)),
            2,
        ))
        .unwrap();
        let mut done = Vec::new();
        for _ in 0..3 {
            q.poll(&mut p, &mut pool);
            q.reap(&mut done, 8);
        }
        let by = |t: u64| done.iter().find(|c| c.tag == t).unwrap().result;
        assert_eq!(by(1), Ok(4096));
        assert!(matches!(by(2), Err(Error::OutOfRange { .. })), "{done:?}");
        let inner = p.into_inner();
        assert_eq!(inner.capabilities().capacity, 4 << 20);
        assert!(Partition::new(Box::new(RamDisk::new(1 << 20, 1)), 512, 1 << 20).is_none());
        assert!(Partition::new(Box::new(RamDisk::new(1 << 20, 1)), 100, 512).is_none());
    }
}
