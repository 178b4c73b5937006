//! What the HPDI rings cost per request.
//!
//! A null block device (completes every request at once, moves no data) isolates the
//! interface: the same requests go either through a `QueuePair` (submit, poll, reap) or
//! straight to the device's `start`/`complete`. Prints ns per request for both, side by side
//! in one run, medians of several repeats, and the difference. Compare the difference with a
//! real device's per-request latency (tens of microseconds) to see the HPDI's share.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant;

use hpdi::{
    BufferPool, Capabilities, Completion, Device, DeviceKind, Error, Op, OpSet, QueuePair, Request,
    Segment, SgList,
};

struct Null {
    done: VecDeque<Completion>,
    depth: usize,
}

impl Device for Null {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: DeviceKind::Block,
            block_size: 512,
            capacity: 1 << 40,
            max_segments: 32,
            queue_depth: self.depth as u16,
            ops: OpSet::of(&[Op::Read, Op::Write, Op::Flush]),
            read_only: false,
        }
    }
    fn start(&mut self, pool: &mut BufferPool, req: &Request) -> Result<(), Error> {
        if self.done.len() >= self.depth {
            return Err(Error::RingFull);
        }
        self.capabilities().validate(req)?;
        for s in req.sg.as_slice() {
            pool.check(s)?;
        }
        self.done.push_back(Completion {
            tag: req.tag,
            result: Ok(4096),
        });
        Ok(())
    }
    fn complete(
        &mut self,
        _: &mut BufferPool,
        max: usize,
        done: &mut dyn FnMut(Completion),
    ) -> usize {
        let n = max.min(self.done.len());
        self.done.drain(..n).for_each(done);
        n
    }
    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

const OPS: u64 = 2_000_000;
const REPEATS: usize = 7;

fn run(qd: usize, rings: bool) -> f64 {
    let mut dev = Null {
        done: VecDeque::new(),
        depth: qd,
    };
    let mut pool = BufferPool::host(qd, 4096).unwrap();
    let bufs: Vec<_> = (0..qd).map(|_| pool.alloc().unwrap()).collect();
    let mut q = QueuePair::new(qd.next_power_of_two()).unwrap();
    let mut out = Vec::with_capacity(qd);
    let t = Instant::now();
    let mut issued = 0u64;
    while issued < OPS {
        for (i, b) in bufs.iter().enumerate() {
            let req = Request::read(
                (i as u64) * 4096,
                SgList::one(Segment::whole(*b, 4096)),
                i as u64,
            );
            if rings {
                q.submit(req).unwrap();
            } else {
                dev.start(&mut pool, &req).unwrap();
            }
        }
        out.clear();
        if rings {
            q.poll(&mut dev, &mut pool);
            q.poll(&mut dev, &mut pool);
            q.reap(&mut out, usize::MAX);
        } else {
            dev.complete(&mut pool, usize::MAX, &mut |c| out.push(c));
        }
        assert_eq!(out.len(), qd);
        black_box(&out);
        issued += qd as u64;
    }
    t.elapsed().as_nanos() as f64 / issued as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    println!("HPDI ring overhead, null device, {OPS} requests per run, median of {REPEATS} runs");
    println!(
        "{:>5} {:>12} {:>12} {:>12} {:>8}",
        "qd", "direct ns/op", "rings ns/op", "diff ns/op", "ratio"
    );
    for qd in [1usize, 8, 32, 128] {
        let mut d = Vec::new();
        let mut r = Vec::new();
        for _ in 0..REPEATS {
            d.push(run(qd, false));
            r.push(run(qd, true));
        }
        let (d, r) = (median(d), median(r));
        println!("{qd:>5} {d:>12.1} {r:>12.1} {:>12.1} {:>8.2}", r - d, r / d);
    }
}
