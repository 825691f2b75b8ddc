//! The mail store: a [`Mailbox`] trait with mbox ([`mbox`]) and Maildir ([`maildir`])
//! implementations, and the locking that lets us share mailboxes with MTAs and other servers
//! ([`lock`]).
//!
//! Owns files under the mail root and their metadata (UIDs, flags, keywords) in formats UW-IMAP and
//! Dovecot read and write. Never formats a protocol response and never decides policy about who
//! may open what: callers have already dropped privileges to the mailbox owner.
//!
//! Message bytes are always presented as RFC 822 octets with CRLF line ends and with our metadata
//! headers (X-IMAPbase, X-IMAP, X-UID, Status, X-Status, X-Keywords, Content-Length) removed;
//! `MessageInfo::size` is the exact length of that presentation.

pub mod folders;
pub mod lock;
pub mod maildir;
pub mod mbox;
pub mod names;
pub mod uidvalidity;

pub use folders::{open_store, FolderInfo, MailStore, MailboxStatus, SpecialUse};

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The five system flags that persist (`\Recent` is session state, see [`MessageInfo::recent`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    pub const SEEN: Flags = Flags(1);
    pub const ANSWERED: Flags = Flags(2);
    pub const FLAGGED: Flags = Flags(4);
    pub const DELETED: Flags = Flags(8);
    pub const DRAFT: Flags = Flags(16);
    pub const NONE: Flags = Flags(0);

    pub const fn bits(self) -> u8 {
        self.0
    }
    pub const fn from_bits(bits: u8) -> Flags {
        Flags(bits & 31)
    }
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }
    pub fn remove(&mut self, other: Flags) {
        self.0 &= !other.0;
    }
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// The compact per-message index entry every store keeps in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    /// IMAP UID; never 0, strictly increasing in mailbox order.
    pub uid: u32,
    pub flags: Flags,
    /// Bit i set means the mailbox's keyword `keyword_names()[i]` is set (at most 64 keywords).
    pub keywords: u64,
    /// True when no session had seen the message before this one opened the mailbox
    /// (mbox: no `O` in Status; Maildir: the file was in new/).
    pub recent: bool,
    /// Exact size in octets of the message as presented (CRLF, metadata headers removed).
    pub size: u64,
    /// INTERNALDATE as seconds since the epoch (mbox: From_ line; Maildir: file mtime), or
    /// [`UNKNOWN_DATE`] while the store has not looked it up: read it with
    /// [`Mailbox::internal_date`], never from here.
    pub internal_date: i64,
    /// The zone of INTERNALDATE in minutes east of UTC.
    pub internal_tz_minutes: i32,
}

/// [`MessageInfo::internal_date`] of a message whose date the store has not looked up yet
/// (Maildir reads a file's mtime only when a client asks for it, as Dovecot does).
pub const UNKNOWN_DATE: i64 = i64::MIN;

/// Why a mailbox could not be opened or written.
#[derive(Debug)]
pub enum StoreError {
    /// Another session holds the mailbox exclusively (POP3 `[IN-USE]`).
    InUse(String),
    /// The file is not a mailbox we can parse; it has been left untouched.
    Damaged(String),
    /// An I/O error, with the path it concerns.
    Io(PathBuf, io::Error),
    /// No mailbox of that name (IMAP `NO [TRYCREATE]` for APPEND/COPY/MOVE, `NO [NONEXISTENT]`).
    NoSuchMailbox(String),
    /// CREATE or RENAME onto a name that exists (`NO [ALREADYEXISTS]`).
    AlreadyExists(String),
    /// A request the store refuses, with the reason for the client (bad name, deleting a
    /// directory that is not empty, renaming a folder into itself...): `NO [CANNOT]`.
    Refused(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::InUse(why) => write!(f, "mailbox in use: {why}"),
            StoreError::Damaged(why) => write!(f, "damaged mailbox: {why}"),
            StoreError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            StoreError::NoSuchMailbox(name) => write!(f, "no such mailbox: {name}"),
            StoreError::AlreadyExists(name) => write!(f, "mailbox already exists: {name}"),
            StoreError::Refused(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StoreError {}

/// The error a message reader returns when the mailbox was rewritten by another process since
/// this session last read its index: nothing was read. Refresh the index and try again (IMAP
/// answers the command NO). Test for it with [`is_mailbox_changed`].
#[derive(Debug)]
pub struct MailboxChanged;

impl fmt::Display for MailboxChanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mailbox changed, retry")
    }
}

impl std::error::Error for MailboxChanged {}

impl MailboxChanged {
    /// As an `io::Error` (kind `Other`), the form readers return it in.
    pub fn io_error() -> io::Error {
        io::Error::other(MailboxChanged)
    }
}

/// Whether `e` is [`MailboxChanged`]: the index is stale, not the store broken.
pub fn is_mailbox_changed(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<MailboxChanged>())
}

/// How a session wants a mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// POP3 (RFC 1939): exclusive use for the whole session; a second one gets `InUse`.
    Exclusive,
    /// IMAP read-write, shared with other sessions and the MTA.
    Shared,
    /// IMAP EXAMINE: changes no message or flag, claims no `\Recent`. An mbox is never
    /// written; a Maildir without `dovecot-uidlist` gets its first one (see [`maildir`]).
    /// STATUS uses [`MailStore::status`], which stores missing UIDs.
    ReadOnly,
}

/// What [`Mailbox::commit`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Indices (0-based, as before the commit, ascending) of the messages removed.
    pub expunged: Vec<usize>,
}

/// Which messages a commit removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expunge<'a> {
    /// Only persist flag changes.
    Nothing,
    /// Remove every message flagged `\Deleted` (POP3 QUIT, IMAP EXPUNGE and CLOSE).
    AllDeleted,
    /// Remove the messages flagged `\Deleted` whose UID is listed (UIDPLUS `UID EXPUNGE`).
    Uids(&'a [u32]),
}

/// What other processes changed since the last [`Mailbox::refresh`] (or open), in the order an
/// IMAP session reports it: expunges first, then flag changes, then new messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Indices (as before this refresh, ascending) of messages that are gone.
    pub expunged: Vec<usize>,
    /// Indices (as after this refresh) of surviving messages whose flags or keywords changed.
    pub flags_changed: Vec<usize>,
    /// How many new messages now stand at the end of [`Mailbox::messages`].
    pub appended: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.expunged.is_empty() && self.flags_changed.is_empty() && self.appended == 0
    }
}

/// A message to append (IMAP APPEND, COPY, MOVE).
pub struct NewMessage<'a> {
    /// The message text, with CRLF or LF line ends; stored in the mailbox's own convention.
    pub source: &'a mut dyn Read,
    /// Exact length of `source` in bytes, when known (literals); lets stores write `,S=`.
    pub len: Option<u64>,
    pub flags: Flags,
    pub keywords: &'a [String],
    /// INTERNALDATE (seconds since the epoch, zone in minutes east of UTC); `None` = now.
    pub internal_date: Option<(i64, i32)>,
}

/// One open mailbox. Implementations keep only the compact index in memory and stream bodies.
pub trait Mailbox {
    /// The file or directory this mailbox lives in (for logs and error messages).
    fn path(&self) -> &Path;
    fn uid_validity(&self) -> u32;
    /// The UID the next new message will get.
    fn uid_next(&self) -> u32;
    /// The index, in mailbox order.
    fn messages(&self) -> &[MessageInfo];
    /// Keyword names, indexed by the bits of [`MessageInfo::keywords`].
    fn keyword_names(&self) -> &[String];
    /// Message `index`'s INTERNALDATE (seconds since the epoch) and its zone (minutes east
    /// of UTC). A store may look it up only now (Maildir: the file's mtime) and remember it.
    fn internal_date(&mut self, index: usize) -> (i64, i32) {
        self.messages()
            .get(index)
            .map_or((0, 0), |m| (m.internal_date, m.internal_tz_minutes))
    }
    /// A reader over message `index` exactly as presented (CRLF, metadata hidden):
    /// it yields exactly `messages()[index].size` bytes. Streams; never loads the whole body.
    /// Never yields bytes other than the message's: when another process changed the mailbox
    /// since the index was read, fails with [`MailboxChanged`] (mbox: the reader holds a
    /// shared fcntl lock for its lifetime, so writers wait until it is dropped).
    fn open_message(&mut self, index: usize) -> io::Result<Box<dyn Read + '_>>;
    /// [`Mailbox::open_message`] from presented offset `offset` on: yields the message's
    /// bytes after the first `offset` (none when `offset` is past its end). Costs a count of
    /// the bytes before `offset`, not their presentation, and a client reading one large
    /// message in consecutive pieces costs about one pass over it.
    fn open_message_at(&mut self, index: usize, offset: u64) -> io::Result<Box<dyn Read + '_>>;
    /// Make sure message `index` is still readable as indexed, and keep it so until
    /// [`Mailbox::release_message`]: until then `open_message(index)` yields its bytes and
    /// cannot fail with [`MailboxChanged`] or "expunged" (mbox: holds the shared lock, so
    /// writers wait; Maildir: keeps the file open). Fails as `open_message` would. Lets a
    /// response that announces a message's bytes be sure it can send them. Hold briefly: an
    /// mbox held this way keeps deliveries waiting.
    fn hold_message(&mut self, index: usize) -> io::Result<()>;
    /// End [`Mailbox::hold_message`]. Needed before any write to the mailbox.
    fn release_message(&mut self);
    /// Change message `index`'s flags in memory; persisted by [`Mailbox::commit`].
    fn set_flags(&mut self, index: usize, flags: Flags);
    /// Persist flag changes and, with `expunge`, remove every message flagged `\Deleted`.
    /// Mail delivered by others since the mailbox was opened is kept. Crash-safe: a kill at any
    /// instant loses and duplicates nothing that was not deleted.
    fn commit(&mut self, expunge: bool) -> Result<CommitReport, StoreError> {
        self.commit_with(if expunge {
            Expunge::AllDeleted
        } else {
            Expunge::Nothing
        })
    }
    /// [`Mailbox::commit`] with a choice of what to expunge. Applies only THIS session's flag
    /// and keyword changes on top of what is on disk now, so changes made by other sessions
    /// since are never lost. The index afterwards reflects the disk (like a refresh) minus the
    /// expunged messages; `CommitReport::expunged` lists the removed indices.
    fn commit_with(&mut self, expunge: Expunge<'_>) -> Result<CommitReport, StoreError>;
    /// True when opened `ReadOnly` (EXAMINE, or a writer could not be had).
    fn read_only(&self) -> bool;
    /// Whether a commit left changes that only this store's own sessions see yet (mbox: the
    /// flag log of a large STORE, see `mbox::flaglog`); [`Mailbox::write_deferred`] writes them
    /// where every program looks. False for a read-only session.
    fn has_deferred_writes(&self) -> bool {
        false
    }
    /// Write what [`Mailbox::has_deferred_writes`] reports. Call it when the client is quiet
    /// and before the mailbox is left.
    fn write_deferred(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Change message `index`'s keywords (bits of [`Mailbox::keyword_names`]) in memory.
    fn set_keywords(&mut self, index: usize, keywords: u64);
    /// The bit of keyword `name` (case-sensitive, as UW and Dovecot), adding it to the
    /// mailbox's keyword list if new; `None` when the mailbox holds no more keywords.
    fn keyword_bit(&mut self, name: &str) -> Option<u32>;
    /// Catch up with other processes: deliveries, other sessions' flag changes and expunges.
    /// Cheap when nothing changed (a stat). Writes nothing but, in a read-write session, the
    /// claim on `\Recent` of messages no session has seen yet (so only one session reports it).
    fn refresh(&mut self) -> Result<Changes, StoreError>;
    /// Append messages at the end, atomically as a group where the store allows (MULTIAPPEND):
    /// on error none of them is visible. Returns their UIDs. The index is NOT updated: the next
    /// [`Mailbox::refresh`] reports them as appended, like anyone else's delivery.
    fn append(&mut self, messages: &mut [NewMessage<'_>]) -> Result<Vec<u32>, StoreError>;
    /// A cheap token that changes whenever the mailbox may have changed on disk (file size and
    /// mtime, directory mtimes): IDLE polls it (and watches it with inotify where available).
    fn change_token(&self) -> io::Result<u64>;
}

/// Where a user's mail lives.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub spool_dir: PathBuf,
    pub maildir_name: String,
    /// mbox folders' root relative to the home directory ("" = the home directory, as UW).
    pub mail_dir: String,
    pub choice: crate::config::StoreChoice,
    /// setgid-mail dotlock helper for spool directories the user cannot write.
    pub dotlock_helper: PathBuf,
}

/// Which store, and where, a user's INBOX is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboxLocation {
    Mbox(PathBuf),
    Maildir(PathBuf),
}

/// Decide where `user`'s INBOX is. `mail_env` is `$MAIL` when the server runs as the user itself
/// (it overrides the spool path for mbox, as mail(1) and mutt honour it).
pub fn locate_inbox(
    cfg: &StoreConfig,
    user: &str,
    home: &Path,
    mail_env: Option<&Path>,
) -> InboxLocation {
    use crate::config::StoreChoice;
    let maildir = home.join(&cfg.maildir_name);
    let mbox = match mail_env {
        Some(p) => p.to_path_buf(),
        None => cfg.spool_dir.join(user),
    };
    match cfg.choice {
        StoreChoice::Mbox => InboxLocation::Mbox(mbox),
        StoreChoice::Maildir => InboxLocation::Maildir(maildir),
        StoreChoice::Auto if maildir.is_dir() => InboxLocation::Maildir(maildir),
        StoreChoice::Auto => InboxLocation::Mbox(mbox),
    }
}

/// Open a user's INBOX wherever it is.
pub fn open_inbox(
    cfg: &StoreConfig,
    location: &InboxLocation,
    access: Access,
) -> Result<Box<dyn Mailbox>, StoreError> {
    match location {
        InboxLocation::Mbox(path) => Ok(Box::new(mbox::MboxMailbox::open(
            path,
            access,
            &cfg.dotlock_helper,
        )?)),
        InboxLocation::Maildir(path) => Ok(Box::new(maildir::MaildirMailbox::open(path, access)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreChoice;

    fn cfg(choice: StoreChoice) -> StoreConfig {
        StoreConfig {
            spool_dir: "/var/mail".into(),
            maildir_name: "Maildir".into(),
            mail_dir: String::new(),
            choice,
            dotlock_helper: "/nonexistent".into(),
        }
    }

    #[test]
    fn auto_prefers_existing_maildir() {
        let home = std::env::temp_dir().join(format!("locate-{}", std::process::id()));
        std::fs::create_dir_all(home.join("Maildir")).unwrap();
        let got = locate_inbox(&cfg(StoreChoice::Auto), "u", &home, None);
        assert_eq!(got, InboxLocation::Maildir(home.join("Maildir")));
        std::fs::remove_dir_all(&home).unwrap();
        let got = locate_inbox(&cfg(StoreChoice::Auto), "u", &home, None);
        assert_eq!(got, InboxLocation::Mbox("/var/mail/u".into()));
    }

    #[test]
    fn mail_env_overrides_spool() {
        let got = locate_inbox(
            &cfg(StoreChoice::Mbox),
            "u",
            Path::new("/h"),
            Some(Path::new("/x/y")),
        );
        assert_eq!(got, InboxLocation::Mbox("/x/y".into()));
    }

    #[test]
    fn mailbox_changed_is_recognised_and_nothing_else() {
        let e = MailboxChanged::io_error();
        assert!(is_mailbox_changed(&e));
        assert_eq!(e.kind(), io::ErrorKind::Other);
        assert_eq!(e.to_string(), "mailbox changed, retry");
        assert!(!is_mailbox_changed(&io::Error::other(
            "mailbox changed, retry"
        )));
        assert!(!is_mailbox_changed(&io::ErrorKind::UnexpectedEof.into()));
    }

    #[test]
    fn flags_set_operations() {
        let mut f = Flags::NONE;
        f.insert(Flags::SEEN);
        f.insert(Flags::DELETED);
        assert!(f.contains(Flags::SEEN) && f.contains(Flags::DELETED));
        f.remove(Flags::SEEN);
        assert_eq!(f, Flags::DELETED);
        assert_eq!(Flags::from_bits(255).bits(), 31);
    }
}
