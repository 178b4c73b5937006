//! Request parsing, well-formed and malformed, with chains built in guest memory by
//! virtio-queue's `MockSplitQueue` (descriptor table, avail ring, indirect tables) and read
//! back through the same `DescriptorChain` iterator the daemon uses.

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

/// 1 MiB of guest memory at 0 (the queue's tables live at the start).
fn mem() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

const HDR: u64 = 0x4_0000;
const DATA: u64 = 0x5_0000;
const STATUS: u64 = 0x8_0000;
const END: u64 = 0x10_0000;

/// A 1 MiB disk.
fn lim() -> Limits {
    Limits::new(2048, false)
}

fn header(m: &GuestMemoryMmap<()>, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(at)).unwrap();
}

fn raw(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// Build `descs` as one chain in a queue and parse it like the daemon does.
fn run(
    m: &GuestMemoryMmap<()>,
    descs: &[RawDescriptor],
    lim: &Limits,
) -> Result<Request, Rejected> {
    let q = MockSplitQueue::new(m, 64);
    let chain = q.build_desc_chain(descs).unwrap();
    let d = collect_chain(chain, lim.max_descriptors).map_err(|why| Rejected {
        status_at: None,
        status: Status::IoErr,
        why,
    })?;
    parse(&d, m, lim)
}

fn status_of(r: Result<Request, Rejected>) -> (Status, Option<GuestAddress>, String) {
    match r {
        Ok(req) => (Status::Ok, Some(req.status), String::new()),
        Err(rej) => (rej.status, rej.status_at, rej.why.to_string()),
    }
}

#[test]
fn read_write_flush_getid() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 8);
    let r = run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 4096, true),
            raw(STATUS, 1, true),
        ],
        &lim(),
    )
    .unwrap();
    assert_eq!(
        r.op,
        Op::Read {
            offset: 4096,
            len: 4096,
            segs: vec![Seg {
                addr: DATA,
                len: 4096
            }]
        }
    );
    assert_eq!(r.status, GuestAddress(STATUS));
    assert_eq!(r.used_len_ok(), 4097);

    header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let r = run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 512, false),
            raw(DATA + 0x1000, 1024, false),
            raw(STATUS, 1, true),
        ],
        &lim(),
    )
    .unwrap();
    match &r.op {
        Op::Write { offset, len, segs } => {
            assert_eq!((*offset, *len, segs.len()), (0, 1536, 2));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.used_len_ok(), 1);

    header(&m, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let r = run(&m, &[raw(HDR, 16, false), raw(STATUS, 1, true)], &lim()).unwrap();
    assert_eq!(r.op, Op::Flush);

    header(&m, HDR, VIRTIO_BLK_T_GET_ID, 0);
    let r = run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 32, true),
            raw(STATUS, 1, true),
        ],
        &lim(),
    )
    .unwrap();
    assert_eq!(
        r.op,
        Op::GetId {
            segs: vec![Seg {
                addr: DATA,
                len: 20
            }]
        }
    );
    assert_eq!(r.used_len_ok(), 21);
}

/// Any layout: the header split over two descriptors, the status byte sharing the read
/// buffer's descriptor.
#[test]
fn any_layout() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 2);
    // Header bytes 0..10 at HDR, 10..16 at DATA - 10 + ... : write them separately.
    let mut h = [0u8; 16];
    m.read_slice(&mut h, GuestAddress(HDR)).unwrap();
    m.write_slice(&h[..10], GuestAddress(0x6_0000)).unwrap();
    m.write_slice(&h[10..], GuestAddress(0x7_0000)).unwrap();
    let r = run(
        &m,
        &[
            raw(0x6_0000, 10, false),
            raw(0x7_0000, 6, false),
            raw(DATA, 1025, true),
        ],
        &lim(),
    )
    .unwrap();
    assert_eq!(
        r.op,
        Op::Read {
            offset: 1024,
            len: 1024,
            segs: vec![Seg {
                addr: DATA,
                len: 1024
            }]
        }
    );
    assert_eq!(r.status, GuestAddress(DATA + 1024));
}

#[test]
fn indirect_chain() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_OUT, 1);
    // An indirect table of three descriptors at 0x9_0000.
    let table = 0x9_0000u64;
    let entries = [
        SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1),
        SplitDescriptor::new(DATA, 512, VRING_DESC_F_NEXT as u16, 2),
        SplitDescriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    for (i, e) in entries.iter().enumerate() {
        m.write_obj(RawDescriptor::from(*e), GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    let q = MockSplitQueue::new(&m, 16);
    let head = RawDescriptor::from(SplitDescriptor::new(
        table,
        48,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ));
    let chain = q.build_desc_chain(&[head]).unwrap();
    let d = collect_chain(chain, 4096).unwrap();
    assert_eq!(d.len(), 3);
    let r = parse(&d, &m, &lim()).unwrap();
    assert!(
        matches!(
            r.op,
            Op::Write {
                offset: 512,
                len: 512,
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn too_few_descriptors() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    // Only a header: no status byte at all.
    let (s, at, why) = status_of(run(&m, &[raw(HDR, 16, false)], &lim()));
    assert_eq!((s, at), (Status::IoErr, None), "{why}");
    // Header and status, but a read needs a buffer.
    let (s, at, why) = status_of(run(
        &m,
        &[raw(HDR, 16, false), raw(STATUS, 1, true)],
        &lim(),
    ));
    assert_eq!((s, at), (Status::IoErr, Some(GuestAddress(STATUS))));
    assert!(why.contains("no payload"), "{why}");
    // No header: only a status.
    let (s, _, why) = status_of(run(&m, &[raw(STATUS, 1, true)], &lim()));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("header has 0"), "{why}");
    // An empty descriptor list.
    let r = parse(&[], &m, &lim()).unwrap_err();
    assert_eq!((r.status_at, r.used_len()), (None, 0));
}

#[test]
fn wrong_direction_flags() {
    let m = mem();
    // Read whose data buffer is device-readable.
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let (s, at, why) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 4096, false),
            raw(STATUS, 1, true),
        ],
        &lim(),
    ));
    assert_eq!((s, at), (Status::IoErr, Some(GuestAddress(STATUS))));
    assert!(why.contains("wrong direction"), "{why}");
    // Write whose data buffer is device-writable.
    header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let (s, _, why) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 4096, true),
            raw(STATUS, 1, true),
        ],
        &lim(),
    ));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("wrong direction"), "{why}");
    // A writable header: no readable bytes for it.
    let (s, _, why) = status_of(run(
        &m,
        &[
            raw(HDR, 16, true),
            raw(DATA, 4096, true),
            raw(STATUS, 1, true),
        ],
        &lim(),
    ));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("header has 0"), "{why}");
    // A readable descriptor after a writable one.
    let (s, _, why) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 512, true),
            raw(DATA + 0x1000, 512, false),
            raw(STATUS, 1, true),
        ],
        &lim(),
    ));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("readable descriptor after writable"), "{why}");
    // A readable status descriptor: nowhere to put the status.
    let (s, at, _) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 512, true),
            raw(STATUS, 1, false),
        ],
        &lim(),
    ));
    assert_eq!((s, at), (Status::IoErr, None));
}

#[test]
fn status_descriptor_too_small() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let r = run(&m, &[raw(HDR, 16, false), raw(STATUS, 0, true)], &lim()).unwrap_err();
    assert_eq!(r.status_at, None);
    assert_eq!(r.why, Malformed::NoStatus);
    assert_eq!(r.used_len(), 0);
    // A header shorter than 16 bytes.
    let (s, at, why) = status_of(run(&m, &[raw(HDR, 8, false), raw(STATUS, 1, true)], &lim()));
    assert_eq!((s, at), (Status::IoErr, Some(GuestAddress(STATUS))));
    assert!(why.contains("header has 8"), "{why}");
}

#[test]
fn segments_outside_guest_memory() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    // A data buffer that runs past the end of guest memory.
    let (s, at, why) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(END - 512, 1024, true),
            raw(STATUS, 1, true),
        ],
        &lim(),
    ));
    assert_eq!((s, at), (Status::IoErr, Some(GuestAddress(STATUS))));
    assert!(why.contains("outside guest memory"), "{why}");
    // Entirely outside.
    let (s, _, _) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(0x4000_0000, 512, true),
            raw(STATUS, 1, true),
        ],
        &lim(),
    ));
    assert_eq!(s, Status::IoErr);
    // Address + length overflowing u64.
    let (s, _, why) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(u64::MAX - 100, 512, true),
            raw(STATUS, 1, true),
        ],
        &lim(),
    ));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("outside guest memory"), "{why}");
    // The status byte itself outside memory: nothing can be written, used length 0.
    let r = run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 512, true),
            raw(END + 10, 1, true),
        ],
        &lim(),
    )
    .unwrap_err();
    assert_eq!((r.status_at, r.used_len()), (None, 0));
    // The header outside memory.
    let (s, _, _) = status_of(run(
        &m,
        &[raw(END, 16, false), raw(STATUS, 1, true)],
        &lim(),
    ));
    assert_eq!(s, Status::IoErr);
}

#[test]
fn sector_beyond_capacity() {
    let m = mem();
    let l = lim();
    // The last 4 KiB of the 1 MiB disk: fine.
    header(&m, HDR, VIRTIO_BLK_T_IN, 2040);
    let descs = [
        raw(HDR, 16, false),
        raw(DATA, 4096, true),
        raw(STATUS, 1, true),
    ];
    assert!(run(&m, &descs, &l).is_ok());
    // One sector further: past the end.
    header(&m, HDR, VIRTIO_BLK_T_IN, 2041);
    let (s, _, why) = status_of(run(&m, &descs, &l));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("past the end"), "{why}");
    // Far past the end.
    header(&m, HDR, VIRTIO_BLK_T_OUT, 1 << 40);
    let w = [
        raw(HDR, 16, false),
        raw(DATA, 4096, false),
        raw(STATUS, 1, true),
    ];
    let (s, _, why) = status_of(run(&m, &w, &l));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("past the end"), "{why}");
}

#[test]
fn overflowing_length() {
    let m = mem();
    // sector * 512 overflows u64.
    header(&m, HDR, VIRTIO_BLK_T_IN, u64::MAX / 256);
    let (s, _, why) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 512, true),
            raw(STATUS, 1, true),
        ],
        &lim(),
    ));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("overflows"), "{why}");
    // offset + len overflows.
    header(&m, HDR, VIRTIO_BLK_T_IN, u64::MAX / 512);
    let (s, _, why) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 1024, true),
            raw(STATUS, 1, true),
        ],
        &lim(),
    ));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("overflows"), "{why}");
    // Not whole sectors.
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let (s, _, why) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 1000, true),
            raw(STATUS, 1, true),
        ],
        &lim(),
    ));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("not whole sectors"), "{why}");
    // Larger than a request may be (on a disk large enough to hold it): many descriptors
    // repeating one 64 KiB buffer.
    let big = Limits {
        max_request_bytes: 1 << 20,
        ..Limits::new(1 << 30, false)
    };
    let mut descs = vec![raw(HDR, 16, false)];
    descs.extend((0..20).map(|_| raw(DATA, 0x1_0000, true)));
    descs.push(raw(STATUS, 1, true));
    let (s, _, why) = status_of(run(&m, &descs, &big));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("too large"), "{why}");
    // Too many data segments.
    let few = Limits {
        max_segments: 4,
        ..Limits::new(1 << 30, false)
    };
    let mut descs = vec![raw(HDR, 16, false)];
    descs.extend((0..5).map(|i| raw(DATA + i * 512, 512, true)));
    descs.push(raw(STATUS, 1, true));
    let (s, _, why) = status_of(run(&m, &descs, &few));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("5 data segments"), "{why}");
    // Too many descriptors.
    let tight = Limits {
        max_descriptors: 3,
        ..lim()
    };
    let (s, _, why) = status_of(run(&m, &descs, &tight));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("descriptors"), "{why}");
}

#[test]
fn unknown_request_type() {
    let m = mem();
    for t in [2u32, 3, 9, 10, 14, 15, 16, 99, u32::MAX] {
        header(&m, HDR, t, 0);
        let (s, at, why) = status_of(run(
            &m,
            &[raw(HDR, 16, false), raw(STATUS, 1, true)],
            &lim(),
        ));
        assert_eq!(
            (s, at),
            (Status::Unsupp, Some(GuestAddress(STATUS))),
            "type {t}"
        );
        assert!(why.contains(&format!("type {t}")), "{why}");
    }
}

#[test]
fn write_on_read_only() {
    let m = mem();
    let ro = Limits::new(2048, true);
    header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let (s, _, why) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 512, false),
            raw(STATUS, 1, true),
        ],
        &ro,
    ));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("read-only"), "{why}");
    // Reads and flushes still work.
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    assert!(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 512, true),
            raw(STATUS, 1, true)
        ],
        &ro
    )
    .is_ok());
    header(&m, HDR, VIRTIO_BLK_T_FLUSH, 0);
    assert!(run(&m, &[raw(HDR, 16, false), raw(STATUS, 1, true)], &ro).is_ok());
    // Discard and write-zeroes too.
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        header(&m, HDR, t, 0);
        range_seg(&m, DATA, 0, 8, 0);
        let (s, _, why) = status_of(run(
            &m,
            &[
                raw(HDR, 16, false),
                raw(DATA, 16, false),
                raw(STATUS, 1, true),
            ],
            &ro,
        ));
        assert_eq!(s, Status::IoErr, "type {t}");
        assert!(why.contains("read-only"), "{why}");
    }
}

fn range_seg(m: &GuestMemoryMmap<()>, at: u64, sector: u64, sectors: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    m.write_slice(&s, GuestAddress(at)).unwrap();
}

#[test]
fn discard_and_write_zeroes() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    range_seg(&m, DATA, 8, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    range_seg(&m, DATA + 16, 100, 1, 0);
    let r = run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 32, false),
            raw(STATUS, 1, true),
        ],
        &lim(),
    )
    .unwrap();
    assert_eq!(
        r.op,
        Op::WriteZeroes(vec![
            Range {
                offset: 4096,
                len: 8192,
                unmap: true
            },
            Range {
                offset: 51200,
                len: 512,
                unmap: false
            }
        ])
    );
    // Discard with the unmap flag (or any flag): unsupported.
    header(&m, HDR, VIRTIO_BLK_T_DISCARD, 0);
    range_seg(&m, DATA, 8, 16, 1);
    let (s, _, _) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 16, false),
            raw(STATUS, 1, true),
        ],
        &lim(),
    ));
    assert_eq!(s, Status::Unsupp);
    // Payload not whole segments.
    range_seg(&m, DATA, 8, 16, 0);
    let (s, _, why) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 20, false),
            raw(STATUS, 1, true),
        ],
        &lim(),
    ));
    assert_eq!(s, Status::IoErr);
    assert!(why.contains("20 bytes"), "{why}");
    // A range past the end, a zero-length range.
    range_seg(&m, DATA, 2047, 2, 0);
    let d = [
        raw(HDR, 16, false),
        raw(DATA, 16, false),
        raw(STATUS, 1, true),
    ];
    assert_eq!(status_of(run(&m, &d, &lim())).0, Status::IoErr);
    range_seg(&m, DATA, 0, 0, 0);
    assert_eq!(status_of(run(&m, &d, &lim())).0, Status::IoErr);
    // Too many segments.
    let mut l = lim();
    l.max_range_segments = 1;
    range_seg(&m, DATA, 0, 1, 0);
    range_seg(&m, DATA + 16, 1, 1, 0);
    let (s, _, _) = status_of(run(
        &m,
        &[
            raw(HDR, 16, false),
            raw(DATA, 32, false),
            raw(STATUS, 1, true),
        ],
        &l,
    ));
    assert_eq!(s, Status::IoErr);
    // Not offered: unsupported.
    l = lim();
    l.discard = false;
    let (s, _, _) = status_of(run(&m, &d, &l));
    assert_eq!(s, Status::Unsupp);
}

#[test]
fn broken_chains() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let q = MockSplitQueue::new(&m, 16);
    // A next index past the table: the iterator stops on a descriptor that still has NEXT.
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 40)),
        raw(STATUS, 1, true),
    ];
    let chain = q.build_multiple_desc_chains(&descs).unwrap();
    assert_eq!(collect_chain(chain, 4096), Err(Malformed::Broken));
    // A loop: 0 -> 1 -> 0 ... cut by the iterator after the queue size.
    let q = MockSplitQueue::new(&m, 16);
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
        RawDescriptor::from(SplitDescriptor::new(
            STATUS,
            1,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            0,
        )),
    ];
    let chain = q.build_multiple_desc_chains(&descs).unwrap();
    assert_eq!(collect_chain(chain, 4096), Err(Malformed::Broken));
    // The same loop against a small descriptor cap.
    let chain = q.build_multiple_desc_chains(&descs).unwrap();
    assert!(matches!(
        collect_chain(chain, 4),
        Err(Malformed::TooManyDescriptors(_))
    ));
}

/// Random descriptor lists never panic the parser and every rejection with a status points
/// inside guest memory.
#[test]
fn fuzz_never_panics() {
    let m = mem();
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let addrs = [
        0,
        HDR,
        DATA,
        STATUS,
        END - 1,
        END,
        u64::MAX - 3,
        0x8000_0000,
    ];
    for _ in 0..20000 {
        header(
            &m,
            HDR,
            [0u32, 1, 4, 8, 11, 13, 7][(next() % 7) as usize],
            next() % 4096,
        );
        range_seg(
            &m,
            DATA,
            next() % 4096,
            (next() % 64) as u32,
            (next() % 3) as u32,
        );
        let n = (next() % 6) as usize;
        let descs: Vec<Desc> = (0..n)
            .map(|_| Desc {
                addr: addrs[(next() % addrs.len() as u64) as usize].wrapping_add(next() % 64),
                len: [0u32, 1, 15, 16, 17, 512, 4096, u32::MAX][(next() % 8) as usize],
                writable: next() % 2 == 0,
            })
            .collect();
        match parse(&descs, &m, &lim()) {
            Ok(r) => {
                assert!(r.status.0 < END);
                if let Op::Read { len, .. } | Op::Write { len, .. } = r.op {
                    assert!(len % 512 == 0 && len <= 1 << 20);
                }
            }
            Err(rej) => {
                if let Some(a) = rej.status_at {
                    assert!(a.0 < END);
                }
            }
        }
    }
}
