//! DMA memory for HPDI buffer pools: physically contiguous frames from the frame pool,
//! reached through the identity map.

use hpdi::pool::{DmaMemory, PAGE};

/// A run of frames owned by one buffer pool for the guest's lifetime.
pub struct FrameRegion {
    paddr: u64,
    len: usize,
}

impl FrameRegion {
    /// Takes `bytes` (rounded up to pages) of contiguous frames.
    pub fn alloc(bytes: usize) -> Option<Self> {
        let pages = bytes.div_ceil(PAGE).max(1);
        let paddr = crate::mem::alloc_frames(pages)?;
        Some(Self {
            paddr,
            len: pages * PAGE,
        })
    }
}

impl DmaMemory for FrameRegion {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the frames are identity-mapped RAM owned by this region alone (the frame
        // allocator hands each frame out once) and live until the region is dropped.
        unsafe { core::slice::from_raw_parts(self.paddr as *const u8, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.paddr as *mut u8, self.len) }
    }

    fn phys_base(&self) -> u64 {
        self.paddr
    }
}

impl Drop for FrameRegion {
    fn drop(&mut self) {
        crate::mem::free_frames(self.paddr, self.len / PAGE);
    }
}
