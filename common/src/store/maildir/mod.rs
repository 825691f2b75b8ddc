//! Maildir mailboxes (the Maildir++ INBOX root or any folder directory), interchangeable with
//! Dovecot's: same UIDs and UIDVALIDITY (`dovecot-uidlist`), flags (`:2,` info letters) and
//! keywords (`dovecot-keywords`), so a site can switch servers without clients re-downloading.
//!
//! Owns the files under one Maildir directory. Changes them only by rename() and unlink() (and the
//! uidlist by rename() of its lock file), so a crash at any instant leaves every message exactly
//! once on disk. Never copies a message, never reads bodies at open when the name carries its size.
//! Opened [`Access::ReadOnly`] it writes nothing but the first `dovecot-uidlist` of a Maildir that
//! has none (as Dovecot's EXAMINE does), so the UIDVALIDITY it reports is the one every later
//! session sees; STATUS ([`MaildirMailbox::open_for_status`]) also records UIDs for new messages.
//!
//! Sharing: any number of `Shared` sessions, Dovecot and the MTA work on one Maildir at once.
//! A UID is only ever given under `dovecot-uidlist.lock`; flag changes are renames that apply
//! only this session's changes on top of the name the file has now; `\Recent` belongs to the
//! first read-write session that sees a message in `new/`: it claims it by renaming it into
//! `cur/` at open or refresh. A POP3 session's [`SessionLock`] is deliberately NOT taken or
//! honoured by `Shared` opens: Maildir needs no exclusive access (every change is an atomic
//! rename), so IMAP keeps working while someone reads mail by POP3; whether to refuse IMAP then
//! is protocol policy, left to the caller.
//!
//! Submodules: `name` (file names and info letters), `uidlist` (the UID file and its lock),
//! `keywords` (keyword letters), `body` (CRLF presentation and sizes), `refresh` (catching up
//! with other processes), `append` (delivering new messages), `folders` (the Maildir++ folder
//! layout, [`MaildirStore`]).

mod append;
mod body;
mod folders;
mod keywords;
mod name;
mod refresh;
mod uidlist;
mod validity;

pub use folders::MaildirStore;

use super::lock::SessionLock;
use super::{Access, CommitReport, Expunge, Flags, Mailbox, MessageInfo, StoreError, UNKNOWN_DATE};
use body::CrlfReader;
use keywords::Keywords;
use refresh::Stamps;
use std::collections::HashMap;
use std::fs::{self, DirBuilder, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use uidlist::{ListCursor, Record, Uidlist, UidlistLock};

/// How long to wait for `dovecot-uidlist.lock`: long enough to outlast a stale one.
const UIDLIST_LOCK_WAIT: Duration = Duration::from_secs(uidlist::STALE_AFTER.as_secs() + 10);
/// How often a directory scan is repeated when the directories changed while it ran.
const SCAN_ATTEMPTS: usize = 3;
/// How often one message is chased through renames by other processes before giving up.
const CHASE_ATTEMPTS: usize = 5;

/// The two directories messages live in (`tmp/` holds deliveries in progress and is ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subdir {
    New = 0,
    Cur = 1,
}

impl Subdir {
    const ALL: [Subdir; 2] = [Subdir::New, Subdir::Cur];

    fn name(self) -> &'static str {
        match self {
            Subdir::New => "new",
            Subdir::Cur => "cur",
        }
    }
}

/// A message file as a directory scan saw it.
#[derive(Clone, Debug)]
struct Found {
    subdir: Subdir,
    name: String,
    mtime: i64,
}

/// Where a message's file is, and what its name said when we last looked. Kept small: one
/// of these per message stays in memory for the whole session.
#[derive(Clone, Debug)]
struct MessageFile {
    /// The name in `subdir`: the base name (the message's identity across renames), then
    /// `:2,` and its info letters; the letters other than flags (keywords, `P`, unknown ones)
    /// are carried through renames.
    name: Box<str>,
    subdir: Subdir,
    /// The system flags in `name`.
    disk_flags: Flags,
    /// The flags this session last agreed with the disk on: changes made since are ours to
    /// write, everything else on disk (changed by other sessions) is left as it is.
    baseline: Flags,
    /// The same for keyword bits.
    keyword_baseline: u64,
    /// Its flags or keywords were set, or its file was found renamed, since the last commit:
    /// a commit need not look at any other message in `cur/` it does not expunge.
    touched: bool,
}

impl MessageFile {
    fn base(&self) -> &str {
        name::base_of(&self.name)
    }

    /// The info letters of the name other than the system flags.
    fn kept(&self) -> String {
        name::kept_of(&self.name)
    }

    /// Now called `name` in `subdir`.
    fn moved(&mut self, subdir: Subdir, name: String) {
        self.subdir = subdir;
        self.disk_flags = name::flags_of(&name);
        self.name = name.into_boxed_str();
    }
}

/// What is already known about a message file, by base name: spares reading bodies and
/// stat()ing files again (Maildir files never change content, and mtime is INTERNALDATE).
#[derive(Clone, Copy, Debug)]
struct Known {
    size: u64,
    mtime: i64,
}

type KnownFiles<'a> = HashMap<&'a str, Known>;

/// One open Maildir. See the module documentation.
pub struct MaildirMailbox {
    path: PathBuf,
    access: Access,
    uid_validity: u32,
    uid_next: u32,
    messages: Vec<MessageInfo>,
    /// Parallel to `messages`.
    files: Vec<MessageFile>,
    keywords: Keywords,
    /// The directories and files as they were before our last scan (or after our own changes,
    /// see [`MaildirMailbox::adopt_own_changes`]).
    stamps: Stamps,
    /// When `stamps` were adopted after our own changes without a scan to confirm them.
    unverified_since: Option<std::time::Instant>,
    /// This session changed the Maildir since `stamps` were taken.
    own_changes: bool,
    /// How far this session has read `dovecot-uidlist`.
    list_cursor: Option<ListCursor>,
    /// UIDs whose flags changed on disk under a commit of ours: the next refresh reports them.
    unreported_flag_changes: Vec<u32>,
    /// The message [`Mailbox::hold_message`] keeps readable, and its open file.
    held: Option<(usize, File)>,
    /// Where the last reader that skipped into a message started, by UID (files never change).
    seek_hint: Option<(u32, body::SeekPoint)>,
    _session: Option<SessionLock>,
}

impl MaildirMailbox {
    /// Open the Maildir at `path`: scan `new/` and `cur/`, give unlisted messages UIDs in
    /// `dovecot-uidlist` (when `ReadOnly`, only if the Maildir has no uidlist at all, and only
    /// if it can), and take the session lock when `Exclusive`.
    /// `Shared` claims the messages in `new/` (they are `\Recent` for this session only).
    /// A missing Maildir is created (`cur new tmp`, mode 0700), or is empty when `ReadOnly`.
    pub fn open(path: &Path, access: Access) -> Result<MaildirMailbox, StoreError> {
        MaildirMailbox::open_with(path, access, UidWrites::for_access(access))
    }

    /// Open for STATUS: like `ReadOnly`, except that messages without a UID get one in
    /// `dovecot-uidlist` (the first uidlist fixing UIDVALIDITY), as UW's and Dovecot's STATUS
    /// do. Nothing but the uidlist is written, and `\Recent` is not claimed.
    pub fn open_for_status(path: &Path) -> Result<MaildirMailbox, StoreError> {
        MaildirMailbox::open_with(path, Access::ReadOnly, UidWrites::NewUids)
    }

    fn open_with(
        path: &Path,
        access: Access,
        writes: UidWrites,
    ) -> Result<MaildirMailbox, StoreError> {
        let root = path.to_path_buf();
        if access == Access::ReadOnly && !root.is_dir() {
            return Ok(MaildirMailbox::empty(root, access));
        }
        if access != Access::ReadOnly {
            create_dirs(&root)?;
        }
        let session = match access {
            Access::Exclusive => Some(SessionLock::try_acquire(&root).map_err(StoreError::InUse)?),
            _ => None,
        };
        let stamps = Stamps::take(&root)?;
        let keywords = Keywords::read(&root).map_err(io_at(root.join(keywords::KEYWORDS_NAME)))?;
        let index = load_index(&root, writes, &KnownFiles::new(), None)?;
        let mut mailbox = MaildirMailbox {
            path: root,
            access,
            uid_validity: index.list.uid_validity,
            uid_next: index.list.next_uid,
            messages: Vec::with_capacity(index.entries.len()),
            files: Vec::with_capacity(index.entries.len()),
            keywords,
            stamps,
            unverified_since: None,
            own_changes: index.written,
            list_cursor: index.cursor,
            unreported_flag_changes: Vec::new(),
            held: None,
            seek_hint: None,
            _session: session,
        };
        for entry in index.entries {
            mailbox.push_entry(entry);
        }
        if access == Access::Shared {
            mailbox.claim_recent(0);
        }
        mailbox.adopt_own_changes();
        Ok(mailbox)
    }

    fn empty(path: PathBuf, access: Access) -> MaildirMailbox {
        MaildirMailbox {
            path,
            access,
            uid_validity: now_uid_validity(),
            uid_next: 1,
            messages: Vec::new(),
            files: Vec::new(),
            keywords: Keywords::default(),
            stamps: Stamps::default(),
            unverified_since: None,
            own_changes: false,
            list_cursor: None,
            unreported_flag_changes: Vec::new(),
            held: None,
            seek_hint: None,
            _session: None,
        }
    }

    /// Add an indexed message at the end of the index.
    fn push_entry(&mut self, entry: Entry) {
        let flags = name::flags_of(&entry.found.name);
        let keywords = self.keywords.bits(name::info_letters(&entry.found.name));
        self.messages.push(MessageInfo {
            uid: entry.uid,
            flags,
            keywords,
            recent: entry.found.subdir == Subdir::New,
            size: entry.size,
            internal_date: entry.found.mtime,
            internal_tz_minutes: 0,
        });
        self.files.push(MessageFile {
            name: entry.found.name.into_boxed_str(),
            subdir: entry.found.subdir,
            disk_flags: flags,
            baseline: flags,
            keyword_baseline: keywords,
            touched: false,
        });
    }

    /// Claim `\Recent` for the messages from `first` on that are in `new/`: rename them into
    /// `cur/` (flags unchanged). One another session claimed first is not recent for us.
    fn claim_recent(&mut self, first: usize) {
        let mut dirs = Dirs::new(&self.path);
        for index in first..self.files.len() {
            if self.files[index].subdir != Subdir::New {
                continue;
            }
            let file = &self.files[index];
            let claimed = name::build(file.base(), file.disk_flags, &file.kept());
            match dirs.rename((Subdir::New, &file.name), (Subdir::Cur, &claimed)) {
                Ok(()) => {
                    self.own_changes = true;
                    self.files[index].moved(Subdir::Cur, claimed);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.messages[index].recent = false;
                    // Where it went is found when it is next needed (relocate).
                }
                // Could not claim (permissions, full disk): it stays recent for us and in new/.
                Err(_) => {}
            }
        }
    }

    /// What is known about every indexed file, for the next scan.
    fn known_files(&self) -> KnownFiles<'_> {
        self.files
            .iter()
            .zip(&self.messages)
            .map(|(file, info)| {
                let known = Known {
                    size: info.size,
                    mtime: info.internal_date,
                };
                (file.base(), known)
            })
            .collect()
    }

    /// The mtime of message `index`'s file; found again if another process renamed it.
    fn file_mtime(&mut self, index: usize) -> io::Result<i64> {
        use std::os::unix::fs::MetadataExt;
        match fs::metadata(self.file_path(index)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.relocate(index)? => {
                fs::metadata(self.file_path(index)).map(|m| m.mtime())
            }
            other => other.map(|m| m.mtime()),
        }
    }

    fn file_path(&self, index: usize) -> PathBuf {
        let file = &self.files[index];
        self.path.join(file.subdir.name()).join(&*file.name)
    }

    /// Find message `index` again after another process renamed it. False when it is gone.
    fn relocate(&mut self, index: usize) -> io::Result<bool> {
        let Some((subdir, name)) = find_by_base(&self.path, self.files[index].base())? else {
            return Ok(false);
        };
        let file = &mut self.files[index];
        file.moved(subdir, name);
        file.touched = true;
        Ok(true)
    }

    /// Message `index`'s file, opened: the held one, or wherever another session moved it.
    fn message_file(&mut self, index: usize) -> io::Result<File> {
        if let Some((held, file)) = &self.held {
            if *held == index {
                return file.try_clone();
            }
        }
        let Some(info) = self.messages.get(index) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no message {index}"),
            ));
        };
        let uid = info.uid;
        for _ in 0..CHASE_ATTEMPTS {
            match body::open_message_file(&self.file_path(index)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => return other,
            }
            if !self.relocate(index)? {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("message UID {uid} was expunged by another session"),
                ));
            }
        }
        Err(moving_target())
    }

    /// Unlink message `index`'s file wherever it went. Gone already counts as done.
    fn unlink(&mut self, index: usize, dirs: &mut Dirs) -> io::Result<()> {
        for _ in 0..CHASE_ATTEMPTS {
            let file = &self.files[index];
            match dirs.unlink((file.subdir, &file.name)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Ok(()) => {
                    self.own_changes = true;
                    return Ok(());
                }
                other => return other,
            }
            if !self.relocate(index)? {
                return Ok(());
            }
        }
        Err(moving_target())
    }

    /// The flags and keyword bits message `index` should have on disk: its name's, with this
    /// session's changes since the baseline applied on top.
    fn merged_target(&self, index: usize) -> (Flags, u64) {
        let file = &self.files[index];
        let info = &self.messages[index];
        let flags = Flags::from_bits(apply_changes(
            u64::from(file.disk_flags.bits()),
            u64::from(file.baseline.bits()),
            u64::from(info.flags.bits()),
        ) as u8);
        let disk_keywords = self.keywords.bits(name::info_letters(&file.name));
        let keywords = apply_changes(disk_keywords, file.keyword_baseline, info.keywords);
        (flags, keywords)
    }

    /// The kept letters of message `index` with its keyword letters replaced by `keywords`'.
    fn kept_with(&self, index: usize, keywords: u64) -> String {
        let mut kept: String = self.files[index]
            .kept()
            .chars()
            .filter(|c| !self.keywords.knows_letter(*c))
            .collect();
        kept.push_str(&self.keywords.letters(keywords));
        kept
    }

    /// Rename message `index` into `cur/` with this session's flag and keyword changes applied
    /// on top of its name now. False when the file is gone (expunged by another session).
    fn write_changes(&mut self, index: usize, dirs: &mut Dirs) -> io::Result<bool> {
        for _ in 0..CHASE_ATTEMPTS {
            let (flags, keywords) = self.merged_target(index);
            let file = &self.files[index];
            let disk_keywords = self.keywords.bits(name::info_letters(&file.name));
            if file.subdir == Subdir::Cur && flags == file.disk_flags && keywords == disk_keywords {
                self.settle(index, flags, keywords);
                return Ok(true);
            }
            let kept = self.kept_with(index, keywords);
            let file = &self.files[index];
            let new_name = name::build(file.base(), flags, &kept);
            match dirs.rename((file.subdir, &file.name), (Subdir::Cur, &new_name)) {
                Ok(()) => {
                    self.own_changes = true;
                    self.files[index].moved(Subdir::Cur, new_name);
                    self.settle(index, flags, keywords);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if !self.relocate(index)? {
                return Ok(false);
            }
        }
        Err(moving_target())
    }

    /// Record that message `index`'s flags and keywords on disk are now these; a difference
    /// from what the session showed is another session's change, reported at the next refresh.
    fn settle(&mut self, index: usize, flags: Flags, keywords: u64) {
        let info = &mut self.messages[index];
        if info.flags != flags || info.keywords != keywords {
            self.unreported_flag_changes.push(info.uid);
        }
        info.flags = flags;
        info.keywords = keywords;
        let file = &mut self.files[index];
        file.baseline = flags;
        file.keyword_baseline = keywords;
    }

    /// Whether `expunge` removes message `index`, whose flags are about to become `flags`.
    fn expunges(&self, expunge: Expunge<'_>, index: usize, flags: Flags) -> bool {
        if !flags.contains(Flags::DELETED) {
            return false;
        }
        match expunge {
            Expunge::Nothing => false,
            Expunge::AllDeleted => true,
            Expunge::Uids(uids) => uids.contains(&self.messages[index].uid),
        }
    }

    /// Drop the messages at `gone` (ascending indices) from the index.
    fn forget(&mut self, gone: &[usize]) {
        if gone.is_empty() {
            return;
        }
        let mut position = 0;
        let mut keep = |_: &_| {
            let kept = gone.binary_search(&position).is_err();
            position += 1;
            kept
        };
        self.messages.retain(&mut keep);
        position = 0;
        let mut keep = |_: &_| {
            let kept = gone.binary_search(&position).is_err();
            position += 1;
            kept
        };
        self.files.retain(&mut keep);
    }
}

/// `new/` and `cur/` of one Maildir, opened when first needed, for renames by name within
/// them: no path to build and walk per message. Kept only for one batch of renames (a claim,
/// a commit), so a folder renamed or recreated meanwhile is never written through a stale one.
struct Dirs {
    root: PathBuf,
    open: [Option<File>; 2],
}

impl Dirs {
    fn new(root: &Path) -> Dirs {
        Dirs {
            root: root.to_path_buf(),
            open: [None, None],
        }
    }

    fn handle(&mut self, subdir: Subdir) -> io::Result<std::os::fd::RawFd> {
        let slot = &mut self.open[subdir as usize];
        if let Some(dir) = slot {
            return Ok(dir.as_raw_fd());
        }
        let dir = File::open(self.root.join(subdir.name()))?;
        Ok(slot.insert(dir).as_raw_fd())
    }

    /// unlink(2) of a name in one of the two directories.
    fn unlink(&mut self, file: (Subdir, &str)) -> io::Result<()> {
        let dir = self.handle(file.0)?;
        nix::unistd::unlinkat(Some(dir), file.1, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(io::Error::from)
    }

    /// rename(2) of `from` to `to`, each a name in one of the two directories.
    fn rename(&mut self, from: (Subdir, &str), to: (Subdir, &str)) -> io::Result<()> {
        let from_dir = self.handle(from.0)?;
        let to_dir = self.handle(to.0)?;
        nix::fcntl::renameat(Some(from_dir), from.1, Some(to_dir), to.1).map_err(io::Error::from)
    }
}

/// `disk` with the bits set in `wanted` but not in `baseline` added and those cleared removed:
/// this session's changes on top of whatever others made.
fn apply_changes(disk: u64, baseline: u64, wanted: u64) -> u64 {
    let added = wanted & !baseline;
    let removed = baseline & !wanted;
    (disk | added) & !removed
}

impl Mailbox for MaildirMailbox {
    fn path(&self) -> &Path {
        &self.path
    }

    /// The file's mtime, read the first time it is asked for. A file gone meanwhile (expunged
    /// by another process) answers with the delivery time its name starts with.
    fn internal_date(&mut self, index: usize) -> (i64, i32) {
        let Some(info) = self.messages.get(index) else {
            return (0, 0);
        };
        if info.internal_date != UNKNOWN_DATE {
            return (info.internal_date, info.internal_tz_minutes);
        }
        match self.file_mtime(index) {
            Ok(mtime) => {
                self.messages[index].internal_date = mtime;
                (mtime, 0)
            }
            Err(_) => (name::delivery_key(self.files[index].base(), 0).0, 0),
        }
    }

    fn uid_validity(&self) -> u32 {
        self.uid_validity
    }

    fn uid_next(&self) -> u32 {
        self.uid_next
    }

    fn messages(&self) -> &[MessageInfo] {
        &self.messages
    }

    fn keyword_names(&self) -> &[String] {
        &self.keywords.names
    }

    fn open_message(&mut self, index: usize) -> io::Result<Box<dyn Read + '_>> {
        self.open_message_at(index, 0)
    }

    fn open_message_at(&mut self, index: usize, offset: u64) -> io::Result<Box<dyn Read + '_>> {
        let file = self.message_file(index)?;
        let (uid, size) = (self.messages[index].uid, self.messages[index].size);
        if offset == 0 {
            return Ok(Box::new(CrlfReader::new(body::ReadAt::new(file), size)));
        }
        let known = self.seek_hint.filter(|(of, _)| *of == uid).map(|(_, p)| p);
        let point = body::seek_point(&file, offset, known)?;
        self.seek_hint = Some((uid, point));
        Ok(Box::new(body::CrlfReader::from_point(
            file, size, point, offset,
        )?))
    }

    /// Keeps the message's file open: another session may expunge or rename it meanwhile.
    fn hold_message(&mut self, index: usize) -> io::Result<()> {
        self.held = None;
        let file = self.message_file(index)?;
        self.held = Some((index, file));
        Ok(())
    }

    fn release_message(&mut self) {
        self.held = None;
    }

    fn set_flags(&mut self, index: usize, flags: Flags) {
        if let (Some(info), Some(file)) = (self.messages.get_mut(index), self.files.get_mut(index))
        {
            info.flags = flags;
            file.touched = true;
        }
    }

    /// Rename changed and `new/` messages into `cur/` with this session's flag and keyword
    /// changes applied on top of their current names; unlink the `\Deleted` ones `expunge`
    /// selects. Messages found expunged by another session are reported expunged too.
    /// `ReadOnly`: writes nothing and reports nothing.
    fn commit_with(&mut self, expunge: Expunge<'_>) -> Result<CommitReport, StoreError> {
        self.held = None; // indices may shift
        if self.access == Access::ReadOnly {
            return Ok(CommitReport::default());
        }
        // Others' changes already visible are left for the next refresh to scan: only a
        // Maildir that looks as we last saw it may have its stamps moved past our renames.
        let others_pending = Stamps::take(&self.path).ok().as_ref() != Some(&self.stamps);
        let mut dirs = Dirs::new(&self.path);
        let mut expunged = Vec::new();
        for index in 0..self.messages.len() {
            let file = &self.files[index];
            if !file.touched && file.subdir == Subdir::Cur {
                // Unchanged since it was last written or read, here or by a refresh.
                let flags = self.messages[index].flags;
                if !self.expunges(expunge, index, flags) {
                    continue;
                }
            }
            let (flags, _) = self.merged_target(index);
            let still_there = if self.expunges(expunge, index, flags) {
                self.unlink(index, &mut dirs).map(|()| false)
            } else {
                self.write_changes(index, &mut dirs)
            };
            match still_there {
                Ok(true) => self.files[index].touched = false,
                Ok(false) => expunged.push(index),
                // Files already unlinked stay in the index; the next commit finds them gone.
                Err(e) => return Err(StoreError::Io(self.file_path(index), e)),
            }
        }
        self.forget(&expunged);
        if others_pending {
            self.own_changes = false;
        }
        self.adopt_own_changes();
        let present: Vec<u32> = self.messages.iter().map(|m| m.uid).collect();
        self.unreported_flag_changes
            .retain(|uid| present.binary_search(uid).is_ok());
        Ok(CommitReport { expunged })
    }

    fn read_only(&self) -> bool {
        self.access == Access::ReadOnly
    }

    fn set_keywords(&mut self, index: usize, keywords: u64) {
        let known = self.keywords.names.len();
        let mask = if known >= 64 {
            u64::MAX
        } else {
            (1 << known) - 1
        };
        if let (Some(info), Some(file)) = (self.messages.get_mut(index), self.files.get_mut(index))
        {
            info.keywords = keywords & mask;
            file.touched = true;
        }
    }

    /// Known names answer at once; a new one is added to `dovecot-keywords` (under its lock),
    /// which holds at most 26. `ReadOnly` mailboxes add nothing.
    fn keyword_bit(&mut self, name: &str) -> Option<u32> {
        if let Some(bit) = self.keywords.bit_of(name) {
            return Some(bit);
        }
        if self.access == Access::ReadOnly || !keywords::add(&self.path, name).ok()? {
            return None;
        }
        self.keywords.reload(&self.path).ok()?;
        self.keywords.bit_of(name)
    }

    fn refresh(&mut self) -> Result<super::Changes, StoreError> {
        self.held = None; // indices may shift
        self.catch_up()
    }

    fn append(&mut self, messages: &mut [super::NewMessage<'_>]) -> Result<Vec<u32>, StoreError> {
        self.held = None;
        if self.access == Access::ReadOnly {
            return Err(StoreError::Refused("Mailbox is read-only".into()));
        }
        let cursor = self.list_cursor.as_ref();
        let (_, uids) = append::append_at(&self.path, &mut self.keywords, messages, cursor)?;
        Ok(uids)
    }

    /// Also changes once adopted stamps are due for verification, so that IDLE refreshes.
    fn change_token(&self) -> io::Result<u64> {
        let token = Stamps::take(&self.path).map_err(into_io)?.token();
        Ok(token ^ u64::from(self.verification_due()))
    }
}

/// Which UID assignments an open or refresh writes to `dovecot-uidlist`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UidWrites {
    /// Read-write sessions: whatever the uidlist lacks (new UIDs, sizes, dropped records).
    All,
    /// STATUS: new UIDs only, when some message (or the whole Maildir) has none yet, so the
    /// UIDVALIDITY and UIDNEXT it reports are what a later SELECT sees. Best effort.
    NewUids,
    /// EXAMINE: only the first uidlist of a Maildir that has none, so that the UIDVALIDITY it
    /// reports is the one every later session sees (as Dovecot does). Best effort.
    FirstList,
}

impl UidWrites {
    fn for_access(access: Access) -> UidWrites {
        match access {
            Access::ReadOnly => UidWrites::FirstList,
            Access::Shared | Access::Exclusive => UidWrites::All,
        }
    }

    /// Whether `index` holds something this mode writes.
    fn wants(self, index: &Index) -> bool {
        match self {
            UidWrites::All => index.needs_write,
            UidWrites::NewUids => !index.had_uidlist || index.assigned_uids,
            UidWrites::FirstList => !index.had_uidlist,
        }
    }
}

/// Scan and match `root` against its uidlist; write what `writes` allows of it under the
/// uidlist lock (scanning again under it when anything changed since: another writer may have
/// just done so). `cur_listing`: `cur/` as the caller knows it unchanged, instead of reading it.
fn load_index(
    root: &Path,
    writes: UidWrites,
    known: &KnownFiles,
    cur_listing: Option<&[Found]>,
) -> Result<Index, StoreError> {
    let before = Stamps::take(root)?;
    let index = Index::build(root, known, cur_listing)?;
    if !writes.wants(&index) {
        return Ok(index);
    }
    let lock = match UidlistLock::acquire(root, UIDLIST_LOCK_WAIT, uidlist::STALE_AFTER) {
        Ok(lock) => lock,
        // A read-only session may lack the right to write: the UIDs stay provisional.
        Err(_) if writes != UidWrites::All => return Ok(index),
        Err(e) => return Err(StoreError::Io(root.join(uidlist::LOCK_NAME), e)),
    };
    let mut index = match Stamps::take(root) {
        Ok(now) if now == before => index,
        _ => {
            let mut known_now = index.known_files();
            known_now.extend(known.iter().map(|(k, v)| (*k, *v)));
            Index::build(root, &known_now, None)?
        }
    };
    match write_index(root, writes, &mut index, lock) {
        Ok(()) => Ok(index),
        // As above: provisional UIDs, and the UIDVALIDITY of the list we could not write.
        Err(_) if writes != UidWrites::All => Ok(index),
        Err(e) => Err(e),
    }
}

/// [`load_index`]'s write of `index`, made under the uidlist `lock`.
fn write_index(
    root: &Path,
    writes: UidWrites,
    index: &mut Index,
    lock: UidlistLock,
) -> Result<(), StoreError> {
    if !(index.needs_write && writes.wants(index)) {
        return Ok(());
    }
    // The first uidlist fixes the UIDVALIDITY: one never handed out before here.
    let uid_validity = index.list.uid_validity;
    if !index.had_uidlist {
        index.list.uid_validity = validity::next(root);
    }
    match lock.replace(&index.list) {
        Ok(cursor) => index.cursor = Some(cursor),
        Err(e) => {
            index.list.uid_validity = uid_validity;
            return Err(StoreError::Io(root.join(uidlist::UIDLIST_NAME), e));
        }
    }
    index.had_uidlist = true;
    index.assigned_uids = false;
    index.needs_write = false;
    index.written = true;
    Ok(())
}

/// A message as the index assigns it.
struct Entry {
    uid: u32,
    found: Found,
    size: u64,
}

/// The directory scan matched against the uidlist: every message with its UID and size.
struct Index {
    /// The uidlist as it should be on disk (records only for messages that exist).
    list: Uidlist,
    /// In UID order, parallel to `list.records`.
    entries: Vec<Entry>,
    /// True when `list` differs from the file (new UIDs, sizes learned, records of expunged
    /// messages dropped, no or old-format file).
    needs_write: bool,
    /// A `dovecot-uidlist` existed (else the UIDVALIDITY in `list` is provisional).
    had_uidlist: bool,
    /// Some message got a UID the file does not hold.
    assigned_uids: bool,
    /// This load wrote the uidlist.
    written: bool,
    /// Where a reader of the list file as it now is stands (see [`uidlist::read_since`]).
    cursor: Option<ListCursor>,
}

impl Index {
    /// Scan `root` and match it against its uidlist. `known` (by base name) spares reading
    /// bodies and stat()ing files an earlier pass looked at; `cur_listing` spares reading `cur/`.
    fn build(
        root: &Path,
        known: &KnownFiles,
        cur_listing: Option<&[Found]>,
    ) -> Result<Index, StoreError> {
        let list_path = root.join(uidlist::UIDLIST_NAME);
        let existing = uidlist::read_for_append(root).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => {
                StoreError::Damaged(format!("{}: {e}", list_path.display()))
            }
            _ => StoreError::Io(list_path.clone(), e),
        })?;
        let had_uidlist = existing.is_some();
        let (existing, cursor) = match existing {
            Some((list, file)) => (Some(list), file.cursor),
            None => (None, None),
        };
        let mut assigned_uids = false;
        let mut needs_write = match &existing {
            Some(list) => list.outdated,
            None => true,
        };
        let mut list = existing.unwrap_or_else(|| Uidlist::new(validity::peek(root)));
        let scanned = scan(root, known, cur_listing)?;

        // Pair each record with its file; a base seen twice (new/ and cur/ mid-rename) counts once.
        let mut by_base: HashMap<&str, usize> = HashMap::with_capacity(scanned.len());
        for (at, found) in scanned.iter().enumerate() {
            by_base.entry(name::base_of(&found.name)).or_insert(at);
        }
        let mut listed = Vec::with_capacity(list.records.len());
        for record in std::mem::take(&mut list.records) {
            match by_base.remove(record.base.as_str()) {
                Some(at) => listed.push((record, at)),
                None => needs_write = true,
            }
        }
        let fresh_at: Vec<usize> = by_base.into_values().collect();
        let mut scanned: Vec<Option<Found>> = scanned.into_iter().map(Some).collect();

        let mut entries = Vec::with_capacity(scanned.len());
        for (record, at) in listed {
            let Some(found) = scanned[at].take() else {
                continue;
            };
            match size_entry(root, record, found, known, &mut needs_write)? {
                Some((record, entry)) => {
                    list.records.push(record);
                    entries.push(entry);
                }
                None => needs_write = true,
            }
        }
        let found_fresh: Vec<Found> = fresh_at
            .into_iter()
            .filter_map(|at| scanned[at].take())
            .collect();
        // Keyed by time without copying names: the name itself only breaks ties.
        let mut order: Vec<(i64, u64, usize)> = found_fresh
            .iter()
            .enumerate()
            .map(|(at, f)| {
                let (secs, micros, _) = name::delivery_key(name::base_of(&f.name), f.mtime);
                (secs, micros, at)
            })
            .collect();
        order.sort_unstable_by(|a, b| {
            let base = |at: usize| name::base_of(&found_fresh[at].name);
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| base(a.2).cmp(base(b.2)))
        });
        let mut found_fresh: Vec<Option<Found>> = found_fresh.into_iter().map(Some).collect();
        let found_fresh = order
            .into_iter()
            .filter_map(|(_, _, at)| found_fresh[at].take());
        for found in found_fresh {
            let record = Record {
                uid: list.next_uid,
                extensions: Vec::new(),
                base: name::base_of(&found.name).to_string(),
            };
            if let Some((record, entry)) = size_entry(root, record, found, known, &mut needs_write)?
            {
                list.next_uid = list.next_uid.checked_add(1).ok_or_else(|| {
                    StoreError::Damaged(format!("{}: UIDs exhausted", list_path.display()))
                })?;
                list.records.push(record);
                entries.push(entry);
                needs_write = true;
                assigned_uids = true;
            }
        }
        Ok(Index {
            list,
            entries,
            needs_write,
            had_uidlist,
            assigned_uids,
            written: false,
            cursor,
        })
    }

    fn known_files(&self) -> KnownFiles<'_> {
        self.list
            .records
            .iter()
            .zip(&self.entries)
            .map(|(record, entry)| {
                let known = Known {
                    size: entry.size,
                    mtime: entry.found.mtime,
                };
                (record.base.as_str(), known)
            })
            .collect()
    }
}

/// The presented size of a message: `,W=` in its name, else the uidlist's `W` extension, else
/// what `known` says, else read from the file once; the last two are remembered in the record
/// (setting `needs_write`). `None` when the file vanished meanwhile.
fn size_entry(
    root: &Path,
    mut record: Record,
    found: Found,
    known: &KnownFiles,
    needs_write: &mut bool,
) -> Result<Option<(Record, Entry)>, StoreError> {
    let recorded = name::size_field(&record.base, 'W')
        .or_else(|| record.extension('W').and_then(|w| w.parse().ok()));
    let size = match recorded {
        Some(size) => size,
        None => {
            let size = match known.get(record.base.as_str()) {
                Some(known) => known.size,
                None => {
                    let path = root.join(found.subdir.name()).join(&found.name);
                    match body::presented_size(&path) {
                        Ok(size) => size,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(StoreError::Io(path, e)),
                    }
                }
            };
            record.extensions.retain(|e| !e.starts_with('W'));
            record.extensions.push(format!("W{size}"));
            *needs_write = true;
            size
        }
    };
    let uid = record.uid;
    Ok(Some((record, Entry { uid, found, size })))
}

/// Every message file in `new/` then `cur/`, rescanning when either directory changed during
/// the scan (a rename racing readdir could otherwise be missed). `cur_listing` stands in for
/// reading `cur/` on the first attempt; a retry reads it.
fn scan(
    root: &Path,
    known: &KnownFiles,
    cur_listing: Option<&[Found]>,
) -> Result<Vec<Found>, StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = dir_stamps(root)?;
        let mut found = Vec::new();
        scan_subdir(root, Subdir::New, known, &mut found)?;
        match cur_listing {
            Some(listing) if attempt == 1 => found.extend_from_slice(listing),
            _ => scan_subdir(root, Subdir::Cur, known, &mut found)?,
        }
        if attempt >= SCAN_ATTEMPTS || dir_stamps(root)? == before {
            return Ok(found);
        }
    }
}

/// The files of one subdirectory. The directory entry's type (d_type) tells files apart
/// without a stat. A file is stat()ed (relative to the directory: no path to build and
/// resolve per file) only when d_type cannot tell, or when its name does not start with its
/// delivery time, which orders new messages; otherwise its mtime (INTERNALDATE) is
/// [`UNKNOWN_DATE`] until a client asks for it.
fn scan_subdir(
    root: &Path,
    subdir: Subdir,
    known: &KnownFiles,
    found: &mut Vec<Found>,
) -> Result<(), StoreError> {
    let dir = root.join(subdir.name());
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::Io(dir, e)),
    };
    let mut dir_handle = None;
    for entry in entries {
        let entry = entry.map_err(io_at(dir.clone()))?;
        // Maildir names are ASCII; anything else is not a message we could list in the uidlist.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let file_type = match entry.file_type() {
            Ok(file_type) => file_type,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::Io(entry.path(), e)),
        };
        if file_type.is_dir() {
            continue;
        }
        let base = name::base_of(&name);
        let mtime = match known.get(base) {
            Some(known) if file_type.is_file() => known.mtime,
            None if file_type.is_file()
                && name::delivery_key(base, UNKNOWN_DATE).0 != UNKNOWN_DATE =>
            {
                UNKNOWN_DATE
            }
            _ => {
                let handle = match &dir_handle {
                    Some(handle) => handle,
                    None => dir_handle.insert(File::open(&dir).map_err(io_at(dir.clone()))?),
                };
                match regular_file_mtime(handle, &name) {
                    Ok(Some(mtime)) => mtime,
                    Ok(None) => continue,
                    // Renamed or expunged since readdir: the rescan or the other directory has it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::Io(entry.path(), e)),
                }
            }
        };
        found.push(Found {
            subdir,
            name,
            mtime,
        });
    }
    Ok(())
}

/// The mtime of `name` in the open directory `dir` (following symlinks, as open() does);
/// `None` when it is not a regular file.
fn regular_file_mtime(dir: &File, name: &str) -> io::Result<Option<i64>> {
    use nix::fcntl::AtFlags;
    use nix::sys::stat::{fstatat, SFlag};
    let stat = fstatat(Some(dir.as_raw_fd()), name, AtFlags::empty()).map_err(io::Error::from)?;
    let is_file = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
    Ok(is_file.then_some(stat.st_mtime))
}

/// The modification times of `new/` and `cur/`.
fn dir_stamps(root: &Path) -> Result<[Option<SystemTime>; 2], StoreError> {
    let mut stamps = [None; 2];
    for (stamp, subdir) in stamps.iter_mut().zip(Subdir::ALL) {
        let dir = root.join(subdir.name());
        *stamp = match fs::metadata(&dir) {
            Ok(meta) => Some(meta.modified().map_err(io_at(dir))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::Io(dir, e)),
        };
    }
    Ok(stamps)
}

/// The file in `new/` or `cur/` whose base name is `base`.
fn find_by_base(root: &Path, base: &str) -> io::Result<Option<(Subdir, String)>> {
    for subdir in Subdir::ALL {
        let entries = match fs::read_dir(root.join(subdir.name())) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let name = entry?.file_name();
            if let Some(name) = name.to_str() {
                if name::base_of(name) == base {
                    return Ok(Some((subdir, name.to_string())));
                }
            }
        }
    }
    Ok(None)
}

/// Create the Maildir and its `cur new tmp` as needed, mode 0700.
fn create_dirs(root: &Path) -> Result<(), StoreError> {
    let mut builder = DirBuilder::new();
    builder.mode(0o700).recursive(true);
    builder.create(root).map_err(io_at(root.to_path_buf()))?;
    for sub in ["cur", "new", "tmp"] {
        let dir = root.join(sub);
        builder.create(&dir).map_err(io_at(dir))?;
    }
    Ok(())
}

/// UIDVALIDITY for a mailbox getting its first uidlist: the current time, as Dovecot does.
fn now_uid_validity() -> u32 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    u32::try_from(secs).unwrap_or(u32::MAX).max(1)
}

fn io_at(path: PathBuf) -> impl FnOnce(io::Error) -> StoreError {
    move |e| StoreError::Io(path, e)
}

fn into_io(e: StoreError) -> io::Error {
    match e {
        StoreError::Io(_, e) => e,
        other => io::Error::other(other.to_string()),
    }
}

fn moving_target() -> io::Error {
    io::Error::other("message keeps being renamed by another process")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "maildir-test-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A Maildir under a fresh temp dir.
    pub(crate) fn maildir() -> (TempDir, PathBuf) {
        let tmp = TempDir::new();
        let root = tmp.path().join("Maildir");
        create_dirs(&root).unwrap();
        (tmp, root)
    }

    pub(crate) fn deliver(root: &Path, subdir: &str, name: &str, body: &[u8]) -> PathBuf {
        let path = root.join(subdir).join(name);
        fs::write(&path, body).unwrap();
        path
    }

    pub(crate) fn names_in(root: &Path, subdir: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root.join(subdir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    pub(crate) fn read_all(mailbox: &mut MaildirMailbox, index: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        mailbox.open_message(index)?.read_to_end(&mut out)?;
        Ok(out)
    }

    pub(crate) fn uids(mailbox: &MaildirMailbox) -> Vec<u32> {
        mailbox.messages().iter().map(|m| m.uid).collect()
    }

    #[test]
    fn assigns_uids_in_delivery_order_and_keeps_them() {
        let (_tmp, root) = maildir();
        deliver(&root, "new", "1700000002.M5P1.host", b"b\n");
        deliver(&root, "new", "1700000001.M900P1.host", b"a\n");
        deliver(&root, "cur", "1700000003.M1P1.host:2,S", b"c\n");
        deliver(&root, "new", "1700000001.M1000P1.host", b"a2\n");
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(uids(&mailbox), [1, 2, 3, 4]);
        assert_eq!(mailbox.uid_next(), 5);
        assert_eq!(read_all(&mut mailbox, 0).unwrap(), b"a\r\n");
        assert_eq!(read_all(&mut mailbox, 1).unwrap(), b"a2\r\n");
        assert_eq!(read_all(&mut mailbox, 3).unwrap(), b"c\r\n");
        let validity = mailbox.uid_validity();
        assert!(validity > 1_600_000_000);
        drop(mailbox);

        deliver(&root, "new", "1600000000.M1P1.host", b"late but old\n");
        let mut again = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(again.uid_validity(), validity);
        assert_eq!(uids(&again), [1, 2, 3, 4, 5]);
        assert_eq!(read_all(&mut again, 4).unwrap(), b"late but old\r\n");
        assert_eq!(again.uid_next(), 6);
        assert!(!root.join(uidlist::LOCK_NAME).exists());
    }

    #[test]
    fn uidlist_on_disk_is_dovecot_format_with_sizes_cached() {
        let (_tmp, root) = maildir();
        deliver(&root, "new", "1700000001.M1P1.host", b"ab\ncd\n");
        deliver(&root, "cur", "1700000002.M1P1.host,S=3,W=4:2,S", b"xy\n");
        MaildirMailbox::open(&root, Access::Shared).unwrap();
        let text = fs::read_to_string(root.join(uidlist::UIDLIST_NAME)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let header: Vec<&str> = lines[0].split(' ').collect();
        assert_eq!(header[0], "3");
        assert!(header[1].starts_with('V'));
        assert_eq!(header[2], "N3");
        assert!(header[3].starts_with('G') && header[3].len() == 33);
        // Sizes not in the name are computed once and cached as Dovecot's W extension.
        assert_eq!(lines[1], "1 W8 :1700000001.M1P1.host");
        assert_eq!(lines[2], "2 :1700000002.M1P1.host,S=3,W=4");
    }

    #[test]
    fn dovecot_written_uidlist_is_read_and_preserved() {
        let (_tmp, root) = maildir();
        fs::write(
            root.join(uidlist::UIDLIST_NAME),
            "3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n\
             25006 :1276528487.M364837P9451.kurkku,S=5,W=7:2,\n\
             25017 W7 :1276533073.M242911P3632.kurkku:2,F\n\
             25020 :1276533079.M1P1.kurkku\n",
        )
        .unwrap();
        deliver(
            &root,
            "cur",
            "1276528487.M364837P9451.kurkku,S=5,W=7:2,S",
            b"a\nb\nc",
        );
        // W7 in the list is trusted: not recomputed (the file would give 5).
        deliver(&root, "cur", "1276533073.M242911P3632.kurkku:2,F", b"x\ny");
        deliver(&root, "new", "1276533090.M1P1.kurkku", b"new\n");
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(mailbox.uid_validity(), 1275660208);
        assert_eq!(uids(&mailbox), [25006, 25017, 25022]);
        assert_eq!(mailbox.uid_next(), 25023);
        let sizes: Vec<u64> = mailbox.messages().iter().map(|m| m.size).collect();
        assert_eq!(sizes, [7, 7, 5]);
        assert_eq!(mailbox.messages()[0].flags, Flags::SEEN);
        assert_eq!(mailbox.messages()[1].flags, Flags::FLAGGED);
        assert_eq!(read_all(&mut mailbox, 0).unwrap(), b"a\r\nb\r\nc");
        assert_eq!(read_all(&mut mailbox, 2).unwrap(), b"new\r\n");

        let text = fs::read_to_string(root.join(uidlist::UIDLIST_NAME)).unwrap();
        assert_eq!(
            text,
            "3 V1275660208 N25023 G3085f01b7f11094c501100008c4a11c1\n\
             25006 :1276528487.M364837P9451.kurkku,S=5,W=7\n\
             25017 W7 :1276533073.M242911P3632.kurkku\n\
             25022 W5 :1276533090.M1P1.kurkku\n"
        );
    }

    #[test]
    fn flags_round_trip_and_unknown_letters_survive() {
        let (_tmp, root) = maildir();
        deliver(&root, "cur", "1700000001.M1P1.host:2,PSXa", b"m\n");
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(mailbox.messages()[0].flags, Flags::SEEN);
        mailbox.set_flags(0, Flags::ANSWERED.union(Flags::FLAGGED).union(Flags::DRAFT));
        assert_eq!(mailbox.commit(false).unwrap(), CommitReport::default());
        assert_eq!(names_in(&root, "cur"), ["1700000001.M1P1.host:2,DFPRXa"]);
        drop(mailbox);
        let mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(
            mailbox.messages()[0].flags,
            Flags::ANSWERED.union(Flags::FLAGGED).union(Flags::DRAFT)
        );
        assert_eq!(uids(&mailbox), [1]);
    }

    #[test]
    fn keywords_come_from_dovecot_keywords() {
        let (_tmp, root) = maildir();
        fs::write(root.join("dovecot-keywords"), "0 $Forwarded\n2 Junk\n").unwrap();
        deliver(&root, "cur", "1700000001.M1P1.host:2,Sac", b"m\n");
        deliver(&root, "cur", "1700000002.M1P1.host:2,b", b"m\n");
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(mailbox.keyword_names(), ["$Forwarded", "Junk"]);
        assert_eq!(mailbox.messages()[0].keywords, 0b11);
        assert_eq!(mailbox.messages()[1].keywords, 0);
        mailbox.set_flags(0, Flags::NONE);
        mailbox.commit(false).unwrap();
        let names = names_in(&root, "cur");
        assert_eq!(
            names,
            ["1700000001.M1P1.host:2,ac", "1700000002.M1P1.host:2,b"]
        );
    }

    #[test]
    fn examine_fixes_the_uidvalidity_of_a_maildir_without_uidlist() {
        let (_tmp, root) = maildir();
        deliver(&root, "new", "1700000001.M1P1.host", b"m\n");
        let examiner = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        // A writer a second later sees the same UIDVALIDITY (a provisional one would differ).
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let writer = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(writer.uid_validity(), examiner.uid_validity());
        assert_eq!(writer.messages()[0].uid, examiner.messages()[0].uid);
        assert!(examiner.messages()[0].recent && writer.messages()[0].recent);
        // With a uidlist in place, EXAMINE writes nothing, not even UIDs for new mail.
        drop(writer);
        let list = fs::read(root.join(uidlist::UIDLIST_NAME)).unwrap();
        deliver(&root, "new", "1700000002.M1P1.host", b"n\n");
        let examiner = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        assert_eq!(examiner.uid_next(), 3);
        assert_eq!(fs::read(root.join(uidlist::UIDLIST_NAME)).unwrap(), list);
        assert_eq!(names_in(&root, "new"), ["1700000002.M1P1.host"]);
    }

    #[test]
    fn keyword_bit_adds_up_to_26_and_set_keywords_persists() {
        let (_tmp, root) = maildir();
        deliver(&root, "cur", "1700000001.M1P1.host:2,S", b"m\n");
        let mut examiner = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        assert_eq!(examiner.keyword_bit("Work"), None);
        assert!(!root.join(keywords::KEYWORDS_NAME).exists());

        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(mailbox.keyword_bit("Work"), Some(0));
        assert_eq!(mailbox.keyword_bit("Work"), Some(0));
        assert_eq!(mailbox.keyword_bit("work"), Some(1), "case-sensitive");
        for n in 2..26 {
            assert_eq!(mailbox.keyword_bit(&format!("k{n}")), Some(n));
        }
        assert_eq!(mailbox.keyword_bit("k26"), None);
        mailbox.set_keywords(0, 1 | 1 << 25 | 1 << 40);
        assert_eq!(mailbox.messages()[0].keywords, 1 | 1 << 25);
        mailbox.commit(false).unwrap();
        assert_eq!(names_in(&root, "cur"), ["1700000001.M1P1.host:2,Saz"]);
        let reopened = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        assert_eq!(reopened.keyword_names().len(), 26);
        assert_eq!(reopened.messages()[0].keywords, 1 | 1 << 25);
        // The examiner learns the names at its next refresh.
        examiner.refresh().unwrap();
        assert_eq!(examiner.keyword_names()[0], "Work");
        assert_eq!(examiner.messages()[0].keywords, 1 | 1 << 25);
    }

    #[test]
    fn clearing_a_keyword_keeps_unknown_letters() {
        let (_tmp, root) = maildir();
        fs::write(root.join("dovecot-keywords"), "0 Work\n").unwrap();
        deliver(&root, "cur", "1700000001.M1P1.host:2,Pac", b"m\n");
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(mailbox.messages()[0].keywords, 1);
        mailbox.set_keywords(0, 0);
        mailbox.commit(false).unwrap();
        assert_eq!(names_in(&root, "cur"), ["1700000001.M1P1.host:2,Pc"]);
        assert!(!mailbox.read_only());
    }

    #[test]
    fn expunge_unlinks_deleted_and_reports_indices() {
        let (_tmp, root) = maildir();
        for n in 1..=4 {
            deliver(&root, "cur", &format!("170000000{n}.M1P1.host:2,"), b"m\n");
        }
        let mut mailbox = MaildirMailbox::open(&root, Access::Exclusive).unwrap();
        mailbox.set_flags(1, Flags::DELETED);
        mailbox.set_flags(3, Flags::DELETED.union(Flags::SEEN));
        let report = mailbox.commit(true).unwrap();
        assert_eq!(report.expunged, [1, 3]);
        assert_eq!(uids(&mailbox), [1, 3]);
        assert_eq!(
            names_in(&root, "cur"),
            ["1700000001.M1P1.host:2,", "1700000003.M1P1.host:2,"]
        );
        drop(mailbox);
        let mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(uids(&mailbox), [1, 3]);
        assert_eq!(mailbox.uid_next(), 5);
        let text = fs::read_to_string(root.join(uidlist::UIDLIST_NAME)).unwrap();
        assert!(!text.contains("1700000002") && !text.contains("1700000004"));
    }

    #[test]
    fn a_held_message_stays_readable_after_another_session_expunges_it() {
        let (_tmp, root) = maildir();
        deliver(&root, "cur", "1700000001.M1P1.host:2,", b"one\n");
        deliver(&root, "cur", "1700000002.M1P1.host:2,", b"two\n");
        let mut reader = MaildirMailbox::open(&root, Access::Shared).unwrap();
        reader.hold_message(1).unwrap();
        let mut other = MaildirMailbox::open(&root, Access::Shared).unwrap();
        other.set_flags(1, Flags::DELETED);
        assert_eq!(other.commit(true).unwrap().expunged, [1]);
        assert_eq!(read_all(&mut reader, 1).unwrap(), b"two\r\n");
        assert_eq!(read_all(&mut reader, 1).unwrap(), b"two\r\n", "read twice");
        reader.release_message();
        let gone = read_all(&mut reader, 1).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        let gone = reader.hold_message(1).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        assert_eq!(read_all(&mut reader, 0).unwrap(), b"one\r\n");
    }

    #[test]
    fn deleted_without_expunge_is_stored_as_t() {
        let (_tmp, root) = maildir();
        deliver(&root, "cur", "1700000001.M1P1.host:2,S", b"m\n");
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        mailbox.set_flags(0, Flags::DELETED.union(Flags::SEEN));
        assert!(mailbox.commit(false).unwrap().expunged.is_empty());
        assert_eq!(names_in(&root, "cur"), ["1700000001.M1P1.host:2,ST"]);
    }

    #[test]
    fn rename_by_another_process_is_followed() {
        let (_tmp, root) = maildir();
        let original = deliver(&root, "cur", "1700000001.M1P1.host:2,", b"one\ntwo\n");
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        // Another session flags it \Flagged behind our back.
        fs::rename(&original, root.join("cur/1700000001.M1P1.host:2,F")).unwrap();
        assert_eq!(read_all(&mut mailbox, 0).unwrap(), b"one\r\ntwo\r\n");
        fs::rename(
            root.join("cur/1700000001.M1P1.host:2,F"),
            root.join("cur/1700000001.M1P1.host:2,FR"),
        )
        .unwrap();
        // We mark it \Seen: their \Flagged and \Answered stay.
        mailbox.set_flags(0, Flags::SEEN);
        assert!(mailbox.commit(false).unwrap().expunged.is_empty());
        assert_eq!(names_in(&root, "cur"), ["1700000001.M1P1.host:2,FRS"]);
        assert_eq!(
            mailbox.messages()[0].flags,
            Flags::SEEN.union(Flags::FLAGGED).union(Flags::ANSWERED)
        );
    }

    #[test]
    fn message_expunged_elsewhere_is_not_found_and_reported() {
        let (_tmp, root) = maildir();
        let a = deliver(&root, "cur", "1700000001.M1P1.host:2,", b"a\n");
        deliver(&root, "cur", "1700000002.M1P1.host:2,", b"b\n");
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        fs::remove_file(a).unwrap();
        let err = read_all(&mut mailbox, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        mailbox.set_flags(0, Flags::SEEN);
        mailbox.set_flags(1, Flags::SEEN);
        assert_eq!(mailbox.commit(false).unwrap().expunged, [0]);
        assert_eq!(uids(&mailbox), [2]);
        assert_eq!(names_in(&root, "cur"), ["1700000002.M1P1.host:2,S"]);
    }

    #[test]
    fn new_messages_are_recent_and_move_to_cur_on_commit() {
        let (_tmp, root) = maildir();
        deliver(&root, "new", "1700000001.M1P1.host", b"a\n");
        deliver(&root, "cur", "1700000000.M1P1.host:2,S", b"old\n");
        let mut reader = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        assert_eq!(reader.commit(false).unwrap(), CommitReport::default());
        drop(reader);
        assert_eq!(names_in(&root, "new"), ["1700000001.M1P1.host"]);

        let mut mailbox = MaildirMailbox::open(&root, Access::Exclusive).unwrap();
        let recent: Vec<bool> = mailbox.messages().iter().map(|m| m.recent).collect();
        assert_eq!(recent, [false, true]);
        mailbox.commit(false).unwrap();
        assert!(names_in(&root, "new").is_empty());
        assert_eq!(
            names_in(&root, "cur"),
            ["1700000000.M1P1.host:2,S", "1700000001.M1P1.host:2,"]
        );
        // Still recent for this session; not for the next.
        assert!(mailbox.messages()[1].recent);
        drop(mailbox);
        let mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert!(mailbox.messages().iter().all(|m| !m.recent));
        assert_eq!(uids(&mailbox), [1, 2]);
    }

    #[test]
    fn streamed_bytes_equal_size_for_lf_and_crlf_files() {
        let (_tmp, root) = maildir();
        let lf = b"Subject: x\n\nline one\nline two\n";
        let crlf = b"Subject: y\r\n\r\nline one\r\nline two\r\n";
        let mixed = b"A: b\r\nC: d\n\nno newline at end";
        deliver(&root, "new", "1700000001.M1P1.host", lf);
        deliver(&root, "new", "1700000002.M1P1.host", crlf);
        deliver(&root, "new", "1700000003.M1P1.host", mixed);
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        let want: [&[u8]; 3] = [
            b"Subject: x\r\n\r\nline one\r\nline two\r\n",
            crlf,
            b"A: b\r\nC: d\r\n\r\nno newline at end",
        ];
        for (index, want) in want.iter().enumerate() {
            let got = read_all(&mut mailbox, index).unwrap();
            assert_eq!(got, *want);
            assert_eq!(mailbox.messages()[index].size, got.len() as u64);
        }
        // The cached sizes give the same answer on the next open.
        drop(mailbox);
        let mailbox = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        let sizes: Vec<u64> = mailbox.messages().iter().map(|m| m.size).collect();
        assert_eq!(
            sizes,
            [
                want[0].len() as u64,
                crlf.len() as u64,
                want[2].len() as u64
            ]
        );
    }

    #[test]
    fn size_in_name_is_trusted_without_reading_the_body() {
        let (_tmp, root) = maildir();
        // W=100 deliberately disagrees with the 2-byte body: only a read would notice.
        deliver(&root, "cur", "1700000001.M1P1.host,S=2,W=100:2,", b"x\n");
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(mailbox.messages()[0].size, 100);
        let err = read_all(&mut mailbox, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn internal_date_is_mtime() {
        let (_tmp, root) = maildir();
        let path = deliver(&root, "cur", "1700000001.M1P1.host:2,", b"x\n");
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_234_567_890);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
        let mut mailbox = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        // Not looked up by the scan (the name gives the order)...
        assert_eq!(mailbox.messages()[0].internal_date, UNKNOWN_DATE);
        // ... but when asked, even after another process renamed the file.
        fs::rename(&path, root.join("cur/1700000001.M1P1.host:2,S")).unwrap();
        assert_eq!(mailbox.internal_date(0), (1_234_567_890, 0));
        assert_eq!(mailbox.messages()[0].internal_date, 1_234_567_890);
        // A name that does not start with its delivery time is stat()ed at once, for order.
        let odd = deliver(&root, "cur", "odd-name:2,", b"y\n");
        File::options()
            .write(true)
            .open(&odd)
            .unwrap()
            .set_modified(when)
            .unwrap();
        let mailbox = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        assert!(mailbox
            .messages()
            .iter()
            .any(|m| m.internal_date == 1_234_567_890));
    }

    #[test]
    fn missing_maildir_is_empty_read_only_and_created_otherwise() {
        let tmp = TempDir::new();
        let root = tmp.path().join("Maildir");
        let reader = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        assert!(reader.messages().is_empty());
        assert!(!root.exists());

        let mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert!(mailbox.messages().is_empty());
        assert_eq!(mailbox.uid_next(), 1);
        for sub in ["cur", "new", "tmp"] {
            let mode = fs::metadata(root.join(sub)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{sub}");
        }
        assert!(root.join(uidlist::UIDLIST_NAME).is_file());
    }

    #[test]
    fn read_only_writes_only_the_first_uidlist_and_numbers_consistently() {
        let (_tmp, root) = maildir();
        deliver(&root, "new", "1700000002.M1P1.host", b"b\n");
        deliver(&root, "new", "1700000001.M1P1.host", b"a\n");
        let reader = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        assert_eq!(uids(&reader), [1, 2]);
        assert!(root.join(uidlist::UIDLIST_NAME).is_file());
        assert_eq!(names_in(&root, "new").len(), 2, "nothing claimed");
        assert!(names_in(&root, "cur").is_empty());
        let writer = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(uids(&writer), [1, 2]);
        assert_eq!(writer.messages()[0].size, reader.messages()[0].size,);
    }

    #[test]
    fn tmp_and_dot_files_are_ignored() {
        let (_tmp, root) = maildir();
        deliver(&root, "tmp", "1700000001.M1P1.host", b"in progress\n");
        deliver(&root, "cur", ".hidden", b"x\n");
        deliver(&root, "cur", "1700000002.M1P1.host:2,", b"real\n");
        let mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(mailbox.messages().len(), 1);
    }

    #[test]
    fn damaged_uidlist_is_left_alone() {
        let (_tmp, root) = maildir();
        fs::write(root.join(uidlist::UIDLIST_NAME), "garbage\n").unwrap();
        let result = MaildirMailbox::open(&root, Access::Shared);
        assert!(matches!(result, Err(StoreError::Damaged(_))));
        assert_eq!(
            fs::read_to_string(root.join(uidlist::UIDLIST_NAME)).unwrap(),
            "garbage\n"
        );
    }

    #[test]
    fn waits_for_a_uidlist_lock_held_by_another_writer() {
        let (_tmp, root) = maildir();
        deliver(&root, "new", "1700000001.M1P1.host", b"a\n");
        let lock_path = root.join(uidlist::LOCK_NAME);
        fs::write(&lock_path, b"").unwrap();
        let releaser = {
            let lock_path = lock_path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                fs::remove_file(lock_path).unwrap();
            })
        };
        let start = std::time::Instant::now();
        let mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(250));
        releaser.join().unwrap();
        assert_eq!(uids(&mailbox), [1]);
        assert!(root.join(uidlist::UIDLIST_NAME).is_file());
        assert!(!lock_path.exists());
    }

    #[test]
    fn concurrent_openers_agree_on_uids() {
        let (_tmp, root) = maildir();
        for n in 0..50 {
            deliver(
                &root,
                "new",
                &format!("{}.M1P1.host", 1_700_000_000 + n),
                b"m\n",
            );
        }
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
                    let seen: Vec<(u32, String)> = mailbox
                        .files
                        .iter()
                        .zip(mailbox.messages())
                        .map(|(f, m)| (m.uid, f.base().to_string()))
                        .collect();
                    seen
                })
            })
            .collect();
        let results: Vec<_> = openers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results[0].len(), 50);
        assert!(results.iter().all(|r| *r == results[0]));
        let list = uidlist::read(&root).unwrap().unwrap();
        assert_eq!(list.next_uid, 51);
    }

    #[test]
    fn opens_ten_thousand_sized_messages_quickly() {
        let (_tmp, root) = maildir();
        for n in 0..10_000 {
            let name = format!("{}.M{n}P1.host,S=10,W=11:2,S", 1_700_000_000 + n);
            deliver(&root, "cur", &name, b"");
        }
        MaildirMailbox::open(&root, Access::Shared).unwrap();
        let mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(mailbox.messages().len(), 10_000);
        assert_eq!(mailbox.uid_next(), 10_001);
        // The files are empty: a size of 11 can only come from the names (or the uidlist),
        // so no message was read. (Speed itself is measured in bench/, not asserted here.)
        assert!(mailbox.messages().iter().all(|m| m.size == 11));
    }
}
