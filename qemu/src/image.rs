//! Finding (and if needed building) the guest image.
//!
//! Order: `--image PATH`, then `TANDEM_IMAGE`, then `<workspace>/target/release/unikernel`.
//! The workspace is found by walking up from the `tandem` executable, then from this crate's
//! source directory as recorded at build time, then from the current directory, to the first
//! `Cargo.toml` with a `[workspace]` table.
//!
//! When the default image is missing and cargo is available, it is built with
//! `cargo build --release -p unikernel` in the workspace (always into the workspace's own
//! `target/`, whatever `CARGO_TARGET_DIR` says, so the image lands where it is looked for).
//! Concurrent builders (parallel tests, two terminals) serialise on a lock file and re-check.

use std::path::{Path, PathBuf};

/// Environment variable naming the guest image.
pub const ENV_IMAGE: &str = "TANDEM_IMAGE";
/// The command that builds the guest image.
pub const BUILD_COMMAND: &str = "cargo build --release -p unikernel";

/// Where the image path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    /// `--image`.
    Flag,
    /// `TANDEM_IMAGE`.
    Env,
    /// The workspace's `target/release/unikernel`.
    Workspace,
}

/// A resolved image path (which may not exist yet when it is the workspace default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLocation {
    /// The path.
    pub path: PathBuf,
    /// Where it came from.
    pub source: ImageSource,
    /// The workspace root, when known.
    pub workspace: Option<PathBuf>,
}

/// Image errors.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An explicitly named image does not exist.
    #[error("guest image {} (from {from}) does not exist", .path.display())]
    Missing {
        /// The path.
        path: PathBuf,
        /// `--image` or `TANDEM_IMAGE`.
        from: &'static str,
    },
    /// No workspace to find or build the default image in.
    #[error(
        "no guest image: pass --image PATH or set TANDEM_IMAGE (no Cargo workspace found to \
         build one with `{BUILD_COMMAND}`)"
    )]
    NoWorkspace,
    /// The default image is missing and cargo is not available.
    #[error(
        "guest image {} is missing and cargo is not available; build it with: {BUILD_COMMAND}",
        .0.display()
    )]
    NoCargo(PathBuf),
    /// The build failed.
    #[error("building the guest image failed ({0}); run `{BUILD_COMMAND}` to see why")]
    BuildFailed(String),
    /// The build succeeded but produced no image.
    #[error("`{BUILD_COMMAND}` succeeded but {} does not exist", .0.display())]
    NotProduced(PathBuf),
}

/// True when `dir/Cargo.toml` has a `[workspace]` table.
pub fn is_workspace_root(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .map(|s| s.lines().any(|l| l.trim() == "[workspace]"))
        .unwrap_or(false)
}

/// The first ancestor of `start` (inclusive) that is a workspace root.
pub fn find_workspace_from(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| is_workspace_root(d))
        .map(Path::to_path_buf)
}

/// The project workspace: from the executable, from this crate's build-time location, or
/// from the current directory.
pub fn workspace_root() -> Option<PathBuf> {
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(find_workspace_from));
    from_exe
        .or_else(|| find_workspace_from(Path::new(env!("CARGO_MANIFEST_DIR"))))
        .or_else(|| {
            std::env::current_dir()
                .ok()
                .and_then(|d| find_workspace_from(&d))
        })
}

/// `<workspace>/target/release/unikernel`.
pub fn default_image_path(workspace: &Path) -> PathBuf {
    workspace.join("target").join("release").join("unikernel")
}

/// Resolve the image location from the flag, the environment and the workspace.
pub fn locate(flag: Option<&Path>) -> Result<ImageLocation, ImageError> {
    let workspace = workspace_root();
    if let Some(p) = flag {
        return Ok(ImageLocation {
            path: p.to_path_buf(),
            source: ImageSource::Flag,
            workspace,
        });
    }
    if let Some(p) = std::env::var_os(ENV_IMAGE).filter(|v| !v.is_empty()) {
        return Ok(ImageLocation {
            path: PathBuf::from(p),
            source: ImageSource::Env,
            workspace,
        });
    }
    let ws = workspace.ok_or(ImageError::NoWorkspace)?;
    Ok(ImageLocation {
        path: default_image_path(&ws),
        source: ImageSource::Workspace,
        workspace: Some(ws),
    })
}

/// Resolve the image and make sure it exists, building the workspace default if needed.
pub fn ensure(flag: Option<&Path>) -> Result<PathBuf, ImageError> {
    let loc = locate(flag)?;
    if loc.path.is_file() {
        return Ok(loc.path);
    }
    match loc.source {
        ImageSource::Flag => Err(ImageError::Missing {
            path: loc.path,
            from: "--image",
        }),
        ImageSource::Env => Err(ImageError::Missing {
            path: loc.path,
            from: ENV_IMAGE,
        }),
        ImageSource::Workspace => {
            let ws = loc.workspace.expect("workspace source has a workspace");
            build_guest(&ws)?;
            Ok(loc.path)
        }
    }
}

/// Build the guest image in `workspace` unless it exists, holding a lock so that concurrent
/// callers build it once ([`crate::cargo_build`]).
pub fn build_guest(workspace: &Path) -> Result<(), ImageError> {
    use crate::cargo_build::{cargo_build, BuildError, CargoBuild};
    let image = default_image_path(workspace);
    let build = CargoBuild {
        args: ["build", "--release", "-p", "unikernel"]
            .map(Into::into)
            .to_vec(),
        lock: ".tandem-guest-build.lock",
        artifact: image.clone(),
        skip_if_present: true,
    };
    let announce = || {
        eprintln!(
            "tandem: guest image {} is missing; building it: {BUILD_COMMAND} (in {})",
            image.display(),
            workspace.display()
        )
    };
    cargo_build(workspace, &build, announce).map_err(|e| match e {
        BuildError::NoCargo => ImageError::NoCargo(image.clone()),
        BuildError::Io(e) | BuildError::Failed(e) => ImageError::BuildFailed(e),
        BuildError::NotProduced(p) => ImageError::NotProduced(p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_workspace_by_table() {
        let dir = crate::scratch::tempdir().unwrap();
        let ws = dir.path().join("ws");
        let member = ws.join("member").join("src");
        std::fs::create_dir_all(&member).unwrap();
        std::fs::write(
            ws.join("Cargo.toml"),
            "[workspace]\nmembers = [\"member\"]\n",
        )
        .unwrap();
        std::fs::write(
            ws.join("member").join("Cargo.toml"),
            "[package]\nname = \"m\"\n",
        )
        .unwrap();
        assert_eq!(find_workspace_from(&member), Some(ws.clone()));
        assert!(!is_workspace_root(&ws.join("member")));
        assert_eq!(default_image_path(&ws), ws.join("target/release/unikernel"));
    }

    #[test]
    fn this_workspace_is_found() {
        let ws = workspace_root().expect("tests run inside the workspace");
        assert!(ws.join("qemu").join("Cargo.toml").is_file());
    }

    #[test]
    fn explicit_missing_image_is_an_error() {
        let err = ensure(Some(Path::new("/nonexistent/unikernel"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest image /nonexistent/unikernel (from --image) does not exist"
        );
    }
}
