//! Appending messages to an mbox file (IMAP APPEND, COPY, MOVE) in the bytes UW-IMAP
//! imap-2007f leaves (`unix_append` followed by its rewrite): a `From user@host <date> <zone>`
//! line, the header with UW's metadata block (Status, X-Status, padded X-Keywords, X-UID) at its
//! end, the body with `From ` lines escaped as `>From `, LF line ends, a blank separator line.
//!
//! Messages are first converted into a spool (in memory for a batch of small literals, else an
//! unlinked scratch file: a large message is never held in memory), then
//! written under the mailbox lock in two crash-safe steps:
//! 1. the mailbox-wide UID-last (and any new keyword names) is raised in `X-IMAPbase` or the
//!    pseudo-message. Usually UW's padding lets that be a same-length patch of one header,
//!    which is written in step 2 behind its journal; otherwise it is a journaled rewrite done
//!    first, so a kill after this step only skips UIDs, which is harmless, and UW, which
//!    refuses X-UIDs above UID-last, reads the file unchanged;
//! 2. the messages are appended behind an append journal (the old length, the old bytes of
//!    any step-1 patch, a checksum of what is written), which recovery uses to cut a
//!    half-written append off whole. The journal is not synced; the mailbox is, once.
//!
//! When the appending session's index still describes the file (same stamp), the file is not
//! parsed again: only the first message's header and the end of the file are touched.
//!
//! Owns the append format and its ordering; never changes existing messages' flags. Appended
//! messages carry no `O`, so the next session to open claims `\Recent` for them, except when
//! the read-write session that has the mailbox open appends (and knows the file): it claims
//! them itself, in the same write, instead of rewriting them at its next refresh.

use super::fromline::from_line_date;
use super::journal::{self, Journal, Region};
use super::meta::{
    pseudo_message, write_xstatus, BaseInfo, HeaderFilter, LineKind, MessageMeta, MAX_KEYWORDS,
};
use super::parse::{self, ParseError, Parsed};
use super::rewrite::{self, Snapshot, Style};
use super::{host_name, now, FileStamp, LOCK_TIMEOUT};
use crate::store::lock::MailboxLock;
use crate::store::{Flags, NewMessage, StoreError};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Buffer size for reading sources and copying spooled text into the mailbox.
const COPY_CHUNK: usize = 256 * 1024;
/// A line longer than this is converted in pieces.
const MAX_LINE: usize = 1 << 20;

/// One message converted to mbox form in the spool: header lines (LF ends, metadata headers
/// renamed `X-Original-...`, `From ` escaped) and body, without the blank line between them.
struct Spooled {
    header_off: u64,
    header_len: u64,
    body_len: u64,
    flags: Flags,
    keywords: Vec<String>,
    date: (i64, i32),
}

/// A batch whose literals total at most this many octets is converted in memory; larger ones
/// (and messages of unknown length) go to an unlinked scratch file.
pub(super) const IN_MEMORY_SPOOL: u64 = 256 * 1024;

/// Where the converted text waits for the lock.
enum SpoolText {
    Memory(Vec<u8>),
    File(File),
}

impl SpoolText {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            SpoolText::File(file) => file.read_exact_at(buf, offset),
            SpoolText::Memory(text) => {
                let held = usize::try_from(offset)
                    .ok()
                    .and_then(|start| text.get(start..start.checked_add(buf.len())?))
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                buf.copy_from_slice(held);
                Ok(())
            }
        }
    }
}

/// The converted messages.
struct Spool {
    text: SpoolText,
    messages: Vec<Spooled>,
}

/// Where and how to append.
pub(super) struct Target<'a> {
    pub path: &'a Path,
    pub helper: &'a Path,
    /// Where mailbox-wide data goes if the file has none yet.
    pub style: Style,
    /// Create the file (0600) when missing (the spool INBOX); otherwise a missing file is
    /// `NoSuchMailbox`.
    pub create_missing: bool,
}

/// Append `messages` at the end of the mailbox. Returns UIDVALIDITY and the new UIDs.
pub(super) fn append(
    target: &Target<'_>,
    messages: &mut [NewMessage<'_>],
) -> Result<(u32, Vec<u32>), StoreError> {
    append_known(target, messages, None).map(|done| (done.uid_validity, done.uids))
}

/// What the appending session already knows of the file: its index (disk state) when the
/// file was as `stamp` says. Used instead of parsing the file when it has not changed since.
pub(super) struct Known {
    pub stamp: FileStamp,
    pub parsed: Parsed,
    /// The session is read-write: write the new messages with `O` (it reports them `\Recent`).
    pub claim_recent: bool,
}

/// What an append did.
pub(super) struct Appended {
    pub uid_validity: u32,
    pub uids: Vec<u32>,
    /// The messages were written with `O`, claimed by the [`Known`] session.
    pub claimed: bool,
    /// When the file was [`Known`] and the old messages did not move: the file's index after
    /// the append minus the appended messages, which start at `tail_off`; `after` is the stamp
    /// the file had when we were done. Lets the session read only the new tail.
    pub catch_up: Option<CatchUp>,
}

/// The whole file's index right after our append, read under the append's own lock: only
/// the appended tail was parsed. Valid while the file still has the stamp `after`.
pub(super) struct CatchUp {
    pub after: FileStamp,
    pub parsed: Parsed,
}

/// [`append`], skipping the parse when `known` still describes the file.
pub(super) fn append_known(
    target: &Target<'_>,
    messages: &mut [NewMessage<'_>],
    known: Option<Known>,
) -> Result<Appended, StoreError> {
    let io_err = |e| StoreError::Io(target.path.to_path_buf(), e);
    let spool = spool_messages(messages)?;
    let file = open_target(target)?;
    let _lock =
        MailboxLock::acquire(target.path, &file, target.helper, LOCK_TIMEOUT).map_err(io_err)?;
    journal::recover(target.path, &file).map_err(io_err)?;
    let stamp = FileStamp::of(&file).map_err(io_err)?;
    let len = stamp.len;
    let known = known.filter(|k| k.stamp == stamp);
    let claim = known.as_ref().is_some_and(|k| k.claim_recent);
    let known = known.map(|k| k.parsed);
    let knew = known.is_some();
    let parsed = match known {
        Some(parsed) => parsed,
        None => full_parse(&file, len).map_err(|e| match e {
            ParseError::Io(e) => io_err(e),
            ParseError::NotMbox(..) => StoreError::Damaged(format!(
                "Not a UNIX-format mailbox: {}",
                target.path.display()
            )),
        })?,
    };
    let count = u32::try_from(spool.messages.len()).unwrap_or(u32::MAX);
    let Some(new_last) = parsed.uid_last.checked_add(count) else {
        return Err(StoreError::Refused(format!(
            "{}: no UIDs left in this mailbox",
            target.path.display()
        )));
    };
    let first_uid = parsed.uid_last + 1;
    let mut keywords = parsed.keywords.clone();
    for m in &spool.messages {
        for k in m.keywords.iter().filter(|k| super::valid_keyword(k)) {
            if keywords.len() < MAX_KEYWORDS && !keywords.iter().any(|n| n.eq_ignore_ascii_case(k))
            {
                keywords.push(k.clone());
            }
        }
    }
    let style = if parsed.pseudo.is_some() {
        Style::Pseudo
    } else if parsed.has_base {
        Style::Base
    } else {
        target.style
    };
    let holds_base = !parsed.entries.is_empty() || parsed.pseudo.is_some();
    let (mut written, mut patches) = (None, Vec::new());
    if holds_base {
        let raised = raise_uid_last(target.path, &file, &parsed, style, new_last, &keywords)
            .map_err(io_err)?;
        written = raised.written;
        patches = raised.patches;
        if patches.is_empty() {
            crash_hook("append-base");
        }
    }
    let base = BaseInfo {
        uid_validity: parsed.uid_validity,
        uid_last: new_last,
        keywords: &keywords,
    };
    let layout = Layout {
        base: &base,
        style,
        holds_base,
        first_uid,
        claim,
    };
    let (tail_off, prefix_len) =
        write_messages(target.path, &file, &spool, &layout, &patches).map_err(io_err)?;
    let catch_up = match written {
        Some(w) if knew && prefix_len == 0 => {
            let base = Parsed {
                has_base: w.pseudo.is_none(),
                entries: w.entries,
                infos: parsed.infos,
                uid_validity: parsed.uid_validity,
                uid_last: new_last,
                keywords,
                pseudo: w.pseudo,
                first_meta: w.first_meta,
                needs_persist: false,
            };
            catch_up_under_lock(&file, base, tail_off)
        }
        _ => None,
    };
    Ok(Appended {
        uid_validity: parsed.uid_validity,
        uids: (first_uid..=new_last).collect(),
        claimed: claim,
        catch_up,
    })
}

/// The index after our append, parsed from the appended tail while the lock is still ours, so
/// that the session's next refresh needs neither the lock nor a read while the file keeps the
/// stamp it has now. `None` (a full refresh later) on any doubt: the append itself is done.
fn catch_up_under_lock(file: &File, base: Parsed, tail_off: u64) -> Option<CatchUp> {
    let after = FileStamp::of(file).ok()?;
    let parsed = super::incremental::after_own_append(file, base, tail_off, after.len, now())
        .ok()
        .flatten()?;
    #[cfg(test)]
    super::tests::assert_matches_disk(file, after.len, &parsed);
    Some(CatchUp { after, parsed })
}

fn full_parse(file: &File, len: u64) -> Result<Parsed, ParseError> {
    #[cfg(test)]
    super::tests::FULL_PARSES.with(|n| n.set(n.get() + 1));
    parse::parse(file, len, now())
}

fn open_target(target: &Target<'_>) -> Result<File, StoreError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if target.create_missing {
        options.create(true).mode(0o600);
    }
    options.open(target.path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => StoreError::NoSuchMailbox(target.path.display().to_string()),
        _ => StoreError::Io(target.path.to_path_buf(), e),
    })
}

/// Abort here when the crash test asks for it (`MAILSUITE_CRASH_AT=<point>`).
fn crash_hook(point: &str) {
    if std::env::var("MAILSUITE_CRASH_AT").is_ok_and(|v| v == point) {
        std::process::abort();
    }
}

/// What raising UID-last did or leaves to do.
struct Raised {
    /// The index of the old messages once it is done, if known without a parse.
    written: Option<rewrite::Written>,
    /// Same-length patches still to write (with the append, behind its journal): (offset,
    /// new bytes). Empty when the raise is already done (or needed nothing).
    patches: Vec<(u64, Vec<u8>)>,
}

/// Step 1: the file's own messages unchanged (disk state, `O` kept as it is), UID-last raised.
/// When that is only a same-length patch of the header holding it (the usual case, thanks to
/// UW's padding), the patch is returned to be written with the append behind one journal;
/// otherwise the journaled rewrite is done here.
fn raise_uid_last(
    path: &Path,
    file: &File,
    parsed: &Parsed,
    style: Style,
    new_last: u32,
    keywords: &[String],
) -> io::Result<Raised> {
    if let Some(raised) = raise_in_first_message(file, parsed, style, new_last, keywords)? {
        return Ok(raised);
    }
    let keep = vec![true; parsed.entries.len()];
    let snapshot = Snapshot {
        file,
        len: file.metadata()?.len(),
        entries: &parsed.entries,
        infos: &parsed.infos,
        keep: &keep,
        style,
        uid_validity: parsed.uid_validity,
        uid_last: new_last,
        keywords,
        pseudo: parsed.pseudo.as_ref(),
        first_meta: parsed.first_meta.as_deref(),
        now: now(),
        claim_recent: false,
    };
    let plan = rewrite::plan(&snapshot, &host_name())?;
    let written = rewrite::written_index(&snapshot, &plan);
    let mut patches = Vec::new();
    if plan.patches_only() {
        patches = rewrite::patch_spans(&plan)
            .into_iter()
            .map(|span| (span.offset, span.new.to_vec()))
            .collect();
    } else if !plan.is_noop() {
        rewrite::execute(path, file, &snapshot, &plan)?;
    }
    Ok(Raised { written, patches })
}

/// The usual case of step 1 in a spool INBOX whose messages all have their UIDs stored:
/// `X-IMAPbase` of the first message takes the new UID-last in its padding. Planned on the
/// first message alone, so the cost does not grow with the mailbox (the other messages are
/// not touched). `None` when that is not a same-length patch (a pseudo-message, a first
/// message to rewrite, UIDs to store): the caller plans the whole file.
fn raise_in_first_message(
    file: &File,
    parsed: &Parsed,
    style: Style,
    new_last: u32,
    keywords: &[String],
) -> io::Result<Option<Raised>> {
    let Some(first) = parsed.entries.first() else {
        return Ok(None);
    };
    // Messages without a stored UID (mail delivered since) get theirs in the same step, in
    // order, before any appended one: that is a rewrite of them, planned in full.
    if style != Style::Base || parsed.pseudo.is_some() || parsed.needs_persist {
        return Ok(None);
    }
    let snapshot = Snapshot {
        file,
        len: first.next_off,
        entries: &parsed.entries[..1],
        infos: &parsed.infos[..1],
        keep: &[true],
        style,
        uid_validity: parsed.uid_validity,
        uid_last: new_last,
        keywords,
        pseudo: None,
        first_meta: parsed.first_meta.as_deref(),
        now: now(),
        claim_recent: false,
    };
    let plan = rewrite::plan(&snapshot, &host_name())?;
    if !plan.patches_only() {
        return Ok(None);
    }
    let Some(mut written) = rewrite::written_index(&snapshot, &plan) else {
        return Ok(None);
    };
    written.entries.extend_from_slice(&parsed.entries[1..]);
    let patches = rewrite::patch_spans(&plan)
        .into_iter()
        .map(|span| (span.offset, span.new.to_vec()))
        .collect();
    Ok(Some(Raised {
        written: Some(written),
        patches,
    }))
}

/// Mailbox-wide facts the appended bytes depend on.
struct Layout<'a> {
    base: &'a BaseInfo<'a>,
    style: Style,
    /// The file already carries the mailbox-wide data (step 1 raised it).
    holds_base: bool,
    first_uid: u32,
    /// Write `O` (see [`Known::claim_recent`]).
    claim: bool,
}

/// The appended bytes that are not spooled text, per message: From line and metadata block.
struct Framing {
    prefix: Vec<u8>,
    messages: Vec<(Vec<u8>, Vec<u8>)>,
    total: u64,
}

fn framing(len_before: u64, tail: &[u8], spool: &Spool, layout: &Layout<'_>) -> Framing {
    let mut prefix = Vec::new();
    if len_before > 0 && !tail.ends_with(b"\n\n") {
        prefix.extend_from_slice(if tail.ends_with(b"\n") {
            b"\n"
        } else {
            b"\n\n"
        });
    }
    if !layout.holds_base && layout.style == Style::Pseudo {
        prefix.extend_from_slice(&pseudo_message(layout.base, now(), &host_name()));
    }
    let sender = format!("{}@{}", user_name(), host_name());
    let mut total = prefix.len() as u64;
    let mut messages = Vec::with_capacity(spool.messages.len());
    for (i, m) in spool.messages.iter().enumerate() {
        let from = format!("From {sender} {}\n", from_line_date(m.date.0, m.date.1)).into_bytes();
        let bits = m.keywords.iter().fold(0u64, |acc, k| {
            match layout
                .base
                .keywords
                .iter()
                .position(|n| n.eq_ignore_ascii_case(k))
            {
                Some(p) if p < 64 => acc | 1 << p,
                _ => acc,
            }
        });
        let meta = MessageMeta {
            flags: m.flags,
            keywords: bits,
            uid: layout.first_uid + i as u32,
            old: layout.claim,
        };
        let first_of_file = i == 0 && !layout.holds_base && layout.style == Style::Base;
        let mut block = Vec::new();
        write_xstatus(
            &mut block,
            &meta,
            first_of_file.then_some(layout.base),
            layout.base.keywords,
        );
        total += from.len() as u64 + m.header_len + block.len() as u64 + m.body_len + 1;
        messages.push((from, block));
    }
    Framing {
        prefix,
        messages,
        total,
    }
}

/// Step 2: write everything at the end behind an append journal. Returns where the appended
/// bytes start and how many separator/pseudo-message bytes precede the first new message.
/// One sync, of the mailbox: the journal guards against a kill (see
/// [`journal`](super::journal) for what a power failure can do).
fn write_messages(
    path: &Path,
    file: &File,
    spool: &Spool,
    layout: &Layout<'_>,
    patches: &[(u64, Vec<u8>)],
) -> io::Result<(u64, usize)> {
    let len = file.metadata()?.len();
    let mut tail = [0u8; 2];
    let tail_len = len.min(2) as usize;
    file.read_exact_at(&mut tail[..tail_len], len - tail_len as u64)?;
    let framing = framing(len, &tail[..tail_len], spool, layout);
    let regions: Vec<Region> = patches
        .iter()
        .map(|(offset, bytes)| Region {
            offset: *offset,
            len: bytes.len() as u64,
        })
        .collect();
    let mut sum = Summer(journal::Checksum::new());
    emit(&mut sum, spool, &framing, false)?;
    for (_, bytes) in patches {
        sum.0.update(bytes);
    }
    let lengths = (len, len + framing.total);
    let journal = Journal::create_for_append(path, file, lengths, &regions, sum.0.finish())?;
    let crash_half = std::env::var("MAILSUITE_CRASH_AT").is_ok_and(|v| v == "append-half");
    let result = (|| {
        for (offset, bytes) in patches {
            file.write_all_at(bytes, *offset)?;
        }
        if !patches.is_empty() {
            crash_hook("append-base");
        }
        let mut out = PositionalWriter::new(file, len);
        emit(&mut out, spool, &framing, crash_half)?;
        out.flush()?;
        if out.pos != len + framing.total {
            return Err(io::Error::other("append wrote an unexpected length"));
        }
        mark_new_mail(file)?;
        file.sync_data()
    })();
    match result {
        Ok(()) => {
            crash_hook("append-synced");
            journal.discard().map(|()| (len, framing.prefix.len()))
        }
        Err(e) => {
            journal.restore(file)?;
            Err(e)
        }
    }
}

/// Where the appended bytes go: the mailbox, or a checksum of them.
trait Sink {
    fn put(&mut self, data: &[u8]) -> io::Result<()>;

    /// Flush and abort (the `append-half` crash test); only the mailbox writer dies.
    fn die(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn copy_from(&mut self, source: &SpoolText, mut off: u64, len: u64) -> io::Result<()> {
        let end = off + len;
        let mut chunk = vec![0u8; COPY_CHUNK.min(len as usize)];
        while off < end {
            let n = (end - off).min(chunk.len() as u64) as usize;
            source.read_exact_at(&mut chunk[..n], off)?;
            self.put(&chunk[..n])?;
            off += n as u64;
        }
        Ok(())
    }
}

struct Summer(journal::Checksum);

impl Sink for Summer {
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.update(data);
        Ok(())
    }
}

/// Every byte the append writes at the end of the file, in order.
fn emit(out: &mut dyn Sink, spool: &Spool, framing: &Framing, half: bool) -> io::Result<()> {
    out.put(&framing.prefix)?;
    for (m, (from, block)) in spool.messages.iter().zip(&framing.messages) {
        out.put(from)?;
        out.copy_from(&spool.text, m.header_off, m.header_len)?;
        if half {
            out.die()?;
        }
        out.put(block)?;
        out.copy_from(&spool.text, m.header_off + m.header_len, m.body_len)?;
        out.put(b"\n")?;
    }
    Ok(())
}

/// As UW after an append: modification time now, access time a second earlier, so that
/// "new mail" checks (mtime > atime) fire.
fn mark_new_mail(file: &File) -> io::Result<()> {
    let now = std::time::SystemTime::now();
    let earlier = now
        .checked_sub(std::time::Duration::from_secs(1))
        .unwrap_or(now);
    file.set_times(
        std::fs::FileTimes::new()
            .set_accessed(earlier)
            .set_modified(now),
    )
}

/// The From line's sender: our user's name, looked up once (a process serves one user).
pub(super) fn user_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "MAILER-DAEMON".to_string())
    })
    .clone()
}

/// Buffered `pwrite`s from a starting offset.
struct PositionalWriter<'f> {
    file: &'f File,
    pos: u64,
    buf: Vec<u8>,
}

impl<'f> PositionalWriter<'f> {
    fn new(file: &'f File, pos: u64) -> PositionalWriter<'f> {
        PositionalWriter {
            file,
            pos,
            buf: Vec::with_capacity(COPY_CHUNK),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.buf, self.pos)?;
        if self.buf.len() >= COPY_CHUNK {
            // A large message: the sync before the OK waits less if the disk starts now.
            super::disk::start_writeback(self.file, self.pos, self.buf.len() as u64);
        }
        self.pos += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl Sink for PositionalWriter<'_> {
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= COPY_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn die(&mut self) -> io::Result<()> {
        self.flush()?;
        std::process::abort();
    }
}

/// An unlinked scratch file in the temporary directory.
fn scratch_file() -> Result<File, StoreError> {
    let dir = std::env::temp_dir();
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path: PathBuf = dir.join(format!(
            ".mbox-append.{}.{nanos}.{attempt}",
            std::process::id()
        ));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path).map_err(|e| StoreError::Io(path.clone(), e))?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(StoreError::Io(path, e)),
        }
    }
    Err(StoreError::Io(
        dir,
        io::Error::other("cannot create a scratch file for APPEND"),
    ))
}

fn spool_messages(messages: &mut [NewMessage<'_>]) -> Result<Spool, StoreError> {
    let literal_total = messages
        .iter()
        .try_fold(0u64, |sum, m| sum.checked_add(m.len?));
    let mut text = match literal_total {
        Some(total) if total <= IN_MEMORY_SPOOL => {
            SpoolText::Memory(Vec::with_capacity(total as usize + 64))
        }
        _ => SpoolText::File(scratch_file()?),
    };
    let scratch_err = |e| StoreError::Io(std::env::temp_dir(), e);
    let mut spooled = Vec::with_capacity(messages.len());
    let mut offset = 0u64;
    for m in messages.iter_mut() {
        let (header_len, body_len) = match &mut text {
            SpoolText::Memory(held) => convert(m, held)?,
            SpoolText::File(file) => {
                let mut out = io::BufWriter::with_capacity(COPY_CHUNK, &*file);
                let lengths = convert(m, &mut out)?;
                out.flush().map_err(scratch_err)?;
                lengths
            }
        };
        if header_len + body_len == 0 {
            return Err(StoreError::Refused("Append of zero-length message".into()));
        }
        spooled.push(Spooled {
            header_off: offset,
            header_len,
            body_len,
            flags: m.flags,
            keywords: m.keywords.to_vec(),
            date: m.internal_date.unwrap_or_else(|| (now(), 0)),
        });
        offset += header_len + body_len;
    }
    Ok(Spool {
        text,
        messages: spooled,
    })
}

/// Convert message `m` into mbox form at the end of `out`: (header length, body length).
fn convert<W: Write>(m: &mut NewMessage<'_>, out: &mut W) -> Result<(u64, u64), StoreError> {
    let scratch_err = |e| StoreError::Io(std::env::temp_dir(), e);
    let mut converter = Converter::new(out);
    let chunk = m.len.map_or(COPY_CHUNK, |len| {
        usize::try_from(len).map_or(COPY_CHUNK, |l| l.clamp(1, COPY_CHUNK))
    });
    let mut buf = vec![0u8; chunk];
    loop {
        let n = match m.source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::Io(PathBuf::from("<append source>"), e)),
        };
        converter.feed(&buf[..n]).map_err(scratch_err)?;
    }
    converter.finish().map_err(scratch_err)
}

/// Streams one message into mbox form, line by line.
struct Converter<'w, W: Write> {
    out: &'w mut W,
    line: Vec<u8>,
    /// The next bytes begin a line (false after a piece of an over-long line).
    at_line_start: bool,
    in_header: bool,
    filter: HeaderFilter,
    written: u64,
    header_len: u64,
}

impl<'w, W: Write> Converter<'w, W> {
    fn new(out: &'w mut W) -> Converter<'w, W> {
        Converter {
            out,
            line: Vec::new(),
            at_line_start: true,
            in_header: true,
            filter: HeaderFilter::new(),
            written: 0,
            header_len: 0,
        }
    }

    fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        while let Some(i) = memchr::memchr(b'\n', data) {
            self.line.extend_from_slice(&data[..=i]);
            data = &data[i + 1..];
            let line = std::mem::take(&mut self.line);
            self.emit(&line, true)?;
            self.line = line;
            self.line.clear();
        }
        self.line.extend_from_slice(data);
        if self.line.len() > MAX_LINE && self.line.last() != Some(&b'\r') {
            let piece = std::mem::take(&mut self.line);
            self.emit(&piece, false)?;
        }
        Ok(())
    }

    /// Flush the last line (adding its newline); returns header and body lengths.
    fn finish(mut self) -> io::Result<(u64, u64)> {
        if !self.line.is_empty() {
            let mut last = std::mem::take(&mut self.line);
            last.push(b'\n');
            self.emit(&last, true)?;
        }
        if self.in_header {
            self.header_len = self.written;
        }
        Ok((self.header_len, self.written - self.header_len))
    }

    /// Write `bytes` (a whole line when `complete`, else a piece of an over-long one).
    fn emit(&mut self, bytes: &[u8], complete: bool) -> io::Result<()> {
        let line_start = self.at_line_start;
        self.at_line_start = complete;
        let text: std::borrow::Cow<'_, [u8]> = if complete && bytes.ends_with(b"\r\n") {
            let mut lf = bytes[..bytes.len() - 2].to_vec();
            lf.push(b'\n');
            lf.into()
        } else {
            bytes.into()
        };
        if line_start && self.in_header && *text == *b"\n" {
            self.in_header = false;
            self.header_len = self.written;
            return Ok(());
        }
        if self.in_header {
            let kind = self.filter.classify(&text, line_start);
            let starts_name = !matches!(text.first(), Some(b' ') | Some(b'\t'));
            if line_start && kind == LineKind::Internal && starts_name {
                self.write(b"X-Original-")?;
            }
        }
        if line_start && text.starts_with(b"From ") {
            self.write(b">")?;
        }
        self.write(&text)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}
