//! Wall-clock time from the CMOS real-time clock: the register decoding and the calendar
//! arithmetic, here to be host-tested (the kernel's `arch::rtc` reads the registers).
//!
//! TLS needs the date only to check client certificates' validity, so the RTC's second
//! resolution and its local-time-or-UTC ambiguity (QEMU's default `-rtc base=utc` keeps it in
//! UTC) are good enough; no NTP.

/// Status register B: hours are 24-hour (else 12-hour with bit 7 for PM).
pub const STATUS_B_24H: u8 = 1 << 1;
/// Status register B: values are binary (else BCD).
pub const STATUS_B_BINARY: u8 = 1 << 2;

/// The RTC's date and time registers, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtcRegisters {
    pub seconds: u8,
    pub minutes: u8,
    pub hours: u8,
    pub day: u8,
    pub month: u8,
    /// Two digits.
    pub year: u8,
    /// The century register (CMOS 0x32 on PCs, ACPI's FADT century field); 0 when absent.
    pub century: u8,
    pub status_b: u8,
}

fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0x0f);
    (hi <= 9 && lo <= 9).then_some(hi * 10 + lo)
}

impl RtcRegisters {
    /// Seconds since the UNIX epoch, or `None` for values no clock shows (bad BCD, month 13,
    /// a date before 1970).
    pub fn unix_seconds(&self) -> Option<u64> {
        let binary = self.status_b & STATUS_B_BINARY != 0;
        let decode = |v: u8| if binary { Some(v) } else { from_bcd(v) };
        let pm = self.status_b & STATUS_B_24H == 0 && self.hours & 0x80 != 0;
        let mut hour = decode(self.hours & 0x7f)?;
        if self.status_b & STATUS_B_24H == 0 {
            // 12-hour clock: 12 AM is midnight, 12 PM is noon.
            if !(1..=12).contains(&hour) {
                return None;
            }
            hour = (hour % 12) + if pm { 12 } else { 0 };
        }
        let (sec, min) = (decode(self.seconds)?, decode(self.minutes)?);
        let (day, month, yy) = (decode(self.day)?, decode(self.month)?, decode(self.year)?);
        let century = match decode(self.century) {
            Some(c @ 19..=99) => u32::from(c),
            // No century register: this code postdates 2000.
            _ => 20,
        };
        if sec > 59 || min > 59 || hour > 23 || yy > 99 {
            return None;
        }
        let year = century * 100 + u32::from(yy);
        let days = days_since_epoch(year, month, day)?;
        let secs = u64::from(hour) * 3600 + u64::from(min) * 60 + u64::from(sec);
        Some(days * 86_400 + secs)
    }
}

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian), `None` for an invalid date
/// or one before 1970.
pub fn days_since_epoch(year: u32, month: u8, day: u8) -> Option<u64> {
    const BEFORE: [u16; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    const LEN: [u8; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if year < 1970 || !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    let m = usize::from(month - 1);
    let leap_day = month == 2 && is_leap(year);
    if day > LEN[m] + u8::from(leap_day) {
        return None;
    }
    let y = u64::from(year - 1);
    // Leap days in the years before `year`, less those before 1970 (477 of them).
    let leaps = y / 4 - y / 100 + y / 400 - 477;
    let mut days = u64::from(year - 1970) * 365 + leaps + u64::from(BEFORE[m]);
    if month > 2 && is_leap(year) {
        days += 1;
    }
    Some(days + u64::from(day) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(bcd: [u8; 7], status_b: u8) -> RtcRegisters {
        let [seconds, minutes, hours, day, month, year, century] = bcd;
        RtcRegisters {
            seconds,
            minutes,
            hours,
            day,
            month,
            year,
            century,
            status_b,
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(days_since_epoch(1970, 1, 1), Some(0));
        assert_eq!(days_since_epoch(1972, 3, 1), Some(790));
        assert_eq!(days_since_epoch(2000, 2, 29), Some(11_016));
        assert_eq!(days_since_epoch(2000, 3, 1), Some(11_017));
        assert_eq!(days_since_epoch(2038, 1, 19), Some(24_855));
        assert_eq!(days_since_epoch(2100, 3, 1), Some(47_541));
        assert_eq!(days_since_epoch(2100, 2, 29), None);
        assert_eq!(days_since_epoch(2023, 4, 31), None);
        assert_eq!(days_since_epoch(1969, 12, 31), None);
        assert_eq!(days_since_epoch(2024, 13, 1), None);
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_one_before() {
        let mut expect = 0;
        for year in 1970..2370 {
            for month in 1..=12 {
                for day in 1..=31 {
                    if let Some(d) = days_since_epoch(year, month, day) {
                        assert_eq!(d, expect, "{year}-{month}-{day}");
                        expect += 1;
                    }
                }
            }
        }
    }

    #[test]
    fn bcd_and_binary_24_and_12_hour() {
        // 2026-12-03 16:04:05 UTC = 1_796_313_845.
        let want = Some(1_796_313_845);
        let bcd24 = regs([0x05, 0x04, 0x16, 0x03, 0x12, 0x26, 0x20], STATUS_B_24H);
        assert_eq!(bcd24.unix_seconds(), want);
        let bin24 = regs([5, 4, 16, 3, 12, 26, 20], STATUS_B_24H | STATUS_B_BINARY);
        assert_eq!(bin24.unix_seconds(), want);
        let bcd12 = regs([0x05, 0x04, 0x84, 0x03, 0x12, 0x26, 0x20], 0);
        assert_eq!(bcd12.unix_seconds(), want);
        // 12 AM is midnight, 12 PM noon.
        let midnight = regs([0, 0, 0x12, 0x01, 0x01, 0x70, 0x19], 0);
        assert_eq!(midnight.unix_seconds(), Some(0));
        let noon = regs([0, 0, 0x92, 0x01, 0x01, 0x70, 0x19], 0);
        assert_eq!(noon.unix_seconds(), Some(43_200));
        // No century register: 20xx.
        let no_century = regs([0x05, 0x04, 0x16, 0x03, 0x12, 0x26, 0], STATUS_B_24H);
        assert_eq!(no_century.unix_seconds(), want);
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(
            regs([0x5a, 0, 0, 1, 1, 0x26, 0x20], STATUS_B_24H).unix_seconds(),
            None
        );
        assert_eq!(
            regs([0x60, 0, 0, 1, 1, 0x26, 0x20], STATUS_B_24H).unix_seconds(),
            None
        );
        assert_eq!(
            regs([0, 0, 0x24, 1, 1, 0x26, 0x20], STATUS_B_24H).unix_seconds(),
            None
        );
        assert_eq!(regs([0, 0, 0x13, 1, 1, 0x26, 0x20], 0).unix_seconds(), None);
        assert_eq!(
            regs([0, 0, 0, 0x31, 0x02, 0x26, 0x20], STATUS_B_24H).unix_seconds(),
            None
        );
    }
}
