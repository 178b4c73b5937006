//! The one typed QEMU command-line builder.
//!
//! Every QEMU invocation in the project (the `tandem` command, benches, integration tests,
//! later topologies) is described as a [`QemuCommand`] and turned into arguments by
//! [`QemuCommand::to_args`]. Nobody pastes option strings together elsewhere, so escaping
//! (QEMU doubles commas inside option values), machine-specific device names (PCI on q35,
//! virtio-mmio on microvm) and the fixed plumbing every guest relies on (serial console on
//! stdout, `isa-debug-exit` at port 0xf4 for the exit protocol, a QMP socket) live in one
//! place and are unit-tested.
//!
//! Fixed plumbing, always emitted:
//! `-nodefaults -no-user-config -display none`, the serial console as
//! `-chardev stdio,id=con,signal=off -serial chardev:con` (QEMU's stdout is the console;
//! the caller gives QEMU a null stdin), and
//! `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
//!
//! The block backends `tandem bench blk` compares are typed here too: a disk's file-node
//! `aio=` and `cache.direct=` ([`Disk::aio`], [`Disk::cache_direct`]), a disk behind QEMU's
//! error-injecting `blkdebug` driver ([`Disk::blkdebug`]), guest RAM from a
//! shared memfd ([`MemoryBackend`], which vhost-user needs so the backend can map guest
//! memory), vhost-user-blk devices on a unix-socket chardev ([`VhostUserBlk`]), and the
//! `qemu-storage-daemon` line that exports a file over vhost-user-blk
//! ([`StorageDaemonCommand`]).
//!
//! So is the host NBD server the NBD bench compares the guest against
//! ([`NbdServerCommand`], a `qemu-nbd` line). The guest's emulated NVRAM is typed too ([`SharedRegion`]): a file-backed shared memory
//! backend shown to the guest as an `ivshmem-plain` PCI device (`nvram0`, ...). ivshmem is
//! PCI-only, so on microvm the region is left out and [`QemuCommand::notes`] says so.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::accel::Accel;
use crate::size::ByteSize;

/// I/O port of the `isa-debug-exit` device the guest writes its exit code to.
pub const DEBUG_EXIT_IOBASE: u16 = 0xf4;

/// The QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// A modern PC: PCIe (ECAM), SeaBIOS, ACPI; virtio over PCI.
    Q35,
    /// QEMU's minimal machine: no PCI by default, virtio over MMIO, no firmware.
    Microvm,
}

impl Machine {
    /// The name QEMU uses for `-machine`.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm",
        }
    }

    fn blk_device(self) -> &'static str {
        match self {
            Machine::Q35 => "virtio-blk-pci",
            Machine::Microvm => "virtio-blk-device",
        }
    }

    fn vhost_user_blk_device(self) -> &'static str {
        match self {
            Machine::Q35 => "vhost-user-blk-pci",
            // On virtio-mmio the device model itself plugs into the bus.
            Machine::Microvm => "vhost-user-blk",
        }
    }

    fn net_device(self) -> &'static str {
        match self {
            Machine::Q35 => "virtio-net-pci",
            Machine::Microvm => "virtio-net-device",
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Image format of a data disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskFormat {
    /// A plain (usually sparse) file.
    Raw,
    /// A qcow2 image.
    Qcow2,
}

impl DiskFormat {
    /// The QEMU block driver name.
    pub fn driver(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// `qcow2` for a `.qcow2` extension (any case), else `raw`.
    pub fn from_path(path: &Path) -> DiskFormat {
        match path.extension().and_then(OsStr::to_str) {
            Some(ext) if ext.eq_ignore_ascii_case("qcow2") => DiskFormat::Qcow2,
            _ => DiskFormat::Raw,
        }
    }
}

/// How QEMU's `file` block driver submits I/O to the host kernel (`aio=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Aio {
    /// A pool of worker threads doing blocking `preadv`/`pwritev` (QEMU's default).
    #[serde(rename = "threads")]
    Threads,
    /// Linux AIO (`io_submit`); QEMU requires `cache.direct=on` with it.
    #[serde(rename = "native")]
    Native,
    /// `io_uring`, when QEMU was built with liburing and the kernel allows it.
    #[serde(rename = "io_uring")]
    IoUring,
}

impl Aio {
    /// The value QEMU takes for `aio=`.
    pub fn name(self) -> &'static str {
        match self {
            Aio::Threads => "threads",
            Aio::Native => "native",
            Aio::IoUring => "io_uring",
        }
    }
}

impl fmt::Display for Aio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A data disk given to the guest as a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Host path of the image.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Attach read-only.
    pub read_only: bool,
    /// The file node's `aio=`; `None` keeps QEMU's default (threads).
    pub aio: Option<Aio>,
    /// The file node's `cache.direct=` (`on`: `O_DIRECT`, the host page cache is bypassed);
    /// `None` keeps QEMU's default (off).
    pub cache_direct: Option<bool>,
    /// The file node's `locking=`: `Some(false)` turns off QEMU's image locking (OFD locks
    /// on the file), which otherwise refuses a second QEMU that opens the same image
    /// writable. Only for images whose writers are coordinated some other way (a failover
    /// pair: both guests attach both nodes' disks, the pair's fencing decides who writes).
    /// `None` keeps QEMU's default (on).
    pub locking: Option<bool>,
    /// A blkdebug config file: the image sits behind QEMU's `blkdebug` driver, which
    /// injects the errors the file describes (`[inject-error]` sections: `event`,
    /// `iotype`, `errno`, `sector`, `once`, `immediately`). The file-node options
    /// (`aio=`, `cache.direct=`, `locking=`) then go to the image under it
    /// (`file.image.*`). For tests of failing disks.
    pub blkdebug: Option<PathBuf>,
}

impl Disk {
    /// A read-write disk whose format follows the extension (`.qcow2` else raw).
    pub fn new(path: impl Into<PathBuf>) -> Disk {
        let path = path.into();
        let format = DiskFormat::from_path(&path);
        Disk {
            path,
            format,
            read_only: false,
            aio: None,
            cache_direct: None,
            locking: None,
            blkdebug: None,
        }
    }

    /// The same disk behind QEMU's blkdebug driver with config file `config` (see
    /// [`Disk::blkdebug`]): `file.driver=blkdebug,file.config=CONF,file.image.driver=file,
    /// file.image.filename=PATH`.
    pub fn blkdebug(mut self, config: impl Into<PathBuf>) -> Disk {
        self.blkdebug = Some(config.into());
        self
    }

    /// The same disk with the file node's `aio=` set.
    pub fn aio(mut self, aio: Aio) -> Disk {
        self.aio = Some(aio);
        self
    }

    /// The same disk with the file node's `cache.direct=` set.
    pub fn cache_direct(mut self, on: bool) -> Disk {
        self.cache_direct = Some(on);
        self
    }

    /// The same disk with the file node's `locking=` set (see [`Disk::locking`]).
    pub fn locking(mut self, on: bool) -> Disk {
        self.locking = Some(on);
        self
    }

    /// The same disk, read-only.
    pub fn read_only(mut self) -> Disk {
        self.read_only = true;
        self
    }

    /// The same disk with an explicit format.
    pub fn with_format(mut self, format: DiskFormat) -> Disk {
        self.format = format;
        self
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// A MAC address that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address '{0}': expected six hex bytes like 52:54:00:12:34:56")]
pub struct MacError(String);

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(|| MacError(s.to_string()))?;
            if p.len() != 2 {
                return Err(MacError(s.to_string()));
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| MacError(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(MacError(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A TCP port forward from the host into a user-networking guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// Host address to listen on (127.0.0.1 by default: services stay on loopback).
    pub host_addr: Ipv4Addr,
    /// Host port.
    pub host_port: u16,
    /// Guest port.
    pub guest_port: u16,
}

impl PortForward {
    /// Forward `127.0.0.1:host_port` to the guest's `guest_port`.
    pub fn tcp(host_port: u16, guest_port: u16) -> PortForward {
        PortForward {
            host_addr: Ipv4Addr::LOCALHOST,
            host_port,
            guest_port,
        }
    }
}

/// A virtio-net NIC: on QEMU user networking (the default), or on an existing tap device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nic {
    /// MAC address; QEMU picks one when `None`.
    pub mac: Option<MacAddr>,
    /// Host → guest TCP forwards (user networking only).
    pub forwards: Vec<PortForward>,
    /// Attach to this existing tap device instead of user networking
    /// (`-netdev tap,ifname=NAME,script=no,downscript=no`): QEMU opens it and runs no helper
    /// scripts, so whoever made the tap (and its bridge) owns the host side.
    pub tap: Option<String>,
}

impl Nic {
    /// A NIC with no forwards and QEMU's default MAC.
    pub fn user() -> Nic {
        Nic::default()
    }

    /// A NIC on the existing tap device `ifname` (see [`Nic::tap`]), QEMU's default MAC.
    pub fn tap(ifname: impl Into<String>) -> Nic {
        Nic {
            tap: Some(ifname.into()),
            ..Nic::default()
        }
    }

    /// Set the MAC.
    pub fn mac(mut self, mac: MacAddr) -> Nic {
        self.mac = Some(mac);
        self
    }

    /// Add a TCP forward from 127.0.0.1:`host_port` to the guest's `guest_port`.
    pub fn forward(mut self, host_port: u16, guest_port: u16) -> Nic {
        self.forwards.push(PortForward::tcp(host_port, guest_port));
        self
    }
}

/// Where guest RAM comes from, when not QEMU's default anonymous memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryBackend {
    /// `memory-backend-memfd`; with `share` the pages are `MAP_SHARED`, so another process
    /// that receives the memfd (a vhost-user backend) sees and writes guest memory.
    Memfd {
        /// `share=on`.
        share: bool,
    },
}

/// The object id of the guest RAM backend.
pub const MEMORY_BACKEND_ID: &str = "mem";

/// A vhost-user-blk device: the block device is served by another process (for example
/// `qemu-storage-daemon`) over a unix socket; QEMU only relays the virtqueues. The backend
/// maps guest memory, so guest RAM must be shared ([`QemuCommand::vhost_user_blk`] turns on
/// a shared memfd backend when none is set). On microvm the virtio-mmio transport must be
/// modern ([`QemuCommand::modern_mmio`]): libvhost-user refuses legacy virtio devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserBlk {
    /// The backend's unix socket (QEMU connects as the client).
    pub socket: PathBuf,
    /// `num-queues=`; `None` keeps QEMU's default.
    pub num_queues: Option<u16>,
}

impl VhostUserBlk {
    /// A device on `socket` with QEMU's default queue count.
    pub fn new(socket: impl Into<PathBuf>) -> VhostUserBlk {
        VhostUserBlk {
            socket: socket.into(),
            num_queues: None,
        }
    }

    /// Set `num-queues=`.
    pub fn num_queues(mut self, n: u16) -> VhostUserBlk {
        self.num_queues = Some(n);
        self
    }
}

/// A shared-memory region: a file mapped `MAP_SHARED` as a QEMU memory backend and shown to
/// the guest as an `ivshmem-plain` PCI device (the guest names the first one `nvram0`). What
/// the guest stores there is in the file at once (the host page cache), so it survives a
/// crash of the guest or of QEMU, though not a host power loss.
///
/// `-object memory-backend-file,id=nvramN,share=on,mem-path=FILE,size=SIZE`
/// `-device ivshmem-plain,memdev=nvramN`
///
/// The size must be a power of two (QEMU aborts on another size: it becomes a PCI BAR) and
/// equal the file's length when the file exists (QEMU refuses a mismatch); see
/// [`SharedRegion::check_size`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRegion {
    /// The backing file.
    pub path: PathBuf,
    /// Its size.
    pub size: ByteSize,
}

impl SharedRegion {
    /// The smallest region accepted.
    pub const MIN_SIZE: ByteSize = ByteSize::mib(1);

    /// A region over `path` of `size`.
    pub fn new(path: impl Into<PathBuf>, size: ByteSize) -> SharedRegion {
        SharedRegion {
            path: path.into(),
            size,
        }
    }

    /// Whether QEMU can map a region of `size` as an ivshmem BAR: a power of two, at least
    /// [`SharedRegion::MIN_SIZE`].
    pub fn check_size(size: ByteSize) -> Result<(), String> {
        let b = size.bytes();
        if !b.is_power_of_two() {
            return Err(format!(
                "{size} ({b} bytes) is not a power of two (ivshmem maps the region as a PCI BAR)"
            ));
        }
        if b < Self::MIN_SIZE.bytes() {
            return Err(format!("{size} is smaller than {}", Self::MIN_SIZE));
        }
        Ok(())
    }
}

/// The memory-backend object id of shared region `i`.
pub fn shared_region_id(i: usize) -> String {
    format!("nvram{i}")
}

/// An extra QEMU option, for what the builder does not model yet: `-NAME [VALUE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraArg {
    /// Option name without the leading dash, e.g. `trace`.
    pub option: String,
    /// Its value, if it takes one.
    pub value: Option<OsString>,
}

/// A complete QEMU command line, described by what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    /// The QEMU executable.
    pub qemu: PathBuf,
    /// Machine type.
    pub machine: Machine,
    /// Accelerator.
    pub accel: Accel,
    /// Guest RAM.
    pub memory: ByteSize,
    /// Number of vCPUs.
    pub smp: u32,
    /// The guest kernel (`-kernel`); `None` boots nothing (for QMP-only tests).
    pub kernel: Option<PathBuf>,
    /// Guest command-line words, joined with spaces into `-append`.
    pub cmdline: Vec<String>,
    /// The first PVH boot module (`-initrd`; needs `kernel`): the guest reads it as more
    /// command-line words, so that a secret (`mgmt.key=`) stays out of QEMU's argv.
    pub initrd: Option<PathBuf>,
    /// Data disks, in guest order.
    pub disks: Vec<Disk>,
    /// vhost-user-blk devices, after the data disks in guest order.
    pub vhost_user_blks: Vec<VhostUserBlk>,
    /// Guest RAM backend (`-object ... -machine ...,memory-backend=mem`).
    pub memory_backend: Option<MemoryBackend>,
    /// microvm only: modern (virtio 1.0) virtio-mmio devices
    /// (`-global virtio-mmio.force-legacy=false`) instead of QEMU's legacy default.
    pub modern_mmio: bool,
    /// NICs, in guest order.
    pub nics: Vec<Nic>,
    /// Shared-memory regions (`ivshmem-plain` over a file), in guest order; q35 only (left
    /// out on microvm, which has no PCI; see [`QemuCommand::notes`]).
    pub shared_regions: Vec<SharedRegion>,
    /// QMP unix socket path.
    pub qmp_socket: Option<PathBuf>,
    /// QEMU writes its pid here.
    pub pidfile: Option<PathBuf>,
    /// `-no-reboot`: a guest reset (e.g. a triple fault) exits QEMU instead of rebooting.
    pub no_reboot: bool,
    /// `-S`: start with the CPUs stopped.
    pub start_paused: bool,
    /// microvm only: `acpi=on|off`; `None` keeps QEMU's default.
    pub microvm_acpi: Option<bool>,
    /// q35 only: load the NICs' PXE option ROMs (off by default: we boot with `-kernel`,
    /// and the ROMs only cost boot time).
    pub nic_option_rom: bool,
    /// `-name`.
    pub name: Option<String>,
    /// Escape hatch, appended last.
    pub extra: Vec<ExtraArg>,
}

impl QemuCommand {
    /// A command for `qemu` with the defaults: q35, TCG, 64 MiB, one vCPU, nothing attached.
    pub fn new(qemu: impl Into<PathBuf>) -> QemuCommand {
        QemuCommand {
            qemu: qemu.into(),
            machine: Machine::Q35,
            accel: Accel::Tcg,
            memory: ByteSize::mib(64),
            smp: 1,
            kernel: None,
            cmdline: Vec::new(),
            initrd: None,
            disks: Vec::new(),
            vhost_user_blks: Vec::new(),
            memory_backend: None,
            modern_mmio: false,
            nics: Vec::new(),
            shared_regions: Vec::new(),
            qmp_socket: None,
            pidfile: None,
            no_reboot: false,
            start_paused: false,
            microvm_acpi: None,
            nic_option_rom: false,
            name: None,
            extra: Vec::new(),
        }
    }

    /// Set the machine type.
    pub fn machine(mut self, machine: Machine) -> Self {
        self.machine = machine;
        self
    }

    /// Set the accelerator.
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }

    /// Set guest RAM.
    pub fn memory(mut self, memory: ByteSize) -> Self {
        self.memory = memory;
        self
    }

    /// Set the vCPU count.
    pub fn smp(mut self, smp: u32) -> Self {
        self.smp = smp;
        self
    }

    /// Set the guest kernel.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// Append words to the guest command line (split on whitespace).
    pub fn cmdline(mut self, words: &str) -> Self {
        self.cmdline
            .extend(words.split_whitespace().map(str::to_string));
        self
    }

    /// Set the file the guest gets as its first boot module (`-initrd`): guest words it
    /// reads after its command line's, e.g. the management key file. Only its name is on
    /// QEMU's command line.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    /// Add a data disk.
    pub fn disk(mut self, disk: Disk) -> Self {
        self.disks.push(disk);
        self
    }

    /// Add a vhost-user-blk device; guest RAM becomes a shared memfd unless a memory
    /// backend is already set.
    pub fn vhost_user_blk(mut self, dev: VhostUserBlk) -> Self {
        self.vhost_user_blks.push(dev);
        if self.memory_backend.is_none() {
            self.memory_backend = Some(MemoryBackend::Memfd { share: true });
        }
        self
    }

    /// Set the guest RAM backend.
    pub fn memory_backend(mut self, backend: MemoryBackend) -> Self {
        self.memory_backend = Some(backend);
        self
    }

    /// microvm: modern virtio-mmio devices (ignored on q35).
    pub fn modern_mmio(mut self, on: bool) -> Self {
        self.modern_mmio = on;
        self
    }

    /// Add a NIC.
    pub fn nic(mut self, nic: Nic) -> Self {
        self.nics.push(nic);
        self
    }

    /// Add a shared-memory region (ivshmem-plain; q35 only).
    pub fn shared_region(mut self, region: SharedRegion) -> Self {
        self.shared_regions.push(region);
        self
    }

    /// What this command asks for that its machine cannot have and [`QemuCommand::to_args`]
    /// therefore leaves out, one sentence each (for the caller to print once).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.machine == Machine::Microvm && !self.shared_regions.is_empty() {
            notes.push(format!(
                "microvm has no PCI bus and ivshmem-plain is a PCI device: the guest gets no \
                 shared-memory region (NVRAM) on this machine ({} left out)",
                self.shared_regions
                    .iter()
                    .map(|r| r.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for (i, nic) in self.nics.iter().enumerate() {
            if let (Some(tap), false) = (&nic.tap, nic.forwards.is_empty()) {
                notes.push(format!(
                    "NIC net{i} is on tap device {tap}: its port forwards are left out (they \
                     exist only on user networking)"
                ));
            }
        }
        notes
    }

    /// Set the QMP socket path.
    pub fn qmp_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.qmp_socket = Some(path.into());
        self
    }

    /// Set the pidfile path.
    pub fn pidfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.pidfile = Some(path.into());
        self
    }

    /// Exit instead of rebooting on guest reset.
    pub fn no_reboot(mut self, on: bool) -> Self {
        self.no_reboot = on;
        self
    }

    /// Start with CPUs stopped (`-S`).
    pub fn start_paused(mut self, on: bool) -> Self {
        self.start_paused = on;
        self
    }

    /// microvm: force ACPI on or off.
    pub fn microvm_acpi(mut self, on: bool) -> Self {
        self.microvm_acpi = Some(on);
        self
    }

    /// Set `-name`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Add an extra option `-option [value]`.
    pub fn extra(mut self, option: &str, value: Option<&str>) -> Self {
        self.extra.push(ExtraArg {
            option: option.trim_start_matches('-').to_string(),
            value: value.map(OsString::from),
        });
        self
    }

    /// The guest command line as passed to `-append`.
    pub fn cmdline_string(&self) -> String {
        self.cmdline.join(" ")
    }

    /// The argument vector (without the program name): the machine and accelerator, the
    /// fixed plumbing, the kernel, then the devices (disks, vhost-user-blk, NICs, shared
    /// regions) and the control sockets.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        if let Some(name) = &self.name {
            a.pair("-name", name);
        }
        self.machine_args(&mut a);
        self.plumbing_args(&mut a);
        self.kernel_args(&mut a);
        self.disk_args(&mut a);
        self.vhost_user_args(&mut a);
        self.nic_args(&mut a);
        self.shared_region_args(&mut a);
        self.control_args(&mut a);
        a.0
    }

    /// `-machine` (and its memory backend), `-accel`, `-cpu`.
    fn machine_args(&self, a: &mut Args) {
        let mut machine = self.machine.name().to_string();
        if let (Machine::Microvm, Some(acpi)) = (self.machine, self.microvm_acpi) {
            machine.push_str(if acpi { ",acpi=on" } else { ",acpi=off" });
        }
        if self.memory_backend.is_some() {
            machine.push_str(&format!(",memory-backend={MEMORY_BACKEND_ID}"));
        }
        a.pair("-machine", machine);
        if let Some(MemoryBackend::Memfd { share }) = self.memory_backend {
            // Its size must equal -m.
            a.pair(
                "-object",
                format!(
                    "memory-backend-memfd,id={MEMORY_BACKEND_ID},size={},share={}",
                    self.memory,
                    on_off(share)
                ),
            );
        }
        if self.machine == Machine::Microvm && self.modern_mmio {
            a.pair("-global", "virtio-mmio.force-legacy=false");
        }
        match self.accel {
            Accel::Kvm => {
                a.pair("-accel", "kvm");
                a.pair("-cpu", "host");
            }
            Accel::Tcg => {
                a.pair("-accel", "tcg");
                a.pair("-cpu", "max");
            }
        }
    }

    /// Memory and vCPUs, then what every guest gets: serial on stdio, `isa-debug-exit`.
    fn plumbing_args(&self, a: &mut Args) {
        a.pair("-m", self.memory.to_string());
        a.pair("-smp", self.smp.to_string());
        a.flag("-nodefaults");
        a.flag("-no-user-config");
        a.pair("-display", "none");
        a.pair("-chardev", "stdio,id=con,signal=off");
        a.pair("-serial", "chardev:con");
        a.pair(
            "-device",
            format!("isa-debug-exit,iobase={DEBUG_EXIT_IOBASE:#x},iosize=0x04"),
        );
        if self.no_reboot {
            a.flag("-no-reboot");
        }
        if self.start_paused {
            a.flag("-S");
        }
    }

    /// `-kernel`, `-append`, `-initrd`.
    fn kernel_args(&self, a: &mut Args) {
        if let Some(kernel) = &self.kernel {
            a.pair("-kernel", kernel.as_os_str());
            if !self.cmdline.is_empty() {
                a.pair("-append", self.cmdline_string());
            }
            if let Some(initrd) = &self.initrd {
                a.pair("-initrd", initrd.as_os_str());
            }
        }
    }

    /// One `-blockdev` and one virtio-blk `-device` per disk.
    fn disk_args(&self, a: &mut Args) {
        for (i, disk) in self.disks.iter().enumerate() {
            let node = format!("disk{i}");
            let ro = if disk.read_only { "on" } else { "off" };
            let mut blockdev = OsString::from(format!(
                "node-name={node},driver={},read-only={ro},",
                disk.format.driver()
            ));
            // The file node: the format node's `file`, or under blkdebug its `file.image`.
            let file = match &disk.blkdebug {
                Some(config) => {
                    blockdev.push("file.driver=blkdebug,file.config=");
                    blockdev.push(escape_commas(config.as_os_str()));
                    blockdev.push(",");
                    "file.image"
                }
                None => "file",
            };
            blockdev.push(format!("{file}.driver=file,{file}.filename="));
            blockdev.push(escape_commas(disk.path.as_os_str()));
            if let Some(aio) = disk.aio {
                blockdev.push(format!(",{file}.aio={aio}"));
            }
            if let Some(direct) = disk.cache_direct {
                blockdev.push(format!(",{file}.cache.direct={}", on_off(direct)));
            }
            if let Some(locking) = disk.locking {
                blockdev.push(format!(",{file}.locking={}", on_off(locking)));
            }
            a.pair("-blockdev", blockdev);
            // A read-only node makes virtio-blk offer VIRTIO_BLK_F_RO to the guest.
            a.pair(
                "-device",
                format!("{},drive={node}", self.machine.blk_device()),
            );
        }
    }

    /// One socket `-chardev` and one vhost-user-blk `-device` per back end.
    fn vhost_user_args(&self, a: &mut Args) {
        for (i, dev) in self.vhost_user_blks.iter().enumerate() {
            let id = format!("vub{i}");
            let mut chardev = OsString::from(format!("socket,id={id},path="));
            chardev.push(escape_commas(dev.socket.as_os_str()));
            a.pair("-chardev", chardev);
            let mut device = format!("{},chardev={id}", self.machine.vhost_user_blk_device());
            if let Some(n) = dev.num_queues {
                device.push_str(&format!(",num-queues={n}"));
            }
            a.pair("-device", device);
        }
    }

    /// One `-netdev` (user with forwards, or tap) and one NIC `-device` per NIC.
    fn nic_args(&self, a: &mut Args) {
        for (i, nic) in self.nics.iter().enumerate() {
            let id = format!("net{i}");
            let netdev = match &nic.tap {
                Some(tap) => format!(
                    "tap,id={id},ifname={},script=no,downscript=no",
                    escape_commas(OsStr::new(tap)).to_string_lossy()
                ),
                None => {
                    let mut netdev = format!("user,id={id}");
                    for fwd in &nic.forwards {
                        netdev.push_str(&format!(
                            ",hostfwd=tcp:{}:{}-:{}",
                            fwd.host_addr, fwd.host_port, fwd.guest_port
                        ));
                    }
                    netdev
                }
            };
            a.pair("-netdev", netdev);
            let mut device = format!("{},netdev={id}", self.machine.net_device());
            if let Some(mac) = nic.mac {
                device.push_str(&format!(",mac={mac}"));
            }
            if self.machine == Machine::Q35 && !self.nic_option_rom {
                device.push_str(",romfile=");
            }
            a.pair("-device", device);
        }
    }

    /// q35: one `ivshmem-plain` over a shared file per region.
    fn shared_region_args(&self, a: &mut Args) {
        // After the NICs, so that adding a region moves no other device's PCI address.
        if self.machine == Machine::Q35 {
            for (i, region) in self.shared_regions.iter().enumerate() {
                let id = shared_region_id(i);
                let mut object =
                    OsString::from(format!("memory-backend-file,id={id},share=on,mem-path="));
                object.push(escape_commas(region.path.as_os_str()));
                object.push(format!(",size={}", region.size));
                a.pair("-object", object);
                a.pair("-device", format!("ivshmem-plain,memdev={id}"));
            }
        }
    }

    /// `-qmp`, `-pidfile`, and the extra options.
    fn control_args(&self, a: &mut Args) {
        if let Some(sock) = &self.qmp_socket {
            let mut v = OsString::from("unix:");
            v.push(escape_commas(sock.as_os_str()));
            v.push(",server=on,wait=off");
            a.pair("-qmp", v);
        }
        if let Some(pidfile) = &self.pidfile {
            a.pair("-pidfile", pidfile.as_os_str());
        }
        for extra in &self.extra {
            a.flag(format!("-{}", extra.option));
            if let Some(v) = &extra.value {
                a.0.push(v.clone());
            }
        }
    }

    /// A `std::process::Command` for this line (program and arguments only; the caller
    /// sets stdio and process group).
    pub fn to_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.qemu);
        cmd.args(self.to_args());
        cmd
    }
}

impl fmt::Display for QemuCommand {
    /// The whole command line, shell-quoted, ready to paste into a shell.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shell_quote(self.qemu.as_os_str()))?;
        for arg in self.to_args() {
            f.write_str(" ")?;
            f.write_str(&shell_quote(&arg))?;
        }
        Ok(())
    }
}

/// A `qemu-storage-daemon` command line that exports one image file as a vhost-user-blk
/// server on a unix socket (the daemon listens; QEMU connects).
///
/// `--blockdev driver=file,node-name=file0,filename=IMG[,aio=..][,cache.direct=..]`
/// `--export type=vhost-user-blk,id=export0,node-name=file0,addr.type=unix,addr.path=SOCK,writable=on|off,num-queues=N`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageDaemonCommand {
    /// The `qemu-storage-daemon` executable.
    pub program: PathBuf,
    /// The image file (exported as is: raw).
    pub file: PathBuf,
    /// The file node's `aio=`; `None` keeps the default (threads).
    pub aio: Option<Aio>,
    /// The file node's `cache.direct=`; `None` keeps the default (off).
    pub cache_direct: Option<bool>,
    /// The vhost-user socket the daemon listens on.
    pub socket: PathBuf,
    /// Export writable.
    pub writable: bool,
    /// `num-queues=` of the export.
    pub num_queues: u16,
    /// Write the daemon's pid here.
    pub pidfile: Option<PathBuf>,
}

impl StorageDaemonCommand {
    /// Export `file` writable on `socket` with one queue.
    pub fn vhost_user_blk(
        program: impl Into<PathBuf>,
        file: impl Into<PathBuf>,
        socket: impl Into<PathBuf>,
    ) -> StorageDaemonCommand {
        StorageDaemonCommand {
            program: program.into(),
            file: file.into(),
            aio: None,
            cache_direct: None,
            socket: socket.into(),
            writable: true,
            num_queues: 1,
            pidfile: None,
        }
    }

    /// Set the file node's `aio=`.
    pub fn aio(mut self, aio: Aio) -> Self {
        self.aio = Some(aio);
        self
    }

    /// Set the file node's `cache.direct=`.
    pub fn cache_direct(mut self, on: bool) -> Self {
        self.cache_direct = Some(on);
        self
    }

    /// The argument vector (without the program name).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        let mut blockdev = OsString::from("driver=file,node-name=file0,filename=");
        blockdev.push(escape_commas(self.file.as_os_str()));
        if let Some(aio) = self.aio {
            blockdev.push(format!(",aio={aio}"));
        }
        if let Some(direct) = self.cache_direct {
            blockdev.push(format!(",cache.direct={}", on_off(direct)));
        }
        a.pair("--blockdev", blockdev);
        let mut export = OsString::from(
            "type=vhost-user-blk,id=export0,node-name=file0,addr.type=unix,addr.path=",
        );
        export.push(escape_commas(self.socket.as_os_str()));
        export.push(format!(
            ",writable={},num-queues={}",
            on_off(self.writable),
            self.num_queues
        ));
        a.pair("--export", export);
        if let Some(pidfile) = &self.pidfile {
            a.pair("--pidfile", pidfile.as_os_str());
        }
        a.0
    }

    /// A `std::process::Command` for this line (program and arguments only).
    pub fn to_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(self.to_args());
        cmd
    }
}

impl fmt::Display for StorageDaemonCommand {
    /// The whole command line, shell-quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shell_quote(self.program.as_os_str()))?;
        for arg in self.to_args() {
            f.write_str(" ")?;
            f.write_str(&shell_quote(&arg))?;
        }
        Ok(())
    }
}

/// A `qemu-nbd` command line serving one raw image over TCP, the way the NBD bench's anchor
/// runs it:
///
/// `--format=raw --export-name=NAME --persistent --shared=N [--cache=C] [--aio=A]
/// --bind=ADDR --port=PORT FILE`
///
/// `--persistent` keeps the server up between client connections; `--shared` lets that
/// many clients in at once (qemu-nbd's default is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdServerCommand {
    /// The `qemu-nbd` executable.
    pub program: PathBuf,
    /// The image (served as raw).
    pub file: PathBuf,
    /// Export name.
    pub export: String,
    /// Address to listen on.
    pub bind: Ipv4Addr,
    /// TCP port.
    pub port: u16,
    /// Clients served at once.
    pub shared: u32,
    /// `--cache=none` (`O_DIRECT`) when true; qemu-nbd's default (writeback) otherwise.
    pub cache_none: bool,
    /// `--aio=`; `None` keeps the default (threads). `native` needs `cache_none`.
    pub aio: Option<Aio>,
    /// Serve read-only (`--read-only`).
    pub read_only: bool,
    /// Serve over TLS only, with the `tls-creds-x509` credentials in this directory
    /// (`--object tls-creds-x509,...,endpoint=server --tls-creds`).
    pub tls_creds: Option<PathBuf>,
}

impl NbdServerCommand {
    /// Serve `file` as export `export` on 127.0.0.1:`port`, writable, 16 clients at once,
    /// qemu-nbd's default cache and aio.
    pub fn new(
        program: impl Into<PathBuf>,
        file: impl Into<PathBuf>,
        export: &str,
        port: u16,
    ) -> NbdServerCommand {
        NbdServerCommand {
            program: program.into(),
            file: file.into(),
            export: export.to_string(),
            bind: Ipv4Addr::LOCALHOST,
            port,
            shared: 16,
            cache_none: false,
            aio: None,
            read_only: false,
            tls_creds: None,
        }
    }

    /// `--cache=none` on or off.
    pub fn cache_none(mut self, on: bool) -> Self {
        self.cache_none = on;
        self
    }

    /// Set `--aio=`.
    pub fn aio(mut self, aio: Aio) -> Self {
        self.aio = Some(aio);
        self
    }

    /// Serve over TLS only with the credentials in `dir` (QEMU's tls-creds-x509 layout).
    pub fn tls_creds(mut self, dir: impl Into<PathBuf>) -> Self {
        self.tls_creds = Some(dir.into());
        self
    }

    /// The argument vector (without the program name).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        a.flag("--format=raw");
        if let Some(dir) = &self.tls_creds {
            // QEMU option syntax: a comma in a value is written twice.
            let dir = dir.to_string_lossy().replace(',', ",,");
            a.flag("--object");
            a.flag(format!("tls-creds-x509,id=t0,dir={dir},endpoint=server"));
            a.flag("--tls-creds=t0");
        }
        a.flag(format!("--export-name={}", self.export));
        a.flag("--persistent");
        a.flag(format!("--shared={}", self.shared));
        if self.cache_none {
            a.flag("--cache=none");
        }
        if let Some(aio) = self.aio {
            a.flag(format!("--aio={aio}"));
        }
        if self.read_only {
            a.flag("--read-only");
        }
        a.flag(format!("--bind={}", self.bind));
        a.flag(format!("--port={}", self.port));
        // The file is a plain argument (no option syntax to escape); `--` keeps a name that
        // starts with a dash from being read as an option.
        a.flag("--");
        a.flag(self.file.as_os_str());
        a.0
    }

    /// A `std::process::Command` for this line (program and arguments only).
    pub fn to_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(self.to_args());
        cmd
    }
}

impl fmt::Display for NbdServerCommand {
    /// The whole command line, shell-quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shell_quote(self.program.as_os_str()))?;
        for arg in self.to_args() {
            f.write_str(" ")?;
            f.write_str(&shell_quote(&arg))?;
        }
        Ok(())
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// Quote one word for a POSIX shell.
pub fn shell_quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    // Words made only of these need no quoting; this keeps QEMU's `a=b,c=d` readable.
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        return s.into_owned();
    }
    match shlex::try_quote(&s) {
        Ok(q) => q.into_owned(),
        // Only a NUL byte makes quoting fail; such an argument cannot be passed anyway.
        Err(_) => format!("'{}'", s.replace('\0', "")),
    }
}

/// QEMU option values use `,` as a separator; a literal comma is written `,,`.
fn escape_commas(s: &OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(s.len());
    for &b in s.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flag(&mut self, f: impl Into<OsString>) {
        self.0.push(f.into());
    }

    fn pair(&mut self, opt: &str, value: impl Into<OsString>) {
        self.0.push(opt.into());
        self.0.push(value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(cmd: &QemuCommand) -> Vec<String> {
        cmd.to_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    /// Values of every occurrence of option `opt`.
    fn values(args: &[String], opt: &str) -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == opt)
            .map(|w| w[1].clone())
            .collect()
    }

    fn two_disks_one_nic(machine: Machine) -> QemuCommand {
        QemuCommand::new("/usr/bin/qemu-system-x86_64")
            .machine(machine)
            .accel(Accel::Tcg)
            .memory(ByteSize::mib(32))
            .kernel("/img/unikernel")
            .cmdline("exit=ready  debug.x=1")
            .disk(Disk::new("/d/a.raw"))
            .disk(Disk::new("/d/b.qcow2").read_only())
            .nic(
                Nic::user()
                    .mac("52:54:00:aa:bb:01".parse().unwrap())
                    .forward(10809, 10809)
                    .forward(8080, 80),
            )
            .qmp_socket("/s/qmp.sock")
            .pidfile("/s/qemu.pid")
            .no_reboot(true)
    }

    #[test]
    fn q35_full_line() {
        let args = strs(&two_disks_one_nic(Machine::Q35));
        let expected: Vec<&str> = vec![
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "32M",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-chardev",
            "stdio,id=con,signal=off",
            "-serial",
            "chardev:con",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-no-reboot",
            "-kernel",
            "/img/unikernel",
            "-append",
            "exit=ready debug.x=1",
            "-blockdev",
            "node-name=disk0,driver=raw,read-only=off,file.driver=file,file.filename=/d/a.raw",
            "-device",
            "virtio-blk-pci,drive=disk0",
            "-blockdev",
            "node-name=disk1,driver=qcow2,read-only=on,file.driver=file,file.filename=/d/b.qcow2",
            "-device",
            "virtio-blk-pci,drive=disk1",
            "-netdev",
            "user,id=net0,hostfwd=tcp:127.0.0.1:10809-:10809,hostfwd=tcp:127.0.0.1:8080-:80",
            "-device",
            "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:01,romfile=",
            "-qmp",
            "unix:/s/qmp.sock,server=on,wait=off",
            "-pidfile",
            "/s/qemu.pid",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn microvm_uses_mmio_devices() {
        let args = strs(&two_disks_one_nic(Machine::Microvm));
        assert_eq!(values(&args, "-machine"), vec!["microvm"]);
        let devices = values(&args, "-device");
        assert_eq!(
            devices,
            vec![
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "virtio-blk-device,drive=disk0",
                "virtio-blk-device,drive=disk1",
                "virtio-net-device,netdev=net0,mac=52:54:00:aa:bb:01",
            ]
        );
        assert!(!args.iter().any(|a| a.contains("-pci")));
        // The serial console and QMP are machine-independent.
        assert_eq!(values(&args, "-serial"), vec!["chardev:con"]);
        assert_eq!(values(&args, "-append"), vec!["exit=ready debug.x=1"]);
    }

    #[test]
    fn microvm_acpi_option() {
        let base = QemuCommand::new("q").machine(Machine::Microvm);
        assert_eq!(values(&strs(&base), "-machine"), vec!["microvm"]);
        assert_eq!(
            values(&strs(&base.clone().microvm_acpi(false)), "-machine"),
            vec!["microvm,acpi=off"]
        );
        assert_eq!(
            values(&strs(&base.microvm_acpi(true)), "-machine"),
            vec!["microvm,acpi=on"]
        );
        // Ignored on q35.
        let q35 = QemuCommand::new("q").microvm_acpi(false);
        assert_eq!(values(&strs(&q35), "-machine"), vec!["q35"]);
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let args = strs(&QemuCommand::new("q").accel(Accel::Kvm));
        assert_eq!(values(&args, "-accel"), vec!["kvm"]);
        assert_eq!(values(&args, "-cpu"), vec!["host"]);
        let args = strs(&QemuCommand::new("q").accel(Accel::Tcg));
        assert_eq!(values(&args, "-accel"), vec!["tcg"]);
        assert_eq!(values(&args, "-cpu"), vec!["max"]);
    }

    #[test]
    fn optional_parts_absent_by_default() {
        let args = strs(&QemuCommand::new("q"));
        for opt in [
            "-kernel",
            "-append",
            "-initrd",
            "-qmp",
            "-pidfile",
            "-no-reboot",
            "-S",
            "-netdev",
        ] {
            assert!(!args.iter().any(|a| a == opt), "{opt} present: {args:?}");
        }
        // The exit device is always there.
        assert!(values(&args, "-device")
            .iter()
            .any(|d| d.starts_with("isa-debug-exit")));
        // No -append for an empty command line.
        let args = strs(&QemuCommand::new("q").kernel("/k"));
        assert!(!args.iter().any(|a| a == "-append"));
    }

    #[test]
    fn initrd_follows_the_kernel_and_its_command_line() {
        let cmd = QemuCommand::new("q")
            .kernel("/k")
            .cmdline("mgmt.on_data=on")
            .initrd("/st/mgmt.key");
        let args = strs(&cmd);
        let at = args.iter().position(|a| a == "-kernel").unwrap();
        assert_eq!(
            args[at..at + 6],
            [
                "-kernel",
                "/k",
                "-append",
                "mgmt.on_data=on",
                "-initrd",
                "/st/mgmt.key"
            ]
        );
        // Without a kernel QEMU refuses -initrd: it is left out with the kernel.
        let args = strs(&QemuCommand::new("q").initrd("/st/mgmt.key"));
        assert!(!args.iter().any(|a| a == "-initrd"), "{args:?}");
        assert!(!strs(&QemuCommand::new("q").kernel("/k"))
            .iter()
            .any(|a| a == "-initrd"));
    }

    #[test]
    fn nic_without_mac_or_forwards() {
        let args = strs(&QemuCommand::new("q").nic(Nic::user()).nic(Nic::user()));
        assert_eq!(
            values(&args, "-netdev"),
            vec!["user,id=net0", "user,id=net1"]
        );
        let devs = values(&args, "-device");
        assert!(devs.contains(&"virtio-net-pci,netdev=net1,romfile=".to_string()));
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        let cmd = QemuCommand::new("q")
            .disk(Disk::new("/a,b/disk.raw"))
            .qmp_socket("/x,y/qmp.sock");
        let args = strs(&cmd);
        assert!(values(&args, "-blockdev")[0].ends_with("file.filename=/a,,b/disk.raw"));
        assert_eq!(
            values(&args, "-qmp"),
            vec!["unix:/x,,y/qmp.sock,server=on,wait=off"]
        );
    }

    #[test]
    fn extra_args_come_last() {
        let args = strs(
            &QemuCommand::new("q")
                .extra("-d", Some("int"))
                .extra("S", None),
        );
        assert_eq!(&args[args.len() - 3..], &["-d", "int", "-S"]);
    }

    #[test]
    fn display_shell_quotes() {
        let cmd = QemuCommand::new("/usr/bin/qemu-system-x86_64")
            .kernel("/my images/unikernel")
            .cmdline("a=1 b=2");
        let line = cmd.to_string();
        assert!(line.starts_with("/usr/bin/qemu-system-x86_64 -machine q35 "));
        assert!(line.contains("-kernel '/my images/unikernel'"), "{line}");
        assert!(line.contains("-append 'a=1 b=2'"), "{line}");
        assert!(line.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"));
        // Round-trips through a shell splitter.
        let words = shlex::split(&line).unwrap();
        assert_eq!(words[0], "/usr/bin/qemu-system-x86_64");
        assert_eq!(words[1..], strs(&cmd)[..]);
    }

    #[test]
    fn disk_aio_and_cache() {
        let args = strs(
            &QemuCommand::new("q")
                .disk(Disk::new("/d/t.raw").aio(Aio::Threads).cache_direct(true))
                .disk(Disk::new("/d/n.raw").aio(Aio::Native).cache_direct(true))
                .disk(Disk::new("/d/u.raw").aio(Aio::IoUring))
                .disk(Disk::new("/d/w.raw").cache_direct(false)),
        );
        let base = "driver=raw,read-only=off,file.driver=file,file.filename=";
        assert_eq!(
            values(&args, "-blockdev"),
            vec![
                format!("node-name=disk0,{base}/d/t.raw,file.aio=threads,file.cache.direct=on"),
                format!("node-name=disk1,{base}/d/n.raw,file.aio=native,file.cache.direct=on"),
                format!("node-name=disk2,{base}/d/u.raw,file.aio=io_uring"),
                format!("node-name=disk3,{base}/d/w.raw,file.cache.direct=off"),
            ]
        );
        // Unset options are not emitted (QEMU's defaults apply).
        let args = strs(&QemuCommand::new("q").disk(Disk::new("/d/a.raw")));
        assert!(!values(&args, "-blockdev")[0].contains("aio"));
        assert!(!values(&args, "-blockdev")[0].contains("cache"));
    }

    #[test]
    fn memfd_backend_and_vhost_user_blk_q35() {
        let cmd = QemuCommand::new("q")
            .memory(ByteSize::mib(64))
            .vhost_user_blk(VhostUserBlk::new("/s/vu,1.sock").num_queues(1))
            .vhost_user_blk(VhostUserBlk::new("/s/vu2.sock"));
        assert_eq!(
            cmd.memory_backend,
            Some(MemoryBackend::Memfd { share: true })
        );
        let args = strs(&cmd);
        assert_eq!(values(&args, "-machine"), vec!["q35,memory-backend=mem"]);
        assert_eq!(
            values(&args, "-object"),
            vec!["memory-backend-memfd,id=mem,size=64M,share=on"]
        );
        assert_eq!(
            values(&args, "-chardev"),
            vec![
                "stdio,id=con,signal=off",
                "socket,id=vub0,path=/s/vu,,1.sock",
                "socket,id=vub1,path=/s/vu2.sock"
            ]
        );
        let devices = values(&args, "-device");
        assert_eq!(
            &devices[1..],
            &[
                "vhost-user-blk-pci,chardev=vub0,num-queues=1",
                "vhost-user-blk-pci,chardev=vub1"
            ]
        );
        // modern_mmio means nothing on q35.
        assert!(!args.iter().any(|a| a == "-global"));
        let args = strs(&cmd.modern_mmio(true));
        assert!(!args.iter().any(|a| a == "-global"));
    }

    #[test]
    fn vhost_user_blk_on_microvm() {
        let cmd = QemuCommand::new("q")
            .machine(Machine::Microvm)
            .microvm_acpi(false)
            .modern_mmio(true)
            .vhost_user_blk(VhostUserBlk::new("/s/vu.sock"));
        let args = strs(&cmd);
        assert_eq!(
            values(&args, "-machine"),
            vec!["microvm,acpi=off,memory-backend=mem"]
        );
        assert_eq!(
            values(&args, "-global"),
            vec!["virtio-mmio.force-legacy=false"]
        );
        assert_eq!(
            values(&args, "-device")[1..],
            ["vhost-user-blk,chardev=vub0"]
        );
    }

    #[test]
    fn explicit_memory_backend_is_kept() {
        let cmd = QemuCommand::new("q")
            .memory(ByteSize::mib(32))
            .memory_backend(MemoryBackend::Memfd { share: false })
            .vhost_user_blk(VhostUserBlk::new("/s"));
        assert_eq!(
            values(&strs(&cmd), "-object"),
            vec!["memory-backend-memfd,id=mem,size=32M,share=off"]
        );
        // No backend unless asked for.
        let args = strs(&QemuCommand::new("q"));
        assert!(!args.iter().any(|a| a == "-object"));
        assert_eq!(values(&args, "-machine"), vec!["q35"]);
    }

    #[test]
    fn storage_daemon_line() {
        let d = StorageDaemonCommand::vhost_user_blk(
            "/usr/bin/qemu-storage-daemon",
            "/img/a,b.raw",
            "/s/vu.sock",
        )
        .aio(Aio::Native)
        .cache_direct(true);
        let args: Vec<String> = d
            .to_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--blockdev",
                "driver=file,node-name=file0,filename=/img/a,,b.raw,aio=native,cache.direct=on",
                "--export",
                "type=vhost-user-blk,id=export0,node-name=file0,addr.type=unix,\
                 addr.path=/s/vu.sock,writable=on,num-queues=1",
            ]
        );
        let mut ro = StorageDaemonCommand::vhost_user_blk("qsd", "/i", "/s");
        ro.writable = false;
        ro.num_queues = 2;
        ro.pidfile = Some("/p".into());
        let line = ro.to_string();
        assert_eq!(
            line,
            "qsd --blockdev driver=file,node-name=file0,filename=/i --export \
             type=vhost-user-blk,id=export0,node-name=file0,addr.type=unix,addr.path=/s,\
             writable=off,num-queues=2 --pidfile /p"
        );
    }

    #[test]
    fn shared_region_on_q35() {
        let cmd = two_disks_one_nic(Machine::Q35)
            .shared_region(SharedRegion::new("/s/nv,ram.bin", ByteSize::mib(64)))
            .shared_region(SharedRegion::new("/s/peer.bin", ByteSize::gib(1)));
        assert!(cmd.notes().is_empty());
        let args = strs(&cmd);
        assert_eq!(
            values(&args, "-object"),
            vec![
                "memory-backend-file,id=nvram0,share=on,mem-path=/s/nv,,ram.bin,size=64M",
                "memory-backend-file,id=nvram1,share=on,mem-path=/s/peer.bin,size=1G",
            ]
        );
        let devices = values(&args, "-device");
        // After the disks and the NIC: their PCI addresses do not move.
        assert_eq!(
            &devices[devices.len() - 3..],
            &[
                "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:01,romfile=",
                "ivshmem-plain,memdev=nvram0",
                "ivshmem-plain,memdev=nvram1",
            ]
        );
        // The rest of the line is what it was without the regions.
        let without = strs(&two_disks_one_nic(Machine::Q35));
        let mut stripped = args.clone();
        for v in values(&args, "-object") {
            let i = stripped.iter().position(|a| *a == v).unwrap();
            stripped.drain(i - 1..=i);
        }
        for d in ["ivshmem-plain,memdev=nvram0", "ivshmem-plain,memdev=nvram1"] {
            let i = stripped.iter().position(|a| a == d).unwrap();
            stripped.drain(i - 1..=i);
        }
        assert_eq!(stripped, without);
        // No region, no object.
        assert!(!without.iter().any(|a| a == "-object"));
    }

    #[test]
    fn shared_region_left_out_on_microvm_with_a_note() {
        let cmd = two_disks_one_nic(Machine::Microvm)
            .shared_region(SharedRegion::new("/s/nvram.bin", ByteSize::mib(64)));
        let args = strs(&cmd);
        assert!(!args.iter().any(|a| a.contains("ivshmem")), "{args:?}");
        assert!(!args.iter().any(|a| a == "-object"), "{args:?}");
        let notes = cmd.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("microvm") && notes[0].contains("/s/nvram.bin"));
        assert!(two_disks_one_nic(Machine::Microvm).notes().is_empty());
    }

    #[test]
    fn shared_region_sizes() {
        assert!(SharedRegion::check_size(ByteSize::mib(64)).is_ok());
        assert!(SharedRegion::check_size(ByteSize::mib(1)).is_ok());
        assert!(SharedRegion::check_size(ByteSize::gib(4)).is_ok());
        let e = SharedRegion::check_size(ByteSize::mib(3)).unwrap_err();
        assert!(e.contains("power of two"), "{e}");
        assert!(SharedRegion::check_size(ByteSize(512 * 1024)).is_err());
    }

    #[test]
    fn qemu_nbd_line() {
        let cmd = NbdServerCommand::new("/usr/bin/qemu-nbd", "/w/anchor,1.raw", "blk0", 10900)
            .cache_none(true)
            .aio(Aio::Native);
        assert_eq!(
            cmd.to_string(),
            "/usr/bin/qemu-nbd --format=raw --export-name=blk0 --persistent --shared=16 \
             --cache=none --aio=native --bind=127.0.0.1 --port=10900 -- /w/anchor,1.raw"
        );
        let mut plain = NbdServerCommand::new("qemu-nbd", "/i", "x", 1);
        plain.read_only = true;
        plain.shared = 1;
        let args: Vec<String> = plain
            .to_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--format=raw",
                "--export-name=x",
                "--persistent",
                "--shared=1",
                "--read-only",
                "--bind=127.0.0.1",
                "--port=1",
                "--",
                "/i"
            ]
        );
    }

    #[test]
    fn tap_nic_and_unlocked_disks() {
        let cmd = QemuCommand::new("q")
            .disk(Disk::new("/p/a/disk0.raw").locking(false))
            .disk(Disk::new("/p/b/disk0.raw").locking(false))
            .disk(Disk::new("/p/c.raw").locking(true))
            .nic(Nic::tap("tapa").mac("52:54:00:77:00:0a".parse().unwrap()));
        assert!(cmd.notes().is_empty());
        let args = strs(&cmd);
        let base = "driver=raw,read-only=off,file.driver=file,file.filename=";
        assert_eq!(
            values(&args, "-blockdev"),
            vec![
                format!("node-name=disk0,{base}/p/a/disk0.raw,file.locking=off"),
                format!("node-name=disk1,{base}/p/b/disk0.raw,file.locking=off"),
                format!("node-name=disk2,{base}/p/c.raw,file.locking=on"),
            ]
        );
        assert_eq!(
            values(&args, "-netdev"),
            vec!["tap,id=net0,ifname=tapa,script=no,downscript=no"]
        );
        assert_eq!(
            values(&args, "-device").last().unwrap(),
            "virtio-net-pci,netdev=net0,mac=52:54:00:77:00:0a,romfile="
        );
        // Locking is QEMU's default unless set.
        let args = strs(&QemuCommand::new("q").disk(Disk::new("/d")));
        assert!(!values(&args, "-blockdev")[0].contains("locking"));
        // Forwards mean nothing on a tap NIC: left out, with a note.
        let cmd = QemuCommand::new("q").nic(Nic::tap("t0").forward(1, 2));
        assert_eq!(
            values(&strs(&cmd), "-netdev"),
            vec!["tap,id=net0,ifname=t0,script=no,downscript=no"]
        );
        assert_eq!(cmd.notes().len(), 1);
        assert!(cmd.notes()[0].contains("t0"), "{:?}", cmd.notes());
    }

    #[test]
    fn blkdebug_disk() {
        let args = strs(
            &QemuCommand::new("q")
                .disk(Disk::new("/d/a.raw").blkdebug("/c/fail,1.conf"))
                .disk(
                    Disk::new("/d/b.qcow2")
                        .blkdebug("/c/b.conf")
                        .aio(Aio::Threads)
                        .cache_direct(true)
                        .locking(false),
                )
                .disk(Disk::new("/d/c.raw")),
        );
        assert_eq!(
            values(&args, "-blockdev"),
            vec![
                "node-name=disk0,driver=raw,read-only=off,file.driver=blkdebug,\
                 file.config=/c/fail,,1.conf,file.image.driver=file,file.image.filename=/d/a.raw"
                    .to_string(),
                "node-name=disk1,driver=qcow2,read-only=off,file.driver=blkdebug,\
                 file.config=/c/b.conf,file.image.driver=file,file.image.filename=/d/b.qcow2,\
                 file.image.aio=threads,file.image.cache.direct=on,file.image.locking=off"
                    .to_string(),
                "node-name=disk2,driver=raw,read-only=off,file.driver=file,\
                 file.filename=/d/c.raw"
                    .to_string(),
            ]
        );
        assert_eq!(
            values(&args, "-device")
                .iter()
                .filter(|d| d.contains("drive=disk"))
                .count(),
            3
        );
    }

    #[test]
    fn disk_format_from_extension() {
        assert_eq!(Disk::new("x.qcow2").format, DiskFormat::Qcow2);
        assert_eq!(Disk::new("x.QCOW2").format, DiskFormat::Qcow2);
        assert_eq!(Disk::new("x.raw").format, DiskFormat::Raw);
        assert_eq!(Disk::new("x.img").format, DiskFormat::Raw);
        assert_eq!(Disk::new("x").format, DiskFormat::Raw);
    }

    #[test]
    fn mac_parse_and_display() {
        let mac: MacAddr = "52:54:00:AA:bb:01".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:aa:bb:01");
        assert!("52:54:00:aa:bb".parse::<MacAddr>().is_err());
        assert!("52:54:00:aa:bb:01:02".parse::<MacAddr>().is_err());
        assert!("52:54:00:aa:bb:zz".parse::<MacAddr>().is_err());
        assert!("5:54:00:aa:bb:01".parse::<MacAddr>().is_err());
    }
}
