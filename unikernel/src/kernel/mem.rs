//! RAM: the global heap and the DMA frame pool, both carved from what the PVH memory map
//! reports (see `unikernel::memmap`), plus raw physical reads for the ACPI walk.
//!
//! RAM is identity-mapped, so a frame's physical address is also its address in the
//! kernel: DMA buffers need no translation.

use core::sync::atomic::{AtomicU64, Ordering};

use buddy_system_allocator::{FrameAllocator, LockedHeap};
use spin::Mutex;
use unikernel::memmap::{Split, PAGE};

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

static FRAMES: Mutex<FrameAllocator<32>> = Mutex::new(FrameAllocator::new());
static DMA_TOTAL: AtomicU64 = AtomicU64::new(0);
static DMA_USED: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The physical range the kernel image (text, data, bss, boot stack) occupies.
pub fn kernel_range() -> core::ops::Range<u64> {
    // Linker-defined symbols: only their addresses are taken.
    (&raw const __kernel_start) as u64..(&raw const __kernel_end) as u64
}

/// Hands the heap ranges to the allocator, then (with the heap working, which the frame
/// allocator's bookkeeping needs) the DMA ranges to the frame pool.
pub fn init(split: &Split) {
    for r in split.heap.as_slice() {
        // SAFETY: the range is usable RAM from the memory map, identity-mapped, not part of
        // the kernel image or boot structures (removed by `memmap::usable_ram`), and handed
        // to the allocator exactly once.
        unsafe { HEAP.lock().add_to_heap(r.start as usize, r.end as usize) };
    }
    let mut frames = FRAMES.lock();
    for r in split.dma.as_slice() {
        frames.add_frame((r.start / PAGE) as usize, (r.end / PAGE) as usize);
    }
    DMA_TOTAL.store(split.dma.total(), Ordering::Relaxed);
}

/// Starts memory over for a restart in place: every heap allocation and DMA frame of the
/// previous life is forgotten (devices were quiesced first), then `split` is handed out anew.
pub fn reinit(split: &Split) {
    // The frame allocator's own bookkeeping lives in the old heap: forget it, never drop it.
    core::mem::forget(core::mem::replace(
        &mut *FRAMES.lock(),
        FrameAllocator::new(),
    ));
    *HEAP.lock() = buddy_system_allocator::Heap::empty();
    DMA_USED.store(0, Ordering::Relaxed);
    init(split);
}

/// Allocates `count` physically contiguous, page-aligned frames; returns the physical address.
pub fn alloc_frames(count: usize) -> Option<u64> {
    let f = FRAMES.lock().alloc(count)?;
    DMA_USED.fetch_add((count.next_power_of_two() as u64) * PAGE, Ordering::Relaxed);
    Some(f as u64 * PAGE)
}

/// Returns frames obtained from [`alloc_frames`] with the same `count`.
pub fn free_frames(paddr: u64, count: usize) {
    FRAMES.lock().dealloc((paddr / PAGE) as usize, count);
    DMA_USED.fetch_sub((count.next_power_of_two() as u64) * PAGE, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub heap_total: u64,
    pub heap_used: u64,
    pub dma_total: u64,
    pub dma_used: u64,
}

pub fn stats() -> Stats {
    let h = HEAP.lock();
    Stats {
        heap_total: h.stats_total_bytes() as u64,
        heap_used: h.stats_alloc_actual() as u64,
        dma_total: DMA_TOTAL.load(Ordering::Relaxed),
        dma_used: DMA_USED.load(Ordering::Relaxed),
    }
}

/// Reads physical memory below 4 GiB through the identity map (ACPI tables, boot data).
pub struct Phys;

impl Phys {
    /// Borrows `len` bytes at `paddr`, if they lie in the boot identity map.
    pub fn slice(paddr: u64, len: usize) -> Option<&'static [u8]> {
        let end = paddr.checked_add(len as u64)?;
        if paddr == 0 || end > crate::arch::paging::BOOT_MAPPED {
            return None;
        }
        // SAFETY: the range is identity-mapped (checked above) and only read; callers use it
        // for firmware/loader data (start info, memory map, command line, ACPI), which
        // nothing writes while the guest runs.
        Some(unsafe { core::slice::from_raw_parts(paddr as *const u8, len) })
    }
}

impl unikernel::acpi::PhysRead for Phys {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> bool {
        match Phys::slice(paddr, buf.len()) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
}
