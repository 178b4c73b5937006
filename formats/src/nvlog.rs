//! On-region formats of the NVLOG (described in FORMATS.md): the superblock and the record
//! header. `#[repr(C)]`, little-endian, magic + version + CRC32C.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const PAGE: usize = 4096;
pub const SUPER_MAGIC: [u8; 8] = *b"TNDMNVLG";
pub const RECORD_MAGIC: u32 = 0x5245_4331; // "REC1"
/// Version 2 added zero and trim records (`flags`); a version 1 log has data records only and
/// is read as it is.
pub const VERSION: u32 = 2;
pub const VERSION_1: u32 = 1;
/// `RecordHeader::flags`: the record zeroes its range (WRITE_ZEROES); no payload.
pub const FLAG_ZERO: u32 = 1;
/// `RecordHeader::flags`: the record discards its range (TRIM); no payload.
pub const FLAG_TRIM: u32 = 2;
/// Record headers per header page.
pub const HEADERS_PER_PAGE: usize = PAGE / core::mem::size_of::<RecordHeader>();

pub static CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// CRC32C (Castagnoli) of several byte runs.
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut d = CRC.digest();
    for p in parts {
        d.update(p);
    }
    d.finalize()
}

/// Page 0 of the region.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq)]
pub struct Superblock {
    pub magic: [u8; 8],
    pub version: u32,
    /// Pages in the region (page 0 included).
    pub pages: u32,
    /// Header pages (after page 0).
    pub header_pages: u32,
    /// Data pages (after the header pages).
    pub data_pages: u32,
    /// Identity of this log (random at format time).
    pub log_id: u64,
    /// Every record with a sequence number up to this one is on disk.
    pub retired_seq: u64,
    /// Header slot and data page where the record after `retired_seq` starts.
    pub tail_slot: u32,
    pub tail_page: u32,
    pub reserved: [u8; 16],
    /// CRC32C of the bytes above.
    pub crc: u32,
    pub pad: u32,
}

impl Superblock {
    pub fn seal(&mut self) {
        self.crc = 0;
        self.crc = crc32c(&[&self.as_bytes()[..core::mem::offset_of!(Superblock, crc)]]);
    }

    pub fn valid(&self) -> bool {
        self.magic == SUPER_MAGIC
            && (self.version == VERSION || self.version == VERSION_1)
            && self.crc == crc32c(&[&self.as_bytes()[..core::mem::offset_of!(Superblock, crc)]])
    }
}

/// One record's header, in the header ring.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq, Default,
)]
pub struct RecordHeader {
    pub magic: u32,
    pub flags: u32,
    pub seq: u64,
    /// Which disk (FNV-1a of the export name and its size): replay never writes elsewhere.
    pub disk_id: u64,
    pub offset: u64,
    pub length: u32,
    /// First data page (index within the data area; pages wrap at its end).
    pub page: u32,
    pub log_id: u64,
    pub reserved: [u8; 12],
    /// CRC32C over this header (with `crc` = 0) and the payload.
    pub crc: u32,
}

/// What a record does to its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Writes its payload.
    Data,
    /// Zeroes the range (no payload).
    Zero,
    /// Discards the range (no payload).
    Trim,
}

impl RecordKind {
    pub fn flags(self) -> u32 {
        match self {
            RecordKind::Data => 0,
            RecordKind::Zero => FLAG_ZERO,
            RecordKind::Trim => FLAG_TRIM,
        }
    }

    /// `None` for flags no version of the format defines.
    pub fn from_flags(flags: u32) -> Option<Self> {
        match flags {
            0 => Some(RecordKind::Data),
            FLAG_ZERO => Some(RecordKind::Zero),
            FLAG_TRIM => Some(RecordKind::Trim),
            _ => None,
        }
    }

    /// Data pages a record of this kind and length takes.
    pub fn pages(self, length: u32) -> u32 {
        match self {
            RecordKind::Data => length.div_ceil(PAGE as u32),
            RecordKind::Zero | RecordKind::Trim => 0,
        }
    }
}

impl RecordHeader {
    /// Data pages the record's payload takes (0 for zero and trim records and for unknown
    /// flags, which the scan refuses anyway).
    pub fn pages(&self) -> u32 {
        RecordKind::from_flags(self.flags).map_or(0, |k| k.pages(self.length))
    }
}

/// Identity of a disk for replay: FNV-1a over a name (the disk label's UUID in the guest)
/// and a size.
pub fn disk_id(name: &str, size: u64) -> u64 {
    disk_id_bytes(name.as_bytes(), size)
}

/// FNV-1a over `bytes` and `size`.
pub fn disk_id_bytes(bytes: &[u8], size: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes.iter().copied().chain(size.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

const _: () = assert!(core::mem::size_of::<RecordHeader>() == 64);
const _: () = assert!(core::mem::size_of::<Superblock>() == 72);
