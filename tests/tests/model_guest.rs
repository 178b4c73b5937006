//! Guest-side randomised runs (issue 12 §3): `tandem check` drives the real guest with a
//! pipelined NBD client over several connections and exports (READ, WRITE ± FUA,
//! WRITE_ZEROES ± NO_HOLE ± FUA, TRIM, FLUSH, CACHE), crashes it at random points (a panic
//! injected through the management port, QMP `system_reset`, SIGKILL of QEMU and a fresh
//! boot), and compares every read with the reference model (`tandem-model`). A few thousand
//! operations per durability setting, every crash kind several times, no divergence.
//!
//! The seed is fixed per test (the same operations every run; timing still varies);
//! `TANDEM_CHECK_SEED` overrides it, and a failure prints the seed and the history.

use std::sync::atomic::AtomicBool;

use tandem_qemu::check::{CheckArgs, CheckReport};
use tandem_qemu::cli::{Cli, Command};
use tandem_tests::*;

/// Operations per run.
const OPS: u64 = 3000;
/// Mean operations between crashes: about a dozen crashes per run, each kind several times.
const CRASH_EVERY: u64 = 220;
/// Upper bound on a run (it stops early, with fewer operations, when this runs out).
const SECONDS: u64 = 300;

fn check(durability: &str, default_seed: u64) -> CheckReport {
    let seed = std::env::var("TANDEM_CHECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seed);
    let image = guest_image().display().to_string();
    let argv = [
        "tandem".to_string(),
        "check".into(),
        "--durability".into(),
        durability.into(),
        "--seed".into(),
        seed.to_string(),
        "--ops".into(),
        OPS.to_string(),
        "--seconds".into(),
        SECONDS.to_string(),
        "--crash-every".into(),
        CRASH_EVERY.to_string(),
        "--image".into(),
        image,
    ];
    let cli = Cli::try_parse_args(&argv).unwrap_or_else(|e| panic!("{e}"));
    let Command::Check(args) = cli.command else {
        unreachable!("parsed a check command")
    };
    let args: CheckArgs = args;
    let stop = AtomicBool::new(false);
    let report = tandem_qemu::check::run(&args, &stop)
        .unwrap_or_else(|e| panic!("tandem check failed to run: {e:#}"));
    eprintln!("{}", report.summary());
    if let Some(d) = &report.divergence {
        panic!("{d}\n{}", report.summary());
    }
    assert_eq!(report.divergences, 0, "{}", report.summary());
    assert_eq!(report.errors, 0, "error replies: {}", report.summary());
    assert!(
        report.ops >= OPS / 3,
        "too few operations in {SECONDS} s: {}",
        report.summary()
    );
    let c = report.crashes;
    assert!(
        c.panic > 0 && c.reset > 0 && c.kill > 0,
        "every crash kind happened: {}",
        report.summary()
    );
    assert!(report.sectors_checked > 0, "{}", report.summary());
    report
}

#[test]
fn random_operations_and_crashes_match_the_model_under_durability_disk() {
    let r = check("disk", 0x7a4d_0001);
    assert!(r.op_counts.flush > 0 && r.op_counts.zero > 0 && r.op_counts.trim > 0);
}

#[test]
fn random_operations_and_crashes_match_the_model_under_durability_nvlog() {
    let r = check("nvlog", 0x7a4d_0002);
    assert!(r.op_counts.write_fua > 0 && r.op_counts.cache > 0);
}
