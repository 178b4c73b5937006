//! PCI enumeration through ECAM (base from ACPI MCFG): the full scan a cold start does, and
//! single-function reads for a checkpoint start.

use alloc::vec::Vec;

use unikernel::acpi::EcamRegion;
use virtio_drivers::transport::pci::bus::{
    Cam, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, HeaderType, MmioCam, PciRoot,
};

pub type Root = PciRoot<MmioCam<'static>>;

/// Opens the configuration space of one ECAM window.
pub fn root(region: &EcamRegion) -> Root {
    // SAFETY: the window comes from a checksummed MCFG and lies below 4 GiB (identity-mapped
    // by the boot stub; checked by the caller); it is device memory that nothing else maps.
    PciRoot::new(unsafe { MmioCam::new(region.base as *mut u8, Cam::Ecam) })
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
