//! Front-end drivers behind the HPDI.
//!
//! - [`virtio_blk`]: virtio-blk over PCI or MMIO (any `virtio-drivers` transport) with as
//!   many requests in flight as the device's queue allows, indirect descriptors, flush, FUA,
//!   discard and write-zeroes. Payload goes from pool buffers straight to the device.
//! - [`virtio_net`]: virtio-net whose receive and transmit buffers are pool buffers, and
//!   [`net_phy`], the `smoltcp::phy::Device` adapter that lends those buffers to smoltcp.
//! - [`queue_size`]: the virtqueue size both virtio drivers pick at run time.
//! - [`memregion`]: a shared/persistent memory region (ivshmem BAR 2) as an HPDI device.
//! - [`ramdisk`]: a RAM disk with the same interface, for host tests of code above the HPDI.
//! - [`immediate`]: the bookkeeping shared by devices that finish every request at once (the
//!   RAM disk, the memory region).
//! - [`partition`]: a window of another block device (a disk's data area, past its label).
//!
//! `unsafe` is denied (`deny(unsafe_code)`) except where a module must lend memory to a
//! device, allowed on its `mod` line: [`virtio_blk`] and [`virtio_net`] (the two
//! `VirtQueue` calls that lend buffers to the device and take them back), and in tests the
//! fake virtio device (`fake_virtio`), which reads and writes the rings the drivers lend.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

#[cfg(test)]
#[allow(unsafe_code)]
mod fake_virtio;
pub mod immediate;
pub mod memregion;
pub mod net_phy;
pub mod partition;
pub mod queue_size;
pub mod ramdisk;
#[allow(unsafe_code)]
pub mod virtio_blk;
#[allow(unsafe_code)]
pub mod virtio_net;
