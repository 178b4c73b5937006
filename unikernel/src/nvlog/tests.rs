//! The log over host memory: commit, recovery, torn records, a torn superblock, a full log.

use alloc::boxed::Box;
use alloc::vec::Vec;

use hpdi::{BufferPool, DmaMemory, HostMemory};

use super::format::{RecordKind, PAGE};
use super::log::{Nvlog, OpenReport};

/// A pool whose region 1 is `pages` pages of `mem` (kept by the test across "reboots").
fn pool_over(mem: &[u8]) -> BufferPool {
    let mut pool = BufferPool::host(4, 4096).unwrap();
    // Copy in/out around each "boot": the region's contents are what persists.
    let m = HostMemory::new(mem.len());
    let mut boxed: Box<dyn DmaMemory> = Box::new(m);
    boxed.bytes_mut().copy_from_slice(mem);
    pool.add_region(boxed, PAGE).unwrap();
    pool
}

fn save(pool: &BufferPool, pages: usize, mem: &mut [u8]) {
    for i in 0..pages {
        let b = hpdi::BufId::new(1, i as u32);
        mem[i * PAGE..(i + 1) * PAGE].copy_from_slice(pool.buf(b).unwrap());
    }
}

fn write(log: &mut Nvlog, pool: &mut BufferPool, disk: u64, offset: u64, data: &[u8]) -> u64 {
    let r = log.reserve(data.len() as u32).expect("room in the log");
    let mut at = 0;
    for seg in log.segments(r.page, 0, data.len() as u32).as_slice() {
        pool.slice_mut(seg)
            .unwrap()
            .copy_from_slice(&data[at..at + seg.len as usize]);
        at += seg.len as usize;
    }
    log.commit(pool, r, disk, offset)
}

fn read(log: &Nvlog, pool: &BufferPool, page: u64, len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for seg in log.segments(page, 0, len).as_slice() {
        out.extend_from_slice(pool.slice(seg).unwrap());
    }
    out
}

const PAGES: usize = 256;

fn boot(mem: &mut [u8]) -> (Nvlog, BufferPool, OpenReport) {
    let mut pool = pool_over(mem);
    let (log, report) = Nvlog::open(&mut pool, 1, 0x1234).unwrap();
    (log, pool, report)
}

#[test]
fn records_survive_a_restart_until_retired() {
    let mut mem = alloc::vec![0u8; PAGES * PAGE];
    let (mut log, mut pool, rep) = boot(&mut mem);
    assert!(rep.formatted);
    let a: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
    let b = alloc::vec![0x5au8; 512];
    assert_eq!(write(&mut log, &mut pool, 7, 4096, &a), 1);
    assert_eq!(write(&mut log, &mut pool, 7, 0, &b), 2);
    save(&pool, PAGES, &mut mem);

    let (log, pool, rep) = boot(&mut mem);
    assert_eq!(
        rep,
        OpenReport {
            formatted: false,
            pending: 2,
            torn: None,
            retired_seq: 0
        }
    );
    let l = log.live();
    assert_eq!(
        (l[0].seq, l[0].disk_id, l[0].offset, l[0].length),
        (1, 7, 4096, 8192)
    );
    assert_eq!(read(&log, &pool, l[0].page, 8192), a);
    assert_eq!(read(&log, &pool, l[1].page, 512), b);

    // New records may be logged while the found ones wait for replay (a failing disk can
    // hold a replay up for long): they take pages no found record uses.
    let (mut log, mut pool, _) = boot(&mut mem);
    let c = alloc::vec![0x77u8; 4096];
    assert_eq!(write(&mut log, &mut pool, 7, 0, &c), 3);
    let l: Vec<_> = log.live().iter().copied().collect();
    assert_eq!(read(&log, &pool, l[0].page, 8192), a, "record 1 intact");
    assert_eq!(read(&log, &pool, l[1].page, 512), b, "record 2 intact");
    assert_eq!(read(&log, &pool, l[2].page, 4096), c);
    // Replay retires them; the next boot finds only the new one, then nothing.
    log.retire(&mut pool, 2);
    save(&pool, PAGES, &mut mem);
    let (mut log, mut pool, rep) = boot(&mut mem);
    assert_eq!((rep.pending, rep.retired_seq), (1, 2));
    assert_eq!(read(&log, &pool, log.live()[0].page, 4096), c);
    log.retire(&mut pool, 3);
    save(&pool, PAGES, &mut mem);
    let (log, _, rep) = boot(&mut mem);
    assert_eq!((rep.pending, rep.retired_seq, log.next_seq()), (0, 3, 4));
}

#[test]
fn a_torn_record_ends_replay() {
    let mut mem = alloc::vec![0u8; PAGES * PAGE];
    let (mut log, mut pool, _) = boot(&mut mem);
    let pages: Vec<u64> = (0..4)
        .map(|i| {
            write(
                &mut log,
                &mut pool,
                1,
                i * 4096,
                &alloc::vec![i as u8 + 1; 4096],
            );
            log.live().back().unwrap().page
        })
        .collect();
    save(&pool, PAGES, &mut mem);
    // Corrupt one byte of record 3's payload (data pages start after page 0 and the headers).
    let data_start = PAGES - log.data_pages() as usize;
    mem[(data_start + pages[2] as usize) * PAGE + 100] ^= 0xff;
    let (log, _, rep) = boot(&mut mem);
    assert_eq!(rep.pending, 2);
    assert_eq!(rep.torn, Some(3));
    assert_eq!(log.live().len(), 2);
}

#[test]
fn a_torn_superblock_falls_back_to_the_other_copy() {
    let mut mem = alloc::vec![0u8; PAGES * PAGE];
    let (mut log, mut pool, _) = boot(&mut mem);
    write(&mut log, &mut pool, 1, 0, &[1u8; 512]);
    log.retire(&mut pool, 1); // writes one copy
    write(&mut log, &mut pool, 1, 512, &[2u8; 512]);
    log.retire(&mut pool, 2); // writes the other copy
    write(&mut log, &mut pool, 1, 1024, &[3u8; 512]);
    save(&pool, PAGES, &mut mem);
    // Tear the newest copy (retired_seq 2): the older one (1) is used, and records 2 and 3
    // replay (2 is rewritten to disk: replay is idempotent).
    let newest = if mem[40..48] == 2u64.to_le_bytes() {
        0
    } else {
        2048
    };
    mem[newest + 10] ^= 0xff;
    let (log, _, rep) = boot(&mut mem);
    assert!(!rep.formatted);
    assert_eq!(rep.retired_seq, 1);
    assert_eq!(log.live().iter().map(|l| l.seq).collect::<Vec<_>>(), [2, 3]);
}

#[test]
fn a_full_log_refuses_until_retired_and_wraps() {
    let mut mem = alloc::vec![0u8; PAGES * PAGE];
    let (mut log, mut pool, _) = boot(&mut mem);
    let cap = log.data_pages();
    let mut n = 0u64;
    while log
        .reserve(4096)
        .map(|r| log.commit(&mut pool, r, 1, 0))
        .is_some()
    {
        n += 1;
    }
    assert_eq!(n, cap, "every data page used once");
    assert!(log.reserve(512).is_none(), "full: the writer waits");
    // Retire half; wrap around several times with verified contents.
    log.retire(&mut pool, n / 2);
    for round in 0..5 * cap {
        let data = alloc::vec![(round % 251) as u8; 4096];
        let seq = write(&mut log, &mut pool, 2, round * 4096, &data);
        let last = *log.live().back().unwrap();
        assert_eq!(read(&log, &pool, last.page, 4096), data);
        let oldest = log.live().front().unwrap().seq;
        log.retire(&mut pool, oldest);
        assert!(seq > oldest);
    }
    save(&pool, PAGES, &mut mem);
    let (log2, _, rep) = boot(&mut mem);
    assert_eq!(rep.pending, log.live().len());
    assert_eq!(rep.torn, None);
    let (a, b) = (*log2.live().back().unwrap(), *log.live().back().unwrap());
    assert_eq!(
        (a.seq, a.offset, a.page),
        (b.seq, b.offset, b.page % log.data_pages())
    );
    assert!(
        Nvlog::open(&mut BufferPool::host(4, 4096).unwrap(), 0, 1).is_err(),
        "region 0 is 4 KiB pages but tiny"
    );
}

#[test]
fn zero_and_trim_records_take_no_pages_survive_a_restart_and_keep_their_order() {
    let mut mem = alloc::vec![0u8; PAGES * PAGE];
    let (mut log, mut pool, _) = boot(&mut mem);
    let free = log.free_pages();
    write(&mut log, &mut pool, 7, 0, &[0xdd; 4096]);
    let z = log
        .commit_range(&mut pool, RecordKind::Zero, 7, 0, 4096)
        .unwrap();
    let t = log
        .commit_range(&mut pool, RecordKind::Trim, 7, 1 << 20, 32 << 20)
        .unwrap();
    assert_eq!((z, t), (2, 3));
    assert_eq!(
        log.free_pages(),
        free - 1,
        "only the data record takes a page"
    );
    assert!(
        log.commit_range(&mut pool, RecordKind::Data, 7, 0, 512)
            .is_none(),
        "data records need a reservation"
    );
    assert!(log
        .commit_range(&mut pool, RecordKind::Zero, 7, 0, (32 << 20) + 1)
        .is_none());
    save(&pool, PAGES, &mut mem);
    let (mut log, mut pool, rep) = boot(&mut mem);
    assert_eq!((rep.pending, rep.torn), (3, None));
    let kinds: Vec<_> = log
        .live()
        .iter()
        .map(|l| (l.seq, l.kind, l.length))
        .collect();
    assert_eq!(
        kinds,
        [
            (1, RecordKind::Data, 4096),
            (2, RecordKind::Zero, 4096),
            (3, RecordKind::Trim, 32 << 20)
        ]
    );
    assert_eq!(
        log.commit_range(&mut pool, RecordKind::Zero, 7, 0, 512),
        Some(4),
        "new records while the found ones wait for replay"
    );
    log.retire(&mut pool, 4);
    assert!(log.live().is_empty());
}

#[test]
fn a_record_with_unknown_flags_ends_replay() {
    let mut mem = alloc::vec![0u8; PAGES * PAGE];
    let (mut log, mut pool, _) = boot(&mut mem);
    write(&mut log, &mut pool, 1, 0, &[1; 512]);
    log.commit_range(&mut pool, RecordKind::Zero, 1, 0, 512)
        .unwrap();
    save(&pool, PAGES, &mut mem);
    // Header slot 1 (the zero record): flags at byte 4 of its 64 bytes, in page 1.
    mem[PAGE + 64 + 4] = 0x80;
    let (log, _, rep) = boot(&mut mem);
    assert_eq!((rep.pending, rep.torn), (1, Some(2)));
    assert_eq!(log.live().len(), 1);
}

#[test]
fn records_found_at_open_keep_their_pages_while_new_ones_wrap_around_them() {
    // Fill most of the ring so the found records wrap, reopen, then write more than a ring's
    // worth while the oldest found record is still live: no found payload may be overwritten.
    let mut mem = alloc::vec![0u8; PAGES * PAGE];
    let (mut log, mut pool, _) = boot(&mut mem);
    let cap = log.data_pages();
    for i in 0..cap - 3 {
        write(&mut log, &mut pool, 1, i * 4096, &alloc::vec![1u8; 4096]);
    }
    log.retire(&mut pool, cap - 6);
    for i in 0..5u64 {
        let data = alloc::vec![(i + 10) as u8; 4096];
        write(&mut log, &mut pool, 1, i * 4096, &data);
    }
    save(&pool, PAGES, &mut mem);
    let (mut log, mut pool, rep) = boot(&mut mem);
    let found: Vec<_> = log.live().iter().copied().collect();
    assert_eq!(rep.pending, found.len());
    let contents: Vec<Vec<u8>> = found
        .iter()
        .map(|l| read(&log, &pool, l.page, 4096))
        .collect();
    let mut n = 0;
    while let Some(r) = log.reserve(4096) {
        log.commit(&mut pool, r, 1, 0);
        n += 1;
        assert!(n <= cap, "more pages handed out than the ring has");
    }
    assert_eq!(
        n,
        cap - found.len() as u64,
        "every page the found records do not use is handed out"
    );
    for (l, want) in found.iter().zip(&contents) {
        assert_eq!(
            &read(&log, &pool, l.page, 4096),
            want,
            "record {} overwritten",
            l.seq
        );
    }
    // Retiring the found records frees their pages for new ones.
    log.retire(&mut pool, found.last().unwrap().seq);
    assert!(log.reserve(4096).is_some());
}
