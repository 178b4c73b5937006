//! The fixed-newstyle handshake, as an incremental state machine.
//!
//! The server sends [`greeting`]; then [`Handshake::feed`] takes whatever bytes have arrived,
//! consumes one complete unit (client flags, or one option) at a time, appends replies to
//! `out`, and says whether to go on, start TLS, enter transmission, or close this connection.
//!
//! TLS ([`TlsMode`]): `NBD_OPT_STARTTLS` is acknowledged with [`Step::StartTls`], after which
//! the caller carries every further byte over TLS and the haggling goes on from a clean slate
//! (the protocol forbids keeping options negotiated in clear). Under `require`, nothing but
//! STARTTLS and ABORT is answered in clear: no export name, size or list leaves the server
//! before TLS.

use alloc::vec::Vec;

use super::tls::TlsMode;
use super::wire::{self, be16, be32, be64, info, opt, rep};
use super::ExportInfo;

/// Largest option payload buffered. Longer options are answered with `NBD_REP_ERR_TOO_BIG`
/// and their bytes skipped as they arrive, never stored.
pub const MAX_OPTION_DATA: usize = 8192;
/// Options accepted in one handshake before the connection is closed.
pub const MAX_OPTIONS: u32 = 1024;

/// The server's opening bytes.
pub fn greeting(out: &mut Vec<u8>) {
    out.extend_from_slice(&wire::NBDMAGIC.to_be_bytes());
    out.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_be_bytes());
}

/// What the handshake settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Index into the export table.
    pub export: usize,
    pub structured: bool,
    /// `base:allocation` was selected with `NBD_OPT_SET_META_CONTEXT`.
    pub base_allocation: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not enough bytes for the next unit.
    NeedMore,
    /// A unit was handled; call again.
    Continue,
    /// STARTTLS was acknowledged (the ack is in `out`): every later byte, both ways, goes
    /// over TLS.
    StartTls,
    /// Enter the transmission phase.
    Transmission(Negotiated),
    /// Close this connection (the reason is for the log).
    Close(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ClientFlags,
    Options,
    Skip { left: u64 },
    Done,
}

#[derive(Debug)]
pub struct Handshake {
    state: State,
    no_zeroes: bool,
    structured: bool,
    base_allocation: bool,
    options: u32,
    /// The client's IPv4 address (`None`: unknown), for the exports' allow-lists.
    peer: Option<[u8; 4]>,
    tls: TlsMode,
    /// STARTTLS was acknowledged: options now arrive over TLS.
    in_tls: bool,
}

impl Default for Handshake {
    fn default() -> Self {
        Self {
            state: State::ClientFlags,
            no_zeroes: false,
            structured: false,
            base_allocation: false,
            options: 0,
            peer: None,
            tls: TlsMode::Off,
            in_tls: false,
        }
    }
}

fn reply(out: &mut Vec<u8>, option: u32, kind: u32, data: &[u8]) {
    out.extend_from_slice(&wire::REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Reads a length-prefixed string (`u32` length, bytes) at `*at`, bounded by `data`.
fn take_str<'a>(data: &'a [u8], at: &mut usize) -> Option<&'a str> {
    let len = be32(data.get(*at..*at + 4)?) as usize;
    let s = data.get(*at + 4..(*at + 4).checked_add(len)?)?;
    *at += 4 + len;
    core::str::from_utf8(s).ok()
}

/// Why an export name was not found for this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// No export by that name (or no exports at all for the default name).
    Unknown,
    /// The export exists but its allow-list does not admit this client.
    Denied,
}

/// The one reply for a name this client may not use; an unknown name gets it too whenever
/// some export is hidden from this client, so that the reply does not tell a hidden export's
/// name from a name that does not exist.
const POLICY_MESSAGE: &[u8] = b"no export by that name for this client";
const TLS_REQUIRED: &[u8] = b"TLS required: send NBD_OPT_STARTTLS first";

impl Handshake {
    /// A handshake with a client whose address is unknown: it sees only open exports.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handshake with the client at `peer` (`None`: unknown), which sees and may use only
    /// the exports whose allow-lists admit it.
    pub fn for_peer(peer: Option<[u8; 4]>) -> Self {
        Self {
            peer,
            ..Self::default()
        }
    }

    /// The same handshake, offering TLS as `mode` says.
    pub fn with_tls(self, mode: TlsMode) -> Self {
        Self { tls: mode, ..self }
    }

    /// Whether STARTTLS has been acknowledged.
    pub fn in_tls(&self) -> bool {
        self.in_tls
    }

    /// Under `require`, before STARTTLS: options other than STARTTLS and ABORT are refused.
    fn tls_required(&self) -> bool {
        self.tls == TlsMode::Require && !self.in_tls
    }

    /// Handles at most one unit from the front of `input`; returns (bytes consumed, step).
    pub fn feed(
        &mut self,
        input: &[u8],
        exports: &[ExportInfo],
        out: &mut Vec<u8>,
    ) -> (usize, Step) {
        match self.state {
            State::Done => (0, Step::Close("handshake already finished")),
            State::ClientFlags => {
                let Some(b) = input.get(..4) else {
                    return (0, Step::NeedMore);
                };
                let flags = be32(b);
                if flags & wire::FLAG_C_FIXED_NEWSTYLE == 0 {
                    return (4, self.close("client does not speak fixed newstyle"));
                }
                if flags & !(wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES) != 0 {
                    return (4, self.close("unknown client flags"));
                }
                self.no_zeroes = flags & wire::FLAG_C_NO_ZEROES != 0;
                self.state = State::Options;
                (4, Step::Continue)
            }
            State::Skip { left } => {
                let n = (input.len() as u64).min(left);
                let left = left - n;
                if left == 0 {
                    self.state = State::Options;
                } else {
                    self.state = State::Skip { left };
                }
                (
                    n as usize,
                    if n == 0 {
                        Step::NeedMore
                    } else {
                        Step::Continue
                    },
                )
            }
            State::Options => {
                let Some(h) = input.get(..16) else {
                    return (0, Step::NeedMore);
                };
                if be64(h) != wire::IHAVEOPT {
                    return (16, self.close("bad option magic"));
                }
                let (option, len) = (be32(&h[8..]), be32(&h[12..]));
                self.options += 1;
                if self.options > MAX_OPTIONS {
                    return (16, self.close("too many options"));
                }
                if len as usize > MAX_OPTION_DATA {
                    if option == opt::EXPORT_NAME {
                        return (16, self.close("export name too long"));
                    }
                    if self.tls_required() && option != opt::ABORT {
                        reply(out, option, rep::ERR_TLS_REQD, TLS_REQUIRED);
                    } else {
                        reply(out, option, rep::ERR_TOO_BIG, b"option too large");
                    }
                    self.state = State::Skip {
                        left: u64::from(len),
                    };
                    return (16, Step::Continue);
                }
                let Some(data) = input.get(16..16 + len as usize) else {
                    return (0, Step::NeedMore);
                };
                let step = self.option(option, data, exports, out);
                (16 + len as usize, step)
            }
        }
    }

    fn close(&mut self, why: &'static str) -> Step {
        self.state = State::Done;
        Step::Close(why)
    }

    /// The export `name` names for this client (the empty name: the first export).
    fn find(&self, exports: &[ExportInfo], name: &str) -> Result<usize, Refused> {
        let i = if name.is_empty() {
            (!exports.is_empty()).then_some(0)
        } else {
            exports.iter().position(|e| e.name == name)
        };
        match i {
            None => Err(Refused::Unknown),
            Some(i) if !exports[i].admits(self.peer) => Err(Refused::Denied),
            Some(i) => Ok(i),
        }
    }

    /// Answers an option naming an export this client may not use: `NBD_REP_ERR_POLICY` for
    /// a denied export, and for an unknown name when some export is hidden from this client;
    /// `NBD_REP_ERR_UNKNOWN` for an unknown name otherwise.
    fn refuse(&self, out: &mut Vec<u8>, option: u32, exports: &[ExportInfo], why: Refused) {
        if why == Refused::Denied || exports.iter().any(|e| !e.admits(self.peer)) {
            reply(out, option, rep::ERR_POLICY, POLICY_MESSAGE);
        } else {
            reply(out, option, rep::ERR_UNKNOWN, b"no such export");
        }
    }

    fn option(
        &mut self,
        option: u32,
        data: &[u8],
        exports: &[ExportInfo],
        out: &mut Vec<u8>,
    ) -> Step {
        if self.tls_required() && !matches!(option, opt::STARTTLS | opt::ABORT) {
            if option == opt::EXPORT_NAME {
                // No error reply exists for EXPORT_NAME: the protocol says close.
                return self.close("export asked for before TLS, which is required");
            }
            reply(out, option, rep::ERR_TLS_REQD, TLS_REQUIRED);
            return Step::Continue;
        }
        match option {
            opt::STARTTLS => self.starttls(data, out),
            opt::EXPORT_NAME => {
                let name = core::str::from_utf8(data).unwrap_or("\u{0}");
                let i = match self.find(exports, name) {
                    Ok(i) => i,
                    // The protocol has no error reply for EXPORT_NAME: close.
                    Err(Refused::Unknown) => return self.close("unknown export"),
                    Err(Refused::Denied) => return self.close("export denied by its allow-list"),
                };
                out.extend_from_slice(&exports[i].size.to_be_bytes());
                out.extend_from_slice(&exports[i].transmission_flags().to_be_bytes());
                if !self.no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                self.enter(i)
            }
            opt::ABORT => {
                reply(out, option, rep::ACK, &[]);
                self.close("client aborted")
            }
            opt::LIST => {
                if !data.is_empty() {
                    reply(out, option, rep::ERR_INVALID, b"LIST takes no data");
                    return Step::Continue;
                }
                for e in exports.iter().filter(|e| e.admits(self.peer)) {
                    let mut d = Vec::with_capacity(4 + e.name.len());
                    d.extend_from_slice(&(e.name.len() as u32).to_be_bytes());
                    d.extend_from_slice(e.name.as_bytes());
                    reply(out, option, rep::SERVER, &d);
                }
                reply(out, option, rep::ACK, &[]);
                Step::Continue
            }
            opt::INFO | opt::GO => self.info_or_go(option, data, exports, out),
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply(
                        out,
                        option,
                        rep::ERR_INVALID,
                        b"STRUCTURED_REPLY takes no data",
                    );
                } else {
                    self.structured = true;
                    reply(out, option, rep::ACK, &[]);
                }
                Step::Continue
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                self.meta_context(option, data, exports, out);
                Step::Continue
            }
            _ => {
                reply(out, option, rep::ERR_UNSUP, b"option not supported");
                Step::Continue
            }
        }
    }

    fn starttls(&mut self, data: &[u8], out: &mut Vec<u8>) -> Step {
        let option = opt::STARTTLS;
        if self.tls == TlsMode::Off {
            reply(out, option, rep::ERR_UNSUP, b"option not supported");
        } else if self.in_tls {
            reply(out, option, rep::ERR_INVALID, b"TLS already negotiated");
        } else if !data.is_empty() {
            reply(out, option, rep::ERR_INVALID, b"STARTTLS takes no data");
        } else {
            reply(out, option, rep::ACK, &[]);
            self.in_tls = true;
            // Nothing negotiated in clear survives into TLS (the protocol's rule).
            self.structured = false;
            self.base_allocation = false;
            return Step::StartTls;
        }
        Step::Continue
    }

    fn enter(&mut self, export: usize) -> Step {
        self.state = State::Done;
        Step::Transmission(Negotiated {
            export,
            structured: self.structured,
            base_allocation: self.base_allocation && self.structured,
        })
    }

    fn info_or_go(
        &mut self,
        option: u32,
        data: &[u8],
        exports: &[ExportInfo],
        out: &mut Vec<u8>,
    ) -> Step {
        let mut at = 0;
        let parsed = take_str(data, &mut at).and_then(|name| {
            let n = usize::from(be16(data.get(at..at + 2)?));
            let reqs = data.get(at + 2..at + 2 + 2 * n)?;
            (at + 2 + 2 * n == data.len()).then_some((name, reqs))
        });
        let Some((name, reqs)) = parsed else {
            reply(out, option, rep::ERR_INVALID, b"malformed INFO/GO request");
            return Step::Continue;
        };
        let i = match self.find(exports, name) {
            Ok(i) => i,
            Err(why) => {
                self.refuse(out, option, exports, why);
                return Step::Continue;
            }
        };
        let e = &exports[i];
        let mut d = Vec::with_capacity(12);
        d.extend_from_slice(&info::EXPORT.to_be_bytes());
        d.extend_from_slice(&e.size.to_be_bytes());
        d.extend_from_slice(&e.transmission_flags().to_be_bytes());
        reply(out, option, rep::INFO, &d);
        let asked = |t: u16| reqs.chunks(2).any(|c| be16(c) == t);
        if asked(info::NAME) {
            let mut d = Vec::from(info::NAME.to_be_bytes());
            d.extend_from_slice(e.name.as_bytes());
            reply(out, option, rep::INFO, &d);
        }
        if asked(info::DESCRIPTION) && !e.description.is_empty() {
            let mut d = Vec::from(info::DESCRIPTION.to_be_bytes());
            d.extend_from_slice(e.description.as_bytes());
            reply(out, option, rep::INFO, &d);
        }
        let mut d = Vec::from(info::BLOCK_SIZE.to_be_bytes());
        for v in [e.min_block, e.preferred_block, e.max_payload] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        reply(out, option, rep::INFO, &d);
        reply(out, option, rep::ACK, &[]);
        if option == opt::GO {
            self.enter(i)
        } else {
            Step::Continue
        }
    }

    fn meta_context(
        &mut self,
        option: u32,
        data: &[u8],
        exports: &[ExportInfo],
        out: &mut Vec<u8>,
    ) {
        if !self.structured {
            reply(
                out,
                option,
                rep::ERR_INVALID,
                b"negotiate structured replies first",
            );
            return;
        }
        let mut at = 0;
        let Some(name) = take_str(data, &mut at) else {
            return reply(
                out,
                option,
                rep::ERR_INVALID,
                b"malformed meta context request",
            );
        };
        let Some(n) = data.get(at..at + 4).map(be32) else {
            return reply(
                out,
                option,
                rep::ERR_INVALID,
                b"malformed meta context request",
            );
        };
        at += 4;
        let mut queries = Vec::new();
        for _ in 0..n {
            match take_str(data, &mut at) {
                Some(q) => queries.push(q),
                None => {
                    return reply(
                        out,
                        option,
                        rep::ERR_INVALID,
                        b"malformed meta context query",
                    )
                }
            }
        }
        if at != data.len() {
            return reply(
                out,
                option,
                rep::ERR_INVALID,
                b"trailing bytes in meta context request",
            );
        }
        if let Err(why) = self.find(exports, name) {
            return self.refuse(out, option, exports, why);
        }
        let list = option == opt::LIST_META_CONTEXT;
        let selected = queries.contains(&wire::BASE_ALLOCATION)
            || (list && (queries.is_empty() || queries.contains(&"base:")));
        if option == opt::SET_META_CONTEXT {
            self.base_allocation = selected;
        }
        if selected {
            let mut d = Vec::from(wire::BASE_ALLOCATION_ID.to_be_bytes());
            d.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
            reply(out, option, rep::META_CONTEXT, &d);
        }
        reply(out, option, rep::ACK, &[]);
    }
}
