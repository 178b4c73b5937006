//! The Tandem disk label: the first 4 KiB of the 1 MiB reserved at the start of every data
//! disk. It names the disk (UUID), its export, the size served, and flags; the checkpoint
//! refers to disks by label UUID so a replaced disk is noticed.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::nvlog::crc32c;

pub const LABEL_MAGIC: [u8; 8] = *b"TNDMLABL";
pub const LABEL_VERSION: u32 = 1;
/// Bytes reserved at the start of every data disk (label, checkpoint slots).
pub const RESERVED: u64 = 1 << 20;

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq)]
pub struct Label {
    pub magic: [u8; 8],
    pub version: u32,
    pub flags: u32,
    pub uuid: [u8; 16],
    /// Export name, NUL-padded.
    pub name: [u8; 32],
    /// Disk capacity in bytes when labelled (a resize is noticed).
    pub capacity: u64,
    /// Where the served data starts and how long it is.
    pub data_offset: u64,
    pub data_size: u64,
    pub reserved: [u8; 36],
    pub crc: u32,
}

pub const FLAG_READ_ONLY: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelError {
    /// No label (a new disk).
    Absent,
    /// Something that starts like a label but fails its checksum or version.
    Corrupt,
    /// The disk is too small to hold the reserved area and any data.
    TooSmall,
}

impl Label {
    pub fn new(
        uuid: [u8; 16],
        name: &str,
        capacity: u64,
        read_only: bool,
    ) -> Result<Self, LabelError> {
        if capacity <= RESERVED {
            return Err(LabelError::TooSmall);
        }
        let mut n = [0u8; 32];
        let len = name.len().min(32);
        n[..len].copy_from_slice(&name.as_bytes()[..len]);
        let mut l = Label {
            magic: LABEL_MAGIC,
            version: LABEL_VERSION,
            flags: if read_only { FLAG_READ_ONLY } else { 0 },
            uuid,
            name: n,
            capacity,
            data_offset: RESERVED,
            data_size: capacity - RESERVED,
            reserved: [0; 36],
            crc: 0,
        };
        l.crc = l.compute_crc();
        Ok(l)
    }

    fn compute_crc(&self) -> u32 {
        crc32c(&[&self.as_bytes()[..core::mem::offset_of!(Label, crc)]])
    }

    /// Reads a label from the first bytes of a disk.
    pub fn parse(bytes: &[u8]) -> Result<Self, LabelError> {
        let (l, _) = Label::read_from_prefix(bytes).map_err(|_| LabelError::Absent)?;
        if l.magic != LABEL_MAGIC {
            return Err(LabelError::Absent);
        }
        if l.version != LABEL_VERSION || l.crc != l.compute_crc() || l.data_offset < RESERVED {
            return Err(LabelError::Corrupt);
        }
        Ok(l)
    }

    pub fn name(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(32);
        core::str::from_utf8(&self.name[..end]).unwrap_or("")
    }

    pub fn read_only(&self) -> bool {
        self.flags & FLAG_READ_ONLY != 0
    }
}

/// A version-4 style UUID from 128 random bits.
pub fn uuid_from(mut bits: [u8; 16]) -> [u8; 16] {
    bits[6] = (bits[6] & 0x0f) | 0x40;
    bits[8] = (bits[8] & 0x3f) | 0x80;
    bits
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub struct Uuid(pub [u8; 16]);

impl core::fmt::Display for Uuid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

const _: () = assert!(core::mem::size_of::<Label>() == 128);

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn round_trip_and_corruption() {
        let l = Label::new(uuid_from([7; 16]), "data", 64 << 20, false).unwrap();
        let mut disk = alloc::vec![0u8; 4096];
        disk[..l.as_bytes().len()].copy_from_slice(l.as_bytes());
        let back = Label::parse(&disk).unwrap();
        assert_eq!(back, l);
        assert_eq!(
            (back.name(), back.data_offset, back.data_size),
            ("data", RESERVED, (64 << 20) - RESERVED)
        );
        assert_eq!(Label::parse(&[0u8; 4096]), Err(LabelError::Absent));
        disk[40] ^= 1;
        assert_eq!(Label::parse(&disk), Err(LabelError::Corrupt));
        assert_eq!(
            Label::new([0; 16], "x", RESERVED, false),
            Err(LabelError::TooSmall)
        );
        let u = Uuid(uuid_from([0xff; 16])).to_string();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
