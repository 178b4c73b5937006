//! Front-end drivers behind the HPDI: virtio-blk and virtio-net (built on `virtio-drivers`,
//! over PCI or MMIO), the shared-memory region device (ivshmem) and a RAM disk for host tests.
//!
//! Until issue 3 the guest drives its virtio devices directly from `unikernel`'s discovery
//! module; this crate is where they move when the HPDI exists.
#![cfg_attr(not(test), no_std)]
