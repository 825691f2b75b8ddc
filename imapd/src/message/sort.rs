//! SORT (RFC 5256 section 3, plus DISPLAYFROM/DISPLAYTO of RFC 5957) and the per-message sort
//! and thread keys, including base-subject extraction (RFC 5256 section 2.1).
//!
//! Keys are computed once per message from its header ([`MessageKeys::new`]); sorting never
//! touches message bytes again. Strings are compared after mapping to upper case, as
//! i;ascii-casemap does (so `_` and `[` sort after letters, as in Dovecot); ties are broken by
//! mailbox order, as RFC 5256 requires.

use std::cmp::Ordering;

use super::date::parse_rfc822_date;
use super::decode::rfc2047;
use super::envelope::{parse_address_list, Address};
use super::header::{fields, unfold};
use super::search::MessageMeta;

/// The SORT keys of one message, and what THREAD needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageKeys {
    pub seq: u32,
    pub uid: u32,
    /// INTERNALDATE (ARRIVAL).
    pub arrival: i64,
    /// Sent date in UTC, falling back to INTERNALDATE when the Date header is unusable.
    pub date: i64,
    pub size: u64,
    /// Case-mapped base subject, and whether extracting it removed a reply/forward marker.
    pub subject: String,
    pub subject_is_reply: bool,
    /// Case-mapped first mailbox of From, To, Cc; display names for DISPLAYFROM/TO.
    pub from: String,
    pub to: String,
    pub cc: String,
    pub display_from: String,
    pub display_to: String,
    /// For THREAD=REFERENCES: the Message-ID and the References chain (oldest first; the
    /// first In-Reply-To id when there is no References header).
    pub message_id: Option<String>,
    pub references: Vec<String>,
}

impl MessageKeys {
    /// Compute every key from the message `header` block and its index entry.
    pub fn new(header: &[u8], meta: &MessageMeta) -> MessageKeys {
        let mut keys = MessageKeys {
            seq: meta.seq,
            uid: meta.uid,
            arrival: meta.internal_date,
            date: meta.internal_date,
            size: meta.size,
            ..MessageKeys::default()
        };
        let (mut seen_date, mut seen_subject, mut in_reply_to) = (false, false, None);
        let (mut seen_from, mut seen_to, mut seen_cc) = (false, false, false);
        for f in fields(header) {
            let n = f.name;
            if n.eq_ignore_ascii_case(b"Date") && !seen_date {
                seen_date = true;
                if let Some(d) = parse_rfc822_date(&unfold(f.value)) {
                    keys.date = d.epoch;
                }
            } else if n.eq_ignore_ascii_case(b"Subject") && !seen_subject {
                seen_subject = true;
                let (base, reply) = base_subject(&rfc2047(&unfold(f.value)));
                keys.subject = base;
                keys.subject_is_reply = reply;
            } else if n.eq_ignore_ascii_case(b"From") && !seen_from {
                seen_from = true;
                (keys.from, keys.display_from) = address_keys(f.value);
            } else if n.eq_ignore_ascii_case(b"To") && !seen_to {
                seen_to = true;
                (keys.to, keys.display_to) = address_keys(f.value);
            } else if n.eq_ignore_ascii_case(b"Cc") && !seen_cc {
                seen_cc = true;
                keys.cc = address_keys(f.value).0;
            } else if n.eq_ignore_ascii_case(b"Message-ID") && keys.message_id.is_none() {
                keys.message_id = msg_ids(f.value).into_iter().next();
            } else if n.eq_ignore_ascii_case(b"References") && keys.references.is_empty() {
                keys.references = msg_ids(f.value);
            } else if n.eq_ignore_ascii_case(b"In-Reply-To") && in_reply_to.is_none() {
                in_reply_to = msg_ids(f.value).into_iter().next();
            }
        }
        if keys.references.is_empty() {
            keys.references.extend(in_reply_to);
        }
        keys
    }
}

/// Upper case for comparison: i;ascii-casemap for ASCII, simple upper case beyond.
fn casemap(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_uppercase();
    }
    text.chars().flat_map(char::to_uppercase).collect()
}

/// (case-mapped addr-mailbox of the first address, case-mapped display name or addr-spec of
/// the first mailbox).
fn address_keys(value: &[u8]) -> (String, String) {
    let list = parse_address_list(value);
    let Some(first) = list.iter().find(|a| a.host.is_some()) else {
        return (String::new(), String::new());
    };
    let text = |b: &Option<Vec<u8>>| {
        String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned()
    };
    // A group's start counts as the first address: its addr-mailbox is the group name.
    let mailbox = list
        .first()
        .map(|a| casemap(&text(&a.mailbox)))
        .unwrap_or_default();
    let display = match &first.name {
        Some(name) if !name.is_empty() => casemap(&rfc2047(name)),
        _ => casemap(&addr_spec(first)),
    };
    (mailbox, display)
}

fn addr_spec(a: &Address) -> String {
    let text = |b: &Option<Vec<u8>>| {
        String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned()
    };
    format!("{}@{}", text(&a.mailbox), text(&a.host))
}

/// The `<...>` message identifiers in a header value, whitespace removed.
pub fn msg_ids(value: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut rest = value;
    while let Some(open) = memchr::memchr(b'<', rest) {
        let Some(close) = memchr::memchr(b'>', &rest[open..]) else {
            break;
        };
        let id: Vec<u8> = rest[open..open + close + 1]
            .iter()
            .copied()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        if id.len() > 2 {
            ids.push(String::from_utf8_lossy(&id).into_owned());
        }
        rest = &rest[open + close + 1..];
    }
    ids
}

/// RFC 5256 section 2.1 base subject of an already RFC 2047-decoded subject, upper-cased;
/// the flag says whether a reply/forward marker (`Re:`, `Fwd:`, `(fwd)`, `[fwd: ...]`) was
/// removed.
pub fn base_subject(decoded: &str) -> (String, bool) {
    // Step 1: whitespace runs become one space.
    let mut s = String::with_capacity(decoded.len());
    for word in casemap(decoded).split([' ', '\t', '\r', '\n']) {
        if word.is_empty() {
            continue;
        }
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(word);
    }
    let mut subject: &str = &s;
    let mut reply = false;
    let mut owned;
    loop {
        // Step 2: trailers.
        loop {
            let t = subject.trim_end_matches(' ');
            match t.strip_suffix("(FWD)") {
                Some(rest) => {
                    subject = rest;
                    reply = true;
                }
                None => {
                    subject = t;
                    break;
                }
            }
        }
        // Steps 3-5: leaders and blobs.
        loop {
            let before = subject.len();
            while let Some((rest, was_refwd)) = strip_leader(subject) {
                subject = rest;
                reply |= was_refwd;
            }
            if let Some(rest) = strip_blob(subject) {
                if !rest.is_empty() {
                    subject = rest;
                }
            }
            if subject.len() == before {
                break;
            }
        }
        // Step 6: [fwd: ...] wrapper.
        match subject
            .strip_prefix("[FWD:")
            .and_then(|r| r.strip_suffix(']'))
        {
            Some(inner) => {
                reply = true;
                owned = inner.to_string();
                subject = &owned;
            }
            None => break,
        }
    }
    (subject.to_string(), reply)
}

/// `subj-blob = "[" *BLOBCHAR "]" *WSP` at the start: the rest.
fn strip_blob(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('[')?;
    let close = inner.find([']', '['])?;
    if inner.as_bytes()[close] != b']' {
        return None;
    }
    Some(inner[close + 1..].trim_start_matches(' '))
}

/// `subj-leader = (*subj-blob subj-refwd) / WSP` at the start: the rest, and whether a
/// `re`/`fw`/`fwd` marker was removed.
fn strip_leader(s: &str) -> Option<(&str, bool)> {
    if let Some(rest) = s.strip_prefix(' ') {
        return Some((rest, false));
    }
    let mut rest = s;
    while let Some(r) = strip_blob(rest) {
        rest = r;
    }
    let after_word = rest
        .strip_prefix("RE")
        .or_else(|| rest.strip_prefix("FWD"))
        .or_else(|| rest.strip_prefix("FW"))?;
    let mut r = after_word.trim_start_matches(' ');
    if let Some(after_blob) = strip_blob(r) {
        r = after_blob;
    }
    r.strip_prefix(':').map(|r| (r, true))
}

/// One SORT criterion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Arrival,
    Cc,
    Date,
    From,
    Size,
    Subject,
    To,
    DisplayFrom,
    DisplayTo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SortCriterion {
    pub key: SortKey,
    pub reverse: bool,
}

fn compare(a: &MessageKeys, b: &MessageKeys, key: SortKey) -> Ordering {
    match key {
        SortKey::Arrival => a.arrival.cmp(&b.arrival),
        SortKey::Cc => a.cc.cmp(&b.cc),
        SortKey::Date => a.date.cmp(&b.date),
        SortKey::From => a.from.cmp(&b.from),
        SortKey::Size => a.size.cmp(&b.size),
        SortKey::Subject => a.subject.cmp(&b.subject),
        SortKey::To => a.to.cmp(&b.to),
        SortKey::DisplayFrom => a.display_from.cmp(&b.display_from),
        SortKey::DisplayTo => a.display_to.cmp(&b.display_to),
    }
}

/// Sort messages: returns indexes into `messages` in SORT order. Ties under all criteria go
/// by sequence number.
pub fn sort(messages: &[MessageKeys], criteria: &[SortCriterion]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..messages.len()).collect();
    order.sort_by(|&i, &j| {
        let (a, b) = (&messages[i], &messages[j]);
        criteria
            .iter()
            .map(|c| {
                let o = compare(a, b, c.key);
                if c.reverse {
                    o.reverse()
                } else {
                    o
                }
            })
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.seq.cmp(&b.seq))
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(s: &str) -> (String, bool) {
        base_subject(s)
    }

    #[test]
    fn base_subject_rules() {
        assert_eq!(base("Re: hello"), ("HELLO".into(), true));
        assert_eq!(
            base("RE: Re: re[2]: FWD: Fw: hello"),
            ("HELLO".into(), true)
        );
        assert_eq!(
            base("[list] Re: [other] hello  world (fwd)"),
            ("HELLO WORLD".into(), true)
        );
        assert_eq!(base("  hello\t\tworld  "), ("HELLO WORLD".into(), false));
        assert_eq!(base("[fwd: Re: inner]"), ("INNER".into(), true));
        assert_eq!(base("[only blob]"), ("[ONLY BLOB]".into(), false));
        assert_eq!(base("[a][b] real"), ("REAL".into(), false));
        assert_eq!(base("Re:"), ("".into(), true));
        assert_eq!(base("Rebecca"), ("REBECCA".into(), false));
        assert_eq!(base("re : spaced"), ("SPACED".into(), true));
        assert_eq!(base(""), ("".into(), false));
    }

    #[test]
    fn subjects_compare_upper_cased_and_groups_count_as_first_address() {
        // imaptest sort-subject: "_" and "[xyz]" sort after letters (i;ascii-casemap).
        let msgs = [
            keys(1, "Subject: _\r\n", 0, 1),
            keys(2, "Subject: b\r\n", 0, 1),
            keys(3, "Subject: [xyz]\r\n", 0, 1),
            keys(4, "Subject: A\r\n", 0, 1),
        ];
        let by_subject = [SortCriterion {
            key: SortKey::Subject,
            reverse: false,
        }];
        assert_eq!(sort(&msgs, &by_subject), [3, 1, 2, 0]);
        // imaptest sort-addresses: the group name is the first addr-mailbox.
        let group = keys(1, "Cc: user2: blah@x.org;\r\n", 0, 1);
        assert_eq!(group.cc, "USER2");
    }

    fn keys(seq: u32, header: &str, internal: i64, size: u64) -> MessageKeys {
        let meta = MessageMeta {
            seq,
            uid: seq * 10,
            size,
            internal_date: internal,
            ..MessageMeta::default()
        };
        MessageKeys::new(header.as_bytes(), &meta)
    }

    #[test]
    fn sorts_by_criteria_with_sequence_tie_break() {
        let msgs = [
            keys(1, "Subject: Re: beta\r\nFrom: Zed <z@x>\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\n", 300, 10),
            keys(2, "Subject: alpha\r\nFrom: a@x\r\nCc: c@x\r\nDate: Tue, 2 Jan 2024 12:00:00 +0300\r\n", 200, 30),
            keys(3, "Subject: BETA\r\nFrom: \"Bee\" <m@x>\r\n", 100, 20),
        ];
        let by = |key, reverse| sort(&msgs, &[SortCriterion { key, reverse }]);
        assert_eq!(by(SortKey::Subject, false), [1, 0, 2]);
        assert_eq!(by(SortKey::Subject, true), [0, 2, 1]);
        assert_eq!(by(SortKey::Arrival, false), [2, 1, 0]);
        assert_eq!(by(SortKey::Size, true), [1, 2, 0]);
        // Message 3 has no Date: its internal date (100) is used.
        assert_eq!(by(SortKey::Date, false), [2, 1, 0]);
        assert_eq!(by(SortKey::From, false), [1, 2, 0]);
        assert_eq!(by(SortKey::DisplayFrom, false), [1, 2, 0]);
        // Empty Cc sorts first.
        assert_eq!(by(SortKey::Cc, false), [0, 2, 1]);
        let two = [
            SortCriterion {
                key: SortKey::Subject,
                reverse: false,
            },
            SortCriterion {
                key: SortKey::Size,
                reverse: true,
            },
        ];
        assert_eq!(sort(&msgs, &two), [1, 2, 0]);
    }

    #[test]
    fn thread_keys_are_extracted() {
        let k = keys(1, "Message-ID: <a@b>\r\nIn-Reply-To: <p@b> (comment)\r\nSubject: =?utf-8?q?Re=3A_caf=C3=A9?=\r\n", 0, 0);
        assert_eq!(k.message_id.as_deref(), Some("<a@b>"));
        assert_eq!(k.references, ["<p@b>"]);
        assert_eq!((k.subject.as_str(), k.subject_is_reply), ("CAFÉ", true));
        let k = keys(
            1,
            "References: <1@x> <2@x>\r\n\t<3@x>\r\nIn-Reply-To: <9@x>\r\n",
            0,
            0,
        );
        assert_eq!(k.references, ["<1@x>", "<2@x>", "<3@x>"]);
    }
}
