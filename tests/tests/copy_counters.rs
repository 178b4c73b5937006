//! The guest's copy counters (management port `status`, `tandem_formats::mgmt_status`) count the
//! copies an NBD request really costs: 4 KiB writes and reads through a real guest move the
//! counters by at least their payload at each of the four places, and by about two copies of
//! the payload in all (what the code does: frame -> socket buffer -> log page for a write,
//! pool buffer -> socket buffer -> frame for a read).

use std::net::SocketAddr;
use std::time::Duration;

use tandem_qemu::bench::nbd::{free_port, guest_status};
use tandem_qemu::builder::{Disk, Machine, Nic, SharedRegion};
use tandem_qemu::nbd_client::NbdClient;
use tandem_qemu::size::ByteSize;
use tandem_tests::*;

const N: u64 = 64;
const BS: u64 = 4096;
/// Request header of NBD (28 bytes) and a simple reply's (16).
const REQ_HDR: u64 = 28;
const REPLY_HDR: u64 = 16;

#[test]
fn nbd_io_moves_the_copy_counters() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let (port, mport) = (free_port().unwrap(), free_port().unwrap());
    let key = tandem_qemu::mgmt::generate_key().unwrap();
    let disk = dir.path().join("a.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let nvram = dir.path().join("nvram.bin");
    std::fs::File::create(&nvram)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let cmd = guest_command(Machine::Q35, dir.path())
        .disk(Disk::new(&disk))
        .nic(
            Nic::user()
                .mac(test_mac())
                .forward(port, 10809)
                .forward(mport, 10810),
        )
        .shared_region(SharedRegion::new(&nvram, ByteSize::mib(16)))
        .cmdline(&tandem_qemu::mgmt::cmdline_words(&key, false));
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_for_line("NBD export", BOOT_TIMEOUT, |l| {
        l.text.starts_with("TANDEM NBD ") && l.text.contains("/blk0")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for_line("mgmt up", BOOT_TIMEOUT, |l| {
        l.text.contains("mgmt: control channel on tcp/10810")
    })
    .unwrap_or_else(|e| panic!("{e}"));

    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut c = NbdClient::connect(addr, "blk0", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", console(&vm)));
    let before = guest_status(mport, &key).unwrap();
    let block = |i: u64| vec![(i as u8) ^ 0xa5; BS as usize];
    for i in 0..N {
        c.write(i * BS * 3, &block(i), false).unwrap();
    }
    let mid = guest_status(mport, &key).unwrap();
    for i in 0..N {
        assert_eq!(
            c.read(i * BS * 3, BS as u32).unwrap(),
            block(i),
            "block {i}"
        );
    }
    let after = guest_status(mport, &key).unwrap();
    c.disconnect();
    let ctx = || format!("before {before:?}\nmid {mid:?}\nafter {after:?}");
    assert_eq!(after.restarts, before.restarts, "{}", ctx());
    assert!(after.requests >= before.requests + 2 * N, "{}", ctx());

    // The writes: payload and request headers came in (frame -> socket -> log page), only
    // reply headers went out.
    let w = mid.data.since(&before.data);
    assert_eq!(
        (w.nbd_write_bytes, w.nbd_read_bytes),
        (N * BS, 0),
        "{}",
        ctx()
    );
    let inbound = N * (BS + REQ_HDR);
    assert!(w.copy_frame_to_socket >= inbound, "{w:?}");
    assert_eq!(w.copy_socket_to_app, inbound, "{w:?}");
    assert_eq!(w.copy_app_to_socket, N * REPLY_HDR, "{w:?}");
    assert!(w.copy_socket_to_frame >= N * REPLY_HDR, "{w:?}");

    // The reads: request headers in, payload and reply headers out (pool buffer -> socket
    // -> frame).
    let r = after.data.since(&mid.data);
    assert_eq!(
        (r.nbd_write_bytes, r.nbd_read_bytes),
        (0, N * BS),
        "{}",
        ctx()
    );
    assert!(r.copy_frame_to_socket >= N * REQ_HDR, "{r:?}");
    assert_eq!(r.copy_socket_to_app, N * REQ_HDR, "{r:?}");
    let outbound = N * (BS + REPLY_HDR);
    assert_eq!(r.copy_app_to_socket, outbound, "{r:?}");
    assert!(r.copy_socket_to_frame >= outbound, "{r:?}");

    // About two copies of every payload byte, each way (headers and the odd retransmission
    // on top).
    for (what, d) in [("writes", w), ("reads", r)] {
        let per = d.copied_bytes() as f64 / d.payload_bytes() as f64;
        assert!(
            (2.0..2.25).contains(&per),
            "{what}: {per} copies per byte: {d:?}"
        );
    }
}
