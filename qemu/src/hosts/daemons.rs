//! The daemons of a [`Host`]: corosync, pacemakerd, virtlogd and libvirtd, each started in
//! the foreground inside the host (there is no systemd: `corosync -f`, `pacemakerd -f`, and
//! virtlogd and libvirtd without `-d`, so each is a child of this process whose pid is
//! known), its output in a log file in the host's directory, ready when an observable
//! condition holds (its socket exists), stopped with SIGTERM then SIGKILL.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{require_tool, wait_for, Host};

/// How long a daemon may take to be ready (TCG guests and compiles share 2 cores).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Which daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonKind {
    /// `corosync -f`: membership and quorum (reads /etc/corosync/corosync.conf).
    Corosync,
    /// `pacemakerd -f`: Pacemaker and its subdaemons (needs corosync in the same host).
    Pacemaker,
    /// `virtlogd`: libvirt's log daemon (QEMU's console and log files go through it).
    Virtlogd,
    /// `libvirtd`: the libvirt daemon with its QEMU driver.
    Libvirtd,
}

impl DaemonKind {
    /// The program, its arguments, and its Debian package.
    fn command(self) -> (&'static str, &'static [&'static str], &'static str) {
        match self {
            DaemonKind::Corosync => ("corosync", &["-f"], "corosync"),
            DaemonKind::Pacemaker => ("pacemakerd", &["-f"], "pacemaker"),
            DaemonKind::Virtlogd => ("virtlogd", &[], "libvirt-daemon"),
            DaemonKind::Libvirtd => ("libvirtd", &[], "libvirt-daemon"),
        }
    }

    /// The daemon's name (its program).
    pub fn name(self) -> &'static str {
        self.command().0
    }

    /// A socket (in the host) that exists once the daemon serves; `None`: ready at once.
    fn ready_socket(self) -> Option<&'static str> {
        match self {
            DaemonKind::Corosync => None,
            DaemonKind::Pacemaker => None,
            DaemonKind::Virtlogd => Some("/run/libvirt/virtlogd-sock"),
            DaemonKind::Libvirtd => Some("/run/libvirt/libvirt-sock"),
        }
    }
}

/// The libvirt QEMU driver's configuration in a test host: QEMU runs as root with no
/// security driver (no AppArmor or SELinux profile applies to the test's files under /tmp,
/// and no `libvirt-qemu` user needs to reach them).
pub const QEMU_CONF: &str = "# tandem test host (tandem_qemu::hosts)\n\
user = \"root\"\n\
group = \"root\"\n\
security_driver = \"none\"\n\
dynamic_ownership = 0\n";

/// A daemon started in a host.
pub struct Daemon {
    kind: DaemonKind,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Which daemon.
    pub fn kind(&self) -> DaemonKind {
        self.kind
    }

    /// Its process id (this process's child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its output file (on the machine).
    pub fn log(&self) -> &std::path::Path {
        &self.log
    }

    /// Its output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL (if it still runs) and wait for it.
    pub(super) fn reap(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after `grace`; waited for.
    fn stop(&mut self, grace: Duration) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.reap();
    }
}

impl Host {
    /// Starts `kind` in the host and waits until it is ready; its pid.
    pub fn start(&mut self, kind: DaemonKind) -> anyhow::Result<u32> {
        let (program, args, package) = kind.command();
        require_tool(program, package)?;
        if kind == DaemonKind::Libvirtd {
            self.write_file("/etc/libvirt/qemu.conf", QEMU_CONF)?;
        }
        let log = self.root().join(format!("{program}.log"));
        let file = std::fs::File::create(&log)?;
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {program} in host {}", self.name()))?;
        let mut d = Daemon { kind, child, log };
        let pid = d.pid();
        let ready = kind.ready_socket().map(|s| self.path(s));
        let res = wait_for(
            &format!("{program} in host {} to be ready", self.name()),
            READY_TIMEOUT,
            |last| {
                if !d.running() {
                    *last = format!("{program} exited:\n{}", d.log_text());
                    return Some(false);
                }
                ready.as_ref().is_none_or(|p| p.exists()).then_some(true)
            },
        );
        match res {
            Ok(true) => {
                self.daemons.push(d);
                Ok(pid)
            }
            Ok(false) => bail!(
                "{program} exited in host {}:\n{}",
                self.name(),
                d.log_text()
            ),
            Err(e) => {
                d.reap();
                Err(e.context(d.log_text()))
            }
        }
    }

    /// Stops the daemon `kind` (SIGTERM, SIGKILL after `grace`) if it was started.
    pub fn stop(&mut self, kind: DaemonKind, grace: Duration) {
        if let Some(i) = self.daemons.iter().position(|d| d.kind == kind) {
            let mut d = self.daemons.remove(i);
            d.stop(grace);
        }
    }

    /// The started daemon `kind`, if any.
    pub fn daemon(&self, kind: DaemonKind) -> Option<&Daemon> {
        self.daemons.iter().find(|d| d.kind == kind)
    }

    /// Writes `text` to `path` as the host sees it (through `/proc/PID/root`), creating
    /// its parent directories.
    pub fn write_file(&self, path: &str, text: &str) -> anyhow::Result<()> {
        let p = self.path(path);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {path} in {}", self.name()))
    }

    /// Reads `path` as the host sees it.
    pub fn read_file(&self, path: &str) -> anyhow::Result<String> {
        std::fs::read_to_string(self.path(path))
            .with_context(|| format!("reading {path} in {}", self.name()))
    }

    /// corosync then pacemakerd, with `corosync_conf` as /etc/corosync/corosync.conf.
    pub fn start_cluster_stack(&mut self, corosync_conf: &str) -> anyhow::Result<()> {
        self.write_file("/etc/corosync/corosync.conf", corosync_conf)?;
        self.start(DaemonKind::Corosync)?;
        self.start(DaemonKind::Pacemaker)?;
        Ok(())
    }

    /// virtlogd then libvirtd (libvirtd needs virtlogd for QEMU's log and console files).
    pub fn start_libvirt(&mut self) -> anyhow::Result<()> {
        self.start(DaemonKind::Virtlogd)?;
        self.start(DaemonKind::Libvirtd)?;
        Ok(())
    }
}
