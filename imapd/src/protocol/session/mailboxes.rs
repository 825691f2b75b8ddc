//! Commands on mailboxes by name (authenticated state): CREATE, DELETE, RENAME, SUBSCRIBE,
//! UNSUBSCRIBE, LIST (with RFC 5258 selection/return basics, RFC 6154 SPECIAL-USE, RFC 5819
//! RETURN STATUS), LSUB, STATUS and (MULTI)APPEND.
//!
//! Owns LIST pattern matching (`*`, `%`) over the store's full folder list and the mapping of
//! store errors to response codes. Names go to the store in wire form (modified UTF-7); the
//! store refuses names that would leave the mail root. Never opens files itself.

use super::format::uid_set;
use super::{Backend, Reply, Session, Transport};
use crate::message::binary::encode_nul_parts;
use crate::protocol::command::{AppendMessage, ListCommand, StatusItem};
use crate::wire::mutf7;
use crate::wire::response::ResponseWriter;
use common::log;
use common::store::{names, FolderInfo, MailStore, MailboxStatus, NewMessage, StoreError};
use std::collections::BTreeSet;
use std::io::{self, Read};

/// The tagged NO for a store error, with its RFC 5530 response code.
pub(super) fn store_error(e: &StoreError) -> Reply {
    match e {
        StoreError::InUse(why) => Reply::no(format!("[INUSE] Mailbox in use: {why}")),
        StoreError::Damaged(why) => Reply::no(format!("[CORRUPTION] Damaged mailbox: {why}")),
        StoreError::Io(path, err) => {
            Reply::no(format!("[SERVERBUG] Error on {}: {err}", path.display()))
        }
        StoreError::NoSuchMailbox(name) => {
            Reply::no(format!("[NONEXISTENT] No such mailbox: {name}"))
        }
        StoreError::AlreadyExists(name) => {
            Reply::no(format!("[ALREADYEXISTS] Mailbox already exists: {name}"))
        }
        StoreError::Refused(why) => Reply::no(format!("[CANNOT] {why}")),
    }
}

/// Does `name` match the LIST pattern (`*` anything, `%` anything but the delimiter)?
/// Dynamic programming over both strings: linear memory, no backtracking blow-up.
pub(super) fn pattern_matches(pattern: &[u8], name: &[u8]) -> bool {
    let n = name.len();
    // row[j]: does pattern[i..] match name[j..]? Computed from the last pattern byte backwards.
    let mut row = vec![false; n + 1];
    row[n] = true;
    for &p in pattern.iter().rev() {
        let mut next = vec![false; n + 1];
        for j in (0..=n).rev() {
            next[j] = match p {
                b'*' => row[j] || (j < n && next[j + 1]),
                b'%' => row[j] || (j < n && name[j] != b'/' && next[j + 1]),
                c => j < n && name[j] == c && row[j + 1],
            };
        }
        row = next;
    }
    row[0]
}

/// The pattern as matched against names: reference prepended, a leading `INBOX` in any case
/// made upper case (INBOX is case-insensitive).
fn canonical_pattern(reference: &str, pattern: &str) -> Vec<u8> {
    let mut full = mutf7::encode(reference).into_bytes();
    full.extend_from_slice(mutf7::encode(pattern).as_bytes());
    if full.len() >= 5 && full[..5].eq_ignore_ascii_case(b"INBOX") {
        let at_boundary = full
            .get(5)
            .is_none_or(|&c| c == b'/' || c == b'*' || c == b'%');
        if at_boundary {
            full[..5].copy_from_slice(b"INBOX");
        }
    }
    full
}

/// Add the parent levels of nested names the store did not list itself (`\NoSelect`), and
/// INBOX, which is always listed (it exists as soon as mail is delivered).
fn with_implied_parents(mut folders: Vec<FolderInfo>) -> Vec<FolderInfo> {
    if !folders.iter().any(|f| names::is_inbox(&f.name)) {
        folders.insert(
            0,
            FolderInfo {
                name: "INBOX".into(),
                selectable: true,
                inferiors_allowed: false,
                has_children: false,
                marked: None,
                special_use: None,
            },
        );
    }
    let known: BTreeSet<String> = folders.iter().map(|f| f.name.clone()).collect();
    let mut missing = BTreeSet::new();
    for f in &folders {
        let mut prefix = f.name.as_str();
        while let Some(cut) = prefix.rfind('/') {
            prefix = &prefix[..cut];
            if !prefix.is_empty() && !known.contains(prefix) {
                missing.insert(prefix.to_string());
            }
        }
    }
    folders.extend(missing.into_iter().map(|name| FolderInfo {
        name,
        selectable: false,
        inferiors_allowed: true,
        has_children: true,
        marked: None,
        special_use: None,
    }));
    folders
}

fn attributes(f: &FolderInfo, subscribed: bool, show_subscribed: bool) -> String {
    let mut attrs: Vec<&str> = Vec::new();
    if !f.selectable {
        attrs.push("\\NoSelect");
    }
    if !f.inferiors_allowed {
        attrs.push("\\NoInferiors");
    } else if f.has_children {
        attrs.push("\\HasChildren");
    } else {
        attrs.push("\\HasNoChildren");
    }
    match f.marked {
        Some(true) => attrs.push("\\Marked"),
        Some(false) => attrs.push("\\UnMarked"),
        None => {}
    }
    if let Some(special) = f.special_use {
        attrs.push(special.attribute());
    }
    if show_subscribed && subscribed {
        attrs.push("\\Subscribed");
    }
    attrs.join(" ")
}

/// STATUS items in the order UW answers them, filtered to those asked for.
fn status_text(status: &MailboxStatus, items: &[StatusItem]) -> String {
    let order = [
        (StatusItem::Messages, "MESSAGES", status.messages),
        (StatusItem::Recent, "RECENT", status.recent),
        (StatusItem::Unseen, "UNSEEN", status.unseen),
        (StatusItem::UidNext, "UIDNEXT", status.uid_next),
        (StatusItem::UidValidity, "UIDVALIDITY", status.uid_validity),
    ];
    order
        .iter()
        .filter(|(item, _, _)| items.contains(item))
        .map(|(_, name, value)| format!("{name} {value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Refuse client-supplied names the store must never see (control characters after decoding).
fn wire_name(name: &str) -> Result<String, Reply> {
    if name.chars().any(char::is_control) {
        return Err(Reply::no("[CANNOT] Invalid mailbox name"));
    }
    Ok(mutf7::encode(name))
}

impl<T: Transport, B: Backend> Session<'_, T, B> {
    fn store_ref(&self) -> Result<&dyn MailStore, Reply> {
        self.store
            .as_deref()
            .ok_or_else(|| Reply::bad("Not logged in"))
    }

    fn is_selected_name(&self, wire: &str) -> bool {
        self.selected.as_ref().is_some_and(|sel| {
            sel.name == wire || (names::is_inbox(&sel.name) && names::is_inbox(wire))
        })
    }

    pub(super) fn create(&mut self, name: &str) -> io::Result<Reply> {
        let wire = match wire_name(name) {
            Ok(w) => w,
            Err(r) => return Ok(r),
        };
        if names::is_inbox(wire.trim_end_matches('/')) {
            return Ok(Reply::no("[ALREADYEXISTS] Can't create INBOX"));
        }
        let result = self.store_ref().map(|s| s.create(&wire));
        Ok(match result {
            Err(reply) => reply,
            Ok(Ok(())) => Reply::ok("CREATE completed"),
            Ok(Err(e)) => store_error(&e),
        })
    }

    pub(super) fn delete(&mut self, name: &str) -> io::Result<Reply> {
        let wire = match wire_name(name) {
            Ok(w) => w,
            Err(r) => return Ok(r),
        };
        if names::is_inbox(&wire) {
            return Ok(Reply::no("[CANNOT] Can't delete INBOX"));
        }
        if self.is_selected_name(&wire) {
            return Ok(Reply::no("[CANNOT] Can not DELETE the selected mailbox"));
        }
        let result = self.store_ref().map(|s| s.delete(&wire));
        Ok(match result {
            Err(reply) => reply,
            Ok(Ok(())) => Reply::ok("DELETE completed"),
            Ok(Err(e)) => store_error(&e),
        })
    }

    pub(super) fn rename(&mut self, from: &str, to: &str) -> io::Result<Reply> {
        let (from, to) = match (wire_name(from), wire_name(to)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(r), _) | (_, Err(r)) => return Ok(r),
        };
        if names::is_inbox(&to) {
            return Ok(Reply::no("[ALREADYEXISTS] Can't rename to INBOX"));
        }
        if self.is_selected_name(&from) && !names::is_inbox(&from) {
            return Ok(Reply::no("[CANNOT] Can not RENAME the selected mailbox"));
        }
        let result = self.store_ref().map(|s| s.rename(&from, &to));
        Ok(match result {
            Err(reply) => reply,
            Ok(Ok(())) => Reply::ok("RENAME completed"),
            Ok(Err(e)) => store_error(&e),
        })
    }

    pub(super) fn subscribe(&mut self, name: &str, on: bool) -> io::Result<Reply> {
        let wire = match wire_name(name) {
            Ok(w) => w,
            Err(r) => return Ok(r),
        };
        let verb = if on { "SUBSCRIBE" } else { "UNSUBSCRIBE" };
        let result = self.store_ref().map(|s| s.set_subscribed(&wire, on));
        Ok(match result {
            Err(reply) => reply,
            Ok(Ok(())) => Reply::ok(format!("{verb} completed")),
            Ok(Err(e)) => store_error(&e),
        })
    }

    pub(super) fn list(&mut self, cmd: &ListCommand) -> io::Result<Reply> {
        if cmd.patterns.len() == 1 && cmd.patterns[0].is_empty() {
            self.untagged("LIST (\\NoSelect) \"/\" \"\"")?;
            return Ok(Reply::ok("LIST completed"));
        }
        let show_hidden = self.policy.show_hidden;
        let listing = self.store_ref().map(|s| {
            let folders = s.list(show_hidden);
            let subscriptions = s.subscriptions();
            (folders, subscriptions)
        });
        let (folders, subscriptions) = match listing {
            Err(reply) => return Ok(reply),
            Ok((Ok(f), Ok(s))) => (f, s),
            Ok((Err(e), _) | (_, Err(e))) => return Ok(store_error(&e)),
        };
        let subscribed: BTreeSet<String> = subscriptions.into_iter().collect();
        let patterns: Vec<Vec<u8>> = cmd
            .patterns
            .iter()
            .map(|p| canonical_pattern(&cmd.reference, p))
            .collect();
        let matches = |name: &str| patterns.iter().any(|p| pattern_matches(p, name.as_bytes()));
        let show_subscribed = cmd.return_subscribed || cmd.select_subscribed;
        let mut lines: Vec<(String, String, bool)> = Vec::new();
        for f in with_implied_parents(folders) {
            let is_subscribed = subscribed.contains(&f.name);
            if !matches(&f.name)
                || (cmd.select_subscribed && !is_subscribed)
                || (cmd.select_special_use && f.special_use.is_none())
            {
                continue;
            }
            lines.push((
                attributes(&f, is_subscribed, show_subscribed),
                f.name.clone(),
                f.selectable,
            ));
        }
        if cmd.select_subscribed {
            let listed: BTreeSet<String> = lines.iter().map(|l| l.1.clone()).collect();
            for name in subscribed
                .iter()
                .filter(|n| !listed.contains(*n) && matches(n))
            {
                lines.push(("\\NonExistent \\Subscribed".into(), name.clone(), false));
            }
        }
        for (attrs, name, selectable) in lines {
            self.list_line("LIST", &attrs, &name)?;
            if let (Some(items), true) = (&cmd.return_status, selectable) {
                self.status_line(&name, items)?;
            }
        }
        Ok(Reply::ok("LIST completed"))
    }

    fn list_line(&mut self, verb: &str, attrs: &str, name: &str) -> io::Result<()> {
        write!(self.client, "* {verb} ({attrs}) \"/\" ")?;
        ResponseWriter::new(&mut *self.client).write_astring(name.as_bytes())?;
        self.client.write_all(b"\r\n")
    }

    /// `* STATUS` for LIST RETURN (STATUS); a mailbox that cannot be read is left out.
    fn status_line(&mut self, wire: &str, items: &[StatusItem]) -> io::Result<()> {
        let Ok(store) = self.store_ref() else {
            return Ok(());
        };
        let Ok(status) = store.status(wire) else {
            return Ok(());
        };
        self.client.write_all(b"* STATUS ")?;
        ResponseWriter::new(&mut *self.client).write_astring(wire.as_bytes())?;
        write!(self.client, " ({})\r\n", status_text(&status, items))
    }

    /// LSUB. A `%` that stops above a subscribed name lists the unsubscribed parent level with
    /// `\Noselect` (RFC 3501 section 6.3.9: `foo/bar` subscribed, `foo` not, `LSUB "" %`).
    pub(super) fn lsub(&mut self, reference: &str, pattern: Option<&str>) -> io::Result<Reply> {
        let subscriptions = match self.store_ref().map(|s| s.subscriptions()) {
            Err(reply) => return Ok(reply),
            Ok(Err(e)) => return Ok(store_error(&e)),
            Ok(Ok(s)) => s,
        };
        let Some(pattern) = pattern else {
            return Ok(Reply::ok("LSUB completed"));
        };
        let pattern = canonical_pattern(reference, pattern);
        let subscribed: BTreeSet<&str> = subscriptions.iter().map(String::as_str).collect();
        // In subscription order (as UW lists them); a made-up parent where its first child is.
        let mut listed: BTreeSet<&str> = BTreeSet::new();
        let mut lines: Vec<(&str, &str)> = Vec::new();
        for name in &subscriptions {
            if pattern_matches(&pattern, name.as_bytes()) {
                if listed.insert(name) {
                    lines.push(("", name));
                }
                continue;
            }
            for (cut, _) in name.match_indices('/') {
                let parent = &name[..cut];
                if !subscribed.contains(parent)
                    && pattern_matches(&pattern, parent.as_bytes())
                    && listed.insert(parent)
                {
                    lines.push(("\\Noselect", parent));
                }
            }
        }
        for (attrs, name) in lines {
            self.list_line("LSUB", attrs, name)?;
        }
        Ok(Reply::ok("LSUB completed"))
    }

    pub(super) fn status(&mut self, name: &str, items: &[StatusItem]) -> io::Result<Reply> {
        let wire = match wire_name(name) {
            Ok(w) => w,
            Err(r) => return Ok(r),
        };
        // The selected mailbox's pending flag changes count too.
        if self.is_selected_name(&wire) {
            if let Some(sel) = self.selected.as_mut() {
                if let Err(e) = sel.persist_flags() {
                    return Ok(store_error(&e));
                }
            }
        }
        let status = match self.store_ref().map(|s| s.status(&wire)) {
            Err(reply) => return Ok(reply),
            Ok(Err(e)) => return Ok(store_error(&e)),
            Ok(Ok(s)) => s,
        };
        self.client.write_all(b"* STATUS ")?;
        ResponseWriter::new(&mut *self.client).write_astring(wire.as_bytes())?;
        write!(self.client, " ({})\r\n", status_text(&status, items))?;
        Ok(Reply::ok("STATUS completed"))
    }

    /// APPEND and MULTIAPPEND (all or none). The new messages of the selected mailbox are
    /// reported by the sync at the end of the command.
    pub(super) fn append(&mut self, name: &str, messages: &[AppendMessage]) -> io::Result<Reply> {
        let wire = match wire_name(name) {
            Ok(w) => w,
            Err(r) => return Ok(r),
        };
        let mut prepared = Vec::with_capacity(messages.len());
        for m in messages {
            match check_append(m) {
                Ok(p) => prepared.push(p),
                Err(reply) => return Ok(reply),
            }
        }
        let mut readers: Vec<Box<dyn Read + '_>> = messages
            .iter()
            .zip(&prepared)
            .map(|(m, p)| match &p.converted {
                Some(bytes) => Box::new(&bytes[..]) as Box<dyn Read>,
                None => m.message.reader(),
            })
            .collect();
        let mut batch: Vec<NewMessage<'_>> = readers
            .iter_mut()
            .zip(messages.iter().zip(prepared.iter()))
            .map(|(reader, (m, p))| NewMessage {
                source: reader.as_mut(),
                len: Some(
                    p.converted
                        .as_ref()
                        .map_or(m.message.len(), |c| c.len() as u64),
                ),
                flags: p.flags,
                keywords: &p.keywords,
                internal_date: m
                    .date
                    .map(|d| (d.unix_seconds(), i32::from(d.zone_minutes))),
            })
            .collect();
        let into_selected =
            self.is_selected_name(&wire) && self.selected.as_ref().is_some_and(|s| !s.read_only);
        let result = if into_selected {
            match self.selected.as_mut() {
                Some(sel) => sel
                    .mailbox
                    .append(&mut batch)
                    .map(|uids| (sel.mailbox.uid_validity(), uids)),
                None => return Ok(Reply::bad("No mailbox selected")),
            }
        } else {
            match self.store_ref() {
                Ok(store) => store.append(&wire, &mut batch),
                Err(reply) => return Ok(reply),
            }
        };
        Ok(match result {
            Ok((validity, uids)) => Reply::ok(format!(
                "[APPENDUID {validity} {}] APPEND completed",
                uid_set(&uids)
            )),
            Err(StoreError::NoSuchMailbox(_)) => {
                Reply::no("[TRYCREATE] APPEND failed: no such destination mailbox")
            }
            Err(e) => {
                log::err(&format!("APPEND to {wire} failed: {e} {}", self.who()));
                store_error(&e)
            }
        })
    }
}

/// Flags and keywords of one APPEND message, checked; the message itself when it had to be
/// re-encoded.
struct PreparedFlags {
    flags: common::store::Flags,
    keywords: Vec<String>,
    /// A literal8 message with NUL octets, its NUL-holding parts in base64 (RFC 3516 section
    /// 4.3 lets the server convert binary content; `BODY[]` can then be sent at all).
    converted: Option<Vec<u8>>,
}

fn check_append(m: &AppendMessage) -> Result<PreparedFlags, Reply> {
    if m.message.is_empty() {
        return Err(Reply::no("APPEND of an empty message refused"));
    }
    let has_nul = contains_nul(&m.message);
    if !m.message.binary && has_nul {
        return Err(Reply::no(
            "APPEND refused: message contains NUL octets (use a literal8, RFC 3516)",
        ));
    }
    let (flags, keywords) = super::store::split_flags(&m.flags)?;
    let converted = if has_nul {
        let mut bytes = Vec::new();
        m.message
            .reader()
            .read_to_end(&mut bytes)
            .map_err(|_| Reply::no("APPEND failed: cannot read the spooled message"))?;
        encode_nul_parts(&bytes)
    } else {
        None
    };
    Ok(PreparedFlags {
        flags,
        keywords,
        converted,
    })
}

fn contains_nul(literal: &crate::wire::reader::Literal) -> bool {
    if let Some(bytes) = literal.as_bytes() {
        return memchr::memchr(0, bytes).is_some();
    }
    let mut reader = literal.reader();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) if memchr::memchr(0, &buf[..n]).is_some() => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Unreadable spool: refuse rather than store something we cannot check.
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_patterns() {
        assert!(pattern_matches(b"*", b"a/b/c"));
        assert!(pattern_matches(b"%", b"abc"));
        assert!(!pattern_matches(b"%", b"a/b"));
        assert!(pattern_matches(b"a/%", b"a/b"));
        assert!(!pattern_matches(b"a/%", b"a/b/c"));
        assert!(pattern_matches(b"a*c", b"a/b/c"));
        assert!(pattern_matches(b"", b""));
        assert!(!pattern_matches(b"", b"x"));
        assert!(!pattern_matches(b"INBOX", b"INBOXES"));
        assert!(pattern_matches(&[b'*'; 200], b"a/b"));
    }

    #[test]
    fn inbox_is_case_insensitive_in_patterns() {
        assert_eq!(canonical_pattern("", "inbox"), b"INBOX");
        assert_eq!(canonical_pattern("", "Inbox/%"), b"INBOX/%");
        assert_eq!(canonical_pattern("", "inboxes"), b"inboxes");
        assert_eq!(canonical_pattern("mail/", "%"), b"mail/%");
    }

    #[test]
    fn implied_parents_are_noselect_and_inbox_is_always_there() {
        let leaf = FolderInfo {
            name: "a/b/c".into(),
            selectable: true,
            inferiors_allowed: false,
            has_children: false,
            marked: None,
            special_use: None,
        };
        let all = with_implied_parents(vec![leaf]);
        let names: Vec<&str> = all.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["INBOX", "a/b/c", "a", "a/b"]);
        assert_eq!(
            attributes(&all[2], false, false),
            "\\NoSelect \\HasChildren"
        );
    }

    #[test]
    fn status_in_uw_order() {
        let s = MailboxStatus {
            messages: 3,
            recent: 2,
            unseen: 3,
            uid_next: 4,
            uid_validity: 9,
        };
        let all = [
            StatusItem::UidValidity,
            StatusItem::Messages,
            StatusItem::Recent,
            StatusItem::UidNext,
            StatusItem::Unseen,
        ];
        assert_eq!(
            status_text(&s, &all),
            "MESSAGES 3 RECENT 2 UNSEEN 3 UIDNEXT 4 UIDVALIDITY 9"
        );
        assert_eq!(status_text(&s, &[StatusItem::UidNext]), "UIDNEXT 4");
    }
}
