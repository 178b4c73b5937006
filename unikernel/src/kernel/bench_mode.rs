//! `bench=DEVICE`: run the block benchmark job from the command line on a registered HPDI
//! device, print one `BENCH {json}` line, and power off (clean exit only when the job ran
//! without I/O errors and, if asked, verified).

use alloc::boxed::Box;

use hpdi::BufferPool;
use log::info;
use tandem_formats::console::BENCH_PREFIX;
use unikernel::bench::{self, JobSpec};
use unikernel::exit::GuestExit;
use unikernel::units::Bytes;

use crate::discovery::Devices;
use crate::dma::FrameRegion;

fn fail(job: &JobSpec, msg: &str) -> ! {
    crate::console::line(format_args!(
        "{BENCH_PREFIX}{}",
        bench::error_json(job, msg)
    ));
    crate::exit::exit(GuestExit::Failure)
}

pub fn run(devices: &mut Devices, job: &JobSpec) -> ! {
    let name = job.device().unwrap_or("?");
    let transport = devices
        .transports
        .iter()
        .find(|(n, _)| n == name)
        .map_or("?", |(_, t)| *t);
    let Ok(dev) = devices.registry.open(name) else {
        fail(job, &alloc::format!("no block device named {name}"));
    };
    let buf_size = job.bs.next_power_of_two().max(4096) as usize;
    let bytes = job.buffer_bytes();
    let Some(mem) = FrameRegion::alloc(bytes as usize) else {
        let st = crate::mem::stats();
        fail(
            job,
            &alloc::format!(
                "qd x bs needs {} of DMA buffers; {} of {} free: lower bench.qd or give the guest more memory",
                Bytes(bytes),
                Bytes(st.dma_total - st.dma_used),
                Bytes(st.dma_total)
            ),
        );
    };
    let mut pool = match BufferPool::new(Box::new(mem), buf_size) {
        Ok(p) => p,
        Err(e) => fail(job, &alloc::format!("buffer pool: {e}")),
    };
    info!(
        "bench: {} bs={} qd={} on {name} ({transport}) via {}{}",
        job.rw.name(),
        job.bs,
        job.qd,
        job.path.name(),
        if job.verify { ", verified" } else { "" }
    );
    match bench::run(dev, &mut pool, job, &crate::time::now_ns) {
        Ok(r) => {
            crate::console::line(format_args!(
                "{BENCH_PREFIX}{}",
                bench::json(job, transport, &r)
            ));
            let ok = r.errors == 0 && r.verified != Some(false);
            crate::exit::exit(if ok {
                GuestExit::Clean
            } else {
                GuestExit::Failure
            })
        }
        Err(bench::BenchError::Setup(msg)) => fail(job, &msg),
    }
}
