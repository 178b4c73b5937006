//! `DIR/manifest.json`: every file of an appliance with its size and SHA-256, and the check
//! that a directory still matches it.
//!
//! The manifest is what makes an appliance something one can ship: the receiver (or
//! `tandem image check`) knows every file is there, whole and unchanged, and that nothing
//! was added. It is itself reproducible: paths are relative to DIR with `/` separators,
//! sorted, and there are no timestamps, so two builds of the same description give the same
//! manifest byte for byte.
//!
//! Files the guest changes while it runs (disks, the NVRAM region, the pair region) are
//! marked `"mutable": true`: `tandem image check --booted` then only checks they are there,
//! so an appliance that has been booted can still be checked for everything else. Files a
//! run leaves beside them (QMP socket, pid file, console log, lock, management key, a pair's supervisor
//! files) are runtime state, named by [`runtime_state`], and are never "extra files".

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pair::{Node, PairDir};
use crate::state::StateDir;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The manifest's `format` value.
pub const FORMAT: &str = "tandem-appliance";
/// The manifest's `version` value.
pub const VERSION: u32 = 1;

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The appliance's name.
    pub name: String,
    /// `single` or `pair`.
    pub kind: String,
    /// Every file but the manifest, sorted by path.
    pub files: Vec<Entry>,
}

/// One file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Relative to the appliance directory, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the contents, lower-case hex.
    pub sha256: String,
    /// Changed by the guest while it runs (disks, NVRAM, region).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mutable: bool,
}

/// SHA-256 of a file, hex. Reads in 1 MiB blocks (a sparse file reads its holes as zeros,
/// so sparse and dense copies of the same contents hash the same).
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The manifest of the files `paths` (relative to `dir`), `mutable` saying which ones the
/// guest changes.
pub fn make(
    dir: &Path,
    name: &str,
    kind: &str,
    paths: &[(String, bool)],
) -> anyhow::Result<Manifest> {
    let mut files = Vec::with_capacity(paths.len());
    for (rel, mutable) in paths {
        let p = dir.join(rel);
        let size = std::fs::metadata(&p)
            .with_context(|| format!("{}", p.display()))?
            .len();
        files.push(Entry {
            path: rel.clone(),
            size,
            sha256: sha256_file(&p)?,
            mutable: *mutable,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Manifest {
        format: FORMAT.into(),
        version: VERSION,
        name: name.into(),
        kind: kind.into(),
        files,
    })
}

impl Manifest {
    /// The file's text (pretty JSON, newline-terminated).
    pub fn to_text(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Read `DIR/manifest.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: not an appliance directory (no readable {MANIFEST})",
                dir.display()
            )
        })?;
        let m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a Tandem appliance manifest", path.display()))?;
        if m.format != FORMAT || m.version != VERSION {
            anyhow::bail!(
                "{}: format {:?} version {} (this tandem reads {FORMAT:?} version {VERSION})",
                path.display(),
                m.format,
                m.version
            );
        }
        for e in &m.files {
            if e.path.is_empty()
                || e.path.starts_with('/')
                || e.path
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                anyhow::bail!(
                    "{}: entry {:?} is not a plain relative path",
                    path.display(),
                    e.path
                );
            }
        }
        Ok(m)
    }
}

/// Files a run of the appliance leaves in its directory (never "extra"): `tandem run`'s
/// state files for one appliance, the pair directory's supervisor and node files for a pair.
pub fn runtime_state(kind: &str) -> BTreeSet<String> {
    let rel = |p: PathBuf| p.to_string_lossy().into_owned();
    let mut out = BTreeSet::new();
    let s = StateDir::new("");
    for p in [s.lock_file(), s.qmp_socket(), s.pidfile(), s.console_log()] {
        out.insert(rel(p));
    }
    // The management channel's key (0600): each build makes a fresh one (and a run one when
    // it is missing); a secret, so never in the manifest, which is meant to be compared.
    // The boot module (0600): the key's word and the TLS key and certificates; the same.
    out.insert(crate::mgmt::KEY_FILE.into());
    out.insert(crate::run::BOOT_MODULE.into());
    if kind == "pair" {
        for n in Node::ALL {
            out.insert(format!("{n}/{}", crate::mgmt::KEY_FILE));
            out.insert(format!("{n}/{}", crate::run::BOOT_MODULE));
        }
        let d = PairDir::new("");
        for p in [
            d.spec(),
            d.info(),
            d.control(),
            d.events(),
            d.supervisor_log(),
            d.supervisor_lock(),
            d.up_lock(),
        ] {
            out.insert(rel(p));
        }
        for n in Node::ALL {
            for p in [d.console(n), d.qemu_log(n), d.qmp(n)] {
                out.insert(rel(p));
            }
        }
    }
    out
}

/// What [`check`] found wrong, in the order found (missing and changed files first, in
/// manifest order, then extra files, sorted).
pub fn check(dir: &Path, booted: bool) -> anyhow::Result<Vec<String>> {
    let m = Manifest::load(dir)?;
    let mut problems = Vec::new();
    for e in &m.files {
        let p = dir.join(&e.path);
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => {
                problems.push(format!("{}: not a plain file", e.path));
                continue;
            }
            Err(_) => {
                problems.push(format!("{}: missing", e.path));
                continue;
            }
        };
        if booted && e.mutable {
            continue;
        }
        if meta.len() != e.size {
            problems.push(format!(
                "{}: size {} bytes, the manifest says {}",
                e.path,
                meta.len(),
                e.size
            ));
            continue;
        }
        let sum = sha256_file(&p)?;
        if sum != e.sha256 {
            problems.push(format!(
                "{}: sha256 {sum}, the manifest says {}",
                e.path, e.sha256
            ));
        }
    }
    let listed: BTreeSet<&str> = m.files.iter().map(|e| e.path.as_str()).collect();
    let state = runtime_state(&m.kind);
    for rel in walk(dir)? {
        if rel != MANIFEST && !listed.contains(rel.as_str()) && !state.contains(&rel) {
            problems.push(format!("{rel}: not in the manifest"));
        }
    }
    Ok(problems)
}

/// Every non-directory entry under `dir`, relative, `/`-separated, sorted.
pub fn walk(dir: &Path) -> anyhow::Result<Vec<String>> {
    fn go(root: &Path, sub: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
        let here = root.join(sub);
        let mut entries: Vec<_> = std::fs::read_dir(&here)
            .with_context(|| format!("listing {}", here.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("listing {}", here.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let rel = sub.join(e.file_name());
            if e.file_type()?.is_dir() {
                go(root, &rel, out)?;
            } else {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(dir, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_and_sparse_equals_dense() {
        let dir = crate::scratch::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"abc").unwrap();
        assert_eq!(
            sha256_file(&a).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let sparse = dir.path().join("s");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(3 << 20)
            .unwrap();
        let dense = dir.path().join("d");
        std::fs::write(&dense, vec![0u8; 3 << 20]).unwrap();
        assert_eq!(sha256_file(&sparse).unwrap(), sha256_file(&dense).unwrap());
    }

    #[test]
    fn check_finds_changed_missing_and_extra_files() {
        let dir = crate::scratch::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("a")).unwrap();
        std::fs::write(d.join("x.txt"), "x").unwrap();
        std::fs::write(d.join("a/disk0.raw"), "disk").unwrap();
        let m = make(
            d,
            "t",
            "single",
            &[("x.txt".into(), false), ("a/disk0.raw".into(), true)],
        )
        .unwrap();
        assert_eq!(m.files[0].path, "a/disk0.raw");
        std::fs::write(d.join(MANIFEST), m.to_text()).unwrap();
        assert_eq!(check(d, false).unwrap(), Vec::<String>::new());
        // Runtime state is not extra.
        std::fs::write(d.join("console.log"), "boot").unwrap();
        assert!(check(d, false).unwrap().is_empty());
        std::fs::write(d.join("a/disk0.raw"), "DISK").unwrap();
        std::fs::write(d.join("stray"), "").unwrap();
        let p = check(d, false).unwrap();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("a/disk0.raw: sha256"), "{p:?}");
        assert_eq!(p[1], "stray: not in the manifest");
        // Booted: a changed disk is expected.
        assert_eq!(check(d, true).unwrap(), ["stray: not in the manifest"]);
        std::fs::remove_file(d.join("x.txt")).unwrap();
        assert!(check(d, true).unwrap()[0].contains("x.txt: missing"));
    }
}
