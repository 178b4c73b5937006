//! Transmission phase: request headers in, reply headers out.
//!
//! [`parse_header`] reads the fixed 28-byte request; [`RequestHeader::check`] validates it
//! against the export and the negotiated options and yields either a [`Checked`] command or
//! the errno to reply with. A refused `WRITE` still has its payload on the wire:
//! [`RequestHeader::payload_len`] says how many bytes the server must skip (without storing
//! them) to stay in sync, so a bad request costs the client an error, not the connection.

use alloc::vec::Vec;

use super::handshake::Negotiated;
use super::wire::{self, be16, be32, be64, cflag, chunk, cmd, errno};
use super::ExportInfo;

pub const REQUEST_LEN: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Incomplete,
    /// Not a request: the stream is out of sync, close the connection.
    BadMagic(u32),
    Header(RequestHeader),
}

pub fn parse_header(input: &[u8]) -> Parsed {
    let Some(b) = input.get(..REQUEST_LEN) else {
        return Parsed::Incomplete;
    };
    let magic = be32(b);
    if magic != wire::REQUEST_MAGIC {
        return Parsed::BadMagic(magic);
    }
    Parsed::Header(RequestHeader {
        flags: be16(&b[4..]),
        kind: be16(&b[6..]),
        cookie: be64(&b[8..]),
        offset: be64(&b[16..]),
        length: be32(&b[24..]),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
}

/// A request that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub cmd: Command,
    pub fua: bool,
    /// WRITE_ZEROES: the zeroes must be written, not punched as a hole.
    pub no_hole: bool,
    /// READ: reply in one chunk.
    pub df: bool,
    /// BLOCK_STATUS: one extent is enough.
    pub req_one: bool,
    pub fast_zero: bool,
}

const KNOWN_FLAGS: u16 =
    cflag::FUA | cflag::NO_HOLE | cflag::DF | cflag::REQ_ONE | cflag::FAST_ZERO;

impl RequestHeader {
    /// Bytes following the header on the wire (the payload of a write, even a refused one).
    pub fn payload_len(&self) -> u64 {
        if self.kind == cmd::WRITE {
            u64::from(self.length)
        } else {
            0
        }
    }

    /// Validates the request; `Err(errno)` is the error to reply with.
    pub fn check(&self, export: &ExportInfo, neg: &Negotiated) -> Result<Checked, u32> {
        let c = match self.kind {
            cmd::READ => Command::Read,
            cmd::WRITE => Command::Write,
            cmd::DISC => Command::Disconnect,
            cmd::FLUSH => Command::Flush,
            cmd::TRIM => Command::Trim,
            cmd::CACHE => Command::Cache,
            cmd::WRITE_ZEROES => Command::WriteZeroes,
            cmd::BLOCK_STATUS => Command::BlockStatus,
            _ => return Err(errno::EINVAL),
        };
        let f = self.flags;
        let has = |bit| f & bit != 0;
        if f & !KNOWN_FLAGS != 0
            || (has(cflag::NO_HOLE) || has(cflag::FAST_ZERO)) && c != Command::WriteZeroes
            || has(cflag::DF) && (c != Command::Read || !neg.structured)
            || has(cflag::REQ_ONE) && c != Command::BlockStatus
        {
            return Err(errno::EINVAL);
        }
        let checked = Checked {
            cmd: c,
            fua: has(cflag::FUA),
            no_hole: has(cflag::NO_HOLE),
            df: has(cflag::DF),
            req_one: has(cflag::REQ_ONE),
            fast_zero: has(cflag::FAST_ZERO),
        };
        let writes = matches!(c, Command::Write | Command::Trim | Command::WriteZeroes);
        match c {
            Command::Disconnect => return Ok(checked),
            Command::Flush => {
                return if self.offset == 0 && self.length == 0 {
                    Ok(checked)
                } else {
                    Err(errno::EINVAL)
                };
            }
            Command::BlockStatus if !neg.base_allocation => return Err(errno::EINVAL),
            Command::Trim if !export.can_trim => return Err(errno::EINVAL),
            Command::WriteZeroes if !export.can_write_zeroes => return Err(errno::EINVAL),
            _ => {}
        }
        if writes && export.read_only {
            return Err(errno::EPERM);
        }
        if self.length == 0 {
            return Err(errno::EINVAL);
        }
        if matches!(c, Command::Read | Command::Write) && self.length > export.max_payload {
            return Err(errno::EINVAL);
        }
        let block = u64::from(export.min_block.max(1));
        if !self.offset.is_multiple_of(block) || !u64::from(self.length).is_multiple_of(block) {
            return Err(errno::EINVAL);
        }
        let end = self.offset.checked_add(u64::from(self.length));
        if end.is_none_or(|e| e > export.size) {
            return Err(if writes { errno::ENOSPC } else { errno::EINVAL });
        }
        Ok(checked)
    }
}

/// A simple reply header (followed by the data of a successful simple read).
pub fn simple_reply(out: &mut Vec<u8>, cookie: u64, error: u32) {
    out.extend_from_slice(&wire::SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// A structured reply chunk header announcing `len` payload bytes.
pub fn chunk_header(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, len: u32) {
    out.extend_from_slice(&wire::STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// The final `NBD_REPLY_TYPE_NONE` chunk of a successful structured reply.
pub fn structured_done(out: &mut Vec<u8>, cookie: u64) {
    chunk_header(out, chunk::FLAG_DONE, chunk::NONE, cookie, 0);
}

/// An error chunk (final).
pub fn structured_error(out: &mut Vec<u8>, cookie: u64, error: u32, msg: &str) {
    let msg = &msg.as_bytes()[..msg.len().min(256)];
    chunk_header(
        out,
        chunk::FLAG_DONE,
        chunk::ERROR,
        cookie,
        6 + msg.len() as u32,
    );
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

/// The header of an `OFFSET_DATA` chunk; the caller appends `data_len` bytes.
pub fn offset_data(out: &mut Vec<u8>, cookie: u64, offset: u64, data_len: u32, done: bool) {
    let flags = if done { chunk::FLAG_DONE } else { 0 };
    chunk_header(out, flags, chunk::OFFSET_DATA, cookie, 8 + data_len);
    out.extend_from_slice(&offset.to_be_bytes());
}

/// A `BLOCK_STATUS` chunk for `base:allocation`: `(length, flags)` extents (final).
pub fn block_status(out: &mut Vec<u8>, cookie: u64, extents: &[(u32, u32)]) {
    chunk_header(
        out,
        chunk::FLAG_DONE,
        chunk::BLOCK_STATUS,
        cookie,
        4 + 8 * extents.len() as u32,
    );
    out.extend_from_slice(&wire::BASE_ALLOCATION_ID.to_be_bytes());
    for (len, flags) in extents {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
    }
}
