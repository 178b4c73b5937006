//! The guest benchmark job's contract, host side: the job words `tandem bench blk` puts on
//! the guest command line and the `BENCH {json}` line the guest answers with.
//!
//! Both are defined once, in `tandem-formats`: the words by
//! [`tandem_formats::bench_job::JobSpec::words`] (which the guest's command-line parser reads
//! back), the result by [`tandem_formats::bench_result`] (the guest's writer and the field
//! names [`GuestBenchResult::parse`] reads). This module adds what the host needs around them:
//! clap and serde for the access pattern ([`RwMode`]), the block-size syntax ([`BlockSize`]),
//! how long a job runs ([`Amount`]), and the parsed result.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use tandem_formats::bench_job::{self, JobSpec, Rw};
use tandem_formats::bench_result::field;

/// The guest's I/O path for a job (`bench.path=`): [`bench_job::Path`].
pub type JobPath = bench_job::Path;

/// A job's access pattern (`bench.rw=`, fio's `rw=`): the formats crate's [`Rw`], with the
/// command line's names and help and the reports' JSON name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RwMode(pub Rw);

impl RwMode {
    /// Sequential reads.
    pub const READ: RwMode = RwMode(Rw::Read);
    /// Sequential writes.
    pub const WRITE: RwMode = RwMode(Rw::Write);
    /// Random reads.
    pub const RANDREAD: RwMode = RwMode(Rw::RandRead);
    /// Random writes.
    pub const RANDWRITE: RwMode = RwMode(Rw::RandWrite);
    /// Random mixed reads and writes.
    pub const RANDRW: RwMode = RwMode(Rw::RandRw);
    const ALL: [RwMode; 5] = [
        RwMode::READ,
        RwMode::WRITE,
        RwMode::RANDREAD,
        RwMode::RANDWRITE,
        RwMode::RANDRW,
    ];

    /// The guest's (and fio's) name for it.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// Whether the pattern writes.
    pub fn writes(self) -> bool {
        self.0.writes()
    }

    fn help(self) -> &'static str {
        match self.0 {
            Rw::Read => "Sequential reads",
            Rw::Write => "Sequential writes",
            Rw::RandRead => "Random reads",
            Rw::RandWrite => "Random writes",
            Rw::RandRw => "Random mixed reads and writes",
        }
    }
}

impl clap::ValueEnum for RwMode {
    fn value_variants<'a>() -> &'a [Self] {
        &RwMode::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.help()))
    }
}

impl fmt::Display for RwMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for RwMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Serialize a [`JobPath`] as its name (`hpdi`, `direct`).
pub fn serialize_path<S: Serializer>(p: &JobPath, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.name())
}

/// A block size in bytes: `4k`, `64K`, `1M`, or a plain number of bytes; a positive
/// multiple of 512.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct BlockSize(pub u32);

/// A block size that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid block size '{0}': expected a multiple of 512 bytes such as 512, 4k, 64k, 1M")]
pub struct BlockSizeError(String);

impl FromStr for BlockSize {
    type Err = BlockSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BlockSizeError(s.to_string());
        let t = s.trim();
        let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(end);
        let n: u64 = num.parse().map_err(|_| err())?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            _ => return Err(err()),
        };
        let bytes = n.checked_mul(mult).ok_or_else(err)?;
        if bytes == 0 || !bytes.is_multiple_of(512) || bytes > u64::from(u32::MAX) {
            return Err(err());
        }
        Ok(BlockSize(bytes as u32))
    }
}

impl fmt::Display for BlockSize {
    /// fio-style: `512`, `4k`, `1M`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b.is_multiple_of(1 << 20) {
            write!(f, "{}M", b >> 20)
        } else if b.is_multiple_of(1 << 10) {
            write!(f, "{}k", b >> 10)
        } else {
            write!(f, "{b}")
        }
    }
}

/// How long a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    /// This many I/Os (`bench.ops=`).
    Ops(u64),
    /// This long, in milliseconds (`bench.time_ms=`).
    TimeMs(u64),
}

impl fmt::Display for Amount {
    /// `2000 ops`, `500 ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Ops(n) => write!(f, "{n} ops"),
            Amount::TimeMs(t) => write!(f, "{t} ms"),
        }
    }
}

/// One job's parameters, from which [`job_spec`] makes the guest's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobParams<'a> {
    /// Device name (`bench=`).
    pub device: &'a str,
    /// Access pattern.
    pub rw: RwMode,
    /// Block size.
    pub bs: BlockSize,
    /// Queue depth.
    pub qd: u32,
    /// Ops or time.
    pub amount: Amount,
    /// HPDI or direct.
    pub path: JobPath,
    /// Bytes of the device the job touches from offset 0, in MiB (`None`: the guest's default).
    pub span_mib: Option<u64>,
    /// Write-then-read verification.
    pub verify: bool,
}

/// The guest's job for `p` (its command-line words are [`JobSpec::words`]); an error when a
/// value is beyond what the guest takes ([`bench_job::MAX_QD`], [`bench_job::MAX_BS`], a
/// device name of at most [`bench_job::MAX_NAME`] bytes).
pub fn job_spec(p: &JobParams) -> anyhow::Result<JobSpec> {
    let mut job = JobSpec::default();
    if !job.set_device(p.device) {
        bail!(
            "device name '{}': 1 to {} bytes",
            p.device,
            bench_job::MAX_NAME
        );
    }
    if p.bs.0 > bench_job::MAX_BS {
        bail!(
            "block size {}: the guest takes up to {}",
            p.bs,
            BlockSize(bench_job::MAX_BS)
        );
    }
    job.qd = u16::try_from(p.qd)
        .ok()
        .filter(|qd| (1..=bench_job::MAX_QD).contains(qd))
        .with_context(|| format!("queue depth {}: 1 to {}", p.qd, bench_job::MAX_QD))?;
    job.rw = p.rw.0;
    job.bs = p.bs.0;
    (job.ops, job.time_ms) = match p.amount {
        Amount::Ops(n) => (Some(n), None),
        Amount::TimeMs(t) => (None, Some(t)),
    };
    job.path = p.path;
    job.span = p.span_mib.map(|m| m << 20);
    job.verify = p.verify;
    Ok(job)
}

/// Latency percentiles reported by the guest (or measured by fio), in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// The guest's `BENCH {json}` object, read by the field names of
/// [`tandem_formats::bench_result::field`] (unknown fields are ignored, missing ones default,
/// a field of the wrong type is an error).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GuestBenchResult {
    /// Device the job ran on.
    pub device: String,
    /// `pci` or `mmio`.
    pub transport: String,
    /// Access pattern ([`Rw::name`]).
    pub rw: String,
    /// Block size in bytes.
    pub bs: u64,
    /// Queue depth the job used.
    pub qd: u32,
    /// I/Os completed.
    pub ops: u64,
    /// Job duration.
    pub seconds: f64,
    /// I/Os per second.
    pub iops: f64,
    /// Megabytes (10^6) per second.
    pub mbps: f64,
    /// Latency percentiles.
    pub lat_us: Latency,
    /// Result of write-then-read verification (`None`: not verified).
    pub verified: Option<bool>,
    /// Blocks that did not read back as written.
    pub verify_mismatches: u64,
    /// I/O errors.
    pub errors: u64,
    /// The first I/O error.
    pub first_error: Option<String>,
    /// Most requests in flight at once (the driver's own count).
    pub max_in_flight: u64,
    /// Payload bytes moved.
    pub bytes_moved: u64,
    /// `hpdi` or `direct` ([`JobPath::name`]).
    pub path: String,
    /// Set when the job failed.
    pub error: Option<String>,
}

/// The fields of one JSON object, typed on the way out.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get<T>(
        &self,
        key: &str,
        what: &str,
        conv: impl Fn(&'a Value) -> Option<T>,
    ) -> anyhow::Result<Option<T>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => conv(v)
                .map(Some)
                .with_context(|| format!("field {key}: expected {what}, found {v}")),
        }
    }

    fn string(&self, key: &str) -> anyhow::Result<Option<String>> {
        self.get(key, "a string", |v| v.as_str().map(str::to_string))
    }

    fn u64(&self, key: &str) -> anyhow::Result<u64> {
        Ok(self.get(key, "a count", Value::as_u64)?.unwrap_or(0))
    }

    fn f64(&self, key: &str) -> anyhow::Result<f64> {
        Ok(self.get(key, "a number", Value::as_f64)?.unwrap_or(0.0))
    }

    fn latency(&self, key: &str) -> anyhow::Result<Latency> {
        let Some(obj) = self.get(key, "an object", Value::as_object)? else {
            return Ok(Latency::default());
        };
        let f = Fields(obj);
        Ok(Latency {
            p50: f.f64(field::P50)?,
            p99: f.f64(field::P99)?,
            p999: f.f64(field::P999)?,
            max: f.f64(field::MAX)?,
        })
    }
}

impl GuestBenchResult {
    /// Parse the JSON text after `BENCH `, returning the typed result and the raw object.
    pub fn parse(json: &str) -> anyhow::Result<(GuestBenchResult, Value)> {
        let raw: Value = serde_json::from_str(json)
            .with_context(|| format!("BENCH line is not JSON: {json}"))?;
        let Some(obj) = raw.as_object() else {
            bail!("BENCH line is not a JSON object: {json}");
        };
        let result = GuestBenchResult::from_fields(&Fields(obj))
            .with_context(|| format!("BENCH line does not match the contract: {json}"))?;
        Ok((result, raw))
    }

    fn from_fields(f: &Fields) -> anyhow::Result<GuestBenchResult> {
        Ok(GuestBenchResult {
            device: f.string(field::DEVICE)?.unwrap_or_default(),
            transport: f.string(field::TRANSPORT)?.unwrap_or_default(),
            rw: f.string(field::RW)?.unwrap_or_default(),
            bs: f.u64(field::BS)?,
            qd: u32::try_from(f.u64(field::QD)?).context("field qd: out of range")?,
            ops: f.u64(field::OPS)?,
            seconds: f.f64(field::SECONDS)?,
            iops: f.f64(field::IOPS)?,
            mbps: f.f64(field::MBPS)?,
            lat_us: f.latency(field::LAT_US)?,
            verified: f.get(field::VERIFIED, "true, false or null", Value::as_bool)?,
            verify_mismatches: f.u64(field::VERIFY_MISMATCHES)?,
            errors: f.u64(field::ERRORS)?,
            first_error: f.string(field::FIRST_ERROR)?,
            max_in_flight: f.u64(field::MAX_IN_FLIGHT)?,
            bytes_moved: f.u64(field::BYTES_MOVED)?,
            path: f.string(field::PATH)?.unwrap_or_default(),
            error: f.string(field::ERROR)?,
        })
    }

    /// The access pattern, when it is one the job words know.
    pub fn rw_mode(&self) -> Option<RwMode> {
        Rw::parse(&self.rw).map(RwMode)
    }

    /// The I/O path, when it is one the job words know.
    pub fn job_path(&self) -> Option<JobPath> {
        JobPath::parse(&self.path)
    }

    /// Why this result is a failed job, if it is one.
    pub fn failure(&self) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(format!("guest reported: {e}"));
        }
        if self.errors > 0 {
            return Some(format!("{} I/O errors", self.errors));
        }
        if self.verified == Some(false) {
            return Some("data verification failed".into());
        }
        if !(self.iops.is_finite() && self.iops > 0.0) {
            return Some(format!("no throughput reported (iops={})", self.iops));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::ConsoleEvent;
    use tandem_formats::bench_result::{self, BenchLine};

    const SAMPLE: &str = r#"{"device":"blk0","transport":"pci","rw":"randread","bs":4096,"qd":32,"ops":20000,"seconds":1.234,"iops":16207.1,"mbps":66.4,"lat_us":{"p50":1800,"p99":4100,"p999":6000,"max":9000},"verified":null,"errors":0,"max_in_flight":32,"bytes_moved":81920000,"bytes_copied":0,"path":"hpdi","future_field":[1,2]}"#;

    #[test]
    fn parses_the_contract_line() {
        let line = format!("BENCH {SAMPLE}");
        let ConsoleEvent::Bench(json) = ConsoleEvent::parse(&line) else {
            panic!("not a BENCH event")
        };
        let (r, raw) = GuestBenchResult::parse(&json).unwrap();
        assert_eq!(r.device, "blk0");
        assert_eq!(r.transport, "pci");
        assert_eq!(r.rw_mode(), Some(RwMode::RANDREAD));
        assert_eq!((r.bs, r.qd, r.ops), (4096, 32, 20000));
        assert_eq!(r.iops, 16207.1);
        assert_eq!(r.mbps, 66.4);
        assert_eq!(
            r.lat_us,
            Latency {
                p50: 1800.0,
                p99: 4100.0,
                p999: 6000.0,
                max: 9000.0
            }
        );
        assert_eq!(r.verified, None);
        assert_eq!(r.max_in_flight, 32);
        assert_eq!(r.bytes_moved, 81_920_000);
        assert_eq!(r.job_path(), Some(JobPath::Hpdi));
        assert_eq!(r.failure(), None);
        // Unknown fields survive in the raw object.
        assert_eq!(raw["future_field"][1], 2);
    }

    #[test]
    fn failed_jobs_are_failures() {
        let (r, _) =
            GuestBenchResult::parse(r#"{"error":"device blk9 not found","device":"blk9"}"#)
                .unwrap();
        assert_eq!(
            r.failure().as_deref(),
            Some("guest reported: device blk9 not found")
        );
        let (r, _) = GuestBenchResult::parse(r#"{"iops":10,"verified":false}"#).unwrap();
        assert_eq!(r.failure().as_deref(), Some("data verification failed"));
        let (r, _) = GuestBenchResult::parse(r#"{"iops":10,"errors":3}"#).unwrap();
        assert_eq!(r.failure().as_deref(), Some("3 I/O errors"));
        let (r, _) = GuestBenchResult::parse(r#"{"iops":0}"#).unwrap();
        assert!(r.failure().unwrap().contains("no throughput"));
        let (r, _) = GuestBenchResult::parse(r#"{"iops":5,"verified":true}"#).unwrap();
        assert_eq!(r.failure(), None);
        assert!(GuestBenchResult::parse("[1]").is_err());
        assert!(GuestBenchResult::parse("{not json").is_err());
        assert!(GuestBenchResult::parse(r#"{"iops":"fast"}"#).is_err());
        assert!(GuestBenchResult::parse(r#"{"lat_us":{"p99":"slow"}}"#).is_err());
    }

    /// What the guest's writer (the formats crate's) prints, the host reads back equal.
    #[test]
    fn the_guest_writer_round_trips() {
        let mut job = JobSpec::default();
        assert!(job.set_device("blk0"));
        (job.rw, job.qd, job.path) = (Rw::RandRw, 8, JobPath::Direct);
        let line = BenchLine {
            job: &job,
            transport: "mmio",
            ops: 1000,
            seconds: 0.5,
            bytes: 1000 * 4096,
            lat_us: bench_result::Latency {
                p50: 10,
                p99: 20,
                p999: 30,
                max: 40,
            },
            verified: Some(true),
            mismatches: 0,
            errors: 2,
            first_error: Some("device error \"5\"".into()),
            max_in_flight: 8,
            bytes_moved: 4_096_000,
        };
        let text = format!("{}{}", tandem_formats::console::BENCH_PREFIX, line.json());
        let ConsoleEvent::Bench(json) = ConsoleEvent::parse(&text) else {
            panic!("not a BENCH event: {text}")
        };
        let (r, raw) = GuestBenchResult::parse(&json).unwrap();
        let want = GuestBenchResult {
            device: "blk0".into(),
            transport: "mmio".into(),
            rw: "randrw".into(),
            bs: 4096,
            qd: 8,
            ops: 1000,
            seconds: 0.5,
            iops: 2000.0,
            mbps: 8.19,
            lat_us: Latency {
                p50: 10.0,
                p99: 20.0,
                p999: 30.0,
                max: 40.0,
            },
            verified: Some(true),
            verify_mismatches: 0,
            errors: 2,
            first_error: Some("device error \"5\"".into()),
            max_in_flight: 8,
            bytes_moved: 4_096_000,
            path: "direct".into(),
            error: None,
        };
        assert_eq!(r, want);
        assert_eq!(
            (r.rw_mode(), r.job_path()),
            (Some(RwMode::RANDRW), Some(JobPath::Direct))
        );
        // Every key the guest writes is one the host reads, and the host's own report of
        // the result uses the same names.
        let written: Vec<&String> = raw.as_object().unwrap().keys().collect();
        assert!(
            written.iter().all(|k| field::RESULT.contains(&k.as_str())),
            "{written:?}"
        );
        let reported = serde_json::to_value(&r).unwrap();
        for k in reported.as_object().unwrap().keys() {
            assert!(field::RESULT.contains(&k.as_str()), "{k}");
        }

        let (r, _) = GuestBenchResult::parse(&bench_result::error_json(&job, "no blk0")).unwrap();
        assert_eq!(r.failure().as_deref(), Some("guest reported: no blk0"));
        assert_eq!((r.bs, r.qd, r.rw_mode()), (4096, 8, Some(RwMode::RANDRW)));
    }

    #[test]
    fn block_sizes() {
        assert_eq!("4k".parse(), Ok(BlockSize(4096)));
        assert_eq!("4K".parse(), Ok(BlockSize(4096)));
        assert_eq!("1M".parse(), Ok(BlockSize(1 << 20)));
        assert_eq!("512".parse(), Ok(BlockSize(512)));
        assert_eq!("4096".parse(), Ok(BlockSize(4096)));
        assert_eq!("64KiB".parse(), Ok(BlockSize(65536)));
        for bad in ["", "0", "100", "4x", "k", "-4k", "8192M"] {
            assert!(bad.parse::<BlockSize>().is_err(), "{bad}");
        }
        assert_eq!(BlockSize(4096).to_string(), "4k");
        assert_eq!(BlockSize(1 << 20).to_string(), "1M");
        assert_eq!(BlockSize(1536).to_string(), "1536");
        assert_eq!(BlockSize(512).to_string(), "512");
    }

    /// The host's words are the formats crate's, and each parses with its parsers.
    #[test]
    fn job_words() {
        let p = JobParams {
            device: "blk0",
            rw: RwMode::RANDREAD,
            bs: BlockSize(4096),
            qd: 32,
            amount: Amount::Ops(20000),
            path: JobPath::Hpdi,
            span_mib: None,
            verify: false,
        };
        let job = job_spec(&p).unwrap();
        assert_eq!(
            job.words(),
            [
                "bench=blk0",
                "bench.rw=randread",
                "bench.bs=4096",
                "bench.qd=32",
                "bench.ops=20000",
                "bench.path=hpdi"
            ]
        );
        let p = JobParams {
            rw: RwMode::RANDRW,
            amount: Amount::TimeMs(2000),
            path: JobPath::Direct,
            span_mib: Some(256),
            verify: true,
            ..p
        };
        let words = job_spec(&p).unwrap().words();
        assert_eq!(
            words[1..],
            [
                "bench.rw=randrw",
                "bench.bs=4096",
                "bench.qd=32",
                "bench.time_ms=2000",
                "bench.path=direct",
                "bench.span_mib=256",
                "bench.verify=1"
            ]
        );
        for w in &words {
            let (key, value) = w.split_once('=').unwrap();
            match key {
                "bench.rw" => assert_eq!(Rw::parse(value), Some(Rw::RandRw)),
                "bench.path" => assert_eq!(JobPath::parse(value), Some(JobPath::Direct)),
                "bench.qd" => assert!(value.parse::<u16>().unwrap() <= bench_job::MAX_QD),
                "bench.bs" => assert!(value.parse::<u32>().unwrap() <= bench_job::MAX_BS),
                _ => {}
            }
        }
        for mode in RwMode::ALL {
            assert_eq!(Rw::parse(&mode.to_string()), Some(mode.0));
        }
        assert!(job_spec(&JobParams { qd: 0, ..p }).is_err());
        assert!(job_spec(&JobParams { qd: 2000, ..p }).is_err());
        assert!(job_spec(&JobParams {
            bs: BlockSize(8 << 20),
            ..p
        })
        .is_err());
    }
}
