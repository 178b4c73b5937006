//! What each guest of an appliance is (its [`GuestPlan`]) and the files that boot it: the
//! guest command line, a QEMU launch script, a libvirt domain XML and a Xen `xl` config.
//!
//! One plan feeds all four, so they cannot disagree about the command line, the disk order
//! or the NVRAM. The launch script's QEMU line is not written here: it comes from the same
//! code as `tandem run` ([`crate::run::build_command`]) for one appliance and as
//! `tandem pair up` ([`crate::pair::spec::PairConfig::node_command`]) for a pair node, so
//! the appliance boots with exactly the devices those commands give a guest.
//!
//! With management on or `[tls]`, each guest also has a boot module (`boot.module` in its
//! directory, 0600, made by the build, not here): the management key's word and the TLS
//! files. The script passes it with `-initrd`, libvirt with `<initrd>`, xl with `ramdisk =`,
//! each by name only, so that no secret is in these files (nor in the reproducible outputs)
//! or in any QEMU argv. The guest reads it as its first boot module.
//!
//! Reproducible by construction: no timestamps, no host names, and no path of the build
//! machine. The script uses paths relative to the appliance directory (it `cd`s there
//! first); libvirt and xl insist on absolute paths, so they name the files under
//! `install_dir` (default `/var/lib/tandem/NAME`), where the appliance is meant to be copied.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tandem_formats::cmdline::{key, word};

use super::config::{Appliance, Kind};
use crate::accel::{self, Accel, AccelChoice};
use crate::builder::{shell_quote, DiskFormat, MacAddr, QemuCommand, SharedRegion};
use crate::cli::{Cli, Command, RunArgs};
use crate::mgmt::KEY_FILE;
use crate::pair::spec::{self, PairConfig, PairSpec};
use crate::pair::Node;
use crate::run::{BOOT_MODULE, GUEST_MGMT_PORT, GUEST_NBD_PORT};
use crate::size::ByteSize;
use crate::state::StateDir;
use tandem_formats::cmdline::ExportSpec;

/// The kernel's file name in an appliance.
pub const KERNEL: &str = "kernel.elf";
/// The NVRAM region of one appliance (the name `tandem run` gives it in a state directory).
pub const NVRAM: &str = "nvram.bin";
/// The QEMU executable the script runs by default (found in `PATH` at run time).
pub const QEMU: &str = "qemu-system-x86_64";

/// One disk as a guest attaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Relative to the appliance directory.
    pub path: String,
    /// Format.
    pub format: DiskFormat,
    /// Attached read-only.
    pub read_only: bool,
    /// Opened by both nodes of a pair.
    pub shared: bool,
}

/// One guest of an appliance (the appliance itself, or one node of a pair).
#[derive(Debug, Clone)]
pub struct GuestPlan {
    /// Its files' directory, relative to the appliance directory (`""`, `"a"`, `"b"`).
    pub dir: String,
    /// Domain name.
    pub domain: String,
    /// Its command line, in order.
    pub words: Vec<String>,
    /// Disks in guest order.
    pub disks: Vec<Attached>,
    /// NIC MAC.
    pub mac: Option<MacAddr>,
    /// The shared-memory region (NVRAM, or the pair's region), relative, and its size.
    pub region: (String, ByteSize),
    /// The pair node, for a pair.
    pub node: Option<Node>,
    /// Its management key file, relative (`mgmt.key`, `a/mgmt.key`), where `tandem mgmt` and
    /// the build read the key. `None` when the description turns management off.
    pub key: Option<String>,
    /// Its boot module, relative (`boot.module`, `a/boot.module`): the key's word and the
    /// TLS files. `None` with neither management nor `[tls]`.
    pub module: Option<String>,
    /// The QEMU line of its launch script (relative paths, TCG; the script picks the
    /// accelerator when it runs).
    pub qemu: QemuCommand,
}

/// `tandem run`'s arguments for one appliance whose files are under `base` (`""` for the
/// launch script's relative paths): the same parser as the command, so a new `run` option
/// with a default needs nothing here.
pub fn run_args(
    app: &Appliance,
    base: &Path,
    words: &[String],
    nbd_port: u16,
    mgmt_port: u16,
    extra: &[String],
) -> anyhow::Result<RunArgs> {
    let Kind::Single(s) = &app.kind else {
        anyhow::bail!("appliance {} is a pair, not one guest", app.name);
    };
    let path = |rel: &str| base.join(rel).to_string_lossy().into_owned();
    let mut argv: Vec<String> = vec![
        "tandem".into(),
        "run".into(),
        "--machine".into(),
        "q35".into(),
        "--image".into(),
        path(KERNEL),
        "--mem".into(),
        app.memory.to_string(),
        "--smp".into(),
        app.vcpus.to_string(),
        "--nvram-size".into(),
        s.nvram.to_string(),
        "--nbd-port".into(),
        nbd_port.to_string(),
        "--mgmt-port".into(),
        if app.management { mgmt_port } else { 0 }.to_string(),
        "--cmdline".into(),
        words.join(" "),
    ];
    if let Some(mac) = s.mac {
        argv.extend(["--mac".into(), mac.to_string()]);
    }
    if has_module(app) {
        argv.extend(["--boot-module".into(), path(BOOT_MODULE)]);
    }
    for (k, d) in s.disks.iter().enumerate() {
        let mut spec = path(&d.file_name(k));
        if d.read_only {
            spec.push_str(",ro");
        }
        argv.extend(["--disk".into(), spec]);
    }
    argv.extend(extra.iter().cloned());
    match Cli::try_parse_args(&argv)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .command
    {
        Command::Run(r) => Ok(r),
        _ => anyhow::bail!("`tandem run` arguments did not parse as run"),
    }
}

/// Whether the guests have a boot module: management on (its key) or `[tls]`.
pub fn has_module(app: &Appliance) -> bool {
    app.management || app.tls.is_some()
}

/// The pair's configuration as `tandem pair up` resolves it, with the appliance's relative
/// paths (`""` as the pair directory: `a/disk0.raw`, `region.bin`).
pub fn pair_config(app: &Appliance) -> anyhow::Result<PairConfig> {
    let Kind::Pair(p) = &app.kind else {
        anyhow::bail!("appliance {} is one guest, not a pair", app.name);
    };
    let spec = pair_spec(app, Path::new(""))?;
    Ok(spec::resolve(
        &spec,
        Path::new(""),
        QEMU.into(),
        KERNEL.into(),
        crate::accel::Accel::Tcg,
        "ip".into(),
        p.region_size.bytes(),
    ))
}

/// The `tandem pair up` spec of a pair appliance in `dir`.
pub fn pair_spec(app: &Appliance, dir: &Path) -> anyhow::Result<PairSpec> {
    let Kind::Pair(p) = &app.kind else {
        anyhow::bail!("appliance {} is one guest, not a pair", app.name);
    };
    let mut spec = PairSpec::new(dir);
    spec.disks = u8::try_from(p.disks[0].len()).unwrap_or(u8::MAX);
    spec.disk_size = p.disks[0].first().map_or(ByteSize::mib(64), |d| d.size);
    spec.region_size = p.region_size;
    spec.mem = app.memory;
    spec.timeout_ms = p.timeout_ms;
    spec.fence_timeout_ms = p.fence_timeout_ms;
    spec.giveback = p.giveback;
    spec.subnet = p.subnet;
    spec.cmdline = app.common_words();
    if has_module(app) {
        spec.boot_modules = Node::ALL.map(|n| Some(PathBuf::from(n.name()).join(BOOT_MODULE)));
    }
    spec.exports =
        spec::export_words(&[0, 1].map(|n| p.disks[n].iter().map(|d| d.allow).collect()));
    spec.validate().map_err(|e| anyhow::anyhow!(e))?;
    Ok(spec)
}

/// Every guest of `app`, in order (the appliance, or nodes a and b).
pub fn plans(app: &Appliance) -> anyhow::Result<Vec<GuestPlan>> {
    match &app.kind {
        Kind::Single(s) => {
            let mut words = vec![
                word(key::IP, format_args!("{}/{}", s.ip.0, s.ip.1)),
                word(key::GW, s.gateway.map_or("none".into(), |g| g.to_string())),
            ];
            for (k, d) in s.disks.iter().enumerate() {
                // The guest's own syntax (`tandem_formats::cmdline::ExportSpec`).
                let e = ExportSpec::new(&d.name, &format!("blk{k}"), d.read_only, d.allow)
                    .ok_or_else(|| anyhow::anyhow!("export name {:?} does not fit", d.name))?;
                words.push(word(key::EXPORT, e));
            }
            words.extend(app.common_words());
            let args = run_args(
                app,
                Path::new(""),
                &words,
                GUEST_NBD_PORT,
                GUEST_MGMT_PORT,
                &[],
            )?;
            let tcg = accel::decide(AccelChoice::Tcg, &accel::HostFacts::probe());
            let region = SharedRegion::new(NVRAM, s.nvram);
            let qemu = crate::run::build_command(
                &args,
                Path::new(QEMU),
                Path::new(KERNEL),
                &tcg,
                &StateDir::new(""),
                Some(&region),
            )
            .name(&app.name);
            Ok(vec![GuestPlan {
                dir: String::new(),
                domain: app.name.clone(),
                words,
                disks: s
                    .disks
                    .iter()
                    .enumerate()
                    .map(|(k, d)| Attached {
                        path: d.file_name(k),
                        format: d.format,
                        read_only: d.read_only,
                        shared: false,
                    })
                    .collect(),
                mac: s.mac,
                region: (NVRAM.into(), s.nvram),
                node: None,
                key: app.management.then(|| KEY_FILE.to_string()),
                module: has_module(app).then(|| BOOT_MODULE.to_string()),
                qemu,
            }])
        }
        Kind::Pair(p) => {
            let cfg = pair_config(app)?;
            // Each node its own key file and boot module (in `cfg.boot_modules`, so that the
            // QEMU line is `tandem pair up`'s).
            let key = |n: Node| app.management.then(|| format!("{n}/{KEY_FILE}"));
            let module = |n: Node| {
                cfg.boot_modules[n.index()]
                    .as_ref()
                    .map(|m| m.to_string_lossy().into_owned())
            };
            let qemu = |n: Node| cfg.node_command(n).name(format!("{}-{n}", app.name));
            Ok(Node::ALL
                .into_iter()
                .map(|n| GuestPlan {
                    dir: n.name().into(),
                    domain: format!("{}-{n}", app.name),
                    words: cfg.guest_words(n),
                    disks: cfg
                        .node_disks(n)
                        .into_iter()
                        .map(|path| Attached {
                            path: path.to_string_lossy().into_owned(),
                            format: DiskFormat::Raw,
                            read_only: false,
                            shared: true,
                        })
                        .collect(),
                    mac: Some(spec::mac(n)),
                    region: (
                        cfg.paths().region().to_string_lossy().into_owned(),
                        p.region_size,
                    ),
                    node: Some(n),
                    key: key(n),
                    module: module(n),
                    qemu: qemu(n),
                })
                .collect())
        }
    }
}

impl GuestPlan {
    /// A file of this guest, relative to the appliance directory.
    pub fn file(&self, name: &str) -> String {
        if self.dir.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.dir)
        }
    }

    /// `guest.cmdline`: the words, one line.
    pub fn cmdline_text(&self) -> String {
        self.words.join(" ") + "\n"
    }
}

/// Double-quote a shell word that expands our own `${VAR}`s (no other `$` can be in it: the
/// description's values exclude `$`, quotes and backslashes).
fn dq(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The launch script (`run.sh`).
pub fn launch_script(app: &Appliance, g: &GuestPlan) -> String {
    let args = script_qemu_args(g);
    let mut s = String::new();
    let cd = if g.dir.is_empty() {
        "cd \"$(dirname \"$0\")\""
    } else {
        "cd \"$(dirname \"$0\")/..\""
    };
    let _ = writeln!(s, "#!/bin/sh");
    match g.node {
        None => {
            let _ = writeln!(
                s,
                "# Tandem appliance {:?}: boot it under QEMU with the devices `tandem run` gives a guest\n\
                 # (q35, virtio-blk disks, virtio-net on user networking, the NVRAM region {} as\n\
                 # ivshmem-plain). Generated by `tandem image build`; `tandem image run DIR` does the same\n\
                 # and prints how to connect.\n\
                 #\n\
                 #   NBD_PORT=10809 MGMT_PORT=10810   host ports on 127.0.0.1 forwarded to the guest",
                app.name, g.region.0
            );
        }
        Some(n) => {
            let _ = writeln!(
                s,
                "# Tandem appliance {:?}, pair node {n}: boot it under QEMU as `tandem pair up` does (q35,\n\
                 # its own disks then its peer's, the shared region {} as ivshmem-plain, virtio-net\n\
                 # on tap device {}). Both nodes' taps must be on one bridge with the pair's subnet;\n\
                 # `tandem image run DIR` makes them in a private network namespace and runs the fence\n\
                 # agent. Generated by `tandem image build`.",
                app.name,
                g.region.0,
                spec::tap(n)
            );
        }
    }
    let _ = writeln!(
        s,
        "#\n\
         #   TANDEM_ACCEL=auto|kvm|tcg        auto (default): KVM only when /dev/kvm opens and the CPU\n\
         #                                    shows vmx or svm, else TCG\n\
         #   QEMU=qemu-system-x86_64          the QEMU to run; extra arguments go to QEMU\n\
         set -eu\n\
         {cd}\n\
         QEMU=${{QEMU:-{QEMU}}}"
    );
    if g.node.is_none() {
        let _ = writeln!(
            s,
            "NBD_PORT=${{NBD_PORT:-{GUEST_NBD_PORT}}}\nMGMT_PORT=${{MGMT_PORT:-{GUEST_MGMT_PORT}}}"
        );
    }
    let _ = writeln!(
        s,
        "case \"${{TANDEM_ACCEL:-auto}}\" in\n\
         \x20 kvm) ACCEL=kvm ;;\n\
         \x20 tcg) ACCEL=tcg ;;\n\
         \x20 auto)\n\
         \x20   if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then\n\
         \x20     ACCEL=kvm\n\
         \x20   else\n\
         \x20     ACCEL=tcg\n\
         \x20   fi ;;\n\
         \x20 *) echo \"TANDEM_ACCEL must be auto, kvm or tcg\" >&2; exit 2 ;;\n\
         esac\n\
         if [ \"$ACCEL\" = kvm ]; then CPU=host; else CPU=max; fi\n\
         echo \"tandem: booting {} with $ACCEL\" >&2\n\
         exec \"$QEMU\" \\",
        g.domain
    );
    for a in &args {
        let _ = writeln!(s, "    {a} \\");
    }
    let _ = writeln!(s, "    \"$@\"");
    s
}

/// QEMU's arguments as the launch script passes them, an option with its value on one line:
/// the accelerator and CPU from the script's variables, the forwarded ports from
/// `${NBD_PORT}` and `${MGMT_PORT}`.
fn script_qemu_args(g: &GuestPlan) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let raw: Vec<String> = g
        .qemu
        .to_args()
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut i = 0;
    while i < raw.len() {
        let a = &raw[i];
        let next = raw.get(i + 1);
        match (a.as_str(), next.map(String::as_str)) {
            ("-accel", Some(_)) => {
                args.push("-accel \"$ACCEL\"".into());
                i += 2;
                continue;
            }
            ("-cpu", Some(_)) => {
                args.push("-cpu \"$CPU\"".into());
                i += 2;
                continue;
            }
            _ => {}
        }
        let word = |w: &str| {
            let fwd = w
                .replace(
                    &format!("127.0.0.1:{GUEST_NBD_PORT}-:"),
                    "127.0.0.1:${NBD_PORT}-:",
                )
                .replace(
                    &format!("127.0.0.1:{GUEST_MGMT_PORT}-:"),
                    "127.0.0.1:${MGMT_PORT}-:",
                );
            if fwd != w {
                dq(&fwd)
            } else {
                shell_quote(std::ffi::OsStr::new(w))
            }
        };
        match next {
            Some(v) if a.starts_with('-') && !v.starts_with('-') => {
                args.push(format!("{} {}", word(a), word(v)));
                i += 2;
            }
            _ => {
                args.push(word(a));
                i += 1;
            }
        }
    }
    args
}

/// XML text escaping (attribute and element content).
pub(crate) fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn installed(app: &Appliance, rel: &str) -> String {
    PathBuf::from(&app.install_dir)
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

/// The guest's first free PCI slot after its disks (disks sit at 00:02.0 onwards, as QEMU
/// places them under `tandem run`).
const FIRST_SLOT: usize = 2;

/// How a domain XML gives the guest its NVRAM, and for which accelerator it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainOptions<'a> {
    /// `type='kvm'` or `type='qemu'` (TCG). The CPU element (`maximum`) suits both.
    pub accel: Accel,
    /// Where the NVRAM region is.
    pub nvram: NvramDevice<'a>,
}

/// Where a domain's NVRAM region is. Either way it is an `ivshmem-plain` device in the slot
/// after the NIC: the first ivshmem function the guest finds on PCI is its NVRAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvramDevice<'a> {
    /// The appliance's region file under `install_dir`, through `qemu:commandline` (libvirt's
    /// `<shmem>` cannot name a file).
    File,
    /// `<shmem name='NAME'>`: the file `/dev/shm/NAME` on whichever host runs the domain (a
    /// cluster guest, whose log the mirror keeps there on the other host).
    Shmem(&'a str),
}

impl DomainOptions<'_> {
    /// What `tandem image build` writes: `type='kvm'`, the region file.
    pub fn appliance() -> Self {
        DomainOptions {
            accel: Accel::Kvm,
            nvram: NvramDevice::File,
        }
    }

    fn domain_type(&self) -> &'static str {
        match self.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "qemu",
        }
    }
}

/// The libvirt domain XML (`domain.xml`).
pub fn libvirt_xml(app: &Appliance, g: &GuestPlan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!-- Tandem appliance {name}: libvirt domain (generated by `tandem image build`).\n\
         \x20    Direct kernel boot of the PVH ELF on q35. Files are named under {dir}:\n\
         \x20    copy the appliance directory there (or change install_dir), then\n\
         \x20    `virsh define domain.xml && virsh start {domain}`. type='kvm' needs a host with\n\
         \x20    hardware virtualisation; use type='qemu' for TCG. The guest finds its devices on\n\
         \x20    PCI bus 0 (fixed slots below); its NVRAM is an ivshmem-plain device over the region\n\
         \x20    file ({region}), given through qemu:commandline because libvirt's <shmem> cannot\n\
         \x20    name a file. The console is the first serial port (virsh console {domain}). -->",
        name = xml(&app.name),
        dir = xml(&app.install_dir),
        domain = xml(&g.domain),
        region = xml(&g.region.0),
    );
    if let Some(k) = &g.module {
        let _ = writeln!(
            s,
            "<!-- The guest's secrets (management key, TLS key and certificates) are the file {k}\n\
             \x20    (0600), the guest's <initrd>: the guest reads it as its boot module, so they\n\
             \x20    are not in this file. libvirt's dynamic ownership (the default) lets QEMU read\n\
             \x20    it. -->",
            k = xml(k),
        );
    }
    s.push_str(&domain_xml(app, g, &DomainOptions::appliance()));
    s
}

/// The `<domain>` element of a guest's libvirt XML (no comment before it).
pub fn domain_xml(app: &Appliance, g: &GuestPlan, opts: &DomainOptions<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<domain type='{}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
        opts.domain_type()
    );
    let _ = writeln!(s, "  <name>{}</name>", xml(&g.domain));
    let _ = writeln!(
        s,
        "  <description>Tandem storage appliance {}</description>",
        xml(&app.name)
    );
    let _ = writeln!(
        s,
        "  <memory unit='KiB'>{}</memory>",
        app.memory.bytes() / 1024
    );
    let _ = writeln!(s, "  <vcpu placement='static'>{}</vcpu>", app.vcpus);
    let _ = writeln!(s, "  <os>");
    let _ = writeln!(s, "    <type arch='x86_64' machine='q35'>hvm</type>");
    let _ = writeln!(s, "    <kernel>{}</kernel>", xml(&installed(app, KERNEL)));
    if let Some(k) = &g.module {
        let _ = writeln!(s, "    <initrd>{}</initrd>", xml(&installed(app, k)));
    }
    let _ = writeln!(s, "    <cmdline>{}</cmdline>", xml(&g.words.join(" ")));
    let _ = writeln!(s, "  </os>");
    let _ = writeln!(s, "  <features>\n    <acpi/>\n  </features>");
    // `maximum`: the host's CPU under KVM (as host-passthrough), every feature QEMU can
    // emulate under TCG. host-passthrough makes libvirt refuse a type='qemu' domain.
    let _ = writeln!(s, "  <cpu mode='maximum'/>");
    let _ = writeln!(s, "  <clock offset='utc'/>");
    let _ = writeln!(s, "  <on_poweroff>destroy</on_poweroff>");
    let _ = writeln!(s, "  <on_reboot>restart</on_reboot>");
    let _ = writeln!(s, "  <on_crash>destroy</on_crash>");
    let _ = writeln!(s, "  <devices>");
    let nic_slot = xml_disks_and_nic(&mut s, app, g);
    if let NvramDevice::Shmem(name) = opts.nvram {
        xml_shmem(&mut s, name, g.region.1, nic_slot + 1);
    }
    let _ = writeln!(s, "    <controller type='usb' model='none'/>");
    let _ = writeln!(
        s,
        "    <serial type='pty'>\n      <target port='0'/>\n    </serial>"
    );
    let _ = writeln!(
        s,
        "    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>"
    );
    let _ = writeln!(s, "    <memballoon model='none'/>");
    let _ = writeln!(s, "  </devices>");
    xml_qemu_commandline(&mut s, app, g, nic_slot, opts);
    let _ = writeln!(s, "</domain>");
    s
}

/// The domain's disks (PCI slots from [`FIRST_SLOT`]) and its NIC on the bridge (the slot
/// after them), returned.
fn xml_disks_and_nic(s: &mut String, app: &Appliance, g: &GuestPlan) -> usize {
    for (k, d) in g.disks.iter().enumerate() {
        let _ = writeln!(s, "    <disk type='file' device='disk'>");
        let _ = writeln!(
            s,
            "      <driver name='qemu' type='{}' cache='none' io='native'/>",
            d.format.driver()
        );
        let _ = writeln!(
            s,
            "      <source file='{}'/>",
            xml(&installed(app, &d.path))
        );
        let _ = writeln!(s, "      <target dev='{}' bus='virtio'/>", vd_name(k));
        if d.read_only {
            let _ = writeln!(s, "      <readonly/>");
        }
        if d.shared {
            let _ = writeln!(s, "      <shareable/>");
        }
        let _ = writeln!(s, "      {}", pci_address(FIRST_SLOT + k));
        let _ = writeln!(s, "    </disk>");
    }
    let nic_slot = FIRST_SLOT + g.disks.len();
    let _ = writeln!(s, "    <interface type='bridge'>");
    if let Some(mac) = g.mac {
        let _ = writeln!(s, "      <mac address='{mac}'/>");
    }
    let _ = writeln!(s, "      <source bridge='{}'/>", xml(&app.bridge));
    let _ = writeln!(s, "      <model type='virtio'/>");
    let _ = writeln!(s, "      <rom enabled='no'/>");
    let _ = writeln!(s, "      {}", pci_address(nic_slot));
    let _ = writeln!(s, "    </interface>");
    nic_slot
}

/// The NVRAM as `<shmem>` in PCI slot `slot` (libvirt maps `/dev/shm/NAME`; the size is in
/// whole MiB, a power of two like every region size).
fn xml_shmem(s: &mut String, name: &str, size: ByteSize, slot: usize) {
    let _ = writeln!(s, "    <shmem name='{}'>", xml(name));
    let _ = writeln!(s, "      <model type='ivshmem-plain'/>");
    let _ = writeln!(s, "      <size unit='M'>{}</size>", size.as_mib());
    let _ = writeln!(s, "      {}", pci_address(slot));
    let _ = writeln!(s, "    </shmem>");
}

/// What libvirt has no element for, as QEMU arguments: the NVRAM region's ivshmem-plain
/// device over a file (in the slot after the NIC) and the isa-debug-exit port.
fn xml_qemu_commandline(
    s: &mut String,
    app: &Appliance,
    g: &GuestPlan,
    nic_slot: usize,
    opts: &DomainOptions<'_>,
) {
    let _ = writeln!(s, "  <qemu:commandline>");
    let mut args = Vec::new();
    if opts.nvram == NvramDevice::File {
        let region = format!(
            "memory-backend-file,id=nvram0,share=on,mem-path={},size={}",
            installed(app, &g.region.0),
            g.region.1
        );
        let region_dev = format!(
            "ivshmem-plain,memdev=nvram0,bus=pcie.0,addr={:#x}",
            nic_slot + 1
        );
        args.extend(["-object".to_string(), region, "-device".into(), region_dev]);
    }
    args.extend([
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
    ]);
    for v in &args {
        let _ = writeln!(s, "    <qemu:arg value='{}'/>", xml(v));
    }
    let _ = writeln!(s, "  </qemu:commandline>");
}

fn vd_name(k: usize) -> String {
    // vda .. vdz is enough: at most 16 disks.
    format!("vd{}", char::from(b'a' + (k % 26) as u8))
}

fn pci_address(slot: usize) -> String {
    format!("<address type='pci' domain='0x0000' bus='0x00' slot='{slot:#04x}' function='0x0'/>")
}

/// The Xen `xl` config of a PVH guest (`xl.cfg`).
pub fn xl_config(app: &Appliance, g: &GuestPlan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Tandem appliance {:?}: Xen PVH guest (generated by `tandem image build`).\n\
         # Files are named under {} (install_dir); `xl create xl.cfg`.\n\
         # Xen enters the kernel at its PVH entry note and passes `extra` as its command line.\n\
         # The guest drives virtio devices today; Xen front-ends (blkfront, netfront) are not in\n\
         # it yet, and Xen has no ivshmem: under Xen the NVRAM log lives in guest RAM, so keep\n\
         # durability=disk there.",
        app.name, app.install_dir
    );
    if let Some(k) = &g.module {
        let _ = writeln!(
            s,
            "# The guest's secrets (management key, TLS key and certificates) are the file {k}\n\
             # (0600), passed as the PVH boot module (`ramdisk`), so they are not in this file."
        );
    }
    let _ = writeln!(s, "name = \"{}\"", g.domain);
    let _ = writeln!(s, "type = \"pvh\"");
    let _ = writeln!(s, "kernel = \"{}\"", installed(app, KERNEL));
    if let Some(k) = &g.module {
        let _ = writeln!(s, "ramdisk = \"{}\"", installed(app, k));
    }
    let _ = writeln!(s, "extra = \"{}\"", g.words.join(" "));
    let _ = writeln!(s, "memory = {}", app.memory.as_mib());
    let _ = writeln!(s, "vcpus = {}", app.vcpus);
    let _ = writeln!(s, "disk = [");
    for (k, d) in g.disks.iter().enumerate() {
        let access = if d.read_only { "ro" } else { "rw" };
        let _ = writeln!(
            s,
            "    \"format={},vdev=xvd{},access={access},target={}\",",
            d.format.driver(),
            char::from(b'a' + (k % 26) as u8),
            installed(app, &d.path)
        );
    }
    let _ = writeln!(s, "]");
    let mac = g.mac.map(|m| format!("mac={m},")).unwrap_or_default();
    let _ = writeln!(s, "vif = [ \"{mac}bridge={}\" ]", app.bridge);
    let _ = writeln!(s, "on_poweroff = \"destroy\"");
    let _ = writeln!(s, "on_reboot = \"restart\"");
    let _ = writeln!(s, "on_crash = \"destroy\"");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single() -> Appliance {
        super::super::config::parse(
            "name = \"demo\"\n[nvram]\nsize = \"16M\"\n[[disk]]\nname = \"data\"\nsize = \"64M\"\n\
             [[disk]]\nname = \"logs\"\nsize = \"8M\"\nformat = \"qcow2\"\nread_only = true\n",
        )
        .unwrap()
    }

    #[test]
    fn allow_lists_render_in_the_guest_syntax() {
        let app = super::super::config::parse(
            "name = \"acl\"\n[[disk]]\nname = \"data\"\nsize = \"64M\"\n\
             allow = [\"10.0.0.0/8\", \"192.168.1.5\"]\n\
             [[disk]]\nname = \"logs\"\nsize = \"8M\"\nread_only = true\nallow = [\"10.0.2.2\"]\n",
        )
        .unwrap();
        let g = &plans(&app).unwrap()[0];
        let words: Vec<&String> = g
            .words
            .iter()
            .filter(|w| w.starts_with("export="))
            .collect();
        assert_eq!(
            words,
            [
                "export=data:blk0:allow=10.0.0.0/8+192.168.1.5/32",
                "export=logs:blk1:ro:allow=10.0.2.2/32"
            ]
        );
        // The guest's parser reads back what the host wrote.
        let (mut issues, mut n) = (Vec::new(), 0);
        let line = g.cmdline_text();
        let cfg = tandem_formats::cmdline::parse(&line, |i| issues.push(i.to_string()));
        assert!(issues.is_empty(), "{issues:?}");
        let Kind::Single(s) = &app.kind else { panic!() };
        for (e, d) in cfg.exports().iter().zip(&s.disks) {
            assert_eq!(
                (e.name(), e.read_only, e.allow),
                (d.name.as_str(), d.read_only, d.allow)
            );
            n += 1;
        }
        assert_eq!(n, 2);
    }

    #[test]
    fn a_pairs_allow_lists_follow_its_disks_through_a_takeover() {
        let app = super::super::config::parse(
            "name = \"p\"\n[pair]\n[[pair.a.disk]]\nsize = \"8M\"\nallow = [\"10.1.0.0/16\"]\n\
             [[pair.a.disk]]\nsize = \"8M\"\n\
             [[pair.b.disk]]\nsize = \"8M\"\n[[pair.b.disk]]\nsize = \"8M\"\nallow = [\"10.2.0.9\"]\n",
        )
        .unwrap();
        let p = plans(&app).unwrap();
        let (mut issues, mut cfgs) = (Vec::new(), Vec::new());
        for g in &p {
            cfgs.push(tandem_formats::cmdline::parse(&g.cmdline_text(), |i| {
                issues.push(i.to_string())
            }));
        }
        assert!(issues.is_empty(), "{issues:?}");
        let show = |e: &[tandem_formats::cmdline::ExportSpec]| {
            e.iter()
                .map(|e| format!("{}:{}:{}", e.name(), e.device(), e.allow))
                .collect::<Vec<_>>()
        };
        // Each node's own disks as blk0, blk1 with its lists; its peer's (devices blk2, blk3)
        // under the peer's names, with the peer's lists.
        assert_eq!(
            show(cfgs[0].exports()),
            ["blk0:blk0:10.1.0.0/16", "blk1:blk1:"]
        );
        assert_eq!(
            show(cfgs[0].peer_exports()),
            ["blk0:blk2:", "blk1:blk3:10.2.0.9/32"]
        );
        assert_eq!(
            show(cfgs[1].exports()),
            ["blk0:blk0:", "blk1:blk1:10.2.0.9/32"]
        );
        assert_eq!(
            show(cfgs[1].peer_exports()),
            ["blk0:blk2:10.1.0.0/16", "blk1:blk3:"]
        );
        // The domain XML carries the same words.
        assert!(libvirt_xml(&app, &p[1]).contains("pair.peer_export=blk0:blk2:allow=10.1.0.0/16"));

        // Open lists: no export words (the guest's defaults).
        let open = super::super::config::parse(
            "name = \"p\"\n[pair]\n[[pair.a.disk]]\nsize = \"8M\"\n[[pair.b.disk]]\nsize = \"8M\"\n",
        )
        .unwrap();
        for g in plans(&open).unwrap() {
            assert!(
                !g.cmdline_text().contains("export="),
                "{}",
                g.cmdline_text()
            );
        }
    }

    #[test]
    fn single_plan_matches_tandem_run() {
        let app = single();
        let p = plans(&app).unwrap();
        assert_eq!(p.len(), 1);
        let g = &p[0];
        assert_eq!(
            g.cmdline_text(),
            "ip=10.0.2.15/24 gw=10.0.2.2 export=data:blk0 export=logs:blk1:ro mgmt.on_data=on\n"
        );
        let line = g.qemu.to_string();
        assert!(line.contains("file.filename=disk0.raw"), "{line}");
        assert!(line.contains("driver=qcow2,read-only=on"), "{line}");
        assert!(line.contains("mem-path=nvram.bin,size=16M"), "{line}");
        assert!(line.contains("-qmp unix:qmp.sock"), "{line}");
        let script = launch_script(&app, g);
        assert!(script.contains("-accel \"$ACCEL\""), "{script}");
        assert!(script.contains("-cpu \"$CPU\""), "{script}");
        assert!(
            script.contains("hostfwd=tcp:127.0.0.1:${NBD_PORT}-:10809"),
            "{script}"
        );
        assert!(script.contains("-kernel kernel.elf"), "{script}");
        assert!(
            !script.contains("/tmp") && !script.contains("/work"),
            "{script}"
        );
        // The boot module goes by name only: -initrd, <initrd>, ramdisk.
        assert_eq!(g.module.as_deref(), Some("boot.module"));
        assert!(
            script.contains("-initrd boot.module") && !script.contains("mgmt.key"),
            "{script}"
        );
        assert_eq!(script.matches("mgmt.on_data=on").count(), 1, "{script}");
        let xml = libvirt_xml(&app, g);
        assert!(xml.contains(
            "<cmdline>ip=10.0.2.15/24 gw=10.0.2.2 export=data:blk0 export=logs:blk1:ro \
             mgmt.on_data=on</cmdline>"
        ));
        assert!(
            xml.contains("<initrd>/var/lib/tandem/demo/boot.module</initrd>"),
            "{xml}"
        );
        assert!(xml.contains("/var/lib/tandem/demo/disk1.qcow2"));
        // A CPU mode libvirt takes for type='kvm' and for type='qemu' (TCG) alike.
        assert!(xml.contains("<cpu mode='maximum'/>") && !xml.contains("host-passthrough"));
        assert!(xml.contains("<readonly/>"));
        let xl = xl_config(&app, g);
        assert!(xl.contains("type = \"pvh\""));
        assert!(xl.contains("access=ro,target=/var/lib/tandem/demo/disk1.qcow2"));
        assert!(
            xl.contains("ramdisk = \"/var/lib/tandem/demo/boot.module\""),
            "{xl}"
        );
    }

    #[test]
    fn without_management_there_is_no_key_file_to_pass() {
        for text in [
            "name = \"off\"\n[network]\nmanagement = false\n[[disk]]\nsize = \"8M\"\n",
            "name = \"off\"\n[network]\nmanagement = false\n[pair]\n[[pair.a.disk]]\n\
             size = \"8M\"\n[[pair.b.disk]]\nsize = \"8M\"\n",
        ] {
            let app = super::super::config::parse(text).unwrap();
            for g in plans(&app).unwrap() {
                assert_eq!((&g.key, &g.module), (&None, &None));
                assert!(g.words.contains(&"mgmt.port=0".to_string()));
                let all = [
                    launch_script(&app, &g),
                    libvirt_xml(&app, &g),
                    xl_config(&app, &g),
                ]
                .concat();
                for absent in ["initrd", "ramdisk", "mgmt.key", "mgmt.on_data"] {
                    assert!(!all.contains(absent), "{absent}: {all}");
                }
            }
        }
    }

    #[test]
    fn pair_plans_attach_own_disks_first() {
        let app = super::super::config::parse(
            "name = \"p\"\n[pair]\ntimeout_ms = 300\n[[pair.a.disk]]\nsize = \"8M\"\n\
             [[pair.b.disk]]\nsize = \"8M\"\n",
        )
        .unwrap();
        let p = plans(&app).unwrap();
        assert_eq!(p[1].domain, "p-b");
        assert_eq!(p[1].disks[0].path, "b/disk0.raw");
        assert_eq!(p[1].disks[1].path, "a/disk0.raw");
        assert!(p[0].words.contains(&"pair.peer_ip=10.77.0.11".to_string()));
        assert!(p[0].words.contains(&"pair.timeout_ms=300".to_string()));
        let script = launch_script(&app, &p[0]);
        assert!(script.contains("cd \"$(dirname \"$0\")/..\""), "{script}");
        assert!(script.contains("ifname=tapa"), "{script}");
        assert!(script.contains("mem-path=region.bin"), "{script}");
        assert!(libvirt_xml(&app, &p[0]).contains("<shareable/>"));
        // Each node its own key file and boot module, by name only.
        for (g, n) in p.iter().zip(["a", "b"]) {
            let key = format!("{n}/mgmt.key");
            let module = format!("{n}/boot.module");
            assert_eq!(g.key.as_deref(), Some(key.as_str()));
            assert_eq!(g.module.as_deref(), Some(module.as_str()));
            assert!(g.words.contains(&"mgmt.on_data=on".to_string()));
            assert!(launch_script(&app, g).contains(&format!("-initrd {module}")));
            assert!(libvirt_xml(&app, g).contains(&format!("<initrd>/var/lib/tandem/p/{module}")));
            assert!(
                xl_config(&app, g).contains(&format!("ramdisk = \"/var/lib/tandem/p/{module}\""))
            );
        }
    }

    #[test]
    fn tls_rides_in_the_boot_module_and_the_words() {
        for (text, module) in [
            (
                "name = \"t\"\n[network]\nmanagement = false\n[tls]\ndir = \"creds\"\n\
                 [[disk]]\nsize = \"8M\"\n",
                vec!["boot.module"],
            ),
            (
                "name = \"t\"\n[tls]\ndir = \"/c\"\nmode = \"on\"\nverify_peer = true\n[pair]\n\
                 [[pair.a.disk]]\nsize = \"8M\"\n[[pair.b.disk]]\nsize = \"8M\"\n",
                vec!["a/boot.module", "b/boot.module"],
            ),
        ] {
            let app = super::super::config::parse(text).unwrap();
            let t = app.tls.as_ref().unwrap();
            let p = plans(&app).unwrap();
            assert_eq!(p.len(), module.len());
            for (g, m) in p.iter().zip(module) {
                assert_eq!(g.module.as_deref(), Some(m));
                let word = format!("nbd.tls={}", t.mode);
                assert!(g.words.contains(&word), "{:?}", g.words);
                assert_eq!(
                    g.words.contains(&"nbd.tls_verify_peer=on".to_string()),
                    t.verify_peer
                );
                let script = launch_script(&app, g);
                assert!(script.contains(&format!("-initrd {m}")), "{script}");
                assert!(script.contains(&word), "{script}");
                let xml = libvirt_xml(&app, g);
                assert!(xml.contains(&format!("<initrd>/var/lib/tandem/t/{m}</initrd>")));
                assert!(xml.contains(&word));
                let xl = xl_config(&app, g);
                assert!(xl.contains(&format!("ramdisk = \"/var/lib/tandem/t/{m}\"")));
                assert!(xl.contains(&word));
                for f in [script, xml, xl] {
                    assert!(!f.contains("BEGIN") && !f.contains("/c/"), "{f}");
                }
                // The guest's parser takes the words.
                let mut issues = Vec::new();
                tandem_formats::cmdline::parse(&g.cmdline_text(), |i| issues.push(i.to_string()));
                assert!(issues.is_empty(), "{issues:?}");
            }
        }
    }

    #[test]
    fn a_pair_appliance_runs_what_tandem_pair_up_runs() {
        let app = super::super::config::parse(
            "name = \"t\"\n[tls]\ndir = \"/c\"\n[pair]\n\
             [[pair.a.disk]]\nsize = \"8M\"\n[[pair.b.disk]]\nsize = \"8M\"\n",
        )
        .unwrap();
        let cfg = pair_config(&app).unwrap();
        for (g, n) in plans(&app).unwrap().iter().zip(Node::ALL) {
            let want = cfg.node_command(n).name(format!("t-{n}"));
            assert_eq!(g.qemu.to_string(), want.to_string());
            assert!(g
                .qemu
                .to_string()
                .contains(&format!("-initrd {n}/boot.module")));
        }
        // `tandem pair up --tls`: one module in the pair directory, for both nodes.
        let mut spec = PairSpec::new("/p");
        spec.tls = Some("/creds".into());
        let cfg = spec::resolve(
            &spec,
            Path::new("/p"),
            QEMU.into(),
            KERNEL.into(),
            crate::accel::Accel::Tcg,
            "ip".into(),
            64 << 20,
        );
        for n in Node::ALL {
            let line = cfg.node_command(n).to_string();
            assert!(line.contains("-initrd /p/boot.module"), "{line}");
            assert!(cfg.guest_words(n).contains(&"nbd.tls=require".into()));
        }
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(!json.contains("creds"), "{json}");
    }
}
