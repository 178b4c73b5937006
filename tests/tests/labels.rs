//! Disk labels: a blank disk is labelled on first use, found again on the next boot, and a
//! disk whose label is corrupt is not served (its data is protected, the reason is printed).

use tandem_qemu::builder::{Disk, Machine, Nic};
use tandem_tests::*;

fn boot(dir: &std::path::Path) -> tandem_qemu::vm::Vm {
    let disk = dir.join("a.raw");
    if !disk.exists() {
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
    }
    let cmd = guest_command(Machine::Q35, dir)
        .disk(Disk::new(&disk))
        .nic(Nic::user().mac(test_mac()));
    spawn(&cmd, dir)
}

#[test]
fn labelled_once_then_recognised_and_corruption_refused() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let mut vm = boot(dir.path());
    vm.wait_for_line("label written", BOOT_TIMEOUT, |l| {
        l.text.contains("label: blk0: new disk, labelled")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for_line("served", BOOT_TIMEOUT, |l| {
        l.text.starts_with("TANDEM NBD ")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    vm.kill();
    let image = std::fs::read(dir.path().join("a.raw")).unwrap();
    assert_eq!(&image[..8], b"TNDMLABL");

    let mut vm = boot(dir.path());
    vm.wait_for_line("served", BOOT_TIMEOUT, |l| {
        l.text.starts_with("TANDEM NBD ")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !console(&vm).contains("new disk"),
        "relabelled a labelled disk\n{}",
        console(&vm)
    );
    vm.kill();

    // Flip a byte inside the label: the disk is refused, not relabelled.
    let mut image = std::fs::read(dir.path().join("a.raw")).unwrap();
    image[40] ^= 0xff;
    std::fs::write(dir.path().join("a.raw"), &image).unwrap();
    let mut vm = boot(dir.path());
    vm.wait_for_line("refused", BOOT_TIMEOUT, |l| {
        l.text.contains("label unusable")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for_line("not serving", BOOT_TIMEOUT, |l| {
        l.text.contains("nbd: not serving")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    vm.kill();
    let after = std::fs::read(dir.path().join("a.raw")).unwrap();
    assert_eq!(after[40], image[40], "the corrupt label was left as found");
}
