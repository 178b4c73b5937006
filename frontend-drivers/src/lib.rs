//! Front-end drivers behind the HPDI.
//!
//! - [`virtio_blk`]: virtio-blk over PCI or MMIO (any `virtio-drivers` transport) with as
//!   many requests in flight as the device's queue allows, indirect descriptors, flush, FUA,
//!   discard and write-zeroes. Payload goes from pool buffers straight to the device.
//! - [`ramdisk`]: a RAM disk with the same interface, for host tests of code above the HPDI.
//!
//! - [`virtio_net`]: virtio-net whose receive and transmit buffers are pool buffers, and
//!   [`net_phy`], the `smoltcp::phy::Device` adapter that lends those buffers to smoltcp.
//! - [`memregion`]: a shared/persistent memory region (ivshmem BAR 2) as an HPDI device.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

#[cfg(test)]
mod fake_virtio;
pub mod immediate;
pub mod memregion;
pub mod net_phy;
pub mod partition;
pub mod queue_size;
pub mod ramdisk;
pub mod virtio_blk;
pub mod virtio_net;
