//! Writing an mbox back in place the way UW-IMAP imap-2007f does (`unix_rewrite`): expunged
//! messages removed, each changed message's metadata block regenerated in UW's order and
//! padding, untouched messages left byte for byte where they are.
//!
//! The cheap case first: when nothing moves and each changed message's new metadata block has
//! the length of its old one (UW pads `X-Keywords` for exactly this), and the old block is
//! verified on disk to be what the index says, only the differing bytes of those blocks are
//! written (a STORE on any number of messages touches a few bytes each). Anything else is a
//! full rewrite from the first moved message on.
//!
//! Crash safety: every region that will be overwritten (a patch's few bytes included) is first
//! saved in a [`Journal`]; the new bytes are produced from the journal copy, then the file is
//! truncated, fsynced and the journal removed. A rewrite that only moves unchanged bytes
//! towards the start and cuts the file (after a few bytes made anew at its start) is a
//! compaction instead, journalled by its moves and finished forward (see [`compact`]). The file is never replaced by rename (an MTA
//! waiting on the lock holds the old inode). After a write, [`written_index`] says where every
//! message now is, so the caller need not parse the file again. Owns the write plan and its
//! execution; never takes locks itself.

use super::compact::{self, Move, Schedule};
use super::disk;
use super::journal::{Journal, Region, CUT_MARK};
use super::meta::{
    for_each_header_line, pseudo_message, write_xstatus, BaseInfo, LineKind, MessageMeta,
};
use super::parse::{Entry, PseudoInfo};
use super::patch::{self, Safety, Span};
use crate::store::MessageInfo;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

const WRITE_CHUNK: usize = 1 << 20;
/// A rewrite that shortens the file by at least this much saves only what it overwrites and
/// cuts the rest off behind a commit record (see [`journal`](super::journal)): two small
/// syncs more, in exchange for not copying the old tail into the journal. (Tests use the
/// smallest value, so that every crash test goes through the cut.)
#[cfg(not(test))]
const MIN_CUT: u64 = 256 * 1024;
#[cfg(test)]
const MIN_CUT: u64 = CUT_MARK.len() as u64;

/// Whether mailbox-wide data lives in `X-IMAPbase` of the first message (spool INBOX) or in the
/// pseudo-message (other folders, and any file that already has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Style {
    Base,
    Pseudo,
}

/// Everything the planner needs to know about the mailbox.
pub(super) struct Snapshot<'a> {
    pub file: &'a File,
    pub len: u64,
    pub entries: &'a [Entry],
    pub infos: &'a [MessageInfo],
    pub keep: &'a [bool],
    pub style: Style,
    pub uid_validity: u32,
    pub uid_last: u32,
    pub keywords: &'a [String],
    pub pseudo: Option<&'a PseudoInfo>,
    pub first_meta: Option<&'a [u8]>,
    pub now: i64,
    /// Mark every message seen by a session (`O`): true for a session's own commit, which
    /// claims `\Recent`; false to keep each message's `O` as the index says (`!recent`).
    pub claim_recent: bool,
}

enum Source {
    /// Old bytes moved unchanged: message `index`, or the pseudo-message (`None`).
    Copy { old_off: u64, index: Option<usize> },
    /// Message `index` rewritten with fresh metadata; `header` is the length of the header
    /// lines it keeps, `clean` whether its old header and text end the way a parse of the
    /// rewritten message will see them (a blank line closes the header, the text ends a line).
    Message {
        index: usize,
        first: bool,
        header: u64,
        clean: bool,
    },
    /// Message `index` stays where it is and only its metadata block changes, to a block of
    /// the same length (UW's padding absorbs the difference): `new` replaces the verified
    /// `old` bytes at `offset`. Only the bytes that differ are kept. `safety`: whether it
    /// needs the journal (see [`patch`]).
    Patch {
        index: usize,
        first: bool,
        offset: u64,
        old: Vec<u8>,
        new: Vec<u8>,
        safety: Safety,
    },
    /// A freshly generated pseudo-message.
    Bytes(Vec<u8>),
}

struct Piece {
    new_off: u64,
    len: u64,
    /// False when the bytes are already in place.
    write: bool,
    source: Source,
}

/// Bytes a compaction may make up and hold in memory (the new first message is one of them):
/// more, and the undo journal does the rewrite.
const MAX_FILL: u64 = 4 << 20;

/// The writes of a compaction: see [`Plan::compaction`].
#[derive(Default)]
struct Compaction {
    fills: Vec<(u64, Vec<u8>)>,
    moves: Vec<Move>,
}

impl Compaction {
    fn add_move(&mut self, src: u64, dst: u64, len: u64) {
        match self.moves.last_mut() {
            Some(m) if m.src + m.len == src && m.dst + m.len == dst => m.len += len,
            _ => self.moves.push(Move { src, dst, len }),
        }
    }
}

/// A piece that is not a plain move, made in memory from the mailbox as it is now: (where it
/// goes, its bytes). An unmoved patch is just its new bytes.
fn render(s: &Snapshot<'_>, piece: &Piece) -> io::Result<(u64, Vec<u8>)> {
    let read_at = |off: u64, len: u64| -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        s.file.read_exact_at(&mut buf, off)?;
        Ok(buf)
    };
    let mut out = Vec::with_capacity(piece.len as usize);
    match &piece.source {
        Source::Copy { old_off, .. } => out = read_at(*old_off, piece.len)?,
        Source::Bytes(bytes) => out.extend_from_slice(bytes),
        Source::Patch {
            index, offset, new, ..
        } => {
            let e = &s.entries[*index];
            if piece.new_off == e.from_off {
                return Ok((*offset, new.clone()));
            }
            out = read_at(e.from_off, e.next_off - e.from_off)?;
            let at = (offset - e.from_off) as usize;
            out[at..at + new.len()].copy_from_slice(new);
        }
        Source::Message { index, first, .. } => {
            let e = &s.entries[*index];
            out = read_at(e.from_off, e.hdr_off - e.from_off)?;
            let mut read = |off: u64, buf: &mut [u8]| s.file.read_exact_at(buf, off);
            filtered_header(&mut read, e, &mut out)?;
            out.extend_from_slice(&xstatus_bytes(s, *index, *first));
            out.extend_from_slice(&read_at(e.body_off, e.text_end - e.body_off)?);
            out.push(b'\n');
        }
    }
    if out.len() as u64 != piece.len {
        return Err(io::Error::other("mailbox changed during rewrite"));
    }
    Ok((piece.new_off, out))
}

/// What a commit will write. Empty when the file already says everything.
pub(super) struct Plan {
    pieces: Vec<Piece>,
    pub new_len: u64,
    old_len: u64,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.new_len == self.old_len && self.pieces.iter().all(|p| !p.write)
    }

    /// Every change is a same-length metadata patch: nothing moves.
    pub fn patches_only(&self) -> bool {
        self.new_len == self.old_len
            && self
                .pieces
                .iter()
                .all(|p| !p.write || matches!(p.source, Source::Patch { .. }))
    }
}

fn base_info<'a>(s: &Snapshot<'a>) -> BaseInfo<'a> {
    BaseInfo {
        uid_validity: s.uid_validity,
        uid_last: s.uid_last,
        keywords: s.keywords,
    }
}

fn meta_of(info: &MessageInfo, claim_recent: bool) -> MessageMeta {
    MessageMeta {
        flags: info.flags,
        keywords: info.keywords,
        uid: info.uid,
        old: claim_recent || !info.recent,
    }
}

/// The header lines that survive a rewrite (all but UW's metadata and the blank line).
/// Returns whether the old header was closed by its blank line.
fn filtered_header(
    read: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
    entry: &Entry,
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut raw = vec![0u8; (entry.body_off - entry.hdr_off) as usize];
    read(entry.hdr_off, &mut raw)?;
    let mut ended = false;
    for_each_header_line(&raw, |line, kind| match kind {
        LineKind::Visible | LineKind::ContentLength => out.extend_from_slice(line),
        LineKind::End => ended = true,
        LineKind::Internal => {}
    });
    if out.last().is_some_and(|&c| c != b'\n') {
        out.push(b'\n');
    }
    Ok(ended)
}

/// Whether the message's text is empty or ends with a line end (so that the separator line a
/// rewrite adds after it is a blank line, not the end of its last line).
fn text_ends_line(file: &File, e: &Entry) -> io::Result<bool> {
    if e.text_end <= e.body_off {
        return Ok(true);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, e.text_end - 1)?;
    Ok(last[0] == b'\n')
}

/// The metadata block message `i` has on disk now, when the index knows it exactly: the
/// first message's as parsed, any other's as we would write its disk state (`canonical`).
fn known_disk_block(s: &Snapshot<'_>, i: usize, first: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    known_disk_block_into(s, i, first, &mut out).then_some(out)
}

/// [`known_disk_block`] into `out` (cleared first); false when the index does not know it.
fn known_disk_block_into(s: &Snapshot<'_>, i: usize, first: bool, out: &mut Vec<u8>) -> bool {
    out.clear();
    let e = &s.entries[i];
    if first {
        return match s.first_meta.filter(|_| i == 0) {
            Some(meta) => {
                out.extend_from_slice(meta);
                true
            }
            None => false,
        };
    }
    if !e.canonical {
        return false;
    }
    let disk = MessageMeta {
        flags: e.disk_flags,
        keywords: e.disk_keywords,
        uid: s.infos[i].uid,
        old: e.disk_old,
    };
    write_xstatus(out, &disk, None, s.keywords);
    true
}

/// Buffers [`patch_for`] reuses from one message to the next.
#[derive(Default)]
struct PatchScratch {
    old: Vec<u8>,
    new: Vec<u8>,
    on_disk: Vec<u8>,
}

/// A same-length in-place patch of message `i`'s metadata block, if its block on disk is
/// exactly what the index says (verified by reading it) and the new one has the same length.
fn patch_for(
    s: &Snapshot<'_>,
    i: usize,
    first: bool,
    scratch: &mut PatchScratch,
) -> io::Result<Option<Source>> {
    let PatchScratch { old, new, on_disk } = scratch;
    new.clear();
    xstatus_into(s, i, first, new);
    if !known_disk_block_into(s, i, first, old) || old.len() != new.len() {
        return Ok(None);
    }
    let (old, new) = (&old[..], &new[..]);
    let e = &s.entries[i];
    let Some(offset) = e
        .body_off
        .checked_sub(old.len() as u64)
        .filter(|&o| o >= e.hdr_off)
    else {
        return Ok(None);
    };
    on_disk.resize(old.len(), 0);
    s.file.read_exact_at(on_disk, offset)?;
    if on_disk[..] != *old {
        return Ok(None);
    }
    // Keep only the bytes that differ (usually a few): a STORE on 100,000 messages holds a
    // patch for each until it is written.
    let (lo, hi) = differing(old, new);
    Ok(Some(Source::Patch {
        index: i,
        first,
        offset: offset + lo as u64,
        old: old[lo..hi].to_vec(),
        new: new[lo..hi].to_vec(),
        safety: patch::safety(old, new, lo, hi, offset),
    }))
}

/// The range `lo..hi` outside which `old` and `new` (of one length) agree; empty if equal.
fn differing(old: &[u8], new: &[u8]) -> (usize, usize) {
    let lo = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let same_tail = old[lo..]
        .iter()
        .rev()
        .zip(new[lo..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    (lo, new.len() - same_tail)
}

fn xstatus_bytes(s: &Snapshot<'_>, index: usize, first: bool) -> Vec<u8> {
    let mut out = Vec::new();
    xstatus_into(s, index, first, &mut out);
    out
}

/// Message `index`'s metadata block as it should be, appended to `out`.
fn xstatus_into(s: &Snapshot<'_>, index: usize, first: bool, out: &mut Vec<u8>) {
    let base = base_info(s);
    let base = if first { Some(&base) } else { None };
    write_xstatus(
        out,
        &meta_of(&s.infos[index], s.claim_recent),
        base,
        s.keywords,
    );
}

/// Decide which bytes change. `host` names this machine in a new pseudo-message.
pub(super) fn plan(s: &Snapshot<'_>, host: &str) -> io::Result<Plan> {
    let kept: Vec<usize> = (0..s.entries.len()).filter(|&i| s.keep[i]).collect();
    let had_any = !s.entries.is_empty() || s.pseudo.is_some();
    let want_pseudo = s.style == Style::Pseudo || (kept.is_empty() && had_any);
    let mut pieces = Vec::new();
    let mut pos = 0u64;
    if want_pseudo {
        let same = s.pseudo.filter(|p| {
            p.from_off == 0
                && p.uid_validity == s.uid_validity
                && p.uid_last == s.uid_last
                && p.keywords == s.keywords
        });
        let piece = match same {
            Some(p) => Piece {
                new_off: 0,
                len: p.next_off,
                write: false,
                source: Source::Copy {
                    old_off: 0,
                    index: None,
                },
            },
            None => {
                let bytes = pseudo_message(&base_info(s), s.now, host);
                Piece {
                    new_off: 0,
                    len: bytes.len() as u64,
                    write: true,
                    source: Source::Bytes(bytes),
                }
            }
        };
        pos = piece.len;
        pieces.push(piece);
    }
    let mut scratch = Vec::new();
    let mut patch_scratch = PatchScratch::default();
    let mut read_current = |off: u64, buf: &mut [u8]| s.file.read_exact_at(buf, off);
    for (n, &i) in kept.iter().enumerate() {
        let e = &s.entries[i];
        let info = &s.infos[i];
        let first = n == 0 && !want_pseudo;
        let unchanged_state = info.flags == e.disk_flags && info.keywords == e.disk_keywords;
        let metadata_current = if first {
            i == 0 && s.first_meta == Some(xstatus_bytes(s, i, true).as_slice())
        } else {
            e.canonical && (e.disk_old || !s.claim_recent)
        };
        let piece = if unchanged_state && metadata_current {
            Piece {
                new_off: pos,
                len: e.next_off - e.from_off,
                write: pos != e.from_off,
                source: Source::Copy {
                    old_off: e.from_off,
                    index: Some(i),
                },
            }
        } else if let Some(patch) = (pos == e.from_off)
            .then(|| patch_for(s, i, first, &mut patch_scratch))
            .transpose()?
            .flatten()
        {
            Piece {
                new_off: pos,
                len: e.next_off - e.from_off,
                write: true,
                source: patch,
            }
        } else {
            scratch.clear();
            let ended = filtered_header(&mut read_current, e, &mut scratch)?;
            let clean = ended && text_ends_line(s.file, e)?;
            let len = (e.hdr_off - e.from_off)
                + scratch.len() as u64
                + xstatus_bytes(s, i, first).len() as u64
                + (e.text_end - e.body_off)
                + 1;
            Piece {
                new_off: pos,
                len,
                write: true,
                source: Source::Message {
                    index: i,
                    first,
                    header: scratch.len() as u64,
                    clean,
                },
            }
        };
        pos += piece.len;
        pieces.push(piece);
    }
    Ok(Plan {
        pieces,
        new_len: pos,
        old_len: s.len,
    })
}

impl Plan {
    /// What a compaction (see [`compact`]) would write: bytes made anew at the start (a new
    /// pseudo-message, the new first message with `X-IMAPbase`, a patch) and then moves of
    /// unchanged bytes towards the start, the file cut short behind them. `None` for any other
    /// rewrite.
    fn compaction(&self, s: &Snapshot<'_>) -> io::Result<Option<Compaction>> {
        if self.cut().is_none() {
            return Ok(None);
        }
        let mut c = Compaction::default();
        let mut filled = 0u64;
        for piece in self.pieces.iter().filter(|p| p.write) {
            if let Source::Copy { old_off, .. } = piece.source {
                if old_off <= piece.new_off {
                    return Ok(None);
                }
                c.add_move(old_off, piece.new_off, piece.len);
                continue;
            }
            if !c.moves.is_empty() || filled + piece.len > MAX_FILL {
                return Ok(None);
            }
            let fill = render(s, piece)?;
            filled += fill.1.len() as u64;
            c.fills.push(fill);
        }
        Ok(Some(c))
    }

    /// Where the file is cut behind [`CUT_MARK`] after the rewrite, when it shrinks enough.
    fn cut(&self) -> Option<u64> {
        (self.old_len >= self.new_len.saturating_add(MIN_CUT)).then_some(self.new_len)
    }

    /// Old bytes from here on are never overwritten: the journal need not save them, and
    /// pieces moved from there are read from the mailbox itself.
    fn untouched_from(&self) -> u64 {
        self.cut()
            .map_or(self.old_len, |cut| cut + CUT_MARK.len() as u64)
    }
}

/// Maximal runs of pieces to write, and the old regions they overwrite.
fn runs(plan: &Plan) -> Vec<(std::ops::Range<usize>, Region)> {
    let untouched_from = plan.untouched_from();
    let mut out = all_runs(plan);
    for (_, region) in &mut out {
        let end = (region.offset + region.len).min(untouched_from);
        region.len = end.saturating_sub(region.offset);
    }
    out
}

/// [`runs`], with regions reaching the old end of the file.
fn all_runs(plan: &Plan) -> Vec<(std::ops::Range<usize>, Region)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < plan.pieces.len() {
        if !plan.pieces[i].write {
            i += 1;
            continue;
        }
        let start = i;
        while i < plan.pieces.len() && plan.pieces[i].write {
            i += 1;
        }
        let from = plan.pieces[start].new_off;
        let to = plan.pieces.get(i).map_or(plan.old_len, |p| p.new_off);
        out.push((
            start..i,
            Region {
                offset: from,
                len: to.max(from) - from,
            },
        ));
    }
    let covered_to_end = out.last().is_some_and(|(r, _)| r.end == plan.pieces.len());
    if plan.new_len < plan.old_len && !covered_to_end {
        // Truncation drops old bytes after the last kept message: save them too.
        out.push((
            plan.pieces.len()..plan.pieces.len(),
            Region {
                offset: plan.new_len,
                len: plan.old_len - plan.new_len,
            },
        ));
    }
    out
}

/// The crash-test hooks (`MAILSUITE_CRASH_AT=journal`, `MAILSUITE_CRASH_AFTER_BYTES=N`).
struct CrashHooks {
    after_journal: bool,
    after_bytes: Option<u64>,
}

impl CrashHooks {
    fn from_env() -> CrashHooks {
        CrashHooks {
            after_journal: std::env::var("MAILSUITE_CRASH_AT").is_ok_and(|v| v == "journal"),
            after_bytes: std::env::var("MAILSUITE_CRASH_AFTER_BYTES")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }
}

/// Buffered positional writer into the mailbox.
struct MailboxWriter<'f> {
    file: &'f File,
    pos: u64,
    buf: Vec<u8>,
    written: u64,
    crash_after: Option<u64>,
}

impl MailboxWriter<'_> {
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut data = self.buf.as_slice();
        if let Some(limit) = self.crash_after {
            let allowed = limit.saturating_sub(self.written);
            if (data.len() as u64) >= allowed {
                data = &data[..allowed as usize];
                self.file.write_all_at(data, self.pos)?;
                std::process::abort();
            }
        }
        self.file.write_all_at(data, self.pos)?;
        // The rewrite ends with an fsync of everything: let the disk start on this piece now.
        disk::start_writeback(self.file, self.pos, data.len() as u64);
        self.pos += data.len() as u64;
        self.written += data.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn seek(&mut self, pos: u64) -> io::Result<()> {
        self.flush()?;
        self.pos = pos;
        Ok(())
    }
}

/// The mailbox as it was before the rewrite: from the journal where the rewrite overwrites
/// it, from the file itself behind the last overwritten byte.
struct OldBytes<'a> {
    journal: &'a Journal,
    mailbox: &'a File,
    untouched_from: u64,
}

impl OldBytes<'_> {
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let split = self
            .untouched_from
            .saturating_sub(offset)
            .min(buf.len() as u64) as usize;
        let (saved, untouched) = buf.split_at_mut(split);
        if !saved.is_empty() {
            self.journal.read_old(offset, saved)?;
        }
        if !untouched.is_empty() {
            self.mailbox
                .read_exact_at(untouched, offset + split as u64)?;
        }
        Ok(())
    }
}

fn copy_old(old: &OldBytes<'_>, w: &mut MailboxWriter<'_>, from: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; WRITE_CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        old.read(from + done, &mut buf[..n])?;
        w.put(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

fn write_piece(
    s: &Snapshot<'_>,
    journal: &OldBytes<'_>,
    w: &mut MailboxWriter<'_>,
    piece: &Piece,
) -> io::Result<()> {
    let before = w.pos + w.buf.len() as u64;
    match &piece.source {
        Source::Copy { old_off, .. } => copy_old(journal, w, *old_off, piece.len)?,
        Source::Bytes(bytes) => w.put(bytes)?,
        Source::Patch {
            index, offset, new, ..
        } => {
            // Written whole here, as part of a run of moved messages.
            let e = &s.entries[*index];
            copy_old(journal, w, e.from_off, offset - e.from_off)?;
            w.put(new)?;
            let after = offset + new.len() as u64;
            copy_old(journal, w, after, e.next_off - after)?;
        }
        Source::Message { index, first, .. } => {
            let e = &s.entries[*index];
            copy_old(journal, w, e.from_off, e.hdr_off - e.from_off)?;
            let mut header = Vec::new();
            filtered_header(&mut |off, buf| journal.read(off, buf), e, &mut header)?;
            w.put(&header)?;
            w.put(&xstatus_bytes(s, *index, *first))?;
            copy_old(journal, w, e.body_off, e.text_end - e.body_off)?;
            w.put(b"\n")?;
        }
    }
    let after = w.pos + w.buf.len() as u64;
    if after - before != piece.len {
        return Err(io::Error::other("mailbox changed during rewrite"));
    }
    Ok(())
}

fn grow(file: &File, from: u64, to: u64) -> io::Result<()> {
    if to <= from {
        return Ok(());
    }
    let (Ok(off), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return Err(io::Error::other("mailbox too large"));
    };
    nix::fcntl::posix_fallocate(file.as_raw_fd(), off, len).map_err(io::Error::from)
}

/// As UW after a rewrite: access time now, modification time a second earlier, so that
/// "new mail" checks (mtime > atime: shells, biff, mail readers) do not fire for our own write.
pub(super) fn mark_as_read(file: &File) -> io::Result<()> {
    let now = std::time::SystemTime::now();
    let earlier = now
        .checked_sub(std::time::Duration::from_secs(1))
        .unwrap_or(now);
    file.set_times(
        std::fs::FileTimes::new()
            .set_accessed(now)
            .set_modified(earlier),
    )
}

/// The differing bytes of every patch of `plan`.
pub(super) fn patch_spans(plan: &Plan) -> Vec<Span<'_>> {
    let mut spans = Vec::new();
    for piece in plan.pieces.iter().filter(|p| p.write) {
        if let Source::Patch {
            offset,
            old,
            new,
            safety,
            ..
        } = &piece.source
        {
            let (lo, hi) = differing(old, new);
            if lo < hi {
                spans.push(Span {
                    offset: offset + lo as u64,
                    old: &old[lo..hi],
                    new: &new[lo..hi],
                    safety: *safety,
                });
            }
        }
    }
    spans
}

/// Carry out a plan of same-length metadata patches: only the changed bytes are written,
/// nothing moves, the length stays. Patches that need the journal (see [`patch`]: UIDs and
/// UID-last) go first, journaled and synced as in a full rewrite, so that a kill or a power
/// failure among them is undone by replaying the journal; the rest (all of a STORE) are then
/// written without a journal.
fn execute_patches(path: &Path, file: &File, plan: &Plan) -> io::Result<()> {
    #[cfg(test)]
    super::tests::PATCH_WRITES.with(|n| n.set(n.get() + 1));
    let (journaled, safe): (Vec<Span>, Vec<Span>) = patch_spans(plan)
        .into_iter()
        .partition(|s| s.safety == Safety::Journal);
    let hooks = CrashHooks::from_env();
    if !journaled.is_empty() {
        write_journaled(path, file, plan.old_len, &journaled, &hooks)?;
    }
    let written: u64 = journaled.iter().map(|s| s.new.len() as u64).sum();
    let kill_after = hooks.after_bytes.map(|n| n.saturating_sub(written));
    patch::write_unjournaled(file, &safe, kill_after)?;
    mark_as_read(file)
}

/// Patches that need the journal: their old bytes saved and synced, then the new ones
/// written and synced, then the journal removed.
fn write_journaled(
    path: &Path,
    file: &File,
    old_len: u64,
    spans: &[Span<'_>],
    hooks: &CrashHooks,
) -> io::Result<()> {
    let regions: Vec<Region> = spans
        .iter()
        .map(|span| Region {
            offset: span.offset,
            len: span.old.len() as u64,
        })
        .collect();
    let saved: Vec<&[u8]> = spans.iter().map(|span| span.old).collect();
    let journal = Journal::create_saved(path, file, old_len, &regions, &saved)?;
    if hooks.after_journal {
        std::process::abort();
    }
    let result = (|| {
        let mut written = 0u64;
        for Span { offset, new, .. } in spans {
            let (offset, bytes) = (offset, *new);
            if let Some(limit) = hooks.after_bytes {
                let allowed = limit.saturating_sub(written);
                if bytes.len() as u64 >= allowed {
                    file.write_all_at(&bytes[..allowed as usize], *offset)?;
                    std::process::abort();
                }
            }
            // Same length, same blocks: the patched bytes are all that must be durable before
            // the journal goes. Synced one by one, so that the unsynced patches of earlier
            // STOREs still in the page cache are not written out with them.
            disk::write_durably(file, bytes, *offset)?;
            written += bytes.len() as u64;
        }
        Ok(())
    })();
    match result {
        Ok(()) => journal.finish(),
        Err(e) => {
            journal.restore(file)?;
            Err(e)
        }
    }
}

/// The index of the file as a carried-out plan leaves it: what a parse of it would say.
#[derive(Clone)]
pub(super) struct Written {
    /// The kept messages, in order.
    pub entries: Vec<Entry>,
    pub first_meta: Option<Vec<u8>>,
    pub pseudo: Option<PseudoInfo>,
}

/// Where the messages of `plan` are once it is carried out, without reading the file again.
/// `None` when only a parse can tell (a message whose header or text did not end cleanly, or
/// an unchanged message becoming the first whose metadata block we do not know).
pub(super) fn written_index(s: &Snapshot<'_>, plan: &Plan) -> Option<Written> {
    let mut out = Written {
        entries: Vec::with_capacity(plan.pieces.len()),
        first_meta: None,
        pseudo: None,
    };
    for piece in &plan.pieces {
        let first_message = out.entries.is_empty();
        let (entry, block) = match &piece.source {
            Source::Copy { index: None, .. } => {
                out.pseudo = s.pseudo.cloned();
                continue;
            }
            Source::Bytes(_) => {
                out.pseudo = Some(PseudoInfo {
                    from_off: 0,
                    next_off: piece.len,
                    uid_validity: s.uid_validity,
                    uid_last: s.uid_last,
                    keywords: s.keywords.to_vec(),
                });
                continue;
            }
            Source::Copy {
                index: Some(i),
                old_off,
            } => {
                let e = &s.entries[*i];
                let block = match (first_message, *i) {
                    (false, _) => None,
                    (true, 0) => s.first_meta.map(<[u8]>::to_vec),
                    (true, _) => Some(known_disk_block(s, *i, false)?),
                };
                (moved(e, piece.new_off, *old_off), block)
            }
            Source::Patch { index, first, .. } => {
                let e = &s.entries[*index];
                let entry = rewritten(s, *index, *first, e.clone());
                // The patch keeps only the changed bytes: make the whole block again.
                (
                    entry,
                    first_message.then(|| xstatus_bytes(s, *index, *first)),
                )
            }
            Source::Message {
                index,
                first,
                header,
                clean,
            } => {
                if !clean {
                    return None;
                }
                let e = &s.entries[*index];
                let block = xstatus_bytes(s, *index, *first);
                let hdr_off = piece.new_off + (e.hdr_off - e.from_off);
                let body_off = hdr_off + header + block.len() as u64;
                let placed = Entry {
                    from_off: piece.new_off,
                    hdr_off,
                    body_off,
                    text_end: body_off + (e.text_end - e.body_off),
                    next_off: piece.new_off + piece.len,
                    ..e.clone()
                };
                let entry = rewritten(s, *index, *first, placed);
                (entry, first_message.then_some(block))
            }
        };
        if first_message {
            out.first_meta = block;
        }
        out.entries.push(entry);
    }
    Some(out)
}

/// Entry `e` moved from `old_off` to `new_off`, unchanged otherwise.
fn moved(e: &Entry, new_off: u64, old_off: u64) -> Entry {
    let shift = |off: u64| off - old_off + new_off;
    Entry {
        from_off: new_off,
        hdr_off: shift(e.hdr_off),
        body_off: shift(e.body_off),
        text_end: shift(e.text_end),
        next_off: shift(e.next_off),
        ..e.clone()
    }
}

/// Entry `placed` once message `i`'s state is written into its metadata block.
fn rewritten(s: &Snapshot<'_>, i: usize, first: bool, placed: Entry) -> Entry {
    let meta = meta_of(&s.infos[i], s.claim_recent);
    Entry {
        disk_flags: meta.flags,
        disk_keywords: meta.keywords,
        disk_old: meta.old,
        canonical: !first,
        ..placed
    }
}

/// Carry out `plan` on the locked, writable `file` at `path`.
pub(super) fn execute(path: &Path, file: &File, s: &Snapshot<'_>, plan: &Plan) -> io::Result<()> {
    if plan.patches_only() {
        return execute_patches(path, file, plan);
    }
    let hooks = CrashHooks::from_env();
    let compaction = plan.compaction(s)?;
    if let Some(schedule) = compaction.and_then(|c| Schedule::of(c.fills, &c.moves)) {
        let hooks = compact::Hooks {
            after_journal: hooks.after_journal,
            after_bytes: hooks.after_bytes,
        };
        return compact::execute(path, file, (plan.old_len, plan.new_len), &schedule, &hooks);
    }
    let runs = runs(plan);
    let regions: Vec<Region> = runs.iter().map(|(_, r)| *r).collect();
    let journal = Journal::create(path, file, plan.old_len, plan.new_len, &regions)?;
    if hooks.after_journal {
        std::process::abort();
    }
    let old = OldBytes {
        journal: &journal,
        mailbox: file,
        untouched_from: plan.untouched_from(),
    };
    let result = (|| {
        grow(file, plan.old_len, plan.new_len)?;
        let mut w = MailboxWriter {
            file,
            pos: 0,
            buf: Vec::with_capacity(WRITE_CHUNK),
            written: 0,
            crash_after: hooks.after_bytes,
        };
        for (range, _) in &runs {
            if let Some(first) = plan.pieces.get(range.start) {
                w.seek(first.new_off)?;
            }
            for piece in &plan.pieces[range.clone()] {
                write_piece(s, &old, &mut w, piece)?;
            }
        }
        if let Some(cut) = plan.cut() {
            w.seek(cut)?;
            w.put(CUT_MARK)?;
        }
        w.flush()?;
        if w.crash_after.is_some() {
            // The hook asked for more bytes than this rewrite writes: die at the end instead.
            std::process::abort();
        }
        if plan.cut().is_none() {
            file.set_len(plan.new_len)?;
            mark_as_read(file)?;
        }
        file.sync_all()
    })();
    if let Err(e) = result {
        journal.restore(file)?;
        return Err(e);
    }
    if let Some(cut) = plan.cut() {
        // Committed: from here on a failure leaves the journal for recovery to finish the cut.
        journal.commit_cut(cut)?;
        crash_hook("cut-committed");
        file.set_len(cut)?;
        mark_as_read(file)?;
        file.sync_all()?;
        crash_hook("cut-done");
    }
    journal.finish()
}

/// Abort here when the crash test asks for it (`MAILSUITE_CRASH_AT=<point>`).
fn crash_hook(point: &str) {
    if std::env::var("MAILSUITE_CRASH_AT").is_ok_and(|v| v == point) {
        std::process::abort();
    }
}
