//! Maildir++ mailboxes with a dovecot-uidlist compatible UID file.
//!
//! SKELETON: replaced by the real implementation.

use super::{Access, CommitReport, Flags, Mailbox, MessageInfo, StoreError};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub struct MaildirMailbox {
    path: PathBuf,
}

impl MaildirMailbox {
    pub fn open(path: &Path, _access: Access) -> Result<MaildirMailbox, StoreError> {
        Err(StoreError::Damaged(format!(
            "{}: maildir not implemented yet",
            path.display()
        )))
    }
}

impl Mailbox for MaildirMailbox {
    fn path(&self) -> &Path {
        &self.path
    }
    fn uid_validity(&self) -> u32 {
        0
    }
    fn uid_next(&self) -> u32 {
        1
    }
    fn messages(&self) -> &[MessageInfo] {
        &[]
    }
    fn keyword_names(&self) -> &[String] {
        &[]
    }
    fn open_message(&mut self, _index: usize) -> io::Result<Box<dyn Read + '_>> {
        Err(io::Error::other("not implemented"))
    }
    fn set_flags(&mut self, _index: usize, _flags: Flags) {}
    fn commit(&mut self, _expunge: bool) -> Result<CommitReport, StoreError> {
        Ok(CommitReport::default())
    }
}
