//! The `tandem image` commands: `build`, `run`, `check` (see the module docs of
//! [`crate::appliance`]).

use std::path::{Path, PathBuf};
use tandem_formats::cmdline::{key, word};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::config::{self, Kind};
use super::manifest;
use super::render;
use crate::accel::AccelChoice;
use crate::cli::{Cli, Command, PairCommand};

/// `tandem image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an appliance directory from a description: the guest kernel, labelled data
    /// disks, the NVRAM region, the guest configuration on its command line, a QEMU launch
    /// script, a libvirt domain XML, a Xen xl config and a manifest (sha256 of every file).
    /// A pair description builds both nodes (DIR/a, DIR/b) and the shared region.
    Build(ImageBuildArgs),
    /// Boot an appliance directory: one guest as `tandem run` does (the directory is its
    /// state directory), a pair as `tandem pair up` does; prints how to connect.
    Run(ImageRunArgs),
    /// Verify an appliance directory against its manifest: every file present, sizes and
    /// sha256 as listed, nothing unlisted but runtime state. Exits 1 naming the differences.
    Check(ImageCheckArgs),
}

/// `tandem image build`.
#[derive(Debug, Clone, Args)]
pub struct ImageBuildArgs {
    /// The appliance description (see examples/appliance.toml and examples/pair.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The directory to build into (created; must be empty if it exists).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Guest image. Default: TANDEM_IMAGE, else <workspace>/target/release/unikernel
    /// (built with `cargo build --release -p unikernel` when missing).
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
}

/// `tandem image run`.
#[derive(Debug, Clone, Args)]
pub struct ImageRunArgs {
    /// The appliance directory.
    pub dir: PathBuf,
    /// One guest: host port on 127.0.0.1 forwarded to the guest's NBD port (0: none).
    #[arg(long, default_value_t = 10809, value_name = "PORT")]
    pub nbd_port: u16,
    /// One guest: host port on 127.0.0.1 forwarded to the management port (0: none).
    #[arg(long, default_value_t = 10810, value_name = "PORT")]
    pub mgmt_port: u16,
    /// Accelerator: auto = KVM only when /dev/kvm opens and the CPU shows vmx/svm, else TCG.
    /// Default from TANDEM_ACCEL, else auto.
    #[arg(long, value_enum)]
    pub accel: Option<AccelChoice>,
    /// One guest: stop QEMU after this many seconds (exit status 124).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// A pair: seconds to wait for both guests to print TANDEM READY.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub boot_timeout: u64,
    /// One guest: print the QEMU command line and exit.
    #[arg(long)]
    pub dry_run: bool,
}

/// `tandem image check`.
#[derive(Debug, Clone, Args)]
pub struct ImageCheckArgs {
    /// The appliance directory.
    pub dir: PathBuf,
    /// The appliance has been booted: files the guest changes (disks, NVRAM, the pair
    /// region) need only be present; everything else must still match.
    #[arg(long)]
    pub booted: bool,
}

/// Run one `tandem image` command; returns the exit status.
pub fn run(cmd: &ImageCommand) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Build(a) => build(a),
        ImageCommand::Run(a) => run_image(a),
        ImageCommand::Check(a) => check(a),
    }
}

fn build(a: &ImageBuildArgs) -> anyhow::Result<i32> {
    let opts = super::BuildOptions::from_env(a.image.clone());
    let built = super::build_from_file(&a.config, &a.out, &opts)?;
    let dir = a.out.display();
    let total: u64 = built.manifest.files.iter().map(|f| f.size).sum();
    println!(
        "built appliance {} in {dir}: {} files, {total} bytes (sparse on disk); manifest {dir}/{}",
        built.appliance.name,
        built.manifest.files.len(),
        manifest::MANIFEST
    );
    for f in &built.manifest.files {
        println!("  {:<24} {:>12}  {}", f.path, f.size, f.sha256);
    }
    println!("boot it:   tandem image run {dir}");
    println!("check it:  tandem image check {dir}");
    Ok(0)
}

fn check(a: &ImageCheckArgs) -> anyhow::Result<i32> {
    let problems = manifest::check(&a.dir, a.booted)?;
    let dir = a.dir.display();
    if problems.is_empty() {
        let m = manifest::Manifest::load(&a.dir)?;
        println!(
            "{dir}: ok, {} files match {}{}",
            m.files.len(),
            manifest::MANIFEST,
            if a.booted {
                " (disks, NVRAM and region: present; --booted)"
            } else {
                ""
            }
        );
        return Ok(0);
    }
    const SHOWN: usize = 20;
    eprintln!(
        "tandem: {dir} does not match its manifest ({} difference{}):",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems.iter().take(SHOWN) {
        eprintln!("  {p}");
    }
    if problems.len() > SHOWN {
        eprintln!("  ... and {} more", problems.len() - SHOWN);
    }
    Ok(1)
}

/// The guest address QEMU user networking forwards to.
const USER_NET_IP: (std::net::Ipv4Addr, u8) = (std::net::Ipv4Addr::new(10, 0, 2, 15), 24);

fn run_image(a: &ImageRunArgs) -> anyhow::Result<i32> {
    let dir = std::path::absolute(&a.dir).with_context(|| a.dir.display().to_string())?;
    let (m, app) = super::open(&dir)?;
    let missing: Vec<&str> = m
        .files
        .iter()
        .filter(|f| !dir.join(&f.path).is_file())
        .map(|f| f.path.as_str())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} is incomplete: {} missing (`tandem image check {}` lists every difference)",
            dir.display(),
            missing.join(", "),
            dir.display()
        );
    }
    let plans = render::plans(&app)?;
    for g in &plans {
        let baked = read_words(&dir.join(g.file(super::CMDLINE)))?;
        if baked != g.words {
            let using = if g.node.is_some() {
                "the pair boots with the description's words"
            } else {
                "booting with the file's words"
            };
            eprintln!(
                "tandem: note: {} differs from what {} describes; {using}",
                g.file(super::CMDLINE),
                super::RESOLVED
            );
        }
    }
    match &app.kind {
        Kind::Single(s) => {
            let words = read_words(&dir.join(plans[0].file(super::CMDLINE)))?;
            run_single(a, &dir, &app, s, words)
        }
        Kind::Pair(_) => run_pair(a, &dir, &app),
    }
}

/// Boot a single appliance as `tandem run` does, with the directory as its state directory
/// and `words` (its baked command line) for the guest, under QEMU user networking.
fn run_single(
    a: &ImageRunArgs,
    dir: &Path,
    app: &config::Appliance,
    s: &config::Single,
    mut words: Vec<String>,
) -> anyhow::Result<i32> {
    if s.ip != USER_NET_IP {
        eprintln!(
            "tandem: note: the appliance's address {}/{} is for its own network; under \
             QEMU user networking it runs as {}/{} (what the port forwards reach)",
            s.ip.0, s.ip.1, USER_NET_IP.0, USER_NET_IP.1
        );
        words.retain(|w| ![key::IP, key::GW].contains(&w.split('=').next().unwrap_or("")));
        words.insert(0, word(key::GW, "10.0.2.2"));
        words.insert(
            0,
            word(key::IP, format_args!("{}/{}", USER_NET_IP.0, USER_NET_IP.1)),
        );
    }
    let mut extra = vec!["--state-dir".to_string(), dir.display().to_string()];
    if let Some(acc) = a.accel {
        extra.extend(["--accel".into(), accel_name(acc).into()]);
    }
    if let Some(t) = a.timeout {
        extra.extend(["--timeout".into(), t.to_string()]);
    }
    if a.dry_run {
        extra.push("--dry-run".into());
    }
    let args = render::run_args(app, dir, &words, a.nbd_port, a.mgmt_port, &extra)?;
    eprintln!(
        "tandem: appliance {} ({}): state beside it (qmp.sock, console.log)",
        app.name,
        dir.display()
    );
    crate::run::run(&args)
}

/// Boot a pair appliance as `tandem pair up` does, with the nodes' own boot modules.
fn run_pair(a: &ImageRunArgs, dir: &Path, app: &config::Appliance) -> anyhow::Result<i32> {
    let spec = render::pair_spec(app, dir)?;
    let mut argv: Vec<String> = vec![
        "tandem".into(),
        "pair".into(),
        "up".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--disks".into(),
        spec.disks.to_string(),
        "--disk-size".into(),
        config::size_text(spec.disk_size),
        "--region-size".into(),
        config::size_text(spec.region_size),
        "--mem".into(),
        config::size_text(spec.mem),
        "--timeout-ms".into(),
        spec.timeout_ms.to_string(),
        "--fence-timeout-ms".into(),
        spec.fence_timeout_ms.to_string(),
        "--giveback".into(),
        spec.giveback.name().into(),
        "--subnet".into(),
        spec.subnet.to_string(),
        "--image".into(),
        dir.join(render::KERNEL).display().to_string(),
        "--boot-timeout".into(),
        a.boot_timeout.to_string(),
    ];
    if !spec.cmdline.is_empty() {
        argv.extend(["--cmdline".into(), spec.cmdline.join(" ")]);
    }
    if let Some(acc) = a.accel {
        argv.extend(["--accel".into(), accel_name(acc).into()]);
    }
    let cli = Cli::try_parse_args(&argv).map_err(|e| anyhow::anyhow!("{e}"))?;
    match &cli.command {
        Command::Pair(PairCommand::Up(up)) => {
            // The nodes' own boot modules (key, TLS files), as the plans pass them.
            let mut s = crate::pair::cmd::spec_of(up);
            s.boot_modules = spec.boot_modules;
            s.exports = spec.exports;
            crate::pair::cmd::up_spec(&s)
        }
        _ => bail!("`tandem pair up` arguments did not parse"),
    }
}

fn accel_name(a: AccelChoice) -> &'static str {
    match a {
        AccelChoice::Auto => "auto",
        AccelChoice::Kvm => "kvm",
        AccelChoice::Tcg => "tcg",
    }
}

fn read_words(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.split_whitespace().map(str::to_string).collect())
}
