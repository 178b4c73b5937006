//! The guest block benchmark's job: the `bench.*` command-line words the host writes
//! (`tandem bench blk`) and the guest parses, and their limits.
//!
//! The guest runs the job (`unikernel::bench`) and reports one `BENCH {json}` console line.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rw {
    Read,
    Write,
    RandRead,
    RandWrite,
    RandRw,
}

impl Rw {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Through the submission and completion rings.
    Hpdi,
    /// Calling the driver's `start`/`complete` directly (what the rings cost, by difference).
    Direct,
}

impl Path {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSpec {
    name: [u8; MAX_NAME],
    name_len: u8,
    pub rw: Rw,
    pub bs: u32,
    pub qd: u16,
    /// Operations to complete; when `None`, run for `time_ms` (default 10 000 ops).
    pub ops: Option<u64>,
    pub time_ms: Option<u64>,
    pub path: Path,
    /// Bytes of the device the job touches, from offset 0 (default: all of it).
    pub span: Option<u64>,
    pub verify: bool,
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
            seed: 0x7a6d_656e_6174,
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
}
