//! Content decoding for SEARCH and BINARY: base64 and quoted-printable transfer encodings,
//! RFC 2047 encoded words, and charsets to UTF-8 (via mail-parser's charset tables).
//!
//! Every decoder here is tolerant: malformed input decodes as much as it can and never
//! panics. Never used for ENVELOPE or BODYSTRUCTURE, which are raw by definition.

use std::borrow::Cow;

/// Decode base64, skipping anything outside the alphabet and stopping at padding.
pub fn base64(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Decode quoted-printable (RFC 2045 section 6.7): soft line breaks removed, trailing
/// whitespace on lines dropped, malformed `=` sequences kept literally.
pub fn quoted_printable(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    for line in input.split_inclusive(|&c| c == b'\n') {
        let (content, eol): (&[u8], &[u8]) = if let Some(l) = line.strip_suffix(b"\r\n") {
            (l, b"\r\n")
        } else if let Some(l) = line.strip_suffix(b"\n") {
            (l, b"\n")
        } else {
            (line, b"")
        };
        let content = trim_end_ws(content);
        let (content, soft) = match content.strip_suffix(b"=") {
            Some(c) => (c, true),
            None => (content, false),
        };
        qp_line(content, &mut out);
        if !soft {
            out.extend_from_slice(eol);
        }
    }
    out
}

fn trim_end_ws(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(0, |i| i + 1);
    &s[..end]
}

fn qp_line(s: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'=' {
            if let (Some(h), Some(l)) = (s.get(i + 1).and_then(hex), s.get(i + 2).and_then(hex)) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
}

fn hex(c: &u8) -> Option<u8> {
    (*c as char).to_digit(16).map(|d| d as u8)
}

/// Decode `bytes` in `charset` to UTF-8 (unknown charsets and bad sequences lossily).
pub fn charset_to_utf8<'a>(charset: &[u8], bytes: &'a [u8]) -> Cow<'a, str> {
    let cs = charset.to_ascii_lowercase();
    if matches!(
        cs.as_slice(),
        b"utf-8" | b"utf8" | b"us-ascii" | b"ascii" | b""
    ) {
        return String::from_utf8_lossy(bytes);
    }
    match mail_parser::decoders::charsets::map::charset_decoder(&cs) {
        Some(decode) => Cow::Owned(decode(bytes)),
        None => String::from_utf8_lossy(bytes),
    }
}

/// Decode RFC 2047 encoded words in an (unfolded) header value; whitespace between adjacent
/// encoded words is dropped, everything else is kept (raw 8-bit taken as UTF-8).
pub fn rfc2047(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    let mut pending_ws: Option<&[u8]> = None;
    let mut last_was_word = false;
    while i < value.len() {
        if value[i..].starts_with(b"=?") {
            if let Some((text, len)) = encoded_word(&value[i..]) {
                if let (Some(ws), false) = (pending_ws.take(), last_was_word) {
                    out.push_str(&String::from_utf8_lossy(ws));
                }
                out.push_str(&text);
                i += len;
                last_was_word = true;
                continue;
            }
        }
        let start = i;
        if value[i] == b' ' || value[i] == b'\t' {
            while i < value.len() && (value[i] == b' ' || value[i] == b'\t') {
                i += 1;
            }
            if let Some(ws) = pending_ws.take() {
                out.push_str(&String::from_utf8_lossy(ws));
            }
            pending_ws = Some(&value[start..i]);
            continue;
        }
        while i < value.len()
            && value[i] != b' '
            && value[i] != b'\t'
            && !value[i..].starts_with(b"=?")
        {
            i += 1;
        }
        if i == start {
            i += 1; // a lone "=?" that is not an encoded word
        }
        if let Some(ws) = pending_ws.take() {
            out.push_str(&String::from_utf8_lossy(ws));
        }
        out.push_str(&String::from_utf8_lossy(&value[start..i]));
        last_was_word = false;
    }
    if let Some(ws) = pending_ws {
        out.push_str(&String::from_utf8_lossy(ws));
    }
    out
}

/// `=?charset?enc?text?=` at the start of `s`: (decoded text, length consumed).
fn encoded_word(s: &[u8]) -> Option<(String, usize)> {
    let body = &s[2..];
    let q1 = memchr::memchr(b'?', body)?;
    let enc = *body.get(q1 + 1)?;
    if body.get(q1 + 2) != Some(&b'?') {
        return None;
    }
    let text_start = q1 + 3;
    let end = memchr::memmem::find(&body[text_start..], b"?=")? + text_start;
    let text = &body[text_start..end];
    if text.iter().any(|&c| c == b' ' || c == b'\t') {
        return None;
    }
    let charset = &body[..q1];
    let charset = charset.split(|&c| c == b'*').next().unwrap_or(charset); // RFC 2231 language
    let bytes = match enc.to_ascii_uppercase() {
        b'B' => base64(text),
        b'Q' => {
            let t: Vec<u8> = text
                .iter()
                .map(|&c| if c == b'_' { b' ' } else { c })
                .collect();
            let mut out = Vec::new();
            qp_line(&t, &mut out);
            out
        }
        _ => return None,
    };
    Some((charset_to_utf8(charset, &bytes).into_owned(), 2 + end + 2))
}

/// Decode an RFC 2231 extended parameter value `charset'language'%XX...` to UTF-8.
pub fn rfc2231_value(value: &[u8]) -> String {
    let mut it = value.splitn(3, |&c| c == b'\'');
    let (Some(charset), Some(_lang), Some(text)) = (it.next(), it.next(), it.next()) else {
        return String::from_utf8_lossy(value).into_owned();
    };
    let mut bytes = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' {
            if let (Some(h), Some(l)) =
                (text.get(i + 1).and_then(hex), text.get(i + 2).and_then(hex))
            {
                bytes.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        bytes.push(text[i]);
        i += 1;
    }
    charset_to_utf8(charset, &bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_tolerates_line_breaks_and_garbage() {
        assert_eq!(
            base64(b"AAECAwQF\r\nBgcICQ==\r\n"),
            (0u8..10).collect::<Vec<_>>()
        );
        assert_eq!(base64(b"aGVsbG8*!"), b"hello");
    }

    #[test]
    fn quoted_printable_soft_breaks_and_bad_escapes() {
        assert_eq!(
            quoted_printable(b"caf=C3=A9 =\r\nau lait  \r\n=ZZ"),
            "café au lait\r\n=ZZ".as_bytes()
        );
    }

    #[test]
    fn rfc2047_words() {
        assert_eq!(rfc2047(b"=?UTF-8?B?w6l0w6k=?= plain"), "été plain");
        assert_eq!(
            rfc2047(b"=?ISO-8859-1?Q?Caf=E9?= =?ISO-8859-1?Q?_cr=E8me?="),
            "Café crème"
        );
        assert_eq!(rfc2047(b"a =?bogus b"), "a =?bogus b");
        assert_eq!(rfc2047(b"=?utf-8?q?x?=y"), "xy");
    }

    #[test]
    fn multi_byte_charsets() {
        // "日本" in ISO-2022-JP and Shift_JIS.
        assert_eq!(rfc2047(b"=?ISO-2022-JP?B?GyRCRnxLXBsoQg==?="), "日本");
        assert_eq!(charset_to_utf8(b"Shift_JIS", b"\x93\xfa\x96\x7b"), "日本");
        assert_eq!(charset_to_utf8(b"x-unknown", b"caf\xc3\xa9"), "café");
    }

    #[test]
    fn rfc2231() {
        assert_eq!(rfc2231_value(b"iso-8859-1'fr'caf%E9.txt"), "café.txt");
        assert_eq!(rfc2231_value(b"plain"), "plain");
    }
}
