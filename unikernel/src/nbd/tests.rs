//! Byte-level tests of the handshake and of request checking, including every error path.

use alloc::string::ToString;
use alloc::vec::Vec;

use super::handshake::{greeting, Handshake, Negotiated, Step, MAX_OPTIONS, MAX_OPTION_DATA};
use super::transmission::*;
use super::wire::{self, cflag, cmd, errno, flags, info, opt, rep};
use super::ExportInfo;

fn export(name: &str, size: u64, read_only: bool) -> ExportInfo {
    ExportInfo {
        name: name.to_string(),
        description: "test disk".to_string(),
        size,
        read_only,
        can_trim: true,
        can_write_zeroes: true,
        min_block: 512,
        preferred_block: 4096,
        max_payload: 32 << 20,
        disk_id: crate::nvlog::format::disk_id(name, 1),
        allow: Default::default(),
    }
}

fn exports() -> Vec<ExportInfo> {
    alloc::vec![export("disk0", 1 << 30, false), export("ro", 1 << 20, true)]
}

fn option(code: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// Feeds everything in `input` (one unit per call, as a server loop would); returns the
/// replies and the last non-Continue step.
fn drive(hs: &mut Handshake, input: &[u8]) -> (Vec<u8>, Step) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let (n, step) = hs.feed(&input[at..], &exports(), &mut out);
        at += n;
        match step {
            Step::Continue => continue,
            other => return (out, other),
        }
    }
}

/// Splits option replies into (option, type, data).
fn replies(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while !b.is_empty() {
        assert_eq!(wire::be64(b), wire::REPLY_MAGIC);
        let len = wire::be32(&b[16..]) as usize;
        v.push((
            wire::be32(&b[8..]),
            wire::be32(&b[12..]),
            b[20..20 + len].to_vec(),
        ));
        b = &b[20 + len..];
    }
    v
}

fn started(client_flags: u32) -> Handshake {
    let mut hs = Handshake::new();
    let (out, step) = drive(&mut hs, &client_flags.to_be_bytes());
    assert!(out.is_empty());
    assert_eq!(step, Step::NeedMore);
    hs
}

#[test]
fn greeting_bytes() {
    let mut g = Vec::new();
    greeting(&mut g);
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(&g[16..], &[0, 3]);
}

#[test]
fn client_flags_are_checked() {
    for bad in [0u32, 4, 1 | 8] {
        let mut hs = Handshake::new();
        assert!(
            matches!(drive(&mut hs, &bad.to_be_bytes()).1, Step::Close(_)),
            "{bad}"
        );
    }
    let mut hs = Handshake::new();
    assert_eq!(
        hs.feed(&[0, 0, 0], &exports(), &mut Vec::new()),
        (0, Step::NeedMore)
    );
}

#[test]
fn export_name_with_and_without_zeroes() {
    let mut hs = started(3);
    let (out, step) = drive(&mut hs, &option(opt::EXPORT_NAME, b"disk0"));
    assert_eq!(
        step,
        Step::Transmission(Negotiated {
            export: 0,
            structured: false,
            base_allocation: false
        })
    );
    assert_eq!(out.len(), 10);
    assert_eq!(wire::be64(&out), 1 << 30);
    let f = wire::be16(&out[8..]);
    assert_eq!(f & flags::READ_ONLY, 0);
    assert_ne!(f & flags::SEND_TRIM, 0);

    let mut hs = started(1);
    let (out, _) = drive(&mut hs, &option(opt::EXPORT_NAME, b"ro"));
    assert_eq!(out.len(), 10 + 124);
    assert_ne!(wire::be16(&out[8..]) & flags::READ_ONLY, 0);

    let mut hs = started(3);
    assert!(matches!(
        drive(&mut hs, &option(opt::EXPORT_NAME, b"nope")).1,
        Step::Close(_)
    ));
}

#[test]
fn list_info_go() {
    let mut hs = started(3);
    let mut input = option(opt::LIST, &[]);
    input.extend(option(opt::LIST, b"x"));
    input.extend(option(opt::INFO, &go_data("missing", &[])));
    input.extend(option(
        opt::GO,
        &go_data("ro", &[info::NAME, info::DESCRIPTION]),
    ));
    let (out, step) = drive(&mut hs, &input);
    assert_eq!(
        step,
        Step::Transmission(Negotiated {
            export: 1,
            structured: false,
            base_allocation: false
        })
    );
    let r = replies(&out);
    assert_eq!(
        r[0],
        (
            opt::LIST,
            rep::SERVER,
            [&5u32.to_be_bytes()[..], b"disk0"].concat()
        )
    );
    assert_eq!(r[1].1, rep::SERVER);
    assert_eq!(r[2], (opt::LIST, rep::ACK, Vec::new()));
    assert_eq!(r[3].1, rep::ERR_INVALID);
    assert_eq!(r[4].1, rep::ERR_UNKNOWN);
    let go: Vec<_> = r[5..].iter().collect();
    assert!(go.iter().all(|x| x.0 == opt::GO));
    assert_eq!(wire::be16(&go[0].2), info::EXPORT);
    assert_eq!(wire::be64(&go[0].2[2..]), 1 << 20);
    assert_eq!(go[1].2, [&info::NAME.to_be_bytes()[..], b"ro"].concat());
    assert_eq!(
        go[2].2,
        [&info::DESCRIPTION.to_be_bytes()[..], b"test disk"].concat()
    );
    assert_eq!(wire::be16(&go[3].2), info::BLOCK_SIZE);
    assert_eq!(wire::be32(&go[3].2[2..]), 512);
    assert_eq!(wire::be32(&go[3].2[10..]), 32 << 20);
    assert_eq!(go[4].1, rep::ACK);
}

#[test]
fn empty_name_is_the_default_export() {
    let mut hs = started(3);
    let (_, step) = drive(&mut hs, &option(opt::GO, &go_data("", &[])));
    assert!(matches!(
        step,
        Step::Transmission(Negotiated { export: 0, .. })
    ));
}

#[test]
fn malformed_and_unknown_options_keep_the_connection() {
    let mut hs = started(3);
    let mut bad_go = go_data("disk0", &[1, 2]);
    bad_go.pop(); // truncated info list
    let mut lying = Vec::new();
    lying.extend_from_slice(&1000u32.to_be_bytes()); // name longer than the option
    lying.extend_from_slice(b"disk0");
    let mut input = option(opt::GO, &bad_go);
    input.extend(option(opt::INFO, &lying));
    input.extend(option(0x99, b"whatever"));
    input.extend(option(opt::STARTTLS, &[]));
    input.extend(option(opt::STRUCTURED_REPLY, b"x"));
    input.extend(option(opt::SET_META_CONTEXT, b"")); // before structured replies
    let (out, step) = drive(&mut hs, &input);
    assert_eq!(step, Step::NeedMore);
    let kinds: Vec<u32> = replies(&out).iter().map(|r| r.1).collect();
    assert_eq!(
        kinds,
        [
            rep::ERR_INVALID,
            rep::ERR_INVALID,
            rep::ERR_UNSUP,
            rep::ERR_UNSUP,
            rep::ERR_INVALID,
            rep::ERR_INVALID
        ]
    );
}

#[test]
fn oversized_option_is_skipped_not_buffered() {
    let mut hs = started(3);
    let mut out = Vec::new();
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    hdr.extend_from_slice(&opt::LIST.to_be_bytes());
    hdr.extend_from_slice(&(1u32 << 30).to_be_bytes());
    assert_eq!(hs.feed(&hdr, &exports(), &mut out), (16, Step::Continue));
    assert_eq!(replies(&out)[0].1, rep::ERR_TOO_BIG);
    // The announced gigabyte arrives in pieces and is consumed without being kept.
    let piece = alloc::vec![0xee; MAX_OPTION_DATA];
    let mut left = 1u64 << 30;
    while left > 0 {
        let n = (piece.len() as u64).min(left) as usize;
        assert_eq!(hs.feed(&piece[..n], &exports(), &mut out).0, n);
        left -= n as u64;
    }
    out.clear();
    let (out, step) = drive(&mut hs, &option(opt::GO, &go_data("disk0", &[])));
    assert!(matches!(step, Step::Transmission(_)), "{out:?}");

    let mut hs = started(3);
    let mut big = Vec::new();
    big.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    big.extend_from_slice(&opt::EXPORT_NAME.to_be_bytes());
    big.extend_from_slice(&(MAX_OPTION_DATA as u32 + 1).to_be_bytes());
    assert!(matches!(drive(&mut hs, &big).1, Step::Close(_)));
}

#[test]
fn garbage_closes() {
    let mut hs = started(3);
    assert!(matches!(
        drive(&mut hs, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").1,
        Step::Close(_)
    ));
    let mut hs = started(3);
    let mut input = Vec::new();
    for _ in 0..=MAX_OPTIONS {
        input.extend(option(opt::LIST, &[]));
    }
    assert_eq!(drive(&mut hs, &input).1, Step::Close("too many options"));
    let mut hs = started(3);
    let (out, step) = drive(&mut hs, &option(opt::ABORT, &[]));
    assert_eq!(step, Step::Close("client aborted"));
    assert_eq!(replies(&out)[0].1, rep::ACK);
}

#[test]
fn structured_replies_and_base_allocation() {
    let mut hs = started(3);
    let mut meta = Vec::new();
    meta.extend_from_slice(&5u32.to_be_bytes());
    meta.extend_from_slice(b"disk0");
    meta.extend_from_slice(&2u32.to_be_bytes());
    for q in ["qemu:dirty-bitmap:x", wire::BASE_ALLOCATION] {
        meta.extend_from_slice(&(q.len() as u32).to_be_bytes());
        meta.extend_from_slice(q.as_bytes());
    }
    let mut input = option(opt::STRUCTURED_REPLY, &[]);
    input.extend(option(opt::SET_META_CONTEXT, &meta));
    input.extend(option(opt::GO, &go_data("disk0", &[])));
    let (out, step) = drive(&mut hs, &input);
    assert_eq!(
        step,
        Step::Transmission(Negotiated {
            export: 0,
            structured: true,
            base_allocation: true
        })
    );
    let r = replies(&out);
    assert_eq!(r[0].1, rep::ACK);
    assert_eq!(r[1].1, rep::META_CONTEXT);
    assert_eq!(wire::be32(&r[1].2), wire::BASE_ALLOCATION_ID);
    assert_eq!(&r[1].2[4..], wire::BASE_ALLOCATION.as_bytes());
    assert_eq!(r[2].1, rep::ACK);
}

// ---- transmission ----

fn header(kind: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
    RequestHeader {
        flags,
        kind,
        cookie: 0xfeed,
        offset,
        length,
    }
}

const NEG: Negotiated = Negotiated {
    export: 0,
    structured: false,
    base_allocation: false,
};
const NEG_SR: Negotiated = Negotiated {
    export: 0,
    structured: true,
    base_allocation: true,
};

#[test]
fn parses_headers() {
    let mut b = Vec::new();
    b.extend_from_slice(&wire::REQUEST_MAGIC.to_be_bytes());
    b.extend_from_slice(&cflag::FUA.to_be_bytes());
    b.extend_from_slice(&cmd::WRITE.to_be_bytes());
    b.extend_from_slice(&7u64.to_be_bytes());
    b.extend_from_slice(&4096u64.to_be_bytes());
    b.extend_from_slice(&512u32.to_be_bytes());
    assert_eq!(parse_header(&b[..27]), Parsed::Incomplete);
    let Parsed::Header(h) = parse_header(&b) else {
        panic!()
    };
    assert_eq!(
        h,
        RequestHeader {
            flags: cflag::FUA,
            kind: cmd::WRITE,
            cookie: 7,
            offset: 4096,
            length: 512
        }
    );
    assert_eq!(h.payload_len(), 512);
    b[0] = 0;
    assert!(matches!(parse_header(&b), Parsed::BadMagic(_)));
}

#[test]
fn checks_every_error_path() {
    let e = export("disk0", 1 << 20, false);
    let ro = export("ro", 1 << 20, true);
    let ok = |h: RequestHeader, ex: &ExportInfo, n: Negotiated| h.check(ex, &n);
    assert_eq!(
        ok(header(cmd::READ, 0, 0, 4096), &e, NEG).unwrap().cmd,
        Command::Read
    );
    assert!(
        ok(header(cmd::WRITE, cflag::FUA, 0, 4096), &e, NEG)
            .unwrap()
            .fua
    );
    let cases: &[(RequestHeader, &ExportInfo, Negotiated, u32)] = &[
        (header(42, 0, 0, 512), &e, NEG, errno::EINVAL), // unknown command
        (header(cmd::READ, 1 << 9, 0, 512), &e, NEG, errno::EINVAL), // unknown flag
        (header(cmd::READ, cflag::DF, 0, 512), &e, NEG, errno::EINVAL), // DF without structured
        (
            header(cmd::WRITE, cflag::NO_HOLE, 0, 512),
            &e,
            NEG,
            errno::EINVAL,
        ), // NO_HOLE on write
        (
            header(cmd::READ, cflag::REQ_ONE, 0, 512),
            &e,
            NEG,
            errno::EINVAL,
        ), // REQ_ONE on read
        (header(cmd::BLOCK_STATUS, 0, 0, 512), &e, NEG, errno::EINVAL), // no meta context
        (header(cmd::FLUSH, 0, 512, 0), &e, NEG, errno::EINVAL), // flush with range
        (header(cmd::WRITE, 0, 0, 512), &ro, NEG, errno::EPERM), // read-only
        (header(cmd::TRIM, 0, 0, 512), &ro, NEG, errno::EPERM),
        (header(cmd::WRITE_ZEROES, 0, 0, 512), &ro, NEG, errno::EPERM),
        (header(cmd::READ, 0, 0, 0), &e, NEG, errno::EINVAL), // zero length
        (
            header(cmd::READ, 0, 0, (32 << 20) + 512),
            &e,
            NEG,
            errno::EINVAL,
        ), // over max payload
        (header(cmd::WRITE, 0, 0, u32::MAX), &e, NEG, errno::EINVAL),
        (header(cmd::READ, 0, 100, 512), &e, NEG, errno::EINVAL), // misaligned offset
        (header(cmd::READ, 0, 0, 100), &e, NEG, errno::EINVAL),   // misaligned length
        (header(cmd::READ, 0, 1 << 20, 512), &e, NEG, errno::EINVAL), // past the end
        (
            header(cmd::WRITE, 0, (1 << 20) - 512, 1024),
            &e,
            NEG,
            errno::ENOSPC,
        ), // write past the end
        (
            header(cmd::TRIM, 0, u64::MAX - 511, 512),
            &e,
            NEG,
            errno::ENOSPC,
        ), // offset overflow
        (
            header(cmd::CACHE, 0, u64::MAX - 511, 1024),
            &e,
            NEG,
            errno::EINVAL,
        ),
    ];
    for (i, (h, ex, n, want)) in cases.iter().enumerate() {
        assert_eq!(h.check(ex, n), Err(*want), "case {i}: {h:?}");
    }
    // A refused write still has its payload on the wire.
    assert_eq!(
        header(cmd::WRITE, 0, 0, u32::MAX).payload_len(),
        u64::from(u32::MAX)
    );
    assert_eq!(header(cmd::READ, 0, 0, 512).payload_len(), 0);
    // What structured replies and base:allocation allow.
    assert!(
        ok(header(cmd::READ, cflag::DF, 0, 512), &e, NEG_SR)
            .unwrap()
            .df
    );
    assert!(
        ok(
            header(cmd::BLOCK_STATUS, cflag::REQ_ONE, 0, 1 << 20),
            &e,
            NEG_SR
        )
        .unwrap()
        .req_one
    );
    assert_eq!(
        ok(header(cmd::DISC, 0, 0, 0), &e, NEG).unwrap().cmd,
        Command::Disconnect
    );
    let no_trim = ExportInfo {
        can_trim: false,
        ..e.clone()
    };
    assert_eq!(
        header(cmd::TRIM, 0, 0, 512).check(&no_trim, &NEG),
        Err(errno::EINVAL)
    );
    // TRIM and WRITE_ZEROES may exceed the payload limit (they carry no payload).
    let big = export("big", 1 << 40, false);
    assert!(header(cmd::WRITE_ZEROES, 0, 0, 1 << 31)
        .check(&big, &NEG)
        .is_ok());
}

#[test]
fn reply_encodings() {
    let mut out = Vec::new();
    simple_reply(&mut out, 9, errno::EIO);
    assert_eq!(
        out,
        [
            &wire::SIMPLE_REPLY_MAGIC.to_be_bytes()[..],
            &5u32.to_be_bytes(),
            &9u64.to_be_bytes()
        ]
        .concat()
    );
    out.clear();
    offset_data(&mut out, 9, 4096, 512, true);
    assert_eq!(out.len(), 20 + 8);
    assert_eq!(wire::be16(&out[4..]), wire::chunk::FLAG_DONE);
    assert_eq!(wire::be16(&out[6..]), wire::chunk::OFFSET_DATA);
    assert_eq!(wire::be32(&out[16..]), 520);
    assert_eq!(wire::be64(&out[20..]), 4096);
    out.clear();
    structured_error(&mut out, 9, errno::EINVAL, "bad");
    assert_eq!(wire::be16(&out[6..]), wire::chunk::ERROR);
    assert_eq!(wire::be32(&out[16..]), 9);
    assert_eq!(&out[26..], b"bad");
    out.clear();
    block_status(&mut out, 9, &[(4096, 0), (8192, 3)]);
    assert_eq!(wire::be32(&out[16..]), 4 + 16);
    assert_eq!(wire::be32(&out[20..]), wire::BASE_ALLOCATION_ID);
    out.clear();
    structured_done(&mut out, 9);
    assert_eq!(out.len(), 20);
}

/// Exports for the access-control tests: `open` (everyone), `lan` (10.0.2.0/24 only) and
/// `far` (192.0.2.0/24 only).
fn acl_exports() -> Vec<ExportInfo> {
    let with = |name: &str, allow: &str| ExportInfo {
        allow: super::acl::AllowList::parse(allow).unwrap(),
        ..export(name, 1 << 20, false)
    };
    alloc::vec![
        export("open", 1 << 20, false),
        with("lan", "10.0.2.0/24"),
        with("far", "192.0.2.0/24+198.51.100.7"),
    ]
}

/// Like [`drive`] over [`acl_exports`], for a client at `peer`.
fn drive_acl(peer: Option<[u8; 4]>, input: &[u8]) -> (Vec<u8>, Step) {
    let mut hs = Handshake::for_peer(peer);
    let mut all = 3u32.to_be_bytes().to_vec();
    all.extend_from_slice(input);
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let (n, step) = hs.feed(&all[at..], &acl_exports(), &mut out);
        at += n;
        match step {
            Step::Continue => continue,
            other => return (out, other),
        }
    }
}

fn listed(peer: Option<[u8; 4]>) -> Vec<alloc::string::String> {
    let (out, _) = drive_acl(peer, &option(opt::LIST, &[]));
    let r = replies(&out);
    assert_eq!(r.last().unwrap().1, rep::ACK);
    r[..r.len() - 1]
        .iter()
        .map(|(o, t, d)| {
            assert_eq!((*o, *t), (opt::LIST, rep::SERVER));
            alloc::string::String::from_utf8(d[4..].to_vec()).unwrap()
        })
        .collect()
}

#[test]
fn list_shows_only_admitted_exports() {
    assert_eq!(listed(Some([10, 0, 2, 2])), ["open", "lan"]);
    assert_eq!(listed(Some([192, 0, 2, 200])), ["open", "far"]);
    assert_eq!(listed(Some([198, 51, 100, 7])), ["open", "far"]);
    assert_eq!(listed(Some([198, 51, 100, 8])), ["open"]);
    assert_eq!(
        listed(None),
        ["open"],
        "an unknown peer sees open exports only"
    );
}

#[test]
fn denied_export_answers_policy_to_info_and_go() {
    let peer = Some([10, 0, 2, 2]);
    for o in [opt::INFO, opt::GO] {
        let (out, step) = drive_acl(peer, &option(o, &go_data("far", &[info::NAME])));
        assert_eq!(step, Step::NeedMore, "the connection stays open");
        let r = replies(&out);
        assert_eq!(r.len(), 1, "no INFO about a denied export");
        assert_eq!((r[0].0, r[0].1), (o, rep::ERR_POLICY));
        assert_eq!(rep::ERR_POLICY, (1 << 31) + 2);
        // An unknown name gets the very same reply (its existence is not leaked).
        let (out2, _) = drive_acl(peer, &option(o, &go_data("nosuch", &[info::NAME])));
        assert_eq!(out2, out);
    }
    // The admitted one is served: GO enters transmission.
    let (out, step) = drive_acl(peer, &option(opt::GO, &go_data("lan", &[])));
    assert_eq!(replies(&out).last().unwrap().1, rep::ACK);
    assert!(matches!(step, Step::Transmission(n) if n.export == 1));
    // After a refusal the client may go on with another export.
    let mut input = option(opt::GO, &go_data("far", &[]));
    input.extend(option(opt::GO, &go_data("open", &[])));
    let (out, step) = drive_acl(peer, &input);
    assert_eq!(replies(&out)[0].1, rep::ERR_POLICY);
    assert!(matches!(step, Step::Transmission(n) if n.export == 0));
    // A peer in the list (or an unknown peer for an open export) gets in.
    let (_, step) = drive_acl(
        Some([198, 51, 100, 7]),
        &option(opt::GO, &go_data("far", &[])),
    );
    assert!(matches!(step, Step::Transmission(n) if n.export == 2));
    let (out, step) = drive_acl(None, &option(opt::GO, &go_data("lan", &[])));
    assert_eq!(replies(&out)[0].1, rep::ERR_POLICY);
    assert_eq!(step, Step::NeedMore);
}

#[test]
fn unknown_names_answer_unknown_when_nothing_is_hidden() {
    // Every export admits this peer: an unknown name is just unknown.
    let mut hs = Handshake::for_peer(Some([10, 0, 2, 2]));
    let mut input = 3u32.to_be_bytes().to_vec();
    input.extend(option(opt::GO, &go_data("nosuch", &[])));
    let mut out = Vec::new();
    let mut at = 0;
    let ex = &acl_exports()[..2];
    while let (n, Step::Continue) = hs.feed(&input[at..], ex, &mut out) {
        at += n;
    }
    assert_eq!(replies(&out)[0].1, rep::ERR_UNKNOWN);
}

#[test]
fn denied_export_name_closes_like_an_unknown_one() {
    let peer = Some([10, 0, 2, 2]);
    let (out, step) = drive_acl(peer, &option(opt::EXPORT_NAME, b"far"));
    assert!(out.is_empty());
    assert!(matches!(step, Step::Close(_)));
    let (_, step) = drive_acl(peer, &option(opt::EXPORT_NAME, b"lan"));
    assert!(matches!(step, Step::Transmission(n) if n.export == 1));
    // The default (empty) name is the first export, open here.
    let (_, step) = drive_acl(None, &option(opt::EXPORT_NAME, b""));
    assert!(matches!(step, Step::Transmission(n) if n.export == 0));
}

#[test]
fn denied_export_refuses_meta_contexts() {
    let meta = |name: &str| {
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&(wire::BASE_ALLOCATION.len() as u32).to_be_bytes());
        d.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
        d
    };
    let peer = Some([10, 0, 2, 2]);
    for o in [opt::LIST_META_CONTEXT, opt::SET_META_CONTEXT] {
        let mut input = option(opt::STRUCTURED_REPLY, &[]);
        input.extend(option(o, &meta("far")));
        let (out, _) = drive_acl(peer, &input);
        let r = replies(&out);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!((r[1].0, r[1].1), (o, rep::ERR_POLICY));
        let mut input = option(opt::STRUCTURED_REPLY, &[]);
        input.extend(option(o, &meta("lan")));
        let (out, _) = drive_acl(peer, &input);
        let r = replies(&out);
        assert_eq!(
            r[1..].iter().map(|x| x.1).collect::<Vec<_>>(),
            [rep::META_CONTEXT, rep::ACK]
        );
    }
}
