//! The `tandem` command line (clap derive). The commands themselves live in [`crate::run`],
//! [`crate::bench`], [`crate::qmp_cmd`] and the modules each command names. The bench
//! commands' arguments become the benches' typed plans here (`BenchBlkArgs::plan` and so on):
//! this module depends on [`crate::bench`], never the other way round.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::accel::AccelChoice;
use crate::bench::blk::{Backend, BlkPlan, PathChoice};
use crate::bench::boot::BootPlan;
use crate::bench::failover::FailoverPlan;
use crate::bench::job::{BlockSize, RwMode};
use crate::bench::nbd::{FioJob, NbdPlan, NbdTarget};
use crate::bench::restart::{FaultKind, RestartPlan};
use crate::bench::{Outputs, VmPlan};
use crate::builder::{Disk, MacAddr, Machine};
use crate::pair::{Giveback, Node, Sig, Subnet};
use crate::size::ByteSize;

/// Tandem: boot and drive the storage-appliance unikernel under QEMU.
#[derive(Debug, Parser)]
#[command(name = "tandem", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parse an argument vector (program name first), for library callers such as the
    /// integration tests that do not use clap themselves.
    pub fn try_parse_args<I, T>(argv: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_from(argv)
    }
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
    /// Send one command to a running instance's management channel (authenticated with the
    /// state directory's `mgmt.key`) and print the reply: `status`, or `inject KIND`
    /// (KIND: panic, pagefault, gp, ud, stall, device-error; the guest needs
    /// `--cmdline debug.inject=on`).
    Mgmt(MgmtArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// A failover pair: two guests sharing a region, on a private network (see `pair up`).
    #[command(subcommand)]
    Pair(PairCommand),
    /// Appliance images: build one from a description, boot it, verify its manifest.
    #[command(subcommand)]
    Image(crate::appliance::cmd::ImageCommand),
    /// Random NBD operations and crashes against the guest, every read checked against the
    /// reference model; prints ops, crashes and divergences (exit 1 on a divergence).
    Check(crate::check::CheckArgs),
    /// TLS credentials for NBD over TLS (QEMU's tls-creds-x509 directory layout).
    #[command(subcommand)]
    Tls(TlsCommand),
}

/// `tandem tls ...`.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Make a throwaway CA and a server and a client certificate it signs, in DIR:
    /// ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem (keys
    /// 0600). The server certificate is valid for 127.0.0.1, localhost, 10.0.2.15 and each
    /// --name. For tests and first use; bring your own CA for anything real.
    Create(TlsCreateArgs),
}

/// `tandem tls create`.
#[derive(Debug, Clone, Args)]
pub struct TlsCreateArgs {
    /// The directory (created; existing credentials are never overwritten).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Another name the server certificate is valid for: an IP address or a DNS name
    /// (repeatable), e.g. the guest's address on a bridge.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// RSA 2048 keys (made with openssl) instead of ECDSA P-256.
    #[arg(long)]
    pub rsa: bool,
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

impl VmArgs {
    /// The benches' guest options.
    pub fn plan(&self) -> VmPlan {
        VmPlan {
            accel: self.accel,
            mem: self.mem,
            smp: self.smp,
            cmdline: self.cmdline.clone(),
            image: self.image.clone(),
        }
    }
}

/// `--json` and `--svg`.
fn outputs(json: &Option<PathBuf>, svg: &Option<PathBuf>) -> Outputs {
    Outputs {
        json: json.clone(),
        svg: svg.clone(),
    }
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
    /// Append ",blkdebug=CONF" to put it behind QEMU's blkdebug driver, which injects the
    /// errors the config file CONF describes, e.g. every write covering sector 4096 (the
    /// export's first MiB starts at sector 2048) failing with EIO:
    /// `[inject-error]` / `event = "pwritev"` / `iotype = "write"` / `errno = "5"` /
    /// `sector = "4096"` (keys: event, iotype read|write|flush|..., errno, sector,
    /// once on|off, immediately on|off; events pwritev, read_aio, flush_to_disk, ...).
    /// A disk whose label write or flush fails at boot is not served: target the data area,
    /// and gate flush rules with blkdebug states (tests/tests/disk_errors.rs has examples).
    /// Without --disk, STATE_DIR/disk0.raw is used (created sparse, --disk-size).
    #[arg(long, value_name = "PATH[,ro][,blkdebug=CONF]")]
    pub disk: Vec<DiskSpec>,
    /// Size of the default disk when it is created.
    #[arg(long, default_value = "1G", value_name = "SIZE")]
    pub disk_size: ByteSize,
    /// How the data disks reach the guest: qemu (virtio-blk on QEMU's block layer) or
    /// vhost-user (vhost-user-blk, each raw disk served by its own tandem-backend daemon,
    /// guest RAM in a shared memfd; the daemons stop when QEMU exits).
    #[arg(long, value_enum, default_value_t = DiskBackend::Qemu)]
    pub backend: DiskBackend,
    /// State directory: default disk, qmp.sock, qemu.pid, console.log.
    #[arg(long, default_value = crate::state::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Host port on 127.0.0.1 forwarded to the guest's NBD port 10809 (0: no forward).
    #[arg(long, default_value_t = 10809, value_name = "PORT")]
    pub nbd_port: u16,
    /// Host port on 127.0.0.1 forwarded to the guest's management port 10810 (0: no forward,
    /// and the channel stays off); the guest gets the state directory's key (`mgmt.key`,
    /// made when missing) and `mgmt.on_data=on`. Use it with `tandem mgmt`.
    #[arg(long, default_value_t = 10810, value_name = "PORT")]
    pub mgmt_port: u16,
    /// Serve NBD over TLS with the credentials in DIR (QEMU's tls-creds-x509 layout:
    /// ca-cert.pem, server-cert.pem, server-key.pem; `tandem tls create --dir DIR` makes a
    /// throwaway set). They reach the guest in its boot module (`<state-dir>/boot.module`,
    /// 0600), never on a command line.
    #[arg(long, value_name = "DIR")]
    pub tls: Option<PathBuf>,
    /// With --tls: `require` (plaintext clients get NBD_REP_ERR_TLS_REQD and see no export)
    /// or `on` (plaintext clients are served too).
    #[arg(long, value_enum, default_value_t = TlsModeArg::Require, requires = "tls")]
    pub tls_mode: TlsModeArg,
    /// With --tls: clients must present a certificate signed by ca-cert.pem (QEMU's
    /// verify-peer).
    #[arg(long, requires = "tls")]
    pub tls_verify_peer: bool,
    /// Use FILE as is as the guest's boot module (`-initrd`): an appliance's `boot.module`
    /// (0600), made by `tandem image build` with the key's word and the TLS files.
    #[arg(long, value_name = "FILE", hide = true, conflicts_with = "tls")]
    pub boot_module: Option<PathBuf>,
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
    /// Size of the guest's NVRAM region (STATE_DIR/nvram.bin, an ivshmem-plain device over
    /// that file) when the file is created: a power of two, at least 1M. Default 64M. An
    /// existing nvram.bin keeps its size and contents (delete it to start over).
    #[arg(long, value_name = "SIZE", value_parser = parse_nvram_size)]
    pub nvram_size: Option<ByteSize>,
    /// Give the guest no NVRAM region (its write log then lives in guest RAM).
    #[arg(long, conflicts_with = "nvram_size")]
    pub no_nvram: bool,
}

/// `--nvram-size`: a size QEMU can map as an ivshmem BAR (a power of two, at least 1 MiB).
pub fn parse_nvram_size(s: &str) -> Result<ByteSize, String> {
    parse_checked_size(s, crate::builder::SharedRegion::check_size)
}

/// A size that must also pass `check`.
fn parse_checked_size(
    s: &str,
    check: fn(ByteSize) -> Result<(), String>,
) -> Result<ByteSize, String> {
    let size: ByteSize = s
        .parse()
        .map_err(|e: crate::size::SizeError| e.to_string())?;
    check(size)?;
    Ok(size)
}

/// `tandem run --backend`: who serves the data disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiskBackend {
    /// virtio-blk devices on QEMU's own block layer.
    Qemu,
    /// vhost-user-blk devices served by tandem-backend (host-backend/).
    #[value(name = "vhost-user", alias = "vhost_user")]
    VhostUser,
}

/// `on` / `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// `--disk PATH[,ro][,blkdebug=CONF]` (the options in either order, after the path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec(pub Disk);

impl FromStr for DiskSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const BLKDEBUG: &str = ",blkdebug=";
        let (mut path, mut ro, mut blkdebug) = (s, None, None);
        loop {
            if let Some(p) = path.strip_suffix(",ro") {
                ro = ro.or(Some(true));
                path = p;
            } else if let Some(p) = path.strip_suffix(",rw") {
                ro = ro.or(Some(false));
                path = p;
            } else if let Some(i) = path.rfind(BLKDEBUG) {
                let conf = &path[i + BLKDEBUG.len()..];
                if conf.is_empty() {
                    return Err("blkdebug= needs a config file".into());
                }
                if blkdebug.replace(conf).is_some() {
                    return Err("blkdebug= given twice".into());
                }
                path = &path[..i];
            } else {
                break;
            }
        }
        if path.is_empty() {
            return Err("empty disk path".into());
        }
        let mut disk = Disk::new(path);
        if ro == Some(true) {
            disk = disk.read_only();
        }
        if let Some(conf) = blkdebug {
            disk = disk.blkdebug(conf);
        }
        Ok(DiskSpec(disk))
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

/// `tandem mgmt`.
#[derive(Debug, Args)]
pub struct MgmtArgs {
    /// State directory of the running instance (its `mgmt.key`).
    #[arg(long, default_value = crate::state::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Host port on 127.0.0.1 forwarded to the guest's management port (`tandem run
    /// --mgmt-port`).
    #[arg(long, default_value_t = 10810, value_name = "PORT")]
    pub port: u16,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
    /// The command: `status`, or `inject KIND`.
    #[arg(required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// `tandem bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Boot the guest repeatedly with exit=ready; time QEMU spawn → TANDEM READY and → exit.
    Boot(BenchBootArgs),
    /// Run fio's nbd engine against the guest's NBD service and, in the same run, against
    /// qemu-nbd on the host serving a copy of the same image (the anchor); print a table of
    /// median IOPS, MB/s and completion-latency percentiles with guest/anchor ratios.
    ///
    /// Each target gets its own copy of the image (write jobs change it), opened with
    /// cache=none and aio=native on both sides. The targets run one after the other (the
    /// guest is stopped before the anchor starts), each job --time seconds, --repeats times.
    Nbd(BenchNbdArgs),
    /// Run the guest's block benchmark against several QEMU block backends on one image and
    /// print a comparison table (median IOPS, MB/s, latency percentiles).
    ///
    /// Backends: threads, native, io_uring (virtio-blk with that QEMU aio=; io_uring only
    /// where this QEMU and kernel allow it), vhost-user (vhost-user-blk served by
    /// qemu-storage-daemon, guest RAM in a shared memfd) and tandem-backend (vhost-user-blk
    /// served by this workspace's tandem-backend, built when missing). Every backend
    /// bypasses the host page cache (cache.direct=on, --direct). One boot per run; each
    /// run's raw result goes to --json.
    Blk(BenchBlkArgs),
    /// Time how fast the guest serves NBD again after an injected error: restart in place
    /// with a cold discovery (checkpoint=ignore) against restart from the checkpoint, with a
    /// cold boot and a checkpoint boot beside them; one table per disk count, medians of
    /// --runs.
    ///
    /// Each run uses fresh blank 32 MiB raw disks and a fresh 16 MiB NVRAM file, and a small
    /// built-in NBD client reading 4 KiB of export blk0 (probing every 1 ms).
    Restart(BenchRestartArgs),
    /// Kill node A of a failover pair (SIGKILL of its QEMU) under a write load, --trials
    /// times, and time the takeover from the kill: detection, fencing, replay and address,
    /// client reconnect, first request served on A's address (median, p90, max). Every
    /// acknowledged write is read back through A's address after each takeover; a lost one
    /// fails the bench. Needs root (the pair's network namespace).
    Failover(BenchFailoverArgs),
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

impl BenchBootArgs {
    /// The bench's plan.
    pub fn plan(&self) -> BootPlan {
        BootPlan {
            machines: self.machine.list(),
            runs: self.runs,
            outputs: outputs(&self.json, &self.svg),
            state_dir: self.state_dir.clone(),
            boot_timeout: self.boot_timeout,
            vm: self.vm.plan(),
        }
    }
}

/// `tandem bench blk`.
#[derive(Debug, Clone, Args)]
pub struct BenchBlkArgs {
    /// Backends to compare, in table order (comma list). Default: all; io_uring is skipped
    /// with a reason where it cannot run. Ratios are against the first one.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub backends: Vec<Backend>,
    /// Machine type (microvm: virtio-mmio devices, modern transport for every backend).
    #[arg(long, value_enum, default_value_t = Machine::Q35)]
    pub machine: Machine,
    /// Access pattern(s): read, write, randread, randwrite, randrw (repeatable or comma list).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "randread")]
    pub rw: Vec<RwMode>,
    /// Block size(s): 4k, 64k, 1M, or bytes (repeatable or comma list).
    #[arg(long, value_delimiter = ',', default_value = "4k", value_name = "SIZE")]
    pub bs: Vec<BlockSize>,
    /// Queue depth(s) (comma list).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,8,32,128",
        value_name = "LIST"
    )]
    pub qd: Vec<u32>,
    /// I/Os per run.
    #[arg(long, value_name = "N", conflicts_with = "time_ms")]
    pub ops: Option<u64>,
    /// Milliseconds per run (default 2000 when --ops is not given).
    #[arg(long, value_name = "MS")]
    pub time_ms: Option<u64>,
    /// Runs per backend and case; the table shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// Guest I/O path: through the HPDI, calling the virtio driver directly, or both
    /// (adds an hpdi/direct IOPS ratio).
    #[arg(long, value_enum, default_value_t = PathChoice::Hpdi)]
    pub path: PathChoice,
    /// Bytes of the device the job touches from offset 0 (default: the guest's choice).
    #[arg(long, value_name = "SIZE")]
    pub span: Option<ByteSize>,
    /// Verify data (write-then-read) for write and randrw jobs.
    #[arg(long)]
    pub verify: bool,
    /// Raw data image shared by every backend. Default: a fresh image in the work dir,
    /// written in full (qemu-img preallocation=full) so that reads hit allocated blocks.
    #[arg(long, value_name = "PATH")]
    pub disk: Option<PathBuf>,
    /// Size of the default data image.
    #[arg(long, default_value = "1G", value_name = "SIZE")]
    pub disk_size: ByteSize,
    /// Directory for the scratch image, sockets and logs (a fresh subdirectory, removed
    /// afterwards). Default: the system temp dir. It must support O_DIRECT (not tmpfs).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Seconds one run (boot + job) may take. Default: 60 + 3 x --time-ms, or 300 with --ops.
    #[arg(long, value_name = "SECS")]
    pub run_timeout: Option<u64>,
    /// Write the results (every run's raw BENCH object included) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a bar chart (SVG) of IOPS per case per backend here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub vm: VmArgs,
}

impl BenchBlkArgs {
    /// The bench's plan.
    pub fn plan(&self) -> BlkPlan {
        BlkPlan {
            backends: self.backends.clone(),
            machine: self.machine,
            rw: self.rw.clone(),
            bs: self.bs.clone(),
            qd: self.qd.clone(),
            ops: self.ops,
            time_ms: self.time_ms,
            repeats: self.repeats,
            path: self.path,
            span: self.span,
            verify: self.verify,
            disk: self.disk.clone(),
            disk_size: self.disk_size,
            work_dir: self.work_dir.clone(),
            run_timeout: self.run_timeout,
            outputs: outputs(&self.json, &self.svg),
            vm: self.vm.plan(),
        }
    }
}

/// `tandem bench nbd`.
#[derive(Debug, Clone, Args)]
pub struct BenchNbdArgs {
    /// Targets, in table order (comma list): guest (the unikernel's NBD service through a
    /// QEMU user-networking port forward) and qemu-nbd (the host anchor).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "guest,qemu-nbd",
        value_name = "LIST"
    )]
    pub targets: Vec<NbdTarget>,
    /// fio jobs as RW:BS:QD (comma list); RW is read, write, randread, randwrite or randrw.
    /// Default: 4k random read and write at depth 1 and 16, 1M sequential read and write at
    /// depth 4.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = crate::bench::nbd::DEFAULT_JOBS,
        value_name = "LIST"
    )]
    pub jobs: Vec<FioJob>,
    /// Seconds each job runs (fio time_based runtime).
    #[arg(long, default_value_t = 5, value_name = "SECS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub time: u32,
    /// Seconds of warm-up before each job's measurement (fio ramp_time; not counted).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub ramp: u32,
    /// Runs per target and job; the table shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// Bytes of the export the jobs touch from offset 0 (fio size=). Default: all of it.
    #[arg(long, value_name = "SIZE")]
    pub span: Option<ByteSize>,
    /// fio sends an NBD FLUSH after every N writes (fio fsync=N); 0: never. With 1 both
    /// targets put every write on the disk before it counts (like with like: the guest's
    /// FLUSH waits for the disk under durability=disk, qemu-nbd's runs fdatasync); without
    /// it the guest acknowledges writes in its NVRAM log and qemu-nbd after an O_DIRECT
    /// write, and the table says so.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub fsync: u32,
    /// Raw image to start from. It is copied once per target (write jobs change the
    /// copies, never this file). Default: a fresh image written in full with zeros
    /// (qemu-img create -o preallocation=full), so reads hit allocated blocks.
    #[arg(long, value_name = "PATH")]
    pub disk: Option<PathBuf>,
    /// Size of the default image.
    #[arg(long, default_value = "1G", value_name = "SIZE")]
    pub disk_size: ByteSize,
    /// Machine type of the guest.
    #[arg(long, value_enum, default_value_t = Machine::Q35)]
    pub machine: Machine,
    /// Size of the guest's NVRAM region (a fresh file in the work dir; q35 only).
    #[arg(long, default_value = "64M", value_name = "SIZE", value_parser = parse_nvram_size)]
    pub nvram_size: ByteSize,
    /// Boot the guest without an NVRAM region.
    #[arg(long)]
    pub no_nvram: bool,
    /// Directory for the images and logs (a fresh subdirectory, removed afterwards).
    /// Default: the system temp dir. It must support O_DIRECT (not tmpfs) and hold two
    /// copies of the image.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Seconds the guest may take to boot and announce its export.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub boot_timeout: u64,
    /// Write the results (every run's fio job object included) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a bar chart (SVG) of median IOPS per job, guest vs anchor, here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Measure the cost of TLS instead: every job on guest, guest over TLS, qemu-nbd and
    /// qemu-nbd over TLS (throwaway credentials in the work dir), all with one client that
    /// can do TLS, nbdcopy (fio's nbd engine cannot), copying the whole export per run.
    /// Sequential read/write jobs only; defaults: --jobs
    /// read:4k:1,write:4k:1,read:1M:4,write:1M:4 and a 3 MiB image. --fsync N (N > 0)
    /// becomes nbdcopy --flush; --time, --ramp and --span are not used.
    #[arg(long)]
    pub tls: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub vm: VmArgs,
}

impl BenchNbdArgs {
    /// The bench's plan.
    pub fn plan(&self) -> NbdPlan {
        NbdPlan {
            targets: self.targets.clone(),
            jobs: self.jobs.clone(),
            time: self.time,
            ramp: self.ramp,
            repeats: self.repeats,
            span: self.span,
            fsync: self.fsync,
            disk: self.disk.clone(),
            disk_size: self.disk_size,
            machine: self.machine,
            nvram_size: self.nvram_size,
            no_nvram: self.no_nvram,
            work_dir: self.work_dir.clone(),
            boot_timeout: self.boot_timeout,
            outputs: outputs(&self.json, &self.svg),
            tls: self.tls,
            vm: self.vm.plan(),
        }
    }
}

/// `tandem bench restart`.
#[derive(Debug, Clone, Args)]
pub struct BenchRestartArgs {
    /// Numbers of data disks (comma list); each gets its own table.
    #[arg(long, value_delimiter = ',', default_value = "1,8", value_name = "LIST",
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub disks: Vec<u32>,
    /// Runs per disk count; the table shows the median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// The injected error.
    #[arg(long, value_enum, default_value_t = FaultKind::Panic)]
    pub kind: FaultKind,
    /// Directory for the disks and logs (a fresh subdirectory per run, removed afterwards).
    /// Default: the system temp dir.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Seconds a boot or a restart may take before the bench fails.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub boot_timeout: u64,
    /// Write the results (every run, every parsed phases line) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a bar chart (SVG) of the median times per start and disk count here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub vm: VmArgs,
}

impl BenchRestartArgs {
    /// The bench's plan.
    pub fn plan(&self) -> RestartPlan {
        RestartPlan {
            disks: self.disks.clone(),
            runs: self.runs,
            kind: self.kind,
            work_dir: self.work_dir.clone(),
            boot_timeout: self.boot_timeout,
            outputs: outputs(&self.json, &self.svg),
            vm: self.vm.plan(),
        }
    }
}

/// `tandem bench failover`.
#[derive(Debug, Clone, Args)]
pub struct BenchFailoverArgs {
    /// Kill trials.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub trials: u32,
    /// Peer silence (ms) after which B declares A failed (`pair.timeout_ms`).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub timeout_ms: u64,
    /// Blocks (4 KiB) the writer cycles through.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub slots: u64,
    /// The writer's per-request timeout (ms): how soon it gives up on a request to the dead
    /// node and reconnects. A Linux TCP connection otherwise notices the new owner of the
    /// address only at its next retransmission (up to seconds later).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub client_timeout_ms: u64,
    /// Acknowledged writes before each kill.
    #[arg(long, default_value_t = 100)]
    pub writes_before: u64,
    /// Directory for the pair (removed afterwards). Default: the system temp dir.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Write every trial as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the timeline chart (SVG) here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Seconds any one step may take before the bench fails.
    #[arg(long, default_value_t = 90)]
    pub step_timeout: u64,
}

impl BenchFailoverArgs {
    /// The bench's plan.
    pub fn plan(&self) -> FailoverPlan {
        FailoverPlan {
            trials: self.trials,
            timeout_ms: self.timeout_ms,
            slots: self.slots,
            client_timeout_ms: self.client_timeout_ms,
            writes_before: self.writes_before,
            work_dir: self.work_dir.clone(),
            outputs: outputs(&self.json, &self.svg),
            step_timeout: self.step_timeout,
        }
    }
}

/// The default pair directory.
pub const DEFAULT_PAIR_DIR: &str = ".tandem/pair";

/// `tandem pair ...`.
#[derive(Debug, Subcommand)]
pub enum PairCommand {
    /// Start a failover pair: two guests (a: .10, b: .11 of --subnet) sharing the region
    /// DIR/region.bin, each with its own disks and its peer's, on a bridge inside a private
    /// network namespace; wait until both print TANDEM READY, print how to connect, exit.
    ///
    /// A detached supervisor keeps running (DIR/supervisor.log): it owns both QEMUs, serves
    /// the other `tandem pair` commands and runs the fence agent, which kills a node that
    /// ignores a claim on its disks for --fence-timeout-ms. Disks and region are kept across
    /// `down` and `up` (delete DIR to start over).
    Up(PairUpArgs),
    /// Show both nodes: QEMU process, state, heartbeat, who owns each node's disks (and under
    /// which epoch), fence acknowledgment, host-confirmed death, requests, announcements.
    Status(PairStatusArgs),
    /// Ask a node to take its peer over now (writes its REQUEST word).
    Takeover(PairRequestArgs),
    /// Ask a node to give its peer's disks and address back.
    Giveback(PairRequestArgs),
    /// Send a signal to a node's QEMU: KILL (a crash), STOP (a hang), CONT, TERM.
    Kill(PairKillArgs),
    /// Start a node's QEMU again (after `kill` or a crash), same configuration.
    Start(PairNodeArgs),
    /// Run a command inside the pair's network namespace (where 10.77.0.10/.11 are
    /// reachable); its exit status is passed through.
    Exec(PairExecArgs),
    /// Stop both QEMUs and the supervisor (the namespace goes with it).
    Down(PairDirArgs),
    /// Internal: the supervisor `pair up` starts.
    #[command(hide = true)]
    Supervise(PairDirArgs),
}

/// `--dir`.
#[derive(Debug, Clone, Args)]
pub struct PairDirArgs {
    /// The pair directory.
    #[arg(long, default_value = DEFAULT_PAIR_DIR, value_name = "DIR")]
    pub dir: PathBuf,
}

/// `tandem pair up`.
#[derive(Debug, Clone, Args)]
pub struct PairUpArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dir: PairDirArgs,
    /// Disks per node (DIR/a/diskK.raw, DIR/b/diskK.raw).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub disks: u8,
    /// Size of each disk when it is created (sparse).
    #[arg(long, default_value = "64M", value_name = "SIZE")]
    pub disk_size: ByteSize,
    /// Size of the shared region when it is created: a power of two, at least 4M.
    #[arg(long, default_value = "64M", value_name = "SIZE", value_parser = parse_region_size)]
    pub region_size: ByteSize,
    /// Guest RAM of each node.
    #[arg(long, default_value = "64M")]
    pub mem: ByteSize,
    /// Peer silence (ms) after which a node declares its peer failed.
    #[arg(long, default_value_t = 1000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub timeout_ms: u64,
    /// How long (ms) a running node may ignore a claim on its disks before the fence agent
    /// kills its QEMU.
    #[arg(long, default_value_t = 1500, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub fence_timeout_ms: u64,
    /// When a node gives a taken-over peer's disks back: auto (when the peer returns) or
    /// manual (`tandem pair giveback`).
    #[arg(long, value_enum, default_value_t = Giveback::Auto)]
    pub giveback: Giveback,
    /// The pair's subnet: the host side is .1, node a .10, node b .11.
    #[arg(long, default_value = "10.77.0.0/24", value_name = "A.B.C.D/N")]
    pub subnet: Subnet,
    /// Accelerator: auto = KVM only when /dev/kvm opens and the CPU shows vmx/svm, else TCG.
    /// Default from TANDEM_ACCEL, else auto.
    #[arg(long, value_enum)]
    pub accel: Option<AccelChoice>,
    /// Guest image. Default: TANDEM_IMAGE, else <workspace>/target/release/unikernel.
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// Extra guest command-line words for both nodes, e.g. "log=debug".
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// Serve every export only to clients in these networks, A.B.C.D/N joined by `+` (at
    /// most 8), on both nodes and after a takeover too. Default: every client.
    #[arg(long, value_name = "NETS", value_parser = parse_allow)]
    pub allow: Option<tandem_formats::allow_list::AllowList>,
    /// Serve NBD over TLS on both nodes with the credentials in DIR (QEMU's tls-creds-x509
    /// layout); they reach the guests in DIR/boot.module (0600, the pair directory's), never
    /// on a command line.
    #[arg(long, value_name = "DIR")]
    pub tls: Option<PathBuf>,
    /// With --tls: `require` (plaintext clients see no export) or `on`.
    #[arg(long, value_enum, default_value_t = TlsModeArg::Require, requires = "tls")]
    pub tls_mode: TlsModeArg,
    /// Seconds to wait for both guests to print TANDEM READY.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub boot_timeout: u64,
}

/// `--region-size`.
pub fn parse_region_size(s: &str) -> Result<ByteSize, String> {
    parse_checked_size(s, crate::pair::spec::check_region_size)
}

/// `tandem pair status`.
#[derive(Debug, Clone, Args)]
pub struct PairStatusArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dir: PairDirArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `tandem pair takeover` / `giveback`.
#[derive(Debug, Clone, Args)]
pub struct PairRequestArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dir: PairDirArgs,
    /// The node that acts (takes its peer over, or gives its peer's disks back).
    #[arg(long, value_enum)]
    pub by: Node,
    /// Wait up to SECS for the node to carry the request out (REQUEST_DONE).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<f64>,
}

/// `tandem pair kill`.
#[derive(Debug, Clone, Args)]
pub struct PairKillArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dir: PairDirArgs,
    /// The node.
    #[arg(value_enum)]
    pub node: Node,
    /// The signal.
    #[arg(long, value_enum, ignore_case = true, default_value = "KILL")]
    pub signal: Sig,
}

/// `tandem pair start`.
#[derive(Debug, Clone, Args)]
pub struct PairNodeArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dir: PairDirArgs,
    /// The node.
    #[arg(value_enum)]
    pub node: Node,
}

/// `tandem pair exec`.
#[derive(Debug, Clone, Args)]
pub struct PairExecArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dir: PairDirArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

/// `--tls-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsModeArg {
    /// TLS offered; plaintext clients served too.
    On,
    /// TLS only.
    Require,
}

impl TlsModeArg {
    /// The guest's `nbd.tls=` value.
    pub fn word(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Require => "require",
        }
    }
}

/// `--allow`: the guest's own parser, so that what the host takes the guest takes.
fn parse_allow(v: &str) -> Result<tandem_formats::allow_list::AllowList, String> {
    tandem_formats::allow_list::AllowList::parse(v).map_err(|e| e.to_string())
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
    fn disk_spec_blkdebug() {
        let spec = |s: &str| s.parse::<DiskSpec>().map(|d| d.0);
        assert_eq!(
            spec("a.raw,blkdebug=/c/w.conf"),
            Ok(Disk::new("a.raw").blkdebug("/c/w.conf"))
        );
        let ro = Disk::new("b.qcow2").read_only().blkdebug("f.conf");
        assert_eq!(spec("b.qcow2,ro,blkdebug=f.conf"), Ok(ro.clone()));
        assert_eq!(spec("b.qcow2,blkdebug=f.conf,ro"), Ok(ro));
        assert_eq!(spec("a.raw,rw"), Ok(Disk::new("a.raw")));
        assert_eq!(spec("a,b.raw,ro"), Ok(Disk::new("a,b.raw").read_only()));
        assert!(spec("a.raw,blkdebug=").is_err());
        assert!(spec("a.raw,blkdebug=x,blkdebug=y").is_err());
        assert!(spec(",blkdebug=x").is_err());
        assert!(spec("").is_err());
        // Through clap, into the QEMU command line.
        let cli = Cli::try_parse_from([
            "tandem",
            "run",
            "--disk",
            "/d/a.raw,blkdebug=/d/fail.conf",
            "--dry-run",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.disk[0].0.blkdebug, Some(PathBuf::from("/d/fail.conf")));
    }

    #[test]
    fn bench_blk_lists() {
        let cli = Cli::try_parse_from([
            "tandem",
            "bench",
            "blk",
            "--backends",
            "vhost-user,io_uring,threads",
            "--rw",
            "randread,write",
            "--rw",
            "randrw",
            "--bs",
            "4k,1M",
            "--qd",
            "1,8",
            "--ops",
            "2000",
            "--path",
            "both",
            "--image",
            "/g/unikernel",
            "--disk",
            "/d/x.raw",
            "--mem",
            "128M",
        ])
        .unwrap();
        let Command::Bench(BenchCommand::Blk(b)) = cli.command else {
            panic!()
        };
        assert_eq!(
            b.backends,
            [Backend::VhostUser, Backend::IoUring, Backend::Threads]
        );
        assert_eq!(b.rw, [RwMode::RANDREAD, RwMode::WRITE, RwMode::RANDRW]);
        assert_eq!(b.bs, [BlockSize(4096), BlockSize(1 << 20)]);
        assert_eq!(b.qd, [1, 8]);
        assert_eq!(b.ops, Some(2000));
        assert_eq!(b.path, PathChoice::Both);
        assert_eq!(
            b.vm.image.as_deref(),
            Some(std::path::Path::new("/g/unikernel"))
        );
        assert_eq!(b.disk.as_deref(), Some(std::path::Path::new("/d/x.raw")));
        assert_eq!(b.vm.mem, ByteSize::mib(128));
        // io-uring is accepted too; --ops and --time-ms exclude each other.
        assert!(Cli::try_parse_from(["tandem", "bench", "blk", "--backends", "io-uring"]).is_ok());
        assert!(
            Cli::try_parse_from(["tandem", "bench", "blk", "--ops", "1", "--time-ms", "1"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["tandem", "bench", "blk", "--bs", "100"]).is_err());
        assert!(Cli::try_parse_from(["tandem", "bench", "blk", "--backends", "nvme"]).is_err());
    }

    #[test]
    fn run_nvram_options() {
        let run = |extra: &[&str]| {
            let mut argv = vec!["tandem", "run"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| match c.command {
                Command::Run(r) => r,
                _ => unreachable!(),
            })
        };
        let r = run(&[]).unwrap();
        assert_eq!((r.nvram_size, r.no_nvram), (None, false));
        let r = run(&["--nvram-size", "256M"]).unwrap();
        assert_eq!(r.nvram_size, Some(ByteSize::mib(256)));
        assert!(run(&["--no-nvram"]).unwrap().no_nvram);
        let err = run(&["--nvram-size", "48M"]).unwrap_err().to_string();
        assert!(err.contains("power of two"), "{err}");
        assert!(run(&["--nvram-size", "512K"]).is_err());
        assert!(run(&["--no-nvram", "--nvram-size", "64M"]).is_err());
    }

    #[test]
    fn bench_nbd_defaults_and_lists() {
        let cli = Cli::try_parse_from(["tandem", "bench", "nbd"]).unwrap();
        let Command::Bench(BenchCommand::Nbd(b)) = cli.command else {
            panic!()
        };
        assert_eq!(b.targets, [NbdTarget::Guest, NbdTarget::QemuNbd]);
        let jobs: Vec<String> = b.jobs.iter().map(ToString::to_string).collect();
        assert_eq!(
            jobs,
            [
                "randread:4k:1",
                "randread:4k:16",
                "randwrite:4k:1",
                "randwrite:4k:16",
                "read:1M:4",
                "write:1M:4"
            ]
        );
        assert_eq!((b.time, b.ramp, b.repeats), (5, 0, 3));
        assert_eq!(b.vm.mem, ByteSize::mib(64));
        assert_eq!(b.disk_size, ByteSize::gib(1));
        assert_eq!(b.nvram_size, ByteSize::mib(64));
        assert_eq!(b.machine, Machine::Q35);
        let cli = Cli::try_parse_from([
            "tandem",
            "bench",
            "nbd",
            "--targets",
            "qemu-nbd",
            "--jobs",
            "randread:4k:1,write:1M:8",
            "--time",
            "1",
            "--repeats",
            "1",
            "--mem",
            "128M",
        ])
        .unwrap();
        let Command::Bench(BenchCommand::Nbd(b)) = cli.command else {
            panic!()
        };
        assert_eq!(b.targets, [NbdTarget::QemuNbd]);
        assert_eq!(b.jobs.len(), 2);
        assert_eq!(b.jobs[1].to_string(), "write:1M:8");
        assert_eq!(b.vm.mem, ByteSize::mib(128));
        for bad in [
            &["--time", "0"][..],
            &["--jobs", "randread:4k"],
            &["--jobs", "randread:4k:0"],
            &["--targets", "nvme"],
            &["--nvram-size", "100M"],
        ] {
            let mut argv = vec!["tandem", "bench", "nbd"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pair_commands_parse() {
        let cli = Cli::try_parse_from(["tandem", "pair", "up", "--dir", "/p"]).unwrap();
        let Command::Pair(PairCommand::Up(u)) = cli.command else {
            panic!()
        };
        assert_eq!(u.dir.dir, PathBuf::from("/p"));
        assert_eq!((u.disks, u.timeout_ms, u.fence_timeout_ms), (1, 1000, 1500));
        assert_eq!(
            (u.disk_size, u.region_size),
            (ByteSize::mib(64), ByteSize::mib(64))
        );
        assert_eq!(u.giveback, Giveback::Auto);
        assert_eq!(u.subnet.to_string(), "10.77.0.0/24");
        let cli = Cli::try_parse_from([
            "tandem",
            "pair",
            "up",
            "--disks",
            "2",
            "--region-size",
            "16M",
            "--giveback",
            "manual",
            "--subnet",
            "10.9.0.0/24",
            "--fence-timeout-ms",
            "500",
        ])
        .unwrap();
        let Command::Pair(PairCommand::Up(u)) = cli.command else {
            panic!()
        };
        assert_eq!(u.dir.dir, PathBuf::from(DEFAULT_PAIR_DIR));
        assert_eq!((u.disks, u.fence_timeout_ms), (2, 500));
        assert_eq!(u.region_size, ByteSize::mib(16));
        for bad in [
            &["up", "--disks", "0"][..],
            &["up", "--disks", "9"],
            &["up", "--region-size", "48M"],
            &["up", "--region-size", "2M"],
            &["up", "--timeout-ms", "10"],
            &["up", "--subnet", "10.77.0.1/24"],
            &["up", "--giveback", "never"],
            &["kill", "c"],
            &["kill", "a", "--signal", "HUP"],
            &["takeover"],
            &["takeover", "--by", "c"],
            &["exec", "--dir", "/p"],
            &["start"],
        ] {
            let mut argv = vec!["tandem", "pair"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["tandem", "pair", "kill", "b", "--signal", "stop"]).unwrap();
        let Command::Pair(PairCommand::Kill(k)) = cli.command else {
            panic!()
        };
        assert_eq!((k.node, k.signal), (Node::B, Sig::Stop));
        let cli = Cli::try_parse_from([
            "tandem", "pair", "exec", "--dir", "/p", "--", "nbdinfo", "--list", "nbd://x",
        ])
        .unwrap();
        let Command::Pair(PairCommand::Exec(e)) = cli.command else {
            panic!()
        };
        assert_eq!(e.command, ["nbdinfo", "--list", "nbd://x"]);
        let cli = Cli::try_parse_from(["tandem", "pair", "takeover", "--by", "b", "--wait", "2.5"])
            .unwrap();
        let Command::Pair(PairCommand::Takeover(t)) = cli.command else {
            panic!()
        };
        assert_eq!((t.by, t.wait), (Node::B, Some(2.5)));
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
    fn bench_restart_defaults_and_lists() {
        let cli = Cli::try_parse_from(["tandem", "bench", "restart"]).unwrap();
        let Command::Bench(BenchCommand::Restart(b)) = cli.command else {
            panic!()
        };
        assert_eq!((b.disks, b.runs, b.kind), (vec![1, 8], 5, FaultKind::Panic));
        let cli = Cli::try_parse_from([
            "tandem",
            "bench",
            "restart",
            "--disks",
            "2",
            "--runs",
            "1",
            "--kind",
            "pagefault",
        ])
        .unwrap();
        let Command::Bench(BenchCommand::Restart(b)) = cli.command else {
            panic!()
        };
        assert_eq!(
            (b.disks, b.runs, b.kind),
            (vec![2], 1, FaultKind::Pagefault)
        );
        for bad in [["--disks", "0"], ["--runs", "0"], ["--kind", "oops"]] {
            let mut argv = vec!["tandem", "bench", "restart"];
            argv.extend(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bench_and_qmp_parse() {
        let cli = Cli::try_parse_from(["tandem", "bench", "boot", "--runs", "3"]).unwrap();
        let Command::Bench(BenchCommand::Boot(b)) = cli.command else {
            panic!()
        };
        assert_eq!(b.runs, 3);
        assert_eq!(b.machine, BenchMachines::Both);
        let cli = Cli::try_parse_from(["tandem", "bench", "blk"]).unwrap();
        let Command::Bench(BenchCommand::Blk(b)) = cli.command else {
            panic!()
        };
        assert!(b.backends.is_empty());
        assert_eq!(b.rw, [RwMode::RANDREAD]);
        assert_eq!(b.bs, [BlockSize(4096)]);
        assert_eq!(b.qd, [1, 8, 32, 128]);
        assert_eq!((b.ops, b.time_ms, b.repeats), (None, None, 3));
        assert_eq!(b.path, PathChoice::Hpdi);
        assert_eq!(b.disk_size, ByteSize::gib(1));
        assert_eq!(b.machine, Machine::Q35);
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
