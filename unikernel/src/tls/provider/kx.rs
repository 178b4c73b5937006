//! Ephemeral key exchange: X25519 (what every current client offers first), and the NIST curves
//! P-256 and P-384 (what FIPS-minded clients, and gnutls with some priority strings, insist on).
//!
//! Each exchange's secret comes from a generator freshly keyed from the hardware
//! ([`Randomness::generator`]); a peer's share is checked (the right length, a point on the
//! curve in uncompressed form, not a small-order X25519 point).

use alloc::boxed::Box;

use p256::elliptic_curve::Generate;
use rustls::crypto::{ActiveKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup, PeerMisbehaved};

use crate::tls::rng::Randomness;

fn bad_share() -> Error {
    PeerMisbehaved::InvalidKeyShare.into()
}

/// X25519 (RFC 7748).
#[derive(Debug)]
pub struct X25519(pub Randomness);

impl SupportedKxGroup for X25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let mut rng = self.0.generator()?;
        let secret = x25519_dalek::EphemeralSecret::random_from_rng(&mut rng);
        let public = x25519_dalek::PublicKey::from(&secret);
        Ok(Box::new(X25519Exchange { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct X25519Exchange {
    secret: x25519_dalek::EphemeralSecret,
    public: x25519_dalek::PublicKey,
}

impl ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        let peer: [u8; 32] = peer.try_into().map_err(|_| bad_share())?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        if !shared.was_contributory() {
            return Err(bad_share());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_bytes()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// ECDHE over a NIST curve: the group type, its exchange type, the curve crate, its TLS name.
macro_rules! nist_group {
    ($group:ident, $exchange:ident, $curve:ident, $name:expr) => {
        #[derive(Debug)]
        pub struct $group(pub Randomness);

        impl SupportedKxGroup for $group {
            fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
                let mut rng = self.0.generator()?;
                let secret =
                    <$curve::ecdh::EphemeralSecret as Generate>::generate_from_rng(&mut rng);
                let public = secret.public_key().to_sec1_bytes();
                Ok(Box::new($exchange { secret, public }))
            }

            fn name(&self) -> NamedGroup {
                $name
            }
        }

        struct $exchange {
            secret: $curve::ecdh::EphemeralSecret,
            /// Our share: the uncompressed point.
            public: Box<[u8]>,
        }

        impl ActiveKeyExchange for $exchange {
            fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
                // TLS allows only the uncompressed form (RFC 8446 §4.2.8.2).
                if peer.first() != Some(&4) {
                    return Err(bad_share());
                }
                let peer = $curve::PublicKey::from_sec1_bytes(peer).map_err(|_| bad_share())?;
                let shared = self.secret.diffie_hellman(&peer);
                Ok(SharedSecret::from(&shared.raw_secret_bytes()[..]))
            }

            fn pub_key(&self) -> &[u8] {
                &self.public
            }

            fn group(&self) -> NamedGroup {
                $name
            }
        }
    };
}

nist_group!(P256, P256Exchange, p256, NamedGroup::secp256r1);
nist_group!(P384, P384Exchange, p384, NamedGroup::secp384r1);
