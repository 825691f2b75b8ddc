//! COPY, MOVE (RFC 6851) and their UID forms, with UIDPLUS `COPYUID`.
//!
//! Owns getting messages from the selected mailbox into another (or the same) one atomically:
//! the messages are first read into a spool (memory for small sets, else one unlinked temporary
//! file), then appended as one group, so a failure leaves the destination unchanged. MOVE then
//! flags the originals `\Deleted` and expunges exactly those (UID EXPUNGE semantics). Never
//! writes the destination's files itself: that is the store's append.

use super::format::uid_set;
use super::mailboxes::store_error;
use super::select::Selected;
use super::{Backend, Reply, Session, Transport};
use crate::wire::mutf7;
use crate::wire::parser::SequenceSet;
use crate::wire::reader::{Literal, LiteralData};
use common::log;
use common::store::{names, Expunge, Flags, NewMessage, StoreError};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// Message sets up to this size are copied through memory; larger ones through a spool file.
const MEMORY_SPOOL: u64 = 4 * 1024 * 1024;

/// One message on its way to the destination.
struct Outgoing {
    uid: u32,
    text: Literal,
    flags: Flags,
    keywords: Vec<String>,
    date: (i64, i32),
}

/// An unlinked temporary file in `dir` (it disappears with its last descriptor).
fn unlinked_spool(dir: &Path) -> io::Result<File> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = dir.join(format!(".imapd-copy-{}-{nanos:09}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// Read the chosen messages out of the selected mailbox.
fn gather(sel: &mut Selected, positions: &[usize], spool_dir: &Path) -> io::Result<Vec<Outgoing>> {
    let indexes: Vec<(usize, usize)> = positions
        .iter()
        .filter_map(|&p| sel.index_of(p).map(|i| (p, i)))
        .collect();
    let total: u64 = indexes
        .iter()
        .map(|&(_, i)| sel.mailbox.messages()[i].size)
        .sum();
    let mut spool = if total > MEMORY_SPOOL {
        Some(Arc::new(unlinked_spool(spool_dir)?))
    } else {
        None
    };
    let mut offset = 0u64;
    let mut out = Vec::with_capacity(indexes.len());
    for (_, idx) in indexes {
        let date = sel.mailbox.internal_date(idx);
        let info = sel.mailbox.messages()[idx].clone();
        let names = sel.mailbox.keyword_names();
        let keywords = (0..names.len().min(64))
            .filter(|&b| info.keywords & (1u64 << b) != 0)
            .map(|b| names[b].clone())
            .collect();
        let mut reader = sel.mailbox.open_message(idx)?.take(info.size);
        let data = match spool.as_mut() {
            None => {
                let mut bytes = Vec::with_capacity(usize::try_from(info.size).unwrap_or(0));
                reader.read_to_end(&mut bytes)?;
                LiteralData::Memory(bytes)
            }
            Some(file) => {
                let mut handle: &File = file;
                handle.seek(SeekFrom::Start(offset))?;
                let len = io::copy(&mut reader, &mut handle)?;
                let piece = LiteralData::Spooled {
                    file: Arc::clone(file),
                    offset,
                    len,
                };
                offset += len;
                piece
            }
        };
        out.push(Outgoing {
            uid: info.uid,
            text: Literal {
                binary: false,
                data,
            },
            flags: info.flags,
            keywords,
            date,
        });
    }
    Ok(out)
}

impl<T: Transport, B: Backend> Session<'_, T, B> {
    pub(super) fn copy(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        mailbox: &str,
        is_move: bool,
    ) -> io::Result<Reply> {
        let verb = match (uid, is_move) {
            (false, false) => "COPY",
            (true, false) => "UID COPY",
            (false, true) => "MOVE",
            (true, true) => "UID MOVE",
        };
        if mailbox.chars().any(char::is_control) {
            return Ok(Reply::no("[CANNOT] Invalid mailbox name"));
        }
        let wire = mutf7::encode(mailbox);
        let who = self.who();
        let spool_dir = self.policy.limits.spool_dir.clone();
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        if is_move && sel.read_only {
            return Ok(Reply::no("[READ-ONLY] Mailbox is read-only"));
        }
        let positions = match sel.positions(set, uid) {
            Ok(p) => p,
            Err(reply) => return Ok(reply),
        };
        let outgoing = match gather(sel, &positions, &spool_dir) {
            Ok(o) => o,
            Err(e) => {
                log::err(&format!(
                    "{verb}: cannot read {}: {e} {who}",
                    sel.mailbox.path().display()
                ));
                return Ok(Reply::no(format!("[SERVERBUG] {verb} failed: {e}")));
            }
        };
        if outgoing.is_empty() {
            return Ok(Reply::ok(format!("{verb} completed")));
        }
        let same_mailbox = !sel.read_only
            && (sel.name == wire || (names::is_inbox(&sel.name) && names::is_inbox(&wire)));
        let mut readers: Vec<Box<dyn Read + '_>> =
            outgoing.iter().map(|o| o.text.reader()).collect();
        let mut batch: Vec<NewMessage<'_>> = readers
            .iter_mut()
            .zip(&outgoing)
            .map(|(reader, o)| NewMessage {
                source: reader.as_mut(),
                len: Some(o.text.len()),
                flags: o.flags,
                keywords: &o.keywords,
                internal_date: Some(o.date),
            })
            .collect();
        let result = if same_mailbox {
            sel.mailbox
                .append(&mut batch)
                .map(|uids| (sel.mailbox.uid_validity(), uids))
        } else {
            match self.store.as_deref() {
                Some(store) => store.append(&wire, &mut batch),
                None => return Ok(Reply::bad("Not logged in")),
            }
        };
        drop(batch);
        drop(readers);
        let (validity, new_uids) = match result {
            Ok(r) => r,
            Err(StoreError::NoSuchMailbox(_)) => {
                return Ok(Reply::no(format!(
                    "[TRYCREATE] {verb} failed: no such destination mailbox"
                )))
            }
            Err(e) => {
                log::err(&format!("{verb} to {wire} failed: {e} {who}"));
                return Ok(store_error(&e));
            }
        };
        let source_uids: Vec<u32> = outgoing.iter().map(|o| o.uid).collect();
        let code = format!(
            "COPYUID {validity} {} {}",
            uid_set(&source_uids),
            uid_set(&new_uids)
        );
        if !is_move {
            return Ok(Reply::ok(format!("[{code}] {verb} completed")));
        }
        self.untagged(&format!("OK [{code}] Moved"))?;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        Ok(expunge_moved(sel, &source_uids, verb, &who))
    }
}

/// Flag the moved originals `\Deleted` and expunge exactly those; the EXPUNGE responses follow
/// from the sync at the end of the command.
fn expunge_moved(sel: &mut Selected, uids: &[u32], verb: &str, who: &str) -> Reply {
    for &uid in uids {
        let Ok(idx) = sel.mailbox.messages().binary_search_by_key(&uid, |m| m.uid) else {
            continue;
        };
        let m = &sel.mailbox.messages()[idx];
        let (flags, keywords) = (m.flags.union(Flags::DELETED), m.keywords);
        sel.set_flags(idx, flags, keywords);
    }
    match sel.mailbox.commit_with(Expunge::Uids(uids)) {
        Ok(_) => {
            sel.cache = None;
            Reply::ok(format!("{verb} completed"))
        }
        Err(e) => {
            log::err(&format!(
                "{verb}: copied, but expunging the originals in {} failed: {e} {who}",
                sel.mailbox.path().display()
            ));
            store_error(&e)
        }
    }
}
