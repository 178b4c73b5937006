//! A fixed-size log-linear latency histogram: recording allocates nothing, percentiles are
//! within about 3 % of the true value (32 linear steps per power of two).

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values up to 2^44 ns (about 4.9 hours) are kept exactly enough; larger ones saturate.
const MAX_EXP: u32 = 44;
const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 2) as usize) * SUB as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: alloc::boxed::Box<[u32]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: alloc::vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = (63 - v.leading_zeros()).min(MAX_EXP);
    let shift = exp - SUB_BITS;
    let mantissa = (v >> shift).min(2 * SUB - 1) - SUB;
    ((shift as u64 + 1) * SUB + mantissa) as usize
}

/// Smallest value that falls in bucket `b` (its lower bound).
fn lower(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let shift = b / SUB - 1;
    (SUB + b % SUB) << shift
}

impl core::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Histogram({} samples, max {})", self.total, self.max)
    }
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        let b = bucket(v).min(BUCKETS - 1);
        self.counts[b] = self.counts[b].saturating_add(1);
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0.0..=1.0), reported as its bucket's lower bound.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let exact = q * self.total as f64;
        let mut rank = exact as u64; // no `ceil` in core
        if (rank as f64) < exact {
            rank += 1;
        }
        let rank = rank.clamp(1, self.total);
        let mut seen = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return lower(b).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut prev = 0;
        for v in (0..100_000u64).chain([1 << 30, (1 << 40) + 12345]) {
            let b = bucket(v);
            assert!(b >= prev, "bucket({v}) went backwards");
            prev = b;
            let lo = lower(b);
            assert!(lo <= v, "lower bound {lo} above {v}");
            assert!(
                (v - lo) as f64 <= v as f64 / SUB as f64 + 1.0,
                "{v} vs {lo}"
            );
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.04, "{p50}");
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.04, "{p99}");
        assert_eq!(h.max(), 1_000_000);
        assert_eq!(h.count(), 1000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
