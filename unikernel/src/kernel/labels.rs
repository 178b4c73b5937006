//! Disk labels at start: read the label of every exported disk through the HPDI, write one
//! on first use, and serve the data area behind it (`Partition`).

use alloc::boxed::Box;
use alloc::string::String;

use frontend_drivers::partition::Partition;
use hpdi::{BufferPool, Completion, Device, Error, QueuePair, Request, Segment, SgList};
use log::info;
use unikernel::restart::label::{uuid_from, Label, LabelError, Uuid, RESERVED};

/// Runs one request to completion (bounded).
pub fn sync_io(dev: &mut dyn Device, pool: &mut BufferPool, req: Request) -> Result<u32, Error> {
    let mut q = QueuePair::new(2)?;
    q.submit(req)?;
    let mut done: alloc::vec::Vec<Completion> = alloc::vec::Vec::new();
    for _ in 0..50_000_000u32 {
        q.poll(dev, pool);
        q.reap(&mut done, 1);
        if let Some(c) = done.pop() {
            return c.result;
        }
    }
    Err(Error::Device { status: u32::MAX })
}

fn random_bits() -> [u8; 16] {
    let mut x = crate::arch::cpu::rdtsc() | 1;
    core::array::from_fn(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    })
}

/// Reads the label of a disk without changing anything: (label UUID, disk capacity), or
/// `None` when it has no valid label.
pub fn peek_label(dev: &mut dyn Device) -> Option<([u8; 16], u64)> {
    let mem = crate::dma::FrameRegion::alloc(4096)?;
    let mut pool = BufferPool::new(Box::new(mem), 4096).ok()?;
    let buf = pool.alloc().ok()?;
    let seg = Segment {
        buf,
        offset: 0,
        len: 4096,
    };
    sync_io(dev, &mut pool, Request::read(0, SgList::one(seg), 0)).ok()?;
    let label = Label::parse(pool.slice(&seg).ok()?).ok()?;
    Some((label.uuid, dev.capabilities().capacity))
}

/// Reads the label of a disk, writing one on a blank writable disk.
pub fn ensure_label(
    dev: &mut dyn Device,
    pool: &mut BufferPool,
    name: &str,
    read_only: bool,
) -> Result<Label, String> {
    let caps = dev.capabilities();
    let buf = pool.alloc().map_err(|e| alloc::format!("{e}"))?;
    let seg = Segment {
        buf,
        offset: 0,
        len: 4096,
    };
    let result = (|| {
        sync_io(dev, pool, Request::read(0, SgList::one(seg), 0))
            .map_err(|e| alloc::format!("reading the label: {e}"))?;
        let found = Label::parse(pool.slice(&seg).unwrap_or_default());
        let label = match found {
            Ok(l) if l.capacity != caps.capacity => {
                return Err(alloc::format!(
                    "label says {} bytes but the disk has {}: resized disks are not served",
                    l.capacity,
                    caps.capacity
                ))
            }
            Ok(l) => l,
            Err(LabelError::Absent) if !read_only && !caps.read_only => {
                let l = Label::new(uuid_from(random_bits()), name, caps.capacity, read_only)
                    .map_err(|_| {
                        alloc::format!("disk too small for the {RESERVED}-byte reserved area")
                    })?;
                let b = pool.slice_mut(&seg).map_err(|e| alloc::format!("{e}"))?;
                b.fill(0);
                b[..core::mem::size_of::<Label>()]
                    .copy_from_slice(zerocopy::IntoBytes::as_bytes(&l));
                sync_io(
                    &mut *dev,
                    pool,
                    Request::write(0, SgList::one(seg), 0).with_fua(),
                )
                .map_err(|e| alloc::format!("writing the label: {e}"))?;
                info!("label: {name}: new disk, labelled {}", Uuid(l.uuid));
                l
            }
            Err(LabelError::Absent) => return Err("no label and the disk is read-only".into()),
            Err(e) => {
                return Err(alloc::format!(
                    "label unusable ({e:?}): not served, to protect its data"
                ))
            }
        };
        Ok(label)
    })();
    let _ = pool.free(buf);
    result
}

/// The data area behind a label: what the export serves.
pub fn data_area(dev: Box<dyn Device>, label: &Label) -> Result<Box<dyn Device>, String> {
    let part = Partition::new(dev, label.data_offset, label.data_size)
        .ok_or("the label's data area does not fit the disk")?;
    Ok(Box::new(part))
}
