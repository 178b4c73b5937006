//! The server against RAM disks and in-memory client streams: handshake to replies,
//! pipelining, large requests under a small buffer budget, every refusal, many clients,
//! clients that vanish.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use frontend_drivers::ramdisk::RamDisk;
use hpdi::{BufferPool, QueuePair};

use super::server::{ConnState, Disk, Server, Stream, CHUNK};
use super::wire::{self, cflag, cmd, errno, opt};
use super::ExportInfo;

const DISK: u64 = 16 << 20;

#[derive(Default)]
pub(super) struct Pipe {
    pub(super) to_server: VecDeque<u8>,
    pub(super) from_server: Vec<u8>,
    /// Most bytes the "socket" takes per send call (partial sends).
    pub(super) send_limit: usize,
}

impl Stream for Pipe {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.to_server.len());
        for b in buf.iter_mut().take(n) {
            *b = self.to_server.pop_front().unwrap();
        }
        n
    }
    fn send(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.send_limit.max(1));
        self.from_server.extend_from_slice(&data[..n]);
        n
    }
}

pub(super) fn export(name: &str, read_only: bool) -> ExportInfo {
    ExportInfo {
        name: name.into(),
        description: "ram".into(),
        size: DISK,
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

pub(super) fn server(pool_buffers: usize, conns: usize) -> Server {
    let disks = ["disk0", "ro"]
        .iter()
        .map(|_| Disk {
            dev: Box::new(RamDisk::new(DISK as usize, 64)),
            queue: QueuePair::new(256).unwrap(),
        })
        .collect();
    Server::new(
        alloc::vec![export("disk0", false), export("ro", true)],
        disks,
        BufferPool::host(pool_buffers, CHUNK).unwrap(),
        conns,
    )
}

pub(super) struct Client {
    pub(super) slot: usize,
    pub(super) pipe: Pipe,
    /// Bytes of `from_server` already parsed.
    pub(super) at: usize,
    pub(super) structured: bool,
    pub(super) closed: bool,
}

impl Client {
    pub(super) fn push(&mut self, b: &[u8]) {
        self.pipe.to_server.extend(b.iter().copied());
    }
    pub(super) fn avail(&self) -> &[u8] {
        &self.pipe.from_server[self.at..]
    }
}

/// Services every client and the disks until `done` holds (bounded).
pub(super) fn run(s: &mut Server, cs: &mut [Client], mut done: impl FnMut(&[Client]) -> bool) {
    for _ in 0..200_000 {
        if done(cs) {
            return;
        }
        for c in cs.iter_mut().filter(|c| !c.closed) {
            if s.service(c.slot, &mut c.pipe) == ConnState::Close {
                c.closed = true;
            }
        }
        s.poll_disks();
    }
    panic!("condition not reached");
}

fn option(code: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// Connects on `slot` and negotiates `name` with GO (and structured replies if asked).
pub(super) fn connect(s: &mut Server, slot: usize, name: &str, structured: bool) -> Client {
    s.accept(slot);
    let mut c = Client {
        slot,
        pipe: Pipe {
            send_limit: 7000,
            ..Default::default()
        },
        at: 0,
        structured,
        closed: false,
    };
    c.push(&3u32.to_be_bytes());
    let mut acks = 1;
    if structured {
        c.push(&option(opt::STRUCTURED_REPLY, &[]));
        let mut meta = Vec::new();
        meta.extend_from_slice(&(name.len() as u32).to_be_bytes());
        meta.extend_from_slice(name.as_bytes());
        meta.extend_from_slice(&1u32.to_be_bytes());
        meta.extend_from_slice(&(wire::BASE_ALLOCATION.len() as u32).to_be_bytes());
        meta.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
        c.push(&option(opt::SET_META_CONTEXT, &meta));
        acks += 2;
    }
    let mut go = Vec::new();
    go.extend_from_slice(&(name.len() as u32).to_be_bytes());
    go.extend_from_slice(name.as_bytes());
    go.extend_from_slice(&0u16.to_be_bytes());
    c.push(&option(opt::GO, &go));
    let mut cs = [c];
    run(s, &mut cs, |cs| {
        cs[0].closed
            || cs[0]
                .pipe
                .from_server
                .get(18..)
                .is_some_and(|b| count_acks(b) >= acks)
    });
    let [mut c] = cs;
    assert!(!c.closed, "handshake failed");
    c.at = c.pipe.from_server.len();
    c
}

fn count_acks(mut b: &[u8]) -> usize {
    let mut n = 0;
    while b.len() >= 20 {
        let len = wire::be32(&b[16..]) as usize;
        if b.len() < 20 + len {
            break;
        }
        if wire::be32(&b[12..]) == wire::rep::ACK {
            n += 1;
        }
        b = &b[20 + len..];
    }
    n
}

pub(super) fn request(kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&wire::REQUEST_MAGIC.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// A parsed reply: cookie, error, data (reads).
#[derive(Debug, PartialEq)]
pub(super) struct Reply {
    pub(super) cookie: u64,
    pub(super) error: u32,
    pub(super) data: Vec<u8>,
}

/// Parses one complete reply if present. `read_len` maps cookies of reads to their lengths
/// (simple replies carry no length).
pub(super) fn parse_reply(
    c: &mut Client,
    read_len: &dyn Fn(u64) -> Option<usize>,
) -> Option<Reply> {
    let b = c.avail();
    if !c.structured {
        if b.len() < 16 {
            return None;
        }
        assert_eq!(wire::be32(b), wire::SIMPLE_REPLY_MAGIC);
        let (error, cookie) = (wire::be32(&b[4..]), wire::be64(&b[8..]));
        let dlen = if error == 0 {
            read_len(cookie).unwrap_or(0)
        } else {
            0
        };
        if b.len() < 16 + dlen {
            return None;
        }
        let data = b[16..16 + dlen].to_vec();
        c.at += 16 + dlen;
        return Some(Reply {
            cookie,
            error,
            data,
        });
    }
    // Structured: chunks until one with DONE.
    let mut at = 0;
    let mut data = Vec::new();
    let mut error = 0;
    loop {
        let h = b.get(at..at + 20)?;
        assert_eq!(wire::be32(h), wire::STRUCTURED_REPLY_MAGIC);
        let (flags, kind, cookie, len) = (
            wire::be16(&h[4..]),
            wire::be16(&h[6..]),
            wire::be64(&h[8..]),
            wire::be32(&h[16..]) as usize,
        );
        let payload = b.get(at + 20..at + 20 + len)?;
        match kind {
            wire::chunk::OFFSET_DATA => data.extend_from_slice(&payload[8..]),
            wire::chunk::ERROR => error = wire::be32(payload),
            _ => {}
        }
        at += 20 + len;
        if flags & wire::chunk::FLAG_DONE != 0 {
            c.at += at;
            return Some(Reply {
                cookie,
                error,
                data,
            });
        }
    }
}

pub(super) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// (command, flags, cookie, offset, length, payload)
type Req = (u16, u16, u64, u64, u32, Vec<u8>);

/// Sends requests (writes with payload) and collects `n` replies.
fn exchange(s: &mut Server, c: Client, reqs: &[Req]) -> (Client, Vec<Reply>) {
    let mut c = c;
    for (kind, flags, cookie, off, len, payload) in reqs {
        c.push(&request(*kind, *flags, *cookie, *off, *len));
        c.push(payload);
    }
    let lens: Vec<(u64, usize)> = reqs
        .iter()
        .filter(|r| r.0 == cmd::READ)
        .map(|r| (r.2, r.4 as usize))
        .collect();
    let read_len = |k: u64| lens.iter().find(|(c, _)| *c == k).map(|(_, l)| *l);
    let mut replies = Vec::new();
    let mut cs = [c];
    run(s, &mut cs, |cs| {
        // Parsing needs a mutable client; done on a copy of the cursor.
        let mut probe = Client {
            slot: 0,
            pipe: Pipe {
                from_server: cs[0].pipe.from_server.clone(),
                ..Default::default()
            },
            at: cs[0].at,
            structured: cs[0].structured,
            closed: false,
        };
        let mut n = 0;
        while parse_reply(&mut probe, &read_len).is_some() {
            n += 1;
        }
        n >= reqs.len() || cs[0].closed
    });
    let [mut c] = cs;
    while let Some(r) = parse_reply(&mut c, &read_len) {
        replies.push(r);
    }
    (c, replies)
}

#[test]
fn large_write_and_read_back_under_a_small_budget() {
    // 3 MiB through a pool of 40 x 64 KiB buffers: the request is streamed.
    let mut s = server(40, 4);
    let c = connect(&mut s, 0, "disk0", false);
    let data = pattern(1, 3 << 20);
    let (c, r) = exchange(
        &mut s,
        c,
        &[(cmd::WRITE, cflag::FUA, 1, 1 << 20, 3 << 20, data.clone())],
    );
    assert_eq!(
        r,
        [Reply {
            cookie: 1,
            error: 0,
            data: Vec::new()
        }]
    );
    let (_, r) = exchange(
        &mut s,
        c,
        &[(cmd::READ, 0, 2, 1 << 20, 3 << 20, Vec::new())],
    );
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].error, 0);
    assert!(r[0].data == data, "read back differs");
    assert_eq!(s.pool().available(), 40, "every buffer returned");
    assert!(s.pool().peak_in_use() <= super::server::CONN_BUFFERS);
}

#[test]
fn structured_reads_flush_trim_zeroes_and_block_status() {
    let mut s = server(64, 4);
    let c = connect(&mut s, 0, "disk0", true);
    let data = pattern(2, 256 << 10);
    let (c, r) = exchange(
        &mut s,
        c,
        &[
            (cmd::WRITE, 0, 1, 0, 256 << 10, data.clone()),
            (cmd::FLUSH, 0, 2, 0, 0, Vec::new()),
        ],
    );
    assert!(r.iter().all(|r| r.error == 0), "{r:?}");
    let (c, r) = exchange(
        &mut s,
        c,
        &[
            (cmd::WRITE_ZEROES, 0, 3, 4096, 4096, Vec::new()),
            (cmd::TRIM, 0, 4, 8192, 4096, Vec::new()),
        ],
    );
    assert!(r.iter().all(|r| r.error == 0), "{r:?}");
    let (c, r) = exchange(
        &mut s,
        c,
        &[
            (cmd::READ, 0, 5, 0, 256 << 10, Vec::new()),
            (cmd::CACHE, 0, 6, 0, 4096, Vec::new()),
        ],
    );
    let read = r.iter().find(|r| r.cookie == 5).unwrap();
    let mut want = data.clone();
    want[4096..12288].fill(0);
    assert!(read.data == want);
    assert_eq!(r.iter().find(|r| r.cookie == 6).unwrap().error, 0);
    let (_, r) = exchange(
        &mut s,
        c,
        &[(cmd::BLOCK_STATUS, 0, 7, 0, 1 << 20, Vec::new())],
    );
    assert_eq!(r[0].error, 0);
    // Without base:allocation, BLOCK_STATUS is refused and the connection kept.
    let c = connect(&mut s, 1, "disk0", false);
    let (_, r) = exchange(&mut s, c, &[(cmd::BLOCK_STATUS, 0, 8, 0, 4096, Vec::new())]);
    assert_eq!(r[0].error, errno::EINVAL);
}

#[test]
fn replies_never_cut_into_a_read_being_sent() {
    // Reads whose data trickles out (small socket sends) interleaved with requests that
    // finish at once (block status, refusals, flushes): every reply must parse whole.
    let mut s = server(64, 4);
    let mut c = connect(&mut s, 0, "disk0", true);
    c.pipe.send_limit = 1000;
    let data = pattern(7, 1 << 20);
    let (mut c, _) = exchange(&mut s, c, &[(cmd::WRITE, 0, 1, 0, 1 << 20, data.clone())]);
    c.pipe.send_limit = 1000;
    let mut reqs = Vec::new();
    for i in 0..12u64 {
        reqs.push((cmd::READ, 0, 100 + i, (i % 4) * 262144, 262144, Vec::new()));
        reqs.push((cmd::BLOCK_STATUS, 0, 200 + i, 0, 1 << 20, Vec::new()));
        reqs.push((cmd::READ, 0, 300 + i, DISK, 512, Vec::new())); // refused at once
        reqs.push((cmd::FLUSH, 0, 400 + i, 0, 0, Vec::new()));
    }
    let (_, r) = exchange(&mut s, c, &reqs);
    assert_eq!(r.len(), reqs.len());
    for rep in &r {
        match rep.cookie {
            100..200 => {
                let i = (rep.cookie - 100) as usize;
                let at = (i % 4) * 262144;
                let first_bad = rep
                    .data
                    .iter()
                    .zip(&data[at..at + 262144])
                    .position(|(a, b)| a != b);
                assert!(
                    rep.data == data[at..at + 262144],
                    "read {} len {} error {} first mismatch {first_bad:?}",
                    rep.cookie,
                    rep.data.len(),
                    rep.error
                );
            }
            300..400 => assert_eq!(rep.error, errno::EINVAL),
            _ => assert_eq!(rep.error, 0, "{rep:?}"),
        }
    }
}

#[test]
fn pipelined_requests_all_answered() {
    let mut s = server(64, 4);
    let c = connect(&mut s, 0, "disk0", false);
    let reqs: Vec<_> = (0..40u64)
        .map(|i| (cmd::WRITE, 0, i, i * 65536, 65536, pattern(i, 65536)))
        .collect();
    let (c, r) = exchange(&mut s, c, &reqs);
    let mut cookies: Vec<u64> = r.iter().map(|r| r.cookie).collect();
    cookies.sort();
    assert_eq!(cookies, (0..40).collect::<Vec<_>>());
    let reads: Vec<_> = (0..40u64)
        .map(|i| (cmd::READ, 0, 100 + i, i * 65536, 65536, Vec::new()))
        .collect();
    let (_, r) = exchange(&mut s, c, &reads);
    for rep in &r {
        assert!(
            rep.data == pattern(rep.cookie - 100, 65536),
            "cookie {}",
            rep.cookie
        );
    }
}

#[test]
fn refusals_keep_the_connection_and_skip_payload() {
    let mut s = server(16, 4);
    let c = connect(&mut s, 0, "disk0", false);
    let good = pattern(3, 4096);
    let (c, r) = exchange(
        &mut s,
        c,
        &[
            (cmd::READ, 0, 1, DISK, 4096, Vec::new()), // past the end
            (cmd::WRITE, 0, 2, DISK - 2048, 4096, pattern(9, 4096)), // write past the end
            (cmd::WRITE, 0, 3, 1, 512, pattern(9, 512)), // misaligned
            (cmd::READ, 1 << 9, 4, 0, 512, Vec::new()), // unknown flag
            (42, 0, 5, 0, 512, Vec::new()),            // unknown command
            (cmd::READ, 0, 6, 0, (32 << 20) + 512, Vec::new()), // over the maximum
            (cmd::WRITE, 0, 7, 0, 4096, good.clone()), // still works
        ],
    );
    let errs: Vec<(u64, u32)> = r.iter().map(|r| (r.cookie, r.error)).collect();
    assert_eq!(
        errs,
        [
            (1, errno::EINVAL),
            (2, errno::ENOSPC),
            (3, errno::EINVAL),
            (4, errno::EINVAL),
            (5, errno::EINVAL),
            (6, errno::EINVAL),
            (7, 0)
        ]
    );
    let (_, r) = exchange(&mut s, c, &[(cmd::READ, 0, 8, 0, 4096, Vec::new())]);
    assert!(r[0].data == good);
    // A read-only export refuses writes with EPERM.
    let c = connect(&mut s, 1, "ro", false);
    let (_, r) = exchange(&mut s, c, &[(cmd::WRITE, 0, 9, 0, 512, pattern(1, 512))]);
    assert_eq!(r[0].error, errno::EPERM);
}

#[test]
fn a_huge_refused_write_is_skipped_without_buffering() {
    let mut s = server(16, 4);
    let mut c = connect(&mut s, 0, "disk0", false);
    // Announce a 4 GiB - 1 write: refused, its payload must be drained, not stored.
    c.push(&request(cmd::WRITE, 0, 1, 0, u32::MAX));
    let mut cs = [c];
    run(&mut s, &mut cs, |cs| cs[0].avail().len() >= 16);
    let [mut c] = cs;
    assert_eq!(wire::be32(&c.avail()[4..]), errno::EINVAL);
    c.at += 16;
    let chunk = alloc::vec![0u8; 1 << 20];
    for _ in 0..8 {
        c.push(&chunk); // part of the refused payload arrives; nothing is kept
        let mut cs = [c];
        run(&mut s, &mut cs, |cs| cs[0].pipe.to_server.is_empty());
        [c] = cs;
        assert_eq!(s.pool().available(), 16);
    }
}

#[test]
fn many_clients_at_once() {
    let mut s = server(128, 16);
    let mut clients: Vec<Client> = (0..16)
        .map(|i| connect(&mut s, i, "disk0", i % 2 == 0))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.push(&request(cmd::WRITE, 0, i as u64, i as u64 * 262144, 262144));
        c.push(&pattern(i as u64, 262144));
        c.push(&request(
            cmd::READ,
            0,
            1000 + i as u64,
            i as u64 * 262144,
            262144,
        ));
    }
    run(&mut s, &mut clients, |cs| {
        cs.iter().all(|c| {
            let mut probe = Client {
                slot: 0,
                pipe: Pipe {
                    from_server: c.pipe.from_server.clone(),
                    ..Default::default()
                },
                at: c.at,
                structured: c.structured,
                closed: false,
            };
            let rl = |k: u64| (k >= 1000).then_some(262144);
            parse_reply(&mut probe, &rl).is_some() && parse_reply(&mut probe, &rl).is_some()
        })
    });
    for (i, c) in clients.iter_mut().enumerate() {
        let rl = |k: u64| (k >= 1000).then_some(262144);
        let a = parse_reply(c, &rl).unwrap();
        let b = parse_reply(c, &rl).unwrap();
        let read = if a.cookie >= 1000 { a } else { b };
        assert!(read.data == pattern(i as u64, 262144), "client {i}");
    }
    assert_eq!(s.pool().available(), 128);
}

#[test]
fn vanishing_and_garbage_clients_close_alone() {
    let mut s = server(32, 4);
    let mut a = connect(&mut s, 0, "disk0", false);
    // A write whose payload stops halfway, then the client disappears.
    a.push(&request(cmd::WRITE, 0, 1, 0, 1 << 20));
    a.push(&pattern(1, 300_000));
    let mut cs = [a];
    run(&mut s, &mut cs, |cs| cs[0].pipe.to_server.is_empty());
    s.drop_conn(0);
    // Garbage instead of a request closes that connection only.
    let mut b = connect(&mut s, 1, "disk0", false);
    b.push(b"this is not an NBD request header......");
    let mut cs = [b];
    run(&mut s, &mut cs, |cs| cs[0].closed);
    assert!(!s.is_active(1));
    // Another client is unaffected, and the vanished write changed nothing.
    let c = connect(&mut s, 2, "disk0", false);
    let (c, r) = exchange(&mut s, c, &[(cmd::READ, 0, 4, 0, 1 << 20, Vec::new())]);
    assert!(
        r[0].data.iter().all(|&b| b == 0),
        "a write that never fully arrived was applied"
    );
    let (_, r) = exchange(&mut s, c, &[(cmd::WRITE, 0, 5, 0, 512, pattern(5, 512))]);
    assert_eq!(r[0].error, 0);
    for _ in 0..10 {
        s.poll_disks();
    }
    assert_eq!(
        s.pool().available(),
        32,
        "buffers of the vanished write came back"
    );
    // Disconnect: finishes and closes.
    let mut d = connect(&mut s, 3, "disk0", false);
    d.push(&request(cmd::DISC, 0, 9, 0, 0));
    let mut cs = [d];
    run(&mut s, &mut cs, |cs| cs[0].closed);
}

// ---- with the write log ----

use super::server::Durability;
use crate::nvlog::log::Nvlog;
use hpdi::{BufId, DmaMemory, HostMemory};

pub(super) const LOG_PAGES: usize = 1024; // 4 MiB

/// A server whose disk 0 is `disk` and whose log region starts as `region` (bytes).
pub(super) fn logged_server(disk: RamDisk, region: &[u8], durability: Durability) -> Server {
    let mut pool = BufferPool::host(64, CHUNK).unwrap();
    let mut mem: Box<dyn DmaMemory> = Box::new(HostMemory::new(region.len()));
    mem.bytes_mut().copy_from_slice(region);
    let r = pool.add_region(mem, 4096).unwrap();
    let (log, _) = Nvlog::open(&mut pool, r, 42).unwrap();
    let disks = alloc::vec![
        Disk {
            dev: Box::new(disk),
            queue: QueuePair::new(256).unwrap()
        },
        Disk {
            dev: Box::new(RamDisk::new(DISK as usize, 64)),
            queue: QueuePair::new(256).unwrap()
        },
    ];
    Server::new(
        alloc::vec![export("disk0", false), export("ro", true)],
        disks,
        pool,
        4,
    )
    .with_log(log, durability)
    .unwrap()
}

fn snapshot(s: &Server) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..LOG_PAGES {
        out.extend_from_slice(s.pool().buf(BufId::new(1, i as u32)).unwrap());
    }
    out
}

#[test]
fn logged_writes_are_acknowledged_from_the_log_and_replayed_after_a_crash() {
    let region = alloc::vec![0u8; LOG_PAGES * 4096];
    let mut s = logged_server(RamDisk::new(DISK as usize, 64), &region, Durability::Nvlog);
    let c = connect(&mut s, 0, "disk0", false);
    // Send the writes and collect acknowledgements without letting the disks run: the
    // acknowledgement comes from the log alone.
    let data = pattern(5, 256 << 10);
    let mut c = c;
    c.push(&request(cmd::WRITE, cflag::FUA, 1, 8192, 256 << 10));
    c.push(&data);
    c.push(&request(cmd::FLUSH, 0, 2, 0, 0));
    let mut acks = 0;
    for _ in 0..10_000 {
        s.service(0, &mut c.pipe);
        let mut probe = Client {
            slot: 0,
            pipe: Pipe {
                from_server: c.pipe.from_server.clone(),
                ..Default::default()
            },
            at: c.at,
            structured: false,
            closed: false,
        };
        acks = core::iter::from_fn(|| parse_reply(&mut probe, &|_| None)).count();
        if acks == 2 {
            break;
        }
    }
    assert_eq!(
        acks, 2,
        "FUA write and FLUSH acknowledged under nvlog durability without disk I/O"
    );
    let (stats, live, _, _) = s.log_state().unwrap();
    assert_eq!((stats.records, live), (1, 1));
    // Crash: the log region survives, the disk never got the data.
    let saved = snapshot(&s);
    drop(s);
    let mut s = logged_server(RamDisk::new(DISK as usize, 64), &saved, Durability::Nvlog);
    assert!(s.log_state().unwrap().3, "replay pending");
    // Reads see the logged data even before the replay reached the disk (overlay), and the
    // replay then writes it to the disk.
    let c = connect(&mut s, 0, "disk0", false);
    let (c, r) = exchange(&mut s, c, &[(cmd::READ, 0, 3, 8192, 256 << 10, Vec::new())]);
    assert!(r[0].data == data, "read after replay");
    for _ in 0..100 {
        s.poll_disks();
    }
    let (stats, live, _, replaying) = s.log_state().unwrap();
    assert_eq!((stats.replayed, live, replaying), (1, 0, false));
    // New writes are logged again after the replay.
    let (_, r) = exchange(&mut s, c, &[(cmd::WRITE, 0, 4, 0, 4096, pattern(6, 4096))]);
    assert_eq!(r[0].error, 0);
    assert_eq!(s.log_state().unwrap().0.records, 1);
}

#[test]
fn disk_durability_flush_waits_for_the_consistency_point() {
    let region = alloc::vec![0u8; LOG_PAGES * 4096];
    let mut s = logged_server(RamDisk::new(DISK as usize, 64), &region, Durability::Disk);
    let c = connect(&mut s, 0, "disk0", true);
    let reqs: Vec<Req> = (0..20u64)
        .map(|i| (cmd::WRITE, 0, i, i * 65536, 65536, pattern(i, 65536)))
        .collect();
    let (c, r) = exchange(&mut s, c, &reqs);
    assert!(r.iter().all(|r| r.error == 0));
    let (c, r) = exchange(&mut s, c, &[(cmd::FLUSH, 0, 100, 0, 0, Vec::new())]);
    assert_eq!(r[0].error, 0);
    let (_, live, _, _) = s.log_state().unwrap();
    assert_eq!(
        live, 0,
        "FLUSH returned only after every record was retired"
    );
    let reads: Vec<Req> = (0..20u64)
        .map(|i| (cmd::READ, 0, 200 + i, i * 65536, 65536, Vec::new()))
        .collect();
    let (_, r) = exchange(&mut s, c, &reads);
    for rep in &r {
        assert!(rep.data == pattern(rep.cookie - 200, 65536));
    }
}

#[test]
fn overlapping_logged_writes_land_in_order() {
    let region = alloc::vec![0u8; LOG_PAGES * 4096];
    let mut s = logged_server(RamDisk::new(DISK as usize, 64), &region, Durability::Disk);
    let c = connect(&mut s, 0, "disk0", false);
    // Many overwrites of the same blocks, pipelined: the last one wins, before and after
    // the consistency points.
    let reqs: Vec<Req> = (0..30u64)
        .map(|i| (cmd::WRITE, 0, i, (i % 3) * 4096, 8192, pattern(i, 8192)))
        .collect();
    let (c, _) = exchange(&mut s, c, &reqs);
    let (_, r) = exchange(
        &mut s,
        c,
        &[
            (cmd::FLUSH, 0, 99, 0, 0, Vec::new()),
            (cmd::READ, 0, 100, 0, 16384, Vec::new()),
        ],
    );
    let read = r.iter().find(|r| r.cookie == 100).unwrap();
    let mut want = alloc::vec![0u8; 16384];
    for i in 0..30u64 {
        let at = ((i % 3) * 4096) as usize;
        want[at..at + 8192].copy_from_slice(&pattern(i, 8192));
    }
    assert!(read.data == want);
}

#[test]
fn a_vanished_logged_writer_releases_its_log_pages() {
    let region = alloc::vec![0u8; LOG_PAGES * 4096];
    let mut s = logged_server(RamDisk::new(DISK as usize, 64), &region, Durability::Nvlog);
    let free = s.log_state().unwrap().2;
    let mut a = connect(&mut s, 0, "disk0", false);
    a.push(&request(cmd::WRITE, 0, 1, 0, 1 << 20));
    a.push(&pattern(1, 100_000));
    let mut cs = [a];
    run(&mut s, &mut cs, |cs| cs[0].pipe.to_server.is_empty());
    assert!(
        s.log_state().unwrap().2 < free,
        "pages reserved for the arriving payload"
    );
    s.drop_conn(0);
    assert_eq!(s.log_state().unwrap().2, free);
    assert_eq!(s.log_state().unwrap().0.records, 0, "nothing committed");
}
