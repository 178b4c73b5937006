//! virtio-blk requests out of descriptor chains: pure, bounded, never panicking.
//!
//! A request is a chain of descriptors in guest memory: device-readable bytes first (a
//! 16-byte header `{le32 type, le32 ioprio, le64 sector}`, then the payload of a write or
//! the segments of a discard/write-zeroes), then device-writable bytes (the buffer of a read
//! or get-id), the last of which is the one-byte status. The virtio spec lets the driver cut
//! these bytes into descriptors any way it likes, so this module does not assume one
//! descriptor per part: it takes the readable bytes and the writable bytes as two byte
//! streams over guest memory and splits them at byte offsets (the header may straddle two
//! descriptors, the status may share the read buffer's last descriptor).
//!
//! Everything the guest controls is bounded before any I/O is built from it:
//!
//! - the chain: at most [`Limits::max_descriptors`] descriptors, no readable descriptor
//!   after a writable one, a chain that ends on a dangling `NEXT` (bad index, a loop cut by
//!   the iterator) is broken;
//! - the status: the last descriptor must be writable with at least one byte, inside guest
//!   memory; a chain without one cannot be answered with a status and is only returned to
//!   the used ring (length 0);
//! - every data segment must lie in guest memory; a request's payload is at most
//!   [`Limits::max_request_bytes`] in at most [`Limits::max_segments`] segments, a whole
//!   number of 512-byte sectors;
//! - sector arithmetic is checked (`sector * 512 + len` overflowing `u64` is an error) and
//!   the range must end within the capacity;
//! - discard/write-zeroes carry whole 16-byte segments, at most
//!   [`Limits::max_range_segments`], each at most [`Limits::max_range_sectors`] long, with
//!   only the flags the spec allows;
//! - writes, discards and write-zeroes on a read-only disk fail; unknown types are
//!   `VIRTIO_BLK_S_UNSUPP`.
//!
//! What the guest sees for a rejected request: [`Status::IoErr`] or [`Status::Unsupp`] in its
//! status byte (when there is one) and the head on the used ring. The daemon goes on.

use std::fmt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Bytes per virtio-blk sector (the unit of `sector` and capacity, whatever the block size).
pub const SECTOR: u64 = 512;
/// Size of the request header.
pub const HEADER_LEN: u64 = 16;
/// Size of one discard/write-zeroes segment.
pub const RANGE_SEGMENT_LEN: u64 = 16;
/// Bytes a get-id answer holds at most.
pub const ID_BYTES: usize = 20;
/// Most iovecs one `preadv`/`pwritev` takes (the kernel's `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// A descriptor as read once from the chain (the guest may change the table afterwards;
/// nothing here reads it again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

impl Desc {
    /// A device-readable descriptor.
    pub fn r(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            writable: false,
        }
    }

    /// A device-writable descriptor.
    pub fn w(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            writable: true,
        }
    }
}

/// A contiguous piece of guest memory (one descriptor or part of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes (never 0 in a parsed request).
    pub len: u32,
}

/// The status byte's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// `VIRTIO_BLK_S_OK`.
    Ok = 0,
    /// `VIRTIO_BLK_S_IOERR`.
    IoErr = 1,
    /// `VIRTIO_BLK_S_UNSUPP`.
    Unsupp = 2,
}

/// What the device is (the bounds a request is checked against).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Writes, discards and write-zeroes fail.
    pub read_only: bool,
    /// Descriptors in one chain (indirect ones included).
    pub max_descriptors: usize,
    /// Data segments of a read, write or get-id.
    pub max_segments: usize,
    /// Payload bytes of a read or write.
    pub max_request_bytes: u64,
    /// Discard is offered.
    pub discard: bool,
    /// Write-zeroes is offered.
    pub write_zeroes: bool,
    /// Segments in one discard/write-zeroes request.
    pub max_range_segments: u32,
    /// Sectors in one discard/write-zeroes segment.
    pub max_range_sectors: u32,
}

impl Limits {
    /// The bounds for a disk of `capacity_sectors`, with the daemon's fixed maxima.
    pub fn new(capacity_sectors: u64, read_only: bool) -> Limits {
        Limits {
            capacity_sectors,
            read_only,
            max_descriptors: 4096,
            max_segments: IOV_MAX,
            max_request_bytes: MAX_REQUEST_BYTES,
            discard: !read_only,
            write_zeroes: !read_only,
            max_range_segments: MAX_RANGE_SEGMENTS,
            max_range_sectors: MAX_RANGE_SECTORS,
        }
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors.saturating_mul(SECTOR)
    }
}

/// Largest read or write accepted (bytes).
pub const MAX_REQUEST_BYTES: u64 = 256 << 20;
/// Segments per discard/write-zeroes request (offered as `max_discard_seg`, ...).
pub const MAX_RANGE_SEGMENTS: u32 = 16;
/// Sectors per discard/write-zeroes segment (offered as `max_discard_sectors`, ...): 1 GiB.
pub const MAX_RANGE_SECTORS: u32 = 1 << 21;

/// One discard or write-zeroes range, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes (> 0).
    pub len: u64,
    /// Write-zeroes may deallocate (`VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`).
    pub unmap: bool,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes at `offset` into the segments.
    Read {
        /// Byte offset in the image.
        offset: u64,
        /// Bytes (a whole number of sectors, > 0).
        len: u64,
        /// Guest buffers, device-writable.
        segs: Vec<Seg>,
    },
    /// Write the segments' `len` bytes at `offset`.
    Write {
        /// Byte offset in the image.
        offset: u64,
        /// Bytes (a whole number of sectors, > 0).
        len: u64,
        /// Guest buffers, device-readable.
        segs: Vec<Seg>,
    },
    /// Make every completed write durable (`fdatasync`).
    Flush,
    /// Write the device id (up to 20 bytes) into the segments.
    GetId {
        /// Guest buffers, device-writable (their total may be less than 20).
        segs: Vec<Seg>,
    },
    /// Deallocate the ranges (advisory).
    Discard(Vec<Range>),
    /// Make the ranges read as zeros.
    WriteZeroes(Vec<Range>),
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub op: Op,
    /// Guest address of the status byte.
    pub status: GuestAddress,
}

impl Request {
    /// The used-ring length when the request succeeds: every byte the device writes (read
    /// data or id, and the status byte).
    pub fn used_len_ok(&self) -> u32 {
        let data = match &self.op {
            Op::Read { len, .. } => *len,
            Op::GetId { segs } => total(segs).min(ID_BYTES as u64),
            _ => 0,
        };
        // Bounded by MAX_REQUEST_BYTES, far below u32::MAX.
        u32::try_from(data + 1).unwrap_or(u32::MAX)
    }
}

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// No descriptors at all.
    Empty,
    /// The chain ended on a descriptor that has `NEXT` set (bad next index, a loop, or an
    /// unreadable descriptor table).
    Broken,
    /// More descriptors than [`Limits::max_descriptors`].
    TooManyDescriptors(usize),
    /// The last descriptor is not writable or has no byte for the status.
    NoStatus,
    /// A descriptor lies (partly) outside guest memory, or its end overflows.
    OutOfMemory {
        /// Its address.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// A device-readable descriptor after a device-writable one.
    ReadableAfterWritable,
    /// Fewer than 16 readable bytes for the header.
    ShortHeader(u64),
    /// An unknown or unsupported request type.
    Unsupported(u32),
    /// A write, discard or write-zeroes on a read-only disk.
    ReadOnly,
    /// Payload of the wrong direction (readable data on a read, writable data on a write...).
    WrongDirection,
    /// A read or write with no payload.
    NoData,
    /// Payload not a whole number of sectors.
    Unaligned(u64),
    /// Payload larger than [`Limits::max_request_bytes`].
    TooLarge(u64),
    /// More data segments than [`Limits::max_segments`].
    TooManySegments(usize),
    /// `sector * 512 + len` overflows.
    Overflow,
    /// The range ends past the capacity.
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Discard/write-zeroes payload not whole 16-byte segments, none, or too many.
    BadRangeSegments(u64),
    /// Flags a discard/write-zeroes segment may not carry.
    BadRangeFlags(u32),
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Empty => write!(f, "empty chain"),
            Malformed::Broken => write!(f, "broken chain (dangling NEXT)"),
            Malformed::TooManyDescriptors(n) => write!(f, "{n} descriptors"),
            Malformed::NoStatus => write!(f, "no writable status byte at the end"),
            Malformed::OutOfMemory { addr, len } => {
                write!(f, "descriptor {addr:#x}+{len} outside guest memory")
            }
            Malformed::ReadableAfterWritable => write!(f, "readable descriptor after writable"),
            Malformed::ShortHeader(n) => write!(f, "header has {n} of 16 bytes"),
            Malformed::Unsupported(t) => write!(f, "unsupported request type {t}"),
            Malformed::ReadOnly => write!(f, "write to a read-only disk"),
            Malformed::WrongDirection => write!(f, "payload in the wrong direction"),
            Malformed::NoData => write!(f, "no payload"),
            Malformed::Unaligned(n) => write!(f, "payload of {n} bytes is not whole sectors"),
            Malformed::TooLarge(n) => write!(f, "payload of {n} bytes is too large"),
            Malformed::TooManySegments(n) => write!(f, "{n} data segments"),
            Malformed::Overflow => write!(f, "sector arithmetic overflows"),
            Malformed::OutOfRange { sector, len } => {
                write!(
                    f,
                    "sector {sector} + {len} bytes is past the end of the disk"
                )
            }
            Malformed::BadRangeSegments(n) => {
                write!(f, "discard/write-zeroes payload of {n} bytes")
            }
            Malformed::BadRangeFlags(fl) => write!(f, "discard/write-zeroes flags {fl:#x}"),
        }
    }
}

/// A request that is answered without I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Where to write the status byte; `None` when the chain has none (used length 0).
    pub status_at: Option<GuestAddress>,
    /// The status to report.
    pub status: Status,
    /// Why.
    pub why: Malformed,
}

impl Rejected {
    /// The used-ring length: the status byte when there is one.
    pub fn used_len(&self) -> u32 {
        u32::from(self.status_at.is_some())
    }
}

/// Read the chain's descriptors once (indirect tables followed by the iterator, which bounds
/// their number by the queue size). A chain whose last descriptor still has `NEXT` was cut
/// short by the iterator and is [`Malformed::Broken`].
pub fn collect_chain<M>(chain: DescriptorChain<M>, max: usize) -> Result<Vec<Desc>, Malformed>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut out = Vec::new();
    let mut dangling = false;
    for d in chain {
        if out.len() >= max {
            return Err(Malformed::TooManyDescriptors(out.len() + 1));
        }
        dangling = d.has_next();
        out.push(Desc {
            addr: d.addr().0,
            len: d.len(),
            writable: d.is_write_only(),
        });
    }
    if out.is_empty() {
        return Err(Malformed::Empty);
    }
    if dangling {
        return Err(Malformed::Broken);
    }
    Ok(out)
}

fn total(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// The segments covering bytes `[from, from + len)` of the byte stream `segs`.
fn sub_segments(segs: &[Seg], mut from: u64, mut len: u64) -> Vec<Seg> {
    let mut out = Vec::new();
    for s in segs {
        let l = u64::from(s.len);
        if from >= l {
            from -= l;
            continue;
        }
        if len == 0 {
            break;
        }
        let take = (l - from).min(len);
        out.push(Seg {
            addr: s.addr + from,
            len: take as u32,
        });
        len -= take;
        from = 0;
    }
    out
}

/// Read `buf.len()` bytes from the start of the byte stream `segs`.
fn read_stream<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Seg],
    skip: u64,
    buf: &mut [u8],
) -> Result<(), Malformed> {
    let mut done = 0usize;
    for s in sub_segments(segs, skip, buf.len() as u64) {
        let end = done + s.len as usize;
        mem.read_slice(&mut buf[done..end], GuestAddress(s.addr))
            .map_err(|_| Malformed::OutOfMemory {
                addr: s.addr,
                len: u64::from(s.len),
            })?;
        done = end;
    }
    Ok(())
}

/// Parse a request from its descriptors (see the module docs for the rules).
pub fn parse<M: GuestMemory + ?Sized>(
    descs: &[Desc],
    mem: &M,
    lim: &Limits,
) -> Result<Request, Rejected> {
    // The status byte first: without it nothing can be reported.
    let status_at = status_byte(descs, mem).map_err(|why| Rejected {
        status_at: None,
        status: Status::IoErr,
        why,
    })?;
    let op = parse_op(descs, mem, lim).map_err(|Refusal(status, why)| Rejected {
        status_at: Some(status_at),
        status,
        why,
    })?;
    Ok(Request {
        op,
        status: status_at,
    })
}

/// Why a chain that has a status byte is refused: the status to report there, and why.
struct Refusal(Status, Malformed);

impl From<Malformed> for Refusal {
    fn from(why: Malformed) -> Refusal {
        Refusal(Status::IoErr, why)
    }
}

/// The guest address of the status byte: the last byte of the last descriptor, which must be
/// writable, non-empty and inside guest memory.
fn status_byte<M: GuestMemory + ?Sized>(
    descs: &[Desc],
    mem: &M,
) -> Result<GuestAddress, Malformed> {
    let Some(last) = descs.last() else {
        return Err(Malformed::Empty);
    };
    if !last.writable || last.len == 0 {
        return Err(Malformed::NoStatus);
    }
    match last.addr.checked_add(u64::from(last.len) - 1) {
        Some(a) if mem.check_range(GuestAddress(a), 1, Permissions::Write) => Ok(GuestAddress(a)),
        _ => Err(Malformed::OutOfMemory {
            addr: last.addr,
            len: u64::from(last.len),
        }),
    }
}

/// The request behind a chain whose status byte is known good.
fn parse_op<M: GuestMemory + ?Sized>(descs: &[Desc], mem: &M, lim: &Limits) -> Result<Op, Refusal> {
    if descs.len() > lim.max_descriptors {
        return Err(Malformed::TooManyDescriptors(descs.len()).into());
    }
    let streams = Streams::split(descs, mem)?;
    let (kind, sector) = streams.header(mem)?;
    match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            Ok(read_write(kind == VIRTIO_BLK_T_OUT, sector, &streams, lim)?)
        }
        VIRTIO_BLK_T_FLUSH => Ok(Op::Flush),
        VIRTIO_BLK_T_GET_ID => {
            if streams.w_data.is_empty() {
                return Err(Malformed::NoData.into());
            }
            Ok(Op::GetId {
                segs: sub_segments(&streams.w_data, 0, ID_BYTES as u64),
            })
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            ranges(kind == VIRTIO_BLK_T_WRITE_ZEROES, &streams, mem, lim)
        }
        other => Err(Refusal(Status::Unsupp, Malformed::Unsupported(other))),
    }
}

/// A chain as two byte streams: the device-readable prefix and the device-writable suffix.
struct Streams {
    /// The readable descriptors (header, then payload or range segments), non-empty ones.
    readable: Vec<Seg>,
    /// Readable bytes in all.
    r_len: u64,
    /// The writable bytes before the status byte.
    w_data: Vec<Seg>,
    /// Their length.
    w_len: u64,
}

impl Streams {
    /// Split into the readable prefix and the writable suffix, each descriptor checked
    /// against guest memory once, zero-length descriptors dropped.
    fn split<M: GuestMemory + ?Sized>(descs: &[Desc], mem: &M) -> Result<Streams, Malformed> {
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        for d in descs {
            let len = u64::from(d.len);
            if d.addr.checked_add(len).is_none() {
                return Err(Malformed::OutOfMemory { addr: d.addr, len });
            }
            if len > 0 {
                let seg = Seg {
                    addr: d.addr,
                    len: d.len,
                };
                if d.writable {
                    writable.push(seg);
                } else {
                    readable.push(seg);
                }
            }
            let perm = if d.writable {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if len > 0 && !mem.check_range(GuestAddress(d.addr), d.len as usize, perm) {
                return Err(Malformed::OutOfMemory { addr: d.addr, len });
            }
        }
        // Device-readable descriptors all come before the device-writable ones.
        if let Some(first_w) = descs.iter().position(|d| d.writable)
            && descs[first_w..].iter().any(|d| !d.writable)
        {
            return Err(Malformed::ReadableAfterWritable);
        }
        let r_len = total(&readable);
        // The status byte is the last writable byte.
        let w_len = total(&writable) - 1;
        let w_data = sub_segments(&writable, 0, w_len);
        Ok(Streams {
            readable,
            r_len,
            w_data,
            w_len,
        })
    }

    /// The header's request type and sector.
    fn header<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(u32, u64), Malformed> {
        if self.r_len < HEADER_LEN {
            return Err(Malformed::ShortHeader(self.r_len));
        }
        let mut hdr = [0u8; HEADER_LEN as usize];
        read_stream(mem, &self.readable, 0, &mut hdr)?;
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        Ok((kind, sector))
    }

    /// The readable bytes after the header.
    fn r_data_len(&self) -> u64 {
        self.r_len - HEADER_LEN
    }
}

/// A read (`write` false) or write of the payload at `sector`.
fn read_write(write: bool, sector: u64, streams: &Streams, lim: &Limits) -> Result<Op, Malformed> {
    if write && lim.read_only {
        return Err(Malformed::ReadOnly);
    }
    // A read carries no readable payload, a write no writable one.
    let (segs, other) = if write {
        (
            sub_segments(&streams.readable, HEADER_LEN, streams.r_data_len()),
            streams.w_len,
        )
    } else {
        (streams.w_data.clone(), streams.r_data_len())
    };
    if other != 0 {
        return Err(Malformed::WrongDirection);
    }
    let len = total(&segs);
    if len == 0 {
        return Err(Malformed::NoData);
    }
    if !len.is_multiple_of(SECTOR) {
        return Err(Malformed::Unaligned(len));
    }
    if len > lim.max_request_bytes {
        return Err(Malformed::TooLarge(len));
    }
    if segs.len() > lim.max_segments {
        return Err(Malformed::TooManySegments(segs.len()));
    }
    let offset = check_range(sector, len, lim)?;
    Ok(if write {
        Op::Write { offset, len, segs }
    } else {
        Op::Read { offset, len, segs }
    })
}

/// A discard, or write-zeroes (`zeroes`), of the 16-byte range segments after the header.
fn ranges<M: GuestMemory + ?Sized>(
    zeroes: bool,
    streams: &Streams,
    mem: &M,
    lim: &Limits,
) -> Result<Op, Refusal> {
    if (zeroes && !lim.write_zeroes) || (!zeroes && !lim.discard) {
        return Err(if lim.read_only {
            Refusal(Status::IoErr, Malformed::ReadOnly)
        } else {
            let kind = if zeroes {
                VIRTIO_BLK_T_WRITE_ZEROES
            } else {
                VIRTIO_BLK_T_DISCARD
            };
            Refusal(Status::Unsupp, Malformed::Unsupported(kind))
        });
    }
    if streams.w_len != 0 {
        return Err(Malformed::WrongDirection.into());
    }
    let r_data_len = streams.r_data_len();
    let n = r_data_len / RANGE_SEGMENT_LEN;
    if r_data_len == 0
        || !r_data_len.is_multiple_of(RANGE_SEGMENT_LEN)
        || n > u64::from(lim.max_range_segments)
    {
        return Err(Malformed::BadRangeSegments(r_data_len).into());
    }
    let mut ranges = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut seg = [0u8; RANGE_SEGMENT_LEN as usize];
        read_stream(
            mem,
            &streams.readable,
            HEADER_LEN + i * RANGE_SEGMENT_LEN,
            &mut seg,
        )?;
        ranges.push(range(zeroes, seg, lim)?);
    }
    Ok(if zeroes {
        Op::WriteZeroes(ranges)
    } else {
        Op::Discard(ranges)
    })
}

/// One discard/write-zeroes segment `{le64 sector, le32 sectors, le32 flags}`, checked.
fn range(
    zeroes: bool,
    seg: [u8; RANGE_SEGMENT_LEN as usize],
    lim: &Limits,
) -> Result<Range, Refusal> {
    let sector = u64::from_le_bytes([
        seg[0], seg[1], seg[2], seg[3], seg[4], seg[5], seg[6], seg[7],
    ]);
    let sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
    let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
    let allowed = if zeroes {
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
    } else {
        0
    };
    if flags & !allowed != 0 {
        return Err(Refusal(Status::Unsupp, Malformed::BadRangeFlags(flags)));
    }
    if sectors == 0 || sectors > lim.max_range_sectors {
        return Err(Malformed::BadRangeSegments(u64::from(sectors) * SECTOR).into());
    }
    let len = u64::from(sectors) * SECTOR;
    let offset = check_range(sector, len, lim)?;
    Ok(Range {
        offset,
        len,
        unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
    })
}

/// `sector * 512`, checked against overflow and the capacity for `len` bytes.
fn check_range(sector: u64, len: u64, lim: &Limits) -> Result<u64, Malformed> {
    let offset = sector.checked_mul(SECTOR).ok_or(Malformed::Overflow)?;
    let end = offset.checked_add(len).ok_or(Malformed::Overflow)?;
    if end > lim.capacity_bytes() {
        return Err(Malformed::OutOfRange { sector, len });
    }
    Ok(offset)
}

/// The id bytes a get-id request returns for `serial`: at most 20, not NUL-terminated when
/// all 20 are used (as the spec says).
pub fn id_bytes(serial: &str) -> Vec<u8> {
    serial.as_bytes().iter().copied().take(ID_BYTES).collect()
}

#[cfg(test)]
mod tests;
