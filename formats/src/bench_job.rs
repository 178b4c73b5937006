//! The guest block benchmark's job: the `bench.*` command-line words the host writes
//! (`tandem bench blk`, [`JobSpec::words`]) and the guest parses (`crate::cmdline`), and
//! their limits.
//!
//! The guest runs the job (`unikernel::bench`) and reports one `BENCH {json}` console line
//! ([`crate::bench_result`]).

use alloc::string::String;
use alloc::vec::Vec;

use crate::cmdline::{key, word};

/// The access pattern (`bench.rw=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rw {
    Read,
    Write,
    RandRead,
    RandWrite,
    RandRw,
}

impl Rw {
    /// Every pattern, in the order the host lists them.
    pub const ALL: [Rw; 5] = [Rw::Read, Rw::Write, Rw::RandRead, Rw::RandWrite, Rw::RandRw];

    /// The pattern named `s` (its [`Rw::name`]).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Rw::Read,
            "write" => Rw::Write,
            "randread" => Rw::RandRead,
            "randwrite" => Rw::RandWrite,
            "randrw" => Rw::RandRw,
            _ => return None,
        })
    }

    /// The word's value.
    pub fn name(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
            Rw::RandRw => "randrw",
        }
    }

    /// Whether offsets are drawn at random.
    pub fn random(self) -> bool {
        matches!(self, Rw::RandRead | Rw::RandWrite | Rw::RandRw)
    }

    /// Whether the job writes.
    pub fn writes(self) -> bool {
        matches!(self, Rw::Write | Rw::RandWrite | Rw::RandRw)
    }
}

/// The guest I/O path the job takes (`bench.path=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Path {
    /// Through the submission and completion rings.
    Hpdi,
    /// Calling the driver's `start`/`complete` directly (what the rings cost, by difference).
    Direct,
}

impl Path {
    /// The path named `s` (its [`Path::name`]).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "hpdi" => Path::Hpdi,
            "direct" => Path::Direct,
            _ => return None,
        })
    }

    /// The word's value.
    pub fn name(self) -> &'static str {
        match self {
            Path::Hpdi => "hpdi",
            Path::Direct => "direct",
        }
    }
}

/// Longest device name in a job.
pub const MAX_NAME: usize = 16;
/// Most requests a job keeps in flight.
pub const MAX_QD: u16 = 1024;
/// Largest block size of a job.
pub const MAX_BS: u32 = 4 << 20;

/// The seed a job uses unless `bench.seed=` says otherwise.
pub const DEFAULT_SEED: u64 = 0x7a6d_656e_6174;

/// One job, as the guest's `bench.*` words describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSpec {
    name: [u8; MAX_NAME],
    name_len: u8,
    /// Access pattern.
    pub rw: Rw,
    /// Block size in bytes.
    pub bs: u32,
    /// Requests kept in flight.
    pub qd: u16,
    /// Operations to complete; when `None`, run for `time_ms` (default 10 000 ops).
    pub ops: Option<u64>,
    /// Milliseconds to run for (when `ops` is `None`).
    pub time_ms: Option<u64>,
    /// HPDI or direct.
    pub path: Path,
    /// Bytes of the device the job touches, from offset 0 (default: all of it).
    pub span: Option<u64>,
    /// Write-then-read verification.
    pub verify: bool,
    /// Seed of the random offsets and the verification stamps.
    pub seed: u64,
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            name: [0; MAX_NAME],
            name_len: 0,
            rw: Rw::RandRead,
            bs: 4096,
            qd: 1,
            ops: None,
            time_ms: None,
            path: Path::Hpdi,
            span: None,
            verify: false,
            seed: DEFAULT_SEED,
        }
    }
}

impl JobSpec {
    /// Sets the target device; false if the name is too long or empty.
    pub fn set_device(&mut self, name: &str) -> bool {
        if name.is_empty() || name.len() > MAX_NAME {
            return false;
        }
        self.name[..name.len()].copy_from_slice(name.as_bytes());
        self.name_len = name.len() as u8;
        true
    }

    /// The target device, once set.
    pub fn device(&self) -> Option<&str> {
        core::str::from_utf8(&self.name[..usize::from(self.name_len)])
            .ok()
            .filter(|s| !s.is_empty())
    }

    /// Bytes of DMA buffers the job needs: one buffer per request in flight.
    pub fn buffer_bytes(&self) -> u64 {
        u64::from(self.qd) * u64::from(self.bs.next_power_of_two().max(4096))
    }

    /// Operations to run before stopping (`u64::MAX` for a timed job).
    pub fn ops_limit(&self) -> u64 {
        match (self.ops, self.time_ms) {
            (Some(n), _) => n,
            (None, Some(_)) => u64::MAX,
            (None, None) => 10_000,
        }
    }

    /// The guest command-line words that describe this job (what `crate::cmdline` parses
    /// back into an equal job): `bench=DEVICE bench.rw=RW bench.bs=BS bench.qd=QD`, then
    /// `bench.ops=N` or `bench.time_ms=MS`, `bench.path=PATH`, and only where they differ
    /// from the defaults `bench.span_mib=M` (a span in whole MiB), `bench.verify=1` and
    /// `bench.seed=N`.
    pub fn words(&self) -> Vec<String> {
        let mut w = Vec::with_capacity(9);
        w.push(word(key::BENCH, self.device().unwrap_or_default()));
        w.push(word(key::BENCH_RW, self.rw.name()));
        w.push(word(key::BENCH_BS, self.bs));
        w.push(word(key::BENCH_QD, self.qd));
        if let Some(n) = self.ops {
            w.push(word(key::BENCH_OPS, n));
        }
        if let Some(t) = self.time_ms {
            w.push(word(key::BENCH_TIME_MS, t));
        }
        w.push(word(key::BENCH_PATH, self.path.name()));
        if let Some(span) = self.span {
            w.push(word(key::BENCH_SPAN_MIB, span >> 20));
        }
        if self.verify {
            w.push(word(key::BENCH_VERIFY, 1));
        }
        if self.seed != DEFAULT_SEED {
            w.push(word(key::BENCH_SEED, self.seed));
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(words: &[String]) -> JobSpec {
        let line = words.join(" ");
        crate::cmdline::parse(&line, |issue| panic!("{line}: {issue:?}")).bench
    }

    #[test]
    fn words_parse_back_to_the_same_job() {
        let mut job = JobSpec::default();
        assert!(job.set_device("blk0"));
        job.ops = Some(20_000);
        assert_eq!(
            job.words(),
            [
                "bench=blk0",
                "bench.rw=randread",
                "bench.bs=4096",
                "bench.qd=1",
                "bench.ops=20000",
                "bench.path=hpdi"
            ]
        );
        assert_eq!(parsed(&job.words()), job);
        for rw in Rw::ALL {
            for path in [Path::Hpdi, Path::Direct] {
                let j = JobSpec {
                    rw,
                    path,
                    bs: 64 << 10,
                    qd: MAX_QD,
                    ops: None,
                    time_ms: Some(2000),
                    span: Some(256 << 20),
                    verify: true,
                    seed: 7,
                    ..job
                };
                assert_eq!(parsed(&j.words()), j, "{:?}", j.words());
                assert_eq!(Rw::parse(rw.name()), Some(rw));
                assert_eq!(Path::parse(path.name()), Some(path));
            }
        }
        assert_eq!(Rw::parse("sideways"), None);
        assert_eq!(Path::parse("both"), None);
    }
}
