//! Catching up with other processes: deliveries, other sessions' flag changes (renames) and
//! expunges (unlinks), reported as IMAP needs them ([`Changes`]).
//!
//! Owns the cheap "did anything change?" test ([`Stamps`]: one stat each of `new/`, `cur/`,
//! `dovecot-uidlist` and `dovecot-keywords`) and the matching of a fresh scan against the index.
//! Reads no more than changed: with `cur/` unchanged its listing comes from the index, and
//! when only deliveries happened (the uidlist grew, new files in `new/`) just those are read
//! ([`MaildirMailbox::quick_catch_up`]). Stamps changed by this session's own renames and
//! writes are taken again afterwards, with one full rescan [`VERIFY_AFTER`] later to find
//! anything another process did in between.
//! A message is the same message only if both its base name and its UID match, so no session
//! ever shows one message under two UIDs. Never changes a file itself: UIDs for new files are
//! given by the shared index loader (not when `ReadOnly`) and `\Recent` is claimed by the
//! mailbox (only when `Shared`).

use super::keywords::KEYWORDS_NAME;
use super::uidlist::UIDLIST_NAME;
use super::uidlist::{read_since, Record};
use super::{io_at, load_index, name, scan_subdir, Entry, Index, KnownFiles, MaildirMailbox};
use super::{Subdir, UidWrites};
use crate::store::{Access, Changes, StoreError};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The files whose change means the mailbox may have changed.
const WATCHED: [&str; 4] = ["new", "cur", UIDLIST_NAME, KEYWORDS_NAME];
/// Where `cur/` and `dovecot-keywords` are in [`WATCHED`].
const CUR_AT: usize = 1;
const KEYWORDS_AT: usize = 3;

/// Identity and change times of the watched files (`None` when absent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stamps([Option<Stamp>; 4]);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamps {
    /// Stat the watched files of the Maildir at `root`.
    pub fn take(root: &Path) -> Result<Stamps, StoreError> {
        let mut stamps = Stamps::default();
        for (stamp, name) in stamps.0.iter_mut().zip(WATCHED) {
            let path = root.join(name);
            *stamp = match fs::metadata(&path) {
                Ok(meta) => Some(Stamp {
                    ino: meta.ino(),
                    size: meta.size(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    ctime: (meta.ctime(), meta.ctime_nsec()),
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_at(path)(e)),
            };
        }
        Ok(stamps)
    }

    /// A number that changes whenever the stamps do.
    pub fn token(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }
}

/// How long stamps adopted after our own changes go unverified: the next refresh after this
/// rescans everything once (see [`MaildirMailbox::adopt_own_changes`]). Dovecot's
/// MAILDIR_SYNC_SECS plays the same part.
pub(super) const VERIFY_AFTER: Duration = Duration::from_secs(1);

impl Stamps {
    /// Whether `cur/` looks the same in both.
    fn same_cur(&self, other: &Stamps) -> bool {
        self.0[CUR_AT] == other.0[CUR_AT]
    }
}

impl MaildirMailbox {
    /// [`crate::store::Mailbox::refresh`]: a stat of the watched files, and a rescan only when
    /// one changed: of `new/` alone when `cur/` did not (its listing is taken from the index).
    pub(super) fn catch_up(&mut self) -> Result<Changes, StoreError> {
        let stamps = Stamps::take(&self.path)?;
        let verify = self.verification_due();
        let mut changes = Changes::default();
        if stamps != self.stamps && !self.path.is_dir() {
            // Deleted (or renamed away) under us: every message is gone.
            self.stamps = stamps;
            changes.expunged = (0..self.messages.len()).collect();
            self.messages.clear();
            self.files.clear();
            self.unreported_flag_changes.clear();
        } else if !verify && self.quick_catch_up(&stamps, &mut changes)? {
            self.stamps = stamps;
            self.adopt_own_changes();
        } else if stamps != self.stamps || verify {
            self.unverified_since = None;
            self.keywords
                .reload(&self.path)
                .map_err(io_at(self.path.join(KEYWORDS_NAME)))?;
            let cur_listing =
                (!verify && stamps.same_cur(&self.stamps)).then(|| self.cur_listing());
            let index = load_index(
                &self.path,
                UidWrites::for_access(self.access),
                &self.known_files(),
                cur_listing.as_deref(),
            )?;
            if index.list.uid_validity != self.uid_validity && !self.messages.is_empty() {
                return Err(StoreError::Damaged(format!(
                    "{}: UIDVALIDITY changed from {} to {}",
                    self.path.display(),
                    self.uid_validity,
                    index.list.uid_validity
                )));
            }
            self.stamps = stamps;
            self.own_changes |= index.written;
            self.list_cursor = index.cursor;
            changes = self.absorb(index);
            self.adopt_own_changes();
        }
        self.report_unreported(&mut changes);
        Ok(changes)
    }

    /// The common case in O(new messages): `cur/` and the keywords unchanged, every indexed
    /// file in `cur/`, and `dovecot-uidlist` only grown since we read it (Dovecot's and our
    /// APPEND add lines at its end). Reads the new end of the list and `new/`; every file in
    /// `new/` must have a UID there above all we show, with its size in its name or record.
    /// False (nothing changed) when the full rescan is needed instead.
    fn quick_catch_up(
        &mut self,
        stamps: &Stamps,
        changes: &mut Changes,
    ) -> Result<bool, StoreError> {
        if stamps == &self.stamps {
            return Ok(true);
        }
        let same_keywords = stamps.0[KEYWORDS_AT] == self.stamps.0[KEYWORDS_AT];
        let Some(cursor) = self.list_cursor else {
            return Ok(false);
        };
        if !stamps.same_cur(&self.stamps)
            || !same_keywords
            || self.files.iter().any(|f| f.subdir == Subdir::New)
        {
            return Ok(false);
        }
        let list_path = self.path.join(UIDLIST_NAME);
        let Some((records, cursor)) = read_since(&self.path, &cursor).map_err(io_at(list_path))?
        else {
            return Ok(false);
        };
        let mut found = Vec::new();
        scan_subdir(&self.path, Subdir::New, &KnownFiles::new(), &mut found)?;
        let last_uid = self.messages.last().map_or(0, |m| m.uid);
        let by_base: HashMap<&str, &Record> =
            records.iter().map(|r| (r.base.as_str(), r)).collect();
        let mut entries = Vec::with_capacity(found.len());
        for found in found {
            let Some(record) = by_base.get(name::base_of(&found.name)) else {
                return Ok(false);
            };
            let size = name::size_field(&record.base, 'W')
                .or_else(|| record.extension('W').and_then(|w| w.parse().ok()));
            let (Some(size), true) = (size, record.uid > last_uid) else {
                return Ok(false);
            };
            entries.push(Entry {
                uid: record.uid,
                found,
                size,
            });
        }
        entries.sort_unstable_by_key(|e| e.uid);
        self.list_cursor = Some(cursor);
        self.uid_next = self.uid_next.max(cursor.next_uid);
        let before = self.messages.len();
        for entry in entries {
            self.push_entry(entry);
        }
        if self.access == Access::Shared {
            self.claim_recent(before);
        }
        changes.appended = self.messages.len() - before;
        Ok(true)
    }

    /// `cur/` as the index knows it: what a scan would find when the directory is unchanged.
    fn cur_listing(&self) -> Vec<super::Found> {
        self.files
            .iter()
            .zip(&self.messages)
            .filter(|(file, _)| file.subdir == super::Subdir::Cur)
            .map(|(file, info)| super::Found {
                subdir: super::Subdir::Cur,
                name: file.name.to_string(),
                mtime: info.internal_date,
            })
            .collect()
    }

    /// After this session changed the Maildir itself (claimed `\Recent`, renamed, unlinked,
    /// wrote the uidlist), take the stamps as they are now, so that our own changes do not
    /// cost a full rescan at the next refresh. Another process's change made between our last
    /// scan and now would hide behind them: the first refresh [`VERIFY_AFTER`] from now rescans
    /// everything once, so such a change is reported late, never lost. Nothing is adopted when
    /// the stamps cannot be read.
    pub(super) fn adopt_own_changes(&mut self) {
        if !std::mem::take(&mut self.own_changes) {
            return;
        }
        if let Ok(now) = Stamps::take(&self.path) {
            self.stamps = now;
            self.unverified_since.get_or_insert_with(Instant::now);
        }
    }

    /// Whether adopted stamps are old enough to be checked by a full rescan.
    pub(super) fn verification_due(&self) -> bool {
        self.unverified_since
            .is_some_and(|since| since.elapsed() >= VERIFY_AFTER)
    }

    /// Replace the index by `index`, reporting the differences.
    fn absorb(&mut self, index: Index) -> Changes {
        self.uid_validity = index.list.uid_validity;
        self.uid_next = index.list.next_uid.max(self.uid_next);
        let mut entries: Vec<Option<super::Entry>> = index.entries.into_iter().map(Some).collect();
        let position_of: HashMap<&str, usize> = index
            .list
            .records
            .iter()
            .enumerate()
            .map(|(at, record)| (record.base.as_str(), at))
            .collect();

        // Survivors: same base, same UID. Everything else of ours is gone.
        let mut survivors: Vec<(usize, usize)> = Vec::new();
        let mut expunged = Vec::new();
        for (at, file) in self.files.iter().enumerate() {
            let uid = self.messages[at].uid;
            match position_of.get(file.base()) {
                Some(&p) if entries[p].as_ref().is_some_and(|e| e.uid == uid) => {
                    survivors.push((at, p));
                }
                _ => expunged.push(at),
            }
        }
        // A new message numbered below a survivor (a ReadOnly session's provisional UIDs were
        // overtaken by a writer's) cannot be shown in place: show everything from there again.
        let matched: HashSet<usize> = survivors.iter().map(|(_, p)| *p).collect();
        let lowest_new = (0..entries.len())
            .filter(|p| !matched.contains(p))
            .find_map(|p| entries[p].as_ref().map(|e| e.uid));
        if let Some(cut) = lowest_new {
            while let Some(&(at, _)) = survivors.last() {
                if self.messages[at].uid < cut {
                    break;
                }
                survivors.pop();
                expunged.push(at);
            }
            expunged.sort_unstable();
        }
        let first_new = survivors.last().map(|(_, p)| p + 1).unwrap_or(0);
        let survivor_at: Vec<usize> = survivors.iter().map(|(at, _)| *at).collect();
        let mut flags_changed = Vec::new();
        for (new_at, (_, p)) in survivors.iter().enumerate() {
            let Some(entry) = entries[*p].take() else {
                continue;
            };
            if self.update_survivor(survivor_at[new_at], &entry.found) {
                flags_changed.push(new_at);
            }
        }
        self.forget(&expunged);
        let before = self.messages.len();
        for entry in entries.drain(first_new..).flatten() {
            self.push_entry(entry);
        }
        if self.access == Access::Shared {
            self.claim_recent(before);
        }
        Changes {
            expunged,
            flags_changed,
            appended: self.messages.len() - before,
        }
    }

    /// Take in message `at`'s name as found now, keeping this session's pending changes on
    /// top. True when the flags or keywords the session shows changed.
    fn update_survivor(&mut self, at: usize, found: &super::Found) -> bool {
        let disk_flags = name::flags_of(&found.name);
        let disk_keywords = self.keywords.bits(name::info_letters(&found.name));
        let file = &mut self.files[at];
        let info = &mut self.messages[at];
        let flags = crate::store::Flags::from_bits(super::apply_changes(
            u64::from(disk_flags.bits()),
            u64::from(file.baseline.bits()),
            u64::from(info.flags.bits()),
        ) as u8);
        let keywords = super::apply_changes(disk_keywords, file.keyword_baseline, info.keywords);
        if *file.name != *found.name {
            file.name = found.name.as_str().into();
        }
        file.subdir = found.subdir;
        file.disk_flags = disk_flags;
        file.baseline = disk_flags;
        file.keyword_baseline = disk_keywords;
        let changed = info.flags != flags || info.keywords != keywords;
        info.flags = flags;
        info.keywords = keywords;
        changed
    }

    /// Add the flag changes a commit of ours took in from the disk to `changes`.
    fn report_unreported(&mut self, changes: &mut Changes) {
        if self.unreported_flag_changes.is_empty() {
            return;
        }
        let uids = std::mem::take(&mut self.unreported_flag_changes);
        for uid in uids {
            if let Ok(at) = self.messages.binary_search_by_key(&uid, |m| m.uid) {
                changes.flags_changed.push(at);
            }
        }
        changes.flags_changed.sort_unstable();
        changes.flags_changed.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{deliver, maildir, names_in, uids};
    use super::super::uidlist::UIDLIST_NAME;
    use super::*;
    use crate::store::{Expunge, Flags, Mailbox};
    use std::path::PathBuf;

    /// A Maildir with `count` seen messages in `cur/`, already numbered 1..=count.
    fn numbered(count: u32) -> (super::super::tests::TempDir, PathBuf) {
        let (tmp, root) = maildir();
        for n in 1..=count {
            deliver(&root, "cur", &format!("170000000{n}.M1P1.host:2,"), b"m\n");
        }
        drop(MaildirMailbox::open(&root, Access::Shared).unwrap());
        (tmp, root)
    }

    fn flags_of(mailbox: &MaildirMailbox) -> Vec<Flags> {
        mailbox.messages.iter().map(|m| m.flags).collect()
    }

    #[test]
    fn nothing_changed_reports_nothing() {
        let (_tmp, root) = numbered(2);
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        mailbox.refresh().unwrap();
        let stamps = mailbox.stamps.clone();
        assert!(mailbox.refresh().unwrap().is_empty());
        assert_eq!(mailbox.stamps, stamps);
        assert_eq!(uids(&mailbox), [1, 2]);
    }

    #[test]
    fn delivery_by_the_mta_is_appended_recent_and_claimed() {
        let (_tmp, root) = numbered(1);
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        let token = mailbox.change_token().unwrap();
        deliver(&root, "new", "1800000000.M1P9.mta", b"new mail\n");
        assert_ne!(mailbox.change_token().unwrap(), token);
        let changes = mailbox.refresh().unwrap();
        assert_eq!(changes.appended, 1);
        assert!(changes.expunged.is_empty() && changes.flags_changed.is_empty());
        assert_eq!(uids(&mailbox), [1, 2]);
        assert_eq!(mailbox.uid_next(), 3);
        assert!(mailbox.messages[1].recent && !mailbox.messages[0].recent);
        // Claimed: moved to cur/, so no other session sees it recent.
        assert!(names_in(&root, "new").is_empty());
        let other = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(uids(&other), [1, 2]);
        assert!(other.messages.iter().all(|m| !m.recent));
        assert!(mailbox.refresh().unwrap().is_empty());
    }

    #[test]
    fn first_shared_opener_claims_recent_read_only_does_not() {
        let (_tmp, root) = maildir();
        deliver(&root, "new", "1800000000.M1P9.mta", b"x\n");
        let examiner = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        assert!(examiner.messages[0].recent);
        assert_eq!(names_in(&root, "new").len(), 1);
        let first = MaildirMailbox::open(&root, Access::Shared).unwrap();
        let second = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert!(first.messages[0].recent);
        assert!(!second.messages[0].recent);
        assert_eq!(names_in(&root, "cur"), ["1800000000.M1P9.mta:2,"]);
    }

    #[test]
    fn other_sessions_flag_changes_and_expunges_are_reported() {
        let (_tmp, root) = numbered(4);
        let mut watcher = MaildirMailbox::open(&root, Access::Shared).unwrap();
        let mut other = MaildirMailbox::open(&root, Access::Shared).unwrap();
        other.set_flags(1, Flags::DELETED);
        other.set_flags(2, Flags::FLAGGED);
        other.set_flags(3, Flags::DELETED);
        assert_eq!(other.commit(true).unwrap().expunged, [1, 3]);

        let changes = watcher.refresh().unwrap();
        assert_eq!(changes.expunged, [1, 3]);
        assert_eq!(changes.flags_changed, [1]);
        assert_eq!(changes.appended, 0);
        assert_eq!(uids(&watcher), [1, 3]);
        assert_eq!(flags_of(&watcher), [Flags::NONE, Flags::FLAGGED]);
    }

    #[test]
    fn pending_changes_survive_refresh_and_others_survive_our_commit() {
        let (_tmp, root) = numbered(2);
        let mut ours = MaildirMailbox::open(&root, Access::Shared).unwrap();
        let mut theirs = MaildirMailbox::open(&root, Access::Shared).unwrap();
        ours.set_flags(0, Flags::SEEN);
        theirs.set_flags(0, Flags::FLAGGED);
        theirs.set_flags(1, Flags::ANSWERED);
        theirs.commit(false).unwrap();

        let changes = ours.refresh().unwrap();
        assert_eq!(changes.flags_changed, [0, 1]);
        assert_eq!(
            flags_of(&ours),
            [Flags::SEEN.union(Flags::FLAGGED), Flags::ANSWERED]
        );
        ours.commit(false).unwrap();
        assert_eq!(
            names_in(&root, "cur"),
            ["1700000001.M1P1.host:2,FS", "1700000002.M1P1.host:2,R"]
        );
        // They now clear \Flagged without having seen our \Seen: both changes stay.
        theirs.set_flags(0, Flags::NONE);
        theirs.commit(false).unwrap();
        assert_eq!(theirs.messages[0].flags, Flags::SEEN);
        assert_eq!(ours.refresh().unwrap().flags_changed, [0]);
        assert_eq!(ours.messages[0].flags, Flags::SEEN);
    }

    #[test]
    fn flag_changes_absorbed_by_a_commit_are_reported_at_the_next_refresh() {
        let (_tmp, root) = numbered(2);
        let mut ours = MaildirMailbox::open(&root, Access::Shared).unwrap();
        let mut theirs = MaildirMailbox::open(&root, Access::Shared).unwrap();
        theirs.set_flags(1, Flags::FLAGGED);
        theirs.commit(false).unwrap();
        // Our commit chases the renamed file and learns their \Flagged.
        ours.set_flags(1, Flags::SEEN);
        ours.commit(false).unwrap();
        assert_eq!(ours.messages[1].flags, Flags::SEEN.union(Flags::FLAGGED));
        assert_eq!(ours.refresh().unwrap().flags_changed, [1]);
        assert!(ours.refresh().unwrap().is_empty());
    }

    #[test]
    fn uid_expunge_removes_only_the_listed_deleted_messages() {
        let (_tmp, root) = numbered(4);
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        for index in 0..3 {
            mailbox.set_flags(index, Flags::DELETED);
        }
        let report = mailbox.commit_with(Expunge::Uids(&[2, 3, 4])).unwrap();
        // UID 4 is listed but not \Deleted; UID 1 is \Deleted but not listed.
        assert_eq!(report.expunged, [1, 2]);
        assert_eq!(uids(&mailbox), [1, 4]);
        assert_eq!(
            names_in(&root, "cur"),
            ["1700000001.M1P1.host:2,T", "1700000004.M1P1.host:2,"]
        );
    }

    #[test]
    fn read_only_refresh_sees_deliveries_but_writes_nothing() {
        let (_tmp, root) = numbered(1);
        let mut examiner = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        let list_before = fs::read(root.join(UIDLIST_NAME)).unwrap();
        deliver(&root, "new", "1800000000.M1P9.mta", b"x\n");
        let changes = examiner.refresh().unwrap();
        assert_eq!(changes.appended, 1);
        assert_eq!(uids(&examiner), [1, 2]);
        assert!(examiner.messages[1].recent);
        assert_eq!(fs::read(root.join(UIDLIST_NAME)).unwrap(), list_before);
        assert_eq!(names_in(&root, "new"), ["1800000000.M1P9.mta"]);
        // A writer numbers it the same way.
        let writer = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(uids(&writer), [1, 2]);
        // Its claim (a rename to cur/) is no change for us: same UID, same flags.
        assert!(examiner.refresh().unwrap().is_empty());
        assert_eq!(uids(&examiner), [1, 2]);
    }

    #[test]
    fn provisional_uids_overtaken_by_a_writer_are_never_shown_twice() {
        let (_tmp, root) = numbered(1);
        deliver(&root, "new", "1800000002.M1P9.mta", b"late\n");
        let mut examiner = MaildirMailbox::open(&root, Access::ReadOnly).unwrap();
        assert_eq!(uids(&examiner), [1, 2]);
        // An earlier-named delivery arrives and a writer numbers both: it takes UID 2.
        deliver(&root, "new", "1800000001.M1P9.mta", b"early\n");
        let writer = MaildirMailbox::open(&root, Access::Shared).unwrap();
        assert_eq!(uids(&writer), [1, 2, 3]);
        let changes = examiner.refresh().unwrap();
        assert_eq!(changes.expunged, [1]);
        assert_eq!(changes.appended, 2);
        assert_eq!(uids(&examiner), [1, 2, 3]);
        let bases: Vec<&str> = examiner.files.iter().map(|f| f.base()).collect();
        let writer_bases: Vec<&str> = writer.files.iter().map(|f| f.base()).collect();
        assert_eq!(bases, writer_bases);
    }

    #[test]
    fn a_deleted_folder_shows_every_message_expunged() {
        let (_tmp, root) = numbered(2);
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(mailbox.refresh().unwrap().expunged, [0, 1]);
        assert!(mailbox.messages().is_empty());
        assert!(mailbox.refresh().unwrap().is_empty());
    }

    #[test]
    fn a_change_hidden_behind_adopted_stamps_is_found_by_the_verification_rescan() {
        let (_tmp, root) = numbered(2);
        deliver(&root, "new", "1800000000.M1P9.mta", b"x\n");
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        // Our claim moved a file into cur/: its stamps were adopted, not rescanned.
        assert!(mailbox.unverified_since.is_some());
        assert!(mailbox.refresh().unwrap().is_empty());
        // Another session's rename lands in the window before our adopted stamps were taken.
        fs::rename(
            root.join("cur/1700000001.M1P1.host:2,"),
            root.join("cur/1700000001.M1P1.host:2,F"),
        )
        .unwrap();
        mailbox.stamps = Stamps::take(&root).unwrap();
        mailbox.unverified_since = Some(Instant::now());
        let token = mailbox.change_token().unwrap();
        assert!(
            mailbox.refresh().unwrap().is_empty(),
            "hidden until verified"
        );
        // Once due, IDLE's token changes and the refresh rescans.
        mailbox.unverified_since = Some(Instant::now() - VERIFY_AFTER);
        assert_ne!(mailbox.change_token().unwrap(), token);
        assert_eq!(mailbox.refresh().unwrap().flags_changed, [0]);
        assert_eq!(mailbox.messages[0].flags, Flags::FLAGGED);
        assert!(mailbox.unverified_since.is_none());
    }

    #[test]
    fn a_refresh_reads_only_new_when_cur_is_unchanged() {
        let (_tmp, root) = numbered(3);
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        // A file the index does not know appears in cur/; we make cur/ look unchanged.
        deliver(&root, "cur", "1700000009.M1P1.host:2,", b"unseen\n");
        deliver(&root, "new", "1800000000.M1P9.mta", b"x\n");
        mailbox.stamps.0[CUR_AT] = Stamps::take(&root).unwrap().0[CUR_AT];
        let changes = mailbox.refresh().unwrap();
        // Only new/ was read: the cur/ listing came from the index.
        assert_eq!(changes.appended, 1);
        assert_eq!(uids(&mailbox), [1, 2, 3, 4]);
        assert_eq!(names_in(&root, "new"), Vec::<String>::new());
        // A full rescan (here: the verification) finds the other one.
        mailbox.unverified_since = Some(Instant::now() - VERIFY_AFTER);
        assert_eq!(mailbox.refresh().unwrap().appended, 1);
        assert_eq!(uids(&mailbox), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn appends_are_taken_from_the_end_of_the_uidlist_and_new_alone() {
        let (_tmp, root) = numbered(2);
        let mut mailbox = MaildirMailbox::open(&root, Access::Shared).unwrap();
        let mut other = MaildirMailbox::open(&root, Access::Shared).unwrap();
        let mut body: &[u8] = b"Subject: a\r\n\r\nx\r\n";
        let mut batch = [crate::store::NewMessage {
            len: Some(body.len() as u64),
            source: &mut body,
            flags: Flags::SEEN,
            keywords: &[],
            internal_date: None,
        }];
        assert_eq!(other.append(&mut batch).unwrap(), [3]);
        // Spoil UID 1's record in place: a whole read would now renumber that message
        // (expunged, then new under UID 4); reading on from the cursor never sees it.
        let list_path = root.join(UIDLIST_NAME);
        let text = fs::read_to_string(&list_path).unwrap();
        let at = text.find(":1700000001.").unwrap() as u64 + 10;
        let list_file = fs::OpenOptions::new().write(true).open(&list_path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&list_file, b"9", at).unwrap();
        let cursor = mailbox.list_cursor.unwrap();
        let changes = mailbox.refresh().unwrap();
        std::os::unix::fs::FileExt::write_all_at(&list_file, b"1", at).unwrap();
        assert!(changes.expunged.is_empty(), "{changes:?}");
        assert_eq!(changes.appended, 1);
        assert_eq!(uids(&mailbox), [1, 2, 3]);
        assert_eq!(mailbox.messages[2].flags, Flags::SEEN);
        assert!(mailbox.messages[2].recent);
        assert_ne!(
            mailbox.list_cursor.unwrap(),
            cursor,
            "read on from the cursor"
        );
        // A file in new/ without a record at the end of the list needs the full path: it
        // gets its UID there, all the same.
        deliver(&root, "new", "1800000000.M1P9.mta", b"x\n");
        assert_eq!(mailbox.refresh().unwrap().appended, 1);
        assert_eq!(uids(&mailbox), [1, 2, 3, 4]);
        assert_eq!(other.refresh().unwrap().appended, 2);
        assert_eq!(uids(&other), [1, 2, 3, 4]);
    }

    #[test]
    fn keywords_set_by_another_session_are_reported() {
        let (_tmp, root) = numbered(1);
        let mut ours = MaildirMailbox::open(&root, Access::Shared).unwrap();
        let mut theirs = MaildirMailbox::open(&root, Access::Shared).unwrap();
        let bit = theirs.keyword_bit("Work").unwrap();
        theirs.set_keywords(0, 1 << bit);
        theirs.commit(false).unwrap();
        let changes = ours.refresh().unwrap();
        assert_eq!(changes.flags_changed, [0]);
        assert_eq!(ours.keyword_names(), ["Work"]);
        assert_eq!(ours.messages[0].keywords, 1);
    }
}
