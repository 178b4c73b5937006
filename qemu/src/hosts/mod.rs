//! Hosts as namespaces: several "machines" on one, for tests of the pair across two hosts
//! (issue 16) on the real engines (corosync, Pacemaker, libvirtd).
//!
//! Why: the cross-host failover runs on corosync for membership, Pacemaker for placement and
//! fencing, and libvirt for the guests. Those daemons expect a machine of their own: one
//! hostname, one `/run`, one `/etc/corosync`, one CIB in `/var/lib/pacemaker`, one libvirtd
//! socket. The tests have one machine, so each [`Host`] is
//! - a named network namespace (its own interfaces, addresses, and abstract unix sockets,
//!   which libqb's IPC between corosync and Pacemaker uses),
//! - plus a mount and UTS namespace held open by a small long-lived process (the host's
//!   "hardware": `unshare --mount --uts --propagation private`), entered with
//!   `nsenter -t PID -n -m -u`. In it: its hostname (the cluster node name), a fresh tmpfs
//!   on `/run` and `/dev/shm` (corosync's and libvirt's sockets and pid files, the NVRAM
//!   files `<shmem>` maps), and copy-on-write overlays of `/etc`, `/var/lib` and `/var/log`
//!   whose upper layers are this host's own directories (its "disk"), with the cluster
//!   state directories emptied: nothing of the machine's own cluster state leaks in.
//!   `/usr/sbin` gets an overlay too, so that the test fence agent exists on the test hosts
//!   only (Pacemaker looks for fence agents there and nowhere else), and `/usr/lib/ocf`, so
//!   that OCF agents a test installs ([`Host::install`]) exist in its hosts only.
//!
//! Hosts are joined by veth pairs ([`Link`]): an interconnect for corosync, and bridged links
//! for a client network. [`Host::kill_all`] SIGKILLs every process of the host (found through
//! `/proc/*/ns/net`: `ip netns pids` does not work from inside a host with a private `/run`),
//! which is what "the host dies" means to the other host. Dropping a [`Host`] tears down
//! everything, also after a panic: processes killed, the mount namespace gone with them, the
//! network namespace deleted (its veths with it), its directories removed. Namespace names
//! carry the process id and a counter, so several test binaries can run at once; a later
//! [`Site::new`] removes what a test process killed outright (SIGKILL, no drop) left behind.
//!
//! Modules: [`ns`] (namespaces, mounts, process discovery, links), [`daemons`] (starting and
//! stopping corosync, pacemakerd, virtlogd and libvirtd in a host), [`cluster`] (the test
//! cluster's corosync.conf, its test-only fence agent, and parsers of `crm_mon` and
//! `corosync-quorumtool` output).
//!
//! Needs root (network namespaces, mounts). Every tool it runs is checked first; a missing
//! one is an error naming it and its package.

pub mod cluster;
pub mod daemons;
pub mod ns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub use daemons::{Daemon, DaemonKind};
pub use ns::{End, Link};

use crate::scratch::TempDir;

/// How long a command run in a host ([`Host::exec`]) may take unless told otherwise.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// The prefix of every network namespace this module makes: `tandem-h-<pid>-<n>-<host>`.
pub const NETNS_PREFIX: &str = "tandem-h-";

/// A tool the hosts need, and the Debian package that has it.
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("mount", "mount"),
];

/// The directory every host of one test lives under, and the fence agent's map of node
/// names to namespaces (so the agent can find the victim). Hosts keep it alive.
#[derive(Clone)]
pub struct Site {
    inner: Arc<SiteInner>,
}

struct SiteInner {
    dir: TempDir,
}

impl Site {
    /// A fresh site under the system temporary directory. Removes what earlier test
    /// processes that no longer exist left behind (their namespaces and processes).
    pub fn new() -> anyhow::Result<Site> {
        require_root()?;
        for (tool, pkg) in TOOLS {
            require_tool(tool, pkg)?;
        }
        ns::sweep_stale();
        let dir = crate::scratch::tempdir().context("creating the site directory")?;
        std::fs::create_dir(dir.path().join("fence-map"))?;
        Ok(Site {
            inner: Arc::new(SiteInner { dir }),
        })
    }

    /// The site's directory (hosts' directories, the fence map, whatever a test puts there).
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// Where the fence agent finds each host: one file per node name.
    pub fn fence_map(&self) -> PathBuf {
        self.dir().join("fence-map")
    }

    /// A new host named `name` (its hostname and cluster node name: letters, digits, `-`).
    pub fn host(&self, name: &str) -> anyhow::Result<Host> {
        Host::create(self, name)
    }
}

/// One "machine": network + mount + UTS namespaces, its daemons, its directories.
pub struct Host {
    name: String,
    netns: String,
    holder: std::process::Child,
    root: PathBuf,
    daemons: Vec<Daemon>,
    site: Site,
}

impl Host {
    /// Creates the host: network namespace, the holder of its mount and UTS namespaces,
    /// hostname, private mounts, `lo` up, its entry in the site's fence map.
    pub fn create(site: &Site, name: &str) -> anyhow::Result<Host> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        if name.is_empty()
            || name.len() > 20
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            bail!("host name {name:?}: 1 to 20 letters, digits or '-'");
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let netns = format!("{NETNS_PREFIX}{}-{n}-{name}", std::process::id());
        let root = site.dir().join(format!("host-{name}-{n}"));
        std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
        ns::add_netns(&netns)?;
        let holder = match ns::spawn_holder(&netns) {
            Ok(h) => h,
            Err(e) => {
                ns::del_netns(&netns);
                return Err(e);
            }
        };
        let host = Host {
            name: name.to_string(),
            netns,
            holder,
            root,
            daemons: Vec::new(),
            site: site.clone(),
        };
        // From here on, Drop cleans up whatever fails.
        ns::setup_mounts(&host)?;
        ns::register_for_fencing(&host)?;
        Ok(host)
    }

    /// The hostname, which is also the cluster node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network namespace's name (`ip -n NAME ...`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The holder's process id: `nsenter -t PID -n -m -u` enters the host, and
    /// [`crate::in_netns::run`] runs in-process clients in its network.
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// The host's own directory on the machine (the overlays' upper layers, daemon logs).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The site this host belongs to.
    pub fn site(&self) -> &Site {
        &self.site
    }

    /// `path` as the host sees it, reachable from outside (through `/proc/PID/root`), e.g.
    /// `/run/libvirt/libvirt-sock` or `/var/log/libvirt/qemu/NAME.log`.
    pub fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(path.trim_start_matches('/'))
    }

    /// A command that runs `program` inside the host (`nsenter`, which execs it: the
    /// child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid().to_string())
            .args(["-n", "-m", "-u", "--"])
            .arg(program);
        c
    }

    /// Runs `args` inside the host to completion (at most [`EXEC_TIMEOUT`]); its output,
    /// whatever its exit status.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.exec_timeout(args, EXEC_TIMEOUT)
    }

    /// [`Host::exec`] with a deadline of `timeout` (then killed, and an error).
    pub fn exec_timeout(&self, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        let (program, rest) = args.split_first().context("empty command")?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        run_bounded(&mut cmd, timeout).with_context(|| format!("on host {}: {args:?}", self.name))
    }

    /// Runs `args` inside the host; fails (quoting its output) unless it exits 0. Its stdout.
    pub fn exec_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.exec(args)?;
        if !out.status.success() {
            bail!(
                "on host {}: {args:?} failed ({}):\n{}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sh -c SCRIPT` inside the host; must exit 0. Its stdout.
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        self.exec_ok(&["sh", "-c", script])
    }

    /// The daemons started in this host (and not stopped), in start order.
    pub fn daemons(&self) -> &[Daemon] {
        &self.daemons
    }

    /// Every live process of the host (its network namespace), the holder included.
    pub fn processes(&self) -> Vec<u32> {
        ns::pids_in_netns(self.pid()).unwrap_or_default()
    }

    /// "The host dies": SIGKILL every process of the host but its holder, until none is
    /// left (daemons fork while they die); the started daemons are reaped and forgotten.
    /// The host's directories and tmpfs contents stay, as after a power cut with NVRAM;
    /// [`Host::clear_volatile`] empties `/run` and `/dev/shm` as a reboot would. Returns
    /// how many processes were killed.
    pub fn kill_all(&mut self) -> anyhow::Result<usize> {
        let killed = ns::kill_netns_processes(self.pid(), &[self.pid()])?;
        for mut d in self.daemons.drain(..) {
            d.reap();
        }
        Ok(killed)
    }

    /// Empties `/run` and `/dev/shm` (fresh tmpfs mounts), as a reboot does; call after
    /// [`Host::kill_all`], before starting daemons again.
    pub fn clear_volatile(&self) -> anyhow::Result<()> {
        self.sh(ns::VOLATILE_SCRIPT).map(drop)
    }

    /// Installs the machine's file `src` as `dest` in the host (parents created), with
    /// `mode`: e.g. an OCF agent under `/usr/lib/ocf/resource.d/`, kept in the host's own
    /// overlay layer.
    pub fn install(&self, src: &Path, dest: &str, mode: u32) -> anyhow::Result<()> {
        let p = self.path(dest);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(src, &p)
            .with_context(|| format!("installing {} as {dest} in {}", src.display(), self.name))?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        Ok(())
    }

    /// Adds a bridge `name` (up, optionally with the address `cidr`) to the host.
    pub fn add_bridge(&self, name: &str, cidr: Option<&str>) -> anyhow::Result<()> {
        ns::add_bridge(self, name, cidr)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = ns::kill_netns_processes(self.pid(), &[]);
        for d in &mut self.daemons {
            d.reap();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        ns::del_netns(&self.netns);
        let _ = std::fs::remove_file(self.site.fence_map().join(&self.name));
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Fails unless running as root (namespaces and mounts need it).
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hosts as namespaces need root (network namespaces, mounts)");
    }
    Ok(())
}

/// Fails naming `tool` and its `package` when it is neither on PATH nor in an sbin
/// directory; its path otherwise.
pub fn require_tool(tool: &str, package: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH");
    if let Some(p) = crate::qemu_bin::find_in_path(std::ffi::OsStr::new(tool), path.as_deref()) {
        return Ok(p);
    }
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{tool} is not installed (package {package}): run scripts/deps")
}

/// Runs `cmd` to completion with stdout and stderr captured, killed at `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    // Readers on threads: a chatty command must not block on a full pipe, and a daemon it
    // left behind holding the pipes must not block us (its output is then cut short).
    let out = reader(child.stdout.take().context("stdout")?);
    let err = reader(child.stderr.take().context("stderr")?);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let grace = Duration::from_secs(2);
    Ok(Output {
        status,
        stdout: out.recv_timeout(grace).unwrap_or_default(),
        stderr: err.recv_timeout(grace).unwrap_or_default(),
    })
}

/// Reads `r` to its end on a thread; the bytes arrive on the channel.
fn reader(mut r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        let _ = tx.send(v);
    });
    rx
}

/// Polls `cond` (every 100 ms) until it gives `Some`, at most `timeout`; the error names
/// `what` and the last state `cond` reported through `last`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut(&mut String) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if let Some(v) = cond(&mut last) {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last seen:\n{last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
