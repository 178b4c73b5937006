//! The management port: a line-based TCP control channel (port 10810 by default) through which
//! tests and operators inject errors into a running guest and read its state.
//!
//! It listens only when the guest has a key (`mgmt.key=`), and only on the management address
//! (`mgmt.listen=`) or, when asked (`mgmt.on_data=on`), on the data NIC's address. Every
//! connection starts with a challenge that the client must answer with the key before any
//! command (`unikernel::mgmt_auth` defines the exchange and its refusal lines).
//!
//! Commands: `status`; `inject panic|pagefault|gp|ud|stall|device-error` (only with
//! `debug.inject=on`). Each gets one reply line (`ok ...` or `error ...`); the `status` reply's
//! fields are defined in `unikernel::mgmt_status`, which the host parses with. An injected
//! error is acted on by the service loop right after the reply is queued.

use alloc::string::String;
use alloc::vec;
use core::ops::ControlFlow;
use core::sync::atomic::{AtomicU64, Ordering};

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpListenEndpoint, Ipv4Address};
use unikernel::cmdline::Fault;
use unikernel::mgmt_auth::{self as auth, AuthCheck, Command, Key, MAX_LINE, NONCE_LEN};
use unikernel::mgmt_status::{Status, OK_PREFIX};

/// What the service loop must do after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    Panic,
    Fault(Fault),
    Stall,
    DeviceError,
}

/// How many clients may be connected at once; spare sockets keep listening while one closes,
/// so a client that reconnects at once is not refused.
const SLOTS: usize = 4;

/// Where a connection is in the exchange.
#[derive(Clone, Copy)]
enum Phase {
    /// Listening, or connected and the challenge not sent yet.
    Fresh,
    /// Challenge sent; the `auth` line is due by `deadline_us`.
    Challenged {
        nonce: [u8; NONCE_LEN],
        deadline_us: u64,
    },
    /// Commands are taken until the client has sent nothing for the idle time.
    Authenticated { idle_deadline_us: u64 },
    /// Refused: the reply goes out, then the connection closes; input is dropped.
    Closing,
}

struct Slot {
    handle: SocketHandle,
    line: [u8; MAX_LINE],
    len: usize,
    phase: Phase,
}

/// What the channel serves with.
pub struct Settings {
    pub port: u16,
    pub addr: [u8; 4],
    pub key: Key,
    pub inject: bool,
    /// An authenticated client that sends nothing for this long is disconnected, so that a
    /// forgotten or half-open connection does not hold one of the few slots for ever.
    pub idle_ms: u64,
}

/// What every slot serves with.
struct Shared {
    at: IpListenEndpoint,
    key: Key,
    inject: bool,
    idle_us: u64,
}

pub struct Mgmt {
    slots: [Slot; SLOTS],
    shared: Shared,
}

impl Mgmt {
    pub fn new(sockets: &mut SocketSet<'static>, settings: Settings) -> Self {
        let [a, b, c, d] = settings.addr;
        let at = IpListenEndpoint {
            addr: Some(Ipv4Address::new(a, b, c, d).into()),
            port: settings.port,
        };
        let slots = core::array::from_fn(|_| {
            // Under 64 KiB: no window scale (see `unikernel::tcp_buffers`).
            let rx = tcp::SocketBuffer::new(vec![0; unikernel::tcp_buffers::rx_len(1024)]);
            let tx = tcp::SocketBuffer::new(vec![0; 4096]);
            let mut socket = tcp::Socket::new(rx, tx);
            let _ = socket.listen(at);
            Slot {
                handle: sockets.add(socket),
                line: [0; MAX_LINE],
                len: 0,
                phase: Phase::Fresh,
            }
        });
        Self {
            slots,
            shared: Shared {
                at,
                key: settings.key,
                inject: settings.inject,
                idle_us: settings.idle_ms.saturating_mul(1000),
            },
        }
    }

    /// Serves the port; returns an injection to carry out, if one was asked for.
    pub fn poll(
        &mut self,
        sockets: &mut SocketSet<'static>,
        status: &dyn Fn() -> Status,
    ) -> Option<Injection> {
        let shared = &self.shared;
        self.slots
            .iter_mut()
            .find_map(|slot| slot.poll(sockets, shared, status))
    }
}

impl Mgmt {
    /// Whether a reply is still unsent or unacknowledged by the client.
    pub fn replies_pending(&self, sockets: &SocketSet<'static>) -> bool {
        self.slots
            .iter()
            .any(|slot| sockets.get::<tcp::Socket>(slot.handle).send_queue() > 0)
    }
}

/// Connections served since boot: one of the words every nonce mixes, so that no two
/// connections get the same nonce even without a hardware random source.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// A fresh nonce: RDSEED and RDRAND output where the CPU has them (`arch::entropy`), mixed
/// with the TSC and a connection counter (`mgmt_auth::mix_nonce`).
fn fresh_nonce() -> [u8; NONCE_LEN] {
    use crate::arch::cpu::rdtsc;
    use crate::arch::entropy;
    let mut words = [0u64; 12];
    words[0] = rdtsc();
    words[1] = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    for w in words[2..7].iter_mut() {
        *w = entropy::rdseed().unwrap_or(0);
    }
    for w in words[7..11].iter_mut() {
        *w = entropy::rdrand().unwrap_or(0);
    }
    words[11] = rdtsc();
    auth::mix_nonce(&words)
}

fn send_line(s: &mut tcp::Socket, line: &str) {
    let _ = s.send_slice(line.as_bytes());
    let _ = s.send_slice(b"\n");
}

impl Slot {
    fn refuse(&mut self, s: &mut tcp::Socket, line: &str) {
        send_line(s, line);
        s.close();
        self.phase = Phase::Closing;
        self.len = 0;
    }

    fn poll(
        &mut self,
        sockets: &mut SocketSet<'static>,
        shared: &Shared,
        status: &dyn Fn() -> Status,
    ) -> Option<Injection> {
        let s = sockets.get_mut::<tcp::Socket>(self.handle);
        if !self.follow_connection(s, shared) || !self.advance(s) {
            return None;
        }
        let mut byte = [0u8; 1];
        while s.can_recv() {
            if s.recv_slice(&mut byte).unwrap_or(0) == 0 {
                break;
            }
            if byte[0] != b'\n' {
                if self.len == self.line.len() {
                    self.refuse(s, auth::REFUSE_LONG_LINE);
                    return None;
                }
                self.line[self.len] = byte[0];
                self.len += 1;
                continue;
            }
            let mut text = String::new();
            text.push_str(core::str::from_utf8(&self.line[..self.len]).unwrap_or(""));
            self.len = 0;
            if let ControlFlow::Break(inject) = self.on_line(s, shared, status, &text) {
                return inject;
            }
        }
        None
    }

    /// Follows the connection's TCP state (a closed slot listens again, a finished one
    /// closes); false when that is all for this turn.
    fn follow_connection(&mut self, s: &mut tcp::Socket, shared: &Shared) -> bool {
        if !s.is_open() {
            self.len = 0;
            self.phase = Phase::Fresh;
            let _ = s.listen(shared.at);
            return false;
        }
        if matches!(s.state(), tcp::State::FinWait2 | tcp::State::TimeWait) {
            // We closed first (a refusal) and the client acknowledged our reply and FIN:
            // listen again now, not once the client closes too or after TIME-WAIT, so that
            // refused clients cannot hold the slots.
            s.abort();
            return false;
        }
        if s.state() == tcp::State::CloseWait && s.send_queue() == 0 {
            // The client is done: close our side too, so the slot listens again.
            s.close();
            self.phase = Phase::Closing;
            return false;
        }
        true
    }

    /// Moves the phase on by time: the challenge goes out, a deadline passes, a closing
    /// connection's input is dropped; false when nothing is to be read this turn.
    fn advance(&mut self, s: &mut tcp::Socket) -> bool {
        match self.phase {
            Phase::Fresh if s.may_send() => {
                let nonce = fresh_nonce();
                send_line(s, &auth::challenge_line(&nonce));
                self.phase = Phase::Challenged {
                    nonce,
                    deadline_us: crate::time::now_us() + auth::AUTH_TIMEOUT_MS * 1000,
                };
            }
            Phase::Fresh => return false,
            Phase::Challenged { deadline_us, .. } if crate::time::now_us() > deadline_us => {
                self.refuse(s, auth::REFUSE_TIMEOUT);
                return false;
            }
            Phase::Authenticated { idle_deadline_us }
                if !s.can_recv() && crate::time::now_us() > idle_deadline_us =>
            {
                self.refuse(s, auth::REFUSE_IDLE);
                return false;
            }
            Phase::Closing => {
                // Drop whatever else the client sends.
                while s.can_recv() {
                    if s.recv(|b| (b.len(), b.len())).unwrap_or(0) == 0 {
                        break;
                    }
                }
                return false;
            }
            _ => {}
        }
        true
    }

    /// Answers one line: the `auth` reply to the challenge, then commands. Breaks with
    /// the injection a command asks for, or with none when the connection is refused.
    fn on_line(
        &mut self,
        s: &mut tcp::Socket,
        shared: &Shared,
        status: &dyn Fn() -> Status,
        text: &str,
    ) -> ControlFlow<Option<Injection>> {
        let idle_deadline_us = crate::time::now_us().saturating_add(shared.idle_us);
        match self.phase {
            Phase::Challenged { nonce, .. } => match auth::check_auth(&shared.key, &nonce, text) {
                AuthCheck::Accepted => {
                    send_line(s, AuthCheck::Accepted.reply());
                    self.phase = Phase::Authenticated { idle_deadline_us };
                }
                refused => {
                    self.refuse(s, refused.reply());
                    return ControlFlow::Break(None);
                }
            },
            Phase::Authenticated { .. } => {
                self.phase = Phase::Authenticated { idle_deadline_us };
                let (reply, inject) = command(text, shared.inject, status);
                send_line(s, &reply);
                if inject.is_some() {
                    return ControlFlow::Break(inject);
                }
            }
            Phase::Fresh | Phase::Closing => return ControlFlow::Break(None),
        }
        ControlFlow::Continue(())
    }
}

/// The reply to one authenticated command and the injection it asks for.
fn command(
    line: &str,
    inject_allowed: bool,
    status: &dyn Fn() -> Status,
) -> (String, Option<Injection>) {
    let kind = match auth::parse_command(line) {
        Command::Status => return (alloc::format!("{OK_PREFIX}{}", status()), None),
        Command::Unknown(other) => {
            return (
                alloc::format!("error unknown command '{other}' (status, inject KIND)"),
                None,
            )
        }
        Command::Inject(kind) => kind,
    };
    let injection = match kind {
        "panic" => Injection::Panic,
        "pagefault" => Injection::Fault(Fault::PageFault),
        "gp" => Injection::Fault(Fault::GeneralProtection),
        "ud" => Injection::Fault(Fault::InvalidOpcode),
        "stall" => Injection::Stall,
        "device-error" => Injection::DeviceError,
        other => {
            return (
                alloc::format!(
                    "error unknown inject kind '{other}' (panic, pagefault, gp, ud, stall, device-error)"
                ),
                None,
            )
        }
    };
    if !inject_allowed {
        return (auth::REFUSE_INJECT.into(), None);
    }
    (alloc::format!("ok injecting {kind}"), Some(injection))
}
