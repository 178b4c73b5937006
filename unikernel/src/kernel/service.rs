//! Serving: the network stack, the pair membership, the NBD service and the management
//! channel started once the guest is ready, then the service loop that drives them turn by
//! turn (with the watchdog's heartbeat, the debug hooks that inject errors, and a status
//! line every few seconds). An error in the loop restarts the guest in place by the policy
//! in `unikernel::restart::policy` (the kernel root carries it out).

use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};

use log::{info, warn};
use tandem_formats::console::NbdLine;
use unikernel::cmdline::Config;
use unikernel::restart::policy;
use unikernel::units::Bytes;

use crate::checkpoints::Loaded;
use crate::discovery::Devices;
use crate::pair::Pair;
use crate::phases::Phases;
use crate::{arch, console, mem, mgmt, net, pair_service, storage, time, tls_setup, watchdog};

/// An idle service loop halts until the next 1 ms tick once nothing has happened for this
/// long: an idle guest stops burning a host CPU (a pair runs two guests), while a client
/// keeping it busy never meets the halt.
const IDLE_BEFORE_HALT_US: u64 = 2_000;

/// How often the serving guest prints a status line.
const STATUS_EVERY_US: u64 = 10_000_000;

/// Requests the NBD service has taken this life (for the management channel's `status`).
static REQUESTS: AtomicU64 = AtomicU64::new(0);

fn stack_requests() -> u64 {
    REQUESTS.load(Ordering::Relaxed)
}

/// What serving starts from: the devices configured and what the start learnt.
pub struct Start {
    pub devices: Devices,
    pub cfg: Config,
    pub module: unikernel::boot_module::BootModule<'static>,
    pub loaded: Loaded,
    pub phases: Phases,
}

/// Starts the services and runs the loop. Never returns: a restart in place or an exit
/// ends the life.
pub fn run(start: Start) -> ! {
    let Start {
        mut devices,
        cfg,
        module,
        loaded,
        mut phases,
    } = start;
    let Some((name, dev, info)) = devices.nics.pop() else {
        warn!("no NIC: nothing to serve on, idle");
        arch::cpu::halt_forever()
    };
    phases.mark("ready");
    let pair = join_pair(&mut devices, &cfg, info.mac);
    let mut stack = match net::NetStack::new(dev, &info, &cfg) {
        Ok(s) => s,
        Err(e) => panic!("{name}: {e}"),
    };
    phases.mark("network");
    start_nbd(
        &mut stack,
        &mut devices,
        &cfg,
        &module,
        &loaded,
        pair.as_ref(),
    );
    start_mgmt(&mut stack, &cfg);
    phases.mark("storage");
    phases.summary();
    let mut announcer = pair_service::Announcer::new();
    if let Some(p) = pair.as_ref() {
        p.publish(if p.own_epoch.is_some() {
            unikernel::ha::region::State::Serving
        } else {
            unikernel::ha::region::State::Standby
        });
        if p.own_epoch.is_some() {
            // Our address may have pointed at the peer while it covered for us.
            announcer.schedule(cfg.ip.0);
        }
    }
    let mut service = Loop {
        stack,
        devices,
        pair,
        announcer,
        hooks: Hooks::for_this_life(&cfg),
        cfg,
        life_started: phases.started_at(),
        active_at: time::now_us(),
        first_served: false,
        heap_peak: 0,
        next_status: time::now_us() + STATUS_EVERY_US,
    };
    crate::SERVING.store(service.cfg.restart_on_error, Ordering::SeqCst);
    watchdog::start(service.cfg.watchdog_ms);
    for turn in 0u64.. {
        service.turn(turn);
    }
    unreachable!()
}

/// Joins the failover pair when configured; a pair node without its region serves nothing
/// (it could not be fenced).
fn join_pair(devices: &mut Devices, cfg: &Config, mac: [u8; 6]) -> Option<Pair> {
    cfg.pair?;
    match pair_service::join(devices, cfg, mac) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!("pair: {e}; not serving (a pair node without its region could not be fenced)");
            arch::cpu::halt_forever()
        }
    }
}

/// This node's NBD service: its own exports (a pair node standing by serves none).
fn start_nbd(
    stack: &mut net::NetStack,
    devices: &mut Devices,
    cfg: &Config,
    module: &unikernel::boot_module::BootModule<'static>,
    loaded: &Loaded,
    pair: Option<&Pair>,
) {
    let spec = match pair {
        Some(p) => Some(pair_service::own_spec(p, devices, cfg)).filter(|_| p.own_epoch.is_some()),
        None => Some(storage::ServiceSpec::single(devices, cfg)),
    };
    stack.tls = tls_setup::settings(cfg, module);
    let tls = stack.tls.clone();
    match spec
        .ok_or_else(|| String::from("standby: the peer holds this node's disks"))
        .and_then(|spec| {
            storage::NbdService::new(devices, cfg, loaded, &mut stack.sockets, spec, tls?)
        }) {
        Ok(nbd) => {
            for e in nbd.exports() {
                let (ip, port, export) = (cfg.ip.0, cfg.nbd_port, e);
                console::line(format_args!("{}", NbdLine { ip, port, export }));
            }
            stack.nbd = Some(nbd);
        }
        Err(e) => warn!("nbd: not serving: {e}"),
    }
}

/// The management channel, where it may listen.
fn start_mgmt(stack: &mut net::NetStack, cfg: &Config) {
    let mgmt_addr = cfg.mgmt_listen.or(cfg.mgmt_on_data.then_some(cfg.ip.0));
    match (&cfg.mgmt_key, mgmt_addr) {
        _ if cfg.mgmt_port == 0 => {}
        (None, _) => info!("mgmt: off (no mgmt.key)"),
        (Some(_), None) => {
            info!("mgmt: off (no mgmt.listen=ADDRESS; mgmt.on_data=on for the data NIC)")
        }
        (Some(_), Some(addr)) if cfg.mgmt_listen.is_some() && addr != cfg.ip.0 => {
            let [a, b, c, d] = addr;
            warn!("mgmt: off: the guest has no address {a}.{b}.{c}.{d} (mgmt.listen)")
        }
        (Some(key), Some(addr)) => {
            stack.mgmt = Some(mgmt::Mgmt::new(
                &mut stack.sockets,
                mgmt::Settings {
                    port: cfg.mgmt_port,
                    addr,
                    key: key.clone(),
                    inject: cfg.debug_inject,
                    idle_ms: cfg.mgmt_idle_ms,
                },
            ));
            let [a, b, c, d] = addr;
            info!(
                "mgmt: control channel on tcp/{} at {a}.{b}.{c}.{d}, authenticated (status{})",
                cfg.mgmt_port,
                if cfg.debug_inject {
                    ", inject KIND"
                } else {
                    "; inject off"
                }
            );
        }
    }
}

/// The debug hooks that inject an error after some requests: the first life only.
struct Hooks {
    stall_after: Option<u64>,
    inject_after: Option<u64>,
    device_error_after: Option<u64>,
}

impl Hooks {
    fn for_this_life(cfg: &Config) -> Self {
        let life = crate::life();
        Self {
            stall_after: life.hook(cfg.debug_stall_after_requests),
            inject_after: life.hook(cfg.debug_panic_after_requests),
            device_error_after: life.hook(cfg.debug_device_error_after_requests),
        }
    }
}

/// The service loop's state.
struct Loop {
    stack: net::NetStack,
    devices: Devices,
    pair: Option<Pair>,
    announcer: pair_service::Announcer,
    hooks: Hooks,
    cfg: Config,
    /// When this life started (guest microseconds).
    life_started: u64,
    /// When the stack last did something.
    active_at: u64,
    first_served: bool,
    heap_peak: u64,
    next_status: u64,
}

impl Loop {
    /// One turn: the watchdog's beat, the pair, the network and its services, the
    /// management channel, the debug hooks, and now and then a status line.
    fn turn(&mut self, turn: u64) {
        watchdog::beat();
        if let Some(p) = self.pair.as_mut() {
            let (stack, devices) = (&mut self.stack, &mut self.devices);
            if let Some(cause) =
                pair_service::turn(p, stack, devices, &self.cfg, &mut self.announcer)
            {
                crate::restart_for_pair(cause);
            }
        }
        if self.stack.poll() {
            self.active_at = time::now_us();
        } else if watchdog::ticking() && time::now_us() - self.active_at > IDLE_BEFORE_HALT_US {
            arch::cpu::wait_for_interrupt();
        }
        if let Some(n) = self.stack.nbd.as_ref() {
            REQUESTS.store(n.requests(), Ordering::Relaxed);
        }
        self.poll_mgmt();
        self.debug_hooks();
        if turn.is_multiple_of(256) {
            self.heap_peak = self.heap_peak.max(mem::stats().heap_used);
            if time::now_us() >= self.next_status {
                self.next_status += STATUS_EVERY_US;
                status(&self.stack, self.heap_peak);
            }
        }
    }

    /// The management channel, and what an authenticated client injects.
    fn poll_mgmt(&mut self) {
        let data_path = self.stack.data_path();
        let mirror = self.stack.nbd.as_ref().and_then(|n| n.mirror());
        let mgmt_status = || unikernel::mgmt_status::Status {
            restarts: u64::from(crate::life().restarts),
            requests: stack_requests(),
            heap_used: mem::stats().heap_used,
            data: data_path,
            mirror,
        };
        match self.stack.poll_mgmt(&mgmt_status) {
            Some(mgmt::Injection::Panic) => panic!("mgmt: injected panic"),
            Some(mgmt::Injection::Fault(f)) => arch::fault::raise(f),
            Some(mgmt::Injection::Stall) => {
                warn!("mgmt: injected stall: the service loop stops here");
                loop {
                    core::hint::spin_loop();
                }
            }
            Some(mgmt::Injection::DeviceError) => {
                frontend_drivers::virtio_blk::INJECT_QUEUE_ERROR.store(true, Ordering::SeqCst)
            }
            None => {}
        }
    }

    /// The command line's debug hooks (stall, device error, panic or fault after some
    /// requests), the first request's line, and a failed disk queue.
    fn debug_hooks(&mut self) {
        let requests = self.stack.nbd.as_ref().map(|s| s.requests());
        let reached = |n: u64| requests.is_some_and(|r| r >= n);
        if let Some(n) = self.hooks.stall_after
            && reached(n)
        {
            warn!("debug.stall_after_requests={n}: the service loop stops here");
            loop {
                core::hint::spin_loop();
            }
        }
        if !self.first_served && requests.is_some_and(|r| r > 0) {
            self.first_served = true;
            let now = time::now_us();
            console::line(format_args!(
                "TANDEM SERVED first_request_us={now} since_start_us={} restarts={}",
                now - self.life_started,
                crate::life().restarts
            ));
        }
        if let Some(n) = self.hooks.device_error_after
            && reached(n)
        {
            warn!("debug.device_error_after_requests={n}: the next disk completion fails");
            frontend_drivers::virtio_blk::INJECT_QUEUE_ERROR.store(true, Ordering::SeqCst);
            self.hooks.device_error_after = None;
        }
        if self
            .stack
            .nbd
            .as_ref()
            .is_some_and(|s| policy::device_failed(s.device_failures()))
        {
            // A device whose queue failed cannot be trusted with more I/O: re-initialise it.
            panic!("fatal device error: a disk's queue failed");
        }
        if let Some(n) = self.hooks.inject_after
            && reached(n)
        {
            match self.cfg.debug_fault {
                Some(f) => arch::fault::raise(f),
                None => panic!("debug.panic_after_requests={n}: injected error"),
            }
        }
    }
}

fn status(stack: &net::NetStack, heap_peak: u64) {
    let st = mem::stats();
    let log = stack.nbd.as_ref().and_then(|n| n.log_state());
    let (records, live, free, cps) = log.map_or((0, 0, 0, 0), |(s, live, free, _)| {
        (s.records, live, free, s.consistency_points)
    });
    info!(
        "status: heap_used={} heap_peak={} dma_used={} nvlog_records={records} nvlog_live={live} nvlog_free_pages={free} consistency_points={cps}",
        Bytes(st.heap_used),
        Bytes(heap_peak),
        Bytes(st.dma_used)
    );
}
