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

/// A buffer handle: a region number (high 8 bits) and an index in that region (low 24 bits).
/// Copying it copies no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BufId(pub u32);

const INDEX_BITS: u32 = 24;
const MAX_REGIONS: usize = 256;

impl BufId {
    pub fn new(region: u8, index: u32) -> Self {
        BufId(u32::from(region) << INDEX_BITS | (index & ((1 << INDEX_BITS) - 1)))
    }

    pub fn region(self) -> usize {
        (self.0 >> INDEX_BITS) as usize
    }

    pub fn index(self) -> usize {
        (self.0 & ((1 << INDEX_BITS) - 1)) as usize
    }
}

/// One memory of the pool, cut into equal buffers.
struct Region {
    mem: Box<dyn DmaMemory>,
    buf_size: usize,
    free: Vec<u32>,
    in_use: Vec<bool>,
    peak_in_use: usize,
}

impl Region {
    fn new(mem: Box<dyn DmaMemory>, buf_size: usize) -> Result<Self, Error> {
        let count = mem.bytes().len() / buf_size.max(1);
        if !buf_size.is_power_of_two() || buf_size < 512 || count == 0 || count >= 1 << INDEX_BITS {
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
}

/// DMA-able buffers from one or more memories (region 0 is the general pool; a device's own
/// memory, such as the NVLOG region, can be added so its pages travel in the same requests).
pub struct BufferPool {
    regions: Vec<Region>,
}

impl BufferPool {
    /// Splits `mem` into buffers of `buf_size` bytes (a power of two, at least 512): region 0.
    pub fn new(mem: Box<dyn DmaMemory>, buf_size: usize) -> Result<Self, Error> {
        Ok(Self {
            regions: alloc::vec![Region::new(mem, buf_size)?],
        })
    }

    /// A pool over fresh host memory (host tests, the RAM disk).
    pub fn host(count: usize, buf_size: usize) -> Result<Self, Error> {
        Self::new(Box::new(HostMemory::new(count * buf_size)), buf_size)
    }

    /// Adds another memory, cut into `buf_size` buffers; returns its region number.
    pub fn add_region(&mut self, mem: Box<dyn DmaMemory>, buf_size: usize) -> Result<u8, Error> {
        if self.regions.len() == MAX_REGIONS {
            return Err(Error::BadCapacity(MAX_REGIONS));
        }
        self.regions.push(Region::new(mem, buf_size)?);
        Ok((self.regions.len() - 1) as u8)
    }

    /// Buffer size of region 0.
    pub fn buf_size(&self) -> usize {
        self.regions[0].buf_size
    }

    pub fn region_buf_size(&self, region: u8) -> Option<usize> {
        self.regions.get(usize::from(region)).map(|r| r.buf_size)
    }

    /// Buffers in region 0.
    pub fn capacity(&self) -> usize {
        self.regions[0].in_use.len()
    }

    pub fn region_capacity(&self, region: u8) -> usize {
        self.regions
            .get(usize::from(region))
            .map_or(0, |r| r.in_use.len())
    }

    /// Free buffers in region 0.
    pub fn available(&self) -> usize {
        self.regions[0].free.len()
    }

    pub fn peak_in_use(&self) -> usize {
        self.regions[0].peak_in_use
    }

    /// A buffer from region 0.
    pub fn alloc(&mut self) -> Result<BufId, Error> {
        self.alloc_in(0)
    }

    pub fn alloc_in(&mut self, region: u8) -> Result<BufId, Error> {
        let r = self
            .regions
            .get_mut(usize::from(region))
            .ok_or(Error::BadSegment)?;
        let i = r.free.pop().ok_or(Error::PoolExhausted)?;
        r.in_use[i as usize] = true;
        r.peak_in_use = r.peak_in_use.max(r.in_use.len() - r.free.len());
        Ok(BufId::new(region, i))
    }

    /// Returns a buffer. Freeing a buffer that is not allocated is refused (no double free).
    pub fn free(&mut self, id: BufId) -> Result<(), Error> {
        let r = self.regions.get_mut(id.region()).ok_or(Error::BadSegment)?;
        match r.in_use.get_mut(id.index()) {
            Some(used @ true) => {
                *used = false;
                r.free.push(id.index() as u32);
                Ok(())
            }
            _ => Err(Error::BadSegment),
        }
    }

    /// (region, byte range in that region) of a segment inside an allocated buffer.
    fn range(&self, seg: &Segment) -> Result<(usize, core::ops::Range<usize>), Error> {
        let (ri, i) = (seg.buf.region(), seg.buf.index());
        let r = self.regions.get(ri).ok_or(Error::BadSegment)?;
        if !r.in_use.get(i).copied().unwrap_or(false) {
            return Err(Error::BadSegment);
        }
        let (off, len) = (seg.offset as usize, seg.len as usize);
        if off.checked_add(len).is_none_or(|end| end > r.buf_size) {
            return Err(Error::BadSegment);
        }
        let start = i * r.buf_size + off;
        Ok((ri, start..start + len))
    }

    /// Checks that a segment lies inside an allocated buffer.
    pub fn check(&self, seg: &Segment) -> Result<(), Error> {
        self.range(seg).map(|_| ())
    }

    pub fn slice(&self, seg: &Segment) -> Result<&[u8], Error> {
        let (ri, r) = self.range(seg)?;
        Ok(&self.regions[ri].mem.bytes()[r])
    }

    pub fn slice_mut(&mut self, seg: &Segment) -> Result<&mut [u8], Error> {
        let (ri, r) = self.range(seg)?;
        Ok(&mut self.regions[ri].mem.bytes_mut()[r])
    }

    /// Mutable slices for several segments at once, in the order given (a driver hands them
    /// all to the device in one descriptor chain). Overlapping segments are refused, so the
    /// slices never alias.
    pub fn slices_mut(&mut self, segs: &[Segment]) -> Result<Vec<&mut [u8]>, Error> {
        let mut ranges = Vec::with_capacity(segs.len());
        for (i, seg) in segs.iter().enumerate() {
            let (ri, r) = self.range(seg)?;
            ranges.push((ri, r, i));
        }
        ranges.sort_by_key(|(ri, r, _)| (*ri, r.start));
        if ranges
            .windows(2)
            .any(|w| w[0].0 == w[1].0 && w[0].1.end > w[1].1.start)
        {
            return Err(Error::BadSegment);
        }
        let mut out: Vec<Option<&mut [u8]>> = (0..segs.len()).map(|_| None).collect();
        let mut next = 0;
        for (ri, region) in self.regions.iter_mut().enumerate() {
            let mut rest = region.mem.bytes_mut();
            let mut consumed = 0;
            while let Some((r_idx, r, i)) = ranges.get(next).cloned() {
                if r_idx != ri {
                    break;
                }
                let tail = core::mem::take(&mut rest);
                let (_, tail) = tail.split_at_mut(r.start - consumed);
                let (piece, tail) = tail.split_at_mut(r.len());
                out[i] = Some(piece);
                rest = tail;
                consumed = r.end;
                next += 1;
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn whole(&self, id: BufId) -> Segment {
        let size = self.regions.get(id.region()).map_or(0, |r| r.buf_size);
        Segment::whole(id, size)
    }

    /// The whole buffer.
    pub fn buf(&self, id: BufId) -> Result<&[u8], Error> {
        self.slice(&self.whole(id))
    }

    pub fn buf_mut(&mut self, id: BufId) -> Result<&mut [u8], Error> {
        let seg = self.whole(id);
        self.slice_mut(&seg)
    }

    /// The physical address a device must be given for this segment.
    pub fn phys(&self, seg: &Segment) -> Result<u64, Error> {
        let (ri, r) = self.range(seg)?;
        Ok(self.regions[ri].mem.phys_base() + r.start as u64)
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
    fn several_regions_in_one_request() {
        let mut p = BufferPool::host(4, 4096).unwrap();
        let r = p
            .add_region(Box::new(HostMemory::new(8 * 512)), 512)
            .unwrap();
        assert_eq!(
            (r, p.region_capacity(r), p.region_buf_size(r)),
            (1, 8, Some(512))
        );
        let a = p.alloc().unwrap();
        let b = p.alloc_in(r).unwrap();
        let c = p.alloc_in(r).unwrap();
        assert_eq!((b.region(), b.index()), (1, 0));
        p.buf_mut(b).unwrap().fill(0xbb);
        let segs = [
            Segment::whole(c, 512),
            Segment::whole(a, 4096),
            Segment::whole(b, 512),
        ];
        let slices = p.slices_mut(&segs).unwrap();
        assert_eq!(
            slices.iter().map(|s| s.len()).collect::<Vec<_>>(),
            [512, 4096, 512]
        );
        assert!(slices[2].iter().all(|&x| x == 0xbb));
        let addrs: Vec<u64> = slices.iter().map(|s| s.as_ptr() as u64).collect();
        for (seg, addr) in segs.iter().zip(addrs) {
            assert_eq!(p.phys(seg).unwrap(), addr);
        }
        assert_eq!(p.available(), 3, "region 0 counts apart");
        p.free(b).unwrap();
        assert_eq!(p.free(b), Err(Error::BadSegment));
        assert_eq!(p.alloc_in(9), Err(Error::BadSegment));
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
