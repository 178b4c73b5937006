//! `mirror_stream`: the NVLOG mirror's receiving side (`tandem_formats::mirror`) on whatever
//! the other host, or anything on the interconnect, sends.
//!
//! Input: `[mode, chunk, log_id_low, region_pages, stream...]`: the stream is fed in pieces
//! of `chunk + 1` bytes to a [`Decoder`], and every frame goes to a [`Receiver`] over a copy
//! of `region_pages % 16 + 1` pages. With mode bit 0 the stream is first built from frame
//! descriptions (`[kind, seq, arg u16, len u16, payload]`, checksums computed), so the fuzzer
//! reaches the receiver's rules and not only the checksum. Checked, besides no panic: the decoder never holds more than one
//! frame; every write lands inside the copy; the applied sequence number only grows, by one
//! per applied frame; an acknowledged sequence number never goes down; the first error ends
//! the stream, as it ends the connection.

use tandem_formats::mirror::{Decoder, Receiver, HEADER_LEN, MAX_PAYLOAD};

/// Runs one stream.
pub fn run(data: &[u8]) {
    let [mode, chunk, log, pages, raw @ ..] = data else {
        return;
    };
    let built;
    let stream = if mode & 1 == 1 {
        built = build(u64::from(*log), raw);
        &built[..]
    } else {
        raw
    };
    let chunk = usize::from(*chunk) + 1;
    let mut copy = vec![0u8; (usize::from(*pages) % 16 + 1) * 4096];
    let mut receiver = Receiver::new(u64::from(*log), copy.len() as u64, 0);
    let mut decoder = Decoder::new();
    let mut last_ack = 0;
    let mut failed = false;
    for mut piece in stream.chunks(chunk) {
        while !piece.is_empty() && !failed {
            let mut on_frame = |f: tandem_formats::mirror::Frame<'_>| {
                let before = receiver.applied();
                let len = copy.len();
                let result = receiver.take(&f, &mut |offset, bytes| {
                    let at = usize::try_from(offset).expect("offset checked");
                    assert!(at + bytes.len() <= len, "write past the copy");
                    copy[at..at + bytes.len()].copy_from_slice(bytes);
                });
                match result {
                    Ok(ack) => {
                        assert!(receiver.applied() == before || receiver.applied() == before + 1);
                        if let Some(a) = ack {
                            assert!(a >= last_ack, "ack went down");
                            last_ack = a;
                        }
                    }
                    Err(_) => failed = true,
                }
            };
            match decoder.feed(piece, &mut on_frame) {
                Ok(n) => piece = &piece[n..],
                Err(_) => failed = true,
            }
            assert!(decoder.pending() <= HEADER_LEN + MAX_PAYLOAD);
        }
    }
}

/// Frames from descriptions: `[kind, seq, arg (2, LE), len (2, LE), payload]` each.
fn build(log_id: u64, mut desc: &[u8]) -> Vec<u8> {
    use tandem_formats::mirror::{Frame, Kind};
    let kinds = [
        Kind::Hello,
        Kind::Write,
        Kind::Commit,
        Kind::Ack,
        Kind::Heartbeat,
    ];
    let mut out = Vec::new();
    while let [k, seq, a0, a1, l0, l1, rest @ ..] = desc {
        let kind = kinds[usize::from(*k) % kinds.len()];
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(rest.len());
        let len = if kind == Kind::Write { len } else { 0 };
        let (payload, next) = rest.split_at(len);
        let frame = Frame {
            kind,
            stream_seq: u64::from(*seq),
            log_id,
            arg: u64::from(u16::from_le_bytes([*a0, *a1])) * 8,
            payload,
        };
        frame.encode(&mut out);
        desc = next;
    }
    out
}
