//! Hostile clients against the real guest (issue 13 §1): a flood of connections that never
//! negotiate, and a client that never reads its replies. A real client must keep being
//! served, within the handshake deadline, and the guest must neither run out of memory nor
//! restart.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_qemu::builder::{Machine, Nic};
use tandem_qemu::nbd_client::NbdClient;
use tandem_qemu::size::ByteSize;
use tandem_qemu::vm::Vm;
use tandem_tests::*;

/// The guest's handshake deadline in these tests (`nbd.handshake_ms`).
const DEADLINE: Duration = Duration::from_secs(10);
/// What a real client may take on top of the deadline under emulation on a loaded host.
const SLACK: Duration = Duration::from_secs(10);
/// The guest's stall time in these tests (`nbd.stall_ms`).
const STALL: Duration = Duration::from_secs(5);

struct Guest {
    vm: Vm,
    addr: SocketAddr,
    mgmt: SocketAddr,
    key: tandem_qemu::mgmt::Key,
    _dir: tandem_qemu::scratch::TempDir,
}

impl Guest {
    /// The guest's heap in use, from the authenticated management port's `status`.
    fn heap_used(&self) -> u64 {
        let line = tandem_qemu::mgmt::command(self.mgmt, &self.key, "status", SLACK)
            .unwrap_or_else(|e| panic!("management status: {e:#}"));
        tandem_formats::mgmt_status::Status::parse(&line)
            .unwrap_or_else(|e| panic!("status line {line:?}: {e:?}"))
            .heap_used
    }
}

fn boot() -> Guest {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let (port, mport) = (free_port(), free_port());
    let key = tandem_qemu::mgmt::generate_key().unwrap();
    let cmd = guest_command(Machine::Q35, dir.path())
        .disk(sparse_disk(dir.path(), "a.raw", ByteSize::mib(64)))
        .nic(
            Nic::user()
                .mac(test_mac())
                .forward(port, 10809)
                .forward(mport, 10810),
        )
        .cmdline(&format!(
            "nbd.handshake_ms={} nbd.stall_ms={} {}",
            DEADLINE.as_millis(),
            STALL.as_millis(),
            tandem_qemu::mgmt::cmdline_words(&key, false)
        ));
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_for_line("NBD export", BOOT_TIMEOUT, |l| {
        l.text.starts_with("TANDEM NBD ")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Guest {
        vm,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        mgmt: SocketAddr::from((Ipv4Addr::LOCALHOST, mport)),
        key,
        _dir: dir,
    }
}

/// A real client connects, negotiates and reads 4 KiB; returns how long it took.
fn real_client(vm: &Vm, addr: SocketAddr) -> Duration {
    let t = Instant::now();
    let mut c = NbdClient::connect(addr, "blk0", DEADLINE + SLACK).unwrap_or_else(|e| {
        let text = console(vm);
        panic!(
            "a real client was kept out after {:?}: {e}\n{}",
            t.elapsed(),
            &text[text.len().saturating_sub(4000)..]
        )
    });
    c.read(0, 4096)
        .unwrap_or_else(|e| panic!("a real client's READ failed: {e}"));
    c.disconnect();
    t.elapsed()
}

/// Takes in every console line printed so far (the history holds only what was read).
fn drain(vm: &mut Vm) {
    while let tandem_qemu::vm::Poll::Line(_) = vm.poll(Duration::from_millis(200)) {}
}

fn assert_no_restart(vm: &mut Vm) {
    drain(vm);
    let text = console(vm);
    assert!(
        !text.contains("TANDEM RESTART") && !text.contains("PANIC"),
        "the guest restarted or panicked:\n{}",
        &text[text.len().saturating_sub(3000)..]
    );
}

#[test]
fn a_flood_of_silent_connections_does_not_keep_a_real_client_out() {
    let mut g = boot();
    let heap_before = g.heap_used();
    // More silent connections than the guest has sockets; each is kept open.
    let silent: Vec<TcpStream> = (0..40)
        .filter_map(|_| TcpStream::connect_timeout(&g.addr, Duration::from_secs(5)).ok())
        .collect();
    assert!(silent.len() >= 30, "only {} connections made", silent.len());
    let took = real_client(&g.vm, g.addr);
    assert!(
        took < DEADLINE + SLACK,
        "the real client waited {took:?} behind the flood"
    );
    // Keep flooding while real clients come and go: new silent connections every few ms.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, opened, addr) = (stop.clone(), opened.clone(), g.addr);
        std::thread::spawn(move || {
            let mut keep = Vec::new();
            let until = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < until && keep.len() < 3000 {
                if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    keep.push(s);
                    opened.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    for round in 0..3 {
        let took = real_client(&g.vm, g.addr);
        assert!(
            took < DEADLINE + SLACK,
            "round {round}: the real client waited {took:?} behind a continuous flood"
        );
    }
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    assert!(
        opened.load(Ordering::SeqCst) > 0,
        "the flood made no connection"
    );
    let heap_after = g.heap_used();
    eprintln!("heap_used: {heap_before} before the flood, {heap_after} after");
    // 24 sockets at 256 KiB of buffers each is the most the NBD service can hold.
    assert!(
        heap_after < heap_before + (24 << 18) + (1 << 20),
        "heap grew from {heap_before} to {heap_after} under the flood"
    );
    g.vm.wait_for_line("a silent connection evicted or timed out", SLACK, |l| {
        l.text.contains("evicting connection") || l.text.contains("handshake deadline passed")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_no_restart(&mut g.vm);
    drop(silent);
}

/// Negotiates `blk0` with NBD_OPT_GO on a raw socket; returns the socket in transmission.
fn raw_negotiate(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
    let name = b"blk0";
    let mut opt = Vec::new();
    opt.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
    opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    opt.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
    opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
    opt.extend_from_slice(name);
    opt.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&opt).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        match kind {
            1 => return s, // NBD_REP_ACK
            3 => {}        // NBD_REP_INFO
            _ => panic!("GO refused: reply type {kind:#x}"),
        }
    }
}

#[test]
fn a_client_that_never_reads_its_replies_does_not_exhaust_the_guest() {
    let mut g = boot();
    let mut deaf = raw_negotiate(g.addr);
    // One other client, connected for the whole test (new connections would make sockets,
    // 256 KiB of buffers each, and blur the heap figures).
    let mut other = NbdClient::connect(g.addr, "blk0", DEADLINE + SLACK).unwrap();
    let heap_before = g.heap_used();
    let mut samples = Vec::new();
    deaf.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // READs past the end, as fast as the guest takes them, never reading a reply.
    let past_end = 64 << 20;
    let mut sent = 0u64;
    let mut req = Vec::new();
    for cookie in 0..1024u64 {
        req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes()); // READ
        req.extend_from_slice(&cookie.to_be_bytes());
        req.extend_from_slice(&(past_end as u64).to_be_bytes());
        req.extend_from_slice(&4096u32.to_be_bytes());
    }
    let until = Instant::now() + Duration::from_secs(20);
    let mut blocked_since: Option<Instant> = None;
    while Instant::now() < until {
        match deaf.write(&req) {
            Ok(n) if n > 0 => {
                sent += n as u64;
                blocked_since = None;
            }
            _ => {
                // The guest stopped reading: TCP backpressure. Meanwhile others are served.
                blocked_since.get_or_insert_with(Instant::now);
                let t = Instant::now();
                if let Err(first) = other.read(0, 4096) {
                    // A connection dropped under emulation on a loaded host is a reconnect
                    // away; what must hold is that the other client is served at all.
                    other = NbdClient::connect(g.addr, "blk0", DEADLINE + SLACK)
                        .unwrap_or_else(|e| panic!("reconnecting after {first}: {e}"));
                    other.read(0, 4096).unwrap_or_else(|e| {
                        panic!("another client's READ beside the deaf one: {e}")
                    });
                }
                let took = t.elapsed();
                assert!(took < SLACK, "a READ took {took:?} beside the deaf one");
                samples.push(g.heap_used());
            }
        }
        if blocked_since.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            break;
        }
    }
    assert!(
        blocked_since.is_some(),
        "the guest kept reading requests whose replies were never read ({sent} bytes)"
    );
    // Far fewer requests taken than a queue without bound would have taken.
    assert!(
        sent < 64 << 20,
        "{sent} bytes of requests taken from a client that reads nothing"
    );
    samples.push(g.heap_used());
    other.disconnect();
    let took = real_client(&g.vm, g.addr);
    assert!(took < SLACK, "a real client took {took:?}");
    eprintln!(
        "heap_used: {heap_before} before; {} to {} over {} samples while a client read nothing",
        samples.iter().min().unwrap_or(&0),
        samples.iter().max().unwrap_or(&0),
        samples.len()
    );
    // Flat: the reply queue is bounded (64 KiB) whatever the client sends. (The management
    // connection that asks may take a socket of its own once: 256 KiB.)
    let peak = samples.iter().copied().max().unwrap_or(heap_before);
    assert!(
        peak < heap_before + (512 << 10),
        "heap grew from {heap_before} to {peak} with a client that reads nothing: {samples:?}"
    );
    assert!(samples.len() >= 3, "too few samples: {samples:?}");
    assert_no_restart(&mut g.vm);
}

#[test]
fn clients_that_stop_half_way_through_large_writes_hold_nothing_for_long() {
    let mut g = boot();
    let heap_before = g.heap_used();
    // Four clients each announce a 32 MiB write, send 3 MiB of it, and stop.
    let stuck: Vec<TcpStream> = (0..4)
        .map(|i| {
            let mut s = raw_negotiate(g.addr);
            let mut req = Vec::new();
            req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
            req.extend_from_slice(&0u16.to_be_bytes());
            req.extend_from_slice(&1u16.to_be_bytes()); // WRITE
            req.extend_from_slice(&(i as u64).to_be_bytes());
            req.extend_from_slice(&((i as u64) << 24).to_be_bytes());
            req.extend_from_slice(&(32u32 << 20).to_be_bytes());
            s.write_all(&req).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(&vec![0xeeu8; 3 << 20]).unwrap();
            s
        })
        .collect();
    // Everyone else writes and reads back meanwhile.
    let mut c = NbdClient::connect(g.addr, "blk0", DEADLINE + SLACK).unwrap();
    let data = vec![0x42u8; 256 << 10];
    c.write(60 << 20, &data, true)
        .unwrap_or_else(|e| panic!("a FUA write beside the stalled ones: {e}"));
    assert_eq!(c.read(60 << 20, 256 << 10).unwrap(), data);
    c.disconnect();
    // After the stall time the stalled clients are dropped, and what they held is released.
    g.vm.wait_for_line("the stalled writers closed", STALL + SLACK, |l| {
        l.text.contains("stalled: no byte moved")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let took = real_client(&g.vm, g.addr);
    assert!(took < SLACK, "a real client took {took:?}");
    let heap_after = g.heap_used();
    eprintln!("heap_used: {heap_before} before, {heap_after} after four stalled writers");
    assert!(
        heap_after < heap_before + (24 << 18),
        "heap grew from {heap_before} to {heap_after}"
    );
    assert_no_restart(&mut g.vm);
    drop(stuck);
}
