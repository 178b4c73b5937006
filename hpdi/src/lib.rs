//! HPDI, the high-performance device interface: the one zero-copy ring interface through
//! which the guest's applications reach every device, whatever front-end driver sits below.
//!
//! The application takes a buffer from a [`pool::BufferPool`] of DMA-able memory, fills it,
//! and submits a [`request::Request`] naming that buffer on a submission [`ring::Ring`]. The
//! device (a front-end driver implementing [`device::Device`]) hands the buffer's physical
//! address to the hardware, so payload is never copied between the application and the
//! driver; results come back as [`request::Completion`]s on a completion ring. Many requests
//! are in flight at once, and both sides move them in batches.
//!
//! This crate is `no_std` + `alloc` and free of `unsafe`: it runs in the guest and
//! unit-tests on the host. The guest supplies the pool's memory (frames from its DMA frame
//! allocator) through [`pool::DmaMemory`]; host tests use [`pool::HostMemory`].
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod device;
pub mod error;
pub mod pool;
pub mod queue;
pub mod registry;
pub mod request;
pub mod ring;

pub use device::{Capabilities, Device, DeviceKind, OpSet};
pub use error::Error;
pub use pool::{BufId, BufferPool, DmaMemory, HostMemory};
pub use queue::QueuePair;
pub use registry::Registry;
pub use request::{Completion, Op, Request, Segment, SgList};
pub use ring::Ring;
