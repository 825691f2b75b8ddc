//! The UW-IMAP layout of a user's mbox folders ([`MboxStore`]): INBOX is the spool file (or
//! `$MAIL`), every other mailbox is an mbox file below the mail root (`$HOME/<mail_dir>`),
//! directories are `\NoSelect` levels (UW's `dummy` driver), subscriptions are `~/.mailboxlist`
//! (one name per line, as `env_unix.c`).
//!
//! Owns mapping names to paths and the folder operations. Never touches a path for a name that
//! [`names::validate`] refused, never follows a symlinked directory twice while listing, and
//! never replaces an existing mailbox (CREATE and RENAME refuse existing names atomically).

use super::append::{self, Target};
use super::rewrite::Style;
use super::MboxMailbox;
use crate::store::folders::{FolderInfo, MailStore, MailboxStatus, SpecialUse};
use crate::store::lock::MailboxLock;
use crate::store::{names, Access, Flags, Mailbox, NewMessage, StoreConfig, StoreError};
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Deepest directory level LIST descends to.
const MAX_DEPTH: usize = 20;
/// Most entries LIST reports (beyond it the listing is cut short).
const MAX_ENTRIES: usize = 50_000;
/// The subscriptions file in the home directory (UW `env_unix.c`).
const SUBSCRIPTIONS: &str = ".mailboxlist";

/// A user's mbox store.
pub struct MboxStore {
    root: PathBuf,
    inbox: PathBuf,
    home: PathBuf,
    helper: PathBuf,
}

/// What a name refers to on disk.
enum Node {
    Missing,
    Mailbox,
    Directory,
}

impl MboxStore {
    /// Folders live under `home/<cfg.mail_dir>`; INBOX is `inbox` (the spool, or `$MAIL`).
    pub fn new(cfg: &StoreConfig, inbox: &Path, home: &Path) -> MboxStore {
        MboxStore {
            root: home.join(&cfg.mail_dir),
            inbox: inbox.to_path_buf(),
            home: home.to_path_buf(),
            helper: cfg.dotlock_helper.clone(),
        }
    }

    /// The path of a folder (not INBOX) after validation.
    fn folder_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        let parts = names::validate(name)?;
        Ok(parts.iter().fold(self.root.clone(), |p, c| p.join(c)))
    }

    fn node(path: &Path) -> Result<Node, StoreError> {
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(Node::Directory),
            Ok(_) => Ok(Node::Mailbox),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Node::Missing),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(Node::Missing),
            Err(e) => Err(StoreError::Io(path.to_path_buf(), e)),
        }
    }

    /// Path of an existing selectable mailbox; INBOX always exists (a missing spool is empty).
    fn mailbox_path(&self, name: &str) -> Result<(PathBuf, bool), StoreError> {
        if names::is_inbox(name) {
            return Ok((self.inbox.clone(), true));
        }
        let path = self.folder_path(name)?;
        match MboxStore::node(&path)? {
            Node::Mailbox => Ok((path, false)),
            Node::Missing => Err(StoreError::NoSuchMailbox(name.to_string())),
            Node::Directory => Err(StoreError::Refused(format!(
                "Can't open mailbox {name}: not a selectable mailbox"
            ))),
        }
    }

    fn make_parents(&self, path: &Path) -> Result<(), StoreError> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTDIR) | Some(libc::EEXIST) => StoreError::Refused(format!(
                    "Can't create {}: a parent level is a mailbox, not a directory",
                    path.display()
                )),
                _ => StoreError::Io(parent.to_path_buf(), e),
            })
    }

    fn subscriptions_path(&self) -> PathBuf {
        self.home.join(SUBSCRIPTIONS)
    }

    fn write_subscriptions(&self, list: &[String]) -> Result<(), StoreError> {
        let path = self.subscriptions_path();
        let tmp = self
            .home
            .join(format!("{SUBSCRIPTIONS}.{}", std::process::id()));
        let io_err = |e| StoreError::Io(tmp.clone(), e);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err)?;
        let mut text = String::new();
        for name in list {
            text.push_str(name);
            text.push('\n');
        }
        file.write_all(text.as_bytes()).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(|e| StoreError::Io(path.clone(), e))
    }

    /// Move every message of INBOX into the new folder `to` (which must not exist), leaving
    /// INBOX empty with its UID state (see [`MboxMailbox::move_all_to`]).
    /// Write the flag log of the folder at `path`, if it has one, into the folder (before a
    /// RENAME: the log is named after the folder's name).
    fn write_flag_log(&self, path: &Path) -> Result<(), StoreError> {
        let Ok(meta) = fs::metadata(path) else {
            return Ok(());
        };
        let id = super::journal::FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let found = super::flaglog::find(path, id).map_err(|e| StoreError::Io(path.into(), e))?;
        if found.is_none() || !meta.is_file() {
            return Ok(());
        }
        let mut folder = MboxMailbox::open_folder(path, Access::Shared, &self.helper)?;
        folder.write_deferred()
    }

    fn rename_inbox(&self, to: &Path, to_name: &str) -> Result<(), StoreError> {
        let mut inbox = MboxMailbox::open(&self.inbox, Access::Shared, &self.helper)?;
        inbox.move_all_to(to, to_name)
    }
}

impl MboxMailbox {
    /// Under the mailbox lock: copy the whole file to a new file, fsync, link it into place as
    /// `dest` (atomic, never replacing), then expunge everything here through the journal. A
    /// kill between the link and the expunge leaves the messages in both, never in neither.
    fn move_all_to(&mut self, dest: &Path, dest_name: &str) -> Result<(), StoreError> {
        let file = match self.open_file() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return MboxMailbox::create_folder(dest).map_err(|e| exists_as(e, dest_name));
            }
            Err(e) => return Err(self.io_error(e)),
        };
        let _lock = self.lock_recovered(&file)?;
        let stamp = super::FileStamp::of(&file).map_err(|e| self.io_error(e))?;
        if Some(stamp) != self.stamp || self.log_stamp_now(stamp)? != self.log_stamp() {
            self.merge_fresh(&file, stamp)?;
        }
        self.file = Some(file);
        self.stamp = Some(stamp);
        if self.log.is_some() {
            // The copy must carry the flags the log holds.
            self.rewrite_locked(&|_| false)?;
        }
        let tmp = dest.with_file_name(format!(
            ".{}.rename-{}",
            dest.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            std::process::id()
        ));
        let copied = copy_file(self.file.as_ref(), &tmp);
        let linked = copied.and_then(|()| fs::hard_link(&tmp, dest));
        let _ = fs::remove_file(&tmp);
        linked.map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => StoreError::AlreadyExists(dest_name.to_string()),
            _ => StoreError::Io(dest.to_path_buf(), e),
        })?;
        self.rewrite_locked(&|_| true)?;
        Ok(())
    }
}

fn exists_as(e: StoreError, name: &str) -> StoreError {
    match e {
        StoreError::Io(_, ref io) if io.kind() == io::ErrorKind::AlreadyExists => {
            StoreError::AlreadyExists(name.to_string())
        }
        other => other,
    }
}

/// Copy the whole of `source` into a new file `dest` (0600) and fsync it.
fn copy_file(source: Option<&fs::File>, dest: &Path) -> io::Result<()> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)?;
    if let Some(mut src) = source {
        io::Seek::seek(&mut src, io::SeekFrom::Start(0))?;
        let mut reader = io::BufReader::with_capacity(256 * 1024, src);
        io::copy(&mut reader, &mut out)?;
    }
    out.sync_all()
}

/// `\Marked` as UW's dummy driver decides it: modified since last read.
fn marked(meta: &fs::Metadata) -> bool {
    meta.mtime() > meta.atime()
        || (meta.mtime() == meta.atime() && meta.mtime_nsec() > meta.atime_nsec())
}

/// A directory entry name usable as a wire-form name component. Unlike UW, dotlocks, our
/// journals and half-made CREATE/RENAME files are never listed, nor names a client could not
/// address (8-bit, control chars).
fn listable(name: &str, show_hidden: bool) -> bool {
    (show_hidden || !name.starts_with('.'))
        && !name.ends_with(".lock")
        && !name.contains(".mbox-journal")
        && !(name.starts_with('.') && (name.contains(".create-") || name.contains(".rename-")))
        && names::validate(name).is_ok()
}

/// Depth-first walk of the mail root.
struct Walker<'a> {
    show_hidden: bool,
    inbox: &'a Path,
    visited: HashSet<(u64, u64)>,
    out: Vec<FolderInfo>,
}

impl Walker<'_> {
    /// List `dir` (wire prefix `prefix`, "" at the root); returns whether anything was listed.
    fn walk(&mut self, dir: &Path, prefix: &str, depth: usize) -> bool {
        let Ok(meta) = fs::metadata(dir) else {
            return false;
        };
        if depth > MAX_DEPTH || !self.visited.insert((meta.dev(), meta.ino())) {
            return false;
        }
        let Ok(reader) = fs::read_dir(dir) else {
            return false;
        };
        let mut names: Vec<String> = reader
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| listable(n, self.show_hidden))
            .collect();
        names.sort();
        let mut any = false;
        for name in names {
            if self.out.len() >= MAX_ENTRIES {
                break;
            }
            let path = dir.join(&name);
            let wire = format!("{prefix}{name}");
            if names::is_inbox(&wire) || path == self.inbox {
                continue;
            }
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            any = true;
            let special_use = if prefix.is_empty() {
                SpecialUse::for_name(&name)
            } else {
                None
            };
            if meta.is_dir() {
                let at = self.out.len();
                self.out.push(FolderInfo {
                    name: wire.clone(),
                    selectable: false,
                    inferiors_allowed: true,
                    has_children: false,
                    marked: None,
                    special_use,
                });
                let children = self.walk(&path, &format!("{wire}/"), depth + 1);
                self.out[at].has_children = children;
            } else if meta.is_file() {
                self.out.push(FolderInfo {
                    name: wire,
                    selectable: true,
                    inferiors_allowed: false,
                    has_children: false,
                    marked: Some(marked(&meta)),
                    special_use,
                });
            }
        }
        any
    }
}

impl MailStore for MboxStore {
    fn list(&self, show_hidden: bool) -> Result<Vec<FolderInfo>, StoreError> {
        let mut walker = Walker {
            show_hidden,
            inbox: &self.inbox,
            visited: HashSet::new(),
            out: vec![FolderInfo {
                name: "INBOX".to_string(),
                selectable: true,
                inferiors_allowed: false,
                has_children: false,
                // UW lists INBOX as just `\NoInferiors`, without \Marked or \UnMarked.
                marked: None,
                special_use: None,
            }],
        };
        walker.walk(&self.root, "", 0);
        Ok(walker.out)
    }

    fn open(&self, name: &str, access: Access) -> Result<Box<dyn Mailbox>, StoreError> {
        let (path, is_inbox) = self.mailbox_path(name)?;
        let mailbox = if is_inbox {
            MboxMailbox::open(&path, access, &self.helper)?
        } else {
            MboxMailbox::open_folder(&path, access, &self.helper)?
        };
        Ok(Box::new(mailbox))
    }

    /// Stores UIDs for messages that have none yet (see [`MboxMailbox::open_for_status`]).
    fn status(&self, name: &str) -> Result<MailboxStatus, StoreError> {
        let (path, is_inbox) = self.mailbox_path(name)?;
        let mailbox = MboxMailbox::open_for_status(&path, &self.helper, !is_inbox)?;
        let messages = mailbox.messages();
        let count = |f: &dyn Fn(&crate::store::MessageInfo) -> bool| {
            u32::try_from(messages.iter().filter(|m| f(m)).count()).unwrap_or(u32::MAX)
        };
        Ok(MailboxStatus {
            messages: count(&|_| true),
            recent: count(&|m| m.recent),
            unseen: count(&|m| !m.flags.contains(Flags::SEEN)),
            uid_next: mailbox.uid_next(),
            uid_validity: mailbox.uid_validity(),
        })
    }

    fn create(&self, name: &str) -> Result<(), StoreError> {
        if names::is_inbox(name.strip_suffix('/').unwrap_or(name)) {
            return Err(StoreError::AlreadyExists(name.to_string()));
        }
        let path = self.folder_path(name)?;
        if !matches!(MboxStore::node(&path)?, Node::Missing) {
            return Err(StoreError::AlreadyExists(name.to_string()));
        }
        self.make_parents(&path)?;
        if name.ends_with('/') {
            return fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => StoreError::AlreadyExists(name.to_string()),
                    _ => StoreError::Io(path.clone(), e),
                });
        }
        MboxMailbox::create_folder(&path).map_err(|e| exists_as(e, name))
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        if names::is_inbox(name) {
            return Err(StoreError::Refused("Can't delete INBOX".to_string()));
        }
        let path = self.folder_path(name)?;
        match MboxStore::node(&path)? {
            Node::Missing => Err(StoreError::NoSuchMailbox(name.to_string())),
            Node::Directory => fs::remove_dir(&path).map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOTEMPTY) {
                    StoreError::Refused(format!("Can't delete mailbox {name}: Directory not empty"))
                } else {
                    StoreError::Io(path.clone(), e)
                }
            }),
            Node::Mailbox => {
                let io_err = |e| StoreError::Io(path.clone(), e);
                let file = OpenOptions::new().read(true).write(true).open(&path);
                let file = file.map_err(io_err)?;
                let _lock = MailboxLock::acquire(&path, &file, &self.helper, super::LOCK_TIMEOUT)
                    .map_err(io_err)?;
                let id = super::journal::FileId::of(&file).map_err(io_err)?;
                fs::remove_file(&path).map_err(io_err)?;
                // Its flag log goes with it.
                for log in super::flaglog::paths(&path, id) {
                    super::flaglog::remove(&log).map_err(|e| StoreError::Io(log.clone(), e))?;
                }
                Ok(())
            }
        }
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        if names::is_inbox(to) {
            return Err(StoreError::AlreadyExists(to.to_string()));
        }
        let to_path = self.folder_path(to)?;
        if !matches!(MboxStore::node(&to_path)?, Node::Missing) {
            return Err(StoreError::AlreadyExists(to.to_string()));
        }
        if names::is_inbox(from) {
            self.make_parents(&to_path)?;
            return self.rename_inbox(&to_path, to);
        }
        let from_path = self.folder_path(from)?;
        if matches!(MboxStore::node(&from_path)?, Node::Missing) {
            return Err(StoreError::NoSuchMailbox(from.to_string()));
        }
        if to_path.starts_with(&from_path) {
            return Err(StoreError::Refused(format!(
                "Can't rename mailbox {from} to {to}: a mailbox cannot move into itself"
            )));
        }
        self.make_parents(&to_path)?;
        self.write_flag_log(&from_path)?;
        nix::fcntl::renameat2(
            None,
            &from_path,
            None,
            &to_path,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            nix::errno::Errno::EEXIST => StoreError::AlreadyExists(to.to_string()),
            other => StoreError::Io(from_path.clone(), other.into()),
        })
    }

    fn subscriptions(&self) -> Result<Vec<String>, StoreError> {
        let path = self.subscriptions_path();
        match fs::read(&path) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(StoreError::Io(path, e)),
        }
    }

    fn set_subscribed(&self, name: &str, subscribed: bool) -> Result<(), StoreError> {
        if !names::is_inbox(name) {
            names::validate(name)?;
        }
        let mut list = self.subscriptions()?;
        let present = list.iter().any(|n| n == name);
        match (subscribed, present) {
            (true, false) => list.push(name.to_string()),
            (false, true) => list.retain(|n| n != name),
            _ => return Ok(()),
        }
        self.write_subscriptions(&list)
    }

    fn append(
        &self,
        name: &str,
        messages: &mut [NewMessage<'_>],
    ) -> Result<(u32, Vec<u32>), StoreError> {
        let (path, is_inbox) = self.mailbox_path(name)?;
        let target = Target {
            path: &path,
            helper: &self.helper,
            style: if is_inbox { Style::Base } else { Style::Pseudo },
            create_missing: is_inbox,
        };
        append::append(&target, messages).map_err(|e| match e {
            StoreError::NoSuchMailbox(_) => StoreError::NoSuchMailbox(name.to_string()),
            StoreError::Io(p, e) if is_inbox && e.kind() == io::ErrorKind::PermissionDenied => {
                StoreError::Refused(format!(
                    "Can't create or write INBOX {}: {e} (ask the administrator to create it)",
                    p.display()
                ))
            }
            other => other,
        })
    }
}
