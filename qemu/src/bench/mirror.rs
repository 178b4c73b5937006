//! `tandem bench mirror`: what the NVLOG mirror adds to a client's write latency (issue 16
//! §6), measured side by side with the mirror off.
//!
//! Under `mirror=sync` the guest holds a write's reply until the mirror sender on its host
//! has shipped the record to the other host and the receiver acknowledged it: one
//! interconnect round trip, plus the sender noticing the record (it polls the region while
//! idle) and the guest noticing the acknowledgement (it polls the mirror block). This bench
//! puts a number on that, and beside it the link's own TCP round trip, so the reader can see
//! how much of the extra is the link.
//!
//! One guest per configuration (q35, a sparse data disk, a fresh NVRAM file as its shared
//! region, `durability=nvlog`), all booted once and kept running for the whole run:
//! - `mirror=off`, the baseline;
//! - `mirror=sync`, with the sender and receiver daemons' code running in-process on
//!   threads ([`run_sender`], [`run_receiver`]), each pair on its own port and copy file;
//! - `mirror=async` with `mirror.max_lag`, which acknowledges without waiting while the
//!   copy is at most that many records behind.
//!
//! Every round measures every configuration and write kind once (QD1, 4 KiB, `--writes`
//! writes through this crate's NBD client, each timed from send to reply), starting at a
//! different configuration each round: machine noise, TCG's included, then lands on all of
//! them alike instead of on whichever ran last. The table shows medians over rounds of each
//! run's percentiles, the ratio to mirror off and the difference in µs (the mirror's extra
//! latency). Each round also times a TCP ping-pong (48-byte messages, the mirror frame
//! header's size) over the same link.
//!
//! The link is loopback by default. `--link-delay-us N` routes the mirrors (and the
//! ping-pong) through a relay that holds each direction's bytes N/2 µs ([`Link`]), so every
//! round trip over the interconnect grows by N µs and the extra latency should grow with
//! it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tandem_formats::cmdline::{key, word};

use super::failover::percentile;
use super::nbd::EXPORT;
use super::orchestrate::{
    boot_until_export, check_interrupted, dedup_in_order, scratch_dir, Progress, Summary, VmPlan,
};
use super::probe::{free_port, guest_nbd_port};
use super::render::Outputs;
use crate::accel;
use crate::builder::{Disk, DiskFormat, Machine, Nic, QemuCommand, SharedRegion};
use crate::mirror::daemon::{run_receiver, run_sender, ReceiveOpts, SendOpts};
use crate::nbd_client::NbdClient;
use crate::size::ByteSize;
use crate::vm::Vm;

/// Each guest's sparse data disk.
pub const DISK_SIZE: ByteSize = ByteSize::mib(64);
/// Each guest's NVRAM file (and the receiver's copy).
pub const NVRAM_SIZE: ByteSize = ByteSize::mib(16);
/// Bytes per write.
pub const WRITE_BYTES: usize = 4096;
/// Blocks the writes cycle through (from offset 0).
pub const SPAN_BLOCKS: u64 = 256;
/// Untimed writes per configuration before the first round (the gate sees the mirror up).
const WARMUP_WRITES: u32 = 50;
/// Timed TCP round trips per round (after a few untimed ones).
const PINGS: usize = 200;
/// The ping-pong's message: the size of a mirror frame header (a commit or an ack).
const PING_BYTES: usize = 48;
/// The guest's `mirror.timeout_ms` (generous: TCG on a loaded host).
const MIRROR_TIMEOUT_MS: u64 = 2000;
/// Bound on one NBD request, a ping, or the mirror getting in sync.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The mirror setting of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorMode {
    /// `mirror=off`: the baseline.
    Off,
    /// `mirror=sync`: replies wait for the mirror's acknowledgement.
    Sync,
    /// `mirror=async mirror.max_lag=N`.
    Async,
}

impl MirrorMode {
    /// The guest command-line words.
    pub fn words(self, max_lag: u64) -> String {
        let policy = word(key::MIRROR_POLICY, "stop");
        let timeout = word(key::MIRROR_TIMEOUT_MS, MIRROR_TIMEOUT_MS);
        match self {
            MirrorMode::Off => word(key::MIRROR, "off"),
            MirrorMode::Sync => format!("{} {policy} {timeout}", word(key::MIRROR, "sync")),
            MirrorMode::Async => format!(
                "{} {} {policy} {timeout}",
                word(key::MIRROR, "async"),
                word(key::MIRROR_MAX_LAG, max_lag)
            ),
        }
    }

    /// The table's name for it.
    pub fn label(self, max_lag: u64) -> String {
        match self {
            MirrorMode::Off => "mirror=off".into(),
            MirrorMode::Sync => "mirror=sync".into(),
            MirrorMode::Async => format!("mirror=async max_lag={max_lag}"),
        }
    }
}

/// What kind of write the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteKind {
    /// NBD WRITE with the FUA flag.
    Fua,
    /// NBD WRITE without it.
    Plain,
}

impl WriteKind {
    /// The table's name for it.
    pub fn label(self) -> &'static str {
        match self {
            WriteKind::Fua => "FUA",
            WriteKind::Plain => "plain",
        }
    }
}

/// What `tandem bench mirror` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPlan {
    /// Configurations, in table order (mirror off first when present: the ratios' base).
    pub modes: Vec<MirrorMode>,
    /// Write kinds.
    pub kinds: Vec<WriteKind>,
    /// Timed writes per configuration, kind and round.
    pub writes: u32,
    /// Rounds.
    pub rounds: u32,
    /// `mirror.max_lag` of the async configuration.
    pub max_lag: u64,
    /// Added delay (µs) on the interconnect; 0: loopback.
    pub link_delay_us: u32,
    /// Where the scratch directory goes (default: the system temp dir).
    pub work_dir: Option<PathBuf>,
    /// Seconds a boot (or the mirror getting in sync) may take.
    pub boot_timeout: u64,
    /// `--json` and `--svg`.
    pub outputs: Outputs,
    /// Guest and QEMU options.
    pub vm: VmPlan,
}

/// One run: one configuration, one kind, one round.
#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    /// 1-based round.
    pub round: u32,
    /// The configuration.
    pub mode: MirrorMode,
    /// The write kind.
    pub kind: WriteKind,
    /// Timed writes.
    pub writes: u32,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Slowest write, µs.
    pub max_us: f64,
    /// Writes per second over the run.
    pub iops: f64,
}

/// One table row: a configuration and kind over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorRow {
    /// The configuration.
    pub mode: MirrorMode,
    /// Its table name.
    pub label: String,
    /// The write kind.
    pub kind: WriteKind,
    /// Each round's median latency, µs, summarised.
    pub p50_us: Summary,
    /// Each round's 90th percentile, µs.
    pub p90_us: Summary,
    /// Each round's 99th percentile, µs.
    pub p99_us: Summary,
    /// Each round's IOPS.
    pub iops: Summary,
    /// Median p50 / mirror off's median p50 (same kind); `None` without a mirror-off row.
    pub p50_ratio: Option<f64>,
    /// Median p50 minus mirror off's: the mirror's extra latency, µs.
    pub extra_p50_us: Option<f64>,
    /// The same at p99.
    pub extra_p99_us: Option<f64>,
}

/// The interconnect the mirrors ran over.
#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    /// `loopback`, or `relay` (loopback through a delaying relay).
    pub kind: String,
    /// What it was, in words.
    pub description: String,
    /// Delay added to every round trip, µs.
    pub delay_us: u32,
    /// Each round's median TCP round trip (48-byte ping-pong), µs, summarised.
    pub rtt_p50_us: Summary,
    /// Each round's median round trip, µs.
    pub rtt_rounds_us: Vec<f64>,
}

/// The report (`--json`; [`super::render::mirror`] renders it).
#[derive(Debug, Clone, Serialize)]
pub struct MirrorReport {
    /// Accelerator.
    pub accel: accel::Accel,
    /// Why.
    pub accel_reason: String,
    /// Guest RAM.
    pub mem: String,
    /// Timed writes per run.
    pub writes: u32,
    /// Rounds.
    pub rounds: u32,
    /// Bytes per write.
    pub write_bytes: usize,
    /// `mirror.max_lag` of the async configuration.
    pub max_lag: u64,
    /// The interconnect.
    pub link: LinkReport,
    /// One row per kind and configuration.
    pub rows: Vec<MirrorRow>,
    /// Every run.
    pub runs: Vec<RunStats>,
    /// Wall time, seconds.
    pub wall_s: f64,
}

/// `tandem bench mirror`: run, print the table, write JSON/SVG; returns the exit status.
pub fn bench_mirror(plan: &MirrorPlan) -> anyhow::Result<i32> {
    super::run_interruptible("the guests and mirrors were stopped", |interrupted| {
        run_and_report(plan, interrupted)
    })
}

/// Run, print the table on stdout, write `--json` and `--svg`; returns the report.
pub fn run_and_report(plan: &MirrorPlan, interrupted: &AtomicBool) -> anyhow::Result<MirrorReport> {
    let report = run(plan, interrupted)?;
    super::render::publish(&report, &plan.outputs)?;
    eprintln!("tandem: bench mirror took {:.0} s", report.wall_s);
    Ok(report)
}

/// Run the bench and return the report (nothing on stdout).
pub fn run(plan: &MirrorPlan, interrupted: &AtomicBool) -> anyhow::Result<MirrorReport> {
    let started = Instant::now();
    let (modes, kinds) = lists(plan)?;
    let accel = accel::choose(plan.vm.accel)?;
    let qemu = crate::qemu_bin::ensure_qemu()?;
    let image = crate::image::ensure(plan.vm.image.as_deref())?;
    let scratch = scratch_dir(plan.work_dir.as_deref())?;
    let link = Link::new(plan.link_delay_us);
    eprintln!(
        "tandem: {} configuration(s) ({}), {} round(s) x {} write(s) x {} kind(s); q35 {}, -m {}; link: {}",
        modes.len(),
        modes.iter().map(|m| m.label(plan.max_lag)).collect::<Vec<_>>().join(", "),
        plan.rounds,
        plan.writes,
        kinds.len(),
        accel,
        plan.vm.mem,
        link.describe()
    );
    let ctx = Ctx {
        plan,
        qemu,
        image,
        accel: accel.accel,
        link: &link,
        key: crate::mgmt::generate_key()?,
        interrupted,
    };
    let mut guests = Vec::new();
    for &mode in &modes {
        let dir = scratch.path().join(format!("{mode:?}").to_lowercase());
        std::fs::create_dir_all(&dir)?;
        let mut g = start_guest(&ctx, mode, &dir)?;
        for kind in [WriteKind::Fua, WriteKind::Plain] {
            g.writes(kind, WARMUP_WRITES, interrupted)
                .with_context(|| format!("{}: warm-up writes", mode.label(plan.max_lag)))?;
        }
        guests.push(g);
    }
    let (runs, rtts) = rounds(&ctx, &mut guests, &kinds)?;
    drop(guests);
    Ok(MirrorReport {
        accel: accel.accel,
        accel_reason: accel.reason,
        mem: plan.vm.mem.to_string(),
        writes: plan.writes,
        rounds: plan.rounds,
        write_bytes: WRITE_BYTES,
        max_lag: plan.max_lag,
        link: LinkReport {
            kind: link.kind().into(),
            description: link.describe(),
            delay_us: plan.link_delay_us,
            rtt_p50_us: Summary::of(&rtts),
            rtt_rounds_us: rtts,
        },
        rows: rows_of(&runs, &modes, &kinds, plan.max_lag),
        runs,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// The plan's configurations (mirror off first) and kinds, checked.
fn lists(plan: &MirrorPlan) -> anyhow::Result<(Vec<MirrorMode>, Vec<WriteKind>)> {
    let mut modes = plan.modes.clone();
    dedup_in_order(&mut modes);
    // Off first: the ratios' base, and the table reads top down from it.
    modes.sort_by_key(|m| *m != MirrorMode::Off);
    let mut kinds = plan.kinds.clone();
    dedup_in_order(&mut kinds);
    if modes.is_empty() || kinds.is_empty() {
        bail!("--modes and --kinds must name at least one each");
    }
    if plan.writes == 0 || plan.rounds == 0 {
        bail!("--writes and --rounds must be at least 1");
    }
    Ok((modes, kinds))
}

/// The interleaved rounds: every guest and kind once per round, the order rotated each
/// round, and the link's round trip. Returns every run and each round's median RTT (µs).
fn rounds(
    ctx: &Ctx,
    guests: &mut [Guest],
    kinds: &[WriteKind],
) -> anyhow::Result<(Vec<RunStats>, Vec<f64>)> {
    let plan = ctx.plan;
    let total = u64::from(plan.rounds) * (guests.len() * kinds.len()) as u64;
    let mut progress = Progress::new(total);
    let mut runs = Vec::new();
    let mut rtts = Vec::new();
    for round in 1..=plan.rounds {
        check_interrupted(ctx.interrupted)?;
        let rtt = tenth(percentile(&round_trips(ctx.link)?, 50.0));
        progress.note(&format!("round {round}: link round trip p50 {rtt:.0} µs"));
        rtts.push(rtt);
        let n = guests.len();
        for i in 0..n {
            let g = &mut guests[(i + round as usize - 1) % n];
            for &kind in kinds {
                let what = format!(
                    "round {round}: {} {}",
                    g.mode.label(plan.max_lag),
                    kind.label()
                );
                progress.start(&what);
                let t = Instant::now();
                let lat = g.writes(kind, plan.writes, ctx.interrupted)?;
                let s = stats(round, g.mode, kind, &lat, t.elapsed());
                progress.finish_one(
                    &what,
                    &format!(
                        "p50 {:.0} µs, p99 {:.0} µs, {:.0} IOPS",
                        s.p50_us, s.p99_us, s.iops
                    ),
                );
                runs.push(s);
            }
        }
    }
    progress.finish();
    Ok((runs, rtts))
}

/// A run's statistics from its latencies (µs) and its wall time (IOPS: the writes are back
/// to back, so this is 1 / the mean latency plus the client's own time per write).
fn stats(round: u32, mode: MirrorMode, kind: WriteKind, lat: &[f64], wall: Duration) -> RunStats {
    let wall_s = wall.as_secs_f64();
    RunStats {
        round,
        mode,
        kind,
        writes: lat.len() as u32,
        p50_us: tenth(percentile(lat, 50.0)),
        p90_us: tenth(percentile(lat, 90.0)),
        p99_us: tenth(percentile(lat, 99.0)),
        max_us: tenth(lat.iter().copied().fold(f64::NAN, f64::max)),
        iops: if wall_s > 0.0 {
            tenth(lat.len() as f64 / wall_s)
        } else {
            f64::NAN
        },
    }
}

/// `v` to 0.1 (keeps the JSON readable; µs and IOPS need no more).
fn tenth(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The table rows: per kind, per configuration, medians over rounds and the comparison
/// with mirror off.
pub fn rows_of(
    runs: &[RunStats],
    modes: &[MirrorMode],
    kinds: &[WriteKind],
    max_lag: u64,
) -> Vec<MirrorRow> {
    let mut rows = Vec::new();
    for &kind in kinds {
        let of = |mode: MirrorMode, f: fn(&RunStats) -> f64| {
            let v: Vec<f64> = runs
                .iter()
                .filter(|r| r.mode == mode && r.kind == kind)
                .map(f)
                .collect();
            Summary::of(&v)
        };
        let base = modes.contains(&MirrorMode::Off).then(|| {
            (
                of(MirrorMode::Off, |r| r.p50_us),
                of(MirrorMode::Off, |r| r.p99_us),
            )
        });
        for &mode in modes {
            let (p50, p99) = (of(mode, |r| r.p50_us), of(mode, |r| r.p99_us));
            rows.push(MirrorRow {
                mode,
                label: mode.label(max_lag),
                kind,
                p50_us: p50,
                p90_us: of(mode, |r| r.p90_us),
                p99_us: p99,
                iops: of(mode, |r| r.iops),
                p50_ratio: base.map(|(b, _)| p50.median / b.median),
                extra_p50_us: base.map(|(b, _)| p50.median - b.median),
                extra_p99_us: base.map(|(_, b)| p99.median - b.median),
            });
        }
    }
    rows
}

/// What starting a guest needs.
struct Ctx<'a> {
    plan: &'a MirrorPlan,
    qemu: PathBuf,
    image: PathBuf,
    accel: accel::Accel,
    link: &'a Link,
    key: tandem_formats::mgmt_auth::Key,
    interrupted: &'a AtomicBool,
}

/// One configuration's running guest (and its mirror's two ends). Dropping it stops the
/// mirror threads, then QEMU.
struct Guest {
    mode: MirrorMode,
    addr: SocketAddr,
    client: NbdClient,
    next: u64,
    _mirror: Option<MirrorEnds>,
    _vm: Vm,
}

impl Guest {
    /// `n` QD1 writes of `kind`, cycling through [`SPAN_BLOCKS`]; each one's latency, µs.
    fn writes(
        &mut self,
        kind: WriteKind,
        n: u32,
        interrupted: &AtomicBool,
    ) -> anyhow::Result<Vec<f64>> {
        let mut buf = vec![0u8; WRITE_BYTES];
        let mut lat = Vec::with_capacity(n as usize);
        for _ in 0..n {
            if lat.len() % 256 == 0 {
                check_interrupted(interrupted)?;
            }
            let seq = self.next;
            self.next += 1;
            buf[..8].copy_from_slice(&seq.to_le_bytes());
            let at = (seq % SPAN_BLOCKS) * WRITE_BYTES as u64;
            let t = Instant::now();
            self.client
                .write(at, &buf, kind == WriteKind::Fua)
                .with_context(|| format!("NBD write to {} ({:?})", self.addr, self.mode))?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(lat)
    }
}

/// A mirror's sender and receiver threads; stopped and joined when dropped.
struct MirrorEnds {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Drop for MirrorEnds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Err(e)) => eprintln!("tandem: mirror thread: {e:#}"),
                Err(_) => eprintln!("tandem: a mirror thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

/// Boots `mode`'s guest in `dir` and, for a mirrored one, starts the receiver (on the
/// link's far side) and the sender, and waits until the copy is in sync.
fn start_guest(ctx: &Ctx, mode: MirrorMode, dir: &Path) -> anyhow::Result<Guest> {
    let plan = ctx.plan;
    let disk = dir.join("disk.raw");
    crate::state::create_sparse_disk(&disk, DISK_SIZE)?;
    let nv = crate::state::ensure_nvram(&dir.join("nvram.bin"), NVRAM_SIZE)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut ends = MirrorEnds {
        stop: Arc::clone(&stop),
        threads: Vec::new(),
    };
    let guest = format!("bench-{mode:?}").to_lowercase();
    let recv_status = dir.join("receiver.status");
    let listen = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port()?);
    let peer = ctx.link.route(listen)?;
    if mode != MirrorMode::Off {
        let o = ReceiveOpts {
            guest: guest.clone(),
            copy: dir.join("copy.bin"),
            size: NVRAM_SIZE.bytes(),
            listen,
            key: ctx.key.clone(),
            status: Some(recv_status.clone()),
            keep: false,
        };
        let stop = Arc::clone(&stop);
        ends.threads.push(
            std::thread::Builder::new()
                .name("mirror-receive".into())
                .spawn(move || run_receiver(&o, &stop))?,
        );
    }
    let port = free_port()?;
    let mut words = format!(
        "{} {}",
        word(key::DURABILITY, "nvlog"),
        mode.words(plan.max_lag)
    );
    if let Some(extra) = &plan.vm.cmdline {
        words = format!("{words} {extra}");
    }
    let cmd = QemuCommand::new(&ctx.qemu)
        .name(format!("tandem-bench-mirror-{mode:?}").to_lowercase())
        .machine(Machine::Q35)
        .accel(ctx.accel)
        .memory(plan.vm.mem)
        .smp(plan.vm.smp)
        .kernel(&ctx.image)
        .no_reboot(true)
        .disk(Disk::new(&disk).with_format(DiskFormat::Raw))
        .nic(Nic::user().forward(port, guest_nbd_port(plan.vm.cmdline.as_deref())))
        .shared_region(SharedRegion::new(&nv.path, nv.size))
        .cmdline(&words);
    let timeout = Duration::from_secs(plan.boot_timeout);
    let vm = boot_until_export(
        &cmd,
        EXPORT,
        &dir.join("console.log"),
        timeout,
        ctx.interrupted,
    )
    .with_context(|| mode.label(plan.max_lag))?;
    if mode != MirrorMode::Off {
        let o = SendOpts {
            guest,
            region: nv.path.clone(),
            peer,
            key: ctx.key.clone(),
            status: Some(dir.join("sender.status")),
            outdate_cmd: None,
            uptodate_cmd: None,
        };
        ends.threads.push(
            std::thread::Builder::new()
                .name("mirror-send".into())
                .spawn(move || run_sender(&o, &stop))?,
        );
        wait_synced(&recv_status, timeout, ctx.interrupted)
            .with_context(|| mode.label(plan.max_lag))?;
    }
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let client = NbdClient::connect(addr, EXPORT, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr} ({})", mode.label(plan.max_lag)))?;
    Ok(Guest {
        mode,
        addr,
        client,
        next: 0,
        _mirror: (mode != MirrorMode::Off).then_some(ends),
        _vm: vm,
    })
}

/// Waits until the receiver's status file says a sender completed a full pass.
fn wait_synced(status: &Path, timeout: Duration, interrupted: &AtomicBool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted(interrupted)?;
        let synced = std::fs::read_to_string(status)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["synced"] == serde_json::Value::Bool(true));
        if synced {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the mirror's copy was not in sync within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`PINGS`] timed TCP round trips over the link, µs (an echo server on the far side).
fn round_trips(link: &Link) -> anyhow::Result<Vec<f64>> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let far = link.route(l.local_addr()?)?;
    let server = std::thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || echo_one(&l))?;
    let mut c = TcpStream::connect_timeout(&far, IO_TIMEOUT)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; PING_BYTES];
    let mut rtt = Vec::with_capacity(PINGS);
    for i in 0..PINGS + 20 {
        let t = Instant::now();
        c.write_all(&buf)?;
        c.read_exact(&mut buf)?;
        if i >= 20 {
            rtt.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(c);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the echo server panicked"))??;
    Ok(rtt)
}

/// Accepts one connection on `l` (within [`IO_TIMEOUT`]) and echoes it until EOF.
fn echo_one(l: &TcpListener) -> anyhow::Result<()> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e).context("echo: accept"),
        }
    };
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; PING_BYTES];
    loop {
        match s.read_exact(&mut buf) {
            Ok(()) => s.write_all(&buf)?,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e).context("echo: read"),
        }
    }
}

/// The interconnect between the mirror's ends (and the ping-pong): loopback, or loopback
/// through a relay that holds each direction's bytes half the added delay, so every round
/// trip takes `delay_us` longer. (A relay, not `tc qdisc netem`: kernels without the netem
/// module, like this project's CI machines, have no other way to delay a link; the relay
/// also needs no root. It delays with the host's sleep, so the real added delay is a little
/// more than asked: the measured round trip says how much.)
pub struct Link {
    delay_us: u32,
    stop: Arc<AtomicBool>,
    relays: Mutex<Vec<JoinHandle<()>>>,
}

impl Link {
    /// A link adding `delay_us` to every round trip (0: plain loopback).
    pub fn new(delay_us: u32) -> Link {
        Link {
            delay_us,
            stop: Arc::new(AtomicBool::new(false)),
            relays: Mutex::new(Vec::new()),
        }
    }

    /// `loopback` or `relay`.
    pub fn kind(&self) -> &'static str {
        if self.delay_us == 0 {
            "loopback"
        } else {
            "relay"
        }
    }

    /// What the output says the link was.
    pub fn describe(&self) -> String {
        match self.delay_us {
            0 => "loopback, no added delay".into(),
            d => format!(
                "loopback through a relay asked to add {d} µs per round trip (it sleeps: the \
                 measured round trip says what it really adds)"
            ),
        }
    }

    /// The address that reaches `target` over the link: `target` itself on plain loopback,
    /// else a new relay's.
    pub fn route(&self, target: SocketAddr) -> anyhow::Result<SocketAddr> {
        if self.delay_us == 0 {
            return Ok(target);
        }
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = l.local_addr()?;
        l.set_nonblocking(true)?;
        let half = Duration::from_micros(u64::from(self.delay_us)) / 2;
        let stop = Arc::clone(&self.stop);
        let t = std::thread::Builder::new()
            .name("bench-link".into())
            .spawn(move || relay(&l, target, half, &stop))?;
        self.relays.lock().expect("relays").push(t);
        Ok(addr)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.relays.lock().expect("relays").drain(..) {
            let _ = t.join();
        }
    }
}

/// Accepts connections on `l` until `stop`, relaying each to `target` with `half` the
/// delay in each direction.
fn relay(l: &TcpListener, target: SocketAddr, half: Duration, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((near, _)) => {
                let Ok(far) = TcpStream::connect_timeout(&target, IO_TIMEOUT) else {
                    continue; // the near side sees its connection closed
                };
                let pipes = (|| -> std::io::Result<()> {
                    near.set_nonblocking(false)?;
                    for s in [&near, &far] {
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(Duration::from_millis(200)))?;
                    }
                    pipe(near.try_clone()?, far.try_clone()?, half, stop)?;
                    pipe(far, near, half, stop)
                })();
                if let Err(e) = pipes {
                    eprintln!("tandem: link relay: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                eprintln!("tandem: link relay: {e}");
                return;
            }
        }
    }
}

/// One direction of a relayed connection: a reader stamps each chunk with its due time, a
/// writer sends it then (so chunks overlap in flight, as on a long wire). EOF or `stop` on
/// the reader ends the writer's side with a shutdown, which the far end sees as EOF.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let stop = Arc::clone(stop);
    std::thread::Builder::new()
        .name("bench-link-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::SeqCst) {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
            let _ = from.shutdown(std::net::Shutdown::Read);
        })?;
    std::thread::Builder::new()
        .name("bench-link-write".into())
        .spawn(move || {
            for (due, bytes) in rx {
                let wait = due.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                if to.write_all(&bytes).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: MirrorMode, kind: WriteKind, round: u32, p50: f64) -> RunStats {
        RunStats {
            round,
            mode,
            kind,
            writes: 10,
            p50_us: p50,
            p90_us: p50 * 1.5,
            p99_us: p50 * 2.0,
            max_us: p50 * 3.0,
            iops: 1e6 / p50,
        }
    }

    #[test]
    fn words_and_labels() {
        assert_eq!(MirrorMode::Off.words(64), "mirror=off");
        assert_eq!(
            MirrorMode::Sync.words(64),
            "mirror=sync mirror.policy=stop mirror.timeout_ms=2000"
        );
        assert!(MirrorMode::Async.words(8).contains("mirror.max_lag=8"));
        assert_eq!(MirrorMode::Async.label(8), "mirror=async max_lag=8");
    }

    #[test]
    fn rows_compare_with_mirror_off() {
        let runs = [
            run(MirrorMode::Off, WriteKind::Fua, 1, 100.0),
            run(MirrorMode::Off, WriteKind::Fua, 2, 120.0),
            run(MirrorMode::Off, WriteKind::Fua, 3, 110.0),
            run(MirrorMode::Sync, WriteKind::Fua, 1, 300.0),
            run(MirrorMode::Sync, WriteKind::Fua, 2, 330.0),
            run(MirrorMode::Sync, WriteKind::Fua, 3, 320.0),
        ];
        let rows = rows_of(
            &runs,
            &[MirrorMode::Off, MirrorMode::Sync],
            &[WriteKind::Fua],
            64,
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].p50_us.median, 110.0);
        assert_eq!(rows[0].p50_ratio, Some(1.0));
        assert_eq!(rows[1].p50_us.median, 320.0);
        assert_eq!(rows[1].extra_p50_us, Some(210.0));
        assert_eq!(rows[1].extra_p99_us, Some(420.0));
        let only = rows_of(&runs, &[MirrorMode::Sync], &[WriteKind::Fua], 64);
        assert_eq!(only[0].p50_ratio, None);
    }

    #[test]
    fn report_renders() {
        use crate::bench::render::Report;
        let runs = vec![
            run(MirrorMode::Off, WriteKind::Fua, 1, 400.0),
            run(MirrorMode::Sync, WriteKind::Fua, 1, 1200.0),
        ];
        let link = Link::new(500);
        let r = MirrorReport {
            accel: accel::Accel::Tcg,
            accel_reason: String::new(),
            mem: "64M".into(),
            writes: 10,
            rounds: 1,
            write_bytes: WRITE_BYTES,
            max_lag: 64,
            link: LinkReport {
                kind: link.kind().into(),
                description: link.describe(),
                delay_us: 500,
                rtt_p50_us: Summary::of(&[800.0]),
                rtt_rounds_us: vec![800.0],
            },
            rows: rows_of(
                &runs,
                &[MirrorMode::Off, MirrorMode::Sync],
                &[WriteKind::Fua],
                64,
            ),
            runs,
            wall_s: 1.0,
        };
        let t = r.table();
        assert!(
            t.contains("round trip (48-byte ping-pong) p50 800 µs"),
            "{t}"
        );
        assert!(
            t.contains("(FUA writes, p50): +800 µs = 1.0 x the link's round trip"),
            "{t}"
        );
        let svg = r.svg();
        assert!(
            svg.contains("1200 µs (+800)") && svg.contains("relay +500 µs"),
            "{svg}"
        );
    }

    #[test]
    fn run_stats() {
        let lat: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = stats(
            1,
            MirrorMode::Off,
            WriteKind::Plain,
            &lat,
            Duration::from_millis(50),
        );
        assert_eq!(s.writes, 100);
        assert_eq!(s.p50_us, 51.0);
        assert_eq!(s.p99_us, 99.0);
        assert_eq!(s.max_us, 100.0);
        assert_eq!(s.iops, 2000.0);
    }
}
