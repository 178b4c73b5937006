//! One node's side of the failover pair protocol (FORMATS.md, "Pair region"), as a state
//! machine over the shared region's control words ([`Words`]) and an injected clock.
//!
//! Each turn of the service loop the node beats, checks that it still holds its own disks
//! (if not, it was fenced: the kernel restarts in place, which resets every device so none
//! of its I/O is left in flight, and only then acknowledges the fence), watches its peer's
//! beat and the host's requests, and drives a takeover or a giveback one step at a time, so
//! that its own clients keep being served meanwhile. What to do with the storage services
//! and the network is returned as an [`Action`]; what happened along the way (each
//! `TANDEM TAKEOVER`/`GIVEBACK` step, warnings) is reported as [`Event`]s, in order, for the
//! kernel to print.
//!
//! Split brain: a node writes a disk (or its log, or replies to a client) only in a turn
//! that began with it holding that disk's claim; a takeover touches the peer's disks and log
//! only after the peer acknowledged the claim (it stopped, and its devices were reset) or
//! the host confirmed the peer's QEMU dead after the claim. FORMATS.md has the argument.
//!
//! The kernel (`src/kernel/pair.rs`) only maps the words (the ivshmem BAR) and carries out
//! the actions; the tests below drive two nodes over the same words in memory.

use core::fmt;

use super::region::{self, word, Header, RegionError, Request, State, Words};
use crate::cmdline::PairConfig;

/// How long a node waits for a peer it has not seen alive since it started before taking
/// it over (at least `pair.timeout_ms`): both nodes start together, and a peer whose QEMU
/// starts later on a loaded host must not lose its disks while it boots.
pub const BOOT_GRACE_MS: u64 = 10_000;

/// What the service loop must do for the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    /// This node lost its own disks to its peer: stop everything and restart in place; the
    /// restart acknowledges `epoch` ([`acknowledge_fence`]) once the devices are quiesced.
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
    /// the next turns report whether its I/O is done (`covering_idle`).
    Release {
        ip: [u8; 4],
    },
    /// The claim on the peer's disks was lost: drop the covering service at once.
    DropCovering {
        ip: [u8; 4],
    },
}

/// Why a takeover started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The host asked (`Request::Takeover`).
    Requested,
    /// The peer's heartbeat did not move for this many milliseconds.
    Silent { ms: u64 },
}

/// How the peer was found silenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// It acknowledged the claim (its devices are reset).
    Ack,
    /// The host confirmed its QEMU dead after the claim.
    Dead,
}

/// One step of a takeover or a giveback (a `TANDEM TAKEOVER|GIVEBACK ... step=...` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Claimed the peer's disks.
    Claim { epoch: u64, why: Why },
    /// The peer is silenced: its disks and log may be touched.
    Silenced {
        epoch: u64,
        via: Via,
        waited_ms: u64,
    },
    /// The peer's log is replayed.
    Replayed,
    /// Serving the peer's exports on its address.
    Serving { epoch: u64 },
    /// Giving back: the covering service shuts down.
    ReleaseStart { epoch: u64 },
    /// Given back: the claim is released.
    Released { epoch: u64 },
}

impl Step {
    /// `TAKEOVER` or `GIVEBACK`.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::ReleaseStart { .. } | Step::Released { .. } => "GIVEBACK",
            _ => "TAKEOVER",
        }
    }

    /// The `step=` word.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Claim { .. } => "claim",
            Step::Silenced { .. } => "silenced",
            Step::Replayed => "replayed",
            Step::Serving { .. } => "serving",
            Step::ReleaseStart { .. } => "release-start",
            Step::Released { .. } => "released",
        }
    }
}

/// The words after `step=NAME` (each with its leading space; none for `replayed`).
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Step::Claim { epoch, why } => {
                write!(f, " epoch={epoch} why=\"")?;
                match why {
                    Why::Requested => write!(f, "requested")?,
                    Why::Silent { ms } => write!(f, "peer silent {ms} ms")?,
                }
                write!(f, "\"")
            }
            Step::Silenced {
                epoch,
                via,
                waited_ms,
            } => {
                let via = match via {
                    Via::Ack => "ack",
                    Via::Dead => "dead",
                };
                write!(f, " epoch={epoch} via={via} waited_ms={waited_ms}")
            }
            Step::Replayed => Ok(()),
            Step::Serving { epoch } | Step::ReleaseStart { epoch } | Step::Released { epoch } => {
                write!(f, " epoch={epoch}")
            }
        }
    }
}

/// What happened during a call, in order, for the kernel to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A takeover or giveback step.
    Step(Step),
    /// At join: the peer holds this node's disks under `epoch`; this node stands by.
    Standby { epoch: u64 },
    /// At join: a previous life of this node claimed the peer's disks under `epoch`.
    ResumeTakeover { epoch: u64 },
    /// A host request taken (and marked done) with its sequence number.
    HostRequest { request: Request, seq: u64 },
    /// The claim on the peer's disks lost a race: no takeover.
    ClaimLostRace,
    /// The claim `epoch` on the peer's disks was overtaken before the peer was silenced.
    ClaimOvertaken { epoch: u64 },
    /// The claim on the peer's disks was lost while covering: its exports are dropped.
    LostPeerClaim,
    /// The peer's address is unknown (no announcement, no `pair.peer_ip`).
    PeerAddressUnknown,
}

/// The takeover of the peer, one step per turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
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

/// How this node sees the covering service (the one serving the peer's disks) this turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Covering {
    /// Its replay of the peer's log is done (or there is none).
    pub replayed: bool,
    /// None of its I/O is in flight (after a release), or there is none.
    pub idle: bool,
}

/// The words this node watches of its peer and itself, read once at the start of a turn.
struct Watch {
    silent_ms: u64,
    request: Request,
}

/// One node of a pair: what it holds, and where its takeover of the peer stands.
#[derive(Debug, Clone)]
pub struct Protocol {
    /// This node (0 or 1).
    pub me: usize,
    pub cfg: PairConfig,
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

/// Reads the region header (page 0) through the control-word accessor.
pub fn read_header(w: &dyn Words) -> [u8; 80] {
    let mut out = [0u8; 80];
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&w.load(i as u64 * 8).to_le_bytes());
    }
    out
}

/// Called by the restart path after the devices were quiesced: `node` obeys `epoch`.
pub fn acknowledge_fence(w: &dyn Words, node: usize, epoch: u64) {
    w.fence();
    region::set(w, node, word::FENCE_ACK, epoch);
    region::set(w, node, word::STATE, State::Fenced as u64);
}

/// Where a node joins: the region's window and who this node is on the network.
#[derive(Debug, Clone, Copy)]
pub struct Joining {
    /// Bytes of the window the region is mapped in.
    pub window: u64,
    /// This boot's word (any value that changes on every boot; odd, never 0).
    pub boot: u64,
    pub ip: [u8; 4],
    pub mac: [u8; 6],
}

impl Protocol {
    /// Joins the pair over the region `w`. Claims this node's disks unless the peer holds
    /// them; resumes covering the peer if a previous life held its disks.
    pub fn join(
        cfg: PairConfig,
        w: &dyn Words,
        at: Joining,
        now_us: u64,
        report: &mut dyn FnMut(Event),
    ) -> Result<Self, RegionError> {
        let header = Header::parse(&read_header(w), at.window)?;
        let me = usize::from(cfg.node);
        let peer = region::peer(me);
        region::set(w, me, word::BOOT, at.boot);
        region::set(w, me, word::STATE, State::Booting as u64);
        region::set(w, me, word::TIMEOUT_MS, cfg.timeout_ms);
        let beats = region::get(w, me, word::HEARTBEAT) + 1;
        region::set(w, me, word::HEARTBEAT, beats);
        let own_epoch = match region::owner(w, me) {
            (o, epoch) if o == peer => {
                report(Event::Standby { epoch });
                None
            }
            _ => region::claim(w, me, me),
        };
        let area = (header.area_offset[me], header.area_len[me]);
        region::announce(w, me, area, at.ip, at.mac);
        let takeover = match region::owner(w, peer) {
            (o, epoch) if o == me => {
                report(Event::ResumeTakeover { epoch });
                Takeover::Claimed {
                    epoch,
                    since_us: now_us,
                }
            }
            _ => Takeover::Idle,
        };
        Ok(Self {
            me,
            cfg,
            header,
            own_epoch,
            takeover,
            peer_beat: region::get(w, peer, word::HEARTBEAT),
            peer_beat_at_us: now_us,
            peer_seen: false,
            peer_boot_at_takeover: 0,
            beats,
        })
    }

    /// This node's name (`a` or `b`).
    pub fn name(&self) -> char {
        self.cfg.name()
    }

    /// The peer's name.
    pub fn peer_name(&self) -> char {
        if self.cfg.node == 0 {
            'b'
        } else {
            'a'
        }
    }

    fn peer(&self) -> usize {
        region::peer(self.me)
    }

    /// A node's log area in the region: (offset, length).
    pub fn area(&self, node: usize) -> (u64, u64) {
        (self.header.area_offset[node], self.header.area_len[node])
    }

    /// Where the takeover of the peer stands.
    pub fn takeover(&self) -> Takeover {
        self.takeover
    }

    /// The peer's boot word when this node last claimed its disks (0: never).
    pub fn peer_boot_at_takeover(&self) -> u64 {
        self.peer_boot_at_takeover
    }

    /// No takeover or giveback is under way.
    pub fn takeover_idle(&self) -> bool {
        self.takeover == Takeover::Idle
    }

    /// The state this node reports.
    pub fn publish(&self, w: &dyn Words, s: State) {
        region::set(w, self.me, word::STATE, s as u64);
    }

    /// Publishes what the services' logs are doing (for observers: tests, benchmarks).
    pub fn publish_activity(&self, w: &dyn Words, cp_active: bool, replay_left: usize) {
        region::set(w, self.me, word::CP_ACTIVE, u64::from(cp_active));
        region::set(w, self.me, word::REPLAY_LEFT, replay_left as u64);
    }

    /// The peer's address, as announced in the region or configured.
    pub fn peer_ip(&self, w: &dyn Words) -> Option<[u8; 4]> {
        region::announcement(w, self.peer())
            .map(|a| a.2)
            .or(self.cfg.peer_ip)
    }

    /// The covering service is up and serving on the peer's address.
    pub fn covering_serving(&self, w: &dyn Words, report: &mut dyn FnMut(Event)) {
        if let Takeover::Covering { epoch } = self.takeover {
            region::set(w, self.me, word::STATE, State::Covering as u64);
            report(Event::Step(Step::Serving { epoch }));
        }
    }

    /// One turn of the protocol at `now_us` (guest microseconds).
    pub fn poll(
        &mut self,
        w: &dyn Words,
        now_us: u64,
        covering: Covering,
        report: &mut dyn FnMut(Event),
    ) -> Action {
        self.beats += 1;
        region::set(w, self.me, word::HEARTBEAT, self.beats);

        // Our own disks first: a lost claim stops everything before anything else happens.
        if let Some(action) = self.check_own(w) {
            return action;
        }
        let watch = self.watch(w, now_us, report);
        match self.takeover {
            Takeover::Idle => self.idle(w, now_us, &watch, report),
            Takeover::Claimed { epoch, since_us } => {
                self.claimed(w, now_us, epoch, since_us, report)
            }
            Takeover::Replaying { epoch } => self.replaying(w, epoch, covering, report),
            Takeover::Covering { epoch } => self.covering(w, epoch, &watch, report),
            Takeover::Releasing { epoch } => self.releasing(w, epoch, covering, report),
        }
    }

    /// Whether this node still holds its own disks as it believes: fenced if it lost them,
    /// reclaiming if it stood by and they came back.
    fn check_own(&self, w: &dyn Words) -> Option<Action> {
        let me = self.me;
        match self.own_epoch {
            Some(e) if !region::holds(w, me, me, e) => {
                let (_, theirs) = region::owner(w, me);
                Some(Action::Fenced { epoch: theirs })
            }
            None if region::owner(w, me).0 == me => Some(Action::Reclaim),
            _ => None,
        }
    }

    /// The peer's heartbeat (and how long it has been silent), and the host's request.
    fn watch(&mut self, w: &dyn Words, now_us: u64, report: &mut dyn FnMut(Event)) -> Watch {
        let beat = region::get(w, self.peer(), word::HEARTBEAT);
        if beat != self.peer_beat {
            self.peer_beat = beat;
            self.peer_beat_at_us = now_us;
            self.peer_seen = true;
        }
        Watch {
            silent_ms: (now_us - self.peer_beat_at_us) / 1000,
            request: self.take_request(w, report),
        }
    }

    /// A host request not yet carried out, marked done as it is taken.
    fn take_request(&mut self, w: &dyn Words, report: &mut dyn FnMut(Event)) -> Request {
        let seq = region::get(w, self.me, word::REQUEST_SEQ);
        let done = region::get(w, self.me, word::REQUEST_DONE);
        if seq <= done {
            return Request::None;
        }
        let request = Request::from_word(region::get(w, self.me, word::REQUEST));
        region::set(w, self.me, word::REQUEST_DONE, seq);
        report(Event::HostRequest { request, seq });
        request
    }

    /// No takeover: start one if the peer failed (or the host asks) and we serve.
    fn idle(
        &mut self,
        w: &dyn Words,
        now_us: u64,
        watch: &Watch,
        report: &mut dyn FnMut(Event),
    ) -> Action {
        let (me, peer) = (self.me, self.peer());
        // A peer not seen alive since this node started may still be booting (its QEMU
        // started later, on a loaded host): it gets the boot grace first.
        let limit = if self.peer_seen {
            self.cfg.timeout_ms
        } else {
            self.cfg.timeout_ms.max(BOOT_GRACE_MS)
        };
        let failed = watch.silent_ms >= limit;
        let asked = watch.request == Request::Takeover;
        let ours = region::owner(w, peer).0 == me;
        if !((failed || asked) && !ours && self.own_epoch.is_some()) {
            return Action::None;
        }
        let why = if asked {
            Why::Requested
        } else {
            Why::Silent {
                ms: watch.silent_ms,
            }
        };
        self.peer_boot_at_takeover = region::get(w, peer, word::BOOT);
        region::set(w, me, word::STATE, State::TakingOver as u64);
        match region::claim(w, me, peer) {
            Some(epoch) => {
                report(Event::Step(Step::Claim { epoch, why }));
                self.takeover = Takeover::Claimed {
                    epoch,
                    since_us: now_us,
                };
            }
            None => {
                report(Event::ClaimLostRace);
                region::set(w, me, word::STATE, State::Serving as u64);
            }
        }
        Action::None
    }

    /// Claimed: wait until the peer is silenced (or the claim is overtaken).
    fn claimed(
        &mut self,
        w: &dyn Words,
        now_us: u64,
        epoch: u64,
        since_us: u64,
        report: &mut dyn FnMut(Event),
    ) -> Action {
        let (me, peer) = (self.me, self.peer());
        if !region::holds(w, me, peer, epoch) {
            report(Event::ClaimOvertaken { epoch });
            self.takeover = Takeover::Idle;
            return Action::None;
        }
        if !region::peer_silenced(w, peer, epoch) {
            return Action::None;
        }
        let via = if region::get(w, peer, word::FENCE_ACK) >= epoch {
            Via::Ack
        } else {
            Via::Dead
        };
        report(Event::Step(Step::Silenced {
            epoch,
            via,
            waited_ms: (now_us - since_us) / 1000,
        }));
        self.takeover = Takeover::Replaying { epoch };
        Action::StartCovering
    }

    /// The covering service replays the peer's log; once done, take the peer's address.
    fn replaying(
        &mut self,
        w: &dyn Words,
        epoch: u64,
        covering: Covering,
        report: &mut dyn FnMut(Event),
    ) -> Action {
        if !region::holds(w, self.me, self.peer(), epoch) {
            self.takeover = Takeover::Idle;
            return self.drop_covering(w, report);
        }
        if !covering.replayed {
            return Action::None;
        }
        report(Event::Step(Step::Replayed));
        self.takeover = Takeover::Covering { epoch };
        match self.peer_ip(w) {
            Some(ip) => Action::TakeAddress { ip },
            None => {
                report(Event::PeerAddressUnknown);
                Action::None
            }
        }
    }

    /// Covering: give the disks back when asked, or when the peer is back and standing by
    /// (`pair.giveback=auto`).
    fn covering(
        &mut self,
        w: &dyn Words,
        epoch: u64,
        watch: &Watch,
        report: &mut dyn FnMut(Event),
    ) -> Action {
        let peer = self.peer();
        if !region::holds(w, self.me, peer, epoch) {
            self.takeover = Takeover::Idle;
            return self.drop_covering(w, report);
        }
        let back = State::from_word(region::get(w, peer, word::STATE)) == Some(State::Standby)
            && watch.silent_ms < self.cfg.timeout_ms;
        if !(watch.request == Request::Giveback || (self.cfg.giveback_auto && back)) {
            return Action::None;
        }
        report(Event::Step(Step::ReleaseStart { epoch }));
        self.takeover = Takeover::Releasing { epoch };
        match self.peer_ip(w) {
            Some(ip) => Action::Release { ip },
            None => Action::None,
        }
    }

    /// Releasing: once the covering service's I/O is done, release the claim.
    fn releasing(
        &mut self,
        w: &dyn Words,
        epoch: u64,
        covering: Covering,
        report: &mut dyn FnMut(Event),
    ) -> Action {
        if covering.idle {
            let (me, peer) = (self.me, self.peer());
            region::set(w, me, word::RELEASED[peer], epoch);
            region::set(w, me, word::STATE, State::Serving as u64);
            report(Event::Step(Step::Released { epoch }));
            self.takeover = Takeover::Idle;
        }
        Action::None
    }

    fn drop_covering(&self, w: &dyn Words, report: &mut dyn FnMut(Event)) -> Action {
        report(Event::LostPeerClaim);
        match self.peer_ip(w) {
            Some(ip) => Action::DropCovering { ip },
            None => Action::None,
        }
    }
}

#[cfg(test)]
mod tests;
