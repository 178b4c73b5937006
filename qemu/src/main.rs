//! `tandem`: boot and drive the Tandem unikernel under QEMU. See the library docs.

use clap::Parser;
use tandem_qemu::cli::{BenchCommand, Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => tandem_qemu::run::run(args),
        Command::Qmp(args) => tandem_qemu::qmp_cmd::qmp(args),
        Command::Mgmt(args) => tandem_qemu::mgmt::cli(args),
        Command::Bench(cmd) => bench(cmd),
        Command::Pair(cmd) => tandem_qemu::pair::cmd::run(cmd),
        Command::Image(cmd) => tandem_qemu::appliance::cmd::run(cmd),
        Command::Check(args) => tandem_qemu::check::check(args),
        Command::Tls(tandem_qemu::cli::TlsCommand::Create(args)) => {
            tandem_qemu::tls::create_cli(args)
        }
        Command::Cluster(cmd) => cmd.run(),
        Command::Mirror(cmd) => cmd.run(),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("tandem: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// `tandem bench ...`: each bench runs the plan its arguments make.
fn bench(cmd: &BenchCommand) -> anyhow::Result<i32> {
    use tandem_qemu::bench;
    match cmd {
        BenchCommand::Boot(args) => bench::bench_boot(&args.plan()),
        BenchCommand::Blk(args) => bench::blk::bench_blk(&args.plan()),
        BenchCommand::Nbd(args) => bench::nbd::bench_nbd(&args.plan()),
        BenchCommand::Restart(args) => bench::restart::bench_restart(&args.plan()),
        BenchCommand::Failover(args) => bench::failover::bench_failover(&args.plan()),
        BenchCommand::Mirror(args) => bench::mirror::bench_mirror(&args.plan()),
    }
}
