//! `tandem-backend`: serve a raw image file to a QEMU guest as a vhost-user-blk device.
//!
//! ```text
//! tandem-backend --socket /run/vu.sock --image disk.raw [--read-only] [--queues N]
//!                [--queue-size N] [--direct] [--engine auto|io-uring|threads] [--serial ID]
//! qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=64M,share=on \
//!     -machine q35,memory-backend=mem -chardev socket,id=vu,path=/run/vu.sock \
//!     -device vhost-user-blk-pci,chardev=vu,num-queues=N
//! ```
//!
//! Guest RAM must be shared (`share=on`): the daemon maps it and moves data between the
//! guest's buffers and the image itself. The daemon serves one front end at a time and
//! keeps serving when it goes away; SIGTERM stops it cleanly (exit 0). See the library docs
//! (`host_backend`) for the design. No `unsafe` here: it lives in the library's modules.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use host_backend::server::{self, EngineChoice, Options};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EngineArg {
    /// io_uring where the kernel allows it, else the thread pool.
    Auto,
    /// io_uring (fail if unavailable).
    #[value(name = "io-uring", alias = "io_uring")]
    IoUring,
    /// A pool of threads doing blocking preadv/pwritev.
    Threads,
}

/// Serve a raw image file to a QEMU guest as a vhost-user-blk device.
#[derive(Debug, Parser)]
#[command(name = "tandem-backend", version)]
struct Cli {
    /// The vhost-user unix socket to listen on (QEMU connects; an existing file is replaced).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// The raw image file to serve.
    #[arg(long, value_name = "FILE")]
    image: PathBuf,
    /// Serve read-only (offers VIRTIO_BLK_F_RO; writes fail with IOERR).
    #[arg(long)]
    read_only: bool,
    /// Number of virtqueues, one worker thread each (QEMU's num-queues may be lower).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,
    /// Largest virtqueue QEMU may set up (its queue-size; 128 by default).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u16).range(2..=32768))]
    queue_size: u16,
    /// Open the image with O_DIRECT (bypass the host page cache; writes reach the device
    /// before they are acknowledged, flushes still fdatasync).
    #[arg(long)]
    direct: bool,
    /// Host I/O engine.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    engine: EngineArg,
    /// Device id returned by VIRTIO_BLK_T_GET_ID (at most 20 bytes; default: the image's
    /// file name).
    #[arg(long, value_name = "ID")]
    serial: Option<String>,
    /// Threads per queue of the thread-pool engine.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pool_threads: u16,
    /// Test aid: with --engine threads, wait this long before each host operation (keeps
    /// requests in flight, to test stopping in the middle of them).
    #[arg(long, value_name = "MS", default_value_t = 0, hide = true)]
    debug_io_delay_ms: u64,
    /// Log debug messages (the rust-vmm crates' too).
    #[arg(long, short)]
    verbose: bool,
}

fn main() {
    let cli = Cli::parse();
    host_backend::log::init(cli.verbose);
    let opts = Options {
        socket: cli.socket,
        image: cli.image,
        read_only: cli.read_only,
        queues: cli.queues,
        queue_size: cli.queue_size,
        direct: cli.direct,
        engine: match cli.engine {
            EngineArg::Auto => EngineChoice::Auto,
            EngineArg::IoUring => EngineChoice::IoUring,
            EngineArg::Threads => EngineChoice::Threads,
        },
        serial: cli.serial,
        pool_threads: usize::from(cli.pool_threads),
        debug_io_delay: std::time::Duration::from_millis(cli.debug_io_delay_ms),
    };
    match server::run(&opts) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("tandem-backend: error: {e}");
            std::process::exit(1);
        }
    }
}
