//! Where a Maildir++ folder's new UIDVALIDITY comes from: [`crate::store::uidvalidity`] with
//! Dovecot's state file, `dovecot-uidvalidity` at the top of the Maildir, so that Dovecot and
//! we draw from one sequence for every folder of the Maildir.

use crate::store::uidvalidity;
use std::path::{Path, PathBuf};

/// Dovecot's name for the state file.
const STATE_NAME: &str = "dovecot-uidvalidity";

/// A fresh UIDVALIDITY for the folder at `folder` (the Maildir itself or a `.Name` folder).
pub(super) fn next(folder: &Path) -> u32 {
    uidvalidity::next(&state_path(folder))
}

/// What [`next`] would give now, recording nothing.
pub(super) fn peek(folder: &Path) -> u32 {
    uidvalidity::peek(&state_path(folder))
}

/// `dovecot-uidvalidity` at the top of the Maildir that holds `folder`.
fn state_path(folder: &Path) -> PathBuf {
    let is_subfolder = folder
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.len() > 1);
    let top = match folder.parent() {
        Some(parent) if is_subfolder => parent,
        _ => folder,
    };
    top.join(STATE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_share_the_state_file_at_the_top_of_the_maildir() {
        let top = Path::new("/home/u/Maildir");
        let want = top.join(STATE_NAME);
        assert_eq!(state_path(top), want);
        assert_eq!(state_path(&top.join(".Sent")), want);
        assert_eq!(state_path(&top.join(".a.b")), want);
    }
}
