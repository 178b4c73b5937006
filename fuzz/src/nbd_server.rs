//! `nbd_server`: the whole NBD server (`unikernel::nbd::server::Server`) over RAM disks,
//! with or without the write log, fed arbitrary client bytes through in-memory streams.
//!
//! Input: `[config, cut seed, pool size, client bytes...]`. Config bits: 0 structured
//! replies, 1 the read-only export, 2 the handshake comes from the fuzzer too (else a valid
//! one is sent first and the bytes are transmission-phase requests), 3 write log attached,
//! 4 its durability (`nvlog` / `disk`), 5 two clients (each sends the same bytes, cut apart),
//! 6-7 how many bytes the "socket" takes per send.
//!
//! Checked, besides no panic and no hang: memory stays bounded (the pool is fixed, the
//! server reads no more than it can hold, and the harness drains what is sent); when every
//! client has gone, every device request completes and every pool buffer is free again (no
//! buffer leaks whatever the client sent); the server never reports more bytes written than
//! the clients sent.

use std::collections::VecDeque;

use frontend_drivers::ramdisk::RamDisk;
use hpdi::{BufferPool, DmaMemory, HostMemory, QueuePair};
use tandem_formats::nbd_wire::{self as wire, opt};
use unikernel::nbd::server::{ConnState, Disk, Durability, Server, ServerStats, Stream, CHUNK};
use unikernel::nvlog::log::Nvlog;

use crate::nbd_handshake::exports;
use crate::{Input, Rng};

/// Bytes per RAM disk (small: every run builds its disks anew); the exports' size.
pub const DISK: usize = 256 << 10;
const LOG_PAGES: usize = 64;

#[derive(Default)]
struct Pipe {
    to_server: VecDeque<u8>,
    sent: usize,
    send_limit: usize,
    /// Every few sends the socket is full (0 taken): backpressure.
    full_every: usize,
    calls: usize,
}

impl Stream for Pipe {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.to_server.len());
        for (d, s) in buf.iter_mut().zip(self.to_server.drain(..n)) {
            *d = s;
        }
        n
    }

    fn send(&mut self, data: &[u8]) -> usize {
        self.calls += 1;
        if self.full_every > 0 && self.calls.is_multiple_of(self.full_every) {
            return 0;
        }
        let n = data.len().min(self.send_limit.max(1));
        self.sent += n;
        n
    }
}

fn option(code: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// The client side of a valid handshake selecting `name` (with structured replies and
/// `base:allocation` if asked).
pub fn handshake(name: &str, structured: bool) -> Vec<u8> {
    let mut v = 3u32.to_be_bytes().to_vec();
    if structured {
        v.extend(option(opt::STRUCTURED_REPLY, &[]));
        let mut meta = Vec::new();
        meta.extend_from_slice(&(name.len() as u32).to_be_bytes());
        meta.extend_from_slice(name.as_bytes());
        meta.extend_from_slice(&1u32.to_be_bytes());
        meta.extend_from_slice(&(wire::BASE_ALLOCATION.len() as u32).to_be_bytes());
        meta.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
        v.extend(option(opt::SET_META_CONTEXT, &meta));
    }
    let mut go = Vec::new();
    go.extend_from_slice(&(name.len() as u32).to_be_bytes());
    go.extend_from_slice(name.as_bytes());
    go.extend_from_slice(&0u16.to_be_bytes());
    v.extend(option(opt::GO, &go));
    v
}

fn build(pool_buffers: usize, log: Option<Durability>) -> Server {
    let disks = (0..2)
        .map(|_| Disk {
            dev: Box::new(RamDisk::new(DISK, 64)),
            queue: QueuePair::new(256).unwrap(),
        })
        .collect();
    let mut pool = BufferPool::host(pool_buffers, CHUNK).unwrap();
    let nvlog = log.map(|_| {
        let mem: Box<dyn DmaMemory> = Box::new(HostMemory::new(LOG_PAGES * 4096));
        let r = pool.add_region(mem, 4096).unwrap();
        Nvlog::open(&mut pool, r, 42).unwrap().0
    });
    let s = Server::new(exports(2), disks, pool, 4);
    match (nvlog, log) {
        (Some(l), Some(d)) => s.with_log(l, d).unwrap(),
        _ => s,
    }
}

pub fn run(data: &[u8]) {
    keep_heap();
    run_stats(data);
}

/// Every run allocates its disks and pool anew (a few MiB): keep glibc from handing that
/// memory back to the kernel between runs, where page faults cost more than the server.
fn keep_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            unsafe extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            // SAFETY: mallopt only changes allocator tunables; called once, before the
            // allocations it affects.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 64 << 20);
                mallopt(M_TRIM_THRESHOLD, 256 << 20);
            }
        });
    }
}

/// What the input's first bytes choose (see the module docs).
struct Setup {
    rng: Rng,
    pool_buffers: usize,
    structured: bool,
    name: &'static str,
    raw: bool,
    log: Option<Durability>,
    clients: usize,
    send_limit: usize,
    full_every: usize,
}

impl Setup {
    fn read(inp: &mut Input) -> Setup {
        let cfg = inp.u8();
        let rng = Rng::new(u64::from(inp.u8()));
        let pool_buffers = 2 + usize::from(inp.u8() % 40);
        let (send_limit, full_every) = match cfg >> 6 {
            0 => (usize::MAX, 0),
            1 => (7000, 0),
            2 => (1, 0),
            _ => (4096, 3),
        };
        Setup {
            rng,
            pool_buffers,
            structured: cfg & 1 != 0,
            name: if cfg & 2 != 0 { "ro" } else { "blk0" },
            raw: cfg & 4 != 0,
            log: (cfg & 8 != 0).then_some(if cfg & 16 != 0 {
                Durability::Nvlog
            } else {
                Durability::Disk
            }),
            clients: if cfg & 32 != 0 { 2 } else { 1 },
            send_limit,
            full_every,
        }
    }
}

/// A client's connection: its slot in the server, its stream, and whether the server
/// closed it.
type Client = (usize, Pipe, bool);

/// Runs one input; returns the server's counters (the seeds' test checks they reach deep).
pub fn run_stats(data: &[u8]) -> ServerStats {
    let mut inp = Input::new(data);
    let mut setup = Setup::read(&mut inp);
    let stream = inp.rest();
    let sent_by_clients = (setup.clients * stream.len()) as u64;

    let mut s = build(setup.pool_buffers, setup.log);
    let baseline = s.pool().available();
    let mut pipes: Vec<Client> = (0..setup.clients)
        .map(|slot| {
            s.accept(slot);
            let mut p = Pipe {
                send_limit: setup.send_limit,
                full_every: setup.full_every,
                ..Default::default()
            };
            if !setup.raw {
                p.to_server.extend(handshake(setup.name, setup.structured));
            }
            (slot, p, false)
        })
        .collect();
    deliver(&mut s, &mut pipes, stream, &mut setup.rng);
    leave(&mut s, &pipes);
    assert_eq!(
        s.pool().available(),
        baseline,
        "pool buffers leaked after every client left"
    );
    assert!(s.stats.bytes_written <= sent_by_clients);
    s.stats
}

/// Deliver the stream piece by piece (each client sends all of it, cut its own way), then
/// let the server run dry.
fn deliver(s: &mut Server, pipes: &mut [Client], stream: &[u8], rng: &mut Rng) {
    let clients = pipes.len();
    let mut left: Vec<&[u8]> = vec![stream; clients];
    let mut idle_rounds = 0;
    let mut last = None;
    for _ in 0..100_000 {
        let to = (rng.next_u64() % clients as u64) as usize;
        if !left[to].is_empty() {
            let n = rng.piece().min(left[to].len());
            pipes[to].1.to_server.extend(&left[to][..n]);
            left[to] = &left[to][n..];
        }
        for (slot, pipe, closed) in pipes.iter_mut().filter(|p| !p.2) {
            if s.service(*slot, pipe) == ConnState::Close {
                *closed = true;
            }
        }
        s.poll_disks();
        // Once everything is delivered, stop when nothing moves any more.
        if left.iter().all(|l| l.is_empty()) {
            let now = (
                s.stats,
                pipes
                    .iter()
                    .map(|p| (p.1.sent, p.1.to_server.len(), p.2))
                    .collect::<Vec<_>>(),
                s.device_requests(),
                s.log_activity(),
            );
            if last.as_ref() == Some(&now) {
                idle_rounds += 1;
                if idle_rounds > 3 {
                    break;
                }
            } else {
                idle_rounds = 0;
            }
            last = Some(now);
        }
    }
}

/// Every client goes away; what is in flight completes.
fn leave(s: &mut Server, pipes: &[Client]) {
    for (slot, _, closed) in pipes {
        if !closed {
            s.drop_conn(*slot);
        }
    }
    for _ in 0..10_000 {
        s.poll_disks();
        if s.device_requests() == 0 && !s.log_activity().0 {
            break;
        }
    }
    assert_eq!(s.device_requests(), 0, "device requests never completed");
}
