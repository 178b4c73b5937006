//! Device discovery: PCI functions through ECAM and virtio-mmio windows from the command
//! line. Every virtio-blk device is opened as an HPDI device (`frontend_drivers::virtio_blk`,
//! on a `virtio-drivers` transport) and registered by name; virtio-net is initialised through
//! `virtio-drivers`; everything else is listed in the inventory, never fatal.

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;
use core::ptr::NonNull;

use alloc::boxed::Box;
use frontend_drivers::memregion::MemRegion;
use log::{debug, warn};
use unikernel::acpi::AcpiInfo;
use unikernel::cmdline::MmioDevice;
use unikernel::inventory::{DeviceInfo, Entry, Location};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::pci::bus::{Command, DeviceFunction};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::{DeviceType, SomeTransport, Transport};

use frontend_drivers::virtio_blk::Features;
use frontend_drivers::virtio_net::NetInfo;

use crate::dma::FrameRegion;
use crate::virtio_hal::TandemHal;

/// `ivshmem-plain` (and `ivshmem-doorbell`): Red Hat vendor id, device 0x1110.
const IVSHMEM: (u16, u16) = (0x1af4, 0x1110);

pub type Transport_ = SomeTransport<'static>;

/// What discovery found and initialised.
#[derive(Default)]
pub struct Devices {
    pub inventory: Vec<Entry>,
    /// Block devices by name (`blk0`, ...), behind the HPDI.
    pub registry: hpdi::Registry,
    /// Transport of each registered device, by name (for reports).
    pub transports: Vec<(alloc::string::String, &'static str)>,
    /// NICs (HPDI devices), handed whole to the network stack rather than the registry.
    pub nics: Vec<(alloc::string::String, Box<dyn hpdi::Device>, NetInfo)>,
    /// Shared-memory windows by device name: (name, physical address, bytes).
    pub nvram: Vec<(alloc::string::String, u64, usize)>,
    /// Vendor and device id of the PCI host bridge at 00:00.0.
    pub host_bridge: Option<(u16, u16)>,
    pub pci_functions: usize,
    /// Time spent enumerating PCI (configuration-space reads), in microseconds.
    pub scan_us: u64,
}

impl Devices {
    /// Initialises a virtio device behind `transport` and records it.
    fn attach(&mut self, location: Location, transport: Transport_) {
        let info = match transport.device_type() {
            DeviceType::Block => {
                match frontend_drivers::virtio_blk::open::<TandemHal, _>(transport) {
                    Ok((dev, blk)) => {
                        let info = DeviceInfo::VirtioBlk {
                            capacity_sectors: blk.capacity_sectors,
                            read_only: blk.features.contains(Features::RO),
                            queue_size: blk.queue_size,
                            features: feature_names(blk.features),
                        };
                        let name = self.registry.add(dev);
                        self.transports.push((name.clone(), location.transport()));
                        return self.push(Some(name), location, info);
                    }
                    Err(e) => failed("virtio-blk", e),
                }
            }
            DeviceType::Network => {
                match frontend_drivers::virtio_net::open::<TandemHal, _>(transport) {
                    Ok((dev, net)) => {
                        let name = format!("net{}", self.nics.len());
                        let info = DeviceInfo::VirtioNet { mac: net.mac };
                        self.nics.push((name.clone(), dev, net));
                        return self.push(Some(name), location, info);
                    }
                    Err(e) => failed("virtio-net", e),
                }
            }
            other => DeviceInfo::VirtioOther {
                device_type: other as u32,
            },
        };
        self.push(None, location, info);
    }

    /// Registers an ivshmem device's BAR 2 (the shared region) as a memory device.
    fn attach_ivshmem(
        &mut self,
        root: &mut crate::pci::Root,
        df: DeviceFunction,
        location: Location,
    ) {
        let bar = match root.bar_info(df, 2) {
            Ok(Some(b)) => b.memory_address_size(),
            Ok(None) => None,
            Err(e) => return self.push(None, location, failed("ivshmem", e)),
        };
        let Some((addr, size)) = bar.filter(|&(a, s)| a != 0 && s != 0) else {
            return self.push(None, location, failed("ivshmem", "BAR 2 not assigned"));
        };
        if let Err(e) = crate::arch::paging::identity_map(addr, size) {
            return self.push(None, location, failed("ivshmem", format!("{e:?}")));
        }
        let (_, cmd) = root.get_status_command(df);
        root.set_command(df, cmd | Command::MEMORY_SPACE);
        // SAFETY: BAR 2 of this ivshmem function, just mapped; only this device uses it.
        let window = unsafe { FrameRegion::device_window(addr, size as usize) };
        let region = MemRegion::new(Box::new(window), 64);
        let name = self.registry.add(Box::new(region));
        self.transports.push((name.clone(), location.transport()));
        self.nvram.push((name.clone(), addr, size as usize));
        self.push(
            Some(name),
            location,
            DeviceInfo::SharedMemory { bar: addr, size },
        );
    }

    fn push(&mut self, name: Option<alloc::string::String>, location: Location, info: DeviceInfo) {
        self.inventory.push(Entry {
            name,
            location,
            info,
        });
    }
}

fn feature_names(f: Features) -> alloc::string::String {
    [
        (Features::RING_INDIRECT_DESC, "indirect"),
        (Features::RING_EVENT_IDX, "event-idx"),
        (Features::FLUSH, "flush"),
        (Features::DISCARD, "discard"),
        (Features::WRITE_ZEROES, "write-zeroes"),
    ]
    .iter()
    .filter(|(bit, _)| f.contains(*bit))
    .map(|(_, name)| *name)
    .collect::<Vec<_>>()
    .join(",")
}

fn failed(kind: &'static str, e: impl core::fmt::Display) -> DeviceInfo {
    DeviceInfo::Failed {
        kind,
        reason: e.to_string(),
    }
}

/// Enumerates PCI (when ACPI gave an ECAM window) and the virtio-mmio windows.
pub fn discover(acpi: Option<&AcpiInfo>, mmio: &[MmioDevice]) -> Devices {
    let mut devs = Devices::default();
    for region in acpi.map(|a| a.ecam_regions()).unwrap_or_default() {
        if region.base + region.size() > crate::arch::paging::BOOT_MAPPED {
            warn!(
                "ECAM window {:#x} is above 4 GiB; segment {} skipped",
                region.base, region.segment
            );
            continue;
        }
        let mut root = crate::pci::root(region);
        let t = crate::time::now_us();
        let functions = crate::pci::scan(&root, region);
        devs.scan_us += crate::time::now_us() - t;
        for (df, info) in functions {
            devs.pci_functions += 1;
            let location = Location::Pci {
                segment: region.segment,
                bus: df.bus,
                device: df.device,
                function: df.function,
            };
            if df.bus == 0 && df.device == 0 && df.function == 0 && info.class == 0x06 {
                devs.host_bridge = Some((info.vendor_id, info.device_id));
            }
            if (info.vendor_id, info.device_id) == IVSHMEM {
                devs.attach_ivshmem(&mut root, df, location);
            } else if virtio_device_type(&info).is_some() {
                match PciTransport::new::<TandemHal, _>(&mut root, df) {
                    Ok(t) => devs.attach(location, SomeTransport::from(t)),
                    Err(e) => devs.push(None, location, failed("virtio-pci", e)),
                }
            } else {
                devs.push(
                    None,
                    location,
                    DeviceInfo::Unknown {
                        vendor: info.vendor_id,
                        device: info.device_id,
                        class: info.class,
                        subclass: info.subclass,
                    },
                );
            }
        }
    }
    for dev in mmio {
        let location = Location::Mmio {
            base: dev.base,
            irq: dev.irq,
        };
        if let Err(e) = crate::arch::paging::identity_map(dev.base, dev.size) {
            devs.push(None, location, failed("virtio-mmio", format!("{e:?}")));
            continue;
        }
        let Some(header) = NonNull::new(dev.base as *mut VirtIOHeader) else {
            continue;
        };
        // SAFETY: the window is mapped (above) and named by the VMM on our command line as a
        // virtio-mmio device of `size` bytes; nothing else uses it.
        match unsafe { MmioTransport::new(header, dev.size as usize) } {
            Ok(t) => devs.attach(location, SomeTransport::from(t)),
            Err(e) => {
                debug!("virtio-mmio at {:#x}: {e}", dev.base);
                devs.push(None, location, failed("virtio-mmio", e));
            }
        }
    }
    devs
}
