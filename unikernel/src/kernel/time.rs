//! The monotonic clock: the TSC, with its frequency from the hypervisor's CPUID leaves when
//! offered, else calibrated against PIT channel 0 (present on q35 and microvm; channel 2's
//! speaker gate is not, so it is not used).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::cpu::{cpuid, inb, outb, rdtsc};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_BOOT: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 5 ms of PIT ticks.
const PIT_TICKS: u16 = 5_966;

/// Where the TSC frequency came from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    HypervisorLeaf,
    CpuidLeaf15,
    Pit,
    /// Nothing answered; 1 GHz assumed and reported.
    Assumed,
}

/// Records the boot instant (time zero of every timestamp).
pub fn mark_boot() {
    TSC_BOOT.store(rdtsc(), Ordering::Relaxed);
}

/// Determines the TSC frequency. Returns (Hz, source).
pub fn calibrate() -> (u64, Source) {
    let (hz, src) = if let Some(hz) = hypervisor_leaf() {
        (hz, Source::HypervisorLeaf)
    } else if let Some(hz) = leaf_15() {
        (hz, Source::CpuidLeaf15)
    } else if let Some(hz) = pit() {
        (hz, Source::Pit)
    } else {
        (1_000_000_000, Source::Assumed)
    };
    TSC_HZ.store(hz, Ordering::Relaxed);
    (hz, src)
}

fn hypervisor_leaf() -> Option<u64> {
    let (_, _, ecx, _) = cpuid(1, 0);
    if ecx & (1 << 31) == 0 {
        return None;
    }
    let (max, ..) = cpuid(0x4000_0000, 0);
    if max < 0x4000_0010 {
        return None;
    }
    let (khz, ..) = cpuid(0x4000_0010, 0);
    (khz != 0).then_some(u64::from(khz) * 1000)
}

fn leaf_15() -> Option<u64> {
    let (max, ..) = cpuid(0, 0);
    if max < 0x15 {
        return None;
    }
    let (den, num, crystal, _) = cpuid(0x15, 0);
    (den != 0 && num != 0 && crystal != 0)
        .then(|| u64::from(crystal) * u64::from(num) / u64::from(den))
}

fn pit_count() -> u16 {
    outb(0x43, 0x00); // latch channel 0
    let lo = inb(0x40);
    let hi = inb(0x40);
    u16::from_le_bytes([lo, hi])
}

fn pit() -> Option<u64> {
    outb(0x43, 0x34); // channel 0, lo/hi byte, mode 2 (rate generator)
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    let start = pit_count();
    let t0 = rdtsc();
    // Bounded: a missing PIT reads a constant and never advances.
    for _ in 0..50_000_000u32 {
        let elapsed = start.wrapping_sub(pit_count());
        if (PIT_TICKS..0x8000).contains(&elapsed) {
            let cycles = rdtsc() - t0;
            return Some(cycles * PIT_HZ / u64::from(elapsed));
        }
    }
    None
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Converts a TSC delta to microseconds.
pub fn cycles_to_us(cycles: u64) -> u64 {
    match tsc_hz() {
        0 => 0,
        hz => (u128::from(cycles) * 1_000_000 / u128::from(hz)) as u64,
    }
}

/// Nanoseconds since [`mark_boot`] (0 before calibration).
pub fn now_ns() -> u64 {
    match tsc_hz() {
        0 => 0,
        hz => {
            let cycles = rdtsc().wrapping_sub(TSC_BOOT.load(Ordering::Relaxed));
            (u128::from(cycles) * 1_000_000_000 / u128::from(hz)) as u64
        }
    }
}

/// Microseconds since [`mark_boot`] (0 before calibration).
pub fn now_us() -> u64 {
    cycles_to_us(rdtsc().wrapping_sub(TSC_BOOT.load(Ordering::Relaxed)))
}
