//! `tandem bench boot`: how long the guest takes to boot, per machine.
//!
//! Each run boots the guest with `exit=ready` (it shuts down right after its ready line),
//! with the same devices `tandem run` gives it (one sparse data disk, one NIC), and measures
//! wall time from QEMU spawn to the `TANDEM READY` line on the console and to QEMU's exit.
//! Results: a table (median/min/max per machine and the microvm/q35 ratio), optional JSON,
//! and an optional SVG bar chart ([`super::render::boot`]). Timings taken under TCG compare
//! only with other TCG timings from the same host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use tandem_formats::cmdline::{key, word};

use super::orchestrate::{Progress, Summary, VmPlan};
use super::render::{ms, Outputs};
use crate::accel;
use crate::builder::{Disk, Machine, Nic, QemuCommand};
use crate::console::ConsoleEvent;
use crate::exit::GuestExit;
use crate::state::{StateDir, DEFAULT_DISK_SIZE};
use crate::vm::{SpawnOptions, Vm};

/// What `tandem bench boot` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    /// The machines, in order.
    pub machines: Vec<Machine>,
    /// Boots per machine.
    pub runs: u32,
    /// `--json` and `--svg`.
    pub outputs: Outputs,
    /// State directory for the bench's disks and console logs (one subdirectory per machine).
    pub state_dir: PathBuf,
    /// Seconds one boot may take.
    pub boot_timeout: u64,
    /// Guest and QEMU options.
    pub vm: VmPlan,
}

/// Results for one machine.
#[derive(Debug, Clone, Serialize)]
pub struct MachineResult {
    /// The machine.
    pub machine: Machine,
    /// Spawn → ready line, per run, milliseconds.
    pub ready_ms: Vec<f64>,
    /// Spawn → QEMU exit, per run, milliseconds.
    pub exit_ms: Vec<f64>,
    /// The guest's own `boot_us` from the ready line, per run (when reported).
    pub guest_boot_us: Vec<u64>,
    /// Summary of `ready_ms`.
    pub ready: Summary,
    /// Summary of `exit_ms`.
    pub exit: Summary,
}

/// The whole report (the `--json` file; [`super::render::boot`] renders it).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Accelerator used.
    pub accel: accel::Accel,
    /// Why.
    pub accel_reason: String,
    /// QEMU's version line.
    pub qemu_version: Option<String>,
    /// Guest image path.
    pub image: String,
    /// Guest image size in bytes.
    pub image_bytes: u64,
    /// Guest RAM.
    pub mem: String,
    /// Runs per machine.
    pub runs: u32,
    /// Per machine.
    pub machines: Vec<MachineResult>,
    /// Median ready time of microvm divided by q35's, when both ran.
    pub ratio_microvm_over_q35: Option<f64>,
}

/// Run the bench, print the table, write JSON/SVG; returns the exit status.
pub fn bench_boot(plan: &BootPlan) -> anyhow::Result<i32> {
    let report = run(plan)?;
    super::render::publish(&report, &plan.outputs)?;
    Ok(0)
}

/// Run the bench and return the report (nothing printed on stdout).
pub fn run(plan: &BootPlan) -> anyhow::Result<BenchReport> {
    let accel = accel::choose(plan.vm.accel)?;
    let qemu = crate::qemu_bin::ensure_qemu()?;
    let image = crate::image::ensure(plan.vm.image.as_deref())?;
    let image_bytes = std::fs::metadata(&image)
        .with_context(|| image.display().to_string())?
        .len();
    let total = u64::from(plan.runs) * plan.machines.len() as u64;
    let mut progress = Progress::new(total);
    let mut results = Vec::new();
    for &machine in &plan.machines {
        let cmd = QemuCommand::new(&qemu).accel(accel.accel).kernel(&image);
        results.push(boot_machine(plan, machine, cmd, &mut progress)?);
    }
    progress.finish();

    let median_of = |m: Machine| {
        results
            .iter()
            .find(|r| r.machine == m)
            .map(|r| r.ready.median)
    };
    let ratio = match (median_of(Machine::Microvm), median_of(Machine::Q35)) {
        (Some(mv), Some(q)) if q > 0.0 => Some(mv / q),
        _ => None,
    };
    Ok(BenchReport {
        accel: accel.accel,
        accel_reason: accel.reason.clone(),
        qemu_version: crate::qemu_bin::qemu_version(&qemu),
        image: image.display().to_string(),
        image_bytes,
        mem: plan.vm.mem.to_string(),
        runs: plan.runs,
        machines: results,
        ratio_microvm_over_q35: ratio,
    })
}

/// Every boot on one machine, with the devices `tandem run` gives the guest; `base` has
/// QEMU, the accelerator and the kernel.
fn boot_machine(
    plan: &BootPlan,
    machine: Machine,
    base: QemuCommand,
    progress: &mut Progress,
) -> anyhow::Result<MachineResult> {
    let state = StateDir::new(plan.state_dir.join(machine.name()));
    let _lock = state.lock()?;
    state.ensure_default_disk(DEFAULT_DISK_SIZE)?;
    let mut cmd = base
        .name("tandem-bench")
        .machine(machine)
        .memory(plan.vm.mem)
        .smp(plan.vm.smp)
        .disk(Disk::new(state.disk0()))
        .nic(Nic::user())
        .qmp_socket(state.qmp_socket())
        .no_reboot(true);
    if machine == Machine::Microvm {
        // The guest finds virtio-mmio devices on its command line, which QEMU fills
        // only with ACPI off (see `tandem run --help`).
        cmd = cmd.microvm_acpi(false);
    }
    if let Some(words) = &plan.vm.cmdline {
        cmd = cmd.cmdline(words);
    }
    cmd = cmd.cmdline(&word(key::EXIT, "ready"));
    let timeout = Duration::from_secs(plan.boot_timeout);
    let mut ready_ms = Vec::new();
    let mut exit_ms = Vec::new();
    let mut guest_boot_us = Vec::new();
    for run in 1..=plan.runs {
        let what = format!("{machine} run {run}/{}", plan.runs);
        progress.start(&what);
        let (ready, exit, boot_us) =
            boot_once(&cmd, &state.console_log(), timeout).with_context(|| what.clone())?;
        ready_ms.push(ms(ready));
        exit_ms.push(ms(exit));
        guest_boot_us.extend(boot_us);
        progress.finish_one(&what, &format!("ready after {:.1} ms", ms(ready)));
    }
    Ok(MachineResult {
        machine,
        ready: Summary::of(&ready_ms),
        exit: Summary::of(&exit_ms),
        ready_ms,
        exit_ms,
        guest_boot_us,
    })
}

/// One boot: (spawn → ready, spawn → exit, guest boot_us).
fn boot_once(
    cmd: &QemuCommand,
    console_log: &Path,
    timeout: Duration,
) -> anyhow::Result<(Duration, Duration, Option<u64>)> {
    let mut vm = Vm::spawn(
        cmd,
        SpawnOptions {
            echo_console: false,
            echo_stderr: false,
            console_log: Some(console_log.to_path_buf()),
        },
    )?;
    let line = vm.wait_for_line("the TANDEM READY line", timeout, |l| {
        matches!(l.event, ConsoleEvent::Ready(_))
    })?;
    let boot_us = match &line.event {
        ConsoleEvent::Ready(r) => r.get_u64("boot_us"),
        _ => None,
    };
    let exit = vm.wait_exit(timeout)?;
    if exit != GuestExit::Clean {
        bail!(
            "guest did not shut down cleanly after exit=ready: {exit}\n{}",
            vm.context()
        );
    }
    let exit_at = vm.exited_after().unwrap_or_else(|| vm.elapsed());
    Ok((line.at, exit_at, boot_us))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::render::boot as render;

    fn report() -> BenchReport {
        let mk = |machine, ready: Vec<f64>| MachineResult {
            machine,
            ready: Summary::of(&ready),
            exit: Summary::of(&ready),
            exit_ms: ready.clone(),
            ready_ms: ready,
            guest_boot_us: vec![1000, 2000, 3000],
        };
        BenchReport {
            accel: accel::Accel::Tcg,
            accel_reason: "tcg: requested".into(),
            qemu_version: None,
            image: "/img".into(),
            image_bytes: 200_000,
            mem: "64M".into(),
            runs: 3,
            machines: vec![
                mk(Machine::Q35, vec![300.0, 100.0, 200.0]),
                mk(Machine::Microvm, vec![50.0, 60.0, 40.0]),
            ],
            ratio_microvm_over_q35: Some(0.25),
        }
    }

    #[test]
    fn table_and_svg_render() {
        let r = report();
        let t = render::table(&r);
        assert!(t.contains("q35"), "{t}");
        assert!(t.contains("200.0 ms"), "{t}");
        assert!(t.contains("microvm/q35 (median ready): 0.25"), "{t}");
        let svg = render::svg(&r);
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect x=").count(), 2);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["machines"][0]["machine"], "q35");
        assert_eq!(json["machines"][1]["ready"]["median"], 50.0);
    }
}
