//! Usable RAM: the memory map minus what is already taken, split between the heap and the
//! DMA frame pool.
//!
//! Runs before the heap exists, so it works on a fixed-capacity [`RangeSet`].

use core::ops::Range;

/// Page size used for every region handed out.
pub const PAGE: u64 = 4096;

/// Memory below this address is left alone (real-mode IVT, BDA, EBDA, option ROMs, BIOS).
pub const LOW_MEMORY_END: u64 = 0x10_0000;

/// A small set of disjoint, sorted, page-aligned address ranges.
#[derive(Clone, Debug)]
pub struct RangeSet<const N: usize> {
    ranges: [Range<u64>; N],
    len: usize,
    dropped: u64,
}

impl<const N: usize> Default for RangeSet<N> {
    fn default() -> Self {
        Self {
            ranges: core::array::from_fn(|_| 0..0),
            len: 0,
            dropped: 0,
        }
    }
}

impl<const N: usize> RangeSet<N> {
    pub fn as_slice(&self) -> &[Range<u64>] {
        &self.ranges[..self.len]
    }

    /// Bytes that did not fit because the set was full (reported, never silently lost).
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    pub fn total(&self) -> u64 {
        self.as_slice().iter().map(|r| r.end - r.start).sum()
    }

    /// Adds a range, shrunk inward to page boundaries, merging with neighbours.
    pub fn insert(&mut self, r: Range<u64>) {
        let start = r.start.div_ceil(PAGE) * PAGE;
        let end = r.end / PAGE * PAGE;
        if start >= end {
            return;
        }
        let mut new = start..end;
        // Absorb every range that overlaps or touches the new one.
        let mut i = 0;
        while i < self.len {
            let cur = self.ranges[i].clone();
            if cur.start <= new.end && new.start <= cur.end {
                new = new.start.min(cur.start)..new.end.max(cur.end);
                self.remove_at(i);
            } else {
                i += 1;
            }
        }
        if self.len == N {
            self.dropped += new.end - new.start;
            return;
        }
        let pos = self.as_slice().partition_point(|c| c.start < new.start);
        self.ranges[pos..=self.len].rotate_right(1);
        self.ranges[pos] = new;
        self.len += 1;
    }

    /// Removes `r` (widened outward to page boundaries) from the set.
    pub fn remove(&mut self, r: Range<u64>) {
        let start = r.start / PAGE * PAGE;
        let end = r.end.div_ceil(PAGE) * PAGE;
        if start >= end {
            return;
        }
        let mut i = 0;
        while i < self.len {
            let cur = self.ranges[i].clone();
            if cur.end <= start || end <= cur.start {
                i += 1;
                continue;
            }
            self.remove_at(i);
            if cur.start < start {
                self.insert(cur.start..start);
            }
            if end < cur.end {
                self.insert(end..cur.end);
            }
            // Re-scan from the start: inserts keep the set sorted.
            i = 0;
        }
    }

    fn remove_at(&mut self, i: usize) {
        self.ranges[i..self.len].rotate_left(1);
        self.len -= 1;
    }
}

/// At most this many disjoint usable ranges are tracked.
pub const MAX_RANGES: usize = 32;

pub type Usable = RangeSet<MAX_RANGES>;

/// Builds the usable-RAM set from `(addr, size, type)` memory-map entries, removing low
/// memory and every `taken` range (the kernel image, the boot structures).
pub fn usable_ram(entries: impl Iterator<Item = (u64, u64, u32)>, taken: &[Range<u64>]) -> Usable {
    let mut set = Usable::default();
    for (addr, size, kind) in entries {
        if kind == crate::start_info::mem_type::RAM {
            set.insert(addr..addr.saturating_add(size));
        }
    }
    set.remove(0..LOW_MEMORY_END);
    for t in taken {
        set.remove(t.clone());
    }
    set
}

/// Usable RAM divided between the general heap and the DMA frame pool.
#[derive(Clone, Debug)]
pub struct Split {
    pub heap: Usable,
    pub dma: Usable,
}

/// Gives `dma_percent` of usable RAM (rounded down to pages) to DMA frames, taken from the
/// top of the highest ranges so the frame pool is as contiguous as possible; the rest is heap.
pub fn split(usable: &Usable, dma_percent: u8) -> Split {
    let pct = u64::from(dma_percent.min(100));
    let mut want = usable.total() * pct / 100 / PAGE * PAGE;
    let mut heap = Usable::default();
    let mut dma = Usable::default();
    for r in usable.as_slice().iter().rev() {
        let len = r.end - r.start;
        let take = want.min(len);
        want -= take;
        if take > 0 {
            dma.insert(r.end - take..r.end);
        }
        if take < len {
            heap.insert(r.start..r.end - take);
        }
    }
    Split { heap, dma }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one-range sets are what these tests expect
mod tests {
    use super::*;
    use crate::start_info::mem_type::{RAM, RESERVED};

    const MIB: u64 = 1 << 20;

    #[test]
    fn qemu_32m_map() {
        // What QEMU reports for -m 32M on q35.
        let map = [
            (0, 0x9fc00, RAM),
            (0x9fc00, 0x400, RESERVED),
            (0xf0000, 0x10000, RESERVED),
            (0x10_0000, 31 * MIB, RAM),
            (0xfeff_c000, 0x4000, RESERVED),
        ];
        let kernel = 0x10_0000..0x18_1234;
        let u = usable_ram(map.into_iter(), &[kernel]);
        assert_eq!(u.as_slice(), &[0x18_2000..32 * MIB]);
    }

    #[test]
    fn insert_merges_and_sorts() {
        let mut s = RangeSet::<4>::default();
        s.insert(0x5000..0x6000);
        s.insert(0x1000..0x2000);
        s.insert(0x2000..0x3000);
        assert_eq!(s.as_slice(), &[0x1000..0x3000, 0x5000..0x6000]);
        s.insert(0x2800..0x5800);
        assert_eq!(s.as_slice(), &[0x1000..0x6000]);
        // Unaligned edges shrink inward.
        s.insert(0x8001..0x9fff);
        assert_eq!(s.as_slice(), &[0x1000..0x6000]);
    }

    #[test]
    fn remove_splits_and_widens() {
        let mut s = RangeSet::<4>::default();
        s.insert(0..0x10000);
        s.remove(0x3001..0x4001);
        assert_eq!(s.as_slice(), &[0..0x3000, 0x5000..0x10000]);
        s.remove(0..0x100000);
        assert!(s.as_slice().is_empty());
    }

    #[test]
    fn full_set_counts_dropped() {
        let mut s = RangeSet::<2>::default();
        s.insert(0..0x1000);
        s.insert(0x3000..0x4000);
        s.insert(0x6000..0x8000);
        assert_eq!(s.as_slice().len(), 2);
        assert_eq!(s.dropped_bytes(), 0x2000);
    }

    #[test]
    fn split_takes_dma_from_the_top() {
        let mut u = Usable::default();
        u.insert(0x10_0000..0x20_0000); // 1 MiB
        u.insert(0x100_0000..0x140_0000); // 4 MiB
        let s = split(&u, 50);
        assert_eq!(s.dma.total() + s.heap.total(), u.total());
        assert_eq!(s.dma.total(), 5 * MIB / 2);
        assert_eq!(s.dma.as_slice(), &[0x100_0000 + 3 * MIB / 2..0x140_0000]);
        let all = split(&u, 100);
        assert_eq!(all.heap.total(), 0);
        let none = split(&u, 0);
        assert_eq!(none.dma.total(), 0);
        assert_eq!(none.heap.total(), 5 * MIB);
    }
}
