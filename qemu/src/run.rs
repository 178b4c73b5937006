//! `tandem run`: boot the guest, stream its console, exit with its status.
//!
//! Steps: choose the accelerator, find QEMU and the image, lock the state directory, make
//! the default disk and the NVRAM file, check the NBD port is free, build the command line,
//! spawn QEMU in its own process group, then follow the console until QEMU exits. On the
//! ready line a short banner goes to stderr.
//!
//! NVRAM: every q35 guest gets a shared-memory region, `ivshmem-plain` over
//! `<state-dir>/nvram.bin` (created sparse with `--nvram-size`, default 64M, and kept across
//! runs: it is the guest's emulated NVRAM, where its write log lives). The file is mapped
//! shared, so what the guest stored is in the host page cache the moment it stores it and
//! survives a crash of the guest or a kill of QEMU; a host power loss can lose it.
//! `--no-nvram` turns it off; microvm (no PCI) cannot have one and says so once. The
//! state-dir lock keeps two guests from sharing the file. Ctrl-C (or SIGTERM/SIGHUP) stops QEMU in order (QMP `quit`, kill
//! after 3 s) and exits 130; `--timeout` does the same and exits 124.
//!
//! Management: with a forward (`--mgmt-port`, default 10810) the guest gets
//! `<state-dir>/mgmt.key` as its first boot module (`-initrd`), not on `-append`: QEMU's argv
//! is readable by every local user, so only the file's name is there (see [`crate::mgmt`]).

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::accel::{self, AccelDecision};
use crate::builder::{Disk, DiskFormat, Machine, Nic, QemuCommand, SharedRegion, VhostUserBlk};
use crate::cli::{DiskBackend, OnOff, RunArgs};
use crate::console::ConsoleEvent;
use crate::exit::{GuestExit, EXIT_INTERRUPTED, EXIT_TIMEOUT};
use crate::state::{StateDir, DEFAULT_NVRAM_SIZE};
use crate::vhost_backend::{BackendCommand, BackendDaemon};
use crate::vm::{Poll, SpawnOptions, Vm};

/// The guest's NBD port (the storage service listens there).
pub const GUEST_NBD_PORT: u16 = 10809;
/// The guest's management port.
pub const GUEST_MGMT_PORT: u16 = 10810;
/// How long QEMU gets to quit after QMP `quit` before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Build the QEMU command line for `run` (no side effects). `nvram` is the guest's NVRAM
/// region ([`nvram_region`]); the builder leaves it out on microvm.
pub fn build_command(
    args: &RunArgs,
    qemu: &Path,
    image: &Path,
    accel: &AccelDecision,
    state: &StateDir,
    nvram: Option<&SharedRegion>,
) -> QemuCommand {
    let mut cmd = QemuCommand::new(qemu)
        .name("tandem")
        .machine(args.machine)
        .accel(accel.accel)
        .memory(args.vm.mem)
        .smp(args.vm.smp)
        .kernel(image)
        .qmp_socket(state.qmp_socket())
        .pidfile(state.pidfile())
        .no_reboot(args.no_reboot);
    if let Some(words) = tls_words(args) {
        cmd = cmd.cmdline(&words);
    }
    if let Some(module) = boot_module_path(args, state) {
        cmd = cmd.initrd(module);
    }
    if args.mgmt_port != 0 {
        // The key travels as the first boot module, never on `-append` (see
        // [`ensure_mgmt_key`]); the guest's own words follow `mgmt.on_data=on` and can change it.
        let own = args.vm.cmdline.as_deref().unwrap_or("");
        if !own
            .split_whitespace()
            .any(|w| w.starts_with("mgmt.on_data="))
        {
            cmd = cmd.cmdline("mgmt.on_data=on");
        }
    }
    if let Some(words) = &args.vm.cmdline {
        cmd = cmd.cmdline(words);
    }
    if args.machine == Machine::Microvm {
        cmd = cmd.microvm_acpi(args.acpi.unwrap_or(OnOff::Off) == OnOff::On);
    }
    match args.backend {
        DiskBackend::Qemu => {
            for d in data_disks(args, state) {
                cmd = cmd.disk(d);
            }
        }
        DiskBackend::VhostUser => {
            // libvhost-user-style back ends want modern virtio-mmio devices on microvm.
            cmd = cmd.modern_mmio(true);
            for i in 0..data_disks(args, state).len() {
                cmd = cmd.vhost_user_blk(
                    VhostUserBlk::new(vhost_user_socket(state, i)).num_queues(vhost_queues(args)),
                );
            }
        }
    }
    let mut nic = Nic::user();
    if let Some(mac) = args.mac {
        nic = nic.mac(mac);
    }
    if args.nbd_port != 0 {
        nic = nic.forward(args.nbd_port, GUEST_NBD_PORT);
    }
    if args.mgmt_port != 0 {
        nic = nic.forward(args.mgmt_port, GUEST_MGMT_PORT);
    }
    let mut cmd = cmd.nic(nic);
    if let Some(region) = nvram {
        cmd = cmd.shared_region(region.clone());
    }
    cmd
}

/// The data disks: `--disk` in order, else the state directory's default disk.
pub fn data_disks(args: &RunArgs, state: &StateDir) -> Vec<Disk> {
    if args.disk.is_empty() {
        vec![Disk::new(state.disk0())]
    } else {
        args.disk.iter().map(|d| d.0.clone()).collect()
    }
}

/// The socket of the `tandem-backend` serving data disk `i` (`--backend vhost-user`).
pub fn vhost_user_socket(state: &StateDir, i: usize) -> std::path::PathBuf {
    state.root().join(format!("vhost-user-blk{i}.sock"))
}

/// Queues per vhost-user disk: one per vCPU (QEMU's own default for virtio-blk on PCI).
pub fn vhost_queues(args: &RunArgs) -> u16 {
    args.vm.smp.clamp(1, 64) as u16
}

/// The `tandem-backend` command lines for `--backend vhost-user`: one daemon per data disk,
/// read-only where the disk is; raw images only.
pub fn backend_commands(
    args: &RunArgs,
    state: &StateDir,
    program: &Path,
) -> anyhow::Result<Vec<BackendCommand>> {
    data_disks(args, state)
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            if d.format != DiskFormat::Raw {
                bail!(
                    "--backend vhost-user: {} is {}; tandem-backend serves raw images only \
                     (convert it with qemu-img convert -O raw)",
                    d.path.display(),
                    d.format.driver()
                );
            }
            if d.blkdebug.is_some() {
                bail!(
                    "--backend vhost-user: {} has blkdebug=, which only QEMU's block layer \
                     applies (use --backend qemu)",
                    d.path.display()
                );
            }
            let image = std::path::absolute(&d.path).unwrap_or(d.path.clone());
            let mut c = BackendCommand::new(program, image, vhost_user_socket(state, i))
                .read_only(d.read_only)
                .queues(vhost_queues(args));
            c.serial = Some(format!("blk{i}"));
            Ok(c)
        })
        .collect()
}

/// The NVRAM region `run` gives the guest: `None` with `--no-nvram`; otherwise
/// `<state-dir>/nvram.bin` with its own size when it exists, else `--nvram-size`. With
/// `create`, a missing file is created (sparse) first; an existing one is never changed.
/// On microvm nothing is created (the region cannot be attached there).
pub fn nvram_region(
    args: &RunArgs,
    state: &StateDir,
    create: bool,
) -> anyhow::Result<Option<SharedRegion>> {
    if args.no_nvram {
        return Ok(None);
    }
    let wanted = args.nvram_size.unwrap_or(DEFAULT_NVRAM_SIZE);
    let path = state.nvram();
    if !create || args.machine == Machine::Microvm {
        let size = std::fs::metadata(&path).map_or(wanted, |m| crate::size::ByteSize(m.len()));
        return Ok(Some(SharedRegion::new(path, size)));
    }
    let nv = state.ensure_nvram(wanted)?;
    if nv.created {
        eprintln!(
            "tandem: created NVRAM region file {} ({}, sparse)",
            nv.path.display(),
            nv.size
        );
    } else if args.nvram_size.is_some_and(|s| s != nv.size) {
        eprintln!(
            "tandem: note: keeping the existing {} ({}); --nvram-size {} applies only when \
             the file is created (delete it to start over)",
            nv.path.display(),
            nv.size,
            wanted
        );
    }
    SharedRegion::check_size(nv.size).map_err(|why| {
        anyhow::anyhow!(
            "NVRAM file {}: {why}; delete it (its contents are the guest's NVRAM) or pass \
             --no-nvram",
            nv.path.display()
        )
    })?;
    Ok(Some(SharedRegion::new(nv.path, nv.size)))
}

/// Fail clearly when `port` on 127.0.0.1 is taken.
pub fn check_port_free(port: u16) -> anyhow::Result<()> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "port 127.0.0.1:{port} is already in use (another `tandem run`?); \
             choose another with --nbd-port PORT, or --nbd-port 0 for no forward"
        ),
        Err(e) => Err(e).with_context(|| format!("cannot bind 127.0.0.1:{port}")),
    }
}

/// Makes sure the management key file exists when the channel is forwarded
/// (`--mgmt-port`, not 0): `<state-dir>/mgmt.key` (0600, made when missing), which
/// [`build_command`] hands to the guest as its first boot module (`-initrd`) with
/// `mgmt.on_data=on` on the command line (the user network is reachable only through the
/// host's forwards on 127.0.0.1). The key is never on QEMU's command line, where every local
/// user could read it. `tandem mgmt --state-dir DIR` reads the same file.
pub fn ensure_mgmt_key(args: &RunArgs, state: &StateDir) -> anyhow::Result<()> {
    if args.mgmt_port != 0 {
        crate::mgmt::load_or_create_key(state.root())?;
    }
    Ok(())
}

/// The boot module QEMU hands the guest (`-initrd`): with `--tls`, `<state>/boot.module`
/// (the management key's words and the TLS files, [`ensure_boot_module`]); else, with a
/// management forward, the key file itself (its text is the key's word). `--boot-module
/// FILE` (an appliance's prebuilt module) wins over both.
pub fn boot_module_path(args: &RunArgs, state: &StateDir) -> Option<std::path::PathBuf> {
    if let Some(m) = &args.boot_module {
        Some(m.clone())
    } else if args.tls.is_some() {
        Some(state.root().join(BOOT_MODULE))
    } else if args.mgmt_port != 0 {
        Some(crate::mgmt::key_path(state.root()))
    } else {
        None
    }
}

/// The boot module's file name in the state directory.
pub const BOOT_MODULE: &str = "boot.module";

/// `nbd.tls=MODE` (and `nbd.tls_verify_peer=on`) for `--tls`.
fn tls_words(args: &RunArgs) -> Option<String> {
    args.tls.as_ref()?;
    let mut w = format!("nbd.tls={}", args.tls_mode.word());
    if args.tls_verify_peer {
        w.push_str(" nbd.tls_verify_peer=on");
    }
    Some(w)
}

/// With `--tls DIR`: writes `<state>/boot.module` (0600, replaced each run) from DIR's
/// credentials and the management key's word (`tandem_formats::boot_module`).
pub fn ensure_boot_module(args: &RunArgs, state: &StateDir) -> anyhow::Result<()> {
    let Some(dir) = &args.tls else {
        return Ok(());
    };
    let files = crate::tls::ServerFiles::read(dir)?;
    let words = if args.mgmt_port != 0 {
        crate::mgmt::key_word(&crate::mgmt::load_or_create_key(state.root())?)
    } else {
        String::new()
    };
    let text = crate::tls::boot_module_text(&words, Some(&files))
        .map_err(|e| anyhow::anyhow!("TLS credentials in {}: {e}", dir.display()))?;
    crate::mgmt::write_private(&state.root().join(BOOT_MODULE), text.as_bytes())
}

/// Run `tandem run`; returns the process exit status.
pub fn run(args: &RunArgs) -> anyhow::Result<i32> {
    let accel = accel::choose(args.vm.accel)?;
    let qemu = crate::qemu_bin::ensure_qemu()?;
    // Absolute paths: the banner's socket path must work from any directory.
    let state = StateDir::new(
        std::path::absolute(&args.state_dir)
            .with_context(|| args.state_dir.display().to_string())?,
    );
    if args.dry_run {
        return dry_run(args, &qemu, &accel, &state);
    }

    let image = crate::image::ensure(args.vm.image.as_deref())?;
    let lock = state.lock()?;
    prepare_state(args, &state)?;
    let nvram = nvram_region(args, &state, true)?;
    // --backend vhost-user: one tandem-backend per disk, up before QEMU connects, stopped
    // after QEMU exits (dropped after `vm` below).
    let daemons = start_backends(args, &state)?;
    let cmd = build_command(args, &qemu, &image, &accel, &state, nvram.as_ref());
    for note in cmd.notes() {
        eprintln!("tandem: note: {note}");
    }
    // What the guest actually gets (nothing on microvm).
    let nvram = nvram.filter(|_| args.machine == Machine::Q35);

    let interrupts = Arc::new(AtomicUsize::new(0));
    {
        let interrupts = Arc::clone(&interrupts);
        ctrlc::set_handler(move || {
            interrupts.fetch_add(1, Ordering::SeqCst);
        })
        .context("installing the Ctrl-C handler")?;
    }

    eprintln!(
        "tandem: booting {} on {} ({accel})",
        image.display(),
        args.machine
    );
    let mut vm = Vm::spawn(
        &cmd,
        SpawnOptions {
            echo_console: true,
            echo_stderr: true,
            console_log: Some(state.console_log()),
        },
    )?;
    let shown = Shown {
        args,
        accel: &accel,
        state: &state,
        nvram: nvram.as_ref(),
    };
    let exit = match follow(&mut vm, &shown, &interrupts) {
        Followed::Exited(exit) => exit,
        Followed::Stopped(code) => {
            drop(lock);
            return Ok(code);
        }
    };
    let code = exit.tandem_exit_code();
    report_exit(&vm, exit);
    stop_backends(daemons, &state);
    drop(lock);
    Ok(code)
}

/// `--dry-run`: print the command lines (QEMU's, and the back ends' with `--backend
/// vhost-user`) and exit 0.
fn dry_run(
    args: &RunArgs,
    qemu: &Path,
    accel: &AccelDecision,
    state: &StateDir,
) -> anyhow::Result<i32> {
    let loc = crate::image::locate(args.vm.image.as_deref())?;
    if !loc.path.is_file() {
        eprintln!(
            "tandem: note: guest image {} does not exist yet",
            loc.path.display()
        );
    }
    let nvram = nvram_region(args, state, false)?;
    let cmd = build_command(args, qemu, &loc.path, accel, state, nvram.as_ref());
    for note in cmd.notes() {
        eprintln!("tandem: note: {note}");
    }
    if args.backend == DiskBackend::VhostUser {
        let program = crate::vhost_backend::locate().unwrap_or_else(|| {
            crate::image::workspace_root().map_or_else(
                || crate::vhost_backend::BINARY.into(),
                |ws| crate::vhost_backend::default_path(&ws),
            )
        });
        for c in backend_commands(args, state, &program)? {
            println!("{c} &");
        }
    }
    eprintln!("tandem: accelerator {accel}");
    println!("{cmd}");
    Ok(0)
}

/// Under the state lock: the NBD port is free, the data disks exist (the default one made),
/// the management key and the boot module are written.
fn prepare_state(args: &RunArgs, state: &StateDir) -> anyhow::Result<()> {
    if args.nbd_port != 0 {
        check_port_free(args.nbd_port)?;
    }
    if args.disk.is_empty() {
        let (path, created) = state.ensure_default_disk(args.disk_size)?;
        if created {
            eprintln!(
                "tandem: created sparse data disk {} ({})",
                path.display(),
                args.disk_size
            );
        }
    } else {
        for d in &args.disk {
            if !d.0.path.exists() {
                bail!("disk {} does not exist", d.0.path.display());
            }
        }
    }
    ensure_mgmt_key(args, state)?;
    ensure_boot_module(args, state)
}

/// With `--backend vhost-user`: one running tandem-backend per data disk.
fn start_backends(args: &RunArgs, state: &StateDir) -> anyhow::Result<Vec<BackendDaemon>> {
    let mut daemons = Vec::new();
    if args.backend != DiskBackend::VhostUser {
        return Ok(daemons);
    }
    let program = crate::vhost_backend::ensure()?;
    for (i, c) in backend_commands(args, state, &program)?.iter().enumerate() {
        let log = state.root().join(format!("tandem-backend{i}.log"));
        let d = c.start(&log)?;
        eprintln!(
            "tandem: tandem-backend pid {} serves {} on {} (log {})",
            d.pid(),
            c.image.display(),
            c.socket.display(),
            log.display()
        );
        daemons.push(d);
    }
    Ok(daemons)
}

/// QEMU has exited: now the back ends (SIGTERM: they finish, sync and exit 0).
fn stop_backends(mut daemons: Vec<BackendDaemon>, state: &StateDir) {
    for (i, mut d) in daemons.drain(..).enumerate() {
        match d.stop() {
            Some(s) if s.success() => {}
            other => eprintln!(
                "tandem: tandem-backend for disk {i} did not stop cleanly ({other:?}); see {}",
                state
                    .root()
                    .join(format!("tandem-backend{i}.log"))
                    .display()
            ),
        }
    }
}

/// What the console loop says about the run.
struct Shown<'a> {
    args: &'a RunArgs,
    accel: &'a AccelDecision,
    state: &'a StateDir,
    nvram: Option<&'a SharedRegion>,
}

/// How following the console ended.
enum Followed {
    /// QEMU exited by itself.
    Exited(GuestExit),
    /// Ctrl-C or `--timeout` stopped it; the exit status to return.
    Stopped(i32),
}

/// Follow the console until QEMU exits, Ctrl-C or `--timeout`; the banner on the ready
/// line, the NBD URI on each export line.
fn follow(vm: &mut Vm, shown: &Shown, interrupts: &AtomicUsize) -> Followed {
    let args = shown.args;
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        if interrupts.load(Ordering::SeqCst) > 0 {
            eprintln!("tandem: interrupted; asking QEMU to quit");
            let exit = vm.stop(STOP_GRACE);
            eprintln!("tandem: QEMU stopped ({exit})");
            return Followed::Stopped(EXIT_INTERRUPTED);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!(
                "tandem: --timeout {} s reached; stopping QEMU",
                args.timeout.unwrap_or(0)
            );
            vm.stop(STOP_GRACE);
            return Followed::Stopped(EXIT_TIMEOUT);
        }
        match vm.poll(Duration::from_millis(100)) {
            Poll::Line(line) => match &line.event {
                ConsoleEvent::Ready(ready) => {
                    print_banner(args, shown.accel, shown.state, shown.nvram, line.at);
                    if shown.nvram.is_some() && ready.get("nvram") == Some("0") {
                        eprintln!(
                            "tandem: warning: the guest reports nvram=0: it did not find the \
                             NVRAM region QEMU was given"
                        );
                    }
                }
                ConsoleEvent::Nbd { export, port }
                    if *port == GUEST_NBD_PORT && args.nbd_port != 0 =>
                {
                    eprintln!(
                            "tandem:   NBD export {export}: nbd://127.0.0.1:{}/{export}   (nbdinfo, qemu-img, nbdcopy, fio --ioengine=nbd)",
                            args.nbd_port
                        );
                }
                _ => {}
            },
            Poll::Exited(exit) => return Followed::Exited(exit),
            Poll::Idle => {}
        }
    }
}

/// Say how the guest ended (its PANIC or EXCEPTION lines when it failed).
fn report_exit(vm: &Vm, exit: GuestExit) {
    match exit {
        GuestExit::Clean => {}
        GuestExit::Failed => {
            let lines = vm.failure_lines();
            match lines.split_first() {
                Some((first, rest)) => {
                    eprintln!("guest failed: {first}");
                    for l in rest {
                        eprintln!("  {l}");
                    }
                }
                None => eprintln!("guest failed (no PANIC or EXCEPTION line was seen)"),
            }
        }
        GuestExit::Qemu(c) => {
            if vm.ready().is_none() && c != 0 {
                eprintln!("tandem: QEMU exited with status {c} before the guest was ready");
            } else {
                eprintln!("tandem: {exit}");
            }
        }
        GuestExit::Signal(_) => eprintln!("tandem: {exit}"),
    }
}

fn print_banner(
    args: &RunArgs,
    accel: &AccelDecision,
    state: &StateDir,
    nvram: Option<&SharedRegion>,
    at: Duration,
) {
    let dir = state.root().display();
    eprintln!(
        "tandem: guest ready after {:.3} s — machine {}, accel {}",
        at.as_secs_f64(),
        args.machine,
        accel
    );
    eprintln!(
        "tandem:   QMP socket:  {}  (tandem qmp --state-dir {dir} query-status)",
        state.qmp_socket().display()
    );
    eprintln!("tandem:   console log: {}", state.console_log().display());
    match nvram {
        Some(r) => eprintln!(
            "tandem:   NVRAM:       {} ({}, ivshmem-plain, guest nvram0; kept across runs and \
             crashes of the guest or QEMU, not a host power loss)",
            r.path.display(),
            r.size
        ),
        None if args.no_nvram => eprintln!("tandem:   NVRAM:       none (--no-nvram)"),
        None => eprintln!("tandem:   NVRAM:       none ({} has no PCI)", args.machine),
    }
    if args.nbd_port == 0 {
        eprintln!("tandem:   NBD: no host port forwarded (--nbd-port 0)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::size::ByteSize;
    use clap::Parser;

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["tandem", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(r) => r,
            _ => unreachable!(),
        }
    }

    fn args_of(cmd: &QemuCommand) -> Vec<String> {
        cmd.to_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn default_disk_nic_and_forward() {
        let accel = accel::decide(accel::AccelChoice::Tcg, &accel::HostFacts::probe());
        let state = StateDir::new("/st");
        let args = run_args(&["--cmdline", "exit=ready"]);
        let nvram = nvram_region(&args, &state, false).unwrap();
        assert_eq!(
            nvram,
            Some(SharedRegion::new("/st/nvram.bin", ByteSize::mib(64)))
        );
        let cmd = build_command(
            &args,
            Path::new("/q"),
            Path::new("/img"),
            &accel,
            &state,
            nvram.as_ref(),
        );
        let a = args_of(&cmd);
        let joined = a.join(" ");
        assert!(joined.contains("file.filename=/st/disk0.raw"), "{joined}");
        assert!(
            joined.contains("-netdev user,id=net0,hostfwd=tcp:127.0.0.1:10809-:10809"),
            "{joined}"
        );
        assert!(joined.contains("-qmp unix:/st/qmp.sock,server=on,wait=off"));
        assert!(joined.contains("-pidfile /st/qemu.pid"));
        // The management key: a boot module, by name only; never on the command line.
        assert!(
            joined.contains("-append mgmt.on_data=on exit=ready -initrd /st/mgmt.key"),
            "{joined}"
        );
        assert!(!joined.contains("mgmt.key="), "{joined}");
        assert!(joined.contains("-m 64M"));
        assert!(
            joined.contains(
                "-object memory-backend-file,id=nvram0,share=on,mem-path=/st/nvram.bin,size=64M \
                 -device ivshmem-plain,memdev=nvram0"
            ),
            "{joined}"
        );
    }

    #[test]
    fn nvram_file_created_kept_or_turned_off() {
        let tmp = crate::scratch::tempdir().unwrap();
        let state = StateDir::new(tmp.path().join("st"));
        let r = nvram_region(&run_args(&["--nvram-size", "16M"]), &state, true)
            .unwrap()
            .unwrap();
        assert_eq!(r.size, ByteSize::mib(16));
        assert_eq!(std::fs::metadata(state.nvram()).unwrap().len(), 16 << 20);
        // Kept with its size on the next run, whatever --nvram-size says.
        let again = nvram_region(&run_args(&["--nvram-size", "32M"]), &state, true)
            .unwrap()
            .unwrap();
        assert_eq!(again.size, ByteSize::mib(16));
        // The dry run reports the existing file's size too.
        let dry = nvram_region(&run_args(&[]), &state, false)
            .unwrap()
            .unwrap();
        assert_eq!(dry.size, ByteSize::mib(16));
        assert_eq!(
            nvram_region(&run_args(&["--no-nvram"]), &state, true).unwrap(),
            None
        );
        // microvm: nothing is created.
        let other = StateDir::new(tmp.path().join("mv"));
        let mv = nvram_region(&run_args(&["--machine", "microvm"]), &other, true).unwrap();
        assert!(mv.is_some());
        assert!(!other.nvram().exists());
        // A file QEMU cannot map is refused with a way out.
        std::fs::write(state.nvram(), vec![0u8; 3 << 20]).unwrap();
        let err = nvram_region(&run_args(&[]), &state, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("power of two") && err.contains("--no-nvram"),
            "{err}"
        );
    }

    #[test]
    fn explicit_disks_replace_default_and_port_zero_drops_forward() {
        let accel = accel::decide(accel::AccelChoice::Tcg, &accel::HostFacts::probe());
        let cmd = build_command(
            &run_args(&[
                "--disk",
                "/a.raw",
                "--disk",
                "/b.qcow2,ro",
                "--nbd-port",
                "0",
                "--mgmt-port",
                "0",
                "--machine",
                "microvm",
                "--acpi",
                "off",
            ]),
            Path::new("/q"),
            Path::new("/img"),
            &accel,
            &StateDir::new("/st"),
            Some(&SharedRegion::new("/st/nvram.bin", ByteSize::mib(64))),
        );
        assert_eq!(cmd.notes().len(), 1);
        let joined = args_of(&cmd).join(" ");
        assert!(!joined.contains("ivshmem"), "{joined}");
        assert!(!joined.contains("disk0.raw"), "{joined}");
        assert!(joined.contains("file.filename=/a.raw"));
        assert!(joined.contains("driver=qcow2,read-only=on"));
        assert!(joined.contains("-netdev user,id=net0 "), "{joined}");
        assert!(joined.contains("-machine microvm,acpi=off"));
        // No management forward: no key module, no management words.
        assert!(
            !joined.contains("-initrd") && !joined.contains("mgmt."),
            "{joined}"
        );
    }

    #[test]
    fn the_guest_can_move_the_management_channel_and_the_key_file_is_made() {
        let accel = accel::decide(accel::AccelChoice::Tcg, &accel::HostFacts::probe());
        let tmp = crate::scratch::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        let args = run_args(&["--cmdline", "mgmt.on_data=off mgmt.listen=10.0.3.15"]);
        let cmd = build_command(
            &args,
            Path::new("/q"),
            Path::new("/img"),
            &accel,
            &state,
            None,
        );
        assert_eq!(
            cmd.cmdline_string(),
            "mgmt.on_data=off mgmt.listen=10.0.3.15"
        );
        assert_eq!(cmd.initrd, Some(tmp.path().join("mgmt.key")));
        ensure_mgmt_key(&args, &state).unwrap();
        let key = crate::mgmt::read_key(&tmp.path().join("mgmt.key")).unwrap();
        assert!(!cmd.to_string().contains(&key.to_hex()));
        // --mgmt-port 0: nothing made.
        let none = StateDir::new(tmp.path().join("none"));
        ensure_mgmt_key(&run_args(&["--mgmt-port", "0"]), &none).unwrap();
        assert!(!tmp.path().join("none").exists());
    }

    #[test]
    fn vhost_user_backend_disks() {
        let accel = accel::decide(accel::AccelChoice::Tcg, &accel::HostFacts::probe());
        let state = StateDir::new("/st");
        let args = run_args(&[
            "--backend",
            "vhost-user",
            "--disk",
            "/a.raw",
            "--disk",
            "/b.raw,ro",
            "--smp",
            "2",
        ]);
        let cmd = build_command(
            &args,
            Path::new("/q"),
            Path::new("/img"),
            &accel,
            &state,
            None,
        );
        let joined = args_of(&cmd).join(" ");
        assert!(!joined.contains("-blockdev"), "{joined}");
        assert!(
            joined.contains("-machine q35,memory-backend=mem"),
            "{joined}"
        );
        assert!(
            joined.contains("-object memory-backend-memfd,id=mem,size=64M,share=on"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "-chardev socket,id=vub1,path=/st/vhost-user-blk1.sock \
                 -device vhost-user-blk-pci,chardev=vub1,num-queues=2"
            ),
            "{joined}"
        );
        let daemons = backend_commands(&args, &state, Path::new("/bin/tandem-backend")).unwrap();
        assert_eq!(daemons.len(), 2);
        assert_eq!(
            daemons[1].to_string(),
            "/bin/tandem-backend --socket /st/vhost-user-blk1.sock --image /b.raw --read-only \
             --queues 2 --serial blk1"
        );
        // microvm: modern virtio-mmio vhost-user-blk devices.
        let micro = run_args(&["--backend", "vhost-user", "--machine", "microvm"]);
        let cmd = build_command(
            &micro,
            Path::new("/q"),
            Path::new("/img"),
            &accel,
            &state,
            None,
        );
        let joined = args_of(&cmd).join(" ");
        assert!(
            joined.contains("-global virtio-mmio.force-legacy=false"),
            "{joined}"
        );
        assert!(
            joined.contains("-device vhost-user-blk,chardev=vub0"),
            "{joined}"
        );
        // qcow2 cannot be served.
        let q = run_args(&["--backend", "vhost-user", "--disk", "/c.qcow2"]);
        let err = backend_commands(&q, &state, Path::new("/b"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("raw images only"), "{err}");
    }

    #[test]
    fn busy_port_is_reported() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let err = check_port_free(port).unwrap_err().to_string();
        assert!(err.contains("already in use"), "{err}");
        assert!(err.contains("--nbd-port"), "{err}");
    }
}
