//! SEARCH (every RFC 3501 key, RFC 5032 WITHIN, RFC 4731 ESEARCH `RETURN (MIN MAX COUNT ALL)`),
//! SORT and THREAD (RFC 5256), by sequence number or UID.
//!
//! Owns the translation of parsed search keys into `message::Key` against the selected mailbox
//! (sets resolved, keywords mapped to the mailbox's bits) and reading as little of each message
//! as the key needs (nothing, the header, or the whole message). Charsets: US-ASCII and UTF-8,
//! anything else is `NO [BADCHARSET]`. Never sends EXPUNGE.

use super::fetch::{self, StoreMessage, STREAM_ABOVE};
use super::format::uid_set;
use super::select::Selected;
use super::{Backend, Reply, Session, Transport};
use crate::message::{self, Key, MessageKeys, MessageMeta, Needle, Needs, SearchContext};
use crate::protocol::command::{SearchKey, SearchReturn, SortCriterion, SortKey, ThreadAlgorithm};
use std::io::{self, Read};

const BADCHARSET: &str = "[BADCHARSET (US-ASCII UTF-8)] Charset not supported";

/// Headers longer than this are cut for searching and sorting.
const MAX_HEADER: u64 = 1024 * 1024;

fn charset_supported(charset: Option<&str>) -> bool {
    charset.is_none_or(|c| c.eq_ignore_ascii_case("US-ASCII") || c.eq_ignore_ascii_case("UTF-8"))
}

fn needle(bytes: &[u8]) -> Needle {
    Needle::new(&String::from_utf8_lossy(bytes))
}

/// The search key against this mailbox: sets resolved, keywords as bits.
fn to_key(key: &SearchKey, sel: &Selected) -> Key {
    let not = |k: Key| Key::Not(Box::new(k));
    let keyword = |name: &str| {
        let bit = sel.mailbox.keyword_names().iter().position(|n| n == name);
        Key::Keyword(bit.and_then(|b| u32::try_from(b).ok()))
    };
    let days = |d: &crate::wire::parser::Date| d.days_since_epoch();
    match key {
        SearchKey::All => Key::All,
        SearchKey::Answered => Key::Answered,
        SearchKey::Deleted => Key::Deleted,
        SearchKey::Draft => Key::Draft,
        SearchKey::Flagged => Key::Flagged,
        SearchKey::Seen => Key::Seen,
        SearchKey::Recent => Key::Recent,
        SearchKey::New => Key::New,
        SearchKey::Old => Key::Old,
        SearchKey::Unanswered => not(Key::Answered),
        SearchKey::Undeleted => not(Key::Deleted),
        SearchKey::Undraft => not(Key::Draft),
        SearchKey::Unflagged => not(Key::Flagged),
        SearchKey::Unseen => not(Key::Seen),
        SearchKey::Keyword(name) => keyword(name),
        SearchKey::Unkeyword(name) => not(keyword(name)),
        SearchKey::Before(d) => Key::Before(days(d)),
        SearchKey::On(d) => Key::On(days(d)),
        SearchKey::Since(d) => Key::Since(days(d)),
        SearchKey::SentBefore(d) => Key::SentBefore(days(d)),
        SearchKey::SentOn(d) => Key::SentOn(days(d)),
        SearchKey::SentSince(d) => Key::SentSince(days(d)),
        SearchKey::Larger(n) => Key::Larger(*n),
        SearchKey::Smaller(n) => Key::Smaller(*n),
        SearchKey::Younger(s) => Key::Younger(u64::from(*s)),
        SearchKey::Older(s) => Key::Older(u64::from(*s)),
        SearchKey::Bcc(s) => Key::Bcc(needle(s)),
        SearchKey::Cc(s) => Key::Cc(needle(s)),
        SearchKey::From(s) => Key::From(needle(s)),
        SearchKey::To(s) => Key::To(needle(s)),
        SearchKey::Subject(s) => Key::Subject(needle(s)),
        SearchKey::Body(s) => Key::Body(needle(s)),
        SearchKey::Text(s) => Key::Text(needle(s)),
        SearchKey::Header(name, value) => Key::Header(name.clone(), needle(value)),
        SearchKey::SequenceSet(set) => {
            let len = u32::try_from(sel.view.len()).unwrap_or(u32::MAX);
            Key::SequenceSet(set.ranges(len))
        }
        SearchKey::Uid(set) => {
            let largest = sel.view.last().map_or(0, |k| k.uid);
            Key::UidSet(set.ranges(largest))
        }
        SearchKey::Not(k) => not(to_key(k, sel)),
        SearchKey::Or(a, b) => Key::Or(Box::new(to_key(a, sel)), Box::new(to_key(b, sel))),
        SearchKey::And(keys) => Key::And(keys.iter().map(|k| to_key(k, sel)).collect()),
    }
}

/// The index data of message `idx`; its INTERNALDATE only `with_date` (a Maildir stats the
/// file for it), 0 otherwise.
fn meta(sel: &mut Selected, pos: usize, idx: usize, with_date: bool) -> MessageMeta {
    let (internal_date, internal_tz_minutes) = if with_date {
        sel.mailbox.internal_date(idx)
    } else {
        (0, 0)
    };
    let m = &sel.mailbox.messages()[idx];
    MessageMeta {
        seq: u32::try_from(pos + 1).unwrap_or(u32::MAX),
        uid: m.uid,
        flags: m.flags,
        keywords: m.keywords,
        recent: sel.view[pos].recent,
        size: m.size,
        internal_date,
        internal_tz_minutes,
    }
}

/// The header block of message `idx` (through the empty line), read from the store.
fn read_header(sel: &mut Selected, idx: usize) -> io::Result<Vec<u8>> {
    let uid = sel.mailbox.messages()[idx].uid;
    if let Some(cached) = sel
        .cache
        .as_ref()
        .filter(|c| c.uid == uid && c.whole().is_some())
    {
        return Ok(cached
            .bytes()
            .bytes(cached.tree.root.header.clone())
            .unwrap_or_default()
            .to_vec());
    }
    let mut reader = sel.mailbox.open_message(idx)?.take(MAX_HEADER);
    let mut header = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let scan_from = header.len().saturating_sub(3);
        header.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memmem::find(&header[scan_from..], b"\r\n\r\n") {
            header.truncate(scan_from + end + 4);
            break;
        }
    }
    Ok(header)
}

/// The whole message (at most [`STREAM_ABOVE`] octets), from the FETCH cache when it holds
/// this message. Not parsed here: the search parses only if a key needs it.
fn read_message(sel: &mut Selected, idx: usize) -> io::Result<Vec<u8>> {
    let uid = sel.mailbox.messages()[idx].uid;
    if let Some(bytes) = sel
        .cache
        .as_ref()
        .filter(|c| c.uid == uid)
        .and_then(|c| c.whole())
    {
        return Ok(bytes.to_vec());
    }
    let size = sel.mailbox.messages()[idx].size.min(STREAM_ABOVE);
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    sel.mailbox
        .open_message(idx)?
        .take(size)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// For a message too large to read into memory: whether its body text contains each needle
/// of `key`'s BODY and TEXT keys (folded needle, hit), found by streaming its text parts.
fn streamed_body_hits(
    sel: &mut Selected,
    idx: usize,
    key: &Key,
) -> io::Result<Vec<(String, bool)>> {
    let loaded = fetch::load(sel, idx)?;
    let needles = key.body_needles();
    let mut source = StoreMessage {
        mailbox: &mut *sel.mailbox,
        index: idx,
    };
    let found =
        message::stream::body_text_contains(&mut source, &loaded.tree, loaded.bytes(), &needles)?;
    Ok(needles
        .iter()
        .zip(found)
        .map(|(needle, hit)| (needle.folded().to_string(), hit))
        .collect())
}

/// View positions of the messages matching `key` (messages already gone are left out).
fn matching(sel: &mut Selected, key: &SearchKey) -> io::Result<Vec<usize>> {
    let key = to_key(key, sel);
    let needs = key.needs();
    let with_date = key.needs_internal_date();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut found = Vec::new();
    for pos in 0..sel.view.len() {
        let Some(idx) = sel.index_of(pos) else {
            continue;
        };
        let meta = meta(sel, pos, idx, with_date);
        let large = meta.size > STREAM_ABOVE;
        let matched = match needs {
            Needs::Nothing => SearchContext::new(&meta, &[], now).matches(&key),
            Needs::Header => {
                let header = read_header(sel, idx)?;
                SearchContext::new(&meta, &header, now).matches(&key)
            }
            Needs::Message if large => {
                let header = read_header(sel, idx)?;
                let hits = streamed_body_hits(sel, idx, &key)?;
                SearchContext::with_body_hits(&meta, &header, now, hits).matches(&key)
            }
            Needs::Message => {
                let bytes = read_message(sel, idx)?;
                SearchContext::new(&meta, &bytes, now).matches(&key)
            }
        };
        if matched {
            found.push(pos);
        }
    }
    Ok(found)
}

/// Numbers to report for view positions: sequence numbers or UIDs.
fn numbers(sel: &Selected, positions: &[usize], uid: bool) -> Vec<u32> {
    positions
        .iter()
        .map(|&p| {
            if uid {
                sel.view[p].uid
            } else {
                u32::try_from(p + 1).unwrap_or(u32::MAX)
            }
        })
        .collect()
}

/// The `* ESEARCH` line's data after the correlator.
fn esearch_data(found: &[u32], returns: &[SearchReturn]) -> String {
    let all = returns.is_empty();
    let wants = |r: SearchReturn| all && r == SearchReturn::All || returns.contains(&r);
    let mut parts = Vec::new();
    if let (true, Some(min)) = (wants(SearchReturn::Min), found.iter().min()) {
        parts.push(format!("MIN {min}"));
    }
    if let (true, Some(max)) = (wants(SearchReturn::Max), found.iter().max()) {
        parts.push(format!("MAX {max}"));
    }
    if wants(SearchReturn::All) && !found.is_empty() {
        let mut sorted = found.to_vec();
        sorted.sort_unstable();
        parts.push(format!("ALL {}", uid_set(&sorted)));
    }
    if wants(SearchReturn::Count) {
        parts.push(format!("COUNT {}", found.len()));
    }
    parts.join(" ")
}

fn sort_key(key: SortKey) -> message::SortKey {
    match key {
        SortKey::Arrival => message::SortKey::Arrival,
        SortKey::Cc => message::SortKey::Cc,
        SortKey::Date => message::SortKey::Date,
        SortKey::From => message::SortKey::From,
        SortKey::Size => message::SortKey::Size,
        SortKey::Subject => message::SortKey::Subject,
        SortKey::To => message::SortKey::To,
    }
}

/// SORT and THREAD keys of the matching messages.
fn message_keys(sel: &mut Selected, positions: &[usize]) -> io::Result<Vec<MessageKeys>> {
    let mut keys = Vec::with_capacity(positions.len());
    for &pos in positions {
        let Some(idx) = sel.index_of(pos) else {
            continue;
        };
        let meta = meta(sel, pos, idx, true);
        let header = read_header(sel, idx)?;
        keys.push(MessageKeys::new(&header, &meta));
    }
    Ok(keys)
}

impl<T: Transport, B: Backend> Session<'_, T, B> {
    pub(super) fn search(
        &mut self,
        tag: &str,
        uid: bool,
        charset: Option<&str>,
        returns: Option<&[SearchReturn]>,
        key: &SearchKey,
    ) -> io::Result<Reply> {
        if !charset_supported(charset) {
            return Ok(Reply::no(BADCHARSET));
        }
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        let positions = matching(sel, key)?;
        let found = numbers(sel, &positions, uid);
        let out = &mut *self.client;
        match returns {
            Some(returns) => {
                write!(out, "* ESEARCH (TAG \"{tag}\")")?;
                if uid {
                    out.write_all(b" UID")?;
                }
                let data = esearch_data(&found, returns);
                if !data.is_empty() {
                    write!(out, " {data}")?;
                }
                out.write_all(b"\r\n")?;
            }
            None => {
                out.write_all(b"* SEARCH")?;
                for n in &found {
                    write!(out, " {n}")?;
                }
                out.write_all(b"\r\n")?;
            }
        }
        Ok(Reply::ok(if uid {
            "UID SEARCH completed"
        } else {
            "SEARCH completed"
        }))
    }

    pub(super) fn sort(
        &mut self,
        uid: bool,
        criteria: &[SortCriterion],
        charset: &str,
        key: &SearchKey,
    ) -> io::Result<Reply> {
        if !charset_supported(Some(charset)) {
            return Ok(Reply::no(BADCHARSET));
        }
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        let positions = matching(sel, key)?;
        let keys = message_keys(sel, &positions)?;
        let criteria: Vec<message::SortCriterion> = criteria
            .iter()
            .map(|c| message::SortCriterion {
                key: sort_key(c.key),
                reverse: c.reverse,
            })
            .collect();
        let order = message::sort(&keys, &criteria);
        let out = &mut *self.client;
        out.write_all(b"* SORT")?;
        for i in order {
            let k = &keys[i];
            write!(out, " {}", if uid { k.uid } else { k.seq })?;
        }
        out.write_all(b"\r\n")?;
        Ok(Reply::ok("SORT completed"))
    }

    pub(super) fn thread(
        &mut self,
        uid: bool,
        algorithm: ThreadAlgorithm,
        charset: &str,
        key: &SearchKey,
    ) -> io::Result<Reply> {
        if !charset_supported(Some(charset)) {
            return Ok(Reply::no(BADCHARSET));
        }
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        let positions = matching(sel, key)?;
        let keys = message_keys(sel, &positions)?;
        let threads = match algorithm {
            ThreadAlgorithm::OrderedSubject => message::ordered_subject(&keys, uid),
            ThreadAlgorithm::References => message::references(&keys, uid),
        };
        let mut line = b"* THREAD ".to_vec();
        message::write_threads(&mut line, &threads);
        if threads.is_empty() {
            line.pop();
        }
        line.extend_from_slice(b"\r\n");
        self.client.write_all(&line)?;
        Ok(Reply::ok("THREAD completed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esearch_like_uw() {
        let all = [
            SearchReturn::Min,
            SearchReturn::Max,
            SearchReturn::Count,
            SearchReturn::All,
        ];
        assert_eq!(
            esearch_data(&[1, 2, 3, 4, 5], &all),
            "MIN 1 MAX 5 ALL 1:5 COUNT 5"
        );
        assert_eq!(esearch_data(&[], &all), "COUNT 0");
        assert_eq!(esearch_data(&[2, 4], &[]), "ALL 2,4");
        assert_eq!(esearch_data(&[], &[]), "");
    }

    #[test]
    fn charsets() {
        assert!(charset_supported(None));
        assert!(charset_supported(Some("utf-8")));
        assert!(charset_supported(Some("US-ASCII")));
        assert!(!charset_supported(Some("ISO-8859-1")));
    }
}
