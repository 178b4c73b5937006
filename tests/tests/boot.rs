//! Boot the real guest on q35 and microvm and check what it reports.

use tandem_qemu::builder::{Machine, Nic};
use tandem_qemu::console::Transport;
use tandem_qemu::exit::GuestExit;
use tandem_qemu::size::ByteSize;
use tandem_tests::*;

/// Two 64 MiB sparse disks and one NIC with `exit=ready`: the inventory shows both disks
/// with their capacity and the NIC with its MAC, the ready line counts them, and the guest
/// shuts down cleanly.
fn boot_two_disks_one_nic(machine: Machine, transport: Transport) {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let cmd = guest_command(machine, dir.path())
        .disk(sparse_disk(dir.path(), "a.raw", ByteSize::mib(64)))
        .disk(sparse_disk(dir.path(), "b.raw", ByteSize::mib(64)))
        .nic(Nic::user().mac(test_mac()))
        .cmdline("exit=ready");
    let mut vm = spawn(&cmd, dir.path());
    let ready = vm
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let ctx = console(&vm);

    let inv = inventory(&vm);
    let blks: Vec<_> = inv.iter().filter(|e| e.kind == "virtio-blk").collect();
    assert_eq!(blks.len(), 2, "two virtio-blk inventory lines\n{ctx}");
    for b in &blks {
        assert_eq!(b.prop("capacity"), Some("131072"), "{b:?}\n{ctx}");
        assert_eq!(b.transport, transport, "{b:?}");
        assert!(b.name.is_some(), "driven disks are named: {b:?}");
    }
    let nets: Vec<_> = inv.iter().filter(|e| e.kind == "virtio-net").collect();
    assert_eq!(nets.len(), 1, "one virtio-net inventory line\n{ctx}");
    assert_eq!(nets[0].prop("mac"), Some(TEST_MAC), "{:?}", nets[0]);
    assert_eq!(nets[0].transport, transport);

    assert_eq!(ready.get("machine"), Some(machine.name()), "{ready:?}");
    assert_eq!(ready.get("disks"), Some("2"), "{ready:?}");
    assert_eq!(ready.get("nics"), Some("1"), "{ready:?}");
    let ready_lines = vm
        .history()
        .iter()
        .filter(|l| l.text.starts_with("TANDEM READY"))
        .count();
    assert_eq!(ready_lines, 1, "exactly one ready line\n{ctx}");
    assert_eq!(exit, GuestExit::Clean, "{ctx}");
}

#[test]
fn boot_q35() {
    boot_two_disks_one_nic(Machine::Q35, Transport::Pci);
}

#[test]
fn boot_microvm() {
    boot_two_disks_one_nic(Machine::Microvm, Transport::Mmio);
}

#[test]
fn boot_in_32m() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let cmd = guest_command(Machine::Q35, dir.path())
        .memory(ByteSize::mib(32))
        .disk(sparse_disk(dir.path(), "a.raw", ByteSize::mib(64)))
        .nic(Nic::user())
        .cmdline("exit=ready");
    let mut vm = spawn(&cmd, dir.path());
    let ready = vm
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ready.get("disks"), Some("1"), "{ready:?}");
    assert_eq!(exit, GuestExit::Clean, "{}", console(&vm));
}

#[test]
fn read_only_disk_is_offered_read_only() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let cmd = guest_command(Machine::Q35, dir.path())
        .disk(sparse_disk(dir.path(), "rw.raw", ByteSize::mib(64)))
        .disk(sparse_disk(dir.path(), "ro.raw", ByteSize::mib(64)).read_only())
        .cmdline("exit=ready");
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit, GuestExit::Clean);
    let blks: Vec<_> = inventory(&vm)
        .into_iter()
        .filter(|e| e.kind == "virtio-blk")
        .collect();
    assert_eq!(blks.len(), 2, "{}", console(&vm));
    // The guest reports read-only disks as ro=1 (when it reports the flag at all).
    if let (Some(rw), Some(ro)) = (blks[0].prop("ro"), blks[1].prop("ro")) {
        assert_eq!((rw, ro), ("0", "1"), "{blks:?}");
    }
}
