//! Failover pair membership (`pair=a|b`): this guest's side of the protocol in
//! `unikernel::ha::region`, over the shared region mapped as the ivshmem BAR.
//!
//! Each turn of the service loop the node beats, checks that it still holds its own disks
//! (if not, it was fenced: it restarts in place, which resets every device so none of its
//! I/O is left in flight, and only then acknowledges the fence), watches its peer's beat and
//! the host's requests, and drives a takeover or a giveback one step at a time, so that its
//! own clients keep being served meanwhile. What to do with the storage services and the
//! network is returned as an [`Action`] for the service loop to carry out.
//!
//! Split brain: a node writes a disk (or its log, or replies to a client) only in a turn
//! that began with it holding that disk's claim; a takeover touches the peer's disks and log
//! only after the peer acknowledged the claim (it stopped, and its devices were reset) or
//! the host confirmed the peer's QEMU dead after the claim. FORMATS.md has the argument.

use alloc::format;
use alloc::string::String;

use log::{info, warn};
use unikernel::cmdline::PairConfig;
use unikernel::ha::region::{self, word, Header, Request, State, Words};

use crate::console;
use crate::time::now_us;

/// The region's control words, read and written in place in the BAR.
pub struct Region {
    base: u64,
    len: u64,
}

impl Region {
    /// The control words of a region at `base` (`len` bytes), mapped by discovery.
    pub fn new(base: u64, len: u64) -> Self {
        Self { base, len }
    }
}

impl Words for Region {
    fn load(&self, offset: u64) -> u64 {
        if offset + 8 > self.len {
            return 0;
        }
        // SAFETY: `base..base+len` is the ivshmem BAR, identity-mapped by discovery and kept
        // for the pair's control words (the log areas handed to services start after them);
        // the offset is in bounds and 8-aligned (every control word is).
        unsafe { ((self.base + offset) as *const u64).read_volatile() }
    }

    fn store(&self, offset: u64, value: u64) {
        if offset + 8 > self.len {
            return;
        }
        // SAFETY: as in `load`.
        unsafe { ((self.base + offset) as *mut u64).write_volatile(value) }
    }

    fn fence(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// What the service loop must do for the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    /// This node lost its own disks to its peer: stop everything and restart in place; the
    /// restart acknowledges `epoch` once the devices are quiesced.
    Fenced {
        epoch: u64,
    },
    /// Our disks were given back: restart in place to serve them again.
    Reclaim,
    /// The peer is silenced: start serving its exports from its log (replay starts).
    StartCovering,
    /// The peer's log is replayed: take its address.
    TakeAddress {
        ip: [u8; 4],
    },
    /// Give the peer's disks back: shut the covering service down and drop the address;
    /// call [`Pair::released`] once its I/O is done.
    Release {
        ip: [u8; 4],
    },
    /// The claim on the peer's disks was lost: drop the covering service at once.
    DropCovering {
        ip: [u8; 4],
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takeover {
    Idle,
    /// Claimed the peer's disks; waiting for the peer's ack or the host's death notice.
    Claimed {
        epoch: u64,
        since_us: u64,
    },
    /// Covering service started; its replay runs.
    Replaying {
        epoch: u64,
    },
    /// Serving the peer's exports on its address.
    Covering {
        epoch: u64,
    },
    /// Giving back: waiting for the covering service's I/O to finish.
    Releasing {
        epoch: u64,
    },
}

pub struct Pair {
    pub me: usize,
    pub cfg: PairConfig,
    region: Region,
    pub header: Header,
    /// The epoch this node holds its own disks under (`None`: standby).
    pub own_epoch: Option<u64>,
    takeover: Takeover,
    peer_beat: u64,
    peer_beat_at_us: u64,
    /// Whether the peer's heartbeat has moved since this node started.
    peer_seen: bool,
    /// The peer's boot word when we took it over (a new boot means it came back).
    peer_boot_at_takeover: u64,
    beats: u64,
}

/// How long a node waits for a peer it has not seen alive since it started before taking
/// it over (at least `pair.timeout_ms`): both nodes start together, and a peer whose QEMU
/// starts later on a loaded host must not lose its disks while it boots.
const BOOT_GRACE_MS: u64 = 10_000;

/// Reads the region header through the control-word accessor (the BAR is device memory).
fn read_header(r: &Region) -> [u8; 80] {
    let mut out = [0u8; 80];
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&r.load(i as u64 * 8).to_le_bytes());
    }
    out
}

/// `TANDEM TAKEOVER ...` / `TANDEM GIVEBACK ...` lines: one per step, with the guest time.
fn step(kind: &str, node: char, peer: char, what: &str, extra: &str) {
    console::line(format_args!(
        "TANDEM {kind} node={node} peer={peer} step={what}{extra} t_us={}",
        now_us()
    ));
}

impl Pair {
    /// Joins the pair over the region at `base` (`len` bytes). Claims this node's disks
    /// unless the peer holds them; resumes covering the peer if a previous life held its
    /// disks.
    pub fn join(
        cfg: PairConfig,
        base: u64,
        len: u64,
        ip: [u8; 4],
        mac: [u8; 6],
    ) -> Result<Self, String> {
        let region = Region { base, len };
        let header = Header::parse(&read_header(&region), len)
            .map_err(|e| format!("shared region at {base:#x}: {e}"))?;
        let me = usize::from(cfg.node);
        let peer = region::peer(me);
        let boot = crate::arch::cpu::rdtsc() | 1;
        region::set(&region, me, word::BOOT, boot);
        region::set(&region, me, word::STATE, State::Booting as u64);
        region::set(&region, me, word::TIMEOUT_MS, cfg.timeout_ms);
        let beats = region::get(&region, me, word::HEARTBEAT) + 1;
        region::set(&region, me, word::HEARTBEAT, beats);
        let own_epoch = match region::owner(&region, me) {
            (o, e) if o == peer => {
                info!(
                    "pair: node {} holds our disks (epoch {e}): standby",
                    peer_name(&cfg)
                );
                None
            }
            _ => region::claim(&region, me, me),
        };
        region::announce(
            &region,
            me,
            (header.area_offset[me], header.area_len[me]),
            ip,
            mac,
        );
        let takeover = match region::owner(&region, peer) {
            (o, e) if o == me => {
                info!(
                    "pair: we hold node {}'s disks (epoch {e}) from a previous life",
                    peer_name(&cfg)
                );
                Takeover::Claimed {
                    epoch: e,
                    since_us: now_us(),
                }
            }
            _ => Takeover::Idle,
        };
        let now = now_us();
        Ok(Self {
            me,
            cfg,
            region,
            header,
            own_epoch,
            takeover,
            peer_beat: region::get(&Region { base, len }, peer, word::HEARTBEAT),
            peer_beat_at_us: now,
            peer_seen: false,
            peer_boot_at_takeover: 0,
            beats,
        })
    }

    pub fn name(&self) -> char {
        self.cfg.name()
    }

    fn peer(&self) -> usize {
        region::peer(self.me)
    }

    /// This node's log area in the region: (offset, length).
    pub fn area(&self, node: usize) -> (u64, u64) {
        (self.header.area_offset[node], self.header.area_len[node])
    }

    /// The state this node reports.
    pub fn publish(&self, s: State) {
        region::set(&self.region, self.me, word::STATE, s as u64);
        console::line(format_args!(
            "TANDEM PAIR node={} state={} own_epoch={} t_us={}",
            self.name(),
            s.name(),
            self.own_epoch.unwrap_or(0),
            now_us()
        ));
    }

    /// Called by the restart path after the devices were quiesced: this node obeys `epoch`.
    pub fn acknowledge_fence(base: u64, len: u64, node: usize, epoch: u64) {
        let r = Region { base, len };
        r.fence();
        region::set(&r, node, word::FENCE_ACK, epoch);
        region::set(&r, node, word::STATE, State::Fenced as u64);
    }

    /// The peer's address, as announced in the region or configured.
    fn peer_ip(&self) -> Option<[u8; 4]> {
        region::announcement(&self.region, self.peer())
            .map(|a| a.2)
            .or(self.cfg.peer_ip)
    }

    /// One turn of the protocol. `covering_replayed` says whether the covering service (if
    /// any) has finished replaying; `covering_idle` whether its I/O is done after a release.
    pub fn poll(&mut self, covering_replayed: bool, covering_idle: bool) -> Action {
        let now = now_us();
        self.beats += 1;
        region::set(&self.region, self.me, word::HEARTBEAT, self.beats);
        let me = self.me;
        let peer = self.peer();

        // Our own disks first: a lost claim stops everything before anything else happens.
        match self.own_epoch {
            Some(e) if !region::holds(&self.region, me, me, e) => {
                let (_, theirs) = region::owner(&self.region, me);
                return Action::Fenced { epoch: theirs };
            }
            None if region::owner(&self.region, me).0 == me => return Action::Reclaim,
            _ => {}
        }

        let beat = region::get(&self.region, peer, word::HEARTBEAT);
        if beat != self.peer_beat {
            self.peer_beat = beat;
            self.peer_beat_at_us = now;
            self.peer_seen = true;
        }
        let silent_ms = (now - self.peer_beat_at_us) / 1000;
        let request = self.take_request();

        match self.takeover {
            Takeover::Idle => {
                // A peer not seen alive since this node started may still be booting (its
                // QEMU started later, on a loaded host): it gets the boot grace first.
                let limit = if self.peer_seen {
                    self.cfg.timeout_ms
                } else {
                    self.cfg.timeout_ms.max(BOOT_GRACE_MS)
                };
                let failed = silent_ms >= limit;
                let asked = request == Request::Takeover;
                let ours = region::owner(&self.region, peer).0 == me;
                if (failed || asked) && !ours && self.own_epoch.is_some() {
                    let why = if asked {
                        String::from("requested")
                    } else {
                        format!("peer silent {silent_ms} ms")
                    };
                    self.peer_boot_at_takeover = region::get(&self.region, peer, word::BOOT);
                    region::set(&self.region, me, word::STATE, State::TakingOver as u64);
                    match region::claim(&self.region, me, peer) {
                        Some(epoch) => {
                            step(
                                "TAKEOVER",
                                self.name(),
                                peer_name(&self.cfg),
                                "claim",
                                &format!(" epoch={epoch} why=\"{why}\""),
                            );
                            self.takeover = Takeover::Claimed {
                                epoch,
                                since_us: now,
                            };
                        }
                        None => {
                            warn!("pair: claim on the peer's disks lost a race; not taking over");
                            region::set(&self.region, me, word::STATE, State::Serving as u64);
                        }
                    }
                }
                Action::None
            }
            Takeover::Claimed { epoch, since_us } => {
                if !region::holds(&self.region, me, peer, epoch) {
                    warn!("pair: claim {epoch} on the peer's disks was overtaken; standing down");
                    self.takeover = Takeover::Idle;
                    return Action::None;
                }
                if region::peer_silenced(&self.region, peer, epoch) {
                    let via = if region::get(&self.region, peer, word::FENCE_ACK) >= epoch {
                        "ack"
                    } else {
                        "dead"
                    };
                    step(
                        "TAKEOVER",
                        self.name(),
                        peer_name(&self.cfg),
                        "silenced",
                        &format!(
                            " epoch={epoch} via={via} waited_ms={}",
                            (now - since_us) / 1000
                        ),
                    );
                    self.takeover = Takeover::Replaying { epoch };
                    return Action::StartCovering;
                }
                Action::None
            }
            Takeover::Replaying { epoch } => {
                if !region::holds(&self.region, me, peer, epoch) {
                    self.takeover = Takeover::Idle;
                    return self.drop_covering();
                }
                if covering_replayed {
                    step(
                        "TAKEOVER",
                        self.name(),
                        peer_name(&self.cfg),
                        "replayed",
                        "",
                    );
                    self.takeover = Takeover::Covering { epoch };
                    if let Some(ip) = self.peer_ip() {
                        return Action::TakeAddress { ip };
                    }
                    warn!("pair: the peer's address is unknown (no announcement, no pair.peer_ip)");
                }
                Action::None
            }
            Takeover::Covering { epoch } => {
                if !region::holds(&self.region, me, peer, epoch) {
                    self.takeover = Takeover::Idle;
                    return self.drop_covering();
                }
                let back = region::State::from_word(region::get(&self.region, peer, word::STATE))
                    == Some(State::Standby)
                    && silent_ms < self.cfg.timeout_ms;
                if request == Request::Giveback || (self.cfg.giveback_auto && back) {
                    step(
                        "GIVEBACK",
                        self.name(),
                        peer_name(&self.cfg),
                        "release-start",
                        &format!(" epoch={epoch}"),
                    );
                    self.takeover = Takeover::Releasing { epoch };
                    if let Some(ip) = self.peer_ip() {
                        return Action::Release { ip };
                    }
                }
                Action::None
            }
            Takeover::Releasing { epoch } => {
                if covering_idle {
                    region::set(&self.region, me, word::RELEASED[peer], epoch);
                    region::set(&self.region, me, word::STATE, State::Serving as u64);
                    step(
                        "GIVEBACK",
                        self.name(),
                        peer_name(&self.cfg),
                        "released",
                        &format!(" epoch={epoch}"),
                    );
                    self.takeover = Takeover::Idle;
                }
                Action::None
            }
        }
    }

    fn drop_covering(&self) -> Action {
        warn!("pair: lost the claim on the peer's disks; dropping its exports");
        match self.peer_ip() {
            Some(ip) => Action::DropCovering { ip },
            None => Action::None,
        }
    }

    /// The covering service is up and serving on the peer's address.
    pub fn covering_serving(&self) {
        if let Takeover::Covering { epoch } = self.takeover {
            region::set(&self.region, self.me, word::STATE, State::Covering as u64);
            step(
                "TAKEOVER",
                self.name(),
                peer_name(&self.cfg),
                "serving",
                &format!(" epoch={epoch}"),
            );
        }
    }

    /// A host request not yet carried out, marked done as it is taken.
    fn take_request(&mut self) -> Request {
        let seq = region::get(&self.region, self.me, word::REQUEST_SEQ);
        let done = region::get(&self.region, self.me, word::REQUEST_DONE);
        if seq <= done {
            return Request::None;
        }
        let r = Request::from_word(region::get(&self.region, self.me, word::REQUEST));
        region::set(&self.region, self.me, word::REQUEST_DONE, seq);
        info!("pair: host request {r:?} (seq {seq})");
        r
    }

    /// Publishes what the services' logs are doing (for observers: tests, benchmarks).
    pub fn publish_activity(&self, cp_active: bool, replay_left: usize) {
        region::set(&self.region, self.me, word::CP_ACTIVE, u64::from(cp_active));
        region::set(&self.region, self.me, word::REPLAY_LEFT, replay_left as u64);
    }

    /// No takeover or giveback is under way.
    pub fn takeover_idle(&self) -> bool {
        self.takeover == Takeover::Idle
    }
}

fn peer_name(cfg: &PairConfig) -> char {
    if cfg.node == 0 {
        'b'
    } else {
        'a'
    }
}
