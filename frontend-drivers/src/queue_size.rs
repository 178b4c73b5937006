//! Choosing a virtqueue size at run time for drivers whose queue size is a compile-time
//! parameter (`virtio-drivers`' `VirtQueue<H, SIZE>`): the largest supported size the device
//! offers is picked once, here, for every driver.

use alloc::boxed::Box;

use hpdi::Device;

/// A driver that can be built for any supported queue size.
pub trait Family<T> {
    /// What the driver reports about the device it opened.
    type Info;
    fn build<const Q: usize>(
        transport: T,
    ) -> Result<(Box<dyn Device>, Self::Info), virtio_drivers::Error>;
}

/// Builds `F`'s driver with the largest of 256, 128, 64 or 16 entries that `offered` allows.
pub fn open_largest<F: Family<T>, T>(
    offered: u32,
    transport: T,
) -> Result<(Box<dyn Device>, F::Info), virtio_drivers::Error> {
    match offered {
        256.. => F::build::<256>(transport),
        128..=255 => F::build::<128>(transport),
        64..=127 => F::build::<64>(transport),
        16..=63 => F::build::<16>(transport),
        _ => Err(virtio_drivers::Error::InvalidParam),
    }
}
