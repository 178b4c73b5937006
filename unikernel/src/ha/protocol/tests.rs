//! Two nodes over one region in memory, driven turn by turn with a clock the test sets.

use std::vec;
use std::vec::Vec;

use zerocopy::IntoBytes;

use super::*;
use crate::ha::region::{offset, MemWords, AREAS};

const SIZE: u64 = 8 << 20;
const IP: [[u8; 4]; 2] = [[10, 0, 0, 1], [10, 0, 0, 2]];
const MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]];
/// Milliseconds in guest microseconds.
const MS: u64 = 1000;

/// The region's header and control page, as the host's file and the guests' BAR hold them.
type Mem = MemWords;

/// What the tests do to the region besides the protocol: format it, and act as the host.
trait TestRegion {
    /// A region freshly formatted by the host.
    fn formatted() -> Self;
    fn get(&self, node: usize, w: u64) -> u64;
    fn set(&self, node: usize, w: u64, v: u64);
    fn state(&self, node: usize) -> Option<State>;
    /// The host asks `node` for `r` (as `tandem pair takeover|giveback` does).
    fn request(&self, node: usize, r: Request);
}

impl TestRegion for Mem {
    fn formatted() -> Self {
        let m = Mem::new();
        let h = Header::new(SIZE, 0x7a).unwrap();
        for (i, chunk) in h.as_bytes().chunks_exact(8).enumerate() {
            m.store(i as u64 * 8, u64::from_le_bytes(chunk.try_into().unwrap()));
        }
        m
    }

    fn get(&self, node: usize, w: u64) -> u64 {
        self.load(offset(node, w))
    }

    fn set(&self, node: usize, w: u64, v: u64) {
        self.store(offset(node, w), v)
    }

    fn state(&self, node: usize) -> Option<State> {
        State::from_word(self.get(node, word::STATE))
    }

    fn request(&self, node: usize, r: Request) {
        self.set(node, word::REQUEST, r as u64);
        self.set(
            node,
            word::REQUEST_SEQ,
            self.get(node, word::REQUEST_SEQ) + 1,
        );
    }
}

fn cfg(node: u8) -> PairConfig {
    PairConfig {
        node,
        timeout_ms: 1000,
        giveback_auto: true,
        ..PairConfig::default()
    }
}

fn join_with(w: &Mem, cfg: PairConfig, now: u64) -> (Protocol, Vec<Event>) {
    let n = usize::from(cfg.node);
    let mut events = Vec::new();
    let at = Joining {
        window: SIZE,
        boot: 0x1001 + n as u64 * 2,
        ip: IP[n],
        mac: MAC[n],
    };
    let p = Protocol::join(cfg, w, at, now, &mut |e| events.push(e)).unwrap();
    (p, events)
}

fn join(w: &Mem, node: u8, now: u64) -> Protocol {
    join_with(w, cfg(node), now).0
}

fn poll(p: &mut Protocol, w: &Mem, now: u64, covering: Covering) -> (Action, Vec<Event>) {
    let mut events = Vec::new();
    let a = p.poll(w, now, covering, &mut |e| events.push(e));
    (a, events)
}

fn turn(p: &mut Protocol, w: &Mem, now: u64) -> (Action, Vec<Event>) {
    poll(p, w, now, Covering::default())
}

/// Both nodes joined at 0 and beat once at 1 ms (each has seen the other alive).
fn pair() -> (Mem, Protocol, Protocol) {
    let w = Mem::formatted();
    let mut a = join(&w, 0, 0);
    let mut b = join(&w, 1, 0);
    turn(&mut a, &w, MS);
    turn(&mut b, &w, MS);
    turn(&mut a, &w, 2 * MS);
    turn(&mut b, &w, 2 * MS);
    (w, a, b)
}

/// `b` has claimed `a`'s disks at `t` (peer silent) and seen `a` acknowledge: covering
/// service started.
fn b_took_over_a() -> (Mem, Protocol, Protocol, u64) {
    let (w, mut a, mut b) = pair();
    let t = 2 * MS + 1000 * MS;
    let (action, events) = turn(&mut b, &w, t);
    assert_eq!(action, Action::None);
    let epoch = match events[..] {
        [Event::Step(Step::Claim { epoch, .. })] => epoch,
        _ => panic!("{events:?}"),
    };
    assert_eq!(turn(&mut a, &w, t + MS).0, Action::Fenced { epoch });
    acknowledge_fence(&w, 0, epoch);
    assert_eq!(turn(&mut b, &w, t + 2 * MS).0, Action::StartCovering);
    (w, a, b, t + 2 * MS)
}

#[test]
fn join_claims_own_disks_and_announces() {
    let w = Mem::formatted();
    let (a, events) = join_with(&w, cfg(0), 0);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(a.own_epoch, Some(1));
    assert_eq!(region::owner(&w, 0), (0, 1));
    assert_eq!(w.state(0), Some(State::Booting));
    assert_eq!(w.get(0, word::HEARTBEAT), 1);
    assert_eq!(w.get(0, word::BOOT), 0x1001);
    assert_eq!(w.get(0, word::TIMEOUT_MS), 1000);
    assert_eq!(
        region::announcement(&w, 0),
        Some((a.area(0).0, a.area(0).1, IP[0], MAC[0]))
    );
    assert_eq!(a.area(0).0, AREAS);
    assert!(a.takeover_idle());
    assert_eq!((a.name(), a.peer_name()), ('a', 'b'));
}

#[test]
fn join_refuses_a_damaged_header() {
    let w = Mem::formatted();
    w.store(8, w.load(8) ^ 1);
    let at = Joining {
        window: SIZE,
        boot: 1,
        ip: IP[0],
        mac: MAC[0],
    };
    let r = Protocol::join(cfg(0), &w, at, 0, &mut |_| {});
    assert!(r.is_err());
    assert_eq!(w.get(0, word::HEARTBEAT), 0, "nothing written");
}

#[test]
fn join_stands_by_while_the_peer_holds_our_disks() {
    let (w, _a, _b, _) = b_took_over_a();
    // `a` restarts (a new life) while `b` covers for it.
    let (a, events) = join_with(&w, cfg(0), 0);
    assert_eq!(a.own_epoch, None);
    assert_eq!(events, [Event::Standby { epoch: 2 }]);
    assert_eq!(region::owner(&w, 0), (1, 2), "the claim is left alone");
}

#[test]
fn join_resumes_a_takeover_of_a_previous_life() {
    let (w, _a, _b, _) = b_took_over_a();
    let (b, events) = join_with(&w, cfg(1), 50 * MS);
    assert_eq!(events, [Event::ResumeTakeover { epoch: 2 }]);
    assert_eq!(
        b.takeover(),
        Takeover::Claimed {
            epoch: 2,
            since_us: 50 * MS
        }
    );
}

#[test]
fn a_beating_peer_is_never_taken_over() {
    let (w, mut a, mut b) = pair();
    for i in 3..5000 {
        assert_eq!(turn(&mut a, &w, i * MS), (Action::None, vec![]));
        assert_eq!(turn(&mut b, &w, i * MS), (Action::None, vec![]));
    }
    assert_eq!(
        w.get(0, word::HEARTBEAT),
        3 + 4997,
        "joined, two turns, then these"
    );
    assert_eq!(region::owner(&w, 0), (0, 1));
    assert_eq!(region::owner(&w, 1), (1, 1));
}

#[test]
fn a_peer_silent_past_the_timeout_is_claimed() {
    let (w, mut a, mut b) = pair();
    // `a` last beat at 2 ms; `b` saw it then. Just short of the timeout: nothing.
    assert_eq!(turn(&mut b, &w, 2 * MS + 999 * MS).0, Action::None);
    assert!(b.takeover_idle());
    let (action, events) = turn(&mut b, &w, 2 * MS + 1000 * MS);
    assert_eq!(
        action,
        Action::None,
        "the claim only; the peer must be silenced first"
    );
    let claim = Step::Claim {
        epoch: 2,
        why: Why::Silent { ms: 1000 },
    };
    assert_eq!(events, [Event::Step(claim)]);
    assert_eq!(claim.to_string(), " epoch=2 why=\"peer silent 1000 ms\"");
    assert_eq!((claim.kind(), claim.name()), ("TAKEOVER", "claim"));
    assert_eq!(region::owner(&w, 0), (1, 2));
    assert_eq!(w.state(1), Some(State::TakingOver));
    assert_eq!(b.peer_boot_at_takeover(), 0x1001);
    assert!(!b.takeover_idle());
    // `a` is not silenced yet: `b` waits.
    assert_eq!(turn(&mut b, &w, 2 * MS + 2000 * MS), (Action::None, vec![]));
    let _ = &mut a;
}

#[test]
fn a_peer_never_seen_gets_the_boot_grace() {
    let w = Mem::formatted();
    let mut a = join(&w, 0, 0);
    // `b` never starts: `a` waits the boot grace, not the timeout.
    assert_eq!(turn(&mut a, &w, 1000 * MS), (Action::None, vec![]));
    assert_eq!(
        turn(&mut a, &w, (BOOT_GRACE_MS - 1) * MS),
        (Action::None, vec![])
    );
    let (_, events) = turn(&mut a, &w, BOOT_GRACE_MS * MS);
    assert_eq!(
        events,
        [Event::Step(Step::Claim {
            epoch: 1,
            why: Why::Silent { ms: BOOT_GRACE_MS }
        })]
    );
}

#[test]
fn a_timeout_above_the_boot_grace_is_kept() {
    let w = Mem::formatted();
    let long = PairConfig {
        timeout_ms: BOOT_GRACE_MS * 2,
        ..cfg(0)
    };
    let (mut a, _) = join_with(&w, long, 0);
    assert_eq!(turn(&mut a, &w, BOOT_GRACE_MS * MS).0, Action::None);
    assert!(a.takeover_idle());
    turn(&mut a, &w, 2 * BOOT_GRACE_MS * MS);
    assert!(!a.takeover_idle());
}

#[test]
fn the_host_asks_for_a_takeover_of_a_live_peer() {
    let (w, _a, mut b) = pair();
    w.request(1, Request::Takeover);
    let (_, events) = turn(&mut b, &w, 3 * MS);
    assert_eq!(
        events,
        [
            Event::HostRequest {
                request: Request::Takeover,
                seq: 1
            },
            Event::Step(Step::Claim {
                epoch: 2,
                why: Why::Requested
            }),
        ]
    );
    assert_eq!(w.get(1, word::REQUEST_DONE), 1, "taken once");
    let (_, events) = turn(&mut b, &w, 4 * MS);
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn a_standby_node_never_takes_over() {
    let (w, _a, _b, t) = b_took_over_a();
    let (mut a, _) = join_with(&w, cfg(0), t);
    w.request(0, Request::Takeover);
    let (action, events) = turn(&mut a, &w, t + 100_000 * MS);
    assert_eq!(action, Action::None);
    assert_eq!(
        events,
        [Event::HostRequest {
            request: Request::Takeover,
            seq: 1
        }]
    );
    assert!(a.takeover_idle());
}

#[test]
fn a_claim_that_loses_the_race_stands_down() {
    let (w, _a, mut b) = pair();
    // A release word at the top (only corruption or a racing giveback writes one) makes
    // `b`'s claim on `a`'s disks fail the check after the fence.
    w.set(1, word::RELEASED[0], u64::MAX);
    let (_, events) = turn(&mut b, &w, 2 * MS + 1000 * MS);
    assert_eq!(events, [Event::ClaimLostRace]);
    assert_eq!(w.state(1), Some(State::Serving));
    assert!(b.takeover_idle());
}

#[test]
fn a_fenced_node_is_told_the_epoch_and_its_ack_silences_it() {
    let (w, mut a, mut b) = pair();
    turn(&mut b, &w, 2 * MS + 1000 * MS);
    // `a` was stalled, not dead: its next turn finds its claim beaten.
    assert_eq!(turn(&mut a, &w, 1003 * MS).0, Action::Fenced { epoch: 2 });
    // Not silenced until the restart acknowledges.
    assert_eq!(turn(&mut b, &w, 1004 * MS).0, Action::None);
    acknowledge_fence(&w, 0, 2);
    assert_eq!(w.state(0), Some(State::Fenced));
    let (action, events) = turn(&mut b, &w, 1010 * MS);
    assert_eq!(action, Action::StartCovering);
    let silenced = Step::Silenced {
        epoch: 2,
        via: Via::Ack,
        waited_ms: 8,
    };
    assert_eq!(events, [Event::Step(silenced)]);
    assert_eq!(silenced.to_string(), " epoch=2 via=ack waited_ms=8");
    assert_eq!(b.takeover(), Takeover::Replaying { epoch: 2 });
}

#[test]
fn the_host_confirming_death_silences_the_peer() {
    let (w, _a, mut b) = pair();
    turn(&mut b, &w, 1002 * MS);
    w.set(0, word::DEAD, 1);
    assert_eq!(
        turn(&mut b, &w, 1100 * MS).0,
        Action::None,
        "an older epoch's death"
    );
    w.set(0, word::DEAD, 2);
    let (action, events) = turn(&mut b, &w, 1502 * MS);
    assert_eq!(action, Action::StartCovering);
    assert_eq!(
        events,
        [Event::Step(Step::Silenced {
            epoch: 2,
            via: Via::Dead,
            waited_ms: 500
        })]
    );
}

#[test]
fn an_overtaken_claim_stands_down() {
    let (w, mut a, mut b) = pair();
    turn(&mut b, &w, 1002 * MS);
    // `a` (alive after all) claims its own disks again above `b`'s claim, as a restarted
    // `a` reclaiming after a giveback would.
    region::claim(&w, 0, 0);
    let (action, events) = turn(&mut b, &w, 1003 * MS);
    assert_eq!(action, Action::None);
    assert_eq!(events, [Event::ClaimOvertaken { epoch: 2 }]);
    assert!(b.takeover_idle());
    let _ = &mut a;
}

#[test]
fn replay_then_the_peers_address() {
    let (w, _a, mut b, t) = b_took_over_a();
    let replaying = Covering {
        replayed: false,
        idle: false,
    };
    assert_eq!(poll(&mut b, &w, t + MS, replaying), (Action::None, vec![]));
    let replayed = Covering {
        replayed: true,
        idle: false,
    };
    let (action, events) = poll(&mut b, &w, t + 2 * MS, replayed);
    assert_eq!(action, Action::TakeAddress { ip: IP[0] });
    assert_eq!(events, [Event::Step(Step::Replayed)]);
    assert_eq!(Step::Replayed.to_string(), "");
    assert_eq!(b.takeover(), Takeover::Covering { epoch: 2 });
    let mut events = Vec::new();
    b.covering_serving(&w, &mut |e| events.push(e));
    assert_eq!(events, [Event::Step(Step::Serving { epoch: 2 })]);
    assert_eq!(w.state(1), Some(State::Covering));
}

#[test]
fn the_peers_address_comes_from_its_announcement_or_the_configuration() {
    let (w, _a, mut b, t) = b_took_over_a();
    w.set(0, word::ANNOUNCE_CRC, 0);
    let replayed = Covering {
        replayed: true,
        idle: false,
    };
    let (action, events) = poll(&mut b, &w, t + MS, replayed);
    assert_eq!(action, Action::None);
    assert_eq!(
        events,
        [Event::Step(Step::Replayed), Event::PeerAddressUnknown]
    );
    b.cfg.peer_ip = Some([192, 0, 2, 9]);
    assert_eq!(b.peer_ip(&w), Some([192, 0, 2, 9]));
}

#[test]
fn a_lost_claim_drops_the_covering_service() {
    for replayed in [false, true] {
        let (w, _a, mut b, t) = b_took_over_a();
        let c = Covering {
            replayed,
            idle: false,
        };
        poll(&mut b, &w, t + MS, c);
        // Someone released `b`'s claim behind its back (only a damaged region does).
        w.set(1, word::RELEASED[0], 2);
        let (action, events) = poll(&mut b, &w, t + 2 * MS, c);
        assert_eq!(action, Action::DropCovering { ip: IP[0] });
        assert_eq!(events, [Event::LostPeerClaim]);
        assert!(b.takeover_idle());
    }
}

/// `b` covers `a`; returns the time.
fn covering() -> (Mem, Protocol, Protocol, u64) {
    let (w, a, mut b, t) = b_took_over_a();
    let replayed = Covering {
        replayed: true,
        idle: false,
    };
    poll(&mut b, &w, t + MS, replayed);
    b.covering_serving(&w, &mut |_| {});
    (w, a, b, t + MS)
}

#[test]
fn the_host_asks_for_a_giveback() {
    let (w, _a, mut b, t) = covering();
    let busy = Covering {
        replayed: true,
        idle: false,
    };
    assert_eq!(poll(&mut b, &w, t + MS, busy).0, Action::None);
    w.request(1, Request::Giveback);
    let (action, events) = poll(&mut b, &w, t + 2 * MS, busy);
    assert_eq!(action, Action::Release { ip: IP[0] });
    let start = Step::ReleaseStart { epoch: 2 };
    assert_eq!(
        events,
        [
            Event::HostRequest {
                request: Request::Giveback,
                seq: 1
            },
            Event::Step(start)
        ]
    );
    assert_eq!(
        (start.kind(), start.name(), start.to_string().as_str()),
        ("GIVEBACK", "release-start", " epoch=2")
    );
    // The covering service's I/O is still in flight: the claim stays.
    assert_eq!(poll(&mut b, &w, t + 3 * MS, busy).0, Action::None);
    assert_eq!(region::owner(&w, 0), (1, 2));
    let idle = Covering {
        replayed: true,
        idle: true,
    };
    let (action, events) = poll(&mut b, &w, t + 4 * MS, idle);
    assert_eq!(action, Action::None);
    assert_eq!(events, [Event::Step(Step::Released { epoch: 2 })]);
    assert_eq!(region::owner(&w, 0), (0, 1), "home again");
    assert_eq!(w.state(1), Some(State::Serving));
    assert!(b.takeover_idle());
}

#[test]
fn an_automatic_giveback_waits_for_the_peer_to_stand_by_and_beat() {
    let (w, _a, mut b, t) = covering();
    // `a` comes back: a new life that stands by and beats.
    let mut a = join(&w, 0, t);
    a.publish(&w, State::Standby);
    assert_eq!(turn(&mut a, &w, t + MS).0, Action::None);
    let (action, _) = turn(&mut b, &w, t + 2 * MS);
    assert_eq!(action, Action::Release { ip: IP[0] });
    let idle = Covering {
        replayed: true,
        idle: true,
    };
    poll(&mut b, &w, t + 3 * MS, idle);
    // Given back: the standby node reclaims (by restarting in place).
    assert_eq!(turn(&mut a, &w, t + 4 * MS).0, Action::Reclaim);
}

#[test]
fn no_automatic_giveback_when_off_or_when_the_peer_is_silent() {
    let (w, _a, mut b, t) = covering();
    w.set(0, word::STATE, State::Standby as u64);
    // Standby, but its heartbeat has not moved for the timeout.
    assert_eq!(turn(&mut b, &w, t + 5000 * MS).0, Action::None);
    let (w, _a, mut b, t) = covering();
    b.cfg.giveback_auto = false;
    w.set(0, word::STATE, State::Standby as u64);
    w.set(0, word::HEARTBEAT, 99);
    assert_eq!(turn(&mut b, &w, t + MS).0, Action::None);
    assert_eq!(b.takeover(), Takeover::Covering { epoch: 2 });
}

#[test]
fn activity_and_state_words() {
    let (w, a, _b) = pair();
    a.publish_activity(&w, true, 17);
    assert_eq!(w.get(0, word::CP_ACTIVE), 1);
    assert_eq!(w.get(0, word::REPLAY_LEFT), 17);
    a.publish(&w, State::Serving);
    assert_eq!(w.state(0), Some(State::Serving));
    assert_eq!(read_header(&w)[..8], region::MAGIC);
}
