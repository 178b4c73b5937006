//! The identity map. Boot maps the first 4 GiB with 2 MiB pages; device windows above that
//! (64-bit PCI BARs) are mapped on demand, with page tables taken from the frame pool.

use core::arch::asm;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PAGE_2M: u64 = 2 << 20;
/// What the boot stub mapped.
pub const BOOT_MAPPED: u64 = 4 << 30;

#[derive(Debug)]
#[allow(dead_code)] // fields are read through Debug in error reports
pub enum MapError {
    OutOfFrames,
    /// The address is beyond what 4-level paging with our identity map can reach.
    TooHigh(u64),
    /// A 1 GiB page is already there (we never create them).
    Conflict(u64),
}

/// Makes `[phys, phys+len)` reachable at the same virtual address, uncached.
pub fn identity_map(phys: u64, len: u64) -> Result<(), MapError> {
    let end = phys.checked_add(len).ok_or(MapError::TooHigh(phys))?;
    if end <= BOOT_MAPPED {
        return Ok(());
    }
    if end > 1 << 46 {
        return Err(MapError::TooHigh(phys));
    }
    let mut page = phys.max(BOOT_MAPPED) & !(PAGE_2M - 1);
    while page < end {
        map_2m(page)?;
        page += PAGE_2M;
    }
    Ok(())
}

/// Returns the table the entry points at, allocating a zeroed one if absent.
///
/// # Safety
/// `entry` must point into a live page table of the current hierarchy.
unsafe fn next_table(entry: *mut u64) -> Result<*mut u64, MapError> {
    // SAFETY: guaranteed by the caller; tables are identity-mapped below 4 GiB.
    unsafe {
        let e = entry.read_volatile();
        if e & PRESENT != 0 {
            if e & HUGE != 0 {
                return Err(MapError::Conflict(e & ADDR_MASK));
            }
            return Ok((e & ADDR_MASK) as *mut u64);
        }
        let frame = crate::mem::alloc_frames(1).ok_or(MapError::OutOfFrames)?;
        core::ptr::write_bytes(frame as *mut u8, 0, 4096);
        entry.write_volatile(frame | PRESENT | WRITABLE);
        Ok(frame as *mut u64)
    }
}

fn map_2m(page: u64) -> Result<(), MapError> {
    let pml4 = (super::cpu::read_cr3() & ADDR_MASK) as *mut u64;
    let idx = |shift: u32| ((page >> shift) & 511) as usize;
    // SAFETY: CR3 points at the live PML4 built by the boot stub; every table reached from it
    // is identity-mapped; single-threaded, interrupts off.
    unsafe {
        let pdpt = next_table(pml4.add(idx(39)))?;
        let pd = next_table(pdpt.add(idx(30)))?;
        let pde = pd.add(idx(21));
        if pde.read_volatile() & PRESENT == 0 {
            pde.write_volatile(page | PRESENT | WRITABLE | WRITE_THROUGH | CACHE_DISABLE | HUGE);
            asm!("invlpg [{}]", in(reg) page, options(nostack, preserves_flags));
        }
    }
    Ok(())
}
