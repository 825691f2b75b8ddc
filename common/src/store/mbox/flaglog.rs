//! The flag log: flag and keyword changes of a large STORE, recorded beside the mailbox instead
//! of patched into every message at once, and written into the mbox later.
//!
//! A STORE on thousands of messages would otherwise cost two system calls per message (verify
//! the metadata block, patch it). Instead the session appends one record per changed message
//! to this file with a single `write`, under the mailbox lock. Every session of ours reads the
//! log under the same lock whenever it catches up with the mailbox, so other sessions see the
//! changes at their next command, as before; a kill (of any session) leaves the records in the
//! page cache for the next one. The log is written into the mbox ("flushed") by the next
//! rewrite of the file (EXPUNGE, new mail to claim), by CHECK, CLOSE, SELECT of another
//! mailbox and LOGOUT, and by a session whose client has been quiet for a second: programs that
//! read the mbox alone (mutt, UW, Dovecot) see the flags from then on. Like the patches it
//! replaces, it is not synced: a power failure can undo STOREs of the last seconds.
//!
//! It lives next to the mailbox as `.<mailbox name>.mbox-journal-flags`, or, when that
//! directory is not writable, as `$HOME/.mbox-journal-flags.<dev>.<ino>` (the names keep it out
//! of LIST and out of older binaries' journal recovery, which opens only its own names).
//! Layout (integers little-endian):
//!
//! ```text
//! "MSFLOG1\n" id:u64 uid_validity:u32 names_len:u32 names (keyword names, space-separated)
//!     header_check:u64
//! records of 16 bytes: uid:u32 keywords:u64 flags:u8 0:u8 check:u16
//! ```
//!
//! A record gives a message's whole state (flags, and keywords as bits of the header's
//! names), so replaying it twice is harmless and the last record of a UID wins. `id` is random
//! per log, so a session can tell a new log from the one it has read. A record that fails its
//! check (torn by a kill during a long write, or by a power failure) is ignored, and the next
//! append overwrites a torn tail. A log whose UIDVALIDITY is not the mailbox's is stale and
//! removed.
//!
//! Owns the log file only; never writes the mailbox and never takes locks (callers hold the
//! mailbox lock for every call).

use super::journal::{Checksum, FileId};
use super::FileStamp;
use crate::store::Flags;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MSFLOG1\n";
const RECORD: u64 = 16;
/// Longest keyword-name list a header may carry (UW's 30 names of at most 50 bytes fit).
const MAX_NAMES_LEN: u32 = 4096;

/// One message's state as a record gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct State {
    pub flags: Flags,
    /// Bits of [`Log::names`].
    pub keywords: u64,
}

/// A log as this session has read it.
#[derive(Clone, Debug)]
pub(super) struct Log {
    path: PathBuf,
    id: u64,
    uid_validity: u32,
    /// The keyword names the records' bits refer to.
    pub names: Vec<String>,
    /// Where the next record starts (end of the last complete record read or written).
    end: u64,
    /// The log file as last read or written: any change means new records, a flush or a
    /// new log.
    pub stamp: FileStamp,
    /// The last state of every UID the log names.
    pub states: HashMap<u32, State>,
}

/// Where the log of `mailbox` may live, in order of preference.
pub(super) fn paths(mailbox: &Path, id: FileId) -> Vec<PathBuf> {
    super::journal::sidecar_paths(mailbox, id, ".mbox-journal-flags")
}

/// The log of `mailbox` that exists now, and its stamp: a `stat` per candidate place.
pub(super) fn find(mailbox: &Path, id: FileId) -> io::Result<Option<(PathBuf, FileStamp)>> {
    for path in paths(mailbox, id) {
        match std::fs::metadata(&path) {
            Ok(m) => return Ok(Some((path, FileStamp::from_metadata(&m)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn header(id: u64, uid_validity: u32, names: &[String]) -> Vec<u8> {
    let joined = names.join(" ");
    let mut out = Vec::with_capacity(32 + joined.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&uid_validity.to_le_bytes());
    out.extend_from_slice(&(joined.len() as u32).to_le_bytes());
    out.extend_from_slice(joined.as_bytes());
    let mut sum = Checksum::new();
    sum.update(&out);
    out.extend_from_slice(&sum.finish().to_le_bytes());
    out
}

fn record_check(id: u64, body: &[u8]) -> u16 {
    let mut sum = Checksum::new();
    sum.update(&id.to_le_bytes());
    sum.update(body);
    sum.finish() as u16
}

fn record(id: u64, uid: u32, state: State) -> [u8; RECORD as usize] {
    let mut r = [0u8; RECORD as usize];
    r[0..4].copy_from_slice(&uid.to_le_bytes());
    r[4..12].copy_from_slice(&state.keywords.to_le_bytes());
    r[12] = state.flags.bits();
    let check = record_check(id, &r[..14]);
    r[14..16].copy_from_slice(&check.to_le_bytes());
    r
}

fn parse_record(id: u64, r: &[u8]) -> Option<(u32, State)> {
    let check = u16::from_le_bytes([r[14], r[15]]);
    if r[13] != 0 || check != record_check(id, &r[..14]) {
        return None;
    }
    let uid = u32::from_le_bytes(r[0..4].try_into().ok()?);
    let keywords = u64::from_le_bytes(r[4..12].try_into().ok()?);
    Some((
        uid,
        State {
            flags: Flags::from_bits(r[12]),
            keywords,
        },
    ))
}

/// A log file's header.
struct Header {
    id: u64,
    uid_validity: u32,
    names: Vec<String>,
    /// Where the records start.
    end: u64,
}

/// The header of the log in `file`, or `None` when it is not (yet, or any more) a whole,
/// valid header.
fn read_header(file: &File) -> io::Result<Option<Header>> {
    let mut fixed = [0u8; 24];
    match file.read_exact_at(&mut fixed, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let names_len = u32::from_le_bytes(fixed[20..24].try_into().unwrap_or_default());
    if &fixed[..8] != MAGIC || names_len > MAX_NAMES_LEN {
        return Ok(None);
    }
    let mut rest = vec![0u8; names_len as usize + 8];
    match file.read_exact_at(&mut rest, 24) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (names, check) = rest.split_at(names_len as usize);
    let mut sum = Checksum::new();
    sum.update(&fixed);
    sum.update(names);
    if sum.finish().to_le_bytes() != check {
        return Ok(None);
    }
    let id = u64::from_le_bytes(fixed[8..16].try_into().unwrap_or_default());
    let uid_validity = u32::from_le_bytes(fixed[16..20].try_into().unwrap_or_default());
    let names = String::from_utf8_lossy(names)
        .split(' ')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    Ok(Some(Header {
        id,
        uid_validity,
        names,
        end: 24 + names_len as u64 + 8,
    }))
}

/// What [`read`] found at a log's path.
pub(super) enum Found {
    Log(Log),
    /// Nothing there (any more).
    Missing,
    /// Not a log of this mailbox: a header torn by a kill as the log was made, or a log of
    /// another UIDVALIDITY. Its records mean nothing; a writer removes it ([`remove`]).
    Stale,
}

/// Read the log at `path` (found by [`find`]) on top of what `known` holds of it: only the
/// records after those already read when it is the same log, all of them otherwise.
pub(super) fn read(path: &Path, known: Option<Log>, uid_validity: u32) -> io::Result<Found> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(e),
    };
    let Some(Header {
        id,
        uid_validity: log_validity,
        names,
        end: start,
    }) = read_header(&file)?
    else {
        return Ok(Found::Stale);
    };
    if log_validity != uid_validity {
        return Ok(Found::Stale);
    }
    let stamp = FileStamp::of(&file)?;
    let mut log = match known.filter(|k| k.id == id && k.path == path && k.end <= stamp.len) {
        Some(k) => k,
        None => Log {
            path: path.to_path_buf(),
            id,
            uid_validity,
            names,
            end: start,
            stamp,
            states: HashMap::new(),
        },
    };
    let whole = (stamp.len.saturating_sub(log.end) / RECORD) * RECORD;
    let mut buf = vec![0u8; whole as usize];
    file.read_exact_at(&mut buf, log.end)?;
    for r in buf.chunks_exact(RECORD as usize) {
        if let Some((uid, state)) = parse_record(id, r) {
            log.states.insert(uid, state);
        }
    }
    log.end += whole;
    log.stamp = stamp;
    Ok(Found::Log(log))
}

/// Append `changes` to `log` (with one `write`), or, when `log` is `None`, start a new log for
/// a mailbox of `uid_validity` whose keyword names are `names` in the first of [`paths`] where
/// a file can be made. Returns the log as it now is.
pub(super) fn append(
    log: Option<Log>,
    mailbox: &Path,
    id: FileId,
    uid_validity: u32,
    names: &[String],
    changes: &[(u32, State)],
) -> io::Result<Log> {
    let (mut log, file, mut bytes) = match log {
        Some(log) => {
            let file = OpenOptions::new().write(true).open(&log.path)?;
            (log, file, Vec::new())
        }
        None => create(mailbox, id, uid_validity, names)?,
    };
    bytes.reserve(changes.len() * RECORD as usize);
    for &(uid, state) in changes {
        bytes.extend_from_slice(&record(log.id, uid, state));
    }
    file.write_all_at(&bytes, log.end)?;
    log.end += bytes.len() as u64;
    log.stamp = FileStamp::of(&file)?;
    for &(uid, state) in changes {
        log.states.insert(uid, state);
    }
    Ok(log)
}

/// A new, empty log file (created exclusively, mode 0600) and its header bytes, not yet
/// written: the caller writes them with the first records, from offset 0 (`end`).
fn create(
    mailbox: &Path,
    id: FileId,
    uid_validity: u32,
    names: &[String],
) -> io::Result<(Log, File, Vec<u8>)> {
    let log_id = random_id();
    let head = header(log_id, uid_validity, names);
    let mut last_error = io::Error::other("no place for a flag log");
    for path in paths(mailbox, id) {
        let made = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match made {
            Ok(file) => {
                let log = Log {
                    path,
                    id: log_id,
                    uid_validity,
                    names: names.to_vec(),
                    end: 0,
                    stamp: FileStamp::of(&file)?,
                    states: HashMap::new(),
                };
                return Ok((log, file, head));
            }
            // Callers found no log under the lock: one there now is not ours to replace.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

fn random_id() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(f) = File::open("/dev/urandom") {
        let _ = f.read_exact_at(&mut bytes, 0);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    u64::from_le_bytes(bytes) ^ now ^ (u64::from(std::process::id()) << 32)
}

/// Remove the log at `path` (already gone is fine).
pub(super) fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Log {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn uid_validity(&self) -> u32 {
        self.uid_validity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flaglog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const ID: FileId = FileId { dev: 1, ino: 2 };

    fn log_at(path: &Path, known: Option<Log>, uid_validity: u32) -> Log {
        match read(path, known, uid_validity).unwrap() {
            Found::Log(log) => log,
            _ => panic!("no log at {}", path.display()),
        }
    }

    fn state(bits: u8, keywords: u64) -> State {
        State {
            flags: Flags::from_bits(bits),
            keywords,
        }
    }

    #[test]
    fn records_written_are_read_back_by_another_reader_incrementally() {
        let d = dir("rw");
        let mbox = d.join("INBOX");
        let names = vec!["$Junk".to_string(), "work".to_string()];
        let log = append(
            None,
            &mbox,
            ID,
            77,
            &names,
            &[(1, state(1, 0)), (2, state(4, 2))],
        )
        .unwrap();
        assert_eq!(log.path(), d.join(".INBOX.mbox-journal-flags"));
        let (path, stamp) = find(&mbox, ID).unwrap().unwrap();
        assert_eq!(stamp, log.stamp);
        let seen = log_at(&path, None, 77);
        assert_eq!(seen.names, names);
        assert_eq!(seen.states.len(), 2);
        assert_eq!(seen.states[&2], state(4, 2));
        let log = append(Some(log), &mbox, ID, 77, &names, &[(2, state(0, 1))]).unwrap();
        let again = log_at(&path, Some(seen.clone()), 77);
        assert_eq!(again.states[&2], state(0, 1));
        assert_eq!(again.states[&1], state(1, 0));
        assert_eq!(again.end, log.end);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), log.end);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn torn_and_damaged_records_are_ignored_and_a_torn_tail_overwritten() {
        let d = dir("torn");
        let mbox = d.join("box");
        let log = append(
            None,
            &mbox,
            ID,
            5,
            &[],
            &[(1, state(1, 0)), (2, state(2, 0))],
        )
        .unwrap();
        let path = log.path().to_path_buf();
        // A kill in the middle of the next write: half a record.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&record(log.id, 3, state(8, 0))[..7], log.end)
            .unwrap();
        // A power failure garbling the first record.
        let first = log.end - 2 * RECORD;
        f.write_all_at(b"\xff", first + 12).unwrap();
        let seen = log_at(&path, None, 5);
        assert_eq!(seen.states.len(), 1, "{:?}", seen.states);
        assert_eq!(seen.states[&2], state(2, 0));
        assert_eq!(seen.end, log.end, "the torn half record is not consumed");
        let log = append(Some(seen), &mbox, ID, 5, &[], &[(4, state(16, 0))]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), log.end);
        let fresh = log_at(&path, None, 5);
        assert_eq!(fresh.states.len(), 2);
        assert_eq!(fresh.states[&4], state(16, 0));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_log_of_another_uidvalidity_is_stale_and_removed() {
        let d = dir("stale");
        let mbox = d.join("box");
        let log = append(None, &mbox, ID, 5, &[], &[(1, state(1, 0))]).unwrap();
        assert!(matches!(read(log.path(), None, 6).unwrap(), Found::Stale));
        assert!(matches!(read(log.path(), None, 5).unwrap(), Found::Log(_)));
        // A writer that finds it stale removes it and starts a new one in the same place.
        remove(log.path()).unwrap();
        assert!(find(&mbox, ID).unwrap().is_none());
        let new = append(None, &mbox, ID, 6, &[], &[(1, state(2, 0))]).unwrap();
        assert_eq!(new.path(), log.path());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_new_log_replaces_the_read_one_and_a_short_header_is_no_log() {
        let d = dir("new");
        let mbox = d.join("box");
        let first = append(None, &mbox, ID, 5, &[], &[(1, state(1, 0))]).unwrap();
        let seen = log_at(first.path(), None, 5);
        remove(first.path()).unwrap();
        let second = append(None, &mbox, ID, 5, &[], &[(9, state(2, 0))]).unwrap();
        let now = log_at(second.path(), Some(seen), 5);
        assert_eq!(
            now.states.len(),
            1,
            "the old log's records are not carried over"
        );
        assert_eq!(now.states[&9], state(2, 0));
        std::fs::write(second.path(), &MAGIC[..]).unwrap();
        assert!(matches!(
            read(second.path(), None, 5).unwrap(),
            Found::Stale
        ));
        // Creating a log where one exists fails rather than starting one elsewhere.
        let again = append(None, &mbox, ID, 5, &[], &[(3, state(1, 0))]);
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        remove(second.path()).unwrap();
        assert!(matches!(
            read(second.path(), None, 5).unwrap(),
            Found::Missing
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
