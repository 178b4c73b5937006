//! `tandem bench nbd` end to end: fio's nbd engine against the guest's NBD service and
//! against qemu-nbd on the host (the anchor), each on its own 64 MiB image, 4 KiB random
//! read and write at depth 1 for one second each, through the same code path as the
//! command, with its JSON report parsed and checked. One guest boot; about ten seconds.

use std::sync::atomic::AtomicBool;

use serde_json::Value;
use tandem_qemu::bench::nbd::run_and_report;
use tandem_qemu::cli::{BenchCommand, Cli, Command};
use tandem_tests::*;

/// The `tandem bench nbd` options from a command line, as the command parses them.
fn parse(argv: &[&str]) -> tandem_qemu::cli::BenchNbdArgs {
    let cli = Cli::try_parse_args(argv).unwrap_or_else(|e| panic!("{e}"));
    match cli.command {
        Command::Bench(BenchCommand::Nbd(args)) => args,
        other => panic!("not bench nbd: {other:?}"),
    }
}

#[test]
fn guest_and_qemu_nbd_random_read_and_write() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let svg_path = dir.path().join("bench.svg");
    let image = guest_image().to_str().unwrap().to_string();
    let work = dir.path().to_str().unwrap().to_string();
    let args = parse(&[
        "tandem",
        "bench",
        "nbd",
        "--jobs",
        "randread:4k:1,randwrite:4k:1",
        "--time",
        "1",
        "--repeats",
        "1",
        "--disk-size",
        "64M",
        "--image",
        &image,
        "--work-dir",
        &work,
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
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["job"].as_str().unwrap(), r["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("randread:4k:1", "guest"),
            ("randread:4k:1", "qemu-nbd"),
            ("randwrite:4k:1", "guest"),
            ("randwrite:4k:1", "qemu-nbd"),
        ],
        "{text}"
    );
    for r in rows {
        assert!(r["iops"]["median"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["mbps"]["median"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["clat_p50_us"].as_f64().unwrap() > 0.0, "{r}");
        assert!(
            r["clat_p99_us"].as_f64().unwrap() >= r["clat_p50_us"].as_f64().unwrap(),
            "{r}"
        );
        assert_eq!(
            (r["bs"].as_u64(), r["qd"].as_u64()),
            (Some(4096), Some(1)),
            "{r}"
        );
        let runs = r["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{r}");
        // fio's own job object is kept, and it ran the nbd engine.
        assert_eq!(runs[0]["fio"]["job options"]["ioengine"], "nbd", "{r}");
        let guest = r["target"] == "guest";
        assert_eq!(
            r["ratio_guest_over_anchor"].as_f64().is_some(),
            guest,
            "ratio on guest rows only: {r}"
        );
        // Copies per request, measured in the guest only: about two copies of each 4 KiB
        // payload (headers and retransmissions on top).
        let copies = r["guest_copies"]["copies_per_request"].as_f64();
        if guest {
            let c = copies.unwrap_or_else(|| panic!("no guest copy count: {r}"));
            assert!((2.0..2.3).contains(&c), "{c} copies per request: {r}");
        } else {
            assert!(
                r["guest_copies"].is_null(),
                "the anchor is not measured: {r}"
            );
        }
        let writes = r["rw"] == "randwrite";
        let ack = r["write_ack"].as_str().unwrap();
        match (guest, writes) {
            (_, false) => assert_eq!(ack, "-", "{r}"),
            (true, true) => assert_eq!(ack, "NVRAM log", "{r}"),
            (false, true) => assert_eq!(ack, "O_DIRECT write", "{r}"),
        }
    }
    assert!(
        j["durability_comparison"]
            .as_str()
            .unwrap()
            .starts_with("not like with like"),
        "{text}"
    );
    let targets = j["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert!(
        targets[0]["durability"]
            .as_str()
            .unwrap()
            .contains("durability=disk"),
        "{}",
        targets[0]
    );
    for t in targets {
        assert!(
            t["uri"].as_str().unwrap().starts_with("nbd://127.0.0.1:"),
            "{t}"
        );
        assert!(t["uri"].as_str().unwrap().ends_with("/blk0"), "{t}");
        // Each target had its own fully written copy.
        assert_eq!(t["image"]["bytes"], 64 << 20, "{t}");
        assert!(
            t["image"]["allocated_bytes"].as_u64().unwrap() >= 64 << 20,
            "{t}"
        );
    }
    assert_ne!(targets[0]["image"]["path"], targets[1]["image"]["path"]);
    assert_eq!(targets[0]["guest_ready"]["nvram"], "1", "{}", targets[0]);
    assert_eq!(j["mem"], "64M");

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("randwrite 4k qd1"));
    assert!(svg.contains(">guest<") && svg.contains(">qemu-nbd<"));
}
