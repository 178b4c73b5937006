//! `tandem bench ...`: each bench's arguments, and the typed plan each becomes
//! (`BenchBlkArgs::plan` and so on; the benches never see these structs).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::bench::blk::{Backend, BlkPlan, PathChoice};
use crate::bench::boot::BootPlan;
use crate::bench::failover::FailoverPlan;
use crate::bench::job::{BlockSize, RwMode};
use crate::bench::mirror::{MirrorMode, MirrorPlan, WriteKind};
use crate::bench::nbd::{FioJob, NbdPlan, NbdTarget};
use crate::bench::restart::{FaultKind, RestartPlan};
use crate::builder::Machine;
use crate::size::ByteSize;

use super::*;

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
    /// What the NVLOG mirror adds to a client's write latency: one guest per configuration
    /// (mirror=off, mirror=sync, mirror=async), booted once and measured in interleaved
    /// rounds; QD1 4 KiB writes (FUA and plain) through NBD; a table of median p50/p90/p99
    /// latency and IOPS with the ratio and the difference (µs) to mirror off, beside the
    /// link's measured TCP round trip.
    ///
    /// The mirror's two ends (`tandem mirror send` and `receive`) run in-process on threads,
    /// over loopback, or with --link-delay-us through a relay that delays both directions.
    Mirror(BenchMirrorArgs),
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

/// `tandem bench mirror`.
#[derive(Debug, Clone, Args)]
pub struct BenchMirrorArgs {
    /// Configurations (comma list): off, sync, async. Ratios and differences are against
    /// off, which always comes first.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "off,sync,async",
        value_name = "LIST"
    )]
    pub modes: Vec<MirrorMode>,
    /// Write kinds (comma list): fua, plain.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fua,plain",
        value_name = "LIST"
    )]
    pub kinds: Vec<WriteKind>,
    /// Timed writes per configuration, kind and round.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub writes: u32,
    /// Rounds; the table shows medians over them.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// `mirror.max_lag` (records) of the async configuration.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_lag: u64,
    /// Delay (µs) added to every round trip over the interconnect: the mirrors and the
    /// ping-pong go through a relay on loopback that holds each direction's bytes half of
    /// it. 0: plain loopback.
    #[arg(long, default_value_t = 0, value_name = "US",
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub link_delay_us: u32,
    /// Directory for the disks, NVRAM files, copies and logs (a fresh subdirectory, removed
    /// afterwards). Default: the system temp dir.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Seconds a boot, or the mirror getting in sync, may take.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub boot_timeout: u64,
    /// Write the results (every run included) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a bar chart (SVG) of the median latencies and the link's round trip here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub vm: VmArgs,
}

impl BenchMirrorArgs {
    /// The bench's plan.
    pub fn plan(&self) -> MirrorPlan {
        MirrorPlan {
            modes: self.modes.clone(),
            kinds: self.kinds.clone(),
            writes: self.writes,
            rounds: self.rounds,
            max_lag: self.max_lag,
            link_delay_us: self.link_delay_us,
            work_dir: self.work_dir.clone(),
            boot_timeout: self.boot_timeout,
            outputs: outputs(&self.json, &self.svg),
            vm: self.vm.plan(),
        }
    }
}
