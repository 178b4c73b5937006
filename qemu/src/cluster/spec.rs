//! The cluster description (`cluster.toml`) and its checked form, [`Cluster`].
//!
//! As with `appliance.toml`, serde reads the file with `deny_unknown_fields` everywhere, so a
//! misspelt key is an error naming it; values are then checked here and every problem is
//! reported together as `key = value: why`, keys spelt as in the file (`host[1].fence.ip`,
//! `guest[0].home`). Names end up in XML ids, libvirt domain names, corosync node names and
//! `/dev/shm` file names, so they are held to a small safe alphabet.
//!
//! Each guest is a standalone appliance ([`crate::appliance::config`]): the cluster file
//! points at its description or at the directory `tandem image build` made from it, and
//! overrides only what the cluster decides: its address, its bridge (the hosts'), and a MAC
//! that is the same on both hosts (so that clients' ARP caches stay right across a failover).
//!
//! Exactly two hosts: corosync's `two_node` quorum and the NVLOG mirror (one sender, one
//! receiver per guest) are defined for a pair of hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::appliance::config::{self, Appliance, ConfigFile, Kind, NetworkFile};
use crate::appliance::RESOLVED;
use crate::builder::MacAddr;
use crate::size::ByteSize;

/// Most guests of one cluster (fence priorities are powers of two below 2^16).
pub const MAX_GUESTS: usize = 16;
/// The mirror's first port (guest k listens on `port + k`).
pub const DEFAULT_MIRROR_PORT: u16 = 7790;
/// Where the mirror key is installed on each host.
pub const DEFAULT_MIRROR_KEY: &str = "/etc/tandem/mirror.key";
/// Where the domain XMLs are installed on each host (VirtualDomain's `config`).
pub const DEFAULT_DOMAIN_DIR: &str = "/etc/tandem/libvirt";
/// corosync's key file on each host.
pub const DEFAULT_AUTHKEY: &str = "/etc/corosync/authkey";
/// corosync's log file on each host.
pub const DEFAULT_COROSYNC_LOG: &str = "/var/log/corosync/corosync.log";
/// The fence agent when `[fence]` names none.
pub const DEFAULT_FENCE_AGENT: &str = "fence_ipmilan";
/// corosync's token timeout (ms).
pub const DEFAULT_TOKEN_MS: u32 = 3000;
/// A guest's preference for its home host.
pub const DEFAULT_HOME_SCORE: u32 = 100;
/// Resource stickiness: above the home preference, so a returned host pulls nothing back.
pub const DEFAULT_STICKINESS: u32 = 1000;
/// `priority-fencing-delay` (s).
pub const DEFAULT_PRIORITY_FENCING_DELAY_S: u32 = 15;
/// The async mode's default bound on the mirror's lag.
pub const DEFAULT_MAX_LAG: ByteSize = ByteSize::mib(4);
/// The fence parameters that would put a secret into the CIB.
pub const SECRET_FENCE_PARAMS: &[&str] = &["password", "passwd", "secret", "key"];

// ---------------------------------------------------------------------------------------
// The file, as serde reads it.

/// `cluster.toml` as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// corosync's `cluster_name`.
    pub name: String,
    /// The two hosts.
    #[serde(default)]
    pub host: Vec<HostFile>,
    /// The guests.
    #[serde(default)]
    pub guest: Vec<GuestFile>,
    /// The NVLOG mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorFile>,
    /// Fencing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<FenceFile>,
    /// corosync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corosync: Option<CorosyncFile>,
    /// Pacemaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacemaker: Option<PacemakerFile>,
}

/// `[[host]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    /// Node name: what `uname -n` says on that host.
    pub name: String,
    /// Its address on the interconnect (corosync's ring0, the mirror's links).
    pub interconnect: String,
    /// The bridge the guests' NICs join (the client network).
    pub bridge: String,
    /// Its fence device's parameters (`pcmk_host_list` is added).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fence: BTreeMap<String, String>,
}

/// `[[guest]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestFile {
    /// Guest name: libvirt domain, resource ids, `/dev/shm/tandem-nvlog-NAME`.
    pub name: String,
    /// The host it runs on when both are up.
    pub home: String,
    /// Its appliance description (relative to this file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appliance: Option<String>,
    /// Or the directory `tandem image build` made (relative to this file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Its client address `A.B.C.D/N` (the guest owns it; no IPaddr2).
    pub ip: String,
    /// Its default route (`A.B.C.D` or `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// `[mirror]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorFile {
    /// First port; guest k listens on `port + k` on each host's interconnect address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// When the mirror is lost: `stop` (acknowledge nothing) or `degraded` (write through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `sync` (acknowledge once mirrored) or `async` (bounded lag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Async: most bytes of log the mirror may be behind (`4M`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<String>,
    /// Where the key is installed on each host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// `[fence]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceFile {
    /// The stonith agent (`fence_ipmilan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Parameters both hosts' devices get (each host's own `fence` table wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// `priority-fencing-delay` in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_delay_s: Option<u32>,
}

/// `[corosync]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorosyncFile {
    /// `totem.token` (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ms: Option<u32>,
    /// Where `authkey` is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<String>,
    /// `logging.logfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logfile: Option<String>,
}

/// `[pacemaker]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacemakerFile {
    /// Where the domain XMLs are installed on each host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_dir: Option<String>,
    /// Resource stickiness (above `home_score`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<u32>,
    /// A guest's preference for its home host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_score: Option<u32>,
}

// ---------------------------------------------------------------------------------------
// The checked form.

/// A checked cluster description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `cluster_name`.
    pub name: String,
    /// The two hosts, in file order (corosync node ids 1 and 2).
    pub hosts: [Host; 2],
    /// The guests, in file order.
    pub guests: Vec<Guest>,
    /// The mirror.
    pub mirror: Mirror,
    /// The fence agent.
    pub fence_agent: String,
    /// `priority-fencing-delay` (s).
    pub priority_delay_s: u32,
    /// `totem.token` (ms).
    pub token_ms: u32,
    /// corosync's key file on the hosts.
    pub authkey: String,
    /// corosync's log file on the hosts.
    pub corosync_log: String,
    /// The domain XMLs' directory on the hosts.
    pub domain_dir: String,
    /// Resource stickiness.
    pub stickiness: u32,
    /// Home preference.
    pub home_score: u32,
}

/// One host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Node name.
    pub name: String,
    /// Interconnect address.
    pub interconnect: IpAddr,
    /// Client bridge.
    pub bridge: String,
    /// Its fence device's parameters, common ones merged in, `pcmk_host_list` not yet.
    pub fence: BTreeMap<String, String>,
}

/// One guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    /// Name.
    pub name: String,
    /// Index of its home host in [`Cluster::hosts`].
    pub home: usize,
    /// Its appliance with the cluster's address, bridge and MAC.
    pub appliance: Appliance,
    /// Its index (mirror port offset, fence priority).
    pub index: usize,
}

/// The mirror's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// First port.
    pub port: u16,
    /// `stop` or `degraded`.
    pub policy: String,
    /// `sync` or `async`.
    pub mode: String,
    /// Async lag bound.
    pub max_lag: ByteSize,
    /// Key file on the hosts.
    pub key_file: String,
}

impl Cluster {
    /// The other host of `h`.
    pub fn peer(h: usize) -> usize {
        1 - h
    }

    /// Guest `g`'s mirror address on host `h`.
    pub fn mirror_addr(&self, g: &Guest, h: usize) -> SocketAddr {
        // Checked in `resolve`: port + index fits.
        SocketAddr::new(
            self.hosts[h].interconnect,
            self.mirror.port + g.index as u16,
        )
    }
}

impl Guest {
    /// Its NVRAM's shared-memory name: `/dev/shm/<this>` on whichever host runs it.
    pub fn shm_name(&self) -> String {
        format!("tandem-nvlog-{}", self.name)
    }

    /// Its NVRAM size.
    pub fn nvram(&self) -> ByteSize {
        match &self.appliance.kind {
            Kind::Single(s) => s.nvram,
            Kind::Pair(p) => p.region_size, // refused in `resolve`
        }
    }
}

/// Everything wrong with a description, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The file, when known.
    pub file: Option<String>,
    /// The problems.
    pub problems: Vec<String>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "bad cluster config {file}:")?,
            None => write!(f, "bad cluster config:")?,
        }
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// Collects problems.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, key: &str, value: impl fmt::Debug, why: impl fmt::Display) {
        self.0.push(format!("{key} = {value:?}: {why}"));
    }

    fn key(&mut self, key: &str, why: impl fmt::Display) {
        self.0.push(format!("{key}: {why}"));
    }
}

/// Read and check the description at `path` (guests' files relative to it).
pub fn load(path: &Path) -> Result<Cluster, SpecError> {
    let file = Some(path.display().to_string());
    let text = std::fs::read_to_string(path).map_err(|e| SpecError {
        file: file.clone(),
        problems: vec![format!("cannot read it: {e}")],
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    parse(&text, base).map_err(|mut e| {
        e.file = file;
        e
    })
}

/// Parse and check a description; guests' files are relative to `base`.
pub fn parse(text: &str, base: &Path) -> Result<Cluster, SpecError> {
    let raw: ClusterFile = toml::from_str(text).map_err(|e| SpecError {
        file: None,
        problems: vec![e.to_string().trim_end().replace('\n', "\n    ")],
    })?;
    resolve(&raw, base)
}

/// Check `raw`, fill in the defaults, and load the guests' appliances (relative to `base`).
pub fn resolve(raw: &ClusterFile, base: &Path) -> Result<Cluster, SpecError> {
    let mut p = Problems::default();
    if !host_name_ok(&raw.name) {
        p.add("name", &raw.name, NAME_RULE);
    }
    let fence = raw.fence.clone().unwrap_or_default();
    let hosts = resolve_hosts(&mut p, &raw.host, &fence);
    let mirror = resolve_mirror(&mut p, raw.mirror.as_ref(), raw.guest.len());
    let fence_agent = fence
        .agent
        .clone()
        .unwrap_or_else(|| DEFAULT_FENCE_AGENT.into());
    if !param_name_ok(&fence_agent) {
        p.add(
            "fence.agent",
            &fence_agent,
            "a fence agent's name (fence_...)",
        );
    }
    let coro = raw.corosync.clone().unwrap_or_default();
    let pcmk = raw.pacemaker.clone().unwrap_or_default();
    let token_ms = coro.token_ms.unwrap_or(DEFAULT_TOKEN_MS);
    if !(1000..=60_000).contains(&token_ms) {
        p.add("corosync.token_ms", token_ms, "1000 to 60000");
    }
    let authkey = host_path(&mut p, "corosync.keyfile", coro.keyfile, DEFAULT_AUTHKEY);
    let corosync_log = host_path(
        &mut p,
        "corosync.logfile",
        coro.logfile,
        DEFAULT_COROSYNC_LOG,
    );
    let domain_dir = host_path(
        &mut p,
        "pacemaker.domain_dir",
        pcmk.domain_dir,
        DEFAULT_DOMAIN_DIR,
    );
    let home_score = pcmk.home_score.unwrap_or(DEFAULT_HOME_SCORE);
    let stickiness = pcmk.stickiness.unwrap_or(DEFAULT_STICKINESS);
    if stickiness <= home_score || stickiness >= 1_000_000 {
        p.key(
            "pacemaker.stickiness",
            format!(
                "{stickiness} must be above pacemaker.home_score ({home_score}) and below \
                 1000000, or a returned host would pull its guests back at once"
            ),
        );
    }
    let guests = match &hosts {
        Some(h) => resolve_guests(&mut p, &raw.name, &raw.guest, h, base),
        None => Vec::new(),
    };
    match hosts {
        Some(hosts) if p.0.is_empty() => Ok(Cluster {
            name: raw.name.clone(),
            hosts,
            guests,
            mirror,
            fence_agent,
            priority_delay_s: fence
                .priority_delay_s
                .unwrap_or(DEFAULT_PRIORITY_FENCING_DELAY_S),
            token_ms,
            authkey,
            corosync_log,
            domain_dir,
            stickiness,
            home_score,
        }),
        _ => Err(SpecError {
            file: None,
            problems: p.0,
        }),
    }
}

const NAME_RULE: &str = "1 to 63 of A-Z a-z 0-9 . -, starting with a letter \
                         (it is a node name, an XML id and part of file names)";
const GUEST_RULE: &str = "1 to 32 of A-Z a-z 0-9 _ -, starting with a letter \
                          (it names the libvirt domain, resource ids and /dev/shm/tandem-nvlog-NAME)";

/// A host (or cluster) name: a hostname that is also an XML NCName.
fn host_name_ok(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
}

/// A guest name: safe in XML ids, libvirt domain names and file names.
fn guest_name_ok(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
}

/// A fence agent or parameter name.
fn param_name_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
}

/// An absolute path on the hosts, safe in XML, a corosync value and a shell word.
fn host_path(p: &mut Problems, key: &str, v: Option<String>, default: &str) -> String {
    let Some(v) = v else {
        return default.into();
    };
    let ok = v.starts_with('/')
        && v.len() > 1
        && !v.ends_with('/')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    if !ok {
        p.add(
            key,
            &v,
            "an absolute path of A-Z a-z 0-9 / . _ - without a trailing '/'",
        );
    }
    v
}

fn resolve_hosts(p: &mut Problems, raw: &[HostFile], fence: &FenceFile) -> Option<[Host; 2]> {
    if raw.len() != 2 {
        p.key(
            "host",
            format!(
                "{} [[host]] entries; exactly two hosts are supported (corosync's two_node \
                 quorum and the NVLOG mirror's one sender and one receiver per guest)",
                raw.len()
            ),
        );
    }
    check_fence_params(p, "fence.params", &fence.params);
    let hosts: Vec<Host> = raw
        .iter()
        .enumerate()
        .map(|(i, h)| resolve_host(p, i, h, fence))
        .collect();
    if let [a, b] = &hosts[..] {
        if a.name == b.name {
            p.add("host[1].name", &b.name, "both hosts have this name");
        }
        if a.interconnect == b.interconnect {
            p.add(
                "host[1].interconnect",
                b.interconnect.to_string(),
                "both hosts have this address",
            );
        }
        if a.bridge != b.bridge {
            p.key(
                "host[1].bridge",
                format!(
                    "{:?} differs from host[0]'s {:?}: a guest's domain XML is one file for \
                     both hosts, so name the client bridge the same on both",
                    b.bridge, a.bridge
                ),
            );
        }
    }
    hosts.try_into().ok()
}

fn resolve_host(p: &mut Problems, i: usize, h: &HostFile, fence: &FenceFile) -> Host {
    if !host_name_ok(&h.name) {
        p.add(&format!("host[{i}].name"), &h.name, NAME_RULE);
    }
    let interconnect = h.interconnect.parse::<IpAddr>().unwrap_or_else(|e| {
        p.add(&format!("host[{i}].interconnect"), &h.interconnect, e);
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    if interconnect.is_unspecified() || interconnect.is_multicast() {
        p.add(
            &format!("host[{i}].interconnect"),
            &h.interconnect,
            "a unicast address of this host",
        );
    }
    let bridge_ok = (1..=15).contains(&h.bridge.len())
        && h.bridge
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !bridge_ok {
        p.add(
            &format!("host[{i}].bridge"),
            &h.bridge,
            "a Linux interface name (1 to 15 of A-Z a-z 0-9 . _ -)",
        );
    }
    check_fence_params(p, &format!("host[{i}].fence"), &h.fence);
    let mut params = fence.params.clone();
    params.extend(h.fence.clone());
    Host {
        name: h.name.clone(),
        interconnect,
        bridge: h.bridge.clone(),
        fence: params,
    }
}

/// Fence parameters: safe names, printable values, no secrets (the CIB is no place for one).
fn check_fence_params(p: &mut Problems, at: &str, params: &BTreeMap<String, String>) {
    for (k, v) in params {
        let key = format!("{at}.{k}");
        if !param_name_ok(k) {
            p.key(&key, "a parameter name of A-Z a-z 0-9 _ -");
        } else if SECRET_FENCE_PARAMS.contains(&k.to_ascii_lowercase().as_str()) {
            p.key(
                &key,
                "a secret would be stored in the CIB and sent to every node; use \
                 password_script (a root-only script on each host that prints it) instead",
            );
        } else if k == "pcmk_host_list" {
            p.key(&key, "set by the generator (the host's own name)");
        }
        if v.chars().any(|c| c.is_control()) {
            p.key(&key, "control characters in the value");
        }
    }
}

fn resolve_mirror(p: &mut Problems, raw: Option<&MirrorFile>, guests: usize) -> Mirror {
    let raw = raw.cloned().unwrap_or_default();
    let port = raw.port.unwrap_or(DEFAULT_MIRROR_PORT);
    if port == 0 || usize::from(port) + guests > usize::from(u16::MAX) {
        p.add(
            "mirror.port",
            port,
            "1 to 65535 with room for one port per guest",
        );
    }
    let policy = raw.policy.unwrap_or_else(|| "stop".into());
    if policy != "stop" && policy != "degraded" {
        p.add("mirror.policy", &policy, "\"stop\" or \"degraded\"");
    }
    let mode = raw.mode.unwrap_or_else(|| "sync".into());
    if mode != "sync" && mode != "async" {
        p.add("mirror.mode", &mode, "\"sync\" or \"async\"");
    }
    let max_lag = match raw.max_lag {
        None => DEFAULT_MAX_LAG,
        Some(s) => s.parse::<ByteSize>().unwrap_or_else(|e| {
            p.add("mirror.max_lag", &s, e);
            DEFAULT_MAX_LAG
        }),
    };
    let key_file = host_path(p, "mirror.key_file", raw.key_file, DEFAULT_MIRROR_KEY);
    Mirror {
        port,
        policy,
        mode,
        max_lag,
        key_file,
    }
}

fn resolve_guests(
    p: &mut Problems,
    cluster: &str,
    raw: &[GuestFile],
    hosts: &[Host; 2],
    base: &Path,
) -> Vec<Guest> {
    if raw.is_empty() || raw.len() > MAX_GUESTS {
        p.key(
            "guest",
            format!("{} [[guest]] entries; 1 to {MAX_GUESTS}", raw.len()),
        );
    }
    let mut names = BTreeSet::new();
    let (mut ips, mut macs, mut dirs) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut out = Vec::new();
    for (i, g) in raw.iter().enumerate() {
        let at = format!("guest[{i}]");
        if !guest_name_ok(&g.name) {
            p.add(&format!("{at}.name"), &g.name, GUEST_RULE);
        } else if !names.insert(g.name.to_ascii_lowercase()) {
            p.add(&format!("{at}.name"), &g.name, "two guests have this name");
        }
        let home = hosts.iter().position(|h| h.name == g.home);
        if home.is_none() {
            p.add(
                &format!("{at}.home"),
                &g.home,
                format!("no such host (hosts: {}, {})", hosts[0].name, hosts[1].name),
            );
        }
        let Some(app) = guest_appliance(p, &at, cluster, g, &hosts[0].bridge, base) else {
            continue;
        };
        if let Kind::Single(s) = &app.kind {
            if !ips.insert(s.ip.0) {
                p.add(&format!("{at}.ip"), &g.ip, "two guests have this address");
            }
            if let Some(mac) = s.mac
                && !macs.insert(mac.0)
            {
                p.key(&at, format!("two guests have the MAC {mac} (network.mac)"));
            }
        }
        if !dirs.insert(app.install_dir.clone()) {
            p.key(
                &at,
                format!(
                    "two guests have the install_dir {}: they would share disks; give each \
                     guest its own appliance description (its own name or install_dir)",
                    app.install_dir
                ),
            );
        }
        if let Some(home) = home {
            out.push(Guest {
                name: g.name.clone(),
                home,
                appliance: app,
                index: i,
            });
        }
    }
    out
}

/// The guest's appliance description as written (a file, or a built image's resolved one).
fn appliance_file(p: &mut Problems, at: &str, g: &GuestFile, base: &Path) -> Option<PathBuf> {
    match (&g.appliance, &g.image) {
        (Some(a), None) => Some(base.join(a)),
        (None, Some(i)) => Some(base.join(i).join(RESOLVED)),
        _ => {
            p.key(
                at,
                "give exactly one of appliance = \"FILE.toml\" (a description) or \
                 image = \"DIR\" (what `tandem image build` made)",
            );
            None
        }
    }
}

/// The guest's appliance with the cluster's address, bridge and (when it has none) MAC.
fn guest_appliance(
    p: &mut Problems,
    at: &str,
    cluster: &str,
    g: &GuestFile,
    bridge: &str,
    base: &Path,
) -> Option<Appliance> {
    let path = appliance_file(p, at, g, base)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            p.key(at, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    let mut file: ConfigFile = match toml::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            p.key(
                at,
                format!("{}: {}", path.display(), e.to_string().trim_end()),
            );
            return None;
        }
    };
    if file.pair.is_some() {
        p.key(
            at,
            format!(
                "{} describes a one-host pair; a cluster guest is one appliance",
                path.display()
            ),
        );
        return None;
    }
    let net = file.network.get_or_insert_with(NetworkFile::default);
    net.ip = Some(g.ip.clone());
    net.gateway = g.gateway.clone().or(net.gateway.take());
    net.bridge = Some(bridge.into());
    net.mac = net
        .mac
        .take()
        .or_else(|| Some(stable_mac(cluster, &g.name).to_string()));
    match config::resolve(&file) {
        Ok(mut app) => {
            if let Some(t) = &mut app.tls
                && Path::new(&t.dir).is_relative()
            {
                let dir = path.parent().unwrap_or(Path::new("")).join(&t.dir);
                t.dir = dir.to_string_lossy().into_owned();
            }
            Some(app)
        }
        Err(e) => {
            for problem in e.problems {
                // The cluster's own keys keep their cluster spelling.
                let problem = problem
                    .replace("network.ip", &format!("{at}.ip"))
                    .replace("network.gateway", &format!("{at}.gateway"));
                p.key(at, format!("{}: {problem}", path.display()));
            }
            None
        }
    }
}

/// A locally administered MAC that depends only on the cluster's and the guest's names, so
/// the guest has the same one on both hosts.
pub fn stable_mac(cluster: &str, guest: &str) -> MacAddr {
    let h = Sha256::digest(format!("tandem-cluster-mac\0{cluster}\0{guest}").as_bytes());
    MacAddr([0x52, 0x54, 0x00, h[0], h[1], h[2]])
}
