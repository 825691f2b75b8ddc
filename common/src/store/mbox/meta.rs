//! UW-IMAP's per-message metadata in mbox files: which header lines are ours (`Status`,
//! `X-Status`, `X-Keywords`, `X-UID`, `X-IMAP`, `X-IMAPbase`), how to read flags out of them, and
//! the exact bytes imap-2007f writes back (`unix_xstatus`, `unix_pseudo`).
//!
//! Owns byte formats only; never reads or writes files.

use super::fromline::{local_time, MONTH_NAMES, WEEKDAY_NAMES};
use crate::store::Flags;
use std::io::Write;

/// UW keeps at most this many keywords per mailbox (`NUSERFLAGS`).
pub(super) const MAX_KEYWORDS: usize = 30;
/// ... each at most this long (`MAXUSERFLAG`).
pub(super) const MAX_KEYWORD_LEN: usize = 50;

/// What a header line is, for presentation and for rewriting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LineKind {
    /// An ordinary header line (or a continuation of one).
    Visible,
    /// `Content-Length`: kept in the file, hidden from clients.
    ContentLength,
    /// One of UW's metadata headers, any letter case (or a continuation of one).
    Internal,
    /// The blank line that ends the header.
    End,
}

/// Classifies the lines of one header in order, tracking continuation lines.
pub(super) struct HeaderFilter {
    previous: LineKind,
}

impl HeaderFilter {
    pub fn new() -> HeaderFilter {
        HeaderFilter {
            previous: LineKind::Visible,
        }
    }

    /// Kind of `line`; `at_line_start` is false for the later pieces of an over-long line.
    pub fn classify(&mut self, line: &[u8], at_line_start: bool) -> LineKind {
        if !at_line_start {
            return self.previous;
        }
        if line == b"\n" || line == b"\r\n" {
            return LineKind::End;
        }
        let kind = match line.first() {
            Some(b' ') | Some(b'\t') => self.previous,
            _ => name_kind(line),
        };
        self.previous = kind;
        kind
    }
}

fn name_kind(line: &[u8]) -> LineKind {
    let name_len = line
        .iter()
        .position(|&c| c == b':' || c <= b' ')
        .unwrap_or(line.len());
    if line.get(name_len) != Some(&b':') {
        return LineKind::Visible;
    }
    let name = &line[..name_len];
    const INTERNAL: [&[u8]; 6] = [
        b"status",
        b"x-status",
        b"x-keywords",
        b"x-uid",
        b"x-imap",
        b"x-imapbase",
    ];
    if INTERNAL.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        LineKind::Internal
    } else if name.eq_ignore_ascii_case(b"content-length") {
        LineKind::ContentLength
    } else {
        LineKind::Visible
    }
}

/// Classify each line of a whole header held in memory, in order.
pub(super) fn for_each_header_line(raw: &[u8], mut f: impl FnMut(&[u8], LineKind)) {
    let mut filter = HeaderFilter::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let n = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let line = &rest[..n];
        f(line, filter.classify(line, true));
        rest = &rest[n..];
    }
}

/// Bytes of `line` after the (exact-case) prefix `name`, without the line end.
pub(super) fn value_after<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?;
    let end = rest
        .iter()
        .position(|&c| c == b'\n' || c == b'\r')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Flags from a `Status:` or `X-Status:` value, and whether `O` (seen by a session) was present.
pub(super) fn status_flags(value: &[u8], flags: &mut Flags, old: &mut bool) {
    for &c in value {
        match c {
            b'R' => flags.insert(Flags::SEEN),
            b'O' => *old = true,
            b'D' => flags.insert(Flags::DELETED),
            b'F' => flags.insert(Flags::FLAGGED),
            b'A' => flags.insert(Flags::ANSWERED),
            b'T' => flags.insert(Flags::DRAFT),
            _ => {}
        }
    }
}

/// Space-separated words of a metadata value that are acceptable keywords.
pub(super) fn keyword_words(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&c| c == b' ')
        .filter(|w| !w.is_empty() && w.len() <= MAX_KEYWORD_LEN)
}

/// Bitmask of the keywords in an `X-Keywords:` value that the mailbox knows (others are dropped,
/// as UW drops them).
pub(super) fn keyword_bits(value: &[u8], names: &[String]) -> u64 {
    let mut bits = 0u64;
    for word in keyword_words(value) {
        if let Some(i) = names
            .iter()
            .position(|n| n.as_bytes().eq_ignore_ascii_case(word))
        {
            bits |= 1 << i;
        }
    }
    bits
}

/// Leading decimal number of `s` after spaces, and the rest; `None` without digits or on overflow.
pub(super) fn leading_number(s: &[u8]) -> Option<(u64, &[u8])> {
    let s = trim_spaces(s);
    let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let n = std::str::from_utf8(&s[..digits]).ok()?.parse().ok()?;
    Some((n, &s[digits..]))
}

pub(super) fn trim_spaces(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b' ').count();
    &s[n..]
}

/// The mailbox-wide values UW keeps in `X-IMAPbase` / `X-IMAP`.
pub(super) struct BaseInfo<'a> {
    pub uid_validity: u32,
    pub uid_last: u32,
    pub keywords: &'a [String],
}

/// One message's state as written into its metadata headers.
pub(super) struct MessageMeta {
    pub flags: Flags,
    pub keywords: u64,
    pub uid: u32,
    /// Write `O` in `Status`: some session has seen the message (it is no longer `\Recent`).
    pub old: bool,
}

/// Append UW's metadata block for a message (`unix_xstatus` with a UID), ending with
/// the blank line that closes the header. `base` is given for the first message of a spool INBOX.
pub(super) fn write_xstatus(
    out: &mut Vec<u8>,
    msg: &MessageMeta,
    base: Option<&BaseInfo<'_>>,
    keyword_names: &[String],
) {
    let start = out.len();
    let mut pad = 50;
    if let Some(b) = base {
        let _ = write!(out, "X-IMAPbase: {} {}", b.uid_validity, b.uid_last);
        for k in b.keywords {
            out.push(b' ');
            out.extend_from_slice(k.as_bytes());
        }
        out.push(b'\n');
        pad += 30;
    }
    out.extend_from_slice(b"Status: ");
    if msg.flags.contains(Flags::SEEN) {
        out.push(b'R');
    }
    if msg.old {
        out.push(b'O');
    }
    out.extend_from_slice(b"\nX-Status: ");
    for (flag, letter) in [
        (Flags::DELETED, b'D'),
        (Flags::FLAGGED, b'F'),
        (Flags::ANSWERED, b'A'),
        (Flags::DRAFT, b'T'),
    ] {
        if msg.flags.contains(flag) {
            out.push(letter);
        }
    }
    out.extend_from_slice(b"\nX-Keywords:");
    for (i, name) in keyword_names.iter().enumerate().take(64) {
        if msg.keywords & (1 << i) != 0 {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
        }
    }
    let written = out.len() - start;
    if written < pad {
        out.resize(start + pad, b' ');
    }
    // Written in place (no String on the way): a STORE makes two of these per message.
    let _ = write!(out, "\nX-UID: {}\n\n", msg.uid);
}

const PSEUDO_FROM: &str = "MAILER-DAEMON";
const PSEUDO_NAME: &str = "Mail System Internal Data";
pub(super) const PSEUDO_SUBJECT: &str = "DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA";
const PSEUDO_TEXT: &str =
    "This text is part of the internal format of your mail folder, and is not\n\
a real message.  It is created automatically by the mail system software.\n\
If deleted, important folder data will be lost, and it will be re-created\n\
with the data reset to initial values.";

/// UW's folder pseudo-message (`unix_pseudo`) carrying UIDVALIDITY, UID-last and keywords.
pub(super) fn pseudo_message(base: &BaseInfo<'_>, now: i64, host: &str) -> Vec<u8> {
    let lt = local_time(now);
    let ctime = format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        WEEKDAY_NAMES[lt.weekday],
        MONTH_NAMES[lt.month],
        lt.day,
        lt.hour,
        lt.minute,
        lt.second,
        lt.year
    );
    let off = lt.offset_minutes;
    let fixed_date = format!(
        "{:02} {} {:4} {:02}:{:02}:{:02} {}{:02}{:02}",
        lt.day,
        MONTH_NAMES[lt.month],
        lt.year,
        lt.hour,
        lt.minute,
        lt.second,
        if off < 0 { '-' } else { '+' },
        off.abs() / 60,
        off.abs() % 60
    );
    let mut text = format!(
        "From {PSEUDO_FROM} {ctime}\nDate: {fixed_date}\nFrom: {PSEUDO_NAME} <{PSEUDO_FROM}@{host}>\n\
         Subject: {PSEUDO_SUBJECT}\nMessage-ID: <{now}@{host}>\nX-IMAP: {:010} {:010}",
        base.uid_validity, base.uid_last
    );
    for k in base.keywords {
        text.push(' ');
        text.push_str(k);
    }
    text.push_str("\nStatus: RO\n\n");
    text.push_str(PSEUDO_TEXT);
    text.push_str("\n\n");
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_continuations() {
        let mut f = HeaderFilter::new();
        assert_eq!(f.classify(b"Subject: x\n", true), LineKind::Visible);
        assert_eq!(f.classify(b"X-Keywords: a\n", true), LineKind::Internal);
        assert_eq!(f.classify(b" b\n", true), LineKind::Internal);
        assert_eq!(f.classify(b"status: RO\n", true), LineKind::Internal);
        assert_eq!(f.classify(b"X-UIDL: 5\n", true), LineKind::Visible);
        assert_eq!(f.classify(b"\tmore\n", true), LineKind::Visible);
        assert_eq!(
            f.classify(b"Content-Length: 5\n", true),
            LineKind::ContentLength
        );
        assert_eq!(f.classify(b"X-Status : D\n", true), LineKind::Visible);
        assert_eq!(f.classify(b"\r\n", true), LineKind::End);
    }

    #[test]
    fn xstatus_matches_uw_padding() {
        let names = vec!["$Forwarded".to_string(), "Junk".to_string()];
        let mut out = Vec::new();
        let base = BaseInfo {
            uid_validity: 1795438470,
            uid_last: 5,
            keywords: &names,
        };
        let seen = MessageMeta {
            flags: Flags::SEEN,
            keywords: 0,
            uid: 1,
            old: true,
        };
        write_xstatus(&mut out, &seen, Some(&base), &names);
        assert_eq!(
            out,
            b"X-IMAPbase: 1795438470 5 $Forwarded Junk\nStatus: RO\nX-Status: \n\
              X-Keywords:      \nX-UID: 1\n\n"
        );
        out.clear();
        let kw = MessageMeta {
            flags: Flags::FLAGGED.union(Flags::ANSWERED),
            keywords: 3,
            uid: 2,
            old: true,
        };
        write_xstatus(&mut out, &kw, None, &names);
        assert_eq!(
            out,
            b"Status: O\nX-Status: FA\nX-Keywords: $Forwarded Junk\nX-UID: 2\n\n"
        );
    }

    #[test]
    fn pseudo_message_carries_base() {
        let names = vec!["Junk".to_string()];
        let base = BaseInfo {
            uid_validity: 7,
            uid_last: 42,
            keywords: &names,
        };
        let text = String::from_utf8(pseudo_message(&base, 1_700_000_000, "vm")).unwrap();
        assert!(text.starts_with("From MAILER-DAEMON "));
        assert!(text.contains("\nX-IMAP: 0000000007 0000000042 Junk\nStatus: RO\n\n"));
        assert!(text.ends_with("initial values.\n\n"));
        let first_line_end = text.find('\n').unwrap() + 1;
        assert!(super::super::fromline::is_from_line(
            &text.as_bytes()[..first_line_end]
        ));
    }
}
