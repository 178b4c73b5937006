//! Restart in place: an error while serving (an injected panic, page fault, or disk queue
//! failure)
//! makes the guest re-initialise without a VM reboot, from its checkpoint, replay its write
//! log, and serve again; a client reconnects and reads back what it wrote before the error.

use std::process::Command;

use tandem_qemu::builder::{Disk, Machine, Nic, SharedRegion};
use tandem_qemu::exit::GuestExit;
use tandem_qemu::size::ByteSize;
use tandem_tests::*;

fn qemu_io(port: u16, cmds: &[&str]) -> (bool, String) {
    let mut args = vec!["-f".to_string(), "raw".into()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.to_string());
    }
    args.push(format!("nbd://127.0.0.1:{port}/blk0"));
    let out = Command::new("qemu-io")
        .args(&args)
        .output()
        .expect("qemu-io");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.contains("failed"), text)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A blank 64 MiB data disk and a 16 MiB NVRAM file in `dir`.
fn disk_and_nvram(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let disk = dir.join("a.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let nvram = dir.join("nvram.bin");
    std::fs::File::create(&nvram)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    (disk, nvram)
}

fn error_then_restart(inject: &str) {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let port = free_port();
    let (disk, nvram) = disk_and_nvram(dir.path());
    let cmd = guest_command(Machine::Q35, dir.path())
        .disk(Disk::new(&disk))
        .nic(Nic::user().mac(test_mac()).forward(port, 10809))
        .shared_region(SharedRegion::new(&nvram, ByteSize::mib(16)))
        .cmdline(&format!("durability=nvlog {inject}"));
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_for_line("NBD up", BOOT_TIMEOUT, |l| {
        l.text.starts_with("TANDEM NBD ")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Two requests succeed (the write is acknowledged, then flushed); the third meets the
    // injected error and the connection drops.
    let (_, text) = qemu_io(
        port,
        &["write -P 0x6b 0 256k", "flush", "read -P 0x6b 0 4k"],
    );
    assert!(text.contains("wrote 262144/262144"), "{text}");
    vm.wait_for_line("restart", BOOT_TIMEOUT, |l| {
        l.text.starts_with("TANDEM RESTART ")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let served_again = |l: &tandem_qemu::console::ConsoleLine| l.text.starts_with("TANDEM NBD ");
    vm.wait_for_line("serving again", BOOT_TIMEOUT, served_again)
        .unwrap_or_else(|e| panic!("{e}"));
    let c = console(&vm);
    let after = &c[c.find("TANDEM RESTART").unwrap()..];
    assert!(
        after.contains("devices configured without a scan"),
        "restart used the checkpoint\n{c}"
    );
    assert!(vm.exit_status().is_none(), "no VM reboot or exit");
    let (ok, text) = qemu_io(port, &["read -P 0x6b 0 256k"]);
    assert!(
        ok,
        "acknowledged write lost across the restart: {text}\n{c}"
    );
    assert_ne!(
        vm.stop(std::time::Duration::from_secs(5)),
        GuestExit::Failed
    );
}

#[test]
fn panic_while_serving_restarts_in_place() {
    error_then_restart("debug.panic_after_requests=3");
}

#[test]
fn page_fault_while_serving_restarts_in_place() {
    error_then_restart("debug.panic_after_requests=3 debug.fault=pagefault");
}

#[test]
fn fatal_device_error_while_serving_restarts_in_place() {
    error_then_restart("debug.device_error_after_requests=2");
}

#[test]
fn stalled_service_loop_is_caught_by_the_watchdog() {
    error_then_restart("debug.stall_after_requests=2 watchdog_ms=500");
}

/// Errors injected at run time through the management port (`status`, `inject KIND`).
#[test]
fn management_port_injects_errors_at_run_time() {
    let key = tandem_qemu::mgmt::generate_key().unwrap();
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let (port, mport) = (free_port(), free_port());
    let (disk, nvram) = disk_and_nvram(dir.path());
    let cmd = guest_command(Machine::Q35, dir.path())
        .disk(Disk::new(&disk))
        .nic(
            Nic::user()
                .mac(test_mac())
                .forward(port, 10809)
                .forward(mport, 10810),
        )
        .shared_region(SharedRegion::new(&nvram, ByteSize::mib(16)))
        .cmdline(&format!(
            "durability=nvlog watchdog_ms=500 {}",
            tandem_qemu::mgmt::cmdline_words(&key, true)
        ));
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_for_line("mgmt up", BOOT_TIMEOUT, |l| {
        l.text.contains("mgmt: control channel on tcp/10810")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let ask = |line: &str| -> String {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], mport));
        tandem_qemu::mgmt::command(addr, &key, line, BOOT_TIMEOUT).unwrap() + "\n"
    };
    for (n, kind) in ["pagefault", "stall", "device-error", "panic"]
        .iter()
        .enumerate()
    {
        let pattern = format!("write -P {} 0 64k", 0x20 + n);
        let (ok, text) = qemu_io(port, &[&pattern, "flush"]);
        assert!(ok, "{text}");
        assert!(
            ask("status").starts_with(&format!("ok restarts={n} ")),
            "restarts so far"
        );
        assert_eq!(
            ask("bogus"),
            "error unknown command 'bogus' (status, inject KIND)\n"
        );
        assert_eq!(
            ask(&format!("inject {kind}")),
            format!("ok injecting {kind}\n")
        );
        if *kind == "device-error" {
            // The failure shows on the next disk completion.
            let _ = qemu_io(port, &["read 0 4k"]);
        }
        vm.wait_for_line("restart", BOOT_TIMEOUT, |l| {
            l.text.starts_with("TANDEM RESTART ") && l.text.contains(&format!("n={}", n + 1))
        })
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
        vm.wait_for_line("serving again", BOOT_TIMEOUT, |l| {
            l.text.starts_with("TANDEM NBD ")
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let check = format!("read -P {} 0 64k", 0x20 + n);
        let (ok, text) = qemu_io(port, &[&check]);
        assert!(
            ok,
            "{kind}: data written before the error: {text}\n{}",
            console(&vm)
        );
    }
    vm.kill();
}
