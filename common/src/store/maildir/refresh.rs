//! Catching up with other processes: deliveries, other sessions' flag changes (renames) and
//! expunges (unlinks), reported as IMAP needs them ([`Changes`]).
//!
//! Owns the cheap "did anything change?" test ([`Stamps`]: one stat each of `new/`, `cur/`,
//! `dovecot-uidlist` and `dovecot-keywords`) and the matching of a fresh scan against the index.
//! A message is the same message only if both its base name and its UID match, so no session
//! ever shows one message under two UIDs. Never changes a file itself: UIDs for new files are
//! given by the shared index loader (not when `ReadOnly`) and `\Recent` is claimed by the
//! mailbox (only when `Shared`).

use super::keywords::KEYWORDS_NAME;
use super::uidlist::UIDLIST_NAME;
use super::{io_at, load_index, Index, MaildirMailbox};
use crate::store::{Access, Changes, StoreError};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The files whose change means the mailbox may have changed.
const WATCHED: [&str; 4] = ["new", "cur", UIDLIST_NAME, KEYWORDS_NAME];

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

impl MaildirMailbox {
    /// [`crate::store::Mailbox::refresh`]: a stat of the watched files, and a rescan only when
    /// one changed.
    pub(super) fn catch_up(&mut self) -> Result<Changes, StoreError> {
        let stamps = Stamps::take(&self.path)?;
        let mut changes = Changes::default();
        if stamps != self.stamps && self.path.is_dir() {
            self.keywords
                .reload(&self.path)
                .map_err(io_at(self.path.join(KEYWORDS_NAME)))?;
            let index = load_index(&self.path, self.access, &self.known_files())?;
            if index.list.uid_validity != self.uid_validity && !self.messages.is_empty() {
                return Err(StoreError::Damaged(format!(
                    "{}: UIDVALIDITY changed from {} to {}",
                    self.path.display(),
                    self.uid_validity,
                    index.list.uid_validity
                )));
            }
            self.stamps = stamps;
            changes = self.absorb(index);
        }
        self.report_unreported(&mut changes);
        Ok(changes)
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
            match position_of.get(file.base.as_str()) {
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
        let parsed = super::name::parse(&found.name);
        let disk_keywords = self.keywords.bits(&parsed.kept);
        let file = &mut self.files[at];
        let info = &mut self.messages[at];
        let flags = crate::store::Flags::from_bits(super::apply_changes(
            u64::from(parsed.flags.bits()),
            u64::from(file.baseline.bits()),
            u64::from(info.flags.bits()),
        ) as u8);
        let keywords = super::apply_changes(disk_keywords, file.keyword_baseline, info.keywords);
        file.subdir = found.subdir;
        file.name = found.name.clone();
        file.disk_flags = parsed.flags;
        file.kept = parsed.kept;
        file.baseline = parsed.flags;
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
