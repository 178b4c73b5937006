//! The watchdog: the local APIC timer interrupts every few milliseconds; if the service loop
//! has not moved its heartbeat for `timeout` while serving, the guest restarts in place.
//!
//! The guest otherwise runs with interrupts off; they are on only while serving, and the
//! timer is the only source unmasked (the legacy PICs stay masked).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::cpu::rdtsc;
use crate::mmio;

static HEARTBEAT: AtomicU64 = AtomicU64::new(0);
/// Heartbeat value and TSC when it last changed.
static SEEN: AtomicU64 = AtomicU64::new(u64::MAX);
static SEEN_TSC: AtomicU64 = AtomicU64::new(0);
/// Timeout in TSC cycles (0: off).
static TIMEOUT_CYCLES: AtomicU64 = AtomicU64::new(0);
/// The local APIC's registers, once found.
static LAPIC: spin::Once<mmio::Block> = spin::Once::new();
/// LAPIC timer counts per millisecond (0 until calibrated).
static TIMER_PER_MS: AtomicU64 = AtomicU64::new(0);

const SVR: u64 = 0xf0;
const EOI: u64 = 0xb0;
const LVT_TIMER: u64 = 0x320;
const TIMER_INIT: u64 = 0x380;
const TIMER_CURRENT: u64 = 0x390;
const TIMER_DIVIDE: u64 = 0x3e0;
/// Tick period.
/// 1 ms: the tick also wakes an idle service loop (see `main`), so it bounds the latency
/// an idle guest adds to the first request after a pause.
const TICK_US: u64 = 1_000;

fn write(offset: u64, v: u32) {
    if let Some(lapic) = LAPIC.get() {
        lapic.write::<u32>(offset, v);
    }
}

fn read(offset: u64) -> u32 {
    LAPIC
        .get()
        .and_then(|lapic| lapic.read::<u32>(offset))
        .unwrap_or(0)
}

/// The service loop is alive.
/// Whether the tick is running (an idle loop may then halt until it).
pub fn ticking() -> bool {
    TIMEOUT_CYCLES.load(Ordering::Relaxed) != 0 && LAPIC.is_completed()
}

pub fn beat() {
    HEARTBEAT.fetch_add(1, Ordering::Relaxed);
}

/// Starts the periodic tick and arms the watchdog with `timeout_ms` (0 leaves it off).
pub fn start(timeout_ms: u64) {
    if timeout_ms == 0 {
        return;
    }
    match crate::arch::cpu::local_apic() {
        Ok(lapic) => {
            LAPIC.call_once(|| lapic);
        }
        Err(base) => {
            log::warn!("watchdog: no usable local APIC ({base:#x}); off");
            return;
        }
    }
    write(SVR, 0x100 | u32::from(crate::arch::idt::SPURIOUS_VECTOR));
    write(TIMER_DIVIDE, 0b1011); // divide by 1
                                 // Calibrate the timer against the TSC over 1 ms.
    write(LVT_TIMER, 1 << 16); // masked while calibrating
    let hz = crate::time::tsc_hz().max(1);
    // Calibrated once (a 1 ms wait), not again on every restart in place.
    let per_ms = match TIMER_PER_MS.load(Ordering::Relaxed) {
        0 => {
            write(TIMER_INIT, u32::MAX);
            let t0 = rdtsc();
            while rdtsc() - t0 < hz / 1000 {}
            let n = u64::from(u32::MAX - read(TIMER_CURRENT)).max(1);
            TIMER_PER_MS.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    };
    let count = (per_ms * TICK_US / 1000).clamp(1, u64::from(u32::MAX)) as u32;
    TIMEOUT_CYCLES.store(hz / 1000 * timeout_ms, Ordering::Relaxed);
    SEEN.store(u64::MAX, Ordering::Relaxed);
    write(
        LVT_TIMER,
        (1 << 17) | u32::from(crate::arch::idt::TIMER_VECTOR),
    ); // periodic
    write(TIMER_INIT, count);
    log::log!(
        crate::detail_level(),
        "watchdog: {timeout_ms} ms, tick {} ms",
        TICK_US / 1000
    );
    crate::arch::cpu::enable_interrupts();
}

/// Stops the tick (before a restart re-arms it).
pub fn stop() {
    crate::arch::cpu::disable_interrupts();
    TIMEOUT_CYCLES.store(0, Ordering::Relaxed);
    write(TIMER_INIT, 0);
}

/// Called from the timer interrupt.
pub fn tick() {
    write(EOI, 0);
    let beat = HEARTBEAT.load(Ordering::Relaxed);
    let now = rdtsc();
    if SEEN.swap(beat, Ordering::Relaxed) != beat {
        SEEN_TSC.store(now, Ordering::Relaxed);
        return;
    }
    let timeout = TIMEOUT_CYCLES.load(Ordering::Relaxed);
    if timeout != 0 && now - SEEN_TSC.load(Ordering::Relaxed) > timeout {
        stop();
        crate::on_watchdog();
    }
}
