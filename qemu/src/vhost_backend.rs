//! `tandem-backend` (the workspace's vhost-user-blk back end, `host-backend/`) seen from the
//! host command: finding or building the binary, its command line, and a running daemon.
//!
//! The binary is found as the guest image is ([`crate::image`]): `TANDEM_BACKEND`, else
//! beside the running `tandem` executable, else `<workspace>/target/release/tandem-backend`;
//! when that is missing and cargo is there it is built with [`BUILD_COMMAND`] (host-backend
//! is a workspace of its own, see the root `Cargo.toml`), serialised on a lock file.
//!
//! A [`BackendDaemon`] runs in its own process group with its output in a log file; it is
//! told to stop (SIGTERM: it finishes the requests in flight, syncs the image and exits 0)
//! when dropped, after QEMU, and it gets SIGTERM from the kernel if the thread that started
//! it dies first (`PR_SET_PDEATHSIG`), so a killed `tandem` leaves no daemon behind.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::builder::shell_quote;

/// The binary's name.
pub const BINARY: &str = "tandem-backend";
/// Environment variable naming the binary.
pub const ENV_BACKEND: &str = "TANDEM_BACKEND";
/// The command that builds it (from the workspace root).
pub const BUILD_COMMAND: &str =
    "cargo build --release --manifest-path host-backend/Cargo.toml --target-dir target";
/// How long the daemon may take to create its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long it may take to stop after SIGTERM (it waits up to 30 s for requests in flight).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(35);

/// `<workspace>/target/release/tandem-backend`.
pub fn default_path(workspace: &Path) -> PathBuf {
    workspace.join("target").join("release").join(BINARY)
}

/// Where the binary is, if anywhere: `TANDEM_BACKEND`, beside the running executable, the
/// workspace's `target/release`.
pub fn locate() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_BACKEND).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(BINARY)))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        crate::image::workspace_root()
            .map(|ws| default_path(&ws))
            .filter(|p| p.is_file())
    })
}

/// The binary, built in the workspace when it is nowhere to be found.
pub fn ensure() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_BACKEND).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{ENV_BACKEND}={} does not exist", p.display());
        }
        return Ok(p);
    }
    if let Some(p) = locate() {
        return Ok(p);
    }
    let ws = crate::image::workspace_root().with_context(|| {
        format!("{BINARY} not found and no Cargo workspace to build it in; set {ENV_BACKEND}")
    })?;
    build(&ws)?;
    Ok(default_path(&ws))
}

/// Run [`BUILD_COMMAND`] in `workspace` (cargo does nothing when the binary is up to date),
/// holding a lock so that concurrent callers build once.
pub fn build(workspace: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    if crate::qemu_bin::find_in_path(&cargo, std::env::var_os("PATH").as_deref()).is_none() {
        bail!("{BINARY} is missing and cargo is not available; build it with: {BUILD_COMMAND}");
    }
    let target = workspace.join("target");
    std::fs::create_dir_all(&target).with_context(|| target.display().to_string())?;
    let lock_path = target.join(".tandem-backend-build.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| lock_path.display().to_string())?;
    lock.lock()
        .with_context(|| format!("lock {}", lock_path.display()))?;
    let status = Command::new(&cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(workspace.join("host-backend").join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .current_dir(workspace)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("running {BUILD_COMMAND}"))?;
    if !status.success() {
        bail!("building {BINARY} failed ({status}); run `{BUILD_COMMAND}` to see why");
    }
    let path = default_path(workspace);
    if !path.is_file() {
        bail!(
            "`{BUILD_COMMAND}` succeeded but {} does not exist",
            path.display()
        );
    }
    Ok(())
}

/// The host I/O engine (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// io_uring.
    IoUring,
    /// The thread pool.
    Threads,
}

/// A `tandem-backend` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendCommand {
    /// The executable.
    pub program: PathBuf,
    /// The socket it listens on.
    pub socket: PathBuf,
    /// The raw image.
    pub image: PathBuf,
    /// `--read-only`.
    pub read_only: bool,
    /// `--queues`.
    pub queues: u16,
    /// `--queue-size` (`None`: the daemon's default).
    pub queue_size: Option<u16>,
    /// `--direct` (`O_DIRECT`).
    pub direct: bool,
    /// `--engine` (`None`: io_uring where available).
    pub engine: Option<Engine>,
    /// `--serial`.
    pub serial: Option<String>,
    /// More arguments, appended as they are.
    pub extra: Vec<String>,
}

impl BackendCommand {
    /// Serve `image` on `socket`: read-write, one queue, page cache, default engine.
    pub fn new(
        program: impl Into<PathBuf>,
        image: impl Into<PathBuf>,
        socket: impl Into<PathBuf>,
    ) -> BackendCommand {
        BackendCommand {
            program: program.into(),
            socket: socket.into(),
            image: image.into(),
            read_only: false,
            queues: 1,
            queue_size: None,
            direct: false,
            engine: None,
            serial: None,
            extra: Vec::new(),
        }
    }

    /// Set `--direct`.
    pub fn direct(mut self, on: bool) -> Self {
        self.direct = on;
        self
    }

    /// Set `--read-only`.
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    /// Set `--queues`.
    pub fn queues(mut self, n: u16) -> Self {
        self.queues = n;
        self
    }

    /// Set `--engine`.
    pub fn engine(mut self, e: Engine) -> Self {
        self.engine = Some(e);
        self
    }

    /// The arguments (without the program).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--socket".into(), self.socket.clone().into()];
        a.push("--image".into());
        a.push(self.image.clone().into());
        if self.read_only {
            a.push("--read-only".into());
        }
        a.push("--queues".into());
        a.push(self.queues.to_string().into());
        if let Some(n) = self.queue_size {
            a.push("--queue-size".into());
            a.push(n.to_string().into());
        }
        if self.direct {
            a.push("--direct".into());
        }
        if let Some(e) = self.engine {
            a.push("--engine".into());
            a.push(
                match e {
                    Engine::IoUring => "io-uring",
                    Engine::Threads => "threads",
                }
                .into(),
            );
        }
        if let Some(s) = &self.serial {
            a.push("--serial".into());
            a.push(s.into());
        }
        a.extend(self.extra.iter().map(OsString::from));
        a
    }
}

impl fmt::Display for BackendCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shell_quote(self.program.as_os_str()))?;
        for a in self.to_args() {
            f.write_str(" ")?;
            f.write_str(&shell_quote(&a))?;
        }
        Ok(())
    }
}

/// A running `tandem-backend`, stopped with SIGTERM (then SIGKILL) when dropped.
pub struct BackendDaemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl BackendDaemon {
    /// Start it and wait (bounded) until its socket exists; its output goes to `log`.
    pub fn start(cmd: &BackendCommand, log: &Path) -> anyhow::Result<BackendDaemon> {
        if cmd.socket.as_os_str().len() > crate::state::MAX_SOCKET_PATH {
            bail!(
                "socket path {} is longer than {} bytes",
                cmd.socket.display(),
                crate::state::MAX_SOCKET_PATH
            );
        }
        let _ = std::fs::remove_file(&cmd.socket);
        let out = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        let err = out.try_clone()?;
        let mut command = Command::new(&cmd.program);
        command
            .args(cmd.to_args())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Own process group: a terminal's Ctrl-C reaches tandem, which stops QEMU first
            // and the daemon after it.
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // prctl(2), which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().with_context(|| format!("starting {cmd}"))?;
        let mut daemon = BackendDaemon {
            child,
            socket: cmd.socket.clone(),
            log: log.to_path_buf(),
            exit: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let is_socket = std::fs::symlink_metadata(&cmd.socket)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if is_socket {
                return Ok(daemon);
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                daemon.exit = Some(status);
                bail!(
                    "{BINARY} exited ({status}) before creating {}:\n{}\ncommand: {cmd}",
                    cmd.socket.display(),
                    daemon.log_text()
                );
            }
            if Instant::now() >= deadline {
                daemon.stop();
                bail!(
                    "{BINARY} did not create {} within {START_TIMEOUT:?}:\n{}\ncommand: {cmd}",
                    cmd.socket.display(),
                    daemon.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What it printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exit = Some(s);
            }
        }
        self.exit
    }

    /// Send SIGTERM and return at once (it finishes what is in flight and exits 0).
    pub fn terminate(&mut self) {
        if self.try_exit().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// Stop it: SIGTERM, up to [`STOP_TIMEOUT`], then SIGKILL. Returns how it exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.try_exit().is_none() {
            self.terminate();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline && self.try_exit().is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.try_exit().is_none() {
                let _ = self.child.kill();
                self.exit = self.child.wait().ok();
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        self.exit
    }
}

impl Drop for BackendDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let c = BackendCommand::new("/b/tandem-backend", "/i/a b.raw", "/s/vu.sock");
        assert_eq!(
            c.to_string(),
            "/b/tandem-backend --socket /s/vu.sock --image '/i/a b.raw' --queues 1"
        );
        let mut c = c
            .direct(true)
            .read_only(true)
            .queues(2)
            .engine(Engine::Threads);
        c.queue_size = Some(256);
        c.serial = Some("disk0".into());
        let args: Vec<String> = c
            .to_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--socket",
                "/s/vu.sock",
                "--image",
                "/i/a b.raw",
                "--read-only",
                "--queues",
                "2",
                "--queue-size",
                "256",
                "--direct",
                "--engine",
                "threads",
                "--serial",
                "disk0"
            ]
        );
    }

    #[test]
    fn default_location() {
        let ws = Path::new("/w");
        assert_eq!(
            default_path(ws),
            Path::new("/w/target/release/tandem-backend")
        );
    }
}
