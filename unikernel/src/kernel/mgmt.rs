//! The management port: a line-based TCP control channel (port 10810 by default) through which
//! tests and operators inject errors into a running guest and read its state.
//!
//! Commands: `status`; `inject panic|pagefault|gp|ud|stall|device-error`. Each gets one reply
//! line (`ok ...` or `error ...`); the `status` reply's fields are defined in
//! `unikernel::mgmt_status`, which the host parses with. An injected error is acted on by the service loop right
//! after the reply is queued.

use alloc::vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use unikernel::cmdline::Fault;
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

struct Slot {
    handle: SocketHandle,
    line: [u8; 128],
    len: usize,
}

pub struct Mgmt {
    slots: [Slot; SLOTS],
    port: u16,
}

impl Mgmt {
    pub fn new(sockets: &mut SocketSet<'static>, port: u16) -> Self {
        let slots = core::array::from_fn(|_| {
            let rx = tcp::SocketBuffer::new(vec![0; 1024]);
            let tx = tcp::SocketBuffer::new(vec![0; 4096]);
            let mut socket = tcp::Socket::new(rx, tx);
            let _ = socket.listen(port);
            Slot {
                handle: sockets.add(socket),
                line: [0; 128],
                len: 0,
            }
        });
        Self { slots, port }
    }

    /// Serves the port; returns an injection to carry out, if one was asked for.
    pub fn poll(
        &mut self,
        sockets: &mut SocketSet<'static>,
        status: &dyn Fn() -> Status,
    ) -> Option<Injection> {
        let port = self.port;
        self.slots
            .iter_mut()
            .find_map(|slot| slot.poll(sockets, port, status))
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

impl Slot {
    fn poll(
        &mut self,
        sockets: &mut SocketSet<'static>,
        port: u16,
        status: &dyn Fn() -> Status,
    ) -> Option<Injection> {
        let s = sockets.get_mut::<tcp::Socket>(self.handle);
        if !s.is_open() {
            self.len = 0;
            let _ = s.listen(port);
            return None;
        }
        if s.state() == tcp::State::CloseWait && s.send_queue() == 0 {
            // The client is done: close our side too, so the slot listens again.
            s.close();
            return None;
        }
        let mut byte = [0u8; 1];
        while s.can_recv() {
            if s.recv_slice(&mut byte).unwrap_or(0) == 0 {
                break;
            }
            if byte[0] != b'\n' {
                if self.len < self.line.len() {
                    self.line[self.len] = byte[0];
                    self.len += 1;
                }
                continue;
            }
            let cmd = core::str::from_utf8(&self.line[..self.len])
                .unwrap_or("")
                .trim();
            self.len = 0;
            let (reply, inject) = match cmd {
                "status" => (alloc::format!("{OK_PREFIX}{}\n", status()), None),
                "inject panic" => (
                    alloc::string::String::from("ok injecting panic\n"),
                    Some(Injection::Panic),
                ),
                "inject pagefault" => (
                    "ok injecting pagefault\n".into(),
                    Some(Injection::Fault(Fault::PageFault)),
                ),
                "inject gp" => (
                    "ok injecting gp\n".into(),
                    Some(Injection::Fault(Fault::GeneralProtection)),
                ),
                "inject ud" => (
                    "ok injecting ud\n".into(),
                    Some(Injection::Fault(Fault::InvalidOpcode)),
                ),
                "inject stall" => ("ok injecting stall\n".into(), Some(Injection::Stall)),
                "inject device-error" => (
                    "ok injecting device-error\n".into(),
                    Some(Injection::DeviceError),
                ),
                other => (
                    alloc::format!("error unknown command '{other}' (status, inject KIND)\n"),
                    None,
                ),
            };
            let _ = s.send_slice(reply.as_bytes());
            if inject.is_some() {
                return inject;
            }
        }
        None
    }
}
