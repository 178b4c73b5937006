//! Host tests of the virtio-blk driver against a fake transport and a fake device that reads
//! the real descriptor rings the driver builds. They prove the zero-copy claim: the address
//! the device is given for each payload segment is the address of the application's pool
//! buffer, and data the device writes lands in that buffer with no copy.

use core::cell::RefCell;
use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::rc::Rc;

use hpdi::{QueuePair, Segment, SgList};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus};
use virtio_drivers::{BufferDirection, PhysAddr};

use super::*;

/// Host memory standing in for guest-physical memory: physical address == pointer.
struct HostHal;

// SAFETY: allocations are page-aligned, zeroed and live until `dma_dealloc`; addresses are
// the pointers themselves.
unsafe impl Hal for HostHal {
    fn dma_alloc(pages: usize, _: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = Layout::from_size_align(pages * 4096, 4096).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        (p as u64, NonNull::new(p).unwrap())
    }
    unsafe fn dma_dealloc(_: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: allocated by dma_alloc with this layout.
        unsafe {
            dealloc(
                vaddr.as_ptr(),
                Layout::from_size_align(pages * 4096, 4096).unwrap(),
            )
        };
        0
    }
    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap()
    }
    unsafe fn share(buffer: NonNull<[u8]>, _: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as u64
    }
    unsafe fn unshare(_: PhysAddr, _: NonNull<[u8]>, _: BufferDirection) {}
}

#[derive(Default)]
struct Rings {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    notifies: u32,
    last_avail: u16,
}

struct FakeTransport {
    features: u64,
    config: [u8; 64],
    status: DeviceStatus,
    rings: Rc<RefCell<Rings>>,
}

impl Transport for FakeTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }
    fn read_device_features(&mut self) -> u64 {
        self.features
    }
    fn write_driver_features(&mut self, _: u64) {}
    fn max_queue_size(&mut self, _: u16) -> u32 {
        16
    }
    fn notify(&mut self, _: u16) {
        self.rings.borrow_mut().notifies += 1;
    }
    fn get_status(&self) -> DeviceStatus {
        self.status
    }
    fn set_status(&mut self, s: DeviceStatus) {
        self.status = s;
    }
    fn set_guest_page_size(&mut self, _: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(&mut self, _: u16, size: u32, desc: PhysAddr, avail: PhysAddr, used: PhysAddr) {
        let mut r = self.rings.borrow_mut();
        (r.desc, r.avail, r.used, r.size) = (desc, avail, used, size as u16);
    }
    fn queue_unset(&mut self, _: u16) {}
    fn queue_used(&mut self, _: u16) -> bool {
        self.rings.borrow().desc != 0
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }
    fn read_config_generation(&self) -> u32 {
        0
    }
    fn read_config_space<V: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> Result<V, virtio_drivers::Error> {
        V::read_from_prefix(&self.config[offset..])
            .map(|(v, _)| v)
            .map_err(|_| virtio_drivers::Error::ConfigSpaceTooSmall)
    }
    fn write_config_space<V: IntoBytes + Immutable>(
        &mut self,
        _: usize,
        _: V,
    ) -> Result<(), virtio_drivers::Error> {
        Ok(())
    }
}

/// One buffer of a descriptor chain as the device sees it.
#[derive(Debug, Clone, Copy)]
struct Buf {
    addr: u64,
    len: u32,
    device_writes: bool,
}

/// The device end: reads the rings the driver wrote in (fake) guest memory.
struct FakeDevice {
    rings: Rc<RefCell<Rings>>,
}

fn rd<V: Copy>(addr: u64) -> V {
    // SAFETY: addresses come from the rings the driver set up in live host memory.
    unsafe { (addr as *const V).read_volatile() }
}

fn wr<V: Copy>(addr: u64, v: V) {
    // SAFETY: as for `rd`; the driver has lent these buffers to the device.
    unsafe { (addr as *mut V).write_volatile(v) }
}

impl FakeDevice {
    /// Takes the next available chain: (head, buffers).
    fn next(&self) -> Option<(u16, Vec<Buf>)> {
        let mut r = self.rings.borrow_mut();
        let idx: u16 = rd(r.avail + 2);
        if idx == r.last_avail {
            return None;
        }
        let head: u16 = rd(r.avail + 4 + 2 * u64::from(r.last_avail % r.size));
        r.last_avail = r.last_avail.wrapping_add(1);
        let mut bufs = Vec::new();
        let (mut table, mut i) = (r.desc, head);
        loop {
            let d = table + 16 * u64::from(i);
            let (addr, len, flags, next): (u64, u32, u16, u16) =
                (rd(d), rd(d + 8), rd(d + 12), rd(d + 14));
            if flags & 4 != 0 {
                // Indirect: the chain continues in the table at `addr`.
                (table, i) = (addr, 0);
                continue;
            }
            bufs.push(Buf {
                addr,
                len,
                device_writes: flags & 2 != 0,
            });
            if flags & 1 == 0 {
                break;
            }
            i = next;
        }
        Some((head, bufs))
    }

    /// Completes chain `head` with status byte `status`.
    fn complete(&self, head: u16, bufs: &[Buf], status: u8) {
        let r = self.rings.borrow();
        wr(bufs.last().unwrap().addr, status);
        let used_idx: u16 = rd(r.used + 2);
        let e = r.used + 4 + 8 * u64::from(used_idx % r.size);
        wr(e, u32::from(head));
        wr(
            e + 4,
            bufs.iter()
                .filter(|b| b.device_writes)
                .map(|b| b.len)
                .sum::<u32>(),
        );
        wr(r.used + 2, used_idx.wrapping_add(1));
    }
}

fn setup(
    features: Features,
) -> (
    VirtioBlk<HostHal, FakeTransport, 16>,
    FakeDevice,
    BufferPool,
) {
    let rings = Rc::new(RefCell::new(Rings::default()));
    let mut config = [0u8; 64];
    config[0..8].copy_from_slice(&2048u64.to_le_bytes()); // 1 MiB
    config[12..16].copy_from_slice(&32u32.to_le_bytes()); // seg_max
    config[36..40].copy_from_slice(&2048u32.to_le_bytes()); // max discard sectors
    let t = FakeTransport {
        features: (features | Features::VERSION_1).bits(),
        config,
        status: DeviceStatus::empty(),
        rings: rings.clone(),
    };
    let blk = VirtioBlk::new(t).unwrap();
    (
        blk,
        FakeDevice { rings },
        BufferPool::host(64, 4096).unwrap(),
    )
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
    assert!(dev.rings.borrow().notifies >= 1);
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
