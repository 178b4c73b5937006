//! The PVH boot ABI's `hvm_start_info` (Xen `arch-x86/hvm/start_info.h`).
//!
//! QEMU (`-kernel` on q35, pc and microvm) and Xen enter the kernel's PVH entry point with
//! `ebx` holding the physical address of this structure. Version 1 adds the memory map,
//! which the guest needs to size its heap; version 0 is refused with a clear error.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `hvm_start_info.magic`.
pub const MAGIC: u32 = 0x336e_c578;

/// `struct hvm_start_info` (version 1 layout).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
pub struct HvmStartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
pub struct HvmMemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}

/// E820-style memory types used in the map.
pub mod mem_type {
    pub const RAM: u32 = 1;
    pub const RESERVED: u32 = 2;
    pub const ACPI: u32 = 3;
    pub const NVS: u32 = 4;
    pub const UNUSABLE: u32 = 5;
    pub const DISABLED: u32 = 6;
    pub const PMEM: u32 = 7;
}

/// Name of a memory-map entry type, for the boot log.
pub fn mem_type_name(kind: u32) -> &'static str {
    match kind {
        mem_type::RAM => "ram",
        mem_type::RESERVED => "reserved",
        mem_type::ACPI => "acpi",
        mem_type::NVS => "acpi-nvs",
        mem_type::UNUSABLE => "unusable",
        mem_type::DISABLED => "disabled",
        mem_type::PMEM => "pmem",
        _ => "other",
    }
}

/// Upper bound on memory-map entries we accept (a hostile or broken loader cannot make
/// us walk an unbounded table).
pub const MAX_MEMMAP_ENTRIES: u32 = 128;

/// Why a start-info block was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartInfoError {
    TooShort,
    BadMagic(u32),
    NoMemoryMap { version: u32 },
    TooManyEntries(u32),
}

impl core::fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooShort => write!(f, "hvm_start_info is truncated"),
            Self::BadMagic(m) => write!(f, "hvm_start_info magic {m:#x}, expected {MAGIC:#x}"),
            Self::NoMemoryMap { version } => write!(
                f,
                "hvm_start_info version {version} has no memory map (version 1 required)"
            ),
            Self::TooManyEntries(n) => {
                write!(
                    f,
                    "memory map has {n} entries (at most {MAX_MEMMAP_ENTRIES})"
                )
            }
        }
    }
}

/// Parses and validates the fixed part of the structure.
pub fn parse(bytes: &[u8]) -> Result<HvmStartInfo, StartInfoError> {
    let (info, _) = HvmStartInfo::read_from_prefix(bytes).map_err(|_| StartInfoError::TooShort)?;
    if info.magic != MAGIC {
        return Err(StartInfoError::BadMagic(info.magic));
    }
    if info.version < 1 || info.memmap_paddr == 0 {
        return Err(StartInfoError::NoMemoryMap {
            version: info.version,
        });
    }
    if info.memmap_entries > MAX_MEMMAP_ENTRIES {
        return Err(StartInfoError::TooManyEntries(info.memmap_entries));
    }
    Ok(info)
}

impl HvmStartInfo {
    /// Size in bytes of the memory map this structure points at.
    pub fn memmap_bytes(&self) -> usize {
        self.memmap_entries as usize * core::mem::size_of::<HvmMemmapEntry>()
    }
}

/// Iterates the memory-map entries stored in `bytes` (entries past a truncated end are
/// dropped).
pub fn memmap_entries(bytes: &[u8]) -> impl Iterator<Item = HvmMemmapEntry> + '_ {
    bytes
        .chunks_exact(core::mem::size_of::<HvmMemmapEntry>())
        .filter_map(|c| HvmMemmapEntry::read_from_bytes(c).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(magic: u32, version: u32, entries: u32) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [magic, version, 0, 0] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        for q in [0u64, 0x7000, 0xf_0000, 0x8000] {
            v.extend_from_slice(&q.to_le_bytes());
        }
        v.extend_from_slice(&entries.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v
    }

    #[test]
    fn parses_version_1() {
        let info = parse(&raw(MAGIC, 1, 3)).unwrap();
        assert_eq!(info.cmdline_paddr, 0x7000);
        assert_eq!(info.rsdp_paddr, 0xf_0000);
        assert_eq!(info.memmap_paddr, 0x8000);
        assert_eq!(info.memmap_bytes(), 72);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            parse(&raw(MAGIC, 1, 3)[..40]).unwrap_err(),
            StartInfoError::TooShort
        );
        assert_eq!(
            parse(&raw(0x1234, 1, 3)).unwrap_err(),
            StartInfoError::BadMagic(0x1234)
        );
        assert_eq!(
            parse(&raw(MAGIC, 0, 3)).unwrap_err(),
            StartInfoError::NoMemoryMap { version: 0 }
        );
        assert_eq!(
            parse(&raw(MAGIC, 1, 100_000)).unwrap_err(),
            StartInfoError::TooManyEntries(100_000)
        );
    }

    #[test]
    fn iterates_entries() {
        let e = [
            HvmMemmapEntry {
                addr: 0,
                size: 0x9fc00,
                kind: 1,
                reserved: 0,
            },
            HvmMemmapEntry {
                addr: 0x10_0000,
                size: 0x1f0_0000,
                kind: 1,
                reserved: 0,
            },
        ];
        let mut bytes = e.as_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 5]); // trailing garbage is ignored
        let got: Vec<_> = memmap_entries(&bytes).collect();
        assert_eq!(got, e);
        assert_eq!(mem_type_name(1), "ram");
    }
}
