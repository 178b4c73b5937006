//! Every reason a start goes cold, and the checkpoint start, as the kernel logs them.

use std::string::{String, ToString};
use std::vec;

use super::*;
use crate::restart::checkpoint::{kind, transport};

fn checkpoint(generation: u64) -> Checkpoint {
    Checkpoint {
        generation,
        devices: vec![disk()],
        ..Checkpoint::default()
    }
}

fn disk() -> DeviceRecord {
    DeviceRecord {
        kind: kind::BLK,
        transport: transport::PCI,
        vendor: 0x1af4,
        device: 0x1042,
        label: [7; 16],
        capacity: 64 << 20,
        ..DeviceRecord::default()
    }
}

fn found(newest: Option<(usize, u64)>, refused: [Option<SlotError>; 2]) -> Found {
    Found {
        newest: newest.map(|(slot, g)| (slot, checkpoint(g))),
        refused,
    }
}

fn cold_line(start: &Start) -> String {
    match start {
        Start::Cold(c) => std::format!("checkpoint: {c}; discovering cold"),
        Start::Checkpoint { .. } => panic!("not cold: {start:?}"),
    }
}

#[test]
fn no_boot_disk_goes_cold_silently() {
    let s = decide(None, false);
    assert_eq!(s, Start::Cold(Cold::NoBootDisk));
    let Start::Cold(c) = s else { unreachable!() };
    assert!(!c.is_logged());
    assert!(!c.is_warning());
}

#[test]
fn two_empty_slots_mean_no_checkpoint() {
    let s = decide(Some(found(None, [Some(SlotError::Empty); 2])), false);
    assert_eq!(s, Start::Cold(Cold::NoCheckpoint));
    assert_eq!(cold_line(&s), "checkpoint: none found; discovering cold");
    assert!(matches!(&s, Start::Cold(c) if c.is_logged() && !c.is_warning()));
}

#[test]
fn a_damaged_slot_and_no_valid_one_is_corrupt() {
    for refused in [
        [Some(SlotError::BadChecksum), Some(SlotError::Empty)],
        [Some(SlotError::Empty), Some(SlotError::BadMagic)],
        [Some(SlotError::BadVersion(9)), Some(SlotError::BadLength)],
    ] {
        let s = decide(Some(found(None, refused)), false);
        assert_eq!(s, Start::Cold(Cold::Corrupt), "{refused:?}");
        // The same line as an empty disk: the slot's own warning says what was wrong.
        assert_eq!(cold_line(&s), "checkpoint: none found; discovering cold");
    }
}

#[test]
fn a_valid_checkpoint_is_used_even_beside_a_damaged_slot() {
    let f = found(Some((1, 4)), [Some(SlotError::BadChecksum), None]);
    assert_eq!(f.newest_generation(), Some((1, 4)));
    match decide(Some(f), false) {
        Start::Checkpoint { slot, checkpoint } => {
            assert_eq!(slot, 1);
            assert_eq!(checkpoint.generation, 4);
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn checkpoint_ignore_goes_cold_and_says_which() {
    let f = found(Some((0, 3)), [None, Some(SlotError::Empty)]);
    assert_eq!(
        f.newest_generation(),
        Some((0, 3)),
        "still the base of the next one"
    );
    let s = decide(Some(f), true);
    assert_eq!(s, Start::Cold(Cold::Ignored { generation: 3 }));
    assert_eq!(
        cold_line(&s),
        "checkpoint: generation 3 ignored (checkpoint=ignore); discovering cold"
    );
}

#[test]
fn checkpoint_ignore_without_a_checkpoint_is_just_none_found() {
    let s = decide(Some(found(None, [Some(SlotError::Empty); 2])), true);
    assert_eq!(s, Start::Cold(Cold::NoCheckpoint));
}

#[test]
fn a_changed_machine_is_a_warning_with_the_first_difference() {
    let c = Cold::Changed {
        generation: 2,
        why: Changed::NotAsBefore { device: 1 },
    };
    assert!(c.is_warning() && c.is_logged());
    assert_eq!(
        c.to_string(),
        "generation 2 not used: device 1: did not initialise as before"
    );
}

#[test]
fn pci_ids_must_match() {
    let r = disk();
    assert_eq!(
        check_pci_ids(0, "00:02.0", &r, Some((0x1af4, 0x1042))),
        Ok(())
    );
    let gone = check_pci_ids(3, "00:02.0", &r, None).unwrap_err();
    assert_eq!(gone.to_string(), "device 3: nothing at 00:02.0 any more");
    let other = check_pci_ids(3, "00:02.0", &r, Some((0x1af4, 0x1041))).unwrap_err();
    assert_eq!(
        other.to_string(),
        "device 3 at 00:02.0: expected 1af4:1042, found 1af4:1041"
    );
}

#[test]
fn mmio_ids_must_match() {
    let r = DeviceRecord {
        transport: transport::MMIO,
        base: 0xfeb0_0000,
        device: 2,
        ..disk()
    };
    assert_eq!(check_mmio_id(0, &r, Some(2)), Ok(()));
    assert_eq!(
        check_mmio_id(1, &r, Some(1)).unwrap_err().to_string(),
        "device 1 at 0xfeb00000: expected virtio id 2, found Some(1)"
    );
    assert_eq!(
        check_mmio_id(1, &r, None).unwrap_err().to_string(),
        "device 1 at 0xfeb00000: expected virtio id 2, found None"
    );
}

#[test]
fn where_devices_went() {
    assert_eq!(
        Changed::NoEcam {
            device: 0,
            segment: 1
        }
        .to_string(),
        "device 0: PCI segment 1 has no ECAM window now"
    );
    assert_eq!(
        Changed::NoMmioWindow {
            device: 2,
            base: 0xd000
        }
        .to_string(),
        "device 2: no virtio-mmio window at 0xd000 on the command line"
    );
    assert_eq!(
        Changed::NotInCheckpoint {
            name: "blk3".into()
        }
        .to_string(),
        "blk3: not in the checkpoint"
    );
}

fn label(uuid: [u8; 16], capacity: u64) -> Label {
    Label::new(uuid, "data", capacity, false).unwrap()
}

#[test]
fn the_same_disk_keeps_its_label() {
    let l = label([7; 16], 64 << 20);
    assert_eq!(check_label(0, "blk0", &disk(), Ok(Ok(l))), Ok(Some(l)));
}

#[test]
fn a_disk_not_ours_when_saved_is_not_checked() {
    let r = DeviceRecord {
        label: [0; 16],
        ..disk()
    };
    let read = Err(String::from("not read"));
    assert_eq!(check_label(0, "blk2", &r, read), Ok(None));
}

#[test]
fn a_different_disk_is_found_by_its_label() {
    let e = check_label(1, "blk1", &disk(), Ok(Ok(label([8; 16], 64 << 20)))).unwrap_err();
    assert!(
        matches!(e, Changed::DifferentDisk { device: 1, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("device 1 (blk1): a different disk (label 08080808-"),
        "{e}"
    );
}

#[test]
fn a_resized_disk_is_refused() {
    let e = check_label(1, "blk1", &disk(), Ok(Ok(label([7; 16], 128 << 20)))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "device 1 (blk1): resized (67108864 -> 134217728 bytes)"
    );
}

#[test]
fn a_missing_or_unreadable_label_is_refused() {
    let e = check_label(1, "blk1", &disk(), Ok(Err(LabelError::Absent))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "device 1 (blk1): its label is gone or unreadable (Absent)"
    );
    let e = check_label(2, "blk2", &disk(), Err("I/O error".into())).unwrap_err();
    assert_eq!(e.to_string(), "device 2 (blk2): I/O error");
}
