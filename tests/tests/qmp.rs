//! QMP against a real QEMU: with no guest at all, and with the booted guest.

use std::time::{Duration, Instant};

use tandem_qemu::builder::{Machine, Nic, QemuCommand};
use tandem_qemu::exit::GuestExit;
use tandem_qemu::qmp::{Qmp, QmpError, DEFAULT_TIMEOUT};
use tandem_qemu::size::ByteSize;
use tandem_tests::*;

/// No kernel, CPUs stopped: the QMP client's handshake, replies, errors and `quit`.
#[test]
fn qmp_against_paused_qemu() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let cmd = QemuCommand::new(qemu())
        .machine(Machine::Q35)
        .accel(test_accel())
        .qmp_socket(&sock)
        .start_paused(true);
    let mut vm = spawn(&cmd, dir.path());
    let mut q = Qmp::connect_retry(&sock, Instant::now() + BOOT_TIMEOUT, DEFAULT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", console(&vm)));
    assert!(q.greeting()["QMP"]["version"]["qemu"]["major"].is_u64());
    assert_eq!(q.query_status().unwrap(), "prelaunch");
    let kvm = q.execute("query-kvm", None).unwrap();
    assert!(kvm["enabled"].is_boolean(), "{kvm}");
    match q.execute("no-such-command", None) {
        Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
        other => panic!("expected CommandNotFound, got {other:?}"),
    }
    q.quit().unwrap();
    let exit = vm
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit, GuestExit::Qemu(0));
}

/// Boot the guest (no exit=ready), wait for READY, `query-status` says running, `quit`
/// makes QEMU exit.
#[test]
fn qmp_query_status_and_quit_guest() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let cmd = guest_command(Machine::Q35, dir.path())
        .disk(sparse_disk(dir.path(), "a.raw", ByteSize::mib(64)))
        .nic(Nic::user());
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut q = vm.qmp(DEFAULT_TIMEOUT).unwrap();
    assert_eq!(q.query_status().unwrap(), "running");
    q.quit().unwrap();
    let exit = vm
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit, GuestExit::Qemu(0), "{}", console(&vm));
}

/// `Vm::stop` (what Ctrl-C does) ends a running guest through QMP.
#[test]
fn stop_quits_running_guest() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let cmd = guest_command(Machine::Microvm, dir.path());
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = vm.stop(Duration::from_secs(3));
    assert_eq!(exit, GuestExit::Qemu(0), "{}", console(&vm));
}
