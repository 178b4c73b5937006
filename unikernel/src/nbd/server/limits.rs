//! What one client may hold, and for how long: the server's defence against clients that
//! connect and say nothing, never read their replies, or stop half-way through a request.
//!
//! - A connection still negotiating after the handshake deadline is closed, and the socket
//!   layer evicts the oldest negotiating connection when it needs a socket for a new client
//!   ([`Server::oldest_handshake`]), so a flood of silent connections delays a real client by
//!   at most the deadline.
//! - At most [`Limits::max_serving`] connections are past negotiation at once.
//! - A connection whose replies pile up unread (more than [`MAX_QUEUED`] bytes) is not read
//!   any further: TCP backpressure stops the client, and memory stays bounded.
//! - Pool buffers are shared fairly: a connection holds at most its share of the pool.
//! - A connection that holds something (a partly received write and its log reservation, or
//!   replies the client does not read) and moves no byte for the stall time is closed, which
//!   releases what it held.
//! - An optional idle timeout closes negotiated connections with nothing in progress.

use super::{Conn, Phase, Server, Stream};

/// Reply bytes queued for one client before the server stops reading its requests.
pub const MAX_QUEUED: usize = 64 * 1024;

/// Timeouts and caps (guest keys `nbd.handshake_ms`, `nbd.idle_ms`, `nbd.stall_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A connection must finish negotiating within this (µs).
    pub handshake_us: u64,
    /// A negotiated connection with nothing in progress is closed after this (µs; 0: never).
    pub idle_us: u64,
    /// A connection holding resources that moves no byte for this long is closed (µs).
    pub stall_us: u64,
    /// Connections past negotiation at once.
    pub max_serving: usize,
}

impl Limits {
    /// The limits the `nbd.*` keys of `cfg` ask for, with `max_serving` clients at once.
    pub fn from_config(cfg: &crate::cmdline::Config, max_serving: usize) -> Self {
        Self {
            handshake_us: cfg.nbd_handshake_ms * 1000,
            idle_us: cfg.nbd_idle_ms * 1000,
            stall_us: cfg.nbd_stall_ms * 1000,
            max_serving,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_us: 10_000_000,
            idle_us: 0,
            stall_us: 30_000_000,
            max_serving: 16,
        }
    }
}

/// A stream that notes whether any byte moved, and whether the server waited on the client
/// (a receive or send that took nothing).
pub(super) struct Counting<'a> {
    pub inner: &'a mut dyn Stream,
    pub moved: bool,
    pub blocked: bool,
    /// The client sent something.
    pub heard: bool,
}

impl Counting<'_> {
    /// Whether the client kept up: bytes moved, or the server did not wait on it (it was
    /// waiting on its disks or its log, which is not the client's fault).
    pub fn kept_up(&self) -> bool {
        self.moved || !self.blocked
    }
}

impl Stream for Counting<'_> {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        let n = self.inner.recv(buf);
        self.moved |= n > 0;
        self.heard |= n > 0;
        self.blocked |= n == 0 && !buf.is_empty();
        n
    }

    fn send(&mut self, data: &[u8]) -> usize {
        let n = self.inner.send(data);
        self.moved |= n > 0;
        self.blocked |= n == 0 && !data.is_empty();
        n
    }
}

impl Server {
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The negotiating connection to evict first: one that has sent nothing yet (a real
    /// client answers the greeting at once), the oldest of those; else the oldest: (slot,
    /// since µs).
    pub fn oldest_handshake(&self) -> Option<(usize, u64)> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| matches!(c.phase, Phase::Handshake(_)))
            .min_by_key(|(_, c)| (c.heard, c.since_us))
            .map(|(i, c)| (i, c.since_us))
    }

    /// Reply bytes queued for the client on `slot` (not yet taken by its socket).
    pub fn queued(&self, slot: usize) -> usize {
        self.conns
            .get(slot)
            .and_then(Option::as_ref)
            .map_or(0, |c| c.out.len() + c.replies.len())
    }

    /// Connections still negotiating.
    pub fn negotiating(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .filter(|c| matches!(c.phase, Phase::Handshake(_)))
            .count()
    }

    /// Connections past negotiation.
    pub fn serving(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .filter(|c| !matches!(c.phase, Phase::Handshake(_)))
            .count()
    }

    /// Pool buffers one connection may hold: its share of the pool.
    pub(super) fn conn_budget(&self) -> usize {
        (self.pool.capacity() / self.conns.len().max(1)).clamp(2, super::CONN_BUFFERS)
    }

    /// Why `c` must be closed now, if it must.
    pub(super) fn expired(&self, c: &Conn) -> Option<&'static str> {
        let now = self.now_us;
        let l = &self.limits;
        if matches!(c.phase, Phase::Handshake(_)) {
            return (now.saturating_sub(c.since_us) > l.handshake_us)
                .then_some("handshake deadline passed");
        }
        let quiet = now.saturating_sub(c.last_io_us);
        // Waiting for the client: a write's payload, or replies it does not read.
        let holds = c.inbound.is_some()
            || c.skip > 0
            || c.hdr_len > 0
            || !c.out.is_empty()
            || c.streaming.is_some()
            || c.tls.as_ref().is_some_and(|t| t.has_output());
        if holds && quiet > l.stall_us {
            return Some("stalled: no byte moved while the request waited for the client");
        }
        let idle = c.ops.iter().all(Option::is_none) && !holds && c.replies.is_empty();
        (l.idle_us > 0 && idle && quiet > l.idle_us).then_some("idle timeout")
    }

    /// Whether `c` has so many replies queued that its requests are not read.
    pub(super) fn backlogged(c: &Conn) -> bool {
        c.out.len() + c.replies.len() > MAX_QUEUED
    }
}
