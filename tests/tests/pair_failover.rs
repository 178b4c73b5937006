//! Failover pair integration tests: two real guests under QEMU in the pair's own network
//! namespace (`tandem pair`), a shared region file, real clients.
//!
//! The writer is the write ledger (`tandem_qemu::ledger`): each write puts a unique pattern
//! in its own block and counts as acknowledged exactly when its NBD reply arrives. Every test
//! ends by reading every block back through the failed node's address and checking it holds
//! the last acknowledged write (or an unanswered one that may have landed), nothing else.
//! Clients run in the namespace on a thread that joined it (`in_netns`), which needs root;
//! CI runs as root.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tandem_formats::pair_region::{get, word, State};
use tandem_qemu::ledger::{self, Ledger, WriterReport, WriterSpec};
use tandem_qemu::nbd_client::NbdClient;
use tandem_qemu::pair::{Giveback, Node, Pair, PairSpec, Sig};
use tandem_qemu::scratch::TempDir;

/// Bound for anything that involves a boot or a takeover (TCG on a loaded 2-CPU host).
const LONG: Duration = Duration::from_secs(90);

struct Fixture {
    pair: Pair,
    _dir: TempDir,
}

fn up(tweak: impl FnOnce(&mut PairSpec)) -> Fixture {
    let dir = tandem_qemu::scratch::tempdir().expect("temp dir");
    let mut spec = PairSpec::new(dir.path().join("pair"));
    spec.image = Some(tandem_tests::guest_image().to_path_buf());
    spec.timeout_ms = 500;
    spec.fence_timeout_ms = 1500;
    spec.disk_size = tandem_qemu::size::ByteSize::mib(32);
    spec.region_size = tandem_qemu::size::ByteSize::mib(32);
    tweak(&mut spec);
    let pair = Pair::up(&spec).unwrap_or_else(|e| panic!("pair up: {e:#}"));
    Fixture { pair, _dir: dir }
}

fn nbd_addr(pair: &Pair, n: Node) -> SocketAddr {
    format!("{}:10809", pair.ip(n)).parse().expect("address")
}

fn word_of(pair: &Pair, n: Node, w: u64) -> u64 {
    get(pair.region(), n.index(), w)
}

/// Node `n`'s state word, as the enum (`None` for a value no state has).
fn state_of(pair: &Pair, n: Node) -> Option<State> {
    State::from_word(word_of(pair, n, word::STATE))
}

/// Waits (bounded) for `cond`, polling every `every`.
fn wait_for(what: &str, timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handle: JoinHandle<WriterReport>,
}

impl Writer {
    /// A ledger writer on `export` at `addr`, in the pair's namespace.
    fn start(pair: &Pair, addr: SocketAddr, base: u64, slots: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let ns = pair.info().ns_pid;
        let spec = WriterSpec {
            addr,
            export: "blk0".into(),
            base,
            slots,
            io_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            reconnect_for: LONG,
            acked: acked.clone(),
            origin: Instant::now(),
        };
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            tandem_qemu::in_netns::run(ns, || ledger::run_writer(&spec, &s))
                .unwrap_or_else(|e| panic!("writer: {e:#}"))
        });
        Writer {
            stop,
            acked,
            handle,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until `more` further writes were acknowledged.
    fn wait_acks(&self, more: u64, what: &str) {
        let target = self.acked() + more;
        wait_for(what, LONG, Duration::from_millis(5), || {
            self.acked() >= target
        });
    }

    fn finish(self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        let r = self.handle.join().expect("writer thread");
        assert!(r.gave_up.is_none(), "the writer gave up: {:?}", r.gave_up);
        r
    }
}

/// Reads every block of `ledger` through `addr` and fails on any that is not what the
/// ledger allows.
fn verify(pair: &Pair, addr: SocketAddr, ledger: &Ledger, when: &str) {
    let ns = pair.info().ns_pid;
    let bad = tandem_qemu::in_netns::run(ns, || {
        let mut c = NbdClient::connect(addr, "blk0", Duration::from_secs(10))?;
        let bad = ledger.verify(&mut c)?;
        c.disconnect();
        Ok::<_, anyhow::Error>(bad)
    })
    .and_then(|r| r)
    .unwrap_or_else(|e| panic!("{when}: reading back through {addr}: {e:#}"));
    assert!(
        ledger.acked_writes > 0,
        "{when}: the writer got no acknowledged write at all"
    );
    assert!(
        bad.is_empty(),
        "{when}: {} of {} blocks do not hold their last acknowledged write: {:?}",
        bad.len(),
        ledger.slots.len(),
        &bad[..bad.len().min(5)]
    );
}

fn count(pair: &Pair, n: Node, needle: &str) -> usize {
    pair.console_lines(n, needle).len()
}

/// Waits until node `n`'s console has `k` lines containing `needle`.
fn wait_lines(pair: &Pair, n: Node, needle: &str, k: usize) {
    pair.wait_console(n, needle, k - 1, LONG)
        .unwrap_or_else(|e| panic!("node {}: {e:#}", n.name()));
}

/// SIGKILL node A while a writer writes to A's address, twice: once at an arbitrary point of
/// the write load and once while A runs a consistency point (observed in the region). Each
/// time B takes over, the writer reconnects to the same address, and every acknowledged
/// write reads back through it; then A restarts and gets its disks back (automatic giveback).
#[test]
fn sigkill_under_writes_and_during_a_consistency_point_loses_no_acknowledged_write() {
    let f = up(|_| {});
    let pair = &f.pair;
    let a = nbd_addr(pair, Node::A);
    let mut ledgers = Vec::new();
    for (round, during_cp) in [(0usize, false), (1, true)] {
        let w = Writer::start(pair, a, round as u64 * (4 << 20), 256);
        w.wait_acks(50, "acknowledged writes to A");
        if during_cp {
            wait_for(
                "a consistency point on A",
                LONG,
                Duration::from_micros(200),
                || word_of(pair, Node::A, word::CP_ACTIVE) == 1,
            );
        }
        pair.kill(Node::A, Sig::Kill).expect("kill A");
        wait_lines(pair, Node::B, "step=serving", round + 1);
        w.wait_acks(
            50,
            "acknowledged writes through A's address after the takeover",
        );
        let r = w.finish();
        assert!(
            !r.outages.is_empty(),
            "round {round}: the writer saw no outage although A was killed"
        );
        verify(pair, a, &r.ledger, &format!("round {round}, served by B"));
        ledgers.push(r.ledger);
        // A comes back and gets its disks back.
        pair.start(Node::A).expect("start A");
        wait_lines(pair, Node::B, "step=released", round + 1);
        wait_for("A serving again", LONG, Duration::from_millis(20), || {
            state_of(pair, Node::A) == Some(State::Serving)
        });
    }
    for (round, l) in ledgers.iter().enumerate() {
        verify(pair, a, l, &format!("round {round}, served by A again"));
    }
    let lines = pair.console_lines(Node::B, "TANDEM TAKEOVER");
    assert!(
        lines.iter().any(|l| l.contains("via=dead")),
        "B waited for the host's death notice: {lines:?}"
    );
}

/// B dies while it replays A's log; B restarts, finds it holds A's disks from its previous
/// life, replays again and serves: replay is idempotent and nothing acknowledged is lost.
#[test]
fn replay_interrupted_by_the_survivors_death_is_replayed_again() {
    // Consistency points held on each node's own service: A's writes stay in its log, so B
    // has a long replay to do (a covering service ignores the hold).
    let f = up(|s| s.cmdline.push("debug.cp=hold".into()));
    let pair = &f.pair;
    let a = nbd_addr(pair, Node::A);
    let w = Writer::start(pair, a, 0, 1024);
    w.wait_acks(1500, "acknowledged writes to A");
    let r = w.finish();
    pair.kill(Node::A, Sig::Kill).expect("kill A");
    let mut seen = 0;
    wait_for(
        "B replaying A's log",
        LONG,
        Duration::from_micros(100),
        || {
            seen = word_of(pair, Node::B, word::REPLAY_LEFT);
            seen > 0
        },
    );
    pair.kill(Node::B, Sig::Kill).expect("kill B");
    assert_eq!(
        count(pair, Node::B, "step=serving"),
        0,
        "B finished its takeover before it was killed (replay left: {seen})"
    );
    pair.start(Node::B).expect("start B");
    wait_lines(pair, Node::B, "step=serving", 1);
    let replays = pair.console_lines(Node::B, "step=replay records=");
    assert!(
        replays.len() >= 2 && !replays.last().unwrap().contains("records=0"),
        "B replayed A's log twice: {replays:?}"
    );
    verify(pair, a, &r.ledger, "after the second replay, served by B");
}

/// A hangs (SIGSTOP) while a writer writes to it. B claims A's disks but must not touch them
/// until A obeys: A resumes (SIGCONT), sees the claim, stops serving, acknowledges; B then
/// takes over. Everything the client saw acknowledged, by A or by B, reads back.
#[test]
fn a_hung_node_that_resumes_fences_itself_before_the_survivor_writes() {
    let f = up(|s| {
        s.fence_timeout_ms = 60_000; // the host's kill must not come first here
        s.giveback = Giveback::Manual;
    });
    let pair = &f.pair;
    let a = nbd_addr(pair, Node::A);
    let w = Writer::start(pair, a, 0, 256);
    w.wait_acks(50, "acknowledged writes to A");
    pair.kill(Node::A, Sig::Stop).expect("stop A");
    wait_lines(pair, Node::B, "step=claim", 1);
    // While A is stopped B holds the claim but may not use it.
    let claim = word_of(pair, Node::B, word::CLAIM[0]);
    assert!(word_of(pair, Node::A, word::FENCE_ACK) < claim);
    assert!(word_of(pair, Node::A, word::DEAD) < claim);
    assert_eq!(
        count(pair, Node::B, "step=silenced"),
        0,
        "B went ahead of A's ack"
    );
    let acked_while_stopped = w.acked();
    pair.kill(Node::A, Sig::Cont).expect("continue A");
    wait_lines(pair, Node::A, "TANDEM FENCED", 1);
    wait_lines(pair, Node::B, "step=serving", 1);
    let silenced = pair.console_lines(Node::B, "step=silenced");
    assert!(silenced[0].contains("via=ack"), "{silenced:?}");
    assert!(
        word_of(pair, Node::A, word::FENCE_ACK) >= claim,
        "A acknowledged the claim"
    );
    assert!(
        pair.qemu_pid(Node::A).expect("pid").is_some(),
        "A is alive (standby)"
    );
    wait_for("A in standby", LONG, Duration::from_millis(20), || {
        state_of(pair, Node::A) == Some(State::Standby)
    });
    w.wait_acks(50, "acknowledged writes through A's address, served by B");
    let r = w.finish();
    assert!(r.ledger.acked_writes > acked_while_stopped);
    verify(pair, a, &r.ledger, "after A fenced itself, served by B");
}

/// A hangs and stays hung: the host's fence agent kills it once the claim has gone
/// unacknowledged for the fence timeout, and only then does B touch A's disks.
#[test]
fn a_node_that_stays_hung_is_killed_by_the_fence_agent_before_the_takeover() {
    let f = up(|s| s.fence_timeout_ms = 1000);
    let pair = &f.pair;
    let a = nbd_addr(pair, Node::A);
    let w = Writer::start(pair, a, 0, 256);
    w.wait_acks(50, "acknowledged writes to A");
    let pid = pair.qemu_pid(Node::A).expect("pid").expect("A runs");
    pair.kill(Node::A, Sig::Stop).expect("stop A");
    wait_lines(pair, Node::B, "step=serving", 1);
    let silenced = pair.console_lines(Node::B, "step=silenced");
    assert!(silenced[0].contains("via=dead"), "{silenced:?}");
    let events = pair.events().expect("events");
    assert!(
        events.iter().any(|e| e.event == "killed-for-fence"),
        "the fence agent killed A: {events:?}"
    );
    assert!(
        !tandem_qemu::pair::api::process_alive(pid),
        "A's QEMU (pid {pid}) is gone"
    );
    w.wait_acks(50, "acknowledged writes through A's address, served by B");
    let r = w.finish();
    verify(
        pair,
        a,
        &r.ledger,
        "after the fence agent killed A, served by B",
    );
}

/// Data written on both sides survives a takeover and a giveback by command: A's export
/// before and during the takeover, B's own export throughout.
#[test]
fn giveback_round_trip_with_data_written_on_both_sides() {
    let f = up(|s| s.giveback = Giveback::Manual);
    let pair = &f.pair;
    let (a, b) = (nbd_addr(pair, Node::A), nbd_addr(pair, Node::B));
    let run = |addr, base, n| {
        let w = Writer::start(pair, addr, base, 64);
        w.wait_acks(n, "acknowledged writes");
        w.finish().ledger
    };
    let a1 = run(a, 0, 100);
    let b1 = run(b, 0, 100);
    pair.kill(Node::A, Sig::Kill).expect("kill A");
    wait_lines(pair, Node::B, "step=serving", 1);
    let a2 = run(a, 1 << 20, 100);
    let b2 = run(b, 1 << 20, 100);
    pair.start(Node::A).expect("start A");
    wait_for("A in standby", LONG, Duration::from_millis(20), || {
        state_of(pair, Node::A) == Some(State::Standby)
    });
    let seq = pair.giveback(Node::B).expect("giveback");
    pair.wait_request(Node::B, seq, LONG)
        .expect("giveback carried out");
    wait_lines(pair, Node::B, "step=released", 1);
    wait_for("A serving again", LONG, Duration::from_millis(20), || {
        state_of(pair, Node::A) == Some(State::Serving)
    });
    for (l, addr, what) in [
        (&a1, a, "A's data from before the takeover"),
        (&a2, a, "A's data written through B"),
        (&b1, b, "B's own data from before"),
        (&b2, b, "B's own data written while covering"),
    ] {
        verify(pair, addr, l, what);
    }
}

/// Each export's allow-list holds on its own node and, after a takeover, on the survivor that
/// serves it (`pair.peer_export=`): A's blk1 admits only a network the client is not in, so
/// the client is refused it (NBD_REP_ERR_POLICY) before A dies and after B took A's address;
/// A's blk0 admits the client both times, and B's own blk1 is open throughout.
#[test]
fn a_survivor_serves_its_peers_exports_with_the_peers_allow_lists() {
    use tandem_formats::allow_list::AllowList;
    let host = "10.77.0.1";
    let f = up(|s| {
        s.disks = 2;
        let mine = AllowList::parse(&format!("{host}/32")).unwrap();
        let elsewhere = AllowList::parse("192.0.2.0/24").unwrap();
        s.exports = tandem_qemu::pair::export_words(&[
            vec![mine, elsewhere],
            vec![AllowList::OPEN, AllowList::OPEN],
        ]);
    });
    let pair = &f.pair;
    assert_eq!(pair.info().host_ip, host, "the pair's host address moved");
    let (a, b) = (nbd_addr(pair, Node::A), nbd_addr(pair, Node::B));
    let ns = pair.info().ns_pid;
    // Whether `export` at `addr` serves this client a 4 KiB read; the refusal's text if not.
    let serves = |addr: SocketAddr, export: &str| -> Result<(), String> {
        tandem_qemu::in_netns::run(ns, || {
            let mut c = NbdClient::connect(addr, export, Duration::from_secs(10))?;
            c.read(0, 4096)?;
            c.disconnect();
            Ok::<_, tandem_qemu::nbd_client::NbdError>(())
        })
        .unwrap_or_else(|e| panic!("entering the pair's namespace: {e:#}"))
        .map_err(|e| e.to_string())
    };
    let policy = |r: Result<(), String>, what: &str| match r {
        Err(e) if e.contains("0x80000002") => {}
        other => panic!(
            "{what}: expected NBD_REP_ERR_POLICY, got {other:?}; exports: {:?} {:?}",
            pair.console_lines(Node::A, "nbd: export"),
            pair.console_lines(Node::B, "nbd: export")
        ),
    };
    serves(a, "blk0").unwrap_or_else(|e| panic!("A's blk0 before the takeover: {e}"));
    policy(serves(a, "blk1"), "A's blk1 before the takeover");
    serves(b, "blk1").unwrap_or_else(|e| panic!("B's own blk1: {e}"));
    pair.kill(Node::A, Sig::Kill).expect("kill A");
    wait_lines(pair, Node::B, "step=serving", 1);
    serves(a, "blk0").unwrap_or_else(|e| panic!("A's blk0 served by B: {e}"));
    policy(serves(a, "blk1"), "A's blk1 served by B");
    serves(b, "blk1").unwrap_or_else(|e| panic!("B's own blk1 while covering: {e}"));
}

/// NBD over TLS on the pair (`tandem pair up --tls DIR`): both nodes get the credentials in
/// their boot module; a client in the pair's network reads A's export over TLS (`nbdinfo
/// nbds://`) and is refused in clear, and after A dies the survivor serves A's export on A's
/// address over TLS too, under the same certificate.
#[test]
fn the_pair_serves_over_tls_before_and_after_a_takeover() {
    let tmp = tandem_qemu::scratch::tempdir().expect("temp dir");
    let creds = tmp.path().join("tls");
    tandem_qemu::tls::create(
        &creds,
        &["10.77.0.10".into(), "10.77.0.11".into()],
        tandem_qemu::tls::KeyKind::EcdsaP256,
    )
    .expect("tandem tls create");
    let f = up(|s| s.tls = Some(creds.clone()));
    let pair = &f.pair;
    let ns = pair.info().ns_pid;
    let a = pair.ip(Node::A).to_string();
    // nbdinfo inside the pair's network namespace; (success, stdout + stderr).
    let nbdinfo = |uri: String| -> (bool, String) {
        tandem_qemu::in_netns::run(ns, || {
            let out = std::process::Command::new("nbdinfo")
                .arg(&uri)
                .output()
                .unwrap_or_else(|e| panic!("nbdinfo (package libnbd-bin) not runnable: {e}"));
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        })
        .unwrap_or_else(|e| panic!("entering the pair's namespace: {e:#}"))
    };
    let tls_uri = format!("nbds://{a}:10809/blk0?tls-certificates={}", creds.display());
    let (ok, text) = nbdinfo(tls_uri.clone());
    assert!(ok && text.contains("with TLS"), "A over TLS: {text}");
    let (ok, text) = nbdinfo(format!("nbd://{a}:10809/blk0"));
    assert!(!ok, "A served a plaintext client: {text}");
    pair.kill(Node::A, Sig::Kill).expect("kill A");
    wait_lines(pair, Node::B, "step=serving", 1);
    let (ok, text) = nbdinfo(tls_uri);
    assert!(
        ok && text.contains("with TLS"),
        "A's export served by B over TLS: {text}"
    );
}

/// QEMU's own NBD client with `reconnect-delay` keeps one connection open across a
/// takeover: it writes through A, A dies, and its next read (after it reconnected to the
/// same address, now served by B) returns the pattern.
#[test]
fn qemu_nbd_client_with_reconnect_delay_survives_a_takeover() {
    let f = up(|_| {});
    let pair = &f.pair;
    let opts = format!(
        "driver=nbd,server.type=inet,server.host={},server.port=10809,export=blk0,reconnect-delay=30",
        pair.ip(Node::A)
    );
    let mut cmd = pair.command("qemu-io");
    cmd.args(["--image-opts", &opts])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("qemu-io");
    let mut stdin = child.stdin.take().expect("stdin");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        }
    });
    let expect = |needle: &str| {
        let deadline = Instant::now() + LONG;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return seen,
                Ok(l) => seen.push(l),
                Err(_) => panic!("qemu-io: no '{needle}' (output: {seen:?})"),
            }
        }
    };
    writeln!(stdin, "write -P 0x5a 0 64k").expect("stdin");
    expect("wrote 65536/65536");
    pair.kill(Node::A, Sig::Kill).expect("kill A");
    wait_lines(pair, Node::B, "step=serving", 1);
    writeln!(stdin, "read -P 0x5a 0 64k").expect("stdin");
    let before = expect("read 65536/65536");
    assert!(
        !before
            .iter()
            .any(|l| l.contains("Pattern verification failed")),
        "{before:?}"
    );
    writeln!(stdin, "quit").expect("stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("qemu-io exit");
    assert!(
        out.status.success(),
        "qemu-io: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One request through the pipelined client, waiting for its reply (bounded).
fn request(
    conn: &mut tandem_qemu::check::client::Conn,
    events: &std::sync::mpsc::Receiver<tandem_qemu::check::client::Event>,
    command: u16,
    flags: u16,
    offset: u64,
    len: u32,
    payload: &[u8],
) -> anyhow::Result<Option<Vec<u8>>> {
    use tandem_qemu::check::client::Event;
    let h = conn.send(command, flags, offset, len, payload)?;
    loop {
        match events.recv_timeout(LONG)? {
            Event::Reply {
                handle,
                error,
                data,
                ..
            } if handle == h => {
                anyhow::ensure!(error == 0, "request {command} failed with errno {error}");
                return Ok(data);
            }
            Event::Reply { .. } => {}
            Event::Closed { why, .. } => anyhow::bail!("connection closed: {why}"),
        }
    }
}

/// Issue 12 §2 through a takeover: on A, each range gets a WRITE, then a WRITE_ZEROES (with
/// FUA on half of them) over it, then a WRITE of new data over part of it, all acknowledged
/// and kept in A's log (consistency points held); then A dies. B replays A's log and serves
/// A's address: every range must read back the newest acknowledged change, never the first
/// write (a replay that applied the records out of order would bring it back).
#[test]
fn a_takeover_replays_writes_and_write_zeroes_in_their_order() {
    use tandem_qemu::check::client::{cflag, cmd, Conn};
    let f = up(|s| s.cmdline.push("debug.cp=hold".into()));
    let pair = &f.pair;
    let a = nbd_addr(pair, Node::A);
    let ns = pair.info().ns_pid;
    const RANGES: u64 = 8;
    const BLOCK: u64 = 64 << 10;
    let old = vec![0xddu8; BLOCK as usize];
    let new = vec![0x5au8; 4096];
    tandem_qemu::in_netns::run(ns, || {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut c = Conn::connect(1, a, "blk0", Duration::from_secs(20), tx)?;
        for i in 0..RANGES {
            let at = i * BLOCK;
            request(&mut c, &rx, cmd::WRITE, 0, at, BLOCK as u32, &old)?;
            let fua = if i % 2 == 0 { cflag::FUA } else { 0 };
            request(&mut c, &rx, cmd::WRITE_ZEROES, fua, at, BLOCK as u32, &[])?;
            request(&mut c, &rx, cmd::WRITE, 0, at + 4096, 4096, &new)?;
        }
        request(&mut c, &rx, cmd::FLUSH, 0, 0, 0, &[])?;
        c.disconnect();
        Ok::<_, anyhow::Error>(())
    })
    .and_then(|r| r)
    .unwrap_or_else(|e| panic!("writing through A: {e:#}"));
    pair.kill(Node::A, Sig::Kill).expect("kill A");
    wait_lines(pair, Node::B, "step=serving", 1);
    let replays = pair.console_lines(Node::B, "step=replay records=");
    assert!(
        replays.iter().any(|l| !l.contains("records=0")),
        "B replayed A's log: {replays:?}"
    );
    let data = tandem_qemu::in_netns::run(ns, || {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut c = Conn::connect(2, a, "blk0", Duration::from_secs(20), tx)?;
        let d = request(&mut c, &rx, cmd::READ, 0, 0, (RANGES * BLOCK) as u32, &[])?;
        c.disconnect();
        d.ok_or_else(|| anyhow::anyhow!("a READ without data"))
    })
    .and_then(|r| r)
    .unwrap_or_else(|e| panic!("reading through A's address, served by B: {e:#}"));
    for i in 0..RANGES as usize {
        let r = &data[i * BLOCK as usize..(i + 1) * BLOCK as usize];
        let mut want = vec![0u8; BLOCK as usize];
        want[4096..8192].copy_from_slice(&new);
        let stale = r.iter().filter(|&&b| b == 0xdd).count();
        assert!(
            r == want.as_slice(),
            "range {i}: {stale} bytes of the first write came back after the takeover"
        );
    }
}
