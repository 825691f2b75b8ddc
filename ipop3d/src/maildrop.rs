//! The POP3 view of an open mailbox: message numbers, deletion marks, the seen set, LAST, and
//! what QUIT applies (RFC 1939 §5 and §6).
//!
//! Owns the numbering and marks of one session. Never writes to the client and never touches
//! files itself: everything persistent goes through the [`Mailbox`] trait.

use common::store::{Flags, Mailbox, StoreError};
use std::io::{self, Read};

/// What QUIT did, for the `Update` log line.
pub struct Update {
    pub remaining: usize,
    pub deleted: usize,
    pub seen: usize,
}

pub struct Maildrop {
    mailbox: Box<dyn Mailbox>,
    /// Message number n (1-based) is mailbox index `visible[n - 1]`. Messages another client
    /// already flagged \Deleted are not offered, as UW does.
    visible: Vec<usize>,
    deleted: Vec<bool>,
    seen_now: Vec<bool>,
    /// LAST as it was at login: the highest message already \Seen (RFC 1460 / UW).
    initial_last: u32,
    last: u32,
}

impl Maildrop {
    pub fn new(mailbox: Box<dyn Mailbox>) -> Maildrop {
        let visible: Vec<usize> = mailbox
            .messages()
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.flags.contains(Flags::DELETED))
            .map(|(i, _)| i)
            .collect();
        let initial_last = visible
            .iter()
            .rposition(|&i| mailbox.messages()[i].flags.contains(Flags::SEEN))
            .map_or(0, |p| p as u32 + 1);
        Maildrop {
            deleted: vec![false; visible.len()],
            seen_now: vec![false; visible.len()],
            visible,
            mailbox,
            initial_last,
            last: initial_last,
        }
    }

    pub fn visible_count(&self) -> usize {
        self.visible.len()
    }

    pub fn total_count(&self) -> usize {
        self.mailbox.messages().len()
    }

    /// True if `n` names a message that exists and is not marked deleted.
    pub fn is_live(&self, n: u32) -> bool {
        let n = n as usize;
        n >= 1 && n <= self.visible.len() && !self.deleted[n - 1]
    }

    fn info(&self, n: u32) -> &common::store::MessageInfo {
        &self.mailbox.messages()[self.visible[n as usize - 1]]
    }

    pub fn size(&self, n: u32) -> u64 {
        self.info(n).size
    }

    /// UW's unique-id: UIDVALIDITY and UID, each as 8 lower-case hex digits.
    pub fn unique_id(&self, n: u32) -> String {
        format!(
            "{:08x}{:08x}",
            self.mailbox.uid_validity(),
            self.info(n).uid
        )
    }

    fn live_numbers(&self) -> impl Iterator<Item = u32> + '_ {
        (1..=self.visible.len() as u32).filter(|&n| self.is_live(n))
    }

    /// Number of live messages and their total size.
    pub fn stat(&self) -> (usize, u64) {
        self.live_numbers().fold((0, 0), |(count, octets), n| {
            (count + 1, octets + self.size(n))
        })
    }

    pub fn listing(&self) -> Vec<(u32, u64)> {
        self.live_numbers().map(|n| (n, self.size(n))).collect()
    }

    pub fn uid_listing(&self) -> Vec<(u32, String)> {
        self.live_numbers()
            .map(|n| (n, self.unique_id(n)))
            .collect()
    }

    /// RETR/TOP: the message counts as accessed and will be marked \Seen at QUIT.
    pub fn note_access(&mut self, n: u32) {
        self.last = self.last.max(n);
        self.seen_now[n as usize - 1] = true;
    }

    pub fn open(&mut self, n: u32) -> io::Result<Box<dyn Read + '_>> {
        let index = self.visible[n as usize - 1];
        self.mailbox.open_message(index)
    }

    pub fn delete(&mut self, n: u32) {
        self.last = self.last.max(n);
        self.deleted[n as usize - 1] = true;
    }

    pub fn last(&self) -> u32 {
        self.last
    }

    /// RSET: unmark deletions and accesses, restore LAST.
    pub fn reset(&mut self) {
        self.deleted.fill(false);
        self.seen_now.fill(false);
        self.last = self.initial_last;
    }

    /// The UPDATE state: mark accessed messages \Seen, expunge the deleted ones.
    pub fn commit(&mut self) -> Result<Update, StoreError> {
        let mut seen = 0;
        let mut deleted = 0;
        for (pos, &index) in self.visible.iter().enumerate() {
            let mut flags = self.mailbox.messages()[index].flags;
            if self.seen_now[pos] && !flags.contains(Flags::SEEN) {
                flags.insert(Flags::SEEN);
                seen += 1;
            }
            if self.deleted[pos] {
                flags.insert(Flags::DELETED);
                deleted += 1;
            }
            if flags != self.mailbox.messages()[index].flags {
                self.mailbox.set_flags(index, flags);
            }
        }
        // Flags an imapd session left in the mbox flag log are written too: after a POP3
        // session, the mailbox file holds everything (see `Mailbox::has_deferred_writes`).
        if seen > 0 || deleted > 0 || self.mailbox.has_deferred_writes() {
            self.mailbox.commit(deleted > 0)?;
        }
        Ok(Update {
            remaining: self.mailbox.messages().len(),
            deleted,
            seen,
        })
    }
}
