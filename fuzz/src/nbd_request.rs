//! `nbd_request`: the transmission-phase request parser
//! (`unikernel::nbd::transmission::parse_header`) and its validation
//! (`RequestHeader::check`) against an export and negotiated options the fuzzer picks.
//!
//! Input: `[flags, block, size (8), max payload (4), headers...]`; the rest is cut into
//! 28-byte request headers.
//!
//! Checked, besides no panic: a header is parsed back to its exact bytes; a request that
//! passes `check` lies inside the export (no overflow), is aligned to the export's block,
//! writes only to a writable export, reads or writes at most the payload limit, and a FLUSH
//! covers nothing; a refused write still says how many payload bytes follow.

use tandem_formats::nbd_wire::{self as wire, cmd};
use unikernel::nbd::handshake::Negotiated;
use unikernel::nbd::transmission::{parse_header, Command, Parsed, REQUEST_LEN};
use unikernel::nbd::ExportInfo;

use crate::Input;

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let flags = inp.u8();
    let block = match inp.u8() % 5 {
        0 => 512,
        1 => 4096,
        2 => 1,
        3 => 0,
        _ => u32::from(inp.u16()),
    };
    let size = match flags >> 6 {
        0 => 16 << 20,
        1 => u64::MAX,
        _ => inp.u64(),
    };
    let max_payload = match (flags >> 5) & 1 {
        0 => 32 << 20,
        _ => inp.u32(),
    };
    let export = ExportInfo {
        name: "blk0".into(),
        description: String::new(),
        size,
        read_only: flags & 1 != 0,
        can_trim: flags & 2 != 0,
        can_write_zeroes: flags & 4 != 0,
        min_block: block,
        preferred_block: 4096,
        max_payload,
        disk_id: 1,
        allow: Default::default(),
    };
    let neg = Negotiated {
        export: 0,
        structured: flags & 8 != 0,
        base_allocation: flags & 16 != 0,
    };
    for b in inp.rest().chunks(REQUEST_LEN) {
        let h = match parse_header(b) {
            Parsed::Incomplete => {
                assert!(b.len() < REQUEST_LEN);
                continue;
            }
            Parsed::BadMagic(m) => {
                assert_eq!(m.to_be_bytes(), b[..4]);
                assert_ne!(m, wire::REQUEST_MAGIC);
                continue;
            }
            Parsed::Header(h) => h,
        };
        let mut back = Vec::with_capacity(REQUEST_LEN);
        back.extend_from_slice(&wire::REQUEST_MAGIC.to_be_bytes());
        back.extend_from_slice(&h.flags.to_be_bytes());
        back.extend_from_slice(&h.kind.to_be_bytes());
        back.extend_from_slice(&h.cookie.to_be_bytes());
        back.extend_from_slice(&h.offset.to_be_bytes());
        back.extend_from_slice(&h.length.to_be_bytes());
        assert_eq!(back, b, "header does not round-trip");
        let payload = h.payload_len();
        assert_eq!(
            payload,
            if h.kind == cmd::WRITE {
                u64::from(h.length)
            } else {
                0
            }
        );
        let Ok(c) = h.check(&export, &neg) else {
            continue;
        };
        match c.cmd {
            Command::Disconnect => continue,
            Command::Flush => {
                assert_eq!((h.offset, h.length), (0, 0));
                continue;
            }
            _ => {}
        }
        let end = h.offset.checked_add(u64::from(h.length));
        assert!(
            end.is_some_and(|e| e <= export.size),
            "{h:?} outside the export"
        );
        assert!(h.length > 0);
        let bs = u64::from(block.max(1));
        assert!(
            h.offset % bs == 0 && u64::from(h.length) % bs == 0,
            "unaligned"
        );
        let writes = matches!(c.cmd, Command::Write | Command::Trim | Command::WriteZeroes);
        assert!(!(writes && export.read_only), "write to a read-only export");
        if matches!(c.cmd, Command::Read | Command::Write) {
            assert!(h.length <= max_payload);
        }
        assert!(c.cmd != Command::Trim || export.can_trim);
        assert!(c.cmd != Command::WriteZeroes || export.can_write_zeroes);
        assert!(c.cmd != Command::BlockStatus || neg.base_allocation);
        assert!(!c.df || (c.cmd == Command::Read && neg.structured));
    }
}
