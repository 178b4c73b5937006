//! `tandem bench blk` end to end: a short randread job at two queue depths on two backends
//! (virtio-blk with aio=threads, and vhost-user-blk served by qemu-storage-daemon), through
//! the same code path as the command, with its JSON report parsed and checked. Four short
//! boots of the real guest; a few seconds under TCG.

use std::sync::atomic::AtomicBool;

use serde_json::Value;
use tandem_qemu::bench::blk::run_and_report;
use tandem_qemu::cli::{BenchCommand, Cli, Command};
use tandem_tests::*;

/// The `tandem bench blk` options from a command line, as the command parses them.
fn parse(argv: &[&str]) -> tandem_qemu::cli::BenchBlkArgs {
    let cli = Cli::try_parse_args(argv).unwrap_or_else(|e| panic!("{e}"));
    match cli.command {
        Command::Bench(BenchCommand::Blk(args)) => args,
        other => panic!("not bench blk: {other:?}"),
    }
}

#[test]
fn threads_and_vhost_user_randread() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let svg_path = dir.path().join("bench.svg");
    let image = guest_image().to_str().unwrap().to_string();
    let work = dir.path().to_str().unwrap().to_string();
    let args = parse(&[
        "tandem",
        "bench",
        "blk",
        "--backends",
        "threads,vhost-user",
        "--rw",
        "randread",
        "--qd",
        "1,8",
        "--ops",
        "2000",
        "--repeats",
        "1",
        "--disk-size",
        "64M",
        "--image",
        &image,
        "--work-dir",
        &work,
        "--run-timeout",
        "60",
        "--json",
        json_path.to_str().unwrap(),
        "--svg",
        svg_path.to_str().unwrap(),
    ]);
    let report =
        run_and_report(&args.plan(), &AtomicBool::new(false)).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(report.rows.len(), 4);

    let text = std::fs::read_to_string(&json_path).unwrap();
    let j: Value = serde_json::from_str(&text).unwrap();
    let rows = j["rows"].as_array().unwrap();
    let got: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| (r["backend"].as_str().unwrap(), r["qd"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("threads", 1),
            ("threads", 8),
            ("vhost-user", 1),
            ("vhost-user", 8)
        ],
        "{text}"
    );
    for r in rows {
        let qd = r["qd"].as_u64().unwrap();
        assert!(r["iops"]["median"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["rw"], "randread", "{r}");
        assert_eq!(r["bs"], 4096, "{r}");
        let runs = r["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{r}");
        for run in runs {
            let raw = &run["raw"];
            assert!(raw["iops"].as_f64().unwrap() > 0.0, "{raw}");
            assert_eq!(raw["qd"].as_u64(), Some(qd), "{raw}");
            assert_eq!(raw["ops"], 2000, "{raw}");
            assert_eq!(raw["errors"], 0, "{raw}");
            assert_eq!(raw["device"], "blk0", "{raw}");
            assert_eq!(raw["transport"], "pci", "{raw}");
            let in_flight = raw["max_in_flight"].as_u64().unwrap();
            assert!(in_flight >= 1 && in_flight <= qd, "{raw}");
        }
    }
    // Ratios are against the first backend.
    assert_eq!(rows[0]["ratio_vs_first"], 1.0);
    assert!(rows[3]["ratio_vs_first"].as_f64().unwrap() > 0.0);
    assert!(j["backends"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["skipped"].is_null()));

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.starts_with("<svg ") && svg.contains("vhost-user"),
        "{svg}"
    );
}

/// The backend probe (used to decide whether io_uring runs) accepts a file QEMU can open
/// and reports QEMU's own reason when it cannot.
#[test]
fn aio_probe_reports_why() {
    use tandem_qemu::bench::probe::probe_aio;
    use tandem_qemu::builder::Aio;
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let disk = sparse_disk(dir.path(), "p.raw", tandem_qemu::size::ByteSize::mib(1));
    let stop = AtomicBool::new(false);
    let ok = probe_aio(
        &qemu(),
        test_accel(),
        &disk.path,
        Aio::Threads,
        dir.path(),
        &stop,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ok, Ok(()));
    let missing = dir.path().join("missing.raw");
    let why = probe_aio(
        &qemu(),
        test_accel(),
        &missing,
        Aio::Native,
        dir.path(),
        &stop,
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
    .expect_err("a missing image cannot be opened");
    assert!(why.contains("missing.raw"), "{why}");
}
