//! `tandem bench boot`: how long the guest takes to boot, per machine.
//!
//! Each run boots the guest with `exit=ready` (it shuts down right after its ready line),
//! with the same devices `tandem run` gives it (one sparse data disk, one NIC), and measures
//! wall time from QEMU spawn to the `TANDEM READY` line on the console and to QEMU's exit.
//! Results: a table (median/min/max per machine and the microvm/q35 ratio), optional JSON,
//! and an optional hand-written SVG bar chart. Timings taken under TCG compare only with
//! other TCG timings from the same host.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::accel;
use crate::builder::{Disk, Machine, Nic, QemuCommand};
use crate::cli::BenchBootArgs;
use crate::console::ConsoleEvent;
use crate::exit::GuestExit;
use crate::state::{StateDir, DEFAULT_DISK_SIZE};
use crate::vm::{SpawnOptions, Vm};

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

/// Median, minimum, maximum.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Summary {
    /// Summarise a non-empty sample.
    pub fn of(values: &[f64]) -> Summary {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The whole report.
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

/// Run the bench; returns the exit status.
pub fn bench_boot(args: &BenchBootArgs) -> anyhow::Result<i32> {
    let accel = accel::choose(args.vm.accel)?;
    let qemu = crate::qemu_bin::ensure_qemu()?;
    let image = crate::image::ensure(args.vm.image.as_deref())?;
    let image_bytes = std::fs::metadata(&image)
        .with_context(|| image.display().to_string())?
        .len();
    let machines = args.machine.list();
    let total = u64::from(args.runs) * machines.len() as u64;
    let progress = if std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new(total);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let timeout = Duration::from_secs(args.boot_timeout);

    let mut results = Vec::new();
    for machine in machines {
        let state = StateDir::new(args.state_dir.join(machine.name()));
        let _lock = state.lock()?;
        state.ensure_default_disk(DEFAULT_DISK_SIZE)?;
        let mut cmd = QemuCommand::new(&qemu)
            .name("tandem-bench")
            .machine(machine)
            .accel(accel.accel)
            .memory(args.vm.mem)
            .smp(args.vm.smp)
            .kernel(&image)
            .disk(Disk::new(state.disk0()))
            .nic(Nic::user())
            .qmp_socket(state.qmp_socket())
            .no_reboot(true);
        if machine == Machine::Microvm {
            // The guest finds virtio-mmio devices on its command line, which QEMU fills
            // only with ACPI off (see `tandem run --help`).
            cmd = cmd.microvm_acpi(false);
        }
        if let Some(words) = &args.vm.cmdline {
            cmd = cmd.cmdline(words);
        }
        cmd = cmd.cmdline("exit=ready");

        let mut ready_ms = Vec::new();
        let mut exit_ms = Vec::new();
        let mut guest_boot_us = Vec::new();
        for run in 1..=args.runs {
            progress.set_message(format!("{machine} run {run}/{}", args.runs));
            let (ready, exit, boot_us) = boot_once(&cmd, &state, timeout)
                .with_context(|| format!("{machine} run {run}/{}", args.runs))?;
            ready_ms.push(ms(ready));
            exit_ms.push(ms(exit));
            guest_boot_us.extend(boot_us);
            progress.inc(1);
        }
        results.push(MachineResult {
            machine,
            ready: Summary::of(&ready_ms),
            exit: Summary::of(&exit_ms),
            ready_ms,
            exit_ms,
            guest_boot_us,
        });
    }
    progress.finish_and_clear();

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
    let report = BenchReport {
        accel: accel.accel,
        accel_reason: accel.reason.clone(),
        qemu_version: crate::qemu_bin::qemu_version(&qemu),
        image: image.display().to_string(),
        image_bytes,
        mem: args.vm.mem.to_string(),
        runs: args.runs,
        machines: results,
        ratio_microvm_over_q35: ratio,
    };
    print!("{}", table(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        std::fs::write(path, text).with_context(|| path.display().to_string())?;
        eprintln!("tandem: wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&report)).with_context(|| path.display().to_string())?;
        eprintln!("tandem: wrote {}", path.display());
    }
    Ok(0)
}

fn ms(d: Duration) -> f64 {
    // Microsecond resolution keeps the JSON readable.
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One boot: (spawn → ready, spawn → exit, guest boot_us).
fn boot_once(
    cmd: &QemuCommand,
    state: &StateDir,
    timeout: Duration,
) -> anyhow::Result<(Duration, Duration, Option<u64>)> {
    let mut vm = Vm::spawn(
        cmd,
        SpawnOptions {
            echo_console: false,
            echo_stderr: false,
            console_log: Some(state.console_log()),
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

/// The text table.
pub fn table(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "boot to TANDEM READY ({}, {} runs each, -m {}, image {} bytes = {:.1} KiB)",
        r.accel,
        r.runs,
        r.mem,
        r.image_bytes,
        r.image_bytes as f64 / 1024.0
    );
    let _ = writeln!(
        s,
        "{:<8} {:>12} {:>10} {:>10} {:>14} {:>16}",
        "machine", "ready median", "min", "max", "exit median", "guest boot_us"
    );
    for m in &r.machines {
        let guest = if m.guest_boot_us.is_empty() {
            "-".to_string()
        } else {
            let v: Vec<f64> = m.guest_boot_us.iter().map(|&u| u as f64).collect();
            format!("{:.0}", Summary::of(&v).median)
        };
        let _ = writeln!(
            s,
            "{:<8} {:>9.1} ms {:>7.1} ms {:>7.1} ms {:>11.1} ms {:>16}",
            m.machine.name(),
            m.ready.median,
            m.ready.min,
            m.ready.max,
            m.exit.median,
            guest
        );
    }
    if let Some(ratio) = r.ratio_microvm_over_q35 {
        let _ = writeln!(s, "microvm/q35 (median ready): {ratio:.2}");
    }
    s
}

/// A horizontal bar chart of median ready time with min–max whiskers.
pub fn svg(r: &BenchReport) -> String {
    const LEFT: f64 = 90.0;
    const WIDTH: f64 = 640.0;
    const BAR_H: f64 = 28.0;
    const GAP: f64 = 18.0;
    const TOP: f64 = 40.0;
    let plot_w = WIDTH - LEFT - 110.0;
    let max = r
        .machines
        .iter()
        .map(|m| m.ready.max)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let scale = plot_w / max;
    let height = TOP + r.machines.len() as f64 * (BAR_H + GAP) + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="15">Boot to TANDEM READY ({}, median of {} runs; whiskers min–max)</text>"#,
        escape(&r.accel.to_string()),
        r.runs
    );
    for (i, m) in r.machines.iter().enumerate() {
        let y = TOP + i as f64 * (BAR_H + GAP);
        let w = m.ready.median * scale;
        let color = match m.machine {
            Machine::Q35 => "#4e79a7",
            Machine::Microvm => "#f28e2b",
        };
        let mid = y + BAR_H / 2.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" dominant-baseline="middle">{}</text>"#,
            LEFT - 8.0,
            mid,
            m.machine.name()
        );
        let _ = writeln!(
            s,
            r#"<rect x="{LEFT}" y="{y:.1}" width="{w:.1}" height="{BAR_H}" fill="{color}"/>"#
        );
        let (x0, x1) = (LEFT + m.ready.min * scale, LEFT + m.ready.max * scale);
        let _ = writeln!(
            s,
            r#"<line x1="{x0:.1}" y1="{mid:.1}" x2="{x1:.1}" y2="{mid:.1}" stroke="black"/><line x1="{x0:.1}" y1="{:.1}" x2="{x0:.1}" y2="{:.1}" stroke="black"/><line x1="{x1:.1}" y1="{:.1}" x2="{x1:.1}" y2="{:.1}" stroke="black"/>"#,
            mid - 6.0,
            mid + 6.0,
            mid - 6.0,
            mid + 6.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{mid:.1}" dominant-baseline="middle">{:.1} ms</text>"#,
            x1.max(LEFT + w) + 8.0,
            m.ready.median
        );
    }
    if let Some(ratio) = r.ratio_microvm_over_q35 {
        let _ = writeln!(
            s,
            r#"<text x="10" y="{:.1}">microvm/q35 = {ratio:.2}</text>"#,
            height - 10.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn summary_median_min_max() {
        assert_eq!(
            Summary::of(&[3.0, 1.0, 2.0]),
            Summary {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn table_and_svg_render() {
        let r = report();
        let t = table(&r);
        assert!(t.contains("q35"), "{t}");
        assert!(t.contains("200.0 ms"), "{t}");
        assert!(t.contains("microvm/q35 (median ready): 0.25"), "{t}");
        let svg = svg(&r);
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect x=").count(), 2);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["machines"][0]["machine"], "q35");
        assert_eq!(json["machines"][1]["ready"]["median"], 50.0);
    }
}
