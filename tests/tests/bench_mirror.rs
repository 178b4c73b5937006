//! `tandem bench mirror` end to end, tiny (one round of a few writes per configuration and
//! kind), through the same code path as the command: three guests (mirror off, sync, async)
//! with the mirror's sender and receiver in-process, over a link that adds a known delay to
//! every round trip; the JSON report is parsed and checked. A sync write cannot be
//! acknowledged before the mirror's acknowledgement has crossed the link, so its median is
//! at least the added delay, whatever the machine's noise. Three boots; under a minute.

use std::sync::atomic::AtomicBool;

use serde_json::Value;
use tandem_qemu::bench::mirror::run_and_report;
use tandem_qemu::cli::{BenchCommand, Cli, Command};
use tandem_tests::*;

/// The delay the link adds to every round trip, µs.
const DELAY_US: f64 = 3000.0;

/// The `tandem bench mirror` options from a command line, as the command parses them.
fn parse(argv: &[&str]) -> tandem_qemu::cli::BenchMirrorArgs {
    let cli = Cli::try_parse_args(argv).unwrap_or_else(|e| panic!("{e}"));
    match cli.command {
        Command::Bench(BenchCommand::Mirror(args)) => args,
        other => panic!("not bench mirror: {other:?}"),
    }
}

#[test]
fn mirror_sync_costs_at_least_a_round_trip_and_the_report_has_every_configuration() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let json_path = dir.path().join("mirror.json");
    let svg_path = dir.path().join("mirror.svg");
    let image = guest_image().to_str().unwrap().to_string();
    let work = dir.path().to_str().unwrap().to_string();
    let delay = format!("{DELAY_US}");
    let args = parse(&[
        "tandem",
        "bench",
        "mirror",
        "--writes",
        "20",
        "--rounds",
        "1",
        "--link-delay-us",
        &delay,
        "--image",
        &image,
        "--work-dir",
        &work,
        "--json",
        json_path.to_str().unwrap(),
        "--svg",
        svg_path.to_str().unwrap(),
    ]);
    run_and_report(&args.plan(), &AtomicBool::new(false)).unwrap_or_else(|e| panic!("{e:#}"));

    let text = std::fs::read_to_string(&json_path).unwrap();
    let j: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["link"]["kind"], "relay", "{text}");
    let rtt = j["link"]["rtt_p50_us"]["median"].as_f64().unwrap();
    assert!(rtt >= DELAY_US, "the link's round trip {rtt} µs\n{text}");

    let rows = j["rows"].as_array().unwrap();
    let key = |r: &Value| {
        format!(
            "{}/{}",
            r["kind"].as_str().unwrap(),
            r["mode"].as_str().unwrap()
        )
    };
    let keys: Vec<String> = rows.iter().map(key).collect();
    assert_eq!(
        keys,
        [
            "fua/off",
            "fua/sync",
            "fua/async",
            "plain/off",
            "plain/sync",
            "plain/async"
        ],
        "{text}"
    );
    for r in rows {
        let p50 = r["p50_us"]["median"].as_f64().unwrap();
        let p99 = r["p99_us"]["median"].as_f64().unwrap();
        let iops = r["iops"]["median"].as_f64().unwrap();
        assert!(p50 > 0.0 && p99 >= p50 && p50 < 10e6, "{r}");
        assert!(iops > 0.0, "{r}");
        assert!(r["p50_ratio"].as_f64().unwrap() > 0.0, "{r}");
        if r["mode"] == "sync" {
            assert!(
                p50 >= DELAY_US,
                "a sync write faster than the link's delay: {r}"
            );
            assert!(r["extra_p50_us"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    let runs = j["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6, "{text}");
    assert!(runs.iter().all(|r| r["writes"] == 20), "{text}");

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("mirror=sync"),
        "{svg}"
    );
}
