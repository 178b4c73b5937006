//! Loading and saving the configuration checkpoint on the first disk's reserved area, and
//! the start-up that uses it: configure the devices from it, or discover them cold (the
//! decision and its reasons are `unikernel::restart::startup`).

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use hpdi::{BufferPool, Device, Request, Segment, SgList};
use log::{info, warn};
use unikernel::acpi::AcpiInfo;
use unikernel::cmdline::Config;
use unikernel::restart::checkpoint::{self, Checkpoint, MAX_IMAGE, SLOT_OFFSETS};
use unikernel::restart::startup::{self, Cold, Found, Start};

use crate::dma::FrameRegion;
use crate::labels::sync_io;

/// Where the checkpoint read at boot came from.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Slot and generation of the newest valid checkpoint found.
    pub newest: Option<(usize, u64)>,
    /// The checkpoint the guest was configured from, if it was.
    pub used: Option<Checkpoint>,
}

/// Configures this start's devices: from the checkpoint on the boot disk (the first disk,
/// found without a scan) when there is one that still describes the machine, else by a
/// cold discovery.
pub fn configure(
    cfg: &Config,
    acpi: Option<&AcpiInfo>,
    phases: &mut crate::phases::Phases,
) -> (crate::discovery::Devices, Loaded) {
    let mmio = cfg.mmio_devices();
    let mut boot_disk = crate::discovery::boot_disk(acpi, mmio);
    let found = boot_disk.as_mut().map(|b| {
        let (newest, refused) = load(b.dev.as_mut());
        Found { newest, refused }
    });
    phases.mark("checkpoint_load");
    if let Some(f) = &found {
        report(&f.refused);
    }
    let mut loaded = Loaded {
        newest: found.as_ref().and_then(Found::newest_generation),
        used: None,
    };
    let cold = match startup::decide(found, cfg.checkpoint_ignore) {
        Start::Checkpoint { slot, checkpoint } => {
            match crate::discovery::from_checkpoint(acpi, mmio, &checkpoint, boot_disk) {
                Ok(d) => {
                    info!(
                        "checkpoint: generation {} from slot {slot}: {} devices configured without a scan",
                        checkpoint.generation,
                        d.records.len()
                    );
                    loaded.used = Some(checkpoint);
                    return (d, loaded);
                }
                Err(why) => Cold::Changed {
                    generation: checkpoint.generation,
                    why,
                },
            }
        }
        Start::Cold(cold) => {
            // Closed (which resets it) before discovery opens it again.
            drop(boot_disk);
            cold
        }
    };
    if cold.is_warning() {
        warn!("checkpoint: {cold}; discovering cold");
    } else if cold.is_logged() {
        info!("checkpoint: {cold}; discovering cold");
    }
    (crate::discovery::discover(acpi, mmio), loaded)
}

/// A disk after its label was read: (export name, device, read-only, raw device, label).
pub type Labelled = (
    String,
    String,
    bool,
    Box<dyn Device>,
    unikernel::restart::label::Label,
);

/// After the labels are known: keep the checkpoint the guest started from if it still
/// describes the disks, else save a fresh one (next generation, the other slot).
pub fn after_labels(
    devices: &crate::discovery::Devices,
    cfg: &unikernel::cmdline::Config,
    loaded: &Loaded,
    disks: &mut [Labelled],
) {
    let label_of = |dev: &str| disks.iter().find(|d| d.1 == dev).map(|d| d.4.uuid);
    let mut records: Vec<checkpoint::DeviceRecord> = Vec::new();
    for (name, r) in &devices.records {
        let mut r = *r;
        if r.kind == checkpoint::kind::BLK {
            r.label = label_of(name).unwrap_or_default();
        }
        records.push(r);
    }
    if let Some(cp) = &loaded.used {
        let changed: Vec<usize> = (0..records.len())
            .filter(|&i| {
                cp.devices
                    .get(i)
                    .is_none_or(|old| old.label != records[i].label)
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        warn!("checkpoint: disk label(s) changed since it was saved (device(s) {changed:?}): saving a new one");
    }
    let exports = disks
        .iter()
        .filter_map(|(name, dev, ro, _, label)| {
            let device = devices.records.iter().position(|(n, _)| n == dev)? as u16;
            let mut n = [0u8; 32];
            let len = name.len().min(32);
            n[..len].copy_from_slice(&name.as_bytes()[..len]);
            Some(checkpoint::ExportRecord {
                name: n,
                device,
                read_only: u8::from(*ro),
                label: label.uuid,
                size: label.data_size,
                ..Default::default()
            })
        })
        .collect();
    let ([a, b, c, d], prefix) = cfg.ip;
    let net = checkpoint::NetRecord {
        ip: [a, b, c, d],
        prefix,
        has_gateway: u8::from(cfg.gateway.is_some()),
        gateway: cfg.gateway.unwrap_or_default(),
        nbd_port: cfg.nbd_port,
        ..Default::default()
    };
    let generation = loaded.newest.map_or(1, |(_, g)| g + 1);
    let cp = Checkpoint {
        generation,
        net,
        devices: records,
        exports,
    };
    // The checkpoint lives on the first disk (the one a restart finds without scanning).
    let first = devices
        .records
        .iter()
        .find(|(_, r)| r.kind == checkpoint::kind::BLK)
        .map(|(n, _)| n.clone());
    let Some(target) = first.and_then(|n| disks.iter_mut().find(|d| d.1 == n)) else {
        info!("checkpoint: the first disk is not served here; none saved");
        return;
    };
    if let Err(e) = save(
        target.3.as_mut(),
        &cp,
        checkpoint::next_slot(loaded.newest.map(|(s, _)| s)),
    ) {
        warn!("checkpoint: not saved: {e}");
    }
}

fn pool(buffers: usize) -> Option<BufferPool> {
    let mem = FrameRegion::alloc(buffers * MAX_IMAGE)?;
    BufferPool::new(Box::new(mem), MAX_IMAGE).ok()
}

/// Reads both slots of `disk` (both reads in flight together, each only as long as the
/// largest image); returns the newest valid checkpoint and its slot.
pub fn load(
    disk: &mut dyn Device,
) -> (
    Option<(usize, Checkpoint)>,
    [Option<checkpoint::SlotError>; 2],
) {
    let reads = SLOT_OFFSETS.map(|off| (off, MAX_IMAGE as u32));
    let mut images = crate::labels::read_many(disk, &reads).into_iter();
    let mut next = || images.next().and_then(Result::ok).unwrap_or_default();
    let slots: [Vec<u8>; 2] = [next(), next()];
    checkpoint::newest([&slots[0], &slots[1]])
}

/// Writes `cp` into `slot` of the first disk (raw device, reserved area) and flushes it.
pub fn save(disk: &mut dyn Device, cp: &Checkpoint, slot: usize) -> Result<(), String> {
    let image = cp.encode().map_err(|e| alloc::format!("{e}"))?;
    let mut pool = pool(1).ok_or("no DMA memory")?;
    let b = pool.alloc().map_err(|e| alloc::format!("{e}"))?;
    let len = image.len().div_ceil(512) * 512;
    let seg = Segment {
        buf: b,
        offset: 0,
        len: len as u32,
    };
    let dst = pool.slice_mut(&seg).map_err(|e| alloc::format!("{e}"))?;
    dst.fill(0);
    dst[..image.len()].copy_from_slice(&image);
    sync_io(
        disk,
        &mut pool,
        Request::write(SLOT_OFFSETS[slot], SgList::one(seg), 0).with_fua(),
    )
    .map_err(|e| alloc::format!("{e}"))?;
    info!(
        "checkpoint: saved generation {} to slot {slot} ({} devices, {} exports, {} bytes)",
        cp.generation,
        cp.devices.len(),
        cp.exports.len(),
        image.len()
    );
    Ok(())
}

/// Logs why each slot was refused.
pub fn report(errs: &[Option<checkpoint::SlotError>; 2]) {
    for (i, e) in errs.iter().enumerate() {
        match e {
            Some(checkpoint::SlotError::Empty) | None => {}
            Some(e) => warn!("checkpoint: slot {i} ignored: {e}"),
        }
    }
}
