//! PCI enumeration through ECAM (base from ACPI MCFG): the full scan a cold start does, and
//! single-function reads for a checkpoint start.

use alloc::vec::Vec;
use core::cell::Cell;

use spin::Mutex;

use unikernel::acpi::EcamRegion;
use virtio_drivers::transport::pci::bus::{
    Cam, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, HeaderType, MmioCam, PciRoot,
};

pub type Root = PciRoot<SizingCam>;

/// ECAM base of the (single) window opened last: quiesce records it per device.
static ECAM_BASE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

pub fn ecam_base() -> u64 {
    ECAM_BASE.load(core::sync::atomic::Ordering::Relaxed)
}

/// Turns bus mastering off for one function (raw write, not through the sizing filter).
pub fn disable_bus_master(region: &EcamRegion, df: DeviceFunction) {
    // SAFETY: as in `root`; one configuration write.
    let mut cam = unsafe { MmioCam::new(region.base as *mut u8, Cam::Ecam) };
    let v = cam.read_word(df, 0x04);
    cam.write_word(df, 0x04, v & 0xffff & !(1 << 2));
}

/// Physical address of a modern virtio-pci function's common configuration structure
/// (vendor capability type 1), read from its capability list and BAR: reads only.
pub fn virtio_common_cfg(region: &EcamRegion, df: DeviceFunction) -> Option<u64> {
    // SAFETY: reads only.
    let cam = unsafe { root_cam(region) };
    if cam.read_word(df, 0x04) & (1 << 20) == 0 {
        return None; // no capability list
    }
    let mut ptr = (cam.read_word(df, 0x34) & 0xfc) as u8;
    for _ in 0..48 {
        if ptr < 0x40 {
            return None;
        }
        let head = cam.read_word(df, ptr);
        let (id, next, cfg_type) = (head as u8, (head >> 8) as u8 & 0xfc, (head >> 24) as u8);
        if id == 0x09 && cfg_type == 1 {
            let bar = cam.read_word(df, ptr + 4) as u8;
            let offset = cam.read_word(df, ptr + 8);
            if bar > 5 {
                return None;
            }
            let reg = 0x10 + 4 * bar;
            let low = cam.read_word(df, reg);
            if low & 1 != 0 {
                return None; // an I/O BAR
            }
            let high = if (low >> 1) & 3 == 2 && bar < 5 {
                u64::from(cam.read_word(df, reg + 4)) << 32
            } else {
                0
            };
            let base = high | u64::from(low & !0xf);
            return (base != 0).then_some(base + u64::from(offset));
        }
        ptr = next;
    }
    None
}

/// Opens the configuration space of one ECAM window.
pub fn root(region: &EcamRegion) -> Root {
    ECAM_BASE.store(region.base, core::sync::atomic::Ordering::Relaxed);
    // SAFETY: the window comes from a checksummed MCFG and lies below 4 GiB (identity-mapped
    // by the boot stub; checked by the caller); it is device memory that nothing else maps.
    let cam = unsafe { MmioCam::new(region.base as *mut u8, Cam::Ecam) };
    PciRoot::new(SizingCam {
        inner: cam,
        pending: Cell::new(None),
        recording: Cell::new(None),
        skipped: Cell::new(None),
    })
}

/// BAR size masks learnt this boot or loaded from the checkpoint, by (bus, device,
/// function, register). A fixed table, not the heap: it survives a restart in place.
static BAR_MASKS: Mutex<MaskTable> = Mutex::new(MaskTable {
    entries: [((0, 0, 0, 0), 0); 256],
    len: 0,
});

struct MaskTable {
    entries: [((u8, u8, u8, u8), u32); 256],
    len: usize,
}

impl MaskTable {
    fn get(&self, k: &(u8, u8, u8, u8)) -> Option<&u32> {
        self.entries[..self.len]
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v)
    }

    fn insert(&mut self, k: (u8, u8, u8, u8), v: u32) {
        if let Some(e) = self.entries[..self.len]
            .iter_mut()
            .find(|(key, _)| *key == k)
        {
            e.1 = v;
        } else if self.len < self.entries.len() {
            self.entries[self.len] = (k, v);
            self.len += 1;
        }
    }
}

fn key(df: DeviceFunction, reg: u8) -> (u8, u8, u8, u8) {
    (df.bus, df.device, df.function, reg)
}

fn is_bar(reg: u8) -> bool {
    (0x10..0x28).contains(&reg)
}

/// The six BAR masks of a function (0 where unknown), for the checkpoint.
pub fn bar_masks(df: DeviceFunction) -> [u32; 6] {
    let m = BAR_MASKS.lock();
    core::array::from_fn(|i| m.get(&key(df, 0x10 + 4 * i as u8)).copied().unwrap_or(0))
}

/// Forgets every BAR mask: a cold discovery learns them again, as on a first boot (the
/// table outlives a restart in place, and using it then would make "cold" partly warm).
pub fn forget_bar_masks() {
    BAR_MASKS.lock().len = 0;
}

/// Loads BAR masks saved in a checkpoint.
pub fn preload_bar_masks(df: DeviceFunction, masks: &[u32; 6]) {
    let mut m = BAR_MASKS.lock();
    for (i, &mask) in masks.iter().enumerate() {
        if mask != 0 {
            m.insert(key(df, 0x10 + 4 * i as u8), mask);
        }
    }
}

/// Configuration access that makes BAR sizing cheap. `virtio-drivers` sizes a BAR by
/// turning decoding off, writing all-ones, reading the mask, restoring the BAR and turning
/// decoding back on; under QEMU every one of those writes rebuilds the guest's memory map
/// (milliseconds per device under TCG). Here decode is never turned off (BARs are sized in
/// place, which is safe this early: nothing accesses them meanwhile), and a mask already
/// known — learnt earlier this boot or saved in the checkpoint — is answered from memory
/// without touching the device at all.
pub struct SizingCam {
    inner: MmioCam<'static>,
    /// A sizing read to answer from the cache.
    pending: Cell<Option<(DeviceFunction, u8, u32)>>,
    /// A real sizing whose read-back is to be remembered.
    recording: Cell<Option<(DeviceFunction, u8)>>,
    /// A BAR whose all-ones write was not forwarded (so its restore is not either).
    skipped: Cell<Option<(DeviceFunction, u8)>>,
}

impl ConfigurationAccess for SizingCam {
    fn read_word(&self, df: DeviceFunction, reg: u8) -> u32 {
        if let Some((p, r, mask)) = self.pending.get()
            && (p, r) == (df, reg)
        {
            self.pending.set(None);
            return mask;
        }
        let v = self.inner.read_word(df, reg);
        if self.recording.get() == Some((df, reg)) {
            self.recording.set(None);
            BAR_MASKS.lock().insert(key(df, reg), v);
        }
        v
    }

    fn write_word(&mut self, df: DeviceFunction, reg: u8, data: u32) {
        if is_bar(reg) && data == u32::MAX {
            let cached = BAR_MASKS.lock().get(&key(df, reg)).copied();
            match cached {
                Some(mask) => {
                    self.pending.set(Some((df, reg, mask)));
                    self.skipped.set(Some((df, reg)));
                }
                None => {
                    self.inner.write_word(df, reg, data);
                    self.recording.set(Some((df, reg)));
                }
            }
            return;
        }
        if is_bar(reg) && self.skipped.get() == Some((df, reg)) {
            self.skipped.set(None); // the restore of a BAR that was never changed
            return;
        }
        if reg == 0x04 {
            // Forward only writes that turn something on; decode is never turned off.
            let current = self.inner.read_word(df, 0x04) & 0xffff;
            if (data & 0xffff) & !current == 0 {
                return;
            }
        }
        self.inner.write_word(df, reg, data);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        SizingCam {
            // SAFETY: forwarded contract: the clone is only used to read.
            inner: unsafe { self.inner.unsafe_clone() },
            pending: Cell::new(None),
            recording: Cell::new(None),
            skipped: Cell::new(None),
        }
    }
}

/// Every function of every bus the window covers (what a cold start pays for).
pub fn scan_full(root: &Root, region: &EcamRegion) -> Vec<(DeviceFunction, DeviceFunctionInfo)> {
    (region.bus_start..=region.bus_end)
        .flat_map(|bus| root.enumerate_bus(bus))
        .collect()
}

/// The function at `df`, if one answers (one configuration read, plus one for the class).
pub fn function_info(region: &EcamRegion, df: DeviceFunction) -> Option<DeviceFunctionInfo> {
    // SAFETY: reads only.
    let cam = unsafe { root_cam(region) };
    let id = cam.read_word(df, 0);
    if id == u32::MAX {
        return None;
    }
    let class = cam.read_word(df, 8);
    let hdr = cam.read_word(df, 12);
    Some(DeviceFunctionInfo {
        vendor_id: id as u16,
        device_id: (id >> 16) as u16,
        class: (class >> 24) as u8,
        subclass: (class >> 16) as u8,
        prog_if: (class >> 8) as u8,
        revision: class as u8,
        header_type: HeaderType::from((hdr >> 16) as u8 & 0x7f),
    })
}

/// A read-only second handle on the window.
///
/// # Safety
/// Use it only to read registers.
unsafe fn root_cam(region: &EcamRegion) -> MmioCam<'static> {
    // SAFETY: see `root`; the caller only reads.
    unsafe { MmioCam::new(region.base as *mut u8, Cam::Ecam) }
}
