//! Parsing an mbox file into the compact index, with UW-IMAP imap-2007f's rules (`unix_parse`):
//! strict `From ` lines, metadata headers, UID validation and assignment, the folder
//! pseudo-message, and the blank separator line that is not part of a message.
//!
//! Owns reading only; never writes (the caller decides whether assigned UIDs get persisted).

use super::fromline::{parse_from_line, FromDate};
use super::lines::{line_presented_len, Found, LineReader};
use super::meta::{
    keyword_bits, keyword_words, leading_number, status_flags, trim_spaces, value_after,
    write_xstatus, HeaderFilter, LineKind, MessageMeta, MAX_KEYWORDS,
};
use crate::store::{Flags, MessageInfo};
use memchr::memmem::Finder;
use std::fs::File;
use std::io;

/// Where one message lies in the file, and what its metadata said there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// Start of the `From ` line.
    pub from_off: u64,
    /// Start of the RFC 822 header (end of the `From ` line).
    pub hdr_off: u64,
    /// Start of the body (just after the header's blank line).
    pub body_off: u64,
    /// End of the body, before the blank separator line.
    pub text_end: u64,
    /// Start of the next message's `From ` line, or end of file.
    pub next_off: u64,
    /// Flags and keywords as read from the file.
    pub disk_flags: Flags,
    pub disk_keywords: u64,
    /// `Status` carried `O` (a session has seen the message).
    pub disk_old: bool,
    /// The file already holds exactly the metadata block we would write for this message (as a
    /// message other than the first).
    pub canonical: bool,
}

/// The folder pseudo-message found at the start of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PseudoInfo {
    pub from_off: u64,
    pub next_off: u64,
    pub uid_validity: u32,
    pub uid_last: u32,
    pub keywords: Vec<String>,
}

/// A whole parsed mailbox.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub entries: Vec<Entry>,
    pub infos: Vec<MessageInfo>,
    pub uid_validity: u32,
    pub uid_last: u32,
    pub keywords: Vec<String>,
    pub pseudo: Option<PseudoInfo>,
    /// The first message carried `X-IMAPbase`.
    pub has_base: bool,
    /// Metadata block of the first message exactly as in the file (`None`: absent or scattered).
    pub first_meta: Option<Vec<u8>>,
    /// UIDs or a UIDVALIDITY were made up and are not yet in the file.
    pub needs_persist: bool,
}

/// Why a file is not an mbox.
#[derive(Debug)]
pub(super) enum ParseError {
    Io(io::Error),
    /// Text at this offset is where a `From ` line should be.
    NotMbox(u64, String),
}

impl From<io::Error> for ParseError {
    fn from(e: io::Error) -> ParseError {
        ParseError::Io(e)
    }
}

/// Per-message state while its lines are read.
struct MessageState {
    number: usize,
    from_off: u64,
    hdr_off: u64,
    date: FromDate,
    flags: Flags,
    keywords: u64,
    old: bool,
    uid: u32,
    header_size: u64,
    meta: Vec<u8>,
    meta_scattered: bool,
}

struct Parser {
    out: Parsed,
    prev_uid: u32,
    pseudo_seen: bool,
    renumber: bool,
    now: i64,
    scratch: Vec<u8>,
}

/// Parse the first `len` bytes of `file`. `now` becomes the UIDVALIDITY if one must be made up.
pub(super) fn parse(file: &File, len: u64, now: i64) -> Result<Parsed, ParseError> {
    let parser = Parser {
        out: Parsed::default(),
        prev_uid: 0,
        pseudo_seen: false,
        renumber: false,
        now,
        scratch: Vec::new(),
    };
    let mut parser = run(parser, file, 0, len, 0)?;
    parser.finish();
    Ok(parser.out)
}

/// Where the messages already known end, for [`parse_tail`].
pub(super) struct TailStart<'a> {
    /// Start of the first new message (just after the known ones).
    pub offset: u64,
    /// How many messages (the pseudo-message included) precede it.
    pub count: usize,
    pub uid_validity: u32,
    pub uid_last: u32,
    /// UID of the last known message.
    pub prev_uid: u32,
    pub keywords: &'a [String],
}

/// Parse only the messages from `start.offset` to `len`, continuing the state of the known
/// ones. `None` when the new part changes what the known part means (UIDs that force a
/// reassignment), so that the caller must parse the whole file.
pub(super) fn parse_tail(
    file: &File,
    start: &TailStart<'_>,
    len: u64,
    now: i64,
) -> Result<Option<Parsed>, ParseError> {
    let parser = Parser {
        out: Parsed {
            uid_validity: start.uid_validity,
            uid_last: start.uid_last,
            keywords: start.keywords.to_vec(),
            ..Parsed::default()
        },
        prev_uid: start.prev_uid,
        pseudo_seen: false,
        renumber: false,
        now,
        scratch: Vec::new(),
    };
    let parser = run(parser, file, start.offset, len, start.count)?;
    if parser.renumber || parser.out.uid_validity != start.uid_validity {
        return Ok(None);
    }
    Ok(Some(parser.out))
}

/// Read messages from `offset` to `len`; `before` messages precede `offset`.
fn run(
    mut parser: Parser,
    file: &File,
    offset: u64,
    len: u64,
    before: usize,
) -> Result<Parser, ParseError> {
    let mut reader = LineReader::new(file, offset, len);
    let separator = Finder::new(b"\nFrom ");
    let Some((mut from_off, mut from_len, mut date)) = first_from_line(&mut reader)? else {
        return Ok(parser);
    };
    let mut number = before;
    loop {
        number += 1;
        let mut msg = MessageState {
            number,
            from_off,
            hdr_off: from_off + from_len,
            date,
            flags: Flags::NONE,
            keywords: 0,
            old: false,
            uid: 0,
            header_size: 0,
            meta: Vec::new(),
            meta_scattered: false,
        };
        let body_off = parser.read_header(&mut reader, &mut msg)?;
        let (text_end, body_size, next) = read_body(&mut reader, &separator, body_off)?;
        let next_off = next.map_or(len, |n| n.0);
        parser.finish_message(msg, body_off, text_end, next_off, body_size);
        match next {
            Some((off, line_len, d)) => {
                from_off = off;
                from_len = line_len;
                date = d;
            }
            None => break,
        }
    }
    Ok(parser)
}

/// Skip leading blank space (as UW does for broken MTAs); the first line must be a `From ` line.
fn first_from_line(
    reader: &mut LineReader<'_>,
) -> Result<Option<(u64, u64, FromDate)>, ParseError> {
    while let Some(line) = reader.next_line()? {
        let skip = line
            .bytes
            .iter()
            .take_while(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
            .count();
        if skip == line.bytes.len() {
            continue;
        }
        let rest = &line.bytes[skip..];
        return match parse_from_line(rest) {
            Some(date) if line.at_line_start => {
                Ok(Some((line.offset + skip as u64, rest.len() as u64, date)))
            }
            _ => {
                let shown = String::from_utf8_lossy(&rest[..rest.len().min(40)]).into_owned();
                Err(ParseError::NotMbox(line.offset + skip as u64, shown))
            }
        };
    }
    Ok(None)
}

/// Pass over the body up to the next `From ` line. Returns the end of the text (before a
/// blank separator line), the presented body size, and the next `From ` line if any.
fn read_body(
    reader: &mut LineReader<'_>,
    separator: &Finder<'_>,
    body_off: u64,
) -> Result<(u64, u64, Option<Found<FromDate>>), ParseError> {
    let (skipped, next) = reader.skip_to_line(separator, parse_from_line)?;
    let blank = skipped.trailing_blank();
    // A blank line before the next `From ` line (or the end) separates; it is not text.
    let text_end = body_off + skipped.len - blank;
    let size = skipped.presented_len() - if blank > 0 { 2 } else { 0 };
    Ok((text_end, size, next))
}

impl Parser {
    /// Read header lines; returns the offset of the body.
    fn read_header(
        &mut self,
        reader: &mut LineReader<'_>,
        msg: &mut MessageState,
    ) -> Result<u64, ParseError> {
        let mut filter = HeaderFilter::new();
        let mut end = msg.hdr_off;
        while let Some(line) = reader.next_line()? {
            end = line.offset + line.bytes.len() as u64;
            let kind = filter.classify(line.bytes, line.at_line_start);
            match kind {
                LineKind::End => {
                    msg.header_size += 2;
                    msg.meta.extend_from_slice(line.bytes);
                    return Ok(end);
                }
                LineKind::Internal => {
                    if line.at_line_start {
                        self.interpret(line.bytes, msg);
                    }
                    msg.meta.extend_from_slice(line.bytes);
                }
                LineKind::Visible | LineKind::ContentLength => {
                    if kind == LineKind::Visible {
                        msg.header_size += line_presented_len(line.bytes);
                    }
                    if !msg.meta.is_empty() {
                        msg.meta_scattered = true;
                        msg.meta.clear();
                    }
                }
            }
        }
        Ok(end)
    }

    /// Apply one of UW's metadata header lines (exact letter case only, as UW).
    fn interpret(&mut self, line: &[u8], msg: &mut MessageState) {
        if let Some(v) = value_after(line, b"Status:").or_else(|| value_after(line, b"X-Status:")) {
            status_flags(v, &mut msg.flags, &mut msg.old);
        } else if let Some(v) = value_after(line, b"X-Keywords:") {
            msg.keywords = keyword_bits(v, &self.out.keywords);
        } else if let Some(v) = value_after(line, b"X-IMAPbase:") {
            self.base_header(v, msg, false);
        } else if let Some(v) = value_after(line, b"X-IMAP:") {
            self.base_header(v, msg, true);
        } else if let Some(v) = value_after(line, b"X-UID:") {
            self.uid_header(v, msg);
        }
    }

    fn base_header(&mut self, value: &[u8], msg: &MessageState, pseudo: bool) {
        if msg.number != 1 || self.out.uid_validity != 0 {
            return;
        }
        let Some((validity, rest)) = leading_number(value) else {
            return;
        };
        let Some((last, rest)) = leading_number(rest) else {
            return;
        };
        let (Ok(validity), Ok(last)) = (u32::try_from(validity), u32::try_from(last)) else {
            return;
        };
        if validity == 0 {
            return;
        }
        self.out.uid_validity = validity;
        self.out.uid_last = last;
        if pseudo {
            self.pseudo_seen = true;
        } else {
            self.out.has_base = true;
        }
        self.out.keywords = keyword_words(trim_spaces(rest))
            .take(MAX_KEYWORDS)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
    }

    fn uid_header(&mut self, value: &[u8], msg: &mut MessageState) {
        if self.out.uid_validity == 0 || (msg.number == 1 && self.pseudo_seen) {
            return;
        }
        let uid = leading_number(value)
            .and_then(|(n, _)| u32::try_from(n).ok())
            .unwrap_or(0);
        if msg.uid != 0 || uid <= self.prev_uid {
            // Duplicate or non-increasing: forget the UID validity, UIDs get reassigned.
            self.out.uid_validity = 0;
            msg.uid = 0;
            return;
        }
        msg.uid = uid;
        self.prev_uid = uid;
        self.out.uid_last = self.out.uid_last.max(uid);
    }

    fn finish_message(
        &mut self,
        mut msg: MessageState,
        body_off: u64,
        text_end: u64,
        next_off: u64,
        body_size: u64,
    ) {
        if msg.number == 1 && self.pseudo_seen {
            self.out.pseudo = Some(PseudoInfo {
                from_off: msg.from_off,
                next_off,
                uid_validity: self.out.uid_validity,
                uid_last: self.out.uid_last,
                keywords: self.out.keywords.clone(),
            });
            return;
        }
        if msg.uid == 0 {
            match self.out.uid_last.checked_add(1) {
                Some(uid) => {
                    self.out.uid_last = uid;
                    msg.uid = uid;
                }
                None => {
                    self.renumber = true;
                    msg.uid = u32::MAX;
                }
            }
            self.prev_uid = msg.uid;
            self.out.needs_persist = true;
        }
        let scattered = msg.meta_scattered || msg.meta.is_empty();
        let canonical = !scattered && {
            self.scratch.clear();
            let meta = MessageMeta {
                flags: msg.flags,
                keywords: msg.keywords,
                uid: msg.uid,
                old: msg.old,
            };
            write_xstatus(&mut self.scratch, &meta, None, &self.out.keywords);
            self.scratch == msg.meta
        };
        if self.out.entries.is_empty() {
            self.out.first_meta = if scattered { None } else { Some(msg.meta) };
        }
        self.out.entries.push(Entry {
            from_off: msg.from_off,
            hdr_off: msg.hdr_off,
            body_off,
            text_end,
            next_off,
            disk_flags: msg.flags,
            disk_keywords: msg.keywords,
            disk_old: msg.old,
            canonical,
        });
        self.out.infos.push(MessageInfo {
            uid: msg.uid,
            flags: msg.flags,
            keywords: msg.keywords,
            recent: !msg.old,
            size: msg.header_size + body_size,
            internal_date: msg.date.epoch,
            internal_tz_minutes: msg.date.tz_minutes,
        });
    }

    fn finish(&mut self) {
        if self.renumber {
            // UID space exhausted: start a new epoch, as a fresh mailbox would.
            self.out.uid_validity = 0;
            for (i, info) in self.out.infos.iter_mut().enumerate() {
                info.uid = i as u32 + 1;
            }
            self.out.uid_last = self.out.infos.len() as u32;
        }
        if self.out.uid_validity == 0 {
            self.out.uid_validity = u32::try_from(self.now).unwrap_or(1).max(1);
            if !self.out.entries.is_empty() {
                self.out.needs_persist = true;
            }
        }
    }
}
