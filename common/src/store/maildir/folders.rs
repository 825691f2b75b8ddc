//! The Maildir++ layout of a user's folders, as Dovecot and Courier keep it, so their users keep
//! their folders: the root (`~/Maildir`) is INBOX; folder `a/b` (wire name, `/` delimiter) is
//! the directory `.a.b` beside `cur new tmp`, with its own `cur new tmp` and an empty
//! `maildirfolder` file. Folders are listed at the top level (`Sent`, not `INBOX/Sent`) and
//! INBOX has no inferiors, as Dovecot's default.
//!
//! Owns folder directories and the `subscriptions` file. Never touches messages except to move
//! INBOX's into a new folder on RENAME INBOX, one rename() each.
//!
//! Deliberate limits, documented for the protocol layer:
//! - `.` is the on-disk hierarchy separator, so a name component containing `.` is `Refused`.
//! - No directory-only levels exist in Maildir++: a missing intermediate level (`.a` absent,
//!   `.a.b` present) is listed `\NoSelect` (Dovecot: `\NonExistent`); CREATE does not create
//!   parents and CREATE `a/` creates the mailbox `a`.
//! - `show_hidden` has no effect: every Maildir++ folder is a dot-directory, and a name with an
//!   empty component (`..x`, `.a..b`) is never a folder (we use `..deleted-*` while deleting).
//! - RENAME moves each folder directory with one rename(); a crash in a RENAME with children
//!   can leave some children under the old name (every message is still exactly once on disk).
//!   RENAME INBOX gives the moved messages new UIDs in the new folder.
//! - Subscriptions are read in Dovecot 2.x (`V\t2` header, tab- or `.`-separated names) and
//!   Courier (`INBOX.Sent`) forms; we write plain `/`-separated wire names, one per line
//!   (Dovecot configured with a `/` separator reads them as they are).

use super::{create_dirs, io_at, uidlist, MaildirMailbox, Subdir, UIDLIST_LOCK_WAIT};
use crate::store::names::{is_inbox, validate};
use crate::store::{
    Access, FolderInfo, MailStore, Mailbox, MailboxStatus, NewMessage, SpecialUse, StoreConfig,
    StoreError,
};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The marker file Maildir++ puts in every folder (for the LDA's quota code).
const FOLDER_MARKER: &str = "maildirfolder";
const SUBSCRIPTIONS_NAME: &str = "subscriptions";
/// Prefix of a folder directory being deleted (never listed: its first component is empty).
const DELETING_PREFIX: &str = "..deleted-";

/// A user's Maildir++ store rooted at their INBOX Maildir.
pub struct MaildirStore {
    root: PathBuf,
}

impl MaildirStore {
    /// The store whose INBOX is the Maildir `root` (usually `~/Maildir`).
    pub fn new(_cfg: &StoreConfig, root: &Path) -> MaildirStore {
        MaildirStore {
            root: root.to_path_buf(),
        }
    }

    /// The directory of folder `name` (not INBOX), after validating it.
    fn folder_dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        let parts = validate(name)?;
        if is_inbox(parts[0]) && parts.len() > 1 {
            return Err(StoreError::Refused(
                "INBOX has no inferiors in a Maildir++ store".into(),
            ));
        }
        if parts.iter().any(|p| p.contains('.')) {
            return Err(StoreError::Refused(format!(
                "Invalid mailbox name {name:?}: '.' separates folders on disk and cannot be part of a name"
            )));
        }
        Ok(self.root.join(format!(".{}", parts.join("."))))
    }

    /// The directory of mailbox `name`, INBOX included.
    /// The directory of mailbox `name`, refusing a `\NoSelect` level and a missing folder.
    fn selectable_dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        let dir = self.mailbox_dir(name)?;
        if !is_inbox(name) && !dir.is_dir() {
            if !self.children(name)?.is_empty() {
                return Err(StoreError::Refused(format!("{name} is not selectable")));
            }
            return Err(StoreError::NoSuchMailbox(name.to_string()));
        }
        Ok(dir)
    }

    fn mailbox_dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        if is_inbox(name) {
            Ok(self.root.clone())
        } else {
            self.folder_dir(name)
        }
    }

    /// Wire names of every folder directory, sorted.
    fn folder_names(&self) -> Result<Vec<String>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Io(self.root.clone(), e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_at(self.root.clone()))?;
            let Some(name) = entry.file_name().to_str().and_then(wire_name) else {
                continue;
            };
            if entry.path().is_dir() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Existing folders strictly below `name`.
    fn children(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{name}/");
        Ok(self
            .folder_names()?
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect())
    }

    fn subscriptions_path(&self) -> PathBuf {
        self.root.join(SUBSCRIPTIONS_NAME)
    }

    /// Rewrite the subscriptions file under its dotlock with `change` applied.
    fn update_subscriptions(
        &self,
        change: impl FnOnce(&mut Vec<String>),
    ) -> Result<(), StoreError> {
        let path = self.subscriptions_path();
        let lock =
            uidlist::UidlistLock::acquire_for(&path, UIDLIST_LOCK_WAIT, uidlist::STALE_AFTER)
                .map_err(io_at(path.clone()))?;
        let mut names = read_subscriptions(&path)?;
        change(&mut names);
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        lock.replace_with(text.as_bytes()).map_err(io_at(path))
    }
}

/// The wire name of a root directory entry, when it is a Maildir++ folder (`.a.b` → `a/b`).
fn wire_name(entry: &str) -> Option<String> {
    let rest = entry.strip_prefix('.')?;
    let parts: Vec<&str> = rest.split('.').collect();
    let name = parts.join("/");
    let valid = validate(&name).is_ok_and(|p| p.len() == parts.len());
    (valid && !is_inbox(parts[0])).then_some(name)
}

/// The subscriptions file's names in wire form, in file order, duplicates dropped.
fn read_subscriptions(path: &Path) -> Result<Vec<String>, StoreError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::Io(path.to_path_buf(), e)),
    };
    let mut names: Vec<String> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || (number == 0 && line.starts_with("V\t")) {
            continue;
        }
        let name = subscription_wire_name(line);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// A subscriptions line in wire form: Dovecot's tab or `.` separators and Courier's `INBOX.`
/// prefix become `/` names (`.` is never part of a name we serve, see the module notes).
fn subscription_wire_name(line: &str) -> String {
    let line = match line.get(..6) {
        Some(prefix) if prefix.eq_ignore_ascii_case("INBOX.") => &line[6..],
        _ => line,
    };
    line.replace(['\t', '.'], "/")
}

/// Create folder directory `dir` (`cur new tmp` and the marker). `AlreadyExists` if it exists.
fn create_folder(dir: &Path, name: &str) -> Result<(), StoreError> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(StoreError::AlreadyExists(name.to_string()))
        }
        Err(e) => return Err(StoreError::Io(dir.to_path_buf(), e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io_at(dir.to_path_buf()))?;
    create_dirs(dir)?;
    let marker = dir.join(FOLDER_MARKER);
    File::create(&marker).map(drop).map_err(io_at(marker))
}

impl MailStore for MaildirStore {
    fn list(&self, _show_hidden: bool) -> Result<Vec<FolderInfo>, StoreError> {
        let names = self.folder_names()?;
        // name → selectable; missing intermediate levels are added as \NoSelect.
        let mut all: BTreeMap<String, bool> = BTreeMap::new();
        for name in &names {
            all.insert(name.clone(), true);
            let mut parent = name.as_str();
            while let Some((up, _)) = parent.rsplit_once('/') {
                all.entry(up.to_string()).or_insert(false);
                parent = up;
            }
        }
        let mut list = vec![FolderInfo {
            name: "INBOX".into(),
            selectable: true,
            inferiors_allowed: false,
            has_children: false,
            marked: Some(has_new_mail(&self.root)),
            special_use: None,
        }];
        for (name, selectable) in &all {
            let prefix = format!("{name}/");
            let has_children = all
                .range(prefix.clone()..)
                .next()
                .is_some_and(|(n, _)| n.starts_with(&prefix));
            let dir = self.root.join(format!(".{}", name.replace('/', ".")));
            list.push(FolderInfo {
                name: name.clone(),
                selectable: *selectable,
                inferiors_allowed: true,
                has_children,
                marked: selectable.then(|| has_new_mail(&dir)),
                special_use: if name.contains('/') {
                    None
                } else {
                    SpecialUse::for_name(name)
                },
            });
        }
        Ok(list)
    }

    fn open(&self, name: &str, access: Access) -> Result<Box<dyn Mailbox>, StoreError> {
        let dir = self.selectable_dir(name)?;
        Ok(Box::new(MaildirMailbox::open(&dir, access)?))
    }

    /// Records UIDs for messages that have none yet (see [`MaildirMailbox::open_for_status`]).
    fn status(&self, name: &str) -> Result<MailboxStatus, StoreError> {
        let mailbox = MaildirMailbox::open_for_status(&self.selectable_dir(name)?)?;
        let count = |f: &dyn Fn(&crate::store::MessageInfo) -> bool| {
            u32::try_from(mailbox.messages().iter().filter(|m| f(m)).count()).unwrap_or(u32::MAX)
        };
        Ok(MailboxStatus {
            messages: u32::try_from(mailbox.messages().len()).unwrap_or(u32::MAX),
            recent: count(&|m| m.recent),
            unseen: count(&|m| !m.flags.contains(crate::store::Flags::SEEN)),
            uid_next: mailbox.uid_next(),
            uid_validity: mailbox.uid_validity(),
        })
    }

    fn create(&self, name: &str) -> Result<(), StoreError> {
        if is_inbox(name.strip_suffix('/').unwrap_or(name)) {
            return Err(StoreError::AlreadyExists(name.to_string()));
        }
        let dir = self.folder_dir(name)?;
        create_dirs(&self.root)?;
        create_folder(&dir, name.strip_suffix('/').unwrap_or(name))
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        if is_inbox(name) {
            return Err(StoreError::Refused("INBOX cannot be deleted".into()));
        }
        let dir = self.folder_dir(name)?;
        if !self.children(name)?.is_empty() {
            return Err(StoreError::Refused(
                "Mailbox has children, delete them first".into(),
            ));
        }
        if !dir.is_dir() {
            return Err(StoreError::NoSuchMailbox(name.to_string()));
        }
        // Out of sight in one rename, then removed: a crash leaves an unlisted leftover,
        // swept by the next DELETE.
        let doomed = self.root.join(format!(
            "{DELETING_PREFIX}{}-{}",
            std::process::id(),
            super::now_uid_validity()
        ));
        fs::rename(&dir, &doomed).map_err(io_at(dir))?;
        fs::remove_dir_all(&doomed).map_err(io_at(doomed))?;
        sweep_leftovers(&self.root);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        if is_inbox(to) {
            return Err(StoreError::AlreadyExists(to.to_string()));
        }
        let to_dir = self.folder_dir(to)?;
        if is_inbox(from) {
            create_dirs(&self.root)?;
            create_folder(&to_dir, to)?;
            return move_messages(&self.root, &to_dir);
        }
        let from_dir = self.folder_dir(from)?;
        if to.starts_with(&format!("{from}/")) {
            return Err(StoreError::Refused(
                "Can't rename a mailbox into its own child".into(),
            ));
        }
        let children = self.children(from)?;
        if !from_dir.is_dir() && children.is_empty() {
            return Err(StoreError::NoSuchMailbox(from.to_string()));
        }
        let mut moves = Vec::new();
        if from_dir.is_dir() {
            moves.push((from_dir, to_dir));
        }
        for child in &children {
            let renamed = format!("{to}{}", &child[from.len()..]);
            moves.push((self.folder_dir(child)?, self.folder_dir(&renamed)?));
        }
        if let Some((_, taken)) = moves.iter().find(|(_, new)| new.exists()) {
            return Err(StoreError::AlreadyExists(format!(
                "{to} (folder {} exists)",
                taken.display()
            )));
        }
        for (old, new) in moves {
            fs::rename(&old, &new).map_err(io_at(old))?;
        }
        Ok(())
    }

    fn subscriptions(&self) -> Result<Vec<String>, StoreError> {
        read_subscriptions(&self.subscriptions_path())
    }

    fn set_subscribed(&self, name: &str, subscribed: bool) -> Result<(), StoreError> {
        let name = if is_inbox(name) {
            "INBOX".to_string()
        } else {
            self.folder_dir(name)?;
            name.strip_suffix('/').unwrap_or(name).to_string()
        };
        self.update_subscriptions(|names| {
            names.retain(|n| *n != name);
            if subscribed {
                names.push(name);
            }
        })
    }

    fn append(
        &self,
        name: &str,
        messages: &mut [NewMessage<'_>],
    ) -> Result<(u32, Vec<u32>), StoreError> {
        let dir = self.mailbox_dir(name)?;
        if is_inbox(name) {
            create_dirs(&dir)?;
        } else if !dir.join(Subdir::Cur.name()).is_dir() {
            return Err(StoreError::NoSuchMailbox(name.to_string()));
        }
        let mut keywords =
            super::Keywords::read(&dir).map_err(io_at(dir.join(super::keywords::KEYWORDS_NAME)))?;
        super::append::append(&dir, &mut keywords, messages)
    }
}

/// True when the Maildir at `dir` has anything in `new/` (IMAP `\Marked`).
fn has_new_mail(dir: &Path) -> bool {
    fs::read_dir(dir.join(Subdir::New.name())).is_ok_and(|mut entries| {
        entries.any(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.')))
    })
}

/// Move every message of the Maildir `from` into the Maildir `to` (same subdirectory, same
/// name: each message is in exactly one of them at any instant).
fn move_messages(from: &Path, to: &Path) -> Result<(), StoreError> {
    for subdir in [Subdir::New, Subdir::Cur] {
        let source = from.join(subdir.name());
        let entries = match fs::read_dir(&source) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::Io(source, e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_at(source.clone()))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') || !entry.path().is_file() {
                continue;
            }
            let target = to.join(subdir.name()).join(&name);
            match fs::rename(entry.path(), &target) {
                Ok(()) => {}
                // Expunged or flagged by another session meanwhile: it stays or is gone.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io(entry.path(), e)),
            }
        }
    }
    Ok(())
}

/// Remove folder directories a crashed DELETE left behind. Best effort.
fn sweep_leftovers(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(DELETING_PREFIX)
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{deliver, maildir, names_in, TempDir};
    use super::*;
    use crate::config::StoreChoice;
    use crate::store::Flags;
    use std::os::unix::fs::MetadataExt;

    fn store(root: &Path) -> MaildirStore {
        let cfg = StoreConfig {
            spool_dir: "/nonexistent".into(),
            maildir_name: "Maildir".into(),
            mail_dir: String::new(),
            choice: StoreChoice::Maildir,
            dotlock_helper: "/nonexistent".into(),
        };
        MaildirStore::new(&cfg, root)
    }

    fn root_entries(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn listed(store: &MaildirStore) -> Vec<(String, bool, bool)> {
        store
            .list(false)
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.selectable, f.has_children))
            .collect()
    }

    fn one_message<'a>(body: &'a mut &'static [u8]) -> [NewMessage<'a>; 1] {
        [NewMessage {
            len: None,
            source: body,
            flags: Flags::NONE,
            keywords: &[],
            internal_date: None,
        }]
    }

    #[test]
    fn create_makes_maildir_plus_plus_folders_and_list_shows_them() {
        let (_tmp, root) = maildir();
        let store = store(&root);
        store.create("Sent").unwrap();
        store.create("a/b").unwrap();
        store.create("Entw&APw-rfe/").unwrap();
        for dir in [".Sent", ".a.b", ".Entw&APw-rfe"] {
            for sub in ["cur", "new", "tmp", FOLDER_MARKER] {
                assert!(root.join(dir).join(sub).exists(), "{dir}/{sub}");
            }
        }
        assert!(!root.join(".a").exists(), "no parent levels in Maildir++");
        assert_eq!(
            listed(&store),
            [
                ("INBOX".into(), true, false),
                ("Entw&APw-rfe".into(), true, false),
                ("Sent".into(), true, false),
                ("a".into(), false, true),
                ("a/b".into(), true, false),
            ]
        );
        let list = store.list(true).unwrap();
        assert!(!list[0].inferiors_allowed && list[2].inferiors_allowed);
        assert_eq!(list[2].special_use, Some(SpecialUse::Sent));
        assert_eq!(list[4].special_use, None);
        assert!(matches!(
            store.create("Sent"),
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            store.create("inbox"),
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            store.open("a", Access::Shared),
            Err(StoreError::Refused(_))
        ));
        assert!(matches!(
            store.open("nope", Access::Shared),
            Err(StoreError::NoSuchMailbox(_))
        ));
        assert!(!root.join(".nope").exists());
    }

    #[test]
    fn refused_names_never_touch_the_disk() {
        let (tmp, root) = maildir();
        let store = store(&root);
        let before = root_entries(&root);
        let parent_before = root_entries(tmp.path());
        for bad in [
            "../x",
            "/etc",
            "a.b",
            "a//b",
            "INBOX/sub",
            "~root",
            "#news",
            "x/..",
        ] {
            assert!(
                matches!(store.create(bad), Err(StoreError::Refused(_))),
                "{bad}"
            );
            assert!(store.open(bad, Access::Shared).is_err(), "{bad}");
            assert!(store.delete(bad).is_err(), "{bad}");
            assert!(store.rename("INBOX", bad).is_err(), "{bad}");
            assert!(store.set_subscribed(bad, true).is_err(), "{bad}");
            let mut body: &[u8] = b"x\n";
            assert!(store.append(bad, &mut one_message(&mut body)).is_err());
        }
        assert_eq!(root_entries(&root), before);
        assert_eq!(root_entries(tmp.path()), parent_before);
    }

    #[test]
    fn delete_refuses_children_and_inbox() {
        let (_tmp, root) = maildir();
        let store = store(&root);
        store.create("a").unwrap();
        store.create("a/b").unwrap();
        deliver(&root.join(".a.b"), "cur", "1.M1P1.h:2,", b"m\n");
        assert!(matches!(store.delete("a"), Err(StoreError::Refused(_))));
        assert!(matches!(store.delete("INBOX"), Err(StoreError::Refused(_))));
        assert!(matches!(
            store.delete("zz"),
            Err(StoreError::NoSuchMailbox(_))
        ));
        store.delete("a/b").unwrap();
        store.delete("a").unwrap();
        assert_eq!(listed(&store), [("INBOX".into(), true, false)]);
        assert_eq!(root_entries(&root), ["cur", "new", "tmp"]);
    }

    #[test]
    fn rename_moves_children_and_refuses_collisions() {
        let (_tmp, root) = maildir();
        let store = store(&root);
        for name in ["a", "a/b", "a/b/c", "x"] {
            store.create(name).unwrap();
        }
        deliver(&root.join(".a.b"), "cur", "1.M1P1.h:2,S", b"m\n");
        assert!(matches!(
            store.rename("a", "x"),
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            store.rename("a", "a/b/d"),
            Err(StoreError::Refused(_))
        ));
        assert!(matches!(
            store.rename("nope", "y"),
            Err(StoreError::NoSuchMailbox(_))
        ));
        store.rename("a", "n/m").unwrap();
        let names: Vec<String> = listed(&store).into_iter().map(|f| f.0).collect();
        assert_eq!(names, ["INBOX", "n", "n/m", "n/m/b", "n/m/b/c", "x"]);
        assert_eq!(names_in(&root.join(".n.m.b"), "cur"), ["1.M1P1.h:2,S"]);
    }

    #[test]
    fn rename_inbox_moves_its_messages_into_a_new_folder() {
        let (_tmp, root) = maildir();
        deliver(&root, "cur", "1.M1P1.h:2,S", b"old\n");
        deliver(&root, "new", "2.M1P1.h", b"new\n");
        let store = store(&root);
        let mut inbox = store.open("INBOX", Access::Shared).unwrap();
        store.rename("INBOX", "Saved").unwrap();
        assert!(names_in(&root, "cur").is_empty() && names_in(&root, "new").is_empty());
        let changes = inbox.refresh().unwrap();
        assert_eq!(changes.expunged, [0, 1]);
        let saved = store.open("Saved", Access::ReadOnly).unwrap();
        assert_eq!(saved.messages().len(), 2);
        assert_eq!(saved.messages()[0].flags, Flags::SEEN);
        assert!(matches!(
            store.rename("INBOX", "Saved"),
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            store.rename("Saved", "inbox"),
            Err(StoreError::AlreadyExists(_))
        ));
    }

    #[test]
    fn subscriptions_round_trip_and_read_other_servers_formats() {
        let (_tmp, root) = maildir();
        let store = store(&root);
        assert!(store.subscriptions().unwrap().is_empty());
        store.set_subscribed("inbox", true).unwrap();
        store.set_subscribed("a/b", true).unwrap();
        store.set_subscribed("Sent", true).unwrap();
        store.set_subscribed("a/b", true).unwrap();
        store.set_subscribed("Sent", false).unwrap();
        assert_eq!(store.subscriptions().unwrap(), ["INBOX", "a/b"]);
        assert_eq!(
            fs::read_to_string(root.join(SUBSCRIPTIONS_NAME)).unwrap(),
            "INBOX\na/b\n"
        );
        assert!(!root.join("subscriptions.lock").exists());

        fs::write(
            root.join(SUBSCRIPTIONS_NAME),
            "V\t2\n\nSent\nlists\tdev\nArchive.2024\nINBOX.Trash\nINBOX\nSent\n",
        )
        .unwrap();
        assert_eq!(
            store.subscriptions().unwrap(),
            ["Sent", "lists/dev", "Archive/2024", "Trash", "INBOX"]
        );
    }

    #[test]
    fn status_stores_missing_uids_and_nothing_else() {
        let (_tmp, root) = maildir();
        deliver(&root, "new", "1700000002.M1P1.h", b"b\n");
        deliver(&root, "new", "1700000001.M1P1.h", b"a\n");
        deliver(&root, "cur", "1700000000.M1P1.h:2,S", b"seen\n");
        let stamp = |p: &Path| {
            let m = fs::metadata(p).unwrap();
            (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
        };
        let dirs = ["new", "cur", "tmp"].map(|d| root.join(d));
        let before: Vec<_> = dirs.iter().map(|d| stamp(d)).collect();
        let store = store(&root);
        let status = store.status("INBOX").unwrap();
        assert_eq!(
            (
                status.messages,
                status.recent,
                status.unseen,
                status.uid_next
            ),
            (3, 2, 2, 4)
        );
        // The UIDs are stored; no message was touched (none claimed from new/).
        let list_path = root.join(uidlist::UIDLIST_NAME);
        let list = fs::read_to_string(&list_path).unwrap();
        assert!(
            list.starts_with(&format!("3 V{} N4", status.uid_validity)),
            "{list}"
        );
        let after: Vec<_> = dirs.iter().map(|d| stamp(d)).collect();
        assert_eq!(before, after);
        // Nothing missing: nothing written.
        let list_stamp = stamp(&list_path);
        assert_eq!(store.status("INBOX").unwrap(), status);
        assert_eq!(stamp(&list_path), list_stamp);
        // New mail gets its UID from the next STATUS.
        deliver(&root, "new", "1700000003.M1P1.h", b"c\n");
        let later = store.status("INBOX").unwrap();
        assert_eq!((later.messages, later.recent, later.uid_next), (4, 3, 5));
        assert_eq!(later.uid_validity, status.uid_validity);
        assert!(matches!(
            store.status("nope"),
            Err(StoreError::NoSuchMailbox(_))
        ));
        // A writer then agrees with what STATUS promised, \Recent included.
        let writer = store.open("INBOX", Access::Shared).unwrap();
        assert_eq!(writer.uid_validity(), status.uid_validity);
        assert_eq!(writer.uid_next(), later.uid_next);
        assert_eq!(writer.messages().iter().filter(|m| m.recent).count(), 3);
    }

    #[test]
    fn append_by_name_needs_an_existing_mailbox() {
        let tmp = TempDir::new();
        let root = tmp.path().join("Maildir");
        let store = store(&root);
        let mut body: &[u8] = b"hello\n";
        assert!(matches!(
            store.append("Drafts", &mut one_message(&mut body)),
            Err(StoreError::NoSuchMailbox(_))
        ));
        assert!(!root.join(".Drafts").exists());
        // INBOX always exists (created on first use).
        let mut body: &[u8] = b"hello\n";
        let (validity, uids) = store.append("INBOX", &mut one_message(&mut body)).unwrap();
        assert_eq!(uids, [1]);
        store.create("Drafts").unwrap();
        let mut body: &[u8] = b"draft\n";
        let (drafts_validity, uids) = store.append("Drafts", &mut one_message(&mut body)).unwrap();
        assert_eq!(uids, [1]);
        let drafts = store.open("Drafts", Access::ReadOnly).unwrap();
        assert_eq!(drafts.uid_validity(), drafts_validity);
        assert_eq!(drafts.messages().len(), 1);
        let inbox = store.open("INBOX", Access::ReadOnly).unwrap();
        assert_eq!(inbox.uid_validity(), validity);
        assert_eq!(inbox.messages().len(), 1, "folders are not INBOX messages");
    }

    #[test]
    fn list_marks_folders_with_new_mail_and_skips_leftovers() {
        let (_tmp, root) = maildir();
        let store = store(&root);
        store.create("Lists").unwrap();
        deliver(&root.join(".Lists"), "new", "1.M1P1.h", b"m\n");
        fs::create_dir(root.join("..deleted-1-2")).unwrap();
        fs::create_dir(root.join(".a..b")).unwrap();
        fs::write(root.join(".not-a-dir"), b"").unwrap();
        let list = store.list(false).unwrap();
        let names: Vec<&str> = list.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["INBOX", "Lists"]);
        assert_eq!(list[0].marked, Some(false));
        assert_eq!(list[1].marked, Some(true));
        store.create("x").unwrap();
        store.delete("x").unwrap();
        assert!(!root.join("..deleted-1-2").exists(), "leftover swept");
    }
}
