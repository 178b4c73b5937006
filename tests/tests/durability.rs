//! Durability with real clients and real crashes: acknowledged, flushed writes survive QEMU
//! being killed (SIGKILL), under both settings.
//! - `disk`: after FLUSH returns, the data is in the disk image itself.
//! - `nvlog`: after FLUSH returns, the data may be only in the NVRAM log region (consistency
//!   points are held off here to make sure of it); the next boot replays it to the disk.

use std::path::Path;
use std::process::Command;

use tandem_qemu::builder::{Machine, Nic, SharedRegion};
use tandem_qemu::size::ByteSize;
use tandem_qemu::vm::Vm;
use tandem_tests::*;

/// Boots on `dir/a.raw` (created once) with an optional NVRAM file; waits for the service.
fn boot(dir: &Path, nvram: bool, cmdline: &str, port: u16) -> Vm {
    let disk = dir.join("a.raw");
    if !disk.exists() {
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
    }
    let mut cmd = guest_command(Machine::Q35, dir)
        .disk(tandem_qemu::builder::Disk::new(&disk))
        .nic(Nic::user().mac(test_mac()).forward(port, 10809))
        .cmdline(cmdline);
    if nvram {
        let f = dir.join("nvram.bin");
        if !f.exists() {
            std::fs::File::create(&f)
                .unwrap()
                .set_len(16 << 20)
                .unwrap();
        }
        cmd = cmd.shared_region(SharedRegion::new(&f, ByteSize::mib(16)));
    }
    let mut vm = spawn(&cmd, dir);
    vm.wait_for_line("NBD export", BOOT_TIMEOUT, |l| {
        l.text.starts_with("TANDEM NBD ")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    vm
}

fn qemu_io(vm: &Vm, port: u16, cmds: &[&str]) -> String {
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
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {cmds:?}: {text}{}\nguest:\n{}",
        String::from_utf8_lossy(&out.stderr),
        console(vm)
    );
    text
}

/// Whether the image holds `byte` at export offset `offset` (the export starts 1 MiB in,
/// after the label and checkpoint area).
fn disk_has(dir: &Path, offset: usize, len: usize, byte: u8) -> bool {
    let d = std::fs::read(dir.join("a.raw")).unwrap();
    let offset = offset + (1 << 20);
    d[offset..offset + len].iter().all(|&b| b == byte)
}

#[test]
fn disk_durability_flushed_writes_are_on_the_disk_after_sigkill() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let port = free_port();
    let mut vm = boot(dir.path(), false, "durability=disk", port);
    qemu_io(
        &vm,
        port,
        &["write -P 0x61 0 1M", "write -P 0x62 8M 256k", "flush"],
    );
    vm.kill();
    assert!(
        disk_has(dir.path(), 0, 1 << 20, 0x61),
        "flushed write not in the disk image"
    );
    assert!(disk_has(dir.path(), 8 << 20, 256 << 10, 0x62));
    let vm = boot(dir.path(), false, "", port);
    qemu_io(&vm, port, &["read -P 0x61 0 1M", "read -P 0x62 8M 256k"]);
}

#[test]
fn nvlog_durability_log_only_writes_replay_after_sigkill() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let port = free_port();
    let mut vm = boot(dir.path(), true, "durability=nvlog debug.cp=hold", port);
    qemu_io(
        &vm,
        port,
        &[
            "write -P 0x71 0 1M",
            "write -P 0x72 4M 512k",
            "flush",
            "write -P 0x73 0 64k",
            "flush",
        ],
    );
    vm.kill();
    assert!(
        !disk_has(dir.path(), 4 << 20, 512 << 10, 0x72),
        "held writes reached the disk"
    );
    // The next boot finds the records and replays them before anything else lands.
    let mut vm = boot(dir.path(), true, "durability=nvlog", port);
    vm.wait_for_line("replay done", BOOT_TIMEOUT, |l| {
        l.text.contains("nvlog: replay complete: 3 records")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        console(&vm).contains("3 record(s) to replay"),
        "{}",
        console(&vm)
    );
    qemu_io(
        &vm,
        port,
        &[
            "read -P 0x73 0 64k",
            "read -P 0x71 64k 960k",
            "read -P 0x72 4M 512k",
        ],
    );
    vm.kill();
    // Replayed to the disk (and flushed) by then.
    assert!(
        disk_has(dir.path(), 4 << 20, 512 << 10, 0x72),
        "replay did not reach the disk"
    );
}
