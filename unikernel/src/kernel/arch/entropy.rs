//! Randomness from the CPU: RDSEED (the conditioned hardware entropy source) where it has
//! one, RDRAND (a generator the hardware reseeds from it) otherwise. The only source of
//! secrets the guest has: there is no OS pool, and under a hypervisor no device is assumed.
//!
//! Users: the management channel's nonces (`mgmt`), and TLS (`unikernel::tls::Entropy` is
//! [`fill`]), which refuses to start when [`check`] says no.

use core::sync::atomic::{AtomicU8, Ordering};

use super::cpu::cpuid;

/// What the CPU offers, as CPUID says (cached: CPUID exits to the hypervisor).
static FEATURES: AtomicU8 = AtomicU8::new(0);
const KNOWN: u8 = 1;
const HAS_RDSEED: u8 = 2;
const HAS_RDRAND: u8 = 4;

/// Tries per value: Intel's guidance for RDRAND is 10 before calling the unit broken; RDSEED
/// may run dry for a while under load, and RDRAND then takes over.
const TRIES: usize = 10;

fn features() -> u8 {
    let f = FEATURES.load(Ordering::Relaxed);
    if f & KNOWN != 0 {
        return f;
    }
    let (max, ..) = cpuid(0, 0);
    let (_, _, ecx1, _) = cpuid(1, 0);
    let mut f = KNOWN;
    if max >= 7 && cpuid(7, 0).1 & (1 << 18) != 0 {
        f |= HAS_RDSEED;
    }
    if ecx1 & (1 << 30) != 0 {
        f |= HAS_RDRAND;
    }
    FEATURES.store(f, Ordering::Relaxed);
    f
}

/// The instruction randomness comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Rdseed,
    Rdrand,
}

/// One RDSEED value, if the CPU has RDSEED and it gave one within a few tries.
pub fn rdseed() -> Option<u64> {
    if features() & HAS_RDSEED == 0 {
        return None;
    }
    // SAFETY: CPUID said the CPU has RDSEED.
    unsafe { rdseed_raw() }
}

/// One RDRAND value, if the CPU has RDRAND and it gave one within a few tries.
pub fn rdrand() -> Option<u64> {
    if features() & HAS_RDRAND == 0 {
        return None;
    }
    // SAFETY: CPUID said the CPU has RDRAND.
    unsafe { rdrand_raw() }
}

/// # Safety
/// The CPU must have RDSEED.
#[target_feature(enable = "rdseed")]
unsafe fn rdseed_raw() -> Option<u64> {
    let mut v = 0u64;
    for _ in 0..TRIES {
        if core::arch::x86_64::_rdseed64_step(&mut v) == 1 {
            return Some(v);
        }
        core::hint::spin_loop();
    }
    None
}

/// # Safety
/// The CPU must have RDRAND.
#[target_feature(enable = "rdrand")]
unsafe fn rdrand_raw() -> Option<u64> {
    let mut v = 0u64;
    for _ in 0..TRIES {
        if core::arch::x86_64::_rdrand64_step(&mut v) == 1 {
            return Some(v);
        }
    }
    None
}

/// Fills `buf` with hardware random bytes (RDSEED, else RDRAND, word by word); false when
/// neither gave a value. The `unikernel::tls::Entropy` the kernel hands to TLS.
pub fn fill(buf: &mut [u8]) -> bool {
    for chunk in buf.chunks_mut(8) {
        let Some(w) = rdseed().or_else(rdrand) else {
            return false;
        };
        chunk.copy_from_slice(&w.to_le_bytes()[..chunk.len()]);
    }
    true
}

/// Whether TLS may start: the CPU has RDSEED or RDRAND, and it answers with values that
/// change (some CPUs' RDRAND has returned a constant, all ones, after a suspend). Err says
/// why not, for the console.
pub fn check() -> Result<Source, &'static str> {
    let f = features();
    let source = if f & HAS_RDSEED != 0 {
        Source::Rdseed
    } else if f & HAS_RDRAND != 0 {
        Source::Rdrand
    } else {
        return Err(
            "the CPU has neither RDSEED nor RDRAND (QEMU: -cpu host or -cpu max); \
                    TLS needs one for its keys",
        );
    };
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    if !fill(&mut a) || !fill(&mut b) {
        return Err("RDSEED/RDRAND gave no values");
    }
    if a == b || a.iter().all(|&x| x == a[0]) {
        return Err("RDSEED/RDRAND returned a constant: the hardware generator is broken");
    }
    Ok(source)
}
