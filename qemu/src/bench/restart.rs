//! `tandem bench restart`: how long the guest takes to serve NBD again after an error,
//! restarting in place from its checkpoint, compared with a cold boot (discovery on blank
//! disks) and a checkpoint boot (a VM reboot that finds the checkpoint).
//!
//! The comparison is the two restarts: from the injected error to the first NBD
//! request served again, once with a cold discovery and once from the checkpoint. The two
//! boots are shown beside them for context.
//!
//! Per disk count and run, on fresh blank raw disks and a fresh NVRAM file, two VMs:
//! 1. With `checkpoint=ignore` and the injection armed: **cold boot** (blank disks), then
//!    **restart, cold discovery** (the checkpoint written by the boot is ignored).
//! 2. On the same disks and NVRAM, without `checkpoint=ignore`: **checkpoint boot**, then
//!    **restart, checkpoint**.
//!
//! Boots: host = QEMU spawn -> first 4 KiB READ reply; guest = `since_start_us` of the first
//! `TANDEM SERVED` line (from guest entry). Restarts: host = the request that meets the
//! injected error -> the first READ reply on a new connection; guest = `first_request_us` of
//! the next `TANDEM SERVED` minus `at_us` of `TANDEM RESTART`. The client probes with a new
//! connection every [`PROBE_EVERY`] and keeps the silent ones open, so it adds at most that
//! much to what it measures.
//!
//! The table shows medians per row and the speed-up against the cold boot; the JSON keeps
//! every run with its parsed `phases (us)` lines.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tandem_formats::cmdline::{key, word};

use super::nbd::EXPORT;
use super::orchestrate::{
    base_dir, check_socket_path, dedup_in_order, spawn_quiet, Interrupted, Progress, Summary,
    VmPlan,
};
use super::probe::{free_port, guest_nbd_port};
use super::render::{ms, Outputs};
use crate::accel;
use crate::builder::{Disk, DiskFormat, Machine, Nic, QemuCommand, SharedRegion};
use crate::console::ConsoleLine;
use crate::run::STOP_GRACE;
use crate::size::ByteSize;
use crate::vm::{Poll, Vm};

/// Size of each blank data disk.
pub const DISK_SIZE: ByteSize = ByteSize::mib(32);
/// Size of the NVRAM file.
pub const NVRAM_SIZE: ByteSize = ByteSize::mib(16);
/// Row names, in table order.
pub const ROWS: [&str; 4] = [
    "cold boot",
    "checkpoint boot",
    "restart, cold discovery",
    "restart, checkpoint",
];
/// Each row's baseline (an index into [`ROWS`]): boots against the cold boot, restarts
/// against the cold restart.
const BASELINE: [usize; 4] = [0, 0, 2, 2];
/// The speed-up of the checkpoint restart over the cold restart the issue asks for (8 disks).
pub const TARGET_SPEEDUP: f64 = 5.0;

/// What `tandem bench restart` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPlan {
    /// Numbers of data disks; each gets its own table.
    pub disks: Vec<u32>,
    /// Runs per disk count.
    pub runs: u32,
    /// The injected error.
    pub kind: FaultKind,
    /// Where the scratch directories go.
    pub work_dir: Option<PathBuf>,
    /// Seconds a boot or a restart may take.
    pub boot_timeout: u64,
    /// `--json` and `--svg`.
    pub outputs: Outputs,
    /// Guest and QEMU options.
    pub vm: VmPlan,
}

/// The injected error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// A Rust panic.
    Panic,
    /// A CPU page fault.
    Pagefault,
}

impl FaultKind {
    /// The guest command-line words injecting it after `n` requests.
    pub fn cmdline(self, n: u32) -> String {
        let after = word(key::DEBUG_PANIC_AFTER_REQUESTS, n);
        match self {
            FaultKind::Panic => after,
            FaultKind::Pagefault => format!("{after} {}", word(key::DEBUG_FAULT, "pagefault")),
        }
    }
}

/// One `phases (us): a=1 b=2 ... total=N` line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhaseLine {
    /// The console line.
    pub line: String,
    /// Its `name=us` pairs, in order.
    pub phases: Vec<(String, u64)>,
}

/// One start (boot or restart) of one run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StartRecord {
    /// Host milliseconds (spawn or triggering request → first reply).
    pub host_ms: f64,
    /// Guest milliseconds (see the module docs).
    pub guest_ms: f64,
    /// The `TANDEM SERVED` line of this start.
    pub served: String,
    /// The `TANDEM RESTART` line (restart only).
    pub restart: Option<String>,
    /// The `checkpoint:` lines of this start.
    pub checkpoint: Vec<String>,
    /// The `phases (us)` lines of this start.
    pub phases: Vec<PhaseLine>,
    /// Probes given up before the reply.
    pub attempts: u32,
    /// Why probes failed, with the time since probing began (the first few, for diagnosis).
    pub probe_failures: Vec<String>,
}

/// One run: the four starts.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// 1-based.
    pub run: u32,
    /// Cold boot on blank disks.
    pub cold: StartRecord,
    /// Restart in place after the injected error, discovering cold (`checkpoint=ignore`).
    pub restart_cold: StartRecord,
    /// Boot again on the same disks and NVRAM, from the checkpoint.
    pub checkpoint: StartRecord,
    /// Restart in place after the injected error, from the checkpoint.
    pub restart: StartRecord,
}

/// A table row.
#[derive(Debug, Clone, Serialize)]
pub struct RestartRow {
    /// One of [`ROWS`].
    pub row: String,
    /// Host milliseconds.
    pub host_ms: Summary,
    /// Guest milliseconds.
    pub guest_ms: Summary,
    /// Baseline median / this median, host (boots: the cold boot; restarts: the cold
    /// restart).
    pub speedup_host: f64,
    /// The same, guest.
    pub speedup_guest: f64,
}

/// Results for one disk count.
#[derive(Debug, Clone, Serialize)]
pub struct DiskGroup {
    /// Data disks.
    pub disks: u32,
    /// Rows in [`ROWS`] order.
    pub rows: Vec<RestartRow>,
    /// Every run.
    pub runs: Vec<RunRecord>,
}

/// The report (`--json`; [`super::render::restart`] renders it).
#[derive(Debug, Clone, Serialize)]
pub struct RestartReport {
    /// Accelerator.
    pub accel: accel::Accel,
    /// Why.
    pub accel_reason: String,
    /// Guest RAM.
    pub mem: String,
    /// The injected error.
    pub kind: FaultKind,
    /// Runs per disk count.
    pub runs: u32,
    /// Size of each data disk, bytes.
    pub disk_bytes: u64,
    /// NVRAM size, bytes.
    pub nvram_bytes: u64,
    /// One group per disk count.
    pub groups: Vec<DiskGroup>,
    /// Wall time, seconds.
    pub wall_s: f64,
}

/// `tandem bench restart`: run, print the tables, write JSON/SVG; returns the exit status.
pub fn bench_restart(args: &RestartPlan) -> anyhow::Result<i32> {
    super::run_interruptible("QEMU was stopped", |interrupted| {
        run_and_report(args, interrupted)
    })
}

/// Run, print the tables on stdout, write `--json` and `--svg`; returns the report.
pub fn run_and_report(
    args: &RestartPlan,
    interrupted: &AtomicBool,
) -> anyhow::Result<RestartReport> {
    let report = run(args, interrupted)?;
    super::render::publish(&report, &args.outputs)?;
    eprintln!("tandem: bench restart took {:.0} s", report.wall_s);
    Ok(report)
}

/// What one run needs.
struct Ctx<'a> {
    args: &'a RestartPlan,
    qemu: PathBuf,
    image: PathBuf,
    accel: accel::Accel,
    interrupted: &'a AtomicBool,
}

/// Run the bench and return the report (nothing on stdout).
pub fn run(args: &RestartPlan, interrupted: &AtomicBool) -> anyhow::Result<RestartReport> {
    let started = Instant::now();
    let mut disk_counts = args.disks.clone();
    dedup_in_order(&mut disk_counts);
    if disk_counts.is_empty() {
        bail!("--disks: no disk count given");
    }
    let accel = accel::choose(args.vm.accel)?;
    let qemu = crate::qemu_bin::ensure_qemu()?;
    let image = crate::image::ensure(args.vm.image.as_deref())?;
    let base = base_dir(args.work_dir.as_deref())?;
    let ctx = Ctx {
        args,
        qemu,
        image,
        accel: accel.accel,
        interrupted,
    };
    let total = disk_counts.len() as u64 * u64::from(args.runs);
    eprintln!(
        "tandem: {total} run(s): disks {}, {} run(s) each, injected {:?}; q35 {}, -m {}",
        disk_counts
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.runs,
        args.kind,
        accel,
        args.vm.mem
    );
    let mut progress = Progress::new(total);
    let mut groups = Vec::new();
    for &disks in &disk_counts {
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            let what = format!("{disks} disk(s) run {run}");
            progress.start(&what);
            let scratch =
                crate::scratch::tempdir_in(&base).with_context(|| base.display().to_string())?;
            let rec = one_run(&ctx, scratch.path(), disks, run)?;
            progress.finish_one(
                &what,
                &format!(
                    "boots cold {:.0} / checkpoint {:.0} ms, restarts cold {:.1} / checkpoint {:.1} ms (host); guest {:.1} / {:.1}, {:.1} / {:.1} ms",
                    rec.cold.host_ms,
                    rec.checkpoint.host_ms,
                    rec.restart_cold.host_ms,
                    rec.restart.host_ms,
                    rec.cold.guest_ms,
                    rec.checkpoint.guest_ms,
                    rec.restart_cold.guest_ms,
                    rec.restart.guest_ms
                ),
            );
            runs.push(rec);
        }
        groups.push(DiskGroup {
            disks,
            rows: rows_of(&runs),
            runs,
        });
    }
    progress.finish();
    Ok(RestartReport {
        accel: accel.accel,
        accel_reason: accel.reason,
        mem: args.vm.mem.to_string(),
        kind: args.kind,
        runs: args.runs,
        disk_bytes: DISK_SIZE.bytes(),
        nvram_bytes: NVRAM_SIZE.bytes(),
        groups,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// The rows from the runs.
pub fn rows_of(runs: &[RunRecord]) -> Vec<RestartRow> {
    let pick = |f: fn(&RunRecord) -> &StartRecord| {
        let host: Vec<f64> = runs.iter().map(|r| f(r).host_ms).collect();
        let guest: Vec<f64> = runs.iter().map(|r| f(r).guest_ms).collect();
        (Summary::of(&host), Summary::of(&guest))
    };
    let all = [
        pick(|r| &r.cold),
        pick(|r| &r.checkpoint),
        pick(|r| &r.restart_cold),
        pick(|r| &r.restart),
    ];
    ROWS.iter()
        .zip(BASELINE)
        .zip(all)
        .map(|((name, base), (host, guest))| RestartRow {
            row: name.to_string(),
            host_ms: host,
            guest_ms: guest,
            speedup_host: all[base].0.median / host.median,
            speedup_guest: all[base].1.median / guest.median,
        })
        .collect()
}

/// One run in `dir`: cold boot, restart in place, checkpoint boot.
fn one_run(ctx: &Ctx, dir: &Path, disks: u32, run: u32) -> anyhow::Result<RunRecord> {
    let args = ctx.args;
    let qmp = dir.join("qmp.sock");
    check_socket_path(&qmp)?;
    let mut disk_paths = Vec::new();
    for i in 0..disks {
        let p = dir.join(format!("disk{i}.raw"));
        crate::state::create_sparse_disk(&p, DISK_SIZE)?;
        disk_paths.push(p);
    }
    let nv = crate::state::ensure_nvram(&dir.join("nvram.bin"), NVRAM_SIZE)?;
    let guest_port = guest_nbd_port(args.vm.cmdline.as_deref());
    let command = |port: u16, words: String| {
        let mut cmd = QemuCommand::new(&ctx.qemu)
            .name("tandem-bench-restart")
            .machine(Machine::Q35)
            .accel(ctx.accel)
            .memory(args.vm.mem)
            .smp(args.vm.smp)
            .kernel(&ctx.image)
            .qmp_socket(&qmp)
            .no_reboot(true)
            .nic(Nic::user().forward(port, guest_port))
            .shared_region(SharedRegion::new(&nv.path, nv.size));
        for p in &disk_paths {
            cmd = cmd.disk(Disk::new(p).with_format(DiskFormat::Raw));
        }
        let words = match &args.vm.cmdline {
            Some(extra) => format!("{words} {extra}"),
            None => words,
        };
        cmd.cmdline(&words)
    };
    let timeout = Duration::from_secs(args.boot_timeout);
    let injected = args.kind.cmdline(2);
    let nvlog = word(key::DURABILITY, "nvlog");
    let (cold, restart_cold) = boot_then_restart(
        ctx,
        &|port| {
            command(
                port,
                format!("{nvlog} {} {injected}", word(key::CHECKPOINT, "ignore")),
            )
        },
        &dir.join(format!("cold-{disks}-{run}.log")),
        timeout,
    )
    .context("cold boot and restart")?;
    let (checkpoint, restart) = boot_then_restart(
        ctx,
        &|port| command(port, format!("{nvlog} {injected}")),
        &dir.join(format!("checkpoint-{disks}-{run}.log")),
        timeout,
    )
    .context("checkpoint boot and restart")?;
    Ok(RunRecord {
        run,
        cold,
        restart_cold,
        checkpoint,
        restart,
    })
}

/// Boot a VM with the injection armed, read once, then send the request that meets the
/// injected error and read again after the restart; returns the two starts.
fn boot_then_restart(
    ctx: &Ctx,
    command: &dyn Fn(u16) -> QemuCommand,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<(StartRecord, StartRecord)> {
    let port = free_port()?;
    let cmd = command(port);
    let mut vm = spawn_quiet(&cmd, log)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let served = read_until_served(
        &mut vm,
        addr,
        Instant::now() + timeout,
        ctx,
        BOOT_PROBE_EVERY,
    )
    .with_context(|| format!("boot: command: {cmd}"))?;
    let boot_host = vm.elapsed().saturating_sub(served.at.elapsed());
    let (mut conn, attempts, probe_failures) = (served.stream, served.failed, served.reasons);
    let served = wait_text(&mut vm, "TANDEM SERVED ", 0, timeout)?;
    let mut boot = StartRecord {
        host_ms: ms(boot_host),
        guest_ms: field(&served, "since_start_us").context("since_start_us")? as f64 / 1000.0,
        served,
        attempts,
        probe_failures,
        ..StartRecord::default()
    };

    // The second request meets the injected error.
    let t1 = Instant::now();
    // The old connection stays open meanwhile: closed at once, the guest could drop the
    // request unserved and count a probe's READ as the one that triggers the error instead.
    let _ = send_read(&mut conn);
    let again = read_until_served(&mut vm, addr, t1 + timeout, ctx, PROBE_EVERY)
        .context("restart in place")?;
    drop(conn);
    let restart_host = again.at.duration_since(t1);
    let (conn, attempts, restart_failures) = (again.stream, again.failed, again.reasons);
    drop(conn);
    let restart_line = wait_text(&mut vm, "TANDEM RESTART ", 0, timeout)?;
    let served2 = wait_text(&mut vm, "TANDEM SERVED ", 1, timeout)?;
    let at = field(&restart_line, "at_us").context("at_us")?;
    let first = field(&served2, "first_request_us").context("first_request_us")?;
    let (before, after) = split_at_restart(vm.history());
    boot.phases = phase_lines(before);
    boot.checkpoint = checkpoint_lines(before);
    let restart = StartRecord {
        host_ms: ms(restart_host),
        guest_ms: first.saturating_sub(at) as f64 / 1000.0,
        served: served2,
        restart: Some(restart_line),
        checkpoint: checkpoint_lines(after),
        phases: phase_lines(after),
        attempts,
        probe_failures: restart_failures,
    };
    vm.stop(STOP_GRACE);
    Ok((boot, restart))
}

/// A new probe connection this often while none has been greeted, after an injected error.
pub const PROBE_EVERY: Duration = Duration::from_millis(1);
/// The same while a VM boots: boots take hundreds of ms under TCG, and every probe's SYN
/// waits in QEMU's queue until the guest's NIC is up; a 1 ms flood of stale SYNs then
/// occupies the guest's client slots (until its TCP timeout frees them).
pub const BOOT_PROBE_EVERY: Duration = Duration::from_millis(5);
/// A connect not accepted in this long is given up; the next probe sends a fresh SYN
/// (QEMU's listening socket has a short backlog, and a dropped SYN is resent only after 1 s).
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(10);
/// A probe that makes no progress for this long is given up.
const PROBE_MAX_AGE: Duration = Duration::from_secs(2);
/// At most this many probes are kept open (the oldest is given up first): fewer than the
/// guest's 16 client slots, so the probes can never hold every slot while the guest is slow to
/// greet them (seen on a loaded host: every new probe refused for a minute).
const MAX_PROBES: usize = 12;
/// Probe failure reasons kept per start.
const MAX_REASONS: usize = 16;

/// Where a probe is in the NBD exchange; each step waits for `want` bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The 18-byte fixed-newstyle greeting.
    Greeting,
    /// The 10-byte reply to NBD_OPT_EXPORT_NAME (size and flags, no zeroes).
    ExportInfo,
    /// In transmission, waiting for its turn to send the READ: only one probe at a time
    /// sends one, since every READ served counts towards the injected error.
    Ready,
    /// The 16-byte simple reply and 4 KiB of data.
    ReadReply,
}

impl Step {
    fn want(self) -> usize {
        match self {
            Step::Greeting => 18,
            Step::ExportInfo => 10,
            Step::Ready => 0,
            Step::ReadReply => 16 + READ_LEN as usize,
        }
    }
}

/// One probe connection, driven without blocking so that a probe stuck on a dying or
/// restarting guest never holds the others up.
struct Probe {
    stream: TcpStream,
    since: Instant,
    step: Step,
    buf: Vec<u8>,
}

impl Probe {
    fn new(stream: TcpStream, since: Instant) -> Self {
        Probe {
            stream,
            since,
            step: Step::Greeting,
            buf: Vec::with_capacity(Step::ReadReply.want()),
        }
    }

    /// Read what has arrived and move on; `Ok(true)` once the READ reply is in.
    fn advance(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; 4096];
        loop {
            if self.step == Step::Ready {
                return Ok(false);
            }
            let room = self.step.want() - self.buf.len();
            match self.stream.read(&mut chunk[..room.min(4096)]) {
                Ok(0) => return Err(format!("closed while waiting for {}", self.what())),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(format!("{e} while waiting for {}", self.what())),
            }
            if self.buf.len() < self.step.want() {
                continue;
            }
            match self.step {
                Step::Greeting => {
                    if &self.buf[..8] != b"NBDMAGIC" || &self.buf[8..16] != b"IHAVEOPT" {
                        return Err("not an NBD newstyle greeting".into());
                    }
                    let mut msg = Vec::with_capacity(64);
                    msg.extend_from_slice(&3u32.to_be_bytes()); // FIXED_NEWSTYLE | NO_ZEROES
                    msg.extend_from_slice(&NBD_OPTS_MAGIC.to_be_bytes());
                    msg.extend_from_slice(&NBD_OPT_EXPORT_NAME.to_be_bytes());
                    msg.extend_from_slice(&(EXPORT.len() as u32).to_be_bytes());
                    msg.extend_from_slice(EXPORT.as_bytes());
                    self.send(&msg)?;
                    self.step = Step::ExportInfo;
                }
                Step::ExportInfo => self.step = Step::Ready,
                Step::Ready => unreachable!("returned above"),
                Step::ReadReply => {
                    let magic = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes"));
                    let error = u32::from_be_bytes(self.buf[4..8].try_into().expect("4 bytes"));
                    if magic != NBD_SIMPLE_REPLY_MAGIC || error != 0 {
                        return Err(format!("bad NBD reply (magic {magic:#x}, error {error})"));
                    }
                    return Ok(true);
                }
            }
            self.buf.clear();
        }
    }

    /// A small write on a fresh connection: it fits the socket buffer or the probe fails.
    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        match self.stream.write(bytes) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(n) => Err(format!("short write ({n} of {} bytes)", bytes.len())),
            Err(e) => Err(format!("write: {e}")),
        }
    }

    fn what(&self) -> &'static str {
        match self.step {
            Step::Greeting => "the greeting",
            Step::ExportInfo => "the export info",
            Step::Ready => "its turn to READ",
            Step::ReadReply => "the READ reply",
        }
    }
}

/// The probe that got its READ reply.
struct Served {
    /// Its connection, still open.
    stream: TcpStream,
    /// When the reply was in.
    at: Instant,
    /// Probes given up before.
    failed: u32,
    /// The first few reasons.
    reasons: Vec<String>,
}

/// Connect and read 4 KiB at 0, probing until a server answers or `deadline`; the console
/// is drained meanwhile.
///
/// QEMU's user networking accepts a connection at once and then forwards the SYN to the
/// guest; a guest whose stack is not up (or is restarting) never answers that SYN, and
/// QEMU resends it only seconds later. So silent probes are kept open and a new one is
/// opened every [`PROBE_EVERY`] (by a thread of its own, so that a slow accept in QEMU does
/// not hold up reading): once the guest listens again, the next probe reaches it.
fn read_until_served(
    vm: &mut Vm,
    addr: SocketAddr,
    deadline: Instant,
    ctx: &Ctx,
    every: Duration,
) -> anyhow::Result<Served> {
    let began = Instant::now();
    let stop = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<Result<(TcpStream, Instant), String>>();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let at = Instant::now();
                let r = TcpStream::connect_timeout(&addr, PROBE_CONNECT_TIMEOUT)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map(|s| (s, at))
                    .map_err(|e| format!("connect: {e}"));
                if tx.send(r).is_err() {
                    return;
                }
                std::thread::sleep(every.saturating_sub(at.elapsed()));
            }
        });
        let r = drive_probes(vm, addr, deadline, ctx, began, &rx);
        stop.store(true, Ordering::SeqCst);
        r
    })
}

/// The reading side of [`read_until_served`].
fn drive_probes(
    vm: &mut Vm,
    addr: SocketAddr,
    deadline: Instant,
    ctx: &Ctx,
    began: Instant,
    rx: &std::sync::mpsc::Receiver<Result<(TcpStream, Instant), String>>,
) -> anyhow::Result<Served> {
    let mut reasons = Vec::new();
    let mut failed = 0u32;
    let mut last_err = String::from("no probe answered");
    let mut note = |failed: &mut u32, why: String| {
        *failed += 1;
        if reasons.len() < MAX_REASONS {
            reasons.push(format!("{:.1} ms: {why}", ms(began.elapsed())));
        }
        why
    };
    let mut probes: std::collections::VecDeque<Probe> = std::collections::VecDeque::new();
    loop {
        while let Ok(r) = rx.try_recv() {
            match r {
                Ok((stream, at)) => probes.push_back(Probe::new(stream, at)),
                Err(e) => last_err = note(&mut failed, e),
            }
            if probes.len() > MAX_PROBES {
                probes.pop_front();
                failed += 1;
            }
        }
        if !probes.iter().any(|p| p.step == Step::ReadReply)
            && let Some(i) = probes.iter().position(|p| p.step == Step::Ready)
        {
            match probes[i].send(&read_request()) {
                Ok(()) => probes[i].step = Step::ReadReply,
                Err(e) => {
                    probes.remove(i);
                    last_err = note(&mut failed, e);
                }
            }
        }
        let now = Instant::now();
        let mut i = 0;
        while i < probes.len() {
            let p = &mut probes[i];
            let outcome = match p.advance() {
                Ok(false) if now.duration_since(p.since) > PROBE_MAX_AGE => {
                    Err(format!("no progress waiting for {}", p.what()))
                }
                other => other,
            };
            match outcome {
                Ok(false) => i += 1,
                Ok(true) => {
                    let served_at = Instant::now();
                    let p = probes.remove(i).expect("index in range");
                    p.stream.set_nonblocking(false)?;
                    return Ok(Served {
                        stream: p.stream,
                        at: served_at,
                        failed,
                        reasons,
                    });
                }
                Err(e) => {
                    let age = ms(probes[i].since.elapsed());
                    probes.remove(i);
                    last_err = note(&mut failed, format!("{e} (probe {age:.1} ms old)"));
                }
            }
        }
        if ctx.interrupted.load(Ordering::SeqCst) {
            vm.kill();
            return Err(Interrupted.into());
        }
        if Instant::now() >= deadline {
            vm.kill();
            bail!(
                "no NBD reply from {addr} before the deadline ({failed} probes given up, last: {last_err})\n{}",
                vm.context()
            );
        }
        if let Poll::Exited(exit) = vm.poll(Duration::from_micros(300)) {
            bail!("QEMU exited ({exit}) before serving\n{}", vm.context());
        }
    }
}

const NBD_OPTS_MAGIC: u64 = 0x4948_4156_454F_5054; // "IHAVEOPT"
const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const NBD_OPT_EXPORT_NAME: u32 = 1;
const READ_LEN: u32 = 4096;

/// A READ of 4 KiB at offset 0.
fn read_request() -> Vec<u8> {
    let mut req = Vec::with_capacity(28);
    req.extend_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes()); // flags
    req.extend_from_slice(&0u16.to_be_bytes()); // NBD_CMD_READ
    req.extend_from_slice(&1u64.to_be_bytes()); // handle
    req.extend_from_slice(&0u64.to_be_bytes()); // offset
    req.extend_from_slice(&READ_LEN.to_be_bytes());
    req
}

/// Send a READ of 4 KiB at offset 0.
fn send_read(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(&read_request())
}

/// Wait for the console line containing `prefix` (skipping `skip` earlier ones) and return
/// it from the prefix on.
fn wait_text(vm: &mut Vm, prefix: &str, skip: usize, timeout: Duration) -> anyhow::Result<String> {
    let find = |h: &[ConsoleLine]| {
        h.iter()
            .filter_map(|l| l.text.find(prefix).map(|i| l.text[i..].to_string()))
            .nth(skip)
    };
    if let Some(t) = find(vm.history()) {
        return Ok(t);
    }
    let mut seen = vm
        .history()
        .iter()
        .filter(|l| l.text.contains(prefix))
        .count();
    let line = vm.wait_for_line(&format!("a `{}` line", prefix.trim()), timeout, |l| {
        if l.text.contains(prefix) {
            seen += 1;
            seen > skip
        } else {
            false
        }
    })?;
    let i = line.text.find(prefix).expect("matched");
    Ok(line.text[i..].to_string())
}

/// `key=N` from a line.
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .find_map(|v| v.parse().ok())
}

/// The console before the first `TANDEM RESTART` line and from it on.
fn split_at_restart(h: &[ConsoleLine]) -> (&[ConsoleLine], &[ConsoleLine]) {
    let i = h
        .iter()
        .position(|l| l.text.contains("TANDEM RESTART "))
        .unwrap_or(h.len());
    h.split_at(i)
}

/// The `phases (us):` lines, parsed.
pub fn phase_lines(h: &[ConsoleLine]) -> Vec<PhaseLine> {
    h.iter().filter_map(|l| parse_phases(&l.text)).collect()
}

/// Parse one `... phases (us): a=1 b=2 total=3` line.
pub fn parse_phases(text: &str) -> Option<PhaseLine> {
    let (_, rest) = text.split_once("phases (us):")?;
    let phases = rest
        .split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    Some(PhaseLine {
        line: text.to_string(),
        phases,
    })
}

fn checkpoint_lines(h: &[ConsoleLine]) -> Vec<String> {
    h.iter()
        .filter(|l| l.text.contains("checkpoint: "))
        .map(|l| l.text.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::render::restart as render;

    #[test]
    fn fields_and_phases() {
        let l = "TANDEM SERVED first_request_us=1500 since_start_us=900 restarts=1";
        assert_eq!(field(l, "first_request_us"), Some(1500));
        assert_eq!(field(l, "since_start_us"), Some(900));
        assert_eq!(field(l, "start_us"), None);
        assert_eq!(
            field("TANDEM RESTART cause=\"panic\" n=1 at_us=77", "at_us"),
            Some(77)
        );
        let p = parse_phases("[ 0.1 INFO] phases (us): mem=10 storage=200 total=250").unwrap();
        assert_eq!(
            p.phases,
            vec![
                ("mem".to_string(), 10),
                ("storage".to_string(), 200),
                ("total".to_string(), 250)
            ]
        );
        assert!(parse_phases("nothing").is_none());
        assert_eq!(
            FaultKind::Pagefault.cmdline(2),
            "debug.panic_after_requests=2 debug.fault=pagefault"
        );
    }

    #[test]
    fn rows_table_chart() {
        let start = |h, g| StartRecord {
            host_ms: h,
            guest_ms: g,
            ..StartRecord::default()
        };
        let runs: Vec<RunRecord> = (1..=3)
            .map(|i| RunRecord {
                run: i,
                cold: start(1000.0 + f64::from(i), 500.0),
                restart_cold: start(400.0, 200.0),
                checkpoint: start(800.0, 300.0),
                restart: start(20.0, 10.0),
            })
            .collect();
        let rows = rows_of(&runs);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].host_ms.median, 1002.0);
        assert_eq!(rows[1].speedup_host, 1002.0 / 800.0);
        assert_eq!(rows[2].speedup_guest, 1.0);
        assert_eq!(rows[3].speedup_guest, 20.0);
        let r = RestartReport {
            accel: accel::Accel::Tcg,
            accel_reason: "test".into(),
            mem: "64M".into(),
            kind: FaultKind::Panic,
            runs: 3,
            disk_bytes: DISK_SIZE.bytes(),
            nvram_bytes: NVRAM_SIZE.bytes(),
            groups: vec![DiskGroup {
                disks: 8,
                rows,
                runs,
            }],
            wall_s: 1.0,
        };
        let text = render::table(&r);
        assert!(text.contains("restart, cold discovery"), "{text}");
        assert!(text.contains("20.0x"), "{text}");
        let svg = render::chart(&r).render();
        assert!(svg.contains("8 disk(s)"));
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["groups"][0]["rows"][3]["row"], "restart, checkpoint");
        assert_eq!(j["kind"], "panic");
    }
}
