//! `tandem cluster config`: what an operator feeds to corosync, Pacemaker and libvirt to run
//! Tandem guests across two hosts (issue 16).
//!
//! Tandem is not a cluster manager: corosync gives membership and quorum, Pacemaker places
//! the guests and fences hosts, libvirt runs the guests. What Tandem adds is the NVLOG mirror
//! (`tandem mirror`, driven by the OCF agent `ocf:tandem:nvlog`) and this generator, which
//! writes one consistent set of files from one description ([`spec`]):
//!
//! | file | what | goes to |
//! |---|---|---|
//! | `corosync/corosync.conf` | knet, crypto, two_node ([`corosync`]) | `/etc/corosync/` on both hosts |
//! | `corosync/authkey` | corosync's key (0400) | the `[corosync] keyfile` path on both hosts |
//! | `pacemaker/cib.xml` | resources, constraints, fencing ([`cib`]) | loaded once by `load.sh` |
//! | `pacemaker/load.sh` | checks, then `cibadmin --replace` | run on one host |
//! | `libvirt/G.xml` | guest G's domain, NVRAM as `<shmem>` ([`libvirt`]) | `[pacemaker] domain_dir` on both hosts |
//! | `mirror.key` | the mirror's link key (0600) | `[mirror] key_file` on both hosts |
//! | `README.txt` | what to copy where, in order | the operator |
//!
//! Secrets are files of their own, created with their final mode, and never written into
//! the configuration files (which name them by path): corosync.conf names the authkey, the
//! CIB names the mirror key, fence passwords go through `password_script`.
//!
//! The output directory must be new or empty: a second run makes new keys, and mixing files
//! of two runs on two hosts would split the cluster.

pub mod cib;
pub mod corosync;
pub mod libvirt;
pub mod spec;

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::accel::{Accel, AccelChoice};
use spec::Cluster;

/// `corosync/corosync.conf`.
pub const COROSYNC_CONF: &str = "corosync/corosync.conf";
/// `corosync/authkey`.
pub const AUTHKEY: &str = "corosync/authkey";
/// `pacemaker/cib.xml`.
pub const CIB: &str = "pacemaker/cib.xml";
/// `pacemaker/load.sh`.
pub const LOAD_SH: &str = "pacemaker/load.sh";
/// The directory of the domain XMLs (`libvirt/G.xml`).
pub const LIBVIRT_DIR: &str = "libvirt";
/// `mirror.key`.
pub const MIRROR_KEY: &str = "mirror.key";
/// `README.txt`.
pub const README: &str = "README.txt";

/// One generated file: its path under the output directory, its bytes, its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFile {
    /// Relative path.
    pub path: String,
    /// Contents.
    pub bytes: Vec<u8>,
    /// Unix mode (0400 and 0600 for secrets).
    pub mode: u32,
}

/// The secrets of one cluster (kept out of every other file).
#[derive(Clone)]
pub struct Secrets {
    /// corosync's authkey.
    pub authkey: Vec<u8>,
    /// The mirror's key.
    pub mirror: crate::mgmt::Key,
}

impl Secrets {
    /// Fresh random secrets.
    pub fn generate() -> anyhow::Result<Secrets> {
        Ok(Secrets {
            authkey: corosync::generate_authkey()?,
            mirror: crate::mgmt::generate_key()?,
        })
    }
}

/// The text of `mirror.key`: the key as 64 hex digits and a newline (the bare form
/// [`crate::mgmt::parse_key_file`] reads).
pub fn mirror_key_text(key: &crate::mgmt::Key) -> String {
    format!("{}\n", key.to_hex())
}

/// Every file for `c`, its guests' domains made for `accel`.
pub fn generate(c: &Cluster, accel: Accel, secrets: &Secrets) -> anyhow::Result<Vec<OutFile>> {
    let text = |path: &str, s: String, mode: u32| OutFile {
        path: path.into(),
        bytes: s.into_bytes(),
        mode,
    };
    let mut out = vec![
        text(COROSYNC_CONF, corosync::corosync_conf(c), 0o644),
        OutFile {
            path: AUTHKEY.into(),
            bytes: secrets.authkey.clone(),
            mode: 0o400,
        },
        text(CIB, cib::cib_xml(c), 0o644),
        text(LOAD_SH, cib::load_sh(c), 0o755),
        text(MIRROR_KEY, mirror_key_text(&secrets.mirror), 0o600),
    ];
    for g in &c.guests {
        let path = format!("{LIBVIRT_DIR}/{}.xml", g.name);
        out.push(text(&path, libvirt::domain_xml(c, g, accel)?, 0o644));
    }
    out.push(text(README, readme(c, accel), 0o644));
    Ok(out)
}

/// Writes `files` into `dir` (created; must be empty if it exists), each file created with
/// its final mode.
pub fn write(dir: &Path, files: &[OutFile]) -> anyhow::Result<()> {
    if dir.exists() {
        let mut entries = dir
            .read_dir()
            .with_context(|| format!("reading {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty: a cluster's files come from one run (each run makes new keys)",
                dir.display()
            );
        }
    }
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        // The umask may have taken bits off: set the mode exactly.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(f.mode))?;
        file.write_all(&f.bytes)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `tandem cluster config`: load, generate, write; prints what was written.
pub fn config_command(
    config: &Path,
    out: &Path,
    accel: Option<AccelChoice>,
) -> anyhow::Result<i32> {
    let c = spec::load(config)?;
    let accel = match accel {
        Some(AccelChoice::Kvm) => Accel::Kvm,
        Some(AccelChoice::Tcg) => Accel::Tcg,
        flag => {
            let d = crate::accel::choose(flag)?;
            eprintln!(
                "tandem: guests' domains for {} ({})",
                d.accel.name(),
                d.reason
            );
            d.accel
        }
    };
    let files = generate(&c, accel, &Secrets::generate()?)?;
    write(out, &files)?;
    println!("cluster {} in {}:", c.name, out.display());
    for f in &files {
        println!("  {:<28} {:o}", f.path, f.mode);
    }
    let placeholders = (0..2).any(|h| {
        cib::fence_params(&c, h)
            .iter()
            .any(|(_, v)| v.contains(cib::CHANGE_ME))
    });
    if placeholders {
        println!(
            "note: the fence devices have {} placeholders; set [[host]] fence = {{ ... }} \
             and run again (load.sh refuses them)",
            cib::CHANGE_ME
        );
    }
    println!("next: {}", PathBuf::from(out).join(README).display());
    Ok(0)
}

/// `README.txt`: what to copy where, in order.
pub fn readme(c: &Cluster, accel: Accel) -> String {
    let [h0, h1] = [&c.hosts[0].name, &c.hosts[1].name];
    let guests: Vec<String> = c
        .guests
        .iter()
        .map(|g| {
            format!(
                "  {} (home {}, appliance files under {}, NVRAM /dev/shm/{})",
                g.name,
                c.hosts[g.home].name,
                g.appliance.install_dir,
                g.shm_name()
            )
        })
        .collect();
    format!(
        "Tandem cluster {name}: hosts {h0} and {h1}; guests:\n{guests}\n\n\
         Generated by `tandem cluster config`. Domains are for {accel}. Copy secrets only over\n\
         ssh (scp -p), as root; keep their modes.\n\n\
         1. Both hosts: install corosync, pacemaker, resource-agents, the fence agent\n\
         \x20  ({agent}), libvirt (libvirt-daemon + libvirt-daemon-driver-qemu) and QEMU, and\n\
         \x20  tandem (on root's PATH) with its OCF agent:\n\
         \x20    install -D -m 0755 scripts/ocf/nvlog /usr/lib/ocf/resource.d/tandem/nvlog\n\
         2. Both hosts: each guest's appliance directory (tandem image build) at its\n\
         \x20  install_dir, on storage both hosts reach at the same path (its disks above all).\n\
         3. Both hosts: {COROSYNC_CONF} -> /etc/corosync/corosync.conf (0644),\n\
         \x20  {AUTHKEY} -> {authkey} (0400, root).\n\
         4. Both hosts: {MIRROR_KEY} -> {mkey} (0600, root).\n\
         5. Both hosts: {LIBVIRT_DIR}/*.xml -> {ddir}/ (do not virsh define them).\n\
         6. Both hosts: start corosync, then pacemaker (systemctl start corosync pacemaker,\n\
         \x20  or corosync -f and pacemakerd -f), and libvirtd. Wait until `crm_mon -1` shows\n\
         \x20  both hosts Online.\n\
         7. One host: sh {LOAD_SH} (it refuses fence placeholders, checks the configuration\n\
         \x20  against the live cluster with crm_verify, then loads it with cibadmin).\n\
         8. Watch: crm_mon. Each guest starts on its home host once its nvlog clone is\n\
         \x20  promoted there.\n\n\
         Moving a guest (for instance back home after a failover; a returned host takes\n\
         nothing back by itself):\n\
         \x20 crm_resource --move --resource vm-G --node HOST   then, once it runs there,\n\
         \x20 crm_resource --clear --resource vm-G\n",
        name = c.name,
        guests = guests.join("\n"),
        accel = accel.name(),
        agent = c.fence_agent,
        authkey = c.authkey,
        mkey = c.mirror.key_file,
        ddir = c.domain_dir,
    )
}

#[cfg(test)]
mod tests;
