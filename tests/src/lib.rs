//! Shared helpers for the integration tests in `tests/tests/`.
//!
//! The tests boot the real guest image (`<workspace>/target/release/unikernel`, built once
//! with `cargo build --release -p unikernel` when missing) under real QEMU, with command
//! lines from the same typed builder `tandem` uses, each in its own temporary state
//! directory. They wait on observable conditions (a console line, QEMU's exit) with bounded
//! timeouts and kill QEMU when a deadline passes; nothing sleeps and hopes.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use tandem_qemu::accel;
use tandem_qemu::builder::{Disk, MacAddr, Machine, QemuCommand};
use tandem_qemu::console::{ConsoleEvent, InventoryEntry};
use tandem_qemu::size::ByteSize;
use tandem_qemu::vm::{SpawnOptions, Vm};

pub use tandem_qemu;

/// Upper bound for one boot to reach a condition (generous: TCG on a loaded 2-CPU host).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The MAC the tests give their NIC.
pub const TEST_MAC: &str = "52:54:00:aa:bb:01";

/// The workspace root (this package lives in `<workspace>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The guest image, built once (per process here, across processes by the builder's lock).
pub fn guest_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Some(p) = std::env::var_os(tandem_qemu::image::ENV_IMAGE).filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let ws = workspace_root();
        tandem_qemu::image::build_guest(&ws).unwrap_or_else(|e| panic!("{e}"));
        tandem_qemu::image::default_image_path(&ws)
    })
}

/// The `tandem` binary of this tree (built once per test process, a no-op when fresh, so a
/// test runs the code under test; `TANDEM_BIN` overrides).
pub fn tandem_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) =
            std::env::var_os(tandem_qemu::pair::api::ENV_TANDEM_BIN).filter(|p| !p.is_empty())
        {
            return PathBuf::from(p);
        }
        let ws = workspace_root();
        tandem_qemu::pair::api::build_tandem(&ws).unwrap_or_else(|e| panic!("{e:#}"));
        ws.join("target").join("release").join("tandem")
    })
}

/// A TCP port free on the host's loopback now (for QEMU's user-net forwards and daemons).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The QEMU executable.
pub fn qemu() -> PathBuf {
    tandem_qemu::qemu_bin::find_qemu().unwrap_or_else(|e| panic!("{e}"))
}

/// The accelerator for tests: `TANDEM_ACCEL` or auto (TCG on hosts without real KVM).
pub fn test_accel() -> accel::Accel {
    accel::choose(None).expect("valid TANDEM_ACCEL").accel
}

/// The test NIC's MAC.
pub fn test_mac() -> MacAddr {
    TEST_MAC.parse().expect("valid MAC")
}

/// A command booting the guest on `machine`, 64 MiB, QMP socket in `dir`, `-no-reboot`.
/// On microvm ACPI is off so QEMU lists the virtio-mmio devices on the guest command line.
pub fn guest_command(machine: Machine, dir: &Path) -> QemuCommand {
    let mut cmd = QemuCommand::new(qemu())
        .name("tandem-test")
        .machine(machine)
        .accel(test_accel())
        .memory(ByteSize::mib(64))
        .kernel(guest_image())
        .qmp_socket(dir.join("qmp.sock"))
        .no_reboot(true);
    if machine == Machine::Microvm {
        cmd = cmd.microvm_acpi(false);
    }
    cmd
}

/// A sparse raw disk of `size` named `name` in `dir`.
pub fn sparse_disk(dir: &Path, name: &str, size: ByteSize) -> Disk {
    let path = dir.join(name);
    tandem_qemu::state::create_sparse_disk(&path, size).expect("create sparse disk");
    Disk::new(path)
}

/// Start QEMU quietly, logging the console to `dir/console.log`.
pub fn spawn(cmd: &QemuCommand, dir: &Path) -> Vm {
    Vm::spawn(
        cmd,
        SpawnOptions {
            echo_console: false,
            echo_stderr: false,
            console_log: Some(dir.join("console.log")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\ncommand: {cmd}"))
}

/// The inventory lines seen so far.
pub fn inventory(vm: &Vm) -> Vec<InventoryEntry> {
    vm.history()
        .iter()
        .filter_map(|l| match &l.event {
            ConsoleEvent::Inventory(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// The console so far, for assertion messages.
pub fn console(vm: &Vm) -> String {
    vm.context()
}

/// Runs a client tool (qemu-img, nbdinfo, ...) with a 120 s deadline; returns its output,
/// success or not. A missing tool fails naming it; a timeout shows `vm`'s console.
pub fn run_tool(vm: &Vm, program: &str, args: &[&str]) -> std::process::Output {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} not runnable ({e}); run scripts/deps"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} {args:?} timed out\nguest:\n{}", console(vm));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a client tool that must succeed; returns its stdout.
pub fn tool(vm: &Vm, program: &str, args: &[&str]) -> String {
    let out = run_tool(vm, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\nstdout: {}\nstderr: {}\nguest:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        console(vm)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
