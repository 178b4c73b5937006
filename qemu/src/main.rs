//! `tandem`: boot and drive the Tandem unikernel under QEMU. See the library docs.

use clap::Parser;
use tandem_qemu::cli::{BenchCommand, Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => tandem_qemu::run::run(args),
        Command::Qmp(args) => tandem_qemu::qmp_cmd::qmp(args),
        Command::Mgmt(args) => tandem_qemu::mgmt::cli(args),
        Command::Bench(BenchCommand::Boot(args)) => tandem_qemu::bench::bench_boot(args),
        Command::Bench(BenchCommand::Blk(args)) => tandem_qemu::bench::blk::bench_blk(args),
        Command::Bench(BenchCommand::Nbd(args)) => tandem_qemu::bench::nbd::bench_nbd(args),
        Command::Bench(BenchCommand::Restart(args)) => {
            tandem_qemu::bench::restart::bench_restart(args)
        }
        Command::Bench(BenchCommand::Failover(args)) => {
            tandem_qemu::bench::failover::bench_failover(args)
        }
        Command::Pair(cmd) => tandem_qemu::pair::cmd::run(cmd),
        Command::Image(cmd) => tandem_qemu::appliance::cmd::run(cmd),
        Command::Check(args) => tandem_qemu::check::check(args),
        Command::Tls(tandem_qemu::cli::TlsCommand::Create(args)) => {
            tandem_qemu::tls::create_cli(args)
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("tandem: error: {e:#}");
            std::process::exit(1);
        }
    }
}
