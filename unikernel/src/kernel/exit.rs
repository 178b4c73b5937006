//! Stopping the guest: tell QEMU through `isa-debug-exit`, else halt.

use unikernel::exit::{GuestExit, DEBUG_EXIT_PORT};

use crate::arch::cpu;

/// Exits QEMU with `code` when `isa-debug-exit` is present; otherwise halts forever.
pub fn exit(code: GuestExit) -> ! {
    cpu::outl(DEBUG_EXIT_PORT, code.code());
    cpu::halt_forever()
}

pub fn fail() -> ! {
    exit(GuestExit::Failure)
}
