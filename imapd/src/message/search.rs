//! SEARCH matching (RFC 3501 section 6.4.4, RFC 5032 OLDER/YOUNGER) of one message against a
//! search-key tree.
//!
//! Text keys compare RFC 2047-decoded header values and transfer- and charset-decoded text
//! bodies, case-insensitively (Unicode lower-casing, ASCII fast path). Flag, size, date and
//! set keys never look at the message: [`Key::needs`] tells the caller whether to read the
//! header, the whole message, or nothing. Never does I/O; never panics on message content.

use std::cell::OnceCell;

use common::store::Flags;

use super::date::{day_in_zone, parse_rfc822_date};
use super::decode::{charset_to_utf8, rfc2047};
use super::envelope::parse_address_list;
use super::header::{fields, first_value, split_header, unfold};
use super::mime::{param, parse, MimeTree, Part, PartKind};
use super::section::decode_transfer;

/// The per-message facts a search needs besides its text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageMeta {
    pub seq: u32,
    pub uid: u32,
    pub flags: Flags,
    /// Keyword bits (see `common::store::MessageInfo::keywords`).
    pub keywords: u64,
    pub recent: bool,
    pub size: u64,
    /// INTERNALDATE, seconds since the epoch, and its zone.
    pub internal_date: i64,
    pub internal_tz_minutes: i32,
}

/// A search string, case-folded once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needle {
    folded: String,
}

impl Needle {
    pub fn new(text: &str) -> Needle {
        Needle { folded: fold(text) }
    }

    /// The case-folded search string.
    pub fn folded(&self) -> &str {
        &self.folded
    }

    /// Whether the (already folded) haystack contains the needle.
    fn found_in(&self, folded_haystack: &str) -> bool {
        memchr::memmem::find(folded_haystack.as_bytes(), self.folded.as_bytes()).is_some()
    }
}

/// Case folding for search comparisons (ASCII fast path, Unicode lower case otherwise).
pub fn fold(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    text.chars().flat_map(char::to_lowercase).collect()
}

/// A search key. Negated keys (UNSEEN, UNKEYWORD, ...) are written as `Not(...)`; a sequence
/// or UID set is given as inclusive ranges with `*` already resolved by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    All,
    Answered,
    Deleted,
    Draft,
    Flagged,
    Seen,
    Recent,
    /// Recent and not seen.
    New,
    /// Not recent.
    Old,
    /// A keyword by bit index into the mailbox's keyword list; `None` for a keyword the
    /// mailbox does not have (never matches).
    Keyword(Option<u32>),
    SequenceSet(Vec<(u32, u32)>),
    UidSet(Vec<(u32, u32)>),
    /// Internal date before / on / since a day (days since the epoch).
    Before(i64),
    On(i64),
    Since(i64),
    /// `Date:` header day (in its own zone) before / on / since.
    SentBefore(i64),
    SentOn(i64),
    SentSince(i64),
    Larger(u64),
    Smaller(u64),
    /// RFC 5032: internal date at least / at most this many seconds ago.
    Older(u64),
    Younger(u64),
    Header(Vec<u8>, Needle),
    Subject(Needle),
    From(Needle),
    To(Needle),
    Cc(Needle),
    Bcc(Needle),
    Body(Needle),
    Text(Needle),
    Not(Box<Key>),
    Or(Box<Key>, Box<Key>),
    And(Vec<Key>),
}

/// How much of a message a search key needs to see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Needs {
    /// Only the index entry (flags, size, dates, numbers).
    Nothing,
    /// The header block.
    Header,
    /// The whole message.
    Message,
}

impl Key {
    /// The needles of the BODY and TEXT keys in this key.
    pub fn body_needles(&self) -> Vec<&Needle> {
        let mut needles = Vec::new();
        self.collect_body_needles(&mut needles);
        needles
    }

    fn collect_body_needles<'k>(&'k self, out: &mut Vec<&'k Needle>) {
        match self {
            Key::Body(n) | Key::Text(n) => out.push(n),
            Key::Not(k) => k.collect_body_needles(out),
            Key::Or(a, b) => {
                a.collect_body_needles(out);
                b.collect_body_needles(out);
            }
            Key::And(keys) => keys.iter().for_each(|k| k.collect_body_needles(out)),
            _ => {}
        }
    }

    /// The least a caller must supply to [`SearchContext::new`] for this key.
    /// Whether matching needs the INTERNALDATE (which a store may look up only on demand).
    pub fn needs_internal_date(&self) -> bool {
        match self {
            Key::Before(_) | Key::On(_) | Key::Since(_) | Key::Older(_) | Key::Younger(_) => true,
            Key::Not(k) => k.needs_internal_date(),
            Key::Or(a, b) => a.needs_internal_date() || b.needs_internal_date(),
            Key::And(keys) => keys.iter().any(Key::needs_internal_date),
            _ => false,
        }
    }

    pub fn needs(&self) -> Needs {
        match self {
            Key::SentBefore(_) | Key::SentOn(_) | Key::SentSince(_) => Needs::Header,
            Key::Header(..) | Key::Subject(_) | Key::From(_) | Key::To(_) => Needs::Header,
            Key::Cc(_) | Key::Bcc(_) => Needs::Header,
            Key::Body(_) | Key::Text(_) => Needs::Message,
            Key::Not(k) => k.needs(),
            Key::Or(a, b) => a.needs().max(b.needs()),
            Key::And(keys) => keys.iter().map(Key::needs).max().unwrap_or(Needs::Nothing),
            _ => Needs::Nothing,
        }
    }
}

/// One message being searched: its metadata and (when the key needs it) its bytes, with the
/// MIME tree and decoded texts computed lazily, at most once.
pub struct SearchContext<'a> {
    meta: &'a MessageMeta,
    /// The header or the whole message, as [`Key::needs`] asked for; empty otherwise.
    msg: &'a [u8],
    now: i64,
    tree: OnceCell<MimeTree>,
    body_text: OnceCell<String>,
    header_text: OnceCell<String>,
    /// Body matches found by the caller (for messages searched as a stream), by needle.
    body_hits: Option<Vec<(String, bool)>>,
}

impl<'a> SearchContext<'a> {
    /// `msg` holds what [`Key::needs`] asked for (header only, whole message, or nothing);
    /// `now` (seconds since the epoch) is for OLDER/YOUNGER.
    pub fn new(meta: &'a MessageMeta, msg: &'a [u8], now: i64) -> Self {
        SearchContext {
            meta,
            msg,
            now,
            tree: OnceCell::new(),
            body_text: OnceCell::new(),
            header_text: OnceCell::new(),
            body_hits: None,
        }
    }

    /// A context for a message whose body was searched elsewhere: `header` is its header
    /// block and `hits` says, for each needle of [`Key::body_needles`], whether the body text
    /// contains it.
    pub fn with_body_hits(
        meta: &'a MessageMeta,
        header: &'a [u8],
        now: i64,
        hits: Vec<(String, bool)>,
    ) -> Self {
        let mut context = SearchContext::new(meta, header, now);
        context.body_hits = Some(hits);
        context
    }

    fn body_contains(&self, needle: &Needle) -> bool {
        match &self.body_hits {
            Some(hits) => hits
                .iter()
                .any(|(folded, hit)| *hit && *folded == needle.folded),
            None => needle.found_in(self.body_text()),
        }
    }

    pub fn matches(&self, key: &Key) -> bool {
        let m = self.meta;
        match key {
            Key::All => true,
            Key::Answered => m.flags.contains(Flags::ANSWERED),
            Key::Deleted => m.flags.contains(Flags::DELETED),
            Key::Draft => m.flags.contains(Flags::DRAFT),
            Key::Flagged => m.flags.contains(Flags::FLAGGED),
            Key::Seen => m.flags.contains(Flags::SEEN),
            Key::Recent => m.recent,
            Key::New => m.recent && !m.flags.contains(Flags::SEEN),
            Key::Old => !m.recent,
            Key::Keyword(bit) => bit.is_some_and(|b| b < 64 && m.keywords & (1u64 << b) != 0),
            Key::SequenceSet(set) => in_set(set, m.seq),
            Key::UidSet(set) => in_set(set, m.uid),
            Key::Before(d) => self.internal_day() < *d,
            Key::On(d) => self.internal_day() == *d,
            Key::Since(d) => self.internal_day() >= *d,
            Key::SentBefore(d) => self.sent_day().is_some_and(|s| s < *d),
            Key::SentOn(d) => self.sent_day() == Some(*d),
            Key::SentSince(d) => self.sent_day().is_some_and(|s| s >= *d),
            Key::Larger(n) => m.size > *n,
            Key::Smaller(n) => m.size < *n,
            Key::Older(secs) => m.internal_date <= self.now.saturating_sub(clamp(*secs)),
            Key::Younger(secs) => m.internal_date >= self.now.saturating_sub(clamp(*secs)),
            Key::Header(name, needle) => self.header_matches(name, needle),
            Key::Subject(n) => self.header_matches(b"Subject", n),
            Key::From(n) => self.address_matches(b"From", n),
            Key::To(n) => self.address_matches(b"To", n),
            Key::Cc(n) => self.address_matches(b"Cc", n),
            Key::Bcc(n) => self.address_matches(b"Bcc", n),
            Key::Body(n) => self.body_contains(n),
            Key::Text(n) => n.found_in(self.header_text()) || self.body_contains(n),
            Key::Not(k) => !self.matches(k),
            Key::Or(a, b) => self.matches(a) || self.matches(b),
            Key::And(keys) => keys.iter().all(|k| self.matches(k)),
        }
    }

    fn internal_day(&self) -> i64 {
        day_in_zone(self.meta.internal_date, self.meta.internal_tz_minutes)
    }

    fn header(&self) -> &'a [u8] {
        let (h, _) = split_header(self.msg, 0);
        &self.msg[h]
    }

    fn sent_day(&self) -> Option<i64> {
        let date = first_value(self.header(), b"Date")?;
        parse_rfc822_date(&date).map(|d| d.day())
    }

    /// Any field `name` whose decoded value contains the needle (an empty needle matches any
    /// such field, RFC 3501 HEADER).
    fn header_matches(&self, name: &[u8], needle: &Needle) -> bool {
        fields(self.header())
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .any(|f| needle.found_in(&fold(&rfc2047(&unfold(f.value)))))
    }

    /// An address field matches on its decoded text or on its addresses written out plainly
    /// (`Name <mailbox@host>`), so comments and odd spacing inside an address do not hide it
    /// (c-client searches the written-out address list too).
    fn address_matches(&self, name: &[u8], needle: &Needle) -> bool {
        self.header_matches(name, needle)
            || fields(self.header())
                .filter(|f| f.name.eq_ignore_ascii_case(name))
                .any(|f| needle.found_in(&fold(&written_addresses(f.value))))
    }

    fn tree(&self) -> &MimeTree {
        self.tree.get_or_init(|| parse(self.msg))
    }

    fn header_text(&self) -> &str {
        self.header_text
            .get_or_init(|| fold(&decoded_header(self.header())))
    }

    fn body_text(&self) -> &str {
        self.body_text.get_or_init(|| {
            let mut text = String::new();
            let root = &self.tree().root;
            append_body_text(self.msg, root, &mut text);
            fold(&text)
        })
    }
}

/// The addresses of a header value written out as `Name <mailbox@host>`, comma-separated.
fn written_addresses(value: &[u8]) -> String {
    let text = |b: &Option<Vec<u8>>| {
        String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned()
    };
    parse_address_list(value)
        .iter()
        .filter(|a| a.host.is_some())
        .map(|a| {
            let spec = format!("{}@{}", text(&a.mailbox), text(&a.host));
            match &a.name {
                Some(name) if !name.is_empty() => format!("{} <{spec}>", rfc2047(name)),
                _ => spec,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn clamp(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn in_set(set: &[(u32, u32)], n: u32) -> bool {
    set.iter().any(|&(a, b)| (a.min(b)..=a.max(b)).contains(&n))
}

/// Every header field as `name: decoded value` lines.
pub(crate) fn decoded_header(header: &[u8]) -> String {
    let mut out = String::new();
    for f in fields(header) {
        out.push_str(&String::from_utf8_lossy(f.name));
        out.push_str(": ");
        out.push_str(&rfc2047(&unfold(f.value)));
        out.push('\n');
    }
    out
}

/// The decoded text of every text part (and the header and text of embedded messages).
fn append_body_text(msg: &[u8], part: &Part, out: &mut String) {
    match &part.kind {
        PartKind::Multipart(children) => {
            for child in children {
                append_body_text(msg, child, out);
            }
        }
        PartKind::Message(inner) => {
            out.push_str(&decoded_header(
                msg.get(inner.header.clone()).unwrap_or_default(),
            ));
            append_body_text(msg, inner, out);
        }
        PartKind::Leaf if part.is_text() => {
            let raw = msg.get(part.body.clone()).unwrap_or_default();
            let decoded = decode_transfer(&part.encoding, raw).unwrap_or_else(|| raw.to_vec());
            let charset = param(&part.params, b"CHARSET").unwrap_or(b"us-ascii");
            out.push_str(&charset_to_utf8(charset, &decoded));
            out.push('\n');
        }
        PartKind::Leaf => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::date::parse_imap_date;
    use crate::message::tests::fixture_messages;

    fn meta() -> MessageMeta {
        MessageMeta {
            seq: 3,
            uid: 30,
            flags: Flags::SEEN,
            keywords: 0b10,
            recent: true,
            size: 1000,
            internal_date: 1_704_103_200, // 2024-01-01 10:00:00 UTC
            internal_tz_minutes: 0,
        }
    }

    fn search(msg: &[u8], key: &Key) -> bool {
        let m = meta();
        SearchContext::new(&m, msg, 1_704_103_200 + 3600).matches(key)
    }

    fn day(s: &str) -> i64 {
        parse_imap_date(s.as_bytes()).unwrap()
    }

    #[test]
    fn flag_size_number_and_date_keys_need_nothing() {
        let keys = [
            Key::Seen,
            Key::Not(Box::new(Key::Deleted)),
            Key::Keyword(Some(1)),
            Key::Not(Box::new(Key::Keyword(None))),
            Key::Recent,
            Key::SequenceSet(vec![(5, 1)]),
            Key::UidSet(vec![(30, 30)]),
            Key::Larger(999),
            Key::Smaller(1001),
            Key::On(day("1-Jan-2024")),
            Key::Since(day("1-Jan-2024")),
            Key::Before(day("2-Jan-2024")),
            Key::Younger(3600),
            Key::Older(3600),
        ];
        for key in &keys {
            assert_eq!(key.needs(), Needs::Nothing, "{key:?}");
            assert!(search(b"", key), "{key:?}");
        }
        for key in [
            Key::Old,
            Key::New,
            Key::Keyword(Some(0)),
            Key::Older(3601),
            Key::Younger(10),
            Key::Larger(1000),
        ] {
            assert!(!search(b"", &key), "{key:?}");
        }
        let and = Key::And(vec![Key::Seen, Key::Body(Needle::new("x"))]);
        assert_eq!(and.needs(), Needs::Message);
    }

    #[test]
    fn reference_mailbox_searches() {
        let msgs = fixture_messages();
        let hits = |key: Key| -> Vec<usize> {
            (0..msgs.len())
                .filter(|&i| search(&msgs[i], &key))
                .map(|i| i + 1)
                .collect()
        };
        assert_eq!(hits(Key::From(Needle::new("bob"))), [2]);
        assert_eq!(hits(Key::From(Needle::new("ALICE EXAMPLE"))), [1]);
        assert_eq!(hits(Key::Cc(Needle::new("dave@"))), [2]);
        assert_eq!(hits(Key::Body(Needle::new("body part one"))), [2]);
        assert_eq!(
            hits(Key::Body(Needle::new("Return-Path"))),
            Vec::<usize>::new()
        );
        assert_eq!(hits(Key::Text(Needle::new("return-path: <carol"))), [3]);
        assert_eq!(
            hits(Key::Header(b"message-id".to_vec(), Needle::new(""))),
            [1, 2, 3]
        );
        assert_eq!(hits(Key::SentOn(day("2-Jan-2024"))), [2]);
        assert_eq!(hits(Key::SentBefore(day("2-Jan-2024"))), [1]);
        assert_eq!(hits(Key::SentSince(day("2-Jan-2024"))), [2, 3]);
    }

    #[test]
    fn address_keys_see_through_comments_inside_addresses() {
        // imaptest search-addresses: c-client matches the written-out address too.
        let msg = b"From: <user-from (comment)@ (comment) domain.org>\r\nTo: Real <a@b.c>\r\n\r\n";
        assert!(search(msg, &Key::From(Needle::new("user-from@domain.org"))));
        assert!(search(msg, &Key::From(Needle::new("(comment)"))));
        assert!(search(msg, &Key::To(Needle::new("real <a@b.c>"))));
        assert!(!search(msg, &Key::From(Needle::new("user-from@other.org"))));
    }

    #[test]
    fn encoded_headers_and_bodies_are_decoded() {
        let msg = "Subject: =?UTF-8?B?R3LDvMOfZQ==?= und =?ISO-8859-1?Q?K=E4se?=\r\n\
            From: =?iso-8859-1?q?J=F6rg?= <j@x.de>\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
            --b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n\
            w4RwZmVsIHVuZCBCaXJuZW4=\r\n\
            --b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
            Stra=DFe mit sch=F6n=\r\nem Namen\r\n\
            --b--\r\n";
        let msg = msg.as_bytes();
        assert!(search(msg, &Key::Subject(Needle::new("grüße UND käse"))));
        // Simple case folding does not expand ß to ss (RFC 5051 i;unicode-casemap would).
        assert!(!search(msg, &Key::Subject(Needle::new("GRÜSSE"))));
        assert!(search(msg, &Key::From(Needle::new("JÖRG"))));
        assert!(search(msg, &Key::Body(Needle::new("äpfel und birnen"))));
        assert!(search(msg, &Key::Body(Needle::new("straße mit schönem"))));
        assert!(!search(msg, &Key::Body(Needle::new("w4RwZmVs"))));
        assert!(search(msg, &Key::Text(Needle::new("Käse"))));
    }
}
