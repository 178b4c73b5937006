//! The link over real loopback sockets, with a real copy file.

use super::*;
use std::sync::mpsc;
use std::thread;

const LOG: u64 = 0x10c;
const LEN: u64 = 3 << 20;
const IDLE: Duration = Duration::from_secs(30);

fn copy_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tandem-mirror-{name}-{}", std::process::id()))
}

/// How each served connection ended, with the receiver's progress after it.
type Ends = mpsc::Receiver<(String, (u64, u64))>;

/// A receiver on a free port, served on a thread: each served connection's end comes back
/// on the channel, with the receiver's progress.
fn receiver(name: &str, key: Key) -> (SocketAddr, Ends) {
    let path = copy_path(name);
    let _ = std::fs::remove_file(&path);
    let mut r = MirrorReceiver::bind("127.0.0.1:0".parse().unwrap(), key, &path, LOG, LEN).unwrap();
    let addr = r.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || loop {
        let end = match r.serve_one(IDLE) {
            Ok(e) => format!("{e:?}"),
            Err(e) => format!("error: {e:#}"),
        };
        if tx.send((end, r.progress())).is_err() {
            return;
        }
    });
    (addr, rx)
}

/// Deterministic bytes for a write.
fn bytes(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

#[test]
fn what_is_acknowledged_is_in_the_copy_byte_for_byte() {
    let key = Key([5; 32]);
    let (addr, ends) = receiver("copy", key.clone());
    let (mut s, applied) = MirrorSender::connect(addr, &key, LOG).unwrap();
    assert_eq!(applied, 0, "a fresh copy");
    let mut expected = vec![0u8; LEN as usize];
    // Overlapping writes, one over 1 MiB (two frames), then commits.
    let writes = [
        (8192u64, 5000usize),
        (0, 4096),
        (10_000, 1_500_000),
        (9000, 3000),
    ];
    for (i, (off, n)) in writes.into_iter().enumerate() {
        let b = bytes(i as u8, n);
        expected[off as usize..off as usize + n].copy_from_slice(&b);
        s.write(off, &b).unwrap();
        s.commit(i as u64 + 1).unwrap();
    }
    assert_eq!(s.wait_ack(4, IDLE).unwrap(), 4);
    // Nothing commits 5: the wait ends at its deadline with the mirror reported lost.
    let err = s.wait_ack(5, Duration::from_millis(300)).unwrap_err();
    assert!(
        format!("{err:#}").contains("nothing from the peer"),
        "{err:#}"
    );
    drop(s);
    let (end, (applied, committed)) = ends.recv().unwrap();
    assert_eq!(end, "Closed");
    assert_eq!((applied, committed), (9, 4), "5 write frames and 4 commits");
    assert_eq!(std::fs::read(copy_path("copy")).unwrap(), expected);
    let _ = std::fs::remove_file(copy_path("copy"));
}

#[test]
fn a_peer_without_the_key_is_refused_at_both_ends() {
    let (addr, ends) = receiver("key", Key([1; 32]));
    let err = MirrorSender::connect(addr, &Key([2; 32]), LOG)
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("does not hold the pair's key"),
        "{err:#}"
    );
    let (end, progress) = ends.recv().unwrap();
    assert!(end.contains("does not hold the pair's key"), "{end}");
    assert_eq!(progress, (0, 0), "nothing applied");
    let _ = std::fs::remove_file(copy_path("key"));
}

#[test]
fn a_cut_link_keeps_a_prefix_and_the_sender_continues_after_it() {
    let key = Key([7; 32]);
    let (addr, ends) = receiver("cut", key.clone());
    let (mut s, _) = MirrorSender::connect(addr, &key, LOG).unwrap();
    s.write(0, &[0xaa; 4096]).unwrap();
    s.commit(1).unwrap();
    s.wait_ack(1, IDLE).unwrap();
    // Half a frame, then the link dies.
    let mut frame = Vec::new();
    Frame {
        kind: Kind::Write,
        stream_seq: 3,
        log_id: LOG,
        arg: 4096,
        payload: &[0xbb; 4096],
    }
    .encode(&mut frame);
    s.stream.write_all(&frame[..2000]).unwrap();
    drop(s);
    let (end, progress) = ends.recv().unwrap();
    assert_eq!(end, "Closed");
    assert_eq!(progress, (2, 1), "the half frame is not applied");
    let copy = std::fs::read(copy_path("cut")).unwrap();
    assert!(copy[..4096].iter().all(|&b| b == 0xaa) && copy[4096..8192].iter().all(|&b| b == 0));

    // The sender reconnects: the receiver says where it is, and the stream goes on from there.
    let (mut s, applied) = MirrorSender::connect(addr, &key, LOG).unwrap();
    assert_eq!(applied, 2);
    s.write(4096, &[0xcc; 4096]).unwrap();
    s.commit(2).unwrap();
    assert_eq!(s.wait_ack(2, IDLE).unwrap(), 2);
    drop(s);
    assert_eq!(ends.recv().unwrap().1, (4, 2));
    let copy = std::fs::read(copy_path("cut")).unwrap();
    assert!(copy[4096..8192].iter().all(|&b| b == 0xcc));
    let _ = std::fs::remove_file(copy_path("cut"));
}

#[test]
fn a_sender_that_breaks_the_order_is_cut_off_and_nothing_more_is_applied() {
    let key = Key([9; 32]);
    let (addr, ends) = receiver("order", key.clone());
    let (mut s, _) = MirrorSender::connect(addr, &key, LOG).unwrap();
    s.write(0, &[1; 512]).unwrap();
    s.sent += 1; // skip a sequence number
    s.write(512, &[2; 512]).unwrap();
    let err = s.wait_ack(1, Duration::from_secs(10)).unwrap_err();
    assert!(format!("{err:#}").contains("closed"), "{err:#}");
    let (end, progress) = ends.recv().unwrap();
    assert!(end.contains("OutOfOrder"), "{end}");
    assert_eq!(progress, (1, 0));
    let _ = std::fs::remove_file(copy_path("order"));
}

#[test]
fn a_silent_peer_ends_the_handshake_in_time() {
    // A listener that authenticates nothing and says nothing.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = thread::spawn(move || silent.accept().map(|(s, _)| s));
    let started = Instant::now();
    let err = MirrorSender::connect(addr, &Key([1; 32]), LOG)
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("no nonce"), "{err:#}");
    assert!(started.elapsed() < HANDSHAKE_TIMEOUT * 2);
    drop(hold.join());
}
