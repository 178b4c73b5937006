//! The guest reports failures on its console and through the exit protocol.

use tandem_qemu::builder::{Machine, Nic};
use tandem_qemu::console::ConsoleEvent;
use tandem_qemu::exit::GuestExit;
use tandem_qemu::size::ByteSize;
use tandem_tests::*;

#[test]
fn panic_reports_and_fails() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let cmd = guest_command(Machine::Q35, dir.path()).cmdline("debug.panic=boot");
    let mut vm = spawn(&cmd, dir.path());
    let exit = vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let ctx = console(&vm);
    let panic = vm
        .history()
        .iter()
        .find_map(|l| match &l.event {
            ConsoleEvent::Panic(msg) => Some(msg.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no PANIC line\n{ctx}"));
    assert!(panic.starts_with("at "), "PANIC at <location>: {panic}");
    assert!(panic.contains("debug.panic"), "{panic}");
    assert!(
        vm.ready().is_none(),
        "panicked during boot, before ready\n{ctx}"
    );
    assert_eq!(exit, GuestExit::Failed, "{ctx}");
}

#[test]
fn page_fault_reported() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let cmd = guest_command(Machine::Q35, dir.path())
        .disk(sparse_disk(dir.path(), "a.raw", ByteSize::mib(64)))
        .cmdline("debug.fault=pagefault");
    let mut vm = spawn(&cmd, dir.path());
    let exit = vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let ctx = console(&vm);
    let (vector, text) = vm
        .history()
        .iter()
        .find_map(|l| match &l.event {
            ConsoleEvent::Exception { vector, text } => Some((*vector, text.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no EXCEPTION line\n{ctx}"));
    assert_eq!(vector, Some(14), "{text}");
    assert!(text.starts_with("EXCEPTION vector=14"), "{text}");
    assert!(text.contains("cr2="), "{text}");
    assert!(
        vm.history()
            .iter()
            .any(|l| matches!(l.event, ConsoleEvent::Panic(_))),
        "the exception is followed by a PANIC line\n{ctx}"
    );
    assert_eq!(exit, GuestExit::Failed, "{ctx}");
}

#[test]
fn unknown_cmdline_key_reported() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let cmd = guest_command(Machine::Q35, dir.path())
        .nic(Nic::user())
        .cmdline("frobnicate=1 exit=ready");
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_for_line("the unknown-key warning", BOOT_TIMEOUT, |l| {
        l.text.contains("unknown key 'frobnicate'")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit, GuestExit::Clean, "{}", console(&vm));
}

#[test]
fn malformed_cmdline_word_reported() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let cmd = guest_command(Machine::Q35, dir.path()).cmdline("=oops exit=ready");
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_for_line("the malformed-word warning", BOOT_TIMEOUT, |l| {
        l.text.contains("cmdline: malformed word")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let exit = vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit, GuestExit::Clean, "{}", console(&vm));
}
