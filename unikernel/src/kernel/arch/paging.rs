//! The identity map. Boot maps the first 4 GiB with 2 MiB pages; device windows above that
//! (64-bit PCI BARs) are mapped on demand, with page tables taken from a static pool in the
//! kernel image. Not from the frame pool: a restart in place resets that pool while the
//! mappings (and the tables behind them) stay live.

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
    OutOfTables,
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
        let frame = take_table().ok_or(MapError::OutOfTables)?;
        entry.write_volatile(frame | PRESENT | WRITABLE);
        Ok(frame as *mut u64)
    }
}

/// Page tables for mappings above 4 GiB: one PDPT per 512 GiB and one PD per GiB mapped.
const TABLES: usize = 32;

#[repr(C, align(4096))]
struct Table([u64; 512]);

static mut TABLE_POOL: [Table; TABLES] = [const { Table([0; 512]) }; TABLES];
static TABLES_USED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// A zeroed table from the static pool (kernel memory: identity-mapped, never reused).
fn take_table() -> Option<u64> {
    use core::sync::atomic::Ordering;
    let i = TABLES_USED
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < TABLES).then_some(n + 1)
        })
        .ok()?;
    // SAFETY: each index is handed out once (the counter only grows), so this is the only
    // reference to table `i`; it lives in the kernel image, identity-mapped below 4 GiB.
    Some(unsafe { core::ptr::addr_of_mut!(TABLE_POOL[i]) } as u64)
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
