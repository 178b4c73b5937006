//! Telling a failed node's clients at once that their connections are gone (issue 16 §5).
//!
//! Why: after a takeover the survivor owns the peer's address and serves its exports, but it
//! knows nothing of the peer's TCP connections. A client waiting for a reply sends nothing, so
//! nothing answers it with a reset: it learns of the takeover only from its own timeout (5 s
//! for a typical client) and only then reconnects.
//!
//! What: every node records its server-side connections in its table in the shared region
//! ([`region::conn`], rewritten only when the set changes; [`open_connections`] gathers the
//! set from the socket set). A survivor that takes the peer's address reads the peer's table
//! and, for each connection on that address, opens a TCP socket from the recorded server
//! endpoint to the client ([`Resets`]). Its SYN reaches the client's established socket, which
//! answers with a challenge ACK carrying its exact SND.NXT and RCV.NXT (RFC 5961 §4: a SYN in a
//! synchronized state is only ever acknowledged). Our socket, in SYN-SENT, finds that ACK
//! unacceptable and answers it with a RST whose sequence number is the ACK's acknowledgement
//! number (smoltcp's `rst_reply`), i.e. the client's RCV.NXT exactly: the client accepts it
//! (RFC 5961 §3) and its reader sees ECONNRESET. No recorded sequence number is needed, and the
//! RST is right whatever the client received after the record was made.
//!
//! Retries and confirmation come from the socket's own SYN retransmissions (after 1 s, then
//! 2 s, ...): a challenge ACK lost (the client's ARP entry still pointing at the dead node) or
//! rate-limited by the client (Linux sends at most one per socket per `tcp_invalid_ratelimit`,
//! 500 ms) is asked for again. A client whose socket is gone answers the next SYN with RST|ACK,
//! which closes ours: that is the confirmation ([`Outcome::Gone`]). A client that never
//! answers is given up after [`GIVE_UP`]. Neighbour discovery (ARP for a client the survivor
//! never talked to) is smoltcp's: the SYN waits for the reply. Nothing here blocks:
//! [`Resets::poll`] runs once per service-loop turn.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};

use crate::ha::region::conn::Conn;

/// How long a client has to answer before its reset is given up (SYNs go out at 0, 1 and 3 s).
pub const GIVE_UP: Duration = Duration::from_secs(7);
/// Socket buffer bytes each way: nothing but a SYN is ever sent, nothing is ever received.
const BUF: usize = 64;

/// Server-side TCP connections in `sockets` (IPv4, established or closing: the client may be
/// waiting on them), in the set's order, into `out` (cleared first). Sockets for which
/// `skip` is true are left out. Half-open ones (SYN-RECEIVED) are not: the client has sent
/// nothing yet that could wait for a reply, and a SYN flood from spoofed addresses must not
/// fill the table and be answered with SYNs after a takeover.
pub fn open_connections(
    sockets: &SocketSet<'_>,
    skip: impl Fn(SocketHandle) -> bool,
    out: &mut Vec<Conn>,
) {
    use tcp::State as S;
    out.clear();
    for (h, s) in sockets.iter() {
        let Some(s) = <tcp::Socket as smoltcp::socket::AnySocket>::downcast(s) else {
            continue;
        };
        let serving = matches!(
            s.state(),
            S::Established | S::FinWait1 | S::FinWait2 | S::CloseWait | S::Closing | S::LastAck
        );
        if !serving || skip(h) {
            continue;
        }
        if let (Some(l), Some(r)) = (s.local_endpoint(), s.remote_endpoint())
            && let (IpAddress::Ipv4(la), IpAddress::Ipv4(ra)) = (l.addr, r.addr)
        {
            out.push(Conn {
                local_ip: la.octets(),
                local_port: l.port,
                remote_ip: ra.octets(),
                remote_port: r.port,
            });
        }
    }
}

/// How one client's reset ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client's stack answered a SYN with RST|ACK: it holds no such connection any more
    /// (reset by us, or closed by the client before). `after`: since the reset started.
    Gone { conn: Conn, after: Duration },
    /// No answer within [`GIVE_UP`]: the client may be gone, unreachable, or filtered.
    NoAnswer { conn: Conn },
    /// The client accepted the SYN as a new connection (it listens on its port): aborted
    /// with a RST, which also ends any old connection of that 4-tuple.
    Accepted { conn: Conn },
    /// No socket could be opened (an address that is not ours).
    Refused { conn: Conn },
}

struct Pending {
    conn: Conn,
    handle: SocketHandle,
    started: Instant,
    /// Set when the socket was aborted: removed at the next poll, once the RST went out.
    aborted: bool,
}

/// The resets under way.
#[derive(Default)]
pub struct Resets {
    pending: Vec<Pending>,
}

impl Resets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no reset is under way.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether `h` is one of the reset sockets (not a connection to record).
    pub fn owns(&self, h: SocketHandle) -> bool {
        self.pending.iter().any(|p| p.handle == h)
    }

    /// Starts resetting each of `conns` (one already under way is not started twice).
    /// Returns how many were started; each refused one is reported through `report`.
    pub fn start(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        conns: &[Conn],
        now: Instant,
        report: &mut dyn FnMut(Outcome),
    ) -> usize {
        let mut started = 0;
        for &conn in conns {
            if self.pending.iter().any(|p| p.conn == conn) {
                continue;
            }
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; BUF]),
                tcp::SocketBuffer::new(vec![0; BUF]),
            );
            let remote =
                IpEndpoint::new(Ipv4Address::from(conn.remote_ip).into(), conn.remote_port);
            let local = IpEndpoint::new(Ipv4Address::from(conn.local_ip).into(), conn.local_port);
            if s.connect(iface.context(), remote, local).is_err() {
                report(Outcome::Refused { conn });
                continue;
            }
            let handle = sockets.add(s);
            self.pending.push(Pending {
                conn,
                handle,
                started: now,
                aborted: false,
            });
            started += 1;
        }
        started
    }

    /// Stops the resets of the connections `which` selects (their address was given back):
    /// their sockets are removed without a word to the client.
    pub fn cancel(&mut self, sockets: &mut SocketSet<'static>, which: impl Fn(&Conn) -> bool) {
        self.pending.retain(|p| {
            if which(&p.conn) {
                sockets.remove(p.handle);
                return false;
            }
            true
        });
    }

    /// One turn: reports and retires every reset that ended.
    pub fn poll(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now: Instant,
        report: &mut dyn FnMut(Outcome),
    ) {
        self.pending.retain_mut(|p| {
            let s = sockets.get_mut::<tcp::Socket>(p.handle);
            let ended = match (p.aborted, s.state()) {
                (true, _) => None,
                (false, tcp::State::Closed) => Some(Outcome::Gone {
                    conn: p.conn,
                    after: now - p.started,
                }),
                (false, tcp::State::SynSent) if now >= p.started + GIVE_UP => {
                    Some(Outcome::NoAnswer { conn: p.conn })
                }
                (false, tcp::State::SynSent) => return true,
                (false, _) => {
                    s.abort();
                    p.aborted = true;
                    report(Outcome::Accepted { conn: p.conn });
                    return true;
                }
            };
            if let Some(o) = ended {
                report(o);
            }
            sockets.remove(p.handle);
            false
        });
    }
}

#[cfg(test)]
mod tests;
