//! `pair_region`: the failover pair's shared region as a node reads it: the header decoder
//! (`tandem_formats::pair_region::Header::parse`) against the window the region came in, and the
//! control words the peer and the host write (ownership, claims, fencing, announcements,
//! states, requests), all from the fuzzer.
//!
//! Input: `[mode, window (8), header bytes (80), control words...]`. Mode bit 0 recomputes
//! the header's checksum, bit 1 seals node 0's announcement, so the fuzzer gets past both.
//!
//! Checked, besides no panic: an accepted header's node areas are page-aligned, start after
//! the control page, lie inside the region and the window, and do not overlap; ownership is
//! decided consistently (a claim that stands is held; a node that claims either wins or is
//! beaten by a higher or equal peer claim); an announcement read back is what was sealed.

use tandem_formats::nvlog::crc32c;
use tandem_formats::pair_region::{
    announce, announcement, claim, get, holds, next_epoch, owner, peer_silenced, word, Header,
    MemWords, Request, State, AREAS, CONTROL, NODES, PAGE,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::Input;

const HEADER: usize = core::mem::size_of::<Header>();

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let window = inp.u64();
    let mut page0 = inp.take(HEADER).to_vec();
    if mode & 1 != 0 && page0.len() == HEADER {
        const CRC_AT: usize = core::mem::offset_of!(Header, crc);
        let crc = crc32c(&[&page0[..CRC_AT]]);
        page0[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }
    if let Ok(h) = Header::parse(&page0, window) {
        assert_eq!(h.as_bytes(), &page0[..HEADER]);
        assert!(h.size <= window);
        assert_eq!(h.nodes as usize, NODES);
        for i in 0..NODES {
            let (off, len) = (h.area_offset[i], h.area_len[i]);
            assert!(off >= AREAS && off % PAGE == 0 && len >= PAGE);
            assert!(off.checked_add(len).is_some_and(|e| e <= h.size));
        }
        assert!(
            h.area_offset[0] + h.area_len[0] <= h.area_offset[1]
                || h.area_offset[1] + h.area_len[1] <= h.area_offset[0],
            "node areas overlap"
        );
        assert_eq!(Header::read_from_bytes(h.as_bytes()).unwrap(), h);
    }

    // The control words (both nodes' blocks), from the fuzzer.
    let mem = MemWords::new();
    let first = (CONTROL / 8) as usize;
    for (i, c) in inp.rest().chunks(8).take(64).enumerate() {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        mem.0.borrow_mut()[first + i] = u64::from_le_bytes(w);
    }
    if mode & 2 != 0 {
        let (off, len) = (get(&mem, 0, word::LOG_OFFSET), get(&mem, 0, word::LOG_LEN));
        let ip = (get(&mem, 0, word::IP) as u32).to_be_bytes();
        let mac = get(&mem, 0, word::MAC).to_le_bytes();
        let mac = [mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]];
        announce(&mem, 0, (off, len), ip, mac);
        assert_eq!(announcement(&mem, 0), Some((off, len, ip, mac)));
    }
    for n in 0..NODES {
        let _ = announcement(&mem, n);
        if let Some(s) = State::from_word(get(&mem, n, word::STATE)) {
            let _ = s.name();
        }
        let _ = Request::from_word(get(&mem, n, word::REQUEST));
        for j in 0..NODES {
            let (o, e) = owner(&mem, j);
            assert!(o < NODES);
            assert!(holds(&mem, o, j, e));
            let _ = peer_silenced(&mem, j, e);
        }
    }
    // Node `n` claims node `j`'s disks: it wins, or a peer claim at least as high stands.
    let n = usize::from(mode >> 7);
    let j = usize::from((mode >> 6) & 1);
    let e = next_epoch(&mem, j);
    match claim(&mem, n, j) {
        Some(got) => {
            assert_eq!(got, e);
            assert!(holds(&mem, n, j, got));
        }
        None => {
            let (o, oe) = owner(&mem, j);
            assert!(o != n || oe != e);
        }
    }
}
