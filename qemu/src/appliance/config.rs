//! The appliance description (`appliance.toml`) and its checked, resolved form.
//!
//! The file is read with serde and `deny_unknown_fields` everywhere, so a misspelt key is an
//! error that names it instead of a setting silently ignored. Values that need more than a
//! type check (sizes, addresses, export names, UUIDs) are kept as strings by serde and
//! checked here, so that every problem is reported as `key = value: what is wrong`, with the
//! key spelt as it is written in the file (`disk[1].size`, `pair.b.disk[0].uuid`). All
//! problems are collected and reported together; nothing on the way panics.
//!
//! The resolved form ([`Appliance`]) is what the build uses, and it is also written back as
//! `DIR/config.resolved.toml` ([`Appliance::to_toml`]) with every default spelt out and every
//! generated disk UUID filled in: building from that file gives the same bytes, disks
//! included.
//!
//! A description is either one appliance (top-level `[network]`, `[nvram]`, `[[disk]]`) or a
//! failover pair (`[pair]` with both nodes, `[pair.a]` and `[pair.b]`, each with its own
//! `[[pair.X.disk]]`). A pair is what `tandem pair up` runs: addresses from `pair.subnet`
//! (A .10, B .11), raw disks named `a/diskK.raw` and `b/diskK.raw`, one shared region.
//!
//! `[network] management` (default on) turns the management channel on for every guest, on
//! its one NIC. Its key is never part of the description, nor of anything rendered from it:
//! the build gives each guest a fresh key file of its own (`mgmt.key`, 0600), which reaches
//! the guest as its boot module, and an extra word `mgmt.key=` is refused without echoing it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use tandem_formats::cmdline::{key, word};

use serde::{Deserialize, Serialize};

use crate::builder::{DiskFormat, MacAddr, SharedRegion};
use crate::pair::spec::{check_region_size, Subnet, MAX_DISKS};
use crate::pair::{Giveback, Node};
use crate::size::ByteSize;
use tandem_formats::allow_list::{AllowList, Ipv4Net, MAX_ALLOW};
use tandem_formats::disk_label::{Uuid, RESERVED};

/// Most exports (disks) of one appliance: the guest's `export=` limit.
pub const MAX_EXPORTS: usize = tandem_formats::cmdline::MAX_EXPORTS;
/// Longest export name (the label's name field).
pub const MAX_EXPORT_NAME: usize = 32;
/// Default guest RAM.
pub const DEFAULT_MEMORY: ByteSize = ByteSize::mib(64);
/// Default NVRAM region size.
pub const DEFAULT_NVRAM: ByteSize = ByteSize::mib(64);
/// Default guest address: QEMU user networking's guest address, so `tandem image run` and
/// the launch script reach it through their port forwards.
pub const DEFAULT_IP: &str = "10.0.2.15/24";
/// Default bridge of the libvirt and xl NICs.
pub const DEFAULT_BRIDGE: &str = "br0";
/// Where the libvirt XML and the xl config expect the appliance (both need absolute paths).
pub const DEFAULT_INSTALL_ROOT: &str = "/var/lib/tandem";

// ---------------------------------------------------------------------------------------
// The file, as serde reads it.

/// `appliance.toml` as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Appliance name (libvirt domain, xl name, QEMU `-name`).
    pub name: String,
    /// Guest RAM (`64M`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// `disk` or `nvlog`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<String>,
    /// Guest log level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Where the appliance will be installed (absolute; the libvirt XML and xl config name
    /// their files there). Default `/var/lib/tandem/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_dir: Option<String>,
    /// Extra guest command-line words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmdline: Vec<String>,
    /// Network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkFile>,
    /// NVRAM region (one appliance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvram: Option<NvramFile>,
    /// Data disks (one appliance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk: Vec<DiskFile>,
    /// A failover pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<PairFile>,
    /// NBD over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFile>,
}

/// `[tls]`: NBD over TLS with the credentials of a directory on the build host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// A credentials directory in QEMU's tls-creds-x509 layout (`ca-cert.pem`,
    /// `server-cert.pem`, `server-key.pem`), relative to the description or absolute. Read at
    /// build time into each guest's boot module; the files are not copied otherwise.
    pub dir: String,
    /// `require` (default) or `on`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Clients must present a certificate the CA signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_peer: Option<bool>,
}

/// `[network]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    /// `A.B.C.D/N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// `A.B.C.D` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// NIC MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Host bridge for the libvirt and xl NICs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The management channel (tcp/10810, on the guest's NIC, with a key file per guest)
    /// on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management: Option<bool>,
}

/// `[nvram]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvramFile {
    /// Region size: a power of two, at least 1M.
    pub size: String,
}

/// `[[disk]]` and `[[pair.X.disk]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    /// Export name (one appliance only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Size, reserved area included.
    pub size: String,
    /// `raw` or `qcow2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Serve read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Label UUID; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Client networks served (`"10.0.0.0/8"`, `"192.168.1.5"`; at most 8); absent or empty:
    /// every client. Others do not see the export listed and get `NBD_REP_ERR_POLICY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
}

/// `[pair]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairFile {
    /// `A.B.C.D/N`: the host side is .1, node a .10, node b .11.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Shared region size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_size: Option<String>,
    /// `pair.timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The fence agent's patience (`tandem image run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_timeout_ms: Option<u64>,
    /// `auto` or `manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub giveback: Option<String>,
    /// The pair id in the region's header (16 hex digits); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Node A.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<PairNodeFile>,
    /// Node B.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<PairNodeFile>,
}

/// `[pair.a]`, `[pair.b]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairNodeFile {
    /// The node's own disks.
    #[serde(default)]
    pub disk: Vec<DiskFile>,
}

// ---------------------------------------------------------------------------------------
// The resolved form.

/// A checked appliance description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appliance {
    /// Name.
    pub name: String,
    /// Guest RAM.
    pub memory: ByteSize,
    /// vCPUs.
    pub vcpus: u32,
    /// Absolute install directory (libvirt, xl).
    pub install_dir: String,
    /// Host bridge (libvirt, xl).
    pub bridge: String,
    /// `durability=` word, when set.
    pub durability: Option<String>,
    /// `log=` word, when set.
    pub log: Option<String>,
    /// The management channel on: `mgmt.on_data=on`, and a key file per guest.
    pub management: bool,
    /// Extra guest words.
    pub cmdline: Vec<String>,
    /// NBD over TLS (`[tls]`).
    pub tls: Option<Tls>,
    /// One appliance or a pair.
    pub kind: Kind,
}

/// `[tls]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The credentials directory as written (relative to the description; [`load`] makes it
    /// absolute).
    pub dir: String,
    /// `nbd.tls=`: `require` or `on`.
    pub mode: String,
    /// `nbd.tls_verify_peer=on`.
    pub verify_peer: bool,
}

/// One appliance or a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// One guest.
    Single(Single),
    /// A failover pair.
    Pair(Pair),
}

/// One guest's network, NVRAM and disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Single {
    /// Address and prefix.
    pub ip: (Ipv4Addr, u8),
    /// Default route.
    pub gateway: Option<Ipv4Addr>,
    /// MAC (QEMU's, libvirt's or Xen's default when absent).
    pub mac: Option<MacAddr>,
    /// NVRAM region size.
    pub nvram: ByteSize,
    /// Disks in guest order (`blk0`, `blk1`, ...).
    pub disks: Vec<DiskPlan>,
}

/// A failover pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Subnet (node a .10, node b .11).
    pub subnet: Subnet,
    /// Shared region size.
    pub region_size: ByteSize,
    /// `pair.timeout_ms`.
    pub timeout_ms: u64,
    /// Fence agent patience.
    pub fence_timeout_ms: u64,
    /// `pair.giveback`.
    pub giveback: Giveback,
    /// The region header's pair id (generated at build time when the file has none).
    pub id: Option<u64>,
    /// Each node's own disks (index: [`Node::index`]); the same count on both.
    pub disks: [Vec<DiskPlan>; 2],
}

/// One data disk to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// Export (and label) name.
    pub name: String,
    /// Size in bytes.
    pub size: ByteSize,
    /// Image format.
    pub format: DiskFormat,
    /// Served read-only (and attached read-only).
    pub read_only: bool,
    /// Label UUID.
    pub uuid: Option<[u8; 16]>,
    /// Client networks served (open: every client).
    pub allow: AllowList,
}

impl DiskPlan {
    /// The file name, relative to its node's directory: `diskK.raw` or `diskK.qcow2`.
    pub fn file_name(&self, k: usize) -> String {
        match self.format {
            DiskFormat::Raw => format!("disk{k}.raw"),
            DiskFormat::Qcow2 => format!("disk{k}.qcow2"),
        }
    }
}

/// Everything wrong with a description, one `key: problem` line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (for the message), when known.
    pub file: Option<String>,
    /// The problems.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "bad appliance config {file}:")?,
            None => write!(f, "bad appliance config:")?,
        }
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Read and check the description at `path`.
pub fn load(path: &Path) -> Result<Appliance, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(file.clone()),
        problems: vec![format!("cannot read it: {e}")],
    })?;
    let mut app = parse(&text).map_err(|mut e| {
        e.file = Some(file.clone());
        e
    })?;
    if let Some(t) = &mut app.tls
        && Path::new(&t.dir).is_relative()
    {
        let base = std::path::absolute(path.parent().unwrap_or(Path::new(""))).unwrap_or_default();
        t.dir = base.join(&t.dir).to_string_lossy().into_owned();
    }
    Ok(app)
}

/// Parse and check a description.
pub fn parse(text: &str) -> Result<Appliance, ConfigError> {
    let raw: ConfigFile = toml::from_str(text).map_err(|e| ConfigError {
        file: None,
        problems: vec![toml_problem(&e)],
    })?;
    resolve(&raw)
}

/// toml's message: the line, the key under a caret, and what is wrong with it.
fn toml_problem(e: &toml::de::Error) -> String {
    e.to_string().trim_end().replace('\n', "\n    ")
}

/// Collects problems.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, key: &str, value: impl fmt::Display, why: impl fmt::Display) {
        self.0.push(format!("{key} = {value}: {why}"));
    }

    fn key(&mut self, key: &str, why: impl fmt::Display) {
        self.0.push(format!("{key}: {why}"));
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// Check `raw` and fill in the defaults.
pub fn resolve(raw: &ConfigFile) -> Result<Appliance, ConfigError> {
    let mut p = Problems::default();

    check_name(&mut p, &raw.name);
    let memory = resolve_memory(&mut p, raw.memory.as_deref());
    let vcpus = raw.vcpus.unwrap_or(1);
    if !(1..=255).contains(&vcpus) {
        p.add("vcpus", vcpus, "1 to 255");
    }
    check_guest_words(&mut p, raw);
    let install_dir = resolve_install_dir(&mut p, raw);
    check_cmdline(&mut p, &raw.cmdline);
    let net = raw.network.clone().unwrap_or_default();
    let bridge = resolve_bridge(&mut p, &net);

    let tls = raw.tls.as_ref().map(|t| resolve_tls(&mut p, t));
    let kind = match &raw.pair {
        None => Kind::Single(resolve_single(&mut p, raw, &net)),
        Some(pair) => Kind::Pair(resolve_pair(&mut p, raw, &net, pair)),
    };
    if !p.0.is_empty() {
        return Err(ConfigError {
            file: None,
            problems: p.0,
        });
    }
    Ok(Appliance {
        name: raw.name.clone(),
        memory,
        vcpus,
        install_dir,
        bridge,
        durability: raw.durability.clone(),
        log: raw.log.clone(),
        management: net.management.unwrap_or(true),
        cmdline: raw.cmdline.clone(),
        tls,
        kind,
    })
}

/// `memory`: 16M to 64G in whole MiB, [`DEFAULT_MEMORY`] when absent (or wrong).
fn resolve_memory(p: &mut Problems, memory: Option<&str>) -> ByteSize {
    let Some(s) = memory else {
        return DEFAULT_MEMORY;
    };
    match s.parse::<ByteSize>() {
        Ok(m) if m.bytes() < (16 << 20) || m.bytes() > (64 << 30) => {
            p.add("memory", quoted(s), "guest RAM is 16M to 64G");
            DEFAULT_MEMORY
        }
        Ok(m) if !m.bytes().is_multiple_of(1 << 20) => {
            p.add(
                "memory",
                quoted(s),
                "a whole number of MiB (xl counts in MiB)",
            );
            DEFAULT_MEMORY
        }
        Ok(m) => m,
        Err(e) => {
            p.add("memory", quoted(s), e);
            DEFAULT_MEMORY
        }
    }
}

/// `durability` and `log`: words the guest's command line knows.
fn check_guest_words(p: &mut Problems, raw: &ConfigFile) {
    if let Some(d) = &raw.durability
        && d != "disk"
        && d != "nvlog"
    {
        p.add("durability", quoted(d), "expected \"disk\" or \"nvlog\"");
    }
    if let Some(l) = &raw.log
        && !["error", "warn", "info", "debug", "trace"].contains(&l.as_str())
    {
        p.add(
            "log",
            quoted(l),
            "expected error, warn, info, debug or trace",
        );
    }
}

/// `install_dir`: an absolute path that libvirt and xl take as it is, by default under
/// [`DEFAULT_INSTALL_ROOT`].
fn resolve_install_dir(p: &mut Problems, raw: &ConfigFile) -> String {
    let Some(d) = &raw.install_dir else {
        return format!("{DEFAULT_INSTALL_ROOT}/{}", raw.name);
    };
    if !d.starts_with('/') || d.len() > 1 && d.ends_with('/') {
        p.add(
            "install_dir",
            quoted(d),
            "an absolute directory without a trailing '/' (libvirt and xl need absolute paths)",
        );
    } else if !d
        .chars()
        .all(|c| c.is_ascii_graphic() && !"'\"<>&\\,=".contains(c))
    {
        p.add(
            "install_dir",
            quoted(d),
            "only printable ASCII without quotes, '<', '>', '&', '\\', ',' or '='",
        );
    }
    d.clone()
}

/// `network.bridge`: a Linux interface name, [`DEFAULT_BRIDGE`] when absent.
fn resolve_bridge(p: &mut Problems, net: &NetworkFile) -> String {
    let bridge = net.bridge.clone().unwrap_or_else(|| DEFAULT_BRIDGE.into());
    if bridge.is_empty()
        || bridge.len() > 15
        || !bridge
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        p.add(
            "network.bridge",
            quoted(&bridge),
            "a Linux interface name (1 to 15 of A-Z a-z 0-9 . _ -)",
        );
    }
    bridge
}

fn resolve_tls(p: &mut Problems, t: &TlsFile) -> Tls {
    if t.dir.is_empty() {
        p.add(
            "tls.dir",
            quoted(&t.dir),
            "a credentials directory (ca-cert.pem, server-cert.pem, server-key.pem)",
        );
    }
    let mode = match t.mode.as_deref() {
        None | Some("require") => "require",
        Some("on") => "on",
        Some(m) => {
            p.add(
                "tls.mode",
                quoted(m),
                "require (TLS only) or on (plaintext clients served too)",
            );
            "require"
        }
    };
    Tls {
        dir: t.dir.clone(),
        mode: mode.into(),
        verify_peer: t.verify_peer.unwrap_or(false),
    }
}

fn check_name(p: &mut Problems, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        p.add(
            "name",
            quoted(name),
            "1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit (it names the \
             libvirt domain and the Xen guest)",
        );
    }
}

/// Guest keys the description sets itself: extra words must not set them again.
const OWN_KEYS: &[&str] = &[
    "ip",
    "gw",
    "durability",
    "log",
    "export",
    "mgmt.port",
    "nbd.port",
    "nbd.tls",
    "nbd.tls_verify_peer",
    "pair",
    "exit",
    "bench",
];

fn check_cmdline(p: &mut Problems, words: &[String]) {
    for (i, w) in words.iter().enumerate() {
        let key = format!("cmdline[{i}]");
        let Some((k, v)) = w.split_once('=') else {
            p.add(&key, quoted(w), "a guest word is KEY=VALUE");
            continue;
        };
        if k.is_empty()
            || v.is_empty()
            || !w
                .chars()
                .all(|c| c.is_ascii_graphic() && !"'\"\\<>&`$".contains(c))
        {
            p.add(
                &key,
                quoted(w),
                "KEY=VALUE in printable ASCII, without spaces, quotes, '\\', '<', '>', '&', '`' or '$'",
            );
            continue;
        }
        if k == "mgmt.key" {
            // Not echoed: it may be a real key.
            p.add(
                &key,
                "\"mgmt.key=<not shown>\"",
                "a key here would be in guest.cmdline, domain.xml and xl.cfg for anyone to read; \
                 `[network] management = true` gives each guest its own key file (mgmt.key, 0600)",
            );
            continue;
        }
        if OWN_KEYS
            .iter()
            .any(|o| k == *o || k.starts_with(&format!("{o}.")))
        {
            p.add(
                &key,
                quoted(w),
                format!(
                    "'{k}' is set by the appliance description itself (use its own keys: \
                     network, durability, log, disk, pair)"
                ),
            );
        }
    }
}

/// `A.B.C.D/N` with a usable host address.
pub fn parse_ip_prefix(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, n) = s
        .split_once('/')
        .ok_or("expected A.B.C.D/N, e.g. 192.168.10.20/24")?;
    let addr: Ipv4Addr = a.parse().map_err(|_| "not an IPv4 address".to_string())?;
    let prefix: u8 = n
        .parse()
        .ok()
        .filter(|n| (1..=30).contains(n))
        .ok_or("the prefix length must be 1 to 30")?;
    let mask = u32::MAX << (32 - prefix);
    let host = u32::from(addr) & !mask;
    if host == 0 || host == !mask {
        return Err("that is the network's own or broadcast address, not a host's".into());
    }
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        return Err("not a unicast host address".into());
    }
    Ok((addr, prefix))
}

fn resolve_single(p: &mut Problems, raw: &ConfigFile, net: &NetworkFile) -> Single {
    let ip_text = net.ip.clone().unwrap_or_else(|| DEFAULT_IP.to_string());
    let ip = match parse_ip_prefix(&ip_text) {
        Ok(ip) => ip,
        Err(why) => {
            p.add("network.ip", quoted(&ip_text), why);
            (Ipv4Addr::new(10, 0, 2, 15), 24)
        }
    };
    let gateway = resolve_gateway(p, net, ip);
    let mac = net.mac.as_ref().and_then(|m| match m.parse::<MacAddr>() {
        Ok(mac) if mac.0[0] & 1 != 0 => {
            p.add(
                "network.mac",
                quoted(m),
                "a multicast address (first byte odd)",
            );
            None
        }
        Ok(mac) => Some(mac),
        Err(e) => {
            p.add("network.mac", quoted(m), e);
            None
        }
    });
    let nvram = match &raw.nvram {
        None => DEFAULT_NVRAM,
        Some(n) => match n.size.parse::<ByteSize>() {
            Ok(s) => match SharedRegion::check_size(s) {
                Ok(()) => s,
                Err(why) => {
                    p.add("nvram.size", quoted(&n.size), why);
                    DEFAULT_NVRAM
                }
            },
            Err(e) => {
                p.add("nvram.size", quoted(&n.size), e);
                DEFAULT_NVRAM
            }
        },
    };
    Single {
        ip,
        gateway,
        mac,
        nvram,
        disks: resolve_single_disks(p, raw),
    }
}

/// `network.gateway` on the network of `ip`. Default route: QEMU user networking's when the
/// address is its default, else none.
fn resolve_gateway(p: &mut Problems, net: &NetworkFile, ip: (Ipv4Addr, u8)) -> Option<Ipv4Addr> {
    let gw_text = net.gateway.clone().unwrap_or_else(|| {
        if net.ip.is_none() {
            "10.0.2.2".into()
        } else {
            "none".into()
        }
    });
    if gw_text == "none" {
        return None;
    }
    match gw_text.parse::<Ipv4Addr>() {
        Ok(g) => {
            let mask = u32::MAX << (32 - ip.1);
            if u32::from(g) & mask != u32::from(ip.0) & mask {
                p.add(
                    "network.gateway",
                    quoted(&gw_text),
                    format!("not on the appliance's network {}/{}", ip.0, ip.1),
                );
            } else if g == ip.0 {
                p.add(
                    "network.gateway",
                    quoted(&gw_text),
                    "that is the appliance's own address",
                );
            }
            Some(g)
        }
        Err(_) => {
            p.add(
                "network.gateway",
                quoted(&gw_text),
                "expected A.B.C.D or \"none\"",
            );
            None
        }
    }
}

/// A single appliance's `[[disk]]`s: 1 to [`MAX_EXPORTS`], distinct export names, the first
/// writable.
fn resolve_single_disks(p: &mut Problems, raw: &ConfigFile) -> Vec<DiskPlan> {
    if raw.disk.is_empty() {
        p.key(
            "disk",
            "no [[disk]]: an appliance serves at least one data disk",
        );
    }
    if raw.disk.len() > MAX_EXPORTS {
        p.key(
            "disk",
            format!(
                "{} disks; the guest serves at most {MAX_EXPORTS}",
                raw.disk.len()
            ),
        );
    }
    let mut disks = Vec::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, d) in raw.disk.iter().enumerate() {
        let key = format!("disk[{i}]");
        let name = d.name.clone().unwrap_or_else(|| format!("blk{i}"));
        if let Err(why) = check_export_name(&name) {
            p.add(&format!("{key}.name"), quoted(&name), why);
        } else if let Some(first) = names.get(&name) {
            p.add(
                &format!("{key}.name"),
                quoted(&name),
                format!("export name clash: disk[{first}] is exported under that name too"),
            );
        } else {
            names.insert(name.clone(), i);
        }
        disks.push(resolve_disk(p, &key, d, name, true));
    }
    if let Some(d) = disks.first()
        && d.read_only
    {
        p.add(
            "disk[0].read_only",
            "true",
            "the first disk holds the guest's configuration checkpoint and must be writable",
        );
    }
    disks
}

fn check_export_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_EXPORT_NAME {
        return Err(format!(
            "an export name is 1 to {MAX_EXPORT_NAME} characters"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_graphic() && !":'\"\\<>&`$=,".contains(c))
    {
        return Err(
            "an export name is printable ASCII without spaces, ':', '=', ',', quotes, '\\', \
             '<', '>', '&', '`' or '$'"
                .into(),
        );
    }
    Ok(())
}

/// One disk; `single` allows names, read-only and qcow2 (a pair's disks are raw: both nodes'
/// QEMUs open them, and only a raw image has no metadata a second opener could hold stale).
fn resolve_disk(p: &mut Problems, key: &str, d: &DiskFile, name: String, single: bool) -> DiskPlan {
    let size = match d.size.parse::<ByteSize>() {
        Ok(s) if s.bytes() <= RESERVED => {
            p.add(
                &format!("{key}.size"),
                quoted(&d.size),
                format!(
                    "disk too small: the first {} of every disk is the Tandem label area, so a \
                     disk needs more than that (at least 2M)",
                    ByteSize(RESERVED)
                ),
            );
            s
        }
        Ok(s) if !s.bytes().is_multiple_of(512) => {
            p.add(
                &format!("{key}.size"),
                quoted(&d.size),
                "a multiple of 512 bytes (the disk's sector)",
            );
            s
        }
        Ok(s) if s.bytes() > (1 << 50) => {
            p.add(&format!("{key}.size"), quoted(&d.size), "larger than 1P");
            s
        }
        Ok(s) => s,
        Err(e) => {
            p.add(&format!("{key}.size"), quoted(&d.size), e);
            ByteSize(0)
        }
    };
    let format = match d.format.as_deref() {
        None | Some("raw") => DiskFormat::Raw,
        Some("qcow2") if single => DiskFormat::Qcow2,
        Some("qcow2") => {
            p.add(
                &format!("{key}.format"),
                "\"qcow2\"",
                "a pair's disks are raw: both nodes' QEMUs open them, and a second opener \
                 would hold qcow2 metadata stale",
            );
            DiskFormat::Raw
        }
        Some(other) => {
            p.add(
                &format!("{key}.format"),
                quoted(other),
                "expected \"raw\" or \"qcow2\"",
            );
            DiskFormat::Raw
        }
    };
    if !single {
        if let Some(n) = &d.name {
            p.add(
                &format!("{key}.name"),
                quoted(n),
                "a pair's disks are exported as blk0, blk1, ... (a survivor serves its peer's \
                 disks under those names after a takeover)",
            );
        }
        if d.read_only == Some(true) {
            p.add(
                &format!("{key}.read_only"),
                "true",
                "a pair's disks are writable (the survivor replays its peer's log to them)",
            );
        }
    }
    let uuid = d.uuid.as_ref().and_then(|u| match parse_uuid(u) {
        Ok(u) => Some(u),
        Err(why) => {
            p.add(&format!("{key}.uuid"), quoted(u), why);
            None
        }
    });
    let allow = resolve_allow(p, key, d.allow.as_deref().unwrap_or_default());
    DiskPlan {
        name,
        size,
        format,
        read_only: d.read_only.unwrap_or(false),
        uuid,
        allow,
    }
}

/// A disk's `allow` list: each entry an IPv4 network, at most [`MAX_ALLOW`]. (A pair's
/// survivor serves its peer's disks with the peer's lists: `pair.peer_export=`.)
fn resolve_allow(p: &mut Problems, key: &str, allow: &[String]) -> AllowList {
    if allow.len() > MAX_ALLOW {
        p.key(
            &format!("{key}.allow"),
            format!(
                "{} networks; the guest takes at most {MAX_ALLOW} per export",
                allow.len()
            ),
        );
        return AllowList::OPEN;
    }
    let mut nets = Vec::new();
    for (j, a) in allow.iter().enumerate() {
        match Ipv4Net::parse(a) {
            Ok(n) => nets.push(n),
            Err(e) => p.add(&format!("{key}.allow[{j}]"), quoted(a), e),
        }
    }
    AllowList::from_nets(&nets).unwrap_or(AllowList::OPEN)
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex, either case).
pub fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let bad = || "expected a UUID like 8c1f0a52-3d4e-4f60-9a7b-0123456789ab".to_string();
    let groups: Vec<&str> = s.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return Err(bad());
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    if out == [0; 16] {
        return Err("the nil UUID names no disk".into());
    }
    Ok(out)
}

fn resolve_pair(p: &mut Problems, raw: &ConfigFile, net: &NetworkFile, pair: &PairFile) -> Pair {
    reject_single_keys(p, raw, net);
    let subnet_text = pair
        .subnet
        .clone()
        .unwrap_or_else(|| Subnet::DEFAULT.to_string());
    let subnet = subnet_text.parse::<Subnet>().unwrap_or_else(|why| {
        p.add("pair.subnet", quoted(&subnet_text), why);
        Subnet::DEFAULT
    });
    let region_text = pair.region_size.clone().unwrap_or_else(|| "64M".into());
    let region_size = match region_text.parse::<ByteSize>() {
        Ok(s) => {
            if let Err(why) = check_region_size(s) {
                p.add("pair.region_size", quoted(&region_text), why);
            }
            s
        }
        Err(e) => {
            p.add("pair.region_size", quoted(&region_text), e);
            ByteSize::mib(64)
        }
    };
    let timeout_ms = pair.timeout_ms.unwrap_or(1000);
    if !(50..=600_000).contains(&timeout_ms) {
        p.add(
            "pair.timeout_ms",
            timeout_ms,
            "the guest takes 50 to 600000",
        );
    }
    let fence_timeout_ms = pair.fence_timeout_ms.unwrap_or(1500);
    if fence_timeout_ms == 0 {
        p.add("pair.fence_timeout_ms", 0, "must be above 0");
    }
    let giveback = match pair.giveback.as_deref() {
        None | Some("auto") => Giveback::Auto,
        Some("manual") => Giveback::Manual,
        Some(other) => {
            p.add(
                "pair.giveback",
                quoted(other),
                "expected \"auto\" or \"manual\"",
            );
            Giveback::Auto
        }
    };
    let id = pair
        .id
        .as_ref()
        .and_then(|t| match u64::from_str_radix(t, 16) {
            Ok(v) if t.len() == 16 && v != 0 => Some(v),
            _ => {
                p.add("pair.id", quoted(t), "16 hex digits, not all zero");
                None
            }
        });
    Pair {
        subnet,
        region_size,
        timeout_ms,
        fence_timeout_ms,
        giveback,
        id,
        disks: resolve_pair_disks(p, pair),
    }
}

/// The keys of a single appliance that a pair sets otherwise.
fn reject_single_keys(p: &mut Problems, raw: &ConfigFile, net: &NetworkFile) {
    for (key, set) in [
        ("network.ip", net.ip.is_some()),
        ("network.gateway", net.gateway.is_some()),
        ("network.mac", net.mac.is_some()),
    ] {
        if set {
            p.key(
                key,
                "a pair's addresses come from pair.subnet (node a .10, node b .11, no \
                 gateway) and its MACs are fixed, as `tandem pair up` runs it",
            );
        }
    }
    if raw.nvram.is_some() {
        p.key(
            "nvram",
            "a pair's NVRAM is its shared region: set pair.region_size",
        );
    }
    if !raw.disk.is_empty() {
        p.key(
            "disk",
            "in a pair, disks belong to a node: [[pair.a.disk]] and [[pair.b.disk]]",
        );
    }
}

/// Each node's `[[pair.N.disk]]`s: both nodes present, 1 to [`MAX_DISKS`] each, as many on
/// one as on the other.
fn resolve_pair_disks(p: &mut Problems, pair: &PairFile) -> [Vec<DiskPlan>; 2] {
    let mut disks: [Vec<DiskPlan>; 2] = [Vec::new(), Vec::new()];
    for n in Node::ALL {
        let node = match n {
            Node::A => &pair.a,
            Node::B => &pair.b,
        };
        let Some(node) = node else {
            p.key(
                &format!("pair.{n}"),
                format!(
                    "missing: a pair needs both nodes, and node {} has no peer without it \
                     (add [pair.{n}] with its [[pair.{n}.disk]])",
                    n.peer()
                ),
            );
            continue;
        };
        if node.disk.is_empty() || node.disk.len() > usize::from(MAX_DISKS) {
            p.key(
                &format!("pair.{n}.disk"),
                format!(
                    "{} disks; a node has 1 to {MAX_DISKS} ([[pair.{n}.disk]])",
                    node.disk.len()
                ),
            );
        }
        for (k, d) in node.disk.iter().enumerate() {
            let key = format!("pair.{n}.disk[{k}]");
            let plan = resolve_disk(p, &key, d, format!("blk{k}"), false);
            disks[n.index()].push(plan);
        }
    }
    if pair.a.is_some() && pair.b.is_some() && disks[0].len() != disks[1].len() {
        p.key(
            "pair.b.disk",
            format!(
                "node b has {} disks and node a {}: both nodes of a pair have the same number \
                 (the guest's pair.disks)",
                disks[1].len(),
                disks[0].len()
            ),
        );
    }
    disks
}

/// A size as this file spells it: a unit when exact, else bytes with `B`.
pub fn size_text(s: ByteSize) -> String {
    let t = s.to_string();
    if t.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{t}B")
    } else {
        t
    }
}

fn disk_file(d: &DiskPlan, single: bool) -> DiskFile {
    DiskFile {
        name: single.then(|| d.name.clone()),
        size: size_text(d.size),
        format: Some(d.format.driver().to_string()),
        read_only: single.then_some(d.read_only),
        uuid: d.uuid.map(|u| Uuid(u).to_string()),
        allow: (!d.allow.is_open()).then(|| d.allow.nets().iter().map(|n| n.to_string()).collect()),
    }
}

impl Appliance {
    /// The appliance as a description with every default spelt out (what
    /// `config.resolved.toml` holds); [`resolve`] of it gives `self` back.
    pub fn to_file(&self) -> ConfigFile {
        let mut f = ConfigFile {
            name: self.name.clone(),
            memory: Some(size_text(self.memory)),
            vcpus: Some(self.vcpus),
            durability: self.durability.clone(),
            log: self.log.clone(),
            install_dir: Some(self.install_dir.clone()),
            cmdline: self.cmdline.clone(),
            ..ConfigFile::default()
        };
        let mut net = NetworkFile {
            bridge: Some(self.bridge.clone()),
            management: Some(self.management),
            ..NetworkFile::default()
        };
        match &self.kind {
            Kind::Single(s) => {
                net.ip = Some(format!("{}/{}", s.ip.0, s.ip.1));
                net.gateway = Some(s.gateway.map_or("none".into(), |g| g.to_string()));
                net.mac = s.mac.map(|m| m.to_string());
                f.nvram = Some(NvramFile {
                    size: size_text(s.nvram),
                });
                f.disk = s.disks.iter().map(|d| disk_file(d, true)).collect();
            }
            Kind::Pair(pr) => {
                let node = |n: Node| PairNodeFile {
                    disk: pr.disks[n.index()]
                        .iter()
                        .map(|d| disk_file(d, false))
                        .collect(),
                };
                f.pair = Some(PairFile {
                    subnet: Some(pr.subnet.to_string()),
                    region_size: Some(size_text(pr.region_size)),
                    timeout_ms: Some(pr.timeout_ms),
                    fence_timeout_ms: Some(pr.fence_timeout_ms),
                    giveback: Some(pr.giveback.name().to_string()),
                    id: pr.id.map(|id| format!("{id:016x}")),
                    a: Some(node(Node::A)),
                    b: Some(node(Node::B)),
                });
            }
        }
        f.network = Some(net);
        f.tls = self.tls.as_ref().map(|t| TlsFile {
            dir: t.dir.clone(),
            mode: Some(t.mode.clone()),
            verify_peer: Some(t.verify_peer),
        });
        f
    }

    /// `config.resolved.toml`'s text.
    pub fn to_toml(&self) -> Result<String, String> {
        let body = toml::to_string(&self.to_file()).map_err(|e| e.to_string())?;
        Ok(format!(
            "# The resolved description of appliance {:?}: every default spelt out and every disk\n\
             # UUID filled in. `tandem image build --config config.resolved.toml --out DIR2` rebuilds\n\
             # it byte for byte, disks included.\n\n{body}",
            self.name
        ))
    }

    /// The disks whose UUID is still to be generated, as mutable references.
    pub fn disks_mut(&mut self) -> Vec<&mut DiskPlan> {
        match &mut self.kind {
            Kind::Single(s) => s.disks.iter_mut().collect(),
            Kind::Pair(p) => p.disks.iter_mut().flatten().collect(),
        }
    }

    /// Guest words every node gets after its network/export/pair words: durability, log,
    /// the management channel, then the extra words. With `management`, the channel listens
    /// on the guest's one NIC (`mgmt.on_data=on`); its key is not a word here but the
    /// guest's key file, its boot module ([`crate::mgmt`]). Without, the port is off.
    pub fn common_words(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(d) = &self.durability {
            w.push(word(key::DURABILITY, d));
        }
        if let Some(l) = &self.log {
            w.push(word(key::LOG, l));
        }
        w.push(if self.management {
            word(key::MGMT_ON_DATA, "on")
        } else {
            word(key::MGMT_PORT, 0)
        });
        if let Some(t) = &self.tls {
            w.push(word(key::NBD_TLS, &t.mode));
            if t.verify_peer {
                w.push(word(key::NBD_TLS_VERIFY_PEER, "on"));
            }
        }
        w.extend(self.cmdline.iter().cloned());
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "name = \"t\"\n[[disk]]\nsize = \"16M\"\n";

    fn problems(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_defaults() {
        let a = parse(MIN).unwrap();
        assert_eq!(a.memory, DEFAULT_MEMORY);
        assert_eq!(a.install_dir, "/var/lib/tandem/t");
        let Kind::Single(s) = &a.kind else { panic!() };
        assert_eq!(s.ip, (Ipv4Addr::new(10, 0, 2, 15), 24));
        assert_eq!(s.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(s.disks[0].name, "blk0");
        assert_eq!(s.disks[0].format, DiskFormat::Raw);
        assert_eq!(s.nvram, DEFAULT_NVRAM);
    }

    #[test]
    fn resolved_round_trips() {
        let text = "name = \"t\"\nmemory = \"128M\"\ndurability = \"nvlog\"\n\
                    cmdline = [\"watchdog_ms=0\"]\n[network]\nip = \"192.168.9.20/24\"\n\
                    gateway = \"192.168.9.1\"\nmac = \"52:54:00:00:00:01\"\nmanagement = false\n\
                    [[disk]]\nname = \"data\"\nsize = \"1536K\"\n\
                    uuid = \"8c1f0a52-3d4e-4f60-9a7b-0123456789ab\"\n\
                    [[disk]]\nname = \"odd\"\nsize = \"2097664B\"\nformat = \"qcow2\"\nread_only = true\n";
        let a = parse(text).unwrap();
        let again = parse(&a.to_toml().unwrap()).unwrap();
        assert_eq!(again, a);
        assert_eq!(
            a.common_words(),
            ["durability=nvlog", "mgmt.port=0", "watchdog_ms=0"]
        );
        let pair = parse(
            "name = \"p\"\n[pair]\n[[pair.a.disk]]\nsize = \"8M\"\n[[pair.b.disk]]\nsize = \"8M\"\n",
        )
        .unwrap();
        assert_eq!(parse(&pair.to_toml().unwrap()).unwrap(), pair);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let e = problems("name = \"t\"\nsise = 1\n[[disk]]\nsize = \"16M\"\n");
        assert!(e.contains("unknown field `sise`"), "{e}");
        let e = problems("name = \"t\"\n[[disk]]\nsize = \"1M\"\n");
        assert!(
            e.contains("disk[0].size") && e.contains("label area"),
            "{e}"
        );
        let e = problems(
            "name = \"t\"\n[[disk]]\nname = \"d\"\nsize = \"8M\"\n[[disk]]\nname = \"d\"\nsize = \"8M\"\n",
        );
        assert!(e.contains("disk[1].name") && e.contains("clash"), "{e}");
        let e = problems("name = \"t\"\n[pair]\n[[pair.a.disk]]\nsize = \"8M\"\n");
        assert!(e.contains("pair.b: missing") && e.contains("peer"), "{e}");
        let e =
            problems("name = \"t\"\n[network]\nip = \"10.0.2.300/24\"\n[[disk]]\nsize = \"8M\"\n");
        assert!(e.contains("network.ip"), "{e}");
        let e = problems("name = \"t\"\nmemory = \"lots\"\n[[disk]]\nsize = \"8X\"\n");
        assert!(
            e.contains("memory = \"lots\"") && e.contains("disk[0].size = \"8X\""),
            "{e}"
        );
        let e = problems(
            "name = \"t\"\ncmdline = [\"ip=1.2.3.4/24\", \"x\"]\n[[disk]]\nsize = \"8M\"\n",
        );
        assert!(e.contains("cmdline[0]") && e.contains("cmdline[1]"), "{e}");
        let e = problems("name = \"t\"\n[nvram]\nsize = \"48M\"\n[[disk]]\nsize = \"8M\"\n");
        assert!(
            e.contains("nvram.size") && e.contains("power of two"),
            "{e}"
        );
        let e = problems("name = \"t\"\n[[disk]]\nsize = \"8M\"\nuuid = \"nope\"\n");
        assert!(e.contains("disk[0].uuid"), "{e}");
        let e = problems(
            "name = \"t\"\n[pair]\n[[pair.a.disk]]\nsize = \"8M\"\nformat = \"qcow2\"\n[[pair.b.disk]]\nsize = \"8M\"\n[[pair.b.disk]]\nsize = \"8M\"\n",
        );
        assert!(
            e.contains("pair.a.disk[0].format") && e.contains("pair.b.disk"),
            "{e}"
        );
        let e = problems("name = \"bad name\"\n[[disk]]\nsize = \"8M\"\n");
        assert!(e.contains("name = \"bad name\""), "{e}");
        let e = problems("name = \"t\"\n");
        assert!(e.contains("disk: no [[disk]]"), "{e}");
        // A key among the extra words: refused, and not echoed.
        let key = "5a".repeat(32);
        let e = problems(&format!(
            "name = \"t\"\ncmdline = [\"mgmt.key={key}\"]\n[[disk]]\nsize = \"8M\"\n"
        ));
        assert!(
            e.contains("cmdline[0]") && e.contains("key file") && !e.contains(&key),
            "{e}"
        );
    }

    #[test]
    fn management_words() {
        let on = parse("name = \"t\"\n[[disk]]\nsize = \"8M\"\n").unwrap();
        assert!(on.management);
        assert_eq!(on.common_words(), ["mgmt.on_data=on"]);
        let off = parse("name = \"t\"\n[network]\nmanagement = false\n[[disk]]\nsize = \"8M\"\n")
            .unwrap();
        assert_eq!(off.common_words(), ["mgmt.port=0"]);
    }

    #[test]
    fn allow_lists() {
        let a = parse(
            "name = \"t\"\n[[disk]]\nsize = \"8M\"\n[[disk]]\nname = \"lan\"\nsize = \"8M\"\n\
             allow = [\"10.0.2.0/24\", \"192.168.1.5\"]\n[[disk]]\nsize = \"8M\"\nallow = []\n",
        )
        .unwrap();
        let Kind::Single(s) = &a.kind else { panic!() };
        assert!(s.disks[0].allow.is_open() && s.disks[2].allow.is_open());
        assert_eq!(s.disks[1].allow.to_string(), "10.0.2.0/24+192.168.1.5/32");
        assert_eq!(parse(&a.to_toml().unwrap()).unwrap(), a);
        let e = problems(
            "name = \"t\"\n[[disk]]\nsize = \"8M\"\nallow = [\"10.0.0.0/8\", \"10.0.0.1/8\", \"x\"]\n",
        );
        assert!(
            e.contains("disk[0].allow[1] = \"10.0.0.1/8\"") && e.contains("bits set"),
            "{e}"
        );
        assert!(e.contains("disk[0].allow[2] = \"x\""), "{e}");
        assert!(!e.contains("allow[0]"), "{e}");
        let nine: Vec<String> = (1..=9).map(|i| format!("\"{i}.0.0.0/8\"")).collect();
        let e = problems(&format!(
            "name = \"t\"\n[[disk]]\nsize = \"8M\"\nallow = [{}]\n",
            nine.join(", ")
        ));
        assert!(e.contains("disk[0].allow: 9 networks"), "{e}");
        // A pair's disks take lists too (its survivor serves them with the peer's lists).
        let e = problems(
            "name = \"p\"\n[pair]\n[[pair.a.disk]]\nsize = \"8M\"\nallow = [\"10.0.0.0/33\"]\n\
             [[pair.b.disk]]\nsize = \"8M\"\n",
        );
        assert!(e.contains("pair.a.disk[0].allow[0]"), "{e}");
    }

    #[test]
    fn uuids_parse() {
        let u = parse_uuid("8C1F0A52-3d4e-4f60-9a7b-0123456789ab").unwrap();
        assert_eq!(Uuid(u).to_string(), "8c1f0a52-3d4e-4f60-9a7b-0123456789ab");
        assert!(parse_uuid("00000000-0000-0000-0000-000000000000").is_err());
        assert!(parse_uuid("8c1f0a523d4e4f609a7b0123456789ab").is_err());
        assert!(parse_uuid("8c1f0a52-3d4e-4f60-9a7b-0123456789ag").is_err());
    }
}
