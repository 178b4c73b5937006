//! The server's private key: loaded from PKCS#8, SEC1 or PKCS#1 DER (what `openssl`, `certtool`
//! and `tandem`'s own throwaway CA write), and used to sign handshakes.
//!
//! RSA (2048 bits and up; PSS preferred, PKCS#1 v1.5 for TLS 1.2 clients that want it), ECDSA
//! over P-256 and P-384, and Ed25519. ECDSA signatures are deterministic (RFC 6979); RSA
//! signing is blinded with a generator freshly keyed from the hardware.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer as _};
use rsa::traits::PublicKeyParts;
use rustls::pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use rustls::sign::{Signer, SigningKey};
use rustls::{Error, SignatureAlgorithm, SignatureScheme};
use sha2::{Sha256, Sha384, Sha512};

use crate::tls::rng::Randomness;

/// Smallest RSA modulus accepted for the server's key, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Decodes the server's key; an error names what was wrong.
pub fn load(der: &PrivateKeyDer<'_>, rand: Randomness) -> Result<Arc<dyn SigningKey>, Error> {
    let bad = |what: &'static str| Error::General(what.into());
    match der {
        PrivateKeyDer::Pkcs8(k) => {
            let k = k.secret_pkcs8_der();
            if let Ok(key) = p256::ecdsa::SigningKey::from_pkcs8_der(k) {
                Ok(Arc::new(EcdsaP256(key)))
            } else if let Ok(key) = p384::ecdsa::SigningKey::from_pkcs8_der(k) {
                Ok(Arc::new(EcdsaP384(key)))
            } else if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_der(k) {
                Ok(Arc::new(Ed25519(key)))
            } else if let Ok(key) = rsa::PrivateKey::from_pkcs8_der(k) {
                rsa_key(key, rand)
            } else {
                Err(bad(
                    "private key: PKCS#8 of an unsupported kind (RSA, P-256, P-384, Ed25519 are)",
                ))
            }
        }
        PrivateKeyDer::Sec1(k) => {
            let k = k.secret_sec1_der();
            if let Ok(key) = p256::SecretKey::from_sec1_der(k) {
                Ok(Arc::new(EcdsaP256(key.into())))
            } else if let Ok(key) = p384::SecretKey::from_sec1_der(k) {
                Ok(Arc::new(EcdsaP384(key.into())))
            } else {
                Err(bad(
                    "private key: an EC key on a curve other than P-256 or P-384",
                ))
            }
        }
        PrivateKeyDer::Pkcs1(k) => match rsa::PrivateKey::from_pkcs1_der(k.secret_pkcs1_der()) {
            Ok(key) => rsa_key(key, rand),
            Err(_) => Err(bad("private key: malformed PKCS#1 RSA key")),
        },
        _ => Err(bad("private key: unsupported encoding")),
    }
}

fn rsa_key(key: rsa::PrivateKey, rand: Randomness) -> Result<Arc<dyn SigningKey>, Error> {
    if key.size() * 8 < MIN_RSA_BITS {
        return Err(Error::General(
            "private key: RSA key shorter than 2048 bits".into(),
        ));
    }
    Ok(Arc::new(RsaKey {
        key: Arc::new(key),
        rand,
    }))
}

fn sign_err<E>(_: E) -> Error {
    Error::General("signing failed".into())
}

/// The public half, as the certificate carries it: rustls compares the two when the server
/// is configured, so that a key that does not match its certificate is refused at boot
/// rather than failing every handshake.
fn spki<K: EncodePublicKey>(k: &K) -> Option<SubjectPublicKeyInfoDer<'static>> {
    let der = k.to_public_key_der().ok()?;
    Some(SubjectPublicKeyInfoDer::from(der.as_bytes().to_vec()))
}

/// A key that signs with one scheme: its type, its public key, scheme, algorithm, signer.
macro_rules! single_scheme_key {
    ($name:ident, $key:ty, $public:expr, $scheme:expr, $alg:expr, $sign:expr) => {
        #[derive(Clone)]
        struct $name($key);

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(stringify!($name))
            }
        }

        impl SigningKey for $name {
            fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
                offered
                    .contains(&$scheme)
                    .then(|| Box::new(self.clone()) as Box<dyn Signer>)
            }

            fn algorithm(&self) -> SignatureAlgorithm {
                $alg
            }

            fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
                let public: fn(&$key) -> Option<SubjectPublicKeyInfoDer<'static>> = $public;
                public(&self.0)
            }
        }

        impl Signer for $name {
            fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
                let sign: fn(&$key, &[u8]) -> Result<Vec<u8>, Error> = $sign;
                sign(&self.0, message)
            }

            fn scheme(&self) -> SignatureScheme {
                $scheme
            }
        }
    };
}

single_scheme_key!(
    EcdsaP256,
    p256::ecdsa::SigningKey,
    |k| spki(k.verifying_key()),
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureAlgorithm::ECDSA,
    |k, m| {
        let sig: p256::ecdsa::Signature = k.try_sign(m).map_err(sign_err)?;
        Ok(sig.to_der().to_bytes().into())
    }
);

single_scheme_key!(
    EcdsaP384,
    p384::ecdsa::SigningKey,
    |k| spki(k.verifying_key()),
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureAlgorithm::ECDSA,
    |k, m| {
        let sig: p384::ecdsa::Signature = k.try_sign(m).map_err(sign_err)?;
        Ok(sig.to_der().to_bytes().into())
    }
);

single_scheme_key!(
    Ed25519,
    ed25519_dalek::SigningKey,
    |k| spki(&k.verifying_key()),
    SignatureScheme::ED25519,
    SignatureAlgorithm::ED25519,
    |k, m| Ok(k.try_sign(m).map_err(sign_err)?.to_bytes().to_vec())
);

/// An RSA key: signs with whichever scheme the client offers, PSS first.
#[derive(Clone)]
struct RsaKey {
    key: Arc<rsa::PrivateKey>,
    rand: Randomness,
}

impl core::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RsaKey")
    }
}

/// Our preference among the RSA schemes.
const RSA_SCHEMES: [SignatureScheme; 6] = [
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

impl SigningKey for RsaKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = RSA_SCHEMES.into_iter().find(|s| offered.contains(s))?;
        Some(Box::new(RsaSigner {
            key: self.clone(),
            scheme,
        }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::RSA
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        spki(&self.key.to_public_key())
    }
}

#[derive(Debug)]
struct RsaSigner {
    key: RsaKey,
    scheme: SignatureScheme,
}

impl Signer for RsaSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        use rsa::{pkcs1v15, pss};
        let mut rng = self.key.rand.generator()?;
        let key = (*self.key.key).clone();
        let sig = match self.scheme {
            SignatureScheme::RSA_PSS_SHA256 => pss::SigningKey::<Sha256>::new(key)
                .try_sign_with_rng(&mut rng, message)
                .map(|s| s.to_vec()),
            SignatureScheme::RSA_PSS_SHA384 => pss::SigningKey::<Sha384>::new(key)
                .try_sign_with_rng(&mut rng, message)
                .map(|s| s.to_vec()),
            SignatureScheme::RSA_PSS_SHA512 => pss::SigningKey::<Sha512>::new(key)
                .try_sign_with_rng(&mut rng, message)
                .map(|s| s.to_vec()),
            SignatureScheme::RSA_PKCS1_SHA256 => pkcs1v15::SigningKey::<Sha256>::new(key)
                .try_sign_with_rng(&mut rng, message)
                .map(|s| s.to_vec()),
            SignatureScheme::RSA_PKCS1_SHA384 => pkcs1v15::SigningKey::<Sha384>::new(key)
                .try_sign_with_rng(&mut rng, message)
                .map(|s| s.to_vec()),
            _ => pkcs1v15::SigningKey::<Sha512>::new(key)
                .try_sign_with_rng(&mut rng, message)
                .map(|s| s.to_vec()),
        };
        sig.map_err(sign_err)
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}
