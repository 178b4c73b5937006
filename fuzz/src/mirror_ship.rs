//! `mirror_ship`: the mirror sender (`tandem_formats::mirror_ship::Shipper`) over whatever a
//! guest leaves in its NVRAM region. The guest writes that region and the sender runs on the
//! host, so a broken or hostile guest must not make the host's daemon panic, loop or ship a
//! write outside the copy.
//!
//! Input: `[mode, pages, mutate_at u16, rest...]`: a region of `pages % 48 + 17` pages filled
//! from `rest` (cycled). With mode bit 0 it gets a valid superblock and a run of record headers
//! with valid checksums over whatever the data pages hold (fields from `rest`), so the fuzzer
//! reaches the shipping rules and not only the checks. Two passes run, with one byte changed
//! between them (at `mutate_at`). Checked, besides no panic: every write lies inside the
//! region; the commit number never goes down; and after each pass, the copy built from the
//! writes recovers, with the shared recovery walk, every record up to the commit that it
//! does not count as retired.

use tandem_formats::mirror_ship::Shipper;
use tandem_formats::nvlog::{RecordHeader, Superblock, RECORD_MAGIC, SUPER_MAGIC, VERSION};
use tandem_formats::nvlog_region::{newest_superblock, record_crc, recover, Geometry};
use zerocopy::{FromBytes, IntoBytes};

/// Runs one region.
pub fn run(data: &[u8]) {
    let [mode, pages, m0, m1, rest @ ..] = data else {
        return;
    };
    if rest.is_empty() {
        return;
    }
    let pages = usize::from(*pages) % 48 + 17;
    let mut region: Vec<u8> = rest.iter().copied().cycle().take(pages * 4096).collect();
    if mode & 1 == 1 {
        build_log(&mut region, rest);
    }
    let mut shipper = Shipper::new();
    let mut copy = vec![0u8; region.len()];
    let mut last = 0;
    for round in 0..2 {
        if round == 1 {
            let at = usize::from(u16::from_le_bytes([*m0, *m1])) * 7 % region.len();
            region[at] ^= 0x5a;
        }
        let plan = shipper.pass(&region[..], || {
            newest_superblock(&region[..]).map(|(_, s)| s)
        });
        for w in &plan.writes {
            let at = usize::try_from(w.at).expect("offset");
            assert!(at + w.bytes.len() <= copy.len(), "a write past the copy");
            copy[at..at + w.bytes.len()].copy_from_slice(&w.bytes);
        }
        if let Some(c) = plan.commit {
            assert!(c >= last, "the commit went down");
            last = c;
            let (sb, walk) = recover(&copy[..]).expect("a committed copy holds a log");
            let found = walk.records.last().map_or(sb.retired_seq, |f| f.header.seq);
            assert!(
                found >= c,
                "the copy recovers to {found}, the commit says {c}"
            );
        }
    }
}

/// A valid superblock and a run of valid record headers (fields from `seed`).
fn build_log(region: &mut [u8], seed: &[u8]) {
    let pages = (region.len() / 4096) as u64;
    let Some(g) = Geometry::of(pages) else { return };
    let byte = |i: usize| u64::from(seed[i % seed.len()]);
    let retired = byte(0) * 3;
    let tail = byte(1) % g.slots;
    let mut sb = Superblock::read_from_bytes(&[0u8; 72]).expect("72 bytes");
    sb.magic = SUPER_MAGIC;
    sb.version = VERSION;
    sb.pages = pages as u32;
    sb.header_pages = g.header_pages as u32;
    sb.data_pages = g.data_pages as u32;
    sb.log_id = 0x7a11;
    sb.retired_seq = retired;
    sb.tail_slot = tail as u32;
    sb.seal();
    region[..72].copy_from_slice(sb.as_bytes());
    let mut page = byte(2) % g.data_pages;
    for i in 0..(byte(3) % 24) as usize {
        let flags = [0u32, 1, 2][(byte(4 + i) % 3) as usize];
        let length = ((byte(5 + i) + 1) * 700) as u32;
        let mut h = RecordHeader {
            magic: RECORD_MAGIC,
            flags,
            seq: retired + 1 + i as u64,
            disk_id: 1,
            offset: byte(6 + i) * 4096,
            length,
            page: page as u32,
            log_id: 0x7a11,
            ..RecordHeader::default()
        };
        page = (page + u64::from(h.pages())) % g.data_pages;
        h.crc = record_crc(&region[..], &g, &h).unwrap_or(0);
        let at = g.slot_offset(tail + i as u64) as usize;
        region[at..at + 64].copy_from_slice(h.as_bytes());
    }
}
