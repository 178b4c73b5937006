//! A failover pair on one host: two guests (nodes A and B), one shared region, one private
//! network, and a supervisor process that owns them (`tandem pair ...`).
//!
//! `tandem pair up --dir DIR` prepares the node disks and the shared region, then starts a
//! detached supervisor (`tandem pair supervise`, its own session, output in
//! `DIR/supervisor.log`). The supervisor makes a network namespace, starts both QEMUs in it,
//! serves a control socket, and runs the fence agent. Every other `tandem pair` command (and
//! the [`Pair`] library API the tests and benches use) talks to it over `DIR/control.sock`.
//!
//! # Why a network namespace
//!
//! A pair fails over an *address*: the survivor brings up its peer's IP and announces it with
//! a gratuitous ARP, and clients keep talking to the same address. That needs both guests on
//! one L2 segment with a client beside them, which QEMU user networking cannot give (each
//! guest would be behind its own NAT). So the supervisor unshares a network namespace and
//! builds a bridge `tbr0` (the host side, `.1` of the subnet) with one tap per guest (`tapa`,
//! `tapb`). As root that is `unshare(CLONE_NEWNET)`; as another user the namespace is owned
//! by a fresh user namespace (`CLONE_NEWUSER`, the user mapped to root inside, setgroups
//! denied), so no privilege is needed where the kernel allows unprivileged user namespaces
//! and `/dev/net/tun` is open to the user. Nothing is added to the host's own network, two
//! pairs never collide (each has its own `10.77.0.0/24`), and when the supervisor exits the
//! namespace, bridge and taps vanish with it. Clients run inside it with
//! `tandem pair exec --dir DIR -- CMD` (`nsenter`). The bridge's ARP `locktime` is 0 so that
//! a takeover's gratuitous ARP replaces the namespace's ARP entry at once (the default
//! ignores a new address for a second after the last change).
//!
//! # Why `file.locking=off`
//!
//! Each guest is given its own disks first and its peer's disks after them
//! (`pair.disks=N`): the survivor must be able to write its peer's disks when it takes over,
//! and there is no hot-plug in the guest. QEMU's image locking would refuse the second QEMU
//! that opens a disk writable, so the pair's disks are opened with `file.locking=off`.
//! Locking is not what keeps two writers apart here: the claims and epochs in the shared
//! region are ([`tandem_formats::pair_region`]), and every guest checks it still holds a disk's
//! claim before each turn of I/O.
//!
//! # The fence agent: the last resort
//!
//! A takeover claims the peer's disks with a higher epoch; the peer sees the claim, stops
//! its I/O and acknowledges (`FENCE_ACK`), and only then may the survivor replay the peer's
//! log and write its disks. A peer that is wedged, paused or looping never acknowledges. The
//! supervisor, which started both QEMUs, breaks that tie from outside the guests: every
//! ~2 ms it reads the claim words, and for a node whose disks another node claims without
//! acknowledgment it writes `DEAD = epoch` at once when that node's QEMU is not running, or,
//! when it is, SIGKILLs the QEMU after `--fence-timeout-ms`, *reaps* it (only a reaped
//! process can issue no more writes: its I/O threads are gone), and then writes `DEAD`.
//! `DEAD` is the only word besides `REQUEST`/`REQUEST_SEQ` the host ever writes. Every action
//! is logged to `DIR/supervisor.log` and, as JSON lines, to `DIR/events.jsonl`
//! (see [`events`]), from which a benchmark can build a failover timeline.
//!
//! QEMUs are started with `PR_SET_PDEATHSIG=SIGKILL`: a supervisor that dies takes its
//! QEMUs with it, so no guest ever runs without its fence agent.
//!
//! # The pair directory
//!
//! | path | what |
//! |---|---|
//! | `a/disk0.raw` ... `b/diskK.raw` | the nodes' disks (sparse; kept across `down`/`up`) |
//! | `region.bin` | the shared region: header page written once at creation, then the control words and the nodes' NVLOGs (kept) |
//! | `spec.json` | the resolved configuration the supervisor runs |
//! | `pair.json` | supervisor pid, namespace pid, per node QEMU pid, IP, MAC, console, state (kept current) |
//! | `control.sock` | the supervisor's control socket (one request line, one JSON reply line) |
//! | `events.jsonl` | supervisor and fence-agent events, appended |
//! | `supervisor.log` | the supervisor's log, appended |
//! | `supervisor.lock`, `up.lock` | held by the running supervisor, and by a `pair up` under way |
//! | `a/console.log`, `a/qemu.log`, `a/qmp.sock` | node A's guest console (from each `up`), QEMU's stderr, QMP |

#[allow(unsafe_code)] // pre_exec (setsid) of the supervisor
pub mod api;
pub mod cmd;
pub mod control;
pub mod events;
pub mod netns;
#[allow(unsafe_code)] // mmap of the shared region file
pub mod region;
pub mod spec;
pub mod status;
#[allow(unsafe_code)] // pre_exec of the supervised processes
pub mod supervisor;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The region layout shared with the guest (`tandem_formats::pair_region`): header, control
/// words, the ownership rules. Re-exported for tests and benches.
pub use tandem_formats::pair_region as layout;

pub use api::Pair;
pub use control::{ControlRequest, Sig};
pub use events::Event;
pub use region::RegionMap;
pub use spec::{export_words, Giveback, PairConfig, PairSpec, Subnet};
pub use status::{NodeStatus, PairInfo, PairStatus};

/// A node of the pair.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Node {
    /// Node A (region node 0).
    A,
    /// Node B (region node 1).
    B,
}

impl Node {
    /// Both nodes, A first.
    pub const ALL: [Node; 2] = [Node::A, Node::B];

    /// The node's index in the region (A = 0, B = 1).
    pub fn index(self) -> usize {
        match self {
            Node::A => 0,
            Node::B => 1,
        }
    }

    /// The node at region index `i` (0 or 1).
    pub fn from_index(i: usize) -> Node {
        if i == 0 {
            Node::A
        } else {
            Node::B
        }
    }

    /// `a` or `b`.
    pub fn name(self) -> &'static str {
        match self {
            Node::A => "a",
            Node::B => "b",
        }
    }

    /// The other node.
    pub fn peer(self) -> Node {
        match self {
            Node::A => Node::B,
            Node::B => Node::A,
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Node {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" | "A" => Ok(Node::A),
            "b" | "B" => Ok(Node::B),
            other => Err(format!("unknown node '{other}' (expected a or b)")),
        }
    }
}

/// The files of a pair directory (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairDir {
    root: PathBuf,
}

impl PairDir {
    /// The pair directory `root`.
    pub fn new(root: impl Into<PathBuf>) -> PairDir {
        PairDir { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A node's directory.
    pub fn node_dir(&self, n: Node) -> PathBuf {
        self.root.join(n.name())
    }

    /// A node's disk `k`.
    pub fn disk(&self, n: Node, k: u8) -> PathBuf {
        self.node_dir(n).join(format!("disk{k}.raw"))
    }

    /// The shared region file.
    pub fn region(&self) -> PathBuf {
        self.root.join("region.bin")
    }

    /// The resolved configuration.
    pub fn spec(&self) -> PathBuf {
        self.root.join("spec.json")
    }

    /// Both nodes' boot module with `tandem pair up --tls` (0600: the TLS key).
    pub fn boot_module(&self) -> PathBuf {
        self.root.join("boot.module")
    }

    /// The supervisor's state file.
    pub fn info(&self) -> PathBuf {
        self.root.join("pair.json")
    }

    /// The control socket.
    pub fn control(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// The event log.
    pub fn events(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }

    /// Locked (`flock`) by the running supervisor for its whole life.
    pub fn supervisor_lock(&self) -> PathBuf {
        self.root.join("supervisor.lock")
    }

    /// Locked by a `pair up` under way.
    pub fn up_lock(&self) -> PathBuf {
        self.root.join("up.lock")
    }

    /// The supervisor's log.
    pub fn supervisor_log(&self) -> PathBuf {
        self.root.join("supervisor.log")
    }

    /// A node's guest console.
    pub fn console(&self, n: Node) -> PathBuf {
        self.node_dir(n).join("console.log")
    }

    /// A node's QEMU stderr.
    pub fn qemu_log(&self, n: Node) -> PathBuf {
        self.node_dir(n).join("qemu.log")
    }

    /// A node's QMP socket.
    pub fn qmp(&self, n: Node) -> PathBuf {
        self.node_dir(n).join("qmp.sock")
    }
}

/// Take the `flock` on `path` (created if missing) without waiting: `Ok(None)` when another
/// process holds it. The lock lasts as long as the returned file is open.
pub fn try_lock(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The last `n` lines of a text file (empty when it cannot be read), for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_paths() {
        assert_eq!(Node::A.peer(), Node::B);
        assert_eq!(Node::from_index(1), Node::B);
        assert_eq!(Node::B.index(), 1);
        assert_eq!("B".parse::<Node>(), Ok(Node::B));
        assert!("c".parse::<Node>().is_err());
        let d = PairDir::new("/p");
        assert_eq!(d.disk(Node::B, 2), PathBuf::from("/p/b/disk2.raw"));
        assert_eq!(d.console(Node::A), PathBuf::from("/p/a/console.log"));
        assert_eq!(d.qmp(Node::A), PathBuf::from("/p/a/qmp.sock"));
        assert_eq!(d.control(), PathBuf::from("/p/control.sock"));
        assert_eq!(
            serde_json::to_string(&Node::A).unwrap(),
            "\"a\"".to_string()
        );
    }

    #[test]
    fn tail_of_a_file() {
        let dir = crate::scratch::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, "1\n2\n3\n").unwrap();
        assert_eq!(tail(&f, 2), "2\n3");
        assert_eq!(tail(&dir.path().join("none"), 2), "");
    }
}
