//! Connections over TLS: the switch at `NBD_OPT_STARTTLS`, and serving a connection through
//! its session (`nbd::tls`) for the rest of its life.
//!
//! Everything the server does with a connection is the same in clear and over TLS: it reads
//! and writes plaintext through a [`Stream`]; here that stream is a [`TlsStream`] over the
//! socket. What TLS adds is done around it: the session is pumped before (records in, the
//! handshake) and after (records out), a failed session sends its alert and closes, and a
//! closing connection sends close_notify and waits for its records to leave before the
//! socket is closed.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::{Conn, ConnState, Server, Stream};
use crate::nbd::tls::{Session, TlsSettings, TlsStream};

impl Server {
    /// Serves new connections with `settings` (connections already open keep theirs).
    pub fn set_tls(&mut self, settings: TlsSettings) {
        self.tls = settings;
    }

    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// Whether the connection on `slot` has switched to TLS.
    pub fn is_tls(&self, slot: usize) -> bool {
        self.conns
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.tls.is_some())
    }

    /// The connection's TLS session (tests, status).
    pub fn tls_session(&self, slot: usize) -> Option<&Session> {
        self.conns.get(slot)?.as_ref()?.tls.as_deref()
    }

    /// Serves `c` over its TLS session when it has one, else in clear; a STARTTLS
    /// acknowledged in clear goes on over TLS in the same call.
    pub(super) fn service_any(
        &mut self,
        slot: usize,
        c: &mut Conn,
        raw: &mut dyn Stream,
    ) -> ConnState {
        if c.tls.is_none() {
            let state = self.service_conn(slot, c, raw);
            if state == ConnState::Close || c.tls.is_none() {
                return state;
            }
        }
        let Some(mut session) = c.tls.take() else {
            return ConnState::Close;
        };
        let state = self.service_tls(slot, c, &mut session, raw);
        c.tls = Some(session);
        state
    }

    fn service_tls(
        &mut self,
        slot: usize,
        c: &mut Conn,
        session: &mut Session,
        raw: &mut dyn Stream,
    ) -> ConnState {
        session.pump(raw);
        if let Some(e) = session.failed() {
            // Its alert goes out first (the handshake or stall deadline bounds the wait).
            if session.has_output() {
                return ConnState::Open;
            }
            log::info!("nbd: closing connection {slot}: TLS: {e}");
            self.stats.closed_bad += 1;
            return ConnState::Close;
        }
        let state = self.service_conn(
            slot,
            c,
            &mut TlsStream {
                session: &mut *session,
                raw: &mut *raw,
            },
        );
        if state == ConnState::Close {
            session.close(raw);
            if session.has_output() {
                // Closing: come back until the last records (close_notify) are out.
                return ConnState::Open;
            }
            return ConnState::Close;
        }
        session.pump(raw);
        state
    }

    /// STARTTLS was acknowledged (the ack is the last of `out`): the replies still queued and
    /// the ack go out in clear, then a session; bytes already read from the client are the
    /// start of its TLS handshake. Err closes the connection.
    pub(super) fn start_tls(&mut self, c: &mut Conn, out: Vec<u8>) -> Result<(), &'static str> {
        let Some(config) = self.tls.config() else {
            return Err("STARTTLS acknowledged without a TLS configuration");
        };
        let mut prefix: Vec<u8> = c.out.drain(..).collect();
        prefix.extend_from_slice(&out);
        let early = core::mem::take(&mut c.stash);
        match Session::new(config, prefix, early) {
            Ok(s) => {
                c.tls = Some(Box::new(s));
                Ok(())
            }
            Err(e) => {
                log::warn!("nbd: TLS session: {e}");
                Err("TLS session could not start")
            }
        }
    }
}
