//! `tandem bench nbd --tls`: the cost of NBD over TLS, side by side with plaintext, on the
//! guest and on `qemu-nbd`, in one run.
//!
//! fio's nbd engine cannot take `tls-certificates=` in its URI (libnbd refuses local file
//! access from `nbd_connect_uri`), and `qemu-img bench` takes no `--object` (so no
//! `tls-creds`), so this mode uses one client that can for all four variants
//! ([`Variant`]): `nbdcopy` (libnbd; one connection, one thread, `--requests=QD` of
//! `--request-size=BS` in flight, no extents, no sparseness detection), URI
//! `nbd://127.0.0.1:P/blk0` or `nbds://127.0.0.1:P/blk0?tls-certificates=DIR`. A read job
//! copies the whole export to `null:`, a write job copies a host file of the export's size
//! (non-zero bytes, in the page cache) onto it. Each run is timed from nbdcopy's start to
//! its exit: connection and TLS handshake included (a few ms against whole seconds).
//!
//! Throwaway credentials are made in the run's work directory ([`crate::tls::create`],
//! ECDSA P-256). The guest is booted once with `nbd.tls=on` (TLS offered, plaintext served
//! too) and the certificates in its boot module; the plaintext and TLS variants connect to
//! the same guest. `qemu-nbd` (cache=none aio=native) is started twice on its own copy of
//! the image: plain, then with `--tls-creds` (TLS only). Jobs are `read` and `write` only
//! (nbdcopy copies in order); repeats are interleaved across jobs and
//! variants. The table shows median IOPS and MB/s per (job, variant) and, per server, the
//! TLS/plaintext ratio of the median IOPS.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tandem_formats::cmdline::{key, word};

use super::job::RwMode;
use super::nbd::{start_qemu_nbd, FioJob, NbdPlan, NbdTarget, DEFAULT_JOBS, EXPORT};
use super::orchestrate::{
    boot_until_export, check_interrupted, dedup_in_order, scratch_dir, Progress, Summary,
};
use super::probe::{create_preallocated, export_size, free_port, guest_nbd_port, tool, Tool};
use crate::accel;
use crate::builder::SharedRegion;
use crate::builder::{Aio, Disk, DiskFormat, Machine, NbdServerCommand, Nic, QemuCommand};
use crate::size::ByteSize;
use crate::supervise::Daemon;
use crate::vm::Vm;

/// The jobs of `--tls` when `--jobs` is left at its (fio) default.
pub const TLS_DEFAULT_JOBS: &str = "read:4k:1,write:4k:1,read:1M:4,write:1M:4";
/// The image size of `--tls` when `--disk-size` is left at its default: every run moves
/// the whole export, so this is also the bytes per run.
pub const TLS_DEFAULT_DISK: ByteSize = ByteSize::mib(3);
/// How long one `nbdcopy` run may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The client, as the table's header names it.
pub const CLIENT: &str =
    "nbdcopy, the same client for all four (1 connection, whole export per run)";

/// One server with or without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Variant {
    /// The guest, plaintext.
    #[serde(rename = "guest")]
    GuestPlain,
    /// The guest, TLS.
    #[serde(rename = "guest+tls")]
    GuestTls,
    /// qemu-nbd, plaintext.
    #[serde(rename = "qemu-nbd")]
    QemuNbdPlain,
    /// qemu-nbd, TLS.
    #[serde(rename = "qemu-nbd+tls")]
    QemuNbdTls,
}

impl Variant {
    /// The server.
    pub fn target(self) -> NbdTarget {
        match self {
            Variant::GuestPlain | Variant::GuestTls => NbdTarget::Guest,
            Variant::QemuNbdPlain | Variant::QemuNbdTls => NbdTarget::QemuNbd,
        }
    }

    /// Whether the connection uses TLS.
    pub fn tls(self) -> bool {
        matches!(self, Variant::GuestTls | Variant::QemuNbdTls)
    }

    /// The name in tables and charts.
    pub fn name(self) -> &'static str {
        match self {
            Variant::GuestPlain => "guest",
            Variant::GuestTls => "guest+tls",
            Variant::QemuNbdPlain => "qemu-nbd",
            Variant::QemuNbdTls => "qemu-nbd+tls",
        }
    }

    /// Plaintext and TLS for `target`.
    pub fn of(target: NbdTarget) -> [Variant; 2] {
        match target {
            NbdTarget::Guest => [Variant::GuestPlain, Variant::GuestTls],
            NbdTarget::QemuNbd => [Variant::QemuNbdPlain, Variant::QemuNbdTls],
        }
    }
}

/// What `--tls` runs, from the bench's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPlan {
    /// Jobs (read/write only), in table order.
    pub jobs: Vec<FioJob>,
    /// Variants, in table order (plaintext then TLS for each `--targets` entry).
    pub variants: Vec<Variant>,
    /// Runs per job and variant.
    pub repeats: u32,
    /// Image size (ignored with `--disk`).
    pub disk_bytes: u64,
    /// `nbdcopy --flush` on write jobs (from `--fsync` > 0).
    pub flush: bool,
}

/// The plan of `--tls`: `--jobs` and `--disk-size` left at their defaults become the short
/// TLS defaults; random jobs are refused (the client reads and writes sequentially).
pub fn plan(args: &NbdPlan) -> anyhow::Result<TlsPlan> {
    let fio_default = parse_jobs(DEFAULT_JOBS)?;
    let mut jobs = if args.jobs == fio_default {
        parse_jobs(TLS_DEFAULT_JOBS)?
    } else {
        args.jobs.clone()
    };
    dedup_in_order(&mut jobs);
    if jobs.is_empty() {
        bail!("--jobs: no job given");
    }
    if let Some(j) = jobs
        .iter()
        .find(|j| !matches!(j.rw, RwMode::READ | RwMode::WRITE))
    {
        bail!("--tls: job {j}: read and write only (nbdcopy copies in order)");
    }
    let mut targets = args.targets.clone();
    dedup_in_order(&mut targets);
    if targets.is_empty() {
        bail!("--targets: no target given");
    }
    let default_disk: ByteSize = "1G".parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(TlsPlan {
        jobs,
        variants: targets.into_iter().flat_map(Variant::of).collect(),
        repeats: args.repeats,
        disk_bytes: if args.disk_size == default_disk {
            TLS_DEFAULT_DISK.bytes()
        } else {
            args.disk_size.bytes()
        },
        flush: args.fsync > 0,
    })
}

fn parse_jobs(list: &str) -> anyhow::Result<Vec<FioJob>> {
    list.split(',')
        .map(|j| j.parse().map_err(|e| anyhow::anyhow!("{e}")))
        .collect()
}

/// Requests per run for `job` on an export of `bytes`.
pub fn requests(job: &FioJob, bytes: u64) -> u64 {
    bytes.div_ceil(u64::from(job.bs.0).max(1))
}

/// The export's URI on 127.0.0.1:`port`, `nbds://` with the credentials in `tls`.
pub fn uri(port: u16, tls: Option<&Path>) -> String {
    match tls {
        Some(dir) => format!(
            "nbds://127.0.0.1:{port}/{EXPORT}?tls-certificates={}",
            dir.display()
        ),
        None => format!("nbd://127.0.0.1:{port}/{EXPORT}"),
    }
}

/// `nbdcopy`'s arguments for `job` against `uri`: a read copies the export to `null:`, a
/// write copies `source` onto it.
pub fn client_args(job: &FioJob, uri: &str, source: &Path, flush: bool) -> Vec<String> {
    let mut a = vec![
        "--connections=1".to_string(),
        "--threads=1".into(),
        format!("--requests={}", job.qd),
        format!("--request-size={}", job.bs.0),
        "--no-extents".into(),
        "--sparse=0".into(),
    ];
    if job.rw == RwMode::WRITE {
        if flush {
            a.push("--flush".into());
        }
        a.extend([source.display().to_string(), uri.to_string()]);
    } else {
        a.extend([uri.to_string(), "null:".into()]);
    }
    a
}

/// One `qemu-img bench` run.
#[derive(Debug, Clone, Serialize)]
pub struct TlsRun {
    /// Repeat number, from 1.
    pub repeat: u32,
    /// Seconds from nbdcopy's start to its exit.
    pub seconds: f64,
    /// Requests over seconds.
    pub iops: f64,
    /// MB/s (10^6 bytes).
    pub mbps: f64,
}

/// Every run of one job on one variant, and their medians.
#[derive(Debug, Clone, Serialize)]
pub struct TlsCell {
    /// Which.
    pub variant: Variant,
    /// IOPS over the repeats.
    pub iops: Summary,
    /// MB/s over the repeats.
    pub mbps: Summary,
    /// Every run.
    pub runs: Vec<TlsRun>,
}

/// One job: a cell per variant and the TLS/plaintext ratio per server.
#[derive(Debug, Clone, Serialize)]
pub struct TlsRow {
    /// The job as `RW:BS:QD`.
    pub job: String,
    /// Requests per run.
    pub requests: u64,
    /// One per variant, in table order.
    pub cells: Vec<TlsCell>,
    /// Median IOPS over TLS / median IOPS plaintext, on the guest.
    pub guest_tls_over_plain: Option<f64>,
    /// The same on qemu-nbd.
    pub qemu_nbd_tls_over_plain: Option<f64>,
}

impl TlsRow {
    fn median(&self, v: Variant) -> Option<f64> {
        self.cells
            .iter()
            .find(|c| c.variant == v)
            .map(|c| c.iops.median)
    }

    /// Fill in the ratios from the cells.
    pub fn with_ratios(mut self) -> TlsRow {
        let r = |plain: Option<f64>, tls: Option<f64>| match (plain, tls) {
            (Some(p), Some(t)) if p > 0.0 => Some(t / p),
            _ => None,
        };
        self.guest_tls_over_plain = r(
            self.median(Variant::GuestPlain),
            self.median(Variant::GuestTls),
        );
        self.qemu_nbd_tls_over_plain = r(
            self.median(Variant::QemuNbdPlain),
            self.median(Variant::QemuNbdTls),
        );
        self
    }
}

/// A variant's server and client.
#[derive(Debug, Clone, Serialize)]
pub struct VariantInfo {
    /// Which.
    pub variant: Variant,
    /// The server's command line (QEMU's for the guest).
    pub server: String,
    /// The client's command line for the first job.
    pub client: String,
}

/// The `--json` report of `tandem bench nbd --tls` ([`super::render::nbd_tls`] renders it).
#[derive(Debug, Clone, Serialize)]
pub struct TlsReport {
    /// The client used for every variant.
    pub client: String,
    /// Accelerator of the guest.
    pub accel: accel::Accel,
    /// Guest machine.
    pub machine: Machine,
    /// Guest RAM.
    pub mem: String,
    /// QEMU's version line.
    pub qemu_version: Option<String>,
    /// Image size in bytes (each server its own copy).
    pub image_bytes: u64,
    /// How the credentials were made.
    pub credentials: String,
    /// Runs per job and variant.
    pub repeats: u32,
    /// The variants, in table order.
    pub variants: Vec<VariantInfo>,
    /// One row per job.
    pub rows: Vec<TlsRow>,
    /// Wall time, seconds.
    pub wall_s: f64,
}

/// `tandem bench nbd --tls`: run, print the table, write `--json` and `--svg`.
pub fn run_and_report(args: &NbdPlan, interrupted: &AtomicBool) -> anyhow::Result<TlsReport> {
    let report = run(args, interrupted)?;
    super::render::publish(&report, &args.outputs)?;
    eprintln!("tandem: bench nbd --tls took {:.0} s", report.wall_s);
    Ok(report)
}

/// A started server: the guest or qemu-nbd, its port and command line.
enum Running {
    Guest(Box<Vm>),
    Anchor(Daemon),
}

impl Running {
    fn stop(&mut self) {
        match self {
            Running::Guest(vm) => {
                vm.stop(crate::run::STOP_GRACE);
            }
            Running::Anchor(n) => {
                n.stop();
            }
        }
    }
}

/// What the run needs found and made before the first server starts.
struct Setup {
    qemu: PathBuf,
    qemu_img: PathBuf,
    nbdcopy: PathBuf,
    source: PathBuf,
    image_bytes: u64,
    qemu_nbd: Option<PathBuf>,
    guest: Option<PathBuf>,
    accel: accel::AccelDecision,
    creds: PathBuf,
}

fn setup(args: &NbdPlan, plan: &TlsPlan, dir: &Path) -> anyhow::Result<Setup> {
    let accel = accel::choose(args.vm.accel)?;
    let qemu = crate::qemu_bin::ensure_qemu()?;
    let qemu_img = tool(Tool::QemuImg, &qemu)?;
    let nbdcopy = tool(Tool::Nbdcopy, &qemu)?;
    let has = |t| plan.variants.iter().any(|v| v.target() == t);
    let qemu_nbd = if has(NbdTarget::QemuNbd) {
        Some(tool(Tool::QemuNbd, &qemu)?)
    } else {
        None
    };
    let guest = if has(NbdTarget::Guest) {
        Some(crate::image::ensure(args.vm.image.as_deref())?)
    } else {
        None
    };
    let image_bytes = match &args.disk {
        Some(d) => std::fs::metadata(d)
            .with_context(|| d.display().to_string())?
            .len(),
        None => plan.disk_bytes,
    };
    // The write jobs' source: half the image (the guest's export is a little smaller than
    // its disk), non-zero bytes, so no client or server sees zeros to skip.
    let source = dir.join("source.bin");
    let pattern: Vec<u8> = (0..image_bytes / 2).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&source, pattern).with_context(|| source.display().to_string())?;
    let creds = dir.join("tls");
    crate::tls::create(&creds, &[], crate::tls::KeyKind::EcdsaP256)?;
    Ok(Setup {
        qemu,
        qemu_img,
        nbdcopy,
        source,
        image_bytes,
        qemu_nbd,
        guest,
        accel,
        creds,
    })
}

/// The image for `target`: a copy of `--disk` or a fresh preallocated one.
fn make_image(args: &NbdPlan, plan: &TlsPlan, s: &Setup, path: &Path) -> anyhow::Result<()> {
    match &args.disk {
        Some(src) => {
            std::fs::copy(src, path)
                .with_context(|| format!("copying {} to {}", src.display(), path.display()))?;
        }
        None => create_preallocated(&s.qemu_img, path, ByteSize(plan.disk_bytes))?,
    }
    Ok(())
}

/// Boot the guest with `nbd.tls=on` and the credentials in its boot module.
fn start_guest(
    args: &NbdPlan,
    s: &Setup,
    dir: &Path,
    image: &Path,
    interrupted: &AtomicBool,
) -> anyhow::Result<(Running, u16, String)> {
    let port = free_port()?;
    let guest_port = guest_nbd_port(args.vm.cmdline.as_deref());
    let files = crate::tls::ServerFiles::read(&s.creds)?;
    let module = dir.join("boot.module");
    crate::mgmt::write_private(
        &module,
        crate::tls::boot_module_text("", Some(&files))?.as_bytes(),
    )?;
    let words = format!(
        "{} {}",
        word(key::NBD_TLS, "on"),
        args.vm.cmdline.as_deref().unwrap_or_default()
    );
    let mut cmd = QemuCommand::new(&s.qemu)
        .name("tandem-bench-nbd-tls")
        .machine(args.machine)
        .accel(s.accel.accel)
        .memory(args.vm.mem)
        .smp(args.vm.smp)
        .kernel(s.guest.as_ref().expect("guest image found"))
        .initrd(&module)
        .qmp_socket(dir.join("qmp.sock"))
        .no_reboot(true)
        .disk(
            Disk::new(image)
                .with_format(DiskFormat::Raw)
                .aio(Aio::Native)
                .cache_direct(true),
        )
        .nic(Nic::user().forward(port, guest_port));
    if args.machine == Machine::Microvm {
        cmd = cmd.microvm_acpi(false);
    } else if !args.no_nvram {
        let nv = crate::state::ensure_nvram(&dir.join("nvram.bin"), args.nvram_size)?;
        cmd = cmd.shared_region(SharedRegion::new(nv.path, nv.size));
    }
    cmd = cmd.cmdline(words.trim_end());
    let vm = boot_until_export(
        &cmd,
        EXPORT,
        &dir.join("guest-console.log"),
        Duration::from_secs(args.boot_timeout),
        interrupted,
    )?;
    Ok((Running::Guest(Box::new(vm)), port, cmd.to_string()))
}

/// Start qemu-nbd (cache=none aio=native) on `image`, over TLS when `tls`.
fn start_anchor(
    s: &Setup,
    dir: &Path,
    image: &Path,
    tls: bool,
    interrupted: &AtomicBool,
) -> anyhow::Result<(Running, u16, String)> {
    let port = free_port()?;
    let mut cmd = NbdServerCommand::new(
        s.qemu_nbd.as_ref().expect("qemu-nbd found"),
        image,
        EXPORT,
        port,
    )
    .cache_none(true)
    .aio(Aio::Native);
    if tls {
        cmd = cmd.tls_creds(&s.creds);
    }
    let log = dir.join(if tls {
        "qemu-nbd-tls.log"
    } else {
        "qemu-nbd.log"
    });
    let server = start_qemu_nbd(&cmd, &log, interrupted)?;
    Ok((Running::Anchor(server), port, cmd.to_string()))
}

/// Run one `nbdcopy` to its end; returns its seconds.
fn run_client(nbdcopy: &Path, a: &[String], interrupted: &AtomicBool) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut child = std::process::Command::new(nbdcopy)
        .args(a)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", nbdcopy.display()))?;
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while child.try_wait()?.is_none() {
        let stopped = check_interrupted(interrupted);
        if stopped.is_err() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            stopped?;
            bail!("nbdcopy ran past {CLIENT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nbdcopy {} failed ({}):\n{}{}",
            a.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(seconds)
}

/// Every run of every job on the variants one server offers; runs[job][variant].
fn measure(
    plan: &TlsPlan,
    s: &Setup,
    variants: &[Variant],
    port: u16,
    progress: &mut Progress,
    interrupted: &AtomicBool,
) -> anyhow::Result<Vec<Vec<Vec<TlsRun>>>> {
    let mut runs = vec![vec![Vec::new(); variants.len()]; plan.jobs.len()];
    let export_bytes = export_size(&uri(port, variants[0].tls().then_some(s.creds.as_path())))?;
    for repeat in 1..=plan.repeats {
        for (j, job) in plan.jobs.iter().enumerate() {
            for (k, v) in variants.iter().enumerate() {
                let what = format!("{} {} run {repeat}/{}", v.name(), job.label(), plan.repeats);
                progress.start(&what);
                let uri = uri(port, v.tls().then_some(s.creds.as_path()));
                let a = client_args(job, &uri, &s.source, plan.flush);
                let seconds =
                    run_client(&s.nbdcopy, &a, interrupted).with_context(|| what.clone())?;
                let bytes = if job.rw == RwMode::WRITE {
                    s.image_bytes / 2
                } else {
                    export_bytes
                };
                let n = requests(job, bytes) as f64;
                let iops = if seconds > 0.0 { n / seconds } else { 0.0 };
                let mbps = iops * f64::from(job.bs.0) / 1e6;
                progress.finish_one(&what, &format!("{iops:.0} IOPS, {mbps:.1} MB/s"));
                runs[j][k].push(TlsRun {
                    repeat,
                    seconds,
                    iops,
                    mbps,
                });
            }
        }
    }
    Ok(runs)
}

/// Run the TLS comparison and return the report (nothing printed on stdout).
pub fn run(args: &NbdPlan, interrupted: &AtomicBool) -> anyhow::Result<TlsReport> {
    let started = Instant::now();
    let plan = plan(args)?;
    let scratch = scratch_dir(args.work_dir.as_deref())?;
    let dir = scratch.path();
    let s = setup(args, &plan, dir)?;
    let total = (plan.variants.len() * plan.jobs.len()) as u64 * u64::from(plan.repeats);
    eprintln!(
        "tandem: {total} nbdcopy runs: {} x {} job(s) x {} repeat(s); credentials in {}",
        plan.variants
            .iter()
            .map(|v| v.name())
            .collect::<Vec<_>>()
            .join(","),
        plan.jobs.len(),
        plan.repeats,
        s.creds.display()
    );
    let mut progress = Progress::new(total);
    let mut cells: Vec<Vec<TlsCell>> = vec![Vec::new(); plan.jobs.len()];
    let mut infos = Vec::new();
    let mut targets: Vec<NbdTarget> = plan.variants.iter().map(|v| v.target()).collect();
    targets.dedup();
    for target in targets {
        let image = dir.join(format!("{target}.raw"));
        progress.start(&format!("creating the image for {target}"));
        make_image(args, &plan, &s, &image)?;
        // The guest serves both variants on one boot (nbd.tls=on); qemu-nbd one each.
        let groups: Vec<Vec<Variant>> = match target {
            NbdTarget::Guest => vec![Variant::of(target).to_vec()],
            NbdTarget::QemuNbd => Variant::of(target).iter().map(|v| vec![*v]).collect(),
        };
        for group in groups {
            progress.start(&format!("starting {}", group[0].name()));
            let (mut server, port, command) = match target {
                NbdTarget::Guest => start_guest(args, &s, dir, &image, interrupted)?,
                NbdTarget::QemuNbd => start_anchor(&s, dir, &image, group[0].tls(), interrupted)?,
            };
            let runs = measure(&plan, &s, &group, port, &mut progress, interrupted);
            server.stop();
            for (j, per_variant) in runs?.into_iter().enumerate() {
                for (v, r) in group.iter().zip(per_variant) {
                    cells[j].push(cell(*v, r));
                }
            }
            for v in &group {
                let uri = uri(port, v.tls().then_some(s.creds.as_path()));
                let client = client_args(&plan.jobs[0], &uri, &s.source, plan.flush);
                infos.push(VariantInfo {
                    variant: *v,
                    server: command.clone(),
                    client: format!("{} {}", s.nbdcopy.display(), client.join(" ")),
                });
            }
        }
    }
    progress.finish();
    Ok(TlsReport {
        client: CLIENT.into(),
        accel: s.accel.accel,
        machine: args.machine,
        mem: args.vm.mem.to_string(),
        qemu_version: crate::qemu_bin::qemu_version(&s.qemu),
        image_bytes: s.image_bytes,
        credentials: "throwaway ECDSA P-256 CA, server and client certificates \
                      (tandem_qemu::tls::create) in the run's work directory"
            .into(),
        repeats: plan.repeats,
        variants: infos,
        rows: rows(&plan, s.image_bytes, cells),
        wall_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

/// The cell of `runs` on `variant`.
pub fn cell(variant: Variant, runs: Vec<TlsRun>) -> TlsCell {
    let col = |f: &dyn Fn(&TlsRun) -> f64| Summary::of(&runs.iter().map(f).collect::<Vec<_>>());
    TlsCell {
        variant,
        iops: col(&|r| r.iops),
        mbps: col(&|r| r.mbps),
        runs,
    }
}

/// Rows in job order, cells in variant order, ratios filled in.
pub fn rows(plan: &TlsPlan, image_bytes: u64, cells: Vec<Vec<TlsCell>>) -> Vec<TlsRow> {
    plan.jobs
        .iter()
        .zip(cells)
        .map(|(job, mut cells)| {
            cells.sort_by_key(|c| plan.variants.iter().position(|v| *v == c.variant));
            TlsRow {
                job: job.to_string(),
                requests: requests(job, image_bytes),
                cells,
                guest_tls_over_plain: None,
                qemu_nbd_tls_over_plain: None,
            }
            .with_ratios()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::render::nbd_tls as render;
    use crate::cli::{BenchCommand, Cli, Command};

    /// The plan of `tandem bench nbd EXTRA...`, as the command makes it.
    fn args(extra: &[&str]) -> NbdPlan {
        let mut v = vec!["tandem", "bench", "nbd"];
        v.extend_from_slice(extra);
        match Cli::try_parse_args(v).expect("parses").command {
            Command::Bench(BenchCommand::Nbd(a)) => a.plan(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn plan_defaults_and_refusals() {
        let a = args(&["--tls"]);
        assert!(a.tls);
        let p = plan(&a).unwrap();
        assert_eq!(p.jobs, parse_jobs(TLS_DEFAULT_JOBS).unwrap());
        assert_eq!(
            p.variants,
            [
                Variant::GuestPlain,
                Variant::GuestTls,
                Variant::QemuNbdPlain,
                Variant::QemuNbdTls
            ]
        );
        assert_eq!(p.disk_bytes, TLS_DEFAULT_DISK.bytes());
        assert_eq!(p.repeats, 3);

        let p = plan(&args(&[
            "--tls",
            "--targets",
            "qemu-nbd",
            "--jobs",
            "write:64k:2",
            "--disk-size",
            "64M",
            "--fsync",
            "1",
        ]))
        .unwrap();
        assert_eq!(p.variants, [Variant::QemuNbdPlain, Variant::QemuNbdTls]);
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.disk_bytes, 64 << 20);
        assert!(p.flush);

        let e = plan(&args(&["--tls", "--jobs", "randread:4k:1"])).unwrap_err();
        assert!(e.to_string().contains("read and write only"), "{e}");
        assert!(!args(&[]).tls);
    }

    #[test]
    fn client_arguments_and_output() {
        let job: FioJob = "write:4k:16".parse().unwrap();
        let tls = uri(1234, Some(Path::new("/t/d")));
        assert_eq!(tls, "nbds://127.0.0.1:1234/blk0?tls-certificates=/t/d");
        let a = client_args(&job, &tls, Path::new("/s"), true);
        assert_eq!(
            a,
            [
                "--connections=1",
                "--threads=1",
                "--requests=16",
                "--request-size=4096",
                "--no-extents",
                "--sparse=0",
                "--flush",
                "/s",
                tls.as_str(),
            ]
        );
        let job: FioJob = "read:1M:4".parse().unwrap();
        let plain = uri(1, None);
        assert_eq!(plain, "nbd://127.0.0.1:1/blk0");
        let a = client_args(&job, &plain, Path::new("/s"), true);
        assert_eq!(a[a.len() - 2..], [plain.clone(), "null:".to_string()]);
        assert!(!a.iter().any(|x| x == "--flush"));
        assert_eq!(requests(&job, 8 << 20), 8);
        assert_eq!(requests(&"read:4k:1".parse().unwrap(), 8 << 20), 2048);
    }

    #[test]
    fn ratios_table_chart_and_json() {
        let p = plan(&args(&["--tls", "--jobs", "read:4k:1"])).unwrap();
        let run = |iops: f64| TlsRun {
            repeat: 1,
            seconds: 1.0,
            iops,
            mbps: iops * 4096.0 / 1e6,
        };
        // Out of order on purpose: rows() sorts cells by the plan's variant order.
        let cells = vec![vec![
            cell(Variant::QemuNbdTls, vec![run(800.0)]),
            cell(Variant::GuestPlain, vec![run(100.0)]),
            cell(Variant::GuestTls, vec![run(50.0)]),
            cell(Variant::QemuNbdPlain, vec![run(1000.0)]),
        ]];
        let rows = rows(&p, 8 << 20, cells);
        assert_eq!(rows[0].cells[0].variant, Variant::GuestPlain);
        assert_eq!(rows[0].guest_tls_over_plain, Some(0.5));
        assert_eq!(rows[0].qemu_nbd_tls_over_plain, Some(0.8));
        let r = TlsReport {
            client: CLIENT.into(),
            accel: accel::Accel::Tcg,
            machine: Machine::Q35,
            mem: "64M".into(),
            qemu_version: None,
            image_bytes: 1,
            credentials: "c".into(),
            repeats: 1,
            variants: p
                .variants
                .iter()
                .map(|v| VariantInfo {
                    variant: *v,
                    server: String::new(),
                    client: String::new(),
                })
                .collect(),
            rows,
            wall_s: 1.0,
        };
        let t = render::table(&r);
        assert!(t.contains("nbdcopy, the same client for all four"), "{t}");
        assert!(t.contains("guest+tls IOPS"), "{t}");
        assert!(t.contains("0.50") && t.contains("0.80"), "{t}");
        let svg = render::chart(&r).render();
        assert!(svg.contains("qemu-nbd+tls"));
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["rows"][0]["cells"][1]["variant"], "guest+tls");
        assert_eq!(j["rows"][0]["guest_tls_over_plain"], 0.5);
        assert_eq!(j["rows"][0]["qemu_nbd_tls_over_plain"], 0.8);
    }
}
