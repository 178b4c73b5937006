//! The reference model of a Tandem export: what a read must return and what must survive a
//! crash, sector by sector.
//!
//! Storage engines earn trust by running random operation sequences, with crashes at random
//! points, against the real code and comparing every read with a model. This crate is that
//! model, shared by the host-side runs (the real NBD server and NVLOG over RAM disks) and the
//! guest-side runs (`tandem check`: a real client against the real guest), so both judge by
//! the same rules:
//!
//! - Reads return, for every sector, the value of the last write acknowledged before the read
//!   was sent. A write that failed (an error reply) or was never answered leaves the sector
//!   "old or new": either value may be read, and the first read settles which.
//! - WRITE_ZEROES reads back as zeroes; TRIM leaves the range unspecified until it is
//!   written again.
//! - After a crash each sector holds one of the values written since its *durable* floor,
//!   never an older one and never anything else (no torn sectors, no stale log replays).
//!   Under `durability=disk` the floor moves with FUA writes and with each acknowledged FLUSH
//!   (covering the writes acknowledged before the FLUSH was sent); under `durability=nvlog`
//!   every acknowledged write is durable.
//!
//! The driver keeps operations that are in flight at once apart: an operation that changes a
//! range is never in flight together with another operation on an overlapping range (reads
//! may overlap reads). NBD leaves the outcome of overlapping concurrent requests to the
//! server, so this loses nothing the protocol promises.
//!
//! Written data is self-describing: every sector of a write carries its version and its own
//! address (see [`fill_sector`]), so a read tells which write it came from, and a misplaced
//! or torn sector shows up as garbage.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The unit the model tracks: NBD's smallest block.
pub const SECTOR: u64 = 512;

/// What FLUSH and FUA promise (the guest's `durability=` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// FLUSH and FUA: on the disk, the disk flushed.
    Disk,
    /// Every acknowledged write: in the NVRAM log.
    Nvlog,
}

/// One NBD operation as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write { fua: bool },
    Zero { fua: bool, no_hole: bool },
    Trim { fua: bool },
    Flush,
    Cache,
}

impl Kind {
    /// Whether the operation changes the range it names.
    pub fn mutates(self) -> bool {
        matches!(
            self,
            Kind::Write { .. } | Kind::Zero { .. } | Kind::Trim { .. }
        )
    }

    fn fua(self) -> bool {
        matches!(
            self,
            Kind::Write { fua: true } | Kind::Zero { fua: true, .. } | Kind::Trim { fua: true }
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fua = |b: bool| if b { "+FUA" } else { "" };
        match *self {
            Kind::Read => write!(f, "READ"),
            Kind::Write { fua: x } => write!(f, "WRITE{}", fua(x)),
            Kind::Zero { fua: x, no_hole } => write!(
                f,
                "WRITE_ZEROES{}{}",
                if no_hole { "+NO_HOLE" } else { "" },
                fua(x)
            ),
            Kind::Trim { fua: x } => write!(f, "TRIM{}", fua(x)),
            Kind::Flush => write!(f, "FLUSH"),
            Kind::Cache => write!(f, "CACHE"),
        }
    }
}

/// A value a sector may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Val {
    Zero,
    /// Written by the write with this version.
    Data(u64),
    /// Trimmed: anything.
    Any,
}

/// What a sector read back as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Zero,
    Data(u64),
    /// Neither zeroes nor a sector any write produced for this address.
    Garbage,
}

impl Val {
    fn admits(self, o: Observed) -> bool {
        match (self, o) {
            (Val::Any, _) => true,
            (Val::Zero, Observed::Zero) => true,
            (Val::Data(v), Observed::Data(w)) => v == w,
            _ => false,
        }
    }
}

/// Fills one sector with the data of write `version` at sector address `lba`: the version,
/// the address, then bytes derived from both.
pub fn fill_sector(version: u64, lba: u64, out: &mut [u8]) {
    debug_assert_eq!(out.len(), SECTOR as usize);
    out[..8].copy_from_slice(&version.to_le_bytes());
    out[8..16].copy_from_slice(&lba.to_le_bytes());
    let mut x = version.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ lba ^ 0x5851_f42d_4c95_7f2d;
    for chunk in out[16..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// The payload of write `version` at byte `offset` (sector-aligned), `len` bytes.
pub fn payload(version: u64, offset: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    for (i, s) in out.chunks_mut(SECTOR as usize).enumerate() {
        fill_sector(version, offset / SECTOR + i as u64, s);
    }
    out
}

/// Which write (if any) produced `sector`, read at address `lba`.
pub fn classify(sector: &[u8], lba: u64) -> Observed {
    if sector.iter().all(|&b| b == 0) {
        return Observed::Zero;
    }
    let version = u64::from_le_bytes(sector[..8].try_into().unwrap_or_default());
    let mut want = [0u8; SECTOR as usize];
    fill_sector(version, lba, &mut want);
    if version != 0 && sector == want {
        Observed::Data(version)
    } else {
        Observed::Garbage
    }
}

/// A value in a sector's history.
#[derive(Debug, Clone, Copy)]
struct Entry {
    val: Val,
    /// Acknowledged as done (not failed, not lost in a crash).
    certain: bool,
    /// Completion order (for FLUSH: which writes it covers).
    ack: u64,
}

#[derive(Debug, Clone)]
struct Sector {
    /// Values in acknowledgement order; `hist[durable..]` may survive a crash,
    /// `hist[readable..]` may be read now.
    hist: Vec<Entry>,
    durable: usize,
    readable: usize,
}

impl Sector {
    fn new() -> Self {
        Self {
            hist: vec![Entry {
                val: Val::Zero,
                certain: true,
                ack: 0,
            }],
            durable: 0,
            readable: 0,
        }
    }

    /// Drops values no read and no crash can bring back.
    fn compact(&mut self) {
        if self.durable > 0 {
            self.hist.drain(..self.durable);
            self.readable -= self.durable;
            self.durable = 0;
        }
    }

    fn allowed(&self, from: usize) -> Vec<(Val, bool)> {
        self.hist[from..]
            .iter()
            .map(|e| (e.val, e.certain))
            .collect()
    }
}

/// A read that the model cannot explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub export: usize,
    pub offset: u64,
    pub observed: Observed,
    /// Values the model allows there (value, acknowledged).
    pub allowed: Vec<(Val, bool)>,
    pub context: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "export {} offset {:#x} ({}): read {:?}, the model allows ",
            self.export, self.offset, self.context, self.observed
        )?;
        for (i, (v, certain)) in self.allowed.iter().enumerate() {
            let sep = if i == 0 { "" } else { " | " };
            let how = if *certain { "" } else { " (unacknowledged)" };
            write!(f, "{sep}{v:?}{how}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Divergence {}

/// An operation in flight.
#[derive(Debug, Clone, Copy)]
struct Flight {
    export: usize,
    kind: Kind,
    offset: u64,
    len: u64,
    version: u64,
    /// Completions counted when it was sent (a FLUSH covers those before it).
    sent: u64,
}

/// Handle of an operation in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// Counters of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ops: u64,
    pub crashes: u64,
    pub sectors_checked: u64,
    pub errors: u64,
}

/// Why an operation cannot start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It overlaps an operation in flight and one of them changes the range.
    Overlaps,
    /// Not sector-aligned, empty, or past the end.
    Range,
}

struct Export {
    sectors: Vec<Sector>,
    /// Sectors whose history holds more than one value.
    active: BTreeSet<u64>,
}

/// The model of a set of exports served by one server.
pub struct Model {
    exports: Vec<Export>,
    durability: Durability,
    flights: BTreeMap<OpId, Flight>,
    next_id: u64,
    next_version: u64,
    completions: u64,
    /// Errors are expected (fault injection): a failed request is not a divergence.
    pub errors_allowed: bool,
    pub counts: Counts,
}

impl Model {
    /// Exports of `sizes` bytes (multiples of [`SECTOR`]), all zero at first.
    pub fn new(sizes: &[u64], durability: Durability) -> Self {
        Self {
            exports: sizes
                .iter()
                .map(|&s| Export {
                    sectors: (0..s / SECTOR).map(|_| Sector::new()).collect(),
                    active: BTreeSet::new(),
                })
                .collect(),
            durability,
            flights: BTreeMap::new(),
            next_id: 1,
            next_version: 1,
            completions: 0,
            errors_allowed: false,
            counts: Counts::default(),
        }
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    pub fn export_size(&self, export: usize) -> u64 {
        self.exports[export].sectors.len() as u64 * SECTOR
    }

    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Whether `kind` on `export` at `offset..offset+len` may start now.
    pub fn admits(&self, export: usize, kind: Kind, offset: u64, len: u64) -> Result<(), Refused> {
        if kind != Kind::Flush {
            let size = self.export_size(export);
            if len == 0
                || !offset.is_multiple_of(SECTOR)
                || !len.is_multiple_of(SECTOR)
                || offset + len > size
            {
                return Err(Refused::Range);
            }
        }
        let clash = self.flights.values().any(|f| {
            f.export == export
                && (f.kind.mutates() || kind.mutates())
                && kind != Kind::Flush
                && f.kind != Kind::Flush
                && f.offset < offset + len
                && offset < f.offset + f.len
        });
        if clash {
            return Err(Refused::Overlaps);
        }
        Ok(())
    }

    /// Starts an operation; for a write, [`Model::payload_of`] gives the bytes to send.
    pub fn start(
        &mut self,
        export: usize,
        kind: Kind,
        offset: u64,
        len: u64,
    ) -> Result<OpId, Refused> {
        self.admits(export, kind, offset, len)?;
        let id = OpId(self.next_id);
        self.next_id += 1;
        let version = if matches!(kind, Kind::Write { .. }) {
            self.next_version += 1;
            self.next_version
        } else {
            0
        };
        self.flights.insert(
            id,
            Flight {
                export,
                kind,
                offset,
                len,
                version,
                sent: self.completions,
            },
        );
        Ok(id)
    }

    /// The bytes write `id` sends.
    pub fn payload_of(&self, id: OpId) -> Vec<u8> {
        let f = &self.flights[&id];
        payload(f.version, f.offset, f.len)
    }

    fn val_of(f: &Flight) -> Val {
        match f.kind {
            Kind::Write { .. } => Val::Data(f.version),
            Kind::Zero { .. } => Val::Zero,
            _ => Val::Any,
        }
    }

    /// Appends `val` to the history of every sector of a range.
    fn record(&mut self, f: &Flight, certain: bool) {
        let val = Self::val_of(f);
        let durable_now = certain && (f.kind.fua() || self.durability == Durability::Nvlog);
        let ack = self.completions;
        let e = &mut self.exports[f.export];
        for lba in f.offset / SECTOR..(f.offset + f.len) / SECTOR {
            let s = &mut e.sectors[lba as usize];
            s.hist.push(Entry { val, certain, ack });
            let top = s.hist.len() - 1;
            if certain {
                s.readable = top;
            }
            if durable_now {
                s.durable = top;
                s.compact();
            }
            if s.hist.len() > 1 {
                e.active.insert(lba);
            } else {
                e.active.remove(&lba);
            }
        }
    }

    /// The reply to `id` arrived: `ok` unless it carried an error; `data` for a read.
    pub fn complete(&mut self, id: OpId, ok: bool, data: Option<&[u8]>) -> Result<(), String> {
        let Some(f) = self.flights.remove(&id) else {
            return Err(format!("reply to an operation not in flight ({id:?})"));
        };
        self.counts.ops += 1;
        let r = self.completed(f, ok, data);
        // After recording: this completion's writes count as acknowledged before any FLUSH
        // sent from now on.
        self.completions += 1;
        r
    }

    fn completed(&mut self, f: Flight, ok: bool, data: Option<&[u8]>) -> Result<(), String> {
        if !ok {
            self.counts.errors += 1;
            if f.kind.mutates() {
                self.record(&f, false);
            }
            if !self.errors_allowed {
                return Err(format!(
                    "{} export {} offset {:#x} length {} failed without a fault injected",
                    f.kind, f.export, f.offset, f.len
                ));
            }
            return Ok(());
        }
        match f.kind {
            Kind::Read => {
                let data = data.ok_or("a read completed without data")?;
                if data.len() as u64 != f.len {
                    return Err(format!("read of {} bytes returned {}", f.len, data.len()));
                }
                self.check(f.export, f.offset, data, "read")
                    .map_err(|d| d.to_string())?;
            }
            Kind::Write { .. } | Kind::Zero { .. } | Kind::Trim { .. } => self.record(&f, true),
            Kind::Flush => self.flushed(f.export, f.sent),
            Kind::Cache => {}
        }
        Ok(())
    }

    /// A FLUSH sent after `sent` completions was acknowledged.
    fn flushed(&mut self, export: usize, sent: u64) {
        if self.durability == Durability::Nvlog {
            return;
        }
        let e = &mut self.exports[export];
        let mut settled = Vec::new();
        for &lba in &e.active {
            let s = &mut e.sectors[lba as usize];
            if let Some(i) = s.hist.iter().rposition(|x| x.certain && x.ack < sent) {
                s.durable = s.durable.max(i);
                s.compact();
            }
            if s.hist.len() == 1 {
                settled.push(lba);
            }
        }
        for lba in settled {
            e.active.remove(&lba);
        }
    }

    /// Checks bytes read at `offset` of `export` (outside any operation: e.g. after a
    /// crash); each sector's value must be allowed, and then becomes the one reads return.
    pub fn check(
        &mut self,
        export: usize,
        offset: u64,
        data: &[u8],
        context: &str,
    ) -> Result<(), Divergence> {
        for (i, chunk) in data.chunks(SECTOR as usize).enumerate() {
            let lba = offset / SECTOR + i as u64;
            let observed = classify(chunk, lba);
            self.counts.sectors_checked += 1;
            let s = &mut self.exports[export].sectors[lba as usize];
            match (s.readable..s.hist.len()).find(|&j| s.hist[j].val.admits(observed)) {
                Some(j) => {
                    // Observed: the value the server holds now (a crash or a failed write
                    // had left it uncertain); a FLUSH sent later covers it, and the values
                    // after it (failed or lost writes) are gone for good.
                    s.readable = j;
                    s.hist[j].certain = true;
                    s.hist.truncate(j + 1);
                }
                None => {
                    return Err(Divergence {
                        export,
                        offset: lba * SECTOR,
                        observed,
                        allowed: s.allowed(s.readable),
                        context: context.into(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The server crashed: every operation in flight may or may not have happened, and each
    /// sector may now hold any value since its durable floor.
    pub fn crash(&mut self) {
        self.counts.crashes += 1;
        let flights: Vec<Flight> = std::mem::take(&mut self.flights).into_values().collect();
        for f in flights.iter().filter(|f| f.kind.mutates()) {
            self.record(f, false);
        }
        for e in &mut self.exports {
            for &lba in &e.active {
                let s = &mut e.sectors[lba as usize];
                // Acknowledged but not durable: lost or not, a FLUSH from now on cannot make
                // it durable (until a read shows it survived).
                for x in &mut s.hist[s.durable + 1..] {
                    x.certain = false;
                }
                s.readable = s.durable;
            }
        }
    }

    /// Byte ranges (offset, length) of `export` whose sectors have more than one possible
    /// value: what a check after a crash needs to read (merged, in order).
    pub fn uncertain_ranges(&self, export: usize) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &lba in &self.exports[export].active {
            let at = lba * SECTOR;
            match out.last_mut() {
                Some((o, l)) if *o + *l == at => *l += SECTOR,
                _ => out.push((at, SECTOR)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
