//! `tandem bench nbd`: fio's nbd engine against the guest's NBD service and, in the same
//! run, against `qemu-nbd` on the host serving a copy of the same image (the anchor).
//!
//! Targets ([`NbdTarget`]):
//!
//! | target | server | path to the data |
//! |---|---|---|
//! | `guest` | the unikernel's NBD service (export `blk0`) | host TCP → QEMU user networking (slirp, port forward on 127.0.0.1) → virtio-net → guest TCP/IP → NBD → HPDI → virtio-blk → QEMU file node (`aio=native`, `cache.direct=on`) |
//! | `qemu-nbd` | `qemu-nbd --cache=none --aio=native` on the host | host TCP → qemu-nbd → the file |
//!
//! Both serve a raw image of the same content and size, each its own copy (write jobs change
//! it): by default every copy is made with `qemu-img create -o preallocation=full`, i.e.
//! zeros written to every block, so random reads hit allocated blocks on the host disk
//! rather than holes the host file system answers without I/O (there is no separate fio
//! write pass: reading zeros from allocated blocks costs the same as reading data, and it
//! keeps the bench short). `--disk PATH` starts both copies from that file instead (the
//! file itself is never written). Both sides bypass the host page cache (`O_DIRECT`) with
//! Linux AIO, so the anchor measures the same host disk through the shortest path.
//!
//! The targets run one after the other: the guest is booted (as `tandem run` boots it:
//! q35, `-m 64M` unless `--mem`, an NVRAM region over a fresh file unless `--no-nvram`,
//! the data disk, a NIC with a forward from a free host port to guest port 10809), its
//! `TANDEM NBD ... /blk0` line awaited, every run done, and QEMU stopped before the anchor
//! starts, so neither competes with the other for host CPUs. Within a target, repeats are
//! interleaved across the jobs. Each run is one fio process, one job, one connection:
//!
//! `fio --name=... --ioengine=nbd --uri=nbd://127.0.0.1:PORT/blk0 --rw=RW --bs=BS
//! --iodepth=QD --time_based=1 --runtime=T [--ramp_time=R] [--size=SPAN]
//! --unified_rw_reporting=mixed --output-format=json --output=FILE`
//!
//! (`--fsync=N` added with `--fsync N`: fio sends an NBD FLUSH after every N writes.)
//!
//! From fio's JSON ([`parse_fio_json`]): IOPS, bandwidth, completion-latency (clat)
//! percentiles p50/p99/p99.9 and max.
//!
//! **Copies.** Before and after each guest run the bench reads the guest's management port
//! (`status`, a host port forwarded to guest port 10810; fields in
//! `tandem_formats::mgmt_status`): NBD payload bytes served and the bytes the guest's CPU copied
//! at the four places of its NBD data path (frame -> socket buffer and socket buffer ->
//! frame inside smoltcp, counted from the frames' TCP headers; socket buffer -> NBD server
//! and back, counted at the socket boundary). `copies/req` is copied bytes over payload
//! bytes: how many times each request's payload was copied (NBD headers, retransmissions
//! and fio's ramp included). qemu-nbd runs on the host and is not measured: `n/a (host)`.
//!
//! **Durability.** The targets do not acknowledge a write at the same point, and the table
//! and the JSON say which is which ([`guest_durability`], [`ANCHOR_DURABILITY`]): the guest
//! (`durability=disk`, the default) acknowledges a write without FUA once it is in its
//! NVRAM log, qemu-nbd (`--cache=none`) once its O_DIRECT write to the image returned.
//! Neither flushes the host disk for a plain write. `--fsync 1` compares like with like:
//! every write is followed by a FLUSH, which both return only once the data is on the image
//! and the host disk was flushed. Results: a table of medians per (job, target) with
//! the guest/anchor IOPS ratio, `--json` with every run's fio job object, and `--svg`, a bar
//! chart of median IOPS per job, guest vs anchor. Timings taken under TCG say little about
//! the guest's speed on KVM: the guest's CPU is emulated, the anchor's is not.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tandem_formats::mgmt_status::{DataPath, Status};

pub use super::job::{BlockSize, Latency, RwMode};
pub use super::orchestrate::Interrupted;
use super::orchestrate::{
    boot_until_export, check_interrupted, check_raw_disk, check_socket_path, dedup_in_order,
    scratch_dir, Progress, Summary, VmPlan,
};
use super::probe::{create_preallocated, fio_version, fio_with_nbd, guest_nvlog, image_info};
pub use super::probe::{free_port, guest_mgmt_port, guest_nbd_port, guest_status, ImageInfo};
use super::probe::{tool, Tool};
use super::render::Outputs;
use crate::accel;
use crate::builder::{
    Aio, Disk, DiskFormat, Machine, NbdServerCommand, Nic, QemuCommand, SharedRegion,
};
use crate::run::STOP_GRACE;
use crate::size::ByteSize;
use crate::supervise::{Daemon, DaemonSpec, Ready};
use crate::vm::{Poll, Vm};

/// The default `--jobs`.
pub const DEFAULT_JOBS: &str =
    "randread:4k:1,randread:4k:16,randwrite:4k:1,randwrite:4k:16,read:1M:4,write:1M:4";
/// The export every target serves (the guest names its first disk's export so).
pub const EXPORT: &str = "blk0";
/// How long fio may run beyond its ramp and runtime (connect, setup, exit) before it is
/// killed.
pub const FIO_SLACK: Duration = Duration::from_secs(60);
/// The cache mode both targets use.
pub const CACHE_MODE: &str = "none (O_DIRECT) with aio=native on both targets";
/// When `qemu-nbd --cache=none` acknowledges a write, and what its FLUSH does.
pub const ANCHOR_DURABILITY: &str = "qemu-nbd --cache=none: a WRITE is acknowledged once its \
     O_DIRECT write to the image returned (on the host disk, possibly in its volatile cache; \
     not flushed); FLUSH runs fdatasync on the image";
/// What `tandem bench nbd` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdPlan {
    /// Targets, in table order.
    pub targets: Vec<NbdTarget>,
    /// fio jobs, in table order.
    pub jobs: Vec<FioJob>,
    /// Seconds each job runs.
    pub time: u32,
    /// Seconds of warm-up before each job's measurement.
    pub ramp: u32,
    /// Runs per target and job.
    pub repeats: u32,
    /// Bytes of the export the jobs touch from offset 0.
    pub span: Option<ByteSize>,
    /// An NBD FLUSH after every this many writes (0: none).
    pub fsync: u32,
    /// Raw image to start from (copied once per target).
    pub disk: Option<PathBuf>,
    /// Size of the default image.
    pub disk_size: ByteSize,
    /// Machine type of the guest.
    pub machine: Machine,
    /// Size of the guest's NVRAM region.
    pub nvram_size: ByteSize,
    /// Boot the guest without an NVRAM region.
    pub no_nvram: bool,
    /// Where the scratch directory goes.
    pub work_dir: Option<PathBuf>,
    /// Seconds the guest may take to boot and announce its export.
    pub boot_timeout: u64,
    /// `--json` and `--svg`.
    pub outputs: Outputs,
    /// Measure the cost of TLS instead ([`super::nbd_tls`]).
    pub tls: bool,
    /// Guest and QEMU options.
    pub vm: VmPlan,
}

impl NbdPlan {
    fn check(&self) -> anyhow::Result<()> {
        if self.jobs.is_empty() {
            bail!("--jobs: no job given");
        }
        if self.targets.is_empty() {
            bail!("--targets: no target given");
        }
        if let Some(disk) = &self.disk {
            check_raw_disk(disk, "both targets serve it as raw")?;
        }
        Ok(())
    }

    /// The per-run parameters.
    pub fn params(&self) -> RunParams {
        RunParams {
            time_s: self.time,
            ramp_s: self.ramp,
            span_bytes: self.span.map(|s| s.bytes()),
            fsync: self.fsync,
        }
    }
}

/// An NBD server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize)]
pub enum NbdTarget {
    /// The unikernel's NBD service, through a QEMU user-networking port forward.
    #[value(name = "guest")]
    #[serde(rename = "guest")]
    Guest,
    /// `qemu-nbd` on the host (the anchor).
    #[value(name = "qemu-nbd", alias = "qemu_nbd", alias = "anchor")]
    #[serde(rename = "qemu-nbd")]
    QemuNbd,
}

impl NbdTarget {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            NbdTarget::Guest => "guest",
            NbdTarget::QemuNbd => "qemu-nbd",
        }
    }
}

impl fmt::Display for NbdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fio job: access pattern, block size, queue depth (`RW:BS:QD` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct FioJob {
    /// fio `rw=`.
    pub rw: RwMode,
    /// fio `bs=`.
    pub bs: BlockSize,
    /// fio `iodepth=`.
    pub qd: u32,
}

/// A `--jobs` entry that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid job '{0}': expected RW:BS:QD such as randread:4k:16 (RW: read, write, randread, \
     randwrite, randrw; QD: 1..1024)"
)]
pub struct FioJobError(String);

impl FromStr for FioJob {
    type Err = FioJobError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FioJobError(s.to_string());
        let mut parts = s.trim().split(':');
        let (Some(rw), Some(bs), Some(qd), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        let rw = <RwMode as clap::ValueEnum>::from_str(rw, true).map_err(|_| err())?;
        let bs: BlockSize = bs.parse().map_err(|_| err())?;
        let qd: u32 = qd.parse().map_err(|_| err())?;
        if !(1..=1024).contains(&qd) {
            return Err(err());
        }
        Ok(FioJob { rw, bs, qd })
    }
}

impl fmt::Display for FioJob {
    /// `randread:4k:16`, the form `--jobs` takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.rw, self.bs, self.qd)
    }
}

impl FioJob {
    /// `randread 4k qd16`, for tables and charts.
    pub fn label(&self) -> String {
        format!("{} {} qd{}", self.rw, self.bs, self.qd)
    }

    /// fio's arguments for this job against `uri` (no output options).
    pub fn fio_args(&self, name: &str, uri: &str, params: &RunParams) -> Vec<String> {
        let mut a = vec![
            format!("--name={name}"),
            "--ioengine=nbd".into(),
            format!("--uri={uri}"),
            format!("--rw={}", self.rw),
            format!("--bs={}", self.bs.0),
            format!("--iodepth={}", self.qd),
            "--time_based=1".into(),
            format!("--runtime={}", params.time_s),
        ];
        if params.ramp_s > 0 {
            a.push(format!("--ramp_time={}", params.ramp_s));
        }
        if let Some(span) = params.span_bytes {
            a.push(format!("--size={span}"));
        }
        if params.fsync > 0 {
            // The nbd engine turns each fio sync into an NBD FLUSH.
            a.push(format!("--fsync={}", params.fsync));
        }
        // One section ("mixed") whatever the direction, randrw included.
        a.push("--unified_rw_reporting=mixed".into());
        a.push("--output-format=json".into());
        a
    }
}

/// Per-run parameters shared by every job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RunParams {
    /// fio `runtime=` in seconds.
    pub time_s: u32,
    /// fio `ramp_time=` in seconds (0: none).
    pub ramp_s: u32,
    /// fio `size=` (bytes from offset 0), when given.
    pub span_bytes: Option<u64>,
    /// fio `fsync=`: an NBD FLUSH after every this many writes (0: none).
    pub fsync: u32,
}

/// What one fio run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FioResult {
    /// I/Os per second.
    pub iops: f64,
    /// Megabytes (10^6) per second.
    pub mbps: f64,
    /// Completion-latency percentiles and maximum, microseconds.
    pub clat_us: Latency,
    /// Mean total latency (submission + completion), microseconds.
    pub lat_mean_us: f64,
    /// Bytes transferred.
    pub io_bytes: u64,
    /// fio's measured runtime, milliseconds.
    pub runtime_ms: u64,
}

/// Parse fio's `--output-format=json` text (anything before the JSON object, such as the nbd
/// engine's "connected" line, is skipped): the measurement of its first job and that job's
/// whole object. A job with a nonzero `error` is an error.
pub fn parse_fio_json(text: &str) -> anyhow::Result<(FioResult, serde_json::Value)> {
    let start = if text.starts_with('{') {
        0
    } else {
        text.find("\n{")
            .map(|i| i + 1)
            .with_context(|| format!("no JSON object in fio's output: {}", head(text)))?
    };
    let v: serde_json::Value = serde_json::from_str(&text[start..])
        .with_context(|| format!("fio's output is not JSON: {}", head(&text[start..])))?;
    let job = v["jobs"]
        .get(0)
        .context("fio's JSON has no jobs[0]")?
        .clone();
    let error = job["error"].as_i64().unwrap_or(0);
    if error != 0 {
        bail!("fio reported error {error} for job {}", job["jobname"]);
    }
    let num = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    // Combine read and write when fio did not unify them (older options, hand-made input).
    let sections: Vec<&serde_json::Value> = if job.get("mixed").is_some() {
        vec![&job["mixed"]]
    } else {
        ["read", "write"]
            .iter()
            .map(|k| &job[*k])
            .filter(|s| s["io_bytes"].as_u64().unwrap_or(0) > 0)
            .collect()
    };
    if sections.is_empty() {
        bail!("fio moved no data (no read, write or mixed section with io_bytes > 0)");
    }
    // Latency from the section that did the most I/O.
    let main = sections
        .iter()
        .max_by(|a, b| num(&a["total_ios"]).total_cmp(&num(&b["total_ios"])))
        .expect("nonempty");
    let pct = |p: &str| num(&main["clat_ns"]["percentile"][p]) / 1e3;
    let result = FioResult {
        iops: sections.iter().map(|s| num(&s["iops"])).sum(),
        mbps: sections.iter().map(|s| num(&s["bw_bytes"])).sum::<f64>() / 1e6,
        clat_us: Latency {
            p50: pct("50.000000"),
            p99: pct("99.000000"),
            p999: pct("99.900000"),
            max: num(&main["clat_ns"]["max"]) / 1e3,
        },
        lat_mean_us: num(&main["lat_ns"]["mean"]) / 1e3,
        io_bytes: sections
            .iter()
            .map(|s| s["io_bytes"].as_u64().unwrap_or(0))
            .sum(),
        runtime_ms: job["job_runtime"].as_u64().unwrap_or(0),
    };
    if !(result.iops.is_finite() && result.iops > 0.0) {
        bail!("fio reported no throughput (iops={})", result.iops);
    }
    Ok((result, job))
}

fn head(s: &str) -> String {
    let t: String = s.chars().take(300).collect();
    if t.len() < s.len() {
        format!("{t}...")
    } else {
        t
    }
}

/// What the guest served and copied during one or more runs (differences of its management
/// port's counters; see `tandem_formats::mgmt_status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GuestCopies {
    /// NBD requests the guest took (fio's ramp and flushes included).
    pub requests: u64,
    /// Payload bytes of those reads and writes.
    pub payload_bytes: u64,
    /// smoltcp: TCP payload of received frames into socket receive buffers.
    pub frame_to_socket: u64,
    /// NBD server: out of socket receive buffers (headers; write payload into the log).
    pub socket_to_app: u64,
    /// NBD server: into socket send buffers (headers; read payload from pool buffers).
    pub app_to_socket: u64,
    /// smoltcp: socket send buffers into outgoing frames.
    pub socket_to_frame: u64,
    /// The four together.
    pub copied_bytes: u64,
    /// `copied_bytes / payload_bytes`: how many times each payload byte was copied, i.e.
    /// payload copies per request (NBD headers and retransmissions included).
    pub copies_per_request: Option<f64>,
}

impl GuestCopies {
    /// From the counters read before and after a run.
    pub fn between(before: &Status, after: &Status) -> GuestCopies {
        GuestCopies::from_delta(
            after.requests.saturating_sub(before.requests),
            &after.data.since(&before.data),
        )
    }

    fn from_delta(requests: u64, d: &DataPath) -> GuestCopies {
        GuestCopies {
            requests,
            payload_bytes: d.payload_bytes(),
            frame_to_socket: d.copy_frame_to_socket,
            socket_to_app: d.copy_socket_to_app,
            app_to_socket: d.copy_app_to_socket,
            socket_to_frame: d.copy_socket_to_frame,
            copied_bytes: d.copied_bytes(),
            copies_per_request: (d.payload_bytes() > 0)
                .then(|| d.copied_bytes() as f64 / d.payload_bytes() as f64),
        }
    }

    /// Several runs together.
    pub fn sum<'a>(runs: impl IntoIterator<Item = &'a GuestCopies>) -> Option<GuestCopies> {
        let mut d = DataPath::default();
        let mut requests = 0;
        let mut any = false;
        for r in runs {
            any = true;
            requests += r.requests;
            d.nbd_read_bytes += r.payload_bytes;
            d.copy_frame_to_socket += r.frame_to_socket;
            d.copy_socket_to_app += r.socket_to_app;
            d.copy_app_to_socket += r.app_to_socket;
            d.copy_socket_to_frame += r.socket_to_frame;
        }
        any.then(|| GuestCopies::from_delta(requests, &d))
    }
}

/// When the guest acknowledges a write and what FLUSH/FUA wait for, from its command-line
/// words and whether it has an NVRAM device: (short label, full sentence).
pub fn guest_durability(cmdline: Option<&str>, nvram: bool) -> (String, String) {
    match (guest_nvlog(cmdline), nvram) {
        (true, true) => (
            "NVRAM log".into(),
            "guest durability=nvlog: WRITE, FUA and FLUSH return once the data is in the \
             NVRAM log (an ivshmem file in the host's page cache; a host power loss can lose \
             them)"
                .into(),
        ),
        (_, true) => (
            "NVRAM log".into(),
            "guest durability=disk: a WRITE without FUA is acknowledged once it is in the \
             NVRAM log (an ivshmem file in the host's page cache); FLUSH and FUA return once \
             the data is on the disk image and the disk was flushed"
                .into(),
        ),
        (_, false) => (
            "RAM log".into(),
            "guest durability=disk without NVRAM: a WRITE without FUA is acknowledged once it \
             is in the log in guest RAM; FLUSH and FUA return once the data is on the disk \
             image and the disk was flushed"
                .into(),
        ),
    }
}

/// One fio run.
#[derive(Debug, Clone, Serialize)]
pub struct FioRun {
    /// Repeat number, from 1.
    pub repeat: u32,
    /// What it measured.
    pub result: FioResult,
    /// Guest runs: what the guest served and copied during the run (`None` on the anchor,
    /// or when a restart in the middle made the counters start again).
    pub guest_copies: Option<GuestCopies>,
    /// fio's job object, as fio wrote it.
    pub fio: serde_json::Value,
}

/// One table row: every repeat of one job on one target, and their medians.
#[derive(Debug, Clone, Serialize)]
pub struct NbdRow {
    /// Target.
    pub target: NbdTarget,
    /// The job as `RW:BS:QD`.
    pub job: String,
    /// Access pattern.
    pub rw: RwMode,
    /// Block size in bytes.
    pub bs: BlockSize,
    /// Queue depth.
    pub qd: u32,
    /// IOPS over the repeats.
    pub iops: Summary,
    /// MB/s over the repeats.
    pub mbps: Summary,
    /// Median over the repeats of each run's clat p50 (µs).
    pub clat_p50_us: f64,
    /// Median of the runs' clat p99 (µs).
    pub clat_p99_us: f64,
    /// Median of the runs' clat p99.9 (µs).
    pub clat_p999_us: f64,
    /// On guest rows: median IOPS of the guest divided by the anchor's for the same job.
    pub ratio_guest_over_anchor: Option<f64>,
    /// On guest rows: what the guest copied over every run together (`copies_per_request`
    /// is the table's `copies/req`). `None` on the anchor: a host process, not measured.
    pub guest_copies: Option<GuestCopies>,
    /// When this target acknowledges a write (the table's `write ack`).
    pub write_ack: String,
    /// Every run.
    pub runs: Vec<FioRun>,
}

impl NbdRow {
    fn new(target: NbdTarget, job: FioJob, runs: Vec<FioRun>) -> NbdRow {
        let col = |f: &dyn Fn(&FioResult) -> f64| {
            Summary::of(&runs.iter().map(|r| f(&r.result)).collect::<Vec<_>>())
        };
        NbdRow {
            target,
            job: job.to_string(),
            rw: job.rw,
            bs: job.bs,
            qd: job.qd,
            iops: col(&|r| r.iops),
            mbps: col(&|r| r.mbps),
            clat_p50_us: col(&|r| r.clat_us.p50).median,
            clat_p99_us: col(&|r| r.clat_us.p99).median,
            clat_p999_us: col(&|r| r.clat_us.p999).median,
            ratio_guest_over_anchor: None,
            guest_copies: if runs.iter().all(|r| r.guest_copies.is_some()) {
                GuestCopies::sum(runs.iter().filter_map(|r| r.guest_copies.as_ref()))
            } else {
                None
            },
            write_ack: String::new(),
            runs,
        }
    }

    /// The row's job.
    pub fn fio_job(&self) -> FioJob {
        FioJob {
            rw: self.rw,
            bs: self.bs,
            qd: self.qd,
        }
    }
}

/// A target's place in the report.
#[derive(Debug, Clone, Serialize)]
pub struct TargetInfo {
    /// Which.
    pub target: NbdTarget,
    /// What serves it.
    pub description: String,
    /// The URI fio used.
    pub uri: String,
    /// The server's command line (QEMU's for the guest).
    pub command: String,
    /// Its copy of the image.
    pub image: ImageInfo,
    /// Guest only: the fields of its `TANDEM READY` line.
    pub guest_ready: Option<BTreeMap<String, String>>,
    /// When it acknowledges a write, and what its FLUSH and FUA wait for.
    pub durability: String,
    /// The same, in a word or two (the table's `write ack`, FLUSH added with `--fsync`).
    pub write_ack: String,
    /// Seconds from starting the server to its export being served.
    pub start_s: f64,
}

/// The whole `tandem bench nbd` report (the `--json` file; [`super::render::nbd`] renders
/// it).
#[derive(Debug, Clone, Serialize)]
pub struct NbdReport {
    /// Accelerator of the guest.
    pub accel: accel::Accel,
    /// Why.
    pub accel_reason: String,
    /// QEMU's version line.
    pub qemu_version: Option<String>,
    /// fio's version.
    pub fio_version: Option<String>,
    /// Guest machine.
    pub machine: Machine,
    /// Guest RAM.
    pub mem: String,
    /// Guest image.
    pub guest_image: Option<String>,
    /// The guest's NVRAM region (`64M ivshmem-plain`), or why there is none.
    pub guest_nvram: String,
    /// Where the targets' images come from.
    pub image_origin: String,
    /// Image size in bytes.
    pub image_bytes: u64,
    /// The host cache mode, the same on both targets.
    pub cache: String,
    /// Whether the targets' writes are durable at the same point in this run, and why not.
    pub durability_comparison: String,
    /// Per-run parameters.
    pub params: RunParams,
    /// Runs per target and job.
    pub repeats: u32,
    /// The jobs, in table order.
    pub jobs: Vec<String>,
    /// The targets, in run order.
    pub targets: Vec<TargetInfo>,
    /// One row per job and target (job-major).
    pub rows: Vec<NbdRow>,
    /// Wall time of the whole bench, seconds.
    pub wall_s: f64,
}

/// `tandem bench nbd`: run, print the table, write JSON/SVG; returns the exit status.
pub fn bench_nbd(plan: &NbdPlan) -> anyhow::Result<i32> {
    if plan.tls {
        return super::run_interruptible("QEMU, qemu-nbd and qemu-img were stopped", |i| {
            super::nbd_tls::run_and_report(plan, i)
        });
    }
    super::run_interruptible("QEMU, qemu-nbd and fio were stopped", |interrupted| {
        run_and_report(plan, interrupted)
    })
}

/// Run the bench, print the table on stdout, write `--json` and `--svg`; returns the report.
/// When `interrupted` becomes true the bench stops with [`Interrupted`].
pub fn run_and_report(plan: &NbdPlan, interrupted: &AtomicBool) -> anyhow::Result<NbdReport> {
    let report = run(plan, interrupted)?;
    super::render::publish(&report, &plan.outputs)?;
    eprintln!("tandem: bench nbd took {:.0} s", report.wall_s);
    Ok(report)
}

/// What the run found before the first target starts.
struct Setup {
    accel: accel::AccelDecision,
    qemu: PathBuf,
    fio: PathBuf,
    qemu_nbd: Option<PathBuf>,
    guest: Option<PathBuf>,
    targets: Vec<NbdTarget>,
    jobs: Vec<FioJob>,
}

fn setup(plan: &NbdPlan) -> anyhow::Result<Setup> {
    let mut targets = plan.targets.clone();
    dedup_in_order(&mut targets);
    let mut jobs = plan.jobs.clone();
    dedup_in_order(&mut jobs);
    let accel = accel::choose(plan.vm.accel)?;
    let qemu = crate::qemu_bin::ensure_qemu()?;
    let fio = fio_with_nbd()?;
    let qemu_nbd = if targets.contains(&NbdTarget::QemuNbd) {
        Some(tool(Tool::QemuNbd, &qemu)?)
    } else {
        None
    };
    let guest = if targets.contains(&NbdTarget::Guest) {
        Some(crate::image::ensure(plan.vm.image.as_deref())?)
    } else {
        None
    };
    Ok(Setup {
        accel,
        qemu,
        fio,
        qemu_nbd,
        guest,
        targets,
        jobs,
    })
}

/// Run the bench and return the report (nothing printed on stdout).
pub fn run(plan: &NbdPlan, interrupted: &AtomicBool) -> anyhow::Result<NbdReport> {
    let started = Instant::now();
    plan.check()?;
    let s = setup(plan)?;
    let scratch = scratch_dir(plan.work_dir.as_deref())?;
    let dir = scratch.path();
    if s.targets.contains(&NbdTarget::Guest) {
        check_socket_path(&dir.join("qmp.sock"))?;
    }
    let (image_origin, image_bytes) = image_origin(plan)?;
    let images = make_images(plan, &s, dir, &image_origin, interrupted)?;
    let total = (s.targets.len() * s.jobs.len()) as u64 * u64::from(plan.repeats);
    announce(plan, &s, total);
    let durability = Durability::of(plan);
    let mut progress = Progress::new(total);
    let mut target_infos = Vec::new();
    let mut rows: Vec<NbdRow> = Vec::new();
    for &target in &s.targets {
        let image = images[&target].clone();
        let t0 = Instant::now();
        progress.start(&format!("starting {target}"));
        let mut started = match target {
            NbdTarget::Guest => start_guest(plan, &s, &image, dir, &mut progress, interrupted)?,
            NbdTarget::QemuNbd => start_anchor(&s, &image, dir, interrupted)?,
        };
        let start_s = t0.elapsed().as_secs_f64();
        progress.note(&format!(
            "{target}: serving {} after {start_s:.1} s ({})",
            started.uri, image.path
        ));
        let runs = measure(
            plan,
            &s,
            target,
            &mut started,
            dir,
            &mut progress,
            interrupted,
        )?;
        started.server.stop();
        let (text, write_ack) = durability.of_target(target, plan.fsync);
        for (job, job_runs) in s.jobs.iter().zip(runs) {
            let mut row = NbdRow::new(target, *job, job_runs);
            row.write_ack = if job.rw.writes() {
                write_ack.clone()
            } else {
                "-".into()
            };
            rows.push(row);
        }
        target_infos.push(TargetInfo {
            target,
            description: started.description,
            uri: started.uri,
            command: started.command,
            image,
            guest_ready: started.ready,
            durability: text,
            write_ack,
            start_s,
        });
    }
    progress.finish();
    let rows = order_and_ratios(rows, &s.jobs, &s.targets);
    Ok(NbdReport {
        accel: s.accel.accel,
        accel_reason: s.accel.reason.clone(),
        qemu_version: crate::qemu_bin::qemu_version(&s.qemu),
        fio_version: fio_version(&s.fio),
        machine: plan.machine,
        mem: plan.vm.mem.to_string(),
        guest_image: s.guest.as_ref().map(|g| g.display().to_string()),
        guest_nvram: guest_nvram(plan, s.targets.contains(&NbdTarget::Guest)),
        image_origin,
        image_bytes,
        cache: CACHE_MODE.into(),
        durability_comparison: durability.comparison,
        params: plan.params(),
        repeats: plan.repeats,
        jobs: s.jobs.iter().map(ToString::to_string).collect(),
        targets: target_infos,
        rows,
        wall_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

/// Where the targets' images come from, and their size.
fn image_origin(plan: &NbdPlan) -> anyhow::Result<(String, u64)> {
    let (origin, bytes) = match &plan.disk {
        Some(p) => {
            let info = image_info(p, "given")?;
            (format!("copy of {}", info.path), info.bytes)
        }
        None => (
            "qemu-img create -f raw -o preallocation=full (zeros written to every block)"
                .to_string(),
            plan.disk_size.bytes(),
        ),
    };
    if let Some(span) = plan.span
        && span.bytes() > bytes
    {
        bail!("--span {span} is larger than the image ({bytes} bytes)");
    }
    Ok((origin, bytes))
}

/// One image per target, same content: copies of `--disk`, or fresh preallocated ones.
fn make_images(
    plan: &NbdPlan,
    s: &Setup,
    dir: &Path,
    origin: &str,
    interrupted: &AtomicBool,
) -> anyhow::Result<BTreeMap<NbdTarget, ImageInfo>> {
    let qemu_img = Tool::QemuImg.find(&s.qemu);
    let mut images = BTreeMap::new();
    for &t in &s.targets {
        let path = dir.join(format!("{t}.raw"));
        match &plan.disk {
            Some(src) => {
                eprintln!(
                    "tandem: copying {} to {} ({t})",
                    src.display(),
                    path.display()
                );
                std::fs::copy(src, &path)
                    .with_context(|| format!("copying {} to {}", src.display(), path.display()))?;
            }
            None => {
                let qemu_img = qemu_img
                    .as_deref()
                    .with_context(|| Tool::QemuImg.missing())?;
                eprintln!(
                    "tandem: creating {} ({}, preallocation=full) for {t}",
                    path.display(),
                    plan.disk_size
                );
                create_preallocated(qemu_img, &path, plan.disk_size)?;
            }
        }
        check_interrupted(interrupted)?;
        images.insert(t, image_info(&path, origin)?);
    }
    Ok(images)
}

/// Say on stderr what the bench is about to do.
fn announce(plan: &NbdPlan, s: &Setup, total: u64) {
    let per_run = u64::from(plan.time + plan.ramp);
    eprintln!(
        "tandem: {total} fio runs: targets {}, {} job(s) x {} repeat(s), {} s each{} \
         (about {} s of I/O; guest on {} {}, -m {})",
        s.targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(","),
        s.jobs.len(),
        plan.repeats,
        plan.time,
        if plan.ramp > 0 {
            format!(" + {} s ramp", plan.ramp)
        } else {
            String::new()
        },
        total * per_run,
        plan.machine,
        s.accel,
        plan.vm.mem
    );
}

/// The guest's NVRAM region, in words.
fn guest_nvram(plan: &NbdPlan, wants_guest: bool) -> String {
    if !wants_guest {
        "-".to_string()
    } else if plan.no_nvram {
        "none (--no-nvram)".to_string()
    } else if plan.machine == Machine::Microvm {
        "none (microvm has no PCI for ivshmem-plain)".to_string()
    } else {
        format!("{} ivshmem-plain over a fresh file", plan.nvram_size)
    }
}

/// When each target acknowledges a write, and whether the two are alike.
struct Durability {
    guest_ack: String,
    guest_text: String,
    guest_nvlog: bool,
    comparison: String,
}

impl Durability {
    fn of(plan: &NbdPlan) -> Durability {
        let guest_has_nvram = !plan.no_nvram && plan.machine != Machine::Microvm;
        let (guest_ack, guest_text) = guest_durability(plan.vm.cmdline.as_deref(), guest_has_nvram);
        let guest_nvlog = guest_text.contains("durability=nvlog");
        let comparison = match (plan.fsync, guest_nvlog) {
            (0, _) => "not like with like: the guest acknowledges a write once it is in its log, \
                       qemu-nbd once its O_DIRECT write returned; neither flushes the host disk \
                       (--fsync 1 makes both flush every write)"
                .to_string(),
            (n, false) => format!(
                "like with like: fio sends a FLUSH after every {n} write(s), and both targets \
                 return it only once the data is on the image and the host disk was flushed"
            ),
            (n, true) => format!(
                "not like with like: fio sends a FLUSH after every {n} write(s); qemu-nbd returns \
                 it after fdatasync, the guest (durability=nvlog) once the data is in its NVRAM log"
            ),
        };
        Durability {
            guest_ack,
            guest_text,
            guest_nvlog,
            comparison,
        }
    }

    /// `target`'s sentence and its `write ack` label (FLUSH added with `--fsync`).
    fn of_target(&self, target: NbdTarget, fsync: u32) -> (String, String) {
        let with_flush = |ack: &str, flush: &str| {
            if fsync > 0 {
                format!("{ack} + FLUSH/{fsync}: {flush}")
            } else {
                ack.to_string()
            }
        };
        match target {
            NbdTarget::Guest => (
                self.guest_text.clone(),
                with_flush(
                    &self.guest_ack,
                    if self.guest_nvlog {
                        "NVRAM log"
                    } else {
                        "disk"
                    },
                ),
            ),
            NbdTarget::QemuNbd => (
                ANCHOR_DURABILITY.to_string(),
                with_flush("O_DIRECT write", "fdatasync"),
            ),
        }
    }
}

/// A target that serves: its server, where, how it was started.
struct Started {
    server: Server,
    uri: String,
    command: String,
    description: String,
    ready: Option<BTreeMap<String, String>>,
    /// The guest's management port on the host, and its key.
    mgmt: Option<(u16, crate::mgmt::Key)>,
}

/// Boot the guest as `tandem run` does, with a forward to its NBD port (and its management
/// port, with a fresh key, unless its words turn that off).
fn start_guest(
    plan: &NbdPlan,
    s: &Setup,
    image: &ImageInfo,
    dir: &Path,
    progress: &mut Progress,
    interrupted: &AtomicBool,
) -> anyhow::Result<Started> {
    let port = free_port()?;
    let guest_port = guest_nbd_port(plan.vm.cmdline.as_deref());
    let mut nic = Nic::user().forward(port, guest_port);
    let mut words = plan.vm.cmdline.clone();
    let mut mgmt = None;
    if let Some(guest_mgmt) = guest_mgmt_port(plan.vm.cmdline.as_deref()) {
        let host_mgmt = free_port()?;
        nic = nic.forward(host_mgmt, guest_mgmt);
        let key = crate::mgmt::generate_key()?;
        // The channel on the user network's only NIC (host-only), with a fresh key; the
        // guest's own words after it.
        let own = words.take().unwrap_or_default();
        words = Some(format!("{} {own}", crate::mgmt::cmdline_words(&key, false)));
        mgmt = Some((host_mgmt, key));
    }
    let mut cmd = QemuCommand::new(&s.qemu)
        .name("tandem-bench-nbd")
        .machine(plan.machine)
        .accel(s.accel.accel)
        .memory(plan.vm.mem)
        .smp(plan.vm.smp)
        .kernel(s.guest.as_ref().expect("guest image found"))
        .qmp_socket(dir.join("qmp.sock"))
        .no_reboot(true)
        .disk(
            Disk::new(&image.path)
                .with_format(DiskFormat::Raw)
                .aio(Aio::Native)
                .cache_direct(true),
        )
        .nic(nic);
    if plan.machine == Machine::Microvm {
        cmd = cmd.microvm_acpi(false);
    }
    if !plan.no_nvram {
        let nv = crate::state::ensure_nvram(&dir.join("nvram.bin"), plan.nvram_size)?;
        cmd = cmd.shared_region(SharedRegion::new(nv.path, nv.size));
    }
    for note in cmd.notes() {
        progress.note(&format!("note: {note}"));
    }
    if let Some(words) = &words {
        cmd = cmd.cmdline(words.trim_end());
    }
    let vm = boot_until_export(
        &cmd,
        EXPORT,
        &dir.join("guest-console.log"),
        Duration::from_secs(plan.boot_timeout),
        interrupted,
    )?;
    let blk = match plan.machine {
        Machine::Q35 => "virtio-blk-pci",
        Machine::Microvm => "virtio-blk-device",
    };
    Ok(Started {
        ready: vm.ready().map(|r| r.fields.clone()),
        server: Server::Guest(Box::new(vm)),
        uri: format!("nbd://127.0.0.1:{port}/{EXPORT}"),
        command: cmd.to_string(),
        description: format!(
            "unikernel NBD service, {} {}, -m {}; {blk} on a file node aio=native \
             cache.direct=on; user networking 127.0.0.1:{port} -> guest :{guest_port}",
            plan.machine, s.accel.accel, plan.vm.mem
        ),
        mgmt,
    })
}

/// Start qemu-nbd (cache=none, aio=native) on the anchor's image.
fn start_anchor(
    s: &Setup,
    image: &ImageInfo,
    dir: &Path,
    interrupted: &AtomicBool,
) -> anyhow::Result<Started> {
    let port = free_port()?;
    let program = s.qemu_nbd.as_ref().expect("qemu-nbd found");
    let cmd = NbdServerCommand::new(program, &image.path, EXPORT, port)
        .cache_none(true)
        .aio(Aio::Native);
    let server = start_qemu_nbd(&cmd, &dir.join("qemu-nbd.log"), interrupted)?;
    Ok(Started {
        server: Server::Anchor(server),
        uri: format!("nbd://127.0.0.1:{port}/{EXPORT}"),
        command: cmd.to_string(),
        description: "qemu-nbd on the host, cache=none aio=native".to_string(),
        ready: None,
        mgmt: None,
    })
}

/// Start `qemu-nbd` and wait (bounded) until it accepts TCP connections on its port (a bare
/// connect, no handshake: qemu-nbd logs the dropped client and goes on). Its output goes to
/// `log`.
pub fn start_qemu_nbd(
    cmd: &NbdServerCommand,
    log: &Path,
    interrupted: &AtomicBool,
) -> anyhow::Result<Daemon> {
    let spec = DaemonSpec::new(
        "qemu-nbd",
        cmd.to_command(),
        cmd,
        log,
        Ready::Listening((cmd.bind, cmd.port).into()),
    );
    Daemon::start(spec, Some(interrupted))
}

/// Every repeat of every job against one started target: runs[job].
fn measure(
    plan: &NbdPlan,
    s: &Setup,
    target: NbdTarget,
    started: &mut Started,
    dir: &Path,
    progress: &mut Progress,
    interrupted: &AtomicBool,
) -> anyhow::Result<Vec<Vec<FioRun>>> {
    let params = plan.params();
    let fio_timeout = Duration::from_secs(u64::from(plan.time + plan.ramp)) + FIO_SLACK;
    let mut runs: Vec<Vec<FioRun>> = vec![Vec::new(); s.jobs.len()];
    for repeat in 1..=plan.repeats {
        for (i, job) in s.jobs.iter().enumerate() {
            let what = format!("{target} {} run {repeat}/{}", job.label(), plan.repeats);
            progress.start(&what);
            let name = format!("{target}-{}-{}-qd{}", job.rw, job.bs, job.qd);
            let mut fio_args = job.fio_args(&name, &started.uri, &params);
            let out = dir.join("fio.json");
            fio_args.push(format!("--output={}", out.display()));
            let before = match &started.mgmt {
                Some((p, key)) => Some(guest_status(*p, key).with_context(|| what.clone())?),
                None => None,
            };
            let fio = FioCall {
                fio: &s.fio,
                args: &fio_args,
                out: &out,
                log: &dir.join("fio.log"),
                timeout: fio_timeout,
            };
            let (result, fio_job) =
                run_fio(&fio, interrupted, &mut started.server).with_context(|| what.clone())?;
            let guest_copies = copies(&started.mgmt, before, &what, progress)?;
            progress.finish_one(&what, &summary_line(&result, guest_copies.as_ref()));
            runs[i].push(FioRun {
                repeat,
                result,
                guest_copies,
                fio: fio_job,
            });
        }
    }
    Ok(runs)
}

/// What the guest copied during a run, from its counters before and now (`None` without a
/// management port, or when the guest restarted meanwhile).
fn copies(
    mgmt: &Option<(u16, crate::mgmt::Key)>,
    before: Option<Status>,
    what: &str,
    progress: &Progress,
) -> anyhow::Result<Option<GuestCopies>> {
    let (Some((p, key)), Some(before)) = (mgmt, before) else {
        return Ok(None);
    };
    let after = guest_status(*p, key).with_context(|| what.to_string())?;
    if after.restarts != before.restarts {
        progress.note(&format!(
            "{what}: the guest restarted during the run; no copy counts"
        ));
        return Ok(None);
    }
    Ok(Some(GuestCopies::between(&before, &after)))
}

/// One run's progress line.
fn summary_line(result: &FioResult, copies: Option<&GuestCopies>) -> String {
    format!(
        "{:.0} IOPS, {:.1} MB/s, clat p50 {:.0} us, p99 {:.0} us{}",
        result.iops,
        result.mbps,
        result.clat_us.p50,
        result.clat_us.p99,
        match copies.and_then(|c| c.copies_per_request) {
            Some(c) => format!(", {c:.2} copies/req"),
            None => String::new(),
        }
    )
}

/// Rows in table order (job-major, targets in `targets` order) with the guest/anchor ratio
/// filled in on guest rows.
pub fn order_and_ratios(rows: Vec<NbdRow>, jobs: &[FioJob], targets: &[NbdTarget]) -> Vec<NbdRow> {
    let median = |t: NbdTarget, j: FioJob| {
        rows.iter()
            .find(|r| r.target == t && r.fio_job() == j)
            .map(|r| r.iops.median)
    };
    let mut ratios = Vec::new();
    for r in &rows {
        ratios.push(if r.target == NbdTarget::Guest {
            median(NbdTarget::QemuNbd, r.fio_job())
                .filter(|a| *a > 0.0)
                .map(|a| r.iops.median / a)
        } else {
            None
        });
    }
    let mut rows: Vec<NbdRow> = rows
        .into_iter()
        .zip(ratios)
        .map(|(mut r, ratio)| {
            r.ratio_guest_over_anchor = ratio;
            r
        })
        .collect();
    let key = |r: &NbdRow| {
        (
            jobs.iter()
                .position(|j| *j == r.fio_job())
                .unwrap_or(usize::MAX),
            targets
                .iter()
                .position(|t| *t == r.target)
                .unwrap_or(usize::MAX),
        )
    };
    rows.sort_by_key(key);
    rows
}

/// A running NBD server under test.
enum Server {
    /// The guest (boxed: a `Vm` is large).
    Guest(Box<Vm>),
    /// `qemu-nbd`.
    Anchor(Daemon),
}

impl Server {
    /// Wait up to `wait` (this is the bench's sleep while fio runs); `Err` when the server
    /// has died, saying how.
    fn watch(&mut self, wait: Duration) -> Result<(), String> {
        match self {
            Server::Guest(vm) => match vm.poll(wait) {
                Poll::Exited(exit) => Err(format!("QEMU exited ({exit})")),
                _ => Ok(()),
            },
            Server::Anchor(nbd) => {
                std::thread::sleep(wait);
                match nbd.try_exit() {
                    Some(status) => Err(format!("qemu-nbd exited ({status})")),
                    None => Ok(()),
                }
            }
        }
    }

    /// The server's recent output, for error messages.
    fn context(&self) -> String {
        match self {
            Server::Guest(vm) => vm.context(),
            Server::Anchor(nbd) => format!("--- qemu-nbd log ---\n{}", nbd.log_text()),
        }
    }

    fn stop(&mut self) {
        match self {
            Server::Guest(vm) => {
                vm.stop(STOP_GRACE);
            }
            Server::Anchor(nbd) => {
                nbd.stop();
            }
        }
    }
}

/// One fio process: its arguments, its JSON output file and its log.
#[derive(Clone, Copy)]
struct FioCall<'a> {
    fio: &'a Path,
    args: &'a [String],
    out: &'a Path,
    log: &'a Path,
    timeout: Duration,
}

/// Run one fio job to its end while watching the server; returns the parsed result.
fn run_fio(
    call: &FioCall,
    interrupted: &AtomicBool,
    server: &mut Server,
) -> anyhow::Result<(FioResult, serde_json::Value)> {
    let FioCall {
        fio,
        args: fio_args,
        out,
        log,
        timeout,
    } = *call;
    let _ = std::fs::remove_file(out);
    let log_file = File::create(log).with_context(|| log.display().to_string())?;
    let line = std::iter::once(fio.display().to_string())
        .chain(fio_args.iter().cloned())
        .map(|a| crate::builder::shell_quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = std::process::Command::new(fio)
        .args(fio_args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        // Own process group: a terminal's Ctrl-C reaches tandem, which stops fio in order.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {line}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let stop = |child: &mut Child| {
            let _ = child.kill();
            let _ = child.wait();
        };
        if let Err(e) = check_interrupted(interrupted) {
            stop(&mut child);
            return Err(e);
        }
        if Instant::now() >= deadline {
            stop(&mut child);
            bail!(
                "fio did not finish within {timeout:?}\ncommand: {line}\n{}",
                server.context()
            );
        }
        if let Err(why) = server.watch(Duration::from_millis(50)) {
            // Give fio a moment to notice the lost connection and report it.
            std::thread::sleep(Duration::from_millis(200));
            stop(&mut child);
            bail!(
                "the server died during the job: {why}\nfio: {}\ncommand: {line}\n{}",
                std::fs::read_to_string(log).unwrap_or_default().trim(),
                server.context()
            );
        }
    };
    let fio_log = std::fs::read_to_string(log).unwrap_or_default();
    if !status.success() {
        bail!(
            "fio failed ({status}): {}\ncommand: {line}\n{}",
            fio_log.trim(),
            server.context()
        );
    }
    let text = std::fs::read_to_string(out)
        .with_context(|| format!("fio wrote no {}: {}", out.display(), fio_log.trim()))?;
    parse_fio_json(&text).with_context(|| format!("command: {line}\nfio: {}", fio_log.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::render::nbd as render;

    #[test]
    fn jobs_parse_and_print() {
        let j: FioJob = "randread:4k:16".parse().unwrap();
        assert_eq!(
            j,
            FioJob {
                rw: RwMode::RANDREAD,
                bs: BlockSize(4096),
                qd: 16
            }
        );
        assert_eq!(j.to_string(), "randread:4k:16");
        assert_eq!(j.label(), "randread 4k qd16");
        assert_eq!(
            "WRITE:1M:4".parse::<FioJob>().unwrap().to_string(),
            "write:1M:4"
        );
        for bad in [
            "",
            "randread",
            "randread:4k",
            "randread:4k:0",
            "randread:4k:2000",
            "randread:4k:1:x",
            "scan:4k:1",
            "read:100:1",
            "read:4k:x",
        ] {
            assert!(bad.parse::<FioJob>().is_err(), "{bad}");
        }
        let defaults: Vec<FioJob> = DEFAULT_JOBS
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(defaults.len(), 6);
    }

    #[test]
    fn fio_arguments() {
        let j: FioJob = "randwrite:4k:16".parse().unwrap();
        let p = RunParams {
            time_s: 5,
            ramp_s: 0,
            span_bytes: None,
            fsync: 0,
        };
        assert_eq!(
            j.fio_args("guest-randwrite", "nbd://127.0.0.1:1234/blk0", &p),
            [
                "--name=guest-randwrite",
                "--ioengine=nbd",
                "--uri=nbd://127.0.0.1:1234/blk0",
                "--rw=randwrite",
                "--bs=4096",
                "--iodepth=16",
                "--time_based=1",
                "--runtime=5",
                "--unified_rw_reporting=mixed",
                "--output-format=json",
            ]
        );
        let p = RunParams {
            time_s: 1,
            ramp_s: 2,
            span_bytes: Some(64 << 20),
            fsync: 1,
        };
        let a = j.fio_args("x", "u", &p);
        assert!(a.contains(&"--ramp_time=2".to_string()));
        assert!(a.contains(&format!("--size={}", 64 << 20)));
        assert!(a.contains(&"--fsync=1".to_string()));
    }

    #[test]
    fn durability_labels() {
        let (ack, text) = guest_durability(None, true);
        assert_eq!(ack, "NVRAM log");
        assert!(
            text.contains("durability=disk") && text.contains("NVRAM log"),
            "{text}"
        );
        let (ack, text) = guest_durability(Some("durability=nvlog"), true);
        assert_eq!(ack, "NVRAM log");
        assert!(text.contains("durability=nvlog"), "{text}");
        let (ack, text) = guest_durability(Some("durability=nvlog"), false);
        assert_eq!(ack, "RAM log", "without NVRAM the guest falls back to disk");
        assert!(text.contains("durability=disk"), "{text}");
        assert!(ANCHOR_DURABILITY.contains("O_DIRECT"));
    }

    #[test]
    fn copies_from_status_lines() {
        let before = Status::parse(
            "ok restarts=0 requests=10 heap_used=1 nbd_read_bytes=4096 nbd_write_bytes=0 \
             copy_frame_to_socket=100 copy_socket_to_app=100 copy_app_to_socket=4116 \
             copy_socket_to_frame=4116",
        )
        .unwrap();
        // 100 reads of 4 KiB: 16-byte reply headers... as the guest would count them.
        let mut after = before;
        after.requests += 100;
        after.data.nbd_read_bytes += 100 * 4096;
        after.data.copy_frame_to_socket += 100 * 28;
        after.data.copy_socket_to_app += 100 * 28;
        after.data.copy_app_to_socket += 100 * (4096 + 16);
        after.data.copy_socket_to_frame += 100 * (4096 + 16);
        let c = GuestCopies::between(&before, &after);
        assert_eq!((c.requests, c.payload_bytes), (100, 409_600));
        assert_eq!(c.copied_bytes, 100 * (2 * 28 + 2 * 4112));
        let per = c.copies_per_request.unwrap();
        assert!((per - 2.0215).abs() < 1e-3, "{per}");
        let both = GuestCopies::sum([&c, &c]).unwrap();
        assert_eq!(both.copied_bytes, 2 * c.copied_bytes);
        assert_eq!(both.copies_per_request, c.copies_per_request);
        assert_eq!(GuestCopies::sum([]), None);
        // Nothing served: no ratio rather than a made-up one.
        assert_eq!(
            GuestCopies::between(&before, &before).copies_per_request,
            None
        );
    }

    /// Trimmed from real fio 3.33 output (`--unified_rw_reporting=mixed`), with the nbd
    /// engine's line in front as it prints it.
    const FIO_MIXED: &str = r#"fio: connected to NBD server
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "j",
      "error" : 0,
      "job_runtime" : 1043,
      "mixed" : {
        "io_bytes" : 42172416,
        "bw_bytes" : 41387647,
        "iops" : 10104.40613,
        "total_ios" : 10296,
        "clat_ns" : {
          "min" : 100, "max" : 9000000, "mean" : 390000.5,
          "percentile" : {
            "1.000000" : 100000,
            "50.000000" : 301056,
            "99.000000" : 1515520,
            "99.900000" : 4423680
          }
        },
        "lat_ns" : { "min" : 120, "max" : 9000100, "mean" : 395000.0 }
      }
    }
  ]
}
"#;

    #[test]
    fn parses_fio_json() {
        let (r, job) = parse_fio_json(FIO_MIXED).unwrap();
        assert_eq!(r.iops, 10104.40613);
        assert!((r.mbps - 41.387647).abs() < 1e-9);
        assert_eq!(r.clat_us.p50, 301.056);
        assert_eq!(r.clat_us.p99, 1515.52);
        assert_eq!(r.clat_us.p999, 4423.68);
        assert_eq!(r.clat_us.max, 9000.0);
        assert_eq!(r.lat_mean_us, 395.0);
        assert_eq!((r.io_bytes, r.runtime_ms), (42172416, 1043));
        assert_eq!(job["jobname"], "j");
        // Plain JSON (no line in front) parses too.
        let plain = FIO_MIXED.split_once('\n').unwrap().1;
        assert_eq!(parse_fio_json(plain).unwrap().0, r);
    }

    #[test]
    fn fio_read_write_sections_and_errors() {
        let split = r#"{"jobs":[{"jobname":"rw","error":0,"job_runtime":1000,
            "read":{"io_bytes":4096,"bw_bytes":4096,"iops":1,"total_ios":1,
                    "clat_ns":{"max":5000,"percentile":{"50.000000":1000}},"lat_ns":{"mean":1000}},
            "write":{"io_bytes":8192,"bw_bytes":8192,"iops":2,"total_ios":2,
                    "clat_ns":{"max":7000,"percentile":{"50.000000":3000}},"lat_ns":{"mean":3000}}}]}"#;
        let (r, _) = parse_fio_json(split).unwrap();
        assert_eq!(r.iops, 3.0);
        assert_eq!(r.io_bytes, 12288);
        // Latency from the busier direction.
        assert_eq!(r.clat_us.p50, 3.0);
        let err = parse_fio_json(r#"{"jobs":[{"jobname":"e","error":5}]}"#).unwrap_err();
        assert!(err.to_string().contains("error 5"), "{err}");
        assert!(parse_fio_json(r#"{"jobs":[]}"#).is_err());
        assert!(parse_fio_json("fio: nbd_connect_uri: failed\n").is_err());
        let idle = r#"{"jobs":[{"jobname":"i","error":0,"mixed":{"io_bytes":0,"iops":0}}]}"#;
        assert!(parse_fio_json(idle)
            .unwrap_err()
            .to_string()
            .contains("no throughput"));
    }

    fn row(target: NbdTarget, job: &str, iops: &[f64]) -> NbdRow {
        let runs = iops
            .iter()
            .enumerate()
            .map(|(i, &v)| FioRun {
                repeat: i as u32 + 1,
                result: FioResult {
                    iops: v,
                    mbps: v * 4096.0 / 1e6,
                    ..FioResult::default()
                },
                guest_copies: (target == NbdTarget::Guest).then(|| GuestCopies {
                    requests: 10,
                    payload_bytes: 40960,
                    frame_to_socket: 40960,
                    socket_to_app: 40960,
                    copied_bytes: 81920,
                    copies_per_request: Some(2.0),
                    ..GuestCopies::default()
                }),
                fio: serde_json::Value::Null,
            })
            .collect();
        NbdRow::new(target, job.parse().unwrap(), runs)
    }

    fn report(rows: Vec<NbdRow>, targets: &[NbdTarget]) -> NbdReport {
        let image = ImageInfo {
            path: "/w/x.raw".into(),
            bytes: 1 << 30,
            allocated_bytes: 1 << 30,
            origin: "test".into(),
        };
        NbdReport {
            accel: accel::Accel::Tcg,
            accel_reason: "test".into(),
            qemu_version: None,
            fio_version: None,
            machine: Machine::Q35,
            mem: "64M".into(),
            guest_image: None,
            guest_nvram: "64M ivshmem-plain over a fresh file".into(),
            image_origin: "test".into(),
            image_bytes: 1 << 30,
            cache: CACHE_MODE.into(),
            durability_comparison: "not like with like".into(),
            params: RunParams {
                time_s: 5,
                ramp_s: 0,
                span_bytes: None,
                fsync: 0,
            },
            repeats: 3,
            jobs: vec![],
            targets: targets
                .iter()
                .map(|&t| TargetInfo {
                    target: t,
                    description: format!("{t} server"),
                    uri: "nbd://127.0.0.1:1/blk0".into(),
                    command: String::new(),
                    image: image.clone(),
                    guest_ready: None,
                    durability: format!("{t} durability"),
                    write_ack: format!("{t} ack"),
                    start_s: 0.0,
                })
                .collect(),
            rows,
            wall_s: 0.0,
        }
    }

    #[test]
    fn ratios_order_table_and_chart() {
        let jobs: Vec<FioJob> = ["randread:4k:1", "write:1M:4"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let targets = [NbdTarget::Guest, NbdTarget::QemuNbd];
        // Target-major as the bench collects them.
        let rows = vec![
            row(NbdTarget::Guest, "randread:4k:1", &[100.0, 300.0, 200.0]),
            row(NbdTarget::Guest, "write:1M:4", &[10.0, 10.0, 10.0]),
            row(NbdTarget::QemuNbd, "randread:4k:1", &[800.0, 800.0, 800.0]),
            row(NbdTarget::QemuNbd, "write:1M:4", &[40.0, 40.0, 40.0]),
        ];
        let rows = order_and_ratios(rows, &jobs, &targets);
        let order: Vec<(NbdTarget, String)> =
            rows.iter().map(|r| (r.target, r.job.clone())).collect();
        assert_eq!(
            order,
            [
                (NbdTarget::Guest, "randread:4k:1".to_string()),
                (NbdTarget::QemuNbd, "randread:4k:1".to_string()),
                (NbdTarget::Guest, "write:1M:4".to_string()),
                (NbdTarget::QemuNbd, "write:1M:4".to_string()),
            ]
        );
        assert_eq!(rows[0].iops.median, 200.0);
        assert_eq!(rows[0].ratio_guest_over_anchor, Some(0.25));
        assert_eq!(rows[1].ratio_guest_over_anchor, None);
        assert_eq!(rows[2].ratio_guest_over_anchor, Some(0.25));

        let r = report(rows, &targets);
        let text = render::table(&r);
        assert!(text.contains("guest/anchor"), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("randread 4k qd1") && l.contains("guest"))
            .unwrap();
        assert!(line.contains(" 0.25 "), "{line}");
        assert!(line.contains("200"), "{line}");
        assert!(line.contains(" 2.00"), "guest copies per request: {line}");
        let anchor = text
            .lines()
            .find(|l| l.starts_with("randread 4k qd1") && l.contains("qemu-nbd"))
            .unwrap();
        assert!(anchor.contains("n/a (host)"), "{anchor}");
        assert!(text.contains("guest durability") && text.contains("qemu-nbd durability"));
        assert!(text.contains("not like with like"), "{text}");
        let svg = render::chart(&r).render();
        assert!(svg.contains("randread 4k qd1"));
        assert!(svg.contains("(0.25x)"));
        assert!(
            svg.contains(">guest<") && svg.contains(">qemu-nbd<"),
            "{svg}"
        );
        // JSON carries the fields the integration test reads.
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["rows"][0]["target"], "guest");
        assert_eq!(j["rows"][0]["rw"], "randread");
        assert_eq!(j["rows"][0]["bs"], 4096);
        assert_eq!(j["rows"][0]["job"], "randread:4k:1");
        assert_eq!(j["rows"][0]["iops"]["median"], 200.0);
        assert_eq!(j["rows"][0]["guest_copies"]["copies_per_request"], 2.0);
        assert_eq!(j["rows"][0]["guest_copies"]["copied_bytes"], 3 * 81920);
        assert!(
            j["rows"][1]["guest_copies"].is_null(),
            "the anchor is not measured"
        );
        assert_eq!(j["targets"][1]["durability"], "qemu-nbd durability");
        assert_eq!(j["durability_comparison"], "not like with like");

        // One target: no ratio anywhere.
        let only = order_and_ratios(
            vec![row(NbdTarget::Guest, "randread:4k:1", &[5.0])],
            &jobs,
            &[NbdTarget::Guest],
        );
        assert_eq!(only[0].ratio_guest_over_anchor, None);
    }
}
