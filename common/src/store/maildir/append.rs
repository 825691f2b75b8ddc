//! Delivering new messages into a Maildir (IMAP APPEND, COPY, MOVE), as Dovecot does: each is
//! written into `tmp/` under a unique name `<secs>.M<usecs>P<pid>.<host>,S=<size>,W=<vsize>`,
//! flushed to disk, given its INTERNALDATE as mtime, then renamed into `new/` and listed in
//! `dovecot-uidlist`. Flags and keywords go in the name (`:2,<letters>`) even in `new/`, which
//! Dovecot and mutt read: a message placed in `new/` is `\Recent` for the first session to
//! claim it (rename it into `cur/`), so a COPY or a flagged APPEND is `\Recent` in the session
//! that has the mailbox selected, as RFC 3501 wants (Dovecot keeps that in its index instead).
//!
//! Owns the unique names, the line-end conversion (bodies are stored with LF, as Dovecot's
//! default `mail_save_crlf = no`; `W=` is the CRLF size we present) and the group commit.
//! The uidlist lock is held across "rename into place + list" (records appended at the end of
//! `dovecot-uidlist`, as Dovecot does; only `new/` is flushed, `cur/` is untouched): concurrent
//! appenders and readers never see a placed message without its UID being decided by the lock
//! holder, so no message ever gets two UIDs. On error nothing is visible; a crash after the renames leaves
//! the messages in place without UIDs, and the next opener numbers them: nothing is lost or
//! duplicated. Never touches existing messages.

use super::keywords::{self, Keywords};
use super::uidlist::{self, ListCursor, ListFile, Record, Uidlist, UidlistLock};
use super::{io_at, name, validity, Subdir, UIDLIST_LOCK_WAIT};
use crate::store::{Flags, NewMessage, StoreError};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A message written into `tmp/`, waiting to be renamed into place.
struct Staged {
    tmp: PathBuf,
    base: String,
    subdir: Subdir,
    name: String,
}

impl Staged {
    fn target(&self, root: &Path) -> PathBuf {
        root.join(self.subdir.name()).join(&self.name)
    }
}

/// Append `messages` to the Maildir at `root` (which must exist); keyword names are added to
/// `dovecot-keywords` as needed (ones beyond its 26 letters are dropped). Returns UIDVALIDITY
/// and the new UIDs, consecutive and in order.
pub fn append(
    root: &Path,
    keywords: &mut Keywords,
    messages: &mut [NewMessage<'_>],
) -> Result<(u32, Vec<u32>), StoreError> {
    append_at(root, keywords, messages, None)
}

/// [`append`] by a session that read `dovecot-uidlist` up to `cursor`: when the file has only
/// grown since, just the new end is read.
pub fn append_at(
    root: &Path,
    keywords: &mut Keywords,
    messages: &mut [NewMessage<'_>],
    cursor: Option<&ListCursor>,
) -> Result<(u32, Vec<u32>), StoreError> {
    let mut staged: Vec<Staged> = Vec::with_capacity(messages.len());
    let result = stage_all(root, keywords, messages, &mut staged)
        .and_then(|()| place_and_number(root, &staged, cursor));
    if result.is_err() {
        for message in &staged {
            // Best effort: a leftover tmp/ file is invisible and Dovecot sweeps old ones.
            let _ = fs::remove_file(&message.tmp);
        }
    }
    result
}

fn stage_all(
    root: &Path,
    keywords: &mut Keywords,
    messages: &mut [NewMessage<'_>],
    staged: &mut Vec<Staged>,
) -> Result<(), StoreError> {
    for message in messages.iter_mut() {
        let letters = keyword_letters(root, keywords, message.keywords)?;
        staged.push(stage(root, message, &letters)?);
    }
    Ok(())
}

/// The info letters for keyword `names`, adding new names to `dovecot-keywords`.
fn keyword_letters(
    root: &Path,
    keywords: &mut Keywords,
    names: &[String],
) -> Result<String, StoreError> {
    let mut bits = 0u64;
    for keyword in names {
        if keywords.bit_of(keyword).is_none() {
            let path = root.join(keywords::KEYWORDS_NAME);
            if keywords::add(root, keyword).map_err(io_at(path.clone()))? {
                keywords.reload(root).map_err(io_at(path))?;
            }
        }
        if let Some(bit) = keywords.bit_of(keyword) {
            bits |= 1 << bit;
        }
    }
    Ok(keywords.letters(bits))
}

/// Write one message into `tmp/` (LF line ends), flush it, set its mtime.
fn stage(root: &Path, message: &mut NewMessage<'_>, letters: &str) -> Result<Staged, StoreError> {
    let (stem, tmp, file) = create_unique(root)?;
    let fail = io_at(tmp.clone());
    let staged = (|| {
        let mut out = BufWriter::new(file);
        let counts = copy_as_lf(&mut message.source, &mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        let when = match message.internal_date {
            Some((secs, _zone)) => date_to_system_time(secs),
            None => SystemTime::now(),
        };
        file.set_times(FileTimes::new().set_modified(when).set_accessed(when))?;
        file.sync_all()?;
        Ok::<_, io::Error>(counts)
    })();
    let (size, vsize) = match staged {
        Ok(counts) => counts,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(fail(e));
        }
    };
    let base = format!("{stem},S={size},W={vsize}");
    let has_info = message.flags != Flags::NONE || !letters.is_empty();
    let name = if has_info {
        name::build(&base, message.flags, letters)
    } else {
        base.clone()
    };
    let subdir = Subdir::New;
    Ok(Staged {
        tmp,
        base,
        subdir,
        name,
    })
}

/// Under the uidlist lock: rename every staged message into place, then list them: appended
/// to `dovecot-uidlist` in place as Dovecot does, or by rewriting it when it cannot be appended
/// to (none yet, an old version, a torn last line).
fn place_and_number(
    root: &Path,
    staged: &[Staged],
    cursor: Option<&ListCursor>,
) -> Result<(u32, Vec<u32>), StoreError> {
    let list_path = root.join(uidlist::UIDLIST_NAME);
    let lock = UidlistLock::acquire(root, UIDLIST_LOCK_WAIT, uidlist::STALE_AFTER)
        .map_err(io_at(root.join(uidlist::LOCK_NAME)))?;
    let (mut list, file, list_is_partial) = read_list(root, cursor)?;
    let first_new = list.records.len();
    let mut uids = Vec::with_capacity(staged.len());
    for message in staged {
        let uid = list.next_uid;
        list.next_uid = uid.checked_add(1).ok_or_else(|| {
            StoreError::Damaged(format!("{}: UIDs exhausted", list_path.display()))
        })?;
        list.records.push(Record {
            uid,
            extensions: Vec::new(),
            base: message.base.clone(),
        });
        uids.push(uid);
    }
    let mut placed = 0;
    let outcome = (|| {
        for message in staged {
            fs::rename(&message.tmp, message.target(root)).map_err(io_at(message.tmp.clone()))?;
            placed += 1;
        }
        // Only new/ gained entries: cur/ is untouched, so it needs no flush.
        let dir = root.join(Subdir::New.name());
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(dir))?;
        let new_records = &list.records[first_new..];
        let appended = match &file {
            Some(file) => file
                .append_in_place(root, new_records)
                .map_err(io_at(list_path.clone()))?,
            None => false,
        };
        if appended {
            drop(lock);
            Ok(())
        } else if list_is_partial {
            // Only its end was read: never write that over the whole list.
            Err(StoreError::Io(
                list_path.clone(),
                io::Error::other("dovecot-uidlist changed while locked"),
            ))
        } else {
            lock.replace(&list)
                .map(|_| ())
                .map_err(io_at(list_path.clone()))
        }
    })();
    if let Err(e) = outcome {
        // Not listed: take back what was placed so that none of the group is visible.
        for message in &staged[..placed] {
            let _ = fs::rename(message.target(root), &message.tmp);
        }
        return Err(e);
    }
    Ok((list.uid_validity, uids))
}

/// The list as it is now (under its lock), and whether it is partial: from `cursor` on when
/// only its end is new (UIDVALIDITY and the next UID, no records: to be appended to, never
/// written whole), else read whole; a fresh one when there is none.
fn read_list(
    root: &Path,
    cursor: Option<&ListCursor>,
) -> Result<(Uidlist, Option<ListFile>, bool), StoreError> {
    let list_path = root.join(uidlist::UIDLIST_NAME);
    if let Some(cursor) = cursor {
        if let Ok(Some((_, now))) = uidlist::read_since(root, cursor) {
            let mut list = Uidlist::new(now.uid_validity);
            list.next_uid = now.next_uid;
            return Ok((list, Some(ListFile::at(&now)), true));
        }
    }
    match uidlist::read_for_append(root) {
        Ok(Some((list, file))) => Ok((list, Some(file), false)),
        Ok(None) => Ok((Uidlist::new(validity::next(root)), None, false)),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            Err(StoreError::Damaged(format!("{}: {e}", list_path.display())))
        }
        Err(e) => Err(StoreError::Io(list_path, e)),
    }
}

/// Copy `source` to `out` with CRLF turned into LF. Returns the stored size and the size as
/// presented (every LF not preceded by CR counted twice), as `body::presented_size` computes.
fn copy_as_lf(source: &mut dyn Read, out: &mut impl Write) -> io::Result<(u64, u64)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut converted = Vec::with_capacity(buf.len() + 1);
    let mut pending_cr = false;
    let mut last_written = 0u8;
    let (mut size, mut vsize) = (0u64, 0u64);
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        converted.clear();
        for &byte in &buf[..n] {
            match byte {
                b'\r' if pending_cr => converted.push(b'\r'),
                b'\r' => pending_cr = true,
                b'\n' => {
                    pending_cr = false;
                    converted.push(b'\n');
                }
                other => {
                    if std::mem::take(&mut pending_cr) {
                        converted.push(b'\r');
                    }
                    converted.push(other);
                }
            }
        }
        count(&converted, &mut last_written, &mut size, &mut vsize);
        out.write_all(&converted)?;
    }
    if pending_cr {
        count(b"\r", &mut last_written, &mut size, &mut vsize);
        out.write_all(b"\r")?;
    }
    out.flush()?;
    Ok((size, vsize))
}

fn count(bytes: &[u8], last: &mut u8, size: &mut u64, vsize: &mut u64) {
    for &byte in bytes {
        if byte == b'\n' && *last != b'\r' {
            *vsize += 1;
        }
        *last = byte;
    }
    *size += bytes.len() as u64;
    *vsize += bytes.len() as u64;
}

/// A new file in `tmp/` under a name no other delivery uses: `<secs>.M<usecs>P<pid>.<host>`,
/// the time made strictly increasing within this process.
fn create_unique(root: &Path) -> Result<(String, PathBuf, File), StoreError> {
    static LAST: Mutex<(u64, u32)> = Mutex::new((0, 0));
    let host = host_name();
    loop {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, usecs) = {
            let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut next = (now.as_secs(), now.subsec_micros());
            if next <= *last {
                next = if last.1 >= 999_999 {
                    (last.0 + 1, 0)
                } else {
                    (last.0, last.1 + 1)
                };
            }
            *last = next;
            next
        };
        let stem = format!("{secs}.M{usecs}P{}.{host}", std::process::id());
        let tmp = root.join("tmp").join(&stem);
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp);
        match created {
            Ok(file) => return Ok((stem, tmp, file)),
            // Left by a crashed process that had our pid: take the next microsecond.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(StoreError::Io(tmp, e)),
        }
    }
}

/// This host's name with `/` and `:` escaped as Dovecot does (`\057`, `\072`).
fn host_name() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let raw = raw.trim();
    let raw = if raw.is_empty() { "localhost" } else { raw };
    raw.replace('/', "\\057").replace(':', "\\072")
}

fn date_to_system_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(after) => SystemTime::UNIX_EPOCH + Duration::from_secs(after),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{maildir, names_in, read_all, uids};
    use super::super::MaildirMailbox;
    use super::*;
    use crate::store::{Access, Mailbox};
    use std::os::unix::fs::MetadataExt;

    fn message<'a>(source: &'a mut &'static [u8], flags: Flags) -> NewMessage<'a> {
        NewMessage {
            len: Some(source.len() as u64),
            source,
            flags,
            keywords: &[],
            internal_date: None,
        }
    }

    #[test]
    fn appends_several_with_consecutive_uids_normalised_and_dated() {
        let (_tmp, root) = maildir();
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        let mut a: &[u8] = b"Subject: a\r\n\r\nCRLF body\r\n";
        let mut b: &[u8] = b"Subject: b\n\nLF body\n";
        let mut c: &[u8] = b"Subject: c\r\n\r\nno end";
        let mut batch = [
            message(&mut a, Flags::NONE),
            message(&mut b, Flags::SEEN.union(Flags::FLAGGED)),
            message(&mut c, Flags::NONE),
        ];
        batch[0].internal_date = Some((1_000_000_000, 120));
        let appended = mailbox.append(&mut batch).unwrap();
        assert_eq!(appended, [1, 2, 3]);
        // The index is not updated until the refresh reports them.
        assert!(mailbox.messages().is_empty());
        let changes = mailbox.refresh().unwrap();
        assert_eq!(changes.appended, 3);
        assert_eq!(uids(&mailbox), [1, 2, 3]);
        assert_eq!(mailbox.uid_next(), 4);

        let presented: [&[u8]; 3] = [
            b"Subject: a\r\n\r\nCRLF body\r\n",
            b"Subject: b\r\n\r\nLF body\r\n",
            b"Subject: c\r\n\r\nno end",
        ];
        for (index, want) in presented.iter().enumerate() {
            assert_eq!(read_all(&mut mailbox, index).unwrap(), *want);
            assert_eq!(mailbox.messages()[index].size, want.len() as u64);
        }
        assert_eq!(mailbox.internal_date(0), (1_000_000_000, 0));
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((mailbox.internal_date(1).0 - now).abs() < 60);
        assert_eq!(
            mailbox.messages()[1].flags,
            Flags::SEEN.union(Flags::FLAGGED)
        );
        // Appended with or without flags: recent, and ours (claimed at refresh).
        assert!(mailbox.messages().iter().all(|m| m.recent));
        // Stored with LF, named the Dovecot way with both sizes.
        let names = names_in(&root, "cur");
        let first = names.iter().find(|n| n.contains(",S=22,W=25")).unwrap();
        let stored = fs::read(root.join("cur").join(first)).unwrap();
        assert_eq!(stored, b"Subject: a\n\nCRLF body\n");
        let pid = format!("P{}.", std::process::id());
        assert!(names.iter().all(|n| n.contains(".M") && n.contains(&pid)));
        assert!(names.iter().any(|n| n.ends_with(":2,FS")));
        assert!(names_in(&root, "tmp").is_empty());
    }

    #[test]
    fn appended_keywords_are_added_to_dovecot_keywords() {
        let (_tmp, root) = maildir();
        let mut keywords = Keywords::default();
        let mut body: &[u8] = b"x\n";
        let names = ["$Forwarded".to_string(), "Work".to_string()];
        let mut batch = [NewMessage {
            source: &mut body,
            len: None,
            flags: Flags::NONE,
            keywords: &names,
            internal_date: None,
        }];
        let (_, uids_got) = append(&root, &mut keywords, &mut batch).unwrap();
        assert_eq!(uids_got, [1]);
        assert_eq!(
            fs::read_to_string(root.join(keywords::KEYWORDS_NAME)).unwrap(),
            "0 $Forwarded\n1 Work\n"
        );
        let new = names_in(&root, "new");
        assert!(new[0].ends_with(":2,ab"), "{new:?}");
        let mailbox = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        assert_eq!(mailbox.keyword_names(), ["$Forwarded", "Work"]);
        assert_eq!(mailbox.messages()[0].keywords, 0b11);
        assert!(mailbox.messages()[0].recent);
        // The first writer claims it: into cur/ with its letters kept, recent for it alone.
        let claimer = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert!(claimer.messages()[0].recent);
        assert_eq!(claimer.messages()[0].keywords, 0b11);
        assert!(names_in(&root, "cur")[0].ends_with(":2,ab"));
        let later = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert!(!later.messages()[0].recent);
    }

    /// A source that fails after a few bytes, as a dropped connection mid-literal.
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "client went away",
            ))
        }
    }

    #[test]
    fn a_failed_group_leaves_nothing_visible() {
        let (_tmp, root) = maildir();
        drop(MaildirMailbox::open(&root, Access::Shared).unwrap());
        let list_before = fs::read(root.join(uidlist::UIDLIST_NAME)).unwrap();
        let mut good: &[u8] = b"fine\n";
        let mut broken = Broken;
        let mut batch = [
            message(&mut good, Flags::NONE),
            NewMessage {
                source: &mut broken,
                len: None,
                flags: Flags::NONE,
                keywords: &[],
                internal_date: None,
            },
        ];
        let result = append(&root, &mut Keywords::default(), &mut batch);
        assert!(matches!(result, Err(StoreError::Io(..))));
        for sub in ["new", "cur", "tmp"] {
            assert!(names_in(&root, sub).is_empty(), "{sub}");
        }
        assert_eq!(
            fs::read(root.join(uidlist::UIDLIST_NAME)).unwrap(),
            list_before
        );
    }

    #[test]
    fn concurrent_appenders_never_share_a_uid() {
        let (_tmp, root) = maildir();
        let appenders: Vec<_> = (0..4)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for _ in 0..10 {
                        let mut body: &[u8] = b"m\n";
                        let mut batch = [message(&mut body, Flags::NONE)];
                        let (_, uids) =
                            append(&root, &mut Keywords::default(), &mut batch).unwrap();
                        got.extend(uids);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<u32> = appenders
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=40).collect::<Vec<u32>>());
        let mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(uids(&mailbox), all);
        assert_eq!(mailbox.uid_next(), 41);
    }

    #[test]
    fn uidlist_grows_in_place_and_a_torn_last_line_is_rewritten() {
        let (_tmp, root) = maildir();
        let mut keywords = Keywords::default();
        let list_path = root.join(uidlist::UIDLIST_NAME);
        let mut append_one = || {
            let mut body: &'static [u8] = b"x\n";
            let mut batch = [message(&mut body, Flags::NONE)];
            append(&root, &mut keywords, &mut batch).unwrap().1
        };
        assert_eq!(append_one(), [1]);
        let before = fs::read(&list_path).unwrap();
        let inode = fs::metadata(&list_path).unwrap().ino();
        assert_eq!(append_one(), [2]);
        let after = fs::read(&list_path).unwrap();
        assert_eq!(
            fs::metadata(&list_path).unwrap().ino(),
            inode,
            "appended in place"
        );
        assert!(after.starts_with(&before) && after.len() > before.len());
        assert!(!root.join(uidlist::LOCK_NAME).exists());

        // A crash mid-append left half a line: the next append rewrites the list whole.
        let mut torn = after.clone();
        torn.extend_from_slice(b"3 :1700000000.M1P1.gone,S=");
        fs::write(&list_path, &torn).unwrap();
        assert_eq!(append_one(), [4]);
        let list = uidlist::read(&root).unwrap().unwrap();
        let listed: Vec<u32> = list.records.iter().map(|r| r.uid).collect();
        assert_eq!(listed, [1, 2, 3, 4]);
        assert!(fs::read(&list_path).unwrap().ends_with(b"\n"));
        let mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(uids(&mailbox), [1, 2, 4]);
    }

    #[test]
    fn read_only_mailbox_refuses_append() {
        let (_tmp, root) = maildir();
        let mut examiner = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        let mut body: &[u8] = b"x\n";
        let result = examiner.append(&mut [message(&mut body, Flags::NONE)]);
        assert!(matches!(result, Err(StoreError::Refused(_))));
        assert!(names_in(&root, "new").is_empty() && names_in(&root, "tmp").is_empty());
    }

    #[test]
    fn lf_conversion_agrees_with_presented_size() {
        let (_tmp, root) = maildir();
        let cases: [&[u8]; 6] = [
            b"a\r\nb\r\n",
            b"a\nb\n",
            b"cr\ronly\r",
            b"double\r\r\nend",
            b"",
            b"\r\n\r\n\n",
        ];
        for (n, case) in cases.iter().enumerate() {
            let mut stored = Vec::new();
            let (size, vsize) = copy_as_lf(&mut &case[..], &mut stored).unwrap();
            assert_eq!(size, stored.len() as u64);
            assert!(!stored.windows(2).any(|w| w == b"\r\n") || case.starts_with(b"double"));
            let path = root.join(format!("case{n}"));
            fs::write(&path, &stored).unwrap();
            assert_eq!(super::super::body::presented_size(&path).unwrap(), vsize);
        }
    }

    #[test]
    fn unique_names_within_one_process() {
        let (_tmp, root) = maildir();
        let mut names = std::collections::HashSet::new();
        for _ in 0..200 {
            let (stem, tmp, _file) = create_unique(&root).unwrap();
            assert!(names.insert(stem));
            assert_eq!(fs::metadata(tmp).unwrap().mode() & 0o777, 0o600);
        }
    }
}
