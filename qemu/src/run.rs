//! `tandem run`: boot the guest, stream its console, exit with its status.
//!
//! Steps: choose the accelerator, find QEMU and the image, lock the state directory, make
//! the default disk, check the NBD port is free, build the command line, spawn QEMU in its
//! own process group, then follow the console until QEMU exits. On the ready line a short
//! banner goes to stderr. Ctrl-C (or SIGTERM/SIGHUP) stops QEMU in order (QMP `quit`, kill
//! after 3 s) and exits 130; `--timeout` does the same and exits 124.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::accel::{self, AccelDecision};
use crate::builder::{Machine, Nic, QemuCommand};
use crate::cli::{OnOff, RunArgs};
use crate::console::ConsoleEvent;
use crate::exit::{GuestExit, EXIT_INTERRUPTED, EXIT_TIMEOUT};
use crate::state::StateDir;
use crate::vm::{Poll, SpawnOptions, Vm};

/// The guest's NBD port (the storage service listens there).
pub const GUEST_NBD_PORT: u16 = 10809;
/// How long QEMU gets to quit after QMP `quit` before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Build the QEMU command line for `run` (no side effects).
pub fn build_command(
    args: &RunArgs,
    qemu: &Path,
    image: &Path,
    accel: &AccelDecision,
    state: &StateDir,
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
    if let Some(words) = &args.vm.cmdline {
        cmd = cmd.cmdline(words);
    }
    if args.machine == Machine::Microvm {
        cmd = cmd.microvm_acpi(args.acpi.unwrap_or(OnOff::Off) == OnOff::On);
    }
    if args.disk.is_empty() {
        cmd = cmd.disk(crate::builder::Disk::new(state.disk0()));
    } else {
        for d in &args.disk {
            cmd = cmd.disk(d.0.clone());
        }
    }
    let mut nic = Nic::user();
    if let Some(mac) = args.mac {
        nic = nic.mac(mac);
    }
    if args.nbd_port != 0 {
        nic = nic.forward(args.nbd_port, GUEST_NBD_PORT);
    }
    cmd.nic(nic)
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
        let loc = crate::image::locate(args.vm.image.as_deref())?;
        if !loc.path.is_file() {
            eprintln!(
                "tandem: note: guest image {} does not exist yet",
                loc.path.display()
            );
        }
        let cmd = build_command(args, &qemu, &loc.path, &accel, &state);
        eprintln!("tandem: accelerator {accel}");
        println!("{cmd}");
        return Ok(0);
    }

    let image = crate::image::ensure(args.vm.image.as_deref())?;
    let lock = state.lock()?;
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
    let cmd = build_command(args, &qemu, &image, &accel, &state);

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
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s));

    let exit = loop {
        if interrupts.load(Ordering::SeqCst) > 0 {
            eprintln!("tandem: interrupted; asking QEMU to quit");
            let exit = vm.stop(STOP_GRACE);
            eprintln!("tandem: QEMU stopped ({exit})");
            drop(lock);
            return Ok(EXIT_INTERRUPTED);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!(
                "tandem: --timeout {} s reached; stopping QEMU",
                args.timeout.unwrap_or(0)
            );
            vm.stop(STOP_GRACE);
            drop(lock);
            return Ok(EXIT_TIMEOUT);
        }
        match vm.poll(Duration::from_millis(100)) {
            Poll::Line(line) => match &line.event {
                ConsoleEvent::Ready(_) => print_banner(args, &accel, &state, line.at),
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
            Poll::Exited(exit) => break exit,
            Poll::Idle => {}
        }
    };

    let code = exit.tandem_exit_code();
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
    drop(lock);
    Ok(code)
}

fn print_banner(args: &RunArgs, accel: &AccelDecision, state: &StateDir, at: Duration) {
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
    if args.nbd_port == 0 {
        eprintln!("tandem:   NBD: no host port forwarded (--nbd-port 0)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
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
        let cmd = build_command(
            &run_args(&["--cmdline", "exit=ready"]),
            Path::new("/q"),
            Path::new("/img"),
            &accel,
            &state,
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
        assert!(joined.contains("-append exit=ready"));
        assert!(joined.contains("-m 64M"));
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
                "--machine",
                "microvm",
                "--acpi",
                "off",
            ]),
            Path::new("/q"),
            Path::new("/img"),
            &accel,
            &StateDir::new("/st"),
        );
        let joined = args_of(&cmd).join(" ");
        assert!(!joined.contains("disk0.raw"), "{joined}");
        assert!(joined.contains("file.filename=/a.raw"));
        assert!(joined.contains("driver=qcow2,read-only=on"));
        assert!(joined.contains("-netdev user,id=net0 "), "{joined}");
        assert!(joined.contains("-machine microvm,acpi=off"));
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
