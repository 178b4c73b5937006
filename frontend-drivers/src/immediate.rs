//! Bookkeeping shared by devices that finish every request the moment it starts (the RAM
//! disk, the memory region): the HPDI's validation, a bounded list of finished requests
//! waiting to be reaped, and the counters.

use alloc::collections::VecDeque;

use hpdi::device::DeviceStats;
use hpdi::{BufferPool, Capabilities, Completion, Error, Request};

pub struct Immediate {
    done: VecDeque<Completion>,
    depth: usize,
    pub stats: DeviceStats,
}

impl Immediate {
    /// Holds at most `depth` finished requests before refusing new ones with `RingFull`.
    pub fn new(depth: usize) -> Self {
        Self {
            done: VecDeque::new(),
            depth: depth.max(1),
            stats: DeviceStats::default(),
        }
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Validates `req` against `caps` and the pool, runs it with `exec`, and queues the
    /// outcome for [`Immediate::complete`].
    pub fn start(
        &mut self,
        caps: &Capabilities,
        pool: &mut BufferPool,
        req: &Request,
        exec: impl FnOnce(&mut BufferPool, &mut DeviceStats) -> Result<u32, Error>,
    ) -> Result<(), Error> {
        if self.done.len() >= self.depth {
            return Err(Error::RingFull);
        }
        caps.validate(req)?;
        for seg in req.sg.as_slice() {
            pool.check(seg)?;
        }
        let result = exec(pool, &mut self.stats);
        self.stats.submitted += 1;
        self.done.push_back(Completion {
            tag: req.tag,
            result,
        });
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.done.len() as u32);
        Ok(())
    }

    pub fn complete(&mut self, max: usize, done: &mut dyn FnMut(Completion)) -> usize {
        let n = max.min(self.done.len());
        for c in self.done.drain(..n) {
            done(c);
        }
        self.stats.completed += n as u64;
        n
    }

    pub fn in_flight(&self) -> usize {
        self.done.len()
    }
}
