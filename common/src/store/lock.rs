//! Mailbox locking that interoperates with Debian's MTAs and MDAs and with UW-IMAP.
//!
//! Owns: `<mailbox>.lock` dotlocks (NFS-safe link() method, stale takeover after 5 minutes as
//! liblockfile does, through the setgid-mail helper when the spool directory is not writable),
//! fcntl locks on the mailbox file, and the per-session lock `/tmp/.<dev>.<ino>` that gives POP3
//! exclusive use of a maildrop. Never reads or writes mailbox contents.
//!
//! SKELETON: no-op stand-ins with the final signatures; the real implementation replaces them.

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::Duration;

/// Dotlock plus fcntl write lock on a mailbox file, held while reading or rewriting it.
/// Dropping it releases the fcntl lock, then removes the dotlock.
pub struct MailboxLock {
    _private: (),
}

impl MailboxLock {
    /// Take `<path>.lock` (via `helper` if the directory is not writable by us), then an fcntl
    /// write lock on `file`, waiting up to `timeout` in total.
    pub fn acquire(
        _path: &Path,
        _file: &File,
        _helper: &Path,
        _timeout: Duration,
    ) -> io::Result<MailboxLock> {
        Ok(MailboxLock { _private: () })
    }
}

/// Exclusive use of a mailbox for a whole session (POP3), held on `/tmp/.<dev>.<ino>` of the
/// mailbox file or Maildir directory, as UW-IMAP does. Released on drop.
pub struct SessionLock {
    _private: (),
}

impl SessionLock {
    /// Take the session lock without waiting; `Err` with a human-readable reason (naming the
    /// holder's pid where known) when another session holds it.
    pub fn try_acquire(_mailbox: &Path) -> Result<SessionLock, String> {
        Ok(SessionLock { _private: () })
    }
}
