//! Appliance images: `tandem image build|run|check`.
//!
//! Users ship appliances, not a development binary and a list of flags. `tandem image build
//! --config appliance.toml --out DIR` turns one description ([`config`]) into a directory
//! that boots on its own:
//!
//! | file | what |
//! |---|---|
//! | `kernel.elf` | the guest (PVH ELF; checked for its entry note) |
//! | `diskK.raw` / `diskK.qcow2` | data disks, sized from the config, Tandem label written ([`disk`]) |
//! | `nvram.bin` | the NVRAM region (sparse zeros; the guest formats its log there) |
//! | `guest.cmdline` | the guest configuration: network, exports, durability (and pair role and peer) |
//! | `run.sh` | QEMU launch script: the devices `tandem run` gives a guest; TCG or KVM picked when it runs |
//! | `domain.xml` | libvirt domain: direct kernel boot, virtio disks, NVRAM as ivshmem |
//! | `xl.cfg` | Xen `xl` config of a PVH guest |
//! | `config.resolved.toml` | the description with every default and generated UUID spelt out |
//! | `manifest.json` | every other file with its size and SHA-256 ([`manifest`]) |
//! | `mgmt.key` | with management on: the guest's management key (0600; `tandem mgmt` reads it) |
//! | `boot.module` | with management on or `[tls]`: the guest's boot module (0600): the key's word and the TLS files |
//!
//! A pair description gives `region.bin` (the shared region, header written), `kernel.elf`,
//! and per node `a/` and `b/` with the node's disks and its `guest.cmdline`, `run.sh`,
//! `domain.xml` and `xl.cfg`; each node attaches its own disks first, then its peer's, as
//! `tandem pair up` does: the guest command lines and QEMU lines come from the pair's own
//! spec code ([`crate::pair::spec`]), and the directory is a pair directory `tandem pair`
//! can run.
//!
//! The guest reads its configuration from its kernel command line: that is where the
//! appliance embeds it (the script's `-append`, libvirt's `<cmdline>`, xl's `extra=`), so
//! there is no second configuration channel to keep in step. The one exception is the
//! management key, a secret: anything on a command line or in a domain file is readable by
//! others, so each guest (each node of a pair) gets a fresh random key file, `mgmt.key`
//! (0600). So are the TLS key and certificates of `[tls]` (read from `tls.dir` at build
//! time). Both go into the guest's boot module, `boot.module` (0600), that the script,
//! libvirt and xl pass by name (`-initrd`, `<initrd>`, `ramdisk =`). `mgmt.key` is where the
//! key is kept (`tandem mgmt --state-dir DIR` reads it); `boot.module` is made from it and
//! the credentials by the build, and `tandem image run` boots with it as is. Neither is one
//! of the reproducible outputs: the manifest leaves them out (like the runtime files), and
//! two builds of one description have different keys.
//!
//! **Reproducible.** The same description and sources give the same bytes: the kernel is
//! copied, the text files have no timestamps or build-machine paths (the script uses paths
//! relative to its directory; libvirt and xl need absolute ones and get `install_dir`), the
//! manifest is sorted. Disk labels carry UUIDs and the pair region a pair id: taken from the
//! description when given, generated otherwise, and always written to
//! `config.resolved.toml`, so a rebuild from that file is identical, disks included.
//!
//! `tandem image run DIR` boots it through the same code as `tandem run` (one appliance:
//! the directory is its state directory, so its `nvram.bin` is the NVRAM and the QMP socket,
//! pid file, console log and lock land beside it) or `tandem pair up` (a pair). `tandem image
//! check DIR` verifies the manifest.

pub mod cmd;
pub mod config;
pub mod disk;
pub mod manifest;
pub mod render;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use zerocopy::IntoBytes;

use config::{Appliance, Kind};
use manifest::{Manifest, MANIFEST};
use render::{GuestPlan, KERNEL, NVRAM};

/// The resolved description's file name.
pub const RESOLVED: &str = "config.resolved.toml";
/// Each guest's command-line file.
pub const CMDLINE: &str = "guest.cmdline";
/// Each guest's launch script.
pub const SCRIPT: &str = "run.sh";
/// Each guest's libvirt domain.
pub const LIBVIRT: &str = "domain.xml";
/// Each guest's xl config.
pub const XL: &str = "xl.cfg";

/// What `build` needs besides the description.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The guest image (`--image`; default as `tandem run` finds it, built when missing).
    pub image: Option<PathBuf>,
    /// `qemu-img`, for qcow2 disks (`None`: not available).
    pub qemu_img: Option<PathBuf>,
}

impl BuildOptions {
    /// Options with `qemu-img` looked up in `PATH`.
    pub fn from_env(image: Option<PathBuf>) -> BuildOptions {
        BuildOptions {
            image,
            qemu_img: crate::qemu_bin::find_in_path(
                std::ffi::OsStr::new("qemu-img"),
                std::env::var_os("PATH").as_deref(),
            ),
        }
    }
}

/// What `build` made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The output directory.
    pub dir: PathBuf,
    /// The resolved description (UUIDs filled in).
    pub appliance: Appliance,
    /// The manifest written.
    pub manifest: Manifest,
}

/// Build the appliance described by the file `config` into `out`.
pub fn build_from_file(config: &Path, out: &Path, opts: &BuildOptions) -> anyhow::Result<Built> {
    let app = config::load(config)?;
    build(app, out, opts)
}

/// Build `app` into `out`, which must not exist or be empty. On failure nothing is left
/// behind that this call made.
pub fn build(mut app: Appliance, out: &Path, opts: &BuildOptions) -> anyhow::Result<Built> {
    // Everything that can be refused is refused before anything is written.
    if opts.qemu_img.is_none() {
        let qcow2: Vec<String> = match &app.kind {
            Kind::Single(s) => s
                .disks
                .iter()
                .enumerate()
                .filter(|(_, d)| d.format == crate::builder::DiskFormat::Qcow2)
                .map(|(k, _)| format!("disk[{k}].format = \"qcow2\""))
                .collect(),
            Kind::Pair(_) => Vec::new(),
        };
        if let Some(first) = qcow2.first() {
            bail!(
                "{first}: qcow2 images are made with qemu-img, which was not found in PATH \
                 (install qemu-utils, or use format = \"raw\")"
            );
        }
    }
    let created_dir = match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty; build into a new directory (an appliance directory \
                     holds data disks: nothing is overwritten)",
                    out.display()
                );
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e).with_context(|| format!("{}", out.display())),
    };
    let tls = match &app.tls {
        Some(t) => Some(
            crate::tls::ServerFiles::read(Path::new(&t.dir))
                .map_err(|e| anyhow::anyhow!("tls.dir = {:?}: {e:#}", t.dir))?,
        ),
        None => None,
    };
    let image = crate::image::ensure(opts.image.as_deref())?;
    check_pvh_elf(&image)?;
    for d in app.disks_mut() {
        if d.uuid.is_none() {
            d.uuid = Some(disk::random_uuid()?);
        }
    }
    if let Kind::Pair(p) = &mut app.kind
        && p.id.is_none()
    {
        let u = disk::random_uuid()?;
        p.id = Some(u64::from_le_bytes(u[..8].try_into().unwrap_or([1; 8])).max(1));
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    match write_all(&app, out, &image, tls.as_ref(), opts) {
        Ok(manifest) => Ok(Built {
            dir: out.to_path_buf(),
            appliance: app,
            manifest,
        }),
        Err(e) => {
            // Leave the directory as it was: gone, or empty.
            if created_dir {
                let _ = std::fs::remove_dir_all(out);
            } else if let Ok(entries) = std::fs::read_dir(out) {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
            Err(e)
        }
    }
}

fn write_all(
    app: &Appliance,
    out: &Path,
    image: &Path,
    tls: Option<&crate::tls::ServerFiles>,
    opts: &BuildOptions,
) -> anyhow::Result<Manifest> {
    let mut files: Vec<(String, bool)> = Vec::new();
    let write = |rel: &str, text: &str, files: &mut Vec<(String, bool)>| {
        let p = out.join(rel);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        files.push((rel.to_string(), false));
        anyhow::Ok(())
    };

    std::fs::copy(image, out.join(KERNEL))
        .with_context(|| format!("copying {} to {}", image.display(), out.display()))?;
    files.push((KERNEL.into(), false));

    match &app.kind {
        Kind::Single(s) => {
            for (k, d) in s.disks.iter().enumerate() {
                let rel = d.file_name(k);
                disk::create(d, &out.join(&rel), opts.qemu_img.as_deref())?;
                files.push((rel, true));
            }
            let nv = crate::state::ensure_nvram(&out.join(NVRAM), s.nvram)?;
            if !nv.created {
                bail!("{} appeared while building", nv.path.display());
            }
            files.push((NVRAM.into(), true));
        }
        Kind::Pair(p) => {
            let cfg = render::pair_config(app)?;
            let dirs = cfg.paths();
            for n in crate::pair::Node::ALL {
                std::fs::create_dir_all(out.join(dirs.node_dir(n)))?;
                for (k, d) in p.disks[n.index()].iter().enumerate() {
                    let rel = dirs.disk(n, k as u8);
                    disk::create(d, &out.join(&rel), None)?;
                    files.push((rel.to_string_lossy().into_owned(), true));
                }
            }
            let rel = dirs.region().to_string_lossy().into_owned();
            write_region(&out.join(&rel), p.region_size.bytes(), p.id.unwrap_or(1))?;
            files.push((rel, true));
        }
    }

    for g in render::plans(app)? {
        write_secrets(out, &g, tls)?;
        write(&g.file(CMDLINE), &g.cmdline_text(), &mut files)?;
        write(&g.file(SCRIPT), &render::launch_script(app, &g), &mut files)?;
        make_executable(&out.join(g.file(SCRIPT)))?;
        write(&g.file(LIBVIRT), &render::libvirt_xml(app, &g), &mut files)?;
        write(&g.file(XL), &render::xl_config(app, &g), &mut files)?;
    }
    let resolved = app.to_toml().map_err(|e| anyhow::anyhow!(e))?;
    write(RESOLVED, &resolved, &mut files)?;

    let kind = match app.kind {
        Kind::Single(_) => "single",
        Kind::Pair(_) => "pair",
    };
    let m = manifest::make(out, &app.name, kind, &files)?;
    std::fs::write(out.join(MANIFEST), m.to_text())
        .with_context(|| format!("writing {}", out.join(MANIFEST).display()))?;
    Ok(m)
}

/// A guest's key file (fresh for every build) and its boot module (the key's word and the
/// TLS files), both 0600 and left out of the manifest (see the module docs).
fn write_secrets(
    out: &Path,
    g: &render::GuestPlan,
    tls: Option<&crate::tls::ServerFiles>,
) -> anyhow::Result<()> {
    let mut words = String::new();
    if let Some(k) = &g.key {
        let key = crate::mgmt::generate_key()?;
        crate::mgmt::write_key(&out.join(k), &key)?;
        words = crate::mgmt::key_word(&key);
    }
    if let Some(m) = &g.module {
        let text = crate::tls::boot_module_text(&words, tls)?;
        crate::mgmt::write_private(&out.join(m), text.as_bytes())?;
    }
    Ok(())
}

/// The pair region: sparse, the header on page 0 (as `tandem pair up` makes it, with the
/// description's pair id instead of a random one).
fn write_region(path: &Path, size: u64, pair_id: u64) -> anyhow::Result<()> {
    let header = tandem_formats::pair_region::Header::new(size, pair_id)
        .map_err(|e| anyhow::anyhow!("the pair region {}: {e}", path.display()))?;
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)
        .and_then(|()| f.write_all_at(header.as_bytes(), 0))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Check that `path` is an x86_64 ELF with a PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`,
/// owner "Xen", type 18): what QEMU's `-kernel` and Xen's PVH loader enter.
pub fn check_pvh_elf(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if has_pvh_note(&bytes) {
        Ok(())
    } else {
        bail!(
            "{} is not a PVH guest kernel (an x86_64 ELF with a Xen PHYS32_ENTRY note)",
            path.display()
        )
    }
}

/// Whether `elf` is a 64-bit little-endian x86_64 ELF with a PVH entry note.
pub fn has_pvh_note(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") || u16_at(18) != Some(62) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return false;
    };
    let align4 = |n: usize| n.div_ceil(4) * 4;
    for i in 0..usize::from(phnum) {
        let Some(ph) = usize::try_from(phoff)
            .ok()
            .and_then(|o| o.checked_add(i * usize::from(phentsize)))
        else {
            return false;
        };
        if u32_at(ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let (Some(off), Some(len)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            return false;
        };
        let (Ok(mut at), Ok(len)) = (usize::try_from(off), usize::try_from(len)) else {
            return false;
        };
        let Some(end) = at.checked_add(len).filter(|&e| e <= elf.len()) else {
            return false;
        };
        while at + 12 <= end {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8))
            else {
                return false;
            };
            let name_at = at + 12;
            let name = elf.get(name_at..name_at + namesz as usize);
            if kind == 18 && name == Some(b"Xen\0") {
                return true;
            }
            at = name_at + align4(namesz as usize) + align4(descsz as usize);
        }
    }
    false
}

/// Load an appliance directory: its manifest and its resolved description.
pub fn open(dir: &Path) -> anyhow::Result<(Manifest, Appliance)> {
    let m = Manifest::load(dir)?;
    let app = config::load(&dir.join(RESOLVED))?;
    Ok((m, app))
}

/// The plans of an appliance directory's guests, read back (for `image run` and tests).
pub fn guest_plans(app: &Appliance) -> anyhow::Result<Vec<GuestPlan>> {
    render::plans(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_image_has_a_pvh_note_and_junk_has_none() {
        assert!(!has_pvh_note(b""));
        assert!(!has_pvh_note(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"));
        assert!(!has_pvh_note(&[0xff; 4096]));
        let ws = crate::image::workspace_root().unwrap();
        let img = crate::image::default_image_path(&ws);
        if img.is_file() {
            check_pvh_elf(&img).unwrap();
        }
        // The tandem test binary itself is an ELF without the note.
        let me = std::env::current_exe().unwrap();
        assert!(check_pvh_elf(&me).is_err());
    }
}
