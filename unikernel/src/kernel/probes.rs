//! Debug probes run after init.
//!
//! `debug.blkops=DEVICE`: the block self-test (`unikernel::selftest`) on a real disk.
//!
//! `debug.nvram=stamp`: read the first bytes of `nvram0` through the HPDI, then store and
//! persist a boot counter there. Tests use it to show the region is real shared memory that
//! outlives the guest (the host reads the backing file; the next boot finds the stamp).

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use hpdi::{BufferPool, Completion, Op, QueuePair, Request, Segment, SgList};
use log::{info, warn};

use crate::discovery::Devices;
use crate::dma::FrameRegion;

const STAMP: &str = "TANDEM-NVRAM boot=";
const LEN: u32 = 64;

pub fn stamp(devices: &mut Devices) {
    let Ok(dev) = devices.registry.open("nvram0") else {
        warn!("debug.nvram: no nvram0 device (start QEMU with an ivshmem-plain device)");
        return;
    };
    let Some(mem) = FrameRegion::alloc(4096) else {
        warn!("debug.nvram: no DMA memory");
        return;
    };
    let Ok(mut pool) = BufferPool::new(Box::new(mem), 4096) else {
        return;
    };
    let (Ok(buf), Ok(mut q)) = (pool.alloc(), QueuePair::new(4)) else {
        return;
    };
    let seg = Segment {
        buf,
        offset: 0,
        len: LEN,
    };
    let mut run = |q: &mut QueuePair, pool: &mut BufferPool, reqs: &[Request]| -> Vec<Completion> {
        for r in reqs {
            let _ = q.submit(*r);
        }
        let mut done = Vec::new();
        for _ in 0..1000 {
            if done.len() == reqs.len() {
                break;
            }
            q.poll(dev, pool);
            q.reap(&mut done, 8);
        }
        done
    };
    let load = Request {
        op: Op::Load,
        ..Request::read(0, SgList::one(seg), 1)
    };
    if run(&mut q, &mut pool, &[load]).first().map(|c| c.result) != Some(Ok(LEN)) {
        warn!("debug.nvram: load from nvram0 failed");
        return;
    }
    let bytes = pool.slice(&seg).unwrap_or_default();
    let found: String = bytes
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    let boots = found
        .strip_prefix(STAMP)
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let new = alloc::format!("{STAMP}{}", boots + 1);
    if let Ok(b) = pool.slice_mut(&seg) {
        b.fill(0);
        b[..new.len()].copy_from_slice(new.as_bytes());
    }
    let store = Request {
        op: Op::Store,
        ..Request::write(0, SgList::one(seg), 2)
    };
    let persist = Request {
        op: Op::Persist,
        ..Request::flush(3)
    };
    let done = run(&mut q, &mut pool, &[store, persist]);
    if done.iter().all(|c| c.result.is_ok()) && done.len() == 2 {
        info!("nvram: nvram0 found \"{found}\"; stamped \"{new}\"");
    } else {
        warn!("debug.nvram: store to nvram0 failed: {done:?}");
    }
}

pub fn blkops(devices: &mut Devices, name: &str) {
    let Ok(dev) = devices.registry.open(name) else {
        warn!("selftest: {name} FAILED: no such device");
        return;
    };
    let Some(mem) = FrameRegion::alloc(32 * 4096) else {
        warn!("selftest: {name} FAILED: no DMA memory");
        return;
    };
    let Ok(mut pool) = BufferPool::new(Box::new(mem), 4096) else {
        return;
    };
    match unikernel::selftest::block_ops(dev, &mut pool) {
        Ok(checked) => info!("selftest: {name} ok ({checked})"),
        Err(e) => warn!("selftest: {name} FAILED: {e}"),
    }
}
