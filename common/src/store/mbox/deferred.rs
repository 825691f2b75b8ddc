//! How a session uses the flag log ([`flaglog`]): a large STORE is recorded there instead of
//! patched into the file, every catch-up applies the log over what the file says, and any
//! rewrite of the file (or [`Mailbox::write_deferred`](crate::store::Mailbox::write_deferred))
//! writes the log's states into the messages and removes it.
//!
//! Owns the decision to defer and the overlay; never formats anything. Every method that
//! reads or writes the log runs under the mailbox lock the caller holds; `log_stamp_now`
//! only looks (a `stat`), to tell whether there is anything to read.

use super::flaglog::{self, Log, State};
use super::journal::FileId;
use super::parse::Parsed;
use super::rewrite::{self, Snapshot};
use super::{host_name, now, translate_keywords, FileStamp, MboxMailbox};
use crate::store::{Access, Flags, MessageInfo, StoreError};

/// A STORE that changes fewer messages than this (and finds no log) patches them in place at
/// once, so that programs reading the file see its change without waiting for a flush: one
/// or two messages cost a system call or two either way. Larger ones go to the log.
pub(super) const DEFER_AT_LEAST: usize = 64;

fn file_id(stamp: FileStamp) -> FileId {
    FileId {
        dev: stamp.dev,
        ino: stamp.ino,
    }
}

/// Whether `from` begins `to` (keyword names compare without case): bits over `from` are
/// then the same bits over `to`.
fn names_prefix(from: &[String], to: &[String]) -> bool {
    from.len() <= to.len() && from.iter().zip(to).all(|(a, b)| a.eq_ignore_ascii_case(b))
}

/// Keyword bits over `from` names as bits over `to` names (`to` gains names it lacks).
fn bits_for(bits: u64, from: &[String], to: &mut Vec<String>) -> u64 {
    if names_prefix(from, to) {
        let mask = if from.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << from.len()) - 1
        };
        bits & mask
    } else {
        translate_keywords(bits, from, to)
    }
}

/// What [`MboxMailbox::read_log`] found.
pub(super) enum LogNow {
    /// The log this session holds is the log as it is.
    Unchanged,
    /// The log as it is now (`None`: there is none).
    Read(Option<Log>),
}

/// Apply the log's states over a freshly parsed index (by UID).
pub(super) fn overlay(parsed: &mut Parsed, log: &Log) {
    for (&uid, state) in &log.states {
        if let Ok(i) = parsed.infos.binary_search_by_key(&uid, |m| m.uid) {
            let keywords = bits_for(state.keywords, &log.names, &mut parsed.keywords);
            let info = &mut parsed.infos[i];
            info.flags = state.flags;
            info.keywords = keywords;
        }
    }
}

impl MboxMailbox {
    /// The log's stamp as this session last saw it (`None`: no log).
    pub(super) fn log_stamp(&self) -> Option<FileStamp> {
        self.log.as_ref().map(|l| l.stamp)
    }

    /// The stamp of the log that exists now for the file of `stamp` (a `stat` or two).
    pub(super) fn log_stamp_now(&self, stamp: FileStamp) -> Result<Option<FileStamp>, StoreError> {
        flaglog::find(&self.path, file_id(stamp))
            .map(|found| found.map(|(_, s)| s))
            .map_err(|e| self.io_error(e))
    }

    /// The log of the file of `stamp` as it is now, read on top of what this session read of
    /// it before (only new records are read). Under the lock.
    pub(super) fn read_log(
        &self,
        stamp: FileStamp,
        uid_validity: u32,
    ) -> Result<LogNow, StoreError> {
        let found = flaglog::find(&self.path, file_id(stamp)).map_err(|e| self.io_error(e))?;
        let Some((path, now)) = found else {
            return Ok(LogNow::Read(None));
        };
        let known = self.log.as_ref();
        if known
            .is_some_and(|k| k.stamp == now && k.path() == path && k.uid_validity() == uid_validity)
        {
            return Ok(LogNow::Unchanged);
        }
        match flaglog::read(&path, known.cloned(), uid_validity) {
            Ok(flaglog::Found::Log(log)) => Ok(LogNow::Read(Some(log))),
            Ok(flaglog::Found::Missing) => Ok(LogNow::Read(None)),
            Ok(flaglog::Found::Stale) => {
                if self.access != Access::ReadOnly {
                    flaglog::remove(&path).map_err(|e| self.io_error(e))?;
                }
                Ok(LogNow::Read(None))
            }
            Err(e) => Err(self.io_error(e)),
        }
    }

    /// Our index as the file holds it (disk flags, keywords and `O`), for a catch-up when only
    /// the log changed.
    pub(super) fn disk_view(&self) -> Parsed {
        let infos = self
            .entries
            .iter()
            .zip(&self.infos)
            .map(|(e, i)| MessageInfo {
                flags: e.disk_flags,
                keywords: e.disk_keywords,
                recent: !e.disk_old,
                ..i.clone()
            })
            .collect();
        Parsed {
            entries: self.entries.clone(),
            infos,
            uid_validity: self.uid_validity,
            uid_last: self.uid_last,
            keywords: self.keywords[..self.disk_keyword_count.min(self.keywords.len())].to_vec(),
            pseudo: self.pseudo.clone(),
            has_base: false,
            first_meta: self.first_meta.clone(),
            needs_persist: !self.uids_stored,
        }
    }

    /// Every message's flags and keywords as every session sees them: the log's, else the
    /// file's. The base of the three-way merge.
    pub(super) fn shared_states(&self) -> Vec<(Flags, u64)> {
        let disk = self.entries.iter().map(|e| (e.disk_flags, e.disk_keywords));
        let Some(log) = self.log.as_ref().filter(|l| !l.states.is_empty()) else {
            return disk.collect();
        };
        let same_names = names_prefix(&log.names, &self.keywords);
        let mut names = self.keywords.clone();
        disk.zip(&self.infos)
            .map(|(disk, info)| match log.states.get(&info.uid) {
                Some(s) if same_names => (s.flags, bits_for(s.keywords, &log.names, &mut names)),
                Some(s) => (
                    s.flags,
                    translate_keywords(s.keywords, &log.names, &mut names),
                ),
                None => disk,
            })
            .collect()
    }

    /// Record this session's flag and keyword changes in the log instead of the file, when
    /// that is all a commit has to write and there are enough of them (or a log exists
    /// already). Returns whether the commit is done. Falls back to writing the file (false)
    /// when the file needs anything else (UIDs, `O`, new keyword names) or the log cannot be
    /// written.
    pub(super) fn defer_locked(&mut self) -> Result<bool, StoreError> {
        let Some(stamp) = self.stamp else {
            return Ok(false);
        };
        let same_names = self.log.as_ref().is_none_or(|l| {
            l.names.len() == self.keywords.len() && names_prefix(&l.names, &self.keywords)
        });
        // A POP3 session (exclusive) commits once, as it ends: nobody would flush after it.
        let file_needs_more = self.access != Access::Shared
            || self.file.is_none()
            || !self.uids_stored
            || !self.claim_recent
            || self.keywords.len() != self.disk_keyword_count
            || !same_names
            || self.entries.iter().any(|e| !e.disk_old);
        if file_needs_more {
            return Ok(false);
        }
        let changes: Vec<(u32, State)> = self
            .shared_states()
            .into_iter()
            .zip(&self.infos)
            .filter_map(|(shared, info)| {
                (shared != (info.flags, info.keywords)).then_some((
                    info.uid,
                    State {
                        flags: info.flags,
                        keywords: info.keywords,
                    },
                ))
            })
            .collect();
        if changes.is_empty() {
            return Ok(self.log.is_some());
        }
        if self.log.is_none() && changes.len() < DEFER_AT_LEAST {
            return Ok(false);
        }
        let appended = flaglog::append(
            self.log.take(),
            &self.path,
            file_id(stamp),
            self.uid_validity,
            &self.keywords,
            &changes,
        );
        match appended {
            Ok(log) => {
                self.log = Some(log);
                Ok(true)
            }
            // No room for the log (a full disk, no writable place): write the file instead;
            // its rewrite removes whatever part of the log was written.
            Err(_) => Ok(false),
        }
    }

    /// The file holds every state the log gives: remove the log (from every place one may
    /// be, so that none left elsewhere can surface later).
    pub(super) fn drop_log(&mut self) -> Result<(), StoreError> {
        self.log = None;
        let Some(stamp) = self.stamp else {
            return Ok(());
        };
        for path in flaglog::paths(&self.path, file_id(stamp)) {
            flaglog::remove(&path).map_err(|e| StoreError::Io(path.clone(), e))?;
        }
        Ok(())
    }

    /// Before a rewrite that removes messages: patch the states the log holds into the
    /// messages that stay, in place, so that the rewrite finds them unchanged and can move
    /// them as they are (see [`compact`](super::compact)) instead of rewriting each. Does
    /// nothing when that takes more than same-length patches (the rewrite then writes all).
    /// The log stays until that rewrite is done.
    pub(super) fn patch_kept_locked(
        &mut self,
        removing: &dyn Fn(&MessageInfo) -> bool,
    ) -> Result<(), StoreError> {
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        let target: Vec<MessageInfo> = self
            .entries
            .iter()
            .zip(&self.infos)
            .map(|(e, i)| match removing(i) {
                true => MessageInfo {
                    flags: e.disk_flags,
                    keywords: e.disk_keywords,
                    ..i.clone()
                },
                false => i.clone(),
            })
            .collect();
        let keep = vec![true; target.len()];
        let snapshot = Snapshot {
            file,
            len: self.stamp.map_or(0, |s| s.len),
            entries: &self.entries,
            infos: &target,
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
        if plan.is_noop() || !plan.patches_only() {
            return Ok(());
        }
        let Some(written) = rewrite::written_index(&snapshot, &plan) else {
            return Ok(());
        };
        rewrite::execute(&self.path, file, &snapshot, &plan).map_err(|e| self.io_error(e))?;
        let stamp = FileStamp::of(file).map_err(|e| self.io_error(e))?;
        #[cfg(test)]
        super::tests::assert_matches_disk(
            file,
            stamp.len,
            &self.parsed_from_written(written.clone(), target.clone()),
        );
        self.entries = written.entries;
        self.first_meta = written.first_meta;
        self.pseudo = written.pseudo;
        self.stamp = Some(stamp);
        Ok(())
    }
}
