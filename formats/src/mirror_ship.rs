//! What the mirror sender ships: the writes that bring the other host's copy of a node's
//! NVLOG region up to the records the node has committed, in an order that keeps the copy a
//! valid log after every single write.
//!
//! The sender reads the live region while the guest keeps writing it, so it trusts nothing
//! it has not checked. Each pass:
//! 1. walks the records after the last one shipped with the shared recovery walk
//!    ([`crate::nvlog_region::walk`]): only records whose header and payload check out (CRC32C)
//!    are shipped, and their bytes are the very bytes that were checked;
//! 2. reads the superblock again *after* the walk. The guest retires records (writes its
//!    superblock) before it reuses their header slots and data pages, so a superblock read
//!    after a record was seen covers every retirement that record's space needed;
//! 3. ships that superblock first, then each record's payload, then its header. A record
//!    whose slot or pages would still hold a record the copy counts as live is held back to
//!    a later pass (this happens only when the superblock read was older than the record, for
//!    example when the newest superblock copy was being written and failed its CRC).
//!
//! So at every point the copy's own recovery walk finds every record up to what was last
//! committed, or the copy's superblock says the record is retired (on disk). The commit
//! number the sender sends, and the receiver acknowledges, is exactly that bound: every
//! record up to it is in the copy or on disk. The guest acknowledges a write to its client
//! only once this number has reached the write's record.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use zerocopy::IntoBytes;

use crate::nvlog::{Superblock, PAGE};
use crate::nvlog_region::{newest_superblock, walk, Geometry, Pages, SUPERBLOCK_AT};

/// One write into the copy: `bytes` at byte `at` of the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub at: u64,
    pub bytes: Vec<u8>,
}

/// What one pass ships: writes in order, then the sequence number they complete.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// Every record up to this is in the copy once the writes are applied, or retired.
    /// `None`: nothing new (no log yet, or nothing changed).
    pub commit: Option<u64>,
}

/// A shipped record the copy still counts as live: its sequence number and data pages.
#[derive(Debug, Clone, Copy)]
struct Shipped {
    seq: u64,
    page: u64,
    pages: u64,
}

/// The sender's memory of what the copy holds.
#[derive(Debug, Clone, Default)]
pub struct Shipper {
    geometry: Option<Geometry>,
    log_id: u64,
    /// The next record to ship, and the header slot it is in.
    next_seq: u64,
    next_slot: u64,
    /// The superblock last shipped, and which copy slot the next goes to.
    shipped_sb: Option<Superblock>,
    next_copy: usize,
    live: VecDeque<Shipped>,
    /// The last commit number planned.
    committed: u64,
    /// The copy's superblock, as the receiver said at connection.
    copy_hint: Option<(usize, Superblock)>,
}

impl Shipper {
    /// A shipper for a copy of unknown content: its first pass ships the whole live log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets what the copy holds (a new connection: the copy may hold anything the last
    /// one left), so that the next pass resends the whole live log. `copy` is the copy's
    /// newest valid superblock and its slot, as the receiver reads it from its copy: the
    /// sender never ships an older one (that would move the copy's tail back to records it
    /// may never have had).
    pub fn reset(&mut self, copy: Option<(usize, Superblock)>) {
        *self = Self {
            copy_hint: copy,
            ..Self::default()
        };
    }

    /// The last commit number planned.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// One pass over `region`. `superblock_now` reads the region's newest superblock again,
    /// fresh (not from any cache `region` keeps): it is called after the walk.
    pub fn pass(
        &mut self,
        region: &(impl Pages + ?Sized),
        superblock_now: impl FnOnce() -> Option<Superblock>,
    ) -> Plan {
        let mut plan = Plan::default();
        let Some(g) = Geometry::of(region.pages()) else {
            return plan;
        };
        let Some((_, s0)) = newest_superblock(region) else {
            return plan; // not formatted yet
        };
        if self.geometry != Some(g) || self.log_id != s0.log_id {
            self.start(g, &s0);
        }
        // Where this pass walks from: after the last record shipped, or from the guest's
        // tail when it has retired past that.
        let (start_seq, start_slot) = if self.next_seq <= s0.retired_seq {
            (s0.retired_seq + 1, u64::from(s0.tail_slot) % g.slots)
        } else {
            (self.next_seq, self.next_slot)
        };
        let found = walk(region, &g, self.log_id, start_slot, start_seq);
        let Some(s1) = superblock_now().filter(|s| s.log_id == self.log_id) else {
            return plan;
        };
        self.ship_superblock(&s1, &mut plan);
        let retired = self.shipped_sb.map_or(0, |s| s.retired_seq);
        if start_seq > retired + 1 && start_seq > self.next_seq {
            // The records between the copy's tail and the walk's start are neither in the
            // copy nor retired in it (the superblock read was older than the first): later.
            return self.finish(plan, retired);
        }
        if start_seq > self.next_seq {
            (self.next_seq, self.next_slot) = (start_seq, start_slot);
        }
        for f in &found.records {
            let h = f.header;
            if h.seq > retired {
                let (page, pages) = (u64::from(h.page), u64::from(h.pages()));
                if !self.fits(&g, h.seq, retired, page, pages) {
                    break; // a later pass, with a newer superblock
                }
                ship_record(region, &g, f, &mut plan);
                self.live.push_back(Shipped {
                    seq: h.seq,
                    page,
                    pages,
                });
            }
            self.next_seq = h.seq + 1;
            self.next_slot = f.slot + 1;
        }
        self.finish(plan, retired)
    }

    /// Names the commit number of a pass: every record up to it is in the copy or retired.
    fn finish(&mut self, mut plan: Plan, retired: u64) -> Plan {
        let commit = retired.max(self.next_seq - 1);
        if commit > self.committed || !plan.writes.is_empty() {
            self.committed = self.committed.max(commit);
            plan.commit = Some(self.committed);
        }
        plan
    }

    /// A new log (or the first pass): the copy's superblock copies are both rewritten.
    fn start(&mut self, g: Geometry, s0: &Superblock) {
        let hint = self.copy_hint.filter(|(_, c)| c.log_id == s0.log_id);
        *self = Self {
            geometry: Some(g),
            log_id: s0.log_id,
            // All the copy is known to hold: what its own superblock retired. (The first
            // pass jumps to the guest's tail, once the copy's superblock reaches it.)
            next_seq: hint.map_or(1, |(_, c)| c.retired_seq + 1),
            next_slot: hint.map_or(0, |(_, c)| u64::from(c.tail_slot) % g.slots),
            // The copy keeps its superblock; the next one goes to its other slot.
            shipped_sb: hint.map(|(_, c)| c),
            next_copy: hint.map_or(0, |(i, _)| 1 - i.min(1)),
            ..Self::default()
        };
    }

    /// Ships `s` when it differs from what the copy has (into both copy slots the first
    /// time, so no superblock of an older log can win in the copy), and forgets the records
    /// it retires.
    fn ship_superblock(&mut self, s: &Superblock, plan: &mut Plan) {
        let newer = self
            .shipped_sb
            .is_none_or(|old| old.retired_seq < s.retired_seq || old.tail_slot != s.tail_slot);
        let older = self
            .shipped_sb
            .is_some_and(|old| s.retired_seq < old.retired_seq);
        if !newer || older {
            return;
        }
        let copies = if self.shipped_sb.is_none() { 2 } else { 1 };
        for _ in 0..copies {
            plan.writes.push(Write {
                at: SUPERBLOCK_AT[self.next_copy] as u64,
                bytes: s.as_bytes().to_vec(),
            });
            self.next_copy = 1 - self.next_copy;
        }
        self.shipped_sb = Some(*s);
        while self.live.front().is_some_and(|l| l.seq <= s.retired_seq) {
            self.live.pop_front();
        }
    }

    /// Whether record `seq` (data pages `page..page+pages`) can go into the copy without
    /// overwriting the slot or pages of a record the copy still counts as live.
    fn fits(&self, g: &Geometry, seq: u64, retired: u64, page: u64, pages: u64) -> bool {
        if seq > retired + g.slots - 1 {
            return false;
        }
        let dp = g.data_pages;
        let overlaps = |a: u64, n: u64, b: u64, m: u64| {
            // Two extents of a ring of `dp` pages.
            n > 0 && m > 0 && ((b + dp - a % dp) % dp < n || (a + dp - b % dp) % dp < m)
        };
        !self
            .live
            .iter()
            .any(|l| overlaps(page % dp, pages, l.page % dp, l.pages))
    }
}

/// The writes of one record: its payload pages, then its header.
fn ship_record(
    region: &(impl Pages + ?Sized),
    g: &Geometry,
    f: &crate::nvlog_region::Found,
    plan: &mut Plan,
) {
    let h = &f.header;
    let len = if h.pages() > 0 { h.length } else { 0 };
    let mut at = 0u32;
    let mut i = 0u64;
    while at < len {
        let n = (len - at).min(PAGE as u32) as usize;
        let p = g.data_page(u64::from(h.page) + i);
        if let Some(b) = region.page(p) {
            let at_byte = p * PAGE as u64;
            // Pages next to each other in the region go out as one write.
            match plan.writes.last_mut() {
                Some(w) if w.at + w.bytes.len() as u64 == at_byte && w.bytes.len() % PAGE == 0 => {
                    w.bytes.extend_from_slice(&b[..n]);
                }
                _ => plan.writes.push(Write {
                    at: at_byte,
                    bytes: b[..n].to_vec(),
                }),
            }
        }
        at += n as u32;
        i += 1;
    }
    plan.writes.push(Write {
        at: g.slot_offset(f.slot),
        bytes: h.as_bytes().to_vec(),
    });
}
