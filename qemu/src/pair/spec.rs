//! What a pair is made of: the options ([`PairSpec`]), their resolved form the supervisor
//! runs ([`PairConfig`], `DIR/spec.json`), and the QEMU command line of each node (pure).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use tandem_formats::cmdline::{key, word};

use serde::{Deserialize, Serialize};

use super::{Node, PairDir};
use crate::accel::{Accel, AccelChoice};
use crate::builder::{Disk, MacAddr, Machine, Nic, QemuCommand, SharedRegion};
use crate::size::ByteSize;

/// The bridge inside the pair's namespace.
pub const BRIDGE: &str = "tbr0";
/// The bridge's own MAC (fixed: a bridge otherwise takes the lowest port MAC, and changes
/// it when ports come and go, which would stale the guests' ARP entries for the host).
pub const BRIDGE_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x77, 0x00, 0x01]);
/// Most disks per node (the guest's `pair.disks` limit).
pub const MAX_DISKS: u8 = 8;

/// A node's tap device.
pub fn tap(n: Node) -> &'static str {
    match n {
        Node::A => "tapa",
        Node::B => "tapb",
    }
}

/// A node's MAC: `52:54:00:77:00:0a` for A, `...:0b` for B.
pub fn mac(n: Node) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x77, 0x00, 0x0a + n.index() as u8])
}

/// The pair's IPv4 subnet: the host side is `.1`, node A `.10`, node B `.11`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// Prefix length (8..=28).
    pub prefix: u8,
}

impl Subnet {
    /// `10.77.0.0/24`.
    pub const DEFAULT: Subnet = Subnet {
        network: Ipv4Addr::new(10, 77, 0, 0),
        prefix: 24,
    };

    fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + i)
    }

    /// The host side's address (the bridge): `.1`.
    pub fn host(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// A node's address: A `.10`, B `.11`.
    pub fn node_ip(&self, n: Node) -> Ipv4Addr {
        self.nth(10 + n.index() as u32)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("invalid subnet '{s}': {why}");
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("expected A.B.C.D/N, e.g. 10.77.0.0/24"))?;
        let network: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
        if !(8..=28).contains(&prefix) {
            return Err(bad(
                "the prefix must be 8 to 28 (the pair uses .1, .10 and .11)",
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(network) & !mask != 0 {
            return Err(bad(&format!(
                "host bits set; the network is {}/{prefix}",
                Ipv4Addr::from(u32::from(network) & mask)
            )));
        }
        Ok(Subnet { network, prefix })
    }
}

/// When a node that took its peer over gives the peer's disks back (`pair.giveback=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Giveback {
    /// As soon as the peer is back and asks.
    Auto,
    /// Only on request (`tandem pair giveback`).
    Manual,
}

impl Giveback {
    /// The guest command-line value.
    pub fn name(self) -> &'static str {
        match self {
            Giveback::Auto => "auto",
            Giveback::Manual => "manual",
        }
    }
}

/// Everything `tandem pair up` takes (the library's [`super::Pair::up`] takes the same).
#[derive(Debug, Clone, PartialEq)]
pub struct PairSpec {
    /// The pair directory.
    pub dir: PathBuf,
    /// Disks per node (1..=8).
    pub disks: u8,
    /// Size of each disk when it is created (existing disks are kept as they are).
    pub disk_size: ByteSize,
    /// Size of the shared region when it is created: a power of two, at least 4M.
    pub region_size: ByteSize,
    /// Guest RAM of each node.
    pub mem: ByteSize,
    /// Peer silence (ms) after which a node declares its peer failed (`pair.timeout_ms`).
    pub timeout_ms: u64,
    /// How long (ms) the fence agent lets a running node ignore a claim on its disks before
    /// it kills that node's QEMU.
    pub fence_timeout_ms: u64,
    /// `pair.giveback=`.
    pub giveback: Giveback,
    /// The pair's subnet.
    pub subnet: Subnet,
    /// Accelerator (`None`: `TANDEM_ACCEL`, else auto).
    pub accel: Option<AccelChoice>,
    /// Guest image (`None`: `TANDEM_IMAGE`, else the workspace's, built if missing).
    pub image: Option<PathBuf>,
    /// The `tandem` executable that runs the supervisor (`None`: see
    /// [`super::api::tandem_binary`]).
    pub tandem: Option<PathBuf>,
    /// Extra guest command-line words for both nodes (e.g. `log=debug`).
    pub cmdline: Vec<String>,
    /// Each node's export words (a, b): its own `export=` and, for what it serves after a
    /// takeover, `pair.peer_export=` (see [`export_words`]); empty: `blk0`, ... open.
    pub exports: [Vec<String>; 2],
    /// NBD over TLS with the credentials of this directory (QEMU's tls-creds-x509 layout):
    /// `up` writes them to `DIR/boot.module` (0600), both nodes' boot module, and adds
    /// `nbd.tls=` to their words. The survivor of a takeover serves its peer's exports under
    /// the same certificate.
    pub tls: Option<PathBuf>,
    /// With `tls`: `nbd.tls=require` or `on`.
    pub tls_mode: crate::cli::TlsModeArg,
    /// Each node's boot module used as is (a, b; relative to the pair directory or absolute):
    /// an appliance's, made by `tandem image build`. Ignored with `tls`.
    pub boot_modules: [Option<PathBuf>; 2],
    /// How long `up` waits for both guests to print `TANDEM READY`.
    pub boot_timeout: Duration,
    /// Print progress on stderr.
    pub verbose: bool,
}

impl PairSpec {
    /// The defaults (`tandem pair up`'s) for a pair in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> PairSpec {
        PairSpec {
            dir: dir.into(),
            disks: 1,
            disk_size: ByteSize::mib(64),
            region_size: ByteSize::mib(64),
            mem: ByteSize::mib(64),
            timeout_ms: 1000,
            fence_timeout_ms: 1500,
            giveback: Giveback::Auto,
            subnet: Subnet::DEFAULT,
            accel: None,
            image: None,
            tandem: None,
            cmdline: Vec::new(),
            exports: [Vec::new(), Vec::new()],
            tls: None,
            tls_mode: crate::cli::TlsModeArg::Require,
            boot_modules: [None, None],
            boot_timeout: Duration::from_secs(120),
            verbose: false,
        }
    }

    /// Check the options against each other and the guest's limits.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_DISKS).contains(&self.disks) {
            return Err(format!(
                "--disks {}: a node has 1 to {MAX_DISKS} disks",
                self.disks
            ));
        }
        check_region_size(self.region_size)?;
        if !(50..=600_000).contains(&self.timeout_ms) {
            return Err(format!(
                "--timeout-ms {}: the guest takes 50 to 600000",
                self.timeout_ms
            ));
        }
        if self.fence_timeout_ms == 0 {
            return Err("--fence-timeout-ms must be above 0".into());
        }
        if self.disk_size.bytes() < (2 << 20) || !self.disk_size.bytes().is_multiple_of(512) {
            return Err(format!(
                "--disk-size {}: at least 2M (the first 1 MiB holds the label) and a multiple \
                 of 512 bytes",
                self.disk_size
            ));
        }
        if let Some(w) = self.cmdline.iter().find(|w| {
            let k = w.split('=').next().unwrap_or("");
            [key::IP, key::GW, key::PAIR].contains(&k) || k.starts_with("pair.")
        }) {
            return Err(format!(
                "guest word '{w}' is set by `tandem pair` itself (use the pair's options)"
            ));
        }
        if let Some(w) = self.exports.iter().flatten().find(|w| {
            w.split_once('=')
                .filter(|(k, _)| [key::EXPORT, key::PAIR_PEER_EXPORT].contains(k))
                .map(|(_, v)| v)
                .is_none_or(|v| tandem_formats::cmdline::ExportSpec::parse(v).is_err())
        }) {
            return Err(format!(
                "'{w}' is not an export word (export=... or pair.peer_export=..., {})",
                tandem_formats::cmdline::EXPORT_SYNTAX
            ));
        }
        Ok(())
    }
}

/// `--region-size`: a power of two QEMU can map as a BAR, large enough for the layout.
pub fn check_region_size(size: ByteSize) -> Result<(), String> {
    SharedRegion::check_size(size)?;
    tandem_formats::pair_region::Header::new(size.bytes(), 0)
        .map(|_| ())
        .map_err(|e| format!("region size {size}: {e}"))
}

/// The resolved configuration the supervisor runs, written to `DIR/spec.json` by `up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairConfig {
    /// The pair directory (absolute).
    pub dir: PathBuf,
    /// QEMU.
    pub qemu: PathBuf,
    /// The guest image.
    pub image: PathBuf,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// `ip` (iproute2).
    pub ip_tool: PathBuf,
    /// Disks per node.
    pub disks: u8,
    /// Bytes of the shared region (the file's length).
    pub region_size: u64,
    /// Bytes of guest RAM.
    pub mem: u64,
    /// `pair.timeout_ms`.
    pub timeout_ms: u64,
    /// The fence agent's patience (ms).
    pub fence_timeout_ms: u64,
    /// `pair.giveback`.
    pub giveback: Giveback,
    /// The subnet, `A.B.C.D/N`.
    pub subnet: String,
    /// Extra guest words.
    pub cmdline: Vec<String>,
    /// Each node's export words (a, b; see [`PairSpec::exports`]).
    #[serde(default)]
    pub exports: [Vec<String>; 2],
    /// Each node's boot module (a, b), passed with `-initrd`: the TLS files (and an
    /// appliance's management key). The path only; the secrets stay in the 0600 file.
    #[serde(default)]
    pub boot_modules: [Option<PathBuf>; 2],
}

impl PairConfig {
    /// The directory's files.
    pub fn paths(&self) -> PairDir {
        PairDir::new(&self.dir)
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet.parse().unwrap_or(Subnet::DEFAULT)
    }

    /// The accelerator.
    pub fn accel(&self) -> Accel {
        match self.accel.as_str() {
            "kvm" => Accel::Kvm,
            _ => Accel::Tcg,
        }
    }

    /// Node `n`'s guest command line.
    pub fn guest_words(&self, n: Node) -> Vec<String> {
        let net = self.subnet();
        let mut words = vec![
            format!("{}={}/{}", key::IP, net.node_ip(n), net.prefix),
            format!("{}=none", key::GW),
            format!("{}={}", key::PAIR, n.name()),
            format!("{}={}", key::PAIR_DISKS, self.disks),
            format!("{}={}", key::PAIR_PEER_IP, net.node_ip(n.peer())),
            format!("{}={}", key::PAIR_TIMEOUT_MS, self.timeout_ms),
            format!("{}={}", key::PAIR_GIVEBACK, self.giveback.name()),
        ];
        words.extend(self.exports[n.index()].iter().cloned());
        words.extend(self.cmdline.iter().cloned());
        words
    }

    /// Node `n`'s disks in guest order: its own first, then its peer's.
    pub fn node_disks(&self, n: Node) -> Vec<PathBuf> {
        let paths = self.paths();
        [n, n.peer()]
            .into_iter()
            .flat_map(|owner| (0..self.disks).map(move |k| (owner, k)))
            .map(|(owner, k)| paths.disk(owner, k))
            .collect()
    }

    /// Node `n`'s QEMU: q35, its disks and its peer's (locking off), the region as ivshmem,
    /// a virtio-net NIC on its tap, QMP in its directory, `-no-reboot` (a guest reset ends
    /// QEMU, so that it shows as a failed node instead of a silent reboot).
    pub fn node_command(&self, n: Node) -> QemuCommand {
        let paths = self.paths();
        let mut cmd = QemuCommand::new(&self.qemu)
            .name(format!("tandem-pair-{n}"))
            .machine(Machine::Q35)
            .accel(self.accel())
            .memory(ByteSize(self.mem))
            .kernel(&self.image)
            .qmp_socket(paths.qmp(n))
            .no_reboot(true);
        cmd = cmd.cmdline(&self.guest_words(n).join(" "));
        for d in self.node_disks(n) {
            cmd = cmd.disk(Disk::new(d).locking(false));
        }
        if let Some(m) = &self.boot_modules[n.index()] {
            cmd = cmd.initrd(m);
        }
        cmd.nic(Nic::tap(tap(n)).mac(mac(n)))
            .shared_region(SharedRegion::new(
                paths.region(),
                ByteSize(self.region_size),
            ))
    }
}

/// Look a system tool up in `PATH`, then in the sbin directories a non-root `PATH` often
/// lacks (`ip` lives in `/usr/sbin` on Debian).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    path.push(":/usr/sbin:/sbin:/usr/bin:/bin");
    crate::qemu_bin::find_in_path(std::ffi::OsStr::new(name), Some(&path))
}

/// The config for `spec` with the tools resolved.
pub fn resolve(
    spec: &PairSpec,
    dir: &Path,
    qemu: PathBuf,
    image: PathBuf,
    accel: Accel,
    ip_tool: PathBuf,
    region_size: u64,
) -> PairConfig {
    PairConfig {
        dir: dir.to_path_buf(),
        qemu,
        image,
        accel: accel.name().to_string(),
        ip_tool,
        disks: spec.disks,
        region_size,
        mem: spec.mem.bytes(),
        timeout_ms: spec.timeout_ms,
        fence_timeout_ms: spec.fence_timeout_ms,
        giveback: spec.giveback,
        subnet: spec.subnet.to_string(),
        cmdline: tls_words(spec)
            .into_iter()
            .chain(spec.cmdline.iter().cloned())
            .collect(),
        exports: spec.exports.clone(),
        boot_modules: if spec.tls.is_some() {
            [(); 2].map(|_| Some(PairDir::new(dir).boot_module()))
        } else {
            spec.boot_modules.clone().map(|m| m.map(|m| dir.join(m)))
        },
    }
}

/// `nbd.tls=MODE` for a spec with `tls`.
fn tls_words(spec: &PairSpec) -> Vec<String> {
    match spec.tls {
        Some(_) => vec![word(key::NBD_TLS, spec.tls_mode.word())],
        None => Vec::new(),
    }
}

/// The export words of both nodes (a, b) when each node's disks `k` carry the allow-lists
/// `allow[node][k]`: node n exports its own disk k as `blkK` (`export=`) and, after a
/// takeover, its peer's disk k (its device `blk{disks+k}`) as `blkK` with the peer's list
/// (`pair.peer_export=`), so that the peer's clients find the same export, no more open.
/// Empty when every list is open (the guest's defaults say the same).
pub fn export_words(allow: &[Vec<tandem_formats::allow_list::AllowList>; 2]) -> [Vec<String>; 2] {
    use tandem_formats::cmdline::ExportSpec;
    if allow.iter().flatten().all(|a| a.is_open()) {
        return [Vec::new(), Vec::new()];
    }
    let word = |key: &str, k: usize, device: usize, a| {
        let e = ExportSpec::new(&format!("blk{k}"), &format!("blk{device}"), false, a)
            .expect("blkN names fit");
        format!("{key}={e}")
    };
    let node = |me: usize| {
        let own = &allow[me];
        let peer = &allow[1 - me];
        let mut w: Vec<String> = own
            .iter()
            .enumerate()
            .map(|(k, a)| word("export", k, k, *a))
            .collect();
        w.extend(
            peer.iter()
                .enumerate()
                .map(|(k, a)| word("pair.peer_export", k, own.len() + k, *a)),
        );
        w
    };
    [node(0), node(1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_parses_every_word_the_pair_writes() {
        let cfg = config();
        for n in [Node::A, Node::B] {
            let line = cfg.guest_words(n).join(" ");
            let mut issues = Vec::new();
            let parsed = tandem_formats::cmdline::parse(&line, |i| issues.push(i.to_string()));
            assert!(issues.is_empty(), "{line}: {issues:?}");
            let pair = parsed.pair.expect("pair config");
            assert_eq!(
                (pair.node, pair.disks, pair.timeout_ms),
                (n.index() as u8, 2, 300)
            );
            assert!(!pair.giveback_auto);
        }
    }

    fn config() -> PairConfig {
        let mut spec = PairSpec::new("/p");
        spec.disks = 2;
        spec.timeout_ms = 300;
        spec.giveback = Giveback::Manual;
        spec.cmdline = vec!["log=debug".into()];
        resolve(
            &spec,
            Path::new("/p"),
            "/usr/bin/qemu-system-x86_64".into(),
            "/img/unikernel".into(),
            Accel::Tcg,
            "/usr/sbin/ip".into(),
            64 << 20,
        )
    }

    #[test]
    fn subnet_parse_and_addresses() {
        let s: Subnet = "10.77.0.0/24".parse().unwrap();
        assert_eq!(s, Subnet::DEFAULT);
        assert_eq!(s.host(), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(s.node_ip(Node::A), Ipv4Addr::new(10, 77, 0, 10));
        assert_eq!(s.node_ip(Node::B), Ipv4Addr::new(10, 77, 0, 11));
        assert_eq!(s.to_string(), "10.77.0.0/24");
        let s: Subnet = "192.168.8.16/28".parse().unwrap();
        assert_eq!(s.node_ip(Node::B), Ipv4Addr::new(192, 168, 8, 27));
        for bad in [
            "10.77.0.0",
            "10.77.0.1/24",
            "10.77.0.0/29",
            "10.77.0.0/x",
            "1.2.3/24",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        let e = "10.77.0.5/24".parse::<Subnet>().unwrap_err();
        assert!(e.contains("10.77.0.0/24"), "{e}");
    }

    #[test]
    fn spec_validation() {
        let ok = PairSpec::new("/p");
        assert_eq!(ok.validate(), Ok(()));
        let mut s = ok.clone();
        s.disks = 9;
        assert!(s.validate().unwrap_err().contains("--disks"));
        let mut s = ok.clone();
        s.region_size = ByteSize::mib(48);
        assert!(s.validate().unwrap_err().contains("power of two"));
        let mut s = ok.clone();
        s.region_size = ByteSize::mib(2);
        assert!(s.validate().unwrap_err().contains("too small"));
        let mut s = ok.clone();
        s.timeout_ms = 10;
        assert!(s.validate().is_err());
        let mut s = ok.clone();
        s.cmdline = vec!["pair.disks=3".into()];
        assert!(s.validate().unwrap_err().contains("pair.disks=3"));
        let mut s = ok;
        s.disk_size = ByteSize(1 << 20);
        assert!(s.validate().is_err());
    }

    #[test]
    fn node_a_and_b_command_lines() {
        let cfg = config();
        let args: Vec<String> = cfg
            .node_command(Node::A)
            .to_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let line = args.join(" ");
        assert!(
            line.contains(
                "-append ip=10.77.0.10/24 gw=none pair=a pair.disks=2 pair.peer_ip=10.77.0.11 \
                 pair.timeout_ms=300 pair.giveback=manual log=debug"
            ),
            "{line}"
        );
        let disks: Vec<&str> = args
            .iter()
            .filter(|a| a.starts_with("node-name=disk"))
            .map(String::as_str)
            .collect();
        let f = "driver=raw,read-only=off,file.driver=file,file.filename=";
        assert_eq!(
            disks,
            [
                format!("node-name=disk0,{f}/p/a/disk0.raw,file.locking=off"),
                format!("node-name=disk1,{f}/p/a/disk1.raw,file.locking=off"),
                format!("node-name=disk2,{f}/p/b/disk0.raw,file.locking=off"),
                format!("node-name=disk3,{f}/p/b/disk1.raw,file.locking=off"),
            ]
        );
        assert!(line.contains("-netdev tap,id=net0,ifname=tapa,script=no,downscript=no"));
        assert!(line.contains("virtio-net-pci,netdev=net0,mac=52:54:00:77:00:0a,romfile="));
        assert!(
            line.contains("memory-backend-file,id=nvram0,share=on,mem-path=/p/region.bin,size=64M")
        );
        assert!(line.contains("-qmp unix:/p/a/qmp.sock,server=on,wait=off"));
        assert!(line.contains("-machine q35") && line.contains("-no-reboot"));

        let b = cfg.node_command(Node::B).to_string();
        assert!(b.contains("pair=b") && b.contains("pair.peer_ip=10.77.0.10"));
        assert!(b.contains("ip=10.77.0.11/24"));
        assert!(b.contains("ifname=tapb") && b.contains("mac=52:54:00:77:00:0b"));
        let first = b.find("/p/b/disk0.raw").unwrap();
        assert!(first < b.find("/p/a/disk0.raw").unwrap(), "own disks first");
    }

    #[test]
    fn config_round_trips_through_json() {
        let cfg = config();
        let text = serde_json::to_string(&cfg).unwrap();
        let back: PairConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.subnet(), Subnet::DEFAULT);
        assert_eq!(back.accel(), Accel::Tcg);
    }
}
