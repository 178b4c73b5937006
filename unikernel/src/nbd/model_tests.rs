//! Randomised runs of the real NBD server and NVLOG against the reference model
//! (`tandem-model`), with crashes at random points.
//!
//! Each seed makes a script: operations on several connections and exports (small and large
//! WRITE, WRITE_ZEROES ± NO_HOLE ± FUA, TRIM, FLUSH, READ, CACHE, several in flight at once),
//! turns of the server's loop, crashes, and windows in which a disk fails its writes, flushes
//! or reads. The disks are RAM disks with a volatile write cache: a crash keeps a random part
//! of what was not flushed, and requests complete in random order, some only landing when
//! they complete. A crash drops every bit of the server's volatile state; the NVRAM region
//! survives, and the next server opens the log from it and replays (a quarter of the seeds
//! under `disk` keep the log in guest RAM instead, as a guest without NVRAM does: a crash
//! loses it). Every read, and after
//! every crash every sector whose value is uncertain, is checked against the model.
//!
//! A failing seed is shrunk (whole steps dropped while it still fails) and printed.
//! `TANDEM_MODEL_SEEDS=N` sets how many seeds run (CI default below);
//! `TANDEM_MODEL_SEED=S` runs one seed and prints its steps.

extern crate std;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use hpdi::device::DeviceStats;
use hpdi::{
    BufferPool, Capabilities, Completion, Device, DeviceKind, DmaMemory, Error, HostMemory, Op,
    OpSet, QueuePair, Request,
};
use tandem_model::{Durability as MDurability, Kind, Model, OpId, SECTOR};

use super::server::{ConnState, Disk, Durability, Server, CHUNK};
use super::server_tests::{connect, export, parse_reply, request, Client};
use super::wire::{cflag, cmd};
use crate::nvlog::format::PAGE;
use crate::nvlog::log::Nvlog;
use tandem_formats::cmdline::{MirrorConfig, MirrorMode, MirrorPolicy};
use tandem_formats::mirror::{LinkState, MirrorBlock, BLOCK_AT};
use tandem_formats::mirror_ship::Shipper;
use tandem_formats::nvlog_region::{newest_superblock, recoverable};
use zerocopy::IntoBytes;

/// Seeds run by default (CI), per durability: about a minute each on two cores.
const DEFAULT_SEEDS: u64 = 1000;
const EXPORTS: usize = 2;
const DISK: u64 = 1 << 20;
/// Most operations go to this first part of a disk, so that they overlap.
const HOT: u64 = 96 << 10;
/// NVRAM pages: a small log, so that large writes are cut into pieces and the log fills.
const NVRAM_PAGES: usize = 96;
const CONNS: usize = 3;
const MAX_IN_FLIGHT: usize = 4;

/// xorshift64*: small, seedable, good enough for choosing.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ---------------------------------------------------------------- the disk

/// Which requests a failing disk refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Writes,
    Flushes,
    Reads,
}

/// A RAM disk with a volatile write cache, shared with the test so it outlives a crash.
struct DiskState {
    /// What survives a crash for sure.
    durable: Vec<u8>,
    /// What reads see: `durable` plus the cache.
    current: Vec<u8>,
    /// Writes not yet flushed: (offset, bytes).
    unflushed: Vec<(usize, Vec<u8>)>,
    fault: Option<Fault>,
    rng: Rng,
}

impl DiskState {
    fn new(seed: u64) -> Self {
        Self {
            durable: vec![0; DISK as usize],
            current: vec![0; DISK as usize],
            unflushed: Vec::new(),
            fault: None,
            rng: Rng::new(seed),
        }
    }

    /// Power loss: each unflushed write may or may not have reached the medium.
    fn crash(&mut self) {
        for (at, data) in core::mem::take(&mut self.unflushed) {
            if self.rng.chance(50) {
                self.durable[at..at + data.len()].copy_from_slice(&data);
            }
        }
        self.current.clone_from(&self.durable);
    }

    fn store(&mut self, at: usize, data: Vec<u8>, fua: bool) {
        self.current[at..at + data.len()].copy_from_slice(&data);
        if fua {
            self.durable[at..at + data.len()].copy_from_slice(&data);
        } else {
            self.unflushed.push((at, data));
        }
    }

    fn execute(&mut self, pool: &mut BufferPool, req: &Request) -> Result<u32, Error> {
        let fail = match req.op {
            Op::Read => self.fault == Some(Fault::Reads),
            Op::Flush => matches!(self.fault, Some(Fault::Flushes | Fault::Writes)),
            _ => self.fault == Some(Fault::Writes),
        };
        if fail {
            return Err(Error::Device { status: 1 });
        }
        let at = req.offset as usize;
        match req.op {
            Op::Read => {
                let mut p = at;
                for seg in req.sg.as_slice() {
                    let n = seg.len as usize;
                    pool.slice_mut(seg)?
                        .copy_from_slice(&self.current[p..p + n]);
                    p += n;
                }
            }
            Op::Write => {
                let mut data = Vec::new();
                for seg in req.sg.as_slice() {
                    data.extend_from_slice(pool.slice(seg)?);
                }
                self.store(at, data, req.fua);
            }
            Op::WriteZeroes | Op::Discard => {
                self.store(at, vec![0; req.len as usize], req.fua);
            }
            Op::Flush => {
                for (at, data) in self.unflushed.drain(..) {
                    self.durable[at..at + data.len()].copy_from_slice(&data);
                }
            }
            _ => return Err(Error::Unsupported(req.op)),
        }
        Ok(req.byte_len().min(u64::from(u32::MAX)) as u32)
    }
}

/// The HPDI face of a [`DiskState`]: requests run when they start or when they complete
/// (chosen at random), and complete in random order.
struct CacheDisk {
    state: Rc<RefCell<DiskState>>,
    /// (request, its result once it ran).
    pending: Vec<(Request, Option<Result<u32, Error>>)>,
    stats: DeviceStats,
}

impl Device for CacheDisk {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: DeviceKind::Block,
            block_size: 512,
            capacity: DISK,
            max_segments: hpdi::request::MAX_SEGMENTS as u16,
            queue_depth: 32,
            ops: OpSet::of(&[Op::Read, Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes]),
            read_only: false,
        }
    }

    fn start(&mut self, pool: &mut BufferPool, req: &Request) -> Result<(), Error> {
        if self.pending.len() >= 32 {
            return Err(Error::RingFull);
        }
        self.capabilities().validate(req)?;
        let mut st = self.state.borrow_mut();
        // A flush covers what completed before it: run it when it completes, after those.
        let now = req.op != Op::Flush && st.rng.chance(50);
        let result = now.then(|| st.execute(pool, req));
        self.pending.push((*req, result));
        self.stats.submitted += 1;
        Ok(())
    }

    fn complete(
        &mut self,
        pool: &mut BufferPool,
        max: usize,
        done: &mut dyn FnMut(Completion),
    ) -> usize {
        let mut n = 0;
        while n < max && !self.pending.is_empty() {
            let mut st = self.state.borrow_mut();
            if st.rng.chance(30) {
                break; // the rest completes later
            }
            let i = st.rng.below(self.pending.len() as u64) as usize;
            let (req, result) = self.pending.swap_remove(i);
            let result = result.unwrap_or_else(|| st.execute(pool, &req));
            drop(st);
            done(Completion {
                tag: req.tag,
                result,
            });
            n += 1;
        }
        self.stats.completed += n as u64;
        n
    }

    fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }
}

// ---------------------------------------------------------------- the script

#[derive(Debug, Clone, Copy)]
enum Step {
    /// An operation on connection `conn` (each connection is bound to an export).
    Op {
        conn: usize,
        kind: Kind,
        offset: u64,
        len: u64,
    },
    /// Turns of the server's loop, with time passing.
    Turns(u32),
    Crash,
    /// A disk starts (or, with `None`, stops) failing.
    Fault(usize, Option<Fault>),
}

fn gen_op(rng: &mut Rng, piece: u64) -> (Kind, u64, u64) {
    let fua = rng.chance(25);
    let kind = match rng.below(100) {
        0..=29 => Kind::Write { fua },
        30..=44 => Kind::Zero {
            fua,
            no_hole: rng.chance(50),
        },
        45..=49 => Kind::Trim { fua },
        50..=59 => Kind::Flush,
        60..=94 => Kind::Read,
        _ => Kind::Cache,
    };
    let sectors = DISK / SECTOR;
    let len = match rng.below(100) {
        // Large: more than one log piece, or more than one read chunk.
        0..=4 => (piece + rng.below(2 * piece)).min(DISK / 2),
        5..=19 => (1 + rng.below(CHUNK as u64 * 2 / SECTOR)) * SECTOR,
        _ => (1 + rng.below(16)) * SECTOR,
    } / SECTOR
        * SECTOR;
    let span = if rng.chance(80) {
        HOT / SECTOR
    } else {
        sectors
    };
    let offset = (rng.below(span) * SECTOR).min(DISK - len);
    (kind, offset, len)
}

fn script(seed: u64, steps: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed ^ 0xabcd);
    let piece = (NVRAM_PAGES as u64 / 2) * PAGE as u64 / 2;
    let faults = rng.chance(30);
    let mut out = Vec::new();
    for _ in 0..steps {
        let r = rng.below(1000);
        out.push(match r {
            0..=4 => Step::Crash,
            5..=14 if faults => {
                let f = match rng.below(4) {
                    0 => Some(Fault::Writes),
                    1 => Some(Fault::Flushes),
                    2 => Some(Fault::Reads),
                    _ => None,
                };
                Step::Fault(rng.below(EXPORTS as u64) as usize, f)
            }
            15..=449 => Step::Turns(1 + rng.below(12) as u32),
            _ => {
                let (kind, offset, len) = gen_op(&mut rng, piece);
                Step::Op {
                    conn: rng.below((CONNS * EXPORTS) as u64) as usize,
                    kind,
                    offset,
                    len,
                }
            }
        });
    }
    out
}

// ---------------------------------------------------------------- running

/// One client connection and its requests in flight.
struct Conn {
    client: Client,
    export: usize,
    /// cookie -> (model op, read length).
    flight: BTreeMap<u64, (OpId, usize)>,
}

struct Run {
    seed: u64,
    durability: Durability,
    model: Model,
    disks: Vec<Rc<RefCell<DiskState>>>,
    nvram: Vec<u8>,
    /// The log is in guest RAM (no NVRAM device): a crash loses it (`disk` only).
    ram_log: bool,
    server: Option<Server>,
    conns: Vec<Conn>,
    now_us: u64,
    next_cookie: u64,
    rng: Rng,
    /// What happened, for the report of a failure.
    trail: VecDeque<String>,
    /// The NVLOG mirrored to another "host" (`mirror=sync`), when the run has one.
    mirror: Option<MirrorSim>,
}

/// The other host's copy of the log and the sender that fills it (the real shipper), with
/// a link that goes down and comes back.
struct MirrorSim {
    cfg: MirrorConfig,
    copy: Vec<u8>,
    shipper: Shipper,
    beat: u64,
    link_up: bool,
    /// The copy is marked outdated: a node starting on the other host discards it.
    outdated: bool,
    /// The copy has had a full pass since the sender last started over: the cluster may
    /// start the node over it (an agent promotes only such a copy).
    synced: bool,
    /// Crashes that were host failures (the node restarted over the copy).
    host_failures: u64,
}

impl MirrorSim {
    /// One sender pass: ship what the log has committed into the copy, then tell the guest
    /// (its block in page 0) how far the copy goes, or that the link is down.
    fn pass(&mut self, server: &mut Server) {
        let region = |s: &Server| {
            let mut mem = vec![0u8; NVRAM_PAGES * PAGE];
            for i in 0..NVRAM_PAGES {
                let b = hpdi::BufId::new(1, i as u32);
                mem[i * PAGE..(i + 1) * PAGE].copy_from_slice(s.pool().buf(b).unwrap());
            }
            mem
        };
        let snapshot = region(server);
        self.beat += 1;
        let (state, log_id) = match newest_superblock(&snapshot[..]) {
            Some((_, sb)) => (LinkState::Up, sb.log_id),
            None => return,
        };
        let block = if self.link_up {
            let plan = self.shipper.pass(&snapshot[..], || {
                newest_superblock(&region(server)[..]).map(|(_, s)| s)
            });
            for w in &plan.writes {
                let at = w.at as usize;
                self.copy[at..at + w.bytes.len()].copy_from_slice(&w.bytes);
            }
            self.outdated = false;
            self.synced = true;
            MirrorBlock::new(state, log_id, self.shipper.committed(), self.beat)
        } else {
            // Down: once every record the copy vouches for is retired (on disk), mark the
            // copy outdated and say so; then the guest may write through.
            // (The sender cannot know what the guest acknowledged: it waits until the log
            // holds no live record at all.)
            let retired = newest_superblock(&snapshot[..]).map_or(0, |(_, s)| s.retired_seq);
            if recoverable(&snapshot[..]) <= retired {
                self.outdated = true;
            }
            let state = if self.outdated {
                LinkState::Outdated
            } else {
                LinkState::Down
            };
            MirrorBlock::new(state, log_id, self.shipper.committed(), self.beat)
        };
        let page0 = server.pool_mut().buf_mut(hpdi::BufId::new(1, 0)).unwrap();
        page0[BLOCK_AT..BLOCK_AT + 64].copy_from_slice(block.as_bytes());
    }
}

const NAMES: [&str; EXPORTS] = ["disk0", "disk1"];

impl Run {
    fn new(seed: u64, durability: Durability, mirrored: bool) -> Self {
        let md = match durability {
            Durability::Disk => MDurability::Disk,
            Durability::Nvlog => MDurability::Nvlog,
        };
        let mut model = Model::new(&[DISK; EXPORTS], md);
        model.errors_allowed = false;
        let mut run = Self {
            seed,
            durability,
            model,
            disks: (0..EXPORTS)
                .map(|i| Rc::new(RefCell::new(DiskState::new(seed ^ (i as u64 + 1)))))
                .collect(),
            nvram: vec![0; NVRAM_PAGES * PAGE],
            ram_log: durability == Durability::Disk && seed % 4 == 3,
            server: None,
            conns: Vec::new(),
            now_us: 0,
            next_cookie: 1,
            rng: Rng::new(seed ^ 0x5eed),
            trail: VecDeque::new(),
            mirror: mirrored.then(|| MirrorSim {
                cfg: MirrorConfig {
                    mode: MirrorMode::Sync,
                    policy: if seed.is_multiple_of(2) {
                        MirrorPolicy::Degraded
                    } else {
                        MirrorPolicy::Stop
                    },
                    max_lag: 8,
                    timeout_ms: 100,
                },
                copy: vec![0; NVRAM_PAGES * PAGE],
                shipper: Shipper::new(),
                beat: 0,
                link_up: true,
                outdated: false,
                synced: false,
                host_failures: 0,
            }),
        };
        run.boot();
        run
    }

    fn note(&mut self, s: String) {
        if self.trail.len() == 60 {
            self.trail.pop_front();
        }
        self.trail.push_back(s);
    }

    /// Starts a server over the disks and the NVRAM, and connects every client.
    fn boot(&mut self) {
        let mut pool = BufferPool::host(48, CHUNK).unwrap();
        let mut mem: Box<dyn DmaMemory> = Box::new(HostMemory::new(self.nvram.len()));
        mem.bytes_mut().copy_from_slice(&self.nvram);
        let region = pool.add_region(mem, PAGE).unwrap();
        // A log formatted now gets a new identity, as the guest's (from the TSC) does.
        self.now_us += 1;
        let (log, _) = Nvlog::open(&mut pool, region, self.seed ^ (self.now_us << 20)).unwrap();
        let disks = self
            .disks
            .iter()
            .map(|d| Disk {
                dev: Box::new(CacheDisk {
                    state: d.clone(),
                    pending: Vec::new(),
                    stats: DeviceStats::default(),
                }),
                queue: QueuePair::new(64).unwrap(),
            })
            .collect();
        let exports = NAMES.iter().map(|n| export(n, false)).collect();
        let mut server = Server::new(exports, disks, pool, CONNS * EXPORTS)
            .with_log(log, self.durability)
            .unwrap();
        if let Some(m) = &self.mirror {
            server.set_mirror(m.cfg);
        }
        server.set_time(self.now_us);
        self.conns.clear();
        for slot in 0..CONNS * EXPORTS {
            let e = slot % EXPORTS;
            let client = connect(&mut server, slot, NAMES[e], slot % 2 == 1);
            self.conns.push(Conn {
                client,
                export: e,
                flight: BTreeMap::new(),
            });
        }
        self.server = Some(server);
    }

    /// Drops everything volatile; keeps the NVRAM and what the disks made durable.
    fn crash(&mut self) {
        let server = self.server.take().expect("a server");
        let (_, pool) = server.into_parts();
        let pages = self.nvram.len() / PAGE;
        for i in 0..pages {
            let b = hpdi::BufId::new(1, i as u32);
            self.nvram[i * PAGE..(i + 1) * PAGE].copy_from_slice(pool.buf(b).unwrap());
        }
        if self.ram_log {
            self.nvram.fill(0);
        }
        if let Some(m) = self.mirror.as_mut()
            && (m.synced || m.outdated)
            && self.rng.chance(50)
        {
            // The whole host failed: the node starts on the other host, over the copy;
            // the failed host's log becomes the (stale) copy the sender resyncs.
            core::mem::swap(&mut self.nvram, &mut m.copy);
            let outdated = core::mem::take(&mut m.outdated);
            m.synced = false;
            // The failed host's log is never taken as the copy: it is another history (its
            // unacknowledged records share sequence numbers with what the node logs now).
            // The receiver starts from an empty copy and the sender resends everything.
            m.copy.fill(0);
            m.shipper.reset(None);
            m.host_failures += 1;
            if outdated {
                // Never replayed: the disks hold every acknowledged write.
                self.nvram.fill(0);
                self.note("  the copy is outdated: the node starts with an empty log".into());
            }
            self.note("HOST FAILURE: the node restarts over the mirror's copy".into());
        }
        for d in &self.disks {
            d.borrow_mut().crash();
        }
        self.model.crash();
        self.note("CRASH".into());
        self.boot();
    }

    /// Sends an operation; false when the model refuses it (it overlaps one in flight).
    fn send(&mut self, conn: usize, kind: Kind, offset: u64, len: u64) -> bool {
        let export = self.conns[conn].export;
        let Ok(id) = self.model.start(export, kind, offset, len) else {
            return false;
        };
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let (code, flags) = match kind {
            Kind::Read => (cmd::READ, 0),
            Kind::Write { fua } => (cmd::WRITE, if fua { cflag::FUA } else { 0 }),
            Kind::Zero { fua, no_hole } => (
                cmd::WRITE_ZEROES,
                (if fua { cflag::FUA } else { 0 }) | if no_hole { cflag::NO_HOLE } else { 0 },
            ),
            Kind::Trim { fua } => (cmd::TRIM, if fua { cflag::FUA } else { 0 }),
            Kind::Flush => (cmd::FLUSH, 0),
            Kind::Cache => (cmd::CACHE, 0),
        };
        let (off, l) = if kind == Kind::Flush {
            (0, 0)
        } else {
            (offset, len)
        };
        let c = &mut self.conns[conn];
        c.client.push(&request(code, flags, cookie, off, l as u32));
        if matches!(kind, Kind::Write { .. }) {
            let p = self.model.payload_of(id);
            c.client.push(&p);
        }
        let rl = if kind == Kind::Read { len as usize } else { 0 };
        c.flight.insert(cookie, (id, rl));
        self.note(format!(
            "conn {conn} export {export}: {kind} {off:#x}+{l:#x} (cookie {cookie})"
        ));
        true
    }

    /// Turns of the loop: service every client, poll the disks, take every reply.
    fn turns(&mut self, n: u32) -> Result<(), String> {
        for _ in 0..n {
            self.now_us += self.rng.below(3000);
            let server = self.server.as_mut().expect("a server");
            server.set_time(self.now_us);
            for c in self.conns.iter_mut() {
                if !c.client.closed
                    && server.service(c.client.slot, &mut c.client.pipe) == ConnState::Close
                {
                    c.client.closed = true;
                }
            }
            server.poll_disks();
            if let Some(m) = self.mirror.as_mut() {
                if self.rng.chance(if m.link_up { 2 } else { 5 }) {
                    m.link_up = !m.link_up;
                }
                if self.rng.chance(40) {
                    m.pass(server);
                }
            }
            self.replies()?;
        }
        Ok(())
    }

    fn replies(&mut self) -> Result<(), String> {
        for ci in 0..self.conns.len() {
            loop {
                let c = &mut self.conns[ci];
                let flight = &c.flight;
                let Some(r) = parse_reply(&mut c.client, &|k| flight.get(&k).map(|f| f.1)) else {
                    break;
                };
                let Some((id, read_len)) = c.flight.remove(&r.cookie) else {
                    return Err(format!("reply to unknown cookie {}", r.cookie));
                };
                let ok = r.error == 0;
                let data = (read_len > 0).then_some(r.data.as_slice());
                self.note(format!("  reply cookie {} error {}", r.cookie, r.error));
                self.model
                    .complete(id, ok, data)
                    .map_err(|e| format!("cookie {}: {e}", r.cookie))?;
            }
        }
        Ok(())
    }

    /// Waits (bounded) until nothing is in flight.
    fn settle(&mut self) -> Result<(), String> {
        for _ in 0..20_000 {
            if self.conns.iter().all(|c| c.flight.is_empty()) {
                return Ok(());
            }
            self.turns(1)?;
        }
        let stuck: Vec<u64> = self
            .conns
            .iter()
            .flat_map(|c| c.flight.keys().copied())
            .collect();
        Err(format!("requests never answered: cookies {stuck:?}"))
    }

    /// Reads `ranges` of `export` through connection `conn` and checks them.
    fn verify(&mut self, export: usize, ranges: &[(u64, u64)]) -> Result<(), String> {
        let conn = export; // connection `export` serves that export
        for &(off, len) in ranges {
            let mut at = off;
            while at < off + len {
                let n = (off + len - at).min(1 << 20);
                if !self.send(conn, Kind::Read, at, n) {
                    return Err(format!("check read {at:#x}+{n:#x} refused by the model"));
                }
                self.settle()?;
                at += n;
            }
        }
        Ok(())
    }

    fn step(&mut self, s: Step) -> Result<(), String> {
        match s {
            Step::Op {
                conn,
                kind,
                offset,
                len,
            } => {
                if self.conns[conn].flight.len() < MAX_IN_FLIGHT {
                    self.send(conn, kind, offset, len);
                }
            }
            Step::Turns(n) => self.turns(n)?,
            Step::Crash => {
                self.crash();
                for e in 0..EXPORTS {
                    let r = self.model.uncertain_ranges(e);
                    self.verify(e, &r)?;
                }
            }
            Step::Fault(disk, f) => {
                self.disks[disk].borrow_mut().fault = f;
                self.model.errors_allowed = true;
                self.note(format!("FAULT disk {disk}: {f:?}"));
            }
        }
        Ok(())
    }

    /// Runs `steps`, then heals the disks, settles and reads everything back, crashes and
    /// reads everything back again.
    fn run(&mut self, steps: &[Step]) -> Result<(), String> {
        for s in steps {
            self.step(*s)?;
        }
        for d in &self.disks {
            d.borrow_mut().fault = None;
        }
        self.settle()?;
        let all = [(0, DISK)];
        for e in 0..EXPORTS {
            self.verify(e, &all)?;
        }
        self.crash();
        for e in 0..EXPORTS {
            self.verify(e, &all)?;
        }
        // The log drains once the disks work.
        self.send(0, Kind::Flush, 0, 0);
        self.settle()?;
        Ok(())
    }
}

fn run_seed(
    seed: u64,
    steps: &[Step],
    durability: Durability,
    mirrored: bool,
) -> Result<Box<Run>, Box<(String, Run)>> {
    let mut r = Run::new(seed, durability, mirrored);
    match r.run(steps) {
        Ok(()) => Ok(Box::new(r)),
        Err(e) => Err(Box::new((e, r))),
    }
}

/// Drops steps while the run still fails: the smallest script that shows the failure.
fn shrink(seed: u64, mut steps: Vec<Step>, durability: Durability, mirrored: bool) -> Vec<Step> {
    let mut chunk = steps.len() / 2;
    while chunk >= 1 {
        let mut i = 0;
        while i < steps.len() {
            let mut fewer = steps.clone();
            fewer.drain(i..(i + chunk).min(steps.len()));
            if run_seed(seed, &fewer, durability, mirrored).is_err() {
                steps = fewer;
            } else {
                i += chunk;
            }
        }
        chunk /= 2;
    }
    steps
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn campaign(durability: Durability, salt: u64, mirrored: bool) {
    let seeds = env_u64("TANDEM_MODEL_SEEDS").unwrap_or(if mirrored {
        DEFAULT_SEEDS / 3
    } else {
        DEFAULT_SEEDS
    });
    let only = env_u64("TANDEM_MODEL_SEED");
    let (mut ops, mut crashes, mut sectors, mut host_failures) = (0, 0, 0, 0);
    let list: Vec<u64> = match only {
        Some(s) => vec![s],
        None => (0..seeds)
            .map(|i| i.wrapping_mul(0x1000_0001) ^ salt)
            .collect(),
    };
    for seed in list {
        let steps = script(seed, 300);
        match run_seed(seed, &steps, durability, mirrored) {
            Ok(r) => {
                host_failures += r.mirror.as_ref().map_or(0, |m| m.host_failures);
                ops += r.model.counts.ops;
                crashes += r.model.counts.crashes;
                sectors += r.model.counts.sectors_checked;
            }
            Err(failed) => {
                let e = failed.0;
                let small = shrink(seed, steps, durability, mirrored);
                let (e2, r) = match run_seed(seed, &small, durability, mirrored) {
                    Err(x) => *x,
                    Ok(_) => (e.clone(), Run::new(seed, durability, mirrored)),
                };
                std::eprintln!("seed {seed} ({durability:?}) diverges: {e}");
                std::eprintln!("shrunk to {} steps: {small:#?}", small.len());
                std::eprintln!("last events of the shrunk run:");
                for t in &r.trail {
                    std::eprintln!("  {t}");
                }
                panic!("seed {seed} ({durability:?}): {e2}");
            }
        }
    }
    std::eprintln!(
        "model ({durability:?}, mirrored: {mirrored}): {seeds} seeds, {ops} ops, {crashes} \
         crashes ({host_failures} host failures over the mirror's copy), {sectors} sectors \
         checked, 0 divergences"
    );
}

#[test]
fn random_runs_with_crashes_match_the_model_under_disk() {
    campaign(Durability::Disk, 0, false);
}

#[test]
fn random_runs_with_crashes_match_the_model_under_nvlog() {
    campaign(Durability::Nvlog, 0x77, false);
}

/// `mirror=sync` (either policy): the link goes down and comes back, and half the crashes
/// are host failures after which the node starts over the other host's copy of its log.
/// No acknowledged write may be lost.
#[test]
fn random_runs_with_host_failures_over_the_mirror_match_the_model() {
    campaign(Durability::Nvlog, 0x1337, true);
}

#[test]
fn write_then_write_zeroes_then_read_reads_zeroes_across_a_crash() {
    // The case that was reported: every such range read back its old bytes.
    for durability in [Durability::Disk, Durability::Nvlog] {
        let mut steps = Vec::new();
        for i in 0..8 {
            let offset = i * 4096;
            steps.push(Step::Op {
                conn: 0,
                kind: Kind::Write { fua: false },
                offset,
                len: 4096,
            });
            steps.push(Step::Turns(20));
            steps.push(Step::Op {
                conn: 0,
                kind: Kind::Zero {
                    fua: true,
                    no_hole: false,
                },
                offset,
                len: 4096,
            });
            steps.push(Step::Turns(20));
            steps.push(Step::Op {
                conn: 0,
                kind: Kind::Read,
                offset,
                len: 4096,
            });
            steps.push(Step::Turns(20));
        }
        steps.push(Step::Op {
            conn: 0,
            kind: Kind::Flush,
            offset: 0,
            len: 0,
        });
        steps.push(Step::Turns(50));
        steps.push(Step::Crash);
        if let Err(failed) = run_seed(1, &steps, durability, false) {
            panic!("{durability:?}: {}", failed.0);
        }
    }
}
