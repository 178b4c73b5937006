//! `nvlog_open`: the NVLOG's scan and recovery at open (`unikernel::nvlog::log::Nvlog::open`)
//! over a region whose bytes come from the fuzzer, then what replay does with what it found
//! (read every live record's payload through `segments`, retire them), then a new write and
//! a second open.
//!
//! Uses only the log's public API (`open`, `live`, `segments`, `retire`, `reserve`,
//! `commit`, `commit_range`, `data_pages`, `RecordKind::pages`) and, to let the fuzzer past
//! the superblock's checksum, the superblock's own `seal`: no record layout, so the target
//! follows format changes.
//!
//! Input: `[config, pages, base records..., patches...]`. The region (`pages` 4 KiB pages)
//! starts as zeroes or as a log holding a few records written through the API (config bits
//! 0-1), then each patch `[offset (3 bytes), length, bytes...]` overwrites part of it. Config
//! bit 2 re-seals both superblock copies after patching.
//!
//! Checked, besides no panic and no hang: what open reports matches `live()`; live records
//! have consecutive sequence numbers after the retired one, sane lengths, and payloads that
//! `segments` covers exactly with pool slices; with no patch, open finds exactly the records
//! written and not retired, byte for byte; after replay and retirement a new record can be
//! written and is found, intact, by the next open.

use hpdi::{BufId, BufferPool, DmaMemory, HostMemory};
use tandem_formats::nvlog::{RecordKind, Superblock, PAGE};
use unikernel::nvlog::log::{Live, Nvlog, MAX_RECORD};
use zerocopy::{FromBytes, IntoBytes};

use crate::Input;

const REGION: u8 = 1;

fn pool_over(mem: &[u8]) -> BufferPool {
    let mut pool = BufferPool::host(1, PAGE).unwrap();
    let mut m: Box<dyn DmaMemory> = Box::new(HostMemory::new(mem.len()));
    m.bytes_mut().copy_from_slice(mem);
    assert_eq!(pool.add_region(m, PAGE).unwrap(), REGION);
    pool
}

fn snapshot(pool: &BufferPool, pages: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pages * PAGE);
    for i in 0..pages {
        out.extend_from_slice(pool.buf(BufId::new(REGION, i as u32)).unwrap());
    }
    out
}

/// A record's payload, read as replay reads it (pieces of at most 16 pages); none for zero
/// and trim records.
fn payload(log: &Nvlog, pool: &BufferPool, l: &Live) -> Vec<u8> {
    if l.kind.pages(l.length) == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(l.length as usize);
    let mut at = 0u32;
    while at < l.length {
        let want = (l.length - at).min(16 * PAGE as u32);
        let sg = log.segments(l.page, at, want);
        let mut got = 0u32;
        for seg in sg.as_slice() {
            let b = pool.slice(seg).expect("segment outside the pool");
            assert_eq!(b.len(), seg.len as usize);
            out.extend_from_slice(b);
            got += seg.len;
        }
        assert!(
            got > 0 && got <= want,
            "segments covered {got} of {want} bytes"
        );
        at += got;
    }
    out
}

/// Writes one record through the API; returns what `live()` then shows for it, or `None`
/// when the log is full.
fn write(
    log: &mut Nvlog,
    pool: &mut BufferPool,
    disk: u64,
    offset: u64,
    data: &[u8],
) -> Option<Live> {
    let r = log.reserve(data.len() as u32)?;
    let mut at = 0;
    for seg in log.segments(r.page, 0, data.len() as u32).as_slice() {
        pool.slice_mut(seg)
            .unwrap()
            .copy_from_slice(&data[at..at + seg.len as usize]);
        at += seg.len as usize;
    }
    assert_eq!(at, data.len());
    let seq = log.commit(pool, r, disk, offset);
    let l = log.live().back().filter(|l| l.seq == seq);
    Some(*l.expect("committed record is live"))
}

/// Logs a zero or trim record (no payload).
fn write_range(
    log: &mut Nvlog,
    pool: &mut BufferPool,
    kind: RecordKind,
    disk: u64,
    offset: u64,
    length: u32,
) -> Option<Live> {
    let seq = log.commit_range(pool, kind, disk, offset, length)?;
    let l = log.live().back().filter(|l| l.seq == seq);
    Some(*l.expect("committed record is live"))
}

fn fill(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 ^ seq.wrapping_mul(131)) as u8)
        .collect()
}

/// The checks that hold for any region; returns the records and their payloads.
fn check_open(
    log: &Nvlog,
    pool: &BufferPool,
    pending: usize,
    retired: u64,
) -> Vec<(Live, Vec<u8>)> {
    assert_eq!(log.live().len(), pending);
    assert_eq!(log.retired_seq(), retired);
    let mut expect = retired.wrapping_add(1);
    let mut out = Vec::new();
    for l in log.live() {
        assert_eq!(l.seq, expect, "live records out of sequence");
        expect = expect.wrapping_add(1);
        assert!(l.length > 0 && l.length <= MAX_RECORD);
        // Open numbers found pages on one line starting in the ring (at its widest gap),
        // so a page lies in the ring's first two turns and all lie within one turn.
        assert!(
            l.page < 2 * log.data_pages(),
            "page {} off the line",
            l.page
        );
        let p = payload(log, pool, l);
        let bytes = if l.kind.pages(l.length) > 0 {
            l.length
        } else {
            0
        };
        assert_eq!(p.len(), bytes as usize);
        out.push((*l, p));
    }
    let pages = log.live().iter().map(|l| l.page);
    if let (Some(lo), Some(hi)) = (pages.clone().min(), pages.max()) {
        assert!(
            hi - lo < log.data_pages(),
            "found pages span more than the ring"
        );
    }
    out
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let cfg = inp.u8();
    let pages = 16 + usize::from(inp.u8() % 113);
    let (mut region, written) = base(cfg, &mut inp, pages);
    let patched = patch(cfg, &mut inp, &mut region);

    // Open, check, replay, retire.
    let mut pool = pool_over(&region);
    let Ok((mut log, report)) = Nvlog::open(&mut pool, REGION, 0x5678) else {
        return;
    };
    let found = check_open(&log, &pool, report.pending, report.retired_seq);
    if report.formatted {
        assert!(found.is_empty());
    }
    if !patched {
        assert_eq!(report.torn, None);
        let want: Vec<_> = written
            .iter()
            .map(|(l, d)| (l.seq, l.kind, l.disk_id, l.offset, l.length, d))
            .collect();
        let got: Vec<_> = found
            .iter()
            .map(|(l, d)| (l.seq, l.kind, l.disk_id, l.offset, l.length, d))
            .collect();
        assert_eq!(got, want, "open did not find the records written");
    }
    if let Some((last, _)) = found.last() {
        log.retire(&mut pool, last.seq);
        assert!(log.live().is_empty());
    }
    write_and_reopen(log, pool, pages);
}

/// The base region of `pages` pages: zeroes, or records written through the API (some
/// retired, by config bits 0-1); returns it with the records still live and their payloads.
fn base(cfg: u8, inp: &mut Input, pages: usize) -> (Vec<u8>, Vec<(Live, Vec<u8>)>) {
    let region = vec![0u8; pages * PAGE];
    let mut written: Vec<(Live, Vec<u8>)> = Vec::new();
    if cfg & 3 == 0 {
        return (region, written);
    }
    let mut pool = pool_over(&region);
    let Ok((mut log, _)) = Nvlog::open(&mut pool, REGION, 0x1234) else {
        return (region, written);
    };
    let n = 1 + inp.u8() % 6;
    for _ in 0..n {
        let len = inp.u16();
        let b = inp.u8();
        let (disk, offset) = (u64::from(b % 3), u64::from(inp.u16()) * 512);
        let l = match (b >> 4) % 4 {
            2 | 3 => {
                let kind = [RecordKind::Zero, RecordKind::Trim][usize::from(b >> 4) % 2];
                let length = (u32::from(len) + 1) * 512;
                write_range(&mut log, &mut pool, kind, disk, offset, length)
                    .map(|l| (l, Vec::new()))
            }
            _ => {
                let d = fill(log.next_seq(), 1 + usize::from(len) % (3 * PAGE));
                write(&mut log, &mut pool, disk, offset, &d).map(|l| (l, d))
            }
        };
        // A full log refuses more: what was written stays.
        let Some(l) = l else { break };
        written.push(l);
    }
    if cfg & 3 == 2 && !written.is_empty() {
        let upto = written[usize::from(inp.u8()) % written.len()].0.seq;
        log.retire(&mut pool, upto);
        written.retain(|(l, _)| l.seq > upto);
    }
    (snapshot(&pool, pages), written)
}

/// The fuzzer's bytes over the region, then (config bit 2) both superblocks re-sealed;
/// true when anything changed.
fn patch(cfg: u8, inp: &mut Input, region: &mut [u8]) -> bool {
    let mut patched = false;
    while inp.len() >= 4 {
        let b = inp.take(3);
        let at =
            (usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16) % region.len();
        let len = usize::from(inp.u8());
        let bytes = inp.take(len);
        let n = bytes.len().min(region.len() - at);
        region[at..at + n].copy_from_slice(&bytes[..n]);
        patched |= n > 0;
    }
    if cfg & 4 != 0 {
        for at in [0usize, 2048] {
            if let Ok((mut sb, _)) = Superblock::read_from_prefix(&region[at..]) {
                sb.seal();
                let b = sb.as_bytes();
                region[at..at + b.len()].copy_from_slice(b);
                patched = true;
            }
        }
    }
    patched
}

/// A new record after replay, found intact by the next open.
fn write_and_reopen(mut log: Nvlog, mut pool: BufferPool, pages: usize) {
    let d = fill(log.next_seq(), 1 + (pages * 37) % (2 * PAGE));
    let new = write(&mut log, &mut pool, 9, 4096, &d).expect("room in a log with nothing live");
    let zero = write_range(&mut log, &mut pool, RecordKind::Zero, 9, 0, 8192)
        .expect("a header slot in a log with one record");
    let region = snapshot(&pool, pages);
    let mut pool = pool_over(&region);
    let (log, report) = Nvlog::open(&mut pool, REGION, 0x9abc).expect("reopen");
    assert!(!report.formatted, "the log was formatted again");
    let found = check_open(&log, &pool, report.pending, report.retired_seq);
    assert!(
        found.len() >= 2,
        "the new records are not live after reopening"
    );
    // Open numbers pages on one line from the ring's widest gap: a payload's page is the
    // same modulo the ring, and a record without payload has no page of its own.
    let key = |l: &Live| (l.seq, l.kind, l.disk_id, l.offset, l.length);
    let ring = log.data_pages();
    assert_eq!(key(&found[0].0), key(&new), "the new data record changed");
    assert_eq!(
        found[0].0.page % ring,
        new.page % ring,
        "the new data record moved"
    );
    assert_eq!(found[0].1, d, "the new data record's payload changed");
    assert_eq!(key(&found[1].0), key(&zero), "the new zero record changed");
    assert!(found[1].1.is_empty(), "a zero record with payload");
}
