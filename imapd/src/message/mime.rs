//! The MIME tree of one message, parsed once into byte ranges plus the few header values
//! BODYSTRUCTURE needs, and the BODY/BODYSTRUCTURE writer (RFC 3501 section 7.4.2, matching
//! UW-IMAP's output: upper-case type, subtype, parameter and disposition names; `CHARSET
//! US-ASCII` supplied for text without a charset; sizes and line counts in CRLF octets).
//!
//! Never copies body bytes and never panics: malformed MIME (no boundary, missing close
//! delimiter, no header, garbage) still yields a tree, and nesting stops at [`MAX_DEPTH`].

use std::ops::Range;

use super::decode::{charset_to_utf8, rfc2047, rfc2231_value};
use super::envelope::Envelope;
use super::header::{fields, split_header, unfold};
use super::stream::MessageBytes;
use super::{write_nstring, write_string};

/// Deepest nesting of multipart and message/rfc822 entities we descend into; deeper entities
/// are presented as opaque `APPLICATION/OCTET-STREAM` leaves.
pub const MAX_DEPTH: usize = 50;

/// A parameter list: (upper-cased attribute, raw value).
pub type Params = Vec<(Vec<u8>, Vec<u8>)>;

/// A parsed message: its root entity.
#[derive(Clone, Debug)]
pub struct MimeTree {
    pub root: Part,
}

/// One MIME entity. Ranges are absolute offsets into the message bytes.
#[derive(Clone, Debug)]
pub struct Part {
    /// The entity's header, including the empty line that ends it.
    pub header: Range<usize>,
    pub body: Range<usize>,
    /// Upper-cased media type and subtype, defaults applied.
    pub media_type: Vec<u8>,
    pub subtype: Vec<u8>,
    pub params: Params,
    pub id: Option<Vec<u8>>,
    pub description: Option<Vec<u8>>,
    /// Upper-cased Content-Transfer-Encoding, `7BIT` when absent.
    pub encoding: Vec<u8>,
    pub md5: Option<Vec<u8>>,
    /// Upper-cased disposition type and its parameters.
    pub disposition: Option<(Vec<u8>, Params)>,
    pub language: Vec<Vec<u8>>,
    pub location: Option<Vec<u8>>,
    /// Lines in the body (line ends, plus a final unterminated line).
    pub lines: u32,
    pub kind: PartKind,
}

#[derive(Clone, Debug)]
pub enum PartKind {
    Leaf,
    Multipart(Vec<Part>),
    /// message/rfc822: the embedded message (its header and body lie inside this body).
    Message(Box<Part>),
}

/// Parse the MIME structure of `msg`. Linear in the message size per nesting level.
pub fn parse(msg: &[u8]) -> MimeTree {
    parse_with(&mut InMemory(msg), msg.len())
}

/// Parse the MIME structure of a message of `len` octets through `scan`, which answers the
/// few questions the parser asks about byte ranges (in memory, or by streaming the store).
pub(crate) fn parse_with(scan: &mut dyn Scan, len: usize) -> MimeTree {
    MimeTree {
        root: parse_entity(scan, 0..len, Default::Text, 0, Entity::TopLevel),
    }
}

/// What the parser needs to know about the message bytes. Ranges are absolute offsets.
pub(crate) trait Scan {
    /// The (header, body) of the entity at `range`; `is_part` for a body part of a multipart,
    /// whose header may be absent.
    fn split_entity(&mut self, range: Range<usize>, is_part: bool) -> (Range<usize>, Range<usize>);
    /// The bytes of a header block returned by [`Scan::split_entity`] (possibly truncated).
    fn header(&self, range: &Range<usize>) -> &[u8];
    /// Lines in `body`, counted as c-client does: the number of LFs.
    fn count_lines(&mut self, body: Range<usize>) -> u32;
    /// The body ranges of the parts of a multipart body (see [`split_multipart`]).
    fn split_multipart(&mut self, body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>>;
}

/// The whole message in memory.
struct InMemory<'a>(&'a [u8]);

impl Scan for InMemory<'_> {
    fn split_entity(&mut self, range: Range<usize>, is_part: bool) -> (Range<usize>, Range<usize>) {
        split_entity_bytes(
            self.0.get(range.clone()).unwrap_or_default(),
            range,
            is_part,
        )
    }
    fn header(&self, range: &Range<usize>) -> &[u8] {
        self.0.get(range.clone()).unwrap_or_default()
    }
    fn count_lines(&mut self, body: Range<usize>) -> u32 {
        count_lines(self.0.get(body).unwrap_or_default())
    }
    fn split_multipart(&mut self, body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
        split_multipart(self.0, body, boundary)
    }
}

/// Split the entity whose bytes (from `range.start`) are `bytes` into header and body. A
/// message header always runs to the first empty line; a body part that starts with neither a
/// field nor an empty line has no MIME header at all (its text is body).
pub(crate) fn split_entity_bytes(
    bytes: &[u8],
    range: Range<usize>,
    is_part: bool,
) -> (Range<usize>, Range<usize>) {
    if !is_part || starts_with_field(bytes) {
        split_header(bytes, range.start)
    } else if bytes.starts_with(b"\r\n") {
        (range.start..range.start + 2, range.start + 2..range.end)
    } else if bytes.starts_with(b"\n") {
        (range.start..range.start + 1, range.start + 1..range.end)
    } else {
        (range.start..range.start, range)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Default {
    Text,
    Message,
}

/// Where an entity sits, which decides whether its Content-* fields count.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Entity {
    /// The message itself: Content-* fields count only with a MIME-Version field, as in
    /// c-client.
    TopLevel,
    /// A body part of a multipart: its Content-* fields always count.
    BodyPart,
    /// The message inside a message/rfc822 part. The enclosing entity is MIME already, so its
    /// Content-* fields count even without MIME-Version (as Dovecot and Cyrus read them;
    /// forwarded messages often lack the field).
    Encapsulated,
}

/// Parse one entity at `range`.
fn parse_entity(
    scan: &mut dyn Scan,
    range: Range<usize>,
    default: Default,
    depth: usize,
    entity: Entity,
) -> Part {
    let is_part = entity == Entity::BodyPart;
    let (header, body) = scan.split_entity(range, is_part);
    let mut part = Part {
        header: header.clone(),
        body: body.clone(),
        media_type: Vec::new(),
        subtype: Vec::new(),
        params: Vec::new(),
        id: None,
        description: None,
        encoding: b"7BIT".to_vec(),
        md5: None,
        disposition: None,
        language: Vec::new(),
        location: None,
        lines: scan.count_lines(body.clone()),
        kind: PartKind::Leaf,
    };
    if entity != Entity::TopLevel || has_mime_version(scan.header(&header)) {
        read_mime_fields(&mut part, scan.header(&header));
    }
    if part.media_type.is_empty() {
        let (t, s): (&[u8], &[u8]) = match default {
            Default::Text => (b"TEXT", b"PLAIN"),
            Default::Message => (b"MESSAGE", b"RFC822"),
        };
        part.media_type = t.to_vec();
        part.subtype = s.to_vec();
    }
    if part.subtype.is_empty() {
        part.subtype = default_subtype(&part.media_type).to_vec();
    }
    // c-client supplies a charset only when the text has no parameters at all.
    if part.media_type == b"TEXT" && part.params.is_empty() {
        part.params
            .push((b"CHARSET".to_vec(), b"US-ASCII".to_vec()));
    }
    let composite = part.media_type == b"MULTIPART"
        || (part.media_type == b"MESSAGE" && part.subtype == b"RFC822");
    if composite && depth >= MAX_DEPTH {
        part.media_type = b"APPLICATION".to_vec();
        part.subtype = b"OCTET-STREAM".to_vec();
        return part;
    }
    if part.media_type == b"MULTIPART" {
        let child_default = if part.subtype == b"DIGEST" {
            Default::Message
        } else {
            Default::Text
        };
        let boundary = param(&part.params, b"BOUNDARY").unwrap_or(b"").to_vec();
        let children = scan
            .split_multipart(body, &boundary)
            .into_iter()
            .map(|r| parse_entity(scan, r, child_default, depth + 1, Entity::BodyPart))
            .collect();
        part.kind = PartKind::Multipart(children);
    } else if part.media_type == b"MESSAGE" && part.subtype == b"RFC822" {
        let inner = parse_entity(scan, body, Default::Text, depth + 1, Entity::Encapsulated);
        part.kind = PartKind::Message(Box::new(inner));
    }
    part
}

/// Whether `bytes` begins with something shaped like a header field (`name:`), i.e. whether
/// the entity has a header at all.
pub(crate) fn starts_with_field(bytes: &[u8]) -> bool {
    let name_len = bytes
        .iter()
        .position(|&c| c <= b' ' || c == b':' || c >= 0x7f)
        .unwrap_or(bytes.len());
    let after_name = bytes[name_len..].iter().find(|&&c| c != b' ' && c != b'\t');
    name_len > 0 && after_name == Some(&b':')
}

/// Whether a message header declares MIME (c-client ignores Content-* fields otherwise).
fn has_mime_version(header: &[u8]) -> bool {
    fields(header).any(|f| f.name.eq_ignore_ascii_case(b"MIME-Version"))
}

fn default_subtype(media_type: &[u8]) -> &'static [u8] {
    match media_type {
        b"TEXT" => b"PLAIN",
        b"MULTIPART" => b"MIXED",
        b"MESSAGE" => b"RFC822",
        b"APPLICATION" => b"OCTET-STREAM",
        b"AUDIO" => b"BASIC",
        _ => b"UNKNOWN",
    }
}

/// Read the Content-* fields; as in c-client the first occurrence of each one counts.
fn read_mime_fields(part: &mut Part, header: &[u8]) {
    let (mut seen_type, mut seen_encoding, mut seen_language) = (false, false, false);
    for f in fields(header) {
        let name = f.name;
        if name.eq_ignore_ascii_case(b"Content-Type") && !seen_type {
            seen_type = true;
            let mut lx = Lexer::new(f.value);
            if let Some(t) = lx.token() {
                part.media_type = t.to_ascii_uppercase();
                if lx.eat(b'/') {
                    part.subtype = lx
                        .token()
                        .map(|s| s.to_ascii_uppercase())
                        .unwrap_or_default();
                }
            }
            part.params = lx.params();
        } else if name.eq_ignore_ascii_case(b"Content-Transfer-Encoding") && !seen_encoding {
            seen_encoding = true;
            if let Some(t) = Lexer::new(f.value).token() {
                part.encoding = t.to_ascii_uppercase();
            }
        } else if name.eq_ignore_ascii_case(b"Content-ID") && part.id.is_none() {
            part.id = Some(unfold(f.value));
        } else if name.eq_ignore_ascii_case(b"Content-Description") && part.description.is_none() {
            part.description = Some(unfold(f.value));
        } else if name.eq_ignore_ascii_case(b"Content-MD5") && part.md5.is_none() {
            part.md5 = Some(unfold(f.value));
        } else if name.eq_ignore_ascii_case(b"Content-Location") && part.location.is_none() {
            let mut v = unfold(f.value);
            v.retain(|c| !matches!(c, b' ' | b'\t'));
            part.location = Some(v);
        } else if name.eq_ignore_ascii_case(b"Content-Language") && !seen_language {
            seen_language = true;
            let mut lx = Lexer::new(f.value);
            while let Some(t) = lx.token() {
                part.language.push(t.to_ascii_uppercase());
                if !lx.eat(b',') {
                    break;
                }
            }
        } else if name.eq_ignore_ascii_case(b"Content-Disposition") && part.disposition.is_none() {
            let mut lx = Lexer::new(f.value);
            if let Some(t) = lx.token() {
                let t = t.to_ascii_uppercase();
                part.disposition = Some((t, lx.params()));
            }
        }
    }
}

/// Case-insensitive lookup of a parameter value (`name` upper-case).
pub fn param<'p>(params: &'p Params, name: &[u8]) -> Option<&'p [u8]> {
    params
        .iter()
        .find(|(n, _)| n.as_slice() == name)
        .map(|(_, v)| v.as_slice())
}

/// A parameter's value decoded for display or matching: RFC 2231 extended values and
/// continuations (`NAME*`, `NAME*0*`, `NAME*1`, ...) joined and converted to UTF-8, or an
/// RFC 2047-encoded plain value decoded. `name` is upper-case.
pub fn decoded_param(params: &Params, name: &[u8]) -> Option<String> {
    if let Some(v) = param(params, name) {
        return Some(rfc2047(v));
    }
    let mut extended = name.to_vec();
    extended.push(b'*');
    if let Some(v) = param(params, &extended) {
        return Some(rfc2231_value(v));
    }
    // Continuations: NAME*<n> (plain) or NAME*<n>* (percent-encoded), in numeric order.
    let mut segments: Vec<(u32, bool, &[u8])> = params
        .iter()
        .filter_map(|(n, v)| {
            let rest = n.strip_prefix(extended.as_slice())?;
            let (digits, encoded) = match rest.strip_suffix(b"*") {
                Some(d) => (d, true),
                None => (rest, false),
            };
            let index = std::str::from_utf8(digits).ok()?.parse().ok()?;
            Some((index, encoded, v.as_slice()))
        })
        .collect();
    if segments.is_empty() {
        return None;
    }
    segments.sort_by_key(|&(i, _, _)| i);
    let mut charset: &[u8] = b"us-ascii";
    let mut bytes = Vec::new();
    for (i, &(_, encoded, value)) in segments.iter().enumerate() {
        let mut value = value;
        if i == 0 && encoded {
            let mut it = value.splitn(3, |&c| c == b'\'');
            if let (Some(cs), Some(_lang), Some(rest)) = (it.next(), it.next(), it.next()) {
                charset = cs;
                value = rest;
            }
        }
        if encoded {
            bytes.extend(percent_decode(value));
        } else {
            bytes.extend_from_slice(value);
        }
    }
    Some(charset_to_utf8(charset, &bytes).into_owned())
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
        if s[i] == b'%' {
            if let (Some(h), Some(l)) = (hex(s.get(i + 1)), hex(s.get(i + 2))) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Lines in `body`, counted as c-client does: the number of LFs.
pub(crate) fn count_lines(body: &[u8]) -> u32 {
    u32::try_from(memchr::memchr_iter(b'\n', body).count()).unwrap_or(u32::MAX)
}

/// The body ranges of the parts of a multipart body (preamble and epilogue dropped). The CRLF
/// before a delimiter belongs to the delimiter. Without any delimiter the whole body is one part.
fn split_multipart(msg: &[u8], body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
    let bytes = &msg[body.clone()];
    let mut parts = Vec::new();
    if !boundary.is_empty() {
        let mut pattern = b"--".to_vec();
        pattern.extend_from_slice(boundary);
        let mut current: Option<usize> = None;
        for p in memchr::memmem::find_iter(bytes, &pattern) {
            if p > 0 && bytes[p - 1] != b'\n' {
                continue;
            }
            let after = &bytes[p + pattern.len()..];
            let close = after.starts_with(b"--");
            let line_len = memchr::memchr(b'\n', after).map_or(after.len(), |i| i + 1);
            if !close && !after[..line_len].iter().all(|c| c.is_ascii_whitespace()) {
                continue; // a longer boundary that merely starts with ours
            }
            if let Some(start) = current {
                let mut end = p;
                if end > start && bytes[end - 1] == b'\n' {
                    end -= 1;
                    if end > start && bytes[end - 1] == b'\r' {
                        end -= 1;
                    }
                }
                parts.push(body.start + start..body.start + end.max(start));
            }
            if close {
                current = None;
                break;
            }
            current = Some(p + pattern.len() + line_len);
        }
        if let Some(start) = current {
            parts.push(body.start + start..body.end);
        }
    }
    if parts.is_empty() {
        parts.push(body);
    }
    parts
}

/// A tolerant RFC 2045 lexer: tokens, quoted strings, comments skipped.
struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a [u8]) -> Self {
        Lexer { s, pos: 0 }
    }

    fn skip_cfws(&mut self) {
        let mut depth = 0usize;
        while let Some(&c) = self.s.get(self.pos) {
            match c {
                b'(' => depth += 1,
                b')' if depth > 0 => depth -= 1,
                b'\\' if depth > 0 => self.pos += 1,
                c if c.is_ascii_whitespace() => {}
                _ if depth > 0 => {}
                _ => return,
            }
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_cfws();
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn token(&mut self) -> Option<&'a [u8]> {
        self.skip_cfws();
        let start = self.pos;
        while let Some(&c) = self.s.get(self.pos) {
            if c <= b' ' || c == 0x7f || b"()<>@,;:\\\"/[]?=".contains(&c) {
                break;
            }
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.s[start..self.pos])
    }

    /// A token or a quoted string (unquoted, escapes removed, folding removed).
    fn value(&mut self) -> Option<Vec<u8>> {
        self.skip_cfws();
        if self.s.get(self.pos) != Some(&b'"') {
            return self.token().map(<[u8]>::to_vec);
        }
        self.pos += 1;
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.pos) {
            self.pos += 1;
            match c {
                b'"' => return Some(out),
                b'\\' => {
                    if let Some(&n) = self.s.get(self.pos) {
                        out.push(n);
                        self.pos += 1;
                    }
                }
                b'\r' | b'\n' => {}
                c => out.push(c),
            }
        }
        Some(out)
    }

    /// `*(";" attribute "=" value)`, skipping malformed parameters.
    fn params(&mut self) -> Params {
        let mut params = Params::new();
        while self.pos < self.s.len() {
            if !self.eat(b';') {
                self.pos += 1; // garbage: resynchronise on the next ';'
                continue;
            }
            let Some(name) = self.token() else { continue };
            if !self.eat(b'=') {
                continue;
            }
            if let Some(v) = self.value() {
                params.push((name.to_ascii_uppercase(), v));
            }
        }
        params
    }
}

impl Part {
    /// True for a leaf whose content is text (type TEXT).
    pub fn is_text(&self) -> bool {
        self.media_type == b"TEXT"
    }

    /// Write this entity's BODY (`extended == false`) or BODYSTRUCTURE (`extended == true`).
    pub fn write_structure(&self, msg: &[u8], out: &mut Vec<u8>, extended: bool) {
        self.write_structure_with(&msg, out, extended);
    }

    /// [`Part::write_structure`] given only the header blocks of the message.
    pub fn write_structure_with(&self, msg: &dyn MessageBytes, out: &mut Vec<u8>, extended: bool) {
        out.push(b'(');
        match &self.kind {
            PartKind::Multipart(children) => {
                for child in children {
                    child.write_structure_with(msg, out, extended);
                }
                out.push(b' ');
                write_string(out, &self.subtype);
                if extended {
                    out.push(b' ');
                    write_params(out, &self.params);
                    self.write_common_extension(out);
                }
            }
            kind => {
                self.write_basic_fields(out);
                if let PartKind::Message(inner) = kind {
                    out.push(b' ');
                    let header = msg.bytes(inner.header.clone()).unwrap_or_default();
                    Envelope::parse(header).write_imap(out);
                    out.push(b' ');
                    inner.write_structure_with(msg, out, extended);
                    write_number(out, u64::from(self.lines));
                } else if self.is_text() {
                    write_number(out, u64::from(self.lines));
                }
                if extended {
                    out.push(b' ');
                    write_nstring(out, self.md5.as_deref());
                    self.write_common_extension(out);
                }
            }
        }
        out.push(b')');
    }

    fn write_basic_fields(&self, out: &mut Vec<u8>) {
        write_string(out, &self.media_type);
        out.push(b' ');
        write_string(out, &self.subtype);
        out.push(b' ');
        write_params(out, &self.params);
        out.push(b' ');
        write_nstring(out, self.id.as_deref());
        out.push(b' ');
        write_nstring(out, self.description.as_deref());
        out.push(b' ');
        write_string(out, &self.encoding);
        write_number(out, (self.body.end - self.body.start) as u64);
    }

    /// ` disposition language location`.
    fn write_common_extension(&self, out: &mut Vec<u8>) {
        out.push(b' ');
        match &self.disposition {
            Some((kind, params)) => {
                out.push(b'(');
                write_string(out, kind);
                out.push(b' ');
                write_params(out, params);
                out.push(b')');
            }
            None => out.extend_from_slice(b"NIL"),
        }
        out.push(b' ');
        if self.language.is_empty() {
            out.extend_from_slice(b"NIL");
        } else {
            out.push(b'(');
            for (i, lang) in self.language.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                write_string(out, lang);
            }
            out.push(b')');
        }
        out.push(b' ');
        write_nstring(out, self.location.as_deref());
    }
}

fn write_number(out: &mut Vec<u8>, n: u64) {
    out.push(b' ');
    out.extend_from_slice(n.to_string().as_bytes());
}

fn write_params(out: &mut Vec<u8>, params: &Params) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        write_string(out, name);
        out.push(b' ');
        write_string(out, value);
    }
    out.push(b')');
}

impl MimeTree {
    /// BODYSTRUCTURE (`extended`) or BODY of the whole message.
    pub fn write_structure(&self, msg: &[u8], out: &mut Vec<u8>, extended: bool) {
        self.root.write_structure(msg, out, extended);
    }

    /// [`MimeTree::write_structure`] given only the header blocks of the message.
    pub fn write_structure_with(&self, msg: &dyn MessageBytes, out: &mut Vec<u8>, extended: bool) {
        self.root.write_structure_with(msg, out, extended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::fixture_messages;

    fn structure(msg: &[u8], extended: bool) -> String {
        let mut out = Vec::new();
        parse(msg).write_structure(msg, &mut out, extended);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn matches_uw_bodystructure_on_reference_mailbox() {
        let msgs = fixture_messages();
        assert_eq!(
            msgs.iter().map(Vec::len).collect::<Vec<_>>(),
            [241, 613, 258]
        );
        assert_eq!(
            structure(&msgs[0], true),
            r#"("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 48 2 NIL NIL NIL NIL)"#
        );
        assert_eq!(
            structure(&msgs[1], true),
            r#"(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 16 1 NIL NIL NIL NIL)("APPLICATION" "OCTET-STREAM" ("NAME" "a.bin") NIL NIL "BASE64" 18 NIL ("ATTACHMENT" ("FILENAME" "a.bin")) NIL NIL) "MIXED" ("BOUNDARY" "XYZ") NIL NIL NIL)"#
        );
        assert_eq!(
            structure(&msgs[1], false),
            r#"(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 16 1)("APPLICATION" "OCTET-STREAM" ("NAME" "a.bin") NIL NIL "BASE64" 18) "MIXED")"#
        );
        assert_eq!(
            structure(&msgs[2], true),
            r#"("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 81 3 NIL NIL NIL NIL)"#
        );
    }

    #[test]
    fn embedded_message_has_envelope_structure_and_lines() {
        let msg =
            b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: a@b.c\r\n\r\nhi\r\n";
        assert_eq!(
            structure(msg, false),
            r#"("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 35 (NIL "inner" ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) NIL NIL NIL NIL NIL) ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 4 1) 4)"#
        );
    }

    #[test]
    fn encapsulated_message_content_fields_count_without_mime_version() {
        // imaptest fetch-body-mime: a forwarded multipart message with no MIME-Version.
        let msg = b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\nSubject: s\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--b--\r\n";
        let tree = parse(msg);
        let PartKind::Message(inner) = &tree.root.kind else {
            panic!("message/rfc822 not parsed as a message");
        };
        assert_eq!(inner.media_type, b"MULTIPART");
        assert_eq!(inner.subtype, b"ALTERNATIVE");
        let PartKind::Multipart(children) = &inner.kind else {
            panic!("inner multipart not split");
        };
        assert_eq!(children[0].subtype, b"HTML");
    }

    #[test]
    fn content_fields_need_mime_version_in_message_headers() {
        let msg = b"Content-Type: text/html\r\n\r\nx\r\n";
        assert_eq!(
            structure(msg, false),
            r#"("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3 1)"#
        );
        let msg = b"Content-Type: text/html; charset=utf-8\r\nMime-Version: 1.0\r\n\r\nx";
        assert_eq!(
            structure(msg, false),
            r#"("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 1 0)"#
        );
    }

    #[test]
    fn parameters_decode_rfc2231_and_rfc2047() {
        let msg = b"MIME-Version: 1.0\r\nContent-Type: application/x; a*=utf-8''caf%C3%A9;\r\n b*0*=iso-8859-1'fr'%E9t; b*1=\"e.txt\"; c=\"=?utf-8?q?=C3=BC?=\"\r\n\r\n";
        let params = &parse(msg).root.params;
        assert_eq!(decoded_param(params, b"A").as_deref(), Some("café"));
        assert_eq!(decoded_param(params, b"B").as_deref(), Some("éte.txt"));
        assert_eq!(decoded_param(params, b"C").as_deref(), Some("ü"));
        assert_eq!(decoded_param(params, b"D"), None);
        // BODYSTRUCTURE shows them raw, as c-client does.
        assert!(structure(msg, false).contains(r#"("A*" "utf-8''caf%C3%A9" "B*0*""#));
    }

    #[test]
    fn extension_fields_are_written() {
        let msg = b"MIME-Version: 1.0\r\nContent-Type: Text/HTML; Charset=\"utf-8\" (c)\r\nContent-ID: <id1>\r\nContent-Description: d\r\nContent-MD5: Q2hlY2s=\r\nContent-Language: en, de\r\nContent-Location: http://x/\r\n y\r\nContent-Disposition: inline\r\n\r\n<p>x";
        assert_eq!(
            structure(msg, true),
            r#"("TEXT" "HTML" ("CHARSET" "utf-8") "<id1>" "d" "7BIT" 4 0 "Q2hlY2s=" ("INLINE" NIL) ("EN" "DE") "http://x/y")"#
        );
    }

    #[test]
    fn malformed_multiparts_still_give_valid_structures() {
        // No close delimiter: the last part runs to the end.
        let msg = b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b\r\nContent-Type: text/html\r\n\r\ntwo\r\n";
        assert_eq!(
            structure(msg, false),
            r#"(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3 0)("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 1) "ALTERNATIVE")"#
        );
        // No boundary parameter at all: one part, the whole body.
        let msg = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\nplain\r\n";
        assert_eq!(
            structure(msg, false),
            r#"(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 7 1) "MIXED")"#
        );
        // A longer boundary that starts with ours is not a delimiter.
        let msg = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n--bb\r\n--b--\r\n";
        assert_eq!(
            structure(msg, false),
            r#"(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 4 0) "MIXED")"#
        );
        // Digest parts default to message/rfc822.
        let msg = b"MIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: s\r\n\r\nx\r\n--d--\r\n";
        assert!(structure(msg, false)
            .starts_with(r#"(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 15 (NIL "s" "#));
    }

    #[test]
    fn garbage_and_deep_nesting_never_panic() {
        let mut garbage: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        garbage.extend_from_slice(b"\r\n\r\n\xff\x00--");
        let tree = parse(&garbage);
        let mut out = Vec::new();
        tree.write_structure(&garbage, &mut out, true);
        assert!(out.starts_with(b"(\"TEXT\" \"PLAIN\""));
        assert!(matches!(parse(b"").root.kind, PartKind::Leaf));

        let mut deep = b"MIME-Version: 1.0\r\n".to_vec();
        for i in 0..100 {
            deep.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")
                    .as_bytes(),
            );
        }
        deep.extend_from_slice(b"\r\nleaf\r\n");
        let tree = parse(&deep);
        let mut depth = 0;
        let mut part = &tree.root;
        while let PartKind::Multipart(children) = &part.kind {
            depth += 1;
            part = &children[0];
        }
        assert_eq!(depth, MAX_DEPTH);
        assert_eq!(part.media_type, b"APPLICATION");
    }
}

#[cfg(test)]
mod perf_tests {
    use super::*;
    use crate::message::envelope::Envelope;
    use std::time::{Duration, Instant};

    /// A typical 4 KB message: a few address fields, multipart/alternative with two parts and a
    /// base64 attachment.
    fn sample() -> Vec<u8> {
        let mut m = b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nFrom: Alice Example <alice@example.com>\r\nTo: Bob <bob@example.org>, \"Carol C.\" <carol@example.net>\r\nCc: team: dave@x.org, erin@y.org;\r\nSubject: Quarterly numbers\r\nMessage-ID: <perf@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n--inner\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n".to_vec();
        for _ in 0..20 {
            m.extend_from_slice(
                b"The numbers look good this quarter, see the attached sheet.=\r\n\r\n",
            );
        }
        m.extend_from_slice(b"--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n");
        for _ in 0..15 {
            m.extend_from_slice(b"<p>The numbers look good this quarter, see the sheet.</p>\r\n");
        }
        m.extend_from_slice(b"--inner--\r\n--outer\r\nContent-Type: application/pdf; name=\"q.pdf\"\r\nContent-Disposition: attachment; filename=\"q.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
        while m.len() < 4000 {
            m.extend_from_slice(
                b"JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSL0ZpbHRlci9GbGF0ZUR\r\n",
            );
        }
        m.extend_from_slice(b"--outer--\r\n");
        m
    }

    #[test]
    fn parse_envelope_and_bodystructure_of_4k_message_is_fast() {
        let msg = sample();
        let run = || {
            let tree = parse(&msg);
            let mut out = Vec::with_capacity(1024);
            Envelope::parse(msg.get(tree.root.header.clone()).unwrap_or_default())
                .write_imap(&mut out);
            tree.write_structure(&msg, &mut out, true);
            out
        };
        let out = run();
        assert!(
            out.windows(11).any(|w| w == b"\"MIXED\" (\"B"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let rounds = 200u32;
        let start = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(run());
        }
        let each = start.elapsed() / rounds;
        // The target is 50 µs in release builds; unoptimised test builds get 20x slack.
        let limit = if cfg!(debug_assertions) {
            Duration::from_millis(1)
        } else {
            Duration::from_micros(50)
        };
        assert!(each < limit, "{each:?} per message");
        eprintln!(
            "parse+envelope+bodystructure of {} bytes: {each:?}",
            msg.len()
        );
    }
}
