//! BODY[section] and BINARY[section] (RFC 3501 section 6.4.5, RFC 3516): which bytes of the
//! message a section names, so the session can stream just that range from the store, plus
//! the synthesized HEADER.FIELDS(.NOT) text and decoded BINARY content.
//!
//! Never reads the store; works on the message bytes and its [`MimeTree`].

use std::ops::Range;

use super::decode;
use super::header::fields;
use super::mime::{MimeTree, Part, PartKind};

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
    let header = msg.get(message.header.clone())?;
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

/// BINARY[part] (RFC 3516): the part's content with its transfer encoding removed. Multipart and
/// message parts (and the whole message) are returned as they are. BINARY.SIZE is the length.
pub fn binary(tree: &MimeTree, msg: &[u8], part: &[u32]) -> Result<Vec<u8>, BinaryError> {
    let node = walk(tree, part).ok_or(BinaryError::NoSuchPart)?;
    let p = match node {
        Node::Message(_) => return Ok(msg.to_vec()),
        Node::Part(p) => p,
    };
    let body = msg.get(p.body.clone()).ok_or(BinaryError::NoSuchPart)?;
    if !matches!(p.kind, PartKind::Leaf) {
        return Ok(body.to_vec());
    }
    decode_transfer(&p.encoding, body).ok_or(BinaryError::UnknownCte)
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
