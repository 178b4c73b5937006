//! The configuration checkpoint across reboots: a cold first boot saves one, the next boot
//! configures from it without scanning, a corrupted slot or a replaced disk is reported and
//! handled, and the right data is served afterwards.

use std::path::Path;
use std::process::Command;

use tandem_qemu::builder::{Disk, Machine, Nic};
use tandem_qemu::vm::Vm;
use tandem_tests::*;

const MIB: u64 = 1 << 20;

fn boot(dir: &Path, disks: &[&str], port: u16) -> Vm {
    let mut cmd =
        guest_command(Machine::Q35, dir).nic(Nic::user().mac(test_mac()).forward(port, 10809));
    for d in disks {
        let p = dir.join(d);
        if !p.exists() {
            std::fs::File::create(&p)
                .unwrap()
                .set_len(32 * MIB)
                .unwrap();
        }
        cmd = cmd.disk(Disk::new(&p));
    }
    let mut vm = spawn(&cmd, dir);
    vm.wait_for_line("phases", BOOT_TIMEOUT, |l| l.text.contains("phases (us):"))
        .unwrap_or_else(|e| panic!("{e}"));
    vm
}

fn port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn qemu_io(port: u16, export: &str, cmds: &[&str]) -> bool {
    let mut args = vec!["-f".to_string(), "raw".into()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.to_string());
    }
    args.push(format!("nbd://127.0.0.1:{port}/{export}"));
    let out = Command::new("qemu-io")
        .args(&args)
        .output()
        .expect("qemu-io");
    out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("failed")
}

#[test]
fn cold_then_checkpoint_then_corrupt_slot_then_replaced_disk() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let p = port();
    // Cold: no checkpoint yet; one is saved after the disks are labelled.
    let mut vm = boot(dir.path(), &["a.raw", "b.raw"], p);
    let c = console(&vm);
    assert!(
        c.contains("checkpoint: none found; discovering cold"),
        "{c}"
    );
    assert!(
        c.contains("checkpoint: saved generation 1 to slot 0"),
        "{c}"
    );
    assert!(qemu_io(p, "blk1", &["write -P 0x31 0 64k"]));
    vm.kill();

    // Checkpoint: configured without a scan, nothing new saved.
    let mut vm = boot(dir.path(), &["a.raw", "b.raw"], p);
    let c = console(&vm);
    assert!(
        c.contains("checkpoint: generation 1 from slot 0: 3 devices configured without a scan"),
        "{c}"
    );
    assert!(!c.contains("checkpoint: saved"), "{c}");
    assert!(c.contains("pci_scan=0 "), "no bus was scanned\n{c}");
    assert!(qemu_io(p, "blk1", &["read -P 0x31 0 64k"]));
    vm.kill();

    // A corrupted slot: reported, cold discovery, a fresh checkpoint.
    let mut image = std::fs::read(dir.path().join("a.raw")).unwrap();
    image[(64 << 10) + 100] ^= 0xff;
    std::fs::write(dir.path().join("a.raw"), &image).unwrap();
    let mut vm = boot(dir.path(), &["a.raw", "b.raw"], p);
    let c = console(&vm);
    assert!(
        c.contains("checkpoint: slot 0 ignored: checksum mismatch"),
        "{c}"
    );
    assert!(c.contains("discovering cold"), "{c}");
    assert!(
        c.contains("checkpoint: saved generation 1 to slot 0"),
        "{c}"
    );
    vm.kill();

    // The second disk replaced by a blank one: the checkpoint no longer matches (reason
    // printed), a cold discovery writes a fresh one, and the new disk's (empty) data is what
    // is served.
    let mut vm = boot(dir.path(), &["a.raw", "c.raw"], p);
    let c = console(&vm);
    assert!(
        c.contains("not used: device 1 (blk1): its label is gone"),
        "{c}"
    );
    assert!(c.contains("discovering cold"), "{c}");
    assert!(
        c.contains("checkpoint: saved generation 2 to slot 1"),
        "{c}"
    );
    assert!(
        qemu_io(p, "blk1", &["read -P 0 0 64k"]),
        "the replaced disk's data is served"
    );
    vm.kill();
}

/// A guest reset through QMP (`system_reset`) boots again and takes the checkpoint path.
#[test]
fn qmp_system_reset_boots_from_the_checkpoint() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let p = port();
    let disk = dir.path().join("a.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    let cmd = guest_command(Machine::Q35, dir.path())
        .no_reboot(false)
        .disk(Disk::new(&disk))
        .nic(Nic::user().mac(test_mac()).forward(p, 10809));
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_for_line("saved", BOOT_TIMEOUT, |l| {
        l.text.contains("checkpoint: saved generation 1")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(qemu_io(p, "blk0", &["write -P 0x44 0 64k", "flush"]));
    vm.qmp(BOOT_TIMEOUT).unwrap().system_reset().unwrap();
    vm.wait_for_line("checkpoint used", BOOT_TIMEOUT, |l| {
        l.text.contains("checkpoint: generation 1 from slot 0")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for_line("serving", BOOT_TIMEOUT, |l| {
        l.text.contains("phases (us):") && l.text.contains("pci_scan=0")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let ready_lines = vm
        .history()
        .iter()
        .filter(|l| l.text.starts_with("TANDEM READY"))
        .count();
    assert_eq!(ready_lines, 2, "booted twice in one QEMU");
    assert!(qemu_io(p, "blk0", &["read -P 0x44 0 64k"]));
    vm.kill();
}
