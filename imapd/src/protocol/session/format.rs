//! Small pieces of response text the session composes: flag lists, INTERNALDATE, UID sets.
//!
//! Pure formatting; never touches the client or the store.

use common::store::Flags;

/// The system flags in the order UW-IMAP lists them in FETCH FLAGS.
const FETCH_ORDER: [(Flags, &str); 5] = [
    (Flags::SEEN, "\\Seen"),
    (Flags::DELETED, "\\Deleted"),
    (Flags::FLAGGED, "\\Flagged"),
    (Flags::ANSWERED, "\\Answered"),
    (Flags::DRAFT, "\\Draft"),
];

/// The system flags as FLAGS and PERMANENTFLAGS list them.
pub(crate) const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Draft \\Seen";

/// `(\Recent \Seen $Forwarded)`: a message's flags for FETCH FLAGS.
pub(crate) fn flag_list(flags: Flags, keywords: u64, recent: bool, names: &[String]) -> String {
    let mut parts: Vec<&str> = Vec::new();
    if recent {
        parts.push("\\Recent");
    }
    for (flag, name) in FETCH_ORDER {
        if flags.contains(flag) {
            parts.push(name);
        }
    }
    for (bit, name) in names.iter().enumerate().take(64) {
        if keywords & (1u64 << bit) != 0 {
            parts.push(name);
        }
    }
    format!("({})", parts.join(" "))
}

/// The keyword names, each followed by a space (for FLAGS and PERMANENTFLAGS).
pub(crate) fn keyword_prefix(names: &[String]) -> String {
    names.iter().map(|n| format!("{n} ")).collect()
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Civil date of a day number (days since 1970-01-01), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// INTERNALDATE as sent: `" 1-Jan-2024 10:00:00 +0000"` (quoted, day space-padded, as UW).
pub(crate) fn internal_date(epoch: i64, tz_minutes: i32) -> String {
    let local = epoch + i64::from(tz_minutes) * 60;
    let (year, month, day) = civil_from_days(local.div_euclid(86_400));
    let secs = local.rem_euclid(86_400);
    let sign = if tz_minutes < 0 { '-' } else { '+' };
    let tz = tz_minutes.unsigned_abs();
    format!(
        "\"{day:2}-{}-{year:04} {:02}:{:02}:{:02} {sign}{:02}{:02}\"",
        MONTHS[(month as usize).saturating_sub(1) % 12],
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        tz / 60,
        tz % 60
    )
}

/// A UID list in sequence-set form, runs compressed (`1:3,7`), in the order given.
pub(crate) fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && end.checked_add(1) == Some(uids[i + 1]) {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_in_uw_order() {
        let names = vec!["$Forwarded".to_string(), "Junk".to_string()];
        let flags = Flags::ANSWERED.union(Flags::FLAGGED);
        assert_eq!(
            flag_list(flags, 0b11, true, &names),
            "(\\Recent \\Flagged \\Answered $Forwarded Junk)"
        );
        assert_eq!(flag_list(Flags::NONE, 0, false, &names), "()");
        assert_eq!(keyword_prefix(&names), "$Forwarded Junk ");
    }

    #[test]
    fn internal_dates() {
        assert_eq!(
            internal_date(1_704_103_200, 0),
            "\" 1-Jan-2024 10:00:00 +0000\""
        );
        assert_eq!(
            internal_date(1_704_103_200, -300),
            "\" 1-Jan-2024 05:00:00 -0500\""
        );
        assert_eq!(internal_date(0, 90), "\" 1-Jan-1970 01:30:00 +0130\"");
        assert_eq!(
            internal_date(951_782_400, 0),
            "\"29-Feb-2000 00:00:00 +0000\""
        );
    }

    #[test]
    fn uid_sets_compress_runs() {
        assert_eq!(uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(uid_set(&[4]), "4");
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[u32::MAX - 1, u32::MAX]), "4294967294:4294967295");
    }
}
