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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tandem_formats::pair_region::{get, word, State};

use super::{escape, ms, write_outputs, Align, Progress, Table};
use crate::ledger::{self, WriterSpec};
use crate::nbd_client::NbdClient;
use crate::pair::{Giveback, Node, Pair, PairSpec, Sig};
use crate::size::ByteSize;

/// `tandem bench failover` options.
#[derive(Debug, Clone, clap::Args)]
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

/// The whole run (what `--json` writes).
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
pub fn bench_failover(args: &BenchFailoverArgs) -> anyhow::Result<i32> {
    super::run_interruptible("the pair was taken down", |stop| {
        let began = Instant::now();
        let report = run(args, stop, began)?;
        println!("{}", table(&report));
        write_outputs(&report, args.json.as_deref(), None)?;
        if let Some(p) = &args.svg {
            std::fs::write(p, timeline(&report)).with_context(|| p.display().to_string())?;
            eprintln!("tandem: wrote {}", p.display());
        }
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

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

fn wait(
    what: &str,
    timeout: Duration,
    stop: &AtomicBool,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if stop.load(Ordering::SeqCst) {
            return Err(super::blk::Interrupted.into());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn run(
    args: &BenchFailoverArgs,
    stop: &AtomicBool,
    began: Instant,
) -> anyhow::Result<FailoverReport> {
    let scratch = match &args.work_dir {
        Some(d) => crate::scratch::tempdir_in(d)?,
        None => crate::scratch::tempdir()?,
    };
    let mut spec = PairSpec::new(scratch.path().join("pair"));
    spec.timeout_ms = args.timeout_ms;
    spec.giveback = Giveback::Auto;
    spec.disk_size = ByteSize::mib(64);
    spec.verbose = true;
    let step = Duration::from_secs(args.step_timeout);
    eprintln!("tandem: starting a pair in {}", scratch.path().display());
    let mut pair = Pair::up(&spec)?;
    let a: SocketAddr = format!("{}:10809", pair.ip(Node::A)).parse()?;
    let ns = pair.info().ns_pid;
    let mut progress = Progress::new(u64::from(args.trials));
    let mut trials = Vec::new();
    let block = u64::from(ledger::BLOCK);
    let span = args.slots * block;
    for t in 0..args.trials {
        progress.start(&format!("trial {}", t + 1));
        let released_before = pair.console_lines(Node::B, "step=released").len();
        // Each trial writes its own span of the export (wrapping), so trials never judge
        // each other's blocks.
        let base = (u64::from(t) * span) % (48 << 20);
        let acked = Arc::new(AtomicU64::new(0));
        let writer_stop = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        let wspec = WriterSpec {
            addr: a,
            export: "blk0".into(),
            base,
            slots: args.slots as usize,
            io_timeout: Duration::from_millis(args.client_timeout_ms),
            connect_timeout: Duration::from_millis(50),
            reconnect_for: step,
            acked: acked.clone(),
            origin,
        };
        let ws = writer_stop.clone();
        let writer = std::thread::spawn(move || {
            crate::in_netns::run(ns, || ledger::run_writer(&wspec, &ws))
        });
        wait("writes to A", step, stop, || {
            acked.load(Ordering::SeqCst) >= args.writes_before
        })?;
        // The sampler, then the kill.
        let marks = Arc::new(Marks::default());
        let sampling = Arc::new(AtomicBool::new(true));
        let claim_before = get(pair.region(), 1, word::CLAIM[0]);
        let kill_at = Instant::now();
        let sampler = {
            let (m, on) = (marks.clone(), sampling.clone());
            let region = crate::pair::RegionMap::open(&pair.paths().region(), false)?;
            std::thread::spawn(move || {
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
            })
        };
        pair.kill(Node::A, Sig::Kill)?;
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
        // Read everything back through A's address (B serves it now).
        let lost = crate::in_netns::run(ns, || -> anyhow::Result<usize> {
            let mut c = NbdClient::connect(a, "blk0", Duration::from_secs(10))?;
            let bad = report.ledger.verify(&mut c)?;
            c.disconnect();
            Ok(bad.len())
        })??;
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
        };
        // A comes back; B gives its disks back.
        pair.start(Node::A)?;
        wait("B to give A's disks back", step, stop, || {
            pair.console_lines(Node::B, "step=released").len() > released_before
        })?;
        wait("A serving again", step, stop, || {
            get(pair.region(), 0, word::STATE) == State::Serving as u64
        })?;
        progress.finish_one(
            &format!("trial {}", t + 1),
            &format!(
                "served again after {:.0} ms (claim {:.0}, silenced {:.0}, covering {:.0}); {} acked, {} lost",
                trial.first_ack_ms,
                trial.claim_ms,
                trial.silenced_ms,
                trial.serving_ms,
                trial.acked_writes,
                trial.lost_writes
            ),
        );
        trials.push(trial);
    }
    progress.finish();
    let fence_timeout_ms = spec.fence_timeout_ms;
    pair.down()?;
    let series = |f: &dyn Fn(&Trial) -> f64| trials.iter().map(f).collect::<Vec<f64>>();
    let phase = |name, v: Vec<f64>| Phase {
        name,
        median_ms: super::Summary::of(&v).median,
        p90_ms: percentile(&v, 90.0),
        max_ms: v.iter().copied().fold(f64::NAN, f64::max),
    };
    let phases = vec![
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
    ];
    Ok(FailoverReport {
        acked_writes: trials.iter().map(|t| t.acked_writes).sum(),
        lost_writes: trials.iter().map(|t| t.lost_writes).sum(),
        trials,
        phases,
        timeout_ms: args.timeout_ms,
        fence_timeout_ms,
        wall_s: began.elapsed().as_secs_f64(),
    })
}

/// The results table.
pub fn table(r: &FailoverReport) -> String {
    let mut t = Table::new(&[
        ("phase", Align::Left),
        ("median ms", Align::Right),
        ("p90 ms", Align::Right),
        ("max ms", Align::Right),
    ]);
    for p in &r.phases {
        t.row(vec![
            p.name.to_string(),
            format!("{:.1}", p.median_ms),
            format!("{:.1}", p.p90_ms),
            format!("{:.1}", p.max_ms),
        ]);
    }
    format!(
        "Failover benchmark: {} trial(s), SIGKILL of node A's QEMU under a write load; \
         pair.timeout_ms={}, fence timeout {} ms; host clock, from the kill\n{}\
         acknowledged writes: {}; lost: {} (target 0)",
        r.trials.len(),
        r.timeout_ms,
        r.fence_timeout_ms,
        t.render(),
        r.acked_writes,
        r.lost_writes
    )
}

/// A timeline chart (SVG): one row per trial, segments detect / fence / replay + address /
/// reconnect, from the kill.
pub fn timeline(r: &FailoverReport) -> String {
    const W: f64 = 760.0;
    const LEFT: f64 = 70.0;
    const ROW: f64 = 18.0;
    const TOP: f64 = 50.0;
    let colors = ["#4e79a7", "#e15759", "#59a14f", "#f28e2b"];
    let names = ["detect", "fence", "replay + address", "reconnect"];
    let max = r.trials.iter().map(|t| t.first_ack_ms).fold(1.0, f64::max);
    let scale = (W - LEFT - 20.0) / max;
    let h = TOP + ROW * r.trials.len() as f64 + 50.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"10\" y=\"18\" font-size=\"14\">{}</text>\n",
        escape(&format!(
            "Failover timeline: kill of node A -> first request served on A's address ({} trials, {} lost writes)",
            r.trials.len(),
            r.lost_writes
        ))
    );
    for (i, name) in names.iter().enumerate() {
        let x = LEFT + i as f64 * 150.0;
        s += &format!(
            "<rect x=\"{x}\" y=\"28\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"37\">{name}</text>\n",
            colors[i],
            x + 14.0
        );
    }
    for (row, t) in r.trials.iter().enumerate() {
        let y = TOP + row as f64 * ROW;
        s += &format!(
            "<text x=\"10\" y=\"{}\">trial {}</text>\n",
            y + 12.0,
            t.trial
        );
        let bounds = [0.0, t.claim_ms, t.silenced_ms, t.serving_ms, t.first_ack_ms];
        for k in 0..4 {
            let (a, b) = (bounds[k], bounds[k + 1].max(bounds[k]));
            s += &format!(
                "<rect x=\"{:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"/>\n",
                LEFT + a * scale,
                (b - a) * scale,
                ROW - 4.0,
                colors[k]
            );
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\">{:.0} ms</text>\n",
            LEFT + t.first_ack_ms * scale + 4.0,
            y + 12.0,
            t.first_ack_ms
        );
    }
    let axis_y = TOP + ROW * r.trials.len() as f64 + 14.0;
    s += &format!(
        "<text x=\"{LEFT}\" y=\"{axis_y}\">0 ms</text><text x=\"{}\" y=\"{axis_y}\" text-anchor=\"end\">{max:.0} ms</text>\n</svg>\n",
        W - 20.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let t = table(&r);
        assert!(t.contains("345.0") && t.contains("lost: 0"), "{t}");
        let svg = timeline(&r);
        assert!(svg.starts_with("<svg") && svg.contains("trial 1") && svg.contains("345 ms"));
    }
}
