//! The `tandem` command line (clap derive). The commands themselves live in [`crate::run`],
//! [`crate::bench`] and [`crate::qmp_cmd`].

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::accel::AccelChoice;
use crate::builder::{Disk, MacAddr, Machine};
use crate::size::ByteSize;

/// Tandem: boot and drive the storage-appliance unikernel under QEMU.
#[derive(Debug, Parser)]
#[command(name = "tandem", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot the guest under QEMU, stream its console, exit with its status.
    ///
    /// Exit status: 0 when the guest shuts down cleanly, 1 when it fails (panic or CPU
    /// exception), QEMU's own status otherwise, 130 after Ctrl-C, 124 after --timeout.
    Run(RunArgs),
    /// Send one QMP command to a running instance and print the JSON reply.
    Qmp(QmpArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Guest and QEMU options shared by `run` and `bench`.
#[derive(Debug, Clone, Args)]
pub struct VmArgs {
    /// Accelerator: auto = KVM only when /dev/kvm opens and the CPU shows vmx/svm, else TCG.
    /// Default from TANDEM_ACCEL, else auto.
    #[arg(long, value_enum)]
    pub accel: Option<AccelChoice>,
    /// Guest RAM: 32M, 1G, or a plain number of MiB.
    #[arg(long, default_value = "64M")]
    pub mem: ByteSize,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub smp: u32,
    /// Words appended to the guest command line, e.g. "exit=ready".
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// Guest image. Default: TANDEM_IMAGE, else <workspace>/target/release/unikernel
    /// (built with `cargo build --release -p unikernel` when missing).
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
}

/// `tandem run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Machine type.
    #[arg(long, value_enum, default_value_t = Machine::Q35)]
    pub machine: Machine,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub vm: VmArgs,
    /// A data disk (repeatable, in guest order). Format: qcow2 for a .qcow2 extension,
    /// else raw. Append ",ro" to attach read-only: --disk base.qcow2,ro.
    /// Without --disk, STATE_DIR/disk0.raw is used (created sparse, --disk-size).
    #[arg(long, value_name = "PATH[,ro]")]
    pub disk: Vec<DiskSpec>,
    /// Size of the default disk when it is created.
    #[arg(long, default_value = "1G", value_name = "SIZE")]
    pub disk_size: ByteSize,
    /// State directory: default disk, qmp.sock, qemu.pid, console.log.
    #[arg(long, default_value = crate::state::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Host port on 127.0.0.1 forwarded to the guest's NBD port 10809 (0: no forward).
    #[arg(long, default_value_t = 10809, value_name = "PORT")]
    pub nbd_port: u16,
    /// MAC address of the NIC (default: QEMU's).
    #[arg(long)]
    pub mac: Option<MacAddr>,
    /// microvm only: ACPI on or off. Default off: with ACPI on, QEMU describes the
    /// virtio-mmio devices only in ACPI tables and leaves them off the kernel command line
    /// (virtio_mmio.device=...), which is where the guest looks for them.
    #[arg(long, value_enum)]
    pub acpi: Option<OnOff>,
    /// Print the QEMU command line and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Exit instead of rebooting when the guest resets (e.g. on a triple fault).
    #[arg(long)]
    pub no_reboot: bool,
    /// Stop QEMU after this many seconds (exit status 124), for scripts.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

/// `on` / `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// `--disk PATH[,ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec(pub Disk);

impl FromStr for DiskSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, ro) = if let Some(p) = s.strip_suffix(",ro") {
            (p, true)
        } else if let Some(p) = s.strip_suffix(",rw") {
            (p, false)
        } else {
            (s, false)
        };
        if path.is_empty() {
            return Err("empty disk path".into());
        }
        let disk = Disk::new(path);
        Ok(DiskSpec(if ro { disk.read_only() } else { disk }))
    }
}

/// `tandem qmp`.
#[derive(Debug, Clone, Args)]
pub struct QmpArgs {
    /// State directory of the running instance.
    #[arg(long, default_value = crate::state::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
    /// QMP command, e.g. query-status, system_reset, quit.
    pub command: String,
    /// Arguments as a JSON object, e.g. '{"device": "net0"}'.
    pub args: Option<String>,
}

/// `tandem bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Boot the guest repeatedly with exit=ready; time QEMU spawn → TANDEM READY and → exit.
    Boot(BenchBootArgs),
}

/// Which machines to bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMachines {
    /// q35 only.
    Q35,
    /// microvm only.
    Microvm,
    /// Both, q35 first.
    Both,
}

impl BenchMachines {
    /// The machines, in order.
    pub fn list(self) -> Vec<Machine> {
        match self {
            BenchMachines::Q35 => vec![Machine::Q35],
            BenchMachines::Microvm => vec![Machine::Microvm],
            BenchMachines::Both => vec![Machine::Q35, Machine::Microvm],
        }
    }
}

/// `tandem bench boot`.
#[derive(Debug, Clone, Args)]
pub struct BenchBootArgs {
    /// Machine(s) to boot.
    #[arg(long, value_enum, default_value_t = BenchMachines::Both)]
    pub machine: BenchMachines,
    /// Boots per machine.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a bar chart (SVG) here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// State directory for the bench's disks and console logs.
    #[arg(long, default_value = ".tandem/bench", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Seconds one boot may take before the bench fails.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub boot_timeout: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub vm: VmArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_and_disks() {
        let cli = Cli::try_parse_from([
            "tandem",
            "run",
            "--disk",
            "a.raw",
            "--disk",
            "b.qcow2,ro",
            "--mem",
            "32M",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.machine, Machine::Q35);
        assert_eq!(r.vm.mem, ByteSize::mib(32));
        assert_eq!(r.vm.smp, 1);
        assert_eq!(r.nbd_port, 10809);
        assert_eq!(r.state_dir, PathBuf::from(".tandem/run"));
        assert_eq!(r.disk_size, ByteSize::gib(1));
        assert_eq!(r.disk[0].0, Disk::new("a.raw"));
        assert_eq!(r.disk[1].0, Disk::new("b.qcow2").read_only());
        assert_eq!(r.vm.accel, None);
    }

    #[test]
    fn bad_machine_is_rejected() {
        let err = Cli::try_parse_from(["tandem", "run", "--machine", "bogus"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("invalid value 'bogus'"), "{msg}");
        assert!(msg.contains("q35") && msg.contains("microvm"), "{msg}");
    }

    #[test]
    fn mem_plain_number_is_mib() {
        let cli = Cli::try_parse_from(["tandem", "run", "--mem", "128"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.vm.mem, ByteSize::mib(128));
        assert!(Cli::try_parse_from(["tandem", "run", "--mem", "lots"]).is_err());
    }

    #[test]
    fn bench_and_qmp_parse() {
        let cli = Cli::try_parse_from(["tandem", "bench", "boot", "--runs", "3"]).unwrap();
        let Command::Bench(BenchCommand::Boot(b)) = cli.command else {
            panic!()
        };
        assert_eq!(b.runs, 3);
        assert_eq!(b.machine, BenchMachines::Both);
        let cli = Cli::try_parse_from([
            "tandem",
            "qmp",
            "--state-dir",
            "/s",
            "device_del",
            r#"{"id":"x"}"#,
        ])
        .unwrap();
        let Command::Qmp(q) = cli.command else {
            panic!()
        };
        assert_eq!(q.command, "device_del");
        assert_eq!(q.args.as_deref(), Some(r#"{"id":"x"}"#));
    }
}
