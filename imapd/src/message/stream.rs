//! Messages too large to hold in memory, read as streams: the MIME tree built by a streaming
//! scan ([`parse_streamed`]), the header blocks of its messages kept aside ([`Headers`]),
//! chunked transfer decoding ([`Decoder`], [`decode_range`]) and the searchable body text
//! produced chunk by chunk ([`body_text_contains`]).
//!
//! Results are byte-identical to the in-memory functions of this module's siblings (the same
//! parser runs over a `Scan` that streams). Memory stays bounded: chunks of [`CHUNK`]
//! octets, header blocks cut at [`HEADER_CAP`] octets for parsing (offsets stay exact), only
//! the headers of messages (the top level and message/rfc822 parts) are kept. The only I/O is
//! through the caller's [`Source`]; nothing here knows about mailboxes.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::ops::Range;

use super::decode::{self, charset_to_utf8};
use super::mime::{self, count_lines, param, split_entity_bytes, MimeTree, Part, PartKind, Scan};
use super::search::{decoded_header, fold, Needle};
use super::section::Transfer;

/// Header blocks longer than this are parsed from their first `HEADER_CAP` octets.
pub const HEADER_CAP: usize = 256 * 1024;
/// The read size of every streaming pass.
pub const CHUNK: usize = 64 * 1024;

/// The bytes of a message, or just the parts of it that were kept.
pub trait MessageBytes {
    /// The size of the whole message.
    fn len(&self) -> usize;
    /// The bytes of `range`; for a kept header block possibly fewer (cut at [`HEADER_CAP`]).
    fn bytes(&self, range: Range<usize>) -> Option<&[u8]>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MessageBytes for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn bytes(&self, range: Range<usize>) -> Option<&[u8]> {
        self.get(range)
    }
}

/// The header blocks of the messages of a streamed message (top level and message/rfc822
/// parts), by start offset.
#[derive(Clone, Debug, Default)]
pub struct Headers {
    len: usize,
    blocks: BTreeMap<usize, Vec<u8>>,
}

impl Headers {
    fn keep(&mut self, start: usize, bytes: &[u8]) {
        let slot = self.blocks.entry(start).or_default();
        if bytes.len() > slot.len() {
            *slot = bytes.to_vec();
        }
    }
}

impl MessageBytes for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn bytes(&self, range: Range<usize>) -> Option<&[u8]> {
        self.get(range)
    }
}

impl MessageBytes for Headers {
    fn len(&self) -> usize {
        self.len
    }
    fn bytes(&self, range: Range<usize>) -> Option<&[u8]> {
        let block = self.blocks.get(&range.start)?;
        Some(&block[..block.len().min(range.end.saturating_sub(range.start))])
    }
}

/// Where the message bytes come from: a fresh reader positioned at an offset.
pub trait Source {
    /// A reader of the message from octet `offset` to its end.
    fn open_at(&mut self, offset: usize) -> io::Result<Box<dyn Read + '_>>;
}

fn short_message() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "message shorter than its recorded size",
    )
}

/// Hand `range` of the message to `each` in chunks of at most [`CHUNK`] octets.
pub fn for_each_chunk(
    src: &mut dyn Source,
    range: Range<usize>,
    each: &mut dyn FnMut(usize, &[u8]) -> io::Result<bool>,
) -> io::Result<()> {
    let total = range.end.saturating_sub(range.start);
    if total == 0 {
        return Ok(());
    }
    let mut reader = src.open_at(range.start)?.take(total as u64);
    let mut buf = vec![0u8; CHUNK.min(total)];
    let mut pos = range.start;
    while pos < range.end {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Err(short_message()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if !each(pos, &buf[..n])? {
            return Ok(());
        }
        pos += n;
    }
    Ok(())
}

/// A message parsed by streaming: its MIME tree and the header blocks of its messages.
#[derive(Clone, Debug)]
pub struct Streamed {
    pub tree: MimeTree,
    pub headers: Headers,
}

/// Parse the MIME structure of the `len`-octet message `src` without holding it in memory.
/// Same tree as [`mime::parse`] (header blocks beyond [`HEADER_CAP`] aside).
pub fn parse_streamed(src: &mut dyn Source, len: usize) -> io::Result<Streamed> {
    let mut scan = StreamScan {
        src,
        headers: Headers {
            len,
            blocks: BTreeMap::new(),
        },
        last_header: (usize::MAX, Vec::new()),
        facts: HashMap::new(),
        body_lines: HashMap::new(),
        counted_lines: HashMap::new(),
        error: None,
    };
    let tree = mime::parse_with(&mut scan, len);
    match scan.error {
        Some(e) => Err(e),
        None => Ok(Streamed {
            tree,
            headers: scan.headers,
        }),
    }
}

/// What the multipart pass learnt about one body part: its end, its LFs and the start of it
/// (its header, or nothing when it has none; at most [`HEADER_CAP`] octets).
struct PartFacts {
    end: usize,
    lines: u32,
    prefix: Vec<u8>,
}

/// A [`Scan`] that streams from a [`Source`]. I/O errors are remembered (the parser cannot
/// fail) and reported by [`parse_streamed`].
struct StreamScan<'s> {
    src: &'s mut dyn Source,
    headers: Headers,
    /// The header block of the entity split last (start, bytes), for [`Scan::header`].
    last_header: (usize, Vec<u8>),
    facts: HashMap<usize, PartFacts>,
    /// Lines of bodies, known before they are asked for / once they have been.
    body_lines: HashMap<(usize, usize), u32>,
    counted_lines: HashMap<(usize, usize), u32>,
    error: Option<io::Error>,
}

impl StreamScan<'_> {
    fn fail(&mut self, e: io::Error) {
        self.error.get_or_insert(e);
    }

    /// The first [`HEADER_CAP`] octets of `range`.
    fn read_prefix(&mut self, range: Range<usize>) -> io::Result<Vec<u8>> {
        let want = range.end.saturating_sub(range.start).min(HEADER_CAP);
        let mut buf = Vec::with_capacity(want);
        self.src
            .open_at(range.start)?
            .take(want as u64)
            .read_to_end(&mut buf)?;
        if buf.len() != want {
            return Err(short_message());
        }
        Ok(buf)
    }

    /// The end of the first empty line in `range`, which starts at a line start.
    fn find_empty_line(&mut self, range: Range<usize>) -> io::Result<Option<usize>> {
        #[derive(PartialEq)]
        enum State {
            LineStart,
            LineStartCr,
            InLine,
        }
        let mut state = State::LineStart;
        let mut found = None;
        for_each_chunk(self.src, range, &mut |pos, chunk| {
            let mut i = 0;
            while i < chunk.len() {
                if state == State::InLine {
                    match memchr::memchr(b'\n', &chunk[i..]) {
                        Some(k) => {
                            i += k + 1;
                            state = State::LineStart;
                            continue;
                        }
                        None => return Ok(true),
                    }
                }
                let c = chunk[i];
                i += 1;
                state = match (&state, c) {
                    (_, b'\n') => {
                        found = Some(pos + i);
                        return Ok(false);
                    }
                    (State::LineStart, b'\r') => State::LineStartCr,
                    _ => State::InLine,
                };
            }
            Ok(true)
        })?;
        Ok(found)
    }

    fn stream_count_lines(&mut self, body: Range<usize>) -> io::Result<u32> {
        let mut lines = 0usize;
        for_each_chunk(self.src, body, &mut |_, chunk| {
            lines += memchr::memchr_iter(b'\n', chunk).count();
            Ok(true)
        })?;
        Ok(u32::try_from(lines).unwrap_or(u32::MAX))
    }

    fn split(
        &mut self,
        range: Range<usize>,
        is_part: bool,
    ) -> io::Result<(Range<usize>, Range<usize>)> {
        let facts = self
            .facts
            .remove(&range.start)
            .filter(|f| f.end == range.end && is_part);
        let (prefix, lines) = match facts {
            Some(f) => (f.prefix, Some(f.lines)),
            // The message inside a message/rfc822 part spans that part's body, whose lines
            // are known already.
            None => (
                self.read_prefix(range.clone())?,
                self.counted_lines.get(&(range.start, range.end)).copied(),
            ),
        };
        let prefix_end = range.start + prefix.len();
        let (mut header, _) = split_entity_bytes(&prefix, range.start..prefix_end, is_part);
        let header_in_prefix = header.end - header.start;
        let header_bytes = &prefix[..header_in_prefix];
        if !header.is_empty() && !ends_with_empty_line(header_bytes) && prefix_end < range.end {
            let last_line = memchr::memrchr(b'\n', &prefix).map_or(0, |i| i + 1);
            header.end = self
                .find_empty_line(range.start + last_line..range.end)?
                .unwrap_or(range.end);
        }
        let body = header.end..range.end;
        if let (Some(total), true) = (lines, header.end <= prefix_end) {
            let header_bytes = &prefix[..header_in_prefix];
            let in_header = count_lines(header_bytes);
            self.body_lines
                .insert((body.start, body.end), total.saturating_sub(in_header));
        }
        let header_bytes = &prefix[..header_in_prefix];
        if !is_part {
            self.headers.keep(header.start, header_bytes);
        }
        self.last_header = (header.start, header_bytes.to_vec());
        Ok((header, body))
    }

    /// The multipart pass: like [`mime::split_multipart`], line by line, remembering each
    /// part's end, LFs and header for [`StreamScan::split`].
    fn split_parts(
        &mut self,
        body: Range<usize>,
        boundary: &[u8],
    ) -> io::Result<Vec<Range<usize>>> {
        let mut pattern = b"--".to_vec();
        pattern.extend_from_slice(boundary);
        let mut pass = MultipartPass::new(pattern, body.start);
        let end = body.end;
        for_each_chunk(self.src, body.clone(), &mut |pos, chunk| {
            Ok(pass.feed(pos, chunk))
        })?;
        if !pass.closed {
            if pass.line_start < end {
                pass.end_line(end, false, false);
            }
            if let Some(open) = pass.open.take() {
                let lines = pass.lines;
                pass.finish_part(open, end, lines, 0);
            }
        }
        let mut parts = Vec::new();
        for (range, facts) in pass.parts {
            parts.push(range.clone());
            self.facts.insert(range.start, facts);
        }
        if parts.is_empty() {
            parts.push(body);
        }
        Ok(parts)
    }
}

fn ends_with_empty_line(header: &[u8]) -> bool {
    header == b"\r\n" || header == b"\n" || header.ends_with(b"\n\r\n") || header.ends_with(b"\n\n")
}

impl Scan for StreamScan<'_> {
    fn split_entity(&mut self, range: Range<usize>, is_part: bool) -> (Range<usize>, Range<usize>) {
        match self.split(range.clone(), is_part) {
            Ok(split) => split,
            Err(e) => {
                self.fail(e);
                self.last_header = (range.start, Vec::new());
                (range.start..range.start, range)
            }
        }
    }

    fn header(&self, range: &Range<usize>) -> &[u8] {
        let (start, bytes) = &self.last_header;
        if *start == range.start {
            return &bytes[..bytes.len().min(range.end.saturating_sub(range.start))];
        }
        self.headers.bytes(range.clone()).unwrap_or_default()
    }

    fn count_lines(&mut self, body: Range<usize>) -> u32 {
        let key = (body.start, body.end);
        let lines = match self.body_lines.remove(&key) {
            Some(lines) => lines,
            None => self.stream_count_lines(body).unwrap_or_else(|e| {
                self.fail(e);
                0
            }),
        };
        self.counted_lines.insert(key, lines);
        lines
    }

    fn split_multipart(&mut self, body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
        if boundary.is_empty() {
            return vec![body];
        }
        self.split_parts(body.clone(), boundary)
            .unwrap_or_else(|e| {
                self.fail(e);
                vec![body]
            })
    }
}

/// A part being read by the multipart pass.
struct OpenPart {
    start: usize,
    lines_before: usize,
    prefix: Vec<u8>,
}

/// The state of one multipart pass: the line being read and the part it belongs to.
struct MultipartPass {
    pattern: Vec<u8>,
    /// Start of the current line, its first `pattern.len() + 2` octets, and whether the rest
    /// of it is whitespace.
    line_start: usize,
    head: Vec<u8>,
    rest_is_space: bool,
    /// LFs before the current line; whether the previous line ended in CRLF.
    lines: usize,
    previous_crlf: bool,
    last_byte: u8,
    open: Option<OpenPart>,
    closed: bool,
    parts: Vec<(Range<usize>, PartFacts)>,
}

impl MultipartPass {
    fn new(pattern: Vec<u8>, start: usize) -> Self {
        MultipartPass {
            pattern,
            line_start: start,
            head: Vec::new(),
            rest_is_space: true,
            lines: 0,
            previous_crlf: false,
            last_byte: 0,
            open: None,
            closed: false,
            parts: Vec::new(),
        }
    }

    /// Take `chunk` (at offset `pos`); false once the close delimiter is seen.
    fn feed(&mut self, pos: usize, chunk: &[u8]) -> bool {
        let head_len = self.pattern.len() + 2;
        let mut i = 0;
        while i < chunk.len() {
            let newline = memchr::memchr(b'\n', &chunk[i..]).map(|k| i + k);
            let piece = &chunk[i..newline.map_or(chunk.len(), |k| k + 1)];
            let to_head = (head_len - self.head.len().min(head_len)).min(piece.len());
            self.head.extend_from_slice(&piece[..to_head]);
            self.rest_is_space &= piece[to_head..].iter().all(u8::is_ascii_whitespace);
            if let Some(open) = self.open.as_mut() {
                let room = HEADER_CAP
                    .saturating_sub(open.prefix.len())
                    .min(piece.len());
                open.prefix.extend_from_slice(&piece[..room]);
            }
            if let Some(k) = newline {
                let crlf = if k > i {
                    chunk[k - 1] == b'\r'
                } else {
                    self.last_byte == b'\r'
                };
                self.end_line(pos + k + 1, true, crlf);
                if self.closed {
                    return false;
                }
            }
            self.last_byte = piece.last().copied().unwrap_or(self.last_byte);
            i += piece.len();
        }
        true
    }

    /// The current line ends at `end` (after its LF when `newline`): is it a delimiter?
    fn end_line(&mut self, end: usize, newline: bool, crlf: bool) {
        let p = self.line_start;
        let lines_before = self.lines;
        if newline {
            self.lines += 1;
        }
        if let Some(close) = self.delimiter() {
            if let Some(open) = self.open.take() {
                let trim = if self.previous_crlf { 2 } else { 1 };
                self.finish_part(open, p, lines_before, trim);
            }
            if close {
                self.closed = true;
            } else {
                self.open = Some(OpenPart {
                    start: end,
                    lines_before: self.lines,
                    prefix: Vec::new(),
                });
            }
        }
        self.previous_crlf = crlf;
        self.line_start = end;
        self.head.clear();
        self.rest_is_space = true;
    }

    /// Whether the current line is a delimiter, and whether it is the close delimiter.
    fn delimiter(&self) -> Option<bool> {
        let after = self.head.strip_prefix(self.pattern.as_slice())?;
        let close = after.starts_with(b"--");
        let blank_rest = after.iter().all(u8::is_ascii_whitespace) && self.rest_is_space;
        (close || blank_rest).then_some(close)
    }

    /// Record the part `open` ending at `end`, less the line end before a delimiter (`trim`
    /// octets at most: the LF, and the CR before it when there is one), with `lines` LFs
    /// before `end`.
    fn finish_part(&mut self, open: OpenPart, end: usize, lines: usize, trim: usize) {
        let OpenPart {
            start,
            lines_before,
            mut prefix,
        } = open;
        let mut end = end;
        let mut lines = lines.saturating_sub(lines_before);
        if trim > 0 && end > start {
            end -= 1;
            lines = lines.saturating_sub(1);
            if trim > 1 && end > start {
                end -= 1;
            }
        }
        prefix.truncate(end - start);
        let (header, _) = split_entity_bytes(&prefix, start..start + prefix.len(), true);
        let header_len = header.end - header.start;
        if header.is_empty() || ends_with_empty_line(&prefix[..header_len]) {
            prefix.truncate(header_len);
        }
        let facts = PartFacts {
            end,
            lines: u32::try_from(lines).unwrap_or(u32::MAX),
            prefix,
        };
        self.parts.push((start..end, facts));
    }
}

/// A quoted-printable line longer than this is decoded in pieces.
const QP_HOLD: usize = 8 * 1024;

/// Removes a transfer encoding chunk by chunk; the concatenated output equals
/// [`decode::base64`] / [`decode::quoted_printable`] of the concatenated input.
pub struct Decoder {
    transfer: Transfer,
    /// base64: bits not yet output, their count, and whether `=` ended the data.
    acc: u32,
    bits: u32,
    ended: bool,
    /// quoted-printable: the start of a line not yet decoded.
    pending: Vec<u8>,
}

impl Decoder {
    pub fn new(transfer: Transfer) -> Decoder {
        Decoder {
            transfer,
            acc: 0,
            bits: 0,
            ended: false,
            pending: Vec::new(),
        }
    }

    /// Decode `input`, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match self.transfer {
            Transfer::Identity => out.extend_from_slice(input),
            Transfer::Base64 => self.base64(input, out),
            Transfer::QuotedPrintable => self.quoted_printable(input, out),
        }
    }

    /// The end of the input: decode what is held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            out.extend(decode::quoted_printable(&self.pending));
            self.pending.clear();
        }
    }

    fn base64(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &c in input {
            if self.ended {
                return;
            }
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' => {
                    self.ended = true;
                    return;
                }
                _ => continue,
            };
            self.acc = (self.acc << 6) | u32::from(v);
            self.bits += 6;
            if self.bits >= 8 {
                self.bits -= 8;
                out.push((self.acc >> self.bits) as u8);
                self.acc &= (1 << self.bits) - 1;
            }
        }
    }

    fn quoted_printable(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(input);
        if let Some(last_newline) = memchr::memrchr(b'\n', &self.pending) {
            out.extend(decode::quoted_printable(&self.pending[..=last_newline]));
            self.pending.drain(..=last_newline);
        }
        if self.pending.len() > QP_HOLD {
            let cut = qp_safe_cut(&self.pending);
            out.extend(decode::quoted_printable(&self.pending[..cut]));
            self.pending.drain(..cut);
        }
    }
}

/// Where an unfinished quoted-printable line can be cut so that decoding the two pieces
/// apart gives the same as decoding them together: before a final CR (its LF may follow),
/// trailing blanks (dropped at the end of a line) and an `=` in the last two octets (an
/// escape, or a soft line break).
fn qp_safe_cut(line: &[u8]) -> usize {
    let mut cut = line.len();
    if line.last() == Some(&b'\r') {
        cut -= 1;
    }
    loop {
        let before = cut;
        while cut > 0 && matches!(line[cut - 1], b' ' | b'\t') {
            cut -= 1;
        }
        if cut >= 1 && line[cut - 1] == b'=' {
            cut -= 1;
        } else if cut >= 2 && line[cut - 2] == b'=' {
            cut -= 2;
        }
        if cut == before {
            return cut;
        }
    }
}

/// Decode `range` of the message with `transfer`, handing the decoded octets to `each` with
/// their offset in the decoded content. Returns the decoded length.
pub fn decode_range(
    src: &mut dyn Source,
    range: Range<usize>,
    transfer: Transfer,
    each: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut decoder = Decoder::new(transfer);
    let mut decoded = Vec::with_capacity(CHUNK);
    let mut offset = 0u64;
    for_each_chunk(src, range, &mut |_, chunk| {
        decoded.clear();
        decoder.feed(chunk, &mut decoded);
        each(offset, &decoded)?;
        offset += decoded.len() as u64;
        Ok(true)
    })?;
    decoded.clear();
    decoder.finish(&mut decoded);
    each(offset, &decoded)?;
    Ok(offset + decoded.len() as u64)
}

/// Whether the searchable body text of a streamed message (what SEARCH BODY matches: the
/// decoded text parts and the headers of embedded messages, case-folded) contains each of
/// `needles`. Reads each text part once, in chunks; a match may span chunks and parts.
pub fn body_text_contains(
    src: &mut dyn Source,
    tree: &MimeTree,
    headers: &dyn MessageBytes,
    needles: &[&Needle],
) -> io::Result<Vec<bool>> {
    let mut matcher = Matcher::new(needles);
    append_body_text(src, headers, &tree.root, &mut matcher)?;
    Ok(matcher.found)
}

/// Finds needles in text handed to it piece by piece, keeping only a tail as long as the
/// longest needle.
struct Matcher<'n> {
    needles: &'n [&'n Needle],
    found: Vec<bool>,
    window: String,
    keep: usize,
}

impl<'n> Matcher<'n> {
    fn new(needles: &'n [&'n Needle]) -> Self {
        let keep = needles.iter().map(|n| n.folded().len()).max().unwrap_or(0);
        Matcher {
            needles,
            found: vec![false; needles.len()],
            window: String::new(),
            keep,
        }
    }

    fn done(&self) -> bool {
        self.found.iter().all(|&f| f)
    }

    fn push(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.window.push_str(&fold(text));
        for (needle, found) in self.needles.iter().zip(self.found.iter_mut()) {
            *found |=
                memchr::memmem::find(self.window.as_bytes(), needle.folded().as_bytes()).is_some();
        }
        let mut tail = self.window.len().saturating_sub(self.keep);
        while !self.window.is_char_boundary(tail) {
            tail -= 1;
        }
        self.window.drain(..tail);
    }
}

/// The streaming twin of the in-memory `append_body_text` of [`super::search`].
fn append_body_text(
    src: &mut dyn Source,
    headers: &dyn MessageBytes,
    part: &Part,
    matcher: &mut Matcher,
) -> io::Result<()> {
    if matcher.done() {
        return Ok(());
    }
    match &part.kind {
        PartKind::Multipart(children) => {
            for child in children {
                append_body_text(src, headers, child, matcher)?;
            }
        }
        PartKind::Message(inner) => {
            let header = headers.bytes(inner.header.clone()).unwrap_or_default();
            matcher.push(&decoded_header(header));
            append_body_text(src, headers, inner, matcher)?;
        }
        PartKind::Leaf if part.is_text() => {
            let transfer = Transfer::of(&part.encoding).unwrap_or(Transfer::Identity);
            let charset = param(&part.params, b"CHARSET").unwrap_or(b"us-ascii");
            let mut held = Vec::new();
            decode_range(src, part.body.clone(), transfer, &mut |_, decoded| {
                held.extend_from_slice(decoded);
                let cut = match memchr::memrchr(b'\n', &held) {
                    Some(i) => i + 1,
                    None if held.len() > CHUNK => utf8_cut(&held),
                    None => 0,
                };
                if cut > 0 {
                    matcher.push(&charset_to_utf8(charset, &held[..cut]));
                    held.drain(..cut);
                }
                Ok(())
            })?;
            matcher.push(&charset_to_utf8(charset, &held));
            matcher.push("\n");
        }
        PartKind::Leaf => {}
    }
    Ok(())
}

/// A cut point in a long line without LFs that does not split a UTF-8 sequence.
fn utf8_cut(bytes: &[u8]) -> usize {
    let mut cut = bytes.len();
    while cut > 0 && bytes.len() - cut < 4 && (bytes[cut - 1] & 0xC0) == 0x80 {
        cut -= 1;
    }
    if cut > 0 && bytes[cut - 1] >= 0xC0 {
        cut -= 1;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::search::{Key, MessageMeta, SearchContext};
    use crate::message::section::{binary, binary_source, section_range, section_range_with};
    use crate::message::tests::fixture_messages;
    use crate::message::{Envelope, Section, SectionText};

    /// A reader that hands out at most `step` octets per read, so chunk edges fall anywhere.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    /// Read and drop `count` octets of `reader`; an error when it ends first.
    fn skip(reader: &mut dyn Read, count: usize) -> io::Result<()> {
        let wanted = count as u64;
        if io::copy(&mut reader.take(wanted), &mut io::sink())? != wanted {
            return Err(short_message());
        }
        Ok(())
    }

    struct Memory<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Source for Memory<'_> {
        fn open_at(&mut self, offset: usize) -> io::Result<Box<dyn Read + '_>> {
            OPENS.with(|n| n.set(n.get() + 1));
            let mut reader = Trickle {
                bytes: self.bytes,
                step: self.step,
            };
            skip(&mut reader, offset)?;
            Ok(Box::new(reader))
        }
    }

    thread_local! {
        static OPENS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn nested_messages() -> Vec<Vec<u8>> {
        let big_header = format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=q\r\n{}\r\n--q\r\nContent-Type: text/plain\r\n\r\nx\r\n--q--\r\n",
            "X-Long: y\r\n".repeat(30_000)
        );
        let long_line = format!(
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}=C3=A9 =\r\nend  \r\n",
            "ab =3D c\t".repeat(20_000)
        );
        let attachment = format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b 1\"\r\n\r\npreamble\r\n--b 1\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nK=E4se und Br=\r\not\r\n--b 1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b 1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n\r\nplain needle\r\n--i\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--i--\r\nepilogue\r\n--b 1--\r\ntrailer\r\n",
            "AAECAwQFBgcICQ==\r\n".repeat(5_000)
        );
        vec![
            big_header.into_bytes(),
            long_line.into_bytes(),
            attachment.into_bytes(),
            b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=a\n\n--a\nX: 1\n\nlf only\n--a\n--a--\n".to_vec(),
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n--a--\r\nno parts\r\n".to_vec(),
            b"MIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: s\r\n\r\nx\r\n--d\r\nSubject: t\r\n\r\ny".to_vec(),
            b"no header at all".to_vec(),
            b"Subject: only a header\r\n".to_vec(),
            Vec::new(),
        ]
    }

    /// Everything the session computes from a streamed message equals the in-memory result.
    fn assert_same(msg: &[u8], step: usize) {
        let tree = mime::parse(msg);
        let mut src = Memory { bytes: msg, step };
        let streamed = parse_streamed(&mut src, msg.len()).expect("stream parse");
        assert_eq!(
            format!("{:?}", streamed.tree),
            format!("{tree:?}"),
            "tree of {:?}",
            String::from_utf8_lossy(&msg[..msg.len().min(200)])
        );
        let (mut a, mut b) = (Vec::new(), Vec::new());
        tree.write_structure(msg, &mut a, true);
        streamed
            .tree
            .write_structure_with(&streamed.headers, &mut b, true);
        assert_eq!(a, b);
        let root_header = streamed.headers.bytes(tree.root.header.clone()).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        Envelope::parse(msg.get(tree.root.header.clone()).unwrap()).write_imap(&mut a);
        Envelope::parse(root_header).write_imap(&mut b);
        assert_eq!(a, b);
        for part in [vec![], vec![1], vec![2], vec![3], vec![3, 1], vec![3, 2]] {
            let names = vec![b"subject".to_vec(), b"content-type".to_vec()];
            for text in [
                None,
                Some(SectionText::Header),
                Some(SectionText::Text),
                Some(SectionText::Mime),
                Some(SectionText::HeaderFields(names)),
            ] {
                let spec = Section {
                    part: part.clone(),
                    text,
                };
                assert_eq!(
                    section_range(&tree, msg, &spec),
                    section_range_with(&streamed.tree, &streamed.headers, &spec)
                );
            }
            let whole = binary(&tree, msg, &part);
            let streamed_binary =
                binary_source(&streamed.tree, msg.len(), &part).map(|(range, transfer)| {
                    let mut out = Vec::new();
                    let len = decode_range(&mut src, range, transfer, &mut |at, bytes| {
                        assert_eq!(at, out.len() as u64);
                        out.extend_from_slice(bytes);
                        Ok(())
                    })
                    .unwrap();
                    assert_eq!(len, out.len() as u64);
                    out
                });
            assert_eq!(whole, streamed_binary, "BINARY[{part:?}]");
        }
        for word in ["needle", "käse und brot", "x\n", "ab = c", "é", "nope"] {
            let key = Key::Body(Needle::new(word));
            let meta = MessageMeta::default();
            let expected = SearchContext::new(&meta, msg, 0).matches(&key);
            let needles = key.body_needles();
            let found =
                body_text_contains(&mut src, &streamed.tree, &streamed.headers, &needles).unwrap();
            assert_eq!(found, vec![expected], "SEARCH BODY {word:?}");
        }
    }

    #[test]
    fn streamed_results_equal_in_memory_results() {
        let mut messages = fixture_messages();
        messages.extend(nested_messages());
        for msg in &messages {
            for step in [1, 7, CHUNK] {
                if step == 1 && msg.len() > 4096 {
                    continue;
                }
                assert_same(msg, step);
            }
        }
    }

    #[test]
    fn mutated_messages_stream_the_same() {
        let mut seeds = fixture_messages();
        seeds.extend(nested_messages().into_iter().skip(3));
        let pieces: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"\r",
            b"--",
            b"--a",
            b"--a--",
            b"--d\r\n",
            b" ",
            b":",
            b"\r\n\r\n",
            b"Content-Type: message/rfc822\r\n",
            b"boundary=a",
            b"=",
            b"\t",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        for round in 0..1500 {
            let mut msg = seeds[round % seeds.len()].clone();
            for _ in 0..1 + next(6) {
                let at = next(msg.len() + 1);
                if next(3) == 0 && at < msg.len() {
                    let end = (at + next(12)).min(msg.len());
                    msg.drain(at..end);
                } else {
                    let piece = pieces[next(pieces.len())];
                    msg.splice(at..at, piece.iter().copied());
                }
            }
            assert_same(&msg, 1 + next(40));
        }
    }

    #[test]
    fn header_blocks_are_kept_only_for_messages() {
        let msg = &nested_messages()[2];
        let streamed = parse_streamed(
            &mut Memory {
                bytes: msg,
                step: 999,
            },
            msg.len(),
        )
        .unwrap();
        // The top-level header and the header of the message/rfc822 part.
        assert_eq!(streamed.headers.blocks.len(), 2);
        assert!(streamed
            .headers
            .blocks
            .values()
            .any(|h| h.starts_with(b"Subject: inner")));
    }

    #[test]
    fn leaf_parts_cost_no_extra_pass() {
        // Top level: header, line count, multipart pass; the message/rfc822 part: its inner
        // header and its multipart pass. The leaves are known from the multipart passes.
        let msg = &nested_messages()[2];
        OPENS.with(|n| n.set(0));
        let mut src = Memory {
            bytes: msg,
            step: CHUNK,
        };
        parse_streamed(&mut src, msg.len()).unwrap();
        assert_eq!(OPENS.with(|n| n.get()), 5);
    }

    #[test]
    fn a_short_source_is_an_error() {
        let msg = &nested_messages()[2];
        let mut src = Memory {
            bytes: &msg[..msg.len() / 2],
            step: 4096,
        };
        assert!(parse_streamed(&mut src, msg.len()).is_err());
    }

    #[test]
    fn quoted_printable_decodes_the_same_split_anywhere() {
        let long = "x".repeat(QP_HOLD + 10);
        for ending in [
            "  \r\n", "=\r\n", "= \t\r\n", "=4", "=41\r\n", "\r", "ab =\t",
        ] {
            let text = format!("{long}{ending}tail=3D=\r\nend");
            let input = text.as_bytes();
            let whole = decode::quoted_printable(input);
            for split in long.len() - 3..input.len() {
                let mut decoder = Decoder::new(Transfer::QuotedPrintable);
                let mut out = Vec::new();
                decoder.feed(&input[..split], &mut out);
                decoder.feed(&input[split..], &mut out);
                decoder.finish(&mut out);
                assert_eq!(out, whole, "{ending:?} split at {split}");
            }
        }
    }

    #[test]
    fn quoted_printable_cuts_keep_escapes_and_trailing_blanks() {
        assert_eq!(qp_safe_cut(b"abc"), 3);
        assert_eq!(qp_safe_cut(b"abc=4"), 3);
        assert_eq!(qp_safe_cut(b"abc =  "), 3);
        assert_eq!(qp_safe_cut(b"a==\t"), 1);
        assert_eq!(qp_safe_cut(b"ab \r"), 2);
        assert_eq!(
            utf8_cut("aé".as_bytes()),
            1,
            "the last character is held back"
        );
        assert_eq!(utf8_cut(b"ab"), 2);
        assert_eq!(utf8_cut(&"aé".as_bytes()[..2]), 1);
    }
}
