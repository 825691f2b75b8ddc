//! Response writer: IMAP response syntax onto any `Write`, streaming literals.
//!
//! Owns the lexical form of what the server sends: tagged, untagged and continuation lines, and
//! the choice between atom, quoted string and literal for each value (a value goes out as a
//! literal whenever it contains CR, LF, NUL, 8-bit octets, `"` or `\`, or is long: like UW, we
//! never rely on clients parsing quoted-string escapes).
//! Message bodies are copied from a reader in bounded chunks, never assembled in memory.
//!
//! It never formats anything store-specific (flags, envelopes, body structures are composed by
//! the session from these primitives) and never flushes on its own: the session decides when.

use std::io::{self, Read, Write};

/// Values longer than this go out as literals even if they could be quoted.
pub const MAX_QUOTED: usize = 1024;

/// How a string value must be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringForm {
    Atom,
    Quoted,
    Literal,
}

/// Is `c` safe in an atom we send? (ATOM-CHAR; `]` excluded to stay unambiguous.)
fn is_send_atom_char(c: u8) -> bool {
    crate::wire::parser::is_atom_char(c)
}

/// The form `value` needs; `allow_atom` for contexts where an astring is allowed.
pub fn string_form(value: &[u8], allow_atom: bool) -> StringForm {
    let needs_literal = value.len() > MAX_QUOTED
        || value
            .iter()
            .any(|&c| matches!(c, 0 | b'\r' | b'\n' | b'"' | b'\\') || c >= 0x80);
    if needs_literal {
        return StringForm::Literal;
    }
    if allow_atom
        && !value.is_empty()
        && value.iter().all(|&c| is_send_atom_char(c))
        && !value.eq_ignore_ascii_case(b"NIL")
    {
        return StringForm::Atom;
    }
    StringForm::Quoted
}

/// Writes responses to the client.
pub struct ResponseWriter<'a> {
    out: &'a mut dyn Write,
}

impl<'a> ResponseWriter<'a> {
    pub fn new(out: &'a mut dyn Write) -> Self {
        ResponseWriter { out }
    }

    /// Raw protocol text (already known to be valid, e.g. `* 3 EXISTS`).
    pub fn raw(&mut self, text: &[u8]) -> io::Result<()> {
        self.out.write_all(text)
    }

    /// End the current response line.
    pub fn crlf(&mut self) -> io::Result<()> {
        self.out.write_all(b"\r\n")
    }

    /// A whole untagged line: `* <text>\r\n`.
    pub fn untagged(&mut self, text: &str) -> io::Result<()> {
        self.line(b"*", text)
    }

    /// A whole tagged line: `<tag> <text>\r\n` (text starts with OK, NO or BAD).
    pub fn tagged(&mut self, tag: &str, text: &str) -> io::Result<()> {
        self.line(tag.as_bytes(), text)
    }

    /// A continuation request: `+ <text>\r\n`.
    pub fn continuation(&mut self, text: &str) -> io::Result<()> {
        self.line(b"+", text)
    }

    fn line(&mut self, prefix: &[u8], text: &str) -> io::Result<()> {
        self.out.write_all(prefix)?;
        self.out.write_all(b" ")?;
        // Response text cannot carry a line break: it would forge another response.
        for chunk in text.as_bytes().split(|&c| c == b'\r' || c == b'\n') {
            self.out.write_all(chunk)?;
        }
        self.crlf()
    }

    /// A `string` (quoted or literal).
    pub fn write_string(&mut self, value: &[u8]) -> io::Result<()> {
        self.value(value, false)
    }

    /// An `astring` (atom when possible, else quoted or literal).
    pub fn write_astring(&mut self, value: &[u8]) -> io::Result<()> {
        self.value(value, true)
    }

    /// An `nstring`: `NIL` for `None`.
    pub fn write_nstring(&mut self, value: Option<&[u8]>) -> io::Result<()> {
        match value {
            None => self.out.write_all(b"NIL"),
            Some(v) => self.write_string(v),
        }
    }

    /// A mailbox name given in UTF-8: encoded to modified UTF-7, then as an astring.
    pub fn write_mailbox(&mut self, name: &str) -> io::Result<()> {
        self.write_astring(crate::wire::mutf7::encode(name).as_bytes())
    }

    fn value(&mut self, value: &[u8], allow_atom: bool) -> io::Result<()> {
        match string_form(value, allow_atom) {
            StringForm::Atom => self.out.write_all(value),
            StringForm::Quoted => self.quoted(value),
            StringForm::Literal => {
                write!(self.out, "{{{}}}\r\n", value.len())?;
                self.out.write_all(value)
            }
        }
    }

    /// A quoted string; [`string_form`] has ruled out everything that would need escaping.
    fn quoted(&mut self, value: &[u8]) -> io::Result<()> {
        self.out.write_all(b"\"")?;
        self.out.write_all(value)?;
        self.out.write_all(b"\"")
    }

    /// A literal of exactly `len` bytes copied from `reader` in bounded chunks. If the reader
    /// ends early the connection is out of sync: that is an error the session must treat as
    /// fatal (close the connection).
    pub fn write_literal_from(&mut self, reader: &mut dyn Read, len: u64) -> io::Result<()> {
        write!(self.out, "{{{len}}}\r\n")?;
        let copied = io::copy(&mut reader.take(len), &mut self.out)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("literal source ended after {copied} of {len} bytes"),
            ));
        }
        Ok(())
    }

    /// A `literal8` (RFC 3516 `~{N}`) copied from `reader`, for BINARY[] with NULs.
    pub fn write_literal8_from(&mut self, reader: &mut dyn Read, len: u64) -> io::Result<()> {
        self.out.write_all(b"~")?;
        self.write_literal_from(reader, len)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(f: impl FnOnce(&mut ResponseWriter) -> io::Result<()>) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut ResponseWriter::new(&mut out)).unwrap();
        out
    }

    #[test]
    fn forms() {
        assert_eq!(string_form(b"INBOX", true), StringForm::Atom);
        assert_eq!(string_form(b"INBOX", false), StringForm::Quoted);
        assert_eq!(string_form(b"nil", true), StringForm::Quoted);
        assert_eq!(string_form(b"", true), StringForm::Quoted);
        assert_eq!(string_form(b"a b", true), StringForm::Quoted);
        assert_eq!(string_form(b"a]", true), StringForm::Quoted);
        for lit in [
            &b"a\rb"[..],
            b"a\nb",
            b"a\0b",
            b"caf\xc3\xa9",
            b"a\"b",
            b"a\\b",
        ] {
            assert_eq!(string_form(lit, true), StringForm::Literal);
        }
        assert_eq!(
            string_form(&[b'a'; MAX_QUOTED + 1], true),
            StringForm::Literal
        );
    }

    #[test]
    fn strings_render_and_reparse() {
        assert_eq!(render(|w| w.write_astring(b"mail/saved")), b"mail/saved");
        assert_eq!(
            render(|w| w.write_string(br#"say "hi" \o/"#)),
            b"{12}\r\nsay \"hi\" \\o/"
        );
        assert_eq!(render(|w| w.write_string(b"x\r\ny")), b"{4}\r\nx\r\ny");
        assert_eq!(render(|w| w.write_nstring(None)), b"NIL");
        assert_eq!(render(|w| w.write_nstring(Some(b"NIL"))), b"\"NIL\"");
        assert_eq!(render(|w| w.write_mailbox("\u{e9}t\u{e9}")), b"&AOk-t&AOk-");
        // What we quote, our own parser reads back identically.
        for v in [&b"plain"[..], b"a(b)c", b"", b"  spaced  ", b"%*]{"] {
            let wire = render(|w| w.write_string(v));
            let mut c = crate::wire::parser::Cursor::from_text(&wire);
            assert_eq!(c.astring().unwrap(), v);
            assert!(c.at_end());
        }
    }

    #[test]
    fn lines_cannot_be_forged() {
        assert_eq!(render(|w| w.tagged("a1", "OK done")), b"a1 OK done\r\n");
        assert_eq!(render(|w| w.untagged("3 EXISTS")), b"* 3 EXISTS\r\n");
        assert_eq!(
            render(|w| w.continuation("Ready for argument")),
            b"+ Ready for argument\r\n"
        );
        assert_eq!(
            render(|w| w.tagged("a1", "NO bad\r\na2 OK forged")),
            b"a1 NO bada2 OK forged\r\n"
        );
    }

    #[test]
    fn streamed_literals() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
        let out = render(|w| w.write_literal_from(&mut &body[..], body.len() as u64));
        assert!(out.starts_with(b"{200000}\r\n"));
        assert_eq!(&out[10..], &body[..]);
        let out = render(|w| w.write_literal8_from(&mut &b"\0\x01"[..], 2));
        assert_eq!(out, b"~{2}\r\n\0\x01");
        let mut out = Vec::new();
        let err = ResponseWriter::new(&mut out)
            .write_literal_from(&mut &b"short"[..], 10)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
