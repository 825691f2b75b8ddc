//! UW-compatible mbox mailboxes (the `/var/mail/$USER` spool and folders), read and written
//! byte-compatibly with UW-IMAP imap-2007f's "unix" driver.
//!
//! Owns: parsing the file into a compact index (`parse`, and `incremental` for a file that
//! merely grew or was rewritten in place), presenting messages (`reader`), writing flags/UIDs
//! back and expunging in place (`rewrite`) behind an undo journal (`journal`), appending
//! (`append`), and the folder tree of a user ([`MboxStore`], `folders`). Every read and write of
//! the file happens under [`MailboxLock`]; a POP3 session additionally holds the
//! [`SessionLock`] for its whole life. Never keeps message bodies in memory, never replaces the
//! mailbox file by rename, and never writes in `ReadOnly` mode (except to finish the recovery
//! of a rewrite that a killed process left half done, and APPEND, which is not a change of the
//! open mailbox's state).
//!
//! Sessions share a mailbox by merging: [`Mailbox::refresh`] and every commit re-read what
//! others wrote and re-apply only this session's own pending flag and keyword changes on top,
//! matching messages by UID. A STORE on many messages goes to the flag log beside the file
//! (`flaglog`, used through `deferred`), which every session reads with the file and which is
//! written into the file later ([`Mailbox::write_deferred`], or any rewrite). A read-write
//! session writes `O` into messages no session had seen (at open and at refresh), so that
//! exactly one session reports them `\Recent`.
//!
//! Rewrites need room for a journal: `.<name>.mbox-journal` beside the mailbox, or, when that
//! directory is not writable (a setgid-mail spool), `$HOME/.mbox-journal.<dev>.<ino>` — so
//! `HOME` must be set once privileges are dropped.
//!
//! Deliberate differences from imap-2007f: `Content-Length` is hidden from clients (kept in the
//! file); line ends are kept as stored when a message is rewritten (UW squeezes CRs out of moved
//! text only); an unchanged first message is not rewritten (UW rewrites it to the same bytes).

mod append;
mod compact;
mod deferred;
mod disk;
mod flaglog;
mod folders;
mod fromline;
mod incremental;
mod journal;
mod lines;
mod meta;
mod parse;
mod patch;
mod reader;
mod rewrite;

pub use folders::MboxStore;

use super::lock::{MailboxLock, ReadLock, SessionLock};
use super::{
    Access, Changes, CommitReport, Expunge, Flags, Mailbox, MailboxChanged, MessageInfo,
    NewMessage, StoreError,
};
use deferred::{overlay, LogNow};
use meta::{keyword_words, BaseInfo, MAX_KEYWORDS};
use parse::{Entry, ParseError, Parsed, PseudoInfo};
use rewrite::{Snapshot, Style};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long to wait for the mailbox lock (UW: five minutes).
const LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// What the file looked like when we last parsed or wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    fn of(file: &File) -> io::Result<FileStamp> {
        Ok(FileStamp::from_metadata(&file.metadata()?))
    }

    fn from_metadata(m: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

/// One open mbox file.
pub struct MboxMailbox {
    path: PathBuf,
    access: Access,
    helper: PathBuf,
    style: Style,
    file: Option<File>,
    stamp: Option<FileStamp>,
    entries: Vec<Entry>,
    infos: Vec<MessageInfo>,
    uid_validity: u32,
    uid_last: u32,
    keywords: Vec<String>,
    pseudo: Option<PseudoInfo>,
    first_meta: Option<Vec<u8>>,
    /// The file holds a UID for every message (else they are made up in memory).
    uids_stored: bool,
    /// Whether writes mark unseen messages `O` (this session reports them `\Recent`); false
    /// only for STATUS, which persists UIDs alone.
    claim_recent: bool,
    /// Our last append into the file as `.0` said, for a refresh that reads only its tail.
    own_append: Option<(FileStamp, append::CatchUp)>,
    /// UIDs (ascending) we appended already claimed (`O`): `\Recent` for us when they show up.
    claimed_by_append: Vec<u32>,
    /// The message [`Mailbox::hold_message`] keeps readable, and the read lock doing it.
    held: Option<(usize, ReadLock)>,
    /// Where the last reader that skipped into a message's body started, so that the next
    /// piece of the same message need not count from its start. Keyed by the message's UID
    /// and the place of its body: a body never changes, so while these are the same (and the
    /// reader checked the message is in place) the point holds, across refreshes too.
    seek_hint: Option<(SeekKey, reader::SeekPoint)>,
    /// The flag log (see [`flaglog`]) as last read or written under the lock: flag changes
    /// the file does not hold yet. Every session applies it over what it parses.
    log: Option<flaglog::Log>,
    /// How many of `keywords` the file's own list has (the rest are names not written yet).
    disk_keyword_count: usize,
    _session: Option<SessionLock>,
}

/// A message's UID and the start and end of its body in the file.
type SeekKey = (u32, u64, u64);

fn no_message(index: usize) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no message {}", index + 1))
}

/// Sleep until the clock reads a later second than `second` (at most one second).
fn wait_past_second(second: u32) {
    let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
        return;
    };
    let target = Duration::from_secs(u64::from(second) + 1);
    if let Some(left) = target.checked_sub(since_epoch) {
        std::thread::sleep(left.min(Duration::from_secs(1)));
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

impl MboxMailbox {
    /// Open the spool INBOX at `path`: mailbox-wide data goes into `X-IMAPbase` of the first
    /// message unless the file already uses a pseudo-message. A missing file is an empty
    /// mailbox; nothing is created until there is something to write. `helper` is the setgid
    /// dotlock helper for spool directories we cannot write.
    pub fn open(path: &Path, access: Access, helper: &Path) -> Result<MboxMailbox, StoreError> {
        MboxMailbox::open_with_style(path, access, helper, Style::Base)
    }

    /// Open a folder other than the spool INBOX: like [`MboxMailbox::open`], but a file without
    /// metadata yet gets UW's pseudo-message ("DON'T DELETE THIS MESSAGE").
    pub fn open_folder(
        path: &Path,
        access: Access,
        helper: &Path,
    ) -> Result<MboxMailbox, StoreError> {
        MboxMailbox::open_with_style(path, access, helper, Style::Pseudo)
    }

    /// Open for STATUS: read-only, except that a file whose messages do not all have stored UIDs
    /// gets them stored (UIDVALIDITY in `X-IMAPbase`, or the pseudo-message of a `folder`, and
    /// `X-UID`s), as UW's STATUS does ("Assigning new unique identifiers to all messages"), so
    /// the UIDVALIDITY it reports is the one a later SELECT sees. Claims no `\Recent` and
    /// changes nothing else. When it cannot write (permissions, a busy lock), the answer is the
    /// read-only one.
    pub fn open_for_status(
        path: &Path,
        helper: &Path,
        folder: bool,
    ) -> Result<MboxMailbox, StoreError> {
        let style = if folder { Style::Pseudo } else { Style::Base };
        let reader = MboxMailbox::open_with_style(path, Access::ReadOnly, helper, style)?;
        if reader.uids_stored {
            return Ok(reader);
        }
        let mut writer = MboxMailbox::blank(path, Access::Shared, helper, style, None);
        writer.claim_recent = false;
        match writer.open_file() {
            Ok(file) => match writer.load(file) {
                Ok(()) => Ok(writer),
                Err(_) => Ok(reader),
            },
            Err(_) => Ok(reader),
        }
    }

    /// Create an empty folder at `path` holding only the pseudo-message (as UW's CREATE does).
    /// Fails if the file exists.
    pub fn create_folder(path: &Path) -> Result<(), StoreError> {
        let io_err = |e| StoreError::Io(path.to_path_buf(), e);
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(io_err(io::ErrorKind::AlreadyExists.into()));
        }
        // Written aside and linked into place: a kill never leaves a half-written folder, and
        // the link never replaces a mailbox created meanwhile.
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{name}.create-{}", std::process::id()));
        let validity = u32::try_from(now()).unwrap_or(1).max(1);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let base = BaseInfo {
                uid_validity: validity,
                uid_last: 0,
                keywords: &[],
            };
            let bytes = meta::pseudo_message(&base, now(), &host_name());
            io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        written.map_err(io_err)?;
        // The UIDVALIDITY is the creation second, as UW's. Let that second pass before anyone
        // can delete this folder and create it again, so that the new one gets a greater value
        // (RFC 3501 section 2.3.1.1) with no state kept beside the folders.
        wait_past_second(validity);
        Ok(())
    }

    fn open_with_style(
        path: &Path,
        access: Access,
        helper: &Path,
        style: Style,
    ) -> Result<MboxMailbox, StoreError> {
        // Only POP3 (Exclusive) takes the session lock. An IMAP session (Shared or ReadOnly)
        // opens even while a POP3 session holds the maildrop: both work under the mailbox lock
        // for every read and write and merge each other's changes by UID, so nothing is lost;
        // whether to tell the IMAP client about the POP3 session is protocol policy.
        let session = match access {
            Access::Exclusive => Some(SessionLock::try_acquire(path).map_err(StoreError::InUse)?),
            _ => None,
        };
        let mut mailbox = MboxMailbox::blank(path, access, helper, style, session);
        match mailbox.open_file() {
            Ok(file) => mailbox.load(file)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(mailbox.io_error(e)),
        }
        Ok(mailbox)
    }

    /// An empty mailbox at `path`, before its file is read.
    fn blank(
        path: &Path,
        access: Access,
        helper: &Path,
        style: Style,
        session: Option<SessionLock>,
    ) -> MboxMailbox {
        MboxMailbox {
            path: path.to_path_buf(),
            access,
            helper: helper.to_path_buf(),
            style,
            file: None,
            stamp: None,
            entries: Vec::new(),
            infos: Vec::new(),
            uid_validity: u32::try_from(now()).unwrap_or(1).max(1),
            uid_last: 0,
            keywords: Vec::new(),
            pseudo: None,
            first_meta: None,
            uids_stored: true,
            claim_recent: true,
            own_append: None,
            claimed_by_append: Vec::new(),
            held: None,
            seek_hint: None,
            log: None,
            disk_keyword_count: 0,
            _session: session,
        }
    }

    fn io_error(&self, e: io::Error) -> StoreError {
        StoreError::Io(self.path.clone(), e)
    }

    fn open_file(&self) -> io::Result<File> {
        let writable = self.access != Access::ReadOnly;
        OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&self.path)
    }

    fn lock(&self, file: &File) -> Result<MailboxLock, StoreError> {
        MailboxLock::acquire(&self.path, file, &self.helper, LOCK_TIMEOUT)
            .map_err(|e| self.io_error(e))
    }

    /// Undo an interrupted rewrite (see [`journal`]); call with the mailbox lock held.
    fn recover(&self, file: &File) -> Result<(), StoreError> {
        journal::recover(&self.path, file)
            .map(|_| ())
            .map_err(|e| self.io_error(e))
    }

    /// A read-only session holds only a read lock, so it must not replay a journal under it:
    /// the recovery takes the write lock on a writable descriptor of its own. This restore of
    /// the pre-crash bytes is the only write a read-only open ever makes.
    fn recover_for_reader(&self) -> Result<(), StoreError> {
        let writable = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|e| {
                StoreError::Damaged(format!(
                    "{}: an interrupted rewrite awaits recovery by a read-write session ({e})",
                    self.path.display()
                ))
            })?;
        let _lock = self.lock(&writable)?;
        self.recover(&writable)
    }

    fn journal_pending(&self, file: &File) -> Result<bool, StoreError> {
        journal::pending(&self.path, file).map_err(|e| self.io_error(e))
    }

    /// Take the mailbox lock on `file` after finishing any interrupted rewrite (see
    /// [`journal`]); a read-only session that finds one still pending gets `InUse`.
    fn lock_recovered(&self, file: &File) -> Result<MailboxLock, StoreError> {
        let read_only = self.access == Access::ReadOnly;
        if read_only && self.journal_pending(file)? {
            self.recover_for_reader()?;
        }
        let lock = self.lock(file)?;
        if !read_only {
            self.recover(file)?;
        } else if self.journal_pending(file)? {
            return Err(StoreError::InUse(format!(
                "{}: a rewrite was interrupted just now; try again",
                self.path.display()
            )));
        }
        Ok(lock)
    }

    /// Parse `file` under the lock. Unless read-only, persist made-up UIDs and claim `\Recent`
    /// (write `O` into messages no session has seen), so that one session only reports them.
    fn load(&mut self, file: File) -> Result<(), StoreError> {
        let _lock = self.lock_recovered(&file)?;
        let stamp = FileStamp::of(&file).map_err(|e| self.io_error(e))?;
        let mut parsed = self.parse_file(&file, stamp.len)?;
        let must_write =
            parsed.needs_persist || (self.claim_recent && parsed.infos.iter().any(|i| i.recent));
        let disk_names = parsed.keywords.len();
        self.log = None;
        let log = match self.read_log(stamp, parsed.uid_validity)? {
            LogNow::Unchanged => None,
            LogNow::Read(log) => log,
        };
        if let Some(log) = &log {
            overlay(&mut parsed, log);
        }
        self.adopt(parsed, None);
        self.disk_keyword_count = disk_names;
        self.log = log;
        self.file = Some(file);
        self.stamp = Some(stamp);
        if must_write && self.access != Access::ReadOnly {
            self.rewrite_locked(&|_| false)?;
        }
        Ok(())
    }

    /// The file as it is now (`stamp`), which has changed since `self.stamp`. When it is the
    /// same file, what is still in place of what we knew is re-read cheaply and only the rest
    /// parsed (see [`incremental`]); otherwise the whole file.
    fn parse_changed(&mut self, file: &File, stamp: FileStamp) -> Result<Parsed, StoreError> {
        if self.stamp == Some(stamp) {
            // Only the flag log changed: the file is as we indexed it.
            return Ok(self.disk_view());
        }
        if let Some(parsed) = self.parse_own_append(file, stamp) {
            return Ok(parsed);
        }
        if let Some(old) = self
            .stamp
            .filter(|o| o.dev == stamp.dev && o.ino == stamp.ino)
        {
            let known = incremental::Known {
                old_len: old.len,
                entries: &self.entries,
                infos: &self.infos,
                uid_validity: self.uid_validity,
                pseudo: self.pseudo.as_ref(),
            };
            match incremental::reparse_known(file, &known, stamp.len, now()) {
                Ok(Some(parsed)) => return Ok(parsed),
                Ok(None) | Err(ParseError::NotMbox(..)) => {}
                Err(ParseError::Io(e)) => return Err(self.io_error(e)),
            }
        }
        self.parse_file(file, stamp.len)
    }

    /// The file is as our own append left it, and we were up to date before it: the index the
    /// append computed under its lock (it parsed only the appended tail).
    fn parse_own_append(&mut self, file: &File, stamp: FileStamp) -> Option<Parsed> {
        let (before, catch_up) = self.own_append.take()?;
        if self.stamp != Some(before) || stamp != catch_up.after {
            return None;
        }
        #[cfg(test)]
        {
            tests::assert_matches_disk(file, stamp.len, &catch_up.parsed);
            tests::TAIL_ONLY.with(|n| n.set(n.get() + 1));
        }
        #[cfg(not(test))]
        let _ = file;
        Some(catch_up.parsed)
    }

    /// Whether the next refresh can take our own append's index without the lock: the file
    /// still has the stamp the append left (the same test as "unchanged" in
    /// [`Mailbox::refresh`]), and no message awaits our `O`, so nothing is to be written.
    fn own_append_is_current(&self, current: FileStamp) -> bool {
        let Some((before, catch_up)) = &self.own_append else {
            return false;
        };
        let nothing_to_claim = self.access == Access::ReadOnly
            || !self.claim_recent
            || catch_up.parsed.entries.iter().all(|e| e.disk_old);
        self.stamp == Some(*before) && catch_up.after == current && nothing_to_claim
    }

    /// Our index as the file holds it (disk flags, keywords and `O`), for an append that needs
    /// no parse while the file is unchanged. `None` when the file's keyword list is not
    /// exactly ours (we may have names not written yet) or is not where we can see it.
    fn known_for_append(&self) -> Option<append::Known> {
        let stamp = self.stamp?;
        self.file.as_ref()?;
        let (has_base, disk_keywords) = match &self.pseudo {
            Some(p) => (false, p.keywords.clone()),
            None => {
                let meta = self.first_meta.as_deref()?;
                let (validity, _, names) = meta
                    .split(|&c| c == b'\n')
                    .find_map(|line| meta::value_after(line, b"X-IMAPbase:"))
                    .and_then(incremental::base_value)?;
                (validity == self.uid_validity).then_some((true, names))?
            }
        };
        if disk_keywords != self.keywords {
            return None;
        }
        let parsed = Parsed {
            keywords: disk_keywords,
            has_base,
            needs_persist: false,
            ..self.disk_view()
        };
        Some(append::Known {
            stamp,
            parsed,
            claim_recent: self.access != Access::ReadOnly,
        })
    }

    fn parse_file(&self, file: &File, len: u64) -> Result<Parsed, StoreError> {
        #[cfg(test)]
        tests::FULL_PARSES.with(|n| n.set(n.get() + 1));
        parse::parse(file, len, now()).map_err(|e| match e {
            ParseError::Io(e) => self.io_error(e),
            ParseError::NotMbox(off, text) => StoreError::Damaged(format!(
                "{}: not an mbox file (no \"From \" line at offset {off}: {text:?})",
                self.path.display()
            )),
        })
    }

    /// Take a freshly parsed state. `session` is our previous index: `\Recent` is session state
    /// and carries over by UID.
    fn adopt(&mut self, parsed: Parsed, session: Option<&[MessageInfo]>) {
        let mut infos = parsed.infos;
        if let Some(old) = session {
            let mut j = 0;
            for info in infos.iter_mut() {
                while j < old.len() && old[j].uid < info.uid {
                    j += 1;
                }
                if let Some(o) = old.get(j).filter(|o| o.uid == info.uid) {
                    info.recent = o.recent;
                }
            }
        }
        if parsed.pseudo.is_some() {
            self.style = Style::Pseudo;
        } else if parsed.has_base {
            self.style = Style::Base;
        }
        self.entries = parsed.entries;
        self.infos = infos;
        self.uid_validity = parsed.uid_validity;
        self.uid_last = parsed.uid_last;
        self.keywords = parsed.keywords;
        self.pseudo = parsed.pseudo;
        self.first_meta = parsed.first_meta;
        self.uids_stored = !parsed.needs_persist;
        self.disk_keyword_count = self.keywords.len();
        self.own_append = None;
    }

    /// Index of keyword `name`, adding it to the mailbox's list if new. `None` when the name is
    /// not a valid keyword or the mailbox already has UW's maximum of 30.
    pub fn keyword_index(&mut self, name: &str) -> Option<usize> {
        if let Some(i) = self
            .keywords
            .iter()
            .position(|k| k.eq_ignore_ascii_case(name))
        {
            return Some(i);
        }
        if !valid_keyword(name) || self.keywords.len() >= MAX_KEYWORDS {
            return None;
        }
        self.keywords.push(name.to_string());
        Some(self.keywords.len() - 1)
    }

    /// Set message `index`'s keywords (bits of [`Mailbox::keyword_names`]) in memory; persisted by
    /// [`Mailbox::commit`].
    pub fn set_keywords(&mut self, index: usize, keywords: u64) {
        let known = if self.keywords.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << self.keywords.len()) - 1
        };
        if let Some(info) = self.infos.get_mut(index) {
            info.keywords = keywords & known;
        }
    }

    /// Re-read the file when someone else changed it since we last looked, keeping our pending
    /// flag changes by UID. Returns the indices of our messages that are gone.
    fn merge_fresh(&mut self, file: &File, stamp: FileStamp) -> Result<MergeResult, StoreError> {
        let mut fresh = self.parse_changed(file, stamp)?;
        let disk_names = fresh.keywords.len();
        // The log as this session knew it stays in `self.log` as the merge's base until the
        // merge is done; the log as it is now goes over the file's state.
        let new_log = match self.read_log(stamp, fresh.uid_validity)? {
            LogNow::Unchanged => None,
            LogNow::Read(log) => Some(log),
        };
        if let Some(log) = new_log.as_ref().map_or(self.log.as_ref(), Option::as_ref) {
            overlay(&mut fresh, log);
        }
        let ours_empty = self.infos.is_empty();
        if fresh.uid_validity != self.uid_validity && !ours_empty {
            let n = self.infos.len();
            self.adopt(fresh, None);
            self.disk_keyword_count = disk_names;
            if let Some(log) = new_log {
                self.log = log;
            }
            return Err(StoreError::Damaged(format!(
                "{}: UIDs were reassigned by another program; {n} messages' changes not saved",
                self.path.display()
            )));
        }
        let mut gone = Vec::new();
        let mut origin = vec![None; fresh.infos.len()];
        let shared = self.shared_states();
        let mut j = 0;
        for (i, ours) in self.infos.iter().enumerate() {
            while j < fresh.infos.len() && fresh.infos[j].uid < ours.uid {
                j += 1;
            }
            if j >= fresh.infos.len() || fresh.infos[j].uid != ours.uid {
                gone.push(i);
                continue;
            }
            origin[j] = Some(i);
            let theirs = &mut fresh.infos[j];
            theirs.recent = ours.recent;
            // Three-way merge: only the flags and keywords this session added or removed
            // since it last read them are applied over the file's (and the log's), so another
            // session's change to other flags of the same message survives.
            let (base_flags, base_keywords) = shared[i];
            let base = base_flags.bits();
            let (added, removed) = (ours.flags.bits() & !base, base & !ours.flags.bits());
            theirs.flags = Flags::from_bits((theirs.flags.bits() & !removed) | added);
            let base = base_keywords;
            if ours.keywords != base {
                let added =
                    translate_keywords(ours.keywords & !base, &self.keywords, &mut fresh.keywords);
                // Names the file lacks cannot be set there: look them up without adding.
                let removed = translate_keywords(
                    base & !ours.keywords,
                    &self.keywords,
                    &mut fresh.keywords.clone(),
                );
                theirs.keywords = (theirs.keywords & !removed) | added;
            }
        }
        self.take_claimed_by_append(&mut fresh.infos, &origin);
        self.adopt(fresh, None);
        self.disk_keyword_count = disk_names;
        if let Some(log) = new_log {
            self.log = log;
        }
        Ok(MergeResult { gone, origin })
    }

    /// Messages we appended with `O` already are `\Recent` for us alone when they first show.
    fn take_claimed_by_append(&mut self, fresh: &mut [MessageInfo], origin: &[Option<usize>]) {
        if self.claimed_by_append.is_empty() {
            return;
        }
        for (info, _) in fresh.iter_mut().zip(origin).filter(|(_, o)| o.is_none()) {
            if self.claimed_by_append.binary_search(&info.uid).is_ok() {
                info.recent = true;
            }
        }
        self.claimed_by_append.clear();
    }

    /// Write our state into the (locked) file, removing the messages `remove` picks.
    /// Returns the indices (in the current index) of the messages removed.
    fn rewrite_locked(
        &mut self,
        remove: &dyn Fn(&MessageInfo) -> bool,
    ) -> Result<Vec<usize>, StoreError> {
        if self.file.is_none() {
            return Ok(Vec::new());
        }
        let mut keep: Vec<bool> = self.infos.iter().map(|i| !remove(i)).collect();
        let removed: Vec<usize> = (0..keep.len()).filter(|&i| !keep[i]).collect();
        if keep.len() > 1 && removed.len() == keep.len() {
            self.cut_after_first_message()?;
            keep.truncate(1);
        }
        let Some(file) = self.file.as_ref() else {
            return Ok(Vec::new());
        };
        let len = self.stamp.map_or(0, |s| s.len);
        let snapshot = Snapshot {
            file,
            len,
            entries: &self.entries,
            infos: &self.infos,
            keep: &keep,
            style: self.style,
            uid_validity: self.uid_validity,
            uid_last: self.uid_last,
            keywords: &self.keywords,
            pseudo: self.pseudo.as_ref(),
            first_meta: self.first_meta.as_deref(),
            now: now(),
            claim_recent: self.claim_recent,
        };
        let plan = rewrite::plan(&snapshot, &host_name()).map_err(|e| self.io_error(e))?;
        if plan.is_noop() {
            self.drop_log()?;
            return Ok(removed);
        }
        let written = rewrite::written_index(&snapshot, &plan);
        rewrite::execute(&self.path, file, &snapshot, &plan).map_err(|e| self.io_error(e))?;
        let stamp = FileStamp::of(file).map_err(|e| self.io_error(e))?;
        let file = &file.try_clone().map_err(|e| self.io_error(e))?;
        let session: Vec<MessageInfo> = self
            .infos
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(i, _)| i.clone())
            .collect();
        // We know what we wrote: no need to read it back (unless only a parse can tell).
        let parsed = match written {
            Some(w) => self.parsed_from_written(w, session.clone()),
            None => self.parse_changed(file, stamp)?,
        };
        #[cfg(test)]
        tests::assert_matches_disk(file, stamp.len, &parsed);
        self.adopt(parsed, Some(&session));
        self.stamp = Some(stamp);
        // The file now holds every kept message's state, the log's included.
        self.drop_log()?;
        Ok(removed)
    }

    /// The index after our own rewrite, from what it wrote (see [`rewrite::written_index`]):
    /// `infos` are the kept messages, whose state the file now holds.
    fn parsed_from_written(&self, w: rewrite::Written, infos: Vec<MessageInfo>) -> Parsed {
        let uid_last = infos.iter().map(|i| i.uid).fold(self.uid_last, u32::max);
        Parsed {
            has_base: w.pseudo.is_none() && !w.entries.is_empty(),
            entries: w.entries,
            infos,
            uid_validity: self.uid_validity,
            uid_last,
            keywords: self.keywords.clone(),
            pseudo: w.pseudo,
            first_meta: w.first_meta,
            needs_persist: false,
        }
    }
}

/// Whether the bytes at `entry`'s offset still begin a message: a last check against a rewrite
/// that kept the file's length and timestamps (within one tick of the clock).
fn starts_with_from_line(file: &File, entry: &Entry) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut start = [0u8; 5];
    match file.read_exact_at(&mut start, entry.from_off) {
        Ok(()) => Ok(&start == b"From "),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// After the file changed since we indexed it (an MTA delivered, another session patched
/// flags), is message `entry` still exactly where the index says? Yes when it is the same file,
/// the message still starts with its `From ` line, still carries its own `X-UID`, and still
/// ends where it did (at end of file, or where a `From ` line begins). Anything else (a rewrite
/// moved it) means the caller must refresh first.
fn still_in_place(
    file: &File,
    then: Option<FileStamp>,
    now: FileStamp,
    entry: &Entry,
    uid: u32,
) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    const MAX_CHECKED_HEADER: u64 = 1 << 20;
    let same_file = then.is_some_and(|t| t.dev == now.dev && t.ino == now.ino);
    let header_len = entry.body_off.saturating_sub(entry.hdr_off);
    if !same_file || header_len > MAX_CHECKED_HEADER || entry.next_off > now.len {
        return Ok(false);
    }
    if !starts_with_from_line(file, entry)? {
        return Ok(false);
    }
    let ends_in_place = entry.next_off == now.len || {
        let mut next = [0u8; 5];
        file.read_exact_at(&mut next, entry.next_off).is_ok() && &next == b"From "
    };
    if !ends_in_place {
        return Ok(false);
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, entry.hdr_off)?;
    let own_uid = format!("X-UID: {uid}\n");
    Ok(header.split_inclusive(|&b| b == b'\n').any(|line| {
        line == own_uid.as_bytes()
            || line.strip_suffix(b"\r\n") == own_uid.as_bytes().strip_suffix(b"\n")
    }))
}

/// A keyword name UW can store: an IMAP atom without `]`, at most 50 bytes.
fn valid_keyword(name: &str) -> bool {
    keyword_words(name.as_bytes()).next() == Some(name.as_bytes())
        && !name
            .bytes()
            .any(|c| c <= b' ' || c >= 0x7f || b"(){%*\"\\]".contains(&c))
}

struct MergeResult {
    /// Our indices whose messages another program removed.
    gone: Vec<usize>,
    /// For each message of the merged index, its index in ours (None: new mail).
    origin: Vec<Option<usize>>,
}

/// Re-express keyword bits over `from` names as bits over `to` names (adding missing names).
fn translate_keywords(bits: u64, from: &[String], to: &mut Vec<String>) -> u64 {
    let mut out = 0u64;
    for (i, name) in from.iter().enumerate().take(64) {
        if bits & (1 << i) == 0 {
            continue;
        }
        let pos = match to.iter().position(|n| n.eq_ignore_ascii_case(name)) {
            Some(p) => Some(p),
            None if to.len() < MAX_KEYWORDS => {
                to.push(name.clone());
                Some(to.len() - 1)
            }
            None => None,
        };
        if let Some(p) = pos {
            out |= 1 << p;
        }
    }
    out
}

/// What a refresh reports, from the index before it and the merge.
fn changes_between(
    before: &[MessageInfo],
    before_names: &[String],
    after: &[MessageInfo],
    after_names: &[String],
    merge: &MergeResult,
) -> Changes {
    let names = |bits: u64, list: &[String]| -> Vec<String> {
        let mut v: Vec<String> = list
            .iter()
            .enumerate()
            .take(64)
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, n)| n.to_ascii_lowercase())
            .collect();
        v.sort_unstable();
        v
    };
    // Usually the list only grew: the same bit is the same name, no names to compare.
    let same_bits = before_names.len() <= after_names.len()
        && before_names
            .iter()
            .zip(after_names)
            .all(|(a, b)| a.eq_ignore_ascii_case(b));
    let keywords_differ = |old: u64, new: u64| match same_bits {
        true => old != new,
        false => names(old, before_names) != names(new, after_names),
    };
    let mut changes = Changes {
        expunged: merge.gone.clone(),
        ..Changes::default()
    };
    for (j, origin) in merge.origin.iter().enumerate() {
        match origin {
            None => changes.appended += 1,
            Some(i) => {
                let (old, new) = (&before[*i], &after[j]);
                if old.flags != new.flags || keywords_differ(old.keywords, new.keywords) {
                    changes.flags_changed.push(j);
                }
            }
        }
    }
    changes
}

impl MboxMailbox {
    /// The file is gone (deleted or renamed away): every message is expunged.
    fn forget_everything(&mut self) -> Changes {
        let expunged = (0..self.infos.len()).collect();
        self.entries.clear();
        self.infos.clear();
        self.pseudo = None;
        self.first_meta = None;
        self.file = None;
        self.stamp = None;
        Changes {
            expunged,
            ..Changes::default()
        }
    }

    /// Expunging every message: cut the file after the first one with a single truncate, so
    /// that the journaled rewrite turning what is left into the metadata holder saves only that
    /// first message instead of the whole mailbox. A kill right after the cut leaves the first
    /// message (to be deleted anyway) in place; nothing that was to stay is ever lost.
    fn cut_after_first_message(&mut self) -> Result<(), StoreError> {
        let (Some(file), Some(first)) = (self.file.as_ref(), self.entries.first()) else {
            return Ok(());
        };
        let cut = first.next_off;
        file.set_len(cut).map_err(|e| self.io_error(e))?;
        let stamp = FileStamp::of(file).map_err(|e| self.io_error(e))?;
        self.entries.truncate(1);
        self.infos.truncate(1);
        self.stamp = Some(stamp);
        Ok(())
    }

    /// With the lock held after a merge: write `O` into messages no session has seen yet, so
    /// that this session alone reports them `\Recent`. Writes nothing else: every message's
    /// flags and keywords are written as the file has them; our pending changes stay pending.
    fn claim_unseen_locked(&mut self) -> Result<(), StoreError> {
        let unclaimed = self
            .entries
            .iter()
            .zip(&self.infos)
            .any(|(e, i)| !e.disk_old && i.recent);
        if self.access == Access::ReadOnly || !unclaimed {
            return Ok(());
        }
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        let reader = file.try_clone().map_err(|e| self.io_error(e))?;
        let disk: Vec<MessageInfo> = self
            .entries
            .iter()
            .zip(&self.infos)
            .map(|(e, i)| MessageInfo {
                flags: e.disk_flags,
                keywords: e.disk_keywords,
                ..i.clone()
            })
            .collect();
        let keep = vec![true; disk.len()];
        let snapshot = Snapshot {
            file: &reader,
            len: self.stamp.map_or(0, |s| s.len),
            entries: &self.entries,
            infos: &disk,
            keep: &keep,
            style: self.style,
            uid_validity: self.uid_validity,
            uid_last: self.uid_last,
            keywords: &self.keywords,
            pseudo: self.pseudo.as_ref(),
            first_meta: self.first_meta.as_deref(),
            now: now(),
            claim_recent: true,
        };
        let plan = rewrite::plan(&snapshot, &host_name()).map_err(|e| self.io_error(e))?;
        if plan.is_noop() {
            return Ok(());
        }
        let written = rewrite::written_index(&snapshot, &plan);
        rewrite::execute(&self.path, &reader, &snapshot, &plan).map_err(|e| self.io_error(e))?;
        let stamp = FileStamp::of(&reader).map_err(|e| self.io_error(e))?;
        match written {
            // Nothing removed, every message's pending state kept: only the disk side changed.
            Some(w) => {
                #[cfg(test)]
                tests::assert_matches_disk(
                    &reader,
                    stamp.len,
                    &self.parsed_from_written(w.clone(), disk.clone()),
                );
                self.entries = w.entries;
                self.first_meta = w.first_meta;
                self.pseudo = w.pseudo;
            }
            None => {
                self.merge_fresh(&reader, stamp)?;
            }
        }
        self.stamp = Some(stamp);
        Ok(())
    }

    fn seek_key(&self, index: usize) -> Option<SeekKey> {
        let (entry, info) = (self.entries.get(index)?, self.infos.get(index)?);
        Some((info.uid, entry.body_off, entry.text_end))
    }

    /// Message `index`'s entry, info and the open file, or `NotFound`.
    fn located(&self, index: usize) -> io::Result<(&Entry, &MessageInfo, &File)> {
        match (
            self.entries.get(index),
            self.infos.get(index),
            self.file.as_ref(),
        ) {
            (Some(entry), Some(info), Some(file)) => Ok((entry, info, file)),
            _ => Err(no_message(index)),
        }
    }

    /// Take the read lock and make sure message `index` is where the index says.
    fn lock_in_place(&self, index: usize) -> io::Result<ReadLock> {
        let (_, _, file) = self.located(index)?;
        // Writers rewrite in place under the write lock: with the read lock held, the file
        // stays as it is now until the lock is dropped. It must still be the file we indexed.
        let lock = ReadLock::acquire(&self.path, file, LOCK_TIMEOUT)?;
        self.check_in_place(index)?;
        Ok(lock)
    }

    /// `MailboxChanged` unless message `index` is where the index says (read lock held).
    fn check_in_place(&self, index: usize) -> io::Result<()> {
        let (entry, info, file) = self.located(index)?;
        let now = FileStamp::of(file)?;
        let unchanged = Some(now) == self.stamp && starts_with_from_line(file, entry)?;
        if !unchanged && !still_in_place(file, self.stamp, now, entry, info.uid)? {
            return Err(MailboxChanged::io_error());
        }
        Ok(())
    }

    /// [`Mailbox::refresh`] after our own append, when [`MboxMailbox::own_append_is_current`]:
    /// the merge reads nothing and writes nothing, so it needs no lock.
    fn merge_unlocked(&mut self, current: FileStamp) -> Result<Changes, StoreError> {
        let Some(file) = self.file.as_ref() else {
            return Ok(Changes::default());
        };
        let file = file.try_clone().map_err(|e| self.io_error(e))?;
        #[cfg(test)]
        tests::UNLOCKED_CATCH_UPS.with(|n| n.set(n.get() + 1));
        if let Some(changes) = self.extend_by_own_append(current) {
            return Ok(changes);
        }
        let before = self.infos.clone();
        let before_names = self.keywords.clone();
        let merge = self.merge_fresh(&file, current)?;
        self.stamp = Some(current);
        Ok(changes_between(
            &before,
            &before_names,
            &self.infos,
            &self.keywords,
            &merge,
        ))
    }

    /// [`MboxMailbox::merge_unlocked`] without a merge: nobody else wrote since we were up to
    /// date, so our messages (and our pending changes to them) stay as they are and the
    /// appended ones are added behind them, costing what they cost rather than what the
    /// mailbox does. `None` (nothing changed) when the keyword lists do not simply continue
    /// ours: the caller merges.
    fn extend_by_own_append(&mut self, current: FileStamp) -> Option<Changes> {
        let (_, catch_up) = self.own_append.as_ref()?;
        let parsed = &catch_up.parsed;
        let known = self.infos.len();
        let continues = catch_up.after == current
            && parsed.uid_validity == self.uid_validity
            && parsed.infos.len() >= known
            && parsed.infos.get(known.wrapping_sub(1)).map(|i| i.uid)
                == self.infos.last().map(|i| i.uid)
            && self.keywords.len() == self.disk_keyword_count
            && parsed.keywords.len() >= self.keywords.len()
            && parsed
                .keywords
                .iter()
                .zip(&self.keywords)
                .all(|(a, b)| a == b);
        if !continues {
            return None;
        }
        let (_, catch_up) = self.own_append.take()?;
        let mut parsed = catch_up.parsed;
        #[cfg(test)]
        {
            tests::assert_matches_disk(self.file.as_ref()?, current.len, &parsed);
            tests::TAIL_ONLY.with(|n| n.set(n.get() + 1));
        }
        let mut tail = parsed.infos.split_off(known);
        for info in &mut tail {
            info.recent = self.claimed_by_append.binary_search(&info.uid).is_ok();
        }
        self.claimed_by_append.clear();
        let appended = tail.len();
        let mut infos = std::mem::take(&mut self.infos);
        infos.extend(tail);
        parsed.infos = infos;
        self.adopt(parsed, None);
        self.stamp = Some(current);
        Some(Changes {
            appended,
            ..Changes::default()
        })
    }

    /// [`Mailbox::commit_with`], which may record flag changes in the flag log
    /// (`may_defer`) rather than in the file; without it the log is written into the file.
    fn commit_locking(
        &mut self,
        expunge: Expunge<'_>,
        may_defer: bool,
    ) -> Result<CommitReport, StoreError> {
        self.held = None; // our own read lock would keep our writer waiting
        if self.access == Access::ReadOnly {
            return Ok(CommitReport::default());
        }
        let file = match self.open_file() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(CommitReport {
                    expunged: self.forget_everything().expunged,
                })
            }
            Err(e) => return Err(self.io_error(e)),
        };
        let _lock = self.lock_recovered(&file)?;
        let stamp = FileStamp::of(&file).map_err(|e| self.io_error(e))?;
        let merge = if Some(stamp) == self.stamp && self.log_stamp_now(stamp)? == self.log_stamp() {
            None
        } else {
            Some(self.merge_fresh(&file, stamp)?)
        };
        self.file = Some(file);
        self.stamp = Some(stamp);
        if expunge == Expunge::Nothing && may_defer && self.defer_locked()? {
            let expunged = merge.map_or_else(Vec::new, |m| m.gone);
            return Ok(CommitReport { expunged });
        }
        let mut uids = match expunge {
            Expunge::Uids(u) => u.to_vec(),
            _ => Vec::new(),
        };
        uids.sort_unstable();
        let removing = |i: &MessageInfo| Self::expunge_picks(i, &expunge, &uids);
        if expunge != Expunge::Nothing && self.log.is_some() {
            self.patch_kept_locked(&removing)?;
        }
        let removed = self.rewrite_locked(&removing)?;
        let mut expunged: Vec<usize> = match &merge {
            None => removed,
            Some(m) => {
                let mut all = m.gone.clone();
                all.extend(
                    removed
                        .iter()
                        .filter_map(|&i| m.origin.get(i).copied().flatten()),
                );
                all
            }
        };
        expunged.sort_unstable();
        Ok(CommitReport { expunged })
    }

    /// Whether message `info` goes in a commit that expunges `which`.
    fn expunge_picks(info: &MessageInfo, which: &Expunge<'_>, sorted_uids: &[u32]) -> bool {
        info.flags.contains(Flags::DELETED)
            && match which {
                Expunge::Nothing => false,
                Expunge::AllDeleted => true,
                Expunge::Uids(_) => sorted_uids.binary_search(&info.uid).is_ok(),
            }
    }
}

impl Mailbox for MboxMailbox {
    fn path(&self) -> &Path {
        &self.path
    }

    fn uid_validity(&self) -> u32 {
        self.uid_validity
    }

    fn uid_next(&self) -> u32 {
        self.uid_last.saturating_add(1)
    }

    fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    fn keyword_names(&self) -> &[String] {
        &self.keywords
    }

    fn open_message(&mut self, index: usize) -> io::Result<Box<dyn Read + '_>> {
        self.open_message_at(index, 0)
    }

    fn open_message_at(&mut self, index: usize, offset: u64) -> io::Result<Box<dyn Read + '_>> {
        // Under a hold the read lock is already ours (and a second one on the same open file
        // would release it when dropped); the held message was checked when the hold began.
        let lock = match &self.held {
            Some((held, _)) if *held == index => None,
            Some(_) => {
                self.check_in_place(index)?;
                None
            }
            None => Some(self.lock_in_place(index)?),
        };
        let key = self.seek_key(index);
        let known = match self.seek_hint {
            Some((hint_key, point)) if Some(hint_key) == key => Some(point),
            _ => None,
        };
        // Field by field, so that the reader's borrow of the file leaves `seek_hint` free.
        let (Some(entry), Some(info), Some(file)) = (
            self.entries.get(index),
            self.infos.get(index),
            self.file.as_ref(),
        ) else {
            return Err(no_message(index));
        };
        let (reader, start) =
            reader::MessageReader::new_at(file, entry, info.size, lock, offset, known)?;
        if let (Some(point), Some(key)) = (start, key) {
            self.seek_hint = Some((key, point));
        }
        Ok(Box::new(reader))
    }

    fn hold_message(&mut self, index: usize) -> io::Result<()> {
        self.held = None;
        let lock = self.lock_in_place(index)?;
        self.held = Some((index, lock));
        Ok(())
    }

    fn release_message(&mut self) {
        self.held = None;
    }

    fn set_flags(&mut self, index: usize, flags: Flags) {
        if let Some(info) = self.infos.get_mut(index) {
            info.flags = flags;
        }
    }

    fn commit_with(&mut self, expunge: Expunge<'_>) -> Result<CommitReport, StoreError> {
        self.commit_locking(expunge, true)
    }

    fn has_deferred_writes(&self) -> bool {
        self.log.is_some() && self.access != Access::ReadOnly
    }

    fn write_deferred(&mut self) -> Result<(), StoreError> {
        self.commit_locking(Expunge::Nothing, false).map(|_| ())
    }

    fn read_only(&self) -> bool {
        self.access == Access::ReadOnly
    }

    fn set_keywords(&mut self, index: usize, keywords: u64) {
        MboxMailbox::set_keywords(self, index, keywords);
    }

    fn keyword_bit(&mut self, name: &str) -> Option<u32> {
        self.keyword_index(name).map(|i| i as u32)
    }

    fn refresh(&mut self) -> Result<Changes, StoreError> {
        self.held = None; // our own read lock would keep our writer waiting
        let current = match std::fs::metadata(&self.path) {
            Ok(m) => FileStamp::from_metadata(&m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(self.forget_everything()),
            Err(e) => return Err(self.io_error(e)),
        };
        let log_unchanged = self.log_stamp_now(current)? == self.log_stamp();
        if self.stamp == Some(current) && log_unchanged {
            return Ok(Changes::default());
        }
        if log_unchanged && self.own_append_is_current(current) {
            return self.merge_unlocked(current);
        }
        let file = match self.open_file() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(self.forget_everything()),
            Err(e) => return Err(self.io_error(e)),
        };
        let _lock = self.lock_recovered(&file)?;
        let stamp = FileStamp::of(&file).map_err(|e| self.io_error(e))?;
        let before = self.infos.clone();
        let before_names = self.keywords.clone();
        let reader = file.try_clone().map_err(|e| self.io_error(e))?;
        self.file = Some(file);
        let merged = self.merge_fresh(&reader, stamp);
        self.stamp = Some(stamp);
        let merge = merged?;
        self.claim_unseen_locked()?;
        Ok(changes_between(
            &before,
            &before_names,
            &self.infos,
            &self.keywords,
            &merge,
        ))
    }

    /// Appends behind the index (see the trait). Works whatever the access: APPEND to a
    /// mailbox that is open read-only elsewhere in the session is still an APPEND.
    fn append(&mut self, messages: &mut [NewMessage<'_>]) -> Result<Vec<u32>, StoreError> {
        self.held = None; // our own read lock would keep our writer waiting
        let target = append::Target {
            path: &self.path,
            helper: &self.helper,
            style: self.style,
            create_missing: true,
        };
        let known = self.known_for_append();
        let done = append::append_known(&target, messages, known)?;
        if let (Some(before), Some(catch_up)) = (self.stamp, done.catch_up) {
            self.own_append = Some((before, catch_up));
        }
        if done.claimed {
            self.claimed_by_append.extend(&done.uids);
        }
        Ok(done.uids)
    }

    fn change_token(&self) -> io::Result<u64> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match std::fs::metadata(&self.path) {
            Ok(m) => {
                let stamp = FileStamp::from_metadata(&m);
                stamp.hash(&mut hasher);
                let log = self.log_stamp_now(stamp).map_err(io::Error::other)?;
                log.hash(&mut hasher);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0u8.hash(&mut hasher),
            Err(e) => return Err(e),
        }
        Ok(hasher.finish())
    }
}

#[cfg(test)]
mod deferred_tests;
#[cfg(test)]
mod imap_tests;
#[cfg(test)]
pub(crate) mod tests;
