//! The guest's exit protocol through QEMU's `isa-debug-exit` device.
//!
//! Writing value `v` to port [`DEBUG_EXIT_PORT`] makes QEMU exit with status `(v << 1) | 1`.
//! Status 1 is also what QEMU returns for its own errors, so the guest's codes start at
//! `0x10`: the host (`tandem`) decodes 33 as a clean shutdown and 35 as a guest failure.

/// I/O port of `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// What the guest tells QEMU when it stops on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum GuestExit {
    /// Orderly shutdown (for example `exit=ready`). QEMU status 33.
    Clean = 0x10,
    /// Panic or fatal CPU exception. QEMU status 35.
    Failure = 0x11,
}

impl GuestExit {
    /// The value written to the port.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The exit status QEMU reports for this code.
    pub const fn qemu_status(self) -> i32 {
        ((self as u32) << 1 | 1) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_qemu_formula() {
        assert_eq!(GuestExit::Clean.qemu_status(), 33);
        assert_eq!(GuestExit::Failure.qemu_status(), 35);
    }
}
