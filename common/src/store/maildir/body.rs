//! Message bodies as presented: LF line ends become CRLF, CRLF stays CRLF.
//!
//! Owns the size computation and the streaming conversion, which must agree octet for octet.
//! Never buffers a whole message.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Reads a file from its start by offset, whatever its descriptor's position (which clones of
/// the descriptor share).
pub struct ReadAt {
    file: File,
    pos: u64,
}

impl ReadAt {
    pub fn new(file: File) -> ReadAt {
        ReadAt { file, pos: 0 }
    }
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Size of `path` as presented: its length plus one CR for every LF not preceded by CR.
pub fn presented_size(path: &Path) -> io::Result<u64> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut prev_cr = false;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        total += n as u64;
        for at in memchr::memchr_iter(b'\n', chunk) {
            let cr_before = if at == 0 {
                prev_cr
            } else {
                chunk[at - 1] == b'\r'
            };
            if !cr_before {
                total += 1;
            }
        }
        prev_cr = chunk[n - 1] == b'\r';
    }
}

/// Streams a file with bare LF turned into CRLF, yielding exactly `size` octets: longer content
/// is cut, shorter content is an `UnexpectedEof` error (the recorded size was wrong).
pub struct CrlfReader<R> {
    inner: BufReader<R>,
    remaining: u64,
    state: ConvertState,
}

impl<R: Read> CrlfReader<R> {
    pub fn new(inner: R, size: u64) -> CrlfReader<R> {
        CrlfReader {
            inner: BufReader::with_capacity(64 * 1024, inner),
            remaining: size,
            state: ConvertState {
                prev_cr: false,
                pending_lf: false,
            },
        }
    }
}

/// Where a conversion stands between two reads.
struct ConvertState {
    prev_cr: bool,
    /// An LF still owed after its inserted CR did not fit in the caller's buffer.
    pending_lf: bool,
}

impl ConvertState {
    /// Convert from `input` into `out`; returns (bytes written, bytes consumed).
    fn convert(&mut self, input: &[u8], out: &mut [u8]) -> (usize, usize) {
        let mut written = 0;
        let mut consumed = 0;
        while written < out.len() && consumed < input.len() {
            let rest = &input[consumed..];
            let run = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            if run > 0 {
                let n = run.min(out.len() - written);
                out[written..written + n].copy_from_slice(&rest[..n]);
                written += n;
                consumed += n;
                self.prev_cr = rest[n - 1] == b'\r';
                continue;
            }
            // rest[0] is an LF.
            if !self.prev_cr {
                out[written] = b'\r';
                written += 1;
                if written == out.len() {
                    self.pending_lf = true;
                    consumed += 1;
                    break;
                }
            }
            out[written] = b'\n';
            written += 1;
            consumed += 1;
            self.prev_cr = false;
        }
        (written, consumed)
    }
}

impl<R: Read> Read for CrlfReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let limit = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(out.len());
        if limit == 0 {
            return Ok(0);
        }
        let out = &mut out[..limit];
        if self.state.pending_lf {
            self.state.pending_lf = false;
            self.state.prev_cr = false;
            out[0] = b'\n';
            self.remaining -= 1;
            return Ok(1);
        }
        let input = self.inner.fill_buf()?;
        if input.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("message is {} octets shorter than its size", self.remaining),
            ));
        }
        let (written, consumed) = self.state.convert(input, out);
        self.inner.consume(consumed);
        self.remaining -= written as u64;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn stream(data: &[u8], size: u64, chunk: usize) -> io::Result<Vec<u8>> {
        let mut reader = CrlfReader::new(Cursor::new(data.to_vec()), size);
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn converts_bare_lf_and_keeps_crlf() {
        let data = b"A: b\nC: d\r\n\r\nbody\n\rx\n";
        let want = b"A: b\r\nC: d\r\n\r\nbody\r\n\rx\r\n";
        for chunk in [1, 2, 3, 7, 4096] {
            assert_eq!(stream(data, want.len() as u64, chunk).unwrap(), want);
        }
    }

    #[test]
    fn cuts_at_size_and_errors_when_short() {
        assert_eq!(stream(b"abc\ndef\n", 5, 2).unwrap(), b"abc\r\n");
        let err = stream(b"abc\n", 9, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn size_matches_stream_across_chunk_boundaries() {
        let dir = std::env::temp_dir().join(format!("maildir-body-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m");
        // A CR at the end of one 64 KiB read and its LF at the start of the next.
        let mut data = vec![b'x'; 64 * 1024 - 1];
        data.extend_from_slice(b"\r\nline\nlast");
        std::fs::write(&path, &data).unwrap();
        let size = presented_size(&path).unwrap();
        assert_eq!(size, data.len() as u64 + 1);
        let streamed = stream(&data, size, 1000).unwrap();
        assert_eq!(streamed.len() as u64, size);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
