//! Host side of Tandem: everything that starts and drives the unikernel guest under QEMU.
//!
//! The guest is a bare PVH kernel; what it can do depends on the machine QEMU gives it and
//! what it can report depends on a small console contract. This crate owns the host end of
//! that boundary; the contracts themselves (console lines, command-line words, the pair
//! region, NBD wire constants, bench job words and results, ...) are `tandem-formats`, which
//! the guest uses too.
//!
//! Starting QEMU:
//! - [`builder`]: the one typed QEMU command-line builder. Every QEMU we start is described
//!   as a [`builder::QemuCommand`], so device naming per machine (PCI on q35, MMIO on
//!   microvm), option escaping and the fixed plumbing (serial on stdout, `isa-debug-exit`,
//!   QMP) are decided once and tested; also the `qemu-storage-daemon` and `qemu-nbd` lines.
//! - [`accel`]: KVM only where it is real (device opens *and* CPU shows vmx/svm), else TCG.
//! - [`exit`]: the guest's exit protocol through `isa-debug-exit` (0x10 clean, 0x11 failed).
//! - [`console`]: the guest's console contract (ready line, inventory, PANIC, EXCEPTION,
//!   log lines) as a pure parser, and the tee that echoes and logs the console.
//! - [`vm`]: a running QEMU: spawn, follow the console with timeouts, stop in order.
//! - [`qmp`]: a small synchronous QMP client (quit, query-status, system_reset, ...).
//! - [`image`], [`qemu_bin`], [`state`], [`size`], [`scratch`]: finding the guest image and
//!   QEMU, the per-run state directory (default disk, socket, pid, console log, lock), sizes,
//!   scratch directories.
//!
//! Beside QEMU:
//! - [`supervise`]: one helper-daemon type ([`supervise::Daemon`]: spawn, wait until ready,
//!   log, stop on drop) for `qemu-storage-daemon`, `qemu-nbd` and `tandem-backend`.
//! - [`vhost_backend`]: `tandem-backend`, the workspace's vhost-user-blk back end
//!   (`host-backend/`): finding or building it, its command line, starting it
//!   (`tandem run --backend vhost-user`, `tandem bench blk`).
//! - [`cargo_build`]: building a missing workspace artifact (the guest image,
//!   `tandem-backend`) with cargo under a lock.
//! - [`mgmt`]: the guest's management channel (keys, one authenticated command).
//! - [`mirror`]: the NVLOG mirror link between two hosts (issue 16, in progress): the sending
//!   and receiving ends over TCP with a mutual HMAC handshake.
//! - [`nbd_client`], [`ledger`], [`in_netns`]: a small blocking NBD client, the write ledger
//!   that checks every acknowledged write reads back, and running such clients inside a
//!   pair's network namespace.
//! - [`hosts`]: hosts as namespaces for the cross-host tests (issue 16): several "machines"
//!   on one (network, mount and UTS namespaces with private `/run`, `/dev/shm` and state),
//!   veth links between them, corosync, Pacemaker, virtlogd and libvirtd in each, a
//!   test-only fence agent, and "the host dies" (every process of one SIGKILLed).
//! - [`tls`]: NBD-over-TLS credentials in QEMU's `tls-creds-x509` layout, and `tandem tls
//!   create` (a throwaway CA, server and client certificates).
//!
//! The `tandem` command:
//! - [`cli`]: its command line; [`run`] (`tandem run`), [`qmp_cmd`] (`tandem qmp`),
//!   [`mgmt`] (`tandem mgmt`).
//! - [`bench`](mod@bench): `tandem bench boot|blk|nbd|restart|failover`, one module per concern (job
//!   contract, orchestration, probing, report rendering) and one per bench.
//! - [`pair`]: a failover pair (`tandem pair up|status|takeover|giveback|kill|start|exec|down`):
//!   two guests on a private bridge in a network namespace, one shared region, and a
//!   supervisor with the fence agent; [`pair::Pair`] is the same as a library for tests.
//! - [`check`]: `tandem check`, random NBD operations and crashes against the real guest
//!   through a pipelined client, every read compared with the reference model.
//! - [`appliance`]: appliance images (`tandem image build|run|check`): one description
//!   gives a directory with the kernel, labelled disks, NVRAM, launch script, libvirt XML,
//!   xl config and a manifest.
//! - [`cluster`]: `tandem cluster config`, the files an operator feeds to corosync,
//!   Pacemaker and libvirt to run appliances across two hosts with the NVLOG mirrored.
//!
//! Integration tests in the workspace's `tests/` package use [`builder`] and [`vm`] to boot
//! the real guest image, so the tests and the command start QEMU the same way.

#![warn(missing_docs)]
#![deny(unsafe_code)] // but where a module says why: supervise, pair::{api, region, supervisor}

pub mod accel;
pub mod appliance;
pub mod bench;
pub mod builder;
pub mod cargo_build;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod console;
pub mod exit;
pub mod hosts;
pub mod image;
pub mod in_netns;
pub mod ledger;
pub mod mgmt;
pub mod mirror;
pub mod nbd_client;
pub mod pair;
pub mod qemu_bin;
pub mod qmp;
pub mod qmp_cmd;
pub mod run;
pub mod scratch;
pub mod size;
pub mod state;
#[allow(unsafe_code)] // pre_exec of a helper daemon (parent-death signal)
pub mod supervise;
pub mod tls;
pub mod vhost_backend;
pub mod vm;
