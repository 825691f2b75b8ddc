//! Fast line-by-line reading of a (possibly huge) file with positional reads.
//!
//! Owns buffering only: hands out lines with their file offsets, splitting absurdly long lines
//! into pieces so memory stays bounded. Never interprets the bytes.

use memchr::memchr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const CHUNK: usize = 1 << 20;
/// Lines longer than this are handed out in pieces (`at_line_start == false` after the first).
const MAX_PIECE: usize = 4 << 20;

/// One line (or piece of an over-long line), including its `\n` when it has one.
pub(super) struct Line<'a> {
    pub offset: u64,
    pub bytes: &'a [u8],
    /// False for the second and later pieces of a line longer than the piece limit.
    pub at_line_start: bool,
}

pub(super) struct LineReader<'f> {
    file: &'f File,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// File offset of `buf[start]`.
    pos: u64,
    /// File offset of `buf[end]`.
    read_pos: u64,
    /// Read no further than this offset.
    limit: u64,
    eof: bool,
    at_line_start: bool,
}

impl<'f> LineReader<'f> {
    /// Read `file` from `offset` up to `limit` (exclusive).
    pub fn new(file: &'f File, offset: u64, limit: u64) -> LineReader<'f> {
        LineReader {
            file,
            buf: Vec::new(),
            start: 0,
            end: 0,
            pos: offset,
            read_pos: offset,
            limit,
            eof: offset >= limit,
            at_line_start: true,
        }
    }

    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        let (from, to) = loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(i) = memchr(b'\n', pending) {
                break (self.start, self.start + i + 1);
            }
            if self.eof || pending.len() >= MAX_PIECE {
                if pending.is_empty() {
                    return Ok(None);
                }
                break (self.start, self.end);
            }
            self.fill()?;
        };
        let at_line_start = self.at_line_start;
        self.at_line_start = self.buf[to - 1] == b'\n';
        let offset = self.pos;
        self.start = to;
        self.pos += (to - from) as u64;
        Ok(Some(Line {
            offset,
            bytes: &self.buf[from..to],
            at_line_start,
        }))
    }

    fn fill(&mut self) -> io::Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let left = usize::try_from(self.limit - self.read_pos).unwrap_or(usize::MAX);
        let chunk = CHUNK.min(left);
        if self.buf.len() < self.end + chunk {
            self.buf.resize(self.end + chunk, 0);
        }
        let want = (self.buf.len() - self.end).min(left);
        let n = loop {
            match self
                .file
                .read_at(&mut self.buf[self.end..self.end + want], self.read_pos)
            {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.end += n;
        self.read_pos += n as u64;
        if n == 0 || self.read_pos >= self.limit {
            self.eof = true;
        }
        Ok(())
    }
}

/// Length of one line from [`LineReader`] (a `\n` can only be its last byte) as presented:
/// every CR dropped, the LF becomes CRLF (as UW does). One pass over the line: the parser
/// calls this for every line of every message.
pub(super) fn line_presented_len(line: &[u8]) -> u64 {
    let lf = usize::from(line.last() == Some(&b'\n'));
    // A plain counting loop: vectorised by the compiler, cheaper than a search per line.
    let cr = line.iter().filter(|&&c| c == b'\r').count();
    (line.len() + lf - cr) as u64
}

/// Length of `bytes` (any number of lines) as presented: every CR dropped, every LF becomes
/// CRLF (as UW does).
pub(super) fn presented_len(bytes: &[u8]) -> u64 {
    let lf = memchr::memchr_iter(b'\n', bytes).count();
    let cr = memchr::memchr_iter(b'\r', bytes).count();
    (bytes.len() + lf - cr) as u64
}

/// Append `bytes` as presented (see [`line_presented_len`]), any number of lines.
pub(super) fn present_into(bytes: &[u8], out: &mut Vec<u8>) {
    let mut rest = bytes;
    while let Some(i) = memchr::memchr2(b'\r', b'\n', rest) {
        out.extend_from_slice(&rest[..i]);
        if rest[i] == b'\n' {
            out.extend_from_slice(b"\r\n");
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lines_keep_offsets_and_last_line_without_newline() {
        let dir = crate::store::mbox::tests::TempDir::new("lines");
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"a\nbb\r\n\nccc").unwrap();
        let f = File::open(&path).unwrap();
        let mut r = LineReader::new(&f, 0, 100);
        let mut got = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            got.push((l.offset, l.bytes.to_vec(), l.at_line_start));
        }
        assert_eq!(
            got,
            vec![
                (0, b"a\n".to_vec(), true),
                (2, b"bb\r\n".to_vec(), true),
                (6, b"\n".to_vec(), true),
                (7, b"ccc".to_vec(), true)
            ]
        );
        let mut r = LineReader::new(&f, 2, 7);
        assert_eq!(r.next_line().unwrap().unwrap().bytes, b"bb\r\n");
        assert_eq!(r.next_line().unwrap().unwrap().bytes, b"\n");
        assert!(r.next_line().unwrap().is_none());
    }

    #[test]
    fn huge_lines_come_in_pieces() {
        let dir = crate::store::mbox::tests::TempDir::new("lines-huge");
        let path = dir.path().join("f");
        let mut data = vec![b'x'; MAX_PIECE + 10];
        data.extend_from_slice(b"\nnext\n");
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        let mut r = LineReader::new(&f, 0, data.len() as u64);
        let first = r.next_line().unwrap().unwrap();
        assert!(first.at_line_start && first.bytes.len() == MAX_PIECE);
        let second = r.next_line().unwrap().unwrap();
        assert!(!second.at_line_start && second.bytes.len() == 11);
        let third = r.next_line().unwrap().unwrap();
        assert!(third.at_line_start && third.bytes == b"next\n");
    }

    #[test]
    fn presentation_drops_cr_and_expands_lf() {
        let mut out = Vec::new();
        present_into(b"a\r\nb\rc\nd", &mut out);
        assert_eq!(out, b"a\r\nbc\r\nd");
        assert_eq!(presented_len(b"a\r\nb\rc\nd"), out.len() as u64);
    }

    #[test]
    fn one_line_presented_length_matches_the_general_one() {
        for line in [
            &b""[..],
            b"\n",
            b"\r\n",
            b"abc",
            b"a\rb\r\n",
            b"\r\r\r",
            b"x\r",
            b"From me\n",
        ] {
            assert_eq!(line_presented_len(line), presented_len(line), "{line:?}");
        }
        let long: Vec<u8> = (0..1000u32)
            .map(|i| if i % 7 == 0 { b'\r' } else { b'a' })
            .collect();
        assert_eq!(line_presented_len(&long), presented_len(&long));
    }
}
