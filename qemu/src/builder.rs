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

/// A data disk given to the guest as a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Host path of the image.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Attach read-only.
    pub read_only: bool,
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
        }
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

/// A virtio-net NIC on QEMU user networking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nic {
    /// MAC address; QEMU picks one when `None`.
    pub mac: Option<MacAddr>,
    /// Host → guest TCP forwards.
    pub forwards: Vec<PortForward>,
}

impl Nic {
    /// A NIC with no forwards and QEMU's default MAC.
    pub fn user() -> Nic {
        Nic::default()
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
    /// Data disks, in guest order.
    pub disks: Vec<Disk>,
    /// NICs, in guest order.
    pub nics: Vec<Nic>,
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
            disks: Vec::new(),
            nics: Vec::new(),
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

    /// Add a data disk.
    pub fn disk(mut self, disk: Disk) -> Self {
        self.disks.push(disk);
        self
    }

    /// Add a NIC.
    pub fn nic(mut self, nic: Nic) -> Self {
        self.nics.push(nic);
        self
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

    /// The argument vector (without the program name).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        if let Some(name) = &self.name {
            a.pair("-name", name);
        }

        let mut machine = self.machine.name().to_string();
        if let (Machine::Microvm, Some(acpi)) = (self.machine, self.microvm_acpi) {
            machine.push_str(if acpi { ",acpi=on" } else { ",acpi=off" });
        }
        a.pair("-machine", machine);
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
        if let Some(kernel) = &self.kernel {
            a.pair("-kernel", kernel.as_os_str());
            if !self.cmdline.is_empty() {
                a.pair("-append", self.cmdline_string());
            }
        }

        for (i, disk) in self.disks.iter().enumerate() {
            let node = format!("disk{i}");
            let ro = if disk.read_only { "on" } else { "off" };
            let mut blockdev = OsString::from(format!(
                "node-name={node},driver={},read-only={ro},file.driver=file,file.filename=",
                disk.format.driver()
            ));
            blockdev.push(escape_commas(disk.path.as_os_str()));
            a.pair("-blockdev", blockdev);
            // A read-only node makes virtio-blk offer VIRTIO_BLK_F_RO to the guest.
            a.pair(
                "-device",
                format!("{},drive={node}", self.machine.blk_device()),
            );
        }

        for (i, nic) in self.nics.iter().enumerate() {
            let id = format!("net{i}");
            let mut netdev = format!("user,id={id}");
            for fwd in &nic.forwards {
                netdev.push_str(&format!(
                    ",hostfwd=tcp:{}:{}-:{}",
                    fwd.host_addr, fwd.host_port, fwd.guest_port
                ));
            }
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
        a.0
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
