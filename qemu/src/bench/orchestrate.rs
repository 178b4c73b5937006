//! What every bench's run flow shares: the guest and QEMU options of a plan ([`VmPlan`]),
//! the scratch work directory, Ctrl-C handling ([`run_interruptible`]), progress on stderr
//! ([`Progress`]), the summary of repeats ([`Summary`]), and booting a guest quietly until it
//! announces its NBD export ([`boot_until_export`]). The flows themselves are the benches'
//! `run` functions.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::accel::AccelChoice;
use crate::builder::{DiskFormat, QemuCommand};
use crate::console::ConsoleEvent;
use crate::size::ByteSize;
use crate::state::MAX_SOCKET_PATH;
pub use crate::supervise::Interrupted;
use crate::vm::{Poll, SpawnOptions, Vm};

/// The guest and QEMU options a bench boots with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPlan {
    /// Accelerator (`None`: `TANDEM_ACCEL`, else auto).
    pub accel: Option<AccelChoice>,
    /// Guest RAM.
    pub mem: ByteSize,
    /// vCPUs.
    pub smp: u32,
    /// Words appended to the guest command line.
    pub cmdline: Option<String>,
    /// Guest image (`None`: the default, built when missing).
    pub image: Option<PathBuf>,
}

impl Default for VmPlan {
    /// `tandem run`'s defaults: 64M, one vCPU, no extra words, the default image.
    fn default() -> Self {
        VmPlan {
            accel: None,
            mem: ByteSize::mib(64),
            smp: 1,
            cmdline: None,
            image: None,
        }
    }
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
    /// Summarise a sample (NaN for an empty one).
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

/// Progress of a bench's runs: a bar on stderr when stderr is a terminal, otherwise one
/// plain `tandem: [i/n] ...` line on stderr per finished run (logs and CI stay readable).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    done: u64,
}

impl Progress {
    /// Progress over `total` runs; a bar only when stderr is a terminal.
    pub fn new(total: u64) -> Progress {
        Progress::with_bar(total, std::io::stderr().is_terminal())
    }

    /// Progress over `total` runs, with or without a bar.
    pub fn with_bar(total: u64, bar: bool) -> Progress {
        let bar = bar.then(|| {
            let pb = indicatif::ProgressBar::new(total);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            pb.enable_steady_tick(std::time::Duration::from_millis(200));
            pb
        });
        Progress {
            bar,
            total,
            done: 0,
        }
    }

    /// A run starts (shown on the bar only).
    pub fn start(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(what.to_string());
        }
    }

    /// A run finished with `result`.
    pub fn finish_one(&mut self, what: &str, result: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
            None => eprintln!("tandem: [{}/{}] {what}: {result}", self.done, self.total),
        }
    }

    /// A message that must stay visible (printed above the bar).
    pub fn note(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("tandem: {msg}")),
            None => eprintln!("tandem: {msg}"),
        }
    }

    /// Remove the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Runs a bench that polls a Ctrl-C flag; maps an interruption to exit status 130 after
/// saying what was stopped.
pub fn run_interruptible<R>(
    stopped: &str,
    bench: impl FnOnce(&AtomicBool) -> anyhow::Result<R>,
) -> anyhow::Result<i32> {
    // A second handler in one process (a library caller that has its own) is not an error.
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    match bench(&INTERRUPTED) {
        Ok(_) => Ok(0),
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("tandem: interrupted; {stopped}");
            Ok(crate::exit::EXIT_INTERRUPTED)
        }
        Err(e) => Err(e),
    }
}

/// `Err(Interrupted)` once `interrupted` is set.
pub fn check_interrupted(interrupted: &AtomicBool) -> anyhow::Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// The directory scratch directories go in: `dir` (created), else the system temp dir.
pub fn base_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
            Ok(d.to_path_buf())
        }
        None => Ok(std::env::temp_dir()),
    }
}

/// A fresh scratch directory under `--work-dir` (or the system temp dir), removed when
/// dropped.
pub fn scratch_dir(work_dir: Option<&Path>) -> anyhow::Result<crate::scratch::TempDir> {
    let base = base_dir(work_dir)?;
    crate::scratch::tempdir_in(&base).with_context(|| base.display().to_string())
}

/// An error when `socket` is too long for a unix socket address.
pub fn check_socket_path(socket: &Path) -> anyhow::Result<()> {
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --work-dir",
            socket.display()
        );
    }
    Ok(())
}

/// An error unless `disk` is an existing raw image (`why`: who needs it raw).
pub fn check_raw_disk(disk: &Path, why: &str) -> anyhow::Result<()> {
    if DiskFormat::from_path(disk) != DiskFormat::Raw {
        bail!("--disk {}: raw images only ({why})", disk.display());
    }
    if !disk.is_file() {
        bail!("--disk {} does not exist", disk.display());
    }
    Ok(())
}

/// Keep the first of equal entries, in order.
pub fn dedup_in_order<T: PartialEq + Copy>(v: &mut Vec<T>) {
    let mut seen = Vec::new();
    v.retain(|x| {
        if seen.contains(x) {
            false
        } else {
            seen.push(*x);
            true
        }
    });
}

/// `v`, or `[default]` when it is empty.
pub fn nonempty_or<T: Clone>(v: &[T], default: T) -> Vec<T> {
    if v.is_empty() {
        vec![default]
    } else {
        v.to_vec()
    }
}

/// Spawn QEMU with its console going only to `console_log`.
pub fn spawn_quiet(cmd: &QemuCommand, console_log: &Path) -> anyhow::Result<Vm> {
    Vm::spawn(
        cmd,
        SpawnOptions {
            echo_console: false,
            echo_stderr: false,
            console_log: Some(console_log.to_path_buf()),
        },
    )
    .with_context(|| format!("command: {cmd}"))
}

/// Boot the guest and wait for its `TANDEM NBD` line for `export`.
pub fn boot_until_export(
    cmd: &QemuCommand,
    export: &str,
    console_log: &Path,
    timeout: Duration,
    interrupted: &AtomicBool,
) -> anyhow::Result<Vm> {
    let mut vm = spawn_quiet(cmd, console_log)?;
    let deadline = Instant::now() + timeout;
    loop {
        if interrupted.load(Ordering::SeqCst) {
            vm.kill();
            return Err(Interrupted.into());
        }
        if Instant::now() >= deadline {
            vm.kill();
            bail!(
                "the guest did not announce NBD export {export} (a `TANDEM NBD ... /{export}` \
                 line) within {timeout:?} (--boot-timeout)\ncommand: {cmd}\n{}",
                vm.context()
            );
        }
        match vm.poll(Duration::from_millis(100)) {
            Poll::Line(line) => {
                if matches!(&line.event, ConsoleEvent::Nbd { export: e, .. } if e == export) {
                    return Ok(vm);
                }
            }
            Poll::Exited(exit) => bail!(
                "QEMU exited ({exit}) before the guest served NBD export {export}\n\
                 command: {cmd}\n{}",
                vm.context()
            ),
            Poll::Idle => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(Summary::of(&[]).median.is_nan());
    }

    #[test]
    fn lists_and_paths() {
        let mut v = vec![3, 1, 3, 2, 1];
        dedup_in_order(&mut v);
        assert_eq!(v, [3, 1, 2]);
        assert_eq!(nonempty_or(&[], 7), [7]);
        assert_eq!(nonempty_or(&[1, 2], 7), [1, 2]);
        assert!(check_socket_path(Path::new("/s/vu.sock")).is_ok());
        assert!(check_socket_path(&Path::new("/").join("x".repeat(200))).is_err());
        let e = check_raw_disk(Path::new("/d/x.qcow2"), "both serve it raw").unwrap_err();
        assert!(
            e.to_string()
                .contains("raw images only (both serve it raw)"),
            "{e}"
        );
        assert!(check_raw_disk(Path::new("/nonexistent/x.raw"), "").is_err());
    }

    #[test]
    fn plain_progress_counts() {
        let mut p = Progress::with_bar(2, false);
        p.start("a");
        p.finish_one("a", "ok");
        p.finish_one("b", "ok");
        assert_eq!(p.done, 2);
        p.finish();
    }
}
