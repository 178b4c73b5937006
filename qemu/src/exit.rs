//! The guest's exit protocol, decoded from QEMU's exit status.
//!
//! The guest ends a run by writing a code to the `isa-debug-exit` device at I/O port 0xf4;
//! QEMU then exits with status `(code << 1) | 1`. The guest uses two codes:
//!
//! | guest writes | QEMU exits with | meaning |
//! |---|---|---|
//! | `0x10` | 33 | clean shutdown |
//! | `0x11` | 35 | failure: a panic or a CPU exception |
//!
//! Any other status is QEMU's own (0 after a QMP `quit` or `-no-reboot` reset, 1 on a
//! QEMU error such as a bad option), and a QEMU killed by a signal reports that signal.

use std::fmt;
use std::process::ExitStatus;

/// Code the guest writes for a clean shutdown.
pub const GUEST_CLEAN: u32 = 0x10;
/// Code the guest writes after a panic or CPU exception.
pub const GUEST_FAILED: u32 = 0x11;

/// QEMU's exit status for a guest code written to `isa-debug-exit`.
pub const fn qemu_status_for(guest_code: u32) -> i32 {
    ((guest_code << 1) | 1) as i32
}

/// Exit status of `tandem run` after an interrupt (Ctrl-C), as shells report SIGINT.
pub const EXIT_INTERRUPTED: i32 = 130;
/// Exit status of `tandem run` when `--timeout` expired (as `timeout(1)`).
pub const EXIT_TIMEOUT: i32 = 124;

/// How the guest (or QEMU) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum GuestExit {
    /// The guest shut down cleanly (guest code 0x10).
    Clean,
    /// The guest reported a failure: panic or CPU exception (guest code 0x11).
    Failed,
    /// QEMU exited with this status on its own.
    Qemu(i32),
    /// QEMU was killed by this signal.
    Signal(i32),
}

impl GuestExit {
    /// Decode a raw exit code (`None` code means killed by `signal`).
    pub fn from_parts(code: Option<i32>, signal: Option<i32>) -> GuestExit {
        match (code, signal) {
            (Some(c), _) if c == qemu_status_for(GUEST_CLEAN) => GuestExit::Clean,
            (Some(c), _) if c == qemu_status_for(GUEST_FAILED) => GuestExit::Failed,
            (Some(c), _) => GuestExit::Qemu(c),
            (None, Some(s)) => GuestExit::Signal(s),
            (None, None) => GuestExit::Qemu(-1),
        }
    }

    /// Decode a process exit status.
    pub fn from_status(status: ExitStatus) -> GuestExit {
        use std::os::unix::process::ExitStatusExt;
        GuestExit::from_parts(status.code(), status.signal())
    }

    /// The exit status `tandem run` reports for it: 0 clean, 1 failed, QEMU's own status
    /// otherwise, 128 + signal when QEMU was killed.
    pub fn tandem_exit_code(self) -> i32 {
        match self {
            GuestExit::Clean => 0,
            GuestExit::Failed => 1,
            GuestExit::Qemu(c) => c,
            GuestExit::Signal(s) => 128 + s,
        }
    }
}

impl fmt::Display for GuestExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestExit::Clean => f.write_str("guest shut down cleanly"),
            GuestExit::Failed => f.write_str("guest failed"),
            GuestExit::Qemu(c) => write!(f, "QEMU exited with status {c}"),
            GuestExit::Signal(s) => write!(f, "QEMU killed by signal {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn protocol_codes() {
        assert_eq!(qemu_status_for(GUEST_CLEAN), 33);
        assert_eq!(qemu_status_for(GUEST_FAILED), 35);
    }

    #[test]
    fn decodes_statuses() {
        assert_eq!(GuestExit::from_parts(Some(33), None), GuestExit::Clean);
        assert_eq!(GuestExit::from_parts(Some(35), None), GuestExit::Failed);
        assert_eq!(GuestExit::from_parts(Some(0), None), GuestExit::Qemu(0));
        assert_eq!(GuestExit::from_parts(Some(1), None), GuestExit::Qemu(1));
        assert_eq!(GuestExit::from_parts(None, Some(9)), GuestExit::Signal(9));
        // Real wait statuses: exit code in bits 8..16, signal in the low bits.
        assert_eq!(
            GuestExit::from_status(ExitStatus::from_raw(33 << 8)),
            GuestExit::Clean
        );
        assert_eq!(
            GuestExit::from_status(ExitStatus::from_raw(35 << 8)),
            GuestExit::Failed
        );
        assert_eq!(
            GuestExit::from_status(ExitStatus::from_raw(15)),
            GuestExit::Signal(15)
        );
    }

    #[test]
    fn tandem_exit_codes() {
        assert_eq!(GuestExit::Clean.tandem_exit_code(), 0);
        assert_eq!(GuestExit::Failed.tandem_exit_code(), 1);
        assert_eq!(GuestExit::Qemu(0).tandem_exit_code(), 0);
        assert_eq!(GuestExit::Qemu(1).tandem_exit_code(), 1);
        assert_eq!(GuestExit::Signal(9).tandem_exit_code(), 137);
    }
}
