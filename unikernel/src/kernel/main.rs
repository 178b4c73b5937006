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
mod service;
#[allow(unsafe_code)]
mod storage;
mod time;
mod tls_setup;
#[allow(unsafe_code)]
mod virtio_hal;
mod watchdog;

use core::ops::Range;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use log::{info, warn};
use tandem_formats::console::{ready_key as K, Ready, Restart};
use unikernel::boot_module::{self, BootModule};
use unikernel::cmdline::{self, ExitPolicy, PanicPoint};
use unikernel::exit::GuestExit;
use unikernel::restart::policy::{self, Cause, Life, Verdict};
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
    let hz = calibrate_clock(start_info_paddr);
    let mut phases = phases::Phases::new();
    phases.record("clock", time::now_us());

    let si = read_start_info(start_info_paddr);
    let (cfg, module, words_at) = read_words(&si);
    if cfg.debug_panic == Some(PanicPoint::Boot) {
        panic!("debug.panic=boot requested on the command line");
    }
    let memmap_bytes = Phys::slice(si.memmap_paddr, si.memmap_bytes())
        .unwrap_or_else(|| panic!("memory map at {:#x} is not addressable", si.memmap_paddr));
    let ram = ram_in(memmap_bytes);

    // ACPI is read before the heap exists: firmware tables may sit in RAM the map calls free.
    phases.mark("start_info");
    let acpi = read_acpi(&si);

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
    let split = split_memory(memmap_bytes, &taken, &cfg, ram, &kernel, &mut phases);
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

/// Calibrates the TSC and says hello; returns the TSC's frequency.
fn calibrate_clock(start_info_paddr: u64) -> u64 {
    let (hz, source) = time::calibrate();
    info!(
        "Tandem unikernel {} booting (PVH entry, start_info at {start_info_paddr:#x})",
        env!("CARGO_PKG_VERSION")
    );
    info!(
        "time: TSC {}.{:03} MHz ({source:?})",
        hz / 1_000_000,
        hz / 1000 % 1000
    );
    hz
}

/// Logs the loader's memory map (debug) and returns the bytes of RAM it lists.
fn ram_in(memmap_bytes: &[u8]) -> u64 {
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
    ram
}

/// The ACPI tables the guest reads (the PCI ECAM windows), if the firmware has them.
fn read_acpi(si: &HvmStartInfo) -> Option<acpi::AcpiInfo> {
    match acpi::discover(&Phys, si.rsdp_paddr) {
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
    }
}

/// Splits the usable RAM (the map's RAM less what is `taken`) between heap and DMA frames,
/// and starts the allocators on it.
fn split_memory(
    memmap_bytes: &[u8],
    taken: &[Range<u64>],
    cfg: &cmdline::Config,
    ram: u64,
    kernel: &Range<u64>,
    phases: &mut phases::Phases,
) -> memmap::Split {
    let entries = start_info::memmap_entries(memmap_bytes).map(|e| (e.addr, e.size, e.kind));
    let usable = memmap::usable_ram(entries, taken);
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
    split
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
/// Set while the storage service runs with `restart_on_error`: an error then restarts the
/// guest in place (`unikernel::restart::policy`).
static SERVING: AtomicBool = AtomicBool::new(false);
static RESTARTS: AtomicU32 = AtomicU32::new(0);

/// Which life this is (restarts so far).
fn life() -> Life {
    Life {
        restarts: RESTARTS.load(Ordering::SeqCst),
    }
}

/// The level of per-device start-up lines: `Info` on the first start, `Debug` on a restart,
/// which repeats them unchanged; under emulation every console byte costs a VM exit, and a
/// restart with 8 disks spent ~13 ms printing them.
pub fn detail_level() -> log::Level {
    if life().verbose_start() {
        log::Level::Info
    } else {
        log::Level::Debug
    }
}

/// What `cause` does now, by the restart policy; counts the restart as the policy says.
fn judge(cause: Cause) -> Verdict {
    let armed = SERVING.load(Ordering::SeqCst);
    let restarts = if policy::counts(cause, armed) {
        RESTARTS.fetch_add(1, Ordering::SeqCst)
    } else {
        RESTARTS.load(Ordering::SeqCst)
    };
    policy::verdict(cause, armed, restarts)
}

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
static RESTART_AT: AtomicU64 = AtomicU64::new(0);
static QUIESCED_AT: AtomicU64 = AtomicU64::new(0);

/// The watchdog saw the service loop stall.
pub fn on_watchdog() {
    console::emergency_line(format_args!("WATCHDOG: the service loop stalled"));
    if judge(Cause::Watchdog) == Verdict::Restart {
        restart_in_place(Cause::Watchdog);
    }
    console::emergency_line(format_args!("guest stopping (watchdog, failure exit)"));
    exit::fail()
}

/// The pair protocol asks for a restart in place (`Cause::Fenced`, `Cause::Reclaim`).
fn restart_for_pair(cause: Cause) -> ! {
    judge(cause);
    restart_in_place(cause)
}

/// Stops devices from touching memory, then restarts in place. Never returns.
fn restart_in_place(cause: Cause) -> ! {
    watchdog::stop();
    let n = RESTARTS.load(Ordering::SeqCst);
    let at = time::now_us();
    RESTART_AT.store(at, Ordering::SeqCst);
    let cause = cause.name();
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

/// One life of the guest: devices (from the checkpoint or cold), `TANDEM READY`, the
/// debug hooks that act at ready, then the services and their loop.
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
    let (mut devices, loaded) = checkpoints::configure(&cfg, acpi.as_ref(), &mut phases);
    phases.record("pci_scan", devices.scan_us);
    phases.mark("discovery");
    announce_ready(&devices, &cfg, ram, &kernel, hz);
    at_ready(&mut devices, &cfg);
    service::run(service::Start {
        devices,
        cfg,
        module,
        loaded,
        phases,
    })
}

/// The inventory and the `TANDEM READY` line.
fn announce_ready(
    devices: &discovery::Devices,
    cfg: &cmdline::Config,
    ram: u64,
    kernel: &Range<u64>,
    hz: u64,
) {
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
}

/// What the command line asks for once the guest is ready, before it serves: probes,
/// injected faults, the guest benchmark, a panic or a power-off.
fn at_ready(devices: &mut discovery::Devices, cfg: &cmdline::Config) {
    if cfg.debug_nvram_stamp {
        probes::stamp(devices);
    }
    if let Some(name) = cfg.debug_blkops.device() {
        probes::blkops(devices, name);
    }
    if let Some(f) = cfg
        .debug_fault
        .filter(|_| cfg.debug_panic_after_requests.is_none())
    {
        arch::fault::raise(f);
    }
    if cfg.bench.device().is_some() {
        bench_mode::run(devices, &cfg.bench);
    }
    if cfg.debug_panic == Some(PanicPoint::Ready) {
        panic!("debug.panic=ready requested on the command line");
    }
    if cfg.exit == ExitPolicy::Ready {
        info!("exit=ready: powering off");
        exit::exit(GuestExit::Clean);
    }
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
    if judge(Cause::Panic) == Verdict::Restart {
        restart_in_place(Cause::Panic);
    }
    console::emergency_line(format_args!(
        "guest stopping after {} us (failure exit)",
        time::now_us()
    ));
    exit::fail()
}
