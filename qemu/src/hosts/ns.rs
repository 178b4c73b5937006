//! The namespaces of a [`Host`]: the named network namespace, the holder process of its
//! mount and UTS namespaces, the private mounts inside, finding and killing its processes,
//! and the veth [`Link`]s between hosts. See [`super`] for why.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{cluster, run_bounded, Host, NETNS_PREFIX};

/// Directories the host sees through a copy-on-write overlay over the machine's own (the
/// upper layer is the host's "disk"): configuration, state and logs, `/usr/sbin` for the
/// test fence agent, and `/usr/lib/ocf` (when resource-agents is installed) so that a test
/// can install an OCF agent (`ocf:tandem:nvlog`) in its hosts only.
const OVERLAYS: &[&str] = &["etc", "var/lib", "var/log", "usr/sbin", "usr/lib/ocf"];

/// Cluster and libvirt state the machine may have (a package's first run, another test's
/// leftovers): emptied in each host so that every host starts as a fresh install.
const FRESH: &[&str] = &[
    "/etc/corosync/corosync.conf",
    "/etc/corosync/authkey",
    "/var/lib/corosync/*",
    "/var/lib/pacemaker/cib/*",
    "/var/lib/pacemaker/pengine/*",
    "/var/lib/pacemaker/blackbox/*",
    "/var/lib/pacemaker/cores/*",
    "/var/log/corosync/*",
    "/var/log/pacemaker/*.log",
    "/var/log/pacemaker.log",
    "/etc/libvirt/qemu",
    "/etc/libvirt/qemu.conf",
    "/var/lib/libvirt",
    "/var/log/libvirt",
];

/// Fresh tmpfs mounts on `/run` and `/dev/shm` with the directories daemons expect (run in
/// the host, at creation and by [`Host::clear_volatile`]).
pub const VOLATILE_SCRIPT: &str = "set -e
if mountpoint -q /run; then umount -l /run; fi
mount -t tmpfs -o mode=0755,size=256m tandem-run /run
mkdir -p /run/lock /run/libvirt
if mountpoint -q /dev/shm; then umount -l /dev/shm; fi
mount -t tmpfs -o mode=1777 tandem-shm /dev/shm
";

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = run_bounded(Command::new("ip").args(args), Duration::from_secs(30))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip netns add NAME` with `lo` up.
pub fn add_netns(name: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", name])?;
    if let Err(e) = ip(&["-n", name, "link", "set", "lo", "up"]) {
        del_netns(name);
        return Err(e);
    }
    Ok(())
}

/// `ip netns del NAME` (its interfaces go with it); errors ignored (teardown).
pub fn del_netns(name: &str) {
    let _ = run_bounded(
        Command::new("ip").args(["netns", "del", name]),
        Duration::from_secs(30),
    );
}

/// The holder: `tail` in the network namespace and in fresh mount and UTS namespaces,
/// started through `ip netns exec` and `unshare`, which both exec (the child's pid is the
/// holder's). It exits by itself when this process is gone (`--pid`). Returned once it runs.
pub fn spawn_holder(netns: &str) -> anyhow::Result<Child> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .args([
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
        ])
        .args(["tail", "-f", "/dev/null"])
        .arg(format!("--pid={}", std::process::id()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `ip netns exec ... unshare ...` (iproute2, util-linux)")?;
    let comm = format!("/proc/{}/comm", child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("the host's holder process exited ({st}): {err}");
        }
        if std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "tail") {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the host's holder process did not start within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Inside the host: the hostname, tmpfs `/run` and `/dev/shm`, the overlays (with the test
/// fence agent in `/usr/sbin`'s upper layer), fresh cluster state, and the `libvirt-qemu`
/// user libvirtd's QEMU driver insists on (it looks the user up before it reads qemu.conf).
pub fn setup_mounts(host: &Host) -> anyhow::Result<()> {
    let root = host.root();
    let mut script = format!("set -e\nhostname {}\n{VOLATILE_SCRIPT}", host.name());
    for dir in OVERLAYS {
        if !Path::new("/").join(dir).is_dir() {
            continue; // nothing to overlay (e.g. no resource-agents): the host has none either
        }
        let flat = dir.replace('/', "-");
        let upper = root.join("upper").join(&flat);
        let work = root.join("work").join(&flat);
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(&work)?;
        script.push_str(&format!(
            "mount -t overlay -o lowerdir=/{dir},upperdir={},workdir={} tandem-{flat} /{dir}\n",
            upper.display(),
            work.display()
        ));
    }
    cluster::write_fence_agent(&root.join("upper/usr-sbin"), &host.site().fence_map())?;
    script.push_str(&format!("rm -rf {}\n", FRESH.join(" ")));
    script.push_str(
        "mkdir -p /var/lib/libvirt /var/log/libvirt/qemu /var/log/corosync /var/lib/corosync
grep -q '^libvirt-qemu:' /etc/group || echo 'libvirt-qemu:x:64055:' >>/etc/group
grep -q '^libvirt-qemu:' /etc/passwd ||
  echo 'libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin' >>/etc/passwd
",
    );
    host.sh(&script)
        .map(drop)
        .with_context(|| format!("setting up host {}'s mounts", host.name()))
}

/// Writes the host's line in the site's fence map: its holder's pid, then its netns name.
pub fn register_for_fencing(host: &Host) -> anyhow::Result<()> {
    let file = host.site().fence_map().join(host.name());
    std::fs::write(&file, format!("{} {}\n", host.pid(), host.netns()))
        .with_context(|| format!("writing {}", file.display()))
}

/// The identity (device, inode) of a process's network namespace.
fn netns_id(pid: u32) -> Option<(u64, u64)> {
    let m = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    Some((m.dev(), m.ino()))
}

/// The identity of a named network namespace (its bind mount under /run/netns).
fn named_netns_id(name: &str) -> Option<(u64, u64)> {
    let m = std::fs::metadata(Path::new("/run/netns").join(name)).ok()?;
    Some((m.dev(), m.ino()))
}

/// Every live process in the network namespace `id` (zombies have none and are skipped).
fn pids_in(id: (u64, u64)) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id() && netns_id(pid) == Some(id))
        .collect()
}

/// Every live process in the network namespace of process `pid` (that one included).
pub fn pids_in_netns(pid: u32) -> anyhow::Result<Vec<u32>> {
    let id = netns_id(pid).with_context(|| format!("process {pid} is gone"))?;
    Ok(pids_in(id))
}

/// SIGKILLs every process in the network namespace of `holder` except `keep`, again and
/// again until none is left (at most 20 s); how many were killed.
pub fn kill_netns_processes(holder: u32, keep: &[u32]) -> anyhow::Result<usize> {
    let id = netns_id(holder).with_context(|| format!("the holder {holder} is gone"))?;
    kill_all_in(id, keep)
}

fn kill_all_in(id: (u64, u64), keep: &[u32]) -> anyhow::Result<usize> {
    let mut killed = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<u32> = pids_in(id)
            .into_iter()
            .filter(|p| !keep.contains(p))
            .collect();
        if left.is_empty() {
            return Ok(killed.len());
        }
        if Instant::now() >= deadline {
            bail!("processes {left:?} survive SIGKILL after 20 s");
        }
        for p in left {
            if let Ok(pid) = i32::try_from(p) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            killed.insert(p);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the namespaces (and their processes) and the site directories of test processes
/// that are gone: a test killed outright never ran its drops.
pub fn sweep_stale() {
    sweep_stale_netns();
    // Site directories: scratch directories (`tandem-<pid>-...`) with a fence map.
    let tmp = std::env::temp_dir();
    let Ok(dir) = std::fs::read_dir(&tmp) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix("tandem-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists())
            && e.path().join("fence-map").is_dir()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn sweep_stale_netns() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            if let Some(id) = named_netns_id(&name) {
                let _ = kill_all_in(id, &[]);
            }
            del_netns(&name);
        }
    }
}

/// A bridge in the host, up, with `cidr` when given.
pub fn add_bridge(host: &Host, name: &str, cidr: Option<&str>) -> anyhow::Result<()> {
    let ns = host.netns();
    ip(&[
        "-n",
        ns,
        "link",
        "add",
        name,
        "type",
        "bridge",
        "forward_delay",
        "0",
    ])?;
    if let Some(c) = cidr {
        ip(&["-n", ns, "addr", "add", c, "dev", name])?;
    }
    ip(&["-n", ns, "link", "set", name, "up"])
}

/// One end of a [`Link`]: the interface `ifname` in `host`, with an address, or enslaved to
/// a bridge of that host (then the link extends that bridge's network to the other end).
#[derive(Clone, Copy)]
pub struct End<'a> {
    /// The host.
    pub host: &'a Host,
    /// The interface's name in that host (at most 15 bytes).
    pub ifname: &'a str,
    /// An address for it (`10.99.0.1/24`).
    pub addr: Option<&'a str>,
    /// A bridge of the host to enslave it to.
    pub bridge: Option<&'a str>,
}

/// A veth pair between two hosts. Dropped, it is deleted (it also goes with either host).
pub struct Link {
    a: (String, String),
    b: (String, String),
}

impl Link {
    /// Creates the pair (in `a`'s namespace, the peer moved into `b`'s), sets the addresses
    /// or bridges, and brings both ends up.
    pub fn veth(a: End, b: End) -> anyhow::Result<Link> {
        for e in [&a, &b] {
            if e.ifname.is_empty() || e.ifname.len() > 15 {
                bail!("interface name {:?}: 1 to 15 bytes", e.ifname);
            }
        }
        let (na, nb) = (a.host.netns(), b.host.netns());
        ip(&[
            "-n", na, "link", "add", a.ifname, "type", "veth", "peer", "name", b.ifname, "netns",
            nb,
        ])?;
        let link = Link {
            a: (na.to_string(), a.ifname.to_string()),
            b: (nb.to_string(), b.ifname.to_string()),
        };
        for e in [&a, &b] {
            let ns = e.host.netns();
            if let Some(addr) = e.addr {
                ip(&["-n", ns, "addr", "add", addr, "dev", e.ifname])?;
            }
            if let Some(br) = e.bridge {
                ip(&["-n", ns, "link", "set", e.ifname, "master", br])?;
            }
        }
        link.set_up(true)?;
        Ok(link)
    }

    /// Both ends up (`true`) or down: down cuts the link (the peers see no carrier).
    pub fn set_up(&self, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        for (ns, ifname) in [&self.a, &self.b] {
            ip(&["-n", ns, "link", "set", ifname, state])?;
        }
        Ok(())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new("ip").args(["-n", &self.a.0, "link", "del", &self.a.1]),
            Duration::from_secs(30),
        );
    }
}
