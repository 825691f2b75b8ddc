//! The selected mailbox: the client's view of it (sequence numbers, known flags), keeping that
//! view in step with the store, and the commands that open, check and close it (SELECT,
//! EXAMINE, CHECK, CLOSE, UNSELECT, EXPUNGE, UID EXPUNGE).
//!
//! Owns sequence-number consistency: a message keeps its number until an EXPUNGE response for
//! it has been sent, even if the store lost it earlier. Never reads message bodies.

use super::format::{flag_list, keyword_prefix, SYSTEM_FLAGS};
use super::mailboxes::store_error;
use super::{Backend, Reply, Session, Transport};
use crate::wire::mutf7;
use crate::wire::parser::SequenceSet;
use common::log;
use common::store::lock::SessionLock;
use common::store::{names, Access, Expunge, Flags, Mailbox, StoreError};
use std::io::{self, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What the client has been told about one message.
#[derive(Clone, Debug)]
pub(super) struct Known {
    pub uid: u32,
    pub flags: Flags,
    pub keywords: u64,
    pub recent: bool,
    /// The store no longer has it; its EXPUNGE response is still owed.
    pub gone: bool,
}

pub(super) struct Selected {
    pub mailbox: Box<dyn Mailbox>,
    /// Wire-form name, as the store knows it.
    pub name: String,
    pub read_only: bool,
    /// The client's view, in sequence-number order (UIDs ascending).
    pub view: Vec<Known>,
    /// How many keyword names the client has been sent in FLAGS.
    announced_keywords: usize,
    /// The last message parsed for FETCH (see `fetch::Loaded`).
    pub cache: Option<Rc<super::fetch::Loaded>>,
    /// Flag changes made in memory and not yet committed.
    dirty: bool,
    /// When writing the store's deferred changes last failed: the quiet-time and IDLE
    /// retries wait [`DEFERRED_RETRY`] after a failure instead of trying (and logging) every
    /// second.
    deferred_failed: Option<Instant>,
}

/// How long the idle-time writes of deferred changes pause after a failure.
const DEFERRED_RETRY: Duration = Duration::from_secs(60);

impl Selected {
    fn new(mailbox: Box<dyn Mailbox>, name: String, read_only: bool) -> Selected {
        let view = mailbox
            .messages()
            .iter()
            .map(|m| Known {
                uid: m.uid,
                flags: m.flags,
                keywords: m.keywords,
                recent: m.recent,
                gone: false,
            })
            .collect();
        let announced_keywords = mailbox.keyword_names().len();
        Selected {
            mailbox,
            name,
            read_only,
            view,
            announced_keywords,
            cache: None,
            dirty: false,
            deferred_failed: None,
        }
    }

    /// Whether [`Selected::settle`] has anything to do that did not just fail: flag changes
    /// not committed, or [`Selected::settle_due`].
    pub fn settle_pending(&self) -> bool {
        (self.dirty && !self.read_only) || self.settle_due()
    }

    /// Whether the store holds deferred changes worth writing now that the client is quiet
    /// (none, or a write failed less than [`DEFERRED_RETRY`] ago: not yet).
    pub fn settle_due(&self) -> bool {
        self.mailbox.has_deferred_writes()
            && self
                .deferred_failed
                .is_none_or(|at| at.elapsed() >= DEFERRED_RETRY)
    }

    pub fn recent_count(&self) -> usize {
        self.view.iter().filter(|k| k.recent).count()
    }

    /// The store index of the message at view position `pos`, unless it is gone.
    pub fn index_of(&self, pos: usize) -> Option<usize> {
        let known = self.view.get(pos).filter(|k| !k.gone)?;
        let messages = self.mailbox.messages();
        // Usually nothing was expunged under the view: the index has it at the same place.
        if messages.get(pos).is_some_and(|m| m.uid == known.uid) {
            return Some(pos);
        }
        messages.binary_search_by_key(&known.uid, |m| m.uid).ok()
    }

    /// View positions (0-based, ascending) named by a sequence or UID set. Sequence numbers past
    /// the end are an error (`BAD`); UIDs that do not exist are silently skipped (RFC 3501).
    pub fn positions(&self, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, Reply> {
        if uid {
            let largest = self.view.last().map_or(0, |k| k.uid);
            let mut out = Vec::new();
            for (lo, hi) in set.ranges(largest) {
                let start = self.view.partition_point(|k| k.uid < lo);
                let end = self.view.partition_point(|k| k.uid <= hi);
                out.extend(start..end);
            }
            return Ok(out);
        }
        let len = u32::try_from(self.view.len()).unwrap_or(u32::MAX);
        let too_big = set.0.iter().any(|&(a, b)| {
            [a, b]
                .iter()
                .any(|n| matches!(n, crate::wire::parser::SeqNum::Value(v) if *v > len))
        });
        if too_big || len == 0 {
            return Err(Reply::bad("Invalid message sequence number"));
        }
        Ok(set
            .ranges(len)
            .into_iter()
            .flat_map(|(lo, hi)| (lo as usize - 1)..(hi.min(len) as usize))
            .collect())
    }

    /// `(\Recent \Seen ...)` for the message at `pos` as the store has it now.
    pub fn current_flags(&self, pos: usize, idx: usize) -> String {
        let m = &self.mailbox.messages()[idx];
        flag_list(
            m.flags,
            m.keywords,
            self.view[pos].recent,
            self.mailbox.keyword_names(),
        )
    }

    /// Record that the client now knows message `pos`'s flags as the store has them.
    pub fn note_told(&mut self, pos: usize, idx: usize) {
        let m = &self.mailbox.messages()[idx];
        let (flags, keywords) = (m.flags, m.keywords);
        if let Some(k) = self.view.get_mut(pos) {
            k.flags = flags;
            k.keywords = keywords;
        }
    }

    /// Change flags and keywords in memory (committed by [`Selected::persist_flags`]).
    pub fn set_flags(&mut self, idx: usize, flags: Flags, keywords: u64) {
        let m = &self.mailbox.messages()[idx];
        let (old_flags, old_keywords) = (m.flags, m.keywords);
        if old_flags != flags {
            self.mailbox.set_flags(idx, flags);
            self.dirty = true;
        }
        if old_keywords != keywords {
            self.mailbox.set_keywords(idx, keywords);
            self.dirty = true;
        }
    }

    /// Write flag changes to disk so other sessions see them.
    pub fn persist_flags(&mut self) -> Result<(), StoreError> {
        if self.dirty && !self.read_only {
            self.mailbox.commit_with(Expunge::Nothing)?;
        }
        self.dirty = false;
        Ok(())
    }

    /// [`Selected::persist_flags`], then write what the store deferred (a large STORE's flag
    /// log) into the mailbox itself, where programs other than ours look.
    pub fn settle(&mut self) -> Result<(), StoreError> {
        self.persist_flags()?;
        if self.mailbox.has_deferred_writes() {
            let written = self.mailbox.write_deferred();
            self.deferred_failed = written.is_err().then(Instant::now);
            written?;
        }
        Ok(())
    }

    pub fn flags_line(&self) -> String {
        format!(
            "FLAGS ({}{SYSTEM_FLAGS})",
            keyword_prefix(self.mailbox.keyword_names())
        )
    }

    pub fn permanent_flags_line(&self) -> String {
        if self.read_only {
            return "OK [PERMANENTFLAGS ()] No permanent flags permitted".into();
        }
        format!(
            "OK [PERMANENTFLAGS ({}\\* {SYSTEM_FLAGS})] Permanent flags",
            keyword_prefix(self.mailbox.keyword_names())
        )
    }

    /// Send FLAGS and PERMANENTFLAGS again when the mailbox gained keywords.
    pub fn announce_keywords(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let count = self.mailbox.keyword_names().len();
        if count > self.announced_keywords {
            write!(out, "* {}\r\n", self.flags_line())?;
            write!(out, "* {}\r\n", self.permanent_flags_line())?;
            self.announced_keywords = count;
        }
        Ok(())
    }

    /// Catch up with other processes and report what changed.
    pub fn refresh(
        &mut self,
        out: &mut dyn Write,
        allow_expunge: bool,
        who: &str,
    ) -> io::Result<()> {
        self.catch_up(who);
        self.reconcile(out, allow_expunge)
    }

    /// Bring the store's index up to date with other processes, telling the client nothing
    /// yet (a failure is logged: the session goes on with the index it has).
    pub fn catch_up(&mut self, who: &str) {
        if let Err(e) = self.mailbox.refresh() {
            log::err(&format!(
                "Error checking {}: {e} {who}",
                self.mailbox.path().display()
            ));
        }
    }

    /// [`Selected::reconcile`] when every message the client knows is still where it was:
    /// the view is updated in place (no copy of it per command). False, having done
    /// nothing, otherwise.
    fn reconcile_in_place(&mut self, out: &mut dyn Write) -> io::Result<bool> {
        let msgs = self.mailbox.messages();
        let aligned = msgs.len() >= self.view.len()
            && self
                .view
                .iter()
                .zip(msgs)
                .all(|(k, m)| k.uid == m.uid && !k.gone);
        if !aligned {
            return Ok(false);
        }
        let names = self.mailbox.keyword_names();
        for (n, (k, m)) in self.view.iter_mut().zip(msgs).enumerate() {
            if (m.flags, m.keywords) != (k.flags, k.keywords) {
                let flags = flag_list(m.flags, m.keywords, k.recent, names);
                write!(out, "* {} FETCH (FLAGS {flags})\r\n", n + 1)?;
                k.flags = m.flags;
                k.keywords = m.keywords;
            }
        }
        let known = self.view.len();
        if msgs.len() > known {
            self.view.extend(msgs[known..].iter().map(|m| Known {
                uid: m.uid,
                flags: m.flags,
                keywords: m.keywords,
                recent: m.recent,
                gone: false,
            }));
            write!(out, "* {} EXISTS\r\n", self.view.len())?;
            write!(out, "* {} RECENT\r\n", self.recent_count())?;
            self.cache = None;
        }
        Ok(true)
    }

    /// Compare the client's view with the store's index; send EXPUNGE (when allowed), FETCH
    /// FLAGS, EXISTS and RECENT for the differences.
    pub fn reconcile(&mut self, out: &mut dyn Write, allow_expunge: bool) -> io::Result<()> {
        self.announce_keywords(out)?;
        if self.reconcile_in_place(out)? {
            return Ok(());
        }
        let names = self.mailbox.keyword_names();
        let msgs = self.mailbox.messages();
        let old_len = self.view.len();
        let mut view: Vec<Known> = Vec::with_capacity(msgs.len().max(old_len));
        let mut j = 0;
        let mut expunged = 0;
        for known in &self.view {
            while j < msgs.len() && msgs[j].uid < known.uid {
                j += 1;
            }
            match msgs.get(j).filter(|m| m.uid == known.uid) {
                Some(m) => {
                    let mut k = known.clone();
                    if (m.flags, m.keywords) != (k.flags, k.keywords) {
                        let flags = flag_list(m.flags, m.keywords, k.recent, names);
                        write!(out, "* {} FETCH (FLAGS {flags})\r\n", view.len() + 1)?;
                        k.flags = m.flags;
                        k.keywords = m.keywords;
                    }
                    view.push(k);
                    j += 1;
                }
                None if allow_expunge => {
                    write!(out, "* {} EXPUNGE\r\n", view.len() + 1)?;
                    expunged += 1;
                }
                None => view.push(Known {
                    gone: true,
                    ..known.clone()
                }),
            }
        }
        let last_uid = self.view.last().map_or(0, |k| k.uid);
        let before_new = view.len();
        view.extend(msgs.iter().filter(|m| m.uid > last_uid).map(|m| Known {
            uid: m.uid,
            flags: m.flags,
            keywords: m.keywords,
            recent: m.recent,
            gone: false,
        }));
        let appended = view.len() > before_new;
        self.view = view;
        if appended || expunged > 0 {
            write!(out, "* {} EXISTS\r\n", self.view.len())?;
            write!(out, "* {} RECENT\r\n", self.recent_count())?;
        }
        if expunged > 0 || appended {
            self.cache = None;
        }
        Ok(())
    }
}

impl<T: Transport, B: Backend> Session<'_, T, B> {
    /// SELECT and EXAMINE.
    pub(super) fn select(&mut self, name: &str, examine: bool) -> io::Result<Reply> {
        self.leave_selected();
        let wire = mutf7::encode(name);
        let verb = if examine { "EXAMINE" } else { "SELECT" };
        let pop_holder = (!examine && names::is_inbox(&wire))
            .then(|| self.inbox_path.as_deref().and_then(SessionLock::holder_pid))
            .flatten()
            .filter(|&pid| pid != std::process::id());
        let Some(store) = self.store.as_ref() else {
            return Ok(Reply::bad("Not logged in"));
        };
        let mut in_use_note = pop_holder.map(|pid| {
            format!("NO [INUSE] Mailbox is in use by a POP3 session (pid {pid}), opened read-only")
        });
        let access = if examine || in_use_note.is_some() {
            Access::ReadOnly
        } else {
            Access::Shared
        };
        let mailbox = match store.open(&wire, access) {
            Ok(m) => m,
            Err(StoreError::InUse(why)) if access == Access::Shared => {
                in_use_note = Some(format!("NO [INUSE] {why}, opened read-only"));
                match store.open(&wire, Access::ReadOnly) {
                    Ok(m) => m,
                    Err(e) => return Ok(store_error(&e)),
                }
            }
            Err(e) => return Ok(store_error(&e)),
        };
        let read_only = access != Access::Shared || mailbox.read_only();
        let sel = Selected::new(mailbox, wire, read_only);
        if let Some(note) = in_use_note {
            self.untagged(&note)?;
        }
        self.announce_selected(&sel)?;
        self.selected = Some(sel);
        let code = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        Ok(Reply::ok(format!("[{code}] {verb} completed")))
    }

    fn announce_selected(&mut self, sel: &Selected) -> io::Result<()> {
        let out = &mut *self.client;
        write!(out, "* {} EXISTS\r\n", sel.view.len())?;
        write!(out, "* {} RECENT\r\n", sel.recent_count())?;
        write!(
            out,
            "* OK [UIDVALIDITY {}] UID validity status\r\n",
            sel.mailbox.uid_validity()
        )?;
        write!(
            out,
            "* OK [UIDNEXT {}] Predicted next UID\r\n",
            sel.mailbox.uid_next()
        )?;
        write!(out, "* {}\r\n", sel.flags_line())?;
        write!(out, "* {}\r\n", sel.permanent_flags_line())?;
        if let Some(first) = sel.view.iter().position(|k| !k.flags.contains(Flags::SEEN)) {
            write!(
                out,
                "* OK [UNSEEN {}] first unseen message in {}\r\n",
                first + 1,
                super::one_line(&sel.mailbox.path().display().to_string())
            )?;
        }
        Ok(())
    }

    pub(super) fn check(&mut self) -> io::Result<Reply> {
        let who = self.who();
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        match sel.settle() {
            Ok(()) => Ok(Reply::ok("CHECK completed")),
            Err(e) => {
                log::err(&format!("CHECK failed: {e} {who}"));
                Ok(store_error(&e))
            }
        }
    }

    /// CLOSE: expunge silently (read-write only) and deselect.
    pub(super) fn close(&mut self) -> io::Result<Reply> {
        let who = self.who();
        let Some(mut sel) = self.selected.take() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        if sel.read_only {
            return Ok(Reply::ok("CLOSE completed"));
        }
        match sel.mailbox.commit_with(Expunge::AllDeleted) {
            Ok(_) => Ok(Reply::ok("CLOSE completed")),
            Err(e) => {
                log::err(&format!(
                    "Expunge on CLOSE of {} failed: {e} {who}",
                    sel.mailbox.path().display()
                ));
                Ok(store_error(&e))
            }
        }
    }

    /// EXPUNGE, or UID EXPUNGE with a set. The EXPUNGE responses follow from the sync at the
    /// end of the command.
    pub(super) fn expunge(&mut self, uids: Option<&SequenceSet>) -> io::Result<Reply> {
        let who = self.who();
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        if sel.read_only {
            return Ok(Reply::no("Mailbox is read-only"));
        }
        let chosen: Option<Vec<u32>> = match uids {
            None => None,
            Some(set) => match sel.positions(set, true) {
                Ok(positions) => Some(
                    positions
                        .into_iter()
                        .filter(|&p| !sel.view[p].gone)
                        .map(|p| sel.view[p].uid)
                        .collect(),
                ),
                Err(reply) => return Ok(reply),
            },
        };
        let which = match &chosen {
            None => Expunge::AllDeleted,
            Some(list) => Expunge::Uids(list),
        };
        match sel.mailbox.commit_with(which) {
            Ok(report) => {
                sel.dirty = false;
                sel.cache = None;
                Ok(Reply::ok(format!(
                    "Expunged {} messages",
                    report.expunged.len()
                )))
            }
            Err(e) => {
                log::err(&format!(
                    "Expunge of {} failed: {e} {who}",
                    sel.mailbox.path().display()
                ));
                Ok(store_error(&e))
            }
        }
    }
}
