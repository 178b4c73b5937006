//! `tandem-backend` (the workspace's vhost-user-blk back end, `host-backend/`) seen from the
//! host command: finding or building the binary, its command line, and a running daemon.
//!
//! The binary is found as the guest image is ([`crate::image`]): `TANDEM_BACKEND`, else
//! beside the running `tandem` executable, else `<workspace>/target/release/tandem-backend`;
//! when that is missing and cargo is there it is built with [`BUILD_COMMAND`] (host-backend
//! is a workspace of its own, see the root `Cargo.toml`), serialised on a lock file.
//!
//! A running daemon ([`BackendCommand::start`]) is a [`crate::supervise::Daemon`]: its own
//! process group, its output in a log file, ready once its socket exists; it is told to stop
//! (SIGTERM: it finishes the requests in flight, syncs the image and exits 0) when dropped,
//! after QEMU, and it gets SIGTERM from the kernel if the thread that started it dies first
//! (`PR_SET_PDEATHSIG`), so a killed `tandem` leaves no daemon behind.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::builder::shell_quote;
use crate::supervise::{Daemon, DaemonSpec, Ready};

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
/// holding a lock so that concurrent callers build once ([`crate::cargo_build`]).
pub fn build(workspace: &Path) -> anyhow::Result<()> {
    use crate::cargo_build::{cargo_build, BuildError, CargoBuild};
    let target = workspace.join("target");
    let build = CargoBuild {
        args: vec![
            "build".into(),
            "--release".into(),
            "--quiet".into(),
            "--manifest-path".into(),
            workspace.join("host-backend").join("Cargo.toml").into(),
            "--target-dir".into(),
            target.into(),
        ],
        lock: ".tandem-backend-build.lock",
        artifact: default_path(workspace),
        skip_if_present: false,
    };
    cargo_build(workspace, &build, || {}).map_err(|e| match e {
        BuildError::NoCargo => anyhow::anyhow!(
            "{BINARY} is missing and cargo is not available; build it with: {BUILD_COMMAND}"
        ),
        BuildError::Io(e) => anyhow::anyhow!("building {BINARY}: {e}"),
        BuildError::Failed(status) => {
            anyhow::anyhow!("building {BINARY} failed ({status}); run `{BUILD_COMMAND}` to see why")
        }
        BuildError::NotProduced(p) => {
            anyhow::anyhow!(
                "`{BUILD_COMMAND}` succeeded but {} does not exist",
                p.display()
            )
        }
    })
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

/// A running `tandem-backend` ([`crate::supervise::Daemon`]): SIGTERM makes it finish the
/// requests in flight, sync the image and exit 0.
pub type BackendDaemon = Daemon;

impl BackendCommand {
    /// Start the daemon and wait (bounded) until its socket exists; its output goes to `log`.
    /// It gets [`STOP_TIMEOUT`] to stop, and SIGTERM if the starting thread dies first.
    pub fn start(&self, log: &Path) -> anyhow::Result<BackendDaemon> {
        if self.socket.as_os_str().len() > crate::state::MAX_SOCKET_PATH {
            bail!(
                "socket path {} is longer than {} bytes",
                self.socket.display(),
                crate::state::MAX_SOCKET_PATH
            );
        }
        let mut command = Command::new(&self.program);
        command.args(self.to_args());
        let mut spec = DaemonSpec::new(
            BINARY,
            command,
            self,
            log,
            Ready::Socket(self.socket.clone()),
        );
        spec.start_timeout = START_TIMEOUT;
        spec.stop_timeout = STOP_TIMEOUT;
        spec.die_with_parent = true;
        Daemon::start(spec, None)
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
