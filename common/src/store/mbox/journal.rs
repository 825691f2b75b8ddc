//! The undo journal that makes in-place mbox rewrites crash-safe.
//!
//! Before a rewrite changes any byte of the mailbox, the original bytes of every region it will
//! overwrite (and the original length) are copied into a journal file and fsynced. The journal
//! lives next to the mailbox as `.<mailbox name>.mbox-journal` when that directory is writable,
//! otherwise in `$HOME` as `.mbox-journal.<dev>.<ino>`. Layout (integers little-endian u64):
//!
//! ```text
//! "MSJRNL1\n" dev ino orig_len new_len nregions (offset len)*nregions data... checksum "MSJEND1\n"
//! "MSJAPP1\n" dev ino orig_len new_len append_sum nregions (offset len)*nregions data... (as above)
//! ```
//!
//! The checksum covers everything before it. A journal that is complete and matches the mailbox
//! (dev/ino) is replayed under the mailbox lock before anything else reads the mailbox: the
//! regions are written back and the length restored, so the mailbox is exactly as before the
//! interrupted rewrite (plus any mail an MTA appended meanwhile, which is kept). An incomplete
//! journal means the rewrite never started; it is removed. A journal with no regions that
//! grows the file guards an APPEND: recovery cuts the appended bytes off whole (keeping only
//! mail delivered behind the length the append was to reach). So does one whose regions all
//! stop short of the old end: the `X-IMAPbase` patch an APPEND makes in the same step (a
//! rewrite that grows the file always saves everything from its first moved byte to the end).
//!
//! An APPEND's journal (`"MSJAPP1\n"`, one more header field: a checksum of the bytes the
//! append writes, its `X-IMAPbase` patch last) is not synced: it is there for a kill, which
//! leaves it in the page cache. Only the mailbox is synced, once, before the client hears OK,
//! and the journal is then removed without syncing the directory. Recovery of such a journal
//! first checks the file: when it holds every byte the append was to write, the append was
//! done and is kept (the journal may have outlived a power failure after the OK); otherwise it
//! is cut off as above. A power failure before the OK that the journal did not survive can
//! leave part of the message at the end of the file, as it can with Dovecot and with the MTAs'
//! own mbox delivery.
//!
//! A rewrite that shortens the file by a lot saves only the bytes it overwrites, not the old
//! tail it cuts off: it writes [`CUT_MARK`] where the file is to end, and once the new bytes
//! are durable it appends a commit record (`"MSJCUT1\n"` new_len) to the journal before it
//! truncates. Recovery of a committed journal finishes the cut if the mark is still there
//! (keeping mail delivered behind the old end since) and otherwise leaves the file alone.
//!
//! The same paths may hold a compaction's journal of moves (`"MSJMOV1\n"`, see
//! [`compact`]): recovery hands it over, and it is finished rather than undone.
//!
//! Owns the journal files only; never decides what a rewrite writes.

use super::compact;
use super::fromline::is_from_line;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MSJRNL2\n";
const APPEND_MAGIC: &[u8; 8] = b"MSJAPP2\n";
/// The same journals with [`Checksum::version1`], as binaries before 2026-11-24 wrote them:
/// still recovered.
const MAGIC_V1: &[u8; 8] = b"MSJRNL1\n";
const APPEND_MAGIC_V1: &[u8; 8] = b"MSJAPP1\n";
const END_MAGIC: &[u8; 8] = b"MSJEND1\n";
const FIXED_HEADER: u64 = 8 + 5 * 8;
const TRAILER: u64 = 16;
const COPY_CHUNK: usize = 1 << 20;
const CUT_MAGIC: &[u8; 8] = b"MSJCUT1\n";
const CUT_RECORD: u64 = 16;

/// Written where a shortened mailbox is to end, over bytes the journal saved: until the file is
/// truncated there, it tells recovery that the cut is still to do. An MTA never writes NULs at
/// the start of a delivery, and a rewrite never writes this.
pub(super) const CUT_MARK: &[u8] = b"\0\0MSJRNL1 cut here\0\0\n";

/// Identity of the mailbox file a journal belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(file: &File) -> io::Result<FileId> {
        let m = file.metadata()?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// A byte range of the mailbox as it was before the rewrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Region {
    pub offset: u64,
    pub len: u64,
}

/// `read(i, offset, buf)` fills `buf` with the current mailbox bytes at `offset`, which lie
/// in region `i`.
type RegionReader<'a> = dyn Fn(usize, u64, &mut [u8]) -> io::Result<()> + 'a;

/// A complete, fsynced journal for one rewrite.
pub(super) struct Journal {
    path: PathBuf,
    file: File,
    /// (region, position of its data in the journal file)
    table: Vec<(Region, u64)>,
    orig_len: u64,
}

/// Where the journal for `mailbox` may live, in order of preference.
fn journal_paths(mailbox: &Path, id: FileId) -> Vec<PathBuf> {
    sidecar_paths(mailbox, id, ".mbox-journal")
}

/// Where a file that belongs to `mailbox` may live, in order of preference: beside it as
/// `.<mailbox name><suffix>`, or, for a directory we cannot write (a setgid-mail spool), in
/// `$HOME` as `<suffix>.<dev>.<ino>`.
pub(super) fn sidecar_paths(mailbox: &Path, id: FileId, suffix: &str) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(name) = mailbox.file_name() {
        let dir = match mailbox.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut beside = std::ffi::OsString::from(".");
        beside.push(name);
        beside.push(suffix);
        paths.push(dir.join(beside));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        paths.push(PathBuf::from(home).join(format!("{suffix}.{}.{}", id.dev, id.ino)));
    }
    paths
}

/// 64-bit checksum over a byte stream, fed in arbitrary pieces. Version 2 journals
/// (`MSJRNL2`, `MSJAPP2`) mix four independent lanes of 8-byte words, so that the CPU runs
/// four multiply chains side by side; version 1 (one lane) is still read in journals left by
/// older binaries, and compaction journals keep it.
pub(super) struct Checksum {
    lanes: [u64; LANES],
    /// Lanes in use: 1 (version 1) or [`LANES`].
    width: usize,
    pending: [u8; 8 * LANES],
    npending: usize,
    total: u64,
}

const LANES: usize = 4;
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(state: u64, word: u64) -> u64 {
    (state ^ word)
        .wrapping_mul(0x0000_0100_0000_01b3)
        .rotate_left(27)
        .wrapping_add(0x5851_f42d_4c95_7f2d)
}

fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(w)
}

impl Checksum {
    /// The checksum of the journals this binary writes (version 2).
    pub fn new() -> Checksum {
        let mut lanes = [SEED; LANES];
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = lane.wrapping_add((i as u64).wrapping_mul(0xa076_1d64_78bd_642f));
        }
        Checksum {
            lanes,
            width: LANES,
            pending: [0; 8 * LANES],
            npending: 0,
            total: 0,
        }
    }

    /// The checksum of version 1 journals and of compaction journals.
    pub fn version1() -> Checksum {
        Checksum {
            width: 1,
            ..Checksum::new()
        }
    }

    /// The checksum of a journal written with `version1` or not.
    fn for_journal(version1: bool) -> Checksum {
        if version1 {
            Checksum::version1()
        } else {
            Checksum::new()
        }
    }

    fn mix_block(&mut self, block: &[u8]) {
        for (lane, w) in self.lanes[..self.width]
            .iter_mut()
            .zip(block.chunks_exact(8))
        {
            *lane = mix(*lane, word(w));
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let block = 8 * self.width;
        if self.npending > 0 {
            let n = (block - self.npending).min(data.len());
            self.pending[self.npending..self.npending + n].copy_from_slice(&data[..n]);
            self.npending += n;
            data = &data[n..];
            if self.npending < block {
                return;
            }
            let pending = self.pending;
            self.mix_block(&pending[..block]);
            self.npending = 0;
        }
        let mut blocks = data.chunks_exact(block);
        if self.width == LANES {
            // Four independent chains: the multiplier is kept busy.
            let [mut a, mut b, mut c, mut d] = self.lanes;
            for w in &mut blocks {
                a = mix(a, word(&w[0..]));
                b = mix(b, word(&w[8..]));
                c = mix(c, word(&w[16..]));
                d = mix(d, word(&w[24..]));
            }
            self.lanes = [a, b, c, d];
        } else {
            for w in &mut blocks {
                self.mix_block(w);
            }
        }
        let rest = blocks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    /// Feed `file`'s bytes from `from` to `to`, read through `buf`.
    pub fn update_from(
        &mut self,
        file: &File,
        from: u64,
        to: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        let mut at = from;
        while at < to {
            let n = (to - at).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)?;
            self.update(&buf[..n]);
            at += n as u64;
        }
        Ok(())
    }

    pub fn finish(mut self) -> u64 {
        let block = 8 * self.width;
        self.pending[self.npending..].fill(0);
        let last = self.pending;
        self.mix_block(&last[..block]);
        let state = self.lanes[1..self.width]
            .iter()
            .fold(self.lanes[0], |state, &lane| mix(state, lane));
        mix(state, self.total)
    }
}

pub(super) fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

fn create_exclusive(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Only a journal we could have written is trusted: a regular file (not a symlink), owned by us,
/// writable by nobody else. Anything else (say, planted in a world-writable spool directory by
/// another user) is ignored and left alone.
fn trustworthy(journal: &File) -> io::Result<bool> {
    let m = journal.metadata()?;
    Ok(m.file_type().is_file()
        && m.uid() == nix::unistd::geteuid().as_raw()
        && m.mode() & 0o022 == 0)
}

/// What one journal is for, as written in its header.
#[derive(Clone, Copy)]
struct Kind {
    orig_len: u64,
    new_len: u64,
    /// An APPEND's journal: checksum of everything the append writes (see the module doc).
    append_sum: Option<u64>,
}

fn header_bytes(id: FileId, kind: Kind, regions: &[Region]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED_HEADER as usize + 8 + 16 * regions.len());
    out.extend_from_slice(if kind.append_sum.is_some() {
        APPEND_MAGIC
    } else {
        MAGIC
    });
    for v in [id.dev, id.ino, kind.orig_len, kind.new_len] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(sum) = kind.append_sum {
        out.extend_from_slice(&sum.to_le_bytes());
    }
    out.extend_from_slice(&(regions.len() as u64).to_le_bytes());
    for r in regions {
        out.extend_from_slice(&r.offset.to_le_bytes());
        out.extend_from_slice(&r.len.to_le_bytes());
    }
    out
}

/// A new, empty journal file for the mailbox `id` at `mailbox_path`, in the first place
/// [`journal_paths`] offers that takes one.
pub(super) fn create_journal_file(mailbox_path: &Path, id: FileId) -> io::Result<(PathBuf, File)> {
    let mut last_err = io::Error::other("no place for a journal (no writable directory)");
    for path in journal_paths(mailbox_path, id) {
        let created = match create_exclusive(&path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left over and already judged stale by recovery: replace it if we may.
                std::fs::remove_file(&path).and_then(|_| create_exclusive(&path))
            }
            other => other,
        };
        match created {
            Ok(file) => return Ok((path, file)),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

impl Journal {
    /// Save `regions` of `mailbox` (currently `orig_len` bytes, about to become `new_len`) and
    /// fsync. On any error nothing is left behind and the mailbox has not been touched.
    pub fn create(
        mailbox_path: &Path,
        mailbox: &File,
        orig_len: u64,
        new_len: u64,
        regions: &[Region],
    ) -> io::Result<Journal> {
        let read = |_: usize, offset: u64, buf: &mut [u8]| mailbox.read_exact_at(buf, offset);
        let kind = Kind {
            orig_len,
            new_len,
            append_sum: None,
        };
        Journal::create_from(mailbox_path, mailbox, kind, regions, &read)
    }

    /// An APPEND's journal (see the module doc): `regions` saved as by [`Journal::create`],
    /// `append_sum` the checksum of the bytes the append will write from `orig_len` to
    /// `new_len` followed by the new bytes of `regions`. Not synced.
    pub fn create_for_append(
        mailbox_path: &Path,
        mailbox: &File,
        (orig_len, new_len): (u64, u64),
        regions: &[Region],
        append_sum: u64,
    ) -> io::Result<Journal> {
        let read = |_: usize, offset: u64, buf: &mut [u8]| mailbox.read_exact_at(buf, offset);
        let kind = Kind {
            orig_len,
            new_len,
            append_sum: Some(append_sum),
        };
        Journal::create_from(mailbox_path, mailbox, kind, regions, &read)
    }

    /// [`Journal::create`] for regions whose current bytes the caller holds already (read
    /// and verified under the same lock): `saved[i]` is the content of `regions[i]`.
    pub fn create_saved(
        mailbox_path: &Path,
        mailbox: &File,
        len: u64,
        regions: &[Region],
        saved: &[&[u8]],
    ) -> io::Result<Journal> {
        if saved.len() != regions.len()
            || regions
                .iter()
                .zip(saved)
                .any(|(r, b)| r.len != b.len() as u64)
        {
            return Err(io::Error::other(
                "journal: saved bytes do not match regions",
            ));
        }
        let read = |i: usize, offset: u64, buf: &mut [u8]| {
            let start = (offset - regions[i].offset) as usize;
            buf.copy_from_slice(&saved[i][start..start + buf.len()]);
            Ok(())
        };
        let kind = Kind {
            orig_len: len,
            new_len: len,
            append_sum: None,
        };
        Journal::create_from(mailbox_path, mailbox, kind, regions, &read)
    }

    /// [`Journal::create`] with the saved bytes coming from `read`.
    fn create_from(
        mailbox_path: &Path,
        mailbox: &File,
        kind: Kind,
        regions: &[Region],
        read: &RegionReader<'_>,
    ) -> io::Result<Journal> {
        let id = FileId::of(mailbox)?;
        let (path, file) = create_journal_file(mailbox_path, id)?;
        match Journal::fill(&path, file, id, kind, regions, read) {
            Ok(j) => Ok(j),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    fn fill(
        path: &Path,
        file: File,
        id: FileId,
        kind: Kind,
        regions: &[Region],
        read: &RegionReader<'_>,
    ) -> io::Result<Journal> {
        let header = header_bytes(id, kind, regions);
        let mut sum = Checksum::new();
        sum.update(&header);
        // Buffers no larger than the data: a flag patch saves a few bytes per message.
        let total = regions.iter().map(|r| r.len).sum::<u64>() + header.len() as u64 + TRAILER;
        let widest = regions.iter().map(|r| r.len).max().unwrap_or(0);
        let mut out = io::BufWriter::with_capacity(COPY_CHUNK.min(total as usize), &file);
        out.write_all(&header)?;
        let mut table = Vec::with_capacity(regions.len());
        let mut pos = header.len() as u64;
        let mut buf = vec![0u8; COPY_CHUNK.min(widest as usize)];
        for (i, r) in regions.iter().enumerate() {
            table.push((*r, pos));
            let mut done = 0u64;
            while done < r.len {
                let n = (r.len - done).min(COPY_CHUNK as u64) as usize;
                read(i, r.offset + done, &mut buf[..n])?;
                sum.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                done += n as u64;
                if n == COPY_CHUNK {
                    // A big journal is synced below: let the disk start on it now.
                    super::disk::start_writeback(out.get_ref(), 0, 0);
                }
            }
            pos += r.len;
        }
        out.write_all(&sum.finish().to_le_bytes())?;
        out.write_all(END_MAGIC)?;
        out.flush()?;
        drop(out);
        if kind.append_sum.is_none() {
            file.sync_all()?;
            sync_dir(path);
        }
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            table,
            orig_len: kind.orig_len,
        })
    }

    /// Read original mailbox bytes at `offset` (which must lie inside one saved region).
    pub fn read_old(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        for (r, pos) in &self.table {
            if offset >= r.offset && end <= r.offset + r.len {
                return self.file.read_exact_at(buf, pos + (offset - r.offset));
            }
        }
        Err(io::Error::other(format!(
            "journal does not hold bytes {offset}..{end}"
        )))
    }

    /// Put the original bytes back (after a failed rewrite) and remove the journal.
    pub fn restore(self, mailbox: &File) -> io::Result<()> {
        restore_regions(&self.file, &self.table, mailbox, self.orig_len, &[])?;
        self.finish()
    }

    /// The new bytes (up to the new length, [`CUT_MARK`] after them) are durable: from now on
    /// recovery finishes the cut at `new_len` instead of undoing the rewrite.
    pub fn commit_cut(&self, new_len: u64) -> io::Result<()> {
        let size = self.file.metadata()?.len();
        let mut record = Vec::with_capacity(CUT_RECORD as usize);
        record.extend_from_slice(CUT_MAGIC);
        record.extend_from_slice(&new_len.to_le_bytes());
        self.file.write_all_at(&record, size)?;
        self.file.sync_data()
    }

    /// The rewrite is durable: the journal is no longer needed.
    pub fn finish(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)?;
        sync_dir(&self.path);
        Ok(())
    }

    /// The append is durable: the journal goes, without a sync (if it outlives a power
    /// failure, recovery finds the append complete and keeps it).
    pub fn discard(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

fn restore_regions(
    journal: &File,
    table: &[(Region, u64)],
    mailbox: &File,
    orig_len: u64,
    appended: &[u8],
) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK];
    for (r, pos) in table {
        let mut done = 0u64;
        while done < r.len {
            let n = (r.len - done).min(COPY_CHUNK as u64) as usize;
            journal.read_exact_at(&mut buf[..n], pos + done)?;
            mailbox.write_all_at(&buf[..n], r.offset + done)?;
            done += n as u64;
        }
    }
    mailbox.set_len(orig_len)?;
    if !appended.is_empty() {
        mailbox.write_all_at(appended, orig_len)?;
    }
    mailbox.sync_all()
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// A parsed, verified journal file.
struct Found {
    orig_len: u64,
    new_len: u64,
    table: Vec<(Region, u64)>,
    /// The rewrite was complete and only the cut at `new_len` may remain to do.
    cut_committed: bool,
    /// An APPEND's journal: the checksum of what it writes.
    append_sum: Option<u64>,
    /// Written by an older binary, with [`Checksum::version1`].
    version1: bool,
}

impl Found {
    /// The journal guards an APPEND: the file grows and no saved region reaches the old end
    /// (at most a patch of the first message's `X-IMAPbase`). A rewrite that grows the file
    /// always saves everything from its first moved message up to the old end.
    fn guards_an_append(&self) -> bool {
        if self.append_sum.is_some() {
            return true;
        }
        self.new_len > self.orig_len
            && self
                .table
                .iter()
                .all(|(r, _)| r.offset.saturating_add(r.len) < self.orig_len)
    }
}

fn verify(journal: &File, id: FileId) -> io::Result<Option<Found>> {
    let size = journal.metadata()?.len();
    if size < FIXED_HEADER + TRAILER {
        return Ok(None);
    }
    let mut fixed = vec![0u8; FIXED_HEADER as usize + 8];
    let fixed_len = (size - TRAILER).min(fixed.len() as u64) as usize;
    journal.read_exact_at(&mut fixed[..fixed_len], 0)?;
    let field = |i: usize| read_u64(&fixed[..fixed_len], 8 + 8 * i).unwrap_or(u64::MAX);
    let (append_sum, header_len, version1) = match &fixed[..8] {
        m if m == MAGIC => (None, FIXED_HEADER, false),
        m if m == APPEND_MAGIC => (Some(field(4)), FIXED_HEADER + 8, false),
        m if m == MAGIC_V1 => (None, FIXED_HEADER, true),
        m if m == APPEND_MAGIC_V1 => (Some(field(4)), FIXED_HEADER + 8, true),
        _ => return Ok(None),
    };
    if field(0) != id.dev || field(1) != id.ino || size < header_len + TRAILER {
        return Ok(None);
    }
    let nregions = field(if append_sum.is_some() { 5 } else { 4 });
    let (orig_len, new_len) = (field(2), field(3));
    if nregions > (size - header_len) / 16 {
        return Ok(None);
    }
    let mut table_bytes = vec![0u8; (nregions * 16) as usize];
    journal.read_exact_at(&mut table_bytes, header_len)?;
    let mut table = Vec::new();
    let mut pos = header_len + nregions * 16;
    for i in 0..nregions as usize {
        let (Some(offset), Some(len)) = (
            read_u64(&table_bytes, 16 * i),
            read_u64(&table_bytes, 16 * i + 8),
        ) else {
            return Ok(None);
        };
        table.push((Region { offset, len }, pos));
        pos = match pos.checked_add(len) {
            Some(p) => p,
            None => return Ok(None),
        };
    }
    let Some(end) = pos.checked_add(TRAILER) else {
        return Ok(None);
    };
    // Bytes behind the trailer that are not a whole commit record are a commit cut short: the
    // file was not truncated yet (that waits for the record to be durable), so undo it.
    let cut_committed = match size.checked_sub(end) {
        None => return Ok(None),
        Some(CUT_RECORD) => {
            let mut record = [0u8; CUT_RECORD as usize];
            journal.read_exact_at(&mut record, end)?;
            &record[..8] == CUT_MAGIC && read_u64(&record, 8) == Some(new_len)
        }
        Some(_) => false,
    };
    let mut sum = Checksum::for_journal(version1);
    sum.update_from(journal, 0, pos, &mut vec![0u8; COPY_CHUNK])?;
    let mut trailer = [0u8; 16];
    journal.read_exact_at(&mut trailer, pos)?;
    if read_u64(&trailer, 0) != Some(sum.finish()) || &trailer[8..] != END_MAGIC {
        return Ok(None);
    }
    Ok(Some(Found {
        orig_len,
        new_len,
        table,
        cut_committed,
        append_sum,
        version1,
    }))
}

/// Mail appended by an MTA after an interrupted rewrite: the bytes from the length the rewrite
/// had left (original or new length, whichever starts a `From ` line) to the current end.
fn appended_after_crash(mailbox: &File, found: &Found) -> io::Result<Vec<u8>> {
    let now = mailbox.metadata()?.len();
    let mut candidates = [found.orig_len, found.new_len];
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    if candidates.contains(&now) {
        return Ok(Vec::new());
    }
    let below: Vec<u64> = candidates.iter().copied().filter(|&c| c < now).collect();
    let Some(&largest) = below.first() else {
        return Ok(Vec::new());
    };
    let starts_from_line = |at: u64| -> bool {
        let mut head = vec![0u8; 1024.min((now - at) as usize)];
        if mailbox.read_exact_at(&mut head, at).is_err() {
            return false;
        }
        match memchr::memchr(b'\n', &head) {
            Some(i) => is_from_line(&head[..=i]),
            None => false,
        }
    };
    let start = below
        .iter()
        .copied()
        .find(|&c| starts_from_line(c))
        .unwrap_or(largest);
    let mut tail = vec![0u8; (now - start) as usize];
    mailbox.read_exact_at(&mut tail, start)?;
    Ok(tail)
}

/// After an interrupted append (a journal without regions that grows the file): the appended
/// bytes are dropped whole, and only what starts with a `From ` line at the length the append
/// was to reach (mail delivered after the crash) is kept. Mail delivered while our partial bytes
/// were the end of the file cannot be told apart from them; MTAs honouring our dotlock never
/// do that.
fn appended_after_append(mailbox: &File, found: &Found) -> io::Result<Vec<u8>> {
    let now = mailbox.metadata()?.len();
    if now <= found.new_len {
        return Ok(Vec::new());
    }
    let mut head = vec![0u8; 1024.min((now - found.new_len) as usize)];
    mailbox.read_exact_at(&mut head, found.new_len)?;
    let starts_from_line = memchr::memchr(b'\n', &head).is_some_and(|i| is_from_line(&head[..=i]));
    if !starts_from_line {
        return Ok(Vec::new());
    }
    let mut tail = vec![0u8; (now - found.new_len) as usize];
    mailbox.read_exact_at(&mut tail, found.new_len)?;
    Ok(tail)
}

/// Whether the APPEND `found` guards was carried out whole: the file holds every byte it was
/// to write (its checksum, then the new bytes of its regions, match).
fn append_complete(mailbox: &File, found: &Found) -> io::Result<bool> {
    let Some(expected) = found.append_sum else {
        return Ok(false);
    };
    if mailbox.metadata()?.len() < found.new_len {
        return Ok(false);
    }
    let mut sum = Checksum::for_journal(found.version1);
    let mut buf = vec![0u8; COPY_CHUNK];
    sum.update_from(mailbox, found.orig_len, found.new_len, &mut buf)?;
    for (r, _) in &found.table {
        sum.update_from(mailbox, r.offset, r.offset + r.len, &mut buf)?;
    }
    Ok(sum.finish() == expected)
}

/// A committed shortening rewrite: the new bytes are all in place. When [`CUT_MARK`] still
/// stands at the new length, the truncation never happened: cut there, keeping any mail an MTA
/// delivered behind the old end since. Otherwise the file was cut already, and whatever follows
/// the new length was delivered afterwards.
pub(super) fn finish_cut(
    mailbox: &File,
    writable: &File,
    orig_len: u64,
    new_len: u64,
) -> io::Result<()> {
    let now = mailbox.metadata()?.len();
    let mark_len = CUT_MARK.len() as u64;
    if now < new_len.saturating_add(mark_len) {
        return Ok(());
    }
    let mut mark = vec![0u8; CUT_MARK.len()];
    mailbox.read_exact_at(&mut mark, new_len)?;
    if mark != CUT_MARK {
        return Ok(());
    }
    let delivered_from = orig_len.max(new_len + mark_len);
    let mut delivered = vec![0u8; now.saturating_sub(delivered_from) as usize];
    mailbox.read_exact_at(&mut delivered, delivered_from)?;
    writable.set_len(new_len)?;
    if !delivered.is_empty() {
        writable.write_all_at(&delivered, new_len)?;
    }
    writable.sync_all()
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether an incomplete journal at `path` (the rewrite never started) or one for an older
/// file of the same name may go: ours by name, or next to the mailbox.
fn stale(path: &Path, mailbox_path: &Path, id: FileId) -> bool {
    let is_ours_by_name = path.file_name().is_some_and(|n| {
        n.to_string_lossy()
            .ends_with(&format!(".{}.{}", id.dev, id.ino))
    });
    is_ours_by_name || path.parent() == mailbox_path.parent()
}

/// Whether `journal` is a compaction's move journal (see [`compact`]).
fn is_move_journal(journal: &File) -> io::Result<bool> {
    let mut magic = [0u8; 8];
    match journal.read_exact_at(&mut magic, 0) {
        Ok(()) => Ok(&magic == compact::MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// True when a journal file (complete or not) exists for the mailbox open as `mailbox`.
pub(super) fn pending(mailbox_path: &Path, mailbox: &File) -> io::Result<bool> {
    let id = FileId::of(mailbox)?;
    Ok(journal_paths(mailbox_path, id)
        .iter()
        .any(|p| std::fs::symlink_metadata(p).is_ok()))
}

/// Replay or discard any journal left for `mailbox_path` (whose open handle is `mailbox`); call
/// with the mailbox lock held. Returns true when a rewrite was rolled back.
pub(super) fn recover(mailbox_path: &Path, mailbox: &File) -> io::Result<bool> {
    let id = FileId::of(mailbox)?;
    let mut recovered = false;
    for path in journal_paths(mailbox_path, id) {
        let journal = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => continue,
            Err(e) => return Err(e),
        };
        if !trustworthy(&journal)? {
            continue;
        }
        if is_move_journal(&journal)? {
            if compact::recover(&path, &journal, mailbox_path, mailbox, id)? {
                recovered = true;
            } else if stale(&path, mailbox_path, id) {
                remove_if_present(&path)?;
            }
            continue;
        }
        match verify(&journal, id)? {
            None => {
                if stale(&path, mailbox_path, id) {
                    remove_if_present(&path)?;
                }
            }
            Some(found) if found.cut_committed => {
                let writable = OpenOptions::new().write(true).open(mailbox_path)?;
                finish_cut(mailbox, &writable, found.orig_len, found.new_len)?;
                remove_if_present(&path)?;
                sync_dir(&path);
            }
            Some(found) if append_complete(mailbox, &found)? => {
                remove_if_present(&path)?;
            }
            Some(found) => {
                let writable = OpenOptions::new().write(true).open(mailbox_path)?;
                let appended = if found.guards_an_append() {
                    appended_after_append(mailbox, &found)?
                } else {
                    appended_after_crash(mailbox, &found)?
                };
                restore_regions(&journal, &found.table, &writable, found.orig_len, &appended)?;
                remove_if_present(&path)?;
                sync_dir(&path);
                recovered = true;
            }
        }
    }
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mbox::tests::TempDir;

    fn journal_file(dir: &Path) -> PathBuf {
        dir.join(".box.mbox-journal")
    }

    /// `<dir>/box` holding `bytes`, opened for reading and writing.
    fn mailbox_file(dir: &TempDir, bytes: &[u8]) -> (PathBuf, File) {
        let path = dir.path().join("box");
        std::fs::write(&path, bytes).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (path, f)
    }

    #[test]
    fn complete_journal_restores_bytes_and_length() {
        let dir = TempDir::new("journal-restore");
        let (path, f) = mailbox_file(&dir, b"0123456789abcdef");
        let regions = [Region { offset: 2, len: 3 }, Region { offset: 10, len: 6 }];
        let j = Journal::create(&path, &f, 16, 20, &regions).unwrap();
        let mut old = [0u8; 2];
        j.read_old(11, &mut old).unwrap();
        assert_eq!(&old, b"bc");
        assert!(j.read_old(4, &mut [0u8; 3]).is_err());
        f.write_all_at(b"XXXXXXXXXXXXXXXXXXXX", 0).unwrap();
        drop(j); // as if killed: the journal stays
        assert!(recover(&path, &f).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"XX234XXXXXabcdef");
        assert!(!journal_file(dir.path()).exists());
    }

    /// A mailbox of 64 bytes being shortened to 8 ("new-text"), [`CUT_MARK`] written behind.
    fn half_done_cut(dir: &Path) -> (PathBuf, File, Journal) {
        let path = dir.join("box");
        let original: Vec<u8> = (0..64u8).map(|i| b'a' + i % 26).collect();
        std::fs::write(&path, &original).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let saved = Region {
            offset: 0,
            len: 8 + CUT_MARK.len() as u64,
        };
        let j = Journal::create(&path, &f, 64, 8, &[saved]).unwrap();
        f.write_all_at(b"new-text", 0).unwrap();
        f.write_all_at(CUT_MARK, 8).unwrap();
        (path, f, j)
    }

    #[test]
    fn committed_cut_is_finished_and_keeps_later_mail() {
        let dir = TempDir::new("journal-cut");
        let (path, f, j) = half_done_cut(dir.path());
        j.commit_cut(8).unwrap();
        drop(j);
        f.write_all_at(b"From late\n", 64).unwrap();
        assert!(!recover(&path, &f).unwrap(), "finished, not rolled back");
        assert_eq!(std::fs::read(&path).unwrap(), b"new-textFrom late\n");
        assert!(!journal_file(dir.path()).exists());
        // Once cut, a committed journal found again changes nothing.
        let (path, f, j) = half_done_cut(dir.path());
        j.commit_cut(8).unwrap();
        drop(j);
        f.set_len(8).unwrap();
        f.write_all_at(b"From later\n", 8).unwrap();
        recover(&path, &f).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new-textFrom later\n");
    }

    #[test]
    fn cut_with_a_torn_commit_record_is_undone() {
        let dir = TempDir::new("journal-cut-torn");
        let (path, f, j) = half_done_cut(dir.path());
        let original: Vec<u8> = (0..64u8).map(|i| b'a' + i % 26).collect();
        drop(j);
        let jp = journal_file(dir.path());
        let mut journal = OpenOptions::new().append(true).open(&jp).unwrap();
        journal.write_all(&CUT_MAGIC[..5]).unwrap();
        assert!(recover(&path, &f).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), original);
        assert!(!jp.exists());
    }

    #[test]
    fn truncated_journal_is_discarded_and_mailbox_untouched() {
        let dir = TempDir::new("journal-truncated");
        let (path, f) = mailbox_file(&dir, b"From a Mon Jan  1 00:00:00 2024\n\nx\n");
        let j = Journal::create(&path, &f, 35, 35, &[Region { offset: 0, len: 35 }]).unwrap();
        drop(j);
        let jp = journal_file(dir.path());
        let len = std::fs::metadata(&jp).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&jp)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        f.write_all_at(b"Y", 34).unwrap();
        assert!(!recover(&path, &f).unwrap());
        assert!(!jp.exists());
        assert_eq!(std::fs::read(&path).unwrap().last(), Some(&b'Y'));
    }

    #[test]
    fn mail_appended_after_a_crash_is_kept() {
        let dir = TempDir::new("journal-appended");
        let original = b"From a Mon Jan  1 00:00:00 2024\nS: 1\n\nbody one\n\n".to_vec();
        let (path, f) = mailbox_file(&dir, &original);
        let n = original.len() as u64;
        let j = Journal::create(&path, &f, n, n - 5, &[Region { offset: 0, len: n }]).unwrap();
        drop(j);
        // The rewrite got as far as truncating, then died; an MTA appended a message.
        f.write_all_at(b"garbage", 0).unwrap();
        f.set_len(n - 5).unwrap();
        let delivered = b"From b Tue Jan  2 00:00:00 2024\n\nnew\n\n";
        f.write_all_at(delivered, n - 5).unwrap();
        assert!(recover(&path, &f).unwrap());
        let mut expected = original.clone();
        expected.extend_from_slice(delivered);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn append_with_a_base_patch_is_cut_off_whole() {
        let dir = TempDir::new("journal-append-patch");
        let original = b"From a Mon Jan  1 00:00:00 2024\nX-IMAPbase: 1 1\n\nbody\n\n".to_vec();
        let (path, f) = mailbox_file(&dir, &original);
        let n = original.len() as u64;
        let appended = b"From b Tue Jan  2 00:00:00 2024\n\nnew\n\n";
        let patch = Region { offset: 46, len: 1 };
        let j = Journal::create(&path, &f, n, n + appended.len() as u64, &[patch]).unwrap();
        drop(j);
        // Killed after the UID-last patch and half of the appended message: recovery must
        // take the half message for ours (not for a delivery) and drop it with the patch.
        f.write_all_at(b"2", 46).unwrap();
        f.write_all_at(&appended[..36], n).unwrap();
        assert!(recover(&path, &f).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), original);
    }

    #[test]
    fn journals_writable_by_others_are_ignored() {
        let dir = TempDir::new("journal-foreign");
        let (path, f) = mailbox_file(&dir, b"0123456789");
        drop(Journal::create(&path, &f, 10, 10, &[Region { offset: 0, len: 10 }]).unwrap());
        f.write_all_at(b"XX", 0).unwrap();
        let jp = journal_file(dir.path());
        std::fs::set_permissions(&jp, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
        assert!(!recover(&path, &f).unwrap());
        assert!(jp.exists(), "not ours to delete");
        assert_eq!(std::fs::read(&path).unwrap(), b"XX23456789");
        // A symlink in its place is not followed either.
        std::fs::remove_file(&jp).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &jp).unwrap();
        assert!(!recover(&path, &f).unwrap());
    }

    /// Rewrite the journal in `dir` as a binary before `MSJRNL2` would have written it:
    /// `magic` and a checksum of `version`.
    fn as_version1(dir: &Path, magic: &[u8; 8], version1: bool) {
        let jp = journal_file(dir);
        let bytes = std::fs::read(&jp).unwrap();
        let mut body = bytes[..bytes.len() - TRAILER as usize].to_vec();
        body[..8].copy_from_slice(magic);
        let mut sum = Checksum::for_journal(version1);
        sum.update(&body);
        body.extend_from_slice(&sum.finish().to_le_bytes());
        body.extend_from_slice(END_MAGIC);
        std::fs::write(&jp, body).unwrap();
    }

    #[test]
    fn journals_of_older_binaries_are_still_recovered() {
        for (version1, trusted) in [(true, true), (false, false)] {
            let dir = TempDir::new("journal-v1");
            let (path, f) = mailbox_file(&dir, b"0123456789abcdef");
            let j = Journal::create(&path, &f, 16, 16, &[Region { offset: 2, len: 3 }]).unwrap();
            f.write_all_at(b"XXXXXXXXXXXXXXXX", 0).unwrap();
            drop(j);
            // A version 1 journal must carry a version 1 checksum to be believed.
            as_version1(dir.path(), MAGIC_V1, version1);
            assert_eq!(recover(&path, &f).unwrap(), trusted);
            let expected: &[u8] = if trusted {
                b"XX234XXXXXXXXXXX"
            } else {
                b"XXXXXXXXXXXXXXXX"
            };
            assert_eq!(std::fs::read(&path).unwrap(), expected);
            assert!(!journal_file(dir.path()).exists());
        }
    }

    #[test]
    fn checksum_is_independent_of_chunking() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        for version1 in [false, true] {
            let whole = |bytes: &[u8]| {
                let mut sum = Checksum::for_journal(version1);
                sum.update(bytes);
                sum.finish()
            };
            for size in [1, 3, 7, 8, 31, 33, 64] {
                let mut pieces = Checksum::for_journal(version1);
                for piece in data.chunks(size) {
                    pieces.update(piece);
                }
                assert_eq!(pieces.finish(), whole(&data), "pieces of {size}");
            }
            assert_ne!(whole(&data[..999]), whole(&data));
            let mut swapped = data.clone();
            swapped.swap(0, 8);
            assert_ne!(whole(&swapped), whole(&data));
        }
    }

    #[test]
    fn version1_checksum_is_what_older_binaries_wrote() {
        // Values of the single-lane checksum before version 2 existed.
        for (len, pinned) in [
            (0u32, 0xc765_341a_dce5_4a44u64),
            (5, 0x84d8_3897_d178_4b4a),
            (8, 0x8927_de41_c1f8_917f),
            (1000, 0xd6d4_b6c3_7e28_6d17),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut sum = Checksum::version1();
            sum.update(&data);
            assert_eq!(sum.finish(), pinned, "{len} bytes");
        }
    }
}
