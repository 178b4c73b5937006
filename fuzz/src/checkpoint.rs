//! `checkpoint`: the configuration checkpoint's slot decoder
//! (`tandem_formats::checkpoint::Checkpoint::decode`), the choice between two slots
//! (`newest`), and the validation of a decoded checkpoint against hardware (`validate`,
//! with a probe whose answers the fuzzer picks).
//!
//! Input: `[mode, probe seed, slot A..., slot B...]`: the rest is cut in two slots at a point
//! the mode picks. Mode bit 0 recomputes slot A's checksum (and bit 1 its body length) so
//! the fuzzer gets past the CRC to the record parsing.
//!
//! Checked, besides no panic: a decoded checkpoint holds at most the record limits and
//! encodes back to a slot that decodes to the same checkpoint; `newest` picks the valid slot
//! with the higher generation and gives a reason for each slot it refused.

use tandem_formats::checkpoint::{
    newest, validate, Checkpoint, DeviceRecord, Header, NetRecord, Probe, MAX_DEVICES, MAX_EXPORTS,
};
use tandem_formats::nvlog::crc32c;
use zerocopy::{FromBytes, IntoBytes};

use crate::{Input, Rng};

struct FuzzProbe(Rng);

impl Probe for FuzzProbe {
    fn pci_ids(&mut self, _: u16, _: u8, _: u8, _: u8) -> Option<(u16, u16)> {
        let r = self.0.next_u64();
        (!r.is_multiple_of(4)).then_some(((r >> 8) as u16 % 2 + 0x1af4, (r >> 24) as u16))
    }

    fn mmio_device_id(&mut self, _: u64) -> Option<u32> {
        let r = self.0.next_u64();
        (!r.is_multiple_of(4)).then_some((r >> 8) as u32 % 4)
    }

    fn disk(&mut self, _: usize, record: &DeviceRecord) -> Option<([u8; 16], u64)> {
        let r = self.0.next_u64();
        match r % 4 {
            0 => None,
            1 => Some(([0; 16], record.capacity)),
            _ => Some((record.label, record.capacity ^ (r >> 60))),
        }
    }
}

/// Makes `slot`'s header checksum (and, if asked, its body length) right.
fn fix_up(slot: &mut [u8], length: bool) {
    let Ok((mut h, _)) = Header::read_from_prefix(slot) else {
        return;
    };
    let hdr = core::mem::size_of::<Header>();
    if length {
        let (nd, ne) = (usize::from(h.devices), usize::from(h.exports));
        h.body_len = (core::mem::size_of::<NetRecord>() + nd * 96 + ne * 64) as u32;
    }
    let end = (hdr + h.body_len as usize).min(slot.len());
    h.crc = 0;
    h.crc = crc32c(&[h.as_bytes(), &slot[hdr..end]]);
    slot[..hdr].copy_from_slice(h.as_bytes());
}

fn check(cp: &Checkpoint) {
    assert!(cp.devices.len() <= MAX_DEVICES && cp.exports.len() <= MAX_EXPORTS);
    let image = cp.encode().expect("a decoded checkpoint encodes");
    assert_eq!(
        Checkpoint::decode(&image).as_ref(),
        Ok(cp),
        "encode/decode round trip"
    );
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let seed = inp.u8();
    let rest = inp.rest();
    let cut = match mode >> 2 {
        0 => rest.len(),
        n => (usize::from(n) * 1024).min(rest.len()),
    };
    let mut a = rest[..cut].to_vec();
    let b = &rest[cut..];
    if mode & 1 != 0 {
        fix_up(&mut a, mode & 2 != 0);
    }

    let decoded = [Checkpoint::decode(&a), Checkpoint::decode(b)];
    for d in &decoded {
        match d {
            Ok(cp) => {
                check(cp);
                let mut probe = FuzzProbe(Rng::new(u64::from(seed)));
                if let Err(m) = validate(cp, &mut probe) {
                    let _ = m.to_string();
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    let (best, errs) = newest([&a, b]);
    for i in 0..2 {
        assert_eq!(errs[i].is_some(), decoded[i].is_err(), "slot {i}");
    }
    match best {
        None => assert!(decoded.iter().all(Result::is_err)),
        Some((i, cp)) => {
            assert_eq!(decoded[i].as_ref(), Ok(&cp));
            if let Ok(other) = &decoded[1 - i] {
                assert!(
                    cp.generation > other.generation
                        || (i == 0 && cp.generation == other.generation)
                );
            }
        }
    }
}
