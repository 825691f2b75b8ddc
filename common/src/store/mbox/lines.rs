//! Fast line-by-line reading of a (possibly huge) file with positional reads.
//!
//! Owns buffering only: hands out lines with their file offsets, splitting absurdly long lines
//! into pieces so memory stays bounded, or passes over lines in bulk up to one that starts
//! with a caller's prefix, counting what it passed. Knows line ends and nothing else of the
//! bytes: what a separator line is, the caller decides.

use memchr::memchr;
use memchr::memmem::Finder;
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

/// The line [`LineReader::skip_to_line`] stopped at: its offset, its length and what the
/// caller's test made of it.
pub(super) type Found<T> = (u64, u64, T);

/// What [`LineReader::skip_to_line`] passed over.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Skipped {
    pub len: u64,
    /// `\n` and `\r` bytes among them.
    pub lf: u64,
    pub cr: u64,
    /// The last three bytes passed over (zeros before the first).
    last: [u8; 3],
    /// Whether the first byte passed over started a line.
    from_line_start: bool,
}

impl Skipped {
    fn add(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.lf += memchr::memchr_iter(b'\n', bytes).count() as u64;
        self.cr += memchr::memchr_iter(b'\r', bytes).count() as u64;
        for &b in &bytes[bytes.len().saturating_sub(3)..] {
            self.last = [self.last[1], self.last[2], b];
        }
    }

    /// Length of the last line passed over if it is a blank line (`\n` or `\r\n`), else 0.
    pub fn trailing_blank(&self) -> u64 {
        let [a, b, c] = self.last;
        let starts_line = |at: u64, before: u8| {
            self.len > at && before == b'\n' || self.len == at && self.from_line_start
        };
        match (b, c) {
            (_, b'\n') if starts_line(1, b) => 1,
            (b'\r', b'\n') if starts_line(2, a) => 2,
            _ => 0,
        }
    }

    /// The bytes passed over as presented (see [`line_presented_len`]).
    pub fn presented_len(&self) -> u64 {
        self.len + self.lf - self.cr
    }
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
    /// Bytes read at a time, and the longest piece handed out ([`CHUNK`], [`MAX_PIECE`];
    /// tests make them tiny to reach every buffer boundary).
    chunk: usize,
    max_piece: usize,
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
            chunk: CHUNK,
            max_piece: MAX_PIECE,
        }
    }

    #[cfg(test)]
    fn with_sizes(
        file: &'f File,
        offset: u64,
        limit: u64,
        chunk: usize,
        max_piece: usize,
    ) -> LineReader<'f> {
        LineReader {
            chunk,
            max_piece,
            ..LineReader::new(file, offset, limit)
        }
    }

    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        let Some((from, to)) = self.next_span()? else {
            return Ok(None);
        };
        let at_line_start = self.at_line_start;
        let offset = self.pos;
        self.take(to);
        Ok(Some(Line {
            offset,
            bytes: &self.buf[from..to],
            at_line_start,
        }))
    }

    /// Pass over lines as [`next_line`](Self::next_line) would hand them out, up to the first
    /// one that starts (at a line start) with what `separator` seeks after its leading `\n`
    /// and that `accept` takes; that line is consumed too. Returns what was passed over, and
    /// the line's offset, length and what `accept` made of it. One search per buffer instead
    /// of one per line: message bodies are most of an mbox.
    pub fn skip_to_line<T>(
        &mut self,
        separator: &Finder<'_>,
        mut accept: impl FnMut(&[u8]) -> Option<T>,
    ) -> io::Result<(Skipped, Option<Found<T>>)> {
        let needle = separator.needle();
        let prefix = &needle[1..];
        let mut skipped = Skipped {
            from_line_start: self.at_line_start,
            ..Skipped::default()
        };
        loop {
            if self.at_line_start && self.buffered_starts_with(prefix)? {
                let Some((from, to)) = self.next_span()? else {
                    break;
                };
                if let Some(found) = accept(&self.buf[from..to]) {
                    let offset = self.pos;
                    self.take(to);
                    return Ok((skipped, Some((offset, (to - from) as u64, found))));
                }
                self.pass(to, &mut skipped);
                continue;
            }
            let pending = &self.buf[self.start..self.end];
            if let Some(i) = separator.find(pending) {
                self.pass(self.start + i + 1, &mut skipped);
                continue;
            }
            if self.eof {
                if self.end > self.start {
                    self.pass(self.end, &mut skipped);
                }
                break;
            }
            // The last bytes may begin a separator that the next read completes.
            let keep = (needle.len() - 1).min(pending.len());
            if self.end - keep > self.start {
                self.pass(self.end - keep, &mut skipped);
            }
            self.fill()?;
        }
        Ok((skipped, None))
    }

    /// Where the next line (or piece of an over-long one) lies in `buf`, reading as needed.
    fn next_span(&mut self) -> io::Result<Option<(usize, usize)>> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(i) = memchr(b'\n', pending) {
                return Ok(Some((self.start, self.start + i + 1)));
            }
            if self.eof || pending.len() >= self.max_piece {
                if pending.is_empty() {
                    return Ok(None);
                }
                return Ok(Some((self.start, self.end)));
            }
            self.fill()?;
        }
    }

    /// Whether the unread bytes start with `prefix` (reading until they could).
    fn buffered_starts_with(&mut self, prefix: &[u8]) -> io::Result<bool> {
        while self.end - self.start < prefix.len() && !self.eof {
            self.fill()?;
        }
        Ok(self.buf[self.start..self.end].starts_with(prefix))
    }

    /// Consume `buf[start..to]`, counting it into `skipped`.
    fn pass(&mut self, to: usize, skipped: &mut Skipped) {
        skipped.add(&self.buf[self.start..to]);
        self.take(to);
    }

    /// Consume `buf[start..to]` (not empty).
    fn take(&mut self, to: usize) {
        self.at_line_start = self.buf[to - 1] == b'\n';
        self.pos += (to - self.start) as u64;
        self.start = to;
    }

    fn fill(&mut self) -> io::Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let left = usize::try_from(self.limit - self.read_pos).unwrap_or(usize::MAX);
        let chunk = self.chunk.min(left);
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

    /// The line-by-line pass that [`LineReader::skip_to_line`] replaces (the parser's old
    /// body loop): passed length, presented length, trailing blank line, the line found.
    fn skip_by_lines(
        r: &mut LineReader<'_>,
        accept: fn(&[u8]) -> Option<usize>,
    ) -> (u64, u64, u64, Option<(u64, u64, usize)>) {
        let (mut len, mut presented, mut blank) = (0, 0, 0);
        while let Some(line) = r.next_line().unwrap() {
            if line.at_line_start && line.bytes.starts_with(b"From ") {
                if let Some(found) = accept(line.bytes) {
                    let found = (line.offset, line.bytes.len() as u64, found);
                    return (len, presented, blank, Some(found));
                }
            }
            len += line.bytes.len() as u64;
            presented += line_presented_len(line.bytes);
            let is_blank = line.bytes == b"\n" || line.bytes == b"\r\n";
            blank = if line.at_line_start && is_blank {
                line.bytes.len() as u64
            } else {
                0
            };
        }
        (len, presented, blank, None)
    }

    /// A `From ` line is taken when it is whole and has a `!` (the parser's test is its
    /// date). Where a piece of an over-long line ends depends on what is buffered, so a
    /// piece is never taken, as no piece of megabytes is a valid `From ` line.
    fn has_bang(line: &[u8]) -> Option<usize> {
        memchr(b'!', line).filter(|_| line.ends_with(b"\n"))
    }

    #[test]
    fn skipping_to_a_line_matches_reading_line_by_line() {
        const PIECES: [&[u8]; 12] = [
            b"From ",
            b"From a!\n",
            b"\n",
            b"\r\n",
            b"\r",
            b"x",
            b"abc",
            b"Fro",
            b"m ",
            b"!",
            b" ",
            b"\nFrom ",
        ];
        let dir = crate::store::mbox::tests::TempDir::new("lines-skip");
        let path = dir.path().join("f");
        let separator = Finder::new(b"\nFrom ");
        let mut rng = crate::store::mbox::tests::XorShift(0x2545_f491_4f6c_dd1d);
        let mut next = |n: u64| rng.below(n);
        for case in 0..3000 {
            let mut data = Vec::new();
            for _ in 0..next(40) {
                data.extend_from_slice(PIECES[next(PIECES.len() as u64) as usize]);
            }
            std::fs::write(&path, &data).unwrap();
            let f = File::open(&path).unwrap();
            let len = data.len() as u64;
            let offset = next(len / 4 + 1);
            let limit = len - next(len / 4 + 1).min(len - offset);
            let chunk = 1 + next(12) as usize;
            // Pieces of over-long lines end where the buffer does; see `has_bang`.
            let max_piece = if case % 2 == 0 {
                1 << 12
            } else {
                4 + next(30) as usize
            };
            let mut old = LineReader::with_sizes(&f, offset, limit, chunk, max_piece);
            let mut new = LineReader::with_sizes(&f, offset, limit, chunk, max_piece);
            let mut rounds = 0;
            // Where a piece ends depends on what is buffered (see `has_bang`): with tiny pieces,
            // compare only what is passed over.
            let accept = if case % 2 == 0 {
                has_bang
            } else {
                |_: &[u8]| None
            };
            if case % 4 == 1 {
                // Start in the middle of a line: after a piece.
                let piece = old.next_line().unwrap().map(|l| l.bytes.to_vec());
                assert_eq!(new.next_line().unwrap().map(|l| l.bytes.to_vec()), piece);
            }
            loop {
                let want = skip_by_lines(&mut old, accept);
                let (skipped, found) = new.skip_to_line(&separator, accept).unwrap();
                let got = (
                    skipped.len,
                    skipped.presented_len(),
                    skipped.trailing_blank(),
                    found,
                );
                assert_eq!(
                    got, want,
                    "case {case} round {rounds}: {data:?} {offset}..{limit}"
                );
                if got.3.is_none() {
                    break;
                }
                rounds += 1;
            }
            assert!(old.next_line().unwrap().is_none() && new.next_line().unwrap().is_none());
        }
    }

    #[test]
    fn the_end_of_a_long_line_is_not_a_blank_line() {
        let dir = crate::store::mbox::tests::TempDir::new("lines-tail");
        let path = dir.path().join("f");
        let separator = Finder::new(b"\nFrom ");
        for (data, blank) in [
            (&b"abcd\n"[..], 0),
            (b"abcd\r\n", 0),
            (b"\n", 1),
            (b"\r\n", 2),
        ] {
            std::fs::write(&path, data).unwrap();
            let f = File::open(&path).unwrap();
            let mut r = LineReader::with_sizes(&f, 0, data.len() as u64, 4, 4);
            if data.len() > 2 {
                assert_eq!(r.next_line().unwrap().unwrap().bytes, b"abcd");
            }
            let (skipped, found) = r.skip_to_line(&separator, has_bang).unwrap();
            assert!(found.is_none());
            assert_eq!(skipped.trailing_blank(), blank, "{data:?}");
            assert_eq!(skipped.presented_len(), 2);
        }
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
