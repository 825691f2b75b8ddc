//! UIDVALIDITY for a Maildir++ folder getting its first uidlist: the current time, but always
//! above the last value handed out under the same Maildir, so that a folder deleted and created
//! again within one second still gets a new one (RFC 3501 section 2.3.1.1: UIDs that did not
//! persist need a greater UIDVALIDITY).
//!
//! The last value lives where Dovecot keeps it, `dovecot-uidvalidity` (8 hex digits) at the
//! top of the Maildir, so both servers draw from one sequence. Never fails a caller: when the
//! file cannot be read or written the current time is used, as Dovecot falls back too.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The file holding the last UIDVALIDITY handed out (Dovecot's name and format).
pub(super) const STATE_NAME: &str = "dovecot-uidvalidity";

/// A fresh UIDVALIDITY for the folder at `folder` (the Maildir itself or a `.Name` folder),
/// recorded as handed out.
pub(super) fn next(folder: &Path) -> u32 {
    let value = peek(folder);
    // Best effort: an unwritable file only loses the same-second guarantee.
    let _ = write_state(&state_path(folder), value);
    value
}

/// What [`next`] would hand out now, recording nothing: the value a session that may not
/// write shows for a folder that has no uidlist yet.
pub(super) fn peek(folder: &Path) -> u32 {
    let last = fs::read_to_string(state_path(folder))
        .ok()
        .and_then(|text| u32::from_str_radix(text.trim(), 16).ok())
        .unwrap_or(0);
    now().max(last.saturating_add(1)).max(1)
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

/// Replace the state file in one rename, so a reader never sees it half written.
fn write_state(state: &Path, value: u32) -> std::io::Result<()> {
    let tmp = state.with_file_name(format!("{STATE_NAME}.tmp.{}", std::process::id()));
    let result = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(format!("{value:08x}").as_bytes()))
        .and_then(|()| fs::rename(&tmp, state));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_maildir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("validity-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join(".Sub")).unwrap();
        dir
    }

    #[test]
    fn values_never_repeat_within_a_second_and_are_shared_by_folders() {
        let top = temp_maildir("repeat");
        let a = next(&top.join(".Sub"));
        let b = next(&top.join(".Sub"));
        let c = next(&top);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(a >= now() - 5);
        let stored = fs::read_to_string(top.join(STATE_NAME)).unwrap();
        assert_eq!(stored, format!("{c:08x}"));
        // Peeking records nothing.
        assert_eq!(peek(&top), c + 1);
        assert_eq!(peek(&top.join(".Sub")), c + 1);
        assert_eq!(next(&top), c + 1);
        fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn a_value_from_dovecot_in_the_future_is_continued() {
        let top = temp_maildir("dovecot");
        let ahead = now() + 1000;
        fs::write(top.join(STATE_NAME), format!("{ahead:08x}")).unwrap();
        assert_eq!(next(&top.join(".Sub")), ahead + 1);
        // Garbage in the file: the current time.
        fs::write(top.join(STATE_NAME), "zz").unwrap();
        let v = next(&top);
        assert!(v >= now() - 5 && v <= now());
        fs::remove_dir_all(&top).unwrap();
    }
}
