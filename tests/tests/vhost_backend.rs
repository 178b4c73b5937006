//! `tandem-backend` (host-backend/) under real QEMU: the guest's in-guest verified benchmark
//! job through vhost-user-blk on q35 and microvm, both host I/O engines, read-only mode, the
//! block operations (flush, discard, write-zeroes), a front end killed with SIGKILL and
//! replaced while the daemon keeps running, and SIGTERM in the middle of acknowledged
//! (FUA, durability=disk) NBD writes: the daemon exits 0 and the image holds every write
//! the guest acknowledged.
//!
//! The daemon is built once per test process with `cargo build --release --manifest-path
//! host-backend/Cargo.toml --target-dir target` (nothing to do when up to date), or taken
//! from `TANDEM_BACKEND`; `tandem` likewise (`TANDEM_BIN`). Waits are on what can be
//! observed (a console line, a write reaching the image, a log line, an exit), bounded.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tandem_qemu::builder::{Machine, Nic, QemuCommand, VhostUserBlk};
use tandem_qemu::exit::GuestExit;
use tandem_qemu::ledger::{pattern, Ledger, BLOCK};
use tandem_qemu::nbd_client::NbdClient;
use tandem_qemu::size::ByteSize;
use tandem_qemu::vhost_backend::{self, BackendCommand, BackendDaemon, Engine};
use tandem_qemu::vm::Vm;
use tandem_tests::*;

/// The seed the jobs stamp their blocks with (checked on the host afterwards).
const SEED: u64 = 0x5eed_b10c;

fn backend_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os(vhost_backend::ENV_BACKEND).filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let ws = workspace_root();
        vhost_backend::build(&ws).unwrap_or_else(|e| panic!("{e:#}"));
        vhost_backend::default_path(&ws)
    })
}

/// Bound on one QMP exchange: QEMU answers from its main loop, which a reset of a
/// vhost-user device (the daemon first completes what is in flight) and TCG on a loaded
/// host can keep busy for seconds.
const QMP_TIMEOUT: Duration = Duration::from_secs(60);

/// When `image` was last written.
fn mtime(image: &Path) -> SystemTime {
    std::fs::metadata(image)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", image.display()))
}

/// Wait (bounded) until the daemon writes to `image` after `since` (its modification time
/// when the guest's job started): the job's requests are flowing through the daemon.
fn wait_for_write(image: &Path, since: SystemTime, vm: &Vm, daemon: &BackendDaemon) {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while mtime(image) <= since {
        assert!(
            Instant::now() < deadline,
            "no write reached the image within {BOOT_TIMEOUT:?} of the job's start\n{}\n{}",
            console(vm),
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A daemon serving `image` on `dir/vu.sock`, configured by `f`.
fn start_backend(
    dir: &Path,
    image: &Path,
    f: impl FnOnce(BackendCommand) -> BackendCommand,
) -> BackendDaemon {
    let cmd = f(BackendCommand::new(
        backend_bin(),
        image,
        dir.join("vu.sock"),
    ));
    cmd.start(&dir.join("backend.log"))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The guest with its only disk on the daemon's socket.
fn vu_guest(machine: Machine, dir: &Path, daemon: &BackendDaemon) -> QemuCommand {
    vu_guest_queues(machine, dir, daemon, 1)
}

/// The same with `queues` virtqueues (the daemon must offer at least as many).
fn vu_guest_queues(
    machine: Machine,
    dir: &Path,
    daemon: &BackendDaemon,
    queues: u16,
) -> QemuCommand {
    guest_command(machine, dir)
        .modern_mmio(true)
        .vhost_user_blk(VhostUserBlk::new(daemon.socket()).num_queues(queues))
}

/// Boot with `words`, return the `BENCH` JSON and how QEMU exited.
fn bench(cmd: QemuCommand, dir: &Path, words: &str) -> (Value, GuestExit, String) {
    let mut vm = spawn(&cmd.cmdline(words), dir);
    let line = vm
        .wait_for_line("BENCH line", BOOT_TIMEOUT * 2, |l| {
            l.text.starts_with("BENCH ")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let json: Value = serde_json::from_str(&line.text["BENCH ".len()..])
        .unwrap_or_else(|e| panic!("BENCH line is not JSON ({e}): {}", line.text));
    (json, exit, console(&vm))
}

fn assert_verified(j: &Value, exit: GuestExit, ctx: &str, transport: &str, ops: u64) {
    assert_eq!(exit, GuestExit::Clean, "{ctx}");
    assert_eq!(j["transport"], transport, "{j}");
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["ops"], ops, "{j}");
    assert_eq!(j["verified"], true, "every written block read back: {j}");
    assert_eq!(j["verify_mismatches"], 0, "{j}");
}

/// What the guest's job writes at the start of each 512-byte sector (unikernel/src/bench.rs).
fn stamp(offset: u64) -> u64 {
    (offset ^ SEED).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// Check on the host that `len` bytes from offset 0 of `image` hold the job's stamps.
fn image_has_stamps(image: &Path, len: u64) {
    let data = std::fs::read(image).unwrap();
    for at in (0..len).step_by(512) {
        let s = &data[at as usize..at as usize + 16];
        assert_eq!(
            (
                u64::from_le_bytes(s[..8].try_into().unwrap()),
                u64::from_le_bytes(s[8..].try_into().unwrap())
            ),
            (stamp(at), at),
            "sector at {at} does not hold what the guest wrote"
        );
    }
}

/// randrw at depth 32 verified, then a sequential 64 KiB write verified by the guest and,
/// after QEMU is gone, by reading the image file; both boots against one daemon with
/// `queues` virtqueues (one worker thread each; the guest drives the first).
fn verified_jobs(machine: Machine, transport: &str, direct: bool, queues: u16) {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let image = sparse_disk(dir.path(), "img.raw", ByteSize::mib(64)).path;
    let mut daemon = start_backend(dir.path(), &image, |c| c.direct(direct).queues(queues));
    let pid = daemon.pid();

    let (j, exit, ctx) = bench(
        vu_guest_queues(machine, dir.path(), &daemon, queues),
        dir.path(),
        &format!(
            "bench=blk0 bench.rw=randrw bench.qd=32 bench.ops=3000 bench.span_mib=16 \
             bench.verify=1 bench.seed={SEED}"
        ),
    );
    assert_verified(&j, exit, &ctx, transport, 3000);
    let in_flight = j["max_in_flight"].as_u64().unwrap();
    assert!(in_flight > 1 && in_flight <= 32, "{j}");

    let (j, exit, ctx) = bench(
        vu_guest_queues(machine, dir.path(), &daemon, queues),
        dir.path(),
        &format!(
            "bench=blk0 bench.rw=write bench.bs=64K bench.qd=8 bench.ops=256 bench.verify=1 \
             bench.seed={SEED}"
        ),
    );
    assert_verified(&j, exit, &ctx, transport, 256);
    assert_eq!(j["bytes_moved"], 256 * 65536, "{j}");

    // One daemon served both guests.
    assert_eq!(daemon.pid(), pid);
    assert_eq!(daemon.try_exit(), None, "{}", daemon.log_text());
    assert_eq!(
        daemon.stop().map(|s| s.success()),
        Some(true),
        "{}",
        daemon.log_text()
    );
    image_has_stamps(&image, 256 * 65536);
    let log = daemon.log_text();
    assert!(log.contains("connection 2"), "{log}");
    assert!(log.contains(&format!("{queues} queue(s)")), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    assert!(!log.contains("refused"), "no malformed requests: {log}");
}

#[test]
fn verified_jobs_q35() {
    verified_jobs(Machine::Q35, "pci", true, 2);
}

#[test]
fn verified_jobs_microvm() {
    verified_jobs(Machine::Microvm, "mmio", false, 1);
}

/// The thread-pool engine (the fallback where io_uring is unavailable) with O_DIRECT.
#[test]
fn thread_pool_engine_verified_job() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let image = sparse_disk(dir.path(), "img.raw", ByteSize::mib(64)).path;
    let daemon = start_backend(dir.path(), &image, |c| {
        c.direct(true).engine(Engine::Threads)
    });
    let (j, exit, ctx) = bench(
        vu_guest(Machine::Q35, dir.path(), &daemon),
        dir.path(),
        "bench=blk0 bench.rw=randrw bench.qd=32 bench.ops=2000 bench.span_mib=16 bench.verify=1",
    );
    assert_verified(&j, exit, &ctx, "pci", 2000);
    assert!(
        daemon.log_text().contains("engine threads"),
        "{}",
        daemon.log_text()
    );
}

/// Flush, discard, write-zeroes and the driver's error paths, through the daemon.
#[test]
fn block_ops_self_test() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let image = sparse_disk(dir.path(), "img.raw", ByteSize::mib(64)).path;
    let daemon = start_backend(dir.path(), &image, |c| c);
    let mut vm = spawn(
        &vu_guest(Machine::Q35, dir.path(), &daemon).cmdline("debug.blkops=blk0 exit=ready"),
        dir.path(),
    );
    let line = vm
        .wait_for_line("selftest result", BOOT_TIMEOUT, |l| {
            l.text.contains("selftest: blk0")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.text
            .contains("selftest: blk0 ok (fua-write+read,write-zeroes,discard,flush,errors)"),
        "{}\n{}\n{}",
        line.text,
        console(&vm),
        daemon.log_text()
    );
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).unwrap(), GuestExit::Clean);
}

/// `--read-only`: the guest sees a read-only disk; reads work, a write job is refused.
#[test]
fn read_only_mode() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let image = sparse_disk(dir.path(), "img.raw", ByteSize::mib(64)).path;
    let daemon = start_backend(dir.path(), &image, |c| c.read_only(true));
    let (j, exit, ctx) = bench(
        vu_guest(Machine::Q35, dir.path(), &daemon),
        dir.path(),
        "bench=blk0 bench.rw=randread bench.qd=8 bench.ops=500",
    );
    assert_eq!(exit, GuestExit::Clean, "{ctx}");
    assert_eq!(
        (j["errors"].as_u64(), j["ops"].as_u64()),
        (Some(0), Some(500)),
        "{j}"
    );
    assert!(
        ctx.contains("ro=1"),
        "the guest sees VIRTIO_BLK_F_RO: {ctx}"
    );
    let (j, exit, _) = bench(
        vu_guest(Machine::Q35, dir.path(), &daemon),
        dir.path(),
        "bench=blk0 bench.rw=randwrite bench.ops=10",
    );
    assert_eq!(exit, GuestExit::Failed);
    assert!(j["error"].as_str().unwrap().contains("read-only"), "{j}");
    assert!(
        std::fs::read(&image).unwrap().iter().all(|&b| b == 0),
        "a read-only disk was written"
    );
}

/// QEMU going away does not end the daemon: a guest that finishes its job (QEMU exits), a
/// guest killed with SIGKILL in the middle of its job, then a third guest's verified job,
/// all served by the same process.
#[test]
fn reconnect_after_qemu_sigkill() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let image = sparse_disk(dir.path(), "img.raw", ByteSize::mib(64)).path;
    let mut daemon = start_backend(dir.path(), &image, |c| c.direct(true));
    let pid = daemon.pid();
    let job = "bench=blk0 bench.rw=randrw bench.qd=32 bench.ops=2000 bench.span_mib=16 \
               bench.verify=1";

    let (j, exit, ctx) = bench(vu_guest(Machine::Q35, dir.path(), &daemon), dir.path(), job);
    assert_verified(&j, exit, &ctx, "pci", 2000);
    let fds_after_first = open_fds(&daemon, 1);

    // A long job, killed while requests are in flight.
    let mut vm = spawn(
        &vu_guest(Machine::Q35, dir.path(), &daemon).cmdline(
            "bench=blk0 bench.rw=randrw bench.qd=32 bench.time_ms=60000 bench.span_mib=16",
        ),
        dir.path(),
    );
    vm.wait_for_line("job start", BOOT_TIMEOUT, |l| {
        l.text.contains("bench: randrw")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_write(&image, mtime(&image), &vm, &daemon);
    let killed = vm.kill();
    assert!(
        matches!(killed, GuestExit::Signal(9)),
        "QEMU was killed: {killed}"
    );
    drop(vm);

    let (j, exit, ctx) = bench(vu_guest(Machine::Q35, dir.path(), &daemon), dir.path(), job);
    assert_verified(&j, exit, &ctx, "pci", 2000);
    assert_eq!(daemon.pid(), pid, "the same daemon");
    assert_eq!(
        daemon.try_exit(),
        None,
        "still running: {}",
        daemon.log_text()
    );
    // Nothing accumulates across connections (descriptors, guest memory mappings).
    assert_eq!(
        open_fds(&daemon, 3),
        fds_after_first,
        "{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    assert!(log.contains("connection 3"), "{log}");
    assert_eq!(daemon.stop().map(|s| s.success()), Some(true), "{log}");
}

/// The daemon's open descriptors once it has finished with connection `n` (its summary is
/// logged after the connection's threads and memory are released).
fn open_fds(daemon: &BackendDaemon, n: u32) -> usize {
    let done = format!("connection {n}: ");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.log_text().contains(&done) {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count()
}

/// A guest reset in the middle of a job (QMP system_reset): QEMU stops the device
/// (GET_VRING_BASE: the daemon first completes what the queue has in flight) and starts it
/// again on the same connection; the rebooted guest's verified job passes.
#[test]
fn device_reset_mid_job() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let image = sparse_disk(dir.path(), "img.raw", ByteSize::mib(64)).path;
    let daemon = start_backend(dir.path(), &image, |c| c.direct(true));
    let mut cmd = vu_guest(Machine::Q35, dir.path(), &daemon).cmdline(
        "bench=blk0 bench.rw=randrw bench.qd=32 bench.time_ms=3000 bench.span_mib=16 \
         bench.verify=1",
    );
    cmd.no_reboot = false;
    let mut vm = spawn(&cmd, dir.path());
    vm.wait_for_line("job start", BOOT_TIMEOUT, |l| {
        l.text.contains("bench: randrw")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Reset once the job's writes reach the image (requests in flight in the daemon).
    wait_for_write(&image, mtime(&image), &vm, &daemon);
    vm.qmp(QMP_TIMEOUT)
        .and_then(|mut q| q.system_reset())
        .unwrap_or_else(|e| panic!("system_reset: {e}\n{}", daemon.log_text()));
    let line = vm
        .wait_for_line("BENCH after the reset", BOOT_TIMEOUT, |l| {
            l.text.starts_with("BENCH ")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_text()));
    let boots = vm
        .history()
        .iter()
        .filter(|l| l.text.starts_with("TANDEM READY"))
        .count();
    assert_eq!(boots, 2, "the guest rebooted once: {}", console(&vm));
    let j: Value = serde_json::from_str(&line.text["BENCH ".len()..]).unwrap();
    assert_eq!(j["verified"], true, "{j}\n{}", daemon.log_text());
    assert_eq!(j["errors"], 0, "{j}");
    vm.kill();
    assert!(
        !daemon.log_text().contains("refused"),
        "{}",
        daemon.log_text()
    );
}

/// SIGTERM while the guest's storage service writes (FUA, durability=disk, so an
/// acknowledged write has been written to the disk and flushed through the daemon): the
/// daemon finishes what is in flight, exits 0, and the image holds every acknowledged write.
#[test]
fn sigterm_keeps_every_acknowledged_write() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let image = sparse_disk(dir.path(), "img.raw", ByteSize::mib(64)).path;
    // Slow host I/O (the thread pool waits 20 ms before each operation) so that the stop is
    // likely to find a write or flush in flight.
    let mut daemon = start_backend(dir.path(), &image, |mut c| {
        c.extra = vec!["--debug-io-delay-ms".into(), "20".into()];
        c.engine(Engine::Threads)
    });
    let port = free_port();
    let mut vm = spawn(
        &vu_guest(Machine::Q35, dir.path(), &daemon)
            .nic(Nic::user().mac(test_mac()).forward(port, 10809))
            .cmdline("durability=disk"),
        dir.path(),
    );
    vm.wait_for_line("NBD export", BOOT_TIMEOUT, |l| {
        l.text.starts_with("TANDEM NBD ")
    })
    .unwrap_or_else(|e| panic!("{e}"));

    const SLOTS: usize = 64;
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
        std::thread::spawn(move || {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let mut ledger = Ledger::new(0, SLOTS);
            let mut c = NbdClient::connect_with(
                addr,
                "blk0",
                Duration::from_secs(10),
                Duration::from_secs(2),
            )
            .expect("NBD connect");
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                let slot = (seq as usize) % SLOTS;
                match c.write(ledger.offset(slot), &pattern(slot as u64, seq), true) {
                    Ok(()) => {
                        ledger.acked(slot, seq);
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        // No answer (the disk went away under the service): stop here.
                        ledger.unanswered(slot, seq);
                        break;
                    }
                }
            }
            ledger
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::SeqCst) < 20 {
        assert!(
            Instant::now() < deadline,
            "writes too slow: {} acknowledged\n{}",
            acked.load(Ordering::SeqCst),
            console(&vm)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM with writes going on.
    daemon.terminate();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = daemon.try_exit() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(35),
            "the daemon did not stop\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    stop.store(true, Ordering::SeqCst);
    let ledger = writer.join().unwrap();
    vm.kill();
    let log = daemon.log_text();
    assert!(status.success(), "exit status {status}\n{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    assert!(ledger.acked_writes >= 20, "{}", ledger.acked_writes);
    eprintln!(
        "{} writes acknowledged, {} unanswered\n{log}",
        ledger.acked_writes, ledger.unanswered_writes
    );

    // The export starts 1 MiB into the disk (label and checkpoint area).
    let data = std::fs::read(&image).unwrap();
    let mut bad = Vec::new();
    for slot in 0..SLOTS {
        let at = (1 << 20) + ledger.offset(slot) as usize;
        if let Err(m) = ledger.check(slot, &data[at..at + BLOCK as usize]) {
            bad.push(m);
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} acknowledged writes missing or wrong: {bad:?}\n{log}",
        bad.len(),
        ledger.acked_writes
    );
}

/// SIGTERM with a queue full of requests (32 in flight, each held 100 ms by the thread
/// pool): they are completed (none failed), the daemon exits 0 promptly.
#[test]
fn sigterm_completes_requests_in_flight() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let image = sparse_disk(dir.path(), "img.raw", ByteSize::mib(64)).path;
    let mut daemon = start_backend(dir.path(), &image, |mut c| {
        c.extra = vec![
            "--debug-io-delay-ms".into(),
            "100".into(),
            "--pool-threads".into(),
            "32".into(),
        ];
        c.engine(Engine::Threads)
    });
    let mut vm = spawn(
        &vu_guest(Machine::Q35, dir.path(), &daemon).cmdline(
            "bench=blk0 bench.rw=randwrite bench.qd=32 bench.time_ms=60000 bench.span_mib=16",
        ),
        dir.path(),
    );
    vm.wait_for_line("job start", BOOT_TIMEOUT, |l| {
        l.text.contains("bench: randwrite")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // The first writes landed (each held 100 ms): the guest keeps its queue of 32 full.
    wait_for_write(&image, mtime(&image), &vm, &daemon);
    // The stop must find a request in flight: wait until a worker holds one (sleeps in its
    // 100 ms delay), not just after a batch completed, when the guest may not have refilled
    // its queue yet (a loaded CI run stopped the daemon in that gap).
    let t = Instant::now();
    while !a_request_is_held(daemon.pid()) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no worker ever held a request\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    daemon.terminate();
    let status = loop {
        if let Some(s) = daemon.try_exit() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    vm.kill();
    let log = daemon.log_text();
    assert!(status.success(), "{status}\n{log}");
    let n: u64 = log
        .split("finishing ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{log}"));
    assert!(n > 0, "the stop found requests in flight: {log}");
    assert!(log.contains(" (0 failed, 0 malformed)"), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
}

/// Whether a thread of process `pid` is in `nanosleep`/`clock_nanosleep` right now (a worker
/// holding a request in its `--debug-io-delay-ms` delay), from `/proc/PID/task/*/syscall`.
fn a_request_is_held(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("syscall"))
            .is_ok_and(|s| matches!(s.split_whitespace().next(), Some("35" | "230")))
    })
}

/// `tandem run --backend vhost-user` starts a daemon per disk and stops it after QEMU.
#[test]
fn tandem_run_with_vhost_user_backend() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let state = dir.path().join("st");
    let out = std::process::Command::new(tandem_bin())
        .env(vhost_backend::ENV_BACKEND, backend_bin())
        .env(tandem_qemu::image::ENV_IMAGE, guest_image())
        .args([
            "run",
            "--backend",
            "vhost-user",
            "--nbd-port",
            "0",
            "--mgmt-port",
            "0",
        ])
        .args(["--disk-size", "64M", "--timeout", "120", "--cmdline"])
        .arg(
            "bench=blk0 bench.rw=randrw bench.qd=16 bench.ops=1000 bench.span_mib=8 bench.verify=1",
        )
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"verified\":true"), "{text}");
    assert!(text.contains("tandem-backend pid"), "{text}");
    let log = std::fs::read_to_string(state.join("tandem-backend0.log")).unwrap();
    assert!(log.contains("stopped cleanly"), "{log}");
    assert!(!state.join("vhost-user-blk0.sock").exists());
}
