//! The `tandem` command line (clap derive), one submodule per command family: [`run`]
//! (`tandem run`), [`bench`](mod@bench) (`tandem bench ...`), [`pair`] (`tandem pair ...`), [`cluster`]
//! (`tandem cluster ...`); the small
//! commands (`qmp`, `mgmt`, `tls`) and the shared argument types are here. The commands
//! themselves live in [`crate::run`], [`crate::bench`], [`crate::qmp_cmd`] and the modules each
//! command names. The bench commands' arguments become the benches' typed plans in [`bench`](mod@bench)
//! (`BenchBlkArgs::plan` and so on): the command line depends on [`crate::bench`], never the
//! other way round. Everything is re-exported here, so `cli::RunArgs` and the like keep their
//! paths.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::accel::AccelChoice;
use crate::bench::{Outputs, VmPlan};
use crate::size::ByteSize;

pub mod bench;
pub mod cluster;
pub mod mirror;
pub mod pair;
pub mod run;

pub use bench::*;
pub use cluster::*;
pub use mirror::*;
pub use pair::*;
pub use run::*;

/// Tandem: boot and drive the storage-appliance unikernel under QEMU.
#[derive(Debug, Parser)]
#[command(name = "tandem", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parse an argument vector (program name first), for library callers such as the
    /// integration tests that do not use clap themselves.
    pub fn try_parse_args<I, T>(argv: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_from(argv)
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot the guest under QEMU, stream its console, exit with its status.
    ///
    /// Exit status: 0 when the guest shuts down cleanly, 1 when it fails (panic or CPU
    /// exception), QEMU's own status otherwise, 130 after Ctrl-C, 124 after --timeout.
    Run(RunArgs),
    /// Send one QMP command to a running instance and print the JSON reply.
    Qmp(QmpArgs),
    /// Send one command to a running instance's management channel (authenticated with the
    /// state directory's `mgmt.key`) and print the reply: `status`, or `inject KIND`
    /// (KIND: panic, pagefault, gp, ud, stall, device-error; the guest needs
    /// `--cmdline debug.inject=on`).
    Mgmt(MgmtArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// A failover pair: two guests sharing a region, on a private network (see `pair up`).
    #[command(subcommand)]
    Pair(PairCommand),
    /// Appliance images: build one from a description, boot it, verify its manifest.
    #[command(subcommand)]
    Image(crate::appliance::cmd::ImageCommand),
    /// Random NBD operations and crashes against the guest, every read checked against the
    /// reference model; prints ops, crashes and divergences (exit 1 on a divergence).
    Check(crate::check::CheckArgs),
    /// TLS credentials for NBD over TLS (QEMU's tls-creds-x509 directory layout).
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Two hosts under corosync, Pacemaker and libvirt: the operator's configuration files.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The NVLOG mirror between two hosts: `send` (where the guest runs), `receive` (the
    /// other host), `inspect`.
    #[command(subcommand)]
    Mirror(MirrorCommand),
}

/// `tandem tls ...`.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Make a throwaway CA and a server and a client certificate it signs, in DIR:
    /// ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem (keys
    /// 0600). The server certificate is valid for 127.0.0.1, localhost, 10.0.2.15 and each
    /// --name. For tests and first use; bring your own CA for anything real.
    Create(TlsCreateArgs),
}

/// `tandem tls create`.
#[derive(Debug, Clone, Args)]
pub struct TlsCreateArgs {
    /// The directory (created; existing credentials are never overwritten).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Another name the server certificate is valid for: an IP address or a DNS name
    /// (repeatable), e.g. the guest's address on a bridge.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// RSA 2048 keys (made with openssl) instead of ECDSA P-256.
    #[arg(long)]
    pub rsa: bool,
}

/// Guest and QEMU options shared by `run` and `bench`.
#[derive(Debug, Clone, Args)]
pub struct VmArgs {
    /// Accelerator: auto = KVM only when /dev/kvm opens and the CPU shows vmx/svm, else TCG.
    /// Default from TANDEM_ACCEL, else auto.
    #[arg(long, value_enum)]
    pub accel: Option<AccelChoice>,
    /// Guest RAM: 32M, 1G, or a plain number of MiB.
    #[arg(long, default_value = "64M")]
    pub mem: ByteSize,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub smp: u32,
    /// Words appended to the guest command line, e.g. "exit=ready".
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// Guest image. Default: TANDEM_IMAGE, else <workspace>/target/release/unikernel
    /// (built with `cargo build --release -p unikernel` when missing).
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
}

impl VmArgs {
    /// The benches' guest options.
    pub fn plan(&self) -> VmPlan {
        VmPlan {
            accel: self.accel,
            mem: self.mem,
            smp: self.smp,
            cmdline: self.cmdline.clone(),
            image: self.image.clone(),
        }
    }
}

/// `--json` and `--svg`.
fn outputs(json: &Option<PathBuf>, svg: &Option<PathBuf>) -> Outputs {
    Outputs {
        json: json.clone(),
        svg: svg.clone(),
    }
}

/// `tandem qmp`.
#[derive(Debug, Clone, Args)]
pub struct QmpArgs {
    /// State directory of the running instance.
    #[arg(long, default_value = crate::state::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
    /// QMP command, e.g. query-status, system_reset, quit.
    pub command: String,
    /// Arguments as a JSON object, e.g. '{"device": "net0"}'.
    pub args: Option<String>,
}

/// `tandem mgmt`.
#[derive(Debug, Args)]
pub struct MgmtArgs {
    /// State directory of the running instance (its `mgmt.key`).
    #[arg(long, default_value = crate::state::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Host port on 127.0.0.1 forwarded to the guest's management port (`tandem run
    /// --mgmt-port`).
    #[arg(long, default_value_t = 10810, value_name = "PORT")]
    pub port: u16,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
    /// The command: `status`, or `inject KIND`.
    #[arg(required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// `--tls-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsModeArg {
    /// TLS offered; plaintext clients served too.
    On,
    /// TLS only.
    Require,
}

impl TlsModeArg {
    /// The guest's `nbd.tls=` value.
    pub fn word(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Require => "require",
        }
    }
}

/// A size that must also pass `check`.
pub(crate) fn parse_checked_size(
    s: &str,
    check: fn(ByteSize) -> Result<(), String>,
) -> Result<ByteSize, String> {
    let size: ByteSize = s
        .parse()
        .map_err(|e: crate::size::SizeError| e.to_string())?;
    check(size)?;
    Ok(size)
}

/// `--allow`: the guest's own parser, so that what the host takes the guest takes.
fn parse_allow(v: &str) -> Result<tandem_formats::allow_list::AllowList, String> {
    tandem_formats::allow_list::AllowList::parse(v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::blk::{Backend, PathChoice};
    use crate::bench::job::{BlockSize, RwMode};
    use crate::bench::nbd::NbdTarget;
    use crate::bench::restart::FaultKind;
    use crate::builder::{Disk, Machine};
    use crate::pair::{Giveback, Node, Sig};
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_and_disks() {
        let cli = Cli::try_parse_from([
            "tandem",
            "run",
            "--disk",
            "a.raw",
            "--disk",
            "b.qcow2,ro",
            "--mem",
            "32M",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.machine, Machine::Q35);
        assert_eq!(r.vm.mem, ByteSize::mib(32));
        assert_eq!(r.vm.smp, 1);
        assert_eq!(r.nbd_port, 10809);
        assert_eq!(r.state_dir, PathBuf::from(".tandem/run"));
        assert_eq!(r.disk_size, ByteSize::gib(1));
        assert_eq!(r.disk[0].0, Disk::new("a.raw"));
        assert_eq!(r.disk[1].0, Disk::new("b.qcow2").read_only());
        assert_eq!(r.vm.accel, None);
    }

    #[test]
    fn disk_spec_blkdebug() {
        let spec = |s: &str| s.parse::<DiskSpec>().map(|d| d.0);
        assert_eq!(
            spec("a.raw,blkdebug=/c/w.conf"),
            Ok(Disk::new("a.raw").blkdebug("/c/w.conf"))
        );
        let ro = Disk::new("b.qcow2").read_only().blkdebug("f.conf");
        assert_eq!(spec("b.qcow2,ro,blkdebug=f.conf"), Ok(ro.clone()));
        assert_eq!(spec("b.qcow2,blkdebug=f.conf,ro"), Ok(ro));
        assert_eq!(spec("a.raw,rw"), Ok(Disk::new("a.raw")));
        assert_eq!(spec("a,b.raw,ro"), Ok(Disk::new("a,b.raw").read_only()));
        assert!(spec("a.raw,blkdebug=").is_err());
        assert!(spec("a.raw,blkdebug=x,blkdebug=y").is_err());
        assert!(spec(",blkdebug=x").is_err());
        assert!(spec("").is_err());
        // Through clap, into the QEMU command line.
        let cli = Cli::try_parse_from([
            "tandem",
            "run",
            "--disk",
            "/d/a.raw,blkdebug=/d/fail.conf",
            "--dry-run",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.disk[0].0.blkdebug, Some(PathBuf::from("/d/fail.conf")));
    }

    #[test]
    fn bench_blk_lists() {
        let cli = Cli::try_parse_from([
            "tandem",
            "bench",
            "blk",
            "--backends",
            "vhost-user,io_uring,threads",
            "--rw",
            "randread,write",
            "--rw",
            "randrw",
            "--bs",
            "4k,1M",
            "--qd",
            "1,8",
            "--ops",
            "2000",
            "--path",
            "both",
            "--image",
            "/g/unikernel",
            "--disk",
            "/d/x.raw",
            "--mem",
            "128M",
        ])
        .unwrap();
        let Command::Bench(BenchCommand::Blk(b)) = cli.command else {
            panic!()
        };
        assert_eq!(
            b.backends,
            [Backend::VhostUser, Backend::IoUring, Backend::Threads]
        );
        assert_eq!(b.rw, [RwMode::RANDREAD, RwMode::WRITE, RwMode::RANDRW]);
        assert_eq!(b.bs, [BlockSize(4096), BlockSize(1 << 20)]);
        assert_eq!(b.qd, [1, 8]);
        assert_eq!(b.ops, Some(2000));
        assert_eq!(b.path, PathChoice::Both);
        assert_eq!(
            b.vm.image.as_deref(),
            Some(std::path::Path::new("/g/unikernel"))
        );
        assert_eq!(b.disk.as_deref(), Some(std::path::Path::new("/d/x.raw")));
        assert_eq!(b.vm.mem, ByteSize::mib(128));
        // io-uring is accepted too; --ops and --time-ms exclude each other.
        assert!(Cli::try_parse_from(["tandem", "bench", "blk", "--backends", "io-uring"]).is_ok());
        assert!(
            Cli::try_parse_from(["tandem", "bench", "blk", "--ops", "1", "--time-ms", "1"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["tandem", "bench", "blk", "--bs", "100"]).is_err());
        assert!(Cli::try_parse_from(["tandem", "bench", "blk", "--backends", "nvme"]).is_err());
    }

    #[test]
    fn run_nvram_options() {
        let run = |extra: &[&str]| {
            let mut argv = vec!["tandem", "run"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| match c.command {
                Command::Run(r) => r,
                _ => unreachable!(),
            })
        };
        let r = run(&[]).unwrap();
        assert_eq!((r.nvram_size, r.no_nvram), (None, false));
        let r = run(&["--nvram-size", "256M"]).unwrap();
        assert_eq!(r.nvram_size, Some(ByteSize::mib(256)));
        assert!(run(&["--no-nvram"]).unwrap().no_nvram);
        let err = run(&["--nvram-size", "48M"]).unwrap_err().to_string();
        assert!(err.contains("power of two"), "{err}");
        assert!(run(&["--nvram-size", "512K"]).is_err());
        assert!(run(&["--no-nvram", "--nvram-size", "64M"]).is_err());
    }

    #[test]
    fn bench_nbd_defaults_and_lists() {
        let cli = Cli::try_parse_from(["tandem", "bench", "nbd"]).unwrap();
        let Command::Bench(BenchCommand::Nbd(b)) = cli.command else {
            panic!()
        };
        assert_eq!(b.targets, [NbdTarget::Guest, NbdTarget::QemuNbd]);
        let jobs: Vec<String> = b.jobs.iter().map(ToString::to_string).collect();
        assert_eq!(
            jobs,
            [
                "randread:4k:1",
                "randread:4k:16",
                "randwrite:4k:1",
                "randwrite:4k:16",
                "read:1M:4",
                "write:1M:4"
            ]
        );
        assert_eq!((b.time, b.ramp, b.repeats), (5, 0, 3));
        assert_eq!(b.vm.mem, ByteSize::mib(64));
        assert_eq!(b.disk_size, ByteSize::gib(1));
        assert_eq!(b.nvram_size, ByteSize::mib(64));
        assert_eq!(b.machine, Machine::Q35);
        let cli = Cli::try_parse_from([
            "tandem",
            "bench",
            "nbd",
            "--targets",
            "qemu-nbd",
            "--jobs",
            "randread:4k:1,write:1M:8",
            "--time",
            "1",
            "--repeats",
            "1",
            "--mem",
            "128M",
        ])
        .unwrap();
        let Command::Bench(BenchCommand::Nbd(b)) = cli.command else {
            panic!()
        };
        assert_eq!(b.targets, [NbdTarget::QemuNbd]);
        assert_eq!(b.jobs.len(), 2);
        assert_eq!(b.jobs[1].to_string(), "write:1M:8");
        assert_eq!(b.vm.mem, ByteSize::mib(128));
        for bad in [
            &["--time", "0"][..],
            &["--jobs", "randread:4k"],
            &["--jobs", "randread:4k:0"],
            &["--targets", "nvme"],
            &["--nvram-size", "100M"],
        ] {
            let mut argv = vec!["tandem", "bench", "nbd"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pair_commands_parse() {
        let cli = Cli::try_parse_from(["tandem", "pair", "up", "--dir", "/p"]).unwrap();
        let Command::Pair(PairCommand::Up(u)) = cli.command else {
            panic!()
        };
        assert_eq!(u.dir.dir, PathBuf::from("/p"));
        assert_eq!((u.disks, u.timeout_ms, u.fence_timeout_ms), (1, 1000, 1500));
        assert_eq!(
            (u.disk_size, u.region_size),
            (ByteSize::mib(64), ByteSize::mib(64))
        );
        assert_eq!(u.giveback, Giveback::Auto);
        assert_eq!(u.subnet.to_string(), "10.77.0.0/24");
        let cli = Cli::try_parse_from([
            "tandem",
            "pair",
            "up",
            "--disks",
            "2",
            "--region-size",
            "16M",
            "--giveback",
            "manual",
            "--subnet",
            "10.9.0.0/24",
            "--fence-timeout-ms",
            "500",
        ])
        .unwrap();
        let Command::Pair(PairCommand::Up(u)) = cli.command else {
            panic!()
        };
        assert_eq!(u.dir.dir, PathBuf::from(DEFAULT_PAIR_DIR));
        assert_eq!((u.disks, u.fence_timeout_ms), (2, 500));
        assert_eq!(u.region_size, ByteSize::mib(16));
        for bad in [
            &["up", "--disks", "0"][..],
            &["up", "--disks", "9"],
            &["up", "--region-size", "48M"],
            &["up", "--region-size", "2M"],
            &["up", "--timeout-ms", "10"],
            &["up", "--subnet", "10.77.0.1/24"],
            &["up", "--giveback", "never"],
            &["kill", "c"],
            &["kill", "a", "--signal", "HUP"],
            &["takeover"],
            &["takeover", "--by", "c"],
            &["exec", "--dir", "/p"],
            &["start"],
        ] {
            let mut argv = vec!["tandem", "pair"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["tandem", "pair", "kill", "b", "--signal", "stop"]).unwrap();
        let Command::Pair(PairCommand::Kill(k)) = cli.command else {
            panic!()
        };
        assert_eq!((k.node, k.signal), (Node::B, Sig::Stop));
        let cli = Cli::try_parse_from([
            "tandem", "pair", "exec", "--dir", "/p", "--", "nbdinfo", "--list", "nbd://x",
        ])
        .unwrap();
        let Command::Pair(PairCommand::Exec(e)) = cli.command else {
            panic!()
        };
        assert_eq!(e.command, ["nbdinfo", "--list", "nbd://x"]);
        let cli = Cli::try_parse_from(["tandem", "pair", "takeover", "--by", "b", "--wait", "2.5"])
            .unwrap();
        let Command::Pair(PairCommand::Takeover(t)) = cli.command else {
            panic!()
        };
        assert_eq!((t.by, t.wait), (Node::B, Some(2.5)));
    }

    #[test]
    fn bad_machine_is_rejected() {
        let err = Cli::try_parse_from(["tandem", "run", "--machine", "bogus"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("invalid value 'bogus'"), "{msg}");
        assert!(msg.contains("q35") && msg.contains("microvm"), "{msg}");
    }

    #[test]
    fn mem_plain_number_is_mib() {
        let cli = Cli::try_parse_from(["tandem", "run", "--mem", "128"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.vm.mem, ByteSize::mib(128));
        assert!(Cli::try_parse_from(["tandem", "run", "--mem", "lots"]).is_err());
    }

    #[test]
    fn bench_restart_defaults_and_lists() {
        let cli = Cli::try_parse_from(["tandem", "bench", "restart"]).unwrap();
        let Command::Bench(BenchCommand::Restart(b)) = cli.command else {
            panic!()
        };
        assert_eq!((b.disks, b.runs, b.kind), (vec![1, 8], 5, FaultKind::Panic));
        let cli = Cli::try_parse_from([
            "tandem",
            "bench",
            "restart",
            "--disks",
            "2",
            "--runs",
            "1",
            "--kind",
            "pagefault",
        ])
        .unwrap();
        let Command::Bench(BenchCommand::Restart(b)) = cli.command else {
            panic!()
        };
        assert_eq!(
            (b.disks, b.runs, b.kind),
            (vec![2], 1, FaultKind::Pagefault)
        );
        for bad in [["--disks", "0"], ["--runs", "0"], ["--kind", "oops"]] {
            let mut argv = vec!["tandem", "bench", "restart"];
            argv.extend(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bench_and_qmp_parse() {
        let cli = Cli::try_parse_from(["tandem", "bench", "boot", "--runs", "3"]).unwrap();
        let Command::Bench(BenchCommand::Boot(b)) = cli.command else {
            panic!()
        };
        assert_eq!(b.runs, 3);
        assert_eq!(b.machine, BenchMachines::Both);
        let cli = Cli::try_parse_from(["tandem", "bench", "blk"]).unwrap();
        let Command::Bench(BenchCommand::Blk(b)) = cli.command else {
            panic!()
        };
        assert!(b.backends.is_empty());
        assert_eq!(b.rw, [RwMode::RANDREAD]);
        assert_eq!(b.bs, [BlockSize(4096)]);
        assert_eq!(b.qd, [1, 8, 32, 128]);
        assert_eq!((b.ops, b.time_ms, b.repeats), (None, None, 3));
        assert_eq!(b.path, PathChoice::Hpdi);
        assert_eq!(b.disk_size, ByteSize::gib(1));
        assert_eq!(b.machine, Machine::Q35);
        let cli = Cli::try_parse_from([
            "tandem",
            "qmp",
            "--state-dir",
            "/s",
            "device_del",
            r#"{"id":"x"}"#,
        ])
        .unwrap();
        let Command::Qmp(q) = cli.command else {
            panic!()
        };
        assert_eq!(q.command, "device_del");
        assert_eq!(q.args.as_deref(), Some(r#"{"id":"x"}"#));
    }
}
