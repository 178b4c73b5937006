//! Host tests of the virtio-blk driver against a fake transport and a fake device that reads
//! the real descriptor rings the driver builds. They prove the zero-copy claim: the address
//! the device is given for each payload segment is the address of the application's pool
//! buffer, and data the device writes lands in that buffer with no copy.

use hpdi::{QueuePair, Segment, SgList};
use virtio_drivers::transport::DeviceType;

use super::*;
use crate::fake_virtio::{rd, Buf, FakeDevice, FakeTransport, HostHal};

fn setup(
    features: Features,
) -> (
    VirtioBlk<HostHal, FakeTransport, 16>,
    FakeDevice,
    BufferPool,
) {
    let mut config = [0u8; 64];
    config[0..8].copy_from_slice(&2048u64.to_le_bytes()); // 1 MiB
    config[12..16].copy_from_slice(&32u32.to_le_bytes()); // seg_max
    config[36..40].copy_from_slice(&2048u32.to_le_bytes()); // max discard sectors
    config[48..52].copy_from_slice(&2048u32.to_le_bytes()); // max write zeroes sectors
    let t = FakeTransport::new(
        DeviceType::Block,
        (features | Features::VERSION_1).bits(),
        config,
        16,
    );
    let dev = t.device(QUEUE);
    let blk = VirtioBlk::new(t).unwrap();
    (blk, dev, BufferPool::host(64, 4096).unwrap())
}

fn header(b: &Buf) -> (u32, u64) {
    (rd(b.addr), rd(b.addr + 8))
}

#[test]
fn device_gets_the_application_buffers() {
    let (mut blk, dev, mut pool) = setup(Features::RING_INDIRECT_DESC | Features::SEG_MAX);
    let (a, b) = (pool.alloc().unwrap(), pool.alloc().unwrap());
    pool.buf_mut(a).unwrap().fill(0xaa);
    let mut sg = SgList::one(Segment::whole(a, 4096));
    sg.push(Segment {
        buf: b,
        offset: 512,
        len: 1024,
    })
    .unwrap();
    blk.start(&mut pool, &Request::write(8192, sg, 7)).unwrap();
    blk.notify();
    let (head, bufs) = dev.next().expect("the write is on the ring");
    assert_eq!(header(&bufs[0]), (T_OUT, 16));
    assert_eq!(bufs.len(), 4, "header, two payload segments, status");
    for (seg, buf) in sg.as_slice().iter().zip(&bufs[1..3]) {
        assert_eq!(
            buf.addr,
            pool.phys(seg).unwrap(),
            "device gets the app's buffer"
        );
        assert_eq!(buf.len, seg.len);
        assert!(!buf.device_writes);
    }
    assert!(bufs[3].device_writes && bufs[3].len == 1);
    dev.complete(head, &bufs, 0);

    // A read: the device writes into the application's buffer directly.
    let c = pool.alloc().unwrap();
    blk.start(
        &mut pool,
        &Request::read(0, SgList::one(Segment::whole(c, 4096)), 8),
    )
    .unwrap();
    let (head2, bufs2) = dev.next().unwrap();
    assert_eq!(bufs2[1].addr, pool.phys(&Segment::whole(c, 4096)).unwrap());
    // SAFETY: the device side writing into the buffer it was lent.
    unsafe { core::ptr::write_bytes(bufs2[1].addr as *mut u8, 0x5c, 4096) };
    dev.complete(head2, &bufs2, 0);

    let mut done = Vec::new();
    blk.complete(&mut pool, 8, &mut |c| done.push(c));
    assert_eq!(
        done,
        [
            Completion {
                tag: 7,
                result: Ok(5120)
            },
            Completion {
                tag: 8,
                result: Ok(4096)
            },
        ]
    );
    assert!(pool.buf(c).unwrap().iter().all(|&x| x == 0x5c));
    let st = blk.stats();
    assert_eq!((st.bytes_copied, st.bytes_moved), (0, 9216));
}

#[test]
fn queue_fills_to_its_size_and_completes_out_of_order() {
    let (mut blk, dev, mut pool) = setup(Features::RING_INDIRECT_DESC | Features::SEG_MAX);
    let mut q = QueuePair::new(32).unwrap();
    for i in 0..20u64 {
        let b = pool.alloc().unwrap();
        q.submit(Request::read(
            i * 4096,
            SgList::one(Segment::whole(b, 4096)),
            i,
        ))
        .unwrap();
    }
    q.poll(&mut blk, &mut pool);
    assert_eq!(blk.in_flight(), 16, "as many in flight as the queue holds");
    assert_eq!(q.sq.len(), 4, "the rest waits in the submission ring");
    assert!(dev.notifies() >= 1);
    let mut chains = Vec::new();
    while let Some(c) = dev.next() {
        chains.push(c);
    }
    assert_eq!(chains.len(), 16);
    for (head, bufs) in chains.iter().rev() {
        dev.complete(*head, bufs, 0);
    }
    let mut done = Vec::new();
    for _ in 0..3 {
        q.poll(&mut blk, &mut pool);
        q.reap(&mut done, 64);
        while let Some((h, b)) = dev.next() {
            dev.complete(h, &b, 0);
        }
    }
    let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
    assert_eq!(
        &tags[..3],
        [15, 14, 13],
        "completions follow the device's order"
    );
    tags.sort();
    assert_eq!(tags, (0..20).collect::<Vec<_>>());
    assert!(done.iter().all(|c| c.result == Ok(4096)));
    assert_eq!(blk.stats().max_in_flight, 16);
}

#[test]
fn fua_write_is_followed_by_a_flush_and_errors_keep_the_status() {
    let (mut blk, dev, mut pool) = setup(Features::FLUSH | Features::DISCARD);
    let b = pool.alloc().unwrap();
    let sg = SgList::one(Segment::whole(b, 4096));
    blk.start(&mut pool, &Request::write(0, sg, 1).with_fua())
        .unwrap();
    let (h, bufs) = dev.next().unwrap();
    assert_eq!(header(&bufs[0]).0, T_OUT);
    assert_eq!(
        bufs.len(),
        3,
        "no indirect: header, payload, status as direct descriptors"
    );
    dev.complete(h, &bufs, 0);
    let mut done = Vec::new();
    blk.complete(&mut pool, 8, &mut |c| done.push(c));
    assert!(done.is_empty(), "FUA write not complete before its flush");
    let (h, bufs) = dev.next().expect("flush follows the write");
    assert_eq!(header(&bufs[0]).0, T_FLUSH);
    dev.complete(h, &bufs, 0);
    blk.complete(&mut pool, 8, &mut |c| done.push(c));
    assert_eq!(
        done,
        [Completion {
            tag: 1,
            result: Ok(4096)
        }]
    );

    blk.start(&mut pool, &Request::discard(4096, 8192, 2))
        .unwrap();
    let (h, bufs) = dev.next().unwrap();
    assert_eq!(header(&bufs[0]).0, T_DISCARD);
    let (sector, n): (u64, u32) = (rd(bufs[1].addr), rd(bufs[1].addr + 8));
    assert_eq!((sector, n), (8, 16));
    dev.complete(h, &bufs, 1); // VIRTIO_BLK_S_IOERR
    done.clear();
    blk.complete(&mut pool, 8, &mut |c| done.push(c));
    assert_eq!(done[0].result, Err(Error::Device { status: 1 }));
    assert_eq!(
        blk.start(&mut pool, &Request::write_zeroes(0, 512, 3)),
        Err(Error::Unsupported(Op::WriteZeroes)),
        "write-zeroes not offered"
    );
    assert!(matches!(
        blk.start(&mut pool, &Request::discard(0, 2 << 20, 4)),
        Err(Error::OutOfRange { .. })
    ));
}

#[test]
fn fua_write_zeroes_and_discard_are_followed_by_a_flush() {
    // The server relies on FUA for every op that changes data; the flush was once chained
    // after writes only, so an acknowledged FUA WRITE_ZEROES could sit in a volatile cache.
    let (mut blk, dev, mut pool) =
        setup(Features::FLUSH | Features::DISCARD | Features::WRITE_ZEROES);
    for (tag, req, kind) in [
        (1, Request::write_zeroes(0, 4096, 1), T_WRITE_ZEROES),
        (2, Request::discard(4096, 4096, 2), T_DISCARD),
    ] {
        blk.start(&mut pool, &req.with_fua()).unwrap();
        let (h, bufs) = dev.next().unwrap();
        assert_eq!(header(&bufs[0]).0, kind);
        dev.complete(h, &bufs, 0);
        let mut done = Vec::new();
        blk.complete(&mut pool, 8, &mut |c| done.push(c));
        assert!(done.is_empty(), "FUA {kind} complete before its flush");
        let (h, bufs) = dev.next().expect("a flush follows");
        assert_eq!(header(&bufs[0]).0, T_FLUSH);
        dev.complete(h, &bufs, 0);
        blk.complete(&mut pool, 8, &mut |c| done.push(c));
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].tag, done[0].result), (tag, Ok(4096)));
    }
}
