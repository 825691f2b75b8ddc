//! FETCH and UID FETCH: every RFC 3501 data item, `BODY[section]<partial>` (HEADER.FIELDS(.NOT),
//! MIME, TEXT, nested message/rfc822), BODY.PEEK, and RFC 3516 BINARY / BINARY.SIZE.
//!
//! Owns what a FETCH response says and the implicit `\Seen`. Whole-message items (RFC822,
//! BODY[] and their partials) are streamed from the store in bounded chunks; items that need the
//! MIME structure read the message into memory once (up to [`MAX_PARSED`] octets) and keep the
//! last one parsed. Never sends EXPUNGE.

use super::format::internal_date;
use super::select::Selected;
use super::{Backend, Reply, Session, Transport};
use crate::message::{self, BinaryError, Envelope, MimeTree, SectionData};
use crate::protocol::command::{FetchItem, Partial, Section, SectionText};
use crate::wire::parser::SequenceSet;
use crate::wire::response::{string_form, StringForm};
use common::log;
use common::store::Flags;
use std::io::{self, Read, Write};
use std::rc::Rc;

/// Messages larger than this are not parsed (ENVELOPE, BODYSTRUCTURE, sections are refused);
/// they can still be fetched whole.
pub(super) const MAX_PARSED: u64 = 64 * 1024 * 1024;

/// One message read into memory and parsed.
pub(crate) struct Loaded {
    pub uid: u32,
    pub bytes: Vec<u8>,
    pub tree: MimeTree,
}

/// Message `idx` parsed, from the cache when it is the last one; `None` when too large.
pub(super) fn load(sel: &mut Selected, idx: usize) -> io::Result<Option<Rc<Loaded>>> {
    let info = &sel.mailbox.messages()[idx];
    let (uid, size) = (info.uid, info.size);
    if let Some(cached) = sel.cache.as_ref().filter(|c| c.uid == uid) {
        return Ok(Some(Rc::clone(cached)));
    }
    if size > MAX_PARSED {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    sel.mailbox
        .open_message(idx)?
        .take(size)
        .read_to_end(&mut bytes)?;
    let tree = message::parse(&bytes);
    let loaded = Rc::new(Loaded { uid, bytes, tree });
    sel.cache = Some(Rc::clone(&loaded));
    Ok(Some(loaded))
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
    too_large: bool,
    unknown_cte: bool,
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
        let parse = items.iter().any(needs_parse);
        let wants_flags = items.contains(&FetchItem::Flags);
        let out: &mut dyn Write = &mut *self.client;
        let mut trouble = Trouble::default();
        let mut seen_changed = false;
        for pos in positions {
            let Some(idx) = sel.index_of(pos) else {
                trouble.missing = true;
                continue;
            };
            let loaded = if parse {
                match load(sel, idx) {
                    Ok(Some(l)) => Some(l),
                    Ok(None) => {
                        trouble.too_large = true;
                        continue;
                    }
                    Err(e) => {
                        // The store lost the message under us (or the disk failed): say so
                        // for this message and go on with the others.
                        log::err(&format!(
                            "FETCH: cannot read message {} of {}: {e} {who}",
                            pos + 1,
                            sel.mailbox.path().display()
                        ));
                        trouble.missing = true;
                        continue;
                    }
                }
            } else {
                None
            };
            let info = &sel.mailbox.messages()[idx];
            let newly_seen = sets_seen && !info.flags.contains(Flags::SEEN);
            if newly_seen {
                let (flags, keywords) = (info.flags.union(Flags::SEEN), info.keywords);
                sel.set_flags(idx, flags, keywords);
                seen_changed = true;
            }
            write!(out, "* {} FETCH (", pos + 1)?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b" ")?;
                }
                write_item(out, sel, pos, idx, item, loaded.as_deref(), &mut trouble)?;
            }
            out.write_all(b")\r\n")?;
            if newly_seen && !wants_flags {
                let flags = sel.current_flags(pos, idx);
                write!(out, "* {} FETCH (FLAGS {flags})\r\n", pos + 1)?;
            }
            if newly_seen || wants_flags {
                sel.note_told(pos, idx);
            }
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
        } else if trouble.too_large {
            Reply::no("[LIMIT] Some messages are too large to parse; fetch them whole")
        } else if trouble.missing {
            Reply::no("Some of the requested messages no longer exist")
        } else {
            Reply::ok("FETCH completed")
        })
    }
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
        FetchItem::InternalDate => write!(
            out,
            "INTERNALDATE {}",
            internal_date(info.internal_date, info.internal_tz_minutes)
        ),
        FetchItem::Envelope => {
            let l = parsed()?;
            let header = l.bytes.get(l.tree.root.header.clone()).unwrap_or_default();
            let mut buf = b"ENVELOPE ".to_vec();
            Envelope::parse(header).write_imap(&mut buf);
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
            l.tree.write_structure(&l.bytes, &mut buf, extended);
            out.write_all(&buf)
        }
        FetchItem::Rfc822 => {
            out.write_all(b"RFC822 ")?;
            stream_range(out, sel, idx, info.size, None)
        }
        FetchItem::Rfc822Header => {
            let l = parsed()?;
            out.write_all(b"RFC822.HEADER ")?;
            write_text(
                out,
                l.bytes.get(l.tree.root.header.clone()).unwrap_or_default(),
            )
        }
        FetchItem::Rfc822Text => {
            let l = parsed()?;
            out.write_all(b"RFC822.TEXT ")?;
            write_text(
                out,
                l.bytes.get(l.tree.root.body.clone()).unwrap_or_default(),
            )
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
            match message::section_range(&l.tree, &l.bytes, &to_message_section(section)) {
                Some(data) => {
                    let bytes = data_bytes(&data, &l.bytes);
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
            match message::binary(&l.tree, &l.bytes, part) {
                Ok(bytes) => {
                    let bytes = &bytes[narrow(bytes.len(), *partial)];
                    if memchr::memchr(0, bytes).is_some() {
                        out.write_all(b"~")?;
                    }
                    write_text(out, bytes)
                }
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
            match message::binary(&l.tree, &l.bytes, part) {
                Ok(bytes) => write!(out, "{}", bytes.len()),
                Err(e) => {
                    trouble.unknown_cte |= e == BinaryError::UnknownCte;
                    out.write_all(b"NIL")
                }
            }
        }
    }
}

fn data_bytes<'a>(data: &'a SectionData, msg: &'a [u8]) -> &'a [u8] {
    data.bytes(msg)
}

/// Stream (a partial range of) the whole message from the store as a literal.
fn stream_range(
    out: &mut dyn Write,
    sel: &mut Selected,
    idx: usize,
    size: u64,
    partial: Option<Partial>,
) -> io::Result<()> {
    let (start, len) = match partial {
        Some(p) => {
            let start = u64::from(p.origin).min(size);
            (start, u64::from(p.length).min(size - start))
        }
        None => (0, size),
    };
    if len == 0 {
        return out.write_all(b"\"\"");
    }
    let mut reader = sel.mailbox.open_message(idx)?;
    let skipped = io::copy(&mut (&mut reader).take(start), &mut io::sink())?;
    if skipped != start {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "message shorter than its recorded size",
        ));
    }
    crate::wire::response::ResponseWriter::new(out).write_literal_from(&mut reader, len)
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
