//! Maildir file names: the unique base name, the `:2,` info suffix and what it encodes.
//!
//! Owns parsing and building names only (`<base>[:2,<letters>]`, with `,S=`/`,W=` size fields and
//! the delivery time in the base). Never touches the file system.

use super::super::Flags;

/// The separator between the base name and the info part (`:` on every Unix Maildir).
pub const INFO_SEPARATOR: char = ':';

/// The system flags we manage, with their Maildir letters (ASCII order).
const FLAG_LETTERS: [(char, Flags); 5] = [
    ('D', Flags::DRAFT),
    ('F', Flags::FLAGGED),
    ('R', Flags::ANSWERED),
    ('S', Flags::SEEN),
    ('T', Flags::DELETED),
];

/// A file name split into what we manage and what we only carry along (the store keeps only
/// the name and reads these from it as needed; this is the three readers at once, for tests).
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedName {
    /// The name without the info part: the message's identity across renames.
    pub base: String,
    /// The system flags `D F R S T` found in the info part.
    pub flags: Flags,
    /// Every other info letter (keywords `a`..`z`, `P`, unknown ones), kept verbatim on rename.
    pub kept: String,
}

/// The base name: everything before the info separator.
pub fn base_of(name: &str) -> &str {
    match name.find(INFO_SEPARATOR) {
        Some(at) => &name[..at],
        None => name,
    }
}

/// Split `name` into base, system flags and kept letters. Only a `2,` info part carries flags;
/// any other info part is treated as carrying none.
#[cfg(test)]
pub fn parse(name: &str) -> ParsedName {
    ParsedName {
        base: base_of(name).to_string(),
        flags: flags_of(name),
        kept: kept_of(name),
    }
}

/// The letters of `name`'s `2,` info part (flags, keywords, others); empty without one.
pub fn info_letters(name: &str) -> &str {
    name.get(base_of(name).len() + 1..)
        .and_then(|info| info.strip_prefix("2,"))
        .unwrap_or("")
}

/// The system flags in `name`'s info letters.
pub fn flags_of(name: &str) -> Flags {
    let mut flags = Flags::NONE;
    for letter in info_letters(name).chars() {
        if let Some((_, flag)) = FLAG_LETTERS.iter().find(|(l, _)| *l == letter) {
            flags.insert(*flag);
        }
    }
    flags
}

/// `name`'s info letters other than the system flags (keywords `a`..`z`, `P`, unknown ones).
pub fn kept_of(name: &str) -> String {
    info_letters(name)
        .chars()
        .filter(|letter| !FLAG_LETTERS.iter().any(|(l, _)| l == letter))
        .collect()
}

/// The file name for `base` with `flags` plus the `kept` letters, sorted as Maildir requires.
pub fn build(base: &str, flags: Flags, kept: &str) -> String {
    let mut letters: Vec<char> = kept.chars().collect();
    letters.extend(
        FLAG_LETTERS
            .iter()
            .filter(|(_, flag)| flags.contains(*flag))
            .map(|(letter, _)| *letter),
    );
    letters.sort_unstable();
    letters.dedup();
    let mut name = String::with_capacity(base.len() + 3 + letters.len());
    name.push_str(base);
    name.push(INFO_SEPARATOR);
    name.push_str("2,");
    name.extend(letters);
    name
}

/// The value of a `,<key>=<digits>` field in a base name (`S` = file size, `W` = size with CRLF).
pub fn size_field(base: &str, key: char) -> Option<u64> {
    let needle = format!(",{key}=");
    let mut rest = base;
    while let Some(at) = rest.find(&needle) {
        let after = &rest[at + needle.len()..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if let Ok(value) = after[..digits].parse() {
            return Some(value);
        }
        rest = after;
    }
    None
}

/// The order new messages get UIDs in: delivery time from the name (`<secs>.M<usecs>...`),
/// falling back to `mtime` when the name does not start with a time, then the name itself.
pub fn delivery_key(base: &str, mtime: i64) -> (i64, u64, &str) {
    let mut parts = base.split('.');
    let secs = parts.next().and_then(|p| p.parse::<i64>().ok());
    let micros = parts
        .next()
        .and_then(|p| p.find('M').map(|at| &p[at + 1..]))
        .map(|m| {
            let digits = m.len() - m.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            m[..digits].parse::<u64>().unwrap_or(0)
        })
        .unwrap_or(0);
    match secs {
        Some(secs) => (secs, micros, base),
        None => (mtime, 0, base),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags_and_keeps_the_rest() {
        let p = parse("1276528487.M364837P9451.host,S=1355,W=1394:2,FPSac");
        assert_eq!(p.base, "1276528487.M364837P9451.host,S=1355,W=1394");
        assert_eq!(p.flags, Flags::FLAGGED.union(Flags::SEEN));
        assert_eq!(p.kept, "Pac");
    }

    #[test]
    fn name_without_info_has_no_flags() {
        let p = parse("123.abc.host");
        assert_eq!(p.base, "123.abc.host");
        assert_eq!(p.flags, Flags::NONE);
        assert!(p.kept.is_empty());
        assert_eq!(parse("123.x:1,experimental").flags, Flags::NONE);
    }

    #[test]
    fn build_sorts_letters_and_round_trips() {
        let all = Flags::DRAFT
            .union(Flags::FLAGGED)
            .union(Flags::ANSWERED)
            .union(Flags::SEEN)
            .union(Flags::DELETED);
        let name = build("b", all, "caP");
        assert_eq!(name, "b:2,DFPRSTac");
        let back = parse(&name);
        assert_eq!(back.flags, all);
        assert_eq!(back.kept, "Pac");
        assert_eq!(build("b", Flags::NONE, ""), "b:2,");
    }

    #[test]
    fn size_fields() {
        let base = "1.M2P3.host,S=1355,W=1394";
        assert_eq!(size_field(base, 'S'), Some(1355));
        assert_eq!(size_field(base, 'W'), Some(1394));
        assert_eq!(size_field("1.x.host", 'W'), None);
        assert_eq!(size_field("1.x.host,W=,W=7", 'W'), Some(7));
    }

    #[test]
    fn delivery_key_orders_by_time_then_micros() {
        let a = delivery_key("1000.M99P1.h", 5);
        let b = delivery_key("1000.M100P1.h", 5);
        let c = delivery_key("999.M999999P1.h", 5);
        assert!(c < a && a < b);
        assert_eq!(delivery_key("weird-name", 42).0, 42);
    }
}
