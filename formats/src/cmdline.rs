//! The guest command line: `key=value` words that configure the guest.
//!
//! Parsed before the heap exists (the DMA share decides how the heap is sized), so the
//! parser borrows the line and reports problems through a callback instead of collecting
//! them. Unknown keys and malformed words are reported, never silently ignored.
//!
//! The words come from the kernel command line and then from the first PVH boot module
//! (QEMU `-initrd`, libvirt `<initrd>`, xl `ramdisk=`; see [`crate::start_info`]).
//! [`parse_parts`] reads both as one line, the module's words last so that they win: the
//! host passes `mgmt.key=` there, where `ps` and domain files do not show it. The console
//! never shows a key: [`Redacted`] and the issue messages hide it.
//!
//! Keys:
//! - `log=error|warn|info|debug|trace` — console log level (default `info`).
//! - `exit=ready|never` — `ready` powers the guest off cleanly right after `TANDEM READY`.
//! - `dma_pct=N` — percent of free RAM given to the DMA frame pool (1..=90, default 50).
//! - `debug.panic=boot|ready` — panic on purpose at that point (tests the panic path).
//! - `debug.fault=pagefault|gp|ud|divide|breakpoint` — raise that CPU exception after init.
//! - `debug.blkops=DEVICE` — run the block self-test (every advertised op, read back) on
//!   `DEVICE` after init.
//! - `restart=on|off` — an error while serving (panic, CPU exception) restarts the guest in
//!   place from its checkpoint (default `on`; at most 8 times); `off` stops it instead.
//! - `checkpoint=use|ignore` — `ignore` makes every start and restart discover cold (and
//!   write a fresh checkpoint) even when a valid one exists: the cold path, for measuring.
//! - `debug.panic_after_requests=N` — inject a panic (or, with `debug.fault=`, that CPU
//!   exception) once the NBD service has taken N requests (first life only): tests the
//!   restart path.
//! - `debug.device_error_after_requests=N` — make a disk report a queue failure once the NBD
//!   service has taken N requests (first life only): a fatal device error, which restarts.
//! - `mgmt.port=PORT` — the management port (default 10810, 0 off): `status`,
//!   `inject panic|pagefault|gp|ud|stall|device-error`. It listens only with a key.
//! - `mgmt.key=HEX` — the management channel's key (64 hex digits; see
//!   `unikernel::mgmt_auth`): clients answer a challenge with it before any command. The
//!   console shows it as `mgmt.key=<redacted>`.
//! - `mgmt.listen=A.B.C.D` — the management address: the channel listens only there (an
//!   address the guest has, e.g. on a management NIC).
//! - `mgmt.on_data=on|off` — listen on the data NIC's address (default `off`; `tandem run`
//!   turns it on: its user network is reachable only from the host).
//! - `mgmt.idle_ms=N` — close an authenticated management connection that sends nothing for
//!   N ms (default 300000), so a forgotten or half-open one does not hold a slot for ever.
//! - `debug.inject=on|off` — allow `inject ...` on the management channel (default `off`).
//! - `watchdog_ms=N` — restart in place when the service loop stalls for N ms (default
//!   2000; 0 turns the watchdog off).
//! - `debug.stall_after_requests=N` — stall the service loop once the NBD service has taken N
//!   requests (first life only): the watchdog's test.
//! - `debug.cp=hold` — hold NVLOG consistency points off (records stay only in the log; for
//!   crash and replay tests).
//! - `debug.nvram=stamp` — read, then store and persist a boot counter at the start of
//!   `nvram0` (shows the shared region works end to end).
//! - `virtio_mmio.device=SIZE@BASE:IRQ[:ID]` — a virtio-mmio device (QEMU microvm adds these).
//! - `ip=A.B.C.D/N` — the guest's address on its first NIC (default `10.0.2.15/24`, QEMU's
//!   user-network guest address); `gw=A.B.C.D` — default route (default `10.0.2.2`).
//! - `net.echo=PORT` — a TCP echo service on `PORT` (a network self-test until the storage
//!   service takes the port).
//! - `durability=disk|nvlog` — when FLUSH and FUA return: once data is on disk and the disk
//!   was flushed (`disk`, the default), or once it is in the NVRAM log region (`nvlog`; needs
//!   an `nvram0` device).
//! - `nvlog.ram_mib=N` — size of the write log kept in guest RAM when there is no NVRAM
//!   device (default 8; `disk` durability only).
//! - `nbd.port=PORT` — the NBD service's TCP port (default 10809).
//! - `nbd.handshake_ms=N` — a client must finish negotiating within N ms (default 10000); the
//!   oldest negotiating connection is also evicted when a new client needs its socket.
//! - `nbd.stall_ms=N` — a client holding a partly sent request, or not reading its replies,
//!   that moves no byte for N ms is disconnected (default 30000).
//! - `nbd.idle_ms=N` — disconnect negotiated clients idle for N ms (default 0: never).
//! - `nbd.tls=off|on|require` — NBD over TLS (`NBD_OPT_STARTTLS`; default `off`): `on` also
//!   serves plaintext clients, `require` refuses every option but STARTTLS before TLS and
//!   lists nothing. The certificates come from the boot module's `[tls.*]` sections
//!   (`crate::boot_module`); `require` without usable ones serves nothing.
//! - `nbd.tls_verify_peer=on|off` — demand a client certificate signed by the CA (default
//!   `off`, as QEMU's `verify-peer=off` for servers).
//! - `pair=a|b` — run as node A or B of a failover pair (needs the pair's shared region as
//!   the ivshmem device; `durability` defaults to `nvlog`). Tuned by `pair.disks=N` (the first
//!   N disks are this node's own, the next N its peer's; default: half of the disks),
//!   `pair.peer_ip=A.B.C.D` (the peer's address, taken over on failure), `pair.timeout_ms=N`
//!   (peer silence that means failure, default 1000; a peer not yet seen alive since this
//!   node started gets at least 10 s to boot) and `pair.giveback=auto|manual`
//!   (default `auto`: the peer's disks and address go back as soon as it returns).
//!   `pair.peer_export=NAME:DEVICE[:ro][:allow=NETS]` (repeatable, the `export=` syntax with
//!   `DEVICE` in this node's numbering, e.g. `blk2`) names what this node serves for its
//!   peer after a takeover; give the peer's own `export=` names and allow-lists here so that
//!   its clients find the same exports, no more open than before. Default: the peer's disks
//!   as `blk0`, `blk1`, ..., open to every client.
//! - `export=NAME:DEVICE[:ro][:allow=NETS]` — serve `DEVICE` as NBD export `NAME`
//!   (repeatable; default: every disk under its device name, `blk0`, `blk1`, ...). `allow=`
//!   serves it only to clients in the networks `NETS`, `A.B.C.D/N` (or `A.B.C.D`) joined by
//!   `+` (at most 8; [`crate::allow_list`]): others do not see it listed and get
//!   `NBD_REP_ERR_POLICY`. Without `allow=` every client is served.
//! - `bench=DEVICE` — run the block benchmark on `DEVICE` (e.g. `blk0`) instead of serving,
//!   print one `BENCH {json}` line and power off; tuned by `bench.rw=read|write|randread|
//!   randwrite|randrw`, `bench.bs=SIZE`, `bench.qd=N`, `bench.ops=N`, `bench.time_ms=MS`,
//!   `bench.path=hpdi|direct`, `bench.span_mib=N`, `bench.verify=0|1`, `bench.seed=N`.

use core::fmt;

use crate::allow_list::{AclError, AllowList};
use crate::bench_job::{JobSpec, Path, Rw};

/// Most `export=` words.
pub const MAX_EXPORTS: usize = 16;

/// One `export=NAME:DEVICE[:ro][:allow=NETS]` word (its value; [`fmt::Display`] writes it
/// back, and the host's appliance renderer writes its words with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportSpec {
    name: [u8; 32],
    name_len: u8,
    device: [u8; 16],
    device_len: u8,
    pub read_only: bool,
    /// The client networks served (empty: every client).
    pub allow: AllowList,
}

/// What an `export=` value looks like (for error messages).
pub const EXPORT_SYNTAX: &str = "NAME:DEVICE[:ro][:allow=A.B.C.D/N+...]";

impl ExportSpec {
    /// An export of `device` as `name` (1 to 32 and 1 to 16 printable ASCII characters, no
    /// `:`); `None` if a name does not fit.
    pub fn new(name: &str, device: &str, read_only: bool, allow: AllowList) -> Option<Self> {
        let ok = |s: &str, max| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        };
        if !ok(name, 32) || !ok(device, 16) {
            return None;
        }
        let mut e = ExportSpec {
            read_only,
            allow,
            ..Default::default()
        };
        e.name[..name.len()].copy_from_slice(name.as_bytes());
        e.name_len = name.len() as u8;
        e.device[..device.len()].copy_from_slice(device.as_bytes());
        e.device_len = device.len() as u8;
        Some(e)
    }

    /// `NAME:DEVICE`, then `ro` and `allow=NETS` in either order, each at most once. The
    /// error says what was expected.
    pub fn parse(v: &str) -> Result<Self, &'static str> {
        let mut parts = v.split(':');
        let (Some(name), Some(device)) = (parts.next(), parts.next()) else {
            return Err(EXPORT_SYNTAX);
        };
        let (mut read_only, mut allow) = (false, None);
        for p in parts {
            match p.split_once('=') {
                None if p == "ro" && !read_only => read_only = true,
                Some(("allow", nets)) if allow.is_none() => {
                    allow = Some(AllowList::parse(nets).map_err(AclError::expected)?);
                }
                _ => return Err(EXPORT_SYNTAX),
            }
        }
        Self::new(name, device, read_only, allow.unwrap_or_default()).ok_or(EXPORT_SYNTAX)
    }

    pub fn name(&self) -> &str {
        core::str::from_utf8(&self.name[..usize::from(self.name_len)]).unwrap_or("")
    }

    pub fn device(&self) -> &str {
        core::str::from_utf8(&self.device[..usize::from(self.device_len)]).unwrap_or("")
    }
}

/// Up to [`MAX_EXPORTS`] export words with distinct names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ExportList {
    specs: [ExportSpec; MAX_EXPORTS],
    count: usize,
}

impl ExportList {
    fn as_slice(&self) -> &[ExportSpec] {
        &self.specs[..self.count]
    }

    /// Parses and adds one word's value; the error says what was expected.
    fn push(&mut self, value: &str) -> Result<(), &'static str> {
        let e = ExportSpec::parse(value)?;
        if self.count == MAX_EXPORTS {
            return Err("at most 16 exports");
        }
        if self.as_slice().iter().any(|x| x.name() == e.name()) {
            return Err("a name not already exported");
        }
        self.specs[self.count] = e;
        self.count += 1;
        Ok(())
    }
}

/// The `export=` value: `NAME:DEVICE[:ro][:allow=NETS]`, which [`ExportSpec::parse`] reads
/// back.
impl fmt::Display for ExportSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name(), self.device())?;
        if self.read_only {
            write!(f, ":ro")?;
        }
        if !self.allow.is_open() {
            write!(f, ":allow={}", self.allow)?;
        }
        Ok(())
    }
}

/// Most virtio-mmio devices accepted from the command line.
pub const MAX_MMIO_DEVICES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitPolicy {
    Never,
    Ready,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicPoint {
    Boot,
    Ready,
}

/// CPU exceptions the guest can raise on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    PageFault,
    GeneralProtection,
    InvalidOpcode,
    DivideError,
    Breakpoint,
}

/// A virtio-mmio window as Linux's `virtio_mmio.device=` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub log: LogLevel,
    pub exit: ExitPolicy,
    pub dma_pct: u8,
    pub debug_panic: Option<PanicPoint>,
    pub debug_fault: Option<Fault>,
    /// `debug.blkops=DEVICE`: device to self-test (a name, held like the bench target).
    pub debug_blkops: JobSpec,
    /// `debug.nvram=stamp`.
    pub debug_nvram_stamp: bool,
    /// `debug.cp=hold`.
    pub debug_hold_cp: bool,
    pub restart_on_error: bool,
    /// `checkpoint=ignore`: every start (and restart) discovers cold even when a valid
    /// checkpoint exists, and writes a fresh one; for measuring the cold path.
    pub checkpoint_ignore: bool,
    pub debug_panic_after_requests: Option<u64>,
    pub debug_device_error_after_requests: Option<u64>,
    pub watchdog_ms: u64,
    pub mgmt_port: u16,
    /// `mgmt.key=`: without it the management channel is off.
    pub mgmt_key: Option<crate::mgmt_auth::Key>,
    /// `mgmt.listen=`.
    pub mgmt_listen: Option<[u8; 4]>,
    /// `mgmt.on_data=on`.
    pub mgmt_on_data: bool,
    /// `mgmt.idle_ms=`: an authenticated connection idle this long is closed.
    pub mgmt_idle_ms: u64,
    /// `debug.inject=on`.
    pub debug_inject: bool,
    pub debug_stall_after_requests: Option<u64>,
    /// Guest address and prefix length.
    pub ip: ([u8; 4], u8),
    pub gateway: Option<[u8; 4]>,
    /// `net.echo=PORT`.
    pub echo_port: Option<u16>,
    pub nbd_port: u16,
    /// `nbd.handshake_ms`, `nbd.idle_ms`, `nbd.stall_ms` (see `unikernel::nbd::server::Limits::from_config`).
    pub nbd_handshake_ms: u64,
    pub nbd_idle_ms: u64,
    pub nbd_stall_ms: u64,
    /// `nbd.tls=off|on|require`: NBD over TLS (certificates from the boot module).
    pub nbd_tls: TlsMode,
    /// `nbd.tls_verify_peer=on`: clients must present a certificate signed by the CA.
    pub nbd_tls_verify_peer: bool,
    /// `durability=nvlog`.
    pub durability_nvlog: bool,
    /// Whether `durability=` was given (a pair defaults to `nvlog`).
    pub durability_given: bool,
    pub nvlog_ram_mib: u32,
    /// Failover pair settings (`pair=`).
    pub pair: Option<PairConfig>,
    /// `mirror=`, `mirror.*`: the NVLOG mirror to another host.
    pub mirror: MirrorConfig,
    exports: ExportList,
    /// `pair.peer_export=` words.
    peer_exports: ExportList,
    /// The benchmark job; it runs when `bench=DEVICE` named a device.
    pub bench: JobSpec,
    mmio: [MmioDevice; MAX_MMIO_DEVICES],
    mmio_count: usize,
    /// Whether `pair=` named this node (the other `pair.*` keys need it).
    pair_named: bool,
}

/// How a server offers TLS (guest key `nbd.tls`), the NBD protocol's three modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// NOTLS: `NBD_OPT_STARTTLS` is answered `NBD_REP_ERR_UNSUP`, as before TLS existed.
    #[default]
    Off,
    /// STARTTLS is accepted, and plaintext clients are served too.
    On,
    /// FORCEDTLS: before STARTTLS every option but STARTTLS and ABORT is refused with
    /// `NBD_REP_ERR_TLS_REQD` (`NBD_OPT_EXPORT_NAME` closes), so no export is listed or
    /// served in clear.
    Require,
}

impl TlsMode {
    /// `off`, `on` or `require`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "on" => Some(Self::On),
            "require" => Some(Self::Require),
            _ => None,
        }
    }

    /// The word [`TlsMode::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
            Self::Require => "require",
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log: LogLevel::Info,
            exit: ExitPolicy::Never,
            dma_pct: 50,
            debug_panic: None,
            debug_fault: None,
            debug_nvram_stamp: false,
            debug_hold_cp: false,
            restart_on_error: true,
            checkpoint_ignore: false,
            debug_panic_after_requests: None,
            debug_device_error_after_requests: None,
            watchdog_ms: 2000,
            mgmt_port: 10810,
            mgmt_key: None,
            mgmt_listen: None,
            mgmt_on_data: false,
            mgmt_idle_ms: crate::mgmt_auth::IDLE_TIMEOUT_MS,
            debug_inject: false,
            debug_stall_after_requests: None,
            debug_blkops: JobSpec::default(),
            ip: ([10, 0, 2, 15], 24),
            gateway: Some([10, 0, 2, 2]),
            echo_port: None,
            nbd_port: 10809,
            nbd_handshake_ms: 10_000,
            nbd_idle_ms: 0,
            nbd_stall_ms: 30_000,
            nbd_tls: TlsMode::Off,
            nbd_tls_verify_peer: false,
            durability_nvlog: false,
            durability_given: false,
            nvlog_ram_mib: 8,
            pair: None,
            mirror: MirrorConfig::default(),
            exports: ExportList::default(),
            peer_exports: ExportList::default(),
            bench: JobSpec::default(),
            mmio: [MmioDevice::default(); MAX_MMIO_DEVICES],
            mmio_count: 0,
            pair_named: false,
        }
    }
}

/// When a write may be acknowledged, with the NVLOG mirrored to another host (`mirror=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MirrorMode {
    /// No mirror: acknowledged once in the local log.
    #[default]
    Off,
    /// Acknowledged once in the local log and in the mirror (ONTAP's HA rule, DRBD's C).
    Sync,
    /// Acknowledged once in the local log while the mirror is at most `max_lag` records
    /// behind; a host failure loses at most those records.
    Async,
}

/// What to do while the mirror is lost (`mirror.policy=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MirrorPolicy {
    /// Go on, degraded: a write is acknowledged once it is on disk (the log is flushed by
    /// consistency points, then writes go through), until the mirror is back.
    #[default]
    Degraded,
    /// Hold every acknowledgement until the mirror is back.
    Stop,
}

/// The guest's mirror settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorConfig {
    pub mode: MirrorMode,
    pub policy: MirrorPolicy,
    /// `mirror.max_lag=`: records (async mode).
    pub max_lag: u64,
    /// `mirror.timeout_ms=`: a sender silent this long counts as lost.
    pub timeout_ms: u64,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        Self {
            mode: MirrorMode::Off,
            policy: MirrorPolicy::Degraded,
            max_lag: 64,
            timeout_ms: 1000,
        }
    }
}

/// `mirror=` and `mirror.*`.
fn apply_mirror(cfg: &mut Config, key: &str, value: &str) -> Result<(), Problem> {
    let m = &mut cfg.mirror;
    match key {
        key::MIRROR => match value {
            "off" => m.mode = MirrorMode::Off,
            "sync" => m.mode = MirrorMode::Sync,
            "async" => m.mode = MirrorMode::Async,
            _ => return Err(Bad("off|sync|async")),
        },
        key::MIRROR_POLICY => match value {
            "degraded" => m.policy = MirrorPolicy::Degraded,
            "stop" => m.policy = MirrorPolicy::Stop,
            _ => return Err(Bad("degraded|stop")),
        },
        key::MIRROR_MAX_LAG => match value.parse::<u64>() {
            Ok(n) if (1..=65_536).contains(&n) => m.max_lag = n,
            _ => return Err(Bad("1..=65536 records")),
        },
        key::MIRROR_TIMEOUT_MS => match value.parse::<u64>() {
            Ok(n) if (100..=60_000).contains(&n) => m.timeout_ms = n,
            _ => return Err(Bad("100..=60000")),
        },
        _ => return Err(Unknown),
    }
    Ok(())
}

/// A failover pair node's settings (`pair=` and `pair.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairConfig {
    /// 0 for A, 1 for B.
    pub node: u8,
    /// Disks of each node (0: half of those found).
    pub disks: u8,
    pub peer_ip: Option<[u8; 4]>,
    pub timeout_ms: u64,
    pub giveback_auto: bool,
}

impl Default for PairConfig {
    fn default() -> Self {
        Self {
            node: 0,
            disks: 0,
            peer_ip: None,
            timeout_ms: 1000,
            giveback_auto: true,
        }
    }
}

impl PairConfig {
    pub fn name(&self) -> char {
        if self.node == 0 {
            'a'
        } else {
            'b'
        }
    }
}

/// The pair settings a `pair.*` word tunes (made on first use; `pair=` is still needed).
fn pair_mut(cfg: &mut Config) -> &mut PairConfig {
    cfg.pair.get_or_insert_with(PairConfig::default)
}

impl Config {
    /// The `export=` words (empty: export every disk under its own name).
    pub fn exports(&self) -> &[ExportSpec] {
        self.exports.as_slice()
    }

    /// The `pair.peer_export=` words (empty: the peer's disks under `blk0`, `blk1`, ...).
    pub fn peer_exports(&self) -> &[ExportSpec] {
        self.peer_exports.as_slice()
    }

    pub fn mmio_devices(&self) -> &[MmioDevice] {
        &self.mmio[..self.mmio_count]
    }
}

/// A problem with one word of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issue<'a> {
    /// A word without `=`, or with an empty key.
    Malformed(&'a str),
    UnknownKey(&'a str),
    BadValue {
        key: &'a str,
        value: &'a str,
        expected: &'static str,
    },
    TooMany(&'a str),
    /// A key that only means something with another one (`pair.*` without `pair=`).
    Needs {
        key: &'static str,
        needs: &'static str,
    },
}

impl Issue<'_> {
    /// The message without its source (`cmdline: ` or `boot module: `). A value or word that
    /// may be a key (`mgmt.key=`, or a bare 64-hex-digit word) is never shown.
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Issue::Malformed(w) if looks_like_key(w) => write!(
                f,
                "malformed word '<64 hex digits, not shown>' (expected key=value, e.g. mgmt.key=...)"
            ),
            Issue::Malformed(w) => write!(f, "malformed word '{w}' (expected key=value)"),
            Issue::UnknownKey(k) => write!(f, "unknown key '{k}' (ignored)"),
            Issue::BadValue {
                key,
                value,
                expected,
            } => {
                let value = if *key == "mgmt.key" { "<redacted>" } else { value };
                write!(
                    f,
                    "bad value '{value}' for '{key}' (expected {expected}); default kept"
                )
            }
            Issue::TooMany(w) => write!(
                f,
                "more than {MAX_MMIO_DEVICES} virtio-mmio devices, '{w}' dropped"
            ),
            Issue::Needs { key, needs } => write!(f, "'{key}' needs '{needs}' (ignored)"),
        }
    }
}

impl fmt::Display for Issue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cmdline: ")?;
        self.describe(f)
    }
}

/// An issue with a word of the first boot module (see [`parse_parts`]), for the console.
pub struct InModule<'a>(pub Issue<'a>);

impl fmt::Display for InModule<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("boot module: ")?;
        self.0.describe(f)
    }
}

/// A word that would be a management key on its own (the key file's old, bare format).
fn looks_like_key(w: &str) -> bool {
    w.len() == 2 * crate::mgmt_auth::KEY_LEN && w.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses `line`, calling `report` for each word that is not understood.
pub fn parse<'a>(line: &'a str, mut report: impl FnMut(Issue<'a>)) -> Config {
    parse_parts(&[line], |_, issue| report(issue))
}

/// Every key of the guest command line (and of the boot module's words): the host writes
/// these, the guest parses them ([`parse_parts`]).
pub mod key {
    pub const LOG: &str = "log";
    pub const EXIT: &str = "exit";
    pub const DMA_PCT: &str = "dma_pct";
    pub const DEBUG_PANIC: &str = "debug.panic";
    pub const DEBUG_FAULT: &str = "debug.fault";
    pub const IP: &str = "ip";
    pub const GW: &str = "gw";
    pub const DURABILITY: &str = "durability";
    pub const PAIR: &str = "pair";
    pub const PAIR_DISKS: &str = "pair.disks";
    pub const PAIR_PEER_IP: &str = "pair.peer_ip";
    pub const PAIR_TIMEOUT_MS: &str = "pair.timeout_ms";
    pub const PAIR_GIVEBACK: &str = "pair.giveback";
    pub const NVLOG_RAM_MIB: &str = "nvlog.ram_mib";
    pub const NBD_HANDSHAKE_MS: &str = "nbd.handshake_ms";
    pub const NBD_IDLE_MS: &str = "nbd.idle_ms";
    pub const NBD_STALL_MS: &str = "nbd.stall_ms";
    pub const NBD_TLS: &str = "nbd.tls";
    pub const NBD_TLS_VERIFY_PEER: &str = "nbd.tls_verify_peer";
    pub const NBD_PORT: &str = "nbd.port";
    pub const EXPORT: &str = "export";
    pub const PAIR_PEER_EXPORT: &str = "pair.peer_export";
    pub const NET_ECHO: &str = "net.echo";
    pub const DEBUG_BLKOPS: &str = "debug.blkops";
    pub const RESTART: &str = "restart";
    pub const CHECKPOINT: &str = "checkpoint";
    pub const DEBUG_PANIC_AFTER_REQUESTS: &str = "debug.panic_after_requests";
    pub const DEBUG_DEVICE_ERROR_AFTER_REQUESTS: &str = "debug.device_error_after_requests";
    pub const MGMT_PORT: &str = "mgmt.port";
    pub const MGMT_KEY: &str = "mgmt.key";
    pub const MGMT_LISTEN: &str = "mgmt.listen";
    pub const MGMT_ON_DATA: &str = "mgmt.on_data";
    pub const MGMT_IDLE_MS: &str = "mgmt.idle_ms";
    pub const DEBUG_INJECT: &str = "debug.inject";
    pub const WATCHDOG_MS: &str = "watchdog_ms";
    pub const DEBUG_STALL_AFTER_REQUESTS: &str = "debug.stall_after_requests";
    pub const DEBUG_CP: &str = "debug.cp";
    pub const DEBUG_NVRAM: &str = "debug.nvram";
    pub const VIRTIO_MMIO_DEVICE: &str = "virtio_mmio.device";
    pub const BENCH: &str = "bench";
    pub const BENCH_BS: &str = "bench.bs";
    pub const BENCH_OPS: &str = "bench.ops";
    pub const BENCH_PATH: &str = "bench.path";
    pub const BENCH_QD: &str = "bench.qd";
    pub const BENCH_RW: &str = "bench.rw";
    pub const BENCH_SEED: &str = "bench.seed";
    pub const BENCH_SPAN_MIB: &str = "bench.span_mib";
    pub const BENCH_TIME_MS: &str = "bench.time_ms";
    pub const BENCH_VERIFY: &str = "bench.verify";
    pub const MIRROR: &str = "mirror";
    pub const MIRROR_POLICY: &str = "mirror.policy";
    pub const MIRROR_MAX_LAG: &str = "mirror.max_lag";
    pub const MIRROR_TIMEOUT_MS: &str = "mirror.timeout_ms";
    /// Every key above.
    pub const ALL: &[&str] = &[
        LOG,
        EXIT,
        DMA_PCT,
        DEBUG_PANIC,
        DEBUG_FAULT,
        IP,
        GW,
        DURABILITY,
        PAIR,
        PAIR_DISKS,
        PAIR_PEER_IP,
        PAIR_TIMEOUT_MS,
        PAIR_GIVEBACK,
        NVLOG_RAM_MIB,
        NBD_HANDSHAKE_MS,
        NBD_IDLE_MS,
        NBD_STALL_MS,
        NBD_TLS,
        NBD_TLS_VERIFY_PEER,
        NBD_PORT,
        EXPORT,
        PAIR_PEER_EXPORT,
        NET_ECHO,
        DEBUG_BLKOPS,
        RESTART,
        CHECKPOINT,
        DEBUG_PANIC_AFTER_REQUESTS,
        DEBUG_DEVICE_ERROR_AFTER_REQUESTS,
        MGMT_PORT,
        MGMT_KEY,
        MGMT_LISTEN,
        MGMT_ON_DATA,
        MGMT_IDLE_MS,
        DEBUG_INJECT,
        WATCHDOG_MS,
        DEBUG_STALL_AFTER_REQUESTS,
        DEBUG_CP,
        DEBUG_NVRAM,
        VIRTIO_MMIO_DEVICE,
        BENCH,
        BENCH_BS,
        BENCH_OPS,
        BENCH_PATH,
        BENCH_QD,
        BENCH_RW,
        BENCH_SEED,
        BENCH_SPAN_MIB,
        BENCH_TIME_MS,
        BENCH_VERIFY,
        MIRROR,
        MIRROR_POLICY,
        MIRROR_MAX_LAG,
        MIRROR_TIMEOUT_MS,
    ];
}

/// Parses the words of several parts in order, as one line: a later word overrides an
/// earlier one. The guest passes its command line, then its first boot module's words
/// (where the host puts `mgmt.key=`, out of sight of `ps`). `report` gets the index of the
/// part each problem is in, so that the caller can say where it is.
pub fn parse_parts<'a>(parts: &[&'a str], mut report: impl FnMut(usize, Issue<'a>)) -> Config {
    let mut cfg = Config::default();
    let words = parts
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.split_ascii_whitespace().map(move |w| (i, w)));
    for (part, word) in words {
        match word.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                if let Err(issue) = apply(&mut cfg, key, value, word) {
                    report(part, issue);
                }
            }
            _ => report(part, Issue::Malformed(word)),
        }
    }
    if cfg.pair.is_some() && !cfg.pair_named {
        report(
            0,
            Issue::Needs {
                key: "pair.*",
                needs: "pair=a|b",
            },
        );
        cfg.pair = None;
        cfg.peer_exports = ExportList::default();
    }
    cfg
}

/// One `key=value` word, as the host writes it (`key` from [`key`]).
pub fn word(key: &str, value: impl fmt::Display) -> alloc::string::String {
    alloc::format!("{key}={value}")
}

/// Why one word was not applied (see [`apply`], which turns it into an [`Issue`]).
enum Problem {
    /// The value is not what the key takes: what it takes.
    Bad(&'static str),
    Unknown,
    TooMany,
}
use Problem::{Bad, TooMany, Unknown};

/// Applies one `key=value` word to `cfg`, by the key's namespace.
fn apply<'a>(
    cfg: &mut Config,
    key: &'a str,
    value: &'a str,
    word: &'a str,
) -> Result<(), Issue<'a>> {
    let namespace = key.split_once('.').map_or(key, |(ns, _)| ns);
    let applied = match namespace {
        "pair" => apply_pair(cfg, key, value),
        "nbd" => apply_nbd(cfg, key, value),
        "mgmt" => apply_mgmt(cfg, key, value),
        "debug" => apply_debug(cfg, key, value),
        "mirror" => apply_mirror(cfg, key, value),
        "bench" => parse_bench(&mut cfg.bench, key, value).map_err(Bad),
        _ => apply_core(cfg, key, value),
    };
    applied.map_err(|p| match p {
        Bad(expected) => Issue::BadValue {
            key,
            value,
            expected,
        },
        Unknown => Issue::UnknownKey(key),
        TooMany => Issue::TooMany(word),
    })
}

/// The words without a namespace, and `export`, `nvlog.*`, `net.*`, `virtio_mmio.*`.
fn apply_core(cfg: &mut Config, key: &str, value: &str) -> Result<(), Problem> {
    match key {
        key::LOG => match parse_level(value) {
            Some(l) => cfg.log = l,
            None => return Err(Bad("error|warn|info|debug|trace")),
        },
        key::EXIT => match value {
            "ready" => cfg.exit = ExitPolicy::Ready,
            "never" => cfg.exit = ExitPolicy::Never,
            _ => return Err(Bad("ready|never")),
        },
        key::DMA_PCT => match value.parse::<u8>() {
            Ok(p) if (1..=90).contains(&p) => cfg.dma_pct = p,
            _ => return Err(Bad("a percentage from 1 to 90")),
        },
        key::IP => match value.split_once('/') {
            Some((a, n)) => match (parse_ipv4(a), n.parse::<u8>()) {
                (Some(a), Ok(n)) if n <= 32 => cfg.ip = (a, n),
                _ => return Err(Bad("A.B.C.D/N")),
            },
            None => match parse_ipv4(value) {
                Some(a) => cfg.ip = (a, 24),
                None => return Err(Bad("A.B.C.D/N")),
            },
        },
        key::GW => match value {
            "none" => cfg.gateway = None,
            _ => match parse_ipv4(value) {
                Some(a) => cfg.gateway = Some(a),
                None => return Err(Bad("A.B.C.D or none")),
            },
        },
        key::DURABILITY => match value {
            "disk" | "nvlog" => {
                cfg.durability_nvlog = value == "nvlog";
                cfg.durability_given = true;
            }
            _ => return Err(Bad("disk|nvlog")),
        },
        key::NVLOG_RAM_MIB => match value.parse::<u32>() {
            Ok(n) if (1..=1024).contains(&n) => cfg.nvlog_ram_mib = n,
            _ => return Err(Bad("1..=1024")),
        },
        key::EXPORT => {
            if let Err(expected) = cfg.exports.push(value) {
                return Err(Bad(expected));
            }
        }
        key::NET_ECHO => match value.parse::<u16>() {
            Ok(p) if p != 0 => cfg.echo_port = Some(p),
            _ => return Err(Bad("a TCP port 1..65535")),
        },
        key::RESTART => match value {
            "on" => cfg.restart_on_error = true,
            "off" => cfg.restart_on_error = false,
            _ => return Err(Bad("on|off")),
        },
        key::CHECKPOINT => match value {
            "use" => cfg.checkpoint_ignore = false,
            "ignore" => cfg.checkpoint_ignore = true,
            _ => return Err(Bad("use|ignore")),
        },
        key::WATCHDOG_MS => match value.parse::<u64>() {
            Ok(n) if n <= 600_000 => cfg.watchdog_ms = n,
            _ => return Err(Bad("0..=600000")),
        },
        key::VIRTIO_MMIO_DEVICE => match parse_mmio(value) {
            Some(_) if cfg.mmio_count == MAX_MMIO_DEVICES => return Err(TooMany),
            Some(d) => {
                cfg.mmio[cfg.mmio_count] = d;
                cfg.mmio_count += 1;
            }
            None => return Err(Bad("SIZE@BASE:IRQ")),
        },
        _ => return Err(Unknown),
    }
    Ok(())
}

/// `pair` and `pair.*`: the failover pair.
fn apply_pair(cfg: &mut Config, key: &str, value: &str) -> Result<(), Problem> {
    match key {
        key::PAIR => match value {
            "a" | "b" => {
                pair_mut(cfg).node = u8::from(value == "b");
                cfg.pair_named = true;
            }
            _ => return Err(Bad("a|b")),
        },
        key::PAIR_DISKS => match value.parse::<u8>() {
            Ok(n) if (1..=8).contains(&n) => pair_mut(cfg).disks = n,
            _ => return Err(Bad("1..=8")),
        },
        key::PAIR_PEER_IP => match parse_ipv4(value) {
            Some(a) => pair_mut(cfg).peer_ip = Some(a),
            None => return Err(Bad("A.B.C.D")),
        },
        key::PAIR_TIMEOUT_MS => match value.parse::<u64>() {
            Ok(n) if (50..=600_000).contains(&n) => pair_mut(cfg).timeout_ms = n,
            _ => return Err(Bad("50..=600000")),
        },
        key::PAIR_GIVEBACK => match value {
            "auto" | "manual" => pair_mut(cfg).giveback_auto = value == "auto",
            _ => return Err(Bad("auto|manual")),
        },
        key::PAIR_PEER_EXPORT => {
            pair_mut(cfg);
            if let Err(expected) = cfg.peer_exports.push(value) {
                return Err(Bad(expected));
            }
        }
        _ => return Err(Unknown),
    }
    Ok(())
}

/// `nbd.*`: the NBD service.
fn apply_nbd(cfg: &mut Config, key: &str, value: &str) -> Result<(), Problem> {
    match key {
        key::NBD_HANDSHAKE_MS => match value.parse::<u64>() {
            Ok(n) if (100..=600_000).contains(&n) => cfg.nbd_handshake_ms = n,
            _ => return Err(Bad("100..=600000")),
        },
        key::NBD_IDLE_MS => match value.parse::<u64>() {
            Ok(n) if n <= 86_400_000 => cfg.nbd_idle_ms = n,
            _ => return Err(Bad("0 (off) ..=86400000")),
        },
        key::NBD_STALL_MS => match value.parse::<u64>() {
            Ok(n) if (100..=600_000).contains(&n) => cfg.nbd_stall_ms = n,
            _ => return Err(Bad("100..=600000")),
        },
        key::NBD_TLS => match TlsMode::parse(value) {
            Some(m) => cfg.nbd_tls = m,
            None => return Err(Bad("off|on|require")),
        },
        key::NBD_TLS_VERIFY_PEER => match value {
            "on" | "off" => cfg.nbd_tls_verify_peer = value == "on",
            _ => return Err(Bad("on|off")),
        },
        key::NBD_PORT => match value.parse::<u16>() {
            Ok(p) if p != 0 => cfg.nbd_port = p,
            _ => return Err(Bad("a TCP port 1..65535")),
        },
        _ => return Err(Unknown),
    }
    Ok(())
}

/// `mgmt.*`: the management channel.
fn apply_mgmt(cfg: &mut Config, key: &str, value: &str) -> Result<(), Problem> {
    match key {
        key::MGMT_PORT => match value.parse::<u16>() {
            Ok(p) => cfg.mgmt_port = p,
            _ => return Err(Bad("a TCP port (0: off)")),
        },
        key::MGMT_KEY => match crate::mgmt_auth::Key::parse(value) {
            Some(k) => cfg.mgmt_key = Some(k),
            None => return Err(Bad("64 hex digits")),
        },
        key::MGMT_LISTEN => match parse_ipv4(value) {
            Some(a) => cfg.mgmt_listen = Some(a),
            None => return Err(Bad("A.B.C.D")),
        },
        key::MGMT_ON_DATA => match value {
            "on" | "off" => cfg.mgmt_on_data = value == "on",
            _ => return Err(Bad("on|off")),
        },
        key::MGMT_IDLE_MS => match value.parse::<u64>() {
            Ok(n) if (1000..=86_400_000).contains(&n) => cfg.mgmt_idle_ms = n,
            _ => return Err(Bad("1000..=86400000")),
        },
        _ => return Err(Unknown),
    }
    Ok(())
}

/// `debug.*`: fault injection and self-tests.
fn apply_debug(cfg: &mut Config, key: &str, value: &str) -> Result<(), Problem> {
    match key {
        key::DEBUG_PANIC => match value {
            "boot" => cfg.debug_panic = Some(PanicPoint::Boot),
            "ready" => cfg.debug_panic = Some(PanicPoint::Ready),
            _ => return Err(Bad("boot|ready")),
        },
        key::DEBUG_FAULT => match parse_fault(value) {
            Some(f) => cfg.debug_fault = Some(f),
            None => return Err(Bad("pagefault|gp|ud|divide|breakpoint")),
        },
        key::DEBUG_BLKOPS => {
            if !cfg.debug_blkops.set_device(value) {
                return Err(Bad("a device name such as blk0"));
            }
        }
        key::DEBUG_PANIC_AFTER_REQUESTS => match value.parse::<u64>() {
            Ok(n) if n > 0 => cfg.debug_panic_after_requests = Some(n),
            _ => return Err(Bad("a positive request count")),
        },
        key::DEBUG_DEVICE_ERROR_AFTER_REQUESTS => match value.parse::<u64>() {
            Ok(n) if n > 0 => cfg.debug_device_error_after_requests = Some(n),
            _ => return Err(Bad("a positive request count")),
        },
        key::DEBUG_INJECT => match value {
            "on" | "off" => cfg.debug_inject = value == "on",
            _ => return Err(Bad("on|off")),
        },
        key::DEBUG_STALL_AFTER_REQUESTS => match value.parse::<u64>() {
            Ok(n) if n > 0 => cfg.debug_stall_after_requests = Some(n),
            _ => return Err(Bad("a positive request count")),
        },
        key::DEBUG_CP => match value {
            "hold" => cfg.debug_hold_cp = true,
            _ => return Err(Bad("hold")),
        },
        key::DEBUG_NVRAM => match value {
            "stamp" => cfg.debug_nvram_stamp = true,
            _ => return Err(Bad("stamp")),
        },
        _ => return Err(Unknown),
    }
    Ok(())
}

/// One `bench` / `bench.*` word; on error, what was expected.
fn parse_bench(job: &mut JobSpec, key: &str, v: &str) -> Result<(), &'static str> {
    let num = |max: u64, what| {
        parse_number(v)
            .filter(|n| (1..=max).contains(n))
            .ok_or(what)
    };
    match key {
        key::BENCH => {
            if !job.set_device(v) {
                return Err("a device name such as blk0");
            }
        }
        key::BENCH_RW => job.rw = Rw::parse(v).ok_or("read|write|randread|randwrite|randrw")?,
        key::BENCH_BS => {
            job.bs = parse_size(v)
                .filter(|n| (512..=u64::from(crate::bench_job::MAX_BS)).contains(n))
                .ok_or("a size from 512 to 4M")? as u32
        }
        key::BENCH_QD => job.qd = num(u64::from(crate::bench_job::MAX_QD), "1..=1024")? as u16,
        key::BENCH_OPS => job.ops = Some(num(u64::MAX, "a positive count")?),
        key::BENCH_TIME_MS => job.time_ms = Some(num(3_600_000, "1..=3600000 ms")?),
        key::BENCH_SPAN_MIB => job.span = Some(num(1 << 30, "a positive MiB count")? << 20),
        key::BENCH_SEED => job.seed = parse_number(v).ok_or("a number")?,
        key::BENCH_PATH => {
            job.path = match v {
                "hpdi" => Path::Hpdi,
                "direct" => Path::Direct,
                _ => return Err("hpdi|direct"),
            }
        }
        key::BENCH_VERIFY => {
            job.verify = match v {
                "1" => true,
                "0" => false,
                _ => return Err("0|1"),
            }
        }
        _ => return Err("a known bench.* key"),
    }
    Ok(())
}

/// `A.B.C.D`.
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut out {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn parse_level(v: &str) -> Option<LogLevel> {
    Some(match v {
        "error" => LogLevel::Error,
        "warn" => LogLevel::Warn,
        "info" => LogLevel::Info,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => return None,
    })
}

fn parse_fault(v: &str) -> Option<Fault> {
    Some(match v {
        "pagefault" => Fault::PageFault,
        "gp" => Fault::GeneralProtection,
        "ud" => Fault::InvalidOpcode,
        "divide" => Fault::DivideError,
        "breakpoint" => Fault::Breakpoint,
        _ => return None,
    })
}

/// A number in decimal or `0x` hex, with an optional K/M/G suffix (Linux `memparse`).
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n = parse_number(digits)?;
    n.checked_mul(1u64 << shift)
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `SIZE@BASE:IRQ[:ID]`.
fn parse_mmio(v: &str) -> Option<MmioDevice> {
    let (size, rest) = v.split_once('@')?;
    let mut parts = rest.split(':');
    let base = parse_number(parts.next()?)?;
    let irq = parts.next()?.parse().ok()?;
    if let Some(id) = parts.next() {
        id.parse::<u32>().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let size = parse_size(size)?;
    if size == 0 || base.checked_add(size).is_none() {
        return None;
    }
    Some(MmioDevice { base, size, irq })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_key_is_parsed_and_no_other() {
        for k in key::ALL {
            let word = alloc::format!("{k}=?");
            let mut issues = alloc::vec::Vec::new();
            parse(&word, |i| issues.push(alloc::format!("{i}")));
            assert!(
                issues.iter().all(|i| !i.contains("unknown key")),
                "{k}: {issues:?}"
            );
        }
        let mut unknown = 0;
        parse("nbd.tsl=on mgmt.kye=1 bench.qdd=1 pairx=a", |i| {
            unknown += usize::from(matches!(i, Issue::UnknownKey(_) | Issue::BadValue { .. }))
        });
        assert_eq!(unknown, 4);
    }

    fn parse_all(line: &str) -> (Config, Vec<String>) {
        let mut issues = Vec::new();
        let cfg = parse(line, |i| issues.push(i.to_string()));
        (cfg, issues)
    }

    #[test]
    fn defaults_on_empty_line() {
        let (cfg, issues) = parse_all("   ");
        assert_eq!(cfg, Config::default());
        assert!(issues.is_empty());
    }

    #[test]
    fn known_keys() {
        let (cfg, issues) = parse_all(
            "log=debug exit=ready dma_pct=25 debug.panic=ready debug.fault=gp \
             virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=4K@0xfeb00c00:11:3",
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(cfg.log, LogLevel::Debug);
        assert_eq!(cfg.exit, ExitPolicy::Ready);
        assert_eq!(cfg.dma_pct, 25);
        assert_eq!(cfg.debug_panic, Some(PanicPoint::Ready));
        assert_eq!(cfg.debug_fault, Some(Fault::GeneralProtection));
        assert_eq!(
            cfg.mmio_devices(),
            &[
                MmioDevice {
                    base: 0xfeb0_0e00,
                    size: 512,
                    irq: 12
                },
                MmioDevice {
                    base: 0xfeb0_0c00,
                    size: 4096,
                    irq: 11
                },
            ]
        );
    }

    #[test]
    fn reports_unknown_and_malformed() {
        let (cfg, issues) = parse_all("frobnicate=1 loose =x exit=ready");
        assert_eq!(cfg.exit, ExitPolicy::Ready);
        assert_eq!(
            issues,
            [
                "cmdline: unknown key 'frobnicate' (ignored)",
                "cmdline: malformed word 'loose' (expected key=value)",
                "cmdline: malformed word '=x' (expected key=value)",
            ]
        );
    }

    #[test]
    fn bad_values_keep_defaults() {
        let (cfg, issues) = parse_all(
            "log=loud dma_pct=0 dma_pct=95 dma_pct=x debug.fault=nope \
             virtio_mmio.device=512@zz:1 virtio_mmio.device=0@0x1000:1 \
             virtio_mmio.device=1@0xffffffffffffffff:1 virtio_mmio.device=512@0x1000:1:2:3",
        );
        assert_eq!(cfg.log, LogLevel::Info);
        assert_eq!(cfg.dma_pct, 50);
        assert_eq!(cfg.debug_fault, None);
        assert!(cfg.mmio_devices().is_empty());
        assert_eq!(issues.len(), 9);
        assert!(issues[0].contains("bad value 'loud' for 'log'"));
    }

    #[test]
    fn checkpoint_key() {
        assert!(!Config::default().checkpoint_ignore);
        let (cfg, issues) = parse_all("checkpoint=ignore");
        assert!(issues.is_empty(), "{issues:?}");
        assert!(cfg.checkpoint_ignore);
        let (cfg, issues) = parse_all("checkpoint=ignore checkpoint=use checkpoint=maybe");
        assert!(!cfg.checkpoint_ignore);
        assert_eq!(issues.len(), 1);
        assert!(issues[0].contains("use|ignore"), "{issues:?}");
    }

    #[test]
    fn mmio_device_limit() {
        let line: String = (0..MAX_MMIO_DEVICES + 2)
            .map(|i| format!("virtio_mmio.device=512@{:#x}:5 ", 0x1000 * (i + 1)))
            .collect();
        let (cfg, issues) = parse_all(&line);
        assert_eq!(cfg.mmio_devices().len(), MAX_MMIO_DEVICES);
        assert_eq!(issues.len(), 2);
        assert!(issues[0].contains("dropped"));
    }

    #[test]
    fn network_keys() {
        let (cfg, issues) = parse_all("ip=192.168.7.2/16 gw=192.168.0.1 net.echo=7");
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(cfg.ip, ([192, 168, 7, 2], 16));
        assert_eq!(cfg.gateway, Some([192, 168, 0, 1]));
        assert_eq!(cfg.echo_port, Some(7));
        let (cfg, issues) =
            parse_all("ip=1.2.3/8 ip=1.2.3.4/40 gw=x net.echo=0 ip=300.1.1.1 gw=none");
        assert_eq!(issues.len(), 5, "{issues:?}");
        assert_eq!(cfg.ip, Config::default().ip);
        assert_eq!(cfg.gateway, None);
        assert_eq!(parse_ipv4("10.0.2.15"), Some([10, 0, 2, 15]));
        assert_eq!(parse_ipv4("10.0.2.15.1"), None);
    }

    #[test]
    fn export_keys() {
        let (cfg, issues) = parse_all("export=data:blk0 export=logs:blk1:ro nbd.port=2000");
        assert!(issues.is_empty(), "{issues:?}");
        let e = cfg.exports();
        assert_eq!(
            (e[0].name(), e[0].device(), e[0].read_only),
            ("data", "blk0", false)
        );
        assert_eq!(
            (e[1].name(), e[1].device(), e[1].read_only),
            ("logs", "blk1", true)
        );
        assert_eq!(cfg.nbd_port, 2000);
        let (cfg, issues) =
            parse_all("export=x export=a:blk0:rw export=:blk0 export=data:blk0 export=data:blk1");
        assert_eq!(issues.len(), 4, "{issues:?}");
        assert_eq!(cfg.exports().len(), 1);
    }

    #[test]
    fn export_allow_lists() {
        let (cfg, issues) = parse_all(
            "export=a:blk0:allow=10.0.0.0/8+192.168.1.5 export=b:blk1:allow=10.0.2.0/24:ro \
             export=c:blk2:ro:allow=0.0.0.0/0 export=d:blk3",
        );
        assert!(issues.is_empty(), "{issues:?}");
        let e = cfg.exports();
        assert_eq!(e[0].allow.to_string(), "10.0.0.0/8+192.168.1.5/32");
        assert!(!e[0].read_only);
        assert!(e[0].allow.admits(Some([10, 1, 2, 3])));
        assert!(!e[0].allow.admits(Some([192, 168, 1, 6])));
        assert!(e[1].read_only && e[2].read_only);
        assert_eq!(e[1].allow.to_string(), "10.0.2.0/24");
        assert!(e[3].allow.is_open());
        // The word writes back as it parses (one syntax for the guest and the host).
        assert_eq!(e[0].to_string(), "a:blk0:allow=10.0.0.0/8+192.168.1.5/32");
        assert_eq!(e[1].to_string(), "b:blk1:ro:allow=10.0.2.0/24");
        assert_eq!(e[3].to_string(), "d:blk3");
        for x in e {
            assert_eq!(ExportSpec::parse(&x.to_string()), Ok(*x));
        }
        for (word, why) in [
            ("export=a:blk0:allow=10.0.0.1/8", "no address bits set"),
            ("export=a:blk0:allow=10.0.0.0/33", "prefix length"),
            ("export=a:blk0:allow=10.0.0/8", "octets"),
            ("export=a:blk0:allow=", "joined by '+'"),
            ("export=a:blk0:allow=1.0.0.0/8,2.0.0.0/8", "prefix length"),
            (
                "export=a:blk0:allow=10.0.0.0/8:allow=1.0.0.0/8",
                "NAME:DEVICE[:ro]",
            ),
            ("export=a:blk0:ro:ro", "NAME:DEVICE[:ro]"),
            ("export=a:blk0:deny=10.0.0.0/8", "NAME:DEVICE[:ro]"),
        ] {
            let (cfg, issues) = parse_all(word);
            assert_eq!(issues.len(), 1, "{word}: {issues:?}");
            assert!(
                issues[0].contains("'export'") && issues[0].contains(why),
                "{word}: {issues:?}"
            );
            assert!(cfg.exports().is_empty());
        }
        let nine: String = (1..=9).map(|i| format!("{i}.0.0.0/8+")).collect();
        let (_, issues) = parse_all(&format!(
            "export=a:blk0:allow={}",
            nine.trim_end_matches('+')
        ));
        assert!(issues[0].contains("at most 8 networks"), "{issues:?}");
        assert!(ExportSpec::new("a:b", "blk0", false, AllowList::OPEN).is_none());
    }

    #[test]
    fn bench_keys() {
        let (cfg, issues) = parse_all(
            "bench.qd=32 bench=blk1 bench.rw=randwrite bench.bs=64K bench.ops=100 \
             bench.path=direct bench.verify=1 bench.span_mib=16 bench.time_ms=50",
        );
        assert!(issues.is_empty(), "{issues:?}");
        let b = cfg.bench;
        assert_eq!(b.device(), Some("blk1"));
        assert_eq!(
            (b.rw, b.bs, b.qd, b.ops),
            (Rw::RandWrite, 65536, 32, Some(100))
        );
        assert_eq!(
            (b.path, b.verify, b.span, b.time_ms),
            (Path::Direct, true, Some(16 << 20), Some(50))
        );
        let (cfg, issues) =
            parse_all("bench.qd=0 bench.bs=3 bench.rw=sideways bench.frob=1 bench=");
        assert_eq!(cfg.bench, JobSpec::default());
        assert_eq!(issues.len(), 5, "{issues:?}");
        assert!(Config::default().bench.device().is_none());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("4K"), Some(4096));
        assert_eq!(parse_size("0x200"), Some(512));
        assert_eq!(parse_size("2m"), Some(2 << 20));
        assert_eq!(parse_size("99999999999G"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn pair_keys() {
        let mut issues = std::vec::Vec::new();
        let c = parse(
            "pair=b pair.disks=2 pair.peer_ip=10.77.0.10 pair.timeout_ms=300 pair.giveback=manual",
            |i| issues.push(std::format!("{i}")),
        );
        assert!(issues.is_empty(), "{issues:?}");
        let p = c.pair.unwrap();
        assert_eq!((p.node, p.disks, p.timeout_ms), (1, 2, 300));
        assert_eq!(p.peer_ip, Some([10, 77, 0, 10]));
        assert!(!p.giveback_auto);
        assert_eq!(p.name(), 'b');
        assert!(!c.durability_given);

        let mut issues = std::vec::Vec::new();
        let c = parse(
            "pair.disks=2 pair=c pair.timeout_ms=5 durability=disk",
            |i| issues.push(std::format!("{i}")),
        );
        assert_eq!(c.pair, None, "pair.* without a valid pair= is dropped");
        assert!(c.durability_given);
        assert_eq!(issues.len(), 3, "{issues:?}");
        assert!(issues[2].contains("needs 'pair=a|b'"), "{issues:?}");

        // What the node serves for its peer after a takeover: the export= syntax.
        let mut issues = std::vec::Vec::new();
        let c = parse(
            "pair=a pair.peer_export=data:blk2:allow=10.1.0.0/16 pair.peer_export=logs:blk3:ro \
             pair.peer_export=data:blk3 pair.peer_export=x:blk2:allow=300.0.0.0/8",
            |i| issues.push(std::format!("{i}")),
        );
        let p = c.peer_exports();
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p[0].name(), p[0].device()), ("data", "blk2"));
        assert_eq!(p[0].allow.to_string(), "10.1.0.0/16");
        assert!(p[1].read_only && p[1].allow.is_open());
        assert!(
            c.exports().is_empty(),
            "peer exports are not this node's own"
        );
        assert_eq!(
            issues.len(),
            2,
            "a repeated name and a bad network: {issues:?}"
        );
        let c = parse("pair.peer_export=data:blk2", |_| {});
        assert!(c.pair.is_none() && c.peer_exports().is_empty());
    }
}

/// Words for the console (the command line, the boot module's), with the management key's
/// value hidden, and any bare word that could be a key (the key file's old format).
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.0.split_ascii_whitespace().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match w.strip_prefix("mgmt.key=") {
                Some(_) => f.write_str("mgmt.key=<redacted>")?,
                None if looks_like_key(w) => f.write_str("<redacted>")?,
                None => f.write_str(w)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod mgmt_key_tests {
    use super::*;

    #[test]
    fn the_key_is_parsed_and_redacted() {
        let key = "0f".repeat(32);
        let line = alloc::format!("log=info mgmt.key={key} debug.inject=on mgmt.on_data=on");
        let cfg = parse(&line, |i| panic!("{i}"));
        assert_eq!(cfg.mgmt_key, Some(crate::mgmt_auth::Key([0x0f; 32])));
        assert!(cfg.debug_inject && cfg.mgmt_on_data);
        let shown = alloc::format!("{}", Redacted(&line));
        assert!(!shown.contains(&key));
        assert!(shown.contains("mgmt.key=<redacted> debug.inject=on"));
        let defaults = parse("", |i| panic!("{i}"));
        assert!(defaults.mgmt_key.is_none() && !defaults.debug_inject && !defaults.mgmt_on_data);
        let mut bad = 0;
        let cfg = parse("mgmt.key=abc mgmt.listen=1.2.3", |_| bad += 1);
        assert_eq!((bad, cfg.mgmt_key, cfg.mgmt_listen), (2, None, None));
        assert_eq!(defaults.mgmt_idle_ms, crate::mgmt_auth::IDLE_TIMEOUT_MS);
        assert_eq!(defaults.nbd_tls, TlsMode::Off);
        let mut bad = 0;
        let cfg = parse(
            "nbd.tls=require nbd.tls_verify_peer=on nbd.tls=maybe",
            |_| bad += 1,
        );
        assert_eq!((bad, cfg.nbd_tls), (1, TlsMode::Require));
        assert!(cfg.nbd_tls_verify_peer);
        let mut bad = 0;
        let cfg = parse("mgmt.idle_ms=2500 mgmt.idle_ms=5", |_| bad += 1);
        assert_eq!((bad, cfg.mgmt_idle_ms), (1, 2500));
    }

    #[test]
    fn a_near_key_is_never_echoed() {
        // One digit short, or bare (the old key-file format): reported, value not shown.
        let short = "ab".repeat(31) + "c";
        let bare = "cd".repeat(32);
        let line = alloc::format!("mgmt.key={short} {bare} log=info");
        let mut issues = Vec::new();
        let cfg = parse(&line, |i| issues.push(i.to_string()));
        assert!(cfg.mgmt_key.is_none());
        assert_eq!(issues.len(), 2, "{issues:?}");
        assert!(
            issues[0].contains("'<redacted>' for 'mgmt.key'"),
            "{issues:?}"
        );
        assert!(issues[1].contains("not shown"), "{issues:?}");
        let shown = alloc::format!("{}", Redacted(&line));
        assert_eq!(shown, "mgmt.key=<redacted> <redacted> log=info");
        for text in issues.iter().chain([&shown]) {
            assert!(!text.contains(&short) && !text.contains(&bare), "{text}");
        }
    }

    #[test]
    fn parts_parse_as_one_line_in_order() {
        let key = "0f".repeat(32);
        let module = alloc::format!("mgmt.key={key}\n");
        // The module's words come after the command line's: they win.
        let line = "log=debug mgmt.on_data=on nbd.port=2000 mgmt.key=00";
        let mut issues = Vec::new();
        let cfg = parse_parts(&[line, &module], |part, i| {
            issues.push((part, i.to_string()))
        });
        assert_eq!(cfg.mgmt_key, Some(crate::mgmt_auth::Key([0x0f; 32])));
        assert!(cfg.mgmt_on_data && cfg.log == LogLevel::Debug && cfg.nbd_port == 2000);
        // Each problem names its part.
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].0, 0);
        let cfg = parse_parts(&["nbd.port=2000", "nbd.port=3000 frob=1"], |part, i| {
            issues.push((part, InModule(i).to_string()))
        });
        assert_eq!(cfg.nbd_port, 3000);
        assert_eq!(
            issues[1],
            (1, "boot module: unknown key 'frob' (ignored)".into())
        );
        // One part is `parse`.
        assert_eq!(parse_parts(&[line], |_, _| {}), parse(line, |_| {}));
        assert_eq!(parse_parts(&[], |_, _| {}), Config::default());
        // pair.* in one part, pair= in the other: one configuration.
        let cfg = parse_parts(&["pair.disks=2", "pair=b"], |_, i| panic!("{i}"));
        assert_eq!(cfg.pair.map(|p| (p.node, p.disks)), Some((1, 2)));
    }
}
