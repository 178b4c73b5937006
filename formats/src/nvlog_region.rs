//! The NVLOG region read as pages: its geometry, which superblock copy counts, and the
//! recovery walk over the record headers.
//!
//! Three readers need exactly the same answer to "which records does this region hold?":
//! the guest when it opens its log (to replay it), the mirror sender on the host (to ship
//! the records the guest has committed), and whoever opens the mirror's copy after a host
//! failure. If they disagreed, a record the sender counted as mirrored could be one a
//! replay would not find. So the walk lives here once, over any [`Pages`].

use alloc::vec::Vec;

use zerocopy::FromBytes;

use crate::nvlog::{
    RecordHeader, RecordKind, Superblock, CRC, HEADERS_PER_PAGE, PAGE, RECORD_MAGIC,
};

/// Largest record payload.
pub const MAX_RECORD: u32 = 32 << 20;
/// Sequence numbers stay below this (a superblock beyond it is corrupt).
pub const MAX_SEQ: u64 = 1 << 62;
/// Byte offsets in page 0 of the two superblock copies.
pub const SUPERBLOCK_AT: [usize; 2] = [0, 2048];

/// Read access to a region of 4 KiB pages.
pub trait Pages {
    /// Pages in the region.
    fn pages(&self) -> u64;
    /// Page `i` (exactly [`PAGE`] bytes), `None` when out of range.
    fn page(&self, i: u64) -> Option<&[u8]>;
}

impl Pages for [u8] {
    fn pages(&self) -> u64 {
        (self.len() / PAGE) as u64
    }
    fn page(&self, i: u64) -> Option<&[u8]> {
        let at = usize::try_from(i).ok()?.checked_mul(PAGE)?;
        self.get(at..at.checked_add(PAGE)?)
    }
}

/// How a region of `pages` pages is cut: page 0, then header pages, then data pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub pages: u64,
    pub header_pages: u64,
    pub data_pages: u64,
    /// Header slots (64 bytes each).
    pub slots: u64,
}

impl Geometry {
    /// `None` when the region is too small for a log (one header page, 16 data pages).
    pub fn of(pages: u64) -> Option<Self> {
        let header_pages = pages
            .saturating_sub(1)
            .div_ceil(HEADERS_PER_PAGE as u64 + 1);
        let data_pages = pages.saturating_sub(1 + header_pages);
        (header_pages > 0 && data_pages >= 16).then_some(Self {
            pages,
            header_pages,
            data_pages,
            slots: header_pages * HEADERS_PER_PAGE as u64,
        })
    }

    /// Region page and byte offset of header slot `slot` (any value: it wraps).
    pub fn slot_at(&self, slot: u64) -> (u64, usize) {
        let s = slot % self.slots;
        (
            1 + s / HEADERS_PER_PAGE as u64,
            (s % HEADERS_PER_PAGE as u64) as usize * 64,
        )
    }

    /// Region page of data page `page` (any value: it wraps).
    pub fn data_page(&self, page: u64) -> u64 {
        1 + self.header_pages + page % self.data_pages
    }

    /// Byte offset in the region of header slot `slot`.
    pub fn slot_offset(&self, slot: u64) -> u64 {
        let (p, off) = self.slot_at(slot);
        p * PAGE as u64 + off as u64
    }
}

/// The newest valid superblock copy of a region and which copy it is; `None` when neither
/// is valid (a new or foreign region).
pub fn newest_superblock(p: &(impl Pages + ?Sized)) -> Option<(usize, Superblock)> {
    let page0 = p.page(0)?;
    let pages = p.pages();
    SUPERBLOCK_AT
        .iter()
        .enumerate()
        .filter_map(|(i, &at)| {
            let (s, _) = Superblock::read_from_prefix(page0.get(at..)?).ok()?;
            // A sequence number near the end of the range is corruption (no log lives
            // that long), and would overflow the next one.
            (s.valid() && u64::from(s.pages) == pages && s.retired_seq < MAX_SEQ).then_some((i, s))
        })
        .max_by_key(|(_, s)| s.retired_seq)
}

/// A committed record the walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub header: RecordHeader,
    pub kind: RecordKind,
    /// Its header slot (unwrapped: the walk's start slot plus its position).
    pub slot: u64,
}

/// What a walk found: the records in order, and the sequence number of a torn record that
/// ended it (a bad checksum or impossible fields), if one did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Walk {
    pub records: Vec<Found>,
    pub torn: Option<u64>,
}

/// The header in slot `slot`, or a zeroed one when unreadable.
pub fn header_at(p: &(impl Pages + ?Sized), g: &Geometry, slot: u64) -> RecordHeader {
    let (page, off) = g.slot_at(slot);
    p.page(page)
        .and_then(|b| RecordHeader::read_from_bytes(b.get(off..off + 64)?).ok())
        .unwrap_or_default()
}

/// Calls `f` with each run of the payload bytes of a record starting at data page `page`,
/// `len` bytes long, in order (the data ring wraps); false when a page is unreadable.
pub fn payload_runs(
    p: &(impl Pages + ?Sized),
    g: &Geometry,
    page: u64,
    len: u32,
    mut f: impl FnMut(&[u8]),
) -> bool {
    let mut at = 0u32;
    let mut i = 0u64;
    while at < len {
        let n = (len - at).min(PAGE as u32) as usize;
        let Some(b) = p.page(g.data_page(page + i)) else {
            return false;
        };
        f(&b[..n]);
        at += n as u32;
        i += 1;
    }
    true
}

/// CRC32C of a record: its header with `crc` = 0, then its payload.
pub fn record_crc(p: &(impl Pages + ?Sized), g: &Geometry, h: &RecordHeader) -> Option<u32> {
    let mut zeroed = *h;
    zeroed.crc = 0;
    let mut d = CRC.digest();
    d.update(zerocopy::IntoBytes::as_bytes(&zeroed));
    let payload = if h.pages() > 0 { h.length } else { 0 };
    payload_runs(p, g, u64::from(h.page), payload, |b| d.update(b)).then(|| d.finalize())
}

/// Whether a header's fields could be a record of this region at all.
fn sane(g: &Geometry, h: &RecordHeader) -> Option<RecordKind> {
    let kind = RecordKind::from_flags(h.flags)?;
    (h.length > 0
        && h.length <= MAX_RECORD
        && u64::from(h.page) < g.data_pages
        && u64::from(h.pages()) <= g.data_pages)
        .then_some(kind)
}

/// Walks the records of log `log_id` from header slot `slot`, expecting sequence number
/// `seq` there and each next one after it, while each is intact, for at most one ring of
/// slots. This is the recovery rule: a replay replays exactly these records.
pub fn walk(p: &(impl Pages + ?Sized), g: &Geometry, log_id: u64, slot: u64, seq: u64) -> Walk {
    let mut w = Walk::default();
    for i in 0..g.slots {
        let h = header_at(p, g, slot + i);
        if h.magic != RECORD_MAGIC || h.log_id != log_id || h.seq != seq + i {
            break;
        }
        let Some(kind) = sane(g, &h) else {
            w.torn = Some(h.seq);
            break;
        };
        if record_crc(p, g, &h) != Some(h.crc) {
            w.torn = Some(h.seq);
            break;
        }
        w.records.push(Found {
            header: h,
            kind,
            slot: slot + i,
        });
    }
    w
}

/// The walk a log's open makes: from the newest superblock's tail. `None` when the region
/// holds no valid superblock.
pub fn recover(p: &(impl Pages + ?Sized)) -> Option<(Superblock, Walk)> {
    let (_, sb) = newest_superblock(p)?;
    let g = Geometry::of(p.pages())?;
    let w = walk(
        p,
        &g,
        sb.log_id,
        u64::from(sb.tail_slot) % g.slots,
        sb.retired_seq + 1,
    );
    Some((sb, w))
}

/// The highest sequence number a replay of this region would reach: every record up to it
/// is either retired (on disk) or found by the walk. 0 for a region with no log.
pub fn recoverable(p: &(impl Pages + ?Sized)) -> u64 {
    recover(p).map_or(0, |(sb, w)| {
        w.records.last().map_or(sb.retired_seq, |f| f.header.seq)
    })
}
