//! Process supervision: the helper daemons the host starts beside QEMU (`qemu-storage-daemon`
//! and `qemu-nbd` for the benches, `tandem-backend` for `tandem run --backend vhost-user`
//! and `tandem bench blk`), all through one type, [`Daemon`].
//!
//! A daemon is spawned in its own process group (a terminal's Ctrl-C reaches `tandem`, which
//! stops QEMU first and the daemon after it) with stdout and stderr in a log file, then
//! waited for until it is ready on an observable condition ([`Ready`]: its unix socket
//! exists, or its TCP port accepts a connection), within a bounded time. One that exits or
//! misses its deadline is an error quoting its log and command line. It is stopped with
//! SIGTERM, then SIGKILL after its grace period, when dropped; its socket is removed. With
//! [`DaemonSpec::die_with_parent`] the kernel sends it SIGTERM if the thread that started it
//! dies first (`PR_SET_PDEATHSIG`), so a killed `tandem` leaves no daemon behind.

use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The work stopped because of Ctrl-C (the interrupt flag a caller passed was set).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// When a daemon is ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// This path exists and is a unix socket (the daemon listens on it). A stale file there
    /// is removed before the start.
    Socket(PathBuf),
    /// A TCP connection to this address is accepted (a bare connect, no handshake).
    Listening(SocketAddr),
}

impl Ready {
    fn reached(&self) -> bool {
        match self {
            Ready::Socket(path) => std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false),
            Ready::Listening(addr) => {
                TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok()
            }
        }
    }

    /// How often to look again.
    fn poll(&self) -> Duration {
        match self {
            Ready::Socket(_) => Duration::from_millis(10),
            Ready::Listening(_) => Duration::from_millis(20),
        }
    }
}

impl fmt::Display for Ready {
    /// What the daemon does once ready: `create /s/vu.sock`, `listen on 127.0.0.1:1234`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ready::Socket(p) => write!(f, "create {}", p.display()),
            Ready::Listening(a) => write!(f, "listen on {a}"),
        }
    }
}

/// How to start and stop one daemon.
#[derive(Debug)]
pub struct DaemonSpec {
    /// Its name in messages (`qemu-nbd`).
    pub name: String,
    /// The program and its arguments (stdio and the process group are set by [`Daemon::start`]).
    pub command: Command,
    /// The command line as shown in messages.
    pub shown: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// When it is ready.
    pub ready: Ready,
    /// How long it may take to get ready.
    pub start_timeout: Duration,
    /// How long it may take to exit after SIGTERM before it gets SIGKILL.
    pub stop_timeout: Duration,
    /// SIGTERM from the kernel when the starting thread dies first.
    pub die_with_parent: bool,
}

impl DaemonSpec {
    /// A daemon named `name` running `command` (shown as `shown`), logging to `log`, ready
    /// at `ready`; 15 s to start, 5 s to stop, not tied to its parent's life.
    pub fn new(
        name: impl Into<String>,
        command: Command,
        shown: impl fmt::Display,
        log: &Path,
        ready: Ready,
    ) -> DaemonSpec {
        DaemonSpec {
            name: name.into(),
            command,
            shown: shown.to_string(),
            log: log.to_path_buf(),
            ready,
            start_timeout: Duration::from_secs(15),
            stop_timeout: Duration::from_secs(5),
            die_with_parent: false,
        }
    }
}

/// A running helper daemon, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    socket: Option<PathBuf>,
    stop_timeout: Duration,
    exit: Option<ExitStatus>,
}

impl Daemon {
    /// Spawn it and wait until it is ready. `interrupted`, when given, is polled while
    /// waiting: once set, the daemon is stopped and the error is [`Interrupted`].
    pub fn start(spec: DaemonSpec, interrupted: Option<&AtomicBool>) -> anyhow::Result<Daemon> {
        let DaemonSpec {
            name,
            mut command,
            shown,
            log,
            ready,
            start_timeout,
            stop_timeout,
            die_with_parent,
        } = spec;
        if let Ready::Socket(p) = &ready {
            let _ = std::fs::remove_file(p);
        }
        let out = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        if die_with_parent {
            // SAFETY: the closure runs in the child between fork and exec and only calls
            // prctl(2), which is async-signal-safe.
            unsafe {
                command.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {shown}"))?;
        let mut daemon = Daemon {
            name,
            child,
            log,
            socket: match &ready {
                Ready::Socket(p) => Some(p.clone()),
                Ready::Listening(_) => None,
            },
            stop_timeout,
            exit: None,
        };
        daemon.wait_ready(&ready, start_timeout, interrupted, &shown)?;
        Ok(daemon)
    }

    /// Poll until `ready`, the daemon's exit, the deadline or an interruption.
    fn wait_ready(
        &mut self,
        ready: &Ready,
        timeout: Duration,
        interrupted: Option<&AtomicBool>,
        shown: &str,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if interrupted.is_some_and(|i| i.load(Ordering::SeqCst)) {
                self.stop();
                return Err(Interrupted.into());
            }
            if let Some(status) = self.try_exit() {
                bail!(
                    "{} exited ({status}) before it could {ready}:\n{}\ncommand: {shown}",
                    self.name,
                    self.log_text()
                );
            }
            if ready.reached() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!(
                    "{} did not {ready} within {timeout:?}:\n{}\ncommand: {shown}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(ready.poll());
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its unix socket, when it is ready on one.
    pub fn socket(&self) -> &Path {
        self.socket.as_deref().unwrap_or(Path::new(""))
    }

    /// What it printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            self.exit = Some(s);
        }
        self.exit
    }

    /// Send SIGTERM and return at once.
    pub fn terminate(&mut self) {
        if self.try_exit().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// Stop it: SIGTERM, up to its stop timeout, then SIGKILL; remove its socket. Returns how
    /// it exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.try_exit().is_none() {
            self.terminate();
            let deadline = Instant::now() + self.stop_timeout;
            while Instant::now() < deadline && self.try_exit().is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.try_exit().is_none() {
                let _ = self.child.kill();
                self.exit = self.child.wait().ok();
            }
        }
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
        self.exit
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll `cond` every millisecond until it holds; an error after `timeout` (naming `what`) or
/// once `interrupted` is set ([`Interrupted`]).
pub fn wait_until(
    what: &str,
    timeout: Duration,
    interrupted: &AtomicBool,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if interrupted.load(Ordering::SeqCst) {
            return Err(Interrupted.into());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn ready_on_a_socket_and_stopped_on_drop() {
        let dir = crate::scratch::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        let log = dir.path().join("d.log");
        let script = format!(
            "echo starting; exec python3 -c 'import socket,time; s=socket.socket(socket.AF_UNIX); \
             s.bind(\"{}\"); s.listen(); time.sleep(60)'",
            sock.display()
        );
        let spec = DaemonSpec::new("d", sh(&script), "d", &log, Ready::Socket(sock.clone()));
        let mut d = match Daemon::start(spec, None) {
            Ok(d) => d,
            // No python3 here: the failure path is what is left to check.
            Err(e) => {
                assert!(e.to_string().contains("d exited"), "{e:#}");
                return;
            }
        };
        assert_eq!(d.socket(), sock);
        assert!(d.log_text().contains("starting"));
        assert_eq!(d.try_exit(), None);
        let status = d.stop();
        assert!(status.is_some());
        assert!(!sock.exists(), "the socket is removed");
    }

    #[test]
    fn early_exit_and_timeout_are_errors() {
        let dir = crate::scratch::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let sock = dir.path().join("never.sock");
        let spec = DaemonSpec::new(
            "x",
            sh("echo oops >&2; exit 3"),
            "x --flag",
            &log,
            Ready::Socket(sock.clone()),
        );
        let e = Daemon::start(spec, None).unwrap_err().to_string();
        assert!(
            e.starts_with("x exited (exit status: 3) before it could create"),
            "{e}"
        );
        assert!(
            e.contains("oops") && e.ends_with("command: x --flag"),
            "{e}"
        );

        let mut spec = DaemonSpec::new("y", sh("sleep 30"), "y", &log, Ready::Socket(sock));
        spec.start_timeout = Duration::from_millis(50);
        let e = Daemon::start(spec, None).unwrap_err().to_string();
        assert!(e.starts_with("y did not create"), "{e}");

        let stop = AtomicBool::new(true);
        let spec = DaemonSpec::new(
            "z",
            sh("sleep 30"),
            "z",
            &log,
            Ready::Listening("127.0.0.1:1".parse().unwrap()),
        );
        let e = Daemon::start(spec, Some(&stop)).unwrap_err();
        assert!(e.is::<Interrupted>());
    }

    #[test]
    fn wait_until_times_out_or_stops() {
        let no = AtomicBool::new(false);
        assert!(wait_until("x", Duration::from_secs(1), &no, || true).is_ok());
        let e = wait_until("y", Duration::from_millis(5), &no, || false).unwrap_err();
        assert!(e.to_string().contains("waiting for y"));
        let yes = AtomicBool::new(true);
        let e = wait_until("z", Duration::from_secs(1), &yes, || false).unwrap_err();
        assert!(e.is::<Interrupted>());
    }
}
