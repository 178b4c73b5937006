//! Replays the committed corpus and regressions (`corpus/<target>/*`,
//! `regressions/<target>/*`) and the generated seeds through every target, without
//! libFuzzer: a plain `cargo test` in this directory, on any toolchain.

#![forbid(unsafe_code)]

use std::path::Path;

#[test]
fn seeds_run_clean() {
    for (target, name, bytes) in tandem_fuzz::seeds::all() {
        let run = tandem_fuzz::TARGETS
            .iter()
            .find(|(t, _)| *t == target)
            .unwrap_or_else(|| panic!("seed {name} for unknown target {target}"))
            .1;
        run(&bytes);
    }
}

#[test]
fn corpus_and_regressions_run_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for (target, run) in tandem_fuzz::TARGETS {
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                eprintln!("{}", path.display());
                run(&bytes);
                n += 1;
            }
        }
    }
    assert!(n > 0, "no corpus found");
}

#[test]
fn server_seeds_reach_the_disks() {
    for (target, name, bytes) in tandem_fuzz::seeds::all() {
        if target != "nbd_server" {
            continue;
        }
        let st = tandem_fuzz::nbd_server::run_stats(&bytes);
        eprintln!("{name}: {st:?}");
        assert!(st.requests >= 2, "{name}: {st:?}");
        assert!(st.bytes_written > 0 && st.bytes_read > 0, "{name}: {st:?}");
    }
}
