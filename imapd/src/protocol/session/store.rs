//! STORE and UID STORE (FLAGS, +FLAGS, -FLAGS, .SILENT, keywords).
//!
//! Owns flag arithmetic and when a changed flag set is reported and written to disk (at the end of
//! every STORE: other sessions must see it). New keywords are announced with FLAGS and
//! PERMANENTFLAGS before any FETCH that carries them. Never sends EXPUNGE.

use super::mailboxes::store_error;
use super::{Backend, Reply, Session, Transport};
use crate::protocol::command::StoreMode;
use crate::wire::parser::{Flag, SequenceSet};
use common::log;
use common::store::Flags;
use std::io;

/// A STORE on at least this many messages sends its FETCH responses before it saves the
/// flags, so that the client reads them meanwhile (a few would only cost a write more).
const SEND_BEFORE_SAVING: usize = 64;

/// System flags and keyword names of a client flag list; `\Recent` and unknown `\Words` refused.
pub(super) fn split_flags(flags: &[Flag]) -> Result<(Flags, Vec<String>), Reply> {
    let mut system = Flags::NONE;
    let mut keywords: Vec<String> = Vec::new();
    for flag in flags {
        match flag {
            Flag::Answered => system.insert(Flags::ANSWERED),
            Flag::Flagged => system.insert(Flags::FLAGGED),
            Flag::Deleted => system.insert(Flags::DELETED),
            Flag::Seen => system.insert(Flags::SEEN),
            Flag::Draft => system.insert(Flags::DRAFT),
            Flag::Recent => return Err(Reply::bad("The \\Recent flag cannot be set")),
            Flag::Extension(name) => {
                return Err(Reply::no(format!("Unknown system flag \\{name}")))
            }
            Flag::Keyword(name) => {
                if !keywords.contains(name) {
                    keywords.push(name.clone());
                }
            }
        }
    }
    Ok((system, keywords))
}

/// Apply a STORE mode to one message's flags.
fn apply(mode: StoreMode, old: (Flags, u64), change: (Flags, u64)) -> (Flags, u64) {
    match mode {
        StoreMode::Replace => change,
        StoreMode::Add => (old.0.union(change.0), old.1 | change.1),
        StoreMode::Remove => (
            Flags::from_bits(old.0.bits() & !change.0.bits()),
            old.1 & !change.1,
        ),
    }
}

impl<T: Transport, B: Backend> Session<'_, T, B> {
    pub(super) fn store_flags(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        mode: StoreMode,
        silent: bool,
        flags: &[Flag],
    ) -> io::Result<Reply> {
        let who = self.who();
        let (system, keyword_names) = match split_flags(flags) {
            Ok(parts) => parts,
            Err(reply) => return Ok(reply),
        };
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        if sel.read_only {
            return Ok(Reply::no("[READ-ONLY] Mailbox is read-only"));
        }
        let positions = match sel.positions(set, uid) {
            Ok(p) => p,
            Err(reply) => return Ok(reply),
        };
        let mut keyword_bits = 0u64;
        for name in &keyword_names {
            // Removing a keyword the mailbox does not have must not create it.
            let bit = if mode == StoreMode::Remove {
                let known = sel.mailbox.keyword_names().iter().position(|n| n == name);
                known.and_then(|p| u32::try_from(p).ok())
            } else {
                sel.mailbox.keyword_bit(name)
            };
            match bit.filter(|&b| b < 64) {
                Some(bit) => keyword_bits |= 1u64 << bit,
                None if mode == StoreMode::Remove => {}
                None => return Ok(Reply::no("[LIMIT] Too many keywords in this mailbox")),
            }
        }
        let out = &mut *self.client;
        sel.announce_keywords(out)?;
        let mut missing = false;
        let many = positions.len() >= SEND_BEFORE_SAVING;
        for pos in positions {
            let Some(idx) = sel.index_of(pos) else {
                missing = true;
                continue;
            };
            let m = &sel.mailbox.messages()[idx];
            let (new_flags, new_keywords) =
                apply(mode, (m.flags, m.keywords), (system, keyword_bits));
            sel.set_flags(idx, new_flags, new_keywords);
            if !silent {
                let flag_text = sel.current_flags(pos, idx);
                write!(out, "* {} FETCH (", pos + 1)?;
                if uid {
                    write!(out, "UID {} ", sel.view[pos].uid)?;
                }
                write!(out, "FLAGS {flag_text})\r\n")?;
            }
            sel.note_told(pos, idx);
        }
        if many && !silent {
            // The client reads the FETCH responses while the flags are saved.
            out.flush()?;
        }
        if let Err(e) = sel.persist_flags() {
            log::err(&format!(
                "Error writing flags to {}: {e} {who}",
                sel.mailbox.path().display()
            ));
            return Ok(store_error(&e));
        }
        if missing {
            // RFC 2180 section 4.2.1 allows OK; the code (RFC 5530) tells the client why some
            // messages were skipped. The other messages' flags are stored either way.
            return Ok(Reply::ok(
                "[EXPUNGEISSUED] Some of the requested messages no longer exist",
            ));
        }
        Ok(Reply::ok("STORE completed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_lists_split() {
        let (f, k) = split_flags(&[
            Flag::Seen,
            Flag::Keyword("Junk".into()),
            Flag::Keyword("Junk".into()),
        ])
        .ok()
        .unwrap();
        assert_eq!(f, Flags::SEEN);
        assert_eq!(k, ["Junk"]);
        assert!(split_flags(&[Flag::Recent]).is_err());
        assert!(split_flags(&[Flag::Extension("Foo".into())]).is_err());
    }

    #[test]
    fn modes() {
        let old = (Flags::SEEN, 0b01);
        let change = (Flags::DELETED, 0b10);
        assert_eq!(
            apply(StoreMode::Add, old, change),
            (Flags::SEEN.union(Flags::DELETED), 0b11)
        );
        assert_eq!(apply(StoreMode::Replace, old, change), change);
        assert_eq!(
            apply(StoreMode::Remove, (Flags::SEEN, 0b11), (Flags::SEEN, 0b01)),
            (Flags::NONE, 0b10)
        );
    }
}
