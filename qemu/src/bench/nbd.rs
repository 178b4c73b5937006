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
use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tandem_formats::mgmt_status::{DataPath, Status};

use super::blk::{create_preallocated, image_info, ratio, si, ImageInfo, Interrupted, Latency};
use super::blk::{BlockSize, RwMode};
use super::{Align, Bar, BarChart, BarGroup, Progress, Summary, Table};
use crate::accel;
use crate::builder::{
    Aio, Disk, DiskFormat, Machine, NbdServerCommand, Nic, QemuCommand, SharedRegion,
};
use crate::cli::BenchNbdArgs;
use crate::console::ConsoleEvent;
use crate::run::{GUEST_MGMT_PORT, GUEST_NBD_PORT, STOP_GRACE};
use crate::state::MAX_SOCKET_PATH;
use crate::vm::{Poll, SpawnOptions, Vm};

/// The default `--jobs`.
pub const DEFAULT_JOBS: &str =
    "randread:4k:1,randread:4k:16,randwrite:4k:1,randwrite:4k:16,read:1M:4,write:1M:4";
/// The export every target serves (the guest names its first disk's export so).
pub const EXPORT: &str = "blk0";
/// How long `qemu-nbd` may take to listen.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long fio may run beyond its ramp and runtime (connect, setup, exit) before it is
/// killed.
pub const FIO_SLACK: Duration = Duration::from_secs(60);
/// The cache mode both targets use.
pub const CACHE_MODE: &str = "none (O_DIRECT) with aio=native on both targets";
/// When `qemu-nbd --cache=none` acknowledges a write, and what its FLUSH does.
pub const ANCHOR_DURABILITY: &str = "qemu-nbd --cache=none: a WRITE is acknowledged once its \
     O_DIRECT write to the image returned (on the host disk, possibly in its volatile cache; \
     not flushed); FLUSH runs fdatasync on the image";
/// How long one management-port query may take.
pub const MGMT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The guest's `status` through its management port at `127.0.0.1:port`.
pub fn guest_status(port: u16, key: &crate::mgmt::Key) -> anyhow::Result<Status> {
    let addr = (Ipv4Addr::LOCALHOST, port).into();
    let line = crate::mgmt::command(addr, key, "status", MGMT_TIMEOUT)
        .with_context(|| format!("reading the guest's status from {addr}"))?;
    Status::parse(&line).map_err(|e| anyhow::anyhow!("{e}: {:?}", line.trim()))
}

/// When the guest acknowledges a write and what FLUSH/FUA wait for, from its command-line
/// words and whether it has an NVRAM device: (short label, full sentence).
pub fn guest_durability(cmdline: Option<&str>, nvram: bool) -> (String, String) {
    let nvlog = cmdline
        .into_iter()
        .flat_map(str::split_whitespace)
        .filter_map(|w| w.strip_prefix("durability="))
        .next_back()
        == Some("nvlog");
    match (nvlog, nvram) {
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

    fn fio_job(&self) -> FioJob {
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

/// The whole `tandem bench nbd` report (the `--json` file).
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
pub fn bench_nbd(args: &BenchNbdArgs) -> anyhow::Result<i32> {
    if args.tls {
        return super::run_interruptible("QEMU, qemu-nbd and qemu-img were stopped", |i| {
            super::nbd_tls::run_and_report(args, i)
        });
    }
    super::run_interruptible("QEMU, qemu-nbd and fio were stopped", |interrupted| {
        run_and_report(args, interrupted)
    })
}

/// Run the bench, print the table on stdout, write `--json` and `--svg`; returns the report.
/// When `interrupted` becomes true the bench stops with [`Interrupted`].
pub fn run_and_report(args: &BenchNbdArgs, interrupted: &AtomicBool) -> anyhow::Result<NbdReport> {
    let report = run(args, interrupted)?;
    print!("{}", table(&report));
    eprintln!("tandem: bench nbd took {:.0} s", report.wall_s);
    let chart = chart(&report);
    super::write_outputs(
        &report,
        args.json.as_deref(),
        args.svg.as_deref().map(|p| (p, &chart)),
    )?;
    Ok(report)
}

fn check_args(args: &BenchNbdArgs) -> anyhow::Result<()> {
    if args.jobs.is_empty() {
        bail!("--jobs: no job given");
    }
    if args.targets.is_empty() {
        bail!("--targets: no target given");
    }
    if let Some(disk) = &args.disk {
        if DiskFormat::from_path(disk) != DiskFormat::Raw {
            bail!(
                "--disk {}: raw images only (both targets serve it as raw)",
                disk.display()
            );
        }
        if !disk.is_file() {
            bail!("--disk {} does not exist", disk.display());
        }
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (free now; the server binds it a moment later).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The guest NBD port named by `nbd.port=` in the guest command-line words, else 10809.
pub fn guest_nbd_port(cmdline: Option<&str>) -> u16 {
    cmdline
        .into_iter()
        .flat_map(str::split_whitespace)
        .filter_map(|w| w.strip_prefix("nbd.port="))
        .filter_map(|p| p.parse().ok())
        .next_back()
        .unwrap_or(GUEST_NBD_PORT)
}

/// The guest management port named by `mgmt.port=` in the guest command-line words, else
/// 10810; `None` when the words turn it off (`mgmt.port=0`).
pub fn guest_mgmt_port(cmdline: Option<&str>) -> Option<u16> {
    let port = cmdline
        .into_iter()
        .flat_map(str::split_whitespace)
        .filter_map(|w| w.strip_prefix("mgmt.port="))
        .filter_map(|p| p.parse().ok())
        .next_back()
        .unwrap_or(GUEST_MGMT_PORT);
    (port != 0).then_some(port)
}

/// Whether `rw` writes.
fn writes(rw: RwMode) -> bool {
    !matches!(rw, RwMode::Read | RwMode::Randread)
}

/// `fio --version`.
fn fio_version(fio: &Path) -> Option<String> {
    let out = std::process::Command::new(fio)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!v.is_empty()).then_some(v)
}

/// Run the bench and return the report (nothing printed on stdout).
pub fn run(args: &BenchNbdArgs, interrupted: &AtomicBool) -> anyhow::Result<NbdReport> {
    let started = Instant::now();
    check_args(args)?;
    let mut targets = args.targets.clone();
    super::blk::dedup_in_order(&mut targets);
    let mut jobs = args.jobs.clone();
    super::blk::dedup_in_order(&mut jobs);
    let wants_guest = targets.contains(&NbdTarget::Guest);
    let wants_anchor = targets.contains(&NbdTarget::QemuNbd);

    let accel = accel::choose(args.vm.accel)?;
    let qemu = crate::qemu_bin::ensure_qemu()?;
    let path_var = std::env::var_os("PATH");
    let fio = crate::qemu_bin::find_in_path("fio".as_ref(), path_var.as_deref())
        .context("fio not found; install it with: apt-get install -y fio")?;
    let enghelp = std::process::Command::new(&fio)
        .arg("--enghelp=nbd")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", fio.display()))?;
    if !enghelp.success() {
        bail!(
            "{} has no nbd ioengine (fio built without libnbd); Debian's fio package has it",
            fio.display()
        );
    }
    let qemu_nbd = if wants_anchor {
        Some(
            crate::qemu_bin::find_tool(&qemu, "qemu-nbd")
                .context("qemu-nbd not found; install it with: apt-get install -y qemu-utils")?,
        )
    } else {
        None
    };
    let guest = if wants_guest {
        Some(crate::image::ensure(args.vm.image.as_deref())?)
    } else {
        None
    };

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
    let qmp_socket = dir.join("qmp.sock");
    if wants_guest && qmp_socket.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --work-dir",
            qmp_socket.display()
        );
    }

    // One image per target, same content.
    let qemu_img = crate::qemu_bin::find_tool(&qemu, crate::qemu_bin::QEMU_IMG_NAME);
    let (image_origin, image_bytes) = match &args.disk {
        Some(p) => {
            let info = image_info(p, "given")?;
            (format!("copy of {}", info.path), info.bytes)
        }
        None => (
            "qemu-img create -f raw -o preallocation=full (zeros written to every block)"
                .to_string(),
            args.disk_size.bytes(),
        ),
    };
    if let Some(span) = args.span {
        if span.bytes() > image_bytes {
            bail!("--span {span} is larger than the image ({image_bytes} bytes)");
        }
    }
    let mut images = BTreeMap::new();
    for &t in &targets {
        let path = dir.join(format!("{t}.raw"));
        match &args.disk {
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
                let qemu_img = qemu_img.as_deref().context(
                    "qemu-img not found; install it with: apt-get install -y qemu-utils",
                )?;
                eprintln!(
                    "tandem: creating {} ({}, preallocation=full) for {t}",
                    path.display(),
                    args.disk_size
                );
                create_preallocated(qemu_img, &path, args.disk_size)?;
            }
        }
        if interrupted.load(Ordering::SeqCst) {
            return Err(Interrupted.into());
        }
        images.insert(t, image_info(&path, &image_origin)?);
    }

    let params = RunParams {
        time_s: args.time,
        ramp_s: args.ramp,
        span_bytes: args.span.map(|s| s.bytes()),
        fsync: args.fsync,
    };
    let total = (targets.len() * jobs.len()) as u64 * u64::from(args.repeats);
    let per_run = u64::from(args.time + args.ramp);
    eprintln!(
        "tandem: {total} fio runs: targets {}, {} job(s) x {} repeat(s), {} s each{} \
         (about {} s of I/O; guest on {} {}, -m {})",
        targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(","),
        jobs.len(),
        args.repeats,
        args.time,
        if args.ramp > 0 {
            format!(" + {} s ramp", args.ramp)
        } else {
            String::new()
        },
        total * per_run,
        args.machine,
        accel,
        args.vm.mem
    );

    let nvram_requested = !args.no_nvram;
    let guest_nvram = if !wants_guest {
        "-".to_string()
    } else if !nvram_requested {
        "none (--no-nvram)".to_string()
    } else if args.machine == Machine::Microvm {
        "none (microvm has no PCI for ivshmem-plain)".to_string()
    } else {
        format!("{} ivshmem-plain over a fresh file", args.nvram_size)
    };

    let guest_has_nvram = nvram_requested && args.machine != Machine::Microvm;
    let (guest_ack, guest_durability_text) =
        guest_durability(args.vm.cmdline.as_deref(), guest_has_nvram);
    let guest_nvlog = guest_durability_text.contains("durability=nvlog");
    let with_flush = |ack: &str, flush: &str| {
        if args.fsync > 0 {
            format!("{ack} + FLUSH/{}: {flush}", args.fsync)
        } else {
            ack.to_string()
        }
    };
    let durability_comparison = match (args.fsync, guest_nvlog) {
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

    let mut progress = Progress::new(total);
    let fio_timeout = Duration::from_secs(per_run) + FIO_SLACK;
    let mut target_infos = Vec::new();
    let mut rows: Vec<NbdRow> = Vec::new();
    for &target in &targets {
        let image = images[&target].clone();
        let image_path = PathBuf::from(&image.path);
        let t0 = Instant::now();
        progress.start(&format!("starting {target}"));
        let mut mgmt = None;
        let (mut server, uri, command, description, ready) = match target {
            NbdTarget::Guest => {
                let port = free_port()?;
                let guest_port = guest_nbd_port(args.vm.cmdline.as_deref());
                let mut nic = Nic::user().forward(port, guest_port);
                let mut words = args.vm.cmdline.clone();
                if let Some(guest_mgmt) = guest_mgmt_port(args.vm.cmdline.as_deref()) {
                    let host_mgmt = free_port()?;
                    nic = nic.forward(host_mgmt, guest_mgmt);
                    let key = crate::mgmt::generate_key()?;
                    // The channel on the user network's only NIC (host-only), with a fresh key;
                    // the guest's own words after it.
                    let own = words.take().unwrap_or_default();
                    words = Some(format!("{} {own}", crate::mgmt::cmdline_words(&key, false)));
                    mgmt = Some((host_mgmt, key));
                }
                let mut cmd = QemuCommand::new(&qemu)
                    .name("tandem-bench-nbd")
                    .machine(args.machine)
                    .accel(accel.accel)
                    .memory(args.vm.mem)
                    .smp(args.vm.smp)
                    .kernel(guest.as_ref().expect("guest image found"))
                    .qmp_socket(&qmp_socket)
                    .no_reboot(true)
                    .disk(
                        Disk::new(&image_path)
                            .with_format(DiskFormat::Raw)
                            .aio(Aio::Native)
                            .cache_direct(true),
                    )
                    .nic(nic);
                if args.machine == Machine::Microvm {
                    cmd = cmd.microvm_acpi(false);
                }
                if nvram_requested {
                    let nv = crate::state::ensure_nvram(&dir.join("nvram.bin"), args.nvram_size)?;
                    cmd = cmd.shared_region(SharedRegion::new(nv.path, nv.size));
                }
                for note in cmd.notes() {
                    progress.note(&format!("note: {note}"));
                }
                if let Some(words) = &words {
                    cmd = cmd.cmdline(words.trim_end());
                }
                let vm = boot_guest(
                    &cmd,
                    &dir.join("guest-console.log"),
                    Duration::from_secs(args.boot_timeout),
                    interrupted,
                )?;
                let ready = vm.ready().map(|r| r.fields.clone());
                let blk = match args.machine {
                    Machine::Q35 => "virtio-blk-pci",
                    Machine::Microvm => "virtio-blk-device",
                };
                let description = format!(
                    "unikernel NBD service, {} {}, -m {}; {blk} on a file node aio=native \
                     cache.direct=on; user networking 127.0.0.1:{port} -> guest :{guest_port}",
                    args.machine, accel.accel, args.vm.mem
                );
                (
                    Server::Guest(Box::new(vm)),
                    format!("nbd://127.0.0.1:{port}/{EXPORT}"),
                    cmd.to_string(),
                    description,
                    ready,
                )
            }
            NbdTarget::QemuNbd => {
                let port = free_port()?;
                let cmd = NbdServerCommand::new(
                    qemu_nbd.as_ref().expect("qemu-nbd found"),
                    &image_path,
                    EXPORT,
                    port,
                )
                .cache_none(true)
                .aio(Aio::Native);
                let server = QemuNbd::start(&cmd, &dir.join("qemu-nbd.log"), interrupted)?;
                (
                    Server::Anchor(server),
                    format!("nbd://127.0.0.1:{port}/{EXPORT}"),
                    cmd.to_string(),
                    "qemu-nbd on the host, cache=none aio=native".to_string(),
                    None,
                )
            }
        };
        let start_s = t0.elapsed().as_secs_f64();
        progress.note(&format!(
            "{target}: serving {uri} after {start_s:.1} s ({})",
            image.path
        ));

        let mut runs: Vec<Vec<FioRun>> = vec![Vec::new(); jobs.len()];
        for repeat in 1..=args.repeats {
            for (i, job) in jobs.iter().enumerate() {
                let what = format!("{target} {} run {repeat}/{}", job.label(), args.repeats);
                progress.start(&what);
                let name = format!("{target}-{}-{}-qd{}", job.rw, job.bs, job.qd);
                let mut fio_args = job.fio_args(&name, &uri, &params);
                let out = dir.join("fio.json");
                fio_args.push(format!("--output={}", out.display()));
                let before = match &mgmt {
                    Some((p, key)) => Some(guest_status(*p, key).with_context(|| what.clone())?),
                    None => None,
                };
                let (result, fio_job) = run_fio(
                    &fio,
                    &fio_args,
                    &out,
                    &dir.join("fio.log"),
                    fio_timeout,
                    interrupted,
                    &mut server,
                )
                .with_context(|| what.clone())?;
                let guest_copies = match (&mgmt, before) {
                    (Some((p, key)), Some(before)) => {
                        let after = guest_status(*p, key).with_context(|| what.clone())?;
                        if after.restarts != before.restarts {
                            progress.note(&format!(
                                "{what}: the guest restarted during the run; no copy counts"
                            ));
                            None
                        } else {
                            Some(GuestCopies::between(&before, &after))
                        }
                    }
                    _ => None,
                };
                progress.finish_one(
                    &what,
                    &format!(
                        "{:.0} IOPS, {:.1} MB/s, clat p50 {:.0} us, p99 {:.0} us{}",
                        result.iops,
                        result.mbps,
                        result.clat_us.p50,
                        result.clat_us.p99,
                        match guest_copies.and_then(|c| c.copies_per_request) {
                            Some(c) => format!(", {c:.2} copies/req"),
                            None => String::new(),
                        }
                    ),
                );
                runs[i].push(FioRun {
                    repeat,
                    result,
                    guest_copies,
                    fio: fio_job,
                });
            }
        }
        server.stop();
        let (durability, write_ack) = match target {
            NbdTarget::Guest => (
                guest_durability_text.clone(),
                with_flush(&guest_ack, if guest_nvlog { "NVRAM log" } else { "disk" }),
            ),
            NbdTarget::QemuNbd => (
                ANCHOR_DURABILITY.to_string(),
                with_flush("O_DIRECT write", "fdatasync"),
            ),
        };
        for (job, job_runs) in jobs.iter().zip(runs) {
            let mut row = NbdRow::new(target, *job, job_runs);
            row.write_ack = if writes(job.rw) {
                write_ack.clone()
            } else {
                "-".into()
            };
            rows.push(row);
        }
        target_infos.push(TargetInfo {
            target,
            description,
            uri,
            command,
            image,
            guest_ready: ready,
            durability,
            write_ack,
            start_s,
        });
    }
    progress.finish();
    let rows = order_and_ratios(rows, &jobs, &targets);

    Ok(NbdReport {
        accel: accel.accel,
        accel_reason: accel.reason.clone(),
        qemu_version: crate::qemu_bin::qemu_version(&qemu),
        fio_version: fio_version(&fio),
        machine: args.machine,
        mem: args.vm.mem.to_string(),
        guest_image: guest.map(|g| g.display().to_string()),
        guest_nvram,
        image_origin,
        image_bytes,
        cache: CACHE_MODE.into(),
        durability_comparison,
        params,
        repeats: args.repeats,
        jobs: jobs.iter().map(ToString::to_string).collect(),
        targets: target_infos,
        rows,
        wall_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
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
    Anchor(QemuNbd),
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
                match nbd.child.try_wait() {
                    Ok(Some(status)) => Err(format!("qemu-nbd exited ({status})")),
                    _ => Ok(()),
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
            Server::Anchor(nbd) => nbd.stop(),
        }
    }
}

/// Boot the guest and wait for its `TANDEM NBD` line for export `blk0`.
pub(super) fn boot_guest(
    cmd: &QemuCommand,
    console_log: &Path,
    timeout: Duration,
    interrupted: &AtomicBool,
) -> anyhow::Result<Vm> {
    let mut vm = Vm::spawn(
        cmd,
        SpawnOptions {
            echo_console: false,
            echo_stderr: false,
            console_log: Some(console_log.to_path_buf()),
        },
    )
    .with_context(|| format!("command: {cmd}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if interrupted.load(Ordering::SeqCst) {
            vm.kill();
            return Err(Interrupted.into());
        }
        if Instant::now() >= deadline {
            vm.kill();
            bail!(
                "the guest did not announce NBD export {EXPORT} (a `TANDEM NBD ... /{EXPORT}` \
                 line) within {timeout:?} (--boot-timeout)\ncommand: {cmd}\n{}",
                vm.context()
            );
        }
        match vm.poll(Duration::from_millis(100)) {
            Poll::Line(line) => {
                if let ConsoleEvent::Nbd { export, .. } = &line.event {
                    if export == EXPORT {
                        return Ok(vm);
                    }
                }
            }
            Poll::Exited(exit) => bail!(
                "QEMU exited ({exit}) before the guest served NBD export {EXPORT}\n\
                 command: {cmd}\n{}",
                vm.context()
            ),
            Poll::Idle => {}
        }
    }
}

/// Run one fio job to its end while watching the server; returns the parsed result.
fn run_fio(
    fio: &Path,
    fio_args: &[String],
    out: &Path,
    log: &Path,
    timeout: Duration,
    interrupted: &AtomicBool,
    server: &mut Server,
) -> anyhow::Result<(FioResult, serde_json::Value)> {
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
        if interrupted.load(Ordering::SeqCst) {
            stop(&mut child);
            return Err(Interrupted.into());
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

/// A running `qemu-nbd`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct QemuNbd {
    child: Child,
    log: PathBuf,
}

impl QemuNbd {
    /// Start `qemu-nbd` and wait (bounded) until it accepts TCP connections on its port.
    /// Its output goes to `log`.
    pub fn start(
        cmd: &NbdServerCommand,
        log: &Path,
        interrupted: &AtomicBool,
    ) -> anyhow::Result<QemuNbd> {
        let out = File::create(log).with_context(|| log.display().to_string())?;
        let err = out.try_clone()?;
        let child = cmd
            .to_command()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {cmd}"))?;
        let mut server = QemuNbd {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            if interrupted.load(Ordering::SeqCst) {
                server.stop();
                return Err(Interrupted.into());
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!(
                    "qemu-nbd exited ({status}) before listening:\n{}\ncommand: {cmd}",
                    server.log_text()
                );
            }
            // A bare connect (no handshake): qemu-nbd logs the dropped client and goes on.
            if TcpStream::connect_timeout(&(cmd.bind, cmd.port).into(), Duration::from_millis(200))
                .is_ok()
            {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                server.stop();
                bail!(
                    "qemu-nbd did not listen on {}:{} within {SERVER_START_TIMEOUT:?}:\n{}\n\
                     command: {cmd}",
                    cmd.bind,
                    cmd.port,
                    server.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What qemu-nbd printed.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop it: SIGTERM, up to 5 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The comparison table.
pub fn table(r: &NbdReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "NBD targets (fio nbd engine, {} s per run{}, median of {} run(s); cache={})",
        r.params.time_s,
        if r.params.ramp_s > 0 {
            format!(" after {} s ramp", r.params.ramp_s)
        } else {
            String::new()
        },
        r.repeats,
        r.cache
    );
    let _ = writeln!(
        s,
        "image: {} bytes per target, {}",
        r.image_bytes, r.image_origin
    );
    for t in &r.targets {
        let _ = writeln!(s, "  {:<9} {}", t.target.name(), t.description);
    }
    if r.targets.iter().any(|t| t.target == NbdTarget::Guest) {
        let _ = writeln!(s, "  guest NVRAM: {}", r.guest_nvram);
    }
    let _ = writeln!(s, "durability:");
    for t in &r.targets {
        let _ = writeln!(s, "  {:<9} {}", t.target.name(), t.durability);
    }
    let _ = writeln!(s, "  => {}", r.durability_comparison);
    let mut t = Table::new(&[
        ("job", Align::Left),
        ("target", Align::Left),
        ("IOPS", Align::Right),
        ("MB/s", Align::Right),
        ("p50 us", Align::Right),
        ("p99 us", Align::Right),
        ("p99.9 us", Align::Right),
        ("guest/anchor", Align::Right),
        ("copies/req", Align::Right),
        ("write ack", Align::Left),
    ]);
    for row in &r.rows {
        t.row(vec![
            row.fio_job().label(),
            row.target.name().to_string(),
            format!("{:.0}", row.iops.median),
            format!("{:.1}", row.mbps.median),
            format!("{:.0}", row.clat_p50_us),
            format!("{:.0}", row.clat_p99_us),
            format!("{:.0}", row.clat_p999_us),
            if row.target == NbdTarget::Guest {
                ratio(row.ratio_guest_over_anchor)
            } else {
                String::new()
            },
            match (
                row.target,
                row.guest_copies.and_then(|c| c.copies_per_request),
            ) {
                (NbdTarget::QemuNbd, _) => "n/a (host)".into(),
                (_, Some(c)) => format!("{c:.2}"),
                (_, None) => "-".into(),
            },
            row.write_ack.clone(),
        ]);
    }
    s.push_str(&t.render());
    let _ = writeln!(
        s,
        "copies/req: bytes the guest's CPU copied on its NBD path (smoltcp frame<->socket \
         buffer, socket buffer<->NBD server) per payload byte served, NBD headers and fio's \
         ramp included\nlatency: fio completion latency (clat); guest {} ({}){}",
        r.accel,
        r.machine,
        if r.accel == accel::Accel::Tcg {
            ": the guest's CPU is emulated, the anchor's is not"
        } else {
            ""
        }
    );
    s
}

/// The bar chart: one group per job, one bar per target (median IOPS, min–max whiskers).
pub fn chart(r: &NbdReport) -> BarChart {
    let series: Vec<NbdTarget> = r.targets.iter().map(|t| t.target).collect();
    let mut groups: Vec<(FioJob, BarGroup)> = Vec::new();
    for row in &r.rows {
        let job = row.fio_job();
        let idx = match groups.iter().position(|(j, _)| *j == job) {
            Some(i) => i,
            None => {
                groups.push((
                    job,
                    BarGroup {
                        label: job.label(),
                        bars: Vec::new(),
                    },
                ));
                groups.len() - 1
            }
        };
        let mut label = si(row.iops.median);
        if let Some(x) = row.ratio_guest_over_anchor {
            label.push_str(&format!(" ({x:.2}x)"));
        }
        groups[idx].1.bars.push(Bar {
            series: series.iter().position(|t| *t == row.target).unwrap_or(0),
            value: row.iops.median,
            range: (row.runs.len() > 1).then_some((row.iops.min, row.iops.max)),
            label,
        });
    }
    BarChart {
        title: format!(
            "NBD IOPS, guest vs qemu-nbd (fio nbd engine, {} s, median of {}; whiskers min–max)",
            r.params.time_s, r.repeats
        ),
        series: series.iter().map(|t| t.name().to_string()).collect(),
        groups: groups.into_iter().map(|(_, g)| g).collect(),
        footer: Some(format!(
            "guest: {} {} -m {}; both: cache=none aio=native, {} bytes",
            r.machine, r.accel, r.mem, r.image_bytes
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_parse_and_print() {
        let j: FioJob = "randread:4k:16".parse().unwrap();
        assert_eq!(
            j,
            FioJob {
                rw: RwMode::Randread,
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
    fn guest_port_from_cmdline() {
        assert_eq!(guest_nbd_port(None), 10809);
        assert_eq!(guest_nbd_port(Some("log=debug")), 10809);
        assert_eq!(guest_nbd_port(Some("nbd.port=2000 log=info")), 2000);
        assert_eq!(guest_nbd_port(Some("nbd.port=x")), 10809);
        assert_eq!(guest_mgmt_port(None), Some(10810));
        assert_eq!(guest_mgmt_port(Some("mgmt.port=2001")), Some(2001));
        assert_eq!(guest_mgmt_port(Some("log=info mgmt.port=0")), None);
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
        let text = table(&r);
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
        let svg = chart(&r).render();
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
