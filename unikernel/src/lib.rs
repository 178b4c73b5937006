//! The Tandem guest's host-testable logic.
//!
//! The guest kernel binary (`src/kernel/`, root `src/kernel/main.rs`, with its `arch` and
//! driver glue) is the thin layer that touches hardware. Everything that can be expressed as
//! plain data in, data out lives here so it builds with `std` and unit-tests on the host: the
//! PVH start-info and memory-map parsing, the split of RAM between heap and DMA frames, the
//! ACPI tables we read, the device inventory, the NBD server and its NVLOG, the pair protocol,
//! the start-up and restart decisions, TLS, and the in-guest block benchmark.
//!
//! The byte-level contracts shared with the host tools (formats, console lines, command-line
//! keys, bench words) live in the `tandem-formats` crate; they are re-exported here at the
//! paths the guest code uses (`cmdline`, `boot_module`, `mgmt_auth`, `mgmt_status`,
//! `ha::region`, `restart::{label, checkpoint}`, `nvlog::format`, `nbd::{wire, acl}`).
//!
//! Nothing in this crate allocates before the heap exists: the parsers used during early
//! boot work on borrowed bytes and fixed-size arrays.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod bench;
pub mod exceptions;
pub mod exit;
pub mod ha;
pub mod histogram;
pub mod inventory;
pub mod memmap;
pub mod nbd;
pub mod nvlog;
pub mod restart;
pub mod selftest;
pub mod start_info;
pub mod tcp_buffers;
pub mod tls;
pub mod units;
pub mod wallclock;

/// The byte-level contracts shared with the host tools, in the formats crate.
pub use tandem_formats::{boot_module, cmdline, mgmt_auth, mgmt_status};
