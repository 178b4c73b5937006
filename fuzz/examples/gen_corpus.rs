//! Writes the seed corpus: `corpus/<target>/seed-<name>` for every seed of
//! `tandem_fuzz::seeds` (run from anywhere: `cargo run --manifest-path fuzz/Cargo.toml
//! --example gen_corpus`).

#![forbid(unsafe_code)]

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in tandem_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, &bytes).unwrap();
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
}
