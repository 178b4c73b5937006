//! The server's write-log path (NVLOG).
//!
//! A write that fits the log is received straight into reserved log pages and committed as
//! one record; it is acknowledged at commit (the log region is the persistence). Reads patch
//! the disk's data with newer logged data (the overlay). Consistency points write logged
//! records to the disks straight from the log pages, flush every disk, and retire them; a
//! record is retired only after every read that might have read the disk before it was
//! written has completed (read generations), so the overlay never disappears under a read.
//!
//! Durability: under `disk`, FLUSH and FUA complete only when the records they cover are
//! retired (on disk, disk flushed); under `nvlog`, once the data is in the log region.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use hpdi::{BufId, Error, Request};

use super::{Conn, Server, Stream, Sub, CHUNK};
use crate::nvlog::format::PAGE;
use crate::nvlog::log::{Nvlog, Reservation, MAX_RECORD};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// FLUSH and FUA return once the data is on the disk and the disk was flushed.
    Disk,
    /// FLUSH and FUA return once the data is in the log region (emulated NVRAM).
    Nvlog,
}

/// A write being received into log pages.
#[derive(Default)]
pub(super) struct Logged {
    pub res: Option<Reservation>,
    received: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub records: u64,
    pub bytes: u64,
    pub consistency_points: u64,
    pub replayed: u64,
    /// Times a writer waited for log space (backpressure).
    pub stalls: u64,
}

enum CpPhase {
    Writing,
    Flushing { next: usize },
    Retiring { gen: u64 },
}

/// A consistency point in progress.
struct Cp {
    upto: u64,
    /// (export, offset, first page, length) of each record written.
    items: Vec<(usize, u64, u64, u32)>,
    item: usize,
    from: u32,
    pending: u32,
    failed: bool,
    phase: CpPhase,
}

pub(super) struct WriteLog {
    pub log: Nvlog,
    durability: Durability,
    disk_ids: Vec<u64>,
    /// Per export: (offset, seq) -> (length, first page) of live records.
    index: Vec<BTreeMap<(u64, u64), (u32, u64)>>,
    cp: Option<Cp>,
    gen: u64,
    reads: BTreeMap<u64, u32>,
    direct_dirty: Vec<bool>,
    replaying: usize,
    /// Consistency points held off (test hook `debug.cp=hold`).
    hold: bool,
    stats: LogStats,
}

/// Pages per device request of a consistency point (64 KiB).
const CP_PAGES: u32 = 16;
/// Records per consistency point.
const CP_RECORDS: usize = 256;

fn alloc_sub(subs: &mut Vec<Option<Sub>>, free: &mut Vec<usize>, sub: Sub) -> u64 {
    match free.pop() {
        Some(i) => {
            subs[i] = Some(sub);
            i as u64
        }
        None => {
            subs.push(Some(sub));
            (subs.len() - 1) as u64
        }
    }
}

const CP_SUB: Sub = Sub {
    conn: usize::MAX,
    gen: 0,
    op: 0,
    chunk: 0,
    buf: None,
    read_gen: None,
    cp: true,
};

impl Server {
    /// Attaches the write log. Records found in it are replayed by consistency points before
    /// new writes are logged; a record for a disk that is not exported refuses the attach (its
    /// data would otherwise be lost or land on the wrong disk).
    pub fn with_log(mut self, log: Nvlog, durability: Durability) -> Result<Self, String> {
        let disk_ids: Vec<u64> = self.exports.iter().map(|e| e.disk_id).collect();
        let mut index: Vec<BTreeMap<(u64, u64), (u32, u64)>> =
            (0..disk_ids.len()).map(|_| BTreeMap::new()).collect();
        for l in log.live() {
            let Some(e) = disk_ids.iter().position(|d| *d == l.disk_id) else {
                return Err(alloc::format!(
                    "the write log holds record {} for a disk that is not exported (id {:#x}); \
                     export it again (same name and size) to replay it",
                    l.seq,
                    l.disk_id
                ));
            };
            index[e].insert((l.offset, l.seq), (l.length, l.page));
        }
        let replaying = log.live().len();
        self.wlog = Some(WriteLog {
            direct_dirty: alloc::vec![false; disk_ids.len()],
            disk_ids,
            index,
            cp: None,
            gen: 0,
            reads: BTreeMap::new(),
            replaying,
            hold: false,
            stats: LogStats::default(),
            durability,
            log,
        });
        Ok(self)
    }

    /// Holds consistency points off (records stay in the log only): a test hook for crash
    /// and replay tests.
    pub fn hold_consistency_points(&mut self, hold: bool) {
        if let Some(w) = self.wlog.as_mut() {
            w.hold = hold;
        }
    }

    /// Whether a consistency point is writing logged data to the disks now, and how many
    /// records found at start are still to be replayed.
    pub fn log_activity(&self) -> (bool, usize) {
        self.wlog
            .as_ref()
            .map_or((false, 0), |w| (w.cp.is_some(), w.replaying))
    }

    /// (counters, live records, free data pages, still replaying).
    pub fn log_state(&self) -> Option<(LogStats, usize, u64, bool)> {
        self.wlog.as_ref().map(|w| {
            (
                w.stats,
                w.log.live().len(),
                w.log.free_pages(),
                w.replaying > 0,
            )
        })
    }

    pub(super) fn log_takes(&self, len: u64) -> bool {
        self.wlog.as_ref().is_some_and(|w| {
            len <= w.log.data_pages() * PAGE as u64 / 2 && len <= u64::from(MAX_RECORD)
        })
    }

    /// How a FLUSH on op `i` completes with a log attached.
    pub(super) fn flush_via_log(&mut self, c: &mut Conn, i: usize) {
        let Some(w) = self.wlog.as_mut() else { return };
        let Some(op) = c.ops[i].as_mut() else { return };
        match w.durability {
            Durability::Disk if !w.log.live().is_empty() => {
                // The consistency point that retires these records flushes every disk.
                op.to_issue = 0;
                op.wait_seq = Some(w.log.next_seq() - 1);
            }
            Durability::Nvlog if !w.direct_dirty[c.export] => op.to_issue = 0,
            _ => w.direct_dirty[c.export] = false, // a device flush follows
        }
    }

    pub(super) fn note_direct_write(&mut self, export: usize) {
        if let Some(w) = self.wlog.as_mut() {
            w.direct_dirty[export] = true;
        }
    }

    pub(super) fn read_started(&mut self) -> u64 {
        match self.wlog.as_mut() {
            Some(w) => {
                *w.reads.entry(w.gen).or_default() += 1;
                w.gen
            }
            None => 0,
        }
    }

    pub(super) fn read_done(&mut self, g: u64) {
        if let Some(w) = self.wlog.as_mut() {
            if let Some(n) = w.reads.get_mut(&g) {
                *n -= 1;
                if *n == 0 {
                    w.reads.remove(&g);
                }
            }
        }
    }

    /// Receives a logged write's payload into its log pages; commits it when complete.
    pub(super) fn payload_logged(
        &mut self,
        c: &mut Conn,
        s: &mut dyn Stream,
        inb: &mut super::Inbound,
    ) -> bool {
        let i = inb.op;
        let (Some(w), Some(logged)) = (self.wlog.as_mut(), inb.logged.as_mut()) else {
            return false;
        };
        let Some(op) = c.ops[i].as_mut() else {
            if let Some(r) = logged.res.take() {
                w.log.abandon(r);
            }
            return true;
        };
        let len = op.length as u32;
        let r = match logged.res {
            Some(r) => r,
            None => match w.log.reserve(len) {
                Some(r) => *logged.res.insert(r),
                None => {
                    w.stats.stalls += 1;
                    return false; // log full (or replaying): the client waits
                }
            },
        };
        if logged.received < len {
            let at = logged.received;
            let n = (len - at).min(PAGE as u32 - at % PAGE as u32);
            let sg = w.log.segments(r.page, at, n);
            let Some(seg) = sg.as_slice().first().copied() else {
                return false;
            };
            let Ok(dst) = self.pool.slice_mut(&seg) else {
                return false;
            };
            let got = super::recv(&mut c.stash, s, dst) as u32;
            logged.received += got;
            op.to_issue -= u64::from(got);
            if logged.received < len {
                return got > 0;
            }
        }
        let seq = w
            .log
            .commit(&mut self.pool, r, w.disk_ids[c.export], op.offset);
        w.index[c.export].insert((op.offset, seq), (len, r.page));
        w.stats.records += 1;
        w.stats.bytes += u64::from(len);
        logged.res = None;
        if op.cmd.fua && w.durability == Durability::Disk {
            op.wait_seq = Some(seq);
        }
        self.stats.bytes_written += u64::from(len);
        true
    }

    /// Overlays newer logged data on a read chunk just read from the disk.
    pub(super) fn patch_from_log(
        &mut self,
        conn: usize,
        gen: u32,
        op: usize,
        chunk: u32,
        buf: BufId,
    ) {
        let Some(w) = self.wlog.as_ref() else { return };
        let Some(c) = self
            .conns
            .get(conn)
            .and_then(Option::as_ref)
            .filter(|c| c.gen == gen)
        else {
            return;
        };
        let Some(o) = c.ops[op].as_ref() else { return };
        let start = o.offset + u64::from(chunk) * CHUNK as u64;
        let end = (start + CHUNK as u64).min(o.offset + o.length);
        let lo = start.saturating_sub(u64::from(MAX_RECORD));
        let mut hits: Vec<(u64, u64, u32, u64)> = w.index[c.export]
            .range((lo, 0)..(end, 0))
            .filter(|((off, _), (len, _))| off + u64::from(*len) > start)
            .map(|((off, seq), (len, page))| (*seq, *off, *len, *page))
            .collect();
        hits.sort_unstable();
        let mut tmp = [0u8; 512];
        for (_, off, len, page) in hits {
            let (a, b) = (start.max(off), end.min(off + u64::from(len)));
            let mut at = a;
            while at < b {
                let n = (b - at).min(tmp.len() as u64) as u32;
                let sg = w.log.segments(page, (at - off) as u32, n);
                let mut filled = 0usize;
                for seg in sg.as_slice() {
                    if let Ok(src) = self.pool.slice(seg) {
                        tmp[filled..filled + src.len()].copy_from_slice(src);
                        filled += src.len();
                    }
                }
                if let Ok(dst) = self.pool.buf_mut(buf) {
                    let d = (at - start) as usize;
                    dst[d..d + filled].copy_from_slice(&tmp[..filled]);
                }
                at += u64::from(n);
            }
        }
    }

    pub(super) fn cp_completed(&mut self, result: Result<u32, Error>) {
        if result
            == Err(Error::Device {
                status: super::FATAL_DEVICE_STATUS,
            })
        {
            self.stats.device_failures += 1;
        }
        if let Some(cp) = self.wlog.as_mut().and_then(|w| w.cp.as_mut()) {
            cp.pending -= 1;
            if let Err(e) = result {
                log::warn!("nvlog: consistency point I/O failed: {e}");
                cp.failed = true;
            }
        }
    }

    /// Advances the consistency point (starting one when records wait).
    pub(super) fn cp_step(&mut self) {
        let Some(w) = self.wlog.as_mut() else { return };
        if w.cp.is_none() && w.hold {
            return;
        }
        if w.cp.is_none() {
            let mut items: Vec<(usize, u64, u64, u32)> = Vec::new();
            let mut upto = 0;
            for l in w.log.live() {
                let Some(e) = w.disk_ids.iter().position(|d| *d == l.disk_id) else {
                    break;
                };
                let end = l.offset + u64::from(l.length);
                // Overlapping writes in one batch could reach the disk in either order.
                let overlaps = items
                    .iter()
                    .any(|&(x, o, _, n)| x == e && o < end && l.offset < o + u64::from(n));
                if overlaps || items.len() == CP_RECORDS {
                    break;
                }
                items.push((e, l.offset, l.page, l.length));
                upto = l.seq;
            }
            if items.is_empty() {
                return;
            }
            w.cp = Some(Cp {
                upto,
                items,
                item: 0,
                from: 0,
                pending: 0,
                failed: false,
                phase: CpPhase::Writing,
            });
        }
        let Some(cp) = w.cp.as_mut() else { return };
        loop {
            match cp.phase {
                CpPhase::Writing => {
                    while cp.item < cp.items.len() {
                        let (e, off, page, len) = cp.items[cp.item];
                        let n = (len - cp.from).min(CP_PAGES * PAGE as u32);
                        let sg = w.log.segments(page, cp.from, n);
                        let id = alloc_sub(&mut self.subs, &mut self.free_subs, CP_SUB);
                        let req = Request::write(off + u64::from(cp.from), sg, id);
                        if self.disks[e].queue.submit(req).is_err() {
                            self.subs[id as usize] = None;
                            self.free_subs.push(id as usize);
                            return; // ring full: continue on the next poll
                        }
                        cp.pending += 1;
                        cp.from += n;
                        if cp.from == len {
                            cp.item += 1;
                            cp.from = 0;
                        }
                    }
                    if cp.pending > 0 {
                        return;
                    }
                    cp.phase = CpPhase::Flushing { next: 0 };
                }
                CpPhase::Flushing { next } => {
                    let mut k = next;
                    while k < self.disks.len() {
                        let id = alloc_sub(&mut self.subs, &mut self.free_subs, CP_SUB);
                        if self.disks[k].queue.submit(Request::flush(id)).is_err() {
                            self.subs[id as usize] = None;
                            self.free_subs.push(id as usize);
                            cp.phase = CpPhase::Flushing { next: k };
                            return;
                        }
                        cp.pending += 1;
                        k += 1;
                    }
                    cp.phase = CpPhase::Flushing { next: k };
                    if cp.pending > 0 {
                        return;
                    }
                    if cp.failed {
                        // Keep the records; the next consistency point tries again.
                        w.cp = None;
                        return;
                    }
                    w.direct_dirty.iter_mut().for_each(|d| *d = false);
                    w.gen += 1;
                    cp.phase = CpPhase::Retiring { gen: w.gen - 1 };
                }
                CpPhase::Retiring { gen } => {
                    // Reads issued before the disk held this data may still need the overlay.
                    if w.reads.range(..=gen).next().is_some() {
                        return;
                    }
                    let upto = cp.upto;
                    let n = w.log.live().iter().take_while(|l| l.seq <= upto).count();
                    w.log.retire(&mut self.pool, upto);
                    for m in &mut w.index {
                        m.retain(|(_, seq), _| *seq > upto);
                    }
                    w.stats.consistency_points += 1;
                    if w.replaying > 0 {
                        w.stats.replayed += n as u64;
                        w.replaying = w.replaying.saturating_sub(n);
                        if w.replaying == 0 {
                            log::info!(
                                "nvlog: replay complete: {} records written to disk",
                                w.stats.replayed
                            );
                        }
                    }
                    w.cp = None;
                    return;
                }
            }
        }
    }
}
