//! `virtio_drivers::Hal` for the guest: DMA memory from the frame pool, MMIO through the
//! identity map, and no address translation (physical == virtual).

use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

pub struct TandemHal;

// SAFETY: allocations are zeroed, page-aligned, physically contiguous and identity-mapped,
// so the physical address handed to the device is the memory the driver reads and writes;
// MMIO windows are mapped before their address is returned.
unsafe impl Hal for TandemHal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(paddr) = crate::mem::alloc_frames(pages) else {
            panic!("DMA frame pool exhausted allocating {pages} pages");
        };
        let ptr = paddr as *mut u8;
        // SAFETY: freshly allocated frames, identity-mapped, `pages` pages long.
        unsafe { core::ptr::write_bytes(ptr, 0, pages * 4096) };
        (
            paddr,
            NonNull::new(ptr).expect("frame 0 is never in the pool"),
        )
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        crate::mem::free_frames(paddr, pages);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        if let Err(e) = crate::arch::paging::identity_map(paddr, size as u64) {
            panic!("cannot map MMIO window {paddr:#x}+{size:#x}: {e:?}");
        }
        NonNull::new(paddr as *mut u8).expect("MMIO window at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _dir: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _dir: BufferDirection) {}
}
