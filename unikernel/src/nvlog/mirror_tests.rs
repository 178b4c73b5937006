//! The mirror sender (`tandem_formats::mirror_ship`) against the real log, in randomised
//! runs: the guest commits and retires records while the sender ships passes, the guest
//! keeps going between the sender's walk and its second superblock read, the sender's
//! superblock read is sometimes an older copy (the newest being half written), and the
//! copy's host dies after a random prefix of a pass's writes (then the sender reconnects and
//! starts over on the partial copy).
//!
//! After every write applied to the copy, what the copy's own recovery walk finds is
//! checked: every record up to the last acknowledged commit is found with its exact header,
//! or the guest has retired it (it is on disk); and nothing found is anything but a record
//! the guest committed.

extern crate std;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use hpdi::{BufferPool, DmaMemory, HostMemory};
use tandem_formats::mirror_ship::{Plan, Shipper};
use tandem_formats::nvlog::{RecordHeader, Superblock};
use tandem_formats::nvlog_region::{recover, SUPERBLOCK_AT};
use zerocopy::FromBytes;

use super::format::{RecordKind, PAGE};
use super::log::Nvlog;

const PAGES: usize = 64;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

struct Guest {
    log: Nvlog,
    pool: BufferPool,
    /// Every record committed: its header as written.
    committed: BTreeMap<u64, RecordHeader>,
}

impl Guest {
    fn new() -> Self {
        let mut pool = BufferPool::host(4, 4096).unwrap();
        let m: Box<dyn DmaMemory> = Box::new(HostMemory::new(PAGES * PAGE));
        pool.add_region(m, PAGE).unwrap();
        let (log, _) = Nvlog::open(&mut pool, 1, 0x5eed).unwrap();
        Self {
            log,
            pool,
            committed: BTreeMap::new(),
        }
    }

    fn region(&self) -> Vec<u8> {
        let mut mem = vec![0u8; PAGES * PAGE];
        for i in 0..PAGES {
            let b = hpdi::BufId::new(1, i as u32);
            mem[i * PAGE..(i + 1) * PAGE].copy_from_slice(self.pool.buf(b).unwrap());
        }
        mem
    }

    /// One random guest operation: commit a data or zero record, or retire a prefix.
    fn step(&mut self, rng: &mut Rng) {
        match rng.below(10) {
            0..=5 => {
                let len = 1 + rng.below(3 * PAGE as u64) as u32;
                let Some(r) = self.log.reserve(len) else {
                    return self.retire(rng);
                };
                let fill = rng.below(255) as u8;
                for seg in self.log.segments(r.page, 0, len).as_slice() {
                    self.pool.slice_mut(seg).unwrap().fill(fill);
                }
                let seq = self.log.commit(&mut self.pool, r, 1, rng.below(1 << 20));
                self.note(seq);
            }
            6 => {
                let Some(seq) = self
                    .log
                    .commit_range(&mut self.pool, RecordKind::Zero, 1, 0, 4096)
                else {
                    return self.retire(rng);
                };
                self.note(seq);
            }
            _ => self.retire(rng),
        }
    }

    fn retire(&mut self, rng: &mut Rng) {
        let live = self.log.live().len() as u64;
        if live > 0 {
            let upto = self.log.retired_seq() + 1 + rng.below(live);
            self.log.retire(&mut self.pool, upto);
        }
    }

    /// Reads back the header just committed for `seq` from the region.
    fn note(&mut self, seq: u64) {
        let mem = self.region();
        let (_, w) = recover(&mem[..]).expect("the guest's region has a log");
        let f = w
            .records
            .iter()
            .find(|f| f.header.seq == seq)
            .expect("a committed record is found by the walk");
        self.committed.insert(seq, f.header);
    }
}

/// The older of the two valid superblock copies in page 0 (what a reader gets while the
/// newer one is being written), or the only one.
fn older_superblock(mem: &[u8]) -> Option<Superblock> {
    SUPERBLOCK_AT
        .iter()
        .filter_map(|&at| {
            Superblock::read_from_prefix(&mem[at..])
                .ok()
                .map(|(s, _)| s)
        })
        .filter(|s| s.valid())
        .min_by_key(|s| s.retired_seq)
}

fn check(copy: &[u8], acked: u64, g: &Guest, what: &str) -> Result<(), String> {
    let found = recover(copy);
    let (retired_copy, records) = match &found {
        Some((sb, w)) => (sb.retired_seq, w.records.clone()),
        None if acked == 0 => return Ok(()),
        None => return Err(format!("{what}: the copy has no log, acked {acked}")),
    };
    if retired_copy > g.log.retired_seq() {
        return Err(format!(
            "{what}: the copy retired {retired_copy} > the guest's"
        ));
    }
    for f in &records {
        if g.committed.get(&f.header.seq) != Some(&f.header) {
            return Err(format!(
                "{what}: the copy has a record {} never committed",
                f.header.seq
            ));
        }
    }
    let in_copy = |s: u64| records.iter().any(|f| f.header.seq == s);
    for s in 1..=acked {
        if s > g.log.retired_seq() && !in_copy(s) {
            return Err(format!(
                "{what}: record {s} acknowledged (acked {acked}) is neither retired (guest {}) \
                 nor in the copy (retired {retired_copy}, found {:?})",
                g.log.retired_seq(),
                records.iter().map(|f| f.header.seq).collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

fn apply(copy: &mut [u8], plan: &Plan, upto: usize) {
    for w in &plan.writes[..upto] {
        let at = w.at as usize;
        copy[at..at + w.bytes.len()].copy_from_slice(&w.bytes);
    }
}

fn run(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut g = Guest::new();
    let mut shipper = Shipper::new();
    let mut copy = vec![0u8; PAGES * PAGE];
    let mut acked = 0u64;
    for step in 0..300 {
        for _ in 0..rng.below(6) {
            g.step(&mut rng);
        }
        let snapshot = g.region();
        // The guest goes on between the sender's walk and its second superblock read.
        let racing = rng.below(3) == 0;
        let torn = rng.below(5) == 0;
        let plan = shipper.pass(&snapshot[..], || {
            if racing {
                for _ in 0..rng.below(4) {
                    g.step(&mut rng);
                }
            }
            let now = g.region();
            if torn {
                older_superblock(&now)
            } else {
                tandem_formats::nvlog_region::newest_superblock(&now[..]).map(|(_, s)| s)
            }
        });
        let dies_after = if rng.below(6) == 0 {
            rng.below(plan.writes.len() as u64 + 1) as usize
        } else {
            plan.writes.len()
        };
        for i in 0..dies_after {
            apply(&mut copy, &plan, i + 1);
            check(
                &copy,
                acked,
                &g,
                &format!("seed {seed} step {step} write {i}"),
            )?;
        }
        if dies_after < plan.writes.len() {
            // The link broke mid-pass: the sender starts over on a copy of unknown content.
            shipper.reset(tandem_formats::nvlog_region::newest_superblock(&copy[..]));
            continue;
        }
        if let Some(c) = plan.commit {
            acked = acked.max(c);
            check(
                &copy,
                acked,
                &g,
                &format!("seed {seed} step {step} commit {c}"),
            )?;
        }
    }
    if acked < g.log.next_seq().saturating_sub(40) {
        return Err(format!(
            "seed {seed}: the mirror fell far behind (acked {acked}, next {})",
            g.log.next_seq()
        ));
    }
    Ok(())
}

#[test]
fn the_copy_holds_every_acknowledged_record_at_every_write_of_random_runs() {
    let seeds: u64 = std::env::var("TANDEM_MIRROR_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    for seed in 0..seeds {
        if let Err(e) = run(seed) {
            panic!("{e}");
        }
    }
}

#[test]
fn a_quiet_log_ships_nothing_new() {
    let mut g = Guest::new();
    let mut rng = Rng(7);
    for _ in 0..5 {
        g.step(&mut rng);
    }
    let mut shipper = Shipper::new();
    let mem = g.region();
    let first = shipper.pass(&mem[..], || {
        tandem_formats::nvlog_region::newest_superblock(&mem[..]).map(|(_, s)| s)
    });
    assert!(first.commit.is_some() && !first.writes.is_empty());
    let again = shipper.pass(&mem[..], || {
        tandem_formats::nvlog_region::newest_superblock(&mem[..]).map(|(_, s)| s)
    });
    assert_eq!(again, Plan::default());
}
