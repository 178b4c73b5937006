//! Sizes given on the command line: `64M`, `1G`, `512K`, or a plain number of MiB.
//!
//! QEMU's `-m` and our `--disk-size` share the same spelling so a user writes sizes one way.

use std::fmt;
use std::str::FromStr;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// A size in bytes, parsed from `N`, `NK`, `NM`, `NG`, `NT` (binary units; `KiB`/`MiB`/...
/// and lower case accepted). A plain number means MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` MiB.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n * MIB)
    }

    /// `n` GiB.
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n * GIB)
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The size in whole MiB (rounded down).
    pub fn as_mib(self) -> u64 {
        self.0 / MIB
    }
}

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size '{0}': expected e.g. 64M, 1G, 512K or a plain number of MiB")]
pub struct SizeError(String);

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SizeError(s.to_string());
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let n: u64 = num.parse().map_err(|_| err())?;
        let mult = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "m" | "mb" | "mib" => MIB,
            "k" | "kb" | "kib" => KIB,
            "g" | "gb" | "gib" => GIB,
            "t" | "tb" | "tib" => TIB,
            "b" => 1,
            _ => return Err(err()),
        };
        let bytes = n.checked_mul(mult).ok_or_else(err)?;
        if bytes == 0 {
            return Err(err());
        }
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    /// The shortest exact spelling QEMU accepts: `64M`, `1G`, `512K`, or bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b != 0 && b.is_multiple_of(TIB) {
            write!(f, "{}T", b / TIB)
        } else if b != 0 && b.is_multiple_of(GIB) {
            write!(f, "{}G", b / GIB)
        } else if b != 0 && b.is_multiple_of(MIB) {
            write!(f, "{}M", b / MIB)
        } else if b != 0 && b.is_multiple_of(KIB) {
            write!(f, "{}K", b / KIB)
        } else {
            write!(f, "{b}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("32M".parse(), Ok(ByteSize::mib(32)));
        assert_eq!("1G".parse(), Ok(ByteSize::gib(1)));
        assert_eq!("1g".parse(), Ok(ByteSize::gib(1)));
        assert_eq!("64".parse(), Ok(ByteSize::mib(64)));
        assert_eq!("512K".parse(), Ok(ByteSize(512 * 1024)));
        assert_eq!("2GiB".parse(), Ok(ByteSize::gib(2)));
        assert_eq!("4096b".parse(), Ok(ByteSize(4096)));
        assert!("".parse::<ByteSize>().is_err());
        assert!("M".parse::<ByteSize>().is_err());
        assert!("0".parse::<ByteSize>().is_err());
        assert!("12X".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
        assert!("99999999999999T".parse::<ByteSize>().is_err());
    }

    #[test]
    fn displays_shortest_exact() {
        assert_eq!(ByteSize::mib(64).to_string(), "64M");
        assert_eq!(ByteSize::mib(1024).to_string(), "1G");
        assert_eq!(ByteSize(1536 * 1024).to_string(), "1536K");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }
}
