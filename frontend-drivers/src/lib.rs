//! Front-end drivers behind the HPDI.
//!
//! - [`virtio_blk`]: virtio-blk over PCI or MMIO (any `virtio-drivers` transport) with as
//!   many requests in flight as the device's queue allows, indirect descriptors, flush, FUA,
//!   discard and write-zeroes. Payload goes from pool buffers straight to the device.
//! - [`ramdisk`]: a RAM disk with the same interface, for host tests of code above the HPDI.
//!
//! virtio-net with pool buffers and the ivshmem memory-region device come next (issue 3).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod ramdisk;
pub mod virtio_blk;
