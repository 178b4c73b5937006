//! `label`: the disk-label decoder (`tandem_formats::disk_label::Label::parse`) on the first
//! bytes of a disk, and what the guest builds from a label it accepts: the export's data
//! area (`frontend_drivers::partition::Partition` over a disk of the label's capacity, as
//! `kernel/labels.rs` does), its name, UUID text and write-log disk id.
//!
//! Input: `[mode, label bytes...]`. Mode bit 0 recomputes the label's checksum so the fuzzer
//! gets past it; bit 1 makes the disk's block size 4096 instead of 512.
//!
//! Checked, besides no panic: an accepted label is exactly its bytes, starts at or after the
//! reserved area, and a data area built from it sends every request it accepts inside the
//! disk.

use frontend_drivers::partition::Partition;
use hpdi::{BufferPool, Capabilities, Completion, Device, DeviceKind, Error, Op, OpSet, Request};
use tandem_formats::disk_label::{Label, Uuid, LABEL_MAGIC, LABEL_VERSION, RESERVED};
use tandem_formats::nvlog::{crc32c, disk_id_bytes};
use zerocopy::{FromBytes, IntoBytes};

use crate::Input;

/// A disk that only checks where requests land.
struct Disk(Capabilities);

impl Device for Disk {
    fn capabilities(&self) -> Capabilities {
        self.0
    }

    fn start(&mut self, _: &mut BufferPool, req: &Request) -> Result<(), Error> {
        let end = req.offset.checked_add(req.byte_len());
        assert!(
            end.is_some_and(|e| e <= self.0.capacity),
            "request at {} + {} outside a {}-byte disk",
            req.offset,
            req.byte_len(),
            self.0.capacity
        );
        Ok(())
    }

    fn complete(&mut self, _: &mut BufferPool, _: usize, _: &mut dyn FnMut(Completion)) -> usize {
        0
    }

    fn in_flight(&self) -> usize {
        0
    }
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let mut bytes = inp.rest().to_vec();
    const CRC_AT: usize = core::mem::offset_of!(Label, crc);
    if mode & 1 != 0 && bytes.len() >= core::mem::size_of::<Label>() {
        let crc = crc32c(&[&bytes[..CRC_AT]]);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(l) = Label::parse(&bytes) else {
        return;
    };
    assert_eq!(l.as_bytes(), &bytes[..l.as_bytes().len()]);
    assert_eq!((l.magic, l.version), (LABEL_MAGIC, LABEL_VERSION));
    assert!(l.data_offset >= RESERVED);
    assert!(l.name().len() <= 32);
    let _ = l.read_only();
    assert_eq!(Uuid(l.uuid).to_string().len(), 36);
    let _ = disk_id_bytes(&l.uuid, l.data_size);
    assert_eq!(Label::read_from_bytes(l.as_bytes()).unwrap(), l);

    // The data area on a disk of the capacity the label names (the guest refuses others).
    let block = if mode & 2 != 0 { 4096 } else { 512 };
    let disk = Disk(Capabilities {
        kind: DeviceKind::Block,
        block_size: block,
        capacity: l.capacity,
        max_segments: 32,
        queue_depth: 8,
        ops: OpSet::of(&[Op::Read, Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes]),
        read_only: false,
    });
    let Some(mut part) = Partition::new(Box::new(disk), l.data_offset, l.data_size) else {
        return;
    };
    let size = part.capabilities().capacity;
    assert_eq!(size, l.data_size);
    let mut pool = BufferPool::host(1, 4096).unwrap();
    let b = u64::from(block);
    for (offset, len) in [
        (0, b),
        (size.saturating_sub(b), b),
        (size, b),
        (size.saturating_sub(b), 2 * b),
        (u64::MAX - b + 1, b),
    ] {
        for r in [
            Request::discard(offset, len, 0),
            Request::write_zeroes(offset, len, 0),
        ] {
            let _ = part.start(&mut pool, &r);
        }
    }
}
