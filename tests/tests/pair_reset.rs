//! Clients learn of a takeover at once (issue 16 §5): a real Linux TCP client with an ordinary
//! 5 s read timeout waits for the rest of a reply that node A will never send (A is SIGKILLed
//! in the middle of it). The survivor B takes A's address over, finds the client in A's
//! connection table in the shared region, and resets it through an RFC 5961 challenge ACK
//! (`unikernel::ha::reset`). The client must see ECONNRESET, well before its timeout.
//!
//! The request is a large READ: A acknowledges it and starts the reply, which stalls on the
//! client's receive window because the client reads only the reply header before the kill.
//! After the kill the client reads what arrived and then waits, with nothing unacknowledged
//! on either side: nothing of its own would ever tell it that A is gone, only its timeout.
//!
//! Timings are printed (host clock): from the kill, and from the moment B's state word turned
//! `covering` (B serves on A's address) to the client's ECONNRESET. The timing goal belongs to
//! `tandem bench failover` (its "client reset" phase); this test asserts correctness.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tandem_formats::nbd_wire::{
    be32, cmd, opt, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, NBDMAGIC, REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
};
use tandem_formats::pair_region::{conn, get, word, State};
use tandem_qemu::pair::{Node, Pair, PairSpec, Sig};
use tandem_qemu::scratch::TempDir;

/// Bound for anything that involves a boot or a takeover (TCG on a loaded 2-CPU host).
const LONG: Duration = Duration::from_secs(90);
/// The client's read timeout: what it would wait without the reset.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The READ that A never finishes (far more than the client's receive window).
const READ_LEN: u32 = 8 << 20;

struct Fixture {
    pair: Pair,
    _dir: TempDir,
}

fn up() -> Fixture {
    let dir = tandem_qemu::scratch::tempdir().expect("temp dir");
    let mut spec = PairSpec::new(dir.path().join("pair"));
    spec.image = Some(tandem_tests::guest_image().to_path_buf());
    spec.timeout_ms = 500;
    spec.fence_timeout_ms = 1500;
    spec.disk_size = tandem_qemu::size::ByteSize::mib(32);
    spec.region_size = tandem_qemu::size::ByteSize::mib(32);
    let pair = Pair::up(&spec).unwrap_or_else(|e| panic!("pair up: {e:#}"));
    Fixture { pair, _dir: dir }
}

/// Waits (bounded) for `cond`.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Connects to `export` at `addr`: fixed newstyle, NBD_OPT_EXPORT_NAME, every I/O bounded by
/// the client's timeout.
fn nbd_connect(addr: SocketAddr, export: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_nodelay(true)?;
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet)?;
    assert_eq!(greet[..8], NBDMAGIC.to_be_bytes());
    assert_eq!(greet[8..16], IHAVEOPT.to_be_bytes());
    let flags = u16::from_be_bytes([greet[16], greet[17]]);
    let mut msg = u32::from(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES))
        .to_be_bytes()
        .to_vec();
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&opt::EXPORT_NAME.to_be_bytes());
    msg.extend_from_slice(&(export.len() as u32).to_be_bytes());
    msg.extend_from_slice(export.as_bytes());
    s.write_all(&msg)?;
    let zeroes = if flags & FLAG_NO_ZEROES != 0 { 0 } else { 124 };
    let mut info = vec![0u8; 10 + zeroes];
    s.read_exact(&mut info)?;
    Ok(s)
}

/// What the client saw.
struct Seen {
    /// How its wait for the reply ended.
    kind: ErrorKind,
    /// When (host clock).
    at: Instant,
    /// Reply bytes it got in all (header included).
    bytes: usize,
}

/// The client: connects, sends the READ, reads the reply's header, reports its local
/// address on `ready`, waits for `go` (A was killed), then reads until the connection fails.
fn client(
    addr: SocketAddr,
    ready: mpsc::Sender<SocketAddr>,
    go: mpsc::Receiver<()>,
) -> std::io::Result<Seen> {
    let mut s = nbd_connect(addr, "blk0")?;
    let mut req = Vec::with_capacity(28);
    req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&cmd::READ.to_be_bytes());
    req.extend_from_slice(&7u64.to_be_bytes());
    req.extend_from_slice(&0u64.to_be_bytes());
    req.extend_from_slice(&READ_LEN.to_be_bytes());
    s.write_all(&req)?;
    let mut hdr = [0u8; 16];
    s.read_exact(&mut hdr)?;
    assert_eq!(be32(&hdr[0..4]), SIMPLE_REPLY_MAGIC);
    assert_eq!(be32(&hdr[4..8]), 0, "the READ failed");
    ready.send(s.local_addr()?).expect("main thread");
    go.recv().expect("main thread");
    let mut bytes = hdr.len();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                return Ok(Seen {
                    kind: ErrorKind::UnexpectedEof,
                    at: Instant::now(),
                    bytes,
                })
            }
            Ok(n) => bytes += n,
            Err(e) => {
                return Ok(Seen {
                    kind: e.kind(),
                    at: Instant::now(),
                    bytes,
                })
            }
        }
    }
}

/// One trial: the client waits on A, A is killed, B takes over; returns (ms from the kill, ms
/// from B covering) to the client's reset.
fn trial(pair: &Pair, round: usize) -> (f64, f64) {
    let a: SocketAddr = format!("{}:10809", pair.ip(Node::A))
        .parse()
        .expect("address");
    let ns = pair.info().ns_pid;
    let (ready_tx, ready) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let client = std::thread::spawn(move || {
        tandem_qemu::in_netns::run(ns, || client(a, ready_tx, go_rx))
            .unwrap_or_else(|e| panic!("entering the pair's namespace: {e:#}"))
    });
    let local = ready
        .recv_timeout(LONG)
        .unwrap_or_else(|_| panic!("round {round}: the client never got its reply header"));
    // A recorded the connection in its table before anything failed.
    let recorded = conn::Conn {
        local_ip: pair
            .ip(Node::A)
            .parse::<std::net::Ipv4Addr>()
            .unwrap()
            .octets(),
        local_port: 10809,
        remote_ip: match local.ip() {
            std::net::IpAddr::V4(v4) => v4.octets(),
            other => panic!("client address {other}"),
        },
        remote_port: local.port(),
    };
    wait_for("the connection in A's table", || {
        conn::connections(pair.region(), 0).contains(&recorded)
    });
    // B's state word, sampled from the kill on.
    let region =
        tandem_qemu::pair::region::RegionMap::open(&pair.paths().region(), false).expect("map");
    let covering_us = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let killed = Instant::now();
    let sampler = {
        let (c, on) = (covering_us.clone(), sampling.clone());
        std::thread::spawn(move || {
            while on.load(Ordering::SeqCst) && c.load(Ordering::SeqCst) == 0 {
                if get(&region, 1, word::STATE) == State::Covering as u64 {
                    c.store(killed.elapsed().as_micros().max(1) as u64, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    pair.kill(Node::A, Sig::Kill).expect("kill A");
    go.send(()).expect("client thread");
    let seen = client
        .join()
        .expect("client thread")
        .unwrap_or_else(|e| panic!("round {round}: the client failed before the kill: {e}"));
    sampling.store(false, Ordering::SeqCst);
    sampler.join().expect("sampler");
    let from_kill = seen.at.duration_since(killed);
    let covering = covering_us.load(Ordering::SeqCst);
    assert_eq!(
        seen.kind,
        ErrorKind::ConnectionReset,
        "round {round}: the client's wait ended in {:?} after {from_kill:?} ({} bytes), not a reset",
        seen.kind,
        seen.bytes
    );
    assert!(covering > 0, "round {round}: B never turned covering");
    assert!(
        from_kill < CLIENT_TIMEOUT - Duration::from_secs(1),
        "round {round}: reset after {from_kill:?}: too close to the client's own timeout"
    );
    assert!(
        (seen.bytes as u64) < u64::from(READ_LEN),
        "round {round}: A finished the reply before it died"
    );
    // The reset came from B's resets of A's clients: B started one for this client and
    // saw its socket gone.
    let needle = format!("client={}:{}", local.ip(), local.port());
    wait_for("B's report of the client's reset", || {
        pair.console_lines(Node::B, &needle)
            .iter()
            .any(|l| l.contains("result=gone"))
    });
    let started = pair.console_lines(Node::B, "step=reset-clients");
    assert!(
        started.len() > round && !started[round].contains("clients=0"),
        "round {round}: {started:?}"
    );
    let kill_ms = from_kill.as_secs_f64() * 1e3;
    let covering_ms = covering as f64 / 1e3;
    eprintln!(
        "round {round}: client reset {kill_ms:.1} ms after the kill, {:.1} ms after B turned covering ({covering_ms:.1} ms after the kill)",
        kill_ms - covering_ms
    );
    (kill_ms, kill_ms - covering_ms)
}

/// Two rounds: A killed under a waiting client, B resets the client; A returns and gets its
/// disks back (automatic giveback), and the next round does it again in A's new life.
#[test]
fn a_client_waiting_for_a_reply_is_reset_as_soon_as_the_survivor_takes_over() {
    let f = up();
    let pair = &f.pair;
    for round in 0..2 {
        trial(pair, round);
        pair.start(Node::A).expect("start A");
        pair.wait_console(Node::B, "step=released", round, LONG)
            .unwrap_or_else(|e| panic!("giveback: {e:#}"));
        wait_for("A serving again", || {
            State::from_word(get(pair.region(), 0, word::STATE)) == Some(State::Serving)
        });
    }
}
