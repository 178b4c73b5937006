//! What travels on the rings: requests naming pool buffers, and their completions.

use crate::error::Error;
use crate::pool::BufId;

/// Operations across device kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    // Block devices.
    Read = 0,
    Write = 1,
    Flush = 2,
    Discard = 3,
    WriteZeroes = 4,
    // Network devices.
    Send = 5,
    Recv = 6,
    // Memory regions.
    Load = 7,
    Store = 8,
    Persist = 9,
}

impl Op {
    pub const ALL: [Op; 10] = [
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Discard,
        Op::WriteZeroes,
        Op::Send,
        Op::Recv,
        Op::Load,
        Op::Store,
        Op::Persist,
    ];

    /// Whether the op moves data through its scatter-gather list.
    pub fn has_data(self) -> bool {
        matches!(
            self,
            Op::Read | Op::Write | Op::Send | Op::Recv | Op::Load | Op::Store
        )
    }

    /// Whether the device writes into the buffers (as opposed to reading them).
    pub fn device_writes(self) -> bool {
        matches!(self, Op::Read | Op::Recv | Op::Load)
    }
}

/// Part of a pool buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub buf: BufId,
    pub offset: u32,
    pub len: u32,
}

impl Segment {
    pub fn whole(buf: BufId, len: usize) -> Self {
        Self {
            buf,
            offset: 0,
            len: len as u32,
        }
    }
}

/// Most segments in one request.
pub const MAX_SEGMENTS: usize = 32;

/// A scatter-gather list kept inline, so submitting a request allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SgList {
    segs: [Segment; MAX_SEGMENTS],
    n: u8,
}

impl SgList {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn one(seg: Segment) -> Self {
        let mut l = Self::new();
        let _ = l.push(seg);
        l
    }

    pub fn push(&mut self, seg: Segment) -> Result<(), Error> {
        let slot = self
            .segs
            .get_mut(self.n as usize)
            .ok_or(Error::TooManySegments)?;
        *slot = seg;
        self.n += 1;
        Ok(())
    }

    pub fn as_slice(&self) -> &[Segment] {
        &self.segs[..self.n as usize]
    }

    pub fn len(&self) -> usize {
        self.n as usize
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Total bytes described.
    pub fn total(&self) -> u64 {
        self.as_slice().iter().map(|s| u64::from(s.len)).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    /// Force unit access: the write is durable when it completes.
    pub fua: bool,
    /// Byte offset on the device (block devices, memory regions).
    pub offset: u64,
    /// Bytes affected by ops without data (discard, write-zeroes); ignored otherwise.
    pub len: u64,
    pub sg: SgList,
    /// Returned unchanged in the completion.
    pub tag: u64,
}

impl Request {
    fn new(op: Op, offset: u64, sg: SgList, tag: u64) -> Self {
        Self {
            op,
            fua: false,
            offset,
            len: 0,
            sg,
            tag,
        }
    }

    pub fn read(offset: u64, sg: SgList, tag: u64) -> Self {
        Self::new(Op::Read, offset, sg, tag)
    }

    pub fn write(offset: u64, sg: SgList, tag: u64) -> Self {
        Self::new(Op::Write, offset, sg, tag)
    }

    pub fn flush(tag: u64) -> Self {
        Self::new(Op::Flush, 0, SgList::new(), tag)
    }

    pub fn discard(offset: u64, len: u64, tag: u64) -> Self {
        Self {
            len,
            ..Self::new(Op::Discard, offset, SgList::new(), tag)
        }
    }

    pub fn write_zeroes(offset: u64, len: u64, tag: u64) -> Self {
        Self {
            len,
            ..Self::new(Op::WriteZeroes, offset, SgList::new(), tag)
        }
    }

    pub fn with_fua(mut self) -> Self {
        self.fua = true;
        self
    }

    /// Bytes the request covers on the device.
    pub fn byte_len(&self) -> u64 {
        if self.op.has_data() {
            self.sg.total()
        } else {
            self.len
        }
    }
}

/// The outcome of one request: bytes transferred, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub tag: u64,
    pub result: Result<u32, Error>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sg_list_is_bounded() {
        let mut l = SgList::new();
        for i in 0..MAX_SEGMENTS {
            l.push(Segment::whole(BufId(i as u32), 512)).unwrap();
        }
        assert_eq!(l.push(Segment::default()), Err(Error::TooManySegments));
        assert_eq!(l.total(), 512 * MAX_SEGMENTS as u64);
    }

    #[test]
    fn byte_len_by_op() {
        let sg = SgList::one(Segment::whole(BufId(0), 4096));
        assert_eq!(Request::write(0, sg, 1).byte_len(), 4096);
        assert_eq!(Request::discard(0, 1 << 20, 1).byte_len(), 1 << 20);
        assert!(Request::write(0, sg, 1).with_fua().fua);
        assert!(Op::Read.device_writes() && !Op::Write.device_writes());
    }
}
