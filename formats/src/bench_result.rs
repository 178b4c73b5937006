//! The guest block benchmark's result: the one `BENCH {json}` console line a job prints
//! ([`crate::console::BENCH_PREFIX`], then the object)
//! (`bench=DEVICE`, see [`crate::bench_job`]), written by the guest with [`BenchLine::json`]
//! or [`error_json`] and read by the host (`tandem bench blk`) by the names in [`field`].
//!
//! A job that ran:
//!
//! `{"device":"blk0","transport":"pci","rw":"randread","bs":4096,"qd":32,"ops":20000,
//! "seconds":1.234567,"iops":16207.1,"mbps":66.38,"lat_us":{"p50":1800,"p99":4100,
//! "p999":6000,"max":9000},"verified":null,"verify_mismatches":0,"errors":0,
//! "first_error":null,"max_in_flight":32,"bytes_moved":81920000,"path":"hpdi"}`
//!
//! A job that could not run: `{"error":"...","device":"blk0","rw":"randread","bs":4096,
//! "qd":32,"path":"hpdi"}`. Hand-written JSON (no serde: the crate is `no_std` with only
//! format-level dependencies); strings are escaped as JSON requires.

use alloc::string::String;
use core::fmt::{self, Write};

use crate::bench_job::JobSpec;

/// The JSON keys, as the guest writes them and the host reads them.
pub mod field {
    /// Device the job ran on (`bench=`).
    pub const DEVICE: &str = "device";
    /// How the device is attached (`pci`, `mmio`, ...).
    pub const TRANSPORT: &str = "transport";
    /// Access pattern ([`crate::bench_job::Rw::name`]).
    pub const RW: &str = "rw";
    /// Block size in bytes.
    pub const BS: &str = "bs";
    /// Queue depth the job used.
    pub const QD: &str = "qd";
    /// I/Os completed.
    pub const OPS: &str = "ops";
    /// Job duration in seconds.
    pub const SECONDS: &str = "seconds";
    /// I/Os per second.
    pub const IOPS: &str = "iops";
    /// Megabytes (10^6) per second.
    pub const MBPS: &str = "mbps";
    /// The latency object (microseconds): [`P50`], [`P99`], [`P999`], [`MAX`].
    pub const LAT_US: &str = "lat_us";
    /// Median latency, in [`LAT_US`].
    pub const P50: &str = "p50";
    /// 99th percentile, in [`LAT_US`].
    pub const P99: &str = "p99";
    /// 99.9th percentile, in [`LAT_US`].
    pub const P999: &str = "p999";
    /// Maximum, in [`LAT_US`].
    pub const MAX: &str = "max";
    /// Write-then-read verification: `true`, `false` or `null` (not verified).
    pub const VERIFIED: &str = "verified";
    /// Blocks that did not read back as written.
    pub const VERIFY_MISMATCHES: &str = "verify_mismatches";
    /// I/O errors.
    pub const ERRORS: &str = "errors";
    /// The first I/O error, or `null`.
    pub const FIRST_ERROR: &str = "first_error";
    /// Most requests in flight at once (the driver's own count).
    pub const MAX_IN_FLIGHT: &str = "max_in_flight";
    /// Payload bytes the driver moved.
    pub const BYTES_MOVED: &str = "bytes_moved";
    /// Guest I/O path ([`crate::bench_job::Path::name`]).
    pub const PATH: &str = "path";
    /// Why the job could not run (only in an error line).
    pub const ERROR: &str = "error";

    /// Every key of a job that ran, in the order the guest writes them (the latency keys
    /// are inside [`LAT_US`]).
    pub const RESULT: [&str; 18] = [
        DEVICE,
        TRANSPORT,
        RW,
        BS,
        QD,
        OPS,
        SECONDS,
        IOPS,
        MBPS,
        LAT_US,
        VERIFIED,
        VERIFY_MISMATCHES,
        ERRORS,
        FIRST_ERROR,
        MAX_IN_FLIGHT,
        BYTES_MOVED,
        PATH,
        ERROR,
    ];
}

/// Latency percentiles and maximum, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
}

/// Everything one `BENCH` line of a job that ran says.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchLine<'a> {
    /// The job (device, rw, bs, qd and path are reported from it).
    pub job: &'a JobSpec,
    /// How the device is attached.
    pub transport: &'a str,
    /// I/Os completed.
    pub ops: u64,
    /// Seconds the job ran.
    pub seconds: f64,
    /// Payload bytes of the completed I/Os.
    pub bytes: u64,
    /// Latencies.
    pub lat_us: Latency,
    /// Verification result (`None`: not verified).
    pub verified: Option<bool>,
    /// Blocks that failed verification.
    pub mismatches: u64,
    /// I/O errors.
    pub errors: u64,
    /// The first I/O error, as text.
    pub first_error: Option<String>,
    /// Most requests in flight at once.
    pub max_in_flight: u64,
    /// Payload bytes the driver moved.
    pub bytes_moved: u64,
}

impl BenchLine<'_> {
    /// I/Os per second (0 when the job took no measurable time).
    pub fn iops(&self) -> f64 {
        finite(self.ops as f64 / self.secs())
    }

    /// Megabytes (10^6) per second (0 when the job took no measurable time).
    pub fn mbps(&self) -> f64 {
        finite(self.bytes as f64 / self.secs() / 1e6)
    }

    fn secs(&self) -> f64 {
        if self.seconds > 0.0 {
            self.seconds
        } else {
            f64::MIN_POSITIVE
        }
    }

    /// The JSON object (without [`PREFIX`]).
    pub fn json(&self) -> String {
        let job = self.job;
        let mut o = Object::new();
        o.str(field::DEVICE, job.device().unwrap_or("?"));
        o.str(field::TRANSPORT, self.transport);
        o.str(field::RW, job.rw.name());
        o.num(field::BS, job.bs);
        o.num(field::QD, job.qd);
        o.num(field::OPS, self.ops);
        o.num(field::SECONDS, format_args!("{:.6}", self.seconds));
        o.num(field::IOPS, format_args!("{:.1}", self.iops()));
        o.num(field::MBPS, format_args!("{:.2}", self.mbps()));
        let lat = self.lat_us;
        o.num(
            field::LAT_US,
            format_args!(
                "{{\"{}\":{},\"{}\":{},\"{}\":{},\"{}\":{}}}",
                field::P50,
                lat.p50,
                field::P99,
                lat.p99,
                field::P999,
                lat.p999,
                field::MAX,
                lat.max
            ),
        );
        match self.verified {
            Some(v) => o.num(field::VERIFIED, v),
            None => o.num(field::VERIFIED, "null"),
        }
        o.num(field::VERIFY_MISMATCHES, self.mismatches);
        o.num(field::ERRORS, self.errors);
        match &self.first_error {
            Some(e) => o.str(field::FIRST_ERROR, e),
            None => o.num(field::FIRST_ERROR, "null"),
        }
        o.num(field::MAX_IN_FLIGHT, self.max_in_flight);
        o.num(field::BYTES_MOVED, self.bytes_moved);
        o.str(field::PATH, job.path.name());
        o.finish()
    }
}

/// `v`, or 0 where JSON has no number for it.
fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// The JSON object of the `BENCH` line of a job that could not run (double quotes in
/// `message` become single quotes).
pub fn error_json(job: &JobSpec, message: &str) -> String {
    let mut o = Object::new();
    o.str(field::ERROR, &message.replace('"', "'"));
    o.str(field::DEVICE, job.device().unwrap_or("?"));
    o.str(field::RW, job.rw.name());
    o.num(field::BS, job.bs);
    o.num(field::QD, job.qd);
    o.str(field::PATH, job.path.name());
    o.finish()
}

/// A JSON object written in order.
struct Object {
    s: String,
}

impl Object {
    fn new() -> Self {
        Object {
            s: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) {
        if self.s.len() > 1 {
            self.s.push(',');
        }
        self.s.push('"');
        self.s.push_str(key);
        self.s.push_str("\":");
    }

    /// A value written as it formats (numbers, `true`, `null`, a nested object).
    fn num(&mut self, key: &str, v: impl fmt::Display) {
        self.key(key);
        let _ = write!(self.s, "{v}");
    }

    /// A string value, escaped.
    fn str(&mut self, key: &str, v: &str) {
        self.key(key);
        self.s.push('"');
        for c in v.chars() {
            match c {
                '"' => self.s.push_str("\\\""),
                '\\' => self.s.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.s, "\\u{:04x}", c as u32);
                }
                c => self.s.push(c),
            }
        }
        self.s.push('"');
    }

    fn finish(mut self) -> String {
        self.s.push('}');
        self.s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobSpec {
        let mut j = JobSpec::default();
        assert!(j.set_device("blk0"));
        j.qd = 32;
        j
    }

    #[test]
    fn a_job_that_ran() {
        let job = job();
        let line = BenchLine {
            job: &job,
            transport: "pci",
            ops: 20_000,
            seconds: 1.25,
            bytes: 20_000 * 4096,
            lat_us: Latency {
                p50: 1800,
                p99: 4100,
                p999: 6000,
                max: 9000,
            },
            verified: None,
            mismatches: 0,
            errors: 0,
            first_error: None,
            max_in_flight: 32,
            bytes_moved: 81_920_000,
        };
        assert_eq!(
            line.json(),
            "{\"device\":\"blk0\",\"transport\":\"pci\",\"rw\":\"randread\",\"bs\":4096,\
             \"qd\":32,\"ops\":20000,\"seconds\":1.250000,\"iops\":16000.0,\"mbps\":65.54,\
             \"lat_us\":{\"p50\":1800,\"p99\":4100,\"p999\":6000,\"max\":9000},\
             \"verified\":null,\"verify_mismatches\":0,\"errors\":0,\"first_error\":null,\
             \"max_in_flight\":32,\"bytes_moved\":81920000,\"path\":\"hpdi\"}"
        );
        let bad = BenchLine {
            verified: Some(false),
            first_error: Some("device \"x\"\n".into()),
            seconds: 0.0,
            ..line
        };
        let text = bad.json();
        assert!(text.contains("\"verified\":false"), "{text}");
        assert!(
            text.contains("\"first_error\":\"device \\\"x\\\"\\u000a\""),
            "{text}"
        );
        assert!(!text.contains("inf") && !text.contains("NaN"), "{text}");
    }

    #[test]
    fn a_job_that_could_not_run() {
        assert_eq!(
            error_json(&job(), "no such \"device\""),
            "{\"error\":\"no such 'device'\",\"device\":\"blk0\",\"rw\":\"randread\",\
             \"bs\":4096,\"qd\":32,\"path\":\"hpdi\"}"
        );
    }
}
