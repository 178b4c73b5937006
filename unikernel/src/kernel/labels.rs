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

/// Reads several `(offset, length)` ranges of one disk, all in flight together; each
/// result is the bytes read or why not. Lengths are whole blocks, at most 64 KiB each.
pub fn read_many(
    dev: &mut dyn Device,
    ranges: &[(u64, u32)],
) -> alloc::vec::Vec<Result<alloc::vec::Vec<u8>, String>> {
    let fail = |why: String| ranges.iter().map(|_| Err(why.clone())).collect();
    let Some(len) = ranges.iter().map(|r| r.1 as usize).max() else {
        return alloc::vec::Vec::new();
    };
    let buf_len = len.next_power_of_two().max(4096);
    let Some(mem) = crate::dma::FrameRegion::alloc(ranges.len() * buf_len) else {
        return fail("no DMA memory".into());
    };
    let mut pool = match BufferPool::new(Box::new(mem), buf_len) {
        Ok(p) => p,
        Err(e) => return fail(alloc::format!("{e}")),
    };
    let mut q = match QueuePair::new(ranges.len().next_power_of_two().max(2)) {
        Ok(q) => q,
        Err(e) => return fail(alloc::format!("{e}")),
    };
    let mut segs = alloc::vec::Vec::with_capacity(ranges.len());
    for (i, &(off, len)) in ranges.iter().enumerate() {
        let Ok(buf) = pool.alloc() else {
            return fail("no buffer".into());
        };
        let seg = Segment {
            buf,
            offset: 0,
            len,
        };
        if let Err(e) = q.submit(Request::read(off, SgList::one(seg), i as u64)) {
            return fail(alloc::format!("{e}"));
        }
        segs.push(seg);
    }
    let mut out: alloc::vec::Vec<Result<alloc::vec::Vec<u8>, String>> = ranges
        .iter()
        .map(|_| Err(String::from("the disk did not answer")))
        .collect();
    let mut done: alloc::vec::Vec<Completion> = alloc::vec::Vec::new();
    let mut pending = ranges.len();
    for _ in 0..50_000_000u32 {
        if pending == 0 {
            break;
        }
        q.poll(dev, &mut pool);
        q.reap(&mut done, usize::MAX);
        for c in done.drain(..) {
            let Some(i) = usize::try_from(c.tag).ok().filter(|&i| i < segs.len()) else {
                continue;
            };
            out[i] = match c.result {
                Ok(_) => Ok(pool.slice(&segs[i]).map(<[u8]>::to_vec).unwrap_or_default()),
                Err(e) => Err(alloc::format!("{e}")),
            };
            pending -= 1;
        }
    }
    out
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

/// What reading a label found: the label, or why there is none (`Absent` on a blank disk),
/// or the I/O error that stopped the read.
pub type LabelRead = Result<Result<Label, LabelError>, String>;

/// Reads the labels of several disks at once (every read in flight together, so the
/// disks' latencies overlap); nothing is written.
pub fn read_labels(devs: &mut [&mut dyn Device]) -> alloc::vec::Vec<LabelRead> {
    let n = devs.len();
    let mut out: alloc::vec::Vec<LabelRead> =
        (0..n).map(|_| Err(String::from("not read"))).collect();
    if n == 0 {
        return out;
    }
    let Some(mem) = crate::dma::FrameRegion::alloc(n * 4096) else {
        out.iter_mut()
            .for_each(|r| *r = Err("no DMA memory for the label reads".into()));
        return out;
    };
    let mut pool = match BufferPool::new(Box::new(mem), 4096) {
        Ok(p) => p,
        Err(e) => {
            out.iter_mut().for_each(|r| *r = Err(alloc::format!("{e}")));
            return out;
        }
    };
    let mut queues = alloc::vec::Vec::with_capacity(n);
    for (i, slot) in out.iter_mut().enumerate() {
        let started = (|| {
            let buf = pool.alloc()?;
            let seg = Segment {
                buf,
                offset: 0,
                len: 4096,
            };
            let mut q = QueuePair::new(2)?;
            q.submit(Request::read(0, SgList::one(seg), i as u64))?;
            Ok::<_, Error>((q, seg))
        })();
        match started {
            Ok(qs) => queues.push(Some(qs)),
            Err(e) => {
                *slot = Err(alloc::format!("reading the label: {e}"));
                queues.push(None);
            }
        }
    }
    let mut pending = queues.iter().filter(|q| q.is_some()).count();
    let mut done: alloc::vec::Vec<Completion> = alloc::vec::Vec::new();
    for _ in 0..50_000_000u32 {
        if pending == 0 {
            break;
        }
        for (i, entry) in queues.iter_mut().enumerate() {
            let Some((q, seg)) = entry else { continue };
            q.poll(&mut *devs[i], &mut pool);
            q.reap(&mut done, 1);
            let Some(c) = done.pop() else { continue };
            out[i] = match c.result {
                Ok(_) => Ok(Label::parse(pool.slice(seg).unwrap_or_default())),
                Err(e) => Err(alloc::format!("reading the label: {e}")),
            };
            *entry = None;
            pending -= 1;
        }
    }
    for (i, entry) in queues.iter().enumerate() {
        if entry.is_some() {
            out[i] = Err("reading the label: the disk did not answer".into());
        }
    }
    out
}

/// The label a disk is served under: the one read, or a new one written on a blank
/// writable disk; refuses a resized disk or an unusable label.
pub fn ensure_label(
    dev: &mut dyn Device,
    pool: &mut BufferPool,
    name: &str,
    read_only: bool,
    found: LabelRead,
) -> Result<Label, String> {
    let caps = dev.capabilities();
    match found? {
        Ok(l) if l.capacity != caps.capacity => Err(alloc::format!(
            "label says {} bytes but the disk has {}: resized disks are not served",
            l.capacity,
            caps.capacity
        )),
        Ok(l) => Ok(l),
        Err(LabelError::Absent) if !read_only && !caps.read_only => {
            let l = Label::new(uuid_from(random_bits()), name, caps.capacity, read_only).map_err(
                |_| alloc::format!("disk too small for the {RESERVED}-byte reserved area"),
            )?;
            write_label(dev, pool, &l)?;
            info!("label: {name}: new disk, labelled {}", Uuid(l.uuid));
            Ok(l)
        }
        Err(LabelError::Absent) => Err("no label and the disk is read-only".into()),
        Err(e) => Err(alloc::format!(
            "label unusable ({e:?}): not served, to protect its data"
        )),
    }
}

fn write_label(dev: &mut dyn Device, pool: &mut BufferPool, l: &Label) -> Result<(), String> {
    let buf = pool.alloc().map_err(|e| alloc::format!("{e}"))?;
    let seg = Segment {
        buf,
        offset: 0,
        len: 4096,
    };
    let result = (|| {
        let b = pool.slice_mut(&seg).map_err(|e| alloc::format!("{e}"))?;
        b.fill(0);
        b[..core::mem::size_of::<Label>()].copy_from_slice(zerocopy::IntoBytes::as_bytes(l));
        sync_io(
            &mut *dev,
            pool,
            Request::write(0, SgList::one(seg), 0).with_fua(),
        )
        .map_err(|e| alloc::format!("writing the label: {e}"))
    })();
    let _ = pool.free(buf);
    result.map(|_| ())
}

/// The data area behind a label: what the export serves.
pub fn data_area(dev: Box<dyn Device>, label: &Label) -> Result<Box<dyn Device>, String> {
    let part = Partition::new(dev, label.data_offset, label.data_size)
        .ok_or("the label's data area does not fit the disk")?;
    Ok(Box::new(part))
}
