//! POP3 wire format: splitting a command line into its keyword and arguments, and writing
//! responses — single lines and dot-stuffed multi-line bodies streamed from a reader.
//!
//! Owns bytes on the wire only. Never knows about states, mailboxes or users.

use std::io::{self, Read, Write};

/// Longest command line accepted (RFC 2449 allows 255 octets; SASL responses need more).
pub const MAX_LINE: usize = 8190;

/// A command as the client sent it: keyword upper-cased, arguments split on spaces.
#[derive(Debug, PartialEq, Eq)]
pub struct Command {
    pub keyword: String,
    /// The raw text after the keyword and its separating space (passwords may contain spaces).
    pub rest: Vec<u8>,
}

impl Command {
    /// Parse one line (without its CRLF). `None` for an empty line or a keyword that is not
    /// 1 to 8 ASCII letters (RFC 1939 keywords are 3 or 4 letters; extensions up to 8).
    pub fn parse(line: &[u8]) -> Option<Command> {
        let (word, rest) = match memchr::memchr(b' ', line) {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        if word.is_empty() || word.len() > 8 || !word.iter().all(u8::is_ascii_alphabetic) {
            return None;
        }
        Some(Command {
            keyword: String::from_utf8_lossy(word).to_ascii_uppercase(),
            rest: rest.to_vec(),
        })
    }

    /// The arguments as space-separated words (empty words dropped).
    pub fn args(&self) -> Vec<&[u8]> {
        self.rest
            .split(|&b| b == b' ')
            .filter(|w| !w.is_empty())
            .collect()
    }

    /// The whole argument text as UTF-8, or `None` if it is not valid UTF-8.
    pub fn rest_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.rest).ok()
    }
}

/// A message number argument: 1 to `u32::MAX` in plain decimal digits, else `None`.
pub fn parse_number(arg: &[u8]) -> Option<u32> {
    if arg.is_empty() || arg.len() > 10 || !arg.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// Write `+OK text` or `-ERR text` with CRLF.
pub fn status_line(out: &mut dyn Write, ok: bool, text: &str) -> io::Result<()> {
    let head: &[u8] = if ok { b"+OK" } else { b"-ERR" };
    out.write_all(head)?;
    if !text.is_empty() {
        out.write_all(b" ")?;
        out.write_all(text.as_bytes())?;
    }
    out.write_all(b"\r\n")
}

/// Streams message text with dot-stuffing (RFC 1939 §3), optionally stopping after the header
/// plus `body_lines` body lines (TOP). Makes sure the text ends with CRLF before the caller
/// writes the terminating `.` line.
pub struct DotStuffer<'a> {
    out: &'a mut dyn Write,
    at_line_start: bool,
    /// The current line has a byte other than CR/LF so far (an empty line ends the header).
    line_has_text: bool,
    in_header: bool,
    /// For TOP: body lines still allowed; `None` means unlimited (RETR).
    body_lines_left: Option<u64>,
    wrote_any: bool,
    last_was_lf: bool,
    done: bool,
}

impl<'a> DotStuffer<'a> {
    pub fn new(out: &'a mut dyn Write, body_lines: Option<u64>) -> DotStuffer<'a> {
        DotStuffer {
            out,
            at_line_start: true,
            line_has_text: false,
            in_header: true,
            body_lines_left: body_lines,
            wrote_any: false,
            last_was_lf: false,
            done: false,
        }
    }

    /// Copy everything from `src`, then end the text properly (CRLF if missing, then `.`).
    pub fn copy_from(mut self, src: &mut dyn Read) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        while !self.done {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.write_chunk(&buf[..n])?;
        }
        self.finish()
    }

    fn write_chunk(&mut self, mut chunk: &[u8]) -> io::Result<()> {
        while !chunk.is_empty() && !self.done {
            let line_end = memchr::memchr(b'\n', chunk).map(|i| i + 1);
            let piece = &chunk[..line_end.unwrap_or(chunk.len())];
            if self.at_line_start {
                self.begin_line(piece)?;
                if self.done {
                    return Ok(());
                }
            }
            self.out.write_all(piece)?;
            self.wrote_any = true;
            self.last_was_lf = piece.last() == Some(&b'\n');
            self.line_has_text |= piece.iter().any(|&b| b != b'\r' && b != b'\n');
            self.at_line_start = line_end.is_some();
            if self.at_line_start {
                if !self.line_has_text {
                    self.in_header = false;
                }
                self.line_has_text = false;
            }
            chunk = &chunk[piece.len()..];
        }
        Ok(())
    }

    /// Called at the first bytes of every line: applies the TOP limit to body lines and
    /// stuffs a leading dot.
    fn begin_line(&mut self, piece: &[u8]) -> io::Result<()> {
        // Header lines and the empty line that ends the header are always sent.
        if let (false, Some(left)) = (self.in_header, self.body_lines_left.as_mut()) {
            if *left == 0 {
                self.done = true;
                return Ok(());
            }
            *left -= 1;
        }
        if piece.first() == Some(&b'.') {
            self.out.write_all(b".")?;
        }
        Ok(())
    }

    fn finish(self) -> io::Result<()> {
        if self.wrote_any && !self.last_was_lf {
            self.out.write_all(b"\r\n")?;
        }
        self.out.write_all(b".\r\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(text: &[u8], lines: Option<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        DotStuffer::new(&mut out, lines)
            .copy_from(&mut &text[..])
            .unwrap();
        out
    }

    #[test]
    fn parses_keyword_and_rest() {
        let c = Command::parse(b"pass my secret ").unwrap();
        assert_eq!(c.keyword, "PASS");
        assert_eq!(c.rest, b"my secret ");
        assert_eq!(c.args(), vec![&b"my"[..], &b"secret"[..]]);
        assert_eq!(Command::parse(b""), None);
        assert_eq!(Command::parse(b" STAT"), None);
        assert_eq!(Command::parse(b"ST\0T"), None);
        assert_eq!(Command::parse(b"ABCDEFGHI"), None);
    }

    #[test]
    fn numbers_are_strict() {
        assert_eq!(parse_number(b"1"), Some(1));
        assert_eq!(parse_number(b"4294967295"), Some(u32::MAX));
        for bad in [
            &b"0x1"[..],
            b"-1",
            b"+1",
            b"",
            b"99999999999",
            b"4294967296",
            b"1 ",
        ] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
        assert_eq!(parse_number(b"0"), Some(0));
    }

    #[test]
    fn dot_stuffs_and_terminates() {
        let got = stuffed(b"A: b\r\n\r\n.hidden\r\nx\r\n..two\r\n", None);
        assert_eq!(got, b"A: b\r\n\r\n..hidden\r\nx\r\n...two\r\n.\r\n");
    }

    #[test]
    fn adds_missing_final_crlf() {
        assert_eq!(
            stuffed(b"A: b\r\n\r\nno newline", None),
            b"A: b\r\n\r\nno newline\r\n.\r\n"
        );
        assert_eq!(stuffed(b"", None), b".\r\n");
    }

    #[test]
    fn top_limits_body_lines() {
        let msg = b"A: b\r\nC: d\r\n\r\nl1\r\n.l2\r\nl3\r\n";
        assert_eq!(stuffed(msg, Some(0)), b"A: b\r\nC: d\r\n\r\n.\r\n");
        assert_eq!(
            stuffed(msg, Some(2)),
            b"A: b\r\nC: d\r\n\r\nl1\r\n..l2\r\n.\r\n"
        );
        assert_eq!(
            stuffed(msg, Some(99)),
            b"A: b\r\nC: d\r\n\r\nl1\r\n..l2\r\nl3\r\n.\r\n"
        );
    }

    #[test]
    fn stuffing_survives_chunk_boundaries() {
        // A reader that hands out one byte at a time.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let msg = b"H: v\r\n\r\n.a\r\nb\r\n.\r\n";
        let mut out = Vec::new();
        DotStuffer::new(&mut out, Some(2))
            .copy_from(&mut Trickle(msg))
            .unwrap();
        assert_eq!(out, b"H: v\r\n\r\n..a\r\nb\r\n.\r\n");
    }
}
