//! RFC 5322 header scanning over raw message bytes: where the header ends, its fields (with
//! their raw, folded bytes), and unfolding. Owns nothing but byte arithmetic; it never decodes
//! (see `decode`) and never allocates unless asked to unfold.

use std::ops::Range;

/// Split an entity at its first empty line. Returns (header range including the empty line,
/// body range). Accepts CRLF and bare LF line ends; with no empty line the whole entity is header.
pub fn split_header(bytes: &[u8], base: usize) -> (Range<usize>, Range<usize>) {
    let len = bytes.len();
    let mut line_start = 0;
    while line_start < len {
        let line_end = match memchr::memchr(b'\n', &bytes[line_start..]) {
            Some(i) => line_start + i + 1,
            None => len,
        };
        let line = &bytes[line_start..line_end];
        if line == b"\r\n" || line == b"\n" {
            return (base..base + line_end, base + line_end..base + len);
        }
        line_start = line_end;
    }
    (base..base + len, base + len..base + len)
}

/// One header field: its name and its raw value (after the colon, folding kept), and the
/// whole raw field including the line end.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub raw: &'a [u8],
}

/// Iterate the fields of a header block. Lines without a colon are skipped.
pub fn fields(header: &[u8]) -> Fields<'_> {
    Fields { rest: header }
}

pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;
    fn next(&mut self) -> Option<Field<'a>> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let end = field_end(self.rest);
            let raw = &self.rest[..end];
            self.rest = &self.rest[end..];
            if matches!(raw.first(), Some(b' ' | b'\t')) {
                continue; // continuation without a field: ignore
            }
            let Some(colon) = memchr::memchr(b':', raw) else {
                continue;
            };
            let name = trim(&raw[..colon]);
            if name.is_empty() || name.contains(&b'\n') {
                continue;
            }
            return Some(Field {
                name,
                value: &raw[colon + 1..],
                raw,
            });
        }
    }
}

/// Length of the field starting at `bytes[0]`, continuation lines included.
fn field_end(bytes: &[u8]) -> usize {
    let mut pos = 0;
    loop {
        match memchr::memchr(b'\n', &bytes[pos..]) {
            None => return bytes.len(),
            Some(i) => {
                pos += i + 1;
                if !matches!(bytes.get(pos), Some(b' ' | b'\t')) {
                    return pos;
                }
            }
        }
    }
}

/// The first field named `name` (case-insensitive), unfolded and trimmed.
pub fn first_value(header: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    fields(header)
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .map(|f| unfold(f.value))
}

/// Remove CR and LF (RFC 5322 unfolding) and trim surrounding whitespace.
pub fn unfold(value: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(value.len());
    out.extend(value.iter().filter(|&&c| c != b'\r' && c != b'\n'));
    let trimmed = trim(&out);
    if trimmed.len() == out.len() {
        out
    } else {
        trimmed.to_vec()
    }
}

/// Trim ASCII whitespace (SP, HT, CR, LF) from both ends.
pub fn trim(s: &[u8]) -> &[u8] {
    let is_ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let start = s.iter().position(|c| !is_ws(c)).unwrap_or(s.len());
    let end = s.iter().rposition(|c| !is_ws(c)).map_or(start, |i| i + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_first_empty_line() {
        let m = b"A: 1\r\nB: 2\r\n\r\nbody\r\n";
        let (h, b) = split_header(m, 0);
        assert_eq!(&m[h], b"A: 1\r\nB: 2\r\n\r\n");
        assert_eq!(&m[b], b"body\r\n");
        let (h, b) = split_header(b"\r\nbody", 10);
        assert_eq!((h, b), (10..12, 12..16));
        let (h, b) = split_header(b"A: 1\r\n", 0);
        assert_eq!((h, b), (0..6, 6..6));
    }

    #[test]
    fn iterates_folded_fields() {
        let h = b"Subject: a\r\n b\r\nbogus line\r\n continuation\r\nTo : x\r\n\r\n";
        let f: Vec<_> = fields(h).collect();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, b"Subject");
        assert_eq!(unfold(f[0].value), b"a b");
        assert_eq!(f[1].name, b"To");
        assert_eq!(first_value(h, b"to").as_deref(), Some(&b"x"[..]));
        assert_eq!(first_value(h, b"cc"), None);
    }
}
