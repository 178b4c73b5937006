//! A Tandem guest across two hosts on the real engines (issue 16): corosync, Pacemaker and
//! libvirtd in each of two namespace hosts (`tandem_qemu::hosts`), the configuration exactly
//! as `tandem cluster config` writes it (corosync.conf with its key, the CIB loaded by its
//! `load.sh`, the guest's domain XML), the `ocf:tandem:nvlog` agent (`scripts/ocf/nvlog`)
//! running `tandem mirror send|receive`, and a client on the client network.
//!
//! The test bed: `host1` and `host2` joined by the interconnect (`ic0`, 10.10.0.1/.2: corosync
//! and the mirror), and a `client` host whose bridge joins both hosts' `br0` (the client
//! network, 192.168.50.0/24; guest A is 192.168.50.10). The guest's disks are files under the
//! test's directory, which both hosts see at the same path (the shared storage). What the
//! test changes from the generated files, and why: the fence agent is the test-only
//! `fence_tandem_test_netns`, the domains are for the test accelerator (TCG here), the guest
//! image is this tree's, the mirror's policy is `degraded` (a lone survivor keeps serving,
//! once its sender has marked the lost copy outdated) and the priority fencing delay is 10 s.
//!
//! What is checked: the guest starts on its home host with the mirror up; a whole-host kill
//! under FUA writes loses no acknowledged write (repeated `TANDEM_HOST_KILLS` times, default
//! 2, alternating hosts: the killed host returns, resyncs, and is the next victim's
//! survivor); cutting only the interconnect fences exactly one host, and the guest's data
//! stays consistent. Every wait is bounded and on something observable (TCG guests on two
//! loaded cores: the bounds are generous). Needs root; a missing tool fails naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tandem_qemu::hosts::cluster::{self, ResourceStatus, FENCE_AGENT};
use tandem_qemu::hosts::{require_tool, wait_for, End, Host, Link, Site};
use tandem_qemu::ledger::{pattern, Ledger, BLOCK};
use tandem_qemu::nbd_client::NbdClient;
use tandem_tests::*;

/// From daemons started to both nodes online with quorum.
const FORM_TIMEOUT: Duration = Duration::from_secs(240);
/// From the CIB loaded (or a host lost) to the guest serving (fencing, promotion, a TCG boot).
const SERVE_TIMEOUT: Duration = Duration::from_secs(300);
/// For a receiver's copy to be synced (a full pass after the sender connects).
const SYNC_TIMEOUT: Duration = Duration::from_secs(240);
/// `priority-fencing-delay` in the test cluster.
const PRIORITY_DELAY_S: u32 = 10;
const HOSTS: [&str; 2] = ["host1", "host2"];
const GUEST: &str = "A";
const GUEST_IP: &str = "192.168.50.10";
const EXPORT: &str = "data";
/// Ledger blocks the writer cycles through (from byte 0 of the export).
const SLOTS: usize = 64;

const TOOLS: &[(&str, &str)] = &[
    ("corosync", "corosync"),
    ("pacemakerd", "pacemaker"),
    ("crm_mon", "pacemaker-cli-utils"),
    ("cibadmin", "pacemaker-cli-utils"),
    ("crm_attribute", "pacemaker-cli-utils"),
    ("crm_resource", "pacemaker-cli-utils"),
    ("crm_verify", "pacemaker-cli-utils"),
    ("libvirtd", "libvirt-daemon"),
    ("virtlogd", "libvirt-daemon"),
    ("virsh", "libvirt-clients"),
    ("setsid", "util-linux"),
];

fn need_tools() {
    for (tool, pkg) in TOOLS {
        require_tool(tool, pkg).unwrap_or_else(|e| panic!("{e}"));
    }
    let vd = Path::new("/usr/lib/ocf/resource.d/heartbeat/VirtualDomain");
    assert!(
        vd.exists(),
        "{} is not installed (package resource-agents): run scripts/deps",
        vd.display()
    );
}

fn guest_addr() -> SocketAddr {
    format!("{GUEST_IP}:10809").parse().expect("address")
}

/// Two cluster hosts, a client host, their links, and the generated files.
struct Bed {
    hosts: Vec<Host>,
    client: Host,
    ic: Link,
    _client_links: Vec<Link>,
    corosync_conf: String,
    out: PathBuf,
    site: Site,
}

impl Bed {
    /// Everything up to the CIB loaded: hosts, links, the appliance, the generated files
    /// installed on both hosts, libvirtd, corosync and Pacemaker running, both online.
    fn new() -> Bed {
        need_tools();
        let site = Site::new().unwrap();
        let mut hosts: Vec<Host> = HOSTS.iter().map(|n| site.host(n).unwrap()).collect();
        let client = site.host("client").unwrap();
        let ic = Link::veth(
            End {
                host: &hosts[0],
                ifname: "ic0",
                addr: Some("10.10.0.1/24"),
                bridge: None,
            },
            End {
                host: &hosts[1],
                ifname: "ic0",
                addr: Some("10.10.0.2/24"),
                bridge: None,
            },
        )
        .unwrap();
        let client_links = client_network(&hosts, &client);
        let out = generate(site.dir());
        let corosync_conf = std::fs::read_to_string(out.join("corosync/corosync.conf")).unwrap();
        for h in &mut hosts {
            install(h, &out);
            start_host(h, &corosync_conf);
        }
        let bed = Bed {
            hosts,
            client,
            ic,
            _client_links: client_links,
            corosync_conf,
            out,
            site,
        };
        for h in &bed.hosts {
            bed.wait_online(h, &HOSTS);
        }
        bed
    }

    /// `sh pacemaker/load.sh` on host1, as an operator does.
    fn load_cib(&self) {
        let load = self.out.join("pacemaker/load.sh");
        self.hosts[0]
            .exec_ok(&["sh", load.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("load.sh: {e:#}\n{}", self.diag()));
    }

    fn wait_online(&self, host: &Host, online: &[&str]) {
        let what = format!("{} to see {online:?} online with quorum", host.name());
        wait_for(&what, FORM_TIMEOUT, |last| {
            let s = cluster::crm_status(host)
                .map_err(|e| *last = format!("{e:#}"))
                .ok()?;
            *last = format!("{s:?}");
            let mut on = s.online();
            on.sort_unstable();
            (s.quorum && on == online).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diag()));
    }

    /// Waits until host `on` runs the guest: (from `on`'s view) `vm-A` Started there and
    /// `nvlog-A` Promoted there, nothing failed.
    fn wait_serving(&self, on: usize, timeout: Duration) {
        let node = HOSTS[on];
        let what = format!("vm-{GUEST} started and nvlog-{GUEST} promoted on {node}");
        wait_for(&what, timeout, |last| {
            let r = cluster::resources(&self.hosts[on])
                .map_err(|e| *last = format!("{e:#}"))
                .ok()?;
            *last = format!("{r:#?}");
            let vm = has(&r, &format!("vm-{GUEST}"), "Started", node);
            let promoted = has(&r, &format!("nvlog-{GUEST}-rsc"), "Promoted", node);
            (vm && promoted).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diag()));
    }

    /// Waits until host `h`'s receiver reports its copy synced and no outdated mark is left
    /// on it (so its promotion score is 100: it could take the guest over).
    fn wait_synced(&self, h: usize) {
        let host = &self.hosts[h];
        let status = format!("/run/tandem/nvlog-{GUEST}.recv.json");
        let what = format!("{}'s copy of {GUEST}'s log to be synced", host.name());
        wait_for(&what, SYNC_TIMEOUT, |last| {
            let s = host.read_file(&status).unwrap_or_default();
            let outdated = host
                .exec(&[
                    "crm_attribute",
                    "-N",
                    host.name(),
                    "-n",
                    &format!("tandem-nvlog-{GUEST}-outdated"),
                    "-l",
                    "forever",
                    "-G",
                    "-q",
                ])
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
                .unwrap_or(false);
            *last = format!("status {s:?}, outdated {outdated}");
            (s.contains("\"synced\":true") && !outdated).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diag()));
    }

    /// Waits until `survivor` sees host `dead` offline and fenced (not unclean).
    fn wait_fenced(&self, survivor: usize, dead: usize) {
        let what = format!("{} to fence {}", HOSTS[survivor], HOSTS[dead]);
        wait_for(&what, SERVE_TIMEOUT, |last| {
            let s = cluster::crm_status(&self.hosts[survivor]).ok()?;
            *last = format!("{s:?}\nfence log: {}", cluster::fence_log(&self.site));
            let n = s.node(HOSTS[dead])?;
            (!n.online && !n.unclean).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diag()));
    }

    /// Host `h` returns after a power cut: fresh `/run` and `/dev/shm` (its NVRAM is gone),
    /// its disk kept; libvirtd, corosync and Pacemaker started; both online again.
    fn restart(&mut self, h: usize) {
        self.hosts[h].clear_volatile().unwrap();
        let conf = self.corosync_conf.clone();
        start_host(&mut self.hosts[h], &conf);
        for host in &self.hosts {
            self.wait_online(host, &HOSTS);
        }
    }

    /// What went on, for a failure message: each host's crm_mon, agent and daemon logs.
    fn diag(&self) -> String {
        let mut s = format!("fence log: {}\n", cluster::fence_log(&self.site));
        for h in &self.hosts {
            let mon = h
                .exec(&["crm_mon", "-1", "-A", "-r"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            s.push_str(&format!("=== {} crm_mon:\n{mon}\n", h.name()));
            for f in ["recv.log", "send.log", "recv.json", "send.json"] {
                let p = format!("/run/tandem/nvlog-{GUEST}.{f}");
                if let Ok(t) = h.read_file(&p) {
                    s.push_str(&format!("--- {p}:\n{}\n", tail(&t, 15)));
                }
            }
            for d in h.daemons() {
                let log = d.log_text();
                let lines: String = log
                    .lines()
                    .filter(|l| l.contains("nvlog") || l.contains("vm-") || l.contains("error"))
                    .collect::<Vec<_>>()
                    .join("\n");
                s.push_str(&format!(
                    "--- {} {}:\n{}\n",
                    h.name(),
                    d.kind().name(),
                    tail(&lines, 25)
                ));
            }
        }
        s
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn has(r: &[ResourceStatus], id: &str, role: &str, node: &str) -> bool {
    r.iter()
        .any(|x| x.id == id && x.role == role && !x.failed && x.nodes.iter().any(|n| n == node))
}

/// The client network: a `br0` in each host and in the client (192.168.50.1, the guests'
/// gateway), the client's bridge joined to each host's by a veth. Every bridge floods
/// (ageing 0): when the guest moves, its MAC appears behind another port at once, whatever
/// the guest sends or not.
fn client_network(hosts: &[Host], client: &Host) -> Vec<Link> {
    client.add_bridge("br0", Some("192.168.50.1/24")).unwrap();
    for h in hosts {
        h.add_bridge("br0", None).unwrap();
    }
    let mut links = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let ifname = format!("c{}", i + 1);
        links.push(
            Link::veth(
                End {
                    host: client,
                    ifname: &ifname,
                    addr: None,
                    bridge: Some("br0"),
                },
                End {
                    host: h,
                    ifname: "cl0",
                    addr: None,
                    bridge: Some("br0"),
                },
            )
            .unwrap(),
        );
    }
    for h in hosts.iter().chain([client]) {
        h.exec_ok(&[
            "ip",
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "ageing_time",
            "0",
        ])
        .unwrap();
    }
    links
}

/// The appliance (examples/cluster-a.toml, installed under the test's directory: the shared
/// storage) and `tandem cluster config`'s files for the test cluster; the output directory.
fn generate(dir: &Path) -> PathBuf {
    let a = std::fs::read_to_string(workspace_root().join("examples/cluster-a.toml")).unwrap();
    let install = dir.join("A");
    let line = "install_dir = \"/srv/tandem/A\"";
    assert!(
        a.contains(line),
        "examples/cluster-a.toml changed: {line} not found"
    );
    let a = a.replace(
        line,
        &format!("install_dir = {:?}", install.display().to_string()),
    );
    std::fs::write(dir.join("a.toml"), a).unwrap();
    let opts = tandem_qemu::appliance::BuildOptions::from_env(Some(guest_image().to_path_buf()));
    tandem_qemu::appliance::build_from_file(&dir.join("a.toml"), &install, &opts)
        .unwrap_or_else(|e| panic!("building the appliance: {e:#}"));
    let toml = format!(
        "name = \"tandemft\"\n\
         [[host]]\nname = \"host1\"\ninterconnect = \"10.10.0.1\"\nbridge = \"br0\"\n\
         [[host]]\nname = \"host2\"\ninterconnect = \"10.10.0.2\"\nbridge = \"br0\"\n\
         [[guest]]\nname = \"{GUEST}\"\nhome = \"host1\"\nappliance = \"a.toml\"\n\
         ip = \"{GUEST_IP}/24\"\ngateway = \"192.168.50.1\"\n\
         [mirror]\nport = 7790\npolicy = \"degraded\"\nmode = \"sync\"\n\
         [fence]\nagent = \"{FENCE_AGENT}\"\npriority_delay_s = {PRIORITY_DELAY_S}\n"
    );
    let config = dir.join("cluster.toml");
    std::fs::write(&config, toml).unwrap();
    let c = tandem_qemu::cluster::spec::load(&config).unwrap_or_else(|e| panic!("{e}"));
    let secrets = tandem_qemu::cluster::Secrets::generate().unwrap();
    let files = tandem_qemu::cluster::generate(&c, test_accel(), &secrets).unwrap();
    let out = dir.join("cluster-out");
    tandem_qemu::cluster::write(&out, &files).unwrap();
    out
}

/// Installs what README.txt says on host `h`: corosync's key, the mirror key, the domain
/// XML, the OCF agent, and `tandem` on the PATH.
fn install(h: &Host, out: &Path) {
    for (src, dest, mode) in [
        ("corosync/authkey", "/etc/corosync/authkey", 0o400),
        ("mirror.key", "/etc/tandem/mirror.key", 0o600),
        ("libvirt/A.xml", "/etc/tandem/libvirt/A.xml", 0o644),
    ] {
        h.install(&out.join(src), dest, mode).unwrap();
    }
    let agent = workspace_root().join("scripts/ocf/nvlog");
    h.install(&agent, "/usr/lib/ocf/resource.d/tandem/nvlog", 0o755)
        .unwrap();
    let link = h.path("/usr/sbin/tandem");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(tandem_bin(), &link).unwrap();
}

/// libvirtd first (VirtualDomain's probes need it), then corosync and Pacemaker.
fn start_host(h: &mut Host, corosync_conf: &str) {
    h.start_libvirt().unwrap();
    h.start_cluster_stack(corosync_conf).unwrap();
}

/// A client on the client network writing the ledger with FUA: each write a unique pattern
/// in its block, acknowledged when its reply arrives; it reconnects after any failure.
struct FuaWriter {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handle: JoinHandle<()>,
}

/// What every writer of one test shares: the ledger and the sequence numbers.
#[derive(Clone)]
struct Book {
    ledger: Arc<Mutex<Ledger>>,
    seq: Arc<AtomicU64>,
}

impl Book {
    fn new() -> Book {
        Book {
            ledger: Arc::new(Mutex::new(Ledger::new(0, SLOTS))),
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    fn acked_writes(&self) -> u64 {
        self.ledger.lock().unwrap().acked_writes
    }
}

impl FuaWriter {
    fn start(client: &Host, book: &Book) -> FuaWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (s, a, b, ns) = (stop.clone(), acked.clone(), book.clone(), client.pid());
        let handle = std::thread::spawn(move || {
            tandem_qemu::in_netns::run(ns, || write_loop(&b, &s, &a))
                .unwrap_or_else(|e| panic!("writer: {e:#}"));
        });
        FuaWriter {
            stop,
            acked,
            handle,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until `more` further writes were acknowledged; the time it took.
    fn wait_acks(&self, more: u64, timeout: Duration, what: &str) -> Duration {
        let t = Instant::now();
        let target = self.acked() + more;
        wait_for(what, timeout, |last| {
            *last = format!("{} acknowledged", self.acked());
            (self.acked() >= target).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        t.elapsed()
    }

    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("writer thread");
    }
}

fn write_loop(book: &Book, stop: &AtomicBool, acked: &AtomicU64) {
    let mut client: Option<NbdClient> = None;
    let mut slot = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match NbdClient::connect_with(
                guest_addr(),
                EXPORT,
                Duration::from_secs(1),
                Duration::from_secs(10),
            ) {
                Ok(c) => client.insert(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        let seq = book.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let offset = slot as u64 * u64::from(BLOCK);
        match c.write(offset, &pattern(slot as u64, seq), true) {
            Ok(()) => {
                book.ledger.lock().unwrap().acked(slot, seq);
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                book.ledger.lock().unwrap().unanswered(slot, seq);
                client = None;
            }
        }
        slot = (slot + 1) % SLOTS;
    }
    if let Some(c) = client {
        c.disconnect();
    }
}

/// Reads every ledger block back through the guest's address (from the client network) and
/// fails on any that does not hold its last acknowledged write (or an unanswered one).
fn verify(bed: &Bed, book: &Book, when: &str) {
    let ledger = book.ledger.lock().unwrap().clone();
    let bad = tandem_qemu::in_netns::run(bed.client.pid(), || {
        let mut c = NbdClient::connect(guest_addr(), EXPORT, Duration::from_secs(30))?;
        let bad = ledger.verify(&mut c)?;
        c.disconnect();
        anyhow::Ok(bad)
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("{when}: reading the ledger back: {e:#}\n{}", bed.diag()));
    assert!(
        bad.is_empty(),
        "{when}: {} blocks lost acknowledged writes: {bad:?}",
        bad.len()
    );
}

/// Guest A starts on its home host once nvlog-A is promoted there; host2's receiver syncs;
/// a client on the client network writes and reads A's export.
#[test]
fn guest_starts_on_its_home_host_with_the_mirror_up() {
    let bed = Bed::new();
    let t = Instant::now();
    bed.load_cib();
    bed.wait_serving(0, SERVE_TIMEOUT);
    let serving = t.elapsed();
    bed.wait_synced(1);
    eprintln!(
        "cluster_failover: A serving on host1 {:.1} s after load.sh, host2 synced at {:.1} s",
        serving.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    let back = tandem_qemu::in_netns::run(bed.client.pid(), || {
        let mut c = wait_for("A's export on the client network", SERVE_TIMEOUT, |last| {
            NbdClient::connect(guest_addr(), EXPORT, Duration::from_secs(5))
                .map_err(|e| *last = e.to_string())
                .ok()
        })?;
        let block = pattern(7, 1);
        c.write(7 * u64::from(BLOCK), &block, true)?;
        let back = c.read(7 * u64::from(BLOCK), BLOCK)?;
        c.disconnect();
        anyhow::Ok(back == block)
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("{e:#}\n{}", bed.diag()));
    assert!(back, "the written block did not read back");
    // The receiver on host2 runs with a synced copy; host1 runs the sender.
    let s1 = bed.hosts[0]
        .read_file("/run/tandem/nvlog-A.send.json")
        .unwrap_or_default();
    assert!(s1.contains("\"state\":\"up\""), "host1's sender: {s1}");
}

/// Kill every process of the host running A while a client writes with FUA: the other host
/// fences it, promotes nvlog-A over its copy, starts A there, and the client reconnects to
/// A's address; every block reads back its last acknowledged write. Repeated
/// `TANDEM_HOST_KILLS` times (default 2), alternating: the killed host returns (fresh NVRAM),
/// resyncs, and survives the next kill.
#[test]
fn host_kill_under_fua_writes_loses_no_acknowledged_write() {
    let kills: usize = std::env::var("TANDEM_HOST_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut bed = Bed::new();
    bed.load_cib();
    bed.wait_serving(0, SERVE_TIMEOUT);
    bed.wait_synced(1);
    let book = Book::new();
    let mut primary = 0;
    for k in 0..kills {
        let survivor = 1 - primary;
        let w = FuaWriter::start(&bed.client, &book);
        w.wait_acks(50, SERVE_TIMEOUT, "writes before the kill");
        let t0 = Instant::now();
        let killed = bed.hosts[primary].kill_all().unwrap();
        bed.wait_fenced(survivor, primary);
        let fenced = t0.elapsed();
        bed.wait_serving(survivor, SERVE_TIMEOUT);
        let started = t0.elapsed();
        w.wait_acks(20, SERVE_TIMEOUT, "writes after the failover");
        let writing = t0.elapsed();
        w.finish();
        verify(&bed, &book, &format!("after kill {}", k + 1));
        eprintln!(
            "cluster_failover: kill {} of {}: {killed} processes; fenced {:.1} s, A started on {} \
             {:.1} s, first writes {:.1} s after the kill; {} acknowledged writes so far",
            k + 1,
            HOSTS[primary],
            fenced.as_secs_f64(),
            HOSTS[survivor],
            started.as_secs_f64(),
            writing.as_secs_f64(),
            book.acked_writes()
        );
        bed.restart(primary);
        let t1 = Instant::now();
        bed.wait_synced(primary);
        eprintln!(
            "cluster_failover: {} back and synced in {:.1} s",
            HOSTS[primary],
            t1.elapsed().as_secs_f64()
        );
        primary = survivor;
    }
    let l = book.ledger.lock().unwrap().clone();
    eprintln!(
        "cluster_failover: {kills} host kills, {} acknowledged FUA writes, {} unanswered, 0 lost",
        l.acked_writes, l.unanswered_writes
    );
}

/// Cut only the interconnect (corosync's ring and the mirror): each side loses the other, and
/// the priority fencing delay lets host1 (running A) fence host2 first. Exactly one host is
/// fenced, A never starts on host2, A keeps serving on host1 (degraded once its sender has
/// marked host2's copy outdated) and every block holds its last acknowledged write.
#[test]
fn cutting_the_interconnect_fences_one_side_and_nothing_splits() {
    let bed = Bed::new();
    bed.load_cib();
    bed.wait_serving(0, SERVE_TIMEOUT);
    bed.wait_synced(1);
    let book = Book::new();
    let w = FuaWriter::start(&bed.client, &book);
    w.wait_acks(50, SERVE_TIMEOUT, "writes before the cut");
    let t0 = Instant::now();
    bed.ic.set_up(false).unwrap();
    bed.wait_fenced(0, 1);
    let fenced = t0.elapsed();
    w.wait_acks(20, SERVE_TIMEOUT, "writes after the cut");
    let writing = t0.elapsed();
    w.finish();
    eprintln!(
        "cluster_failover: interconnect cut: host2 fenced {:.1} s, writes again {:.1} s after",
        fenced.as_secs_f64(),
        writing.as_secs_f64()
    );
    // host2 is dead (only its holder left); host1 still runs Pacemaker and A.
    assert_eq!(
        bed.hosts[1].processes(),
        [bed.hosts[1].pid()],
        "host2 survived"
    );
    let fences = cluster::fence_log(&bed.site);
    assert!(
        fences.lines().all(|l| l.ends_with(" host2")),
        "host1 was fenced too: {fences:?}"
    );
    bed.wait_serving(0, Duration::from_secs(30));
    // A never ran on host2: libvirt there never made a log for it.
    let a_log = bed.hosts[1].root().join("upper/var-log/libvirt/qemu/A.log");
    assert!(
        !a_log.exists(),
        "A was started on host2: {}",
        a_log.display()
    );
    verify(&bed, &book, "after the interconnect cut");
    let l = book.ledger.lock().unwrap().clone();
    eprintln!(
        "cluster_failover: cut: {} acknowledged FUA writes, {} unanswered, 0 lost",
        l.acked_writes, l.unanswered_writes
    );
}
