//! Recognising mbox `From ` separator lines exactly as UW-IMAP's `VALID` macro does, and turning
//! their ctime-style date into an INTERNALDATE. Also the local-time helpers the writer needs.
//!
//! Owns only pure functions over byte slices and the clock; never touches files.

/// INTERNALDATE taken from a `From ` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FromDate {
    /// Seconds since the epoch.
    pub epoch: i64,
    /// Zone of the date in minutes east of UTC.
    pub tz_minutes: i32,
}

/// The pieces of a valid `From ` line's date, as byte slices of the line.
struct DateFields<'a> {
    day: &'a [u8],
    month: &'a [u8],
    hour: &'a [u8],
    minute: &'a [u8],
    second: &'a [u8],
    year: &'a [u8],
    zone: Option<&'a [u8]>,
}

/// `Some(date)` when `line` (including its `\n`) is a message separator by UW's rules:
/// `From ` + sender + `www mmm dd hh:mm[:ss] [zone] yyyy [zone]` + optional ` remote from host`.
/// A line without a newline (end of file, or an over-long fragment) is never a separator.
pub(super) fn parse_from_line(line: &[u8]) -> Option<FromDate> {
    let fields = from_line_fields(line)?;
    Some(fields_to_date(&fields))
}

/// True when `line` is a message separator (see [`parse_from_line`]).
pub(super) fn is_from_line(line: &[u8]) -> bool {
    from_line_fields(line).is_some()
}

fn from_line_fields(line: &[u8]) -> Option<DateFields<'_>> {
    if !line.starts_with(b"From ") || line.last() != Some(&b'\n') {
        return None;
    }
    let mut x = line.len() - 1;
    if x > 0 && line[x - 1] == b'\r' {
        x -= 1;
    }
    let at = |i: isize| -> Option<u8> {
        let idx = x as isize + i;
        if idx < 0 {
            None
        } else {
            line.get(idx as usize).copied()
        }
    };
    if x >= 41 {
        // Rightmost space, then look for " remote from" just before it.
        let mut zn: isize = -1;
        while at(zn)? != b' ' {
            zn -= 1;
        }
        let start = x as isize + zn - 12;
        if start >= 0 && &line[start as usize..(x as isize + zn) as usize] == b" remote from" {
            x = start as usize;
        }
    }
    if x < 27 {
        return None;
    }
    let at = |i: isize| -> Option<u8> {
        let idx = x as isize + i;
        if idx < 0 {
            None
        } else {
            line.get(idx as usize).copied()
        }
    };
    let sign = |c: Option<u8>| c == Some(b'+') || c == Some(b'-');
    let (mut ti, zn): (isize, isize) = if at(-5)? == b' ' {
        if at(-8)? == b':' {
            (-5, 0)
        } else if at(-9)? == b' ' {
            (-9, -9)
        } else if at(-11)? == b' ' && sign(at(-10)) {
            (-11, -11)
        } else {
            return None;
        }
    } else if at(-4)? == b' ' {
        if at(-9)? == b' ' {
            (-9, -4)
        } else {
            return None;
        }
    } else if at(-6)? == b' ' {
        if at(-11)? == b' ' && sign(at(-5)) {
            (-11, -6)
        } else {
            return None;
        }
    } else {
        return None;
    };
    if at(ti - 3)? != b':' {
        return None;
    }
    ti -= if at(ti - 6)? == b':' { 9 } else { 6 };
    if at(ti)? != b' ' || at(ti - 3)? != b' ' || at(ti - 7)? != b' ' || at(ti - 11)? != b' ' {
        return None;
    }
    let slice = |from: isize, len: usize| -> Option<&[u8]> {
        let start = usize::try_from(x as isize + from).ok()?;
        line.get(start..start + len)
    };
    let day = slice(ti - 2, 2)?;
    let month = slice(ti - 6, 3)?;
    let hour = slice(ti + 1, 2)?;
    let minute = slice(ti + 4, 2)?;
    ti += 6;
    let second: &[u8] = if at(ti)? == b':' {
        let s = slice(ti + 1, 2)?;
        ti += 3;
        s
    } else {
        b"00"
    };
    if zn == ti {
        ti += if sign(at(zn + 1)) { 6 } else { 4 };
    }
    let year = slice(ti + 1, 4)?;
    let zone = if zn == 0 {
        None
    } else if sign(at(zn + 1)) {
        Some(slice(zn + 1, 5)?)
    } else {
        Some(slice(zn + 1, 3)?)
    };
    Some(DateFields {
        day,
        month,
        hour,
        minute,
        second,
        year,
        zone,
    })
}

fn number(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?.trim_start();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

const MONTHS: [&[u8; 3]; 12] = [
    b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
];

fn month_number(name: &[u8]) -> Option<i64> {
    let pos = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(name))?;
    Some(pos as i64 + 1)
}

/// Zone in minutes east of UTC: numeric `+hhmm`, or the names RFC 822 knows.
fn zone_minutes(zone: &[u8]) -> Option<i32> {
    if let (Some(&s), Some(digits)) = (zone.first(), zone.get(1..5)) {
        if s == b'+' || s == b'-' {
            let n = number(digits)? as i32;
            let minutes = (n / 100) * 60 + n % 100;
            return Some(if s == b'-' { -minutes } else { minutes });
        }
    }
    let upper = zone.to_ascii_uppercase();
    let hours = match upper.as_slice() {
        b"UT" | b"GMT" | b"UTC" | b"WET" => 0,
        b"BST" | b"CET" | b"MET" => 1,
        b"EET" | b"CEST" | b"MEST" => 2,
        b"EST" => -5,
        b"EDT" | b"AST" => -4,
        b"CST" => -6,
        b"CDT" => -5,
        b"MST" => -7,
        b"MDT" => -6,
        b"PST" => -8,
        b"PDT" => -7,
        b"JST" => 9,
        _ => return None,
    };
    Some(hours * 60)
}

fn fields_to_date(f: &DateFields<'_>) -> FromDate {
    let parsed = (|| {
        let civil = days_from_civil(number(f.year)?, month_number(f.month)?, number(f.day)?);
        let secs = number(f.hour)? * 3600 + number(f.minute)? * 60 + number(f.second)?;
        Some(civil * 86_400 + secs)
    })();
    let Some(wall) = parsed else {
        // UW warns "Unable to parse internal date" and leaves it unset.
        return FromDate {
            epoch: 0,
            tz_minutes: 0,
        };
    };
    match f.zone.and_then(zone_minutes) {
        Some(tz) => FromDate {
            epoch: wall - i64::from(tz) * 60,
            tz_minutes: tz,
        },
        None => {
            // No (or an unknown) zone: the time is local time, as UW assumes.
            let tz = local_offset_minutes(wall);
            let epoch = wall - i64::from(tz) * 60;
            FromDate {
                epoch,
                tz_minutes: local_offset_minutes(epoch),
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(super) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Broken-down local time.
pub(super) struct LocalTime {
    pub year: i32,
    /// 0-11
    pub month: usize,
    pub day: i32,
    pub hour: i32,
    pub minute: i32,
    pub second: i32,
    /// 0 = Sunday
    pub weekday: usize,
    pub offset_minutes: i32,
}

/// `epoch` in the process's local time zone (TZ, /etc/localtime).
pub(super) fn local_time(epoch: i64) -> LocalTime {
    let t = epoch as libc::time_t;
    // SAFETY: `tm` is plain old data for which all-zero is a valid value; localtime_r only reads
    // `t` and writes into `tm`, both valid for the duration of the call; it is thread-safe.
    let (tm, ok) = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        let ok = !libc::localtime_r(&t, &mut tm).is_null();
        (tm, ok)
    };
    if !ok {
        let days = epoch.div_euclid(86_400);
        let secs = epoch.rem_euclid(86_400) as i32;
        let (y, m, d) = civil_from_days(days);
        return LocalTime {
            year: y as i32,
            month: (m - 1) as usize,
            day: d as i32,
            hour: secs / 3600,
            minute: secs / 60 % 60,
            second: secs % 60,
            weekday: (days + 4).rem_euclid(7) as usize,
            offset_minutes: 0,
        };
    }
    LocalTime {
        year: tm.tm_year + 1900,
        month: tm.tm_mon.clamp(0, 11) as usize,
        day: tm.tm_mday,
        hour: tm.tm_hour,
        minute: tm.tm_min,
        second: tm.tm_sec,
        weekday: tm.tm_wday.clamp(0, 6) as usize,
        offset_minutes: (tm.tm_gmtoff / 60) as i32,
    }
}

/// The date of a `From ` line we write (UW's `mail_cdate`): `Thu Feb  1 12:00:00 2024 +0000`,
/// the instant `epoch` shown in the zone `tz_minutes` east of UTC, newline not included.
pub(super) fn from_line_date(epoch: i64, tz_minutes: i32) -> String {
    let local = epoch + i64::from(tz_minutes) * 60;
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 4).rem_euclid(7) as usize;
    let zone = tz_minutes.abs();
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {} {}{:02}{:02}",
        WEEKDAY_NAMES[weekday],
        MONTH_NAMES[(month - 1).clamp(0, 11) as usize],
        day,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        year,
        if tz_minutes < 0 { '-' } else { '+' },
        zone / 60,
        zone % 60
    )
}

fn local_offset_minutes(epoch: i64) -> i32 {
    local_time(epoch).offset_minutes
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

pub(super) const WEEKDAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
pub(super) const MONTH_NAMES: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn date(line: &str) -> Option<FromDate> {
        parse_from_line(line.as_bytes())
    }

    #[test]
    fn written_dates_read_back_identically() {
        for (epoch, tz) in [
            (1_706_788_800, 0),
            (1_700_000_000, -300),
            (0, 330),
            (951_782_400, 60),
        ] {
            let line = format!("From u@h {}\n", from_line_date(epoch, tz));
            assert_eq!(
                date(&line),
                Some(FromDate {
                    epoch,
                    tz_minutes: tz
                }),
                "{line}"
            );
        }
        assert_eq!(
            from_line_date(1_706_788_800, 0),
            "Thu Feb  1 12:00:00 2024 +0000"
        );
    }

    #[test]
    fn accepts_every_documented_format() {
        for line in [
            "From user Wed Dec  2 05:53 1992\n",
            "From user Wed Dec  2 05:53:22 1992\n",
            "From user Wed Dec  2 05:53 PST 1992\n",
            "From user Wed Dec  2 05:53:22 PST 1992\n",
            "From user Wed Dec  2 05:53 -0700 1992\n",
            "From user Wed Dec  2 05:53:22 -0700 1992\n",
            "From user Wed Dec  2 05:53 1992 PST\n",
            "From user Wed Dec  2 05:53:22 1992 PST\n",
            "From user Wed Dec  2 05:53 1992 -0700\n",
            "From user Wed Dec  2 05:53:22 1992 -0700\n",
            "From user Wed Dec  2 05:53:22 1992 -0700 remote from host\n",
            "From us er Wed Dec  2 05:53:22 1992\r\n",
        ] {
            assert!(date(line).is_some(), "{line:?}");
        }
    }

    #[test]
    fn rejects_body_lines_that_merely_start_with_from() {
        for line in [
            "From the desk of Carol: a line starting with From.\n",
            "From user Wed Dec  2 05:53:22 1992",
            "From user\n",
            ">From user Wed Dec  2 05:53:22 1992\n",
            "From user Wed Dec  2 0553:22 1992\n",
            "From \n",
        ] {
            assert!(date(line).is_none(), "{line:?}");
        }
    }

    #[test]
    fn dates_and_zones_are_exact() {
        let d = date("From alice@example.com Mon Jan  1 10:00:00 2024\n").unwrap();
        assert_eq!(d.epoch, 1_704_103_200 - i64::from(d.tz_minutes) * 60);
        let d = date("From uwtest@vm Thu Feb  1 12:00:00 2024 +0000\n").unwrap();
        assert_eq!((d.epoch, d.tz_minutes), (1_706_788_800, 0));
        let d = date("From x Thu Feb  1 12:00:00 2024 -0130\n").unwrap();
        assert_eq!((d.epoch, d.tz_minutes), (1_706_788_800 + 5400, -90));
        let d = date("From x Thu Feb  1 12:00 PST 2024\n").unwrap();
        assert_eq!((d.epoch, d.tz_minutes), (1_706_788_800 + 8 * 3600, -480));
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1000, 0, 19_723, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
