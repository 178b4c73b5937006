//! `tandem bench blk`: the guest's in-guest block benchmark against several QEMU block
//! backends on the same raw image file, in one comparison table.
//!
//! Each run boots the guest with one data disk and the benchmark words on its command line
//! (`bench=blk0 bench.rw=randread bench.bs=4096 bench.qd=32 bench.ops=N|bench.time_ms=T
//! bench.path=hpdi|direct [bench.span_mib=M] [bench.verify=1]`, see
//! [`super::job`]). The guest runs the job and prints exactly one `BENCH {json}` line
//! ([`GuestBenchResult`]), then
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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::job::{job_spec, JobParams};
pub use super::job::{Amount, BlockSize, GuestBenchResult, JobPath, Latency, RwMode};
pub use super::orchestrate::Interrupted;
use super::orchestrate::{
    check_raw_disk, check_socket_path, dedup_in_order, nonempty_or, scratch_dir, spawn_quiet,
    Progress, Summary, VmPlan,
};
use super::probe::{create_preallocated, image_info, tool, Tool};
pub use super::probe::{probe_aio, ImageInfo};
use super::render::Outputs;
use crate::accel;
use crate::builder::{
    Aio, Disk, DiskFormat, Machine, QemuCommand, StorageDaemonCommand, VhostUserBlk,
};
use crate::console::ConsoleEvent;
use crate::exit::GuestExit;
use crate::size::ByteSize;
use crate::supervise::{Daemon, DaemonSpec, Ready};
use crate::vm::{Poll, Vm};

/// The guest device the job runs on (the only data disk).
pub const DEVICE: &str = "blk0";
/// How long QEMU may take to exit after the `BENCH` line.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Run time per job when neither `--ops` nor `--time-ms` is given.
pub const DEFAULT_TIME_MS: u64 = 2000;

/// What `tandem bench blk` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkPlan {
    /// Backends in table order (empty: all).
    pub backends: Vec<Backend>,
    /// Machine type.
    pub machine: Machine,
    /// Access patterns (empty: randread).
    pub rw: Vec<RwMode>,
    /// Block sizes (empty: 4k).
    pub bs: Vec<BlockSize>,
    /// Queue depths (empty: 1).
    pub qd: Vec<u32>,
    /// I/Os per run.
    pub ops: Option<u64>,
    /// Milliseconds per run (default [`DEFAULT_TIME_MS`] when `ops` is not given).
    pub time_ms: Option<u64>,
    /// Runs per backend and case.
    pub repeats: u32,
    /// Guest I/O path(s).
    pub path: PathChoice,
    /// Bytes of the device the job touches from offset 0.
    pub span: Option<ByteSize>,
    /// Write-then-read verification.
    pub verify: bool,
    /// Raw data image shared by every backend (default: a fresh preallocated one).
    pub disk: Option<PathBuf>,
    /// Size of the default data image.
    pub disk_size: ByteSize,
    /// Where the scratch directory goes.
    pub work_dir: Option<PathBuf>,
    /// Seconds one run may take (default: 60 + 3 x the job's seconds, or 300 with `ops`).
    pub run_timeout: Option<u64>,
    /// `--json` and `--svg`.
    pub outputs: Outputs,
    /// Guest and QEMU options.
    pub vm: VmPlan,
}

impl BlkPlan {
    /// How long each job runs.
    pub fn amount(&self) -> Amount {
        match (self.ops, self.time_ms) {
            (Some(n), _) => Amount::Ops(n),
            (None, Some(t)) => Amount::TimeMs(t),
            (None, None) => Amount::TimeMs(DEFAULT_TIME_MS),
        }
    }

    /// How long one run (boot and job) may take.
    pub fn run_timeout(&self) -> Duration {
        Duration::from_secs(self.run_timeout.unwrap_or(match self.amount() {
            Amount::TimeMs(t) => 60 + 3 * t.div_ceil(1000),
            Amount::Ops(_) => 300,
        }))
    }

    /// Bytes of the device each job touches, in whole MiB.
    pub fn span_mib(&self) -> Option<u64> {
        self.span.map(|s| s.bytes().div_ceil(1 << 20))
    }

    /// The cases, in table order.
    pub fn cases(&self) -> Vec<Case> {
        cases(
            &nonempty_or(&self.rw, RwMode::RANDREAD),
            &nonempty_or(&self.bs, BlockSize(4096)),
            &nonempty_or(&self.qd, 1),
            &self.path.paths(),
        )
    }

    /// The guest's job for `case`.
    pub fn job(&self, case: &Case) -> anyhow::Result<tandem_formats::bench_job::JobSpec> {
        job_spec(&JobParams {
            device: DEVICE,
            rw: case.rw,
            bs: case.bs,
            qd: case.qd,
            amount: self.amount(),
            path: case.path,
            span_mib: self.span_mib(),
            verify: self.verify,
        })
    }

    /// Validate what clap cannot.
    fn check(&self) -> anyhow::Result<()> {
        if self.qd.contains(&0) {
            bail!("--qd: queue depths start at 1");
        }
        if self.ops == Some(0) || self.time_ms == Some(0) {
            bail!("--ops / --time-ms must be positive");
        }
        // Every case must be a job the guest takes.
        for case in self.cases() {
            self.job(&case).with_context(|| format!("case {case}"))?;
        }
        if let Some(disk) = &self.disk {
            check_raw_disk(
                disk,
                "every backend, qemu-storage-daemon included, opens the file as raw",
            )?;
        }
        Ok(())
    }
}

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
    #[serde(serialize_with = "super::job::serialize_path")]
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
    /// The row of `runs` of `case` on `backend` (ratios not yet filled in).
    pub fn new(backend: Backend, case: &Case, runs: Vec<RunRecord>) -> Row {
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

    /// The row's case.
    pub fn case(&self) -> Case {
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
        write!(
            f,
            "{} {} qd={} {}",
            self.rw,
            self.bs,
            self.qd,
            self.path.name()
        )
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

/// The whole `tandem bench blk` report (the `--json` file; [`super::render::blk`] renders
/// it).
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

/// `tandem bench blk`: run, print the table, write JSON/SVG; returns the exit status.
pub fn bench_blk(plan: &BlkPlan) -> anyhow::Result<i32> {
    super::run_interruptible("QEMU and the storage daemon were stopped", |interrupted| {
        run_and_report(plan, interrupted)
    })
}

/// Run the bench, print the table on stdout, write `--json` and `--svg`; returns the report.
/// `interrupted` is polled while waiting; when it becomes true the bench stops with
/// [`Interrupted`].
pub fn run_and_report(plan: &BlkPlan, interrupted: &AtomicBool) -> anyhow::Result<BlkReport> {
    let report = run(plan, interrupted)?;
    super::render::publish(&report, &plan.outputs)?;
    Ok(report)
}

/// What every run needs: the accelerator, QEMU, the guest image.
struct Env {
    accel: accel::AccelDecision,
    qemu: PathBuf,
    guest: PathBuf,
}

/// Run the bench and return the report (nothing printed on stdout).
pub fn run(plan: &BlkPlan, interrupted: &AtomicBool) -> anyhow::Result<BlkReport> {
    plan.check()?;
    let env = Env {
        accel: accel::choose(plan.vm.accel)?,
        qemu: crate::qemu_bin::ensure_qemu()?,
        guest: crate::image::ensure(plan.vm.image.as_deref())?,
    };
    let scratch = scratch_dir(plan.work_dir.as_deref())?;
    let dir = scratch.path();
    let socket = dir.join("vhost-user-blk.sock");
    check_socket_path(&socket)?;
    let image = data_image(plan, &env.qemu, dir)?;
    let image_path = PathBuf::from(&image.path);
    let (backends, daemons) = choose_backends(plan, &env, &image_path, dir, interrupted)?;
    let to_run: Vec<Backend> = backends
        .iter()
        .filter(|b| b.skipped.is_none())
        .map(|b| b.backend)
        .collect();
    let case_list = plan.cases();
    let total = (to_run.len() * case_list.len()) as u64 * u64::from(plan.repeats);
    eprintln!(
        "tandem: {total} runs: backends {}, {} case(s) x {} repeat(s), {} on {} ({})",
        to_run
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(","),
        case_list.len(),
        plan.repeats,
        plan.amount(),
        plan.machine,
        env.accel
    );
    let mut progress = Progress::new(total);
    let mut rows = Vec::new();
    for &backend in &to_run {
        let target = BackendRun {
            backend,
            image: &image_path,
            socket: &socket,
            dir,
        };
        rows.extend(run_backend(
            plan,
            &env,
            &target,
            &daemons,
            &mut progress,
            interrupted,
        )?);
    }
    progress.finish();
    compute_ratios(&mut rows, &to_run);
    Ok(report(plan, &env, image, backends, rows))
}

/// The data image: `--disk` as given, else a fresh preallocated one in `dir`.
fn data_image(plan: &BlkPlan, qemu: &Path, dir: &Path) -> anyhow::Result<ImageInfo> {
    if let Some(path) = &plan.disk {
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
        return Ok(info);
    }
    let qemu_img = tool(Tool::QemuImg, qemu)?;
    let path = dir.join("bench.raw");
    eprintln!(
        "tandem: creating {} ({}, preallocation=full)",
        path.display(),
        plan.disk_size
    );
    create_preallocated(&qemu_img, &path, plan.disk_size)?;
    image_info(&path, "qemu-img create -f raw -o preallocation=full")
}

/// The daemon programs the vhost-user backends found.
#[derive(Default)]
struct DaemonBins {
    storage_daemon: Option<PathBuf>,
    tandem_backend: Option<PathBuf>,
}

/// Which backends run, and why the others do not: io_uring is probed, the daemons looked
/// for (tandem-backend built when missing).
fn choose_backends(
    plan: &BlkPlan,
    env: &Env,
    image: &Path,
    dir: &Path,
    interrupted: &AtomicBool,
) -> anyhow::Result<(Vec<BackendInfo>, DaemonBins)> {
    let mut wanted = if plan.backends.is_empty() {
        Backend::ALL.to_vec()
    } else {
        plan.backends.clone()
    };
    dedup_in_order(&mut wanted);
    let mut bins = DaemonBins::default();
    let mut backends = Vec::new();
    for &b in &wanted {
        let skipped = match b {
            Backend::IoUring => probe_aio(
                &env.qemu,
                env.accel.accel,
                image,
                Aio::IoUring,
                dir,
                interrupted,
            )?
            .err()
            .map(|why| format!("this QEMU/kernel cannot use aio=io_uring: {why}")),
            Backend::TandemBackend => match crate::vhost_backend::ensure() {
                Ok(p) => {
                    bins.tandem_backend = Some(p);
                    None
                }
                Err(e) => Some(format!("tandem-backend unavailable: {e:#}")),
            },
            Backend::VhostUser => match Tool::StorageDaemon.find(&env.qemu) {
                Some(p) => {
                    bins.storage_daemon = Some(p);
                    None
                }
                None => Some(Tool::StorageDaemon.missing()),
            },
            _ => None,
        };
        if let Some(why) = &skipped {
            eprintln!("tandem: skipping backend {b}: {why}");
        }
        backends.push(BackendInfo {
            backend: b,
            description: b.describe(plan.machine),
            skipped,
        });
    }
    if backends.iter().all(|b| b.skipped.is_some()) {
        bail!(
            "no backend can run here{}",
            if plan.backends.is_empty() {
                ""
            } else {
                " (of those in --backends)"
            }
        );
    }
    Ok((backends, bins))
}

/// One backend's place in the run: its data image and vhost-user socket.
struct BackendRun<'a> {
    backend: Backend,
    image: &'a Path,
    socket: &'a Path,
    dir: &'a Path,
}

/// Every repeat of every case on one backend (its daemon up meanwhile): one row per case.
fn run_backend(
    plan: &BlkPlan,
    env: &Env,
    t: &BackendRun,
    bins: &DaemonBins,
    progress: &mut Progress,
    interrupted: &AtomicBool,
) -> anyhow::Result<Vec<Row>> {
    let _daemon = start_daemon(t, bins)?;
    let cmd = backend_command(&base_command(plan, env), t.backend, t.image, t.socket);
    let console_log = t.dir.join("console.log");
    let case_list = plan.cases();
    let mut runs: Vec<Vec<RunRecord>> = vec![Vec::new(); case_list.len()];
    for repeat in 1..=plan.repeats {
        for (i, case) in case_list.iter().enumerate() {
            let what = format!("{} {case} run {repeat}/{}", t.backend, plan.repeats);
            progress.start(&what);
            let mut run_cmd = cmd.clone();
            run_cmd.cmdline.extend(plan.job(case)?.words());
            let rec = run_once(&run_cmd, &console_log, plan.run_timeout(), interrupted)
                .with_context(|| format!("{what}\ncommand: {run_cmd}"))?;
            if rec.result.qd != 0 && rec.result.qd != case.qd {
                progress.note(&format!(
                    "{what}: the guest ran at qd={} (asked for {})",
                    rec.result.qd, case.qd
                ));
            }
            progress.finish_one(
                &what,
                &format!(
                    "{:.0} IOPS, {:.1} MB/s, p99 {:.0} us",
                    rec.result.iops, rec.result.mbps, rec.result.lat_us.p99
                ),
            );
            runs[i].push(RunRecord { repeat, ..rec });
        }
    }
    Ok(case_list
        .iter()
        .zip(runs)
        .map(|(case, case_runs)| Row::new(t.backend, case, case_runs))
        .collect())
}

/// The daemon a vhost-user backend needs, started on the image (O_DIRECT like the others).
fn start_daemon(t: &BackendRun, bins: &DaemonBins) -> anyhow::Result<Option<Daemon>> {
    match t.backend {
        Backend::VhostUser => {
            let program = bins.storage_daemon.clone().expect("found when not skipped");
            let cmd = StorageDaemonCommand::vhost_user_blk(program, t.image, t.socket)
                .aio(Aio::Native)
                .cache_direct(true);
            let spec = DaemonSpec::new(
                "qemu-storage-daemon",
                cmd.to_command(),
                &cmd,
                &t.dir.join("storage-daemon.log"),
                Ready::Socket(cmd.socket.clone()),
            );
            Ok(Some(Daemon::start(spec, None)?))
        }
        // Same image, same cache mode (O_DIRECT) as qemu-storage-daemon's cache.direct=on.
        Backend::TandemBackend => {
            let program = bins.tandem_backend.clone().expect("found when not skipped");
            let cmd =
                crate::vhost_backend::BackendCommand::new(program, t.image, t.socket).direct(true);
            Ok(Some(cmd.start(&t.dir.join("tandem-backend.log"))?))
        }
        _ => Ok(None),
    }
}

/// The QEMU command every run starts from (no data disk, no job words yet).
fn base_command(plan: &BlkPlan, env: &Env) -> QemuCommand {
    let mut base = QemuCommand::new(&env.qemu)
        .name("tandem-bench-blk")
        .machine(plan.machine)
        .accel(env.accel.accel)
        .memory(plan.vm.mem)
        .smp(plan.vm.smp)
        .kernel(&env.guest)
        .no_reboot(true);
    if plan.machine == Machine::Microvm {
        base = base.microvm_acpi(false).modern_mmio(true);
    }
    if let Some(words) = &plan.vm.cmdline {
        base = base.cmdline(words);
    }
    base
}

fn report(
    plan: &BlkPlan,
    env: &Env,
    image: ImageInfo,
    backends: Vec<BackendInfo>,
    rows: Vec<Row>,
) -> BlkReport {
    BlkReport {
        accel: env.accel.accel,
        accel_reason: env.accel.reason.clone(),
        qemu_version: crate::qemu_bin::qemu_version(&env.qemu),
        machine: plan.machine,
        mem: plan.vm.mem.to_string(),
        guest_image: env.guest.display().to_string(),
        image,
        cache: CACHE_MODE.into(),
        job: JobInfo {
            device: DEVICE.into(),
            rw: nonempty_or(&plan.rw, RwMode::RANDREAD),
            bs: nonempty_or(&plan.bs, BlockSize(4096)),
            qd: nonempty_or(&plan.qd, 1),
            amount: plan.amount(),
            repeats: plan.repeats,
            path: plan.path,
            span_mib: plan.span_mib(),
            verify: plan.verify,
        },
        backends,
        rows,
    }
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
    let mut vm = spawn_quiet(cmd, console_log)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::render::blk as render;

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
            &[RwMode::RANDREAD, RwMode::WRITE],
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
                        rw: RwMode::RANDREAD,
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
                rw: vec![RwMode::RANDREAD],
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
        let t = render::table(&r);
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

        let t = render::table(&report(PathChoice::Both));
        assert!(t.contains("hpdi/direct"), "{t}");
        assert!(t.contains(" direct "), "{t}");

        let svg = render::chart(&r).render();
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
}
