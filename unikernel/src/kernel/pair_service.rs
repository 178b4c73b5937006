//! The storage side of a failover pair: which disks and log area each NBD service gets,
//! and carrying out the pair protocol's [`Action`]s on the network stack and the services.
//!
//! A node's own service serves its first `pair.disks` disks from its own log area, on its
//! own address. After a takeover, a second ("covering") service serves the peer's disks from
//! the peer's log area on the peer's address: the survivor literally runs the peer's
//! service, so the peer's log is replayed by the same code that replays a node's own log
//! after a crash, and a giveback leaves any records it logged for the peer to replay.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use log::{info, warn};
use unikernel::cmdline::Config;

use unikernel::ha::protocol::Covering;
use unikernel::restart::policy::Cause;

use crate::discovery::{Devices, Nvram};
use crate::net::NetStack;
use crate::pair::{Action, Pair, Region};
use crate::storage::{LogPlace, NbdService, ServiceSpec};

/// The region and this node, for the restart path (which acknowledges a fence after
/// quiescing); `None` while not in a pair.
static REGION: spin::Mutex<Option<(Region, usize)>> = spin::Mutex::new(None);
/// A fence to acknowledge once the devices are quiesced (0: none).
static ACK_PENDING: AtomicU64 = AtomicU64::new(0);

/// Joins the pair through the first shared-memory device.
pub fn join(devices: &mut Devices, cfg: &Config, mac: [u8; 6]) -> Result<Pair, String> {
    let pc = cfg.pair.ok_or("not in a pair")?;
    let shared = shared(devices)?;
    let p = Pair::join(pc, shared.regs, cfg.ip.0, mac)?;
    *REGION.lock() = Some((*p.region(), p.me));
    info!(
        "pair: node {} of pair {:#x}, region {} ({} bytes), own log at {:#x}+{:#x}",
        p.name(),
        p.header.pair_id,
        shared.name,
        shared.len,
        p.area(p.me).0,
        p.area(p.me).1
    );
    Ok(p)
}

/// The region: the first shared-memory window (its device is kept out of every service's
/// way).
fn shared(devices: &Devices) -> Result<Nvram, String> {
    let s = devices
        .nvram
        .first()
        .ok_or("no shared region (ivshmem device) found")?;
    Ok(s.clone())
}

/// Disks per node: `pair.disks`, or half of the disks found.
fn per_node(devices: &Devices, cfg: &Config) -> usize {
    match cfg.pair.map(|p| p.disks).unwrap_or(0) {
        0 => {
            devices
                .records
                .iter()
                .filter(|(n, _)| n.starts_with("blk"))
                .count()
                / 2
        }
        n => usize::from(n),
    }
    .max(1)
}

/// The service for `node`'s disks (this node's own, or the peer's after a takeover).
fn spec(p: &Pair, devices: &Devices, cfg: &Config, node: usize, listen: [u8; 4]) -> ServiceSpec {
    let n = per_node(devices, cfg);
    let first = if node == p.me { 0 } else { n };
    // This node's own `export=` words, or its `pair.peer_export=` words for the peer's
    // disks after a takeover; without them, the disks under `blk0`, `blk1`, ..., open.
    let words = if node == p.me {
        cfg.exports()
    } else {
        cfg.peer_exports()
    };
    let (mut exports, allow) = crate::storage::from_words(words);
    if exports.is_empty() {
        exports = (0..n)
            .map(|i| (format!("blk{i}"), format!("blk{}", first + i), false))
            .collect();
    }
    let (off, len) = p.area(node);
    let log = match shared(devices) {
        Ok(s) => LogPlace::Window {
            name: format!("{} node {} log", s.name, if node == 0 { 'a' } else { 'b' }),
            addr: s.addr + off,
            len: len as usize,
        },
        Err(_) => LogPlace::Ram,
    };
    ServiceSpec {
        exports,
        allow,
        log,
        listen: Some(listen),
        durability_nvlog: !cfg.durability_given || cfg.durability_nvlog,
        own: node == p.me,
    }
}

/// This node's own service.
pub fn own_spec(p: &Pair, devices: &mut Devices, cfg: &Config) -> ServiceSpec {
    // The region is the pair's: no service may take the whole window as its log.
    if let Ok(s) = shared(devices) {
        drop(devices.registry.take(&s.name));
    }
    spec(p, devices, cfg, p.me, cfg.ip.0)
}

/// Called on the restart path once every device is quiesced: a pending fence is obeyed now.
pub fn acknowledge_pending_fence() {
    let epoch = ACK_PENDING.swap(0, Ordering::SeqCst);
    // Never held while the restart path runs (only `join` takes it, for one store); were
    // it held, the fence stays unacknowledged and the peer waits for the host instead.
    let Some(Some((region, node))) = REGION.try_lock().map(|r| *r) else {
        return;
    };
    if epoch != 0 {
        crate::pair::acknowledge_fence(&region, node, epoch);
    }
}

/// Gratuitous ARPs still to send: (guest time, address).
pub struct Announcer {
    due: Vec<(u64, [u8; 4])>,
}

impl Announcer {
    pub fn new() -> Self {
        Self { due: Vec::new() }
    }

    /// Now and twice more (a switch or client may miss one).
    pub fn schedule(&mut self, ip: [u8; 4]) {
        let now = crate::time::now_us();
        self.due
            .extend([now, now + 50_000, now + 250_000].map(|t| (t, ip)));
    }

    fn run(&mut self, stack: &mut NetStack) {
        let now = crate::time::now_us();
        let (ready, later): (Vec<_>, Vec<_>) = self.due.drain(..).partition(|(t, _)| *t <= now);
        self.due = later;
        for (_, ip) in ready {
            stack.announce(ip);
        }
    }
}

/// One turn of the pair: the protocol, then what it asks for; a restart in place when the
/// node was fenced or its disks came back.
pub fn turn(
    p: &mut Pair,
    stack: &mut NetStack,
    devices: &mut Devices,
    cfg: &Config,
    announcer: &mut Announcer,
) -> Option<Cause> {
    announcer.run(stack);
    let region = *p.region();
    p.clients
        .poll(&region, crate::net::now(), &mut stack.sockets);
    let (cp, left) = [stack.nbd.as_ref(), stack.peer_nbd.as_ref()]
        .into_iter()
        .flatten()
        .map(|s| s.log_activity())
        .fold((false, 0), |(c, l), (c2, l2)| (c || c2, l + l2));
    p.publish_activity(cp, left);
    let replayed = stack
        .peer_nbd
        .as_ref()
        .is_some_and(|s| s.log_state().is_none_or(|l| !l.3));
    // A giveback hands the disks back flushed: the covering service's log drained to them.
    let idle = stack.peer_nbd.as_ref().is_none_or(|s| s.drained());
    match p.poll(Covering { replayed, idle }) {
        Action::None => {}
        Action::Fenced { epoch } => {
            crate::console::line(format_args!(
                "TANDEM FENCED node={} epoch={epoch} t_us={}",
                p.name(),
                crate::time::now_us()
            ));
            ACK_PENDING.store(epoch, Ordering::SeqCst);
            return Some(Cause::Fenced);
        }
        Action::Reclaim => return Some(Cause::Reclaim),
        Action::StartCovering => {
            let peer = 1 - p.me;
            let Some(ip) = cfg
                .pair
                .and_then(|c| c.peer_ip)
                .or_else(|| unikernel::ha::region::announcement(p.region(), peer).map(|a| a.2))
            else {
                warn!("pair: the peer's address is unknown; cannot cover it");
                return None;
            };
            let spec = spec(p, devices, cfg, peer, ip);
            let loaded = crate::checkpoints::Loaded::default();
            let service = stack.tls.clone().and_then(|tls| {
                NbdService::new(devices, cfg, &loaded, &mut stack.sockets, spec, tls)
            });
            match service {
                Ok(s) => {
                    let pending = s.log_state().map_or(0, |l| l.1);
                    crate::console::line(format_args!(
                        "TANDEM TAKEOVER node={} step=replay records={pending} t_us={}",
                        p.name(),
                        crate::time::now_us()
                    ));
                    stack.peer_nbd = Some(s);
                }
                Err(e) => warn!("pair: cannot serve the peer's exports: {e}"),
            }
        }
        Action::TakeAddress { ip } => {
            stack.add_address(ip);
            announcer.schedule(ip);
            // The first gratuitous ARP now, ahead of the resets' SYNs: the clients' answers
            // must come here, not to the failed node's MAC.
            announcer.run(stack);
            let [a, b, c, d] = ip;
            if let Some(s) = stack.peer_nbd.as_ref() {
                for e in s.exports() {
                    crate::console::line(format_args!(
                        "TANDEM NBD nbd://{a}.{b}.{c}.{d}:{}/{e}",
                        cfg.nbd_port
                    ));
                }
            }
            p.covering_serving();
            let (region, peer) = (*p.region(), 1 - p.me);
            p.clients
                .reset_peers_clients(&region, peer, ip, &mut stack.iface, &mut stack.sockets);
        }
        Action::Release { ip } | Action::DropCovering { ip } => {
            if let Some(s) = stack.peer_nbd.as_mut() {
                s.shutdown(&mut stack.sockets);
            }
            p.clients.cancel(ip, &mut stack.sockets);
            stack.remove_address(ip);
        }
    }
    // A covering service that was shut down hands the peer's disks back once idle.
    if p.takeover_idle()
        && stack.peer_nbd.as_ref().is_some_and(|s| s.idle())
        && let Some(s) = stack.peer_nbd.take()
    {
        for (name, dev) in s.into_devices() {
            if devices.registry.insert(&name, dev).is_err() {
                warn!("pair: {name} is registered twice; the older one is kept");
            }
        }
    }
    None
}
