//! Making an appliance's data disks: sparse raw files (or qcow2 through `qemu-img`) with the
//! Tandem label already written by the host.
//!
//! Why label on the host: the guest labels a blank disk itself at first use, but with a
//! random UUID and only when the disk is writable. An appliance that ships labelled disks
//! has known UUIDs (listed in `config.resolved.toml`), serves read-only exports from its very
//! first boot, and two builds from the same resolved description give the same bytes. The
//! label is `tandem_formats::disk_label::Label`, the guest's own type, written at byte 0 of
//! the 1 MiB reserved area; the rest of that area stays zero (the guest finds no checkpoint
//! there and discovers cold on its first boot).
//!
//! qcow2: the raw image (sparse, label written) is converted with
//! `qemu-img convert -O qcow2 -o compat=1.1,cluster_size=65536`, which allocates only the
//! cluster that holds the label and writes no timestamps, so the result is reproducible too.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use tandem_formats::disk_label::{uuid_from, Label};
use zerocopy::IntoBytes;

use super::config::DiskPlan;
use crate::builder::DiskFormat;

/// A fresh random (version 4) UUID, from the kernel's random source.
pub fn random_uuid() -> anyhow::Result<[u8; 16]> {
    let mut bits = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|f| f.read_exact_at(&mut bits, 0))
        .or_else(|_| {
            use std::io::Read;
            File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bits))
        })
        .context("reading /dev/urandom for a disk UUID")?;
    Ok(uuid_from(bits))
}

/// The label `disk` gets (its UUID must be resolved).
pub fn label_of(disk: &DiskPlan) -> anyhow::Result<Label> {
    let uuid = disk
        .uuid
        .with_context(|| format!("disk {} has no UUID yet", disk.name))?;
    Label::new(uuid, &disk.name, disk.size.bytes(), disk.read_only)
        .map_err(|e| anyhow::anyhow!("disk {} ({}): cannot label it: {e:?}", disk.name, disk.size))
}

/// Create `disk` at `path` (which must not exist), labelled. `qemu_img` is needed for qcow2.
pub fn create(disk: &DiskPlan, path: &Path, qemu_img: Option<&Path>) -> anyhow::Result<()> {
    let label = label_of(disk)?;
    match disk.format {
        DiskFormat::Raw => write_raw(path, disk.size.bytes(), &label),
        DiskFormat::Qcow2 => {
            let Some(qemu_img) = qemu_img else {
                bail!(
                    "disk {}: format = \"qcow2\" needs qemu-img, which was not found (install \
                     qemu-utils, or use format = \"raw\")",
                    disk.name
                );
            };
            let tmp = path.with_extension("raw.tmp");
            write_raw(&tmp, disk.size.bytes(), &label)?;
            let out = Command::new(qemu_img)
                .args(["convert", "-q", "-f", "raw", "-O", "qcow2", "-o"])
                .arg("compat=1.1,cluster_size=65536")
                .arg(&tmp)
                .arg(path)
                .output();
            let _ = std::fs::remove_file(&tmp);
            let out = out.with_context(|| format!("running {}", qemu_img.display()))?;
            if !out.status.success() {
                bail!(
                    "qemu-img convert to {} failed ({}): {}",
                    path.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        }
    }
}

fn write_raw(path: &Path, size: u64, label: &Label) -> anyhow::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)
        .and_then(|()| f.write_all_at(label.as_bytes(), 0))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// The label at the start of a raw image, parsed (for checks and tests).
pub fn read_raw_label(path: &Path) -> anyhow::Result<Label> {
    let mut buf = vec![0u8; 4096];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, 0))
        .with_context(|| format!("reading {}", path.display()))?;
    Label::parse(&buf).map_err(|e| anyhow::anyhow!("{}: no valid label ({e:?})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::ByteSize;

    #[test]
    fn raw_disk_is_sparse_and_labelled() {
        let dir = crate::scratch::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        let plan = DiskPlan {
            name: "data".into(),
            size: ByteSize::mib(64),
            format: DiskFormat::Raw,
            read_only: true,
            uuid: Some(random_uuid().unwrap()),
            allow: Default::default(),
        };
        create(&plan, &path, None).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 <= 1 << 20, "not sparse");
        let l = read_raw_label(&path).unwrap();
        assert_eq!((l.name(), l.read_only()), ("data", true));
        assert_eq!(l.capacity, 64 << 20);
        assert_eq!(Some(l.uuid), plan.uuid);
        // Never over an existing file; qcow2 without qemu-img is refused by name.
        assert!(create(&plan, &path, None).is_err());
        let q = DiskPlan {
            format: DiskFormat::Qcow2,
            ..plan
        };
        let e = create(&q, &dir.path().join("q.qcow2"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("qemu-img"), "{e}");
    }
}
