//! The PVH boot ABI's `hvm_start_info` (Xen `arch-x86/hvm/start_info.h`).
//!
//! QEMU (`-kernel` on q35, pc and microvm) and Xen enter the kernel's PVH entry point with
//! `ebx` holding the physical address of this structure. Version 1 adds the memory map,
//! which the guest needs to size its heap; version 0 is refused with a clear error.
//!
//! The structure also lists boot modules. QEMU's `-initrd`, libvirt's `<initrd>` and xl's
//! `ramdisk=` each deliver one file as the first module, and every one of them can name a
//! file without putting its contents anywhere else. That makes the first module the place for
//! guest words that must not sit on a command line that every local user can read (`ps`,
//! `/proc/PID/cmdline`, a libvirt domain XML, an xl config): above all `mgmt.key=`.
//! [`read_first_module`] reads it as text through a caller-supplied reader of physical
//! memory, so the whole walk (bounds, UTF-8, NUL padding) is tested on the host.

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

/// `struct hvm_modlist_entry`: one boot module.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
pub struct HvmModlistEntry {
    pub paddr: u64,
    pub size: u64,
    /// The module's own command line (unused here; QEMU leaves it 0).
    pub cmdline_paddr: u64,
    pub reserved: u64,
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

/// Largest first boot module read (`crate::boot_module`: words, and TLS files); a real
/// initrd passed by mistake is refused by size before the guest reads a byte of it.
pub const MAX_MODULE_BYTES: u64 = crate::boot_module::MAX_BYTES as u64;

/// Upper bound on the module entries kept from the allocator (only the first is read).
pub const MAX_MODULES: u32 = 16;

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

    /// The module list's memory: `nr_modules` entries (at most [`MAX_MODULES`]) at
    /// `modlist_paddr`; empty when there is none.
    pub fn modlist_range(&self) -> core::ops::Range<u64> {
        if self.nr_modules == 0 || self.modlist_paddr == 0 {
            return 0..0;
        }
        let len = u64::from(self.nr_modules.min(MAX_MODULES))
            * core::mem::size_of::<HvmModlistEntry>() as u64;
        self.modlist_paddr..self.modlist_paddr.saturating_add(len)
    }
}

/// The first boot module, read as guest words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootModule<'a> {
    /// Its text up to the first NUL (whitespace-separated words; may be empty).
    pub words: &'a str,
    /// Where it lies in guest memory.
    pub range: core::ops::Range<u64>,
    /// How many modules the loader passed (only the first is read).
    pub count: u32,
}

/// Why the first boot module was not read as words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleError {
    /// The module list is not addressable.
    ListUnreadable(u64),
    /// The module is larger than [`MAX_MODULE_BYTES`].
    TooLarge(u64),
    /// The module's bytes are not addressable.
    Unreadable { paddr: u64, size: u64 },
    /// Not UTF-8 from this byte on.
    NotUtf8(usize),
    /// A control character (other than whitespace and NUL padding) at this byte.
    NotText(usize),
}

impl core::fmt::Display for ModuleError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::ListUnreadable(p) => write!(f, "the module list at {p:#x} is not addressable"),
            Self::TooLarge(n) => write!(
                f,
                "{n} bytes, more than {MAX_MODULE_BYTES}: not guest words (an initrd?)"
            ),
            Self::Unreadable { paddr, size } => {
                write!(f, "{size} bytes at {paddr:#x} are not addressable")
            }
            Self::NotUtf8(at) => write!(f, "not UTF-8 text (byte {at})"),
            Self::NotText(at) => write!(f, "not text: a control character at byte {at}"),
        }
    }
}

/// Reads the first boot module `info` lists as guest words, through `read(paddr, len)` (the
/// guest's view of physical memory). `Ok(None)`: no module. The text ends at the first NUL;
/// only NULs may follow it (padding), and it may hold no other control character than
/// whitespace.
pub fn read_first_module<'a>(
    info: &HvmStartInfo,
    read: impl Fn(u64, usize) -> Option<&'a [u8]>,
) -> Result<Option<BootModule<'a>>, ModuleError> {
    if info.modlist_range().is_empty() {
        return Ok(None);
    }
    let entry = read(info.modlist_paddr, core::mem::size_of::<HvmModlistEntry>())
        .and_then(|b| HvmModlistEntry::read_from_bytes(b).ok())
        .ok_or(ModuleError::ListUnreadable(info.modlist_paddr))?;
    if entry.size > MAX_MODULE_BYTES {
        return Err(ModuleError::TooLarge(entry.size));
    }
    let unreadable = ModuleError::Unreadable {
        paddr: entry.paddr,
        size: entry.size,
    };
    let bytes = if entry.size == 0 {
        &[][..]
    } else if entry.paddr == 0 {
        return Err(unreadable);
    } else {
        read(entry.paddr, entry.size as usize).ok_or(unreadable)?
    };
    Ok(Some(BootModule {
        words: module_words(bytes)?,
        range: entry.paddr..entry.paddr.saturating_add(entry.size),
        count: info.nr_modules,
    }))
}

/// A module's bytes as words: up to the first NUL, then only NUL padding; UTF-8; no control
/// characters but whitespace.
pub fn module_words(bytes: &[u8]) -> Result<&str, ModuleError> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    if let Some(at) = bytes[end..].iter().position(|&b| b != 0) {
        return Err(ModuleError::NotText(end + at));
    }
    let text = &bytes[..end];
    if let Some(at) = text
        .iter()
        .position(|b| b.is_ascii_control() && !b.is_ascii_whitespace())
    {
        return Err(ModuleError::NotText(at));
    }
    core::str::from_utf8(text).map_err(|e| ModuleError::NotUtf8(e.valid_up_to()))
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

    /// A start info listing `nr` modules at 0x9000, and guest memory (`0x9000`: the list with
    /// `entry`; `0x20_0000`: `module`), read as the kernel reads it.
    fn with_module(
        nr: u32,
        entry: HvmModlistEntry,
        module: &[u8],
    ) -> Result<Option<BootModule<'static>>, ModuleError> {
        let mut info = parse(&raw(MAGIC, 1, 1)).unwrap();
        info.nr_modules = nr;
        info.modlist_paddr = 0x9000;
        let list: &'static [u8] = Box::leak(entry.as_bytes().to_vec().into_boxed_slice());
        let module: &'static [u8] = Box::leak(module.to_vec().into_boxed_slice());
        read_first_module(&info, move |paddr, len| match paddr {
            0x9000 => list.get(..len),
            0x20_0000 => module.get(..len),
            _ => None,
        })
    }

    fn entry(paddr: u64, size: u64) -> HvmModlistEntry {
        HvmModlistEntry {
            paddr,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        }
    }

    #[test]
    fn reads_the_first_module_as_words() {
        let text = b"mgmt.key=00ff mgmt.on_data=on\n";
        let m = with_module(1, entry(0x20_0000, text.len() as u64), text)
            .unwrap()
            .unwrap();
        assert_eq!(m.words, "mgmt.key=00ff mgmt.on_data=on\n");
        assert_eq!(m.range, 0x20_0000..0x20_0000 + text.len() as u64);
        assert_eq!(m.count, 1);
        // NUL-terminated or NUL-padded (a loader rounding up to a page), CRLF, tabs.
        let padded = b"a=1\r\n\tb=2\0\0\0\0";
        let m = with_module(2, entry(0x20_0000, padded.len() as u64), padded)
            .unwrap()
            .unwrap();
        assert_eq!((m.words, m.count), ("a=1\r\n\tb=2", 2));
        // An empty module is no words; no module at all is None.
        let m = with_module(1, entry(0x20_0000, 0), b"").unwrap().unwrap();
        assert_eq!(m.words, "");
        assert_eq!(with_module(0, entry(0x20_0000, 3), b"a=1"), Ok(None));
        let info = parse(&raw(MAGIC, 1, 1)).unwrap();
        assert!(info.modlist_range().is_empty());
        assert_eq!(read_first_module(&info, |_, _| None), Ok(None));
    }

    #[test]
    fn the_module_list_range_is_bounded() {
        let mut info = parse(&raw(MAGIC, 1, 1)).unwrap();
        info.modlist_paddr = 0x9000;
        info.nr_modules = 2;
        assert_eq!(info.modlist_range(), 0x9000..0x9040);
        info.nr_modules = u32::MAX;
        assert_eq!(info.modlist_range(), 0x9000..0x9000 + 32 * 16);
        info.modlist_paddr = 0;
        assert!(info.modlist_range().is_empty());
    }

    #[test]
    fn refuses_what_is_not_words() {
        let e = |entry, bytes: &[u8]| with_module(1, entry, bytes).unwrap_err();
        // A real initrd: refused by its size, unread.
        assert_eq!(
            e(entry(0x20_0000, 8 << 20), b""),
            ModuleError::TooLarge(8 << 20)
        );
        assert_eq!(
            e(entry(0x30_0000, 4), b"a=1\n"),
            ModuleError::Unreadable {
                paddr: 0x30_0000,
                size: 4
            }
        );
        assert!(matches!(
            e(entry(0, 4), b"a=1\n"),
            ModuleError::Unreadable { paddr: 0, .. }
        ));
        assert_eq!(
            e(entry(0x20_0000, 5), b"a=1\xff\n"),
            ModuleError::NotUtf8(3)
        );
        assert_eq!(e(entry(0x20_0000, 6), b"a=1\0b2"), ModuleError::NotText(4));
        assert_eq!(
            e(entry(0x20_0000, 4), b"\x1f\x8b\x08\0"),
            ModuleError::NotText(0)
        );
        // The list itself unreadable.
        let mut info = parse(&raw(MAGIC, 1, 1)).unwrap();
        info.nr_modules = 1;
        info.modlist_paddr = 0x5000;
        assert_eq!(
            read_first_module(&info, |_, _| None),
            Err(ModuleError::ListUnreadable(0x5000))
        );
        for err in [ModuleError::TooLarge(8 << 20), ModuleError::NotText(0)] {
            assert!(!err.to_string().is_empty());
        }
    }
}
