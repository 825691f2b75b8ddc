//! Message-level IMAP computations: the MIME structure of one message ([`mime`]), ENVELOPE
//! ([`envelope`]), BODYSTRUCTURE, BODY[section] ranges and BINARY decoding ([`section`]),
//! SEARCH matching ([`search`]), SORT ([`mod@sort`]) and THREAD ([`thread`]).
//!
//! Input is always one message as RFC 822 bytes with CRLF line ends (metadata headers already
//! removed by the store). Everything here is computation over those bytes: it never touches a
//! mailbox, and never panics on any input (malformed MIME is parsed on a best-effort basis,
//! nesting is depth-limited). Only [`stream`] reads, through a caller's [`stream::Source`], for
//! messages too large to hold in memory: it yields the same results from a bounded window.
//!
//! Typical use by a session:
//! - FETCH ENVELOPE / BODY / BODYSTRUCTURE: `let tree = parse(&msg);`, then
//!   `Envelope::parse(&msg[tree.root.header.clone()]).write_imap(out)` and
//!   `tree.write_structure(&msg, out, extended)`.
//! - `BODY[section]<partial>`: `section_range(&tree, &msg, &section)` gives a range to stream (or
//!   synthesized bytes for HEADER.FIELDS); `partial(len, origin, count)` narrows it; `None`
//!   means the part does not exist (send an empty string).
//! - `BINARY[part]` / BINARY.SIZE: `binary(&tree, &msg, &part)`; `BinaryError::UnknownCte` maps
//!   to `NO [UNKNOWN-CTE]`.
//! - SEARCH: build a [`Key`]; `key.needs()` says whether to read nothing, the header, or the
//!   whole message; then `SearchContext::new(&meta, bytes, now).matches(&key)`.
//! - A large message: `stream::parse_streamed(&mut source, len)` gives the same tree plus the
//!   header blocks of its messages ([`stream::Headers`], a [`stream::MessageBytes`]); then
//!   `write_structure_with`, `section_range_with`, [`binary_source`] with
//!   [`stream::decode_range`], and [`stream::body_text_contains`] for SEARCH BODY/TEXT (the
//!   context built with `SearchContext::with_body_hits`).
//! - SORT / THREAD: `MessageKeys::new(header, &meta)` once per message, then [`sort()`],
//!   [`ordered_subject`] or [`references`], and [`write_threads`].

pub mod binary;
pub mod date;
pub mod decode;
pub mod envelope;
pub mod header;
pub mod mime;
pub mod search;
pub mod section;
pub mod sort;
pub mod stream;
pub mod thread;

pub use envelope::{Address, Envelope};
pub use mime::{decoded_param, parse, MimeTree, Part, PartKind};
pub use search::{Key, MessageMeta, Needle, Needs, SearchContext};
pub use section::{
    binary, binary_source, partial, section_range, section_range_with, BinaryError, Section,
    SectionData, SectionText, Transfer,
};
pub use sort::{base_subject, sort, MessageKeys, SortCriterion, SortKey};
pub use thread::{ordered_subject, references, write_threads, ThreadNode};

/// Write an IMAP `string`: quoted when every byte is safe in a quoted string, otherwise a
/// synchronizing literal `{n}\r\n...` (CR, LF, NUL, 8-bit, `"` and `\` force a literal).
pub fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s
        .iter()
        .all(|&c| c != 0 && c != b'\r' && c != b'\n' && c < 0x80 && c != b'"' && c != b'\\');
    if quotable {
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else {
        out.push(b'{');
        out.extend_from_slice(s.len().to_string().as_bytes());
        out.extend_from_slice(b"}\r\n");
        out.extend_from_slice(s);
    }
}

/// Write an IMAP `nstring`: `NIL` for `None`, else [`write_string`].
pub fn write_nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => write_string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The three messages of the UW reference mailbox as the store presents them (CRLF, metadata
    /// headers removed, the mbox separator line dropped).
    pub(crate) fn fixture_messages() -> Vec<Vec<u8>> {
        let mbox: &[u8] = include_bytes!("../../../tests/fixtures/inbox.mbox");
        let text = String::from_utf8_lossy(mbox);
        let mut messages: Vec<Vec<String>> = Vec::new();
        let mut previous_blank = true;
        for line in text.lines() {
            let separator = previous_blank
                && line.starts_with("From ")
                && line.split(' ').nth(1).is_some_and(|w| w.contains('@'));
            previous_blank = line.is_empty();
            if separator {
                messages.push(Vec::new());
            } else if let Some(m) = messages.last_mut() {
                if !line.starts_with("Status:") {
                    m.push(line.to_string());
                }
            }
        }
        messages
            .into_iter()
            .map(|mut lines| {
                if lines.last().is_some_and(|l| l.is_empty()) {
                    lines.pop();
                }
                lines
                    .iter()
                    .flat_map(|l| format!("{l}\r\n").into_bytes())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn strings_are_quoted_or_literal() {
        let mut out = Vec::new();
        write_nstring(&mut out, Some(b"a b"));
        out.push(b' ');
        write_nstring(&mut out, None);
        out.push(b' ');
        write_string(&mut out, b"x\"y");
        out.push(b' ');
        write_string(&mut out, "é".as_bytes());
        assert_eq!(out, b"\"a b\" NIL {3}\r\nx\"y {2}\r\n\xc3\xa9");
    }
}

#[cfg(test)]
mod robustness_tests {
    use super::envelope::Envelope;
    use super::sort::MessageKeys;
    use super::*;

    /// Deterministic xorshift, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Run everything over one input; the only requirement is not to panic and to keep
    /// ranges inside the message.
    fn exercise(msg: &[u8]) {
        let tree = parse(msg);
        let mut out = Vec::new();
        tree.write_structure(msg, &mut out, true);
        Envelope::parse(msg.get(tree.root.header.clone()).unwrap_or_default()).write_imap(&mut out);
        for part in [
            vec![],
            vec![1],
            vec![2],
            vec![1, 1],
            vec![2, 1],
            vec![3, 2, 1],
        ] {
            for text in [
                None,
                Some(SectionText::Header),
                Some(SectionText::Text),
                Some(SectionText::Mime),
            ] {
                let spec = Section {
                    part: part.clone(),
                    text,
                };
                if let Some(SectionData::Range(r)) = section_range(&tree, msg, &spec) {
                    assert!(r.start <= r.end && r.end <= msg.len());
                }
            }
            let _ = binary(&tree, msg, &part);
        }
        let meta = MessageMeta::default();
        let key = Key::Or(
            Box::new(Key::Text(Needle::new("zz"))),
            Box::new(Key::SentOn(0)),
        );
        SearchContext::new(&meta, msg, 0).matches(&key);
        let _ = MessageKeys::new(msg, &meta);
    }

    #[test]
    fn mutated_messages_never_panic() {
        let mut seeds = tests::fixture_messages();
        seeds.push(b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: message/rfc822\r\n\r\nMIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary=b\r\n\r\n--b\r\n\r\nSubject: =?utf-8?B?w6k=?=\r\n\r\nx\r\n--b--\r\n--a--\r\n".to_vec());
        let alphabet: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"--",
            b"=?",
            b"?=",
            b":",
            b"\"",
            b"(",
            b")",
            b"<",
            b">",
            b";",
            b"=",
            b" ",
            b"\xff",
            b"\0",
            b"boundary=",
            b"Content-Type: multipart/mixed; boundary=a\r\n",
            b"--a\r\n",
            b"--XYZ--",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..3000 {
            let mut msg = seeds[round % seeds.len()].clone();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(msg.len() + 1);
                match rng.below(3) {
                    0 => {
                        let piece = alphabet[rng.below(alphabet.len())];
                        msg.splice(at..at, piece.iter().copied());
                    }
                    1 if at < msg.len() => {
                        let end = (at + rng.below(20)).min(msg.len());
                        msg.drain(at..end);
                    }
                    _ => msg.truncate(at),
                }
            }
            exercise(&msg);
        }
    }
}
