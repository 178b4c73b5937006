//! A single-producer, single-consumer ring of power-of-two capacity.
//!
//! Indices are free-running `u32`s (`tail - head` is the fill level even across wraparound),
//! the slot is `index & mask`. Producers and consumers move many entries per call
//! ([`Ring::push_batch`], [`Ring::pop_batch`]) so that the cost of crossing between the
//! application and the driver is paid once per batch, not once per request.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::error::Error;

/// Largest ring accepted (virtio's maximum queue size).
pub const MAX_CAPACITY: usize = 32_768;

pub struct Ring<T> {
    slots: Box<[Option<T>]>,
    head: u32,
    tail: u32,
    mask: u32,
}

impl<T> Ring<T> {
    pub fn new(capacity: usize) -> Result<Self, Error> {
        Self::with_start(capacity, 0)
    }

    /// A ring whose indices start at `start` (tests use it to exercise `u32` wraparound).
    pub fn with_start(capacity: usize, start: u32) -> Result<Self, Error> {
        if !capacity.is_power_of_two() || capacity > MAX_CAPACITY {
            return Err(Error::BadCapacity(capacity));
        }
        let mut slots = Vec::with_capacity(capacity);
        slots.resize_with(capacity, || None);
        Ok(Self {
            slots: slots.into_boxed_slice(),
            head: start,
            tail: start,
            mask: capacity as u32 - 1,
        })
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn len(&self) -> usize {
        self.tail.wrapping_sub(self.head) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }

    pub fn free(&self) -> usize {
        self.capacity() - self.len()
    }

    /// Producer index (entries ever pushed, mod 2^32).
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// Consumer index (entries ever popped, mod 2^32).
    pub fn head(&self) -> u32 {
        self.head
    }

    /// Pushes one entry; a full ring hands it back.
    pub fn push(&mut self, item: T) -> Result<(), (Error, T)> {
        if self.is_full() {
            return Err((Error::RingFull, item));
        }
        let slot = &mut self.slots[(self.tail & self.mask) as usize];
        debug_assert!(slot.is_none());
        *slot = Some(item);
        self.tail = self.tail.wrapping_add(1);
        Ok(())
    }

    /// Pushes entries from `items` while there is room; returns how many were taken.
    /// Entries the ring had no room for stay in the iterator.
    pub fn push_batch<I: Iterator<Item = T>>(
        &mut self,
        items: &mut core::iter::Peekable<I>,
    ) -> usize {
        let mut n = 0;
        while !self.is_full() {
            let Some(item) = items.next() else { break };
            let _ = self.push(item);
            n += 1;
        }
        n
    }

    pub fn pop(&mut self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let item = self.slots[(self.head & self.mask) as usize].take();
        self.head = self.head.wrapping_add(1);
        debug_assert!(item.is_some());
        item
    }

    /// Pops up to `max` entries into `out`; returns how many.
    pub fn pop_batch(&mut self, out: &mut impl Extend<T>, max: usize) -> usize {
        let n = self.len().min(max);
        out.extend((0..n).filter_map(|_| self.pop()));
        n
    }

    /// The entry `pop` would return next.
    pub fn peek(&self) -> Option<&T> {
        if self.is_empty() {
            None
        } else {
            self.slots[(self.head & self.mask) as usize].as_ref()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn capacity_must_be_power_of_two() {
        assert_eq!(Ring::<u8>::new(0).err(), Some(Error::BadCapacity(0)));
        assert_eq!(Ring::<u8>::new(12).err(), Some(Error::BadCapacity(12)));
        assert_eq!(
            Ring::<u8>::new(65_536).err(),
            Some(Error::BadCapacity(65_536))
        );
        assert_eq!(Ring::<u8>::new(128).unwrap().capacity(), 128);
    }

    #[test]
    fn full_ring_returns_the_item() {
        let mut r = Ring::new(2).unwrap();
        r.push(1).unwrap();
        r.push(2).unwrap();
        assert!(r.is_full());
        assert_eq!(r.push(3), Err((Error::RingFull, 3)));
        assert_eq!(r.pop(), Some(1));
        r.push(3).unwrap();
        assert_eq!((r.pop(), r.pop(), r.pop()), (Some(2), Some(3), None));
    }

    #[test]
    fn wraps_around_u32_indices() {
        let mut r = Ring::with_start(4, u32::MAX - 1).unwrap();
        for round in 0..10u32 {
            for i in 0..3 {
                r.push(round * 10 + i).unwrap();
            }
            assert_eq!(r.len(), 3);
            for i in 0..3 {
                assert_eq!(r.pop(), Some(round * 10 + i));
            }
        }
        assert!(r.head() < 100, "indices wrapped past u32::MAX");
    }

    #[test]
    fn batches_stop_at_the_boundaries() {
        let mut r = Ring::new(8).unwrap();
        let mut src = (0..20).peekable();
        assert_eq!(r.push_batch(&mut src), 8);
        assert_eq!(
            src.peek(),
            Some(&8),
            "unpushed entries stay in the iterator"
        );
        let mut out = Vec::new();
        assert_eq!(r.pop_batch(&mut out, 5), 5);
        assert_eq!(out, [0, 1, 2, 3, 4]);
        assert_eq!(r.push_batch(&mut src), 5);
        assert_eq!(r.pop_batch(&mut out, 100), 8);
        assert_eq!(out, (0..13).collect::<Vec<_>>());
        assert_eq!(r.pop_batch(&mut out, 100), 0);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Push(u8),
        Pop(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u8..20).prop_map(Step::Push),
            (1u8..20).prop_map(Step::Pop)
        ]
    }

    proptest! {
        /// Any interleaving of batched pushes and pops behaves like a bounded FIFO:
        /// nothing lost, nothing duplicated, order kept, fill level within capacity.
        #[test]
        fn behaves_like_a_bounded_fifo(
            cap_log in 0u32..6,
            start in any::<u32>(),
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let cap = 1usize << cap_log;
            let mut ring = Ring::with_start(cap, start).unwrap();
            let mut model = VecDeque::new();
            let mut next = 0u64;
            for s in steps {
                match s {
                    Step::Push(n) => {
                        let mut items = (next..next + u64::from(n)).peekable();
                        let pushed = ring.push_batch(&mut items);
                        prop_assert_eq!(pushed, usize::from(n).min(cap - model.len()));
                        model.extend(next..next + pushed as u64);
                        next += pushed as u64;
                    }
                    Step::Pop(n) => {
                        let mut out = Vec::new();
                        ring.pop_batch(&mut out, usize::from(n));
                        let want: Vec<u64> = (0..usize::from(n).min(model.len()))
                            .map(|_| model.pop_front().unwrap())
                            .collect();
                        prop_assert_eq!(out, want);
                    }
                }
                prop_assert_eq!(ring.len(), model.len());
                prop_assert!(ring.len() <= cap);
                prop_assert_eq!(ring.peek(), model.front());
            }
        }
    }
}
