//! Errors are values: every failure a caller or a device can cause comes back as an
//! [`Error`], with the device's own status preserved.

use core::fmt;

use crate::request::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The ring has no free slot; retry after reaping completions.
    RingFull,
    /// Ring capacity must be a power of two from 1 to [`crate::ring::MAX_CAPACITY`].
    BadCapacity(usize),
    /// The device does not implement this operation.
    Unsupported(Op),
    /// The request reaches past the device's capacity or is not block-aligned.
    OutOfRange {
        offset: u64,
        len: u64,
        capacity: u64,
    },
    /// Offset or length not a multiple of the device block size.
    Misaligned { offset: u64, len: u64, block: u32 },
    /// A segment names a buffer that does not exist or reaches past its end.
    BadSegment,
    /// More scatter-gather segments than the list (or the device) takes.
    TooManySegments,
    /// No free buffer in the pool.
    PoolExhausted,
    /// The device reported a failure; `status` is its own status code.
    Device { status: u32 },
    /// No device registered under that name.
    NoSuchDevice,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::RingFull => write!(f, "ring full"),
            Error::BadCapacity(n) => write!(f, "ring capacity {n} is not a power of two in range"),
            Error::Unsupported(op) => write!(f, "operation {op:?} not supported by the device"),
            Error::OutOfRange {
                offset,
                len,
                capacity,
            } => write!(
                f,
                "range {offset}+{len} outside the device ({capacity} bytes)"
            ),
            Error::Misaligned { offset, len, block } => {
                write!(f, "range {offset}+{len} not aligned to {block}-byte blocks")
            }
            Error::BadSegment => write!(f, "segment outside its buffer"),
            Error::TooManySegments => write!(f, "too many scatter-gather segments"),
            Error::PoolExhausted => write!(f, "buffer pool exhausted"),
            Error::Device { status } => write!(f, "device error (status {status})"),
            Error::NoSuchDevice => write!(f, "no such device"),
        }
    }
}
