//! Signature verification, for client certificates (`verify_peer`): the signatures in a
//! client's chain and its CertificateVerify. ECDSA over P-256/P-384 with SHA-256/384, RSA
//! PKCS#1 v1.5 and PSS with SHA-256/384/512, Ed25519: what webpki's own providers accept.
//!
//! Every check is a plain function of (public key, message, signature); a key or signature
//! that does not decode is a failed check, never a panic.

use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::signature::hazmat::PrehashVerifier;
use rsa::signature::Verifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::SignatureVerificationAlgorithm as Algorithm;
use rustls::pki_types::{alg_id, AlgorithmIdentifier, InvalidSignature};
use rustls::SignatureScheme;
use sha2::{Digest, Sha256, Sha384, Sha512};

/// One (key type, signature algorithm) pair and its check.
struct Alg {
    name: &'static str,
    key: AlgorithmIdentifier,
    sig: AlgorithmIdentifier,
    check: fn(&[u8], &[u8], &[u8]) -> bool,
}

impl core::fmt::Debug for Alg {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name)
    }
}

impl Algorithm for Alg {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        if (self.check)(public_key, message, signature) {
            Ok(())
        } else {
            Err(InvalidSignature)
        }
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.key
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.sig
    }
}

/// ECDSA on curve `$curve` over the digest `$digest` (DER-encoded signatures).
macro_rules! ecdsa_check {
    ($fn:ident, $curve:ident, $digest:ty) => {
        fn $fn(key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
            let Ok(key) = $curve::ecdsa::VerifyingKey::from_sec1_bytes(key) else {
                return false;
            };
            let Ok(sig) = $curve::ecdsa::Signature::from_der(sig) else {
                return false;
            };
            key.verify_prehash(&<$digest>::digest(msg), &sig).is_ok()
        }
    };
}

ecdsa_check!(p256_sha256, p256, Sha256);
ecdsa_check!(p256_sha384, p256, Sha384);
ecdsa_check!(p384_sha256, p384, Sha256);
ecdsa_check!(p384_sha384, p384, Sha384);

/// RSA with PKCS#1 v1.5 (`pss` false) or PSS padding over the digest `$digest`.
macro_rules! rsa_check {
    ($fn:ident, $padding:ident, $digest:ty) => {
        fn $fn(key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
            use rsa::$padding::{Signature, VerifyingKey};
            let Ok(key) = rsa::PublicKey::from_pkcs1_der(key) else {
                return false;
            };
            let Ok(sig) = Signature::try_from(sig) else {
                return false;
            };
            VerifyingKey::<$digest>::new(key).verify(msg, &sig).is_ok()
        }
    };
}

rsa_check!(rsa_pkcs1_sha256, pkcs1v15, Sha256);
rsa_check!(rsa_pkcs1_sha384, pkcs1v15, Sha384);
rsa_check!(rsa_pkcs1_sha512, pkcs1v15, Sha512);
rsa_check!(rsa_pss_sha256, pss, Sha256);
rsa_check!(rsa_pss_sha384, pss, Sha384);
rsa_check!(rsa_pss_sha512, pss, Sha512);

fn ed25519(key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let Ok(key) = <[u8; 32]>::try_from(key) else {
        return false;
    };
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&key) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
        return false;
    };
    key.verify_strict(msg, &sig).is_ok()
}

macro_rules! alg {
    ($static:ident, $key:ident, $sig:ident, $check:ident) => {
        static $static: Alg = Alg {
            name: stringify!($static),
            key: alg_id::$key,
            sig: alg_id::$sig,
            check: $check,
        };
    };
}

alg!(ECDSA_P256_SHA256, ECDSA_P256, ECDSA_SHA256, p256_sha256);
alg!(ECDSA_P256_SHA384, ECDSA_P256, ECDSA_SHA384, p256_sha384);
alg!(ECDSA_P384_SHA256, ECDSA_P384, ECDSA_SHA256, p384_sha256);
alg!(ECDSA_P384_SHA384, ECDSA_P384, ECDSA_SHA384, p384_sha384);
alg!(
    RSA_PKCS1_SHA256,
    RSA_ENCRYPTION,
    RSA_PKCS1_SHA256,
    rsa_pkcs1_sha256
);
alg!(
    RSA_PKCS1_SHA384,
    RSA_ENCRYPTION,
    RSA_PKCS1_SHA384,
    rsa_pkcs1_sha384
);
alg!(
    RSA_PKCS1_SHA512,
    RSA_ENCRYPTION,
    RSA_PKCS1_SHA512,
    rsa_pkcs1_sha512
);
alg!(
    RSA_PSS_SHA256,
    RSA_ENCRYPTION,
    RSA_PSS_SHA256,
    rsa_pss_sha256
);
alg!(
    RSA_PSS_SHA384,
    RSA_ENCRYPTION,
    RSA_PSS_SHA384,
    rsa_pss_sha384
);
alg!(
    RSA_PSS_SHA512,
    RSA_ENCRYPTION,
    RSA_PSS_SHA512,
    rsa_pss_sha512
);
alg!(ED25519, ED25519, ED25519, ed25519);

/// What certificate signatures (`all`) and handshake signatures (`mapping`) may use.
pub static ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        &ECDSA_P256_SHA256,
        &ECDSA_P256_SHA384,
        &ECDSA_P384_SHA256,
        &ECDSA_P384_SHA384,
        &RSA_PKCS1_SHA256,
        &RSA_PKCS1_SHA384,
        &RSA_PKCS1_SHA512,
        &RSA_PSS_SHA256,
        &RSA_PSS_SHA384,
        &RSA_PSS_SHA512,
        &ED25519,
    ],
    mapping: &[
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[&ECDSA_P384_SHA384, &ECDSA_P256_SHA384],
        ),
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[&ECDSA_P256_SHA256, &ECDSA_P384_SHA256],
        ),
        (SignatureScheme::ED25519, &[&ED25519]),
        (SignatureScheme::RSA_PSS_SHA512, &[&RSA_PSS_SHA512]),
        (SignatureScheme::RSA_PSS_SHA384, &[&RSA_PSS_SHA384]),
        (SignatureScheme::RSA_PSS_SHA256, &[&RSA_PSS_SHA256]),
        (SignatureScheme::RSA_PKCS1_SHA512, &[&RSA_PKCS1_SHA512]),
        (SignatureScheme::RSA_PKCS1_SHA384, &[&RSA_PKCS1_SHA384]),
        (SignatureScheme::RSA_PKCS1_SHA256, &[&RSA_PKCS1_SHA256]),
    ],
};
