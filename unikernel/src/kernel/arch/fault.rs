//! Deliberate CPU exceptions (`debug.fault=`), so tests can prove exceptions are reported.

use core::arch::asm;

use unikernel::cmdline::Fault;

/// An address inside the canonical lower half that the identity map never covers.
const UNMAPPED: u64 = 0x0000_0dea_d000_0000;
/// A non-canonical address: any access raises #GP.
const NON_CANONICAL: u64 = 0x8000_0000_0000_0000;

pub fn raise(fault: Fault) -> ! {
    log::warn!("debug.fault: raising {fault:?} on purpose");
    // SAFETY: each access or instruction below faults before it can have any effect; the
    // exception handler reports it and never returns here.
    unsafe {
        match fault {
            Fault::PageFault => {
                core::ptr::read_volatile(UNMAPPED as *const u64);
            }
            Fault::GeneralProtection => {
                core::ptr::read_volatile(NON_CANONICAL as *const u64);
            }
            Fault::InvalidOpcode => asm!("ud2", options(nomem, nostack)),
            Fault::DivideError => asm!(
                "xor edx, edx",
                "div ecx",
                in("ecx") 0u32, inout("eax") 1u32 => _, out("edx") _,
                options(nomem, nostack)
            ),
            Fault::Breakpoint => asm!("int3", options(nomem, nostack)),
        }
    }
    panic!("debug.fault {fault:?} did not fault");
}
