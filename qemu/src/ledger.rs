//! A write ledger: a client that writes a unique pattern to its own block each time, and
//! records which writes the server acknowledged, so that after a failure anyone can check
//! that every acknowledged write reads back (the failover tests and `tandem bench failover`).
//!
//! A write whose reply never came (the server died with it in flight) may or may not have
//! landed: the block may then hold it or the last acknowledged one, nothing else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::nbd_client::{NbdClient, NbdError};

/// Bytes per ledger block.
pub const BLOCK: u32 = 4096;

/// The block `seq` writes to `slot`: slot and sequence number in the first 16 bytes, then
/// bytes derived from both (so a torn or misplaced block never passes for another).
pub fn pattern(slot: u64, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK as usize);
    out.extend_from_slice(&slot.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let mut x = slot.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq.wrapping_add(0x632b_e59b_d9b4_e019);
    while out.len() < BLOCK as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(BLOCK as usize);
    out
}

/// What a block read back holds, decoded: `Some((slot, seq))`, or `None` for zeros (never
/// written) or anything that is not a pattern.
fn decode(data: &[u8]) -> Option<(u64, u64)> {
    if data.len() < 16 || data.iter().all(|&b| b == 0) {
        return None;
    }
    let slot = u64::from_le_bytes(data[0..8].try_into().ok()?);
    let seq = u64::from_le_bytes(data[8..16].try_into().ok()?);
    (pattern(slot, seq) == data).then_some((slot, seq))
}

/// One block's history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Slot {
    /// Sequence number of the last acknowledged write.
    pub acked: Option<u64>,
    /// Writes sent after it whose replies never came.
    pub uncertain: Vec<u64>,
}

/// Every block's history, and totals.
#[derive(Debug, Clone, Serialize)]
pub struct Ledger {
    /// Byte offset of slot 0 in the export.
    pub base: u64,
    /// One per block.
    pub slots: Vec<Slot>,
    /// Writes whose reply arrived.
    pub acked_writes: u64,
    /// Writes whose reply never came.
    pub unanswered_writes: u64,
}

/// A block that does not hold what the ledger allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// The block.
    pub slot: usize,
    /// The last acknowledged sequence number.
    pub expected: Option<u64>,
    /// Unanswered writes that may have landed instead.
    pub allowed_uncertain: Vec<u64>,
    /// What was read: (slot, seq) of a pattern, or a description.
    pub found: String,
}

impl Ledger {
    /// An empty ledger of `slots` blocks from byte `base`.
    pub fn new(base: u64, slots: usize) -> Self {
        Self {
            base,
            slots: vec![Slot::default(); slots],
            acked_writes: 0,
            unanswered_writes: 0,
        }
    }

    /// Byte offset of a block.
    pub fn offset(&self, slot: usize) -> u64 {
        self.base + slot as u64 * u64::from(BLOCK)
    }

    /// The write `seq` to `slot` was acknowledged.
    pub fn acked(&mut self, slot: usize, seq: u64) {
        let s = &mut self.slots[slot];
        s.acked = Some(seq);
        s.uncertain.retain(|&u| u > seq);
        self.acked_writes += 1;
    }

    /// The write `seq` to `slot` got no reply.
    pub fn unanswered(&mut self, slot: usize, seq: u64) {
        self.slots[slot].uncertain.push(seq);
        self.unanswered_writes += 1;
    }

    /// Checks one block read back from `slot`.
    pub fn check(&self, slot: usize, data: &[u8]) -> Result<(), Mismatch> {
        let s = &self.slots[slot];
        let found = decode(data);
        let ok = match found {
            None => s.acked.is_none(),
            Some((sl, seq)) => {
                sl == slot as u64 && (Some(seq) == s.acked || s.uncertain.contains(&seq))
            }
        };
        if ok {
            return Ok(());
        }
        Err(Mismatch {
            slot,
            expected: s.acked,
            allowed_uncertain: s.uncertain.clone(),
            found: match found {
                Some((sl, seq)) => format!("slot {sl} seq {seq}"),
                None if data.iter().all(|&b| b == 0) => "zeros".into(),
                None => "not a ledger pattern".into(),
            },
        })
    }

    /// Reads every slot through `client` and lists the ones that do not match.
    pub fn verify(&self, client: &mut NbdClient) -> Result<Vec<Mismatch>, NbdError> {
        let mut bad = Vec::new();
        for slot in 0..self.slots.len() {
            let data = client.read(self.offset(slot), BLOCK)?;
            if let Err(m) = self.check(slot, &data) {
                bad.push(m);
            }
        }
        Ok(bad)
    }
}

/// One interval without acknowledged writes, as the writer saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Outage {
    /// Since the writer started, ms: the first failed request, and the first acknowledged
    /// write after it.
    pub from_ms: f64,
    /// See `from_ms`.
    pub to_ms: f64,
    /// The error that began it.
    pub error: String,
}

/// What a writer did.
#[derive(Debug, Clone, Serialize)]
pub struct WriterReport {
    /// Every write's fate.
    pub ledger: Ledger,
    /// Intervals without acknowledged writes.
    pub outages: Vec<Outage>,
    /// Connections made after a failure.
    pub reconnects: u64,
    /// The writer gave up: no connection within the reconnect limit.
    pub gave_up: Option<String>,
}

/// Where and how a writer writes.
pub struct WriterSpec {
    /// The NBD server.
    pub addr: SocketAddr,
    /// The export.
    pub export: String,
    /// Byte offset of the first block.
    pub base: u64,
    /// Blocks written in turn.
    pub slots: usize,
    /// Per-request timeout (a dead server shows up within it).
    pub io_timeout: Duration,
    /// TCP connect timeout for each (re)connection attempt.
    pub connect_timeout: Duration,
    /// How long to keep trying to reconnect after a failure before giving up.
    pub reconnect_for: Duration,
    /// Counts acknowledged writes as they happen (progress for whoever watches the writer).
    pub acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The instant outage times count from (the caller's clock, so it can relate them to
    /// what it did, such as a kill).
    pub origin: Instant,
}

/// Writes slot after slot until `stop`, reconnecting after failures; every write's fate goes
/// into the ledger, every interval without acknowledged writes into the outages.
pub fn run_writer(spec: &WriterSpec, stop: &AtomicBool) -> WriterReport {
    let began = spec.origin;
    let mut ledger = Ledger::new(spec.base, spec.slots);
    let mut outages: Vec<Outage> = Vec::new();
    let mut reconnects = 0;
    let mut seq = 0u64;
    let mut slot = 0usize;
    let mut client: Option<NbdClient> = None;
    let mut down_since: Option<(f64, String)> = None;
    let ms = |i: Instant| i.duration_since(began).as_secs_f64() * 1000.0;
    while !stop.load(Ordering::SeqCst) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match NbdClient::connect_with(
                spec.addr,
                &spec.export,
                spec.connect_timeout,
                spec.io_timeout,
            ) {
                Ok(c) => {
                    reconnects += u64::from(down_since.is_some());
                    client.insert(c)
                }
                Err(e) => {
                    let (since, _) = down_since.get_or_insert((ms(Instant::now()), e.to_string()));
                    if ms(Instant::now()) - *since > spec.reconnect_for.as_secs_f64() * 1000.0 {
                        return WriterReport {
                            ledger,
                            outages,
                            reconnects,
                            gave_up: Some(format!(
                                "no connection for {:?}: {e}",
                                spec.reconnect_for
                            )),
                        };
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            },
        };
        seq += 1;
        let data = pattern(slot as u64, seq);
        match c.write(ledger.offset(slot), &data, false) {
            Ok(()) => {
                ledger.acked(slot, seq);
                spec.acked.fetch_add(1, Ordering::SeqCst);
                if let Some((from, error)) = down_since.take() {
                    outages.push(Outage {
                        from_ms: from,
                        to_ms: ms(Instant::now()),
                        error,
                    });
                }
            }
            Err(e) => {
                ledger.unanswered(slot, seq);
                down_since.get_or_insert((ms(Instant::now()), e.to_string()));
                client = None;
            }
        }
        slot = (slot + 1) % spec.slots;
    }
    if let Some(c) = client {
        c.disconnect();
    }
    WriterReport {
        ledger,
        outages,
        reconnects,
        gave_up: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_decode_and_differ() {
        let a = pattern(3, 7);
        assert_eq!(a.len(), BLOCK as usize);
        assert_eq!(decode(&a), Some((3, 7)));
        assert_ne!(pattern(3, 8), a);
        let mut torn = a.clone();
        torn[2000] ^= 1;
        assert_eq!(decode(&torn), None);
        assert_eq!(decode(&vec![0; BLOCK as usize]), None);
    }

    #[test]
    fn acked_and_uncertain_writes_are_judged() {
        let mut l = Ledger::new(0, 3);
        assert!(
            l.check(0, &vec![0; 4096]).is_ok(),
            "never written: zeros are fine"
        );
        l.acked(0, 1);
        assert!(l.check(0, &pattern(0, 1)).is_ok());
        let lost = l.check(0, &vec![0; 4096]).unwrap_err();
        assert_eq!(lost.found, "zeros");
        l.unanswered(0, 4);
        assert!(
            l.check(0, &pattern(0, 4)).is_ok(),
            "an unanswered write may land"
        );
        assert!(l.check(0, &pattern(0, 1)).is_ok(), "or not");
        assert!(l.check(0, &pattern(0, 2)).is_err(), "but nothing else");
        assert!(l.check(0, &pattern(1, 1)).is_err(), "another slot's block");
        l.acked(0, 5);
        assert!(
            l.check(0, &pattern(0, 4)).is_err(),
            "superseded by a later ack"
        );
        assert_eq!((l.acked_writes, l.unanswered_writes), (2, 1));
        assert_eq!(l.offset(2), 8192);
    }
}
