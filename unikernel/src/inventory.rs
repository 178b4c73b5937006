//! The device inventory: what the guest found on its buses at boot, device by device (where,
//! what kind, what it learned of it, or why it failed), and whether it drives it.
//!
//! Each [`Entry`] prints as one inventory line, `inventory: NAME KIND TRANSPORT LOCATION
//! key=value...`, NAME being `-` for a device the guest does not drive. The line is a console
//! contract: its prefix and the host's parser live in `tandem_formats::console`. [`count`]
//! and [`machine_name`] give the disk and NIC counts and the machine type that the kernel's
//! `TANDEM READY` line reports (that line is written with `tandem_formats::console::Ready`,
//! not here).

use core::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Pci {
        segment: u16,
        bus: u8,
        device: u8,
        function: u8,
    },
    Mmio {
        base: u64,
        irq: u32,
    },
}

impl Location {
    pub fn transport(&self) -> &'static str {
        match self {
            Location::Pci { .. } => "pci",
            Location::Mmio { .. } => "mmio",
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Pci {
                segment,
                bus,
                device,
                function,
            } => write!(f, "{segment:04x}:{bus:02x}:{device:02x}.{function:x}"),
            Location::Mmio { base, .. } => write!(f, "{base:#x}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceInfo {
    VirtioBlk {
        capacity_sectors: u64,
        read_only: bool,
        /// Virtqueue size the driver uses (requests in flight at most).
        queue_size: u16,
        /// Negotiated optional features, comma-separated (`indirect,flush,discard`).
        features: alloc::string::String,
    },
    VirtioNet {
        mac: [u8; 6],
    },
    /// A shared-memory region (ivshmem): BAR 2 address and size.
    SharedMemory {
        bar: u64,
        size: u64,
    },
    /// A virtio device of a type the guest does not drive.
    VirtioOther {
        device_type: u32,
    },
    /// A device that failed to initialise; listed with the reason.
    Failed {
        kind: &'static str,
        reason: alloc::string::String,
    },
    /// A PCI function we have no driver for.
    Unknown {
        vendor: u16,
        device: u16,
        class: u8,
        subclass: u8,
    },
}

/// One inventory entry: an optional name (`blk0`, `net0`) and what was found where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Option<alloc::string::String>,
    pub location: Location,
    pub info: DeviceInfo,
}

/// Formats a MAC address as `52:54:00:12:34:56`.
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name.as_deref().unwrap_or("-");
        let loc = &self.location;
        let t = loc.transport();
        f.write_str(tandem_formats::console::INVENTORY_PREFIX)?;
        match &self.info {
            DeviceInfo::VirtioBlk {
                capacity_sectors,
                read_only,
                queue_size,
                features,
            } => write!(
                f,
                "{name} virtio-blk {t} {loc} capacity={capacity_sectors} sectors=512B size={} ro={} queue={queue_size} features={}",
                crate::units::Bytes(capacity_sectors * 512),
                u8::from(*read_only),
                if features.is_empty() { "-" } else { features },
            )?,
            DeviceInfo::VirtioNet { mac } => {
                write!(f, "{name} virtio-net {t} {loc} mac={}", Mac(*mac))?
            }
            DeviceInfo::SharedMemory { bar, size } => write!(
                f,
                "{name} ivshmem {t} {loc} size={} bar2={bar:#x}",
                crate::units::Bytes(*size)
            )?,
            DeviceInfo::VirtioOther { device_type } => {
                write!(f, "{name} virtio-{device_type} {t} {loc} driver=none")?
            }
            DeviceInfo::Failed { kind, reason } => {
                write!(f, "{name} {kind} {t} {loc} error=\"{reason}\"")?
            }
            DeviceInfo::Unknown {
                vendor,
                device,
                class,
                subclass,
            } => write!(
                f,
                "{name} unknown {t} {loc} vendor={vendor:04x} device={device:04x} class={class:02x}.{subclass:02x}"
            )?,
        }
        if let Location::Mmio { irq, .. } = loc {
            write!(f, " irq={irq}")?;
        }
        Ok(())
    }
}

/// Counts used in the ready line.
pub fn count(entries: &[Entry]) -> (usize, usize) {
    let disks = entries
        .iter()
        .filter(|e| matches!(e.info, DeviceInfo::VirtioBlk { .. }))
        .count();
    let nics = entries
        .iter()
        .filter(|e| matches!(e.info, DeviceInfo::VirtioNet { .. }))
        .count();
    (disks, nics)
}

/// Guesses the machine type from the PCI host bridge (or its absence).
pub fn machine_name(host_bridge: Option<(u16, u16)>, mmio_devices: usize) -> &'static str {
    match host_bridge {
        Some((0x8086, 0x29c0)) => "q35",
        Some((0x8086, 0x1237)) => "pc",
        Some(_) => "pci",
        None if mmio_devices > 0 => "microvm",
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn lines() {
        let blk = Entry {
            name: Some("blk0".into()),
            location: Location::Pci {
                segment: 0,
                bus: 0,
                device: 2,
                function: 0,
            },
            info: DeviceInfo::VirtioBlk {
                capacity_sectors: 2_097_152,
                read_only: false,
                queue_size: 256,
                features: "indirect,flush".into(),
            },
        };
        assert_eq!(
            blk.to_string(),
            "inventory: blk0 virtio-blk pci 0000:00:02.0 capacity=2097152 sectors=512B size=1GiB ro=0 queue=256 features=indirect,flush"
        );
        let net = Entry {
            name: Some("net0".into()),
            location: Location::Mmio {
                base: 0xfeb0_0e00,
                irq: 12,
            },
            info: DeviceInfo::VirtioNet {
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            },
        };
        assert_eq!(
            net.to_string(),
            "inventory: net0 virtio-net mmio 0xfeb00e00 mac=52:54:00:12:34:56 irq=12"
        );
        let unk = Entry {
            name: None,
            location: Location::Pci {
                segment: 0,
                bus: 0,
                device: 0x1f,
                function: 2,
            },
            info: DeviceInfo::Unknown {
                vendor: 0x8086,
                device: 0x2922,
                class: 1,
                subclass: 6,
            },
        };
        assert_eq!(
            unk.to_string(),
            "inventory: - unknown pci 0000:00:1f.2 vendor=8086 device=2922 class=01.06"
        );
        // What the guest prints, the host's classifier (tandem_formats::console) reads back.
        for (e, name, kind, transport, props) in [
            (
                &blk,
                Some("blk0"),
                "virtio-blk",
                "pci",
                "capacity=2097152 sectors=512B size=1GiB ro=0 queue=256 features=indirect,flush",
            ),
            (
                &net,
                Some("net0"),
                "virtio-net",
                "mmio",
                "mac=52:54:00:12:34:56 irq=12",
            ),
            (
                &unk,
                None,
                "unknown",
                "pci",
                "vendor=8086 device=2922 class=01.06",
            ),
        ] {
            let line = alloc::format!("[    0.100000] INFO  {e}");
            let tandem_formats::console::Event::Inventory(i) =
                tandem_formats::console::Event::parse(&line)
            else {
                panic!("{line}")
            };
            assert_eq!(
                (i.name, i.kind, i.transport, i.location, i.props),
                (
                    name,
                    kind,
                    transport,
                    e.location.to_string().as_str(),
                    props
                )
            );
        }
        assert_eq!(count(&[blk.clone(), net, unk, blk]), (2, 1));
    }

    #[test]
    fn machines() {
        assert_eq!(machine_name(Some((0x8086, 0x29c0)), 0), "q35");
        assert_eq!(machine_name(None, 3), "microvm");
        assert_eq!(machine_name(None, 0), "none");
    }
}
