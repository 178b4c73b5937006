//! `tandem check`: random NBD operations from a real client against the real guest, with
//! crashes at random points, every read compared with the reference model (`tandem-model`).
//!
//! The guest boots as `tandem run` boots it (q35, virtio-blk data disks created fresh, the
//! NVRAM region, user networking with the NBD and management ports forwarded), with
//! `durability=disk` or `nvlog`. A seeded generator then drives every export over several
//! pipelined connections ([`client`]): READ, WRITE (± FUA), WRITE_ZEROES (± NO_HOLE, ± FUA),
//! TRIM (± FUA), FLUSH and CACHE, small and large, concentrated on a hot area so that
//! operations overlap in time and space. The model refuses to start a change that overlaps
//! one in flight (NBD leaves such races to the server), so the generator picks again.
//!
//! At random points, with requests in flight, the guest crashes in one of three ways:
//! - `panic`: `inject panic` through the management port; the guest restarts in place.
//! - `reset`: QMP `system_reset`; the guest boots again in the same QEMU.
//! - `kill`: SIGKILL of QEMU, then a fresh QEMU on the same disks and NVRAM file.
//!
//! Replies that arrived before the client closed its connections count as acknowledged;
//! everything else in flight is "old or new" ([`tandem_model::Model::crash`]). Once the
//! guest serves again the client reconnects, reads back every range the model is unsure of
//! ([`tandem_model::Model::uncertain_ranges`]) and checks it, then goes on. At the end every
//! export is read back whole.
//!
//! The first divergence stops the run: the report names the seed and the operations on the
//! diverging range (with the crashes between them) that led to it.

pub mod client;

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};
use tandem_formats::cmdline::{key, word};

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tandem_model::{Durability, Kind, Model, OpId, Refused};

use self::client::{cflag, cmd, tflag, Conn, Event};
use crate::builder::{Disk, DiskFormat, Machine, Nic, QemuCommand, SharedRegion};
use crate::cli::VmArgs;
use crate::size::ByteSize;
use crate::vm::{Poll, SpawnOptions, Vm};

/// The guest's NBD port.
const GUEST_NBD_PORT: u16 = 10809;
/// The guest's management port.
const GUEST_MGMT_PORT: u16 = 10810;
/// Longest READ the checker sends when reading back ranges.
const READBACK_CHUNK: u64 = 1 << 20;
/// Operations kept for the report of a divergence.
const HISTORY_KEEP: usize = 200_000;
/// Restarts in place the guest allows per boot (`MAX_RESTARTS` in the guest is 8); past
/// this the checker crashes it another way.
const PANICS_PER_BOOT: u32 = 6;
/// Connections at once, at most (the guest serves 16 clients; this leaves some for others,
/// e.g. an operator's `nbdinfo` during a soak).
const MAX_CONNS: u32 = 12;
/// Without a terminal, a progress line this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// `--durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckDurability {
    /// FLUSH and FUA: on the disk, flushed.
    Disk,
    /// Every acknowledged write is in the NVRAM log.
    Nvlog,
}

impl CheckDurability {
    fn model(self) -> Durability {
        match self {
            CheckDurability::Disk => Durability::Disk,
            CheckDurability::Nvlog => Durability::Nvlog,
        }
    }

    fn word(self) -> &'static str {
        match self {
            CheckDurability::Disk => "disk",
            CheckDurability::Nvlog => "nvlog",
        }
    }
}

/// A way to crash the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CrashKind {
    /// `inject panic` through the management port: restart in place.
    Panic,
    /// QMP `system_reset`: the guest boots again in the same QEMU.
    Reset,
    /// SIGKILL of QEMU, then a fresh QEMU on the same disks and NVRAM.
    Kill,
}

/// `tandem check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// When FLUSH and FUA return (the guest's `durability=`).
    #[arg(long, value_enum, default_value_t = CheckDurability::Disk)]
    pub durability: CheckDurability,
    /// Seed of the operation and crash sequence (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Operations to complete (default 2000 unless --seconds is given).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Run for this many seconds (with --ops: whichever ends first).
    #[arg(long, value_name = "SECS")]
    pub seconds: Option<u64>,
    /// Crash kinds to use (comma-separated); `none` for no crashes.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "panic,reset,kill"
    )]
    pub crashes: Vec<CrashChoice>,
    /// Mean number of operations between two crashes.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub crash_every: u64,
    /// Data disks (exports), each created fresh.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub disks: u32,
    /// Size of each data disk (the export is 1 MiB smaller).
    #[arg(long, default_value = "24M", value_name = "SIZE")]
    pub disk_size: ByteSize,
    /// Size of the NVRAM file (a power of two).
    #[arg(long, default_value = "16M", value_name = "SIZE", value_parser = crate::cli::parse_nvram_size)]
    pub nvram_size: ByteSize,
    /// No NVRAM device: the guest keeps its write log in its RAM (only `--durability disk`
    /// applies; a crash loses what was not flushed).
    #[arg(long, conflicts_with = "nvram_size")]
    pub no_nvram: bool,
    /// Connections per export.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=4))]
    pub conns: u32,
    /// Requests in flight per connection, at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub depth: u32,
    /// Where the disks, NVRAM file and console logs go (kept). Default: a temporary
    /// directory, removed after a clean run and kept after a divergence or an error.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Bound on one boot or restart, until the guest serves again.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub boot_timeout: u64,
    /// Bound on each request's reply and each connect.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub io_timeout: u64,
    /// Operations on the diverging range shown with a divergence.
    #[arg(long, default_value_t = 50)]
    pub history: usize,
    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub vm: VmArgs,
}

/// `--crashes` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CrashChoice {
    /// See [`CrashKind::Panic`].
    Panic,
    /// See [`CrashKind::Reset`].
    Reset,
    /// See [`CrashKind::Kill`].
    Kill,
    /// No crashes.
    None,
}

/// Crashes by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CrashCounts {
    /// Restarts in place after `inject panic`.
    pub panic: u64,
    /// QMP `system_reset`.
    pub reset: u64,
    /// SIGKILL of QEMU and a fresh boot.
    pub kill: u64,
}

impl CrashCounts {
    /// All crashes.
    pub fn total(&self) -> u64 {
        self.panic + self.reset + self.kill
    }

    fn add(&mut self, k: CrashKind) {
        match k {
            CrashKind::Panic => self.panic += 1,
            CrashKind::Reset => self.reset += 1,
            CrashKind::Kill => self.kill += 1,
        }
    }
}

/// Operations completed by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    /// READ.
    pub read: u64,
    /// WRITE (FUA ones included).
    pub write: u64,
    /// WRITE with FUA.
    pub write_fua: u64,
    /// WRITE_ZEROES.
    pub zero: u64,
    /// TRIM.
    pub trim: u64,
    /// FLUSH.
    pub flush: u64,
    /// CACHE.
    pub cache: u64,
    /// Requests whose reply never came (lost in a crash).
    pub lost: u64,
}

/// What a run found (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The seed.
    pub seed: u64,
    /// The guest's durability setting.
    pub durability: CheckDurability,
    /// Operations completed (replies received).
    pub ops: u64,
    /// By kind.
    pub op_counts: OpCounts,
    /// Crashes by kind.
    pub crashes: CrashCounts,
    /// Sectors checked against the model (reads and read-backs after crashes).
    pub sectors_checked: u64,
    /// Error replies.
    pub errors: u64,
    /// Divergences (the run stops at the first).
    pub divergences: u64,
    /// The first divergence, with the seed and the operations that led to it.
    pub divergence: Option<String>,
    /// QEMU processes started.
    pub boots: u32,
    /// Exports and their sizes in bytes.
    pub export_bytes: Vec<u64>,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
    /// Wall time, seconds.
    pub wall_s: f64,
    /// The work directory, when it was kept.
    pub work_dir: Option<PathBuf>,
}

impl CheckReport {
    /// The one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "tandem check: seed={} durability={} ops={} crashes={} (panic={} reset={} kill={}) \
             sectors_checked={} errors={} divergences={} boots={} wall={:.0}s{}",
            self.seed,
            self.durability.word(),
            self.ops,
            self.crashes.total(),
            self.crashes.panic,
            self.crashes.reset,
            self.crashes.kill,
            self.sectors_checked,
            self.errors,
            self.divergences,
            self.boots,
            self.wall_s,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )
    }
}

/// `tandem check`: run, print the summary (and a divergence), write `--json`; the exit
/// status is 0 with no divergence, 1 with one, 130 after Ctrl-C.
pub fn check(args: &CheckArgs) -> anyhow::Result<i32> {
    static INTERRUPTED: AtomicBool = AtomicBool::new(false);
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    let report = run(args, &INTERRUPTED)?;
    if let Some(d) = &report.divergence {
        eprintln!("{d}");
    }
    println!("{}", report.summary());
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        std::fs::write(p, text).with_context(|| p.display().to_string())?;
        eprintln!("tandem: wrote {}", p.display());
    }
    if let Some(d) = &report.work_dir {
        eprintln!(
            "tandem: disks, NVRAM and console logs kept in {}",
            d.display()
        );
    }
    Ok(if report.divergences > 0 {
        1
    } else if report.interrupted {
        crate::exit::EXIT_INTERRUPTED
    } else {
        0
    })
}

/// Runs the check and returns its report (a divergence is in the report; an error is a
/// failure to run: QEMU missing, a guest that does not come back, a protocol error).
pub fn run(args: &CheckArgs, interrupted: &AtomicBool) -> anyhow::Result<CheckReport> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let (dir, temp) = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
            (d.clone(), None)
        }
        None => {
            let t = crate::scratch::tempdir().context("temporary directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let result = Checker::new(args, seed, &dir, interrupted).and_then(|mut c| {
        let r = c.run();
        c.finish(r)
    });
    match result {
        Ok(mut report) => {
            if report.divergences > 0 || args.work_dir.is_some() {
                report.work_dir = Some(dir.clone());
                // Keep a temporary directory: it holds the evidence.
                std::mem::forget(temp);
            }
            Ok(report)
        }
        Err(e) if !dir.join("console-1.log").exists() => Err(e), // no guest ran: no evidence
        Err(e) => {
            std::mem::forget(temp);
            Err(e.context(format!(
                "tandem check (seed {seed}, durability={}); disks, NVRAM and console logs kept in {}",
                args.durability.word(),
                dir.display()
            )))
        }
    }
}

/// A splitmix64 generator: the whole run follows from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `pct`%.
    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// Sends one line to the guest's management port, authenticated with `key`, and returns its
/// reply line. All management-port interaction goes through here ([`crate::mgmt`]).
pub fn mgmt_command(
    addr: SocketAddr,
    key: &crate::mgmt::Key,
    line: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    crate::mgmt::command(addr, key, line, timeout)
}

/// The crash kinds `--crashes` asks for, each once (`none` adds none).
fn crash_kinds(choices: &[CrashChoice]) -> Vec<CrashKind> {
    let mut crash_kinds = Vec::new();
    for c in choices {
        let k = match c {
            CrashChoice::Panic => CrashKind::Panic,
            CrashChoice::Reset => CrashKind::Reset,
            CrashChoice::Kill => CrashKind::Kill,
            CrashChoice::None => continue,
        };
        if !crash_kinds.contains(&k) {
            crash_kinds.push(k);
        }
    }
    crash_kinds
}

/// A progress bar on a terminal: operations out of `--ops` (2000 when neither `--ops` nor
/// `--seconds` is given), a spinner for a run of `--seconds` alone.
fn progress_bar(args: &CheckArgs) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let pb = match args.ops {
            Some(n) => indicatif::ProgressBar::new(n),
            None if args.seconds.is_none() => indicatif::ProgressBar::new(2000),
            None => indicatif::ProgressBar::new_spinner(),
        };
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} ops {elapsed_precise} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    })
}

/// A running guest.
struct Guest {
    vm: Vm,
    nbd: SocketAddr,
    mgmt: SocketAddr,
    /// The management channel's key (a new one each boot).
    mgmt_key: crate::mgmt::Key,
    /// Restarts in place since this guest last booted.
    panics: u32,
}

/// One line of the operation history.
#[derive(Debug, Clone)]
struct Hist {
    seq: u64,
    boot: u32,
    conn: u64,
    /// `None`: a crash marker.
    export: Option<usize>,
    what: String,
    offset: u64,
    len: u64,
    version: u64,
    outcome: String,
}

/// An operation in flight.
#[derive(Debug, Clone, Copy)]
struct Flight {
    op: OpId,
    seq: u64,
    kind: Kind,
    export: usize,
    offset: u64,
    len: u64,
}

struct Slot {
    conn: Conn,
    export: usize,
}

struct Checker<'a> {
    args: &'a CheckArgs,
    seed: u64,
    dir: PathBuf,
    interrupted: &'a AtomicBool,
    rng: Rng,
    qemu: PathBuf,
    image: PathBuf,
    accel: crate::accel::Accel,
    disks: Vec<PathBuf>,
    nvram: PathBuf,
    guest: Option<Guest>,
    boots: u32,
    model: Model,
    export_bytes: Vec<u64>,
    export_flags: Vec<u16>,
    slots: Vec<Slot>,
    next_conn: u64,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    flights: HashMap<(u64, u64), Flight>,
    history: VecDeque<Hist>,
    next_seq: u64,
    op_counts: OpCounts,
    crashes: CrashCounts,
    crash_kinds: Vec<CrashKind>,
    crash_bag: Vec<CrashKind>,
    divergence: Option<String>,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    last_line: Instant,
}

impl<'a> Checker<'a> {
    fn new(
        args: &'a CheckArgs,
        seed: u64,
        dir: &Path,
        interrupted: &'a AtomicBool,
    ) -> anyhow::Result<Self> {
        let accel = crate::accel::choose(args.vm.accel)?;
        let qemu = crate::qemu_bin::ensure_qemu()?;
        let image = crate::image::ensure(args.vm.image.as_deref())?;
        let qmp = dir.join("qmp.sock");
        if qmp.as_os_str().len() > crate::state::MAX_SOCKET_PATH {
            bail!(
                "socket path {} is longer than {} bytes; use a shorter --work-dir",
                qmp.display(),
                crate::state::MAX_SOCKET_PATH
            );
        }
        if args.disk_size.bytes() < (2 << 20) || !args.disk_size.bytes().is_multiple_of(4096) {
            bail!("--disk-size: at least 2M and a multiple of 4K");
        }
        let mut disks = Vec::new();
        for i in 0..args.disks {
            let p = dir.join(format!("disk{i}.raw"));
            crate::state::create_sparse_disk(&p, args.disk_size)?;
            disks.push(p);
        }
        let nvram = dir.join("nvram.bin");
        let _ = std::fs::remove_file(&nvram);
        crate::state::ensure_nvram(&nvram, args.nvram_size)?;
        if args.conns * args.disks > MAX_CONNS {
            bail!(
                "--conns x --disks: at most {MAX_CONNS} connections (the guest serves 16 clients)"
            );
        }
        if args.no_nvram && args.durability == CheckDurability::Nvlog {
            bail!("--no-nvram: the log lives in guest RAM, so only --durability disk applies");
        }
        let crash_kinds = crash_kinds(&args.crashes);
        let (events_tx, events) = channel();
        let bar = progress_bar(args);
        eprintln!(
            "tandem: check seed={seed} durability={} {} disk(s) of {}, nvram {}, {} connection(s) per export, depth {}, crashes {:?}; q35 {}",
            args.durability.word(),
            args.disks,
            args.disk_size,
            if args.no_nvram {
                "none (the log in guest RAM)".to_string()
            } else {
                args.nvram_size.to_string()
            },
            args.conns,
            args.depth,
            crash_kinds,
            accel
        );
        Ok(Checker {
            args,
            seed,
            dir: dir.to_path_buf(),
            interrupted,
            rng: Rng(seed),
            qemu,
            image,
            accel: accel.accel,
            disks,
            nvram,
            guest: None,
            boots: 0,
            model: Model::new(&[], args.durability.model()),
            export_bytes: Vec::new(),
            export_flags: Vec::new(),
            slots: Vec::new(),
            next_conn: 0,
            events,
            events_tx,
            flights: HashMap::new(),
            history: VecDeque::new(),
            next_seq: 0,
            op_counts: OpCounts::default(),
            crashes: CrashCounts::default(),
            crash_kinds,
            crash_bag: Vec::new(),
            divergence: None,
            started: Instant::now(),
            bar,
            last_line: Instant::now(),
        })
    }

    fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.args.boot_timeout)
    }

    fn io_timeout(&self) -> Duration {
        Duration::from_secs(self.args.io_timeout)
    }

    fn exports(&self) -> usize {
        self.disks.len()
    }

    /// Starts a fresh QEMU on the disks and NVRAM and waits until it serves every export.
    fn boot(&mut self) -> anyhow::Result<()> {
        self.boots += 1;
        let nbd_port = crate::bench::nbd::free_port()?;
        let mgmt_port = crate::bench::nbd::free_port()?;
        let mgmt_key = crate::mgmt::generate_key()?;
        let mut words = format!(
            "{} {}",
            word(key::DURABILITY, self.args.durability.word()),
            crate::mgmt::cmdline_words(&mgmt_key, true)
        );
        if let Some(extra) = &self.args.vm.cmdline {
            words.push(' ');
            words.push_str(extra);
        }
        let mut cmd = QemuCommand::new(&self.qemu)
            .name("tandem-check")
            .machine(Machine::Q35)
            .accel(self.accel)
            .memory(self.args.vm.mem)
            .smp(self.args.vm.smp)
            .kernel(&self.image)
            .qmp_socket(self.dir.join("qmp.sock"))
            .nic(
                Nic::user()
                    .forward(nbd_port, GUEST_NBD_PORT)
                    .forward(mgmt_port, GUEST_MGMT_PORT),
            )
            .cmdline(&words);
        if !self.args.no_nvram {
            cmd = cmd.shared_region(SharedRegion::new(&self.nvram, self.args.nvram_size));
        }
        for d in &self.disks {
            cmd = cmd.disk(Disk::new(d).with_format(DiskFormat::Raw));
        }
        let log = self.dir.join(format!("console-{}.log", self.boots));
        let vm = Vm::spawn(
            &cmd,
            SpawnOptions {
                echo_console: false,
                echo_stderr: false,
                console_log: Some(log),
            },
        )
        .with_context(|| format!("command: {cmd}"))?;
        self.guest = Some(Guest {
            vm,
            nbd: SocketAddr::from((Ipv4Addr::LOCALHOST, nbd_port)),
            mgmt: SocketAddr::from((Ipv4Addr::LOCALHOST, mgmt_port)),
            mgmt_key,
            panics: 0,
        });
        self.wait_serving(self.exports(), "boot")
    }

    fn guest(&mut self) -> &mut Guest {
        self.guest.as_mut().expect("a guest is running")
    }

    /// `TANDEM NBD` lines seen so far in this QEMU's console.
    fn nbd_lines(&mut self) -> usize {
        let g = self.guest();
        while let Poll::Line(_) = g.vm.poll(Duration::ZERO) {}
        g.vm.history()
            .iter()
            .filter(|l| l.text.starts_with("TANDEM NBD "))
            .count()
    }

    /// Waits until this QEMU's console has shown `target` `TANDEM NBD` lines in all.
    fn wait_serving(&mut self, target: usize, what: &str) -> anyhow::Result<()> {
        let mut seen = self.nbd_lines();
        if seen >= target {
            return Ok(());
        }
        let timeout = self.boot_timeout();
        self.guest()
            .vm
            .wait_for_line(
                &format!("the guest to serve again ({what})"),
                timeout,
                |l| {
                    if l.text.starts_with("TANDEM NBD ") {
                        seen += 1;
                    }
                    seen >= target
                },
            )
            .map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }

    /// Opens every connection (retrying while the guest comes up), checks the exports.
    fn connect_all(&mut self) -> anyhow::Result<()> {
        let addr = self.guest().nbd;
        let deadline = Instant::now() + self.boot_timeout();
        let attempt = self.io_timeout().min(Duration::from_secs(10));
        for e in 0..self.exports() {
            for _ in 0..self.args.conns {
                let name = format!("blk{e}");
                let conn = loop {
                    self.next_conn += 1;
                    match Conn::connect(
                        self.next_conn,
                        addr,
                        &name,
                        attempt,
                        self.events_tx.clone(),
                    ) {
                        Ok(c) => break c,
                        Err(err) if Instant::now() < deadline => {
                            if let Some(exit) = self.guest().vm.exit_status() {
                                bail!("QEMU exited ({exit}) before serving {name}: {err}");
                            }
                            let _ = self.nbd_lines();
                        }
                        Err(err) => {
                            let ctx = self.guest().vm.context();
                            bail!("cannot connect to {name} at {addr}: {err}\n{ctx}");
                        }
                    }
                };
                if self.export_bytes.len() <= e {
                    self.export_bytes.push(conn.size);
                    self.export_flags.push(conn.flags);
                } else if self.export_bytes[e] != conn.size {
                    bail!(
                        "export {name} changed size: {} bytes, then {}",
                        self.export_bytes[e],
                        conn.size
                    );
                }
                self.slots.push(Slot { conn, export: e });
            }
        }
        Ok(())
    }

    fn push_hist(&mut self, h: Hist) {
        if self.history.len() >= HISTORY_KEEP {
            self.history.pop_front();
        }
        self.history.push_back(h);
    }

    fn hist_mut(&mut self, seq: u64) -> Option<&mut Hist> {
        let front = self.history.front()?.seq;
        self.history.get_mut(seq.checked_sub(front)? as usize)
    }

    fn run(&mut self) -> anyhow::Result<()> {
        self.boot()?;
        self.connect_all()?;
        let sizes = self.export_bytes.clone();
        for (i, s) in sizes.iter().enumerate() {
            if !s.is_multiple_of(tandem_model::SECTOR) || *s < (1 << 20) {
                bail!("export blk{i}: size {s} is not a whole number of sectors or too small");
            }
        }
        self.model = Model::new(&sizes, self.args.durability.model());
        let target_ops = match (self.args.ops, self.args.seconds) {
            (Some(n), _) => Some(n),
            (None, None) => Some(2000),
            (None, Some(_)) => None,
        };
        let deadline = self
            .args
            .seconds
            .map(|s| self.started + Duration::from_secs(s));
        let mut next_crash = self.next_crash_gap();
        let mut want_in_flight = 1usize;
        let max_in_flight = self.slots.len() * self.args.depth as usize;
        let mut retarget_at = 0u64;
        loop {
            let ops = self.model.counts.ops;
            let stop = target_ops.is_some_and(|n| ops >= n)
                || deadline.is_some_and(|d| Instant::now() >= d)
                || self.interrupted.load(Ordering::SeqCst);
            if stop && self.flights.is_empty() {
                break;
            }
            if !stop && !self.crash_kinds.is_empty() && ops >= next_crash {
                // Under load: fill the pipelines, then let the guest work on them for a
                // moment (replies still count) before the crash.
                let mut tries = 0;
                while self.flights.len() < max_in_flight && tries < 32 {
                    if !self.start_random()? {
                        tries += 1;
                    }
                }
                let settle = Instant::now() + Duration::from_millis(self.rng.below(30));
                while Instant::now() < settle && self.divergence.is_none() {
                    self.wait_events(settle.saturating_duration_since(Instant::now()), false)?;
                }
                if self.divergence.is_some() {
                    return Ok(());
                }
                self.crash()?;
                if self.divergence.is_some() {
                    return Ok(());
                }
                next_crash = self.model.counts.ops + self.next_crash_gap();
                continue;
            }
            if ops >= retarget_at {
                // Alternate between nearly serial and deeply pipelined stretches.
                want_in_flight = if self.rng.pct(25) {
                    1
                } else {
                    self.rng.range(2, max_in_flight as u64) as usize
                };
                retarget_at = ops + self.rng.range(20, 200);
            }
            if !stop {
                let mut tries = 0;
                while self.flights.len() < want_in_flight && tries < 16 {
                    if !self.start_random()? {
                        tries += 1;
                    }
                }
            }
            self.wait_events(Duration::from_millis(100), false)?;
            if self.divergence.is_some() {
                return Ok(());
            }
            self.progress(target_ops);
        }
        self.final_readback()
    }

    fn next_crash_gap(&mut self) -> u64 {
        let every = self.args.crash_every;
        self.rng.range(every.div_ceil(2), every + every / 2)
    }

    fn progress(&mut self, target: Option<u64>) {
        let msg = format!(
            "crashes {} (panic {} reset {} kill {}), {} sectors checked, {} divergence(s)",
            self.crashes.total(),
            self.crashes.panic,
            self.crashes.reset,
            self.crashes.kill,
            self.model.counts.sectors_checked,
            u64::from(self.divergence.is_some())
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.model.counts.ops);
                bar.set_message(msg);
            }
            None => {
                if self.last_line.elapsed() >= PROGRESS_EVERY {
                    self.last_line = Instant::now();
                    let of = target.map(|t| format!("/{t}")).unwrap_or_default();
                    eprintln!(
                        "tandem: check {:.0}s: {} ops{of}, {msg}",
                        self.started.elapsed().as_secs_f64(),
                        self.model.counts.ops
                    );
                }
            }
        }
    }

    /// Picks a random operation and sends it; false when the model refused it (an
    /// overlap with one in flight) or every connection of the export is full.
    fn start_random(&mut self) -> anyhow::Result<bool> {
        let e = self.rng.below(self.exports() as u64) as usize;
        let depth = self.args.depth as usize;
        let candidates: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].export == e && self.slots[i].conn.in_flight() < depth)
            .collect();
        if candidates.is_empty() {
            return Ok(false);
        }
        let slot = candidates[self.rng.below(candidates.len() as u64) as usize];
        let flags = self.export_flags[e];
        let kind = self.random_kind(flags);
        let (offset, len) = if kind == Kind::Flush {
            (0, 0)
        } else {
            self.random_range(e, kind)
        };
        match self.model.start(e, kind, offset, len) {
            Ok(op) => {
                self.send(slot, op, kind, e, offset, len)?;
                Ok(true)
            }
            Err(Refused::Overlaps) => Ok(false),
            Err(Refused::Range) => bail!("generated a bad range {offset:#x}+{len} on blk{e}"),
        }
    }

    fn random_kind(&mut self, flags: u16) -> Kind {
        let fua_ok = flags & tflag::FUA != 0;
        loop {
            let r = self.rng.below(100);
            let fua = fua_ok && self.rng.pct(30);
            let k = match r {
                0..=29 => Kind::Read,
                30..=61 => Kind::Write { fua },
                62..=73 => Kind::Zero {
                    fua,
                    no_hole: self.rng.pct(50),
                },
                74..=83 => Kind::Trim { fua },
                84..=92 => Kind::Flush,
                _ => Kind::Cache,
            };
            let ok = match k {
                Kind::Zero { .. } => flags & tflag::WRITE_ZEROES != 0,
                Kind::Trim { .. } => flags & tflag::TRIM != 0,
                Kind::Flush => flags & tflag::FLUSH != 0,
                Kind::Cache => flags & tflag::CACHE != 0,
                _ => true,
            };
            if ok {
                return k;
            }
        }
    }

    /// A range: mostly small and in the first MiB (so operations meet), sometimes large or
    /// anywhere.
    fn random_range(&mut self, e: usize, kind: Kind) -> (u64, u64) {
        let size = self.export_bytes[e];
        let unit = if self.rng.pct(25) { 512 } else { 4096 };
        let r = self.rng.below(100);
        let mut len = match r {
            0..=69 => unit * self.rng.range(1, 16),
            70..=89 => unit * self.rng.range(1, 64),
            90..=97 => 4096 * self.rng.range(16, 256),
            // Large: beyond what the log takes for one write.
            _ => 4096 * self.rng.range(256, 1024),
        };
        if kind == Kind::Read || kind == Kind::Cache {
            len = len.min(4 << 20);
        }
        len = len.min(size);
        let span = if self.rng.pct(60) {
            (1u64 << 20).max(len).min(size)
        } else {
            size
        };
        let slots = (span - len) / unit + 1;
        let offset = self.rng.below(slots) * unit;
        (offset, len)
    }

    fn send(
        &mut self,
        slot: usize,
        op: OpId,
        kind: Kind,
        export: usize,
        offset: u64,
        len: u64,
    ) -> anyhow::Result<()> {
        let fua = |b: bool| if b { cflag::FUA } else { 0 };
        let (command, flags, payload) = match kind {
            Kind::Read => (cmd::READ, 0, Vec::new()),
            Kind::Write { fua: f } => (cmd::WRITE, fua(f), self.model.payload_of(op)),
            Kind::Zero { fua: f, no_hole } => (
                cmd::WRITE_ZEROES,
                fua(f) | if no_hole { cflag::NO_HOLE } else { 0 },
                Vec::new(),
            ),
            Kind::Trim { fua: f } => (cmd::TRIM, fua(f), Vec::new()),
            Kind::Flush => (cmd::FLUSH, 0, Vec::new()),
            Kind::Cache => (cmd::CACHE, 0, Vec::new()),
        };
        let version = if payload.len() >= 8 {
            u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"))
        } else {
            0
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let conn_id = self.slots[slot].conn.id;
        self.push_hist(Hist {
            seq,
            boot: self.boots,
            conn: conn_id,
            export: Some(export),
            what: kind.to_string(),
            offset,
            len,
            version,
            outcome: "in flight".into(),
        });
        let len32 = u32::try_from(len).context("request too long")?;
        match self.slots[slot]
            .conn
            .send(command, flags, offset, len32, &payload)
        {
            Ok(handle) => {
                self.flights.insert(
                    (conn_id, handle),
                    Flight {
                        op,
                        seq,
                        kind,
                        export,
                        offset,
                        len,
                    },
                );
                Ok(())
            }
            Err(e) => {
                let ctx = self.guest().vm.context();
                bail!("sending {kind} to blk{export} on connection {conn_id}: {e}\n{ctx}")
            }
        }
    }

    /// Waits up to `wait` for replies and handles all that came. `crashing`: connections
    /// closing are expected (and ignored).
    fn wait_events(&mut self, wait: Duration, crashing: bool) -> anyhow::Result<()> {
        let first = match self.events.recv_timeout(wait) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => return self.watch_console(),
            Err(RecvTimeoutError::Disconnected) => unreachable!("the checker holds a sender"),
        };
        self.handle(first, crashing)?;
        while let Ok(ev) = self.events.try_recv() {
            self.handle(ev, crashing)?;
        }
        Ok(())
    }

    /// Fails when the guest restarted or stopped on its own (no crash was injected).
    fn watch_console(&mut self) -> anyhow::Result<()> {
        let g = self.guest();
        let before = g.vm.history().len();
        while let Poll::Line(_) = g.vm.poll(Duration::ZERO) {}
        let restarted = g.vm.history()[before..]
            .iter()
            .any(|l| l.text.starts_with("TANDEM RESTART ") || l.text.starts_with("PANIC"));
        if restarted || g.vm.exit_status().is_some() {
            let ctx = g.vm.context();
            bail!("the guest failed or restarted without an injected crash\n{ctx}");
        }
        Ok(())
    }

    fn handle(&mut self, ev: Event, crashing: bool) -> anyhow::Result<()> {
        match ev {
            Event::Reply {
                conn,
                handle,
                error,
                data,
            } => {
                let Some(f) = self.flights.remove(&(conn, handle)) else {
                    bail!("a reply to no request (connection {conn}, handle {handle})");
                };
                let r = self.model.complete(f.op, error == 0, data.as_deref());
                let outcome = if error == 0 {
                    "ok".to_string()
                } else {
                    format!("error {error}")
                };
                if let Some(h) = self.hist_mut(f.seq) {
                    h.outcome = outcome;
                }
                let c = &mut self.op_counts;
                match f.kind {
                    Kind::Read => c.read += 1,
                    Kind::Write { fua } => {
                        c.write += 1;
                        c.write_fua += u64::from(fua);
                    }
                    Kind::Zero { .. } => c.zero += 1,
                    Kind::Trim { .. } => c.trim += 1,
                    Kind::Flush => c.flush += 1,
                    Kind::Cache => c.cache += 1,
                }
                if let Err(msg) = r {
                    if let Some(h) = self.hist_mut(f.seq) {
                        h.outcome.push_str(", DIVERGED");
                    }
                    let what =
                        format!("{} on blk{} at {:#x}+{}", f.kind, f.export, f.offset, f.len);
                    // The model names the first sector it cannot explain: show that sector's
                    // history (else the whole range's).
                    let (at, len) = sector_named(&msg)
                        .filter(|o| (f.offset..f.offset + f.len).contains(o))
                        .map_or((f.offset, f.len.max(1)), |o| (o, tandem_model::SECTOR));
                    self.diverged(&format!("{what}: {msg}"), f.export, at, len);
                }
                Ok(())
            }
            Event::Closed { conn, why } => {
                if crashing || !self.slots.iter().any(|s| s.conn.id == conn) {
                    return Ok(());
                }
                let ctx = self.guest().vm.context();
                bail!("connection {conn} ended outside a crash: {why}\n{ctx}")
            }
        }
    }

    /// Records the first divergence with the history of its range.
    fn diverged(&mut self, what: &str, export: usize, offset: u64, len: u64) {
        if self.divergence.is_some() {
            return;
        }
        let mut s = String::new();
        let _ = writeln!(
            s,
            "DIVERGENCE (seed {}, durability={}, after {} ops and {} crash(es)): {what}",
            self.seed,
            self.args.durability.word(),
            self.model.counts.ops,
            self.crashes.total()
        );
        let related: Vec<&Hist> = self
            .history
            .iter()
            .filter(|h| match h.export {
                None => true,
                Some(e) => e == export && h.offset < offset + len && offset < h.offset + h.len,
            })
            .collect();
        // Crash markers with no operation on the range after them are noise at the end.
        let keep = self.args.history.max(1);
        let shown = &related[related.len().saturating_sub(keep)..];
        let _ = writeln!(
            s,
            "operations on blk{export} {offset:#x}+{len} (last {} of {}), with the crashes:",
            shown.iter().filter(|h| h.export.is_some()).count(),
            related.iter().filter(|h| h.export.is_some()).count()
        );
        for h in shown {
            match h.export {
                None => {
                    let _ = writeln!(s, "  #{:<7} boot {:<3} --- {} ---", h.seq, h.boot, h.what);
                }
                Some(_) => {
                    let v = if h.version != 0 {
                        format!(" version {}", h.version)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        s,
                        "  #{:<7} boot {:<3} conn {:<4} {:<26} {:#010x}+{:<8}{v} -> {}",
                        h.seq, h.boot, h.conn, h.what, h.offset, h.len, h.outcome
                    );
                }
            }
        }
        let _ = write!(
            s,
            "rerun: tandem check --seed {} --durability {}",
            self.seed,
            self.args.durability.word()
        );
        self.divergence = Some(s);
    }

    /// The next crash: the kinds asked for in a shuffled round, so every kind comes up
    /// once in each round of as many crashes.
    fn choose_crash(&mut self) -> CrashKind {
        if self.crash_bag.is_empty() {
            self.crash_bag = self.crash_kinds.clone();
            for i in (1..self.crash_bag.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                self.crash_bag.swap(i, j);
            }
        }
        let k = self.crash_bag.pop().expect("refilled");
        let panics = self.guest.as_ref().map_or(0, |g| g.panics);
        if k == CrashKind::Panic && panics >= PANICS_PER_BOOT {
            // This boot has used the restarts in place it allows: boot it again first.
            self.crash_bag.push(k);
            return if self.crash_kinds.contains(&CrashKind::Kill) {
                CrashKind::Kill
            } else {
                CrashKind::Reset
            };
        }
        k
    }

    /// Crashes the guest now (requests in flight), waits until it serves again, settles
    /// the model and reads back what it is unsure of.
    fn crash(&mut self) -> anyhow::Result<()> {
        let kind = self.choose_crash();
        let n = self.crashes.total() + 1;
        let in_flight = self.flights.len();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.push_hist(Hist {
            seq,
            boot: self.boots,
            conn: 0,
            export: None,
            what: format!("crash {n}: {kind:?} with {in_flight} request(s) in flight"),
            offset: 0,
            len: 0,
            version: 0,
            outcome: String::new(),
        });
        let exports = self.exports();
        let before = self.nbd_lines();
        let timeout = self.io_timeout();
        match kind {
            CrashKind::Panic => {
                let (addr, key) = (self.guest().mgmt, self.guest().mgmt_key.clone());
                let reply = mgmt_command(addr, &key, "inject panic", timeout)?;
                if reply != "ok injecting panic" {
                    bail!("inject panic: the guest answered `{reply}`");
                }
                self.guest().panics += 1;
                self.wait_serving(before + exports, "restart in place after a panic")?;
            }
            CrashKind::Reset => {
                let mut qmp = self.guest().vm.qmp(timeout)?;
                qmp.system_reset()?;
                self.guest().panics = 0;
                self.wait_serving(before + exports, "boot after system_reset")?;
            }
            CrashKind::Kill => {
                self.guest().vm.kill();
            }
        }
        // Whatever arrived by now was acknowledged before the crash; the rest is lost.
        for s in &mut self.slots {
            s.conn.close();
        }
        // Dropping joins the readers: their events are all in the channel then.
        drop(std::mem::take(&mut self.slots));
        while let Ok(ev) = self.events.try_recv() {
            self.handle(ev, true)?;
        }
        if self.divergence.is_some() {
            return Ok(());
        }
        let lost: Vec<Flight> = self.flights.drain().map(|(_, f)| f).collect();
        for f in lost {
            self.op_counts.lost += 1;
            if let Some(h) = self.hist_mut(f.seq) {
                h.outcome = format!("no reply (crash {n})");
            }
        }
        self.model.crash();
        self.crashes.add(kind);
        if kind == CrashKind::Kill {
            self.guest = None;
            self.boot()?;
        }
        self.connect_all()?;
        self.readback_uncertain(&format!("after crash {n} ({kind:?})"))
    }

    fn readback_uncertain(&mut self, ctx: &str) -> anyhow::Result<()> {
        for e in 0..self.exports() {
            let ranges = self.model.uncertain_ranges(e);
            self.readback(e, &ranges, ctx)?;
            if self.divergence.is_some() {
                return Ok(());
            }
        }
        Ok(())
    }

    fn final_readback(&mut self) -> anyhow::Result<()> {
        for e in 0..self.exports() {
            let whole = [(0, self.export_bytes[e])];
            self.readback(e, &whole, "final read of the whole export")?;
            if self.divergence.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// Reads `ranges` of export `e` (nothing else in flight) and checks them.
    fn readback(&mut self, e: usize, ranges: &[(u64, u64)], ctx: &str) -> anyhow::Result<()> {
        assert!(self.flights.is_empty());
        let mut chunks: VecDeque<(u64, u64)> = VecDeque::new();
        for &(o, l) in ranges {
            let mut at = o;
            while at < o + l {
                let n = READBACK_CHUNK.min(o + l - at);
                chunks.push_back((at, n));
                at += n;
            }
        }
        let slot = self
            .slots
            .iter()
            .position(|s| s.export == e)
            .expect("every export has a connection");
        let conn_id = self.slots[slot].conn.id;
        let mut waiting: HashMap<u64, (u64, u64)> = HashMap::new();
        let deadline_each = self.io_timeout() + Duration::from_secs(5);
        while !chunks.is_empty() || !waiting.is_empty() {
            while waiting.len() < 4 {
                let Some((o, l)) = chunks.pop_front() else {
                    break;
                };
                let h = self.slots[slot]
                    .conn
                    .send(cmd::READ, 0, o, l as u32, &[])
                    .with_context(|| format!("read-back of blk{e} ({ctx})"))?;
                waiting.insert(h, (o, l));
            }
            match self.events.recv_timeout(deadline_each) {
                Ok(Event::Reply {
                    conn,
                    handle,
                    error,
                    data,
                }) if conn == conn_id => {
                    let Some((o, l)) = waiting.remove(&handle) else {
                        bail!("read-back: reply to an unknown handle {handle}");
                    };
                    let Some(data) = data.filter(|_| error == 0) else {
                        let c = self.guest().vm.context();
                        bail!("read-back of blk{e} {o:#x}+{l} ({ctx}) failed: error {error}\n{c}");
                    };
                    if let Err(d) = self.model.check(e, o, &data, ctx) {
                        self.diverged(&d.to_string(), e, d.offset, tandem_model::SECTOR);
                        return Ok(());
                    }
                }
                Ok(Event::Closed { conn, why }) if conn == conn_id => {
                    let c = self.guest().vm.context();
                    bail!("read-back of blk{e} ({ctx}): connection ended: {why}\n{c}");
                }
                Ok(_) => {}
                Err(_) => {
                    let c = self.guest().vm.context();
                    bail!("read-back of blk{e} ({ctx}): no reply\n{c}");
                }
            }
        }
        Ok(())
    }

    /// Stops the guest and builds the report.
    fn finish(&mut self, r: anyhow::Result<()>) -> anyhow::Result<CheckReport> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        for s in &mut self.slots {
            s.conn.disconnect();
        }
        self.slots.clear();
        if let Some(mut g) = self.guest.take() {
            if r.is_err() || self.divergence.is_some() {
                g.vm.kill();
            } else {
                g.vm.stop(crate::run::STOP_GRACE);
            }
        }
        r?;
        let c = self.model.counts;
        Ok(CheckReport {
            seed: self.seed,
            durability: self.args.durability,
            ops: c.ops,
            op_counts: self.op_counts.clone(),
            crashes: self.crashes,
            sectors_checked: c.sectors_checked,
            errors: c.errors,
            divergences: u64::from(self.divergence.is_some()),
            divergence: self.divergence.clone(),
            boots: self.boots,
            export_bytes: self.export_bytes.clone(),
            interrupted: self.interrupted.load(Ordering::SeqCst),
            wall_s: self.started.elapsed().as_secs_f64(),
            work_dir: None,
        })
    }
}

/// The byte offset in a model message `... offset 0x1234 ...`.
fn sector_named(msg: &str) -> Option<u64> {
    let (_, rest) = msg.split_once("offset 0x")?;
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    u64::from_str_radix(&hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn args_parse() {
        let cli = Cli::try_parse_args([
            "tandem",
            "check",
            "--durability",
            "nvlog",
            "--seed",
            "7",
            "--ops",
            "100",
            "--crashes",
            "panic,kill",
        ])
        .unwrap();
        let Command::Check(a) = cli.command else {
            panic!("not check")
        };
        assert_eq!(a.durability, CheckDurability::Nvlog);
        assert_eq!(a.seed, Some(7));
        assert_eq!(a.crashes, vec![CrashChoice::Panic, CrashChoice::Kill]);
        assert_eq!(a.disks, 2);
    }

    #[test]
    fn the_diverging_sector_is_found_in_the_model_message() {
        let m = "export 1 offset 0xca000 (read): read Data(776), the model allows Zero";
        assert_eq!(sector_named(m), Some(0xca000));
        assert_eq!(sector_named("no offset here"), None);
    }

    #[test]
    fn rng_is_deterministic_and_ranges_hold() {
        let mut a = Rng(5);
        let mut b = Rng(5);
        for _ in 0..1000 {
            let x = a.range(3, 9);
            assert_eq!(x, b.range(3, 9));
            assert!((3..=9).contains(&x));
        }
    }

    #[test]
    fn summary_names_everything() {
        let r = CheckReport {
            seed: 1,
            durability: CheckDurability::Disk,
            ops: 10,
            op_counts: OpCounts::default(),
            crashes: CrashCounts {
                panic: 1,
                reset: 2,
                kill: 3,
            },
            sectors_checked: 99,
            errors: 0,
            divergences: 0,
            divergence: None,
            boots: 4,
            export_bytes: vec![],
            interrupted: false,
            wall_s: 1.0,
            work_dir: None,
        };
        let s = r.summary();
        assert!(
            s.contains("ops=10 crashes=6 (panic=1 reset=2 kill=3)"),
            "{s}"
        );
        assert!(s.contains("divergences=0"), "{s}");
    }
}
