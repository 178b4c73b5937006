//! Randomness for TLS, from a source the caller names (the guest: RDSEED/RDRAND, see the
//! kernel's `arch::entropy`; tests: the host's).
//!
//! rustls draws its own random bytes (hello randoms, session ids) through [`SecureRandom`],
//! straight from the source. The RustCrypto crates that make ephemeral keys and RSA signatures
//! want an infallible generator instead: each such use gets a ChaCha20 generator keyed with 32
//! fresh bytes from the source, so that a source that runs dry fails that one handshake
//! (`FailedToGetRandomBytes`) rather than the guest.

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use rustls::crypto::{GetRandomFailed, SecureRandom};

/// Fills the buffer with random bytes from hardware; false when it had none to give.
pub type Entropy = fn(&mut [u8]) -> bool;

/// A source of secret random bytes, as every part of the provider holds it.
#[derive(Clone, Copy)]
pub struct Randomness(pub Entropy);

impl core::fmt::Debug for Randomness {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Randomness")
    }
}

impl Randomness {
    /// A generator keyed with 32 fresh bytes from the source.
    pub fn generator(&self) -> Result<ChaCha20Rng, rustls::Error> {
        let mut seed = [0u8; 32];
        if !(self.0)(&mut seed) {
            return Err(rustls::Error::FailedToGetRandomBytes);
        }
        let rng = ChaCha20Rng::from_seed(seed);
        seed.fill(0);
        Ok(rng)
    }

    /// Whether the source gives bytes now, and they are not all the same (a CPU whose
    /// RDRAND returns a constant, as some have after a suspend, fails this).
    pub fn works(&self) -> bool {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        (self.0)(&mut a) && (self.0)(&mut b) && a != b && a.iter().any(|&x| x != a[0])
    }
}

impl SecureRandom for Randomness {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        if (self.0)(buf) {
            Ok(())
        } else {
            Err(GetRandomFailed)
        }
    }
}
