//! The `dovecot-uidlist` file: UIDVALIDITY, the next UID and the UID of every base name, in
//! Dovecot's format, and the `dovecot-uidlist.lock` dotlock that serialises writers with Dovecot.
//!
//! Owns reading (versions 1 and 3), writing (version 3) and locking that one file. Writes under
//! the lock only, as Dovecot does: records for new messages are appended at the end of the file
//! ([`ListFile::append_in_place`]); anything else rewrites it through the lock file, renamed
//! over the list. A reader remembers where it stopped ([`ListCursor`]) and later reads only what
//! was appended since ([`read_since`]). Never touches messages.
//!
//! Version 3, as Dovecot writes it:
//! ```text
//! 3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1
//! 25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394
//! 25017 W2481 :1276533073.M242911P3632.kurkku
//! ```
//! Version 1 (Dovecot 1.0, Courier's courierimapuiddb): `1 <uidvalidity> <nextuid>` then
//! `<uid> <filename>` lines.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, SystemTime};

use super::name::base_of;

pub const UIDLIST_NAME: &str = "dovecot-uidlist";
pub const LOCK_NAME: &str = "dovecot-uidlist.lock";
/// A lock file untouched this long belongs to a dead writer (Dovecot: 2 minutes).
pub const STALE_AFTER: Duration = Duration::from_secs(120);

/// One message line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub uid: u32,
    /// Extension fields (`W2481`, `S1355`, `G...`, ...) verbatim, in file order.
    pub extensions: Vec<String>,
    /// The file name without its info part.
    pub base: String,
}

impl Record {
    /// The value of extension `key` (e.g. `W` = presented size).
    pub fn extension(&self, key: char) -> Option<&str> {
        self.extensions.iter().find_map(|e| e.strip_prefix(key))
    }
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uidlist {
    pub uid_validity: u32,
    pub next_uid: u32,
    /// Header fields other than `V` and `N` (the mailbox `G`UID, ...) verbatim.
    pub header_extra: Vec<String>,
    /// In strictly increasing UID order.
    pub records: Vec<Record>,
    /// True when the file was not in version 3 and should be rewritten.
    pub outdated: bool,
}

impl Uidlist {
    /// A fresh list for a mailbox that never had one.
    pub fn new(uid_validity: u32) -> Uidlist {
        Uidlist {
            uid_validity,
            next_uid: 1,
            header_extra: vec![format!("G{}", new_guid())],
            records: Vec::new(),
            outdated: false,
        }
    }

    /// Parse the file's text. A bad header is an error; bad, duplicate or out-of-order record
    /// lines are skipped (their messages get new UIDs, as Dovecot would give them).
    pub fn parse(text: &str) -> Result<Uidlist, String> {
        let mut lines = text.lines();
        let header = lines.next().ok_or("empty file")?;
        let mut list = parse_header(header)?;
        let version3 = !list.outdated;
        let mut last_uid = 0;
        for line in lines {
            let Some(record) = parse_record(line, version3) else {
                continue;
            };
            if record.uid > last_uid {
                last_uid = record.uid;
                list.records.push(record);
            }
        }
        if list.next_uid <= last_uid {
            list.next_uid = last_uid.saturating_add(1);
        }
        Ok(list)
    }

    /// The version 3 text of this list.
    pub fn serialize(&self) -> String {
        let mut out = String::with_capacity(64 + self.records.len() * 64);
        out.push_str(&format!("3 V{} N{}", self.uid_validity, self.next_uid));
        for field in &self.header_extra {
            out.push(' ');
            out.push_str(field);
        }
        out.push('\n');
        for record in &self.records {
            record.write_line(&mut out);
        }
        out
    }
}

impl Record {
    /// Add this record's version 3 line (`<uid> [<ext> ...] :<base>\n`) to `out`.
    fn write_line(&self, out: &mut String) {
        out.push_str(&self.uid.to_string());
        for extension in &self.extensions {
            out.push(' ');
            out.push_str(extension);
        }
        out.push_str(" :");
        out.push_str(&self.base);
        out.push('\n');
    }
}

/// Where a reader of the list file stopped: enough to read later only the records appended
/// since (Dovecot adds records at the end; it replaces the file, a new inode, for any other
/// change). Only taken at the end of a complete line of a version 3 list. The header line is
/// remembered too: a replacement that happened to get the old inode number back would have to
/// repeat it byte for byte (UIDVALIDITY, next UID, GUID) to be taken for the same file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListCursor {
    ino: u64,
    len: u64,
    /// Length and hash of the header line, its newline included.
    header: (u64, u64),
    pub uid_validity: u32,
    /// The next UID as the list read so far says (header `N`, raised past every record).
    pub next_uid: u32,
    /// The highest UID read so far (0: none).
    last_uid: u32,
}

impl ListCursor {
    fn after(list: &Uidlist, ino: u64, text: &str) -> ListCursor {
        let header = text.split_inclusive('\n').next().unwrap_or("");
        ListCursor {
            ino,
            len: text.len() as u64,
            header: (header.len() as u64, header_hash(header.as_bytes())),
            uid_validity: list.uid_validity,
            next_uid: list.next_uid,
            last_uid: list.records.last().map_or(0, |r| r.uid),
        }
    }
}

/// The records appended to the list file since `cursor`, and the cursor after them. `None`
/// when the file cannot be read that way: replaced (another inode), shorter, not ending where
/// the cursor stood on a line end, or ending in an incomplete line (a writer at work, or a torn
/// write): read it whole then.
pub fn read_since(
    maildir: &Path,
    cursor: &ListCursor,
) -> io::Result<Option<(Vec<Record>, ListCursor)>> {
    use std::os::unix::fs::MetadataExt;
    let file = match File::open(maildir.join(UIDLIST_NAME)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if meta.ino() != cursor.ino || meta.len() < cursor.len || cursor.len == 0 {
        return Ok(None);
    }
    let mut header = vec![0u8; usize::try_from(cursor.header.0).unwrap_or(0)];
    file.read_exact_at(&mut header, 0)?;
    if header_hash(&header) != cursor.header.1 {
        return Ok(None);
    }
    if meta.len() == cursor.len {
        return Ok(Some((Vec::new(), *cursor)));
    }
    // One byte before the cursor too: it must still be the line end the cursor stood after.
    let mut bytes = vec![0u8; usize::try_from(meta.len() - cursor.len + 1).unwrap_or(0)];
    file.read_exact_at(&mut bytes, cursor.len - 1)?;
    let Some(text) = bytes.strip_prefix(b"\n") else {
        return Ok(None);
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return Ok(None);
    };
    if !text.ends_with('\n') {
        return Ok(None);
    }
    let mut after = *cursor;
    let mut records = Vec::new();
    for line in text.lines() {
        match parse_record(line, true) {
            Some(record) if record.uid > after.last_uid => {
                after.last_uid = record.uid;
                records.push(record);
            }
            _ => {}
        }
    }
    after.len = meta.len();
    if after.next_uid <= after.last_uid {
        after.next_uid = after.last_uid.saturating_add(1);
    }
    Ok(Some((records, after)))
}

fn header_hash(header: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut hasher = DefaultHasher::new();
    hasher.write(header);
    hasher.finish()
}

/// What an in-place append needs to know about the list file's text as it was read.
pub struct ListFile {
    /// Length in bytes of the text parsed.
    len: u64,
    /// The text is version 3 and ends with a complete line: records may be appended to it.
    appendable: bool,
    /// Where this read stopped, when the text is appendable.
    pub cursor: Option<ListCursor>,
}

impl ListFile {
    /// The file as `cursor` last saw it, for [`ListFile::append_in_place`].
    pub fn at(cursor: &ListCursor) -> ListFile {
        ListFile {
            len: cursor.len,
            appendable: true,
            cursor: Some(*cursor),
        }
    }

    /// Append `records` (new UIDs above every listed one) to the file this was read from, as
    /// Dovecot does when it only adds messages: one write at the end, flushed to disk. The
    /// caller holds the [`UidlistLock`], so the file is still the one read. A crash mid-write
    /// can leave at most a torn last line; readers skip it or find it matches no file, and the
    /// next append or rewrite starts from a whole line (`appendable`). On error the
    /// file is cut back to its old length (best effort) and the caller must treat the records
    /// as not written. False (nothing written) when the text cannot be appended to.
    pub fn append_in_place(&self, maildir: &Path, records: &[Record]) -> io::Result<bool> {
        if !self.appendable {
            return Ok(false);
        }
        let mut lines = String::with_capacity(records.len() * 64);
        for record in records {
            record.write_line(&mut lines);
        }
        let file = OpenOptions::new()
            .write(true)
            .open(maildir.join(UIDLIST_NAME))?;
        if file.metadata()?.len() != self.len {
            return Ok(false);
        }
        let written = file
            .write_all_at(lines.as_bytes(), self.len)
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = file.set_len(self.len);
            return Err(e);
        }
        Ok(true)
    }
}

fn parse_header(line: &str) -> Result<Uidlist, String> {
    let mut fields = line.split_ascii_whitespace();
    let bad = || format!("bad header {line:?}");
    let number = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok());
    match fields.next() {
        Some("1") => {
            let uid_validity = number(fields.next()).ok_or_else(bad)?;
            let next_uid = number(fields.next()).ok_or_else(bad)?;
            Ok(Uidlist {
                uid_validity,
                next_uid,
                header_extra: vec![format!("G{}", new_guid())],
                records: Vec::new(),
                outdated: true,
            })
        }
        Some("3") => {
            let mut uid_validity = None;
            let mut next_uid = None;
            let mut header_extra = Vec::new();
            for field in fields {
                if let Some(v) = field.strip_prefix('V') {
                    uid_validity = v.parse::<u32>().ok();
                } else if let Some(n) = field.strip_prefix('N') {
                    next_uid = n.parse::<u32>().ok();
                } else {
                    header_extra.push(field.to_string());
                }
            }
            Ok(Uidlist {
                uid_validity: uid_validity.filter(|v| *v != 0).ok_or_else(bad)?,
                next_uid: next_uid.ok_or_else(bad)?.max(1),
                header_extra,
                records: Vec::new(),
                outdated: false,
            })
        }
        _ => Err(bad()),
    }
}

fn parse_record(line: &str, version3: bool) -> Option<Record> {
    let (uid, mut rest) = line.split_once(' ')?;
    let uid = uid.parse::<u32>().ok().filter(|u| *u != 0)?;
    let mut extensions = Vec::new();
    if version3 {
        loop {
            rest = rest.trim_start_matches(' ');
            if let Some(name) = rest.strip_prefix(':') {
                rest = name;
                break;
            }
            let (field, after) = rest.split_once(' ')?;
            extensions.push(field.to_string());
            rest = after;
        }
    }
    let base = base_of(rest.trim_end_matches('\r'));
    if base.is_empty() || base.contains('/') {
        return None;
    }
    Some(Record {
        uid,
        extensions,
        base: base.to_string(),
    })
}

/// Read `<maildir>/dovecot-uidlist`; `Ok(None)` when there is none.
#[cfg(test)]
pub fn read(maildir: &Path) -> io::Result<Option<Uidlist>> {
    Ok(read_for_append(maildir)?.map(|(list, _)| list))
}

/// `dovecot-uidlist` parsed (`Ok(None)` when there is none), with what
/// [`ListFile::append_in_place`] needs.
pub fn read_for_append(maildir: &Path) -> io::Result<Option<(Uidlist, ListFile)>> {
    use std::os::unix::fs::MetadataExt;
    let path = maildir.join(UIDLIST_NAME);
    let mut text = String::new();
    let ino = match File::open(&path) {
        Ok(mut file) => {
            file.read_to_string(&mut text)?;
            file.metadata()?.ino()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let list =
        Uidlist::parse(&text).map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))?;
    let appendable = !list.outdated && text.ends_with('\n');
    let len = text.len() as u64;
    let file = ListFile {
        len,
        appendable,
        cursor: appendable.then(|| ListCursor::after(&list, ino, &text)),
    };
    Ok(Some((list, file)))
}

/// A 128-bit hexadecimal mailbox GUID, as Dovecot puts in the `G` header field.
fn new_guid() -> String {
    let mut bytes = [0u8; 16];
    let random = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mixed = (u128::from(now.as_secs()) << 64)
            ^ (u128::from(now.subsec_nanos()) << 32)
            ^ u128::from(std::process::id());
        bytes = mixed.to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `dovecot-uidlist.lock`, held while reading-then-writing the list. It doubles as the new
/// list's temporary file: [`UidlistLock::replace`] writes into it and renames it over the list.
/// Dropped without `replace`, it is removed. The same dotlock protocol guards the other small
/// files of a Maildir (`dovecot-keywords`, `subscriptions`): see [`UidlistLock::acquire_for`].
pub struct UidlistLock {
    lock_path: PathBuf,
    list_path: PathBuf,
    file: Option<File>,
}

impl UidlistLock {
    /// Create the lock with O_EXCL, waiting up to `wait`; a lock file older than `stale_after`
    /// is taken over.
    pub fn acquire(maildir: &Path, wait: Duration, stale_after: Duration) -> io::Result<Self> {
        UidlistLock::acquire_for(&maildir.join(UIDLIST_NAME), wait, stale_after)
    }

    /// The dotlock `<target>.lock` of any file `target`, as Dovecot's file_dotlock_open.
    pub fn acquire_for(target: &Path, wait: Duration, stale_after: Duration) -> io::Result<Self> {
        let mut lock_name = target.as_os_str().to_owned();
        lock_name.push(".lock");
        let lock_path = PathBuf::from(lock_name);
        let deadline = SystemTime::now() + wait;
        let mut pause = Duration::from_millis(10);
        loop {
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&lock_path);
            match created {
                Ok(file) => {
                    return Ok(UidlistLock {
                        list_path: target.to_path_buf(),
                        lock_path,
                        file: Some(file),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if remove_if_stale(&lock_path, stale_after)? {
                continue;
            }
            if SystemTime::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} is held by another process", lock_path.display()),
                ));
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Write `list` into the lock file, flush it to disk and rename it over the list: readers
    /// see the old or the new list, never a partial one. Releases the lock.
    /// Returns where a reader of the new list stands after reading it whole.
    pub fn replace(self, list: &Uidlist) -> io::Result<ListCursor> {
        use std::os::unix::fs::MetadataExt;
        let text = list.serialize();
        let ino = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("uidlist lock already used"))?
            .metadata()?
            .ino();
        self.replace_with(text.as_bytes())?;
        Ok(ListCursor::after(list, ino, &text))
    }

    /// Write `contents` into the lock file, flush it and rename it over the locked file.
    pub fn replace_with(mut self, contents: &[u8]) -> io::Result<()> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("uidlist lock already used"))?;
        file.write_all(contents)?;
        file.sync_data()?;
        drop(file);
        fs::rename(&self.lock_path, &self.list_path)
    }
}

impl Drop for UidlistLock {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Best effort: a lock we fail to remove goes stale and is taken over later.
            let _ = fs::remove_file(&self.lock_path);
        }
    }
}

/// Remove the lock file when it has not been modified for `stale_after`. True when removed
/// (or already gone), so the caller retries at once.
fn remove_if_stale(lock_path: &Path, stale_after: Duration) -> io::Result<bool> {
    let modified = match fs::metadata(lock_path).and_then(|m| m.modified()) {
        Ok(modified) => modified,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    if age < stale_after {
        return Ok(false);
    }
    match fs::remove_file(lock_path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::maildir::tests::TempDir;

    const DOVECOT_WRITTEN: &str = "3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n\
        25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394:2,\n\
        25017 W2481 :1276533073.M242911P3632.kurkku:2,F\n\
        25021 G4f2b6c1d8e9a0b1c2d3e4f5a6b7c8d9e W612 S600 :1276533080.M1P2.kurkku\n";

    #[test]
    fn reads_dovecot_written_list() {
        let list = Uidlist::parse(DOVECOT_WRITTEN).unwrap();
        assert_eq!(list.uid_validity, 1275660208);
        assert_eq!(list.next_uid, 25022);
        assert_eq!(list.header_extra, ["G3085f01b7f11094c501100008c4a11c1"]);
        assert_eq!(list.records.len(), 3);
        assert_eq!(list.records[0].uid, 25006);
        assert_eq!(
            list.records[0].base,
            "1276528487.M364837P9451.kurkku,S=1355,W=1394"
        );
        assert_eq!(list.records[1].extension('W'), Some("2481"));
        assert_eq!(list.records[1].base, "1276533073.M242911P3632.kurkku");
        assert_eq!(list.records[2].extension('S'), Some("600"));
        assert!(!list.outdated);
    }

    #[test]
    fn round_trips_version3() {
        let list = Uidlist::parse(DOVECOT_WRITTEN).unwrap();
        let text = list.serialize();
        assert!(text.starts_with("3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n"));
        assert!(text.contains("\n25017 W2481 :1276533073.M242911P3632.kurkku\n"));
        assert!(text.contains("\n25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394\n"));
        assert_eq!(Uidlist::parse(&text).unwrap(), list);
    }

    #[test]
    fn reads_version1_and_skips_bad_records() {
        let list =
            Uidlist::parse("1 1000 5\n1 a.b.c:2,S\nx junk\n3 d.e.f\n2 out.of.order\n").unwrap();
        assert_eq!(list.uid_validity, 1000);
        assert_eq!(list.next_uid, 5);
        let uids: Vec<u32> = list.records.iter().map(|r| r.uid).collect();
        assert_eq!(uids, [1, 3]);
        assert_eq!(list.records[0].base, "a.b.c");
        assert!(list.outdated);
        assert!(Uidlist::parse("9 garbage\n").is_err());
        assert!(Uidlist::parse("3 N5\n").is_err());
        // N lower than a listed UID is raised past it.
        assert_eq!(Uidlist::parse("3 V1 N2\n7 :x\n").unwrap().next_uid, 8);
    }

    #[test]
    fn read_since_takes_only_whole_appended_lines_of_the_same_file() {
        let dir = TempDir::new();
        let path = dir.path().join(UIDLIST_NAME);
        fs::write(&path, "3 V7 N3 Gabc\n1 :a\n2 :b\n").unwrap();
        let (list, file) = read_for_append(dir.path()).unwrap().unwrap();
        let cursor = file.cursor.unwrap();
        assert_eq!((list.next_uid, cursor.next_uid), (3, 3));
        assert_eq!(read_since(dir.path(), &cursor).unwrap().unwrap().0, []);

        let append = |text: &str| {
            let file = OpenOptions::new().append(true).open(&path).unwrap();
            (&file).write_all(text.as_bytes()).unwrap();
        };
        append("5 W12 :e\n4 :out-of-order\n");
        let (records, after) = read_since(dir.path(), &cursor).unwrap().unwrap();
        let got: Vec<(u32, &str)> = records.iter().map(|r| (r.uid, r.base.as_str())).collect();
        assert_eq!(got, [(5, "e")]);
        assert_eq!(records[0].extension('W'), Some("12"));
        assert_eq!(after.next_uid, 6);
        // A line being written (or torn) is not read: the whole file is, later.
        append("6 :f");
        assert!(read_since(dir.path(), &after).unwrap().is_none());
        // The same inode with another header is another list.
        let text = fs::read_to_string(&path).unwrap().replace("N3", "N9");
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        append("\n");
        assert!(read_since(dir.path(), &cursor).unwrap().is_none());
        // Replaced (a new inode): read whole.
        fs::write(dir.path().join("x"), "3 V7 N3 Gabc\n1 :a\n2 :b\n7 :g\n").unwrap();
        fs::rename(dir.path().join("x"), &path).unwrap();
        assert!(read_since(dir.path(), &cursor).unwrap().is_none());
    }

    #[test]
    fn lock_excludes_then_replaces_atomically() {
        let dir = TempDir::new();
        let first = UidlistLock::acquire(dir.path(), Duration::ZERO, STALE_AFTER).unwrap();
        let second = UidlistLock::acquire(dir.path(), Duration::from_millis(50), STALE_AFTER);
        assert_eq!(
            second.err().map(|e| e.kind()),
            Some(io::ErrorKind::TimedOut)
        );
        let list = Uidlist::new(42);
        first.replace(&list).unwrap();
        assert!(!dir.path().join(LOCK_NAME).exists());
        assert_eq!(read(dir.path()).unwrap(), Some(list));
    }

    #[test]
    fn dropped_lock_is_removed_and_stale_lock_taken_over() {
        let dir = TempDir::new();
        drop(UidlistLock::acquire(dir.path(), Duration::ZERO, STALE_AFTER).unwrap());
        assert!(!dir.path().join(LOCK_NAME).exists());

        let stale = File::create(dir.path().join(LOCK_NAME)).unwrap();
        stale
            .set_modified(SystemTime::now() - Duration::from_secs(121))
            .unwrap();
        let lock = UidlistLock::acquire(dir.path(), Duration::ZERO, STALE_AFTER);
        assert!(lock.is_ok(), "a 121 s old lock must be taken over");
    }
}
