//! The configuration checkpoint: what cold discovery found, saved so a restart can configure
//! directly from it. Two slots in the first data disk's reserved area, each a header
//! (magic, version, generation, length, CRC32C over header and body) and fixed-size records;
//! the newest slot that checks out wins, and a save goes to the other slot, so a torn save
//! leaves the previous checkpoint intact.
//!
//! A checkpoint is trusted only after [`validate`] has compared it, cheaply, with what it
//! names: the device ids at its PCI functions or MMIO windows, and the label of every disk.
//! Any difference is a [`Mismatch`] with a reason; the caller then discovers cold.

use alloc::vec::Vec;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::nvlog::crc32c;

pub const MAGIC: [u8; 8] = *b"TNDMCKPT";
pub const VERSION: u32 = 2;
/// Byte offsets of the two slots on the first data disk, and the most a slot holds.
pub const SLOT_OFFSETS: [u64; 2] = [64 << 10, 320 << 10];
pub const SLOT_BYTES: usize = 64 << 10;
pub const MAX_DEVICES: usize = 64;
pub const MAX_EXPORTS: usize = 16;

#[repr(C)]
#[derive(
    Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq, Default,
)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub flags: u32,
    pub generation: u64,
    /// Bytes of body after the header.
    pub body_len: u32,
    pub devices: u16,
    pub exports: u16,
    pub reserved: [u8; 28],
    /// CRC32C over the header (with `crc` = 0) and the body.
    pub crc: u32,
}

pub mod kind {
    pub const BLK: u8 = 1;
    pub const NET: u8 = 2;
    pub const NVRAM: u8 = 3;
}

pub mod transport {
    pub const PCI: u8 = 1;
    pub const MMIO: u8 = 2;
}

/// One device as discovery found it.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq, Default,
)]
pub struct DeviceRecord {
    pub kind: u8,
    pub transport: u8,
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
    pub reserved0: [u8; 1],
    pub segment: u16,
    pub vendor: u16,
    pub device: u16,
    /// virtio-mmio: the window's IRQ.
    pub irq: u32,
    /// PCI: ECAM base; MMIO: window base. NVRAM: BAR 2.
    pub base: u64,
    pub size: u64,
    /// Negotiated virtio features.
    pub features: u64,
    pub queue_size: u16,
    pub mac: [u8; 6],
    /// Disks: capacity in bytes and label UUID.
    pub capacity: u64,
    pub label: [u8; 16],
    /// PCI: what each BAR reads back after all-ones was written (its size mask), so a
    /// restart configures the device without sizing its BARs again.
    pub bar_masks: [u32; 6],
}

#[repr(C)]
#[derive(
    Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq, Default,
)]
pub struct ExportRecord {
    pub name: [u8; 32],
    /// Index into the device records.
    pub device: u16,
    pub read_only: u8,
    pub reserved: [u8; 5],
    pub label: [u8; 16],
    pub size: u64,
}

#[repr(C)]
#[derive(
    Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq, Default,
)]
pub struct NetRecord {
    pub ip: [u8; 4],
    pub prefix: u8,
    pub has_gateway: u8,
    pub nbd_port: u16,
    pub gateway: [u8; 4],
    pub reserved: [u8; 4],
    /// NVLOG: region base and size (0 when the log is in RAM), and the log's id.
    pub nvlog_base: u64,
    pub nvlog_size: u64,
    pub nvlog_id: u64,
}

/// Everything a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub generation: u64,
    pub net: NetRecord,
    pub devices: Vec<DeviceRecord>,
    pub exports: Vec<ExportRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotError {
    Empty,
    BadMagic,
    BadVersion(u32),
    BadLength,
    BadChecksum,
    TooMany,
}

impl core::fmt::Display for SlotError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SlotError::Empty => write!(f, "empty"),
            SlotError::BadMagic => write!(f, "not a checkpoint"),
            SlotError::BadVersion(v) => write!(f, "version {v}, expected {VERSION}"),
            SlotError::BadLength => write!(f, "length out of bounds"),
            SlotError::BadChecksum => write!(f, "checksum mismatch (torn or corrupted)"),
            SlotError::TooMany => write!(f, "too many records"),
        }
    }
}

const HDR: usize = core::mem::size_of::<Header>();
const NET: usize = core::mem::size_of::<NetRecord>();
const DEV: usize = core::mem::size_of::<DeviceRecord>();
const EXP: usize = core::mem::size_of::<ExportRecord>();

/// The largest slot image (every record present), rounded up to whole 4 KiB blocks: all a
/// reader needs to read of a slot.
pub const MAX_IMAGE: usize =
    (HDR + NET + MAX_DEVICES * DEV + MAX_EXPORTS * EXP).next_multiple_of(4096);
const _: () = assert!(MAX_IMAGE <= SLOT_BYTES);

impl Checkpoint {
    /// The slot image: header then body.
    pub fn encode(&self) -> Result<Vec<u8>, SlotError> {
        if self.devices.len() > MAX_DEVICES || self.exports.len() > MAX_EXPORTS {
            return Err(SlotError::TooMany);
        }
        let mut body =
            Vec::with_capacity(NET + DEV * self.devices.len() + EXP * self.exports.len());
        body.extend_from_slice(self.net.as_bytes());
        for d in &self.devices {
            body.extend_from_slice(d.as_bytes());
        }
        for e in &self.exports {
            body.extend_from_slice(e.as_bytes());
        }
        let mut h = Header {
            magic: MAGIC,
            version: VERSION,
            generation: self.generation,
            body_len: body.len() as u32,
            devices: self.devices.len() as u16,
            exports: self.exports.len() as u16,
            ..Default::default()
        };
        h.crc = crc32c(&[h.as_bytes(), &body]);
        let mut out = Vec::with_capacity(HDR + body.len());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parses and checks a slot image.
    pub fn decode(slot: &[u8]) -> Result<Self, SlotError> {
        let (h, rest) = Header::read_from_prefix(slot).map_err(|_| SlotError::BadLength)?;
        if h.magic == [0; 8] {
            return Err(SlotError::Empty);
        }
        if h.magic != MAGIC {
            return Err(SlotError::BadMagic);
        }
        if h.version != VERSION {
            return Err(SlotError::BadVersion(h.version));
        }
        let (nd, ne) = (usize::from(h.devices), usize::from(h.exports));
        if nd > MAX_DEVICES || ne > MAX_EXPORTS {
            return Err(SlotError::TooMany);
        }
        let len = h.body_len as usize;
        if len != NET + nd * DEV + ne * EXP || len > rest.len() || HDR + len > SLOT_BYTES {
            return Err(SlotError::BadLength);
        }
        let body = &rest[..len];
        let mut zeroed = h;
        zeroed.crc = 0;
        if crc32c(&[zeroed.as_bytes(), body]) != h.crc {
            return Err(SlotError::BadChecksum);
        }
        let net = NetRecord::read_from_bytes(&body[..NET]).map_err(|_| SlotError::BadLength)?;
        let devices = body[NET..NET + nd * DEV]
            .chunks_exact(DEV)
            .filter_map(|c| DeviceRecord::read_from_bytes(c).ok())
            .collect();
        let exports = body[NET + nd * DEV..]
            .chunks_exact(EXP)
            .filter_map(|c| ExportRecord::read_from_bytes(c).ok())
            .collect();
        Ok(Checkpoint {
            generation: h.generation,
            net,
            devices,
            exports,
        })
    }
}

/// Picks the newest valid of the two slots. Returns it with its slot index, and the reason
/// each slot was refused.
pub fn newest(slots: [&[u8]; 2]) -> (Option<(usize, Checkpoint)>, [Option<SlotError>; 2]) {
    let mut errs = [None, None];
    let mut best: Option<(usize, Checkpoint)> = None;
    for (i, s) in slots.iter().enumerate() {
        match Checkpoint::decode(s) {
            Ok(c)
                if best
                    .as_ref()
                    .is_none_or(|(_, b)| c.generation > b.generation) =>
            {
                best = Some((i, c))
            }
            Ok(_) => {}
            Err(e) => errs[i] = Some(e),
        }
    }
    (best, errs)
}

/// The slot a new checkpoint goes to: the one not holding the newest.
pub fn next_slot(newest: Option<usize>) -> usize {
    match newest {
        Some(i) => 1 - i,
        None => 0,
    }
}

/// Cheap looks at the hardware a checkpoint names.
pub trait Probe {
    /// Vendor and device id at a PCI function.
    fn pci_ids(&mut self, segment: u16, bus: u8, dev: u8, func: u8) -> Option<(u16, u16)>;
    /// virtio device id behind a virtio-mmio window.
    fn mmio_device_id(&mut self, base: u64) -> Option<u32>;
    /// Label UUID and capacity of the disk at device record `index`.
    fn disk(&mut self, index: usize, record: &DeviceRecord) -> Option<([u8; 16], u64)>;
}

/// Why a checkpoint was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    DeviceGone {
        index: usize,
    },
    DeviceChanged {
        index: usize,
        expected: (u16, u16),
        found: (u16, u16),
    },
    DiskUnreadable {
        index: usize,
    },
    DiskReplaced {
        index: usize,
    },
    DiskResized {
        index: usize,
        expected: u64,
        found: u64,
    },
    BadExport {
        index: usize,
    },
}

impl core::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Mismatch::DeviceGone { index } => {
                write!(f, "device {index} is no longer where the checkpoint says")
            }
            Mismatch::DeviceChanged {
                index,
                expected,
                found,
            } => write!(
                f,
                "device {index} changed: expected {:04x}:{:04x}, found {:04x}:{:04x}",
                expected.0, expected.1, found.0, found.1
            ),
            Mismatch::DiskUnreadable { index } => write!(f, "disk {index}: label unreadable"),
            Mismatch::DiskReplaced { index } => {
                write!(f, "disk {index} was replaced (label UUID differs)")
            }
            Mismatch::DiskResized {
                index,
                expected,
                found,
            } => {
                write!(f, "disk {index} was resized ({expected} -> {found} bytes)")
            }
            Mismatch::BadExport { index } => {
                write!(f, "export {index} names a device that is not a disk")
            }
        }
    }
}

/// Compares a checkpoint with the hardware it names; the first difference is returned.
pub fn validate(cp: &Checkpoint, probe: &mut dyn Probe) -> Result<(), Mismatch> {
    for (index, d) in cp.devices.iter().enumerate() {
        match d.transport {
            transport::PCI => match probe.pci_ids(d.segment, d.bus, d.dev, d.func) {
                None => return Err(Mismatch::DeviceGone { index }),
                Some(ids) if ids != (d.vendor, d.device) => {
                    return Err(Mismatch::DeviceChanged {
                        index,
                        expected: (d.vendor, d.device),
                        found: ids,
                    })
                }
                Some(_) => {}
            },
            _ => match probe.mmio_device_id(d.base) {
                Some(id) if id == u32::from(d.device) => {}
                Some(id) => {
                    return Err(Mismatch::DeviceChanged {
                        index,
                        expected: (0, d.device),
                        found: (0, id as u16),
                    })
                }
                None => return Err(Mismatch::DeviceGone { index }),
            },
        }
        if d.kind == kind::BLK {
            match probe.disk(index, d) {
                None => return Err(Mismatch::DiskUnreadable { index }),
                Some((uuid, _)) if uuid != d.label => return Err(Mismatch::DiskReplaced { index }),
                Some((_, cap)) if cap != d.capacity => {
                    return Err(Mismatch::DiskResized {
                        index,
                        expected: d.capacity,
                        found: cap,
                    })
                }
                Some(_) => {}
            }
        }
    }
    for (index, e) in cp.exports.iter().enumerate() {
        let ok = cp
            .devices
            .get(usize::from(e.device))
            .is_some_and(|d| d.kind == kind::BLK && d.label == e.label);
        if !ok {
            return Err(Mismatch::BadExport { index });
        }
    }
    Ok(())
}

const _: () = assert!(HDR == 64);
const _: () = assert!(DEV == 96);
const _: () = assert!(EXP == 64);
const _: () = assert!(NET == 40);

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(generation: u64) -> Checkpoint {
        let disk = |dev: u8, label: u8| DeviceRecord {
            kind: kind::BLK,
            transport: transport::PCI,
            dev,
            vendor: 0x1af4,
            device: 0x1042,
            capacity: 64 << 20,
            label: [label; 16],
            queue_size: 256,
            ..Default::default()
        };
        let mut name = [0u8; 32];
        name[..4].copy_from_slice(b"blk0");
        Checkpoint {
            generation,
            net: NetRecord {
                ip: [10, 0, 2, 15],
                prefix: 24,
                has_gateway: 1,
                gateway: [10, 0, 2, 2],
                nbd_port: 10809,
                ..Default::default()
            },
            devices: alloc::vec![
                disk(1, 0xaa),
                disk(2, 0xbb),
                DeviceRecord {
                    kind: kind::NET,
                    transport: transport::MMIO,
                    base: 0xfeb0_0e00,
                    device: 1,
                    mac: [0x52, 0x54, 0, 0, 0, 1],
                    ..Default::default()
                },
            ],
            exports: alloc::vec![ExportRecord {
                name,
                device: 0,
                label: [0xaa; 16],
                size: (64 << 20) - (1 << 20),
                ..Default::default()
            }],
        }
    }

    struct Hw {
        disks: [([u8; 16], u64); 2],
        pci_gone: bool,
    }

    impl Probe for Hw {
        fn pci_ids(&mut self, _: u16, _: u8, dev: u8, _: u8) -> Option<(u16, u16)> {
            (!self.pci_gone || dev != 2).then_some((0x1af4, 0x1042))
        }
        fn mmio_device_id(&mut self, base: u64) -> Option<u32> {
            (base == 0xfeb0_0e00).then_some(1)
        }
        fn disk(&mut self, index: usize, _: &DeviceRecord) -> Option<([u8; 16], u64)> {
            self.disks.get(index).copied()
        }
    }

    fn hw() -> Hw {
        Hw {
            disks: [([0xaa; 16], 64 << 20), ([0xbb; 16], 64 << 20)],
            pci_gone: false,
        }
    }

    #[test]
    fn encode_decode_and_pick_the_newest() {
        let (a, b) = (sample(4).encode().unwrap(), sample(5).encode().unwrap());
        assert_eq!(Checkpoint::decode(&a).unwrap(), sample(4));
        let (best, errs) = newest([&a, &b]);
        assert_eq!(best.as_ref().map(|(i, c)| (*i, c.generation)), Some((1, 5)));
        assert_eq!(errs, [None, None]);
        assert_eq!(next_slot(Some(1)), 0);
        // A torn newest slot: the older one is used, and the reason is reported.
        let mut torn = b.clone();
        torn[100] ^= 0xff;
        let (best, errs) = newest([&a, &torn]);
        assert_eq!(best.map(|(i, c)| (i, c.generation)), Some((0, 4)));
        assert_eq!(errs[1], Some(SlotError::BadChecksum));
        // Empty slots and garbage.
        let zero = alloc::vec![0u8; 4096];
        assert_eq!(
            newest([&zero, &zero]).1,
            [Some(SlotError::Empty), Some(SlotError::Empty)]
        );
        let mut lying = a.clone();
        lying[24..28].copy_from_slice(&u32::MAX.to_le_bytes()); // body_len
        assert_eq!(Checkpoint::decode(&lying), Err(SlotError::BadLength));
        assert_eq!(Checkpoint::decode(b"TNDMCKPT"), Err(SlotError::BadLength));
    }

    #[test]
    fn validation_finds_every_difference() {
        let cp = sample(1);
        assert_eq!(validate(&cp, &mut hw()), Ok(()));
        let mut h = hw();
        h.disks[1].0 = [0xcc; 16];
        assert_eq!(
            validate(&cp, &mut h),
            Err(Mismatch::DiskReplaced { index: 1 })
        );
        let mut h = hw();
        h.disks[0].1 = 128 << 20;
        assert!(matches!(
            validate(&cp, &mut h),
            Err(Mismatch::DiskResized { index: 0, .. })
        ));
        let mut h = hw();
        h.pci_gone = true;
        assert_eq!(
            validate(&cp, &mut h),
            Err(Mismatch::DeviceGone { index: 1 })
        );
        let mut moved = sample(1);
        moved.devices[2].base = 0xfeb0_0c00;
        assert_eq!(
            validate(&moved, &mut hw()),
            Err(Mismatch::DeviceGone { index: 2 })
        );
        let mut bad = sample(1);
        bad.exports[0].device = 2;
        assert_eq!(
            validate(&bad, &mut hw()),
            Err(Mismatch::BadExport { index: 0 })
        );
        assert!(Mismatch::DiskReplaced { index: 1 }
            .to_string()
            .contains("replaced"));
    }
}
