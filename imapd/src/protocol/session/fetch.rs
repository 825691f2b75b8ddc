//! FETCH and UID FETCH: every RFC 3501 data item, `BODY[section]<partial>` (HEADER.FIELDS(.NOT),
//! MIME, TEXT, nested message/rfc822), BODY.PEEK, and RFC 3516 BINARY / BINARY.SIZE.
//!
//! Owns what a FETCH response says and the implicit `\Seen`. Whole-message items (RFC822,
//! BODY[] and their partials) are streamed from the store in bounded chunks. Items that need
//! the MIME structure parse the message once and keep the last one parsed: a small message
//! (up to [`STREAM_ABOVE`] octets) is read into memory; a larger one is parsed by streaming
//! it, keeping only its MIME tree and the header blocks of its messages, and every section,
//! BINARY decoding and BINARY.SIZE is then streamed from the store again. Memory per FETCH
//! stays bounded whatever the message size. Never sends EXPUNGE.

use super::format::internal_date;
use super::select::Selected;
use super::{Backend, Reply, Session, Transport};
use crate::message::stream::{self, decode_range, Headers, MessageBytes, Source};
use crate::message::{self, BinaryError, Envelope, MimeTree, SectionData, Transfer};
use crate::protocol::command::{FetchItem, Partial, Section, SectionText};
use crate::wire::parser::SequenceSet;
use crate::wire::response::{string_form, ResponseWriter, StringForm};
use common::log;
use common::store::{is_mailbox_changed, Flags, Mailbox};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::rc::Rc;

/// Messages larger than this are parsed by streaming them rather than read into memory.
pub(super) const STREAM_ABOVE: u64 = 1024 * 1024;

/// One message parsed: its MIME tree and its bytes (small messages) or the header blocks of
/// its messages (large ones, whose other bytes are read from the store when needed).
pub(crate) struct Loaded {
    pub uid: u32,
    pub tree: MimeTree,
    pub content: Content,
}

pub(crate) enum Content {
    Whole(Vec<u8>),
    Streamed(Headers),
}

impl Loaded {
    /// What is in memory of the message (all of it, or its message headers).
    pub fn bytes(&self) -> &dyn MessageBytes {
        match &self.content {
            Content::Whole(bytes) => bytes,
            Content::Streamed(headers) => headers,
        }
    }

    /// The whole message, when it is in memory.
    pub fn whole(&self) -> Option<&[u8]> {
        match &self.content {
            Content::Whole(bytes) => Some(bytes),
            Content::Streamed(_) => None,
        }
    }
}

/// Message `index` of a mailbox as a [`Source`]: each reader is a fresh `open_message`.
pub(super) struct StoreMessage<'m> {
    pub mailbox: &'m mut dyn Mailbox,
    pub index: usize,
}

impl Source for StoreMessage<'_> {
    fn open_at(&mut self, offset: usize) -> io::Result<Box<dyn Read + '_>> {
        let offset = u64::try_from(offset).map_err(io::Error::other)?;
        self.mailbox.open_message_at(self.index, offset)
    }
}

/// Message `idx` parsed, from the cache when it is the last one.
pub(super) fn load(sel: &mut Selected, idx: usize) -> io::Result<Rc<Loaded>> {
    let info = &sel.mailbox.messages()[idx];
    let (uid, size) = (info.uid, info.size);
    if let Some(cached) = sel.cache.as_ref().filter(|c| c.uid == uid) {
        return Ok(Rc::clone(cached));
    }
    let loaded = if size > STREAM_ABOVE {
        let len = usize::try_from(size).map_err(io::Error::other)?;
        let mut source = StoreMessage {
            mailbox: &mut *sel.mailbox,
            index: idx,
        };
        let streamed = stream::parse_streamed(&mut source, len)?;
        Loaded {
            uid,
            tree: streamed.tree,
            content: Content::Streamed(streamed.headers),
        }
    } else {
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        sel.mailbox
            .open_message(idx)?
            .take(size)
            .read_to_end(&mut bytes)?;
        Loaded {
            uid,
            tree: message::parse(&bytes),
            content: Content::Whole(bytes),
        }
    };
    let loaded = Rc::new(loaded);
    sel.cache = Some(Rc::clone(&loaded));
    Ok(loaded)
}

/// Does fetching `item` set `\Seen`?
fn marks_seen(item: &FetchItem) -> bool {
    match item {
        FetchItem::Rfc822 | FetchItem::Rfc822Text => true,
        FetchItem::BodySection { peek, .. } | FetchItem::Binary { peek, .. } => !peek,
        _ => false,
    }
}

fn is_whole_message(section: &Section) -> bool {
    section.part.is_empty() && section.text.is_none()
}

/// Does `item` need the parsed message (rather than the index or a stream)?
/// Does `item` read the message's bytes (not just the index)?
fn reads_message(item: &FetchItem) -> bool {
    !matches!(
        item,
        FetchItem::Flags | FetchItem::Uid | FetchItem::Rfc822Size | FetchItem::InternalDate
    )
}

fn needs_parse(item: &FetchItem) -> bool {
    match item {
        FetchItem::Envelope
        | FetchItem::Body
        | FetchItem::BodyStructure
        | FetchItem::Rfc822Header
        | FetchItem::Rfc822Text
        | FetchItem::Binary { .. }
        | FetchItem::BinarySize { .. } => true,
        FetchItem::BodySection { section, .. } => !is_whole_message(section),
        _ => false,
    }
}

/// A header field name as echoed in `HEADER.FIELDS (...)`.
fn echo_field(name: &str) -> String {
    match string_form(name.as_bytes(), true) {
        StringForm::Atom => name.to_string(),
        _ => {
            let clean: String = name
                .chars()
                .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
                .collect();
            format!("\"{clean}\"")
        }
    }
}

/// The section specifier as echoed in the response (`1.2.HEADER.FIELDS (FROM TO)`).
fn section_spec(section: &Section) -> String {
    let mut spec: Vec<String> = section.part.iter().map(u32::to_string).collect();
    if let Some(text) = &section.text {
        spec.push(match text {
            SectionText::Header => "HEADER".into(),
            SectionText::Text => "TEXT".into(),
            SectionText::Mime => "MIME".into(),
            SectionText::HeaderFields(names) | SectionText::HeaderFieldsNot(names) => {
                let kind = if matches!(text, SectionText::HeaderFields(_)) {
                    "HEADER.FIELDS"
                } else {
                    "HEADER.FIELDS.NOT"
                };
                let names: Vec<String> = names.iter().map(|n| echo_field(n)).collect();
                format!("{kind} ({})", names.join(" "))
            }
        });
    }
    spec.join(".")
}

fn to_message_section(section: &Section) -> message::Section {
    let bytes = |names: &[String]| names.iter().map(|n| n.as_bytes().to_vec()).collect();
    message::Section {
        part: section.part.clone(),
        text: section.text.as_ref().map(|t| match t {
            SectionText::Header => message::SectionText::Header,
            SectionText::Text => message::SectionText::Text,
            SectionText::Mime => message::SectionText::Mime,
            SectionText::HeaderFields(n) => message::SectionText::HeaderFields(bytes(n)),
            SectionText::HeaderFieldsNot(n) => message::SectionText::HeaderFieldsNot(bytes(n)),
        }),
    }
}

fn partial_suffix(partial: Option<Partial>) -> String {
    partial.map_or(String::new(), |p| format!("<{}>", p.origin))
}

fn narrow(len: usize, partial: Option<Partial>) -> std::ops::Range<usize> {
    match partial {
        Some(p) => message::partial(len, u64::from(p.origin), Some(u64::from(p.length))),
        None => 0..len,
    }
}

/// A `string` holding `bytes`: a literal (as UW sends message text), `""` when empty.
fn write_text(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    if bytes.is_empty() {
        return out.write_all(b"\"\"");
    }
    write!(out, "{{{}}}\r\n", bytes.len())?;
    out.write_all(bytes)
}

/// What went wrong with one message that the tagged response must say.
#[derive(Default)]
struct Trouble {
    missing: bool,
    unknown_cte: bool,
}

impl Trouble {
    /// Message `pos` could not be read (the disk failed, or the mailbox kept changing): log
    /// it, and answer NO after going on with the other messages.
    fn unreadable(&mut self, sel: &Selected, pos: usize, e: &io::Error, who: &str) {
        log::err(&format!(
            "FETCH: cannot read message {} of {}: {e} {who}",
            pos + 1,
            sel.mailbox.path().display()
        ));
        self.missing = true;
    }
}

impl<T: Transport, B: Backend> Session<'_, T, B> {
    pub(super) fn fetch(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        items: &[FetchItem],
    ) -> io::Result<Reply> {
        let who = self.who();
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        let positions = match sel.positions(set, uid) {
            Ok(p) => p,
            Err(reply) => return Ok(reply),
        };
        let mut items = items.to_vec();
        if uid && !items.contains(&FetchItem::Uid) {
            items.insert(0, FetchItem::Uid);
        }
        let sets_seen = !sel.read_only && items.iter().any(marks_seen);
        let out: &mut dyn Write = &mut *self.client;
        let mut trouble = Trouble::default();
        let mut seen_changed = false;
        let reads = items.iter().any(reads_message);
        for pos in positions {
            let idx = match locate(sel, pos, reads, &who) {
                Ok(Some(idx)) => idx,
                Ok(None) => {
                    trouble.missing = true;
                    continue;
                }
                Err(e) => {
                    trouble.unreadable(sel, pos, &e, &who);
                    continue;
                }
            };
            // A catch-up may have brought keywords the client has not heard of: FLAGS first
            // (RFC 3501 7.2.6), then a FETCH that may carry them.
            sel.announce_keywords(out)?;
            let told = fetch_one(out, sel, pos, idx, &items, sets_seen, &mut trouble, &who);
            sel.mailbox.release_message();
            seen_changed |= told?;
        }
        if seen_changed {
            if let Err(e) = sel.persist_flags() {
                log::err(&format!(
                    "Error writing \\Seen to {}: {e} {who}",
                    sel.mailbox.path().display()
                ));
            }
        }
        Ok(if trouble.unknown_cte {
            Reply::no("[UNKNOWN-CTE] Unknown Content-Transfer-Encoding in a requested part")
        } else if trouble.missing {
            Reply::no("Some of the requested messages no longer exist")
        } else {
            Reply::ok("FETCH completed")
        })
    }
}

/// The store index of view position `pos` (`None`: expunged), and when `hold`, its message
/// held readable until released, so that the bytes a response announces can be sent. A
/// mailbox another process rewrote since the command began is caught up with first (the
/// client hears of the changes after the command, as always).
fn locate(sel: &mut Selected, pos: usize, hold: bool, who: &str) -> io::Result<Option<usize>> {
    for _ in 0..3 {
        let Some(idx) = sel.index_of(pos) else {
            return Ok(None);
        };
        if !hold {
            return Ok(Some(idx));
        }
        match sel.mailbox.hold_message(idx) {
            Ok(()) => return Ok(Some(idx)),
            Err(e) if is_mailbox_changed(&e) => sel.catch_up(who),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("the mailbox keeps changing"))
}

/// The untagged FETCH response(s) for view position `pos` (store index `idx`). Returns
/// whether it set `\Seen`.
#[allow(clippy::too_many_arguments)]
fn fetch_one(
    out: &mut dyn Write,
    sel: &mut Selected,
    pos: usize,
    idx: usize,
    items: &[FetchItem],
    sets_seen: bool,
    trouble: &mut Trouble,
    who: &str,
) -> io::Result<bool> {
    let loaded = if items.iter().any(needs_parse) {
        match load(sel, idx) {
            Ok(l) => Some(l),
            Err(e) => {
                trouble.unreadable(sel, pos, &e, who);
                return Ok(false);
            }
        }
    } else {
        None
    };
    let wants_flags = items.contains(&FetchItem::Flags);
    let info = &sel.mailbox.messages()[idx];
    let newly_seen = sets_seen && !info.flags.contains(Flags::SEEN);
    if newly_seen {
        let (flags, keywords) = (info.flags.union(Flags::SEEN), info.keywords);
        sel.set_flags(idx, flags, keywords);
    }
    write!(out, "* {} FETCH (", pos + 1)?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.write_all(b" ")?;
        }
        write_item(out, sel, pos, idx, item, loaded.as_deref(), trouble)?;
    }
    out.write_all(b")\r\n")?;
    if newly_seen && !wants_flags {
        let flags = sel.current_flags(pos, idx);
        write!(out, "* {} FETCH (FLAGS {flags})\r\n", pos + 1)?;
    }
    if newly_seen || wants_flags {
        sel.note_told(pos, idx);
    }
    Ok(newly_seen)
}

/// Write one data item (name and value) of message `idx` (view position `pos`).
fn write_item(
    out: &mut dyn Write,
    sel: &mut Selected,
    pos: usize,
    idx: usize,
    item: &FetchItem,
    loaded: Option<&Loaded>,
    trouble: &mut Trouble,
) -> io::Result<()> {
    let info = sel.mailbox.messages()[idx].clone();
    let parsed =
        || loaded.ok_or_else(|| io::Error::other("internal error: message not loaded for FETCH"));
    match item {
        FetchItem::Flags => write!(out, "FLAGS {}", sel.current_flags(pos, idx)),
        FetchItem::Uid => write!(out, "UID {}", info.uid),
        FetchItem::Rfc822Size => write!(out, "RFC822.SIZE {}", info.size),
        FetchItem::InternalDate => {
            let (date, zone) = sel.mailbox.internal_date(idx);
            write!(out, "INTERNALDATE {}", internal_date(date, zone))
        }
        FetchItem::Envelope => {
            let l = parsed()?;
            let header = l.bytes().bytes(l.tree.root.header.clone());
            let mut buf = b"ENVELOPE ".to_vec();
            Envelope::parse(header.unwrap_or_default()).write_imap(&mut buf);
            out.write_all(&buf)
        }
        FetchItem::Body | FetchItem::BodyStructure => {
            let l = parsed()?;
            let extended = *item == FetchItem::BodyStructure;
            let mut buf = if extended {
                b"BODYSTRUCTURE ".to_vec()
            } else {
                b"BODY ".to_vec()
            };
            l.tree.write_structure_with(l.bytes(), &mut buf, extended);
            out.write_all(&buf)
        }
        FetchItem::Rfc822 => {
            out.write_all(b"RFC822 ")?;
            stream_range(out, sel, idx, info.size, None)
        }
        FetchItem::Rfc822Header => {
            let l = parsed()?;
            out.write_all(b"RFC822.HEADER ")?;
            write_range(out, sel, idx, l, l.tree.root.header.clone(), None)
        }
        FetchItem::Rfc822Text => {
            let l = parsed()?;
            out.write_all(b"RFC822.TEXT ")?;
            write_range(out, sel, idx, l, l.tree.root.body.clone(), None)
        }
        FetchItem::BodySection {
            section, partial, ..
        } => {
            write!(
                out,
                "BODY[{}]{} ",
                section_spec(section),
                partial_suffix(*partial)
            )?;
            if is_whole_message(section) {
                return stream_range(out, sel, idx, info.size, *partial);
            }
            let l = parsed()?;
            let spec = to_message_section(section);
            match message::section_range_with(&l.tree, l.bytes(), &spec) {
                Some(SectionData::Range(range)) => write_range(out, sel, idx, l, range, *partial),
                Some(SectionData::Bytes(bytes)) => {
                    write_text(out, &bytes[narrow(bytes.len(), *partial)])
                }
                None => out.write_all(b"\"\""),
            }
        }
        FetchItem::Binary { part, partial, .. } => {
            let spec: Vec<String> = part.iter().map(u32::to_string).collect();
            write!(
                out,
                "BINARY[{}]{} ",
                spec.join("."),
                partial_suffix(*partial)
            )?;
            let l = parsed()?;
            match message::binary_source(&l.tree, l.bytes().len(), part) {
                Ok((range, transfer)) => write_binary(out, sel, idx, l, range, transfer, *partial),
                Err(e) => {
                    trouble.unknown_cte |= e == BinaryError::UnknownCte;
                    out.write_all(b"NIL")
                }
            }
        }
        FetchItem::BinarySize { part } => {
            let spec: Vec<String> = part.iter().map(u32::to_string).collect();
            write!(out, "BINARY.SIZE[{}] ", spec.join("."))?;
            let l = parsed()?;
            match message::binary_source(&l.tree, l.bytes().len(), part) {
                Ok((range, transfer)) => {
                    let size = decoded_size(sel, idx, l, range, transfer)?;
                    write!(out, "{size}")
                }
                Err(e) => {
                    trouble.unknown_cte |= e == BinaryError::UnknownCte;
                    out.write_all(b"NIL")
                }
            }
        }
    }
}

/// Stream (a partial range of) the whole message from the store as a literal.
fn stream_range(
    out: &mut dyn Write,
    sel: &mut Selected,
    idx: usize,
    size: u64,
    partial: Option<Partial>,
) -> io::Result<()> {
    let size = usize::try_from(size).map_err(io::Error::other)?;
    let range = narrow(size, partial);
    stream_literal(out, sel, idx, range)
}

/// `range` of the message as a literal (`""` when empty), read from the store.
fn stream_literal(
    out: &mut dyn Write,
    sel: &mut Selected,
    idx: usize,
    range: Range<usize>,
) -> io::Result<()> {
    let len = range.end.saturating_sub(range.start);
    if len == 0 {
        return out.write_all(b"\"\"");
    }
    let mut source = store_message(sel, idx);
    let mut reader = source.open_at(range.start)?;
    ResponseWriter::new(out).write_literal_from(&mut reader, len as u64)
}

fn store_message(sel: &mut Selected, idx: usize) -> StoreMessage<'_> {
    StoreMessage {
        mailbox: &mut *sel.mailbox,
        index: idx,
    }
}

/// (The partial of) `range` of a parsed message: from memory, or streamed from the store.
fn write_range(
    out: &mut dyn Write,
    sel: &mut Selected,
    idx: usize,
    l: &Loaded,
    range: Range<usize>,
    partial: Option<Partial>,
) -> io::Result<()> {
    let window = narrow(range.end.saturating_sub(range.start), partial);
    let absolute = range.start + window.start..range.start + window.end;
    match l.whole() {
        Some(bytes) => write_text(out, bytes.get(absolute).unwrap_or_default()),
        None => stream_literal(out, sel, idx, absolute),
    }
}

/// The length of `range` once `transfer` is removed (BINARY.SIZE).
fn decoded_size(
    sel: &mut Selected,
    idx: usize,
    l: &Loaded,
    range: Range<usize>,
    transfer: Transfer,
) -> io::Result<u64> {
    if let Some(bytes) = l.whole() {
        let body = bytes.get(range).unwrap_or_default();
        return Ok(transfer.decode(body).len() as u64);
    }
    decode_range(
        &mut store_message(sel, idx),
        range,
        transfer,
        &mut |_, _| Ok(()),
    )
}

/// `BINARY[...]<partial>` content: `range` with `transfer` removed, as a literal (`literal8`
/// when it holds a NUL). A large message is decoded twice from the store: once for the
/// length and the NUL check, once to send.
fn write_binary(
    out: &mut dyn Write,
    sel: &mut Selected,
    idx: usize,
    l: &Loaded,
    range: Range<usize>,
    transfer: Transfer,
    partial: Option<Partial>,
) -> io::Result<()> {
    if let Some(bytes) = l.whole() {
        let decoded = transfer.decode(bytes.get(range).unwrap_or_default());
        let decoded = &decoded[narrow(decoded.len(), partial)];
        if memchr::memchr(0, decoded).is_some() {
            out.write_all(b"~")?;
        }
        return write_text(out, decoded);
    }
    let (origin, end) = match partial {
        Some(p) => {
            let origin = u64::from(p.origin);
            (origin, origin.saturating_add(u64::from(p.length)))
        }
        None => (0, u64::MAX),
    };
    let mut has_nul = false;
    let mut source = store_message(sel, idx);
    let total = decode_range(&mut source, range.clone(), transfer, &mut |at, bytes| {
        has_nul |= memchr::memchr(0, window_of(at, bytes, origin, end)).is_some();
        Ok(())
    })?;
    let sent = end.min(total).saturating_sub(origin.min(total));
    if sent == 0 {
        return out.write_all(b"\"\"");
    }
    if has_nul {
        out.write_all(b"~")?;
    }
    write!(out, "{{{sent}}}\r\n")?;
    let written = decode_range(&mut source, range, transfer, &mut |at, bytes| {
        out.write_all(window_of(at, bytes, origin, end))
    })?;
    if written != total {
        return Err(io::Error::other("message changed while it was sent"));
    }
    Ok(())
}

/// The part of `bytes` (at offset `at` of the decoded content) inside `[origin, end)`.
fn window_of(at: u64, bytes: &[u8], origin: u64, end: u64) -> &[u8] {
    let len = bytes.len() as u64;
    let from = origin.saturating_sub(at).min(len);
    let to = end.saturating_sub(at).min(len);
    bytes
        .get(usize::try_from(from).unwrap_or(usize::MAX)..usize::try_from(to).unwrap_or(0))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_specs_echo() {
        let s = Section {
            part: vec![1, 2],
            text: Some(SectionText::HeaderFields(vec![
                "From".into(),
                "X-a b".into(),
            ])),
        };
        assert_eq!(section_spec(&s), "1.2.HEADER.FIELDS (From \"X-a b\")");
        assert_eq!(section_spec(&Section::default()), "");
        let mime = Section {
            part: vec![3],
            text: Some(SectionText::Mime),
        };
        assert_eq!(section_spec(&mime), "3.MIME");
        assert_eq!(
            partial_suffix(Some(Partial {
                origin: 5,
                length: 10
            })),
            "<5>"
        );
    }

    #[test]
    fn binary_windows_cut_decoded_chunks() {
        let chunk = b"0123456789";
        assert_eq!(window_of(0, chunk, 0, u64::MAX), b"0123456789");
        assert_eq!(window_of(100, chunk, 103, 105), b"34");
        assert_eq!(window_of(100, chunk, 95, 102), b"01");
        assert_eq!(window_of(100, chunk, 110, 120), b"");
        assert_eq!(window_of(100, chunk, 50, 60), b"");
        assert_eq!(window_of(100, b"", 0, 10), b"");
    }

    #[test]
    fn item_classes() {
        let peek = FetchItem::BodySection {
            peek: true,
            section: Section::default(),
            partial: None,
        };
        assert!(!marks_seen(&peek) && !needs_parse(&peek));
        assert!(marks_seen(&FetchItem::Rfc822Text) && needs_parse(&FetchItem::Rfc822Text));
        assert!(marks_seen(&FetchItem::Rfc822) && !needs_parse(&FetchItem::Rfc822));
        assert!(!marks_seen(&FetchItem::Flags));
    }
}
