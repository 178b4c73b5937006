//! PCI enumeration through ECAM (base from ACPI MCFG). Buses are found by following
//! PCI-to-PCI bridges from the window's first bus, so absent buses cost nothing.

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

/// Every function on every bus reachable from the window's first bus.
pub fn scan(root: &Root, region: &EcamRegion) -> Vec<(DeviceFunction, DeviceFunctionInfo)> {
    // SAFETY: the clone only reads bridge bus-number registers.
    let cam = unsafe { root_cam(region) };
    let mut found = Vec::new();
    let mut pending = Vec::from([region.bus_start]);
    let mut seen = [false; 256];
    while let Some(bus) = pending.pop() {
        if core::mem::replace(&mut seen[bus as usize], true) {
            continue;
        }
        for (df, info) in root.enumerate_bus(bus) {
            if info.header_type == HeaderType::PciPciBridge {
                let secondary = (cam.read_word(df, 0x18) >> 8) as u8;
                if secondary > bus && secondary <= region.bus_end {
                    pending.push(secondary);
                }
            }
            found.push((df, info));
        }
    }
    found.sort_by_key(|(df, _)| *df);
    found
}

/// A read-only second handle on the window.
///
/// # Safety
/// Use it only to read registers.
unsafe fn root_cam(region: &EcamRegion) -> MmioCam<'static> {
    // SAFETY: see `root`; the caller only reads.
    unsafe { MmioCam::new(region.base as *mut u8, Cam::Ecam) }
}
