//! The start-up decision: configure the devices from the configuration checkpoint, or
//! discover them cold, and why.
//!
//! The kernel reads both checkpoint slots from the first disk it finds cheaply (its boot
//! disk), asks [`decide`] what to do with what it found, and, when told to use the
//! checkpoint, configures exactly the devices it names, checking each against the machine
//! ([`check_pci_ids`], [`check_mmio_id`], [`check_label`]); the first difference sends it
//! cold with a [`Changed`] reason. Every [`Cold`] reason prints as the kernel's
//! `checkpoint: ...; discovering cold` line says it.

use alloc::string::String;
use core::fmt;

use super::checkpoint::{Checkpoint, DeviceRecord, SlotError};
use super::label::{Label, LabelError, Uuid};

/// What reading the boot disk's two checkpoint slots found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The newest valid checkpoint and its slot.
    pub newest: Option<(usize, Checkpoint)>,
    /// Why each slot was refused (`None`: it held a valid checkpoint).
    pub refused: [Option<SlotError>; 2],
}

impl Found {
    /// Slot and generation of the newest valid checkpoint (the next one saved goes to the
    /// other slot, one generation up).
    pub fn newest_generation(&self) -> Option<(usize, u64)> {
        self.newest
            .as_ref()
            .map(|(slot, cp)| (*slot, cp.generation))
    }
}

/// How this start configures its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// From the checkpoint in `slot`, once each device it names checks out.
    Checkpoint { slot: usize, checkpoint: Checkpoint },
    /// By a full discovery.
    Cold(Cold),
}

/// Why a start discovers cold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cold {
    /// No disk to read a checkpoint from (nothing is logged: there is nothing to say).
    NoBootDisk,
    /// Both slots are empty: the first start on these disks.
    NoCheckpoint,
    /// A slot holds something that is not a valid checkpoint (the slot's own line says
    /// what), and neither holds a valid one. Logged as "none found", like an empty disk.
    Corrupt,
    /// A valid checkpoint, ignored on request (`checkpoint=ignore`).
    Ignored { generation: u64 },
    /// A valid checkpoint that no longer describes the machine.
    Changed { generation: u64, why: Changed },
}

impl Cold {
    /// Whether the reason is a warning (the machine changed) rather than expected.
    pub fn is_warning(&self) -> bool {
        matches!(self, Cold::Changed { .. })
    }

    /// Whether the kernel says anything about it.
    pub fn is_logged(&self) -> bool {
        *self != Cold::NoBootDisk
    }
}

/// The words between `checkpoint: ` and `; discovering cold`.
impl fmt::Display for Cold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cold::NoBootDisk => write!(f, "no disk to read one from"),
            Cold::NoCheckpoint | Cold::Corrupt => write!(f, "none found"),
            Cold::Ignored { generation } => {
                write!(f, "generation {generation} ignored (checkpoint=ignore)")
            }
            Cold::Changed { generation, why } => {
                write!(f, "generation {generation} not used: {why}")
            }
        }
    }
}

/// What to do with what the boot disk's slots held (`None`: no boot disk), given
/// `checkpoint=ignore` (`ignore`).
pub fn decide(found: Option<Found>, ignore: bool) -> Start {
    let Some(found) = found else {
        return Start::Cold(Cold::NoBootDisk);
    };
    match found.newest {
        Some((_, cp)) if ignore => Start::Cold(Cold::Ignored {
            generation: cp.generation,
        }),
        Some((slot, checkpoint)) => Start::Checkpoint { slot, checkpoint },
        None if found
            .refused
            .iter()
            .any(|e| e.is_some_and(|e| e != SlotError::Empty)) =>
        {
            Start::Cold(Cold::Corrupt)
        }
        None => Start::Cold(Cold::NoCheckpoint),
    }
}

/// Why a checkpoint no longer describes the machine: the first difference found while
/// configuring from it. `device` is the record's index in the checkpoint; `at` is where
/// the kernel looked, as it names the place (a PCI function).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// The PCI segment the record names has no ECAM window now.
    NoEcam { device: usize, segment: u16 },
    /// Nothing answers at the PCI function any more.
    Gone { device: usize, at: String },
    /// A different PCI device answers there.
    Ids {
        device: usize,
        at: String,
        expected: (u16, u16),
        found: (u16, u16),
    },
    /// The command line names no virtio-mmio window at the record's base.
    NoMmioWindow { device: usize, base: u64 },
    /// The virtio-mmio window holds another device (or none).
    MmioId {
        device: usize,
        base: u64,
        expected: u16,
        found: Option<u32>,
    },
    /// The device did not come up as a device of the kind it was.
    NotAsBefore { device: usize },
    /// A disk found is not in the checkpoint.
    NotInCheckpoint { name: String },
    /// The disk carries another label: a different disk.
    DifferentDisk {
        device: usize,
        name: String,
        label: [u8; 16],
    },
    /// The disk's capacity changed.
    Resized {
        device: usize,
        name: String,
        from: u64,
        to: u64,
    },
    /// The disk's label is missing or damaged.
    LabelGone {
        device: usize,
        name: String,
        error: LabelError,
    },
    /// The label could not be read.
    Unreadable {
        device: usize,
        name: String,
        error: String,
    },
}

impl fmt::Display for Changed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Changed::NoEcam { device, segment } => {
                write!(
                    f,
                    "device {device}: PCI segment {segment} has no ECAM window now"
                )
            }
            Changed::Gone { device, at } => write!(f, "device {device}: nothing at {at} any more"),
            Changed::Ids {
                device,
                at,
                expected,
                found,
            } => write!(
                f,
                "device {device} at {at}: expected {:04x}:{:04x}, found {:04x}:{:04x}",
                expected.0, expected.1, found.0, found.1
            ),
            Changed::NoMmioWindow { device, base } => write!(
                f,
                "device {device}: no virtio-mmio window at {base:#x} on the command line"
            ),
            Changed::MmioId {
                device,
                base,
                expected,
                found,
            } => write!(
                f,
                "device {device} at {base:#x}: expected virtio id {expected}, found {found:?}"
            ),
            Changed::NotAsBefore { device } => {
                write!(f, "device {device}: did not initialise as before")
            }
            Changed::NotInCheckpoint { name } => write!(f, "{name}: not in the checkpoint"),
            Changed::DifferentDisk {
                device,
                name,
                label,
            } => write!(
                f,
                "device {device} ({name}): a different disk (label {})",
                Uuid(*label)
            ),
            Changed::Resized {
                device,
                name,
                from,
                to,
            } => write!(
                f,
                "device {device} ({name}): resized ({from} -> {to} bytes)"
            ),
            Changed::LabelGone {
                device,
                name,
                error,
            } => write!(
                f,
                "device {device} ({name}): its label is gone or unreadable ({error:?})"
            ),
            Changed::Unreadable {
                device,
                name,
                error,
            } => write!(f, "device {device} ({name}): {error}"),
        }
    }
}

/// The PCI function the kernel looked at (`at`) for record `device` must still answer with
/// the record's vendor and device ids.
pub fn check_pci_ids(
    device: usize,
    at: impl fmt::Display,
    record: &DeviceRecord,
    found: Option<(u16, u16)>,
) -> Result<(), Changed> {
    let at = || alloc::format!("{at}");
    match found {
        None => Err(Changed::Gone { device, at: at() }),
        Some(ids) if ids != (record.vendor, record.device) => Err(Changed::Ids {
            device,
            at: at(),
            expected: (record.vendor, record.device),
            found: ids,
        }),
        Some(_) => Ok(()),
    }
}

/// The virtio-mmio window of record `device` must still hold the device it did (`found`:
/// the virtio id there, `None` when the window did not initialise).
pub fn check_mmio_id(
    device: usize,
    record: &DeviceRecord,
    found: Option<u32>,
) -> Result<(), Changed> {
    match found {
        Some(id) if id == u32::from(record.device) => Ok(()),
        found => Err(Changed::MmioId {
            device,
            base: record.base,
            expected: record.device,
            found,
        }),
    }
}

/// What reading a disk's label gave: the label, or why there is none, or the I/O error that
/// stopped the read.
pub type LabelRead = Result<Result<Label, LabelError>, String>;

/// Disk `name` (record `device`) must still carry the label the checkpoint recorded, at the
/// same capacity. Returns the label to keep (the storage service need not read it again),
/// or `None` for a disk this node did not serve when the checkpoint was saved (a pair
/// node's view of its peer's disks: no label recorded, nothing to check).
pub fn check_label(
    device: usize,
    name: &str,
    record: &DeviceRecord,
    read: LabelRead,
) -> Result<Option<Label>, Changed> {
    if record.label == [0; 16] {
        return Ok(None);
    }
    let name = String::from(name);
    match read {
        Ok(Ok(label)) if label.uuid != record.label => Err(Changed::DifferentDisk {
            device,
            name,
            label: label.uuid,
        }),
        Ok(Ok(label)) if label.capacity != record.capacity => Err(Changed::Resized {
            device,
            name,
            from: record.capacity,
            to: label.capacity,
        }),
        Ok(Ok(label)) => Ok(Some(label)),
        Ok(Err(error)) => Err(Changed::LabelGone {
            device,
            name,
            error,
        }),
        Err(error) => Err(Changed::Unreadable {
            device,
            name,
            error,
        }),
    }
}

#[cfg(test)]
mod tests;
