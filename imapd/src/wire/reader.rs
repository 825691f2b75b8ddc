//! Incremental command reader: assembles one IMAP command from lines and literals.
//!
//! Owns the framing of client input: a command is a line; when a line ends with a literal marker
//! (`{N}`, `{N+}`, or the RFC 3516 `~{N}` forms) N octets of data follow, then the rest of the
//! command on another line, and so on. For a synchronizing literal the session's continuation
//! callback is asked to send `+ ...` first, and only when N is within limits. Every quantity the
//! client controls is bounded by [`Limits`]: line length, literal size, literal count, total size.
//! Large APPEND literals are spooled to an unlinked temporary file instead of memory.
//!
//! It never tokenizes command arguments (that is [`super::parser`]) and never writes a response
//! itself: a [`ReadError`] tells the session what to answer ([`ReadError::response_line`]).
//!
//! Too-large literals are answered `tag NO [TOOBIG] Literal too large` (RFC 5530 code, as RFC
//! 7889 APPENDLIMIT prescribes for APPEND; UW answers BAD, but NO tells the client that retrying
//! the same data is pointless). A too-large synchronizing literal gets no continuation, so the
//! client never sends it. Whenever a command is abandoned for a limit, everything the client sends
//! without waiting (LITERAL+ data, and the lines and further LITERAL+ data after it) is read in
//! bounded chunks and dropped, so the next read is the next command. A LITERAL+ literal larger
//! than [`Limits::max_discard`] (or not fitting in 64 bits) cannot reasonably be skipped: the
//! answer is `* BYE` and closing ([`ReadError::Fatal`]). A line longer than [`Limits::max_line`]
//! is discarded through its end by the transport and answered `BAD`; if it hid a LITERAL+ marker,
//! the data that follows is read as commands and rejected one by one — never a crash, hang or
//! unbounded memory.
//!
//! Memory: literals of one command are held in memory up to [`Limits::spool_threshold`] bytes in
//! all; further APPEND literals go to one unlinked spool file per command (one descriptor however
//! many messages a MULTIAPPEND carries). Other commands are bounded by [`Limits::max_command`].
//!
//! The session adapts its transport with a few lines, e.g. for `common::net::conn::Conn`:
//! `impl Input for Conn { fn read_line(..) { map Line::{Complete, TooLong, Eof, Timeout} } fn
//! read_exact_timeout(..) { Conn::read_exact_timeout(..) } }`. A `false` from
//! `read_exact_timeout` (EOF or timeout inside a literal) is reported as [`ReadError::Eof`].

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

/// One line from the transport, as `common::net::conn::Conn::read_line` returns it.
#[derive(Debug, PartialEq, Eq)]
pub enum InputLine {
    /// A line without its CRLF (or bare LF).
    Complete(Vec<u8>),
    /// The line exceeded the maximum; the transport discarded it through its end.
    TooLong,
    Eof,
    Timeout,
}

/// The two transport calls the reader needs; `Conn` implements them with poll(2) timeouts.
pub trait Input {
    /// Read one line of at most `max` bytes (without its line end).
    fn read_line(&mut self, max: usize, timeout: Duration) -> io::Result<InputLine>;
    /// Append exactly `n` bytes to `out`; `Ok(false)` on EOF or timeout.
    fn read_exact_timeout(
        &mut self,
        n: usize,
        timeout: Duration,
        out: &mut Vec<u8>,
    ) -> io::Result<bool>;
}

/// An [`Input`] over any `BufRead` (pipes, files, tests). Timeouts are not enforced: the
/// underlying reader blocks as it will.
pub struct BufInput<R> {
    inner: R,
}

impl<R: BufRead> BufInput<R> {
    pub fn new(inner: R) -> Self {
        BufInput { inner }
    }
}

impl<R: BufRead> Input for BufInput<R> {
    fn read_line(&mut self, max: usize, _timeout: Duration) -> io::Result<InputLine> {
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Ok(InputLine::Eof);
            }
            let (chunk, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (&buf[..i], i + 1),
                None => (buf, buf.len()),
            };
            let found_end = chunk.len() < done;
            // One byte of slack for the CR of a CRLF, checked once the line is complete.
            if !too_long && line.len() + chunk.len() <= max.saturating_add(1) {
                line.extend_from_slice(chunk);
            } else {
                too_long = true;
                line.clear();
            }
            self.inner.consume(done);
            if found_end {
                break;
            }
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if too_long || line.len() > max {
            return Ok(InputLine::TooLong);
        }
        Ok(InputLine::Complete(line))
    }

    fn read_exact_timeout(
        &mut self,
        n: usize,
        _timeout: Duration,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let start = out.len();
        let got = (&mut self.inner).take(n as u64).read_to_end(out)?;
        if got < n {
            out.truncate(start);
            return Ok(false);
        }
        Ok(true)
    }
}

/// Bounds on everything a client controls while sending one command.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest text line (between literals), without its CRLF.
    pub max_line: usize,
    /// Largest literal outside APPEND.
    pub max_literal: u64,
    /// Largest literal in APPEND (one message).
    pub max_append_literal: u64,
    /// Total bytes of one APPEND command, all messages of a MULTIAPPEND together.
    pub max_append_total: u64,
    /// Total bytes (text and literals) of any other command.
    pub max_command: u64,
    /// Literals per command (so at most this many messages in one MULTIAPPEND).
    pub max_literals: usize,
    /// In-memory budget for one APPEND command's literals; the rest go to an unlinked spool file.
    pub spool_threshold: u64,
    /// Largest too-large LITERAL+ literal still read and discarded; larger ones end the session.
    pub max_discard: u64,
    /// Directory for spooled literals.
    pub spool_dir: std::path::PathBuf,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 64 * 1024,
            max_literal: 64 * 1024,
            max_append_literal: 64 * 1024 * 1024,
            max_append_total: 256 * 1024 * 1024,
            max_command: 1024 * 1024,
            max_literals: 1000,
            spool_threshold: 1024 * 1024,
            max_discard: 1024 * 1024 * 1024,
            spool_dir: std::env::temp_dir(),
        }
    }
}

/// The bytes of one literal: in memory, or a range of the command's unlinked spool file.
#[derive(Debug)]
pub enum LiteralData {
    Memory(Vec<u8>),
    Spooled {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
}

/// One literal argument.
#[derive(Debug)]
pub struct Literal {
    /// Sent as `~{N}` (RFC 3516 literal8: may contain NUL).
    pub binary: bool,
    pub data: LiteralData,
}

impl Literal {
    pub fn len(&self) -> u64 {
        match &self.data {
            LiteralData::Memory(v) => v.len() as u64,
            LiteralData::Spooled { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, when held in memory.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.data {
            LiteralData::Memory(v) => Some(v),
            LiteralData::Spooled { .. } => None,
        }
    }

    /// A reader over the whole literal from its start. Spooled literals are read with positional
    /// reads, so readers of different literals may be used in any order.
    pub fn reader(&self) -> Box<dyn Read + '_> {
        match &self.data {
            LiteralData::Memory(v) => Box::new(&v[..]),
            LiteralData::Spooled { file, offset, len } => Box::new(SpoolReader {
                file,
                pos: *offset,
                end: offset + len,
            }),
        }
    }
}

/// Reads a range of a spool file with pread(2).
struct SpoolReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.end - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spool file shorter than its literal",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A piece of a raw command: text between literals (markers and line ends removed), or a literal.
#[derive(Debug)]
pub enum Part {
    Text(Vec<u8>),
    Literal(Literal),
}

/// One command as framed on the wire: its tag and the rest, untokenized.
#[derive(Debug)]
pub struct RawCommand {
    pub tag: String,
    /// Always starts and ends with a `Text` part; text and literals alternate.
    pub parts: Vec<Part>,
}

/// Why no command could be read, and what the session must do about it.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection.
    Eof,
    /// No input within the timeout.
    Timeout,
    Io(io::Error),
    /// A line exceeded [`Limits::max_line`] or the command exceeded its total: `BAD`.
    TooLong {
        tag: Option<String>,
    },
    /// A literal over its limit: `NO [TOOBIG]`; the connection stays usable.
    LiteralTooLarge {
        tag: Option<String>,
    },
    /// Framing is wrong (no tag, bad literal marker): `BAD`.
    Syntax {
        tag: Option<String>,
        msg: &'static str,
    },
    /// The connection cannot be kept in sync: send `* BYE` and close.
    Fatal {
        msg: &'static str,
    },
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl ReadError {
    /// The response line (with CRLF) the session should send, if any; after `Fatal` the session
    /// must also close the connection. `Eof`, `Timeout` and `Io` have none (the session decides:
    /// typically `* BYE Autologout` on timeout).
    pub fn response_line(&self) -> Option<Vec<u8>> {
        let (tag, text): (&Option<String>, &str) = match self {
            ReadError::Eof | ReadError::Timeout | ReadError::Io(_) => return None,
            ReadError::TooLong { tag } => (tag, "BAD Command line too long"),
            ReadError::LiteralTooLarge { tag } => (tag, "NO [TOOBIG] Literal too large"),
            ReadError::Syntax { tag, msg } => {
                return Some(format_line(tag.as_deref(), &format!("BAD {msg}")))
            }
            ReadError::Fatal { msg } => return Some(format!("* BYE {msg}\r\n").into_bytes()),
        };
        Some(format_line(tag.as_deref(), text))
    }
}

fn format_line(tag: Option<&str>, text: &str) -> Vec<u8> {
    format!("{} {text}\r\n", tag.unwrap_or("*")).into_bytes()
}

/// The continuation line a session sends for a synchronizing literal (UW's text).
pub const CONTINUATION: &[u8] = b"+ Ready for argument\r\n";

/// Reads commands one at a time under [`Limits`].
pub struct CommandReader {
    limits: Limits,
}

/// A literal marker found at the end of a line.
#[derive(Debug, PartialEq, Eq)]
struct Marker {
    /// Where the marker (`{` or `~{`) starts in the line.
    start: usize,
    /// `None`: the number does not fit in 64 bits.
    len: Option<u64>,
    sync: bool,
    binary: bool,
}

/// Literal data is moved in chunks of this size: memory use stays bounded.
const CHUNK: u64 = 64 * 1024;

impl CommandReader {
    pub fn new(limits: Limits) -> Self {
        CommandReader { limits }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Read one whole command. `continuation` is called exactly once before each synchronizing
    /// literal that is within limits; it must send [`CONTINUATION`] (or similar) and flush.
    /// `timeout` applies to each wait for input.
    pub fn read_command(
        &self,
        input: &mut dyn Input,
        timeout: Duration,
        continuation: &mut dyn FnMut() -> io::Result<()>,
    ) -> Result<RawCommand, ReadError> {
        let first = self.next_line(input, timeout, None)?;
        let (tag, rest_start) = split_tag(&first)?;
        let is_append = command_is_append(&first[rest_start..]);
        let mut state = Assembly {
            tag,
            parts: Vec::new(),
            total: 0,
            in_memory: 0,
            literals: 0,
            is_append,
            spool: None,
        };
        let mut line = first;
        let mut offset = rest_start;
        loop {
            let text = &line[offset..];
            let marker = find_marker(text);
            state.total = state.total.saturating_add(text.len() as u64);
            if state.total > self.max_total(&state) {
                let err = ReadError::TooLong {
                    tag: Some(state.tag.clone()),
                };
                return Err(self.abandon(input, timeout, marker.as_ref(), err));
            }
            let Some(marker) = marker else {
                state.parts.push(Part::Text(text.to_vec()));
                return Ok(RawCommand {
                    tag: state.tag,
                    parts: state.parts,
                });
            };
            state.parts.push(Part::Text(text[..marker.start].to_vec()));
            let Some(len) = marker.len.filter(|&len| self.literal_allowed(&state, len)) else {
                let err = ReadError::LiteralTooLarge {
                    tag: Some(state.tag.clone()),
                };
                return Err(self.abandon(input, timeout, Some(&marker), err));
            };
            if marker.sync {
                continuation()?;
            }
            let data = self.read_literal(input, timeout, &mut state, len)?;
            state.parts.push(Part::Literal(Literal {
                binary: marker.binary,
                data,
            }));
            line = self.next_line(input, timeout, Some(&state.tag))?;
            offset = 0;
        }
    }

    fn next_line(
        &self,
        input: &mut dyn Input,
        timeout: Duration,
        tag: Option<&String>,
    ) -> Result<Vec<u8>, ReadError> {
        match input.read_line(self.limits.max_line, timeout)? {
            InputLine::Complete(line) => Ok(line),
            InputLine::TooLong => Err(ReadError::TooLong { tag: tag.cloned() }),
            InputLine::Eof => Err(ReadError::Eof),
            InputLine::Timeout => Err(ReadError::Timeout),
        }
    }

    fn max_total(&self, state: &Assembly) -> u64 {
        if state.is_append {
            self.limits.max_append_total
        } else {
            self.limits.max_command
        }
    }

    fn literal_allowed(&self, state: &Assembly, len: u64) -> bool {
        let max_one = if state.is_append {
            self.limits.max_append_literal
        } else {
            self.limits.max_literal
        };
        len <= max_one
            && state.total.saturating_add(len) <= self.max_total(state)
            && state.literals < self.limits.max_literals
    }

    /// Give up on a command after a limit was hit, keeping the connection in sync: everything
    /// the client sends without waiting (LITERAL+ data and the lines after it) is read and
    /// dropped. Returns `err`, or a worse error met while draining.
    fn abandon(
        &self,
        input: &mut dyn Input,
        timeout: Duration,
        marker: Option<&Marker>,
        err: ReadError,
    ) -> ReadError {
        let mut pending = marker.filter(|m| !m.sync).map(|m| m.len);
        while let Some(len) = pending {
            if let Err(e) = self.discard_literal(input, timeout, len) {
                return e;
            }
            pending = match input.read_line(self.limits.max_line, timeout) {
                Ok(InputLine::Complete(line)) => {
                    find_marker(&line).filter(|m| !m.sync).map(|m| m.len)
                }
                Ok(InputLine::TooLong) => None,
                Ok(InputLine::Eof) => return ReadError::Eof,
                Ok(InputLine::Timeout) => return ReadError::Timeout,
                Err(e) => return ReadError::Io(e),
            };
        }
        err
    }

    /// Read an accepted literal: into memory, or (APPEND, when large or when the command's
    /// in-memory share is used up) into the command's spool file.
    fn read_literal(
        &self,
        input: &mut dyn Input,
        timeout: Duration,
        state: &mut Assembly,
        len: u64,
    ) -> Result<LiteralData, ReadError> {
        state.literals += 1;
        state.total = state.total.saturating_add(len);
        let fits_memory = state.in_memory.saturating_add(len) <= self.limits.spool_threshold;
        if state.is_append && !fits_memory {
            return self.spool_literal(input, timeout, state, len);
        }
        state.in_memory += len;
        Ok(LiteralData::Memory(
            self.memory_literal(input, timeout, len)?,
        ))
    }

    fn memory_literal(
        &self,
        input: &mut dyn Input,
        timeout: Duration,
        len: u64,
    ) -> Result<Vec<u8>, ReadError> {
        let n = usize::try_from(len).map_err(|_| ReadError::Fatal {
            msg: "Literal too large for this system",
        })?;
        let mut data = Vec::with_capacity(n);
        if !input.read_exact_timeout(n, timeout, &mut data)? {
            return Err(ReadError::Eof);
        }
        Ok(data)
    }

    fn spool_literal(
        &self,
        input: &mut dyn Input,
        timeout: Duration,
        state: &mut Assembly,
        len: u64,
    ) -> Result<LiteralData, ReadError> {
        let (file, offset) = match &state.spool {
            Some((file, used)) => (Arc::clone(file), *used),
            None => (Arc::new(create_spool_file(&self.limits.spool_dir)?), 0),
        };
        let mut chunk = Vec::with_capacity(len.min(CHUNK) as usize);
        let mut written = 0;
        while written < len {
            let n = (len - written).min(CHUNK) as usize;
            chunk.clear();
            if !input.read_exact_timeout(n, timeout, &mut chunk)? {
                return Err(ReadError::Eof);
            }
            file.write_all_at(&chunk, offset + written)?;
            written += n as u64;
        }
        state.spool = Some((Arc::clone(&file), offset + len));
        Ok(LiteralData::Spooled { file, offset, len })
    }

    /// Read and drop a too-large non-synchronizing literal so the next line is a command again.
    fn discard_literal(
        &self,
        input: &mut dyn Input,
        timeout: Duration,
        len: Option<u64>,
    ) -> Result<(), ReadError> {
        let Some(mut left) = len.filter(|&l| l <= self.limits.max_discard) else {
            return Err(ReadError::Fatal {
                msg: "[TOOBIG] Non-synchronizing literal too large",
            });
        };
        let mut chunk = Vec::with_capacity(left.min(CHUNK) as usize);
        while left > 0 {
            let n = left.min(CHUNK) as usize;
            chunk.clear();
            if !input.read_exact_timeout(n, timeout, &mut chunk)? {
                return Err(ReadError::Eof);
            }
            left -= n as u64;
        }
        Ok(())
    }
}

/// A command being assembled.
struct Assembly {
    tag: String,
    parts: Vec<Part>,
    /// Bytes of text and literals so far.
    total: u64,
    /// Bytes of literals held in memory.
    in_memory: u64,
    literals: usize,
    is_append: bool,
    /// The command's spool file and how much of it is used.
    spool: Option<(Arc<File>, u64)>,
}

/// Create a private file in `dir` and unlink it at once: it vanishes when closed.
fn create_spool_file(dir: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".imapd-literal-{}-{n}-{nanos}", std::process::id()));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not create a spool file",
    ))
}

/// Is `c` allowed in a tag? (ASTRING-CHAR except `+`.)
pub fn is_tag_char(c: u8) -> bool {
    c > b' ' && c < 0x7f && !matches!(c, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b'+')
}

/// Split `tag SP rest`; returns the tag and where the rest starts.
fn split_tag(line: &[u8]) -> Result<(String, usize), ReadError> {
    let end = line.iter().position(|&c| c == b' ').unwrap_or(line.len());
    let tag = &line[..end];
    if tag.is_empty() || !tag.iter().all(|&c| is_tag_char(c)) {
        return Err(ReadError::Syntax {
            tag: None,
            msg: "Missing or invalid command tag",
        });
    }
    let tag = String::from_utf8_lossy(tag).into_owned();
    if end == line.len() {
        return Err(ReadError::Syntax {
            tag: Some(tag),
            msg: "Missing command",
        });
    }
    Ok((tag, end + 1))
}

fn command_is_append(rest: &[u8]) -> bool {
    let name = rest.split(|&c| c == b' ').next().unwrap_or(b"");
    name.eq_ignore_ascii_case(b"APPEND")
}

/// Find a literal marker (`{N}`, `{N+}`, `~{N}`, `~{N+}`) ending the line.
fn find_marker(line: &[u8]) -> Option<Marker> {
    let inner_end = line.len().checked_sub(1)?;
    if line[inner_end] != b'}' {
        return None;
    }
    let open = memchr::memrchr(b'{', &line[..inner_end])?;
    let mut digits = &line[open + 1..inner_end];
    let sync = digits.last() != Some(&b'+');
    if !sync {
        digits = &digits[..digits.len() - 1];
    }
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let len = digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    let binary = open > 0 && line[open - 1] == b'~';
    Some(Marker {
        start: if binary { open - 1 } else { open },
        len,
        sync,
        binary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn input(bytes: &[u8]) -> BufInput<Cursor<Vec<u8>>> {
        BufInput::new(Cursor::new(bytes.to_vec()))
    }

    const T: Duration = Duration::from_secs(5);

    /// Read one command, counting continuation requests.
    fn read_with(
        reader: &CommandReader,
        inp: &mut BufInput<Cursor<Vec<u8>>>,
    ) -> (Result<RawCommand, ReadError>, usize) {
        let mut conts = 0;
        let r = reader.read_command(inp, T, &mut || {
            conts += 1;
            Ok(())
        });
        (r, conts)
    }

    fn texts(cmd: &RawCommand) -> Vec<Vec<u8>> {
        cmd.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Literal(l) => {
                    let mut v = b"LIT:".to_vec();
                    let mut r = l.reader();
                    r.read_to_end(&mut v).unwrap();
                    v
                }
            })
            .collect()
    }

    #[test]
    fn plain_line_crlf_and_bare_lf() {
        let reader = CommandReader::new(Limits::default());
        let mut inp = input(b"a1 NOOP\r\nb2 CAPABILITY\n");
        let (c, n) = read_with(&reader, &mut inp);
        let c = c.unwrap();
        assert_eq!((c.tag.as_str(), n), ("a1", 0));
        assert_eq!(texts(&c), vec![b"NOOP".to_vec()]);
        let c = read_with(&reader, &mut inp).0.unwrap();
        assert_eq!(c.tag, "b2");
        assert_eq!(texts(&c), vec![b"CAPABILITY".to_vec()]);
        assert!(matches!(
            read_with(&reader, &mut inp).0,
            Err(ReadError::Eof)
        ));
    }

    #[test]
    fn synchronizing_literal_asks_for_continuation_once() {
        let reader = CommandReader::new(Limits::default());
        let mut inp = input(b"a LOGIN {3}\r\nfoo {4}\r\nb\0\xffr\r\n");
        let (c, n) = read_with(&reader, &mut inp);
        let c = c.unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            texts(&c),
            vec![
                b"LOGIN ".to_vec(),
                b"LIT:foo".to_vec(),
                b" ".to_vec(),
                b"LIT:b\0\xffr".to_vec(),
                b"".to_vec()
            ]
        );
    }

    #[test]
    fn non_synchronizing_literal_needs_no_continuation() {
        let reader = CommandReader::new(Limits::default());
        let mut inp = input(b"a APPEND INBOX {5+}\r\nab\r\nc\r\na2 NOOP\r\n");
        let (c, n) = read_with(&reader, &mut inp);
        assert_eq!(n, 0);
        assert_eq!(
            texts(&c.unwrap()),
            vec![
                b"APPEND INBOX ".to_vec(),
                b"LIT:ab\r\nc".to_vec(),
                b"".to_vec()
            ]
        );
        assert_eq!(read_with(&reader, &mut inp).0.unwrap().tag, "a2");
    }

    #[test]
    fn literal8_marker_is_recognised() {
        let reader = CommandReader::new(Limits::default());
        let mut inp = input(b"a APPEND INBOX ~{2+}\r\n\0\0\r\n");
        let c = read_with(&reader, &mut inp).0.unwrap();
        match &c.parts[1] {
            Part::Literal(l) => assert!(l.binary && l.as_bytes() == Some(b"\0\0")),
            p => panic!("{p:?}"),
        }
        assert_eq!(texts(&c)[0], b"APPEND INBOX ".to_vec());
    }

    #[test]
    fn too_large_sync_literal_gets_no_continuation() {
        let reader = CommandReader::new(Limits::default());
        for marker in ["{4294967296}", "{99999999999999999999}", "{65537}"] {
            let line = format!("t1 LOGIN {marker}\r\nt2 NOOP\r\n");
            let mut inp = input(line.as_bytes());
            let (r, n) = read_with(&reader, &mut inp);
            assert_eq!(n, 0, "{marker}");
            let e = r.unwrap_err();
            assert!(matches!(&e, ReadError::LiteralTooLarge { tag: Some(t) } if t == "t1"));
            assert_eq!(
                e.response_line().unwrap(),
                b"t1 NO [TOOBIG] Literal too large\r\n"
            );
            assert_eq!(read_with(&reader, &mut inp).0.unwrap().tag, "t2");
        }
    }

    #[test]
    fn too_large_non_sync_literal_is_discarded_to_stay_in_sync() {
        let limits = Limits {
            max_literal: 10,
            ..Limits::default()
        };
        let reader = CommandReader::new(limits);
        let mut data = b"t1 LOGIN {200000+}\r\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 200000));
        data.extend_from_slice(b" rest\r\nt2 NOOP\r\n");
        let mut inp = input(&data);
        let (r, n) = read_with(&reader, &mut inp);
        assert_eq!(n, 0);
        assert!(matches!(r, Err(ReadError::LiteralTooLarge { .. })));
        // The rest of the abandoned command was drained: the next read is the next command.
        assert_eq!(read_with(&reader, &mut inp).0.unwrap().tag, "t2");
    }

    #[test]
    fn abandoned_command_drains_following_literal_plus_data() {
        let limits = Limits {
            max_literal: 10,
            ..Limits::default()
        };
        let reader = CommandReader::new(limits);
        let data = b"t1 SEARCH TEXT {11+}\r\n0123456789a TEXT {3+}\r\nabc\r\nt2 NOOP\r\n";
        let mut inp = input(data);
        let (r, n) = read_with(&reader, &mut inp);
        assert_eq!(n, 0);
        assert!(matches!(r, Err(ReadError::LiteralTooLarge { .. })));
        assert_eq!(read_with(&reader, &mut inp).0.unwrap().tag, "t2");
        // Over the total: the pending LITERAL+ data is drained too.
        let limits = Limits {
            max_command: 40,
            ..Limits::default()
        };
        let reader = CommandReader::new(limits);
        let mut data =
            b"t1 SEARCH TEXT {2+}\r\nab TEXT a-long-atom-that-breaks-the-total TEXT {2+}\r\n"
                .to_vec();
        data.extend_from_slice(b"ab TEXT {2+}\r\ncd\r\nt2 NOOP\r\n");
        let mut inp = input(&data);
        let e = read_with(&reader, &mut inp).0.unwrap_err();
        assert!(matches!(e, ReadError::TooLong { tag: Some(_) }), "{e:?}");
        assert_eq!(read_with(&reader, &mut inp).0.unwrap().tag, "t2");
    }

    #[test]
    fn unrepresentable_non_sync_literal_is_fatal() {
        let reader = CommandReader::new(Limits::default());
        for marker in ["{99999999999999999999+}", "{4294967296000+}"] {
            let mut inp = input(format!("t1 LOGIN {marker}\r\n").as_bytes());
            let e = read_with(&reader, &mut inp).0.unwrap_err();
            assert!(matches!(e, ReadError::Fatal { .. }), "{marker}");
            assert!(e.response_line().unwrap().starts_with(b"* BYE [TOOBIG]"));
        }
    }

    #[test]
    fn append_has_larger_limit_and_spools_big_literals() {
        let dir = std::env::temp_dir().join(format!("imapd-reader-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let limits = Limits {
            spool_threshold: 1000,
            spool_dir: dir.clone(),
            ..Limits::default()
        };
        let reader = CommandReader::new(limits);
        let small = b"small".to_vec();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let body2: Vec<u8> = body.iter().rev().copied().collect();
        let mut data =
            format!("a APPEND INBOX {{5+}}\r\nsmall {{{}+}}\r\n", body.len()).into_bytes();
        data.extend_from_slice(&body);
        data.extend_from_slice(format!(" {{{}}}\r\n", body2.len()).as_bytes());
        data.extend_from_slice(&body2);
        data.extend_from_slice(b" {5}\r\nsmall\r\n");
        let (c, n) = read_with(&reader, &mut input(&data));
        assert_eq!(n, 2);
        let c = c.unwrap();
        let lits: Vec<&Literal> = c
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::Literal(l) => Some(l),
                Part::Text(_) => None,
            })
            .collect();
        assert_eq!(lits.len(), 4);
        assert!(lits[0].as_bytes() == Some(&small[..]));
        assert!(matches!(
            lits[1].data,
            LiteralData::Spooled { offset: 0, .. }
        ));
        assert!(matches!(
            lits[2].data,
            LiteralData::Spooled {
                offset: 300_000,
                ..
            }
        ));
        // Small ones stay in memory while the command's in-memory share allows.
        assert!(lits[3].as_bytes() == Some(&small[..]));
        let read = |l: &Literal| {
            let mut v = Vec::new();
            l.reader().read_to_end(&mut v).unwrap();
            v
        };
        // Any order: positional reads.
        assert_eq!(read(lits[2]), body2);
        assert_eq!(read(lits[1]), body);
        assert_eq!(read(lits[3]), small);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let mut data = format!("a append INBOX {{{}}}\r\n", body.len()).into_bytes();
        data.extend_from_slice(&body);
        data.extend_from_slice(b"\r\n");
        let mut inp = input(&data);
        let (c, n) = read_with(&reader, &mut inp);
        assert_eq!(n, 1);
        let c = c.unwrap();
        let Part::Literal(lit) = &c.parts[1] else {
            panic!("no literal")
        };
        assert!(matches!(lit.data, LiteralData::Spooled { .. }));
        assert_eq!(lit.len(), body.len() as u64);
        let mut back = Vec::new();
        lit.reader().read_to_end(&mut back).unwrap();
        assert_eq!(back, body);
        // Read twice: the reader rewinds.
        back.clear();
        lit.reader().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), body.len());
        // The spool file is already unlinked.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
        // The same literal is too large outside APPEND.
        let mut data = format!("a LOGIN {{{}}}\r\n", body.len()).into_bytes();
        data.extend_from_slice(&body);
        let (r, n) = read_with(&reader, &mut input(&data));
        assert_eq!(n, 0);
        assert!(matches!(r, Err(ReadError::LiteralTooLarge { .. })));
    }

    #[test]
    fn overlong_line_is_too_long_then_next_command_reads() {
        let reader = CommandReader::new(Limits::default());
        let mut data = b"a1 LOGIN ".to_vec();
        data.extend(std::iter::repeat_n(b'x', 1024 * 1024));
        data.extend_from_slice(b"\r\na2 NOOP\r\n");
        let mut inp = input(&data);
        let e = read_with(&reader, &mut inp).0.unwrap_err();
        assert!(matches!(e, ReadError::TooLong { tag: None }));
        assert_eq!(
            e.response_line().unwrap(),
            b"* BAD Command line too long\r\n"
        );
        assert_eq!(read_with(&reader, &mut inp).0.unwrap().tag, "a2");
    }

    #[test]
    fn literal_count_and_total_are_bounded() {
        let limits = Limits {
            max_literals: 3,
            ..Limits::default()
        };
        let reader = CommandReader::new(limits);
        let mut data = b"a SEARCH".to_vec();
        for _ in 0..5 {
            data.extend_from_slice(b" TEXT {1+}\r\nx");
        }
        data.extend_from_slice(b"\r\n");
        let e = read_with(&reader, &mut input(&data)).0.unwrap_err();
        assert!(matches!(e, ReadError::LiteralTooLarge { .. }));

        let limits = Limits {
            max_command: 100,
            ..Limits::default()
        };
        let reader = CommandReader::new(limits);
        let mut data = b"a SEARCH".to_vec();
        for _ in 0..5 {
            data.extend_from_slice(b" TEXT {30}\r\n123456789012345678901234567890");
        }
        let (r, n) = read_with(&reader, &mut input(&data));
        assert!(matches!(r, Err(ReadError::LiteralTooLarge { .. })));
        assert_eq!(n, 2);
    }

    #[test]
    fn bad_tags_and_missing_command() {
        let reader = CommandReader::new(Limits::default());
        for (line, tag) in [
            (&b"\r\n"[..], None),
            (b" NOOP\r\n", None),
            (b"a+b NOOP\r\n", None),
            (b"a*\r\n", None),
            (b"a1\r\n", Some("a1")),
        ] {
            let e = read_with(&reader, &mut input(line)).0.unwrap_err();
            match e {
                ReadError::Syntax { tag: t, .. } => assert_eq!(t.as_deref(), tag),
                e => panic!("{e:?}"),
            }
        }
    }

    #[test]
    fn line_limit_excludes_the_line_end() {
        let mut inp = input(b"12345\r\n123456\r\n1234\n");
        let t = Duration::from_secs(1);
        assert_eq!(
            inp.read_line(5, t).unwrap(),
            InputLine::Complete(b"12345".to_vec())
        );
        assert_eq!(inp.read_line(5, t).unwrap(), InputLine::TooLong);
        assert_eq!(
            inp.read_line(5, t).unwrap(),
            InputLine::Complete(b"1234".to_vec())
        );
        assert_eq!(inp.read_line(5, t).unwrap(), InputLine::Eof);
    }

    #[test]
    fn eof_inside_literal() {
        let reader = CommandReader::new(Limits::default());
        let (r, n) = read_with(&reader, &mut input(b"a LOGIN {10}\r\nabc"));
        assert_eq!(n, 1);
        assert!(matches!(r, Err(ReadError::Eof)));
    }

    #[test]
    fn markers() {
        assert_eq!(find_marker(b"{}"), None);
        assert_eq!(find_marker(b"{+}"), None);
        assert_eq!(find_marker(b"{1a}"), None);
        assert_eq!(find_marker(b"x}"), None);
        assert_eq!(
            find_marker(b"ab {12+}"),
            Some(Marker {
                start: 3,
                len: Some(12),
                sync: false,
                binary: false
            })
        );
        assert_eq!(find_marker(b"{18446744073709551616}").unwrap().len, None);
        assert_eq!(
            find_marker(b"{18446744073709551615}").unwrap().len,
            Some(u64::MAX)
        );
    }
}
