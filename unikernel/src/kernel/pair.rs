//! Failover pair membership (`pair=a|b`): the hardware side of this guest's part in the
//! protocol, over the shared region mapped as the ivshmem BAR.
//!
//! The protocol itself (heartbeats, the boot grace, fencing, takeover and giveback
//! decisions) is `unikernel::ha::protocol`, host-tested over words in memory. This module
//! gives it the region's control words through typed MMIO ([`Region`]), the guest clock,
//! and prints what it reports (`TANDEM TAKEOVER|GIVEBACK ...` lines, warnings). What to do
//! with the storage services and the network is returned as an [`Action`] for the service
//! loop to carry out (`pair_service`).
//!
//! It also keeps this node's connection table in the region current ([`Clients`]), and resets
//! the peer's clients after a takeover (`unikernel::ha::reset`, issue 16 §5): without it a
//! client waiting for a reply learns of the takeover only from its own timeout.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use log::{info, warn};
use unikernel::cmdline::PairConfig;
use unikernel::ha::protocol::{self, Covering, Event, Joining, Protocol};
use unikernel::ha::region::conn::{self, Conn};
use unikernel::ha::region::{State, Words};
use unikernel::ha::reset::{self, Outcome, Resets};

pub use unikernel::ha::protocol::Action;

use crate::console;
use crate::mmio;
use crate::time::now_us;

/// The region's control words, read and written in place in the BAR.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    regs: mmio::Block,
}

impl Region {
    /// The control words of the region mapped as `regs` (the ivshmem BAR, from discovery).
    pub fn new(regs: mmio::Block) -> Self {
        Self { regs }
    }
}

impl Words for Region {
    /// Words outside the window read as 0 (every control word is in it: the header was
    /// checked against the window's size).
    fn load(&self, offset: u64) -> u64 {
        self.regs.read::<u64>(offset).unwrap_or(0)
    }

    fn store(&self, offset: u64, value: u64) {
        self.regs.write::<u64>(offset, value);
    }

    fn fence(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// This node in the pair: the protocol's state over the mapped region.
pub struct Pair {
    protocol: Protocol,
    region: Region,
    /// This node's connection table, and the resets of the peer's clients under way.
    pub clients: Clients,
}

impl core::ops::Deref for Pair {
    type Target = Protocol;

    fn deref(&self) -> &Protocol {
        &self.protocol
    }
}

impl Pair {
    /// Joins the pair over the region mapped as `regs`. Claims this node's disks unless the
    /// peer holds them; resumes covering the peer if a previous life held its disks.
    pub fn join(
        cfg: PairConfig,
        regs: mmio::Block,
        ip: [u8; 4],
        mac: [u8; 6],
    ) -> Result<Self, String> {
        let region = Region::new(regs);
        let at = Joining {
            window: regs.size(),
            boot: crate::arch::cpu::rdtsc() | 1,
            ip,
            mac,
        };
        let (me, peer) = (cfg.name(), peer_name(&cfg));
        let protocol = Protocol::join(cfg, &region, at, now_us(), &mut |e| report(me, peer, e))
            .map_err(|e| format!("shared region at {:#x}: {e}", regs.base()))?;
        let clients = Clients {
            table: conn::Table::start(&region, protocol.me),
            open: Vec::new(),
            resets: Resets::new(),
            me,
        };
        Ok(Self {
            protocol,
            region,
            clients,
        })
    }

    /// The region's control words.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The state this node reports.
    pub fn publish(&self, s: State) {
        self.protocol.publish(&self.region, s);
        console::line(format_args!(
            "TANDEM PAIR node={} state={} own_epoch={} t_us={}",
            self.name(),
            s.name(),
            self.own_epoch.unwrap_or(0),
            now_us()
        ));
    }

    /// One turn of the protocol. `covering` says whether the covering service (if any) has
    /// finished replaying, and whether its I/O is done after a release.
    pub fn poll(&mut self, covering: Covering) -> Action {
        let (me, peer) = (self.name(), self.peer_name());
        self.protocol
            .poll(&self.region, now_us(), covering, &mut |e| {
                report(me, peer, e)
            })
    }

    /// The covering service is up and serving on the peer's address.
    pub fn covering_serving(&self) {
        let (me, peer) = (self.name(), self.peer_name());
        self.protocol
            .covering_serving(&self.region, &mut |e| report(me, peer, e));
    }

    /// Publishes what the services' logs are doing (for observers: tests, benchmarks).
    pub fn publish_activity(&self, cp_active: bool, replay_left: usize) {
        self.protocol
            .publish_activity(&self.region, cp_active, replay_left);
    }
}

/// This node's connection table in the region, and the resets of the peer's clients.
pub struct Clients {
    table: conn::Table,
    /// The connections found this turn (kept to reuse its allocation).
    open: Vec<Conn>,
    resets: Resets,
    me: char,
}

impl Clients {
    /// One turn: the resets under way, then this node's table brought up to date (it is
    /// written only when the set of connections changed: on accept and close).
    pub fn poll(
        &mut self,
        region: &Region,
        iface_now: smoltcp::time::Instant,
        sockets: &mut smoltcp::iface::SocketSet<'static>,
    ) {
        let me = self.me;
        self.resets
            .poll(sockets, iface_now, &mut |o| report_reset(me, o));
        let resets = &self.resets;
        reset::open_connections(sockets, |h| resets.owns(h), &mut self.open);
        self.table.sync(region, now_us(), &self.open);
    }

    /// After taking the address `ip` over from node `peer`: resets every client the peer
    /// recorded on that address. Returns how many resets were started.
    pub fn reset_peers_clients(
        &mut self,
        region: &Region,
        peer: usize,
        ip: [u8; 4],
        iface: &mut smoltcp::iface::Interface,
        sockets: &mut smoltcp::iface::SocketSet<'static>,
    ) -> usize {
        let conns: Vec<Conn> = conn::connections(region, peer)
            .into_iter()
            .filter(|c| c.local_ip == ip)
            .collect();
        let unrecorded =
            unikernel::ha::region::get(region, peer, unikernel::ha::region::word::CONN_UNRECORDED);
        let me = self.me;
        let started = self
            .resets
            .start(iface, sockets, &conns, crate::net::now(), &mut |o| {
                report_reset(me, o)
            });
        let p = if peer == 0 { 'a' } else { 'b' };
        console::line(format_args!(
            "TANDEM TAKEOVER node={me} peer={p} step=reset-clients clients={started} unrecorded={unrecorded} t_us={}",
            now_us()
        ));
        started
    }

    /// Stops resetting clients on `ip` (given back).
    pub fn cancel(&mut self, ip: [u8; 4], sockets: &mut smoltcp::iface::SocketSet<'static>) {
        self.resets.cancel(sockets, |c| c.local_ip == ip);
    }
}

/// A `TANDEM CLIENT-RESET` line for each reset that ended.
fn report_reset(me: char, o: Outcome) {
    let (conn, result, after) = match o {
        Outcome::Gone { conn, after } => (conn, "gone", Some(after)),
        Outcome::NoAnswer { conn } => (conn, "no-answer", None),
        Outcome::Accepted { conn } => (conn, "accepted-aborted", None),
        Outcome::Refused { conn } => (conn, "refused", None),
    };
    let [a, b, c, d] = conn.remote_ip;
    let [e, f, g, h] = conn.local_ip;
    console::line(format_args!(
        "TANDEM CLIENT-RESET node={me} client={a}.{b}.{c}.{d}:{} server={e}.{f}.{g}.{h}:{} result={result} after_ms={} t_us={}",
        conn.remote_port,
        conn.local_port,
        after.map_or(0, |d| d.total_millis()),
        now_us()
    ));
}

/// Called by the restart path after the devices were quiesced: `node` obeys `epoch`.
pub fn acknowledge_fence(region: &Region, node: usize, epoch: u64) {
    protocol::acknowledge_fence(region, node, epoch);
}

/// Prints what the protocol reports: `TANDEM TAKEOVER ...` / `TANDEM GIVEBACK ...` lines,
/// one per step with the guest time, and log lines.
fn report(me: char, peer: char, e: Event) {
    match e {
        Event::Step(s) => console::line(format_args!(
            "TANDEM {} node={me} peer={peer} step={}{s} t_us={}",
            s.kind(),
            s.name(),
            now_us()
        )),
        Event::Standby { epoch } => {
            info!("pair: node {peer} holds our disks (epoch {epoch}): standby")
        }
        Event::ResumeTakeover { epoch } => {
            info!("pair: we hold node {peer}'s disks (epoch {epoch}) from a previous life")
        }
        Event::HostRequest { request, seq } => info!("pair: host request {request:?} (seq {seq})"),
        Event::ClaimLostRace => {
            warn!("pair: claim on the peer's disks lost a race; not taking over")
        }
        Event::ClaimOvertaken { epoch } => {
            warn!("pair: claim {epoch} on the peer's disks was overtaken; standing down")
        }
        Event::LostPeerClaim => {
            warn!("pair: lost the claim on the peer's disks; dropping its exports")
        }
        Event::PeerAddressUnknown => {
            warn!("pair: the peer's address is unknown (no announcement, no pair.peer_ip)")
        }
    }
}

fn peer_name(cfg: &PairConfig) -> char {
    if cfg.node == 0 {
        'b'
    } else {
        'a'
    }
}
