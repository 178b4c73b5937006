//! Physical memory for HPDI devices and pools: contiguous frames from the frame pool (DMA
//! buffers), and device windows such as the ivshmem BAR, both reached through the identity
//! map.

use hpdi::pool::{DmaMemory, PAGE};

/// A physically contiguous range: frames owned by one pool, or a device's memory window.
pub struct FrameRegion {
    paddr: u64,
    len: usize,
    /// Frames from the frame pool, returned on drop (device windows are not).
    frames: bool,
}

impl FrameRegion {
    /// Takes `bytes` (rounded up to pages) of contiguous frames.
    pub fn alloc(bytes: usize) -> Option<Self> {
        let pages = bytes.div_ceil(PAGE).max(1);
        let paddr = crate::mem::alloc_frames(pages)?;
        Some(Self {
            paddr,
            len: pages * PAGE,
            frames: true,
        })
    }

    /// A device memory window (a PCI BAR) already identity-mapped by the caller.
    ///
    /// # Safety
    /// `[paddr, paddr + len)` must be mapped device memory that nothing else accesses.
    pub unsafe fn device_window(paddr: u64, len: usize) -> Self {
        Self {
            paddr,
            len,
            frames: false,
        }
    }
}

impl DmaMemory for FrameRegion {
    fn bytes(&self) -> &[u8] {
        // SAFETY: frames are identity-mapped RAM owned by this region alone (the frame
        // allocator hands each frame out once) until drop; device windows are mapped and
        // exclusively ours by the contract of `device_window`.
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
        if self.frames {
            crate::mem::free_frames(self.paddr, self.len / PAGE);
        }
    }
}
