//! What `tandem pair status` shows: the supervisor's view of the processes ([`PairInfo`],
//! also `DIR/pair.json`) joined with each node's control words read from the region
//! ([`NodeWords`]; the heartbeat sampled twice to tell a beating node from a stalled one).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_formats::pair_region::{self as r, word, State, Words};

use super::Node;

/// The supervisor's view of the pair (`DIR/pair.json`, and the `status` reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairInfo {
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// A process inside the pair's namespace(s), for `nsenter -t` (the supervisor itself).
    pub ns_pid: u32,
    /// The network namespace is owned by a user namespace (the supervisor is not root):
    /// entering it needs `nsenter -U --preserve-credentials` too.
    pub userns: bool,
    /// The supervisor is running (false once it went down).
    pub running: bool,
    /// The pair directory.
    pub dir: PathBuf,
    /// The subnet.
    pub subnet: String,
    /// The host side's address in the namespace (the bridge).
    pub host_ip: String,
    /// Node A, then node B.
    pub nodes: Vec<NodeInfo>,
}

impl PairInfo {
    /// One node's entry.
    pub fn node(&self, n: Node) -> &NodeInfo {
        &self.nodes[n.index()]
    }
}

/// One node as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node.
    pub node: Node,
    /// Its QEMU's pid while it runs (or has not been reaped yet).
    pub qemu_pid: Option<u32>,
    /// `running`, `stopped` (SIGSTOP), `exited`, `killed-for-fence`, `not-started`, `down`.
    pub state: String,
    /// How the last QEMU ended, once it has.
    pub exit: Option<String>,
    /// QEMUs started for this node by this supervisor.
    pub starts: u32,
    /// Its address (`A.B.C.D`).
    pub ip: String,
    /// Its MAC.
    pub mac: String,
    /// Its tap device.
    pub tap: String,
    /// Its guest console.
    pub console: PathBuf,
    /// Its QMP socket.
    pub qmp: PathBuf,
    /// Its disks in guest order (its own, then its peer's).
    pub disks: Vec<PathBuf>,
}

/// A node's announcement in the region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announced {
    /// Announced IPv4 address.
    pub ip: String,
    /// Announced MAC.
    pub mac: String,
    /// Its NVLOG's offset in the region.
    pub log_offset: u64,
    /// Its NVLOG's length.
    pub log_len: u64,
}

/// A node's control words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeWords {
    /// The state's name (`unknown(N)` for a value this host does not know).
    pub state: String,
    /// The raw state word.
    pub state_word: u64,
    /// The heartbeat counter.
    pub heartbeat: u64,
    /// The heartbeat changed between the two samples.
    pub heartbeat_advancing: bool,
    /// The boot word.
    pub boot: u64,
    /// Who owns this node's disks now.
    pub disks_owner: Node,
    /// Under which claim epoch.
    pub disks_epoch: u64,
    /// This node's claims on node A's and node B's disks.
    pub claims: [u64; 2],
    /// The claims it released.
    pub released: [u64; 2],
    /// The highest peer claim it obeyed.
    pub fence_ack: u64,
    /// The claim epoch for which the host confirmed its QEMU dead.
    pub dead: u64,
    /// The host's last request to it.
    pub request: u64,
    /// Its sequence number.
    pub request_seq: u64,
    /// The last request it carried out.
    pub request_done: u64,
    /// Its peer-silence timeout (ms).
    pub timeout_ms: u64,
    /// Its announcement, when complete and intact.
    pub announced: Option<Announced>,
}

/// Read node `n`'s words once (`heartbeat_advancing` false).
pub fn read_words(w: &dyn Words, n: Node) -> NodeWords {
    let i = n.index();
    let get = |wd| r::get(w, i, wd);
    let state_word = get(word::STATE);
    let (owner, epoch) = r::owner(w, i);
    NodeWords {
        state: State::from_word(state_word)
            .map_or_else(|| format!("unknown({state_word})"), |s| s.name().into()),
        state_word,
        heartbeat: get(word::HEARTBEAT),
        heartbeat_advancing: false,
        boot: get(word::BOOT),
        disks_owner: Node::from_index(owner),
        disks_epoch: epoch,
        claims: [get(word::CLAIM[0]), get(word::CLAIM[1])],
        released: [get(word::RELEASED[0]), get(word::RELEASED[1])],
        fence_ack: get(word::FENCE_ACK),
        dead: get(word::DEAD),
        request: get(word::REQUEST),
        request_seq: get(word::REQUEST_SEQ),
        request_done: get(word::REQUEST_DONE),
        timeout_ms: get(word::TIMEOUT_MS),
        announced: r::announcement(w, i).map(|(log_offset, log_len, ip, mac)| Announced {
            ip: std::net::Ipv4Addr::from(ip).to_string(),
            mac: crate::builder::MacAddr(mac).to_string(),
            log_offset,
            log_len,
        }),
    }
}

/// Both nodes' words, read twice `window` apart: the second reading, with
/// `heartbeat_advancing` telling whether the heartbeat moved in between.
pub fn sample_words(w: &dyn Words, window: Duration) -> [NodeWords; 2] {
    let first = Node::ALL.map(|n| read_words(w, n).heartbeat);
    std::thread::sleep(window);
    Node::ALL.map(|n| {
        let mut words = read_words(w, n);
        words.heartbeat_advancing = words.heartbeat != first[n.index()];
        words
    })
}

/// One node in `tandem pair status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node: Node,
    /// The supervisor's view.
    pub process: NodeInfo,
    /// Its control words.
    pub region: NodeWords,
}

/// `tandem pair status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStatus {
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// The namespace's pid (for `nsenter -t`).
    pub ns_pid: u32,
    /// Inside a user namespace.
    pub userns: bool,
    /// The pair directory.
    pub dir: PathBuf,
    /// Node A, then node B.
    pub nodes: Vec<NodeStatus>,
}

impl PairStatus {
    /// Join the supervisor's view with the words.
    pub fn new(info: PairInfo, words: [NodeWords; 2]) -> PairStatus {
        let [a, b] = words;
        let nodes = info
            .nodes
            .iter()
            .cloned()
            .zip([a, b])
            .map(|(process, region)| NodeStatus {
                node: process.node,
                process,
                region,
            })
            .collect();
        PairStatus {
            supervisor_pid: info.supervisor_pid,
            ns_pid: info.ns_pid,
            userns: info.userns,
            dir: info.dir,
            nodes,
        }
    }

    /// One node.
    pub fn node(&self, n: Node) -> &NodeStatus {
        &self.nodes[n.index()]
    }

    /// The table `tandem pair status` prints.
    pub fn table(&self) -> String {
        let header = [
            "node",
            "qemu",
            "state",
            "heartbeat",
            "disks",
            "fence_ack",
            "dead",
            "request",
            "announced",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for n in &self.nodes {
            let p = &n.process;
            let w = &n.region;
            rows.push(vec![
                n.node.to_string(),
                match p.qemu_pid {
                    Some(pid) => format!("{pid} {}", p.state),
                    None => p.state.clone(),
                },
                w.state.clone(),
                format!(
                    "{} {}",
                    w.heartbeat,
                    if w.heartbeat_advancing {
                        "advancing"
                    } else {
                        "stalled"
                    }
                ),
                format!("{}@{}", w.disks_owner, w.disks_epoch),
                w.fence_ack.to_string(),
                w.dead.to_string(),
                format!("{}/{}", w.request_done, w.request_seq),
                w.announced
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |a| format!("{} {}", a.ip, a.mac)),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut out = format!(
            "pair {} — supervisor pid {}{}\n",
            self.dir.display(),
            self.supervisor_pid,
            if self.userns {
                " (rootless: user namespace)"
            } else {
                ""
            }
        );
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out.push_str(
            "disks: owner@epoch of the node's own disks; request: done/sent sequence numbers\n",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pair::region::{prepare, RegionMap};

    fn info() -> PairInfo {
        let node = |n: Node| NodeInfo {
            node: n,
            qemu_pid: Some(100 + n.index() as u32),
            state: "running".into(),
            exit: None,
            starts: 1,
            ip: format!("10.77.0.1{}", n.index()),
            mac: super::super::spec::mac(n).to_string(),
            tap: super::super::spec::tap(n).into(),
            console: format!("/p/{n}/console.log").into(),
            qmp: format!("/p/{n}/qmp.sock").into(),
            disks: vec![],
        };
        PairInfo {
            supervisor_pid: 7,
            ns_pid: 7,
            userns: false,
            running: true,
            dir: "/p".into(),
            subnet: "10.77.0.0/24".into(),
            host_ip: "10.77.0.1".into(),
            nodes: vec![node(Node::A), node(Node::B)],
        }
    }

    #[test]
    fn words_and_table() {
        let dir = crate::scratch::tempdir().unwrap();
        let path = dir.path().join("region.bin");
        prepare(&path, crate::size::ByteSize::mib(4)).unwrap();
        let w = RegionMap::open(&path, true).unwrap();
        r::set(&w, 0, word::STATE, State::Serving as u64);
        r::set(&w, 1, word::STATE, 42);
        r::claim(&w, 0, 0);
        let e = r::claim(&w, 1, 0).unwrap();
        r::set(&w, 0, word::DEAD, e);
        r::announce(
            &w,
            0,
            (r::AREAS, 1 << 20),
            [10, 77, 0, 10],
            [2, 0, 0, 0, 0, 1],
        );
        let a = read_words(&w, Node::A);
        assert_eq!(a.state, "serving");
        assert_eq!((a.disks_owner, a.disks_epoch, a.dead), (Node::B, 2, 2));
        assert_eq!(a.announced.as_ref().unwrap().ip, "10.77.0.10");
        assert_eq!(a.announced.as_ref().unwrap().mac, "02:00:00:00:00:01");
        let b = read_words(&w, Node::B);
        assert_eq!(b.state, "unknown(42)");
        assert_eq!(b.claims, [2, 0]);
        let st = PairStatus::new(info(), [a, b]);
        let t = st.table();
        assert!(t.contains("supervisor pid 7"), "{t}");
        let row_a = t.lines().find(|l| l.starts_with("a ")).unwrap();
        assert!(
            row_a.contains("100 running") && row_a.contains("serving"),
            "{t}"
        );
        assert!(row_a.contains("b@2") && row_a.contains("10.77.0.10"), "{t}");
        assert!(row_a.contains("stalled"), "{t}");
        let json = serde_json::to_string(&st).unwrap();
        let back: PairStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, st);
    }
}
