//! A fake virtio transport and device for host tests of the virtio drivers.
//!
//! The transport records where the driver put each queue's rings; the device end reads those
//! real descriptor rings in (host) memory, as a device would, and writes the used rings. With
//! [`HostHal`] a physical address is the pointer itself, so a test can check that the address
//! a device is given is the address of the application's pool buffer.

use core::cell::RefCell;
use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::rc::Rc;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Host memory standing in for guest-physical memory: physical address == pointer.
pub struct HostHal;

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

/// Where the driver put one queue, and what the device has consumed of it.
#[derive(Default)]
pub struct Rings {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    pub notifies: u32,
    pub last_avail: u16,
}

/// State the transport and the device ends share.
#[derive(Default)]
pub struct Shared {
    /// By queue index.
    pub queues: Vec<Rings>,
    /// What the driver accepted in `begin_init`.
    pub driver_features: u64,
}

pub type SharedRef = Rc<RefCell<Shared>>;

pub struct FakeTransport {
    pub device_type: DeviceType,
    pub features: u64,
    pub config: [u8; 64],
    pub status: DeviceStatus,
    pub max_queue_size: u32,
    pub shared: SharedRef,
}

impl FakeTransport {
    pub fn new(device_type: DeviceType, features: u64, config: [u8; 64], queue_size: u32) -> Self {
        Self {
            device_type,
            features,
            config,
            status: DeviceStatus::empty(),
            max_queue_size: queue_size,
            shared: SharedRef::default(),
        }
    }

    /// The device end of queue `queue`.
    pub fn device(&self, queue: u16) -> FakeDevice {
        FakeDevice {
            shared: self.shared.clone(),
            queue: usize::from(queue),
        }
    }
}

impl Transport for FakeTransport {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }
    fn read_device_features(&mut self) -> u64 {
        self.features
    }
    fn write_driver_features(&mut self, f: u64) {
        self.shared.borrow_mut().driver_features = f;
    }
    fn max_queue_size(&mut self, _: u16) -> u32 {
        self.max_queue_size
    }
    fn notify(&mut self, queue: u16) {
        let mut s = self.shared.borrow_mut();
        if let Some(r) = s.queues.get_mut(usize::from(queue)) {
            r.notifies += 1;
        }
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
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        desc: PhysAddr,
        avail: PhysAddr,
        used: PhysAddr,
    ) {
        let mut s = self.shared.borrow_mut();
        let q = usize::from(queue);
        if s.queues.len() <= q {
            s.queues.resize_with(q + 1, Rings::default);
        }
        let r = &mut s.queues[q];
        (r.desc, r.avail, r.used, r.size) = (desc, avail, used, size as u16);
    }
    fn queue_unset(&mut self, _: u16) {}
    fn queue_used(&mut self, queue: u16) -> bool {
        self.shared
            .borrow()
            .queues
            .get(usize::from(queue))
            .is_some_and(|r| r.desc != 0)
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
        // Like the real transports: config space is only 4-byte aligned, and wider or
        // misaligned reads are a driver bug (virtio-drivers panics on them).
        let size = size_of::<V>();
        assert!(
            size <= 4 && offset.is_multiple_of(size),
            "config read of {size} bytes at {offset}"
        );
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
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

pub fn rd<V: Copy>(addr: u64) -> V {
    // SAFETY: addresses come from the rings the driver set up in live host memory.
    unsafe { (addr as *const V).read_volatile() }
}

pub fn wr<V: Copy>(addr: u64, v: V) {
    // SAFETY: as for `rd`; the driver has lent these buffers to the device.
    unsafe { (addr as *mut V).write_volatile(v) }
}

/// The device end of one queue: reads the rings the driver wrote in (fake) guest memory.
pub struct FakeDevice {
    pub shared: SharedRef,
    pub queue: usize,
}

impl FakeDevice {
    /// Doorbells the driver rang for this queue.
    pub fn notifies(&self) -> u32 {
        self.shared.borrow().queues[self.queue].notifies
    }

    /// Takes the next available chain: (head, buffers).
    pub fn next(&self) -> Option<(u16, Vec<Buf>)> {
        let mut s = self.shared.borrow_mut();
        let r = &mut s.queues[self.queue];
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

    /// Puts chain `head` on the used ring with `len` bytes written.
    pub fn push_used(&self, head: u16, len: u32) {
        let s = self.shared.borrow();
        let r = &s.queues[self.queue];
        let used_idx: u16 = rd(r.used + 2);
        let e = r.used + 4 + 8 * u64::from(used_idx % r.size);
        wr(e, u32::from(head));
        wr(e + 4, len);
        wr(r.used + 2, used_idx.wrapping_add(1));
    }

    /// Completes chain `head` whose last buffer is a status byte (virtio-blk), reporting
    /// every device-writable byte as written.
    pub fn complete(&self, head: u16, bufs: &[Buf], status: u8) {
        wr(bufs.last().unwrap().addr, status);
        self.push_used(
            head,
            bufs.iter()
                .filter(|b| b.device_writes)
                .map(|b| b.len)
                .sum::<u32>(),
        );
    }

    /// Writes `data` across the chain's device-writable buffers in order (as a device
    /// receiving into them); returns the bytes written.
    pub fn scatter(&self, bufs: &[Buf], data: &[u8]) -> u32 {
        let mut at = 0;
        for b in bufs.iter().filter(|b| b.device_writes) {
            let n = (b.len as usize).min(data.len() - at);
            for (i, &x) in data[at..at + n].iter().enumerate() {
                wr(b.addr + i as u64, x);
            }
            at += n;
        }
        at as u32
    }

    /// The bytes of the chain's device-readable buffers, in order (as a device sending them).
    pub fn gather(&self, bufs: &[Buf]) -> Vec<u8> {
        bufs.iter()
            .filter(|b| !b.device_writes)
            .flat_map(|b| (0..u64::from(b.len)).map(move |i| rd::<u8>(b.addr + i)))
            .collect()
    }
}
