//! Finding `qemu-system-x86_64` (and installing it when asked to).
//!
//! `TANDEM_QEMU` names the executable (a path, or a name looked up in `PATH`); otherwise
//! `qemu-system-x86_64` is looked up in `PATH`. When it is missing the error says how to
//! install it. With `TANDEM_AUTO_INSTALL=1`, running as root, `tandem` installs it itself
//! (`apt-get update && apt-get install -y qemu-system-x86`) — what a fresh Debian 12 machine
//! needs for the README's commands.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable naming the QEMU executable.
pub const ENV_QEMU: &str = "TANDEM_QEMU";
/// Environment variable that allows installing QEMU with apt-get when running as root.
pub const ENV_AUTO_INSTALL: &str = "TANDEM_AUTO_INSTALL";
/// The default executable name.
pub const QEMU_NAME: &str = "qemu-system-x86_64";
/// The install command printed when QEMU is missing.
pub const INSTALL_HINT: &str = "apt-get install -y qemu-system-x86";

/// QEMU could not be found.
#[derive(Debug, thiserror::Error)]
pub enum QemuBinError {
    /// Not in PATH.
    #[error("{QEMU_NAME} not found; install it with: {INSTALL_HINT}")]
    NotFound,
    /// `TANDEM_QEMU` points at nothing executable.
    #[error("{ENV_QEMU}={0} is not an executable file")]
    BadOverride(String),
    /// The automatic install failed.
    #[error("installing QEMU failed ({0}); install it with: {INSTALL_HINT}")]
    InstallFailed(String),
}

/// Look `name` up in a `PATH`-style list (a name with a `/` is taken as a path).
pub fn find_in_path(name: &OsStr, path_var: Option<&OsStr>) -> Option<PathBuf> {
    let as_path = Path::new(name);
    if as_path.components().count() > 1 {
        return is_executable(as_path).then(|| as_path.to_path_buf());
    }
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Find QEMU: `TANDEM_QEMU`, else `qemu-system-x86_64` in `PATH`.
pub fn find_qemu() -> Result<PathBuf, QemuBinError> {
    let path_var = std::env::var_os("PATH");
    if let Some(over) = std::env::var_os(ENV_QEMU).filter(|v| !v.is_empty()) {
        return find_in_path(&over, path_var.as_deref())
            .ok_or_else(|| QemuBinError::BadOverride(over.to_string_lossy().into_owned()));
    }
    find_in_path(OsStr::new(QEMU_NAME), path_var.as_deref()).ok_or(QemuBinError::NotFound)
}

/// Find QEMU, installing it first when it is missing, we are root and
/// `TANDEM_AUTO_INSTALL=1`.
pub fn ensure_qemu() -> Result<PathBuf, QemuBinError> {
    match find_qemu() {
        Err(QemuBinError::NotFound) if auto_install_allowed() => {
            eprintln!("tandem: {QEMU_NAME} not found; installing it (apt-get, as root)");
            apt_install()?;
            find_qemu()
        }
        other => other,
    }
}

fn auto_install_allowed() -> bool {
    std::env::var(ENV_AUTO_INSTALL).is_ok_and(|v| v == "1") && nix::unistd::geteuid().is_root()
}

fn apt_install() -> Result<(), QemuBinError> {
    for args in [&["update"][..], &["install", "-y", "qemu-system-x86"][..]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| QemuBinError::InstallFailed(format!("apt-get: {e}")))?;
        if !status.success() {
            return Err(QemuBinError::InstallFailed(format!(
                "apt-get {} exited with {status}",
                args.join(" ")
            )));
        }
    }
    Ok(())
}

/// `qemu-storage-daemon` (Debian package `qemu-system-common`).
pub const STORAGE_DAEMON_NAME: &str = "qemu-storage-daemon";
/// `qemu-img` (Debian package `qemu-utils`).
pub const QEMU_IMG_NAME: &str = "qemu-img";

/// Find a QEMU tool such as [`STORAGE_DAEMON_NAME`] or [`QEMU_IMG_NAME`]: beside the QEMU
/// executable in use first (so a `TANDEM_QEMU` build brings its own tools), then in `PATH`.
pub fn find_tool(qemu: &Path, name: &str) -> Option<PathBuf> {
    let beside = qemu.parent().map(|dir| dir.join(name));
    beside
        .filter(|p| is_executable(p))
        .or_else(|| find_in_path(OsStr::new(name), std::env::var_os("PATH").as_deref()))
}

/// `qemu-system-x86_64 --version`, first line (for reports).
pub fn qemu_version(qemu: &Path) -> Option<String> {
    let out = Command::new(qemu).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_in_path_list() {
        let dir = crate::scratch::tempdir().unwrap();
        let exe = dir.path().join("fake-qemu");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let not_exec = dir.path().join("plain");
        std::fs::write(&not_exec, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path_var =
            std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(
            find_in_path(OsStr::new("fake-qemu"), Some(&path_var)),
            Some(exe.clone())
        );
        assert_eq!(find_in_path(OsStr::new("plain"), Some(&path_var)), None);
        assert_eq!(find_in_path(OsStr::new("missing"), Some(&path_var)), None);
        assert_eq!(find_in_path(exe.as_os_str(), None), Some(exe));
    }

    #[test]
    fn tool_beside_qemu_wins() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::scratch::tempdir().unwrap();
        let qemu = dir.path().join("qemu-system-x86_64");
        let tool = dir.path().join("my-tool");
        for p in [&qemu, &tool] {
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(find_tool(&qemu, "my-tool"), Some(tool));
        assert_eq!(find_tool(&qemu, "no-such-tool-anywhere"), None);
    }

    #[test]
    fn not_found_message_names_the_install_command() {
        assert_eq!(
            QemuBinError::NotFound.to_string(),
            "qemu-system-x86_64 not found; install it with: apt-get install -y qemu-system-x86"
        );
    }
}
