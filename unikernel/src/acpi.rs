//! The few ACPI tables the guest reads: RSDP → XSDT/RSDT → MCFG (the PCI Express ECAM base).
//!
//! Physical memory is reached through [`PhysRead`], so the walk is tested on the host with
//! tables built in a byte array. Every length read from a table is bounded before use and
//! every checksum is verified: a broken table is reported, never trusted.

use zerocopy::{FromBytes, Immutable, KnownLayout};

/// Reads guest-physical memory. The guest implements it over its identity map.
pub trait PhysRead {
    /// Fills `buf` from physical address `paddr`; false if the range is not readable.
    fn read(&self, paddr: u64, buf: &mut [u8]) -> bool;
}

#[repr(C, packed)]
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
struct Rsdp {
    signature: [u8; 8],
    checksum: u8,
    oem_id: [u8; 6],
    revision: u8,
    rsdt_address: u32,
    // ACPI 2.0+
    length: u32,
    xsdt_address: u64,
    extended_checksum: u8,
    reserved: [u8; 3],
}

/// The common header of every system description table.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
pub struct SdtHeader {
    pub signature: [u8; 4],
    pub length: u32,
    pub revision: u8,
    pub checksum: u8,
    pub oem_id: [u8; 6],
    pub oem_table_id: [u8; 8],
    pub oem_revision: u32,
    pub creator_id: u32,
    pub creator_revision: u32,
}

const SDT_HEADER_LEN: usize = 36;
const RSDP_V1_LEN: usize = 20;
const RSDP_V2_LEN: usize = 36;
/// No table we read is larger than this; a bigger length is treated as corruption.
const MAX_TABLE_LEN: usize = 64 * 1024;
/// Entries kept from MCFG (one per PCI segment group / bus range).
pub const MAX_ECAM_REGIONS: usize = 4;

/// One ECAM window from the MCFG table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EcamRegion {
    pub base: u64,
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

impl EcamRegion {
    /// Bytes of configuration space this window covers (1 MiB per bus, counted from bus 0
    /// as the base address is defined for bus 0).
    pub fn size(&self) -> u64 {
        (u64::from(self.bus_end) + 1) << 20
    }
}

/// What the ACPI walk found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcpiInfo {
    pub rsdp: u64,
    pub revision: u8,
    pub oem_id: [u8; 6],
    pub ecam: [EcamRegion; MAX_ECAM_REGIONS],
    pub ecam_count: usize,
}

impl AcpiInfo {
    pub fn ecam_regions(&self) -> &[EcamRegion] {
        &self.ecam[..self.ecam_count]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    NoRsdp,
    BadRsdpChecksum,
    Unreadable(u64),
    BadTable {
        signature: [u8; 4],
        reason: &'static str,
    },
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRsdp => write!(f, "no ACPI RSDP found"),
            Self::BadRsdpChecksum => write!(f, "ACPI RSDP checksum mismatch"),
            Self::Unreadable(a) => write!(f, "ACPI table at {a:#x} is not readable"),
            Self::BadTable { signature, reason } => write!(
                f,
                "ACPI table {}: {reason}",
                core::str::from_utf8(signature).unwrap_or("????")
            ),
        }
    }
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// Searches the BIOS read-only area (0xE0000..0x100000) on 16-byte boundaries for the RSDP.
pub fn find_rsdp(mem: &impl PhysRead) -> Option<u64> {
    let mut buf = [0u8; RSDP_V1_LEN];
    (0xE_0000u64..0x10_0000)
        .step_by(16)
        .find(|&a| mem.read(a, &mut buf) && &buf[..8] == b"RSD PTR " && sum(&buf) == 0)
}

/// Walks RSDP → XSDT (or RSDT) → MCFG. `rsdp` is the address the loader gave, or 0 to search.
pub fn discover(mem: &impl PhysRead, rsdp: u64) -> Result<AcpiInfo, AcpiError> {
    let rsdp_addr = if rsdp != 0 {
        rsdp
    } else {
        find_rsdp(mem).ok_or(AcpiError::NoRsdp)?
    };
    let mut raw = [0u8; RSDP_V2_LEN];
    if !mem.read(rsdp_addr, &mut raw[..RSDP_V1_LEN]) {
        return Err(AcpiError::Unreadable(rsdp_addr));
    }
    if &raw[..8] != b"RSD PTR " {
        return Err(AcpiError::NoRsdp);
    }
    if sum(&raw[..RSDP_V1_LEN]) != 0 {
        return Err(AcpiError::BadRsdpChecksum);
    }
    let revision = raw[15];
    if revision >= 2 && !mem.read(rsdp_addr, &mut raw) {
        return Err(AcpiError::Unreadable(rsdp_addr));
    }
    let r = Rsdp::read_from_bytes(&raw).map_err(|_| AcpiError::NoRsdp)?;
    let use_xsdt = revision >= 2 && sum(&raw) == 0 && r.xsdt_address != 0;

    let mut info = AcpiInfo {
        rsdp: rsdp_addr,
        revision,
        oem_id: r.oem_id,
        ..Default::default()
    };
    let (root, entry_size) = if use_xsdt {
        (r.xsdt_address, 8)
    } else {
        (u64::from(r.rsdt_address), 4)
    };
    let root_sig = if use_xsdt { *b"XSDT" } else { *b"RSDT" };
    let root_hdr = read_header(mem, root, root_sig)?;
    let count = (root_hdr.length as usize - SDT_HEADER_LEN) / entry_size;
    for i in 0..count {
        let mut e = [0u8; 8];
        let at = root + (SDT_HEADER_LEN + i * entry_size) as u64;
        if !mem.read(at, &mut e[..entry_size]) {
            return Err(AcpiError::Unreadable(at));
        }
        let table = u64::from_le_bytes(e);
        let mut sig = [0u8; 4];
        if mem.read(table, &mut sig) && &sig == b"MCFG" {
            read_mcfg(mem, table, &mut info)?;
        }
    }
    Ok(info)
}

/// Reads a table header, checks its signature, bounded length and checksum.
fn read_header(mem: &impl PhysRead, at: u64, sig: [u8; 4]) -> Result<SdtHeader, AcpiError> {
    let mut h = [0u8; SDT_HEADER_LEN];
    if !mem.read(at, &mut h) {
        return Err(AcpiError::Unreadable(at));
    }
    let hdr = SdtHeader::read_from_bytes(&h).map_err(|_| AcpiError::Unreadable(at))?;
    let bad = |reason| AcpiError::BadTable {
        signature: sig,
        reason,
    };
    if hdr.signature != sig {
        return Err(bad("unexpected signature"));
    }
    let len = hdr.length as usize;
    if !(SDT_HEADER_LEN..=MAX_TABLE_LEN).contains(&len) {
        return Err(bad("length out of bounds"));
    }
    let mut check = 0u8;
    let mut chunk = [0u8; 256];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(chunk.len());
        if !mem.read(at + off as u64, &mut chunk[..n]) {
            return Err(AcpiError::Unreadable(at + off as u64));
        }
        check = check.wrapping_add(sum(&chunk[..n]));
        off += n;
    }
    if check != 0 {
        return Err(bad("checksum mismatch"));
    }
    Ok(hdr)
}

fn read_mcfg(mem: &impl PhysRead, at: u64, info: &mut AcpiInfo) -> Result<(), AcpiError> {
    let hdr = read_header(mem, at, *b"MCFG")?;
    const ENTRIES_OFFSET: usize = SDT_HEADER_LEN + 8;
    let len = hdr.length as usize;
    if len < ENTRIES_OFFSET {
        return Err(AcpiError::BadTable {
            signature: *b"MCFG",
            reason: "too short",
        });
    }
    for i in 0..(len - ENTRIES_OFFSET) / 16 {
        if info.ecam_count == MAX_ECAM_REGIONS {
            break;
        }
        let mut e = [0u8; 16];
        let off = at + (ENTRIES_OFFSET + i * 16) as u64;
        if !mem.read(off, &mut e) {
            return Err(AcpiError::Unreadable(off));
        }
        let region = EcamRegion {
            base: u64::from_le_bytes(e[0..8].try_into().unwrap_or_default()),
            segment: u16::from_le_bytes([e[8], e[9]]),
            bus_start: e[10],
            bus_end: e[11],
        };
        if region.bus_end >= region.bus_start && region.base != 0 {
            info.ecam[info.ecam_count] = region;
            info.ecam_count += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Physical memory backed by a vector starting at address 0.
    struct Fake(Vec<u8>);
    impl PhysRead for Fake {
        fn read(&self, paddr: u64, buf: &mut [u8]) -> bool {
            let s = paddr as usize;
            match self.0.get(s..s + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    fn fix_checksum(t: &mut [u8], at: usize) {
        t[at] = 0;
        t[at] = 0u8.wrapping_sub(sum(t));
    }

    fn table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((SDT_HEADER_LEN + body.len()) as u32).to_le_bytes());
        t.push(1);
        t.push(0);
        t.extend_from_slice(b"BOCHS ");
        t.extend_from_slice(b"BXPC    ");
        t.extend_from_slice(&[0u8; 12]);
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    /// RSDP v2 at 0xF0000, XSDT at 0x1000 pointing at a FACP-ish table and the MCFG.
    fn memory(xsdt: bool) -> Fake {
        let mut mem = vec![0u8; 0x10_0000];
        let mut mcfg_body = vec![0u8; 8];
        mcfg_body.extend_from_slice(&0xB000_0000u64.to_le_bytes());
        mcfg_body.extend_from_slice(&[0, 0, 0, 0xff, 0, 0, 0, 0]);
        let mcfg = table(b"MCFG", &mcfg_body);
        let other = table(b"APIC", &[1, 2, 3, 4]);
        mem[0x3000..0x3000 + mcfg.len()].copy_from_slice(&mcfg);
        mem[0x4000..0x4000 + other.len()].copy_from_slice(&other);
        let root = if xsdt {
            let mut b = Vec::new();
            b.extend_from_slice(&0x4000u64.to_le_bytes());
            b.extend_from_slice(&0x3000u64.to_le_bytes());
            table(b"XSDT", &b)
        } else {
            let mut b = Vec::new();
            b.extend_from_slice(&0x4000u32.to_le_bytes());
            b.extend_from_slice(&0x3000u32.to_le_bytes());
            table(b"RSDT", &b)
        };
        mem[0x1000..0x1000 + root.len()].copy_from_slice(&root);
        let mut rsdp = Vec::new();
        rsdp.extend_from_slice(b"RSD PTR ");
        rsdp.push(0);
        rsdp.extend_from_slice(b"BOCHS ");
        rsdp.push(if xsdt { 2 } else { 0 });
        rsdp.extend_from_slice(&(if xsdt { 0 } else { 0x1000u32 }).to_le_bytes());
        rsdp.extend_from_slice(&36u32.to_le_bytes());
        rsdp.extend_from_slice(&(if xsdt { 0x1000u64 } else { 0 }).to_le_bytes());
        rsdp.extend_from_slice(&[0u8; 4]);
        fix_checksum(&mut rsdp[..20], 8);
        fix_checksum(&mut rsdp, 32);
        mem[0xF_0010..0xF_0010 + 36].copy_from_slice(&rsdp);
        Fake(mem)
    }

    #[test]
    fn finds_mcfg_through_xsdt_and_rsdt() {
        for xsdt in [true, false] {
            let mem = memory(xsdt);
            assert_eq!(find_rsdp(&mem), Some(0xF_0010));
            let info = discover(&mem, 0).unwrap();
            assert_eq!(
                info.ecam_regions(),
                &[EcamRegion {
                    base: 0xB000_0000,
                    segment: 0,
                    bus_start: 0,
                    bus_end: 0xff
                }]
            );
            assert_eq!(info.ecam_regions()[0].size(), 256 << 20);
            assert_eq!(&info.oem_id, b"BOCHS ");
        }
    }

    #[test]
    fn corrupt_tables_are_reported() {
        let mut mem = memory(true);
        mem.0[0x3000 + 40] ^= 0xff; // inside MCFG
        assert_eq!(
            discover(&mem, 0xF_0010).unwrap_err(),
            AcpiError::BadTable {
                signature: *b"MCFG",
                reason: "checksum mismatch"
            }
        );
        let mut mem = memory(true);
        mem.0[0xF_0010 + 9] ^= 1; // RSDP oem id
        assert_eq!(
            discover(&mem, 0xF_0010).unwrap_err(),
            AcpiError::BadRsdpChecksum
        );
        let mut mem = memory(true);
        mem.0[0x1004..0x1008].copy_from_slice(&u32::MAX.to_le_bytes()); // XSDT length
        assert!(matches!(
            discover(&mem, 0xF_0010).unwrap_err(),
            AcpiError::BadTable {
                reason: "length out of bounds",
                ..
            }
        ));
        assert_eq!(
            discover(&Fake(vec![0; 0x10_0000]), 0).unwrap_err(),
            AcpiError::NoRsdp
        );
    }
}
