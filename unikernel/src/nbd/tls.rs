//! NBD over TLS: after `NBD_OPT_STARTTLS` a connection's bytes travel in a rustls session
//! ([`Session`]) layered on the raw [`Stream`], and the server reads and writes plaintext
//! through [`TlsStream`] as it would through the socket.
//!
//! rustls runs without `std` here, so it is its unbuffered API that is driven: this module owns
//! the buffers, and bounds them, because a client must not make the guest hold what it likes:
//! - ciphertext received: at most [`MAX_IN`] bytes (two full records, room for a handshake
//!   message that spans records);
//! - plaintext decrypted and not yet taken by the server: at most what that ciphertext held,
//!   since nothing more is read from the socket until the server has taken it all, so a
//!   client sending faster than it is served is stopped by TCP;
//! - ciphertext to send: the server's plaintext is taken only while less than [`OUT_SOFT`]
//!   bytes wait for the socket, so a client that does not read its replies is backpressured as
//!   without TLS (the server's `MAX_QUEUED` then stops its requests being read); the
//!   handshake's own records, whose size is set by the server's certificate chain and not by
//!   the client, are always queued.
//!
//! Before any TLS record the session sends its plaintext prefix: the replies queued before
//! `NBD_OPT_STARTTLS`, and its `NBD_REP_ACK`. Bytes the client sent after STARTTLS and before
//! reading the ack are handed to rustls as TLS (never read as NBD options), so an attacker who
//! injects plaintext after the ack gets a failed handshake, not a command.

use alloc::boxed::Box;
use alloc::vec::Vec;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::ProtocolVersion;

use super::server::Stream;
use crate::tls::TlsConfig;

/// The largest TLS record on the wire: 2^14 bytes of plaintext, TLS 1.2's 2048 bytes of
/// expansion, the 5-byte header.
pub const MAX_RECORD: usize = (1 << 14) + 2048 + 5;
/// Ciphertext held before rustls consumes it.
pub const MAX_IN: usize = 2 * MAX_RECORD;
/// Queued ciphertext above which the server's plaintext is refused.
pub const OUT_SOFT: usize = MAX_RECORD;
/// Plaintext sealed per call (one full record).
const MAX_PLAIN: usize = 1 << 14;
/// rustls turns per pump: enough for a whole handshake flight, bounded for fairness.
const MAX_TURNS: usize = 64;

pub use tandem_formats::cmdline::TlsMode;

/// What the NBD server serves TLS with ([`super::server::Server::set_tls`]).
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    mode: TlsMode,
    config: Option<TlsConfig>,
}

impl TlsSettings {
    /// `mode` with `config`; `on` and `require` need one.
    pub fn new(mode: TlsMode, config: Option<TlsConfig>) -> Result<Self, &'static str> {
        if mode != TlsMode::Off && config.is_none() {
            return Err("TLS on or required, but no certificates");
        }
        Ok(Self { mode, config })
    }

    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    pub fn config(&self) -> Option<&TlsConfig> {
        self.config.as_ref().filter(|_| self.mode != TlsMode::Off)
    }
}

/// One connection's TLS session.
pub struct Session {
    conn: UnbufferedServerConnection,
    /// Plaintext to send before any TLS record.
    prefix: Vec<u8>,
    /// Ciphertext received, not yet consumed by rustls: the first `in_len` bytes of a buffer
    /// of one record, grown to [`MAX_IN`] only while a message spans more.
    incoming: Vec<u8>,
    in_len: usize,
    /// Ciphertext to send, from `out_at` on.
    outgoing: Vec<u8>,
    out_at: usize,
    /// Decrypted bytes not yet taken, from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    /// Why the session failed (no more bytes move but the alert rustls queued).
    failed: Option<rustls::Error>,
    /// After the failure, rustls's alert was taken.
    alert_taken: bool,
    close_queued: bool,
    peer_closed: bool,
}

/// What one turn of rustls did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Something changed: turn again.
    Progress,
    /// rustls waits for bytes from the client, or for room to send.
    Wait,
    /// `n` bytes of the server's plaintext were sealed.
    Sealed(usize),
}

impl Session {
    /// A session that first sends `prefix` in clear, with `early`: bytes the client sent
    /// after STARTTLS that are already read (the start of its handshake).
    pub fn new(config: &TlsConfig, prefix: Vec<u8>, early: Vec<u8>) -> Result<Self, rustls::Error> {
        let conn = UnbufferedServerConnection::new(config.server.clone())?;
        let mut s = Self {
            conn,
            prefix,
            incoming: Vec::new(),
            in_len: 0,
            outgoing: Vec::new(),
            out_at: 0,
            plain: Vec::new(),
            plain_at: 0,
            failed: None,
            alert_taken: false,
            close_queued: false,
            peer_closed: false,
        };
        if early.len() > MAX_IN {
            s.failed = Some(rustls::Error::General(
                "too much data after STARTTLS".into(),
            ));
        } else {
            s.in_len = early.len();
            s.incoming = early;
            s.incoming.resize(s.in_len.max(MAX_RECORD), 0);
        }
        Ok(s)
    }

    /// Why the session failed, if it did.
    pub fn failed(&self) -> Option<&rustls::Error> {
        self.failed.as_ref()
    }

    /// Whether the handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The TLS version agreed (after the handshake).
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Whether bytes wait to be sent (the prefix, records).
    pub fn has_output(&self) -> bool {
        !self.prefix.is_empty() || self.out_at < self.outgoing.len()
    }

    /// The client sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Bytes of buffers this session has allocated.
    pub fn buffered(&self) -> usize {
        self.prefix.capacity()
            + self.incoming.capacity()
            + self.outgoing.capacity()
            + self.plain.capacity()
    }

    /// Moves bytes between the socket and rustls both ways, running the handshake.
    pub fn pump(&mut self, raw: &mut dyn Stream) {
        for _ in 0..MAX_TURNS {
            self.flush(raw);
            let got = self.fill(raw);
            let mut changed = false;
            for _ in 0..MAX_TURNS {
                match self.turn(&[], false) {
                    Turn::Wait => break,
                    _ => changed = true,
                }
            }
            self.flush(raw);
            if got == 0 && !changed {
                return;
            }
        }
    }

    /// Reads decrypted bytes into `buf`; 0 when none are ready.
    pub fn recv(&mut self, raw: &mut dyn Stream, buf: &mut [u8]) -> usize {
        if self.plain_at == self.plain.len() {
            self.pump(raw);
        }
        let n = buf.len().min(self.plain.len() - self.plain_at);
        buf[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain.clear();
            self.plain_at = 0;
        }
        n
    }

    /// Seals plaintext for sending; returns how much was taken (0 before the handshake is
    /// done, after a failure, or while too much ciphertext waits for the socket).
    pub fn send(&mut self, raw: &mut dyn Stream, data: &[u8]) -> usize {
        if data.is_empty() || self.failed.is_some() || self.close_queued {
            return 0;
        }
        self.flush(raw);
        if self.pending_out() >= OUT_SOFT {
            return 0;
        }
        let chunk = &data[..data.len().min(MAX_PLAIN)];
        let mut taken = 0;
        for _ in 0..MAX_TURNS {
            match self.turn(chunk, false) {
                Turn::Sealed(n) => {
                    taken = n;
                    break;
                }
                Turn::Progress => continue,
                Turn::Wait => break,
            }
        }
        self.flush(raw);
        taken
    }

    /// Queues close_notify (once, after the handshake) and sends what it can.
    pub fn close(&mut self, raw: &mut dyn Stream) {
        if !self.close_queued && self.failed.is_none() && !self.conn.is_handshaking() {
            self.close_queued = true;
            for _ in 0..MAX_TURNS {
                if self.turn(&[], true) != Turn::Progress {
                    break;
                }
            }
        }
        self.flush(raw);
    }

    fn pending_out(&self) -> usize {
        self.outgoing.len() - self.out_at
    }

    /// Sends the prefix, then queued records, as far as the socket takes them.
    fn flush(&mut self, raw: &mut dyn Stream) {
        while !self.prefix.is_empty() {
            let n = raw.send(&self.prefix);
            if n == 0 {
                return;
            }
            self.prefix.drain(..n);
        }
        while self.out_at < self.outgoing.len() {
            let n = raw.send(&self.outgoing[self.out_at..]);
            if n == 0 {
                break;
            }
            self.out_at += n;
        }
        if self.out_at == self.outgoing.len() {
            self.outgoing.clear();
            self.out_at = 0;
        }
    }

    /// Reads ciphertext from the socket into the room left under [`MAX_IN`].
    fn fill(&mut self, raw: &mut dyn Stream) -> usize {
        if self.failed.is_some() || self.peer_closed {
            return 0;
        }
        // Read more only once the server took what was decrypted and the client takes what
        // is sent: this is what bounds `plain` and stops a client that outpaces the server.
        if self.plain_at < self.plain.len() || self.pending_out() >= OUT_SOFT {
            return 0;
        }
        if self.in_len == self.incoming.len() {
            // Full although rustls consumes every whole record it has: a handshake message
            // spans records. Room for one more, up to the bound.
            if self.incoming.len() >= MAX_IN {
                return 0;
            }
            self.incoming.resize(MAX_IN, 0);
        } else if self.incoming.len() > MAX_RECORD
            && self.in_len <= MAX_RECORD
            && !self.conn.is_handshaking()
        {
            // The long handshake message is done: back to one record.
            self.incoming.truncate(MAX_RECORD);
            self.incoming.shrink_to_fit();
        }
        let n = raw.recv(&mut self.incoming[self.in_len..]);
        self.in_len += n;
        n
    }

    /// One call into rustls, always over the whole input held (rustls keeps offsets into it
    /// between calls while a handshake message spans records): handles the state it reports,
    /// seals `app` (or close_notify, with `close`) when it may.
    fn turn(&mut self, app: &[u8], close: bool) -> Turn {
        if self.failed.is_some() {
            return self.turn_failed();
        }
        let Self {
            conn,
            incoming,
            in_len,
            outgoing,
            plain,
            plain_at,
            peer_closed,
            failed,
            ..
        } = self;
        let status = conn.process_tls_records(&mut incoming[..*in_len]);
        let mut discard = status.discard;
        let mut error = None;
        let turn = match status.state {
            Err(e) => {
                error = Some(e);
                Turn::Progress
            }
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                if *plain_at == plain.len() {
                    plain.clear();
                    *plain_at = 0;
                }
                while let Some(rec) = r.next_record() {
                    match rec {
                        Ok(rec) => {
                            discard += rec.discard;
                            plain.extend_from_slice(rec.payload);
                        }
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                Turn::Progress
            }
            Ok(ConnectionState::EncodeTlsData(mut e)) => encode(outgoing, &mut e),
            Ok(ConnectionState::TransmitTlsData(t)) => {
                // Queued in `outgoing`, which `flush` sends in order.
                t.done();
                Turn::Progress
            }
            Ok(ConnectionState::WriteTraffic(mut w)) if close => {
                match seal(outgoing, 0, |buf| w.queue_close_notify(buf)) {
                    Ok(()) => Turn::Sealed(0),
                    Err(_) => Turn::Wait,
                }
            }
            Ok(ConnectionState::WriteTraffic(mut w)) if !app.is_empty() => {
                match seal(outgoing, app.len(), |buf| w.encrypt(app, buf)) {
                    Ok(()) => Turn::Sealed(app.len()),
                    Err(e) => {
                        error = e;
                        Turn::Wait
                    }
                }
            }
            Ok(ConnectionState::PeerClosed) => {
                *peer_closed = true;
                Turn::Progress
            }
            // Waiting for the client (BlockedHandshake, WriteTraffic with nothing to seal),
            // closed, or early data (never accepted: the config allows none).
            Ok(_) => Turn::Wait,
        };
        incoming.copy_within(discard..*in_len, 0);
        *in_len -= discard;
        if let Some(e) = error {
            log::info!("nbd: TLS: {e}");
            *failed = Some(e);
            return Turn::Progress;
        }
        if discard > 0 && turn == Turn::Wait {
            return Turn::Progress;
        }
        turn
    }

    /// After a failure: one more call, which hands over the alert rustls queued (it pops
    /// queued records before it reads input), and none after it: rustls would read the bad
    /// input again and fail again.
    fn turn_failed(&mut self) -> Turn {
        if self.alert_taken {
            return Turn::Wait;
        }
        self.alert_taken = true;
        let status = self
            .conn
            .process_tls_records(&mut self.incoming[..self.in_len]);
        let turn = match status.state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => encode(&mut self.outgoing, &mut e),
            _ => Turn::Wait,
        };
        self.in_len = 0;
        turn
    }
}

/// Appends a handshake record rustls has ready.
fn encode(
    outgoing: &mut Vec<u8>,
    e: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
) -> Turn {
    // The first try, with no room, learns the record's size.
    let mut need = 0;
    for _ in 0..2 {
        let at = outgoing.len();
        outgoing.reserve_exact(need);
        outgoing.resize(at + need, 0);
        match e.encode(&mut outgoing[at..]) {
            Ok(n) => {
                outgoing.truncate(at + n);
                return Turn::Progress;
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                outgoing.truncate(at);
                need = required_size;
            }
            Err(EncodeError::AlreadyEncoded) => {
                outgoing.truncate(at);
                return Turn::Progress;
            }
        }
    }
    Turn::Wait
}

/// Appends what `write` seals, growing the buffer to what it says it needs.
fn seal(
    outgoing: &mut Vec<u8>,
    plain_len: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), Option<rustls::Error>> {
    // One record's overhead is at most 29 bytes (header 5, TLS 1.2 GCM's explicit nonce 8,
    // tag 16); rustls says exactly what it needs if that is short (a key update rides along).
    let mut need = plain_len + 64;
    for _ in 0..2 {
        let at = outgoing.len();
        outgoing.reserve_exact(need);
        outgoing.resize(at + need, 0);
        match write(&mut outgoing[at..]) {
            Ok(n) => {
                outgoing.truncate(at + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                outgoing.truncate(at);
                need = required_size;
            }
            Err(EncryptError::EncryptExhausted) => {
                outgoing.truncate(at);
                return Err(Some(rustls::Error::EncryptError));
            }
        }
    }
    Err(None)
}

/// The server's view of a TLS session: plaintext in and out, like a socket.
pub struct TlsStream<'a> {
    pub session: &'a mut Session,
    pub raw: &'a mut dyn Stream,
}

impl Stream for TlsStream<'_> {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        self.session.recv(self.raw, buf)
    }

    fn send(&mut self, data: &[u8]) -> usize {
        self.session.send(self.raw, data)
    }
}

/// A boxed session (the server keeps one per TLS connection).
pub type BoxedSession = Box<Session>;
