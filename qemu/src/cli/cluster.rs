//! `tandem cluster ...`: the operator's files for running guests across two hosts under
//! corosync, Pacemaker and libvirt ([`crate::cluster`]).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::accel::AccelChoice;

/// `tandem cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Write what an operator feeds to corosync, Pacemaker and libvirt for a two-host
    /// cluster from one description: DIR/corosync/{corosync.conf,authkey},
    /// DIR/pacemaker/{cib.xml,load.sh}, DIR/libvirt/GUEST.xml, DIR/mirror.key and
    /// DIR/README.txt (what to copy where, in order). Keys are fresh on every run.
    Config(ClusterConfigArgs),
}

/// `tandem cluster config`.
#[derive(Debug, Clone, Args)]
pub struct ClusterConfigArgs {
    /// The cluster description (see examples/cluster.toml and the README).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The directory to write into (created; must be empty if it exists).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The accelerator the hosts will run the guests with: the domains' type (kvm, or qemu
    /// for tcg). auto (default): kvm when this machine's /dev/kvm opens and the CPU shows
    /// vmx or svm, else tcg. Default from TANDEM_ACCEL, else auto.
    #[arg(long, value_enum)]
    pub accel: Option<AccelChoice>,
}

impl ClusterCommand {
    /// Run it; returns the exit status.
    pub fn run(&self) -> anyhow::Result<i32> {
        match self {
            ClusterCommand::Config(a) => crate::cluster::config_command(&a.config, &a.out, a.accel),
        }
    }
}
