//! The CMOS real-time clock (ports 0x70/0x71): wall-clock time for TLS's certificate checks.
//! The decoding and date arithmetic are `unikernel::wallclock`'s; this reads the registers.
//!
//! Read once, on first use, then carried forward on the monotonic clock (`time::now_us`), so
//! that a handshake does not wait for the RTC's update cycle.

use core::sync::atomic::{AtomicU64, Ordering};

use unikernel::wallclock::RtcRegisters;

use super::cpu::{inb, outb};

const INDEX: u16 = 0x70;
const DATA: u16 = 0x71;
/// Status register A's update-in-progress bit: the registers are being changed.
const UIP: u8 = 1 << 7;

/// The UNIX time of the first read (0: not read yet) and the monotonic time it was read at.
static BASE_SECS: AtomicU64 = AtomicU64::new(0);
static BASE_US: AtomicU64 = AtomicU64::new(0);

fn cmos(reg: u8) -> u8 {
    // Bit 7 of the index is left clear: NMIs stay enabled.
    outb(INDEX, reg & 0x7f);
    inb(DATA)
}

fn registers() -> RtcRegisters {
    RtcRegisters {
        seconds: cmos(0x00),
        minutes: cmos(0x02),
        hours: cmos(0x04),
        day: cmos(0x07),
        month: cmos(0x08),
        year: cmos(0x09),
        century: cmos(0x32),
        status_b: cmos(0x0b),
    }
}

/// The RTC's time as UNIX seconds: read outside an update, twice the same, so that no
/// register is caught half-way through a carry. `None` when the clock reads garbage.
pub fn read() -> Option<u64> {
    let mut last = None;
    for _ in 0..8 {
        // An update takes under 2 ms; UIP rises 244 µs before it.
        let mut spins = 0u32;
        while cmos(0x0a) & UIP != 0 && spins < 1_000_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        let now = registers();
        if last == Some(now) {
            return now.unix_seconds();
        }
        last = Some(now);
    }
    None
}

/// The wall clock, UNIX seconds: the `unikernel::tls::Clock` the kernel hands to TLS.
pub fn unix_now() -> Option<u64> {
    let now_us = crate::time::now_us();
    let mut base = BASE_SECS.load(Ordering::Relaxed);
    if base == 0 {
        base = read()?;
        BASE_US.store(now_us, Ordering::Relaxed);
        BASE_SECS.store(base, Ordering::Relaxed);
    }
    let since = now_us.saturating_sub(BASE_US.load(Ordering::Relaxed));
    Some(base + since / 1_000_000)
}
