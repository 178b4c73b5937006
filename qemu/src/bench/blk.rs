//! `tandem bench blk`: the guest's in-guest block benchmark against several QEMU block
//! backends on the same raw image file, in one comparison table.
//!
//! Each run boots the guest with one data disk and the benchmark words on its command line
//! (`bench=blk0 bench.rw=randread bench.bs=4096 bench.qd=32 bench.ops=N|bench.time_ms=T
//! bench.path=hpdi|direct [bench.span_mib=M] [bench.verify=1]`, see [`JobSpec`]). The guest
//! runs the job and prints exactly one `BENCH {json}` line ([`GuestBenchResult`]), then
//! powers off (clean exit, QEMU status 33; a failed job prints `BENCH {"error":...}` and
//! exits with status 35).
//!
//! Backends ([`Backend`]), all on the same image file and all with the host page cache
//! bypassed (`cache.direct=on`, i.e. `cache=none`: `O_DIRECT`, guest flushes still reach
//! the disk), so the table compares the I/O paths and not the host's page cache:
//!
//! | backend | guest device | host side |
//! |---|---|---|
//! | `threads` | virtio-blk | QEMU `file` node, `aio=threads` |
//! | `native` | virtio-blk | QEMU `file` node, `aio=native` (Linux AIO) |
//! | `io_uring` | virtio-blk | QEMU `file` node, `aio=io_uring`; probed once, skipped when QEMU or the kernel refuses it |
//! | `vhost-user` | vhost-user-blk | `qemu-storage-daemon` exporting the file (`aio=native`) over a unix socket; guest RAM is a shared memfd |
//! | `tandem-backend` | vhost-user-blk | this workspace's `tandem-backend` (`host-backend/`, io_uring, `--direct`) on the same kind of socket; found or built like the guest image, skipped with the reason when neither works |
//!
//! Only one backend has the image open at a time (QEMU's image locks would refuse a second
//! writer): every run of one backend happens before the next backend starts, repeats are
//! interleaved across the job cases within a backend, and the daemon runs only while its
//! backend does.
//!
//! The default image is a fresh raw file fully preallocated with `qemu-img create -o
//! preallocation=full` (zeros written to every block), so read jobs read allocated blocks
//! from the host disk instead of holes the host file system answers without any I/O.
//!
//! On microvm every backend gets modern (virtio 1.0) virtio-mmio devices: libvhost-user
//! refuses legacy devices, and one transport for all backends keeps them comparable.
//!
//! Results: a table of medians per (backend, rw, bs, qd[, path]), JSON with every run's raw
//! `BENCH` object, and an SVG bar chart of IOPS per case per backend.

use std::fmt;
use std::fmt::Write as _;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::{Align, Bar, BarChart, BarGroup, Progress, Summary, Table};
use crate::accel;
use crate::builder::{
    Aio, Disk, DiskFormat, Machine, QemuCommand, StorageDaemonCommand, VhostUserBlk,
};
use crate::cli::BenchBlkArgs;
use crate::console::ConsoleEvent;
use crate::exit::GuestExit;
use crate::qmp::Qmp;
use crate::size::ByteSize;
use crate::state::MAX_SOCKET_PATH;
use crate::vm::{Poll, SpawnOptions, Vm};

/// The guest device the job runs on (the only data disk).
pub const DEVICE: &str = "blk0";
/// How long the io_uring probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `qemu-storage-daemon` may take to create its socket.
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long QEMU may take to exit after the `BENCH` line.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A QEMU block backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize)]
pub enum Backend {
    /// virtio-blk, QEMU file node with `aio=threads`.
    #[value(name = "threads")]
    #[serde(rename = "threads")]
    Threads,
    /// virtio-blk, QEMU file node with `aio=native` (Linux AIO).
    #[value(name = "native")]
    #[serde(rename = "native")]
    Native,
    /// virtio-blk, QEMU file node with `aio=io_uring` (when this QEMU and kernel have it).
    #[value(name = "io_uring", alias = "io-uring")]
    #[serde(rename = "io_uring")]
    IoUring,
    /// vhost-user-blk served by `qemu-storage-daemon`.
    #[value(name = "vhost-user", alias = "vhost_user")]
    #[serde(rename = "vhost-user")]
    VhostUser,
    /// vhost-user-blk served by this workspace's `tandem-backend`.
    #[value(name = "tandem-backend", alias = "tandem_backend")]
    #[serde(rename = "tandem-backend")]
    TandemBackend,
}

impl Backend {
    /// Every backend, in table order.
    pub const ALL: [Backend; 5] = [
        Backend::Threads,
        Backend::Native,
        Backend::IoUring,
        Backend::VhostUser,
        Backend::TandemBackend,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Threads => "threads",
            Backend::Native => "native",
            Backend::IoUring => "io_uring",
            Backend::VhostUser => "vhost-user",
            Backend::TandemBackend => "tandem-backend",
        }
    }

    /// The `aio=` of QEMU's file node, for the virtio-blk backends.
    pub fn aio(self) -> Option<Aio> {
        match self {
            Backend::Threads => Some(Aio::Threads),
            Backend::Native => Some(Aio::Native),
            Backend::IoUring => Some(Aio::IoUring),
            Backend::VhostUser | Backend::TandemBackend => None,
        }
    }

    /// One line saying what the backend is.
    pub fn describe(self, machine: Machine) -> String {
        let (blk, vub) = match machine {
            Machine::Q35 => ("virtio-blk-pci", "vhost-user-blk-pci"),
            Machine::Microvm => ("virtio-blk-device", "vhost-user-blk (virtio-mmio)"),
        };
        match self.aio() {
            Some(aio) => format!("{blk}, file aio={aio}, cache.direct=on"),
            None if self == Backend::TandemBackend => {
                format!("{vub} <- tandem-backend (io_uring, O_DIRECT), guest RAM memfd share=on")
            }
            None => format!(
                "{vub} <- qemu-storage-daemon (file aio=native, cache.direct=on), \
                 guest RAM memfd share=on"
            ),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The job's access pattern (`bench.rw=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RwMode {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random mixed reads and writes.
    Randrw,
}

impl RwMode {
    /// The guest's name for it.
    pub fn name(self) -> &'static str {
        match self {
            RwMode::Read => "read",
            RwMode::Write => "write",
            RwMode::Randread => "randread",
            RwMode::Randwrite => "randwrite",
            RwMode::Randrw => "randrw",
        }
    }
}

impl fmt::Display for RwMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which I/O path inside the guest the job takes (`bench.path=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobPath {
    /// Through the HPDI rings (what the storage service uses).
    Hpdi,
    /// Calling the virtio-blk driver directly (the baseline the HPDI's cost is measured against).
    Direct,
}

impl JobPath {
    /// The guest's name for it.
    pub fn name(self) -> &'static str {
        match self {
            JobPath::Hpdi => "hpdi",
            JobPath::Direct => "direct",
        }
    }
}

impl fmt::Display for JobPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `--path`: one path or both (HPDI vs direct, with a ratio column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathChoice {
    /// Through the HPDI.
    Hpdi,
    /// The virtio driver directly.
    Direct,
    /// Both, HPDI first, with an hpdi/direct ratio.
    Both,
}

impl PathChoice {
    /// The paths to run, in order.
    pub fn paths(self) -> Vec<JobPath> {
        match self {
            PathChoice::Hpdi => vec![JobPath::Hpdi],
            PathChoice::Direct => vec![JobPath::Direct],
            PathChoice::Both => vec![JobPath::Hpdi, JobPath::Direct],
        }
    }
}

/// A block size in bytes: `4k`, `64K`, `1M`, or a plain number of bytes; a positive
/// multiple of 512.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct BlockSize(pub u32);

/// A block size that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid block size '{0}': expected a multiple of 512 bytes such as 512, 4k, 64k, 1M")]
pub struct BlockSizeError(String);

impl FromStr for BlockSize {
    type Err = BlockSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BlockSizeError(s.to_string());
        let t = s.trim();
        let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(end);
        let n: u64 = num.parse().map_err(|_| err())?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            _ => return Err(err()),
        };
        let bytes = n.checked_mul(mult).ok_or_else(err)?;
        if bytes == 0 || !bytes.is_multiple_of(512) || bytes > u64::from(u32::MAX) {
            return Err(err());
        }
        Ok(BlockSize(bytes as u32))
    }
}

impl fmt::Display for BlockSize {
    /// fio-style: `512`, `4k`, `1M`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b.is_multiple_of(1 << 20) {
            write!(f, "{}M", b >> 20)
        } else if b.is_multiple_of(1 << 10) {
            write!(f, "{}k", b >> 10)
        } else {
            write!(f, "{b}")
        }
    }
}

/// How long a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    /// This many I/Os (`bench.ops=`).
    Ops(u64),
    /// This long, in milliseconds (`bench.time_ms=`).
    TimeMs(u64),
}

/// One benchmark job, as the guest's command-line words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// Device name (`bench=`).
    pub device: String,
    /// Access pattern.
    pub rw: RwMode,
    /// Block size.
    pub bs: BlockSize,
    /// Queue depth.
    pub qd: u32,
    /// Ops or time.
    pub amount: Amount,
    /// HPDI or direct.
    pub path: JobPath,
    /// Bytes of the device the job touches from offset 0, in MiB (`None`: the guest's default).
    pub span_mib: Option<u64>,
    /// Write-then-read verification.
    pub verify: bool,
}

impl JobSpec {
    /// The guest command-line words.
    pub fn words(&self) -> Vec<String> {
        let mut w = vec![
            format!("bench={}", self.device),
            format!("bench.rw={}", self.rw),
            format!("bench.bs={}", self.bs.0),
            format!("bench.qd={}", self.qd),
            match self.amount {
                Amount::Ops(n) => format!("bench.ops={n}"),
                Amount::TimeMs(t) => format!("bench.time_ms={t}"),
            },
            format!("bench.path={}", self.path),
        ];
        if let Some(span) = self.span_mib {
            w.push(format!("bench.span_mib={span}"));
        }
        if self.verify {
            w.push("bench.verify=1".into());
        }
        w
    }
}

/// Latency percentiles reported by the guest, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// The guest's `BENCH {json}` object (unknown fields are ignored, missing ones default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestBenchResult {
    /// Device the job ran on.
    pub device: String,
    /// `pci` or `mmio`.
    pub transport: String,
    /// Access pattern.
    pub rw: String,
    /// Block size in bytes.
    pub bs: u64,
    /// Queue depth the job used.
    pub qd: u32,
    /// I/Os completed.
    pub ops: u64,
    /// Job duration.
    pub seconds: f64,
    /// I/Os per second.
    pub iops: f64,
    /// Megabytes (10^6) per second.
    pub mbps: f64,
    /// Latency percentiles.
    pub lat_us: Latency,
    /// Result of write-then-read verification (`None`: not verified).
    pub verified: Option<bool>,
    /// I/O errors.
    pub errors: u64,
    /// Most requests in flight at once (the driver's own count).
    pub max_in_flight: u64,
    /// Payload bytes moved.
    pub bytes_moved: u64,
    /// `hpdi` or `direct`.
    pub path: String,
    /// Set when the job failed.
    pub error: Option<String>,
}

impl GuestBenchResult {
    /// Parse the JSON text after `BENCH `, returning the typed result and the raw object.
    pub fn parse(json: &str) -> anyhow::Result<(GuestBenchResult, serde_json::Value)> {
        let raw: serde_json::Value = serde_json::from_str(json)
            .with_context(|| format!("BENCH line is not JSON: {json}"))?;
        if !raw.is_object() {
            bail!("BENCH line is not a JSON object: {json}");
        }
        let result: GuestBenchResult = serde_json::from_value(raw.clone())
            .with_context(|| format!("BENCH line does not match the contract: {json}"))?;
        Ok((result, raw))
    }

    /// Why this result is a failed job, if it is one.
    pub fn failure(&self) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(format!("guest reported: {e}"));
        }
        if self.errors > 0 {
            return Some(format!("{} I/O errors", self.errors));
        }
        if self.verified == Some(false) {
            return Some("data verification failed".into());
        }
        if !(self.iops.is_finite() && self.iops > 0.0) {
            return Some(format!("no throughput reported (iops={})", self.iops));
        }
        None
    }
}

/// One boot: the guest's result and the host's view of it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// Repeat number, from 1.
    pub repeat: u32,
    /// QEMU spawn → `BENCH` line, milliseconds (boot + job).
    pub wall_ms: f64,
    /// The parsed result.
    pub result: GuestBenchResult,
    /// The `BENCH` object exactly as the guest printed it.
    pub raw: serde_json::Value,
}

/// One table row: every repeat of one case on one backend, and their medians.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Backend.
    pub backend: Backend,
    /// Access pattern.
    pub rw: RwMode,
    /// Block size in bytes.
    pub bs: BlockSize,
    /// Queue depth requested.
    pub qd: u32,
    /// Guest I/O path.
    pub path: JobPath,
    /// IOPS over the repeats.
    pub iops: Summary,
    /// MB/s over the repeats.
    pub mbps: Summary,
    /// Median over the repeats of each run's p50 latency (µs).
    pub lat_p50_us: f64,
    /// Median of the runs' p99 latency (µs).
    pub lat_p99_us: f64,
    /// Median of the runs' p99.9 latency (µs).
    pub lat_p999_us: f64,
    /// Largest `max_in_flight` over the runs.
    pub max_in_flight: u64,
    /// Median IOPS divided by the first backend's for the same case.
    pub ratio_vs_first: Option<f64>,
    /// On HPDI rows with `--path both`: median IOPS of HPDI divided by direct's.
    pub ratio_hpdi_over_direct: Option<f64>,
    /// Every run.
    pub runs: Vec<RunRecord>,
}

impl Row {
    fn new(backend: Backend, case: &Case, runs: Vec<RunRecord>) -> Row {
        let col = |f: &dyn Fn(&GuestBenchResult) -> f64| {
            Summary::of(&runs.iter().map(|r| f(&r.result)).collect::<Vec<_>>())
        };
        Row {
            backend,
            rw: case.rw,
            bs: case.bs,
            qd: case.qd,
            path: case.path,
            iops: col(&|r| r.iops),
            mbps: col(&|r| r.mbps),
            lat_p50_us: col(&|r| r.lat_us.p50).median,
            lat_p99_us: col(&|r| r.lat_us.p99).median,
            lat_p999_us: col(&|r| r.lat_us.p999).median,
            max_in_flight: runs
                .iter()
                .map(|r| r.result.max_in_flight)
                .max()
                .unwrap_or(0),
            ratio_vs_first: None,
            ratio_hpdi_over_direct: None,
            runs,
        }
    }

    fn case(&self) -> Case {
        Case {
            rw: self.rw,
            bs: self.bs,
            qd: self.qd,
            path: self.path,
        }
    }
}

/// One job case (everything but the backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Case {
    /// Access pattern.
    pub rw: RwMode,
    /// Block size.
    pub bs: BlockSize,
    /// Queue depth.
    pub qd: u32,
    /// Guest I/O path.
    pub path: JobPath,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} qd={} {}", self.rw, self.bs, self.qd, self.path)
    }
}

/// The cases of a bench, in table order: rw, then bs, then qd, then path.
pub fn cases(rws: &[RwMode], bss: &[BlockSize], qds: &[u32], paths: &[JobPath]) -> Vec<Case> {
    let mut out = Vec::new();
    for &rw in rws {
        for &bs in bss {
            for &qd in qds {
                for &path in paths {
                    out.push(Case { rw, bs, qd, path });
                }
            }
        }
    }
    out
}

/// A backend's place in the report.
#[derive(Debug, Clone, Serialize)]
pub struct BackendInfo {
    /// Which.
    pub backend: Backend,
    /// What it is.
    pub description: String,
    /// Why it was not run, when it was not.
    pub skipped: Option<String>,
}

/// The data image the backends share.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// Path (gone after the bench when it was a scratch image).
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Bytes allocated on the host (less than `bytes`: sparse).
    pub allocated_bytes: u64,
    /// How it was made: `qemu-img create -f raw -o preallocation=full` or `given`.
    pub origin: String,
}

/// The job parameters.
#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    /// Device.
    pub device: String,
    /// Access patterns.
    pub rw: Vec<RwMode>,
    /// Block sizes.
    pub bs: Vec<BlockSize>,
    /// Queue depths.
    pub qd: Vec<u32>,
    /// Ops or time per run.
    pub amount: Amount,
    /// Runs per case and backend; tables show medians.
    pub repeats: u32,
    /// Paths.
    pub path: PathChoice,
    /// Span in MiB, when given.
    pub span_mib: Option<u64>,
    /// Verification on.
    pub verify: bool,
}

/// The whole `tandem bench blk` report (the `--json` file).
#[derive(Debug, Clone, Serialize)]
pub struct BlkReport {
    /// Accelerator.
    pub accel: accel::Accel,
    /// Why.
    pub accel_reason: String,
    /// QEMU's version line.
    pub qemu_version: Option<String>,
    /// Machine.
    pub machine: Machine,
    /// Guest RAM.
    pub mem: String,
    /// Guest image.
    pub guest_image: String,
    /// The data image.
    pub image: ImageInfo,
    /// The host cache mode, the same on every backend.
    pub cache: String,
    /// Job parameters.
    pub job: JobInfo,
    /// Backends, run or skipped, in table order.
    pub backends: Vec<BackendInfo>,
    /// One row per backend and case.
    pub rows: Vec<Row>,
}

/// The cache mode every backend uses.
pub const CACHE_MODE: &str = "none (cache.direct=on: O_DIRECT, host page cache bypassed; \
                              guest flushes reach the disk)";

/// The bench stopped because of Ctrl-C.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// `tandem bench blk`: run, print the table, write JSON/SVG; returns the exit status.
pub fn bench_blk(args: &BenchBlkArgs) -> anyhow::Result<i32> {
    super::run_interruptible("QEMU and the storage daemon were stopped", |interrupted| {
        run_and_report(args, interrupted)
    })
}

/// Run the bench, print the table on stdout, write `--json` and `--svg`; returns the report.
/// `interrupted` is polled while waiting; when it becomes true the bench stops with
/// [`Interrupted`].
pub fn run_and_report(args: &BenchBlkArgs, interrupted: &AtomicBool) -> anyhow::Result<BlkReport> {
    let report = run(args, interrupted)?;
    print!("{}", table(&report));
    let chart = chart(&report);
    super::write_outputs(
        &report,
        args.json.as_deref(),
        args.svg.as_deref().map(|p| (p, &chart)),
    )?;
    Ok(report)
}

/// Validate the options that clap cannot.
fn check_args(args: &BenchBlkArgs) -> anyhow::Result<()> {
    if args.qd.contains(&0) {
        bail!("--qd: queue depths start at 1");
    }
    if args.ops == Some(0) || args.time_ms == Some(0) {
        bail!("--ops / --time-ms must be positive");
    }
    if let Some(disk) = &args.disk {
        if DiskFormat::from_path(disk) != DiskFormat::Raw {
            bail!(
                "--disk {}: raw images only (every backend, qemu-storage-daemon included, \
                 opens the file as raw)",
                disk.display()
            );
        }
        if !disk.is_file() {
            bail!("--disk {} does not exist", disk.display());
        }
    }
    Ok(())
}

/// Run the bench and return the report (nothing printed on stdout).
pub fn run(args: &BenchBlkArgs, interrupted: &AtomicBool) -> anyhow::Result<BlkReport> {
    check_args(args)?;
    let accel = accel::choose(args.vm.accel)?;
    let qemu = crate::qemu_bin::ensure_qemu()?;
    let guest = crate::image::ensure(args.vm.image.as_deref())?;

    let base_dir = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
            d.clone()
        }
        None => std::env::temp_dir(),
    };
    let scratch =
        crate::scratch::tempdir_in(&base_dir).with_context(|| base_dir.display().to_string())?;
    let dir = scratch.path();
    let socket = dir.join("vhost-user-blk.sock");
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --work-dir",
            socket.display()
        );
    }

    // The data image.
    let image = match &args.disk {
        Some(path) => {
            let info = image_info(path, "given")?;
            if info.allocated_bytes < info.bytes {
                eprintln!(
                    "tandem: note: {} is sparse ({} of {} bytes allocated); reads of holes \
                     never reach the host disk",
                    path.display(),
                    info.allocated_bytes,
                    info.bytes
                );
            }
            info
        }
        None => {
            let qemu_img = crate::qemu_bin::find_tool(&qemu, crate::qemu_bin::QEMU_IMG_NAME)
                .context("qemu-img not found; install it with: apt-get install -y qemu-utils")?;
            let path = dir.join("bench.raw");
            eprintln!(
                "tandem: creating {} ({}, preallocation=full)",
                path.display(),
                args.disk_size
            );
            create_preallocated(&qemu_img, &path, args.disk_size)?;
            image_info(&path, "qemu-img create -f raw -o preallocation=full")?
        }
    };
    let image_path = PathBuf::from(&image.path);

    // Which backends run.
    let mut wanted: Vec<Backend> = if args.backends.is_empty() {
        Backend::ALL.to_vec()
    } else {
        args.backends.clone()
    };
    dedup_in_order(&mut wanted);
    let explicit = !args.backends.is_empty();
    let mut backends = Vec::new();
    let mut daemon_bin = None;
    let mut tandem_backend_bin = None;
    for &b in &wanted {
        let skipped = match b {
            Backend::IoUring => probe_aio(
                &qemu,
                accel.accel,
                &image_path,
                Aio::IoUring,
                dir,
                interrupted,
            )?
            .err()
            .map(|why| format!("this QEMU/kernel cannot use aio=io_uring: {why}")),
            Backend::TandemBackend => match crate::vhost_backend::ensure() {
                Ok(p) => {
                    tandem_backend_bin = Some(p);
                    None
                }
                Err(e) => Some(format!("tandem-backend unavailable: {e:#}")),
            },
            Backend::VhostUser => {
                match crate::qemu_bin::find_tool(&qemu, crate::qemu_bin::STORAGE_DAEMON_NAME) {
                    Some(p) => {
                        daemon_bin = Some(p);
                        None
                    }
                    None => Some(
                        "qemu-storage-daemon not found (apt-get install -y qemu-system-common)"
                            .to_string(),
                    ),
                }
            }
            _ => None,
        };
        if let Some(why) = &skipped {
            eprintln!("tandem: skipping backend {b}: {why}");
        }
        backends.push(BackendInfo {
            backend: b,
            description: b.describe(args.machine),
            skipped,
        });
    }
    let to_run: Vec<Backend> = backends
        .iter()
        .filter(|b| b.skipped.is_none())
        .map(|b| b.backend)
        .collect();
    if to_run.is_empty() {
        bail!(
            "no backend can run here{}",
            if explicit {
                " (of those in --backends)"
            } else {
                ""
            }
        );
    }

    let amount = match (args.ops, args.time_ms) {
        (Some(n), _) => Amount::Ops(n),
        (None, Some(t)) => Amount::TimeMs(t),
        (None, None) => Amount::TimeMs(DEFAULT_TIME_MS),
    };
    let run_timeout = Duration::from_secs(args.run_timeout.unwrap_or(match amount {
        Amount::TimeMs(t) => 60 + 3 * t.div_ceil(1000),
        Amount::Ops(_) => 300,
    }));
    let rws = nonempty_or(&args.rw, RwMode::Randread);
    let bss = nonempty_or(&args.bs, BlockSize(4096));
    let qds = nonempty_or(&args.qd, 1);
    let case_list = cases(&rws, &bss, &qds, &args.path.paths());
    let span_mib = args.span.map(|s| s.bytes().div_ceil(1 << 20));

    let mut base = QemuCommand::new(&qemu)
        .name("tandem-bench-blk")
        .machine(args.machine)
        .accel(accel.accel)
        .memory(args.vm.mem)
        .smp(args.vm.smp)
        .kernel(&guest)
        .no_reboot(true);
    if args.machine == Machine::Microvm {
        base = base.microvm_acpi(false).modern_mmio(true);
    }
    if let Some(words) = &args.vm.cmdline {
        base = base.cmdline(words);
    }

    let total = (to_run.len() * case_list.len()) as u64 * u64::from(args.repeats);
    eprintln!(
        "tandem: {} runs: backends {}, {} case(s) x {} repeat(s), {} on {} ({})",
        total,
        to_run
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(","),
        case_list.len(),
        args.repeats,
        match amount {
            Amount::Ops(n) => format!("{n} ops"),
            Amount::TimeMs(t) => format!("{t} ms"),
        },
        args.machine,
        accel
    );
    let mut progress = Progress::new(total);
    let console_log = dir.join("console.log");
    let mut rows = Vec::new();
    for &backend in &to_run {
        let _daemon = match backend {
            Backend::VhostUser => {
                let program = daemon_bin.clone().expect("found when not skipped");
                let cmd = StorageDaemonCommand::vhost_user_blk(program, &image_path, &socket)
                    .aio(Aio::Native)
                    .cache_direct(true);
                Some(StorageDaemon::start(&cmd, &dir.join("storage-daemon.log"))?)
            }
            _ => None,
        };
        // Same image, same cache mode (O_DIRECT) as qemu-storage-daemon's cache.direct=on.
        let _tandem_backend = match backend {
            Backend::TandemBackend => {
                let program = tandem_backend_bin.clone().expect("found when not skipped");
                let cmd = crate::vhost_backend::BackendCommand::new(program, &image_path, &socket)
                    .direct(true);
                Some(crate::vhost_backend::BackendDaemon::start(
                    &cmd,
                    &dir.join("tandem-backend.log"),
                )?)
            }
            _ => None,
        };
        let cmd = backend_command(&base, backend, &image_path, &socket);
        let mut runs: Vec<Vec<RunRecord>> = vec![Vec::new(); case_list.len()];
        for repeat in 1..=args.repeats {
            for (i, case) in case_list.iter().enumerate() {
                let job = JobSpec {
                    device: DEVICE.into(),
                    rw: case.rw,
                    bs: case.bs,
                    qd: case.qd,
                    amount,
                    path: case.path,
                    span_mib,
                    verify: args.verify,
                };
                let what = format!("{backend} {case} run {repeat}/{}", args.repeats);
                progress.start(&what);
                let mut run_cmd = cmd.clone();
                run_cmd.cmdline.extend(job.words());
                let rec = run_once(&run_cmd, &console_log, run_timeout, interrupted)
                    .with_context(|| format!("{what}\ncommand: {run_cmd}"))?;
                if rec.result.qd != 0 && rec.result.qd != case.qd {
                    progress.note(&format!(
                        "{what}: the guest ran at qd={} (asked for {})",
                        rec.result.qd, case.qd
                    ));
                }
                let rec = RunRecord { repeat, ..rec };
                progress.finish_one(
                    &what,
                    &format!(
                        "{:.0} IOPS, {:.1} MB/s, p99 {:.0} us",
                        rec.result.iops, rec.result.mbps, rec.result.lat_us.p99
                    ),
                );
                runs[i].push(rec);
            }
        }
        for (case, case_runs) in case_list.iter().zip(runs) {
            rows.push(Row::new(backend, case, case_runs));
        }
    }
    progress.finish();
    compute_ratios(&mut rows, &to_run);

    Ok(BlkReport {
        accel: accel.accel,
        accel_reason: accel.reason.clone(),
        qemu_version: crate::qemu_bin::qemu_version(&qemu),
        machine: args.machine,
        mem: args.vm.mem.to_string(),
        guest_image: guest.display().to_string(),
        image,
        cache: CACHE_MODE.into(),
        job: JobInfo {
            device: DEVICE.into(),
            rw: rws,
            bs: bss,
            qd: qds,
            amount,
            repeats: args.repeats,
            path: args.path,
            span_mib,
            verify: args.verify,
        },
        backends,
        rows,
    })
}

/// Run time per job when neither `--ops` nor `--time-ms` is given.
pub const DEFAULT_TIME_MS: u64 = 2000;

fn nonempty_or<T: Clone>(v: &[T], default: T) -> Vec<T> {
    if v.is_empty() {
        vec![default]
    } else {
        v.to_vec()
    }
}

pub(crate) fn dedup_in_order<T: PartialEq + Copy>(v: &mut Vec<T>) {
    let mut seen = Vec::new();
    v.retain(|x| {
        if seen.contains(x) {
            false
        } else {
            seen.push(*x);
            true
        }
    });
}

/// The QEMU command for one backend: `base` plus the data disk attached that way.
pub fn backend_command(
    base: &QemuCommand,
    backend: Backend,
    image: &Path,
    socket: &Path,
) -> QemuCommand {
    let cmd = base.clone();
    match backend.aio() {
        Some(aio) => cmd.disk(
            Disk::new(image)
                .with_format(DiskFormat::Raw)
                .aio(aio)
                .cache_direct(true),
        ),
        None => cmd.vhost_user_blk(VhostUserBlk::new(socket).num_queues(1)),
    }
}

/// Fill in `ratio_vs_first` (against the first backend that has the same case) and, for
/// `--path both`, `ratio_hpdi_over_direct` on the HPDI rows.
pub fn compute_ratios(rows: &mut [Row], order: &[Backend]) {
    let medians: Vec<(Backend, Case, f64)> = rows
        .iter()
        .map(|r| (r.backend, r.case(), r.iops.median))
        .collect();
    let find = |b: Backend, c: Case| {
        medians
            .iter()
            .find(|(mb, mc, _)| *mb == b && *mc == c)
            .map(|m| m.2)
    };
    for row in rows.iter_mut() {
        let case = row.case();
        let first = order.iter().find_map(|&b| find(b, case));
        row.ratio_vs_first = first.filter(|f| *f > 0.0).map(|f| row.iops.median / f);
        if row.path == JobPath::Hpdi {
            let direct = find(
                row.backend,
                Case {
                    path: JobPath::Direct,
                    ..case
                },
            );
            row.ratio_hpdi_over_direct = direct.filter(|d| *d > 0.0).map(|d| row.iops.median / d);
        }
    }
}

/// Boot once and collect the `BENCH` line.
fn run_once(
    cmd: &QemuCommand,
    console_log: &Path,
    timeout: Duration,
    interrupted: &AtomicBool,
) -> anyhow::Result<RunRecord> {
    let mut vm = Vm::spawn(
        cmd,
        SpawnOptions {
            echo_console: false,
            echo_stderr: false,
            console_log: Some(console_log.to_path_buf()),
        },
    )?;
    let deadline = Instant::now() + timeout;
    let (json, at) = loop {
        if interrupted.load(Ordering::SeqCst) {
            vm.kill();
            return Err(Interrupted.into());
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for the BENCH line (--run-timeout)\n{}",
                vm.context()
            );
        }
        match vm.poll(Duration::from_millis(100)) {
            Poll::Line(line) => match &line.event {
                ConsoleEvent::Bench(json) => break (json.clone(), line.at),
                ConsoleEvent::Ready(_) if no_bench_mode(&vm) => {
                    vm.kill();
                    bail!(
                        "this guest image has no benchmark mode (it ignored `bench=`: \
                         \"cmdline: unknown key 'bench'\"); rebuild it with one\n{}",
                        vm.context()
                    );
                }
                _ => {}
            },
            Poll::Exited(exit) => bail!(
                "QEMU exited ({exit}) before the guest printed its BENCH line\n{}",
                vm.context()
            ),
            Poll::Idle => {}
        }
    };
    let (result, raw) = GuestBenchResult::parse(&json)?;
    let exit = vm
        .wait_exit(EXIT_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("after the BENCH line: {e}"))?;
    if let Some(why) = result.failure() {
        bail!("benchmark job failed: {why} ({exit})\n{}", vm.context());
    }
    if exit != GuestExit::Clean {
        bail!(
            "guest did not shut down cleanly after its BENCH line: {exit}\n{}",
            vm.context()
        );
    }
    Ok(RunRecord {
        repeat: 0,
        wall_ms: (at.as_secs_f64() * 1e6).round() / 1e3,
        result,
        raw,
    })
}

/// The guest reported `bench` as an unknown command-line key.
fn no_bench_mode(vm: &Vm) -> bool {
    vm.history().iter().any(|l| match &l.event {
        ConsoleEvent::Log(log) => log.message.contains("unknown key 'bench"),
        _ => false,
    })
}

/// Create a raw image with every block written (`qemu-img create -o preallocation=full`).
pub fn create_preallocated(qemu_img: &Path, path: &Path, size: ByteSize) -> anyhow::Result<()> {
    let out = std::process::Command::new(qemu_img)
        .args(["create", "-q", "-f", "raw", "-o", "preallocation=full"])
        .arg(path)
        .arg(size.bytes().to_string())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", qemu_img.display()))?;
    if !out.status.success() {
        bail!(
            "{} create {} failed ({}): {}",
            qemu_img.display(),
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(crate) fn image_info(path: &Path, origin: &str) -> anyhow::Result<ImageInfo> {
    use std::os::unix::fs::MetadataExt;
    let abs = std::path::absolute(path).with_context(|| path.display().to_string())?;
    let meta = std::fs::metadata(&abs).with_context(|| abs.display().to_string())?;
    Ok(ImageInfo {
        path: abs.display().to_string(),
        bytes: meta.len(),
        allocated_bytes: meta.blocks() * 512,
        origin: origin.into(),
    })
}

/// Can this QEMU open the image with `aio` (and `cache.direct=on`)? Starts QEMU paused with
/// no guest and waits for its QMP greeting, which comes only after every `-blockdev` opened;
/// a QEMU that exits first could not (its error is returned).
pub fn probe_aio(
    qemu: &Path,
    accel: accel::Accel,
    image: &Path,
    aio: Aio,
    dir: &Path,
    interrupted: &AtomicBool,
) -> anyhow::Result<Result<(), String>> {
    let sock = dir.join("probe-qmp.sock");
    let _ = std::fs::remove_file(&sock);
    let cmd = QemuCommand::new(qemu)
        .name("tandem-probe")
        .accel(accel)
        .start_paused(true)
        .qmp_socket(&sock)
        .disk(
            Disk::new(image)
                .with_format(DiskFormat::Raw)
                .aio(aio)
                .cache_direct(true),
        );
    let mut vm = Vm::spawn(&cmd, SpawnOptions::default())?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        if interrupted.load(Ordering::SeqCst) {
            vm.kill();
            return Err(Interrupted.into());
        }
        if let Poll::Exited(exit) = vm.poll(Duration::from_millis(20)) {
            let err = vm.stderr_text();
            let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            return Ok(Err(if first.is_empty() {
                exit.to_string()
            } else {
                first.trim().to_string()
            }));
        }
        if Instant::now() >= deadline {
            vm.kill();
            return Ok(Err(format!("QEMU did not start within {PROBE_TIMEOUT:?}")));
        }
        if sock.exists() {
            if let Ok(mut q) = Qmp::connect(&sock, Duration::from_secs(2)) {
                let _ = q.quit();
                if vm.wait_exit(Duration::from_secs(5)).is_err() {
                    vm.kill();
                }
                return Ok(Ok(()));
            }
        }
    }
}

/// A running `qemu-storage-daemon`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct StorageDaemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl StorageDaemon {
    /// Start the daemon and wait (bounded) until its socket exists. Its output goes to `log`.
    pub fn start(cmd: &StorageDaemonCommand, log: &Path) -> anyhow::Result<StorageDaemon> {
        let _ = std::fs::remove_file(&cmd.socket);
        let out = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        let err = out.try_clone()?;
        let child = cmd
            .to_command()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Own process group: a terminal's Ctrl-C reaches tandem, which stops it in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {cmd}"))?;
        let mut daemon = StorageDaemon {
            child,
            socket: cmd.socket.clone(),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        loop {
            let is_socket = std::fs::symlink_metadata(&cmd.socket)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if is_socket {
                return Ok(daemon);
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                bail!(
                    "qemu-storage-daemon exited ({status}) before creating {}:\n{}\ncommand: {cmd}",
                    cmd.socket.display(),
                    daemon.log_text()
                );
            }
            if Instant::now() >= deadline {
                daemon.stop();
                bail!(
                    "qemu-storage-daemon did not create {} within {DAEMON_START_TIMEOUT:?}:\n{}\ncommand: {cmd}",
                    cmd.socket.display(),
                    daemon.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the daemon printed.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop it: SIGTERM, up to 5 s, then SIGKILL; remove the socket.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `12345` → `12.3k`, for chart labels.
pub(crate) fn si(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

pub(crate) fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}"))
}

/// The comparison table.
pub fn table(r: &BlkReport) -> String {
    let mut s = String::new();
    let amount = match r.job.amount {
        Amount::Ops(n) => format!("{n} ops"),
        Amount::TimeMs(t) => format!("{t} ms"),
    };
    let _ = writeln!(
        s,
        "virtio block backends ({}, {}, -m {}, {} per run, median of {} run(s); cache={})",
        r.machine,
        r.accel,
        r.mem,
        amount,
        r.job.repeats,
        r.cache.split(' ').next().unwrap_or("")
    );
    let _ = writeln!(
        s,
        "image {} ({} bytes, {})",
        r.image.path, r.image.bytes, r.image.origin
    );
    for b in &r.backends {
        match &b.skipped {
            None => {
                let _ = writeln!(s, "  {:<10} {}", b.backend.name(), b.description);
            }
            Some(why) => {
                let _ = writeln!(s, "  {:<10} skipped: {why}", b.backend.name());
            }
        }
    }
    let show_path = r.job.path != PathChoice::Hpdi;
    let both = r.job.path == PathChoice::Both;
    let first = r
        .backends
        .iter()
        .find(|b| b.skipped.is_none())
        .map_or("first", |b| b.backend.name());
    let vs = format!("vs {first}");
    let mut cols: Vec<(&str, Align)> = vec![
        ("backend", Align::Left),
        ("rw", Align::Left),
        ("bs", Align::Right),
        ("qd", Align::Right),
    ];
    if show_path {
        cols.push(("path", Align::Left));
    }
    cols.extend([
        ("IOPS", Align::Right),
        ("MB/s", Align::Right),
        ("p50 us", Align::Right),
        ("p99 us", Align::Right),
        ("p99.9 us", Align::Right),
        ("inflight", Align::Right),
        (vs.as_str(), Align::Right),
    ]);
    if both {
        cols.push(("hpdi/direct", Align::Right));
    }
    let mut t = Table::new(&cols);
    for row in &r.rows {
        let mut cells = vec![
            row.backend.name().to_string(),
            row.rw.to_string(),
            row.bs.to_string(),
            row.qd.to_string(),
        ];
        if show_path {
            cells.push(row.path.to_string());
        }
        cells.extend([
            format!("{:.0}", row.iops.median),
            format!("{:.1}", row.mbps.median),
            format!("{:.0}", row.lat_p50_us),
            format!("{:.0}", row.lat_p99_us),
            format!("{:.0}", row.lat_p999_us),
            row.max_in_flight.to_string(),
            ratio(row.ratio_vs_first),
        ]);
        if both {
            cells.push(ratio(row.ratio_hpdi_over_direct));
        }
        t.row(cells);
    }
    s.push_str(&t.render());
    s
}

/// The bar chart: one group per case, one bar per backend (median IOPS, min–max whiskers).
pub fn chart(r: &BlkReport) -> BarChart {
    let series: Vec<Backend> = r
        .backends
        .iter()
        .filter(|b| b.skipped.is_none())
        .map(|b| b.backend)
        .collect();
    let show_path = r.job.path != PathChoice::Hpdi;
    let mut groups: Vec<(Case, BarGroup)> = Vec::new();
    for row in &r.rows {
        let case = row.case();
        let idx = match groups.iter().position(|(c, _)| *c == case) {
            Some(i) => i,
            None => {
                let mut label = format!("{} {} qd {}", row.rw, row.bs, row.qd);
                if show_path {
                    label.push_str(&format!(" {}", row.path));
                }
                groups.push((
                    case,
                    BarGroup {
                        label,
                        bars: Vec::new(),
                    },
                ));
                groups.len() - 1
            }
        };
        groups[idx].1.bars.push(Bar {
            series: series.iter().position(|b| *b == row.backend).unwrap_or(0),
            value: row.iops.median,
            range: (row.runs.len() > 1).then_some((row.iops.min, row.iops.max)),
            label: si(row.iops.median),
        });
    }
    BarChart {
        title: format!(
            "IOPS per backend ({}, {}, median of {}; whiskers min–max)",
            r.machine, r.accel, r.job.repeats
        ),
        series: series.iter().map(|b| b.name().to_string()).collect(),
        groups: groups.into_iter().map(|(_, g)| g).collect(),
        footer: Some(format!(
            "cache.direct=on on every backend; image {} bytes ({})",
            r.image.bytes, r.image.origin
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"device":"blk0","transport":"pci","rw":"randread","bs":4096,"qd":32,"ops":20000,"seconds":1.234,"iops":16207.1,"mbps":66.4,"lat_us":{"p50":1800,"p99":4100,"p999":6000,"max":9000},"verified":null,"errors":0,"max_in_flight":32,"bytes_moved":81920000,"bytes_copied":0,"path":"hpdi","future_field":[1,2]}"#;

    #[test]
    fn parses_the_contract_line() {
        let line = format!("BENCH {SAMPLE}");
        let ConsoleEvent::Bench(json) = ConsoleEvent::parse(&line) else {
            panic!("not a BENCH event")
        };
        let (r, raw) = GuestBenchResult::parse(&json).unwrap();
        assert_eq!(r.device, "blk0");
        assert_eq!(r.transport, "pci");
        assert_eq!(r.rw, "randread");
        assert_eq!((r.bs, r.qd, r.ops), (4096, 32, 20000));
        assert_eq!(r.iops, 16207.1);
        assert_eq!(r.mbps, 66.4);
        assert_eq!(
            r.lat_us,
            Latency {
                p50: 1800.0,
                p99: 4100.0,
                p999: 6000.0,
                max: 9000.0
            }
        );
        assert_eq!(r.verified, None);
        assert_eq!(r.max_in_flight, 32);
        assert_eq!(r.bytes_moved, 81_920_000);
        assert_eq!(r.path, "hpdi");
        assert_eq!(r.failure(), None);
        // Unknown fields survive in the raw object.
        assert_eq!(raw["future_field"][1], 2);
    }

    #[test]
    fn failed_jobs_are_failures() {
        let (r, _) =
            GuestBenchResult::parse(r#"{"error":"device blk9 not found","device":"blk9"}"#)
                .unwrap();
        assert_eq!(
            r.failure().as_deref(),
            Some("guest reported: device blk9 not found")
        );
        let (r, _) = GuestBenchResult::parse(r#"{"iops":10,"verified":false}"#).unwrap();
        assert_eq!(r.failure().as_deref(), Some("data verification failed"));
        let (r, _) = GuestBenchResult::parse(r#"{"iops":10,"errors":3}"#).unwrap();
        assert_eq!(r.failure().as_deref(), Some("3 I/O errors"));
        let (r, _) = GuestBenchResult::parse(r#"{"iops":0}"#).unwrap();
        assert!(r.failure().unwrap().contains("no throughput"));
        let (r, _) = GuestBenchResult::parse(r#"{"iops":5,"verified":true}"#).unwrap();
        assert_eq!(r.failure(), None);
        assert!(GuestBenchResult::parse("[1]").is_err());
        assert!(GuestBenchResult::parse("{not json").is_err());
        assert!(GuestBenchResult::parse(r#"{"iops":"fast"}"#).is_err());
    }

    #[test]
    fn block_sizes() {
        assert_eq!("4k".parse(), Ok(BlockSize(4096)));
        assert_eq!("4K".parse(), Ok(BlockSize(4096)));
        assert_eq!("1M".parse(), Ok(BlockSize(1 << 20)));
        assert_eq!("512".parse(), Ok(BlockSize(512)));
        assert_eq!("4096".parse(), Ok(BlockSize(4096)));
        assert_eq!("64KiB".parse(), Ok(BlockSize(65536)));
        for bad in ["", "0", "100", "4x", "k", "-4k", "8192M"] {
            assert!(bad.parse::<BlockSize>().is_err(), "{bad}");
        }
        assert_eq!(BlockSize(4096).to_string(), "4k");
        assert_eq!(BlockSize(1 << 20).to_string(), "1M");
        assert_eq!(BlockSize(1536).to_string(), "1536");
        assert_eq!(BlockSize(512).to_string(), "512");
    }

    #[test]
    fn job_words() {
        let job = JobSpec {
            device: "blk0".into(),
            rw: RwMode::Randread,
            bs: BlockSize(4096),
            qd: 32,
            amount: Amount::Ops(20000),
            path: JobPath::Hpdi,
            span_mib: None,
            verify: false,
        };
        assert_eq!(
            job.words(),
            [
                "bench=blk0",
                "bench.rw=randread",
                "bench.bs=4096",
                "bench.qd=32",
                "bench.ops=20000",
                "bench.path=hpdi"
            ]
        );
        let job = JobSpec {
            rw: RwMode::Randrw,
            amount: Amount::TimeMs(2000),
            path: JobPath::Direct,
            span_mib: Some(256),
            verify: true,
            ..job
        };
        assert_eq!(
            job.words()[1..],
            [
                "bench.rw=randrw",
                "bench.bs=4096",
                "bench.qd=32",
                "bench.time_ms=2000",
                "bench.path=direct",
                "bench.span_mib=256",
                "bench.verify=1"
            ]
        );
    }

    fn args_of(cmd: &QemuCommand) -> Vec<String> {
        cmd.to_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn backend_command_lines() {
        let base = QemuCommand::new("q").memory(ByteSize::mib(64)).kernel("/k");
        let img = Path::new("/d/bench.raw");
        let sock = Path::new("/d/vu.sock");
        for (b, aio) in [
            (Backend::Threads, "threads"),
            (Backend::Native, "native"),
            (Backend::IoUring, "io_uring"),
        ] {
            let a = args_of(&backend_command(&base, b, img, sock)).join(" ");
            assert!(
                a.contains(&format!(
                    "-blockdev node-name=disk0,driver=raw,read-only=off,file.driver=file,\
                     file.filename=/d/bench.raw,file.aio={aio},file.cache.direct=on"
                )),
                "{a}"
            );
            assert!(a.contains("-device virtio-blk-pci,drive=disk0"), "{a}");
            assert!(!a.contains("memory-backend"), "{a}");
        }
        let a = args_of(&backend_command(&base, Backend::VhostUser, img, sock)).join(" ");
        assert!(a.contains("-machine q35,memory-backend=mem"), "{a}");
        assert!(
            a.contains("-object memory-backend-memfd,id=mem,size=64M,share=on"),
            "{a}"
        );
        assert!(a.contains("-chardev socket,id=vub0,path=/d/vu.sock"), "{a}");
        assert!(
            a.contains("-device vhost-user-blk-pci,chardev=vub0,num-queues=1"),
            "{a}"
        );
        assert!(!a.contains("-blockdev"), "{a}");
        // tandem-backend is attached the same way (its daemon differs).
        let b = args_of(&backend_command(&base, Backend::TandemBackend, img, sock)).join(" ");
        assert_eq!(a, b);

        let micro = QemuCommand::new("q")
            .machine(Machine::Microvm)
            .microvm_acpi(false)
            .modern_mmio(true);
        let a = args_of(&backend_command(&micro, Backend::VhostUser, img, sock)).join(" ");
        assert!(a.contains("-device vhost-user-blk,chardev=vub0"), "{a}");
        assert!(a.contains("-global virtio-mmio.force-legacy=false"), "{a}");
        let a = args_of(&backend_command(&micro, Backend::Native, img, sock)).join(" ");
        assert!(a.contains("-device virtio-blk-device,drive=disk0"), "{a}");
    }

    #[test]
    fn case_order() {
        let c = cases(
            &[RwMode::Randread, RwMode::Write],
            &[BlockSize(4096)],
            &[1, 8],
            &[JobPath::Hpdi, JobPath::Direct],
        );
        let names: Vec<String> = c.iter().map(Case::to_string).collect();
        assert_eq!(
            names,
            [
                "randread 4k qd=1 hpdi",
                "randread 4k qd=1 direct",
                "randread 4k qd=8 hpdi",
                "randread 4k qd=8 direct",
                "write 4k qd=1 hpdi",
                "write 4k qd=1 direct",
                "write 4k qd=8 hpdi",
                "write 4k qd=8 direct",
            ]
        );
    }

    fn rec(iops: f64, p99: f64, path: &str) -> RunRecord {
        let result = GuestBenchResult {
            iops,
            mbps: iops * 4096.0 / 1e6,
            lat_us: Latency {
                p50: p99 / 2.0,
                p99,
                p999: p99 * 2.0,
                max: p99 * 3.0,
            },
            max_in_flight: 8,
            bytes_moved: 4096 * 100,
            path: path.into(),
            ..GuestBenchResult::default()
        };
        RunRecord {
            repeat: 1,
            wall_ms: 1000.0,
            raw: serde_json::to_value(&result).unwrap(),
            result,
        }
    }

    fn report(path: PathChoice) -> BlkReport {
        let paths = path.paths();
        let mut rows = Vec::new();
        for (b, scale) in [(Backend::Threads, 1.0), (Backend::VhostUser, 2.0)] {
            for qd in [1, 8] {
                for &p in &paths {
                    let case = Case {
                        rw: RwMode::Randread,
                        bs: BlockSize(4096),
                        qd,
                        path: p,
                    };
                    let f = if p == JobPath::Direct { 1.25 } else { 1.0 };
                    let base = 1000.0 * f64::from(qd) * scale * f;
                    rows.push(Row::new(
                        b,
                        &case,
                        vec![
                            rec(base, 100.0, p.name()),
                            rec(base * 1.1, 300.0, p.name()),
                            rec(base * 0.9, 200.0, p.name()),
                        ],
                    ));
                }
            }
        }
        compute_ratios(&mut rows, &[Backend::Threads, Backend::VhostUser]);
        BlkReport {
            accel: accel::Accel::Tcg,
            accel_reason: "tcg: requested".into(),
            qemu_version: None,
            machine: Machine::Q35,
            mem: "64M".into(),
            guest_image: "/img".into(),
            image: ImageInfo {
                path: "/d/bench.raw".into(),
                bytes: 1 << 30,
                allocated_bytes: 1 << 30,
                origin: "qemu-img create -f raw -o preallocation=full".into(),
            },
            cache: CACHE_MODE.into(),
            job: JobInfo {
                device: DEVICE.into(),
                rw: vec![RwMode::Randread],
                bs: vec![BlockSize(4096)],
                qd: vec![1, 8],
                amount: Amount::Ops(2000),
                repeats: 3,
                path,
                span_mib: None,
                verify: false,
            },
            backends: vec![
                BackendInfo {
                    backend: Backend::Threads,
                    description: Backend::Threads.describe(Machine::Q35),
                    skipped: None,
                },
                BackendInfo {
                    backend: Backend::IoUring,
                    description: Backend::IoUring.describe(Machine::Q35),
                    skipped: Some("not here".into()),
                },
                BackendInfo {
                    backend: Backend::VhostUser,
                    description: Backend::VhostUser.describe(Machine::Q35),
                    skipped: None,
                },
            ],
            rows,
        }
    }

    #[test]
    fn rows_medians_and_ratios() {
        let r = report(PathChoice::Hpdi);
        assert_eq!(r.rows.len(), 4);
        let row = &r.rows[0];
        assert_eq!((row.backend, row.qd), (Backend::Threads, 1));
        assert_eq!(row.iops.median, 1000.0);
        assert_eq!(row.iops.min, 900.0);
        assert_eq!(row.lat_p99_us, 200.0);
        assert_eq!(row.lat_p50_us, 100.0);
        assert_eq!(row.ratio_vs_first, Some(1.0));
        assert_eq!(row.ratio_hpdi_over_direct, None);
        let vu8 = &r.rows[3];
        assert_eq!((vu8.backend, vu8.qd), (Backend::VhostUser, 8));
        assert_eq!(vu8.ratio_vs_first, Some(2.0));

        let r = report(PathChoice::Both);
        assert_eq!(r.rows.len(), 8);
        let hpdi = &r.rows[0];
        assert_eq!(hpdi.path, JobPath::Hpdi);
        assert_eq!(hpdi.ratio_hpdi_over_direct, Some(0.8));
        assert_eq!(r.rows[1].ratio_hpdi_over_direct, None);
        // vs first compares the same path.
        assert_eq!(r.rows[5].path, JobPath::Direct);
        assert_eq!(r.rows[5].ratio_vs_first, Some(2.0));
    }

    #[test]
    fn table_svg_json_render() {
        let r = report(PathChoice::Hpdi);
        let t = table(&r);
        assert!(t.contains("  io_uring   skipped: not here"), "{t}");
        assert!(t.contains("vs threads"), "{t}");
        assert!(!t.contains("hpdi/direct"), "{t}");
        let line = t
            .lines()
            .filter(|l| l.starts_with("vhost-user"))
            .nth(1)
            .unwrap_or_else(|| panic!("{t}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            words,
            [
                "vhost-user",
                "randread",
                "4k",
                "8",
                "16000",
                "65.5",
                "100",
                "200",
                "400",
                "8",
                "2.00"
            ]
        );

        let t = table(&report(PathChoice::Both));
        assert!(t.contains("hpdi/direct"), "{t}");
        assert!(t.contains(" direct "), "{t}");

        let svg = chart(&r).render();
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        // Two legend swatches, four bars.
        assert_eq!(svg.matches("<rect x=").count(), 6, "{svg}");
        assert!(svg.contains("randread 4k qd 8"), "{svg}");
        assert!(svg.contains("16.0k"), "{svg}");

        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["rows"][0]["backend"], "threads");
        assert_eq!(json["rows"][3]["backend"], "vhost-user");
        assert_eq!(json["rows"][3]["qd"], 8);
        assert_eq!(json["rows"][3]["bs"], 4096);
        assert_eq!(json["rows"][3]["path"], "hpdi");
        assert_eq!(json["rows"][3]["runs"].as_array().unwrap().len(), 3);
        assert_eq!(json["rows"][3]["runs"][0]["raw"]["iops"], 16000.0);
        assert_eq!(json["backends"][1]["backend"], "io_uring");
        assert_eq!(json["backends"][1]["skipped"], "not here");
        assert_eq!(json["job"]["amount"]["ops"], 2000);
    }

    #[test]
    fn si_labels() {
        assert_eq!(si(950.0), "950");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(2_500_000.0), "2.50M");
        assert_eq!(si(f64::NAN), "-");
    }
}
