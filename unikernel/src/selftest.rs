//! A block-device self-test over the HPDI: every operation the device advertises, checked
//! by reading back, plus the error paths. Runs on the host against the RAM disk and in the
//! guest (`debug.blkops=blk0`) against real virtio-blk.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hpdi::{BufId, BufferPool, Completion, Device, Error, Op, QueuePair, Request, Segment, SgList};

const CHUNK: usize = 4096;
const CHUNKS: usize = 16; // 64 KiB

/// The device under test with its pool, queue and the test's buffers.
struct Tester<'a> {
    dev: &'a mut dyn Device,
    pool: &'a mut BufferPool,
    q: QueuePair,
    bufs: Vec<BufId>,
}

impl Tester<'_> {
    /// Runs one request to completion (bounded: a device that never completes fails).
    fn raw(&mut self, req: Request) -> Result<u32, Error> {
        self.q.submit(req)?;
        let mut done: Vec<Completion> = Vec::new();
        for _ in 0..10_000_000u32 {
            self.q.poll(self.dev, self.pool);
            self.q.reap(&mut done, 1);
            if let Some(c) = done.pop() {
                return c.result;
            }
        }
        Err(Error::Device { status: u32::MAX })
    }

    fn step(&mut self, what: &str, req: Request) -> Result<u32, String> {
        self.raw(req).map_err(|e| format!("{what}: {e}"))
    }

    fn sg(&self, range: core::ops::Range<usize>) -> SgList {
        let mut l = SgList::new();
        for &b in &self.bufs[range] {
            let _ = l.push(Segment::whole(b, CHUNK));
        }
        l
    }

    /// Reads every chunk back and compares it with `want(chunk)`.
    fn check(&mut self, want: impl Fn(usize) -> u8) -> Result<(), String> {
        for i in 0..CHUNKS {
            let b = self.bufs[i];
            self.pool.buf_mut(b).map_err(|e| format!("{e}"))?.fill(0x55);
            let one = SgList::one(Segment::whole(b, CHUNK));
            self.step("read back", Request::read((i * CHUNK) as u64, one, 2))?;
            let got = self.pool.buf(b).map_err(|e| format!("{e}"))?;
            if let Some(x) = got.iter().position(|&v| v != want(i)) {
                return Err(format!(
                    "byte {x} of chunk {i} is {:#x}, expected {:#x}",
                    got[x],
                    want(i)
                ));
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<String, String> {
        let caps = self.dev.capabilities();
        let mut checked = Vec::new();
        // A FUA write of 64 KiB in as few requests as the segment limit allows, read back.
        for i in 0..CHUNKS {
            let b = self.bufs[i];
            self.pool
                .buf_mut(b)
                .map_err(|e| format!("{e}"))?
                .fill(0xa0 + i as u8);
        }
        let max = usize::from(caps.max_segments).clamp(1, CHUNKS);
        for start in (0..CHUNKS).step_by(max) {
            let sg = self.sg(start..(start + max).min(CHUNKS));
            self.step(
                "fua write",
                Request::write((start * CHUNK) as u64, sg, 1).with_fua(),
            )?;
        }
        self.check(|i| 0xa0 + i as u8)?;
        checked.push("fua-write+read");
        let half = (CHUNK * CHUNKS / 2) as u64;
        if caps.ops.contains(Op::WriteZeroes) {
            self.step("write-zeroes", Request::write_zeroes(0, half, 3))?;
            self.check(|i| if i < CHUNKS / 2 { 0 } else { 0xa0 + i as u8 })?;
            checked.push("write-zeroes");
        }
        if caps.ops.contains(Op::Discard) {
            self.step("discard", Request::discard(half, half, 4))?;
            checked.push("discard");
        }
        self.step("flush", Request::flush(5))?;
        checked.push("flush");
        // Error paths: refused with the right reason, and the queue goes on.
        let one = SgList::one(Segment::whole(self.bufs[0], CHUNK));
        match self.raw(Request::read(caps.capacity, one, 6)) {
            Err(Error::OutOfRange { .. }) => {}
            other => return Err(format!("read past the end gave {other:?}")),
        }
        match self.raw(Request::read(1, one, 7)) {
            Err(Error::Misaligned { .. }) => {}
            other => return Err(format!("misaligned read gave {other:?}")),
        }
        self.step("read after errors", Request::read(0, one, 8))?;
        checked.push("errors");
        Ok(checked.join(","))
    }
}

/// Runs the test; returns what was checked, or the first failure.
pub fn block_ops(dev: &mut dyn Device, pool: &mut BufferPool) -> Result<String, String> {
    let caps = dev.capabilities();
    if caps.capacity < (CHUNK * CHUNKS) as u64 || caps.read_only {
        return Err("needs a writable device of at least 64 KiB".into());
    }
    let q = QueuePair::new(4).map_err(|e| format!("{e}"))?;
    let mut t = Tester {
        dev,
        pool,
        q,
        bufs: Vec::new(),
    };
    let result = (0..CHUNKS)
        .try_for_each(|_| {
            let b = t.pool.alloc().map_err(|e| format!("pool: {e}"))?;
            t.bufs.push(b);
            Ok::<(), String>(())
        })
        .and_then(|()| t.run());
    for b in core::mem::take(&mut t.bufs) {
        let _ = t.pool.free(b);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use frontend_drivers::ramdisk::RamDisk;

    #[test]
    fn passes_on_a_good_disk_and_catches_a_bad_one() {
        let mut pool = BufferPool::host(32, 4096).unwrap();
        let mut disk = RamDisk::new(1 << 20, 8);
        assert_eq!(
            block_ops(&mut disk, &mut pool).unwrap(),
            "fua-write+read,write-zeroes,discard,flush,errors"
        );
        assert_eq!(pool.available(), 32);
        disk.fail_with = Some(1);
        let err = block_ops(&mut disk, &mut pool).unwrap_err();
        assert!(err.contains("fua write"), "{err}");
        assert_eq!(pool.available(), 32);
    }
}
