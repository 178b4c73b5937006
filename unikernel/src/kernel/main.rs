//! The Tandem guest kernel: entered through PVH, it sets up the CPU, memory and clock,
//! discovers its devices, prints an inventory and `TANDEM READY`, and serves.
//!
//! This binary is the hardware glue; the logic it feeds is in the `unikernel` library, which
//! unit-tests on the host: among others the pair protocol (`unikernel::ha::protocol`), the
//! start-up decision between the checkpoint and a cold start (`unikernel::restart::startup`)
//! and the restart policy (`unikernel::restart::policy`).
//!
//! `unsafe` is denied here (`deny(unsafe_code)`) except in the modules that must touch
//! hardware or raw memory, each allowed on its `mod` line below:
//! - `arch`: the PVH entry, CPU tables, port I/O, MSRs, interrupts, paging, entropy,
//!   deliberate exceptions, and the C symbols `core` expects;
//! - `mmio`: typed register access (only construction is unsafe; users hold no raw
//!   volatile access);
//! - `dma`: DMA frame regions and device windows as byte slices;
//! - `mem`: the heap and frame allocators, and reads of physical memory;
//! - `pci`: ECAM configuration space;
//! - `virtio_hal`: the `virtio_drivers::Hal` (DMA memory and MMIO windows for the drivers);
//! - `discovery`: constructs virtio-mmio transports, register blocks (`mmio`) and windows
//!   (`dma`) at the addresses devices are found at;
//! - `storage`: the write log's window in an ivshmem BAR (`dma::FrameRegion::device_window`).
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

#[allow(unsafe_code)]
mod arch;
mod bench_mode;
mod checkpoints;
mod console;
#[allow(unsafe_code)]
mod discovery;
#[allow(unsafe_code)]
mod dma;
mod exit;
mod labels;
#[allow(unsafe_code)]
mod mem;
mod mgmt;
#[allow(unsafe_code)]
mod mmio;
mod net;
mod pair;
mod pair_service;
#[allow(unsafe_code)]
mod pci;
mod phases;
mod probes;
#[allow(unsafe_code)]
mod storage;
mod time;
mod tls_setup;
#[allow(unsafe_code)]
mod virtio_hal;
mod watchdog;

use core::ops::Range;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use alloc::string::String;
use log::{info, warn};
use tandem_formats::console::{ready_key as K, NbdLine, Ready, Restart};
use unikernel::boot_module::{self, BootModule};
use unikernel::cmdline::{self, ExitPolicy, PanicPoint};
use unikernel::exit::GuestExit;
use unikernel::start_info::{self, HvmStartInfo};
use unikernel::units::Bytes;
use unikernel::{acpi, inventory, memmap};

use crate::mem::Phys;

/// Longest kernel command line read from the loader.
const MAX_CMDLINE: usize = 4096;

/// Entered from the boot stub in 64-bit mode with the `hvm_start_info` physical address.
pub extern "C" fn kmain(start_info_paddr: u64) -> ! {
    time::mark_boot();
    console::init();
    arch::gdt::init();
    arch::idt::init();
    arch::cpu::mask_pics();
    let (hz, source) = time::calibrate();
    let mut phases = phases::Phases::new();
    phases.record("clock", time::now_us());
    info!(
        "Tandem unikernel {} booting (PVH entry, start_info at {start_info_paddr:#x})",
        env!("CARGO_PKG_VERSION")
    );
    info!(
        "time: TSC {}.{:03} MHz ({source:?})",
        hz / 1_000_000,
        hz / 1000 % 1000
    );

    let si = read_start_info(start_info_paddr);
    let (cfg, module, words_at) = read_words(&si);
    if cfg.debug_panic == Some(PanicPoint::Boot) {
        panic!("debug.panic=boot requested on the command line");
    }

    let memmap_bytes = Phys::slice(si.memmap_paddr, si.memmap_bytes())
        .unwrap_or_else(|| panic!("memory map at {:#x} is not addressable", si.memmap_paddr));
    let entries = || start_info::memmap_entries(memmap_bytes).map(|e| (e.addr, e.size, e.kind));
    let mut ram = 0;
    for e in start_info::memmap_entries(memmap_bytes) {
        log::debug!(
            "memmap: {:#012x}-{:#012x} {}",
            e.addr,
            e.addr + e.size,
            start_info::mem_type_name(e.kind)
        );
        if e.kind == start_info::mem_type::RAM {
            ram += e.size;
        }
    }

    // ACPI is read before the heap exists: firmware tables may sit in RAM the map calls free.
    phases.mark("start_info");
    let acpi = match acpi::discover(&Phys, si.rsdp_paddr) {
        Ok(a) => {
            info!(
                "acpi: RSDP {:#x} rev {} oem \"{}\", {} ECAM window(s)",
                a.rsdp,
                a.revision,
                core::str::from_utf8(&a.oem_id).unwrap_or("?").trim_end(),
                a.ecam_regions().len()
            );
            Some(a)
        }
        Err(e) => {
            info!("acpi: {e}; PCI not scanned");
            None
        }
    };

    let kernel = mem::kernel_range();
    let [cmdline_at, modlist_at, module_at] = words_at;
    let taken = [
        kernel.clone(),
        start_info_paddr..start_info_paddr + core::mem::size_of::<HvmStartInfo>() as u64,
        si.memmap_paddr..si.memmap_paddr + si.memmap_bytes() as u64,
        cmdline_at,
        modlist_at,
        module_at,
    ];
    let usable = memmap::usable_ram(entries(), &taken);
    if usable.dropped_bytes() > 0 {
        warn!(
            "memory: {} of RAM in too many fragments, not used",
            Bytes(usable.dropped_bytes())
        );
    }
    let split = memmap::split(&usable, cfg.dma_pct);
    phases.mark("acpi");
    mem::init(&split);
    info!(
        "memory: ram={} kernel={} usable={} heap={} dma={} ({}%)",
        Bytes(ram),
        Bytes(kernel.end - kernel.start),
        Bytes(usable.total()),
        Bytes(split.heap.total()),
        Bytes(split.dma.total()),
        cfg.dma_pct
    );

    let boot = BootState {
        cfg,
        module,
        acpi,
        split,
        ram,
        kernel,
        hz,
    };
    *BOOT.lock() = Some(boot.clone());
    serve(boot, phases)
}

/// What the first start learnt that a restart in place reuses (clock, ACPI, memory map,
/// configuration).
#[derive(Clone)]
struct BootState {
    cfg: cmdline::Config,
    /// The first boot module's words and sections (TLS files), in memory kept from the heap.
    module: BootModule<'static>,
    acpi: Option<acpi::AcpiInfo>,
    split: memmap::Split,
    ram: u64,
    kernel: core::ops::Range<u64>,
    hz: u64,
}

static BOOT: spin::Mutex<Option<BootState>> = spin::Mutex::new(None);
/// Set while the storage service runs: an error then restarts the guest in place.
static SERVING: AtomicBool = AtomicBool::new(false);
static RESTARTS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
/// The level of per-device start-up lines: `Info` on the first start, `Debug` on a restart,
/// which repeats them unchanged; under emulation every console byte costs a VM exit, and a
/// restart with 8 disks spent ~13 ms printing them.
pub fn detail_level() -> log::Level {
    if RESTARTS.load(Ordering::SeqCst) == 0 {
        log::Level::Info
    } else {
        log::Level::Debug
    }
}

/// Restarts allowed before an error is fatal (a restart loop would hide the problem).
const MAX_RESTARTS: u32 = 8;

/// Entered on a fresh stack after an error while serving: reset memory, re-initialise from
/// the checkpoint, serve again.
pub extern "C" fn kmain_restart() -> ! {
    let Some(boot) = BOOT.lock().clone() else {
        exit::fail()
    };
    mem::reinit(&boot.split);
    arch::idt::clear_nested();
    PANICKING.store(false, Ordering::SeqCst);
    let phases = phases::Phases::restart(
        RESTART_AT.load(Ordering::SeqCst),
        QUIESCED_AT.load(Ordering::SeqCst),
    );
    serve(boot, phases)
}

/// When the error that caused the restart in place was seen, and when the devices were
/// quiesced after it (guest microseconds).
static RESTART_AT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static QUIESCED_AT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Stops devices from touching memory, then restarts in place. Never returns.
static REQUESTS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn stack_requests() -> u64 {
    REQUESTS.load(Ordering::Relaxed)
}

/// The watchdog saw the service loop stall.
pub fn on_watchdog() {
    console::emergency_line(format_args!("WATCHDOG: the service loop stalled"));
    if SERVING.load(Ordering::SeqCst) && RESTARTS.fetch_add(1, Ordering::SeqCst) < MAX_RESTARTS {
        restart_in_place("watchdog");
    }
    console::emergency_line(format_args!("guest stopping (watchdog, failure exit)"));
    exit::fail()
}

fn restart_in_place(cause: &str) -> ! {
    watchdog::stop();
    let n = RESTARTS.load(Ordering::SeqCst);
    let at = time::now_us();
    RESTART_AT.store(at, Ordering::SeqCst);
    console::emergency_line(format_args!(
        "{}",
        Restart {
            cause,
            n,
            at_us: at
        }
    ));
    SERVING.store(false, Ordering::SeqCst);
    discovery::quiesce_all();
    // Every device is reset: no I/O of this life is in flight any more.
    pair_service::acknowledge_pending_fence();
    QUIESCED_AT.store(time::now_us(), Ordering::SeqCst);
    arch::boot::restart_on_boot_stack()
}

fn serve(boot: BootState, mut phases: phases::Phases) -> ! {
    let BootState {
        cfg,
        module,
        acpi,
        split: _,
        ram,
        kernel,
        hz,
    } = boot;
    if cfg.mmio_devices().is_empty() && acpi.as_ref().is_some_and(|a| a.ecam_regions().is_empty()) {
        warn!(
            "no PCI ECAM and no virtio_mmio.device= words: on microvm, start QEMU with \
             acpi=off so it lists its virtio-mmio devices on the command line"
        );
    }
    phases.mark("memory");
    let mut loaded = checkpoints::Loaded::default();
    let mut boot_disk = discovery::boot_disk(acpi.as_ref(), cfg.mmio_devices());
    let found = boot_disk
        .as_mut()
        .map(|b| checkpoints::load(b.dev.as_mut()));
    phases.mark("checkpoint_load");
    let mut devices = match found {
        Some((Some((slot, cp)), errs)) if cfg.checkpoint_ignore => {
            checkpoints::report(&errs);
            loaded.newest = Some((slot, cp.generation));
            info!(
                "checkpoint: generation {} ignored (checkpoint=ignore); discovering cold",
                cp.generation
            );
            // Closed (which resets it) before discovery opens it again.
            drop(boot_disk);
            discovery::discover(acpi.as_ref(), cfg.mmio_devices())
        }
        Some((Some((slot, cp)), errs)) => {
            checkpoints::report(&errs);
            loaded.newest = Some((slot, cp.generation));
            match discovery::from_checkpoint(acpi.as_ref(), cfg.mmio_devices(), &cp, boot_disk) {
                Ok(d) => {
                    info!(
                        "checkpoint: generation {} from slot {slot}: {} devices configured without a scan",
                        cp.generation,
                        d.records.len()
                    );
                    loaded.used = Some(cp);
                    d
                }
                Err(reason) => {
                    warn!(
                        "checkpoint: generation {} not used: {reason}; discovering cold",
                        cp.generation
                    );
                    discovery::discover(acpi.as_ref(), cfg.mmio_devices())
                }
            }
        }
        Some((None, errs)) => {
            checkpoints::report(&errs);
            info!("checkpoint: none found; discovering cold");
            drop(boot_disk);
            discovery::discover(acpi.as_ref(), cfg.mmio_devices())
        }
        None => {
            drop(boot_disk);
            discovery::discover(acpi.as_ref(), cfg.mmio_devices())
        }
    };
    phases.record("pci_scan", devices.scan_us);
    phases.mark("discovery");
    for entry in &devices.inventory {
        log::log!(detail_level(), "{entry}");
    }
    let (disks, nics) = inventory::count(&devices.inventory);
    let nvram = devices.registry.of_kind(hpdi::DeviceKind::Memory).count();
    let machine = inventory::machine_name(devices.host_bridge, cfg.mmio_devices().len());
    let st = mem::stats();
    let ([a, b, c, d], _) = cfg.ip;
    let ip = format_args!("{a}.{b}.{c}.{d}");
    let (kernel_bytes, tsc_mhz, boot_us) =
        (kernel.end - kernel.start, hz / 1_000_000, time::now_us());
    console::line(format_args!(
        "{}",
        Ready(&[
            (K::MACHINE, &machine),
            (K::DISKS, &disks),
            (K::NICS, &nics),
            (K::NVRAM, &nvram),
            (K::PCI_FUNCTIONS, &devices.pci_functions),
            (K::MEM_TOTAL, &Bytes(ram)),
            (K::KERNEL, &Bytes(kernel_bytes)),
            (K::HEAP_TOTAL, &Bytes(st.heap_total)),
            (K::HEAP_USED, &Bytes(st.heap_used)),
            (K::DMA_TOTAL, &Bytes(st.dma_total)),
            (K::DMA_USED, &Bytes(st.dma_used)),
            (K::IP, &ip),
            (K::HYPERVISOR, &hypervisor()),
            (K::TSC_MHZ, &tsc_mhz),
            (K::BOOT_US, &boot_us),
        ])
    ));

    if cfg.debug_nvram_stamp {
        probes::stamp(&mut devices);
    }
    if let Some(name) = cfg.debug_blkops.device() {
        probes::blkops(&mut devices, name);
    }
    if let Some(f) = cfg
        .debug_fault
        .filter(|_| cfg.debug_panic_after_requests.is_none())
    {
        arch::fault::raise(f);
    }
    if cfg.bench.device().is_some() {
        bench_mode::run(&mut devices, &cfg.bench);
    }
    if cfg.debug_panic == Some(PanicPoint::Ready) {
        panic!("debug.panic=ready requested on the command line");
    }
    if cfg.exit == ExitPolicy::Ready {
        info!("exit=ready: powering off");
        exit::exit(GuestExit::Clean);
    }
    let Some((name, dev, info)) = devices.nics.pop() else {
        warn!("no NIC: nothing to serve on, idle");
        arch::cpu::halt_forever()
    };
    phases.mark("ready");
    let mut pair = match cfg.pair {
        Some(_) => {
            match pair_service::join(&mut devices, &cfg, info.mac) {
                Ok(p) => Some(p),
                Err(e) => {
                    warn!("pair: {e}; not serving (a pair node without its region could not be fenced)");
                    arch::cpu::halt_forever()
                }
            }
        }
        None => None,
    };
    let mut stack = match net::NetStack::new(dev, &info, &cfg) {
        Ok(s) => s,
        Err(e) => panic!("{name}: {e}"),
    };
    phases.mark("network");
    let spec = match pair.as_ref() {
        Some(p) => {
            Some(pair_service::own_spec(p, &mut devices, &cfg)).filter(|_| p.own_epoch.is_some())
        }
        None => Some(storage::ServiceSpec::single(&devices, &cfg)),
    };
    stack.tls = tls_setup::settings(&cfg, &module);
    let tls = stack.tls.clone();
    match spec
        .ok_or_else(|| String::from("standby: the peer holds this node's disks"))
        .and_then(|spec| {
            storage::NbdService::new(&mut devices, &cfg, &loaded, &mut stack.sockets, spec, tls?)
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
    phases.mark("storage");
    phases.summary();
    if let Some(p) = pair.as_ref() {
        p.publish(if p.own_epoch.is_some() {
            unikernel::ha::region::State::Serving
        } else {
            unikernel::ha::region::State::Standby
        });
    }
    let mut announcer = pair_service::Announcer::new();
    if pair.as_ref().is_some_and(|p| p.own_epoch.is_some()) {
        // Our address may have pointed at the peer while it covered for us.
        announcer.schedule(cfg.ip.0);
    }
    let mut heap_peak = 0u64;
    let mut next_status = time::now_us() + STATUS_EVERY_US;
    SERVING.store(cfg.restart_on_error, Ordering::SeqCst);
    watchdog::start(cfg.watchdog_ms);
    let stall_after = cfg
        .debug_stall_after_requests
        .filter(|_| RESTARTS.load(Ordering::SeqCst) == 0);
    let first_life = RESTARTS.load(Ordering::SeqCst) == 0;
    let inject_after = cfg.debug_panic_after_requests.filter(|_| first_life);
    let mut device_error_after = cfg.debug_device_error_after_requests.filter(|_| first_life);
    let life_started = phases.started_at();
    let mut active_at = time::now_us();
    let mut first_served = false;
    for turn in 0u64.. {
        watchdog::beat();
        if let Some(p) = pair.as_mut() {
            if let Some(why) = pair_service::turn(p, &mut stack, &mut devices, &cfg, &mut announcer)
            {
                RESTARTS.fetch_add(1, Ordering::SeqCst);
                restart_in_place(why);
            }
        }
        if stack.poll() {
            active_at = time::now_us();
        } else if watchdog::ticking() && time::now_us() - active_at > IDLE_BEFORE_HALT_US {
            arch::cpu::wait_for_interrupt();
        }
        if let Some(n) = stack.nbd.as_ref() {
            REQUESTS.store(n.requests(), Ordering::Relaxed);
        }
        let data_path = stack.data_path();
        let mgmt_status = || unikernel::mgmt_status::Status {
            restarts: u64::from(RESTARTS.load(Ordering::SeqCst)),
            requests: stack_requests(),
            heap_used: mem::stats().heap_used,
            data: data_path,
        };
        match stack.poll_mgmt(&mgmt_status) {
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
        if let Some(n) = stall_after {
            if stack.nbd.as_ref().is_some_and(|s| s.requests() >= n) {
                warn!("debug.stall_after_requests={n}: the service loop stops here");
                loop {
                    core::hint::spin_loop();
                }
            }
        }
        if !first_served && stack.nbd.as_ref().is_some_and(|s| s.requests() > 0) {
            first_served = true;
            let now = time::now_us();
            console::line(format_args!(
                "TANDEM SERVED first_request_us={now} since_start_us={} restarts={}",
                now - life_started,
                RESTARTS.load(Ordering::SeqCst)
            ));
        }
        if let Some(n) = device_error_after {
            if stack.nbd.as_ref().is_some_and(|s| s.requests() >= n) {
                warn!("debug.device_error_after_requests={n}: the next disk completion fails");
                frontend_drivers::virtio_blk::INJECT_QUEUE_ERROR.store(true, Ordering::SeqCst);
                device_error_after = None;
            }
        }
        if stack.nbd.as_ref().is_some_and(|s| s.device_failures() > 0) {
            // A device whose queue failed cannot be trusted with more I/O: re-initialise it.
            panic!("fatal device error: a disk's queue failed");
        }
        if let Some(n) = inject_after {
            if stack.nbd.as_ref().is_some_and(|s| s.requests() >= n) {
                match cfg.debug_fault {
                    Some(f) => arch::fault::raise(f),
                    None => panic!("debug.panic_after_requests={n}: injected error"),
                }
            }
        }
        if turn % 256 == 0 {
            heap_peak = heap_peak.max(mem::stats().heap_used);
            if time::now_us() >= next_status {
                next_status += STATUS_EVERY_US;
                status(&stack, heap_peak);
            }
        }
    }
    unreachable!()
}

/// An idle service loop halts until the next 1 ms tick once nothing has happened for this
/// long: an idle guest stops burning a host CPU (a pair runs two guests), while a client
/// keeping it busy never meets the halt.
const IDLE_BEFORE_HALT_US: u64 = 2_000;

/// How often the serving guest prints a status line.
const STATUS_EVERY_US: u64 = 10_000_000;

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

fn read_start_info(paddr: u64) -> HvmStartInfo {
    let bytes = Phys::slice(paddr, core::mem::size_of::<HvmStartInfo>())
        .unwrap_or_else(|| panic!("hvm_start_info at {paddr:#x} is not addressable"));
    match start_info::parse(bytes) {
        Ok(si) => si,
        Err(e) => panic!("cannot boot: {e}"),
    }
}

/// The guest's configuration: the command line's words, then the first boot module's (where
/// the host puts `mgmt.key=` and TLS files, out of sight of `ps`; `unikernel::boot_module`).
/// Returns it, the module's parts, and the memory the loader's command line, module list and
/// module occupy, which the allocator must leave alone (a restart in place reads them again).
fn read_words(si: &HvmStartInfo) -> (cmdline::Config, BootModule<'static>, [Range<u64>; 3]) {
    let (line, line_len) = read_cmdline(si);
    let module = match start_info::read_first_module(si, Phys::slice) {
        Ok(m) => m,
        Err(e) => {
            warn!("boot module: {e}; its words are ignored");
            None
        }
    };
    let parts = match module.as_ref().map(|m| BootModule::parse(m.words)) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            warn!("boot module: {e}; it is ignored");
            BootModule::default()
        }
        None => BootModule::default(),
    };
    let cfg = cmdline::parse_parts(&[line, parts.words], |part, issue| {
        if part == 0 {
            warn!("{issue}")
        } else {
            warn!("{}", cmdline::InModule(issue))
        }
    });
    console::set_level(cfg.log);
    info!("cmdline: \"{}\"", cmdline::Redacted(line));
    if let Some(m) = &module {
        info!(
            "boot module: {} words ({})",
            parts.words.split_ascii_whitespace().count(),
            cmdline::Redacted(parts.words)
        );
        for name in boot_module::SECTIONS {
            if let Some(text) = parts.section(name) {
                info!("boot module: [{name}] {} bytes", text.len());
            }
        }
        if m.count > 1 {
            warn!(
                "boot module: {} modules given; only the first is read",
                m.count
            );
        }
    }
    let at = [
        si.cmdline_paddr..si.cmdline_paddr + line_len as u64 + 1,
        si.modlist_range(),
        module.map_or(0..0, |m| m.range),
    ];
    (cfg, parts, at)
}

/// The command line as the loader left it (NUL-terminated, bounded, UTF-8 prefix), and the
/// number of bytes it occupies.
fn read_cmdline(si: &HvmStartInfo) -> (&'static str, usize) {
    if si.cmdline_paddr == 0 {
        return ("", 0);
    }
    let mut len = 0;
    while len < MAX_CMDLINE {
        match Phys::slice(si.cmdline_paddr + len as u64, 1) {
            Some([0]) | None => break,
            Some(_) => len += 1,
        }
    }
    if len == MAX_CMDLINE {
        warn!("cmdline: longer than {MAX_CMDLINE} bytes, truncated");
    }
    let bytes = Phys::slice(si.cmdline_paddr, len).unwrap_or_default();
    match core::str::from_utf8(bytes) {
        Ok(s) => (s, len),
        Err(e) => {
            warn!(
                "cmdline: not UTF-8 after byte {}, truncated",
                e.valid_up_to()
            );
            let valid = &bytes[..e.valid_up_to()];
            (core::str::from_utf8(valid).unwrap_or_default(), len)
        }
    }
}

fn hypervisor() -> &'static str {
    match arch::cpu::hypervisor_signature() {
        Some(s) if s.starts_with(b"KVMKVMKVM") => "kvm",
        Some(s) if s.starts_with(b"TCGTCGTCGTCG") => "tcg",
        Some(s) if s.starts_with(b"XenVMMXenVMM") => "xen",
        Some(_) => "other",
        None => "none",
    }
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    if PANICKING.swap(true, Ordering::SeqCst) {
        console::emergency_line(format_args!("PANIC (nested): {}", info.message()));
        exit::fail();
    }
    match info.location() {
        Some(l) => console::emergency_line(format_args!(
            "PANIC at {}:{}:{}: {}",
            l.file(),
            l.line(),
            l.column(),
            info.message()
        )),
        None => console::emergency_line(format_args!("PANIC at <unknown>: {}", info.message())),
    }
    if SERVING.load(Ordering::SeqCst) && RESTARTS.fetch_add(1, Ordering::SeqCst) < MAX_RESTARTS {
        restart_in_place("panic");
    }
    console::emergency_line(format_args!(
        "guest stopping after {} us (failure exit)",
        time::now_us()
    ));
    exit::fail()
}
