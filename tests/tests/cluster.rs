//! Hosts as namespaces (tandem_qemu::hosts) with the real engines: corosync and Pacemaker
//! form a two-node cluster across two namespace hosts, libvirtd in a host starts the
//! appliance's generated domain XML and the guest serves NBD on the host's bridge, and
//! "the host dies" (every process of one host SIGKILLed) is seen by the other host's
//! corosync, and its Pacemaker fences the dead host with the test fence agent.
//!
//! Each test builds and tears down everything itself (dropping the hosts kills their
//! processes and deletes their namespaces, also after a panic). Every wait is bounded and
//! waits on something observable; the bounds are generous (TCG, two loaded cores). Needs
//! root; a missing tool fails the test naming it and its package (scripts/deps installs it).

use std::path::Path;
use std::time::Duration;

use tandem_qemu::hosts::cluster::{self, TestNode};
use tandem_qemu::hosts::{require_tool, wait_for, DaemonKind, End, Host, Link, Site};
use tandem_tests::*;

/// From daemons started to two nodes online with quorum (it took about 25 s when checked).
const FORM_TIMEOUT: Duration = Duration::from_secs(240);

/// Every tool a test needs, with its package: a missing one fails the test naming it.
fn need(tools: &[(&str, &str)]) {
    for (tool, pkg) in tools {
        require_tool(tool, pkg).unwrap_or_else(|e| panic!("{e}"));
    }
}

const CLUSTER_TOOLS: &[(&str, &str)] = &[
    ("corosync", "corosync"),
    ("corosync-quorumtool", "corosync"),
    ("pacemakerd", "pacemaker"),
    ("crm_mon", "pacemaker-cli-utils"),
    ("cibadmin", "pacemaker-cli-utils"),
    ("crm_attribute", "pacemaker-cli-utils"),
];

const LIBVIRT_TOOLS: &[(&str, &str)] = &[
    ("libvirtd", "libvirt-daemon"),
    ("virtlogd", "libvirt-daemon"),
    ("virsh", "libvirt-clients"),
    ("nbdinfo", "libnbd-bin"),
];

/// The test cluster's corosync.conf: node1 and node2 on the interconnect.
fn test_conf() -> String {
    let nodes = [
        TestNode {
            name: "node1".into(),
            addr: [10, 99, 0, 1].into(),
        },
        TestNode {
            name: "node2".into(),
            addr: [10, 99, 0, 2].into(),
        },
    ];
    cluster::test_corosync_conf("tandemtest", &nodes)
}

/// Two hosts joined by an interconnect (10.99.0.1 and .2 on `ic0`), the test cluster's
/// corosync.conf, corosync and pacemakerd started in both.
fn two_node_cluster(site: &Site) -> (Host, Host, Link) {
    let mut a = site.host("node1").unwrap();
    let mut b = site.host("node2").unwrap();
    let ic = Link::veth(
        End {
            host: &a,
            ifname: "ic0",
            addr: Some("10.99.0.1/24"),
            bridge: None,
        },
        End {
            host: &b,
            ifname: "ic0",
            addr: Some("10.99.0.2/24"),
            bridge: None,
        },
    )
    .unwrap();
    let conf = test_conf();
    a.start_cluster_stack(&conf).unwrap();
    b.start_cluster_stack(&conf).unwrap();
    (a, b, ic)
}

/// Waits until `host`'s `crm_mon` shows `online` (exactly) online with quorum.
fn wait_online(host: &Host, online: &[&str]) -> cluster::CrmStatus {
    let what = format!("{} to see {online:?} online with quorum", host.name());
    wait_for(&what, FORM_TIMEOUT, |last| {
        match cluster::crm_status(host) {
            Ok(s) => {
                *last = format!("{s:?}");
                let mut on = s.online();
                on.sort_unstable();
                (s.quorum && on == online).then_some(s)
            }
            Err(e) => {
                *last = format!("{e:#}");
                None
            }
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(host)))
}

/// The host's daemon logs, for failure messages.
fn logs(host: &Host) -> String {
    host.daemons()
        .iter()
        .map(|d| {
            let t = d.log_text();
            let tail: Vec<&str> = t.lines().rev().take(30).collect();
            format!(
                "--- {} {} (last lines):\n{}",
                host.name(),
                d.kind().name(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Two hosts form a cluster: both `crm_mon`s show two nodes online with quorum, and
/// corosync's quorum tool agrees (quorate, both members).
#[test]
fn cluster_forms() {
    need(CLUSTER_TOOLS);
    let site = Site::new().unwrap();
    let (a, b, _ic) = two_node_cluster(&site);
    for h in [&a, &b] {
        let s = wait_online(h, &["node1", "node2"]);
        assert!(s.dc.is_some(), "{s:?}");
        let q = cluster::quorum(h).unwrap();
        assert!(q.quorate, "{}: {q:?}", h.name());
        let mut m = q.members.clone();
        m.sort();
        assert_eq!(m, ["node1", "node2"], "{}: {q:?}", h.name());
    }
}

/// The appliance's description with the files installed where the test builds them.
fn appliance_config(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(workspace_root().join("examples/appliance.toml")).unwrap();
    let out = dir.join("app");
    let line = "# install_dir = \"/var/lib/tandem/tandem-demo\"";
    assert!(
        text.contains(line),
        "examples/appliance.toml changed: {line} not found"
    );
    let text = text.replace(
        line,
        &format!("install_dir = {:?}", out.display().to_string()),
    );
    let config = dir.join("appliance.toml");
    std::fs::write(&config, text).unwrap();
    config
}

/// `tandem image build`'s domain.xml, started by a real libvirtd in a host: the guest
/// boots (type='qemu' on a machine without real KVM, as the XML's comment says), serves
/// both exports on the host's bridge to nbdinfo, and takes a write through the crate's
/// NBD client that reads back.
#[test]
fn libvirtd_starts_the_appliance_xml() {
    need(LIBVIRT_TOOLS);
    let site = Site::new().unwrap();
    let config = appliance_config(site.dir());
    let out = site.dir().join("app");
    let opts = tandem_qemu::appliance::BuildOptions::from_env(Some(guest_image().to_path_buf()));
    tandem_qemu::appliance::build_from_file(&config, &out, &opts).unwrap();
    let mut xml = std::fs::read_to_string(out.join("domain.xml")).unwrap();
    if test_accel() == tandem_qemu::accel::Accel::Tcg {
        xml = xml.replace("<domain type='kvm'", "<domain type='qemu'");
    }
    let domain_xml = out.join("domain-test.xml");
    std::fs::write(&domain_xml, &xml).unwrap();

    let mut h = site.host("host1").unwrap();
    // The appliance's network (examples/appliance.toml): guest 10.0.2.15, bridge br0.
    h.add_bridge("br0", Some("10.0.2.2/24")).unwrap();
    h.start_libvirt().unwrap();
    let virsh = |args: &[&str]| {
        let mut all = vec!["virsh", "-c", "qemu:///system"];
        all.extend_from_slice(args);
        h.exec_ok(&all)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&h)))
    };
    virsh(&["define", domain_xml.to_str().unwrap()]);
    virsh(&["start", "tandem-demo"]);
    let qemu_log = "/var/log/libvirt/qemu/tandem-demo.log";

    let list = wait_for(
        "the guest's NBD exports on the bridge",
        Duration::from_secs(180),
        |last| {
            let o = h.exec(&["nbdinfo", "--list", "nbd://10.0.2.15"]).ok()?;
            *last = format!(
                "{}\n{}",
                String::from_utf8_lossy(&o.stderr),
                h.read_file(qemu_log).unwrap_or_default()
            );
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", virsh(&["list", "--all"])));
    for export in ["data", "archive"] {
        assert!(list.contains(&format!("export=\"{export}\"")), "{list}");
        let size = h
            .exec_ok(&["nbdinfo", "--size", &format!("nbd://10.0.2.15/{export}")])
            .unwrap();
        assert!(size.trim().parse::<u64>().unwrap() > 0, "{export}: {size}");
    }
    assert!(virsh(&["domstate", "tandem-demo"]).contains("running"));

    // A write that reads back, from a client in the host's network.
    let back = tandem_qemu::in_netns::run(h.pid(), || {
        use tandem_qemu::nbd_client::NbdClient;
        let addr = "10.0.2.15:10809".parse().unwrap();
        let mut c = NbdClient::connect(addr, "data", Duration::from_secs(30)).unwrap();
        let block: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        c.write(8192, &block, true).unwrap();
        let back = c.read(8192, 4096).unwrap();
        c.disconnect();
        back == block
    })
    .unwrap();
    assert!(back, "the written block did not read back");
    virsh(&["destroy", "tandem-demo"]);
}

/// Whether process `pid` is gone (no /proc entry, or a zombie).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}

/// "The host dies": after `kill_all` nothing of node1 runs but its holder (corosync,
/// Pacemaker and its subdaemons, virtlogd, libvirtd all gone), node2's corosync sees the
/// membership shrink to itself (and keeps quorum: two_node), and node2's Pacemaker fences
/// node1 with the test fence agent, leaving it cleanly offline. Restarted (fresh `/run`), node1
/// rejoins.
#[test]
fn kill_all_stops_every_process_of_a_host() {
    need(CLUSTER_TOOLS);
    need(LIBVIRT_TOOLS);
    let site = Site::new().unwrap();
    let (mut a, b, _ic) = two_node_cluster(&site);
    a.start_libvirt().unwrap();
    wait_online(&b, &["node1", "node2"]);
    cluster::configure_fencing(&b, &["node1", "node2"], 5).unwrap();

    let before = a.processes();
    let daemons: Vec<(DaemonKind, u32)> = a.daemons().iter().map(|d| (d.kind(), d.pid())).collect();
    assert_eq!(daemons.len(), 4, "{daemons:?}");
    // Pacemaker's subdaemons too: more processes than the four started.
    assert!(before.len() > 5, "{before:?}");

    let killed = a.kill_all().unwrap();
    assert!(killed >= before.len() - 1, "killed {killed} of {before:?}");
    assert!(a.daemons().is_empty());
    wait_for(
        "node1's processes to be gone",
        Duration::from_secs(30),
        |last| {
            let left: Vec<u32> = before
                .iter()
                .copied()
                .filter(|&p| p != a.pid() && !gone(p))
                .collect();
            *last = format!("{left:?}");
            left.is_empty().then_some(())
        },
    )
    .unwrap();
    assert_eq!(a.processes(), [a.pid()], "only the holder is left");

    let q = wait_for(
        "node2's corosync to see node1 leave",
        Duration::from_secs(120),
        |last| {
            let q = cluster::quorum(&b).ok()?;
            *last = format!("{q:?}");
            (q.members == ["node2"]).then_some(q)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&b)));
    assert!(q.quorate, "two_node keeps quorum: {q:?}");

    let s = wait_for("node2 to fence node1", Duration::from_secs(180), |last| {
        let s = cluster::crm_status(&b).ok()?;
        *last = format!("{s:?}\nfence log: {}", cluster::fence_log(&site));
        let n1 = s.node("node1")?;
        (!n1.online && !n1.unclean).then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&b)));
    assert_eq!(s.online(), ["node2"], "{s:?}");
    let log = cluster::fence_log(&site);
    assert!(
        log.lines().any(|l| l == "reboot node1" || l == "off node1"),
        "the test agent did not fence node1: {log:?}"
    );

    // The host returns: a reboot's fresh /run and /dev/shm, its disk kept; it rejoins.
    a.clear_volatile().unwrap();
    a.start_cluster_stack(&test_conf()).unwrap();
    for h in [&a, &b] {
        wait_online(h, &["node1", "node2"]);
    }
}

/// A panic in a test tears its hosts down: the drop kills every process of the host,
/// deletes its network namespace and removes its directory.
#[test]
fn a_panic_tears_the_host_down() {
    need(&[("virtlogd", "libvirt-daemon")]);
    let site = Site::new().unwrap();
    let seen = std::sync::Mutex::new(None);
    let res = std::panic::catch_unwind(|| {
        let mut h = site.host("doomed").unwrap();
        h.start(DaemonKind::Virtlogd).unwrap();
        let pids = h.processes();
        *seen.lock().unwrap() = Some((h.netns().to_string(), h.root().to_path_buf(), pids));
        panic!("a failing test");
    });
    assert!(res.is_err());
    let (netns, root, pids) = seen.lock().unwrap().take().expect("the host was made");
    assert_eq!(pids.len(), 2, "holder and virtlogd: {pids:?}");
    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "{netns} left"
    );
    assert!(!root.exists(), "{} left", root.display());
    wait_for(
        "the host's processes to be gone",
        Duration::from_secs(10),
        |last| {
            let left: Vec<u32> = pids.iter().copied().filter(|&p| !gone(p)).collect();
            *last = format!("{left:?}");
            left.is_empty().then_some(())
        },
    )
    .unwrap();
}
