//! The DMA buffer pool: fixed-size buffers carved from one physically contiguous region,
//! named by [`BufId`] handles that move through rings without moving the data.
//!
//! A buffer's physical address is `region base + index * buffer size`, so a driver turns a
//! segment into the address it gives the device with one multiply; the device then reads or
//! writes the very bytes the application filled or will read (zero copies).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::Error;
use crate::request::Segment;

pub const PAGE: usize = 4096;

/// Memory a pool can hand to devices: contiguous, with a known physical base address.
pub trait DmaMemory {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Physical address of `bytes()[0]`.
    fn phys_base(&self) -> u64;
}

/// One page-aligned page.
#[repr(C, align(4096))]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Page(pub [u8; PAGE]);

/// Ordinary heap memory standing in for DMA memory on the host. Its "physical" base is its
/// address, so tests can check that a device is handed the application's own buffer.
pub struct HostMemory {
    pages: Box<[Page]>,
}

impl HostMemory {
    pub fn new(bytes: usize) -> Self {
        Self {
            pages: vec![Page([0; PAGE]); bytes.div_ceil(PAGE)].into_boxed_slice(),
        }
    }
}

impl DmaMemory for HostMemory {
    fn bytes(&self) -> &[u8] {
        self.pages.as_bytes()
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.pages.as_mut_bytes()
    }

    fn phys_base(&self) -> u64 {
        self.pages.as_ptr() as u64
    }
}

/// A buffer handle: an index into its pool. Copying it copies no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BufId(pub u32);

pub struct BufferPool {
    mem: Box<dyn DmaMemory>,
    buf_size: usize,
    free: Vec<u32>,
    in_use: Vec<bool>,
    peak_in_use: usize,
}

impl BufferPool {
    /// Splits `mem` into buffers of `buf_size` bytes (a power of two, at least 512).
    pub fn new(mem: Box<dyn DmaMemory>, buf_size: usize) -> Result<Self, Error> {
        let count = mem.bytes().len() / buf_size.max(1);
        if !buf_size.is_power_of_two() || buf_size < 512 || count == 0 || count > u32::MAX as usize
        {
            return Err(Error::BadCapacity(buf_size));
        }
        Ok(Self {
            mem,
            buf_size,
            free: (0..count as u32).rev().collect(),
            in_use: vec![false; count],
            peak_in_use: 0,
        })
    }

    /// A pool over fresh host memory (host tests, the RAM disk).
    pub fn host(count: usize, buf_size: usize) -> Result<Self, Error> {
        Self::new(Box::new(HostMemory::new(count * buf_size)), buf_size)
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    pub fn capacity(&self) -> usize {
        self.in_use.len()
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn peak_in_use(&self) -> usize {
        self.peak_in_use
    }

    pub fn alloc(&mut self) -> Result<BufId, Error> {
        let i = self.free.pop().ok_or(Error::PoolExhausted)?;
        self.in_use[i as usize] = true;
        self.peak_in_use = self.peak_in_use.max(self.capacity() - self.free.len());
        Ok(BufId(i))
    }

    /// Returns a buffer. Freeing a buffer that is not allocated is refused (no double free).
    pub fn free(&mut self, id: BufId) -> Result<(), Error> {
        match self.in_use.get_mut(id.0 as usize) {
            Some(used @ true) => {
                *used = false;
                self.free.push(id.0);
                Ok(())
            }
            _ => Err(Error::BadSegment),
        }
    }

    fn range(&self, seg: &Segment) -> Result<core::ops::Range<usize>, Error> {
        let i = seg.buf.0 as usize;
        if !self.in_use.get(i).copied().unwrap_or(false) {
            return Err(Error::BadSegment);
        }
        let (off, len) = (seg.offset as usize, seg.len as usize);
        if off.checked_add(len).is_none_or(|end| end > self.buf_size) {
            return Err(Error::BadSegment);
        }
        let start = i * self.buf_size + off;
        Ok(start..start + len)
    }

    /// Checks that a segment lies inside an allocated buffer.
    pub fn check(&self, seg: &Segment) -> Result<(), Error> {
        self.range(seg).map(|_| ())
    }

    pub fn slice(&self, seg: &Segment) -> Result<&[u8], Error> {
        let r = self.range(seg)?;
        Ok(&self.mem.bytes()[r])
    }

    pub fn slice_mut(&mut self, seg: &Segment) -> Result<&mut [u8], Error> {
        let r = self.range(seg)?;
        Ok(&mut self.mem.bytes_mut()[r])
    }

    /// Mutable slices for several segments at once, in the order given (a driver hands them
    /// all to the device in one descriptor chain). Overlapping segments are refused, so the
    /// slices never alias.
    pub fn slices_mut(&mut self, segs: &[Segment]) -> Result<Vec<&mut [u8]>, Error> {
        let mut ranges = Vec::with_capacity(segs.len());
        for (i, seg) in segs.iter().enumerate() {
            ranges.push((self.range(seg)?, i));
        }
        ranges.sort_by_key(|(r, _)| r.start);
        if ranges.windows(2).any(|w| w[0].0.end > w[1].0.start) {
            return Err(Error::BadSegment);
        }
        let mut out: Vec<Option<&mut [u8]>> = (0..segs.len()).map(|_| None).collect();
        let mut rest = self.mem.bytes_mut();
        let mut consumed = 0;
        for (r, i) in ranges {
            let tail = core::mem::take(&mut rest);
            let (_, tail) = tail.split_at_mut(r.start - consumed);
            let (piece, tail) = tail.split_at_mut(r.len());
            out[i] = Some(piece);
            rest = tail;
            consumed = r.end;
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The whole buffer.
    pub fn buf(&self, id: BufId) -> Result<&[u8], Error> {
        self.slice(&Segment::whole(id, self.buf_size))
    }

    pub fn buf_mut(&mut self, id: BufId) -> Result<&mut [u8], Error> {
        let seg = Segment::whole(id, self.buf_size);
        self.slice_mut(&seg)
    }

    /// The physical address a device must be given for this segment.
    pub fn phys(&self, seg: &Segment) -> Result<u64, Error> {
        let r = self.range(seg)?;
        Ok(self.mem.phys_base() + r.start as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_and_return() {
        let mut p = BufferPool::host(4, 4096).unwrap();
        let ids: Vec<_> = (0..4).map(|_| p.alloc().unwrap()).collect();
        assert_eq!(p.alloc(), Err(Error::PoolExhausted));
        assert_eq!(p.available(), 0);
        p.free(ids[2]).unwrap();
        assert_eq!(
            p.free(ids[2]),
            Err(Error::BadSegment),
            "double free refused"
        );
        assert_eq!(p.alloc().unwrap(), ids[2]);
        assert_eq!(p.peak_in_use(), 4);
        for id in ids {
            p.free(id).unwrap();
        }
        assert_eq!(p.available(), 4);
        assert_eq!(p.free(BufId(99)), Err(Error::BadSegment));
    }

    #[test]
    fn segments_are_bounded_and_addressed() {
        let mut p = BufferPool::host(4, 4096).unwrap();
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        p.buf_mut(b).unwrap()[10] = 7;
        let seg = Segment {
            buf: b,
            offset: 8,
            len: 8,
        };
        assert_eq!(p.slice(&seg).unwrap()[2], 7);
        let pa = p.phys(&Segment::whole(a, 4096)).unwrap();
        assert_eq!(
            p.phys(&seg).unwrap(),
            pa + (b.0 as u64 - a.0 as u64) * 4096 + 8
        );
        // The physical address is where the bytes really are.
        assert_eq!(
            p.phys(&seg).unwrap(),
            p.slice(&seg).unwrap().as_ptr() as u64
        );
        for bad in [
            Segment {
                buf: b,
                offset: 4090,
                len: 8,
            },
            Segment {
                buf: b,
                offset: u32::MAX,
                len: 2,
            },
            Segment {
                buf: BufId(3),
                offset: 0,
                len: 1,
            }, // not allocated
            Segment {
                buf: BufId(40),
                offset: 0,
                len: 1,
            },
        ] {
            assert_eq!(p.slice(&bad).err(), Some(Error::BadSegment), "{bad:?}");
        }
    }

    #[test]
    fn many_slices_without_aliasing() {
        let mut p = BufferPool::host(4, 4096).unwrap();
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        let segs = [
            Segment {
                buf: b,
                offset: 0,
                len: 100,
            },
            Segment {
                buf: a,
                offset: 512,
                len: 512,
            },
            Segment {
                buf: b,
                offset: 100,
                len: 50,
            },
        ];
        let got = p.slices_mut(&segs).unwrap();
        assert_eq!(
            got.iter().map(|s| s.len()).collect::<Vec<_>>(),
            [100, 512, 50]
        );
        let addrs: Vec<u64> = got.iter().map(|s| s.as_ptr() as u64).collect();
        for (seg, addr) in segs.iter().zip(addrs) {
            assert_eq!(p.phys(seg).unwrap(), addr);
        }
        let overlapping = [
            Segment {
                buf: a,
                offset: 0,
                len: 100,
            },
            Segment {
                buf: a,
                offset: 99,
                len: 2,
            },
        ];
        assert_eq!(p.slices_mut(&overlapping).err(), Some(Error::BadSegment));
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(BufferPool::host(1, 1000).is_err());
        assert!(BufferPool::host(1, 256).is_err());
        assert!(BufferPool::new(Box::new(HostMemory::new(4096)), 8192).is_err());
        assert_eq!(
            BufferPool::host(3, 512).unwrap().capacity(),
            8,
            "rounded up to a page"
        );
    }
}
