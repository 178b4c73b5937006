//! The NBD storage service: one export per disk, served to up to [`MAX_CLIENTS`] clients over
//! smoltcp TCP sockets, driven by `unikernel::nbd::server`.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use hpdi::{BufferPool, DeviceKind, QueuePair};
use log::{info, warn};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpListenEndpoint, Ipv4Address};
use unikernel::cmdline::{Config, ExportSpec};
use unikernel::nbd::acl::AllowList;
use unikernel::nbd::server::{ConnState, Disk, Durability, Server, Stream, CHUNK};
use unikernel::nbd::tls::TlsSettings;
use unikernel::nbd::ExportInfo;
use unikernel::nvlog::format::PAGE;
use unikernel::nvlog::log::Nvlog;
use unikernel::tcp_buffers::rx_len;
use unikernel::units::Bytes;

use crate::discovery::Devices;
use crate::dma::FrameRegion;

/// Clients served at once (one listening socket each).
pub const MAX_CLIENTS: usize = 16;
/// Sockets for connections still negotiating, beyond the serving ones: a flood of silent
/// connections cannot take the sockets real clients need (the oldest is evicted).
const NEGOTIATING: usize = 8;
/// Sockets in all.
const MAX_SOCKETS: usize = MAX_CLIENTS + NEGOTIATING;
/// TCP buffers per client, each way.
const TCP_BUF: usize = 128 * 1024;
/// Pool buffers for all clients together (64 KiB each).
const POOL_BUFFERS: usize = 128;

/// Bytes every NBD service copied out of its sockets' receive buffers (`recv_slice`) and
/// into their send buffers (`send_slice`) since this start: the copies at the boundary
/// between smoltcp and the NBD server (headers and payload alike). Read by the management
/// port's `status` (`unikernel::mgmt_status`).
static COPIED_SOCKET_TO_APP: AtomicU64 = AtomicU64::new(0);
static COPIED_APP_TO_SOCKET: AtomicU64 = AtomicU64::new(0);

/// `(socket -> server, server -> socket)` bytes copied since this start.
pub fn stream_copies() -> (u64, u64) {
    (
        COPIED_SOCKET_TO_APP.load(Ordering::Relaxed),
        COPIED_APP_TO_SOCKET.load(Ordering::Relaxed),
    )
}

/// Starts the stream copy counters again (a new start of the network stack, whose own
/// counters start at 0 too).
pub fn reset_stream_copies() {
    COPIED_SOCKET_TO_APP.store(0, Ordering::Relaxed);
    COPIED_APP_TO_SOCKET.store(0, Ordering::Relaxed);
}

/// The NBD server's view of a TCP socket. Both directions copy: smoltcp keeps its own ring
/// buffers, and `recv_slice`/`send_slice` copy between them and the server's buffers.
struct SocketStream<'a>(&'a mut tcp::Socket<'static>);

impl Stream for SocketStream<'_> {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        let n = self.0.recv_slice(buf).unwrap_or(0);
        COPIED_SOCKET_TO_APP.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    fn send(&mut self, data: &[u8]) -> usize {
        let n = self.0.send_slice(data).unwrap_or(0);
        COPIED_APP_TO_SOCKET.fetch_add(n as u64, Ordering::Relaxed);
        n
    }
}

/// Listening sockets kept ready beyond those serving; more are made as clients arrive, up
/// to [`MAX_CLIENTS`]. Each costs 256 KiB of buffers, and making all of them at start cost
/// a restart ~3 ms under emulation (most of it zeroing the buffers).
const SPARE_LISTENERS: usize = 4;

/// Makes listening sockets in up to `n` empty slots.
fn top_up(
    handles: &mut [Option<SocketHandle>],
    sockets: &mut SocketSet<'static>,
    n: usize,
    at: IpListenEndpoint,
) {
    for h in handles.iter_mut().filter(|h| h.is_none()).take(n) {
        // One byte short of a power of two: see `unikernel::tcp_buffers` (a remote crash).
        let rx = tcp::SocketBuffer::new(vec![0; rx_len(TCP_BUF)]);
        let tx = tcp::SocketBuffer::new(vec![0; TCP_BUF]);
        let mut s = tcp::Socket::new(rx, tx);
        // A peer that vanished (a client killed, or a connection whose SYN waited in QEMU's
        // queue while the guest was down) must not hold a client slot for ever: keep-alives
        // find dead peers, and a peer silent this long is dropped.
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(2)));
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(5)));
        if let Err(e) = s.listen(at) {
            warn!("nbd: listen on {at}: {e}");
        }
        *h = Some(sockets.add(s));
    }
}

/// A listening endpoint: `port` on one address, or on every address.
fn listen_endpoint(addr: Option<[u8; 4]>, port: u16) -> IpListenEndpoint {
    IpListenEndpoint {
        addr: addr.map(|[a, b, c, d]| Ipv4Address::new(a, b, c, d).into()),
        port,
    }
}

pub struct NbdService {
    server: Server,
    /// The device behind each export, by registry name (to hand the devices back).
    device_names: Vec<String>,
    /// One socket per client slot, made on demand.
    handles: Vec<Option<SocketHandle>>,
    /// Where the listening sockets listen (`None`: every address of the interface).
    listen: Option<[u8; 4]>,
    port: u16,
    /// Once shut down, nothing listens or is accepted any more.
    stopped: bool,
}

/// Where a service keeps its write log.
#[derive(Debug, Clone)]
pub enum LogPlace {
    /// A window of shared memory (an ivshmem BAR or part of one): persistent.
    Window { name: String, addr: u64, len: usize },
    /// Guest RAM (`disk` durability only).
    Ram,
}

/// What one NBD service instance serves: a node's own exports, or (in a failover pair) the
/// peer's exports it took over, on the peer's address and from the peer's log.
pub struct ServiceSpec {
    /// (export name, device, read-only).
    pub exports: Exports,
    /// The exports served only to some client networks, by export name (the others are
    /// open to every client).
    pub allow: AllowLists,
    pub log: LogPlace,
    pub listen: Option<[u8; 4]>,
    pub durability_nvlog: bool,
    /// The node's own service (not a pair's covering one): its first disk carries the
    /// checkpoint, and test hooks (`debug.cp=hold`) apply to it only.
    pub own: bool,
}

/// A service's exports: `(name, device, read-only)`.
pub type Exports = Vec<(String, String, bool)>;
/// Allow-lists by export name (exports not listed are open).
pub type AllowLists = Vec<(String, AllowList)>;

/// Export words (`export=` or `pair.peer_export=`) as a service's `(name, device,
/// read-only)` list and its allow-lists by export name.
pub fn from_words(words: &[ExportSpec]) -> (Exports, AllowLists) {
    let exports = words
        .iter()
        .map(|e| (e.name().into(), e.device().into(), e.read_only))
        .collect();
    let allow = words
        .iter()
        .filter(|e| !e.allow.is_open())
        .map(|e| (e.name().into(), e.allow))
        .collect();
    (exports, allow)
}

impl ServiceSpec {
    /// A single guest: the `export=` words (default: every disk under its own name) and the
    /// first NVRAM window (else guest RAM) for the log.
    pub fn single(devices: &Devices, cfg: &Config) -> Self {
        let (mut exports, allow) = from_words(cfg.exports());
        if exports.is_empty() {
            exports = devices
                .registry
                .of_kind(DeviceKind::Block)
                .map(|d| (String::from(d), String::from(d), false))
                .collect();
        }
        let log = match devices.nvram.first() {
            Some(n) => LogPlace::Window {
                name: n.name.clone(),
                addr: n.addr,
                len: n.len,
            },
            None => LogPlace::Ram,
        };
        Self {
            exports,
            allow,
            log,
            listen: None,
            durability_nvlog: cfg.durability_nvlog,
            own: true,
        }
    }
}

impl NbdService {
    /// Takes the exported disks out of the registry and opens listening sockets.
    pub fn new(
        devices: &mut Devices,
        cfg: &Config,
        loaded: &crate::checkpoints::Loaded,
        sockets: &mut SocketSet<'static>,
        spec: ServiceSpec,
        tls: TlsSettings,
    ) -> Result<Self, String> {
        let mem = FrameRegion::alloc(POOL_BUFFERS * CHUNK)
            .ok_or("no DMA memory for the NBD buffer pool")?;
        let mut pool = BufferPool::new(Box::new(mem), CHUNK).map_err(|e| alloc::format!("{e}"))?;
        // Labels first (every disk), then the checkpoint (it names the labels), then the
        // exports over the data areas.
        let t_labels = crate::time::now_us();
        let mut labelled = labelled_disks(devices, &spec.exports, &mut pool);
        let t_ckpt = crate::time::now_us();
        if spec.own {
            crate::checkpoints::after_labels(devices, cfg, loaded, &mut labelled);
        }
        let t_exports = crate::time::now_us();
        let (exports, disks, device_names) = open_exports(devices, &spec, labelled)?;
        if exports.is_empty() {
            return Err("no disk to export".into());
        }
        let t_log = crate::time::now_us();
        let (log, durability) = open_log(devices, &spec, cfg.nvlog_ram_mib, &mut pool)?;
        let t_sockets = crate::time::now_us();
        let handles = listen(sockets, spec.listen, cfg.nbd_port);
        log::debug!(
            "storage phases (us): labels={} checkpoint={} exports={} nvlog={} sockets={}",
            t_ckpt - t_labels,
            t_exports - t_ckpt,
            t_log - t_exports,
            t_sockets - t_log,
            crate::time::now_us() - t_sockets
        );
        let mut server =
            Server::new(exports, disks, pool, MAX_SOCKETS).with_log(log, durability)?;
        server.set_limits(unikernel::nbd::server::Limits::from_config(
            cfg,
            MAX_CLIENTS,
        ));
        server.set_tls(tls);
        if spec.own {
            // The NVLOG mirror gates this node's own log (the sender on its host reads it).
            server.set_mirror(cfg.mirror);
        }
        if cfg.debug_hold_cp && spec.own {
            warn!("debug.cp=hold: consistency points held; logged writes stay in the log only");
            server.hold_consistency_points(true);
        }
        Ok(Self {
            server,
            device_names,
            handles,
            listen: spec.listen,
            port: cfg.nbd_port,
            stopped: false,
        })
    }

    /// `(records, live, free pages, replaying)` of the write log, for status lines.
    pub fn log_state(&self) -> Option<(unikernel::nbd::server::LogStats, usize, u64, bool)> {
        self.server.log_state()
    }

    /// Stops serving: every client connection is reset and every socket removed; device
    /// requests already started still complete ([`Self::idle`] says when none is left).
    pub fn shutdown(&mut self, sockets: &mut SocketSet<'static>) {
        for (slot, h) in self.handles.iter_mut().enumerate() {
            if let Some(h) = h.take() {
                sockets.get_mut::<tcp::Socket>(h).abort();
                sockets.remove(h);
            }
            if self.server.is_active(slot) {
                self.server.drop_conn(slot);
            }
        }
        self.stopped = true;
    }

    /// Ends the service, handing its disks back (the raw devices under their registry
    /// names) so that a later service can open them again.
    pub fn into_devices(self) -> Vec<(String, Box<dyn hpdi::Device>)> {
        self.device_names
            .into_iter()
            .zip(self.server.into_disks())
            .filter_map(|(name, part)| part.into_inner().map(|raw| (name, raw)))
            .collect()
    }

    /// (consistency point running, records left to replay).
    pub fn log_activity(&self) -> (bool, usize) {
        self.server.log_activity()
    }

    /// Nothing in flight and nothing left in the write log: every write it acknowledged is
    /// on its disks (consistency points flushed them).
    pub fn drained(&self) -> bool {
        self.idle() && self.server.log_state().is_none_or(|l| l.1 == 0)
    }

    /// No device request of this service is in flight.
    pub fn idle(&self) -> bool {
        self.server.device_requests() == 0
    }

    /// Requests taken so far.
    pub fn requests(&self) -> u64 {
        self.server.stats.requests
    }

    /// The mirror's part of the status reply (`None` with `mirror=off`).
    pub fn mirror(&self) -> Option<unikernel::mgmt_status::Mirror> {
        let (status, mirrored) = self.server.mirror_state()?;
        Some(unikernel::mgmt_status::Mirror {
            state: status.name()?,
            mirrored,
        })
    }

    /// Payload bytes of the reads and the writes taken so far.
    pub fn payload_bytes(&self) -> (u64, u64) {
        (
            self.server.stats.bytes_read,
            self.server.stats.bytes_written,
        )
    }

    /// Completions that reported a failed device queue.
    pub fn device_failures(&self) -> u64 {
        self.server.stats.device_failures
    }

    pub fn exports(&self) -> impl Iterator<Item = &str> {
        self.server.exports().iter().map(|e| e.name.as_str())
    }

    /// One turn: accept, serve and retire connections, then drive the disks.
    pub fn poll(&mut self, sockets: &mut SocketSet<'static>) {
        self.server.set_time(crate::time::now_us());
        let free = self
            .handles
            .iter()
            .flatten()
            .filter(|&&h| {
                matches!(
                    sockets.get::<tcp::Socket>(h).state(),
                    tcp::State::Listen | tcp::State::Closed
                )
            })
            .count();
        if self.stopped {
            self.server.poll_disks();
            return;
        }
        if free < SPARE_LISTENERS {
            let at = listen_endpoint(self.listen, self.port);
            top_up(&mut self.handles, sockets, SPARE_LISTENERS - free, at);
        }
        self.evict_if_needed(sockets, free);
        for (slot, h) in self.handles.iter().enumerate() {
            let Some(h) = *h else { continue };
            let s = sockets.get_mut::<tcp::Socket>(h);
            if !s.is_open() {
                if self.server.is_active(slot) {
                    self.server.drop_conn(slot);
                }
                if let Err(e) = s.listen(listen_endpoint(self.listen, self.port)) {
                    warn!("nbd: listen: {e}");
                }
                continue;
            }
            let active = self.server.is_active(slot);
            if !active {
                if s.state() == tcp::State::Established {
                    let peer = match s.remote_endpoint().map(|e| e.addr) {
                        Some(smoltcp::wire::IpAddress::Ipv4(a)) => Some(a.octets()),
                        _ => None,
                    };
                    self.server.accept_from(slot, peer);
                } else {
                    continue;
                }
            }
            if !s.may_recv() && !s.can_recv() && s.state() != tcp::State::Established {
                // The client closed or reset its side.
                self.server.drop_conn(slot);
                s.close();
                continue;
            }
            if self.server.service(slot, &mut SocketStream(s)) == ConnState::Close {
                s.close();
            }
        }
        self.server.poll_disks();
    }
}

impl NbdService {
    /// Keeps a socket listening for new clients: when none is left, or too many connections
    /// are negotiating, the one that has negotiated longest is closed (it has had the most
    /// time; a real client finishes in a few round trips).
    fn evict_if_needed(&mut self, sockets: &mut SocketSet<'static>, free: usize) {
        let all_made = self.handles.iter().all(Option::is_some);
        let must = (free == 0 && all_made) || self.server.negotiating() > NEGOTIATING;
        if !must {
            return;
        }
        let Some((slot, _)) = self.server.oldest_handshake() else {
            return;
        };
        let Some(h) = self.handles[slot] else { return };
        log::info!("nbd: evicting connection {slot}, still negotiating, for a new client");
        self.server.evict(slot);
        let s = sockets.get_mut::<tcp::Socket>(h);
        s.abort();
    }
}

/// The exported disks taken out of the registry, each with its label: the one the
/// checkpoint check read already, or read now (all at once) and written if the disk has
/// none yet. A disk that cannot be labelled is left out (with a warning).
fn labelled_disks(
    devices: &mut Devices,
    wanted: &Exports,
    pool: &mut BufferPool,
) -> Vec<crate::checkpoints::Labelled> {
    let mut taken = Vec::new();
    for (name, device, ro) in wanted.iter().cloned() {
        match devices.registry.take(&device) {
            Some(raw) => taken.push((name, device, ro, raw)),
            None => warn!("nbd: export {name}: no block device {device}"),
        }
    }
    // Labels the checkpoint check read already; the others, all at once.
    let known = |device: &str| {
        devices
            .labels
            .iter()
            .find(|(n, _)| n == device)
            .map(|(_, l)| *l)
    };
    let mut unread: Vec<&mut dyn hpdi::Device> = taken
        .iter_mut()
        .filter(|t| known(&t.1).is_none())
        .map(|t| t.3.as_mut() as &mut dyn hpdi::Device)
        .collect();
    let mut reads = crate::labels::read_labels(&mut unread).into_iter();
    drop(unread);
    let mut labelled = Vec::new();
    for (name, device, ro, mut raw) in taken {
        let found = match known(&device) {
            Some(l) => Ok(Ok(l)),
            None => reads.next().unwrap_or(Err("not read".into())),
        };
        match crate::labels::ensure_label(raw.as_mut(), pool, &name, ro, found) {
            Ok(label) => labelled.push((name, device, ro, raw, label)),
            Err(e) => warn!("nbd: export {name} ({device}): {e}"),
        }
    }
    labelled
}

/// What the server serves: each export's description, its disk (the data area past the
/// label, with its queue), and the registry name of the device behind it.
type Opened = (Vec<ExportInfo>, Vec<Disk>, Vec<String>);

/// Opens the data area of every labelled disk as an export.
fn open_exports(
    devices: &Devices,
    spec: &ServiceSpec,
    labelled: Vec<crate::checkpoints::Labelled>,
) -> Result<Opened, String> {
    let mut exports = Vec::new();
    let mut disks = Vec::new();
    let mut device_names = Vec::new();
    for (name, device, ro, raw, label) in labelled {
        let dev = match crate::labels::data_area(raw, &label) {
            Ok(d) => d,
            Err(e) => {
                warn!("nbd: export {name} ({device}): {e}");
                continue;
            }
        };
        let caps = dev.capabilities();
        let info = export_info(devices, spec, name, &device, ro, caps, &label);
        // As deep as the device's own queue: the server retries when it is full, and a
        // deeper ring only costs start-up time (its slots hold whole requests).
        let depth = usize::from(caps.queue_depth)
            .next_power_of_two()
            .clamp(64, 1024);
        exports.push(info);
        disks.push(Disk {
            dev,
            queue: QueuePair::new(depth).map_err(|e| alloc::format!("{e}"))?,
        });
        device_names.push(device);
    }
    Ok((exports, disks, device_names))
}

/// How export `name` (on `device`, labelled `label`) presents itself to clients.
fn export_info(
    devices: &Devices,
    spec: &ServiceSpec,
    name: String,
    device: &str,
    ro: bool,
    caps: hpdi::Capabilities,
    label: &unikernel::restart::label::Label,
) -> ExportInfo {
    let transport = devices
        .transports
        .iter()
        .find(|(n, _)| *n == device)
        .map_or("?", |(_, t)| *t);
    let allow = spec
        .allow
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(AllowList::OPEN, |(_, a)| *a);
    let info = ExportInfo {
        description: alloc::format!(
            "tandem {device} (virtio-blk {transport}, {}, label {})",
            Bytes(caps.capacity),
            unikernel::restart::label::Uuid(label.uuid)
        ),
        name,
        size: caps.capacity,
        read_only: ro || caps.read_only,
        can_trim: caps.ops.contains(hpdi::Op::Discard),
        can_write_zeroes: caps.ops.contains(hpdi::Op::WriteZeroes),
        min_block: caps.block_size,
        preferred_block: 4096,
        max_payload: 32 << 20,
        disk_id: unikernel::nvlog::format::disk_id_bytes(&label.uuid, label.data_size),
        allow,
    };
    log::log!(
        crate::detail_level(),
        "nbd: export {} = {device} ({}{}{}{})",
        info.name,
        Bytes(info.size),
        if info.read_only { ", read-only" } else { "" },
        if info.allow.is_open() { "" } else { ", allow " },
        info.allow
    );
    info
}

/// The listening sockets a new service starts with (the rest are made as clients come).
fn listen(
    sockets: &mut SocketSet<'static>,
    at: Option<[u8; 4]>,
    port: u16,
) -> Vec<Option<SocketHandle>> {
    let mut handles = vec![None; MAX_SOCKETS];
    top_up(
        &mut handles,
        sockets,
        SPARE_LISTENERS,
        listen_endpoint(at, port),
    );
    match at {
        Some([a, b, c, d]) => {
            info!("nbd: listening on {a}.{b}.{c}.{d}:{port} for up to {MAX_CLIENTS} clients")
        }
        None => info!("nbd: listening on tcp/{port} for up to {MAX_CLIENTS} clients"),
    }
    handles
}

/// The write log, where the service spec puts it: a shared-memory window (persistent) or
/// guest RAM (`disk` durability only).
fn open_log(
    devices: &mut Devices,
    spec: &ServiceSpec,
    ram_mib: u32,
    pool: &mut BufferPool,
) -> Result<(Nvlog, Durability), String> {
    let (region, place, persistent) = match &spec.log {
        LogPlace::Window { name, addr, len } => {
            // The log owns the window from now on.
            drop(devices.registry.take(name));
            // SAFETY: a window of an ivshmem BAR found by discovery and identity-mapped there;
            // the memory region device that wrapped the BAR was just dropped, and the windows
            // given to services never overlap, so this log is the window's only user.
            let window = unsafe { FrameRegion::device_window(*addr, *len) };
            let r = pool
                .add_region(Box::new(window), PAGE)
                .map_err(|e| alloc::format!("{e}"))?;
            (r, alloc::format!("{name} ({})", Bytes(*len as u64)), true)
        }
        LogPlace::Ram => {
            let bytes = (ram_mib as usize) << 20;
            let mem = FrameRegion::alloc(bytes).ok_or("no DMA memory for the RAM write log")?;
            let r = pool
                .add_region(Box::new(mem), PAGE)
                .map_err(|e| alloc::format!("{e}"))?;
            (
                r,
                alloc::format!("guest RAM ({})", Bytes(bytes as u64)),
                false,
            )
        }
    };
    let (log, report) = Nvlog::open(pool, region, crate::arch::cpu::rdtsc())
        .map_err(|e| alloc::format!("write log: {e:?}"))?;
    let durability = if spec.durability_nvlog && persistent {
        Durability::Nvlog
    } else {
        if spec.durability_nvlog {
            warn!("durability=nvlog needs an NVRAM device (ivshmem); using disk");
        }
        Durability::Disk
    };
    info!(
        "nvlog: {place}, {} data pages, durability={}: {}{}",
        log.data_pages(),
        if durability == Durability::Nvlog {
            "nvlog"
        } else {
            "disk"
        },
        if report.formatted {
            alloc::string::String::from("formatted")
        } else {
            alloc::format!(
                "{} record(s) to replay after seq {}",
                report.pending,
                report.retired_seq
            )
        },
        match report.torn {
            Some(seq) =>
                alloc::format!("; record {seq} is torn (bad checksum): replay ends before it"),
            None => alloc::string::String::new(),
        }
    );
    Ok((log, durability))
}
