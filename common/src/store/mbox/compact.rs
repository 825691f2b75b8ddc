//! Compaction: a rewrite that only moves messages towards the start of the file and shortens
//! it (an EXPUNGE whose survivors' flags are on disk already), made crash-safe by a redo
//! journal instead of an undo copy.
//!
//! The undo journal ([`journal`](super::journal)) saves every byte a rewrite overwrites, so
//! expunging messages near the start of a mailbox writes the rest of it twice, once into the
//! journal. A compaction records only the moves (from, to, length) and carries them out in
//! *steps*: no move overwrites the source of a move of its own step or of a later one, and each
//! step is synced and recorded done before the next one starts. After a kill or a power failure,
//! recovery redoes every step not recorded done, from sources that are still intact, then
//! finishes the cut as an undo-journalled rewrite does. It never rolls back.
//!
//! Moving left by `d` bytes, a step can only take in bytes up to where its own sources begin,
//! so the first steps are small (the shift is one message) and the later ones double. The
//! first steps' bytes, up to 2 MiB, are copied into the journal itself ("literal"): recovery
//! takes them from there, so they need no step of their own. A plan that would still need more
//! than [`MAX_STEPS`] steps (a shift small against what it moves, as when only one message near
//! the start goes) is not a compaction; the undo journal does it.
//!
//! Journal layout (integers little-endian u64; `src` is `u64::MAX` for a literal op, whose bytes
//! follow the op table in op order):
//!
//! ```text
//! "MSJMOV1\n" dev ino old_len new_len nsteps nops (step dst len src)*nops literal... checksum "MSJEND1\n"
//! then nsteps slots of 16 zero bytes, each becoming "MSJDON1\n" step, then one zero slot that
//! becomes "MSJCUT1\n" new_len once the CUT_MARK stands at new_len
//! ```
//!
//! The slots are written (as zeros) and synced with the journal, so recording a step done never
//! needs disk space. Owns the move journal and its recovery; never decides what a rewrite
//! removes, and never formats anything for a client.

use super::disk;
use super::journal::{self, Checksum, FileId, CUT_MARK};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(super) const MAGIC: &[u8; 8] = b"MSJMOV1\n";
const END_MAGIC: &[u8; 8] = b"MSJEND1\n";
const DONE_MAGIC: &[u8; 8] = b"MSJDON1\n";
const CUT_MAGIC: &[u8; 8] = b"MSJCUT1\n";
const FIXED_HEADER: usize = 8 + 6 * 8;
const OP_LEN: usize = 32;
const SLOT: u64 = 16;
const LITERAL: u64 = u64::MAX;
const COPY_CHUNK: usize = 1 << 20;

/// More steps than this and the undo journal is cheaper (each step costs two small syncs).
pub(super) const MAX_STEPS: usize = 24;

/// Steps before literals join them up: beyond this, give up at once (the op list stays small).
const MAX_RAW_STEPS: u64 = 4096;

/// Bytes of the first steps that may go into the journal. A step costs two syncs, about what
/// writing a MiB or two costs here; the first steps are far smaller. (Tests use a few hundred
/// bytes, so that their small mailboxes take steps.)
#[cfg(not(test))]
const LITERAL_BUDGET: u64 = 2 << 20;
#[cfg(test)]
const LITERAL_BUDGET: u64 = 300;

/// `len` bytes at `src` in the old file go to `dst < src`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Move {
    pub src: u64,
    pub dst: u64,
    pub len: u64,
}

/// One op of the schedule: a move, or (`literal`) one whose bytes the journal holds: the first
/// steps' moves, and fills (bytes the rewrite makes up, such as a new first message's header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Op {
    step: u64,
    dst: u64,
    len: u64,
    src: u64,
    literal: bool,
    /// Index into [`Schedule::fills`].
    fill: Option<usize>,
}

/// The writes of a compaction, in steps.
#[derive(Debug)]
pub(super) struct Schedule {
    ops: Vec<Op>,
    steps: u64,
    fills: Vec<Vec<u8>>,
}

impl Schedule {
    /// Steps for `fills` (bytes to write at an offset, all before the first move's source) and
    /// `moves` (ascending, each `dst < src`, neither sources nor destinations overlapping one
    /// another), or `None` when they would be more than [`MAX_STEPS`].
    pub fn of(fills: Vec<(u64, Vec<u8>)>, moves: &[Move]) -> Option<Schedule> {
        let first_src = moves.first().map_or(u64::MAX, |m| m.src);
        if fills
            .iter()
            .any(|(dst, bytes)| dst + bytes.len() as u64 > first_src)
        {
            return None;
        }
        let chunks = steps_by_reference(moves)?;
        // The longest run of whole first steps that fits the budget goes into the journal and
        // joins the first step left.
        let mut literal_steps = 0;
        let mut spent = 0u64;
        let last_step = chunks.last().map_or(0, |op| op.step);
        for step in 0..=last_step {
            let size: u64 = chunks
                .iter()
                .filter(|op| op.step == step)
                .map(|op| op.len)
                .sum();
            if spent + size > LITERAL_BUDGET {
                break;
            }
            spent += size;
            literal_steps = step + 1;
        }
        let fill_ops = fills.iter().enumerate().map(|(i, (dst, bytes))| Op {
            step: 0,
            dst: *dst,
            len: bytes.len() as u64,
            src: LITERAL,
            literal: true,
            fill: Some(i),
        });
        let move_ops = chunks.into_iter().map(|op| Op {
            step: op.step.saturating_sub(literal_steps.min(last_step)),
            literal: op.step < literal_steps,
            ..op
        });
        let ops: Vec<Op> = fill_ops.chain(move_ops).collect();
        let steps = ops.last().map_or(0, |op| op.step + 1);
        let fills = fills.into_iter().map(|(_, bytes)| bytes).collect();
        (steps as usize <= MAX_STEPS).then_some(Schedule { ops, steps, fills })
    }

    fn literal_len(&self) -> u64 {
        self.ops.iter().filter(|o| o.literal).map(|o| o.len).sum()
    }

    fn in_step(&self, step: u64) -> impl Iterator<Item = &Op> {
        self.ops.iter().filter(move |o| o.step == step)
    }
}

/// Split `moves` into steps, every byte taken from the mailbox itself: a chunk joins the
/// current step when its destination ends before the step's first source. A move longer than
/// its shift goes in pieces of the shift's length, each a step of its own.
fn steps_by_reference(moves: &[Move]) -> Option<Vec<Op>> {
    let mut ops = Vec::new();
    let mut step: Option<(u64, u64)> = None; // (number, first source)
    for m in moves {
        let shift = m.src.checked_sub(m.dst).filter(|&d| d > 0)?;
        let mut done = 0;
        while done < m.len {
            let (src, dst) = (m.src + done, m.dst + done);
            let fits = step.is_some_and(|(_, first_src)| dst + (m.len - done) <= first_src);
            let len = if fits {
                m.len - done
            } else {
                let number = step.map_or(0, |(n, _)| n + 1);
                if number >= MAX_RAW_STEPS {
                    return None; // hopeless even with literals
                }
                step = Some((number, src));
                shift.min(m.len - done)
            };
            ops.push(Op {
                step: step.map_or(0, |(n, _)| n),
                dst,
                len,
                src,
                literal: false,
                fill: None,
            });
            done += len;
        }
    }
    Some(ops)
}

/// A created move journal.
struct MoveJournal {
    path: PathBuf,
    file: File,
    /// Where the slots begin.
    slots: u64,
    steps: u64,
}

impl MoveJournal {
    /// Write and sync the journal of `schedule` for `mailbox`; nothing is left on error.
    fn create(
        mailbox_path: &Path,
        mailbox: &File,
        (old_len, new_len): (u64, u64),
        schedule: &Schedule,
    ) -> io::Result<MoveJournal> {
        let id = FileId::of(mailbox)?;
        let (path, file) = journal::create_journal_file(mailbox_path, id)?;
        let written = write_contents(&file, mailbox, id, (old_len, new_len), schedule);
        match written {
            Ok(slots) => {
                journal::sync_dir(&path);
                Ok(MoveJournal {
                    path,
                    file,
                    slots,
                    steps: schedule.steps,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    fn step_done(&self, step: u64) -> io::Result<()> {
        write_slot(&self.file, self.slots + SLOT * step, DONE_MAGIC, step)
    }

    fn commit_cut(&self, new_len: u64) -> io::Result<()> {
        write_slot(
            &self.file,
            self.slots + SLOT * self.steps,
            CUT_MAGIC,
            new_len,
        )
    }

    fn finish(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)?;
        journal::sync_dir(&self.path);
        Ok(())
    }
}

fn header(id: FileId, (old_len, new_len): (u64, u64), schedule: &Schedule) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED_HEADER + OP_LEN * schedule.ops.len());
    out.extend_from_slice(MAGIC);
    let fixed = [id.dev, id.ino, old_len, new_len, schedule.steps];
    for v in fixed.into_iter().chain([schedule.ops.len() as u64]) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for op in &schedule.ops {
        let src = if op.literal { LITERAL } else { op.src };
        for v in [op.step, op.dst, op.len, src] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// The journal's contents, synced; returns where its slots begin.
fn write_contents(
    file: &File,
    mailbox: &File,
    id: FileId,
    lens: (u64, u64),
    schedule: &Schedule,
) -> io::Result<u64> {
    let header = header(id, lens, schedule);
    let mut sum = Checksum::version1();
    sum.update(&header);
    let mut out = io::BufWriter::with_capacity(COPY_CHUNK, file);
    out.write_all(&header)?;
    let mut buf = vec![0u8; COPY_CHUNK.min(schedule.literal_len() as usize)];
    for op in schedule.ops.iter().filter(|o| o.literal) {
        if let Some(i) = op.fill {
            sum.update(&schedule.fills[i]);
            out.write_all(&schedule.fills[i])?;
            continue;
        }
        let mut done = 0;
        while done < op.len {
            let n = (op.len - done).min(buf.len() as u64) as usize;
            mailbox.read_exact_at(&mut buf[..n], op.src + done)?;
            sum.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            done += n as u64;
        }
    }
    out.write_all(&sum.finish().to_le_bytes())?;
    out.write_all(END_MAGIC)?;
    let slots = header.len() as u64 + schedule.literal_len() + 16;
    out.write_all(&vec![0u8; (SLOT * (schedule.steps + 1)) as usize])?;
    out.flush()?;
    drop(out);
    file.sync_all()?;
    Ok(slots)
}

/// Where each literal op's bytes are in the journal.
fn literal_positions(ops: &[Op]) -> Vec<Option<u64>> {
    let mut pos = (FIXED_HEADER + OP_LEN * ops.len()) as u64;
    ops.iter()
        .map(|op| {
            op.literal.then(|| {
                let at = pos;
                pos += op.len;
                at
            })
        })
        .collect()
}

/// Crash-test hooks: die after this many bytes written into the mailbox.
pub(super) struct Hooks {
    pub after_journal: bool,
    pub after_bytes: Option<u64>,
}

/// Carry out `schedule` on the locked, writable `file` at `path` (currently `old_len` bytes,
/// `new_len` when done). On an error after the journal is written, the journal stays: the
/// next lock of the mailbox finishes the compaction.
pub(super) fn execute(
    path: &Path,
    file: &File,
    (old_len, new_len): (u64, u64),
    schedule: &Schedule,
    hooks: &Hooks,
) -> io::Result<()> {
    #[cfg(test)]
    super::tests::COMPACTIONS.with(|n| n.set(n.get() + 1));
    let journal = MoveJournal::create(path, file, (old_len, new_len), schedule)?;
    if hooks.after_journal {
        std::process::abort();
    }
    let mut copier = Copier::new(file, hooks.after_bytes);
    for step in 0..schedule.steps {
        for op in schedule.in_step(step) {
            match op.fill {
                Some(i) => copier.fill(&schedule.fills[i], op.dst)?,
                None => copier.copy(op.src, op.dst, op.len)?,
            }
        }
        file.sync_data()?;
        // The last step too: the cut mark about to be written may lie on one of its sources.
        journal.step_done(step)?;
        crash_hook(if step == 0 {
            "first-step-done"
        } else {
            "step-done"
        });
    }
    if copier.crash_after.is_some() {
        std::process::abort(); // asked for more bytes than the steps write: die at the end
    }
    disk::write_durably(file, CUT_MARK, new_len)?;
    journal.commit_cut(new_len)?;
    crash_hook("cut-committed");
    file.set_len(new_len)?;
    super::rewrite::mark_as_read(file)?;
    file.sync_all()?;
    crash_hook("cut-done");
    journal.finish()
}

/// Copies within the mailbox through one buffer, starting writeback as it goes.
struct Copier<'f> {
    file: &'f File,
    buf: Vec<u8>,
    written: u64,
    crash_after: Option<u64>,
}

impl<'f> Copier<'f> {
    fn new(file: &'f File, crash_after: Option<u64>) -> Copier<'f> {
        Copier {
            file,
            buf: Vec::new(),
            written: 0,
            crash_after,
        }
    }

    fn copy(&mut self, src: u64, dst: u64, len: u64) -> io::Result<()> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(COPY_CHUNK as u64) as usize;
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, src + done)?;
            self.write(dst + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn fill(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(bytes);
        self.write(at)
    }

    fn write(&mut self, at: u64) -> io::Result<()> {
        let mut data = &self.buf[..];
        if let Some(limit) = self.crash_after {
            let allowed = limit.saturating_sub(self.written);
            if data.len() as u64 >= allowed {
                data = &data[..allowed as usize];
                self.file.write_all_at(data, at)?;
                std::process::abort();
            }
        }
        self.file.write_all_at(data, at)?;
        disk::start_writeback(self.file, at, data.len() as u64);
        self.written += data.len() as u64;
        Ok(())
    }
}

fn crash_hook(point: &str) {
    if std::env::var("MAILSUITE_CRASH_AT").is_ok_and(|v| v == point) {
        std::process::abort();
    }
}

// ---- recovery ---------------------------------------------------------------------------

/// A parsed, checksummed move journal.
struct Found {
    old_len: u64,
    new_len: u64,
    ops: Vec<Op>,
    steps: u64,
    slots: u64,
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The journal, if it is complete, checksummed and for the mailbox `id`.
fn verify(journal: &File, id: FileId) -> io::Result<Option<Found>> {
    let size = journal.metadata()?.len();
    if size < FIXED_HEADER as u64 {
        return Ok(None);
    }
    let mut fixed = [0u8; FIXED_HEADER];
    journal.read_exact_at(&mut fixed, 0)?;
    let field = |i: usize| read_u64(&fixed, 8 + 8 * i);
    let (old_len, new_len, steps, nops) = (field(2), field(3), field(4), field(5));
    if &fixed[..8] != MAGIC
        || field(0) != id.dev
        || field(1) != id.ino
        || nops > size / OP_LEN as u64
        || steps > MAX_STEPS as u64
    {
        return Ok(None);
    }
    let mut table = vec![0u8; nops as usize * OP_LEN];
    journal.read_exact_at(&mut table, FIXED_HEADER as u64)?;
    let ops: Vec<Op> = table
        .chunks_exact(OP_LEN)
        .map(|b| {
            let src = read_u64(b, 24);
            Op {
                step: read_u64(b, 0),
                dst: read_u64(b, 8),
                len: read_u64(b, 16),
                src,
                literal: src == LITERAL,
                fill: None,
            }
        })
        .collect();
    let sane = ops.iter().all(|op| {
        op.step < steps
            && op.dst.checked_add(op.len).is_some_and(|end| end <= new_len)
            && (op.literal || op.src.checked_add(op.len).is_some_and(|end| end <= old_len))
    });
    let literal: u64 = ops.iter().filter(|o| o.literal).map(|o| o.len).sum();
    let body = (FIXED_HEADER + table.len()) as u64 + literal;
    let slots = body + 16;
    if !sane || new_len >= old_len || size < slots + SLOT * (steps + 1) {
        return Ok(None);
    }
    let mut sum = Checksum::version1();
    sum.update_from(journal, 0, body, &mut vec![0u8; COPY_CHUNK])?;
    let mut trailer = [0u8; 16];
    journal.read_exact_at(&mut trailer, body)?;
    if read_u64(&trailer, 0) != sum.finish() || &trailer[8..] != END_MAGIC {
        return Ok(None);
    }
    Ok(Some(Found {
        old_len,
        new_len,
        ops,
        steps,
        slots,
    }))
}

/// Whether slot `slot` of the journal holds `magic value`.
fn slot_holds(journal: &File, found: &Found, slot: u64, magic: &[u8; 8], value: u64) -> bool {
    let mut bytes = [0u8; SLOT as usize];
    journal
        .read_exact_at(&mut bytes, found.slots + SLOT * slot)
        .is_ok()
        && &bytes[..8] == magic
        && read_u64(&bytes, 8) == value
}

/// Finish the compaction a move journal at `path` describes (under the mailbox lock). Returns
/// `Ok(false)` when the journal is incomplete or not for this mailbox: the compaction never
/// started (the journal is synced before the first move), and the caller removes it.
pub(super) fn recover(
    path: &Path,
    journal: &File,
    mailbox_path: &Path,
    mailbox: &File,
    id: FileId,
) -> io::Result<bool> {
    let Some(found) = verify(journal, id)? else {
        return Ok(false);
    };
    let writable = OpenOptions::new()
        .write(true)
        .read(true)
        .open(mailbox_path)?;
    let committed = slot_holds(journal, &found, found.steps, CUT_MAGIC, found.new_len);
    if !committed {
        if writable.metadata()?.len() < found.old_len {
            return Err(io::Error::other(format!(
                "{}: the mailbox is shorter than the interrupted compaction in {} left it; \
                 both are left for inspection",
                mailbox_path.display(),
                path.display()
            )));
        }
        let journal_rw = reopen_for_writing(path, journal)?;
        redo_steps(journal, &journal_rw, &found, &writable)?;
        disk::write_durably(&writable, CUT_MARK, found.new_len)?;
        write_slot(
            &journal_rw,
            found.slots + SLOT * found.steps,
            CUT_MAGIC,
            found.new_len,
        )?;
    }
    journal::finish_cut(mailbox, &writable, found.old_len, found.new_len)?;
    std::fs::remove_file(path)?;
    journal::sync_dir(path);
    Ok(true)
}

/// `path` opened for writing, if it is still the file `journal` (not a symlink put there).
fn reopen_for_writing(path: &Path, journal: &File) -> io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let rw = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let (a, b) = (rw.metadata()?, journal.metadata()?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return Err(io::Error::other("mbox journal replaced during recovery"));
    }
    Ok(rw)
}

/// Record `magic value` durably in the journal slot at `at`, written as zeros at creation.
fn write_slot(journal: &File, at: u64, magic: &[u8; 8], value: u64) -> io::Result<()> {
    let mut bytes = [0u8; SLOT as usize];
    bytes[..8].copy_from_slice(magic);
    bytes[8..].copy_from_slice(&value.to_le_bytes());
    disk::write_durably(journal, &bytes, at)
}

/// Redo every step not recorded done, each synced and recorded before the next.
fn redo_steps(journal: &File, journal_rw: &File, found: &Found, mailbox: &File) -> io::Result<()> {
    let done = (0..found.steps)
        .take_while(|&s| slot_holds(journal, found, s, DONE_MAGIC, s))
        .count() as u64;
    let literal_at = literal_positions(&found.ops);
    let mut copier = Copier::new(mailbox, None);
    for step in done..found.steps {
        for (op, at) in found.ops.iter().zip(&literal_at) {
            if op.step != step {
                continue;
            }
            match at {
                Some(at) => copy_from_journal(journal, *at, mailbox, op)?,
                None => copier.copy(op.src, op.dst, op.len)?,
            }
        }
        mailbox.sync_data()?;
        write_slot(journal_rw, found.slots + SLOT * step, DONE_MAGIC, step)?;
    }
    Ok(())
}

fn copy_from_journal(journal: &File, at: u64, mailbox: &File, op: &Op) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK.min(op.len as usize)];
    let mut done = 0;
    while done < op.len {
        let n = (op.len - done).min(buf.len() as u64) as usize;
        journal.read_exact_at(&mut buf[..n], at + done)?;
        mailbox.write_all_at(&buf[..n], op.dst + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mbox::tests::{TempDir, XorShift};

    /// A file of `blocks` blocks of random sizes, the moves that keep the blocks `keep` picks,
    /// in order, from the start, and the expected new bytes. With `fill_first`, the first kept
    /// block is written anew with 30 more bytes (as a new first message gets `X-IMAPbase`).
    struct Layout {
        old: Vec<u8>,
        fills: Vec<(u64, Vec<u8>)>,
        moves: Vec<Move>,
        new: Vec<u8>,
    }

    fn layout(
        rng: &mut XorShift,
        blocks: usize,
        keep: impl Fn(usize) -> bool,
        fill_first: bool,
    ) -> Layout {
        let mut l = Layout {
            old: Vec::new(),
            fills: Vec::new(),
            moves: Vec::new(),
            new: Vec::new(),
        };
        for b in 0..blocks {
            let len = 20 + rng.below(400) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if keep(b) {
                let (src, dst) = (l.old.len() as u64, l.new.len() as u64);
                if fill_first && l.new.is_empty() {
                    let mut fill = vec![b'+'; 30];
                    fill.extend_from_slice(&bytes);
                    l.new.extend_from_slice(&fill);
                    l.fills.push((0, fill));
                    l.old.extend_from_slice(&bytes);
                    continue;
                }
                if src != dst {
                    match l.moves.last_mut() {
                        Some(m) if m.src + m.len == src && m.dst + m.len == dst => {
                            m.len += len as u64
                        }
                        _ => l.moves.push(Move {
                            src,
                            dst,
                            len: len as u64,
                        }),
                    }
                }
                l.new.extend_from_slice(&bytes);
            }
            l.old.extend_from_slice(&bytes);
        }
        l
    }

    fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < b.0 + b.1 && b.0 < a.0 + a.1
    }

    /// What recovery relies on: no op of a step (or of an earlier one) writes over the source
    /// of a move it takes from the mailbox; literal ops all come first, in the first step.
    fn assert_schedule_safe(s: &Schedule, moves: &[Move]) {
        let moved: u64 = moves.iter().map(|m| m.len).sum();
        let filled: u64 = s.fills.iter().map(|f| f.len() as u64).sum();
        assert_eq!(s.ops.iter().map(|o| o.len).sum::<u64>(), moved + filled);
        let first_reference = s.ops.iter().position(|o| !o.literal).unwrap_or(s.ops.len());
        assert!(s.ops[first_reference..].iter().all(|o| !o.literal));
        assert!(s.ops[..first_reference].iter().all(|o| o.step == 0));
        assert!(s.ops.windows(2).all(|w| w[0].step <= w[1].step));
        for r in s.ops.iter().filter(|o| !o.literal) {
            for w in s.ops.iter().filter(|w| w.step <= r.step) {
                assert!(
                    !overlaps((w.dst, w.len), (r.src, r.len)),
                    "{w:?} overwrites the source of {r:?}"
                );
            }
        }
    }

    #[test]
    fn expunging_every_other_message_takes_few_steps() {
        let mut rng = XorShift(7);
        let l = layout(&mut rng, 2000, |b| b % 2 == 1, true);
        let s = Schedule::of(l.fills, &l.moves).expect("a compaction");
        assert_schedule_safe(&s, &l.moves);
        assert!(s.steps >= 2 && s.steps <= 12, "{} steps", s.steps);
        assert!(s.literal_len() > 0, "the first steps go into the journal");
    }

    #[test]
    fn a_small_shift_under_a_long_move_is_left_to_the_undo_journal() {
        let mut rng = XorShift(11);
        let l = layout(&mut rng, 3000, |b| b != 0, false);
        assert!(Schedule::of(Vec::new(), &l.moves).is_none());
    }

    #[test]
    fn random_schedules_never_overwrite_a_source_they_still_need() {
        let mut rng = XorShift(99);
        for round in 0..200 {
            let blocks = 2 + rng.below(300) as usize;
            let density = 1 + rng.below(5);
            let pattern: Vec<bool> = (0..blocks).map(|_| rng.below(density + 1) != 0).collect();
            let l = layout(&mut rng, blocks, |b| pattern[b], round % 2 == 0);
            if let Some(s) = Schedule::of(l.fills, &l.moves) {
                assert!(s.steps as usize <= MAX_STEPS, "round {round}");
                assert_schedule_safe(&s, &l.moves);
            }
        }
    }

    /// Carry out steps `..k` whole and, of step `k`, a random choice of 512-byte sectors (as a
    /// power failure may leave them), as the file `path` sees it.
    fn torn_execution(file: &File, s: &Schedule, k: u64, rng: &mut XorShift) {
        let mut copier = Copier::new(file, None);
        for step in 0..k {
            for op in s.in_step(step) {
                match op.fill {
                    Some(i) => copier.fill(&s.fills[i], op.dst).unwrap(),
                    None => copier.copy(op.src, op.dst, op.len).unwrap(),
                }
            }
        }
        // What step k would write, computed first, then written sector by sector at random.
        let mut writes = Vec::new();
        for op in s.in_step(k) {
            let data = match op.fill {
                Some(i) => s.fills[i].clone(),
                None => {
                    let mut data = vec![0u8; op.len as usize];
                    file.read_exact_at(&mut data, op.src).unwrap();
                    data
                }
            };
            writes.push((op.dst, data));
        }
        for (dst, data) in writes {
            let mut at = 0usize;
            while at < data.len() {
                let end = ((dst as usize + at) / 512 + 1) * 512 - dst as usize;
                let end = end.min(data.len());
                if rng.below(2) == 0 {
                    file.write_all_at(&data[at..end], dst + at as u64).unwrap();
                }
                at = end;
            }
        }
    }

    #[test]
    fn recovery_finishes_a_compaction_torn_by_a_power_failure_in_any_step() {
        let dir = TempDir::new("compact-power");
        let path = dir.path().join("box");
        let mut rng = XorShift(2024);
        for round in 0..12 {
            let keep_every = 2 + round % 3;
            let l = layout(&mut rng, 120, |b| b % keep_every != 0, round % 2 == 0);
            let (old, new) = (l.old, l.new);
            let s = Schedule::of(l.fills, &l.moves).expect("a compaction");
            for k in 0..s.steps {
                std::fs::write(&path, &old).unwrap();
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap();
                let lens = (old.len() as u64, new.len() as u64);
                let journal = MoveJournal::create(&path, &file, lens, &s).unwrap();
                for done in 0..k {
                    journal.step_done(done).unwrap();
                }
                torn_execution(&file, &s, k, &mut rng);
                let journal_path = journal.path.clone();
                drop(journal);
                // An MTA delivers before recovery runs.
                let late = b"From mta@example.com Tue Jan  2 10:00:00 2024\n\nlate\n\n";
                file.write_all_at(late, old.len() as u64).unwrap();
                let id = FileId::of(&file).unwrap();
                let read = File::open(&journal_path).unwrap();
                assert!(recover(&journal_path, &read, &path, &file, id).unwrap());
                let mut want = new.clone();
                want.extend_from_slice(late);
                assert!(
                    std::fs::read(&path).unwrap() == want,
                    "round {round}: power failure in step {k} of {}",
                    s.steps
                );
                assert!(!journal_path.exists());
            }
        }
    }

    #[test]
    fn an_incomplete_journal_is_not_recovered() {
        let dir = TempDir::new("compact-incomplete");
        let path = dir.path().join("box");
        let mut rng = XorShift(5);
        let l = layout(&mut rng, 40, |b| b % 2 == 1, true);
        let (old, new) = (l.old, l.new);
        let s = Schedule::of(l.fills, &l.moves).unwrap();
        std::fs::write(&path, &old).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let journal = MoveJournal::create(&path, &file, (old.len() as u64, new.len() as u64), &s);
        let journal_path = journal.unwrap().path.clone();
        let full = std::fs::metadata(&journal_path).unwrap().len();
        let id = FileId::of(&file).unwrap();
        for cut in [0, 8, 60, full / 2, full - 40] {
            let j = OpenOptions::new().write(true).open(&journal_path).unwrap();
            j.set_len(cut).unwrap();
            let read = File::open(&journal_path).unwrap();
            assert!(!recover(&journal_path, &read, &path, &file, id).unwrap());
            assert_eq!(std::fs::read(&path).unwrap(), old, "cut at {cut}");
        }
    }
}
