//! The record ciphers: AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305, for TLS 1.3 (nonce =
//! IV xor sequence number, the content type sealed inside) and TLS 1.2 (GCM with RFC 5288's
//! explicit 8-byte nonce on the wire; ChaCha20-Poly1305 with RFC 7905's implicit one).
//!
//! Records are sealed and opened in place in rustls's buffers: no copy beyond the one rustls
//! makes to frame a record.

use alloc::boxed::Box;
use core::marker::PhantomData;

use aes_gcm::aead::{AeadCore, AeadInOut, Nonce, Tag};
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use rustls::crypto::cipher::{
    make_tls12_aad, make_tls13_aad, AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv,
    KeyBlockShape, MessageDecrypter, MessageEncrypter, Nonce as SeqNonce, OutboundOpaqueMessage,
    OutboundPlainMessage, PrefixedPayload, Tls12AeadAlgorithm, Tls13AeadAlgorithm,
    UnsupportedOperationError, NONCE_LEN,
};
use rustls::{ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion};

/// Every cipher here has a 16-byte tag and a 12-byte nonce.
const TAG_LEN: usize = 16;
/// TLS 1.2 GCM: the part of the nonce sent with each record.
const GCM_EXPLICIT_LEN: usize = 8;
/// TLS 1.2 GCM: the part of the nonce from the key block.
const GCM_FIXED_LEN: usize = 4;

/// What the ciphers here have in common.
pub trait Cipher: AeadInOut + KeyInit + Send + Sync + 'static {}
impl<A: AeadInOut + KeyInit + Send + Sync + 'static> Cipher for A {}

fn new_cipher<A: Cipher>(key: &AeadKey) -> A {
    // rustls hands over exactly `key_len()` bytes.
    A::new_from_slice(key.as_ref()).unwrap_or_else(|_| unreachable!("AEAD key of the wrong length"))
}

fn nonce<A: AeadCore>(bytes: &[u8; NONCE_LEN]) -> Nonce<A> {
    Nonce::<A>::try_from(&bytes[..]).unwrap_or_else(|_| unreachable!("12-byte nonces only"))
}

/// A TLS 1.3 record cipher.
pub struct Tls13<A>(PhantomData<fn() -> A>);

pub static TLS13_AES_128_GCM: Tls13<Aes128Gcm> = Tls13(PhantomData);
pub static TLS13_AES_256_GCM: Tls13<Aes256Gcm> = Tls13(PhantomData);
pub static TLS13_CHACHA20_POLY1305: Tls13<ChaCha20Poly1305> = Tls13(PhantomData);

impl<A: Cipher> Tls13AeadAlgorithm for Tls13<A> {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(Tls13Cipher::<A> {
            aead: new_cipher(&key),
            iv,
        })
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(Tls13Cipher::<A> {
            aead: new_cipher(&key),
            iv,
        })
    }

    fn key_len(&self) -> usize {
        A::key_size()
    }

    fn extract_keys(
        &self,
        _key: AeadKey,
        _iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        // Secrets are never handed out (no kernel TLS offload here).
        Err(UnsupportedOperationError)
    }
}

struct Tls13Cipher<A> {
    aead: A,
    iv: Iv,
}

impl<A: Cipher> MessageEncrypter for Tls13Cipher<A> {
    fn encrypt(
        &mut self,
        m: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total_len = self.encrypted_payload_len(m.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        payload.extend_from_chunks(&m.payload);
        payload.extend_from_slice(&m.typ.to_array());
        let nonce = nonce::<A>(&SeqNonce::new(&self.iv, seq).0);
        let aad = make_tls13_aad(total_len);
        let tag = self
            .aead
            .encrypt_inout_detached(&nonce, &aad, payload.as_mut().into())
            .map_err(|_| Error::EncryptError)?;
        payload.extend_from_slice(&tag);
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + TAG_LEN
    }
}

impl<A: Cipher> MessageDecrypter for Tls13Cipher<A> {
    fn decrypt<'a>(
        &mut self,
        mut m: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut m.payload;
        let len = payload.len();
        let text = len.checked_sub(TAG_LEN).ok_or(Error::DecryptError)?;
        let nonce = nonce::<A>(&SeqNonce::new(&self.iv, seq).0);
        let aad = make_tls13_aad(len);
        let (msg, tag) = payload.split_at_mut(text);
        let tag = Tag::<A>::try_from(&*tag).map_err(|_| Error::DecryptError)?;
        self.aead
            .decrypt_inout_detached(&nonce, &aad, msg.into(), &tag)
            .map_err(|_| Error::DecryptError)?;
        payload.truncate(text);
        m.into_tls13_unpadded_message()
    }
}

/// A TLS 1.2 AES-GCM record cipher (RFC 5288).
pub struct Tls12Gcm<A>(PhantomData<fn() -> A>);

pub static TLS12_AES_128_GCM: Tls12Gcm<Aes128Gcm> = Tls12Gcm(PhantomData);
pub static TLS12_AES_256_GCM: Tls12Gcm<Aes256Gcm> = Tls12Gcm(PhantomData);

impl<A: Cipher> Tls12AeadAlgorithm for Tls12Gcm<A> {
    fn encrypter(&self, key: AeadKey, iv: &[u8], extra: &[u8]) -> Box<dyn MessageEncrypter> {
        // The write IV's 4 fixed bytes, then 8 random ones that start the explicit nonces.
        let mut full = [0u8; NONCE_LEN];
        full[..GCM_FIXED_LEN].copy_from_slice(iv);
        full[GCM_FIXED_LEN..].copy_from_slice(extra);
        Box::new(Tls12Cipher::<A> {
            aead: new_cipher(&key),
            iv: Iv::new(full),
            explicit: true,
        })
    }

    fn decrypter(&self, key: AeadKey, iv: &[u8]) -> Box<dyn MessageDecrypter> {
        let mut full = [0u8; NONCE_LEN];
        full[..GCM_FIXED_LEN].copy_from_slice(iv);
        Box::new(Tls12Cipher::<A> {
            aead: new_cipher(&key),
            iv: Iv::new(full),
            explicit: true,
        })
    }

    fn key_block_shape(&self) -> KeyBlockShape {
        KeyBlockShape {
            enc_key_len: A::key_size(),
            fixed_iv_len: GCM_FIXED_LEN,
            explicit_nonce_len: GCM_EXPLICIT_LEN,
        }
    }

    fn extract_keys(
        &self,
        _key: AeadKey,
        _iv: &[u8],
        _explicit: &[u8],
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Err(UnsupportedOperationError)
    }
}

/// The TLS 1.2 ChaCha20-Poly1305 record cipher (RFC 7905).
pub struct Tls12ChaCha;

pub static TLS12_CHACHA20_POLY1305: Tls12ChaCha = Tls12ChaCha;

impl Tls12AeadAlgorithm for Tls12ChaCha {
    fn encrypter(&self, key: AeadKey, iv: &[u8], _extra: &[u8]) -> Box<dyn MessageEncrypter> {
        Box::new(Tls12Cipher::<ChaCha20Poly1305> {
            aead: new_cipher(&key),
            iv: Iv::copy(iv),
            explicit: false,
        })
    }

    fn decrypter(&self, key: AeadKey, iv: &[u8]) -> Box<dyn MessageDecrypter> {
        Box::new(Tls12Cipher::<ChaCha20Poly1305> {
            aead: new_cipher(&key),
            iv: Iv::copy(iv),
            explicit: false,
        })
    }

    fn key_block_shape(&self) -> KeyBlockShape {
        KeyBlockShape {
            enc_key_len: 32,
            fixed_iv_len: NONCE_LEN,
            explicit_nonce_len: 0,
        }
    }

    fn extract_keys(
        &self,
        _key: AeadKey,
        _iv: &[u8],
        _explicit: &[u8],
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Err(UnsupportedOperationError)
    }
}

/// A TLS 1.2 record cipher; `explicit`: the nonce's last 8 bytes travel before the ciphertext
/// (GCM), else the nonce is implicit (ChaCha20-Poly1305).
struct Tls12Cipher<A> {
    aead: A,
    iv: Iv,
    explicit: bool,
}

impl<A: Cipher> Tls12Cipher<A> {
    fn explicit_len(&self) -> usize {
        if self.explicit {
            GCM_EXPLICIT_LEN
        } else {
            0
        }
    }
}

impl<A: Cipher> MessageEncrypter for Tls12Cipher<A> {
    fn encrypt(
        &mut self,
        m: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total_len = self.encrypted_payload_len(m.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        let seq_nonce = SeqNonce::new(&self.iv, seq).0;
        let skip = self.explicit_len();
        payload.extend_from_slice(&seq_nonce[NONCE_LEN - skip..]);
        payload.extend_from_chunks(&m.payload);
        let aad = make_tls12_aad(seq, m.typ, m.version, m.payload.len());
        let tag = self
            .aead
            .encrypt_inout_detached(
                &nonce::<A>(&seq_nonce),
                &aad,
                (&mut payload.as_mut()[skip..]).into(),
            )
            .map_err(|_| Error::EncryptError)?;
        payload.extend_from_slice(&tag);
        Ok(OutboundOpaqueMessage::new(m.typ, m.version, payload))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + self.explicit_len() + TAG_LEN
    }
}

impl<A: Cipher> MessageDecrypter for Tls12Cipher<A> {
    fn decrypt<'a>(
        &mut self,
        mut m: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let skip = self.explicit_len();
        let len = m.payload.len();
        let text = len.checked_sub(skip + TAG_LEN).ok_or(Error::DecryptError)?;
        let mut full = SeqNonce::new(&self.iv, seq).0;
        if self.explicit {
            full[GCM_FIXED_LEN..].copy_from_slice(&m.payload[..GCM_EXPLICIT_LEN]);
        }
        let aad = make_tls12_aad(seq, m.typ, m.version, text);
        let (msg, tag) = m.payload[skip..].split_at_mut(text);
        let tag = Tag::<A>::try_from(&*tag).map_err(|_| Error::DecryptError)?;
        self.aead
            .decrypt_inout_detached(&nonce::<A>(&full), &aad, msg.into(), &tag)
            .map_err(|_| Error::DecryptError)?;
        Ok(m.into_plain_message_range(skip..skip + text))
    }
}
