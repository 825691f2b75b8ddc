//! Streaming one message out of an mbox file as presented to clients: the header without
//! metadata lines, then the body, with every CR dropped and every LF sent as CRLF (UW's
//! presentation), exactly `size` bytes.
//!
//! Owns the conversion only; never writes, never holds the body in memory. The caller hands it
//! the read lock under which the index was found current (unless the mailbox holds one for it);
//! the reader keeps it until dropped.

use super::lines::{present_into, presented_len};
use super::meta::{for_each_header_line, LineKind};
use super::parse::Entry;
use crate::store::lock::ReadLock;
use crate::store::MailboxChanged;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

const BODY_CHUNK: usize = 256 * 1024;

/// The presented header (hidden lines removed, CRLF), including its closing blank line.
pub(super) fn presented_header(file: &File, entry: &Entry) -> io::Result<Vec<u8>> {
    let mut raw = vec![0u8; (entry.body_off - entry.hdr_off) as usize];
    file.read_exact_at(&mut raw, entry.hdr_off)?;
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 16);
    for_each_header_line(&raw, |line, kind| match kind {
        LineKind::Visible | LineKind::End => present_into(line, &mut out),
        LineKind::Internal | LineKind::ContentLength => {}
    });
    Ok(out)
}

/// A presented offset in a message and the raw file position of the body byte it shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SeekPoint {
    pub presented: u64,
    pub raw: u64,
}

/// A `Read` over one presented message.
pub(super) struct MessageReader<'f> {
    file: &'f File,
    out: Vec<u8>,
    out_pos: usize,
    raw: Vec<u8>,
    body_pos: u64,
    body_end: u64,
    remaining: u64,
    /// Keeps writers out while bytes are read by offset (`None`: the mailbox holds it).
    _lock: Option<ReadLock>,
}

impl<'f> MessageReader<'f> {
    pub fn new(
        file: &'f File,
        entry: &Entry,
        size: u64,
        lock: Option<ReadLock>,
    ) -> io::Result<MessageReader<'f>> {
        let header = presented_header(file, entry)?;
        Ok(MessageReader {
            file,
            out: header,
            out_pos: 0,
            raw: Vec::new(),
            body_pos: entry.body_off,
            body_end: entry.text_end,
            remaining: size,
            _lock: lock,
        })
    }

    /// A reader from presented offset `offset` on (`size - offset` bytes). The body bytes
    /// before it are counted, not presented; `known` (a presented offset and its raw body
    /// position, from an earlier call on this message) lets the count start there when it is
    /// not past `offset`. Returns the reader and the point it started from, to pass as `known`
    /// next time (a client reading a large message piece by piece then costs one pass).
    pub fn new_at(
        file: &'f File,
        entry: &Entry,
        size: u64,
        lock: Option<ReadLock>,
        offset: u64,
        known: Option<SeekPoint>,
    ) -> io::Result<(MessageReader<'f>, Option<SeekPoint>)> {
        let mut reader = MessageReader::new(file, entry, size, lock)?;
        reader.remaining = size.saturating_sub(offset);
        let header_len = reader.out.len() as u64;
        if reader.remaining == 0 || offset < header_len {
            reader.out_pos = offset.min(header_len) as usize;
            return Ok((reader, None));
        }
        let mut at = match known {
            Some(p) if p.presented >= header_len && p.presented <= offset => p,
            _ => SeekPoint {
                presented: header_len,
                raw: entry.body_off,
            },
        };
        while at.raw < entry.text_end {
            let want = (entry.text_end - at.raw).min(BODY_CHUNK as u64) as usize;
            reader.raw.resize(want, 0);
            file.read_exact_at(&mut reader.raw, at.raw)?;
            let presented = presented_len(&reader.raw);
            if at.presented + presented > offset {
                reader.out.clear();
                present_into(&reader.raw, &mut reader.out);
                reader.out_pos = (offset - at.presented) as usize;
                reader.body_pos = at.raw + want as u64;
                return Ok((reader, Some(at)));
            }
            at.presented += presented;
            at.raw += want as u64;
        }
        // Past the stored bytes: the index is stale; the first read says so.
        reader.out.clear();
        reader.out_pos = 0;
        reader.body_pos = entry.text_end;
        Ok((reader, None))
    }

    fn refill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.out_pos = 0;
        let want = (self.body_end - self.body_pos).min(BODY_CHUNK as u64) as usize;
        if want == 0 {
            return Ok(());
        }
        self.raw.resize(want, 0);
        self.file.read_exact_at(&mut self.raw, self.body_pos)?;
        self.body_pos += want as u64;
        present_into(&self.raw, &mut self.out);
        Ok(())
    }
}

impl Read for MessageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        while self.out_pos == self.out.len() {
            if self.body_pos >= self.body_end {
                // Only a change the stamp could not see gets here (a rewrite that kept the
                // length within one tick of the clock): still never return wrong bytes.
                return Err(MailboxChanged::io_error());
            }
            self.refill()?;
        }
        let n = buf
            .len()
            .min(self.out.len() - self.out_pos)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        self.remaining -= n as u64;
        Ok(n)
    }
}
