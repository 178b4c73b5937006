//! `nbd_handshake`: the fixed-newstyle handshake state machine
//! (`unikernel::nbd::handshake::Handshake::feed`) fed an arbitrary client byte stream, cut
//! into arbitrary pieces, with zero to three exports.
//!
//! Input: `[exports and TLS mode, cut seed, client bytes...]` (exports: the byte's value
//! mod 4; TLS mode: off, on, require for (byte / 4) mod 3, so inputs from before TLS run with
//! it off). After a STARTTLS the following bytes stand for what TLS would decrypt.
//!
//! Checked, besides no panic:
//! - `feed` never claims more bytes than it was given, and `Continue` always consumed some
//!   (otherwise the server's loop would spin);
//! - `NeedMore` never asks for more than the server buffers (`MAX_OPTION_DATA` + the 16-byte
//!   option header): a client must not be able to wedge its connection;
//! - every reply is a well-formed option reply (magic, option, type, length, data), except
//!   the `EXPORT_NAME` answer, which is 10 or 134 bytes and ends the handshake;
//! - transmission starts on an existing export, with `base:allocation` only when structured
//!   replies were negotiated; a finished handshake consumes nothing more;
//! - STARTTLS is acknowledged only when TLS is on or required, and only once; under
//!   `require`, before it, every reply is `NBD_REP_ERR_TLS_REQD` or answers STARTTLS or
//!   ABORT, and transmission never starts.

use tandem_formats::nbd_wire as wire;
use unikernel::nbd::handshake::{greeting, Handshake, Step, MAX_OPTIONS, MAX_OPTION_DATA};
use unikernel::nbd::tls::TlsMode;
use unikernel::nbd::ExportInfo;

use crate::{Input, Rng};

/// Up to three exports: a writable one, a read-only one (both the size of `nbd_server`'s
/// RAM disks), one with a long name.
pub fn exports(n: usize) -> Vec<ExportInfo> {
    let e = |name: &str, description: &str, size: u64, read_only: bool| ExportInfo {
        name: name.into(),
        description: description.into(),
        size,
        read_only,
        can_trim: true,
        can_write_zeroes: true,
        min_block: 512,
        preferred_block: 4096,
        max_payload: 32 << 20,
        disk_id: tandem_formats::nvlog::disk_id(name, size),
        allow: Default::default(),
    };
    [
        e("blk0", "ram", 256 << 10, false),
        e("ro", "", 256 << 10, true),
        e(
            "a-rather-long-export-name-for-the-list-reply",
            "described",
            u64::MAX,
            false,
        ),
    ]
    .into_iter()
    .take(n)
    .collect()
}

/// Checks that `out` is a sequence of complete option replies.
fn check_replies(mut out: &[u8]) {
    while !out.is_empty() {
        assert!(out.len() >= 20, "truncated option reply: {out:02x?}");
        assert_eq!(
            u64::from_be_bytes(out[..8].try_into().unwrap()),
            wire::REPLY_MAGIC,
            "bad reply magic"
        );
        let len = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
        assert!(out.len() >= 20 + len, "reply longer than its bytes");
        out = &out[20 + len..];
    }
}

/// Under `require` before STARTTLS: only refusals, and STARTTLS's and ABORT's answers.
fn check_in_clear(mut out: &[u8]) {
    while out.len() >= 20 {
        let (option, kind) = (wire::be32(&out[8..]), wire::be32(&out[12..]));
        assert!(
            kind == wire::rep::ERR_TLS_REQD
                || option == wire::opt::STARTTLS
                || option == wire::opt::ABORT,
            "option {option} answered {kind:#x} in clear under require"
        );
        out = &out[(20 + wire::be32(&out[16..]) as usize).min(out.len())..];
    }
    assert!(out.is_empty(), "sent in clear under require: {out:02x?}");
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let first = inp.u8();
    let exports = exports(usize::from(first % 4));
    let mode = [TlsMode::Off, TlsMode::On, TlsMode::Require][usize::from(first / 4 % 3)];
    let mut rng = Rng::new(u64::from(inp.u8()));
    let mut stream = inp.rest();

    let mut hello = Vec::new();
    greeting(&mut hello);
    assert_eq!(hello.len(), 18);

    let mut hs = Handshake::new().with_tls(mode);
    let mut stash: Vec<u8> = Vec::new();
    let mut units = 0u32;
    let mut tls = false;
    loop {
        // The network delivers a piece, never more than the server makes room for.
        let room = (MAX_OPTION_DATA + 16).saturating_sub(stash.len());
        let n = rng.piece().min(room).min(stream.len());
        stash.extend_from_slice(&stream[..n]);
        stream = &stream[n..];
        let mut out = Vec::new();
        loop {
            let before = out.len();
            let (used, step) = hs.feed(&stash, &exports, &mut out);
            assert!(used <= stash.len(), "consumed {used} of {}", stash.len());
            if mode == TlsMode::Require && !tls {
                check_in_clear(&out[before..]);
            }
            stash.drain(..used);
            units += 1;
            assert!(units <= 4 * MAX_OPTIONS + data.len() as u32 + 8);
            match step {
                Step::Continue => {
                    assert!(used > 0, "Continue without consuming anything");
                    check_replies(&out[before..]);
                }
                Step::NeedMore => {
                    assert!(
                        stash.len() < MAX_OPTION_DATA + 16,
                        "asks for more than the server buffers ({} bytes held)",
                        stash.len()
                    );
                    check_replies(&out[before..]);
                    break;
                }
                Step::StartTls => {
                    check_replies(&out[before..]);
                    assert_ne!(mode, TlsMode::Off, "STARTTLS acknowledged with TLS off");
                    assert!(!tls, "STARTTLS acknowledged twice");
                    let ack = &out[out.len() - 20..];
                    assert_eq!(wire::be32(&ack[8..]), wire::opt::STARTTLS);
                    assert_eq!(wire::be32(&ack[12..]), wire::rep::ACK);
                    tls = true;
                }
                Step::Close(_) => {
                    check_replies(&out[before..]);
                    let (used, step) = hs.feed(&stash, &exports, &mut out);
                    assert_eq!((used, matches!(step, Step::Close(_))), (0, true));
                    return;
                }
                Step::Transmission(neg) => {
                    assert!(tls || mode != TlsMode::Require, "served in clear");
                    assert!(neg.export < exports.len(), "no such export");
                    assert!(!neg.base_allocation || neg.structured);
                    let mine = &out[before..];
                    if !mine.starts_with(&wire::REPLY_MAGIC.to_be_bytes()) {
                        // EXPORT_NAME: size, flags, [124 zeroes].
                        assert!(
                            mine.len() == 10 || mine.len() == 134,
                            "{} bytes",
                            mine.len()
                        );
                        let size = u64::from_be_bytes(mine[..8].try_into().unwrap());
                        assert_eq!(size, exports[neg.export].size);
                    } else {
                        check_replies(mine);
                    }
                    let (used, step) = hs.feed(&stash, &exports, &mut out);
                    assert_eq!((used, matches!(step, Step::Close(_))), (0, true));
                    return;
                }
            }
        }
        if stream.is_empty() {
            return;
        }
    }
}
