//! The one client connection: bytes in on fd 0, bytes out on fd 1, optionally inside TLS.
//!
//! Owns the input and output buffers, read timeouts (poll(2)), the STARTTLS switch and rustls'
//! record layer. It never parses commands: it hands out lines and byte counts. Its memory is
//! bounded by what the caller asks for (`max` line length) plus one read buffer, whatever the
//! peer sends, and it never lets plaintext received before STARTTLS be read after it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use rustls::{ServerConfig, ServerConnection};

/// Bytes asked of the kernel (or of rustls) per read.
const READ_CHUNK: usize = 16 * 1024;
/// Output is collected up to this size before it is sent; bigger writes go straight out.
const OUTPUT_BUFFER: usize = 64 * 1024;
/// How long one write may wait for the client to make room before the connection is given up.
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(600);
/// Cap on waiting for the client while closing in `Drop`.
const DROP_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// One line of client input, as `Conn::read_line` found it.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its CRLF or bare LF. May contain NUL and 8-bit bytes.
    Complete(Vec<u8>),
    /// The line exceeded `max`; its remainder was discarded through its end.
    TooLong,
    /// The client closed the connection (a partial last line without LF is dropped).
    Eof,
    /// No complete line arrived within the timeout.
    Timeout,
}

/// What one attempt to get more input produced.
enum Fill {
    Data,
    Eof,
    Timeout,
}

/// The two descriptors, with EINTR retried and writes bounded by a timeout.
struct Transport {
    input: File,
    output: File,
    write_timeout: Duration,
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.input.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !wait_fd(self.output.as_fd(), PollFlags::POLLOUT, self.write_timeout)? {
            return Err(write_timed_out());
        }
        loop {
            match self.output.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // SO_SNDTIMEO expired with nothing written.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(write_timed_out()),
                other => return other,
            }
        }
    }

    /// rustls hands over several TLS records at once: one poll and one writev for all.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if !wait_fd(self.output.as_fd(), PollFlags::POLLOUT, self.write_timeout)? {
            return Err(write_timed_out());
        }
        loop {
            match self.output.write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(write_timed_out()),
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport {
    /// Bounds blocking socket writes as well (a POLLOUT wake-up does not promise room for a
    /// whole buffer). Not a socket (pipe, tty): poll(2) before each write is the bound.
    fn set_write_timeout(&mut self, timeout: Duration) {
        // Zero would mean "never" to SO_SNDTIMEO but "at once" to poll(2): use the shortest wait.
        let timeout = timeout.max(Duration::from_millis(1));
        self.write_timeout = timeout;
        let capped = timeout.min(Duration::from_secs(86_400));
        let tv = TimeVal::new(capped.as_secs() as _, capped.subsec_micros() as _);
        let _not_a_socket_is_fine = setsockopt(&self.output, sockopt::SendTimeout, &tv);
    }
}

fn write_timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out writing to the client")
}

/// The client connection (plain, or TLS after `start_tls`).
pub struct Conn {
    transport: Transport,
    tls: Option<Box<ServerConnection>>,
    /// Received plaintext; `input[consumed..]` is not yet handed to the caller.
    input: Vec<u8>,
    consumed: usize,
    /// Output not yet sent.
    output: Vec<u8>,
    /// The client closed its side (or the connection became unusable): reads give EOF.
    input_closed: bool,
    /// close_notify has been queued; nothing more may be sent through TLS.
    shut_down: bool,
}

impl Conn {
    /// The process's own client: duplicates of fd 0 (input) and fd 1 (output).
    pub fn from_stdio() -> io::Result<Conn> {
        let input = io::stdin().as_fd().try_clone_to_owned()?;
        let output = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(Conn::from_fds(input, output))
    }

    /// A connection reading `input` and writing `output` (they may be the same socket).
    pub fn from_fds(input: OwnedFd, output: OwnedFd) -> Conn {
        let mut transport = Transport {
            input: File::from(input),
            output: File::from(output),
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        };
        transport.set_write_timeout(DEFAULT_WRITE_TIMEOUT);
        Conn {
            transport,
            tls: None,
            input: Vec::with_capacity(READ_CHUNK),
            consumed: 0,
            output: Vec::with_capacity(OUTPUT_BUFFER),
            input_closed: false,
            shut_down: false,
        }
    }

    /// How long one write may wait for the client to accept data (default 10 minutes); after
    /// that the write fails with `TimedOut`.
    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.transport.set_write_timeout(timeout);
    }

    /// Switches to TLS: performs the whole server handshake now, within `timeout`.
    ///
    /// Plaintext input already buffered (pipelined after STLS/STARTTLS) is discarded first, so
    /// that it can never be taken for a command sent under TLS (CVE-2011-0411 class). The
    /// caller must flush its response before calling. After a failed handshake the connection
    /// is unusable: reads report EOF.
    pub fn start_tls(&mut self, cfg: Arc<ServerConfig>, timeout: Duration) -> io::Result<()> {
        if self.tls.is_some() {
            return Err(io::Error::other("TLS is already active"));
        }
        self.send_output()?;
        self.input.clear();
        self.consumed = 0;
        let mut tls = ServerConnection::new(cfg)
            .map_err(|e| io::Error::other(format!("cannot start TLS: {e}")))?;
        match handshake(&mut tls, &mut self.transport, deadline_after(timeout)) {
            Ok(()) => {
                // Application data that came in the same read as the client's Finished.
                let closed = drain_plaintext(&mut tls, &mut self.input)?;
                self.input_closed = closed;
                self.tls = Some(Box::new(tls));
                Ok(())
            }
            Err(e) => {
                self.input_closed = true;
                Err(e)
            }
        }
    }

    /// True once `start_tls` has succeeded.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The next line, at most `max` bytes long (not counting its CRLF or LF), waiting at most
    /// `timeout` for all of it. A longer line is consumed through its end and reported as
    /// `TooLong`; memory stays bounded by `max` plus one read buffer.
    pub fn read_line(&mut self, max: usize, timeout: Duration) -> io::Result<Line> {
        let deadline = deadline_after(timeout);
        let mut discarding = false;
        let mut scanned = 0;
        loop {
            let pending = &self.input[self.consumed..];
            if let Some(offset) = memchr::memchr(b'\n', &pending[scanned..]) {
                let end = scanned + offset;
                let line = pending[..end]
                    .strip_suffix(b"\r")
                    .unwrap_or(&pending[..end]);
                let result = if discarding || line.len() > max {
                    Line::TooLong
                } else {
                    Line::Complete(line.to_vec())
                };
                self.consumed += end + 1;
                return Ok(result);
            }
            scanned = pending.len();
            // `max` bytes plus a CR may still be a valid line waiting for its LF.
            if pending.len() > max.saturating_add(1) {
                discarding = true;
                self.consumed = self.input.len();
                scanned = 0;
            }
            match self.fill(deadline)? {
                Fill::Data => {}
                Fill::Eof => return Ok(Line::Eof),
                Fill::Timeout => return Ok(Line::Timeout),
            }
        }
    }

    /// Appends exactly `n` bytes of input to `out` (an IMAP literal), waiting at most `timeout`
    /// in total. Returns false on EOF or timeout (what arrived is appended all the same).
    pub fn read_exact_timeout(
        &mut self,
        n: usize,
        timeout: Duration,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let deadline = deadline_after(timeout);
        let mut needed = n;
        loop {
            let pending = &self.input[self.consumed..];
            let take = needed.min(pending.len());
            out.extend_from_slice(&pending[..take]);
            self.consumed += take;
            needed -= take;
            if needed == 0 {
                return Ok(true);
            }
            match self.fill(deadline)? {
                Fill::Data => {}
                Fill::Eof | Fill::Timeout => return Ok(false),
            }
        }
    }

    /// True when input is already buffered (plain, or decrypted TLS) and a read will not wait:
    /// the caller may hold back flushing while the client pipelines commands.
    pub fn has_pending_input(&self) -> bool {
        self.consumed < self.input.len()
    }

    /// Waits up to `timeout` for input; true when something is buffered, the descriptor is
    /// readable, or the client has closed (the next read then reports it).
    pub fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool> {
        if self.has_pending_input() || self.input_closed {
            return Ok(true);
        }
        wait_fd(self.transport.input.as_fd(), PollFlags::POLLIN, timeout)
    }

    /// The descriptor input is read from (a duplicate of fd 0 after `from_stdio`), for callers
    /// that poll it together with other descriptors (IMAP IDLE). Check `has_pending_input`
    /// first: buffered input does not make the descriptor readable.
    pub fn input_fd(&self) -> RawFd {
        self.transport.input.as_raw_fd()
    }

    /// Sends pending output and, under TLS, close_notify. Further writes fail.
    pub fn shutdown(&mut self) -> io::Result<()> {
        self.send_output()?;
        if let Some(tls) = self.tls.as_mut() {
            if !self.shut_down {
                self.shut_down = true;
                tls.send_close_notify();
                send_tls_records(tls, &mut self.transport)?;
            }
        }
        Ok(())
    }

    /// Reads more input into the buffer, waiting until `deadline`.
    fn fill(&mut self, deadline: Instant) -> io::Result<Fill> {
        if self.input_closed {
            return Ok(Fill::Eof);
        }
        self.compact_input();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !wait_fd(self.transport.input.as_fd(), PollFlags::POLLIN, remaining)? {
                return Ok(Fill::Timeout);
            }
            let got = match self.tls.as_mut() {
                None => read_plain(&mut self.transport, &mut self.input)?,
                Some(tls) => read_tls(tls, &mut self.transport, &mut self.input)?,
            };
            match got {
                Received::Data => return Ok(Fill::Data),
                Received::Closed => {
                    self.input_closed = true;
                    return Ok(Fill::Eof);
                }
                Received::DataThenClosed => {
                    self.input_closed = true;
                    return Ok(Fill::Data);
                }
                Received::Nothing => {}
            }
        }
    }

    /// Drops consumed input and returns excess capacity left by a long line.
    fn compact_input(&mut self) {
        if self.consumed > 0 {
            self.input.drain(..self.consumed);
            self.consumed = 0;
        }
        if self.input.capacity() > 4 * READ_CHUNK && self.input.len() < READ_CHUNK {
            self.input.shrink_to(2 * READ_CHUNK);
        }
    }

    fn send_output(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let mut data = std::mem::take(&mut self.output);
        let sent = self.send(&data);
        data.clear();
        self.output = data;
        sent
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        match self.tls.as_mut() {
            None => self.transport.write_all(data),
            Some(_) if self.shut_down => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS session is closed",
            )),
            Some(tls) => send_through_tls(tls, &mut self.transport, data),
        }
    }
}

impl Write for Conn {
    /// Buffers `buf`; a full buffer is sent first, and a write at least as big as the buffer
    /// goes straight out, so memory never grows with the size of a message.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.output.len() + buf.len() > OUTPUT_BUFFER {
            self.send_output()?;
        }
        if buf.len() >= OUTPUT_BUFFER {
            self.send(buf)?;
        } else {
            self.output.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_output()
    }
}

impl Drop for Conn {
    /// Best effort: pending output and TLS close_notify, waiting briefly for a stuck client.
    fn drop(&mut self) {
        if self.transport.write_timeout > DROP_WRITE_TIMEOUT {
            self.transport.set_write_timeout(DROP_WRITE_TIMEOUT);
        }
        let _ = self.shutdown();
    }
}

/// What one read of the descriptor brought.
enum Received {
    Data,
    Nothing,
    Closed,
    DataThenClosed,
}

fn read_plain(transport: &mut Transport, input: &mut Vec<u8>) -> io::Result<Received> {
    let start = input.len();
    input.resize(start + READ_CHUNK, 0);
    let result = transport.read(&mut input[start..]);
    let n = *result.as_ref().unwrap_or(&0);
    input.truncate(start + n);
    match result? {
        0 => Ok(Received::Closed),
        _ => Ok(Received::Data),
    }
}

fn read_tls(
    tls: &mut ServerConnection,
    transport: &mut Transport,
    input: &mut Vec<u8>,
) -> io::Result<Received> {
    if tls.read_tls(transport)? == 0 {
        // TCP closed, with or without close_notify: either way the client is gone.
        return Ok(Received::Closed);
    }
    process_records(tls, transport)?;
    let before = input.len();
    let closed = drain_plaintext(tls, input)?;
    let data = input.len() > before;
    Ok(match (data, closed) {
        (true, false) => Received::Data,
        (true, true) => Received::DataThenClosed,
        (false, true) => Received::Closed,
        (false, false) => Received::Nothing,
    })
}

/// Decrypts what `read_tls` took in and sends whatever rustls must answer (alerts, key updates).
fn process_records(tls: &mut ServerConnection, transport: &mut Transport) -> io::Result<()> {
    if let Err(e) = tls.process_new_packets() {
        // Tell the client why (the alert rustls queued), then give up.
        let _ = send_tls_records(tls, transport);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("TLS error: {e}"),
        ));
    }
    send_tls_records(tls, transport)
}

/// Moves all decrypted plaintext from rustls into `input`; true when the client sent
/// close_notify.
fn drain_plaintext(tls: &mut ServerConnection, input: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    loop {
        match tls.reader().read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

fn send_tls_records(tls: &mut ServerConnection, transport: &mut Transport) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(transport)?;
    }
    Ok(())
}

/// Encrypts and sends `data`, never letting rustls buffer more than its own limit.
fn send_through_tls(
    tls: &mut ServerConnection,
    transport: &mut Transport,
    mut data: &[u8],
) -> io::Result<()> {
    while !data.is_empty() {
        let accepted = tls.writer().write(data)?;
        data = &data[accepted..];
        if accepted == 0 && !tls.wants_write() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "TLS layer accepted no data",
            ));
        }
        send_tls_records(tls, transport)?;
    }
    Ok(())
}

fn handshake(
    tls: &mut ServerConnection,
    transport: &mut Transport,
    deadline: Instant,
) -> io::Result<()> {
    while tls.is_handshaking() {
        if tls.wants_write() {
            send_tls_records(tls, transport)?;
            continue;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if !wait_fd(transport.input.as_fd(), PollFlags::POLLIN, remaining)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ));
        }
        if tls.read_tls(transport)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "client closed the connection during the TLS handshake",
            ));
        }
        process_records(tls, transport)
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
    }
    send_tls_records(tls, transport)
}

/// `now + timeout`, saturating far in the future for huge timeouts.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// poll(2) on one descriptor; true when ready (including hang-up and error, which the next
/// read or write reports). EINTR restarts with the remaining time.
fn wait_fd(fd: BorrowedFd<'_>, events: PollFlags, timeout: Duration) -> io::Result<bool> {
    let deadline = deadline_after(timeout);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(fd, events)];
        match poll(&mut fds, poll_timeout(remaining)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Milliseconds for poll(2): rounded up (so a short wait never becomes a busy loop), capped.
fn poll_timeout(remaining: Duration) -> PollTimeout {
    let millis = remaining.as_nanos().div_ceil(1_000_000);
    let capped = millis.min(i32::MAX as u128) as i32;
    PollTimeout::try_from(capped).unwrap_or(PollTimeout::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tls::load_server_config;
    use crate::net::tls::tests::{make_cert, TempDir};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::thread;

    const SHORT: Duration = Duration::from_secs(5);

    /// A server-side `Conn` on one end of a real loopback TCP connection, and the client end.
    fn tcp_pair() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let input = OwnedFd::from(server.try_clone().unwrap());
        (Conn::from_fds(input, OwnedFd::from(server)), client)
    }

    fn complete(bytes: &[u8]) -> Line {
        Line::Complete(bytes.to_vec())
    }

    #[test]
    fn crlf_and_bare_lf_lines() {
        let (mut conn, mut client) = tcp_pair();
        client.write_all(b"USER a\r\nPASS b\nQUIT\r\n").unwrap();
        assert_eq!(conn.read_line(100, SHORT).unwrap(), complete(b"USER a"));
        assert_eq!(conn.read_line(100, SHORT).unwrap(), complete(b"PASS b"));
        assert_eq!(conn.read_line(100, SHORT).unwrap(), complete(b"QUIT"));
    }

    #[test]
    fn nul_and_eight_bit_bytes_pass_through() {
        let (mut conn, mut client) = tcp_pair();
        client.write_all(b"a\0b\xff\xe9\r\n").unwrap();
        assert_eq!(
            conn.read_line(100, SHORT).unwrap(),
            complete(b"a\0b\xff\xe9")
        );
    }

    #[test]
    fn line_of_exactly_max_is_accepted_and_one_more_is_too_long() {
        let (mut conn, mut client) = tcp_pair();
        client
            .write_all(b"0123456789\r\n0123456789A\r\nok\r\n")
            .unwrap();
        assert_eq!(conn.read_line(10, SHORT).unwrap(), complete(b"0123456789"));
        assert_eq!(conn.read_line(10, SHORT).unwrap(), Line::TooLong);
        assert_eq!(conn.read_line(10, SHORT).unwrap(), complete(b"ok"));
    }

    #[test]
    fn huge_line_is_discarded_with_bounded_memory_then_next_line_reads() {
        let (mut conn, client) = tcp_pair();
        let writer = thread::spawn(move || {
            let mut client = client;
            let junk = vec![b'x'; 4 * 1024 * 1024];
            client.write_all(&junk).unwrap();
            client.write_all(b"\r\nNOOP\r\n").unwrap();
            client
        });
        assert_eq!(conn.read_line(1000, SHORT).unwrap(), Line::TooLong);
        assert!(
            conn.input.capacity() <= 1000 + 2 * READ_CHUNK,
            "buffer grew to {}",
            conn.input.capacity()
        );
        assert_eq!(conn.read_line(1000, SHORT).unwrap(), complete(b"NOOP"));
        drop(writer.join().unwrap());
    }

    #[test]
    fn timeout_when_no_line_arrives() {
        let (mut conn, mut client) = tcp_pair();
        client.write_all(b"partial").unwrap();
        let started = Instant::now();
        let wait = Duration::from_millis(150);
        assert_eq!(conn.read_line(100, wait).unwrap(), Line::Timeout);
        assert!(started.elapsed() >= wait);
        // The partial line is kept and completes later.
        client.write_all(b" line\r\n").unwrap();
        assert_eq!(
            conn.read_line(100, SHORT).unwrap(),
            complete(b"partial line")
        );
    }

    #[test]
    fn eof_when_client_closes() {
        let (mut conn, mut client) = tcp_pair();
        client.write_all(b"LAST\r\nunterminated").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(conn.read_line(100, SHORT).unwrap(), complete(b"LAST"));
        assert_eq!(conn.read_line(100, SHORT).unwrap(), Line::Eof);
        assert_eq!(conn.read_line(100, SHORT).unwrap(), Line::Eof);
        assert!(conn.wait_readable(SHORT).unwrap());
    }

    #[test]
    fn pipelined_lines_are_reported_pending() {
        let (mut conn, mut client) = tcp_pair();
        assert!(!conn.has_pending_input());
        assert!(!conn.wait_readable(Duration::from_millis(20)).unwrap());
        client.write_all(b"STAT\r\nLIST\r\n").unwrap();
        assert!(conn.wait_readable(SHORT).unwrap());
        assert_eq!(conn.read_line(100, SHORT).unwrap(), complete(b"STAT"));
        assert!(conn.has_pending_input());
        assert!(conn.wait_readable(Duration::ZERO).unwrap());
        assert_eq!(conn.read_line(100, SHORT).unwrap(), complete(b"LIST"));
        assert!(!conn.has_pending_input());
    }

    #[test]
    fn read_exact_takes_buffered_and_new_bytes() {
        let (mut conn, mut client) = tcp_pair();
        client.write_all(b"APPEND {10}\r\n01234").unwrap();
        assert_eq!(
            conn.read_line(100, SHORT).unwrap(),
            complete(b"APPEND {10}")
        );
        client.write_all(b"56789\r\n").unwrap();
        let mut literal = Vec::new();
        assert!(conn.read_exact_timeout(10, SHORT, &mut literal).unwrap());
        assert_eq!(literal, b"0123456789");
        assert_eq!(conn.read_line(100, SHORT).unwrap(), complete(b""));
        let mut short = Vec::new();
        client.write_all(b"abc").unwrap();
        let wait = Duration::from_millis(100);
        assert!(!conn.read_exact_timeout(5, wait, &mut short).unwrap());
        assert_eq!(short, b"abc");
    }

    #[test]
    fn small_writes_are_buffered_until_flush_and_large_writes_stream() {
        let (mut conn, client) = tcp_pair();
        conn.write_all(b"+OK hello\r\n").unwrap();
        client.set_nonblocking(true).unwrap();
        let mut probe = [0u8; 16];
        assert!(
            (&client).read(&mut probe).is_err(),
            "nothing sent before flush"
        );
        client.set_nonblocking(false).unwrap();
        let reader = thread::spawn(move || {
            let mut all = Vec::new();
            (&client).read_to_end(&mut all).unwrap();
            all
        });
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        conn.write_all(&big).unwrap();
        conn.write_all(b".\r\n").unwrap();
        conn.flush().unwrap();
        drop(conn);
        let received = reader.join().unwrap();
        let mut expected = b"+OK hello\r\n".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b".\r\n");
        assert_eq!(received.len(), expected.len());
        assert!(received == expected);
    }

    #[test]
    fn write_to_closed_client_is_an_error_not_a_signal() {
        let (mut conn, client) = tcp_pair();
        drop(client);
        let chunk = vec![b'y'; 100_000];
        let mut failed = None;
        for _ in 0..100 {
            if let Err(e) = conn.write_all(&chunk).and_then(|()| conn.flush()) {
                failed = Some(e);
                break;
            }
        }
        let err = failed.expect("writing to a closed peer must fail");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{err}"
        );
    }

    #[test]
    fn client_that_never_reads_times_out_the_write() {
        let (mut conn, _client) = tcp_pair();
        conn.set_write_timeout(Duration::from_millis(200));
        let chunk = vec![b'w'; 1 << 20];
        let started = Instant::now();
        let err = (0..256)
            .find_map(|_| conn.write_all(&chunk).and_then(|()| conn.flush()).err())
            .expect("the socket buffers cannot hold 256 MiB");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn pipes_work_like_a_socket() {
        // `ssh host ipop3d`: fd 0 and fd 1 are two different pipes.
        let (server_in, client_out) = nix::unistd::pipe().unwrap();
        let (client_in, server_out) = nix::unistd::pipe().unwrap();
        let mut conn = Conn::from_fds(server_in, server_out);
        let mut client_out = File::from(client_out);
        let mut client_in = File::from(client_in);
        client_out.write_all(b"CAPA\r\n").unwrap();
        assert_eq!(conn.read_line(100, SHORT).unwrap(), complete(b"CAPA"));
        conn.write_all(b"+OK\r\n").unwrap();
        conn.flush().unwrap();
        let mut reply = [0u8; 5];
        client_in.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+OK\r\n");
        drop(client_out);
        assert_eq!(conn.read_line(100, SHORT).unwrap(), Line::Eof);
    }

    // ---- TLS ----

    struct TlsFixture {
        _dir: TempDir,
        server_config: Arc<ServerConfig>,
        client_config: Arc<rustls::ClientConfig>,
    }

    fn tls_fixture() -> TlsFixture {
        tls_fixture_with(rustls::DEFAULT_VERSIONS)
    }

    fn tls_fixture_with(versions: &[&'static rustls::SupportedProtocolVersion]) -> TlsFixture {
        let dir = TempDir::new("conn-tls");
        let (cert, key) = make_cert(&dir.0, &["-newkey", "rsa:2048"]);
        let server_config = load_server_config(&cert, &key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&cert).unwrap();
        use rustls::pki_types::pem::PemObject;
        for der in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(der.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsFixture {
            _dir: dir,
            server_config,
            client_config: Arc::new(client_config),
        }
    }

    fn tls_client(
        config: Arc<rustls::ClientConfig>,
        socket: TcpStream,
    ) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let session = rustls::ClientConnection::new(config, name).unwrap();
        rustls::StreamOwned::new(session, socket)
    }

    fn read_plain_line(socket: &mut TcpStream) -> Vec<u8> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            assert_eq!(socket.read(&mut byte).unwrap(), 1);
            line.push(byte[0]);
        }
        line
    }

    #[test]
    fn starttls_discards_pipelined_plaintext_then_talks_tls() {
        let fixture = tls_fixture();
        let (mut conn, mut client) = tcp_pair();
        let client_config = fixture.client_config.clone();
        // The injected command arrives in the same segment as STLS.
        client.write_all(b"STLS\r\nUSER injected\r\n").unwrap();
        let peer = thread::spawn(move || {
            assert_eq!(read_plain_line(&mut client), b"+OK Begin TLS\r\n");
            let mut tls = tls_client(client_config, client);
            tls.write_all(b"CAPA\r\n").unwrap();
            tls.flush().unwrap();
            let mut reply = Vec::new();
            tls.read_to_end(&mut reply).unwrap(); // ends cleanly only on close_notify
            reply
        });
        assert_eq!(conn.read_line(100, SHORT).unwrap(), complete(b"STLS"));
        assert!(conn.has_pending_input());
        conn.write_all(b"+OK Begin TLS\r\n").unwrap();
        conn.flush().unwrap();
        conn.start_tls(fixture.server_config.clone(), SHORT)
            .unwrap();
        assert!(conn.is_tls());
        assert_eq!(conn.read_line(100, SHORT).unwrap(), complete(b"CAPA"));
        conn.write_all(b"+OK Capability list follows\r\n.\r\n")
            .unwrap();
        conn.shutdown().unwrap();
        drop(conn);
        let reply = peer.join().unwrap();
        assert_eq!(reply, b"+OK Capability list follows\r\n.\r\n");
    }

    #[test]
    fn tls_lines_limits_and_large_output() {
        let fixture = tls_fixture();
        let (mut conn, client) = tcp_pair();
        let client_config = fixture.client_config.clone();
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let expected = big.clone();
        let peer = thread::spawn(move || {
            let mut tls = tls_client(client_config, client);
            let mut long = vec![b'z'; 70_000];
            long.extend_from_slice(b"\r\nRETR 1\nQUIT\r\n");
            tls.write_all(&long).unwrap();
            tls.flush().unwrap();
            let mut reply = Vec::new();
            tls.read_to_end(&mut reply).unwrap();
            reply
        });
        conn.start_tls(fixture.server_config.clone(), SHORT)
            .unwrap();
        assert_eq!(conn.read_line(512, SHORT).unwrap(), Line::TooLong);
        assert_eq!(conn.read_line(512, SHORT).unwrap(), complete(b"RETR 1"));
        conn.write_all(&big).unwrap();
        assert_eq!(conn.read_line(512, SHORT).unwrap(), complete(b"QUIT"));
        drop(conn); // flushes and sends close_notify
        assert!(peer.join().unwrap() == expected);
    }

    #[test]
    fn tls12_clients_are_served() {
        let fixture = tls_fixture_with(&[&rustls::version::TLS12]);
        let (mut conn, client) = tcp_pair();
        let client_config = fixture.client_config.clone();
        let peer = thread::spawn(move || {
            let mut tls = tls_client(client_config, client);
            tls.write_all(b"NOOP\r\n").unwrap();
            tls.flush().unwrap();
            let mut reply = Vec::new();
            tls.read_to_end(&mut reply).unwrap();
            (tls.conn.protocol_version(), reply)
        });
        conn.start_tls(fixture.server_config.clone(), SHORT)
            .unwrap();
        assert_eq!(conn.read_line(100, SHORT).unwrap(), complete(b"NOOP"));
        conn.write_all(b"+OK\r\n").unwrap();
        conn.shutdown().unwrap();
        drop(conn);
        let (version, reply) = peer.join().unwrap();
        assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(reply, b"+OK\r\n");
    }

    #[test]
    fn garbage_instead_of_client_hello_fails_and_connection_is_dead() {
        let fixture = tls_fixture();
        let (mut conn, mut client) = tcp_pair();
        client.write_all(b"this is not TLS at all\r\n").unwrap();
        let err = conn
            .start_tls(fixture.server_config.clone(), SHORT)
            .unwrap_err();
        assert!(err.to_string().starts_with("TLS handshake failed"), "{err}");
        assert!(!conn.is_tls());
        assert_eq!(conn.read_line(100, SHORT).unwrap(), Line::Eof);
    }

    #[test]
    fn silent_client_times_out_the_handshake() {
        let fixture = tls_fixture();
        let (mut conn, _client) = tcp_pair();
        let err = conn
            .start_tls(fixture.server_config.clone(), Duration::from_millis(150))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn poll_timeout_rounds_up_and_caps() {
        assert_eq!(poll_timeout(Duration::ZERO), PollTimeout::ZERO);
        assert_eq!(
            poll_timeout(Duration::from_micros(10)),
            PollTimeout::try_from(1).unwrap()
        );
        assert_eq!(poll_timeout(Duration::MAX), PollTimeout::MAX);
    }
}
