//! Host side of Tandem: everything that starts and drives the unikernel guest under QEMU.
//!
//! The guest is a bare PVH kernel; what it can do depends on the machine QEMU gives it and
//! what it can report depends on a small console contract. This crate owns both ends of that
//! boundary on the host:
//!
//! - [`builder`]: the one typed QEMU command-line builder. Every QEMU we start is described
//!   as a [`builder::QemuCommand`], so device naming per machine (PCI on q35, MMIO on
//!   microvm), option escaping and the fixed plumbing (serial on stdout, `isa-debug-exit`,
//!   QMP) are decided once and tested.
//! - [`accel`]: KVM only where it is real (device opens *and* CPU shows vmx/svm), else TCG.
//! - [`exit`]: the guest's exit protocol through `isa-debug-exit` (0x10 clean, 0x11 failed).
//! - [`console`]: the guest's console contract (ready line, inventory, PANIC, EXCEPTION,
//!   log lines) as a pure parser, and the tee that echoes and logs the console.
//! - [`vm`]: a running QEMU: spawn, follow the console with timeouts, stop in order.
//! - [`vhost_backend`]: `tandem-backend`, the workspace's vhost-user-blk back end
//!   (`host-backend/`): finding or building it, its command line, a running daemon
//!   (`tandem run --backend vhost-user`, `tandem bench blk`).
//! - [`qmp`]: a small synchronous QMP client (quit, query-status, system_reset, ...).
//! - [`image`], [`qemu_bin`], [`state`], [`size`]: finding the guest image and QEMU, the
//!   per-run state directory (default disk, socket, pid, console log, lock), sizes.
//! - [`cli`], [`run`], [`qmp_cmd`], [`bench`]: the `tandem` command (`run`, `qmp`,
//!   `bench boot`, `bench blk`, `bench nbd`).
//! - [`pair`]: a failover pair (`tandem pair up|status|takeover|giveback|kill|start|exec|down`):
//!   two guests on a private bridge in a network namespace, one shared region, and a
//!   supervisor with the fence agent; [`pair::Pair`] is the same as a library for tests.
//! - [`check`]: `tandem check`, random NBD operations and crashes against the real guest
//!   through a pipelined client, every read compared with the reference model.
//! - [`appliance`]: appliance images (`tandem image build|run|check`): one description
//!   gives a directory with the kernel, labelled disks, NVRAM, launch script, libvirt XML,
//!   xl config and a manifest.
//! - [`tls`]: NBD-over-TLS credentials in QEMU's `tls-creds-x509` layout, and `tandem tls
//!   create` (a throwaway CA, server and client certificates).
//!
//! Integration tests in the workspace's `tests/` package use [`builder`] and [`vm`] to boot
//! the real guest image, so the tests and the command start QEMU the same way.

#![warn(missing_docs)]
#![deny(unsafe_code)] // but where a module says why: vhost_backend, pair::{api, region, supervisor}

pub mod accel;
pub mod appliance;
pub mod bench;
pub mod builder;
pub mod check;
pub mod cli;
pub mod console;
pub mod exit;
pub mod image;
pub mod in_netns;
pub mod ledger;
pub mod mgmt;
pub mod nbd_client;
pub mod pair;
pub mod qemu_bin;
pub mod qmp;
pub mod qmp_cmd;
pub mod run;
pub mod scratch;
pub mod size;
pub mod state;
pub mod tls;
#[allow(unsafe_code)] // pre_exec of the back end (parent-death signal)
pub mod vhost_backend;
pub mod vm;
