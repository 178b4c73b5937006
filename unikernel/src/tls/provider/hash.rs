//! SHA-256 and SHA-384, plain and keyed (HMAC), as rustls wants them: the transcript hash,
//! TLS 1.3's HKDF and TLS 1.2's PRF are all built on these two (rustls's `HkdfUsingHmac` and
//! `PrfUsingHmac`).

use alloc::boxed::Box;
use core::marker::PhantomData;

use hmac::{EagerHash, Hmac, KeyInit, Mac};
use rustls::crypto::hash::{self, HashAlgorithm, Output};
use rustls::crypto::hmac::{self as rhmac, Tag};
use sha2::{Digest, Sha256, Sha384};

/// A hash function `D` under rustls's name for it.
pub struct Hash<D>(HashAlgorithm, PhantomData<fn() -> D>);

pub static SHA256: Hash<Sha256> = Hash(HashAlgorithm::SHA256, PhantomData);
pub static SHA384: Hash<Sha384> = Hash(HashAlgorithm::SHA384, PhantomData);

impl<D> hash::Hash for Hash<D>
where
    D: Digest + Clone + Send + Sync + 'static,
{
    fn start(&self) -> Box<dyn hash::Context> {
        Box::new(Context(D::new()))
    }

    fn hash(&self, data: &[u8]) -> Output {
        Output::new(&D::digest(data))
    }

    fn output_len(&self) -> usize {
        <D as Digest>::output_size()
    }

    fn algorithm(&self) -> HashAlgorithm {
        self.0
    }
}

struct Context<D>(D);

impl<D> hash::Context for Context<D>
where
    D: Digest + Clone + Send + Sync + 'static,
{
    fn fork_finish(&self) -> Output {
        Output::new(&self.0.clone().finalize())
    }

    fn fork(&self) -> Box<dyn hash::Context> {
        Box::new(Context(self.0.clone()))
    }

    fn finish(self: Box<Self>) -> Output {
        Output::new(&self.0.finalize())
    }

    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
}

/// HMAC over the hash function `D`.
pub struct HmacAlg<D>(PhantomData<fn() -> D>);

pub static HMAC_SHA256: HmacAlg<Sha256> = HmacAlg(PhantomData);
pub static HMAC_SHA384: HmacAlg<Sha384> = HmacAlg(PhantomData);

impl<D> rhmac::Hmac for HmacAlg<D>
where
    D: EagerHash + Digest + Clone + Send + Sync + 'static,
    Hmac<D>: Clone + Send + Sync,
{
    fn with_key(&self, key: &[u8]) -> Box<dyn rhmac::Key> {
        // HMAC takes keys of any length (longer ones are hashed first): this cannot fail.
        let mac = <Hmac<D> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        Box::new(HmacKey(mac))
    }

    fn hash_output_len(&self) -> usize {
        <D as Digest>::output_size()
    }
}

/// A keyed HMAC state, cloned for every tag.
struct HmacKey<D: EagerHash>(Hmac<D>);

impl<D> rhmac::Key for HmacKey<D>
where
    D: EagerHash + Digest + Send + Sync + 'static,
    Hmac<D>: Clone + Send + Sync,
{
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        let mut mac = self.0.clone();
        mac.update(first);
        for m in middle {
            mac.update(m);
        }
        mac.update(last);
        Tag::new(&mac.finalize().into_bytes())
    }

    fn tag_len(&self) -> usize {
        <D as Digest>::output_size()
    }
}
