//! Probing, for every bench: which tools and QEMU features this host has ([`tool`],
//! [`fio_with_nbd`], [`probe_aio`], versions), what an image or an export is ([`image_info`],
//! [`export_size`]), free ports, the ports a guest's command-line words give it, and a running
//! guest's management `status` ([`guest_status`]). Nothing here changes anything but scratch
//! images ([`create_preallocated`]).

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tandem_formats::cmdline::key;
use tandem_formats::mgmt_status::Status;

use crate::accel;
use crate::builder::{Aio, Disk, DiskFormat, QemuCommand};
use crate::qmp::Qmp;
use crate::run::{GUEST_MGMT_PORT, GUEST_NBD_PORT};
use crate::size::ByteSize;
use crate::supervise::Interrupted;
use crate::vm::{Poll, SpawnOptions, Vm};

/// How long the io_uring probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one management-port query may take.
pub const MGMT_TIMEOUT: Duration = Duration::from_secs(5);

/// A host tool the benches use, and how to install it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `qemu-img` (beside QEMU, else on `PATH`).
    QemuImg,
    /// `qemu-nbd` (beside QEMU, else on `PATH`).
    QemuNbd,
    /// `qemu-storage-daemon` (beside QEMU, else on `PATH`).
    StorageDaemon,
    /// `fio` (on `PATH`).
    Fio,
    /// `nbdcopy` (on `PATH`).
    Nbdcopy,
}

impl Tool {
    /// Its executable's name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::QemuImg => crate::qemu_bin::QEMU_IMG_NAME,
            Tool::QemuNbd => "qemu-nbd",
            Tool::StorageDaemon => crate::qemu_bin::STORAGE_DAEMON_NAME,
            Tool::Fio => "fio",
            Tool::Nbdcopy => "nbdcopy",
        }
    }

    /// The Debian package that has it.
    pub fn package(self) -> &'static str {
        match self {
            Tool::QemuImg | Tool::QemuNbd => "qemu-utils",
            Tool::StorageDaemon => "qemu-system-common",
            Tool::Fio => "fio",
            Tool::Nbdcopy => "libnbd-bin",
        }
    }

    /// Where it is, if anywhere (the QEMU tools beside `qemu` first).
    pub fn find(self, qemu: &Path) -> Option<PathBuf> {
        match self {
            Tool::QemuImg | Tool::QemuNbd | Tool::StorageDaemon => {
                crate::qemu_bin::find_tool(qemu, self.name())
            }
            Tool::Fio | Tool::Nbdcopy => {
                let path = std::env::var_os("PATH");
                crate::qemu_bin::find_in_path(self.name().as_ref(), path.as_deref())
            }
        }
    }

    /// Why it is missing: `qemu-img not found; install it with: apt-get install -y ...`.
    pub fn missing(self) -> String {
        format!(
            "{} not found; install it with: apt-get install -y {}",
            self.name(),
            self.package()
        )
    }
}

/// The tool, or an error saying how to install it.
pub fn tool(t: Tool, qemu: &Path) -> anyhow::Result<PathBuf> {
    t.find(qemu).with_context(|| t.missing())
}

/// `fio`, checked for its nbd ioengine.
pub fn fio_with_nbd() -> anyhow::Result<PathBuf> {
    let fio = tool(Tool::Fio, Path::new(""))?;
    let enghelp = std::process::Command::new(&fio)
        .arg("--enghelp=nbd")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", fio.display()))?;
    if !enghelp.success() {
        bail!(
            "{} has no nbd ioengine (fio built without libnbd); Debian's fio package has it",
            fio.display()
        );
    }
    Ok(fio)
}

/// `fio --version`.
pub fn fio_version(fio: &Path) -> Option<String> {
    let out = std::process::Command::new(fio)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!v.is_empty()).then_some(v)
}

/// A data image a bench uses.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// Path (gone after the bench when it was a scratch image).
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Bytes allocated on the host (less than `bytes`: sparse).
    pub allocated_bytes: u64,
    /// How it was made: `qemu-img create -f raw -o preallocation=full` or `given`.
    pub origin: String,
}

/// What `path` is (absolute path, size, allocated bytes), made by `origin`.
pub fn image_info(path: &Path, origin: &str) -> anyhow::Result<ImageInfo> {
    use std::os::unix::fs::MetadataExt;
    let abs = std::path::absolute(path).with_context(|| path.display().to_string())?;
    let meta = std::fs::metadata(&abs).with_context(|| abs.display().to_string())?;
    Ok(ImageInfo {
        path: abs.display().to_string(),
        bytes: meta.len(),
        allocated_bytes: meta.blocks() * 512,
        origin: origin.into(),
    })
}

/// Create a raw image with every block written (`qemu-img create -o preallocation=full`).
pub fn create_preallocated(qemu_img: &Path, path: &Path, size: ByteSize) -> anyhow::Result<()> {
    let out = std::process::Command::new(qemu_img)
        .args(["create", "-q", "-f", "raw", "-o", "preallocation=full"])
        .arg(path)
        .arg(size.bytes().to_string())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", qemu_img.display()))?;
    if !out.status.success() {
        bail!(
            "{} create {} failed ({}): {}",
            qemu_img.display(),
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Can this QEMU open the image with `aio` (and `cache.direct=on`)? Starts QEMU paused with
/// no guest and waits for its QMP greeting, which comes only after every `-blockdev` opened;
/// a QEMU that exits first could not (its error is returned).
pub fn probe_aio(
    qemu: &Path,
    accel: accel::Accel,
    image: &Path,
    aio: Aio,
    dir: &Path,
    interrupted: &AtomicBool,
) -> anyhow::Result<Result<(), String>> {
    let sock = dir.join("probe-qmp.sock");
    let _ = std::fs::remove_file(&sock);
    let cmd = QemuCommand::new(qemu)
        .name("tandem-probe")
        .accel(accel)
        .start_paused(true)
        .qmp_socket(&sock)
        .disk(
            Disk::new(image)
                .with_format(DiskFormat::Raw)
                .aio(aio)
                .cache_direct(true),
        );
    let mut vm = Vm::spawn(&cmd, SpawnOptions::default())?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        if interrupted.load(Ordering::SeqCst) {
            vm.kill();
            return Err(Interrupted.into());
        }
        if let Poll::Exited(exit) = vm.poll(Duration::from_millis(20)) {
            let err = vm.stderr_text();
            let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            return Ok(Err(if first.is_empty() {
                exit.to_string()
            } else {
                first.trim().to_string()
            }));
        }
        if Instant::now() >= deadline {
            vm.kill();
            return Ok(Err(format!("QEMU did not start within {PROBE_TIMEOUT:?}")));
        }
        if sock.exists()
            && let Ok(mut q) = Qmp::connect(&sock, Duration::from_secs(2))
        {
            let _ = q.quit();
            if vm.wait_exit(Duration::from_secs(5)).is_err() {
                vm.kill();
            }
            return Ok(Ok(()));
        }
    }
}

/// The size of the NBD export at `uri` (`nbdinfo --size URI`).
pub fn export_size(uri: &str) -> anyhow::Result<u64> {
    let out = std::process::Command::new("nbdinfo")
        .args(["--size", uri])
        .stdin(Stdio::null())
        .output()
        .context("running nbdinfo (apt-get install -y libnbd-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse() {
        Ok(n) if out.status.success() => Ok(n),
        _ => bail!(
            "nbdinfo --size {uri} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A free TCP port on 127.0.0.1 (free now; the server binds it a moment later).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The last `KEY=` value in the guest command-line words that parses.
fn word<T: std::str::FromStr>(cmdline: Option<&str>, key: &str) -> Option<T> {
    cmdline
        .into_iter()
        .flat_map(str::split_whitespace)
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .filter_map(|p| p.parse().ok())
        .next_back()
}

/// The guest NBD port named by `nbd.port=` in the guest command-line words, else 10809.
pub fn guest_nbd_port(cmdline: Option<&str>) -> u16 {
    word(cmdline, key::NBD_PORT).unwrap_or(GUEST_NBD_PORT)
}

/// The guest management port named by `mgmt.port=` in the guest command-line words, else
/// 10810; `None` when the words turn it off (`mgmt.port=0`).
pub fn guest_mgmt_port(cmdline: Option<&str>) -> Option<u16> {
    let port = word(cmdline, key::MGMT_PORT).unwrap_or(GUEST_MGMT_PORT);
    (port != 0).then_some(port)
}

/// Whether the guest command-line words ask for `durability=nvlog`.
pub fn guest_nvlog(cmdline: Option<&str>) -> bool {
    word::<String>(cmdline, key::DURABILITY).as_deref() == Some("nvlog")
}

/// The guest's `status` through its management port at `127.0.0.1:port`.
pub fn guest_status(port: u16, key: &crate::mgmt::Key) -> anyhow::Result<Status> {
    let addr = (Ipv4Addr::LOCALHOST, port).into();
    let line = crate::mgmt::command(addr, key, "status", MGMT_TIMEOUT)
        .with_context(|| format!("reading the guest's status from {addr}"))?;
    Status::parse(&line).map_err(|e| anyhow::anyhow!("{e}: {:?}", line.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_port_from_cmdline() {
        assert_eq!(guest_nbd_port(None), 10809);
        assert_eq!(guest_nbd_port(Some("log=debug")), 10809);
        assert_eq!(guest_nbd_port(Some("nbd.port=2000 log=info")), 2000);
        assert_eq!(guest_nbd_port(Some("nbd.port=x")), 10809);
        assert_eq!(guest_mgmt_port(None), Some(10810));
        assert_eq!(guest_mgmt_port(Some("mgmt.port=2001")), Some(2001));
        assert_eq!(guest_mgmt_port(Some("log=info mgmt.port=0")), None);
        assert!(guest_nvlog(Some("durability=disk durability=nvlog")));
        assert!(!guest_nvlog(Some("durability=nvlog durability=disk")));
        assert!(!guest_nvlog(None));
    }

    #[test]
    fn tools_say_how_to_install_them() {
        assert_eq!(
            Tool::QemuImg.missing(),
            "qemu-img not found; install it with: apt-get install -y qemu-utils"
        );
        assert_eq!(Tool::Nbdcopy.package(), "libnbd-bin");
    }
}
