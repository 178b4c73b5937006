//! The fuzz targets' logic, one module per target, so that the same code runs under
//! libFuzzer (`fuzz_targets/*.rs`, through `scripts/fuzz`) and as a plain test that replays
//! the committed corpus and regressions (`tests/replay.rs`, `cargo test` in this directory).
//!
//! Every target takes arbitrary bytes and must not panic (a panic is a crash), loop without
//! end, or allocate without bound, whatever the bytes. Beyond that, each one checks what it
//! can of the code's own promises (documented at each target).
//!
//! `seeds` builds the seed corpus (`cargo run --example gen_corpus`).
//!
//! The crate denies `unsafe_code`; only [`nbd_server`] allows it, for its one `mallopt` call
//! (glibc's allocator tunables, so that the memory each run allocates is not handed back to
//! the kernel between runs).

#![deny(unsafe_code)]

pub mod checkpoint;
pub mod guest_lines;
pub mod label;
pub mod mirror_ship;
pub mod mirror_stream;
pub mod nbd_handshake;
pub mod nbd_request;
#[allow(unsafe_code)]
pub mod nbd_server;
pub mod nbd_tls;
pub mod nvlog_open;
pub mod pair_region;
pub mod seeds;
pub mod tcp_peer;

/// A target's entry point.
pub type Target = fn(&[u8]);

/// The targets, by name (`fuzz_targets/<name>.rs`, `corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("nbd_handshake", nbd_handshake::run),
    ("nbd_request", nbd_request::run),
    ("nbd_server", nbd_server::run),
    ("nbd_tls", nbd_tls::run),
    ("nvlog_open", nvlog_open::run),
    ("checkpoint", checkpoint::run),
    ("label", label::run),
    ("guest_lines", guest_lines::run),
    ("mirror_ship", mirror_ship::run),
    ("mirror_stream", mirror_stream::run),
    ("pair_region", pair_region::run),
    ("tcp_peer", tcp_peer::run),
];

/// Reads fixed-size values off the front of the fuzzer's bytes; past the end, zeroes.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.take(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }
}

/// A small deterministic generator (SplitMix64): decides how a stream is cut into the
/// pieces "the network" delivers, from a seed the fuzzer chose.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A piece size: mostly small, sometimes large.
    pub fn piece(&mut self) -> usize {
        let r = self.next_u64();
        match r % 8 {
            0 => 1,
            1..=4 => 1 + (r >> 8) as usize % 32,
            5 | 6 => 1 + (r >> 8) as usize % 600,
            _ => 1 + (r >> 8) as usize % 20_000,
        }
    }
}
