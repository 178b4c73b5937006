//! The NVLOG mirror with a real guest, real daemons and host deaths: no acknowledged write
//! is lost when the host that runs the guest dies and the guest starts over the other host's
//! copy of its log.
//!
//! Each "host" here is a file and a daemon: the guest runs over one NVRAM file with
//! `mirror=sync mirror.policy=stop`, `tandem mirror send` ships it, `tandem mirror receive`
//! keeps the copy in the other file. A writer makes FUA writes of unique patterns, block
//! after block, and counts a write as acknowledged exactly when its reply arrives. Then the
//! host dies: QEMU and the sender get SIGKILL at once, with writes in flight. The receiver is
//! stopped (what the agent does when it promotes), the guest boots over the copy (as
//! Pacemaker starts it on the other host), and every block must read back its last
//! acknowledged pattern (or an unanswered one that may have landed). Every other trial, the
//! restarted guest is killed again straight after it starts serving, inside its replay of
//! the copy, and starts again in place. The roles then swap and the next trial kills the new
//! host. The cluster engines around this are
//! `cluster_failover.rs`; this is the data path alone, so that many kills fit in CI.
//!
//! `TANDEM_MIRROR_KILLS=N` sets the number of host deaths (CI default below).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_qemu::builder::{Disk, Machine, Nic, SharedRegion};
use tandem_qemu::ledger::{pattern, Ledger};
use tandem_qemu::nbd_client::NbdClient;
use tandem_qemu::size::ByteSize;
use tandem_qemu::vm::Vm;
use tandem_tests::*;

const NVRAM_MIB: u64 = 16;
const SLOTS: usize = 96;
const DEFAULT_KILLS: u32 = 12;
/// Bound on anything that involves a boot (TCG on a loaded 2-CPU host).
const LONG: Duration = Duration::from_secs(120);

/// Waits (bounded) for `cond`, polling.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon child, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(path: &Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

struct Site {
    dir: PathBuf,
    disk: PathBuf,
    key: PathBuf,
    port: u16,
}

impl Site {
    /// A scratch directory with the shared disk and the link key (kept while the first is).
    fn new() -> (tandem_qemu::scratch::TempDir, Site) {
        let tmp = tandem_qemu::scratch::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let disk = dir.join("a.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let key = dir.join("mirror.key");
        tandem_qemu::mgmt::write_key(&key, &tandem_qemu::mgmt::generate_key().unwrap()).unwrap();
        let site = Site {
            dir,
            disk,
            key,
            port: free_port(),
        };
        (tmp, site)
    }

    fn receiver(&self, copy: &Path, status: &Path) -> Daemon {
        let _ = std::fs::remove_file(status);
        let child = Command::new(tandem_bin())
            .args([
                "mirror", "receive", "--guest", "A", "--size", "16M", "--listen",
            ])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--copy")
            .arg(copy)
            .arg("--key")
            .arg(&self.key)
            .arg("--status")
            .arg(status)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("receiver.log")).unwrap())
            .spawn()
            .expect("tandem mirror receive");
        let d = Daemon(child);
        wait_for("the receiver's status", LONG, || {
            status_of(status).is_object()
        });
        d
    }

    fn sender(&self, region: &Path, status: &Path) -> Daemon {
        let _ = std::fs::remove_file(status);
        let child = Command::new(tandem_bin())
            .args(["mirror", "send", "--guest", "A", "--peer"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--region")
            .arg(region)
            .arg("--key")
            .arg(&self.key)
            .arg("--status")
            .arg(status)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("sender.log")).unwrap())
            .spawn()
            .expect("tandem mirror send");
        Daemon(child)
    }

    /// Boots the guest over `nvram` with the mirror on; waits for its service.
    fn boot(&self, nvram: &Path, nbd: u16) -> Vm {
        let cmd = guest_command(Machine::Q35, &self.dir)
            .disk(Disk::new(&self.disk))
            .nic(Nic::user().mac(test_mac()).forward(nbd, 10809))
            .cmdline("durability=nvlog mirror=sync mirror.policy=stop mirror.timeout_ms=2000")
            .shared_region(SharedRegion::new(nvram, ByteSize::mib(NVRAM_MIB)));
        let mut vm = spawn(&cmd, &self.dir);
        vm.wait_for_line("NBD export", LONG, |l| l.text.starts_with("TANDEM NBD "))
            .unwrap_or_else(|e| panic!("{e}"));
        vm
    }
}

fn status_of(p: &Path) -> serde_json::Value {
    status(p)
}

/// FUA writes of unique patterns, slot after slot from sequence number `seq`, until `stop`
/// or an error (the host died); every write's fate goes into `ledger`. Returns it and the
/// next sequence number.
fn writer(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    mut seq: u64,
    mut ledger: Ledger,
) -> (Ledger, u64) {
    let Ok(mut c) = NbdClient::connect(addr, "blk0", Duration::from_secs(30)) else {
        return (ledger, seq);
    };
    while !stop.load(Ordering::SeqCst) {
        let slot = (seq % SLOTS as u64) as usize;
        match c.write(ledger.offset(slot), &pattern(slot as u64, seq), true) {
            Ok(()) => {
                ledger.acked(slot, seq);
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                ledger.unanswered(slot, seq);
                seq += 1;
                break;
            }
        }
        seq += 1;
    }
    (ledger, seq)
}

#[test]
fn host_deaths_under_fua_writes_lose_no_acknowledged_write() {
    let kills: u32 = std::env::var("TANDEM_MIRROR_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let (_tmp, site) = Site::new();
    let dir = site.dir.clone();
    // The two hosts' NVRAM files; the guest starts on host 0.
    let files = [dir.join("nvram-host0.bin"), dir.join("nvram-host1.bin")];
    std::fs::File::create(&files[0])
        .unwrap()
        .set_len(NVRAM_MIB << 20)
        .unwrap();
    let mut all = Ledger::new(0, SLOTS);
    let mut total_acked = 0u64;
    let mut seq = 1u64;
    let mut live = 0usize;
    let nbd = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{nbd}").parse().unwrap();
    let mut vm = site.boot(&files[live], nbd);
    for trial in 0..kills {
        let (rs, ss) = (dir.join("recv.status"), dir.join("send.status"));
        let receiver = site.receiver(&files[1 - live], &rs);
        let sender = site.sender(&files[live], &ss);
        wait_for("the copy to be synced", LONG, || {
            status_of(&rs)["synced"] == serde_json::Value::Bool(true)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let w = {
            let (stop, acked, ledger) = (Arc::clone(&stop), Arc::clone(&acked), all);
            std::thread::spawn(move || writer(addr, stop, acked, seq, ledger))
        };
        // Some acknowledged writes, then the host dies with writes in flight.
        let want = 40 + u64::from(trial % 7) * 11;
        wait_for("acknowledged writes", LONG, || {
            acked.load(Ordering::SeqCst) >= want
        });
        drop(sender);
        let _ = vm.kill();
        stop.store(true, Ordering::SeqCst);
        (all, seq) = w.join().expect("writer");
        total_acked += acked.load(Ordering::SeqCst);
        // The agent stops the receiver when it promotes; the guest starts over the copy.
        drop(receiver);
        let inspect = |f: &Path| {
            let out = Command::new(tandem_bin())
                .args(["mirror", "inspect", "--file"])
                .arg(f)
                .output()
                .expect("tandem mirror inspect");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let before = format!(
            "the dead host's log: {}; the copy: {}; sender status {}; receiver status {}",
            inspect(&files[live]),
            inspect(&files[1 - live]),
            status_of(&ss),
            status_of(&rs)
        );
        live = 1 - live;
        vm = site.boot(&files[live], nbd);
        if trial % 2 == 1 {
            // The new host's guest dies again inside its replay (records found in the copy
            // are still going to disk) and restarts in place over the same file.
            let _ = vm.kill();
            vm = site.boot(&files[live], nbd);
        }
        let mut c = NbdClient::connect(addr, "blk0", Duration::from_secs(30)).expect("connect");
        let bad = all.verify(&mut c).expect("read back");
        assert!(
            bad.is_empty(),
            "trial {trial}: acknowledged writes lost after the host died: {bad:?}\n{before}"
        );
        eprintln!(
            "trial {trial}: host {} died after {} acknowledged FUA writes; all there",
            1 - live,
            acked.load(Ordering::SeqCst)
        );
    }
    let _ = vm.kill();
    eprintln!("{kills} host deaths, {total_acked} acknowledged FUA writes, 0 lost");
}

/// A lost mirror: replies wait (`stopped`) until it returns, unless the copy was marked
/// outdated, after which writes go through to disk (`degraded`); a returning receiver is
/// resynchronised and replies are mirrored again.
#[test]
fn a_lost_mirror_holds_replies_until_it_returns_or_the_copy_is_outdated() {
    let (_tmp, site) = Site::new();
    let dir = site.dir.clone();
    let (live, copy) = (dir.join("nvram-live.bin"), dir.join("nvram-copy.bin"));
    std::fs::File::create(&live)
        .unwrap()
        .set_len(NVRAM_MIB << 20)
        .unwrap();
    let nbd = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{nbd}").parse().unwrap();
    let cmd = guest_command(Machine::Q35, &dir)
        .disk(Disk::new(&site.disk))
        .nic(Nic::user().mac(test_mac()).forward(nbd, 10809))
        .cmdline("durability=nvlog mirror=sync mirror.policy=degraded mirror.timeout_ms=2000")
        .shared_region(SharedRegion::new(&live, ByteSize::mib(NVRAM_MIB)));
    let mut vm = spawn(&cmd, &dir);
    vm.wait_for_line("NBD export", LONG, |l| l.text.starts_with("TANDEM NBD "))
        .unwrap_or_else(|e| panic!("{e}"));
    let (rs, ss) = (dir.join("recv.status"), dir.join("send.status"));
    // The sender may outdate the copy only once this file exists.
    let allow = dir.join("allow-outdate");
    // The outdated mark is a file here (a node attribute in the cluster).
    let mark = dir.join("outdated-mark");
    let outdate = format!("test -e {} && touch {}", allow.display(), mark.display());
    let uptodate = format!("rm -f {}", mark.display());
    let sender = {
        let _ = std::fs::remove_file(&ss);
        let child = Command::new(tandem_bin())
            .args(["mirror", "send", "--guest", "A", "--peer"])
            .arg(format!("127.0.0.1:{}", site.port))
            .arg("--region")
            .arg(&live)
            .arg("--key")
            .arg(&site.key)
            .arg("--status")
            .arg(&ss)
            .args(["--outdate-cmd", &outdate, "--uptodate-cmd", &uptodate])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sender.log")).unwrap())
            .spawn()
            .expect("tandem mirror send");
        Daemon(child)
    };
    let mut receiver = site.receiver(&copy, &rs);
    let line = |vm: &mut Vm, what: &str| {
        let w = what.to_string();
        vm.wait_for_line(what, LONG, move |l| l.text.contains(&w))
            .unwrap_or_else(|e| panic!("{e}"));
    };
    line(&mut vm, "mirror: up");
    let mut c = NbdClient::connect_with(addr, "blk0", LONG, LONG).expect("connect");
    c.write(0, &pattern(0, 1), true).expect("a mirrored write");

    // The receiver goes: the guest holds replies.
    drop(receiver);
    line(&mut vm, "mirror: lost; stopped");
    let held = std::thread::spawn(move || {
        let r = c.write(4096, &pattern(1, 2), true);
        (r.map(|_| Instant::now()), c)
    });
    wait_for("the sender to report the link down", LONG, || {
        status_of(&ss)["state"] == "down"
    });
    let back = Instant::now();
    receiver = site.receiver(&copy, &rs);
    let (acked_at, mut c) = held.join().expect("writer");
    let acked_at = acked_at.expect("the held write is acknowledged once the mirror is back");
    assert!(
        acked_at > back,
        "a write was acknowledged while the mirror was down"
    );
    line(&mut vm, "mirror: up");

    // Now the copy may be outdated: the receiver goes, the guest writes through.
    std::fs::write(&allow, "").unwrap();
    drop(receiver);
    line(&mut vm, "mirror: lost; degraded");
    assert_eq!(status_of(&ss)["state"], "outdated");
    assert!(mark.exists(), "the copy was marked outdated");
    c.write(8192, &pattern(2, 3), true)
        .expect("a write goes through to disk while degraded");
    let mut r = c.read(0, 3 * 4096).expect("read back");
    assert_eq!(r.split_off(8192), pattern(2, 3));

    // The receiver returns: its copy is resynchronised and its mark cleared before the
    // guest is told the mirror is up (so what it acknowledges next is never wiped).
    let _receiver = site.receiver(&copy, &rs);
    line(&mut vm, "mirror: up");
    assert!(
        !mark.exists(),
        "the mirror was up before the outdated mark was cleared"
    );
    c.write(12288, &pattern(3, 4), true)
        .expect("a mirrored write again");
    drop(sender);
    let _ = vm.kill();
}
