//! The server's write-log path (NVLOG), and the one ordering rule every change obeys.
//!
//! **The rule.** With a log attached, every operation that changes an export — WRITE of any
//! size, WRITE_ZEROES, TRIM — becomes one or more log records, and nothing else writes the
//! disks. Records carry sequence numbers in the order they were committed, and:
//! - reads return the disk's data patched with every live record over the range, applied in
//!   sequence order (a zero or trim record reads as zeroes);
//! - a consistency point writes records to a disk in sequence order (two overlapping records
//!   are never in flight together), flushes that disk, and only then counts them as on disk;
//!   records are retired (dropped from the log) as a prefix, once on disk and once no read
//!   that could have read the disk before them is still in flight;
//! - replay after a restart or a takeover is the same consistency point over the records
//!   found in the log.
//!
//! So the disk, the overlay and a replay all agree on one order: the order of commits, which
//! is the order of acknowledgements for operations one after the other.
//!
//! Large writes are received in pieces of at most half the log (one record each) and
//! acknowledged when the last piece is committed; zero and trim ranges are cut into records
//! of at most [`MAX_RECORD`] bytes. Under `disk`, FLUSH and FUA complete once every record
//! they cover is on the disk of their export and that disk was flushed; under `nvlog`, once
//! in the log region.
//!
//! **Failing disks.** A consistency point whose write or flush fails on a disk marks that
//! export failing: FLUSH and FUA waiting on it get EIO, writes that find the log full get
//! EIO, the records stay in the log (nothing acknowledged is lost), and the failed disk is
//! retried with a growing back-off (10 ms to 1 s) while the other exports' records keep
//! going to their disks. The log drains once the disk works again.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use hpdi::{BufId, Error, Request};

use super::mirror_gate::{MirrorGate, MirrorStatus};
use super::{Conn, Server, Stream, Sub, CHUNK, ZERO_PIECE};
use crate::nbd::transmission::Command;
use crate::nbd::wire::errno;
use crate::nvlog::format::{RecordKind, PAGE};
use crate::nvlog::log::{Nvlog, Reservation, MAX_RECORD};
use tandem_formats::cmdline::MirrorConfig;
use tandem_formats::mirror::BLOCK_AT;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// FLUSH and FUA return once the data is on the disk and the disk was flushed.
    Disk,
    /// FLUSH and FUA return once the data is in the log region (emulated NVRAM).
    Nvlog,
}

/// A write being received into log pages, one piece (record) at a time.
#[derive(Default)]
pub(super) struct Logged {
    pub res: Option<Reservation>,
    /// Bytes of the current piece received.
    received: u32,
    /// Where the current piece goes on the disk.
    piece_at: u64,
}

/// What a FLUSH or FUA operation waits for: its export's records up to `seq` on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wait {
    seq: u64,
    /// The export's consistency-point failures when the wait began.
    fails: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub records: u64,
    pub bytes: u64,
    pub consistency_points: u64,
    pub replayed: u64,
    /// Times a writer waited for log space (backpressure).
    pub stalls: u64,
    /// Consistency points that failed on some disk.
    pub cp_failures: u64,
}

/// A logged range as the overlay sees it.
#[derive(Debug, Clone, Copy)]
struct Indexed {
    len: u32,
    page: u64,
    kind: RecordKind,
}

/// A record a consistency point writes.
#[derive(Debug, Clone, Copy)]
struct Item {
    export: usize,
    offset: u64,
    page: u64,
    len: u32,
    kind: RecordKind,
}

#[derive(Clone, Copy)]
enum CpPhase {
    Writing,
    Flushing { next: usize },
    Retiring { generation: u64 },
}

/// A consistency point in progress.
struct Cp {
    upto: u64,
    items: Vec<Item>,
    item: usize,
    from: u32,
    pending: u32,
    /// Exports whose disks this point writes (and flushes).
    targets: Vec<usize>,
    /// Per export: some request of this point failed on its disk.
    failed: Vec<bool>,
    phase: CpPhase,
}

/// Per export: where its records stand.
#[derive(Debug, Clone, Copy, Default)]
struct ExportLog {
    disk_id: u64,
    /// Every record of this export up to this sequence number is on its disk, flushed.
    on_disk: u64,
    /// The newest record of this export.
    last: u64,
    /// Consistency points that failed on this disk (FLUSH/FUA waiters compare).
    fails: u64,
    /// Retry the disk no sooner than this (µs), while failing.
    retry_at: Option<u64>,
    backoff_us: u64,
}

pub(super) struct WriteLog {
    pub log: Nvlog,
    durability: Durability,
    exports: Vec<ExportLog>,
    /// Per export: (offset, seq) -> live record.
    index: Vec<BTreeMap<(u64, u64), Indexed>>,
    cp: Option<Cp>,
    generation: u64,
    reads: BTreeMap<u64, u32>,
    replaying: usize,
    /// Consistency points held off (test hook `debug.cp=hold`).
    hold: bool,
    stats: LogStats,
    mirror: MirrorGate,
}

/// Pages per device request of a consistency point (64 KiB).
const CP_PAGES: u32 = 16;
/// Records per consistency point.
const CP_RECORDS: usize = 256;
/// Retry back-off for a failing disk.
const BACKOFF_MIN_US: u64 = 10_000;
const BACKOFF_MAX_US: u64 = 1_000_000;

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

/// A consistency-point request on export `e`'s disk.
fn cp_sub(e: usize) -> Sub {
    Sub {
        conn: usize::MAX,
        generation: 0,
        op: e,
        chunk: 0,
        buf: None,
        read_gen: None,
        cp: true,
    }
}

impl WriteLog {
    /// Largest piece of a write logged as one record.
    fn piece_max(&self) -> u64 {
        let half = self.log.data_pages() * PAGE as u64 / 2;
        (half.min(u64::from(MAX_RECORD)) & !(PAGE as u64 - 1)).max(PAGE as u64)
    }

    /// Some disk's consistency points are failing: a writer that finds the log full would
    /// wait for ever.
    fn failing(&self) -> bool {
        self.exports.iter().any(|x| x.retry_at.is_some())
    }

    /// A record was committed for export `e`.
    fn logged(&mut self, e: usize, seq: u64, at: u64, ix: Indexed) {
        self.index[e].insert((at, seq), ix);
        self.exports[e].last = seq;
        self.stats.records += 1;
        self.stats.bytes += u64::from(ix.len);
    }

    fn wait_for(&self, e: usize, seq: u64) -> Wait {
        Wait {
            seq,
            fails: self.exports[e].fails,
        }
    }

    /// Records from the front of the log that are on their disks (may be retired).
    fn retirable(&self) -> u64 {
        let mut upto = self.log.retired_seq();
        for l in self.log.live() {
            let on_disk = self
                .exports
                .iter()
                .find(|x| x.disk_id == l.disk_id)
                .is_some_and(|x| x.on_disk >= l.seq);
            if !on_disk {
                break;
            }
            upto = l.seq;
        }
        upto
    }

    /// The records the next consistency point writes, in order.
    fn batch(&self, now: u64) -> (Vec<Item>, u64) {
        let mut items: Vec<Item> = Vec::new();
        let mut upto = 0;
        for l in self.log.live() {
            let Some(e) = self.exports.iter().position(|x| x.disk_id == l.disk_id) else {
                break;
            };
            let x = &self.exports[e];
            if l.seq <= x.on_disk || x.retry_at.is_some_and(|t| now < t) {
                continue; // on disk already, or its disk is failing and not due again
            }
            let end = l.offset + u64::from(l.length);
            // Overlapping records in one batch could reach the disk in either order.
            let overlaps = items.iter().any(|it| {
                it.export == e && it.offset < end && l.offset < it.offset + u64::from(it.len)
            });
            if overlaps || items.len() == CP_RECORDS {
                break;
            }
            items.push(Item {
                export: e,
                offset: l.offset,
                page: l.page,
                len: l.length,
                kind: l.kind,
            });
            upto = l.seq;
        }
        (items, upto)
    }
}

impl Server {
    /// Attaches the write log. Records found in it are replayed by consistency points before
    /// new writes are logged; a record for a disk that is not exported refuses the attach (its
    /// data would otherwise be lost or land on the wrong disk).
    pub fn with_log(mut self, log: Nvlog, durability: Durability) -> Result<Self, String> {
        let mut exports: Vec<ExportLog> = self
            .exports
            .iter()
            .map(|e| ExportLog {
                disk_id: e.disk_id,
                backoff_us: BACKOFF_MIN_US,
                ..ExportLog::default()
            })
            .collect();
        let mut index: Vec<BTreeMap<(u64, u64), Indexed>> =
            (0..exports.len()).map(|_| BTreeMap::new()).collect();
        for l in log.live() {
            let Some(e) = exports.iter().position(|x| x.disk_id == l.disk_id) else {
                return Err(alloc::format!(
                    "the write log holds record {} for a disk that is not exported (id {:#x}); \
                     export it again (same name and size) to replay it",
                    l.seq,
                    l.disk_id
                ));
            };
            let ix = Indexed {
                len: l.length,
                page: l.page,
                kind: l.kind,
            };
            index[e].insert((l.offset, l.seq), ix);
            exports[e].last = l.seq;
        }
        let replaying = log.live().len();
        self.wlog = Some(WriteLog {
            exports,
            index,
            cp: None,
            generation: 0,
            reads: BTreeMap::new(),
            replaying,
            hold: false,
            stats: LogStats::default(),
            durability,
            mirror: MirrorGate::new(MirrorConfig::default(), log.log_id()),
            log,
        });
        Ok(self)
    }

    /// Gates acknowledgements on the NVLOG mirror (`mirror=`; see `mirror_gate`).
    pub fn set_mirror(&mut self, cfg: MirrorConfig) {
        if let Some(w) = self.wlog.as_mut() {
            w.mirror = MirrorGate::new(cfg, w.log.log_id());
        }
    }

    /// The mirror's status and how far it goes, with a log attached.
    pub fn mirror_state(&self) -> Option<(MirrorStatus, u64)> {
        self.wlog
            .as_ref()
            .map(|w| (w.mirror.status(), w.mirror.mirrored()))
    }

    /// Reads the mirror sender's block from page 0 of the log region.
    fn mirror_poll(&mut self) {
        let now = self.now_us;
        let Some(w) = self.wlog.as_mut() else { return };
        if w.mirror.status() == MirrorStatus::Off {
            return;
        }
        let Ok(page0) = self.pool.buf(BufId::new(w.log.region(), 0)) else {
            return;
        };
        if let Some(s) = w.mirror.observe(&page0[BLOCK_AT..BLOCK_AT + 64], now) {
            match s {
                MirrorStatus::Up => log::info!("mirror: up (mirrored to {})", w.mirror.mirrored()),
                s => log::warn!(
                    "mirror: lost; {} (loss {})",
                    match s {
                        MirrorStatus::Degraded => "degraded: writes are acknowledged once on disk",
                        _ => "stopped: acknowledgements wait for the mirror",
                    },
                    w.mirror.losses
                ),
            }
        }
    }

    /// Whether the reply of a write whose last record is `seq` may go (the mirror gate).
    pub(super) fn mirror_allows(&self, export: usize, seq: u64) -> bool {
        let Some(w) = self.wlog.as_ref() else {
            return true;
        };
        let on_disk = w.exports[export].on_disk >= seq || w.log.retired_seq() >= seq;
        w.mirror.allows(seq, on_disk)
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

    pub(super) fn has_log(&self) -> bool {
        self.wlog.is_some()
    }

    /// How a FLUSH on op `i` completes with a log attached (without one, it flushes the
    /// device). Nothing but consistency points writes the disks, and they flush what they
    /// wrote, so a FLUSH waits for its export's records at most.
    pub(super) fn flush_via_log(&mut self, c: &mut Conn, i: usize) {
        let Some(w) = self.wlog.as_ref() else { return };
        let Some(op) = c.ops[i].as_mut() else { return };
        op.to_issue = 0;
        let x = &w.exports[c.export];
        if w.durability == Durability::Disk && x.last > x.on_disk.max(w.log.retired_seq()) {
            op.wait = Some(w.wait_for(c.export, x.last));
        }
    }

    /// Whether a FLUSH/FUA wait is over: `None` while waiting, else its outcome (an errno
    /// when the export's disk failed meanwhile).
    pub(super) fn wait_outcome(&self, export: usize, wait: Wait) -> Option<u32> {
        let Some(w) = self.wlog.as_ref() else {
            return Some(0);
        };
        let x = &w.exports[export];
        if x.on_disk >= wait.seq || w.log.retired_seq() >= wait.seq {
            Some(0)
        } else if x.fails > wait.fails {
            Some(errno::EIO)
        } else {
            None
        }
    }

    pub(super) fn read_started(&mut self) -> u64 {
        match self.wlog.as_mut() {
            Some(w) => {
                *w.reads.entry(w.generation).or_default() += 1;
                w.generation
            }
            None => 0,
        }
    }

    pub(super) fn read_done(&mut self, g: u64) {
        if let Some(w) = self.wlog.as_mut()
            && let Some(n) = w.reads.get_mut(&g)
        {
            *n -= 1;
            if *n == 0 {
                w.reads.remove(&g);
            }
        }
    }

    /// Logs the next piece of a WRITE_ZEROES or TRIM on op `i`; false when there is nothing
    /// to log or no room (retried on the next poll).
    pub(super) fn log_range(&mut self, c: &mut Conn, i: usize) -> bool {
        let (Some(w), Some(op)) = (self.wlog.as_mut(), c.ops[i].as_mut()) else {
            return false;
        };
        let n = op.to_issue.min(u64::from(MAX_RECORD)) as u32;
        let at = op.offset + op.length - op.to_issue;
        let kind = if op.cmd.cmd == Command::Trim {
            RecordKind::Trim
        } else {
            RecordKind::Zero
        };
        let e = c.export;
        let disk_id = w.exports[e].disk_id;
        let Some(seq) = w.log.commit_range(&mut self.pool, kind, disk_id, at, n) else {
            if w.failing() {
                // The log cannot drain: fail rather than wait for ever.
                op.error.get_or_insert(errno::EIO);
                op.to_issue = 0;
            } else {
                w.stats.stalls += 1;
            }
            return false;
        };
        let ix = Indexed {
            len: n,
            page: 0,
            kind,
        };
        w.logged(e, seq, at, ix);
        op.record = seq;
        op.to_issue -= u64::from(n);
        if op.cmd.fua && w.durability == Durability::Disk {
            op.wait = Some(w.wait_for(e, seq));
        }
        true
    }

    /// Receives a logged write's payload into its log pages, a piece (record) at a time;
    /// commits each piece when complete.
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
        let r = match logged.res {
            Some(r) => r,
            None if op.to_issue == 0 => return false,
            None => {
                let piece = op.to_issue.min(w.piece_max()) as u32;
                match w.log.reserve(piece) {
                    Some(r) => {
                        logged.piece_at = op.offset + op.length - op.to_issue;
                        logged.received = 0;
                        *logged.res.insert(r)
                    }
                    None if w.failing() => {
                        // The log is full and cannot drain: refuse the rest of the write.
                        op.error.get_or_insert(errno::EIO);
                        c.skip = op.to_issue;
                        op.to_issue = 0;
                        return true;
                    }
                    None => {
                        w.stats.stalls += 1;
                        return false; // log full (or replaying): the client waits
                    }
                }
            }
        };
        if logged.received < r.length {
            let at = logged.received;
            let n = (r.length - at).min(PAGE as u32 - at % PAGE as u32);
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
            if logged.received < r.length {
                return got > 0;
            }
        }
        let e = c.export;
        let seq = w
            .log
            .commit(&mut self.pool, r, w.exports[e].disk_id, logged.piece_at);
        let ix = Indexed {
            len: r.length,
            page: r.page,
            kind: RecordKind::Data,
        };
        w.logged(e, seq, logged.piece_at, ix);
        op.record = seq;
        logged.res = None;
        if op.cmd.fua && w.durability == Durability::Disk {
            op.wait = Some(w.wait_for(e, seq));
        }
        self.stats.bytes_written += u64::from(r.length);
        true
    }

    /// Overlays newer logged data on a read chunk just read from the disk.
    pub(super) fn patch_from_log(
        &mut self,
        conn: usize,
        generation: u32,
        op: usize,
        chunk: u32,
        buf: BufId,
    ) {
        let Some(w) = self.wlog.as_ref() else { return };
        let Some(c) = self
            .conns
            .get(conn)
            .and_then(Option::as_ref)
            .filter(|c| c.generation == generation)
        else {
            return;
        };
        let Some(o) = c.ops[op].as_ref() else { return };
        let start = o.offset + u64::from(chunk) * CHUNK as u64;
        let end = (start + CHUNK as u64).min(o.offset + o.length);
        let lo = start.saturating_sub(u64::from(MAX_RECORD));
        let mut hits: Vec<(u64, u64, Indexed)> = w.index[c.export]
            .range((lo, 0)..(end, 0))
            .filter(|((off, _), ix)| off + u64::from(ix.len) > start)
            .map(|((off, seq), ix)| (*seq, *off, *ix))
            .collect();
        hits.sort_unstable_by_key(|h| h.0);
        for (_, off, ix) in hits {
            let (a, b) = (start.max(off), end.min(off + u64::from(ix.len)));
            let (d0, d1) = ((a - start) as usize, (b - start) as usize);
            if ix.kind != RecordKind::Data {
                if let Ok(dst) = self.pool.buf_mut(buf) {
                    dst[d0..d1].fill(0);
                }
                continue;
            }
            copy_from_log(
                &w.log,
                &mut self.pool,
                ix.page,
                (a - off) as u32,
                buf,
                d0,
                d1 - d0,
            );
        }
    }

    pub(super) fn cp_completed(&mut self, export: usize, result: Result<u32, Error>) {
        if result
            == Err(Error::Device {
                status: super::FATAL_DEVICE_STATUS,
            })
        {
            self.stats.device_failures += 1;
        }
        if let Some(cp) = self.wlog.as_mut().and_then(|w| w.cp.as_mut()) {
            cp.pending -= 1;
            if result.is_err()
                && let Some(f) = cp.failed.get_mut(export)
            {
                *f = true;
            }
        }
    }

    /// Advances the consistency point (starting one when records wait).
    pub(super) fn cp_step(&mut self) {
        self.mirror_poll();
        let now = self.now_us;
        let Some(w) = self.wlog.as_mut() else { return };
        if w.cp.is_none() {
            if w.hold {
                return;
            }
            let (items, upto) = w.batch(now);
            let mut targets: Vec<usize> = items.iter().map(|it| it.export).collect();
            targets.sort_unstable();
            targets.dedup();
            let phase = if !items.is_empty() {
                CpPhase::Writing
            } else if w.retirable() > w.log.retired_seq() {
                // On disk already (written while an older record of a failing disk held
                // the log's front): retire once that disk caught up.
                CpPhase::Retiring {
                    generation: w.generation.saturating_sub(1),
                }
            } else {
                return;
            };
            w.cp = Some(Cp {
                upto,
                items,
                item: 0,
                from: 0,
                pending: 0,
                targets,
                failed: alloc::vec![false; w.exports.len()],
                phase,
            });
        }
        loop {
            let Some(phase) = self
                .wlog
                .as_ref()
                .and_then(|w| w.cp.as_ref())
                .map(|cp| cp.phase)
            else {
                return;
            };
            match phase {
                CpPhase::Writing => {
                    if !self.cp_write() {
                        return;
                    }
                }
                CpPhase::Flushing { next } => {
                    if !self.cp_flush(next) {
                        return;
                    }
                }
                CpPhase::Retiring { generation } => {
                    self.cp_retire(generation);
                    return;
                }
            }
        }
    }

    /// Submits the point's writes; true once all have completed.
    fn cp_write(&mut self) -> bool {
        let Some(w) = self.wlog.as_mut() else {
            return false;
        };
        let Some(cp) = w.cp.as_mut() else {
            return false;
        };
        while cp.item < cp.items.len() {
            let it = cp.items[cp.item];
            let n = match it.kind {
                RecordKind::Data => (it.len - cp.from).min(CP_PAGES * PAGE as u32),
                _ => (it.len - cp.from).min(ZERO_PIECE as u32),
            };
            let id = alloc_sub(&mut self.subs, &mut self.free_subs, cp_sub(it.export));
            let at = it.offset + u64::from(cp.from);
            let req = match it.kind {
                RecordKind::Data => Request::write(at, w.log.segments(it.page, cp.from, n), id),
                RecordKind::Zero => Request::write_zeroes(at, u64::from(n), id),
                RecordKind::Trim => Request::discard(at, u64::from(n), id),
            };
            if self.disks[it.export].queue.submit(req).is_err() {
                self.subs[id as usize] = None;
                self.free_subs.push(id as usize);
                return false; // ring full: continue on the next poll
            }
            cp.pending += 1;
            cp.from += n;
            if cp.from == it.len {
                cp.item += 1;
                cp.from = 0;
            }
        }
        if cp.pending > 0 {
            return false;
        }
        cp.phase = CpPhase::Flushing { next: 0 };
        true
    }

    /// Flushes the disks the point wrote; true once every flush has completed.
    fn cp_flush(&mut self, next: usize) -> bool {
        let now = self.now_us;
        let Some(w) = self.wlog.as_mut() else {
            return false;
        };
        let Some(cp) = w.cp.as_mut() else {
            return false;
        };
        let mut k = next;
        while k < cp.targets.len() {
            let e = cp.targets[k];
            // A disk whose writes failed is not flushed: its records stay for the retry.
            if !cp.failed[e] {
                let id = alloc_sub(&mut self.subs, &mut self.free_subs, cp_sub(e));
                if self.disks[e].queue.submit(Request::flush(id)).is_err() {
                    self.subs[id as usize] = None;
                    self.free_subs.push(id as usize);
                    cp.phase = CpPhase::Flushing { next: k };
                    return false;
                }
                cp.pending += 1;
            }
            k += 1;
        }
        cp.phase = CpPhase::Flushing { next: k };
        if cp.pending > 0 {
            return false;
        }
        let (upto, targets, failed) = (cp.upto, cp.targets.clone(), cp.failed.clone());
        let mut any_failed = false;
        for e in targets {
            let x = &mut w.exports[e];
            if failed[e] {
                any_failed = true;
                x.fails += 1;
                x.retry_at = Some(now + x.backoff_us);
                log::warn!(
                    "nvlog: consistency point failed on export {e} (failure {}); its records \
                     stay in the log, retry in {} ms",
                    x.fails,
                    x.backoff_us / 1000
                );
                x.backoff_us = (x.backoff_us * 2).min(BACKOFF_MAX_US);
            } else {
                if x.retry_at.take().is_some() {
                    log::info!("nvlog: export {e}'s disk works again; its records drain");
                }
                x.backoff_us = BACKOFF_MIN_US;
                x.on_disk = x.on_disk.max(upto);
            }
        }
        if any_failed {
            w.stats.cp_failures += 1;
        }
        w.generation += 1;
        cp.phase = CpPhase::Retiring {
            generation: w.generation - 1,
        };
        true
    }

    /// Retires the records now on disk once no read that started before they were there is
    /// still in flight.
    fn cp_retire(&mut self, generation: u64) {
        let Some(w) = self.wlog.as_mut() else { return };
        if w.reads.range(..=generation).next().is_some() {
            return;
        }
        let upto = w.retirable();
        if upto > w.log.retired_seq() {
            let n = w.log.live().iter().take_while(|l| l.seq <= upto).count();
            w.log.retire(&mut self.pool, upto);
            for m in &mut w.index {
                m.retain(|(_, seq), _| *seq > upto);
            }
            if w.replaying > 0 {
                w.stats.replayed += n.min(w.replaying) as u64;
                w.replaying = w.replaying.saturating_sub(n);
                if w.replaying == 0 {
                    log::info!(
                        "nvlog: replay complete: {} records written to disk",
                        w.stats.replayed
                    );
                }
            }
        }
        w.stats.consistency_points += 1;
        w.cp = None;
    }
}

/// Copies `len` bytes of a logged payload (data page `page`, from byte `from`) into `buf`
/// at `at`: the overlay of a read.
fn copy_from_log(
    log: &Nvlog,
    pool: &mut hpdi::BufferPool,
    page: u64,
    from: u32,
    buf: BufId,
    at: usize,
    len: usize,
) {
    let mut tmp = [0u8; 512];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(tmp.len());
        let sg = log.segments(page, from + done as u32, n as u32);
        let mut filled = 0usize;
        for seg in sg.as_slice() {
            if let Ok(src) = pool.slice(seg) {
                tmp[filled..filled + src.len()].copy_from_slice(src);
                filled += src.len();
            }
        }
        if let Ok(dst) = pool.buf_mut(buf) {
            dst[at + done..at + done + filled].copy_from_slice(&tmp[..filled]);
        }
        done += n;
    }
}
