//! `tandem run`: the single guest's arguments, its disks and their back ends.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, ValueEnum};

use crate::builder::{Disk, MacAddr, Machine};
use crate::size::ByteSize;

use super::*;

/// `tandem run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Machine type.
    #[arg(long, value_enum, default_value_t = Machine::Q35)]
    pub machine: Machine,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub vm: VmArgs,
    /// A data disk (repeatable, in guest order). Format: qcow2 for a .qcow2 extension,
    /// else raw. Append ",ro" to attach read-only: --disk base.qcow2,ro.
    /// Append ",blkdebug=CONF" to put it behind QEMU's blkdebug driver, which injects the
    /// errors the config file CONF describes, e.g. every write covering sector 4096 (the
    /// export's first MiB starts at sector 2048) failing with EIO:
    /// `[inject-error]` / `event = "pwritev"` / `iotype = "write"` / `errno = "5"` /
    /// `sector = "4096"` (keys: event, iotype read|write|flush|..., errno, sector,
    /// once on|off, immediately on|off; events pwritev, read_aio, flush_to_disk, ...).
    /// A disk whose label write or flush fails at boot is not served: target the data area,
    /// and gate flush rules with blkdebug states (tests/tests/disk_errors.rs has examples).
    /// Without --disk, STATE_DIR/disk0.raw is used (created sparse, --disk-size).
    #[arg(long, value_name = "PATH[,ro][,blkdebug=CONF]")]
    pub disk: Vec<DiskSpec>,
    /// Size of the default disk when it is created.
    #[arg(long, default_value = "1G", value_name = "SIZE")]
    pub disk_size: ByteSize,
    /// How the data disks reach the guest: qemu (virtio-blk on QEMU's block layer) or
    /// vhost-user (vhost-user-blk, each raw disk served by its own tandem-backend daemon,
    /// guest RAM in a shared memfd; the daemons stop when QEMU exits).
    #[arg(long, value_enum, default_value_t = DiskBackend::Qemu)]
    pub backend: DiskBackend,
    /// State directory: default disk, qmp.sock, qemu.pid, console.log.
    #[arg(long, default_value = crate::state::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Host port on 127.0.0.1 forwarded to the guest's NBD port 10809 (0: no forward).
    #[arg(long, default_value_t = 10809, value_name = "PORT")]
    pub nbd_port: u16,
    /// Host port on 127.0.0.1 forwarded to the guest's management port 10810 (0: no forward,
    /// and the channel stays off); the guest gets the state directory's key (`mgmt.key`,
    /// made when missing) and `mgmt.on_data=on`. Use it with `tandem mgmt`.
    #[arg(long, default_value_t = 10810, value_name = "PORT")]
    pub mgmt_port: u16,
    /// Serve NBD over TLS with the credentials in DIR (QEMU's tls-creds-x509 layout:
    /// ca-cert.pem, server-cert.pem, server-key.pem; `tandem tls create --dir DIR` makes a
    /// throwaway set). They reach the guest in its boot module (`<state-dir>/boot.module`,
    /// 0600), never on a command line.
    #[arg(long, value_name = "DIR")]
    pub tls: Option<PathBuf>,
    /// With --tls: `require` (plaintext clients get NBD_REP_ERR_TLS_REQD and see no export)
    /// or `on` (plaintext clients are served too).
    #[arg(long, value_enum, default_value_t = TlsModeArg::Require, requires = "tls")]
    pub tls_mode: TlsModeArg,
    /// With --tls: clients must present a certificate signed by ca-cert.pem (QEMU's
    /// verify-peer).
    #[arg(long, requires = "tls")]
    pub tls_verify_peer: bool,
    /// Use FILE as is as the guest's boot module (`-initrd`): an appliance's `boot.module`
    /// (0600), made by `tandem image build` with the key's word and the TLS files.
    #[arg(long, value_name = "FILE", hide = true, conflicts_with = "tls")]
    pub boot_module: Option<PathBuf>,
    /// MAC address of the NIC (default: QEMU's).
    #[arg(long)]
    pub mac: Option<MacAddr>,
    /// microvm only: ACPI on or off. Default off: with ACPI on, QEMU describes the
    /// virtio-mmio devices only in ACPI tables and leaves them off the kernel command line
    /// (virtio_mmio.device=...), which is where the guest looks for them.
    #[arg(long, value_enum)]
    pub acpi: Option<OnOff>,
    /// Print the QEMU command line and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Exit instead of rebooting when the guest resets (e.g. on a triple fault).
    #[arg(long)]
    pub no_reboot: bool,
    /// Stop QEMU after this many seconds (exit status 124), for scripts.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Size of the guest's NVRAM region (STATE_DIR/nvram.bin, an ivshmem-plain device over
    /// that file) when the file is created: a power of two, at least 1M. Default 64M. An
    /// existing nvram.bin keeps its size and contents (delete it to start over).
    #[arg(long, value_name = "SIZE", value_parser = parse_nvram_size)]
    pub nvram_size: Option<ByteSize>,
    /// Give the guest no NVRAM region (its write log then lives in guest RAM).
    #[arg(long, conflicts_with = "nvram_size")]
    pub no_nvram: bool,
}

/// `--nvram-size`: a size QEMU can map as an ivshmem BAR (a power of two, at least 1 MiB).
pub fn parse_nvram_size(s: &str) -> Result<ByteSize, String> {
    parse_checked_size(s, crate::builder::SharedRegion::check_size)
}

/// `tandem run --backend`: who serves the data disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiskBackend {
    /// virtio-blk devices on QEMU's own block layer.
    Qemu,
    /// vhost-user-blk devices served by tandem-backend (host-backend/).
    #[value(name = "vhost-user", alias = "vhost_user")]
    VhostUser,
}

/// `on` / `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// `--disk PATH[,ro][,blkdebug=CONF]` (the options in either order, after the path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec(pub Disk);

impl FromStr for DiskSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const BLKDEBUG: &str = ",blkdebug=";
        let (mut path, mut ro, mut blkdebug) = (s, None, None);
        loop {
            if let Some(p) = path.strip_suffix(",ro") {
                ro = ro.or(Some(true));
                path = p;
            } else if let Some(p) = path.strip_suffix(",rw") {
                ro = ro.or(Some(false));
                path = p;
            } else if let Some(i) = path.rfind(BLKDEBUG) {
                let conf = &path[i + BLKDEBUG.len()..];
                if conf.is_empty() {
                    return Err("blkdebug= needs a config file".into());
                }
                if blkdebug.replace(conf).is_some() {
                    return Err("blkdebug= given twice".into());
                }
                path = &path[..i];
            } else {
                break;
            }
        }
        if path.is_empty() {
            return Err("empty disk path".into());
        }
        let mut disk = Disk::new(path);
        if ro == Some(true) {
            disk = disk.read_only();
        }
        if let Some(conf) = blkdebug {
            disk = disk.blkdebug(conf);
        }
        Ok(DiskSpec(disk))
    }
}
