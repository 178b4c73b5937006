//! `tandem mirror ...`: the NVLOG mirror's two ends, as daemons ([`crate::mirror::daemon`]).
//! The `ocf:tandem:nvlog` agent runs them; an operator can too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::mirror::daemon;
use crate::size::ByteSize;

/// `tandem mirror ...`.
#[derive(Debug, Subcommand)]
pub enum MirrorCommand {
    /// Ship a running guest's NVLOG (its NVRAM file) to the other host's receiver, and tell
    /// the guest how far the copy goes (the mirror block in its page 0). Runs until SIGTERM,
    /// reconnecting for ever.
    Send(MirrorSendArgs),
    /// Keep the other host's copy of a guest's NVLOG (the file its `<shmem>` maps when it is
    /// started on this host). Starts from an empty copy. Runs until SIGTERM.
    Receive(MirrorReceiveArgs),
    /// Print what an NVRAM file or copy holds, as one JSON object.
    Inspect(MirrorInspectArgs),
}

/// `tandem mirror send`.
#[derive(Debug, Clone, Args)]
pub struct MirrorSendArgs {
    /// The guest's name (both ends derive the link's identity from it).
    #[arg(long)]
    pub guest: String,
    /// The running guest's NVRAM file (`/dev/shm/tandem-nvlog-GUEST`).
    #[arg(long, value_name = "FILE")]
    pub region: PathBuf,
    /// The receiver on the other host.
    #[arg(long, value_name = "ADDR:PORT")]
    pub peer: SocketAddr,
    /// The link key (64 hex digits; `mirror.key` from `tandem cluster config`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Keep a status file (one JSON object) for the agent's monitor.
    #[arg(long, value_name = "FILE")]
    pub status: Option<PathBuf>,
    /// A command (sh -c) that marks the other host's copy outdated so it is never replayed;
    /// run once the link is down and the guest's log is drained. Only then may the guest
    /// write through (`mirror.policy=degraded`).
    #[arg(long, value_name = "CMD")]
    pub outdate_cmd: Option<String>,
    /// A command (sh -c) that clears that mark; run on every connection once the copy holds
    /// everything, before the guest is told the mirror is up (a failure keeps it down).
    #[arg(long, value_name = "CMD")]
    pub uptodate_cmd: Option<String>,
}

/// `tandem mirror receive`.
#[derive(Debug, Clone, Args)]
pub struct MirrorReceiveArgs {
    /// The guest's name.
    #[arg(long)]
    pub guest: String,
    /// The copy (`/dev/shm/tandem-nvlog-GUEST`).
    #[arg(long, value_name = "FILE")]
    pub copy: PathBuf,
    /// The copy's size: the guest's NVRAM size (16M, or 16777216b; a bare number is MiB).
    #[arg(long)]
    pub size: ByteSize,
    /// Where the sender connects.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// The link key.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Keep a status file (one JSON object) for the agent's monitor.
    #[arg(long, value_name = "FILE")]
    pub status: Option<PathBuf>,
    /// Keep what the copy holds instead of starting from an empty one.
    #[arg(long)]
    pub keep: bool,
}

/// `tandem mirror inspect`.
#[derive(Debug, Clone, Args)]
pub struct MirrorInspectArgs {
    /// The NVRAM file or copy.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
}

/// Set on SIGINT/SIGTERM/SIGHUP.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))
        .context("installing the signal handler")?;
    Ok(stop)
}

impl MirrorCommand {
    /// Run it; returns the exit status.
    pub fn run(&self) -> anyhow::Result<i32> {
        match self {
            MirrorCommand::Send(a) => {
                let o = daemon::SendOpts {
                    guest: a.guest.clone(),
                    region: a.region.clone(),
                    peer: a.peer,
                    key: crate::mgmt::read_key(&a.key)?,
                    status: a.status.clone(),
                    outdate_cmd: a.outdate_cmd.clone(),
                    uptodate_cmd: a.uptodate_cmd.clone(),
                };
                daemon::run_sender(&o, &*stop_flag()?)?;
            }
            MirrorCommand::Receive(a) => {
                let o = daemon::ReceiveOpts {
                    guest: a.guest.clone(),
                    copy: a.copy.clone(),
                    size: a.size.bytes(),
                    listen: a.listen,
                    key: crate::mgmt::read_key(&a.key)?,
                    status: a.status.clone(),
                    keep: a.keep,
                };
                daemon::run_receiver(&o, &*stop_flag()?)?;
            }
            MirrorCommand::Inspect(a) => {
                println!("{}", serde_json::to_string(&daemon::inspect(&a.file)?)?);
            }
        }
        Ok(0)
    }
}
