//! Every byte-level contract between the Tandem guest and the host tools, in one place.
//!
//! The guest (`unikernel`) writes and reads these formats; the host (`tandem`, the tests, the
//! fuzz harnesses) writes and reads the same ones. Keeping each in one module, used by both
//! sides, means the two cannot drift apart: the round-trip tests here check that what one side
//! writes, the other parses. The crate is `no_std` with `alloc` and depends on nothing of ours,
//! so the host links it without linking the guest (and its network and TLS stacks).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod allow_list;
pub mod bench_job;
pub mod bench_result;
pub mod boot_module;
pub mod checkpoint;
pub mod cmdline;
pub mod console;
pub mod disk_label;
pub mod mgmt_auth;
pub mod mgmt_status;
pub mod mirror;
pub mod mirror_ship;
pub mod nbd_wire;
pub mod nvlog;
pub mod nvlog_region;
pub mod pair_region;
