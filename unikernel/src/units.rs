//! Human-readable sizes for console lines (`32MiB`, `1536KiB`, `812B`).

use core::fmt;

/// Formats a byte count with the largest binary unit that divides it exactly,
/// falling back to one decimal place of MiB for large uneven values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KIB: u64 = 1 << 10;
        const MIB: u64 = 1 << 20;
        const GIB: u64 = 1 << 30;
        let b = self.0;
        if b >= GIB && b.is_multiple_of(GIB) {
            write!(f, "{}GiB", b / GIB)
        } else if b >= MIB && b.is_multiple_of(MIB) {
            write!(f, "{}MiB", b / MIB)
        } else if b >= 16 * MIB {
            write!(f, "{}.{}MiB", b / MIB, (b % MIB) * 10 / MIB)
        } else if b >= KIB && b.is_multiple_of(KIB) {
            write!(f, "{}KiB", b / KIB)
        } else if b >= KIB {
            write!(f, "{}.{}KiB", b / KIB, (b % KIB) * 10 / KIB)
        } else {
            write!(f, "{b}B")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_exact_units() {
        assert_eq!(Bytes(32 << 20).to_string(), "32MiB");
        assert_eq!(Bytes(1 << 30).to_string(), "1GiB");
        assert_eq!(Bytes(1536 << 10).to_string(), "1536KiB");
        assert_eq!(Bytes(812).to_string(), "812B");
        assert_eq!(Bytes((20 << 20) + (512 << 10)).to_string(), "20.5MiB");
        assert_eq!(Bytes(1536).to_string(), "1.5KiB");
    }
}
