//! The MC146818 CMOS real-time clock at ports 0x70 (index) and 0x71 (data), as a PC has it.
//!
//! Neither engine provides one (KVM has no in-kernel RTC), and a guest without it cannot read
//! the wall-clock time. The clock reads the host's UTC time on each access, in BCD and 24-hour
//! mode as a PC BIOS leaves it; the other CMOS bytes are 114 bytes of plain RAM. Periodic, alarm
//! and update interrupts are not generated (Linux does not need them to boot).

use crate::bus::BusDevice;
use std::time::{SystemTime, UNIX_EPOCH};

/// The index port; the data port follows it.
pub const RTC_PORT: u64 = 0x70;
/// Two ports.
pub const RTC_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Register B: 24-hour mode, BCD (bit 2 clear), no interrupts.
const REG_B_24H: u8 = 0x02;
/// Register A: 32.768 kHz time base, 1024 Hz rate; the update-in-progress bit is never set.
const REG_A_DEFAULT: u8 = 0x26;
/// Register D: the battery is good (valid RAM and time).
const REG_D_VALID: u8 = 0x80;

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// Full year.
    pub year: u32,
    /// 1-12.
    pub month: u32,
    /// 1-31.
    pub day: u32,
    /// 0-23.
    pub hour: u32,
    /// 0-59.
    pub minute: u32,
    /// 0-59.
    pub second: u32,
    /// 1 (Sunday) - 7.
    pub weekday: u32,
}

impl DateTime {
    /// Converts seconds since the Unix epoch (civil-from-days, proleptic Gregorian).
    pub fn from_unix(secs: u64) -> Self {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
            weekday: ((days + 4).rem_euclid(7) + 1) as u32, // 1970-01-01 was a Thursday
        }
    }
}

fn bcd(value: u32) -> u8 {
    (((value / 10) % 10) << 4 | (value % 10)) as u8
}

/// The CMOS RTC device.
pub struct Rtc {
    index: u8,
    ram: [u8; 128],
    now: Box<dyn Fn() -> u64 + Send>,
}

impl Rtc {
    /// An RTC reading the host's clock.
    pub fn new() -> Self {
        Self::with_clock(Box::new(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
        }))
    }

    /// An RTC reading `now` (Unix seconds), for tests.
    pub fn with_clock(now: Box<dyn Fn() -> u64 + Send>) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(REG_A)] = REG_A_DEFAULT;
        ram[usize::from(REG_B)] = REG_B_24H;
        ram[usize::from(REG_D)] = REG_D_VALID;
        Rtc { index: 0, ram, now }
    }

    fn read_register(&self, index: u8) -> u8 {
        let t = DateTime::from_unix((self.now)());
        match index {
            REG_SECONDS => bcd(t.second),
            REG_MINUTES => bcd(t.minute),
            REG_HOURS => bcd(t.hour),
            REG_WEEKDAY => bcd(t.weekday),
            REG_DAY => bcd(t.day),
            REG_MONTH => bcd(t.month),
            REG_YEAR => bcd(t.year % 100),
            REG_CENTURY => bcd(t.year / 100),
            REG_C => 0, // no interrupt flags
            other => self.ram[usize::from(other & 0x7f)],
        }
    }
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (0, [byte]) => *byte = self.index,
            (1, [byte]) => *byte = self.read_register(self.index),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            // Bit 7 of the index port is the NMI mask on a PC; it is not an index bit.
            (0, [byte]) => self.index = byte & 0x7f,
            // Time registers read the host clock; writes to them (setting the clock) are ignored,
            // as are writes to the status registers that would change the format.
            (1, [byte]) if self.index > REG_D && self.index != REG_CENTURY => {
                self.ram[usize::from(self.index)] = *byte;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_time_converts_to_the_calendar() {
        // 2026-11-26 09:19:46 UTC, a Thursday.
        let t = DateTime::from_unix(1_795_684_786);
        assert_eq!((t.year, t.month, t.day), (2026, 11, 26));
        assert_eq!((t.hour, t.minute, t.second, t.weekday), (9, 19, 46, 5));
        let leap = DateTime::from_unix(951_782_400); // 2000-02-29 00:00:00
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    #[test]
    fn guest_reads_bcd_time_through_the_index_port() {
        let mut rtc = Rtc::with_clock(Box::new(|| 1_795_684_786));
        let mut read = |index: u8| {
            rtc.write(0, &[index | 0x80]); // with the NMI-mask bit set, as Linux writes it
            let mut b = [0u8];
            rtc.read(1, &mut b);
            b[0]
        };
        assert_eq!(read(REG_SECONDS), 0x46);
        assert_eq!(read(REG_MINUTES), 0x19);
        assert_eq!(read(REG_HOURS), 0x09);
        assert_eq!(read(REG_DAY), 0x26);
        assert_eq!(read(REG_MONTH), 0x11);
        assert_eq!(read(REG_YEAR), 0x26);
        assert_eq!(read(REG_CENTURY), 0x20);
        assert_eq!(read(REG_B), REG_B_24H);
        assert_eq!(read(REG_D), REG_D_VALID);
        assert_eq!(read(REG_A) & 0x80, 0, "never update-in-progress");
    }

    #[test]
    fn cmos_ram_keeps_what_the_guest_writes_but_the_format_is_fixed() {
        let mut rtc = Rtc::with_clock(Box::new(|| 0));
        rtc.write(0, &[0x40]);
        rtc.write(1, &[0xab]);
        rtc.write(0, &[REG_B]);
        rtc.write(1, &[0x06]); // binary mode: ignored
        let mut b = [0u8];
        rtc.write(0, &[0x40]);
        rtc.read(1, &mut b);
        assert_eq!(b[0], 0xab);
        rtc.write(0, &[REG_B]);
        rtc.read(1, &mut b);
        assert_eq!(b[0], REG_B_24H);
    }
}
