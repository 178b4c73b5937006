//! The in-guest block benchmark: a fio-like job run through the HPDI (or, for comparison,
//! by calling the driver's `start`/`complete` directly), with optional write-then-read
//! verification, reporting IOPS, MB/s and latency percentiles as one JSON line.
//!
//! The job is generic over [`hpdi::Device`], so it runs on the host against the RAM disk in
//! unit tests and in the guest against virtio-blk.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use hpdi::{BufId, BufferPool, Completion, Device, Error, Op, QueuePair, Request, Segment, SgList};

use crate::histogram::Histogram;

pub use tandem_formats::bench_job::{JobSpec, Path, Rw, MAX_BS, MAX_NAME, MAX_QD};
use tandem_formats::bench_result::{BenchLine, Latency};

#[derive(Debug, Clone)]
pub struct BenchResult {
    pub ops: u64,
    pub seconds: f64,
    pub bytes: u64,
    pub errors: u64,
    pub first_error: Option<Error>,
    pub lat: Histogram,
    pub verified: Option<bool>,
    pub mismatches: u64,
    pub stats: hpdi::device::DeviceStats,
}

/// xorshift64*: cheap, deterministic offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The stamp verification writes at the start of every 512-byte sector.
fn stamp(offset: u64, seed: u64) -> u64 {
    (offset ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

fn fill(buf: &mut [u8], offset: u64, seed: u64) {
    for (i, sector) in buf.chunks_mut(512).enumerate() {
        let at = offset + (i as u64) * 512;
        sector[..8].copy_from_slice(&stamp(at, seed).to_le_bytes());
        sector[8..16].copy_from_slice(&at.to_le_bytes());
    }
}

fn check(buf: &[u8], offset: u64, seed: u64) -> bool {
    buf.chunks(512).enumerate().all(|(i, sector)| {
        let at = offset + (i as u64) * 512;
        sector[..8] == stamp(at, seed).to_le_bytes() && sector[8..16] == at.to_le_bytes()
    })
}

/// One request slot of the job: its buffer and what it is doing.
struct Slot {
    buf: BufId,
    offset: u64,
    op: Op,
    started: u64,
    busy: bool,
}

/// Drives requests through the chosen path.
struct Driver<'a> {
    dev: &'a mut dyn Device,
    queue: Option<QueuePair>,
}

impl Driver<'_> {
    fn submit(&mut self, pool: &mut BufferPool, req: Request) -> Result<(), Error> {
        match &mut self.queue {
            Some(q) => q.submit(req),
            None => self.dev.start(pool, &req),
        }
    }

    fn progress(&mut self, pool: &mut BufferPool, out: &mut Vec<Completion>) {
        match &mut self.queue {
            Some(q) => {
                q.poll(self.dev, pool);
                q.reap(out, usize::MAX);
            }
            None => {
                self.dev.notify();
                self.dev.complete(pool, usize::MAX, &mut |c| out.push(c));
            }
        }
    }
}

/// Why a job could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchError {
    Setup(String),
}

/// Runs `spec` on `dev`, taking one buffer per request slot from `pool`. `now_ns` is the
/// monotonic clock.
pub fn run(
    dev: &mut dyn Device,
    pool: &mut BufferPool,
    spec: &JobSpec,
    now_ns: &dyn Fn() -> u64,
) -> Result<BenchResult, BenchError> {
    let caps = dev.capabilities();
    let bs = u64::from(spec.bs);
    if spec.bs == 0 || spec.bs > MAX_BS || bs % u64::from(caps.block_size.max(1)) != 0 {
        return Err(BenchError::Setup(alloc::format!(
            "block size {} must be a multiple of {} up to {MAX_BS}",
            spec.bs,
            caps.block_size
        )));
    }
    if spec.bs as usize > pool.buf_size() {
        return Err(BenchError::Setup(alloc::format!(
            "block size {} exceeds pool buffers of {}",
            spec.bs,
            pool.buf_size()
        )));
    }
    if spec.qd == 0 || spec.qd > MAX_QD {
        return Err(BenchError::Setup(alloc::format!(
            "queue depth {} not in 1..={MAX_QD}",
            spec.qd
        )));
    }
    if spec.rw.writes() && caps.read_only {
        return Err(BenchError::Setup("device is read-only".into()));
    }
    let span = spec.span.unwrap_or(caps.capacity).min(caps.capacity) / bs * bs;
    let blocks = span / bs;
    if blocks == 0 {
        return Err(BenchError::Setup(alloc::format!(
            "device smaller than one {bs}-byte block"
        )));
    }
    let qd = usize::from(spec.qd);
    let mut slots = Vec::with_capacity(qd);
    let mut short = None;
    for _ in 0..qd {
        match pool.alloc() {
            Ok(buf) => slots.push(Slot {
                buf,
                offset: 0,
                op: Op::Read,
                started: 0,
                busy: false,
            }),
            Err(e) => {
                short = Some(BenchError::Setup(alloc::format!(
                    "buffer pool: {e} ({qd} buffers needed)"
                )));
                break;
            }
        }
    }
    let result = match short {
        Some(e) => Err(e),
        None => run_slots(dev, pool, spec, now_ns, &mut slots, blocks),
    };
    // Every path returns the buffers it took (in-flight ones are done by then).
    for s in &slots {
        let _ = pool.free(s.buf);
    }
    result
}

/// The job's running state: what it issued, what it wrote (for verification), and what it
/// measured.
struct Progress {
    rng: Rng,
    seq: u64,
    issued: u64,
    busy: usize,
    /// One bit per block written and completed (verification only).
    written: Vec<u64>,
    result: BenchResult,
}

fn run_slots(
    dev: &mut dyn Device,
    pool: &mut BufferPool,
    spec: &JobSpec,
    now_ns: &dyn Fn() -> u64,
    slots: &mut [Slot],
    blocks: u64,
) -> Result<BenchResult, BenchError> {
    let bs = u64::from(spec.bs);
    let mut drv = Driver {
        queue: match spec.path {
            Path::Hpdi => Some(
                QueuePair::new(slots.len().next_power_of_two())
                    .map_err(|e| BenchError::Setup(alloc::format!("{e}")))?,
            ),
            Path::Direct => None,
        },
        dev,
    };
    let verify = spec.verify && spec.rw.writes();
    let mut p = Progress {
        rng: Rng(spec.seed | 1),
        seq: 0,
        issued: 0,
        busy: 0,
        written: if verify {
            vec![0u64; blocks.div_ceil(64) as usize]
        } else {
            Vec::new()
        },
        result: BenchResult {
            ops: 0,
            seconds: 0.0,
            bytes: 0,
            errors: 0,
            first_error: None,
            lat: Histogram::default(),
            verified: None,
            mismatches: 0,
            stats: Default::default(),
        },
    };
    let limit = spec.ops_limit();
    let deadline_ns = spec.time_ms.map(|ms| ms.saturating_mul(1_000_000));
    let mut done = Vec::with_capacity(slots.len());
    let t0 = now_ns();
    loop {
        let expired = deadline_ns.is_some_and(|d| now_ns() - t0 >= d);
        if !expired {
            p.fill(&mut drv, pool, spec, now_ns, slots, blocks, limit)?;
        }
        if p.busy == 0 && (expired || p.issued >= limit) {
            break;
        }
        done.clear();
        drv.progress(pool, &mut done);
        p.reap(&done, slots, now_ns(), bs, verify);
    }
    let mut result = p.result;
    result.seconds = (now_ns() - t0) as f64 / 1e9;
    result.stats = drv.dev.stats();
    if verify {
        let (checked, bad) = verify_pass(&mut drv, pool, slots, &p.written, bs, spec.seed)?;
        result.mismatches = bad;
        result.verified = Some(bad == 0 && checked > 0);
    }
    Ok(result)
}

impl Progress {
    /// Fills every free slot with the job's next request, up to `limit` issued.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        drv: &mut Driver<'_>,
        pool: &mut BufferPool,
        spec: &JobSpec,
        now_ns: &dyn Fn() -> u64,
        slots: &mut [Slot],
        blocks: u64,
        limit: u64,
    ) -> Result<(), BenchError> {
        let bs = u64::from(spec.bs);
        let verify = spec.verify && spec.rw.writes();
        let qd = slots.len() as u64;
        for (i, s) in slots.iter_mut().enumerate() {
            if s.busy || self.issued >= limit {
                continue;
            }
            let block = if spec.rw.random() {
                self.rng.next() % blocks
            } else {
                let b = self.seq % blocks;
                self.seq += 1;
                b
            };
            let write = match spec.rw {
                Rw::Write | Rw::RandWrite => true,
                Rw::RandRw => self.rng.next() & 1 == 1,
                _ => false,
            };
            s.offset = block * bs;
            s.op = if write { Op::Write } else { Op::Read };
            if write && (verify || self.issued < qd) {
                let b = pool
                    .buf_mut(s.buf)
                    .map_err(|e| BenchError::Setup(alloc::format!("{e}")))?;
                fill(&mut b[..bs as usize], s.offset, spec.seed);
            }
            let sg = SgList::one(Segment::whole(s.buf, bs as usize));
            let req = if write {
                Request::write(s.offset, sg, i as u64)
            } else {
                Request::read(s.offset, sg, i as u64)
            };
            s.started = now_ns();
            match drv.submit(pool, req) {
                Ok(()) => {
                    s.busy = true;
                    self.busy += 1;
                    self.issued += 1;
                }
                Err(Error::RingFull) => break,
                Err(e) => {
                    self.result.errors += 1;
                    self.result.first_error.get_or_insert(e);
                    self.issued += 1;
                }
            }
        }
        Ok(())
    }

    /// Accounts for the completions in `done` (at time `now`).
    fn reap(&mut self, done: &[Completion], slots: &mut [Slot], now: u64, bs: u64, verify: bool) {
        for c in done {
            let Some(s) = slots.get_mut(c.tag as usize) else {
                continue;
            };
            if !s.busy {
                continue;
            }
            s.busy = false;
            self.busy -= 1;
            let result = &mut self.result;
            result.lat.record(now.saturating_sub(s.started));
            match c.result {
                Ok(_) => {
                    result.ops += 1;
                    result.bytes += bs;
                    if verify && s.op == Op::Write {
                        let b = s.offset / bs;
                        self.written[(b / 64) as usize] |= 1 << (b % 64);
                    }
                }
                Err(e) => {
                    result.errors += 1;
                    result.first_error.get_or_insert(e);
                }
            }
        }
    }
}

/// Reads back every block the job wrote and checks its stamps; returns (checked, mismatched).
fn verify_pass(
    drv: &mut Driver<'_>,
    pool: &mut BufferPool,
    slots: &mut [Slot],
    written: &[u64],
    bs: u64,
    seed: u64,
) -> Result<(u64, u64), BenchError> {
    let mut todo = written.iter().enumerate().flat_map(|(w, bits)| {
        (0..64)
            .filter(move |i| bits & (1 << i) != 0)
            .map(move |i| w as u64 * 64 + i)
    });
    let (mut checked, mut bad, mut busy) = (0u64, 0u64, 0usize);
    let mut done = Vec::new();
    let mut exhausted = false;
    loop {
        for (i, s) in slots.iter_mut().enumerate() {
            if s.busy || exhausted {
                continue;
            }
            let Some(block) = todo.next() else {
                exhausted = true;
                break;
            };
            s.offset = block * bs;
            let sg = SgList::one(Segment::whole(s.buf, bs as usize));
            match drv.submit(pool, Request::read(s.offset, sg, i as u64)) {
                Ok(()) => {
                    s.busy = true;
                    busy += 1;
                }
                Err(_) => bad += 1,
            }
        }
        if busy == 0 && exhausted {
            return Ok((checked, bad));
        }
        done.clear();
        drv.progress(pool, &mut done);
        for c in &done {
            let Some(s) = slots.get_mut(c.tag as usize) else {
                continue;
            };
            s.busy = false;
            busy -= 1;
            checked += 1;
            let ok = c.result.is_ok()
                && pool
                    .buf(s.buf)
                    .is_ok_and(|b| check(&b[..bs as usize], s.offset, seed));
            if !ok {
                bad += 1;
            }
        }
    }
}

/// The `BENCH {...}` JSON object of a job that ran (the contract is
/// [`tandem_formats::bench_result`]).
pub fn json(spec: &JobSpec, transport: &str, r: &BenchResult) -> String {
    let us = |ns: u64| ns / 1000;
    BenchLine {
        job: spec,
        transport,
        ops: r.ops,
        seconds: r.seconds,
        bytes: r.bytes,
        lat_us: Latency {
            p50: us(r.lat.quantile(0.5)),
            p99: us(r.lat.quantile(0.99)),
            p999: us(r.lat.quantile(0.999)),
            max: us(r.lat.max()),
        },
        verified: r.verified,
        mismatches: r.mismatches,
        errors: r.errors,
        first_error: r.first_error.as_ref().map(|e| alloc::format!("{e}")),
        max_in_flight: u64::from(r.stats.max_in_flight),
        bytes_moved: r.stats.bytes_moved,
    }
    .json()
}

/// The `BENCH {...}` JSON object of a job that could not run.
pub fn error_json(spec: &JobSpec, message: &str) -> String {
    tandem_formats::bench_result::error_json(spec, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use frontend_drivers::ramdisk::RamDisk;
    use std::cell::Cell;

    fn clock() -> impl Fn() -> u64 {
        let t = Cell::new(0u64);
        move || {
            t.set(t.get() + 1000);
            t.get()
        }
    }

    fn spec(rw: Rw, qd: u16, path: Path) -> JobSpec {
        let mut s = JobSpec::default();
        (s.rw, s.qd, s.path, s.ops, s.verify) = (rw, qd, path, Some(500), true);
        assert!(s.set_device("blk0"));
        s
    }

    #[test]
    fn verified_write_jobs_on_both_paths() {
        for path in [Path::Hpdi, Path::Direct] {
            for rw in [Rw::Write, Rw::RandWrite, Rw::RandRw] {
                let mut disk = RamDisk::new(1 << 20, 64);
                let mut pool = BufferPool::host(64, 4096).unwrap();
                let r = run(&mut disk, &mut pool, &spec(rw, 16, path), &clock()).unwrap();
                assert_eq!(r.ops, 500, "{rw:?} {path:?}");
                assert_eq!(r.errors, 0);
                assert_eq!(r.verified, Some(true), "{rw:?} {path:?}");
                assert_eq!(r.stats.max_in_flight, 16);
                assert_eq!(pool.available(), 64, "buffers returned");
                let line = json(&spec(rw, 16, path), "ram", &r);
                assert!(line.starts_with("{\"device\":\"blk0\""), "{line}");
                assert!(line.contains("\"verified\":true"));
            }
        }
    }

    #[test]
    fn corruption_is_detected() {
        // A disk that loses every write: verification must fail.
        struct Forgetful(RamDisk);
        impl Device for Forgetful {
            fn capabilities(&self) -> hpdi::Capabilities {
                self.0.capabilities()
            }
            fn start(&mut self, pool: &mut BufferPool, req: &Request) -> Result<(), Error> {
                let mut r = *req;
                if r.op == Op::Write {
                    r = Request::flush(req.tag);
                }
                self.0.start(pool, &r)
            }
            fn complete(
                &mut self,
                p: &mut BufferPool,
                m: usize,
                d: &mut dyn FnMut(Completion),
            ) -> usize {
                self.0.complete(p, m, d)
            }
            fn in_flight(&self) -> usize {
                self.0.in_flight()
            }
        }
        let mut disk = Forgetful(RamDisk::new(1 << 20, 8));
        let mut pool = BufferPool::host(8, 4096).unwrap();
        let r = run(
            &mut disk,
            &mut pool,
            &spec(Rw::Write, 4, Path::Hpdi),
            &clock(),
        )
        .unwrap();
        assert_eq!(r.verified, Some(false));
        assert!(r.mismatches > 0);
    }

    #[test]
    fn bad_jobs_are_refused_and_errors_counted() {
        let mut disk = RamDisk::new(1 << 20, 8);
        let mut pool = BufferPool::host(8, 4096).unwrap();
        let mut s = spec(Rw::RandRead, 4, Path::Hpdi);
        s.bs = 1000;
        assert!(run(&mut disk, &mut pool, &s, &clock()).is_err());
        s.bs = 8192;
        assert!(
            run(&mut disk, &mut pool, &s, &clock()).is_err(),
            "larger than pool buffers"
        );
        s.bs = 4096;
        s.qd = 9;
        assert!(
            run(&mut disk, &mut pool, &s, &clock()).is_err(),
            "more slots than buffers"
        );
        assert_eq!(pool.available(), 8, "a refused job returns what it took");
        disk.fail_with = Some(1);
        s.qd = 4;
        let r = run(&mut disk, &mut pool, &s, &clock()).unwrap();
        assert_eq!((r.ops, r.errors), (0, 500));
        assert_eq!(r.first_error, Some(Error::Device { status: 1 }));
        let line = error_json(&s, "no such \"device\"");
        assert!(line.contains("no such 'device'"));
    }

    #[test]
    fn timed_job_stops_at_its_deadline() {
        let mut disk = RamDisk::new(1 << 20, 8);
        let mut pool = BufferPool::host(8, 4096).unwrap();
        let mut s = spec(Rw::RandRead, 4, Path::Hpdi);
        s.ops = None;
        s.time_ms = Some(5); // the fake clock advances 1 µs per reading
        let r = run(&mut disk, &mut pool, &s, &clock()).unwrap();
        assert!(r.ops > 0 && r.seconds >= 0.005, "{r:?}");
    }
}
