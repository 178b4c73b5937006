//! Port I/O, control registers, TSC and CPUID.

use core::arch::asm;

pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes have no memory effects; the callers own the ports they drive.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port reads have no memory effects.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects (CR4.TSD is clear, we run at ring 0).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// CPUID leaf/subleaf → (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Sleeps until the next interrupt (the watchdog's LAPIC tick): an idle guest gives its
/// host CPU back instead of spinning.
pub fn wait_for_interrupt() {
    // SAFETY: STI+HLT with the IDT installed; the tick handler returns here. `sti` delays
    // interrupts by one instruction, so none is lost between the two.
    unsafe { asm!("sti; hlt", options(nomem, nostack)) }
}

/// Stops the CPU for good (interrupts stay off).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CLI+HLT only stops this CPU.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) }
    }
}

/// Masks every line of both legacy 8259 PICs; the guest polls and runs with IF=0.
pub fn mask_pics() {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

/// The hypervisor's CPUID signature (`KVMKVMKVM`, `TCGTCGTCGTCG`, `XenVMMXenVMM`), if any.
pub fn hypervisor_signature() -> Option<[u8; 12]> {
    let (_, _, ecx, _) = cpuid(1, 0);
    if ecx & (1 << 31) == 0 {
        return None;
    }
    let (_, b, c, d) = cpuid(0x4000_0000, 0);
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&b.to_le_bytes());
    sig[4..8].copy_from_slice(&c.to_le_bytes());
    sig[8..12].copy_from_slice(&d.to_le_bytes());
    Some(sig)
}

/// Reads a model-specific register.
fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR of the architectural registers read here (IA32_APIC_BASE) has no side
    // effects; we run at ring 0.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The local APIC's register page, from IA32_APIC_BASE, if it lies in the memory the boot
/// stub identity-maps; else the base found.
pub fn local_apic() -> Result<crate::mmio::Block, u64> {
    let base = rdmsr(0x1b) & 0xf_ffff_f000;
    if base == 0 || base >= super::paging::BOOT_MAPPED {
        return Err(base);
    }
    // SAFETY: the local APIC's 4 KiB register page as the CPU reports it, identity-mapped
    // below 4 GiB by the boot stub; its registers are 32-bit and read or written whole.
    Ok(unsafe { crate::mmio::Block::new(base, 4096) })
}

/// Lets interrupts in (the watchdog's tick, while serving).
pub fn enable_interrupts() {
    // SAFETY: `kmain` installs the IDT before anything runs that could call this: every
    // vector that can fire has a gate on an IST stack.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Keeps interrupts out.
pub fn disable_interrupts() {
    // SAFETY: masking interrupts has no memory effects.
    unsafe { asm!("cli", options(nomem, nostack)) };
}
