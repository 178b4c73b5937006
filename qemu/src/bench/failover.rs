//! `tandem bench failover`: kill node A of a pair (SIGKILL of its QEMU) while a ledger writer
//! writes to A's address, N times, and time the takeover from the host's side.
//!
//! A sampler thread reads the shared region every 100 µs (host clock), so each trial's
//! timeline is measured, not inferred: the kill; B's claim on A's disks (detection: B saw A
//! silent for `pair.timeout_ms`); A silenced (the fence agent confirmed A's QEMU dead, or A
//! acknowledged); B serving A's exports on A's address (its state word turns `covering`: log
//! replayed, address taken, gratuitous ARP sent); and the writer's first acknowledged write
//! after the kill (the client reconnected: the first request served on A's address). After
//! each trial every block the writer wrote is read back through A's address: an
//! acknowledged write that does not read back is counted lost (the target is 0). Then A is
//! restarted and gets its disks back (automatic giveback) for the next trial.
//!
//! Beside the writer, each trial has a *waiting client* with an ordinary 5 s read timeout: it
//! sends A a large READ, reads the reply's header and then nothing until the kill (the reply
//! stalls on its receive window), so after the kill it waits for the rest of a reply that
//! will never come, with nothing unacknowledged that could make it notice. The time until its
//! read fails with ECONNRESET is the "client reset" phase: the survivor resets A's recorded
//! clients as it takes A's address (issue 16 §5, `unikernel::ha::reset`); without that, the
//! client would wait out its 5 s.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tandem_formats::pair_region::{get, word, State};

use super::orchestrate::{Progress, Summary};
use super::render::{ms, Outputs};
use crate::ledger::{self, WriterSpec};
use crate::nbd_client::NbdClient;
use crate::pair::{Giveback, Node, Pair, PairSpec, Sig};
use crate::size::ByteSize;
use crate::supervise::wait_until as wait;

/// The waiting client's read timeout: an ordinary client's.
pub const WAITER_TIMEOUT: Duration = Duration::from_secs(5);
/// The READ the waiting client sends A (far beyond its receive window: A never finishes it).
const WAITER_READ: u32 = 8 << 20;

/// What `tandem bench failover` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverPlan {
    /// Kill trials.
    pub trials: u32,
    /// Peer silence (ms) after which B declares A failed (`pair.timeout_ms`).
    pub timeout_ms: u64,
    /// Blocks (4 KiB) the writer cycles through.
    pub slots: u64,
    /// The writer's per-request timeout (ms).
    pub client_timeout_ms: u64,
    /// Acknowledged writes before each kill.
    pub writes_before: u64,
    /// Directory for the pair (default: the system temp dir).
    pub work_dir: Option<PathBuf>,
    /// `--json` (every trial) and `--svg` (the timeline).
    pub outputs: Outputs,
    /// Seconds any one step may take.
    pub step_timeout: u64,
}

/// One trial, times in ms from the kill (host clock).
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// 1-based.
    pub trial: u32,
    /// B's claim on A's disks seen in the region.
    pub claim_ms: f64,
    /// A silenced (acknowledged or confirmed dead).
    pub silenced_ms: f64,
    /// How: `dead` (the fence agent) or `ack`.
    pub silenced_via: String,
    /// B's state turned `covering`.
    pub serving_ms: f64,
    /// The writer's first acknowledged write after the kill.
    pub first_ack_ms: f64,
    /// Writes acknowledged in this trial.
    pub acked_writes: u64,
    /// Acknowledged writes that did not read back.
    pub lost_writes: usize,
    /// Writes without a reply (they may or may not have landed; allowed either way).
    pub unanswered_writes: u64,
    /// The waiting client's read failed with ECONNRESET, this long after the kill (`None`:
    /// it ended otherwise, see `client_wait_end`).
    pub client_reset_ms: Option<f64>,
    /// How the waiting client's wait ended: `reset`, `timeout` (its own 5 s), `eof`, or an
    /// error.
    pub client_wait_end: String,
}

/// One phase of the takeover over all trials.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// What it spans.
    pub name: &'static str,
    /// Median.
    pub median_ms: f64,
    /// 90th percentile (nearest rank).
    pub p90_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// The whole run (what `--json` writes; [`super::render::failover`] renders it).
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// Every trial.
    pub trials: Vec<Trial>,
    /// Phase summaries.
    pub phases: Vec<Phase>,
    /// `pair.timeout_ms`.
    pub timeout_ms: u64,
    /// The fence agent's timeout.
    pub fence_timeout_ms: u64,
    /// Acknowledged writes over all trials.
    pub acked_writes: u64,
    /// Of which did not read back.
    pub lost_writes: usize,
    /// Seconds the bench took.
    pub wall_s: f64,
}

/// Runs the bench (the `tandem bench failover` command).
pub fn bench_failover(plan: &FailoverPlan) -> anyhow::Result<i32> {
    super::run_interruptible("the pair was taken down", |stop| {
        let began = Instant::now();
        let report = run(plan, stop, began)?;
        super::render::publish(&report, &plan.outputs)?;
        eprintln!("tandem: bench failover took {:.0} s", report.wall_s);
        if report.lost_writes > 0 {
            bail!("{} acknowledged write(s) were lost", report.lost_writes);
        }
        Ok(())
    })
}

/// What the sampler saw, in µs since the kill (0: not yet).
#[derive(Default)]
struct Marks {
    claim: AtomicU64,
    silenced: AtomicU64,
    via_ack: AtomicBool,
    serving: AtomicU64,
}

/// Nearest-rank percentile `p` of `v` (NaN when empty).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

/// The pair and what every trial needs of it.
struct Bench<'a> {
    plan: &'a FailoverPlan,
    pair: Pair,
    /// A's address (port 10809).
    a: SocketAddr,
    /// The pair's network namespace (a process in it).
    ns: u32,
    step: Duration,
    stop: &'a AtomicBool,
}

fn run(plan: &FailoverPlan, stop: &AtomicBool, began: Instant) -> anyhow::Result<FailoverReport> {
    let scratch = match &plan.work_dir {
        Some(d) => crate::scratch::tempdir_in(d)?,
        None => crate::scratch::tempdir()?,
    };
    let mut spec = PairSpec::new(scratch.path().join("pair"));
    spec.timeout_ms = plan.timeout_ms;
    spec.giveback = Giveback::Auto;
    spec.disk_size = ByteSize::mib(64);
    spec.verbose = true;
    eprintln!("tandem: starting a pair in {}", scratch.path().display());
    let pair = Pair::up(&spec)?;
    let a: SocketAddr = format!("{}:10809", pair.ip(Node::A)).parse()?;
    let ns = pair.info().ns_pid;
    let mut bench = Bench {
        plan,
        pair,
        a,
        ns,
        step: Duration::from_secs(plan.step_timeout),
        stop,
    };
    let mut progress = Progress::new(u64::from(plan.trials));
    let mut trials = Vec::new();
    for t in 0..plan.trials {
        progress.start(&format!("trial {}", t + 1));
        let trial = bench.trial(t)?;
        progress.finish_one(
            &format!("trial {}", t + 1),
            &format!(
                "served again after {:.0} ms (claim {:.0}, silenced {:.0}, covering {:.0}); waiting client: {} at {:.0} ms; {} acked, {} lost",
                trial.first_ack_ms,
                trial.claim_ms,
                trial.silenced_ms,
                trial.serving_ms,
                trial.client_wait_end,
                trial.client_reset_ms.unwrap_or(f64::NAN),
                trial.acked_writes,
                trial.lost_writes
            ),
        );
        trials.push(trial);
    }
    progress.finish();
    bench.pair.down()?;
    Ok(FailoverReport {
        acked_writes: trials.iter().map(|t| t.acked_writes).sum(),
        lost_writes: trials.iter().map(|t| t.lost_writes).sum(),
        phases: phases(&trials),
        trials,
        timeout_ms: plan.timeout_ms,
        fence_timeout_ms: spec.fence_timeout_ms,
        wall_s: began.elapsed().as_secs_f64(),
    })
}

/// The phase summaries over all trials.
fn phases(trials: &[Trial]) -> Vec<Phase> {
    let series = |f: &dyn Fn(&Trial) -> f64| trials.iter().map(f).collect::<Vec<f64>>();
    // Over the trials whose waiting client was reset (the others say why in the JSON).
    let resets = |f: &dyn Fn(&Trial, f64) -> f64| {
        trials
            .iter()
            .filter_map(|t| t.client_reset_ms.map(|r| f(t, r)))
            .collect::<Vec<f64>>()
    };
    let phase = |name, v: Vec<f64>| Phase {
        name,
        median_ms: Summary::of(&v).median,
        p90_ms: percentile(&v, 90.0),
        max_ms: v.iter().copied().fold(f64::NAN, f64::max),
    };
    vec![
        phase("detect (kill -> claim)", series(&|t| t.claim_ms)),
        phase(
            "fence (claim -> peer silenced)",
            series(&|t| t.silenced_ms - t.claim_ms),
        ),
        phase(
            "replay + address (-> serving)",
            series(&|t| t.serving_ms - t.silenced_ms),
        ),
        phase(
            "client reconnect (-> first ack)",
            series(&|t| t.first_ack_ms - t.serving_ms),
        ),
        phase(
            "total: kill -> first request served",
            series(&|t| t.first_ack_ms),
        ),
        phase(
            "client reset (serving -> ECONNRESET)",
            resets(&|t, r| r - t.serving_ms),
        ),
        phase("client-visible: kill -> ECONNRESET", resets(&|_, r| r)),
    ]
}

impl Bench<'_> {
    /// One trial (`t` from 0): writes to A, the kill under the sampler, the first write
    /// served again, the read-back, then A back with its disks.
    fn trial(&mut self, t: u32) -> anyhow::Result<Trial> {
        let (step, stop) = (self.step, self.stop);
        let released_before = self.pair.console_lines(Node::B, "step=released").len();
        let acked = Arc::new(AtomicU64::new(0));
        let writer_stop = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        let writer = self.start_writer(t, &acked, &writer_stop, origin);
        wait("writes to A", step, stop, || {
            acked.load(Ordering::SeqCst) >= self.plan.writes_before
        })?;
        let (waiter, go) = self.start_waiter()?;
        // The sampler, then the kill.
        let marks = Arc::new(Marks::default());
        let sampling = Arc::new(AtomicBool::new(true));
        let kill_at = Instant::now();
        let sampler = self.start_sampler(&marks, &sampling, kill_at)?;
        self.pair.kill(Node::A, Sig::Kill)?;
        let _ = go.send(());
        let after = acked.load(Ordering::SeqCst);
        wait(
            "the first write served on A's address after the kill",
            step,
            stop,
            || acked.load(Ordering::SeqCst) > after + 20,
        )?;
        writer_stop.store(true, Ordering::SeqCst);
        sampling.store(false, Ordering::SeqCst);
        let _ = sampler.join();
        let report = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        if let Some(why) = &report.gave_up {
            bail!("trial {}: the writer gave up: {why}", t + 1);
        }
        let kill_ms = ms(kill_at.duration_since(origin));
        let first_ack_ms = report
            .outages
            .iter()
            .find(|o| o.to_ms >= kill_ms)
            .map(|o| o.to_ms - kill_ms)
            .context("no outage around the kill in the writer's record")?;
        let (client_wait_end, client_reset_ms) = match waiter.join() {
            Ok(Ok((kind, at))) => {
                let ms = ms(at.saturating_duration_since(kill_at));
                match kind {
                    ErrorKind::ConnectionReset => ("reset".to_string(), Some(ms)),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                        (format!("timeout at {ms:.0} ms"), None)
                    }
                    ErrorKind::UnexpectedEof => (format!("eof at {ms:.0} ms"), None),
                    k => (format!("{k:?} at {ms:.0} ms"), None),
                }
            }
            Ok(Err(e)) => (format!("error: {e:#}"), None),
            Err(_) => ("the waiting client panicked".to_string(), None),
        };
        let lost = self.read_back(&report.ledger)?;
        let m = |v: &AtomicU64| v.load(Ordering::SeqCst) as f64 / 1000.0;
        let trial = Trial {
            trial: t + 1,
            claim_ms: m(&marks.claim),
            silenced_ms: m(&marks.silenced),
            silenced_via: if marks.via_ack.load(Ordering::SeqCst) {
                "ack"
            } else {
                "dead"
            }
            .into(),
            serving_ms: m(&marks.serving),
            first_ack_ms,
            acked_writes: report.ledger.acked_writes,
            lost_writes: lost,
            unanswered_writes: report.ledger.unanswered_writes,
            client_reset_ms,
            client_wait_end,
        };
        self.give_back(released_before)?;
        Ok(trial)
    }

    /// The ledger writer on A's address, inside the pair's namespace. Each trial writes its
    /// own span of the export (wrapping), so trials never judge each other's blocks.
    fn start_writer(
        &self,
        t: u32,
        acked: &Arc<AtomicU64>,
        writer_stop: &Arc<AtomicBool>,
        origin: Instant,
    ) -> JoinHandle<anyhow::Result<ledger::WriterReport>> {
        let span = self.plan.slots * u64::from(ledger::BLOCK);
        let wspec = WriterSpec {
            addr: self.a,
            export: "blk0".into(),
            base: (u64::from(t) * span) % (48 << 20),
            slots: self.plan.slots as usize,
            io_timeout: Duration::from_millis(self.plan.client_timeout_ms),
            connect_timeout: Duration::from_millis(50),
            reconnect_for: self.step,
            acked: acked.clone(),
            origin,
        };
        let (ws, ns) = (writer_stop.clone(), self.ns);
        std::thread::spawn(move || crate::in_netns::run(ns, || ledger::run_writer(&wspec, &ws)))
    }

    /// The waiting client, in the pair's namespace: connected to A, its READ sent and the
    /// reply's header read. It reads on once told (after the kill) until its connection
    /// fails; it returns how, and when.
    fn start_waiter(&self) -> anyhow::Result<(WaiterHandle, mpsc::Sender<()>)> {
        let (ready_tx, ready) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let (a, ns) = (self.a, self.ns);
        let handle = std::thread::spawn(move || {
            crate::in_netns::run(ns, move || waiting_client(a, &ready_tx, &go_rx))?
        });
        match ready.recv_timeout(self.step) {
            Ok(()) => Ok((handle, go)),
            Err(_) => match handle.join() {
                Ok(Err(e)) => Err(e.context("the waiting client")),
                _ => bail!("the waiting client did not get its reply header"),
            },
        }
    }

    /// A thread reading the shared region every 100 µs and marking, from `kill_at`, B's
    /// claim, A silenced and B covering.
    fn start_sampler(
        &self,
        marks: &Arc<Marks>,
        sampling: &Arc<AtomicBool>,
        kill_at: Instant,
    ) -> anyhow::Result<JoinHandle<()>> {
        let claim_before = get(self.pair.region(), 1, word::CLAIM[0]);
        let (m, on) = (marks.clone(), sampling.clone());
        let region = crate::pair::RegionMap::open(&self.pair.paths().region(), false)?;
        Ok(std::thread::spawn(move || {
            let us = || kill_at.elapsed().as_micros() as u64;
            while on.load(Ordering::SeqCst) {
                let claim = get(&region, 1, word::CLAIM[0]);
                if claim > claim_before && m.claim.load(Ordering::SeqCst) == 0 {
                    m.claim.store(us().max(1), Ordering::SeqCst);
                }
                if claim > claim_before && m.silenced.load(Ordering::SeqCst) == 0 {
                    let ack = get(&region, 0, word::FENCE_ACK) >= claim;
                    if ack || get(&region, 0, word::DEAD) >= claim {
                        m.via_ack.store(ack, Ordering::SeqCst);
                        m.silenced.store(us().max(1), Ordering::SeqCst);
                    }
                }
                if m.silenced.load(Ordering::SeqCst) != 0
                    && m.serving.load(Ordering::SeqCst) == 0
                    && get(&region, 1, word::STATE) == State::Covering as u64
                {
                    m.serving.store(us().max(1), Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }))
    }

    /// Read everything the writer acknowledged back through A's address (B serves it
    /// now); returns how many blocks did not read back.
    fn read_back(&self, ledger: &ledger::Ledger) -> anyhow::Result<usize> {
        let a = self.a;
        crate::in_netns::run(self.ns, || -> anyhow::Result<usize> {
            let mut c = NbdClient::connect(a, "blk0", Duration::from_secs(10))?;
            let bad = ledger.verify(&mut c)?;
            c.disconnect();
            Ok(bad.len())
        })?
    }

    /// A comes back; B gives its disks back.
    fn give_back(&mut self, released_before: usize) -> anyhow::Result<()> {
        let (step, stop) = (self.step, self.stop);
        self.pair.start(Node::A)?;
        wait("B to give A's disks back", step, stop, || {
            self.pair.console_lines(Node::B, "step=released").len() > released_before
        })?;
        wait("A serving again", step, stop, || {
            get(self.pair.region(), 0, word::STATE) == State::Serving as u64
        })
    }
}

/// The waiting client's thread: how its wait ended, and when.
type WaiterHandle = JoinHandle<anyhow::Result<(ErrorKind, Instant)>>;

/// The waiting client's life (see the module doc): connect, READ, the reply's header, then
/// once `go` comes, reads until its connection fails.
fn waiting_client(
    a: SocketAddr,
    ready: &mpsc::Sender<()>,
    go: &mpsc::Receiver<()>,
) -> anyhow::Result<(ErrorKind, Instant)> {
    use tandem_formats::nbd_wire::{be32, cmd, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC};
    let mut s = TcpStream::connect_timeout(&a, WAITER_TIMEOUT)?;
    s.set_read_timeout(Some(WAITER_TIMEOUT))?;
    s.set_write_timeout(Some(WAITER_TIMEOUT))?;
    crate::nbd_client::negotiate(&mut s, "blk0")?;
    let mut req = Vec::with_capacity(28);
    req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&cmd::READ.to_be_bytes());
    req.extend_from_slice(&1u64.to_be_bytes());
    req.extend_from_slice(&0u64.to_be_bytes());
    req.extend_from_slice(&WAITER_READ.to_be_bytes());
    s.write_all(&req)?;
    let mut hdr = [0u8; 16];
    s.read_exact(&mut hdr)?;
    if be32(&hdr[0..4]) != SIMPLE_REPLY_MAGIC || be32(&hdr[4..8]) != 0 {
        bail!("the READ was refused: {hdr:02x?}");
    }
    let _ = ready.send(());
    go.recv()?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok((ErrorKind::UnexpectedEof, Instant::now())),
            Ok(_) => {}
            Err(e) => return Ok((e.kind(), Instant::now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::render::failover as render;

    #[test]
    fn percentiles_table_and_timeline() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 90.0), 5.0);
        assert_eq!(percentile(&v, 50.0), 3.0);
        let trial = Trial {
            trial: 1,
            claim_ms: 310.0,
            silenced_ms: 312.0,
            silenced_via: "dead".into(),
            serving_ms: 330.0,
            first_ack_ms: 345.0,
            acked_writes: 120,
            lost_writes: 0,
            unanswered_writes: 1,
            client_reset_ms: Some(331.0),
            client_wait_end: "reset".into(),
        };
        let r = FailoverReport {
            trials: vec![trial],
            phases: vec![Phase {
                name: "total: kill -> first request served",
                median_ms: 345.0,
                p90_ms: 345.0,
                max_ms: 345.0,
            }],
            timeout_ms: 300,
            fence_timeout_ms: 1500,
            acked_writes: 120,
            lost_writes: 0,
            wall_s: 1.0,
        };
        let t = render::table(&r);
        assert!(t.contains("345.0") && t.contains("lost: 0"), "{t}");
        let svg = render::timeline(&r);
        assert!(svg.starts_with("<svg") && svg.contains("trial 1") && svg.contains("345 ms"));
    }
}
