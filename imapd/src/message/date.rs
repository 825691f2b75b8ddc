//! Dates for SEARCH and SORT: RFC 5322 `Date:` header parsing (tolerant of the obsolete
//! forms real mail uses), IMAP `date` arguments (`1-Feb-1994`), and calendar-day arithmetic.
//!
//! Pure arithmetic on the proleptic Gregorian calendar; never consults the local time zone.

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The calendar day (days since the epoch) of an instant as seen in zone `tz_minutes`.
pub fn day_in_zone(epoch_seconds: i64, tz_minutes: i32) -> i64 {
    (epoch_seconds + i64::from(tz_minutes) * 60).div_euclid(86_400)
}

fn month_number(name: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    let prefix = name.get(..3)?.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| m[..] == prefix[..])
        .map(|i| i as u32 + 1)
}

/// Parse an IMAP search date `d-Mon-yyyy` (day 1 or 2 digits) to days since the epoch.
pub fn parse_imap_date(s: &[u8]) -> Option<i64> {
    let s = s.strip_prefix(b"\"").unwrap_or(s);
    let s = s.strip_suffix(b"\"").unwrap_or(s);
    let mut it = s.split(|&c| c == b'-');
    let day = number(it.next()?)?;
    let month = month_number(it.next()?)?;
    let year = number(it.next()?)?;
    if it.next().is_some() || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(i64::from(year), month, day))
}

fn number(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// A parsed `Date:` header: the instant (seconds since the epoch, UTC) and the zone it was
/// written in (minutes east of UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentDate {
    pub epoch: i64,
    pub tz_minutes: i32,
}

impl SentDate {
    /// The date as written (its own zone), as days since the epoch: SENTON and friends.
    pub fn day(&self) -> i64 {
        day_in_zone(self.epoch, self.tz_minutes)
    }
}

/// Parse an RFC 5322 date-time: `[Day,] d Mon yyyy hh:mm[:ss] zone`, tolerating comments,
/// two-digit years, missing seconds and named or unknown zones (taken as UTC).
pub fn parse_rfc822_date(value: &[u8]) -> Option<SentDate> {
    let mut words: Vec<&[u8]> = Vec::new();
    let mut depth = 0usize;
    let mut start = None;
    for (i, &c) in value.iter().enumerate() {
        let separator = matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b',' | b'(' | b')');
        if c == b'(' {
            depth += 1;
        }
        if separator || depth > 0 {
            if let Some(s) = start.take() {
                words.push(&value[s..i]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
        if c == b')' {
            depth = depth.saturating_sub(1);
        }
    }
    if let Some(s) = start {
        words.push(&value[s..]);
    }
    let first_is_weekday = words
        .first()
        .is_some_and(|w| w.first().is_some_and(u8::is_ascii_alphabetic));
    let words = &words[usize::from(first_is_weekday)..];
    let (day, month, year) = match words {
        [d, m, y, ..] if number(d).is_some() => (number(d)?, month_number(m)?, number(y)?),
        // "Mon Jan 1 ..." (asctime-like): month first.
        [m, d, ..] => (number(d)?, month_number(m)?, number(words.get(3)?)?),
        _ => return None,
    };
    let year = match year {
        0..=49 => year + 2000,
        50..=999 => year + 1900,
        y => y,
    };
    if !(1..=31).contains(&day) {
        return None;
    }
    let time = words.iter().find(|w| w.contains(&b':'))?;
    let mut hms = time.split(|&c| c == b':').map(number);
    let hour = hms.next()??;
    let minute = hms.next()??;
    let second = hms.next().flatten().unwrap_or(0);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let tz_minutes = words
        .iter()
        .skip_while(|w| !w.contains(&b':'))
        .nth(1)
        .map_or(0, |z| zone_minutes(z));
    let local = days_from_civil(i64::from(year), month, day) * 86_400
        + i64::from(hour * 3600 + minute * 60 + second);
    Some(SentDate {
        epoch: local - i64::from(tz_minutes) * 60,
        tz_minutes,
    })
}

fn zone_minutes(zone: &[u8]) -> i32 {
    if let (Some(&sign), Some(digits)) = (zone.first(), zone.get(1..5)) {
        if (sign == b'+' || sign == b'-') && digits.iter().all(u8::is_ascii_digit) {
            let n = number(digits).unwrap_or(0) as i32;
            let minutes = n / 100 * 60 + n % 100;
            return if sign == b'-' { -minutes } else { minutes };
        }
    }
    match zone.to_ascii_uppercase().as_slice() {
        b"EDT" => -4 * 60,
        b"EST" | b"CDT" => -5 * 60,
        b"CST" | b"MDT" => -6 * 60,
        b"MST" | b"PDT" => -7 * 60,
        b"PST" => -8 * 60,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 1, 1), 19_723);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(parse_imap_date(b"1-Jan-2024"), Some(19_723));
        assert_eq!(parse_imap_date(b"\"01-jan-2024\""), Some(19_723));
        assert_eq!(parse_imap_date(b"1-Foo-2024"), None);
    }

    #[test]
    fn rfc822_dates_keep_their_own_day() {
        let d = parse_rfc822_date(b"Tue, 2 Jan 2024 00:30:00 +0100").unwrap();
        assert_eq!(d.tz_minutes, 60);
        assert_eq!(d.epoch, 19_724 * 86_400 - 30 * 60);
        assert_eq!(d.day(), 19_724); // 2 Jan in its own zone, though 1 Jan in UTC
        let d = parse_rfc822_date(b"2 Jan 24 10:00 EST (Eastern)").unwrap();
        assert_eq!(d.epoch, 19_724 * 86_400 + 15 * 3600);
        assert_eq!(parse_rfc822_date(b"garbage"), None);
        assert_eq!(parse_rfc822_date(b""), None);
    }
}
