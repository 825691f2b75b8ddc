//! Flag patches written without a journal or an fsync, and the rule that says when that is
//! safe. Owns that rule and the journal-free write; never plans a rewrite or takes locks.
//!
//! A STORE on a few messages, and the flush of a large one's flag log (see
//! [`flaglog`](super::flaglog)), changes a few bytes of `Status:`, `X-Status:` and
//! `X-Keywords:` in each message's metadata block, to a block of the same length. Such a patch needs no journal when every
//! state the file can be left in shows each message whole, with its UID:
//! - the patch leaves `X-IMAPbase:` or `X-IMAP:` (UID-last, keyword names) and `X-UID:` as
//!   they are, so a partly written STORE never puts UIDs and UID-last out of step;
//! - a kill (`kill -9`, a crash of the process) lands between two `pwrite`s; each patch is
//!   one `pwrite` of a few bytes within one page, which the kernel copies whole;
//! - a power failure may write the page cache out in any order and may tear a write at a
//!   512-byte sector boundary (sectors themselves are written whole: the assumption
//!   PostgreSQL makes for `pg_control`). A patch inside one sector is therefore old or new
//!   ([`Safety::Plain`]). A patch across one boundary is plain too when both mixes (old
//!   then new, new then old) still end the header at the block's own blank line and start no
//!   `From ` line. When only one mix is (`\n` of the old block just before the boundary,
//!   `\n` of the new one just after it, about one message in 500), the half that makes the
//!   good mix is written and synced first ([`Safety::Ordered`]): the bad mix cannot occur.
//!   Anything else ([`Safety::Journal`]) is journaled as a rewrite is.
//!
//! After a failure a message thus shows its flags from before or after the STORE (or, for a
//! patch across a sector boundary torn by a power failure or cut by a kill between its two
//! halves, a mixture of the two that still parses), and never loses its text, its place or
//! its UID. Flags are not synced to disk, as Dovecot and UW do
//! not sync them: a power failure can undo STOREs of the last seconds, never anything else.
//! On NFS the unlock that follows writes them back (the client flushes dirty pages before it
//! releases a POSIX lock).

use super::disk;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The unit a disk writes whole, at the least.
const SECTOR: u64 = 512;

/// How a patch may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Safety {
    /// In place, one `pwrite`, no sync.
    Plain,
    /// Across a sector boundary `split` bytes into the patch: the part before it
    /// (`left_first`) or from it on is written and synced first, then the other part.
    Ordered { split: usize, left_first: bool },
    /// Through the journal.
    Journal,
}

/// How replacing `old[lo..hi]` by `new[lo..hi]` (in the metadata block at `block_offset`)
/// may be written (see the module documentation). `old` and `new` have one length.
pub(super) fn safety(old: &[u8], new: &[u8], lo: usize, hi: usize, block_offset: u64) -> Safety {
    if lo >= hi {
        return Safety::Plain;
    }
    if old.len() != new.len() {
        return Safety::Journal;
    }
    // Bytes from `hi` on are equal: the X-UID line and the closing blank line stay put.
    let Some(uid_line) = memchr::memmem::rfind(old, b"\nX-UID: ") else {
        return Safety::Journal;
    };
    if hi > uid_line {
        return Safety::Journal;
    }
    if old.starts_with(b"X-IMAP") {
        let base_end = memchr::memchr(b'\n', old).map_or(old.len(), |p| p + 1);
        if lo < base_end {
            return Safety::Journal;
        }
    }
    let first_sector = (block_offset + lo as u64) / SECTOR;
    let last_sector = (block_offset + hi as u64 - 1) / SECTOR;
    if last_sector == first_sector {
        return Safety::Plain;
    }
    if last_sector - first_sector > 1 {
        return Safety::Journal;
    }
    let split = (last_sector * SECTOR - block_offset) as usize;
    let new_then_old = well_formed(&mixed(new, old, split));
    let old_then_new = well_formed(&mixed(old, new, split));
    let split = split - lo;
    match (new_then_old, old_then_new) {
        (true, true) => Safety::Plain,
        (true, false) => Safety::Ordered {
            split,
            left_first: true,
        },
        (false, true) => Safety::Ordered {
            split,
            left_first: false,
        },
        (false, false) => Safety::Journal,
    }
}

/// `a` up to `split`, `b` from there on.
fn mixed(a: &[u8], b: &[u8], split: usize) -> Vec<u8> {
    let mut out = a[..split].to_vec();
    out.extend_from_slice(&b[split..]);
    out
}

/// A metadata block whose only blank line is its last and which starts no `From ` line.
fn well_formed(block: &[u8]) -> bool {
    let body = block.strip_suffix(b"\n\n").unwrap_or(block);
    memchr::memmem::find(body, b"\n\n").is_none()
        && !block.starts_with(b"From ")
        && memchr::memmem::find(block, b"\nFrom ").is_none()
}

/// The bytes of one patch that differ (old and new share the rest): `new` goes at `offset`.
pub(super) struct Span<'a> {
    pub offset: u64,
    /// What the file holds there now (verified when the plan was made).
    pub old: &'a [u8],
    pub new: &'a [u8],
    pub safety: Safety,
}

/// Write `spans` (none of them [`Safety::Journal`]) in place, without a journal: first the
/// good halves of the [`Safety::Ordered`] ones, each synced, then everything else. On an error every span is
/// put back (best effort) before the error is returned. `kill_after`: the crash test's
/// `MAILSUITE_CRASH_AFTER_BYTES`, honoured between writes (where a real kill lands, see the
/// module documentation).
pub(super) fn write_unjournaled(
    file: &File,
    spans: &[Span<'_>],
    kill_after: Option<u64>,
) -> io::Result<()> {
    let mut written = 0u64;
    let mut write = |bytes: &[u8], offset: u64, durably: bool| {
        if kill_after.is_some_and(|limit| written + bytes.len() as u64 > limit) {
            std::process::abort();
        }
        written += bytes.len() as u64;
        if durably {
            disk::write_durably(file, bytes, offset)
        } else {
            file.write_all_at(bytes, offset)
        }
    };
    let result = (|| {
        // Each good half is synced alone: a file-wide sync would also write out every page
        // that earlier STOREs left dirty.
        for ((first, first_at), _) in spans.iter().filter_map(halves_of) {
            write(first, first_at, true)?;
        }
        for span in spans {
            match halves_of(span) {
                Some((_, (then, then_at))) => write(then, then_at, false)?,
                None => write(span.new, span.offset, false)?,
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for span in spans {
            let _ = file.write_all_at(span.old, span.offset);
        }
        return Err(e);
    }
    if kill_after.is_some() {
        std::process::abort();
    }
    Ok(())
}

/// A piece of a patch's new bytes and where it goes.
type Piece<'a> = (&'a [u8], u64);

/// An [`Safety::Ordered`] patch's two halves: the one to make durable first, then the other.
fn halves_of<'a>(span: &Span<'a>) -> Option<(Piece<'a>, Piece<'a>)> {
    let Safety::Ordered { split, left_first } = span.safety else {
        return None;
    };
    let (left, right) = span.new.split_at(split);
    let left = (left, span.offset);
    let right = (right, span.offset + split as u64);
    Some(if left_first {
        (left, right)
    } else {
        (right, left)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &[u8] =
        b"Status: O\nX-Status: \nX-Keywords:                                \nX-UID: 7\n\n";
    const NEW: &[u8] =
        b"Status: RO\nX-Status: F\nX-Keywords:                              \nX-UID: 7\n\n";

    fn range(old: &[u8], new: &[u8]) -> (usize, usize) {
        let lo = old.iter().zip(new).take_while(|(a, b)| a == b).count();
        let tail = old
            .iter()
            .rev()
            .zip(new.iter().rev())
            .take_while(|(a, b)| a == b);
        (lo, old.len() - tail.count())
    }

    #[test]
    fn a_flag_patch_inside_one_sector_is_tear_safe() {
        assert_eq!(OLD.len(), NEW.len());
        let (lo, hi) = range(OLD, NEW);
        assert_eq!(safety(OLD, NEW, lo, hi, 0), Safety::Plain);
        assert_eq!(safety(OLD, NEW, lo, hi, 4096 + 100), Safety::Plain);
    }

    #[test]
    fn a_torn_mix_that_would_end_the_header_early_is_ordered() {
        // Old "\nX-Status" against new "F\nX-Keywords" shifted by one: with the sector
        // boundary right after old's line end, old-then-new reads "\n\n" there, so the
        // new left half must be on disk before the right half may be.
        let (lo, hi) = range(OLD, NEW);
        let old_nl = lo + memchr::memchr(b'\n', &OLD[lo..]).unwrap();
        assert_eq!(NEW[old_nl + 1], b'\n');
        let offset = SECTOR - (old_nl as u64 + 1);
        assert!(!well_formed(&mixed(OLD, NEW, old_nl + 1)));
        assert!(well_formed(&mixed(NEW, OLD, old_nl + 1)));
        assert_eq!(
            safety(OLD, NEW, lo, hi, offset),
            Safety::Ordered {
                split: old_nl + 1 - lo,
                left_first: true
            }
        );
        // Going back (-FLAGS) the bad mix is the other one: the right half goes first.
        assert_eq!(
            safety(NEW, OLD, lo, hi, offset),
            Safety::Ordered {
                split: old_nl + 1 - lo,
                left_first: false
            }
        );
        // One byte further both mixes are harmless.
        assert_eq!(safety(OLD, NEW, lo, hi, offset + 1), Safety::Plain);
    }

    #[test]
    fn uid_and_base_changes_always_go_through_the_journal() {
        let new_uid =
            b"Status: O\nX-Status: \nX-Keywords:                                \nX-UID: 8\n\n";
        let (lo, hi) = range(OLD, new_uid);
        assert_eq!(safety(OLD, new_uid, lo, hi, 0), Safety::Journal);
        let base_old = b"X-IMAPbase: 1 9\nStatus: O\nX-UID: 7\n\n";
        let base_new = b"X-IMAPbase: 1 8\nStatus: O\nX-UID: 7\n\n";
        let (lo, hi) = range(base_old, base_new);
        assert_eq!(safety(base_old, base_new, lo, hi, 0), Safety::Journal);
        let flags_new = b"X-IMAPbase: 1 9\nStatus: R\nX-UID: 7\n\n";
        let (lo, hi) = range(base_old, flags_new);
        assert_eq!(safety(base_old, flags_new, lo, hi, 0), Safety::Plain);
    }

    #[test]
    fn a_patch_across_two_boundaries_is_journaled() {
        let old = [b"X-Keywords: ".as_slice(), &[b'a'; 1100], b"\nX-UID: 1\n\n"].concat();
        let new = [b"X-Keywords: ".as_slice(), &[b'b'; 1100], b"\nX-UID: 1\n\n"].concat();
        let (lo, hi) = range(&old, &new);
        assert_eq!(safety(&old, &new, lo, hi, 0), Safety::Journal);
    }

    /// Write `span` of OLD->NEW with a kill after `kill_after` bytes, in a child process.
    fn killed_write(dir: &std::path::Path, offset: u64, kill_after: u64) -> Vec<u8> {
        let path = dir.join("box");
        let mut file = vec![b'.'; offset as usize];
        file.extend_from_slice(OLD);
        std::fs::write(&path, &file).unwrap();
        let (lo, hi) = range(OLD, NEW);
        let safety = safety(OLD, NEW, lo, hi, offset);
        assert!(matches!(safety, Safety::Ordered { .. }));
        // SAFETY: the child only opens and writes the file, then aborts or exits; glibc
        // keeps malloc usable in the child of a multithreaded parent.
        match unsafe { libc::fork() } {
            0 => {
                // The child must not unwind into the test harness: any failure exits.
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
                    let span = Span {
                        offset: offset + lo as u64,
                        old: &OLD[lo..hi],
                        new: &NEW[lo..hi],
                        safety,
                    };
                    let _ = write_unjournaled(&f, &[span], Some(kill_after));
                }
                // SAFETY: ends the forked child at once, without running the harness's code.
                unsafe { libc::_exit(3) }
            }
            pid => {
                let mut status = 0;
                // SAFETY: waiting for the child forked above.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFSIGNALED(status));
            }
        }
        std::fs::read(&path).unwrap()[offset as usize..].to_vec()
    }

    #[test]
    fn an_ordered_patch_never_shows_the_bad_mix() {
        let dir = crate::store::mbox::tests::TempDir::new("patch-ordered");
        let (lo, _) = range(OLD, NEW);
        let old_nl = lo + memchr::memchr(b'\n', &OLD[lo..]).unwrap();
        let offset = SECTOR - (old_nl as u64 + 1);
        let split = old_nl + 1 - lo;
        // Killed before anything, between the halves, after both.
        assert_eq!(killed_write(dir.path(), offset, 0), OLD);
        let between = killed_write(dir.path(), offset, split as u64);
        assert_eq!(between, mixed(NEW, OLD, old_nl + 1));
        assert!(well_formed(&between));
        assert_eq!(killed_write(dir.path(), offset, 1 << 20), NEW);
    }
}
