//! Device discovery: PCI functions through ECAM and virtio-mmio windows from the command
//! line. Every virtio-blk device is opened as an HPDI device (`frontend_drivers::virtio_blk`,
//! on a `virtio-drivers` transport) and registered by name; virtio-net is initialised through
//! `virtio-drivers`; everything else is listed in the inventory, never fatal.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ptr::NonNull;

use alloc::boxed::Box;
use frontend_drivers::memregion::MemRegion;
use log::{debug, warn};
use unikernel::acpi::{AcpiInfo, EcamRegion};
use unikernel::cmdline::MmioDevice;
use unikernel::inventory::{DeviceInfo, Entry, Location};
use unikernel::restart::checkpoint::{self, Checkpoint, DeviceRecord};
use unikernel::restart::startup::{self, Changed};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::pci::bus::{Command, DeviceFunction, DeviceFunctionInfo};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::{DeviceType, SomeTransport, Transport};

use frontend_drivers::virtio_blk::{BlkInfo, Features};
use frontend_drivers::virtio_net::NetInfo;

use crate::dma::FrameRegion;
use crate::mmio::{self, Reg};
use crate::virtio_hal::TandemHal;

/// `ivshmem-plain` (and `ivshmem-doorbell`): Red Hat vendor id, device 0x1110.
const IVSHMEM: (u16, u16) = (0x1af4, 0x1110);

pub type Transport_ = SomeTransport<'static>;

/// A shared-memory window: an ivshmem BAR, registered as a memory device by `name`.
#[derive(Debug, Clone)]
pub struct Nvram {
    pub name: String,
    /// Physical address and bytes.
    pub addr: u64,
    pub len: usize,
    /// The window's words as registers (the pair's control words are read this way).
    pub regs: mmio::Block,
}

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
    /// Shared-memory windows (ivshmem BARs), in discovery order.
    pub nvram: Vec<Nvram>,
    /// What the checkpoint records, by device name, in discovery order.
    pub records: Vec<(alloc::string::String, DeviceRecord)>,
    /// Disk labels already read and checked (a checkpoint start), by device name.
    pub labels: Vec<(alloc::string::String, unikernel::restart::label::Label)>,
    /// Vendor and device id of the PCI host bridge at 00:00.0.
    pub host_bridge: Option<(u16, u16)>,
    pub pci_functions: usize,
    /// Time spent enumerating PCI (configuration-space reads), in microseconds.
    pub scan_us: u64,
}

impl Devices {
    /// Initialises a virtio device behind `transport` and records it.
    fn attach(&mut self, location: Location, transport: Transport_, ids: (u16, u16)) {
        let info = match transport.device_type() {
            DeviceType::Block => {
                match frontend_drivers::virtio_blk::open::<TandemHal, _>(transport) {
                    Ok((dev, blk)) => return self.add_blk(location, dev, &blk, ids),
                    Err(e) => failed("virtio-blk", e),
                }
            }
            DeviceType::Network => {
                match frontend_drivers::virtio_net::open::<TandemHal, _>(transport) {
                    Ok((dev, net)) => {
                        let name = format!("net{}", self.nics.len());
                        let info = DeviceInfo::VirtioNet { mac: net.mac };
                        let mut r = record(checkpoint::kind::NET, location, ids);
                        r.queue_size = net.queue_size;
                        r.mac = net.mac;
                        self.records.push((name.clone(), r));
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

    /// Registers an opened virtio-blk device and records it.
    fn add_blk(
        &mut self,
        location: Location,
        dev: Box<dyn hpdi::Device>,
        blk: &BlkInfo,
        ids: (u16, u16),
    ) {
        let info = DeviceInfo::VirtioBlk {
            capacity_sectors: blk.capacity_sectors,
            read_only: blk.features.contains(Features::RO),
            queue_size: blk.queue_size,
            features: feature_names(blk.features),
        };
        let name = self.registry.add(dev);
        self.transports.push((name.clone(), location.transport()));
        let mut r = record(checkpoint::kind::BLK, location, ids);
        r.features = blk.features.bits();
        r.queue_size = blk.queue_size;
        r.capacity = blk.capacity_sectors * 512;
        self.records.push((name.clone(), r));
        self.push(Some(name), location, info);
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
        // SAFETY: the same BAR: shared memory (RAM on the host), where any aligned load or
        // store is harmless to the device; what the words mean is the users' protocol.
        let regs = unsafe { mmio::Block::new(addr, size) };
        let region = MemRegion::new(Box::new(window), 64);
        let name = self.registry.add(Box::new(region));
        self.transports.push((name.clone(), location.transport()));
        self.nvram.push(Nvram {
            name: name.clone(),
            addr,
            len: size as usize,
            regs,
        });
        let mut r = record(checkpoint::kind::NVRAM, location, IVSHMEM);
        r.base = addr;
        r.size = size;
        self.records.push((name.clone(), r));
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

/// How to stop one device from touching memory before a restart in place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Nothing set yet.
    None,
    /// A virtio device reset: write 0 to the 32-bit status register (virtio-mmio) or the
    /// 8-bit `device_status` of the common configuration (virtio-pci). The device stops
    /// using its queues and QEMU completes in-flight requests before the write returns.
    MmioStatus(Reg<u32>),
    PciStatus(Reg<u8>),
    /// Bus mastering off (a PCI function whose virtio configuration was not found). Costly
    /// to undo under QEMU (it rebuilds the memory map), hence only the fallback.
    BusMaster {
        ecam: u64,
        df: (u8, u8, u8),
    },
}

/// Devices to stop before a restart in place. Fixed-size: it must outlive the heap.
static QUIESCE: spin::Mutex<([Stop; 64], usize)> = spin::Mutex::new(([Stop::None; 64], 0));

fn remember(entry: Stop) {
    let mut q = QUIESCE.lock();
    let (list, n) = &mut *q;
    if list[..*n].contains(&entry) || *n == list.len() {
        return;
    }
    list[*n] = entry;
    *n += 1;
}

/// Stops every device discovery started from using memory, before a restart in place
/// reuses the memory they were given.
pub fn quiesce_all() {
    let q = QUIESCE.lock();
    for stop in &q.0[..q.1] {
        match *stop {
            Stop::None => {}
            Stop::MmioStatus(status) => status.write(0),
            Stop::PciStatus(status) => status.write(0),
            Stop::BusMaster { ecam, df } => {
                let region = EcamRegion {
                    base: ecam,
                    segment: 0,
                    bus_start: 0,
                    bus_end: 255,
                };
                let df = DeviceFunction {
                    bus: df.0,
                    device: df.1,
                    function: df.2,
                };
                crate::pci::disable_bus_master(&region, df);
            }
        }
    }
}

/// How to stop a virtio-mmio device: its status register.
fn mmio_status(dev: &MmioDevice) -> Stop {
    // SAFETY: the 32-bit status register (offset 0x70) of a virtio-mmio window the VMM named
    // on the command line, mapped before this is called (identity map entries survive a
    // restart); writing 0 resets the device, which is what the restart path wants of it.
    Stop::MmioStatus(unsafe { Reg::new(dev.base + VIRTIO_MMIO_STATUS) })
}

/// Offset of the status register in a virtio-mmio window.
const VIRTIO_MMIO_STATUS: u64 = 0x70;

/// Offset of `device_status` in the virtio-pci common configuration.
const COMMON_DEVICE_STATUS: u64 = 20;

/// A checkpoint record of a device at `location` with PCI ids (or virtio id for MMIO).
fn record(kind: u8, location: Location, ids: (u16, u16)) -> DeviceRecord {
    let mut r = DeviceRecord {
        kind,
        vendor: ids.0,
        device: ids.1,
        ..Default::default()
    };
    match location {
        Location::Pci {
            segment,
            bus,
            device,
            function,
        } => {
            r.transport = checkpoint::transport::PCI;
            (r.segment, r.bus, r.dev, r.func) = (segment, bus, device, function);
        }
        Location::Mmio { base, irq } => {
            r.transport = checkpoint::transport::MMIO;
            (r.base, r.irq) = (base, irq);
        }
    }
    r
}

/// Whether checkpoint record `r` names the device at `location`.
fn same_place(r: &DeviceRecord, location: Location) -> bool {
    let l = record(r.kind, location, (r.vendor, r.device));
    (l.transport, l.segment, l.bus, l.dev, l.func, l.base)
        == (r.transport, r.segment, r.bus, r.dev, r.func, r.base)
}

fn failed(kind: &'static str, e: impl core::fmt::Display) -> DeviceInfo {
    DeviceInfo::Failed {
        kind,
        reason: e.to_string(),
    }
}

/// The ECAM windows below 4 GiB (identity-mapped); others are reported and skipped.
fn ecam_regions(acpi: Option<&AcpiInfo>) -> Vec<EcamRegion> {
    let mut out = Vec::new();
    for region in acpi.map(|a| a.ecam_regions()).unwrap_or_default() {
        if region.base + region.size() > crate::arch::paging::BOOT_MAPPED {
            warn!(
                "ECAM window {:#x} is above 4 GiB; segment {} skipped",
                region.base, region.segment
            );
            continue;
        }
        out.push(*region);
    }
    out
}

impl Devices {
    /// Initialises one PCI function (virtio, ivshmem, or listed as unknown).
    fn attach_pci(
        &mut self,
        root: &mut crate::pci::Root,
        segment: u16,
        df: DeviceFunction,
        info: &DeviceFunctionInfo,
    ) {
        let location = Location::Pci {
            segment,
            bus: df.bus,
            device: df.device,
            function: df.function,
        };
        let ids = (info.vendor_id, info.device_id);
        if ids == IVSHMEM || virtio_device_type(info).is_some() {
            // Decoding and bus mastering on (a restart turned mastering off).
            // Only a missing bit is written (see `pci::SizingCam`): a write costs a
            // rebuild of QEMU's memory map.
            let (_, cmd) = root.get_status_command(df);
            root.set_command(df, cmd | Command::MEMORY_SPACE | Command::BUS_MASTER);
        }
        if ids == IVSHMEM {
            self.attach_ivshmem(root, df, location);
            if let Some((_, r)) = self
                .records
                .last_mut()
                .filter(|(_, r)| r.kind == checkpoint::kind::NVRAM)
            {
                r.bar_masks = crate::pci::bar_masks(df);
            }
        } else if virtio_device_type(info).is_some() {
            let t0 = crate::time::now_us();
            let transport = PciTransport::new::<TandemHal, _>(root, df);
            let t1 = crate::time::now_us();
            let before = self.records.len();
            match transport {
                Ok(t) => {
                    // The transport mapped the BARs: the reset register is reachable now.
                    remember(stop_for(root, segment, df));
                    self.attach(location, SomeTransport::from(t), ids)
                }
                Err(e) => self.push(None, location, failed("virtio-pci", e)),
            }
            if self.records.len() > before
                && let Some((_, r)) = self.records.last_mut()
            {
                r.bar_masks = crate::pci::bar_masks(df);
            }
            debug!(
                "init {df}: transport {} us, driver {} us",
                t1 - t0,
                crate::time::now_us() - t1
            );
        } else {
            let unknown = DeviceInfo::Unknown {
                vendor: info.vendor_id,
                device: info.device_id,
                class: info.class,
                subclass: info.subclass,
            };
            self.push(None, location, unknown);
        }
    }

    /// Initialises the virtio device behind one MMIO window; returns its virtio device id.
    fn attach_mmio(&mut self, dev: &MmioDevice) -> Option<u32> {
        let location = Location::Mmio {
            base: dev.base,
            irq: dev.irq,
        };
        if let Err(e) = crate::arch::paging::identity_map(dev.base, dev.size) {
            self.push(None, location, failed("virtio-mmio", format!("{e:?}")));
            return None;
        }
        let header = NonNull::new(dev.base as *mut VirtIOHeader)?;
        remember(mmio_status(dev));
        // SAFETY: the window is mapped (above) and named by the VMM on our command line as a
        // virtio-mmio device of `size` bytes; nothing else uses it.
        match unsafe { MmioTransport::new(header, dev.size as usize) } {
            Ok(t) => {
                let id = t.device_type() as u32;
                self.attach(location, SomeTransport::from(t), (0, id as u16));
                Some(id)
            }
            Err(e) => {
                debug!("virtio-mmio at {:#x}: {e}", dev.base);
                self.push(None, location, failed("virtio-mmio", e));
                None
            }
        }
    }
}

/// How to stop a virtio-pci function: a reset through its common configuration, or bus
/// mastering off when that is not found.
fn stop_for(root: &crate::pci::Root, segment: u16, df: DeviceFunction) -> Stop {
    let ecam = root_base(root);
    let region = EcamRegion {
        base: ecam,
        segment,
        bus_start: 0,
        bus_end: 255,
    };
    match crate::pci::virtio_common_cfg(&region, df) {
        // SAFETY: the 8-bit `device_status` of this function's virtio common configuration,
        // in a BAR its transport mapped (identity map entries survive a restart); writing 0
        // resets the device, which is what the restart path wants of it.
        Some(cfg) => Stop::PciStatus(unsafe { Reg::new(cfg + COMMON_DEVICE_STATUS) }),
        None => Stop::BusMaster {
            ecam,
            df: (df.bus, df.device, df.function),
        },
    }
}

fn root_base(_root: &crate::pci::Root) -> u64 {
    crate::pci::ecam_base()
}

/// Cold discovery: every bus, device and function the ECAM windows cover, then the
/// virtio-mmio windows.
pub fn discover(acpi: Option<&AcpiInfo>, mmio: &[MmioDevice]) -> Devices {
    crate::pci::forget_bar_masks();
    let mut devs = Devices::default();
    for region in ecam_regions(acpi) {
        let mut root = crate::pci::root(&region);
        let t = crate::time::now_us();
        let functions = crate::pci::scan_full(&root, &region);
        devs.scan_us += crate::time::now_us() - t;
        for (df, info) in functions {
            devs.pci_functions += 1;
            if df.bus == 0 && df.device == 0 && df.function == 0 && info.class == 0x06 {
                devs.host_bridge = Some((info.vendor_id, info.device_id));
            }
            devs.attach_pci(&mut root, region.segment, df, &info);
        }
    }
    for dev in mmio {
        devs.attach_mmio(dev);
    }
    devs
}

/// Configures exactly the devices a checkpoint names, after checking that each one is
/// still what it was (its ids at its location). No bus is scanned.
pub fn from_checkpoint(
    acpi: Option<&AcpiInfo>,
    mmio: &[MmioDevice],
    cp: &Checkpoint,
    mut boot: Option<BootDisk>,
) -> Result<Devices, Changed> {
    let regions = ecam_regions(acpi);
    let mut devs = Devices::default();
    // Not adopted below, the boot disk is closed (which resets it) before anything else can
    // open it; when adopted, it must not be opened a second time.
    let named = |b: &BootDisk| cp.devices.iter().any(|r| same_place(r, b.location));
    if boot.as_ref().is_some_and(|b| !named(b)) {
        boot = None;
    }
    if let Some(region) = regions.first() {
        let host = DeviceFunction {
            bus: region.bus_start,
            device: 0,
            function: 0,
        };
        devs.host_bridge = crate::pci::function_info(region, host)
            .filter(|i| i.class == 0x06)
            .map(|i| (i.vendor_id, i.device_id));
    }
    for (i, r) in cp.devices.iter().enumerate() {
        if r.transport == checkpoint::transport::PCI {
            let Some(region) = regions.iter().find(|g| g.segment == r.segment) else {
                return Err(Changed::NoEcam {
                    device: i,
                    segment: r.segment,
                });
            };
            let mut root = crate::pci::root(region);
            let df = DeviceFunction {
                bus: r.bus,
                device: r.dev,
                function: r.func,
            };
            crate::pci::preload_bar_masks(df, &r.bar_masks);
            let info = crate::pci::function_info(region, df);
            startup::check_pci_ids(i, df, r, info.as_ref().map(|f| (f.vendor_id, f.device_id)))?;
            let Some(info) = info else {
                return Err(Changed::Gone {
                    device: i,
                    at: format!("{df}"),
                });
            };
            devs.pci_functions += 1;
            let location = Location::Pci {
                segment: r.segment,
                bus: df.bus,
                device: df.device,
                function: df.function,
            };
            match boot.take_if(|b| b.location == location) {
                // The disk the checkpoint was read from is open already.
                Some(b) => {
                    devs.add_blk(location, b.dev, &b.info, (info.vendor_id, info.device_id));
                    if let Some((_, rec)) = devs.records.last_mut() {
                        rec.bar_masks = crate::pci::bar_masks(df);
                    }
                }
                None => devs.attach_pci(&mut root, r.segment, df, &info),
            }
        } else if let Some(b) =
            boot.take_if(|b| matches!(b.location, Location::Mmio { base, .. } if base == r.base))
        {
            devs.add_blk(b.location, b.dev, &b.info, (0, r.device));
        } else {
            let Some(dev) = mmio.iter().find(|d| d.base == r.base) else {
                return Err(Changed::NoMmioWindow {
                    device: i,
                    base: r.base,
                });
            };
            startup::check_mmio_id(i, r, devs.attach_mmio(dev))?;
        }
        if devs.records.len() != i + 1 {
            return Err(Changed::NotAsBefore { device: i });
        }
    }
    check_labels(&mut devs, cp)?;
    Ok(devs)
}

/// A disk must still be the one the checkpoint names: its label decides. The labels are
/// read together, and kept for the storage service, which then need not read them again.
fn check_labels(devs: &mut Devices, cp: &Checkpoint) -> Result<(), Changed> {
    let mut names = Vec::new();
    let mut disks: Vec<&mut dyn hpdi::Device> = Vec::new();
    for (name, dev) in devs.registry.of_kind_mut(hpdi::DeviceKind::Block) {
        names.push(String::from(name));
        disks.push(dev);
    }
    let found = crate::labels::read_labels(&mut disks);
    for (name, read) in names.into_iter().zip(found) {
        let Some((i, r)) = cp
            .devices
            .iter()
            .enumerate()
            .zip(&devs.records)
            .find(|(_, (n, _))| *n == name)
            .map(|(ir, _)| ir)
        else {
            return Err(Changed::NotInCheckpoint { name });
        };
        if let Some(label) = startup::check_label(i, &name, r, read)? {
            devs.labels.push((name, label));
        }
    }
    Ok(())
}

/// The disk the checkpoint is read from, opened once and handed on to discovery.
pub struct BootDisk {
    pub location: Location,
    pub dev: Box<dyn hpdi::Device>,
    info: BlkInfo,
}

/// The first virtio-blk device, found cheaply (bus 0 only, or the first virtio-mmio window
/// holding a disk): where the checkpoint lives.
pub fn boot_disk(acpi: Option<&AcpiInfo>, mmio: &[MmioDevice]) -> Option<BootDisk> {
    for region in ecam_regions(acpi) {
        let mut root = crate::pci::root(&region);
        for dev in 0..32u8 {
            let df = DeviceFunction {
                bus: region.bus_start,
                device: dev,
                function: 0,
            };
            let Some(info) = crate::pci::function_info(&region, df) else {
                continue;
            };
            if virtio_device_type(&info) == Some(DeviceType::Block) {
                let (_, cmd) = root.get_status_command(df);
                root.set_command(df, cmd | Command::MEMORY_SPACE | Command::BUS_MASTER);
                let t = PciTransport::new::<TandemHal, _>(&mut root, df).ok()?;
                remember(stop_for(&root, region.segment, df));
                let (dev, info) =
                    frontend_drivers::virtio_blk::open::<TandemHal, _>(SomeTransport::from(t))
                        .ok()?;
                let location = Location::Pci {
                    segment: region.segment,
                    bus: df.bus,
                    device: df.device,
                    function: df.function,
                };
                return Some(BootDisk {
                    location,
                    dev,
                    info,
                });
            }
        }
    }
    for dev in mmio {
        crate::arch::paging::identity_map(dev.base, dev.size).ok()?;
        let header = NonNull::new(dev.base as *mut VirtIOHeader)?;
        // SAFETY: as in `attach_mmio`.
        let Ok(t) = (unsafe { MmioTransport::new(header, dev.size as usize) }) else {
            continue;
        };
        if t.device_type() == DeviceType::Block {
            remember(mmio_status(dev));
            let (d, info) =
                frontend_drivers::virtio_blk::open::<TandemHal, _>(SomeTransport::from(t)).ok()?;
            let location = Location::Mmio {
                base: dev.base,
                irq: dev.irq,
            };
            return Some(BootDisk {
                location,
                dev: d,
                info,
            });
        }
    }
    None
}
