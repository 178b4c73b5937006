//! `tandem bench restart` end to end with one data disk and one run, through the same code
//! path as the command: a cold boot and a restart with cold discovery (`checkpoint=ignore`),
//! then a checkpoint boot and a restart from the checkpoint, each restart caused by the
//! injected panic; the JSON report is parsed and checked. Four starts; a few seconds.

use std::sync::atomic::AtomicBool;

use serde_json::Value;
use tandem_qemu::bench::restart::run_and_report;
use tandem_qemu::cli::{BenchCommand, Cli, Command};
use tandem_tests::*;

/// The `tandem bench restart` options from a command line, as the command parses them.
fn parse(argv: &[&str]) -> tandem_qemu::cli::BenchRestartArgs {
    let cli = Cli::try_parse_args(argv).unwrap_or_else(|e| panic!("{e}"));
    match cli.command {
        Command::Bench(BenchCommand::Restart(args)) => args,
        other => panic!("not bench restart: {other:?}"),
    }
}

#[test]
fn restart_from_the_checkpoint_is_faster_than_cold_discovery() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let json_path = dir.path().join("restart.json");
    let image = guest_image().to_str().unwrap().to_string();
    let work = dir.path().to_str().unwrap().to_string();
    let args = parse(&[
        "tandem",
        "bench",
        "restart",
        "--disks",
        "1",
        "--runs",
        "1",
        "--image",
        &image,
        "--work-dir",
        &work,
        "--json",
        json_path.to_str().unwrap(),
    ]);
    run_and_report(&args.plan(), &AtomicBool::new(false)).unwrap_or_else(|e| panic!("{e:#}"));

    let text = std::fs::read_to_string(&json_path).unwrap();
    let j: Value = serde_json::from_str(&text).unwrap();
    let groups = j["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{text}");
    assert_eq!(groups[0]["disks"], 1);
    let rows = groups[0]["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["row"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "cold boot",
            "checkpoint boot",
            "restart, cold discovery",
            "restart, checkpoint"
        ],
        "{text}"
    );
    let median = |r: &Value, k: &str| r[k]["median"].as_f64().unwrap();
    for r in rows {
        assert!(median(r, "host_ms") > 0.0, "{r}");
        assert!(median(r, "guest_ms") > 0.0, "{r}");
    }
    assert!(
        median(&rows[3], "guest_ms") < median(&rows[2], "guest_ms"),
        "restart from the checkpoint not faster than with cold discovery (guest clock)\n{text}"
    );

    // The run's record: the restart came from the injected panic, used the checkpoint, and
    // each start left its phases line.
    let run = &groups[0]["runs"][0];
    let restart = run["restart"]["restart"].as_str().unwrap();
    assert!(restart.contains("cause=\"panic\""), "{restart}");
    assert!(
        run["restart"]["served"]
            .as_str()
            .unwrap()
            .contains("restarts=1"),
        "{run}"
    );
    for start in ["cold", "restart_cold", "checkpoint", "restart"] {
        let phases = run[start]["phases"].as_array().unwrap();
        assert!(!phases.is_empty(), "{start}: no phases line\n{run}");
    }
    let used_checkpoint = |start: &str| {
        run[start]["checkpoint"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("without a scan"))
    };
    assert!(used_checkpoint("restart"), "{run}");
    assert!(used_checkpoint("checkpoint"), "{run}");
    assert!(!used_checkpoint("cold"), "{run}");
    // checkpoint=ignore: the cold restart found the boot's checkpoint and discovered cold.
    assert!(!used_checkpoint("restart_cold"), "{run}");
    assert!(
        run["restart_cold"]["checkpoint"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("ignored (checkpoint=ignore)")),
        "{run}"
    );
}
