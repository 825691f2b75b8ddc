//! Catching up with a mailbox file that did not shrink (deliveries, appends, flag rewrites in
//! place) without parsing it all again: the known messages' headers are re-read where they
//! were (their metadata may have been rewritten in place by a session: same length thanks to
//! UW's padding), and only what follows them is parsed. UIDs are unique, so a message whose
//! header still carries its UID at its old offset is the same message at the same place. Anything that does not look exactly like "same messages at the same
//! offsets, longer file" makes it give up, and the caller parses the whole file.
//!
//! After our own append into a file we knew ([`after_own_append`]), not even the headers are
//! re-read: only the appended tail is parsed.
//!
//! Owns reading only; never writes.

use super::fromline::is_from_line;
use super::meta::{
    keyword_bits, keyword_words, leading_number, status_flags, trim_spaces, value_after,
    write_xstatus, HeaderFilter, LineKind, MessageMeta, MAX_KEYWORDS,
};
use super::parse::{self, Entry, ParseError, Parsed, PseudoInfo, TailStart};
use crate::store::{Flags, MessageInfo};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// What we knew of the file when it was `old_len` bytes long.
pub(super) struct Known<'a> {
    pub old_len: u64,
    pub entries: &'a [Entry],
    pub infos: &'a [MessageInfo],
    pub uid_validity: u32,
    pub pseudo: Option<&'a PseudoInfo>,
}

/// Metadata read back from one header.
struct HeaderMeta {
    flags: Flags,
    old: bool,
    keywords: Option<Vec<u8>>,
    uid: u32,
    /// `X-IMAPbase` / `X-IMAP`: validity, UID-last, keyword names.
    base: Option<(u32, u32, Vec<String>)>,
    /// The base came from `X-IMAP` (a pseudo-message's header).
    base_is_pseudo: bool,
    /// The contiguous metadata block ending with the blank line, if not scattered.
    meta: Option<Vec<u8>>,
}

/// The whole file as [`parse::parse`] would see it, or `None` when only a full parse can say.
/// The leading known messages whose headers (with their UIDs) are still where they were are
/// kept; parsing resumes where the first one that is not would have started (or at the old
/// end of the file).
pub(super) fn reparse_known(
    file: &File,
    known: &Known<'_>,
    len: u64,
    now: i64,
) -> Result<Option<Parsed>, ParseError> {
    if known.entries.is_empty() {
        return Ok(None);
    }
    let mut buf = Vec::new();
    let pseudo_meta = match known.pseudo {
        Some(p) => match read_meta(file, len, p.from_off, p.next_off, None, &mut buf)? {
            Some(m) if buf.ends_with(PSEUDO_END) => Some(m),
            _ => return Ok(None),
        },
        None => None,
    };
    let mut metas = Vec::with_capacity(known.entries.len());
    for (i, (e, info)) in known.entries.iter().zip(known.infos).enumerate() {
        match read_meta(file, len, e.from_off, e.hdr_off, Some(e.body_off), &mut buf)? {
            Some(m) if m.uid == info.uid && (i == 0 || m.base.is_none()) => metas.push(m),
            _ => break,
        }
    }
    let base_holder = pseudo_meta.as_ref().or(metas.first());
    let Some(holder) = base_holder.filter(|m| m.base_is_pseudo == known.pseudo.is_some()) else {
        return Ok(None);
    };
    let Some((validity, uid_last, keywords)) = holder.base.clone() else {
        return Ok(None);
    };
    let verified = metas.len();
    let disk_uid_last = uid_last;
    let tail_offset = known
        .entries
        .get(verified)
        .map_or(known.old_len, |e| e.from_off);
    if validity != known.uid_validity || len < tail_offset || !ends_a_line(file, tail_offset)? {
        return Ok(None);
    }
    let mut out = Parsed {
        uid_validity: validity,
        uid_last,
        keywords,
        has_base: known.pseudo.is_none(),
        ..Parsed::default()
    };
    for (i, ((e, info), m)) in known.entries.iter().zip(known.infos).zip(metas).enumerate() {
        out.uid_last = out.uid_last.max(m.uid);
        let bits = m
            .keywords
            .as_deref()
            .map_or(0, |v| keyword_bits(v, &out.keywords));
        let canonical = m.meta.as_ref().is_some_and(|meta| {
            let mut scratch = Vec::new();
            let state = MessageMeta {
                flags: m.flags,
                keywords: bits,
                uid: m.uid,
                old: m.old,
            };
            write_xstatus(&mut scratch, &state, None, &out.keywords);
            &scratch == meta
        });
        if i == 0 {
            out.first_meta = m.meta.clone();
        }
        out.entries.push(Entry {
            disk_flags: m.flags,
            disk_keywords: bits,
            disk_old: m.old,
            canonical,
            ..e.clone()
        });
        out.infos.push(MessageInfo {
            flags: m.flags,
            keywords: bits,
            recent: !m.old,
            ..info.clone()
        });
    }
    let start = TailStart {
        offset: tail_offset,
        count: verified + usize::from(known.pseudo.is_some()),
        uid_validity: validity,
        uid_last: out.uid_last,
        prev_uid: out.infos.last().map_or(0, |i| i.uid),
        keywords: &out.keywords,
    };
    let Some(tail) = parse::parse_tail(file, &start, len, now)? else {
        return Ok(None);
    };
    match tail.entries.first() {
        // Whatever follows the verified messages must start exactly where they end.
        Some(first) if first.from_off != tail_offset => return Ok(None),
        None if tail_offset != len => return Ok(None),
        _ => {}
    }
    if verified == 0 && tail.entries.is_empty() {
        return Ok(None);
    }
    out.uid_last = tail.uid_last;
    out.needs_persist = tail.needs_persist;
    if verified == 0 {
        out.first_meta = tail.first_meta;
    }
    out.entries.extend(tail.entries);
    out.infos.extend(tail.infos);
    // As on disk (the parser's view), not as raised by the messages' UIDs: a rewrite
    // compares it with what must be written.
    out.pseudo = known.pseudo.map(|p| PseudoInfo {
        uid_validity: validity,
        uid_last: disk_uid_last,
        keywords: out.keywords.clone(),
        ..p.clone()
    });
    Ok(Some(out))
}

/// The whole file after our own append into a file we knew: `base` (the old messages, as the
/// append left them) plus the messages parsed from `tail_off` to `len`. Reads only the tail.
/// `None` when only a full parse can tell.
pub(super) fn after_own_append(
    file: &File,
    base: Parsed,
    tail_off: u64,
    len: u64,
    now: i64,
) -> Result<Option<Parsed>, ParseError> {
    let start = TailStart {
        offset: tail_off,
        count: base.entries.len() + usize::from(base.pseudo.is_some()),
        uid_validity: base.uid_validity,
        uid_last: base.uid_last,
        prev_uid: base.infos.last().map_or(0, |i| i.uid),
        keywords: &base.keywords,
    };
    let Some(tail) = parse::parse_tail(file, &start, len, now)? else {
        return Ok(None);
    };
    if tail.entries.first().map(|e| e.from_off) != Some(tail_off) {
        return Ok(None);
    }
    let mut out = base;
    // The first message's block is the first appended one's when there was none before.
    if out.entries.is_empty() {
        out.first_meta = tail.first_meta;
    }
    out.uid_last = tail.uid_last;
    out.needs_persist = tail.needs_persist;
    out.entries.extend(tail.entries);
    out.infos.extend(tail.infos);
    Ok(Some(out))
}

/// How the pseudo-message's text ends (see `meta::pseudo_message`).
const PSEUDO_END: &[u8] = b"initial values.\n\n";

/// The byte before `at` is a newline (new messages start at a line start).
fn ends_a_line(file: &File, at: u64) -> io::Result<bool> {
    if at == 0 {
        return Ok(true);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, at - 1)?;
    Ok(last[0] == b'\n')
}

/// Read (within the file's `len` bytes) the From line at `from_off` (ending at `hdr_or_end`) and the header up to `body_off`;
/// for the pseudo-message (`body_off` unknown) read up to `hdr_or_end`, its end, and take the
/// header up to its first blank line. `None` when the bytes are no longer a message header of
/// that shape.
fn read_meta(
    file: &File,
    len: u64,
    from_off: u64,
    hdr_or_end: u64,
    body_off: Option<u64>,
    buf: &mut Vec<u8>,
) -> io::Result<Option<HeaderMeta>> {
    let end = body_off.unwrap_or(hdr_or_end);
    if end <= from_off || end > len || end - from_off > 16 << 20 {
        return Ok(None);
    }
    buf.resize((end - from_off) as usize, 0);
    file.read_exact_at(buf, from_off)?;
    let Some(line_end) = memchr::memchr(b'\n', buf) else {
        return Ok(None);
    };
    if !is_from_line(&buf[..=line_end]) {
        return Ok(None);
    }
    if body_off.is_some() && (line_end + 1) as u64 != hdr_or_end - from_off {
        return Ok(None);
    }
    Ok(header_meta(&buf[line_end + 1..], body_off.is_some()))
}

/// Interpret the metadata lines of a header (exact letter case, as the parser). With `whole`,
/// the header must end exactly at the end of `raw` with its blank line.
fn header_meta(raw: &[u8], whole: bool) -> Option<HeaderMeta> {
    let mut m = HeaderMeta {
        flags: Flags::NONE,
        old: false,
        keywords: None,
        uid: 0,
        base: None,
        base_is_pseudo: false,
        meta: Some(Vec::new()),
    };
    let mut filter = HeaderFilter::new();
    let mut rest = raw;
    let mut ended = false;
    while !rest.is_empty() {
        let n = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let line = &rest[..n];
        rest = &rest[n..];
        match filter.classify(line, true) {
            LineKind::End => {
                if let Some(meta) = m.meta.as_mut() {
                    meta.extend_from_slice(line);
                }
                ended = true;
                break;
            }
            LineKind::Internal => {
                interpret(line, &mut m);
                if let Some(meta) = m.meta.as_mut() {
                    meta.extend_from_slice(line);
                }
            }
            LineKind::Visible | LineKind::ContentLength => {
                if m.meta.as_ref().is_some_and(|v| !v.is_empty()) {
                    m.meta = None;
                }
            }
        }
    }
    if !ended || (whole && !rest.is_empty()) {
        return None;
    }
    Some(m)
}

fn interpret(line: &[u8], m: &mut HeaderMeta) {
    if let Some(v) = value_after(line, b"Status:").or_else(|| value_after(line, b"X-Status:")) {
        status_flags(v, &mut m.flags, &mut m.old);
    } else if let Some(v) = value_after(line, b"X-Keywords:") {
        m.keywords = Some(v.to_vec());
    } else if let Some(v) = value_after(line, b"X-IMAPbase:") {
        m.base = base_value(v);
        m.base_is_pseudo = false;
    } else if let Some(v) = value_after(line, b"X-IMAP:") {
        m.base = base_value(v);
        m.base_is_pseudo = true;
    } else if let Some(v) = value_after(line, b"X-UID:") {
        m.uid = leading_number(v)
            .and_then(|(n, _)| u32::try_from(n).ok())
            .unwrap_or(0);
    }
}

pub(super) fn base_value(v: &[u8]) -> Option<(u32, u32, Vec<String>)> {
    let (validity, rest) = leading_number(v)?;
    let (last, rest) = leading_number(rest)?;
    let names = keyword_words(trim_spaces(rest))
        .take(MAX_KEYWORDS)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    Some((
        u32::try_from(validity).ok()?,
        u32::try_from(last).ok()?,
        names,
    ))
}
