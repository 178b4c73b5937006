//! A rustls crypto provider assembled from RustCrypto crates, for a guest with no OS.
//!
//! Why not `rustls-rustcrypto` (0.0.2-alpha, the published pure-Rust provider): its key
//! exchanges and signatures draw randomness from `rand_core::OsRng`, i.e. getrandom's OS
//! backend, which on the guest's build target (the host triple) is a Linux system call; it
//! also pins the previous generation of the RustCrypto crates. This one is the same idea,
//! smaller, on the crates the guest already uses (sha2 0.11, hmac 0.13), with every random
//! byte from the [`Randomness`] its maker passes in.
//!
//! Offered: TLS 1.3 with AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305; TLS 1.2 with ECDHE
//! (RSA or ECDSA certificates) and the same three ciphers; key exchange over X25519, P-256,
//! P-384. No CBC, no static RSA, no finite-field DH.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;

use rustls::crypto::tls12::PrfUsingHmac;
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::crypto::{CipherSuiteCommon, CryptoProvider, KeyExchangeAlgorithm, KeyProvider};
use rustls::pki_types::PrivateKeyDer;
use rustls::{CipherSuite, SignatureScheme, SupportedCipherSuite, Tls12CipherSuite};
use rustls::{Error, Tls13CipherSuite};

use super::rng::Randomness;

mod aead;
mod hash;
mod kx;
mod sign;
mod verify;

/// The provider, with `rand` behind every random byte.
///
/// Its randomness-holding parts must be `'static` for rustls: they are leaked, a few dozen
/// bytes per call. Make the provider once (the guest: once at boot) and share it.
pub fn provider(rand: Randomness) -> Arc<CryptoProvider> {
    let leak = |k: Box<dyn rustls::crypto::SupportedKxGroup>| -> &'static dyn rustls::crypto::SupportedKxGroup {
        Box::leak(k)
    };
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![
            leak(Box::new(kx::X25519(rand))),
            leak(Box::new(kx::P256(rand))),
            leak(Box::new(kx::P384(rand))),
        ],
        signature_verification_algorithms: verify::ALGORITHMS,
        secure_random: Box::leak(Box::new(rand)),
        key_provider: Box::leak(Box::new(Keys(rand))),
    })
}

/// Loads the server's key ([`sign::load`]).
#[derive(Debug)]
struct Keys(Randomness);

impl KeyProvider for Keys {
    fn load_private_key(
        &self,
        key_der: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, Error> {
        sign::load(&key_der, self.0)
    }
}

/// AES-GCM may seal 2^24 records under one key before rustls must change it; ChaCha20 has
/// no practical limit.
const GCM_LIMIT: u64 = 1 << 24;

macro_rules! tls13_suite {
    ($name:ident, $hash:ident, $hmac:ident, $aead:ident, $limit:expr) => {
        pub static $name: SupportedCipherSuite = SupportedCipherSuite::Tls13(&Tls13CipherSuite {
            common: CipherSuiteCommon {
                suite: CipherSuite::$name,
                hash_provider: &hash::$hash,
                confidentiality_limit: $limit,
            },
            hkdf_provider: &HkdfUsingHmac(&hash::$hmac),
            aead_alg: &aead::$aead,
            quic: None,
        });
    };
}

tls13_suite!(
    TLS13_AES_128_GCM_SHA256,
    SHA256,
    HMAC_SHA256,
    TLS13_AES_128_GCM,
    GCM_LIMIT
);
tls13_suite!(
    TLS13_AES_256_GCM_SHA384,
    SHA384,
    HMAC_SHA384,
    TLS13_AES_256_GCM,
    GCM_LIMIT
);
tls13_suite!(
    TLS13_CHACHA20_POLY1305_SHA256,
    SHA256,
    HMAC_SHA256,
    TLS13_CHACHA20_POLY1305,
    u64::MAX
);

static TLS12_ECDSA_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP256_SHA256,
];

static TLS12_RSA_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA256,
];

macro_rules! tls12_suite {
    ($name:ident, $hash:ident, $hmac:ident, $schemes:ident, $aead:ident, $limit:expr) => {
        pub static $name: SupportedCipherSuite = SupportedCipherSuite::Tls12(&Tls12CipherSuite {
            common: CipherSuiteCommon {
                suite: CipherSuite::$name,
                hash_provider: &hash::$hash,
                confidentiality_limit: $limit,
            },
            kx: KeyExchangeAlgorithm::ECDHE,
            sign: $schemes,
            aead_alg: &aead::$aead,
            prf_provider: &PrfUsingHmac(&hash::$hmac),
        });
    };
}

tls12_suite!(
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    SHA256,
    HMAC_SHA256,
    TLS12_ECDSA_SCHEMES,
    TLS12_AES_128_GCM,
    GCM_LIMIT
);
tls12_suite!(
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    SHA384,
    HMAC_SHA384,
    TLS12_ECDSA_SCHEMES,
    TLS12_AES_256_GCM,
    GCM_LIMIT
);
tls12_suite!(
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    SHA256,
    HMAC_SHA256,
    TLS12_ECDSA_SCHEMES,
    TLS12_CHACHA20_POLY1305,
    u64::MAX
);
tls12_suite!(
    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    SHA256,
    HMAC_SHA256,
    TLS12_RSA_SCHEMES,
    TLS12_AES_128_GCM,
    GCM_LIMIT
);
tls12_suite!(
    TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    SHA384,
    HMAC_SHA384,
    TLS12_RSA_SCHEMES,
    TLS12_AES_256_GCM,
    GCM_LIMIT
);
tls12_suite!(
    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    SHA256,
    HMAC_SHA256,
    TLS12_RSA_SCHEMES,
    TLS12_CHACHA20_POLY1305,
    u64::MAX
);
