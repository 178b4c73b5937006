//! Building a workspace artifact with cargo when it is missing: the guest image
//! ([`crate::image`]) and `tandem-backend` ([`crate::vhost_backend`]) both go through
//! [`cargo_build`].
//!
//! The build always goes to the workspace's own `target/` (whatever `CARGO_TARGET_DIR` says),
//! so the artifact lands where it is looked for, and concurrent builders (parallel tests,
//! two terminals) serialise on a lock file under `target/` and re-check once they hold it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One artifact and the cargo command that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CargoBuild {
    /// The arguments after `cargo` (run in the workspace root).
    pub args: Vec<OsString>,
    /// The lock file's name under `target/`.
    pub lock: &'static str,
    /// What the build produces.
    pub artifact: PathBuf,
    /// Skip cargo when the artifact exists once the lock is held (another builder made it);
    /// otherwise cargo always runs (and does nothing when the artifact is up to date).
    pub skip_if_present: bool,
}

/// Why a build did not produce its artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// cargo is not on `PATH` (nor named by `CARGO`).
    #[error("cargo is not available")]
    NoCargo,
    /// The lock or the target directory could not be had, or cargo could not be started.
    #[error("{0}")]
    Io(String),
    /// cargo failed.
    #[error("cargo exited with {0}")]
    Failed(String),
    /// cargo succeeded and the artifact is still missing.
    #[error("{} does not exist after the build", .0.display())]
    NotProduced(PathBuf),
}

/// The cargo to run: `CARGO`, else `cargo` on `PATH`.
pub fn cargo() -> Option<OsString> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    crate::qemu_bin::find_in_path(&cargo, std::env::var_os("PATH").as_deref()).map(|_| cargo)
}

/// Run `build` in `workspace` under its lock; `announce` is called just before cargo starts.
pub fn cargo_build(
    workspace: &Path,
    build: &CargoBuild,
    announce: impl FnOnce(),
) -> Result<(), BuildError> {
    let cargo = cargo().ok_or(BuildError::NoCargo)?;
    let target = workspace.join("target");
    std::fs::create_dir_all(&target)
        .map_err(|e| BuildError::Io(format!("{}: {e}", target.display())))?;
    let lock_path = target.join(build.lock);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| BuildError::Io(format!("{}: {e}", lock_path.display())))?;
    lock.lock()
        .map_err(|e| BuildError::Io(format!("lock {}: {e}", lock_path.display())))?;
    if build.skip_if_present && build.artifact.is_file() {
        return Ok(());
    }
    announce();
    let status = Command::new(&cargo)
        .args(&build.args)
        .current_dir(workspace)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| BuildError::Io(format!("running cargo: {e}")))?;
    if !status.success() {
        return Err(BuildError::Failed(status.to_string()));
    }
    if !build.artifact.is_file() {
        return Err(BuildError::NotProduced(build.artifact.clone()));
    }
    Ok(())
}
