//! Message bodies as presented: LF line ends become CRLF, CRLF stays CRLF.
//!
//! Owns the size computation and the streaming conversion, which must agree octet for octet.
//! Never buffers a whole message.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Open a message file for reading without updating its access time (`O_NOATIME`: nothing
/// reads a Maildir message's atime, and each update is an inode write for the filesystem's
/// journal). The flag is only for the file's owner: anyone else opens it plainly.
pub fn open_message_file(path: &Path) -> io::Result<File> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        other => other,
    }
}

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
    let mut file = open_message_file(path)?;
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
        total += n as u64 + lf_without_cr(chunk, prev_cr);
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

impl CrlfReader<ReadAt> {
    /// The presented bytes of `file` (presented size `size`) from `offset` on, starting the
    /// conversion at `point` (from [`seek_point`]) and dropping what lies between.
    pub fn from_point(
        file: File,
        size: u64,
        point: SeekPoint,
        offset: u64,
    ) -> io::Result<CrlfReader<ReadAt>> {
        let mut reader = CrlfReader::new(
            ReadAt {
                file,
                pos: point.raw,
            },
            size,
        );
        reader.remaining = size.saturating_sub(point.presented);
        reader.state.prev_cr = point.prev_cr;
        let gap = offset.saturating_sub(point.presented).min(reader.remaining);
        let dropped = io::copy(&mut (&mut reader).take(gap), &mut io::sink())?;
        if dropped < gap {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(reader)
    }
}

/// A presented offset and the raw position of the byte it shows, with the state the
/// conversion has there (was the raw byte before a CR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeekPoint {
    pub presented: u64,
    pub raw: u64,
    pub prev_cr: bool,
}

const SEEK_CHUNK: usize = 256 * 1024;

/// The start of the chunk of `file` that holds presented offset `offset`, found by counting
/// (not converting) the bytes before it, from `known` when that is not past `offset`. At the
/// end of the file when `offset` lies beyond it.
pub fn seek_point(file: &File, offset: u64, known: Option<SeekPoint>) -> io::Result<SeekPoint> {
    let mut at = known
        .filter(|p| p.presented <= offset)
        .unwrap_or(SeekPoint {
            presented: 0,
            raw: 0,
            prev_cr: false,
        });
    let mut buf = vec![0u8; SEEK_CHUNK];
    loop {
        let n = file.read_at(&mut buf, at.raw)?;
        if n == 0 {
            return Ok(at);
        }
        let chunk = &buf[..n];
        let presented = n as u64 + lf_without_cr(chunk, at.prev_cr);
        if at.presented + presented > offset {
            return Ok(at);
        }
        at = SeekPoint {
            presented: at.presented + presented,
            raw: at.raw + n as u64,
            prev_cr: chunk[n - 1] == b'\r',
        };
    }
}

/// How many LFs in `chunk` have no CR before them (`prev_cr`: the byte before the chunk).
fn lf_without_cr(chunk: &[u8], prev_cr: bool) -> u64 {
    let cr_before = |at: usize| {
        if at == 0 {
            prev_cr
        } else {
            chunk[at - 1] == b'\r'
        }
    };
    memchr::memchr_iter(b'\n', chunk)
        .filter(|&at| !cr_before(at))
        .count() as u64
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
    use std::path::PathBuf;

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

    /// A file whose bare LFs, CRLFs and a CR right at a chunk boundary all need care.
    fn tricky_file(dir: &Path) -> (PathBuf, Vec<u8>) {
        let mut raw = Vec::new();
        let mut n = 0;
        while raw.len() < 3 * SEEK_CHUNK {
            let line = format!("line {n} {}", "x".repeat(n % 90));
            if raw.len() < SEEK_CHUNK && raw.len() + line.len() + 2 >= SEEK_CHUNK - 1 {
                raw.resize(SEEK_CHUNK - 1, b'z');
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(line.as_bytes());
            raw.extend_from_slice(if n % 3 == 0 { b"\r\n" } else { b"\n" });
            n += 1;
        }
        assert_eq!(&raw[SEEK_CHUNK - 1..SEEK_CHUNK + 1], b"\r\n");
        let path = dir.join("msg");
        std::fs::write(&path, &raw).unwrap();
        let size = presented_size(&path).unwrap();
        let full = stream(&raw, size, 4096).unwrap();
        assert_eq!(full.len() as u64, size);
        (path, full)
    }

    fn read_from(
        path: &Path,
        size: u64,
        offset: u64,
        known: Option<SeekPoint>,
    ) -> (Vec<u8>, SeekPoint) {
        let file = File::open(path).unwrap();
        let point = seek_point(&file, offset, known).unwrap();
        let mut out = Vec::new();
        CrlfReader::from_point(file, size, point, offset)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        (out, point)
    }

    #[test]
    fn reading_from_an_offset_matches_the_whole_stream() {
        let dir = std::env::temp_dir().join(format!("crlf-seek-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, full) = tricky_file(&dir);
        let size = full.len() as u64;
        let chunk = SEEK_CHUNK as u64;
        let mut offsets = vec![0, 1, chunk - 2, chunk - 1, chunk, chunk + 1, chunk + 2];
        offsets.extend([2 * chunk + 7, size - 1, size, size + 10]);
        for offset in offsets {
            let (got, _) = read_from(&path, size, offset, None);
            let want = &full[full.len().min(offset as usize)..];
            assert!(
                got == want,
                "offset {offset}: {} vs {} bytes",
                got.len(),
                want.len()
            );
        }
        // Pieces in order, each starting from the point the last one found, then one behind.
        let mut known = None;
        let mut offset = 0;
        while offset < size {
            let (got, point) = read_from(&path, size, offset, known);
            assert!(got == full[offset as usize..], "piece at {offset}");
            assert!(point.presented <= offset && offset - point.presented < 2 * chunk);
            known = Some(point);
            offset += 65_536;
        }
        let (got, _) = read_from(&path, size, 5, known);
        assert!(got == full[5..], "a point past the offset must not be used");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
