//! Hostile clients against the server's limits (`server::limits`): silent handshakes, a
//! client that never reads its replies, a write stalled half-way, a client hoarding buffers.
//! Each case also shows another client keeps being served.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use frontend_drivers::ramdisk::RamDisk;

use super::server::{ConnState, Durability, Limits, Server, Stream, CHUNK, MAX_QUEUED};
use super::server_tests::{
    connect, logged_server, parse_reply, pattern, request, run, server, Client, Pipe, LOG_PAGES,
};
use super::wire::{cmd, errno};

const SEC: u64 = 1_000_000;

/// A socket whose peer never reads: it takes at most `room` bytes, then nothing.
struct Deaf {
    to_server: VecDeque<u8>,
    taken: usize,
    room: usize,
}

impl Stream for Deaf {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.to_server.len());
        for b in buf.iter_mut().take(n) {
            *b = self.to_server.pop_front().unwrap();
        }
        n
    }
    fn send(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room - self.taken);
        self.taken += n;
        n
    }
}

/// One request and its reply through a well-behaved client (bounded turns).
fn roundtrip(s: &mut Server, c: Client, kind: u16, offset: u64, len: u32, payload: &[u8]) -> u32 {
    let mut c = c;
    c.push(&request(kind, 0, 77, offset, len));
    c.push(payload);
    let rl = if kind == cmd::READ { len as usize } else { 0 };
    let mut cs = [c];
    let mut reply = None;
    run(s, &mut cs, |cs| {
        reply.is_some() || cs[0].closed || !cs[0].avail().is_empty()
    });
    let [mut c] = cs;
    for _ in 0..10_000 {
        if let Some(r) = parse_reply(&mut c, &|_| Some(rl)) {
            reply = Some(r.error);
            break;
        }
        s.service(c.slot, &mut c.pipe);
        s.poll_disks();
    }
    reply.expect("a reply")
}

#[test]
fn a_silent_handshake_is_closed_at_the_deadline() {
    let mut s = server(16, 4);
    s.set_limits(Limits {
        handshake_us: 10 * SEC,
        ..Limits::default()
    });
    s.set_time(SEC);
    s.accept(0);
    let mut silent = Pipe::default();
    s.set_time(5 * SEC);
    assert_eq!(
        s.service(0, &mut silent),
        ConnState::Open,
        "within the deadline"
    );
    assert_eq!(s.oldest_handshake(), Some((0, SEC)));
    s.set_time(11 * SEC + 1);
    assert_eq!(s.service(0, &mut silent), ConnState::Close);
    assert!(!s.is_active(0));
    assert_eq!(s.stats.closed_timeout, 1);
    // A client that negotiates in time is not affected by the clock afterwards.
    let c = connect(&mut s, 1, "disk0", false);
    s.set_time(100 * SEC);
    assert_eq!(roundtrip(&mut s, c, cmd::READ, 0, 4096, &[]), 0);
}

#[test]
fn the_oldest_negotiation_is_the_one_to_evict() {
    let mut s = server(16, 4);
    for (slot, t) in [(2, 30), (0, 10), (3, 20)] {
        s.set_time(t * SEC);
        s.accept(slot);
    }
    assert_eq!(s.negotiating(), 3);
    assert_eq!(s.oldest_handshake(), Some((0, 10 * SEC)));
    s.evict(0);
    assert_eq!(s.oldest_handshake(), Some((3, 20 * SEC)));
    assert_eq!(s.stats.evicted, 1);
}

#[test]
fn a_client_that_never_reads_its_replies_is_not_read_either() {
    let mut s = server(16, 4);
    let deaf_client = connect(&mut s, 0, "disk0", false);
    let mut deaf = Deaf {
        to_server: VecDeque::new(),
        taken: 0,
        room: 4096,
    };
    // 100,000 READs past the end: each answered with a 16-byte error reply.
    let size = super::server_tests::export("disk0", false).size;
    for i in 0..100_000u64 {
        deaf.to_server.extend(request(cmd::READ, 0, i, size, 4096));
    }
    drop(deaf_client);
    let other = connect(&mut s, 1, "disk0", false);
    let mut peak = 0;
    for _ in 0..2_000 {
        s.service(0, &mut deaf);
        s.poll_disks();
        peak = peak.max(s.queued(0));
    }
    assert!(peak <= MAX_QUEUED + 4096, "replies queued: {peak}");
    assert!(
        deaf.to_server.len() > 90_000 * 28,
        "the server stopped reading requests ({} bytes left)",
        deaf.to_server.len()
    );
    // Someone else is served all along.
    assert_eq!(roundtrip(&mut s, other, cmd::READ, 0, 4096, &[]), 0);
    // Stalled that long, the deaf client is disconnected.
    s.set_time(31 * SEC);
    assert_eq!(s.service(0, &mut deaf), ConnState::Close);
}

#[test]
fn a_write_stalled_half_way_releases_its_log_pages_and_does_not_block_others() {
    let region = alloc::vec![0u8; LOG_PAGES * 4096];
    let mut s = logged_server(RamDisk::new(16 << 20, 64), &region, Durability::Disk);
    let free = s.log_state().unwrap().2;
    let mut stuck = connect(&mut s, 0, "disk0", false);
    stuck.push(&request(cmd::WRITE, 0, 1, 0, 1 << 20));
    stuck.push(&pattern(1, 300_000));
    let mut cs = [stuck];
    run(&mut s, &mut cs, |cs| cs[0].pipe.to_server.is_empty());
    let [mut stuck] = cs;
    assert!(s.log_state().unwrap().2 < free, "pages reserved");
    // Another client writes and reads back meanwhile.
    let other = connect(&mut s, 1, "disk0", false);
    let data = pattern(2, 64 << 10);
    assert_eq!(
        roundtrip(&mut s, other, cmd::WRITE, 2 << 20, 64 << 10, &data),
        0
    );
    s.set_time(29 * SEC);
    assert_eq!(
        s.service(0, &mut stuck.pipe),
        ConnState::Open,
        "not stalled yet"
    );
    s.set_time(31 * SEC);
    assert_eq!(s.service(0, &mut stuck.pipe), ConnState::Close, "stalled");
    for _ in 0..1000 {
        s.poll_disks();
    }
    assert_eq!(
        s.log_state().unwrap().2,
        free,
        "the stalled write's pages are back"
    );
}

#[test]
fn a_client_hoarding_read_buffers_leaves_a_share_for_others() {
    // 24 buffers, 4 connections: a share is 6.
    let mut s = server(24, 4);
    let hog_client = connect(&mut s, 0, "disk0", false);
    drop(hog_client);
    let mut hog = Deaf {
        to_server: VecDeque::new(),
        taken: 0,
        room: 1024,
    };
    for i in 0..16u64 {
        hog.to_server.extend(request(cmd::READ, 0, i, 0, 4 << 20));
    }
    for _ in 0..500 {
        s.service(0, &mut hog);
        s.poll_disks();
    }
    let held = s.pool().capacity() - s.pool().available();
    assert!(held <= 24 / 4, "the hog holds {held} buffers");
    let other = connect(&mut s, 1, "disk0", false);
    assert_eq!(
        roundtrip(&mut s, other, cmd::READ, 0, 2 * CHUNK as u32, &[]),
        0
    );
}

#[test]
fn past_the_serving_cap_a_negotiated_client_is_refused() {
    let mut s = server(16, 4);
    s.set_limits(Limits {
        max_serving: 2,
        ..Limits::default()
    });
    let _a = connect(&mut s, 0, "disk0", false);
    let _b = connect(&mut s, 1, "disk0", false);
    assert_eq!(s.serving(), 2);
    s.accept(2);
    let mut c = Client {
        slot: 2,
        pipe: Pipe::default(),
        at: 0,
        structured: false,
        closed: false,
    };
    c.push(&3u32.to_be_bytes());
    let mut go = Vec::new();
    go.extend_from_slice(&5u32.to_be_bytes());
    go.extend_from_slice(b"disk0");
    go.extend_from_slice(&0u16.to_be_bytes());
    c.push(&super::wire::IHAVEOPT.to_be_bytes());
    c.push(&super::wire::opt::GO.to_be_bytes());
    c.push(&(go.len() as u32).to_be_bytes());
    c.push(&go);
    let mut cs = [c];
    run(&mut s, &mut cs, |cs| cs[0].closed);
    assert_eq!(s.serving(), 2);
    let _ = errno::EINVAL;
}

#[test]
fn an_idle_timeout_closes_only_idle_negotiated_clients_and_only_when_asked() {
    let mut s = server(16, 4);
    s.set_time(0);
    let mut idle = connect(&mut s, 0, "disk0", false);
    s.set_time(3600 * SEC);
    assert_eq!(
        s.service(0, &mut idle.pipe),
        ConnState::Open,
        "no idle timeout by default"
    );
    s.set_limits(Limits {
        idle_us: 60 * SEC,
        ..Limits::default()
    });
    let mut quiet = connect(&mut s, 2, "disk0", false);
    let busy = connect(&mut s, 1, "disk0", false);
    assert_eq!(
        s.service(0, &mut idle.pipe),
        ConnState::Close,
        "idle for an hour, past a 60 s idle timeout"
    );
    s.set_time(3600 * SEC + 30 * SEC);
    assert_eq!(s.service(2, &mut quiet.pipe), ConnState::Open);
    // The other client keeps working: each request moves bytes, which resets its clock.
    assert_eq!(roundtrip(&mut s, busy, cmd::READ, 0, 4096, &[]), 0);
    s.set_time(3600 * SEC + 61 * SEC);
    assert_eq!(s.service(2, &mut quiet.pipe), ConnState::Close);
    assert_eq!(s.stats.closed_timeout, 2);
    assert!(s.is_active(1), "the client that just worked stays");
}
