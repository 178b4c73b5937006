//! The application's side of one open device: a submission ring and a completion ring.

use crate::device::Device;
use crate::error::Error;
use crate::pool::BufferPool;
use crate::request::{Completion, Request};
use crate::ring::Ring;

pub struct QueuePair {
    pub sq: Ring<Request>,
    pub cq: Ring<Completion>,
}

impl QueuePair {
    /// Rings of `depth` entries each (a power of two).
    pub fn new(depth: usize) -> Result<Self, Error> {
        Ok(Self {
            sq: Ring::new(depth)?,
            cq: Ring::new(depth)?,
        })
    }

    /// Queues one request; `RingFull` when the submission ring is full.
    pub fn submit(&mut self, req: Request) -> Result<(), Error> {
        self.sq.push(req).map_err(|(e, _)| e)
    }

    /// Lets the device make progress; returns completions posted.
    pub fn poll(&mut self, dev: &mut dyn Device, pool: &mut BufferPool) -> usize {
        dev.poll(pool, &mut self.sq, &mut self.cq)
    }

    /// Takes up to `max` completions.
    pub fn reap(&mut self, out: &mut impl Extend<Completion>, max: usize) -> usize {
        self.cq.pop_batch(out, max)
    }

    /// Requests submitted and not yet reaped (in either ring or in the device).
    pub fn outstanding(&self, dev: &dyn Device) -> usize {
        self.sq.len() + dev.in_flight() + self.cq.len()
    }
}
