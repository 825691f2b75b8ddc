//! `BODY[section]` and `BINARY[section]` (RFC 3501 section 6.4.5, RFC 3516): which bytes of the
//! message a section names, so the session can stream just that range from the store, plus
//! the synthesized HEADER.FIELDS(.NOT) text and decoded BINARY content.
//!
//! Never reads the store; works on the message bytes and its [`MimeTree`].

use std::ops::Range;

use super::decode;
use super::header::fields;
use super::mime::{MimeTree, Part, PartKind};
use super::stream::MessageBytes;

/// What follows the part numbers in a section specifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SectionText {
    Header,
    /// Field names to keep (compared case-insensitively).
    HeaderFields(Vec<Vec<u8>>),
    HeaderFieldsNot(Vec<Vec<u8>>),
    Text,
    Mime,
}

/// A section specifier: part numbers (1-based, possibly empty) and an optional text part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    pub part: Vec<u32>,
    pub text: Option<SectionText>,
}

/// The content of a section: a range of the message, or bytes made up for HEADER.FIELDS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SectionData {
    Range(Range<usize>),
    Bytes(Vec<u8>),
}

impl SectionData {
    pub fn len(&self) -> usize {
        match self {
            SectionData::Range(r) => r.end - r.start,
            SectionData::Bytes(b) => b.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The bytes themselves, given the message.
    pub fn bytes<'a>(&'a self, msg: &'a [u8]) -> &'a [u8] {
        match self {
            SectionData::Range(r) => msg.get(r.clone()).unwrap_or_default(),
            SectionData::Bytes(b) => b,
        }
    }
}

/// Where a walk down the part numbers ended.
enum Node<'t> {
    /// A message (the top level or an embedded message/rfc822).
    Message(&'t Part),
    /// A body part reached by number.
    Part(&'t Part),
}

fn walk<'t>(tree: &'t MimeTree, numbers: &[u32]) -> Option<Node<'t>> {
    let mut node = Node::Message(&tree.root);
    for &n in numbers {
        let index = usize::try_from(n).ok()?.checked_sub(1)?;
        let entity = match node {
            Node::Message(m) => m,
            Node::Part(p) => match &p.kind {
                PartKind::Message(inner) => inner,
                PartKind::Multipart(_) => p,
                PartKind::Leaf => return None,
            },
        };
        node = match &entity.kind {
            PartKind::Multipart(children) => Node::Part(children.get(index)?),
            _ if index == 0 => Node::Part(entity),
            _ => return None,
        };
    }
    Some(node)
}

/// The bytes `spec` names, or `None` when the section does not exist (RFC 3501: the
/// session then returns an empty string).
pub fn section_range(tree: &MimeTree, msg: &[u8], spec: &Section) -> Option<SectionData> {
    section_range_with(tree, &msg, spec)
}

/// [`section_range`] given only the header blocks of the message.
pub fn section_range_with(
    tree: &MimeTree,
    msg: &dyn MessageBytes,
    spec: &Section,
) -> Option<SectionData> {
    let node = walk(tree, &spec.part)?;
    let text = match &spec.text {
        None => {
            return Some(SectionData::Range(match node {
                Node::Message(_) => 0..msg.len(),
                Node::Part(p) => p.body.clone(),
            }))
        }
        Some(t) => t,
    };
    if *text == SectionText::Mime {
        return match node {
            Node::Part(p) if !spec.part.is_empty() => Some(SectionData::Range(p.header.clone())),
            _ => None,
        };
    }
    let message = match node {
        Node::Message(m) => m,
        Node::Part(p) => match &p.kind {
            PartKind::Message(inner) => inner,
            _ => return None,
        },
    };
    let header = msg.bytes(message.header.clone())?;
    Some(match text {
        SectionText::Header => SectionData::Range(message.header.clone()),
        SectionText::Text => SectionData::Range(message.body.clone()),
        SectionText::HeaderFields(names) => SectionData::Bytes(select_fields(header, names, true)),
        SectionText::HeaderFieldsNot(names) => {
            SectionData::Bytes(select_fields(header, names, false))
        }
        SectionText::Mime => return None,
    })
}

/// The header fields whose name is (or, with `keep == false`, is not) in `names`, raw, then
/// the empty line.
fn select_fields(header: &[u8], names: &[Vec<u8>], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields(header) {
        if names.iter().any(|n| n.eq_ignore_ascii_case(f.name)) == keep {
            out.extend_from_slice(f.raw);
            if !f.raw.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Apply a partial `<origin.count>` to content of length `len`: the sub-range to send (empty
/// when the origin is past the end).
pub fn partial(len: usize, origin: u64, count: Option<u64>) -> Range<usize> {
    let start = usize::try_from(origin).unwrap_or(usize::MAX).min(len);
    let end = match count {
        Some(c) => start
            .saturating_add(usize::try_from(c).unwrap_or(usize::MAX))
            .min(len),
        None => len,
    };
    start..end
}

/// Why BINARY cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BinaryError {
    /// The part uses a transfer encoding we cannot decode: `NO [UNKNOWN-CTE]`.
    UnknownCte,
    /// The part does not exist.
    NoSuchPart,
}

/// A Content-Transfer-Encoding BINARY knows how to remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    Identity,
    Base64,
    QuotedPrintable,
}

impl Transfer {
    /// The decoder for an upper-case encoding name; `None` for unknown encodings.
    pub fn of(encoding: &[u8]) -> Option<Transfer> {
        match encoding {
            b"BASE64" => Some(Transfer::Base64),
            b"QUOTED-PRINTABLE" => Some(Transfer::QuotedPrintable),
            b"7BIT" | b"8BIT" | b"BINARY" => Some(Transfer::Identity),
            _ => None,
        }
    }

    /// `body` with this encoding removed.
    pub fn decode(self, body: &[u8]) -> Vec<u8> {
        match self {
            Transfer::Identity => body.to_vec(),
            Transfer::Base64 => decode::base64(body),
            Transfer::QuotedPrintable => decode::quoted_printable(body),
        }
    }
}

/// Where `BINARY[part]` content comes from: a range of the message and how to decode it.
/// Multipart and message parts (and the whole message) are sent as they are.
pub fn binary_source(
    tree: &MimeTree,
    len: usize,
    part: &[u32],
) -> Result<(Range<usize>, Transfer), BinaryError> {
    let node = walk(tree, part).ok_or(BinaryError::NoSuchPart)?;
    let p = match node {
        Node::Message(_) => return Ok((0..len, Transfer::Identity)),
        Node::Part(p) => p,
    };
    if p.body.end > len || p.body.start > p.body.end {
        return Err(BinaryError::NoSuchPart);
    }
    if !matches!(p.kind, PartKind::Leaf) {
        return Ok((p.body.clone(), Transfer::Identity));
    }
    let transfer = Transfer::of(&p.encoding).ok_or(BinaryError::UnknownCte)?;
    Ok((p.body.clone(), transfer))
}

/// `BINARY[part]` (RFC 3516): the part's content with its transfer encoding removed. Multipart and
/// message parts (and the whole message) are returned as they are. BINARY.SIZE is the length.
pub fn binary(tree: &MimeTree, msg: &[u8], part: &[u32]) -> Result<Vec<u8>, BinaryError> {
    let (range, transfer) = binary_source(tree, msg.len(), part)?;
    let body = msg.get(range).ok_or(BinaryError::NoSuchPart)?;
    Ok(transfer.decode(body))
}

/// Remove a Content-Transfer-Encoding (upper-case name); `None` for unknown encodings.
pub fn decode_transfer(encoding: &[u8], body: &[u8]) -> Option<Vec<u8>> {
    match encoding {
        b"BASE64" => Some(decode::base64(body)),
        b"QUOTED-PRINTABLE" => Some(decode::quoted_printable(body)),
        b"7BIT" | b"8BIT" | b"BINARY" => Some(body.to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::mime::parse;
    use crate::message::tests::fixture_messages;

    fn get(msg: &[u8], part: &[u32], text: Option<SectionText>) -> Option<String> {
        let tree = parse(msg);
        let spec = Section {
            part: part.to_vec(),
            text,
        };
        section_range(&tree, msg, &spec).map(|d| String::from_utf8_lossy(d.bytes(msg)).into_owned())
    }

    #[test]
    fn parts_of_a_multipart_inside_message_rfc822() {
        // imaptest fetch-body-mime: 2.1 is the first part of the forwarded multipart.
        let msg = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n\r\nhello\r\n--o\r\nContent-Type: message/rfc822\r\n\r\nSubject: sub\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\npre\r\n--i\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--i\r\nContent-Type: text/plain\r\n\r\nplain\r\n--i--\r\n\r\n--o--\r\n";
        assert_eq!(get(msg, &[2, 1], None).unwrap(), "<p>x</p>");
        assert_eq!(
            get(msg, &[2, 1], Some(SectionText::Mime)).unwrap(),
            "Content-Type: text/html\r\n\r\n"
        );
        assert_eq!(get(msg, &[2, 2], None).unwrap(), "plain");
        assert_eq!(get(msg, &[2, 3], None), None);
    }

    #[test]
    fn reference_mailbox_sections() {
        let msgs = fixture_messages();
        let m1 = &msgs[0];
        let header = get(m1, &[], Some(SectionText::Header)).unwrap();
        assert_eq!(header.len(), 193); // as UW sent for BODY[HEADER]
        assert!(header.ends_with("<msg1@example.com>\r\n\r\n"));
        assert_eq!(
            get(m1, &[], Some(SectionText::Text)).unwrap(),
            "Hello, this is message one.\r\nIt has two lines.\r\n"
        );
        assert_eq!(get(m1, &[1], None).unwrap().len(), 48);
        assert_eq!(get(m1, &[], None).unwrap().len(), 241);
        assert_eq!(get(m1, &[2], None), None);
        let m2 = &msgs[1];
        assert_eq!(get(m2, &[1], None).unwrap(), "Body part one.\r\n");
        assert_eq!(get(m2, &[2], None).unwrap(), "AAECAwQFBgcICQ==\r\n");
        assert_eq!(
            get(m2, &[1], Some(SectionText::Mime)).unwrap(),
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        );
        assert_eq!(get(m2, &[2], Some(SectionText::Header)), None);
        assert_eq!(get(m2, &[3], None), None);
        assert_eq!(get(m2, &[1, 1], None), None);
        assert_eq!(get(m2, &[0], None), None);
        assert_eq!(
            get(
                m2,
                &[],
                Some(SectionText::HeaderFields(vec![
                    b"cc".to_vec(),
                    b"SUBJECT".to_vec()
                ]))
            )
            .unwrap(),
            "Cc: dave@example.net\r\nSubject: Second message with attachment\r\n\r\n"
        );
        let not = get(
            m2,
            &[],
            Some(SectionText::HeaderFieldsNot(vec![
                b"Return-Path".to_vec(),
                b"Content-Type".to_vec(),
                b"MIME-Version".to_vec(),
            ])),
        )
        .unwrap();
        assert!(
            not.starts_with("Date: ") && not.ends_with("<msg2@example.com>\r\n\r\n"),
            "{not}"
        );
        let tree = parse(m2);
        assert_eq!(
            binary(&tree, m2, &[2]).unwrap(),
            (0u8..10).collect::<Vec<_>>()
        );
        assert_eq!(binary(&tree, m2, &[1]).unwrap(), b"Body part one.\r\n");
        assert_eq!(binary(&tree, m2, &[9]), Err(BinaryError::NoSuchPart));
    }

    #[test]
    fn nested_message_sections() {
        let msg = b"Subject: outer\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n\r\nfirst\r\n--o\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n\r\nplain\r\n--i\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<b>=3D</b>\r\n--i--\r\n--o\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n--o--\r\n";
        assert_eq!(get(msg, &[1], None).unwrap(), "first");
        assert!(get(msg, &[2], None)
            .unwrap()
            .starts_with("Subject: inner\r\n"));
        assert_eq!(
            get(msg, &[2], Some(SectionText::Mime)).unwrap(),
            "Content-Type: message/rfc822\r\n\r\n"
        );
        assert!(get(msg, &[2], Some(SectionText::Header))
            .unwrap()
            .starts_with("Subject: inner\r\nMIME-Version"));
        assert!(get(msg, &[2], Some(SectionText::Text))
            .unwrap()
            .starts_with("--i\r\n"));
        assert_eq!(get(msg, &[2, 1], None).unwrap(), "plain");
        assert_eq!(get(msg, &[2, 2], None).unwrap(), "<b>=3D</b>");
        assert_eq!(
            get(msg, &[2, 2], Some(SectionText::Mime)).unwrap(),
            "Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        );
        assert_eq!(
            get(
                msg,
                &[2],
                Some(SectionText::HeaderFields(vec![b"subject".to_vec()]))
            )
            .unwrap(),
            "Subject: inner\r\n\r\n"
        );
        let tree = parse(msg);
        assert_eq!(binary(&tree, msg, &[2, 2]).unwrap(), b"<b>=</b>");
        assert_eq!(binary(&tree, msg, &[3]), Err(BinaryError::UnknownCte));
        assert_eq!(binary(&tree, msg, &[]).unwrap().len(), msg.len());
    }

    #[test]
    fn headers_of_messages_and_parts() {
        // A message header runs to the first empty line even if it starts oddly.
        let msg = b"not a field\r\nSubject: x\r\n\r\nbody\r\n";
        assert_eq!(get(msg, &[], Some(SectionText::Text)).unwrap(), "body\r\n");
        // A part starting with plain text has no MIME header: all of it is body.
        let msg = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\nplain\r\n\r\ntext\r\n--z\r\nX-Field : y\r\n\r\nz\r\n--z--\r\n";
        assert_eq!(get(msg, &[1], None).unwrap(), "plain\r\n\r\ntext");
        assert_eq!(get(msg, &[1], Some(SectionText::Mime)).unwrap(), "");
        assert_eq!(get(msg, &[2], None).unwrap(), "z");
    }

    #[test]
    fn partial_ranges() {
        assert_eq!(partial(10, 0, None), 0..10);
        assert_eq!(partial(10, 3, Some(4)), 3..7);
        assert_eq!(partial(10, 8, Some(4)), 8..10);
        assert_eq!(partial(10, 20, Some(4)), 10..10);
        assert_eq!(partial(10, u64::MAX, Some(u64::MAX)), 10..10);
    }
}
