//! `tandem pair ...`: the failover pair's commands and their arguments.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::accel::AccelChoice;
use crate::pair::{Giveback, Node, Sig, Subnet};
use crate::size::ByteSize;

use super::*;

/// The default pair directory.
pub const DEFAULT_PAIR_DIR: &str = ".tandem/pair";

/// `tandem pair ...`.
#[derive(Debug, Subcommand)]
pub enum PairCommand {
    /// Start a failover pair: two guests (a: .10, b: .11 of --subnet) sharing the region
    /// DIR/region.bin, each with its own disks and its peer's, on a bridge inside a private
    /// network namespace; wait until both print TANDEM READY, print how to connect, exit.
    ///
    /// A detached supervisor keeps running (DIR/supervisor.log): it owns both QEMUs, serves
    /// the other `tandem pair` commands and runs the fence agent, which kills a node that
    /// ignores a claim on its disks for --fence-timeout-ms. Disks and region are kept across
    /// `down` and `up` (delete DIR to start over).
    Up(PairUpArgs),
    /// Show both nodes: QEMU process, state, heartbeat, who owns each node's disks (and under
    /// which epoch), fence acknowledgment, host-confirmed death, requests, announcements.
    Status(PairStatusArgs),
    /// Ask a node to take its peer over now (writes its REQUEST word).
    Takeover(PairRequestArgs),
    /// Ask a node to give its peer's disks and address back.
    Giveback(PairRequestArgs),
    /// Send a signal to a node's QEMU: KILL (a crash), STOP (a hang), CONT, TERM.
    Kill(PairKillArgs),
    /// Start a node's QEMU again (after `kill` or a crash), same configuration.
    Start(PairNodeArgs),
    /// Run a command inside the pair's network namespace (where 10.77.0.10/.11 are
    /// reachable); its exit status is passed through.
    Exec(PairExecArgs),
    /// Stop both QEMUs and the supervisor (the namespace goes with it).
    Down(PairDirArgs),
    /// Internal: the supervisor `pair up` starts.
    #[command(hide = true)]
    Supervise(PairDirArgs),
}

/// `--dir`.
#[derive(Debug, Clone, Args)]
pub struct PairDirArgs {
    /// The pair directory.
    #[arg(long, default_value = DEFAULT_PAIR_DIR, value_name = "DIR")]
    pub dir: PathBuf,
}

/// `tandem pair up`.
#[derive(Debug, Clone, Args)]
pub struct PairUpArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dir: PairDirArgs,
    /// Disks per node (DIR/a/diskK.raw, DIR/b/diskK.raw).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub disks: u8,
    /// Size of each disk when it is created (sparse).
    #[arg(long, default_value = "64M", value_name = "SIZE")]
    pub disk_size: ByteSize,
    /// Size of the shared region when it is created: a power of two, at least 4M.
    #[arg(long, default_value = "64M", value_name = "SIZE", value_parser = parse_region_size)]
    pub region_size: ByteSize,
    /// Guest RAM of each node.
    #[arg(long, default_value = "64M")]
    pub mem: ByteSize,
    /// Peer silence (ms) after which a node declares its peer failed.
    #[arg(long, default_value_t = 1000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub timeout_ms: u64,
    /// How long (ms) a running node may ignore a claim on its disks before the fence agent
    /// kills its QEMU.
    #[arg(long, default_value_t = 1500, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub fence_timeout_ms: u64,
    /// When a node gives a taken-over peer's disks back: auto (when the peer returns) or
    /// manual (`tandem pair giveback`).
    #[arg(long, value_enum, default_value_t = Giveback::Auto)]
    pub giveback: Giveback,
    /// The pair's subnet: the host side is .1, node a .10, node b .11.
    #[arg(long, default_value = "10.77.0.0/24", value_name = "A.B.C.D/N")]
    pub subnet: Subnet,
    /// Accelerator: auto = KVM only when /dev/kvm opens and the CPU shows vmx/svm, else TCG.
    /// Default from TANDEM_ACCEL, else auto.
    #[arg(long, value_enum)]
    pub accel: Option<AccelChoice>,
    /// Guest image. Default: TANDEM_IMAGE, else <workspace>/target/release/unikernel.
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// Extra guest command-line words for both nodes, e.g. "log=debug".
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// Serve every export only to clients in these networks, A.B.C.D/N joined by `+` (at
    /// most 8), on both nodes and after a takeover too. Default: every client.
    #[arg(long, value_name = "NETS", value_parser = parse_allow)]
    pub allow: Option<tandem_formats::allow_list::AllowList>,
    /// Serve NBD over TLS on both nodes with the credentials in DIR (QEMU's tls-creds-x509
    /// layout); they reach the guests in DIR/boot.module (0600, the pair directory's), never
    /// on a command line.
    #[arg(long, value_name = "DIR")]
    pub tls: Option<PathBuf>,
    /// With --tls: `require` (plaintext clients see no export) or `on`.
    #[arg(long, value_enum, default_value_t = TlsModeArg::Require, requires = "tls")]
    pub tls_mode: TlsModeArg,
    /// Seconds to wait for both guests to print TANDEM READY.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub boot_timeout: u64,
}

/// `--region-size`.
pub fn parse_region_size(s: &str) -> Result<ByteSize, String> {
    parse_checked_size(s, crate::pair::spec::check_region_size)
}

/// `tandem pair status`.
#[derive(Debug, Clone, Args)]
pub struct PairStatusArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dir: PairDirArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `tandem pair takeover` / `giveback`.
#[derive(Debug, Clone, Args)]
pub struct PairRequestArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dir: PairDirArgs,
    /// The node that acts (takes its peer over, or gives its peer's disks back).
    #[arg(long, value_enum)]
    pub by: Node,
    /// Wait up to SECS for the node to carry the request out (REQUEST_DONE).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<f64>,
}

/// `tandem pair kill`.
#[derive(Debug, Clone, Args)]
pub struct PairKillArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dir: PairDirArgs,
    /// The node.
    #[arg(value_enum)]
    pub node: Node,
    /// The signal.
    #[arg(long, value_enum, ignore_case = true, default_value = "KILL")]
    pub signal: Sig,
}

/// `tandem pair start`.
#[derive(Debug, Clone, Args)]
pub struct PairNodeArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dir: PairDirArgs,
    /// The node.
    #[arg(value_enum)]
    pub node: Node,
}

/// `tandem pair exec`.
#[derive(Debug, Clone, Args)]
pub struct PairExecArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dir: PairDirArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}
