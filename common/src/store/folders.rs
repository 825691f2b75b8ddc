//! A user's whole mail store as IMAP sees it: the INBOX plus folders, with LIST, CREATE, DELETE,
//! RENAME, subscriptions, STATUS and APPEND by name ([`MailStore`]), for the mbox layout (UW:
//! folders are mbox files under the mail root, directories are `\NoSelect` levels, subscriptions
//! in `~/.mailboxlist`) and the Maildir++ layout (`.Sent`, `.Drafts` under `~/Maildir`,
//! subscriptions in `subscriptions`).
//!
//! Names here are the WIRE form: modified UTF-7 (RFC 3501 §5.1.3), `/` as the hierarchy
//! delimiter, `INBOX` case-insensitive. They are stored on disk in that same form (as UW and
//! Dovecot do), after [`super::names::validate`] has refused anything that could leave the mail
//! root. Never formats protocol responses and never matches LIST patterns (the protocol layer
//! filters the full list).

use super::{Access, Mailbox, NewMessage, StoreConfig, StoreError};
use std::path::Path;

/// RFC 6154 special-use attributes, given to folders by their usual names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialUse {
    Sent,
    Drafts,
    Trash,
    Junk,
    Archive,
}

impl SpecialUse {
    /// The attribute as it appears in LIST (`\Sent` ...).
    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Archive => "\\Archive",
        }
    }

    /// The special use of a top-level folder by its usual name (case-insensitive), as the
    /// major clients name them.
    pub fn for_name(name: &str) -> Option<SpecialUse> {
        match name.to_ascii_lowercase().as_str() {
            "sent" | "sent messages" | "sent items" | "sent mail" => Some(SpecialUse::Sent),
            "drafts" | "draft" => Some(SpecialUse::Drafts),
            "trash" | "deleted messages" | "deleted items" => Some(SpecialUse::Trash),
            "junk" | "spam" | "junk e-mail" => Some(SpecialUse::Junk),
            "archive" | "archives" => Some(SpecialUse::Archive),
            _ => None,
        }
    }
}

/// One entry of the full folder list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderInfo {
    /// Wire-form name (`INBOX`, `mail/saved`, `Entw&APw-rfe`).
    pub name: String,
    /// False for a pure directory level (`\NoSelect`).
    pub selectable: bool,
    /// False when the name cannot have children (`\NoInferiors`: mbox files, the spool INBOX).
    pub inferiors_allowed: bool,
    /// `\HasChildren` / `\HasNoChildren` (RFC 3348).
    pub has_children: bool,
    /// `\Marked` (new mail since last read) / `\UnMarked`; `None` when unknown.
    pub marked: Option<bool>,
    pub special_use: Option<SpecialUse>,
}

/// The counts STATUS reports (RFC 3501 §6.3.10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailboxStatus {
    pub messages: u32,
    pub recent: u32,
    pub unseen: u32,
    pub uid_next: u32,
    pub uid_validity: u32,
}

/// A user's mail store.
pub trait MailStore {
    /// INBOX and every folder under the mail root, in a stable order. Dot-files are left out
    /// unless `show_hidden` (UW showed them).
    fn list(&self, show_hidden: bool) -> Result<Vec<FolderInfo>, StoreError>;
    /// Open a mailbox by name; `NoSuchMailbox` if it does not exist, `Refused` for a
    /// `\NoSelect` level.
    fn open(&self, name: &str, access: Access) -> Result<Box<dyn Mailbox>, StoreError>;
    /// STATUS without selecting. Writes nothing, except that messages without a stored UID get
    /// one (and a mailbox without UIDVALIDITY its first), as UW's and Dovecot's STATUS do, so
    /// that the UIDVALIDITY and UIDNEXT reported are those a later SELECT sees (RFC 3501
    /// 2.3.1.1). Never claims `\Recent`.
    fn status(&self, name: &str) -> Result<MailboxStatus, StoreError>;
    /// CREATE: a mailbox, with any missing parent levels; a trailing `/` creates only a level
    /// that can hold folders (mbox: a directory). `AlreadyExists` when taken.
    fn create(&self, name: &str) -> Result<(), StoreError>;
    /// DELETE (RFC 3501 §6.3.4): a mailbox with inferiors loses its messages and becomes
    /// `\NoSelect`; an empty directory level is removed; a non-empty one is `Refused`.
    /// INBOX is never deleted.
    fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// RENAME, including inferiors. Renaming INBOX moves all its messages into the new
    /// mailbox and leaves INBOX empty (RFC 3501 §6.3.5).
    fn rename(&self, from: &str, to: &str) -> Result<(), StoreError>;
    /// LSUB's list, in file order.
    fn subscriptions(&self) -> Result<Vec<String>, StoreError>;
    fn set_subscribed(&self, name: &str, subscribed: bool) -> Result<(), StoreError>;
    /// APPEND to a mailbox by name (it need not be selected): `NoSuchMailbox` if absent
    /// (the client then gets `[TRYCREATE]`). Returns UIDVALIDITY and the new UIDs.
    fn append(
        &self,
        name: &str,
        messages: &mut [NewMessage<'_>],
    ) -> Result<(u32, Vec<u32>), StoreError>;
}

/// The store of the user whose INBOX is `location`, with home directory `home`.
pub fn open_store(
    cfg: &StoreConfig,
    location: &super::InboxLocation,
    home: &Path,
) -> Box<dyn MailStore> {
    match location {
        super::InboxLocation::Mbox(inbox) => {
            Box::new(super::mbox::MboxStore::new(cfg, inbox, home))
        }
        super::InboxLocation::Maildir(root) => {
            Box::new(super::maildir::MaildirStore::new(cfg, root))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_use_by_usual_names() {
        assert_eq!(SpecialUse::for_name("Sent"), Some(SpecialUse::Sent));
        assert_eq!(SpecialUse::for_name("sent items"), Some(SpecialUse::Sent));
        assert_eq!(SpecialUse::for_name("Trash"), Some(SpecialUse::Trash));
        assert_eq!(SpecialUse::for_name("Spam"), Some(SpecialUse::Junk));
        assert_eq!(
            SpecialUse::for_name("Archive").map(SpecialUse::attribute),
            Some("\\Archive")
        );
        assert_eq!(SpecialUse::for_name("Receipts"), None);
    }
}
