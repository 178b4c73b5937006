//! Benchmarks: `tandem bench boot` ([`boot`]), `tandem bench blk` ([`blk`]), `tandem bench
//! nbd` ([`nbd`], and with `--tls` [`nbd_tls`]), `tandem bench restart` ([`restart`]),
//! `tandem bench failover` ([`failover`]) and `tandem bench mirror` ([`mirror`]).
//!
//! One module per concern, shared by every bench:
//!
//! - the job contract: [`job`] (the guest job words and the `BENCH {json}` line, both
//!   defined in `tandem-formats`);
//! - orchestration: each bench's module holds its typed plan (`BlkPlan`, `NbdPlan`, ...:
//!   what to run, built by [`crate::cli`] from the command line) and its `run` flow;
//!   [`orchestrate`] holds what the flows share (the guest options, scratch directories,
//!   Ctrl-C, progress, summaries, booting until an export is served);
//! - process supervision: [`crate::supervise`] (one helper-daemon type for
//!   qemu-storage-daemon, qemu-nbd and tandem-backend);
//! - probing: [`probe`] (tools, QEMU features, images, exports, ports, the guest's status);
//! - report rendering: [`render`] (tables, bar-chart SVG, the `--json`/`--svg` files; one
//!   submodule per bench for what its table and chart show).
//!
//! Timings taken under TCG compare only with other TCG timings from the same host.

pub mod blk;
pub mod boot;
pub mod failover;
pub mod job;
pub mod mirror;
pub mod nbd;
pub mod nbd_tls;
pub mod orchestrate;
pub mod probe;
pub mod render;
pub mod restart;

pub use boot::bench_boot;
pub use orchestrate::{run_interruptible, Interrupted, Progress, Summary, VmPlan};
pub use render::{Outputs, Report};
