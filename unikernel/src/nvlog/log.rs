//! The log itself: page reservation, commit, retirement, and recovery at open.
//!
//! The region is one region of the HPDI buffer pool, cut into 4 KiB pages: page 0 holds two
//! superblock copies (written alternately, so a torn superblock write leaves the other), then
//! a ring of 64-byte record headers, then a ring of data pages. Payload is received straight
//! into reserved data pages; `commit` then writes the header (CRC32C over header and payload)
//! after a fence, so a header that checks out implies a complete payload.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use hpdi::{BufId, BufferPool, Segment, SgList};
use zerocopy::IntoBytes;

use super::format::*;

pub use tandem_formats::nvlog_region::MAX_RECORD;
use tandem_formats::nvlog_region::{newest_superblock, record_crc, walk, Geometry, Pages};

/// A committed record not yet retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    pub seq: u64,
    pub kind: RecordKind,
    pub disk_id: u64,
    pub offset: u64,
    pub length: u32,
    /// First data page (absolute position; modulo the ring size in memory).
    pub page: u64,
}

/// Data pages set aside for a payload that is still arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub page: u64,
    pub length: u32,
}

/// What `open` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// No valid superblock: the region was formatted.
    pub formatted: bool,
    /// Records found committed and not retired (to replay).
    pub pending: usize,
    /// A record whose checksum failed ended the scan: its sequence number.
    pub torn: Option<u64>,
    pub retired_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvlogError {
    /// The region is too small for a superblock, headers and data.
    TooSmall,
    /// The pool region is not 4 KiB pages.
    BadRegion,
}

pub struct Nvlog {
    region: u8,
    header_pages: u64,
    data_pages: u64,
    slots: u64,
    log_id: u64,
    /// Which superblock copy is written next (0 or 1).
    next_copy: usize,
    retired_seq: u64,
    next_seq: u64,
    head_slot: u64,
    tail_slot: u64,
    head_page: u64,
    live: VecDeque<Live>,
    reservations: BTreeMap<u64, u32>,
}

fn page_id(region: u8, index: u64) -> BufId {
    BufId::new(region, index as u32)
}

/// Pool region `region` (of `pages` pages) as the pages the shared walk reads.
struct PoolPages<'a> {
    pool: &'a BufferPool,
    region: u8,
    pages: u64,
}

impl Pages for PoolPages<'_> {
    fn pages(&self) -> u64 {
        self.pages
    }
    fn page(&self, i: u64) -> Option<&[u8]> {
        if i >= self.pages {
            return None;
        }
        self.pool.buf(page_id(self.region, i)).ok()
    }
}

impl Nvlog {
    /// Opens the log in pool region `region` (4 KiB pages), recovering or formatting it.
    pub fn open(
        pool: &mut BufferPool,
        region: u8,
        log_id_seed: u64,
    ) -> Result<(Self, OpenReport), NvlogError> {
        if pool.region_buf_size(region) != Some(PAGE) {
            return Err(NvlogError::BadRegion);
        }
        let pages = pool.region_capacity(region) as u64;
        // Every page of the region belongs to the log for good.
        while pool.alloc_in(region).is_ok() {}
        let Some(g) = Geometry::of(pages) else {
            return Err(NvlogError::TooSmall);
        };
        let (header_pages, data_pages) = (g.header_pages, g.data_pages);
        let mut log = Self {
            region,
            header_pages,
            data_pages,
            slots: header_pages * HEADERS_PER_PAGE as u64,
            log_id: log_id_seed | 1,
            next_copy: 0,
            retired_seq: 0,
            next_seq: 1,
            head_slot: 0,
            tail_slot: 0,
            head_page: 0,
            live: VecDeque::new(),
            reservations: BTreeMap::new(),
        };
        pool.buf(page_id(region, 0))
            .map_err(|_| NvlogError::BadRegion)?;
        let found = newest_superblock(&PoolPages {
            pool,
            region,
            pages,
        });
        let Some((copy, sb)) = found else {
            log.write_superblock(pool);
            log.write_superblock(pool);
            return Ok((
                log,
                OpenReport {
                    formatted: true,
                    pending: 0,
                    torn: None,
                    retired_seq: 0,
                },
            ));
        };
        log.next_copy = 1 - copy;
        log.log_id = sb.log_id;
        log.retired_seq = sb.retired_seq;
        log.next_seq = sb.retired_seq + 1;
        log.tail_slot = u64::from(sb.tail_slot) % log.slots;
        log.head_slot = log.tail_slot;
        let torn = log.recover(pool);
        log.place_found();
        let report = OpenReport {
            formatted: false,
            pending: log.live.len(),
            torn,
            retired_seq: log.retired_seq,
        };
        Ok((log, report))
    }

    /// Keeps the records the shared recovery walk finds from the tail (to replay); returns
    /// the sequence number of a torn record that ended the walk, if one did.
    fn recover(&mut self, pool: &BufferPool) -> Option<u64> {
        let w = walk(
            &self.pages(pool),
            &self.geometry(),
            self.log_id,
            self.head_slot,
            self.next_seq,
        );
        for f in &w.records {
            let h = f.header;
            self.live.push_back(Live {
                seq: h.seq,
                kind: f.kind,
                disk_id: h.disk_id,
                offset: h.offset,
                length: h.length,
                page: u64::from(h.page),
            });
            self.head_slot += 1;
            self.next_seq += 1;
        }
        w.torn
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            pages: 1 + self.header_pages + self.data_pages,
            header_pages: self.header_pages,
            data_pages: self.data_pages,
            slots: self.slots,
        }
    }

    /// Gives the records found at open positions on one line (the ring unrolled after its
    /// largest free gap) and puts the head after them, so that new payloads never overlap a
    /// found record still to replay, whatever the ring's wrap.
    fn place_found(&mut self) {
        let dp = self.data_pages;
        let mut ext: Vec<(u64, u64)> = self
            .live
            .iter()
            .map(|l| (l.page % dp, u64::from(l.kind.pages(l.length))))
            .filter(|e| e.1 > 0)
            .collect();
        ext.sort_unstable();
        let mut start = 0;
        let mut widest = 0;
        for (i, &(at, n)) in ext.iter().enumerate() {
            let next = ext.get(i + 1).map_or(ext[0].0 + dp, |e| e.0);
            let gap = next.saturating_sub(at + n);
            if gap >= widest {
                (widest, start) = (gap, next % dp);
            }
        }
        for l in &mut self.live {
            l.page = if l.kind.pages(l.length) > 0 {
                start + (l.page % dp + dp - start) % dp
            } else {
                start
            };
        }
        self.head_page = self
            .live
            .iter()
            .map(|l| l.page + u64::from(l.kind.pages(l.length)))
            .max()
            .unwrap_or(0);
    }

    pub fn region(&self) -> u8 {
        self.region
    }

    /// This log's identity (its superblock's `log_id`).
    pub fn log_id(&self) -> u64 {
        self.log_id
    }

    pub fn live(&self) -> &VecDeque<Live> {
        &self.live
    }

    pub fn retired_seq(&self) -> u64 {
        self.retired_seq
    }

    /// Sequence number the next commit gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn data_pages(&self) -> u64 {
        self.data_pages
    }

    /// Data pages not in use by live records or reservations.
    pub fn free_pages(&self) -> u64 {
        let tail = [
            self.live.iter().map(|l| l.page).min(),
            self.reservations.keys().next().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.head_page);
        self.data_pages - (self.head_page - tail).min(self.data_pages)
    }

    /// Sets aside pages for a `length`-byte payload; `None` when the log is full (the caller
    /// waits: backpressure).
    pub fn reserve(&mut self, length: u32) -> Option<Reservation> {
        if length == 0 || length > MAX_RECORD {
            return None;
        }
        let pages = length.div_ceil(PAGE as u32);
        let in_use = self.live.len() as u64 + self.reservations.len() as u64;
        if u64::from(pages) > self.free_pages() || in_use + 1 >= self.slots {
            return None;
        }
        let r = Reservation {
            page: self.head_page,
            length,
        };
        self.reservations.insert(r.page, pages);
        self.head_page += u64::from(pages);
        Some(r)
    }

    /// Gives back a reservation whose payload never arrived.
    pub fn abandon(&mut self, r: Reservation) {
        self.reservations.remove(&r.page);
    }

    /// The pool segments covering bytes `from..from+len` of a payload starting at data page
    /// `page` (at most `MAX_SEGMENTS` pages).
    pub fn segments(&self, page: u64, from: u32, len: u32) -> SgList {
        let mut sg = SgList::new();
        let mut at = from;
        let end = from + len;
        while at < end {
            let p = page + u64::from(at) / PAGE as u64;
            let off = at % PAGE as u32;
            let n = (PAGE as u32 - off).min(end - at);
            let idx = 1 + self.header_pages + p % self.data_pages;
            if sg
                .push(Segment {
                    buf: page_id(self.region, idx),
                    offset: off,
                    len: n,
                })
                .is_err()
            {
                break;
            }
            at += n;
        }
        sg
    }

    /// Makes a received payload a record. Returns its sequence number.
    pub fn commit(
        &mut self,
        pool: &mut BufferPool,
        r: Reservation,
        disk_id: u64,
        offset: u64,
    ) -> u64 {
        self.reservations.remove(&r.page);
        self.append(pool, RecordKind::Data, disk_id, offset, r.length, r.page)
    }

    /// Logs a record without payload (zero or trim) for `length` bytes at `offset`; `None`
    /// when no header slot is free (the caller waits, as for [`Nvlog::reserve`]).
    pub fn commit_range(
        &mut self,
        pool: &mut BufferPool,
        kind: RecordKind,
        disk_id: u64,
        offset: u64,
        length: u32,
    ) -> Option<u64> {
        let in_use = self.live.len() as u64 + self.reservations.len() as u64;
        if kind == RecordKind::Data
            || length == 0
            || length > MAX_RECORD
            || in_use + 1 >= self.slots
        {
            return None;
        }
        Some(self.append(pool, kind, disk_id, offset, length, self.head_page))
    }

    fn append(
        &mut self,
        pool: &mut BufferPool,
        kind: RecordKind,
        disk_id: u64,
        offset: u64,
        length: u32,
        page: u64,
    ) -> u64 {
        let seq = self.next_seq;
        let mut h = RecordHeader {
            magic: RECORD_MAGIC,
            flags: kind.flags(),
            seq,
            disk_id,
            offset,
            length,
            page: (page % self.data_pages) as u32,
            log_id: self.log_id,
            reserved: [0; 12],
            crc: 0,
        };
        h.crc = record_crc(&self.pages(pool), &self.geometry(), &h).unwrap_or(0);
        // The payload is in place before the header that vouches for it.
        fence(Ordering::SeqCst);
        let slot = self.head_slot;
        if let Ok(b) = pool.slice_mut(&self.header_segment(slot)) {
            b.copy_from_slice(h.as_bytes());
        }
        fence(Ordering::SeqCst);
        self.head_slot += 1;
        self.next_seq += 1;
        self.live.push_back(Live {
            seq,
            kind,
            disk_id,
            offset,
            length,
            page,
        });
        seq
    }

    /// Retires every record up to `seq` (they are on disk and the disk was flushed).
    pub fn retire(&mut self, pool: &mut BufferPool, seq: u64) {
        while self.live.front().is_some_and(|l| l.seq <= seq) {
            self.live.pop_front();
            self.tail_slot += 1;
        }
        self.retired_seq = self.retired_seq.max(seq.min(self.next_seq - 1));
        self.write_superblock(pool);
    }

    fn header_segment(&self, slot: u64) -> Segment {
        let s = slot % self.slots;
        let page = 1 + s / HEADERS_PER_PAGE as u64;
        let off = (s % HEADERS_PER_PAGE as u64) as u32 * 64;
        Segment {
            buf: page_id(self.region, page),
            offset: off,
            len: 64,
        }
    }

    fn pages<'a>(&self, pool: &'a BufferPool) -> PoolPages<'a> {
        PoolPages {
            pool,
            region: self.region,
            pages: 1 + self.header_pages + self.data_pages,
        }
    }

    fn write_superblock(&mut self, pool: &mut BufferPool) {
        let mut sb = Superblock {
            magic: SUPER_MAGIC,
            version: VERSION,
            pages: (1 + self.header_pages + self.data_pages) as u32,
            header_pages: self.header_pages as u32,
            data_pages: self.data_pages as u32,
            log_id: self.log_id,
            retired_seq: self.retired_seq,
            tail_slot: (self.tail_slot % self.slots) as u32,
            tail_page: 0,
            reserved: [0; 16],
            crc: 0,
            pad: 0,
        };
        sb.seal();
        let seg = Segment {
            buf: page_id(self.region, 0),
            offset: self.next_copy as u32 * 2048,
            len: core::mem::size_of::<Superblock>() as u32,
        };
        fence(Ordering::SeqCst);
        if let Ok(b) = pool.slice_mut(&seg) {
            b.copy_from_slice(sb.as_bytes());
        }
        fence(Ordering::SeqCst);
        self.next_copy = 1 - self.next_copy;
    }
}
