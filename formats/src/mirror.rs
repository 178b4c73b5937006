//! The NVLOG mirror stream (issue 16): how one host's copy of a node's write log reaches the
//! other host's copy over the interconnect, so that a write is acknowledged only once it is in
//! both (ONTAP's HA rule, DRBD's protocol C).
//!
//! The stream is byte-faithful and knows nothing of the log's structure. The sender ships the
//! region's bytes in the order the guest wrote them (`Write` frames: payload pages, then the
//! record header, then superblock updates), then a `Commit` frame naming the highest NVLOG
//! sequence number those bytes complete. The receiver applies the writes to its copy in order,
//! so its copy is always a prefix-consistent image of the sender's; after a `Commit` it answers
//! `Ack`. The sender then tells the guest (a region word) that records up to that sequence
//! number are mirrored and may be acknowledged to clients.
//!
//! Every frame is a 48-byte header and at most [`MAX_PAYLOAD`] bytes, framed, sequenced
//! (`stream_seq` +1 per write and commit, from 1 after `Hello`) and checksummed (CRC32C over the header
//! with `crc` = 0, then the payload). A frame that fails any check ends the connection: the
//! two sides reconnect and resynchronise (`Hello` carries the receiver's last applied
//! sequence, and the sender resends the whole log region when it cannot continue from there).
//! Nothing a peer sends can make either side buffer more than one frame.
//!
//! Format: `FORMATS.md`, "NVLOG mirror stream".

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::mgmt_auth::{Key, KEY_LEN, NONCE_LEN};
use crate::nvlog::crc32c;

/// `TNMR`.
pub const MAGIC: [u8; 4] = *b"TNMR";
pub const VERSION: u16 = 1;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = core::mem::size_of::<FrameHeader>();
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Which end of a link: each proves the key to the other, bound to its role, so that
/// neither a rogue receiver (acknowledging what it does not hold) nor a rogue sender (writing
/// into a log copy) is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sender,
    Receiver,
}

/// What the HMAC covers after the nonce and before the role byte.
pub const AUTH_CONTEXT: &[u8] = b"tandem-mirror";

fn auth_mac(key: &Key, nonce: &[u8; NONCE_LEN], role: Role) -> hmac::Hmac<Sha256> {
    let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&key.0[..KEY_LEN])
        .expect("HMAC takes any key length");
    m.update(nonce);
    m.update(AUTH_CONTEXT);
    m.update(&[match role {
        Role::Sender => b'S',
        Role::Receiver => b'R',
    }]);
    m
}

/// The link handshake: each side sends a fresh nonce, then answers the other's with
/// HMAC-SHA256(key, nonce || "tandem-mirror" || role). No secret crosses the wire.
pub fn auth_tag(key: &Key, peer_nonce: &[u8; NONCE_LEN], my_role: Role) -> [u8; 32] {
    auth_mac(key, peer_nonce, my_role)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `tag` answers `my_nonce` from a peer in `peer_role` (constant time).
pub fn auth_verify(key: &Key, my_nonce: &[u8; NONCE_LEN], peer_role: Role, tag: &[u8; 32]) -> bool {
    auth_mac(key, my_nonce, peer_role).verify_slice(tag).is_ok()
}

/// Bytes of a `Hello` payload: the copy's newest valid superblock (72 bytes) and which of
/// its two slots holds it (1 byte). A `Hello` without payload: the copy holds no log.
pub const HELLO_PAYLOAD: usize = core::mem::size_of::<crate::nvlog::Superblock>() + 1;

/// The `Hello` payload that tells the sender what the copy's superblock is (see
/// `mirror_ship::Shipper::reset`).
pub fn hello_payload(copy: Option<(usize, crate::nvlog::Superblock)>) -> alloc::vec::Vec<u8> {
    let mut out = alloc::vec::Vec::new();
    if let Some((slot, sb)) = copy {
        out.extend_from_slice(sb.as_bytes());
        out.push(slot.min(1) as u8);
    }
    out
}

/// Reads a `Hello` payload back; `None` for an empty one or a superblock that is not valid.
pub fn parse_hello(payload: &[u8]) -> Option<(usize, crate::nvlog::Superblock)> {
    let (sb, rest) = crate::nvlog::Superblock::read_from_prefix(payload).ok()?;
    (sb.valid() && rest.len() == 1 && rest[0] <= 1).then_some((usize::from(rest[0]), sb))
}

/// A frame header (little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct FrameHeader {
    pub magic: [u8; 4],
    pub version: u16,
    /// A [`Kind`].
    pub kind: u16,
    /// +1 per `Write` and `Commit` of a connection, from 1; `Hello` and `Heartbeat` carry the
    /// last one sent and do not advance it.
    pub stream_seq: u64,
    /// The log this stream mirrors (the NVLOG superblock's `log_id`).
    pub log_id: u64,
    /// `Write`: byte offset in the log region. `Commit`, `Ack`: an NVLOG sequence number.
    /// `Hello`: the last stream sequence number the receiver applied (0: none).
    pub arg: u64,
    /// Payload bytes (only `Write` has any).
    pub len: u32,
    pub reserved: u32,
    /// CRC32C over this header (with `crc` = 0) and the payload.
    pub crc: u32,
    pub pad: u32,
}

/// What a frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Opens a connection (either side); `arg` as above.
    Hello,
    /// `len` bytes at `arg` in the log region.
    Write,
    /// The writes so far complete the records up to sequence number `arg`.
    Commit,
    /// The receiver holds everything up to the commit of sequence number `arg`.
    Ack,
    /// Nothing to say; keeps an idle link observably alive.
    Heartbeat,
}

impl Kind {
    fn code(self) -> u16 {
        match self {
            Kind::Hello => 1,
            Kind::Write => 2,
            Kind::Commit => 3,
            Kind::Ack => 4,
            Kind::Heartbeat => 5,
        }
    }

    fn from_code(c: u16) -> Option<Self> {
        Some(match c {
            1 => Kind::Hello,
            2 => Kind::Write,
            3 => Kind::Commit,
            4 => Kind::Ack,
            5 => Kind::Heartbeat,
            _ => return None,
        })
    }
}

/// One frame, borrowed from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: Kind,
    pub stream_seq: u64,
    pub log_id: u64,
    pub arg: u64,
    pub payload: &'a [u8],
}

/// Why bytes are not a frame. Each ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    BadMagic,
    BadVersion(u16),
    BadKind(u16),
    /// A payload over [`MAX_PAYLOAD`], or one on a frame that takes none.
    BadLength(u32),
    BadCrc,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::BadMagic => write!(f, "not a mirror frame (bad magic)"),
            FrameError::BadVersion(v) => {
                write!(f, "mirror frame version {v} (this side: {VERSION})")
            }
            FrameError::BadKind(k) => write!(f, "unknown mirror frame kind {k}"),
            FrameError::BadLength(n) => write!(f, "mirror frame payload of {n} bytes refused"),
            FrameError::BadCrc => write!(f, "mirror frame checksum mismatch"),
        }
    }
}

impl<'a> Frame<'a> {
    /// Appends the encoded frame to `out`. A `Write` payload over [`MAX_PAYLOAD`] is a bug of
    /// the caller (split it first): it panics.
    pub fn encode(&self, out: &mut alloc::vec::Vec<u8>) {
        assert!(
            self.payload.len() <= MAX_PAYLOAD,
            "mirror frame payload too long"
        );
        let mut h = FrameHeader {
            magic: MAGIC,
            version: VERSION,
            kind: self.kind.code(),
            stream_seq: self.stream_seq,
            log_id: self.log_id,
            arg: self.arg,
            len: self.payload.len() as u32,
            reserved: 0,
            crc: 0,
            pad: 0,
        };
        h.crc = crc32c(&[h.as_bytes(), self.payload]);
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(self.payload);
    }

    /// Checks a header on its own: how many payload bytes follow it.
    pub fn payload_len(header: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
        let h = FrameHeader::read_from_bytes(header).map_err(|_| FrameError::BadMagic)?;
        if h.magic != MAGIC {
            return Err(FrameError::BadMagic);
        }
        if h.version != VERSION {
            return Err(FrameError::BadVersion(h.version));
        }
        let kind = Kind::from_code(h.kind).ok_or(FrameError::BadKind(h.kind))?;
        let len = h.len as usize;
        let allowed = match kind {
            Kind::Write => MAX_PAYLOAD,
            Kind::Hello => HELLO_PAYLOAD,
            _ => 0,
        };
        if len > allowed || (kind == Kind::Hello && len != 0 && len != HELLO_PAYLOAD) {
            return Err(FrameError::BadLength(h.len));
        }
        Ok(len)
    }

    /// Decodes one whole frame: `bytes` is its header and exactly its payload.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, FrameError> {
        let (head, payload) = bytes
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(FrameError::BadMagic)?;
        if Self::payload_len(head)? != payload.len() {
            return Err(FrameError::BadLength(payload.len() as u32));
        }
        let mut h = FrameHeader::read_from_bytes(head).map_err(|_| FrameError::BadMagic)?;
        let crc = h.crc;
        h.crc = 0;
        if crc32c(&[h.as_bytes(), payload]) != crc {
            return Err(FrameError::BadCrc);
        }
        Ok(Frame {
            kind: Kind::from_code(h.kind).ok_or(FrameError::BadKind(h.kind))?,
            stream_seq: h.stream_seq,
            log_id: h.log_id,
            arg: h.arg,
            payload,
        })
    }
}

/// Splits a byte stream into frames as it arrives, holding at most one frame.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: alloc::vec::Vec<u8>,
    /// The length of the frame in `buf`, once its header has been checked.
    want: Option<usize>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes bytes from `input` (returning how many) until one frame is complete, then hands
    /// it to `f`. Call again with the rest. An error ends the connection.
    pub fn feed(
        &mut self,
        input: &[u8],
        f: &mut dyn FnMut(Frame<'_>),
    ) -> Result<usize, FrameError> {
        let want = match self.want {
            Some(n) => n,
            None => HEADER_LEN,
        };
        let take = (want - self.buf.len()).min(input.len());
        self.buf.extend_from_slice(&input[..take]);
        if self.buf.len() < want {
            return Ok(take);
        }
        if self.want.is_none() {
            let head: &[u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().expect("header");
            let len = Frame::payload_len(head)?;
            self.want = Some(HEADER_LEN + len);
            if len > 0 {
                return Ok(take);
            }
        }
        let frame = Frame::decode(&self.buf)?;
        f(frame);
        self.buf.clear();
        self.want = None;
        Ok(take)
    }

    /// Bytes held of an incomplete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Why a receiver refuses a frame. Each ends the connection (and leads to a resync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// A frame out of order: the sequence number expected and the one received.
    OutOfOrder { expected: u64, got: u64 },
    /// A frame of another log.
    WrongLog(u64),
    /// A write outside the region.
    OutOfRange { offset: u64, len: usize },
    /// A frame the receiver never takes (`Ack` is the receiver's own word).
    Unexpected(Kind),
}

/// The receiving side of one stream: checks order and bounds, applies writes, and answers
/// each commit with the sequence number to acknowledge.
#[derive(Debug, Clone)]
pub struct Receiver {
    log_id: u64,
    region_len: u64,
    /// The last stream sequence number applied.
    applied: u64,
    /// The highest NVLOG sequence number committed.
    committed: u64,
}

impl Receiver {
    /// A receiver for `log_id`, whose copy of the region is `region_len` bytes, that has
    /// applied frames up to `applied` (0 on a fresh copy).
    pub fn new(log_id: u64, region_len: u64, applied: u64) -> Self {
        Self {
            log_id,
            region_len,
            applied,
            committed: 0,
        }
    }

    /// The log this receiver keeps a copy of.
    pub fn log_id(&self) -> u64 {
        self.log_id
    }

    /// The last stream sequence number applied (what `Hello` tells the sender).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The highest NVLOG sequence number committed.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Takes one frame: `write(offset, bytes)` applies a write to the copy. Returns the NVLOG
    /// sequence number to acknowledge after a commit.
    pub fn take(
        &mut self,
        frame: &Frame<'_>,
        write: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<Option<u64>, StreamError> {
        if frame.log_id != self.log_id {
            return Err(StreamError::WrongLog(frame.log_id));
        }
        if frame.kind == Kind::Hello || frame.kind == Kind::Heartbeat {
            return Ok(None);
        }
        let expected = self.applied + 1;
        if frame.stream_seq != expected {
            return Err(StreamError::OutOfOrder {
                expected,
                got: frame.stream_seq,
            });
        }
        let ack = match frame.kind {
            Kind::Write => {
                let len = frame.payload.len();
                let end = frame.arg.checked_add(len as u64);
                if end.is_none_or(|e| e > self.region_len) {
                    return Err(StreamError::OutOfRange {
                        offset: frame.arg,
                        len,
                    });
                }
                write(frame.arg, frame.payload);
                None
            }
            Kind::Commit => {
                self.committed = self.committed.max(frame.arg);
                Some(self.committed)
            }
            other => return Err(StreamError::Unexpected(other)),
        };
        self.applied = frame.stream_seq;
        Ok(ack)
    }
}

/// Byte offset in page 0 of a node's NVLOG region of the [`MirrorBlock`] (between the two
/// superblock copies, which take 72 bytes each at 0 and 2048).
pub const BLOCK_AT: usize = 1024;
/// `TNDMMIRB`.
pub const BLOCK_MAGIC: [u8; 8] = *b"TNDMMIRB";
pub const BLOCK_VERSION: u32 = 1;
/// The sender rewrites its block at least this often, so the guest can tell a live sender
/// from a dead one by the `beat` counter.
pub const BEAT_MS: u64 = 100;

/// What the mirror sender on the node's host tells the guest, in the guest's own region.
/// The host is its only writer; the guest only reads it. The sender writes the whole block
/// at once with a new CRC; a read that catches it half written fails the CRC and the guest
/// keeps the last good one.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq)]
pub struct MirrorBlock {
    pub magic: [u8; 8],
    pub version: u32,
    /// A [`LinkState`] value.
    pub state: u32,
    /// The NVLOG (superblock `log_id`) that `mirrored` counts in.
    pub log_id: u64,
    /// Every record of that log up to this sequence number is in the other host's copy, or
    /// retired (on disk).
    pub mirrored: u64,
    /// Incremented on every rewrite.
    pub beat: u64,
    pub reserved: [u8; 20],
    /// CRC32C of the bytes above.
    pub crc: u32,
}

const _: () = assert!(core::mem::size_of::<MirrorBlock>() == 64);
// The block sits between the superblock copies.
const _: () = assert!(BLOCK_AT >= 72 && BLOCK_AT + 64 <= 2048);

/// The link as the sender sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LinkState {
    /// Connected: `mirrored` advances with the guest's commits.
    Up = 1,
    /// Not connected (the peer host is down, the link is cut, or it refused the key).
    Down = 2,
    /// Not connected, and the peer's copy is marked outdated where the other host checks
    /// before it starts this node (so it is never replayed): the sender does this only once
    /// every record the copy vouched for is retired (on disk). Only now may the guest
    /// acknowledge writes that are on disk but not in the copy (`mirror.policy=degraded`).
    Outdated = 3,
}

impl MirrorBlock {
    pub fn new(state: LinkState, log_id: u64, mirrored: u64, beat: u64) -> Self {
        let mut b = Self {
            magic: BLOCK_MAGIC,
            version: BLOCK_VERSION,
            state: state as u32,
            log_id,
            mirrored,
            beat,
            reserved: [0; 20],
            crc: 0,
        };
        b.crc = crc32c(&[&b.as_bytes()[..core::mem::offset_of!(MirrorBlock, crc)]]);
        b
    }

    /// The block in `bytes` (at least 64), if it is whole and valid.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let (b, _) = Self::read_from_prefix(bytes).ok()?;
        let crc = crc32c(&[&b.as_bytes()[..core::mem::offset_of!(MirrorBlock, crc)]]);
        (b.magic == BLOCK_MAGIC && b.version == BLOCK_VERSION && b.crc == crc).then_some(b)
    }

    pub fn link(&self) -> Option<LinkState> {
        match self.state {
            1 => Some(LinkState::Up),
            2 => Some(LinkState::Down),
            3 => Some(LinkState::Outdated),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn frame(kind: Kind, seq: u64, arg: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Frame {
            kind,
            stream_seq: seq,
            log_id: 7,
            arg,
            payload,
        }
        .encode(&mut out);
        out
    }

    #[test]
    fn the_handshake_binds_key_nonce_and_role() {
        let (k, other) = (Key([3; 32]), Key([4; 32]));
        let nonce = [9; 32];
        let tag = auth_tag(&k, &nonce, Role::Sender);
        assert!(auth_verify(&k, &nonce, Role::Sender, &tag));
        assert!(!auth_verify(&other, &nonce, Role::Sender, &tag));
        assert!(!auth_verify(&k, &[8; 32], Role::Sender, &tag));
        assert!(
            !auth_verify(&k, &nonce, Role::Receiver, &tag),
            "a reflected tag"
        );
        let mgmt = crate::mgmt_auth::response(&k, &nonce);
        assert!(
            !auth_verify(&k, &nonce, Role::Sender, &mgmt),
            "a management response"
        );
    }

    #[test]
    fn frames_round_trip_and_every_damage_is_caught() {
        let bytes = frame(Kind::Write, 1, 4096, b"payload");
        let f = Frame::decode(&bytes).unwrap();
        assert_eq!(
            (f.kind, f.stream_seq, f.log_id, f.arg, f.payload),
            (Kind::Write, 1, 7, 4096, &b"payload"[..])
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(
                Frame::decode(&bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert!(Frame::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut long = frame(Kind::Commit, 2, 9, b"");
        long[32] = 1; // a payload on a commit
        assert_eq!(Frame::decode(&long), Err(FrameError::BadLength(1)));
    }

    #[test]
    fn the_decoder_takes_any_split_and_holds_one_frame_at_most() {
        let mut stream = frame(Kind::Hello, 0, 0, b"");
        stream.extend(frame(Kind::Write, 1, 0, &[5; 3000]));
        stream.extend(frame(Kind::Commit, 2, 11, b""));
        for chunk in [1, 7, 48, 49, 1000, stream.len()] {
            let mut d = Decoder::new();
            let mut seen = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let end = chunk.min(rest.len());
                let mut piece = &rest[..end];
                while !piece.is_empty() {
                    let n = d
                        .feed(piece, &mut |f| seen.push((f.kind, f.payload.len())))
                        .unwrap();
                    piece = &piece[n..];
                    assert!(d.pending() <= HEADER_LEN + 3000);
                }
                rest = &rest[end..];
            }
            assert_eq!(
                seen,
                [(Kind::Hello, 0), (Kind::Write, 3000), (Kind::Commit, 0)],
                "chunk {chunk}"
            );
        }
        let mut huge = frame(Kind::Write, 1, 0, b"");
        huge[32..36].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        let err = Decoder::new().feed(&huge, &mut |_| {});
        assert_eq!(err, Err(FrameError::BadLength(MAX_PAYLOAD as u32 + 1)));
    }

    #[test]
    fn the_receiver_applies_in_order_and_acknowledges_commits() {
        let mut copy = vec![0u8; 8192];
        let mut r = Receiver::new(7, copy.len() as u64, 0);
        let frames = [
            frame(Kind::Write, 1, 4096, &[1; 100]),
            frame(Kind::Write, 2, 0, &[2; 64]),
            frame(Kind::Commit, 3, 41, b""),
        ];
        let mut acks = Vec::new();
        for b in &frames {
            let f = Frame::decode(b).unwrap();
            let ack = r
                .take(&f, &mut |o, d| {
                    copy[o as usize..o as usize + d.len()].copy_from_slice(d)
                })
                .unwrap();
            acks.extend(ack);
        }
        assert_eq!(acks, [41]);
        assert_eq!((r.applied(), r.committed()), (3, 41));
        assert_eq!(&copy[4096..4196], &[1; 100][..]);
        assert_eq!(&copy[..64], &[2; 64][..]);

        let take = |b: &[u8]| r.clone().take(&Frame::decode(b).unwrap(), &mut |_, _| {});
        assert_eq!(
            take(&frame(Kind::Write, 5, 0, b"x")),
            Err(StreamError::OutOfOrder {
                expected: 4,
                got: 5
            })
        );
        assert_eq!(
            take(&frame(Kind::Write, 4, 8190, b"xyz")),
            Err(StreamError::OutOfRange {
                offset: 8190,
                len: 3
            })
        );
        assert_eq!(
            take(&frame(Kind::Write, 4, u64::MAX, b"x")),
            Err(StreamError::OutOfRange {
                offset: u64::MAX,
                len: 1
            })
        );
        assert_eq!(
            take(&frame(Kind::Ack, 4, 1, b"")),
            Err(StreamError::Unexpected(Kind::Ack))
        );
        let mut other = frame(Kind::Commit, 4, 1, b"");
        other[16] = 8; // log_id 8, checksum redone
        let mut h = FrameHeader::read_from_bytes(&other[..HEADER_LEN]).unwrap();
        h.crc = 0;
        let crc = crc32c(&[h.as_bytes()]);
        other[40..44].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(take(&other), Err(StreamError::WrongLog(8)));
    }

    #[test]
    fn the_mirror_block_round_trips_and_a_torn_one_is_refused() {
        let b = MirrorBlock::new(LinkState::Up, 0xabc, 41, 7);
        let bytes = b.as_bytes().to_vec();
        assert_eq!(MirrorBlock::parse(&bytes), Some(b));
        assert_eq!(b.link(), Some(LinkState::Up));
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x10;
            assert_eq!(MirrorBlock::parse(&t), None, "byte {i} flipped");
        }
        assert_eq!(MirrorBlock::parse(&bytes[..63]), None);
    }

    #[test]
    fn hello_carries_the_copy_superblock_or_nothing() {
        let mut sb = crate::nvlog::Superblock::read_from_bytes(&[0u8; 72]).unwrap();
        sb.magic = crate::nvlog::SUPER_MAGIC;
        sb.version = crate::nvlog::VERSION;
        sb.log_id = 77;
        sb.retired_seq = 5;
        sb.seal();
        let p = hello_payload(Some((1, sb)));
        assert_eq!(parse_hello(&p), Some((1, sb)));
        assert_eq!(parse_hello(&hello_payload(None)), None);
        let mut out = Vec::new();
        Frame {
            kind: Kind::Hello,
            stream_seq: 0,
            log_id: 7,
            arg: 3,
            payload: &p,
        }
        .encode(&mut out);
        let f = Frame::decode(&out).unwrap();
        assert_eq!(parse_hello(f.payload), Some((1, sb)));
        // Any other length of Hello payload is refused.
        let mut bad = Vec::new();
        Frame {
            kind: Kind::Hello,
            stream_seq: 0,
            log_id: 7,
            arg: 3,
            payload: &p[..10],
        }
        .encode(&mut bad);
        assert!(Frame::decode(&bad).is_err());
    }
}
