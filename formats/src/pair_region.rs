//! The pair's shared region (FORMATS.md, "Pair region"): one ivshmem window that both guests
//! of a failover pair map, and that the host supervisor maps from the backing file.
//!
//! Page 0 is a header written once by the host when it creates the file (magic, version,
//! sizes, where each node's area lies, CRC32C). Page 1 holds one 256-byte control block per
//! node. Every control word has exactly **one writer** (the node it belongs to, or the host
//! for the words marked so), so no cross-process read-modify-write is ever needed: a
//! single-vCPU TCG guest does not make `lock cmpxchg` atomic against another process.
//! Aligned 64-bit loads and stores are atomic on x86, and the one ordering the protocol
//! needs (a node's own store before its load of the other node's word) is a full fence.
//! From page 2 on, each node has an area holding its NVLOG.
//!
//! Ownership of a node's disks is decided from the claim words alone ([`owner`]): node `n`
//! claims node `j`'s disks with an epoch; the higher claim wins and the peer wins a tie (a
//! takeover must be able to pre-empt its home node), unless the peer has released it.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::nvlog::crc32c;

pub const MAGIC: [u8; 8] = *b"TNDMPAIR";
pub const VERSION: u32 = 1;
pub const PAGE: u64 = 4096;
/// Nodes in a pair.
pub const NODES: usize = 2;
/// Offset of the control page.
pub const CONTROL: u64 = PAGE;
/// Bytes of one node's control block.
pub const BLOCK: u64 = 256;
/// Where the node areas start.
pub const AREAS: u64 = 2 * PAGE;
/// Smallest region: header, control page, and 1 MiB per node.
pub const MIN_SIZE: u64 = AREAS + 2 * (1 << 20);

/// Page 0, written by the host at `tandem pair up`.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub nodes: u32,
    /// Bytes in the whole region.
    pub size: u64,
    /// Each node's area: offset and length in bytes (page-aligned).
    pub area_offset: [u64; NODES],
    pub area_len: [u64; NODES],
    /// Random at format time: names this pair in logs.
    pub pair_id: u64,
    pub reserved: [u8; 12],
    /// CRC32C of the bytes above.
    pub crc: u32,
}

const _: () = assert!(core::mem::size_of::<Header>() == 80);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionError {
    TooSmall(u64),
    BadMagic,
    BadVersion(u32),
    BadChecksum,
    BadLayout,
}

impl core::fmt::Display for RegionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RegionError::TooSmall(n) => write!(f, "{n} bytes is too small (at least {MIN_SIZE})"),
            RegionError::BadMagic => write!(f, "not a pair region (bad magic)"),
            RegionError::BadVersion(v) => write!(f, "version {v}, expected {VERSION}"),
            RegionError::BadChecksum => write!(f, "header checksum mismatch"),
            RegionError::BadLayout => write!(f, "node areas overlap or lie outside the region"),
        }
    }
}

impl Header {
    /// The layout for a region of `size` bytes: the space after the control page split into
    /// two equal page-aligned areas.
    pub fn new(size: u64, pair_id: u64) -> Result<Self, RegionError> {
        if size < MIN_SIZE {
            return Err(RegionError::TooSmall(size));
        }
        let each = ((size - AREAS) / 2) & !(PAGE - 1);
        let mut h = Header {
            magic: MAGIC,
            version: VERSION,
            nodes: NODES as u32,
            size,
            area_offset: [AREAS, AREAS + each],
            area_len: [each, each],
            pair_id,
            reserved: [0; 12],
            crc: 0,
        };
        h.crc = h.checksum();
        Ok(h)
    }

    fn checksum(&self) -> u32 {
        crc32c(&[&self.as_bytes()[..core::mem::offset_of!(Header, crc)]])
    }

    /// Parses and checks page 0 against the window it came from.
    pub fn parse(bytes: &[u8], window: u64) -> Result<Self, RegionError> {
        let (h, _) = Header::read_from_prefix(bytes).map_err(|_| RegionError::BadLayout)?;
        if h.magic != MAGIC {
            return Err(RegionError::BadMagic);
        }
        if h.version != VERSION {
            return Err(RegionError::BadVersion(h.version));
        }
        if h.crc != h.checksum() {
            return Err(RegionError::BadChecksum);
        }
        let fits = |i: usize| {
            h.area_offset[i] >= AREAS
                && h.area_offset[i] % PAGE == 0
                && h.area_len[i] >= PAGE
                && h.area_offset[i]
                    .checked_add(h.area_len[i])
                    .is_some_and(|end| end <= h.size)
        };
        // Evaluated only once both areas fit (their ends cannot overflow then).
        let apart = || {
            h.area_offset[0] + h.area_len[0] <= h.area_offset[1]
                || h.area_offset[1] + h.area_len[1] <= h.area_offset[0]
        };
        if h.nodes as usize != NODES || h.size > window || !fits(0) || !fits(1) || !apart() {
            return Err(RegionError::BadLayout);
        }
        Ok(h)
    }
}

/// A node's control words, by offset within its block. Writer in brackets.
pub mod word {
    /// [node] Incremented while the node runs its service loop.
    pub const HEARTBEAT: u64 = 0;
    /// [node] A [`super::State`] value.
    pub const STATE: u64 = 8;
    /// [node] Changes on every boot (a restarted node is told apart from a stalled one).
    pub const BOOT: u64 = 16;
    /// [node] The highest peer claim on this node's disks that this node has obeyed: it has
    /// stopped serving, no I/O of its own is in flight, and it will issue none.
    pub const FENCE_ACK: u64 = 24;
    /// [node] Claim epochs on node 0's and node 1's disks (0: none).
    pub const CLAIM: [u64; 2] = [32, 40];
    /// [node] Claim epochs this node has released on node 0's and node 1's disks.
    pub const RELEASED: [u64; 2] = [48, 56];
    /// [node] Announcement: the NVLOG's offset and length in the region, the node's IPv4
    /// address (big-endian in the low 32 bits), its MAC (low 48 bits), and a CRC32C of the
    /// four words with [`super::MAGIC`] (0 while not announced).
    pub const LOG_OFFSET: u64 = 64;
    pub const LOG_LEN: u64 = 72;
    pub const IP: u64 = 80;
    pub const MAC: u64 = 88;
    pub const ANNOUNCE_CRC: u64 = 96;
    /// [node] Milliseconds of silence after which this node declares its peer failed.
    pub const TIMEOUT_MS: u64 = 104;
    /// [node] 1 while one of the node's services runs a consistency point (logged data
    /// being written to disk), else 0: observability for tests that kill at that moment.
    pub const CP_ACTIVE: u64 = 112;
    /// [node] Records its services still have to replay from a log found at start.
    pub const REPLAY_LEFT: u64 = 120;
    /// [host] A request to this node: [`super::Request`] value, and its sequence number.
    pub const REQUEST: u64 = 128;
    pub const REQUEST_SEQ: u64 = 136;
    /// [node] The last request sequence number carried out.
    pub const REQUEST_DONE: u64 = 144;
    /// [node] The node's [`super::conn`] table: server-side TCP connections open at its
    /// last update (recorded or not), how many of those found no entry, and a count of the
    /// updates (incremented after each change of the table is complete).
    pub const CONN_OPEN: u64 = 152;
    pub const CONN_UNRECORDED: u64 = 160;
    pub const CONN_UPDATES: u64 = 168;
    /// [host] The claim epoch for which the host killed this node's QEMU and saw it exit.
    pub const DEAD: u64 = 192;
}

/// Byte offset in the region of `node`'s control word `w`.
pub fn offset(node: usize, w: u64) -> u64 {
    CONTROL + node as u64 * BLOCK + w
}

/// What a node says it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum State {
    Absent = 0,
    Booting = 1,
    /// Serving its own exports.
    Serving = 2,
    /// Serving its own exports and its peer's.
    Covering = 3,
    /// Fenced: obeyed a peer claim, serves nothing.
    Fenced = 4,
    /// Booted, but its disks are claimed by the peer: waiting for them back.
    Standby = 5,
    /// Taking over its peer (fencing, waiting, replaying).
    TakingOver = 6,
}

impl State {
    pub fn from_word(w: u64) -> Option<Self> {
        Some(match w {
            0 => State::Absent,
            1 => State::Booting,
            2 => State::Serving,
            3 => State::Covering,
            4 => State::Fenced,
            5 => State::Standby,
            6 => State::TakingOver,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Absent => "absent",
            State::Booting => "booting",
            State::Serving => "serving",
            State::Covering => "covering",
            State::Fenced => "fenced",
            State::Standby => "standby",
            State::TakingOver => "taking-over",
        }
    }
}

/// What the host asks a node to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Request {
    None = 0,
    /// Take over the peer now (whatever its heartbeat says).
    Takeover = 1,
    /// Give the peer's disks and address back.
    Giveback = 2,
}

impl Request {
    pub fn from_word(w: u64) -> Self {
        match w {
            1 => Request::Takeover,
            2 => Request::Giveback,
            _ => Request::None,
        }
    }
}

/// Access to the region's control words. The guest implements it with volatile accesses to
/// the mapped BAR, the host over its mapping of the file, tests over memory.
pub trait Words {
    fn load(&self, offset: u64) -> u64;
    fn store(&self, offset: u64, value: u64);
    /// A full fence: this side's earlier stores are visible before its later loads.
    fn fence(&self);
}

/// The header and control page in ordinary memory: what unit tests, fuzz harnesses and
/// simulations use in place of the shared region (one word per 8 bytes, from offset 0).
pub struct MemWords(pub core::cell::RefCell<alloc::vec::Vec<u64>>);

impl MemWords {
    /// Zeroed words up to the first node area.
    pub fn new() -> Self {
        Self(core::cell::RefCell::new(
            alloc::vec![0; (AREAS / 8) as usize],
        ))
    }
}

impl Default for MemWords {
    fn default() -> Self {
        Self::new()
    }
}

impl Words for MemWords {
    fn load(&self, offset: u64) -> u64 {
        self.0.borrow()[(offset / 8) as usize]
    }
    fn store(&self, offset: u64, value: u64) {
        self.0.borrow_mut()[(offset / 8) as usize] = value;
    }
    fn fence(&self) {}
}

/// Reads a node's control word.
pub fn get(w: &dyn Words, node: usize, word: u64) -> u64 {
    w.load(offset(node, word))
}

/// Writes one of this node's control words.
pub fn set(w: &dyn Words, node: usize, word: u64, value: u64) {
    w.store(offset(node, word), value)
}

/// The other node.
pub fn peer(node: usize) -> usize {
    1 - node
}

/// Who owns node `j`'s disks now, and under which claim epoch: `(owner, epoch)`.
///
/// The home node owns them unless the peer's claim is at least as high as the home claim
/// and not released.
pub fn owner(w: &dyn Words, j: usize) -> (usize, u64) {
    let p = peer(j);
    let home = get(w, j, word::CLAIM[j]);
    let theirs = get(w, p, word::CLAIM[j]);
    let released = get(w, p, word::RELEASED[j]);
    if theirs > 0 && theirs >= home && released < theirs {
        (p, theirs)
    } else {
        (j, home)
    }
}

/// The epoch a new claim on node `j`'s disks takes: above every claim seen (at most
/// `u64::MAX`: a claim word at the top, which only corruption writes, is tied, never wrapped
/// to 0, "no claim").
pub fn next_epoch(w: &dyn Words, j: usize) -> u64 {
    get(w, 0, word::CLAIM[j])
        .max(get(w, 1, word::CLAIM[j]))
        .saturating_add(1)
}

/// Node `n` claims node `j`'s disks (its own at start or on giveback, its peer's on takeover).
/// Returns the epoch it holds if the claim stands after the fence (see [`owner`]), or `None`
/// when another claim beats it.
pub fn claim(w: &dyn Words, n: usize, j: usize) -> Option<u64> {
    let e = next_epoch(w, j);
    set(w, n, word::CLAIM[j], e);
    w.fence();
    (owner(w, j) == (n, e)).then_some(e)
}

/// Whether node `n` still holds node `j`'s disks under epoch `e` (the check made before
/// every turn of I/O).
pub fn holds(w: &dyn Words, n: usize, j: usize, e: u64) -> bool {
    owner(w, j) == (n, e)
}

/// Whether a takeover under epoch `e` of node `j`'s disks may touch them: `j` obeyed the
/// claim (fence acknowledged) or the host confirmed `j` dead after the claim.
pub fn peer_silenced(w: &dyn Words, j: usize, e: u64) -> bool {
    get(w, j, word::FENCE_ACK) >= e || get(w, j, word::DEAD) >= e
}

/// The CRC32C that seals a node's announcement.
pub fn announce_crc(log_offset: u64, log_len: u64, ip: u64, mac: u64) -> u64 {
    let words = [log_offset, log_len, ip, mac];
    u64::from(crc32c(&[&MAGIC, words.as_bytes()]))
}

/// A node announces where its log is and who it is (address, MAC).
pub fn announce(w: &dyn Words, n: usize, log: (u64, u64), ip: [u8; 4], mac: [u8; 6]) {
    let ip = u64::from(u32::from_be_bytes(ip));
    let mut m = [0u8; 8];
    m[..6].copy_from_slice(&mac);
    let mac = u64::from_le_bytes(m);
    set(w, n, word::ANNOUNCE_CRC, 0);
    w.fence();
    set(w, n, word::LOG_OFFSET, log.0);
    set(w, n, word::LOG_LEN, log.1);
    set(w, n, word::IP, ip);
    set(w, n, word::MAC, mac);
    w.fence();
    set(
        w,
        n,
        word::ANNOUNCE_CRC,
        announce_crc(log.0, log.1, ip, mac),
    );
}

/// A node's announcement, if complete and intact: (log offset, log length, IP, MAC).
pub fn announcement(w: &dyn Words, n: usize) -> Option<(u64, u64, [u8; 4], [u8; 6])> {
    let crc = get(w, n, word::ANNOUNCE_CRC);
    let (off, len) = (get(w, n, word::LOG_OFFSET), get(w, n, word::LOG_LEN));
    let (ip, mac) = (get(w, n, word::IP), get(w, n, word::MAC));
    if crc == 0 || crc != announce_crc(off, len, ip, mac) || ip > u64::from(u32::MAX) {
        return None;
    }
    let mut m = [0u8; 6];
    m.copy_from_slice(&mac.to_le_bytes()[..6]);
    Some((off, len, (ip as u32).to_be_bytes(), m))
}

/// Each node's table of its server-side TCP connections (FORMATS.md, "Pair region",
/// "Connection table"): what a survivor needs to tell the peer's clients at once that their
/// connections are gone (`unikernel::ha::reset`), instead of leaving each client to its own
/// timeout.
///
/// One writer, the node ([`Table`]); the survivor and the host read ([`entry`],
/// [`connections`]). Each entry is sealed by a CRC32C word stored last (and cleared first
/// whenever the entry changes), so an entry torn by the node's death mid-update reads as empty.
/// The table holds [`ENTRIES`]; a node with more connections records what fits and counts the
/// rest (`word::CONN_UNRECORDED`).
///
/// Entries hold the 4-tuple only, no sequence numbers: keeping those current would cost a
/// region store per segment, smoltcp does not expose them, and the survivor does not need
/// them: RFC 5961's challenge ACK makes the client state its exact sequence numbers at the
/// moment of the reset, which no recorded value could.
pub mod conn {
    use alloc::vec::Vec;

    use zerocopy::IntoBytes;

    use super::{crc32c, get, set, word, Words, BLOCK, CONTROL, NODES};

    /// Entries per node: two NBD services of 24 sockets each (own exports and, while
    /// covering, the peer's), or one and the management channel's with room to spare.
    pub const ENTRIES: usize = 48;
    /// Bytes per entry (four words).
    pub const ENTRY: u64 = 32;
    /// Where the tables start: right after the two control blocks, node A's then node B's.
    pub const TABLES: u64 = CONTROL + NODES as u64 * BLOCK;
    /// Mixed into every seal, so zeroed or foreign words never read as an entry.
    pub const SEAL_MAGIC: [u8; 8] = *b"TNDMCONN";

    /// Words of an entry, by offset within it.
    pub const IPS: u64 = 0;
    pub const PORTS: u64 = 8;
    pub const SINCE: u64 = 16;
    pub const SEAL: u64 = 24;

    const _: () = assert!(TABLES + (NODES * ENTRIES) as u64 * ENTRY <= super::AREAS);

    /// Byte offset in the region of entry `i` of `node`'s table.
    pub fn entry_offset(node: usize, i: usize) -> u64 {
        TABLES + (node * ENTRIES + i) as u64 * ENTRY
    }

    /// One TCP connection, as the server sees it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Conn {
        pub local_ip: [u8; 4],
        pub local_port: u16,
        pub remote_ip: [u8; 4],
        pub remote_port: u16,
    }

    impl Conn {
        /// The entry's `ips` and `ports` words.
        pub fn words(&self) -> (u64, u64) {
            let ip = |a: [u8; 4]| u64::from(u32::from_be_bytes(a));
            let ips = (ip(self.local_ip) << 32) | ip(self.remote_ip);
            let ports = (u64::from(self.local_port) << 16) | u64::from(self.remote_port);
            (ips, ports)
        }

        /// The connection the two words describe (`None` when reserved bits are set).
        pub fn from_words(ips: u64, ports: u64) -> Option<Self> {
            if ports >> 32 != 0 {
                return None;
            }
            Some(Conn {
                local_ip: ((ips >> 32) as u32).to_be_bytes(),
                local_port: (ports >> 16) as u16,
                remote_ip: (ips as u32).to_be_bytes(),
                remote_port: ports as u16,
            })
        }
    }

    /// The seal of entry `i` of `node`'s table holding these words: bit 32 set (never 0,
    /// "empty"), a CRC32C of the magic, the position and the words in the low 32 bits.
    pub fn seal(node: usize, i: usize, ips: u64, ports: u64, since: u64) -> u64 {
        let words = [node as u64, i as u64, ips, ports, since];
        (1 << 32) | u64::from(crc32c(&[&SEAL_MAGIC, words.as_bytes()]))
    }

    /// Entry `i` of `node`'s table, if sealed: the connection and when the node recorded it
    /// (its own clock, µs).
    pub fn entry(w: &dyn Words, node: usize, i: usize) -> Option<(Conn, u64)> {
        if node >= NODES || i >= ENTRIES {
            return None;
        }
        let at = entry_offset(node, i);
        let s = w.load(at + SEAL);
        if s == 0 {
            return None;
        }
        let (ips, ports, since) = (w.load(at + IPS), w.load(at + PORTS), w.load(at + SINCE));
        if s != seal(node, i, ips, ports, since) {
            return None;
        }
        Some((Conn::from_words(ips, ports)?, since))
    }

    /// Every intact entry of `node`'s table.
    pub fn connections(w: &dyn Words, node: usize) -> Vec<Conn> {
        (0..ENTRIES)
            .filter_map(|i| entry(w, node, i))
            .map(|e| e.0)
            .collect()
    }

    /// The writer's side: the node keeps its table equal to its open connections.
    pub struct Table {
        node: usize,
        slots: [Option<Conn>; ENTRIES],
        /// The connections of the last update, in the order given (a cheap "nothing changed").
        last: Vec<Conn>,
        unrecorded: u64,
        updates: u64,
    }

    impl Table {
        /// `node`'s table, emptied: a new life has no connections yet (those of a previous
        /// life died with its network stack).
        pub fn start(w: &dyn Words, node: usize) -> Self {
            for i in 0..ENTRIES {
                w.store(entry_offset(node, i) + SEAL, 0);
            }
            set(w, node, word::CONN_OPEN, 0);
            set(w, node, word::CONN_UNRECORDED, 0);
            let updates = get(w, node, word::CONN_UPDATES).wrapping_add(1);
            w.fence();
            set(w, node, word::CONN_UPDATES, updates);
            Table {
                node,
                slots: [None; ENTRIES],
                last: Vec::new(),
                unrecorded: 0,
                updates,
            }
        }

        /// Brings the table in line with `open`, the node's connections now (at `now_us`):
        /// entries of closed connections are cleared, new connections take free entries, those
        /// finding none are counted. Returns whether anything was written: nothing is when
        /// `open` is what it was at the last call.
        pub fn sync(&mut self, w: &dyn Words, now_us: u64, open: &[Conn]) -> bool {
            if open == self.last.as_slice() {
                return false;
            }
            self.last.clear();
            self.last.extend_from_slice(open);
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if slot.is_some_and(|c| !open.contains(&c)) {
                    w.store(entry_offset(self.node, i) + SEAL, 0);
                    *slot = None;
                }
            }
            w.fence();
            for c in open {
                if self.slots.contains(&Some(*c)) {
                    continue;
                }
                let Some(i) = self.slots.iter().position(Option::is_none) else {
                    continue;
                };
                self.slots[i] = Some(*c);
                let at = entry_offset(self.node, i);
                let (ips, ports) = c.words();
                w.store(at + IPS, ips);
                w.store(at + PORTS, ports);
                w.store(at + SINCE, now_us);
                w.fence();
                w.store(at + SEAL, seal(self.node, i, ips, ports, now_us));
            }
            let recorded = self.slots.iter().flatten().count();
            self.unrecorded = (open.len() - recorded.min(open.len())) as u64;
            set(w, self.node, word::CONN_OPEN, open.len() as u64);
            set(w, self.node, word::CONN_UNRECORDED, self.unrecorded);
            self.updates = self.updates.wrapping_add(1);
            w.fence();
            set(w, self.node, word::CONN_UPDATES, self.updates);
            true
        }

        /// Connections open at the last update that found no entry.
        pub fn unrecorded(&self) -> u64 {
            self.unrecorded
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Mem = MemWords;

    #[test]
    fn header_round_trip_and_damage() {
        let h = Header::new(64 << 20, 7).unwrap();
        assert_eq!(h.area_offset[0], AREAS);
        assert_eq!(h.area_offset[1], AREAS + h.area_len[0]);
        assert!(h.area_offset[1] + h.area_len[1] <= 64 << 20);
        let mut page = std::vec![0u8; 4096];
        page[..80].copy_from_slice(h.as_bytes());
        assert_eq!(Header::parse(&page, 64 << 20), Ok(h));
        assert_eq!(
            Header::parse(&page, 32 << 20),
            Err(RegionError::BadLayout),
            "a window smaller than the header says"
        );
        page[20] ^= 1;
        assert_eq!(
            Header::parse(&page, 64 << 20),
            Err(RegionError::BadChecksum)
        );
        page[0] = b'X';
        assert_eq!(Header::parse(&page, 64 << 20), Err(RegionError::BadMagic));
        assert_eq!(Header::new(4096, 1), Err(RegionError::TooSmall(4096)));
    }

    #[test]
    fn header_with_overlapping_areas_is_refused() {
        let mut h = Header::new(8 << 20, 1).unwrap();
        h.area_offset[1] = h.area_offset[0] + PAGE;
        h.crc = h.checksum();
        assert_eq!(
            Header::parse(h.as_bytes(), 8 << 20),
            Err(RegionError::BadLayout)
        );
    }

    /// Found by the `pair_region` fuzz target (fuzz/regressions/pair_region/): an area
    /// whose end overflows, and a claim word at the top, panicked in debug builds.
    #[test]
    fn overflowing_areas_and_top_claims_do_not_panic() {
        let mut h = Header::new(8 << 20, 1).unwrap();
        h.area_offset[0] = !(PAGE - 1);
        h.crc = h.checksum();
        assert_eq!(
            Header::parse(h.as_bytes(), 8 << 20),
            Err(RegionError::BadLayout)
        );
        let w = Mem::new();
        set(&w, 1, word::CLAIM[0], u64::MAX);
        assert_eq!(next_epoch(&w, 0), u64::MAX);
        assert_eq!(claim(&w, 0, 0), None, "the peer's claim at the top stands");
        assert_eq!(owner(&w, 0), (1, u64::MAX));
    }

    #[test]
    fn home_claims_then_takeover_then_giveback() {
        let w = Mem::new();
        // Both nodes start and claim their own disks.
        assert_eq!(claim(&w, 0, 0), Some(1));
        assert_eq!(claim(&w, 1, 1), Some(1));
        assert!(holds(&w, 0, 0, 1));
        // Node 1 takes node 0 over: its claim beats node 0's, node 0 no longer holds.
        let e = claim(&w, 1, 0).unwrap();
        assert_eq!(e, 2);
        assert_eq!(owner(&w, 0), (1, 2));
        assert!(!holds(&w, 0, 0, 1));
        assert!(!peer_silenced(&w, 0, e), "no ack, no death yet");
        set(&w, 0, word::FENCE_ACK, e);
        assert!(peer_silenced(&w, 0, e));
        // Giveback: node 1 releases, node 0 claims again with a higher epoch.
        set(&w, 1, word::RELEASED[0], e);
        assert_eq!(owner(&w, 0), (0, 1), "released: home again, old epoch");
        assert!(!holds(&w, 1, 0, e));
        assert_eq!(claim(&w, 0, 0), Some(3));
        // A second takeover must beat epoch 3.
        assert_eq!(claim(&w, 1, 0), Some(4));
        assert_eq!(owner(&w, 0), (1, 4));
    }

    #[test]
    fn host_confirmed_death_silences() {
        let w = Mem::new();
        claim(&w, 0, 0);
        let e = claim(&w, 1, 0).unwrap();
        w.store(offset(0, word::DEAD), e - 1);
        assert!(
            !peer_silenced(&w, 0, e),
            "a death confirmed for an older claim"
        );
        w.store(offset(0, word::DEAD), e);
        assert!(peer_silenced(&w, 0, e));
    }

    #[test]
    fn racing_claims_agree_on_one_owner() {
        // Home reclaims while the peer claims, every interleaving of the two
        // read-compute-store-fence-check sequences: never two owners.
        for order in 0..6 {
            let w = Mem::new();
            claim(&w, 0, 0);
            let e = claim(&w, 1, 0).unwrap();
            set(&w, 1, word::RELEASED[0], e);
            // Each side reads the epochs first (possibly stale), then stores, then checks.
            let (e0, e1) = match order % 3 {
                0 => (next_epoch(&w, 0), next_epoch(&w, 0)),
                1 => {
                    let e0 = next_epoch(&w, 0);
                    set(&w, 0, word::CLAIM[0], e0);
                    (e0, next_epoch(&w, 0))
                }
                _ => {
                    let e1 = next_epoch(&w, 0);
                    set(&w, 1, word::CLAIM[0], e1);
                    (next_epoch(&w, 0), e1)
                }
            };
            if order < 3 {
                set(&w, 0, word::CLAIM[0], e0);
                set(&w, 1, word::CLAIM[0], e1);
            } else {
                set(&w, 1, word::CLAIM[0], e1);
                set(&w, 0, word::CLAIM[0], e0);
            }
            let home = holds(&w, 0, 0, e0);
            let peer_holds = holds(&w, 1, 0, e1);
            assert!(!(home && peer_holds), "order {order}: two owners");
            assert!(home || peer_holds, "order {order}: no owner");
        }
    }

    #[test]
    fn announcement_round_trip_and_torn() {
        let w = Mem::new();
        assert_eq!(announcement(&w, 1), None);
        announce(
            &w,
            1,
            (AREAS, 1 << 20),
            [10, 77, 0, 11],
            [2, 0, 0, 0, 0, 0xb],
        );
        assert_eq!(
            announcement(&w, 1),
            Some((AREAS, 1 << 20, [10, 77, 0, 11], [2, 0, 0, 0, 0, 0xb]))
        );
        set(&w, 1, word::LOG_LEN, 5);
        assert_eq!(announcement(&w, 1), None, "a changed word breaks the seal");
    }

    fn conn(i: u16) -> conn::Conn {
        conn::Conn {
            local_ip: [10, 77, 0, 10],
            local_port: 10809,
            remote_ip: [10, 77, 0, 1],
            remote_port: 40000 + i,
        }
    }

    #[test]
    fn connection_table_round_trip_and_updates() {
        let w = Mem::new();
        let mut t = conn::Table::start(&w, 0);
        let started = get(&w, 0, word::CONN_UPDATES);
        assert!(conn::connections(&w, 0).is_empty());
        assert!(t.sync(&w, 5, &[conn(1), conn(2)]));
        assert!(!t.sync(&w, 6, &[conn(1), conn(2)]), "nothing changed");
        assert_eq!(conn::connections(&w, 0), [conn(1), conn(2)]);
        assert_eq!(conn::entry(&w, 0, 0), Some((conn(1), 5)));
        assert_eq!(get(&w, 0, word::CONN_OPEN), 2);
        assert_eq!(get(&w, 0, word::CONN_UPDATES), started + 1);
        // conn 1 closes, conn 3 opens: it takes the freed entry; conn 2 stays where it was.
        assert!(t.sync(&w, 7, &[conn(2), conn(3)]));
        assert_eq!(conn::entry(&w, 0, 0), Some((conn(3), 7)));
        assert_eq!(conn::entry(&w, 0, 1), Some((conn(2), 5)));
        assert!(
            conn::connections(&w, 1).is_empty(),
            "the peer's table is untouched"
        );
        // The words round-trip through the entry encoding.
        let c = conn(9);
        let (ips, ports) = c.words();
        assert_eq!(conn::Conn::from_words(ips, ports), Some(c));
        assert_eq!(conn::Conn::from_words(ips, ports | 1 << 40), None);
        // A new life starts empty.
        conn::Table::start(&w, 0);
        assert!(conn::connections(&w, 0).is_empty());
        assert_eq!(get(&w, 0, word::CONN_OPEN), 0);
    }

    #[test]
    fn torn_or_moved_entries_read_as_empty() {
        let w = Mem::new();
        let mut t = conn::Table::start(&w, 1);
        t.sync(&w, 1, &[conn(1), conn(2)]);
        // The node died between the words and the seal of entry 1: a word of a newer
        // connection over the old seal.
        let at = conn::entry_offset(1, 1);
        w.store(at + conn::PORTS, conn(7).words().1);
        assert_eq!(conn::connections(&w, 1), [conn(1)]);
        // A sealed entry copied to another slot or the other node's table is not valid there.
        let e0 = conn::entry_offset(1, 0);
        for off in [conn::IPS, conn::PORTS, conn::SINCE, conn::SEAL] {
            w.store(conn::entry_offset(1, 5) + off, w.load(e0 + off));
            w.store(conn::entry_offset(0, 0) + off, w.load(e0 + off));
        }
        assert_eq!(conn::entry(&w, 1, 5), None);
        assert_eq!(conn::entry(&w, 0, 0), None);
        assert_eq!(conn::entry(&w, 1, conn::ENTRIES), None, "out of range");
        assert_eq!(conn::entry(&w, 2, 0), None, "no third node");
    }

    #[test]
    fn more_connections_than_entries_are_counted() {
        let w = Mem::new();
        let mut t = conn::Table::start(&w, 0);
        let many: std::vec::Vec<_> = (0..conn::ENTRIES as u16 + 5).map(conn).collect();
        t.sync(&w, 1, &many);
        assert_eq!(conn::connections(&w, 0).len(), conn::ENTRIES);
        assert_eq!(get(&w, 0, word::CONN_OPEN), many.len() as u64);
        assert_eq!(get(&w, 0, word::CONN_UNRECORDED), 5);
        assert_eq!(t.unrecorded(), 5);
        // Two recorded ones close: two of the unrecorded take their entries.
        let fewer = &many[2..];
        t.sync(&w, 2, fewer);
        let now = conn::connections(&w, 0);
        assert_eq!(now.len(), conn::ENTRIES);
        assert!(now.iter().all(|c| fewer.contains(c)));
        assert_eq!(get(&w, 0, word::CONN_UNRECORDED), 3);
        // Nothing written beyond the node's own table.
        assert!(conn::connections(&w, 1).is_empty());
        assert_eq!(get(&w, 1, word::CONN_OPEN), 0);
    }

    #[test]
    fn state_and_request_words() {
        for s in [
            State::Absent,
            State::Booting,
            State::Serving,
            State::Covering,
            State::Fenced,
            State::Standby,
            State::TakingOver,
        ] {
            assert_eq!(State::from_word(s as u64), Some(s));
        }
        assert_eq!(State::from_word(99), None);
        assert_eq!(Request::from_word(2), Request::Giveback);
        assert_eq!(Request::from_word(7), Request::None);
    }
}
