//! Host tests of the virtio-net driver against the fake transport and a fake device that
//! reads the real descriptor rings. They prove zero-copy in both directions: a posted receive
//! buffer's descriptor is the application's pool buffer and the frame the device writes there
//! is what the application reads; a send's payload descriptors are the application's buffers.

use hpdi::{QueuePair, Segment, SgList};
use virtio_drivers::transport::DeviceType;

use super::*;
use crate::fake_virtio::{rd, FakeDevice, FakeTransport, HostHal};

const MRG_RXBUF: u64 = 1 << 15;
const CSUM: u64 = 1 << 0;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

struct Rig {
    net: VirtioNet<HostHal, FakeTransport, 16>,
    rx: FakeDevice,
    tx: FakeDevice,
    pool: BufferPool,
}

fn config() -> [u8; 64] {
    let mut c = [0u8; 64];
    c[..6].copy_from_slice(&MAC);
    c[6..8].copy_from_slice(&1u16.to_le_bytes()); // link up
    c
}

fn rig(features: u64) -> Rig {
    let t = FakeTransport::new(DeviceType::Network, features, config(), 16);
    let (rx, tx) = (t.device(RX_QUEUE), t.device(TX_QUEUE));
    Rig {
        net: VirtioNet::new(t).unwrap(),
        rx,
        tx,
        pool: BufferPool::host(64, 2048).unwrap(),
    }
}

fn modern() -> Rig {
    rig((Features::all()).bits() | MRG_RXBUF | CSUM)
}

fn req(op: Op, sg: SgList, tag: u64) -> Request {
    Request {
        op,
        fua: false,
        offset: 0,
        len: 0,
        sg,
        tag,
    }
}

fn recv(buf: hpdi::BufId, tag: u64) -> Request {
    req(Op::Recv, SgList::one(Segment::whole(buf, 2048)), tag)
}

fn send(sg: SgList, tag: u64) -> Request {
    req(Op::Send, sg, tag)
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn completions(r: &mut Rig) -> Vec<Completion> {
    let mut done = Vec::new();
    r.net.complete(&mut r.pool, 64, &mut |c| done.push(c));
    done
}

#[test]
fn negotiates_features_and_reads_the_mac() {
    let r = modern();
    let info = r.net.info();
    assert_eq!(r.net.mac(), MAC);
    assert!(info.mac_from_device && info.link_up);
    assert_eq!(info.header_len, 12, "VERSION_1 header has num_buffers");
    let offered_but_refused = Features::RING_EVENT_IDX;
    assert_eq!(
        info.features,
        Features::all().difference(offered_but_refused)
    );
    let accepted = r.rx.shared.borrow().driver_features;
    assert_eq!(
        accepted & (MRG_RXBUF | CSUM),
        0,
        "no mergeable buffers, no offloads"
    );
    assert_eq!(
        accepted,
        Features::all().difference(offered_but_refused).bits()
    );
    let caps = r.net.capabilities();
    assert_eq!(caps.kind, DeviceKind::Net);
    assert!(caps.ops.contains(Op::Send) && caps.ops.contains(Op::Recv));
    assert!(!caps.ops.contains(Op::Read));
    assert_eq!((caps.queue_depth, caps.max_segments), (16, 15));

    // A device without MAC and STATUS: a local MAC, link assumed up.
    let bare = rig(Features::VERSION_1.bits());
    assert_eq!(bare.net.mac(), DEFAULT_MAC);
    assert!(!bare.net.info().mac_from_device && bare.net.info().link_up);
}

#[test]
fn received_frames_land_in_the_posted_pool_buffers() {
    let mut r = modern();
    let bufs: Vec<_> = (0..4).map(|_| r.pool.alloc().unwrap()).collect();
    let mut q = QueuePair::new(8).unwrap();
    for (i, b) in bufs.iter().enumerate() {
        q.submit(recv(*b, i as u64)).unwrap();
    }
    q.poll(&mut r.net, &mut r.pool);
    assert_eq!(r.net.in_flight(), 4);
    assert!(r.rx.notifies() >= 1, "the receive queue was kicked");
    let mut chains = Vec::new();
    while let Some(c) = r.rx.next() {
        chains.push(c);
    }
    assert_eq!(chains.len(), 4);
    for ((_, chain), b) in chains.iter().zip(&bufs) {
        assert_eq!(chain.len(), 2, "header, then the pool buffer");
        assert!(chain.iter().all(|d| d.device_writes));
        assert_eq!(chain[0].len, 12);
        assert_eq!(
            chain[1].addr,
            r.pool.phys(&Segment::whole(*b, 2048)).unwrap(),
            "the device is given the application's buffer"
        );
        assert_eq!(chain[1].len, 2048);
    }

    // The device receives two frames into the third and first buffers (any order).
    let (f1, f2) = (frame(60, 1), frame(1514, 2));
    for ((head, chain), f) in [(&chains[2], &f1), (&chains[0], &f2)] {
        let mut bytes = vec![0u8; 12];
        bytes[10] = 1; // num_buffers
        bytes.extend_from_slice(f);
        let n = r.rx.scatter(chain, &bytes);
        r.rx.push_used(*head, n);
    }
    q.poll(&mut r.net, &mut r.pool);
    let mut done = Vec::new();
    q.reap(&mut done, 8);
    assert_eq!(
        done,
        [
            Completion {
                tag: 2,
                result: Ok(60)
            },
            Completion {
                tag: 0,
                result: Ok(1514)
            },
        ]
    );
    assert_eq!(&r.pool.buf(bufs[2]).unwrap()[..60], &f1[..]);
    assert_eq!(&r.pool.buf(bufs[0]).unwrap()[..1514], &f2[..]);
    assert_eq!(r.net.in_flight(), 2);
    let st = r.net.stats();
    assert_eq!((st.bytes_copied, st.bytes_moved), (0, 60 + 1514));
}

#[test]
fn sends_hand_the_device_the_application_buffers() {
    let mut r = modern();
    let (a, b) = (r.pool.alloc().unwrap(), r.pool.alloc().unwrap());
    let f = frame(1000, 9);
    r.pool.buf_mut(a).unwrap()[..600].copy_from_slice(&f[..600]);
    r.pool.buf_mut(b).unwrap()[100..500].copy_from_slice(&f[600..]);
    let mut sg = SgList::one(Segment {
        buf: a,
        offset: 0,
        len: 600,
    });
    sg.push(Segment {
        buf: b,
        offset: 100,
        len: 400,
    })
    .unwrap();
    r.net.start(&mut r.pool, &send(sg, 77)).unwrap();
    r.net.notify();
    assert!(r.tx.notifies() >= 1 && r.rx.next().is_none());
    let (head, chain) = r.tx.next().expect("the frame is on the transmit queue");
    assert_eq!(chain.len(), 3, "header and two payload segments");
    assert!(chain.iter().all(|d| !d.device_writes));
    assert_eq!(chain[0].len, 12);
    assert!((0..12).all(|i| rd::<u8>(chain[0].addr + i) == 0), "zeroed");
    for (seg, d) in sg.as_slice().iter().zip(&chain[1..]) {
        assert_eq!(d.addr, r.pool.phys(seg).unwrap(), "the app's buffer");
        assert_eq!(d.len, seg.len);
    }
    assert_eq!(r.tx.gather(&chain[1..]), f, "the wire sees the frame");
    r.tx.push_used(head, 0);
    assert_eq!(
        completions(&mut r),
        [Completion {
            tag: 77,
            result: Ok(1000)
        }]
    );
    let st = r.net.stats();
    assert_eq!(
        (st.submitted, st.completed, st.bytes_copied, st.bytes_moved),
        (1, 1, 0, 1000)
    );
}

#[test]
fn each_queue_fills_to_its_size_then_ring_full() {
    let mut r = modern();
    let bufs: Vec<_> = (0..40).map(|_| r.pool.alloc().unwrap()).collect();
    for (i, b) in bufs[..16].iter().enumerate() {
        r.net.start(&mut r.pool, &recv(*b, i as u64)).unwrap();
    }
    assert_eq!(
        r.net.start(&mut r.pool, &recv(bufs[16], 16)),
        Err(Error::RingFull)
    );
    // The transmit queue has its own slots.
    for (i, b) in bufs[16..32].iter().enumerate() {
        let sg = SgList::one(Segment::whole(*b, 64));
        r.net.start(&mut r.pool, &send(sg, 100 + i as u64)).unwrap();
    }
    let sg = SgList::one(Segment::whole(bufs[32], 64));
    assert_eq!(
        r.net.start(&mut r.pool, &send(sg, 200)),
        Err(Error::RingFull)
    );
    assert_eq!(r.net.in_flight(), 32);
    assert_eq!(r.net.stats().max_in_flight, 32);

    // Completing one send makes room for exactly one more.
    let (head, _) = r.tx.next().unwrap();
    r.tx.push_used(head, 0);
    assert_eq!(completions(&mut r).len(), 1);
    r.net.start(&mut r.pool, &send(sg, 201)).unwrap();
}

#[test]
fn bad_requests_are_refused_and_leave_no_slot_behind() {
    let mut r = modern();
    let b = r.pool.alloc().unwrap();
    let one = |len| SgList::one(Segment::whole(b, len));
    let sixteen = (0..16).fold(SgList::new(), |mut l, i| {
        l.push(Segment {
            buf: b,
            offset: i * 8,
            len: 8,
        })
        .unwrap();
        l
    });
    let cases = [
        (Request::read(0, one(2048), 1), Error::Unsupported(Op::Read)),
        (Request::flush(2), Error::Unsupported(Op::Flush)),
        (send(SgList::new(), 3), Error::BadSegment),
        (send(one(0), 4), Error::BadSegment),
        (req(Op::Recv, one(1500), 5), Error::BadSegment),
        (
            send(one(2000), 6),
            Error::OutOfRange {
                offset: 0,
                len: 2000,
                capacity: 1514,
            },
        ),
        (send(sixteen, 7), Error::TooManySegments),
        (
            send(SgList::one(Segment::whole(hpdi::BufId(63), 64)), 8),
            Error::BadSegment,
        ),
        (recv(hpdi::BufId(62), 9), Error::BadSegment),
    ];
    for (req, err) in cases {
        assert_eq!(r.net.start(&mut r.pool, &req), Err(err), "{req:?}");
    }
    assert_eq!(r.net.in_flight(), 0);
    assert!(r.rx.next().is_none() && r.tx.next().is_none());
    // Every slot of both queues is still free.
    let more: Vec<_> = (0..32).map(|_| r.pool.alloc().unwrap()).collect();
    for (i, b) in more[..16].iter().enumerate() {
        r.net.start(&mut r.pool, &recv(*b, i as u64)).unwrap();
    }
    for (i, b) in more[16..].iter().enumerate() {
        let sg = SgList::one(Segment::whole(*b, 60));
        r.net.start(&mut r.pool, &send(sg, i as u64)).unwrap();
    }
    assert_eq!(r.net.in_flight(), 32);
}

#[test]
fn legacy_device_without_indirect_descriptors() {
    let mut r = rig(Features::MAC.bits());
    assert_eq!(
        r.net.info().header_len,
        10,
        "legacy header has no num_buffers"
    );
    assert_eq!(
        r.net.capabilities().queue_depth,
        8,
        "two descriptors a request"
    );
    let bufs: Vec<_> = (0..9).map(|_| r.pool.alloc().unwrap()).collect();
    for (i, b) in bufs[..8].iter().enumerate() {
        r.net.start(&mut r.pool, &recv(*b, i as u64)).unwrap();
    }
    assert_eq!(
        r.net.start(&mut r.pool, &recv(bufs[8], 8)),
        Err(Error::RingFull)
    );
    let (head, chain) = r.rx.next().unwrap();
    assert_eq!((chain.len(), chain[0].len), (2, 10));
    assert_eq!(
        chain[1].addr,
        r.pool.phys(&Segment::whole(bufs[0], 2048)).unwrap()
    );
    let mut bytes = vec![0u8; 10];
    bytes.extend_from_slice(&frame(100, 3));
    let n = r.rx.scatter(&chain, &bytes);
    r.rx.push_used(head, n);
    assert_eq!(
        completions(&mut r),
        [Completion {
            tag: 0,
            result: Ok(100)
        }]
    );
    assert_eq!(&r.pool.buf(bufs[0]).unwrap()[..100], &frame(100, 3)[..]);
}

#[test]
fn open_takes_the_largest_queue_offered() {
    let t = FakeTransport::new(DeviceType::Network, Features::all().bits(), config(), 256);
    let shared = t.shared.clone();
    let (dev, info) = open::<HostHal, _>(t).unwrap();
    assert_eq!(info.queue_size, 256);
    assert_eq!(dev.capabilities().queue_depth, 256);
    assert_eq!(
        shared.borrow().queues.len(),
        2,
        "receive and transmit queues"
    );
    assert_eq!(shared.borrow().queues[1].size, 256);
    let t = FakeTransport::new(DeviceType::Network, Features::all().bits(), config(), 8);
    assert!(open::<HostHal, _>(t).is_err());
}
